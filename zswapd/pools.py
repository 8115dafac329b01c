"""Named pools side by side (like /dev/zram0, /dev/zram1), created and removed at run time.

The registry also holds what bounds the pools together: the server-wide page
budget every pool's allocator charges (--memory-limit), the address space each
pool may reserve (never more than that limit, or MemTotal without one), and the
number of pools, devices' pools included (--max-pools).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from allocator import PageBudget
from zswapd.config import PoolConfig, check_pool_name
from zswapd.errors import PoolExistsError, TooManyPoolsError, UnknownPoolError
from zswapd.pool import PagePool

__all__ = ["PoolRegistry"]


class PoolRegistry:
    """Pools by name.  Thread-safe; each pool has its own lock and figures.

    Args:
        factory: builds a pool (name, config, budget=, arena_pages=).
        budget: the page budget all pools share (None: none, the default for
            tests and embedding; the daemon always passes one).
        arena_pages: address space one pool may reserve, at most.
        max_pools: pools (devices' included) at most; None: no bound.
    """

    def __init__(
        self,
        factory: Callable[..., PagePool] = PagePool,
        *,
        budget: PageBudget | None = None,
        arena_pages: int | None = None,
        max_pools: int | None = None,
    ) -> None:
        self._pools: dict[str, PagePool] = {}
        self._lock = threading.Lock()
        self._factory = factory
        self.budget = budget
        self.arena_pages = arena_pages
        self.max_pools = max_pools
        # Pools backing block devices: removed only with their device.
        self.pinned: set[str] = set()

    def _check_room(self, name: str) -> None:
        """Raise if ``name`` exists or no pool may be added (lock held)."""
        if name in self._pools:
            raise PoolExistsError(f"pool {name!r} exists already")
        if self.max_pools is not None and len(self._pools) >= self.max_pools:
            raise TooManyPoolsError(
                f"{len(self._pools)} pools and devices exist, the server's most "
                f"(--max-pools {self.max_pools}); remove one first"
            )

    def create(self, name: str, config: PoolConfig | None = None) -> PagePool:
        """A new pool, charging the shared budget.

        Raises:
            ConfigError: a bad name or configuration.
            PoolExistsError: a pool of that name exists.
            TooManyPoolsError: max_pools pools exist.
        """
        check_pool_name(name)
        with self._lock:
            self._check_room(name)
        # Built outside the lock (it maps the arena); checked again on the way in.
        pool = self._factory(
            name, config or PoolConfig(), budget=self.budget, arena_pages=self.arena_pages
        )
        with self._lock:
            try:
                self._check_room(name)
            except BaseException:
                pool.close()
                raise
            self._pools[name] = pool
        return pool

    def adopt(self, pool: PagePool) -> None:
        """Add an existing pool (one restored from saved state).

        Raises:
            PoolExistsError: a pool of that name exists.
            TooManyPoolsError: max_pools pools exist.
        """
        with self._lock:
            self._check_room(pool.name)
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
        """Drop a pool and everything stored in it (its pages leave the budget).

        Raises:
            UnknownPoolError: no such pool.
            PoolExistsError: the pool backs a block device (remove the device).
        """
        with self._lock:
            if name in self.pinned and not device:
                raise PoolExistsError(f"pool {name!r} backs a device; remove the device")
            pool = self._pools.pop(name, None)
            if pool is None:
                raise UnknownPoolError(f"no pool named {name!r}")
            self.pinned.discard(name)
        pool.close()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._pools)

    def __contains__(self, name: object) -> bool:
        return name in self._pools
