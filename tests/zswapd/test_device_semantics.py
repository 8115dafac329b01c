"""A block device in-process, as zram's: reads of unwritten slots are zeroes,
partial writes read-modify-write, trims free whole slots only, writes go page
by page (a failed write keeps the slots before the failing one, as zram's)."""

from __future__ import annotations

import os

import pytest

from tests.zswapd.helpers import text_page
from zswapd.config import PoolConfig
from zswapd.device import DeviceRegistry
from zswapd.errors import InvalidRequestError, PoolLimitError
from zswapd.pools import PoolRegistry


def _device(size: int = 16 * 4096, **config: object) -> tuple[DeviceRegistry, object]:
    reg = DeviceRegistry(PoolRegistry())
    return reg, reg.create("d", size, PoolConfig(compressor="lz4", **config))  # type: ignore[arg-type]


def test_device_zram_semantics() -> None:
    _, dev = _device()
    assert dev.read(0, 8192) == bytes(8192)  # type: ignore[attr-defined]
    dev.write(100, b"x" * 5000)  # type: ignore[attr-defined]  # partial slots: RMW
    got = dev.read(0, 8192)  # type: ignore[attr-defined]
    assert got == bytes(100) + b"x" * 5000 + bytes(8192 - 5100)
    dev.write(3 * 4096, text_page(1) * 2)  # type: ignore[attr-defined]
    pool = dev.pool  # type: ignore[attr-defined]
    assert pool.stored_pages == 4
    dev.trim(3 * 4096 + 10, 8192)  # type: ignore[attr-defined]  # only slot 4 is whole
    assert pool.stored_pages == 3 and dev.io.notify_free == 1  # type: ignore[attr-defined]
    assert dev.read(3 * 4096, 4096) == text_page(1)  # type: ignore[attr-defined]
    dev.zero(0, 8192, keep_allocated=False)  # type: ignore[attr-defined]
    assert pool.stored_pages == 1 and dev.read(0, 8192) == bytes(8192)  # type: ignore[attr-defined]
    dev.zero(0, 8192, keep_allocated=True)  # type: ignore[attr-defined]  # NO_HOLE
    assert pool.stored_pages == 3 and pool.mm_stat().same_pages == 2
    dev.zero(4096 + 1, 10, keep_allocated=False)  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequestError):
        dev.read(16 * 4096 - 1, 2)  # type: ignore[attr-defined]
    assert dev.io.invalid_io == 1  # type: ignore[attr-defined]
    pool.check_invariants()


def test_a_failed_write_keeps_the_slots_before_the_failing_one() -> None:
    _, dev = _device(size=64 * 4096, limit_bytes=4 * 4096)
    data = os.urandom(40 * 4096)  # huge pages: one page of memory each
    with pytest.raises(PoolLimitError):
        dev.write(0, data)  # type: ignore[attr-defined]
    # zram writes a bio page by page: the fifth page passes the limit and fails.
    assert dev.read(0, 40 * 4096) == data[: 4 * 4096] + bytes(36 * 4096)  # type: ignore[attr-defined]
    assert dev.io.failed_writes == 1  # type: ignore[attr-defined]
    mm = dev.pool.mm_stat()  # type: ignore[attr-defined]
    assert dev.pool.stored_pages == 4 and mm.mem_used_total == 4 * 4096  # type: ignore[attr-defined]
    # The fifth page's object was allocated, counted in mem_used_max, then freed.
    assert mm.mem_used_max == 5 * 4096
    dev.pool.check_invariants()  # type: ignore[attr-defined]


def test_an_overwrite_allocates_the_new_page_before_freeing_the_old_one() -> None:
    _, dev = _device(size=8 * 4096)
    dev.write(0, os.urandom(2 * 4096))  # type: ignore[attr-defined]
    new = os.urandom(2 * 4096)
    dev.write(0, new)  # type: ignore[attr-defined]
    assert dev.read(0, 2 * 4096) == new  # type: ignore[attr-defined]
    mm = dev.pool.mm_stat()  # type: ignore[attr-defined]
    # Slot 0's new page beside its old one (3 pages), then slot 1's (3 again):
    # never all four at once, as a batch stored before any free would hold.
    assert (mm.mem_used_total, mm.mem_used_max) == (2 * 4096, 3 * 4096)
    assert mm.huge_pages == 2 and mm.huge_pages_since == 4
