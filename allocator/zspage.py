"""The data of a zsmalloc pool: zspages, size classes, their lists and locations.

Data first, as zsmalloc.c opens with its structs: :mod:`allocator.zsmalloc`
moves objects between these; :mod:`allocator.invariants` checks them.  Neither
needs the other.

A *location* names where an object lives, as the kernel's ``obj_to_location``
and ``location_to_obj`` pair does: ``zspage id << LOC_SHIFT | object index``
for an object in a zspage, or, for a huge object (alone on its page), the flag
``HUGE`` with its class's position and its page frame number.
"""

from __future__ import annotations

from array import array

from allocator.arena import PAGE_SHIFT, PAGE_SIZE
from allocator.classes import ClassSpec
from allocator.stats import Fullness, fullness_group

__all__ = [
    "EMPTY",
    "END",
    "FULL",
    "HUGE",
    "LOC_SHIFT",
    "N_GROUPS",
    "SizeClass",
    "ZsPage",
    "huge_location",
    "huge_to_location",
    "insert_zspage",
    "location_to_obj",
    "obj_to_location",
    "remove_zspage",
    "slot_address",
]

# A zspage holds at most 16 pages * 4096 / 16 bytes = 4096 objects: 12 bits.
LOC_SHIFT = 12
IDX_MASK = (1 << LOC_SHIFT) - 1
# A huge object is located by its PFN alone, flagged, with its class's
# position: no ZsPage object, free list or owner array is kept for it, which
# would cost ~300 bytes per huge page (the kernel's huge zspage likewise keeps
# its handle in the page's own metadata).
HUGE = 1 << 52
HUGE_CLASS_SHIFT = 32
PFN_MASK = (1 << HUGE_CLASS_SHIFT) - 1
# End of a zspage's free list.  Links are stored as index + 1 so that the end is
# 0 in memory and -1 in Python: a cached small int, not a fresh object per full zspage.
END = -1
N_GROUPS = len(Fullness)
# Plain ints on hot paths: IntEnum construction and lookups cost microseconds.
EMPTY = int(Fullness.EMPTY)
FULL = int(Fullness.FULL)
# Bits of the EMPTY..RATIO_99 groups in SizeClass.nonfull.
NONFULL_BITS = (1 << FULL) - 1


def location_to_obj(zid: int, idx: int) -> int:
    """The location of object ``idx`` of zspage ``zid``."""
    return zid << LOC_SHIFT | idx


def obj_to_location(loc: int) -> tuple[int, int]:
    """(zspage id, object index) of a non-huge location."""
    return loc >> LOC_SHIFT, loc & IDX_MASK


def huge_location(position: int, pfn: int) -> int:
    """The location of a huge object of class ``position`` on page ``pfn``."""
    return HUGE | position << HUGE_CLASS_SHIFT | pfn


def huge_to_location(loc: int) -> tuple[int, int]:
    """(class position, PFN) of a huge location."""
    return (loc & ~HUGE) >> HUGE_CLASS_SHIFT, loc & PFN_MASK


class ZsPage:
    """One zspage: its pages, its free list head and how many slots are used."""

    __slots__ = (
        "cls",
        "freeobj",
        "fullness",
        "gtab",
        "inuse",
        "next",
        "objs",
        "owners",
        "pages",
        "prev",
        "zid",
    )

    def __init__(self, zid: int, cls: SizeClass, pages: array[int], objs: int) -> None:
        self.zid = zid
        self.cls = cls
        self.pages = pages
        self.objs = objs
        # inuse -> fullness group; shared with every full-length zspage of the class.
        self.gtab = cls.gtab if objs == cls.objs_per_zspage else group_table(objs)
        self.inuse = 0
        self.freeobj = 0
        self.fullness = EMPTY
        self.prev: ZsPage | None = None
        self.next: ZsPage | None = None
        self.owners: array[int] | None = None if cls.header else array("I", bytes(4 * objs))


class SizeClass:
    """A size class: its shape, its fullness lists and its counters."""

    __slots__ = (
        "capacity",
        "counts",
        "empties",
        "gtab",
        "header",
        "heads",
        "huge",
        "index",
        "nonfull",
        "objs_allocated",
        "objs_per_zspage",
        "objs_used",
        "pages_per_zspage",
        "pages_used",
        "position",
        "size",
        "slot_off",
        "slot_page",
        "slot_split",
    )

    def __init__(self, spec: ClassSpec, header: int, position: int) -> None:
        self.position = position
        self.index = spec.index
        self.size = spec.size
        self.pages_per_zspage = spec.pages_per_zspage
        self.objs_per_zspage = spec.objs_per_zspage
        self.huge = spec.huge
        # Huge objects fill their page: the owner lives beside the zspage instead.
        self.header = 0 if spec.huge else header
        self.capacity = self.size - self.header
        self.gtab = group_table(self.objs_per_zspage)
        self.heads: list[ZsPage | None] = [None] * N_GROUPS
        self.counts = [0] * N_GROUPS
        self.nonfull = 0
        self.empties = 0
        self.objs_allocated = 0
        self.objs_used = 0
        self.pages_used = 0
        # Where slot i starts (page within the zspage, offset in that page) and
        # how many of its data bytes fit before the page ends.
        offs = [i * self.size for i in range(self.objs_per_zspage)]
        self.slot_page = array("H", [o >> PAGE_SHIFT for o in offs])
        self.slot_off = array("H", [o & (PAGE_SIZE - 1) for o in offs])
        self.slot_split = array(
            "H",
            [min(self.capacity, PAGE_SIZE - (o & (PAGE_SIZE - 1)) - self.header) for o in offs],
        )


def slot_address(z: ZsPage, idx: int) -> int:
    """Arena address of slot ``idx`` of ``z`` (its header, where it has one).

    malloc and free write this expression out: a call costs a tenth of their time.
    """
    cls = z.cls
    return (z.pages[cls.slot_page[idx]] << PAGE_SHIFT) + cls.slot_off[idx]


def group_table(objs: int) -> bytes:
    """inuse -> fullness group, for a zspage of ``objs`` slots."""
    return bytes(fullness_group(n, objs) for n in range(objs + 1))


def insert_zspage(cls: SizeClass, z: ZsPage, group: int) -> None:
    """Put ``z`` at the head of ``cls``'s list for ``group``."""
    head = cls.heads[group]
    z.prev = None
    z.next = head
    if head is not None:
        head.prev = z
    cls.heads[group] = z
    z.fullness = group
    cls.counts[group] += 1
    cls.nonfull |= (1 << group) & NONFULL_BITS


def remove_zspage(cls: SizeClass, z: ZsPage) -> None:
    """Take ``z`` off the list it is on."""
    group = z.fullness
    if z.prev is not None:
        z.prev.next = z.next
    else:
        cls.heads[group] = z.next
    if z.next is not None:
        z.next.prev = z.prev
    z.prev = z.next = None
    cls.counts[group] -= 1
    if cls.heads[group] is None:
        cls.nonfull &= ~(1 << group)
