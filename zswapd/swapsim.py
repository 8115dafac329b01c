"""Swap's side of a timeline: which cold pages a pool holds, and what it costs.

:class:`SwapSim` takes the events of zswapd/timeline.py and does to a pool what
reclaim and the fault path would do to zswap:

- a ``COLD`` page is stored (swapped out).  If the pool refuses it at its
  limit, it waits (it is still cold, reclaim would try again) and is retried
  at the end of a tick, oldest first, until one is refused again; but only
  once room may have been made since the last refusal (a page freed: a
  refault, a page gone, a process ended, a page lost; or, seen in the pool's
  own figures, its limit changed, a compaction, another client's free; or,
  when the refusal was the daemon's --memory-limit, which all its pools
  share, more room left by the other pools: one freed or removed).
  Without that, the pool would refuse them again: a retry would cost a
  batch of pages sent for nothing, and a ``pool_limit_hit`` a tick for the
  same pages.  A page refused as compressing too poorly
  (``huge_policy = "reject"``) is not retried: its bytes have not changed,
  neither would the answer.
- a *same-filled* page (one 8-byte word repeated) takes no pool memory: at
  the limit the pool stores it (zram's ``ZRAM_SAME`` is stored before its
  mem_limit is looked at), so it is offered even after a refusal and never
  waits behind pages refused for room.
- a ``CHANGED`` page that the pool holds is a refault: loaded (and checked
  against what was stored), then freed, as a swap-in is.  One still waiting
  simply stops waiting: it never left.
- ``GONE`` and ``EXIT`` free what the pool held and forget what waited.

Pool names are not owned, so another client may free a page the shadow
stored (it would need the handle, which is not guessable; or it removes the
pool and creates it again, which leaves every handle stale).  The kernel never
sees that; a shadow must outlive it.  A load or free answered
``stale_handle`` for one of the shadow's handles counts that page as *lost*
(:attr:`RunFigures.lost_pages`): no longer stored, not a refault (nothing
came back from the pool), and the rest of the batch goes on as if alone.  A
tick that ends with the pool holding fewer pages than the shadow stored looks
for them at once (a load of each of its pages), so that its figures say what
the pool holds.

Events are applied in batches of consecutive events of one kind, at most
:data:`BATCH` pages, in the order given; a refused batch is retried a page at a
time, so that what fits is stored, as it would be a page at a time.  Nothing
here reads a clock or a random number: the same events into the same pool
settings give the same pool, handle for handle and byte for byte, which is what
``zswapd replay`` promises.

The pool is anything with ``store``/``load``/``free``/``stats``
(:class:`PageTarget`): a daemon's pool through :class:`ClientTarget`, or a
pool in this process through :class:`LocalTarget`.
"""

from __future__ import annotations

import itertools
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from zswapd.errors import (
    CompressPoorError,
    MemoryLimitError,
    PoolLimitError,
    StaleHandleError,
    ZswapdError,
)
from zswapd.timeline import Event, EventKind, TickEnd

__all__ = [
    "BATCH",
    "ClientTarget",
    "LocalTarget",
    "PageTarget",
    "PoolFigures",
    "ProcessFigures",
    "RunFigures",
    "ShadowFigures",
    "SwapSim",
    "SwapSimError",
]

PAGE_SIZE = 4096
# Pages per request: a quarter of the server's default cap, so one batch never
# holds more than a MiB of page bytes.
BATCH = 256

Key = tuple[int, int]  # (pid, address)
WORD = 8  # a same-filled page is one word of this many bytes, repeated
# The bytes of a page waiting for room, fetched again at its retry (the live
# process's memory, or the record file); None if they can no longer be had.
Fetch = Callable[[Event], "bytes | None"]


class SwapSimError(ZswapdError):
    """A page came back from the pool different from what was stored."""

    code = "shadow_integrity"


class PageTarget(Protocol):
    """A pool, whichever side of a socket it lives on."""

    def store(self, pages: list[bytes]) -> list[int]: ...
    def load(self, handles: Sequence[int]) -> list[bytes]: ...
    def free(self, handles: Sequence[int]) -> None: ...
    def stats(self) -> dict[str, Any]: ...


class ClientTarget:
    """A daemon's pool, through a :class:`zswapd.client.Client`."""

    def __init__(self, client: Any, pool: str) -> None:
        self.client = client
        self.pool = pool

    def store(self, pages: list[bytes]) -> list[int]:
        return list(self.client.store(pages, pool=self.pool))

    def load(self, handles: Sequence[int]) -> list[bytes]:
        return list(self.client.load(handles, pool=self.pool))

    def free(self, handles: Sequence[int]) -> None:
        self.client.free(handles, pool=self.pool)

    def stats(self) -> dict[str, Any]:
        return dict(self.client.stats(pool=self.pool))


class LocalTarget:
    """A :class:`zswapd.pool.PagePool` in this process (replay's)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def store(self, pages: list[bytes]) -> list[int]:
        return list(self.pool.store(pages))

    def load(self, handles: Sequence[int]) -> list[bytes]:
        return list(self.pool.load(handles))

    def free(self, handles: Sequence[int]) -> None:
        self.pool.free(handles)

    def stats(self) -> dict[str, Any]:
        return dict(self.pool.stats().to_dict())


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    """One shadowed process, as of the last tick.

    Attributes:
        resident_pages: pages swap could take that the last scan found present.
        cold_pages: pages unchanged for --cold-after and not since touched:
            stored, or waiting for room.
        stored_pages: of those, the pages the pool holds (swapped out).
        saved_bytes: this process's share of the pool's saving in RAM
            (:attr:`PoolFigures.saved_bytes`), split by stored pages: exact
            when the pool holds one process.
        swapouts_total, refaults_total: pages stored; stored pages touched again.
        rejected_total: cold pages the pool refused at their first try.
        scan_seconds_total, scanned_bytes_total: the scans' own CPU and work.
    """

    pid: int
    comm: str
    resident_pages: int
    cold_pages: int
    stored_pages: int
    saved_bytes: int
    swapouts_total: int
    refaults_total: int
    rejected_total: int
    scan_seconds_total: float
    scanned_bytes_total: int
    exited: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """The pool's own figures that a shadow reports, under zram's names.

    ``stored_pages`` is zswap's (pages in the pool, same-filled included,
    written-back ones not); ``bd_count`` the pages written back to the
    backing file, which zram's ``orig_data_size`` still counts.
    """

    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    mem_limit: int
    mem_used_max: int
    same_pages: int
    huge_pages: int
    stored_pages: int
    bd_count: int
    bd_reads: int
    pool_limit_hit: int
    written_back_pages: int

    @property
    def disk_bytes(self) -> int:
        """The bytes of the pages written back: out of RAM, but on disk, not saved
        by compression (each read back, ``bd_reads``, is a disk read)."""
        return self.bd_count * PAGE_SIZE

    @property
    def ram_data_bytes(self) -> int:
        """The bytes of the pages the pool keeps in RAM, before compression."""
        return self.orig_data_size - self.disk_bytes

    @property
    def saved_bytes(self) -> int:
        """What compression saves in RAM: the pages kept in RAM, less the memory
        the pool takes (pages on disk are not counted: they cost disk, not RAM)."""
        return self.ram_data_bytes - self.mem_used_total

    @property
    def pages(self) -> int:
        """Every page the pool holds, in RAM or on disk."""
        return self.stored_pages + self.bd_count

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "saved_bytes": self.saved_bytes, "disk_bytes": self.disk_bytes}

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> PoolFigures:
        mm = stats["mm_stat"]
        z = stats["zswap"]
        bd = stats.get("bd_stat") or {}
        return cls(
            orig_data_size=int(mm["orig_data_size"]),
            compr_data_size=int(mm["compr_data_size"]),
            mem_used_total=int(mm["mem_used_total"]),
            mem_limit=int(mm["mem_limit"]),
            mem_used_max=int(mm["mem_used_max"]),
            same_pages=int(mm["same_pages"]),
            huge_pages=int(mm["huge_pages"]),
            stored_pages=int(z["stored_pages"]),
            bd_count=int(bd.get("bd_count", 0)),
            bd_reads=int(bd.get("bd_reads", 0)),
            pool_limit_hit=int(z["pool_limit_hit"]),
            written_back_pages=int(z["written_back_pages"]),
        )


@dataclass(frozen=True, slots=True)
class RunFigures:
    """The run so far, over the ends of its ticks.

    Attributes:
        ticks: ticks ended.
        peak_stored_pages, mean_stored_pages: the pages the shadow had in the
            pool (in RAM or on disk) at a tick's end: the most, and the mean
            over time: each tick's figure weighted by the seconds it held, up
            to the next tick (--max-cpu stretches some), so the mean over the
            first tick to the last; after one tick, that tick's figure.
        peak_saved_bytes, mean_saved_bytes: the same of the pool's saving in
            RAM (:attr:`PoolFigures.saved_bytes`).
        lost_pages: pages the shadow stored that another client freed (their
            handles answered ``stale_handle``), found when the shadow loaded or
            freed them, or at the end of a tick when the pool held fewer pages
            than the shadow stored: no longer stored (nor cold), and not
            counted as refaults.
        foreign_pages: at the last tick's end, the pages the pool held less
            those the shadow stored: not 0 when another client stores into (or
            frees from) the shadow's pool, whose figures are then not swap's.
        foreign_ticks: ticks that ended with ``foreign_pages`` not 0.
        exited_at: ``(pid, t)`` of each process that ended, at the first
            tick that saw it gone.
    """

    ticks: int = 0
    peak_stored_pages: int = 0
    mean_stored_pages: float = 0.0
    peak_saved_bytes: int = 0
    mean_saved_bytes: float = 0.0
    foreign_pages: int = 0
    foreign_ticks: int = 0
    exited_at: tuple[tuple[int, float], ...] = ()
    lost_pages: int = 0

    def to_dict(self) -> dict[str, Any]:
        # Each process's exited_at is in its own entry (ShadowFigures.to_dict).
        return {k: v for k, v in asdict(self).items() if k != "exited_at"}


@dataclass(frozen=True, slots=True)
class ShadowFigures:
    """Every figure after a tick: the time, each process, the pool, the run."""

    t: float
    processes: tuple[ProcessFigures, ...]
    pool: PoolFigures
    run: RunFigures = RunFigures()

    def exited_at(self, pid: int) -> float | None:
        """When process ``pid`` was seen gone (None: it is not)."""
        return dict(self.run.exited_at).get(pid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "processes": [
                {**p.to_dict(), "exited_at": self.exited_at(p.pid)} for p in self.processes
            ],
            "pool": self.pool.to_dict(),
            "run": self.run.to_dict(),
        }


@dataclass
class _Process:
    """A process's tally (mutable, internal)."""

    pid: int
    comm: str = ""
    resident_pages: int = 0
    swapouts_total: int = 0
    refaults_total: int = 0
    rejected_total: int = 0
    scan_seconds_total: float = 0.0
    scanned_bytes_total: int = 0
    exited: bool = False
    # address -> (handle, crc32 of the bytes stored)
    stored: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Addresses waiting for room: an EXIT then drops its own, not a walk of
    # every process's queue (a crafted record's thousands of EXITs, each
    # behind 50,000 waiting pages, cost seconds a thousand).
    waiting: set[int] = field(default_factory=set)


def _same_filled(data: bytes) -> bool:
    """One 8-byte word repeated: the pool keeps only the word (no allocator
    memory), so no limit refuses it."""
    return data[:WORD] * (PAGE_SIZE // WORD) == data


def _server_room(stats: dict[str, Any]) -> int | None:
    """The room the server's --memory-limit leaves this pool: the limit less
    what every other pool and device holds (bytes; None: no such limit).

    The pool's own share (its allocator's pages, its table of entries) is
    taken out of the server's use, so the shadow's own stores and frees do
    not move it: only the others' do.  A pool in this process (replay's) has
    no server budget, so no such room: a replay is untouched by it.
    """
    server = stats.get("server") or {}
    limit = int(server.get("memory_limit", 0))
    if not limit:
        return None
    own = int(stats["mm_stat"]["mem_used_total"]) + int(
        (stats.get("metadata") or {}).get("bytes", 0)
    )
    return limit - (int(server["memory_used"]) - own)


def _room_token(stats: dict[str, Any], own_frees: int) -> tuple[Any, ...]:
    """What, in the pool's figures, changes when someone other than the
    shadow makes room: its limit (and hysteresis), its compactions, the
    pages freed by others (all frees less the shadow's own); and, last, the
    room the server's --memory-limit leaves it (:func:`_server_room`), which
    grows when another pool (shared budget) frees or is removed."""
    counters = stats.get("counters") or {}
    config = stats.get("config") or {}
    return (
        int(stats["mm_stat"]["mem_limit"]),
        config.get("accept_threshold_percent"),
        int(stats["mm_stat"]["pages_compacted"]),
        int(counters.get("freed_pages_total", 0)) - own_frees,
        _server_room(stats),
    )


def _room_made(before: tuple[Any, ...], now: tuple[Any, ...], server: bool) -> bool:
    """Whether room may have been made between two tokens: the pool's own
    figures changed, or, if the last refusal was the server's (``server``),
    the other pools left more room under its limit (their growth makes none:
    no retry for that; nor their churn when the pool's own limit refused)."""
    if before[:-1] != now[:-1]:
        return True
    if not server:
        return False
    was, room = before[-1], now[-1]
    if was is None or room is None:
        return bool(was != room)  # a server limit set or lifted meanwhile
    return bool(room > was)


def _runs(events: Iterable[Event]) -> Iterator[list[Event]]:
    """Consecutive events of one kind, at most BATCH at a time."""
    run: list[Event] = []
    for e in events:
        if run and (e.kind != run[0].kind or len(run) >= BATCH):
            yield run
            run = []
        run.append(e)
    if run:
        yield run


class SwapSim:
    """Swap's state for the processes of one shadow, driving one pool.

    Args:
        target: the pool.
        fetch: the bytes of a waiting page at its retry (see :data:`Fetch`);
            also used for a ``COLD`` event that carries no bytes.
    """

    def __init__(self, target: PageTarget, fetch: Fetch) -> None:
        self.target = target
        self.fetch = fetch
        self.t = 0.0
        self._procs: dict[int, _Process] = {}
        # Cold pages refused for want of room, oldest first; no bytes kept.
        self._waiting: OrderedDict[Key, Event] = OrderedDict()
        # The pool's figures at the last tick's end, until an event changes them.
        self._pool: PoolFigures | None = None
        self._run = RunFigures()
        # Time-weighted sums: each tick's figures times the seconds they held.
        self._seconds = 0.0
        self._stored_pages_sum = 0.0
        self._saved_bytes_sum = 0.0
        self._last_t, self._last_own, self._last_saved = 0.0, 0, 0
        self._lost = 0
        # Whether room may have been made since the pool last refused a page
        # for want of it (see _retry_waiting).
        self._room = True
        self._freed = 0  # pages the shadow freed, as the pool counts them
        # _room_token at the last tick's end, None if a refusal came since:
        # what others did since shows there.
        self._token: tuple[Any, ...] | None = None
        # Whether the last refusal for want of room was the server's
        # --memory-limit (MemoryLimitError), not the pool's own limit.
        self._server_full = False

    # -- events ---------------------------------------------------------------

    def feed(self, events: Iterable[Event]) -> None:
        """Apply events, in order, to the pool."""
        self._pool = None
        for run in _runs(events):
            kind = run[0].kind
            if kind == EventKind.COLD:
                self._swap_out(run)
            elif kind == EventKind.CHANGED:
                self._touch(run)
            else:
                self._drop(run)

    def end_tick(self, end: TickEnd) -> None:
        """Close an interval: take its scan figures, retry the waiting pages."""
        self.t = end.t
        for scan in end.scans:
            p = self._proc(scan.pid)
            p.comm = scan.comm
            p.resident_pages = scan.resident_pages
            p.scanned_bytes_total += scan.scanned_bytes
            p.scan_seconds_total += scan.scan_seconds
            p.exited = p.exited or scan.exited
        self._retry_waiting()
        stats = self.target.stats()
        self._pool = PoolFigures.from_stats(stats)
        if self._pool.pages < sum(len(p.stored) for p in self._procs.values()):
            self._find_lost(self._pool)
        self._token = _room_token(stats, self._freed)
        self._tally(self._pool)

    def _tally(self, pool: PoolFigures) -> None:
        """Add a tick's end to the run's figures (a tick, not a query, is a sample:
        the same ticks give the same figures, however often they are asked for)."""
        own = sum(len(p.stored) for p in self._procs.values())
        run = self._run
        if run.ticks:
            # The last tick's figures held from its end until this one's.
            held = max(0.0, self.t - self._last_t)
            self._seconds += held
            self._stored_pages_sum += self._last_own * held
            self._saved_bytes_sum += self._last_saved * held
        self._last_t, self._last_own, self._last_saved = self.t, own, pool.saved_bytes
        ticks = run.ticks + 1
        if self._seconds > 0:
            mean_stored = self._stored_pages_sum / self._seconds
            mean_saved = self._saved_bytes_sum / self._seconds
        else:  # one tick (or ticks at one instant): its own figures
            mean_stored, mean_saved = float(own), float(pool.saved_bytes)
        foreign = pool.pages - own
        exited = dict(run.exited_at)
        for p in self._procs.values():
            if p.exited and p.pid not in exited:
                exited[p.pid] = self.t
        self._run = RunFigures(
            ticks=ticks,
            peak_stored_pages=max(run.peak_stored_pages, own),
            mean_stored_pages=mean_stored,
            # Saved bytes may be negative (a few pages in a zspage of several).
            peak_saved_bytes=max(run.peak_saved_bytes, pool.saved_bytes)
            if run.ticks
            else pool.saved_bytes,
            mean_saved_bytes=mean_saved,
            foreign_pages=foreign,
            foreign_ticks=run.foreign_ticks + (foreign != 0),
            lost_pages=self._lost,
            exited_at=tuple(exited.items()),
        )

    def release(self) -> None:
        """Free every page the pool holds for these processes (the shadow ends)."""
        self._pool = None
        for pid in list(self._procs):
            self._drop([Event(EventKind.EXIT, pid)])

    # -- figures --------------------------------------------------------------

    def stored(self, pid: int, address: int) -> bool:
        p = self._procs.get(pid)
        return p is not None and address in p.stored

    def figures(self) -> ShadowFigures:
        """Every figure now (asks the pool for its own, unless nothing happened
        since the last tick's end)."""
        pool = self._pool or PoolFigures.from_stats(self.target.stats())
        stored_all = sum(len(p.stored) for p in self._procs.values())
        processes = tuple(
            ProcessFigures(
                pid=p.pid,
                comm=p.comm,
                resident_pages=p.resident_pages,
                cold_pages=len(p.stored) + len(p.waiting),
                stored_pages=len(p.stored),
                saved_bytes=pool.saved_bytes * len(p.stored) // stored_all if stored_all else 0,
                swapouts_total=p.swapouts_total,
                refaults_total=p.refaults_total,
                rejected_total=p.rejected_total,
                scan_seconds_total=p.scan_seconds_total,
                scanned_bytes_total=p.scanned_bytes_total,
                exited=p.exited,
            )
            for p in self._procs.values()
        )
        # Lost pages are a count, not a sample: as of now, between ticks too.
        return ShadowFigures(self.t, processes, pool, replace(self._run, lost_pages=self._lost))

    # -- the three reactions ----------------------------------------------------

    def _proc(self, pid: int) -> _Process:
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = _Process(pid)
        return p

    def _swap_out(self, run: list[Event]) -> None:
        todo: list[tuple[Event, bytes]] = []
        seen: set[Key] = set()
        for e in run:
            p = self._proc(e.pid)
            key = (e.pid, e.address)
            if e.address in p.stored or key in self._waiting or key in seen:
                continue  # already out, or already waiting: cold once
            seen.add(key)
            data = e.data if e.data is not None else self.fetch(e)
            if data is not None:
                todo.append((e, data))
        refused = self._store(todo)
        for e, poor in refused:
            p = self._proc(e.pid)
            p.rejected_total += 1
            if not poor:
                self._wait(e)

    def _store(self, todo: list[tuple[Event, bytes]]) -> list[tuple[Event, bool]]:
        """Store pages; return those refused, each with whether it compressed
        too poorly (True) or found no room (False).

        A refused batch is offered again a page at a time, so that what fits
        goes in; after the first page refused for want of room the rest are
        not offered (zswap, once full, refuses until the pool shrinks), but
        for their same-filled pages, which take no pool memory and go in as
        one batch: that keeps a full pool's cost, and its ``pool_limit_hit``,
        to two refusals a batch, not one a page.
        """
        if not todo:
            return []
        try:
            handles = self.target.store([d for _, d in todo])
        except (PoolLimitError, CompressPoorError) as exc:
            full = isinstance(exc, PoolLimitError)
            if full:
                # What others did before this refusal made no room for it: the
                # pool's figures are looked at again from the tick's end on.
                self._room, self._token = False, None
                # Which limit: only the server's is freed by other pools (a
                # replay's pool has none, so never this).
                self._server_full = isinstance(exc, MemoryLimitError)
            if len(todo) == 1:
                return [(todo[0][0], not full)]
            refused: list[tuple[Event, bool]] = []
            for i, item in enumerate(todo):
                got = self._store([item])
                refused.extend(got)
                if got and not got[0][1]:
                    rest = todo[i + 1 :]
                    same = [_same_filled(d) for _, d in rest]
                    went = self._store_same([x for x, s in zip(rest, same, strict=True) if s])
                    left = [e for (e, _), s in zip(rest, same, strict=True) if not (s and went)]
                    refused.extend((e, False) for e in left)
                    break
            return refused
        self._stored(todo, handles)
        return []

    def _store_same(self, todo: list[tuple[Event, bytes]]) -> bool:
        """Store same-filled pages, one batch; whether they went in (only a
        pool out of handles, or the server out of memory, refuses them)."""
        if not todo:
            return True
        try:
            handles = self.target.store([d for _, d in todo])
        except PoolLimitError:
            return False
        self._stored(todo, handles)
        return True

    def _stored(self, todo: list[tuple[Event, bytes]], handles: list[int]) -> None:
        for (e, data), h in zip(todo, handles, strict=True):
            p = self._proc(e.pid)
            p.stored[e.address] = (h, zlib.crc32(data))
            p.swapouts_total += 1

    def _wait(self, e: Event) -> None:
        self._waiting[(e.pid, e.address)] = Event(e.kind, e.pid, e.address, None, e.ref)
        self._proc(e.pid).waiting.add(e.address)

    def _unwait(self, key: Key) -> bool:
        if self._waiting.pop(key, None) is None:
            return False
        self._procs[key[0]].waiting.discard(key[1])
        return True

    def _touch(self, run: list[Event]) -> None:
        keys: dict[Key, None] = {}  # in order, each page once (a run may repeat one)
        for e in run:
            p = self._proc(e.pid)
            if e.address in p.stored:
                keys[(e.pid, e.address)] = None
            else:
                self._unwait((e.pid, e.address))
        if not keys:
            return
        handles = [self._procs[pid].stored[a][0] for pid, a in keys]
        pages = self._load_live(handles)
        for (pid, a), h in zip(keys, handles, strict=True):
            page = pages.get(h)
            if page is not None and zlib.crc32(page) != self._procs[pid].stored[a][1]:
                raise SwapSimError(
                    f"pid {pid} page {a:#x} came back from the pool different from what was stored"
                )
        lost = self._free_live([h for h in handles if h in pages])
        for (pid, a), h in zip(keys, handles, strict=True):
            p = self._procs[pid]
            del p.stored[a]
            if h in pages and h not in lost:
                p.refaults_total += 1
        self._count_lost(len(handles) - len(pages) + len(lost))

    def _drop(self, run: list[Event]) -> None:
        handles: list[int] = []
        for e in run:
            p = self._proc(e.pid)
            if e.kind == EventKind.EXIT:
                handles.extend(h for h, _ in p.stored.values())
                p.stored.clear()
                p.exited = True
                for address in list(p.waiting):
                    self._unwait((e.pid, address))
            else:
                got = p.stored.pop(e.address, None)
                if got is not None:
                    handles.append(got[0])
                self._unwait((e.pid, e.address))
        for i in range(0, len(handles), BATCH):
            self._count_lost(len(self._free_live(handles[i : i + BATCH])))

    # -- another client's frees ---------------------------------------------------

    def _load_live(self, handles: list[int]) -> dict[int, bytes]:
        """The pages of ``handles`` that the pool still holds, by handle.

        A load is all or nothing: one stale handle fails the batch, which is
        then halved until the stale ones are alone (a batch costs a few more
        requests only when another client freed some of the shadow's pages).
        """
        if not handles:
            return {}
        try:
            return dict(zip(handles, self.target.load(handles), strict=True))
        except StaleHandleError:
            if len(handles) == 1:
                return {}
            half = len(handles) // 2
            return {**self._load_live(handles[:half]), **self._load_live(handles[half:])}

    def _find_lost(self, pool: PoolFigures) -> None:
        """The pool holds fewer pages than the shadow stored: another client
        freed some.  Find which (each handle loaded, a batch at a time, and
        checked: a cost paid only then), and forget them: neither stored nor
        cold any more, as a page the shadow never saw go cold; the scanner
        will say when it changes, which then is no refault."""
        owners = {h: (p, a) for p in self._procs.values() for a, (h, _) in p.stored.items()}
        handles = list(owners)
        if pool.pages == 0:  # the pool removed and made again: nothing to load
            live: set[int] = set()
        else:
            live = set()
            for i in range(0, len(handles), BATCH):
                part = handles[i : i + BATCH]
                pages = self._load_live(part)
                for h, page in pages.items():
                    p, a = owners[h]
                    if zlib.crc32(page) != p.stored[a][1]:
                        raise SwapSimError(
                            f"pid {p.pid} page {a:#x} came back from the pool different "
                            "from what was stored"
                        )
                live.update(pages)
        for h in handles:
            if h not in live:
                p, a = owners[h]
                del p.stored[a]
                self._count_lost(1)

    def _count_lost(self, n: int) -> None:
        """``n`` of the shadow's pages found freed by another client: room made."""
        if n:
            self._lost += n
            self._room = True

    def _free_live(self, handles: list[int]) -> set[int]:
        """Free ``handles``; return those the pool no longer held (freed by
        another client), found as :meth:`_load_live` finds them."""
        if not handles:
            return set()
        try:
            self.target.free(handles)
            self._freed += len(handles)
            self._room = True
            return set()
        except StaleHandleError:
            if len(handles) == 1:
                return set(handles)
            half = len(handles) // 2
            return self._free_live(handles[:half]) | self._free_live(handles[half:])

    def _room_made_by_others(self) -> bool:
        """Whether the pool's own figures show room made by someone else since
        the last tick's end (a limit raised, a compaction, another's free,
        another pool's room given back under the server's limit), when that
        came after the last refusal (else seen from this tick's end)."""
        if self._token is None:
            return False
        now = _room_token(self.target.stats(), self._freed)
        return _room_made(self._token, now, self._server_full)

    def _retry_waiting(self) -> None:
        """Store waiting pages, oldest first, until the pool refuses one.

        Not tried when nothing was freed since the last refusal: the pool
        would refuse them again.  A page refused again keeps its place in the
        queue: age, not luck, decides who goes next.
        """
        if not self._waiting or not (self._room or self._room_made_by_others()):
            return
        while self._waiting:
            todo: list[tuple[Event, bytes]] = []
            for key in list(itertools.islice(self._waiting, BATCH)):  # not a queue's copy a tick
                e = self._waiting[key]
                data = self.fetch(e)
                if data is None:
                    self._unwait(key)  # gone meanwhile: nothing left to store
                else:
                    todo.append((e, data))
            if not todo:
                continue
            refused = self._store(todo)
            kept = {(e.pid, e.address) for e, poor in refused if not poor}
            for e, _ in todo:
                if (e.pid, e.address) not in kept:
                    self._unwait((e.pid, e.address))
            if refused:
                return
