"""deploy/systemd/zswapd.service: its command line is zswapd's own, serves where the
README says, keeps state in the StateDirectory, and lets its group, and only its
group, reach the sockets; run for real with systemd's paths moved to a temporary
directory and its user and group played by setpriv."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from zswapd.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "zswapd.service"
README = ROOT / "README.md"

# Stand-ins for the dynamic user, the static group and two login users, from the
# range systemd keeps for dynamic users (no account of this machine is there).
SERVICE_UID, GROUP_GID, MEMBER_UID, OUTSIDER_UID = 61999, 61998, 61997, 61996


def _settings() -> dict[str, list[str]]:
    """The unit's settings by name (a name set twice keeps both), continuations joined."""
    text = re.sub(r"\\\n\s*", " ", UNIT.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _one(settings: dict[str, list[str]], key: str) -> str:
    (value,) = settings[key]
    return value


def _exec_start() -> list[str]:
    argv = shlex.split(_one(_settings(), "ExecStart"))
    assert argv[:3] == ["/usr/bin/env", "zswapd", "serve"], argv
    return argv[2:]


def test_the_units_command_line_is_zswapds_and_serves_where_the_readme_says() -> None:
    settings = _settings()
    args = build_parser().parse_args(_exec_start())
    runtime = "/run/" + _one(settings, "RuntimeDirectory")
    assert args.state_dir == "/var/lib/" + _one(settings, "StateDirectory")
    assert args.http == f"unix:{runtime}/http.sock"
    assert args.unix_socket == f"{runtime}/zswapd.sock"
    readme = README.read_text()
    assert f"http+unix://{runtime}/http.sock" in readme
    assert f"unix://{runtime}/zswapd.sock" in readme
    # Metrics alone on loopback TCP, where deploy/prometheus scrapes.
    host, port = args.metrics.rsplit(":", 1)
    assert host == "127.0.0.1"
    # Not the CLI's default address: `zswapd stats` there would find metrics, not the API.
    assert port != "7415"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]


def test_the_units_group_is_the_one_the_readme_has_users_join() -> None:
    settings = _settings()
    args = build_parser().parse_args(_exec_start())
    group = _one(settings, "Group")
    assert _one(settings, "DynamicUser") == "yes"
    # systemd refuses a dynamic user named like an existing static group.
    assert _one(settings, "User") != group
    assert args.socket_mode == 0o660
    assert _one(settings, "RuntimeDirectoryMode") == "0750"
    assert _one(settings, "StateDirectoryMode") == "0700"
    readme = README.read_text()
    assert f"groupadd --system {group}" in readme
    assert f"usermod -aG {group} " in readme


def test_the_protect_home_comment_says_what_it_does() -> None:
    """systemd.exec(5): "yes" makes /home, /root and /run/user inaccessible and empty."""
    text = UNIT.read_text()
    comment = re.search(r"((?:^#.*\n)+)ProtectHome=(\S+)", text, re.MULTILINE)
    assert comment is not None
    assert comment.group(2) == "yes"
    words = " ".join(comment.group(1).split())
    assert "/home, /root and /run/user" in words and "inaccessible" in words


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as(uid: int, *, in_group: bool) -> list[str]:
    """A command prefix running as ``uid``, a member of the service's group or not."""
    groups = ["--groups", str(GROUP_GID)] if in_group else ["--clear-groups"]
    return ["setpriv", "--reuid", str(uid), "--regid", str(uid), *groups, "--"]


@contextlib.contextmanager
def _systemd_like(tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, int]]:
    """The unit's ExecStart with /run and /var/lib under ``tmp``, the directories made
    as systemd makes them, run as the service's user and group; yields the process,
    the runtime and state directories and the metrics port."""
    settings = _settings()
    runtime = tmp / "run" / _one(settings, "RuntimeDirectory")
    state = tmp / "lib" / _one(settings, "StateDirectory")
    port = _free_port()
    for directory, mode in (
        (runtime, _one(settings, "RuntimeDirectoryMode")),
        (state, _one(settings, "StateDirectoryMode")),
    ):
        directory.parent.mkdir(mode=0o755)
        directory.mkdir()
        os.chown(directory, SERVICE_UID, GROUP_GID)
        directory.chmod(int(mode, 8))
    argv = [
        a.replace("/run/", f"{tmp}/run/").replace("/var/lib/", f"{tmp}/lib/") for a in _exec_start()
    ]
    argv[argv.index("--metrics") + 1] = f"127.0.0.1:{port}"
    # The interpreter may live where the service's user cannot look (/root/.pyenv):
    # reading is all the capability lets it do; sockets and files are its uid's.
    proc = subprocess.Popen(
        [
            "setpriv",
            "--reuid",
            str(SERVICE_UID),
            "--regid",
            str(GROUP_GID),
            "--clear-groups",
            "--inh-caps",
            "+dac_read_search",
            "--ambient-caps",
            "+dac_read_search",
            "--",
            sys.executable,
            "-m",
            "zswapd.cli",
            *argv,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        log = b""
        deadline = time.monotonic() + 120  # a hang, not a slow import on a loaded machine
        while b"serving HTTP on" not in log:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the unit's command line did not start: {log.decode()}")
            if select.select([proc.stderr], [], [], 0.2)[0]:
                log += os.read(proc.stderr.fileno(), 4096)
        yield proc, runtime, state, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _curl_health(uid: int, sock: Path, *, in_group: bool) -> subprocess.CompletedProcess[str]:
    # curl, not this interpreter: nothing but the uid and groups decides.
    return subprocess.run(
        [
            *_as(uid, in_group=in_group),
            "curl",
            "-sS",
            "--unix-socket",
            str(sock),
            "http://x/healthz",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _connect(uid: int, sock: Path, *, in_group: bool) -> subprocess.CompletedProcess[str]:
    code = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    return subprocess.run(
        [*_as(uid, in_group=in_group), "/usr/bin/python3", "-c", code, str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_units_command_line_runs_and_lets_only_its_group_in() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, as systemd, to run the daemon as another user")
    for tool in ("setpriv", "curl", "/usr/bin/python3"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install util-linux curl python3)")
    # In /tmp itself: pytest's own temporary directory (or $TMPDIR) may be one that
    # only root can enter, and the other users must reach the sockets.
    tmp = Path(tempfile.mkdtemp(prefix="zswapd-unit-", dir="/tmp"))
    try:
        tmp.chmod(0o755)
        with _systemd_like(tmp) as (proc, runtime, state, port):
            http_sock, wire_sock = runtime / "http.sock", runtime / "zswapd.sock"
            for sock in (http_sock, wire_sock):
                st = sock.stat()
                assert stat.S_IMODE(st.st_mode) == 0o660
                assert (st.st_uid, st.st_gid) == (SERVICE_UID, GROUP_GID)
            member = _curl_health(MEMBER_UID, http_sock, in_group=True)
            assert member.returncode == 0 and '"ok"' in member.stdout, member.stderr
            assert _connect(MEMBER_UID, wire_sock, in_group=True).returncode == 0
            outsider = _curl_health(OUTSIDER_UID, http_sock, in_group=False)
            assert outsider.returncode != 0 and '"ok"' not in outsider.stdout
            refused = _connect(OUTSIDER_UID, wire_sock, in_group=False)
            assert refused.returncode != 0 and "Permission denied" in refused.stderr
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert 'zswapd_pool_size_bytes{pool="default"}' in metrics
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        # Pools saved into the StateDirectory, readable by the service alone.
        saved = state / "default.zswapd"
        assert saved.stat().st_uid == SERVICE_UID
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    finally:
        shutil.rmtree(tmp)
