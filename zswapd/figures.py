"""A pool's figures, typed: taken once under its lock, rendered by every frontend.

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
from typing import Any

from allocator import FULLNESS_LABELS, ClassStats
from zswapd.config import PoolConfig

__all__ = [
    "BackingFigures",
    "BdStat",
    "MetadataFigures",
    "MmStat",
    "PoolFigures",
    "RecompressFigures",
    "RequestCounters",
    "ServerFigures",
    "ZswapFigures",
    "class_row",
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
