"""Every allocator against a dict model: whatever the order of operations, every
live handle reads back exactly, freed handles raise, and the books balance.

The same machine runs against zsmalloc (several configurations, on the compiled
pool when built; the kernel's also on the pure-Python reference, and CI runs them
all again with ZSWAPD_PURE_PYTHON=1), zbud and z3fold.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

import allocator
from allocator import InvalidHandleError, MapMode, PoolFullError, zsmalloc

# Lengths that hit the interesting places: the smallest class, the kernel's
# merged classes, objects that span pages, the edge of the huge class, a page.
SIZES = st.one_of(
    # A few sizes often, so that classes hold several zspages and compaction
    # has objects to move.
    st.sampled_from([1016, 2040, 2700, 700]),
    st.sampled_from([1016, 2040, 2700, 700]),
    st.integers(1, 64),
    st.integers(65, 4096),
    st.sampled_from([1, 24, 25, 1000, 1100, 2048, 3000, 3617, 3624, 3625, 4088, 4096]),
)


class AllocatorMachine(RuleBasedStateMachine):
    """Runs one allocator configuration beside a ``{handle: bytes}`` model."""

    name = "zsmalloc"
    pure = False
    options: ClassVar[dict[str, Any]] = {}

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        if self.pure:
            self.pool = zsmalloc.ZsPool(max_pages=96, seed=7, **self.options)
        else:
            self.pool = allocator.create(self.name, max_pages=96, seed=7, **self.options)
        self.model: dict[int, bytes] = {}
        self.freed: list[int] = []
        self.rng = random.Random(0)

    @rule(target=handles, size=SIZES)
    def malloc_and_write(self, size: int) -> Any:
        data = self.rng.randbytes(size)
        pages = self.pool.pages
        try:
            h = self.pool.malloc(size)
        except PoolFullError:
            assert self.pool.pages == pages  # nothing changed
            return multiple()
        self.pool.obj_write(h, data)
        self.model[h] = data
        return h

    @rule(target=handles, size=SIZES)
    def store(self, size: int) -> Any:
        data = self.rng.randbytes(size)
        pages = self.pool.pages
        try:
            h = self.pool.store(data)
        except PoolFullError:
            assert self.pool.pages == pages
            return multiple()
        self.model[h] = data
        return h

    @rule(h=consumes(handles))
    def free(self, h: int) -> None:
        self.pool.free(h)
        del self.model[h]
        self.freed.append(h)

    @rule(h=handles, mode=st.sampled_from([MapMode.WO, MapMode.RW]))
    def rewrite_through_map(self, h: int, mode: MapMode) -> None:
        old = self.model[h]
        new = self.rng.randbytes(len(old))
        with self.pool.map(h, mode) as buf:
            if mode is MapMode.RW:
                assert bytes(buf[: len(old)]) == old
            buf[: len(new)] = new
        self.model[h] = new

    @rule(h=handles)
    def read_through_map(self, h: int) -> None:
        with self.pool.map(h, MapMode.RO) as buf:
            assert bytes(buf[: len(self.model[h])]) == self.model[h]

    @rule()
    def compact(self) -> None:
        before = self.pool.pages
        released = self.pool.compact()
        assert released >= 0 and self.pool.pages == before - released

    @precondition(lambda self: bool(self.freed))
    @rule(pick=st.integers(0, 10_000))
    def stale_handle_raises(self, pick: int) -> None:
        h = self.freed[pick % len(self.freed)]
        for call in (self.pool.free, self.pool.obj_read):
            try:
                call(h)
            except InvalidHandleError:
                continue
            raise AssertionError(f"stale handle {h} was accepted")

    @invariant()
    def every_live_handle_reads_back(self) -> None:
        for h, data in self.model.items():
            assert self.pool.obj_read(h, len(data)) == data

    @invariant()
    def books_balance(self) -> None:
        self.pool.check_invariants()
        rows = self.pool.class_stats()
        assert self.pool.objs_used == len(self.model)
        if rows:
            assert sum(r.objs_used for r in rows) == len(self.model)
            assert sum(r.pages_used for r in rows) * 4096 == self.pool.total_size_bytes
        assert self.pool.pages <= 96


def _machine(name: str, pure: bool = False, **options: Any) -> type[AllocatorMachine]:
    machine = type(
        f"{name}Machine", (AllocatorMachine,), {"name": name, "pure": pure, "options": options}
    )
    machine.TestCase.settings = settings(
        max_examples=100,
        stateful_step_count=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return machine


TestZsmallocKernel = _machine("zsmalloc").TestCase
TestZsmallocChain4Cached = _machine("zsmalloc", chain_size=4, empty_cache=2).TestCase
TestZsmallocHeaderless = _machine("zsmalloc", chain_size=16, header=0, class_step=8).TestCase
TestZsmallocShortZspages = _machine("zsmalloc", short_zspages=True).TestCase
TestZsmallocPure = _machine("zsmalloc", pure=True).TestCase
TestZbud = _machine("zbud").TestCase
TestZ3fold = _machine("z3fold").TestCase
