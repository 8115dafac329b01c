"""A pool's figures, typed: taken once under its lock, rendered by every frontend.

The dataclasses say what the figures are; the functions at the end take them
from a :class:`~zswapd.pool.PagePool` (bound as its ``stats``, ``mm_stat`` and
``bd_stat`` methods, reading its books under its lock), and
``check_invariants`` proves the books balance against the entries.

:meth:`PagePool.stats() <zswapd.pool.PagePool.stats>` returns a
:class:`PoolFigures`; ``GET /v1/pools/{pool}/stats`` and the wire protocol's STATS
answer its :meth:`~PoolFigures.to_dict`, and the Prometheus collector reads its
attributes, so a figure renamed or dropped here is a type error in every reader
instead of a ``KeyError`` at scrape time.  Each group carries the kernel's names
where the kernel has the figure: zram's ``mm_stat`` and ``bd_stat``, zswap's
debugfs counters, zsmalloc's debugfs ``classes`` rows
(:class:`allocator.ClassStats`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import compressors
from allocator import FULLNESS_LABELS, ClassStats, PageBudget
from zswapd.backing import unpack
from zswapd.config import PoolConfig
from zswapd.entries import ENCODING, HUGE, PAGE_SIZE, SAME, WRITTEN

if TYPE_CHECKING:
    from zswapd.pool import PagePool

__all__ = [
    "BackingFigures",
    "BdStat",
    "CompressorFigures",
    "MetadataFigures",
    "MmStat",
    "PoolFigures",
    "RecompressFigures",
    "RequestCounters",
    "ServerFigures",
    "ZswapFigures",
    "bd_stat",
    "check_invariants",
    "class_row",
    "compressor_figures",
    "mm_stat",
    "server_figures",
    "stats",
]


@dataclass(frozen=True, slots=True)
class MmStat:
    """zram's mm_stat, field for field (bytes where zram has bytes)."""

    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    mem_limit: int
    mem_used_max: int
    same_pages: int
    pages_compacted: int
    huge_pages: int
    huge_pages_since: int


@dataclass(frozen=True, slots=True)
class ZswapFigures:
    """zswap's debugfs counters.

    ``stored_pages`` leaves out written-back pages (they have left zswap and are
    in bd_count), where zram's orig_data_size still counts them.
    """

    stored_pages: int
    same_filled_pages: int
    pool_total_size: int
    pool_limit_hit: int
    reject_compress_poor: int
    reject_reclaim_fail: int
    written_back_pages: int
    decompress_fail: int


@dataclass(frozen=True, slots=True)
class CompressorFigures:
    """What compresses the pool's pages, and whether its sizes are the kernel's.

    ``fidelity`` is ``"exact for Linux 6.12"`` when every page gets the
    compressed size that kernel's zram gives it (then, pages stored one at a
    time, mm_stat and the class table are that kernel's too), else
    ``"not kernel-exact: <why>"``.
    """

    name: str
    version: str
    kernel_exact: bool
    fidelity: str


@dataclass(frozen=True, slots=True)
class BdStat:
    """zram's bd_stat, in pages: in the backing file now, read from it, written to it."""

    bd_count: int
    bd_reads: int
    bd_writes: int


@dataclass(frozen=True, slots=True)
class BackingFigures:
    """The backing file: where, how big, how full, how healthy."""

    file: str
    slots: int
    size: int
    used_slots: int
    writeback: str
    writeback_limit: int | None
    lru_pages: int
    removed: bool
    io_errors: int
    corrupt_pages: int


@dataclass(frozen=True, slots=True)
class RequestCounters:
    """zswapd's own counters, beside the kernel's (pages unless named otherwise).

    ``limit_hit_written_back`` counts an lru pool's limit hits answered by
    writing back; they are in zswap's pool_limit_hit too, but refused nothing.
    """

    stored_pages_total: int
    loaded_pages_total: int
    freed_pages_total: int
    memory_limit_hit: int
    stale_handle_requests: int
    loaded_same_pages: int
    limit_hit_written_back: int


@dataclass(frozen=True, slots=True)
class ServerFigures:
    """Every pool and device together (--memory-limit), bytes; limit 0 = none."""

    memory_limit: int
    memory_used: int
    memory_used_max: int


@dataclass(frozen=True, slots=True)
class MetadataFigures:
    """The pool's table of entries: its share of memory_used, not in mm_stat."""

    entry_slots: int
    bytes: int


@dataclass(frozen=True, slots=True)
class RecompressFigures:
    """zram's recompression: attempts, pages made smaller, bytes saved, algorithms."""

    attempts: int
    recompressed_pages: int
    saved_bytes: int
    algorithms: tuple[str, ...]


def class_row(c: ClassStats) -> dict[str, int]:
    """One debugfs ``classes`` row under the kernel's column names."""
    row = {"class": c.index, "size": c.size}
    row.update(zip(FULLNESS_LABELS, c.zspages, strict=True))
    row.update(
        obj_allocated=c.objs_allocated,
        obj_used=c.objs_used,
        pages_used=c.pages_used,
        pages_per_zspage=c.pages_per_zspage,
        freeable=c.freeable,
    )
    return row


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """Every figure of one pool, taken at one instant."""

    pool: str
    config: PoolConfig
    compressor: CompressorFigures
    huge_class_size: int
    mm_stat: MmStat
    zswap: ZswapFigures
    bd_stat: BdStat
    backing: BackingFigures | None
    counters: RequestCounters
    server: ServerFigures
    metadata: MetadataFigures
    recompress: RecompressFigures
    classes: tuple[ClassStats, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``GET .../stats`` (DESIGN.md's names, in this order)."""
        group = dataclasses.asdict
        return {
            "pool": self.pool,
            "config": self.config.to_dict(),
            "compressor": group(self.compressor),
            "huge_class_size": self.huge_class_size,
            "mm_stat": group(self.mm_stat),
            "zswap": group(self.zswap),
            "bd_stat": group(self.bd_stat),
            "backing": None if self.backing is None else group(self.backing),
            "counters": group(self.counters),
            "server": group(self.server),
            "metadata": group(self.metadata),
            "recompress": {
                **group(self.recompress),
                "algorithms": list(self.recompress.algorithms),
            },
            "classes": [class_row(c) for c in self.classes],
        }


# -- taking them: functions of a PagePool, bound as its methods ------------------


def mm_stat(pool: PagePool) -> MmStat:
    """zram's mm_stat, field for field."""
    with pool._lock:
        pool._check_open()
        return _mm_stat(pool)


def _mm_stat(pool: PagePool) -> MmStat:
    alloc = pool._alloc
    return MmStat(
        orig_data_size=len(pool._entries) * PAGE_SIZE,
        compr_data_size=pool._compr_data_size,
        mem_used_total=alloc.total_size_bytes,
        # zram shows the limit it enforces: whole pages, rounded up.
        mem_limit=(pool.config.limit_pages or 0) * PAGE_SIZE,
        mem_used_max=pool._mem_used_max,
        same_pages=pool._same_pages,
        pages_compacted=alloc.pages_compacted,
        huge_pages=pool._huge_pages,
        huge_pages_since=pool.counters.huge_pages_since,
    )


def bd_stat(pool: PagePool) -> BdStat:
    """zram's bd_stat alone, in pages (a scrape of a device's wants no class table)."""
    with pool._lock:
        pool._check_open()
        return _bd_stat(pool)


def _bd_stat(pool: PagePool) -> BdStat:
    c = pool.counters
    return BdStat(bd_count=pool._written, bd_reads=c.bd_reads, bd_writes=c.bd_writes)


def compressor_figures(
    comp: compressors.Compressor, config: PoolConfig | None = None
) -> CompressorFigures:
    """Its name, what makes its output, and whether the pool's figures are the kernel's.

    Exact sizes make exact figures only in the allocator the kernel runs:
    zsmalloc at chain size 8 with its own class table (``config`` says).
    """
    exact, fidelity = comp.kernel_exact, comp.fidelity
    why = None if config is None else _placement_differs(config)
    if exact and why is not None:
        exact, fidelity = False, f"not kernel-exact: {why}"
    return CompressorFigures(
        name=comp.name, version=comp.version, kernel_exact=exact, fidelity=fidelity
    )


def _placement_differs(config: PoolConfig) -> str | None:
    """Why objects are not placed as Linux 6.12's zsmalloc places them, if they are not."""
    if config.allocator != "zsmalloc":
        return f"the {config.allocator} allocator (Linux 6.12's zram uses zsmalloc)"
    if config.chain_size != 8:
        return f"chain size {config.chain_size} (the kernel's CONFIG_ZSMALLOC_CHAIN_SIZE is 8)"
    if config.allocator_options:
        return "a class table of its own (allocator_options)"
    return None


def server_figures(b: PageBudget | None) -> ServerFigures:
    """The server-wide budget's figures (--memory-limit): limit (0: none), in use
    and high-water mark, bytes; zeros without one."""
    if b is None:
        return ServerFigures(memory_limit=0, memory_used=0, memory_used_max=0)
    return ServerFigures(
        memory_limit=(b.limit_pages or 0) * PAGE_SIZE,
        memory_used=b.used * PAGE_SIZE,
        memory_used_max=b.committed_max * PAGE_SIZE,
    )


def _backing_figures(pool: PagePool) -> BackingFigures | None:
    """The backing file: where, how big, how full, how healthy (lock held)."""
    b = pool.backing
    if b is None:
        return None
    return BackingFigures(
        file=b.path,
        slots=b.slots,
        size=b.slots * PAGE_SIZE,
        used_slots=b.used,
        writeback=pool.config.writeback,
        writeback_limit=pool.config.writeback_limit,
        lru_pages=pool._entries.lru_len,
        removed=b.removed,
        io_errors=pool.counters.backing_io_errors,
        corrupt_pages=pool.counters.backing_corrupt,
    )


def stats(pool: PagePool) -> PoolFigures:
    """Every figure, at one instant: mm_stat, zswap's counters, bd_stat, classes."""
    with pool._lock:
        # A pool removed after its registry lookup has no figures left to give
        # (its allocator is gone): the same answer as a lookup that came later.
        pool._check_open()
        mm = _mm_stat(pool)
        c = pool.counters
        return PoolFigures(
            pool=pool.name,
            config=pool.config,
            compressor=compressor_figures(pool._comp, pool.config),
            huge_class_size=pool.huge_class_size,
            mm_stat=mm,
            zswap=ZswapFigures(
                stored_pages=len(pool._entries) - pool._written,
                same_filled_pages=mm.same_pages,
                pool_total_size=mm.mem_used_total,
                pool_limit_hit=c.pool_limit_hit,
                reject_compress_poor=c.reject_compress_poor,
                reject_reclaim_fail=c.reject_reclaim_fail,
                written_back_pages=c.written_back_pages,
                decompress_fail=c.decompress_fail,
            ),
            bd_stat=_bd_stat(pool),
            backing=_backing_figures(pool),
            counters=RequestCounters(
                stored_pages_total=c.stored_pages_total,
                loaded_pages_total=c.loaded_pages_total,
                freed_pages_total=c.freed_pages_total,
                memory_limit_hit=c.memory_limit_hit,
                stale_handle_requests=c.stale_handle_requests,
                loaded_same_pages=c.loaded_same_pages,
                limit_hit_written_back=c.limit_hit_written_back,
            ),
            server=server_figures(pool.budget),
            metadata=MetadataFigures(
                entry_slots=pool._entries.slots, bytes=pool._entries.charged * PAGE_SIZE
            ),
            recompress=RecompressFigures(
                attempts=c.recompress_attempts,
                recompressed_pages=c.recompressed_pages,
                saved_bytes=c.recompress_saved_bytes,
                algorithms=tuple(repr(s) for s in pool._secondaries),
            ),
            classes=tuple(pool._alloc.class_stats()),
        )


def check_invariants(pool: PagePool) -> None:
    """Entries, counters and the allocator agree (tests; O(pool size))."""
    with pool._lock:
        e = pool._entries
        live = e.live_slots()
        same = sum(1 for s in live if e.kind[s] == SAME)
        written = [s for s in live if e.kind[s] & WRITTEN]
        held = [s for s in live if e.kind[s] != SAME and not e.kind[s] & WRITTEN]
        huge = sum(1 for s in held if e.kind[s] & ENCODING == HUGE)
        compr = sum(e.clen[s] for s in held)
        if (same, huge, compr) != (pool._same_pages, pool._huge_pages, pool._compr_data_size):
            raise AssertionError("page counters out of step with the entries")
        if pool._alloc.objs_used != len(held):
            raise AssertionError("allocator objects != entries held in memory")
        if len(written) != pool._written:
            raise AssertionError("bd_count out of step with the written-back entries")
        if pool.backing is not None:
            if pool.backing.used != len(written):
                raise AssertionError("backing slots taken != written-back entries")
            fslots = {unpack(e.obj[s])[0] for s in written}
            if len(fslots) != len(written):
                raise AssertionError("two entries share a backing slot")
            listed = set(e.lru_oldest(len(live) + 1))
            if listed != set(held) or e.lru_len != len(held):
                raise AssertionError("the LRU list is not the pages held in memory")
        elif written:
            raise AssertionError("written-back entries without a backing file")
        pool._alloc.check_invariants()
