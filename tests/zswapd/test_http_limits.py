"""HTTP under attack: slow heads and bodies, more connections than the cap,
forged handles over keep-alive, duplicate Authorization headers.  Each against
a real daemon over real sockets."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.zswapd.daemon import Daemon, start_daemon, token_file
from tests.zswapd.helpers import text_page
from zswapd.client import Client

SLOW_CONNECTIONS = 1030


@pytest.fixture(scope="module")
def quick() -> Iterator[Daemon]:
    """A daemon with a 1 s header timeout, a cap of 8 connections and of 5 stale handles."""
    d = start_daemon("--header-timeout", "1", "--max-connections", "8", "--max-stale-handles", "5")
    yield d
    assert d.stop() == 0
    # Clients cut off mid-body are routine here, not errors worth a traceback each.
    assert not [line for line in d.log if "Traceback" in line], d.log


def _connect(d: Daemon) -> socket.socket:
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _start_bodies(d: Daemon, n: int) -> list[socket.socket]:
    """``n`` connections each two bytes into a 4096-byte body, left there."""
    out = []
    for _ in range(n):
        s = _connect(d)
        s.sendall(
            b"POST /v1/pools/default/pages HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\nxx"
        )
        out.append(s)
    return out


def _read_to_eof(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _json_body(reply: bytes) -> dict[str, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    parsed: dict[str, str] = json.loads(body)
    return parsed


def _closed_within(s: socket.socket, trickle: bytes, every: float) -> tuple[float, bytes]:
    """Send ``trickle`` a byte every ``every`` seconds until the daemon closes
    (failing after 5 s); the seconds that took and what it answered."""
    s.settimeout(every)
    start = time.monotonic()
    reply = b""
    for byte in trickle:
        if time.monotonic() - start > 5:
            pytest.fail("still open after 5 s")
        try:
            s.sendall(bytes([byte]))
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        reply += chunk
        if not chunk:
            break
    else:
        pytest.fail(f"still open after {time.monotonic() - start:.1f} s")
    s.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        reply += _read_to_eof(s)
    return time.monotonic() - start, reply


def test_slowloris_does_not_lock_out_a_well_behaved_client() -> None:
    # 1,030 connections (more than the default cap of 1,024) each sending a byte
    # of a request head a second; a normal client must still be served.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SLOW_CONNECTIONS + 200
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * want), hard))
    d = start_daemon()  # defaults: --header-timeout 10, --max-connections 1024
    slow: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(SLOW_CONNECTIONS):
            s = _connect(d)
            s.setblocking(False)
            slow.append(s)
        head = b"GET /v1/pools HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100

        def trickle() -> None:
            for i in range(len(head)):
                for s in slow:
                    # A connection the daemon closed fails: that is the point.
                    with contextlib.suppress(OSError):
                        s.send(head[i : i + 1])
                if stop.wait(1.0):
                    return

        t = threading.Thread(target=trickle)
        t.start()
        time.sleep(1.5)  # a byte or two each, the cap passed
        start = time.monotonic()
        served = None
        while time.monotonic() - start < 15:
            try:
                with Client(d.url) as c:
                    handles = c.store([text_page(1)])
                    assert c.load(handles) == [text_page(1)]
                    served = time.monotonic() - start
                    break
            except Exception:  # refused or reset: try again until 15 s
                time.sleep(0.2)
        stop.set()
        t.join()
        assert served is not None, "no request served within 15 s"
        assert served < 15
    finally:
        stop.set()
        for s in slow:
            s.close()
        assert d.stop() == 0


def test_a_slow_head_is_closed_after_the_header_timeout(quick: Daemon) -> None:
    # A bare connection that never sends: closed, silently.
    bare = _connect(quick)
    bare.settimeout(5)
    start = time.monotonic()
    assert _read_to_eof(bare) == b""
    assert 0.8 < time.monotonic() - start < 3
    bare.close()
    # A head trickled a byte every 0.1 s: 408, JSON, closed at about 1 s.
    s = _connect(quick)
    took, reply = _closed_within(s, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100, 0.1)
    s.close()
    assert 0.8 < took < 3
    assert reply.startswith(b"HTTP/1.1 408")
    assert _json_body(reply)["error"] == "request_timeout"
    # Keep-alive requests with pauses shorter than the timeout are unaffected.
    with httpx.Client(base_url=quick.url) as h:
        for _ in range(3):
            assert h.get("/healthz").status_code == 200
            time.sleep(0.4)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_trickled_body_is_closed(quick: Daemon, chunked: bool) -> None:
    with Client(quick.url) as c:
        before = c.stats()["mm_stat"]
    s = _connect(quick)
    head = b"POST /v1/pools/default/pages HTTP/1.1\r\nHost: x\r\n"
    head += b"Content-Type: application/octet-stream\r\n"
    if chunked:
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        body = b"".join(b"1\r\n" + bytes([b]) + b"\r\n" for b in text_page(2))
    else:
        s.sendall(head + b"Content-Length: 4096\r\n\r\n")
        body = text_page(2)
    # A byte every 0.05 s is 20 bytes/s; the rule allows 1 s + 4096 / 65536 s.
    took, reply = _closed_within(s, body, 0.05)
    s.close()
    assert 0.8 < took < 3
    assert reply.startswith(b"HTTP/1.1 408")
    assert _json_body(reply)["error"] == "request_timeout"
    with Client(quick.url) as c:
        assert c.stats()["mm_stat"] == before


def test_a_large_store_at_a_modest_rate_is_served(quick: Daemon) -> None:
    # 1024 pages (4 MiB) over about 1.6 s: past the 1 s header timeout, well
    # within 1 s + 4 MiB / 64 KiB/s.
    pages = [text_page(i) for i in range(1024)]
    body = b"".join(pages)
    s = _connect(quick)
    s.sendall(
        b"POST /v1/pools/default/pages HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    step = len(body) // 32
    for i in range(0, len(body), step):
        s.sendall(body[i : i + step])
        time.sleep(0.05)
    s.settimeout(10)
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"]}"):
        chunk = s.recv(1 << 20)
        assert chunk, reply[:200]
        reply += chunk
    s.close()
    assert reply.startswith(b"HTTP/1.1 201")
    handles = json.loads(reply.partition(b"\r\n\r\n")[2])["handles"]
    assert len(handles) == 1024
    with Client(quick.url) as c:
        assert c.load(handles[:64]) == pages[:64]
        c.free(handles)


def test_past_the_cap_idle_connections_make_room(quick: Daemon) -> None:
    # Eight connections waiting for a head (the cap): a ninth is served, and
    # the longest-waiting one is closed to make room.
    idle = [_connect(quick) for _ in range(8)]
    time.sleep(0.1)
    with httpx.Client(base_url=quick.url) as h:
        assert h.get("/healthz").status_code == 200
    idle[0].settimeout(0.5)
    assert idle[0].recv(100) == b""  # the oldest: closed
    for s in idle[1:]:
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(100)  # the others: still open, nothing said
    for s in idle:
        s.close()


def test_past_the_cap_with_every_connection_busy_is_json_503(quick: Daemon) -> None:
    # Eight connections each in the middle of a body (busy, not idle): the
    # ninth request is refused with the JSON body the OpenAPI document promises.
    busy = _start_bodies(quick, 8)
    time.sleep(0.1)
    try:
        with httpx.Client(base_url=quick.url) as h:
            r = h.get("/healthz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json"
        assert r.headers["connection"] == "close"
        assert r.json()["error"] == "too_many_connections"
        assert "8 connections" in r.json()["detail"]
    finally:
        for s in busy:
            s.close()
    time.sleep(0.2)
    with httpx.Client(base_url=quick.url) as h:
        assert h.get("/healthz").status_code == 200
        # The document promises these bodies, on every route.
        store = h.get("/openapi.json").json()["paths"]["/v1/pools/{pool}/pages"]["post"]
        for status in ("408", "503"):
            schema = store["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}


def test_past_the_cap_slow_bodies_make_room() -> None:
    # Eight bodies trickled well below the minimum rate, within a long grace:
    # a ninth client is served, and the oldest slow body is cut off with 408.
    d = start_daemon("--header-timeout", "30", "--max-connections", "8")
    slow: list[socket.socket] = []
    try:
        slow = _start_bodies(d, 8)
        time.sleep(1.2)  # past the one-second window a rate is judged over
        with httpx.Client(base_url=d.url) as h:
            assert h.get("/healthz").status_code == 200
        slow[0].settimeout(5)
        reply = _read_to_eof(slow[0])
        assert reply.startswith(b"HTTP/1.1 408")
        assert _json_body(reply)["error"] == "request_timeout"
    finally:
        for s in slow:
            s.close()
        assert d.stop() == 0


def test_stale_handles_close_a_keep_alive_connection(quick: Daemon) -> None:
    with Client(quick.url) as c:
        handles = c.store([text_page(3)])
        c.free(handles)
    stale = handles[0]

    def port(r: httpx.Response) -> int:
        stream = r.extensions["network_stream"]
        addr: tuple[str, int] = stream.get_extra_info("client_addr")
        return addr[1]

    with httpx.Client(base_url=quick.url) as h:
        ports = set()
        # Five (--max-stale-handles) stale attempts, single and batched: 404, kept open.
        for i in range(5):
            if i % 2:
                r = h.post("/v1/pools/default/pages:load", json={"handles": [stale]})
            else:
                r = h.get(f"/v1/pools/default/pages/{stale + i}")
            assert r.status_code == 404 and r.json()["error"] == "stale_handle"
            assert r.headers.get("connection") != "close"
            ports.add(port(r))
        assert len(ports) == 1  # one keep-alive connection throughout
        # The sixth: answered, then closed.
        r = h.delete(f"/v1/pools/default/pages/{stale}")
        assert r.status_code == 404 and r.headers["connection"] == "close"
        # The next request needs a new connection; it is served as usual.
        r = h.get("/healthz")
        assert r.status_code == 200
        assert port(r) not in ports


def test_duplicate_authorization_headers_are_refused(tmp_path: Path) -> None:
    d = start_daemon("--auth-token-file", token_file(tmp_path, "s3cret"))
    try:
        with httpx.Client(base_url=d.url) as h:
            good = ("authorization", "Bearer s3cret")
            assert h.get("/v1/pools", headers=[good]).status_code == 200
            for pair in ([good, good], [("authorization", "Bearer nope"), good]):
                r = h.get("/v1/pools", headers=pair)
                assert r.status_code == 400
                assert r.json() == {
                    "error": "bad_request",
                    "detail": "more than one Authorization header",
                }
    finally:
        assert d.stop() == 0


def test_a_client_that_never_reads_its_answer_is_cut_off() -> None:
    # A 16 MiB answer (4096 pages) to a client with a small receive window that
    # reads nothing: after a header timeout the daemon gives up on it, rather
    # than hold the connection and the unsent answer for ever.
    d = start_daemon("--header-timeout", "1", "--max-pages-per-request", "4096")
    try:
        pages = [text_page(i) for i in range(4096)]
        with Client(d.url) as c:
            handles = c.store(pages)
        body = json.dumps({"handles": handles}).encode()
        host, port = d.url.removeprefix("http://").rsplit(":", 1)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.connect((host, int(port)))
        s.sendall(
            b"POST /v1/pools/default/pages:load HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(3)  # read nothing
        s.settimeout(3)
        got = 0
        ended = False
        try:
            while chunk := s.recv(1 << 20):
                got += len(chunk)
            ended = True
        except ConnectionResetError:
            ended = True
        except TimeoutError:
            pass
        s.close()
        assert ended, f"still open after {got} bytes"
        assert got < 4096 * 4096
        with httpx.Client(base_url=d.url) as h:
            assert h.get("/healthz").status_code == 200
    finally:
        assert d.stop() == 0


def _rss(pid: int) -> int:
    """The process's resident set, bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _send_until_closed(s: socket.socket, chunk: bytes, limit: int) -> int:
    """Send ``chunk`` over and over until the daemon stops taking it or
    ``limit`` bytes are sent; the bytes sent."""
    sent = 0
    s.settimeout(2)
    try:
        while sent < limit:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # closed by the daemon (reset, or its buffers full and then closed)
    return sent


def test_an_endless_request_head_is_refused_with_431(tmp_path: Path) -> None:
    # Header lines without end, before any token is checked: cut off at the
    # head cap with a JSON 431, and the daemon's memory barely moves.
    d = start_daemon("--auth-token-file", token_file(tmp_path, "secret"))
    try:
        before = _rss(d.proc.pid)
        s = _connect(d)
        s.sendall(b"GET /v1/pools HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        # 8 MiB, 128 times the cap: the daemon answers at the cap and then
        # discards the rest (without parsing or keeping it) for a moment.
        _send_until_closed(s, b"X-a: b\r\n" * 1024, 8 << 20)
        s.settimeout(5)
        reply = _read_to_eof(s)
        s.close()
        assert time.monotonic() - start < 5  # not the 10 s header timeout
        assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
        assert _json_body(reply)["error"] == "header_too_large"
        assert _rss(d.proc.pid) - before < 4 << 20
        with httpx.Client(base_url=d.url) as h:
            # Normal heads, and one just under the cap, are unaffected.
            auth = {"Authorization": "Bearer secret"}
            assert h.get("/v1/pools", headers=auth).status_code == 200
            big = {f"x-pad-{i}": "v" * 1000 for i in range(60)}
            assert h.get("/v1/pools", headers=auth | big).status_code == 200
    finally:
        assert d.stop() == 0


def test_an_endless_body_after_an_early_refusal_is_closed(tmp_path: Path) -> None:
    # Eight endless chunked bodies at a proper rate to a route that refuses at
    # once (401, no token) on a cap of eight connections: each is closed after
    # its answer, and a legitimate client is served.
    d = start_daemon("--auth-token-file", token_file(tmp_path, "secret"), "--max-connections", "8")
    stop = threading.Event()
    replies: list[bytes] = []

    def endless() -> None:
        s = _connect(d)
        s.sendall(
            b"POST /v1/pools/default/pages HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"2000\r\n" + b"a" * 0x2000 + b"\r\n"
        try:
            while not stop.is_set():
                s.sendall(chunk)  # 8 KiB every 0.1 s: above the minimum rate
                time.sleep(0.1)
        except OSError:
            pass
        try:
            s.settimeout(2)
            replies.append(_read_to_eof(s))
        except OSError:
            replies.append(b"reset")
        s.close()

    attackers = [threading.Thread(target=endless) for _ in range(8)]
    try:
        for t in attackers:
            t.start()
        time.sleep(1.5)
        start = time.monotonic()
        with httpx.Client(base_url=d.url, timeout=5) as h:
            r = h.get("/v1/pools", headers={"Authorization": "Bearer secret"})
        assert r.status_code == 200, r.text
        assert time.monotonic() - start < 3
        for t in attackers:
            t.join(5)  # each ends on its own: the daemon closed its connection
        assert not [t for t in attackers if t.is_alive()]
        assert len(replies) == 8
        assert all(r.startswith(b"HTTP/1.1 401") for r in replies), replies
    finally:
        stop.set()
        for t in attackers:
            t.join(5)
        assert d.stop() == 0
