"""HandleTable: fresh 40-bit generations on every reuse, a clean full table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import HandleTableFullError, InvalidHandleError, PoolFullError, ZsPool
from allocator.handles import GEN_BITS, MAX_SLOTS, SLOT_BITS, SLOT_MASK, HandleTable

DRAWS = 4096


def _reuse_generations(table: HandleTable, n: int) -> list[int]:
    """Generations issued to one slot, freed and issued again ``n`` times."""
    gens = []
    for _ in range(n):
        h = table.alloc(0)
        gens.append(h >> SLOT_BITS)
        table.release(h & SLOT_MASK)
    return gens


def _bit_shares(values: list[int], bits: int) -> list[float]:
    return [sum(v >> b & 1 for v in values) / len(values) for b in range(bits)]


def test_layout_is_40_generation_bits_over_24_slot_bits() -> None:
    assert (GEN_BITS, SLOT_BITS) == (40, 24)
    assert GEN_BITS >= 40
    assert MAX_SLOTS == 2**24 - 1 == 16_777_215


def test_every_reuse_draws_a_fresh_random_generation_of_40_bits() -> None:
    gens = _reuse_generations(HandleTable(), DRAWS)  # unseeded: os.urandom
    assert all(0 < g < 2**GEN_BITS for g in gens)
    # Distinct: 4,096 draws from 2**40 collide with odds of about 1 in 130,000.
    assert len(set(gens)) == DRAWS
    # Every one of the 40 bits is a coin toss (4,096 tosses: 50% +- 2.4% at 3 sigma).
    for share in _bit_shares(gens, GEN_BITS):
        assert 0.45 < share < 0.55
    # No arithmetic relation to the previous generation: the step from one to
    # the next (mod 2**40) and their XOR are as random as the draws themselves.
    # (The old scheme, old + 1 + r with r < 2**23, left the step's top 17 bits 0.)
    steps = [(b - a) % 2**GEN_BITS for a, b in itertools.pairwise(gens)]
    xors = [a ^ b for a, b in itertools.pairwise(gens)]
    for derived in (steps, xors):
        for share in _bit_shares(derived, GEN_BITS):
            assert 0.45 < share < 0.55


def test_the_retired_generation_is_never_reissued_at_once() -> None:
    table = HandleTable(seed=3)
    h = table.alloc(7)
    table.release(h & SLOT_MASK)
    with pytest.raises(InvalidHandleError):
        table.location(h)
    again = table.alloc(8)
    assert again & SLOT_MASK == h & SLOT_MASK and again != h
    with pytest.raises(InvalidHandleError):
        table.take(h)
    assert table.location(again) == 8


def test_handles_are_unsigned_64_bit() -> None:
    pool = ZsPool()
    handles = [pool.malloc(100) for _ in range(1000)]
    assert all(0 < h < 2**64 for h in handles)
    assert max(handles) >= 2**53  # JavaScript clients need BigInt: said in the docstring


def test_a_full_handle_table_raises_and_changes_nothing() -> None:
    table = HandleTable(seed=1, max_slots=3)
    handles = [table.alloc(i) for i in range(3)]
    assert table.room == 0
    with pytest.raises(HandleTableFullError):
        table.alloc(9)
    assert table.live == 3 and [table.location(h) for h in handles] == [0, 1, 2]
    table.release(handles[1] & SLOT_MASK)
    assert table.room == 1
    assert table.location(table.alloc(5)) == 5


def test_handle_table_full_is_a_pool_full_error() -> None:
    assert issubclass(HandleTableFullError, PoolFullError)
    with pytest.raises(ValueError):
        HandleTable(max_slots=MAX_SLOTS + 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=300))
def test_trimming_the_free_top_keeps_every_live_handle(ops: list[tuple[bool, int]]) -> None:
    table = HandleTable(seed=3)
    live: dict[int, int] = {}  # handle -> location
    dead: list[int] = []
    for n, (alloc, pick) in enumerate(ops):
        if alloc or not live:
            live[table.alloc(n)] = n
        else:
            handle = sorted(live)[pick % len(live)]
            del live[handle]
            table.release(table.slot(handle))
            dead.append(handle)
        run = table.free_top()
        if run and pick % 3 == 0:
            table.trim(run)
            assert table.free_top() == 0
            assert len(table) == 1 + max((h & SLOT_MASK for h in live), default=0)
        for handle, location in live.items():
            assert table.location(handle) == location
        for handle in dead:
            if handle not in live:
                with pytest.raises(InvalidHandleError):
                    table.location(handle)
        assert table.free_slots == len(table) - 1 - len(live) == len(table) - 1 - table.live


def test_trim_refuses_a_top_that_is_not_free() -> None:
    table = HandleTable(seed=1)
    handles = [table.alloc(0) for _ in range(4)]
    table.release(table.slot(handles[1]))
    assert table.free_top() == 0
    with pytest.raises(ValueError):
        table.trim(1)
    table.release(table.slot(handles[3]))
    table.release(table.slot(handles[2]))
    assert table.free_top() == 3
    table.trim(3)
    assert len(table) == 2 and table.location(handles[0]) == 0
    assert table.alloc(5) & SLOT_MASK == 2  # a new slot above, the chain empty
