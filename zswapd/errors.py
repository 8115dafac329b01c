"""Errors of the page store and the service: one tree, each class with its code
and its status beside it.

Every frontend reads the same two attributes: HTTP answers ``status`` with
``{"error": code, "detail": ...}``, the wire protocol sends both in its error
frame, the OpenAPI document lists each operation's errors by them, and the
clients map a code back to its class (:func:`error_class`).  The tree, with
each class's status::

    ZswapdError                  500  root
    ├── InvalidRequestError      400  malformed input
    │   ├── ConfigError          400  a pool configuration that cannot be built
    │   └── ImpossibleReportError 422 a shadow's report no shadow could send (more
    │                                 stored than cold, ...), or naming no pool
    ├── UnauthorizedError        401  the server wants a (different) token
    ├── StaleHandleError         404  a handle freed, never issued or forged
    ├── UnknownPoolError         404  no pool (or device) of that name
    ├── UnknownShadowError       404  no shadow's report of that name (or expired)
    ├── PoolExistsError          409  a pool of that name exists already
    ├── TooLargeError            413  a request past the configured caps
    ├── PageSizeError            422  a page that is not 4096 bytes
    ├── CompressPoorError        422  compresses too poorly (huge_policy=reject)
    ├── PoolLimitError           507  the pool's memory limit is reached, or its
    │   │                             handle table is full (2**24 - 1 pages)
    │   ├── MemoryLimitError     507  the server-wide --memory-limit is reached
    │   ├── ReclaimFailError     507  no room, and writing pages back to the backing
    │   │                             file could not make any (zswap's reclaim_fail)
    │   └── TooManyPoolsError    507  --max-pools pools and devices exist already
    ├── TooManyShadowsError      507  64 shadows, or 4096 processes across them,
    │                                 report already (zswapd.shadows)
    ├── BackingIoError           507  the backing file failed a read or write
    ├── CorruptObjectError       500  a stored object no longer decompresses
    └── StateError               500  a state file torn, corrupted or not ours
                                      (refused at start; never sent to a client)

Beside the tree, the framing errors of the two binary protocols, raised by
their sans-IO cores before any request is understood (so the connection is
closed, not answered and kept): :class:`zswapd.protocol.ProtocolError`
carries the status of the error frame it sends (400, 408, 413, 505, ...), and
:class:`zswapd.nbd_protocol.NbdProtocolError` ends an NBD connection.

Every store operation that raises has changed nothing.
"""

from __future__ import annotations

__all__ = [
    "BackingIoError",
    "CompressPoorError",
    "ConfigError",
    "CorruptObjectError",
    "ImpossibleReportError",
    "InvalidRequestError",
    "MemoryLimitError",
    "PageSizeError",
    "PoolExistsError",
    "PoolLimitError",
    "ReclaimFailError",
    "StaleHandleError",
    "StateError",
    "TooLargeError",
    "TooManyPoolsError",
    "TooManyShadowsError",
    "UnauthorizedError",
    "UnknownPoolError",
    "UnknownShadowError",
    "ZswapdError",
    "error_class",
]


class ZswapdError(Exception):
    """Root of every error zswapd raises on purpose.

    Attributes:
        code: a short machine-readable name, used in error responses.
        status: the HTTP status it is answered with (the wire protocol's too).
    """

    code = "internal"
    status = 500


class InvalidRequestError(ZswapdError):
    code = "bad_request"
    status = 400


class ConfigError(InvalidRequestError):
    code = "bad_config"
    status = 400


class ImpossibleReportError(InvalidRequestError):
    """A shadow's report whose figures contradict each other (more pages stored
    than cold, more refaults than swap-outs, ...) or that names no pool here:
    well formed, but no shadow could have sent it (zswapd.shadows)."""

    code = "impossible_report"
    status = 422


class PageSizeError(ZswapdError):
    code = "bad_page_size"
    status = 422


class StaleHandleError(ZswapdError):
    code = "stale_handle"
    status = 404


class UnknownPoolError(ZswapdError):
    code = "unknown_pool"
    status = 404


class UnknownShadowError(ZswapdError):
    """No shadow reports under that name: never did, removed, or expired."""

    code = "unknown_shadow"
    status = 404


class PoolExistsError(ZswapdError):
    code = "pool_exists"
    status = 409


class TooLargeError(ZswapdError):
    code = "too_large"
    status = 413


class PoolLimitError(ZswapdError):
    code = "pool_limit"
    status = 507


class MemoryLimitError(PoolLimitError):
    """All pools and devices together hold the server's --memory-limit."""

    code = "memory_limit"
    status = 507


class ReclaimFailError(PoolLimitError):
    """A store found no room, and writing pages back could not make enough:
    the backing file is full, failing, or the pool has nothing left to write."""

    code = "reclaim_fail"
    status = 507


class BackingIoError(ZswapdError):
    """The backing file failed: ENOSPC, EIO, a short write.  The pages in
    memory are unaffected; the one being moved stays where it was."""

    code = "backing_io"
    status = 507


class TooManyPoolsError(PoolLimitError):
    """--max-pools pools (devices included) exist; remove one to create another.

    507 like the memory limits: the server lacks room for the resource, and
    freeing some (deleting a pool) is the remedy.
    """

    code = "max_pools"
    status = 507


class TooManyShadowsError(ZswapdError):
    """As many shadows report as the daemon keeps (64), or a report would take
    the processes of all of them past 4096; refused until one is removed or
    expires.  A shadow already reporting may always renew a report no larger
    than its last.

    507 as --max-pools: the server lacks room for one more, and removing one
    (or waiting for a silent one to expire) is the remedy.  Not a
    PoolLimitError: no pool is full, and a shadow that retries stores at a
    pool's limit must not take this for one.
    """

    code = "max_shadows"
    status = 507


class CompressPoorError(ZswapdError):
    code = "compress_poor"
    status = 422


class CorruptObjectError(ZswapdError):
    code = "corrupt_object"
    status = 500


class StateError(ZswapdError):
    """A state file that is torn, corrupted or not ours: refused whole."""

    code = "bad_state"
    status = 500


class UnauthorizedError(ZswapdError):
    """The server wants a (different) bearer token."""

    code = "unauthorized"
    status = 401


def error_class(code: str) -> type[ZswapdError]:
    """The exception class for an error code sent by a server (ZswapdError if unknown)."""
    for cls in _ALL:
        if cls.code == code:
            return cls
    return ZswapdError


_ALL: tuple[type[ZswapdError], ...] = (
    ConfigError,
    InvalidRequestError,
    PageSizeError,
    ImpossibleReportError,
    StaleHandleError,
    UnknownPoolError,
    UnknownShadowError,
    PoolExistsError,
    TooLargeError,
    PoolLimitError,
    MemoryLimitError,
    ReclaimFailError,
    TooManyPoolsError,
    TooManyShadowsError,
    BackingIoError,
    CompressPoorError,
    CorruptObjectError,
    StateError,
    UnauthorizedError,
)
