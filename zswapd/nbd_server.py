"""NBD over asyncio: thin glue between sockets, the sans-IO core and the devices.

One :class:`NbdConnection` per client; several may serve one device at once
(CAN_MULTI_CONN is advertised: each request is atomic under the device's
lock, and FLUSH has nothing to wait for in memory).  Requests are answered in
order, one at a time per connection; reading pauses while one is being
served, so a connection holds at most one request's payload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from zswapd.device import DeviceRegistry
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
    TF_CAN_MULTI_CONN,
    TF_HAS_FLAGS,
    TF_SEND_FLUSH,
    TF_SEND_FUA,
    TF_SEND_TRIM,
    TF_SEND_WRITE_ZEROES,
    Cmd,
    Command,
    NbdProtocolError,
    NbdServerConnection,
    Opt,
    OptionRequest,
    Rep,
)

__all__ = ["NbdConnection", "start_nbd_server"]

log = logging.getLogger("zswapd")
FLAGS = (
    TF_HAS_FLAGS
    | TF_SEND_FLUSH
    | TF_SEND_FUA
    | TF_SEND_TRIM
    | TF_SEND_WRITE_ZEROES
    | TF_CAN_MULTI_CONN
)
_INLINE = 256 * 1024  # requests up to this many bytes are served on the loop
KNOWN_CMD_FLAGS = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE


class NbdConnection(asyncio.Protocol):
    def __init__(
        self, devices: DeviceRegistry, observe: Callable[[str, str, float], None] | None
    ) -> None:
        self.devices = devices
        self.observe = observe
        self.proto = NbdServerConnection()
        self.transport: Any = None
        self.device: Any = None
        self.queue: asyncio.Queue[Command | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        # Cleared while the transport's write buffer is full: answer nothing more.
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.proto.greeting())
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.proto.feed(data)
            while (event := self.proto.next_event()) is not None:
                if isinstance(event, OptionRequest):
                    self._option(event)
                else:
                    self.queue.put_nowait(event)
                    self.transport.pause_reading()
        except NbdProtocolError as exc:
            log.info("nbd: closing a connection: %s", exc)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- handshake ---------------------------------------------------------------------

    def _option(self, req: OptionRequest) -> None:
        p, opt = self.proto, req.option
        if opt == Opt.ABORT:
            self.transport.write(p.option_reply(opt, Rep.ACK))
            self.transport.close()
        elif opt == Opt.LIST:
            out = b"".join(
                p.option_reply(opt, Rep.SERVER, len(n.encode()).to_bytes(4, "big") + n.encode())
                for n in self.devices.names()
            )
            self.transport.write(out + p.option_reply(opt, Rep.ACK))
        elif opt == Opt.STRUCTURED_REPLY:
            if req.data:
                self.transport.write(p.option_error(opt, Rep.ERR_INVALID, "no data expected"))
            else:
                p.structured = True
                self.transport.write(p.option_reply(opt, Rep.ACK))
        elif opt in (Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT):
            if not p.structured:
                self.transport.write(
                    p.option_error(opt, Rep.ERR_INVALID, "structured replies first")
                )
            else:
                # No metadata contexts (base:allocation is not offered): an empty answer.
                self.transport.write(p.option_reply(opt, Rep.ACK))
        elif opt in (Opt.GO, Opt.INFO):
            try:
                name, infos = p.parse_info_request(req.data)
            except (ValueError, UnicodeDecodeError) as exc:
                self.transport.write(p.option_error(opt, Rep.ERR_INVALID, str(exc)))
                return
            try:
                device = self.devices.get(name or "default")
            except UnknownPoolError as exc:
                self.transport.write(p.option_error(opt, Rep.ERR_UNKNOWN, str(exc)))
                return
            if opt == Opt.GO:
                self.device = device
            self.transport.write(p.info_replies(opt, name, device.size, FLAGS, infos))
        elif opt == Opt.EXPORT_NAME:
            try:
                self.device = self.devices.get(req.data.decode() or "default")
            except (UnknownPoolError, UnicodeDecodeError):
                self.transport.close()  # EXPORT_NAME has no error reply: close
                return
            self.transport.write(p.export_name_reply(self.device.size, FLAGS))
        else:
            self.transport.write(p.option_error(opt, Rep.ERR_UNSUP, f"option {opt} unsupported"))

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
            if not self.can_write.is_set():  # a client that does not read is not answered
                await self.can_write.wait()
            for part in reply:
                self.transport.write(part)
            if self.observe is not None:
                self.observe("nbd", _NAMES.get(cmd.type, "unknown"), loop.time() - start)
            if self.queue.empty():  # at most one request's payload held at a time
                self.transport.resume_reading()

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
    if nbytes <= _INLINE:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


async def start_nbd_server(
    listen: Any,
    devices: DeviceRegistry,
    observe: Callable[[str, str, float], None] | None = None,
) -> asyncio.Server:
    """Serve NBD on an already bound, listening socket (TCP or Unix)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: NbdConnection(devices, observe), sock=listen)
