"""Map modes, and the mapping of one object into a contiguous view.

An object that lies inside one page is mapped as a memoryview of that page: no
copy.  One that spans two pages of its zspage must be assembled in a buffer:
copied in at map unless the mode is write-only (WO), and copied back at unmap
unless it is read-only (RO), exactly the saving the modes exist for.
"""

from __future__ import annotations

from enum import IntFlag
from types import TracebackType
from typing import Protocol

__all__ = ["MapMode", "ObjectMapping"]


class MapMode(IntFlag):
    """How a mapped object will be used."""

    RO = 1
    WO = 2
    RW = RO | WO


class _Mappable(Protocol):
    def _map_begin(self, handle: int, mode: MapMode) -> memoryview: ...

    def _map_end(self, handle: int, mode: MapMode, view: memoryview) -> None: ...


class ObjectMapping:
    """``with pool.map(handle, mode) as buf:`` -- a view of one object.

    The pool is locked from ``__enter__`` to ``__exit__`` (compaction cannot move
    the object meanwhile); keep mappings short, as with ``zs_map_object``.  The
    view is released at exit, so it cannot be used after the unmap.
    """

    __slots__ = ("_handle", "_mode", "_pool", "_view")

    def __init__(self, pool: _Mappable, handle: int, mode: MapMode) -> None:
        if type(mode) is not MapMode:
            raise TypeError(f"mode must be a MapMode, not {mode!r}")
        self._pool = pool
        self._handle = handle
        self._mode = mode
        self._view: memoryview | None = None

    def __enter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("this mapping is already open")
        self._view = self._pool._map_begin(self._handle, self._mode)
        return self._view

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        view, self._view = self._view, None
        if view is not None:
            self._pool._map_end(self._handle, self._mode, view)
