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

Memory safety: every handle a caller gives is checked (an int below 2**64, a
slot inside the table, its generation, a live location) before any column is
indexed with it; anything that fails is handed to the reference's check, which
raises the reference's error.  Arrays are resized only while no view of them
is held (array.array refuses otherwise).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Occurred
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

from allocator import PoolFullError
from allocator.handles import SLOT_MASK as _SLOT_MASK
from zswapd.batch import PAGE_SIZE as _PAGE_SIZE, split_pages as _split_pages, undo
from zswapd.entries import COMPRESSED as _COMPRESSED, HUGE as _HUGE, SAME as _SAME
from zswapd.errors import PageSizeError

__all__ = ["add_entries", "decode", "decode_frame", "prepare", "read_entries", "split_pages"]

cdef extern from "Python.h":
    unsigned long long PyLong_AsUnsignedLongLong(object o)

cdef enum:
    PAGE = 4096
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


cdef inline uint64_t _word(const unsigned char *p) noexcept:
    cdef uint64_t w
    memcpy(&w, p, WORD)  # little-endian host (x86-64, aarch64)
    return w


def prepare(batch, compress, Py_ssize_t huge_size):
    """See :func:`zswapd.batch.prepare`."""
    cdef Py_buffer b
    cdef const unsigned char *p
    cdef bint same
    cdef uint64_t w = 0
    cdef Py_ssize_t poor = 0, nsame = 0, compr = 0, clen
    cdef list prepared = []
    for page in batch:
        PyObject_GetBuffer(page, &b, PyBUF_SIMPLE)
        p = <const unsigned char *>b.buf
        # One word repeated <=> the page equals itself shifted by a word.
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
    _Issue it, list prepared, alloc, unsigned int now, list handles,
    unsigned long long[:] objs, unsigned short[:] clens, unsigned char[:] kinds,
    unsigned int[:] atime, unsigned int[:] prev, unsigned int[:] nxt, bint lru,
    Py_ssize_t *pushed, long long limit, long long *high,
) except *:
    cdef Py_ssize_t slot
    cdef int kind
    cdef uint64_t obj, handle
    cdef long long used
    cdef tuple row
    store = alloc.store
    for row in prepared:
        kind = row[0]
        if kind == K_SAME:
            obj = row[1]
        else:
            obj = PyLong_AsUnsignedLongLong(store(row[1]))
            if obj == <uint64_t>-1 and PyErr_Occurred():
                raise OverflowError("the allocator returned a handle that is not 64 bits")
            # zram_write_page's order: allocate, update_used_max, then the limit.
            used = alloc.total_size_bytes
            if used > high[0]:
                high[0] = used
            if 0 <= limit < used:
                alloc.free(obj)
                raise PoolFullError(f"{used // PAGE} pages held, limit {limit // PAGE}")
        handle = it.alloc()
        slot = handle & SLOT
        objs[slot] = obj
        clens[slot] = <unsigned short>row[2]
        kinds[slot] = <unsigned char>kind
        atime[slot] = now
        handles.append(handle)
        if kind != K_SAME and lru:
            _lru_push(prev, nxt, slot)
            pushed[0] += 1


def add_entries(entries, list prepared, alloc, now, limit_pages, list high):
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


def read_entries(entries, handles, read, unsigned int now):
    """See :func:`zswapd.batch.read_entries`."""
    table = entries._handles
    cdef int[:] loc = table._loc
    cdef unsigned long long[:] gen = table._gen
    cdef Py_ssize_t nslots = len(table._loc), i, n = len(handles), slot
    cdef Py_ssize_t ncols = len(entries.obj)
    cdef uint64_t h
    cdef list slots = [], raw = []
    cdef Py_ssize_t same = 0, written = 0
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
    cdef unsigned long long[:] objs = entries.obj
    cdef unsigned short[:] clens = entries.clen
    cdef unsigned char[:] kinds = entries.kind
    cdef unsigned int[:] atime = entries.atime
    lru = entries.prev is not None
    cdef unsigned int[:] prev = entries.prev if lru else entries.atime
    cdef unsigned int[:] nxt = entries.next if lru else entries.atime
    cdef int kind
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
            # lru_touch: to the most recently used end, if listed and not there.
            if lru and prev[slot] != NOT_LISTED and prev[0] != slot:
                _lru_remove(prev, nxt, slot)
                _lru_push(prev, nxt, slot)
        atime[slot] = now
    return slots, raw, same, written


def decode(raw, primary, decompress):
    """See :func:`zswapd.batch.decode`."""
    cdef list out = []
    cdef int kind
    cdef uint64_t w
    cdef char *p
    cdef Py_ssize_t i
    for row in raw:
        kind = row[0]
        data = row[2]
        if data is None:
            raise AssertionError("a page left unread")
        if kind == K_SAME:
            w = row[1]
            page = PyBytes_FromStringAndSize(NULL, PAGE)
            p = PyBytes_AS_STRING(page)
            for i in range(0, PAGE, WORD):
                memcpy(p + i, &w, WORD)
            out.append(page)
        elif kind & K_ENCODING == K_HUGE:
            out.append(data)
        elif kind & K_ENCODING == K_COMPRESSED:
            out.append(primary(data, PAGE))
        else:
            out.append(decompress(kind, data))
    return out


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



def decode_frame(raw, primary, decompress, bytes header):
    """See :func:`zswapd.batch.decode_frame`: the answer is one bytes object made
    here and filled before anyone else sees it (as CPython's own C code builds
    bytes); same-filled pages are filled in place, the others copied from what
    the decompressor returns."""
    cdef Py_ssize_t n = len(raw), i, j, hlen = len(header)
    cdef char *dst
    cdef int kind
    cdef uint64_t w
    answer = PyBytes_FromStringAndSize(NULL, hlen + n * PAGE)
    cdef char *base = PyBytes_AS_STRING(answer)
    memcpy(base, PyBytes_AS_STRING(header), hlen)
    for i in range(n):
        row = raw[i]
        kind = row[0]
        data = row[2]
        if data is None:
            raise AssertionError("a page left unread")
        dst = base + hlen + i * PAGE
        if kind == K_SAME:
            w = row[1]
            for j in range(0, PAGE, WORD):
                memcpy(dst + j, &w, WORD)
        elif kind & K_ENCODING == K_HUGE:
            _copy_page(dst, data)
        elif kind & K_ENCODING == K_COMPRESSED:
            _copy_page(dst, primary(data, PAGE))
        else:
            _copy_page(dst, decompress(kind, data))
    return answer
