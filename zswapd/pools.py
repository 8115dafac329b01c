"""Named pools side by side (like /dev/zram0, /dev/zram1), created and removed at run time."""

from __future__ import annotations

import threading
from collections.abc import Callable

from zswapd.config import PoolConfig, check_pool_name
from zswapd.errors import PoolExistsError, UnknownPoolError
from zswapd.pool import PagePool

__all__ = ["PoolRegistry"]


class PoolRegistry:
    """Pools by name.  Thread-safe; each pool has its own lock and figures."""

    def __init__(self, factory: Callable[[str, PoolConfig], PagePool] = PagePool) -> None:
        self._pools: dict[str, PagePool] = {}
        self._lock = threading.Lock()
        self._factory = factory
        # Pools backing block devices: removed only with their device.
        self.pinned: set[str] = set()

    def create(self, name: str, config: PoolConfig | None = None) -> PagePool:
        """A new pool.

        Raises:
            ConfigError: a bad name or configuration.
            PoolExistsError: a pool of that name exists.
        """
        check_pool_name(name)
        pool = self._factory(name, config or PoolConfig())
        with self._lock:
            if name in self._pools:
                raise PoolExistsError(f"pool {name!r} exists already")
            self._pools[name] = pool
        return pool

    def adopt(self, pool: PagePool) -> None:
        """Add an existing pool (one restored from saved state).

        Raises:
            PoolExistsError: a pool of that name exists.
        """
        with self._lock:
            if pool.name in self._pools:
                raise PoolExistsError(f"pool {pool.name!r} exists already")
            self._pools[pool.name] = pool

    def get(self, name: str) -> PagePool:
        """The pool called ``name``.

        Raises:
            UnknownPoolError: no such pool.
        """
        try:
            return self._pools[name]
        except KeyError:
            raise UnknownPoolError(f"no pool named {name!r}") from None

    def remove(self, name: str, *, device: bool = False) -> None:
        """Drop a pool and everything stored in it.

        Raises:
            UnknownPoolError: no such pool.
            PoolExistsError: the pool backs a block device (remove the device).
        """
        with self._lock:
            if name in self.pinned and not device:
                raise PoolExistsError(f"pool {name!r} backs a device; remove the device")
            if self._pools.pop(name, None) is None:
                raise UnknownPoolError(f"no pool named {name!r}")
            self.pinned.discard(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._pools)

    def __contains__(self, name: object) -> bool:
        return name in self._pools
