"""Z3foldPool: the kernel's z3fold, up to three objects per page.

Why z3fold
----------
z3fold (mm/z3fold.c, Vitaly Wool, 2016) is zbud with a third buddy.  zbud caps a
page at two objects, wasting most of a page whenever pages compress better than
2:1; z3fold fits a MIDDLE buddy between FIRST and LAST and keeps everything else
that made zbud attractive: whole objects only (never spanning pages), a density
never below one object per page, and simple reclaim.  It was written from
zbud.c, and :class:`Z3foldPool` is likewise built on
:class:`~allocator.zbud.ZbudPool`: the same chunks, arrays, lists, handles,
mapping and figures (see that module), with z3fold's placement and its
compaction at free time.

Layout
------
64 chunks of 64 bytes (NCHUNKS_ORDER 6), the header first.  FIRST is
left-justified after the header, LAST right-justified at the end of the page, and
MIDDLE starts wherever it was put, at first placement right after FIRST::

    chunk 0   1 ....... f   ...   m0 ....... m0+m-1   ...   64-l ...... 63
        [hdr][ FIRST (f) ]  free  [ MIDDLE (m) ]      free  [ LAST (l) ]

An object takes ceil(size / 64) chunks.  One larger than PAGE_SIZE -
ZHDR_SIZE_ALIGNED - CHUNK_SIZE (3968 bytes) is stored alone in a HEADLESS page:
the whole page, no header, as the kernel does (``huge_class_size`` 3969).

The header is one chunk here, as the brief for this module asks and as
z3fold.c's own comment says ("NCHUNKS will be calculated to 63"); that held for
z3fold as first merged, whose header was 40 bytes.  The header of the last
mainline z3fold (list links, lock, kref, a work_struct, slots and pool pointers,
cpu, chunk counts) is 88 bytes on 64-bit, which round_up(..., CHUNK_SIZE) makes
128: two chunks, NCHUNKS 62 and HEADLESS above 3904 bytes.  ZHDR_CHUNKS below is
the one constant to change for that geometry.

Policy (the last mainline z3fold)
---------------------------------
Free space: without a middle buddy, NCHUNKS - first - last (one run); with one,
the larger of the run before it (if FIRST is free) and the run after it (if
LAST is free): ``num_free_chunks``.  A page with any free buddy sits on
``unbuddied[free chunks]``; a page with all three is on no list.

malloc of c chunks takes the head of the first non-empty ``unbuddied[c..62]``
(else a new page, object in FIRST) and picks the buddy as ``get_free_buddy``:
with a middle buddy, FIRST if free and c fits before the middle, else LAST;
without one, FIRST if free, else LAST if free, else MIDDLE, placed right after
FIRST.

free clears the buddy; an empty page goes back to the arena at once.  Otherwise
the page is compacted (``do_compact_page``), which the kernel runs from a
per-CPU workqueue soon after the free and zswapd runs at once:

1. A page left with a single buddy, none of whose objects came from another page
   ("foreign handles") and none mapped, moves that object into another
   unbuddied page with room (``compact_single_buddy``; it never takes a new
   page), and the emptied page is released.  The object is foreign in its new
   page, so it is not moved again until freed; this keeps objects from
   bouncing.
2. Otherwise, unless the middle object is mapped, ``z3fold_compact_page``: a
   lone middle object moves to the start and becomes FIRST (the kernel bumps
   ``first_num`` so its handle decodes as FIRST; zswapd rewrites the location).
   Beside a FIRST only, the middle slides down against it; beside a LAST only,
   up against it; either only when that closes a gap of at least BIG_CHUNK_GAP
   (3) chunks, since the move is a copy.  Either slide joins the page's free
   space into one run.  Then the page goes back on the list for its free chunks.

Handles survive every move: a handle names a slot of the handle table, and a
move rewrites the slot's location (the kernel rewrites the handle's word in its
``z3fold_buddy_slots``).  ``pages_compacted_at_free`` counts pages released by
step 1 during ``free``.

compact(): the kernel offers no pool-wide compaction for z3fold, only the
per-page work above.  zswapd's ``compact()`` replays ``do_compact_page`` over
every page on the unbuddied lists, emptiest first, which finishes what a free
could not do at the time (no page had room then, or the page was mapped), and
returns the pages released (also added to ``pages_compacted``).

Figures: as zbud's, with three objects per buddy page: one of three is the "40"
step, two "70", three "100".

Deviations from mm/z3fold.c: compaction runs inside ``free`` instead of on a
workqueue; one set of unbuddied lists instead of one per CPU (whose "exact fit on
another CPU" fallback is then moot); no stale-page list, LRU, eviction or page
migration; metadata in arrays outside the page; the header size discussed above.
"""

from __future__ import annotations

from array import array
from dataclasses import replace
from typing import ClassVar

from allocator.arena import PAGE_SHIFT
from allocator.buddy import BUDDY_BITS, CHUNK_SHIFT, FIRST, LAST, MIDDLE, TOTAL_CHUNKS
from allocator.invariants import BuddyPoolView
from allocator.zbud import ZbudPool

__all__ = ["BIG_CHUNK_GAP", "MAX_BUDDY_SIZE", "NCHUNKS", "ZHDR_CHUNKS", "Z3foldPool"]

# Header chunks (see the module docstring: 1 as first merged, 2 in the last
# mainline on 64-bit).
ZHDR_CHUNKS = 1
NCHUNKS = TOTAL_CHUNKS - ZHDR_CHUNKS
MAX_BUDDY_SIZE = (TOTAL_CHUNKS - ZHDR_CHUNKS - 1) << CHUNK_SHIFT
# Moving a middle object costs a copy: only do it to merge at least this many
# chunks of free space.
BIG_CHUNK_GAP = 3

_BUDDIES = (FIRST, MIDDLE, LAST)


class Z3foldPool(ZbudPool):
    """The kernel's z3fold: objects of 1..4096 bytes, at most three per page.

    Args: as :class:`~allocator.zbud.ZbudPool`.

    Attributes:
        pages_compacted_at_free: pages released by moving a lone object into
            another page during ``free`` (``compact()`` counts its own in
            ``pages_compacted``).
    """

    buddies_per_page: ClassVar[int] = 3
    hdr_chunks: ClassVar[int] = ZHDR_CHUNKS
    nchunks: ClassVar[int] = NCHUNKS
    max_buddy_size: ClassVar[int] = MAX_BUDDY_SIZE

    def _init_extra(self) -> None:
        # Per buddy, by location: 1 if its object was moved here from another
        # page (a foreign handle, in the kernel's words).
        self._foreign = array("B")
        self.pages_compacted_at_free = 0

    def _grow(self, pfn: int) -> None:
        have = len(self._inuse)
        super()._grow(pfn)
        self._foreign.extend(bytes((len(self._inuse) - have) << BUDDY_BITS))

    # -- placement -------------------------------------------------------------------

    def _num_free_chunks(self, pfn: int) -> int:
        base = pfn << BUDDY_BITS
        c = self._chunks
        middle = c[base | MIDDLE]
        if not middle:
            return self.nchunks - c[base | FIRST] - c[base | LAST]
        start = self._start[base | MIDDLE]
        before = 0 if c[base | FIRST] else start - self.hdr_chunks
        after = 0 if c[base | LAST] else TOTAL_CHUNKS - start - middle
        return max(before, after)

    def _free_buddy(self, pfn: int, chunks: int) -> int:
        base = pfn << BUDDY_BITS
        c = self._chunks
        if c[base | MIDDLE]:
            if not c[base | FIRST] and chunks <= self._start[base | MIDDLE] - self.hdr_chunks:
                return FIRST
            if not c[base | LAST]:
                return LAST
        elif not c[base | FIRST]:
            return FIRST
        elif not c[base | LAST]:
            return LAST
        else:
            return MIDDLE
        # The page's list promised room that no buddy offers (the kernel WARNs).
        raise AssertionError(f"unbuddied page {pfn} has no buddy for {chunks} chunks")

    def _drop(self, loc: int) -> None:
        self._foreign[loc] = 0
        super()._drop(loc)

    # -- compaction ------------------------------------------------------------------

    def _after_free(self, pfn: int) -> None:
        if self._compact_page(pfn):
            self.pages_compacted_at_free += 1

    def _page_mapped(self, pfn: int) -> bool:
        if not self._mapped:
            return False
        base = pfn << BUDDY_BITS
        return any(
            self._chunks[base | b] and self._owner[base | b] in self._mapped for b in _BUDDIES
        )

    def _compact_page(self, pfn: int) -> bool:
        """do_compact_page on a page with objects, on no list; True if released."""
        base = pfn << BUDDY_BITS
        foreign = self._foreign
        if (
            self._inuse[pfn] == 1
            and not (foreign[base | FIRST] or foreign[base | MIDDLE] or foreign[base | LAST])
            and not self._page_mapped(pfn)
            and self._compact_single_buddy(pfn)
        ):
            return True
        self._compact_in_page(pfn)
        self._add_to_unbuddied(pfn)
        return False

    def _compact_single_buddy(self, pfn: int) -> bool:
        """Move the page's only object into another unbuddied page; release this one."""
        base = pfn << BUDDY_BITS
        c = self._chunks
        src = next(base | b for b in _BUDDIES if c[base | b])
        chunks = c[src]
        dst_pfn = self._find_unbuddied(chunks)
        if dst_pfn < 0:
            return False
        self._unlink(dst_pfn)
        owner = self._owner[src]
        dst = self._take(dst_pfn, self._free_buddy(dst_pfn, chunks), chunks, owner)
        self._foreign[dst] = 1
        n = chunks << CHUNK_SHIFT
        to = (dst_pfn << PAGE_SHIFT) + (self._start[dst] << CHUNK_SHIFT)
        frm = (pfn << PAGE_SHIFT) + (self._start[src] << CHUNK_SHIFT)
        self._buf[to : to + n] = self._buf[frm : frm + n]
        self._handles.relocate(owner, dst)
        self._add_to_unbuddied(dst_pfn)
        self._drop(src)
        self._release_page(pfn)
        return True

    def _compact_in_page(self, pfn: int) -> None:
        """z3fold_compact_page: slide the middle object to merge free runs."""
        base = pfn << BUDDY_BITS
        c, s = self._chunks, self._start
        mid = base | MIDDLE
        middle = c[mid]
        if not middle or (self._mapped and self._owner[mid] in self._mapped):
            return
        first, last, start = c[base | FIRST], c[base | LAST], s[mid]
        if not first and not last:
            # A lone middle object becomes the first buddy.
            self._move_middle(pfn, self.hdr_chunks)
            fst = base | FIRST
            c[fst], s[fst] = middle, self.hdr_chunks
            self._owner[fst], self._foreign[fst] = self._owner[mid], self._foreign[mid]
            c[mid] = s[mid] = self._owner[mid] = self._foreign[mid] = 0
            self._handles.relocate(self._owner[fst], fst)
        elif first and not last and start - (first + self.hdr_chunks) >= BIG_CHUNK_GAP:
            self._move_middle(pfn, first + self.hdr_chunks)
        elif last and not first and TOTAL_CHUNKS - (last + start + middle) >= BIG_CHUNK_GAP:
            self._move_middle(pfn, TOTAL_CHUNKS - last - middle)

    def _move_middle(self, pfn: int, to_chunk: int) -> None:
        """Move the middle object's chunks to start at ``to_chunk`` (memmove)."""
        mid = pfn << BUDDY_BITS | MIDDLE
        page = pfn << PAGE_SHIFT
        n = self._chunks[mid] << CHUNK_SHIFT
        frm = page + (self._start[mid] << CHUNK_SHIFT)
        to = page + (to_chunk << CHUNK_SHIFT)
        # memoryview slice assignment copies as memmove does: overlap is safe.
        self._buf[to : to + n] = self._buf[frm : frm + n]
        self._start[mid] = to_chunk

    def compact(self) -> int:
        """Run the per-page compaction over every unbuddied page, emptiest first.

        Returns:
            pages released (also added to ``pages_compacted``).
        """
        with self._lock:
            pages: list[int] = []
            for i in range(self.nchunks - 1, -1, -1):
                pfn = self._heads[i]
                while pfn >= 0:
                    pages.append(pfn)
                    pfn = self._next[pfn]
            released = 0
            for pfn in pages:
                # A page filled up by an earlier move is off the lists: skip it.
                if self._list[pfn] >= 0:
                    self._unlink(pfn)
                    if self._compact_page(pfn):
                        released += 1
            self.pages_compacted += released
            return released

    def _view(self) -> BuddyPoolView:
        return replace(super()._view(), foreign=self._foreign)
