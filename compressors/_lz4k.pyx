# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""compressors.lz4k compiled: the same choices, the same bytes, at C speed.

compressors/lz4k.py is the reference and documents every rule; this module
follows it step for step (a hypothesis test checks they agree byte for byte).
The work runs without the GIL, on a hash table on the stack, so threads
compress in parallel and nothing is shared between calls.

It also decodes (:func:`decompress`): an LZ4 block back into exactly the
page it came from, for the page store's compiled loops, which decompress into
their answer's own buffer (compressors/_lz4k.pxd: ``compress_into`` and
``decompress_into``, called in C).  The decoder is strict: it accepts only a
block that keeps the format's end-of-block rules (the last 5 bytes literals,
no match starting in the last 12, a last token with no match length, input
and output used exactly, no offset 0) and refuses
everything else, where liblz4 (the reference decoder, python-lz4's) may
accept a little more; a caller hands a refused block to liblz4, so the two
never disagree on a block this one accepts (tests/compressors/test_lz4k.py).
Every length is checked against both buffers' ends before a byte is copied.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

__all__ = ["MAX_ACCELERATION", "MAX_INPUT_SIZE", "compress", "decompress"]

cdef enum:
    MINMATCH = 4
    LASTLITERALS = 5
    MFLIMIT = 12
    SKIPTRIGGER = 6
    HASH_BITS = 13
    RUN_MASK = 15
    ML_MASK = 15
    # LZ4_compressBound of a page: what its output can grow to, kept on the stack.
    PAGE_BOUND = 4096 + 4096 // 255 + 16
    _MAX_INPUT_SIZE = 64 * 1024 + MFLIMIT - 2
    _MAX_ACCELERATION = 65537

MAX_INPUT_SIZE = _MAX_INPUT_SIZE
MAX_ACCELERATION = _MAX_ACCELERATION


cdef inline uint32_t _word(const uint8_t* p) noexcept nogil:
    # Little-endian whatever the host: the kernel it emulates is x86's.
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint32_t _hash(const uint8_t* p) noexcept nogil:
    return (_word(p) * <uint32_t>2654435761U) >> (32 - HASH_BITS)


cdef extern from *:
    """
    /* The index of the first differing byte of two words loaded from memory. */
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define LZ4K_FIRST_DIFF(x) ((unsigned)__builtin_clzll(x) >> 3)
    #else
    #define LZ4K_FIRST_DIFF(x) ((unsigned)__builtin_ctzll(x) >> 3)
    #endif
    """
    unsigned LZ4K_FIRST_DIFF(uint64_t) nogil


cdef inline size_t _count(const uint8_t* ip, const uint8_t* match,
                          const uint8_t* limit) noexcept nogil:
    # lz4k._count, eight bytes at a time: the same answer, fewer steps.
    cdef const uint8_t* start = ip
    cdef uint64_t a, b
    while ip + 8 <= limit:
        memcpy(&a, ip, 8)
        memcpy(&b, match, 8)
        if a != b:
            return <size_t>(ip - start) + LZ4K_FIRST_DIFF(a ^ b)
        ip += 8
        match += 8
    while ip < limit and ip[0] == match[0]:
        ip += 1
        match += 1
    return <size_t>(ip - start)


cdef inline uint8_t* _length_bytes(uint8_t* op, size_t extra) noexcept nogil:
    while extra >= 255:
        op[0] = 255
        op += 1
        extra -= 255
    op[0] = <uint8_t>extra
    return op + 1


cdef size_t _compress(const uint8_t* src, size_t n, uint32_t acceleration,
                      uint8_t* dst) noexcept nogil:
    cdef uint16_t table[1 << HASH_BITS]
    cdef const uint8_t* iend = src + n
    cdef const uint8_t* mflimit = iend - MFLIMIT
    cdef const uint8_t* matchlimit = iend - LASTLITERALS
    cdef const uint8_t* anchor = src
    cdef const uint8_t* ip = src
    cdef const uint8_t* forward_ip
    cdef const uint8_t* match
    cdef uint8_t* op = dst
    cdef uint8_t* token
    cdef uint32_t h, forward_h, step, searched
    cdef size_t literals, length, run

    if n >= MFLIMIT + 1:
        memset(table, 0, sizeof(table))
        table[_hash(src)] = 0
        ip = src + 1
        forward_h = _hash(ip)
        while True:
            forward_ip = ip
            step = 1
            searched = acceleration << SKIPTRIGGER
            while True:
                h = forward_h
                ip = forward_ip
                forward_ip += step
                step = searched >> SKIPTRIGGER
                searched += 1
                if forward_ip > mflimit:
                    break
                match = src + table[h]
                forward_h = _hash(forward_ip)
                table[h] = <uint16_t>(ip - src)
                if _word(match) == _word(ip):
                    break
            if forward_ip > mflimit:
                break
            while ip > anchor and match > src and (ip - 1)[0] == (match - 1)[0]:
                ip -= 1
                match -= 1
            token = op
            op += 1
            literals = <size_t>(ip - anchor)
            if literals >= RUN_MASK:
                token[0] = RUN_MASK << 4
                op = _length_bytes(op, literals - RUN_MASK)
            else:
                token[0] = <uint8_t>(literals << 4)
            memcpy(op, anchor, literals)
            op += literals
            while True:
                op[0] = <uint8_t>(ip - match)
                op[1] = <uint8_t>((ip - match) >> 8)
                op += 2
                length = _count(ip + MINMATCH, match + MINMATCH, matchlimit)
                ip += MINMATCH + length
                if length >= ML_MASK:
                    token[0] += ML_MASK
                    op = _length_bytes(op, length - ML_MASK)
                else:
                    token[0] += <uint8_t>length
                anchor = ip
                if ip > mflimit:
                    break
                table[_hash(ip - 2)] = <uint16_t>(ip - 2 - src)
                h = _hash(ip)
                match = src + table[h]
                table[h] = <uint16_t>(ip - src)
                if _word(match) != _word(ip):
                    break
                token = op
                token[0] = 0
                op += 1
            if ip > mflimit:
                break
            ip += 1
            forward_h = _hash(ip)

    run = <size_t>(iend - anchor)
    if run >= RUN_MASK:
        op[0] = RUN_MASK << 4
        op = _length_bytes(op + 1, run - RUN_MASK)
    else:
        op[0] = <uint8_t>(run << 4)
        op += 1
    memcpy(op, anchor, run)
    op += run
    return <size_t>(op - dst)


cdef Py_ssize_t compress_into(
    const uint8_t* src, size_t n, int acceleration, uint8_t* dst, size_t cap
) noexcept nogil:
    """:func:`compress` of ``src[:n]`` into ``dst``; its length, or -1 when
    ``n`` is past MAX_INPUT_SIZE, ``acceleration`` past MAX_ACCELERATION or
    ``cap`` below the block's bound (n + n // 255 + 16)."""
    if n > _MAX_INPUT_SIZE or acceleration > _MAX_ACCELERATION or cap < n + n // 255 + 16:
        return -1
    if n == 0:
        dst[0] = 0  # a lone token: no literals, no match
        return 1
    return <Py_ssize_t>_compress(src, n, <uint32_t>acceleration if acceleration > 1 else 1, dst)


cdef inline void _copy16(uint8_t* dst, const uint8_t* src) noexcept nogil:
    memcpy(dst, src, 16)  # a fixed size: two moves, no call


# _length_run's refusal: no length of a 4 KiB block comes near it.
cdef size_t RUN_FAILED = <size_t>-1


cdef inline size_t _length_run(
    const uint8_t** ip, const uint8_t* iend, size_t length
) noexcept nogil:
    """``length`` plus the bytes of its run (each 255 means another follows),
    read from ``ip[0]``, which it advances; RUN_FAILED if the input ends
    inside the run (a literal's length and a match's are read alike)."""
    cdef unsigned int s
    while True:
        if ip[0] >= iend:
            return RUN_FAILED
        s = ip[0][0]
        ip[0] += 1
        length += s
        if s != 255:
            return length


cdef Py_ssize_t decompress_into(
    const uint8_t* src, size_t n, uint8_t* dst, size_t size
) noexcept nogil:
    """Decode the LZ4 block ``src[:n]`` into ``dst``: ``size`` on success, -1 for a
    block that is not exactly ``size`` bytes under the format's end-of-block
    rules (``dst`` then holds garbage).  Nothing outside ``src[:n]`` is read,
    nothing outside ``dst[:size]`` written."""
    cdef const uint8_t* ip = src
    cdef const uint8_t* iend = src + n
    cdef uint8_t* op = dst
    cdef uint8_t* oend = dst + size
    cdef const uint8_t* match
    cdef size_t length, offset, dist, i
    cdef unsigned int token
    while True:
        # A match may end the input exactly (its length run took the bytes
        # the check after it counted on): no token left to read.
        if ip >= iend:
            return -1
        token = ip[0]
        ip += 1
        length = token >> 4
        if length == RUN_MASK:
            length = _length_run(&ip, iend, length)
            if length == RUN_FAILED:
                return -1
        # Literals.  Short ones are copied 16 bytes at a time where both buffers
        # have the room (the bytes past the run are written over later).
        if length > <size_t>(iend - ip) or length > <size_t>(oend - op):
            return -1
        if length <= 16 and iend - ip >= 16 and oend - op >= 16:
            _copy16(op, ip)
        else:
            memcpy(op, ip, length)
        op += length
        ip += length
        if ip == iend:
            # The last sequence: literals only (no match length either), and
            # the page filled exactly.
            return <Py_ssize_t>size if op == oend and token & ML_MASK == 0 else -1
        # A match follows: it starts at least MFLIMIT before the end, and the
        # input holds its offset and, after it, a last sequence of at least
        # LASTLITERALS literals (2 + 1 + 5 bytes).
        if oend - op < MFLIMIT or iend - ip < 2 + 1 + LASTLITERALS:
            return -1
        offset = <size_t>ip[0] | (<size_t>ip[1] << 8)
        ip += 2
        if offset == 0 or offset > <size_t>(op - dst):
            return -1
        length = token & ML_MASK
        if length == ML_MASK:
            length = _length_run(&ip, iend, length)
            if length == RUN_FAILED:
                return -1
        length += MINMATCH
        # The match ends at least LASTLITERALS before the end.
        if length > <size_t>(oend - op) - LASTLITERALS:
            return -1
        match = op - offset
        if offset >= 16 and length <= 16 and oend - op >= 16:
            _copy16(op, match)
        elif offset >= length:
            memcpy(op, match, length)  # apart: no byte read is one written
        else:
            # Overlapping (a run): the bytes repeat with period ``offset``, so
            # out[q] == out[q - dist] for any multiple ``dist`` of it.  The first
            # ``dist - offset`` bytes one by one, then 8 at a time from ``dist``
            # (>= 8) behind, which no chunk overlaps.
            dist = offset
            while dist < 8:
                dist += offset
            i = 0
            while i < length and i < dist - offset:
                op[i] = match[i]
                i += 1
            while i + 8 <= length:
                memcpy(op + i, op + i - dist, 8)
                i += 8
            while i < length:
                op[i] = op[i - dist]
                i += 1
        op += length


def decompress(const uint8_t[::1] src not None, Py_ssize_t size):
    """The ``size`` bytes an LZ4 block decodes to (strictly: see the module's doc).

    Raises:
        ValueError: ``src`` is not a block of exactly ``size`` bytes under the
            format's end-of-block rules, or ``size`` is negative.
    """
    cdef Py_ssize_t n = src.shape[0]
    cdef Py_ssize_t got
    if size < 0:
        raise ValueError(f"size must be >= 0, not {size}")
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
    got = -1
    if n:
        with nogil:
            got = decompress_into(&src[0], <size_t>n, dst, <size_t>size)
    if got != size:
        raise ValueError(f"not an LZ4 block of {size} bytes (or not one this decoder accepts)")
    return out


def compress(const uint8_t[::1] src not None, int acceleration=1):
    """An LZ4 block of ``src`` (no size prefix), as the kernel's LZ4_compress_fast makes it.

    Raises:
        ValueError: ``src`` is longer than MAX_INPUT_SIZE, or ``acceleration``
            is above MAX_ACCELERATION.
    """
    cdef size_t n = src.shape[0]
    cdef uint8_t page_out[PAGE_BOUND]
    cdef uint8_t* out = page_out
    cdef size_t size
    if n > _MAX_INPUT_SIZE:
        raise ValueError(f"lz4k compresses at most {MAX_INPUT_SIZE} bytes, not {n}")
    if acceleration > _MAX_ACCELERATION:
        raise ValueError(f"acceleration must be at most {MAX_ACCELERATION}, not {acceleration}")
    cdef uint32_t accel = <uint32_t>acceleration if acceleration > 1 else 1
    if n == 0:
        return b"\x00"  # a lone token: no literals, no match
    if n > 4096:
        out = <uint8_t*>malloc(n + n // 255 + 16)
        if out == NULL:
            raise MemoryError()
    try:
        with nogil:
            size = _compress(&src[0], n, accel, out)
        return PyBytes_FromStringAndSize(<char*>out, size)
    finally:
        if out != page_out:
            free(out)
