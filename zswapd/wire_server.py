"""The wire protocol's server: thin asyncio glue over the sans-IO core.

One :class:`WireConnection` per client, an ``asyncio.BufferedProtocol``: the
kernel copies received bytes straight into the parser's preallocated buffer
(no intermediate bytes objects), whole frames are queued, and one task per
connection answers them in order.  Reading pauses while the queue holds
``max_in_flight`` frames or two payloads' worth of bytes, and while the
transport's write buffer is over its high-water mark, so a connection's memory
stays bounded whatever the peer does.  A framing error gets an error frame and
the connection is closed; other connections carry on.

A connection that has not completed HELLO within ``handshake_timeout`` seconds
is sent a 408 error frame and closed, so silent sockets cannot pile up; one
that sends more than ``max_stale_handles`` requests naming stale handles (a
client guessing handles) has the last answered, then is closed.  The same
``handshake_timeout`` is the write deadline: a peer that leaves its answers
unread, so that writing stays paused that long, is aborted (its unsent answer
dropped with the transport's buffer); and the frame deadline: a frame begun
must be whole within it, or the connection is sent a 408 ``frame_timeout``
error frame and closed, since a peer that stops part way through a frame
would otherwise hold a receive buffer grown to what its header claims (up to
a payload's cap) for as long as it liked (time the server itself stops
reading, its queue full, does not count).

Past ``max_connections`` the connection idle longest (nothing queued, being
answered or unsent; those that have not sent HELLO first) is sent a 503
``evicted`` error frame and closed to make room, as the HTTP frontend does; a
newcomer is refused 503 only when every connection is busy.

A closed connection must be freed by reference counting at once, without
waiting for the cyclic garbage collector: ``connection_lost`` drops the task,
the timers, the queue and the transport, which would otherwise keep the
connection (and an unsent 4 MiB answer) alive in a cycle through the
cancelled task's traceback.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import json
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zswapd.config import check_pool_name
from zswapd.errors import (
    ConfigError,
    InvalidRequestError,
    PageSizeError,
    StaleHandleError,
    TooLargeError,
    ZswapdError,
)
from zswapd.offload import offload, run_in_thread, run_maintenance, runs_inline
from zswapd.pool import PAGE_SIZE
from zswapd.pools import PoolRegistry
from zswapd.protocol import (
    INITIAL_BUFFER,
    RESPONSE,
    Frame,
    FrameParser,
    FrameView,
    Handshake,
    Op,
    ProtocolError,
    encode,
    encode_error,
    encode_header,
    refused,
)

__all__ = ["WireConnection", "WireSettings", "start_wire_server"]

log = logging.getLogger("zswapd")
_OP_NAMES = {int(op): op.name.lower() for op in Op}
# array("Q") is the wire's u64 where the host is little-endian with 8-byte
# unsigned long longs (x86-64, aarch64): one C loop instead of struct's format.
_NATIVE_U64 = sys.byteorder == "little" and array.array("Q").itemsize == 8
_BACKLOG = 1024  # as server.bind() listens
# SO_SNDBUF asked of a connection's socket: one LOAD answer run on the loop
# (INLINE_PAGES pages and its header) fits (see _widen_send_buffer).
_SEND_BUFFER = 256 * 1024
# Seconds a connection with nothing to answer keeps a receive buffer grown for a
# large frame: long enough for a client's next request, short for an idle one.
_SHRINK_AFTER = 0.5


@dataclass(frozen=True)
class WireSettings:
    max_pages_per_request: int = 1024
    max_in_flight: int = 64
    max_connections: int = 1024
    token: str | None = None
    # Seconds a connection has to complete HELLO; then it is closed.  Also the
    # write deadline: writing paused this long (answers unread), it is aborted.
    handshake_timeout: float = 10.0
    # Requests naming a stale handle one connection may send; past it, closed.
    max_stale_handles: int = 64
    # Told of every request: (interface, op, seconds); metrics hook in here.
    observe: Callable[[str, str, float], None] | None = None

    @property
    def max_payload(self) -> int:
        return self.max_pages_per_request * PAGE_SIZE


# Requests whose pool work may run at once on the loop (see offload.runs_inline).
_INLINE_OPS = frozenset((Op.STORE, Op.LOAD, Op.FREE))
# A request's payload: bytes once queued, a view into the receive buffer when
# answered at once.
Buffer = bytes | memoryview


def _widen_send_buffer(transport: asyncio.BaseTransport) -> None:
    """Let the kernel take a whole LOAD answer of INLINE_PAGES pages in one write.

    A Unix socket's default send buffer (about 208 KiB) is smaller than a
    64-page answer (256 KiB): each was written in part, the rest kept by the
    transport, and the next answer then paused writing, sending pipelined
    requests through the task: measured, 20 to 30% more of the server's time
    per loaded page.  The kernel doubles the value it is given (for its own
    bookkeeping) and caps it at net.core.wmem_max; a buffer already larger is
    left alone.  What a peer that never reads can make the kernel hold grows
    by at most this much a connection (the write deadline still cuts it off).
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < _SEND_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)


def _handles(payload: Buffer, cap: int) -> list[int]:
    n = len(payload)
    if not n or n % 8:
        raise InvalidRequestError(f"{n} bytes is not a non-empty list of u64 handles")
    if n // 8 > cap:
        # The answer to a LOAD is 4096 bytes a handle: bound it as a STORE is bounded.
        raise TooLargeError(f"{n // 8} handles; at most {cap} a request")
    if not _NATIVE_U64:
        return list(struct.unpack(f"<{n // 8}Q", payload))
    handles = array.array("Q")
    handles.frombytes(payload)  # any buffer: bytes, or a view of the receive buffer
    return handles.tolist()


def _page_count(payload: Buffer) -> int:
    """Pages in a STORE's payload (PageSizeError unless whole pages, at least one)."""
    if not payload or len(payload) % PAGE_SIZE:
        raise PageSizeError(f"{len(payload)} bytes is not a whole number of pages")
    return len(payload) // PAGE_SIZE


def _u64s(values: list[int]) -> bytes:
    """Handles as the wire's little-endian u64s."""
    if _NATIVE_U64:
        return array.array("Q", values).tobytes()
    return struct.pack(f"<{len(values)}Q", *values)


class WireConnection(asyncio.BufferedProtocol):
    """One client connection."""

    def __init__(
        self, registry: PoolRegistry, settings: WireSettings, open_conns: set[WireConnection]
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.open_conns = open_conns  # shared by every connection of the server
        self.counted = False
        self.parser = FrameParser(settings.max_payload)
        self.queue: collections.deque[Frame] = collections.deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.pool_name = "default"
        self.handshake = Handshake(settings.token, settings.max_payload, settings.max_in_flight)
        self.reading_paused = False
        self.writing_paused = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.closing = False
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.shrink_timer: asyncio.TimerHandle | None = None
        self.write_timer: asyncio.TimerHandle | None = None
        self.frame_timer: asyncio.TimerHandle | None = None
        self.stale_requests = 0  # requests answered 404 stale_handle
        self.answering = False  # a request taken off the queue, not yet written
        self.last_active = time.monotonic()  # bytes received or an answer written

    # -- asyncio protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = transport  # type: ignore[assignment]
        if len(self.open_conns) >= self.settings.max_connections and not self._make_room():
            assert self.transport is not None
            # Refused clearly, before anything is read, and only when every
            # connection is busy: idle ones make room instead.
            self.transport.write(
                encode_error(
                    0,  # before any request is read: an answer to none
                    0,
                    503,
                    "too_many_connections",
                    f"at most {self.settings.max_connections} connections; try again later",
                )
            )
            self.closing = True
            self.transport.close()
            self.transport = None
            return
        self.open_conns.add(self)
        self.counted = True
        _widen_send_buffer(transport)
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._serve())
        self.handshake_timer = loop.call_later(
            self.settings.handshake_timeout, self._handshake_expired
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.parser.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.parser.buffer_updated(nbytes)
        self.last_active = time.monotonic()
        answered = 0
        took = False
        while not self.closing:  # once closing, what arrives is not answered
            try:
                view = self.parser.next_view()
            except ProtocolError as exc:
                self._fail(exc)
                return
            if view is None:
                break
            took = True
            # At once, from the receive buffer, when nothing is ahead of it (answers
            # stay in order) and the peer reads its answers; the task otherwise.
            # Bounded per callback, so that a buffer full of small requests
            # cannot keep the loop from other connections.
            if (
                not self.queue
                and not self.answering
                and not self.writing_paused
                and answered < self.settings.max_in_flight
            ):
                start = time.perf_counter()
                try:
                    reply = self._answer_now(view)
                except ProtocolError as exc:
                    exc.request_id, exc.op = view.request_id, view.op
                    self._fail(exc)
                    return
                if reply is not None:
                    answered += 1
                    self._send(view.op, reply, start)
                    continue
            self.queue.append(Frame(view.op, view.request_id, bytes(view.payload), view.status))
            self.queued_bytes += len(view.payload)
        self._watch_frame(took)
        if self.queue or self.closing:
            self.wakeup.set()
        elif not self.answering:
            self._shrink_later()
        self._flow()

    def eof_received(self) -> bool | None:
        self.closing = True
        self.wakeup.set()
        return True  # keep the write side open to answer what is queued

    def connection_lost(self, exc: Exception | None) -> None:
        # Everything that could keep this connection in a reference cycle is
        # dropped here, so that reference counting frees it (and any answer it
        # held) at once: the cancelled task's traceback holds _serve's frame,
        # which holds self, which held the task.
        self.closing = True
        for timer in (self.handshake_timer, self.shrink_timer, self.write_timer, self.frame_timer):
            if timer is not None:
                timer.cancel()
        self.handshake_timer = self.shrink_timer = self.write_timer = self.frame_timer = None
        self._uncount()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.queue.clear()
        self.queued_bytes = 0
        self.transport = None
        self.wakeup.set()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.can_write.clear()
        if self.write_timer is None:
            loop = asyncio.get_running_loop()
            self.write_timer = loop.call_later(self.settings.handshake_timeout, self._write_expired)
        self._flow()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.can_write.set()
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        self._flow()

    # -- flow control ------------------------------------------------------------------

    def _flow(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        full = (
            len(self.queue) >= self.settings.max_in_flight
            or self.queued_bytes >= 2 * self.settings.max_payload
            or self.writing_paused
            or self.closing
        )
        if full and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        elif not full and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False

    def _fail(self, exc: ProtocolError) -> None:
        """A framing error: answer it and close (queued requests are dropped)."""
        if self.transport is None:
            return
        self.transport.write(encode_error(exc.op, exc.request_id, exc.status, exc.code, str(exc)))
        self._answer_no_more()
        self.transport.close()

    def _answer_no_more(self) -> None:
        """Drop what is queued and read nothing more; _serve closes once written."""
        self.queue.clear()
        self.queued_bytes = 0
        self.closing = True
        self.wakeup.set()
        self._flow()

    def _shrink_later(self) -> None:
        """Give back a grown receive buffer if the peer stays quiet for a moment."""
        if self.parser.capacity <= INITIAL_BUFFER or self.shrink_timer is not None:
            return

        def shrink() -> None:
            self.shrink_timer = None
            if not self.parser.shrink() and self.parser.capacity > INITIAL_BUFFER:
                self._shrink_later()  # a frame was arriving: look again later

        loop = asyncio.get_running_loop()
        self.shrink_timer = loop.call_later(_SHRINK_AFTER, shrink)

    def _uncount(self) -> None:
        if self.counted:
            self.open_conns.discard(self)
            self.counted = False

    def _idle(self) -> bool:
        """Nothing queued, being answered or unsent: closing it loses no work."""
        return (
            not self.closing
            and not self.queue
            and not self.answering
            and self.transport is not None
            and self.transport.get_write_buffer_size() == 0
        )

    def _make_room(self) -> bool:
        """Close the connection idle longest (pre-HELLO first); False if none is idle."""
        idle = [c for c in self.open_conns if c._idle()]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.greeted, c.last_active))
        victim._evict()
        return True

    def _close_unasked(self, status: int, code: str, detail: str) -> None:
        """Send an error frame that answers no request (op 0x80, id 0), then close."""
        if self.transport is None:
            return
        self.transport.write(encode_error(0, 0, status, code, detail))
        self._answer_no_more()
        self.transport.close()

    def _evict(self) -> None:
        self._uncount()  # its slot is the newcomer's now
        self._close_unasked(
            503, "evicted", "idle longest while the server is at its connection limit; reconnect"
        )

    def _write_expired(self) -> None:
        """Answers left unread for the write deadline: drop them with the connection."""
        self.write_timer = None
        if self.transport is not None and self.writing_paused:
            self.transport.abort()  # drops the write buffer; connection_lost follows

    def _watch_frame(self, took: bool) -> None:
        """The frame deadline: armed when a frame is begun (bytes left in the
        parser after every whole frame is out), disarmed once it is whole."""
        partial = self.parser.buffered > 0
        if self.frame_timer is not None and (took or not partial):
            self.frame_timer.cancel()  # that frame is whole; a new one starts now
            self.frame_timer = None
        if partial and self.frame_timer is None and not self.closing:
            loop = asyncio.get_running_loop()
            self.frame_timer = loop.call_later(self.settings.handshake_timeout, self._frame_expired)

    def _frame_expired(self) -> None:
        self.frame_timer = None
        if self.closing or self.parser.buffered == 0:
            return
        if self.reading_paused:
            # The server stopped reading (its queue full), not the peer sending.
            self._watch_frame(False)
            return
        timeout = self.settings.handshake_timeout
        self._close_unasked(408, "frame_timeout", f"a frame not completed within {timeout:g} s")

    def _handshake_expired(self) -> None:
        if self.greeted or self.closing:
            return
        timeout = self.settings.handshake_timeout
        self._close_unasked(408, "handshake_timeout", f"no HELLO within {timeout:g} s")

    # -- requests ----------------------------------------------------------------------

    async def _serve(self) -> None:
        served = 0
        while True:
            while not self.queue:
                if self.closing:
                    if self.transport is not None:
                        self.transport.close()
                    return
                self.wakeup.clear()
                self._shrink_later()
                await self.wakeup.wait()
            # A peer that does not read its answers stops us answering: the
            # transport's buffer stays near its high-water mark.
            if not self.can_write.is_set():
                await self.can_write.wait()
            if not self.queue:
                continue  # dropped while waiting (closed or evicted)
            frame = self.queue.popleft()
            self.queued_bytes -= len(frame.payload)
            self.answering = True
            self._flow()
            start = time.perf_counter()
            try:
                reply = await self._answer(frame)
            except ProtocolError as exc:
                exc.request_id, exc.op = frame.request_id, frame.op
                self._fail(exc)
                return
            finally:
                self.answering = False
            if self.transport is None or self.transport.is_closing():
                return
            self._send(frame.op, reply, start)
            # Not held while waiting for the next request: an idle connection
            # keeps no payload and no answer alive.
            del frame, reply
            served += 1
            if served % self.settings.max_in_flight == 0:
                # Requests run on the loop do not suspend this task: let the
                # other connections in between, as a callback's bound does.
                await asyncio.sleep(0)

    def _send(self, op: int, reply: tuple[bytes, ...], start: float) -> None:
        """Write an answer, and tell the metrics how long its request took."""
        if self.transport is None or self.transport.is_closing():
            return
        if len(reply) == 1:
            self.transport.write(reply[0])
        else:
            # Header and payload in one writev, not joined: a 4 MiB answer is
            # not copied again just to put 16 bytes in front of it.
            self.transport.writelines(reply)
        self.last_active = time.monotonic()
        if self.settings.observe is not None:
            self.settings.observe("wire", _OP_NAMES.get(op, "unknown"), time.perf_counter() - start)

    @property
    def greeted(self) -> bool:
        return self.handshake.greeted

    async def _answer(self, frame: Frame) -> tuple[bytes, ...]:
        """The answer to a queued request: its pool work run where offload() says."""
        op, rid, payload = frame.op, frame.request_id, frame.payload
        if not self.greeted or op == Op.HELLO:
            return self._hello(frame)  # ProtocolError: closed by the caller
        try:
            if op == Op.USE_POOL:
                self._use_pool(payload)
                return (encode(op | RESPONSE, rid),)
            if op in (Op.STATS, Op.COMPACT) and payload:
                raise InvalidRequestError(f"{len(payload)} bytes of payload; this op takes none")
            pool = self.registry.get(self.pool_name)
            if op == Op.STORE:
                handles = await offload(_page_count(payload), pool.store, payload)
                return (encode(op | RESPONSE, rid, _u64s(handles)),)
            if op == Op.LOAD:
                # The whole answer frame, its pages decompressed straight into it.
                wanted = _handles(payload, self.settings.max_pages_per_request)
                header = encode_header(op | RESPONSE, rid, len(wanted) * PAGE_SIZE)
                answer: bytes = await offload(len(wanted), pool.load_frame, wanted, header)
                return (answer,)
            if op == Op.FREE:
                doomed = _handles(payload, self.settings.max_pages_per_request)
                await offload(len(doomed), pool.free, doomed)
                return (encode(op | RESPONSE, rid),)
            if op == Op.STATS:
                # Rendering the class table is work too: off the event loop with the rest.
                body = await run_in_thread(lambda: json.dumps(pool.stats().to_dict()).encode())
                return encode_header(op | RESPONSE, rid, len(body)), body
            if op == Op.COMPACT:
                released = await run_maintenance(pool.compact)
                return (encode(op | RESPONSE, rid, struct.pack("<Q", released)),)
        except ZswapdError as exc:
            return self._refusal(op, rid, exc)
        except Exception as exc:  # a bug: answer it, keep the connection
            log.exception("wire request failed")
            return (encode_error(op, rid, 500, "internal", f"{type(exc).__name__}: {exc}"),)
        raise refused(InvalidRequestError, f"unknown op 0x{op:02x}")

    def _answer_now(self, view: FrameView) -> tuple[bytes, ...] | None:
        """The answer to a request made at once, from the receive buffer; None if
        its work belongs off the loop (the task answers it, in order).

        Nothing is done before that is known, so None changes nothing.  The
        pool work is what :meth:`_answer` would run inline too (at most
        INLINE_PAGES pages, a pool neither busy nor disk-bound): only the hop
        through the task is saved, and the copy of the request's payload for
        LOAD and FREE.
        """
        op, rid, payload = view.op, view.request_id, view.payload
        if not self.greeted or op == Op.HELLO:
            return self._hello(Frame(op, rid, bytes(payload)))
        try:
            if op == Op.USE_POOL:
                self._use_pool(payload)
                return (encode(op | RESPONSE, rid),)
            if op not in _INLINE_OPS:
                return None
            pool = self.registry.get(self.pool_name)
            if op == Op.STORE:
                if not runs_inline(_page_count(payload), pool.store):
                    return None
                # bytes: the compiled page store slices bytes into pages without a copy.
                handles = pool.store(bytes(payload))
                return (encode(op | RESPONSE, rid, _u64s(handles)),)
            wanted = _handles(payload, self.settings.max_pages_per_request)
            if op == Op.LOAD:
                if not runs_inline(len(wanted), pool.load_frame):
                    return None
                header = encode_header(op | RESPONSE, rid, len(wanted) * PAGE_SIZE)
                return (pool.load_frame(wanted, header),)
            if not runs_inline(len(wanted), pool.free):
                return None
            pool.free(wanted)
            return (encode(op | RESPONSE, rid),)
        except ZswapdError as exc:
            return self._refusal(op, rid, exc)
        except Exception as exc:  # a bug: answer it, keep the connection
            log.exception("wire request failed")
            return (encode_error(op, rid, 500, "internal", f"{type(exc).__name__}: {exc}"),)

    def _hello(self, frame: Frame) -> tuple[bytes, ...]:
        """HELLO's answer (ProtocolError for HELLO out of turn or refused)."""
        hello = self.handshake.receive(frame)
        if hello is None:
            raise refused(InvalidRequestError, f"unknown op 0x{frame.op:02x}")
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        return (hello,)

    def _use_pool(self, payload: Buffer) -> None:
        name = bytes(payload).decode(errors="replace")
        try:
            check_pool_name(name)
        except ConfigError as exc:  # a name no pool can have: 400, as over HTTP
            raise InvalidRequestError(str(exc)) from None
        self.registry.get(name)  # UnknownPoolError if absent
        self.pool_name = name

    def _refusal(self, op: int, rid: int, exc: ZswapdError) -> tuple[bytes, ...]:
        """The error frame answering a request the store refused."""
        detail = str(exc)
        if isinstance(exc, StaleHandleError):
            # Handles are random; a client naming stale ones again and again is
            # guessing them: answered, then, past the bound, cut off.
            self.stale_requests += 1
            if self.stale_requests > self.settings.max_stale_handles:
                detail += (
                    f"; {self.stale_requests} requests with stale handles on this "
                    "connection: closing it"
                )
                self._answer_no_more()
        return (encode_error(op, rid, exc.status, exc.code, detail),)


async def start_wire_server(
    sock: Any, registry: PoolRegistry, settings: WireSettings
) -> asyncio.Server:
    """Serve the wire protocol on an already bound, listening Unix socket."""
    loop = asyncio.get_running_loop()
    open_conns: set[WireConnection] = set()
    # asyncio listens again with its own backlog (100 by default): a burst of
    # clients past it would be refused (EAGAIN) before the loop could accept them.
    return await loop.create_unix_server(
        lambda: WireConnection(registry, settings, open_conns), sock=sock, backlog=_BACKLOG
    )
