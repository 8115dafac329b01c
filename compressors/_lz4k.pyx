# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""compressors.lz4k compiled: the same choices, the same bytes, at C speed.

compressors/lz4k.py is the reference and documents every rule; this module
follows it step for step (a hypothesis test checks they agree byte for byte).
The work runs without the GIL, on a hash table on the stack, so threads
compress in parallel and nothing is shared between calls.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

__all__ = ["MAX_ACCELERATION", "MAX_INPUT_SIZE", "compress"]

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
