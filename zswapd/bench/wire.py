"""``zswapd bench wire``: the wire protocol against bare lz4, side by side.

Starts a real daemon (lz4 pool, wire protocol on a Unix socket) and drives it
from this process: store and load with batches of 1 and 64 pages, over 1 and 4
connections (one thread each; each connection pipelines up to 8 requests).  In
the same run, bare lz4 compress and decompress of the same pages (the pool's
own lz4, the kernel's, called directly).  Ratios are
taken within a repeat; medians over repeats are reported.  The client's own
work is included.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from zswapd.bench.http import start_daemon
from zswapd.bench.stats import BARE, bare_label, bare_lz4_rates, format_table, sample_pages
from zswapd.wire_client import WireClient

__all__ = ["render", "run"]


def _drive(path: str, pages: Sequence[bytes], batch: int, conns: int) -> tuple[float, float]:
    """(store, load) pages/s with ``conns`` connections, ``batch`` pages a request."""
    parts = [pages[i::conns] for i in range(conns)]
    clients = [WireClient(path, window=8) for _ in range(conns)]
    for c in clients:
        c._req.max_pages = batch  # requests of exactly `batch` pages
    held: list[list[int]] = [[] for _ in range(conns)]

    def run_all(work: Callable[[int], None]) -> float:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(conns)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(pages) / (time.perf_counter() - start)

    def store(i: int) -> None:
        held[i] = clients[i].store(parts[i])

    def load(i: int) -> None:
        clients[i].load(held[i])

    s = run_all(store)
    ld = run_all(load)
    for i, c in enumerate(clients):
        c.free(held[i])
        c.close()
    return s, ld


def run(
    pages: Sequence[bytes],
    *,
    repeats: int = 5,
    n_pages: int = 8192,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    sample = sample_pages(pages, n_pages)
    blobs = [BARE.compress(p) for p in sample]
    path = os.path.join(tempfile.mkdtemp(prefix="zswapd-bench-"), "wire.sock")
    proc, _ = start_daemon("--compressor", "lz4", "--unix-socket", path)
    keys = [(b, c) for b in (1, 64) for c in (1, 4)]
    rows: dict[str, list[float]] = {"lz4_compress": [], "lz4_decompress": []}
    for b, c in keys:
        rows[f"store_b{b}_c{c}"] = []
        rows[f"load_b{b}_c{c}"] = []
    try:
        for r in range(repeats):
            say(f"repeat {r + 1} of {repeats}")
            c_rate, d_rate = bare_lz4_rates(sample, blobs)
            rows["lz4_compress"].append(c_rate)
            rows["lz4_decompress"].append(d_rate)
            for b, c in keys:
                s, ld = _drive(path, sample if b > 1 else sample[: len(sample) // 4], b, c)
                rows[f"store_b{b}_c{c}"].append(s)
                rows[f"load_b{b}_c{c}"].append(ld)
    finally:
        proc.terminate()
        proc.wait(30)

    def ratio(key: str) -> float:
        base = "lz4_compress" if key.startswith("store") else "lz4_decompress"
        return statistics.median(a / b for a, b in zip(rows[key], rows[base], strict=True))

    return {
        "pages": len(sample),
        "repeats": repeats,
        "bare": BARE.version,
        "rates_per_s": {k: statistics.median(v) for k, v in rows.items()},
        "ratio_to_lz4": {k: ratio(k) for k in rows if not k.startswith("lz4")},
    }


def render(result: dict[str, Any]) -> str:
    rates, ratios = result["rates_per_s"], result["ratio_to_lz4"]
    rows = [
        ["lz4 compress (bare)", f"{rates['lz4_compress']:,.0f}", ""],
        ["lz4 decompress (bare)", f"{rates['lz4_decompress']:,.0f}", ""],
    ]
    for key, ratio in ratios.items():
        op, b, c = key.split("_")
        base = "compress" if op == "store" else "decompress"
        rows.append(
            [
                f"{op}, {b[1:]} page(s)/request, {c[1:]} conn",
                f"{rates[key]:,.0f}",
                f"{ratio:.3f} of lz4 {base}",
            ]
        )
    return "\n".join(
        [
            f"wire protocol on a Unix socket, lz4 pool, {result['pages']} pages, median of "
            f"{result['repeats']} runs (client work included)",
            bare_label(),
            format_table(["path", "pages/s", "ratio"], rows),
        ]
    )
