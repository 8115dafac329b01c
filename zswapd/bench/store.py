"""``zswapd bench store``: what each compressor saves, and what the store path costs.

On a page corpus (``--corpus``; by default the memory of a workload process
the command starts), in one run:

* per compressor and level: ratio orig_data_size / mem_used_total (what zram
  saves in memory) and orig_data_size / compr_data_size, same and huge pages;
* store and load pages/s of a PagePool as ratios to the bare compressor's
  compress and decompress of the same pages in the same run, one page per call
  and 64 per call (medians over repeats);
* the speed-up of storing from 2 threads over 1;
* what recompression of huge and of idle pages with zstd at level 19 saves.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import compressors
from zswapd.bench.stats import each, format_table, timed_rate
from zswapd.config import PoolConfig
from zswapd.pool import PagePool

__all__ = ["render", "run"]

BATCH = 64


def _algorithms(pages: Sequence[bytes]) -> list[tuple[str, PoolConfig]]:
    out = []
    plan: list[tuple[str, str, int | None]] = [
        ("lz4", "lz4", None),
        ("lz4-lib", "lz4-lib", None),
        ("lz4hc-9", "lz4hc", 9),
        ("zstd-(-1)", "zstd", -1),
        ("zstd-1", "zstd", 1),
        ("zstd-3 (default)", "zstd", 3),
        ("zstd-9", "zstd", 9),
        ("zstd-19", "zstd", 19),
        ("deflate-6", "deflate", 6),
        ("lzo-1", "lzo", 1),
    ]
    for label, algo, level in plan:
        if algo in compressors.available():
            out.append((label, PoolConfig(compressor=algo, level=level)))
    # A dictionary trained on a held-out sample (every 4th page) of the corpus.
    dictionary = compressors.train_dictionary(pages[::4], 64 * 1024)
    out.append(("zstd-3 + 64 KiB dictionary", PoolConfig(compressor="zstd", dictionary=dictionary)))
    return out


def ratios(pages: Sequence[bytes], say: Callable[[str], None]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for label, config in _algorithms(pages):
        say(f"ratio: {label}")
        pool = PagePool("bench", config)
        for i in range(0, len(pages), 1024):
            pool.store(pages[i : i + 1024])
        mm = pool.mm_stat()
        table[label] = {
            "mem_ratio": mm.orig_data_size / max(1, mm.mem_used_total),
            "compr_ratio": mm.orig_data_size / max(1, mm.compr_data_size),
            "same_pages": mm.same_pages,
            "huge_pages": mm.huge_pages,
            "mem_used_total": mm.mem_used_total,
            "efficiency": mm.compr_data_size / max(1, mm.mem_used_total),
        }
    return table


def speed(pages: Sequence[bytes], algo: str, repeats: int) -> dict[str, Any]:
    """Store/load rates against the bare compressor, side by side, medians of ratios."""
    comp = compressors.get(algo)
    n = len(pages)
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "compress",
            "decompress",
            "store_1",
            "load_1",
            f"store_{BATCH}",
            f"load_{BATCH}",
        )
    }
    blobs = [comp.compress(p) for p in pages]
    batches = [list(pages[i : i + BATCH]) for i in range(0, n, BATCH)]

    def store_load(batch: bool) -> None:
        pool = PagePool("bench", PoolConfig(compressor=algo))
        suffix = str(BATCH) if batch else "1"
        units: list[list[bytes]] = batches if batch else [[p] for p in pages]
        held: list[list[int]] = []
        start = time.perf_counter()
        for unit in units:
            held.append(pool.store(unit))
        rows[f"store_{suffix}"].append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        for handles in held:
            pool.load(handles)
        rows[f"load_{suffix}"].append(n / (time.perf_counter() - start))

    for _ in range(repeats):
        rows["compress"].append(timed_rate(lambda: each(comp.compress, pages), n))
        rows["decompress"].append(
            timed_rate(lambda: each(partial(comp.decompress, size=4096), blobs), n)
        )
        store_load(batch=False)
        store_load(batch=True)
    ratios = {}
    for key, base in (
        ("store_1", "compress"),
        (f"store_{BATCH}", "compress"),
        ("load_1", "decompress"),
        (f"load_{BATCH}", "decompress"),
    ):
        ratios[key] = statistics.median(a / b for a, b in zip(rows[key], rows[base], strict=True))
    return {
        "rates_per_s": {k: statistics.median(v) for k, v in rows.items()},
        "ratio_to_bare": ratios,
    }


def threads(pages: Sequence[bytes], algo: str, repeats: int) -> dict[str, Any]:
    """Pages/s storing 64-page batches from 1 thread and from 2, same pages."""
    batches = [list(pages[i : i + BATCH]) for i in range(0, len(pages), BATCH)]

    def run_with(n_threads: int) -> float:
        pool = PagePool("t", PoolConfig(compressor=algo))
        parts = [batches[i::n_threads] for i in range(n_threads)]
        workers = [
            threading.Thread(target=lambda part=part: [pool.store(b) for b in part])
            for part in parts
        ]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return len(pages) / (time.perf_counter() - start)

    speedups, one, two = [], [], []
    for _ in range(repeats):
        a, b = run_with(1), run_with(2)
        one.append(a)
        two.append(b)
        speedups.append(b / a)
    return {
        "one_thread_per_s": statistics.median(one),
        "two_threads_per_s": statistics.median(two),
        "speedup": statistics.median(speedups),
    }


def recompression(pages: Sequence[bytes]) -> dict[str, Any]:
    """lz4 pools recompressed with zstd-19: huge pages, then every page as idle."""
    out: dict[str, Any] = {}
    for kind in ("huge", "idle"):
        pool = PagePool(
            "r", PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19)
        )
        for i in range(0, len(pages), 1024):
            pool.store(pages[i : i + 1024])
        before = pool.mm_stat()
        result = pool.recompress(kind, idle_seconds=0)
        pool.compact()
        after = pool.mm_stat()
        out[kind] = {
            **result,
            "mem_used_before": before.mem_used_total,
            "mem_used_after_compact": after.mem_used_total,
            "huge_pages_before": before.huge_pages,
            "huge_pages_after": after.huge_pages,
            "mem_saved_share": 1 - after.mem_used_total / before.mem_used_total,
        }
    return out


def run(
    pages: Sequence[bytes],
    *,
    repeats: int = 5,
    speed_pages: int = 8192,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every store figure; returns a JSON-ready dict."""
    say = progress or (lambda msg: None)
    sample = list(pages[:: max(1, len(pages) // speed_pages)])
    result: dict[str, Any] = {"corpus_pages": len(pages), "speed_pages": len(sample)}
    result["ratios"] = ratios(pages, say)
    result["speed"] = {}
    for algo in ("lz4", "zstd"):
        say(f"speed: {algo}")
        result["speed"][algo] = speed(sample, algo, repeats)
    say("threads")
    result["threads"] = {
        "lz4": threads(sample, "lz4", repeats),
        "zstd": threads(sample, "zstd", repeats),
    }
    say("recompression")
    result["recompression"] = recompression(pages)
    return result


def render(result: dict[str, Any]) -> str:
    out = [
        f"{result['corpus_pages']} pages; ratio = orig_data_size / mem_used_total (memory "
        "saved), compr = orig_data_size / compr_data_size",
        format_table(
            ["compressor", "ratio", "compr", "same", "huge", "efficiency"],
            [
                [
                    k,
                    v["mem_ratio"],
                    v["compr_ratio"],
                    v["same_pages"],
                    v["huge_pages"],
                    v["efficiency"],
                ]
                for k, v in result["ratios"].items()
            ],
        ),
        "",
        f"store/load on {result['speed_pages']} pages, medians; ratio = pool rate / bare "
        "compress (store) or decompress (load) rate in the same run",
    ]
    rows = []
    for algo, sp in result["speed"].items():
        for key, ratio in sp["ratio_to_bare"].items():
            rows.append([f"{algo} {key}", f"{sp['rates_per_s'][key]:,.0f}", ratio])
        rows.append([f"{algo} bare compress", f"{sp['rates_per_s']['compress']:,.0f}", ""])
        rows.append([f"{algo} bare decompress", f"{sp['rates_per_s']['decompress']:,.0f}", ""])
    out.append(format_table(["path", "pages/s", "ratio"], rows))
    out += ["", "store, 64-page batches, 2 threads vs 1"]
    out.append(
        format_table(
            ["compressor", "1 thread/s", "2 threads/s", "speed-up"],
            [
                [k, f"{v['one_thread_per_s']:,.0f}", f"{v['two_threads_per_s']:,.0f}", v["speedup"]]
                for k, v in result["threads"].items()
            ],
        )
    )
    out += ["", "recompression of an lz4 pool with zstd-19"]
    out.append(
        format_table(
            [
                "pages",
                "candidates",
                "recompressed",
                "bytes saved",
                "huge before/after",
                "memory saved",
            ],
            [
                [
                    k,
                    v["candidates"],
                    v["recompressed"],
                    v["bytes_saved"],
                    f"{v['huge_pages_before']}/{v['huge_pages_after']}",
                    v["mem_saved_share"],
                ]
                for k, v in result["recompression"].items()
            ],
        )
    )
    return "\n".join(out)
