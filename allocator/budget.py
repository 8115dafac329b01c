"""A page budget shared by several pools: the memory cgroup of the allocator.

Each pool has its own page budget (``max_pages``, zram's mem_limit); a
:class:`PageBudget` bounds several pools *together*, as a memcg's counter bounds
every zsmalloc pool charged to it, or zswap's max_pool_percent every zswap pool.
A pool given one charges it whenever it takes pages from its arena for a zspage
and uncharges it when it gives them back, so the sum over the pools never passes
the limit, whatever the order or the threads of the requests.  A charge that
does not fit takes nothing: the pool raises
:class:`~allocator.errors.BudgetExceededError` and is unchanged.

Lock order: a pool's own lock, then the budget's (held for a few instructions,
never while calling out); zswapd/__init__.py has the service's whole order.
"""

from __future__ import annotations

import threading

__all__ = ["PageBudget"]


class PageBudget:
    """Pages that several pools may hold together.

    Args:
        limit_pages: the pages all pools together may hold (None: no limit;
            the budget then only counts).

    Attributes:
        limit_pages: as given.
        used: pages charged now.
        used_max: the most ever charged at once.
        committed_max: the most charged at any moment a caller called
            :meth:`commit_max` (after a whole batch succeeded): a high-water mark
            that a refused batch, charged then given back, does not move.
    """

    __slots__ = ("_lock", "committed_max", "limit_pages", "used", "used_max")

    def __init__(self, limit_pages: int | None = None) -> None:
        if limit_pages is not None and (type(limit_pages) is not int or limit_pages < 0):
            raise ValueError("limit_pages must be an int >= 0 or None")
        self.limit_pages = limit_pages
        self.used = 0
        self.used_max = 0
        self.committed_max = 0
        self._lock = threading.Lock()

    def charge(self, pages: int) -> bool:
        """Take ``pages`` if they fit under the limit; False (nothing taken) if not."""
        with self._lock:
            used = self.used + pages
            if self.limit_pages is not None and used > self.limit_pages:
                return False
            self.used = used
            if used > self.used_max:
                self.used_max = used
            return True

    def commit_max(self) -> None:
        """Record what is charged now as kept (zram's update_used_max, after a
        store that succeeded)."""
        with self._lock:
            if self.used > self.committed_max:
                self.committed_max = self.used

    def uncharge(self, pages: int) -> None:
        """Give back ``pages`` taken earlier."""
        with self._lock:
            self.used -= pages
            if self.used < 0:  # a caller's bug: never let it hide room
                raise ValueError(f"uncharged {-self.used} pages more than were charged")

    @property
    def available(self) -> int | None:
        """Pages that may still be charged (None: no limit)."""
        if self.limit_pages is None:
            return None
        return max(self.limit_pages - self.used, 0)

    def __repr__(self) -> str:
        return f"PageBudget(limit_pages={self.limit_pages}, used={self.used})"
