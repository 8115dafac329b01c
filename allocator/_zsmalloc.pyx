# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The compiled twin of :mod:`allocator.zsmalloc`: the same pool, in C structures.

CPython pairs ``heapq`` with ``_heapq``; this module is zswapd's ``_zsmalloc``.
The pure-Python ``ZsPool`` (zsmalloc.py, zspage.py, handles.py) stays the
reference and the documentation of the design (allocator/README.md): this file
follows it step by step, and tests/allocator/test_accelerated.py drives both
with the same random operations and requires the same handles, placement,
class tables, compaction, errors and bytes.  Where the two differ, this one is
wrong.

What moves to C is what runs per object: the size-class table, the zspages and
their fullness lists (arrays of structs linked by zspage id instead of Python
objects), the handle table (one array of 13-byte records: what the reference
keeps in two arrays of 8-byte words, a lookup's one place instead of two), and
the copies in and out of the arena.  What runs per zspage stays Python, shared with the reference: the page
arena (:class:`~allocator.arena.PageArena`, so PFNs are handed out in the same
order), the budgets (:class:`~allocator.base.PoolBase`), the generations'
random source (:func:`~allocator.handles.generation_source`), mapping objects.

Memory safety: every handle a caller gives is checked (an int, a slot inside
the table, the slot's generation, a live location) before any address is formed
from it; sizes are checked against the class before a copy; the arena's bytes
are reached only at addresses built from the pool's own tables.

Locking is the reference's: one re-entrant lock per pool, taken by every public
method and held by an open mapping.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.long cimport PyLong_Check
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_get_thread_ident,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy

from array import array

from allocator.arena import PageArena
from allocator.base import PoolBase, arena_capacity
from allocator.classes import ClassTable
from allocator.errors import AllocatorError, HandleTableFullError, InvalidHandleError
from allocator.handles import MAX_SLOTS, generation_source
from allocator.invariants import ZsPoolView, check_zspool
from allocator.mapping import MapMode, ObjectMapping
from allocator.options import check_zspool_options
from allocator.stats import ClassStats, PoolStats
from allocator.zspage import SizeClass, ZsPage

__all__ = ["ZsPool"]


# Declared here without an exception clause: an overflow is not an error to
# raise but a value to refuse, after PyErr_Clear, with the reference's error.
cdef extern from "Python.h":
    unsigned long long PyLong_AsUnsignedLongLong(object o)
    Py_ssize_t PyLong_AsSsize_t(object o)


# The reference's constants (arena.py, zspage.py, handles.py), as C values.
cdef enum:
    PAGE_SHIFT = 12
    PAGE_SIZE = 4096
    LOC_SHIFT = 12
    IDX_MASK = 4095
    N_GROUPS = 12
    EMPTY = 0
    RATIO_10 = 1
    RATIO_99 = 10
    FULL = 11
    MAX_CHAIN = 16
    NIL = -1
    SLOT_BITS = 24

cdef int64_t HUGE = (<int64_t>1) << 52
cdef int HUGE_CLASS_SHIFT = 32
cdef int64_t PFN_MASK = ((<int64_t>1) << 32) - 1
cdef uint64_t SLOT_MASK = ((<uint64_t>1) << 24) - 1
cdef uint64_t GEN_MASK = ((<uint64_t>1) << 40) - 1
cdef uint32_t NONFULL_BITS = (1 << FULL) - 1


cdef struct Klass:
    # SizeClass of zspage.py: shape, lists (heads are zspage ids), counters.
    int32_t position
    int32_t index
    int32_t size
    int32_t capacity
    int32_t header
    int32_t pages_per_zspage
    int32_t objs_per_zspage
    bint huge
    int32_t heads[N_GROUPS]
    int64_t counts[N_GROUPS]
    uint32_t nonfull
    int64_t empties
    int64_t objs_allocated
    int64_t objs_used
    int64_t pages_used
    uint16_t *slot_page
    uint16_t *slot_off
    uint16_t *slot_split
    uint8_t *gtab


cdef struct Zspage:
    # ZsPage of zspage.py; cls is -1 while the id is free.  A zspage is kept
    # for every ~10 objects: its record is sized for the pool's longest zspage,
    # not for MAX_CHAIN (pages[] runs on past its declared one entry, to the
    # next record, _zstride bytes on), and its small fields are small.  Its
    # fullness group comes from its class's table (_group), a short zspage's
    # computed: no table of its own.
    uint32_t *owners
    int32_t freeobj
    int32_t inuse
    int32_t objs
    int32_t prev
    int32_t next
    int16_t cls
    uint8_t fullness
    uint8_t npages
    uint32_t pages[1]


cdef packed struct Hslot:
    # One slot of the handle table: handles.py's two arrays as one record, so
    # a lookup touches one place, and the 40-bit generation in 5 bytes, not 8:
    # 13 bytes a slot.
    int64_t loc
    uint32_t gen_lo
    uint8_t gen_hi


cdef inline uint64_t slot_gen(Hslot *h) noexcept nogil:
    return (<uint64_t>h.gen_hi) << 32 | h.gen_lo


cdef inline void set_slot_gen(Hslot *h, uint64_t g) noexcept nogil:
    h.gen_lo = <uint32_t>g
    h.gen_hi = <uint8_t>(g >> 32)


cdef inline int fullness_group(int inuse, int objs) noexcept nogil:
    # stats.fullness_group, in C.
    if inuse == 0:
        return EMPTY
    if inuse == objs:
        return FULL
    return 100 * inuse // objs // 10 + 1


cdef uint8_t *group_table(int objs) noexcept nogil:
    cdef uint8_t *t = <uint8_t *>malloc(objs + 1)
    cdef int n
    if t != NULL:
        for n in range(objs + 1):
            t[n] = <uint8_t>fullness_group(n, objs)
    return t


cdef inline int highest_bit(uint32_t x) noexcept nogil:
    cdef int b = 0
    while x > 1:
        x >>= 1
        b += 1
    return b


cdef class PoolLock:
    """A re-entrant lock, as the reference's ``threading.RLock``, whose
    uncontended acquire and release cost no Python call (two per operation
    were a tenth of a compiled malloc).  Waiting releases the GIL."""

    cdef PyThread_type_lock _mutex
    cdef unsigned long _owner
    cdef int _depth

    def __cinit__(self):
        self._mutex = PyThread_allocate_lock()
        if self._mutex == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self._mutex != NULL:
            PyThread_free_lock(self._mutex)

    cdef inline int enter(self) except -1:
        cdef unsigned long me = <unsigned long>PyThread_get_thread_ident()
        if self._depth and self._owner == me:
            self._depth += 1
            return 0
        if not PyThread_acquire_lock(self._mutex, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._mutex, WAIT_LOCK)
        self._owner = me
        self._depth = 1
        return 0

    cdef inline void exit(self) noexcept:
        # Only ever called by the owner, after its enter().
        self._depth -= 1
        if self._depth == 0:
            self._owner = 0
            PyThread_release_lock(self._mutex)

    def acquire(self):
        self.enter()
        return True

    def release(self):
        if not self._depth or self._owner != <unsigned long>PyThread_get_thread_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self.exit()

    def __enter__(self):
        self.enter()
        return self

    def __exit__(self, *exc):
        self.release()


cdef class ZsPoolCore:
    """The C state and per-object paths of the compiled ZsPool (see ZsPool)."""

    cdef Klass *_cls
    cdef Py_ssize_t _ncls
    cdef int32_t _class_of[PAGE_SIZE + 1]
    cdef Zspage *_zs
    cdef Py_ssize_t _zstride  # bytes from one zspage record to the next
    cdef Py_ssize_t _nz
    cdef Py_ssize_t _zcap
    cdef int32_t *_free_zids
    cdef Py_ssize_t _nfree_zids
    # The handle table (handles.py): locations, generations, the free chain.
    cdef Hslot *_h
    cdef Py_ssize_t _hlen
    cdef Py_ssize_t _hcap
    cdef int64_t _hfree
    cdef int64_t _live
    cdef Py_ssize_t _max_slots
    cdef uint64_t *_rnd
    cdef Py_ssize_t _nrnd
    cdef object _refill
    # The arena's bytes, held as a buffer for the pool's life.
    cdef Py_buffer _view
    cdef bint _have_view
    cdef unsigned char *_base
    cdef PoolLock _lk
    cdef object _check_classes

    cdef readonly object table
    cdef public object _arena
    cdef public object _buf
    cdef public object _rbuf
    cdef public object _shared
    cdef public object _lock
    cdef public dict _mapped
    cdef public object _span_buf
    cdef public object max_pages
    cdef public int64_t _budget
    cdef public int64_t pages_max
    cdef public int64_t pages_compacted
    cdef public int64_t alloc_failures
    cdef public Py_ssize_t empty_cache
    cdef public bint short_zspages

    def __cinit__(self, *args, **kwargs):
        self._cls = NULL
        self._zs = NULL
        self._free_zids = NULL
        self._h = NULL
        self._rnd = NULL
        self._have_view = False

    def __init__(
        self,
        chain_size=8,
        max_pages=None,
        *,
        empty_cache=0,
        short_zspages=False,
        header=8,
        class_step=16,
        class_sizes=None,
        merge_classes=True,
        seed=None,
        arena_pages=None,
        budget=None,
    ):
        if self._cls != NULL:
            raise RuntimeError("ZsPool is initialised once")
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
        self._build_classes(header)
        self._arena = PageArena(arena_capacity(max_pages, arena_pages))
        own = max_pages if max_pages is not None else self._arena.capacity
        self._budget = min(own, self._arena.capacity)
        self._shared = budget
        self._buf = self._arena.buf
        self._rbuf = self._buf.toreadonly()
        # The buffer comes from the mapping itself, not from the memoryview
        # ``_buf``: the cyclic collector clears a memoryview that is in a
        # cycle, and one with an export refuses (BufferError), leaving the
        # export to be released on freed state (a crash).  An mmap is never
        # cleared, and the reference the buffer keeps holds the mapping alive.
        PyObject_GetBuffer(self._arena._map, &self._view, PyBUF_WRITABLE)
        self._have_view = True
        self._base = <unsigned char *>self._view.buf
        # The handle table: slot 0 is never issued (it ends the free chain).
        self._hcap = 1024
        self._h = <Hslot *>malloc(self._hcap * sizeof(Hslot))
        if self._h == NULL:
            raise MemoryError()
        self._h[0].loc = 0
        set_slot_gen(&self._h[0], 0)
        self._hlen = 1
        self._hfree = 0
        self._live = 0
        self._max_slots = MAX_SLOTS
        self._refill = generation_source(seed)
        self._refill_random()
        self._lk = PoolLock()
        self._lock = self._lk
        self._mapped = {}
        self._span_buf = bytearray(PAGE_SIZE)
        self.pages_max = 0
        self.pages_compacted = 0
        self.alloc_failures = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._zs != NULL:
            for i in range(self._nz):
                self._clear_zspage(self._z(i))
            free(self._zs)
        if self._cls != NULL:
            for i in range(self._ncls):
                free(self._cls[i].slot_page)
                free(self._cls[i].slot_off)
                free(self._cls[i].slot_split)
                free(self._cls[i].gtab)
            free(self._cls)
        free(self._free_zids)
        free(self._h)
        free(self._rnd)
        if self._have_view:
            PyBuffer_Release(&self._view)
            self._have_view = False

    cdef void _clear_zspage(self, Zspage *z) noexcept:
        if z.cls >= 0:
            free(z.owners)
        z.owners = NULL
        z.cls = -1

    cdef _build_classes(self, int header):
        cdef Klass *k
        cdef Py_ssize_t n, i, head
        cdef Zspage probe
        cdef int64_t off
        specs = self.table.classes
        self._ncls = len(specs)
        self._cls = <Klass *>calloc(self._ncls, sizeof(Klass))
        if self._cls == NULL:
            raise MemoryError()
        for n, spec in enumerate(specs):
            k = &self._cls[n]
            k.position = n
            k.index = spec.index
            k.size = spec.size
            k.pages_per_zspage = spec.pages_per_zspage
            k.objs_per_zspage = spec.objs_per_zspage
            k.huge = spec.huge
            # Huge objects fill their page: the owner lives beside the zspage.
            k.header = 0 if k.huge else header
            k.capacity = k.size - k.header
            for i in range(N_GROUPS):
                k.heads[i] = NIL
            k.slot_page = <uint16_t *>malloc(k.objs_per_zspage * sizeof(uint16_t))
            k.slot_off = <uint16_t *>malloc(k.objs_per_zspage * sizeof(uint16_t))
            k.slot_split = <uint16_t *>malloc(k.objs_per_zspage * sizeof(uint16_t))
            k.gtab = group_table(k.objs_per_zspage)
            if k.slot_page == NULL or k.slot_off == NULL or k.slot_split == NULL or k.gtab == NULL:
                raise MemoryError()
            for i in range(k.objs_per_zspage):
                off = i * k.size
                k.slot_page[i] = <uint16_t>(off >> PAGE_SHIFT)
                k.slot_off[i] = <uint16_t>(off & (PAGE_SIZE - 1))
                k.slot_split[i] = <uint16_t>min(
                    k.capacity, PAGE_SIZE - (off & (PAGE_SIZE - 1)) - k.header
                )
        longest = max(spec.pages_per_zspage for spec in specs)
        if not 1 <= longest <= MAX_CHAIN:
            raise ValueError(f"zspages of {longest} pages: 1..{MAX_CHAIN} only")
        # pages[] holds one PFN in the struct; the record runs on for the rest.
        head = <char *>&probe.pages[0] - <char *>&probe
        self._zstride = (head + longest * sizeof(uint32_t) + 7) // 8 * 8
        lookup = self.table.lookup
        for i in range(PAGE_SIZE + 1):
            self._class_of[i] = lookup[i]

    # -- the handle table (handles.py) ----------------------------------------------

    cdef int _refill_random(self) except -1:
        cdef Py_buffer b
        words = self._refill()
        PyObject_GetBuffer(words, &b, PyBUF_SIMPLE)
        try:
            free(self._rnd)
            self._rnd = <uint64_t *>malloc(max(b.len, 8))
            if self._rnd == NULL:
                raise MemoryError()
            memcpy(self._rnd, b.buf, b.len)
            self._nrnd = b.len // 8
        finally:
            PyBuffer_Release(&b)
        return 0

    cdef uint64_t _halloc(self, int64_t location) except 0:
        """HandleTable.alloc: a fresh generation, the free chain's head slot."""
        cdef int64_t slot = self._hfree
        cdef uint64_t old, g
        cdef Py_ssize_t cap
        cdef Hslot *grown
        if not slot and self._hlen > self._max_slots:
            raise HandleTableFullError(f"handle table full: {self._max_slots} handles live")
        old = slot_gen(&self._h[slot]) if slot else 0
        while True:
            if self._nrnd == 0:
                self._refill_random()
                continue
            self._nrnd -= 1
            g = self._rnd[self._nrnd] & GEN_MASK
            if g and g != old:
                break
        if slot:
            self._hfree = -1 - self._h[slot].loc
            self._h[slot].loc = location
        else:
            if self._hlen == self._hcap:
                cap = self._hcap * 2
                grown = <Hslot *>realloc(self._h, cap * sizeof(Hslot))
                if grown == NULL:
                    raise MemoryError()
                self._h = grown
                self._hcap = cap
            slot = self._hlen
            self._hlen += 1
            self._h[slot].loc = location
        set_slot_gen(&self._h[slot], g)
        self._live += 1
        return g << SLOT_BITS | <uint64_t>slot

    cdef inline int64_t _live_slot(self, object handle) except -2:
        """The slot of a live handle, or -1: any object at all is checked here,
        before anything is read at an address built from it."""
        cdef uint64_t h
        cdef int64_t slot
        if not PyLong_Check(handle):
            return -1
        h = PyLong_AsUnsignedLongLong(handle)
        if h == <uint64_t>-1 and PyErr_Occurred():
            PyErr_Clear()  # negative, or past 64 bits: no handle is either
            return -1
        return self._live_slot_of(h)

    cdef inline int64_t _live_slot_of(self, uint64_t h) noexcept:
        """The slot of live handle ``h``, or -1 (the check of :meth:`_live_slot`)."""
        cdef int64_t slot = <int64_t>(h & SLOT_MASK)
        if slot == 0 or slot >= self._hlen:
            return -1
        if slot_gen(&self._h[slot]) != h >> SLOT_BITS or self._h[slot].loc < 0:
            return -1
        return slot

    cdef inline int64_t _checked_slot(self, object handle) except -1:
        """:meth:`_live_slot`, or InvalidHandleError: the one refusal of every
        operation on a handle, from Python or from C."""
        cdef int64_t slot = self._live_slot(handle)
        if slot < 0:
            raise InvalidHandleError(f"no live object for handle {handle!r}")
        return slot

    cdef inline int64_t _checked_slot_of(self, uint64_t h) except -1:
        """:meth:`_live_slot_of`, or InvalidHandleError (see :meth:`_checked_slot`)."""
        cdef int64_t slot = self._live_slot_of(h)
        if slot < 0:
            raise InvalidHandleError(f"no live object for handle {h!r}")
        return slot

    cdef inline int64_t _take(self, int64_t slot) noexcept:
        """HandleTable.release: retire a live slot; returns its location."""
        cdef int64_t loc = self._h[slot].loc
        self._h[slot].loc = -1 - self._hfree
        self._hfree = slot
        self._live -= 1
        return loc

    # -- fullness lists (zspage.py insert_zspage / remove_zspage) --------------------

    cdef inline void _insert(self, Klass *k, int32_t zid, int group) noexcept:
        cdef Zspage *z = self._z(zid)
        cdef int32_t head = k.heads[group]
        z.prev = NIL
        z.next = head
        if head != NIL:
            self._z(head).prev = zid
        k.heads[group] = zid
        z.fullness = group
        k.counts[group] += 1
        k.nonfull |= ((<uint32_t>1) << group) & NONFULL_BITS

    cdef inline void _remove(self, Klass *k, int32_t zid) noexcept:
        cdef Zspage *z = self._z(zid)
        cdef int group = z.fullness
        if z.prev != NIL:
            self._z(z.prev).next = z.next
        else:
            k.heads[group] = z.next
        if z.next != NIL:
            self._z(z.next).prev = z.prev
        z.prev = NIL
        z.next = NIL
        k.counts[group] -= 1
        if k.heads[group] == NIL:
            k.nonfull &= ~((<uint32_t>1) << group)

    cdef inline Zspage *_z(self, Py_ssize_t zid) noexcept:
        """The record of zspage ``zid`` (records are _zstride bytes apart)."""
        return <Zspage *>(<char *>self._zs + zid * self._zstride)

    cdef inline int _group(self, Zspage *z, Klass *k, int inuse) noexcept:
        """The fullness group of ``z`` holding ``inuse`` objects."""
        if z.objs == k.objs_per_zspage:
            return k.gtab[inuse]
        return fullness_group(inuse, z.objs)  # a short zspage (short_zspages)

    cdef inline int64_t _slot_address(self, Zspage *z, Klass *k, int idx) noexcept:
        return ((<int64_t>z.pages[k.slot_page[idx]]) << PAGE_SHIFT) + k.slot_off[idx]

    cdef inline uint64_t *_word(self, int64_t addr) noexcept:
        return <uint64_t *>(self._base + addr)

    # -- zspage life -----------------------------------------------------------------

    cdef int32_t _new_zspage(self, Klass *k) except -1:
        """ZsPool._new_zspage: build a zspage for ``k`` from fresh pages."""
        cdef int npages = k.pages_per_zspage
        cdef int objs = k.objs_per_zspage
        cdef int32_t zid
        cdef Zspage *z
        cdef Zspage *grown
        cdef int32_t *ids
        cdef int i
        if self._live >= self._max_slots:
            raise HandleTableFullError(f"handle table full: {self._max_slots} handles live")
        room = self._room()
        if room < npages:
            room += self._shrink_empty_cache(npages - room)
        if room < npages:
            if self.short_zspages and room > 0 and room * PAGE_SIZE >= k.size:
                npages = room
                objs = room * PAGE_SIZE // k.size
            else:
                raise self._refusal(npages, f"a zspage of class {k.size}")
        self._charge(npages, f"a zspage of class {k.size}")
        alloc_page = self._arena.alloc_page
        pfns = [alloc_page() for _ in range(npages)]
        if self._nfree_zids:
            self._nfree_zids -= 1
            zid = self._free_zids[self._nfree_zids]
        else:
            if self._nz == self._zcap:
                cap = max(64, self._zcap * 2)
                grown = <Zspage *>realloc(self._zs, cap * self._zstride)
                ids = <int32_t *>realloc(self._free_zids, cap * sizeof(int32_t))
                if grown != NULL:
                    self._zs = grown
                if ids != NULL:
                    self._free_zids = ids
                if grown == NULL or ids == NULL:
                    self._arena.free_pages(pfns)
                    self._uncharge(npages)
                    raise MemoryError()
                self._zcap = cap
            zid = <int32_t>self._nz
            self._nz += 1
        z = self._z(zid)
        z.cls = k.position
        z.freeobj = 0
        z.inuse = 0
        z.objs = objs
        z.fullness = EMPTY
        z.prev = NIL
        z.next = NIL
        z.npages = npages
        for i in range(npages):
            z.pages[i] = pfns[i]
        z.owners = NULL if k.header else <uint32_t *>calloc(objs, sizeof(uint32_t))
        # Chain every slot into the free list, in order, inside the slots.
        for i in range(objs):
            self._word(self._slot_address(z, k, i))[0] = (
                <uint64_t>(i + 2 if i + 1 < objs else 0)
            ) << 1
        k.objs_allocated += objs
        k.pages_used += npages
        held = self._arena.pages_held
        if held > self.pages_max:
            self.pages_max = held
        self._insert(k, zid, EMPTY)
        k.empties += 1
        return zid

    cdef int _free_zspage(self, Klass *k, int32_t zid) except -1:
        """Release an empty zspage that is on no list; returns pages released."""
        cdef Zspage *z = self._z(zid)
        cdef int npages = z.npages
        cdef int i
        self._arena.free_pages([z.pages[i] for i in range(npages)])
        self._uncharge(npages)
        k.objs_allocated -= z.objs
        k.pages_used -= npages
        self._clear_zspage(z)
        self._free_zids[self._nfree_zids] = zid
        self._nfree_zids += 1
        return npages

    cdef int64_t _shrink_empty_cache(self, int64_t want) except -1:
        cdef int64_t freed = 0
        cdef Py_ssize_t n
        cdef Klass *k
        cdef int32_t zid
        for n in range(self._ncls):
            k = &self._cls[n]
            while k.empties and freed < want:
                zid = k.heads[EMPTY]
                self._remove(k, zid)
                k.empties -= 1
                freed += self._free_zspage(k, zid)
            if freed >= want:
                break
        return freed

    cdef int _regroup(self, Klass *k, int32_t zid, int group) except -1:
        if self._z(zid).fullness == EMPTY:
            k.empties -= 1
        self._remove(k, zid)
        if group == EMPTY:
            if k.empties >= self.empty_cache:
                self._free_zspage(k, zid)
                return 0
            k.empties += 1
        self._insert(k, zid, group)
        return 0

    # -- malloc / free ---------------------------------------------------------------

    def malloc(self, size):
        """Allocate an object of ``size`` bytes and return its handle (see ZsPool)."""
        cdef Py_ssize_t n = 0
        if type(size) is int:
            n = PyLong_AsSsize_t(size)
            if n == -1 and PyErr_Occurred():
                PyErr_Clear()
                n = 0
        if not 0 < n <= PAGE_SIZE:
            self._check_size(size)  # raises the reference's ValueError
        return self._alloc(n, NULL)

    def store(self, data):
        """``malloc(len(data))`` and ``obj_write`` in one step (see ZsPool)."""
        cdef Py_buffer b
        cdef Py_ssize_t n
        if type(data) is bytes:
            n = len(<bytes>data)
            if not 0 < n <= PAGE_SIZE:
                self._check_size(n)
            return self._alloc(n, <const unsigned char *>PyBytes_AS_STRING(data))
        PyObject_GetBuffer(data, &b, PyBUF_SIMPLE)
        try:
            n = b.len
            if not 0 < n <= PAGE_SIZE:
                self._check_size(n)
            return self._alloc(n, <const unsigned char *>b.buf)
        finally:
            PyBuffer_Release(&b)

    cdef uint64_t _alloc(self, Py_ssize_t size, const unsigned char *data) except 0:
        cdef Klass *k = &self._cls[self._class_of[size]]
        cdef Zspage *z
        cdef int32_t zid
        cdef int idx, page, split, group, inuse
        cdef int64_t addr, second
        cdef uint64_t handle
        if k.huge:
            return self._malloc_huge(k, data, size)
        self._lk.enter()
        try:
            if k.nonfull:
                zid = k.heads[highest_bit(k.nonfull)]
            else:
                zid = self._new_zspage(k)
            z = self._z(zid)
            idx = z.freeobj
            # The free list's links live in the free slots, as the kernel's do:
            # bytes a stale view of a freed object can overwrite.  Checked before
            # they address anything (the pure pool's IndexError, here an error).
            if idx < 0 or idx >= z.objs:
                raise AllocatorError(
                    f"pool corrupted: zspage {zid}'s free list names slot {idx} of {z.objs} "
                    "(its bytes overwritten through a view kept past its mapping?)"
                )
            handle = self._halloc((<int64_t>zid) << LOC_SHIFT | idx)
            page = k.slot_page[idx]
            addr = ((<int64_t>z.pages[page]) << PAGE_SHIFT) + k.slot_off[idx]
            z.freeobj = <int32_t>(self._word(addr)[0] >> 1) - 1
            if z.owners == NULL:
                self._word(addr)[0] = (handle & SLOT_MASK) << 1 | 1
            else:
                z.owners[idx] = <uint32_t>(handle & SLOT_MASK)
            z.inuse += 1
            inuse = z.inuse
            k.objs_used += 1
            group = self._group(z, k, inuse)
            if group != z.fullness:
                if z.fullness == EMPTY:
                    k.empties -= 1
                self._remove(k, zid)
                self._insert(k, zid, group)
            if data != NULL:
                addr += k.header
                split = k.slot_split[idx]
                if size <= split:
                    memcpy(self._base + addr, data, size)
                else:
                    second = (<int64_t>z.pages[page + 1]) << PAGE_SHIFT
                    memcpy(self._base + addr, data, split)
                    memcpy(self._base + second, data + split, size - split)
            return handle
        finally:
            self._lk.exit()

    cdef uint64_t _malloc_huge(
        self, Klass *k, const unsigned char *data, Py_ssize_t size
    ) except 0:
        cdef int64_t pfn
        cdef uint64_t handle
        self._lk.enter()
        try:
            if self._live >= self._max_slots:
                raise HandleTableFullError(f"handle table full: {self._max_slots} handles live")
            if self._room() < 1 and not self._shrink_empty_cache(1):
                raise self._refusal(1, "a huge object")
            self._charge(1, "a huge object")
            pfn = self._arena.alloc_page()
            handle = self._halloc(HUGE | (<int64_t>k.position) << HUGE_CLASS_SHIFT | pfn)
            k.objs_used += 1
            k.objs_allocated += 1
            k.pages_used += 1
            k.counts[FULL] += 1
            held = self._arena.pages_held
            if held > self.pages_max:
                self.pages_max = held
            if data != NULL:
                memcpy(self._base + (pfn << PAGE_SHIFT), data, size)
            return handle
        finally:
            self._lk.exit()

    def free(self, handle):
        """Free the object of ``handle``; the handle is invalid from now on (see ZsPool)."""
        self._lk.enter()
        try:
            self._free_slot(self._checked_slot(handle))
        finally:
            self._lk.exit()

    cdef int _free_slot(self, int64_t slot) except -1:
        """Free the object of live ``slot`` (lock held)."""
        cdef int64_t loc
        cdef int32_t zid
        cdef Zspage *z
        cdef Klass *k
        cdef int idx, group, inuse
        cdef int64_t addr
        if self._mapped and slot in self._mapped:
            raise AllocatorError("cannot free an object while it is mapped")
        loc = self._take(slot)
        if loc & HUGE:
            self._free_huge(loc)
            return 0
        zid = <int32_t>(loc >> LOC_SHIFT)
        z = self._z(zid)
        k = &self._cls[z.cls]
        idx = loc & IDX_MASK
        addr = self._slot_address(z, k, idx)
        self._word(addr)[0] = (<uint64_t>(z.freeobj + 1)) << 1
        if z.owners != NULL:
            z.owners[idx] = 0
        z.freeobj = idx
        z.inuse -= 1
        inuse = z.inuse
        k.objs_used -= 1
        group = self._group(z, k, inuse)
        if group != z.fullness:
            self._regroup(k, zid, group)
        return 0

    cdef int _free_huge(self, int64_t loc) except -1:
        # Released at once, whatever empty_cache says (as the reference).
        cdef Klass *k = &self._cls[(loc & ~HUGE) >> HUGE_CLASS_SHIFT]
        self._arena.free_page(loc & PFN_MASK)
        self._uncharge(1)
        k.objs_used -= 1
        k.objs_allocated -= 1
        k.pages_used -= 1
        k.counts[FULL] -= 1
        return 0

    # -- object access ---------------------------------------------------------------

    cdef int _locate_c(
        self, object handle, Klass **kout, int64_t *addr, int *split, int64_t *second
    ) except -1:
        """(class, data address, bytes before the page ends, address of the page
        a spanning object continues on or -1) of a live handle."""
        self._locate_slot(self._checked_slot(handle), kout, addr, split, second)
        return 0

    cdef void _locate_slot(
        self, int64_t slot, Klass **kout, int64_t *addr, int *split, int64_t *second
    ) noexcept:
        """:meth:`_locate_c` of a slot already checked live."""
        cdef int64_t loc = self._h[slot].loc
        cdef Zspage *z
        cdef Klass *k
        cdef int idx, page
        if loc & HUGE:
            k = &self._cls[(loc & ~HUGE) >> HUGE_CLASS_SHIFT]
            kout[0] = k
            addr[0] = (loc & PFN_MASK) << PAGE_SHIFT
            split[0] = k.capacity
            second[0] = -1
            return
        z = self._z(loc >> LOC_SHIFT)
        k = &self._cls[z.cls]
        idx = loc & IDX_MASK
        page = k.slot_page[idx]
        kout[0] = k
        addr[0] = ((<int64_t>z.pages[page]) << PAGE_SHIFT) + k.slot_off[idx] + k.header
        split[0] = k.slot_split[idx]
        if split[0] < k.capacity:
            second[0] = (<int64_t>z.pages[page + 1]) << PAGE_SHIFT
        else:
            second[0] = -1

    def _locate(self, handle):
        """(class position, data address, bytes before the page ends, address of
        the page a spanning object continues on or -1): for tests."""
        cdef Klass *k
        cdef int64_t addr, second
        cdef int split
        self._lk.enter()
        try:
            self._locate_c(handle, &k, &addr, &split, &second)
            return k.position, addr, split, second
        finally:
            self._lk.exit()

    def obj_write(self, handle, data):
        """Copy ``data`` into the object, from its start (see ZsPool)."""
        cdef Py_buffer b
        if type(data) is bytes:  # the common case: no buffer to acquire
            self._lk.enter()
            try:
                self._write(
                    handle, <const unsigned char *>PyBytes_AS_STRING(data), len(<bytes>data)
                )
            finally:
                self._lk.exit()
            return
        PyObject_GetBuffer(data, &b, PyBUF_SIMPLE)
        try:
            self._lk.enter()
            try:
                self._write(handle, <const unsigned char *>b.buf, b.len)
            finally:
                self._lk.exit()
        finally:
            PyBuffer_Release(&b)

    cdef int _write(self, object handle, const unsigned char *data, Py_ssize_t n) except -1:
        cdef Klass *k
        cdef int64_t addr, second
        cdef int split
        self._locate_c(handle, &k, &addr, &split, &second)
        if n > k.capacity:
            raise ValueError(f"{n} bytes do not fit a {k.capacity}-byte slot")
        if n <= split:
            memcpy(self._base + addr, data, n)
        else:
            memcpy(self._base + addr, data, split)
            memcpy(self._base + second, data + split, n - split)
        return 0

    def obj_read(self, handle, size=None):
        """A copy of the object's first ``size`` bytes (default: its whole slot)."""
        cdef Klass *k
        cdef int64_t addr, second
        cdef int split
        cdef Py_ssize_t n
        cdef bytes out
        cdef char *dst
        self._lk.enter()
        try:
            self._locate_c(handle, &k, &addr, &split, &second)
            if size is None:
                n = k.capacity
            else:
                try:
                    n = size
                except OverflowError:
                    raise ValueError(
                        f"cannot read {size} bytes of a {k.capacity}-byte slot"
                    ) from None
                if not 0 <= n <= k.capacity:
                    raise ValueError(f"cannot read {n} bytes of a {k.capacity}-byte slot")
            out = PyBytes_FromStringAndSize(NULL, n)
            dst = PyBytes_AS_STRING(out)
            if n <= split:
                memcpy(dst, self._base + addr, n)
            else:
                memcpy(dst, self._base + addr, split)
                memcpy(dst + split, self._base + second, n - split)
            return out
        finally:
            self._lk.exit()

    def map(self, handle, mode=MapMode.RW):
        """A context manager giving a view of the object (see ObjectMapping)."""
        return ObjectMapping(self, handle, mode)

    def _map_begin(self, m):
        cdef Klass *k
        cdef int64_t addr, second
        cdef int split
        cdef uint64_t hv
        self._lk.enter()
        try:
            self._locate_c(m.handle, &k, &addr, &split, &second)
            # The checked handle's slot, computed in C: an int subclass's own
            # __and__ must not name another slot than the one mapped.
            hv = <uint64_t>m.handle
            slot = m.slot = <int64_t>(hv & SLOT_MASK)
            m.second = second
            n = k.capacity
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
            self._lk.exit()
            raise

    def _map_end(self, m):
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
            self._lk.exit()

    # -- compaction ------------------------------------------------------------------

    def compact(self):
        """Move objects from sparse zspages into dense ones (see ZsPool.compact)."""
        cdef int64_t freed
        cdef Py_ssize_t n
        self._lk.enter()
        try:
            if self._mapped:
                return 0
            freed = self._shrink_empty_cache((<int64_t>1) << 62)
            for n in range(self._ncls - 1, -1, -1):
                freed += self._compact_class(&self._cls[n])
            self.pages_compacted += freed
            self._arena.flush()
            return freed
        finally:
            self._lk.exit()

    @staticmethod
    cdef inline int64_t _freeable(Klass *k) noexcept:
        return (k.objs_allocated - k.objs_used) // k.objs_per_zspage * k.pages_per_zspage

    cdef inline int32_t _isolate(self, Klass *k, int first, int last, int step) noexcept:
        cdef int group = first
        cdef int32_t zid
        while group != last:
            zid = k.heads[group]
            if zid != NIL:
                self._remove(k, zid)
                return zid
            group += step
        return NIL

    cdef inline void _putback(self, Klass *k, int32_t zid) noexcept:
        cdef Zspage *z = self._z(zid)
        cdef int group = self._group(z, k, z.inuse)
        self._insert(k, zid, group)
        if group == EMPTY:
            k.empties += 1

    cdef int64_t _compact_class(self, Klass *k) except -1:
        cdef int64_t freed = 0
        cdef int32_t dst = NIL
        cdef int32_t src
        while ZsPoolCore._freeable(k):
            if dst == NIL:
                dst = self._isolate(k, RATIO_99, EMPTY, -1)  # fullest first
                if dst == NIL:
                    break
            src = self._isolate(k, RATIO_10, FULL, 1)  # emptiest first
            if src == NIL:
                break
            self._migrate(k, self._z(src), src, self._z(dst), dst)
            if self._z(src).inuse == 0:
                freed += self._free_zspage(k, src)
            else:
                self._putback(k, src)
            if self._z(dst).inuse == self._z(dst).objs:
                self._putback(k, dst)
                dst = NIL
        if dst != NIL:
            self._putback(k, dst)
        return freed

    cdef int _migrate(
        self, Klass *k, Zspage *src, int32_t src_zid, Zspage *dst, int32_t dst_zid
    ) except -1:
        """Move objects of ``src`` into ``dst``, in slot order, until either limit.

        A slot's owner and ``dst``'s free list come from arena bytes: each is
        checked against the pool's own tables before it addresses anything.
        """
        cdef unsigned char tmp[PAGE_SIZE]
        cdef int idx, didx, split, cap = k.capacity
        cdef int64_t addr, daddr, second
        cdef uint64_t head, owner
        for idx in range(src.objs):
            addr = self._slot_address(src, k, idx)
            if src.owners == NULL:
                head = self._word(addr)[0]
                if not head & 1:
                    continue
                owner = head >> 1
            else:
                owner = src.owners[idx]
                if not owner:
                    continue
            if (
                owner >= <uint64_t>self._hlen
                or self._h[owner].loc != ((<int64_t>src_zid) << LOC_SHIFT | idx)
            ):
                raise AllocatorError(
                    f"pool corrupted: slot {idx} of zspage {src_zid} names handle slot {owner}, "
                    "which is not it"
                )
            # The object's bytes (its whole slot), in one or two pieces.
            split = k.slot_split[idx]
            memcpy(tmp, self._base + addr + k.header, split)
            if split < cap:
                second = (<int64_t>src.pages[k.slot_page[idx] + 1]) << PAGE_SHIFT
                memcpy(tmp + split, self._base + second, cap - split)
            # obj_malloc on dst, keeping the same owner.
            didx = dst.freeobj
            if didx < 0 or didx >= dst.objs:
                raise AllocatorError(
                    f"pool corrupted: zspage {dst_zid}'s free list names slot {didx} of {dst.objs}"
                )
            daddr = self._slot_address(dst, k, didx)
            dst.freeobj = <int32_t>(self._word(daddr)[0] >> 1) - 1
            if dst.owners == NULL:
                self._word(daddr)[0] = owner << 1 | 1
            else:
                dst.owners[didx] = <uint32_t>owner
            dst.inuse += 1
            split = k.slot_split[didx]
            memcpy(self._base + daddr + k.header, tmp, split)
            if split < cap:
                second = (<int64_t>dst.pages[k.slot_page[didx] + 1]) << PAGE_SHIFT
                memcpy(self._base + second, tmp + split, cap - split)
            self._h[owner].loc = (<int64_t>dst_zid) << LOC_SHIFT | didx
            # obj_free on src; the class's counters do not change overall.
            self._word(addr)[0] = (<uint64_t>(src.freeobj + 1)) << 1
            if src.owners != NULL:
                src.owners[idx] = 0
            src.freeobj = idx
            src.inuse -= 1
            if dst.inuse == dst.objs or src.inuse == 0:
                break

    # -- figures ---------------------------------------------------------------------

    @property
    def chain_size(self):
        return self.table.chain_size

    @property
    def huge_class_size(self):
        """Smallest object length stored in a huge (one object per page) class."""
        return self.table.huge_class_size

    @property
    def pages(self):
        """Pages held now."""
        return self._arena.pages_held

    @property
    def total_size_bytes(self):
        """Pages held x 4096 (the kernel's pool size)."""
        return self._arena.pages_held << PAGE_SHIFT

    @property
    def objs_used(self):
        """Live objects."""
        return self._live

    def capacity(self, size):
        """Bytes a mapping of an object of ``size`` bytes offers (its slot's data)."""
        return self._cls[self._class_of[self._check_size(size)]].capacity

    def class_stats(self):
        """One row per distinct class, the kernel's debugfs ``classes`` columns."""
        cdef Klass *k
        cdef Py_ssize_t n
        self._lk.enter()
        try:
            rows = []
            for n in range(self._ncls):
                k = &self._cls[n]
                rows.append(
                    ClassStats(
                        index=k.index,
                        size=k.size,
                        pages_per_zspage=k.pages_per_zspage,
                        objs_per_zspage=k.objs_per_zspage,
                        zspages=tuple([k.counts[i] for i in range(N_GROUPS)]),
                        objs_allocated=k.objs_allocated,
                        objs_used=k.objs_used,
                        pages_used=k.pages_used,
                        freeable=ZsPoolCore._freeable(k),
                    )
                )
            return rows
        finally:
            self._lk.exit()

    def stats(self):
        """The pool's summary figures."""
        cdef Py_ssize_t n
        cdef int64_t allocated = 0, huge = 0
        self._lk.enter()
        try:
            for n in range(self._ncls):
                allocated += self._cls[n].objs_allocated
                if self._cls[n].huge:
                    huge += self._cls[n].objs_used
            return PoolStats(
                pages=self._arena.pages_held,
                pages_max=self.pages_max,
                max_pages=self.max_pages,
                objs_used=self._live,
                objs_allocated=allocated,
                zspages=self._nz - self._nfree_zids + huge,
                pages_compacted=self.pages_compacted,
                alloc_failures=self.alloc_failures,
                handle_table_bytes=self._hlen * sizeof(Hslot),
            )
        finally:
            self._lk.exit()

    def check_invariants(self):
        """Walk every structure and raise AssertionError at the first inconsistency.

        The C structures are copied into the reference's own objects (SizeClass,
        ZsPage) and checked by the reference's check (invariants.py): one
        definition of consistent for both pools.  O(pool size), for tests.
        """
        self._lk.enter()
        try:
            check_zspool(self._view_for_check())
        finally:
            self._lk.exit()

    cdef object _view_for_check(self):
        cdef Klass *k
        cdef Zspage *z
        cdef Py_ssize_t n, zid
        cdef int g, i
        if self._check_classes is None:
            # The reference's SizeClass objects, shapes computed once per pool.
            header = self.table.header
            self._check_classes = [
                SizeClass(spec, header, n) for n, spec in enumerate(self.table.classes)
            ]
        classes = self._check_classes
        for n in range(self._ncls):
            k = &self._cls[n]
            c = classes[n]
            c.counts = [k.counts[g] for g in range(N_GROUPS)]
            c.nonfull = k.nonfull
            c.empties = k.empties
            c.objs_allocated = k.objs_allocated
            c.objs_used = k.objs_used
            c.pages_used = k.pages_used
        zspages = []
        for zid in range(self._nz):
            z = self._z(zid)
            if z.cls < 0:
                zspages.append(None)
                continue
            p = ZsPage(zid, classes[z.cls], array("I", [z.pages[i] for i in range(z.npages)]),
                       z.objs)
            p.inuse = z.inuse
            p.freeobj = z.freeobj
            p.fullness = z.fullness
            if z.owners != NULL:
                p.owners = array("I", [z.owners[i] for i in range(z.objs)])
            else:
                p.owners = None
            zspages.append(p)
        for zid in range(self._nz):
            z = self._z(zid)
            if z.cls >= 0:
                zspages[zid].prev = zspages[z.prev] if z.prev != NIL else None
                zspages[zid].next = zspages[z.next] if z.next != NIL else None
        for n in range(self._ncls):
            k = &self._cls[n]
            classes[n].heads = [
                zspages[k.heads[g]] if k.heads[g] != NIL else None for g in range(N_GROUPS)
            ]
        return ZsPoolView(
            classes=tuple(classes),
            zspages=zspages,
            words=self._arena.words,
            handles=_HandleSnapshot(
                [self._h[i].loc for i in range(self._hlen)], self._live
            ),
            pages_held=self._arena.pages_held,
            empty_cache=self.empty_cache,
            max_pages=self.max_pages,
            held_over_budget=getattr(self, "_held_over_budget", 0),
        )


class _HandleSnapshot:
    """What invariants.py reads of a handle table, copied from the C one."""

    def __init__(self, locations, live):
        self._loc = locations
        self.live = live

    def live_slots(self):
        return [s for s in range(1, len(self._loc)) if self._loc[s] >= 0]

    def location_of_slot(self, slot):
        return self._loc[slot]


class ZsPool(ZsPoolCore, PoolBase):
    """A zsmalloc-style pool of objects of 1..4096 bytes, compiled.

    The same arguments, behaviour, placement, handles and errors as
    :class:`allocator.zsmalloc.ZsPool` (the reference, which documents them);
    the budgets (``set_max_pages``, ``close``, the refusals) are the reference's
    own code, from :class:`~allocator.base.PoolBase`.
    """


# -- the C interface (_zsmalloc.pxd) -------------------------------------------------
#
# For other compiled modules (zswapd/_batch.pyx): store, obj_read, free and
# total_size_bytes of a ZsPool, called in C, with a C handle and C buffers.
# Each is its method's twin: the same lock, checks, errors and effects.  The pool
# is cast with a type check, so a wrong object is a TypeError, never a bad read.

cdef inline ZsPoolCore _ready(object pool):
    """The compiled pool behind ``pool``, initialised: a C caller's one check."""
    cdef ZsPoolCore p = <ZsPoolCore?>pool
    if p._cls == NULL:
        raise RuntimeError("ZsPool used before its __init__")
    return p


cdef uint64_t zs_store(object pool, const unsigned char *data, Py_ssize_t n) except 0:
    """``pool.store(data[:n])``: a new object holding the ``n`` bytes; its handle."""
    cdef ZsPoolCore p = _ready(pool)
    if not 0 < n <= PAGE_SIZE:
        p._check_size(n)  # raises the reference's ValueError
    return p._alloc(n, data)


cdef int zs_obj_read(
    object pool, uint64_t handle, unsigned char *dst, Py_ssize_t n
) except -1:
    """``pool.obj_read(handle, n)`` into ``dst`` (room for ``n`` bytes), not a bytes object."""
    cdef ZsPoolCore p = _ready(pool)
    cdef Klass *k
    cdef int64_t addr, second
    cdef int split
    p._lk.enter()
    try:
        p._locate_slot(p._checked_slot_of(handle), &k, &addr, &split, &second)
        if not 0 <= n <= k.capacity:
            raise ValueError(f"cannot read {n} bytes of a {k.capacity}-byte slot")
        if n <= split:
            memcpy(dst, p._base + addr, n)
        else:
            memcpy(dst, p._base + addr, split)
            memcpy(dst + split, p._base + second, n - split)
        return 0
    finally:
        p._lk.exit()


cdef int zs_free(object pool, uint64_t handle) except -1:
    """``pool.free(handle)``."""
    cdef ZsPoolCore p = _ready(pool)
    p._lk.enter()
    try:
        p._free_slot(p._checked_slot_of(handle))
        return 0
    finally:
        p._lk.exit()


cdef int64_t zs_total_size_bytes(object pool) except -1:
    """``pool.total_size_bytes``: pages held x 4096."""
    cdef ZsPoolCore p = <ZsPoolCore?>pool
    cdef int64_t held = p._arena.pages_held
    return held << PAGE_SHIFT
