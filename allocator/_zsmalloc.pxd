# The compiled pool's C interface, for other compiled modules (zswapd/_batch.pyx):
# a ZsPool's store, obj_read, free and total_size_bytes called in C, with a C
# handle and C buffers instead of Python objects.  Each behaves as its method
# (same lock, checks, errors, effects); ``pool`` must be a compiled ZsPool
# (anything else is a TypeError).  Defined in allocator/_zsmalloc.pyx.

from libc.stdint cimport int64_t, uint64_t

cdef uint64_t zs_store(object pool, const unsigned char *data, Py_ssize_t n) except 0
cdef int zs_obj_read(object pool, uint64_t handle, unsigned char *dst, Py_ssize_t n) except -1
cdef int zs_free(object pool, uint64_t handle) except -1
cdef int64_t zs_total_size_bytes(object pool) except -1
