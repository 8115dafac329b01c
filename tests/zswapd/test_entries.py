"""EntryTable alone, against a model: entries by handle, the LRU ring, the
table's charge to the server's budget, and trimming, whatever the order."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, settings, stateful
from hypothesis import strategies as st

from allocator import BudgetExceededError, PageBudget
from zswapd.entries import COMPRESSED, ENTRIES_PER_PAGE, FREED, EntryTable, pages_for
from zswapd.errors import StaleHandleError

BUDGET_PAGES = 40


class EntryMachine(stateful.RuleBasedStateMachine):
    """An LRU table charged to a small budget, beside a dict and an ordered dict."""

    handles = stateful.Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.budget = PageBudget(BUDGET_PAGES)
        self.table = EntryTable(seed=3, budget=self.budget, lru=True)
        self.model: dict[int, tuple[int, int, int, int]] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # handles, oldest first
        self.freed: list[int] = []
        self.now = 0

    @stateful.rule(target=handles, n=st.integers(1, 300))
    def add(self, n: int) -> Any:
        charged = self.budget.used
        try:
            self.table.reserve(n)
        except BudgetExceededError:
            assert self.budget.used == charged  # a refused charge takes nothing
            return stateful.multiple()
        added = []
        for i in range(n):
            self.now += 1
            h = self.table.add(COMPRESSED, 1000 + self.now, i % 4096, self.now)
            self.table.lru_push(self.table.slot(h))
            self.model[h] = (COMPRESSED, 1000 + self.now, i % 4096, self.now)
            self.lru[h] = None
            added.append(h)
        return stateful.multiple(*added)

    @stateful.rule(h=stateful.consumes(handles))
    def remove(self, h: int) -> None:
        kind, obj, clen, _ = self.model.pop(h)
        assert self.table.remove(h) == (kind, obj, clen)
        self.lru.pop(h, None)
        self.freed.append(h)
        self.table.trim()

    @stateful.rule(h=handles)
    def touch(self, h: int) -> None:
        self.table.lru_touch(self.table.slot(h))
        if h in self.lru:
            self.lru.move_to_end(h)

    @stateful.rule(h=handles)
    def take_off_and_back_cold(self, h: int) -> None:
        # A write-back takes a page off the list, fails, and puts it back cold.
        slot = self.table.slot(h)
        self.table.lru_remove(slot)
        assert not self.table.lru_listed(slot)
        self.table.lru_push_cold(slot)
        self.lru.pop(h, None)
        self.lru[h] = None
        self.lru.move_to_end(h, last=False)

    @stateful.precondition(lambda self: bool(self.freed))
    @stateful.rule(pick=st.integers(0, 10_000))
    def a_freed_handle_is_refused(self, pick: int) -> None:
        h = self.freed[pick % len(self.freed)]
        with pytest.raises(StaleHandleError):
            self.table.slot(h)
        with pytest.raises(StaleHandleError):
            self.table.remove(h)

    @stateful.invariant()
    def entries_are_the_model(self) -> None:
        t = self.table
        assert len(t) == len(self.model)
        for h, (kind, obj, clen, atime) in self.model.items():
            s = t.slot(h)
            assert (t.kind[s], t.obj[s], t.clen[s], t.atime[s]) == (kind, obj, clen, atime)
            assert t.handle_of(s) == h
        assert sorted(t.live_slots()) == sorted(t.slot(h) for h in self.model)

    @stateful.invariant()
    def the_ring_is_the_lru_order(self) -> None:
        t = self.table
        order = [t.slot(h) for h in self.lru]
        assert t.lru_len == len(order)
        assert t.lru_oldest(len(order) + 5) == order

    @stateful.invariant()
    def the_budget_pays_for_the_slots_held(self) -> None:
        t = self.table
        assert t.charged == pages_for(t.slots, t.per_page) == self.budget.used
        assert self.budget.used <= BUDGET_PAGES


TestEntryTable = EntryMachine.TestCase
TestEntryTable.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_removed_slot_is_tombstoned_for_whoever_noted_it() -> None:
    table = EntryTable(seed=1)
    h = table.add(COMPRESSED, 77, 100, 5)
    slot = table.slot(h)
    table.remove(h)
    assert (table.kind[slot], table.obj[slot]) == (FREED, 0)


def test_close_gives_the_whole_charge_back() -> None:
    budget = PageBudget(100)
    table = EntryTable(budget=budget)
    table.reserve(5 * ENTRIES_PER_PAGE)
    for i in range(5 * ENTRIES_PER_PAGE):
        table.add(COMPRESSED, i, 1, 0)
    assert budget.used >= 5
    table.close()
    assert budget.used == 0 and len(table) == 0 and table.slots == 1
