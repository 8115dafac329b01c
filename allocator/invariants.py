"""The allocators' consistency checks: every list, free list, counter and handle.

Kept apart from the allocator because it reads everything and is O(pool size):
tests call it after every step; production paths never do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from allocator.buddy import (
    BUDDY_BITS,
    FIRST,
    HEADLESS,
    LAST,
    MIDDLE,
    NIL,
    TOTAL_CHUNKS,
    size_to_chunks,
)
from allocator.handles import HandleTable
from allocator.stats import Fullness, fullness_group
from allocator.zspage import (
    END,
    HUGE,
    N_GROUPS,
    SizeClass,
    ZsPage,
    huge_to_location,
    location_to_obj,
    slot_address,
)

__all__ = ["BuddyPoolView", "ZsPoolView", "check_buddy_pool", "check_zspool"]


@dataclass(frozen=True)
class ZsPoolView:
    """What of a ZsPool the check reads, handed over by the pool itself."""

    classes: Sequence[SizeClass]
    zspages: Sequence[ZsPage | None]
    words: Sequence[int]
    handles: HandleTable
    pages_held: int
    empty_cache: int
    max_pages: int | None
    held_over_budget: int


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


def _check_class(pool: ZsPoolView, cls: SizeClass, owners: dict[int, int]) -> int:
    """Check one non-huge class's lists and zspages; record owners; return pages."""
    words = pool.words
    objs_allocated = objs_used = pages = empties = 0
    for group in range(N_GROUPS):
        n = 0
        prev = None
        z = cls.heads[group]
        while z is not None:
            _check(z.cls is cls, "zspage on another class's list")
            _check(z.prev is prev, "broken list link")
            _check(z.fullness == group, "zspage fullness differs from its list")
            _check(fullness_group(z.inuse, z.objs) == group, "zspage in the wrong group")
            _check(pool.zspages[z.zid] is z, "zspage id table out of step")
            n += 1
            objs_allocated += z.objs
            objs_used += z.inuse
            pages += len(z.pages)
            empties += z.inuse == 0
            free = set()
            idx = z.freeobj
            while idx != END:
                _check(0 <= idx < z.objs and idx not in free, "corrupt free list")
                free.add(idx)
                word = slot_address(z, idx) >> 3
                _check(z.owners is not None or not words[word] & 1, "free slot tagged")
                idx = (words[word] >> 1) - 1
            _check(len(free) == z.objs - z.inuse, "free list length != free slots")
            for i in range(z.objs):
                if i in free:
                    continue
                if z.owners is None:
                    head = words[slot_address(z, i) >> 3]
                    _check(head & 1 == 1, "allocated slot without its tag")
                    owner = head >> 1
                else:
                    owner = z.owners[i]
                _check(owner not in owners, "two objects claim one handle")
                owners[owner] = location_to_obj(z.zid, i)
            prev = z
            z = z.next
        _check(n == cls.counts[group], "fullness count != list length")
        _check(
            bool(cls.nonfull >> group & 1) == (n > 0 and group < Fullness.FULL),
            "nonfull mask out of step",
        )
    _check(objs_allocated == cls.objs_allocated, "objs_allocated out of step")
    _check(objs_used == cls.objs_used, "objs_used out of step")
    _check(pages == cls.pages_used, "pages_used out of step")
    _check(empties == cls.empties, "empty zspage count out of step")
    _check(cls.empties <= pool.empty_cache, "more empty zspages than the cache holds")
    return pages


def check_zspool(pool: ZsPoolView) -> None:
    """Raise AssertionError at the first inconsistency in ``pool`` (its lock held)."""
    handles = pool.handles
    live = handles.live_slots()
    owners: dict[int, int] = {}
    huge_pfns: set[int] = set()
    huge_count = [0] * len(pool.classes)
    for slot in live:
        loc = handles.location_of_slot(slot)
        if loc & HUGE:
            position, pfn = huge_to_location(loc)
            _check(pfn not in huge_pfns, "two huge objects share a page")
            huge_pfns.add(pfn)
            huge_count[position] += 1
            owners[slot] = loc
    total_pages = 0
    for cls in pool.classes:
        if cls.huge:
            used = huge_count[cls.position]
            _check(all(z is None for z in cls.heads), "a huge class has zspages on lists")
            _check(
                cls.counts[Fullness.FULL] == cls.objs_used == cls.objs_allocated == used,
                "huge class counters out of step",
            )
            _check(cls.pages_used == used and sum(cls.counts) == used, "huge pages out of step")
            total_pages += used
        else:
            total_pages += _check_class(pool, cls, owners)
    _check(total_pages == pool.pages_held, "pages held != pages in zspages")
    _check(len(live) == handles.live == len(owners), "live handles != objects")
    for slot in live:
        _check(
            owners.get(slot) == handles.location_of_slot(slot),
            "handle table points elsewhere than its object",
        )
    if pool.max_pages is not None:
        _check(
            pool.pages_held <= max(pool.max_pages, pool.held_over_budget),
            "page budget exceeded",
        )


@dataclass(frozen=True)
class BuddyPoolView:
    """What of a ZbudPool or Z3foldPool the check reads, handed over by the pool.

    ``foreign`` is z3fold's per-buddy mark (None for zbud, whose pages have no
    middle buddy); ``num_free_chunks`` the pool's own rule for a page's free space.
    """

    buddies_per_page: int
    hdr_chunks: int
    nchunks: int
    max_buddy_size: int
    chunks: Sequence[int]
    start: Sequence[int]
    owner: Sequence[int]
    inuse: Sequence[int]
    lists: Sequence[int]
    heads: Sequence[int]
    prev: Sequence[int]
    next: Sequence[int]
    nonempty: int
    by_inuse: Sequence[int]
    headless: int
    mapped: Mapping[int, int]
    handles: HandleTable
    pages_held: int
    pages_max: int
    max_pages: int | None
    held_over_budget: int
    num_free_chunks: Callable[[int], int]
    foreign: Sequence[int] | None


def _check_buddies(pool: BuddyPoolView, pfn: int) -> None:
    """The layout rules of one buddy page."""
    base = pfn << BUDDY_BITS
    c, s = pool.chunks, pool.start
    first, middle, last = c[base | FIRST], c[base | MIDDLE], c[base | LAST]
    _check(first + middle + last <= pool.nchunks, "buddies overlap")
    if first:
        _check(s[base | FIRST] == pool.hdr_chunks, "first buddy not after the header")
    if last:
        _check(s[base | LAST] == TOTAL_CHUNKS - last, "last buddy not right-justified")
    if pool.foreign is None:
        _check(middle == 0 and s[base | MIDDLE] == 0, "zbud page with a middle buddy")
        return
    if middle:
        start = s[base | MIDDLE]
        _check(start >= pool.hdr_chunks + first, "middle buddy overlaps the first")
        _check(start + middle <= TOTAL_CHUNKS - last, "middle buddy overlaps the last")
    for b in (FIRST, MIDDLE, LAST):
        _check(not pool.foreign[base | b] or c[base | b] > 0, "free buddy marked foreign")


def check_buddy_pool(pool: BuddyPoolView) -> None:
    """Raise AssertionError at the first inconsistency in a zbud or z3fold pool."""
    c, s, o = pool.chunks, pool.start, pool.owner
    per_page = pool.buddies_per_page
    largest = size_to_chunks(pool.max_buddy_size)
    owners: dict[int, int] = {}
    by_inuse = [0] * (per_page + 1)
    held = headless = listed = 0
    for pfn in range(len(pool.inuse)):
        base = pfn << BUDDY_BITS
        if c[base | HEADLESS]:
            _check(c[base] == TOTAL_CHUNKS and s[base] == 0, "corrupt headless entry")
            _check(
                not any(c[base | b] or o[base | b] for b in (FIRST, MIDDLE, LAST)),
                "headless page with buddies",
            )
            _check(pool.inuse[pfn] == 0, "headless page counted as a buddy page")
            _check(pool.lists[pfn] == NIL, "headless page on an unbuddied list")
            _check(o[base] != 0 and o[base] not in owners, "headless object without owner")
            owners[o[base]] = base
            headless += 1
            held += 1
            continue
        _check(s[base] == 0 and o[base] == 0, "stray headless entry")
        used = [b for b in (FIRST, MIDDLE, LAST) if c[base | b]]
        _check(len(used) == pool.inuse[pfn], "inuse differs from buddies present")
        for b in (FIRST, MIDDLE, LAST):
            loc = base | b
            if b in used:
                _check(c[loc] <= largest, "buddy larger than the largest buddy")
                _check(o[loc] != 0 and o[loc] not in owners, "buddy without a unique owner")
                owners[o[loc]] = loc
            else:
                _check(s[loc] == 0 and o[loc] == 0, "free buddy with a start or an owner")
        if not used:
            _check(pool.lists[pfn] == NIL, "page without objects on a list")
            continue
        held += 1
        by_inuse[len(used)] += 1
        _check_buddies(pool, pfn)
        if len(used) < per_page:
            _check(
                pool.lists[pfn] == pool.num_free_chunks(pfn),
                "page not on the unbuddied list of its free chunks",
            )
            listed += 1
        else:
            _check(pool.lists[pfn] == NIL, "page without a free buddy on a list")
    _check(held == pool.pages_held, "pages held != pages in use")
    _check(headless == pool.headless, "headless page count out of step")
    _check(by_inuse[1:] == pool.by_inuse[1:], "pages by buddies in use out of step")
    _check(pool.by_inuse[0] == 0, "a page left half built")
    # Every list: links consistent both ways, every page where _list says.
    walked = 0
    for i in range(pool.nchunks):
        pfn, prev, steps = pool.heads[i], NIL, 0
        _check(bool(pool.nonempty >> i & 1) == (pfn != NIL), "nonempty mask out of step")
        while pfn != NIL:
            steps += 1
            _check(steps <= listed, "unbuddied list loops")
            _check(pool.lists[pfn] == i, "page on a list other than its own")
            _check(pool.prev[pfn] == prev, "broken list link")
            prev, pfn = pfn, pool.next[pfn]
        walked += steps
    _check(walked == listed, "listed pages missing from the lists")
    _check(pool.nonempty >> pool.nchunks == 0, "nonempty mask beyond the lists")
    live = pool.handles.live_slots()
    _check(len(live) == pool.handles.live == len(owners), "live handles != objects")
    for slot in live:
        _check(
            owners.get(slot) == pool.handles.location_of_slot(slot),
            "handle table points elsewhere than its object",
        )
    _check(all(slot in owners for slot in pool.mapped), "a freed object is mapped")
    if pool.max_pages is not None:
        _check(
            pool.pages_held <= max(pool.max_pages, pool.held_over_budget),
            "page budget exceeded",
        )
    _check(pool.pages_max >= pool.pages_held, "pages_max below pages held")
