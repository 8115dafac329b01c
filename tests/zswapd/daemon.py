"""Start a real ``zswapd serve`` process for tests, and stop it."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    *args: str, env: dict[str, str] | None = None, timeout: float = 30, cwd: Path | None = None
) -> Daemon:
    """``zswapd serve ARGS`` (default: loopback, a free port); waits until it serves.

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
