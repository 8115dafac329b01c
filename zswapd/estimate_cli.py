"""``zswapd estimate``: the pages to read, a progress bar, and the table.

The computation is :mod:`zswapd.estimate`; this module reads the pages of
processes (as ``push --pid`` does) and page files, checks every source before
reading any, and prints a table in zramctl's units or JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack

from tqdm import tqdm

from zswapd.config import PoolConfig
from zswapd.errors import ConfigError
from zswapd.estimate import (
    BATCH,
    TIMING_PASSES,
    Config,
    Estimate,
    Reservoir,
    Row,
    check_sample,
    default_configs,
    estimate,
    estimate_sample,
    human_size,
    parse_config,
    recommend,
)
from zswapd.figures import compressor_figures
from zswapd.pagefile import PageFile, open_page_file
from zswapd.pagerefs import PageRef, PageRefs
from zswapd.procmem import ProcessMemory, open_process

__all__ = ["cmd_estimate", "render"]

_COLUMNS = (
    "ALGORITHM",
    "DATA",
    "COMPR",
    "TOTAL",
    "±",
    "RATIO",
    "SAVED",
    "ZERO-PAGES",
    "HUGE",
    "COMP-US",
    "DECOMP-US",
)


def _pages(refs: PageRefs) -> Iterator[bytes]:
    """Every page, read a batch at a time (the same pages a sample chooses from)."""
    batch: list[PageRef] = []
    for ref in refs:
        batch.append(ref)
        if len(batch) == BATCH:
            yield from refs.read(batch)
            batch = []
    yield from refs.read(batch)


def _cell(row: Row, column: str) -> str:
    if column == "ALGORITHM":
        return row.config.label
    if column == "±":
        if row.error is None or not row.mem_used_total:
            return "-"
        return f"{100 * row.error.mem_used_total / row.mem_used_total:.1f}%"
    if column == "RATIO":
        return f"{row.ratio:.2f}"
    if column in ("COMP-US", "DECOMP-US"):
        us = row.compress_us if column == "COMP-US" else row.decompress_us
        return "-" if us is None else f"{us:.1f}"
    value = {
        "DATA": row.orig_data_size,
        "COMPR": row.compr_data_size,
        "TOTAL": row.mem_used_total,
        "SAVED": row.saved,
    }.get(column)
    if value is not None:
        return human_size(value)
    return str(row.same_pages if column == "ZERO-PAGES" else row.huge_pages)


def _fidelity_lines(rows: Sequence[Row]) -> list[str]:
    """Which rows a Linux 6.12 zram would report the same, and which ran pure Python."""
    exact: list[str] = []
    other: list[str] = []
    pure: list[str] = []
    for row in rows:
        comp = PoolConfig(compressor=row.config.compressor, level=row.config.level)
        figures = compressor_figures(comp.make_compressor(), comp)
        (exact if figures.kernel_exact else other).append(row.config.label)
        if "pure Python" in figures.version:
            pure.append(row.config.label)
    lines = []
    if exact:
        lines.append(f"as Linux 6.12's zram would report them: {', '.join(exact)}")
    if other:
        lines.append(f"not kernel-exact (compressed sizes differ): {', '.join(other)}")
    if pure:
        lines.append(
            f"{', '.join(pure)} ran as pure Python here (not built, or ZSWAPD_PURE_PYTHON=1): "
            "its COMP-US is the emulator's, not the kernel's"
        )
    return lines


def render(result: Estimate) -> str:
    """The table, as zramctl lays one out, then notes and the recommendation."""
    cells = [list(_COLUMNS)] + [[_cell(r, c) for c in _COLUMNS] for r in result.rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    lines = [
        " ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in cells
    ]
    if result.sample is None:
        lines.append(f"every page used: {result.pages} pages, no sampling")
    else:
        lines.append(
            f"a sample of {result.sample} of {result.pages} pages (seed {result.seed}): "
            "± is a 95% bound on TOTAL, SAVED ± the same bytes"
        )
    lines.append(
        f"COMP-US, DECOMP-US: wall-clock microseconds per page on this machine, "
        f"median of {TIMING_PASSES} passes over {result.timed_pages} pages"
    )
    lines.extend(_fidelity_lines(result.rows))
    for name, why in result.left_out:
        lines.append(f"{name} left out: {why}")
    lines.append(f"recommendation: {recommend(result.rows)}")
    return "\n".join(lines)


def _sampled(
    processes: Sequence[ProcessMemory],
    files: Sequence[PageFile],
    configs: Sequence[Config],
    args: argparse.Namespace,
    on_pages: Callable[[int], None],
    on_config: Callable[[Config], None],
) -> Estimate:
    """Choose the sample from the page tables, then read only its pages."""
    refs = PageRefs(processes, files)
    reservoir: Reservoir[PageRef] = Reservoir(args.sample, random.Random(args.seed))
    step = 0
    for ref in refs:
        reservoir.add(ref)
        step += 1
        if step == 4096:
            on_pages(step)
            step = 0
    on_pages(step)
    pages = refs.read(reservoir.items)
    return estimate_sample(
        pages, reservoir.seen - refs.vanished, configs, seed=args.seed, on_config=on_config
    )


def _run(
    processes: Sequence[ProcessMemory],
    files: Sequence[PageFile],
    configs: Sequence[Config],
    args: argparse.Namespace,
) -> Estimate:
    """The estimate of opened sources, with a progress bar on a terminal."""
    total = None if processes else sum(f.pages for f in files)
    with tqdm(
        total=total, unit="page", desc="reading", disable=args.quiet or None, file=sys.stderr
    ) as bar:

        def on_pages(n: int) -> None:
            bar.update(n)

        def on_config(config: Config) -> None:
            bar.set_description(f"measuring {config.label}")

        if args.sample is None:
            pages = _pages(PageRefs(processes, files))
            return estimate(pages, configs, on_pages=on_pages, on_config=on_config)
        return _sampled(processes, files, configs, args, on_pages, on_config)


def cmd_estimate(args: argparse.Namespace) -> int:
    """``zswapd estimate``: what zram would report, per compressor, for these pages."""
    pids: list[int] = list(dict.fromkeys(args.pid or []))  # a process once, however named
    files: list[str] = args.files
    if not pids and not files:
        raise ConfigError("estimate takes --pid PID (repeatable) or FILE..., or both")
    if args.compressor:
        configs = list(dict.fromkeys(parse_config(text) for text in args.compressor))
        left_out: list[tuple[str, str]] = []
    else:
        configs, left_out = default_configs()
    if args.sample is not None:
        check_sample(args.sample)
    with ExitStack() as opened:
        # Every source opened, so checked, before any is read; read only
        # through what was opened (a pid reused, a path replaced, is not).
        processes = [opened.enter_context(open_process(pid)) for pid in pids]
        page_files = [opened.enter_context(open_page_file(name)) for name in files]
        result = _run(processes, page_files, configs, args)
    result.left_out = left_out
    if args.json:
        out = result.to_json()
        out["sources"] = [f"pid:{p}" for p in pids] + list(files)
        print(json.dumps(out, indent=2))
    else:
        print(render(result))
    return 0
