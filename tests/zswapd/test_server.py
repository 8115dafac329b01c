"""Listening sockets and listen addresses."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from tests.zswapd.daemon import run_cli
from zswapd.errors import ConfigError
from zswapd.server import Listener, bind, parse_listen


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:7415") == Listener("127.0.0.1", 7415)
    assert parse_listen("[::1]:80") == Listener("::1", 80)
    assert parse_listen("9000") == Listener("127.0.0.1", 9000)
    assert parse_listen("unix:/run/z.sock") == Listener(path="/run/z.sock")
    for bad in ("unix:", "host:port", "1.2.3.4:99999"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    assert Listener("127.0.0.1", 1).loopback and Listener("::1", 1).loopback
    assert not Listener("0.0.0.0", 1).loopback and not Listener("10.1.2.3", 1).loopback


def test_tcp_socket_says_tcp_so_asyncio_disables_nagle() -> None:
    # With proto 0 asyncio leaves Nagle on for accepted connections, and every
    # keep-alive response written in two parts waited 40 ms for a delayed ACK.
    sock = bind(Listener("127.0.0.1", 0))
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_unix_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "s"
    sock = bind(Listener(path=str(path)))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        sock.close()


def test_every_limit_has_an_environment_variable() -> None:
    from zswapd.settings import load_settings

    env = {
        "ZSWAPD_MEMORY_LIMIT": "8M",
        "ZSWAPD_MAX_POOLS": "7",
        "ZSWAPD_MAX_CONNECTIONS": "99",
        "ZSWAPD_HANDSHAKE_TIMEOUT": "2.5",
        "ZSWAPD_HEADER_TIMEOUT": "3",
        "ZSWAPD_MAX_STALE_HANDLES": "5",
        "ZSWAPD_STATE_DIR": "/var/lib/zswapd",
    }
    s = load_settings(environ=env)
    assert (s.memory_limit, s.max_pools, s.max_connections) == ("8M", 7, 99)
    assert (s.handshake_timeout, s.header_timeout, s.max_stale_handles) == (2.5, 3.0, 5)
    assert s.state_dir == "/var/lib/zswapd"
    # Flags still win over the environment.
    assert load_settings(environ=env, flags={"max_pools": 3}).max_pools == 3


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--snapshot-interval", "nan"),
        ("--snapshot-interval", "inf"),
        ("--snapshot-interval", "-1"),
        ("--handshake-timeout", "0"),
        ("--header-timeout", "nan"),
    ],
)
def test_nonsense_intervals_are_refused_at_start(flag: str, value: str) -> None:
    # NaN compares false with everything: `nan` was accepted and never snapshotted.
    out = run_cli("serve", "--http", "127.0.0.1:0", flag, value, timeout=30)
    assert out.returncode == 2
    assert f"{flag} must be a finite number of seconds" in out.stderr
