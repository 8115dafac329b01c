"""A scrape that races a pool's or a device's removal still answers, without it.

The collectors list names, then read each; a name removed in between must be
skipped, not end the scrape in an error (the registries raise UnknownPoolError).
"""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.zswapd.helpers import text_page
from zswapd.config import PoolConfig
from zswapd.device import Device, DeviceRegistry
from zswapd.errors import UnknownPoolError
from zswapd.metrics import Metrics
from zswapd.pool import PagePool
from zswapd.pools import PoolRegistry


def _pools_in(metrics: Metrics, prefix: str = "zswapd_") -> set[str]:
    text = metrics.exposition().decode()
    return {
        s.labels["pool"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if "pool" in s.labels and s.name.startswith(prefix)
    }


class _RemovedAfterListing(PoolRegistry):
    """Removes ``victim`` right after listing it: the interleaving a scrape can meet."""

    victim = "gone"

    def names(self) -> list[str]:
        names = super().names()
        if self.victim in names:
            self.remove(self.victim, device=True)
        return names


class _DeviceRemovedAfterListing(DeviceRegistry):
    def names(self) -> list[str]:
        names = super().names()
        if "gone" in names:
            self.remove("gone")
        return names


def test_a_pool_removed_between_listing_and_reading_is_left_out() -> None:
    reg = _RemovedAfterListing()
    reg.create("kept").store([text_page(1)])
    reg.create("gone").store([text_page(2)])
    metrics = Metrics(reg)
    assert _pools_in(metrics) == {"kept"}
    assert _pools_in(metrics) == {"kept"}


class _RemovedAfterLookup(PoolRegistry):
    """Removes ``victim`` right after handing it out: the pool is read closed."""

    victim = "gone"

    def get(self, name: str) -> PagePool:
        pool = super().get(name)
        if name == self.victim:
            self.remove(name, device=True)
        return pool


class _DeviceRemovedAfterLookup(DeviceRegistry):
    def get(self, name: str) -> Device:
        dev = super().get(name)
        if name == "gone":
            self.remove(name)
        return dev


def test_a_pool_removed_after_its_lookup_is_left_out_not_read_closed() -> None:
    reg = _RemovedAfterLookup()
    reg.create("kept").store([text_page(1)])
    gone = reg.create("gone")
    gone.store([text_page(2), bytes(4096)])
    metrics = Metrics(reg)
    assert _pools_in(metrics) == {"kept"}
    # Read directly, a removed pool answers as a removed pool, not with
    # figures half reset (no pages but their compressed bytes still counted).
    for figures in (gone.stats, gone.mm_stat, gone.bd_stat):
        with pytest.raises(UnknownPoolError, match="was removed"):
            figures()


@pytest.mark.parametrize("registry", [_DeviceRemovedAfterListing, _DeviceRemovedAfterLookup])
def test_a_device_removed_while_a_scrape_reads_it_is_left_out(
    registry: type[DeviceRegistry],
) -> None:
    """Removed between listing and lookup, or between lookup and reading."""
    pools = PoolRegistry()
    devices = registry(pools)
    devices.create("kept", 16 * 4096, PoolConfig(compressor="lz4"))
    devices.create("gone", 16 * 4096, PoolConfig(compressor="lz4"))
    # The pool collector ran before the removal: only the device series leave it out.
    assert _pools_in(Metrics(pools, devices), "zswapd_device_") == {"kept"}


def test_scrapes_answer_while_pools_come_and_go() -> None:
    reg = PoolRegistry()
    reg.create("steady").store([text_page(3)])
    metrics = Metrics(reg)
    stop = threading.Event()
    churned = 0

    def churn() -> None:
        nonlocal churned
        while not stop.is_set():
            pool = reg.create("churn")
            pool.store([text_page(churned)])
            reg.remove("churn")
            churned += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            assert "steady" in _pools_in(metrics)
    finally:
        stop.set()
        thread.join()
    assert churned > 0
