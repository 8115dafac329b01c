"""PageBudget: several pools of every allocator bounded together, never past it."""

from __future__ import annotations

import contextlib
import random
import threading
from typing import Any

import pytest

from allocator import BudgetExceededError, PageBudget, PoolFullError, create


def _pools(budget: PageBudget, **options: Any) -> list[Any]:
    return [create(name, budget=budget, **options) for name in ("zsmalloc", "zbud", "z3fold")]


def test_pools_together_never_pass_the_budget_and_refusals_change_nothing() -> None:
    budget = PageBudget(40)
    pools = _pools(budget)
    rng = random.Random(5)
    live: list[list[int]] = [[], [], []]
    refused = 0
    for _ in range(3000):
        n = rng.randrange(3)
        pool = pools[n]
        if live[n] and rng.random() < 0.35:
            pool.free(live[n].pop(rng.randrange(len(live[n]))))
        else:
            before = (pool.pages, pool.objs_used)
            try:
                live[n].append(pool.malloc(rng.choice([64, 700, 2000, 4096])))
            except BudgetExceededError:
                refused += 1
                assert (pool.pages, pool.objs_used) == before
        if rng.random() < 0.01:
            pools[0].compact()
        assert budget.used == sum(p.pages for p in pools) <= 40
    assert refused > 0 and budget.used_max == 40
    for p in pools:
        p.check_invariants()


def test_a_pools_own_limit_is_pool_full_and_the_shared_one_budget_exceeded() -> None:
    budget = PageBudget(4)
    small = create("zbud", max_pages=2, budget=budget)
    big = create("zbud", budget=budget)
    small.malloc(4000)
    small.malloc(4000)
    with pytest.raises(PoolFullError) as own:
        small.malloc(4000)
    assert not isinstance(own.value, BudgetExceededError)
    big.malloc(4000)
    big.malloc(4000)
    with pytest.raises(BudgetExceededError):
        big.malloc(4000)


def test_short_zspages_take_what_the_shared_budget_has_left() -> None:
    budget = PageBudget(3)
    pool = create("zsmalloc", short_zspages=True, budget=budget)
    pool.malloc(3000)  # class 3008: a 4-page zspage, cut to 3
    assert pool.pages == 3 == budget.used
    pool.check_invariants()


def test_close_gives_every_page_back_and_refuses_more() -> None:
    budget = PageBudget(64)
    pool = create("zsmalloc", budget=budget)
    handles = [pool.malloc(1000) for _ in range(100)]
    assert budget.used == pool.pages > 0
    pool.close()
    assert budget.used == 0 and pool.pages == 0
    with pytest.raises(PoolFullError):
        pool.malloc(1000)
    assert handles


def test_a_lowered_budget_keeps_what_is_held_and_refuses_more() -> None:
    pool = create("zsmalloc")
    for _ in range(50):
        pool.malloc(4096)
    pool.set_max_pages(10)
    assert pool.pages == 50
    with pytest.raises(PoolFullError):
        pool.malloc(4096)
    pool.check_invariants()


def test_threads_charging_one_budget_stay_within_it() -> None:
    budget = PageBudget(100)
    pools = [create("zsmalloc", budget=budget) for _ in range(4)]

    def fill(pool: Any) -> None:
        for _ in range(200):
            with contextlib.suppress(BudgetExceededError):
                pool.malloc(4096)

    threads = [threading.Thread(target=fill, args=(p,)) for p in pools]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.used == sum(p.pages for p in pools) == 100
