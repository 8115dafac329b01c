"""What zram would report for some pages, per compressor, without a daemon.

``zswapd estimate`` answers "how much would zram save here, and with which
compressor?" by storing the pages in one real :class:`~zswapd.pool.PagePool`
per configuration (compressor and level, zsmalloc with the kernel's defaults:
chain size 8, 4 KiB pages, the 8-byte object header).  The figures are then
exactly what zswapd's pool reports, under zram's mm_stat names.

Pages are read once.  Without a sample every page is stored in every
configuration's pool as it is read, so memory grows with the pools (about the
sum of their ``mem_used_total``); a full run is refused past
:data:`FULL_RUN_MAX_PAGES` pages or :data:`FULL_RUN_MAX_HELD` bytes held, and
asks for a sample instead.

With a sample of n pages (a uniform reservoir sample, seeded, of the P pages
read: only n pages are ever held), the sample is stored and scaled:

- ``orig_data_size`` is P x 4096, exact.
- ``compr_data_size``, ``same_pages`` and ``huge_pages`` are the sample's
  per-page means times P.
- ``mem_used_total`` follows zsmalloc's packing: a pool that only stores
  keeps every class dense (allocation takes the fullest zspage), so a class
  holding n_c objects uses ceil(n_c / objs_per_zspage) zspages: n_c times
  one object's share of a zspage, plus the unused part of the class's last
  zspage (0 to pages_per_zspage - pages_per_zspage / objs_per_zspage pages).
  n_c is the sample's count times P / n; each unused part is counted at its
  midpoint, and so is one zspage of each class the sample missed between
  the smallest and largest classes it saw (a rare class still takes a zspage).

The error bound is the half-width of a 95% interval.  For ``compr_data_size``
it is 1.96 standard errors of the mean object size (0 same-filled, 4096 huge)
times P, with the finite-population correction.  For ``mem_used_total`` it is
that of the objects' zspage shares, combined with the unused parts: where
the sample knows a class's count only to more than a zspage (P/n x
sqrt(count) >= objs_per_zspage) the end of its last zspage is as good as
uniform, and its variance is added; for every other class, and each class
the sample missed, the worst case of its midpoint (half its unused part) is
added outright.  That last term is a few MiB at most, whatever P, so it
matters for small sets of pages only.  Page counts use the Agresti-Coull
interval, which stays honest when the sample saw none.  RATIO and SAVED
follow from TOTAL's interval (DATA is exact).
``tests/zswapd/test_estimate.py`` checks on the shared corpus that the full
figure lands inside this bound for several seeds.

The rows, their JSON and the recommendation are :mod:`zswapd.estimate_report`;
the reservoir and the bounds' statistics are :mod:`zswapd.sampling`.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import compressors
from zswapd.config import PoolConfig
from zswapd.errors import ConfigError
from zswapd.estimate_report import (
    TIMING_PASSES,
    Bound,
    Config,
    Estimate,
    Row,
    human_size,
    recommend,
)
from zswapd.figures import MmStat
from zswapd.pool import PAGE_SIZE, PagePool
from zswapd.sampling import Z95, Reservoir, count_bound, mean_bound

__all__ = [
    "DEFAULT_CONFIGS",
    "FULL_RUN_MAX_HELD",
    "FULL_RUN_MAX_PAGES",
    "TIMING_PASSES",
    "Bound",
    "Config",
    "Estimate",
    "Reservoir",
    "Row",
    "check_sample",
    "default_configs",
    "estimate",
    "estimate_sample",
    "human_size",
    "install_hint",
    "parse_config",
    "recommend",
]

# The configurations worth trying, as zram offers them: each backend at the
# kernel's default level, and zstd also at its fast (-1, 1) and strong (9) ends.
# "lz4" is the kernel's own lz4 (reproduced); userspace liblz4 ("lz4-lib") is
# not what zram would use, so it is left out (--compressor lz4-lib asks for it).
DEFAULT_CONFIGS: tuple[tuple[str, int | None], ...] = (
    ("lz4", None),
    ("lz4hc", 9),
    ("zstd", -1),
    ("zstd", 1),
    ("zstd", 3),
    ("zstd", 9),
    ("deflate", None),
    ("lzo", None),
)
# A full run holds every configuration's pool at once: past 1 GiB of pages
# (8 pools of a few hundred MiB each) a sample answers as well, in seconds.
FULL_RUN_MAX_PAGES = 1 << 18
# ... and past 2 GiB held by the pools together (pages that hardly compress:
# 8 pools of nearly 1 GiB each would be too much for a laptop).
FULL_RUN_MAX_HELD = 2 << 30
# Pages stored per call: the pool compresses a batch outside its lock.
BATCH = 256
# Compress and decompress costs are timed on this many pages (the sample's,
# or a reservoir of the pages read), median of TIMING_PASSES passes.
TIMING_PAGES = 1024
# What to install for a backend whose library is missing.
_INSTALL = {
    "lzo": "apt-get install liblzo2-dev && pip install -e '.[lzo]' (python-lzo, from a checkout)",
    "lz4": "pip install lz4",
    "lz4-lib": "pip install lz4",
    "lz4hc": "pip install lz4",
    "zstd": "pip install zstandard",
}


def install_hint(name: str) -> str:
    """What to install for backend ``name``."""
    return _INSTALL.get(name, f"the library of the {name} backend")


def parse_config(text: str) -> Config:
    """``NAME`` or ``NAME:LEVEL`` as --compressor takes it, checked.

    Raises:
        ConfigError: an unknown or uninstalled backend, or a level it refuses.
    """
    name, sep, level_text = text.partition(":")
    level: int | None = None
    if sep:
        try:
            level = int(level_text)
        except ValueError:
            raise ConfigError(
                f"--compressor {text!r}: level {level_text!r} is not a number"
            ) from None
    if name not in compressors.available():
        if name in _INSTALL:
            raise ConfigError(f"--compressor {text!r}: not installed here ({install_hint(name)})")
        known = ", ".join(compressors.available())
        raise ConfigError(f"--compressor {text!r}: unknown compressor; available: {known}")
    try:
        PoolConfig(compressor=name, level=level)
    except ConfigError as exc:
        raise ConfigError(f"--compressor {text!r}: {exc}") from None
    return Config(name, level)


def check_sample(size: int) -> None:
    """Refuse a sample that holds fewer than 1 or more than FULL_RUN_MAX_PAGES pages.

    A sample holds its pages raw, and one configuration's pool at a time: at
    most 1 GiB of pages and a pool of about as much, within FULL_RUN_MAX_HELD.
    A larger one would be a full run that skips the full run's caps.

    Raises:
        ConfigError: the size is out of range.
    """
    if not 1 <= size <= FULL_RUN_MAX_PAGES:
        raise ConfigError(
            f"--sample must be 1 to {FULL_RUN_MAX_PAGES} ({FULL_RUN_MAX_PAGES >> 8} MiB "
            f"of pages, held), not {size}"
        )


def default_configs() -> tuple[list[Config], list[tuple[str, str]]]:
    """The configurations worth trying that are installed, and those left out (why)."""
    here = set(compressors.available())
    configs = [Config(n, lv) for n, lv in DEFAULT_CONFIGS if n in here]
    missing = sorted({n for n, _ in DEFAULT_CONFIGS if n not in here})
    return configs, [(n, f"not installed here: {install_hint(n)}") for n in missing]


# -- reading ------------------------------------------------------------------


def _batches(pages: Iterable[bytes], n: int) -> Iterator[list[bytes]]:
    """Lists of up to ``n`` pages."""
    batch: list[bytes] = []
    for page in pages:
        batch.append(page)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# -- timing -------------------------------------------------------------------


def _time_per_page(fn: Callable[[bytes], object], items: Sequence[bytes]) -> float | None:
    """Median over passes of wall-clock microseconds per call of ``fn``."""
    if not items:
        return None
    passes = []
    for _ in range(TIMING_PASSES):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        passes.append((time.perf_counter() - t0) / len(items) * 1e6)
    return statistics.median(passes)


def _timings(config: Config, pages: Sequence[bytes], huge_size: int) -> tuple[float | None, ...]:
    """Compress cost over pages zram would compress (not same-filled), and
    decompress cost over the objects it would decompress (not huge)."""
    comp = PoolConfig(compressor=config.compressor, level=config.level).make_compressor()
    todo = [p for p in pages if not _same_filled(p)]
    objects = [c for c in (comp.compress(p) for p in todo) if len(c) < huge_size]

    def decompress(data: bytes) -> object:
        return comp.decompress(data, PAGE_SIZE)

    return _time_per_page(comp.compress, todo), _time_per_page(decompress, objects)


def _same_filled(page: bytes) -> bool:
    return page[:8] == page[-8:] and page == page[:8] * (PAGE_SIZE // 8)


# -- scaling a sample ---------------------------------------------------------


def _new_pool(config: Config) -> PagePool:
    return PagePool("estimate", PoolConfig(compressor=config.compressor, level=config.level))


def _scaled_row(
    config: Config, sample: Sequence[bytes], population: int, timing: tuple[float | None, ...]
) -> tuple[Row, int]:
    """A configuration's figures for ``population`` pages from its ``sample``."""
    n = len(sample)
    pool = _new_pool(config)
    try:
        for batch in _batches(sample, BATCH):
            pool.store(batch)
        mm = pool.mm_stat()
        classes = pool.stats().classes
        huge_size = pool.huge_class_size
    finally:
        pool.close()
    # compr_data_size: each page's object size (0 same-filled, 4096 huge).
    comp = PoolConfig(compressor=config.compressor, level=config.level).make_compressor()
    sizes = []
    for page in sample:
        if _same_filled(page):
            sizes.append(0)
            continue
        clen = len(comp.compress(page))
        sizes.append(PAGE_SIZE if clen >= huge_size else clen)
    scale = population / n
    # mem_used_total: per class, the scaled objects' shares of their zspages,
    # plus the unused part of the class's last zspage at its midpoint.
    seen = [c for c in classes if c.objs_used]
    lo = min((c.size for c in seen), default=0)
    hi = max((c.size for c in seen), default=0)
    total = slack = tail_var = 0.0
    m_sum = m_sq = 0.0
    for c in classes:
        k = c.objs_used
        ppz = c.pages_per_zspage
        opz = ppz * PAGE_SIZE // c.size
        share = ppz * PAGE_SIZE / opz  # one object's part of its zspage, bytes
        if k:
            m_sum += k * share
            m_sq += k * share * share
            tail = (ppz - ppz / opz) * PAGE_SIZE
        elif lo < c.size < hi:
            # A class between seen ones that the sample missed may hold a few
            # objects, so a zspage, in the full pool: count it at its midpoint.
            tail = ppz * PAGE_SIZE
        else:
            continue
        total += k * scale * share + tail / 2
        if k and scale * math.sqrt(k) >= opz:
            # The sample knows this class's count only to more than a zspage:
            # where its last zspage ends is as good as uniform.
            tail_var += tail * tail / 12
        else:
            slack += tail / 2  # a rare class: the worst case
    lin_half = mean_bound(m_sum, m_sq, n, population)
    total_half = math.hypot(lin_half, Z95 * math.sqrt(tail_var)) + slack
    compr_half = mean_bound(sum(sizes), sum(s * s for s in sizes), n, population)
    error = Bound(
        compr_data_size=math.ceil(compr_half),
        mem_used_total=math.ceil(total_half),
        same_pages=count_bound(mm.same_pages, n, population),
        huge_pages=count_bound(mm.huge_pages, n, population),
    )
    row = Row(
        config,
        orig_data_size=population * PAGE_SIZE,
        compr_data_size=round(sum(sizes) * scale),
        mem_used_total=round(total),
        same_pages=round(mm.same_pages * scale),
        huge_pages=round(mm.huge_pages * scale),
        compress_us=timing[0],
        decompress_us=timing[1],
        error=error,
    )
    return row, huge_size


def _exact_row(config: Config, mm: MmStat, timing: tuple[float | None, ...]) -> Row:
    return Row(
        config,
        orig_data_size=mm.orig_data_size,
        compr_data_size=mm.compr_data_size,
        mem_used_total=mm.mem_used_total,
        same_pages=mm.same_pages,
        huge_pages=mm.huge_pages,
        compress_us=timing[0],
        decompress_us=timing[1],
    )


# -- the public entry point ---------------------------------------------------


def estimate(
    pages: Iterable[bytes],
    configs: Sequence[Config],
    *,
    sample: int | None = None,
    seed: int = 0,
    on_pages: Callable[[int], None] | None = None,
    on_config: Callable[[Config], None] | None = None,
) -> Estimate:
    """What zram would report for ``pages`` with each of ``configs``.

    Args:
        pages: 4096-byte pages, read once.
        configs: the configurations, in the order of the rows.
        sample: keep only a uniform random sample of this many pages (1 to
            FULL_RUN_MAX_PAGES) and scale; None: every page is stored in every
            configuration's pool.
        seed: the sample's seed (and the timing reservoir's).
        on_pages: called with the number of pages read, as they are read.
        on_config: called as each configuration is measured.

    Raises:
        ConfigError: no pages, no configuration, a sample past
            FULL_RUN_MAX_PAGES, or a full run past FULL_RUN_MAX_PAGES or
            FULL_RUN_MAX_HELD.
    """
    if not configs:
        raise ConfigError("no compressor to try")
    if sample is not None:
        check_sample(sample)
    rng = random.Random(seed)
    if sample is not None:
        return _estimate_sample(pages, configs, sample, seed, rng, on_pages, on_config)
    timing: Reservoir[bytes] = Reservoir(TIMING_PAGES, rng)
    pools = [_new_pool(c) for c in configs]
    try:
        for batch in _batches(pages, BATCH):
            if timing.seen + len(batch) > FULL_RUN_MAX_PAGES:
                raise ConfigError(
                    f"more than {FULL_RUN_MAX_PAGES} pages ({FULL_RUN_MAX_PAGES >> 8} MiB): "
                    "a full run would hold every configuration's pool; "
                    "estimate with --sample N (e.g. --sample 100000) instead"
                )
            for page in batch:
                timing.add(page)
            for pool in pools:
                pool.store(batch)
            held = sum(pool.mm_stat().mem_used_total for pool in pools)
            if held > FULL_RUN_MAX_HELD:
                raise ConfigError(
                    f"the pools of a full run hold more than {FULL_RUN_MAX_HELD >> 20} MiB "
                    f"after {timing.seen} pages: estimate with --sample N "
                    "(e.g. --sample 100000) instead"
                )
            if on_pages is not None:
                on_pages(len(batch))
        if not timing.seen:
            raise ConfigError("no pages to estimate")
        rows = []
        for config, pool in zip(configs, pools, strict=True):
            if on_config is not None:
                on_config(config)
            times = _timings(config, timing.items, pool.huge_class_size)
            rows.append(_exact_row(config, pool.mm_stat(), times))
        huge_size = pools[0].huge_class_size
    finally:
        for pool in pools:
            pool.close()
    return Estimate(rows, timing.seen, None, None, len(timing.items), huge_size)


def _estimate_sample(
    pages: Iterable[bytes],
    configs: Sequence[Config],
    size: int,
    seed: int,
    rng: random.Random,
    on_pages: Callable[[int], None] | None,
    on_config: Callable[[Config], None] | None,
) -> Estimate:
    reservoir: Reservoir[bytes] = Reservoir(size, rng)
    for batch in _batches(pages, BATCH):
        for page in batch:
            reservoir.add(page)
        if on_pages is not None:
            on_pages(len(batch))
    return estimate_sample(reservoir.items, reservoir.seen, configs, seed=seed, on_config=on_config)


def estimate_sample(
    sample: Sequence[bytes],
    population: int,
    configs: Sequence[Config],
    *,
    seed: int = 0,
    on_config: Callable[[Config], None] | None = None,
) -> Estimate:
    """What zram would report for ``population`` pages from a uniform ``sample`` of them.

    A sample of every page (``len(sample) >= population``) gives the exact figures.

    Raises:
        ConfigError: no pages, or no configuration.
    """
    if not configs:
        raise ConfigError("no compressor to try")
    if not population or not sample:
        raise ConfigError("no pages to estimate")
    exact = len(sample) >= population
    rng = random.Random(seed)
    timed = list(sample) if len(sample) <= TIMING_PAGES else rng.sample(list(sample), TIMING_PAGES)
    rows = []
    huge_size = 0
    for config in configs:
        if on_config is not None:
            on_config(config)
        pool = _new_pool(config)
        huge_size = pool.huge_class_size
        pool.close()
        times = _timings(config, timed, huge_size)
        if exact:
            # The sample is every page: the pool's own figures, exact.
            pool = _new_pool(config)
            try:
                for batch in _batches(sample, BATCH):
                    pool.store(batch)
                rows.append(_exact_row(config, pool.mm_stat(), times))
            finally:
                pool.close()
        else:
            row, huge_size = _scaled_row(config, sample, population, times)
            rows.append(row)
    sampled = None if exact else len(sample)
    return Estimate(
        rows, population if not exact else len(sample), sampled, seed, len(timed), huge_size
    )
