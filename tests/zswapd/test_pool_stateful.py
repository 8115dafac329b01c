"""PagePool against a dict model: store / load / free / compact / recompress in
any order, with same-filled, compressible and incompressible pages, on several
configurations; every live handle loads back exactly and the books balance."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest
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

from tests.zswapd.helpers import PAGES
from zswapd.config import PoolConfig
from zswapd.errors import CompressPoorError, PoolLimitError, StaleHandleError
from zswapd.pool import PagePool


class PoolMachine(RuleBasedStateMachine):
    config: ClassVar[dict[str, Any]] = {}
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.pool = PagePool("m", PoolConfig(**self.config), seed=3)
        self.model: dict[int, bytes] = {}
        self.freed: list[int] = []

    @rule(target=handles, pages=st.lists(PAGES, min_size=1, max_size=6))
    def store(self, pages: list[bytes]) -> Any:
        before = self.pool.mm_stat()
        try:
            handles = self.pool.store(pages)
        except (PoolLimitError, CompressPoorError):
            after = self.pool.mm_stat()
            # All or nothing; only mem_used_max keeps the peak reached (zram's).
            assert after.mem_used_max >= before.mem_used_max
            assert dataclasses.replace(after, mem_used_max=before.mem_used_max) == before
            return multiple()
        self.model.update(zip(handles, pages, strict=True))
        return multiple(*handles)

    @rule(h=handles)
    def load(self, h: int) -> None:
        assert self.pool.load([h]) == [self.model[h]]

    @rule(h=consumes(handles))
    def free(self, h: int) -> None:
        self.pool.free([h])
        del self.model[h]
        self.freed.append(h)

    @rule()
    def compact(self) -> None:
        self.pool.compact()

    @rule(kind=st.sampled_from(["huge", "idle", "huge_idle"]))
    def recompress(self, kind: str) -> None:
        self.pool.recompress(kind, algo="zstd", level=19)

    @precondition(lambda self: bool(self.freed))
    @rule(data=st.data())
    def stale_handle(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.freed))
        with pytest.raises(StaleHandleError):
            self.pool.load([h])

    @invariant()
    def everything_loads_back(self) -> None:
        if self.model:
            handles = list(self.model)
            assert self.pool.load(handles) == [self.model[h] for h in handles]

    @invariant()
    def books_balance(self) -> None:
        self.pool.check_invariants()
        mm = self.pool.mm_stat()
        assert mm.orig_data_size == 4096 * len(self.model)
        same = sum(1 for p in self.model.values() if p == p[:8] * 512)
        assert mm.same_pages == same
        if self.pool.config.limit_bytes:
            assert mm.mem_used_total <= self.pool.config.limit_bytes


def _machine(**config: Any) -> type[PoolMachine]:
    machine = type("PoolMachine", (PoolMachine,), {"config": config})
    machine.TestCase.settings = settings(
        max_examples=40,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return machine


TestDefaultPool = _machine().TestCase
TestLz4LimitedPool = _machine(compressor="lz4", limit_bytes=24 * 4096).TestCase
TestRejectingZbudPool = _machine(compressor="lz4", allocator="zbud", huge_policy="reject").TestCase
TestZ3foldHysteresis = _machine(
    allocator="z3fold", limit_bytes=16 * 4096, accept_threshold_percent=70
).TestCase
