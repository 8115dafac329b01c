"""PAGEMAP_SCAN: which pages of a range are present, asked of the kernel as ranges.

Reading /proc/PID/pagemap costs 8 bytes per page of address space, present or
not: 2 MiB per GiB mapped, about 2 s per TiB here, so a process that reserves
64 TiB (MAP_NORESERVE) and touches three pages costs whoever reads its pagemap
two minutes.  Linux 6.7 added an ioctl on the same pagemap descriptor,
PAGEMAP_SCAN (include/uapi/linux/fs.h, Documentation/admin-guide/mm/pagemap.rst),
that walks the page tables in the kernel and answers ranges of pages sharing
the categories asked for.  Asked only for present pages, a sparse mapping costs
what its page tables cost, which is what its present pages cost: microseconds
for the 64 TiB above.

The ioctl answers categories, not pagemap entries (no PFN, no soft-dirty bit
as pagemap has it): callers read the pagemap entries of the ranges it answers,
so both ways give the same entries.  A kernel without it answers ENOTTY (older
than 6.7) or EINVAL (a layout it does not know): :class:`Unsupported`, and the
caller reads the pagemap whole, as before.

The ioctl takes the same descriptor and so the same right as reading
/proc/PID/pagemap: the one opened when the process was, not its pid now.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
from collections.abc import Iterator

__all__ = [
    "PAGEMAP_SCAN",
    "PAGE_IS_FILE",
    "PAGE_IS_HUGE",
    "PAGE_IS_PFNZERO",
    "PAGE_IS_PRESENT",
    "PAGE_IS_SOFT_DIRTY",
    "PAGE_IS_SWAPPED",
    "PAGE_IS_WPALLOWED",
    "PAGE_IS_WRITTEN",
    "REGIONS",
    "Unsupported",
    "any_resident",
    "present_ranges",
]

PAGE_SIZE = 4096
# The categories of a page (fs.h's PAGE_IS_*; only PRESENT is asked here), as bits of a region's
# ``categories`` and of the argument's masks.
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
# Ranges answered per call: 4096 x 24 bytes, 96 KiB.  A call stops when its
# buffer is full and says where (walk_end); the next call starts there, and
# the caller may be told to stop between calls.
REGIONS = 4096


class _ScanArg(ctypes.Structure):
    """struct pm_scan_arg: twelve native u64, in the uapi's order."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size",
            "flags",
            "start",
            "end",
            "walk_end",
            "vec",
            "vec_len",
            "max_pages",
            "category_inverted",
            "category_mask",
            "category_anyof_mask",
            "return_mask",
        )
    ]


class _Region(ctypes.Structure):
    """struct page_region: [start, end) and the categories of every page in it."""

    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("categories", ctypes.c_uint64),
    ]


def _iowr(kind: str, nr: int, size: int) -> int:
    """The request number _IOWR(kind, nr, size), in the generic encoding (x86,
    arm64, riscv; not powerpc, mips or sparc, whose direction bits differ:
    there the kernel refuses the number, ENOTTY, and callers read the pagemap)."""
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | nr


PAGEMAP_SCAN = _iowr("f", 16, ctypes.sizeof(_ScanArg))


class Unsupported(Exception):
    """This kernel has no PAGEMAP_SCAN (or not the layout used here)."""


def present_ranges(
    pagemap_fd: int, start: int, end: int, regions: int = REGIONS
) -> Iterator[list[tuple[int, int]]]:
    """[lo, hi) of each run of present pages in [start, end), ascending, one
    call's worth (at most ``regions`` runs) at a time, so that a caller may stop
    between calls.

    Args:
        pagemap_fd: an open /proc/PID/pagemap.
        start, end: the range, page-aligned.
        regions: runs answered per call.

    Raises:
        Unsupported: the first call failed with ENOTTY or EINVAL.
        OSError: any other failure (ESRCH: the process's memory is gone).
    """
    # A range of n pages has at most (n + 1) // 2 runs: a small one needs no
    # 96 KiB buffer.
    vec = (_Region * max(1, min(regions, ((end - start) // PAGE_SIZE + 1) // 2)))()
    arg = _ScanArg(
        size=ctypes.sizeof(_ScanArg),
        vec=ctypes.addressof(vec),
        vec_len=len(vec),
        category_anyof_mask=PAGE_IS_PRESENT,
        return_mask=PAGE_IS_PRESENT,
    )
    first = True
    while start < end:
        arg.start, arg.end, arg.walk_end = start, end, 0
        try:
            n = fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)
        except OSError as exc:
            if first and exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise Unsupported(exc.strerror) from None
            raise
        first = False
        yield [(r.start, r.end) for r in vec[:n]]
        # walk_end == end once the whole range is walked; short of it, the
        # buffer filled there.  Never behind start: a kernel bug must not loop.
        if arg.walk_end <= start:
            return
        start = arg.walk_end


def any_resident(pagemap_fd: int, start: int, end: int) -> bool:
    """Whether [start, end) has a present page that is not the kernel's zero
    page: what smaps's ``Rss`` above 0 says of a mapping (Rss counts no zero
    page), from one call that stops at the first such page, without the
    page-table walk of every other smaps figure.

    Raises:
        Unsupported: this kernel has no PAGEMAP_SCAN.
        OSError: any other failure (ESRCH: the process's memory is gone).
    """
    vec = (_Region * 1)()
    # A page matches when (categories ^ inverted) has every bit of the mask:
    # present, and (inverted) not the zero page.
    arg = _ScanArg(
        size=ctypes.sizeof(_ScanArg),
        start=start,
        end=end,
        vec=ctypes.addressof(vec),
        vec_len=1,
        max_pages=1,
        category_inverted=PAGE_IS_PFNZERO,
        category_mask=PAGE_IS_PRESENT | PAGE_IS_PFNZERO,
        return_mask=PAGE_IS_PRESENT,
    )
    try:
        return int(fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)) > 0
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise Unsupported(exc.strerror) from None
        raise
