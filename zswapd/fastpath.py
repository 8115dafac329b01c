"""Which batch loops the page store runs: compiled (zswapd/_batch.pyx) or pure.

As ``allocator.ZsPool`` is the compiled pool when it was built, the page
store's per-page loops (:mod:`zswapd.batch`) are the compiled ones when
:mod:`zswapd._batch` was built and ``ZSWAPD_PURE_PYTHON`` is not ``1``;
otherwise the pure-Python reference.  Both keep one behaviour
(tests/zswapd/test_batch.py).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

from zswapd import batch as reference

__all__ = ["ACCELERATED", "REASON", "batch", "describe"]

_module: ModuleType
if TYPE_CHECKING:
    ACCELERATED: bool
    REASON: str
elif os.environ.get("ZSWAPD_PURE_PYTHON") == "1":
    _module, ACCELERATED, REASON = reference, False, "ZSWAPD_PURE_PYTHON=1"
else:
    try:
        from zswapd import _batch as _module
    except (ImportError, TypeError) as exc:
        # Not built (no compiler at install time), built for another Python, or
        # the compiled allocator or lz4 it calls in C is missing (ImportError)
        # or from another build (a C function of another signature: TypeError).
        _module, ACCELERATED, REASON = reference, False, f"not built: {exc}"
    else:
        ACCELERATED, REASON = True, "built"


def batch() -> ModuleType:
    """The module whose loops run: :mod:`zswapd._batch` or :mod:`zswapd.batch`.

    Typed as the reference (the compiled one has the same functions)."""
    return _module


def describe() -> str:
    """One line for banners: ``compiled (Cython)`` or ``pure Python (why)``."""
    return "compiled (Cython)" if ACCELERATED else f"pure Python ({REASON})"
