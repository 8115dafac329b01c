# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The compiled twin of :mod:`zswapd.batch`: the page store's per-page loops in C.

zswapd/batch.py is the reference and says what each function does; this file
does the same with one C loop per batch: the same-filled test is one memcmp
of a page against itself shifted by a word, pages are sliced from the
request's bytes without a copy (the compressors and the allocator take any
buffer), and the entry table and its handles are written through the arrays
themselves (:class:`~zswapd.entries.EntryTable`, :class:`~allocator.handles.HandleTable`:
same columns, same free chain, same generations drawn from the same source),
so the handles issued are the reference's, handle for handle.

Where the pool's compressor is exactly the compiled kernel lz4
(:class:`~compressors.backend_lz4.Lz4` over ``compressors._lz4k``) and its
allocator exactly the compiled :class:`allocator.ZsPool`, the loops call them
in C (compressors/_lz4k.pxd, allocator/_zsmalloc.pxd) instead of through their
Python methods: :func:`prepare` compresses the batch, without the GIL, into one
buffer of its own (a :class:`Prepared`, not a tuple and a bytes object a page);
:func:`add_entries` stores from that buffer; :func:`read_entries` copies the
objects into one buffer (a :class:`Raw`, not a bytes object a page); and
:func:`decode` and :func:`decode_frame` decompress, without the GIL, straight
into the pages they return or into the answer.  Each loop checks the types of
what it calls, once a batch, and takes the C calls for that object only when it
is exactly the compiled one; otherwise (zstd, lz4-lib, zbud, z3fold, the pure
allocator, a subclass) it makes the Python calls the reference makes.  A
:class:`Prepared` or :class:`Raw` is also a sequence of the reference's rows,
for the code that does not know them (tier.read_back, the Python calls).
Where the C decoder refuses a block (it is stricter than liblz4), the page goes
to the compressor's own ``decompress``, which decodes it or raises the
reference's error.

Memory safety: every handle a caller gives is checked (an int below 2**64, a
slot inside the table, its generation, a live location) before any column is
indexed with it; anything that fails is handed to the reference's check, which
raises the reference's error.  Arrays are resized only while no view of them
is held (array.array refuses otherwise).  The C buffers are sized before they
are filled: a page's compressed form has room for lz4's bound of a page, a
stored object is read with the length its entry records (which the allocator
checks against the object's slot), and the decoder checks every length against
both ends of its input and of the page.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Occurred
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

from allocator._zsmalloc cimport zs_free, zs_obj_read, zs_store, zs_total_size_bytes
from compressors._lz4k cimport compress_into, decompress_into

from allocator import PoolFullError
from allocator._zsmalloc import ZsPool as _CompiledZsPool
from allocator.handles import SLOT_MASK as _SLOT_MASK
from zswapd.batch import PAGE_SIZE as _PAGE_SIZE, split_pages as _split_pages, undo
from zswapd.entries import COMPRESSED as _COMPRESSED, HUGE as _HUGE, SAME as _SAME
from zswapd.errors import PageSizeError

try:
    from compressors.backend_lz4 import IMPLEMENTATION as _LZ4_IMPLEMENTATION, Lz4 as _Lz4
except ImportError:  # no python-lz4: no kernel lz4 to call in C either
    _Lz4, _LZ4_IMPLEMENTATION = None, None

__all__ = [
    "Prepared",
    "Raw",
    "add_entries",
    "decode",
    "decode_frame",
    "prepare",
    "read_entries",
    "split_pages",
]

cdef extern from "Python.h":
    unsigned long long PyLong_AsUnsignedLongLong(object o)

cdef enum:
    PAGE = 4096
    # LZ4's bound of a page's compressed form (LZ4_COMPRESSBOUND(4096)).
    PAGE_BOUND = PAGE + PAGE // 255 + 16
    WORD = 8
    SLOT_BITS = 24
    K_SAME = 0
    K_COMPRESSED = 1
    K_HUGE = 2
    K_ENCODING = 0x3F
    K_WRITTEN = 0x80

cdef unsigned long long SLOT = (1 << SLOT_BITS) - 1
cdef unsigned long long GEN_MASK = ((<unsigned long long>1) << 40) - 1
cdef unsigned int NOT_LISTED = 0xFFFFFFFF

assert _PAGE_SIZE == PAGE and _SLOT_MASK == SLOT
assert (_SAME, _COMPRESSED, _HUGE) == (K_SAME, K_COMPRESSED, K_HUGE)


def split_pages(pages):
    """As the reference's, but a ``bytes`` batch is sliced into memoryviews (no copy)."""
    cdef Py_ssize_t n, i
    if type(pages) is bytes:
        n = len(<bytes>pages)
        if not n or n % PAGE:
            raise PageSizeError(f"{n} bytes is not a whole, non-zero number of pages")
        view = memoryview(pages)
        return [view[i : i + PAGE] for i in range(0, n, PAGE)]
    if type(pages) is list:
        # Already 4096-byte bytes (a client's list): taken as they are.
        for page in <list>pages:
            if type(page) is not bytes or len(<bytes>page) != PAGE:
                break
        else:
            return list(pages)
    return _split_pages(pages)


cdef inline uint64_t _word(const unsigned char *p) noexcept nogil:
    cdef uint64_t w
    memcpy(&w, p, WORD)  # little-endian host (x86-64, aarch64)
    return w


cdef bint _own(obj, tuple methods):
    """Whether none of ``methods`` is replaced on the object itself (a test's
    patch, say): its class's methods are the ones a C call stands for."""
    d = getattr(obj, "__dict__", None)
    if not d:
        return True
    for name in methods:
        if name in d:
            return False
    return True


cdef inline bint _is_lz4k(comp, tuple methods):
    """Whether ``comp`` is exactly the kernel lz4 compressing with compressors._lz4k,
    its ``methods`` its class's."""
    return (
        _Lz4 is not None
        and type(comp) is _Lz4
        and _LZ4_IMPLEMENTATION == "compiled"
        and _own(comp, methods)
    )


cdef inline bint _is_zspool(alloc, tuple methods):
    """Whether ``alloc`` is exactly the compiled ZsPool, its ``methods`` its class's."""
    return type(alloc) is _CompiledZsPool and _own(alloc, methods)


cdef class Prepared:
    """A batch :func:`prepare` compressed with the compiled lz4: per page its kind,
    stored length and same-filled word or place in one buffer holding every
    stored byte (compressed pages, and huge pages raw).

    As a sequence, the reference's rows ``(kind, word or bytes, stored length)``.
    """

    cdef Py_ssize_t n
    cdef uint8_t *kinds
    cdef uint16_t *lens  # stored length: 0 for a same-filled page
    cdef uint64_t *words  # the same-filled word, or the place in data
    cdef unsigned char *data  # n * PAGE_BOUND bytes, filled from the start

    def __dealloc__(self):
        free(self.kinds)
        free(self.lens)
        free(self.words)
        free(self.data)

    cdef int alloc(self, Py_ssize_t n) except -1:
        self.n = n
        # calloc: its count and size are checked against overflow.
        self.kinds = <uint8_t *>calloc(max(n, 1), sizeof(uint8_t))
        self.lens = <uint16_t *>calloc(max(n, 1), sizeof(uint16_t))
        self.words = <uint64_t *>calloc(max(n, 1), sizeof(uint64_t))
        # Not zeroed (a batch's worth of memset would cost a tenth of its
        # compression): only bytes written are ever read.
        if n > PY_SSIZE_T_MAX // PAGE_BOUND:
            raise MemoryError()
        self.data = <unsigned char *>malloc(max(n, 1) * PAGE_BOUND)
        if not (self.kinds and self.lens and self.words and self.data):
            raise MemoryError()
        return 0

    def __len__(self):
        return self.n

    def __getitem__(self, Py_ssize_t i):
        if not 0 <= i < self.n:
            raise IndexError("prepared page index out of range")
        if self.kinds[i] == K_SAME:
            return (K_SAME, self.words[i], 0)
        data = PyBytes_FromStringAndSize(<char *>self.data + self.words[i], self.lens[i])
        return (self.kinds[i], data, self.lens[i])


def prepare(batch, comp, Py_ssize_t huge_size):
    """See :func:`zswapd.batch.prepare`; with the compiled lz4, a :class:`Prepared`."""
    if _is_lz4k(comp, ("compress",)):
        pages = batch if type(batch) is list else list(batch)
        done = _prepare_c(pages, comp.options["acceleration"], huge_size)
        if done is not None:
            return done
    return _prepare_py(batch, comp.compress, huge_size)


cdef object _prepare_c(list pages, int accel, Py_ssize_t huge_size):
    """The batch compressed in C, without the GIL; None when a page is not
    exactly a page (never after split_pages), for the Python loop to handle."""
    cdef Py_ssize_t n = len(pages), i, held = 0, used = 0, clen
    cdef Py_ssize_t poor = 0, nsame = 0, compr = 0
    cdef Py_buffer *views = <Py_buffer *>calloc(max(n, 1), sizeof(Py_buffer))
    cdef const unsigned char *p
    cdef bint failed = False
    cdef Prepared out = Prepared.__new__(Prepared)
    if views == NULL:
        raise MemoryError()
    try:
        out.alloc(n)
        for i in range(n):
            PyObject_GetBuffer(pages[i], &views[i], PyBUF_SIMPLE)
            held += 1
            if views[i].len != PAGE:
                return None
        with nogil:
            for i in range(n):
                p = <const unsigned char *>views[i].buf
                # One word repeated <=> the page equals itself shifted by a word.
                if memcmp(p, p + WORD, PAGE - WORD) == 0:
                    out.kinds[i] = K_SAME
                    out.words[i] = _word(p)
                    nsame += 1
                    continue
                # Room: used <= i * PAGE_BOUND, so PAGE_BOUND bytes are left.
                clen = compress_into(p, PAGE, accel, out.data + used, PAGE_BOUND)
                if clen < 0:
                    failed = True
                    break
                out.words[i] = <uint64_t>used
                if clen >= huge_size:
                    memcpy(out.data + used, p, PAGE)
                    out.kinds[i] = K_HUGE
                    out.lens[i] = PAGE
                    poor += 1
                    compr += PAGE
                    used += PAGE
                else:
                    out.kinds[i] = K_COMPRESSED
                    out.lens[i] = <uint16_t>clen
                    compr += clen
                    used += clen
        if failed:
            raise ValueError(f"lz4k refused acceleration {accel}")
        return out, poor, nsame, compr
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
        free(views)


cdef object _prepare_py(batch, compress, Py_ssize_t huge_size):
    """The reference's loop, the same-filled test in C, ``compress`` called in Python."""
    cdef Py_buffer b
    cdef const unsigned char *p
    cdef bint same
    cdef uint64_t w = 0
    cdef Py_ssize_t poor = 0, nsame = 0, compr = 0, clen
    cdef list prepared = []
    for page in batch:
        PyObject_GetBuffer(page, &b, PyBUF_SIMPLE)
        p = <const unsigned char *>b.buf
        same = b.len == PAGE and memcmp(p, p + WORD, PAGE - WORD) == 0
        if same:
            w = _word(p)
        PyBuffer_Release(&b)
        if same:
            prepared.append((K_SAME, w, 0))
            nsame += 1
            continue
        data = compress(page)
        clen = len(data)
        if clen >= huge_size:
            prepared.append((K_HUGE, page, PAGE))
            poor += 1
            compr += PAGE
        else:
            prepared.append((K_COMPRESSED, data, clen))
            compr += clen
    return prepared, poor, nsame, compr


cdef class _Issue:
    """The handle table's state while a batch is issued in C (written back after)."""

    cdef int[:] loc  # the entry table's handle slots: 4-byte words (entries.py)
    cdef unsigned long long[:] gen
    cdef unsigned long long[:] rnd
    cdef Py_ssize_t top  # the next slot appended: slots below it are made
    cdef Py_ssize_t rnd_left  # words of rnd not yet popped
    cdef long long free_head
    cdef Py_ssize_t issued
    cdef object table
    cdef object rnd_array

    cdef uint64_t draw(self, uint64_t old) except? 0:
        """HandleTable.alloc's draw: a word from the end, refilled when empty;
        not 0, not the slot's retired generation."""
        cdef uint64_t g
        while True:
            if self.rnd_left == 0:
                self.rnd = None  # let go of the empty array before it is dropped
                self.rnd_array = self.table._refill()
                self.table._random = self.rnd_array
                self.rnd = self.rnd_array
                self.rnd_left = len(self.rnd_array)
                continue
            self.rnd_left -= 1
            g = self.rnd[self.rnd_left] & GEN_MASK
            if g != 0 and g != old:
                return g

    cdef uint64_t alloc(self) except? 0:
        """HandleTable.alloc(0), on the views (room was checked by the caller)."""
        cdef Py_ssize_t slot = self.free_head
        cdef uint64_t old = self.gen[slot] if slot else 0
        cdef uint64_t g = self.draw(old)
        if slot:
            self.free_head = -1 - self.loc[slot]
        else:
            slot = self.top
            self.top += 1
        self.loc[slot] = 0
        self.gen[slot] = g
        self.issued += 1
        return g << SLOT_BITS | <uint64_t>slot


cdef void _lru_push(unsigned int[:] prev, unsigned int[:] nxt, Py_ssize_t slot) noexcept:
    cdef unsigned int last = prev[0]
    prev[slot] = last
    nxt[slot] = 0
    nxt[last] = <unsigned int>slot
    prev[0] = <unsigned int>slot


cdef void _lru_remove(unsigned int[:] prev, unsigned int[:] nxt, Py_ssize_t slot) noexcept:
    cdef unsigned int p = prev[slot], n = nxt[slot]
    nxt[p] = n
    prev[n] = p
    prev[slot] = NOT_LISTED
    nxt[slot] = NOT_LISTED


cdef void _fill(
    _Issue it, prepared, alloc, unsigned int now, list handles,
    unsigned long long[:] objs, unsigned short[:] clens, unsigned char[:] kinds,
    unsigned int[:] atime, unsigned int[:] prev, unsigned int[:] nxt, bint lru,
    Py_ssize_t *pushed, long long limit, long long *high,
) except *:
    cdef Py_ssize_t slot, i, n = len(prepared), clen
    cdef int kind
    cdef uint64_t obj, handle
    cdef long long used = 0
    cdef tuple row
    # The C calls: a Prepared batch (the compiled lz4's) into the compiled pool.
    cdef Prepared c = prepared if type(prepared) is Prepared else None
    cdef bint in_c = c is not None and _is_zspool(alloc, ("store", "free"))
    store = None if in_c else alloc.store
    for i in range(n):
        if in_c:
            kind = c.kinds[i]
            clen = c.lens[i]
            if kind == K_SAME:
                obj = c.words[i]
            else:
                obj = zs_store(alloc, c.data + c.words[i], clen)
                used = zs_total_size_bytes(alloc)
        else:
            row = prepared[i]
            kind = row[0]
            clen = row[2]
            if kind == K_SAME:
                obj = row[1]
            else:
                obj = PyLong_AsUnsignedLongLong(store(row[1]))
                if obj == <uint64_t>-1 and PyErr_Occurred():
                    raise OverflowError("the allocator returned a handle that is not 64 bits")
                used = alloc.total_size_bytes
        if kind != K_SAME:
            # zram_write_page's order: allocate, update_used_max, then the limit.
            if used > high[0]:
                high[0] = used
            if 0 <= limit < used:
                if in_c:
                    zs_free(alloc, obj)
                else:
                    alloc.free(obj)
                raise PoolFullError(f"{used // PAGE} pages held, limit {limit // PAGE}")
        handle = it.alloc()
        slot = handle & SLOT
        objs[slot] = obj
        clens[slot] = <unsigned short>clen
        kinds[slot] = <unsigned char>kind
        atime[slot] = now
        handles.append(handle)
        if kind != K_SAME and lru:
            _lru_push(prev, nxt, slot)
            pushed[0] += 1


def add_entries(entries, prepared, alloc, now, limit_pages, list high):
    """See :func:`zswapd.batch.add_entries`."""
    cdef Py_ssize_t n = len(prepared), have, grow, pushed = 0
    cdef long long limit = -1 if limit_pages is None else <long long>limit_pages * PAGE
    cdef long long peak = high[0]
    cdef list handles = []
    cdef _Issue it
    try:
        entries.reserve(n)
        if not n:
            return handles
        table = entries._handles
        loc_array, gen_array = table._loc, table._gen
        have = len(loc_array)
        # The slots this batch appends, made now (the reference appends them one
        # by one): every page takes a slot, the free chain's first.
        grow = max(0, n - (have - 1 - table.live))
        # reserve() made the columns this long; checked, since the C loop is not.
        for column in entries._columns():
            if len(column) < have + grow:
                raise RuntimeError("the entry table's columns are shorter than its slots")
        if grow:
            loc_array.frombytes(bytes(loc_array.itemsize * grow))
            gen_array.frombytes(bytes(8 * grow))
        it = _Issue()
        it.table = table
        it.rnd_array = table._random
        it.rnd_left = len(it.rnd_array)
        it.top = have
        it.free_head = table._free
        lru = entries.prev is not None
        try:
            it.loc, it.gen, it.rnd = loc_array, gen_array, it.rnd_array
            _fill(
                it, prepared, alloc, now, handles, entries.obj, entries.clen, entries.kind,
                entries.atime, entries.prev if lru else entries.atime,
                entries.next if lru else entries.atime, lru, &pushed, limit, &peak,
            )
        finally:
            high[0] = peak
            # Views released, then the arrays put as the reference leaves them:
            # the words drawn popped, the slots not issued (an error) unmade.
            it.loc = it.gen = it.rnd = None
            del it.rnd_array[it.rnd_left:]
            if it.top < have + grow:
                del loc_array[it.top:]
                del gen_array[it.top:]
            table._free = it.free_head
            table.live += it.issued
            entries.lru_len += pushed
    except BaseException:
        undo(entries, handles, alloc.free)
        raise
    return handles


cdef class Raw:
    """A batch :func:`read_entries` read from the compiled pool: per page its kind,
    word (same-filled or written back), the stored length of a written-back
    page, and the place and length of its bytes in one buffer holding them all.

    As a sequence, the reference's rows ``(kind, word, bytes or None, length)``.
    """

    cdef Py_ssize_t n
    cdef uint8_t *kinds
    cdef uint64_t *words
    cdef uint16_t *wlens  # the row's last field: a written-back page's stored length
    cdef uint16_t *dlens  # bytes read from the allocator
    cdef Py_ssize_t *offs  # their place in data
    cdef unsigned char *data
    cdef Py_ssize_t size  # bytes of data

    def __dealloc__(self):
        free(self.kinds)
        free(self.words)
        free(self.wlens)
        free(self.dlens)
        free(self.offs)
        free(self.data)

    cdef int alloc(self, Py_ssize_t n, Py_ssize_t size) except -1:
        self.n = n
        self.size = size
        self.kinds = <uint8_t *>calloc(max(n, 1), sizeof(uint8_t))
        self.words = <uint64_t *>calloc(max(n, 1), sizeof(uint64_t))
        self.wlens = <uint16_t *>calloc(max(n, 1), sizeof(uint16_t))
        self.dlens = <uint16_t *>calloc(max(n, 1), sizeof(uint16_t))
        self.offs = <Py_ssize_t *>calloc(max(n, 1), sizeof(Py_ssize_t))
        self.data = <unsigned char *>malloc(max(size, 1))
        if not (self.kinds and self.words and self.wlens and self.dlens and self.offs
                and self.data):
            raise MemoryError()
        return 0

    def __len__(self):
        return self.n

    def __getitem__(self, Py_ssize_t i):
        if not 0 <= i < self.n:
            raise IndexError("raw page index out of range")
        cdef int kind = self.kinds[i]
        if kind & K_WRITTEN:
            return (kind, self.words[i], None, self.wlens[i])
        if kind == K_SAME:
            return (kind, self.words[i], b"", 0)
        return (kind, 0, PyBytes_FromStringAndSize(<char *>self.data + self.offs[i],
                                                    self.dlens[i]), 0)


def read_entries(entries, handles, alloc, unsigned int now):
    """See :func:`zswapd.batch.read_entries`; from the compiled pool, a :class:`Raw`."""
    table = entries._handles
    cdef int[:] loc = table._loc
    cdef unsigned long long[:] gen = table._gen
    cdef Py_ssize_t nslots = len(table._loc), i, n = len(handles), slot
    cdef Py_ssize_t ncols = len(entries.obj)
    cdef uint64_t h
    cdef list slots = []
    for handle in handles:
        if type(handle) is not int or handle < 0 or handle >> 64:
            slot = entries.slot(handle)  # the reference's check (and error)
        else:
            h = PyLong_AsUnsignedLongLong(handle)
            slot = h & SLOT
            if not slot or slot >= nslots or gen[slot] != h >> SLOT_BITS or loc[slot] < 0:
                slot = entries.slot(handle)  # raises the reference's error
        if not 0 < slot < ncols:
            # A live handle past the columns: the reference's IndexError, never
            # an unchecked read (the table keeps its columns at least that long).
            raise IndexError(f"entry slot {slot} past the table's {ncols}")
        slots.append(slot)
    if _is_zspool(alloc, ("obj_read",)):
        return _read_c(entries, slots, alloc, now)
    return _read_py(entries, slots, alloc.obj_read, now)


cdef tuple _read_c(entries, list slots, alloc, unsigned int now):
    """The entries' objects read in C (obj_read into one buffer): a Raw."""
    cdef unsigned long long[:] objs = entries.obj
    cdef unsigned short[:] clens = entries.clen
    cdef unsigned char[:] kinds = entries.kind
    cdef unsigned int[:] atime = entries.atime
    lru = entries.prev is not None
    cdef unsigned int[:] prev = entries.prev if lru else entries.atime
    cdef unsigned int[:] nxt = entries.next if lru else entries.atime
    cdef Py_ssize_t n = len(slots), i, slot, size = 0, used = 0, same = 0, written = 0
    cdef int kind
    cdef Raw raw = Raw.__new__(Raw)
    # The buffer holds what the entries say they store: their lengths, added up.
    for i in range(n):
        slot = slots[i]
        kind = kinds[slot]
        if not kind & K_WRITTEN and kind != K_SAME:
            size += clens[slot]
    raw.alloc(n, size)
    for i in range(n):
        slot = slots[i]
        kind = kinds[slot]
        raw.kinds[i] = <uint8_t>kind
        if kind & K_WRITTEN:
            raw.words[i] = objs[slot]
            raw.wlens[i] = clens[slot]
            written += 1
        elif kind == K_SAME:
            raw.words[i] = objs[slot]
            same += 1
        else:
            # Room: the lengths were added up above, from the same column (checked
            # again: the buffer's end is never passed, whatever changed).
            if used + clens[slot] > raw.size:
                raise RuntimeError("an entry's length changed while its batch was read")
            zs_obj_read(alloc, objs[slot], raw.data + used, clens[slot])
            raw.offs[i] = used
            raw.dlens[i] = clens[slot]
            used += clens[slot]
            # lru_touch: to the most recently used end, if listed and not there.
            if lru and prev[slot] != NOT_LISTED and prev[0] != slot:
                _lru_remove(prev, nxt, slot)
                _lru_push(prev, nxt, slot)
        atime[slot] = now
    return slots, raw, same, written


cdef tuple _read_py(entries, list slots, read, unsigned int now):
    """The entries' objects read through ``read`` (the allocator's obj_read)."""
    cdef unsigned long long[:] objs = entries.obj
    cdef unsigned short[:] clens = entries.clen
    cdef unsigned char[:] kinds = entries.kind
    cdef unsigned int[:] atime = entries.atime
    lru = entries.prev is not None
    cdef unsigned int[:] prev = entries.prev if lru else entries.atime
    cdef unsigned int[:] nxt = entries.next if lru else entries.atime
    cdef Py_ssize_t n = len(slots), i, slot, same = 0, written = 0
    cdef int kind
    cdef list raw = []
    for i in range(n):
        slot = slots[i]
        kind = kinds[slot]
        if kind & K_WRITTEN:
            raw.append((kind, objs[slot], None, clens[slot]))
            written += 1
        elif kind == K_SAME:
            raw.append((kind, objs[slot], b"", 0))
            same += 1
        else:
            raw.append((kind, 0, read(objs[slot], clens[slot]), 0))
            if lru and prev[slot] != NOT_LISTED and prev[0] != slot:
                _lru_remove(prev, nxt, slot)
                _lru_push(prev, nxt, slot)
        atime[slot] = now
    return slots, raw, same, written


# What decoding does with a page: nothing yet (the Python loop will), fill it
# with its word, copy it, decompress it.
cdef enum:
    LATER = 0
    FILL = 1
    COPY = 2
    INFLATE = 3


cdef struct Row:
    int todo
    uint64_t word
    const unsigned char *src
    Py_ssize_t slen
    unsigned char *dst
    bint done


cdef inline void _fill_word(unsigned char *dst, uint64_t w) noexcept nogil:
    cdef Py_ssize_t j = 0
    while j < PAGE:
        memcpy(dst + j, &w, WORD)
        j += WORD


cdef object _decode(raw, comp, decompress, bytes header):
    """decode (``header`` None: a list of pages) or decode_frame (one bytes object).

    Three passes: the rows read into C structs (with the GIL), the pages that
    need no Python filled and decompressed (without it), then, in order, every
    page left to a Python call, the reference's way: its errors come in the
    reference's order, and a page the C decoder refused goes to ``comp``."""
    cdef Py_ssize_t n = len(raw), i, hlen = 0
    cdef bint frame = header is not None
    cdef bint lz4c = _is_lz4k(comp, ("decompress", "_decompress"))
    cdef Raw r = raw if type(raw) is Raw else None
    cdef Row *rows = <Row *>calloc(max(n, 1), sizeof(Row))
    cdef Row *row
    cdef int kind
    cdef list rowlist = None if r is not None else list(raw)  # the rows, held
    cdef list out = None
    cdef unsigned char *base = NULL
    cdef object answer = None
    cdef object page
    if rows == NULL:
        raise MemoryError()
    try:
        if frame:
            hlen = len(header)
            answer = PyBytes_FromStringAndSize(NULL, hlen + n * PAGE)
            base = <unsigned char *>PyBytes_AS_STRING(answer)
            memcpy(base, PyBytes_AS_STRING(header), hlen)
        else:
            out = [None] * n
        # Pass 1: what each page needs, and where its bytes are.
        for i in range(n):
            row = &rows[i]
            if r is not None:
                kind = r.kinds[i]
                row.word = r.words[i]
                if kind & K_WRITTEN or kind == K_SAME:
                    row.src = NULL
                else:
                    row.src = r.data + r.offs[i]
                    row.slen = r.dlens[i]
            else:
                t = rowlist[i]
                kind = t[0]
                if kind == K_SAME:
                    row.word = t[1]
                data = t[2]
                if type(data) is bytes:  # held by rowlist while the GIL is let go
                    row.src = <const unsigned char *>PyBytes_AS_STRING(data)
                    row.slen = len(<bytes>data)
            if kind == K_SAME:
                row.todo = FILL
            elif row.src == NULL:
                row.todo = LATER  # not read (written back): the Python loop's error
            elif kind & K_ENCODING == K_HUGE:
                # A list row's huge page is handed on as it is (as the reference).
                row.todo = COPY if (frame or r is not None) and row.slen == PAGE else LATER
            elif kind & K_ENCODING == K_COMPRESSED and lz4c:
                row.todo = INFLATE
            else:
                row.todo = LATER
            if row.todo != LATER:
                if frame:
                    row.dst = base + hlen + i * PAGE
                else:
                    page = PyBytes_FromStringAndSize(NULL, PAGE)
                    out[i] = page
                    row.dst = <unsigned char *>PyBytes_AS_STRING(page)
        # Pass 2: in C, the GIL let go.
        with nogil:
            for i in range(n):
                row = &rows[i]
                if row.todo == FILL:
                    _fill_word(row.dst, row.word)
                    row.done = True
                elif row.todo == COPY:
                    memcpy(row.dst, row.src, PAGE)
                    row.done = True
                elif row.todo == INFLATE:
                    row.done = decompress_into(row.src, row.slen, row.dst, PAGE) == PAGE
        # Pass 3: the rest through Python, in order.
        for i in range(n):
            row = &rows[i]
            if row.done:
                continue
            t = raw[i] if r is not None else rowlist[i]
            kind = t[0]
            data = t[2]
            if data is None:
                raise AssertionError("a page left unread")
            if kind & K_ENCODING == K_HUGE:
                page = data
            elif kind & K_ENCODING == K_COMPRESSED:
                page = comp.decompress(data, PAGE)
            else:
                page = decompress(kind, data)
            if frame:
                _copy_page(<char *>base + hlen + i * PAGE, page)
            else:
                out[i] = page
        return answer if frame else out
    finally:
        free(rows)


def decode(raw, comp, decompress):
    """See :func:`zswapd.batch.decode`."""
    return _decode(raw, comp, decompress, None)


cdef void _copy_page(char *dst, object data) except *:
    """One page's bytes into the answer (exactly 4096 of them, as decode's)."""
    cdef Py_buffer b
    PyObject_GetBuffer(data, &b, PyBUF_SIMPLE)
    try:
        if b.len != PAGE:
            raise ValueError(f"a page of {b.len} bytes")
        memcpy(dst, b.buf, PAGE)
    finally:
        PyBuffer_Release(&b)


def decode_frame(raw, comp, decompress, bytes header not None):
    """See :func:`zswapd.batch.decode_frame`: the answer is one bytes object made
    here and filled before anyone else sees it (as CPython's own C code builds
    bytes): same-filled and huge pages in place, lz4 pages decompressed into it
    in C, the others copied from what their decompressor returns."""
    return _decode(raw, comp, decompress, header)
