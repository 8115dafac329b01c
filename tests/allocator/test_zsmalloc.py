"""ZsPool: spanning objects, map modes, chain sizes, budget, cache, huge class, RSS.

Every test runs on the pure-Python reference and on the compiled pool (zspools.py).
"""

from __future__ import annotations

import itertools
import os
import random
import struct

import pytest

from allocator import AllocatorError, InvalidHandleError, MapMode, PoolFullError
from allocator.handles import GEN_BITS, SLOT_BITS
from allocator.stats import Fullness
from allocator.zsmalloc import ZsPool
from tests.allocator.zspools import ZSPOOLS

# Each test takes ``zspool``: the class under test, pure or compiled.
pytestmark = pytest.mark.parametrize("zspool", ZSPOOLS)


def _spanning_handle(pool: ZsPool, size: int) -> int:
    """Allocate objects of ``size`` until one straddles two pages; return it."""
    for _ in range(10_000):
        h = pool.malloc(size)
        _, _, _, second = pool._locate(h)
        if second >= 0:
            return h
    raise AssertionError("no spanning object found")


def test_roundtrip_every_chain_size(zspool: type[ZsPool]) -> None:
    rng = random.Random(1)
    for chain in range(1, 17):
        pool = zspool(chain_size=chain, seed=chain)
        objs = {}
        for _ in range(400):
            data = rng.randbytes(rng.randint(1, 4096))
            h = pool.malloc(len(data))
            pool.obj_write(h, data)
            objs[h] = data
        pool.check_invariants()
        for h, data in objs.items():
            assert pool.obj_read(h, len(data)) == data


@pytest.mark.parametrize("size", [200, 1100, 3000])
def test_spanning_object_in_every_map_mode(size: int, zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    h = _spanning_handle(pool, size)
    data = os.urandom(size)
    with pool.map(h, MapMode.WO) as buf:
        assert len(buf) >= size and not buf.readonly
        buf[:size] = data
    assert pool.obj_read(h, size) == data
    with pool.map(h, MapMode.RO) as buf:
        assert buf.readonly
        assert bytes(buf[:size]) == data
    with pool.map(h, MapMode.RW) as buf:
        assert bytes(buf[:size]) == data  # RW copies in
        buf[size - 1] = data[size - 1] ^ 0xFF
        buf[0] = data[0] ^ 0xFF
    changed = pool.obj_read(h, size)
    assert changed[0] == data[0] ^ 0xFF and changed[-1] == data[-1] ^ 0xFF
    assert changed[1:-1] == data[1:-1]


def test_write_only_mapping_skips_copy_in_and_read_only_skips_copy_back(
    zspool: type[ZsPool],
) -> None:
    pool = zspool(seed=0)
    h = _spanning_handle(pool, 1100)
    pool.obj_write(h, b"\x11" * 1100)
    with pool.map(h, MapMode.WO) as buf:
        # The assembly buffer did not receive the object's bytes.
        assert bytes(buf[:1100]) != b"\x11" * 1100
        buf[:1100] = b"\x22" * 1100
    assert pool.obj_read(h, 1100) == b"\x22" * 1100
    with pool.map(h, MapMode.RO) as buf, pytest.raises(TypeError):
        buf[0] = 1


def test_object_inside_one_page_maps_without_copy(zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    h = pool.malloc(100)
    with pool.map(h, MapMode.RW) as buf:
        assert buf.obj is pool._arena._map  # a view of the arena itself
        buf[:3] = b"abc"
    assert pool.obj_read(h, 3) == b"abc"


def test_mapping_is_released_at_unmap(zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    h = pool.malloc(100)
    with pool.map(h, MapMode.RW) as buf:
        pass
    with pytest.raises(ValueError):
        buf[0] = 1


def test_free_while_mapped_is_refused_and_compaction_waits(zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    hs = [pool.malloc(500) for _ in range(100)]
    for h in hs[::2]:
        pool.free(h)
    with pool.map(hs[1], MapMode.RO):
        with pytest.raises(AllocatorError):
            pool.free(hs[1])
        assert pool.compact() == 0
    assert pool.compact() > 0
    pool.check_invariants()


def test_page_budget_exhausted_changes_nothing_and_recovers(zspool: type[ZsPool]) -> None:
    pool = zspool(chain_size=8, max_pages=16, seed=0)
    live = []
    with pytest.raises(PoolFullError):
        while True:
            live.append(pool.malloc(3000))
    before = (pool.pages, pool.objs_used, [c.objs_allocated for c in pool.class_stats()])
    with pytest.raises(PoolFullError):
        pool.malloc(3000)
    assert (pool.pages, pool.objs_used, [c.objs_allocated for c in pool.class_stats()]) == before
    assert pool.stats().alloc_failures == 2
    assert pool.pages <= 16
    for h in live[:9]:  # 9 objects of 3000 bytes per 8-page zspage
        pool.free(h)
    live.append(pool.malloc(3000))
    pool.check_invariants()


def test_shorter_zspage_when_budget_cannot_supply_a_whole_one(zspool: type[ZsPool]) -> None:
    strict = zspool(chain_size=8, max_pages=3, seed=0)
    short = zspool(chain_size=8, max_pages=3, short_zspages=True, seed=0)
    with pytest.raises(PoolFullError):
        strict.malloc(3600)  # its class (3632) wants an 8-page zspage
    h = short.malloc(3600)
    short.obj_write(h, b"z" * 3600)
    assert short.pages == 3 and short.obj_read(h, 3600) == b"z" * 3600
    (row,) = [c for c in short.class_stats() if c.objs_used]
    assert row.pages_per_zspage == 8
    assert row.pages_used == 3 and row.objs_allocated == 3 * 4096 // 3632
    short.check_invariants()


def test_empty_zspage_cache_keeps_pages_for_reuse(zspool: type[ZsPool]) -> None:
    pool = zspool(empty_cache=1, seed=0)
    h = pool.malloc(100)
    pages = pool.pages
    pool.free(h)
    assert pool.pages == pages  # kept, on the EMPTY list
    row = next(c for c in pool.class_stats() if c.objs_allocated)
    assert row.zspages[Fullness.EMPTY] == 1
    h = pool.malloc(100)
    assert pool.pages == pages
    pool.free(h)
    assert pool.compact() == pages and pool.pages == 0
    uncached = zspool(seed=0)
    uncached.free(uncached.malloc(100))
    assert uncached.pages == 0


def test_empty_cache_yields_to_the_page_budget(zspool: type[ZsPool]) -> None:
    pool = zspool(empty_cache=4, max_pages=2, seed=0)
    pool.free(pool.malloc(24))  # class 32: a one-page zspage, kept when emptied
    pool.free(pool.malloc(56))  # class 64: likewise
    assert pool.pages == 2
    h = pool.malloc(120)  # class 128 needs a page only the cache can give back
    pool.obj_write(h, b"q" * 120)
    assert pool.pages == 2 and pool.obj_read(h, 120) == b"q" * 120
    pool.check_invariants()


def test_huge_class_object_fills_its_page(zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    data = os.urandom(4096)
    h = pool.malloc(4096)
    pool.obj_write(h, data)
    assert pool.pages == 1 and pool.obj_read(h) == data
    huge = pool.malloc(pool.huge_class_size)
    normal = pool.malloc(pool.huge_class_size - 1)
    used = {c.size: c for c in pool.class_stats() if c.objs_used}
    # Every huge class has the same shape, so all merge into the 4096 class.
    assert used[4096].objs_used == 2 and used[4096].pages_used == 2
    assert used[4096].objs_per_zspage == used[4096].pages_per_zspage == 1
    assert len(used) == 2
    pool.free(huge)
    pool.free(normal)
    pool.check_invariants()


def test_compaction_moves_objects_and_keeps_handles(zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    rng = random.Random(3)
    objs = {}
    for _ in range(3000):
        data = rng.randbytes(rng.choice([300, 700, 1500]))
        h = pool.malloc(len(data))
        pool.obj_write(h, data)
        objs[h] = data
    for h in rng.sample(sorted(objs), 2000):
        pool.free(h)
        del objs[h]
    freeable = sum(c.freeable for c in pool.class_stats())
    before = pool.pages
    released = pool.compact()
    assert released > 0 and pool.pages == before - released
    assert pool.stats().pages_compacted == released
    assert released >= freeable * 0.5
    pool.check_invariants()
    for h, data in objs.items():
        assert pool.obj_read(h, len(data)) == data


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_rss_follows_total_size_up_and_down(zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    base = _rss()
    hs = []
    for _ in range(20_000):
        h = pool.malloc(2000)
        pool.obj_write(h, b"\xab" * 2000)
        hs.append(h)
    grown = _rss() - base
    assert pool.total_size_bytes > 30 << 20
    assert abs(grown - pool.total_size_bytes) < 0.1 * pool.total_size_bytes
    for h in hs:
        pool.free(h)
    assert pool.total_size_bytes == 0
    assert _rss() - base < 0.1 * grown


def test_class_stats_add_up_to_the_pool(zspool: type[ZsPool]) -> None:
    pool = zspool(seed=0)
    for n in range(1, 4097, 7):
        pool.malloc(n)
    rows = pool.class_stats()
    assert sum(r.pages_used for r in rows) * 4096 == pool.total_size_bytes
    assert sum(r.objs_used for r in rows) == pool.objs_used == len(range(1, 4097, 7))
    for r in rows:
        assert sum(r.zspages) * r.objs_per_zspage == r.objs_allocated
        assert r.pages_used == sum(r.zspages) * r.pages_per_zspage


def test_handles_cannot_be_walked_by_counting(zspool: type[ZsPool]) -> None:
    pool = zspool()  # unseeded: generations from os.urandom
    seen = []
    for _ in range(200):
        h = pool.malloc(100)
        seen.append(h >> SLOT_BITS)
        pool.free(h)  # the same slot comes back each time
    assert len(set(seen)) == 200  # 40 random bits a draw: collisions are rare
    steps = {(b - a) % (1 << GEN_BITS) for a, b in itertools.pairwise(seen)}
    assert len(steps) == 199  # no fixed stride to extrapolate


def _poison_through_a_stale_view(pool: ZsPool, word: int) -> list[int]:
    """A view kept past its mapping overwrites a page the pool has since reused."""
    h = pool.malloc(4096)
    with pool.map(h) as view:
        stale = view[:]  # a slice outlives the mapping's release
    pool.free(h)
    held = [pool.malloc(100) for _ in range(2)]  # the page is now a 112-byte zspage
    stale[:] = struct.pack("<Q", word) * 512
    return held


def test_a_free_list_link_overwritten_through_a_stale_view_raises_not_crashes(
    zspool: type[ZsPool],
) -> None:
    """The link to the next free slot lives in the free slot (as the kernel's):
    one far past its zspage is refused before it addresses anything."""
    pool = zspool(seed=1)
    _poison_through_a_stale_view(pool, (5_000_000 + 1) << 1)
    with pytest.raises((AllocatorError, IndexError)):
        for _ in range(200):
            pool.malloc(100)


def test_an_int_subclass_handle_cannot_hide_a_mapping_from_free(zspool: type[ZsPool]) -> None:
    class Lying(int):
        def __and__(self, other: object) -> int:
            return 12345

    pool = zspool(seed=1)
    h = pool.malloc(100)
    pool.obj_write(h, b"x" * 100)
    with pytest.raises((InvalidHandleError, AllocatorError)), pool.map(Lying(h)):
        pool.free(h)
    assert pool.obj_read(h, 100) == b"x" * 100
