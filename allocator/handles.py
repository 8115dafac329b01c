"""Handles: opaque names for objects, kept apart from where the objects are.

A handle is ``generation << SLOT_BITS | slot``, an unsigned 64-bit integer.  The
slot indexes a table whose entry holds the object's current *location* (which
zspage, which object in it); compaction rewrites the entry, never the handle, so
a handle stays valid while its object moves (the kernel's handle is likewise a
pointer to a word holding the location).  Each slot also keeps a generation,
drawn afresh at random (40 bits, never 0, never the slot's previous one)
whenever the slot is issued: a handle whose generation does not match is stale
or forged, so a freed handle can never reach the object that reuses its slot.

Why 40 random bits: a client that knows a slot (slots are small integers, and
its own handles show them) and wants the object the *next* owner of that slot
stores must guess its generation.  A fresh draw has no arithmetic relation to
the previous one, so each guess succeeds with probability 1 / (2**40 - 1),
about 9.1e-13, however many handles the client has seen.  At 60,000 guesses a
second, the rate one wire connection reaches, that is one success expected in
about 212 days of guessing; servers also close a connection after a bounded
number of stale handles.

Handles fill 64 bits: JSON carries them as plain integers, exact in Python (and
most JSON libraries), but a JavaScript client needs ``BigInt`` (or a JSON parser
that keeps large integers) once a handle passes 2**53.

24 slot bits leave ``MAX_SLOTS`` = 16,777,215 live handles in one table; past
that :class:`HandleTableFullError` (a :class:`PoolFullError`: nothing changed).

The table is two flat arrays (8 + 8 bytes a slot, :data:`SLOT_BYTES`): no
Python object per handle.  A caller whose locations are small (the page
store's entry table, whose slots hold nothing but the free chain) may keep
them in 4-byte words instead (``loc_type="i"``): a free slot's link, ``-1 -
slot``, fits 32 bits.  Free slots are chained through the location array
itself (negative entries).  The arrays grow as slots are first issued and
shrink only by :meth:`HandleTable.trim`, which drops the free slots above the
highest live one: a slot made again after a trim has forgotten its last
generation, so its fresh draw avoids it only by the odds above.
"""

from __future__ import annotations

import os
import random
from array import array
from collections.abc import Callable

from allocator.errors import HandleTableFullError, InvalidHandleError

__all__ = [
    "GEN_BITS",
    "MAX_SLOTS",
    "SLOT_BITS",
    "SLOT_BYTES",
    "SLOT_MASK",
    "HandleTable",
    "generation_source",
]

SLOT_BITS = 24
GEN_BITS = 40
SLOT_MASK = (1 << SLOT_BITS) - 1
# Slot 0 is never issued (it ends the free chain): slots 1..SLOT_MASK.
MAX_SLOTS = SLOT_MASK
_GEN_MASK = (1 << GEN_BITS) - 1
# Memory one slot holds: its location ("q") and its generation ("Q").
SLOT_BYTES = array("q").itemsize + array("Q").itemsize


def _urandom_words() -> array[int]:
    """1,024 random 64-bit words from the kernel's randomness (one system call)."""
    return array("Q", os.urandom(8192))


def generation_source(seed: int | None) -> Callable[[], array[int]]:
    """What a handle table draws generations from, 1,024 words a call.

    Generations must not be predictable from handles a client has seen (a
    Mersenne Twister's could be), yet a system call per handle would cost more
    than the rest of malloc: words of os.urandom, drawn 1,024 at a time.  With
    a ``seed``, a reproducible stream instead (tests and benchmarks; the
    compiled pool draws from the same source, so both issue the same handles).
    """
    if seed is None:
        return _urandom_words
    rng = random.Random(seed)

    def seeded() -> array[int]:
        # One call for 8 KiB: a word at a time cost half a microsecond a handle.
        return array("Q", rng.randbytes(8192))

    return seeded


class HandleTable:
    """Issues handles and maps them to locations.

    A location is any non-negative int below 2**62 chosen by the allocator.

    Args:
        seed: seed for generations (default: unpredictable, from os.urandom).
        max_slots: live handles at most (MAX_SLOTS; less only for tests).
        loc_type: the locations' array type: ``"q"`` (8 bytes), or ``"i"``
            (4 bytes) for a caller whose locations are below 2**31.
    """

    __slots__ = ("_free", "_gen", "_loc", "_random", "_refill", "live", "max_slots")

    def __init__(
        self, seed: int | None = None, max_slots: int = MAX_SLOTS, *, loc_type: str = "q"
    ) -> None:
        if not 1 <= max_slots <= MAX_SLOTS:
            raise ValueError(f"max_slots must be 1..{MAX_SLOTS}")
        if loc_type not in ("q", "i"):
            raise ValueError('loc_type must be "q" or "i"')
        self.max_slots = max_slots
        # Slot 0 is never issued: it terminates the free chain.
        self._loc = array(loc_type, [0])
        self._gen = array("Q", [0])
        self._free = 0
        self._refill = generation_source(seed)
        self._random = self._refill()
        self.live = 0

    def alloc(self, location: int) -> int:
        """Issue a handle for an object at ``location``.

        Raises:
            HandleTableFullError: ``max_slots`` handles are live (nothing changed).
        """
        slot = self._free
        loc = self._loc
        gen = self._gen
        if not slot and len(loc) > self.max_slots:
            raise HandleTableFullError(f"handle table full: {self.max_slots} handles live")
        # A fresh draw, independent of the slot's past: not old + a step, which
        # would let one seen handle narrow the next.  0 is never issued, and the
        # generation just retired is skipped so its handle stays dead.
        old = gen[slot] if slot else 0
        while True:
            try:
                g = self._random.pop() & _GEN_MASK
            except IndexError:
                self._random = self._refill()
                continue
            if g and g != old:
                break
        if slot:
            self._free = -1 - loc[slot]
            loc[slot] = location
        else:
            slot = len(loc)
            loc.append(location)
            gen.append(0)
        gen[slot] = g
        self.live += 1
        return g << SLOT_BITS | slot

    @property
    def room(self) -> int:
        """Handles that may still be issued before the table is full."""
        return self.max_slots - self.live

    def __len__(self) -> int:
        """Slots the table holds, live or free (slot 0 included)."""
        return len(self._loc)

    @property
    def free_slots(self) -> int:
        """Slots made and free now: issued again before the table grows."""
        return len(self._loc) - 1 - self.live

    def free_top(self) -> int:
        """Free slots above the highest live one (O(their number))."""
        loc = self._loc
        top = len(loc)
        while top > 1 and loc[top - 1] < 0:
            top -= 1
        return len(loc) - top

    def trim(self, slots: int) -> None:
        """Drop the top ``slots`` slots, all free (see :meth:`free_top`).

        O(free slots): the dropped ones are unlinked from the free chain by
        walking it, so callers trim only when that pays (a good share of the
        table dropped).
        """
        loc = self._loc
        top = len(loc) - slots
        if not 1 <= top <= len(loc) or max(loc[top:], default=-1) >= 0:
            raise ValueError(f"the top {slots} slots are not all free")
        if not slots:
            return
        # Relink the chain without the dropped slots, the others in their order.
        head = last = 0
        slot = self._free
        while slot:
            following = -1 - loc[slot]
            if slot < top:
                if last:
                    loc[last] = -1 - slot
                else:
                    head = slot
                last = slot
            slot = following
        if last:
            loc[last] = -1  # the chain's end: -1 - 0
        self._free = head
        del loc[top:]
        del self._gen[top:]

    def check_room(self) -> None:
        """Raise HandleTableFullError if no handle can be issued (call before
        taking pages for a new object, so that a full table changes nothing)."""
        if self.live >= self.max_slots:
            raise HandleTableFullError(f"handle table full: {self.max_slots} handles live")

    def slot(self, handle: int) -> int:
        """The slot of a live handle.

        Raises:
            InvalidHandleError: freed, never issued, or not a handle.
        """
        try:
            slot = handle & SLOT_MASK
            if self._gen[slot] == handle >> SLOT_BITS and self._loc[slot] >= 0 and slot:
                return slot
        except (TypeError, IndexError):
            pass
        raise InvalidHandleError(f"no live object for handle {handle!r}")

    def location(self, handle: int) -> int:
        """Where a live handle's object is now.

        Raises:
            InvalidHandleError: freed, never issued, or not a handle.
        """
        try:
            slot = handle & SLOT_MASK
            if self._gen[slot] == handle >> SLOT_BITS and slot:
                loc = self._loc[slot]
                if loc >= 0:
                    return loc
        except (TypeError, IndexError):
            pass
        raise InvalidHandleError(f"no live object for handle {handle!r}")

    def location_of_slot(self, slot: int) -> int:
        return self._loc[slot]

    def relocate(self, slot: int, location: int) -> None:
        """Record that the object of ``slot`` now lives at ``location``."""
        self._loc[slot] = location

    def release(self, slot: int) -> None:
        """Retire a live slot; its handle becomes invalid at once.

        A free slot's location is negative, which every lookup refuses; its
        generation stays until reuse, so the next draw can avoid it.
        """
        self._loc[slot] = -1 - self._free
        self._free = slot
        self.live -= 1

    def take(self, handle: int) -> int:
        """Retire a live handle and return the location its object had.

        Raises:
            InvalidHandleError: freed, never issued, or not a handle.
        """
        # location() and release() in one: this is on every free's path.
        try:
            slot = handle & SLOT_MASK
            gen = self._gen
            if gen[slot] == handle >> SLOT_BITS and slot:
                locs = self._loc
                loc = locs[slot]
                if loc >= 0:
                    locs[slot] = -1 - self._free
                    self._free = slot
                    self.live -= 1
                    return loc
        except (TypeError, IndexError):
            pass
        raise InvalidHandleError(f"no live object for handle {handle!r}")

    def handle_of(self, slot: int) -> int:
        """The handle now issued for a live ``slot``."""
        if not 0 < slot < len(self._loc) or self._loc[slot] < 0:
            raise InvalidHandleError(f"slot {slot} is not live")
        return self._gen[slot] << SLOT_BITS | slot

    def adopt(self, handles: dict[int, int]) -> None:
        """Re-issue exactly these handles (handle -> location), as after a restart.

        The table must be empty.  Every other slot up to the highest adopted one
        is chained free, so later handles never collide with adopted ones.

        Raises:
            InvalidHandleError: a value that is not a handle, or one slot twice.
        """
        if self.live:
            raise ValueError("adopt() needs an empty table")
        top = 0
        for handle in handles:
            slot, gen = handle & SLOT_MASK, handle >> SLOT_BITS
            if not slot or slot > self.max_slots or not 0 < gen <= _GEN_MASK:
                raise InvalidHandleError(f"{handle!r} is not a handle")
            top = max(top, slot)
        grow = top + 1 - len(self._loc)
        if grow > 0:
            self._loc.extend([-1] * grow)
            self._gen.extend([0] * grow)
        seen: set[int] = set()
        for handle, location in handles.items():
            slot = handle & SLOT_MASK
            if slot in seen:
                raise InvalidHandleError(f"slot {slot} adopted twice")
            seen.add(slot)
            self._gen[slot] = handle >> SLOT_BITS
            self._loc[slot] = location
        self._free = 0
        for slot in range(len(self._loc) - 1, 0, -1):
            if slot not in seen:
                self._loc[slot] = -1 - self._free
                self._free = slot
        self.live = len(seen)

    def live_slots(self) -> list[int]:
        """Every live slot (for invariant checks; O(table size))."""
        return [s for s in range(1, len(self._loc)) if self._loc[s] >= 0]

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays."""
        return self._loc.itemsize * len(self._loc) + self._gen.itemsize * len(self._gen)
