"""The page store's figures against a real Linux 6.12 zram's (../shared/corpus/kernel).

Same settings as the kernel run (zstd level 3, chain size 8: zswapd's defaults),
pages stored in file order, every page whose index is a multiple of 3 freed,
then compaction; mm_stat and the class table compared at each stage.  lz4 is
compared too, on mm_stat only and more loosely: python-lz4's output differs
from the kernel's lz4 page by page (the kernel README: -0.6% to +1.2% in total),
which moves objects between neighbouring classes (on postgresql's uniform pages,
most of them), so its class rows cannot be compared.  Both ZsPools, pure and
compiled, are run.
"""

from __future__ import annotations

import pytest

import allocator
from tests.allocator.zspools import ZSPOOLS
from tests.conftest import corpus_or_skip
from tests.oracle import OBJ_ALLOCATED, PAGES_USED, parse_oracle, rows_diff
from zswapd.config import PoolConfig
from zswapd.corpus import iter_pages
from zswapd.pool import PagePool

# (compr_data_size, huge_pages, mem_used_total written, after frees and compaction)
TOLERANCE = {"zstd": (0.005, 0.10, 0.02, 0.03), "lz4": (0.015, 0.10, 0.04, 0.04)}


@pytest.mark.parametrize("zspool", ZSPOOLS)
@pytest.mark.parametrize("algo", ["zstd", "lz4"])
@pytest.mark.parametrize("program", ["redis", "postgresql", "python3"])
def test_mm_stat_and_classes_agree_with_the_kernel(
    program: str, algo: str, zspool: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = corpus_or_skip()
    # The page store's allocator.create("zsmalloc"), on the pure pool and the compiled one.
    monkeypatch.setattr(allocator, "ZsPool", zspool)
    oracle = parse_oracle(corpus / "kernel" / f"{program}.{algo}.free3.txt")
    compr_tol, huge_tol, mem_written, mem_later = TOLERANCE[algo]
    config = PoolConfig() if algo == "zstd" else PoolConfig(compressor="lz4")
    pool = PagePool(program, config)
    assert type(pool._alloc) is zspool
    pages = list(iter_pages(corpus / f"{program}.pages"))
    handles = []
    for i in range(0, len(pages), 512):  # file order, in batches
        handles += pool.store(pages[i : i + 512])

    def check(stage: str, mem_tol: float) -> None:
        kernel = oracle[stage]["mm_stat"]
        rows = oracle[stage]["classes"]
        assert isinstance(kernel, dict) and isinstance(rows, dict)
        mm = pool.mm_stat()
        assert mm.orig_data_size == kernel["orig_data_size"], stage
        assert mm.same_pages == kernel["same_pages"], stage
        assert mm.mem_limit == kernel["mem_limit"] == 0
        assert (
            abs(mm.compr_data_size - kernel["compr_data_size"])
            <= compr_tol * kernel["compr_data_size"]
        ), stage
        assert abs(mm.huge_pages - kernel["huge_pages"]) <= max(
            3, huge_tol * kernel["huge_pages"]
        ), stage
        mem = kernel["mem_used_total"]
        assert abs(mm.mem_used_total - mem) <= mem_tol * mem, stage
        if algo == "lz4":
            return
        ours = {c.index: (c.objs_allocated, c.pages_used) for c in pool.stats().classes}
        assert rows_diff(ours, rows, PAGES_USED) <= 0.05, stage
        assert rows_diff(ours, rows, OBJ_ALLOCATED) <= 0.05, stage

    check("written", mem_written)
    pool.free(handles[0::3])
    check("discarded", mem_later)
    pool.compact()
    check("compacted", mem_later)
    assert pool.mm_stat().pages_compacted > 0
    pool.check_invariants()
