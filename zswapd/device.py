"""Block devices: a fixed number of 4 KiB slots over a pool (zram's other face).

A device is like ``/dev/zramN`` after ``echo SIZE > disksize``: ``size // 4096``
slots, each empty (reads as zeros), or naming a page stored in the device's
own pool (same-filled pages keep only their word there, as zram's slots do).
Writes of whole slots store the new pages as one all-or-nothing batch, then
swap them in and free the old ones, so a failed write changes nothing; a write
of part of a slot reads, patches and rewrites it.  TRIM and WRITE_ZEROES of
whole slots free them (zram's notify_free); WRITE_ZEROES with NO_HOLE stores
zero pages instead (same-filled: no allocator memory).  io_stat counts as
zram's: failed_reads, failed_writes, invalid_io, notify_free.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass
from typing import Any

from zswapd.config import PoolConfig, check_pool_name
from zswapd.errors import ConfigError, InvalidRequestError, PoolExistsError, UnknownPoolError
from zswapd.pool import PAGE_SIZE, PagePool
from zswapd.pools import PoolRegistry

__all__ = ["Device", "DeviceRegistry", "IoStat"]

ZERO_PAGE = bytes(PAGE_SIZE)


@dataclass
class IoStat:
    failed_reads: int = 0
    failed_writes: int = 0
    invalid_io: int = 0
    notify_free: int = 0


class Device:
    """``size`` bytes of 4 KiB slots backed by ``pool``."""

    def __init__(self, name: str, size: int, pool: PagePool) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ConfigError(f"device size must be a positive multiple of 4096, not {size}")
        self.name = name
        self.size = size
        self.pool = pool
        self.slots = array("Q", bytes(8 * (size // PAGE_SIZE)))  # 0 = empty
        self.io = IoStat()
        self._lock = threading.Lock()

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            self.io.invalid_io += 1
            raise InvalidRequestError(
                f"{length} bytes at {offset} is outside the {self.size}-byte device"
            )

    def _page(self, slot: int) -> bytes:
        handle = self.slots[slot]
        return self.pool.load([handle])[0] if handle else ZERO_PAGE

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (zeros where nothing was written)."""
        self._check(offset, length)
        if not length:
            return b""
        first, last = offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE
        with self._lock:
            handles = [self.slots[s] for s in range(first, last + 1)]
            try:
                stored = iter(self.pool.load([h for h in handles if h]))
            except Exception:
                self.io.failed_reads += 1
                raise
            data = b"".join(next(stored) if h else ZERO_PAGE for h in handles)
        start = offset - first * PAGE_SIZE
        return data[start : start + length]

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``; all or nothing."""
        self._check(offset, len(data))
        if data:
            self._replace(offset, len(data), lambda old, lo, hi: data[lo:hi])

    def zero(self, offset: int, length: int, *, keep_allocated: bool) -> None:
        """WRITE_ZEROES: free whole slots (or store zero pages), zero partial ones."""
        self._check(offset, length)
        self._discard_or_zero(offset, length, zero_partial=True, keep=keep_allocated)

    def trim(self, offset: int, length: int) -> None:
        """TRIM: free the whole slots in the range (partial slots are left as they are)."""
        self._check(offset, length)
        self._discard_or_zero(offset, length, zero_partial=False, keep=False)

    def _discard_or_zero(self, offset: int, length: int, *, zero_partial: bool, keep: bool) -> None:
        if not length:
            return
        end = offset + length
        whole_lo = -(-offset // PAGE_SIZE)
        whole_hi = end // PAGE_SIZE
        if keep:
            # Zero pages cost no allocator memory (same-filled), but building a
            # request's worth at once would: a chunk at a time, the lock released
            # between chunks so other requests go on.
            step = 256 * PAGE_SIZE
            pos = offset
            while pos < end:
                n = min(end, (pos // step + 1) * step) - pos
                self._replace(pos, n, lambda old, lo, hi: bytes(hi - lo))
                pos += n
            return
        if zero_partial:
            if offset % PAGE_SIZE and offset // PAGE_SIZE < whole_lo:
                head_end = min(end, whole_lo * PAGE_SIZE)
                self._replace(offset, head_end - offset, lambda o, lo, hi: bytes(hi - lo))
            if end % PAGE_SIZE and end // PAGE_SIZE >= whole_hi and end > whole_hi * PAGE_SIZE:
                tail_start = max(offset, whole_hi * PAGE_SIZE)
                if tail_start < end and tail_start >= whole_hi * PAGE_SIZE:
                    self._replace(tail_start, end - tail_start, lambda o, lo, hi: bytes(hi - lo))
        with self._lock:
            doomed = [self.slots[s] for s in range(whole_lo, whole_hi) if self.slots[s]]
            for s in range(whole_lo, whole_hi):
                self.slots[s] = 0
            if doomed:
                self.pool.free(doomed)
            self.io.notify_free += len(doomed)

    def _replace(self, offset: int, length: int, fill: Any) -> None:
        """Rewrite the slots under [offset, offset+length) with ``fill``'s bytes.

        ``fill(old_page, lo, hi)`` gives the new bytes for page offsets [lo, hi).
        """
        first, last = offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE
        with self._lock:
            pages = []
            consumed = 0
            for s in range(first, last + 1):
                lo = offset - s * PAGE_SIZE if s == first else 0
                hi = min(PAGE_SIZE, offset + length - s * PAGE_SIZE)
                if lo == 0 and hi == PAGE_SIZE:
                    new = fill(None, consumed, consumed + PAGE_SIZE)
                else:  # part of a slot: read, modify, write
                    try:
                        old = self._page(s)
                    except Exception:
                        self.io.failed_reads += 1
                        raise
                    new = old[:lo] + fill(old, consumed, consumed + hi - lo) + old[hi:]
                consumed += hi - lo
                pages.append(new)
            try:
                handles = self.pool.store(pages)
            except Exception:
                self.io.failed_writes += 1
                raise
            old_handles = [self.slots[s] for s in range(first, last + 1) if self.slots[s]]
            for i, s in enumerate(range(first, last + 1)):
                self.slots[s] = handles[i]
            if old_handles:
                self.pool.free(old_handles)

    def stats(self) -> dict[str, Any]:
        base = self.pool.stats()
        return {
            "device": self.name,
            "size": self.size,
            "mm_stat": base["mm_stat"],
            "io_stat": {
                "failed_reads": self.io.failed_reads,
                "failed_writes": self.io.failed_writes,
                "invalid_io": self.io.invalid_io,
                "notify_free": self.io.notify_free,
            },
            # No backing device (zram's writeback): always zero.
            "bd_stat": {"bd_count": 0, "bd_reads": 0, "bd_writes": 0},
            "classes": base["classes"],
        }


class DeviceRegistry:
    """Devices by name; each device's pool also lives in the pool registry."""

    def __init__(self, pools: PoolRegistry) -> None:
        self.pools = pools
        self._devices: dict[str, Device] = {}
        self._lock = threading.Lock()

    def create(self, name: str, size: int, config: PoolConfig | None = None) -> Device:
        check_pool_name(name)
        with self._lock:
            if name in self._devices:
                raise PoolExistsError(f"device {name!r} exists already")
            pool = self.pools.create(name, config)
            try:
                device = Device(name, size, pool)
            except ConfigError:
                self.pools.remove(name)
                raise
            self.pools.pinned.add(name)
            self._devices[name] = device
            return device

    def get(self, name: str) -> Device:
        try:
            return self._devices[name]
        except KeyError:
            raise UnknownPoolError(f"no device named {name!r}") from None

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._devices:
                raise UnknownPoolError(f"no device named {name!r}")
            self.pools.remove(name, device=True)
            del self._devices[name]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)
