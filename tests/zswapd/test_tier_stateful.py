"""The second tier against a dict model: pages move between memory and the
backing file at random (manual writeback of every type, lru reclaim at small
limits), are stored, loaded, freed, compacted, recompressed, and saved and
restored midway; after every step every live handle loads back exactly and the
kernel's figures (mm_stat, bd_stat) equal a recount from the model.

The model predicts *which* pages each step moves, not just how many: a page's
tier, encoding and stored length, the LRU order and the last access time (the
pool runs on the machine's own clock, stepped by a rule).  Only an lru
reclaim's page count is taken from the pool (it depends on how zspages empty);
which pages it wrote is still the model's: the oldest of its LRU.

ZSWAPD_TIER_EXAMPLES=500 runs it longer (CI keeps it to a few seconds).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

import compressors
from allocator.handles import SLOT_MASK
from tests.zswapd.helpers import PAGES
from zswapd import state
from zswapd.config import PoolConfig
from zswapd.entries import ENCODING, HUGE, WRITTEN
from zswapd.errors import ReclaimFailError
from zswapd.figures import BdStat
from zswapd.pool import WRITEBACK_TYPES, PagePool

EXAMPLES = int(os.environ.get("ZSWAPD_TIER_EXAMPLES", "6"))


@dataclass
class Page:
    """What the model knows of one stored page."""

    data: bytes
    same: bool
    clen: int  # bytes it holds in memory (4096 for a huge page)
    huge: bool  # in memory raw
    atime: int
    recompressed: bool = False
    incompressible: bool = False
    in_file: bool = False


class TierMachine(RuleBasedStateMachine):
    config: ClassVar[dict[str, Any]] = {}
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="zswapd-tier-"))
        self.t = 1000.0
        config = PoolConfig(compressor="lz4", backing_file=str(self.dir / "backing"), **self.config)
        self.pool = PagePool("t", config, seed=5, clock=self.clock)
        self.comp = compressors.get("lz4")
        self.zstd = compressors.get("zstd")
        self.model: dict[int, Page] = {}
        # Pages in memory (same-filled ones aside), least recently used first.
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.limit: int | None = self.config.get("writeback_limit")
        self.bd_reads = self.bd_writes = self.huge_since = 0

    def clock(self) -> float:
        return self.t

    def teardown(self) -> None:
        self.pool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's helpers --------------------------------------------------------

    def now(self) -> int:
        return self.pool._now()

    def write_back(self, handles: list[int]) -> None:
        for h in handles:
            page = self.model[h]
            page.in_file = True
            self.lru.pop(h)
        self.bd_writes += len(handles)

    def touch(self, handles: list[int]) -> None:
        """A load: access times, the LRU, pages read from the file."""
        now = self.now()
        for h in handles:
            page = self.model[h]
            page.atime = now
            if page.in_file:
                self.bd_reads += 1
            elif not page.same:
                self.lru.move_to_end(h)

    def by_slot(self) -> list[int]:
        return sorted(self.model, key=lambda h: h & SLOT_MASK)

    # -- rules ----------------------------------------------------------------------

    @rule(target=handles, pages=st.lists(PAGES, min_size=1, max_size=6))
    def store(self, pages: list[bytes]) -> Any:
        pool, c = self.pool, self.pool.counters
        writes, fails = c.bd_writes, c.reject_reclaim_fail
        try:
            handles = pool.store(pages)
        except ReclaimFailError:
            handles = []
            assert c.reject_reclaim_fail > fails
        # lru reclaim wrote the oldest pages of the LRU, however many it took.
        wrote = c.bd_writes - writes
        if wrote:
            assert pool.writeback_mode == "lru"
            self.write_back(list(self.lru)[:wrote])
        if not handles:
            return multiple()  # nothing stored: the invariant recounts the rest
        now = self.now()
        for h, data in zip(handles, pages, strict=True):
            same = data == data[:8] * 512
            clen = 0 if same else len(self.comp.compress(data))
            huge = clen >= pool.huge_class_size
            self.huge_since += huge
            self.model[h] = Page(data, same, 4096 if huge else clen, huge, now)
            if not same:
                self.lru[h] = None
        return multiple(*handles)

    @rule(hs=st.lists(handles, min_size=1, max_size=4, unique=True))
    def load(self, hs: list[int]) -> None:
        assert self.pool.load(hs) == [self.model[h].data for h in hs]
        self.touch(hs)

    @rule(h=consumes(handles))
    def free(self, h: int) -> None:
        self.pool.free([h])
        del self.model[h]
        self.lru.pop(h, None)

    @rule()
    def compact(self) -> None:
        self.pool.compact()

    @rule(seconds=st.integers(0, 3))
    def tick(self, seconds: int) -> None:
        self.t += seconds

    @rule(limit=st.one_of(st.none(), st.integers(0, 6)))
    def set_writeback_limit(self, limit: int | None) -> None:
        self.pool.set_live_settings(writeback_limit=limit)
        self.limit = limit

    @rule(
        type=st.sampled_from(WRITEBACK_TYPES),
        idle_seconds=st.integers(0, 3),
        max_pages=st.one_of(st.none(), st.integers(1, 8)),
    )
    def writeback(self, type: str, idle_seconds: int, max_pages: int | None) -> None:
        horizon = self.now() - idle_seconds
        if type == "lru":
            picked = list(self.lru)[: max_pages or len(self.lru)]
            candidates = len(self.lru)  # the pages on the LRU, before max_pages
        else:
            picked = []
            for h in self.by_slot():
                p = self.model[h]
                if p.in_file or p.same:
                    continue
                if type in ("huge", "huge_idle") and not p.huge:
                    continue
                if type in ("idle", "huge_idle") and p.atime > horizon:
                    continue
                if type == "incompressible" and not p.incompressible:
                    continue
                picked.append(h)
            candidates = len(picked)
            picked = picked[:max_pages]
        room = self.pool.backing.slots - sum(p.in_file for p in self.model.values())
        limit = len(picked) if self.limit is None else self.limit
        n = min(len(picked), limit, room)
        stopped = (
            "backing_full"
            if room < min(len(picked), limit)
            else "writeback_limit"
            if limit < len(picked)
            else None
        )
        idle = idle_seconds if type in ("idle", "huge_idle") else None
        got = self.pool.writeback(type, idle_seconds=idle, max_pages=max_pages)
        if self.limit is not None:
            self.limit -= n
        assert got["candidates"] == candidates
        assert (got["written_back"], got["stopped"]) == (n, stopped)
        assert got["writeback_limit"] == self.limit
        self.write_back(picked[:n])

    @rule(type=st.sampled_from(["huge", "idle", "huge_idle"]), idle_seconds=st.integers(0, 2))
    def recompress(self, type: str, idle_seconds: int) -> None:
        horizon = self.now() - idle_seconds
        expect: dict[int, int | None] = {}  # handle: its new length, None: incompressible
        capacity = self.pool._alloc.capacity
        for h in self.by_slot():
            p = self.model[h]
            if p.in_file or p.same or p.recompressed:
                continue
            if type in ("huge", "huge_idle") and not p.huge:
                continue
            if type in ("idle", "huge_idle") and p.atime > horizon:
                continue
            new = len(self.zstd.compress(p.data))
            if new >= self.pool.huge_class_size or capacity(min(new, 4096)) >= capacity(p.clen):
                if p.huge:
                    expect[h] = None
                continue
            expect[h] = new
        got = self.pool.recompress(type, algo="zstd", idle_seconds=idle_seconds)
        e = self.pool._entries
        for h, new in expect.items():
            p = self.model[h]
            if new is None:
                p.incompressible = True
            elif got["alloc_failed"] and e.clen[e.slot(h)] == p.clen:
                continue  # at the pool's limit: which ones failed is the allocator's call
            else:
                p.clen, p.huge, p.recompressed = new, False, True
        assert got["recompressed"] + got["alloc_failed"] == sum(
            1 for n in expect.values() if n is not None
        )

    @rule()
    def save_and_restore(self) -> None:
        now = self.now()
        path = state.save_pool(self.pool, self.dir / "state")
        self.pool.close()
        self.pool = pool = state.load_pool(path)
        # The restored pool's clock starts at its oldest page's age; the
        # model's times move with it, and the pool goes back on the model's clock.
        oldest = max((now - p.atime for p in self.model.values()), default=0)
        for p in self.model.values():
            p.atime += oldest - now
        pool._clock, pool._t0 = self.clock, self.t - oldest
        # Restored oldest first; within a second the order is lost (by slot).
        order = sorted(self.lru, key=lambda h: (self.model[h].atime, h & SLOT_MASK))
        self.lru = OrderedDict.fromkeys(order)

    # -- after every step -----------------------------------------------------------

    @invariant()
    def books_balance_and_everything_loads_back(self) -> None:
        pool = self.pool
        pool.check_invariants()
        s = pool.stats()
        mm, bd, backing = s.mm_stat, s.bd_stat, s.backing
        pages = self.model.values()
        in_memory = [p for p in pages if not p.same and not p.in_file]
        assert mm.orig_data_size == 4096 * len(self.model)
        assert mm.same_pages == sum(p.same for p in pages)
        assert mm.compr_data_size == sum(p.clen for p in in_memory)
        assert mm.huge_pages == sum(p.huge for p in in_memory)
        assert mm.huge_pages_since == self.huge_since
        if pool.config.limit_bytes:
            assert mm.mem_used_total <= pool.config.limit_bytes
        assert bd == BdStat(
            bd_count=sum(p.in_file for p in pages),
            bd_reads=self.bd_reads,
            bd_writes=self.bd_writes,
        )
        assert s.zswap.written_back_pages == self.bd_writes
        assert backing is not None
        assert backing.used_slots == bd.bd_count
        assert backing.lru_pages == len(in_memory) == len(self.lru)
        assert backing.writeback_limit == self.limit
        # The pool's own view of each page agrees with the model's.
        e = pool._entries
        assert pool._entries.lru_oldest(len(self.lru) + 1) == [h & SLOT_MASK for h in self.lru]
        for h, p in self.model.items():
            kind = e.kind[e.slot(h)]
            assert bool(kind & WRITTEN) == p.in_file
            assert (kind & ENCODING == HUGE) == p.huge
        if self.model:
            handles = list(self.model)
            assert pool.load(handles) == [self.model[h].data for h in handles]
            self.touch(handles)
            assert pool.stats().bd_stat.bd_reads == self.bd_reads


def _machine(**config: Any) -> type[TierMachine]:
    machine = type("TierMachine", (TierMachine,), {"config": config})
    machine.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return machine


# zram: pages leave only when asked, under a writeback_limit; the file fills.
TestManualPool = _machine(backing_size=24 * 4096, writeback_limit=10).TestCase
# zswap: a small limit, so stores write back; the file large enough to take them.
TestLruPool = _machine(writeback="lru", limit_bytes=10 * 4096, backing_size=256 * 4096).TestCase
# zswap with a file that fills: stores end in reclaim_fail.
TestLruPoolSmallFile = _machine(
    writeback="lru", limit_bytes=8 * 4096, accept_threshold_percent=50, backing_size=6 * 4096
).TestCase
# The same machine on z3fold: its own classes, huge size and compaction.
TestLruZ3foldPool = _machine(
    writeback="lru", allocator="z3fold", limit_bytes=8 * 4096, backing_size=128 * 4096
).TestCase
