"""The HTTP API: a thin FastAPI layer over the pool registry.

Routes and statuses are DESIGN.md's contract.  Every error is JSON
``{"error": code, "detail": message}``; one table maps the store's errors to
statuses.  Page bodies are raw ``application/octet-stream``; request bodies are
read with a cap (``max_body_bytes``) before anything is parsed, so an oversized
request costs O(cap), not O(what the client sends).  With a token set, every
route but ``/healthz`` wants ``Authorization: Bearer <token>`` (compared in
constant time).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from zswapd import __version__
from zswapd.config import PoolConfig
from zswapd.device import MAX_DEVICE_SIZE, DeviceRegistry
from zswapd.errors import (
    BackingIoError,
    CompressPoorError,
    ConfigError,
    CorruptObjectError,
    InvalidRequestError,
    PageSizeError,
    PoolExistsError,
    PoolLimitError,
    StaleHandleError,
    TooLargeError,
    UnknownPoolError,
    ZswapdError,
)
from zswapd.http_protocol import note_stale_handle
from zswapd.metrics import CONTENT_TYPE_LATEST, Metrics
from zswapd.offload import offload, run_in_thread, run_maintenance, run_on_disk
from zswapd.pool import PAGE_SIZE
from zswapd.pools import PoolRegistry

__all__ = ["STATUS", "ApiSettings", "create_app"]


# The one table from the store's errors to HTTP statuses (most specific first).
STATUS: list[tuple[type[ZswapdError], int]] = [
    (ConfigError, 400),
    (InvalidRequestError, 400),
    (PageSizeError, 422),
    (CompressPoorError, 422),
    (StaleHandleError, 404),
    (UnknownPoolError, 404),
    (PoolExistsError, 409),
    (TooLargeError, 413),
    (PoolLimitError, 507),
    (BackingIoError, 507),
    (CorruptObjectError, 500),
    (ZswapdError, 500),
]


def status_of(exc: ZswapdError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


@dataclass(frozen=True)
class ApiSettings:
    """Limits and auth of the HTTP frontend.

    Attributes:
        max_pages_per_request: cap on pages in one store or load (default 1024).
        token: bearer token wanted on every route but /healthz (None: no auth).
    """

    max_pages_per_request: int = 1024
    token: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return self.max_pages_per_request * PAGE_SIZE


# -- schemas ---------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable error code")
    detail: str = Field(description="what went wrong, for people")


class HandleList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    handles: list[StrictInt] = Field(description="handles as the server returned them")


def _not_bool(value: Any) -> Any:
    # JSON's true is not 1 here (schemathesis found a level of `false` accepted).
    if isinstance(value, bool):
        raise ValueError("a number is required, not a boolean")
    return value


# Lax ints (360.0 is an integer in JSON Schema) that still refuse booleans.
JsonInt = Annotated[int, BeforeValidator(_not_bool)]
JsonFloat = Annotated[float, BeforeValidator(_not_bool)]


class RecompressRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["huge", "idle", "huge_idle"] = "huge"
    algo: str | None = Field(default=None, description="secondary algorithm (default: pool's)")
    level: JsonInt | None = None
    idle_seconds: JsonFloat = Field(default=0, ge=0)
    threshold: JsonInt | None = Field(default=None, gt=0)


class RecompressResult(BaseModel):
    candidates: int
    recompressed: int
    not_smaller: int
    alloc_failed: int
    bytes_saved: int


class CompactResult(BaseModel):
    pages_released: int


class WritebackRequest(BaseModel):
    """zram's ``echo TYPE > writeback`` (and ``echo N > idle``), with a cap."""

    model_config = ConfigDict(extra="forbid")
    # Required: an empty body writing every page back would be a costly surprise.
    type: Literal["idle", "huge", "huge_idle", "incompressible", "lru"] = Field(
        description="idle: not stored or loaded for idle_seconds (0: every page, zram's "
        "'all'); huge; huge_idle: both; incompressible: huge pages recompression could "
        "not shrink; lru: the least recently used first",
    )
    idle_seconds: JsonFloat | None = Field(
        default=None,
        ge=0,
        description="what idle means, seconds: required for idle and huge_idle (0: every "
        "page, zram's 'all'), refused for the other types",
    )
    max_pages: JsonInt | None = Field(default=None, ge=1, description="write at most this many")


class WritebackResult(BaseModel):
    written_back: int = Field(description="pages written to the backing file")
    candidates: int = Field(description="pages of the type asked for, before max_pages")
    stopped: str | None = Field(
        description="why it stopped before writing every candidate: writeback_limit, "
        "backing_full, io_error, backing_removed (null: it did not)"
    )
    error: str | None = Field(description="what failed, for people (null: nothing)")
    writeback_limit: int | None = Field(
        description="pages manual writeback may still write (null: no limit)"
    )


class PoolSettings(BaseModel):
    """A pool's configuration (every field optional; defaults are the kernel's)."""

    model_config = ConfigDict(extra="forbid")
    compressor: str = "zstd"
    level: JsonInt | None = None
    allocator: Literal["zsmalloc", "zbud", "z3fold"] = "zsmalloc"
    chain_size: JsonInt = Field(default=8, ge=1, le=16)
    limit_bytes: JsonInt = Field(default=0, ge=0)
    huge_policy: Literal["store", "reject"] = "store"
    accept_threshold_percent: JsonInt | None = Field(default=None, ge=0, le=100)
    recompress_algo: str | None = None
    recompress_level: JsonInt | None = None
    allocator_options: dict[str, Any] = Field(default_factory=dict)
    backing_file: str | None = Field(
        default=None,
        description="a new file inside the daemon's --backing-dir: a name, or a path under "
        "it (no absolute path, no '..', no symlink)",
    )
    backing_size: JsonInt = Field(
        default=0, ge=0, description="bytes, whole 4096-byte slots (needed with backing_file)"
    )
    writeback: Literal["manual", "lru"] = Field(
        default="manual",
        description="manual (zram: pages leave when asked) or lru (zswap: a store past the "
        "limit writes back the least recently used pages first)",
    )
    writeback_limit: JsonInt | None = Field(
        default=None, ge=0, description="pages manual writeback may still write (null: no limit)"
    )


class LiveSettings(BaseModel):
    """Settings a pool takes while it holds pages (zram's ``echo N > mem_limit``,
    ``echo N > writeback_limit``); the ones not given stay as they are."""

    model_config = ConfigDict(extra="forbid")
    limit_bytes: JsonInt | None = Field(default=None, ge=0)
    accept_threshold_percent: JsonInt | None = Field(
        default=None, ge=0, le=100, description="null: off"
    )
    huge_policy: Literal["store", "reject"] | None = None
    writeback_limit: JsonInt | None = Field(
        default=None, ge=0, description="null: no limit (zram's writeback_limit_enable=0)"
    )


class PoolConfigOut(BaseModel):
    """A pool's settings as applied (the dictionary by size)."""

    compressor: str
    level: int | None
    allocator: str
    chain_size: int
    limit_bytes: int
    huge_policy: str
    accept_threshold_percent: int | None
    recompress_algo: str | None
    recompress_level: int | None
    allocator_options: dict[str, Any]
    dictionary: int | None
    backing_file: str | None
    backing_size: int
    writeback: str
    writeback_limit: int | None


class PoolCreated(BaseModel):
    pool: str
    config: PoolConfigOut


class MmStat(BaseModel):
    """zram's mm_stat, field for field."""

    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    mem_limit: int
    mem_used_max: int
    same_pages: int
    pages_compacted: int
    huge_pages: int
    huge_pages_since: int


class ZswapCounters(BaseModel):
    stored_pages: int
    same_filled_pages: int
    pool_total_size: int
    pool_limit_hit: int
    reject_compress_poor: int
    decompress_fail: int
    written_back_pages: int = Field(description="pages moved to the backing file")
    reject_reclaim_fail: int = Field(description="pages refused: no room could be made")


class PageCounters(BaseModel):
    stored_pages_total: int
    loaded_pages_total: int
    freed_pages_total: int
    memory_limit_hit: int = Field(description="pages refused at the server-wide --memory-limit")
    stale_handle_requests: int = Field(description="loads and frees refused for a stale handle")
    loaded_same_pages: int = Field(description="loads served by a same-filled word")
    limit_hit_written_back: int = Field(
        description="limit hits of an lru pool answered by writing back (or refused as "
        "reject_reclaim_fail); in pool_limit_hit too"
    )


class BdStat(BaseModel):
    """zram's bd_stat, in pages: in the backing file now, read from it, written to it."""

    bd_count: int
    bd_reads: int
    bd_writes: int


class BackingFigures(BaseModel):
    """The backing file of a pool: where, how big, how full, how healthy."""

    file: str
    slots: int
    size: int = Field(description="bytes, slots x 4096")
    used_slots: int
    writeback: str
    writeback_limit: int | None
    lru_pages: int = Field(description="pages in memory on the LRU list")
    removed: bool
    io_errors: int
    corrupt_pages: int = Field(description="pages read back that failed their checksum")


class ServerFigures(BaseModel):
    """Every pool and device together, against --memory-limit (bytes; 0 = no limit)."""

    memory_limit: int
    memory_used: int
    memory_used_max: int


class MetadataFigures(BaseModel):
    """The pool's table of entries, charged to --memory-limit (not in mm_stat)."""

    entry_slots: int = Field(description="slots the table holds, live or free")
    bytes: int = Field(description="what the table charges the server's memory limit")


class RecompressCounters(BaseModel):
    attempts: int
    recompressed_pages: int
    saved_bytes: int
    algorithms: list[str]


class ClassRow(BaseModel):
    """One row of the debugfs ``classes`` table; fullness columns named "0".."100"."""

    model_config = ConfigDict(populate_by_name=True)
    class_: int = Field(alias="class")
    size: int
    f0: int = Field(alias="0")
    f10: int = Field(alias="10")
    f20: int = Field(alias="20")
    f30: int = Field(alias="30")
    f40: int = Field(alias="40")
    f50: int = Field(alias="50")
    f60: int = Field(alias="60")
    f70: int = Field(alias="70")
    f80: int = Field(alias="80")
    f90: int = Field(alias="90")
    f99: int = Field(alias="99")
    f100: int = Field(alias="100")
    obj_allocated: int
    obj_used: int
    pages_used: int
    pages_per_zspage: int
    freeable: int


class PoolStatsOut(BaseModel):
    pool: str
    config: PoolConfigOut
    huge_class_size: int
    mm_stat: MmStat
    zswap: ZswapCounters
    counters: PageCounters
    bd_stat: BdStat
    backing: BackingFigures | None = Field(description="null: no backing file")
    server: ServerFigures
    metadata: MetadataFigures
    recompress: RecompressCounters
    classes: list[ClassRow]


class DeviceSettings(PoolSettings):
    """A device: its size in bytes (a multiple of 4096), and its pool's settings."""

    size: JsonInt = Field(
        gt=0, le=MAX_DEVICE_SIZE, description="bytes, a multiple of 4096, at most 16 TiB"
    )
    # zram's backing_dev.  A client's file must be a new name inside the daemon's
    # --backing-dir (refused, 400, otherwise): no client picks where the daemon writes.
    backing_file: str | None = Field(
        default=None, description="a new file's name inside the daemon's --backing-dir"
    )
    backing_size: JsonInt = Field(default=0, ge=0, description="bytes, whole 4096-byte slots")
    writeback: Literal["manual", "lru"] = "manual"
    writeback_limit: JsonInt | None = Field(
        default=None, ge=0, description="pages manual writeback may still write (zram's)"
    )


class PoolList(BaseModel):
    pools: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    max_pages_per_request: int = Field(description="cap on pages in one store or load")


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d}
    for s, d in (
        (400, "malformed request"),
        (401, "token missing or wrong"),
        (404, "unknown pool or stale handle"),
        (408, "request head or body not received in time; the connection is closed"),
        (409, "a pool of that name exists"),
        (500, "a stored page no longer matches its checksum (corrupt_object)"),
        (413, "request too large"),
        (431, "request head over the size cap; the connection is closed"),
        (422, "wrong page size, or a page the pool rejects"),
        (503, "too many connections"),
        (507, "pool limit reached, no room made by writeback, or the backing file failed"),
    )
}
OCTETS = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}

PoolName = Annotated[
    str, Path(description="pool name", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
]


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _refusal(status: int, code: str, detail: str) -> JSONResponse:
    """An error sent before the body is read: the body that may still be on
    its way is not wanted, so the connection closes rather than drains it."""
    response = _error(status, code, detail)
    response.headers["connection"] = "close"
    return response


async def _read_body(request: Request, cap: int) -> bytes:
    """The request body, refusing past ``cap`` bytes without reading the rest."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise TooLargeError(f"body is over the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


class _Guard:
    """ASGI middleware: bearer token, body caps, and timing of every request.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware: cheaper per request,
    and it can refuse an oversized body before the app reads any of it.  A body
    with no Content-Length is counted as it streams and refused at the cap.
    """

    # JSON bodies (handle lists, settings) never need more than this.
    JSON_CAP = 1 << 20

    def __init__(self, app: FastAPI, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings
        self._token = settings.token.encode() if settings.token is not None else None

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope["headers"])
        if sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
            # Which one would count is a guess a proxy and the server may make
            # differently (the last used to win): refuse the request instead.
            await _refusal(400, "bad_request", "more than one Authorization header")(
                scope, receive, send
            )
            return
        if self._token is not None and path != "/healthz":
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given, self._token):
                await _refusal(401, "unauthorized", "a valid bearer token is required")(
                    scope, receive, send
                )
                return
        cap = self.settings.max_body_bytes if path.endswith("/pages") else self.JSON_CAP
        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _refusal(400, "bad_request", "Content-Length is not a number")(
                scope, receive, send
            )
            return
        if declared is not None and int(declared) > cap:
            await _refusal(413, "too_large", f"body over the {cap}-byte cap")(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    # An HTTPException, which FastAPI's body parsing lets through
                    # (anything else it turns into a 400).
                    raise StarletteHTTPException(413, f"body over the {cap}-byte cap")
            return message

        start = time.perf_counter()
        try:
            await self.app(scope, counted, send)
        finally:
            route = scope.get("route")
            op = getattr(route, "name", None) or "unknown"
            for observe in self.app.state.observers:
                observe("http", op, time.perf_counter() - start)


def create_app(
    registry: PoolRegistry,
    settings: ApiSettings | None = None,
    devices: DeviceRegistry | None = None,
) -> _Guard:
    """The ASGI app serving ``registry`` (a FastAPI app behind a guard)."""
    settings = settings or ApiSettings()
    app = FastAPI(
        title="zswapd",
        version=__version__,
        description="A userspace emulator of Linux compressed swap (zram / zswap).",
        responses=ERRORS,
    )
    app.state.registry = registry
    app.state.settings = settings
    devices = devices if devices is not None else DeviceRegistry(registry)
    app.state.devices = devices
    app.state.metrics = metrics = Metrics(registry, devices)
    # Callables (interface, op, seconds), told of every request.
    app.state.observers = [metrics.observe]

    @app.exception_handler(ZswapdError)
    async def zswapd_error(request: Request, exc: ZswapdError) -> JSONResponse:
        response = _error(status_of(exc), exc.code, str(exc))
        if isinstance(exc, StaleHandleError) and note_stale_handle(request.scope):
            # Too many guesses on one connection: make a brute force reconnect.
            response.headers["connection"] = "close"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; one path may
            # be served by several (PUT and DELETE /v1/pools/{pool}): name them all.
            allowed: set[str] = set()
            for route in app.routes:
                match, _ = route.matches({**request.scope, "method": "GET"})
                if match != Match.NONE:
                    allowed |= getattr(route, "methods", None) or set()
                match, _ = route.matches(request.scope)
                if match == Match.PARTIAL:
                    allowed |= getattr(route, "methods", None) or set()
            if allowed:
                response.headers["allow"] = ", ".join(sorted(allowed))
        return response

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left mid-body, or was cut off for sending it too slowly
        # (zswapd.http_protocol): nobody to answer, and no traceback to log for
        # each of a flood of such connections.
        return Response(status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errs)
        return _error(400, "bad_request", detail or "malformed request")

    reg = registry

    def check_batch(n: int) -> None:
        if n > settings.max_pages_per_request:
            raise TooLargeError(f"{n} handles; at most {settings.max_pages_per_request} a request")

    @app.get("/healthz", response_model=Health, name="healthz")
    async def healthz() -> Health:
        return Health(
            status="ok",
            version=__version__,
            max_pages_per_request=settings.max_pages_per_request,
        )

    @app.get(
        "/metrics",
        response_class=Response,
        name="metrics",
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics() -> Response:
        body = await run_in_thread(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/devices", name="devices_list")
    async def list_devices() -> dict[str, list[str]]:
        return {"devices": devices.names()}

    @app.put("/v1/devices/{name}", status_code=201, name="device_create")
    async def create_device(name: PoolName, body: DeviceSettings) -> dict[str, Any]:
        values = body.model_dump()
        size = values.pop("size")
        config = PoolConfig.from_dict(values)
        # client=True: a backing file must be a new name inside --backing-dir.
        device = await run_in_thread(lambda: devices.create(name, size, config, client=True))
        return {"device": device.name, "size": device.size, "config": device.pool.config.to_dict()}

    @app.delete("/v1/devices/{name}", status_code=204, name="device_remove")
    async def remove_device(name: PoolName) -> Response:
        # In a thread: closing a backing file waits for its I/O in flight.
        await run_in_thread(devices.remove, name)
        return Response(status_code=204)

    @app.get("/v1/devices/{name}/stats", name="device_stats")
    async def device_stats(name: PoolName) -> dict[str, Any]:
        return await run_in_thread(devices.get(name).stats)

    async def write_back(owner: Any, body: WritebackRequest) -> WritebackResult:
        """A pool's or a device's writeback: on the disk's threads, not
        maintenance's (a write-back on a slow disk must not keep every other
        pool's compaction waiting)."""
        result = await run_on_disk(
            owner,
            lambda: owner.writeback(
                body.type, idle_seconds=body.idle_seconds, max_pages=body.max_pages
            ),
        )
        return WritebackResult(**result)

    @app.post(
        "/v1/devices/{name}/writeback",
        response_model=WritebackResult,
        name="device_writeback",
    )
    async def device_writeback(name: PoolName, body: WritebackRequest) -> WritebackResult:
        """A device's writeback: its blocks in index order (zram's)."""
        return await write_back(devices.get(name), body)

    @app.get("/v1/pools", response_model=PoolList, name="pools_list")
    async def list_pools() -> PoolList:
        return PoolList(pools=reg.names())

    @app.put("/v1/pools/{pool}", status_code=201, name="pool_create", response_model=PoolCreated)
    async def create_pool(pool: PoolName, body: PoolSettings | None = None) -> dict[str, Any]:
        config = PoolConfig.from_dict((body or PoolSettings()).model_dump())
        # client: a backing file named here must be a new file inside --backing-dir.
        created = await run_in_thread(lambda: reg.create(pool, config, client=True))
        return {"pool": created.name, "config": created.config.to_dict()}

    @app.patch("/v1/pools/{pool}", name="pool_update", response_model=PoolCreated)
    async def update_pool(pool: PoolName, body: LiveSettings) -> dict[str, Any]:
        """Change settings a pool takes while it holds pages (as zram's sysfs
        files can be written at any time); only those given change."""
        changes = body.model_dump(exclude_unset=True)
        # null: no limit, no hysteresis; a limit of 0 is "none", a policy needs a value.
        nullable = {"writeback_limit", "accept_threshold_percent"}
        unset = sorted(k for k, v in changes.items() if v is None and k not in nullable)
        if unset:
            raise InvalidRequestError(f"{', '.join(unset)} cannot be null")
        target = reg.get(pool)
        await run_in_thread(lambda: target.set_live_settings(**changes))
        return {"pool": target.name, "config": target.config.to_dict()}

    @app.delete("/v1/pools/{pool}", status_code=204, name="pool_remove")
    async def remove_pool(pool: PoolName) -> Response:
        # In a thread: closing a pool waits for its backing file's I/O in flight.
        await run_in_thread(reg.remove, pool)
        return Response(status_code=204)

    @app.post(
        "/v1/pools/{pool}/pages",
        status_code=201,
        response_model=HandleList,
        name="store",
        openapi_extra={"requestBody": {"required": True, **OCTETS}},
    )
    async def store(pool: PoolName, request: Request) -> HandleList:
        target = reg.get(pool)
        body = await _read_body(request, settings.max_body_bytes)
        handles: list[int] = await offload(len(body) // PAGE_SIZE, target.store, body)
        return HandleList(handles=handles)

    @app.get(
        "/v1/pools/{pool}/pages/{handle}",
        response_class=Response,
        responses={200: OCTETS},
        name="load",
    )
    async def load_one(pool: PoolName, handle: int) -> Response:
        target = reg.get(pool)
        # offload: a pool with a backing file may read the disk (it says it is busy).
        (page,) = await offload(1, target.load, [handle])
        return Response(page, media_type="application/octet-stream")

    @app.post(
        "/v1/pools/{pool}/pages:load",
        response_class=Response,
        responses={200: OCTETS},
        name="load_batch",
    )
    async def load_batch(pool: PoolName, body: HandleList) -> Response:
        target = reg.get(pool)
        check_batch(len(body.handles))
        pages: list[bytes] = await offload(len(body.handles), target.load, body.handles)
        return Response(b"".join(pages), media_type="application/octet-stream")

    @app.delete("/v1/pools/{pool}/pages/{handle}", status_code=204, name="free")
    async def free_one(pool: PoolName, handle: int) -> Response:
        await offload(1, reg.get(pool).free, [handle])
        return Response(status_code=204)

    @app.post("/v1/pools/{pool}/pages:free", status_code=204, name="free_batch")
    async def free_batch(pool: PoolName, body: HandleList) -> Response:
        target = reg.get(pool)
        check_batch(len(body.handles))
        await offload(len(body.handles), target.free, body.handles)
        return Response(status_code=204)

    @app.get(
        "/v1/pools/{pool}/stats",
        name="stats",
        response_model=PoolStatsOut,
        response_model_by_alias=True,
    )
    async def stats(pool: PoolName) -> dict[str, Any]:
        return await run_in_thread(reg.get(pool).stats)

    @app.post("/v1/pools/{pool}/compact", response_model=CompactResult, name="compact")
    async def compact(pool: PoolName) -> CompactResult:
        released = await run_maintenance(reg.get(pool).compact)
        return CompactResult(pages_released=released)

    @app.post("/v1/pools/{pool}/recompress", response_model=RecompressResult, name="recompress")
    async def recompress(pool: PoolName, body: RecompressRequest | None = None) -> RecompressResult:
        req = body or RecompressRequest()
        target = reg.get(pool)
        result = await run_maintenance(
            lambda: target.recompress(
                req.type,
                algo=req.algo,
                level=req.level,
                idle_seconds=req.idle_seconds,
                threshold=req.threshold,
            )
        )
        return RecompressResult(**result)

    @app.post(
        "/v1/pools/{pool}/writeback",
        response_model=WritebackResult,
        name="writeback",
        responses={400: {"model": ErrorBody, "description": "malformed, or no backing file"}},
    )
    async def writeback(pool: PoolName, body: WritebackRequest) -> WritebackResult:
        """Write pages back to the pool's backing file (zram's ``writeback``).

        A limit reached, a full file or a failing disk stops it early: the
        answer says how many were written and why it stopped (200); the pages
        not written stay in memory.
        """
        return await write_back(reg.get(pool), body)

    return _Guard(app, settings)
