"""The NBD protocol's server side, sans-IO (the NBD project's doc/proto.md).

Theory of operation: :class:`NbdServerConnection` is fed the bytes a client
sends (:meth:`feed`) and hands back events (:meth:`next_event`): options
during the handshake, commands during transmission.  Every answer is built
by a method that returns the bytes to send.  No sockets, so it is tested and
fuzzed alone.  Phases: the server's greeting (fixed newstyle) -> the client's
flags -> option haggling (EXPORT_NAME, GO, INFO, LIST, STRUCTURED_REPLY,
ABORT; META_CONTEXT answered with none; anything else NBD_REP_ERR_UNSUP) ->
transmission (READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, DISC), or CLOSED (ABORT,
an EXPORT_NAME of no export, a broken stream): :class:`Phase`.  Every rule that
moves the phase is here; option haggling is answered by :meth:`answer_option`,
given the exports to look up, so the I/O layer only moves bytes.  Input is bounded:
an option's data at most 64 KiB, a request's payload at most ``max_payload``;
past that, or on a wrong magic, :class:`NbdProtocolError` (close the socket).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Protocol

__all__ = [
    "FLAGS",
    "Cmd",
    "Command",
    "Export",
    "NbdProtocolError",
    "NbdServerConnection",
    "Opt",
    "OptionOutcome",
    "OptionRequest",
    "Phase",
    "Rep",
]

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1

# Transmission flags
TF_HAS_FLAGS = 1 << 0
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_CAN_MULTI_CONN = 1 << 8

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_ERROR = (1 << 15) + 1

MAX_OPTION = 64 * 1024
# What every export offers: flush, FUA, trim and write-zeroes; several
# connections may share one (each request is whole under the device's lock).
FLAGS = (
    TF_HAS_FLAGS
    | TF_SEND_FLUSH
    | TF_SEND_FUA
    | TF_SEND_TRIM
    | TF_SEND_WRITE_ZEROES
    | TF_CAN_MULTI_CONN
)

# errno values the protocol uses
EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108


class Opt(IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10


class Rep(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_UNKNOWN = (1 << 31) + 6


class Cmd(IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


class NbdProtocolError(Exception):
    """The stream broke the protocol: close the connection."""


class Phase(Enum):
    """Where a connection is: what it may send next."""

    HANDSHAKE = "handshake"  # the client's flags
    OPTIONS = "options"  # option haggling
    TRANSMISSION = "transmission"  # commands on the export chosen
    CLOSED = "closed"  # nothing more is read or answered


class Export(Protocol):
    """What the haggling needs of an export: its size in bytes."""

    @property
    def size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class OptionOutcome:
    """What to do about one option: send ``reply``; then, if ``export`` is set,
    serve commands on it; if ``close``, close the connection."""

    reply: bytes
    export: Export | None = None
    close: bool = False


@dataclass(frozen=True, slots=True)
class OptionRequest:
    option: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Command:
    type: int
    flags: int
    cookie: int
    offset: int
    length: int
    data: bytes = b""


_OPT_HEADER = struct.Struct(">QII")
_REQUEST = struct.Struct(">IHHQQI")


class NbdServerConnection:
    """One client's protocol state.

    Args:
        max_payload: the largest WRITE accepted (and READ answered).
    """

    def __init__(self, max_payload: int = 32 << 20) -> None:
        self.max_payload = max_payload
        self.state = Phase.HANDSHAKE
        self.no_zeroes = False
        self.structured = False
        self._buf = bytearray()

    # -- input ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.state is Phase.CLOSED:
            return
        self._buf += data
        # Bounded: never more than one request (or option) plus one header.
        if len(self._buf) > self.max_payload + MAX_OPTION + _REQUEST.size:
            raise NbdProtocolError("too much unanswered input")

    def next_event(self) -> OptionRequest | Command | None:
        """The next option or command, or None until more bytes arrive.

        Raises:
            NbdProtocolError: wrong magic, oversized option or request.
        """
        buf = self._buf
        if self.state is Phase.HANDSHAKE:
            if len(buf) < 4:
                return None
            (flags,) = struct.unpack_from(">I", buf)
            if not flags & FLAG_FIXED_NEWSTYLE:
                raise NbdProtocolError("client does not speak fixed newstyle")
            if flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
                raise NbdProtocolError(f"unknown client flags 0x{flags:x}")
            self.no_zeroes = bool(flags & FLAG_NO_ZEROES)
            del buf[:4]
            self.state = Phase.OPTIONS
        if self.state is Phase.OPTIONS:
            if len(buf) < _OPT_HEADER.size:
                return None
            magic, option, length = _OPT_HEADER.unpack_from(buf)
            if magic != IHAVEOPT:
                raise NbdProtocolError("bad option magic")
            if length > MAX_OPTION:
                raise NbdProtocolError(f"option data of {length} bytes")
            end = _OPT_HEADER.size + length
            if len(buf) < end:
                return None
            data = bytes(buf[_OPT_HEADER.size : end])
            del buf[:end]
            return OptionRequest(option, data)
        if self.state is Phase.TRANSMISSION:
            if len(buf) < _REQUEST.size:
                return None
            magic, flags, kind, cookie, offset, length = _REQUEST.unpack_from(buf)
            if magic != REQUEST_MAGIC:
                raise NbdProtocolError("bad request magic")
            body = length if kind == Cmd.WRITE else 0
            if body > self.max_payload:
                raise NbdProtocolError(f"write of {length} bytes over {self.max_payload}")
            end = _REQUEST.size + body
            if len(buf) < end:
                return None
            data = bytes(buf[_REQUEST.size : end])
            del buf[:end]
            return Command(kind, flags, cookie, offset, length, data)
        return None

    def close(self) -> None:
        """Enter CLOSED: the peer broke the protocol or is gone; drop what it sent."""
        self.state = Phase.CLOSED
        self._buf = bytearray()

    # -- option haggling -------------------------------------------------------------

    def answer_option(
        self,
        req: OptionRequest,
        find: Callable[[str], Export | None],
        names: Callable[[], list[str]],
    ) -> OptionOutcome:
        """The answer to one option, given how to look exports up.

        ``find(name)`` is the export of that name or None; an empty name asks
        for the one called "default".  GO and EXPORT_NAME move the connection
        to TRANSMISSION on the export found; ABORT, and an EXPORT_NAME of no
        export (it has no error reply), to CLOSED.
        """
        opt = req.option
        if opt == Opt.ABORT:
            self.close()
            return OptionOutcome(self.option_reply(opt, Rep.ACK), close=True)
        if opt == Opt.LIST:
            listed = b"".join(
                self.option_reply(opt, Rep.SERVER, len(n.encode()).to_bytes(4, "big") + n.encode())
                for n in names()
            )
            return OptionOutcome(listed + self.option_reply(opt, Rep.ACK))
        if opt == Opt.STRUCTURED_REPLY:
            if req.data:
                return OptionOutcome(self.option_error(opt, Rep.ERR_INVALID, "no data expected"))
            self.structured = True
            return OptionOutcome(self.option_reply(opt, Rep.ACK))
        if opt in (Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT):
            if not self.structured:
                return OptionOutcome(
                    self.option_error(opt, Rep.ERR_INVALID, "structured replies first")
                )
            # No metadata contexts (base:allocation is not offered): an empty answer.
            return OptionOutcome(self.option_reply(opt, Rep.ACK))
        if opt in (Opt.GO, Opt.INFO):
            try:
                name, infos = self.parse_info_request(req.data)
            except (ValueError, UnicodeDecodeError) as exc:
                return OptionOutcome(self.option_error(opt, Rep.ERR_INVALID, str(exc)))
            export = find(name or "default")
            if export is None:
                return OptionOutcome(
                    self.option_error(opt, Rep.ERR_UNKNOWN, f"no export named {name!r}")
                )
            reply = self.info_replies(opt, name, export.size, FLAGS, infos)
            return OptionOutcome(reply, export if opt == Opt.GO else None)
        if opt == Opt.EXPORT_NAME:
            try:
                export = find(req.data.decode() or "default")
            except UnicodeDecodeError:
                export = None
            if export is None:
                self.close()
                return OptionOutcome(b"", close=True)
            return OptionOutcome(self.export_name_reply(export.size, FLAGS), export)
        return OptionOutcome(self.option_error(opt, Rep.ERR_UNSUP, f"option {opt} unsupported"))

    # -- handshake output ----------------------------------------------------------

    @staticmethod
    def greeting() -> bytes:
        return struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)

    @staticmethod
    def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
        return struct.pack(">QIII", REPLY_MAGIC, option, reply, len(data)) + data

    def option_error(self, option: int, reply: Rep, message: str) -> bytes:
        return self.option_reply(option, reply, message.encode())

    def export_name_reply(self, size: int, flags: int) -> bytes:
        """The old-style answer to EXPORT_NAME: size and flags, then transmission."""
        self.state = Phase.TRANSMISSION
        return struct.pack(">QH", size, flags) + (b"" if self.no_zeroes else bytes(124))

    def info_replies(
        self, option: int, name: str, size: int, flags: int, requests: list[int]
    ) -> bytes:
        """INFO replies for GO/INFO, then ACK (GO then enters transmission)."""
        out = [self.option_reply(option, Rep.INFO, struct.pack(">HQH", INFO_EXPORT, size, flags))]
        # Block sizes always: minimum 1, preferred a page, maximum our payload.
        out.append(
            self.option_reply(
                option, Rep.INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, self.max_payload)
            )
        )
        if INFO_NAME in requests:
            out.append(
                self.option_reply(option, Rep.INFO, struct.pack(">H", INFO_NAME) + name.encode())
            )
        out.append(self.option_reply(option, Rep.ACK))
        if option == Opt.GO:
            self.state = Phase.TRANSMISSION
        return b"".join(out)

    @staticmethod
    def parse_info_request(data: bytes) -> tuple[str, list[int]]:
        """(export name, info types requested) of a GO/INFO option.

        Raises:
            ValueError: malformed option data.
        """
        if len(data) < 6:
            raise ValueError("short GO/INFO data")
        (n,) = struct.unpack_from(">I", data)
        if 4 + n + 2 > len(data):
            raise ValueError("name runs past the option")
        name = data[4 : 4 + n].decode()
        (count,) = struct.unpack_from(">H", data, 4 + n)
        if 4 + n + 2 + 2 * count != len(data):
            raise ValueError("info request count does not match")
        infos = list(struct.unpack_from(f">{count}H", data, 6 + n))
        return name, infos

    # -- transmission output -------------------------------------------------------

    @staticmethod
    def simple_reply(cookie: int, error: int = 0, data: bytes = b"") -> bytes:
        return struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, cookie) + data

    def read_reply(self, cookie: int, offset: int, data: bytes) -> tuple[bytes, ...]:
        """The answer to a READ, header and data apart (the data is not copied again)."""
        if not data and self.structured:  # an OFFSET_DATA chunk must carry at least one byte
            return (
                struct.pack(
                    ">IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0
                ),
            )
        return self.read_reply_header(cookie, offset, len(data)), data

    def read_reply_header(self, cookie: int, offset: int, length: int) -> bytes:
        """The header of a successful READ of ``length`` (> 0) bytes; the data follows,
        in as many writes as the sender likes."""
        if not self.structured:
            return struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie)
        return struct.pack(
            ">IHHQIQ",
            STRUCTURED_REPLY_MAGIC,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            cookie,
            8 + length,
            offset,
        )

    def error_reply(self, cookie: int, error: int, message: str = "") -> bytes:
        if not self.structured:
            return self.simple_reply(cookie, error)
        msg = message.encode()[:4096]
        payload = struct.pack(">IH", error, len(msg)) + msg
        return (
            struct.pack(
                ">IHHQI",
                STRUCTURED_REPLY_MAGIC,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                cookie,
                len(payload),
            )
            + payload
        )
