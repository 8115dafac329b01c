"""The ZsPool implementations the zsmalloc tests run against: the pure-Python
reference (allocator.zsmalloc) and the compiled twin (allocator._zsmalloc)
when it is built.  A test parametrised over ``ZSPOOLS`` runs on both; where the
extension is missing, its cases are skipped, saying why."""

from __future__ import annotations

from typing import Any

import pytest

from allocator import zsmalloc

__all__ = ["COMPILED", "NOT_BUILT", "ZSPOOLS"]

COMPILED: Any
try:
    from allocator._zsmalloc import ZsPool as COMPILED
except ImportError as exc:
    COMPILED = None
    NOT_BUILT = f"the compiled allocator is not built ({exc}): python3 setup.py build_ext --inplace"
else:
    NOT_BUILT = ""

ZSPOOLS = [
    pytest.param(zsmalloc.ZsPool, id="pure"),
    pytest.param(
        COMPILED,
        id="compiled",
        marks=pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT or "built"),
    ),
]
