"""Recompression: huge and idle pages rewritten with a secondary algorithm.

zram's ``recompress`` (CONFIG_ZRAM_MULTI_COMP): a pool stores with its primary
compressor (fast, lz4 say) and may later rewrite chosen pages with a slower,
stronger one (zstd at a high level), the *secondary*:

- which pages: ``huge`` (stored raw), ``idle`` (not stored or loaded for
  ``idle_seconds``) or ``huge_idle`` (both), as zram's ``type=``; same-filled
  and written-back pages stay as they are (zram's ZRAM_WB pages too);
- ``threshold`` (zram's): objects smaller than it are not tried, and a new
  form must be smaller than it; a threshold of huge_class_size or more is
  refused, as zram refuses it;
- "smaller" is zram's test: ``zs_lookup_class_index`` of the new compressed
  length below that of the old one, both *raw* lengths (no 8-byte header; a
  huge page's old length is 4096).  So a huge page recompressed to
  huge_class_size .. huge_class_size + 7 bytes (3625..3632 at chain size 8)
  is accepted, as the kernel accepts it: it is no longer huge (huge_pages
  goes down, compr_data_size counts its length) though with its header it
  still takes a huge slot, a whole page;
- a rewritten page's handle keeps working, its entry remembers which
  secondary encoded it (kind RECOMPRESSED + index, at most MAX_SECONDARIES
  per pool);
- a page the secondary cannot shrink is marked INCOMPRESSIBLE (zram's
  ZRAM_INCOMPRESSIBLE: never tried again; what write-back type
  ``incompressible`` picks) when the pool has no other secondary to try, as
  zram marks it only once every secondary has failed;
- every page tried loses its idle mark (its access time becomes now), as
  zram clears ZRAM_IDLE of each page it reads to recompress;
- mem_used_max does not move: zram's recompression does not update it;
- unlike zram's, it keeps the pool's limit: a new object that would leave
  the pool past it is given back (``alloc_failed``), so a pool never ends an
  operation holding more than its limit.

Each page is read under the pool's lock, recompressed outside it, and put
back under it only if its entry did not change meanwhile.

These are functions of a :class:`~zswapd.pool.PagePool`, split out of it by
concept: they take the pool's lock as its own methods do, and keep its
secondaries (``_secondaries``) and figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import compressors
from allocator import ClassTable, PoolFullError
from zswapd import tier
from zswapd.entries import (
    ENCODING,
    HUGE,
    INCOMPRESSIBLE,
    MAX_SECONDARIES,
    PAGE_SIZE,
    RECOMPRESSED,
    SAME,
    WRITTEN,
)
from zswapd.errors import ConfigError, CorruptObjectError, InvalidRequestError

if TYPE_CHECKING:
    from zswapd.pool import PagePool

__all__ = ["RECOMPRESS_TYPES", "add_secondary", "recompress", "secondary_index"]

RECOMPRESS_TYPES = ("huge", "idle", "huge_idle")


def secondary_index(pool: PagePool, algo: str | None, level: int | None) -> int:
    """Index of the secondary compressor for (algo, level), made on first use."""
    algo = algo or pool.config.recompress_algo
    if algo is None:
        raise ConfigError("no recompression algorithm: pass algo or set recompress_algo")
    if level is None and algo == pool.config.recompress_algo:
        level = pool.config.recompress_level
    opts = {} if level is None else {"level": level}
    try:
        comp = compressors.get(algo, **opts)
    except compressors.CompressorError as exc:
        raise ConfigError(str(exc)) from exc
    for i, known in enumerate(pool._secondaries):
        if known.name == comp.name and known.options == comp.options:
            return i
    if len(pool._secondaries) >= MAX_SECONDARIES:
        raise ConfigError("too many recompression algorithms in one pool")
    pool._secondaries.append(comp)
    return len(pool._secondaries) - 1


def _class_index(pool: PagePool) -> Callable[[int], int]:
    """zs_lookup_class_index of the pool's allocator; for zbud and z3fold,
    which have no classes, the slot size stands in for the class."""
    table = getattr(pool._alloc, "table", None)
    if isinstance(table, ClassTable):
        return table.class_index
    return pool._alloc.capacity


def recompress(
    pool: PagePool,
    type: str = "huge",
    *,
    algo: str | None = None,
    level: int | None = None,
    idle_seconds: float = 0,
    threshold: int | None = None,
) -> dict[str, int]:
    """Recompress huge and/or idle pages with a secondary algorithm (zram's recompress).

    A page is rewritten only when its new compressed length's class index is
    below its old one's (zram's test, raw lengths), and below ``threshold``
    bytes if given; its handle keeps working.

    Args:
        type: "huge", "idle" or "huge_idle" (both at once), as zram's.
        algo, level: the secondary algorithm (default: the pool's).
        idle_seconds: a page not stored or loaded for this long is idle.
        threshold: zram's: skip objects smaller than this, keep only results
            smaller than it; below huge_class_size.

    Returns:
        candidates, recompressed, not_smaller, alloc_failed, bytes_saved.
    """
    if type not in RECOMPRESS_TYPES:
        raise InvalidRequestError(f"type must be one of {', '.join(RECOMPRESS_TYPES)}")
    if threshold is not None and (not isinstance(threshold, int) or threshold < 0):
        raise InvalidRequestError("threshold must be an int >= 0 (0: none, as zram's)")
    if threshold == 0:
        threshold = None
    if threshold is not None and threshold >= pool.huge_class_size:
        raise InvalidRequestError(
            f"threshold must be below huge_class_size ({pool.huge_class_size}), as zram's"
        )
    class_index = _class_index(pool)
    # A device's pages in block index order, as zram walks them (before any of
    # the pool's locks: the device's comes first).
    order = pool.writeback_order() if pool.writeback_order is not None else None
    with pool._lock:
        index = secondary_index(pool, algo, level)
        e = pool._entries
        horizon = pool._now() - idle_seconds
        want_huge = type in ("huge", "huge_idle")
        want_idle = type in ("idle", "huge_idle")
        picked = []
        for slot in e.live_slots() if order is None else tier.slots_in_order(pool, order):
            kind = e.kind[slot]
            # Written-back pages stay where they are, as zram's ZRAM_WB ones.
            if kind & (WRITTEN | INCOMPRESSIBLE) or kind == SAME:
                continue  # zram skips ZRAM_WB, ZRAM_SAME and ZRAM_INCOMPRESSIBLE
            if kind & ENCODING == RECOMPRESSED + index:
                continue
            if threshold is not None and e.clen[slot] < threshold:
                continue  # "small enough" already, zram's threshold
            if want_huge and kind & ENCODING != HUGE:
                continue
            if want_idle and e.atime[slot] > horizon:
                continue
            picked.append((slot, kind, e.obj[slot], e.clen[slot]))
    result = dict(candidates=len(picked), recompressed=0, not_smaller=0, alloc_failed=0)
    saved = 0
    secondary = pool._secondaries[index]
    for slot, kind, obj, clen in picked:
        with pool._lock:
            if not pool._unchanged(slot, kind, obj):
                continue  # freed or changed meanwhile
            raw = pool._alloc.obj_read(obj, clen)
        try:
            page = (
                raw
                if kind & ENCODING == HUGE
                else pool._decompressor(kind).decompress(raw, PAGE_SIZE)
            )
        except compressors.CorruptDataError as exc:
            raise CorruptObjectError(f"pool {pool.name!r}: {exc}") from exc
        new = secondary.compress(page)
        no_smaller_class = class_index(min(len(new), PAGE_SIZE)) >= class_index(clen)
        if no_smaller_class or (threshold is not None and len(new) >= threshold):
            result["not_smaller"] += 1
            with pool._lock:
                pool.counters.recompress_attempts += 1  # every page tried
                if pool._unchanged(slot, kind, obj):
                    e.atime[slot] = pool._now()  # no longer idle: zram clears ZRAM_IDLE
                    if no_smaller_class and len(pool._secondaries) == 1:
                        # Every secondary failed: never tried again, and what
                        # writeback type "incompressible" picks.
                        e.kind[slot] = kind | INCOMPRESSIBLE
            continue
        with pool._lock:
            pool.counters.recompress_attempts += 1
            if not pool._unchanged(slot, kind, obj):
                continue
            e.atime[slot] = pool._now()
            try:
                new_obj = pool._alloc.store(new)
            except PoolFullError:
                result["alloc_failed"] += 1
                continue
            limit = pool.config.limit_pages
            if limit is not None and pool._alloc.total_size_bytes > limit * PAGE_SIZE:
                # zram's recompression allocates without looking at mem_limit;
                # here a pool never ends an operation past its limit.
                pool._alloc.free(new_obj)
                result["alloc_failed"] += 1
                continue
            # zram's recompress_slot does not call update_used_max: the moment
            # both objects were held does not show in mem_used_max.
            pool._alloc.free(obj)
            e.obj[slot], e.clen[slot], e.kind[slot] = new_obj, len(new), RECOMPRESSED + index
            pool._compr_data_size += len(new) - clen
            if kind & ENCODING == HUGE:
                pool._huge_pages -= 1
            saved += clen - len(new)
            pool.counters.recompressed_pages += 1
            pool.counters.recompress_saved_bytes += clen - len(new)
            result["recompressed"] += 1
    result["bytes_saved"] = saved
    return result


def add_secondary(pool: PagePool, comp: compressors.Compressor) -> int:
    """Register a secondary compressor (restoring a pool); returns its index."""
    with pool._lock:
        pool._secondaries.append(comp)
        return len(pool._secondaries) - 1
