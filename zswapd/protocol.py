"""The wire protocol's sans-IO core: frames in, frames out, no sockets.

Theory of operation: a :class:`FrameParser` owns one receive buffer.  The I/O
layer asks it for free space (:meth:`FrameParser.get_buffer`), receives
straight into it (``recv_into`` or asyncio's BufferedProtocol), reports how
much arrived (:meth:`FrameParser.buffer_updated`), then takes whole frames out
with :meth:`FrameParser.next_frame` until it answers None (need more data).  A
header is checked as soon as its 16 bytes are in, before any payload is
waited for, so a bad or oversized frame is refused after 16 bytes, whatever
length it claims: the work done for a peer is O(bytes it actually sent).

The buffer follows what arrives: it starts at ``INITIAL_BUFFER`` bytes (what
a connection that has sent nothing costs); when the peer's bytes fill it and
the frame being received is larger, it doubles, never past that frame (so
never past ``HEADER_SIZE + max_payload``, and never more than twice what the
peer has actually sent, whatever length a header claims); :meth:`shrink`
takes it back to ``INITIAL_BUFFER`` once it is empty, which the I/O layer
does when the peer goes quiet.  The copies made by growing and sliding add up
to O(bytes received).

Any framing error raises :class:`ProtocolError` with the status to send back;
after one the stream cannot be trusted and the connection must be closed.

The handshake is here too, both sides of it: a :class:`Handshake` is the
server's state (nothing but HELLO until one succeeds, never HELLO again; the
version and the token checked; the answer built); :func:`hello_request` and
:func:`parse_hello_reply` are the client's.  The I/O layers only move bytes.
The format is docs/protocol.md.
"""

from __future__ import annotations

import hmac
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from zswapd.errors import InvalidRequestError, TooLargeError, UnauthorizedError, ZswapdError

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "INITIAL_BUFFER",
    "MAGIC",
    "RESPONSE",
    "VERSION",
    "Frame",
    "FrameParser",
    "FrameView",
    "Handshake",
    "HelloReply",
    "Op",
    "ProtocolError",
    "encode",
    "encode_error",
    "encode_header",
    "hello_request",
    "parse_hello_reply",
]

MAGIC = 0x5A53
VERSION = 1
HEADER = struct.Struct("<HBBHHII")
HEADER_SIZE = HEADER.size
_LENGTH = struct.Struct("<I")  # a header's last field
RESPONSE = 0x80
# A parser's buffer while no large frame is being received: room for a header
# and for the small requests (HELLO, LOAD of a few handles, STATS), in one read.
INITIAL_BUFFER = 16 * 1024


class Op(IntEnum):
    HELLO = 0x01
    USE_POOL = 0x02
    STORE = 0x10
    LOAD = 0x11
    FREE = 0x12
    STATS = 0x20
    COMPACT = 0x21


_OPS = frozenset(int(op) for op in Op)


class ProtocolError(Exception):
    """A framing error: send an error frame with ``status`` and close.

    Attributes:
        status: the error status (400, 413, 505...).
        code: the error code for the JSON payload.
        request_id: the offending frame's id, or 0 if the header was unreadable.
        op: the offending frame's op, or 0 if the header was unreadable (the
            error frame then goes out as op 0x80: an answer to no request).
    """

    def __init__(
        self, status: int, code: str, detail: str, request_id: int = 0, op: int = 0
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.op = op


def refused(
    error: type[ZswapdError], detail: str, request_id: int = 0, op: int = 0
) -> ProtocolError:
    """A framing error answered with the status and code of ``error``'s class.

    Only what the error tree has no class for (505 bad_version, 408) is written
    as a bare status.
    """
    return ProtocolError(error.status, error.code, detail, request_id, op)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: header fields and its payload."""

    op: int
    request_id: int
    payload: bytes
    status: int = 0
    flags: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.op & RESPONSE)


class FrameView(NamedTuple):
    """A frame whose payload is a view into a parser's buffer (see FrameParser.next_view).

    A named tuple, not a dataclass: one is made per request on the hot path.
    """

    op: int
    request_id: int
    status: int
    payload: memoryview


def encode_header(op: int, request_id: int, length: int, status: int = 0) -> bytes:
    """A frame header alone (send the payload after it without joining: no copy)."""
    return HEADER.pack(MAGIC, VERSION, op, 0, status, request_id, length)


def encode(op: int, request_id: int, payload: bytes = b"", status: int = 0) -> bytes:
    """A frame's bytes (header and payload)."""
    return HEADER.pack(MAGIC, VERSION, op, 0, status, request_id, len(payload)) + payload


def encode_error(op: int, request_id: int, status: int, code: str, detail: str) -> bytes:
    """An error response frame for a request of ``op`` (0: a connection-level error)."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    return encode((op | RESPONSE) & 0xFF, request_id, body, status)


class FrameParser:
    """Frames out of a byte stream, in one buffer that grows and shrinks with them.

    Args:
        max_payload: the largest payload accepted; a header claiming more is a
            413 ProtocolError.
        responses: parse response frames (a client) instead of requests (a server).
    """

    def __init__(self, max_payload: int, *, responses: bool = False) -> None:
        if max_payload < 0:
            raise ValueError("max_payload must be >= 0")
        self.max_payload = max_payload
        self._responses = responses
        self._small = min(INITIAL_BUFFER, HEADER_SIZE + max_payload)
        self._buf = bytearray(self._small)
        self._view = memoryview(self._buf)
        self._start = 0  # first unconsumed byte
        self._end = 0  # one past the last received byte
        self._pending: list[Frame] = []  # frames feed() had to take out early

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken out as frames."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """The receive buffer's size now (what this parser costs)."""
        return len(self._buf)

    def _resize(self, size: int) -> None:
        """A new buffer of ``size`` bytes holding the unconsumed bytes at its front."""
        n = self._end - self._start
        buf = bytearray(size)
        buf[:n] = self._view[self._start : self._end]
        # A new buffer rather than resizing: a view handed out earlier may live on.
        self._buf, self._view = buf, memoryview(buf)
        self._start, self._end = 0, n

    def _claimed_frame(self) -> int:
        """Bytes of the frame whose header is buffered (0: header not in, or past the cap).

        The claimed length alone, unchecked: a bad header is next_frame()'s to
        refuse, and one claiming past the cap grows nothing.
        """
        if self.buffered < HEADER_SIZE:
            return 0
        length: int = _LENGTH.unpack_from(self._buf, self._start + HEADER_SIZE - 4)[0]
        return HEADER_SIZE + length if length <= self.max_payload else 0

    def get_buffer(self) -> memoryview:
        """Free space to receive into (never empty while a frame is incomplete)."""
        if self._start == self._end:
            # Capacity kept: the next large frame reuses it (see shrink()).
            self._start = self._end = 0
            return self._view
        size = len(self._buf)
        if self._end == size:
            if self._start:
                # Slide the unconsumed tail to the front: O(bytes kept), at most one frame.
                n = self._end - self._start
                self._buf[:n] = self._view[self._start : self._end]
                self._start, self._end = 0, n
            elif (frame := self._claimed_frame()) > size:
                # Grow with what arrives: double, never past the frame.  A header
                # claiming 4 MiB costs nothing until the bytes come; the copies
                # of the doublings add up to less than the frame.
                self._resize(min(frame, 2 * size))
        return self._view[self._end :]

    def shrink(self) -> bool:
        """Back to ``INITIAL_BUFFER`` bytes if nothing is buffered; True if it shrank.

        The I/O layer calls it once the peer has been quiet for a moment: a
        peer sending large frames back to back keeps its grown buffer (a fresh
        one per frame costs more than the frame's copy), an idle one does not.
        """
        if self._start != self._end or len(self._buf) <= self._small:
            return False
        self._start = self._end = 0
        self._resize(self._small)
        return True

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last get_buffer()."""
        if nbytes < 0 or self._end + nbytes > len(self._buf):
            raise ValueError("buffer_updated past the buffer")
        self._end += nbytes

    def feed(self, data: bytes) -> None:
        """Copy ``data`` in (for callers without recv_into); may raise ProtocolError.

        Frames are parsed as the buffer fills, so a stream of many frames fits
        through a buffer of one; complete frames are kept for next_frame().
        """
        view = memoryview(data)
        while view:
            if self.buffered >= HEADER_SIZE:
                self._check_header()
            space = self.get_buffer()
            if not space:
                raise refused(ZswapdError, "feed() with complete frames not taken out")
            n = min(len(space), len(view))
            space[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]
            if view:
                # Make room: frames already complete must be taken by the caller.
                self._pending.extend(self._drain())

    def _drain(self) -> list[Frame]:
        out = []
        while (frame := self._next()) is not None:
            out.append(frame)
        return out

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more data arrives.

        Raises:
            ProtocolError: the next header is malformed or claims too much.
        """
        if self._pending:
            return self._pending.pop(0)
        return self._next()

    def _check_header(self) -> tuple[int, int, int, int]:
        magic, version, op, _flags, status, request_id, length = HEADER.unpack_from(
            self._buf, self._start
        )
        if magic != MAGIC:
            # Not a header of this protocol: nothing in it can be trusted, id and op included.
            raise refused(InvalidRequestError, f"bad magic 0x{magic:04x}")
        # With the magic right, the id and op are where every version puts them:
        # the error answers them, so a pipelining client knows which request failed.
        if version != VERSION:
            raise ProtocolError(
                505,
                "bad_version",
                f"protocol version {version}; this side speaks {VERSION}",
                request_id,
                op,
            )
        base = op & ~RESPONSE
        # A client also takes an error frame of op 0x80 (one answering no request)
        # and the echo of an op it sent that the server did not know.
        known = base in _OPS or (self._responses and status != 0)
        if bool(op & RESPONSE) != self._responses or not known:
            raise refused(InvalidRequestError, f"unknown op 0x{op:02x}", request_id, op)
        if length > self.max_payload:
            raise refused(
                TooLargeError,
                f"payload of {length} bytes; at most {self.max_payload}",
                request_id,
                op,
            )
        return op, status, request_id, length

    def next_view(self) -> FrameView | None:
        """As :meth:`next_frame`, the payload a view into the receive buffer: no copy.

        The view is valid only until the next :meth:`get_buffer`, :meth:`feed`
        or :meth:`shrink` (the buffer's bytes may move then): take what is
        needed from it first.  For the I/O layer's hot path (a server answering
        at once, a client splitting a LOAD's pages straight out of it).

        Raises:
            ProtocolError: the next header is malformed or claims too much.
        """
        if self._pending:
            f = self._pending.pop(0)
            return FrameView(f.op, f.request_id, f.status, memoryview(f.payload))
        return self._take_view()

    def _take_view(self) -> FrameView | None:
        """The next whole frame in the buffer (feed()'s pending ones aside)."""
        if self.buffered < HEADER_SIZE:
            return None
        op, status, request_id, length = self._check_header()
        start = self._start + HEADER_SIZE
        end = start + length
        if end > self._end:
            return None
        self._start = end
        return FrameView(op, request_id, status, self._view[start:end])

    def _next(self) -> Frame | None:
        view = self._take_view()
        if view is None:
            return None
        return Frame(view.op, view.request_id, bytes(view.payload), view.status)


# -- the handshake ----------------------------------------------------------------------

# HELLO's answer: version, reserved, max payload, max requests in flight, page size.
_HELLO_REPLY = struct.Struct("<HHIII")
_HELLO_REQUEST = struct.Struct("<HH")  # lowest and highest version spoken; the token follows


@dataclass(frozen=True, slots=True)
class HelloReply:
    """What a server said of itself in answer to HELLO."""

    version: int
    max_payload: int
    max_in_flight: int
    page_size: int


def hello_request(token: str | None) -> bytes:
    """A client's HELLO payload: the versions it speaks, then its token (if any)."""
    return _HELLO_REQUEST.pack(VERSION, VERSION) + (token or "").encode()


def parse_hello_reply(payload: bytes) -> HelloReply:
    """The server's answer to HELLO.

    Raises:
        ProtocolError: too short to be one.
    """
    if len(payload) < _HELLO_REPLY.size:
        raise refused(InvalidRequestError, "a HELLO answer too short to read")
    version, _, max_payload, max_in_flight, page_size = _HELLO_REPLY.unpack_from(payload)
    return HelloReply(version, max_payload, max_in_flight, page_size)


class Handshake:
    """The server's side of HELLO, for one connection.

    Until a HELLO succeeds no other frame is served; after it, HELLO is refused.
    Every refusal is a :class:`ProtocolError`: the stream is not trusted further.

    Args:
        token: the bearer token HELLO must carry (None: any or none).
        max_payload, max_in_flight: what the answer tells the client.
    """

    def __init__(self, token: str | None, max_payload: int, max_in_flight: int) -> None:
        self._token = None if token is None else token.encode()
        self._reply = _HELLO_REPLY.pack(VERSION, 0, max_payload, max_in_flight, 4096)
        self.greeted = False

    def receive(self, frame: Frame) -> bytes | None:
        """The encoded answer if ``frame`` is the HELLO; None for a request to serve.

        Raises:
            ProtocolError: a request before HELLO (400), a second HELLO (400), a
                short one (400), no common version (505), a wrong token (401).
        """
        if self.greeted:
            if frame.op == Op.HELLO:
                raise refused(InvalidRequestError, "HELLO was already received")
            return None
        if frame.op != Op.HELLO:
            raise refused(InvalidRequestError, "the first frame must be HELLO")
        rid, payload = frame.request_id, frame.payload
        if len(payload) < _HELLO_REQUEST.size:
            raise refused(InvalidRequestError, "HELLO needs min and max version", rid)
        low, high = _HELLO_REQUEST.unpack_from(payload)
        if not low <= VERSION <= high:
            raise ProtocolError(505, "bad_version", f"this server speaks version {VERSION}", rid)
        given = payload[_HELLO_REQUEST.size :]
        if self._token is not None and not hmac.compare_digest(given, self._token):
            raise refused(UnauthorizedError, "a valid token is required", rid)
        self.greeted = True
        return encode(Op.HELLO | RESPONSE, rid, self._reply)
