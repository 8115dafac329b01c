"""ZbudPool: the kernel's zbud, at most two objects ("buddies") per page.

Why zbud
--------
zbud (mm/zbud.c, Seth Jennings, 2013) was zswap's first allocator.  It is not a
buddy allocator: it "buddies" two compressed pages together in one physical page
and never more.  That caps density at 2 objects per page (a page that
compresses 4:1 still saves only half its memory), but it buys properties that
zsmalloc lacks: an object never spans pages, so mapping is just a pointer; the
ratio of objects to pages can never fall below 1, so zbud never uses more memory
than storing the pages raw would; and emptying any page means evicting at most
two objects.  zswapd keeps it as a baseline to compare zsmalloc against.

Layout
------
A zbud page is 64 *chunks* of 64 bytes (NCHUNKS_ORDER 6: CHUNK_SIZE is
PAGE_SIZE >> 6).  Chunk 0 is the header; the other 63 (NCHUNKS) hold buddies.
The FIRST buddy is left-justified just after the header and the LAST buddy is
right-justified against the end of the page, so whichever one is freed, its
chunks join the slack between them into one free run::

    chunk 0   1 ......... f   f+1 ...... 63-l   64-l ......... 63
        [hdr][ FIRST: f chunks ][    free     ][ LAST: l chunks ]

An object of n bytes takes ceil(n / 64) chunks.  The largest a buddy takes is
PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE = 3968 bytes (62 chunks): a page
holding one buddy therefore always keeps at least one free chunk, and so sits on
an unbuddied list numbered 1..62 (the kernel reuses list 0 as the buddied list).

Huge objects (zswapd's addition)
--------------------------------
The kernel's zbud_alloc refuses anything larger with -ENOSPC (zswap then rejects
the page).  zswapd must accept every length up to 4096, since zram stores an
incompressible page raw, so an object of 3969..4096 bytes is stored alone in a
whole page of its own, at offset 0 and with no header: what z3fold calls a
HEADLESS page.  ``huge_class_size`` is therefore 3969.  Such a page costs what
the raw page would, so zbud's never-worse-than-raw property survives.

Policy
------
``unbuddied[i]`` lists the pages that hold one buddy and have i free chunks.
An object of c chunks goes to the head of the first non-empty list from c
upwards (the exact fit first, then ever larger free runs: the smallest free run
that fits), into FIRST if that is free, else LAST.  With no such page a new page
is taken and the object becomes its FIRST buddy.  A page that still has a free
buddy is pushed on the head of ``unbuddied[free chunks]`` (so lists are LIFO,
as ``list_add``/``list_first_entry`` make them); a page with two buddies is
"buddied" and on no list here (the kernel's buddied list only served reclaim,
which zswapd does not do).  Freeing a buddy takes its page off its list; an
empty page goes back to the arena at once, so RSS follows
``total_size_bytes``; otherwise the page is pushed back on the list for its new
free space.  Nothing ever moves: ``compact()`` releases nothing and returns 0.

Handles and metadata
--------------------
The kernel's handle is the object's address.  zswapd's is a slot of the shared
:class:`~allocator.handles.HandleTable`, whose entry holds the *location*
``pfn << 2 | buddy`` (buddy: HEADLESS 0, FIRST 1, LAST 3; z3fold adds MIDDLE 2).
The kernel keeps a page's metadata in its header chunk; here it lives in flat
arrays indexed by location (per buddy: chunks, start chunk, owning handle slot)
and by PFN (per page: buddies in use, which unbuddied list it is on, and the
list links), so there is no Python object per page or per object and the header
chunk is left unused, kept only for the kernel's geometry.  A buddy's address is
``pfn * 4096 + start * 64`` and its capacity ``chunks * 64``, with no branch on
the buddy kind; a HEADLESS entry records 64 chunks starting at chunk 0.

Mapping: an object lies inside one page, so ``map`` hands out a memoryview slice
of the arena itself, whatever the mode (RO gets a read-only view); there is never
a copy, and the modes only decide writability.

Figures: ``class_stats()`` has two rows, since zbud has no size classes: row 0
is the buddy pages (size 3968, two objects per page, fullness by buddies used:
one of two is the "60" step, two the "100" step) and row 1 the HEADLESS pages
(size 4096, one object each, always full).  ``freeable`` is the kernel's formula,
free buddies // 2: what perfectly repacking the buddies would save, which zbud
itself never does.

Locking: one re-entrant lock per pool, held by every public operation and for
the whole life of an open mapping, as in :class:`~allocator.zsmalloc.ZsPool`.

Deviations from mm/zbud.c: huge objects as above; no LRU and no eviction
(zbud_reclaim_page); metadata outside the page; the handle indirection.
"""

from __future__ import annotations

import inspect
import threading
from array import array
from typing import Any, ClassVar

from allocator.arena import PAGE_SHIFT, PAGE_SIZE, PageArena
from allocator.base import PoolBase, arena_capacity
from allocator.buddy import (
    BUDDY_BITS,
    BUDDY_MASK,
    CHUNK_SHIFT,
    CHUNK_SIZE,
    FIRST,
    HEADLESS,
    LAST,
    MAX_BUDDY_SIZE,
    NCHUNKS,
    NIL,
    TOTAL_CHUNKS,
    ZHDR_CHUNKS,
    size_to_chunks,
)
from allocator.budget import PageBudget
from allocator.errors import AllocatorError
from allocator.handles import SLOT_MASK, HandleTable
from allocator.invariants import BuddyPoolView, check_buddy_pool
from allocator.mapping import MapMode, ObjectMapping
from allocator.options import ZSPOOL_DEFAULTS, check_zspool_options
from allocator.stats import ClassStats, Fullness, PoolStats, fullness_group
from allocator.zsmalloc import ZsPool

__all__ = ["ZbudPool"]

# Options that only zsmalloc understands: accepted and ignored, so that one option
# set builds any allocator.  Read from ZsPool itself so that new zsmalloc options
# are accepted without a change here, while a misspelt option still fails.
_ZSMALLOC_ONLY_OPTIONS = frozenset(inspect.signature(ZsPool.__init__).parameters) - {
    "self",
    "max_pages",
    "seed",
    "arena_pages",
    "budget",
}


class ZbudPool(PoolBase):
    """The kernel's zbud: objects of 1..4096 bytes, at most two per page.

    Args:
        max_pages: page budget; past it ``malloc`` raises PoolFullError.
        seed: seed for handle generations (default: unpredictable).
        arena_pages: address space reserved for pages (default: max_pages, or
            64 GiB without it); the pool never holds more pages than this.
        budget: a :class:`PageBudget` shared with other pools, charged for
            every page taken (past it ``malloc`` raises BudgetExceededError).
        ignored_zsmalloc_options: zsmalloc's own options (chain_size,
            empty_cache, header, ...), accepted and ignored.

    Raises:
        ValueError: max_pages below 0.
        TypeError: an option that no allocator knows.
    """

    # Geometry as class attributes: Z3foldPool, built on this class as the
    # kernel's z3fold.c was built on zbud.c, has three buddies a page.
    buddies_per_page: ClassVar[int] = 2
    hdr_chunks: ClassVar[int] = ZHDR_CHUNKS
    nchunks: ClassVar[int] = NCHUNKS
    max_buddy_size: ClassVar[int] = MAX_BUDDY_SIZE

    def __init__(
        self,
        max_pages: int | None = None,
        *,
        seed: int | None = None,
        arena_pages: int | None = None,
        budget: PageBudget | None = None,
        **ignored_zsmalloc_options: Any,
    ) -> None:
        unknown = sorted(set(ignored_zsmalloc_options) - _ZSMALLOC_ONLY_OPTIONS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected options: {', '.join(unknown)}")
        # Ignored, but checked as zsmalloc would: one option set builds any
        # allocator, and a wrong one is wrong whichever is chosen.
        check_zspool_options(
            **{**ZSPOOL_DEFAULTS, **ignored_zsmalloc_options, "max_pages": max_pages, "seed": seed}
        )
        self.max_pages = max_pages
        self._arena = PageArena(arena_capacity(max_pages, arena_pages))
        # The budget, capped by the arena's size: running out of either is PoolFullError.
        own = max_pages if max_pages is not None else self._arena.capacity
        self._budget = min(own, self._arena.capacity)
        self._shared = budget
        self._buf = self._arena.buf
        self._rbuf = self._buf.toreadonly()
        self._handles = HandleTable(seed)
        self._lock = threading.RLock()
        # Handle slot -> open mappings of its object.
        self._mapped: dict[int, int] = {}
        # Per buddy, indexed by location (pfn << 2 | buddy): size and start in
        # chunks (0 when free), and the handle slot that owns the object.
        self._chunks = array("B")
        self._start = array("B")
        self._owner = array("I")
        # Per page, indexed by PFN: buddies in use, the unbuddied list the page
        # is on (NIL: none) and its neighbours there.
        self._inuse = array("B")
        self._list = array("b")
        self._next = array("q")
        self._prev = array("q")
        # unbuddied[i]: head PFN of the list of pages with i free chunks; bit i of
        # _nonempty is set while that list has pages, so a search is one shift.
        self._heads = array("q", [NIL] * self.nchunks)
        self._nonempty = 0
        # Buddy pages by buddies in use (index 0: a page being filled or emptied).
        self._by_inuse = [0] * (self.buddies_per_page + 1)
        self._headless = 0
        self.pages_max = 0
        self.pages_compacted = 0
        self.alloc_failures = 0
        self._init_extra()

    def _init_extra(self) -> None:
        """Where a pool built on this one (z3fold) sets up what it keeps beside it."""

    # -- properties -------------------------------------------------------------

    @property
    def chain_size(self) -> int:
        """Pages per allocation unit: always one (objects never span pages)."""
        return 1

    @property
    def huge_class_size(self) -> int:
        """Smallest object length stored alone in a whole (HEADLESS) page."""
        return self.max_buddy_size + 1

    def capacity(self, size: int) -> int:
        """Bytes a mapping of an object of ``size`` bytes offers (its chunks)."""
        self._check_size(size)
        if size > self.max_buddy_size:
            return PAGE_SIZE
        return size_to_chunks(size) << CHUNK_SHIFT

    # -- per-PFN arrays ------------------------------------------------------------

    def _grow(self, pfn: int) -> None:
        """Extend the per-page arrays to cover ``pfn`` (geometrically)."""
        have = len(self._inuse)
        add = max(pfn + 1 - have, have, 64)
        zeros = bytes(add << BUDDY_BITS)
        self._chunks.extend(zeros)
        self._start.extend(zeros)
        self._owner.extend(zeros)
        self._inuse.extend(bytes(add))
        self._list.extend([NIL] * add)
        self._next.extend([NIL] * add)
        self._prev.extend([NIL] * add)

    # -- unbuddied lists -------------------------------------------------------------

    def _link(self, pfn: int, i: int) -> None:
        """Push ``pfn`` on the head of unbuddied[i] (list_add)."""
        head = self._heads[i]
        self._next[pfn] = head
        self._prev[pfn] = NIL
        if head != NIL:
            self._prev[head] = pfn
        else:
            self._nonempty |= 1 << i
        self._heads[i] = pfn
        self._list[pfn] = i

    def _unlink(self, pfn: int) -> None:
        """Take ``pfn`` off the unbuddied list it is on (list_del)."""
        i = self._list[pfn]
        nxt = self._next[pfn]
        prv = self._prev[pfn]
        if prv != NIL:
            self._next[prv] = nxt
        else:
            self._heads[i] = nxt
            if nxt == NIL:
                self._nonempty &= ~(1 << i)
        if nxt != NIL:
            self._prev[nxt] = prv
        self._list[pfn] = NIL

    def _find_unbuddied(self, chunks: int) -> int:
        """Head of the first non-empty unbuddied[chunks..], or NIL."""
        fits = self._nonempty >> chunks
        if not fits:
            return NIL
        return self._heads[chunks + (fits & -fits).bit_length() - 1]

    def _num_free_chunks(self, pfn: int) -> int:
        """Free chunks of a buddy page (free buddies count as zero chunks)."""
        base = pfn << BUDDY_BITS
        return NCHUNKS - self._chunks[base | FIRST] - self._chunks[base | LAST]

    def _add_to_unbuddied(self, pfn: int) -> None:
        """List a page that has a free buddy under its free chunks."""
        if self._inuse[pfn] < self.buddies_per_page:
            self._link(pfn, self._num_free_chunks(pfn))

    def _free_buddy(self, pfn: int, chunks: int) -> int:
        """Which buddy of an unbuddied page takes a ``chunks``-chunk object."""
        return FIRST if self._chunks[pfn << BUDDY_BITS | FIRST] == 0 else LAST

    # -- buddies -------------------------------------------------------------------

    def _take(self, pfn: int, bud: int, chunks: int, owner: int) -> int:
        """Record an object of ``chunks`` in buddy ``bud`` of ``pfn``; its location."""
        base = pfn << BUDDY_BITS
        loc = base | bud
        if bud == FIRST:
            start = self.hdr_chunks
        elif bud == LAST:
            start = TOTAL_CHUNKS - chunks
        else:  # MIDDLE (z3fold): right after the first buddy.
            start = self.hdr_chunks + self._chunks[base | FIRST]
        self._chunks[loc] = chunks
        self._start[loc] = start
        self._owner[loc] = owner
        n = self._inuse[pfn]
        self._inuse[pfn] = n + 1
        self._by_inuse[n] -= 1
        self._by_inuse[n + 1] += 1
        return loc

    def _drop(self, loc: int) -> None:
        """Forget the object in buddy ``loc`` (its bytes stay, as in the kernel)."""
        pfn = loc >> BUDDY_BITS
        self._chunks[loc] = 0
        self._start[loc] = 0
        self._owner[loc] = 0
        n = self._inuse[pfn]
        self._inuse[pfn] = n - 1
        self._by_inuse[n] -= 1
        self._by_inuse[n - 1] += 1

    # -- pages -----------------------------------------------------------------------

    def _alloc_page(self) -> int:
        """A fresh page from the arena, within the budget; raises PoolFullError."""
        self._handles.check_room()
        if self._room() < 1:
            raise self._refusal(1, "a page")
        self._charge(1, "a page")
        pfn = self._arena.alloc_page()
        if pfn >= len(self._inuse):
            self._grow(pfn)
        if self._arena.pages_held > self.pages_max:
            self.pages_max = self._arena.pages_held
        return pfn

    def _new_buddy_page(self) -> int:
        pfn = self._alloc_page()
        self._by_inuse[0] += 1
        return pfn

    def _release_page(self, pfn: int) -> None:
        """Give an empty buddy page, on no list, back to the arena."""
        self._by_inuse[0] -= 1
        self._arena.free_page(pfn)
        self._uncharge(1)

    # -- malloc / free -----------------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Allocate an object of ``size`` bytes and return its handle.

        Raises:
            ValueError: size outside 1..4096.
            PoolFullError: the object needs a new page and the budget is spent
                (nothing in the pool changed).
        """
        if type(size) is not int or not 0 < size <= PAGE_SIZE:
            self._check_size(size)
        with self._lock:
            if size > self.max_buddy_size:
                return self._malloc_headless()
            chunks = (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT
            pfn = self._find_unbuddied(chunks)
            if pfn != NIL:
                self._unlink(pfn)
                bud = self._free_buddy(pfn, chunks)
            else:
                pfn = self._new_buddy_page()
                bud = FIRST
            handle = self._handles.alloc(pfn << BUDDY_BITS | bud)
            self._take(pfn, bud, chunks, handle & SLOT_MASK)
            self._add_to_unbuddied(pfn)
            return handle

    def _malloc_headless(self) -> int:
        pfn = self._alloc_page()
        loc = pfn << BUDDY_BITS | HEADLESS
        handle = self._handles.alloc(loc)
        self._chunks[loc] = TOTAL_CHUNKS
        self._owner[loc] = handle & SLOT_MASK
        self._headless += 1
        return handle

    def free(self, handle: int) -> None:
        """:meth:`Allocator.free <allocator.base.Allocator.free>`: its buddy
        (or headless page) returns to the free lists."""
        with self._lock:
            slot = self._handles.slot(handle)
            if self._mapped and slot in self._mapped:
                raise AllocatorError("cannot free an object while it is mapped")
            loc = self._handles.location_of_slot(slot)
            self._handles.release(slot)
            pfn = loc >> BUDDY_BITS
            if loc & BUDDY_MASK == HEADLESS:
                self._chunks[loc] = 0
                self._owner[loc] = 0
                self._headless -= 1
                self._arena.free_page(pfn)
                self._uncharge(1)
                return
            if self._list[pfn] != NIL:
                self._unlink(pfn)
            self._drop(loc)
            if self._inuse[pfn] == 0:
                self._release_page(pfn)
            else:
                self._after_free(pfn)

    def _after_free(self, pfn: int) -> None:
        """A buddy of ``pfn`` was freed and others remain; the page is on no list."""
        self._add_to_unbuddied(pfn)

    # -- object access -------------------------------------------------------------------

    def _locate(self, handle: int) -> tuple[int, int]:
        """(arena address, capacity in bytes) of a live handle's object."""
        loc = self._handles.location(handle)
        addr = ((loc >> BUDDY_BITS) << PAGE_SHIFT) + (self._start[loc] << CHUNK_SHIFT)
        return addr, self._chunks[loc] << CHUNK_SHIFT

    def obj_write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """:meth:`Allocator.obj_write <allocator.base.Allocator.obj_write>`, into
        the object's buddy (its slot: the buddy's chunks)."""
        n = len(data)
        with self._lock:
            addr, cap = self._locate(handle)
            if n > cap:
                raise ValueError(f"{n} bytes do not fit a {cap}-byte buddy")
            self._buf[addr : addr + n] = data

    def obj_read(self, handle: int, size: int | None = None) -> bytes:
        """:meth:`Allocator.obj_read <allocator.base.Allocator.obj_read>`, from the
        object's buddy (its slot: the buddy's chunks)."""
        with self._lock:
            addr, cap = self._locate(handle)
            n = cap if size is None else size
            if not 0 <= n <= cap:
                raise ValueError(f"cannot read {n} bytes of a {cap}-byte buddy")
            return self._buf[addr : addr + n].tobytes()

    def store(self, data: bytes | bytearray | memoryview) -> int:
        """``malloc(len(data))`` then ``obj_write``, as ZsPool.store.

        Raises:
            ValueError: data empty or longer than 4096 bytes.
            PoolFullError: the page budget cannot supply a page.
        """
        with self._lock:
            handle = self.malloc(len(data))
            self.obj_write(handle, data)
            return handle

    def map(self, handle: int, mode: MapMode = MapMode.RW) -> ObjectMapping:
        """A context manager giving a view of the object (see ObjectMapping)."""
        return ObjectMapping(self, handle, mode)

    def _map_begin(self, mapping: ObjectMapping) -> memoryview:
        self._lock.acquire()
        try:
            addr, cap = self._locate(mapping.handle)
            slot = mapping.slot = mapping.handle & SLOT_MASK
            self._mapped[slot] = self._mapped.get(slot, 0) + 1
            buf = self._rbuf if mapping.mode is MapMode.RO else self._buf
            return buf[addr : addr + cap]
        except BaseException:
            self._lock.release()
            raise

    def _map_end(self, mapping: ObjectMapping) -> None:
        try:
            slot = mapping.slot
            left = self._mapped[slot] - 1
            if left:
                self._mapped[slot] = left
            else:
                del self._mapped[slot]
            mapping._close().release()
        finally:
            self._lock.release()

    # -- compaction ----------------------------------------------------------------------

    def compact(self) -> int:
        """zbud never moves an object: nothing to release.

        Returns:
            0, always.
        """
        return 0

    # -- figures -------------------------------------------------------------------------

    def class_stats(self) -> list[ClassStats]:
        """Two rows: buddy pages, then HEADLESS pages (see the module docstring)."""
        with self._lock:
            per_page = self.buddies_per_page
            groups = [0] * len(Fullness)
            objs = 0
            for n in range(1, per_page + 1):
                groups[fullness_group(n, per_page)] += self._by_inuse[n]
                objs += n * self._by_inuse[n]
            pages = sum(self._by_inuse)
            headless = [0] * len(Fullness)
            headless[Fullness.FULL] = self._headless
            return [
                ClassStats(
                    index=0,
                    size=self.max_buddy_size,
                    pages_per_zspage=1,
                    objs_per_zspage=per_page,
                    zspages=tuple(groups),
                    objs_allocated=per_page * pages,
                    objs_used=objs,
                    pages_used=pages,
                    freeable=(per_page * pages - objs) // per_page,
                ),
                ClassStats(
                    index=1,
                    size=PAGE_SIZE,
                    pages_per_zspage=1,
                    objs_per_zspage=1,
                    zspages=tuple(headless),
                    objs_allocated=self._headless,
                    objs_used=self._headless,
                    pages_used=self._headless,
                    freeable=0,
                ),
            ]

    def stats(self) -> PoolStats:
        """The pool's summary figures (every page is its own one-page "zspage")."""
        with self._lock:
            buddy_pages = sum(self._by_inuse)
            return PoolStats(
                pages=self._arena.pages_held,
                pages_max=self.pages_max,
                max_pages=self.max_pages,
                objs_used=self._handles.live,
                objs_allocated=self.buddies_per_page * buddy_pages + self._headless,
                zspages=self._arena.pages_held,
                pages_compacted=self.pages_compacted,
                alloc_failures=self.alloc_failures,
                handle_table_bytes=self._handles.nbytes,
            )

    # -- invariants ----------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Walk every structure and raise AssertionError at the first inconsistency.

        O(pages ever held): for tests and debugging, not for production paths.
        """
        with self._lock:
            check_buddy_pool(self._view())

    def _view(self) -> BuddyPoolView:
        return BuddyPoolView(
            buddies_per_page=self.buddies_per_page,
            hdr_chunks=self.hdr_chunks,
            nchunks=self.nchunks,
            max_buddy_size=self.max_buddy_size,
            chunks=self._chunks,
            start=self._start,
            owner=self._owner,
            inuse=self._inuse,
            lists=self._list,
            heads=self._heads,
            prev=self._prev,
            next=self._next,
            nonempty=self._nonempty,
            by_inuse=self._by_inuse,
            headless=self._headless,
            mapped=self._mapped,
            handles=self._handles,
            pages_held=self._arena.pages_held,
            pages_max=self.pages_max,
            max_pages=self.max_pages,
            held_over_budget=self._held_over_budget,
            num_free_chunks=self._num_free_chunks,
            foreign=None,
        )
