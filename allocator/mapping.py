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
    def _map_begin(self, mapping: ObjectMapping) -> memoryview: ...

    def _map_end(self, mapping: ObjectMapping) -> None: ...


class ObjectMapping:
    """``with pool.map(handle, mode) as buf:`` -- a view of one object.

    The pool is locked from ``__enter__`` to ``__exit__`` (compaction cannot move
    the object meanwhile); keep mappings short, as with ``zs_map_object``.  The
    view is released at exit, so it cannot be used after the unmap.

    ``slot``, ``addr``, ``split`` and ``second`` are the pool's notes between
    map and unmap (where a spanning object's two pieces go back), set by its
    ``_map_begin``.
    """

    __slots__ = ("_pool", "_view", "addr", "handle", "mode", "second", "slot", "split")

    slot: int
    addr: int
    split: int
    second: int

    def __init__(self, pool: _Mappable, handle: int, mode: MapMode) -> None:
        if mode.__class__ is not MapMode:
            raise TypeError(f"mode must be a MapMode, not {mode!r}")
        self._pool = pool
        self.handle = handle
        self.mode = mode
        self._view: memoryview | None = None
        # slot, addr, split and second are set by the pool's _map_begin.

    def __enter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("this mapping is already open")
        view = self._view = self._pool._map_begin(self)
        return view

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._view is not None:
            self._pool._map_end(self)

    @property
    def view(self) -> memoryview | None:
        """The open view, or None outside the ``with`` block."""
        return self._view

    def _close(self) -> memoryview:
        view = self._view
        assert view is not None
        self._view = None
        return view
