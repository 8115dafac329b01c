"""The sans-IO frame parser, alone: round trips, partial input, every framing
error, and arbitrary or mutated bytes (which may raise only ProtocolError)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zswapd.protocol import (
    HEADER,
    HEADER_SIZE,
    INITIAL_BUFFER,
    MAGIC,
    RESPONSE,
    VERSION,
    Frame,
    FrameParser,
    Handshake,
    Op,
    ProtocolError,
    encode,
    hello_request,
    parse_hello_reply,
)

MAX = 4 * 4096


def frames_of(parser: FrameParser, data: bytes, step: int) -> list[Frame]:
    out = []
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
        while (f := parser.next_frame()) is not None:
            out.append(f)
    return out


@pytest.mark.parametrize("step", [1, 7, 16, 4096, 1 << 20])
def test_frames_round_trip_whatever_the_chunking(step: int) -> None:
    sent = [
        (Op.HELLO, 1, struct.pack("<HH", 1, 1)),
        (Op.STORE, 2, bytes(range(256)) * 32),
        (Op.LOAD, 3, struct.pack("<2Q", 5, 6)),
        (Op.STATS, 4, b""),
        (Op.STORE, 0xFFFFFFFF, b"\xaa" * MAX),
    ]
    data = b"".join(encode(op, rid, p) for op, rid, p in sent)
    got = frames_of(FrameParser(MAX), data, step)
    assert [(f.op, f.request_id, f.payload) for f in got] == sent


@pytest.mark.parametrize("step", [1, 7, 16, 4096, 1 << 20])
def test_views_are_the_frames_received_into_place(step: int) -> None:
    # next_view (the servers' and clients' hot path) gives what next_frame
    # gives, its payload read before the next receive, whatever the chunking.
    sent = [
        (Op.STORE, 2, bytes(range(256)) * 32),
        (Op.LOAD, 3, struct.pack("<2Q", 5, 6)),
        (Op.STATS, 4, b""),
        (Op.STORE, 5, b"\xaa" * MAX),
    ]
    data = b"".join(encode(op, rid, p) for op, rid, p in sent)
    parser = FrameParser(MAX)
    got = []
    pos = 0
    while pos < len(data):
        buf = parser.get_buffer()
        n = min(len(buf), step, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        parser.buffer_updated(n)
        pos += n
        while (view := parser.next_view()) is not None:
            got.append((view.op, view.request_id, bytes(view.payload)))
    assert got == sent


def test_recv_into_api_receives_in_place() -> None:
    parser = FrameParser(MAX)
    frame = encode(Op.STORE, 9, b"\x01" * 100)
    buf = parser.get_buffer()
    buf[: len(frame)] = frame
    parser.buffer_updated(len(frame))
    f = parser.next_frame()
    assert f is not None and f.request_id == 9 and parser.next_frame() is None


def test_the_buffer_grows_with_the_frame_then_shrinks_back() -> None:
    big = 1 << 22
    parser = FrameParser(big)
    assert parser.capacity == INITIAL_BUFFER <= 64 * 1024  # before any byte
    frame = encode(Op.STORE, 1, b"\x02" * big)
    sent = 0
    while sent < len(frame):  # as a socket delivers it: at most what fits
        space = parser.get_buffer()
        assert len(space) > 0
        # Grown with what arrived: never past twice that, nor past the frame.
        assert parser.capacity <= max(INITIAL_BUFFER, 2 * parser.buffered)
        assert parser.capacity <= HEADER_SIZE + big
        n = min(len(space), 65536, len(frame) - sent)
        space[:n] = frame[sent : sent + n]
        parser.buffer_updated(n)
        sent += n
    assert parser.capacity == HEADER_SIZE + big
    f = parser.next_frame()
    assert f is not None and f.payload == b"\x02" * big
    parser.get_buffer()
    assert parser.capacity == HEADER_SIZE + big  # kept for a next large frame...
    assert parser.shrink()
    assert parser.capacity == INITIAL_BUFFER  # ...until the I/O layer gives it back
    assert not parser.shrink()


def test_a_buffer_holding_part_of_a_frame_does_not_shrink() -> None:
    parser = FrameParser(1 << 20)
    parser.feed(encode(Op.STORE, 1, b"a" * (1 << 19))[:-1])
    assert parser.capacity > INITIAL_BUFFER and not parser.shrink()
    parser.feed(b"a")
    assert parser.next_frame() is not None
    assert parser.shrink() and parser.capacity == INITIAL_BUFFER


def test_a_header_claiming_much_grows_nothing_until_the_bytes_come() -> None:
    parser = FrameParser(1 << 22)
    parser.feed(HEADER.pack(MAGIC, VERSION, Op.STORE, 0, 0, 1, 1 << 22))
    parser.feed(b"x" * 1000)
    parser.get_buffer()
    assert parser.capacity == INITIAL_BUFFER
    assert parser.next_frame() is None


def test_a_header_past_the_cap_grows_nothing() -> None:
    parser = FrameParser(1 << 22)
    parser.feed(HEADER.pack(MAGIC, VERSION, Op.STORE, 0, 0, 1, (1 << 22) + 1))
    parser.get_buffer()
    assert parser.capacity == INITIAL_BUFFER
    with pytest.raises(ProtocolError) as err:
        parser.next_frame()
    assert err.value.status == 413


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 3 * INITIAL_BUFFER), min_size=1, max_size=6),
    st.integers(1, 5000),
)
def test_the_buffer_never_outgrows_the_frame_it_receives(sizes: list[int], step: int) -> None:
    cap = 3 * INITIAL_BUFFER
    parser = FrameParser(cap)
    data = b"".join(encode(Op.STORE, i, bytes([i]) * n) for i, n in enumerate(sizes))
    got = []
    most = 0  # the most bytes ever buffered at once
    for i in range(0, len(data), step):
        chunk = data[i : i + step]
        while chunk:  # recv_into: at most the free space offered
            space = parser.get_buffer()
            n = min(len(space), len(chunk))
            space[:n] = chunk[:n]
            parser.buffer_updated(n)
            chunk = chunk[n:]
            most = max(most, parser.buffered)
            assert parser.capacity <= max(INITIAL_BUFFER, HEADER_SIZE + max(sizes))
            assert parser.capacity <= max(INITIAL_BUFFER, 2 * most)  # grown with what came
            while (f := parser.next_frame()) is not None:
                got.append(len(f.payload))
    assert got == sizes
    parser.shrink()
    assert parser.capacity == INITIAL_BUFFER


def _header(
    magic: int = MAGIC, version: int = VERSION, op: int = Op.STORE, rid: int = 5, length: int = 0
) -> bytes:
    return HEADER.pack(magic, version, op, 0, 0, rid, length)


@pytest.mark.parametrize(
    ("raw", "status", "rid"),
    [
        (_header(magic=0x1234), 400, 0),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, 0),
        (_header(version=2), 505, 5),
        (_header(op=0x7F), 400, 5),
        (_header(op=Op.STORE | RESPONSE), 400, 5),  # a response sent to a server
        (_header(length=MAX + 1), 413, 5),
        (_header(length=0xFFFFFFFF), 413, 5),
    ],
)
def test_framing_errors_are_refused_after_the_header(raw: bytes, status: int, rid: int) -> None:
    parser = FrameParser(MAX)
    with pytest.raises(ProtocolError) as err:
        parser.feed(raw)
        parser.next_frame()
    assert err.value.status == status and err.value.request_id == rid


def test_a_short_header_or_truncated_body_waits_for_more() -> None:
    parser = FrameParser(MAX)
    parser.feed(encode(Op.STORE, 1, b"x" * 100)[: HEADER_SIZE - 3])
    assert parser.next_frame() is None
    parser.feed(encode(Op.STORE, 1, b"x" * 100)[HEADER_SIZE - 3 : 50])
    assert parser.next_frame() is None


def test_a_client_parser_takes_responses() -> None:
    parser = FrameParser(MAX, responses=True)
    parser.feed(encode(Op.LOAD | RESPONSE, 3, b"p" * 4096, status=0))
    f = parser.next_frame()
    assert f is not None and f.is_response and f.payload == b"p" * 4096
    with pytest.raises(ProtocolError):
        parser.feed(encode(Op.LOAD, 4))
        parser.next_frame()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, step: int) -> None:
    parser = FrameParser(1024)
    try:
        for f in frames_of(parser, data, step):
            assert len(f.payload) <= 1024
    except ProtocolError as exc:
        assert exc.status in (400, 413, 505)


VALID = st.lists(
    st.tuples(st.sampled_from(list(Op)), st.integers(0, 2**32 - 1), st.binary(max_size=600)),
    min_size=1,
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(
    VALID,
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(1, 40),
)
def test_mutated_frames_raise_only_protocol_errors(
    frames: list[tuple[Op, int, bytes]], flips: list[tuple[int, int]], step: int
) -> None:
    data = bytearray(b"".join(encode(op, rid, p) for op, rid, p in frames))
    for pos, value in flips:
        data[pos % len(data)] = value
    parser = FrameParser(1024)
    try:
        got = frames_of(parser, bytes(data), step)
    except ProtocolError as exc:
        assert exc.status in (400, 413, 505)
        return
    assert all(len(f.payload) <= 1024 for f in got)
    if not flips:
        assert [(f.op, f.request_id, f.payload) for f in got] == frames


# -- the handshake, both sides, without sockets ----------------------------------------


def _hello(rid: int, payload: bytes) -> Frame:
    return Frame(Op.HELLO, rid, payload)


def test_the_handshake_serves_nothing_before_hello_and_no_second_hello() -> None:
    shake = Handshake("tok", max_payload=1 << 22, max_in_flight=64)
    with pytest.raises(ProtocolError) as before:
        shake.receive(Frame(Op.STATS, 1, b""))
    assert (before.value.status, shake.greeted) == (400, False)
    answer = shake.receive(_hello(7, hello_request("tok")))
    assert answer is not None and shake.greeted
    frame = frames_of(FrameParser(MAX, responses=True), answer, 4096)[0]
    assert (frame.op, frame.request_id) == (Op.HELLO | RESPONSE, 7)
    reply = parse_hello_reply(frame.payload)
    assert (reply.version, reply.max_payload, reply.max_in_flight) == (VERSION, 1 << 22, 64)
    assert shake.receive(Frame(Op.STATS, 8, b"")) is None  # a request to serve
    with pytest.raises(ProtocolError) as again:
        shake.receive(_hello(9, hello_request("tok")))
    assert again.value.status == 400


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"\x01", 400),  # no versions
        (struct.pack("<HH", VERSION + 1, VERSION + 2), 505),  # none in common
        (struct.pack("<HH", VERSION, VERSION) + b"wrong", 401),
        (struct.pack("<HH", VERSION, VERSION), 401),  # no token
    ],
)
def test_a_refused_hello_says_why_and_greets_nobody(payload: bytes, status: int) -> None:
    shake = Handshake("tok", max_payload=4096, max_in_flight=1)
    with pytest.raises(ProtocolError) as refused:
        shake.receive(_hello(3, payload))
    assert (refused.value.status, refused.value.request_id, shake.greeted) == (status, 3, False)


def test_without_a_token_any_hello_of_a_common_version_is_welcome() -> None:
    shake = Handshake(None, max_payload=4096, max_in_flight=1)
    assert shake.receive(_hello(1, hello_request("anything"))) is not None


def test_a_short_hello_answer_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_hello_reply(b"\x01\x00")
