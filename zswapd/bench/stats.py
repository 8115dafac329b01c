"""Small helpers shared by the benchmarks: timing, medians, tables, RSS."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["each", "format_table", "rss_bytes", "timed_rate"]


def timed_rate(fn: Callable[[], object], count: int) -> float:
    """``count`` / seconds taken by one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def each(fn: Callable[[Any], object], items: Iterable[Any]) -> None:
    """Call ``fn`` on every item, keeping no result (a list of 4 KiB results
    would charge the timing for allocating and faulting in their memory)."""
    for item in items:
        fn(item)


def rss_bytes() -> int:
    """This process's resident set, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (first column left, the rest right)."""
    cells = [[str(h) for h in headers]] + [
        [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
