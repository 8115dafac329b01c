"""zram's rules where a pool's figures could differ from Linux 6.12's, one test each.

Each rule is as drivers/block/zram/zram_drv.c of 6.12 has it: recompression's
"smaller" test, its threshold, its INCOMPRESSIBLE and idle marks, when
mem_used_max moves, and how mem_limit is rounded and checked.  (A block
device's overwrite, new page before old freed, is in test_device_semantics.py.)
"""

from __future__ import annotations

import random

import pytest

from allocator import ClassTable
from tests.zswapd.helpers import poor_page, random_page, text_page
from zswapd.config import PoolConfig
from zswapd.errors import InvalidRequestError, PoolLimitError
from zswapd.pool import PagePool

PAGE = 4096


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _page_recompressing_to_3625() -> bytes:
    """lz4 makes it huge (3640 bytes); zstd 19 makes it 3625 bytes: huge_class_size
    at chain size 8, which with the 8-byte header still takes a huge slot."""
    rng = random.Random(200 * 10000 + 3603)
    return bytes(rng.randrange(200) for _ in range(3603)) + bytes(PAGE - 3603)


def test_class_index_is_zs_lookup_class_index_of_the_raw_length() -> None:
    table = ClassTable.kernel(chain_size=8)
    # No header added: 3632 bytes is the largest non-huge class's own size.
    assert [table.class_index(n) for n in (1, 32, 33, 3624, 3625, 3632)] == [0, 0, 1, 225, 225, 225]
    # One byte past it lands in a class merged into the huge one (index 254).
    assert table.class_index(3633) == table.class_index(PAGE) == 254


def test_a_huge_page_recompressed_to_3625_bytes_is_accepted_as_the_kernel_accepts_it() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19))
    page = _page_recompressing_to_3625()
    (h,) = pool.store([page])
    before = pool.mm_stat()
    assert (before.huge_pages, before.compr_data_size) == (1, PAGE)
    result = pool.recompress("huge")
    assert result["recompressed"] == 1 and result["bytes_saved"] == PAGE - 3625
    after = pool.mm_stat()
    # No longer huge and counted at its length, yet with its header it still
    # takes a whole page: the kernel's figures, memory unchanged.
    assert (after.huge_pages, after.compr_data_size) == (0, 3625)
    assert after.mem_used_total == before.mem_used_total == PAGE
    assert pool.load([h]) == [page]
    pool.check_invariants()


def test_recompression_threshold_skips_smaller_objects_and_refuses_huge_class_size() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19))
    pool.store([text_page(1), poor_page(2)])  # ~1 KiB compressed, and a huge page
    with pytest.raises(InvalidRequestError, match="huge_class_size"):
        pool.recompress("idle", threshold=pool.huge_class_size)
    assert pool.stats().recompress.attempts == 0
    # Below 3000 bytes: the text page is skipped, never read; the huge page is tried.
    result = pool.recompress("idle", threshold=3000)
    assert result["candidates"] == 1 and result["recompressed"] == 1
    assert pool.mm_stat().huge_pages == 0


def test_a_page_recompression_cannot_shrink_is_incompressible_and_no_longer_idle() -> None:
    clock = Clock()
    cfg = PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19)
    pool = PagePool("p", cfg, clock=clock)
    pool.store([random_page(1), poor_page(2)])
    clock.now += 100
    result = pool.recompress("idle", idle_seconds=60)
    assert (result["recompressed"], result["not_smaller"]) == (1, 1)
    # The random page is INCOMPRESSIBLE now: zram never tries it again.
    clock.now += 100
    assert pool.recompress("idle", idle_seconds=60)["candidates"] == 0
    # ... and both pages were touched: idle no more for a shorter horizon.
    pool2 = PagePool("q", cfg, clock=clock)
    pool2.store([text_page(3)])
    clock.now += 100
    pool2.recompress("idle", idle_seconds=60, algo="deflate")
    assert pool2.recompress("idle", idle_seconds=60)["candidates"] == 0


def test_mem_used_max_moves_with_each_allocation_before_the_limit_check() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", limit_bytes=2 * PAGE))
    pool.store([random_page(1), random_page(2)])  # two huge pages, one page each
    with pytest.raises(PoolLimitError):
        pool.store([random_page(3)])
    mm = pool.mm_stat()
    # zram allocated the third page, saw 3 pages > 2, freed it: the peak stays.
    assert (mm.mem_used_total, mm.mem_used_max, mm.mem_limit) == (2 * PAGE, 3 * PAGE, 2 * PAGE)
    pool.check_invariants()


def test_mem_used_max_does_not_move_during_recompression() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19))
    pool.store([poor_page(1)])
    assert pool.mm_stat().mem_used_max == PAGE
    assert pool.recompress("huge")["recompressed"] == 1
    mm = pool.mm_stat()
    # The new object's zspage was taken while the huge page was still held,
    # and now outgrows the old peak: zram's recompression never updates it.
    assert mm.mem_used_total > PAGE and mm.mem_used_max == PAGE


def test_the_limit_is_rounded_up_to_pages_and_checked_on_every_write() -> None:
    assert PoolConfig(limit_bytes=PAGE + 1).limit_pages == 2
    pool = PagePool("p", PoolConfig(compressor="lz4", limit_bytes=100 * PAGE + 1))
    assert pool.mm_stat().mem_limit == 101 * PAGE
    pool.store([text_page(i) for i in range(4)])  # one zspage of their class
    held = pool.mm_stat().mem_used_total
    pool.set_live_settings(limit_bytes=held - PAGE)
    # The next page fits the zspage already held, but the pool is past its
    # limit: zram checks alloced_pages > limit_pages on every write.
    with pytest.raises(PoolLimitError):
        pool.store([text_page(9)])
    assert pool.mm_stat().mem_used_total == held and pool.stored_pages == 4
    pool.check_invariants()


@pytest.mark.parametrize(
    ("config", "why"),
    [
        (PoolConfig(compressor="lz4", allocator="zbud"), "zbud"),
        (PoolConfig(compressor="lz4", chain_size=4), "chain size 4"),
        (PoolConfig(compressor="zstd", allocator_options={"header": 0}), "class table"),
        (PoolConfig(compressor="lz4-lib"), "liblz4"),
    ],
)
def test_a_pool_says_exact_only_where_its_placement_is_the_kernels_too(
    config: PoolConfig, why: str
) -> None:
    figures = PagePool("p", config).stats().compressor
    assert not figures.kernel_exact
    assert figures.fidelity.startswith("not kernel-exact: ") and why in figures.fidelity
    exact = PagePool("q", PoolConfig(compressor="lz4")).stats().compressor
    assert exact.kernel_exact and exact.fidelity == "exact for Linux 6.12"


def test_a_recompression_threshold_of_0_is_none_as_zrams() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19))
    pool.store([poor_page(2)])
    assert pool.recompress("huge", threshold=0)["recompressed"] == 1
    with pytest.raises(InvalidRequestError, match=">= 0"):
        pool.recompress("huge", threshold=-1)
