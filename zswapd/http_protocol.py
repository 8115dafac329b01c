"""HTTP connections no client can hold hostage: uvicorn's httptools protocol with
a deadline on each request head and body, and a connection table per server.

Theory of operation.  An open connection costs a file descriptor and buffers;
the daemon keeps at most ``max_connections`` of them.  A client that opens
connections and then sends a byte a second (slowloris) must not be able to keep
those slots: so every connection is, at any time, in one of three states,
depending on whose turn it is.

- *Waiting for a head* (fresh, idle between keep-alive requests, or with a
  partial head): the client's turn.  The head must be complete within
  ``header_timeout`` of the wait starting, however the bytes trickle in; then
  the connection is closed (with a 408 if a head was begun).  These connections
  are also the ones a newcomer may take the place of: past ``max_connections``
  the one that has waited longest is closed, as servers strangers can reach do,
  rather than refusing the newcomer.
  A head is also bounded in size: past ``MAX_HEAD_BYTES`` (request line and
  headers) it is refused with ``431 header_too_large`` and the connection is
  closed.  The bytes are counted as they arrive, before httptools sees them, so
  neither the parser's buffers nor uvicorn's header list can grow past it.
- *Receiving a body*: the client's turn again, bounded by the body's size.  The
  rule: ``t`` seconds after the head, at least ``(t - header_timeout) *
  min_body_rate`` bytes of body must have arrived, so a body of ``n`` bytes has
  ``header_timeout + n / min_body_rate`` seconds (chunked bodies alike: the
  deadline moves with what has arrived).  Time the server itself stops reading
  (back-pressure, a queued pipelined request) is not the client's: the clock
  restarts.
- *Being served*: the server's turn; no timer (work is bounded by the request
  caps), except that a client which leaves its answer unread (the transport's
  buffer stays above its high-water mark) for a whole ``header_timeout`` is cut
  off, and so is one whose last answer is still unread that long after the
  connection was closed.

Past ``max_connections``, failing an idle connection, the oldest body that has
averaged below ``min_body_rate`` for a second or more is cut off (408) for the
newcomer: a slowloris that completes its heads gets no more than one that does
not.  Only when every connection is being served or receiving a body at a
proper rate does a newcomer get ``503 too_many_connections`` (JSON, as the
OpenAPI document says), and ``Connection: close``.

A body nobody will read does not hold a connection either: when the answer to
a request is complete while its body is still arriving (an early 401, 400 or
413 from the guard, or any error), the connection is closed after the answer
instead of draining the rest, however fast the client sends it.  A close while
the client may still be sending is a *lingering* one, as nginx does: the
answer is followed by a FIN, and what the client sends is discarded for up to
``LINGER_SECONDS``, so that the kernel does not reset the connection (losing
the answer) because of unread bytes.  A lingering connection no longer counts
against ``max_connections``.

A connection also carries a count of requests that named a stale or forged
handle (``stale_handle``, 404): past ``max_stale_handles`` the HTTP layer
answers with ``Connection: close``, so brute-forcing handles costs a reconnect
every few dozen guesses (:func:`note_stale_handle`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = [
    "CONNECTION_EXTENSION",
    "MAX_HEAD_BYTES",
    "MIN_BODY_RATE",
    "ConnectionTable",
    "GuardedHttpProtocol",
    "HttpLimits",
    "note_stale_handle",
    "protocol_class",
]

# A body must average at least this, past its grace of header_timeout: 64 KiB/s
# lets the largest default request (1024 pages, 4 MiB) take 64 s, enough for
# any link a swap client sits behind, while a trickle of a few bytes a second
# is cut off after the grace.
MIN_BODY_RATE = 64 * 1024

# A request head (request line and headers) may be at most this many bytes.
# nginx allows 4 x 8 KiB header buffers (32 KiB) by default, h11 16 KiB; no
# client of this API sends more than a few hundred bytes.  64 KiB is generous
# for any proxy in between while keeping a connection's head buffers bounded:
# httptools and uvicorn keep ~15 bytes per header byte (a list of tuples), so
# at most ~1 MiB per connection.  Bytes are counted before httptools parses
# them; those that arrive in the same read as the end of the previous request
# are not (the parser does not say where it ended), so a pipelined head can
# reach at most twice this.
MAX_HEAD_BYTES = 64 * 1024

# How long a connection closed while the client may still be sending goes on
# reading (and discarding) after its answer, so the client gets to read it.
LINGER_SECONDS = 2.0


def linger_cap(max_connections: int) -> int:
    """Lingering connections at once, beyond --max-connections: each holds a
    descriptor for LINGER_SECONDS, and a client refused at a fast rate (431s)
    could otherwise pile them past RLIMIT_NOFILE; past it a close is immediate."""
    return max(16, max_connections // 4)


# A body is judged on its average rate only after this many seconds: a body
# that has just begun has had no chance to show its rate.
BODY_RATE_WINDOW = 1.0

# The ASGI scope key (under "extensions") of a connection's ConnectionState.
CONNECTION_EXTENSION = "zswapd.connection"


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP server allows each connection, and how many connections.

    Attributes:
        max_connections: open connections at most; past it the longest-waiting
            idle one (else the oldest slow body) is closed, or the newcomer
            gets 503 if every connection is busy.
        header_timeout: seconds a request head has to arrive, and the grace a
            body gets before ``min_body_rate`` applies.
        min_body_rate: bytes per second a body must average past its grace.
        max_stale_handles: requests failing with stale_handle a connection may
            send; the next such answer closes it.
    """

    max_connections: int = 1024
    header_timeout: float = 10.0
    min_body_rate: int = MIN_BODY_RATE
    max_stale_handles: int = 64


class ConnectionState:
    """What the app may know of its connection (reached through the ASGI scope)."""

    __slots__ = ("max_stale_handles", "stale_handles")

    def __init__(self, max_stale_handles: int) -> None:
        self.max_stale_handles = max_stale_handles
        self.stale_handles = 0


def note_stale_handle(scope: Any) -> bool:
    """Count a request that failed with stale_handle; True when it must close.

    A scope from another server (tests' in-process transports) has no
    connection state: nothing is counted and nothing closes.
    """
    state = (scope.get("extensions") or {}).get(CONNECTION_EXTENSION)
    if not isinstance(state, ConnectionState):
        return False
    state.stale_handles += 1
    return state.stale_handles > state.max_stale_handles


class ConnectionTable:
    """One server's connections: how many are open, those waiting for a request
    head and those receiving a body, each longest-waiting first (a dict keeps
    insertion order, so finding the oldest and moving one to the back are O(1))."""

    __slots__ = ("lingering", "open", "receiving", "waiting")

    def __init__(self) -> None:
        self.open = 0
        self.lingering = 0
        self.waiting: dict[GuardedHttpProtocol, None] = {}
        self.receiving: dict[GuardedHttpProtocol, None] = {}

    def make_room(self) -> bool:
        """Close one connection for a newcomer: the one that has waited longest
        for a head, else the oldest body still below the minimum rate (a body
        slowloris within its grace); False if every connection is busy."""
        for victim in self.waiting:
            victim.evict()
            return True
        for victim in self.receiving:
            if victim.behind():
                victim.evict()
                return True
        return False


def _answer(status: bytes, code: str, detail: str) -> bytes:
    """A whole JSON error response that closes the connection."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )
    return head + body


_Wait = Literal["head", "body", None]


class _LingeringTransport:
    """The socket transport as the protocol and uvicorn see it: a close while
    the client may still be sending lingers (see the module's docstring),
    including uvicorn's own close after a ``Connection: close`` answer."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if self._protocol.mid_request():
            self._protocol.linger(self._transport)
        else:
            self._transport.close()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and a connection table.

    Use a subclass from :func:`protocol_class`, which binds the limits and the
    table of one server.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    table: ClassVar[ConnectionTable]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn = ConnectionState(self.limits.max_stale_handles)
        # Where the parser is: before a request's first byte, in its head, in its body.
        self._parsing: Literal["between", "head", "body"] = "between"
        self._wait: _Wait = None  # what the timer below is for
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._body_start = 0.0
        self._body_seen = 0
        self._head_bytes = 0  # bytes received since the current head began
        self._counted = False
        self.lingering = False

    # -- the connection's lifetime -----------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self.table.open += 1
        self._counted = True
        if self.table.open > self.limits.max_connections:
            # Take the place of an idle or slow connection, if there is one
            # (else this one is refused at its first head, unless one turns idle).
            self.table.make_room()
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._forget()

    def evict(self) -> None:
        """Close this idle or slow connection to make room for a newcomer."""
        if self._wait == "body":
            self._close_with_408(
                f"request body slower than {self.limits.min_body_rate} bytes/s "
                "while every connection is taken"
            )
        else:
            self._drop()

    def behind(self) -> bool:
        """Whether this body has averaged below min_body_rate over a second or more
        (not counting time the server itself stopped reading)."""
        age = self.loop.time() - self._body_start
        return (
            not self.flow.read_paused
            and age >= BODY_RATE_WINDOW
            and self._body_seen < age * self.limits.min_body_rate
        )

    def _drop(self, answer: bytes = b"") -> None:
        """Close now, after ``answer``; abort if the client leaves it unread a
        whole header_timeout (a close waits for the write buffer to drain)."""
        if answer:
            self.transport.write(answer)
        self._forget()
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self.loop.call_later(self.limits.header_timeout, self.transport.abort)

    def mid_request(self) -> bool:
        """Whether the client may be sending the rest of a request now."""
        return self._parsing != "between"

    def linger(self, transport: asyncio.Transport) -> None:
        """Close after the answer without resetting: send a FIN, discard what
        still arrives, and close for good after LINGER_SECONDS."""
        self.lingering = True
        self._forget()
        if self.table.lingering >= linger_cap(self.limits.max_connections):
            transport.close()  # too many already: the answer may be lost to a reset
            return
        self.table.lingering += 1
        self.flow.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self._end_linger, transport)

    def _end_linger(self, transport: asyncio.Transport) -> None:
        self.table.lingering -= 1
        transport.close()
        if transport.get_write_buffer_size():
            # The answer is still unread: as _drop, give up on it in time.
            self.loop.call_later(self.limits.header_timeout, transport.abort)

    def _forget(self) -> None:
        self._set_timer(None)
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self.table.waiting.pop(self, None)
        self.table.receiving.pop(self, None)
        if self._counted:
            self._counted = False
            self.table.open -= 1

    # -- parser events -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a request that has been answered: discarded
        # Outside a body, feed the parser no more than the head may still
        # take, so that an endless head is refused before it is buffered.
        while data and self._parsing != "body":
            room = MAX_HEAD_BYTES - self._head_bytes
            if room <= 0:
                self._close_with(
                    b"431 Request Header Fields Too Large",
                    "header_too_large",
                    f"request head over the {MAX_HEAD_BYTES}-byte cap",
                )
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return  # a malformed request, already answered
        if data:
            super().data_received(data)
        self._update()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsing = "head"
        self.scope["extensions"] = {CONNECTION_EXTENSION: self._conn}  # type: ignore[dict-item]

    def on_headers_complete(self) -> None:
        self._parsing = "body"
        self.table.waiting.pop(self, None)  # no longer idle: never its own victim
        self._body_start = self.loop.time()
        self._body_seen = 0
        if self.table.open > self.limits.max_connections and not self.table.make_room():
            # Every other connection is busy: refuse this request, not a bystander.
            app, self.app = self.app, self._too_many_connections
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._parsing = "between"
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._parsing == "body" and self.cycle.response_complete:
            # Answered before its body was all here (the parser is still in the
            # body of the request just answered, not of a pipelined one): the
            # rest would only be drained, so a client sending an endless body
            # at a proper rate would hold the connection forever.  Close.
            self._drop()
        super().on_response_complete()
        self._update()

    async def _too_many_connections(self, scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps(
            {
                "error": "too_many_connections",
                "detail": f"at most {self.limits.max_connections} connections; try again later",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # -- deadlines ---------------------------------------------------------------------

    def _update(self) -> None:
        """Arm the timer for whoever's turn it is (called after every event batch)."""
        if self.transport is None or self.transport.is_closing():
            return
        serving = bool(self.pipeline) or (
            self.cycle is not None and not self.cycle.response_complete
        )
        if self._parsing == "body":
            wait: _Wait = "body"
        elif serving:
            wait = None  # the server's turn (a pipelined head waits with it)
        else:
            wait = "head"
        if wait == self._wait:
            return  # same wait as before: its deadline stands
        self.table.waiting.pop(self, None)
        self.table.receiving.pop(self, None)
        if wait == "head":
            self.table.waiting[self] = None
            self._set_timer("head", self.limits.header_timeout)
        elif wait == "body":
            self.table.receiving[self] = None
            self._set_timer("body", self._body_deadline() - self.loop.time())
        else:
            self._set_timer(None)

    def _body_deadline(self) -> float:
        grace = self.limits.header_timeout + self._body_seen / self.limits.min_body_rate
        return self._body_start + grace

    def _set_timer(self, wait: _Wait, delay: float = 0.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wait = wait
        if wait is not None:
            self._timer = self.loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            # Closed (uvicorn's keep-alive timeout, Connection: close) but not
            # gone: its last answer is still unread after all this time.
            self.transport.abort()
            return
        if self._wait == "head":
            if self._parsing == "head":
                detail = f"request head not complete within {self.limits.header_timeout:g} s"
                self._close_with_408(detail)
            else:
                self._drop()  # an idle connection: nothing to answer
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # The server stopped reading, not the client: start the clock again.
            self._body_start, self._body_seen = now, 0
        elif now >= self._body_deadline():
            detail = (
                f"request body slower than {self.limits.min_body_rate} bytes/s "
                f"after {self.limits.header_timeout:g} s"
            )
            self._close_with_408(detail)
            return
        self._set_timer("body", self._body_deadline() - now)

    def _close_with_408(self, detail: str) -> None:
        self._close_with(b"408 Request Timeout", "request_timeout", detail)

    def _close_with(self, status: bytes, code: str, detail: str) -> None:
        """Close now, with a JSON error unless an answer is already under way."""
        cycle = self.cycle
        answer = b""
        if cycle is None or cycle.response_complete or not cycle.response_started:
            answer = _answer(status, code, detail)
        if cycle is not None:
            # As connection_lost would: the app's pending receive() sees a
            # disconnect, and nothing it sends reaches the closing transport.
            cycle.disconnected = True
            cycle.message_event.set()
        self._drop(answer)

    # A client that does not read its answer: the transport stops the app's
    # writes past its high-water mark (64 KiB) and would wait forever, holding
    # the connection and the rest of the answer.  Reading nothing at all for a
    # header_timeout ends it.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.header_timeout, self.transport.abort
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None


def protocol_class(limits: HttpLimits) -> type[GuardedHttpProtocol]:
    """A protocol class for one server: its limits and its own connection table."""

    class Protocol(GuardedHttpProtocol):
        pass

    Protocol.limits = limits
    Protocol.table = ConnectionTable()
    return Protocol
