"""Errors raised by the allocator.

The tree::

    AllocatorError            root: anything the allocator refuses
    ├── PoolFullError         the page budget (max_pages) cannot supply a zspage
    └── InvalidHandleError    a handle that was freed, never issued, or forged

A ``ValueError`` (not an ``AllocatorError``) is raised for a size outside
1..4096, since that is a caller's programming error rather than a pool state.
"""

from __future__ import annotations

__all__ = ["AllocatorError", "InvalidHandleError", "PoolFullError"]


class AllocatorError(Exception):
    """Root of every error the allocator raises on purpose."""


class PoolFullError(AllocatorError):
    """The page budget is spent: no zspage can be built for this size class.

    Like ``zs_malloc`` failing under memory pressure, nothing in the pool changed.
    """


class InvalidHandleError(AllocatorError):
    """The handle was freed, never issued by this pool, or is not a handle at all."""
