"""ZbudPool: buddy placement, unbuddied-list reuse, HEADLESS pages, budget, handles, maps."""

from __future__ import annotations

import os

import pytest

import allocator
from allocator import MapMode, PoolFullError
from allocator.buddy import CHUNK_SIZE, FIRST, HEADLESS, LAST, MAX_BUDDY_SIZE, NCHUNKS
from allocator.stats import Fullness
from allocator.zbud import ZbudPool


def _where(pool: ZbudPool, h: int) -> tuple[int, int, int]:
    """(pfn, offset in its page, capacity) of a live handle's object."""
    addr, cap = pool._locate(h)
    return addr >> 12, addr & 4095, cap


def _buddy(pool: ZbudPool, h: int) -> int:
    return pool._handles.location(h) & 3


def test_geometry_is_the_kernels() -> None:
    pool = ZbudPool()
    assert (CHUNK_SIZE, NCHUNKS, MAX_BUDDY_SIZE) == (64, 63, 3968)
    assert pool.huge_class_size == 3969
    assert pool.chain_size == 1
    assert pool.capacity(1) == 64
    assert pool.capacity(65) == 128
    assert pool.capacity(3968) == 3968
    assert pool.capacity(3969) == 4096


def test_create_returns_zbud_and_ignores_zsmalloc_options() -> None:
    pool = allocator.create(
        "zbud", chain_size=4, empty_cache=2, short_zspages=True, header=0, class_step=8
    )
    assert isinstance(pool, ZbudPool)
    with pytest.raises(TypeError, match="chain_sise"):
        allocator.create("zbud", chain_sise=4)
    with pytest.raises(ValueError):
        ZbudPool(max_pages=-1)


def test_first_buddy_after_header_last_buddy_right_justified() -> None:
    pool = ZbudPool(seed=1)
    a = pool.malloc(100)  # 2 chunks
    b = pool.malloc(1000)  # 16 chunks
    assert _buddy(pool, a) == FIRST and _buddy(pool, b) == LAST
    pa, off_a, cap_a = _where(pool, a)
    pb, off_b, cap_b = _where(pool, b)
    assert pa == pb and pool.pages == 1
    assert (off_a, cap_a) == (64, 128)
    assert (off_b, cap_b) == (4096 - 1024, 1024)
    # The bytes land exactly there in the page.
    pool.obj_write(a, b"A" * 100)
    pool.obj_write(b, b"B" * 1000)
    page = pool._arena.page(pa)
    assert bytes(page[64:164]) == b"A" * 100
    assert bytes(page[3072:4072]) == b"B" * 1000
    # A third object needs a new page: zbud pairs, never more.
    c = pool.malloc(10)
    assert _where(pool, c)[0] != pa and pool.pages == 2
    pool.check_invariants()


def test_largest_buddy_still_leaves_room_for_a_one_chunk_buddy() -> None:
    pool = ZbudPool(seed=2)
    big = pool.malloc(MAX_BUDDY_SIZE)
    small = pool.malloc(64)
    assert _where(pool, big)[1:] == (64, 3968)
    assert _where(pool, small) == (_where(pool, big)[0], 4096 - 64, 64)
    assert pool.pages == 1
    pool.check_invariants()


def test_allocation_takes_the_exact_fit_before_larger_free_runs() -> None:
    pool = ZbudPool(seed=3)
    # Two buddied pages, then one buddy freed in each: the first page is left
    # with 53 free chunks, the second with 23.
    roomy = pool.malloc(10 * 64)
    gone1 = pool.malloc(50 * 64)
    tight = pool.malloc(40 * 64)
    gone2 = pool.malloc(20 * 64)
    assert pool.pages == 2 and _where(pool, roomy)[0] != _where(pool, tight)[0]
    pool.free(gone1)
    pool.free(gone2)
    # A 20-chunk object fits both; unbuddied[23] is searched before unbuddied[53].
    h = pool.malloc(20 * 64)
    assert _where(pool, h)[0] == _where(pool, tight)[0]
    assert _buddy(pool, h) == LAST
    # 30 chunks no longer fit the tight page (now buddied): the roomy one.
    h2 = pool.malloc(30 * 64)
    assert _where(pool, h2)[0] == _where(pool, roomy)[0]
    # Nothing is unbuddied now: even one chunk takes a new page.
    h3 = pool.malloc(1)
    assert pool.pages == 3 and _buddy(pool, h3) == FIRST
    pool.check_invariants()


def test_lifo_reuse_is_observable() -> None:
    pool = ZbudPool(seed=5)
    a = pool.malloc(500)
    b = pool.malloc(500)  # pairs with a: page 1 buddied
    c = pool.malloc(500)  # page 2
    d = pool.malloc(500)  # pairs with c: page 2 buddied
    p1, p2 = _where(pool, a)[0], _where(pool, c)[0]
    assert _where(pool, b)[0] == p1 and _where(pool, d)[0] == p2
    pool.free(b)  # page 1 listed first
    pool.free(d)  # page 2 listed after, same free chunks: the head
    e = pool.malloc(500)
    assert _where(pool, e)[0] == p2
    f = pool.malloc(500)
    assert _where(pool, f)[0] == p1
    assert pool.pages == 2
    pool.check_invariants()


def test_freed_first_buddy_is_refilled_as_first() -> None:
    pool = ZbudPool(seed=6)
    a = pool.malloc(300)
    b = pool.malloc(300)
    pool.free(a)
    assert pool.pages == 1
    c = pool.malloc(2000)  # fits the free run left by a and the slack
    assert _buddy(pool, c) == FIRST and _where(pool, c)[:2] == (_where(pool, b)[0], 64)
    pool.check_invariants()


def test_pages_are_released_when_empty() -> None:
    pool = ZbudPool(seed=7)
    handles = [pool.malloc(1500) for _ in range(10)]
    assert pool.pages == 5 and pool.total_size_bytes == 5 * 4096
    for h in handles[::2]:
        pool.free(h)
    assert pool.pages == 5  # every page still holds one buddy
    for h in handles[1::2]:
        pool.free(h)
    assert pool.pages == 0 and pool.total_size_bytes == 0 and pool.objs_used == 0
    assert pool._arena.pages_held == 0
    assert pool.stats().pages_max == 5
    pool.check_invariants()


@pytest.mark.parametrize("size", [3969, 4000, 4096])
def test_huge_objects_get_a_whole_headless_page(size: int) -> None:
    pool = ZbudPool(seed=8)
    small = pool.malloc(10)
    h = pool.malloc(size)
    assert _buddy(pool, h) == HEADLESS
    pfn, off, cap = _where(pool, h)
    assert (off, cap) == (0, 4096) and pfn != _where(pool, small)[0]
    assert pool.pages == 2
    data = os.urandom(size)
    pool.obj_write(h, data)
    assert pool.obj_read(h, size) == data
    assert bytes(pool._arena.page(pfn)[:size]) == data
    # A headless page never takes a buddy.
    other = pool.malloc(10)
    assert _where(pool, other)[0] == _where(pool, small)[0]
    rows = pool.class_stats()
    assert rows[1].size == 4096 and rows[1].objs_used == 1 and rows[1].pages_used == 1
    assert rows[1].zspages[Fullness.FULL] == 1
    pool.check_invariants()
    pool.free(h)
    assert pool.pages == 1
    pool.check_invariants()


def test_page_budget_exhausted_then_recovered() -> None:
    pool = ZbudPool(max_pages=2, seed=9)
    held = [pool.malloc(1900) for _ in range(4)]  # 30 chunks: two a page
    assert pool.pages == 2
    before = pool.stats()
    for size in (1900, 10, 4096):
        with pytest.raises(PoolFullError):
            pool.malloc(size)
    after = pool.stats()
    assert after.alloc_failures == before.alloc_failures + 3
    assert (after.pages, after.objs_used) == (before.pages, before.objs_used)
    pool.check_invariants()
    # Freeing one buddy makes room in its page without a new page.
    pool.free(held[0])
    h = pool.malloc(1900)
    assert pool.pages == 2 and _where(pool, h)[0] == _where(pool, held[1])[0]
    # Emptying a page gives the budget a page back.
    pool.free(held[2])
    pool.free(held[3])
    assert pool.pages == 1
    huge = pool.malloc(4096)
    assert pool.pages == 2 and pool.obj_read(huge) == bytes(4096)
    pool.check_invariants()


def test_map_is_zero_copy_and_modes_set_writability() -> None:
    pool = ZbudPool(seed=11)
    h = pool.malloc(700)
    data = os.urandom(700)
    with pool.map(h, MapMode.WO) as buf:
        assert not buf.readonly and len(buf) == 704
        buf[:700] = data
        # The view is the arena itself: the bytes are there before unmap.
        assert pool.obj_read(h, 700) == data
    with pool.map(h, MapMode.RO) as buf:
        assert buf.readonly and bytes(buf[:700]) == data
        with pytest.raises(TypeError):
            buf[0] = 0
    with pool.map(h, MapMode.RW) as buf:
        assert bytes(buf[:700]) == data
        buf[0] ^= 0xFF
    assert pool.obj_read(h, 1) == bytes([data[0] ^ 0xFF])
    with pytest.raises(ValueError):
        _ = buf[0]  # released at unmap


def test_compact_moves_nothing() -> None:
    pool = ZbudPool(seed=14)
    hs = [pool.malloc(900) for _ in range(6)]
    for h in hs[::2]:
        pool.free(h)
    where = {h: _where(pool, h) for h in hs[1::2]}
    assert pool.compact() == 0
    assert pool.pages == 3 and pool.pages_compacted == 0
    assert {h: _where(pool, h) for h in hs[1::2]} == where


def test_class_stats_and_stats_balance() -> None:
    pool = ZbudPool(seed=15)
    hs = [pool.malloc(1000) for _ in range(5)]  # pages: 2 full, 1 half
    pool.malloc(4096)
    buddy, headless = pool.class_stats()
    assert (buddy.size, buddy.objs_per_zspage, buddy.pages_per_zspage) == (3968, 2, 1)
    assert buddy.zspages[Fullness.FULL] == 2 and buddy.zspages[Fullness.RATIO_60] == 1
    assert sum(buddy.zspages) == buddy.pages_used == 3
    assert (buddy.objs_allocated, buddy.objs_used, buddy.freeable) == (6, 5, 0)
    assert (headless.pages_used, headless.objs_used) == (1, 1)
    pool.free(hs[0])
    pool.free(hs[2])
    buddy = pool.class_stats()[0]
    assert buddy.zspages[Fullness.RATIO_60] == 3 and buddy.freeable == 1
    s = pool.stats()
    assert (s.pages, s.zspages, s.objs_used, s.objs_allocated) == (4, 4, 4, 7)
    assert s.total_size_bytes == pool.total_size_bytes


def test_check_invariants_detects_corruption() -> None:
    pool = ZbudPool(seed=16)
    a = pool.malloc(100)
    pool.check_invariants()
    loc = pool._handles.location(a)
    pool._owner[loc] += 1  # the handle table points at another object
    with pytest.raises(AssertionError, match=r"owner|handle"):
        pool.check_invariants()
    pool._owner[loc] -= 1
    pool._chunks[loc] += 1  # the page now sits on the wrong unbuddied list
    with pytest.raises(AssertionError, match="unbuddied list"):
        pool.check_invariants()
    pool._chunks[loc] -= 1
    pool._start[loc] = 2
    with pytest.raises(AssertionError, match="header"):
        pool.check_invariants()
    pool._start[loc] = 1
    pool.check_invariants()
