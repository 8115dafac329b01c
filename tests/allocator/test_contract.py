"""The contract every allocator keeps, whatever its placement: zsmalloc, zbud, z3fold.

What the page store relies on (allocator.base.Allocator): bad sizes and bad
handles refused without a change, a spent budget refused without a change and
recovered by a free, mapped objects pinned, slot bounds enforced, huge objects
alone on a page, ``store`` equal to ``malloc`` + ``obj_write``, and figures
that add up.  Placement rules of each allocator are in its own test file; the
random operation sequences in test_stateful.py.  zsmalloc runs twice: as
``allocator.create`` gives it (compiled when built) and as the pure-Python reference.
"""

from __future__ import annotations

import os

import pytest

import allocator
from allocator import AllocatorError, InvalidHandleError, MapMode, PoolFullError, zsmalloc

pytestmark = pytest.mark.parametrize("name", [*allocator.ALLOCATORS, "zsmalloc-pure"])


def _pool(name: str, **options: object) -> allocator.Allocator:
    if name == "zsmalloc-pure":
        return zsmalloc.ZsPool(seed=0, **options)  # type: ignore[arg-type]
    return allocator.create(name, seed=0, **options)


@pytest.mark.parametrize("size", [0, -1, 4097, 1.0, "8", True, None])
def test_bad_sizes_raise_value_error_and_take_nothing(name: str, size: object) -> None:
    pool = _pool(name)
    with pytest.raises(ValueError):
        pool.malloc(size)  # type: ignore[arg-type]
    assert pool.pages == 0 and pool.objs_used == 0


def test_store_refuses_empty_and_oversized_data(name: str) -> None:
    pool = _pool(name)
    for data in (b"", bytes(4097)):
        with pytest.raises(ValueError):
            pool.store(data)
    assert pool.pages == 0


@pytest.mark.parametrize("forged", [0, -1, 1, 2**52, 2**80, "1", None, 3.5])
def test_forged_handles_are_refused_everywhere(name: str, forged: object) -> None:
    pool = _pool(name)
    keep = pool.store(b"k" * 64)
    for call in (pool.free, pool.obj_read, lambda h: pool.obj_write(h, b"x")):
        with pytest.raises(InvalidHandleError):
            call(forged)
    with pytest.raises(InvalidHandleError), pool.map(forged, MapMode.RO):  # type: ignore[arg-type]
        pass
    assert pool.objs_used == 1 and pool.obj_read(keep, 64) == b"k" * 64
    pool.check_invariants()


def test_a_stale_handle_never_reaches_its_slots_next_owner(name: str) -> None:
    pool = _pool(name)
    old = pool.store(b"A" * 64)
    pool.free(old)
    new = pool.store(b"B" * 64)
    assert new != old
    for call in (pool.free, pool.obj_read, lambda h: pool.obj_write(h, b"x")):
        with pytest.raises(InvalidHandleError):
            call(old)
    with pytest.raises(InvalidHandleError), pool.map(old, MapMode.RO):
        pass
    assert pool.obj_read(new, 64) == b"B" * 64
    pool.check_invariants()


def test_a_zero_budget_refuses_everything(name: str) -> None:
    pool = _pool(name, max_pages=0)
    for size in (1, 1000, 4096):
        with pytest.raises(PoolFullError):
            pool.malloc(size)
    assert pool.pages == 0 and pool.alloc_failures == 3


def test_a_spent_budget_changes_nothing_and_a_free_recovers_it(name: str) -> None:
    pool = _pool(name, max_pages=4)
    live = []
    with pytest.raises(PoolFullError):
        while True:
            live.append(pool.store(os.urandom(4096)))
    before = (pool.pages, pool.objs_used, pool.stats(), pool.class_stats())
    for size in (1, 2000, 4096):
        with pytest.raises(PoolFullError):
            pool.malloc(size)
    after = (pool.pages, pool.objs_used, pool.stats(), pool.class_stats())
    assert after[:2] == before[:2] and after[3] == before[3]
    assert after[2].alloc_failures == before[2].alloc_failures + 3
    assert pool.pages <= 4
    pool.free(live.pop())
    live.append(pool.store(bytes(range(256)) * 16))
    assert pool.obj_read(live[-1]) == bytes(range(256)) * 16
    pool.check_invariants()


def test_a_mapped_object_cannot_be_freed(name: str) -> None:
    pool = _pool(name)
    h = pool.store(b"m" * 10)
    with pool.map(h, MapMode.RO), pytest.raises(AllocatorError):
        pool.free(h)
    assert pool.obj_read(h, 10) == b"m" * 10
    pool.free(h)
    assert pool.pages == 0
    pool.check_invariants()


@pytest.mark.parametrize("size", [1, 100, 700, 2047, 3000])
def test_map_modes_read_write_and_release(name: str, size: int) -> None:
    pool = _pool(name)
    h = pool.malloc(size)
    data = os.urandom(size)
    with pool.map(h, MapMode.WO) as buf:
        assert not buf.readonly and len(buf) == pool.capacity(size)
        buf[:size] = data
    with pool.map(h, MapMode.RO) as buf:
        assert buf.readonly and bytes(buf[:size]) == data
    with pool.map(h, MapMode.RW) as buf:
        assert bytes(buf[:size]) == data
        buf[size - 1] ^= 0xFF
    assert pool.obj_read(h, size) == data[:-1] + bytes([data[-1] ^ 0xFF])
    with pytest.raises(ValueError):
        _ = buf[0]  # the view is released at unmap
    pool.check_invariants()


@pytest.mark.parametrize("size", [1, 100, 1100, 3000])
def test_reads_and_writes_stop_at_the_slot(name: str, size: int) -> None:
    pool = _pool(name)
    h = pool.malloc(size)
    cap = pool.capacity(size)
    assert cap >= size and len(pool.obj_read(h)) == cap
    pool.obj_write(h, bytes(cap))
    for bad in (lambda: pool.obj_write(h, bytes(cap + 1)), lambda: pool.obj_read(h, cap + 1)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        pool.obj_read(h, -1)


def test_huge_objects_take_a_page_each(name: str) -> None:
    pool = _pool(name)
    small = pool.store(b"s" * 10)
    pages = pool.pages
    for size in (pool.huge_class_size, 4096):
        data = os.urandom(size)
        h = pool.store(data)
        assert pool.pages == pages + 1 and pool.capacity(size) == 4096
        assert pool.obj_read(h, size) == data
        pool.free(h)
        assert pool.pages == pages
    assert pool.obj_read(small, 10) == b"s" * 10
    pool.check_invariants()


@pytest.mark.parametrize("size", [1, 100, 1100, 3000, 3624, 3625, 4096])
def test_store_is_malloc_and_write_in_one(name: str, size: int) -> None:
    stored, written = _pool(name), _pool(name)
    data = os.urandom(size)
    for _ in range(40):  # enough to span pages
        a = stored.store(data)
        b = written.malloc(size)
        written.obj_write(b, data)
        assert stored.obj_read(a, size) == written.obj_read(b, size) == data
    assert stored.pages == written.pages and stored.class_stats() == written.class_stats()
    stored.check_invariants()


def test_class_rows_add_up_to_the_pool(name: str) -> None:
    pool = _pool(name)
    live = [pool.store(os.urandom(n)) for n in (10, 500, 1000, 2000, 3000, 4096) * 20]
    for h in live[::3]:
        pool.free(h)
    rows = pool.class_stats()
    stats = pool.stats()
    assert sum(r.objs_used for r in rows) == pool.objs_used == stats.objs_used
    assert sum(r.pages_used for r in rows) == pool.pages == stats.pages
    assert stats.total_size_bytes == pool.total_size_bytes == pool.pages * 4096
    assert stats.pages_max >= stats.pages
    released = pool.compact()
    assert pool.pages == stats.pages - released and pool.pages_compacted == released
    pool.check_invariants()
