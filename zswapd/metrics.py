"""Prometheus metrics: one collector reading pool snapshots at scrape time.

Nothing is kept in step per page: at each scrape, :class:`PoolCollector` asks
every pool for its figures (``PagePool.stats()``, a typed
:class:`~zswapd.figures.PoolFigures`) and builds fresh metric
families from them, the kernel's names beside each (see DESIGN.md).  Per-class
series cover every distinct class that has ever held a zspage in a pool, so a
class that empties reports zeros instead of vanishing (series don't flap).
The only thing updated per request is the request-duration histogram.

The second tier's series (``zswapd_backing_*``, written-back pages, loads by
source) are there for every pool, zeros for a pool without a backing file, as
the kernel shows zswap's written_back_pages and zram's bd_stat whether or not a
device is behind them: a ratio or a sum over pools needs no ``or vector(0)``,
and nothing appears or vanishes when a pool gains a file.  Loads by source
split ``zswapd_pages_total{op="load"}``: ``same`` (a same-filled word),
``backing`` (read back from the file, verified: bd_reads) and ``pool`` (the
rest, decompressed from memory); the pool counts a written-back page as loaded
only once read back, with bd_reads, so ``pool`` never goes down.  A pool's
writeback mode is an info-style series (``zswapd_pool_writeback_info``) so
that rules can leave out lru pools, which sit near their limit by design.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from allocator import FULLNESS_LABELS
from zswapd import __version__
from zswapd.device import DeviceRegistry
from zswapd.errors import UnknownPoolError
from zswapd.figures import PoolFigures, server_figures
from zswapd.pools import PoolRegistry
from zswapd.shadows import ShadowRegistry
from zswapd.swapsim import ProcessFigures

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "PoolCollector", "ShadowCollector"]

# (metric, help, the figure) for the per-pool gauges.
_POOL_GAUGES: list[tuple[str, str, Callable[[PoolFigures], int]]] = [
    (
        "zswapd_pool_size_bytes",
        "Pages held by the allocator x 4096 (mem_used_total).",
        lambda f: f.mm_stat.mem_used_total,
    ),
    (
        "zswapd_pool_size_max_bytes",
        "High-water mark of the pool size (mem_used_max).",
        lambda f: f.mm_stat.mem_used_max,
    ),
    (
        "zswapd_pool_limit_bytes",
        "Configured pool limit, 0 = none (mem_limit).",
        lambda f: f.mm_stat.mem_limit,
    ),
    (
        "zswapd_stored_pages",
        "Pages stored in memory, same-filled included (zswap's stored_pages; "
        "written-back pages are in zswapd_backing_pages).",
        lambda f: f.zswap.stored_pages,
    ),
    (
        "zswapd_original_bytes",
        "Stored pages x 4096 (orig_data_size).",
        lambda f: f.mm_stat.orig_data_size,
    ),
    (
        "zswapd_compressed_bytes",
        "Sum of compressed object sizes (compr_data_size).",
        lambda f: f.mm_stat.compr_data_size,
    ),
    (
        "zswapd_same_filled_pages",
        "Pages kept as one repeated word (same_pages).",
        lambda f: f.mm_stat.same_pages,
    ),
    (
        "zswapd_huge_pages",
        "Pages stored uncompressed (huge_pages).",
        lambda f: f.mm_stat.huge_pages,
    ),
    (
        "zswapd_metadata_bytes",
        "The pool's table of entries, charged to the server's memory limit (not in mm_stat).",
        lambda f: f.metadata.bytes,
    ),
]


def _pool_gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
    """A fresh gauge family, its series labelled by pool first, then ``labels``."""
    return GaugeMetricFamily(name, documentation, labels=["pool", *labels])


def _pool_counter(name: str, documentation: str, *labels: str) -> CounterMetricFamily:
    """A fresh counter family, its series labelled by pool first, then ``labels``."""
    return CounterMetricFamily(name, documentation, labels=["pool", *labels])


class PoolCollector(Collector):
    """Builds every pool metric from fresh snapshots at each scrape."""

    def __init__(self, pools: PoolRegistry) -> None:
        self.pools = pools
        self._seen: dict[str, set[int]] = {}  # pool -> class sizes that held a zspage
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are built at scrape time

    def collect(self) -> Iterator[Metric]:
        snapshots: list[tuple[str, PoolFigures]] = []
        for name in self.pools.names():
            try:
                snapshots.append((name, self.pools.get(name).stats()))
            except UnknownPoolError:  # removed since names() listed it
                continue
        with self._lock:
            for gone in set(self._seen) - {n for n, _ in snapshots}:
                del self._seen[gone]
            seen = {n: self._seen.setdefault(n, set()) for n, _ in snapshots}
            for name, stats in snapshots:
                seen[name].update(c.size for c in stats.classes if c.objs_allocated)
        yield from self._server_metrics()
        yield from self._pool_metrics(snapshots)
        yield from self._backing_metrics(snapshots)
        yield from self._class_metrics(snapshots, seen)

    def _server_metrics(self) -> Iterator[Metric]:
        """Every pool and device together, against --memory-limit (no pool label)."""
        server = server_figures(self.pools.budget)
        limit = GaugeMetricFamily(
            "zswapd_memory_limit_bytes",
            "The server-wide memory limit of all pools and devices, 0 = none (--memory-limit).",
        )
        used = GaugeMetricFamily(
            "zswapd_memory_used_bytes",
            "Pages held by all pools and devices together x 4096, their tables included.",
        )
        pools = GaugeMetricFamily("zswapd_pools", "Pools, devices' included.")
        max_pools = GaugeMetricFamily(
            "zswapd_max_pools", "Pools plus devices allowed, 0 = no bound (--max-pools)."
        )
        limit.add_metric([], server.memory_limit)
        used.add_metric([], server.memory_used)
        pools.add_metric([], len(self.pools.names()))
        max_pools.add_metric([], self.pools.max_pools or 0)
        yield from (limit, used, pools, max_pools)

    @staticmethod
    def _pool_metrics(snapshots: list[tuple[str, PoolFigures]]) -> Iterator[Metric]:
        for metric, doc, figure in _POOL_GAUGES:
            fam = _pool_gauge(metric, doc)
            for name, stats in snapshots:
                fam.add_metric([name], figure(stats))
            yield fam
        compacted = _pool_counter(
            "zswapd_compacted_pages", "Pages released by compaction (pages_compacted)."
        )
        rejected = _pool_counter("zswapd_rejected_pages", "Pages refused, by reason.", "reason")
        # Requests (loads and frees) refused as a whole, by reason.
        refused = _pool_counter(
            "zswapd_rejected_requests",
            "Requests refused, by reason (stale_handle: a freed, never issued or forged handle).",
            "reason",
        )
        for name, stats in snapshots:
            compacted.add_metric([name], stats.mm_stat.pages_compacted)
            counts = stats.counters
            # An lru pool's limit hits answered by writing back refused nothing.
            limit_refused = stats.zswap.pool_limit_hit - counts.limit_hit_written_back
            rejected.add_metric([name, "pool_limit"], limit_refused)
            rejected.add_metric([name, "compress_poor"], stats.zswap.reject_compress_poor)
            rejected.add_metric([name, "memory_limit"], counts.memory_limit_hit)
            rejected.add_metric([name, "reclaim_fail"], stats.zswap.reject_reclaim_fail)
            refused.add_metric([name, "stale_handle"], stats.counters.stale_handle_requests)
        pages = _pool_counter("zswapd_pages", "Pages stored, loaded and freed, by operation.", "op")
        # zswap's pool_limit_hit as the stats give it: an lru pool counts the hits
        # it answered by writing back too, so this is not a count of refusals
        # (zswapd_rejected_pages_total{reason="pool_limit"} is).
        limit_hit = _pool_counter(
            "zswapd_pool_limit_hit",
            "Times a store found the pool at its limit (zswap's pool_limit_hit), "
            "lru pools' write-backs included.",
        )
        for name, stats in snapshots:
            counts = stats.counters
            pages.add_metric([name, "store"], counts.stored_pages_total)
            pages.add_metric([name, "load"], counts.loaded_pages_total)
            pages.add_metric([name, "free"], counts.freed_pages_total)
            limit_hit.add_metric([name], stats.zswap.pool_limit_hit)
        yield compacted
        yield rejected
        yield refused
        yield pages
        yield limit_hit

    @staticmethod
    def _backing_metrics(snapshots: list[tuple[str, PoolFigures]]) -> Iterator[Metric]:
        """The second tier: bd_stat, zswap's written_back_pages, loads by source."""
        pages = _pool_gauge(
            "zswapd_backing_pages", "Pages now in the backing file (bd_count); 0 without one."
        )
        size = _pool_gauge(
            "zswapd_backing_size_bytes",
            "Size of the backing file, slots x 4096; 0 = no backing file.",
        )
        io = _pool_counter(
            "zswapd_backing_io_pages",
            "Pages read from and written to the backing file (bd_reads, bd_writes).",
            "op",
        )
        written_back = _pool_counter(
            "zswapd_written_back_pages",
            "Pages moved from memory to the backing file (zswap's written_back_pages).",
        )
        errors = _pool_counter(
            "zswapd_backing_errors",
            "Backing file failures: io (a read or write that failed), corrupt (a page "
            "read back that failed its checksum, not served).",
            "kind",
        )
        # Info-style: one series a pool, its mode as a label.  An lru pool settles
        # at 90-100% of its limit by design, so alerts on the limit need to tell
        # it apart (the mode is fixed at creation: the series never changes label).
        mode = _pool_gauge(
            "zswapd_pool_writeback_info",
            "A pool's writeback mode: none (no backing file), manual (zram) or lru (zswap).",
            "mode",
        )
        # -1 when unset, rather than no series: nothing appears or vanishes when
        # the limit is set or lifted live, and "== 0" still means "used up".
        limit_left = _pool_gauge(
            "zswapd_writeback_limit_pages",
            "Pages manual writeback may still write (zram's writeback_limit); -1 = no limit.",
        )
        loaded = _pool_counter(
            "zswapd_loaded_pages",
            "Pages loaded, by where they were served: pool (memory), backing (the file), "
            "same (a same-filled word).",
            "source",
        )
        for name, stats in snapshots:
            bd, counts, backing = stats.bd_stat, stats.counters, stats.backing
            pages.add_metric([name], bd.bd_count)
            mode.add_metric([name, "none" if backing is None else backing.writeback], 1)
            left = stats.config.writeback_limit
            limit_left.add_metric([name], -1 if left is None else left)
            size.add_metric([name], 0 if backing is None else backing.size)
            io.add_metric([name, "read"], bd.bd_reads)
            io.add_metric([name, "write"], bd.bd_writes)
            written_back.add_metric([name], stats.zswap.written_back_pages)
            errors.add_metric([name, "io"], 0 if backing is None else backing.io_errors)
            errors.add_metric([name, "corrupt"], 0 if backing is None else backing.corrupt_pages)
            same = counts.loaded_same_pages
            from_memory = counts.loaded_pages_total - same - bd.bd_reads
            loaded.add_metric([name, "pool"], from_memory)
            loaded.add_metric([name, "backing"], bd.bd_reads)
            loaded.add_metric([name, "same"], same)
        yield from (pages, size, io, written_back, errors, loaded, mode, limit_left)

    @staticmethod
    def _class_metrics(
        snapshots: list[tuple[str, PoolFigures]], seen: dict[str, set[int]]
    ) -> Iterator[Metric]:
        zspages = _pool_gauge(
            "zswapd_class_zspages", "zspages of a size class per fullness step.", "size", "fullness"
        )
        allocated = _pool_gauge(
            "zswapd_class_objects_allocated",
            "Object slots in a class's zspages (obj_allocated).",
            "size",
        )
        used = _pool_gauge(
            "zswapd_class_objects_used", "Objects in use in a class (obj_used).", "size"
        )
        pages = _pool_gauge(
            "zswapd_class_pages", "Pages in a class's zspages (pages_used).", "size"
        )
        for name, stats in snapshots:
            for c in stats.classes:
                if c.size not in seen[name]:
                    continue
                size = str(c.size)
                for step, count in zip(FULLNESS_LABELS, c.zspages, strict=True):
                    zspages.add_metric([name, size, step], count)
                allocated.add_metric([name, size], c.objs_allocated)
                used.add_metric([name, size], c.objs_used)
                pages.add_metric([name, size], c.pages_used)
        yield from (zspages, allocated, used, pages)


class DeviceCollector(Collector):
    """zram's io_stat and bd_stat for every block device, labelled by its pool."""

    def __init__(self, devices: DeviceRegistry) -> None:
        self.devices = devices

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        io = _pool_counter("zswapd_device_io", "zram's io_stat counters of a block device.", "kind")
        size = _pool_gauge("zswapd_device_size_bytes", "A block device's size (disksize).")
        # bd_count is a level (it falls as pages are read back and freed), not a
        # counter: it is zswapd_backing_pages{pool=DEV}, so only the counters here.
        bd = _pool_counter(
            "zswapd_device_bd",
            "zram's bd_stat reads and writes of a block device, in pages (bd_count: "
            "zswapd_backing_pages).",
            "kind",
        )
        for name in self.devices.names():
            try:
                dev = self.devices.get(name)
                bd_stat = dev.pool.bd_stat()
            except UnknownPoolError:  # removed since names() listed it, or since get()
                continue
            size.add_metric([name], dev.size)
            for kind, value in vars(dev.io).items():
                io.add_metric([name, kind], value)
            bd.add_metric([name, "bd_reads"], bd_stat.bd_reads)
            bd.add_metric([name, "bd_writes"], bd_stat.bd_writes)
        yield from (io, size, bd)


# (metric, help, the figure) per shadowed process: levels, then counters.
_SHADOW_GAUGES: list[tuple[str, str, Callable[[ProcessFigures], float]]] = [
    (
        "zswapd_shadow_resident_pages",
        "Pages of a shadowed process swap could take, present at the shadow's last scan.",
        lambda p: p.resident_pages,
    ),
    (
        "zswapd_shadow_cold_pages",
        "Pages of a shadowed process unchanged for the shadow's cold_after: stored or waiting.",
        lambda p: p.cold_pages,
    ),
    (
        "zswapd_shadow_stored_pages",
        "Pages of a shadowed process stored: in the pool or written back from it "
        "(bd_count of them on disk).",
        lambda p: p.stored_pages,
    ),
    (
        "zswapd_shadow_saved_bytes",
        "A shadowed process's share, by stored pages, of the RAM its pool saves "
        "(orig_data_size - 4096 * bd_count - mem_used_total).",
        lambda p: p.saved_bytes,
    ),
    (
        "zswapd_shadow_exited",
        "1 once a shadowed process has exited (its figures are its last), else 0.",
        lambda p: int(p.exited),
    ),
]
_SHADOW_COUNTERS: list[tuple[str, str, Callable[[ProcessFigures], float]]] = [
    (
        "zswapd_shadow_swapouts",
        "Pages of a shadowed process stored in its pool (swap-outs).",
        lambda p: p.swapouts_total,
    ),
    (
        "zswapd_shadow_refaults",
        "Stored pages a shadowed process touched again, each a refault "
        "(workingset_refault_anon; writes only under hash).",
        lambda p: p.refaults_total,
    ),
    (
        "zswapd_shadow_rejected_pages",
        "Cold pages of a shadowed process its pool refused.",
        lambda p: p.rejected_total,
    ),
    (
        "zswapd_shadow_scan_seconds",
        "CPU seconds the shadow spent scanning a process.",
        lambda p: p.scan_seconds_total,
    ),
    (
        "zswapd_shadow_scanned_bytes",
        "Bytes of a process the shadow's scans read.",
        lambda p: p.scanned_bytes_total,
    ),
]


class ShadowCollector(Collector):
    """What shadows report of their processes (zswapd.shadows), at each scrape.

    Per process, labelled shadow, pool, pid and comm: at most 64 shadows of
    1024 processes each.  A report that expires takes its series with it.
    """

    def __init__(self, shadows: ShadowRegistry) -> None:
        self.shadows = shadows

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        _, reports = self.shadows.snapshot()
        labels = ["shadow", "pool", "pid", "comm"]
        gauges = [(GaugeMetricFamily(n, d, labels=labels), f) for n, d, f in _SHADOW_GAUGES]
        counters = [(CounterMetricFamily(n, d, labels=labels), f) for n, d, f in _SHADOW_COUNTERS]
        interval = GaugeMetricFamily(
            "zswapd_shadow_interval_seconds",
            "Seconds between a shadow's scans.",
            labels=["shadow", "pool"],
        )
        cold_after = GaugeMetricFamily(
            "zswapd_shadow_cold_after_seconds",
            "Seconds a page stays unchanged before a shadow stores it.",
            labels=["shadow", "pool"],
        )
        # Info-style: how a shadow tells a page changed; "hash" sees writes only.
        info = GaugeMetricFamily(
            "zswapd_shadow_info",
            "A shadow's change detection: soft-dirty, hash (writes only), +idle (reads too).",
            labels=["shadow", "pool", "detection"],
        )
        for report in reports:
            interval.add_metric([report.name, report.pool], report.interval_seconds)
            cold_after.add_metric([report.name, report.pool], report.cold_after_seconds)
            info.add_metric([report.name, report.pool, report.detection], 1)
            for p in report.processes:
                values = [report.name, report.pool, str(p.pid), p.comm]
                for family, figure in gauges + counters:
                    family.add_metric(values, figure(p))
        yield from (f for f, _ in gauges)
        yield from (f for f, _ in counters)
        yield from (interval, cold_after, info)


class Metrics:
    """The daemon's metrics registry: pools, shadows, requests, process, build info."""

    def __init__(
        self,
        pools: PoolRegistry,
        devices: DeviceRegistry | None = None,
        shadows: ShadowRegistry | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PoolCollector(pools))
        if devices is not None:
            self.registry.register(DeviceCollector(devices))
        if shadows is not None:
            self.registry.register(ShadowCollector(shadows))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("zswapd_build", "zswapd's version.", registry=self.registry).info(
            {"version": __version__}
        )
        self.requests = Histogram(
            "zswapd_request_duration_seconds",
            "Request handling time by frontend and operation.",
            ["interface", "op"],
            buckets=(
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
            ),
            registry=self.registry,
        )

    def observe(self, interface: str, op: str, seconds: float) -> None:
        self.requests.labels(interface, op).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
