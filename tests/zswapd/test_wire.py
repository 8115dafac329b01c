"""The wire protocol end to end: a real daemon on a Unix socket, raw frames and
the clients; each malformed input gets its error while other connections go on."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.zswapd.daemon import Daemon, run_cli, wire_daemon
from tests.zswapd.helpers import random_page, text_page
from tests.zswapd.test_exhaustion import rss
from zswapd.client import Client
from zswapd.errors import PageSizeError, StaleHandleError, UnknownPoolError, ZswapdError
from zswapd.protocol import HEADER, MAGIC, RESPONSE, Frame, FrameParser, Op, encode
from zswapd.wire_client import AsyncWireClient, WireClient


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    with wire_daemon(tmp_path_factory.mktemp("wire"), "--max-pages-per-request", "64") as served:
        yield served
    assert not os.path.exists(served[1])  # removed on shutdown


class Raw:
    """A bare socket speaking frames, for tests of the server's edges."""

    def __init__(self, path: str, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.parser = FrameParser(1 << 23, responses=True)
        if hello:
            reply = self.call(Op.HELLO, 1, struct.pack("<HH", 1, 1))
            assert reply.status == 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Frame | None:
        """The next frame, or None if the server closed the connection."""
        while (f := self.parser.next_frame()) is None:
            n = self.sock.recv_into(self.parser.get_buffer())
            if n == 0:
                return None
            self.parser.buffer_updated(n)
        return f

    def call(self, op: int, rid: int, payload: bytes = b"") -> Frame:
        self.send(encode(op, rid, payload))
        f = self.read()
        assert f is not None
        return f

    def closed(self) -> bool:
        return self.read() is None


def test_socket_is_private(wire: tuple[Daemon, str]) -> None:
    assert stat.S_IMODE(os.stat(wire[1]).st_mode) == 0o600


def test_process_memory_round_trips(wire: tuple[Daemon, str], process_pages: list[bytes]) -> None:
    pages = process_pages[:2000]
    with Client(f"unix://{wire[1]}") as c:
        handles = c.store(pages)  # 32 requests of 64 pages, pipelined
        assert len(handles) == len(pages)
        assert c.load(handles) == pages
        assert c.stats()["mm_stat"]["orig_data_size"] >= 4096 * len(pages)
        c.free(handles)
        with pytest.raises(StaleHandleError):
            c.load(handles[:1])


def test_pipelined_requests_are_matched_by_id(wire: tuple[Daemon, str]) -> None:
    raw = Raw(wire[1])
    pages = {rid: text_page(rid) for rid in range(100, 140)}
    for rid, page in pages.items():  # all sent before any answer is read
        raw.send(encode(Op.STORE, rid, page))
    handles = {}
    for _ in pages:
        f = raw.read()
        assert f is not None and f.status == 0 and f.op == Op.STORE | RESPONSE
        (handles[f.request_id],) = struct.unpack("<Q", f.payload)
    assert set(handles) == set(pages)
    order = list(reversed(list(handles)))
    for rid in order:
        raw.send(encode(Op.LOAD, rid + 1000, struct.pack("<Q", handles[rid])))
    for _ in order:
        f = raw.read()
        assert f is not None and f.payload == pages[f.request_id - 1000]


def test_semantic_errors_answer_and_keep_the_connection(wire: tuple[Daemon, str]) -> None:
    raw = Raw(wire[1])
    cases = [
        (Op.STORE, b"x" * 100, 422, "bad_page_size"),
        (Op.STORE, b"", 422, "bad_page_size"),
        (Op.LOAD, struct.pack("<Q", 12345), 404, "stale_handle"),
        (Op.LOAD, b"\x01\x02\x03", 400, "bad_request"),  # fits no handle count
        (Op.LOAD, b"", 400, "bad_request"),
        (Op.FREE, b"\x01" * 9, 400, "bad_request"),
        (Op.STATS, b"x", 400, "bad_request"),  # takes no payload
        (Op.COMPACT, b"\x00" * 8, 400, "bad_request"),
        (Op.FREE, struct.pack("<Q", 99), 404, "stale_handle"),
        (Op.USE_POOL, b"nope", 404, "unknown_pool"),
        # A name no pool can have is refused as a bad one, as over HTTP.
        (Op.USE_POOL, b"../x", 400, "bad_request"),
        (Op.USE_POOL, b"", 400, "bad_request"),
        (Op.USE_POOL, b"p\xff\x00", 400, "bad_request"),
    ]
    for n, (op, payload, status, code) in enumerate(cases):
        f = raw.call(op, n, payload)
        assert f.status == status and f.request_id == n and f.op == op | RESPONSE
        assert json.loads(f.payload)["error"] == code
    f = raw.call(Op.STORE, 77, text_page(1))  # still usable
    assert f.status == 0


@pytest.mark.parametrize(
    ("data", "status", "op", "rid"),
    [
        # The header unreadable: an answer to no request, op 0x80 and id 0.
        (HEADER.pack(0x1234, 1, Op.STORE, 0, 0, 7, 0), 400, RESPONSE, 0),
        (b"GET / HTTP/1.1\r\n\r\n", 400, RESPONSE, 0),
        # Otherwise the offending request's op (| 0x80) and id, whatever the op.
        (HEADER.pack(MAGIC, 9, Op.STORE, 0, 0, 7, 0), 505, Op.STORE | RESPONSE, 7),
        (HEADER.pack(MAGIC, 1, 0x55, 0, 0, 7, 0), 400, 0x55 | RESPONSE, 7),
        (HEADER.pack(MAGIC, 1, Op.STORE, 0, 0, 7, 65 * 4096), 413, Op.STORE | RESPONSE, 7),
        (HEADER.pack(MAGIC, 1, Op.LOAD, 0, 0, 7, 0xFFFFFFFF), 413, Op.LOAD | RESPONSE, 7),
        (encode(Op.HELLO, 7, struct.pack("<HH", 1, 1)), 400, Op.HELLO | RESPONSE, 7),
    ],
)
def test_framing_errors_answer_then_close(
    wire: tuple[Daemon, str], data: bytes, status: int, op: int, rid: int
) -> None:
    bystander = WireClient(wire[1])
    kept = bystander.store([text_page(5)])
    raw = Raw(wire[1])
    raw.send(data)
    f = raw.read()
    assert f is not None and (f.status, f.op, f.request_id) == (status, op, rid)
    assert json.loads(f.payload)["error"] in ("bad_request", "bad_version", "too_large")
    assert raw.closed()
    assert bystander.load(kept) == [text_page(5)]  # other connections carry on
    bystander.close()


def test_hello_is_required_and_checked(wire: tuple[Daemon, str]) -> None:
    raw = Raw(wire[1], hello=False)
    f = raw.call(Op.STORE, 3, text_page(1))
    assert (f.status, f.op, f.request_id) == (400, Op.STORE | RESPONSE, 3) and raw.closed()
    raw = Raw(wire[1], hello=False)
    f = raw.call(Op.STATS, 6)
    assert (f.status, f.op, f.request_id) == (400, Op.STATS | RESPONSE, 6) and raw.closed()
    raw = Raw(wire[1], hello=False)
    f = raw.call(Op.HELLO, 4, struct.pack("<HH", 2, 5))
    assert (f.status, f.op, f.request_id) == (505, Op.HELLO | RESPONSE, 4) and raw.closed()
    # HELLO's own header carries version 1, whatever versions its payload offers.
    raw = Raw(wire[1], hello=False)
    raw.send(HEADER.pack(MAGIC, 2, Op.HELLO, 0, 0, 8, 4) + struct.pack("<HH", 1, 2))
    f = raw.read()
    assert f is not None and (f.status, f.op, f.request_id) == (505, Op.HELLO | RESPONSE, 8)
    assert raw.closed()
    raw = Raw(wire[1], hello=False)
    f = raw.call(Op.HELLO, 5, struct.pack("<HH", 1, 1))
    version, _, max_payload, in_flight, page = struct.unpack("<HHIII", f.payload)
    assert (version, max_payload, in_flight, page) == (1, 64 * 4096, 64, 4096)


def test_disconnects_mid_frame_leave_the_server_serving(wire: tuple[Daemon, str]) -> None:
    for cut in (5, 16, 16 + 100):
        raw = Raw(wire[1])
        raw.send(encode(Op.STORE, 1, text_page(cut))[:cut])
        raw.sock.close()  # short header, header only, truncated body
    with Client(f"unix://{wire[1]}") as c:
        assert c.load(c.store([text_page(9)])) == [text_page(9)]


def test_async_client(wire: tuple[Daemon, str]) -> None:
    async def main() -> None:
        c = await AsyncWireClient.connect(wire[1])
        pages = [text_page(i) for i in range(150)] + [random_page(1)]
        handles = await c.store(pages)
        assert await c.load(handles) == pages
        await c.free(handles)
        with pytest.raises(UnknownPoolError):
            await c.stats("missing")
        with pytest.raises(PageSizeError):
            await c.store([b"short"])
        await c.close()

    asyncio.run(main())


def test_token_over_the_wire(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("wire-token")
    with wire_daemon(tmp_path, "--auth-token-file", str(token)) as (_, path):
        with pytest.raises(ZswapdError, match="401"):
            WireClient(path)
        with pytest.raises(ZswapdError, match="401"):
            WireClient(path, token="wrong")
        ok = WireClient(path, token="wire-token")
        assert ok.load(ok.store([text_page(2)])) == [text_page(2)]
        ok.close()


def test_the_hello_token_is_raw_bytes(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("s3cret\n")  # the file's trailing newline is not part of it
    with wire_daemon(tmp_path, "--auth-token-file", str(token)) as (_, path):
        for given, status in [
            (b"s3cret", 0),  # raw, after the two versions, to the payload's end
            (b"s3cret\n", 401),
            (b"Bearer s3cret", 401),
            (b"\x06\x00s3cret", 401),  # no length field
            (b"", 401),
        ]:
            raw = Raw(path, hello=False)
            f = raw.call(Op.HELLO, 2, struct.pack("<HH", 1, 1) + given)
            assert f.status == status, given
            if status:
                assert f.op == Op.HELLO | RESPONSE and raw.closed()


def test_cli_over_the_wire(wire: tuple[Daemon, str], tmp_path: Path) -> None:
    url = ["--url", f"unix://{wire[1]}", "--quiet"]
    src = tmp_path / "p.pages"
    src.write_bytes(b"".join(text_page(i) for i in range(300)))
    handles = tmp_path / "h"
    assert run_cli("push", str(src), "-o", str(handles), *url).returncode == 0
    out = tmp_path / "back"
    assert run_cli("fetch", str(handles), "-o", str(out), *url).returncode == 0
    assert out.read_bytes() == src.read_bytes()
    stats = run_cli("stats", *url)
    assert stats.returncode == 0 and "mm_stat" in stats.stdout
    pools = run_cli("pools", "list", *url)
    assert pools.returncode == 1 and "wire protocol" in pools.stderr


def test_a_client_that_does_not_read_is_paused_not_dropped(wire: tuple[Daemon, str]) -> None:
    import threading

    raw = Raw(wire[1])
    # 1000 x 64 pages = 250 MiB: far past what the server will queue (its
    # queue, its transport's buffer, and a socket send buffer that takes two
    # 64-page LOAD answers: about 600 of these 528-byte answers in all)
    n = 1000
    batch = b"".join(text_page(i) for i in range(64))

    def sender() -> None:
        for rid in range(n):
            raw.send(encode(Op.STORE, rid, batch))

    t = threading.Thread(target=sender)
    t.start()
    t.join(timeout=3)
    assert t.is_alive()  # the server stopped reading: the writer is blocked
    seen = set()
    while len(seen) < n:  # reading drains it: every request is answered
        f = raw.read()
        assert f is not None and f.status == 0 and len(f.payload) == 64 * 8
        seen.add(f.request_id)
    t.join()
    assert seen == set(range(n))


def _busy(raw: Raw) -> Raw:
    """Make a connection busy: a 4 MiB answer it leaves unsent by not reading."""
    (h,) = struct.unpack("<Q", raw.call(Op.STORE, 1, bytes(4096)).payload)
    raw.send(encode(Op.LOAD, 2, struct.pack("<Q", h) * 1024))
    time.sleep(0.1)
    return raw


def test_idle_connections_make_room_for_a_newcomer(tmp_path: Path) -> None:
    # Found in review: sockets that never speak (reopened as the handshake
    # timeout closed them), or that sent HELLO and then sat idle, held every
    # slot, and every legitimate HELLO got 503.
    with wire_daemon(tmp_path, "--max-connections", "4") as (_, path):
        greeted = [Raw(path) for _ in range(2)]  # through HELLO, then idle
        time.sleep(0.05)
        silent = [Raw(path, hello=False) for _ in range(2)]  # never a byte
        newcomers = []
        for n in range(4):
            start = time.monotonic()
            newcomer = Raw(path)  # HELLO answered at once
            assert newcomer.call(Op.STORE, 2, text_page(n)).status == 0
            assert time.monotonic() - start < 1
            # Pre-HELLO connections go first, then the one idle longest.
            victim = (silent + greeted)[n]
            f = victim.read()
            assert f is not None and (f.status, f.op, f.request_id) == (503, RESPONSE, 0)
            assert json.loads(f.payload)["error"] == "evicted"
            assert victim.closed()
            newcomers.append(_busy(newcomer))
        # Every connection is busy now: a newcomer is refused.
        extra = Raw(path, hello=False)
        f = extra.read()
        assert f is not None and f.status == 503
        assert json.loads(f.payload)["error"] == "too_many_connections"


def test_connections_past_the_limit_are_refused_clearly(tmp_path: Path) -> None:
    import httpx

    with wire_daemon(tmp_path, "--max-connections", "3") as (d, path):
        held = [_busy(Raw(path)) for _ in range(3)]  # answers unsent: none is idle
        extra = Raw(path, hello=False)
        f = extra.read()
        assert f is not None and (f.status, f.op, f.request_id) == (503, RESPONSE, 0)
        assert json.loads(f.payload)["error"] == "too_many_connections"
        assert extra.closed()
        held.pop().sock.close()
        import time

        time.sleep(0.2)
        again = Raw(path)  # room again
        assert again.call(Op.STORE, 1, text_page(1)).status == 0
        # HTTP has its own limit of the same size (with every connection busy
        # in a body: idle ones would make room, see test_http_limits.py).
        host, port = d.url.removeprefix("http://").split(":")
        socks = [socket.create_connection((host, int(port))) for _ in range(3)]
        for s in socks:
            s.sendall(b"POST /v1/pools/default/pages HTTP/1.1\r\nContent-Length: 9\r\n\r\nx")
        time.sleep(0.1)
        r = httpx.get(f"{d.url}/healthz")
        assert r.status_code == 503
        assert r.json()["error"] == "too_many_connections"
        for s in socks:
            s.close()


def test_a_load_past_the_cap_is_refused(wire: tuple[Daemon, str]) -> None:
    # Found in review: one LOAD of repeated handles could make a 2 GiB answer.
    raw = Raw(wire[1])
    (f,) = [raw.call(Op.STORE, 1, text_page(1))]
    (h,) = struct.unpack("<Q", f.payload)
    f = raw.call(Op.LOAD, 2, struct.pack("<Q", h) * 65)  # the fixture's cap is 64
    assert f.status == 413 and json.loads(f.payload)["error"] == "too_large"
    assert raw.call(Op.LOAD, 3, struct.pack("<Q", h) * 64).status == 0  # still open


def test_idle_connections_cost_little(tmp_path: Path) -> None:
    # 1 MiB requests: a receive buffer of that size per connection would show.
    with wire_daemon(tmp_path, "--max-pages-per-request", "256") as (d, path):
        pid = d.proc.pid
        warm = [Raw(path, hello=False) for _ in range(20)]
        time.sleep(0.3)
        before = rss(pid)
        bare = [Raw(path, hello=False) for _ in range(200)]  # connected, silent
        time.sleep(0.5)
        assert (rss(pid) - before) / len(bare) < 64 * 1024
        # Each sends one 1 MiB STORE (of zero pages: no pool memory) and goes idle:
        # the buffer it grew for the frame is given back.
        before = rss(pid)
        for n, raw in enumerate(bare[:40]):
            raw.call(Op.HELLO, 1, struct.pack("<HH", 1, 1))
            f = raw.call(Op.STORE, 2, bytes(256 * 4096))
            assert f.status == 0 and len(f.payload) == 256 * 8, n
        deadline = time.monotonic() + 5  # the heaps are trimmed once the burst is over
        while (rss(pid) - before) / 40 >= 64 * 1024 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (rss(pid) - before) / 40 < 64 * 1024
        # A header claiming 1 MiB, a few bytes now and then: the buffer grows
        # with what arrives, not with what is claimed.
        before = rss(pid)
        claim = encode(Op.STORE, 2, bytes(256 * 4096))
        for raw in bare[40:]:
            raw.call(Op.HELLO, 1, struct.pack("<HH", 1, 1))
            raw.send(claim[:1000])
        time.sleep(0.2)
        for raw in bare[40:]:
            raw.send(claim[1000:2000])  # read with the header already in
        time.sleep(0.5)
        assert (rss(pid) - before) / len(bare[40:]) < 64 * 1024
        for raw in warm + bare:
            raw.sock.close()


def test_a_big_store_works_through_a_growing_buffer(wire: tuple[Daemon, str]) -> None:
    pages = [text_page(i) for i in range(64)]  # the fixture's cap: one full frame
    raw = Raw(wire[1])
    frame = encode(Op.STORE, 9, b"".join(pages))
    for i in range(0, len(frame), 1000):  # dribbled, header split across sends
        raw.send(frame[i : i + 1000])
    f = raw.read()
    assert f is not None and f.status == 0
    handles = list(struct.unpack("<64Q", f.payload))
    f = raw.call(Op.LOAD, 10, struct.pack("<64Q", *handles))
    assert f.payload == b"".join(pages)
    assert raw.call(Op.STORE, 11, text_page(1)).status == 0  # small again after


def test_a_frame_left_unfinished_is_closed_after_the_frame_deadline(tmp_path: Path) -> None:
    """A peer that stops part way through a large frame (the receive buffer grown to
    what its header claims) is sent 408 frame_timeout and closed; one sending whole
    frames, however slowly, is kept."""
    with wire_daemon(tmp_path, "--handshake-timeout", "0.5") as (_, path):
        stalled = Raw(path)
        steady = Raw(path)
        frame = encode(Op.STORE, 7, b"".join(text_page(i) for i in range(64)))
        stalled.send(frame[:-10])  # all but the last 10 bytes, then silence
        start = time.monotonic()
        f = stalled.read()
        assert f is not None and (f.status, f.op, f.request_id) == (408, RESPONSE, 0)
        assert json.loads(f.payload)["error"] == "frame_timeout"
        assert stalled.closed()
        assert 0.4 < time.monotonic() - start < 5
        for i in range(3):
            time.sleep(0.3)  # idle between frames is not a frame left unfinished
            assert steady.call(Op.STORE, 10 + i, text_page(i)).status == 0


def test_a_silent_connection_is_closed_after_the_handshake_timeout(tmp_path: Path) -> None:
    with wire_daemon(tmp_path, "--handshake-timeout", "0.5") as (_, path):
        silent = Raw(path, hello=False)
        greeted = Raw(path)
        partial = Raw(path, hello=False)
        partial.send(encode(Op.HELLO, 1, struct.pack("<HH", 1, 1))[:10])  # never finished
        start = time.monotonic()
        for raw in (silent, partial):
            f = raw.read()
            assert f is not None and (f.status, f.op, f.request_id) == (408, RESPONSE, 0)
            assert json.loads(f.payload)["error"] == "handshake_timeout"
            assert raw.closed()
        assert 0.4 < time.monotonic() - start < 5
        time.sleep(0.3)
        assert greeted.call(Op.STORE, 3, text_page(3)).status == 0  # greeted: kept


def test_a_connection_guessing_handles_is_closed(tmp_path: Path) -> None:
    with wire_daemon(tmp_path, "--max-stale-handles", "3") as (_, path):
        other = Raw(path)
        (h,) = struct.unpack("<Q", other.call(Op.STORE, 1, text_page(1)).payload)
        guesser = Raw(path)
        for rid in range(3):  # up to the bound: answered, kept open
            guess = struct.pack("<Q", h + 1 + rid)
            f = guesser.call(Op.LOAD if rid % 2 else Op.FREE, rid, guess)
            assert f.status == 404 and json.loads(f.payload)["error"] == "stale_handle"
        # Other errors do not count.
        assert guesser.call(Op.STORE, 7, b"short").status == 422
        assert guesser.call(Op.LOAD, 8, struct.pack("<Q", h)).status == 0
        # Pipelined past the bound: the one past it is answered, the rest dropped.
        guesser.send(encode(Op.LOAD, 20, struct.pack("<Q", h + 100)))
        guesser.send(encode(Op.LOAD, 21, struct.pack("<Q", h)))
        f = guesser.read()
        assert f is not None and (f.status, f.request_id) == (404, 20)
        assert "closing" in json.loads(f.payload)["detail"]
        assert guesser.closed()
        assert other.call(Op.LOAD, 2, struct.pack("<Q", h)).status == 0  # others go on


class _Interrupted(socket.socket):
    """A real socket whose sendmsg sends at most ``cut`` bytes a call, as one
    cut short by a signal does."""

    cut = 1000

    def sendmsg(self, buffers, *args):  # type: ignore[no-untyped-def, override]
        taken, room = [], self.cut
        for b in buffers:
            view = memoryview(b).cast("B")[:room]
            taken.append(view)
            room -= len(view)
            if not room:
                break
        return super().sendmsg(taken, *args)


def test_a_request_cut_short_by_the_kernel_is_sent_whole_in_order() -> None:
    from zswapd.wire_client import _send_frame

    a, b = socket.socketpair()
    sender = _Interrupted(a.family, a.type, fileno=a.detach())
    pages = [random_page(i) for i in range(5)] + [memoryview(text_page(9))]
    try:
        _send_frame(sender, Op.STORE, 7, pages)
        parser = FrameParser(1 << 20)
        while (frame := parser.next_frame()) is None:
            parser.buffer_updated(b.recv_into(parser.get_buffer()))
        assert (frame.op, frame.request_id) == (Op.STORE, 7)
        assert frame.payload == b"".join(bytes(p) for p in pages)
    finally:
        sender.close()
        b.close()
