"""A minimal NBD client over a raw socket, for tests that need to misbehave on purpose
(stop reading, stall in the handshake) where real clients would not."""

from __future__ import annotations

import os
import socket
import struct

from zswapd.nbd_protocol import IHAVEOPT, REPLY_MAGIC, REQUEST_MAGIC, Cmd, Opt

GREETING = 18  # NBDMAGIC, IHAVEOPT, handshake flags
_OPTION_REPLY = struct.Struct(">QIII")


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def go_option(name: str) -> bytes:
    raw = name.encode()
    return option(Opt.GO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray(n)
    view, got = memoryview(out), 0
    while got < n:
        k = s.recv_into(view[got:])
        if not k:
            raise ConnectionError(f"closed after {got} of {n} bytes")
        got += k
    return bytes(out)


def connect(address: str | tuple[str, int], timeout: float = 10) -> socket.socket:
    """A connected socket that has read the greeting and sent the client flags."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(address)
    assert recv_exact(s, GREETING).startswith(b"NBDMAGIC")
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    return s


def go(s: socket.socket, name: str) -> None:
    """Negotiate ``name`` with NBD_OPT_GO, into transmission."""
    s.sendall(go_option(name))
    while True:
        magic, _, reply, length = _OPTION_REPLY.unpack(recv_exact(s, _OPTION_REPLY.size))
        assert magic == REPLY_MAGIC
        data = recv_exact(s, length)
        if reply == 1:  # ACK
            return
        if reply & (1 << 31):
            raise ConnectionError(f"GO refused: {data!r}")


def open_device(address: str | tuple[str, int], name: str) -> socket.socket:
    s = connect(address)
    go(s, name)
    return s


def request(s: socket.socket, cmd: int, offset: int, length: int, data: bytes = b"") -> bytes:
    """Send one command and wait for its simple reply; the data of a READ."""
    cookie = int.from_bytes(os.urandom(8), "big")
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, cookie, offset, length) + data)
    magic, error, got = struct.unpack(">IIQ", recv_exact(s, 16))
    assert (magic, got) == (0x67446698, cookie)
    if error:
        raise OSError(error, f"NBD error {error}")
    return recv_exact(s, length) if cmd == Cmd.READ else b""


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True if the server closes ``s`` (EOF or reset) within ``timeout`` seconds."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True
