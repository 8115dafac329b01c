"""The HTTP API: a thin FastAPI layer over the pool registry.

Routes and statuses are DESIGN.md's contract.  Every error is JSON
``{"error": code, "detail": message}``, its status the error class's own
(zswapd.errors).  Request and answer bodies are the models of
zswapd.http_schemas.  Page bodies are raw ``application/octet-stream``; request
bodies are read with a cap (``max_body_bytes``) before anything is parsed, so
an oversized request costs O(cap), not O(what the client sends).  With a token
set, every route but ``/healthz`` wants ``Authorization: Bearer <token>``
(compared in constant time).
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from zswapd import __version__
from zswapd.config import PoolConfig
from zswapd.device import DeviceRegistry
from zswapd.errors import (
    InvalidRequestError,
    StaleHandleError,
    TooLargeError,
    UnauthorizedError,
    UnknownPoolError,
    ZswapdError,
)
from zswapd.http_protocol import note_stale_handle
from zswapd.http_schemas import (
    CompactResult,
    DeviceCreated,
    DeviceList,
    DeviceSettings,
    DeviceStatsOut,
    ErrorBody,
    HandleList,
    Health,
    LiveSettings,
    PoolCreated,
    PoolList,
    PoolSettings,
    PoolStatsOut,
    RecompressRequest,
    RecompressResult,
    ShadowList,
    ShadowReportIn,
    WritebackRequest,
    WritebackResult,
)
from zswapd.metrics import CONTENT_TYPE_LATEST, Metrics
from zswapd.offload import offload, run_in_thread, run_maintenance, run_on_disk
from zswapd.openapi import DESCRIPTION, UINT64, install
from zswapd.pool import PAGE_SIZE
from zswapd.pools import PoolRegistry
from zswapd.shadows import ShadowRegistry

__all__ = ["ApiSettings", "create_app"]


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


def _octets(description: str) -> dict[str, Any]:
    """A raw body or answer: pages, 4096 bytes each, nothing around them."""
    return {
        "description": description,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }


PoolName = Annotated[
    str, Path(description="pool name", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
]
ShadowName = Annotated[
    str, Path(description="shadow name", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
]
HandleParam = Annotated[int, UINT64, Path(description="a handle, as the server returned it")]


# Optional bodies: absent means every field's default.  Typed as the model
# itself, not "model or null", which generators cannot express (so a JSON null
# body is refused, 400, as the document says: it is no object).
PoolSettingsBody = Annotated[PoolSettings, Body(default_factory=PoolSettings)]
RecompressBody = Annotated[RecompressRequest, Body(default_factory=RecompressRequest)]


# PoolName's pattern: a name a fast route takes without FastAPI's validation.
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _RawRoute(Route):
    """A route of Starlette's alone, put ahead of the FastAPI route of the same
    path and method.

    FastAPI's route stays: the OpenAPI document is made from it, and a request
    whose pool name is not a valid one falls through to it (this route does not
    match), so that it is refused exactly as before.  A request this route
    serves skips FastAPI's dependency solving, response model validation and
    encoding, which it does once per request whatever the body's size.
    """

    def matches(self, scope: Any) -> tuple[Match, Any]:
        match, child = super().matches(scope)
        if match == Match.FULL and not _POOL_NAME.fullmatch(child["path_params"]["pool"]):
            return Match.NONE, {}
        return match, child


def _handle_list(handles: list[int]) -> bytes:
    """HandleList's JSON, byte for byte as FastAPI renders it."""
    return b'{"handles":[' + ",".join(map(str, handles)).encode() + b"]}"


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _refusal(error: ZswapdError) -> JSONResponse:
    """An error sent before the body is read: the body that may still be on
    its way is not wanted, so the connection closes rather than drains it."""
    response = _error(error.status, error.code, str(error))
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
            await _refusal(InvalidRequestError("more than one Authorization header"))(
                scope, receive, send
            )
            return
        if self._token is not None and path != "/healthz":
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given, self._token):
                await _refusal(UnauthorizedError("a valid bearer token is required"))(
                    scope, receive, send
                )
                return
        cap = self.settings.max_body_bytes if path.endswith("/pages") else self.JSON_CAP
        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _refusal(InvalidRequestError("Content-Length is not a number"))(
                scope, receive, send
            )
            return
        if declared is not None and int(declared) > cap:
            await _refusal(TooLargeError(f"body over the {cap}-byte cap"))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    # An HTTPException, which FastAPI's body parsing lets through
                    # (anything else it turns into a 400).  The rest of the body
                    # is not read: the answer says the connection closes, as
                    # every refusal before the body does, so no client reuses it.
                    raise StarletteHTTPException(
                        413, f"body over the {cap}-byte cap", headers={"connection": "close"}
                    )
            return message

        start = time.perf_counter()
        try:
            await self.app(scope, counted, send)
        finally:
            route = scope.get("route")
            op = getattr(route, "name", None) or "unknown"
            for observe in self.app.state.observers:
                observe("http", op, time.perf_counter() - start)


TAGS = [
    {"name": "pages", "description": "store, load and free pages by handle"},
    {"name": "pools", "description": "pools: create, configure, inspect, maintain"},
    {"name": "devices", "description": "block devices (NBD) and their pools"},
    {"name": "shadows", "description": "what `zswapd shadow` reports of live processes"},
    {"name": "server", "description": "liveness and Prometheus metrics"},
]


def _operation_id(route: APIRoute) -> str:
    # The route's name: stable (not derived from the path) and what generators
    # name the client's methods after (pools_list, store, load_batch).
    return route.name


def _pool_pages(registry: PoolRegistry) -> Callable[[str], int]:
    """The pages a pool holds, by name: in RAM or written back (a shadow's
    handles, which it counts as stored, stay valid when written back); 0 for a
    pool removed since the report found it."""

    def pages(name: str) -> int:
        try:
            return registry.get(name).stored_pages
        except UnknownPoolError:
            return 0

    return pages


def create_app(
    registry: PoolRegistry,
    settings: ApiSettings | None = None,
    devices: DeviceRegistry | None = None,
    shadows: ShadowRegistry | None = None,
) -> _Guard:
    """The ASGI app serving ``registry`` (a FastAPI app behind a guard)."""
    settings = settings or ApiSettings()
    app = FastAPI(
        title="zswapd",
        version=__version__,
        description=DESCRIPTION,
        # Generators take the first as their default base URL; the second keeps
        # /docs' "try it out" on this daemon, whatever its address.
        servers=[
            {"url": "http://127.0.0.1:7415", "description": "zswapd serve's default address"},
            {"url": "/", "description": "the daemon serving this document"},
        ],
        openapi_tags=TAGS,
        generate_unique_id_function=_operation_id,
    )
    install(app, error_model=ErrorBody)
    app.state.registry = registry
    app.state.settings = settings
    devices = devices if devices is not None else DeviceRegistry(registry)
    app.state.devices = devices
    shadows = shadows if shadows is not None else ShadowRegistry()
    # A report names a pool of this daemon's, goes with it, and stores no more
    # pages than it holds.
    shadows.pool_exists = registry.__contains__
    shadows.pool_pages = _pool_pages(registry)
    app.state.shadows = shadows
    app.state.metrics = metrics = Metrics(registry, devices, shadows)
    # The NBD listener is bound after the app is made: the server sets this
    # (a format string with {name}) once it knows the address.
    app.state.nbd_uri = None

    def nbd_uri(name: str) -> str | None:
        template: str | None = app.state.nbd_uri
        return None if template is None else template.format(name=name)

    # Callables (interface, op, seconds), told of every request.
    app.state.observers = [metrics.observe]

    @app.exception_handler(ZswapdError)
    async def zswapd_error(request: Request, exc: ZswapdError) -> JSONResponse:
        response = _error(exc.status, exc.code, str(exc))
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

    @app.get("/healthz", name="healthz", tags=["server"])
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
        tags=["server"],
        responses={
            200: {
                "description": "the Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus_metrics() -> Response:
        body = await run_in_thread(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/devices", response_model=DeviceList, name="devices_list", tags=["devices"])
    async def list_devices() -> dict[str, list[str]]:
        return {"devices": devices.names()}

    @app.put(
        "/v1/devices/{name}",
        status_code=201,
        response_model=DeviceCreated,
        name="device_create",
        tags=["devices"],
    )
    async def create_device(name: PoolName, body: DeviceSettings) -> dict[str, Any]:
        values = body.model_dump()
        size = values.pop("size")
        config = PoolConfig.from_dict(values)
        # client=True: a backing file must be a new name inside --backing-dir.
        device = await run_in_thread(lambda: devices.create(name, size, config, client=True))
        return {
            "device": device.name,
            "size": device.size,
            "config": device.pool.config.to_dict(),
            "nbd": nbd_uri(device.name),
        }

    async def removed(remove: Callable[[str], None], name: str) -> Response:
        """A pool or device removed, in a thread: closing one waits for its
        backing file's I/O in flight."""
        await run_in_thread(remove, name)
        # The reports on it went with its pages (zswapd.shadows): at once, so
        # a pool made again under the name is not shown a dead shadow's figures.
        shadows.forget_pool(name)
        return Response(status_code=204)

    @app.delete("/v1/devices/{name}", status_code=204, name="device_remove", tags=["devices"])
    async def remove_device(name: PoolName) -> Response:
        return await removed(devices.remove, name)

    @app.get(
        "/v1/devices/{name}/stats",
        response_model=DeviceStatsOut,
        response_model_by_alias=True,
        name="device_stats",
        tags=["devices"],
    )
    async def device_stats(name: PoolName) -> dict[str, Any]:
        stats: dict[str, Any] = await run_in_thread(devices.get(name).stats)
        return {**stats, "nbd": nbd_uri(name)}

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

    @app.post("/v1/devices/{name}/writeback", name="device_writeback", tags=["devices"])
    async def device_writeback(name: PoolName, body: WritebackRequest) -> WritebackResult:
        """A device's writeback: its blocks in index order (zram's)."""
        return await write_back(devices.get(name), body)

    @app.get("/v1/shadows", name="shadows_list", tags=["shadows"])
    async def list_shadows() -> ShadowList:
        """Every shadow's last report that has not expired, by name, with its age."""
        listed = await run_in_thread(shadows.to_dict)
        return ShadowList.model_validate({"shadows": listed})

    @app.put("/v1/shadows/{name}", status_code=204, name="shadow_report", tags=["shadows"])
    async def report_shadow(name: ShadowName, body: ShadowReportIn) -> Response:
        """Replace the shadow's report (its first makes it): checked whole, so a
        report refused leaves the previous one as it was.  Figures no shadow
        could send (more stored than cold, more refaults than swap-outs, an
        exited process holding pages, a pid twice, an interval under 1 ms), a
        pool that does not exist, or more pages stored, summed over the
        report's processes, than the pool holds: 422 ``impossible_report``.
        At most 64 shadows and 4096 processes across them: past either, 507
        ``max_shadows``.  A report is removed with its pool."""
        # In a thread: checking 1024 processes is a few milliseconds of work.
        await run_in_thread(shadows.report, name, body.model_dump())
        return Response(status_code=204)

    @app.delete("/v1/shadows/{name}", status_code=204, name="shadow_remove", tags=["shadows"])
    async def remove_shadow(name: ShadowName) -> Response:
        shadows.remove(name)
        return Response(status_code=204)

    @app.get("/v1/pools", name="pools_list", tags=["pools"])
    async def list_pools() -> PoolList:
        return PoolList(pools=reg.names())

    @app.put(
        "/v1/pools/{pool}",
        status_code=201,
        name="pool_create",
        response_model=PoolCreated,
        tags=["pools"],
    )
    async def create_pool(pool: PoolName, body: PoolSettingsBody) -> dict[str, Any]:
        """Create a pool; without a body, with every default."""
        config = PoolConfig.from_dict(body.model_dump())
        # client: a backing file named here must be a new file inside --backing-dir.
        created = await run_in_thread(lambda: reg.create(pool, config, client=True))
        return {"pool": created.name, "config": created.config.to_dict()}

    @app.patch("/v1/pools/{pool}", name="pool_update", response_model=PoolCreated, tags=["pools"])
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

    @app.delete("/v1/pools/{pool}", status_code=204, name="pool_remove", tags=["pools"])
    async def remove_pool(pool: PoolName) -> Response:
        return await removed(reg.remove, pool)

    @app.post(
        "/v1/pools/{pool}/pages",
        status_code=201,
        name="store",
        tags=["pages"],
        response_description="the pages' handles, in the order of the pages",
        openapi_extra={
            "requestBody": {
                "required": True,
                **_octets(
                    "k x 4096 bytes: the pages to store, k >= 1 and at most the daemon's "
                    "max_pages_per_request (GET /healthz); all or nothing"
                ),
            }
        },
    )
    async def store(pool: PoolName, request: Request) -> HandleList:
        # Served by store_pages below, for every pool name it takes; this route
        # stays for the OpenAPI document and refuses the names it does not.
        return HandleList.model_construct(handles=await stored(pool, request))

    async def stored(pool: str, request: Request) -> list[int]:
        target = reg.get(pool)
        body = await _read_body(request, settings.max_body_bytes)
        handles: list[int] = await offload(len(body) // PAGE_SIZE, target.store, body)
        return handles

    async def store_pages(request: Request) -> Response:
        """POST /v1/pools/{pool}/pages without FastAPI's per-request machinery:
        the body is read once and handed to the pool as it came, the handles
        written as the JSON FastAPI would write for HandleList."""
        handles = await stored(request.path_params["pool"], request)
        return Response(_handle_list(handles), status_code=201, media_type="application/json")

    app.router.routes.insert(
        0, _RawRoute("/v1/pools/{pool}/pages", store_pages, methods=["POST"], name="store")
    )

    @app.get(
        "/v1/pools/{pool}/pages/{handle}",
        response_class=Response,
        responses={200: _octets("the page: 4096 bytes")},
        name="load",
        tags=["pages"],
    )
    async def load_one(pool: PoolName, handle: HandleParam) -> Response:
        target = reg.get(pool)
        # offload: a pool with a backing file may read the disk (it says it is busy).
        (page,) = await offload(1, target.load, [handle])
        return Response(page, media_type="application/octet-stream")

    @app.post(
        "/v1/pools/{pool}/pages:load",
        response_class=Response,
        responses={
            200: _octets(
                "N x 4096 bytes: the pages of the N handles asked, concatenated in the "
                "order of the handles"
            )
        },
        name="load_batch",
        tags=["pages"],
    )
    async def load_batch(pool: PoolName, body: HandleList) -> Response:
        target = reg.get(pool)
        check_batch(len(body.handles))
        # The pages decompressed straight into the answer's one bytes object.
        pages: bytes = await offload(len(body.handles), target.load_frame, body.handles, b"")
        return Response(pages, media_type="application/octet-stream")

    @app.delete("/v1/pools/{pool}/pages/{handle}", status_code=204, name="free", tags=["pages"])
    async def free_one(pool: PoolName, handle: HandleParam) -> Response:
        await offload(1, reg.get(pool).free, [handle])
        return Response(status_code=204)

    @app.post("/v1/pools/{pool}/pages:free", status_code=204, name="free_batch", tags=["pages"])
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
        tags=["pools"],
    )
    async def stats(pool: PoolName) -> dict[str, Any]:
        # Rendering the class table is work too: off the event loop with the rest.
        return await run_in_thread(lambda: reg.get(pool).stats().to_dict())

    @app.post("/v1/pools/{pool}/compact", name="compact", tags=["pools"])
    async def compact(pool: PoolName) -> CompactResult:
        released = await run_maintenance(reg.get(pool).compact)
        return CompactResult(pages_released=released)

    @app.post("/v1/pools/{pool}/recompress", name="recompress", tags=["pools"])
    async def recompress(pool: PoolName, req: RecompressBody) -> RecompressResult:
        """Recompress huge and/or idle pages (zram's ``recompress``); without a
        body, the huge pages with the pool's recompress_algo."""
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

    @app.post("/v1/pools/{pool}/writeback", name="writeback", tags=["pools"])
    async def writeback(pool: PoolName, body: WritebackRequest) -> WritebackResult:
        """Write pages back to the pool's backing file (zram's ``writeback``).

        A limit reached, a full file or a failing disk stops it early: the
        answer says how many were written and why it stopped (200); the pages
        not written stay in memory.
        """
        return await write_back(reg.get(pool), body)

    return _Guard(app, settings)
