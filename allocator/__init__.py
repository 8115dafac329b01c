"""A zsmalloc-style allocator for objects of 1..4096 bytes, over real pages.

Standalone: no I/O, nothing about compression.  ``ZsPool`` is the allocator;
``create(name)`` builds it or one of the kernel's older baselines (zbud, z3fold)
behind the same interface.  The design is told in allocator/README.md.

``ZsPool`` is the compiled pool (allocator/_zsmalloc.pyx) when it was built and
``ZSWAPD_PURE_PYTHON`` is not ``1``, else the pure-Python reference
(``allocator.zsmalloc.ZsPool``); ``ACCELERATED`` says which, ``describe()`` why.
"""

from __future__ import annotations

from typing import Any

from allocator.accelerated import ACCELERATED, ZsPool, describe
from allocator.arena import PAGE_SIZE
from allocator.base import Allocator
from allocator.budget import PageBudget
from allocator.classes import ClassSpec, ClassTable, fit_class_sizes
from allocator.errors import (
    AllocatorError,
    BudgetExceededError,
    HandleTableFullError,
    InvalidHandleError,
    PoolFullError,
)
from allocator.mapping import MapMode
from allocator.stats import FULLNESS_LABELS, ClassStats, Fullness, PoolStats
from allocator.z3fold import Z3foldPool
from allocator.zbud import ZbudPool

__all__ = [
    "ACCELERATED",
    "ALLOCATORS",
    "FULLNESS_LABELS",
    "PAGE_SIZE",
    "Allocator",
    "AllocatorError",
    "BudgetExceededError",
    "ClassSpec",
    "ClassStats",
    "ClassTable",
    "Fullness",
    "HandleTableFullError",
    "InvalidHandleError",
    "MapMode",
    "PageBudget",
    "PoolFullError",
    "PoolStats",
    "Z3foldPool",
    "ZbudPool",
    "ZsPool",
    "create",
    "describe",
    "fit_class_sizes",
]

ALLOCATORS = ("zsmalloc", "zbud", "z3fold")


def create(name: str, **options: Any) -> Allocator:
    """A pool of allocator ``name`` ("zsmalloc", "zbud" or "z3fold").

    Raises:
        ValueError: an unknown allocator name.
    """
    if name == "zsmalloc":
        return ZsPool(**options)
    if name == "zbud":
        return ZbudPool(**options)
    if name == "z3fold":
        return Z3foldPool(**options)
    raise ValueError(f"unknown allocator {name!r}; choose one of {', '.join(ALLOCATORS)}")
