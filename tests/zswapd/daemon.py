"""Start a real ``zswapd serve`` process for tests, and stop it."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[2]


def _checkout_on_path() -> dict[str, str]:
    """PYTHONPATH with this checkout first, so any cwd runs this checkout's zswapd."""
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    url: str
    log: list[str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        rest = self.proc.stderr.read().decode(errors="replace")
        self.log += rest.splitlines()
        return self.proc.returncode


def start_daemon(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> Daemon:
    """``zswapd serve ARGS`` (default: loopback, a free port); waits until it serves.

    ``timeout`` only stops a daemon that hangs: on a loaded machine (the suite runs
    in parallel) importing FastAPI alone has taken 30 s.

    ``cwd`` is where relative paths in ARGS (sockets, backing files) land.
    """
    argv = [sys.executable, "-m", "zswapd.cli", "serve", *args]
    if not any(a.startswith("--http") for a in args):
        argv += ["--http", "127.0.0.1:0"]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **_checkout_on_path(), **(env or {})},
        cwd=cwd,
    )
    assert proc.stderr is not None
    log: list[str] = []
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                log.append(text)
                m = re.search(r"serving HTTP on (\S+)", text)
                if m:
                    return Daemon(proc, m.group(1), log)
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"zswapd serve did not start: {log} {buf!r}")


@contextmanager
def wire_daemon(directory: Path, *args: str) -> Iterator[tuple[Daemon, str]]:
    """``zswapd serve --unix-socket DIRECTORY/w.sock ARGS`` for a ``with`` block:
    the daemon and the socket's path.  Stopped at the end, it must exit 0."""
    path = str(directory / "w.sock")
    d = start_daemon("--unix-socket", path, *args)
    try:
        yield d, path
    finally:
        code = d.stop()
    assert code == 0, d.log


def run_cli(
    *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``zswapd ARGS``; ``cwd`` for commands that write where they run (push's handles file).

    The checkout is on PYTHONPATH, so any cwd runs this checkout's zswapd.
    """
    return subprocess.run(
        [sys.executable, "-m", "zswapd.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or CHECKOUT,
        env={**os.environ, **_checkout_on_path()},
    )


def run_cli_bytes(
    *args: str, cwd: Path | None = None, **io: Any
) -> subprocess.CompletedProcess[bytes]:
    """``zswapd ARGS`` as :func:`run_cli`, its input and output the caller's
    (``io``: subprocess.run's input, stdin, stdout, stderr or capture_output), in bytes."""
    return subprocess.run(
        [sys.executable, "-m", "zswapd.cli", *args],
        timeout=60,
        cwd=cwd or CHECKOUT,
        env={**os.environ, **_checkout_on_path()},
        **io,
    )


def one_line_failure(
    result: subprocess.CompletedProcess[str], status: int | None, *words: str
) -> None:
    """A command's failure as every CLI failure must be: exit ``status`` (None:
    any but 0), one line on stderr naming each of ``words``, no traceback."""
    if status is None:
        assert result.returncode != 0, result
    else:
        assert result.returncode == status, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def token_file(directory: Path, token: str) -> str:
    """A bearer token file as an operator writes one (a trailing newline, mode
    0600) in ``directory``: its path, for ``--auth-token-file``."""
    path = directory / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)
