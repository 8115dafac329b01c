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
   accept_threshold_percent hysteresis is an option.  Same-filled pages take
   no allocator memory, so neither the limit nor the hysteresis refuses them
   (zram stores them past its mem_limit).  The server-wide memory
   limit is a :class:`~allocator.PageBudget` shared by every pool's allocator
   (zswap's max_pool_percent): a store past it fails whole the same way, as
   MemoryLimitError (counted in memory_limit_hit, in pages).  The same budget
   pays for the table of entries, one page per 151 slots
   (:data:`~zswapd.entries.ENTRIES_PER_PAGE`), same-filled pages included:
   the table grows, charged, before a batch's entries are added, so a store
   that the budget cannot pay for fails whole the same way.  mm_stat is
   unchanged by it (zram's mem_used_total does not count its table either);
   only the server's memory_used includes it.
5. A pool holds at most 2**24 - 1 entries (its handle table; a handle's other
   40 bits are its random generation): a store that would pass that fails
   whole with PoolLimitError before anything is stored.

6. The second tier (a pool with a ``backing_file``): a page may be *written
   back* to the file and keep its handle; an ``lru`` pool writes back instead
   of refusing a store.  The policy is :mod:`zswapd.tier`, the file
   :mod:`zswapd.backing`.

Recompression (zram's ``recompress``) is :mod:`zswapd.recompression`; saving
and restoring a pool's contents, :mod:`zswapd.pool_state`.  They are
functions of the pool, split out by concept, that its methods call.

Batches are all or nothing: a batch store either stores every page or, on any
failure, none; a batch load or free with one stale handle does nothing.

Locks: ``_wb_lock`` (one write-back at a time), then ``_lock``, then the
allocator's own; the whole service's order is in zswapd/__init__.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import compressors
from allocator import (
    BudgetExceededError,
    PageBudget,
    PoolFullError,
)
from allocator.base import arena_capacity
from allocator.handles import MAX_SLOTS, SLOT_MASK
from zswapd import batch as batch_module
from zswapd import figures, pool_state, recompression, tier
from zswapd.backing import BackingFile, unpack
from zswapd.batch import Prepared, split_pages
from zswapd.config import PoolConfig, check_pool_name
from zswapd.entries import (
    COMPRESSED,
    ENCODING,
    HUGE,
    RECOMPRESSED,
    SAME,
    WRITTEN,
    EntryTable,
)
from zswapd.errors import (
    CompressPoorError,
    ConfigError,
    CorruptObjectError,
    InvalidRequestError,
    MemoryLimitError,
    PoolLimitError,
    ReclaimFailError,
    StaleHandleError,
    UnknownPoolError,
)
from zswapd.fastpath import batch
from zswapd.recompression import RECOMPRESS_TYPES
from zswapd.tier import WRITEBACK_TYPES

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
# Settings a pool can change while it holds pages (as zram's mem_limit can be
# written at any time); the others decide how the stored pages were encoded.
LIVE_SETTINGS = ("limit_bytes", "accept_threshold_percent", "huge_policy", "writeback_limit")

Page = bytes | bytearray | memoryview


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
        limit = self.config.alloc_max_pages
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

    def _admit(self, all_same: bool) -> None:
        """zswap's hysteresis: after a limit hit, refuse until below the threshold.

        A batch of same-filled pages only is never refused here: it takes no
        allocator memory, so it cannot grow the pool the hysteresis guards,
        and zram stores such a page whatever its mem_limit.  (Linux 6.12's
        zswap never sees a zero-filled page at all: swap keeps it in its
        zeromap, whatever zswap's limit.)
        """
        pct = self.config.accept_threshold_percent
        if all_same or not self._limit_latched or pct is None or not self.config.limit_bytes:
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
            if (config.alloc_max_pages or self._unlimited_pages) > self._arena_pages:
                # The arena holds the limit plus one zspage (alloc_max_pages).
                most = (self._arena_pages - config.chain_size) * PAGE_SIZE
                raise ConfigError(
                    f"pool {self.name!r} reserved room for {most} bytes when it was "
                    "made: its limit_bytes can be lowered, or raised up to that, not "
                    "past it (make a new pool for more)"
                )
            if self.config.alloc_max_pages != config.alloc_max_pages:
                self._alloc.set_max_pages(config.alloc_max_pages)
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
        paths = batch()
        pages_in = paths.split_pages(pages)
        # Same-filled test, compression and the huge rule, outside the lock.
        prepared, poor, same, compr = paths.prepare(pages_in, self._comp, self.huge_class_size)
        if poor and self.config.huge_policy == "reject":
            with self._lock:
                self.counters.reject_compress_poor += poor
            raise CompressPoorError(
                f"{poor} of {len(pages_in)} pages compress to {self.huge_class_size} bytes or "
                "more and this pool rejects them (huge_policy=reject); nothing stored"
            )
        need = len(prepared) - same
        retry = 0
        while True:
            with self._lock:
                result = self._store_locked(prepared, poor, same, compr, first=not retry)
                if isinstance(result, list):
                    return result
                held = tier.held_pages(self, isinstance(result, BudgetExceededError))
            # An lru pool out of room: write back, then try again.  Each retry
            # asks twice as much: what a batch needs is whole zspages of its
            # classes (up to chain_size pages each), which freeing its own
            # count of objects may not give, and other threads may take.
            try:
                tier.reclaim(self, result, need << retry, held, retry == tier.MAX_RECLAIM_RETRIES)
            except ReclaimFailError:
                with self._lock:
                    self.counters.reject_reclaim_fail += len(pages_in)  # the whole batch
                raise
            retry += 1

    def _store_locked(
        self,
        prepared: Sequence[Prepared],
        poor: int,
        same: int,
        compr: int,
        *,
        first: bool = True,
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
        self._admit(all_same=same == n)
        high = [self._mem_used_max]
        try:
            handles: list[int] = batch().add_entries(
                self._entries, prepared, self._alloc, self._now(), self.config.limit_pages, high
            )
        except BaseException as exc:
            # The batch was undone (objects and entries); the counters were not
            # yet moved, but mem_used_max was, as zram moves it before its check.
            self._mem_used_max = high[0]
            if self.budget is not None:
                # What the undo could not give back (the entry table keeps some
                # growth) is memory in use: the high-water mark never trails it.
                self.budget.commit_max()
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
        self._mem_used_max = high[0]
        self._same_pages += same
        self._compr_data_size += compr
        self._huge_pages += poor
        self.counters.huge_pages_since += poor
        self.counters.stored_pages_total += n
        if self.budget is not None:
            self.budget.commit_max()
        return handles

    def _memory_limit_error(self, n: int) -> MemoryLimitError:
        server = figures.server_figures(self.budget)
        return MemoryLimitError(
            f"these pages would pass the server's --memory-limit (all pools "
            f"together hold {server.memory_used} of "
            f"{server.memory_limit} bytes); none of the "
            f"{n} pages stored in pool {self.name!r}"
        )

    def load(self, handles: Sequence[int]) -> list[bytes]:
        """The pages stored under ``handles``, in order.

        A written-back page is read from the backing file and stays there.

        Raises:
            StaleHandleError: a handle is not live (nothing is read).
            CorruptObjectError: a stored object no longer decompresses, or a
                written-back page no longer matches its checksum.
            BackingIoError: the backing file could not be read.
        """
        paths, raw = self._read(handles)
        # Decompress outside the lock: other threads go on meanwhile.
        try:
            pages: list[bytes] = paths.decode(raw, self._comp, self._decompress)
            return pages
        except compressors.CorruptDataError as exc:
            raise self._corrupt(exc) from exc

    def load_frame(self, handles: Sequence[int], header: bytes) -> bytes:
        """As :meth:`load`, the pages after ``header`` in one new bytes object: a
        frontend's whole answer, assembled once, with no list of pages to join.

        Raises:
            StaleHandleError, CorruptObjectError, BackingIoError: as :meth:`load`.
        """
        paths, raw = self._read(handles)
        try:
            answer: bytes = paths.decode_frame(raw, self._comp, self._decompress, header)
            return answer
        except compressors.CorruptDataError as exc:
            raise self._corrupt(exc) from exc

    def _read(self, handles: Sequence[int]) -> tuple[Any, Sequence[batch_module.Raw]]:
        """What ``handles`` store, read under the lock (and from the file):
        the batch loops that read it, and the entries' raw pages."""
        paths = batch()
        with self._lock:
            self._check_open()
            try:
                slots, raw, same, written = paths.read_entries(
                    self._entries, handles, self._alloc, self._now()
                )
            except StaleHandleError:
                self.counters.stale_handle_requests += 1
                raise
            # A written-back page counts once read and verified, with bd_reads
            # (in tier.read_back): loaded - same - bd_reads (the loads memory served)
            # then never goes down between two scrapes.
            self.counters.loaded_pages_total += len(slots) - written
            self.counters.loaded_same_pages += same
        if written:
            raw = tier.read_back(self, slots, raw)
        return paths, raw

    def _corrupt(self, exc: compressors.CorruptDataError) -> CorruptObjectError:
        with self._lock:
            self.counters.decompress_fail += 1
        return CorruptObjectError(f"pool {self.name!r}: {exc}")

    def _decompress(self, kind: int, data: bytes) -> bytes:
        return self._decompressor(kind).decompress(data, PAGE_SIZE)

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

    # -- write-back, recompression, saving: their own modules ----------------------

    # Functions of the pool kept in a module per concept, bound here as its
    # methods (same names, arguments and docstrings as the functions).
    writeback = tier.writeback
    recompress = recompression.recompress
    add_secondary = recompression.add_secondary
    snapshot = pool_state.snapshot
    restore = pool_state.restore

    # -- figures -------------------------------------------------------------------

    @property
    def stored_pages(self) -> int:
        return len(self._entries)

    mm_stat = figures.mm_stat
    bd_stat = figures.bd_stat
    stats = figures.stats
    check_invariants = figures.check_invariants
