"""The size class table against the kernel's numbers."""

from __future__ import annotations

import random
import re

import pytest

from allocator import ClassTable, ZsPool, fit_class_sizes
from allocator.classes import best_pages_per_zspage
from tests.conftest import corpus_or_skip


@pytest.mark.parametrize(
    ("chain", "distinct", "huge"), [(4, 69, 3257), (8, 119, 3625), (16, 192, 3833)]
)
def test_kernel_table_counts_and_huge_class_size(chain: int, distinct: int, huge: int) -> None:
    table = ClassTable.kernel(chain)
    assert len(table.classes) == distinct
    assert table.huge_class_size == huge
    # The last non-huge length stays out of the huge class; the next goes in.
    assert not table.class_for(huge - 1).huge
    assert table.class_for(huge).huge


def test_unmerged_table_has_every_class() -> None:
    table = ClassTable.build(chain_size=8, merge=False)
    assert len(table.classes) == 255
    assert [c.size for c in table.classes][:3] == [32, 48, 64]


def test_header_counts_in_the_class_choice() -> None:
    table = ClassTable.kernel(16)
    assert table.class_for(1000).size == 1008  # 1000 + 8-byte header
    assert table.class_for(1001).size == 1024
    assert ClassTable.build(chain_size=16, header=0).class_for(1000).size == 1008
    assert ClassTable.build(chain_size=16, header=0).class_for(992).size == 992


def test_pages_per_zspage_minimises_waste() -> None:
    for size in range(32, 4097, 16):
        best = best_pages_per_zspage(size, 8)
        waste = (best * 4096) % size
        if size & (size - 1):
            assert all(waste <= (p * 4096) % size for p in range(1, 9))
        else:
            assert best == 1


def test_every_length_fits_its_class() -> None:
    for table in (ClassTable.kernel(8), ClassTable.build(step=8, header=0)):
        for n in range(1, 4097):
            cls = table.class_for(n)
            room = cls.size if cls.huge else cls.size - table.header
            assert room >= n


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        ClassTable.build(chain_size=17)
    with pytest.raises(ValueError):
        ClassTable.build(step=12)
    with pytest.raises(ValueError):
        ClassTable.build(header=4)
    with pytest.raises(ValueError):
        ClassTable.build(sizes=[100])


def test_fitted_sizes_need_fewer_pages_than_a_grid() -> None:
    rng = random.Random(5)
    lengths = [rng.choice([300, 700, 1500]) + rng.randint(0, 40) for _ in range(3000)]
    sizes = fit_class_sizes(lengths, chain_size=8, header=0)
    assert sizes[-1] == 4096 and all(s % 8 == 0 for s in sizes)

    def pages(pool: ZsPool) -> int:
        for n in lengths:
            pool.malloc(n)
        return pool.pages

    fitted = pages(ZsPool(chain_size=8, header=0, class_sizes=sizes))
    grid8 = pages(ZsPool(chain_size=8, header=0, class_step=8))
    kernel = pages(ZsPool(chain_size=8))
    assert fitted < grid8 and fitted < kernel


def test_shapes_match_a_real_kernels_debugfs_table() -> None:
    corpus = corpus_or_skip()
    text = (corpus / "kernel" / "redis.zstd.free3.txt").read_text()
    block = text.split("classes: begin", 1)[1].split("classes: end", 1)[0]
    rows = [line.split() for line in block.splitlines() if re.match(r"\s*\d", line)]
    kernel = {int(r[0]): (int(r[1]), int(r[-2])) for r in rows}
    ours = {c.index: (c.size, c.pages_per_zspage) for c in ClassTable.kernel(8).classes}
    assert ours == kernel
