"""NBD's sans-IO core alone: the handshake, options and commands parsed from bytes,
broken or hostile streams refused with protocol errors only."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zswapd.nbd_protocol import (
    FLAGS,
    IHAVEOPT,
    REQUEST_MAGIC,
    Cmd,
    Command,
    NbdProtocolError,
    NbdServerConnection,
    Opt,
    OptionOutcome,
    OptionRequest,
    Phase,
    Rep,
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
    assert c.state is Phase.TRANSMISSION
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
    c.state = Phase.TRANSMISSION
    c.feed(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.WRITE, 1, 0, 8192))
    with pytest.raises(NbdProtocolError):
        c.next_event()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, transmitting: bool) -> None:
    c = NbdServerConnection(max_payload=4096)
    if transmitting:
        c.state = Phase.TRANSMISSION
    try:
        c.feed(data)
        while c.next_event() is not None:
            pass
    except NbdProtocolError:
        pass


# -- option haggling and its phases, without sockets -------------------------------------


class _Export:
    def __init__(self, size: int) -> None:
        self.size = size


_EXPORTS = {"zram0": _Export(1 << 20), "default": _Export(4096)}


def _haggling() -> NbdServerConnection:
    conn = NbdServerConnection()
    conn.feed(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    assert conn.next_event() is None and conn.state is Phase.OPTIONS
    return conn


def _answer(conn: NbdServerConnection, option: int, data: bytes = b"") -> OptionOutcome:
    return conn.answer_option(OptionRequest(option, data), _EXPORTS.get, lambda: list(_EXPORTS))


def _go_data(name: str) -> bytes:
    return struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)


def test_go_on_an_export_enters_transmission_on_it() -> None:
    conn = _haggling()
    info = _answer(conn, Opt.INFO, _go_data("zram0"))
    assert info.export is None and conn.state is Phase.OPTIONS  # INFO only looks
    go = _answer(conn, Opt.GO, _go_data("zram0"))
    assert go.export is _EXPORTS["zram0"] and not go.close
    assert conn.state is Phase.TRANSMISSION
    assert struct.pack(">HQH", 0, 1 << 20, FLAGS) in go.reply  # NBD_INFO_EXPORT: size, flags


def test_go_on_no_such_export_is_an_error_reply_and_haggling_goes_on() -> None:
    conn = _haggling()
    out = _answer(conn, Opt.GO, _go_data("nosuch"))
    assert out.export is None and not out.close and conn.state is Phase.OPTIONS
    assert struct.pack(">I", Rep.ERR_UNKNOWN) in out.reply
    assert _answer(conn, Opt.GO, _go_data("")).export is _EXPORTS["default"]


def test_abort_and_an_unknown_export_name_close() -> None:
    conn = _haggling()
    out = _answer(conn, Opt.ABORT)
    assert out.close and conn.state is Phase.CLOSED
    conn.feed(b"anything")  # ignored once CLOSED
    assert conn.next_event() is None
    conn = _haggling()
    out = _answer(conn, Opt.EXPORT_NAME, b"nosuch")
    assert out.close and out.reply == b"" and conn.state is Phase.CLOSED
    conn = _haggling()
    out = _answer(conn, Opt.EXPORT_NAME, b"zram0")
    assert out.export is _EXPORTS["zram0"] and conn.state is Phase.TRANSMISSION


def test_list_structured_replies_and_meta_contexts() -> None:
    conn = _haggling()
    listed = _answer(conn, Opt.LIST).reply
    assert b"zram0" in listed and b"default" in listed
    early = _answer(conn, Opt.LIST_META_CONTEXT).reply
    assert struct.pack(">I", Rep.ERR_INVALID) in early  # structured replies first
    assert not conn.structured
    _answer(conn, Opt.STRUCTURED_REPLY)
    assert conn.structured
    assert struct.pack(">I", Rep.ACK) in _answer(conn, Opt.SET_META_CONTEXT).reply
    unknown = _answer(conn, 99).reply
    assert struct.pack(">I", Rep.ERR_UNSUP) in unknown and conn.state is Phase.OPTIONS
