"""Z3foldPool: three buddies, free-time compaction, HEADLESS pages, budget, handles, maps."""

from __future__ import annotations

import os

import pytest

import allocator
from allocator import InvalidHandleError, MapMode, PoolFullError
from allocator.buddy import FIRST, HEADLESS, LAST, MIDDLE
from allocator.stats import Fullness
from allocator.z3fold import BIG_CHUNK_GAP, MAX_BUDDY_SIZE, NCHUNKS, Z3foldPool
from allocator.zbud import ZbudPool

C = 64  # chunk size


def _where(pool: Z3foldPool, h: int) -> tuple[int, int, int]:
    """(pfn, offset in its page, capacity) of a live handle's object."""
    addr, cap = pool._locate(h)
    return addr >> 12, addr & 4095, cap


def _buddy(pool: Z3foldPool, h: int) -> int:
    return pool._handles.location(h) & 3


def _filled(pool: Z3foldPool, chunks: int) -> tuple[int, bytes]:
    """A new object of exactly ``chunks`` chunks, filled with random bytes."""
    data = os.urandom(chunks * C)
    h = pool.malloc(len(data))
    pool.obj_write(h, data)
    return h, data


def _full_page(pool: Z3foldPool) -> dict[int, bytes]:
    """One page with FIRST (10 chunks), LAST (10) and MIDDLE (10, at chunk 11)."""
    return dict(_filled(pool, 10) for _ in range(3))


def _first_freed(seed: int) -> tuple[Z3foldPool, dict[int, bytes], int]:
    """A full page whose FIRST buddy was then freed: the pool, the two live
    objects (LAST, then MIDDLE, now at chunk 44) and the page's pfn."""
    pool = Z3foldPool(seed=seed)
    objs = _full_page(pool)
    first = next(iter(objs))
    pfn = _where(pool, first)[0]
    pool.free(first)
    del objs[first]
    return pool, objs, pfn


def test_geometry() -> None:
    pool = Z3foldPool()
    assert (NCHUNKS, MAX_BUDDY_SIZE, BIG_CHUNK_GAP) == (63, 3968, 3)
    assert pool.huge_class_size == 3969 and pool.chain_size == 1
    assert pool.capacity(3968) == 3968 and pool.capacity(3969) == 4096
    assert isinstance(allocator.create("z3fold", chain_size=16, header=0), Z3foldPool)


def test_three_buddies_first_last_then_middle_after_first() -> None:
    pool = Z3foldPool(seed=1)
    a, b, c = _full_page(pool)
    assert [_buddy(pool, h) for h in (a, b, c)] == [FIRST, LAST, MIDDLE]
    assert _where(pool, a)[1:] == (64, 640)
    assert _where(pool, b)[1:] == (4096 - 640, 640)
    assert _where(pool, c)[1:] == (11 * C, 640)
    assert len({_where(pool, h)[0] for h in (a, b, c)}) == 1 and pool.pages == 1
    d = pool.malloc(1)  # the page is full: a new one
    assert pool.pages == 2 and _buddy(pool, d) == FIRST
    pool.check_invariants()


def test_middle_slides_to_last_when_first_is_freed() -> None:
    pool, objs, pfn = _first_freed(2)
    b, c = objs
    # Gap after the middle was 64 - (10 + 11 + 10) = 33 >= BIG_CHUNK_GAP.
    assert _where(pool, c) == (pfn, 44 * C, 640) and _buddy(pool, c) == MIDDLE
    assert pool.obj_read(c) == objs[c] and pool.obj_read(b) == objs[b]
    # All 43 chunks before the middle are one free run: FIRST takes 43.
    h = pool.malloc(43 * C)
    assert _where(pool, h)[:2] == (pfn, 64) and pool.pages == 1
    pool.check_invariants()


def test_middle_slides_to_first_when_last_is_freed() -> None:
    pool, objs, pfn = _first_freed(3)
    b, c = objs
    e, e_data = _filled(pool, 5)  # refills FIRST, chunks 1..5
    assert _where(pool, e)[:2] == (pfn, 64) and _buddy(pool, e) == FIRST
    pool.free(b)
    # Gap between FIRST and the middle: 44 - (5 + 1) = 38: slide down to chunk 6.
    assert _where(pool, c) == (pfn, 6 * C, 640)
    assert pool.obj_read(c) == objs[c] and pool.obj_read(e) == e_data
    pool.check_invariants()


def test_small_gaps_are_not_worth_a_move() -> None:
    pool = Z3foldPool(seed=4)
    a, _ = _filled(pool, 20)
    _filled(pool, 20)  # LAST: chunks 44..63
    c, _ = _filled(pool, 21)  # MIDDLE: chunks 21..41, two chunks before LAST
    pool.free(a)
    # 64 - (20 + 21 + 21) = 2 < BIG_CHUNK_GAP: the middle stays.
    assert _where(pool, c)[1] == 21 * C and _buddy(pool, c) == MIDDLE
    pool.check_invariants()


def test_small_gap_after_first_is_not_worth_a_move() -> None:
    pool = Z3foldPool(seed=19)
    a, _ = _filled(pool, 12)
    b, _ = _filled(pool, 10)
    c, _ = _filled(pool, 10)  # MIDDLE at chunk 13
    with pool.map(c, MapMode.RO):
        pool.free(a)  # the mapping pins c where it is
    e, _ = _filled(pool, 10)  # FIRST, chunks 1..10: two chunks short of c
    assert _buddy(pool, e) == FIRST and _where(pool, c)[1] == 13 * C
    pool.free(b)
    # 13 - (10 + 1) = 2 < BIG_CHUNK_GAP: the middle stays.
    assert _where(pool, c)[1] == 13 * C
    pool.check_invariants()


def test_object_too_big_for_the_run_before_the_middle_goes_last() -> None:
    pool = Z3foldPool(seed=20)
    objs = _full_page(pool)
    a, b, c = objs
    with pool.map(c, MapMode.RO):
        pool.free(a)
        pool.free(b)  # c is mapped: it stays a middle buddy at chunk 11
        assert _buddy(pool, c) == MIDDLE and _where(pool, c)[1] == 11 * C
        # 10 chunks free before it, 43 after: 20 chunks only fit after.
        h, data = _filled(pool, 20)
        assert _buddy(pool, h) == LAST and _where(pool, h)[1] == 4096 - 20 * C
        # 10 chunks fit before it.
        g, g_data = _filled(pool, 10)
        assert _buddy(pool, g) == FIRST and _where(pool, g)[1] == 64
    assert pool.pages == 1
    assert pool.obj_read(c) == objs[c] and pool.obj_read(h) == data
    assert pool.obj_read(g) == g_data
    pool.check_invariants()


def test_lone_middle_becomes_first_when_no_page_can_take_it() -> None:
    pool, objs, pfn = _first_freed(5)
    b, c = objs
    pool.free(b)
    # c is alone and no other page has room: it moves to the front, as FIRST,
    # and its handle follows it.
    assert _buddy(pool, c) == FIRST and _where(pool, c) == (pfn, 64, 640)
    assert pool.obj_read(c) == objs[c]
    assert pool.pages == 1 and pool.pages_compacted_at_free == 0
    pool.check_invariants()


def _two_pages(pool: Z3foldPool) -> tuple[dict[int, bytes], int, int, int, int]:
    """Page 1: x (20, FIRST), y (20, LAST), w (23, MIDDLE); page 2: z (10, FIRST)."""
    objs: dict[int, bytes] = {}
    hs = []
    for chunks in (20, 20, 23, 10):
        h, data = _filled(pool, chunks)
        objs[h] = data
        hs.append(h)
    x, y, w, z = hs
    assert [_buddy(pool, h) for h in hs] == [FIRST, LAST, MIDDLE, FIRST]
    assert _where(pool, x)[0] == _where(pool, w)[0] != _where(pool, z)[0]
    return objs, x, y, w, z


def test_single_buddy_moves_to_another_page_at_free() -> None:
    pool = Z3foldPool(seed=6)
    objs, x, y, w, z = _two_pages(pool)
    p2 = _where(pool, z)[0]
    pool.free(y)
    assert pool.pages == 2  # two objects left: no move between pages
    pool.free(w)
    # x was alone: it moved into z's page (as LAST), and its page was released.
    assert pool.pages == 1 and pool.pages_compacted_at_free == 1
    assert _where(pool, x) == (p2, 4096 - 20 * C, 20 * C) and _buddy(pool, x) == LAST
    assert pool.obj_read(x) == objs[x] and pool.obj_read(z) == objs[z]
    assert pool.pages_compacted == 0  # compact() did not run
    pool.check_invariants()
    # A moved object is foreign in its new page: left alone, it is not moved again.
    q, _ = _filled(pool, 40)  # does not fit page p2 (33 free): a new page
    assert _where(pool, q)[0] not in (p2,) and pool.pages == 2
    pool.free(z)
    assert _where(pool, x)[0] == p2 and pool.pages == 2
    assert pool.pages_compacted_at_free == 1
    pool.check_invariants()
    # Freeing the moved object works as for any other, and releases the page.
    pool.free(x)
    assert pool.pages == 1
    pool.check_invariants()


def test_mapped_page_is_not_compacted_until_compact() -> None:
    pool = Z3foldPool(seed=7)
    objs, x, y, w, z = _two_pages(pool)
    p1 = _where(pool, x)[0]
    with pool.map(x, MapMode.RO) as view:
        pool.free(y)
        pool.free(w)
        # x is alone but mapped: it stays, and the view still shows it.
        assert pool.pages == 2 and bytes(view) == objs[x]
    pool.check_invariants()
    released = pool.compact()
    # Emptiest page first: z's page (53 free chunks) goes into x's page (43).
    assert released == 1 and pool.pages == 1 and pool.pages_compacted == 1
    assert _where(pool, z)[0] == _where(pool, x)[0] == p1
    assert pool.obj_read(z) == objs[z] and pool.obj_read(x) == objs[x]
    assert pool.compact() == 0 and pool.pages_compacted == 1
    pool.check_invariants()


def test_lone_objects_stay_put_until_some_page_has_room() -> None:
    pool = Z3foldPool(seed=8)
    # Page 1: a (40) + b (20) + m (3); page 2: c (30) + d (30) + n (3).
    a, _ = _filled(pool, 40)
    b, _ = _filled(pool, 20)
    m, _ = _filled(pool, 3)
    c, c_data = _filled(pool, 30)
    d, _ = _filled(pool, 30)
    n, _ = _filled(pool, 3)
    assert pool.pages == 2
    pool.free(d)
    pool.free(n)  # c alone (30 chunks); page 1 is full: no room, c stays
    assert pool.pages == 2
    pool.free(b)  # page 1: a + m, free runs of 20: still no room for c
    assert pool.pages == 2
    pool.free(m)  # a alone (40): page 2 has 33 free: no room either
    assert pool.pages == 2
    assert pool.compact() == 0  # still nothing fits anywhere
    e, _ = _filled(pool, 20)  # lands in page 1 beside a (23 free) ...
    pool.free(a)  # ... and a's departure leaves e alone: e moves to page 2
    assert pool.pages == 1 and pool.obj_read(c) == c_data
    assert _where(pool, e)[0] == _where(pool, c)[0] and _buddy(pool, e) == LAST
    pool.check_invariants()


@pytest.mark.parametrize("size", [3969, 4096])
def test_huge_objects_get_a_whole_headless_page(size: int) -> None:
    pool = Z3foldPool(seed=9)
    small = pool.malloc(100)
    h = pool.malloc(size)
    assert _buddy(pool, h) == HEADLESS and _where(pool, h)[1:] == (0, 4096)
    assert pool.pages == 2
    data = os.urandom(size)
    pool.obj_write(h, data)
    assert pool.obj_read(h, size) == data
    assert pool.class_stats()[1].objs_used == 1
    pool.free(h)
    assert pool.pages == 1 and _where(pool, small)[1] == 64
    pool.check_invariants()


def test_largest_buddy_still_takes_a_partner() -> None:
    pool = Z3foldPool(seed=10)
    big = pool.malloc(MAX_BUDDY_SIZE)
    small = pool.malloc(64)
    assert _buddy(pool, big) == FIRST and _buddy(pool, small) == LAST
    assert pool.pages == 1
    pool.check_invariants()


def test_page_budget_exhausted_then_recovered() -> None:
    pool = Z3foldPool(max_pages=1, seed=11)
    held = [pool.malloc(1000) for _ in range(3)]  # 16 chunks each: one page
    assert pool.pages == 1
    for size in (1000, 1, 4096):
        with pytest.raises(PoolFullError):
            pool.malloc(size)
    assert pool.alloc_failures == 3 and pool.pages == 1 and pool.objs_used == 3
    pool.check_invariants()
    pool.free(held[2])  # the middle buddy
    h = pool.malloc(1000)
    assert pool.pages == 1 and _buddy(pool, h) == MIDDLE
    for x in (held[0], held[1], h):
        pool.free(x)
    assert pool.pages == 0
    pool.malloc(4096)
    assert pool.pages == 1
    pool.check_invariants()


def test_stale_and_forged_handles_raise_even_after_moves() -> None:
    pool = Z3foldPool(seed=12)
    objs, x, y, w, _z = _two_pages(pool)
    pool.free(y)
    pool.free(w)  # x moves to z's page
    for bad in (y, w, y ^ (1 << 40), 0, -5, "h"):
        with pytest.raises(InvalidHandleError):
            pool.free(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidHandleError):
            pool.obj_read(bad)  # type: ignore[arg-type]
    assert pool.obj_read(x) == objs[x]
    pool.free(x)
    with pytest.raises(InvalidHandleError):
        pool.obj_read(x)
    pool.check_invariants()


def test_mapped_middle_is_not_slid() -> None:
    pool = Z3foldPool(seed=14)
    a, _, c = _full_page(pool)
    with pool.map(c, MapMode.RO):
        pool.free(a)
        assert _where(pool, c)[1] == 11 * C  # pinned by the mapping
    pool.check_invariants()
    # compact() finishes the job once it is unmapped.
    assert pool.compact() == 0
    assert _where(pool, c)[1] == 44 * C
    pool.check_invariants()


def test_class_stats_fullness_steps() -> None:
    pool = Z3foldPool(seed=15)
    _full_page(pool)  # 3 of 3
    pool.malloc(2000)
    pool.malloc(1500)  # 2 of 3
    pool.malloc(3000)  # 1 of 3 (3000 = 47 chunks: no room beside the others)
    pool.malloc(4000)  # headless
    buddy, headless = pool.class_stats()
    assert buddy.objs_per_zspage == 3
    assert buddy.zspages[Fullness.FULL] == 1
    assert buddy.zspages[Fullness.RATIO_70] == 1
    assert buddy.zspages[Fullness.RATIO_40] == 1
    assert (buddy.objs_used, buddy.objs_allocated, buddy.pages_used) == (6, 9, 3)
    assert buddy.freeable == 1
    assert (headless.objs_used, headless.pages_used) == (1, 1)
    s = pool.stats()
    assert (s.pages, s.objs_used, s.objs_allocated) == (4, 7, 10)


def test_check_invariants_detects_a_middle_overlapping_the_first() -> None:
    pool = Z3foldPool(seed=16)
    _, _, c = _full_page(pool)
    pool.check_invariants()
    pool._start[pool._handles.location(c)] = 5
    with pytest.raises(AssertionError, match="middle"):
        pool.check_invariants()


def test_three_a_page_beats_zbud_for_small_objects() -> None:
    zbud, z3fold = ZbudPool(seed=17), Z3foldPool(seed=17)
    for pool in (zbud, z3fold):
        for _ in range(300):
            pool.malloc(1000)
        pool.check_invariants()
    assert (zbud.pages, z3fold.pages) == (150, 100)
