"""The C heap, told to give back what a burst of requests freed.

A request's payload, its copies and the pages split out of it are malloc'd
and freed by the million.  glibc keeps freed memory for reuse: in the main
heap and in one arena per worker thread, each keeping up to twice its mmap
threshold (which rises to the largest block freed, 4 MiB payloads making it
8 MiB) of free memory at its top, and any free pages under a block still in
use.  Measured: a daemon answering a flood of 4 MiB STOREs with 507 stayed 15
to 50 MiB above its start once idle, with nothing left alive.  Reuse is what
makes the next request fast (fresh memory costs a page fault per 4 KiB:
fixing the mmap threshold low instead made 4 MiB requests 15 to 30% slower),
so the heaps are left to work during a burst and trimmed once it is over:
RSS returns to what is live within about two seconds of the last request.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["TRIM_INTERVAL", "trim", "trim_when_idle"]

# Seconds between trims of the heaps (see trim()): RSS settles this soon after a burst.
TRIM_INTERVAL = 1.0


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


_LIBC = _libc()


def trim() -> bool:
    """Give the free memory inside the heaps back to the kernel (glibc's malloc_trim).

    malloc_trim(0) releases the free pages of the main heap and of every
    arena, wherever they are (not only at a heap's top).  It costs a walk of
    the free lists (up to 0.1 s on a heap of 10^5 free blocks), so the daemon
    calls it once a burst of work is over (trim_when_idle), never per request.

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
            milliseconds, and the memory it would free is reused meanwhile.
    """
    last = trimmed = activity()
    while True:
        await asyncio.sleep(interval)
        now = activity()
        if now == last and now != trimmed:
            await asyncio.to_thread(trim)
            trimmed = now
        last = now
