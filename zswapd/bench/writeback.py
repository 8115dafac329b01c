"""``zswapd bench writeback``: the second tier under a skewed load.

What a zswap user tunes for is how much spills to disk and how often a load
has to come back from it.  This suite shows both, on the corpus, in process
(a :class:`~zswapd.pool.PagePool`, lz4 and zstd):

* **skewed**: a pool whose limit holds a third of the working set (the
  corpus's mem_used_total when all of it is stored, / 3), with an ``lru``
  backing file big enough for every page, is filled with the corpus and then
  driven by a Zipf-skewed stream (s = 1.1 over the pages, hot pages spread at
  random) of single-page loads and stores; a store rewrites a page as swap
  does: the old handle is freed, the page stored anew.  Every load is checked
  against the page it should be.  The same stream runs on a pool with no
  limit and no backing file in the same run, interleaved, so the two columns
  see the same machine.  Reported: pages/s, bd_writes, bd_reads,
  written_back_pages, pool_limit_hit, reject_reclaim_fail, where loads were
  served from (pool / file / same-filled), latency percentiles of stores and
  loads (and of loads from the file alone), and the stores that triggered a
  write-back: their latency and the pages each wrote.
* **manual**: zram's way: a pool with no limit and a ``manual`` backing file
  holds the corpus; every page is loaded (in memory), written back
  (``writeback idle`` with idle_seconds 0: zram's ``all``), and loaded again
  from the file, warm (in the page cache, as right after a write) and cold
  (after fsync and POSIX_FADV_DONTNEED: from the device, unless the file sits
  on tmpfs, where there is no device).

The first fifth of each stream is a warm-up (the LRU settles into the skew),
not measured.  Figures are medians over ``repeats`` runs of the same stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

from zswapd.bench.stats import format_table
from zswapd.config import PoolConfig
from zswapd.errors import ZswapdError
from zswapd.pool import PAGE_SIZE, Counters, PagePool

__all__ = ["ALGORITHMS", "STORE_SHARE", "ZIPF_S", "percentiles", "render", "run", "zipf_stream"]

ALGORITHMS = ("lz4", "zstd")
# The skew: the page of rank r is accessed with weight 1 / r**s.  1.1 is a
# common fit for page and cache reference streams (a few pages very hot, a
# long tail that is touched now and then).
ZIPF_S = 1.1
# Share of accesses that are stores (a page swapped in, dirtied, swapped out
# again); the rest are loads.
STORE_SHARE = 0.25
# The limit holds this share of the working set's memory (mem_used_total).
LIMIT_SHARE = 1 / 3
# Unmeasured head of each stream: the LRU forgets the fill order meanwhile.
WARMUP_SHARE = 0.2
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def zipf_stream(
    n_pages: int, n_ops: int, *, s: float = ZIPF_S, store_share: float = STORE_SHARE, seed: int = 1
) -> list[tuple[bool, int]]:
    """``n_ops`` accesses (is_store, page index), page ranks Zipf(s)-weighted,
    rank to page by a seeded shuffle (so hot pages are not the corpus's first)."""
    rng = random.Random(seed)
    cum = list(accumulate(1 / r**s for r in range(1, n_pages + 1)))
    ranked = list(range(n_pages))
    rng.shuffle(ranked)
    picks = rng.choices(ranked, cum_weights=cum, k=n_ops)
    return [(rng.random() < store_share, page) for page in picks]


def percentiles(ns: Sequence[int]) -> dict[str, float] | None:
    """p50, p90, p99 and max of durations in nanoseconds, in microseconds
    (nearest rank); None for no samples."""
    if not ns:
        return None
    ordered = sorted(ns)
    n = len(ordered)
    out = {k: ordered[max(0, math.ceil(q * n) - 1)] / 1000 for k, q in PERCENTILES}
    out["max"] = ordered[-1] / 1000
    return out


def _median_of(runs: Sequence[Any]) -> Any:
    """Leaf by leaf median of JSON-like results of the same shape."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: _median_of([r[k] for r in runs]) for k in first}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    values = [r for r in runs if r is not None]
    return statistics.median(values) if values else None


def _fs_type(path: str) -> str:
    """The type of the filesystem holding ``path`` (ext4, tmpfs, ...)."""
    best, fstype = "", "unknown"
    real = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mount = fields[1].replace("\\040", " ")
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, fstype = mount, fields[2]
    return fstype


# -- the skewed stream ---------------------------------------------------------------


def _tally(c: Counters) -> tuple[int, ...]:
    """The counters a run reports, as differences from its warm-up's end."""
    return (
        c.bd_reads,
        c.bd_writes,
        c.loaded_pages_total,
        c.loaded_same_pages,
        c.written_back_pages,
        c.pool_limit_hit,
        c.reject_reclaim_fail,
    )


def _drive(
    pool: PagePool, pages: Sequence[bytes], stream: Sequence[tuple[bool, int]]
) -> dict[str, Any]:
    """Fill ``pool`` with ``pages``, run ``stream`` on it; what was measured."""
    handles: list[int | None] = [pool.store([p])[0] for p in pages]
    c = pool.counters
    warmup = int(len(stream) * WARMUP_SHARE)
    store_ns: list[int] = []
    load_ns: list[int] = []
    file_load_ns: list[int] = []
    trigger_ns: list[int] = []
    written_per_trigger: list[int] = []
    mismatches = refused = skipped = 0
    clock = time.perf_counter_ns
    start = before = None
    for n, (is_store, i) in enumerate(stream):
        if n == warmup:
            start = time.perf_counter()
            before = _tally(c)
        h = handles[i]
        if is_store:
            if h is not None:
                pool.free([h])
                handles[i] = None
            wrote = c.written_back_pages
            t0 = clock()
            try:
                handles[i] = pool.store([pages[i]])[0]
            except ZswapdError:
                refused += n >= warmup  # reclaim failed: the page is not held
                continue
            dt = clock() - t0
            if n >= warmup:
                store_ns.append(dt)
                if c.written_back_pages != wrote:
                    trigger_ns.append(dt)
                    written_per_trigger.append(c.written_back_pages - wrote)
        elif h is None:
            skipped += n >= warmup
        else:
            reads = c.bd_reads
            t0 = clock()
            page = pool.load([h])[0]
            dt = clock() - t0
            if n >= warmup:
                load_ns.append(dt)
                if c.bd_reads != reads:
                    file_load_ns.append(dt)
                mismatches += page != pages[i]
    assert start is not None and before is not None
    seconds = time.perf_counter() - start
    bd_reads, bd_writes, loaded, same, written, limit_hit, reclaim_fail = (
        now - was for now, was in zip(_tally(c), before, strict=True)
    )
    from_pool = loaded - bd_reads - same
    out: dict[str, Any] = {
        "ops": len(stream) - warmup,
        "pages_per_s": (len(stream) - warmup) / seconds,
        "stores": len(store_ns),
        "loads": loaded,
        "loads_from": {
            "pool": from_pool,
            "file": bd_reads,
            "same_filled": same,
        },
        # Served without a disk read: from the pool or a same-filled word.
        "memory_share": (from_pool + same) / max(1, loaded),
        "file_share": bd_reads / max(1, loaded),
        "bd_stat": {
            "bd_count": pool.stats().bd_stat.bd_count,
            "bd_reads": bd_reads,
            "bd_writes": bd_writes,
        },
        "written_back_pages": written,
        "pool_limit_hit": limit_hit,
        "reject_reclaim_fail": reclaim_fail,
        "refused_stores": refused,
        "skipped_loads": skipped,
        "mismatches": mismatches,
        "store_us": percentiles(store_ns),
        "load_us": percentiles(load_ns),
        "file_load_us": percentiles(file_load_ns),
        "triggers": {
            "stores": len(trigger_ns),
            "share_of_stores": len(trigger_ns) / max(1, len(store_ns)),
            "store_us": percentiles(trigger_ns),
            "pages_per_trigger": statistics.median(written_per_trigger)
            if written_per_trigger
            else 0,
            "us_per_page_written": statistics.median(
                t / 1000 / w for t, w in zip(trigger_ns, written_per_trigger, strict=True)
            )
            if trigger_ns
            else None,
        },
    }
    pool.check_invariants()
    return out


def skewed(
    pages: Sequence[bytes],
    algo: str,
    *,
    ops: int,
    repeats: int,
    directory: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One compressor: the stream on an lru pool at a third of the working
    set and on a pool with no limit, side by side; medians over repeats."""
    stream = zipf_stream(len(pages), ops)
    plain = PagePool("plain", PoolConfig(compressor=algo))
    for p in pages:
        plain.store([p])
    working_set = plain.mm_stat().mem_used_total
    plain.close()
    limit = max(PAGE_SIZE, int(working_set * LIMIT_SHARE) // PAGE_SIZE * PAGE_SIZE)
    # Room for every page (plus a write-back round in flight): the file never
    # fills, so every refusal would be a bug, not the workload.
    backing_size = (len(pages) + 64) * PAGE_SIZE
    with_wb: list[dict[str, Any]] = []
    without: list[dict[str, Any]] = []
    for rep in range(repeats):
        say(f"writeback: {algo} skewed, run {rep + 1} of {repeats}")
        path = os.path.join(directory, f"skewed-{algo}-{rep}.swap")
        pool = PagePool(
            "lru",
            PoolConfig(
                compressor=algo,
                limit_bytes=limit,
                backing_file=path,
                backing_size=backing_size,
                writeback="lru",
            ),
        )
        pool.backing_owned = True  # unlinked with the pool
        try:
            with_wb.append(_drive(pool, pages, stream))
        finally:
            pool.close()
        pool = PagePool("plain", PoolConfig(compressor=algo))
        try:
            without.append(_drive(pool, pages, stream))
        finally:
            pool.close()
    return {
        "pages": len(pages),
        "working_set_bytes": working_set,
        "limit_bytes": limit,
        "backing_size": backing_size,
        "with_writeback": _median_of(with_wb),
        "without_writeback": _median_of(without),
        # Any wrong byte in any run, not a median of them.
        "mismatches": sum(r["mismatches"] for r in with_wb + without),
    }


# -- zram's manual writeback ---------------------------------------------------------


def _drop_cache(path: str) -> None:
    """Ask the kernel to forget the file's cached pages (they are clean after fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _load_rate(pool: PagePool, handles: Sequence[int], pages: Sequence[bytes]) -> tuple[float, int]:
    """(pages/s loading every handle one at a time, pages that came back wrong)."""
    start = time.perf_counter()
    got = [pool.load([h])[0] for h in handles]
    rate = len(handles) / (time.perf_counter() - start)
    return rate, sum(a != b for a, b in zip(got, pages, strict=True))


def manual(
    pages: Sequence[bytes], algo: str, *, repeats: int, directory: str, say: Callable[[str], None]
) -> dict[str, Any]:
    """zram's way: store all, load all, write all back, load all from the file."""
    runs = []
    order = list(range(len(pages)))
    random.Random(2).shuffle(order)
    shuffled = [pages[i] for i in order]
    for rep in range(repeats):
        say(f"writeback: {algo} manual, run {rep + 1} of {repeats}")
        path = os.path.join(directory, f"manual-{algo}-{rep}.swap")
        pool = PagePool(
            "manual",
            PoolConfig(compressor=algo, backing_file=path, backing_size=len(pages) * PAGE_SIZE),
        )
        pool.backing_owned = True
        try:
            handles = [pool.store([p])[0] for p in pages]
            in_order = [handles[i] for i in order]
            memory, bad = _load_rate(pool, in_order, shuffled)
            start = time.perf_counter()
            result = pool.writeback("idle", idle_seconds=0)
            wb_seconds = time.perf_counter() - start
            warm, bad_warm = _load_rate(pool, in_order, shuffled)
            assert pool.backing is not None
            pool.backing.flush()
            _drop_cache(path)
            cold, bad_cold = _load_rate(pool, in_order, shuffled)
            bd = pool.stats().bd_stat
            runs.append(
                {
                    "written_back": result["written_back"],
                    "writeback_pages_per_s": result["written_back"] / wb_seconds,
                    "load_memory_per_s": memory,
                    "load_file_warm_per_s": warm,
                    "load_file_cold_per_s": cold,
                    "warm_to_memory": warm / memory,
                    "cold_to_memory": cold / memory,
                    "bd_stat": dataclasses.asdict(bd),
                    "mismatches": bad + bad_warm + bad_cold,
                }
            )
            pool.check_invariants()
        finally:
            pool.close()
    out: dict[str, Any] = _median_of(runs)
    out["pages"] = len(pages)
    out["mismatches"] = sum(r["mismatches"] for r in runs)
    return out


def run(
    pages: Sequence[bytes],
    *,
    quick: bool = False,
    repeats: int | None = None,
    ops: int | None = None,
    directory: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every figure; a JSON-ready dict.

    Args:
        quick: a smoke run (768 pages, 4,000 accesses, one repeat).
        repeats: runs per figure (3; quick: 1).
        ops: accesses per stream (200,000; quick: 4,000).
        directory: where the backing files go (default: a new temporary
            directory, removed after); its filesystem is reported.

    Raises:
        RuntimeError: no directory for the backing files can be made there.
    """
    say = progress or (lambda msg: None)
    repeats = repeats or (1 if quick else 3)
    ops = ops or (4000 if quick else 200_000)
    if quick:
        pages = list(pages[:: max(1, len(pages) // 768)])[:768]
    # The same-filled pages stay in: a swap stream has them, and they never
    # reach the file (their loads are counted apart).
    try:
        workdir = tempfile.TemporaryDirectory(prefix="zswapd-bench-wb-", dir=directory)
    except OSError as exc:
        raise RuntimeError(
            f"cannot make a directory for backing files in {directory}: {exc.strerror}"
        ) from exc
    with workdir as tmp:
        result: dict[str, Any] = {
            "corpus_pages": len(pages),
            "quick": quick,
            "repeats": repeats,
            "zipf_s": ZIPF_S,
            "store_share": STORE_SHARE,
            "limit_share": LIMIT_SHARE,
            "warmup_share": WARMUP_SHARE,
            "directory_fs": _fs_type(tmp),
            "load_average": os.getloadavg()[0],
            "skewed": {},
            "manual": {},
        }
        for algo in ALGORITHMS:
            result["skewed"][algo] = skewed(
                pages, algo, ops=ops, repeats=repeats, directory=tmp, say=say
            )
        for algo in ALGORITHMS:
            result["manual"][algo] = manual(pages, algo, repeats=repeats, directory=tmp, say=say)
        result["load_average_after"] = os.getloadavg()[0]
    return result


# -- the report -----------------------------------------------------------------------


def _pct(p: dict[str, float] | None) -> str:
    if p is None:
        return "-"
    return " / ".join(
        f"{p[k]:,.0f}" if p[k] >= 100 else f"{p[k]:.1f}" for k in (*dict(PERCENTILES), "max")
    )


def render(result: dict[str, Any]) -> str:
    out = [
        f"writeback: {result['corpus_pages']} pages, Zipf s={result['zipf_s']}, "
        f"{result['store_share']:.0%} stores, limit = {result['limit_share']:.2f} of the "
        f"working set, backing file on {result['directory_fs']}; medians of "
        f"{result['repeats']} run(s); latencies in us, p50 / p90 / p99 / max",
    ]
    rows = []
    for algo, r in result["skewed"].items():
        for label, key in (("lru writeback", "with_writeback"), ("no limit", "without_writeback")):
            v = r[key]
            rows.append(
                [
                    f"{algo} {label}",
                    f"{v['pages_per_s']:,.0f}",
                    f"{v['memory_share']:.3f}",
                    v["bd_stat"]["bd_writes"],
                    v["bd_stat"]["bd_reads"],
                    _pct(v["store_us"]),
                    _pct(v["load_us"]),
                ]
            )
    out.append(
        format_table(
            ["pool", "pages/s", "from memory", "bd_writes", "bd_reads", "store us", "load us"],
            rows,
        )
    )
    out += ["", "stores that triggered a write-back, and loads from the file"]
    rows = []
    for algo, r in result["skewed"].items():
        v = r["with_writeback"]
        t = v["triggers"]
        rows.append(
            [
                algo,
                t["stores"],
                f"{t['share_of_stores']:.4f}",
                t["pages_per_trigger"],
                _pct(t["store_us"]),
                "-" if t["us_per_page_written"] is None else f"{t['us_per_page_written']:.2f}",
                _pct(v["file_load_us"]),
                v["pool_limit_hit"],
                v["reject_reclaim_fail"],
            ]
        )
    out.append(
        format_table(
            [
                "compressor",
                "triggers",
                "of stores",
                "pages each",
                "trigger store us",
                "us/page",
                "file load us",
                "pool_limit_hit",
                "reclaim_fail",
            ],
            rows,
        )
    )
    out += ["", "manual (zram): write every page back, then load every page (pages/s)"]
    rows = []
    for algo, m in result["manual"].items():
        rows.append(
            [
                algo,
                m["written_back"],
                f"{m['writeback_pages_per_s']:,.0f}",
                f"{m['load_memory_per_s']:,.0f}",
                f"{m['load_file_warm_per_s']:,.0f} ({m['warm_to_memory']:.2f})",
                f"{m['load_file_cold_per_s']:,.0f} ({m['cold_to_memory']:.2f})",
            ]
        )
    out.append(
        format_table(
            ["compressor", "written", "writeback/s", "memory load/s", "file warm/s", "file cold/s"],
            rows,
        )
    )
    bad = sum(r["mismatches"] for r in result["skewed"].values()) + sum(
        m["mismatches"] for m in result["manual"].values()
    )
    out += ["", f"pages that came back wrong: {bad}"]
    return "\n".join(out)
