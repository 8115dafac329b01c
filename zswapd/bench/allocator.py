"""``zswapd bench allocator``: memory efficiency, speed and overhead of the allocators.

The workload is the lz4-compressed size (the kernel's lz4, as the pools use
it: :data:`~zswapd.bench.stats.BARE`) of every page of a corpus that is not
same-filled (zram keeps only the word of those), with a page that compresses to
the pool's huge_class_size or more stored raw as 4096 bytes, as zram does.  The
sizes are cycled to reach the requested number of objects, so the pool reaches a
steady state with many zspages per class.

Efficiency = sum of object lengths / total_size_bytes (pages held x 4096), the
figure zsmalloc's designers quote ("about 98% of its memory in objects").
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import allocator
from allocator import MapMode, PoolFullError, fit_class_sizes, zsmalloc
from zswapd.bench.stats import BARE, bare_label, each, format_table, rss_bytes, timed_rate
from zswapd.corpus import PAGE_SIZE, is_same_filled
from zswapd.malloc import trim

__all__ = ["Workload", "build_workload", "configs", "render", "run"]


@dataclass(frozen=True)
class Workload:
    """Pages and their lz4 forms: the input of every allocator figure."""

    pages: list[bytes]  # non-same-filled pages
    compressed: list[bytes]  # lz4 block of each, no size prefix

    @property
    def lengths(self) -> list[int]:
        return [len(c) for c in self.compressed]


def build_workload(pages: Sequence[bytes]) -> Workload:
    kept = [p for p in pages if not is_same_filled(p)]
    return Workload(kept, [BARE.compress(p) for p in kept])


def _stored_length(length: int, huge_class_size: int) -> int:
    # zram stores a page raw (4096 bytes) when it compresses to the huge size or more.
    return PAGE_SIZE if length >= huge_class_size else length


def configs(lengths: Sequence[int], n_objects: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, allocator, options) of every configuration compared.

    The fitted table is fitted on every other corpus page (a held-out half) and
    measured on all of them.
    """
    fitted8 = fit_class_sizes(lengths[::2], chain_size=8, header=0, objects=n_objects)
    fitted16 = fit_class_sizes(lengths[::2], chain_size=16, header=0, objects=n_objects)
    return [
        ("zsmalloc chain 4 (kernel)", "zsmalloc", {"chain_size": 4}),
        ("zsmalloc chain 8 (kernel default)", "zsmalloc", {"chain_size": 8}),
        ("zsmalloc chain 16 (kernel)", "zsmalloc", {"chain_size": 16}),
        ("zsmalloc chain 8, no merging", "zsmalloc", {"chain_size": 8, "merge_classes": False}),
        ("zsmalloc chain 8, empty cache 2", "zsmalloc", {"chain_size": 8, "empty_cache": 2}),
        ("zsmalloc chain 8, no header", "zsmalloc", {"chain_size": 8, "header": 0}),
        (
            "zsmalloc chain 8, no header, step 8",
            "zsmalloc",
            {"chain_size": 8, "header": 0, "class_step": 8},
        ),
        (
            "zsmalloc chain 8, no header, fitted",
            "zsmalloc",
            {"chain_size": 8, "header": 0, "class_sizes": fitted8},
        ),
        (
            "zsmalloc chain 16, no header, fitted",
            "zsmalloc",
            {"chain_size": 16, "header": 0, "class_sizes": fitted16},
        ),
        ("zbud", "zbud", {}),
        ("z3fold", "z3fold", {}),
    ]


def efficiency(
    name: str, options: dict[str, Any], lengths: Sequence[int], n_objects: int, seed: int
) -> dict[str, Any]:
    """Efficiency all live, after freeing a random half, and after compact()."""
    pool = allocator.create(name, seed=seed, **options)
    huge = pool.huge_class_size
    sizes = array("i", (_stored_length(lengths[i % len(lengths)], huge) for i in range(n_objects)))
    handles = array("Q", (pool.malloc(n) for n in sizes))
    live_bytes = sum(sizes)
    all_live = live_bytes / pool.total_size_bytes
    pages_live = pool.pages
    rng = random.Random(seed)
    for i in rng.sample(range(n_objects), n_objects // 2):
        pool.free(handles[i])
        live_bytes -= sizes[i]
    after_free = live_bytes / pool.total_size_bytes
    released = pool.compact()
    return {
        "all_live": all_live,
        "after_free": after_free,
        "after_compact": live_bytes / pool.total_size_bytes,
        "pages_all_live": pages_live,
        "pages_compacted": released,
        "classes_used": sum(1 for c in pool.class_stats() if c.objs_allocated),
    }


def budget(
    lengths: Sequence[int], n_objects: int, max_pages: int, short: bool, seed: int
) -> dict[str, Any]:
    """Fill a page budget (chain 8), then churn in it, with or without shorter zspages.

    Fill: try to store ``n_objects`` objects.  Churn: ``n_objects // 2`` times,
    free a random live object and store the next length: freed pages come back in
    ones and twos, which whole zspages of long classes cannot use.
    """
    pool = allocator.ZsPool(chain_size=8, max_pages=max_pages, short_zspages=short, seed=seed)
    huge = pool.huge_class_size
    rng = random.Random(seed)
    live: list[tuple[int, int]] = []
    live_bytes = 0

    def store(i: int) -> None:
        nonlocal live_bytes
        n = _stored_length(lengths[i % len(lengths)], huge)
        try:
            live.append((pool.malloc(n), n))
        except PoolFullError:
            return
        live_bytes += n

    for i in range(n_objects):
        store(i)
    fill_failures = pool.stats().alloc_failures
    stored_after_fill = len(live)
    for i in range(n_objects, n_objects + n_objects // 2):
        k = rng.randrange(len(live))
        h, n = live[k]
        live[k] = live[-1]
        live.pop()
        pool.free(h)
        live_bytes -= n
        store(i)
    return {
        "stored_after_fill": stored_after_fill,
        "fill_failures": fill_failures,
        "churn_failures": pool.stats().alloc_failures - fill_failures,
        "live_after_churn": len(live),
        "efficiency_after_churn": live_bytes / max(pool.total_size_bytes, 1),
    }


def speed(work: Workload, repeats: int, seed: int) -> dict[str, Any]:
    """Allocator rates against lz4 compress of the same pages, side by side.

    Each repeat times lz4 compress and decompress of the pages, then, on fresh
    pools, the store paths (malloc + obj_write as two calls; the fused store)
    and the load paths (map RO + copy + free; obj_read + free).  Ratios are
    taken within a repeat, then the median over repeats is reported.  The pool
    is ``allocator.ZsPool`` (compiled when built); the pure-Python reference's
    store paths are timed in the same repeats (``_pure``), for comparison.
    """
    huge = allocator.ZsPool(seed=seed).huge_class_size
    payloads = [c if len(c) < huge else p for c, p in zip(work.compressed, work.pages, strict=True)]
    pages = work.pages
    count = len(pages)
    ops = (
        "malloc_write",
        "store",
        "map_read_free",
        "obj_read_free",
        "malloc_write_pure",
        "store_pure",
    )
    rates: dict[str, list[float]] = {k: [] for k in ("lz4_compress", "lz4_decompress", *ops)}
    compress, decompress = BARE.compress, partial(BARE.decompress, size=PAGE_SIZE)

    def malloc_write(pool: allocator.ZsPool) -> list[int]:
        malloc, write, out = pool.malloc, pool.obj_write, []
        for data in payloads:
            h = malloc(len(data))
            write(h, data)
            out.append(h)
        return out

    def map_read_free(pool: allocator.ZsPool, handles: list[int]) -> None:
        for h, data in zip(handles, payloads, strict=True):
            with pool.map(h, MapMode.RO) as buf:
                bytes(buf[: len(data)])
            pool.free(h)

    def obj_read_free(pool: allocator.ZsPool, handles: list[int]) -> None:
        read, free = pool.obj_read, pool.free
        for h, data in zip(handles, payloads, strict=True):
            read(h, len(data))
            free(h)

    def pool_paths(pool_seed: int, make: type[allocator.ZsPool], suffix: str = "") -> None:
        pool = make(seed=pool_seed)
        held: list[int] = []
        rates["malloc_write" + suffix].append(
            timed_rate(lambda: held.extend(malloc_write(pool)), count)
        )
        if not suffix:
            rates["map_read_free"].append(timed_rate(lambda: map_read_free(pool, held), count))
        fused = make(seed=pool_seed)
        kept: list[int] = []
        rates["store" + suffix].append(
            timed_rate(lambda: kept.extend(map(fused.store, payloads)), count)
        )
        if not suffix:
            rates["obj_read_free"].append(timed_rate(lambda: obj_read_free(fused, kept), count))

    for r in range(repeats):
        rates["lz4_compress"].append(timed_rate(lambda: each(compress, pages), count))
        rates["lz4_decompress"].append(timed_rate(lambda: each(decompress, work.compressed), count))
        pool_paths(seed + r, allocator.ZsPool)
        pool_paths(seed + r, zsmalloc.ZsPool, "_pure")
    ratios = {
        k: statistics.median(v / c for v, c in zip(rates[k], rates["lz4_compress"], strict=True))
        for k in ops
    }
    return {
        "pages": count,
        "repeats": repeats,
        "allocator": allocator.describe(),
        "rates_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "ratio_to_lz4_compress": ratios,
    }


def rss_child(lengths_path: str, n_objects: int) -> None:
    """Run in a fresh interpreter: RSS beyond total_size_bytes at ``n_objects`` objects,
    after the C heap is trimmed as the daemon trims it."""
    lengths = array("i")
    lengths.frombytes(Path(lengths_path).read_bytes())
    payload = memoryview(bytes(range(256)) * 16)
    handles = array("Q", bytes(8 * n_objects))
    base = rss_bytes()
    pool = allocator.ZsPool(chain_size=8)
    huge = pool.huge_class_size
    malloc, write = pool.malloc, pool.obj_write
    for i in range(n_objects):
        n = _stored_length(lengths[i % len(lengths)], huge)
        h = malloc(n)
        write(h, payload[:n])
        handles[i] = h
    # Free heap left behind by the handle table's growth stays resident until
    # trimmed; the daemon trims once a burst is over (zswapd.malloc), so measure
    # what it would hold.
    trim()
    grown = rss_bytes() - base
    json.dump(
        {
            "objects": n_objects,
            "total_size_bytes": pool.total_size_bytes,
            "rss_growth_bytes": grown,
            "beyond_pool_per_object": (grown - pool.total_size_bytes) / n_objects,
            "handle_table_bytes_per_object": pool.stats().handle_table_bytes / n_objects,
        },
        sys.stdout,
    )


def rss(lengths: Sequence[int], n_objects: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".lengths") as f:
        f.write(array("i", lengths).tobytes())
        f.flush()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from zswapd.bench.allocator import rss_child; "
                "rss_child(sys.argv[1], int(sys.argv[2]))",
                f.name,
                str(n_objects),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def run(
    pages: Sequence[bytes],
    *,
    scales: Sequence[int] = (200_000, 1_000_000),
    repeats: int = 5,
    rss_objects: int = 1_000_000,
    seed: int = 1,
    progress: Any = None,
) -> dict[str, Any]:
    """Every allocator figure on ``pages``; returns a JSON-ready dict."""
    say = progress or (lambda msg: None)
    work = build_workload(pages)
    if not work.pages:
        raise ValueError("the corpus has no page that is not same-filled")
    lengths = work.lengths
    result: dict[str, Any] = {
        "corpus_pages": len(pages),
        "workload_objects": len(lengths),
        "workload_mean_length": statistics.fmean(lengths),
        "efficiency": {},
    }
    for n_objects in scales:
        table = result["efficiency"][str(n_objects)] = {}
        for label, name, options in configs(lengths, n_objects):
            say(f"efficiency at {n_objects} objects: {label}")
            table[label] = efficiency(name, options, lengths, n_objects, seed)
    first = result["efficiency"][str(scales[0])]
    max_pages = int(first["zsmalloc chain 8 (kernel default)"]["pages_all_live"] * 0.6)
    result["budget"] = {"max_pages": max_pages, "objects": scales[0]}
    for short in (False, True):
        say(f"page budget, shorter zspages {'on' if short else 'off'}")
        key = "short_zspages" if short else "whole_zspages"
        result["budget"][key] = budget(lengths, scales[0], max_pages, short, seed)
    say("speed against lz4")
    result["speed"] = speed(work, repeats, seed)
    if rss_objects:
        say(f"RSS at {rss_objects} objects")
        result["rss"] = rss(lengths, rss_objects)
    return result


def render(result: dict[str, Any]) -> str:
    """The figures as text tables."""
    out = [
        f"workload: lz4 sizes of {result['workload_objects']} non-same-filled pages of "
        f"{result['corpus_pages']} (mean {result['workload_mean_length']:.0f} bytes), cycled",
    ]
    for n_objects, eff in result["efficiency"].items():
        out += [
            "",
            f"memory efficiency = object bytes / pool bytes, {int(n_objects):,} objects",
            format_table(
                ["allocator", "all live", "half freed", "compacted", "pages compacted"],
                [
                    [k, v["all_live"], v["after_free"], v["after_compact"], v["pages_compacted"]]
                    for k, v in eff.items()
                ],
            ),
        ]
    bud = result["budget"]
    out += [
        "",
        f"page budget of {bud['max_pages']} pages (0.6 x chain 8 all live), "
        f"fill with {bud['objects']:,} objects then churn half as many",
        format_table(
            ["zspages", "stored", "fill failures", "churn failures", "efficiency"],
            [
                [
                    k,
                    v["stored_after_fill"],
                    v["fill_failures"],
                    v["churn_failures"],
                    v["efficiency_after_churn"],
                ]
                for k, v in bud.items()
                if isinstance(v, dict)
            ],
        ),
        "",
    ]
    sp = result["speed"]
    out.append(
        f"speed on {sp['pages']} pages, median of {sp['repeats']} runs, "
        "ratio = rate / bare lz4 compress rate in the same run; "
        f"allocator {sp.get('allocator', 'pure Python')}, _pure: the pure-Python reference"
    )
    out.append(bare_label())
    out.append(
        format_table(
            ["operation", "per second", "ratio to lz4 compress"],
            [
                [k, f"{v:,.0f}", sp["ratio_to_lz4_compress"].get(k, "")]
                for k, v in sp["rates_per_s"].items()
            ],
        )
    )
    if "rss" in result:
        r = result["rss"]
        out += [
            "",
            f"RSS beyond total_size_bytes at {r['objects']:,} objects: "
            f"{r['beyond_pool_per_object']:.1f} bytes per object "
            f"(handle table {r['handle_table_bytes_per_object']:.1f} of it; "
            "the caller's own 8-byte handle array is not counted; C heap trimmed)",
        ]
    return "\n".join(out)
