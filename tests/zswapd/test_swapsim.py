"""SwapSim: swap's reaction to a timeline, against a plain model, in a real pool."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zswapd.config import PoolConfig
from zswapd.pool import PagePool
from zswapd.swapsim import LocalTarget, SwapSim, SwapSimError
from zswapd.timeline import Event, EventKind, ProcessScan, TickEnd

PIDS = (101, 202)
ADDRESSES = tuple(0x10000 + i * 4096 for i in range(24))


def page(seed: int) -> bytes:
    """A page that compresses to a little under half: 1800 bytes no compressor
    can shorten, then zeros (so a small limit fills in a few dozen pages)."""
    head = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(57))[:1800]
    return head + bytes(4096 - len(head))


def scans(resident: int = 10) -> tuple[ProcessScan, ...]:
    return tuple(ProcessScan(pid, f"p{pid}", resident, 4096 * resident, 0.001) for pid in PIDS)


def same_filled(data: bytes) -> bool:
    return data[:8] * 512 == data


class SwapModel(RuleBasedStateMachine):
    """Random COLD/CHANGED/GONE/EXIT against a pool with a small limit.

    The model is a dict of the cold pages and their bytes: whatever the pool
    did with them (stored, waiting for room), cold is cold, and every stored
    page must come back as it went in.  Another client of the pool may free
    stored pages behind the shadow's back: each is lost (not a refault) when
    the shadow next loads or frees it, or at the tick's end, when the pool
    holds fewer pages than the shadow stored.  Another client may change the
    pool's limit.

    The limit's rules: a same-filled page is stored whatever the limit (it
    takes no pool memory), so it never waits; and once the pool refused a
    page for room, a tick retries no waiting page (no request, no
    pool_limit_hit) until room may have been made: a page of the shadow's
    freed (refault, gone, exit, lost) or the limit changed.
    """

    # Made for 10 pages, then held to 5 (about 10 cold pages): another client
    # may raise it back.
    config = PoolConfig(compressor="lz4", limit_bytes=10 * 4096)

    def __init__(self) -> None:
        super().__init__()
        self.pool = PagePool("m", self.config)
        self.pool.set_live_settings(limit_bytes=5 * 4096)
        # Whether room may have been made since the pool last refused a page.
        self.room = True
        self.hits = 0
        self.content: dict[tuple[int, int], bytes] = {}  # what each page holds now
        self.cold: dict[tuple[int, int], bytes] = {}
        self.sim = SwapSim(LocalTarget(self.pool), self._fetch)
        self.t = 0.0
        self.seed = 0
        self.freed_by_other: set[tuple[int, int]] = set()  # not yet found by the shadow
        self.lost = 0

    def _fetch(self, e: Event) -> bytes | None:
        return self.cold.get((e.pid, e.address))

    def teardown(self) -> None:
        self.pool.close()

    @rule(pid=st.sampled_from(PIDS), addresses=st.lists(st.sampled_from(ADDRESSES), max_size=8))
    def go_cold(self, pid: int, addresses: list[int]) -> None:
        events = []
        for a in addresses:
            key = (pid, a)
            if key in self.cold:
                continue
            self.seed += 1
            data = page(self.seed)
            if self.seed % 5 == 0:  # same-filled too: zeros, and another word
                data = bytes(4096) if self.seed % 10 else bytes(range(1, 9)) * 512
            self.content[key] = self.cold[key] = data
            events.append(Event(EventKind.COLD, pid, a, data))
        self.sim.feed(events)
        self._refused()

    def _refused(self) -> bool:
        """Whether the pool refused a page for room since the last look."""
        hits = self.pool.counters.pool_limit_hit
        refused, self.hits = hits > self.hits, hits
        if refused:
            self.room = False
        return refused

    def _frees(self, keys: set[tuple[int, int]] | list[tuple[int, int]]) -> None:
        """Events about to reach ``keys``: any the shadow stored is freed or lost."""
        if any(self.sim.stored(*k) for k in keys):
            self.room = True

    def _found(self, keys: set[tuple[int, int]]) -> None:
        """The shadow is about to load or free ``keys``: those another client
        freed become lost."""
        found = keys & self.freed_by_other
        self.freed_by_other -= found
        self.lost += len(found)

    @rule(pid=st.sampled_from(PIDS), addresses=st.lists(st.sampled_from(ADDRESSES), max_size=8))
    def change(self, pid: int, addresses: list[int]) -> None:
        events = [Event(EventKind.CHANGED, pid, a) for a in addresses if (pid, a) in self.cold]
        before = {p.pid: p.refaults_total for p in self.sim.figures().processes}
        stored = {(e.pid, e.address) for e in events if self.sim.stored(e.pid, e.address)}
        for e in events:
            self.cold.pop((e.pid, e.address), None)
        came_back = stored - self.freed_by_other
        self._frees(stored)
        self._found(stored)
        self.sim.feed(events)
        after = {p.pid: p.refaults_total for p in self.sim.figures().processes}
        assert after.get(pid, 0) - before.get(pid, 0) == len(came_back)

    @precondition(lambda self: any(self.sim.stored(*k) for k in self.cold))
    @rule(data=st.data())
    def another_client_frees(self, data: st.DataObject) -> None:
        # The handles are the shadow's secret; the pool is anyone's (a client
        # that learnt them, or one that removed the pool and made it again).
        stored = sorted(
            k for k in self.cold if self.sim.stored(*k) and k not in self.freed_by_other
        )
        if not stored:
            return
        keys = data.draw(st.lists(st.sampled_from(stored), min_size=1, unique=True))
        self.pool.free([self.sim._procs[pid].stored[a][0] for pid, a in keys])
        self.freed_by_other |= set(keys)
        self.room = True

    @rule(pages=st.integers(min_value=3, max_value=10))
    def another_client_changes_the_limit(self, pages: int) -> None:
        if pages * 4096 != self.pool.config.limit_bytes:
            self.pool.set_live_settings(limit_bytes=pages * 4096)
            self.room = True

    @rule(pid=st.sampled_from(PIDS), addresses=st.lists(st.sampled_from(ADDRESSES), max_size=8))
    def gone(self, pid: int, addresses: list[int]) -> None:
        self._frees([(pid, a) for a in addresses])
        self._found({(pid, a) for a in addresses})
        for a in addresses:
            self.cold.pop((pid, a), None)
        self.sim.feed(Event(EventKind.GONE, pid, a) for a in addresses)

    @rule(pid=st.sampled_from(PIDS))
    def exit(self, pid: int) -> None:
        self._frees([k for k in self.cold if k[0] == pid])
        self._found({k for k in self.freed_by_other if k[0] == pid})
        for key in [k for k in self.cold if k[0] == pid]:
            del self.cold[key]
        self.sim.feed([Event(EventKind.EXIT, pid)])

    @rule()
    def tick(self) -> None:
        self.t += 1.0
        before = sum(p.swapouts_total for p in self.sim.figures().processes)
        no_room = not self.room
        self.sim.end_tick(TickEnd(self.t, scans()))
        if no_room:  # nothing freed since the last refusal: no retry at all
            assert not self._refused()
            assert sum(p.swapouts_total for p in self.sim.figures().processes) == before
        self._refused()
        if self.freed_by_other:  # found lost after the retry: room for the next
            self.room = True
        # The pool held fewer pages than the shadow stored: it found those lost,
        # which are no longer cold to it (nor stored).
        for key in self.freed_by_other:
            del self.cold[key]
        self._found(set(self.freed_by_other))

    @precondition(lambda self: any(self.sim.stored(*k) for k in self.cold))
    @rule()
    def pages_come_back_as_stored(self) -> None:
        # A refault of everything stored: each load is checked by SwapSim itself.
        events = [
            Event(EventKind.CHANGED, pid, a) for pid, a in self.cold if self.sim.stored(pid, a)
        ]
        for e in events:
            del self.cold[(e.pid, e.address)]
        self._frees([(e.pid, e.address) for e in events])
        self._found({(e.pid, e.address) for e in events})
        self.sim.feed(events)

    @invariant()
    def cold_pages_are_stored_or_waiting(self) -> None:
        figures = self.sim.figures()
        for p in figures.processes:
            mine = [k for k in self.cold if k[0] == p.pid]
            assert p.cold_pages == len(mine)
            assert p.stored_pages == sum(self.sim.stored(*k) for k in mine)
        stored = sum(p.stored_pages for p in figures.processes)
        held = stored - len(self.freed_by_other)
        assert self.pool.stored_pages == held
        # The pool's own figures, not the tick's (another client's free is no event).
        assert LocalTarget(self.pool).stats()["mm_stat"]["orig_data_size"] == 4096 * held
        assert figures.run.lost_pages == self.lost

    @invariant()
    def same_filled_pages_never_wait(self) -> None:
        for key, data in self.cold.items():
            if same_filled(data) and key not in self.freed_by_other:
                assert self.sim.stored(*key), key


class SwapModelHysteresis(SwapModel):
    """The same, under zswap's accept_threshold_percent: a pool that hit its
    limit refuses until it shrinks below half of it, same-filled pages apart."""

    config = PoolConfig(compressor="lz4", limit_bytes=10 * 4096, accept_threshold_percent=50)


TestSwapModel = SwapModel.TestCase
TestSwapModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSwapModelHysteresis = SwapModelHysteresis.TestCase
TestSwapModelHysteresis.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def run(events_by_tick: list[list[Event]], limit: int) -> dict[str, object]:
    pool = PagePool("r", PoolConfig(compressor="lz4", limit_bytes=limit))
    contents = {(e.pid, e.address): e.data for tick in events_by_tick for e in tick}
    try:
        sim = SwapSim(LocalTarget(pool), lambda e: contents.get((e.pid, e.address)))
        for t, events in enumerate(events_by_tick, 1):
            sim.feed(events)
            sim.end_tick(TickEnd(float(t), scans()))
        return sim.figures().to_dict()
    finally:
        pool.close()


def test_the_same_events_give_the_same_figures_exactly() -> None:
    ticks = [
        [Event(EventKind.COLD, PIDS[0], a, page(i)) for i, a in enumerate(ADDRESSES)],
        [Event(EventKind.CHANGED, PIDS[0], a) for a in ADDRESSES[::3]],
        [Event(EventKind.GONE, PIDS[0], a) for a in ADDRESSES[1::4]],
    ]
    assert run(ticks, 8 * 4096) == run(ticks, 8 * 4096)
    assert run(ticks, 0) == run(ticks, 0)


def test_pages_refused_at_the_limit_wait_and_go_in_oldest_first() -> None:
    pool = PagePool("w", PoolConfig(compressor="lz4", limit_bytes=16 * 4096))
    addresses = [0x10000 + i * 4096 for i in range(64)]
    data = {a: page(i) for i, a in enumerate(addresses)}
    sim = SwapSim(LocalTarget(pool), lambda e: data[e.address])
    sim.feed(Event(EventKind.COLD, 1, a, data[a]) for a in addresses)
    sim.end_tick(TickEnd(1.0, ()))
    (p,) = sim.figures().processes
    assert p.cold_pages == len(addresses)
    assert 0 < p.stored_pages < len(addresses)
    assert p.rejected_total == len(addresses) - p.stored_pages
    first_waiting = next(a for a in addresses if not sim.stored(1, a))
    # Room again: refault what is stored; the oldest waiting page goes in first.
    sim.feed(Event(EventKind.CHANGED, 1, a) for a in addresses if sim.stored(1, a))
    sim.end_tick(TickEnd(2.0, ()))
    assert sim.stored(1, first_waiting)
    sim.release()
    assert pool.stored_pages == 0
    pool.close()


def test_a_page_that_comes_back_different_stops_the_shadow() -> None:
    pool = PagePool("c", PoolConfig(compressor="lz4"))
    sim = SwapSim(LocalTarget(pool), lambda e: None)
    sim.feed([Event(EventKind.COLD, 1, 0x1000, page(1))])
    (handle,) = [h for h, _ in sim._procs[1].stored.values()]
    # Another client of the same pool frees the page and stores another in its place.
    pool.free([handle])
    sim._procs[1].stored[0x1000] = (pool.store([page(2)])[0], sim._procs[1].stored[0x1000][1])
    with pytest.raises(SwapSimError, match="came back from the pool different"):
        sim.feed([Event(EventKind.CHANGED, 1, 0x1000)])
    pool.close()


def test_one_cold_page_meeting_a_full_pool_waits_and_the_rest_of_a_batch_untried() -> None:
    # A batch of 257 leaves a last batch of one: refused, it must wait, not raise.
    pool = PagePool("f", PoolConfig(compressor="lz4", limit_bytes=16 * 4096))
    addresses = [0x10000 + i * 4096 for i in range(257)]
    data = {a: page(i) for i, a in enumerate(addresses)}
    sim = SwapSim(LocalTarget(pool), lambda e: data[e.address])
    sim.feed(Event(EventKind.COLD, 1, a, data[a]) for a in addresses)
    sim.end_tick(TickEnd(1.0, ()))
    (p,) = sim.figures().processes
    assert p.cold_pages == 257 and 0 < p.stored_pages < 257
    assert p.rejected_total == 257 - p.stored_pages
    hits = sim.figures().pool.pool_limit_hit
    data[0x900000] = page(999)
    sim.feed([Event(EventKind.COLD, 1, 0x900000, data[0x900000])])
    sim.end_tick(TickEnd(2.0, ()))
    (p,) = sim.figures().processes
    assert p.cold_pages == 258 and p.rejected_total == 258 - p.stored_pages
    # The lone page, then one retry batch and its first page: a few refusals, not one a page.
    assert sim.figures().pool.pool_limit_hit - hits <= 3
    pool.close()


def test_saved_is_what_compression_saves_in_ram_pages_on_disk_apart(tmp_path: Path) -> None:
    """Under lru writeback the pages on disk are out of RAM but not saved by
    compression: saved counts the pages in RAM only, disk_bytes the rest, and
    a refault of a page on disk is a bd_read."""
    config = PoolConfig(
        compressor="lz4",
        limit_bytes=8 * 4096,
        writeback="lru",
        backing_file=str(tmp_path / "swap"),
        backing_size=256 * 4096,
    )
    pool = PagePool("lru", config)
    try:
        sim = SwapSim(LocalTarget(pool), lambda e: None)
        cold = [Event(EventKind.COLD, 101, a, page(i)) for i, a in enumerate(ADDRESSES)]
        sim.feed(cold)
        sim.end_tick(TickEnd(1.0, scans()))
        fig = sim.figures().pool
        assert fig.bd_count > 0 and fig.disk_bytes == fig.bd_count * 4096
        assert fig.saved_bytes == fig.orig_data_size - fig.disk_bytes - fig.mem_used_total
        assert fig.pages == len(ADDRESSES) and sim.figures().run.foreign_pages == 0
        sim.feed([Event(EventKind.CHANGED, 101, ADDRESSES[0])])  # the oldest: on disk
        sim.end_tick(TickEnd(2.0, scans()))
        assert sim.figures().pool.bd_reads == 1
    finally:
        pool.close()


def test_the_run_keeps_peak_mean_exits_and_pages_not_the_shadows() -> None:
    pool = PagePool("run", PoolConfig(compressor="lz4"))
    try:
        sim = SwapSim(LocalTarget(pool), lambda e: None)
        sim.feed([Event(EventKind.COLD, 101, a, page(i)) for i, a in enumerate(ADDRESSES[:4])])
        sim.end_tick(TickEnd(1.0, scans()))
        sim.feed([Event(EventKind.EXIT, 101)])
        pool.store([page(99)])  # another client's page in the shadow's pool
        sim.end_tick(TickEnd(2.0, scans()[1:]))
        run = sim.figures().run
        # Over t=1..2 the pool held the 4 pages: the 0 at t=2 held no time yet.
        assert (run.ticks, run.peak_stored_pages, run.mean_stored_pages) == (2, 4, 4.0)
        assert run.foreign_pages == 1 and run.foreign_ticks == 1
        assert dict(run.exited_at) == {101: 2.0}
        assert sim.figures().to_dict()["processes"][0]["exited_at"] == 2.0
    finally:
        pool.close()


def test_the_run_means_weigh_each_tick_by_the_seconds_it_held() -> None:
    """--max-cpu stretches intervals: a tick followed by a long wait counts for
    that long.  4 pages held for 1s, then 2 for 10s: a mean of 24/11 pages, not
    the 3 of a mean over ticks; saved likewise, by the pool's own figure."""
    pool = PagePool("tw", PoolConfig(compressor="lz4"))
    try:
        sim = SwapSim(LocalTarget(pool), lambda e: None)
        assert sim.figures().run.mean_stored_pages == 0.0
        sim.feed([Event(EventKind.COLD, 101, a, page(i)) for i, a in enumerate(ADDRESSES[:4])])
        sim.end_tick(TickEnd(0.0, scans()))
        first = sim.figures()
        # One tick, no time yet: the tick's own figures.
        assert first.run.mean_stored_pages == 4.0
        assert first.run.mean_saved_bytes == first.pool.saved_bytes
        sim.feed([Event(EventKind.CHANGED, 101, a) for a in ADDRESSES[:2]])
        sim.end_tick(TickEnd(1.0, scans()))
        second = sim.figures()
        sim.feed([Event(EventKind.EXIT, 101)])
        sim.end_tick(TickEnd(11.0, scans()))
        run = sim.figures().run
        assert run.mean_stored_pages == pytest.approx((4 * 1 + 2 * 10) / 11)
        saved = (first.pool.saved_bytes * 1 + second.pool.saved_bytes * 10) / 11
        assert run.mean_saved_bytes == pytest.approx(saved)
        assert first.pool.saved_bytes != second.pool.saved_bytes  # the weights matter
    finally:
        pool.close()


def test_pages_another_client_frees_are_lost_not_refaulted_and_the_shadow_goes_on() -> None:
    """A load or free answered stale_handle: those pages are lost, the rest of
    the batch is refaulted or freed as if alone, and the figures add up."""
    pool = PagePool("lost", PoolConfig(compressor="lz4"))
    try:
        sim = SwapSim(LocalTarget(pool), lambda e: None)
        sim.feed([Event(EventKind.COLD, 101, a, page(i)) for i, a in enumerate(ADDRESSES)])
        sim.end_tick(TickEnd(1.0, scans()))
        stored = sim._procs[101].stored
        pool.free([stored[a][0] for a in ADDRESSES[:3] + ADDRESSES[10:12]])
        sim.feed([Event(EventKind.CHANGED, 101, a) for a in ADDRESSES[:8]])
        (p,) = sim.figures().processes[:1]
        assert (p.refaults_total, p.stored_pages, sim.figures().run.lost_pages) == (5, 16, 3)
        sim.feed([Event(EventKind.GONE, 101, a) for a in ADDRESSES[8:16]])
        sim.end_tick(TickEnd(2.0, scans()))
        fig = sim.figures()
        assert fig.run.lost_pages == 5 and fig.run.foreign_pages == 0
        assert fig.processes[0].stored_pages == pool.stored_pages == 8
        # Freed while the process leaves them be: found at the tick's end, when
        # the pool holds fewer than the shadow stored, and no longer cold.
        pool.free([stored[a][0] for a in ADDRESSES[16:18]])
        sim.end_tick(TickEnd(3.0, scans()))
        fig = sim.figures()
        p = fig.processes[0]  # pid 101; 202 only scanned
        assert (fig.run.lost_pages, p.stored_pages, p.cold_pages) == (7, 6, 6)
        assert fig.run.foreign_pages == 0 and p.refaults_total == 5
        sim.release()
        assert pool.stored_pages == 0
    finally:
        pool.close()


class CountingTarget(LocalTarget):
    """A real pool in this process, counting the stores asked of it."""

    def __init__(self, pool: PagePool) -> None:
        super().__init__(pool)
        self.stores = 0

    def store(self, pages: list[bytes]) -> list[int]:
        self.stores += 1
        return super().store(pages)


@pytest.mark.parametrize("threshold", [None, 50])
def test_same_filled_pages_go_in_at_the_limit_and_never_wait(threshold: int | None) -> None:
    """zram stores a same-filled page before it looks at its limit (and zswap's
    hysteresis guards memory such a page does not take): at the limit, mixed
    in a batch with pages that are refused, every same-filled one is stored
    and counted as same_pages; none waits behind the refused."""
    config = PoolConfig(compressor="lz4", limit_bytes=8 * 4096, accept_threshold_percent=threshold)
    pool = PagePool("same", config)
    try:
        sim = SwapSim(LocalTarget(pool), lambda e: None)
        words = [bytes(4096), b"\xff" * 4096, bytes(range(8)) * 512]
        data = [words[i % 3] if i % 4 == 3 else page(i) for i in range(64)]
        same = [i for i, d in enumerate(data) if same_filled(d)]
        sim.feed(Event(EventKind.COLD, 1, 0x10000 + i * 4096, d) for i, d in enumerate(data))
        sim.end_tick(TickEnd(1.0, ()))
        (p,) = sim.figures().processes
        assert 0 < p.stored_pages - len(same) < 64 - len(same)  # the limit refused pages
        assert all(sim.stored(1, 0x10000 + i * 4096) for i in same)
        assert sim.figures().pool.same_pages == len(same)
        # More same-filled pages, the pool still full: stored at once.
        sim.feed(Event(EventKind.COLD, 1, 0x900000 + i * 4096, words[i % 3]) for i in range(5))
        assert sim.figures().pool.same_pages == len(same) + 5
        pool.check_invariants()
    finally:
        pool.close()


def test_waiting_pages_are_retried_only_once_room_may_have_been_made() -> None:
    """A full pool left alone is not asked again tick after tick: no store,
    no pool_limit_hit, until a page is freed or the limit changes."""
    pool = PagePool("retry", PoolConfig(compressor="lz4", limit_bytes=32 * 4096))
    pool.set_live_settings(limit_bytes=16 * 4096)
    target = CountingTarget(pool)
    addresses = [0x10000 + i * 4096 for i in range(64)]
    data = {a: page(i) for i, a in enumerate(addresses)}
    try:
        sim = SwapSim(target, lambda e: data[e.address])
        sim.feed(Event(EventKind.COLD, 1, a, data[a]) for a in addresses)
        sim.end_tick(TickEnd(1.0, ()))
        hits, stores = pool.counters.pool_limit_hit, target.stores
        (p,) = sim.figures().processes
        for t in range(2, 6):  # nothing freed: no retry
            sim.end_tick(TickEnd(float(t), ()))
        assert (pool.counters.pool_limit_hit, target.stores) == (hits, stores)
        assert sim.figures().processes == (p,)
        # A refault frees a page: the next tick's end retries, oldest first.
        first_waiting = next(a for a in addresses if not sim.stored(1, a))
        sim.feed([Event(EventKind.CHANGED, 1, a) for a in addresses[:4]])
        sim.end_tick(TickEnd(6.0, ()))
        assert sim.stored(1, first_waiting) and target.stores > stores
        hits, stores = pool.counters.pool_limit_hit, target.stores
        sim.end_tick(TickEnd(7.0, ()))
        assert (pool.counters.pool_limit_hit, target.stores) == (hits, stores)
        # Another client raises the limit: seen in the pool's figures, retried.
        pool.set_live_settings(limit_bytes=32 * 4096)
        sim.end_tick(TickEnd(8.0, ()))
        assert sim.figures().processes[0].stored_pages > p.stored_pages
    finally:
        pool.close()
