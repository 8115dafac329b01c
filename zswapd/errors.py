"""Errors of the page store and the service.

The tree (HTTP status in brackets, mapped in one table by the HTTP layer)::

    ZswapdError                 root [500]
    ├── InvalidRequestError     malformed input [400]
    │   └── ConfigError         a pool configuration that cannot be built [400]
    ├── PageSizeError           a page that is not 4096 bytes [422]
    ├── StaleHandleError        a handle freed, never issued or forged [404]
    ├── UnknownPoolError        no pool of that name [404]
    ├── PoolExistsError         a pool of that name exists already [409]
    ├── TooLargeError           a request past the configured caps [413]
    ├── UnauthorizedError       the server wants a (different) token [401]
    ├── PoolLimitError          the pool's memory limit is reached, or its
    │   │                       handle table is full (2**24 - 1 pages) [507]
    │   ├── MemoryLimitError    the server-wide --memory-limit is reached [507]
    │   ├── ReclaimFailError    no room, and writing pages back to the backing
    │   │                       file could not make any (zswap's reclaim_fail) [507]
    │   └── TooManyPoolsError   --max-pools pools and devices exist already [507]
    ├── BackingIoError          the backing file failed a read or write (a full
    │                           disk, an I/O error) [507]
    ├── CompressPoorError       rejected: compresses too poorly (huge_policy=reject) [422]
    └── CorruptObjectError      a stored object no longer decompresses [500]

Every store operation that raises has changed nothing.
"""

from __future__ import annotations

__all__ = [
    "BackingIoError",
    "CompressPoorError",
    "ConfigError",
    "CorruptObjectError",
    "InvalidRequestError",
    "MemoryLimitError",
    "PageSizeError",
    "PoolExistsError",
    "PoolLimitError",
    "ReclaimFailError",
    "StaleHandleError",
    "TooLargeError",
    "TooManyPoolsError",
    "UnauthorizedError",
    "UnknownPoolError",
    "ZswapdError",
    "error_class",
]


class ZswapdError(Exception):
    """Root of every error zswapd raises on purpose.

    Attributes:
        code: a short machine-readable name, used in error responses.
    """

    code = "internal"


class InvalidRequestError(ZswapdError):
    code = "bad_request"


class ConfigError(InvalidRequestError):
    code = "bad_config"


class PageSizeError(ZswapdError):
    code = "bad_page_size"


class StaleHandleError(ZswapdError):
    code = "stale_handle"


class UnknownPoolError(ZswapdError):
    code = "unknown_pool"


class PoolExistsError(ZswapdError):
    code = "pool_exists"


class TooLargeError(ZswapdError):
    code = "too_large"


class PoolLimitError(ZswapdError):
    code = "pool_limit"


class MemoryLimitError(PoolLimitError):
    """All pools and devices together hold the server's --memory-limit."""

    code = "memory_limit"


class ReclaimFailError(PoolLimitError):
    """A store found no room, and writing pages back could not make enough:
    the backing file is full, failing, or the pool has nothing left to write."""

    code = "reclaim_fail"


class BackingIoError(ZswapdError):
    """The backing file failed: ENOSPC, EIO, a short write.  The pages in
    memory are unaffected; the one being moved stays where it was."""

    code = "backing_io"


class TooManyPoolsError(PoolLimitError):
    """--max-pools pools (devices included) exist; remove one to create another.

    507 like the memory limits: the server lacks room for the resource, and
    freeing some (deleting a pool) is the remedy.
    """

    code = "max_pools"


class CompressPoorError(ZswapdError):
    code = "compress_poor"


class CorruptObjectError(ZswapdError):
    code = "corrupt_object"


class UnauthorizedError(ZswapdError):
    """The server wants a (different) bearer token."""

    code = "unauthorized"


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
    StaleHandleError,
    UnknownPoolError,
    PoolExistsError,
    TooLargeError,
    PoolLimitError,
    MemoryLimitError,
    ReclaimFailError,
    TooManyPoolsError,
    BackingIoError,
    CompressPoorError,
    CorruptObjectError,
    UnauthorizedError,
)
