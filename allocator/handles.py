"""Handles: opaque names for objects, kept apart from where the objects are.

A handle is ``generation << SLOT_BITS | slot``.  The slot indexes a table whose
entry holds the object's current *location* (which zspage, which object in it);
compaction rewrites the entry, never the handle, so a handle stays valid while
its object moves (the kernel's handle is likewise a pointer to a word holding
the location).  Each slot also keeps a generation, drawn at random whenever the
slot is issued: a handle whose generation does not match is stale or forged, so
a freed handle can never reach the object that reuses its slot, and handles
cannot be walked by counting.

Handles stay below 2**52 so they survive a round trip through JSON and a double.

The table is two flat arrays (8 + 4 bytes a slot): no Python object per handle.
Free slots are chained through the location array itself (negative entries).
"""

from __future__ import annotations

import os
import random
from array import array
from collections.abc import Callable

from allocator.errors import InvalidHandleError

__all__ = ["GEN_BITS", "SLOT_BITS", "SLOT_MASK", "HandleTable"]

SLOT_BITS = 28
GEN_BITS = 24
SLOT_MASK = (1 << SLOT_BITS) - 1
_GEN_LIMIT = 1 << GEN_BITS
# A random step below 2**23 never wraps a generation back onto itself.
_RAND_MASK = (1 << (GEN_BITS - 1)) - 1


def _urandom_words() -> array[int]:
    """1,024 random 32-bit words from the kernel's randomness (one system call)."""
    return array("I", os.urandom(4096))


class HandleTable:
    """Issues handles and maps them to locations.

    A location is any non-negative int below 2**62 chosen by the allocator.
    """

    __slots__ = ("_free", "_gen", "_loc", "_random", "_refill", "live")

    def __init__(self, seed: int | None = None) -> None:
        # Slot 0 is never issued: it terminates the free chain.
        self._loc = array("q", [0])
        self._gen = array("I", [0])
        self._free = 0
        # Generations must not be predictable from handles a client has seen (a
        # Mersenne Twister's could be), yet a system call per handle would cost
        # more than the rest of malloc: words of os.urandom, drawn 1,024 at a time.
        self._refill: Callable[[], array[int]] = _urandom_words
        if seed is not None:  # reproducible, for tests and benchmarks
            rng = random.Random(seed)

            def seeded() -> array[int]:
                return array("I", [rng.getrandbits(32) for _ in range(1024)])

            self._refill = seeded
        self._random = self._refill()
        self.live = 0

    def alloc(self, location: int) -> int:
        """Issue a handle for an object at ``location``."""
        slot = self._free
        loc = self._loc
        gen = self._gen
        if slot:
            self._free = -1 - loc[slot]
            loc[slot] = location
        else:
            slot = len(loc)
            if slot > SLOT_MASK:
                raise MemoryError("handle table full")
            loc.append(location)
            gen.append(1)
        # A fresh random generation, never the one just retired (release bumped
        # it, and 0 is never used): 1..2**24-1.
        try:
            r = self._random.pop()
        except IndexError:
            self._random = self._refill()
            r = self._random.pop()
        g = (gen[slot] + (r & _RAND_MASK)) % _GEN_LIMIT or 1
        gen[slot] = g
        self.live += 1
        return g << SLOT_BITS | slot

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
        """Retire a live slot; its handle becomes invalid at once."""
        # Bump the generation now, not at reuse, so the stale handle fails
        # even before the slot is issued again.
        self._gen[slot] = (self._gen[slot] % (_GEN_LIMIT - 1)) + 1
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
                    gen[slot] = (gen[slot] % (_GEN_LIMIT - 1)) + 1
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
            if not slot or not 0 < gen < _GEN_LIMIT:
                raise InvalidHandleError(f"{handle!r} is not a handle")
            top = max(top, slot)
        grow = top + 1 - len(self._loc)
        if grow > 0:
            self._loc.extend([-1] * grow)
            self._gen.extend([1] * grow)
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
