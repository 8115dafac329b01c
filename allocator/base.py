"""What every allocator's pool shares: pages from an arena, handles from a table."""

from __future__ import annotations

from allocator.arena import PAGE_SHIFT, PAGE_SIZE, PageArena
from allocator.handles import HandleTable

__all__ = ["PoolBase"]


class PoolBase:
    """The figures and checks zsmalloc, zbud and z3fold pools have in common."""

    _arena: PageArena
    _handles: HandleTable

    @property
    def pages(self) -> int:
        """Pages held now."""
        return self._arena.pages_held

    @property
    def total_size_bytes(self) -> int:
        """Pages held x 4096 (the kernel's pool size)."""
        return self._arena.pages_held << PAGE_SHIFT

    @property
    def objs_used(self) -> int:
        """Live objects."""
        return self._handles.live

    @staticmethod
    def _check_size(size: int) -> int:
        if type(size) is not int or not 0 < size <= PAGE_SIZE:
            raise ValueError(f"object size must be an int in 1..{PAGE_SIZE}, not {size!r}")
        return size
