"""Processes whose main thread has ended while other threads run on (issue 18).

Such a process's leader, /proc/PID, is a zombie: its maps read empty and its
mem and pagemap refuse to open, yet the memory lives on, the thread group's.
The targets are real processes: the program below ends its main thread with
pthread_exit while a second thread keeps rewriting a few pages and a third
answers commands; and a child forked and ended, never reaped (a plain zombie).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.zswapd.daemon import Daemon, start_daemon
from tests.zswapd.helpers import ask
from tests.zswapd.test_scanner_privileges import NOBODY, _as_nobody, _open
from tests.zswapd.test_shadow import shadow
from zswapd.client import Client
from zswapd.errors import ConfigError
from zswapd.procmem import open_process, walk_pages
from zswapd.scanner import Detection, Scanner, probe_soft_dirty
from zswapd.timeline import EventKind

PAGE = 4096
COLD_AFTER = 1.0
PAGES = 64
# Pages of the region the writer thread keeps rewriting.
HOT = 2
DEADLINE = 60.0

# ``leave``: the main thread ends (pthread_exit); the writer thread rewrites
# the first HOT pages of the region every 20 ms until ``quiet``, then ends;
# the server thread answers each line with ``ok LINE``.  It prints the
# region's address and the writer's tid.
_THREADED = r"""
import ctypes, json, mmap, sys, threading, time
PAGES, HOT = int(sys.argv[1]), int(sys.argv[2])
region = mmap.mmap(-1, PAGES * 4096)
for i in range(PAGES):
    region[i * 4096 : (i + 1) * 4096] = (b"page %010d\n" % i) * 256  # 16 bytes
at = ctypes.addressof(ctypes.c_char.from_buffer(region))
leave, quiet, started = threading.Event(), threading.Event(), threading.Event()
writer_tid = []

def writer():
    writer_tid.append(threading.get_native_id())
    started.set()
    n = 0
    while not quiet.is_set():
        n += 1
        for i in range(HOT):
            region[i * 4096 : i * 4096 + 8] = n.to_bytes(8, "little")
        time.sleep(0.02)

def server():
    for line in sys.stdin:
        print("ok", line.strip(), flush=True)
        if line.strip() == "leave":
            leave.set()
        if line.strip() == "quiet":
            quiet.set()

threading.Thread(target=writer).start()
started.wait()
threading.Thread(target=server).start()
print(json.dumps({"region": at, "writer": writer_tid[0]}), flush=True)
leave.wait()
ctypes.CDLL(None).pthread_exit(None)
"""


def _state_at(task: str) -> str:
    try:
        with open(f"{task}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return "X"
    return chr(raw[raw.rindex(b")") + 2])


def _state(pid: int) -> str:
    return _state_at(f"/proc/{pid}")


class Threaded:
    """A running _THREADED target."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _THREADED, str(PAGES), str(HOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        info: dict[str, Any] = json.loads(self.proc.stdout.readline())
        self.region = [info["region"] + i * PAGE for i in range(PAGES)]
        self.writer = int(info["writer"])
        self.command("sync")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, what: str) -> None:
        assert ask(self.proc, what) == ["ok", what]

    def leave(self) -> None:
        """End the main thread; return once the leader is a zombie (a deadline so
        a broken target fails the test, not hangs it: no time is asserted)."""
        self.command("leave")
        deadline = time.monotonic() + DEADLINE
        while _state(self.pid) != "Z":
            assert time.monotonic() < deadline, "the main thread never ended"
            time.sleep(0.01)
        self.command("sync")  # the server thread still answers

    def quiet(self) -> None:
        """End the writer thread; return once it is gone or a zombie."""
        self.command("quiet")
        task = f"/proc/{self.pid}/task/{self.writer}"
        deadline = time.monotonic() + DEADLINE
        while os.path.exists(task) and _state_at(task) not in ("Z", "X"):
            assert time.monotonic() < deadline, "the writer thread never ended"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def threaded() -> Iterator[Threaded]:
    t = Threaded()
    try:
        yield t
    finally:
        t.stop()


def _walked(pid: int) -> set[int]:
    with open_process(pid) as memory:
        return {a for _, a in walk_pages(memory)}


def test_a_process_whose_main_thread_ended_is_opened_and_walked_through_a_live_thread(
    threaded: Threaded,
) -> None:
    before = _walked(threaded.pid)
    assert set(threaded.region) <= before
    threaded.leave()
    with open_process(threaded.pid) as memory:
        assert memory.base.startswith(f"/proc/{threaded.pid}/task/")
        assert memory.base != f"/proc/{threaded.pid}/task/{threaded.pid}"
        after = {a for _, a in walk_pages(memory)}
        assert memory.read_page(threaded.region[-1]) == (b"page %010d\n" % (PAGES - 1)) * 256
    assert set(threaded.region) <= after


def test_the_walk_moves_to_another_live_thread_when_its_own_ends(threaded: Threaded) -> None:
    threaded.leave()
    with open_process(threaded.pid) as memory:
        memory.base = f"/proc/{threaded.pid}/task/{threaded.writer}"  # as if chosen
        assert set(threaded.region) <= {a for _, a in walk_pages(memory)}
        threaded.quiet()
        assert set(threaded.region) <= {a for _, a in walk_pages(memory)}
        assert memory.base.startswith(f"/proc/{threaded.pid}/task/")
        assert memory.base != f"/proc/{threaded.pid}/task/{threaded.writer}"


@pytest.mark.parametrize("which", ["hash", "soft-dirty"])
def test_the_scanner_keeps_seeing_the_pages_after_the_main_thread_ends(
    threaded: Threaded, which: str
) -> None:
    """Opened while the main thread lived: the same resident pages after it
    ended, no GONE, no EXIT; killed at last (no thread left): EXIT.  Under
    soft-dirty, the bits are still cleared (through a live thread): with the
    writer quiet, a scan reads few pages, not every page written since."""
    detection = Detection()
    if which == "soft-dirty":
        works, why = probe_soft_dirty()
        if not works:
            pytest.skip(f"soft-dirty detection cannot run on this kernel: {why}")
        detection = Detection(soft_dirty=True)
    pid = threaded.pid
    with Scanner([pid], COLD_AFTER, detection) as scanner:
        list(scanner.scan(0.0))
        cold = {e.address for e in scanner.scan(COLD_AFTER) if e.kind == EventKind.COLD}
        assert set(threaded.region[HOT:]) <= cold
        ((scan,),) = (scanner.scans,)
        resident = scan.resident_pages
        threaded.leave()
        events = list(scanner.scan(2 * COLD_AFTER))
        assert not {EventKind.GONE, EventKind.EXIT} & {e.kind for e in events}, events
        ((scan,),) = (scanner.scans,)
        assert not scan.exited and scan.resident_pages >= resident - HOT
        assert all(scanner.is_cold(pid, a) for a in threaded.region[HOT:])
        if which == "soft-dirty":
            threaded.quiet()
            list(scanner.scan(3 * COLD_AFTER))  # clears what the exits wrote
            list(scanner.scan(4 * COLD_AFTER))
            ((scan,),) = (scanner.scans,)
            # The interpreter's threads write a little while they wait; not
            # every page, as an uncleared bit would have every page read.
            assert scan.scanned_bytes < scan.resident_pages * PAGE // 4, scan
        threaded.proc.kill()
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
        events = list(scanner.scan(5 * COLD_AFTER))
        assert [e.kind for e in events] == [EventKind.EXIT]
        assert not scanner.alive


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = start_daemon()
    try:
        yield d
    finally:
        d.stop()


def test_a_shadow_keeps_the_stored_pages_of_a_process_whose_main_thread_ended(
    threaded: Threaded, daemon: Daemon
) -> None:
    pid = threaded.pid
    cold = threaded.region[HOT:]
    with Client(daemon.url) as client:
        pool = f"threads-{os.getpid()}"
        client.create_pool(pool)
        try:
            with shadow([pid], client, pool) as s:
                s.tick(0.0)
                s.tick(COLD_AFTER)
                assert all(s.stored(pid, cold))
                stored = s.pool_pages()
                threaded.leave()
                events = s.tick(2 * COLD_AFTER)
                assert not {EventKind.GONE, EventKind.EXIT} & {e.kind for e in events}
                # Only pages rewritten (the main thread's end writes some of
                # the interpreter's) left the pool: refaults, not frees.
                changed = sum(1 for e in events if e.kind == EventKind.CHANGED)
                assert all(s.stored(pid, cold)) and s.pool_pages() >= stored - changed
                (fig,) = s.sim.figures().processes
                assert not fig.exited and fig.stored_pages == s.pool_pages()
        finally:
            client.remove_pool(pool)


def test_a_plain_zombie_is_said_to_have_ended_not_to_be_a_kernel_thread() -> None:
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # ended, not reaped
        with pytest.raises(ConfigError) as caught:
            open_process(child)
        assert str(caught.value) == (
            f"--pid {child}: has ended (a zombie, not yet reaped by its parent)"
        )
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)


def test_a_kernel_thread_is_still_said_to_have_no_user_memory() -> None:
    # kthreadd, the parent of every kernel thread, is pid 2 wherever /proc shows it.
    try:
        with open("/proc/2/comm") as f:
            if f.read().strip() != "kthreadd":
                pytest.skip("pid 2 is not kthreadd here (a pid namespace)")
    except OSError:
        pytest.skip("no pid 2 here (a pid namespace)")
    with pytest.raises(ConfigError, match=r"^--pid 2: has no user memory \(a kernel thread\?\)$"):
        open_process(2)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_a_process_not_dumpable_whose_main_thread_ended_is_said_not_dumpable() -> None:
    """Nobody's, ids changed (not dumpable), its main thread ended: refused to
    nobody as not dumpable, read from a live thread (the ended one's files
    would show nobody as owner)."""
    r, w = os.pipe()
    target = os.fork()
    if target == 0:
        os.close(r)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)  # undumpable from here on
        threading.Thread(target=time.sleep, args=(3600,)).start()
        os.write(w, b"ready")
        ctypes.CDLL(None).pthread_exit(None)
        os._exit(0)
    try:
        os.close(w)
        assert os.read(r, 5) == b"ready"
        deadline = time.monotonic() + DEADLINE
        while _state(target) != "Z":
            assert time.monotonic() < deadline, "the main thread never ended"
            time.sleep(0.01)
        said = _as_nobody(_open(target))
        assert said.startswith(f"--pid {target}: cannot read its memory: Permission denied: ")
        assert "it is not dumpable (set-user-ID, or prctl(PR_SET_DUMPABLE, 0)); " in said
    finally:
        os.close(r)
        os.kill(target, 9)
        os.waitpid(target, 0)
