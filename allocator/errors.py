"""Errors raised by the allocator.

The tree::

    AllocatorError            root: anything the allocator refuses
    ├── PoolFullError         the page budget (max_pages) cannot supply a zspage
    │   ├── BudgetExceededError   a shared PageBudget (several pools) is spent
    │   └── HandleTableFullError  every handle slot (2**24 - 1) is live
    └── InvalidHandleError    a handle that was freed, never issued, or forged

A ``ValueError`` (not an ``AllocatorError``) is raised for a size outside
1..4096, since that is a caller's programming error rather than a pool state.
"""

from __future__ import annotations

__all__ = [
    "AllocatorError",
    "BudgetExceededError",
    "HandleTableFullError",
    "InvalidHandleError",
    "PoolFullError",
]


class AllocatorError(Exception):
    """Root of every error the allocator raises on purpose."""


class PoolFullError(AllocatorError):
    """The page budget is spent: no zspage can be built for this size class.

    Like ``zs_malloc`` failing under memory pressure, nothing in the pool changed.
    """


class BudgetExceededError(PoolFullError):
    """The shared :class:`~allocator.budget.PageBudget` of several pools is spent,
    though this pool's own budget may not be.  Nothing in the pool changed."""


class HandleTableFullError(PoolFullError):
    """Every handle slot of the pool is live; nothing in the pool changed."""


class InvalidHandleError(AllocatorError):
    """The handle was freed, never issued by this pool, or is not a handle at all."""
