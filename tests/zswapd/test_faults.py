"""Faults: clients that vanish mid-body, send slowly, or fill a pool together;
a daemon bound beyond loopback without a token says so loudly."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.zswapd.daemon import Daemon, start_daemon, wire_daemon
from tests.zswapd.helpers import random_page, text_page
from zswapd.client import Client
from zswapd.errors import PoolLimitError
from zswapd.protocol import FrameParser, Op, encode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    with wire_daemon(tmp_path_factory.mktemp("f"), "--compressor", "lz4") as served:
        yield served


def _tcp(d: Daemon) -> socket.socket:
    host, port = d.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_http_client_vanishing_mid_body_changes_nothing(daemon: tuple[Daemon, str]) -> None:
    d, _ = daemon
    with Client(d.url) as c:
        before = c.stats()["mm_stat"]
    for sent in (0, 100, 4096 + 7):
        s = _tcp(d)
        s.sendall(
            b"POST /v1/pools/default/pages HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 8192\r\n\r\n" + b"z" * sent
        )
        s.close()
    time.sleep(0.3)
    with Client(d.url) as c:
        assert c.stats()["mm_stat"] == before
        assert c.load(c.store([text_page(1)])) == [text_page(1)]


def test_slow_senders_are_served(daemon: tuple[Daemon, str]) -> None:
    d, wire = daemon
    # A wire frame dribbled a few bytes at a time.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(wire)
    data = encode(Op.HELLO, 1, struct.pack("<HH", 1, 1)) + encode(Op.STORE, 2, text_page(3))
    for i in range(0, len(data), 512):
        s.sendall(data[i : i + 512])
        time.sleep(0.005)
    parser = FrameParser(1 << 20, responses=True)
    frames = []
    while len(frames) < 2:
        n = s.recv_into(parser.get_buffer())
        assert n
        parser.buffer_updated(n)
        while (f := parser.next_frame()) is not None:
            frames.append(f)
    assert [f.status for f in frames] == [0, 0]
    s.close()
    # An HTTP body dribbled likewise, while another client is served meanwhile.
    h = _tcp(d)
    body = text_page(4)
    h.sendall(
        b"POST /v1/pools/default/pages HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n"
    )
    for i in range(0, 4096, 1024):
        h.sendall(body[i : i + 1024])
        with Client(d.url) as other:
            assert other.load(other.store([text_page(i)])) == [text_page(i)]
        time.sleep(0.01)
    reply = h.recv(4096)
    assert reply.startswith(b"HTTP/1.1 201")
    h.close()


def test_a_full_pool_under_load_refuses_cleanly(daemon: tuple[Daemon, str]) -> None:
    d, wire = daemon
    with Client(d.url) as c:
        c.create_pool("tight", compressor="lz4", limit_bytes=200 * 4096)
    acked: dict[int, bytes] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(n: int, url: str) -> None:
        try:
            with Client(url) as c:
                for i in range(60):
                    batch = [random_page(n * 1000 + i), text_page(n * 1000 + i)]
                    try:
                        handles = c.store(batch, pool="tight")
                    except PoolLimitError:
                        continue
                    with lock:
                        acked.update(zip(handles, batch, strict=True))
        except BaseException as exc:  # reported below
            errors.append(exc)

    urls = [d.url, f"unix://{wire}"] * 3
    threads = [threading.Thread(target=writer, args=(n, u)) for n, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Client(d.url) as c:
        st = c.stats("tight")
        assert st["mm_stat"]["mem_used_total"] <= 200 * 4096
        assert st["zswap"]["pool_limit_hit"] > 0
        assert st["zswap"]["stored_pages"] == len(acked)
        handles = list(acked)
        assert c.load(handles, pool="tight") == [acked[h] for h in handles]


def test_binding_beyond_loopback_without_a_token_warns(tmp_path: Path) -> None:
    d = start_daemon("--http", "0.0.0.0:0")
    try:
        # Connect on loopback only; the point is what the daemon said.
        time.sleep(0.2)
    finally:
        d.stop()
    assert any("WITHOUT a token" in line for line in d.log)
    quiet = start_daemon()
    quiet.stop()
    assert not any("WITHOUT a token" in line for line in quiet.log)
