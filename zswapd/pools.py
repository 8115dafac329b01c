"""Named pools side by side (like /dev/zram0, /dev/zram1), created and removed at run time.

The registry also holds what bounds the pools together: the server-wide page
budget every pool's allocator charges (--memory-limit), the address space each
pool may reserve (never more than that limit, or MemTotal without one), and the
number of pools, devices' pools included (--max-pools).

It also decides where pools may write: a backing file named by a client (a
pool created over HTTP) must be a new file inside ``backing_dir``
(--backing-dir), and all such files together may be at most
``backing_quota`` bytes (--backing-quota), so that no client can make the
daemon write a file of its choosing or fill a disk; the operator's own pools
(config file, serve flags) may name any path.  No two pools share a file.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path

from allocator import PageBudget
from zswapd.backing import BackingFile, check_client_name, open_client_dir
from zswapd.config import PoolConfig, check_pool_name
from zswapd.errors import ConfigError, PoolExistsError, TooManyPoolsError, UnknownPoolError
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
        backing_dir: where clients may place backing files; None: nowhere.
        backing_quota: bytes the backing files of clients may total; None: no bound.
    """

    def __init__(
        self,
        factory: Callable[..., PagePool] = PagePool,
        *,
        budget: PageBudget | None = None,
        arena_pages: int | None = None,
        max_pools: int | None = None,
        backing_dir: Path | None = None,
        backing_quota: int | None = None,
    ) -> None:
        self._pools: dict[str, PagePool] = {}
        self.backing_dir = backing_dir
        self.backing_quota = backing_quota
        # Bytes of clients' files being created (quota checked, pool not yet in):
        # counted, so that concurrent creations cannot pass the quota together.
        self._backing_pending = 0
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

    def create(
        self, name: str, config: PoolConfig | None = None, *, client: bool = False
    ) -> PagePool:
        """A new pool, charging the shared budget.

        Args:
            client: the configuration comes from a client (over HTTP): its
                backing file, if any, must be a new file inside backing_dir.

        Raises:
            ConfigError: a bad name or configuration; a backing file a client
                may not have, or one another pool uses.
            PoolExistsError: a pool of that name exists.
            TooManyPoolsError: max_pools pools exist.
        """
        check_pool_name(name)
        config = config or PoolConfig()
        with self._lock:
            self._check_room(name)
        backing = None
        pending = 0
        if client and config.backing_file is not None:
            backing = self._open_client_backing(config)
            pending = config.backing_size
            config = dataclasses.replace(config, backing_file=backing.path)
        try:
            return self._create(name, config, backing)
        finally:
            if pending:
                with self._lock:
                    self._backing_pending -= pending

    def _create(self, name: str, config: PoolConfig, backing: BackingFile | None) -> PagePool:
        # Built outside the lock (it maps the arena); checked again on the way in.
        extra = {} if backing is None else {"backing": backing}
        try:
            pool = self._factory(
                name, config, budget=self.budget, arena_pages=self.arena_pages, **extra
            )
        except BaseException:
            if backing is not None and not backing.closed:
                backing.close(unlink=True)
            raise
        pool.backing_owned = backing is not None
        with self._lock:
            try:
                self._check_room(name)
                self._check_backing(pool)
            except BaseException:
                pool.close()
                raise
            self._pools[name] = pool
        return pool

    def _open_client_backing(self, config: PoolConfig) -> BackingFile:
        """A client's backing file: new, inside backing_dir, within the quota."""
        if self.backing_dir is None:
            raise ConfigError(
                "this daemon takes no backing file from clients: start it with "
                "--backing-dir DIR (or name the file in its config)"
            )
        rel = check_client_name(config.backing_file)
        size = config.backing_size
        if not size:
            raise ConfigError("a backing file made for a client needs its backing_size")
        with self._lock:
            held = self._backing_pending + sum(
                p.backing.slots * 4096
                for p in self._pools.values()
                if p.backing is not None and p.backing_owned
            )
            if self.backing_quota is not None and held + size > self.backing_quota:
                raise ConfigError(
                    f"backing_size {size} would pass the server's --backing-quota of "
                    f"{self.backing_quota} bytes ({held} are given to clients' files already)"
                )
            # Held until create() has added the pool (or failed): see _backing_pending.
            self._backing_pending += size
        try:
            dfd = open_client_dir(str(self.backing_dir), rel)
            try:
                backing = BackingFile.open(
                    rel.name, size, create=True, must_create=True, budget=self.budget, dir_fd=dfd
                )
            finally:
                os.close(dfd)
        except BaseException:
            with self._lock:
                self._backing_pending -= size
            raise
        backing.path = str(self.backing_dir / rel)
        return backing

    def _check_backing(self, pool: PagePool) -> None:
        """Refuse a pool whose backing file another pool uses (lock held)."""
        if pool.backing is None:
            return
        mine = pool.backing.identity()
        for other in self._pools.values():
            if other.backing is not None and other.backing.identity() == mine:
                raise ConfigError(
                    f"{pool.backing.path} is the backing file of pool {other.name!r} already"
                )

    def adopt(self, pool: PagePool) -> None:
        """Add an existing pool (one restored from saved state).

        Raises:
            PoolExistsError: a pool of that name exists.
            TooManyPoolsError: max_pools pools exist.
            ConfigError: its backing file is another pool's.
        """
        with self._lock:
            self._check_room(pool.name)
            self._check_backing(pool)
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
