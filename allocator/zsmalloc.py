"""ZsPool: a zsmalloc-style allocator over real pages.

See allocator/README.md for the design in prose.  In brief:

* Objects are rounded up to a size class (:mod:`allocator.classes`) and packed
  back to back in *zspages*: 1..chain_size pages from the arena, linked in a
  fixed order but not contiguous in memory.  An object may straddle the boundary
  between two pages of its zspage.
* A free slot's first 64-bit word is the free-list link (``(next + 1) << 1``,
  0 ending the list); an
  allocated slot's first word is its header, ``handle_slot << 1 | 1``, which
  tells compaction who owns the object (the kernel's OBJ_ALLOCATED_TAG).  Huge
  classes, and tables built without a header, keep the owner in a small per-zspage
  array instead.
* A handle names a slot of the handle table (:mod:`allocator.handles`), which
  holds the object's location ``zspage_id << LOC_SHIFT | obj_idx``.
* Every zspage sits on one of its class's 12 fullness lists; allocation takes
  the head of the fullest non-full list.  Emptied zspages are released at once
  (as the kernel does) or kept, up to ``empty_cache`` per class, ready for reuse.

Locking: one re-entrant lock per pool, held by every public operation and for the
whole life of an open mapping, so compaction never moves a mapped object.
"""

from __future__ import annotations

import threading
from array import array

from allocator.arena import PAGE_SHIFT, PAGE_SIZE, PageArena
from allocator.base import PoolBase, arena_capacity
from allocator.budget import PageBudget
from allocator.classes import ClassTable
from allocator.errors import AllocatorError
from allocator.handles import SLOT_MASK, HandleTable
from allocator.invariants import ZsPoolView, check_zspool
from allocator.mapping import MapMode, ObjectMapping
from allocator.options import check_zspool_options
from allocator.stats import ClassStats, Fullness, PoolStats
from allocator.zspage import (
    EMPTY,
    FULL,
    HUGE,
    IDX_MASK,
    LOC_SHIFT,
    SizeClass,
    ZsPage,
    huge_location,
    huge_to_location,
    insert_zspage,
    location_to_obj,
    remove_zspage,
    slot_address,
)

__all__ = ["ZsPool"]


class ZsPool(PoolBase):
    """A zsmalloc-style pool of objects of 1..4096 bytes.

    Args:
        chain_size: longest zspage in pages (kernel default 8; 4..16, or 1..16).
        max_pages: page budget; past it ``malloc`` raises PoolFullError.
        empty_cache: emptied zspages kept per class, ready for reuse (0: release
            at once, as the kernel does).
        short_zspages: when the budget cannot supply a whole zspage, build a
            shorter one for the class rather than fail.
        header: in-object header bytes, 8 (kernel) or 0.
        class_step: distance between class sizes (kernel: 16).
        class_sizes: explicit class sizes (header included) instead of a step.
        merge_classes: merge classes of equal shape (kernel: yes).
        seed: seed for handle generations (default: unpredictable).
        arena_pages: address space reserved for pages (default: max_pages, or
            64 GiB without it); the pool never holds more pages than this.
        budget: a :class:`PageBudget` shared with other pools, charged for
            every page taken (past it ``malloc`` raises BudgetExceededError).
    """

    def __init__(
        self,
        chain_size: int = 8,
        max_pages: int | None = None,
        *,
        empty_cache: int = 0,
        short_zspages: bool = False,
        header: int = 8,
        class_step: int = 16,
        class_sizes: list[int] | None = None,
        merge_classes: bool = True,
        seed: int | None = None,
        arena_pages: int | None = None,
        budget: PageBudget | None = None,
    ) -> None:
        check_zspool_options(
            chain_size=chain_size,
            max_pages=max_pages,
            empty_cache=empty_cache,
            short_zspages=short_zspages,
            header=header,
            class_step=class_step,
            class_sizes=class_sizes,
            merge_classes=merge_classes,
            seed=seed,
        )
        self.table = ClassTable.build(
            chain_size=chain_size,
            step=class_step,
            header=header,
            sizes=class_sizes,
            merge=merge_classes,
        )
        self.max_pages = max_pages
        self.empty_cache = empty_cache
        self.short_zspages = short_zspages
        self.classes = tuple(
            SizeClass(spec, header, n) for n, spec in enumerate(self.table.classes)
        )
        # Object length -> class, the table's lookup resolved to objects.
        self._class_of = [self.classes[i] for i in self.table.lookup]
        self._arena = PageArena(arena_capacity(max_pages, arena_pages))
        # The pages malloc may hold: the budget, capped by the arena itself, so
        # running out of either is the same clean PoolFullError.
        own = max_pages if max_pages is not None else self._arena.capacity
        self._budget = min(own, self._arena.capacity)
        self._shared = budget
        self._buf = self._arena.buf
        self._rbuf = self._buf.toreadonly()
        self._words = self._arena.words
        self._handles = HandleTable(seed)
        self._halloc = self._handles.alloc
        self._zspages: list[ZsPage | None] = []
        self._free_zids: list[int] = []
        self._lock = threading.RLock()
        self._mapped: dict[int, int] = {}
        self._span_buf: bytearray | None = bytearray(PAGE_SIZE)
        self.pages_max = 0
        self.pages_compacted = 0
        self.alloc_failures = 0

    # -- properties -------------------------------------------------------------

    @property
    def chain_size(self) -> int:
        return self.table.chain_size

    @property
    def huge_class_size(self) -> int:
        """Smallest object length stored in a huge (one object per page) class."""
        return self.table.huge_class_size

    def capacity(self, size: int) -> int:
        """Bytes a mapping of an object of ``size`` bytes offers (its slot's data)."""
        return self._class_of[self._check_size(size)].capacity

    # -- zspage life ---------------------------------------------------------------

    def _new_zspage(self, cls: SizeClass) -> ZsPage:
        """Build a zspage for ``cls`` from fresh pages; raises PoolFullError."""
        self._handles.check_room()
        npages = cls.pages_per_zspage
        objs = cls.objs_per_zspage
        room = self._room()
        if room < npages:
            room += self._shrink_empty_cache(npages - room)
        if room < npages:
            # Shorter zspage: the review's idea of using what is left rather
            # than failing outright.
            if self.short_zspages and room > 0 and room * PAGE_SIZE >= cls.size:
                npages = room
                objs = room * PAGE_SIZE // cls.size
            else:
                raise self._refusal(npages, f"a zspage of class {cls.size}")
        self._charge(npages, f"a zspage of class {cls.size}")
        # PFNs in a 4-byte array: a tuple would cost a 28-byte int object per page.
        pages = array("I", [self._arena.alloc_page() for _ in range(npages)])
        if self._free_zids:
            zid = self._free_zids.pop()
        else:
            zid = len(self._zspages)
            self._zspages.append(None)
        z = ZsPage(zid, cls, pages, objs)
        self._zspages[zid] = z
        # Chain every slot into the free list, in order, inside the slots.
        words = self._words
        for i in range(objs):
            words[slot_address(z, i) >> 3] = (i + 2 if i + 1 < objs else 0) << 1
        cls.objs_allocated += objs
        cls.pages_used += npages
        if self._arena.pages_held > self.pages_max:
            self.pages_max = self._arena.pages_held
        insert_zspage(cls, z, EMPTY)
        cls.empties += 1
        return z

    def _free_zspage(self, cls: SizeClass, z: ZsPage) -> int:
        """Release an empty zspage that is on no list; returns pages released."""
        self._arena.free_pages(z.pages)
        self._uncharge(len(z.pages))
        cls.objs_allocated -= z.objs
        cls.pages_used -= len(z.pages)
        self._zspages[z.zid] = None
        self._free_zids.append(z.zid)
        return len(z.pages)

    def _shrink_empty_cache(self, want: int) -> int:
        """Release cached empty zspages until ``want`` pages are freed."""
        freed = 0
        for cls in self.classes:
            while cls.empties and freed < want:
                z = cls.heads[EMPTY]
                assert z is not None
                remove_zspage(cls, z)
                cls.empties -= 1
                freed += self._free_zspage(cls, z)
            if freed >= want:
                break
        return freed

    def _regroup(self, cls: SizeClass, z: ZsPage, group: int) -> None:
        """Move ``z`` to ``group``, releasing or caching it if it went empty."""
        if z.fullness == EMPTY:
            cls.empties -= 1
        remove_zspage(cls, z)
        if group == EMPTY:
            if cls.empties >= self.empty_cache:
                self._free_zspage(cls, z)
                return
            cls.empties += 1
        insert_zspage(cls, z, group)

    # -- malloc / free -------------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Allocate an object of ``size`` bytes and return its handle.

        The object's contents are undefined until written.

        Raises:
            ValueError: size outside 1..4096.
            PoolFullError: the page budget cannot supply a zspage.
        """
        if type(size) is not int or not 0 < size <= PAGE_SIZE:
            self._check_size(size)
        return self._alloc(size, None)

    def store(self, data: bytes | bytearray | memoryview) -> int:
        """``malloc(len(data))`` and ``obj_write`` in one step: one lock, one lookup.

        The page store's hot path (zs_malloc then zs_obj_write, fused).

        Raises:
            ValueError: data empty or longer than 4096 bytes.
            PoolFullError: the page budget cannot supply a zspage.
        """
        n = len(data)
        if not 0 < n <= PAGE_SIZE:
            self._check_size(n)
        return self._alloc(n, data)

    def _alloc(self, size: int, data: bytes | bytearray | memoryview | None) -> int:
        cls = self._class_of[size]
        if cls.huge:
            handle = self._malloc_huge(cls)
            if data is not None:
                self.obj_write(handle, data)
            return handle
        with self._lock:
            nonfull = cls.nonfull
            if nonfull:
                z = cls.heads[nonfull.bit_length() - 1]
                assert z is not None
            else:
                z = self._new_zspage(cls)
            idx = z.freeobj
            # location_to_obj and slot_address, written out: this is the hot path.
            handle = self._halloc(z.zid << LOC_SHIFT | idx)
            page = cls.slot_page[idx]
            addr = (z.pages[page] << PAGE_SHIFT) + cls.slot_off[idx]
            words = self._words
            z.freeobj = (words[addr >> 3] >> 1) - 1
            if z.owners is None:
                words[addr >> 3] = (handle & SLOT_MASK) << 1 | 1
            else:
                z.owners[idx] = handle & SLOT_MASK
            inuse = z.inuse = z.inuse + 1
            cls.objs_used += 1
            group = z.gtab[inuse]
            if group != z.fullness:
                if z.fullness == EMPTY:
                    cls.empties -= 1
                remove_zspage(cls, z)
                insert_zspage(cls, z, group)
            if data is not None:
                addr += cls.header
                split = cls.slot_split[idx]
                buf = self._buf
                if size <= split:
                    buf[addr : addr + size] = data
                else:
                    second = z.pages[page + 1] << PAGE_SHIFT
                    buf[addr : addr + split] = data[:split]
                    buf[second : second + size - split] = data[split:]
            return handle

    def free(self, handle: int) -> None:
        """Free the object of ``handle``; the handle is invalid from now on.

        Raises:
            InvalidHandleError: freed, never issued, or not a handle.
            AllocatorError: the object is mapped right now.
        """
        with self._lock:
            if self._mapped and self._handles.slot(handle) in self._mapped:
                raise AllocatorError("cannot free an object while it is mapped")
            loc = self._handles.take(handle)
            if loc & HUGE:
                self._free_huge(loc)
                return
            # obj_to_location, slot_address and obj_free, inline: this is the hot path.
            z = self._zspages[loc >> LOC_SHIFT]
            assert z is not None
            cls = z.cls
            idx = loc & IDX_MASK
            word = ((z.pages[cls.slot_page[idx]] << PAGE_SHIFT) + cls.slot_off[idx]) >> 3
            self._words[word] = (z.freeobj + 1) << 1
            if z.owners is not None:
                z.owners[idx] = 0
            z.freeobj = idx
            inuse = z.inuse = z.inuse - 1
            cls.objs_used -= 1
            group = z.gtab[inuse]
            if group != z.fullness:
                self._regroup(cls, z, group)

    def _malloc_huge(self, cls: SizeClass) -> int:
        with self._lock:
            self._handles.check_room()
            if self._room() < 1 and not self._shrink_empty_cache(1):
                raise self._refusal(1, "a huge object")
            self._charge(1, "a huge object")
            pfn = self._arena.alloc_page()
            handle = self._handles.alloc(huge_location(cls.position, pfn))
            cls.objs_used += 1
            cls.objs_allocated += 1
            cls.pages_used += 1
            cls.counts[FULL] += 1
            if self._arena.pages_held > self.pages_max:
                self.pages_max = self._arena.pages_held
            return handle

    def _free_huge(self, loc: int) -> None:
        # Released at once, whatever empty_cache says: a one-page zspage is
        # as cheap to rebuild as to keep.
        position, pfn = huge_to_location(loc)
        cls = self.classes[position]
        self._arena.free_page(pfn)
        self._uncharge(1)
        cls.objs_used -= 1
        cls.objs_allocated -= 1
        cls.pages_used -= 1
        cls.counts[FULL] -= 1

    # -- object access -------------------------------------------------------------

    def _locate(self, handle: int) -> tuple[SizeClass, int, int, int]:
        """(class, data address, bytes before the page ends, address of the
        page a spanning object continues on or -1) of a live handle."""
        loc = self._handles.location(handle)
        if loc & HUGE:
            position, pfn = huge_to_location(loc)
            cls = self.classes[position]
            return cls, pfn << PAGE_SHIFT, cls.capacity, -1
        # obj_to_location and slot_address, written out: every load comes here.
        z = self._zspages[loc >> LOC_SHIFT]
        assert z is not None
        cls = z.cls
        idx = loc & IDX_MASK
        page = cls.slot_page[idx]
        addr = (z.pages[page] << PAGE_SHIFT) + cls.slot_off[idx] + cls.header
        split = cls.slot_split[idx]
        if split < cls.capacity:
            return cls, addr, split, z.pages[page + 1] << PAGE_SHIFT
        return cls, addr, split, -1

    def obj_write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the object, from its start (zs_obj_write).

        Raises:
            InvalidHandleError: not a live handle.
            ValueError: ``data`` is longer than the object's slot.
        """
        n = len(data)
        with self._lock:
            cls, addr, split, second = self._locate(handle)
            if n > cls.capacity:
                raise ValueError(f"{n} bytes do not fit a {cls.capacity}-byte slot")
            buf = self._buf
            if n <= split:
                buf[addr : addr + n] = data
            else:
                buf[addr : addr + split] = data[:split]
                buf[second : second + n - split] = data[split:]

    def obj_read(self, handle: int, size: int | None = None) -> bytes:
        """A copy of the object's first ``size`` bytes (default: its whole slot).

        Raises:
            InvalidHandleError: not a live handle.
            ValueError: ``size`` is larger than the object's slot.
        """
        with self._lock:
            cls, addr, split, second = self._locate(handle)
            n = cls.capacity if size is None else size
            if not 0 <= n <= cls.capacity:
                raise ValueError(f"cannot read {n} bytes of a {cls.capacity}-byte slot")
            buf = self._buf
            if n <= split:
                return buf[addr : addr + n].tobytes()
            return buf[addr : addr + split].tobytes() + buf[second : second + n - split].tobytes()

    def map(self, handle: int, mode: MapMode = MapMode.RW) -> ObjectMapping:
        """A context manager giving a view of the object (see ObjectMapping)."""
        return ObjectMapping(self, handle, mode)

    def _map_begin(self, m: ObjectMapping) -> memoryview:
        self._lock.acquire()
        try:
            cls, addr, split, second = self._locate(m.handle)
            # _locate validated the handle, so its slot bits are its slot.
            slot = m.slot = m.handle & SLOT_MASK
            m.second = second
            n = cls.capacity
            mode = m.mode
            if second < 0:
                view = (self._rbuf if mode is MapMode.RO else self._buf)[addr : addr + n]
            else:
                m.addr, m.split = addr, split
                spare, self._span_buf = self._span_buf, None
                view = memoryview(spare if spare is not None else bytearray(PAGE_SIZE))[:n]
                if mode is not MapMode.WO:
                    view[:split] = self._buf[addr : addr + split]
                    view[split:] = self._buf[second : second + n - split]
                if mode is MapMode.RO:
                    view = view.toreadonly()
            mapped = self._mapped
            mapped[slot] = mapped.get(slot, 0) + 1
            return view
        except BaseException:
            self._lock.release()
            raise

    def _map_end(self, m: ObjectMapping) -> None:
        try:
            view = m._close()
            mapped = self._mapped
            left = mapped[m.slot] - 1
            if left:
                mapped[m.slot] = left
            else:
                del mapped[m.slot]
            if m.second >= 0:
                # A spanning object: copy the assembled bytes back unless RO.
                if m.mode is not MapMode.RO:
                    buf, addr, split, second = self._buf, m.addr, m.split, m.second
                    buf[addr : addr + split] = view[:split]
                    buf[second : second + len(view) - split] = view[split:]
                spare = view.obj
                if isinstance(spare, bytearray):
                    self._span_buf = spare
            view.release()
        finally:
            self._lock.release()

    # -- compaction ----------------------------------------------------------------

    def compact(self) -> int:
        """Move objects from sparse zspages into dense ones; release what empties.

        Per class, largest first: the fullest non-full zspage receives objects
        from the emptiest until it is full or the source is empty, as the
        kernel's __zs_compact does.  Cached empty zspages are released too.
        Mapped objects pin the pool: compaction then does nothing.

        Returns:
            pages released (also added to ``pages_compacted``).
        """
        with self._lock:
            if self._mapped:
                return 0
            freed = self._shrink_empty_cache(1 << 62)
            for cls in reversed(self.classes):
                freed += self._compact_class(cls)
            self.pages_compacted += freed
            self._arena.flush()
            return freed

    @staticmethod
    def _freeable(cls: SizeClass) -> int:
        wasted = (cls.objs_allocated - cls.objs_used) // cls.objs_per_zspage
        return wasted * cls.pages_per_zspage

    def _isolate(self, cls: SizeClass, groups: range) -> ZsPage | None:
        for group in groups:
            z = cls.heads[group]
            if z is not None:
                remove_zspage(cls, z)
                return z
        return None

    def _putback(self, cls: SizeClass, z: ZsPage) -> None:
        group = z.gtab[z.inuse]
        insert_zspage(cls, z, group)
        if group == EMPTY:
            cls.empties += 1

    def _compact_class(self, cls: SizeClass) -> int:
        freed = 0
        fullest_first = range(Fullness.RATIO_99, Fullness.EMPTY, -1)
        emptiest_first = range(Fullness.RATIO_10, Fullness.FULL)
        dst: ZsPage | None = None
        while self._freeable(cls):
            if dst is None:
                dst = self._isolate(cls, fullest_first)
                if dst is None:
                    break
            src = self._isolate(cls, emptiest_first)
            if src is None:
                break
            self._migrate(cls, src, dst)
            if src.inuse == 0:
                freed += self._free_zspage(cls, src)
            else:
                self._putback(cls, src)
            if dst.inuse == dst.objs:
                self._putback(cls, dst)
                dst = None
        if dst is not None:
            self._putback(cls, dst)
        return freed

    def _migrate(self, cls: SizeClass, src: ZsPage, dst: ZsPage) -> None:
        """Move objects of ``src`` into ``dst``, in slot order, until either limit."""
        words = self._words
        buf = self._buf
        for idx in range(src.objs):
            word = slot_address(src, idx) >> 3
            if src.owners is None:
                head = words[word]
                if not head & 1:
                    continue
                owner = head >> 1
            else:
                owner = src.owners[idx]
                if not owner:
                    continue
            data = self._slot_bytes(src, idx)
            # obj_malloc on dst, keeping the same owner.
            didx = dst.freeobj
            dword = slot_address(dst, didx) >> 3
            dst.freeobj = (words[dword] >> 1) - 1
            if dst.owners is None:
                words[dword] = owner << 1 | 1
            else:
                dst.owners[didx] = owner
            dst.inuse += 1
            daddr = (dword << 3) + cls.header
            split = cls.slot_split[didx]
            buf[daddr : daddr + split] = data[:split]
            if split < cls.capacity:
                second = dst.pages[cls.slot_page[didx] + 1] << PAGE_SHIFT
                buf[second : second + cls.capacity - split] = data[split:]
            self._handles.relocate(owner, location_to_obj(dst.zid, didx))
            # obj_free on src; counters of the class do not change overall.
            words[word] = (src.freeobj + 1) << 1
            if src.owners is not None:
                src.owners[idx] = 0
            src.freeobj = idx
            src.inuse -= 1
            if dst.inuse == dst.objs or src.inuse == 0:
                break

    def _slot_bytes(self, z: ZsPage, idx: int) -> bytes:
        cls = z.cls
        addr = slot_address(z, idx) + cls.header
        split = cls.slot_split[idx]
        first = self._buf[addr : addr + split].tobytes()
        if split == cls.capacity:
            return first
        second = z.pages[cls.slot_page[idx] + 1] << PAGE_SHIFT
        return first + self._buf[second : second + cls.capacity - split].tobytes()

    # -- figures -------------------------------------------------------------------

    def class_stats(self) -> list[ClassStats]:
        """One row per distinct class, the kernel's debugfs ``classes`` columns."""
        with self._lock:
            return [
                ClassStats(
                    index=cls.index,
                    size=cls.size,
                    pages_per_zspage=cls.pages_per_zspage,
                    objs_per_zspage=cls.objs_per_zspage,
                    zspages=tuple(cls.counts),
                    objs_allocated=cls.objs_allocated,
                    objs_used=cls.objs_used,
                    pages_used=cls.pages_used,
                    freeable=self._freeable(cls),
                )
                for cls in self.classes
            ]

    def stats(self) -> PoolStats:
        """The pool's summary figures."""
        with self._lock:
            return PoolStats(
                pages=self._arena.pages_held,
                pages_max=self.pages_max,
                max_pages=self.max_pages,
                objs_used=self._handles.live,
                objs_allocated=sum(c.objs_allocated for c in self.classes),
                zspages=len(self._zspages)
                - len(self._free_zids)
                + sum(c.objs_used for c in self.classes if c.huge),
                pages_compacted=self.pages_compacted,
                alloc_failures=self.alloc_failures,
                handle_table_bytes=self._handles.nbytes,
            )

    def check_invariants(self) -> None:
        """Walk every structure and raise AssertionError at the first inconsistency.

        O(pool size): for tests and debugging, not for production paths.
        """
        with self._lock:
            check_zspool(
                ZsPoolView(
                    classes=self.classes,
                    zspages=self._zspages,
                    words=self._words,
                    handles=self._handles,
                    pages_held=self._arena.pages_held,
                    empty_cache=self.empty_cache,
                    max_pages=self.max_pages,
                    held_over_budget=self._held_over_budget,
                )
            )
