"""The figures of a shadow, printed: the same lines live (``zswapd shadow``) and
replayed (``zswapd replay``), so a recorded day and its replays read alike.

Each tick prints one line per process (and, live, one for the pool); the end
prints a table per process, what its columns mean where a newcomer could
misread them, the pool's line and the run's.  One vocabulary throughout: sizes
in zramctl's units (powers of 1024: ``4K``, ``10.8M``; exact bytes in
``--json``, and in the text wherever rounding would hide what a line says),
times as seconds since the start (``t=``), and the pool's figures under the
names a zram user reads them by: zramctl's DATA, COMPR and TOTAL and RATIO
(DATA/TOTAL, as ``zswapd stats`` prints it), the kernel's own for the rest
(``mem_used_max``, ``same_pages``, ``huge_pages``, ``bd_count``, ``bd_reads``,
``pool_limit_hit``, ``written_back_pages``).

Two figures are easy to misread, and the lines say so: "saved" is what
compression saves in RAM (pages written back to a backing file are out of RAM
too, but they cost disk, and are shown apart, "on disk"); a process's "saved"
is the pool's, split by the pages each process has stored.  And under a
detection that sees writes only (hash, soft-dirty), a page that is only read
is never brought back: COLD, STORED, DATA and SAVED are upper bounds (a
page only read looks cold) and REFAULTS a lower bound (write refaults
only).  ``pool_limit_hit`` is the daemon's count of refused stores, a batch
of pages each, where zswap's debugfs counts pages.  And RESIDENT is
every private anonymous page of a process (its heap and stacks as much as the
data it was started for), the pages swap could take.

The shadow's own cost is printed too: the CPU seconds its scans took per GiB
they read (``scan_cost``), the figure the README's measurements are in.
"""

from __future__ import annotations

from typing import Any

from zswapd.cli_format import WORDS, count, human, printable, ratio, table
from zswapd.swapsim import PoolFigures, ProcessFigures, ShadowFigures

__all__ = [
    "FRAGMENTED_TOTAL_PER_COMPR",
    "POOL_LEGEND",
    "STORED_LEGEND",
    "SUMMARY_COLUMNS",
    "bounds_label",
    "cpu_seconds_per_gib",
    "format_pool_tick",
    "format_summary",
    "format_tick",
    "refaults_label",
    "refaults_per_second",
    "rejected_pages",
    "scan_cost",
    "size",
]

GIB = 1 << 30

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
    "CPU-S/GIB",
    "EXITED",
)


def size(n: int) -> str:
    """``n`` bytes in zramctl's units, with the exact bytes beside them when the
    rounding hides some (a limit of 1500 bytes is ``1.5K (1500 bytes)``)."""
    text = human(n)
    for exp, unit in enumerate("BKMGTPE"):
        if text.endswith(unit) and float(text[:-1].lstrip("-")) * 1024**exp == abs(n):
            return text
    return f"{text} ({n} bytes)"


def cpu_seconds_per_gib(seconds: float, scanned_bytes: int) -> float | None:
    """The scans' CPU seconds per GiB they read (None: nothing read)."""
    return seconds * GIB / scanned_bytes if scanned_bytes else None


def scan_cost(fig: ShadowFigures) -> dict[str, Any]:
    """The shadow's own cost over the run, every process's scans together: the
    CPU seconds they took, the bytes they read, and their ratio per GiB (the
    ``--json`` summary's ``scan_cost``; a replay gives the recorded scans')."""
    seconds = sum(p.scan_seconds_total for p in fig.processes)
    scanned = sum(p.scanned_bytes_total for p in fig.processes)
    return {
        "scan_seconds_total": seconds,
        "scanned_bytes_total": scanned,
        "cpu_seconds_per_gib": cpu_seconds_per_gib(seconds, scanned),
    }


def _per_gib(seconds: float, scanned_bytes: int) -> str:
    cost = cpu_seconds_per_gib(seconds, scanned_bytes)
    return "-" if cost is None else f"{cost:.2f}"


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


def bounds_label(detection: str | None) -> str | None:
    """What the figures bound under a detection that sees writes only (None:
    reads are seen too, or the detection is unknown: no such bound).

    A page only read is never seen touched there: it goes cold, is stored and
    saved as if idle, and is never faulted back.  Measured: a 4 MiB region read
    every second was counted stored and saved, 14% of what was stored.
    """
    if refaults_label(detection) == "refaults":
        return None
    return (
        f"{detection} detection sees writes only: COLD, STORED, DATA and SAVED are upper "
        "bounds (a page only read looks cold) and REFAULTS a lower bound (write refaults only)"
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
        exited = now.exited_at(p.pid)
        state = f" exited at t={exited:.1f}s" if exited is not None else ""
        lines.append(
            f"t={now.t:8.1f}s pid {p.pid} ({printable(p.comm)}){state}: "
            f"resident {p.resident_pages} cold {p.cold_pages} stored {p.stored_pages} pages, "
            f"saved {human(p.saved_bytes)}, refaults/s {rate:.2f}, scan {scan:.3f}s of CPU"
        )
    return lines


def _sizes(pool: PoolFigures) -> str:
    """zramctl's DATA, COMPR, TOTAL, RATIO, and the saving in RAM.

    zram's DATA counts the pages written back too, so with pages on disk the
    ratio of what is kept in RAM is said beside zramctl's.
    """
    disk = in_ram = ""
    if pool.bd_count:
        disk = f" (on disk {human(pool.disk_bytes)})"
        in_ram = f" (in RAM {ratio(pool.ram_data_bytes, pool.mem_used_total)})"
    return (
        f"DATA {human(pool.orig_data_size)}{disk} COMPR {human(pool.compr_data_size)} "
        f"TOTAL {human(pool.mem_used_total)} "
        f"RATIO {ratio(pool.orig_data_size, pool.mem_used_total)}{in_ram} "
        f"SAVED {human(pool.saved_bytes)}"
    )


def _disk(pool: PoolFigures) -> str:
    return f"bd_count {pool.bd_count} bd_reads {pool.bd_reads}"


def format_pool_tick(fig: ShadowFigures) -> str:
    """The pool's line for the interval that ended at ``fig.t``."""
    pool = fig.pool
    line = f"t={fig.t:8.1f}s pool: {_sizes(pool)}"
    if pool.bd_count or pool.bd_reads:
        line += f"; {_disk(pool)}"
    if fig.run.foreign_pages:
        line += f"; {fig.run.foreign_pages:+d} pages not the shadow's"
    if fig.run.lost_pages:
        line += f"; {fig.run.lost_pages} lost (freed by another client)"
    return line


def _max_above_limit(pool: PoolFigures) -> bool:
    return 0 < pool.mem_limit < pool.mem_used_max


def _max_and_limit(pool: PoolFigures) -> str:
    """mem_used_max and mem_limit, in exact bytes when the one is above the
    other (rounded, 1M and 1M would read as equal)."""
    if _max_above_limit(pool):
        return f"mem_used_max {pool.mem_used_max} bytes > mem_limit {pool.mem_limit} bytes"
    limit = size(pool.mem_limit) if pool.mem_limit else "none"
    return f"mem_used_max {human(pool.mem_used_max)} mem_limit {limit}"


def rejected_pages(fig: ShadowFigures) -> int:
    """Pages the pool refused, each counted at its first refusal (REJECTED, summed)."""
    return sum(p.rejected_total for p in fig.processes)


def _limit_hit(fig: ShadowFigures, writeback: str | None) -> str:
    """``pool_limit_hit`` and, when not 0, what it counts: the daemon counts a
    refused store (a batch of pages) once, zswap's debugfs every page."""
    hits = fig.pool.pool_limit_hit
    if not hits:
        return "pool_limit_hit 0"
    if writeback == "lru":
        return (
            f"pool_limit_hit {hits} (stores that found the pool full and wrote back first, "
            "a batch each; zswap counts pages)"
        )
    return (
        f"pool_limit_hit {hits} (refused batches; zswap counts pages: "
        f"REJECTED {rejected_pages(fig)})"
    )


def _pool_line(fig: ShadowFigures, writeback: str | None = None) -> str:
    pool = fig.pool
    return (
        f"pool at the last tick, t={fig.t:.1f}s: {_sizes(pool)}; {_max_and_limit(pool)}; "
        f"same_pages {pool.same_pages} huge_pages {pool.huge_pages}; {_disk(pool)} "
        f"written_back_pages {pool.written_back_pages}; {_limit_hit(fig, writeback)}"
    )


def _column_notes(fig: ShadowFigures, detection: str | None) -> list[str]:
    """What the table's columns mean where they could be misread."""
    notes = [
        "RESIDENT: every private anonymous page of the process present in RAM (its heap "
        "and stacks too, not only its data): what swap could take; COLD and STORED are "
        "among them",
        STORED_LEGEND,
        "SAVED: the pool's saving in RAM, split between processes by their stored pages",
        f"REFAULTS/S: the run's mean, REFAULTS over its {fig.t:.1f}s",
        "CPU-S/GIB: the shadow's own scan cost, CPU seconds per GiB its scans read",
    ]
    if fig.run.exited_at:
        notes.append(
            "EXITED: an exited process's RESIDENT, COLD, STORED and SAVED are zero: its "
            "pages were freed; the run's peak line keeps what it held"
        )
    bounds = bounds_label(detection)
    if bounds is not None:
        notes.append(
            f"REFAULTS: writes only ({detection} detection): a stored page that is only "
            "read never comes back here, whereas zswap would fault it back in"
        )
        notes.append(f"bounds: {bounds}")
    return notes


# What STORED counts, where zswap's debugfs stored_pages counts the pool only.
STORED_LEGEND = (
    "STORED: in the pool or written back from it (bd_count of them on disk), unlike "
    "zswap's debugfs stored_pages (in the pool only)"
)

# What the pool's line says, in zram's words: once, under it.
POOL_LEGEND = (
    "DATA, COMPR, TOTAL: zramctl's (mm_stat's orig_data_size, compr_data_size, "
    "mem_used_total); RATIO: DATA/TOTAL, the effective ratio, the pool's overhead "
    "included (what is often called the compression ratio, DATA/COMPR, leaves it out); "
    "SAVED: DATA - TOTAL - the pages on disk "
    "(bd_count, written back: out of RAM at a disk write each, not saved by compression)"
)


# TOTAL above this many times COMPR, with pages written back, is said to be
# fragmentation: zsmalloc's own overhead (class rounding, a zspage's tail) is
# far below it in a pool of any size, so past it the zspages are part-used.
FRAGMENTED_TOTAL_PER_COMPR = 2


def _rejected_note(fig: ShadowFigures, writeback: str | None, replayed: bool) -> str | None:
    """What refused pages would have been under zswap: a pool without writeback
    is zram without a backing device, its refused pages waiting in RAM; zswap
    at its limit sends them to the swap device instead."""
    rejected = rejected_pages(fig)
    if not rejected or writeback == "lru" or not fig.pool.pool_limit_hit:
        return None
    how = (
        "replay with --writeback lru for close to zswap's behaviour"
        if replayed
        else "for close to zswap's behaviour, shadow into a pool made with writeback lru, "
        "or replay a --record with --writeback lru"
    )
    return (
        f"REJECTED {rejected}: under zswap these would have gone to the swap device "
        f"(here, as zram without a backing device, they wait in RAM, and a write to one "
        f"is no refault: REFAULTS undercounts what zswap would swap in); {how} (lru writes "
        "back the oldest pages and stores the new one; zswap rejects the new page, which "
        "goes to the swap device uncounted in written_back_pages, and its shrink worker "
        "writes back LRU pages later, down to accept_thr_percent)"
    )


def _fragmentation_note(fig: ShadowFigures, replayed: bool) -> str | None:
    pool = fig.pool
    if not pool.bd_count or pool.mem_used_total <= FRAGMENTED_TOTAL_PER_COMPR * max(
        1, pool.compr_data_size
    ):
        return None
    after = (
        "a replay does not compact"
        if replayed
        else "zswapd compact --pool NAME releases it while the shadow runs"
    )
    return (
        f"TOTAL {human(pool.mem_used_total)} is over {FRAGMENTED_TOTAL_PER_COMPR}x COMPR "
        f"{human(pool.compr_data_size)} after writeback: zsmalloc fragmentation (the objects "
        "written back left their zspages part-used); compaction would release the empty "
        f"room: the kernel's zsmalloc shrinker does under memory pressure, {after}. "
        f"written_back_pages {pool.written_back_pages} and bd_count {pool.bd_count} are "
        "inflated by it: writeback frees scattered slots, TOTAL barely drops, so writeback "
        "goes on until the threshold (the kernel's zswap measures its pool by zsmalloc's "
        "total pages too, and cascades the same way until the shrinker compacts)"
    )


def _pool_notes(
    fig: ShadowFigures, writeback: str | None = None, replayed: bool = False
) -> list[str]:
    """The run's figures, and what the pool line means where it could be misread."""
    pool, run = fig.pool, fig.run
    notes = [POOL_LEGEND]
    for note in (_rejected_note(fig, writeback, replayed), _fragmentation_note(fig, replayed)):
        if note is not None:
            notes.append(note)
    if _max_above_limit(pool):
        above = pool.mem_used_max - pool.mem_limit
        then = (
            "the limit check then writes older pages back to make room"
            if writeback == "lru"
            else "the limit then refuses it and frees it"
        )
        notes.append(
            f"mem_used_max above mem_limit by {size(above)}: as zram, a store counts its new "
            f"zspage in the maximum before the limit is checked; {then}"
        )
    if run.ticks:
        notes.append(
            f"over {count(run.ticks, 'tick')}: stored pages peak {run.peak_stored_pages}, "
            f"mean over time {run.mean_stored_pages:.1f}; "
            f"RAM saved: peak {human(run.peak_saved_bytes)}, "
            f"mean {human(round(run.mean_saved_bytes))}"
        )
    if pool.saved_bytes < 0:
        notes.append(
            f"SAVED {human(pool.saved_bytes)} below zero: the per-class zspage overhead of a "
            "small dedicated pool outweighs what it compressed; a shared pool absorbs it"
        )
    cost = scan_cost(fig)
    recorded = " (recorded)" if replayed else ""
    notes.append(
        f"scan cost{recorded}: {cost['scan_seconds_total']:.2f}s of CPU for "
        f"{human(cost['scanned_bytes_total'])} read, "
        f"{_per_gib(cost['scan_seconds_total'], cost['scanned_bytes_total'])} CPU s per GiB "
        "scanned (the shadow's own CPU; its stores into the pool not counted)"
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


def format_summary(
    fig: ShadowFigures,
    detection: str | None = None,
    *,
    writeback: str | None = None,
    replayed: bool = False,
) -> str:
    """Every figure at the end: a row per process, notes, the pool's line.

    Args:
        fig: the last tick's figures.
        detection: how the shadow saw change (a Detection's name: ``hash``,
            ``soft-dirty``, ``hash+idle``, ...; a record's header keeps it);
            None: unknown, the refaults go unlabelled.
        writeback: the pool's writeback mode (``manual``, ``lru``; None:
            unknown), which says what ``pool_limit_hit`` counts and whether
            refused pages are what zswap would have sent to the swap device.
        replayed: the figures are a replay's (the notes name its flags).
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
                "CPU-S/GIB": _per_gib(p.scan_seconds_total, p.scanned_bytes_total),
                "EXITED": f"at t={exited:.1f}s" if exited is not None else "-",
            }
        )
    lines = [
        table(SUMMARY_COLUMNS, rows, WORDS | {"COMM"}),
        *_column_notes(fig, detection),
        _pool_line(fig, writeback),
        *_pool_notes(fig, writeback, replayed),
    ]
    return "\n".join(lines)
