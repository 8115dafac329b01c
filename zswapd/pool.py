"""PagePool: one compressor, one allocator and the table of what is stored.

What happens to a page between "here are 4096 bytes" and "here is your handle",
as zram does it, with zswap's policies as options:

1. A *same-filled* page (one 8-byte word repeated, zeros included) keeps only
   the word: no allocator memory; a load refills the page (zram's same_pages).
2. Otherwise the page is compressed, outside the pool's lock (lz4 and zstandard
   release the GIL, so threads compress at once).
3. A page that compresses to the allocator's huge_class_size or more is stored
   raw, 4096 bytes (zram's huge pages), or refused as compress_poor
   (``huge_policy="reject"``, zswap before 6.18).
4. The object is allocated and written under the lock.  A pool limit is the
   allocator's page budget, so a store past it fails in the allocator and
   changes nothing (zram's mem_limit; counted as pool_limit_hit).  zswap's
   accept_threshold_percent hysteresis is an option.  The server-wide memory
   limit is a :class:`~allocator.PageBudget` shared by every pool's allocator
   (zswap's max_pool_percent): a store past it fails whole the same way, as
   MemoryLimitError (counted in memory_limit_hit, in pages).  The same budget
   pays for the table of entries, one page per 132 slots
   (:data:`~zswapd.entries.ENTRIES_PER_PAGE`), same-filled pages included:
   the table grows, charged, before a batch's entries are added, so a store
   that the budget cannot pay for fails whole the same way.  mm_stat is
   unchanged by it (zram's mem_used_total does not count its table either);
   only the server's memory_used includes it.
5. A pool holds at most 2**24 - 1 entries (its handle table; a handle's other
   40 bits are its random generation): a store that would pass that fails
   whole with PoolLimitError before anything is stored.

6. The second tier (a pool with a ``backing_file``, :mod:`zswapd.backing`):
   a page may be *written back*, its object moved to a slot of the file and
   freed in memory; it keeps its handle, a load reads it from the file
   (verified) and leaves it there, a free releases its slot.  In an ``lru``
   pool (zswap) a store that finds no room writes back the least recently
   stored or loaded pages first, until the pool is below
   accept_threshold_percent of its limit (zswap's shrink worker), and fails
   (ReclaimFailError, reject_reclaim_fail) only when that cannot make room;
   in a ``manual`` pool (zram) pages leave only by :meth:`PagePool.writeback`.
   The disk I/O of a write-back runs outside the pool's lock: loads and stores
   of other pages go on meanwhile, and only the store that needs the room
   waits for it.

Batches are all or nothing: a batch store either stores every page or, on any
failure, none; a batch load or free with one stale handle does nothing.

Locks: ``_wb_lock`` (one write-back at a time), then ``_lock``, then the
allocator's own; the whole service's order is in zswapd/__init__.py.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import compressors
from allocator import (
    BudgetExceededError,
    InvalidHandleError,
    PageBudget,
    PoolFullError,
)
from allocator.base import arena_capacity
from allocator.handles import MAX_SLOTS, SLOT_MASK
from zswapd.backing import BackingFile, pack, unpack
from zswapd.config import DEFAULT_ACCEPT_THRESHOLD, PoolConfig, check_pool_name
from zswapd.entries import (
    COMPRESSED,
    ENCODING,
    FREED,
    HUGE,
    INCOMPRESSIBLE,
    MAX_SECONDARIES,
    RECOMPRESSED,
    SAME,
    WRITTEN,
    EntryTable,
)
from zswapd.errors import (
    BackingIoError,
    CompressPoorError,
    ConfigError,
    CorruptObjectError,
    InvalidRequestError,
    MemoryLimitError,
    PageSizeError,
    PoolLimitError,
    ReclaimFailError,
    StaleHandleError,
    UnknownPoolError,
)
from zswapd.figures import (
    BackingFigures,
    BdStat,
    MetadataFigures,
    MmStat,
    PoolFigures,
    RecompressFigures,
    RequestCounters,
    ServerFigures,
    ZswapFigures,
)

__all__ = [
    "LIVE_SETTINGS",
    "PAGE_SIZE",
    "RECOMPRESS_TYPES",
    "WRITEBACK_TYPES",
    "Counters",
    "PagePool",
    "split_pages",
]

PAGE_SIZE = 4096
RECOMPRESS_TYPES = ("huge", "idle", "huge_idle")
WRITEBACK_TYPES = ("idle", "huge", "huge_idle", "incompressible", "lru")
# Settings a pool can change while it holds pages (as zram's mem_limit can be
# written at any time); the others decide how the stored pages were encoded.
LIVE_SETTINGS = ("limit_bytes", "accept_threshold_percent", "huge_policy", "writeback_limit")
# Pages written back per round: the I/O of one round runs outside the lock.
WRITEBACK_BATCH = 64
# Write-backs one store may run before it gives up (the kernel's zswap shrink
# worker gives up after as many failures): other threads' stores can take the
# room a write-back made, and no store should chase them for ever.
MAX_RECLAIM_RETRIES = 16

Page = bytes | bytearray | memoryview


def split_pages(pages: Page | Iterable[Page]) -> list[bytes]:
    """Pages from ``k * 4096`` contiguous bytes or from an iterable of 4096-byte items.

    Raises:
        PageSizeError: a length that is not a whole number of pages, or an item
            that is not exactly one page.
    """
    if isinstance(pages, bytes | bytearray | memoryview):
        raw = bytes(pages)
        if not raw or len(raw) % PAGE_SIZE:
            raise PageSizeError(f"{len(raw)} bytes is not a whole, non-zero number of pages")
        return [raw[i : i + PAGE_SIZE] for i in range(0, len(raw), PAGE_SIZE)]
    out = []
    for n, page in enumerate(pages):
        if not isinstance(page, bytes | bytearray | memoryview) or len(page) != PAGE_SIZE:
            size = len(page) if isinstance(page, bytes | bytearray | memoryview) else type(page)
            raise PageSizeError(f"page {n} is {size}, not {PAGE_SIZE} bytes")
        out.append(bytes(page))
    return out


@dataclass
class Counters:
    """Event counters, under the kernel's names where it has them."""

    huge_pages_since: int = 0  # zram
    pool_limit_hit: int = 0  # zswap
    reject_compress_poor: int = 0  # zswap
    decompress_fail: int = 0  # zswap
    stored_pages_total: int = 0  # pages ever stored
    loaded_pages_total: int = 0
    freed_pages_total: int = 0
    recompress_attempts: int = 0
    recompressed_pages: int = 0
    recompress_saved_bytes: int = 0
    memory_limit_hit: int = 0  # pages refused at the server-wide memory limit
    stale_handle_requests: int = 0  # loads and frees refused for a stale handle
    written_back_pages: int = 0  # zswap: pages moved to the backing file
    reject_reclaim_fail: int = 0  # zswap: pages refused, no room could be made
    bd_reads: int = 0  # zram bd_stat: pages read from the backing file
    bd_writes: int = 0  # zram bd_stat: pages written to it
    loaded_same_pages: int = 0  # loads served by a same-filled word
    backing_io_errors: int = 0  # reads and writes of the backing file that failed
    backing_corrupt: int = 0  # pages read back that failed their checksum
    # Limit hits of an lru pool, answered by writing back (or, when nothing could
    # be, refused as reject_reclaim_fail); also in pool_limit_hit, as zswap's.  Not
    # refusals for the pool's limit: the metrics' rejected pages leave them out.
    limit_hit_written_back: int = 0


def _with_writeback_limit(config: PoolConfig, left: int) -> PoolConfig:
    """``config`` with ``writeback_limit`` counted down to ``left`` (>= 0).

    A copy, not dataclasses.replace: replace re-validates the whole config,
    which builds a compressor and an allocator (tens of milliseconds), and
    writeback counts down under the pool's lock after every batch.
    """
    config = copy.copy(config)
    object.__setattr__(config, "writeback_limit", left)
    return config


class PagePool:
    """A named pool of pages: store, load, free, compact, recompress, figures.

    Args:
        name: the pool's name (letters, digits, ``_ . -``).
        config: its settings (today's kernel's by default).
        clock: seconds, monotonic; for idle tracking (tests pass their own).
        seed: seed for handle generations (default: unpredictable).
        budget: the page budget shared with the server's other pools
            (--memory-limit); None: this pool's own limit only.
        arena_pages: address space to reserve for pages at most (the server
            passes its memory limit, or MemTotal); None: the pool's limit, or
            the allocator's default.
        max_handles: pages the pool may hold (2**24 - 1; less only for tests).
        backing: the backing file, opened by the caller (a client's, inside
            --backing-dir); None: the config's ``backing_file`` is opened here,
            created if absent (the operator's).  The pool owns it from here.
    """

    def __init__(
        self,
        name: str,
        config: PoolConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        budget: PageBudget | None = None,
        arena_pages: int | None = None,
        max_handles: int = MAX_SLOTS,
        backing: BackingFile | None = None,
    ) -> None:
        self.name = check_pool_name(name)
        self.config = config or PoolConfig()
        if backing is None and self.config.backing_file is not None:
            backing = BackingFile.open(
                self.config.backing_file, self.config.backing_size, create=True, budget=budget
            )
        self.backing = backing
        # Remove the file with the pool: one the daemon made for a client.
        self.backing_owned = False
        try:
            self._init(seed, budget, arena_pages, max_handles, clock)
        except BaseException:
            if backing is not None:
                backing.close(unlink=backing.created)
            raise

    def _init(
        self,
        seed: int | None,
        budget: PageBudget | None,
        arena_pages: int | None,
        max_handles: int,
        clock: Callable[[], float],
    ) -> None:
        self._comp = self.config.make_compressor()
        # Secondary algorithms by (name, level); entry kind RECOMPRESSED + index.
        self._secondaries: list[compressors.Compressor] = []
        self.budget = budget
        self._alloc = self.config.make_allocator(budget=budget, arena_pages=arena_pages)
        # Pages of address space reserved (as make_allocator reserved them): a
        # limit set live cannot go past it, and must not claim to.
        limit = self.config.limit_pages
        self._arena_pages = arena_capacity(
            limit, min(arena_pages, limit) if arena_pages and limit else arena_pages
        )
        self._unlimited_pages = arena_capacity(None, arena_pages)
        self.huge_class_size: int = self._alloc.huge_class_size
        self._entries = EntryTable(seed, max_handles, budget, lru=self.backing is not None)
        self._closed = False
        self._lock = threading.Lock()
        self._wb_lock = threading.Lock()
        # Handles in the order writeback takes them when the caller gives none:
        # a block device's, by block index (zram's), whichever route asks.
        self.writeback_order: Callable[[], Sequence[int]] | None = None
        self._written = 0  # pages in the backing file (bd_count)
        # Entry slots of written-back pages that failed their tag: never read again.
        self._failed_tags: set[int] = set()
        self._clock = clock
        self._t0 = clock()
        self.counters = Counters()
        self._same_pages = 0
        self._huge_pages = 0
        self._compr_data_size = 0
        self._limit_latched = False
        self._mem_used_max = 0

    @property
    def writeback_mode(self) -> str | None:
        """ "lru", "manual", or None without a backing file."""
        return self.config.writeback if self.backing is not None else None

    # -- helpers -------------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock() - self._t0)

    def _admit(self) -> None:
        """zswap's hysteresis: after a limit hit, refuse until below the threshold."""
        pct = self.config.accept_threshold_percent
        if not self._limit_latched or pct is None or not self.config.limit_bytes:
            return
        if self.writeback_mode == "lru":
            return  # it writes back to below the threshold instead
        if self._alloc.total_size_bytes < self.config.limit_bytes * pct // 100:
            self._limit_latched = False
            return
        self.counters.pool_limit_hit += 1
        raise PoolLimitError(
            f"pool {self.name!r} is refusing stores until it shrinks below "
            f"{pct}% of its {self.config.limit_bytes}-byte limit"
        )

    def _check_open(self) -> None:
        """Refuse work on a pool removed meanwhile (lock held)."""
        if self._closed:
            raise UnknownPoolError(f"pool {self.name!r} was removed")

    def close(self) -> None:
        """Drop everything stored: pages back to the shared budget and the OS.

        The pool refuses every request afterwards (it has left the registry).
        """
        with self._lock:
            if self._closed:
                return  # closed already (a device removed at shutdown, say)
            self._closed = True
            self._alloc.close()
            self._entries.close()
            if self.backing is not None:
                # Waits for I/O in flight (outside this lock, never for it).
                self.backing.close(unlink=self.backing_owned)

    def set_live_settings(self, **changes: Any) -> None:
        """Change settings of LIVE_SETTINGS on a pool that may hold pages.

        A limit lowered below what the pool holds drops nothing: stores are
        refused until frees bring it below (zram's mem_limit does the same).

        Raises:
            ConfigError: a setting not in LIVE_SETTINGS, or a bad value.
        """
        other = set(changes) - set(LIVE_SETTINGS)
        if other:
            raise ConfigError(f"cannot change {', '.join(sorted(other))} of a live pool")
        with self._lock:
            config = dataclasses.replace(self.config, **changes)
            if (config.limit_pages or self._unlimited_pages) > self._arena_pages:
                raise ConfigError(
                    f"pool {self.name!r} reserved room for {self._arena_pages * PAGE_SIZE} "
                    "bytes when it was made: its limit_bytes can be lowered, or raised up "
                    "to that, not past it (make a new pool for more)"
                )
            if self.config.limit_pages != config.limit_pages:
                self._alloc.set_max_pages(config.limit_pages)
            self.config = config
            self._limit_latched = False

    def count_memory_limit_hit(self, pages: int) -> None:
        """Count ``pages`` refused at the server's memory limit outside store()
        (a device whose slot table could not grow)."""
        with self._lock:
            self.counters.memory_limit_hit += pages

    def _live_slots(self, handles: Sequence[int]) -> list[int]:
        """The entry slot of every handle (lock held).

        Raises:
            StaleHandleError: a handle is not live; counted, as a request that
                named a stale handle (a client guessing them shows here).
        """
        try:
            return [self._entries.slot(h) for h in handles]
        except StaleHandleError:
            self.counters.stale_handle_requests += 1
            raise

    def _drop(self, handle: int) -> None:
        """Free one live entry and its object or its file slot (lock held)."""
        kind, obj, clen = self._entries.remove(handle)
        if kind & WRITTEN:
            assert self.backing is not None
            self.backing.release(unpack(obj)[0])
            self._written -= 1
            self._failed_tags.discard(handle & SLOT_MASK)
            return
        if kind == SAME:
            self._same_pages -= 1
            return
        self._alloc.free(obj)
        self._compr_data_size -= clen
        if kind & ENCODING == HUGE:
            self._huge_pages -= 1

    def _unchanged(self, slot: int, kind: int, obj: int) -> bool:
        """Whether entry ``slot`` still holds the (kind, obj) noted before the
        lock was let go (lock held).  A pool removed meanwhile holds nothing,
        and a slot freed meanwhile may be gone from the table altogether
        (trimmed): looked up blindly, it would raise IndexError."""
        e = self._entries
        return not self._closed and slot < e.slots and e.kind[slot] == kind and e.obj[slot] == obj

    def _decompressor(self, kind: int) -> compressors.Compressor:
        kind &= ENCODING
        return self._comp if kind == COMPRESSED else self._secondaries[kind - RECOMPRESSED]

    # -- store / load / free -------------------------------------------------------

    def store(self, pages: Page | Iterable[Page]) -> list[int]:
        """Store pages; return their handles, in order.  All or nothing.

        Raises:
            PageSizeError: not whole 4096-byte pages.
            CompressPoorError: huge_policy is "reject" and a page compresses too poorly.
            PoolLimitError: the pool's limit would be passed.
        """
        batch = split_pages(pages)
        # Same-filled test, compression and the huge rule, outside the lock.  The
        # first/last word comparison rejects almost every other page at once.
        prepared: list[tuple[int, bytes | int, int]] = []
        compress, huge_size, poor = self._comp.compress, self.huge_class_size, 0
        for page in batch:
            if page[:8] == page[-8:] and page == page[:8] * (PAGE_SIZE // 8):
                prepared.append((SAME, int.from_bytes(page[:8], "little"), 0))
                continue
            data = compress(page)
            if len(data) >= huge_size:
                prepared.append((HUGE, page, PAGE_SIZE))
                poor += 1
            else:
                prepared.append((COMPRESSED, data, len(data)))
        if poor and self.config.huge_policy == "reject":
            with self._lock:
                self.counters.reject_compress_poor += poor
            raise CompressPoorError(
                f"{poor} of {len(batch)} pages compress to {self.huge_class_size} bytes or "
                "more and this pool rejects them (huge_policy=reject); nothing stored"
            )
        need = sum(1 for p in prepared if p[0] != SAME)
        retry = 0
        while True:
            with self._lock:
                result = self._store_locked(prepared, poor, first=not retry)
                if isinstance(result, list):
                    return result
                held = self._held(isinstance(result, BudgetExceededError))
            # An lru pool out of room: write back, then try again.  Each retry
            # asks twice as much: what a batch needs is whole zspages of its
            # classes (up to chain_size pages each), which freeing its own
            # count of objects may not give, and other threads may take.
            try:
                self._reclaim(result, need << retry, held, retry == MAX_RECLAIM_RETRIES)
            except ReclaimFailError:
                with self._lock:
                    self.counters.reject_reclaim_fail += len(batch)  # the whole batch
                raise
            retry += 1

    def _store_locked(
        self, prepared: list[tuple[int, bytes | int, int]], poor: int, *, first: bool = True
    ) -> list[int] | PoolFullError:
        """Store prepared pages (lock held); their handles, or, in an lru pool
        out of room, the allocator's refusal (nothing stored; a limit hit
        counted on the ``first`` try only: one store, one hit)."""
        self._check_open()
        n = len(prepared)
        if self._entries.room < n:
            self.counters.pool_limit_hit += 1
            raise PoolLimitError(
                f"pool {self.name!r} holds {len(self._entries)} pages, its handle "
                f"table's most ({self._entries.room + len(self._entries)}); none of "
                f"the {n} pages stored"
            )
        self._admit()
        now = self._now()
        handles: list[int] = []
        entries, store = self._entries, self._alloc.store
        same = compr = 0
        try:
            # The entries' slots first: a table the budget cannot grow
            # refuses the batch before any object is taken.
            entries.reserve(n)
            for kind, payload, clen in prepared:
                if kind == SAME:
                    obj = payload
                    same += 1
                else:
                    # payload is the compressed bytes unless the page is SAME.
                    obj = store(payload)  # type: ignore[arg-type]
                    compr += clen
                handle = entries.add(kind, obj, clen, now)  # type: ignore[arg-type]
                handles.append(handle)
                if kind != SAME:
                    entries.lru_push(handle & SLOT_MASK)
        except BaseException as exc:
            # Undo the batch, whatever stopped it: objects and entries only,
            # the counters were not yet moved.
            for h in handles:
                kind, obj, _ = entries.remove(h)
                if kind != SAME:
                    self._alloc.free(obj)
            entries.trim()
            if not isinstance(exc, PoolFullError):
                raise
            if self.writeback_mode == "lru":
                if first and not isinstance(exc, BudgetExceededError):
                    self.counters.pool_limit_hit += 1  # zswap counts it, then shrinks
                    self.counters.limit_hit_written_back += 1
                return exc
            if isinstance(exc, BudgetExceededError):
                # The server's limit, not this pool's: no hysteresis latch.
                self.counters.memory_limit_hit += n
                raise self._memory_limit_error(n) from exc
            self.counters.pool_limit_hit += 1
            self._limit_latched = True
            raise PoolLimitError(
                f"pool {self.name!r} reached its limit of {self.config.limit_bytes} bytes; "
                f"none of the {n} pages stored"
            ) from exc
        self._same_pages += same
        self._compr_data_size += compr
        self._huge_pages += poor
        self.counters.huge_pages_since += poor
        self.counters.stored_pages_total += n
        # As zram's update_used_max: only a store that succeeded moves it.
        self._mem_used_max = max(self._mem_used_max, self._alloc.total_size_bytes)
        if self.budget is not None:
            self.budget.commit_max()
        return handles

    def _memory_limit_error(self, n: int) -> MemoryLimitError:
        server = self._server_figures()
        return MemoryLimitError(
            f"these pages would pass the server's --memory-limit (all pools "
            f"together hold {server.memory_used} of "
            f"{server.memory_limit} bytes); none of the "
            f"{n} pages stored in pool {self.name!r}"
        )

    # -- the second tier -----------------------------------------------------------

    def _below_threshold(self, server: bool) -> bool:
        """Whether an lru pool's write-back may stop (lock held): below
        accept_threshold_percent (90 if unset) of the limit that refused."""
        pct = self.config.accept_threshold_percent
        pct = DEFAULT_ACCEPT_THRESHOLD if pct is None else pct
        if server:
            b = self.budget
            limit = None if b is None else b.limit_pages
            used = 0 if b is None else b.used
        else:
            limit = self.config.limit_pages
            used = self._alloc.total_size_bytes // PAGE_SIZE
        return not limit or used * 100 < limit * pct

    def _held(self, server: bool) -> int:
        """Pages held against the limit that refused a store (lock held): the
        server's budget, or this pool's allocator."""
        if server:
            return 0 if self.budget is None else int(self.budget.used)
        return int(self._alloc.total_size_bytes) // PAGE_SIZE

    def _reclaim(self, refusal: PoolFullError, need: int, held: int, last: bool) -> None:
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
        with self._wb_lock:
            while not last:
                with self._lock:
                    self._check_open()
                    if wrote and not self._made_room(server, wrote, need, held):
                        self._alloc.compact()
                    if self._made_room(server, wrote, need, held):
                        break
                    victims = self._entries.lru_oldest(self._round(server, wrote, need))
                    others = self._held(server) < held
                if not victims:
                    why = (
                        "no page of the pool is left in memory to write back (a batch "
                        "that needs more than the limit holds never fits: store fewer "
                        "pages at a time, e.g. zswapd push --batch-pages N)"
                    )
                    break
                n, stop = self._write_back(victims)
                wrote += n
                if stop is not None:
                    why = stop
                    break
        if wrote or others:
            return
        limit = (
            "the server's --memory-limit"
            if server
            else f"its limit of {self.config.limit_bytes} bytes"
        )
        raise ReclaimFailError(
            f"pool {self.name!r} is at {limit} and cannot write pages back: {why}; nothing stored"
        ) from refusal

    def _round(self, server: bool, wrote: int, need: int) -> int:
        """Pages the next round of a store's write-back takes (lock held): for
        the server's limit ``need`` (what the store asked for); for the pool's,
        what is still needed and the objects that the pages above the
        threshold hold on average; at most a batch, so that a small store at a
        large limit does not write back 64 pages to make room for one."""
        n = need
        if not server:
            pct = self.config.accept_threshold_percent
            pct = DEFAULT_ACCEPT_THRESHOLD if pct is None else pct
            used = self._held(False)
            excess = used - (self.config.limit_pages or 0) * pct // 100
            per_page = self._alloc.objs_used / max(1, used)
            n = max(need - wrote, int(excess * per_page) + 1)
        return max(1, min(WRITEBACK_BATCH, n))

    def _made_room(self, server: bool, wrote: int, need: int, held: int) -> bool:
        """Whether a write-back for a store refused at ``held`` pages may stop (lock held)."""
        if wrote < need:
            return False
        if server:
            return self._held(True) < held
        return self._below_threshold(False)

    def _write_back(self, slots: Sequence[int]) -> tuple[int, str | None]:
        """Move the pages in memory among ``slots`` to the backing file (the
        caller holds _wb_lock).  Returns (pages written, why it stopped early).

        Three steps: the objects are copied out and the file slots taken under
        the lock; written outside it (loads and stores go on); then, under the
        lock again, each page whose entry did not change meanwhile has its
        object freed and its entry pointed at the file.  A page freed or
        rewritten meanwhile gives its file slot back; one whose write failed
        stays in memory, back at the cold end of the LRU.
        """
        backing = self.backing
        assert backing is not None
        e = self._entries
        jobs: list[tuple[int, int, int, int, bytes]] = []
        stop: str | None = None
        if backing.removed:
            return 0, f"backing file {backing.path} was removed; no more write-back"
        with self._lock:
            self._check_open()
            read = self._alloc.obj_read
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
        with self._lock:
            # Removed meanwhile: its entries and its file are gone (close()
            # waited for the writes above to finish).
            self._check_open()
            if stop is not None and len(crcs) < len(jobs):
                self.counters.backing_io_errors += 1
            for i, (slot, kind, obj, fslot, data) in enumerate(jobs):
                # Off the list still: a page freed and a new one stored in the
                # same entry slot meanwhile was listed by its store, so an
                # (unlikely) equal kind and allocator handle cannot pass for it.
                unchanged = self._unchanged(slot, kind, obj) and not e.lru_listed(slot)
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
                self._alloc.free(obj)
                e.obj[slot] = pack(fslot, crcs[i])
                e.kind[slot] = kind | WRITTEN
                self._compr_data_size -= len(data)
                if kind & ENCODING == HUGE:
                    self._huge_pages -= 1
                self._written += 1
                written += 1
            self.counters.written_back_pages += written
            self.counters.bd_writes += written
        return written, stop

    def writeback(
        self,
        type: str = "idle",
        *,
        idle_seconds: float | None = None,
        max_pages: int | None = None,
        order: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Write pages back to the backing file on request (zram's ``writeback``).

        Args:
            type: "idle" (not stored or loaded for ``idle_seconds``), "huge",
                "huge_idle" (both), "incompressible" (huge pages recompression
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
        if self.backing is None:
            raise ConfigError(f"pool {self.name!r} has no backing file to write back to")
        if order is None and self.writeback_order is not None:
            order = self.writeback_order()  # before any of this pool's locks
        want_huge = type in ("huge", "huge_idle")
        written, stop, error = 0, None, None
        with self._wb_lock:
            with self._lock:
                self._check_open()
                e = self._entries
                if type == "lru":
                    candidates = e.lru_len
                    picked = e.lru_oldest(max_pages or e.lru_len)
                else:
                    if order is None:
                        slots = e.live_slots()
                    else:
                        slots = [s for s in (self._slot_or_none(h) for h in order) if s]
                    horizon = self._now() - (idle_seconds or 0)
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
                left = self.config.writeback_limit
                if left is not None and left <= 0:
                    stop = "writeback_limit"
                    break
                chunk = picked[start : start + WRITEBACK_BATCH]
                if left is not None:
                    chunk = chunk[:left]
                n, why = self._write_back(chunk)
                written += n
                if left is not None:
                    with self._lock:
                        self.config = _with_writeback_limit(self.config, left - n)
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
                left = self.config.writeback_limit
                if left is not None and left <= 0 and written < len(picked):
                    stop = "writeback_limit"
        return {
            "written_back": written,
            "candidates": candidates,
            "stopped": stop,
            "error": error,
            "writeback_limit": self.config.writeback_limit,
        }

    def _slot_or_none(self, handle: int) -> int | None:
        try:
            return self._entries.slot(handle)
        except StaleHandleError:
            return None

    # -- store / load / free (continued) ------------------------------------------------

    def load(self, handles: Sequence[int]) -> list[bytes]:
        """The pages stored under ``handles``, in order.

        A written-back page is read from the backing file and stays there.

        Raises:
            StaleHandleError: a handle is not live (nothing is read).
            CorruptObjectError: a stored object no longer decompresses, or a
                written-back page no longer matches its checksum.
            BackingIoError: the backing file could not be read.
        """
        with self._lock:
            self._check_open()
            e = self._entries
            slots = self._live_slots(handles)
            now = self._now()
            read = self._alloc.obj_read
            # (kind, word of a same-filled page or file slot|crc, stored bytes or None, length)
            raw: list[tuple[int, int, bytes | None, int]] = []
            same = written = 0
            for slot in slots:
                kind = e.kind[slot]
                if kind & WRITTEN:
                    raw.append((kind, e.obj[slot], None, e.clen[slot]))
                    written += 1
                elif kind == SAME:
                    raw.append((kind, e.obj[slot], b"", 0))
                    same += 1
                else:
                    raw.append((kind, 0, read(e.obj[slot], e.clen[slot]), 0))
                    e.lru_touch(slot)
                e.atime[slot] = now
            # A written-back page counts once read and verified, with bd_reads
            # (in _read_back): loaded - same - bd_reads (the loads memory served)
            # then never goes down between two scrapes.
            self.counters.loaded_pages_total += len(slots) - written
            self.counters.loaded_same_pages += same
        if self.backing is not None and any(r[2] is None for r in raw):
            raw = self._read_back(slots, raw)
        # Decompress outside the lock: other threads go on meanwhile.
        out = []
        for kind, word, data, _ in raw:
            assert data is not None
            encoding = kind & ENCODING
            if kind == SAME:
                out.append(word.to_bytes(8, "little") * (PAGE_SIZE // 8))
            elif encoding == HUGE:
                out.append(data)
            else:
                try:
                    out.append(self._decompressor(kind).decompress(data, PAGE_SIZE))
                except compressors.CorruptDataError as exc:
                    with self._lock:
                        self.counters.decompress_fail += 1
                    raise CorruptObjectError(f"pool {self.name!r}: {exc}") from exc
        return out

    def _read_back(
        self, slots: list[int], raw: list[tuple[int, int, bytes | None, int]]
    ) -> list[tuple[int, int, bytes | None, int]]:
        """Fill in the written-back pages of ``raw`` from the file (outside the
        lock), then check under it that none was freed meanwhile."""
        backing = self.backing
        assert backing is not None
        out = list(raw)
        try:
            for i, (kind, obj, data, clen) in enumerate(raw):
                if data is None and slots[i] not in self._failed_tags:
                    fslot, tag = unpack(obj)
                    out[i] = (kind, obj, backing.read(fslot, clen, tag), clen)
        except BackingIoError:
            with self._lock:
                self._check_open()  # not an I/O error: the pool (and its file) went
                self.counters.backing_io_errors += 1
            raise
        with self._lock:
            n = 0
            for slot, (kind, obj, data, _), (_, _, was, _) in zip(slots, out, raw, strict=True):
                if was is not None:
                    continue
                self._check_open()
                if not self._unchanged(slot, kind, obj):
                    raise StaleHandleError("a page was freed while it was being loaded")
                if data is None:
                    if slot not in self._failed_tags:
                        # One try a page: a forger without the key cannot retry
                        # until a guess passes.
                        self._failed_tags.add(slot)
                        self.counters.backing_corrupt += 1
                    raise CorruptObjectError(
                        f"pool {self.name!r}: a page in backing file {backing.path} no "
                        "longer matches its tag (the file was changed behind the "
                        "daemon's back); not served"
                    )
                n += 1
            self.counters.bd_reads += n
            self.counters.loaded_pages_total += n
        return out

    def free(self, handles: Sequence[int]) -> None:
        """Free the pages of ``handles``.  All or nothing.

        Raises:
            StaleHandleError: a handle is not live (nothing is freed).
            InvalidRequestError: a handle appears twice.
        """
        if len(set(handles)) != len(handles):
            raise InvalidRequestError("a handle appears more than once; nothing freed")
        with self._lock:
            self._check_open()
            self._live_slots(handles)
            for h in handles:
                self._drop(h)
            self._entries.trim()
            self.counters.freed_pages_total += len(handles)

    # -- maintenance ---------------------------------------------------------------

    @property
    def disk_bound(self) -> bool:
        """Its work may wait for a disk (it has a backing file): an event loop
        hands it to threads of their own (zswapd.offload.run_on_disk)."""
        return self.backing is not None

    @property
    def busy(self) -> bool:
        """Someone holds the pool's lock now (a compaction, a recompression, a
        snapshot, or just another request): a caller on an event loop should not
        wait for it there."""
        # A pool with a backing file may wait for a disk: never on the loop.
        return self.backing is not None or self._lock.locked()

    def compact(self) -> int:
        """Compact the allocator; returns pages released (zram's compact)."""
        with self._lock:
            released: int = self._alloc.compact()
            return released

    def _secondary(self, algo: str | None, level: int | None) -> int:
        """Index of the secondary compressor for (algo, level), made on first use."""
        algo = algo or self.config.recompress_algo
        if algo is None:
            raise ConfigError("no recompression algorithm: pass algo or set recompress_algo")
        if level is None and algo == self.config.recompress_algo:
            level = self.config.recompress_level
        opts = {} if level is None else {"level": level}
        try:
            comp = compressors.get(algo, **opts)
        except compressors.CompressorError as exc:
            raise ConfigError(str(exc)) from exc
        for i, known in enumerate(self._secondaries):
            if known.name == comp.name and known.options == comp.options:
                return i
        if len(self._secondaries) >= MAX_SECONDARIES:
            raise ConfigError("too many recompression algorithms in one pool")
        self._secondaries.append(comp)
        return len(self._secondaries) - 1

    def recompress(
        self,
        type: str = "huge",
        *,
        algo: str | None = None,
        level: int | None = None,
        idle_seconds: float = 0,
        threshold: int | None = None,
    ) -> dict[str, int]:
        """Recompress huge and/or idle pages with a secondary algorithm (zram's recompress).

        A page is rewritten only when its new form lands in a smaller size class
        (and below ``threshold`` bytes, if given); its handle keeps working.

        Args:
            type: "huge", "idle" or "huge_idle" (both at once), as zram's.
            algo, level: the secondary algorithm (default: the pool's).
            idle_seconds: a page not stored or loaded for this long is idle.
            threshold: only keep results smaller than this many bytes.

        Returns:
            candidates, recompressed, not_smaller, alloc_failed, bytes_saved.
        """
        if type not in RECOMPRESS_TYPES:
            raise InvalidRequestError(f"type must be one of {', '.join(RECOMPRESS_TYPES)}")
        if threshold is not None and (not isinstance(threshold, int) or threshold <= 0):
            raise InvalidRequestError("threshold must be a positive int")
        with self._lock:
            index = self._secondary(algo, level)
            e = self._entries
            horizon = self._now() - idle_seconds
            want_huge = type in ("huge", "huge_idle")
            want_idle = type in ("idle", "huge_idle")
            picked = []
            for slot in e.live_slots():
                kind = e.kind[slot]
                # Written-back pages stay where they are, as zram's ZRAM_WB ones.
                if kind & WRITTEN or kind == SAME or kind & ENCODING == RECOMPRESSED + index:
                    continue
                if want_huge and kind & ENCODING != HUGE:
                    continue
                if want_idle and e.atime[slot] > horizon:
                    continue
                picked.append((slot, kind, e.obj[slot], e.clen[slot]))
        result = dict(candidates=len(picked), recompressed=0, not_smaller=0, alloc_failed=0)
        saved = 0
        secondary = self._secondaries[index]
        for slot, kind, obj, clen in picked:
            with self._lock:
                if not self._unchanged(slot, kind, obj):
                    continue  # freed or changed meanwhile
                raw = self._alloc.obj_read(obj, clen)
            try:
                page = (
                    raw
                    if kind & ENCODING == HUGE
                    else self._decompressor(kind).decompress(raw, PAGE_SIZE)
                )
            except compressors.CorruptDataError as exc:
                raise CorruptObjectError(f"pool {self.name!r}: {exc}") from exc
            new = secondary.compress(page)
            smaller_class = self._alloc.capacity(min(len(new), PAGE_SIZE)) < self._alloc.capacity(
                clen
            )
            if (
                len(new) >= self.huge_class_size
                or not smaller_class
                or (threshold is not None and len(new) >= threshold)
            ):
                result["not_smaller"] += 1
                with self._lock:
                    self.counters.recompress_attempts += 1  # every page tried
                    if kind & ENCODING == HUGE and self._unchanged(slot, kind, obj):
                        # zram's ZRAM_INCOMPRESSIBLE: what writeback type
                        # "incompressible" picks.
                        e.kind[slot] = kind | INCOMPRESSIBLE
                continue
            with self._lock:
                self.counters.recompress_attempts += 1
                if not self._unchanged(slot, kind, obj):
                    continue
                try:
                    new_obj = self._alloc.store(new)
                except PoolFullError:
                    result["alloc_failed"] += 1
                    continue
                # The old and the new object were both held for a moment.
                self._mem_used_max = max(self._mem_used_max, self._alloc.total_size_bytes)
                self._alloc.free(obj)
                e.obj[slot], e.clen[slot], e.kind[slot] = new_obj, len(new), RECOMPRESSED + index
                self._compr_data_size += len(new) - clen
                if kind & ENCODING == HUGE:
                    self._huge_pages -= 1
                saved += clen - len(new)
                self.counters.recompressed_pages += 1
                self.counters.recompress_saved_bytes += clen - len(new)
                result["recompressed"] += 1
        result["bytes_saved"] = saved
        return result

    # -- saving and restoring (zswapd.state) ---------------------------------------

    def add_secondary(self, comp: compressors.Compressor) -> int:
        """Register a secondary compressor (restoring a pool); returns its index."""
        with self._lock:
            self._secondaries.append(comp)
            return len(self._secondaries) - 1

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to rebuild this pool, read under its lock."""
        with self._lock:
            e = self._entries
            read = self._alloc.obj_read
            now = self._now()
            entries = []
            for slot in e.live_slots():
                kind, obj, clen = e.kind[slot], e.obj[slot], e.clen[slot]
                # A same-filled page's word; a written-back page's file slot | crc.
                if kind == SAME or kind & WRITTEN:
                    payload = obj.to_bytes(8, "little")
                else:
                    payload = read(obj, clen)
                # The age, not the time: this process's clock means nothing to the next.
                age = max(0, now - e.atime[slot])
                entries.append((e.handle_of(slot), kind, clen, age, payload))
            config = self.config.to_dict()
            if self.backing is not None and self._written:
                # The pages the state file points to are on disk first.
                self.backing.flush()
            return {
                "config": config,
                "backing_owned": self.backing_owned,
                "dictionary": self.config.dictionary.hex() if self.config.dictionary else None,
                "counters": dataclasses.asdict(self.counters),
                "mem_used_max": self._mem_used_max,
                "pages_compacted": self._alloc.pages_compacted,
                "backing_key": None if self.backing is None else self.backing.key.hex(),
                "secondaries": [[c.name, dict(c.options)] for c in self._secondaries],
                "entries": entries,
            }

    def restore(
        self,
        records: list[tuple[int, int, int, int, bytes]],
        counters: Counters,
        used_max: int,
        pages_compacted: int = 0,
    ) -> None:
        """Fill an empty pool with saved entries, under their old handles.

        Raises:
            ConfigError: a record this pool cannot hold (kind, size, limit).
        """
        with self._lock:
            if len(self._entries):
                raise ConfigError("restore() needs an empty pool")
            if len({r[0] for r in records}) != len(records):
                raise ConfigError("a handle appears twice in the saved state")
            # Records carry ages; start this pool's clock far enough back that the
            # oldest page has its age now.
            oldest = max((r[3] for r in records), default=0)
            self._t0 = self._clock() - oldest
            rows = []
            try:
                for handle, kind, clen, age, payload in records:
                    atime = oldest - age
                    if kind == SAME:
                        if len(payload) != 8:
                            raise ConfigError("a same-filled record without its word")
                        rows.append((handle, kind, int.from_bytes(payload, "little"), 0, atime))
                        self._same_pages += 1
                        continue
                    encoding = kind & ENCODING
                    if (
                        kind == FREED
                        or (kind & INCOMPRESSIBLE and encoding != HUGE)
                        or (
                            encoding not in (COMPRESSED, HUGE)
                            and not RECOMPRESSED <= encoding < RECOMPRESSED + len(self._secondaries)
                        )
                    ):
                        raise ConfigError(f"a record of unknown kind {kind}")
                    if not 0 < clen <= PAGE_SIZE or (encoding == HUGE) != (clen == PAGE_SIZE):
                        raise ConfigError("a record whose length does not match its kind")
                    if kind & WRITTEN:
                        if self.backing is None or len(payload) != 8:
                            raise ConfigError(
                                "a written-back record, and no backing file to find it in"
                            )
                        obj = int.from_bytes(payload, "little")
                        self.backing.take(unpack(obj)[0])
                        rows.append((handle, kind, obj, clen, atime))
                        self._written += 1
                        continue
                    if len(payload) != clen:
                        raise ConfigError("a record whose length does not match its kind")
                    rows.append((handle, kind, self._alloc.store(payload), clen, atime))
                    self._compr_data_size += clen
                    self._huge_pages += encoding == HUGE
                self._entries.adopt(rows)
                # The LRU again, oldest first (its order within a second is lost).
                listed = sorted(
                    (r for r in rows if r[1] != SAME and not r[1] & WRITTEN), key=lambda r: r[4]
                )
                for r in listed:
                    self._entries.lru_push(r[0] & SLOT_MASK)
            except PoolFullError as exc:
                raise ConfigError(
                    "the saved pages do not fit the pool's limit or the server's "
                    f"--memory-limit (raise it, or move the state file aside): {exc}"
                ) from exc
            except InvalidHandleError as exc:
                raise ConfigError(f"bad handle in saved state: {exc}") from exc
            self.counters = counters
            self._mem_used_max = max(used_max, self._alloc.total_size_bytes)
            # zram's pages_compacted counts since the device was made, not since
            # this process started.
            if type(pages_compacted) is not int or pages_compacted < 0:
                raise ConfigError("pages_compacted that is not a count")
            self._alloc.pages_compacted += pages_compacted
            if self.budget is not None:
                self.budget.commit_max()

    # -- figures -------------------------------------------------------------------

    @property
    def stored_pages(self) -> int:
        return len(self._entries)

    def mm_stat(self) -> MmStat:
        """zram's mm_stat, field for field."""
        with self._lock:
            return self._mm_stat()

    def _mm_stat(self) -> MmStat:
        alloc = self._alloc
        return MmStat(
            orig_data_size=len(self._entries) * PAGE_SIZE,
            compr_data_size=self._compr_data_size,
            mem_used_total=alloc.total_size_bytes,
            mem_limit=self.config.limit_bytes,
            mem_used_max=self._mem_used_max,
            same_pages=self._same_pages,
            pages_compacted=alloc.pages_compacted,
            huge_pages=self._huge_pages,
            huge_pages_since=self.counters.huge_pages_since,
        )

    def bd_stat(self) -> BdStat:
        """zram's bd_stat alone, in pages (a scrape of a device's wants no class table)."""
        with self._lock:
            return self._bd_stat()

    def _bd_stat(self) -> BdStat:
        c = self.counters
        return BdStat(bd_count=self._written, bd_reads=c.bd_reads, bd_writes=c.bd_writes)

    def _server_figures(self) -> ServerFigures:
        """The server-wide figures: limit (0: none), in use and high-water mark, bytes."""
        b = self.budget
        if b is None:
            return ServerFigures(memory_limit=0, memory_used=0, memory_used_max=0)
        return ServerFigures(
            memory_limit=(b.limit_pages or 0) * PAGE_SIZE,
            memory_used=b.used * PAGE_SIZE,
            memory_used_max=b.committed_max * PAGE_SIZE,
        )

    def _backing_figures(self) -> BackingFigures | None:
        """The backing file: where, how big, how full, how healthy (lock held)."""
        b = self.backing
        if b is None:
            return None
        return BackingFigures(
            file=b.path,
            slots=b.slots,
            size=b.slots * PAGE_SIZE,
            used_slots=b.used,
            writeback=self.config.writeback,
            writeback_limit=self.config.writeback_limit,
            lru_pages=self._entries.lru_len,
            removed=b.removed,
            io_errors=self.counters.backing_io_errors,
            corrupt_pages=self.counters.backing_corrupt,
        )

    def stats(self) -> PoolFigures:
        """Every figure, at one instant: mm_stat, zswap's counters, bd_stat, classes."""
        with self._lock:
            mm = self._mm_stat()
            c = self.counters
            return PoolFigures(
                pool=self.name,
                config=self.config,
                huge_class_size=self.huge_class_size,
                mm_stat=mm,
                zswap=ZswapFigures(
                    stored_pages=len(self._entries) - self._written,
                    same_filled_pages=mm.same_pages,
                    pool_total_size=mm.mem_used_total,
                    pool_limit_hit=c.pool_limit_hit,
                    reject_compress_poor=c.reject_compress_poor,
                    reject_reclaim_fail=c.reject_reclaim_fail,
                    written_back_pages=c.written_back_pages,
                    decompress_fail=c.decompress_fail,
                ),
                bd_stat=self._bd_stat(),
                backing=self._backing_figures(),
                counters=RequestCounters(
                    stored_pages_total=c.stored_pages_total,
                    loaded_pages_total=c.loaded_pages_total,
                    freed_pages_total=c.freed_pages_total,
                    memory_limit_hit=c.memory_limit_hit,
                    stale_handle_requests=c.stale_handle_requests,
                    loaded_same_pages=c.loaded_same_pages,
                    limit_hit_written_back=c.limit_hit_written_back,
                ),
                server=self._server_figures(),
                metadata=MetadataFigures(
                    entry_slots=self._entries.slots, bytes=self._entries.charged * PAGE_SIZE
                ),
                recompress=RecompressFigures(
                    attempts=c.recompress_attempts,
                    recompressed_pages=c.recompressed_pages,
                    saved_bytes=c.recompress_saved_bytes,
                    algorithms=tuple(repr(s) for s in self._secondaries),
                ),
                classes=tuple(self._alloc.class_stats()),
            )

    def check_invariants(self) -> None:
        """Entries, counters and the allocator agree (tests; O(pool size))."""
        with self._lock:
            e = self._entries
            live = e.live_slots()
            same = sum(1 for s in live if e.kind[s] == SAME)
            written = [s for s in live if e.kind[s] & WRITTEN]
            held = [s for s in live if e.kind[s] != SAME and not e.kind[s] & WRITTEN]
            huge = sum(1 for s in held if e.kind[s] & ENCODING == HUGE)
            compr = sum(e.clen[s] for s in held)
            if (same, huge, compr) != (self._same_pages, self._huge_pages, self._compr_data_size):
                raise AssertionError("page counters out of step with the entries")
            if self._alloc.objs_used != len(held):
                raise AssertionError("allocator objects != entries held in memory")
            if len(written) != self._written:
                raise AssertionError("bd_count out of step with the written-back entries")
            if self.backing is not None:
                if self.backing.used != len(written):
                    raise AssertionError("backing slots taken != written-back entries")
                fslots = {unpack(e.obj[s])[0] for s in written}
                if len(fslots) != len(written):
                    raise AssertionError("two entries share a backing slot")
                listed = set(e.lru_oldest(len(live) + 1))
                if listed != set(held) or e.lru_len != len(held):
                    raise AssertionError("the LRU list is not the pages held in memory")
            elif written:
                raise AssertionError("written-back entries without a backing file")
            self._alloc.check_invariants()
