"""``zswapd replay FILE``: a recorded timeline played into a pool of any configuration.

The record (zswapd/record.py) holds what a shadow saw: which pages went cold
(with their bytes), which were touched again, which went away, tick by tick.
Replay plays it into a :class:`~zswapd.pool.PagePool` in this process, made
with the recorded pool's settings overridden by the flags, through the same
:class:`~zswapd.swapsim.SwapSim` the live shadow drives, and prints the same
figures (zswapd/shadow_report.py).  So one recorded day can be compared under
every compressor, allocator, chain size and limit.

Nothing in a replay depends on the clock or on chance: handles are drawn from
a fixed seed, the pool's clock is the recorded time, and the events arrive in
the recorded order and batches.  The same file under the same settings gives
the same figures, exactly; under the recorded settings, the figures the live
pool gave (when the live pool held nothing else).

The file is checked whole before any pool exists, and the pool made before
anything is printed: a damaged, foreign or truncated record, or settings
that make no pool (the recorded ones included: a record is anyone's file),
are one line of error and nothing played.  An ``lru`` pool writes back to a
file in a temporary directory, removed at the end.

What a crafted file can make a replay cost is bounded by its size: each
event costs O(1) (a COLD one, a page decompressed and stored), a tick's end
O(its scans), and the figures are made once at the end, or, with
``--timeline``, after each tick for the processes seen so far, at most
:data:`~zswapd.record.MAX_PROCESSES`.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import allocator
from allocator.zsmalloc import ZsPool as ReferenceZsPool
from zswapd.backing import MAX_BACKING_SIZE, SLOT_SIZE
from zswapd.cli_format import printable
from zswapd.config import PoolConfig
from zswapd.errors import ConfigError
from zswapd.limits import mem_total_bytes
from zswapd.pool import PagePool
from zswapd.record import RecordError, RecordReader, cut_short
from zswapd.shadow_report import (
    bounds_label,
    format_summary,
    format_tick,
    refaults_label,
    scan_cost,
    size,
)
from zswapd.swapsim import LocalTarget, ShadowFigures, SwapSim
from zswapd.timeline import Event

__all__ = ["SPEEDS", "Overrides", "cmd_replay", "parse_percent", "replay", "replay_config"]

SPEEDS = ("max", "recorded")
# Handles' generations are random in a daemon; a replay draws them from this
# seed, so two replays hand out the same handles (and place the same objects).
SEED = 0
# Where a replay's backing file lives (inside its temporary directory).
_BACKING_NAME = "replay.swap"
# The most of a record's cut-short line printed (its why is at most 1000
# characters before escaping, the line's own words besides).
_CUT_SHORT_CHARS = 1200
# What a pool's allocator_options may name: the allocators' keyword options
# (zbud and z3fold take zsmalloc's and ignore them), read off the pure-Python
# reference since a compiled twin's signature is opaque, less what the daemon
# or the replay itself sets (the arena, the budget, the handles' seed).
_ALLOCATOR_OPTIONS = frozenset(
    name
    for name, p in inspect.signature(ReferenceZsPool.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
) - {"arena_pages", "budget", "seed"}


@dataclass(frozen=True)
class Overrides:
    """What the flags change of the recorded pool's settings (None: as recorded).

    Attributes:
        compressor: (name, level); a level None is the algorithm's default,
            not the recorded one (zstd's level means nothing to lz4).
        backing_size: bytes of the lru backing file.
    """

    compressor: tuple[str, int | None] | None = None
    allocator: str | None = None
    chain_size: int | None = None
    limit_bytes: int | None = None
    writeback: str | None = None
    backing_size: int | None = None
    huge_policy: str | None = None
    accept_threshold_percent: int | None = None


def parse_percent(text: str) -> int:
    """``--accept-threshold-percent``: a whole number in 0..100.

    Raises:
        ValueError: anything else.
    """
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number in 0..100, not {text!r}") from None
    if not 0 <= n <= 100:
        raise ValueError(f"must be in 0..100, not {n}")
    return n


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_allocator_options(values: dict[str, Any]) -> None:
    """Refuse recorded allocator_options that are not a mapping of known names.

    Raises:
        ConfigError: naming the option.
    """
    options = values.get("allocator_options", {})
    if not isinstance(options, dict):
        raise ConfigError(
            f"allocator_options must be a JSON object of allocator options, not {_short(options)}"
        )
    unknown = sorted(set(options) - _ALLOCATOR_OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown allocator option {', '.join(map(repr, unknown))} in allocator_options "
            f"(known: {', '.join(sorted(_ALLOCATOR_OPTIONS))})"
        )


def _wrong_type(values: dict[str, Any], exc: ConfigError) -> str:
    """Which recorded setting a TypeError came from (Python's words name none):
    each allocator option is tried alone."""
    options = values.get("allocator_options", {})
    for key, value in options.items():
        try:
            allocator.create(
                values.get("allocator", "zsmalloc"), arena_pages=1, max_pages=1, **{key: value}
            )
        except TypeError:
            return f"allocator option {key} is of the wrong type: {_short(value)}"
        except Exception:  # a bad value, said by the allocator when it is made for real
            continue
    return f"a setting of the wrong type ({exc})"


def _recorded(reader: RecordReader) -> dict[str, Any]:
    raw = reader.header.get("config", {})
    if not isinstance(raw, dict):
        raise RecordError(f"{reader.path}: the header's config is not a JSON object")
    return dict(raw)


def replay_config(reader: RecordReader, flags: Overrides, backing_dir: str) -> PoolConfig:
    """The pool a replay plays into: the recorded settings, overridden by ``flags``.

    An ``lru`` pool gets a backing file in ``backing_dir`` of
    ``flags.backing_size``, else the recorded pool's size, else one slot per
    COLD event of the record (more than it could ever hold at once; the file
    is sparse, its slot map a bit a slot).

    Raises:
        ConfigError: settings that make no pool (a bad or unknown recorded
            setting, a bad flag, --backing-size without lru).
    """
    values = _recorded(reader)
    try:
        _check_allocator_options(values)
    except ConfigError as exc:
        raise ConfigError(f"{reader.path}: the replay's pool: {exc}") from None
    if values.pop("dictionary", None) is not None and flags.compressor is None:
        raise ConfigError(
            f"{reader.path}: the recorded pool used a zstd dictionary, which the record "
            "does not hold: choose a --compressor"
        )
    values.pop("backing_file", None)
    recorded_size = values.pop("backing_size", 0)
    if flags.compressor is not None:
        values["compressor"], values["level"] = flags.compressor
    settings = ("allocator", "chain_size", "limit_bytes", "writeback", "huge_policy")
    for key in (*settings, "accept_threshold_percent"):
        value = getattr(flags, key)
        if value is not None:
            values[key] = value
    if flags.accept_threshold_percent is not None and not values.get("limit_bytes"):
        raise ConfigError(
            "--accept-threshold-percent is a share of the pool's limit, which it has none of: "
            "give --limit"
        )
    if values.get("writeback", "manual") == "lru":
        size = flags.backing_size or (recorded_size if type(recorded_size) is int else 0)
        if not size:
            size = min(MAX_BACKING_SIZE, max(1, reader.cold_events) * SLOT_SIZE)
        values["backing_file"] = os.path.join(backing_dir, _BACKING_NAME)
        values["backing_size"] = size
    else:
        if flags.backing_size is not None:
            raise ConfigError("--backing-size is the lru writeback file's: give --writeback lru")
        # Nothing asks a replay's pool to write back by hand: no file, no limit on it.
        values.pop("writeback_limit", None)
    try:
        return PoolConfig.from_dict(values)
    except ConfigError as exc:
        why = _wrong_type(values, exc) if isinstance(exc.__cause__, TypeError) else str(exc)
        raise ConfigError(f"{reader.path}: the replay's pool: {why}") from None


def replay(
    reader: RecordReader,
    config: PoolConfig,
    *,
    speed: str = "max",
    on_tick: Callable[[ShadowFigures], None] | None = None,
    on_start: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ShadowFigures:
    """Play every whole tick of ``reader`` into a new pool of ``config``.

    Each tick is fed to the :class:`SwapSim` as the live shadow feeds it: its
    events as one stream (the reader's, a frame at a time), then its end.

    Args:
        speed: "max" (as fast as it goes) or "recorded" (each tick when its
            recorded ``t`` comes, counted from the start).
        on_tick: called with the figures after each tick (they are made only
            then: without it, once, at the end).
        on_start: called once the pool exists, before the first tick.

    Returns:
        The figures after the last tick.
    """
    if speed not in SPEEDS:
        raise ConfigError(f"--speed must be one of {', '.join(SPEEDS)}, not {speed!r}")
    clock = [0.0]
    # Address space for what this machine could hold at most, as the daemon
    # reserves without a memory limit (never the allocator's 64 GiB default).
    arena = max(1, mem_total_bytes() // SLOT_SIZE)
    pool = PagePool("replay", config, clock=lambda: clock[0], seed=SEED, arena_pages=arena)
    pool.backing_owned = True  # the replay's own file goes with its pool

    def fetch(e: Event) -> bytes | None:
        return reader.page(e.ref) if e.ref >= 0 else None

    try:
        sim = SwapSim(LocalTarget(pool), fetch)
        if on_start is not None:
            on_start()
        start = time.monotonic()
        for events, end in reader.ticks():
            if speed == "recorded":
                wait = start + end.t - time.monotonic()
                if wait > 0:
                    sleep(wait)
            clock[0] = end.t
            sim.feed(events)
            sim.end_tick(end)
            if on_tick is not None:
                on_tick(sim.figures())
        # No sim.release(): closing the pool drops every page at once, where a
        # release would free them process by process (and costs, in SwapSim,
        # every waiting page for each process).
        return sim.figures()
    finally:
        pool.close()


# -- the command -------------------------------------------------------------------


def _label(values: dict[str, Any]) -> str:
    """``zstd:3 zsmalloc``, from a config's dict."""
    level = values.get("level")
    comp = f"{values.get('compressor')}" + (f":{level}" if level is not None else "")
    return f"{comp} {values.get('allocator', 'zsmalloc')}"


def _when(value: Any) -> Any:
    """The header's ``started`` (seconds since the epoch, as the record and
    ``--json``'s ``header`` keep it) as ISO 8601 UTC, as a person reads a time
    (the text, and ``--json``'s ``started_iso``); anything else as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            when = datetime.datetime.fromtimestamp(value, datetime.UTC)
        except (OverflowError, OSError, ValueError):  # a forged header's
            return value
        return when.isoformat(timespec="seconds").replace("+00:00", "Z")
    return value


def _said(header: dict[str, Any], width: int = 160) -> str:
    """The header's other settings, ``key=value`` (scalars only), cut at ``width``."""
    items = [
        f"{k}={_when(v) if k == 'started' else v}"
        for k, v in header.items()
        if k != "config" and isinstance(v, str | int | float | bool)
    ]
    text = " ".join(items)
    return text if len(text) <= width else text[: width - 3] + "..."


def _describe(config: PoolConfig) -> str:
    limit = size(config.limit_bytes) if config.limit_bytes else "none"
    # zbud and z3fold take zsmalloc's options and ignore them: a chain size
    # printed beside them would claim a setting that changed nothing.
    chain = f", chain size {config.chain_size}" if config.allocator == "zsmalloc" else ""
    line = f"pool: {_label(config.to_dict())}{chain}, limit {limit}"
    line += f", huge pages {config.huge_policy}"
    if config.limit_bytes and config.accept_threshold_percent is not None:
        line += f", accept threshold {config.accept_threshold_percent}%"
    if config.writeback == "lru":
        line += f", lru writeback to a {config.backing_size // SLOT_SIZE}-page file"
    return line


def _public(config: PoolConfig) -> dict[str, Any]:
    """The config as printed: the temporary backing file's path is no setting."""
    out = config.to_dict()
    if out["backing_file"] is not None:
        out["backing_file"] = "(temporary)"
    return out


def _overrides(args: argparse.Namespace) -> Overrides:
    return Overrides(
        compressor=args.compressor,
        allocator=args.allocator,
        chain_size=args.chain_size,
        limit_bytes=args.limit,
        writeback=args.writeback,
        backing_size=args.backing_size,
        huge_policy=args.huge_policy,
        accept_threshold_percent=args.accept_threshold_percent,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    """``zswapd replay FILE``: check the file, build the pool, play, print."""
    with (
        RecordReader.open(args.file, partial=args.partial) as reader,
        tempfile.TemporaryDirectory(prefix="zswapd-replay-") as tmp,
    ):
        config = replay_config(reader, _overrides(args), tmp)
        before: list[ShadowFigures | None] = [None]

        def on_tick(fig: ShadowFigures) -> None:
            if args.json:
                print(json.dumps(fig.to_dict()), flush=True)
            else:
                for line in format_tick(fig, before[0]):
                    print(line, flush=True)
            before[0] = fig

        def on_start() -> None:
            if args.json:
                return
            cut = "" if reader.complete else " (cut short: its whole ticks only)"
            recorded = _recorded(reader)
            print(
                printable(
                    f"replaying {args.file}: {reader.ticks_count} ticks, "
                    f"{reader.contents_count} distinct pages{cut}; recorded under "
                    f"{_label(recorded) if recorded else 'unknown settings'}"
                )
            )
            said = _said(reader.header)
            if said:
                print(printable(f"recorded with {said}"))
            short = cut_short(reader.ended)
            if short is not None:  # a run its pool's removal (or a failure) stopped
                said_short = printable(short)
                # Escaping may make a recorded why of 1000 characters six times
                # as long: the line is cut after escaping, not before.
                if len(said_short) > _CUT_SHORT_CHARS:
                    said_short = said_short[:_CUT_SHORT_CHARS] + "..."
                print(said_short)
            print(_describe(config), flush=True)

        figures = replay(
            reader,
            config,
            speed=args.speed,
            on_tick=on_tick if args.timeline else None,
            on_start=on_start,
        )
    recorded_detection = reader.header.get("detection")
    detection = recorded_detection if isinstance(recorded_detection, str) else None
    if args.json:
        raw = reader.header.get("started")
        started = _when(raw)
        out = {
            "file": args.file,
            "ticks": reader.ticks_count,
            "distinct_pages": reader.contents_count,
            "complete": reader.complete,
            # How the recorded run ended (null: the record does not say), and
            # the line said when it was cut short (null: it was not).
            "ended": reader.ended,
            "cut_short": cut_short(reader.ended),
            "header": reader.header,
            # The header's started is epoch seconds (as recorded); this, ISO 8601 UTC.
            "started_iso": started if isinstance(started, str) and started is not raw else None,
            "config": _public(config),
            # As the shadow's --json summary: one parser reads both.
            "detection": detection,
            "refaults_note": refaults_label(detection),
            "bounds_note": bounds_label(detection),
            "figures": figures.to_dict(),
            "scan_cost": scan_cost(figures),
        }
        print(json.dumps(out))
    else:
        print(format_summary(figures, detection, writeback=config.writeback, replayed=True))
    sys.stdout.flush()
    return 0
