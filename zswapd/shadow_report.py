"""The figures of a shadow, printed: the same lines live (``zswapd shadow``) and
replayed (``zswapd replay``), so a recorded day and its replays read alike.

Each tick prints one line per process; the end prints a table per process and
one line for the pool, in zramctl's units.
"""

from __future__ import annotations

from zswapd.cli_format import WORDS, human, printable, ratio, table
from zswapd.swapsim import ProcessFigures, ShadowFigures

__all__ = ["SUMMARY_COLUMNS", "format_summary", "format_tick", "refaults_per_second"]

SUMMARY_COLUMNS = (
    "PID",
    "COMM",
    "RESIDENT",
    "COLD",
    "STORED",
    "SAVED",
    "SWAPOUTS",
    "REFAULTS",
    "REFAULTS/S",
    "REJECTED",
    "SCAN-CPU",
    "SCANNED",
)


def refaults_per_second(
    now: ProcessFigures, before: ProcessFigures | None, seconds: float
) -> float:
    """Refaults per second over ``seconds`` since ``before`` (None: since the start)."""
    if seconds <= 0:
        return 0.0
    return (now.refaults_total - (before.refaults_total if before else 0)) / seconds


def format_tick(now: ShadowFigures, before: ShadowFigures | None) -> list[str]:
    """One line per process for the interval that ended at ``now.t``."""
    previous = {p.pid: p for p in before.processes} if before else {}
    seconds = now.t - (before.t if before else 0.0)
    lines = []
    for p in now.processes:
        was = previous.get(p.pid)
        rate = refaults_per_second(p, was, seconds)
        scan = p.scan_seconds_total - (was.scan_seconds_total if was else 0.0)
        state = " exited" if p.exited else ""
        lines.append(
            f"t={now.t:8.1f}s pid {p.pid} ({printable(p.comm)}){state}: "
            f"resident {p.resident_pages} cold {p.cold_pages} stored {p.stored_pages} "
            f"saved {human(p.saved_bytes)} refaults/s {rate:.2f} scan {scan:.3f}s"
        )
    return lines


def format_summary(fig: ShadowFigures) -> str:
    """Every figure at the end: a row per process, then the pool's line."""
    rows = [
        {
            "PID": str(p.pid),
            "COMM": p.comm,
            "RESIDENT": str(p.resident_pages),
            "COLD": str(p.cold_pages),
            "STORED": str(p.stored_pages),
            "SAVED": human(p.saved_bytes),
            "SWAPOUTS": str(p.swapouts_total),
            "REFAULTS": str(p.refaults_total),
            "REFAULTS/S": f"{refaults_per_second(p, None, fig.t):.2f}",
            "REJECTED": str(p.rejected_total),
            "SCAN-CPU": f"{p.scan_seconds_total:.2f}s",
            "SCANNED": human(p.scanned_bytes_total),
        }
        for p in fig.processes
    ]
    pool = fig.pool
    pool_line = (
        f"pool after {fig.t:.1f}s: data {human(pool.orig_data_size)} "
        f"compr {human(pool.compr_data_size)} total {human(pool.mem_used_total)} "
        f"(max {human(pool.mem_used_max)}) ratio {ratio(pool.orig_data_size, pool.mem_used_total)} "
        f"saved {human(pool.saved_bytes)} same {pool.same_pages} huge {pool.huge_pages} "
        f"on disk {pool.bd_count} limit hits {pool.pool_limit_hit}"
    )
    return table(SUMMARY_COLUMNS, rows, WORDS | {"COMM"}) + "\n" + pool_line
