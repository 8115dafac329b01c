"""The page geometry zbud and z3fold share: chunks, buddies and their locations.

Kept apart from the pools so that their consistency check
(:mod:`allocator.invariants`) reads the same constants without importing them.
"""

from __future__ import annotations

from allocator.arena import PAGE_SHIFT, PAGE_SIZE

__all__ = [
    "BUDDY_BITS",
    "BUDDY_MASK",
    "CHUNK_SHIFT",
    "CHUNK_SIZE",
    "FIRST",
    "HEADLESS",
    "LAST",
    "MAX_BUDDY_SIZE",
    "MIDDLE",
    "NCHUNKS",
    "NIL",
    "TOTAL_CHUNKS",
    "ZHDR_CHUNKS",
    "ZHDR_SIZE_ALIGNED",
    "size_to_chunks",
]

# The kernel's geometry.  NCHUNKS_ORDER sets the allocation granularity (and the
# number of unbuddied lists): a page is 1 << NCHUNKS_ORDER chunks.
NCHUNKS_ORDER = 6
CHUNK_SHIFT = PAGE_SHIFT - NCHUNKS_ORDER
CHUNK_SIZE = 1 << CHUNK_SHIFT
TOTAL_CHUNKS = PAGE_SIZE >> CHUNK_SHIFT
# struct zbud_header (list links and two chunk counts) fits one chunk.
ZHDR_CHUNKS = 1
ZHDR_SIZE_ALIGNED = ZHDR_CHUNKS << CHUNK_SHIFT
# Chunks left for buddies, and the number of unbuddied lists.
NCHUNKS = TOTAL_CHUNKS - ZHDR_CHUNKS
# zbud_alloc's limit: a lone buddy leaves at least one chunk free.
MAX_BUDDY_SIZE = PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE

# Buddies, numbered as z3fold's enum buddy; a location is pfn << BUDDY_BITS | buddy.
HEADLESS = 0
FIRST = 1
MIDDLE = 2
LAST = 3
BUDDY_BITS = 2
BUDDY_MASK = (1 << BUDDY_BITS) - 1

# End of an unbuddied list / on no list.
NIL = -1


def size_to_chunks(size: int) -> int:
    """Chunks an object of ``size`` bytes takes (rounded up)."""
    return (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT
