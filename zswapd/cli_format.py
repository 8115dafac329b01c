"""How the command line prints figures: zramctl's units and tables, debugfs's classes.

A person who reads ``zramctl`` every day expects ``1.2G`` and ``340.5M`` (powers
of 1024, one decimal only where it says something), a header row in capitals,
names left-aligned and figures right-aligned; this module gives them that, from
the JSON the API answers, and nothing else (no I/O, no client).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Collection, Sequence
from typing import Any

from allocator.stats import FULLNESS_LABELS

__all__ = [
    "WORDS",
    "algorithm",
    "count",
    "excerpt",
    "format_classes",
    "human",
    "limit",
    "parse_duration",
    "pool_row",
    "positive_int",
    "printable",
    "printable_lines",
    "ratio",
    "table",
]

_UNITS = "BKMGTPE"
# Columns of words, printed left-aligned unless a table says otherwise; figures go right.
WORDS = frozenset({"NAME", "ALGORITHM"})
# The debugfs ``classes`` fullness columns, in its order.
_FULLNESS = FULLNESS_LABELS[1:]  # debugfs prints no column for empty zspages


def human(n: int) -> str:
    """``n`` bytes as zramctl prints sizes: ``0B``, ``4K``, ``340.5M``, ``1.2G``.

    Powers of 1024; one decimal, dropped when it is 0 (util-linux's
    size_to_human_string); a negative figure (memory spent, not saved) keeps its sign.
    """
    if n < 0:
        return "-" + human(-n)
    exp = 0
    value = float(n)
    while value >= 1024 and exp < len(_UNITS) - 1:
        value /= 1024
        exp += 1
    text = f"{value:.1f}"
    if text.endswith(".0"):
        text = text[:-2]
    if text == "1024":  # 1023.96K rounds up: say 1M, as a person would
        return human(1024 ** (exp + 1))
    return f"{text}{_UNITS[exp]}"


def printable(text: str) -> str:
    """``text`` with control characters escaped: a name a client chose (a backing
    file's) cannot move the cursor or recolour the terminal of whoever reads stats."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def count(n: int, noun: str) -> str:
    """``1 page``, ``2 pages``, ``0 pages``: a figure and its noun, in the right number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def printable_lines(text: str) -> str:
    """:func:`printable` line by line: the newlines a table is made of stay."""
    return "\n".join(printable(line) for line in text.split("\n"))


# The most of a user's (or a server's) bad input an error message quotes: enough
# to recognise it, never the whole of a file piped in by mistake.
EXCERPT_CHARS = 40


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` quoted for a message: its first ``limit`` characters, ``...`` if cut."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + "..."


def algorithm(config: dict[str, Any]) -> str:
    """The compressor and its level as zram writes a priority's parameters: ``zstd:3``, ``lz4``."""
    level = config.get("level")
    return str(config["compressor"]) + ("" if level is None else f":{level}")


def limit(config: dict[str, Any]) -> str:
    """A pool's memory limit in human units, ``none`` for none (zram's mem_limit 0)."""
    n = int(config.get("limit_bytes") or 0)
    return human(n) if n else "none"


def ratio(data: int, total: int) -> str:
    """DATA/TOTAL (orig_data_size / mem_used_total) to two decimals; ``-`` with no memory used."""
    return f"{data / total:.2f}" if total else "-"


def pool_row(name: str, stats: dict[str, Any], disksize: int | None = None) -> dict[str, str]:
    """One zramctl-like row of a pool's (or device's) stats.

    Args:
        name: the pool or device name.
        stats: ``GET /v1/pools/{name}/stats`` (its ``config`` and ``mm_stat``).
        disksize: a device's size in bytes; None for a pool (printed ``-``).
    """
    mm = stats["mm_stat"]
    data, total = int(mm["orig_data_size"]), int(mm["mem_used_total"])
    return {
        "NAME": name,
        "ALGORITHM": algorithm(stats["config"]),
        "DISKSIZE": "-" if disksize is None else human(disksize),
        "MEM-LIMIT": limit(stats["config"]),
        "DATA": human(data),
        "COMPR": human(int(mm["compr_data_size"])),
        "TOTAL": human(total),
        "ZERO-PAGES": str(mm["same_pages"]),
        "HUGE": str(mm["huge_pages"]),
        "RATIO": ratio(data, total),
        "SAVED": human(data - total),
    }


def table(
    columns: Sequence[str], rows: Sequence[dict[str, str]], words: Collection[str] = WORDS
) -> str:
    """Rows under a header, each column as wide as its widest cell; the columns
    of ``words`` left-aligned, figures right (zramctl's layout)."""
    # Cells come from a server's answer: none may reach the terminal raw.
    rows = [{c: printable(str(r[c])) for c in columns} for r in rows]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}

    def line(cells: dict[str, str]) -> str:
        parts = [
            cells[c].ljust(widths[c]) if c in words else cells[c].rjust(widths[c]) for c in columns
        ]
        return " ".join(parts).rstrip()

    return "\n".join([line({c: c for c in columns}), *(line(r) for r in rows)])


def format_classes(rows: list[dict[str, Any]]) -> str:
    """The class table as the kernel's debugfs ``classes`` file prints it."""
    head = (
        f"{'class':>6} {'size':>5} "
        + " ".join(f"{s + '%':>9}" for s in _FULLNESS)
        + f" {'obj_allocated':>13} {'obj_used':>10} {'pages_used':>10}"
        + f" {'pages_per_zspage':>16} {'freeable':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['class']:>6} {r['size']:>5} "
            + " ".join(f"{r[s]:>9}" for s in _FULLNESS)
            + f" {r['obj_allocated']:>13} {r['obj_used']:>10} {r['pages_used']:>10}"
            + f" {r['pages_per_zspage']:>16} {r['freeable']:>8}"
        )
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# A year: a longer run or wait is a typo, and past it a float's seconds still add up exactly.
MAX_DURATION = 366 * 86400.0


def parse_duration(text: str, *, zero: bool = False) -> float:
    """An argparse type: ``500ms``, ``10s``, ``2m``, ``1h`` or plain seconds, as seconds.

    Args:
        zero: whether 0 is allowed (``--cold-after 0``: cold at first sight).
    """
    m = _DURATION.fullmatch(text.strip())
    value = float(m[1]) * _DURATION_UNITS[m[2]] if m else math.nan
    if not m or not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"invalid duration {excerpt(text)}: use 500ms, 10s, 2m, 1h or plain seconds"
        )
    if value > MAX_DURATION or (value <= 0 and not zero):
        least = "0 or more" if zero else "more than 0"
        raise argparse.ArgumentTypeError(
            f"duration {excerpt(text)} out of range: {least}, at most a year"
        )
    return value
