"""The C allocator, told to give freed request buffers back to the kernel.

glibc's malloc serves a block of 128 KiB or more with its own mmap and unmaps
it when freed, but only until the first such block is freed: then it raises
that threshold to the block's size (up to 32 MiB) and its trim threshold to
twice that.  From then on a daemon's 4 MiB payloads, their copies and the
pages split out of them are carved from the main heap and from each worker
thread's arena, which keep up to 8 MiB of freed memory each: measured, a
daemon answering a flood of 4 MiB STOREs with 507 stayed 30 to 50 MiB above
its start once idle, with nothing left alive.  Setting the threshold turns
that adjustment off: large blocks are unmapped when freed, and RSS follows
what is live.  The cost is a page fault per 4 KiB of each large buffer, small
beside compressing it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["MMAP_THRESHOLD", "TRIM_INTERVAL", "release_large_blocks", "trim", "trim_when_idle"]

# glibc's own starting value, kept fixed from now on.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # from <malloc.h>
# Seconds between trims of the heaps (see trim()): RSS settles this soon after a burst.
TRIM_INTERVAL = 1.0


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


_LIBC = _libc()


def release_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``threshold`` bytes or more by mmap, freed at once.

    Returns:
        True if the C library took the setting (glibc); False elsewhere
        (musl and others already return large blocks, or have no mallopt).
    """
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def trim() -> bool:
    """Give the free memory inside the heaps back to the kernel (glibc's malloc_trim).

    Blocks under the mmap threshold (a request's 4 KiB pages, split out of its
    payload) are freed into the main heap and the worker threads' arenas,
    where one block still in use above them keeps every free page below it
    resident.  malloc_trim(0) releases those free pages wherever they are; it
    costs a walk of the free lists (up to 0.1 s on a heap of 10^5 free
    blocks), so the daemon calls it once a burst of work is over
    (trim_when_idle), never per request.

    Returns:
        True if memory was released; False if none was, or on other C libraries.
    """
    malloc_trim = getattr(_LIBC, "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))


async def trim_when_idle(activity: Callable[[], int], interval: float = TRIM_INTERVAL) -> None:
    """trim() once after each burst of work, when the burst is over.

    Args:
        activity: a count that moves while the daemon works (requests handed
            to worker threads); once it has stood still for ``interval``
            seconds after moving, the heaps are trimmed, in a thread.  Not
            during a burst: on a large, fragmented heap a trim takes tens of
            milliseconds, and memory is bounded meanwhile by the mmap threshold.
    """
    last = trimmed = activity()
    while True:
        await asyncio.sleep(interval)
        now = activity()
        if now == last and now != trimmed:
            await asyncio.to_thread(trim)
            trimmed = now
        last = now
