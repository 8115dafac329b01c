"""Reading what a real kernel's zram reported (../shared/corpus/kernel/*.txt)."""

from __future__ import annotations

import re
from pathlib import Path

from allocator import ClassStats

__all__ = ["OBJ_ALLOCATED", "PAGES_USED", "debugfs_row", "parse_oracle", "rows_diff"]

# Columns of a debugfs class row: class, size, 11 fullness steps, then these.
OBJ_ALLOCATED, PAGES_USED = 13, 15


def debugfs_row(c: ClassStats) -> list[int]:
    """A class row as the kernel's debugfs prints it (no column for EMPTY)."""
    return [
        c.index,
        c.size,
        *c.zspages[1:],
        c.objs_allocated,
        c.objs_used,
        c.pages_used,
        c.pages_per_zspage,
        c.freeable,
    ]


def parse_oracle(path: Path) -> dict[str, dict[str, object]]:
    """{stage: {"mm_stat": {name: int}, "classes": {index: row}}} from a kernel dump."""
    stages: dict[str, dict[str, object]] = {}
    stage: dict[str, object] | None = None
    in_classes = False
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            stage = stages[m.group(1)] = {"mm_stat": {}, "classes": {}}
        elif stage is None:
            continue
        elif line.startswith("classes: begin"):
            in_classes = True
        elif line.startswith("classes: end"):
            in_classes = False
        elif in_classes and re.match(r"\s*\d", line):
            cols = [int(x) for x in line.split()]
            stage["classes"][cols[0]] = cols  # type: ignore[index]
        elif m := re.match(r"mm_stat\.(\w+): (\d+)", line):
            stage["mm_stat"][m.group(1)] = int(m.group(2))  # type: ignore[index]
    return stages


def rows_diff(
    ours: dict[int, tuple[int, int]], kernel_rows: dict[int, list[int]], column: int
) -> float:
    """Sum over classes of |ours - kernel's| in one column, as a share of the kernel's total.

    ``ours`` maps a class index to (obj_allocated, pages_used).
    """
    pick = 0 if column == OBJ_ALLOCATED else 1
    diff = sum(abs(ours[i][pick] - row[column]) for i, row in kernel_rows.items())
    return diff / max(1, sum(row[column] for row in kernel_rows.values()))
