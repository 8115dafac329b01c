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
dropped with the transport's buffer).

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

import asyncio
import collections
import json
import logging
import struct
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
from zswapd.offload import offload, run_in_thread, run_maintenance
from zswapd.pool import PAGE_SIZE
from zswapd.pools import PoolRegistry
from zswapd.protocol import (
    INITIAL_BUFFER,
    RESPONSE,
    Frame,
    FrameParser,
    Handshake,
    Op,
    ProtocolError,
    encode_error,
    encode_header,
    refused,
)

__all__ = ["WireConnection", "WireSettings", "start_wire_server"]

log = logging.getLogger("zswapd")
_OP_NAMES = {int(op): op.name.lower() for op in Op}
_BACKLOG = 1024  # as server.bind() listens
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


def _handles(payload: bytes, cap: int) -> list[int]:
    if not payload or len(payload) % 8:
        raise InvalidRequestError(f"{len(payload)} bytes is not a non-empty list of u64 handles")
    if len(payload) // 8 > cap:
        # The answer to a LOAD is 4096 bytes a handle: bound it as a STORE is bounded.
        raise TooLargeError(f"{len(payload) // 8} handles; at most {cap} a request")
    return list(struct.unpack(f"<{len(payload) // 8}Q", payload))


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
        if self.closing:
            return  # answering nothing more: what arrives is not queued
        try:
            while (frame := self.parser.next_frame()) is not None:
                self.queue.append(frame)
                self.queued_bytes += len(frame.payload)
        except ProtocolError as exc:
            self._fail(exc)
            return
        self.wakeup.set()
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
        for timer in (self.handshake_timer, self.shrink_timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        self.handshake_timer = self.shrink_timer = self.write_timer = None
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

    def _handshake_expired(self) -> None:
        if self.greeted or self.closing:
            return
        timeout = self.settings.handshake_timeout
        self._close_unasked(408, "handshake_timeout", f"no HELLO within {timeout:g} s")

    # -- requests ----------------------------------------------------------------------

    async def _serve(self) -> None:
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
            # Header and payload as two writes: a 4 MiB answer is not copied again
            # just to put 16 bytes in front of it (a LOAD's is one buffer already).
            for part in reply:
                self.transport.write(part)
            self.last_active = time.monotonic()
            if self.settings.observe is not None:
                op = _OP_NAMES.get(frame.op, "unknown")
                self.settings.observe("wire", op, time.perf_counter() - start)
            # Not held while waiting for the next request: an idle connection
            # keeps no payload and no answer alive.
            del frame, reply

    @property
    def greeted(self) -> bool:
        return self.handshake.greeted

    async def _answer(self, frame: Frame) -> tuple[bytes, ...]:
        op, rid, payload = frame.op, frame.request_id, frame.payload
        hello = self.handshake.receive(frame)  # ProtocolError: closed by the caller
        if hello is not None:
            if self.handshake_timer is not None:
                self.handshake_timer.cancel()
            return (hello,)
        try:
            if op == Op.LOAD:
                return (await self._load(rid, payload),)
            body = await self._dispatch(op, payload)
        except StaleHandleError as exc:
            # Handles are random; a client naming stale ones again and again is
            # guessing them: answered, then, past the bound, cut off.
            self.stale_requests += 1
            detail = str(exc)
            if self.stale_requests > self.settings.max_stale_handles:
                detail += (
                    f"; {self.stale_requests} requests with stale handles on this "
                    "connection: closing it"
                )
                self._answer_no_more()
            return (encode_error(op, rid, exc.status, exc.code, detail),)
        except ZswapdError as exc:
            return (encode_error(op, rid, exc.status, exc.code, str(exc)),)
        except Exception as exc:  # a bug: answer it, keep the connection
            log.exception("wire request failed")
            return (encode_error(op, rid, 500, "internal", f"{type(exc).__name__}: {exc}"),)
        return encode_header(op | RESPONSE, rid, len(body)), body

    async def _load(self, rid: int, payload: bytes) -> bytes:
        """A LOAD's whole answer frame, its pages decompressed straight into it.

        bytes, not a bytearray: the event loop's transport writes a bytearray
        answer ~1.6x slower (measured: LOAD at 0.085 of lz4 decompress against
        0.13), so the compiled loops fill a new bytes object before anyone sees it.
        """
        pool = self.registry.get(self.pool_name)
        wanted = _handles(payload, self.settings.max_pages_per_request)
        header = encode_header(Op.LOAD | RESPONSE, rid, len(wanted) * PAGE_SIZE)
        answer: bytes = await offload(len(wanted), pool.load_frame, wanted, header)
        return answer

    async def _dispatch(self, op: int, payload: bytes) -> bytes:
        if op == Op.USE_POOL:
            name = payload.decode(errors="replace")
            try:
                check_pool_name(name)
            except ConfigError as exc:  # a name no pool can have: 400, as over HTTP
                raise InvalidRequestError(str(exc)) from None
            self.registry.get(name)  # UnknownPoolError if absent
            self.pool_name = name
            return b""
        pool = self.registry.get(self.pool_name)
        if op == Op.STORE:
            if not payload or len(payload) % PAGE_SIZE:
                raise PageSizeError(f"{len(payload)} bytes is not a whole number of pages")
            handles = await offload(len(payload) // PAGE_SIZE, pool.store, payload)
            return struct.pack(f"<{len(handles)}Q", *handles)
        if op == Op.FREE:
            doomed = _handles(payload, self.settings.max_pages_per_request)
            await offload(len(doomed), pool.free, doomed)
            return b""
        if op in (Op.STATS, Op.COMPACT) and payload:
            raise InvalidRequestError(f"{len(payload)} bytes of payload; this op takes none")
        if op == Op.STATS:
            # Rendering the class table is work too: off the event loop with the rest.
            return await run_in_thread(lambda: json.dumps(pool.stats().to_dict()).encode())
        if op == Op.COMPACT:
            released = await run_maintenance(pool.compact)
            return struct.pack("<Q", released)
        raise refused(InvalidRequestError, f"unknown op 0x{op:02x}")


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
