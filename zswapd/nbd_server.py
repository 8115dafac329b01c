"""NBD over asyncio: thin glue between sockets, the sans-IO core and the devices.

One :class:`NbdConnection` per client; several may serve one device at once
(CAN_MULTI_CONN is advertised: each request is atomic under the device's
lock, and FLUSH has nothing to wait for in memory).  Requests are answered in
order, one at a time per connection; reading pauses while one is being
served, so a connection holds at most one request's payload.

What a client can cost is bounded in every phase:

- at most ``max_connections`` connections; past it the oldest connection
  still in its handshake is dropped to make room, and when every connection
  is in transmission the newcomer is closed at once (NBD has no way to refuse
  before the greeting);
- a client has ``handshake_timeout`` seconds from connecting to reach
  transmission (NBD_OPT_GO or EXPORT_NAME), then it is dropped: idle or
  trickling connections cannot pile up;
- replies wait on the transport's write buffer: while it is over its
  high-water mark nothing more is parsed nor read, options included (a LIST
  reply is hundreds of times its request), so a client that does not read
  its replies stops being read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zswapd.device import Device, DeviceRegistry
from zswapd.errors import (
    InvalidRequestError,
    PoolLimitError,
    UnknownPoolError,
    ZswapdError,
)
from zswapd.nbd_protocol import (
    CMD_FLAG_FUA,
    CMD_FLAG_NO_HOLE,
    EINVAL,
    EIO,
    ENOSPC,
    ENOTSUP,
    Cmd,
    Command,
    NbdProtocolError,
    NbdServerConnection,
    OptionRequest,
    Phase,
)
from zswapd.offload import offload
from zswapd.pool import PAGE_SIZE

__all__ = ["NbdConnection", "NbdSettings", "start_nbd_server"]

log = logging.getLogger("zswapd")
# A larger READ is read and sent this much at a time, each piece once the last
# has drained: a client that stops reading holds one piece, not 32 MiB.
_PIECE = 1 << 20
KNOWN_CMD_FLAGS = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE


@dataclass(frozen=True)
class NbdSettings:
    max_connections: int = 1024
    # Seconds from connecting to transmission; then the connection is dropped.
    handshake_timeout: float = 10.0
    # Told of every request: (interface, op, seconds); metrics hook in here.
    observe: Callable[[str, str, float], None] | None = None


class NbdConnection(asyncio.Protocol):
    """One client connection: handshake, then commands answered in order."""

    def __init__(
        self, devices: DeviceRegistry, settings: NbdSettings, open_conns: dict[NbdConnection, None]
    ) -> None:
        self.devices = devices
        self.settings = settings
        self.observe = settings.observe
        # Every open connection of the server, oldest first (shared).
        self.open_conns = open_conns
        self.counted = False
        self.proto = NbdServerConnection()
        self.transport: Any = None
        self.device: Any = None
        self.queue: asyncio.Queue[Command | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        # A command is queued or being served: parse and read nothing more.
        self.busy = False
        self.reading_paused = False
        # Cleared while the transport's write buffer is full: answer nothing more.
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if len(self.open_conns) >= self.settings.max_connections and not self._make_room():
            transport.abort()
            return
        self.open_conns[self] = None
        self.counted = True
        loop = asyncio.get_running_loop()
        self.deadline = loop.call_later(self.settings.handshake_timeout, self._handshake_expired)
        transport.write(self.proto.greeting())
        self.task = loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.proto.feed(data)
        except NbdProtocolError as exc:
            self._fail(exc)
            return
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proto.close()
        if self.counted:
            del self.open_conns[self]
            self.counted = False
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.task is not None:
            self.task.cancel()
            # The task's frame holds this connection: without this edge no cycle
            # keeps a closed connection (and what it read) alive until a full gc.
            self.task = None

    def _make_room(self) -> bool:
        """At the cap: drop the oldest connection still in its handshake.

        A client in transmission may sit idle for hours (a mounted device) and
        is never dropped; one that has not got that far is either slow or
        squatting a slot, and the newcomer is at least as likely to be real.
        """
        for conn in self.open_conns:
            if conn.proto.state is not Phase.TRANSMISSION:
                log.info(
                    "nbd: at %d connections: dropping one still in its handshake",
                    self.settings.max_connections,
                )
                conn.transport.abort()
                conn.connection_lost(None)  # counted out now, not when the loop gets to it
                return True
        return False

    def pause_writing(self) -> None:
        self.can_write.clear()
        self._flow()

    def resume_writing(self) -> None:
        self.can_write.set()
        self._pump()

    # -- flow control ------------------------------------------------------------------

    def _pump(self) -> None:
        """Act on buffered input while we may: not while a command is being served,
        nor while the peer leaves our replies unread."""
        try:
            while self.can_write.is_set() and not self.busy and not self.transport.is_closing():
                event = self.proto.next_event()
                if event is None:
                    break
                if isinstance(event, OptionRequest):
                    self._option(event)
                    if self.proto.state is Phase.TRANSMISSION and self.deadline:
                        self.deadline.cancel()
                        self.deadline = None
                else:
                    self.busy = True
                    self.queue.put_nowait(event)
        except NbdProtocolError as exc:
            self._fail(exc)
            return
        self._flow()

    def _flow(self) -> None:
        if self.transport.is_closing():
            return
        hold = self.busy or not self.can_write.is_set()
        if hold and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        elif not hold and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False

    def _fail(self, exc: NbdProtocolError) -> None:
        log.info("nbd: closing a connection: %s", exc)
        self.proto.close()
        # abort, not close: a peer that broke the protocol is owed no unsent replies.
        self.transport.abort()

    def _handshake_expired(self) -> None:
        self.deadline = None
        if self.proto.state is not Phase.TRANSMISSION:
            log.info(
                "nbd: dropping a client not in transmission after %gs",
                self.settings.handshake_timeout,
            )
            self.transport.abort()

    # -- handshake ---------------------------------------------------------------------

    def _option(self, req: OptionRequest) -> None:
        outcome = self.proto.answer_option(req, self._find, self.devices.names)
        if outcome.reply:
            self.transport.write(outcome.reply)
        if outcome.export is not None:
            self.device = outcome.export  # one _find returned: a Device
        if outcome.close:
            self.transport.close()

    def _find(self, name: str) -> Device | None:
        try:
            return self.devices.get(name)
        except UnknownPoolError:
            return None

    # -- transmission ------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cmd = await self.queue.get()
            if cmd is None:
                return
            start = loop.time()
            reply = await self._command(cmd)
            if reply is None:  # DISC
                self.transport.close()
                return
            if self.transport.is_closing():
                return
            await self._send(*reply)
            if self.observe is not None:
                self.observe("nbd", _NAMES.get(cmd.type, "unknown"), loop.time() - start)
            self.busy = False  # at most one request's payload held at a time
            self._pump()

    async def _send(self, *parts: bytes) -> None:
        """Write ``parts`` once the peer has read enough of what came before."""
        if not self.can_write.is_set():  # a client that does not read is not answered
            await self.can_write.wait()
        for part in parts:
            self.transport.write(part)

    async def _read_in_pieces(self, cmd: Command) -> tuple[bytes, ...] | None:
        """Answer a READ over _PIECE bytes a piece at a time; () once sent, None if cut short."""
        dev, end = self.device, cmd.offset + cmd.length
        # The first piece before the header, so that an error there is answered as usual.
        data = await _run(_PIECE, dev.read, cmd.offset, _PIECE)
        await self._send(self.proto.read_reply_header(cmd.cookie, cmd.offset, cmd.length), data)
        pos = cmd.offset + _PIECE
        while pos < end:
            n = min(_PIECE, end - pos)
            try:
                data = await _run(n, dev.read, pos, n)
            except ZswapdError as exc:
                # The header promised every byte: no reply can say so now; drop the client.
                log.warning("nbd: a READ failed after its reply began (%s): disconnecting", exc)
                self.transport.abort()
                return None
            await self._send(data)
            pos += n
        return ()

    async def _command(self, cmd: Command) -> tuple[bytes, ...] | None:
        p, dev = self.proto, self.device
        if cmd.type == Cmd.DISC:
            return None
        if cmd.flags & ~KNOWN_CMD_FLAGS:
            return (p.error_reply(cmd.cookie, EINVAL, f"unknown flags 0x{cmd.flags:x}"),)
        try:
            if cmd.offset + cmd.length > dev.size and cmd.type in (
                Cmd.WRITE,
                Cmd.WRITE_ZEROES,
            ):
                dev.io.invalid_io += 1
                return (p.error_reply(cmd.cookie, ENOSPC, "past the end of the device"),)
            if cmd.type == Cmd.READ:
                if cmd.length > p.max_payload:
                    return (p.error_reply(cmd.cookie, EINVAL, "read over the maximum block size"),)
                if cmd.length > _PIECE:
                    dev.check_range(cmd.offset, cmd.length)  # whole range first: EINVAL, not a cut
                    return await self._read_in_pieces(cmd)
                data = await _run(cmd.length, dev.read, cmd.offset, cmd.length)
                return p.read_reply(cmd.cookie, cmd.offset, data)
            if cmd.type == Cmd.WRITE:
                if len(cmd.data) != cmd.length:
                    raise InvalidRequestError("write payload of the wrong length")
                await _run(cmd.length, dev.write, cmd.offset, cmd.data)
            elif cmd.type == Cmd.FLUSH:
                pass  # memory: every acknowledged write is already where reads find it
            elif cmd.type == Cmd.TRIM:
                await _run(cmd.length // 64, dev.trim, cmd.offset, cmd.length)
            elif cmd.type == Cmd.WRITE_ZEROES:
                keep = bool(cmd.flags & CMD_FLAG_NO_HOLE)
                await _run(
                    cmd.length if keep else cmd.length // 64,
                    lambda: dev.zero(cmd.offset, cmd.length, keep_allocated=keep),
                )
            else:
                return (p.error_reply(cmd.cookie, ENOTSUP, f"command {cmd.type} unsupported"),)
        except InvalidRequestError as exc:
            return (p.error_reply(cmd.cookie, EINVAL, str(exc)),)
        except PoolLimitError as exc:
            return (p.error_reply(cmd.cookie, ENOSPC, str(exc)),)
        except ZswapdError as exc:
            return (p.error_reply(cmd.cookie, EIO, str(exc)),)
        return (p.simple_reply(cmd.cookie),)


_NAMES = {int(c): c.name.lower() for c in Cmd}


async def _run(nbytes: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` by the store's rule (zswapd.offload): on the loop up to
    INLINE_PAGES pages' worth of bytes, else in a thread, with no cycle keeping a
    failed write's payload alive."""
    return await offload(-(-nbytes // PAGE_SIZE), fn, *args)


async def start_nbd_server(
    listen: Any, devices: DeviceRegistry, settings: NbdSettings | None = None
) -> asyncio.Server:
    """Serve NBD on an already bound, listening socket (TCP or Unix)."""
    loop = asyncio.get_running_loop()
    settings = settings or NbdSettings()
    open_conns: dict[NbdConnection, None] = {}
    return await loop.create_server(
        # asyncio would listen() again with a backlog of 100: keep server.bind()'s.
        lambda: NbdConnection(devices, settings, open_conns),
        sock=listen,
        backlog=1024,
    )
