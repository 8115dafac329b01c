"""Small helpers shared by the benchmarks: timing, medians, tables, RSS."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import compressors

__all__ = [
    "BARE",
    "bare_label",
    "bare_lz4_rates",
    "compressor_versions",
    "each",
    "format_table",
    "rss_bytes",
    "rss_of",
    "sample_pages",
    "timed_rate",
    "wait_for_path",
]


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


def wait_for_path(path: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Wait until ``proc`` has created ``path`` (its socket); a daemon on a loaded
    machine may take 30 s to import its web stack, so the bound is only for a hang."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not open {path}")
        time.sleep(0.05)


def rss_of(pid: int) -> int:
    """Another process's resident set, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sample_pages(pages: Sequence[bytes], n: int) -> list[bytes]:
    """About ``n`` pages spread evenly over ``pages`` (at most ``n``)."""
    return list(pages[:: max(1, len(pages) // n)])[:n]


#: The baseline the service suites are measured against: the lz4 their pools
#: use (the kernel's, reproduced), called directly, with no service around it.
BARE = compressors.get("lz4")


def bare_label() -> str:
    """Which compressor the bare baseline is, for a table's header."""
    # The pools' lz4 decodes in C without a call a page (the compiled page store);
    # its bare decompress is the compressor's own method, python-lz4's liblz4.
    return (
        f"bare = the pools' own lz4 called directly, a Python call a page: {BARE.version}; "
        "its decompress is liblz4's (python-lz4)"
    )


def compressor_versions() -> dict[str, dict[str, str]]:
    """lz4's and zstd's version and fidelity, for a result's header."""
    out = {}
    for name in ("lz4", "zstd"):
        comp = compressors.get(name)
        out[name] = {"version": comp.version, "fidelity": comp.fidelity}
    return out


def bare_lz4_rates(pages: Sequence[bytes], blobs: Sequence[bytes]) -> tuple[float, float]:
    """(compress, decompress) pages/s of bare :data:`BARE` on these pages, now."""
    compress = timed_rate(lambda: each(BARE.compress, pages), len(pages))
    decompress = timed_rate(lambda: each(partial(BARE.decompress, size=4096), blobs), len(blobs))
    return compress, decompress


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
