"""``zswapd shadow``: what zswap would hold, save and refault for live processes, over time.

Each interval: the scanner (zswapd/scanner.py) turns what it sees of the
processes into timeline events; with ``--record`` they go to the record file;
:class:`~zswapd.swapsim.SwapSim` applies them to a pool of the daemon; the
figures are printed (zswapd/shadow_report.py) and reported to the daemon
(``PUT /v1/shadows/{pool}``), which exports them beside the pool's own.

Nothing is created before every ``--pid`` has been opened (and so checked)
and the pool found usable: a pool of the shadow's own, created with the
daemon's defaults unless it exists empty, since a pool holding other pages
would give figures that are not swap's.  Whatever ends the shadow (SIGINT,
SIGTERM, ``--duration``, every process gone, a failure) releases the pages it
stored, removes its report, closes the record (its end frame holds the last
figures) and removes the pool if it created it; a failure is then one line and
a non-zero exit, as every command's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from types import FrameType
from typing import Any

from zswapd import __version__
from zswapd.cli_client import open_client
from zswapd.cli_format import count, human, printable
from zswapd.client import Client
from zswapd.errors import ConfigError, PoolExistsError, UnknownPoolError, UnknownShadowError
from zswapd.record import RecordWriter
from zswapd.scanner import Detection, Scanner, probe_detection
from zswapd.shadow_report import format_summary, format_tick
from zswapd.shadows import default_expires
from zswapd.swapsim import ClientTarget, ShadowFigures, SwapSim
from zswapd.timeline import Event, TickEnd

__all__ = ["cmd_shadow", "first_line", "next_wait"]

# How often a wait looks whether a signal asked the shadow to stop.
_POLL_SECONDS = 0.1


def next_wait(interval: float, cpu: float, elapsed: float, max_cpu: float) -> tuple[float, bool]:
    """How long to wait before the next scan, and whether --max-cpu stretched it.

    A tick that cost ``cpu`` CPU seconds and took ``elapsed`` is followed by a
    wait of at least ``cpu / max_cpu - elapsed``, so the shadow never uses more
    than ``max_cpu`` of one CPU over a tick and its wait; otherwise the next
    scan is due ``interval`` after this one began.
    """
    due = interval - elapsed
    budget = cpu / max_cpu - elapsed
    return max(0.0, due, budget), budget > due and budget > 0


def first_line(
    scanner: Scanner, pool: str, created: bool, args: argparse.Namespace, detection: Detection
) -> str:
    """What the shadow watches, where, how often, and what its "cold" means."""
    procs = ", ".join(f"pid {pid} ({printable(comm)})" for pid, comm in scanner.processes)
    whose = "created, removed at the end" if created else "existing, empty"
    return (
        f"zswapd shadow: {procs}; pool {pool} ({whose}); every {args.interval:g}s, "
        f"cold after {args.cold_after:g}s, at most {args.max_cpu:.0%} of a CPU; "
        f"detection {detection.name}: {detection.coldness} ({detection.why})"
    )


def _claim_pool(client: Client, name: str) -> bool:
    """Make sure ``name`` is a pool of the shadow's own; True if created here.

    Raises:
        ConfigError: the pool holds pages already, or another shadow reports on it.
    """
    if name in client.shadows():
        raise ConfigError(f"pool {name}: another shadow reports on it already (--pool NAME)")
    try:
        stats = client.stats(name)
    except UnknownPoolError:
        try:
            client.create_pool(name)
            return True
        except PoolExistsError:  # made meanwhile by someone else: look again
            stats = client.stats(name)
    held = int(stats["zswap"]["stored_pages"])
    if held:
        raise ConfigError(
            f"pool {name} holds {count(held, 'page')}: a shadow needs a pool of its own, "
            "or its figures are not swap's (--pool NAME names another)"
        )
    return False


def _header(
    scanner: Scanner, pool: str, config: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The record's header: what a replay needs to play it under the same settings."""
    return {
        "zswapd": __version__,
        "command": "shadow",
        "started": time.time(),
        "interval_seconds": args.interval,
        "cold_after_seconds": args.cold_after,
        "max_cpu": args.max_cpu,
        "detection": scanner.detection.name,
        "processes": [{"pid": pid, "comm": comm} for pid, comm in scanner.processes],
        "pool": pool,
        "config": config,
    }


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM ask the shadow to stop after the tick under way (the
    list holds the signal); a second one acts as it would without the shadow."""
    got: list[int] = []
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(sig: int, frame: FrameType | None) -> None:
        got.append(sig)
        for s, h in old.items():
            signal.signal(s, h)

    for sig in old:
        signal.signal(sig, handler)
    try:
        yield got
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _sleep(seconds: float, stop: list[int]) -> None:
    end = time.monotonic() + seconds
    while not stop:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, _POLL_SECONDS))


def _finish(steps: list[tuple[str, Callable[[], None]]], failing: bool) -> None:
    """Run every clean-up step, whatever fails; raise the first failure unless
    the shadow is already failing (its own error is the one to tell)."""
    first: Exception | None = None
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # one step failing must not skip the others
            exc.add_note(f"while the shadow ended: {what}")
            first = first or exc
    if first is not None and not failing:
        raise first


def cmd_shadow(args: argparse.Namespace) -> int:
    """``zswapd shadow``: scan, swap, print and report, every interval, until told to stop."""
    if not 0 < args.max_cpu <= 1:
        raise ConfigError(f"--max-cpu is a fraction of one CPU, in (0, 1], not {args.max_cpu}")
    detection = probe_detection()
    out = sys.stderr if args.json else sys.stdout
    with ExitStack() as stack:
        # Every pid opened, so checked, before anything is created anywhere.
        scanner = stack.enter_context(Scanner(args.pid, args.cold_after, detection))
        client = stack.enter_context(open_client(args))
        if client.over_wire:
            raise ConfigError(
                "a shadow needs the HTTP API (--url http://... or http+unix:...): "
                "it creates its pool and reports its figures"
            )
        if args.record and os.path.lexists(args.record):
            raise ConfigError(f"{args.record}: exists already (a record is never overwritten)")
        pool = args.pool or f"shadow-{scanner.processes[0][0]}"
        created = _claim_pool(client, pool)
        if created:

            def remove_pool(kind: object, exc: BaseException | None, tb: object) -> bool:
                _finish([("remove the pool", lambda: client.remove_pool(pool))], exc is not None)
                return False

            stack.push(remove_pool)
        writer: RecordWriter | None = None

        def fetch(e: Event) -> bytes | None:
            # A waiting page's bytes at its retry: the record's copy, so live and
            # replay store the same bytes; without one, the page as it is now.
            if writer is not None and e.ref >= 0:
                return writer.page(e.ref)
            return scanner.read_page(e.pid, e.address)

        sim = SwapSim(ClientTarget(client, pool), fetch)
        last: list[ShadowFigures] = []
        failing = True
        try:
            if args.record:
                config = client.stats(pool)["config"]
                writer = RecordWriter.create(args.record, _header(scanner, pool, config, args))
            print(first_line(scanner, pool, created, args, detection), file=out, flush=True)
            with _stop_on_signals() as stop:
                _run(args, scanner, sim, client, pool, writer, last, stop)
            failing = False
        finally:
            final = last[-1] if last else None
            steps: list[tuple[str, Callable[[], None]]] = [
                ("free the pool's pages", sim.release),
                ("remove the report", lambda: _unreport(client, pool)),
            ]
            if writer is not None:
                w = writer
                summary = {"figures": final.to_dict()} if final is not None else {}
                steps.append(("close the record", lambda: w.close(summary)))
            _finish(steps, failing or sys.exc_info()[1] is not None)
        if final is not None:
            print(format_summary(final), file=out)
    return 0


def _unreport(client: Client, pool: str) -> None:
    with contextlib.suppress(UnknownShadowError):  # never reported (the first tick failed)
        client.remove_shadow(pool)


def _run(
    args: argparse.Namespace,
    scanner: Scanner,
    sim: SwapSim,
    client: Client,
    pool: str,
    writer: RecordWriter | None,
    last: list[ShadowFigures],
    stop: list[int],
) -> None:
    """Tick until a signal, --duration or the last process's end."""
    start = time.monotonic()
    deadline = start + args.duration if args.duration else None
    before: ShadowFigures | None = None
    while True:
        began = time.monotonic()
        cpu = time.process_time()
        t = began - start
        events = scanner.scan(t)
        if writer is not None:
            events = writer.events(events)
        sim.feed(events)
        end = TickEnd(t, scanner.scans)
        if writer is not None:
            writer.end_tick(end)
        sim.end_tick(end)
        figures = sim.figures()
        last[:] = [figures]
        cost = time.process_time() - cpu
        elapsed = time.monotonic() - began
        wait, stretched = next_wait(args.interval, cost, elapsed, args.max_cpu)
        client.report_shadow(
            pool,
            {
                "pool": pool,
                "detection": scanner.detection.name,
                "interval_seconds": args.interval,
                "cold_after_seconds": args.cold_after,
                "expires_seconds": default_expires(wait + elapsed),
                "processes": [p.to_dict() for p in figures.processes],
            },
        )
        _print_tick(args, figures, before, wait, stretched, cost)
        before = figures
        if stop or not scanner.alive:
            return
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= wait:
                _sleep(left, stop)
                return
        _sleep(wait, stop)
        if stop:
            return


def _print_tick(
    args: argparse.Namespace,
    figures: ShadowFigures,
    before: ShadowFigures | None,
    wait: float,
    stretched: bool,
    cost: float,
) -> None:
    note = (
        f"t={figures.t:8.1f}s next scan in {wait:.2f}s, not {args.interval:g}s: this tick "
        f"took {cost:.3f}s of CPU and --max-cpu is {args.max_cpu:g}"
        if stretched
        else None
    )
    if args.json:
        print(json.dumps(figures.to_dict()), flush=True)
        if note:
            print(note, file=sys.stderr, flush=True)
    elif not args.quiet:
        for line in format_tick(figures, before):
            print(line)
        if note:
            print(note)
        print(
            f"t={figures.t:8.1f}s pool: stored {human(figures.pool.orig_data_size)} in "
            f"{human(figures.pool.mem_used_total)}, saved {human(figures.pool.saved_bytes)}",
            flush=True,
        )
