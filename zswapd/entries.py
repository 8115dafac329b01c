"""The table from a store handle to what is stored for it (zram's slot table).

Each entry is one stored page: same-filled (the 8-byte word only), compressed
by the primary or secondary (recompression) algorithm, or huge (stored raw).
Kept in flat arrays indexed by the handle's slot (8 + 2 + 1 + 4 bytes an
entry), behind the allocator's :class:`~allocator.handles.HandleTable`, so a
freed or forged handle is refused and never reaches another page.
"""

from __future__ import annotations

from array import array

from allocator import InvalidHandleError
from allocator.handles import MAX_SLOTS, SLOT_MASK, HandleTable
from zswapd.errors import StaleHandleError

__all__ = ["COMPRESSED", "FREED", "HUGE", "RECOMPRESSED", "SAME", "EntryTable"]

# Entry kinds (zram's slot flags, in effect).
SAME = 0  # obj holds the repeated 8-byte word; no allocator memory
COMPRESSED = 1  # obj is an allocator handle; primary algorithm
HUGE = 2  # obj is an allocator handle; the page raw (4096 bytes)
RECOMPRESSED = 3  # obj is an allocator handle; secondary algorithm (3 + its index)
FREED = 255  # a retired slot


class EntryTable:
    """Entries by handle: kind, object (allocator handle or word), length, last access."""

    __slots__ = ("_handles", "atime", "clen", "kind", "obj")

    def __init__(self, seed: int | None = None, max_slots: int = MAX_SLOTS) -> None:
        self._handles = HandleTable(seed, max_slots)
        self.obj = array("Q", [0])
        self.clen = array("H", [0])
        self.kind = array("B", [0])
        self.atime = array("I", [0])

    def __len__(self) -> int:
        return self._handles.live

    @property
    def room(self) -> int:
        """Entries that may still be added (2**24 - 1 live at most)."""
        return self._handles.room

    def add(self, kind: int, obj: int, clen: int, now: int) -> int:
        """A new entry; returns its handle."""
        handle = self._handles.alloc(0)
        slot = handle & SLOT_MASK
        if slot >= len(self.obj):
            self._grow()
        self.obj[slot] = obj
        self.clen[slot] = clen
        self.kind[slot] = kind
        self.atime[slot] = now
        return handle

    def _grow(self) -> None:
        # In steps of an eighth (at least 1024 entries): amortised O(1), as a list.
        more = max(1024, len(self.obj) // 8)
        for column in (self.obj, self.clen, self.kind, self.atime):
            column.frombytes(bytes(more * column.itemsize))

    def slot(self, handle: int) -> int:
        """The slot of a live handle.

        Raises:
            StaleHandleError: freed, never issued, forged, or not an int.
        """
        try:
            return self._handles.slot(handle)
        except InvalidHandleError as exc:
            raise StaleHandleError(f"no page stored under handle {handle!r}") from exc

    def remove(self, handle: int) -> tuple[int, int, int]:
        """Retire a live handle; returns the (kind, obj, clen) it had.

        The slot is tombstoned (kind FREED), so anyone who noted its old fields,
        as recompression does between its locked steps, sees it changed.

        Raises:
            StaleHandleError: not a live handle.
        """
        slot = self.slot(handle)
        was = (self.kind[slot], self.obj[slot], self.clen[slot])
        self.kind[slot] = FREED
        self.obj[slot] = 0
        self._handles.release(slot)
        return was

    def adopt(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        """Re-create entries under their old handles: (handle, kind, obj, clen, atime).

        The table must be empty (a pool being restored from its saved state).
        """
        self._handles.adopt({row[0]: 0 for row in rows})
        for handle, kind, obj, clen, atime in rows:
            slot = handle & SLOT_MASK
            while slot >= len(self.obj):
                self._grow()
            self.obj[slot], self.clen[slot] = obj, clen
            self.kind[slot], self.atime[slot] = kind, atime

    def handle_of(self, slot: int) -> int:
        """The live handle of ``slot`` (for saving state)."""
        return self._handles.handle_of(slot)

    def live_slots(self) -> list[int]:
        return self._handles.live_slots()

    @property
    def nbytes(self) -> int:
        per = sum(a.itemsize for a in (self.obj, self.clen, self.kind, self.atime))
        return self._handles.nbytes + per * len(self.obj)
