"""Which ZsPool runs: the compiled one (allocator/_zsmalloc.pyx) or the pure one.

As CPython's ``heapq`` takes ``_heapq`` when it is there, ``allocator.ZsPool``
(and ``allocator.create("zsmalloc")``) is the compiled pool when the extension
was built and ``ZSWAPD_PURE_PYTHON`` is not ``1``; otherwise the pure-Python
reference, :class:`allocator.zsmalloc.ZsPool`, which stays importable by that
name whichever runs.  Both keep one behaviour (tests/allocator/test_accelerated.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from allocator import zsmalloc

__all__ = ["ACCELERATED", "REASON", "ZsPool", "describe"]

if TYPE_CHECKING:
    ZsPool = zsmalloc.ZsPool
    ACCELERATED: bool
    REASON: str
elif os.environ.get("ZSWAPD_PURE_PYTHON") == "1":
    ZsPool, ACCELERATED, REASON = zsmalloc.ZsPool, False, "ZSWAPD_PURE_PYTHON=1"
else:
    try:
        from allocator._zsmalloc import ZsPool
    except ImportError as exc:
        # Not built (no compiler at install time) or built for another Python.
        ZsPool, ACCELERATED, REASON = zsmalloc.ZsPool, False, f"not built: {exc}"
    else:
        ACCELERATED, REASON = True, "built"


def describe() -> str:
    """One line for banners: ``compiled (Cython)`` or ``pure Python (why)``."""
    return "compiled (Cython)" if ACCELERATED else f"pure Python ({REASON})"
