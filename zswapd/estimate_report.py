"""What ``zswapd estimate`` answers: a row per configuration, and which to pick.

The figures are computed by :mod:`zswapd.estimate`; this module holds them,
renders them as JSON and says in one line which configuration to choose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from zswapd.config import PoolConfig

__all__ = ["TIMING_PASSES", "Bound", "Config", "Estimate", "Row", "human_size", "recommend"]

# Compress and decompress costs are timed as the median of this many passes.
TIMING_PASSES = 3


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration: a compressor and its level (None: the backend's default)."""

    compressor: str
    level: int | None = None

    @property
    def label(self) -> str:
        """``lz4``, ``lz4hc:9``, ``zstd:-1``: NAME[:LEVEL] as --compressor takes it."""
        return self.compressor if self.level is None else f"{self.compressor}:{self.level}"


@dataclass(frozen=True, slots=True)
class Bound:
    """95% interval half-widths of a sampled row's figures (same units as the row)."""

    compr_data_size: int
    mem_used_total: int
    same_pages: int
    huge_pages: int


@dataclass(frozen=True, slots=True)
class Row:
    """What zram would report for the pages with one configuration.

    Attributes:
        orig_data_size, compr_data_size, mem_used_total, same_pages,
            huge_pages: zram's mm_stat figures (DATA, COMPR, TOTAL in zramctl).
        compress_us, decompress_us: wall-clock microseconds per page on this
            machine (median of passes; None where no page was timed).
        error: the 95% half-widths when the figures are a sample's, else None.
    """

    config: Config
    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    same_pages: int
    huge_pages: int
    compress_us: float | None
    decompress_us: float | None
    error: Bound | None = None

    @property
    def ratio(self) -> float:
        """DATA / TOTAL, as zramctl users compute it (inf when nothing is held)."""
        if not self.mem_used_total:
            return math.inf if self.orig_data_size else 0.0
        return self.orig_data_size / self.mem_used_total

    @property
    def saved(self) -> int:
        """Memory saved: DATA - TOTAL."""
        return self.orig_data_size - self.mem_used_total

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "algorithm": self.config.label,
            "compressor": self.config.compressor,
            "level": self.config.level,
            "orig_data_size": self.orig_data_size,
            "compr_data_size": self.compr_data_size,
            "mem_used_total": self.mem_used_total,
            "same_pages": self.same_pages,
            "huge_pages": self.huge_pages,
            "ratio": None if math.isinf(self.ratio) else round(self.ratio, 4),
            "saved_bytes": self.saved,
            "compress_us_per_page": _round(self.compress_us),
            "decompress_us_per_page": _round(self.decompress_us),
            "error": None,
        }
        if self.error is not None:
            err = asdict(self.error)
            low = self.mem_used_total - self.error.mem_used_total
            high = self.mem_used_total + self.error.mem_used_total
            err["saved_bytes"] = self.error.mem_used_total
            err["ratio_low"] = round(self.orig_data_size / high, 4) if high > 0 else None
            err["ratio_high"] = round(self.orig_data_size / low, 4) if low > 0 else None
            err["confidence"] = 0.95
            out["error"] = err
        return out


@dataclass
class Estimate:
    """The answer: one row per configuration, and how it was reached."""

    rows: list[Row]
    pages: int  # population: pages read
    sample: int | None  # pages sampled (None: every page used)
    seed: int | None
    timed_pages: int
    huge_class_size: int
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "sample": None
            if self.sample is None
            else {"pages": self.sample, "seed": self.seed, "confidence": 0.95},
            "allocator": {
                "name": "zsmalloc",
                "chain_size": PoolConfig().chain_size,
                "huge_class_size": self.huge_class_size,
            },
            "timing": {
                "pages": self.timed_pages,
                "passes": TIMING_PASSES,
                "statistic": "median",
                "clock": "wall",
            },
            "rows": [r.to_json() for r in self.rows],
            "left_out": [{"compressor": n, "why": why} for n, why in self.left_out],
            "recommendation": recommend(self.rows),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def recommend(rows: Sequence[Row]) -> str:
    """One line: which configuration, and why.

    The rule: the row that saves most wins, unless a cheaper one (lower
    compress cost per page) saves at least 90% as much; then the cheapest of
    those wins.  When the winner is not also the cheapest row overall, the
    cheapest is named as the choice where latency matters.
    """
    if not rows:
        return "nothing to recommend: no configuration was measured"
    best = max(rows, key=lambda r: (r.saved, -_cost(r)))
    if best.saved <= 0:
        return "no configuration saves memory on these pages: zram would not help here"
    near = [r for r in rows if r.saved >= 0.9 * best.saved]
    pick = min(near, key=lambda r: (_cost(r), -r.saved))
    fastest = min(rows, key=lambda r: (_cost(r), -r.saved))
    if pick is not best:
        said = (
            f"{_said(pick)}, within 10% of {best.config.label}'s {_human(best.saved)} "
            f"at {_us(best)}"
        )
        if fastest is pick or fastest.saved <= 0:
            return f"{said}: {pick.config.label}"
        return (
            f"{said}; {fastest.config.label} saves {_human(fastest.saved)} at {_us(fastest)}: "
            f"{pick.config.label}, or {fastest.config.label} if latency matters"
        )
    if fastest is best or fastest.saved <= 0:
        return f"{_said(best)}, the most and the fastest: {best.config.label}"
    return (
        f"{_said(best)}; {fastest.config.label} saves {_human(fastest.saved)} at "
        f"{_us(fastest)}: {best.config.label}, or {fastest.config.label} if latency matters"
    )


def _cost(row: Row) -> float:
    return math.inf if row.compress_us is None else row.compress_us


def _us(row: Row) -> str:
    return "?" if row.compress_us is None else f"{row.compress_us:.0f} us/page"


def _said(row: Row) -> str:
    return f"{row.config.label} saves {_human(row.saved)} (ratio {row.ratio:.2f}) at {_us(row)}"


def _human(n: int) -> str:
    """Bytes as zramctl prints them: 0B, 512B, 4K, 340.5M, 1.2G."""
    sign, n_abs = ("-", -n) if n < 0 else ("", n)
    if n_abs < 1024:
        return f"{sign}{n_abs}B"
    value = float(n_abs)
    for unit in "KMGTPE":
        value /= 1024
        if value < 1023.95 or unit == "E":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{sign}{text}{unit}"
    raise AssertionError("unreachable")


#: zramctl's units, for the table.
human_size = _human
