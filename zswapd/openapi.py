"""The OpenAPI document (``/openapi.json``), written for client generators in any language.

FastAPI derives the document from the routes and their pydantic models.  What
a generator needs beyond that, and why:

- *Integer formats.*  Go's and Java's generators make a bare JSON Schema
  integer an int32, while byte counts pass 2**31 and handles fill 64 bits:
  every integer the models declare carries ``format: int64`` (:data:`INT64`),
  or ``int32`` for the small ones (levels, percents, chain sizes:
  :data:`INT32`); handles are unsigned 64-bit (:data:`UINT64`).  Bounds are
  JSON Schema's ``minimum``/``maximum``, as integers.
- *Errors per operation.*  Each operation lists the statuses it can answer
  with, each with the daemon's error body (``{"error": code, "detail":
  text}``) and the codes it may carry: derived from one table,
  :data:`ROUTE_ERRORS` (which :class:`~zswapd.errors.ZswapdError` each route
  may raise), the HTTP layer's map from errors to statuses, and what every
  request may meet (a malformed one: 400; a token: 401; a body past the cap:
  413; the connection's own limits: 408, 431, 503).
- *The token.*  A bearer scheme on every operation but ``/healthz``, whether or
  not the daemon runs with ``--auth-token-file`` (it checks it only then), so
  that generated clients have a place to put it.
- *Stable operation ids*: the routes' names (``store``, ``load_batch``), not
  FastAPI's path-derived ones.

:func:`install` replaces the app's ``openapi()`` with :func:`build`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from zswapd.errors import (
    BackingIoError,
    CompressPoorError,
    ConfigError,
    CorruptObjectError,
    ImpossibleReportError,
    InvalidRequestError,
    MemoryLimitError,
    PageSizeError,
    PoolExistsError,
    PoolLimitError,
    ReclaimFailError,
    StaleHandleError,
    TooLargeError,
    TooManyPoolsError,
    TooManyShadowsError,
    UnauthorizedError,
    UnknownPoolError,
    UnknownShadowError,
    ZswapdError,
)

__all__ = [
    "CONNECTION_ERRORS",
    "DESCRIPTION",
    "INT32",
    "INT64",
    "MEANING",
    "PUBLIC_ROUTES",
    "ROUTE_ERRORS",
    "SECURITY_SCHEME",
    "UINT64",
    "IntFormat",
    "build",
    "install",
]


class IntFormat:
    """Annotated metadata: the JSON Schema ``format`` of an integer (and any
    other keywords that say its width).

    ``Annotated[int, INT64]`` validates as ``int`` does; only the schema changes.
    """

    __slots__ = ("keywords",)

    def __init__(self, format: str, **keywords: Any) -> None:
        self.keywords = {"format": format, **keywords}

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(self.keywords)
        return schema


INT64 = IntFormat("int64")
INT32 = IntFormat("int32")
# Handles fill 64 bits, unsigned (allocator.handles: a 40-bit generation above a
# 24-bit slot), so half of them pass a signed int64.  "x-unsigned" on an int64
# is openapi-generator's mark for uint64 (Go's uint64, Rust's u64); a language
# without one (Java) needs its generator's type mapping to a wider type.
UINT64 = IntFormat("int64", **{"x-unsigned": True, "minimum": 0})

SECURITY_SCHEME = "bearerAuth"

# Routes served without a token, whatever the daemon's settings (_Guard's rule).
PUBLIC_ROUTES = frozenset({"healthz"})

# What each route (by name, which is also its operationId) may raise beyond what
# every request may meet (see _errors_of).  A route missing here stops the
# document from being built: a new route must say what it can answer.
ROUTE_ERRORS: dict[str, tuple[type[ZswapdError], ...]] = {
    "healthz": (),
    "metrics": (),
    "devices_list": (),
    "device_create": (ConfigError, PoolExistsError, TooManyPoolsError, MemoryLimitError),
    "device_remove": (UnknownPoolError,),
    "device_stats": (UnknownPoolError,),
    "device_writeback": (UnknownPoolError, InvalidRequestError, ConfigError),
    "pools_list": (),
    "pool_create": (ConfigError, PoolExistsError, TooManyPoolsError, MemoryLimitError),
    "pool_update": (UnknownPoolError, InvalidRequestError, ConfigError),
    "pool_remove": (UnknownPoolError, PoolExistsError),
    "store": (
        UnknownPoolError,
        PageSizeError,
        CompressPoorError,
        PoolLimitError,
        MemoryLimitError,
        ReclaimFailError,
    ),
    "load": (UnknownPoolError, StaleHandleError, CorruptObjectError, BackingIoError),
    "load_batch": (
        UnknownPoolError,
        StaleHandleError,
        TooLargeError,
        CorruptObjectError,
        BackingIoError,
    ),
    "free": (UnknownPoolError, StaleHandleError),
    "free_batch": (UnknownPoolError, StaleHandleError, InvalidRequestError, TooLargeError),
    "stats": (UnknownPoolError,),
    "compact": (UnknownPoolError,),
    "recompress": (UnknownPoolError, InvalidRequestError, ConfigError, CorruptObjectError),
    "writeback": (UnknownPoolError, InvalidRequestError, ConfigError),
    "shadows_list": (),
    "shadow_report": (InvalidRequestError, ImpossibleReportError, TooManyShadowsError),
    "shadow_remove": (UnknownShadowError,),
}

# What each error code means to a client, for the responses' descriptions.
MEANING: dict[type[ZswapdError], str] = {
    InvalidRequestError: "the request does not match this document, or asks for "
    "something the route refuses",
    ConfigError: "a configuration that cannot be built",
    PageSizeError: "a body that is not whole 4096-byte pages",
    ImpossibleReportError: "a shadow's report no shadow could send (stored_pages > "
    "cold_pages > resident_pages, refaults_total > swapouts_total, an exited process "
    "holding pages, a pid twice, interval_seconds under 1 ms), naming no pool here, "
    "or storing more pages than its pool holds",
    CompressPoorError: "a page that compresses too poorly (huge_policy reject)",
    StaleHandleError: "a handle freed, never issued, or forged",
    UnknownPoolError: "no pool or device of that name",
    PoolExistsError: "a pool or device of that name exists (or the pool backs a device)",
    TooLargeError: "a body or batch past the caps (--max-pages-per-request)",
    UnauthorizedError: "the daemon runs with --auth-token-file and the bearer token "
    "is missing or wrong",
    PoolLimitError: "the pool's limit is reached",
    MemoryLimitError: "the server-wide --memory-limit is reached",
    ReclaimFailError: "no room, and writing pages back could not make any",
    TooManyPoolsError: "--max-pools pools and devices exist",
    UnknownShadowError: "no shadow reports under that name (never did, removed, or expired)",
    TooManyShadowsError: "64 shadows, or 4096 processes across them, report already: "
    "remove one, or wait for one to expire",
    BackingIoError: "the backing file failed a read or write",
    CorruptObjectError: "a stored page no longer decompresses or matches its checksum",
}

# Answers of the connection layer (zswapd.http_protocol) that any request may
# meet, before or whatever its route: status -> (code, meaning).
CONNECTION_ERRORS: dict[int, tuple[str, str]] = {
    408: (
        "request_timeout",
        "the request head or body was not received in time; the connection is closed",
    ),
    431: (
        "header_too_large",
        "the request head is over the size cap; the connection is closed",
    ),
    503: ("too_many_connections", "every connection is busy; try again"),
}

DESCRIPTION = """\
A userspace emulator of Linux compressed swap (zram / zswap): store 4 KiB pages,
get handles back, load and free them by handle, and watch the pool's figures.

Pages travel as raw `application/octet-stream`: a store's body is k x 4096
bytes, a batch load answers N x 4096 bytes in the order of the handles asked.
A handle is an unsigned 64-bit integer, using all 64 bits (`format: int64` with
`x-unsigned: true`): keep it as the server returned it; in Java, map it to a
type that holds 2**64 - 1 (a JavaScript client needs BigInt past 2**53).

Authentication: every operation but `/healthz` carries the `bearerAuth`
scheme (`Authorization: Bearer TOKEN`); the daemon checks it only when started
with `--auth-token-file`, and ignores it otherwise.

Every error answer is `{"error": code, "detail": text}`; each operation lists
the statuses it may answer with and the codes each carries.  Any request may
also meet the connection's limits: 408 (too slow), 431 (head too large), 503
(too many connections).
"""


def _error_response(codes: list[tuple[str, str]], ref: str) -> dict[str, Any]:
    description = "; ".join(f"`{code}`: {meaning}" for code, meaning in codes)
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ref}}},
    }


def _errors_of(name: str, operation: dict[str, Any]) -> dict[int, list[tuple[str, str]]]:
    """Status -> [(code, meaning)] of every error ``operation`` may answer with."""
    errors: list[type[ZswapdError]] = list(ROUTE_ERRORS[name])
    if operation.get("parameters") or "requestBody" in operation:
        errors.insert(0, InvalidRequestError)  # what fails validation
    if "requestBody" in operation:
        errors.append(TooLargeError)  # the guard's cap on any body
    if name not in PUBLIC_ROUTES:
        errors.append(UnauthorizedError)
    out: dict[int, list[tuple[str, str]]] = {}
    for cls in errors:
        entry = (cls.code, MEANING[cls])
        listed = out.setdefault(cls.status, [])
        if entry not in listed:
            listed.append(entry)
    for status, entry in CONNECTION_ERRORS.items():
        out.setdefault(status, []).append(entry)
    return out


def _integers(node: Any) -> None:
    """Bounds of integer schemas as integers (FastAPI's document model makes
    them floats, 0.0, which some generators take for a decimal bound)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum"):
                bound = node.get(key)
                if isinstance(bound, float) and bound.is_integer():
                    node[key] = int(bound)
        for value in node.values():
            _integers(value)
    elif isinstance(node, list):
        for value in node:
            _integers(value)


def build(
    app: FastAPI,
    *,
    error_model: type[BaseModel],
) -> dict[str, Any]:
    """The document of ``app``: FastAPI's, with errors, security and formats as
    the module docstring says.

    Args:
        error_model: the model of every error answer.

    Raises:
        KeyError: a route missing from ROUTE_ERRORS.
    """
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        servers=app.servers,
        tags=app.openapi_tags,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # FastAPI's own 422 answer, which this daemon never sends (a request that
    # fails validation is a 400 with the error body).
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    error_name = error_model.__name__
    schemas[error_name] = error_model.model_json_schema(ref_template="#/components/schemas/{model}")
    ref = f"#/components/schemas/{error_name}"
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "the token of --auth-token-file; needed only when the daemon "
            "runs with it",
        }
    }
    for methods in doc["paths"].values():
        for operation in methods.values():
            name = operation["operationId"]
            responses = operation["responses"]
            # Only the route's answers: FastAPI adds a 422 of its own to any
            # route with parameters.
            kept = {s: r for s, r in responses.items() if s.startswith("2")}
            for status, codes in sorted(_errors_of(name, operation).items()):
                kept[str(status)] = _error_response(codes, ref)
            operation["responses"] = kept
            operation["security"] = [] if name in PUBLIC_ROUTES else [{SECURITY_SCHEME: []}]
            body = operation.get("requestBody")
            if body is not None:
                body.setdefault("required", False)
    _integers(doc)
    return doc


def install(
    app: FastAPI,
    *,
    error_model: type[BaseModel],
) -> None:
    """Serve :func:`build`'s document at ``app.openapi_url`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, error_model=error_model)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
