"""Placement against a real Linux 6.12 zram (../shared/corpus/kernel), exactly.

The kernel wrote every page of a corpus program to zram (chain size 8, lz4 or
zstd), discarded every page whose index is a multiple of 3, and compacted; at
each stage it printed mm_stat and zsmalloc's class table, and it recorded each
page's compressed length (``<program>.<algo>.perpage.txt``).  Fed those very
lengths, the way zram feeds them (same-filled pages take no memory; a huge page
is a 4096-byte object), a default ZsPool must hold the kernel's mem_used_total
and print its class table, every column of every row, at every stage, and
compact the kernel's pages_compacted, the pure-Python pool and the compiled
one alike.  No compressor is involved: this is the allocator alone.
"""

from __future__ import annotations

import pytest

from allocator.zsmalloc import ZsPool
from tests.allocator.zspools import ZSPOOLS
from tests.conftest import corpus_or_skip
from tests.oracle import debugfs_row, parse_oracle

PROGRAMS = ["redis", "postgresql", "python3"]


@pytest.mark.parametrize("zspool", ZSPOOLS)
@pytest.mark.parametrize("algo", ["lz4", "zstd"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_zram_placement_matches_the_kernel(program: str, algo: str, zspool: type[ZsPool]) -> None:
    corpus = corpus_or_skip()
    oracle = parse_oracle(corpus / "kernel" / f"{program}.{algo}.free3.txt")
    lines = (corpus / "kernel" / f"{program}.{algo}.perpage.txt").read_text().splitlines()
    pool = zspool(chain_size=8)
    handles: dict[int, int] = {}
    for line in lines:
        index, size, kind = line.split()
        if kind == "same":
            continue
        # A huge page is stored raw; zram asked for huge_class_size or more.
        assert (kind == "huge") == (int(size) >= pool.huge_class_size), line
        handles[int(index)] = pool.malloc(4096 if kind == "huge" else int(size))

    def check(stage: str) -> None:
        kernel = oracle[stage]["mm_stat"]
        rows = oracle[stage]["classes"]
        assert isinstance(kernel, dict) and isinstance(rows, dict)
        assert pool.total_size_bytes == kernel["mem_used_total"], stage
        assert pool.pages_compacted == kernel["pages_compacted"], stage
        ours = {c.index: debugfs_row(c) for c in pool.class_stats()}
        assert {i: ours[i] for i in rows} == rows, stage

    check("written")
    for i in [i for i in handles if i % 3 == 0]:
        pool.free(handles.pop(i))
    check("discarded")
    pool.compact()
    check("compacted")
    pool.check_invariants()
