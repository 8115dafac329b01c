"""The page provider: 4096-byte pages carved from one anonymous mapping.

A pool asks for pages one at a time, as zsmalloc asks the buddy allocator, and
gives them back when a zspage dies.  The whole arena is reserved up front as
virtual address space only (``MAP_NORESERVE``): no memory is committed until a
page is first written, and released pages are handed back to the kernel with
``MADV_DONTNEED`` (in small batches), so the process's RSS follows the pages the
pool holds.

A page is named by its PFN, its index in the arena; its bytes live at
``pfn << PAGE_SHIFT``.  Released PFNs are reused last-in first-out, so a zspage's
pages are in general not contiguous, as in the kernel.
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Sequence

__all__ = ["DEFAULT_ARENA_PAGES", "PAGE_SHIFT", "PAGE_SIZE", "PageArena"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# 64 GiB of address space: the default for a pool used on its own, free to reserve
# because nothing is committed until it is touched.  zswapd sizes every pool's
# arena by its memory limit instead, so that many pools do not add up to more
# address space than the process may ever fill.
DEFAULT_ARENA_PAGES = 1 << 24

# Linux's MAP_NORESERVE; Python's mmap module does not export it.  Without it the
# kernel's overcommit heuristic would refuse a reservation larger than RAM.
_MAP_NORESERVE = 0x4000


class PageArena:
    """A fixed reservation of pages, handed out and taken back by PFN.

    Released pages are not returned to the OS one by one: they wait, still
    resident, on a short *pending* list (at most ``release_batch`` pages) from
    which new zspages are served first, so churn reuses warm pages without a
    system call or a page fault.  When the list is full, its pages are sorted
    and returned with one ``madvise`` per run of adjacent PFNs.  RSS therefore
    follows the pages held, within ``release_batch`` pages.

    Attributes:
        buf: a writable byte view of the whole arena.
        words: the same memory as unsigned 64-bit words (for in-place links).
        pages_held: pages currently handed out.
    """

    __slots__ = (
        "_free",
        "_map",
        "_next",
        "_pending",
        "buf",
        "capacity",
        "pages_held",
        "release_batch",
        "words",
    )

    def __init__(self, capacity_pages: int = DEFAULT_ARENA_PAGES, release_batch: int = 256) -> None:
        if capacity_pages < 1:
            raise ValueError("an arena needs at least one page")
        if release_batch < 0:
            raise ValueError("release_batch must be >= 0")
        self.capacity = capacity_pages
        self.release_batch = release_batch
        self._map = mmap.mmap(
            -1,
            capacity_pages << PAGE_SHIFT,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
        )
        self.buf = memoryview(self._map)
        self.words = self.buf.cast("Q")
        self._pending = array("q")  # released, still resident
        self._free = array("q")  # returned to the OS
        self._next = 0
        self.pages_held = 0

    def alloc_page(self) -> int:
        """Hand out one page and return its PFN.  Its contents are undefined.

        Raises:
            MemoryError: the reservation is exhausted (callers keep a budget
                below the capacity, so this means a misconfigured arena).
        """
        if self._pending:
            pfn = self._pending.pop()
        elif self._free:
            pfn = self._free.pop()
        elif self._next < self.capacity:
            pfn = self._next
            self._next += 1
        else:
            raise MemoryError(f"page arena of {self.capacity} pages exhausted")
        self.pages_held += 1
        return pfn

    def free_page(self, pfn: int) -> None:
        """Take one page back."""
        self._pending.append(pfn)
        self.pages_held -= 1
        if len(self._pending) > self.release_batch:
            self.flush()

    def free_pages(self, pfns: Sequence[int]) -> None:
        """Take several pages back."""
        self._pending.extend(array("q", pfns))
        self.pages_held -= len(pfns)
        if len(self._pending) > self.release_batch:
            self.flush()

    def flush(self) -> int:
        """Return every pending page to the OS; returns how many.

        DONTNEED on a private anonymous mapping drops a page: RSS falls and the
        next touch reads zeros, as a fresh page from the buddy allocator.
        """
        order = sorted(self._pending)
        if not order:
            return 0
        start = prev = order[0]
        for pfn in order[1:]:
            if pfn != prev + 1:
                self._release_run(start, prev)
                start = pfn
            prev = pfn
        self._release_run(start, prev)
        # Lowest PFNs last, so they are reused first and the arena stays compact.
        self._free.extend(array("q", reversed(order)))
        del self._pending[:]
        return len(order)

    def discard(self) -> None:
        """Return every page the arena has touched to the OS at once (the pool
        is being dropped; what the pages held is lost)."""
        if self._next:
            self._map.madvise(mmap.MADV_DONTNEED, 0, self._next << PAGE_SHIFT)
        del self._pending[:]
        self._free = array("q", range(self._next - 1, -1, -1))
        self.pages_held = 0

    def _release_run(self, first: int, last: int) -> None:
        self._map.madvise(mmap.MADV_DONTNEED, first << PAGE_SHIFT, (last - first + 1) << PAGE_SHIFT)

    @property
    def pages_pending(self) -> int:
        """Released pages not yet returned to the OS (at most release_batch)."""
        return len(self._pending)

    def page(self, pfn: int) -> memoryview:
        """A view of one page's 4096 bytes (for tests and diagnostics)."""
        return self.buf[pfn << PAGE_SHIFT : (pfn + 1) << PAGE_SHIFT]
