"""Who may shadow whom: the scanner run as an unprivileged user (nobody) against
real processes, and the one-line refusal naming its cause and its remedy.

The unprivileged side runs in a child forked from the test that drops to
nobody with ``os.setresuid`` (the interpreter lives under /root, mode 0700,
so ``setpriv`` cannot start it as nobody: the modules are imported before the
fork).  The child marks itself dumpable again, as a process a user starts is,
so that it is an ordinary unprivileged process, not a set-user-ID one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zswapd.errors import ConfigError
from zswapd.ptrace_access import refusal, yama_ptrace_scope
from zswapd.scanner import Detection, Scanner
from zswapd.timeline import EventKind

TARGET = Path(__file__).with_name("shadow_target.py")
NOBODY = 65534
PAGE = 4096
PR_SET_DUMPABLE = 4
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
SCOPE = yama_ptrace_scope()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _become_nobody() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    # Changing ids made this process undumpable; a user's own process is not.
    _libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def _in_child(work: Callable[[], str], setup: Callable[[], None]) -> str:
    """``work()``'s answer, run in a forked child after ``setup()`` there; an
    exception raised there comes back as ``Name: message``."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # never returns into pytest
        try:
            os.close(r)
            setup()
            answer = work()
        except BaseException as exc:
            answer = f"{type(exc).__name__}: {exc}"
        finally:
            with os.fdopen(w, "w") as f:
                f.write(answer)
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        answer = f.read()
    os.waitpid(child, 0)
    return answer


def _as_nobody(work: Callable[[], str], before: Callable[[], None] | None = None) -> str:
    """``work()``'s answer, run in a forked child as nobody (``before`` as root first)."""

    def setup() -> None:
        if before is not None:
            before()
        _become_nobody()

    return _in_child(work, setup)


@contextlib.contextmanager
def _nobody_process(dumpable: bool = False) -> Iterator[int]:
    """A process of nobody's, its pid, killed at the end.  Not ``dumpable``:
    it changed its ids to get there and stays so, as a set-user-ID program."""
    r, w = os.pipe()
    target = os.fork()
    if target == 0:
        os.close(r)
        if dumpable:
            _become_nobody()
        else:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)  # undumpable from here on
        os.write(w, b"ready")
        time.sleep(3600)
        os._exit(0)
    try:
        os.close(w)
        assert os.read(r, 5) == b"ready"
        yield target
    finally:
        os.close(r)
        os.kill(target, 9)
        os.waitpid(target, 0)


def _start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())
    return proc


@pytest.fixture
def root_target() -> Iterator[int]:
    """A shadow target run by root."""
    proc = _start([sys.executable, str(TARGET)])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _open(pid: int) -> Callable[[], str]:
    def work() -> str:
        try:
            with Scanner([pid], 1.0, Detection()):
                return "opened"
        except ConfigError as exc:
            return str(exc)

    return work


def test_nobody_reading_roots_process_is_told_why_and_what_would_do(root_target: int) -> None:
    said = _as_nobody(_open(root_target))
    scope = "absent" if SCOPE is None else str(SCOPE)
    assert said == (
        f"--pid {root_target}: cannot read its memory: Permission denied: it runs as "
        "uid 0 (root), this as uid 65534 (nobody); run as root or as uid 0 (root) "
        "(its user), or with CAP_SYS_PTRACE "
        f"(/proc/sys/kernel/yama/ptrace_scope: {scope})"
    )


def test_a_process_of_its_own_user_that_is_not_dumpable_is_said_so() -> None:
    """Same user, but the target changed its ids (as a set-user-ID program
    does): the kernel refuses it to all but CAP_SYS_PTRACE."""
    with _nobody_process() as target:
        said = _as_nobody(_open(target))
        assert said.startswith(f"--pid {target}: cannot read its memory: Permission denied: ")
        assert "it is not dumpable (set-user-ID, or prctl(PR_SET_DUMPABLE, 0)); " in said
        assert said.endswith(f"run as root, or with CAP_SYS_PTRACE ({_scope_said()})")


def _scope_said() -> str:
    return f"/proc/sys/kernel/yama/ptrace_scope: {'absent' if SCOPE is None else SCOPE}"


def _hidepid_proc() -> None:
    """A mount namespace of the child's own with /proc mounted hidepid=2."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if libc.mount(b"proc", b"/proc", b"proc", 0, b"hidepid=2") != 0:
        raise OSError(ctypes.get_errno(), "mount -t proc -o hidepid=2")


def test_a_process_hidden_by_hidepid_is_not_called_missing(root_target: int) -> None:
    said = _as_nobody(_open(root_target), before=_hidepid_proc)
    if said.startswith("OSError"):
        pytest.skip(f"cannot mount a /proc of its own here: {said}")
    assert said == (
        f"--pid {root_target}: cannot read its memory: /proc is mounted hidepid=invisible, "
        "which hides other users' processes; run as root or as the target's user "
        "(or in /proc's gid= group), or with CAP_SYS_PTRACE "
        f"({_scope_said()})"
    )


def _interpreter_for_nobody() -> str | None:
    """A Python that nobody may run with the modules shadow_target.py imports
    (root's own may sit under a 0700 /root), tried as nobody."""

    def work() -> str:
        for candidate in (shutil.which("python3", path="/usr/bin:/bin"), sys.executable):
            if candidate is None:
                continue
            argv = [candidate, "-c", "import ctypes, json, mmap, threading"]
            if subprocess.run(argv, capture_output=True).returncode == 0:
                return candidate
        return ""

    return _as_nobody(work) or None


def test_an_unprivileged_shadow_of_its_own_users_process_works() -> None:
    """nobody shadowing a process of nobody's: the same pages, cold in time,
    with no privilege at all (no PFNs: the rule applies without them)."""
    python = _interpreter_for_nobody()
    if python is None or not os.access(TARGET, os.R_OK):
        pytest.skip("no Python interpreter that nobody may run")

    def work() -> str:
        # Started by the shadow itself, so that Yama's ptrace_scope 1 (only
        # ancestors) allows it as well as 0.
        proc = _start([python, str(TARGET), "--pages", "16"])
        try:
            assert proc.stdout is not None
            with Scanner([proc.pid], 1.0, Detection()) as scanner:
                first = list(scanner.scan(0.0))
                cold = [e for e in scanner.scan(1.0) if e.kind == EventKind.COLD]
                (scan,) = scanner.scans
                return json.dumps(
                    {
                        "uid": os.getuid(),
                        "target_uid": os.stat(f"/proc/{proc.pid}").st_uid,
                        "first": len(first),
                        "cold": len(cold),
                        "resident": scan.resident_pages,
                    }
                )
        finally:
            proc.kill()
            proc.wait()

    got = json.loads(_as_nobody(work))
    assert got["uid"] == got["target_uid"] == NOBODY
    assert got["first"] == 0  # first sight is a change
    assert got["cold"] == got["resident"] >= 3 * 16  # the target's three regions at least


@pytest.mark.skipif(SCOPE is None or SCOPE == 0, reason="Yama's ptrace_scope is 0 or absent here")
def test_yama_refusing_a_sibling_is_said_with_its_scope() -> None:
    """Under ptrace_scope 1 or more, nobody may not read nobody's process it did
    not start (nor CAP_SYS_PTRACE gives it)."""
    python = _interpreter_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that nobody may run")
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python, TARGET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        json.loads(proc.stdout.readline())
        said = _as_nobody(_open(proc.pid))
        assert "Yama forbids it: " in said and said.endswith(f"({_scope_said()})")
    finally:
        proc.kill()
        proc.wait()


# -- root without CAP_SYS_PTRACE, and a process that ended -------------------------

PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_SYS_PTRACE = 19


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_cap_sys_ptrace() -> None:
    """This process (a forked child) stays root but loses CAP_SYS_PTRACE, as
    under ``capsh --drop=cap_sys_ptrace`` or in a container that drops it:
    out of the bounding set, then out of every set it holds."""
    libc = _libc()
    if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    bit = ~(1 << CAP_SYS_PTRACE) & 0xFFFFFFFF  # 19 < 32: in the first word
    data[0].effective &= bit
    data[0].permitted &= bit
    data[0].inheritable &= bit
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _as_root_without_cap_sys_ptrace(work: Callable[[], str]) -> str:
    """``work()``'s answer in a forked child still root (uid 0) without CAP_SYS_PTRACE."""
    return _in_child(work, _drop_cap_sys_ptrace)


def test_root_without_cap_sys_ptrace_is_not_told_to_run_as_root() -> None:
    """Root reading nobody's process without CAP_SYS_PTRACE (a container, capsh
    --drop): the kernel refuses it, and the line says that this process is root
    but lacks the capability, where it was dropped, and what would do."""
    # Dumpable: only the other user refuses it.
    with _nobody_process(dumpable=True) as target:

        def work() -> str:
            with open("/proc/self/status") as f:
                caps = {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
            assert os.geteuid() == 0 and not int(caps["CapEff"], 16) >> CAP_SYS_PTRACE & 1
            return _open(target)()

        said = _as_root_without_cap_sys_ptrace(work)
        assert said == (
            f"--pid {target}: cannot read its memory: Permission denied: it runs as "
            "uid 65534 (nobody), this as uid 0 (root); this process is root but lacks "
            "CAP_SYS_PTRACE (root needs it too, for this); it is not in this process's "
            "bounding set (dropped by capsh --drop, setpriv --bounding-set, or a "
            "container's defaults): start it where CAP_SYS_PTRACE is kept, or run as "
            f"uid 65534 (nobody) (its user) ({_scope_said()})"
        )
        assert "run as root" not in said


def test_root_without_cap_sys_ptrace_under_setpriv_is_said_so() -> None:
    """The same through the tool a user would reach for: the scanner started
    under ``setpriv --bounding-set -sys_ptrace`` against a non-dumpable
    process of nobody's (not its own user either)."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv here")
    with _nobody_process() as target:
        script = (
            "import sys\n"
            "from zswapd.errors import ConfigError\n"
            "from zswapd.scanner import Detection, Scanner\n"
            "try:\n"
            f"    Scanner([{target}], 1.0, Detection())\n"
            "except ConfigError as exc:\n"
            "    print(exc)\n"
        )
        argv = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]
        got = subprocess.run(
            [*argv, sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        said = got.stdout.strip()
        assert said.startswith(f"--pid {target}: cannot read its memory: Permission denied: ")
        assert "it runs as uid 65534 (nobody), this as uid 0 (root); " in said
        assert "this process is root but lacks CAP_SYS_PTRACE" in said
        assert "run as root" not in said, said


def test_a_process_that_ended_is_said_to_have_ended_not_refused() -> None:
    """The open refused, then the process ended before the refusal was explained
    (its /proc entry gone): the line says it ended, names no rule nor module."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: no process of that pid now
    said = refusal(gone.pid)
    assert said == f"the process ended while it was being opened (no process {gone.pid} now)"
    assert "security module" not in said


def test_root_of_a_user_namespace_holding_cap_sys_ptrace_is_told_where_to_run(
    root_target: int,
) -> None:
    """Root of a new user namespace holds CAP_SYS_PTRACE there, and the kernel
    still refuses it a process of the namespace above: telling it to run as
    root or with CAP_SYS_PTRACE would send it in a circle, so the line names
    the namespace and where the shadow would have to run."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    root = str(Path(__file__).resolve().parents[2])
    script = (
        f"import sys; sys.path.insert(0, {root!r})\n"
        "from zswapd.errors import ConfigError\n"
        "from zswapd.scanner import Detection, Scanner\n"
        "try:\n"
        f"    Scanner([{root_target}], 1.0, Detection())\n"
        "    print('opened')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    got = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", script],
        capture_output=True,
        text=True,
    )
    if got.returncode != 0 and "unshare" in got.stderr:
        pytest.skip(f"no user namespaces here: {got.stderr.strip()}")
    said = got.stdout.strip()
    assert said.startswith(f"--pid {root_target}: cannot read its memory: Permission denied: ")
    assert "refused though this process holds CAP_SYS_PTRACE" in said
    assert "user namespace" in said and "run the shadow in the target's user namespace" in said
    assert "run as root" not in said and "or with CAP_SYS_PTRACE" not in said, said
