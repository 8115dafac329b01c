"""``zswapd bench http``: the HTTP path against bare lz4, side by side.

Starts a real daemon (``zswapd serve``, lz4 pool, loopback TCP) and drives it
from this process through the client library: store and load with 1 page and
64 pages per request, and a trivial endpoint (``/healthz``) for the fixed cost of
a request.  In the same run, bare lz4 compress and decompress of the
same pages: the pool's own lz4 (the kernel's, :data:`~zswapd.bench.stats.BARE`),
called directly.  Rates are pages/s; ratios are taken within a repeat and the median
over repeats is reported.  The client's own work is included, as a user's would be.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from zswapd.bench.stats import (
    BARE,
    bare_label,
    bare_lz4_rates,
    each,
    format_table,
    sample_pages,
    timed_rate,
)
from zswapd.client import Client

__all__ = ["render", "run", "start_daemon"]


def start_daemon(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """A ``zswapd serve`` subprocess on a free loopback port, and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zswapd.cli", "serve", "--http", "127.0.0.1:0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    # Generous: on a loaded machine importing FastAPI alone has taken 30 s.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if m := re.search(r"serving HTTP on (\S+)", line):
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("zswapd serve did not start")


def _per_request(c: Client, pages: Sequence[bytes], per: int) -> tuple[float, float]:
    """(store, load) pages/s with ``per`` pages a request; frees afterwards."""
    units = [list(pages[i : i + per]) for i in range(0, len(pages), per)]
    held: list[list[int]] = []
    start = time.perf_counter()
    for unit in units:
        held.append(c.store(unit))
    store = len(pages) / (time.perf_counter() - start)
    start = time.perf_counter()
    for handles in held:
        if per == 1:
            c.load_one(handles[0])
        else:
            c.load(handles)
    load = len(pages) / (time.perf_counter() - start)
    c.free([h for hs in held for h in hs])
    return store, load


def run(
    pages: Sequence[bytes],
    *,
    repeats: int = 5,
    n_pages: int = 4096,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every HTTP figure; returns a JSON-ready dict."""
    say = progress or (lambda msg: None)
    sample = sample_pages(pages, n_pages)
    blobs = [BARE.compress(p) for p in sample]
    proc, url = start_daemon("--compressor", "lz4", "--max-pages-per-request", "1024")
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "lz4_compress",
            "lz4_decompress",
            "store_1",
            "load_1",
            "store_64",
            "load_64",
            "healthz",
        )
    }
    try:
        with Client(url, batch_pages=64) as c:
            for r in range(repeats):
                say(f"repeat {r + 1} of {repeats}")
                c_rate, d_rate = bare_lz4_rates(sample, blobs)
                rows["lz4_compress"].append(c_rate)
                rows["lz4_decompress"].append(d_rate)
                one = sample[: len(sample) // 4]  # 1 page a request is slow: fewer pages
                s1, l1 = _per_request(c, one, 1)
                s64, l64 = _per_request(c, sample, 64)
                rows["store_1"].append(s1)
                rows["load_1"].append(l1)
                rows["store_64"].append(s64)
                rows["load_64"].append(l64)
                rows["healthz"].append(
                    timed_rate(lambda: each(lambda _: c.health(), range(2000)), 2000)
                )
    finally:
        proc.terminate()
        proc.wait(30)

    def ratio(key: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(rows[key], rows[base], strict=True))

    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "pages": len(sample),
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "bare": BARE.version,
        "rates_per_s": med,
        "ratio_to_lz4": {
            "store_1": ratio("store_1", "lz4_compress"),
            "store_64": ratio("store_64", "lz4_compress"),
            "load_1": ratio("load_1", "lz4_decompress"),
            "load_64": ratio("load_64", "lz4_decompress"),
        },
        # Microseconds a request costs beyond a trivial one, and the trivial one.
        "healthz_us": 1e6 / med["healthz"],
        "store_1_us": 1e6 / med["store_1"],
        "store_1_beyond_trivial_us": 1e6 / med["store_1"] - 1e6 / med["healthz"],
    }


def render(result: dict[str, Any]) -> str:
    rates, ratios = result["rates_per_s"], result["ratio_to_lz4"]
    rows = [
        ["lz4 compress (bare)", f"{rates['lz4_compress']:,.0f}", ""],
        ["lz4 decompress (bare)", f"{rates['lz4_decompress']:,.0f}", ""],
    ]
    for key in ("store_1", "store_64", "load_1", "load_64"):
        base = "compress" if key.startswith("store") else "decompress"
        rows.append(
            [
                f"HTTP {key.replace('_', ', ')} page(s)/request",
                f"{rates[key]:,.0f}",
                f"{ratios[key]:.3f} of lz4 {base}",
            ]
        )
    rows.append(["HTTP /healthz (requests/s)", f"{rates['healthz']:,.0f}", ""])
    return "\n".join(
        [
            f"HTTP on loopback, lz4 pool, {result['pages']} pages, median of "
            f"{result['repeats']} runs (client work included)",
            bare_label(),
            format_table(["path", "pages/s", "ratio"], rows),
            "",
            f"a trivial request (/healthz) takes {result['healthz_us']:.0f} us; a 1-page store "
            f"{result['store_1_us']:.0f} us, "
            f"{result['store_1_beyond_trivial_us']:.0f} us beyond it",
        ]
    )
