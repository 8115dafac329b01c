# The compiled lz4k's C interface, for other compiled modules (zswapd/_batch.pyx):
# compress a page into the caller's buffer, decode a block into the caller's
# buffer, with no Python object made.  Defined (and documented) in
# compressors/_lz4k.pyx; both run without the GIL.

from libc.stdint cimport uint8_t

cdef Py_ssize_t compress_into(
    const uint8_t* src, size_t n, int acceleration, uint8_t* dst, size_t cap
) noexcept nogil
cdef Py_ssize_t decompress_into(
    const uint8_t* src, size_t n, uint8_t* dst, size_t size
) noexcept nogil
