"""NBD under attack: the connection cap, the handshake deadline, back-pressure in the
option phase, open-file limits checked at start, and no NBD on TCP behind a token.

Real daemons, real sockets; the misbehaving clients are raw sockets (tests/zswapd/nbd_client.py).
"""

from __future__ import annotations

import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.zswapd import nbd_client
from tests.zswapd.daemon import start_daemon
from zswapd.nbd_protocol import REQUEST_MAGIC, Cmd, Opt
from zswapd.server import FD_MARGIN


def _rss(pid: int) -> int:
    """The process's resident set, bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _raw(sock: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    return s


def _refused_at_start(
    argv: list[str], preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``zswapd serve ARGV``, which must exit by itself (a daemon that starts is killed)."""
    cmd = [sys.executable, "-m", "zswapd.cli", "serve", "--http", "127.0.0.1:0", *argv]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec
    )
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the daemon started instead of refusing: {err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, "", err)


def test_nbd_connections_past_the_cap_are_closed(tmp_path: Path) -> None:
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--nbd", f"unix:{sock}", "--device", "d=1M", "--max-connections", "4")
    try:
        # Four clients in transmission: none is dropped for a newcomer.
        held = [nbd_client.open_device(sock, "d") for _ in range(4)]
        extra = _raw(sock)
        assert nbd_client.closed_by_peer(extra, 5), "a fifth connection was served"
        # The others are not disturbed, and HTTP still answers.
        assert nbd_client.request(held[0], Cmd.READ, 0, 4096) == bytes(4096)
        assert httpx.get(f"{d.url}/healthz").status_code == 200
        # A slot freed is a slot for the next client.
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:
            try:
                s = nbd_client.open_device(sock, "d")
                break
            except (ConnectionError, AssertionError):
                assert time.monotonic() < deadline, "no room after a client left"
                time.sleep(0.05)
        assert nbd_client.request(s, Cmd.READ, 0, 4096) == bytes(4096)
        for c in (*held, s, extra):
            c.close()
    finally:
        assert d.stop() == 0


def test_past_the_cap_a_connection_still_in_its_handshake_makes_room(tmp_path: Path) -> None:
    """Squatters that connect and never negotiate cannot lock real clients out."""
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--nbd", f"unix:{sock}", "--device", "d=1M", "--max-connections", "4")
    try:
        working = nbd_client.open_device(sock, "d")
        squatters = [_raw(sock) for _ in range(3)]
        time.sleep(0.2)  # accepted, in order
        newcomer = nbd_client.open_device(sock, "d")
        assert nbd_client.request(newcomer, Cmd.READ, 0, 4096) == bytes(4096)
        # The oldest squatter made room; the client in transmission was left alone.
        assert nbd_client.closed_by_peer(squatters[0], 5)
        assert nbd_client.request(working, Cmd.READ, 0, 4096) == bytes(4096)
        for c in (working, newcomer, *squatters):
            c.close()
    finally:
        assert d.stop() == 0


def test_a_client_not_in_transmission_is_dropped_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--nbd", f"unix:{sock}", "--device", "d=1M", "--handshake-timeout", "0.5")
    try:
        working = nbd_client.open_device(sock, "d")
        start, dropped = time.monotonic(), None  # before the server accepts the haggler
        haggler = nbd_client.connect(sock)  # options, but never GO
        silent = _raw(sock)  # connects and sends nothing
        while dropped is None and time.monotonic() - start < 5:
            try:  # an option every 0.1 s: active, but never into transmission
                haggler.sendall(nbd_client.option(Opt.LIST))
            except OSError:
                dropped = time.monotonic() - start
            time.sleep(0.1)
        assert dropped is not None and dropped >= 0.45, dropped
        assert nbd_client.closed_by_peer(silent, 3)
        # In transmission there is no deadline: an idle block device stays attached.
        assert nbd_client.request(working, Cmd.READ, 0, 4096) == bytes(4096)
        working.close()
    finally:
        assert d.stop() == 0


def test_an_option_phase_client_that_never_reads_stops_being_read(tmp_path: Path) -> None:
    sock = str(tmp_path / "nbd.sock")
    # 32 devices of 64-character names: a LIST reply is ~180 times its 16-byte request.
    names = [f"d{i:02d}".ljust(64, "x") for i in range(32)]
    devices = [a for n in names for a in ("--device", f"{n}=1M")]
    d = start_daemon("--nbd", f"unix:{sock}", "--handshake-timeout", "60", *devices)
    try:
        warm = nbd_client.connect(sock)
        warm.sendall(nbd_client.option(Opt.LIST))
        assert warm.recv(65536)
        warm.close()
        before = _rss(d.proc.pid)
        hog = nbd_client.connect(sock)
        hog.setblocking(False)
        burst = nbd_client.option(Opt.LIST) * 4096  # 64 KiB of requests
        sent, cap = 0, 4 << 20
        while sent < cap:
            _, writable, _ = select.select([], [hog], [], 1.0)
            if not writable:
                break  # the daemon stopped reading us: back-pressure
            try:
                sent += hog.send(burst)
            except BlockingIOError:
                continue
        grown = _rss(d.proc.pid) - before
        assert grown < 32 << 20, f"RSS grew by {grown >> 20} MiB for {sent >> 10} KiB sent"
        assert sent < cap, f"the daemon read {sent} bytes of requests whose replies sat unread"
        # Everyone else is served meanwhile.
        other = nbd_client.open_device(sock, names[0])
        assert nbd_client.request(other, Cmd.READ, 0, 4096) == bytes(4096)
        other.close()
        hog.close()
    finally:
        assert d.stop() == 0


def test_start_is_refused_when_the_connection_caps_do_not_fit_rlimit_nofile(
    tmp_path: Path,
) -> None:
    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    out = _refused_at_start([], low)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zswapd serve: "), out.stderr
    # HTTP, its lingering closes, a backing file for each of the 64 pools, the margin.
    assert f"need {1024 + 256 + 64 + FD_MARGIN} open files" in lines[0] and "allows 512" in lines[0]
    # Every frontend run counts: 100 connections fit for HTTP alone, not for three.
    sock, wire = str(tmp_path / "nbd.sock"), str(tmp_path / "wire.sock")
    argv = ["--max-connections", "100", "--unix-socket", wire, "--nbd", f"unix:{sock}"]
    out = _refused_at_start(argv, low)
    assert out.returncode == 2 and f"need {300 + 25 + 64 + FD_MARGIN} open files" in out.stderr, (
        out.stderr
    )


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    sock = str(tmp_path / "nbd.sock")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The daemon inherits a soft limit of 256, far under what 300 clients need.
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        d = start_daemon("--nbd", f"unix:{sock}", "--device", "d=1M")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3] == row.split()[4], row  # soft == hard
        clients = [nbd_client.connect(sock) for _ in range(300)]
        nbd_client.go(clients[-1], "d")
        assert nbd_client.request(clients[-1], Cmd.READ, 0, 4096) == bytes(4096)
        for c in clients:
            c.close()
    finally:
        assert d.stop() == 0


def test_nbd_on_tcp_with_a_token_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    out = _refused_at_start(
        ["--auth-token-file", str(token), "--nbd", "127.0.0.1:0", "--device", "d=1M"]
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--nbd on TCP" in lines[0] and "unix:" in lines[0], out.stderr
    # On a Unix socket (mode 0600) NBD and a token go together.
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--auth-token-file", str(token), "--nbd", f"unix:{sock}", "--device", "d=1M")
    try:
        s = nbd_client.open_device(sock, "d")
        assert nbd_client.request(s, Cmd.READ, 0, 4096) == bytes(4096)
        s.close()
    finally:
        assert d.stop() == 0


def _pattern(pages: int) -> bytes:
    """Pages that differ from each other (the page number repeated), quick to make."""
    return b"".join(i.to_bytes(4, "big") * 1024 for i in range(pages))


def test_large_reads_arrive_whole_and_in_order(tmp_path: Path) -> None:
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--nbd", f"unix:{sock}", "--device", "d=64M")
    try:
        data = _pattern(8192)  # 32 MiB
        s = nbd_client.open_device(sock, "d")
        nbd_client.request(s, Cmd.WRITE, 4096, len(data), data)
        # Unaligned, crossing every piece boundary, simple replies.
        got = nbd_client.request(s, Cmd.READ, 4096 + 100, len(data) - 200)
        assert got == data[100:-100]
        # Past the end: refused whole, before any byte is sent; the connection goes on.
        try:
            nbd_client.request(s, Cmd.READ, (64 << 20) - 4096, 8 << 20)
            raise AssertionError("a READ past the end was served")
        except OSError as exc:
            assert exc.errno == 22
        assert nbd_client.request(s, Cmd.READ, 4096, 4096) == data[:4096]
        s.close()
        if shutil.which("qemu-io"):  # structured replies, from a real client
            uri = f"nbd+unix:///d?socket={sock}"
            qio = ["qemu-io", "-f", "raw", uri, "-c", "write -P 0x5a 0 32M"]
            out = subprocess.run(
                [*qio, "-c", "read -P 0x5a 0 32M"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0 and "fail" not in out.stdout.lower(), out.stdout + out.stderr
    finally:
        assert d.stop() == 0


def test_clients_that_do_not_read_large_reads_hold_little(tmp_path: Path) -> None:
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--nbd", f"unix:{sock}", "--device", "d=64M")
    try:
        s = nbd_client.open_device(sock, "d")
        nbd_client.request(s, Cmd.WRITE, 0, 32 << 20, _pattern(8192))
        nbd_client.request(s, Cmd.READ, 0, 32 << 20)  # warm: one large read, read
        s.close()
        time.sleep(0.5)
        before = _rss(d.proc.pid)
        hogs = [nbd_client.open_device(sock, "d") for _ in range(4)]
        for h in hogs:  # 32 MiB asked for, and never read
            h.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.READ, 1, 0, 32 << 20))
        time.sleep(1.5)
        grown = _rss(d.proc.pid) - before
        assert grown < 24 << 20, f"RSS grew by {grown >> 20} MiB for 4 unread 32 MiB reads"
        other = nbd_client.open_device(sock, "d")
        assert nbd_client.request(other, Cmd.READ, 4096, 4096) == _pattern(2)[4096:]
        for c in (*hogs, other):
            c.close()
    finally:
        assert d.stop() == 0
