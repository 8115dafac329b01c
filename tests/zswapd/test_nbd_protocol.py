"""NBD's sans-IO core alone: the handshake, options and commands parsed from bytes,
broken or hostile streams refused with protocol errors only."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zswapd.nbd_protocol import (
    IHAVEOPT,
    REQUEST_MAGIC,
    Cmd,
    Command,
    NbdProtocolError,
    NbdServerConnection,
    Opt,
    OptionRequest,
)


def _opt(option: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, option, len(data)) + data


def test_handshake_options_and_commands_parse() -> None:
    c = NbdServerConnection(max_payload=1 << 20)
    assert c.greeting().startswith(b"NBDMAGICIHAVEOPT")
    c.feed(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    go = struct.pack(">I", 5) + b"zram0" + struct.pack(">H", 0)
    for byte in _opt(Opt.GO, go):  # one byte at a time
        c.feed(bytes([byte]))
    ev = c.next_event()
    assert ev == OptionRequest(Opt.GO, go)
    assert c.parse_info_request(go) == ("zram0", [])
    c.info_replies(Opt.GO, "zram0", 1 << 20, 1, [])
    assert c.state == c.TRANSMISSION
    c.feed(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.WRITE, 7, 4096, 3) + b"abc")
    assert c.next_event() == Command(Cmd.WRITE, 0, 7, 4096, 3, b"abc")
    assert c.next_event() is None


@pytest.mark.parametrize(
    "stream",
    [
        struct.pack(">I", 0),  # not fixed newstyle
        struct.pack(">I", 1) + struct.pack(">QII", 0x1234, 7, 0),  # bad option magic
        struct.pack(">I", 1) + struct.pack(">QII", IHAVEOPT, 7, 1 << 20),  # huge option
    ],
)
def test_broken_handshakes_raise(stream: bytes) -> None:
    c = NbdServerConnection()
    with pytest.raises(NbdProtocolError):
        c.feed(stream)
        while c.next_event() is not None:
            pass


def test_oversized_write_raises() -> None:
    c = NbdServerConnection(max_payload=4096)
    c.state = c.TRANSMISSION
    c.feed(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.WRITE, 1, 0, 8192))
    with pytest.raises(NbdProtocolError):
        c.next_event()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, transmitting: bool) -> None:
    c = NbdServerConnection(max_payload=4096)
    if transmitting:
        c.state = c.TRANSMISSION
    try:
        c.feed(data)
        while c.next_event() is not None:
            pass
    except NbdProtocolError:
        pass
