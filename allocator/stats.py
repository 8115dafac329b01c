"""Figures a pool reports: the debugfs ``classes`` rows and a pool summary."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["FULLNESS_LABELS", "ClassStats", "Fullness", "PoolStats", "fullness_group"]


class Fullness(IntEnum):
    """Today's kernel's 12 fullness groups (objects in use / objects per zspage).

    EMPTY holds no object, FULL every slot; RATIO_10 .. RATIO_90 cover
    [0, 10%) .. [80, 90%) and RATIO_99 covers [90%, 100%).  Allocation takes the
    fullest non-full zspage, so pools stay dense.
    """

    EMPTY = 0
    RATIO_10 = 1
    RATIO_20 = 2
    RATIO_30 = 3
    RATIO_40 = 4
    RATIO_50 = 5
    RATIO_60 = 6
    RATIO_70 = 7
    RATIO_80 = 8
    RATIO_90 = 9
    RATIO_99 = 10
    FULL = 11


# Column headings of the kernel's debugfs table, indexed by Fullness.
FULLNESS_LABELS = ("0", "10", "20", "30", "40", "50", "60", "70", "80", "90", "99", "100")


def fullness_group(inuse: int, objs_per_zspage: int) -> Fullness:
    """The group of a zspage with ``inuse`` of ``objs_per_zspage`` slots used."""
    if inuse == 0:
        return Fullness.EMPTY
    if inuse == objs_per_zspage:
        return Fullness.FULL
    # One object of 127 would round to 0%: it belongs in RATIO_10 all the same.
    return Fullness(100 * inuse // objs_per_zspage // 10 + 1)


@dataclass(frozen=True, slots=True)
class ClassStats:
    """One row of the kernel's debugfs ``classes`` table (plus EMPTY zspages).

    Attributes:
        index: the kernel's class index.
        size: slot size, header included.
        pages_per_zspage, objs_per_zspage: the class's shape.
        zspages: zspages per fullness group, indexed by :class:`Fullness`.
        objs_allocated: slots in this class's zspages.
        objs_used: slots holding an object.
        pages_used: pages in this class's zspages.
        freeable: pages compaction could release,
            (objs_allocated - objs_used) // objs_per_zspage * pages_per_zspage.
    """

    index: int
    size: int
    pages_per_zspage: int
    objs_per_zspage: int
    zspages: tuple[int, ...]
    objs_allocated: int
    objs_used: int
    pages_used: int
    freeable: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A pool's summary.

    Attributes:
        pages: pages held now; total_size_bytes = pages * 4096.
        pages_max: high-water mark of ``pages``.
        max_pages: the page budget (None: unbounded).
        objs_used: live objects; objs_allocated: slots in all zspages.
        zspages: zspages held.
        pages_compacted: pages released by compaction since creation.
        alloc_failures: mallocs refused for want of pages.
        handle_table_bytes: memory of the handle indirection table.
    """

    pages: int
    pages_max: int
    max_pages: int | None
    objs_used: int
    objs_allocated: int
    zspages: int
    pages_compacted: int
    alloc_failures: int
    handle_table_bytes: int

    @property
    def total_size_bytes(self) -> int:
        return self.pages * 4096
