"""``zswapd estimate``: the pages to read, a progress bar, and the table.

The computation is :mod:`zswapd.estimate`; this module reads the pages of
processes (as ``push --pid`` does) and page files, checks every source before
reading any, and prints a table in zramctl's units or JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import stat
import sys
from collections.abc import Callable, Iterator, Sequence

from tqdm import tqdm

from zswapd.errors import ConfigError
from zswapd.estimate import (
    BATCH,
    TIMING_PASSES,
    Config,
    Estimate,
    Reservoir,
    Row,
    default_configs,
    estimate,
    estimate_sample,
    human_size,
    parse_config,
    recommend,
)
from zswapd.pagerefs import PageRef, PageRefs
from zswapd.pool import PAGE_SIZE
from zswapd.procmem import read_maps

__all__ = ["cmd_estimate", "render"]

_COLUMNS = (
    "ALGORITHM",
    "DATA",
    "COMPR",
    "TOTAL",
    "±",
    "RATIO",
    "SAVED",
    "SAME",
    "HUGE",
    "COMP-US",
    "DECOMP-US",
)


def _check_pid(pid: int) -> None:
    """Fail before any page is read: no such process, or no memory to read."""
    try:
        read_maps(pid)
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"--pid {pid}: no such process") from None
    except ProcessLookupError:
        raise ConfigError(f"--pid {pid}: has no user memory (a kernel thread?)") from None
    except OSError as exc:
        raise ConfigError(f"--pid {pid}: cannot read its memory: {exc.strerror}") from None
    os.close(fd)


def _check_file(name: str) -> int:
    """Pages in a page file; refuses one that is not a regular file of whole pages."""
    try:
        st = os.stat(name)
    except OSError as exc:
        raise ConfigError(f"{name}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{name}: not a regular file (a page file is 4096-byte pages)")
    if st.st_size % PAGE_SIZE:
        raise ConfigError(f"{name}: {st.st_size} bytes is not a whole number of 4096-byte pages")
    return st.st_size // PAGE_SIZE


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
    return str(row.same_pages if column == "SAME" else row.huge_pages)


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
        lines.append(f"every page used: {result.pages} pages, figures exact")
    else:
        lines.append(
            f"a sample of {result.sample} of {result.pages} pages (seed {result.seed}): "
            "± is a 95% bound on TOTAL, SAVED ± the same bytes"
        )
    lines.append(
        f"COMP-US, DECOMP-US: wall-clock microseconds per page on this machine, "
        f"median of {TIMING_PASSES} passes over {result.timed_pages} pages"
    )
    for name, why in result.left_out:
        lines.append(f"{name} left out: {why}")
    lines.append(f"recommendation: {recommend(result.rows)}")
    return "\n".join(lines)


def _sampled(
    pids: Sequence[int],
    files: Sequence[str],
    configs: Sequence[Config],
    args: argparse.Namespace,
    on_pages: Callable[[int], None],
    on_config: Callable[[Config], None],
) -> Estimate:
    """Choose the sample from the page tables, then read only its pages."""
    refs = PageRefs(pids, files)
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
    for pid in pids:
        _check_pid(pid)
    file_pages = sum(_check_file(name) for name in files)  # every file, before any is read
    total = None if pids else file_pages
    with tqdm(
        total=total, unit="page", desc="reading", disable=args.quiet or None, file=sys.stderr
    ) as bar:

        def on_pages(n: int) -> None:
            bar.update(n)

        def on_config(config: Config) -> None:
            bar.set_description(f"measuring {config.label}")

        if args.sample is None:
            result = estimate(
                _pages(PageRefs(pids, files)), configs, on_pages=on_pages, on_config=on_config
            )
        else:
            result = _sampled(pids, files, configs, args, on_pages, on_config)
    result.left_out = left_out
    if args.json:
        out = result.to_json()
        out["sources"] = [f"pid:{p}" for p in pids] + list(files)
        print(json.dumps(out, indent=2))
    else:
        print(render(result))
    return 0
