"""The table from a store handle to what is stored for it (zram's slot table).

Each entry is one stored page: same-filled (the 8-byte word only), compressed
by the primary or secondary (recompression) algorithm, or huge (stored raw).
Kept in flat arrays indexed by the handle's slot (8 + 2 + 1 + 4 bytes an
entry), behind the allocator's :class:`~allocator.handles.HandleTable`, so a
freed or forged handle is refused and never reaches another page.  That
table's location words hold nothing here but its free chain (a live slot's is
0): 4 bytes a slot, not the allocator's 8.

A pool with a backing file also keeps its pages in memory on an LRU list, as
zswap's list_lru: two more columns (``prev``, ``next``: 4 + 4 bytes a slot) link
the slots into one ring through slot 0, which is never issued to a handle.

The table is memory the server holds for every page, same-filled ones too
(which take nothing from the allocator): 27 bytes a slot, the columns and the
handle's slot together (:data:`ENTRY_BYTES`).  So that no client can make the
daemon hold more than ``--memory-limit`` by storing zero pages, the table
charges the server's :class:`~allocator.PageBudget` one page for every
:data:`ENTRIES_PER_PAGE` (151) slots it holds, as it grows and before the
entries that need them are added (:meth:`EntryTable.reserve`: a charge that
does not fit changes nothing).  What is charged is the slots held, not the
entries live: the arrays cannot shrink below the highest live slot, so freed
slots under it stay charged; :meth:`EntryTable.trim` gives back the free top
of a table half empty, and :meth:`EntryTable.close` everything.
"""

from __future__ import annotations

from array import array

from allocator import BudgetExceededError, InvalidHandleError, PageBudget
from allocator.handles import MAX_SLOTS, SLOT_MASK, HandleTable
from zswapd.errors import StaleHandleError

__all__ = [
    "COMPRESSED",
    "ENCODING",
    "ENTRIES_PER_PAGE",
    "ENTRY_BYTES",
    "FREED",
    "HUGE",
    "INCOMPRESSIBLE",
    "LRU_ENTRY_BYTES",
    "MAX_SECONDARIES",
    "RECOMPRESSED",
    "SAME",
    "WRITTEN",
    "EntryTable",
]

# Entry kinds (zram's slot flags, in effect): the low six bits say how the
# page is encoded, the two high bits are flags.
SAME = 0  # obj holds the repeated 8-byte word; no allocator memory
COMPRESSED = 1  # obj is an allocator handle; primary algorithm
HUGE = 2  # obj is an allocator handle; the page raw (4096 bytes)
RECOMPRESSED = 3  # obj is an allocator handle; secondary algorithm (3 + its index)
ENCODING = 0x3F  # the bits above; RECOMPRESSED + 59 at most
INCOMPRESSIBLE = 0x40  # a page recompression could not shrink (ZRAM_INCOMPRESSIBLE)
WRITTEN = 0x80  # in the backing file (ZRAM_WB): obj is its file slot | crc32 << 32
FREED = 255  # a retired slot (no encoding is 63)
MAX_SECONDARIES = ENCODING - RECOMPRESSED  # 60: RECOMPRESSED + 59 stays below 63
NOT_LISTED = 0xFFFFFFFF  # prev/next of a slot off the LRU list

PAGE_SIZE = 4096
# The columns' types, in the order of EntryTable's fields obj, clen, kind, atime.
_COLUMNS = "QHBI"
# The handle table's location words: only its free chain, whose links are
# below 2**24 (see allocator.handles).
_SLOT_LOC = "i"
# Bytes a slot of the table holds: its columns and its handle's slot (free
# chain link and generation): 8 + 2 + 1 + 4 + 4 + 8 = 27.
ENTRY_BYTES = sum(array(t).itemsize for t in _COLUMNS + _SLOT_LOC + "Q")
# Slots one budget page pays for: 151, whole entries only (151 x 27 = 4077).
ENTRIES_PER_PAGE = PAGE_SIZE // ENTRY_BYTES
# With the LRU's two links: 35 bytes, 117 slots a page.
LRU_ENTRY_BYTES = ENTRY_BYTES + 2 * array("I").itemsize
# Growth is in steps of an eighth of the table, at least this many slots.
_MIN_GROWTH = 1024


def pages_for(slots: int, per_page: int = ENTRIES_PER_PAGE) -> int:
    """Budget pages charged for a table of ``slots`` slots (its first is free of charge:
    an empty pool costs nothing)."""
    return -(-(slots - 1) // per_page)


class EntryTable:
    """Entries by handle: kind, object (allocator handle or word), length, last access.

    With ``lru``, also the LRU list of the slots put on it (:meth:`lru_push`):
    ``next[0]`` is the least recently used, ``prev[0]`` the most.
    """

    __slots__ = (
        "_budget",
        "_frees",
        "_handles",
        "atime",
        "charged",
        "clen",
        "kind",
        "lru_len",
        "next",
        "obj",
        "per_page",
        "prev",
    )

    def __init__(
        self,
        seed: int | None = None,
        max_slots: int = MAX_SLOTS,
        budget: PageBudget | None = None,
        *,
        lru: bool = False,
    ) -> None:
        self._handles = HandleTable(seed, max_slots, loc_type=_SLOT_LOC)
        self.obj = array(_COLUMNS[0], [0])
        self.clen = array(_COLUMNS[1], [0])
        self.kind = array(_COLUMNS[2], [0])
        self.atime = array(_COLUMNS[3], [0])
        # Slot 0 is the ring's head: empty, it links to itself.
        self.prev: array[int] | None = array("I", [0]) if lru else None
        self.next: array[int] | None = array("I", [0]) if lru else None
        self.lru_len = 0
        self.per_page = PAGE_SIZE // (LRU_ENTRY_BYTES if lru else ENTRY_BYTES)
        self._budget = budget
        self.charged = 0  # budget pages held for the table: pages_for(len(self.obj))
        self._frees = 0  # entries removed since the last trim

    def _columns(self) -> list[array[int]]:
        cols = [self.obj, self.clen, self.kind, self.atime]
        if self.prev is not None and self.next is not None:
            cols += [self.prev, self.next]
        return cols

    def __len__(self) -> int:
        return self._handles.live

    @property
    def room(self) -> int:
        """Entries that may still be added (2**24 - 1 live at most)."""
        return self._handles.room

    @property
    def slots(self) -> int:
        """Slots the table holds (its columns' length), live, free or spare."""
        return len(self.obj)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more entries, charging the budget for any growth.

        Raises:
            BudgetExceededError: the budget cannot pay for the slots (nothing changed).
        """
        h = self._handles
        need = len(h) + max(0, n - h.free_slots)
        if need > len(self.obj):
            self._grow(need)

    def add(self, kind: int, obj: int, clen: int, now: int) -> int:
        """A new entry; returns its handle.

        Raises:
            HandleTableFullError: every handle is live.
            BudgetExceededError: the table had to grow and the budget could not
                pay (never after :meth:`reserve` for this entry).
        """
        h = self._handles
        h.check_room()
        if not h.free_slots and len(h) >= len(self.obj):
            self._grow(len(h) + 1)
        handle = h.alloc(0)
        slot = handle & SLOT_MASK
        self.obj[slot] = obj
        self.clen[slot] = clen
        self.kind[slot] = kind
        self.atime[slot] = now
        return handle

    def _charge_to(self, slots: int) -> bool:
        """Charge (or give back) the budget so that it pays for ``slots``; False
        (nothing charged) if it cannot."""
        pages = pages_for(slots, self.per_page)
        delta = pages - self.charged
        if self._budget is not None:
            if delta > 0 and not self._budget.charge(delta):
                return False
            if delta < 0:
                self._budget.uncharge(-delta)
        self.charged = pages
        return True

    def _grow(self, need: int) -> None:
        """Grow the columns to at least ``need`` slots, paid for first.

        In steps of an eighth (at least 1024 slots): amortised O(1), as a list;
        just ``need`` if the budget cannot pay for a whole step.
        """
        have = len(self.obj)
        step = max(need, min(have + max(_MIN_GROWTH, have // 8), self._handles.max_slots + 1))
        size = step if self._charge_to(step) else need
        if size == need and not self._charge_to(need):
            raise BudgetExceededError(
                f"the server's memory limit cannot pay for {need - have} more entry slots"
            )
        for column in self._columns():
            column.frombytes(bytes((size - have) * column.itemsize))
        if self.prev is not None and self.next is not None:
            self.prev[have:] = self.next[have:] = array("I", [NOT_LISTED]) * (size - have)

    def trim(self) -> None:
        """Give back the table's free top (the free slots above the highest live one).

        Looked for once at most half the table is live and a quarter of it was
        freed since the last look (or nothing is live); dropped when it is an
        eighth of the table or more.  Each look costs O(the free top), each
        drop O(the table): both are paid for, amortised, by the frees before
        them or the slots dropped, and a look that finds fewer than
        :data:`_MIN_GROWTH` free slots (cheap) is tried again at the next free.
        """
        size, h = len(self.obj), self._handles
        live = h.live
        if size == 1 or (live and (self._frees < size // 4 or live * 2 > size)):
            return
        run = h.free_top()
        top = len(h) - run
        if run >= _MIN_GROWTH or not live:
            self._frees = 0
        if top * 8 > size * 7 and live:
            return  # a small free top: not worth the O(table) walk
        h.trim(run)
        for column in self._columns():
            del column[top:]
        self._charge_to(top)

    def close(self) -> None:
        """Drop every entry and give the budget back all the table holds."""
        self._handles = HandleTable(max_slots=self._handles.max_slots, loc_type=_SLOT_LOC)
        for column in self._columns():
            del column[1:]
        if self.prev is not None and self.next is not None:
            self.prev[0] = self.next[0] = 0
        self.lru_len = 0
        self._charge_to(1)
        self._frees = 0

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
        self.lru_remove(slot)
        self.kind[slot] = FREED
        self.obj[slot] = 0
        self._handles.release(slot)
        self._frees += 1
        return was

    def adopt(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        """Re-create entries under their old handles: (handle, kind, obj, clen, atime).

        The table must be empty (a pool being restored from its saved state).

        Raises:
            InvalidHandleError: a value that is not a handle, or one slot twice.
            BudgetExceededError: the budget cannot pay for the table (nothing changed).
        """
        top = max((row[0] & SLOT_MASK for row in rows), default=0)
        if top >= len(self.obj):
            self._grow(top + 1)
        try:
            self._handles.adopt({row[0]: 0 for row in rows})
        except BaseException:
            self.close()  # the columns grown for it, and their charge, go back
            raise
        for handle, kind, obj, clen, atime in rows:
            slot = handle & SLOT_MASK
            self.obj[slot], self.clen[slot] = obj, clen
            self.kind[slot], self.atime[slot] = kind, atime

    def handle_of(self, slot: int) -> int:
        """The live handle of ``slot`` (for saving state)."""
        return self._handles.handle_of(slot)

    def live_slots(self) -> list[int]:
        return self._handles.live_slots()

    @property
    def nbytes(self) -> int:
        per = sum(a.itemsize for a in self._columns())
        return self._handles.nbytes + per * len(self.obj)

    # -- the LRU list (tables made with lru=True; no-ops otherwise) ---------------

    def lru_push(self, slot: int) -> None:
        """Put ``slot`` at the most recently used end (it must be off the list)."""
        prev, nxt = self.prev, self.next
        if prev is None or nxt is None:
            return
        last = prev[0]
        prev[slot], nxt[slot] = last, 0
        nxt[last] = slot
        prev[0] = slot
        self.lru_len += 1

    def lru_push_cold(self, slot: int) -> None:
        """Put ``slot`` back at the least recently used end (a write-back that failed)."""
        prev, nxt = self.prev, self.next
        if prev is None or nxt is None:
            return
        first = nxt[0]
        prev[slot], nxt[slot] = 0, first
        prev[first] = slot
        nxt[0] = slot
        self.lru_len += 1

    def lru_remove(self, slot: int) -> None:
        """Take ``slot`` off the list, if it is on it."""
        prev, nxt = self.prev, self.next
        if prev is None or nxt is None or prev[slot] == NOT_LISTED:
            return
        p, n = prev[slot], nxt[slot]
        nxt[p] = n
        prev[n] = p
        prev[slot] = nxt[slot] = NOT_LISTED
        self.lru_len -= 1

    def lru_listed(self, slot: int) -> bool:
        """Whether ``slot`` is on the list (a page in flight to the file is not)."""
        prev = self.prev
        return prev is not None and prev[slot] != NOT_LISTED

    def lru_touch(self, slot: int) -> None:
        """Move ``slot``, if listed, to the most recently used end."""
        prev = self.prev
        if prev is None or prev[slot] == NOT_LISTED or prev[0] == slot:
            return
        self.lru_remove(slot)
        self.lru_push(slot)

    def lru_oldest(self, n: int) -> list[int]:
        """Up to ``n`` slots from the least recently used end, oldest first."""
        nxt = self.next
        out: list[int] = []
        if nxt is None:
            return out
        slot = nxt[0]
        while slot and len(out) < n:
            out.append(slot)
            slot = nxt[slot]
        return out
