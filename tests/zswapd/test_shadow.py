"""The live shadow: the scanner over real processes, SwapSim into a real daemon's pool,
and ``zswapd shadow`` end to end.

The processes are tests/zswapd/shadow_target.py, driven from stdin.  The scanner
and SwapSim tests give the scan times themselves (``scan(now)``), so whether a
page has been unchanged for ``cold_after`` is decided by the test, never by how
fast this machine happens to be; the CLI tests poll for states with generous
deadlines and never assert that something happened within a short time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import compressors
from tests.zswapd.daemon import CHECKOUT, Daemon, _checkout_on_path, run_cli, start_daemon
from tests.zswapd.helpers import PAGE, ask, text_page
from zswapd.cli_format import human, parse_duration
from zswapd.client import Client
from zswapd.config import PoolConfig, unavailable_compressor
from zswapd.errors import ConfigError, PoolLimitError, UnknownShadowError
from zswapd.ptrace_access import YAMA_PTRACE_SCOPE, yama_ptrace_scope
from zswapd.record import RecordReader
from zswapd.replay import Overrides, replay, replay_config
from zswapd.scanner import STATE_BYTES_PER_PAGE, Detection, Scanner, probe_idle, probe_soft_dirty
from zswapd.shadow_cli import next_wait
from zswapd.shadow_report import (
    POOL_LEGEND,
    STORED_LEGEND,
    format_pool_tick,
    format_summary,
    format_tick,
)
from zswapd.swapsim import (
    ClientTarget,
    PoolFigures,
    ProcessFigures,
    RunFigures,
    ShadowFigures,
    SwapSim,
)
from zswapd.timeline import Event, EventKind, TickEnd

TARGET = Path(__file__).with_name("shadow_target.py")
COLD_AFTER = 0.6
DEADLINE = 120.0


@dataclass
class Target:
    """A running shadow_target.py: its pid, its regions' addresses, its children."""

    proc: subprocess.Popen[str]
    regions: dict[str, int]
    pages: int
    reserved: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, what: str) -> str:
        answer = ask(self.proc, what)
        if what == "fork":
            self.children.append(int(answer[2]))
        return " ".join(answer)

    def addresses(self, region: str) -> list[int]:
        return [self.regions[region] + i * PAGE for i in range(self.pages)]

    def stop(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_target(pages: int = 16, *flags: str) -> Target:
    proc = subprocess.Popen(
        [sys.executable, str(TARGET), "--pages", str(pages), *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    regions = {k: info[k] for k in ("cold", "hot", "gone")}
    return Target(proc, regions, info["pages"], info.get("reserved", []))


@pytest.fixture
def target() -> Iterator[Target]:
    t = start_target()
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = start_daemon()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.url) as c:
        yield c


_pools = iter(range(1, 1 << 30))


@pytest.fixture
def pool(client: Client) -> Iterator[str]:
    """A new empty pool of the daemon's defaults, removed after the test."""
    name = f"shadow-test-{os.getpid()}-{next(_pools)}"
    client.create_pool(name)
    try:
        yield name
    finally:
        client.remove_pool(name)


class Shadow:
    """The scanner and SwapSim wired as ``zswapd shadow`` wires them, ticked by hand."""

    def __init__(
        self, pids: list[int], client: Client, pool: str, detection: Detection | None = None
    ) -> None:
        self.scanner = Scanner(pids, COLD_AFTER, detection or Detection())
        self.client = client
        self.pool = pool
        self.sim = SwapSim(
            ClientTarget(client, pool), lambda e: self.scanner.read_page(e.pid, e.address)
        )
        self.events: list[Event] = []

    def tick(self, t: float) -> list[Event]:
        self.events = list(self.scanner.scan(t))
        self.sim.feed(self.events)
        self.sim.end_tick(TickEnd(t, self.scanner.scans))
        return self.events

    def stored(self, pid: int, addresses: list[int]) -> list[bool]:
        return [self.sim.stored(pid, a) for a in addresses]

    def pool_pages(self) -> int:
        return int(self.client.stats(self.pool)["zswap"]["stored_pages"])

    def report(self) -> list[dict[str, Any]]:
        """Report the figures as ``zswapd shadow`` does after a tick (refused: an
        error); the processes the daemon lists for it."""
        figures = self.sim.figures()
        body = {
            "pool": self.pool,
            "detection": "hash",
            "interval_seconds": 1.0,
            "cold_after_seconds": COLD_AFTER,
            "processes": [p.to_dict() for p in figures.processes],
        }
        self.client.report_shadow(self.pool, body)
        listed: list[dict[str, Any]] = self.client.shadows()[self.pool]["processes"]
        assert listed == body["processes"]
        return listed

    def close(self) -> None:
        self.sim.release()
        self.scanner.close()
        with contextlib.suppress(UnknownShadowError):
            self.client.remove_shadow(self.pool)


@contextlib.contextmanager
def shadow(
    pids: list[int], client: Client, pool: str, detection: Detection | None = None
) -> Iterator[Shadow]:
    s = Shadow(pids, client, pool, detection)
    try:
        yield s
    finally:
        s.close()


def kinds(events: list[Event], addresses: list[int], kind: EventKind) -> int:
    wanted = set(addresses)
    return sum(1 for e in events if e.kind == kind and e.address in wanted)


# -- the scanner and SwapSim against a real daemon --------------------------------


def test_pool_holds_the_cold_region_refaults_the_rewritten_frees_the_unmapped(
    target: Target, client: Client, pool: str
) -> None:
    pid = target.pid
    cold, hot, gone = (target.addresses(r) for r in ("cold", "hot", "gone"))
    with shadow([pid], client, pool) as s:
        s.tick(0.0)
        assert not any(s.stored(pid, cold + hot + gone))  # first sight is a change
        s.tick(COLD_AFTER / 2)
        assert not any(s.stored(pid, cold))  # not yet cold_after since
        s.tick(COLD_AFTER)
        # Every region went cold once (the hot one idles until told): all stored.
        assert all(s.stored(pid, cold + hot + gone))
        assert s.pool_pages() == s.sim.figures().processes[0].stored_pages
        target.command("hot")  # rewritten from now on, every 50 ms
        target.command("unmap")
        events = s.tick(2.0)
        assert kinds(events, hot, EventKind.CHANGED) == target.pages
        assert kinds(events, gone, EventKind.GONE) == target.pages
        assert all(s.stored(pid, cold))
        assert not any(s.stored(pid, hot + gone))
        # Within cold_after of their last change, the hot pages cannot be cold.
        s.tick(2.0 + COLD_AFTER / 3)
        s.tick(2.0 + 2 * COLD_AFTER / 3)
        assert all(s.stored(pid, cold)) and not any(s.stored(pid, hot + gone))
        fig = s.sim.figures().processes[0]
        assert fig.refaults_total >= target.pages  # the hot region's, at least
        assert fig.swapouts_total >= 3 * target.pages
        assert s.pool_pages() == fig.stored_pages
        # What the daemon holds for the cold region is the region's bytes.
        handles = [s.sim._procs[pid].stored[a][0] for a in cold]
        pages = client.load(handles, pool=pool)
        assert pages == [s.scanner.read_page(pid, a) for a in cold]
    assert client.stats(pool)["zswap"]["stored_pages"] == 0  # released at the end


def test_pages_a_second_client_frees_are_lost_not_refaulted_and_the_shadow_goes_on(
    target: Target, client: Client, pool: str, daemon: Daemon
) -> None:
    """A second client of the daemon frees pages the shadow stored (it knows
    their handles: here, the shadow's own; no API lists them): the refault of
    one, the unmapping of another, find them stale, count them lost, and the
    rest of each batch goes on as it would have."""
    pid = target.pid
    cold, hot, gone = (target.addresses(r) for r in ("cold", "hot", "gone"))
    with shadow([pid], client, pool) as s:
        s.tick(0.0)
        s.tick(COLD_AFTER)
        assert all(s.stored(pid, cold + hot + gone))
        assert s.report()[0]["stored_pages"] == s.pool_pages()  # every page, taken
        stored = s.sim._procs[pid].stored
        with Client(daemon.url) as other:
            other.free([stored[hot[0]][0], stored[gone[0]][0]], pool=pool)
            # Behind the shadow's back, a page it has not touched since: found
            # at the tick's end, before its report (which the daemon checks
            # against the pages the pool holds).
            other.free([stored[cold[0]][0]], pool=pool)
        target.command("hot")
        target.command("unmap")
        s.tick(2.0)
        fig = s.sim.figures()
        (p,) = fig.processes
        assert fig.run.lost_pages == 3
        assert p.refaults_total >= target.pages - 1  # the hot region's, but the lost one
        assert not any(s.stored(pid, hot + gone + cold[:1])) and all(s.stored(pid, cold[1:]))
        assert s.pool_pages() == p.stored_pages and fig.run.foreign_pages == 0
        assert s.report()[0]["stored_pages"] == p.stored_pages
    assert client.stats(pool)["zswap"]["stored_pages"] == 0  # released at the end


def test_exiting_target_frees_every_page_and_is_no_longer_scanned(
    target: Target, client: Client, pool: str
) -> None:
    with shadow([target.pid], client, pool) as s:
        s.tick(0.0)
        s.tick(COLD_AFTER)
        assert s.pool_pages() > 0
        target.command("exit")
        target.proc.wait(DEADLINE)
        events = s.tick(2.0)
        assert [e.kind for e in events] == [EventKind.EXIT]
        assert s.pool_pages() == 0
        assert not s.scanner.alive
        (fig,) = s.sim.figures().processes
        assert fig.exited and fig.stored_pages == 0
        # What the daemon takes of an exited process: no page of any kind.
        (reported,) = s.report()
        assert reported["exited"] and reported["resident_pages"] == reported["cold_pages"] == 0
        assert s.tick(3.0) == []  # nothing left to scan


def test_one_target_exiting_leaves_the_others_shadowed(client: Client, pool: str) -> None:
    a, b = start_target(), start_target()
    try:
        with shadow([a.pid, b.pid], client, pool) as s:
            s.tick(0.0)
            s.tick(COLD_AFTER)
            a.command("exit")
            a.proc.wait(DEADLINE)
            events = s.tick(2.0)
            assert [e for e in events if e.pid == a.pid] == [Event(EventKind.EXIT, a.pid)]
            assert events[-1] == Event(EventKind.EXIT, a.pid)  # EXIT comes last
            assert s.scanner.alive and [x.pid for x in s.scanner.scans] == [a.pid, b.pid]
            s.tick(3.0)
            assert [x.pid for x in s.scanner.scans] == [b.pid]
            assert all(s.stored(b.pid, b.addresses("cold")))
            assert s.pool_pages() == s.sim.figures().processes[1].stored_pages
    finally:
        a.stop()
        b.stop()


def test_forking_target_keeps_its_figures(target: Target, client: Client, pool: str) -> None:
    pid = target.pid
    cold = target.addresses("cold")
    with shadow([pid], client, pool) as s:
        s.tick(0.0)
        s.tick(COLD_AFTER)
        assert all(s.stored(pid, cold))
        target.command("fork")  # the child rewrites its copy of the cold region
        events = s.tick(1.0)
        assert kinds(events, cold, EventKind.CHANGED) == 0
        assert all(s.stored(pid, cold))
        assert [p.pid for p in s.sim.figures().processes] == [pid]  # the child is not followed


def test_page_shared_by_two_shadowed_processes_counts_once(
    target: Target, client: Client, pool: str
) -> None:
    """After a fork the hot region is shared copy-on-write (the same PFNs): it
    belongs to the first process given; the cold region the child rewrote is its own."""
    target.command("fork")
    (child,) = target.children
    hot, cold = target.addresses("hot"), target.addresses("cold")
    with shadow([target.pid, child], client, pool) as s:
        s.tick(0.0)
        s.tick(COLD_AFTER)
        assert all(s.stored(target.pid, hot))
        assert not any(s.stored(child, hot))
        assert all(s.stored(child, cold))


def test_exec_frees_the_old_image_without_refaults_and_shadows_the_new(
    target: Target, client: Client, pool: str
) -> None:
    """exec keeps the pid and replaces the memory: every page stored is freed
    (GONE, not a refault), the process is not ended, and the new image's
    pages go cold and are stored in their turn."""
    pid = target.pid
    with shadow([pid], client, pool) as s:
        s.tick(0.0)
        s.tick(COLD_AFTER)
        stored = s.pool_pages()
        assert stored > 0
        target.command("exec")
        deadline = time.monotonic() + DEADLINE
        while b"time.sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the exec never happened"
            time.sleep(0.01)
        events = s.tick(2.0)
        assert [e.kind for e in events] == [EventKind.GONE] * stored
        assert s.pool_pages() == 0 and s.scanner.alive and s.scanner.execs(pid) == 1
        (fig,) = s.sim.figures().processes
        assert not fig.exited and fig.refaults_total == 0 and fig.stored_pages == 0
        t = 3.0
        while s.pool_pages() == 0:  # the new image, once it has gone cold
            assert time.monotonic() < deadline, "the new image never went cold"
            s.tick(t)
            t += COLD_AFTER
        (fig,) = s.sim.figures().processes
        assert fig.stored_pages == s.pool_pages() > 0 and fig.refaults_total == 0
        assert fig.swapouts_total == stored + fig.stored_pages


def test_huge_sparse_reservation_costs_only_its_present_pages(client: Client, pool: str) -> None:
    target = start_target(16, "--reserve", "64")
    try:
        with shadow([target.pid], client, pool) as s:
            s.tick(0.0)
            (scan,) = s.scanner.scans
            # Only present pages are read: 64 GiB reserved, three pages of it touched.
            assert scan.scanned_bytes == scan.resident_pages * PAGE < 64 << 20
            s.tick(COLD_AFTER)
            assert all(s.stored(target.pid, target.reserved))
    finally:
        target.stop()


def test_mappings_vanishing_mid_scan_break_nothing(
    target: Target, client: Client, pool: str
) -> None:
    """A thread maps, writes and unmaps a region without pause: now and then a scan
    finds a mapping gone between its walk and its read (a short preadv)."""
    target.command("churn")
    cold = target.addresses("cold")
    with shadow([target.pid], client, pool) as s:
        for i in range(30):
            s.tick(i * COLD_AFTER / 2)
            fig = s.sim.figures().processes[0]
            assert s.pool_pages() == fig.stored_pages
        assert all(s.stored(target.pid, cold))


def test_events_come_in_pid_order_then_address_order(client: Client, pool: str) -> None:
    a, b = start_target(), start_target()
    try:
        with shadow([b.pid, a.pid], client, pool) as s:
            s.tick(0.0)
            events = s.tick(COLD_AFTER)
            pids = [e.pid for e in events]
            assert pids == sorted(pids, key=[b.pid, a.pid].index)
            for pid in (a.pid, b.pid):
                addresses = [e.address for e in events if e.pid == pid]
                assert addresses == sorted(addresses) and addresses
    finally:
        a.stop()
        b.stop()


def test_state_is_compact_arrays(target: Target, client: Client, pool: str) -> None:
    with shadow([target.pid], client, pool) as s:
        s.tick(0.0)
        (t,) = s.scanner._targets
        held = sum(x.itemsize * len(x) for x in (t.addrs, t.fps, t.since)) + len(t.cold)
        assert held == STATE_BYTES_PER_PAGE * s.scanner.tracked_pages(target.pid) > 0


def _kernel_help_or_skip(which: str) -> Detection:
    works, why = probe_soft_dirty() if which == "soft-dirty" else probe_idle()
    if not works:
        pytest.skip(f"{which} detection cannot run on this kernel: {why}")
    return Detection(soft_dirty=which == "soft-dirty", idle=which == "idle")


@pytest.mark.parametrize("which", ["soft-dirty", "idle"])
def test_kernel_assisted_detection_sees_the_same_regions(
    which: str, target: Target, client: Client, pool: str
) -> None:
    detection = _kernel_help_or_skip(which)
    pid = target.pid
    cold, hot = target.addresses("cold"), target.addresses("hot")
    with shadow([pid], client, pool, detection) as s:
        s.tick(0.0)
        s.tick(COLD_AFTER)
        assert all(s.stored(pid, cold + hot))
        target.command("hot")
        events = s.tick(2.0)
        assert kinds(events, hot, EventKind.CHANGED) == target.pages
        assert all(s.stored(pid, cold)) and not any(s.stored(pid, hot))


# -- zswapd shadow, end to end ------------------------------------------------------


class Lines:
    """A subprocess's stdout, read a line at a time with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, deadline: float) -> str | None:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line before the deadline")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def until(self, test: Any) -> dict[str, Any]:
        """The first tick (a JSON line) that passes ``test``."""
        deadline = time.monotonic() + DEADLINE
        while True:
            line = self.next(deadline)
            assert line is not None, "the shadow ended first"
            tick: dict[str, Any] = json.loads(line)
            if test(tick):
                return tick


def shadow_cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "zswapd.cli", "shadow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=CHECKOUT,
        env={**os.environ, **_checkout_on_path()},
    )


def shadow_json(url: str, target: Target, *more: str) -> subprocess.Popen[bytes]:
    """The shadow of ``target`` every 0.2 s, printing a JSON object a tick."""
    return shadow_cli(
        "--url", url, "--pid", str(target.pid), "--interval", "0.2s",
        "--cold-after", f"{COLD_AFTER}s", *more, "--json",
    )  # fmt: skip


def finish(proc: subprocess.Popen[bytes], sig: int | None = signal.SIGINT) -> tuple[int, str]:
    """Signal the shadow (None: let it end by itself); its status and stderr."""
    if sig is not None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, err.decode()


def finish_out(
    proc: subprocess.Popen[bytes], lines: Lines, sig: int = signal.SIGINT
) -> tuple[int, list[str], str]:
    """As :func:`finish`, with the stdout lines ``lines`` had not read yet."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, (lines.buf + out).decode().splitlines(), err.decode()


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[Lines]:
    try:
        yield Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _proc(tick: dict[str, Any]) -> dict[str, Any]:
    (p,) = tick["processes"]
    return dict(p)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_shadow_end_to_end_then_replay_gives_the_live_figures(
    sig: int, target: Target, client: Client, daemon: Daemon, tmp_path: Path
) -> None:
    record = tmp_path / "day.rec"
    proc = shadow_json(daemon.url, target, "--record", str(record))
    pool = f"shadow-{target.pid}"
    with running(proc) as lines:
        lines.until(lambda t: _proc(t)["stored_pages"] >= 3 * target.pages)
        report = client.shadows()[pool]
        assert report["pool"] == pool and report["detection"] == "hash"
        assert report["processes"][0]["pid"] == target.pid
        assert client.stats(pool)["zswap"]["stored_pages"] > 0
        target.command("hot")
        tick = lines.until(lambda t: _proc(t)["refaults_total"] >= target.pages)
        assert tick["pool"]["orig_data_size"] == PAGE * _proc(tick)["stored_pages"]
        code, out, err = finish_out(proc, lines, sig)
        closing = json.loads(out[-1])["summary"]
    assert code == 0, err
    assert "refused the shadow's report" not in err, err  # every tick's report taken
    assert "detection hash: write-coldness only" in err and "refaults count writes only" in err
    # The reasons follow "because:", not a parenthesis inside another.
    (first,) = [line for line in err.splitlines() if "detection hash:" in line]
    assert "(refaults count writes only); because: " in first and ") (" not in first
    # The closing summary says how the run ended, as the record's end does.
    assert closing["ended"]["how"] == "complete" and closing["ended"]["why"].startswith("stopped")
    assert closing["detection"] == "hash" and "writes only" in closing["refaults_note"]
    assert "COLD, STORED, DATA and SAVED are upper bounds and REFAULTS a lower bound" in err
    assert "upper bounds" in closing["bounds_note"] and "lower bound" in closing["bounds_note"]
    assert closing["figures"]["run"]["ticks"] >= 2 and closing["pool"] == pool
    assert pool not in client.pools() and pool not in client.shadows()
    with RecordReader.open(str(record)) as reader:
        assert reader.complete
        assert reader.ended is not None and reader.ended["how"] == "complete"
        assert reader.ended["why"] == f"stopped by {signal.Signals(sig).name}"
        live = reader.summary["figures"]
        assert reader.header["processes"] == [{"pid": target.pid, "comm": "python3"}]
        assert reader.header["detection"] == "hash"
        assert (
            reader.header["config"]["compressor"] == client.stats("default")["config"]["compressor"]
        )
        config = replay_config(reader, Overrides(), str(tmp_path))
        replayed = replay(reader, config)
    assert replayed.to_dict() == live


def test_cli_bad_pid_is_one_line_and_creates_nothing(client: Client, daemon: Daemon) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    before = client.pools()
    result = run_cli("shadow", "--url", daemon.url, "--pid", str(gone.pid), "--duration", "1s")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == f"zswapd shadow: --pid {gone.pid}: no such process\n"
    assert client.pools() == before and client.shadows() == {}


def test_cli_unreadable_pid_is_one_line_and_creates_nothing(
    target: Target, client: Client, daemon: Daemon
) -> None:
    """Run as another user (nobody) in a forked child: the kernel refuses it the
    target's memory at the open, before anything is created."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    from zswapd.cli import main

    before = client.pools()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the child: never returns into pytest
        code = 99
        try:
            sys.stderr = os.fdopen(w, "w")  # pytest's capture is not fd 2
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(["shadow", "--url", daemon.url, "--pid", str(target.pid)])
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 1, err
    scope = yama_ptrace_scope()
    assert err == (
        f"zswapd shadow: --pid {target.pid}: cannot read its memory: Permission denied: "
        "it runs as uid 0 (root), this as uid 65534 (nobody); run as root or as uid 0 (root) "
        f"(its user), or with CAP_SYS_PTRACE "
        f"({YAMA_PTRACE_SCOPE}: {'absent' if scope is None else scope})\n"
    )
    assert client.pools() == before and client.shadows() == {}


def test_cli_pool_holding_pages_is_refused(target: Target, client: Client, daemon: Daemon) -> None:
    client.create_pool("busy")
    try:
        handles = client.store([text_page(1)], pool="busy")
        result = run_cli("shadow", "--url", daemon.url, "--pid", str(target.pid), "--pool", "busy")
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "a shadow needs a pool of its own" in result.stderr
        assert client.load(handles, pool="busy") == [text_page(1)]
        assert client.shadows() == {}
    finally:
        client.remove_pool("busy")


def test_cli_target_exit_ends_the_shadow_with_its_pages_freed(
    target: Target, client: Client, daemon: Daemon
) -> None:
    proc = shadow_json(daemon.url, target)
    with running(proc) as lines:
        lines.until(lambda t: _proc(t)["stored_pages"] >= 3 * target.pages)
        target.command("exit")
        tick = lines.until(lambda t: _proc(t)["exited"])
        assert _proc(tick)["stored_pages"] == 0 and tick["pool"]["orig_data_size"] == 0
        code, err = finish(proc, None)  # it ends by itself: nothing left to shadow
    assert code == 0, err
    assert "refused the shadow's report" not in err, err  # the exit's report too
    assert f"shadow-{target.pid}" not in client.pools()


def test_cli_daemon_gone_is_one_line_and_the_record_is_closed(
    target: Target, tmp_path: Path
) -> None:
    d = start_daemon()
    record = tmp_path / "cut.rec"
    proc = shadow_json(d.url, target, "--record", str(record))
    try:
        with running(proc) as lines:
            lines.until(lambda t: _proc(t)["stored_pages"] > 0)
            d.stop(signal.SIGKILL)
            code, err = finish(proc, None)
    finally:
        d.stop(signal.SIGKILL)
    last = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err, err
    assert last.startswith("zswapd shadow: ") and "connect" in last, err
    with RecordReader.open(str(record)) as reader:
        assert reader.complete
        assert reader.summary["figures"]["processes"][0]["pid"] == target.pid
        ended = reader.ended
    assert ended is not None and ended["how"] == "daemon_unreachable"
    assert ended["why"].startswith(f"cannot reach {d.url}: ")
    assert ended["t"] >= reader.summary["figures"]["t"]


def test_cli_a_shadow_cut_short_records_exactly_the_ticks_it_printed(
    target: Target, tmp_path: Path
) -> None:
    """The daemon killed mid-run: the record holds the ticks printed, no more
    (a tick's end is written once the tick went through the pool), and plays
    back to the figures printed last."""
    d = start_daemon()
    record = tmp_path / "cut.rec"
    proc = shadow_json(d.url, target, "--record", str(record))
    printed: list[dict[str, Any]] = []
    try:
        with running(proc) as lines:
            deadline = time.monotonic() + DEADLINE
            while not printed or _proc(printed[-1])["stored_pages"] == 0 or len(printed) < 4:
                line = lines.next(deadline)
                assert line is not None, "the shadow ended first"
                printed.append(json.loads(line))
            d.stop(signal.SIGKILL)
            out, err = proc.communicate(timeout=DEADLINE)
            printed += [json.loads(x) for x in (lines.buf + out).decode().splitlines()]
    finally:
        d.stop(signal.SIGKILL)
    assert proc.returncode == 1 and "connect" in err.decode(), err
    with RecordReader.open(str(record)) as reader:
        assert reader.complete and reader.ticks_count == len(printed)
        assert reader.summary["figures"] == printed[-1]
        replayed = replay(reader, replay_config(reader, Overrides(), str(tmp_path)))
    assert replayed.to_dict() == printed[-1]


def test_cli_flags_refused_in_one_line(target: Target, daemon: Daemon) -> None:
    for flags, words in [
        (["--interval", "10x"], "invalid duration '10x'"),
        (["--cold-after=-1s"], "invalid duration"),
        (["--duration", "0"], "out of range"),
        (["--max-cpu", "0"], "--max-cpu"),
        (["--max-cpu", "1.5"], "--max-cpu"),
    ]:
        result = run_cli("shadow", "--url", daemon.url, "--pid", str(target.pid), *flags)
        assert result.returncode in (1, 2), result
        assert len(result.stderr.splitlines()) == 1 and words in result.stderr, result


def test_cli_max_cpu_stretches_the_interval_and_says_so(target: Target, daemon: Daemon) -> None:
    """Under --max-cpu 0.001 a scan of a few MiB (milliseconds of CPU) stretches
    the next interval to seconds; --duration still ends the shadow in that wait.
    Stretched past --cold-after, it says once on stderr what that does to "cold"."""
    result = run_cli(
        "shadow", "--url", daemon.url, "--pid", str(target.pid), "--interval", "0.05s",
        "--max-cpu", "0.001", "--duration", "2s", "--cold-after", "0.5s",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (note,) = [line for line in result.stdout.splitlines() if "interval stretched" in line]
    assert "s of CPU, --max-cpu 0.001" in note, note
    (past,) = [line for line in result.stderr.splitlines() if "past --cold-after" in line]
    assert past.startswith("zswapd shadow: t=0.0s: --max-cpu 0.001 stretched the interval to ")
    assert past.endswith(
        "past --cold-after 0.5s: a page goes cold at the next scan that finds it unchanged, "
        "whatever its age (said once)"
    )
    assert "is under --interval" not in result.stderr
    assert result.stdout.count(f"pid {target.pid} (python3):") == 1  # one tick, then the end


def test_cli_cold_after_under_the_interval_is_one_line_on_stderr(
    target: Target, daemon: Daemon
) -> None:
    """--cold-after under --interval: every page unchanged between two scans is
    cold at the second, whatever its age; said once, the shadow goes on."""
    result = run_cli(
        "shadow", "--url", daemon.url, "--pid", str(target.pid), "--interval", "0.4s",
        "--cold-after", "0.1s", "--duration", "0.5s", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "--cold-after" in line]
    assert warned == [
        "zswapd shadow: --cold-after 0.1s is under --interval 0.4s: a page goes cold at the "
        "next scan that finds it unchanged, whatever its age"
    ], result.stderr


def test_cli_summary_names_zrams_figures_and_the_shadows_scan_cost(
    target: Target, daemon: Daemon
) -> None:
    """The summary (on stderr beside --json) prints the pool under zramctl's and
    the kernel's names, RATIO being DATA/TOTAL, defined under it; says what
    RESIDENT counts; and the scans' CPU seconds per GiB read, which the --json
    summary carries too, from the same figures."""
    proc = shadow_json(daemon.url, target, "--duration", "3s")
    with running(proc):
        stdout, stderr = proc.communicate(timeout=DEADLINE)
    err = stderr.decode()
    assert proc.returncode == 0, err
    closing = json.loads(stdout.decode().splitlines()[-1])["summary"]
    pool, (p,) = closing["figures"]["pool"], closing["figures"]["processes"]
    data, total = pool["orig_data_size"], pool["mem_used_total"]
    ratio = f"{data / total:.2f}" if total else "-"
    assert (
        f"pool at the last tick, t={closing['figures']['t']:.1f}s: DATA {human(data)} "
        f"COMPR {human(pool['compr_data_size'])} TOTAL {human(total)} RATIO {ratio} "
        f"SAVED {human(pool['saved_bytes'])}; mem_used_max {human(pool['mem_used_max'])} "
        f"mem_limit none; same_pages {pool['same_pages']} huge_pages {pool['huge_pages']}; "
        f"bd_count 0 bd_reads 0 written_back_pages 0; pool_limit_hit 0"
    ) in err.splitlines()
    assert POOL_LEGEND in err.splitlines() and "RATIO: DATA/TOTAL" in POOL_LEGEND
    assert STORED_LEGEND in err.splitlines()
    assert f"REFAULTS/S: the run's mean, REFAULTS over its {closing['figures']['t']:.1f}s" in err
    assert (
        closing["ended"]["how"] == "complete" and closing["ended"]["why"] == "--duration 3s ended"
    )
    assert "RESIDENT: every private anonymous page of the process present in RAM" in err
    assert "above mem_limit" not in err
    cost = closing["scan_cost"]
    assert cost["scan_seconds_total"] == p["scan_seconds_total"] > 0
    assert cost["scanned_bytes_total"] == p["scanned_bytes_total"] > 0
    per_gib = cost["scan_seconds_total"] * (1 << 30) / cost["scanned_bytes_total"]
    assert cost["cpu_seconds_per_gib"] == pytest.approx(per_gib)
    assert (
        f"scan cost: {cost['scan_seconds_total']:.2f}s of CPU for "
        f"{human(cost['scanned_bytes_total'])} read, {per_gib:.2f} CPU s per GiB scanned"
    ) in err
    head, row = [line for line in err.splitlines() if "COMM" in line or line.endswith("  -")]
    assert head.split()[-2:] == ["CPU-S/GIB", "EXITED"] and row.split()[-2:] == [
        f"{per_gib:.2f}",
        "-",
    ]


def test_cli_tick_lines_say_pages_sizes_and_the_pool_in_the_summarys_words(
    target: Target, daemon: Daemon
) -> None:
    """Every tick: a process's pages (counted), its saving and its scan's CPU;
    the pool's DATA, COMPR, TOTAL, RATIO and SAVED, as the summary's line
    begins, the last tick's the same as the summary's."""
    result = run_cli(
        "shadow", "--url", daemon.url, "--pid", str(target.pid), "--interval", "0.2s",
        "--cold-after", f"{COLD_AFTER}s", "--duration", "2s",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ticks = [line for line in lines if line.startswith("t=") and " pid " in line]
    pools = [line for line in lines if line.startswith("t=") and " pool: " in line]
    assert ticks and len(ticks) == len(pools)
    for line in ticks:
        assert f"pid {target.pid} (python3): resident " in line
        assert " pages, saved " in line and ", refaults/s " in line
        assert line.endswith("s of CPU")
    for line in pools:
        assert " pool: DATA " in line and " COMPR " in line and " TOTAL " in line
        assert " RATIO " in line and " SAVED " in line
    (summary,) = [line for line in lines if line.startswith("pool at the last tick, t=")]
    assert summary.split(": ", 1)[1].startswith(pools[-1].split(" pool: ", 1)[1] + "; ")


# -- the pieces ------------------------------------------------------------------------


def test_durations() -> None:
    assert [parse_duration(t) for t in ("500ms", "10s", "2m", "1h", "3", "0.25")] == [
        0.5, 10.0, 120.0, 3600.0, 3.0, 0.25,
    ]  # fmt: skip
    assert parse_duration("0", zero=True) == 0.0
    for bad in ("", "10x", "1e3", "-1s", "nan", "0", "400d", "9999h"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_max_cpu_stretches_the_interval() -> None:
    # A tick of 0.1 CPU s under --max-cpu 0.25 waits until 0.4 s after it began.
    wait, stretched = next_wait(0.2, 0.1, 0.1, 0.25)
    assert stretched and wait == pytest.approx(0.3)
    assert next_wait(10.0, 0.1, 0.1, 0.25) == (pytest.approx(9.9), False)
    assert next_wait(0.2, 0.0, 0.5, 0.25) == (0.0, False)  # late already: at once


def test_a_process_naming_itself_with_control_characters_is_still_reported(
    client: Client, pool: str
) -> None:
    """A process chooses its own comm (prctl): escaped, it can neither drive the
    terminal nor make the daemon refuse the shadow's report."""
    code = (
        "import ctypes, sys; ctypes.CDLL(None).prctl(15, b'ev\\x1b[31m\\nil', 0, 0, 0); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        with shadow([proc.pid], client, pool) as s:
            s.tick(0.0)
            ((_, comm),) = s.scanner.processes
            assert comm.isprintable() and comm.startswith("ev\\x1b[31m"), comm
            figures = s.sim.figures()
            report = {
                "pool": pool,
                "detection": "hash",
                "interval_seconds": 1.0,
                "cold_after_seconds": COLD_AFTER,
                "processes": [p.to_dict() for p in figures.processes],
            }
            client.report_shadow(pool, report)
            assert client.shadows()[pool]["processes"][0]["comm"] == comm
            client.remove_shadow(pool)
    finally:
        proc.kill()
        proc.wait()


def test_cli_a_process_naming_itself_with_format_characters_is_reported_escaped(
    client: Client, daemon: Daemon
) -> None:
    """Invisible format characters (a right-to-left override, a zero-width space),
    which the daemon refuses in a comm: ``zswapd shadow`` sends the comm escaped
    as it prints it, and its report is taken."""
    name = "a\u202eb\u200bc"  # 9 bytes of UTF-8: within the kernel's 15
    code = (
        f"import ctypes, sys; ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    target = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    escaped = "a\\u202eb\\u200bc"
    pool = f"shadow-{target.pid}"
    try:
        assert target.stdout is not None and target.stdout.readline() == b"ready\n"
        with open(f"/proc/{target.pid}/comm", "rb") as f:
            assert f.read() == name.encode() + b"\n"
        proc = shadow_cli(
            "--url", daemon.url, "--pid", str(target.pid), "--interval", "0.2s",
            "--cold-after", f"{COLD_AFTER}s", "--json",
        )  # fmt: skip
        with running(proc) as lines:
            tick = lines.until(lambda t: t["t"] > 0)
            assert _proc(tick)["comm"] == escaped
            (reported,) = client.shadows()[pool]["processes"]
            assert reported["comm"] == escaped and reported["pid"] == target.pid
            code_, out, err = finish_out(proc, lines)
        assert code_ == 0, err
        assert "refused" not in err, err
        assert json.loads(out[-1])["summary"]["figures"]["processes"][0]["comm"] == escaped
    finally:
        target.kill()
        target.wait()
    assert pool not in client.pools() and pool not in client.shadows()


def test_a_full_pool_keeps_cold_pages_waiting_and_stores_them_as_room_is_made(
    target: Target, client: Client
) -> None:
    """At the pool's limit a cold page waits (still cold, counted rejected once)
    and is retried every tick, so once there is room it is stored."""
    name = f"shadow-test-{os.getpid()}-full"
    client.create_pool(name, limit_bytes=16 << 20)  # the most it may be raised to
    client.update_pool(name, limit_bytes=256 << 10)
    try:
        with shadow([target.pid], client, name) as s:
            s.tick(0.0)
            s.tick(COLD_AFTER)
            fig = s.sim.figures()
            (p,) = fig.processes
            assert 0 < p.stored_pages < p.cold_pages and p.rejected_total > 0
            assert fig.pool.pool_limit_hit > 0
            assert fig.pool.mem_used_total <= 256 << 10
            s.tick(COLD_AFTER + 0.1)  # still full: they go on waiting
            (again,) = s.sim.figures().processes
            assert again.stored_pages == p.stored_pages and again.rejected_total == p.rejected_total
            client.update_pool(name, limit_bytes=16 << 20)  # room for every page
            s.tick(COLD_AFTER + 0.2)
            (after,) = s.sim.figures().processes
            assert after.stored_pages == after.cold_pages >= p.cold_pages
    finally:
        client.remove_pool(name)


class CountingClientTarget(ClientTarget):
    """A daemon's pool, counting the stores the shadow asks of it."""

    stores = 0

    def store(self, pages: list[bytes]) -> list[int]:
        self.stores += 1
        return super().store(pages)


def test_room_another_pool_frees_under_the_memory_limit_lets_waiting_pages_in() -> None:
    """The daemon's --memory-limit is shared by every pool: another pool fills
    it, the shadow's cold pages are refused (memory_limit) and wait, and a
    full server left alone is not asked again; once the other pool frees its
    pages, the shadow stores them at its next tick's end without having freed
    anything of its own (its pool's own figures did not move)."""
    d = start_daemon("--memory-limit", "4M")
    try:
        with Client(d.url) as client:
            client.create_pool("hog")
            client.create_pool("shadowed")
            hog: list[int] = []
            batch = 64
            while batch:  # fill the server to its last page: big batches, then single pages
                try:
                    hog += client.store([os.urandom(PAGE) for _ in range(batch)], pool="hog")
                except PoolLimitError:
                    batch //= 2
            server = client.stats("hog")["server"]
            assert server["memory_limit"] - server["memory_used"] < PAGE
            addresses = [0x10000 + i * PAGE for i in range(16)]
            data = {a: text_page(i) for i, a in enumerate(addresses)}
            target = CountingClientTarget(client, "shadowed")
            sim = SwapSim(target, lambda e: data[e.address])
            sim.feed(Event(EventKind.COLD, 1, a, data[a]) for a in addresses)
            sim.end_tick(TickEnd(1.0, ()))
            (p,) = sim.figures().processes
            assert p.cold_pages == 16 and p.stored_pages == 0 and p.rejected_total == 16
            hits = client.stats("shadowed")["counters"]["memory_limit_hit"]
            stores = target.stores
            assert hits > 0
            for t in (2.0, 3.0):  # the server still full: no retry
                sim.end_tick(TickEnd(t, ()))
            assert target.stores == stores
            assert client.stats("shadowed")["counters"]["memory_limit_hit"] == hits
            client.free(hog, pool="hog")  # room made in another pool
            sim.end_tick(TickEnd(4.0, ()))
            (p,) = sim.figures().processes
            assert p.stored_pages == p.cold_pages == 16
            stats = client.stats("shadowed")
            assert stats["counters"]["freed_pages_total"] == 0  # the shadow freed nothing
            assert stats["zswap"]["stored_pages"] == 16
            sim.release()
    finally:
        d.stop()


def test_pages_refused_at_the_pools_own_limit_ignore_other_pools_frees() -> None:
    """Refused by the pool's own limit, not the server's: another pool freeing
    room under --memory-limit makes none for them, so no retry (a replay,
    whose pool is alone, would make none either)."""
    d = start_daemon("--memory-limit", "64M")
    try:
        with Client(d.url) as client:
            client.create_pool("other")
            client.create_pool("shadowed", limit_bytes=16 << 20)
            client.update_pool("shadowed", limit_bytes=64 << 10)
            others = client.store([os.urandom(PAGE) for _ in range(64)], pool="other")
            addresses = [0x10000 + i * PAGE for i in range(64)]
            data = {a: os.urandom(PAGE) for a in addresses}
            target = CountingClientTarget(client, "shadowed")
            sim = SwapSim(target, lambda e: data[e.address])
            sim.feed(Event(EventKind.COLD, 1, a, data[a]) for a in addresses)
            sim.end_tick(TickEnd(1.0, ()))
            (p,) = sim.figures().processes
            assert 0 < p.stored_pages < p.cold_pages
            stats = client.stats("shadowed")
            assert stats["counters"]["memory_limit_hit"] == 0  # the pool's own limit
            stores, hits = target.stores, stats["zswap"]["pool_limit_hit"]
            client.free(others, pool="other")  # room under the server's limit only
            sim.end_tick(TickEnd(2.0, ()))
            assert target.stores == stores
            assert client.stats("shadowed")["zswap"]["pool_limit_hit"] == hits
            sim.release()
    finally:
        d.stop()


# -- robustness: reports refused, foreign pages, a killed shadow, names refused --------


def test_cli_a_refused_report_is_said_once_and_the_shadow_goes_on(
    target: Target, client: Client, daemon: Daemon
) -> None:
    """A daemon that keeps no more shadows (64) refuses the report from the start:
    the shadow says so once, keeps its pool and figures, tries every tick, and
    says when the daemon takes its report again."""
    fillers = [f"filler-{i}" for i in range(64)]
    report = {"pool": "default", "detection": "hash", "interval_seconds": 1.0,
              "cold_after_seconds": 1.0, "processes": []}  # fmt: skip
    for name in fillers:
        client.report_shadow(name, report)
    pool = f"shadow-{target.pid}"
    proc = shadow_json(daemon.url, target)
    try:
        with running(proc) as lines:
            lines.until(lambda t: _proc(t)["stored_pages"] >= 3 * target.pages)
            assert pool not in client.shadows()
            client.remove_shadow(fillers.pop())
            lines.until(lambda t: pool in client.shadows())
            code, out, err = finish_out(proc, lines)
            closing = json.loads(out[-1])
    finally:
        for name in fillers:
            client.remove_shadow(name)
    assert code == 0, err
    refused = [line for line in err.splitlines() if "refused the shadow's report" in line]
    assert len(refused) == 1, err
    assert "507" in refused[0] and refused[0].endswith("keeps shadowing; figures are not exported")
    assert err.count("takes the shadow's report again") == 1, err
    assert closing["summary"]["figures"]["processes"][0]["stored_pages"] >= 3 * target.pages
    assert pool not in client.pools() and pool not in client.shadows()


def test_cli_pages_another_client_stores_into_the_pool_are_said_and_marked(
    target: Target, client: Client, daemon: Daemon
) -> None:
    """Pool names are not owned: a second client's page in the shadow's pool is
    said once on stderr (both counts) and marked in the figures and summary."""
    pool = f"shadow-{target.pid}"
    proc = shadow_json(daemon.url, target)
    with running(proc) as lines:
        tick = lines.until(lambda t: _proc(t)["stored_pages"] >= 3 * target.pages)
        assert tick["run"]["foreign_pages"] == 0
        with Client(daemon.url) as other:
            other.store([text_page(7)], pool=pool)
        tick = lines.until(lambda t: t["run"]["foreign_pages"] == 1)
        own = _proc(tick)["stored_pages"]
        lines.until(lambda t: t["run"]["foreign_ticks"] >= 3)
        code, out, err = finish_out(proc, lines)
        closing = json.loads(out[-1])["summary"]
    assert code == 0, err
    said = [line for line in err.splitlines() if "did not store" in line]
    assert said[0] == (
        f"zswapd shadow: pool {pool} holds {own + 1} pages, the shadow stored {own}: "
        "figures include pages the shadow did not store"
    )
    assert len([line for line in said if line.startswith("zswapd shadow:")]) == 1, err
    assert "figures include pages the shadow did not store: the pool differed" in err
    assert closing["figures"]["run"]["foreign_pages"] == 1
    assert closing["figures"]["run"]["foreign_ticks"] >= 3
    assert pool not in client.pools()


def test_cli_a_pool_removed_and_made_again_loses_the_shadows_pages_said_once_a_tick(
    target: Target, client: Client, daemon: Daemon
) -> None:
    """Another client removes the shadow's pool and makes it again (every handle
    the shadow holds is then stale; no route lists a pool's handles, nor frees
    them all): at its next tick's end the shadow finds the pool holding fewer
    pages than it stored, counts its pages lost (not refaults) in one line,
    and goes on, its figures those of the pool."""
    pool = f"shadow-{target.pid}"
    proc = shadow_json(daemon.url, target)
    with running(proc) as lines:
        tick = lines.until(lambda t: _proc(t)["stored_pages"] >= 3 * target.pages)
        proc.send_signal(signal.SIGSTOP)  # between two ticks: no race with the shadow
        try:
            with Client(daemon.url) as other:
                other.remove_pool(pool)
                other.create_pool(pool)
        finally:
            proc.send_signal(signal.SIGCONT)
        tick = lines.until(lambda t: t["run"]["lost_pages"] > 0)
        lost = tick["run"]["lost_pages"]
        assert lost >= 3 * target.pages and tick["run"]["foreign_pages"] == 0
        assert _proc(tick)["stored_pages"] == tick["pool"]["stored_pages"]
        refaults = _proc(tick)["refaults_total"]
        target.command("hot")  # the hot region's pages were lost: no refaults
        tick = lines.until(lambda t: t["t"] > tick["t"] + 3 * COLD_AFTER)
        # 16 pages rewritten every 50 ms would be 16 refaults had they been stored
        # (a page of the interpreter's, stored anew and touched, may be one).
        assert _proc(tick)["refaults_total"] - refaults < target.pages
        code, out, err = finish_out(proc, lines)
        closing = json.loads(out[-1])["summary"]
    assert code == 0, err
    said = [line for line in err.splitlines() if "lost, not refaults" in line]
    assert len(said) == 1, err
    assert said[0].startswith("zswapd shadow: t=") and said[0].endswith(
        f"in pool {pool} (stale handles): lost, not refaults ({lost} lost in all); "
        "the shadow goes on"
    ), err
    assert closing["figures"]["run"]["lost_pages"] == lost
    assert pool not in client.pools() and pool not in client.shadows()


def test_cli_the_pool_removed_under_the_shadow_stops_it_in_one_line(
    target: Target, client: Client, daemon: Daemon, tmp_path: Path
) -> None:
    """The shadow does not make its pool again (whoever removed it meant its
    pages gone): one line saying when it was found gone (the ticks' clock,
    after the last tick printed), exit 1, its report removed, its record
    closed with the last tick's figures and an end saying the run was cut
    short, which a replay says in one line."""
    pool = f"shadow-{target.pid}"
    record = tmp_path / "removed.rec"
    proc = shadow_json(daemon.url, target, "--record", str(record))
    with running(proc) as lines:
        tick = lines.until(lambda t: _proc(t)["stored_pages"] >= 3 * target.pages)
        assert pool in client.shadows()
        with Client(daemon.url) as other:
            other.remove_pool(pool)
        raw, rawerr = proc.communicate(timeout=DEADLINE)  # it stops by itself
        code, err = proc.returncode, rawerr.decode()
        printed = [json.loads(x) for x in (lines.buf + raw).decode().splitlines()]
    last = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err, err
    head = f"zswapd shadow: pool {pool} was removed by another client: found gone at t="
    assert last.startswith(head) and last.endswith("s): the shadow stops"), err
    found = float(last[len(head) :].split("s (", 1)[0])
    shown = (printed or [tick])[-1]["t"]
    assert f"(it was there at the tick of t={shown:.1f}s)" in last, err
    assert found >= shown  # found at or after the last tick that saw the pool
    assert pool not in client.pools() and pool not in client.shadows()
    with RecordReader.open(str(record)) as reader:
        assert reader.complete
        assert reader.summary["figures"]["processes"][0]["stored_pages"] >= 3 * target.pages
        ended = reader.ended
    assert ended is not None and ended["how"] == "pool_removed"
    # The line says t to a tenth, the record to a thousandth (1.2504: "1.3", 1.25).
    assert abs(ended["t"] - found) <= 0.0501 and ended["why"] == last[len("zswapd shadow: ") :]
    replayed = run_cli("replay", str(record))
    assert replayed.returncode == 0, replayed.stderr
    said = [line for line in replayed.stdout.splitlines() if "cut short" in line]
    assert said == [
        f"the recording was cut short at t={ended['t']:.1f}s (pool_removed): {ended['why']}; "
        "its figures stop at its last tick"
    ], replayed.stdout


def test_cli_a_killed_shadows_pool_refuses_a_restart_saying_how_to_recover(
    target: Target, client: Client, daemon: Daemon
) -> None:
    """SIGKILL leaves the pool full and the report alive until it expires: a
    restart on that pool is refused, each time naming the way out, which works."""
    pool = f"shadow-{target.pid}"
    args = ("shadow", "--url", daemon.url, "--pid", str(target.pid), "--duration", "0.5s")
    proc = shadow_json(daemon.url, target)
    with running(proc) as lines:
        lines.until(lambda t: _proc(t)["stored_pages"] > 0)
        lines.until(lambda t: pool in client.shadows())
        proc.kill()
        proc.wait()
    try:
        remove = f"zswapd pools remove {pool} --url {daemon.url}"
        first = run_cli(*args)
        assert first.returncode == 1 and len(first.stderr.splitlines()) == 1, first.stderr
        assert "another shadow reports on it" in first.stderr
        assert f"DELETE /v1/shadows/{pool}" in first.stderr and remove in first.stderr
        client.remove_shadow(pool)
        second = run_cli(*args)
        assert second.returncode == 1 and len(second.stderr.splitlines()) == 1, second.stderr
        assert "holds" in second.stderr and remove in second.stderr
        assert run_cli(*remove.split()[1:]).returncode == 0
        third = run_cli(*args)
        assert third.returncode == 0, third.stderr
    finally:
        if pool in client.pools():
            client.remove_pool(pool)
    assert pool not in client.pools() and client.shadows() == {}


def test_cli_a_report_merely_named_like_the_pool_does_not_keep_the_shadow_out(
    target: Target, client: Client, daemon: Daemon
) -> None:
    """Names are anyone's: a report squatting ``shadow-PID`` for a day, on another
    pool, is no shadow of this pool; the shadow starts and its report replaces it."""
    pool = f"shadow-{target.pid}"
    squat = {"pool": "default", "detection": "hash", "interval_seconds": 1.0,
             "cold_after_seconds": 1.0, "expires_seconds": 86400, "processes": []}  # fmt: skip
    client.report_shadow(pool, squat)
    proc = shadow_json(daemon.url, target)
    with running(proc) as lines:
        lines.until(lambda t: client.shadows().get(pool, {}).get("pool") == pool)
        code, _, err = finish_out(proc, lines)
    assert code == 0, err
    assert pool not in client.shadows() and pool not in client.pools()


def test_cli_a_pool_name_the_daemon_would_refuse_is_one_line_before_any_scan(
    target: Target, client: Client, daemon: Daemon
) -> None:
    before = client.pools()
    for name in ["../x", "", "a" * 65, "é", "a/b", "-x", "x y"]:
        result = run_cli("shadow", "--url", daemon.url, "--pid", str(target.pid), f"--pool={name}")
        assert result.returncode == 1 and result.stdout == "", result
        (line,) = result.stderr.splitlines()
        assert line.startswith("zswapd shadow: --pool: bad pool name ") and "1-64 of" in line
    assert client.pools() == before and client.shadows() == {}


def _figures(lost: int = 0, rejected: int = 0, **pool: int) -> ShadowFigures:
    p = ProcessFigures(7, "svc", 100, 40, 40, 81920, 50, 10, rejected, 0.5, 409600, True)
    values = dict.fromkeys(PoolFigures.__dataclass_fields__, 0) | pool
    run = RunFigures(4, 45, 30.5, 90000, 60000.0, 0, 0, ((7, 12.5),), lost)
    return ShadowFigures(20.0, (p,), PoolFigures(**values), run)


def test_the_summary_says_what_its_figures_mean() -> None:
    """Each figure a newcomer misreads carries its meaning: RAM saved apart from
    pages on disk, write-only refaults under hash, mem_used_max above the limit
    (in exact bytes), the run's peak and mean (over time), when a process
    exited, what a process's share is, pages lost to another client's frees."""
    fig = _figures(
        orig_data_size=60 << 12, mem_used_total=20 << 12, bd_count=20, bd_reads=3,
        mem_limit=20 << 12, mem_used_max=24 << 12, written_back_pages=20,
    )  # fmt: skip
    text = format_summary(fig, "hash")
    assert "DATA 240K (on disk 80K) COMPR 0B TOTAL 80K RATIO 3.00 (in RAM 2.00) SAVED 80K" in text
    assert "mem_used_max 98304 bytes > mem_limit 81920 bytes" in text
    assert "same_pages 0 huge_pages 0; bd_count 20 bd_reads 3 written_back_pages 20" in text
    assert "mem_used_max above mem_limit by 16K: as zram" in text
    assert "REFAULTS: writes only (hash detection)" in text
    assert (
        "bounds: hash detection sees writes only: COLD, STORED, DATA and SAVED are upper bounds "
        "(a page only read looks cold) and REFAULTS a lower bound (write refaults only)"
    ) in text.splitlines()
    assert "pool at the last tick, t=20.0s: DATA 240K" in text
    assert "SAVED: the pool's saving in RAM, split between processes by their stored pages" in text
    assert "over 4 ticks: stored pages peak 45, mean over time 30.5; RAM saved: peak 87.9K" in text
    assert "scan cost: 0.50s of CPU for 400K read, 1310.72 CPU s per GiB scanned" in text
    assert "scan cost (recorded): 0.50s of CPU" in format_summary(fig, "hash", replayed=True)
    # STORED is defined once, apart from zswap's stored_pages; REFAULTS/S is the
    # run's mean; an exited process's zeros are explained; RATIO is named.
    lines = text.splitlines()
    assert STORED_LEGEND in lines and STORED_LEGEND.startswith(
        "STORED: in the pool or written back from it (bd_count of them on disk)"
    )
    assert "REFAULTS/S: the run's mean, REFAULTS over its 20.0s" in lines
    assert (
        "EXITED: an exited process's RESIDENT, COLD, STORED and SAVED are zero: its pages "
        "were freed; the run's peak line keeps what it held"
    ) in lines
    assert "RATIO: DATA/TOTAL, the effective ratio" in POOL_LEGEND and "DATA/COMPR" in POOL_LEGEND
    assert "below zero" not in text
    assert text.splitlines()[1].endswith("1310.72 at t=12.5s")
    assert "lost" not in text and "lost" not in format_pool_tick(fig)
    lost = _figures(lost=3)
    assert "lost 3 pages: stored by the shadow, freed by another client" in format_summary(lost)
    assert format_pool_tick(lost).endswith("; 3 lost (freed by another client)")
    for quiet in (format_summary(fig), format_summary(fig, "hash+idle")):
        assert "writes only" not in quiet and "bounds" not in quiet
    fitting = format_summary(_figures(mem_used_max=1 << 20, mem_limit=1 << 20))
    assert "above" not in fitting and "mem_used_max 1M mem_limit 1M;" in fitting
    assert format_tick(fig, None)[0].startswith("t=    20.0s pid 7 (svc) exited at t=12.5s:")


def test_a_saving_below_zero_is_explained_and_a_live_process_gets_no_exit_note() -> None:
    """A small dedicated pool's zspage overhead can outweigh what it compressed:
    the summary says why SAVED is negative.  Without an exited process there is
    no EXITED note."""
    p = ProcessFigures(7, "svc", 2, 2, 2, -8192, 2, 0, 0, 0.1, 8192, False)
    values = dict.fromkeys(PoolFigures.__dataclass_fields__, 0) | {
        "orig_data_size": 2 << 12, "mem_used_total": 4 << 12, "compr_data_size": 5000,
    }  # fmt: skip
    run = RunFigures(1, 2, 2.0, 0, 0.0, 0, 0, (), 0)
    fig = ShadowFigures(1.0, (p,), PoolFigures(**values), run)
    lines = format_summary(fig, "hash").splitlines()
    assert (
        "SAVED -8K below zero: the per-class zspage overhead of a small dedicated pool "
        "outweighs what it compressed; a shared pool absorbs it"
    ) in lines
    assert not [line for line in lines if line.startswith("EXITED:")]


def test_pool_limit_hit_is_said_as_batches_beside_the_pages_refused() -> None:
    """The daemon counts a refused store (a batch) once where zswap's debugfs
    counts every page: the figure says so beside the pages (REJECTED); refused
    pages without writeback are what zswap would have sent to the swap device."""
    fig = _figures(rejected=5904, pool_limit_hit=53, mem_limit=1 << 20)
    text = format_summary(fig, "hash", writeback="manual")
    assert "; pool_limit_hit 53 (refused batches; zswap counts pages: REJECTED 5904)" in text
    live = (
        "REJECTED 5904: under zswap these would have gone to the swap device (here, as zram "
        "without a backing device, they wait in RAM, and a write to one is no refault: "
        "REFAULTS undercounts what zswap would swap in); for close to zswap's behaviour, shadow "
        "into a pool made with writeback lru, or replay a --record with --writeback lru (lru "
        "writes back the oldest pages and stores the new one; zswap rejects the new page, "
        "which goes to the swap device uncounted in written_back_pages, and its shrink worker "
        "writes back LRU pages later, down to accept_thr_percent)"
    )
    assert live in text.splitlines()
    replayed = format_summary(fig, "hash", writeback="manual", replayed=True)
    assert "would swap in); replay with --writeback lru for close to zswap's" in replayed
    lru = format_summary(fig, "hash", writeback="lru")
    assert "pool_limit_hit 53 (stores that found the pool full and wrote back first" in lru
    assert "swap device" not in lru
    for calm in (_figures(), _figures(rejected=3, huge_pages=3)):  # no limit hit: no note
        text = format_summary(calm, "hash", writeback="manual")
        assert text.count("pool_limit_hit 0\n") == 1 and "swap device" not in text


def test_fragmentation_after_writeback_is_said_and_only_then() -> None:
    """TOTAL over twice COMPR with pages written back: zsmalloc's part-used
    zspages, which compaction would release; not said without writeback, nor
    at or under twice."""
    fragmented = _figures(compr_data_size=100 << 10, mem_used_total=300 << 10, bd_count=50)
    text = format_summary(fragmented, "hash", writeback="lru")
    (note,) = [line for line in text.splitlines() if "fragmentation" in line]
    assert note.startswith("TOTAL 300K is over 2x COMPR 100K after writeback: zsmalloc")
    assert (
        "zswapd compact --pool NAME releases it while the shadow runs" in note
        and "shrinker" in note
    )
    assert note.endswith(
        "written_back_pages 0 and bd_count 50 are inflated by it: writeback frees scattered "
        "slots, TOTAL barely drops, so writeback goes on until the threshold (the kernel's "
        "zswap measures its pool by zsmalloc's total pages too, and cascades the same way "
        "until the shrinker compacts)"
    )
    replayed = format_summary(fragmented, "hash", writeback="lru", replayed=True)
    assert "a replay does not compact" in replayed
    for dense in (
        _figures(compr_data_size=100 << 10, mem_used_total=200 << 10, bd_count=50),
        _figures(compr_data_size=100 << 10, mem_used_total=300 << 10),
    ):
        assert "fragmentation" not in format_summary(dense, "hash", writeback="lru")


def test_a_compressor_not_here_names_the_remedy_and_what_there_is() -> None:
    """zram's names a newcomer tries (lzo-rle, 842) and a backend whose library
    is missing (lzo without python-lzo) say why, what to do, and what exists."""
    here = ", ".join(compressors.available())
    result = run_cli("replay", "day.rec", "--compressor", "lzo-rle")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "the nearest is lzo" in result.stderr and here in result.stderr
    with pytest.raises(ConfigError, match="POWER's hardware compressor") as got:
        PoolConfig(compressor="842")
    assert got.value.args[0].endswith(f"available: {here}")
    assert "apt-get install liblzo2-dev" in unavailable_compressor("lzo")
