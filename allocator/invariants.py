"""ZsPool's consistency check: every list, free list, counter and handle.

Kept apart from the allocator because it reads everything and is O(pool size):
tests call it after every step; production paths never do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allocator.arena import PAGE_SHIFT
from allocator.stats import Fullness, fullness_group

if TYPE_CHECKING:
    from allocator.zsmalloc import SizeClass, ZsPool

__all__ = ["check_zspool"]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


def _slot_word(pool: ZsPool, cls: SizeClass, pages: object, idx: int) -> int:
    page_list = pages  # an array of PFNs
    addr = (page_list[cls.slot_page[idx]] << PAGE_SHIFT) + cls.slot_off[idx]  # type: ignore[index]
    return int(addr) >> 3


def _check_class(pool: ZsPool, cls: SizeClass, owners: dict[int, int]) -> int:
    """Check one non-huge class's lists and zspages; record owners; return pages."""
    from allocator.zsmalloc import _END, _N_GROUPS, LOC_SHIFT

    words = pool._words
    objs_allocated = objs_used = pages = empties = 0
    for group in range(_N_GROUPS):
        n = 0
        prev = None
        z = cls.heads[group]
        while z is not None:
            _check(z.cls is cls, "zspage on another class's list")
            _check(z.prev is prev, "broken list link")
            _check(z.fullness == group, "zspage fullness differs from its list")
            _check(fullness_group(z.inuse, z.objs) == group, "zspage in the wrong group")
            _check(pool._zspages[z.zid] is z, "zspage id table out of step")
            n += 1
            objs_allocated += z.objs
            objs_used += z.inuse
            pages += len(z.pages)
            empties += z.inuse == 0
            free = set()
            idx = z.freeobj
            while idx != _END:
                _check(0 <= idx < z.objs and idx not in free, "corrupt free list")
                free.add(idx)
                word = _slot_word(pool, cls, z.pages, idx)
                _check(z.owners is not None or not words[word] & 1, "free slot tagged")
                idx = (words[word] >> 1) - 1
            _check(len(free) == z.objs - z.inuse, "free list length != free slots")
            for i in range(z.objs):
                if i in free:
                    continue
                if z.owners is None:
                    head = words[_slot_word(pool, cls, z.pages, i)]
                    _check(head & 1 == 1, "allocated slot without its tag")
                    owner = head >> 1
                else:
                    owner = z.owners[i]
                _check(owner not in owners, "two objects claim one handle")
                owners[owner] = z.zid << LOC_SHIFT | i
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


def check_zspool(pool: ZsPool) -> None:
    """Raise AssertionError at the first inconsistency in ``pool`` (lock held)."""
    from allocator.zsmalloc import _HUGE, _HUGE_CLASS_SHIFT, _PFN_MASK

    handles = pool._handles
    live = handles.live_slots()
    owners: dict[int, int] = {}
    huge_pfns: set[int] = set()
    huge_count = [0] * len(pool.classes)
    for slot in live:
        loc = handles.location_of_slot(slot)
        if loc & _HUGE:
            pfn = loc & _PFN_MASK
            _check(pfn not in huge_pfns, "two huge objects share a page")
            huge_pfns.add(pfn)
            huge_count[(loc & ~_HUGE) >> _HUGE_CLASS_SHIFT] += 1
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
    _check(total_pages == pool._arena.pages_held, "pages held != pages in zspages")
    _check(len(live) == handles.live == len(owners), "live handles != objects")
    for slot in live:
        _check(
            owners.get(slot) == handles.location_of_slot(slot),
            "handle table points elsewhere than its object",
        )
    if pool.max_pages is not None:
        _check(
            pool._arena.pages_held <= max(pool.max_pages, pool._held_over_budget),
            "page budget exceeded",
        )
