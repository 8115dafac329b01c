"""Scale: cost per operation as the pool grows, and RSS per stored page.

In a fresh interpreter (so RSS is the pool's and nothing else's), an lz4 pool
is filled with the corpus's pages, cycled, to 10^4, 10^5 and 10^6 stored pages;
at each level 8,192 pages are stored, loaded and freed in 64-page batches, five
times, and the median cost per page taken (it should stay flat; a load's CPU
time is taken beside its wall time, which neighbours on a shared machine
move), and RSS growth per stored page is taken beside mem_used_total per
stored page.

RSS is read after the C heap is trimmed, as the daemon trims it once a burst
is over (:mod:`zswapd.malloc`).  The benchmark keeps its own handles as a
client of the wire protocol does, packed 8 bytes each (a list would add a
48-byte int object and a pointer per page, and a cache miss per handle read):
those 8 bytes are the client's, reported apart and not counted in the
overhead.  The overhead is then broken down into the page store's tables (the
entry columns and the entry handle table) and the allocator's handle table;
the rest is the allocator's zspage records and the heap.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from zswapd.bench.stats import format_table, rss_bytes
from zswapd.config import PoolConfig
from zswapd.malloc import trim
from zswapd.pool import PAGE_SIZE, PagePool

__all__ = ["LEVELS", "child", "render", "run"]

LEVELS = (10_000, 100_000, 1_000_000)
PROBE = 8192
BATCH = 64
REPEATS = 5


def child(pages_path: str, levels: Sequence[int]) -> None:
    """Runs in its own interpreter; prints the result as JSON."""
    with open(pages_path, "rb") as f:
        data = f.read()
    pages = [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
    del data
    base = rss_bytes()
    pool = PagePool("scale", PoolConfig(compressor="lz4"))
    rng = random.Random(1)
    live = array("Q")  # the client's handles, 8 bytes each
    out = []
    n = 0
    for level in levels:
        while len(live) < level:
            batch = [pages[(n + i) % len(pages)] for i in range(min(256, level - len(live)))]
            n += len(batch)
            live.extend(pool.store(batch))
        k = min(PROBE, level)
        probe = [pages[(n + i) % len(pages)] for i in range(k)]
        costs: dict[str, list[float]] = {"store": [], "load": [], "free": []}
        # The loads' CPU time too: on a shared machine, wall time between two
        # levels measured minutes apart is the neighbours' as much as ours.
        load_cpu: list[float] = []
        for _ in range(REPEATS):  # medians: one short probe is at the mercy of noise
            start = time.perf_counter()
            fresh: list[int] = []
            for i in range(0, k, BATCH):
                fresh += pool.store(probe[i : i + BATCH])
            costs["store"].append((time.perf_counter() - start) * 1e6 / k)
            sample = rng.sample(live, k)
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(0, k, BATCH):
                pool.load(sample[i : i + BATCH])
            costs["load"].append((time.perf_counter() - start) * 1e6 / k)
            load_cpu.append((time.process_time() - cpu) * 1e6 / k)
            start = time.perf_counter()
            for i in range(0, k, BATCH):
                pool.free(fresh[i : i + BATCH])
            costs["free"].append((time.perf_counter() - start) * 1e6 / k)
        store_us, load_us, free_us = (statistics.median(costs[op]) for op in costs)
        mm = pool.mm_stat()
        untrimmed = rss_bytes() - base
        trim()
        grown = rss_bytes() - base
        stored = len(live)
        client = live.itemsize * stored
        beyond = (grown - client - mm.mem_used_total) / stored
        tables = {name: size / stored for name, size in _table_bytes(pool).items()}
        tables["other"] = beyond - sum(tables.values())
        out.append(
            {
                "stored_pages": len(live),
                "store_us_per_page": store_us,
                "load_us_per_page": load_us,
                "free_us_per_page": free_us,
                "load_cpu_us_per_page": statistics.median(load_cpu),
                "mem_used_total": mm.mem_used_total,
                "rss_growth": grown,
                "rss_per_stored_page": (grown - client) / stored,
                "pool_bytes_per_stored_page": mm.mem_used_total / stored,
                "overhead_per_stored_page": beyond,
                "overhead_untrimmed_per_stored_page": (untrimmed - client - mm.mem_used_total)
                / stored,
                "client_handles_per_stored_page": client / stored,
                "tables_per_stored_page": tables,
            }
        )
    json.dump(out, sys.stdout)


def _table_bytes(pool: PagePool) -> dict[str, int]:
    """Bytes held by the page store's tables and the allocator's handle table."""
    entries = pool._entries
    return {
        "entry columns": entries.nbytes - entries._handles.nbytes,
        "entry handles": entries._handles.nbytes,
        "allocator handles": pool._alloc.stats().handle_table_bytes,
    }


def run(
    pages: Sequence[bytes],
    *,
    levels: Sequence[int] = LEVELS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    say(f"scale: filling a pool to {', '.join(f'{n:,}' for n in levels)} pages")
    with tempfile.NamedTemporaryFile(suffix=".pages") as f:
        f.write(b"".join(pages))
        f.flush()
        text = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, json; from zswapd.bench.scale import child; "
                "child(sys.argv[1], json.loads(sys.argv[2]))",
                f.name,
                json.dumps(list(levels)),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return {"compressor": "lz4", "levels": json.loads(text)}


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            f"{r['stored_pages']:,}",
            f"{r['store_us_per_page']:.2f}",
            f"{r['load_us_per_page']:.2f}",
            f"{r['free_us_per_page']:.2f}",
            f"{r.get('load_cpu_us_per_page', 0):.2f}",
            f"{r['pool_bytes_per_stored_page']:.0f}",
            f"{r['rss_per_stored_page']:.0f}",
            f"{r['overhead_per_stored_page']:.0f}",
        ]
        for r in result["levels"]
    ]
    parts = list(result["levels"][0].get("tables_per_stored_page", {}))
    split = [
        [f"{r['stored_pages']:,}"]
        + [f"{r['tables_per_stored_page'][p]:.1f}" for p in parts]
        + [f"{r['overhead_per_stored_page']:.1f}", f"{r['client_handles_per_stored_page']:.0f}"]
        for r in result["levels"]
        if "tables_per_stored_page" in r
    ]
    return "\n".join(
        [
            "scale (lz4 pool, 64-page batches, microseconds per page; bytes per stored page,"
            " C heap trimmed, the client's handles not counted)",
            format_table(
                [
                    "stored pages",
                    "store us",
                    "load us",
                    "free us",
                    "load CPU us",
                    "pool B",
                    "RSS B",
                    "RSS beyond pool B",
                ],
                rows,
            ),
            "RSS beyond the pool, bytes per stored page, by table",
            format_table(["stored pages", *parts, "total", "client's handles"], split),
        ]
    )
