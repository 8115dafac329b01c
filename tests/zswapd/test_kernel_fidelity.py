"""The page store's figures equal a real Linux 6.12 zram's (../shared/corpus/kernel).

The kernel (zsmalloc chain size 8, lz4 or zstd at its default level) wrote every
page of a corpus program to /dev/zram0, one 4 KiB write per page, in file
order; then discarded every page whose index is a multiple of 3; then
compacted.  Here a default pool (lz4 is the kernel's own lz4, zstd libzstd
1.5.6: both exact for Linux 6.12) stores the same pages one at a time, frees
the same ones and compacts: every page's compressed size, mm_stat and every
column of every class row must be the kernel's, with no tolerance, at all
three stages.  A batch of 512 pages gives the same figures as single pages
(without a limit, a batch allocates in the same order), which one program
checks too.  Both ZsPools, pure and compiled, are run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import allocator
import compressors
from tests.allocator.zspools import ZSPOOLS
from tests.conftest import corpus_or_skip
from tests.oracle import debugfs_row, parse_oracle
from zswapd.config import PoolConfig
from zswapd.corpus import iter_pages
from zswapd.pool import PagePool

PROGRAMS = ["redis", "postgresql", "python3"]
STAGES = ("written", "discarded", "compacted")


def _per_page(corpus: Path, program: str, algo: str) -> list[tuple[int, str]]:
    lines = (corpus / "kernel" / f"{program}.{algo}.perpage.txt").read_text().splitlines()
    return [(int(size), kind) for _, size, kind in (line.split() for line in lines)]


def _check_stage(pool: PagePool, oracle: dict[str, dict[str, object]], stage: str) -> None:
    kernel = oracle[stage]["mm_stat"]
    rows = oracle[stage]["classes"]
    assert isinstance(kernel, dict) and isinstance(rows, dict)
    mm = pool.mm_stat()
    ours = {name: getattr(mm, name) for name in kernel}
    assert ours == kernel, stage
    classes = {c.index: debugfs_row(c) for c in pool.stats().classes}
    assert set(classes) == set(rows), stage
    wrong = [(i, classes[i], row) for i, row in rows.items() if classes[i] != row]
    assert not wrong, f"{stage}: {len(wrong)} class rows differ, first {wrong[:2]}"


def _run(program: str, algo: str, batch: int) -> None:
    corpus = corpus_or_skip()
    oracle = parse_oracle(corpus / "kernel" / f"{program}.{algo}.free3.txt")
    pool = PagePool(program, PoolConfig(compressor=algo))
    assert type(pool._alloc) is allocator.ZsPool
    stats = pool.stats()
    assert stats.compressor.kernel_exact, stats.compressor.fidelity
    assert stats.compressor.fidelity == "exact for Linux 6.12"
    pages = list(iter_pages(corpus / f"{program}.pages"))
    kernel_sizes = _per_page(corpus, program, algo)
    assert len(kernel_sizes) == len(pages)
    comp = compressors.get(algo)
    huge = pool.huge_class_size
    for i, (page, (size, kind)) in enumerate(zip(pages, kernel_sizes, strict=True)):
        if kind == "same":
            assert page == page[:8] * 512, i
            continue
        n = len(comp.compress(page))
        assert (n if kind == "comp" else n >= huge) == (size if kind == "comp" else True), (
            f"{program} page {i}: kernel {size} ({kind}), ours {n}"
        )
    handles: list[int] = []
    for i in range(0, len(pages), batch):
        handles += pool.store(pages[i : i + batch])
    _check_stage(pool, oracle, "written")
    pool.free(handles[0::3])
    _check_stage(pool, oracle, "discarded")
    pool.compact()
    _check_stage(pool, oracle, "compacted")
    pool.check_invariants()


@pytest.mark.parametrize("zspool", ZSPOOLS)
@pytest.mark.parametrize("algo", ["lz4", "zstd"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_every_figure_equals_the_kernels_one_page_per_write(
    program: str, algo: str, zspool: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page store's allocator.create("zsmalloc"), on the pure pool and the compiled one.
    monkeypatch.setattr(allocator, "ZsPool", zspool)
    _run(program, algo, batch=1)


def test_batches_of_512_pages_give_the_same_figures() -> None:
    _run("redis", "zstd", batch=512)
