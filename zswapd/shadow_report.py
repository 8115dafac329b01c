"""The figures of a shadow, printed: the same lines live (``zswapd shadow``) and
replayed (``zswapd replay``), so a recorded day and its replays read alike.

Each tick prints one line per process (and, live, one for the pool); the end
prints a table per process, what its columns mean where a newcomer could
misread them, the pool's line and the run's, in zramctl's units.

Two figures are easy to misread, and the lines say so: "saved" is what
compression saves in RAM (pages written back to a backing file are out of RAM
too, but they cost disk, and are shown apart, "on disk"); a process's "saved"
is the pool's, split by the pages each process has stored.  And under a
detection that sees writes only (hash, soft-dirty), a page that is only read
is never brought back: the refaults are write refaults.
"""

from __future__ import annotations

from zswapd.cli_format import WORDS, human, printable, ratio, table
from zswapd.swapsim import PoolFigures, ProcessFigures, ShadowFigures

__all__ = [
    "SUMMARY_COLUMNS",
    "format_pool_tick",
    "format_summary",
    "format_tick",
    "refaults_label",
    "refaults_per_second",
]

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
    "EXITED",
)


def refaults_label(detection: str | None) -> str:
    """What a refault is under ``detection`` (a Detection's name, as a record's
    header keeps it; None: unknown).

    Without the idle-page bitmap only writes make a page hot, so only a write
    brings a stored page back: a read-mostly service refaults more under real
    zswap than the figures say.
    """
    if detection is None or "idle" in detection:
        return "refaults"
    return f"refaults (writes only: {detection} detection)"


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
        exited = now.exited_at(p.pid)
        state = f" exited at t={exited:.1f}s" if exited is not None else ""
        lines.append(
            f"t={now.t:8.1f}s pid {p.pid} ({printable(p.comm)}){state}: "
            f"resident {p.resident_pages} cold {p.cold_pages} stored {p.stored_pages} "
            f"saved {human(p.saved_bytes)} refaults/s {rate:.2f} scan {scan:.3f}s"
        )
    return lines


def _disk(pool: PoolFigures) -> str:
    return (
        f"; on disk {pool.bd_count} pages ({human(pool.disk_bytes)}), "
        f"{pool.bd_reads} read back from disk"
    )


def format_pool_tick(fig: ShadowFigures) -> str:
    """The pool's line for the interval that ended at ``fig.t``."""
    pool = fig.pool
    line = (
        f"t={fig.t:8.1f}s pool: stored {human(pool.ram_data_bytes)} in "
        f"{human(pool.mem_used_total)}, saved {human(pool.saved_bytes)} of RAM"
    )
    if pool.bd_count or pool.bd_reads:
        line += _disk(pool)
    if fig.run.foreign_pages:
        line += f"; {fig.run.foreign_pages:+d} pages not the shadow's"
    if fig.run.lost_pages:
        line += f"; {fig.run.lost_pages} lost (freed by another client)"
    return line


def _pool_line(fig: ShadowFigures) -> str:
    pool = fig.pool
    limit = f", limit {human(pool.mem_limit)}" if pool.mem_limit else ""
    return (
        f"pool after {fig.t:.1f}s: in RAM data {human(pool.ram_data_bytes)} "
        f"compr {human(pool.compr_data_size)} total {human(pool.mem_used_total)} "
        f"(max {human(pool.mem_used_max)}{limit}) "
        f"ratio {ratio(pool.ram_data_bytes, pool.mem_used_total)} "
        f"saved {human(pool.saved_bytes)}; same {pool.same_pages} huge {pool.huge_pages}"
        f"{_disk(pool)}; limit hits {pool.pool_limit_hit}"
    )


def _column_notes(detection: str | None) -> list[str]:
    """What the table's columns mean where they could be misread."""
    notes = ["SAVED: the pool's saving in RAM, split between processes by their stored pages"]
    if refaults_label(detection) != "refaults":
        notes.append(
            f"REFAULTS: writes only ({detection} detection): a stored page that is only "
            "read never comes back here, whereas zswap would fault it back in"
        )
    return notes


def _pool_notes(fig: ShadowFigures) -> list[str]:
    """The run's figures, and what the pool line means where it could be misread."""
    pool, run = fig.pool, fig.run
    notes = []
    if 0 < pool.mem_limit < pool.mem_used_max:
        notes.append(
            "max above the limit: as zram, a store counts its new zspage in the maximum "
            "before the limit refuses it and frees it"
        )
    if run.ticks:
        notes.append(
            f"over {run.ticks} ticks: stored pages peak {run.peak_stored_pages}, mean over time "
            f"{run.mean_stored_pages:.1f}; saved of RAM peak {human(run.peak_saved_bytes)}, "
            f"mean {human(round(run.mean_saved_bytes))}"
        )
    if run.foreign_ticks:
        notes.append(
            f"figures include pages the shadow did not store: the pool differed from the "
            f"shadow's own count at {run.foreign_ticks} of {run.ticks} ticks "
            f"({run.foreign_pages:+d} pages at the last)"
        )
    if run.lost_pages:
        notes.append(
            f"lost {run.lost_pages} pages: stored by the shadow, freed by another client "
            "(their handles answered stale_handle when loaded or freed); not counted as "
            "refaults, not stored any more"
        )
    return notes


def format_summary(fig: ShadowFigures, detection: str | None = None) -> str:
    """Every figure at the end: a row per process, notes, the pool's line.

    Args:
        fig: the last tick's figures.
        detection: how the shadow saw change (a Detection's name: ``hash``,
            ``soft-dirty``, ``hash+idle``, ...; a record's header keeps it);
            None: unknown, the refaults go unlabelled.
    """
    rows = []
    for p in fig.processes:
        exited = fig.exited_at(p.pid)
        rows.append(
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
                "EXITED": f"at t={exited:.1f}s" if exited is not None else "-",
            }
        )
    lines = [
        table(SUMMARY_COLUMNS, rows, WORDS | {"COMM"}),
        *_column_notes(detection),
        _pool_line(fig),
        *_pool_notes(fig),
    ]
    return "\n".join(lines)
