"""Clients of the wire protocol (docs/protocol.md): blocking and asyncio.

Both pipeline: a large store, load or free is cut into requests of the
server's ``max_payload`` and up to ``window`` of them are sent before the first
answer is read; answers are matched by request id.  Like HTTP batches, a large
store is all or nothing from the caller's view: if one request fails, the
handles of the others are freed before the error is raised.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from zswapd.errors import ZswapdError, error_class
from zswapd.pool import PAGE_SIZE
from zswapd.protocol import (
    RESPONSE,
    Frame,
    FrameParser,
    FrameView,
    Op,
    encode,
    encode_header,
    hello_request,
    parse_hello_reply,
)

__all__ = ["AsyncWireClient", "WireClient"]

# Responses the client accepts: a LOAD of the largest request, or a stats document.
_CLIENT_MAX_PAYLOAD = 1 << 23

T = TypeVar("T")
# A page or payload as the kernel can send it.
Buffer = bytes | bytearray | memoryview


def _raise_for(frame: Frame) -> NoReturn:
    try:
        body = json.loads(frame.payload)
        code, detail = body["error"], body["detail"]
    except (ValueError, KeyError, TypeError):
        code, detail = "internal", frame.payload[:200].decode(errors="replace")
    raise error_class(code)(f"{frame.status}: {detail}")


def _store_answers(frames: Sequence[Frame]) -> tuple[list[int], Frame | None]:
    """Handles of the STORE answers that succeeded, and the first that failed."""
    handles: list[int] = []
    failed = None
    for frame in frames:
        if frame.status:
            failed = failed or frame
        else:
            handles += struct.unpack(f"<{len(frame.payload) // 8}Q", frame.payload)
    return handles, failed


def _u64s(values: Sequence[int]) -> bytes:
    try:
        return struct.pack(f"<{len(values)}Q", *values)
    except struct.error as exc:
        raise ZswapdError(f"a handle is not a u64: {exc}") from exc


# What a successful answer's payload view is turned into, before the next read.


def _frame(view: FrameView) -> Frame:
    return Frame(view.op, view.request_id, bytes(view.payload), view.status)


def _u64_list(view: FrameView) -> list[int]:
    return list(struct.unpack(f"<{len(view.payload) // 8}Q", view.payload))


def _pages(view: FrameView) -> list[bytes]:
    """A LOAD's pages, each copied once out of the receive buffer."""
    data = view.payload
    if len(data) % PAGE_SIZE:
        raise ZswapdError(f"a LOAD answer of {len(data)} bytes: not whole pages")
    return [data[i : i + PAGE_SIZE].tobytes() for i in range(0, len(data), PAGE_SIZE)]


def _nothing(view: FrameView) -> None:
    return None


def _nbytes(part: Buffer) -> int:
    return part.nbytes if isinstance(part, memoryview) else len(part)


# sendmsg takes at most this many buffers at once (a 1024-page STORE is 1025).
_IOV_MAX = max(16, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024


def _send_frame(sock: socket.socket, op: int, rid: int, parts: Sequence[Buffer]) -> None:
    """One request frame, its header and payload parts handed to the kernel
    together (sendmsg's gather list): the pages are not joined first."""
    pending: list[Buffer] = [encode_header(op, rid, sum(_nbytes(p) for p in parts)), *parts]
    while pending:
        sent = sock.sendmsg(pending[:_IOV_MAX])
        # A blocking socket sends it all unless a signal cut it short: go on
        # from the first byte not sent.
        done = 0
        for part in pending:
            size = _nbytes(part)
            if sent < size:
                break
            sent -= size
            done += 1
        del pending[:done]
        if pending and sent:
            pending[0] = memoryview(pending[0]).cast("B")[sent:]


class _Requests:
    """Request ids and the batching arithmetic shared by both clients."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.max_pages = 1
        self._next_id = 0

    def take_id(self) -> int:
        # Never 0: an error frame of id 0 and op 0x80 answers no request.
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        return self._next_id

    @staticmethod
    def check_connection_error(frame: Frame) -> None:
        """Raise at once for an error that answers no request (the server closes)."""
        if frame.op == RESPONSE and frame.status:
            _raise_for(frame)

    def chunks(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        step = self.max_pages
        return [items[i : i + step] for i in range(0, len(items), step)]

    def greeted(self, frame: Frame) -> None:
        hello = parse_hello_reply(frame.payload)
        self.max_pages = max(1, hello.max_payload // PAGE_SIZE)
        self.window = max(1, min(self.window, hello.max_in_flight))


class WireClient:
    """A blocking wire-protocol connection.

    Pages go out without being joined: a request's header and its pages are
    handed to the kernel in one ``sendmsg``.  Answers are received into the
    parser's buffer and taken straight out of it: a LOAD's pages are cut from
    the buffer, one copy each, with no copy of the whole answer first.

    Args:
        path: the server's Unix socket.
        token: bearer token, if the server wants one.
        window: requests in flight at most while pipelining.
    """

    def __init__(self, path: str, *, token: str | None = None, window: int = 8) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise ZswapdError(f"cannot connect to {path}: {exc}") from exc
        self._parser = FrameParser(_CLIENT_MAX_PAYLOAD, responses=True)
        self._req = _Requests(window)
        self._pool = "default"
        self._req.greeted(self._call(Op.HELLO, hello_request(token)))

    def close(self) -> None:
        self._sock.close()

    # -- plumbing ----------------------------------------------------------------------

    def _read_view(self) -> FrameView:
        """The next answer, its payload a view valid until the next read."""
        while (view := self._parser.next_view()) is None:
            n = self._sock.recv_into(self._parser.get_buffer())
            if n == 0:
                raise ZswapdError("the server closed the connection")
            self._parser.buffer_updated(n)
        return view

    def _pipeline(
        self, op: int, requests: Sequence[Sequence[Buffer]], take: Callable[[FrameView], T]
    ) -> list[T | Frame]:
        """Send every request (its payload's parts) as ``op``, windowed; the
        answers in order: ``take`` of each success, a Frame for each error."""
        ids = [self._req.take_id() for _ in requests]
        answers: dict[int, T | Frame] = {}
        sent = 0
        while len(answers) < len(ids):
            while sent < len(ids) and sent - len(answers) < self._req.window:
                _send_frame(self._sock, op, ids[sent], requests[sent])
                sent += 1
            view = self._read_view()
            if view.status:
                error = Frame(view.op, view.request_id, bytes(view.payload), view.status)
                self._req.check_connection_error(error)
                answers[view.request_id] = error
            else:
                # Taken before the next read: the view is of the receive buffer.
                answers[view.request_id] = take(view)
        return [answers[i] for i in ids]

    def _call(self, op: int, payload: bytes = b"") -> Frame:
        (frame,) = self._pipeline(op, [(payload,)], _frame)
        if frame.status:
            _raise_for(frame)
        if frame.op != op | RESPONSE:
            raise ZswapdError(f"answer of op 0x{frame.op:02x} to op 0x{op:02x}")
        return frame

    def _use(self, pool: str) -> None:
        if pool != self._pool:
            self._call(Op.USE_POOL, pool.encode())
            self._pool = pool

    # -- operations --------------------------------------------------------------------

    def store(self, pages: Sequence[Buffer], pool: str = "default") -> list[int]:
        self._use(pool)
        answers = self._pipeline(Op.STORE, self._req.chunks(pages), _u64_list)
        handles: list[int] = []
        failed = None
        for answer in answers:
            if isinstance(answer, Frame):
                failed = failed or answer
            else:
                handles += answer
        if failed is not None:
            if handles:
                self.free(handles, pool)
            _raise_for(failed)
        return handles

    def load(self, handles: Sequence[int], pool: str = "default") -> list[bytes]:
        self._use(pool)
        chunks = self._req.chunks(handles)
        out: list[bytes] = []
        for chunk, answer in zip(
            chunks, self._pipeline(Op.LOAD, [(_u64s(c),) for c in chunks], _pages), strict=True
        ):
            if isinstance(answer, Frame):
                _raise_for(answer)
            if len(answer) != len(chunk):
                raise ZswapdError(f"{len(answer)} pages in answer to a LOAD of {len(chunk)}")
            out += answer
        return out

    def free(self, handles: Sequence[int], pool: str = "default") -> None:
        self._use(pool)
        chunks = [(_u64s(c),) for c in self._req.chunks(handles)]
        for answer in self._pipeline(Op.FREE, chunks, _nothing):
            if isinstance(answer, Frame):
                _raise_for(answer)

    def stats(self, pool: str = "default") -> dict[str, Any]:
        self._use(pool)
        result: dict[str, Any] = json.loads(self._call(Op.STATS).payload)
        return result

    def compact(self, pool: str = "default") -> int:
        self._use(pool)
        (released,) = struct.unpack("<Q", self._call(Op.COMPACT).payload)
        return int(released)


class AsyncWireClient:
    """An asyncio wire-protocol connection; ``await AsyncWireClient.connect(path)``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, window: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._req = _Requests(window)
        self._pool = "default"
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, path: str, *, token: str | None = None, window: int = 8
    ) -> AsyncWireClient:
        reader, writer = await asyncio.open_unix_connection(path)
        client = cls(reader, writer, window)
        client._req.greeted(await client._call(Op.HELLO, hello_request(token)))
        return client

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()

    async def _read_frame(self) -> Frame:
        header = await self._reader.readexactly(16)
        _magic, _v, op, _f, status, rid, length = struct.unpack("<HBBHHII", header)
        payload = await self._reader.readexactly(length)
        return Frame(op, rid, payload, status)

    async def _pipeline(self, op: int, payloads: Sequence[bytes]) -> list[Frame]:
        async with self._lock:  # one pipeline at a time per connection
            ids = [self._req.take_id() for _ in payloads]
            answers: dict[int, Frame] = {}
            sent = 0
            while len(answers) < len(ids):
                while sent < len(ids) and sent - len(answers) < self._req.window:
                    self._writer.write(encode(op, ids[sent], payloads[sent]))
                    sent += 1
                await self._writer.drain()
                frame = await self._read_frame()
                self._req.check_connection_error(frame)
                answers[frame.request_id] = frame
            return [answers[i] for i in ids]

    async def _call(self, op: int, payload: bytes = b"") -> Frame:
        (frame,) = await self._pipeline(op, [payload])
        if frame.status:
            _raise_for(frame)
        return frame

    async def _use(self, pool: str) -> None:
        if pool != self._pool:
            await self._call(Op.USE_POOL, pool.encode())
            self._pool = pool

    async def store(self, pages: Sequence[bytes], pool: str = "default") -> list[int]:
        await self._use(pool)
        frames = await self._pipeline(Op.STORE, [b"".join(c) for c in self._req.chunks(pages)])
        handles, failed = _store_answers(frames)
        if failed is not None:
            if handles:
                await self.free(handles, pool)
            _raise_for(failed)
        return handles

    async def load(self, handles: Sequence[int], pool: str = "default") -> list[bytes]:
        await self._use(pool)
        out: list[bytes] = []
        chunks = [_u64s(c) for c in self._req.chunks(handles)]
        for frame in await self._pipeline(Op.LOAD, chunks):
            if frame.status:
                _raise_for(frame)
            data = frame.payload
            out += [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
        return out

    async def free(self, handles: Sequence[int], pool: str = "default") -> None:
        await self._use(pool)
        chunks = [_u64s(c) for c in self._req.chunks(handles)]
        for frame in await self._pipeline(Op.FREE, chunks):
            if frame.status:
                _raise_for(frame)

    async def stats(self, pool: str = "default") -> dict[str, Any]:
        await self._use(pool)
        result: dict[str, Any] = json.loads((await self._call(Op.STATS)).payload)
        return result
