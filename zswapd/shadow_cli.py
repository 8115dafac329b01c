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

What others can do to a shadow, and what it does about it: the daemon may
refuse its report (full, or its name taken) -- said once, the shadow goes on,
since the report is monitoring and the pool is its job; another client may
store into (or free from) its pool, whose name it does not own -- said at each
change and counted in the figures, which are then not swap's alone; a page of
the shadow's freed by another client (its handle answered ``stale_handle`` when
the shadow loaded or freed it) is lost -- said once a tick, counted
(``run.lost_pages``), not a refault, and the shadow goes on; another client may
remove its pool -- the shadow stops (exit 1, one line saying when it found it
gone), its record closed with the last tick's figures and its report removed.
However it ends, the record's end frame says how (``ended``: complete, or cut
short and why, docs/record.md), so that a replay can tell a whole run from one
cut short.  It does not make
the pool again: whoever removed it meant the pages to go, and a pool made anew
would hold none of the pages the figures are about.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from types import FrameType
from typing import Any

import httpx

from zswapd import __version__
from zswapd.cli_client import open_client
from zswapd.cli_format import count, printable
from zswapd.client import Client
from zswapd.config import check_pool_name
from zswapd.errors import (
    ConfigError,
    PoolExistsError,
    UnknownPoolError,
    UnknownShadowError,
    ZswapdError,
)
from zswapd.record import MAX_WHY, RecordWriter
from zswapd.scanner import Detection, Scanner, probe_detection
from zswapd.shadow_report import (
    bounds_label,
    format_pool_tick,
    format_summary,
    format_tick,
    refaults_label,
    scan_cost,
)
from zswapd.shadows import default_expires
from zswapd.swapsim import ClientTarget, ProcessFigures, ShadowFigures, SwapSim
from zswapd.timeline import Event, TickEnd

__all__ = ["PoolRemovedError", "cmd_shadow", "first_line", "next_wait"]

# How often a wait looks whether a signal asked the shadow to stop.
_POLL_SECONDS = 0.1


class PoolRemovedError(UnknownPoolError):
    """The shadow's pool was removed (by another client) while it ran.

    Attributes:
        t: when the shadow found it gone, on the ticks' clock.
    """

    def __init__(self, message: str, t: float) -> None:
        super().__init__(message)
        self.t = t


@dataclasses.dataclass
class _Ending:
    """How the run ends, for the record's summary (``ended``, docs/record.md).

    Attributes:
        start: the ticks' clock origin (time.monotonic() at the first scan);
            None before it.
        why: why a run that ended as asked ended (a signal, --duration,
            every process gone).
    """

    start: float | None = None
    why: str = "stopped"

    def t(self) -> float | None:
        return None if self.start is None else round(time.monotonic() - self.start, 3)

    def ended(self, exc: BaseException | None, where: str) -> dict[str, Any]:
        """The summary's ``ended``: how, when (t), why, from the exception
        that ends the shadow (None: it ended as asked)."""
        t = self.t()
        if exc is None:
            return {"how": "complete", "t": t, "why": self.why}
        if isinstance(exc, PoolRemovedError):
            return {"how": "pool_removed", "t": round(exc.t, 3), "why": _one_line(exc)}
        if isinstance(exc, httpx.TransportError):
            why = f"cannot reach {where}: {_one_line(exc)}"
            return {"how": "daemon_unreachable", "t": t, "why": why[:MAX_WHY]}
        if isinstance(exc, KeyboardInterrupt):
            return {"how": "interrupted", "t": t, "why": "a second SIGINT"}
        why = _one_line(exc) or type(exc).__name__
        return {"how": "failed", "t": t, "why": why[:MAX_WHY]}


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
    counted = (
        ""
        if detection.idle
        else ", so COLD, STORED, DATA and SAVED are upper bounds and REFAULTS a lower bound "
        "(refaults count writes only)"
    )
    return (
        f"zswapd shadow: {procs}; pool {pool} ({whose}); every {args.interval:g}s, "
        f"cold after {args.cold_after:g}s, at most {args.max_cpu:.0%} of a CPU; "
        f"detection {detection.name}: {detection.coldness}{counted}; because: {detection.why}"
    )


def cold_after_warning(args: argparse.Namespace) -> str | None:
    """What --cold-after under --interval means (None: it is not under)."""
    if args.cold_after >= args.interval:
        return None
    return (
        f"--cold-after {args.cold_after:g}s is under --interval {args.interval:g}s: a page "
        "goes cold at the next scan that finds it unchanged, whatever its age"
    )


def _named_pool(args: argparse.Namespace) -> str | None:
    """--pool, checked by the daemon's own rule (so a name it would refuse is
    said as such, not as a bare 404 from a URL it cannot route); None if not given."""
    if args.pool is None:
        return None
    try:
        return check_pool_name(args.pool)
    except ConfigError as exc:
        raise ConfigError(f"--pool: {exc}") from None


def _claim_pool(client: Client, name: str, url: str | None) -> bool:
    """Make sure ``name`` is a pool of the shadow's own; True if created here.

    A shadow killed (SIGKILL, the machine's OOM killer) leaves its pool full and
    its report alive until it expires: the refusals say how to recover.

    Raises:
        ConfigError: the pool holds pages already, or another shadow reports on it.
    """
    remove = f"zswapd pools remove {name}" + (f" --url {url}" if url else "")
    report = client.shadows().get(name)
    # Only a report on this very pool is another shadow's: one merely named
    # so (names are anyone's) is replaced by this shadow's first report.
    if report is not None and report.get("pool") == name:
        raise ConfigError(
            f"pool {name}: another shadow reports on it (last {report['age_seconds']:.0f}s "
            f"ago; a report not renewed lives {report['expires_seconds']:.0f}s): if that "
            f"shadow was killed, wait for its report to expire or remove it "
            f"(DELETE /v1/shadows/{name}), then {remove}; or choose another --pool NAME"
        )
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
            f"pool {name} holds {count(held, 'page')}: a shadow needs a pool of its own, or "
            f"its figures are not swap's; if a shadow was killed and left them, remove the "
            f"pool and its pages ({remove}), or choose another --pool NAME"
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


class _Reporter:
    """Reports the figures to the daemon (``PUT /v1/shadows/{pool}``), as monitoring.

    A report refused (the daemon keeps 64 shadows and 4096 processes at most:
    507; any local user may remove a report, or take its name) does not end
    the shadow: its job is the pool and the figures it prints.  A refusal is
    said once on stderr, reporting is tried again every tick, and its return
    is said too.  A daemon that cannot be reached is no refusal: the next
    store would fail as well, and ends the shadow.
    """

    def __init__(self, client: Client, pool: str, detection: str, args: argparse.Namespace):
        self.client = client
        self.pool = pool
        self.detection = detection
        self.args = args
        self.failing = False

    def report(self, processes: list[dict[str, Any]], expires: float) -> None:
        body = {
            "pool": self.pool,
            "detection": self.detection,
            "interval_seconds": self.args.interval,
            "cold_after_seconds": self.args.cold_after,
            "expires_seconds": expires,
            "processes": processes,
        }
        try:
            self.client.report_shadow(self.pool, body)
        except ZswapdError as exc:
            if not self.failing:
                _warn(
                    f"the daemon refused the shadow's report (PUT /v1/shadows/{self.pool}): "
                    f"{_one_line(exc)}; keeps shadowing; figures are not exported"
                )
            self.failing = True
            return
        if self.failing:
            _warn("the daemon takes the shadow's report again: figures are exported")
        self.failing = False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _warn(what: str) -> None:
    print(printable(f"zswapd shadow: {what}"), file=sys.stderr, flush=True)


def _zero(pid: int, comm: str) -> dict[str, Any]:
    """A process's figures before its first scan: what the first report holds."""
    fields = {f.name: 0 for f in dataclasses.fields(ProcessFigures)}
    return {**fields, "pid": pid, "comm": comm, "scan_seconds_total": 0.0, "exited": False}


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
    named = _named_pool(args)  # before anything is opened
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
        pool = named or f"shadow-{scanner.processes[0][0]}"
        created = _claim_pool(client, pool, args.url)
        if created:

            def remove_pool(kind: object, exc: BaseException | None, tb: object) -> bool:
                _finish([("remove the pool", lambda: _remove_pool(client, pool))], exc is not None)
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
        reporter = _Reporter(client, pool, detection.name, args)
        last: list[ShadowFigures] = []
        ending = _Ending()
        failing = True
        try:
            if args.record:
                config = client.stats(pool)["config"]
                writer = RecordWriter.create(args.record, _header(scanner, pool, config, args))
            print(first_line(scanner, pool, created, args, detection), file=out, flush=True)
            warning = cold_after_warning(args)
            if warning is not None:
                _warn(warning)
            # A first report before the first scan: a daemon that keeps no more
            # shadows (or processes) is said at the start, not a scan later.
            reporter.report(
                [_zero(pid, comm) for pid, comm in scanner.processes],
                default_expires(args.interval),
            )
            with _stop_on_signals() as stop:
                _run(args, scanner, sim, reporter, pool, writer, last, stop, ending)
            failing = False
        finally:
            final = last[-1] if last else None
            exc = sys.exc_info()[1]
            gone = isinstance(exc, PoolRemovedError)
            steps: list[tuple[str, Callable[[], None]]] = [
                ("remove the report", lambda: _unreport(client, pool)),
            ]
            if not gone:  # a removed pool took its pages with it
                steps.insert(0, ("free the pool's pages", sim.release))
            ended = ending.ended(exc, str(args.url or "the daemon"))
            if writer is not None:
                w = writer
                # How it ended: a replay says when the run was cut short.
                summary = {"figures": final.to_dict()} if final is not None else {}
                summary["ended"] = ended
                steps.append(("close the record", lambda: w.close(summary)))
            _finish(steps, failing or exc is not None)
        if final is not None:
            writeback = _writeback(client, pool)
            print(format_summary(final, detection.name, writeback=writeback), file=out)
        if args.json:
            # The closing object: a consumer knows the run ended well, and how to read it.
            closing = {
                "pool": pool,
                "detection": detection.name,
                "refaults_note": refaults_label(detection.name),
                "bounds_note": bounds_label(detection.name),
                "figures": final.to_dict() if final is not None else None,
                "scan_cost": scan_cost(final) if final is not None else None,
                "ended": ended,  # as the record's end frame says it
            }
            print(json.dumps({"summary": closing}), flush=True)
    return 0


def _writeback(client: Client, pool: str) -> str | None:
    """The pool's writeback mode, for the summary's words (None: not known,
    the pool gone meanwhile)."""
    try:
        mode = client.stats(pool)["config"].get("writeback")
    except ZswapdError:
        return None
    return mode if isinstance(mode, str) else None


def _remove_pool(client: Client, pool: str) -> None:
    with contextlib.suppress(UnknownPoolError):  # removed by another client already
        client.remove_pool(pool)


def _unreport(client: Client, pool: str) -> None:
    with contextlib.suppress(UnknownShadowError):  # never reported, or removed by another
        client.remove_shadow(pool)


class _Foreign:
    """Says on stderr, once per change, when the pool holds pages the shadow did
    not store (another client stores into its pool: pool names are not owned),
    or fewer than it stored (another client freed some)."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.said = 0

    def check(self, fig: ShadowFigures) -> None:
        foreign = fig.run.foreign_pages
        if foreign == self.said:
            return
        own = fig.pool.pages - foreign
        held = f"pool {self.pool} holds {fig.pool.pages} pages, the shadow stored {own}: "
        if foreign > 0:
            _warn(held + "figures include pages the shadow did not store")
        elif foreign < 0:
            _warn(held + "another client freed some of the shadow's; figures are not swap's")
        else:
            _warn(f"pool {self.pool} holds only the shadow's {own} pages again")
        self.said = foreign


def _say_lost(pool: str, now: ShadowFigures, before: ShadowFigures | None) -> None:
    """One line for the tick in which the shadow found pages of its own freed
    by another client (the pool removed and made again frees them all)."""
    found = now.run.lost_pages - (before.run.lost_pages if before else 0)
    if found:
        _warn(
            f"t={now.t:.1f}s: another client freed {count(found, 'page')} the shadow stored "
            f"in pool {pool} (stale handles): lost, not refaults "
            f"({now.run.lost_pages} lost in all); the shadow goes on"
        )


def _run(
    args: argparse.Namespace,
    scanner: Scanner,
    sim: SwapSim,
    reporter: _Reporter,
    pool: str,
    writer: RecordWriter | None,
    last: list[ShadowFigures],
    stop: list[int],
    ending: _Ending,
) -> None:
    """Tick until a signal, --duration or the last process's end (said in
    ``ending.why``); ``ending.start`` is the ticks' clock origin."""
    start = ending.start = time.monotonic()
    deadline = start + args.duration if args.duration else None
    before: ShadowFigures | None = None
    foreign = _Foreign(pool)
    said_past_cold_after = False
    while True:
        began = time.monotonic()
        cpu = time.process_time()
        t = began - start
        events = scanner.scan(t, should_stop=lambda: bool(stop))
        if writer is not None:
            events = writer.events(events)
        try:
            sim.feed(events)
            end = TickEnd(t, scanner.scans)  # after the feed: the scan runs as it is fed
            sim.end_tick(end)
            figures = sim.figures()
        except UnknownPoolError:
            # Said at the t it was found (the tick under way began at t, and
            # it went at some moment since the last tick that found it).
            found = time.monotonic() - start
            raise PoolRemovedError(
                f"pool {pool} was removed by another client: found gone at t={found:.1f}s "
                f"(it was there at the tick of t={last[-1].t:.1f}s): the shadow stops"
                if last
                else f"pool {pool} was removed by another client: found gone at "
                f"t={found:.1f}s, before any tick ended: the shadow stops",
                found,
            ) from None
        if scanner.stopped:  # a signal cut this scan short: its figures are partial
            _keep(writer, end, figures, last)  # the summary's
            ending.why = _signalled(stop)
            return
        cost = time.process_time() - cpu
        elapsed = time.monotonic() - began
        wait, stretched = next_wait(args.interval, cost, elapsed, args.max_cpu)
        reporter.report([p.to_dict() for p in figures.processes], default_expires(wait + elapsed))
        # Recorded only once it is sure to be printed: a shadow cut short by
        # a failure (the daemon killed, the pool removed) leaves a record of
        # exactly the ticks it printed, which replays to the last of them.
        _keep(writer, end, figures, last)
        _say_lost(pool, figures, before)
        foreign.check(figures)
        _print_tick(args, figures, before, wait + elapsed if stretched else None, cost)
        if stretched and wait + elapsed > args.cold_after and not said_past_cold_after:
            said_past_cold_after = True
            _warn(
                f"t={figures.t:.1f}s: --max-cpu {args.max_cpu:g} stretched the interval to "
                f"{wait + elapsed:.2f}s, past --cold-after {args.cold_after:g}s: a page goes "
                "cold at the next scan that finds it unchanged, whatever its age (said once)"
            )
        before = figures
        if stop or not scanner.alive:
            ending.why = _signalled(stop) if stop else "every shadowed process ended"
            return
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= wait:
                _sleep(left, stop)
                ending.why = _signalled(stop) if stop else f"--duration {args.duration:g}s ended"
                return
        _sleep(wait, stop)
        if stop:
            ending.why = _signalled(stop)
            return


def _signalled(stop: list[int]) -> str:
    return f"stopped by {signal.Signals(stop[0]).name}"


def _keep(
    writer: RecordWriter | None, end: TickEnd, figures: ShadowFigures, last: list[ShadowFigures]
) -> None:
    """A tick done: its end to the record, its figures the summary's."""
    if writer is not None:
        writer.end_tick(end)
    last[:] = [figures]


def _print_tick(
    args: argparse.Namespace,
    figures: ShadowFigures,
    before: ShadowFigures | None,
    stretched: float | None,
    cost: float,
) -> None:
    """The tick's lines; ``stretched``: the interval --max-cpu made of it (None: not)."""
    note = (
        f"t={figures.t:8.1f}s interval stretched to {stretched:.2f}s: the tick took "
        f"{cost:.3f}s of CPU, --max-cpu {args.max_cpu:g}"
        if stretched is not None
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
        print(format_pool_tick(figures), flush=True)
