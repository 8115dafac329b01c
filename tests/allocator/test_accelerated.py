"""One behaviour: the compiled ZsPool against the pure-Python reference.

A hypothesis state machine builds both pools with the same options (every
class-table option, chain size, budget and cache) and drives them with the same
random operations: malloc of every size 1..4096 and of sizes that are not
sizes, store, free (also of freed and forged handles), obj_write and obj_read
(also past the slot), writes through a mapping, compaction, budget changes and
exhaustion.  After every step the two must agree on everything visible: the
handle each call returned, or the error's type and message; each live object's
placement (class, address, split) and its bytes, the whole slot; class_stats,
stats, total_size_bytes and pages_compacted.  Both pools check their own
invariants with the same check.

Skipped when the extension is not built (saying how to build it).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from allocator import MapMode, PageBudget, zsmalloc
from allocator.handles import SLOT_BITS
from tests.allocator.zspools import COMPILED, NOT_BUILT

if COMPILED is None:
    pytest.skip(NOT_BUILT, allow_module_level=True)

# Sizes that matter (smallest class, merged classes, spans, the huge edge, a
# page) often, and every other size 1..4096 sometimes.
SIZES = st.one_of(
    st.sampled_from([1, 24, 25, 700, 1000, 1016, 1100, 2040, 2048, 2700, 3000, 3617, 3625, 4096]),
    st.integers(1, 4096),
)
BAD_SIZES = st.sampled_from([0, -1, 4097, 2**64, 1.0, "8", True, None, b"x"])
FORGED = st.one_of(
    st.sampled_from([0, -1, 1, 2**24, 2**52, 2**64, 2**80, "1", None, 3.5, True, b"\x01"]),
    st.integers(-(2**70), 2**70),
)
OPTIONS = st.fixed_dictionaries(
    {
        "chain_size": st.integers(1, 16),
        "empty_cache": st.integers(0, 3),
        "short_zspages": st.booleans(),
        "header": st.sampled_from([0, 8]),
        "merge_classes": st.booleans(),
        "max_pages": st.one_of(st.none(), st.integers(0, 120)),
        "seed": st.integers(0, 2**32),
    }
)
CLASSES = st.one_of(
    st.fixed_dictionaries({"class_step": st.sampled_from([8, 16, 24, 64, 512])}),
    st.fixed_dictionaries(
        {"class_sizes": st.lists(st.integers(2, 512).map(lambda n: n * 8), max_size=20)}
    ),
)


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call did: its value, or its error's type and message."""
    try:
        return ("ok", call())
    except Exception as exc:  # every error must match, whatever it is
        return ("raised", type(exc), str(exc))


class OneBehaviour(RuleBasedStateMachine):
    """The reference and the compiled pool, side by side."""

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.pure: Any = zsmalloc.ZsPool(seed=1)
        self.fast: Any = COMPILED(seed=1)
        self.sizes: dict[int, int] = {}
        self.freed: list[int] = []
        self.data_seed = 0

    def both(self, call: Callable[[Any], Any]) -> tuple[Any, ...]:
        want, got = outcome(lambda: call(self.pure)), outcome(lambda: call(self.fast))
        assert got == want, (got, want)
        return want

    def payload(self, n: int) -> bytes:
        self.data_seed += 1
        return self.data_seed.to_bytes(8, "little") * (n // 8) + os.urandom(n % 8)

    @initialize(options=OPTIONS, classes=CLASSES, shared=st.one_of(st.none(), st.integers(0, 80)))
    def build(self, options: dict[str, Any], classes: dict[str, Any], shared: int | None) -> None:
        def make(cls: Any) -> Any:
            budget = None if shared is None else PageBudget(shared)
            return cls(**options, **classes, budget=budget)

        pure, fast = outcome(lambda: make(zsmalloc.ZsPool)), outcome(lambda: make(COMPILED))
        if pure[0] == "ok" and fast[0] == "ok":
            self.pure, self.fast = pure[1], fast[1]
            return
        # Options refused: refused alike; the run goes on with default pools.
        assert fast == pure, (fast, pure)
        self.pure, self.fast = zsmalloc.ZsPool(seed=1), COMPILED(seed=1)

    def _kept(self, result: tuple[Any, ...], size: int) -> Any:
        if result[0] == "ok":
            self.sizes[result[1]] = size
            return result[1]
        return multiple()

    @rule(target=handles, size=SIZES)
    def malloc(self, size: int) -> Any:
        return self._kept(self.both(lambda p: p.malloc(size)), size)

    @rule(target=handles, size=SIZES)
    def store(self, size: int) -> Any:
        data = self.payload(size)
        return self._kept(self.both(lambda p: p.store(data)), size)

    @rule(size=BAD_SIZES)
    def malloc_a_bad_size(self, size: Any) -> None:
        self.both(lambda p: p.malloc(size))

    @rule(n=st.sampled_from([0, 4097, 10_000]))
    def store_a_bad_length(self, n: int) -> None:
        self.both(lambda p: p.store(bytes(n)))

    @rule(h=consumes(handles))
    def free(self, h: int) -> None:
        self.both(lambda p: p.free(h))
        self.sizes.pop(h, None)
        self.freed.append(h)

    @precondition(lambda self: bool(self.freed))
    @rule(pick=st.integers(0, 1000))
    def free_again(self, pick: int) -> None:
        h = self.freed[pick % len(self.freed)]
        self.both(lambda p: p.free(h))
        self.both(lambda p: p.obj_read(h))

    @rule(h=FORGED)
    def forged_handle(self, h: Any) -> None:
        for call in (
            lambda p: p.free(h),
            lambda p: p.obj_read(h),
            lambda p: p.obj_write(h, b"x"),
            lambda p: p.map(h, MapMode.RO).__enter__(),
        ):
            self.both(call)

    @rule(h=handles, slack=st.integers(-8, 8))
    def obj_write(self, h: int, slack: int) -> None:
        n = max(0, self.sizes[h] + slack)
        data = self.payload(n)
        self.both(lambda p: p.obj_write(h, data))

    @rule(h=handles, size=st.one_of(st.none(), st.integers(-2, 4100)))
    def obj_read(self, h: int, size: int | None) -> None:
        self.both(lambda p: p.obj_read(h, size))

    @rule(h=handles, mode=st.sampled_from([MapMode.RO, MapMode.WO, MapMode.RW]))
    def write_through_a_mapping(self, h: int, mode: MapMode) -> None:
        data = self.payload(self.sizes[h])

        def through(p: Any) -> bytes:
            with p.map(h, mode) as buf:
                seen = bytes(buf) if mode is not MapMode.WO else b""
                if not buf.readonly:
                    buf[: len(data)] = data
                # A mapped object pins the pool: no free, no compaction.
                assert p.compact() == 0
            return seen

        self.both(through)

    @rule()
    def compact(self) -> None:
        self.both(lambda p: p.compact())

    @rule(limit=st.one_of(st.none(), st.integers(0, 120)))
    def set_max_pages(self, limit: int | None) -> None:
        self.both(lambda p: p.set_max_pages(limit))

    @invariant()
    def same_figures(self) -> None:
        # The handle table's bytes are each pool's own (13 a slot compiled, one
        # record; 16 pure, two arrays); the same slots behind them.
        want, got = self.pure.stats(), self.fast.stats()
        assert got.handle_table_bytes * 16 == want.handle_table_bytes * 13
        for figure in (
            lambda p: p.class_stats(),
            lambda p: dataclasses.replace(p.stats(), handle_table_bytes=0),
            lambda p: (p.total_size_bytes, p.pages, p.objs_used, p.pages_compacted),
            lambda p: (p.pages_max, p.alloc_failures, p.chain_size, p.huge_class_size),
        ):
            self.both(figure)
        shared = self.pure.shared_budget, self.fast.shared_budget
        if shared[0] is not None:
            assert shared[0].used == shared[1].used

    @invariant()
    def same_placement_and_bytes(self) -> None:
        for h in self.sizes:
            cls, addr, split, second = self.pure._locate(h)
            assert self.fast._locate(h) == (cls.position, addr, split, second)
            assert self.fast.obj_read(h) == self.pure.obj_read(h)
        self.pure.check_invariants()
        self.fast.check_invariants()


OneBehaviour.TestCase.settings = settings(
    max_examples=int(os.environ.get("ZSWAPD_DIFFERENTIAL_EXAMPLES", "150")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestOneBehaviour = OneBehaviour.TestCase


def test_handles_are_the_same_for_the_same_seed() -> None:
    pure, fast = zsmalloc.ZsPool(seed=11), COMPILED(seed=11)
    issued = [(pure.malloc(n), fast.malloc(n)) for n in range(1, 4097)]
    assert all(a == b for a, b in issued)
    assert pure.class_stats() == fast.class_stats()


def test_unseeded_generations_are_fresh_in_the_compiled_pool_too() -> None:
    pool = COMPILED()
    seen = set()
    for _ in range(200):
        h = pool.malloc(100)
        seen.add(h >> SLOT_BITS)
        pool.free(h)
    assert len(seen) == 200


def test_a_pool_in_a_reference_cycle_is_collected_cleanly() -> None:
    """The cyclic collector frees a compiled pool (its arena held as a buffer) and a
    view of it kept past it: no crash (it segfaulted), no ignored BufferError."""
    program = """if True:
        import gc, sys
        from allocator._zsmalloc import ZsPool
        ignored = []
        sys.unraisablehook = lambda u: ignored.append(repr(u.exc_value))
        for _ in range(3):
            pool = ZsPool()
            h = pool.malloc(100)
            pool.obj_write(h, b"x" * 100)
            pool.cycle = [pool]
            del pool
            gc.collect()
        print(ignored)
    """
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
