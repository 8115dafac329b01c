"""The page provider: 4096-byte pages carved from one anonymous mapping.

A pool asks for pages one at a time, as zsmalloc asks the buddy allocator, and
gives them back when a zspage dies.  The whole arena is reserved up front as
virtual address space only (``MAP_NORESERVE``): no memory is committed until a
page is first written, and a released page is handed back to the kernel with
``MADV_DONTNEED``, so the process's RSS follows the pages the pool holds.

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

# 64 GiB of address space: far more than a 24 GiB machine can fill, and free to
# reserve because nothing is committed until it is touched.
DEFAULT_ARENA_PAGES = 1 << 24

# Linux's MAP_NORESERVE; Python's mmap module does not export it.  Without it the
# kernel's overcommit heuristic would refuse a reservation larger than RAM.
_MAP_NORESERVE = 0x4000


class PageArena:
    """A fixed reservation of pages, handed out and taken back by PFN.

    Attributes:
        buf: a writable byte view of the whole arena.
        words: the same memory as unsigned 64-bit words (for in-place links).
        pages_held: pages currently handed out.
    """

    __slots__ = ("_free", "_map", "_next", "buf", "capacity", "pages_held", "words")

    def __init__(self, capacity_pages: int = DEFAULT_ARENA_PAGES) -> None:
        if capacity_pages < 1:
            raise ValueError("an arena needs at least one page")
        self.capacity = capacity_pages
        self._map = mmap.mmap(
            -1,
            capacity_pages << PAGE_SHIFT,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
        )
        self.buf = memoryview(self._map)
        self.words = self.buf.cast("Q")
        self._free = array("q")
        self._next = 0
        self.pages_held = 0

    def alloc_page(self) -> int:
        """Hand out one zero-filled page and return its PFN.

        Raises:
            MemoryError: the reservation is exhausted (callers keep a budget
                below the capacity, so this means a misconfigured arena).
        """
        if self._free:
            pfn = self._free.pop()
        elif self._next < self.capacity:
            pfn = self._next
            self._next += 1
        else:
            raise MemoryError(f"page arena of {self.capacity} pages exhausted")
        self.pages_held += 1
        return pfn

    def free_page(self, pfn: int) -> None:
        """Take a page back and return its memory to the OS."""
        # DONTNEED on a private anonymous mapping drops the page: RSS falls and
        # the next touch reads zeros, as a fresh page from the buddy allocator.
        self._map.madvise(mmap.MADV_DONTNEED, pfn << PAGE_SHIFT, PAGE_SIZE)
        self._free.append(pfn)
        self.pages_held -= 1

    def free_pages(self, pfns: Sequence[int]) -> None:
        """Take several pages back, one madvise per run of adjacent PFNs.

        A zspage built from fresh arena pages is usually one run, so releasing it
        costs one system call instead of one per page.
        """
        order = sorted(pfns)
        start = prev = order[0]
        for pfn in order[1:]:
            if pfn != prev + 1:
                self._map.madvise(
                    mmap.MADV_DONTNEED, start << PAGE_SHIFT, (prev - start + 1) << PAGE_SHIFT
                )
                start = pfn
            prev = pfn
        self._map.madvise(mmap.MADV_DONTNEED, start << PAGE_SHIFT, (prev - start + 1) << PAGE_SHIFT)
        self._free.extend(reversed(order))
        self.pages_held -= len(order)

    def page(self, pfn: int) -> memoryview:
        """A view of one page's 4096 bytes (for tests and diagnostics)."""
        return self.buf[pfn << PAGE_SHIFT : (pfn + 1) << PAGE_SHIFT]
