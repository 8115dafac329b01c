"""The second tier: a pool's pages written back to its backing file.

zram's ``backing_dev`` and zswap's swap device, for a pool with a
``backing_file`` (:mod:`zswapd.backing` is the file itself; this module is
the policy that moves pages to it and back):

- A page may be *written back*: its object copied to a slot of the file and
  freed in memory.  It keeps its handle; a load reads it from the file
  (verified against a tag kept in memory) and leaves it there; a free
  releases its slot.  Same-filled pages never leave memory.
- In an ``lru`` pool (zswap) a store that finds no room writes back the least
  recently stored or loaded pages first, until the pool is below
  accept_threshold_percent of its limit (zswap's shrink worker, run by the
  store that needs it: :func:`reclaim`), and fails (ReclaimFailError,
  reject_reclaim_fail) only when that cannot make room.
- In a ``manual`` pool (zram) pages leave only when asked: :func:`writeback`
  (``idle``, ``huge``, ``huge_idle``, ``incompressible``, ``lru``), counting
  down ``writeback_limit``.

The disk I/O of a write-back runs outside the pool's lock: loads and stores of
other pages go on meanwhile, and only the store that needs the room waits for
it.  Locks: ``pool._wb_lock`` (one write-back at a time), then ``pool._lock``;
the whole service's order is in zswapd/__init__.py.

These are functions of a :class:`~zswapd.pool.PagePool`, split out of it by
concept: they take the pool and its locks as its own methods do, and keep its
figures (``_written``, ``_compr_data_size``, ``_huge_pages``, the counters).
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from allocator import BudgetExceededError, PoolFullError
from zswapd.backing import pack, unpack
from zswapd.config import DEFAULT_ACCEPT_THRESHOLD, PoolConfig
from zswapd.entries import ENCODING, FREED, HUGE, INCOMPRESSIBLE, PAGE_SIZE, SAME, WRITTEN
from zswapd.errors import (
    BackingIoError,
    ConfigError,
    CorruptObjectError,
    InvalidRequestError,
    ReclaimFailError,
    StaleHandleError,
)

if TYPE_CHECKING:
    from zswapd.pool import PagePool

__all__ = [
    "MAX_RECLAIM_RETRIES",
    "WRITEBACK_BATCH",
    "WRITEBACK_TYPES",
    "held_pages",
    "read_back",
    "reclaim",
    "write_back",
    "writeback",
]

WRITEBACK_TYPES = ("idle", "huge", "huge_idle", "incompressible", "lru")
# Pages written back per round: the I/O of one round runs outside the lock.
WRITEBACK_BATCH = 64
# Write-backs one store may run before it gives up (the kernel's zswap shrink
# worker gives up after as many failures): other threads' stores can take the
# room a write-back made, and no store should chase them for ever.
MAX_RECLAIM_RETRIES = 16


def _with_writeback_limit(config: PoolConfig, left: int) -> PoolConfig:
    """``config`` with ``writeback_limit`` counted down to ``left`` (>= 0).

    A copy, not dataclasses.replace: replace re-validates the whole config,
    which builds a compressor and an allocator (tens of milliseconds), and
    writeback counts down under the pool's lock after every batch.
    """
    config = copy.copy(config)
    object.__setattr__(config, "writeback_limit", left)
    return config


def _below_threshold(pool: PagePool, server: bool) -> bool:
    """Whether an lru pool's write-back may stop (lock held): below
    accept_threshold_percent (90 if unset) of the limit that refused."""
    pct = pool.config.accept_threshold_percent
    pct = DEFAULT_ACCEPT_THRESHOLD if pct is None else pct
    if server:
        b = pool.budget
        limit = None if b is None else b.limit_pages
        used = 0 if b is None else b.used
    else:
        limit = pool.config.limit_pages
        used = pool._alloc.total_size_bytes // PAGE_SIZE
    return not limit or used * 100 < limit * pct


def held_pages(pool: PagePool, server: bool) -> int:
    """Pages held against the limit that refused a store (lock held): the
    server's budget, or this pool's allocator."""
    if server:
        return 0 if pool.budget is None else int(pool.budget.used)
    return int(pool._alloc.total_size_bytes) // PAGE_SIZE


def reclaim(pool: PagePool, refusal: PoolFullError, need: int, held: int, last: bool) -> None:
    """Make room for a store that ``refusal`` turned away when the limit
    held ``held`` pages, by writing back the least recently used pages
    (zswap's shrink worker, run by the store that needs it).

    For the pool's limit: until the pool is below accept_threshold_percent
    of it and at least ``need`` pages were written (zswap's hysteresis: a
    pool at its limit does not write back at every store).  For the
    server's --memory-limit (shared with other pools, which this one
    cannot shrink, so its threshold may be out of reach): until ``need``
    pages were written and the budget holds less than it did.

    Written-back objects leave holes: zsmalloc frees a page only when its
    zspage empties, so on real data (pages loaded, freed and stored in
    between, the LRU's oldest spread over every zspage) writing back until
    the threshold alone wrote back up to half the pool per store.  After
    each round short of the goal the allocator is compacted, as zsmalloc's
    shrinker compacts under memory pressure: the cost is the objects
    moved into the holes just made, and a trigger then writes about what
    the threshold asks (tests/zswapd/test_tier.py measures it).

    Raises:
        ReclaimFailError: nothing could be written back (file full, failing
            or removed, or no page of this pool in memory, and nobody else
            made room meanwhile), or ``last``: the store has written back
            MAX_RECLAIM_RETRIES times already and other stores kept taking
            the room (the store counts the batch in reject_reclaim_fail).
    """
    server = isinstance(refusal, BudgetExceededError)
    need = max(1, need)
    wrote, why = 0, f"other stores took the room made, {MAX_RECLAIM_RETRIES} times"
    others = False  # room made by others since the refusal: try again
    with pool._wb_lock:
        while not last:
            with pool._lock:
                pool._check_open()
                if wrote and not _made_room(pool, server, wrote, need, held):
                    pool._alloc.compact()
                if _made_room(pool, server, wrote, need, held):
                    break
                victims = pool._entries.lru_oldest(_round(pool, server, wrote, need))
                others = held_pages(pool, server) < held
            if not victims:
                why = (
                    "no page of the pool is left in memory to write back (a batch "
                    "that needs more than the limit holds never fits: store fewer "
                    "pages at a time, e.g. zswapd push --batch-pages N)"
                )
                break
            n, stop = write_back(pool, victims)
            wrote += n
            if stop is not None:
                why = stop
                break
    if wrote or others:
        return
    limit = (
        "the server's --memory-limit" if server else f"its limit of {pool.config.limit_bytes} bytes"
    )
    raise ReclaimFailError(
        f"pool {pool.name!r} is at {limit} and cannot write pages back: {why}; nothing stored"
    ) from refusal


def _round(pool: PagePool, server: bool, wrote: int, need: int) -> int:
    """Pages the next round of a store's write-back takes (lock held): for
    the server's limit ``need`` (what the store asked for); for the pool's,
    what is still needed and the objects that the pages above the
    threshold hold on average; at most a batch, so that a small store at a
    large limit does not write back 64 pages to make room for one."""
    n = need
    if not server:
        pct = pool.config.accept_threshold_percent
        pct = DEFAULT_ACCEPT_THRESHOLD if pct is None else pct
        used = held_pages(pool, False)
        excess = used - (pool.config.limit_pages or 0) * pct // 100
        per_page = pool._alloc.objs_used / max(1, used)
        n = max(need - wrote, int(excess * per_page) + 1)
    return max(1, min(WRITEBACK_BATCH, n))


def _made_room(pool: PagePool, server: bool, wrote: int, need: int, held: int) -> bool:
    """Whether a write-back for a store refused at ``held`` pages may stop (lock held)."""
    if wrote < need:
        return False
    if server:
        return held_pages(pool, True) < held
    return _below_threshold(pool, False)


def write_back(pool: PagePool, slots: Sequence[int]) -> tuple[int, str | None]:
    """Move the pages in memory among ``slots`` to the backing file (the
    caller holds _wb_lock).  Returns (pages written, why it stopped early).

    Three steps: the objects are copied out and the file slots taken under
    the lock; written outside it (loads and stores go on); then, under the
    lock again, each page whose entry did not change meanwhile has its
    object freed and its entry pointed at the file.  A page freed or
    rewritten meanwhile gives its file slot back; one whose write failed
    stays in memory, back at the cold end of the LRU.
    """
    backing = pool.backing
    assert backing is not None
    e = pool._entries
    jobs: list[tuple[int, int, int, int, bytes]] = []
    stop: str | None = None
    if backing.removed:
        return 0, f"backing file {backing.path} was removed; no more write-back"
    with pool._lock:
        pool._check_open()
        read = pool._alloc.obj_read
        for slot in slots:
            kind = e.kind[slot]
            if kind == FREED or kind & WRITTEN or kind & ENCODING == SAME:
                continue
            fslot = backing.alloc()
            if fslot is None:
                stop = f"backing file {backing.path} is full ({backing.slots} slots)"
                break
            obj = e.obj[slot]
            jobs.append((slot, kind, obj, fslot, read(obj, e.clen[slot])))
            # Off the list while in flight: no other write-back picks it.
            e.lru_remove(slot)
    crcs: list[int] = []
    for _slot, _kind, _obj, fslot, data in jobs:
        try:
            crcs.append(backing.write(fslot, data))
        except BackingIoError as exc:
            stop = str(exc)
            break
    written = 0
    with pool._lock:
        # Removed meanwhile: its entries and its file are gone (close()
        # waited for the writes above to finish).
        pool._check_open()
        if stop is not None and len(crcs) < len(jobs):
            pool.counters.backing_io_errors += 1
        for i, (slot, kind, obj, fslot, data) in enumerate(jobs):
            # Off the list still: a page freed and a new one stored in the
            # same entry slot meanwhile was listed by its store, so an
            # (unlikely) equal kind and allocator handle cannot pass for it.
            unchanged = pool._unchanged(slot, kind, obj) and not e.lru_listed(slot)
            if i >= len(crcs) or not unchanged:
                backing.release(fslot)
                # Still in memory (not written, or rewritten meanwhile): listed again.
                if slot >= e.slots:
                    continue  # freed and trimmed off the table
                k = e.kind[slot]
                if (
                    k != FREED
                    and not k & WRITTEN
                    and k & ENCODING != SAME
                    and not e.lru_listed(slot)
                ):
                    e.lru_push_cold(slot)
                continue
            pool._alloc.free(obj)
            e.obj[slot] = pack(fslot, crcs[i])
            e.kind[slot] = kind | WRITTEN
            pool._compr_data_size -= len(data)
            if kind & ENCODING == HUGE:
                pool._huge_pages -= 1
            pool._written += 1
            written += 1
        pool.counters.written_back_pages += written
        pool.counters.bd_writes += written
    return written, stop


def writeback(
    pool: PagePool,
    type: str = "idle",
    *,
    idle_seconds: float | None = None,
    max_pages: int | None = None,
    order: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write pages back to the backing file on request (zram's ``writeback``).

    Args:
        type: "idle" (not stored or loaded for ``idle_seconds``), "huge",
            "huge_idle" (both), "incompressible" (pages recompression
            could not shrink), or "lru" (the least recently used first).
        idle_seconds: what idle means, required for "idle" and "huge_idle"
            (zram's ``echo N > idle``; 0: every page, zram's ``all``) and
            refused for the others.
        max_pages: write at most this many.
        order: handles in the order to consider them; default: the
            device's block index order if a device set writeback_order,
            else by handle slot (store order).

    Returns:
        written_back, candidates, stopped (None, or why it stopped early:
        "writeback_limit", "backing_full", "io_error", "backing_removed"),
        error (the message, or None), writeback_limit (pages it may still
        write; None: no limit).

    Raises:
        ConfigError: the pool has no backing file.
        InvalidRequestError: a bad type, idle_seconds or max_pages.
    """
    if type not in WRITEBACK_TYPES:
        raise InvalidRequestError(f"type must be one of {', '.join(WRITEBACK_TYPES)}")
    want_idle = type in ("idle", "huge_idle")
    if want_idle and idle_seconds is None:
        # zram writes nothing for "idle" until pages are marked idle: there
        # is no silent "every page" here either.
        raise InvalidRequestError(
            f"type {type} needs idle_seconds (0 for every page, zram's 'all')"
        )
    if not want_idle and idle_seconds is not None:
        raise InvalidRequestError(f"idle_seconds applies to idle and huge_idle, not {type}")
    if idle_seconds is not None and (
        not isinstance(idle_seconds, int | float)
        or isinstance(idle_seconds, bool)
        or not 0 <= idle_seconds < float("inf")
    ):
        raise InvalidRequestError("idle_seconds must be a finite number >= 0")
    if max_pages is not None and (builtins.type(max_pages) is not int or max_pages < 1):
        raise InvalidRequestError("max_pages must be an int >= 1")
    if pool.backing is None:
        raise ConfigError(f"pool {pool.name!r} has no backing file to write back to")
    if order is None and pool.writeback_order is not None:
        order = pool.writeback_order()  # before any of this pool's locks
    want_huge = type in ("huge", "huge_idle")
    written, stop, error = 0, None, None
    with pool._wb_lock:
        with pool._lock:
            pool._check_open()
            e = pool._entries
            if type == "lru":
                candidates = e.lru_len
                picked = e.lru_oldest(max_pages or e.lru_len)
            else:
                slots = e.live_slots() if order is None else slots_in_order(pool, order)
                horizon = pool._now() - (idle_seconds or 0)
                picked = []
                for slot in slots:
                    kind = e.kind[slot]
                    if kind & WRITTEN or kind & ENCODING == SAME:
                        continue
                    if want_huge and kind & ENCODING != HUGE:
                        continue
                    if want_idle and e.atime[slot] > horizon:
                        continue
                    if type == "incompressible" and not kind & INCOMPRESSIBLE:
                        continue
                    picked.append(slot)
                candidates = len(picked)
            if max_pages is not None:
                picked = picked[:max_pages]
        for start in range(0, len(picked), WRITEBACK_BATCH):
            left = pool.config.writeback_limit
            if left is not None and left <= 0:
                stop = "writeback_limit"
                break
            chunk = picked[start : start + WRITEBACK_BATCH]
            if left is not None:
                chunk = chunk[:left]
            n, why = write_back(pool, chunk)
            written += n
            if left is not None:
                with pool._lock:
                    pool.config = _with_writeback_limit(pool.config, left - n)
            if why is not None:
                error = why
                stop = (
                    "backing_full"
                    if "is full" in why
                    else "backing_removed"
                    if "was removed" in why
                    else "io_error"
                )
                break
        else:
            left = pool.config.writeback_limit
            if left is not None and left <= 0 and written < len(picked):
                stop = "writeback_limit"
    return {
        "written_back": written,
        "candidates": candidates,
        "stopped": stop,
        "error": error,
        "writeback_limit": pool.config.writeback_limit,
    }


def slots_in_order(pool: PagePool, handles: Sequence[int]) -> list[int]:
    """The live entries of ``handles``, in that order (lock held; stale ones left out)."""
    return [s for s in (_slot_or_none(pool, h) for h in handles) if s is not None]


def _slot_or_none(pool: PagePool, handle: int) -> int | None:
    try:
        return pool._entries.slot(handle)
    except StaleHandleError:
        return None


def read_back(
    pool: PagePool, slots: list[int], raw: Sequence[tuple[int, int, bytes | None, int]]
) -> list[tuple[int, int, bytes | None, int]]:
    """Fill in the written-back pages of ``raw`` from the file (outside the
    lock), then check under it that none was freed meanwhile."""
    backing = pool.backing
    assert backing is not None
    out = list(raw)
    try:
        for i, (kind, obj, data, clen) in enumerate(raw):
            if data is None and slots[i] not in pool._failed_tags:
                fslot, tag = unpack(obj)
                out[i] = (kind, obj, backing.read(fslot, clen, tag), clen)
    except BackingIoError:
        with pool._lock:
            pool._check_open()  # not an I/O error: the pool (and its file) went
            pool.counters.backing_io_errors += 1
        raise
    with pool._lock:
        n = 0
        for slot, (kind, obj, data, _), (_, _, was, _) in zip(slots, out, raw, strict=True):
            if was is not None:
                continue
            pool._check_open()
            if not pool._unchanged(slot, kind, obj):
                raise StaleHandleError("a page was freed while it was being loaded")
            if data is None:
                if slot not in pool._failed_tags:
                    # One try a page: a forger without the key cannot retry
                    # until a guess passes.
                    pool._failed_tags.add(slot)
                    pool.counters.backing_corrupt += 1
                raise CorruptObjectError(
                    f"pool {pool.name!r}: a page in backing file {backing.path} no "
                    "longer matches its tag (the file was changed behind the "
                    "daemon's back); not served"
                )
            n += 1
        pool.counters.bd_reads += n
        pool.counters.loaded_pages_total += n
    return out
