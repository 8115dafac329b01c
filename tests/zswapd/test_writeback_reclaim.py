"""zswap's LRU write-back makes room by writing back pages and compacting, not
by writing back several times the pages it needs."""

from __future__ import annotations

import random
from pathlib import Path

from zswapd.config import PoolConfig
from zswapd.errors import PoolLimitError
from zswapd.pool import PAGE_SIZE, PagePool
from zswapd.tier import WRITEBACK_BATCH

LIMIT_PAGES = 32


def _pages(n: int) -> list[bytes]:
    """Distinct pages that each compress (lz4) to about 900 bytes: one size
    class, several objects a zspage."""
    rng = random.Random(5)
    return [rng.randbytes(880) + bytes(PAGE_SIZE - 880) for _ in range(n)]


def _capacity(pages: list[bytes]) -> int:
    """How many of ``pages`` a pool of LIMIT_PAGES holds (one without a backing file)."""
    pool = PagePool("plain", PoolConfig(compressor="lz4", limit_bytes=LIMIT_PAGES * PAGE_SIZE))
    for n, page in enumerate(pages):
        try:
            pool.store([page])
        except PoolLimitError:
            return n
    raise AssertionError("the pages all fit")


def test_reclaim_compacts_instead_of_writing_back_the_whole_pool(tmp_path: Path) -> None:
    pages = _pages(400)
    full = _capacity(pages)
    pool = PagePool(
        "lru",
        PoolConfig(
            compressor="lz4",
            limit_bytes=LIMIT_PAGES * PAGE_SIZE,
            backing_file=str(tmp_path / "swap"),
            backing_size=1024 * PAGE_SIZE,
            writeback="lru",
        ),
    )
    handles = [pool.store([p])[0] for p in pages[:full]]
    assert pool.counters.written_back_pages == 0 and full > 2 * WRITEBACK_BATCH
    # Touch every other page: the least recently used are then scattered over
    # every zspage, so writing them back empties none.
    pool.load(handles[1::2])
    handles += pool.store([pages[full]])
    # A round of write-back (sized to what the threshold asks) and a
    # compaction made the room; without the compaction the pool had to write
    # back every cold page (half the pool) and then more.
    assert 0 < pool.counters.written_back_pages <= WRITEBACK_BATCH < full // 2
    mm = pool.mm_stat()
    assert mm.pages_compacted > 0
    assert mm.mem_used_total < LIMIT_PAGES * PAGE_SIZE * 90 // 100
    assert pool.load(handles) == pages[: full + 1]
    pool.check_invariants()
    pool.close()
