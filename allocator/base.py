"""What every allocator's pool shares: pages from an arena, handles from a table,
and the page budgets (its own, and optionally one shared with other pools)."""

from __future__ import annotations

import threading
from typing import Protocol

from allocator.arena import DEFAULT_ARENA_PAGES, PAGE_SHIFT, PAGE_SIZE, PageArena
from allocator.budget import PageBudget
from allocator.errors import BudgetExceededError, PoolFullError
from allocator.handles import HandleTable
from allocator.mapping import MapMode, ObjectMapping
from allocator.stats import ClassStats, PoolStats

__all__ = ["Allocator", "PoolBase", "arena_capacity"]


class Allocator(Protocol):
    """What the page store needs of an allocator: zsmalloc, zbud and z3fold alike.

    Defined once here so that ``allocator.create`` returns something a type
    checker can hold its callers to, as the kernel's zpool ops table did for
    zswap's backends.
    """

    max_pages: int | None
    pages_max: int
    pages_compacted: int
    alloc_failures: int

    @property
    def chain_size(self) -> int: ...
    @property
    def huge_class_size(self) -> int: ...
    @property
    def pages(self) -> int: ...
    @property
    def total_size_bytes(self) -> int: ...
    @property
    def objs_used(self) -> int: ...
    def capacity(self, size: int) -> int: ...
    def malloc(self, size: int) -> int: ...
    def store(self, data: bytes | bytearray | memoryview) -> int: ...
    def free(self, handle: int) -> None:
        """Free the object of ``handle``; the handle is invalid from now on.

        Raises:
            InvalidHandleError: freed, never issued, or not a handle.
            AllocatorError: the object is mapped right now.
        """
        ...

    def obj_write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the object, from its start.

        Raises:
            InvalidHandleError: not a live handle.
            ValueError: ``data`` is longer than the object's slot.
        """
        ...

    def obj_read(self, handle: int, size: int | None = None) -> bytes:
        """A copy of the object's first ``size`` bytes (default: its whole slot).

        Raises:
            InvalidHandleError: not a live handle.
            ValueError: ``size`` is larger than the object's slot.
        """
        ...

    def map(self, handle: int, mode: MapMode = MapMode.RW) -> ObjectMapping: ...
    def compact(self) -> int: ...
    def class_stats(self) -> list[ClassStats]: ...
    def stats(self) -> PoolStats: ...
    def set_max_pages(self, max_pages: int | None) -> None: ...
    def check_invariants(self) -> None: ...
    def close(self) -> None: ...


def arena_capacity(max_pages: int | None, arena_pages: int | None) -> int:
    """Pages of address space to reserve: ``arena_pages`` if given (it caps the
    pool, whatever max_pages says), else max_pages, else DEFAULT_ARENA_PAGES."""
    if arena_pages is not None:
        if type(arena_pages) is not int or arena_pages < 1:
            raise ValueError("arena_pages must be an int >= 1")
        return arena_pages
    return max(max_pages or DEFAULT_ARENA_PAGES, 1)


class PoolBase:
    """The figures, budgets and checks zsmalloc, zbud and z3fold pools have in common.

    ``_budget`` is the pool's own page budget (max_pages, capped by its arena);
    ``_shared`` a :class:`PageBudget` charged for every page taken from the arena
    and uncharged for every page given back.
    """

    _arena: PageArena
    _handles: HandleTable
    _budget: int
    _shared: PageBudget | None
    _lock: threading.RLock
    alloc_failures: int
    max_pages: int | None
    _held_over_budget = 0

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

    @property
    def shared_budget(self) -> PageBudget | None:
        """The budget this pool shares with others (None: its own only)."""
        return self._shared

    @staticmethod
    def _check_size(size: int) -> int:
        if type(size) is not int or not 0 < size <= PAGE_SIZE:
            raise ValueError(f"object size must be an int in 1..{PAGE_SIZE}, not {size!r}")
        return size

    # -- budgets ---------------------------------------------------------------------

    def _room(self) -> int:
        """Pages that may still be taken: the smaller of the two budgets' rooms."""
        room = self._budget - self._arena.pages_held
        shared = self._shared
        if shared is not None and shared.limit_pages is not None:
            room = min(room, shared.limit_pages - shared.used)
        return room

    def _refusal(self, need: int, what: str) -> PoolFullError:
        """The error for ``need`` pages that do not fit (counted as a failure)."""
        self.alloc_failures += 1
        held = self._arena.pages_held
        own = self._budget - held
        # The pool's own limit when it binds; else the shared one when it does
        # (an arena sized by the shared limit fills as the shared limit does).
        own_limit_binds = self.max_pages is not None and held + need > self.max_pages
        shared = self._shared
        shared_binds = (
            shared is not None
            and shared.limit_pages is not None
            and shared.used + need > shared.limit_pages
        )
        if shared is not None and (shared_binds or own >= need) and not own_limit_binds:
            return BudgetExceededError(
                f"shared page budget of {shared.limit_pages} pages spent: {what} needs {need}"
            )
        return PoolFullError(
            f"page budget of {self._budget} pages spent: {what} needs {need}, {max(own, 0)} left"
        )

    def _charge(self, need: int, what: str) -> None:
        """Charge the shared budget for ``need`` pages about to be taken.

        Raises:
            BudgetExceededError: another pool took the room meanwhile.
        """
        shared = self._shared
        if shared is not None and not shared.charge(need):
            raise self._refusal(need, what)

    def _uncharge(self, pages: int) -> None:
        if self._shared is not None:
            self._shared.uncharge(pages)

    def set_max_pages(self, max_pages: int | None) -> None:
        """Change the page budget of a live pool (zram's mem_limit, written).

        Lowered below the pages held, nothing is dropped: mallocs that need a
        page fail until frees bring the pool below the new budget.
        """
        if max_pages is not None and (type(max_pages) is not int or max_pages < 0):
            raise ValueError("max_pages must be >= 0 or None")
        with self._lock:
            self.max_pages = max_pages
            own = max_pages if max_pages is not None else self._arena.capacity
            self._budget = min(own, self._arena.capacity)
            # What the invariants allow above a lowered budget: no more than now.
            self._held_over_budget = self._arena.pages_held

    def close(self) -> None:
        """Give every page back: to the shared budget and to the OS.

        For a pool being dropped.  Afterwards it holds no memory and refuses new
        objects (PoolFullError); reading an object it held is undefined.
        """
        with self._lock:
            self._budget = 0
            self._uncharge(self._arena.pages_held)
            self._shared = None
            self._arena.discard()
