"""Block devices: a fixed number of 4 KiB slots over a pool (zram's other face).

A device is like ``/dev/zramN`` after ``echo SIZE > disksize``: ``size // 4096``
slots, each empty (reads as zeros), or naming a page stored in the device's
own pool (same-filled pages keep only their word there, as zram's slots do).
A write is zram's, page by page: each slot's new page is stored, then its old
object freed, before the next slot's (so the pool's figures are a real zram's
after the same writes); a write that fails part way (the pool's limit) leaves
the slots before the failing one written, as a bio zram fails part way does,
and counts one failed_write.  A write of part of a slot reads, patches and
rewrites it.  TRIM and WRITE_ZEROES of
whole slots free them (zram's notify_free); WRITE_ZEROES with NO_HOLE stores
zero pages instead (same-filled: no allocator memory).  io_stat counts as
zram's: failed_reads, failed_writes, invalid_io, notify_free.

A device's memory follows the slots written, not its size, as zram's
disksize costs nothing until pages arrive: the slot table has two levels, a
dict of leaves of :data:`LEAF_SLOTS` handles (one 4 KiB page of u64s each,
like a page table's), a leaf made on the first write into its 2 MiB of the
device and dropped when its last slot is emptied.  A 1 TiB device costs a few
hundred bytes until it is written.  Each leaf charges the server's
:class:`~allocator.PageBudget` (--memory-limit) one page while it exists,
taken before the write that needs it stores anything: a device written
sparsely cannot hold more than the limit in leaves, and a write whose leaves
the budget cannot pay for fails whole (507 memory_limit, ENOSPC over NBD).  Sizes are bounded by
:data:`MAX_DEVICE_SIZE`: 2**32 slots, zram's own bound (its slot index is a
u32), 16 TiB.

A device may have a backing file (its pool's ``backing_file``: zram's
``backing_dev``).  Its pages then leave memory for the file when asked
(:meth:`Device.writeback`, which takes them in block index order, as zram
walks its slots) or, with ``writeback = "lru"``, when a write finds the pool
at its limit.  A written-back block keeps its handle: a READ reads it from
the file and leaves it there (bd_reads), a WRITE over it or a TRIM frees its
file slot; a write that neither fits nor can be made to fit (the file full
too) fails whole, ENOSPC over NBD.
"""

from __future__ import annotations

import contextlib
import threading
from array import array
from dataclasses import dataclass
from typing import Any

from allocator import PageBudget
from zswapd.config import PoolConfig, check_pool_name
from zswapd.errors import (
    ConfigError,
    InvalidRequestError,
    MemoryLimitError,
    PoolExistsError,
    UnknownPoolError,
)
from zswapd.pool import PAGE_SIZE, PagePool
from zswapd.pools import PoolRegistry

__all__ = [
    "LEAF_SLOTS",
    "MAX_DEVICE_SIZE",
    "Device",
    "DeviceRegistry",
    "IoStat",
    "SlotTable",
    "check_device_size",
]

ZERO_PAGE = bytes(PAGE_SIZE)
# Handles per leaf of the slot table: one page of u64s, covering 2 MiB of device.
LEAF_SHIFT = 9
LEAF_SLOTS = 1 << LEAF_SHIFT
_LEAF_MASK = LEAF_SLOTS - 1
_EMPTY_LEAF = bytes(8 * LEAF_SLOTS)
# The largest device: 2**32 slots, as zram (whose slot index is a u32) allows; 16 TiB.
MAX_DEVICE_SIZE = (1 << 32) * PAGE_SIZE


@dataclass
class IoStat:
    failed_reads: int = 0
    failed_writes: int = 0
    invalid_io: int = 0
    notify_free: int = 0


class SlotTable:
    """Slot index -> handle (0: empty), in leaves made on first write, dropped when emptied.

    Args:
        budget: charged one page per leaf held (None: nothing charged).
    """

    __slots__ = ("_budget", "_leaves", "_used")

    def __init__(self, budget: PageBudget | None = None) -> None:
        self._leaves: dict[int, array[int]] = {}
        self._used: dict[int, int] = {}  # leaf index -> its non-empty slots
        self._budget = budget

    def reserve(self, lo: int, hi: int) -> None:
        """Make the leaves that slots [lo, hi) lack, one budget page each; all or none.

        A leaf made here and left empty is dropped by :meth:`release_empty`.

        Raises:
            MemoryLimitError: the budget cannot pay for them (nothing made).
        """
        if lo >= hi:
            return
        indexes = range(lo >> LEAF_SHIFT, ((hi - 1) >> LEAF_SHIFT) + 1)
        missing = [i for i in indexes if i not in self._leaves]
        if not missing:
            return
        if self._budget is not None and not self._budget.charge(len(missing)):
            raise MemoryLimitError(
                f"the server's memory limit cannot pay for {len(missing)} more "
                f"slot-table leaves ({4096 * len(missing)} bytes); nothing written"
            )
        for i in missing:
            self._leaves[i] = array("Q", _EMPTY_LEAF)
            self._used[i] = 0

    def release_empty(self, lo: int, hi: int) -> None:
        """Drop the leaves of slots [lo, hi) that hold nothing (after a failed write)."""
        if lo >= hi:
            return
        empty = [
            i
            for i in range(lo >> LEAF_SHIFT, ((hi - 1) >> LEAF_SHIFT) + 1)
            if self._used.get(i, 1) == 0
        ]
        for i in empty:
            del self._leaves[i], self._used[i]
        self._uncharge(len(empty))

    def close(self) -> None:
        """Drop every leaf, giving back their pages (the device is gone)."""
        self._uncharge(len(self._leaves))
        self._leaves.clear()
        self._used.clear()

    def _uncharge(self, leaves: int) -> None:
        if leaves and self._budget is not None:
            self._budget.uncharge(leaves)

    def __getitem__(self, slot: int) -> int:
        leaf = self._leaves.get(slot >> LEAF_SHIFT)
        return 0 if leaf is None else leaf[slot & _LEAF_MASK]

    def __setitem__(self, slot: int, handle: int) -> None:
        index = slot >> LEAF_SHIFT
        leaf = self._leaves.get(index)
        if leaf is None:
            if not handle:
                return  # emptying an empty slot: no leaf needed
            self.reserve(slot, slot + 1)
            leaf = self._leaves[index]
        old = leaf[slot & _LEAF_MASK]
        leaf[slot & _LEAF_MASK] = handle
        used = self._used[index] + bool(handle) - bool(old)
        if used:
            self._used[index] = used
        else:
            del self._leaves[index], self._used[index]
            self._uncharge(1)

    def clear(self, lo: int, hi: int) -> list[int]:
        """Empty slots [lo, hi); the handles they held.  O(leaves touched), not O(slots)."""
        if lo >= hi:
            return []
        first, last = lo >> LEAF_SHIFT, (hi - 1) >> LEAF_SHIFT
        if last - first + 1 <= len(self._leaves):
            indexes = [i for i in range(first, last + 1) if i in self._leaves]
        else:  # a range wider than the table: walk the leaves that exist
            indexes = sorted(i for i in self._leaves if first <= i <= last)
        doomed: list[int] = []
        for i in indexes:
            base = i << LEAF_SHIFT
            a, b = max(lo, base) - base, min(hi, base + LEAF_SLOTS) - base
            leaf = self._leaves[i]
            held = [h for h in leaf[a:b] if h]
            doomed += held
            used = self._used[i] - len(held)
            if used:
                leaf[a:b] = array("Q", _EMPTY_LEAF[: 8 * (b - a)])
                self._used[i] = used
            else:
                del self._leaves[i], self._used[i]
                self._uncharge(1)
        return doomed

    @property
    def leaves(self) -> int:
        """Leaves allocated (each LEAF_SLOTS x 8 bytes)."""
        return len(self._leaves)

    def handles(self) -> array[int]:
        """Every handle held, in slot index order.  O(leaves + handles), not O(size)."""
        out: array[int] = array("Q")
        for i in sorted(self._leaves):
            out.extend(h for h in self._leaves[i] if h)
        return out


def check_device_size(size: int) -> int:
    """``size`` if it is a valid device size.

    Raises:
        ConfigError: not a positive multiple of 4096, or past MAX_DEVICE_SIZE.
    """
    if type(size) is not int or size <= 0 or size % PAGE_SIZE:
        raise ConfigError(f"device size must be a positive multiple of 4096, not {size!r}")
    if size > MAX_DEVICE_SIZE:
        raise ConfigError(
            f"device size {size} is past the largest supported, {MAX_DEVICE_SIZE} (16 TiB)"
        )
    return size


class Device:
    """``size`` bytes of 4 KiB slots backed by ``pool``."""

    def __init__(self, name: str, size: int, pool: PagePool) -> None:
        self.name = name
        self.size = check_device_size(size)
        self.pool = pool
        self.slots = SlotTable(pool.budget)
        self.io = IoStat()
        self._lock = threading.Lock()
        # The pool's own writeback route takes blocks in index order too.
        pool.writeback_order = self.index_order

    @property
    def disk_bound(self) -> bool:
        """Its pool has a backing file (see PagePool.disk_bound)."""
        return self.pool.disk_bound

    @property
    def busy(self) -> bool:
        """Whether a request should leave the event loop: zswapd.offload asks the
        object whose method it runs, and a device's work waits for its pool (a
        compaction, or a backing file's disk) and for the device's own lock."""
        return self.pool.busy or self._lock.locked()

    def check_range(self, offset: int, length: int) -> None:
        """Raise InvalidRequestError (counted as invalid_io) unless the range is inside."""
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
        self.check_range(offset, length)
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
        """Write ``data`` at ``offset``, page by page as zram does: a page that
        fails leaves the pages before it written and those after it as they were."""
        self.check_range(offset, len(data))
        if data:
            self._replace(offset, len(data), lambda old, lo, hi: data[lo:hi])

    def zero(self, offset: int, length: int, *, keep_allocated: bool) -> None:
        """WRITE_ZEROES: free whole slots (or store zero pages), zero partial ones."""
        self.check_range(offset, length)
        self._discard_or_zero(offset, length, zero_partial=True, keep=keep_allocated)

    def trim(self, offset: int, length: int) -> None:
        """TRIM: free the whole slots in the range (partial slots are left as they are)."""
        self.check_range(offset, length)
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
            doomed = self.slots.clear(whole_lo, whole_hi)
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
            # The slot table's leaves first, so that one the budget cannot pay
            # for refuses the write before anything is stored.
            try:
                self.slots.reserve(first, last + 1)
            except MemoryLimitError:
                self.io.failed_writes += 1
                self.pool.count_memory_limit_hit(len(pages))
                raise
            # zram_write_page, slot by slot: the new object is allocated while
            # the old one is still held, then the old one is freed.
            for s, page in zip(range(first, last + 1), pages, strict=True):
                try:
                    (handle,) = self.pool.store([page])
                except Exception:
                    self.slots.release_empty(s, last + 1)
                    self.io.failed_writes += 1
                    raise
                previous = self.slots[s]
                self.slots[s] = handle
                if previous:
                    self.pool.free([previous])

    def writeback(
        self, type: str, *, idle_seconds: float | None = None, max_pages: int | None = None
    ) -> dict[str, Any]:
        """Write the device's pages back to its pool's backing file, in block
        index order (zram's ``writeback``: it walks the slots from index 0),
        as the pool's own writeback route does (PagePool.writeback_order).

        The handles are read under the device's lock, the I/O runs without it:
        reads and writes of the device go on meanwhile; a block rewritten or
        trimmed meanwhile is skipped by the pool (its handle is stale).

        Args and Returns: as :meth:`PagePool.writeback`.

        Raises:
            ConfigError: the device has no backing file.
            InvalidRequestError: a bad type, idle_seconds or max_pages.
        """
        return self.pool.writeback(
            type, idle_seconds=idle_seconds, max_pages=max_pages, order=self.index_order()
        )

    def index_order(self) -> array[int]:
        """The handles of the written blocks, by block index (the pool's writeback order)."""
        with self._lock:
            return self.slots.handles()

    def close(self) -> None:
        """Give back the slot table's leaves (the device's pool is gone)."""
        with self._lock:
            self.slots.close()
        self.pool.writeback_order = None  # no cycle left for the collector

    def stats(self) -> dict[str, Any]:
        base = self.pool.stats().to_dict()
        return {
            "device": self.name,
            "size": self.size,
            "compressor": base["compressor"],
            "mm_stat": base["mm_stat"],
            "io_stat": {
                "failed_reads": self.io.failed_reads,
                "failed_writes": self.io.failed_writes,
                "invalid_io": self.io.invalid_io,
                "notify_free": self.io.notify_free,
            },
            # zram's bd_stat, in pages: in the backing file now, read from it,
            # written to it (zeros without a backing file, as zram's).
            "bd_stat": base["bd_stat"],
            "backing": base["backing"],
            # An lru device is zswap-like: written_back_pages, reject_reclaim_fail.
            "zswap": base["zswap"],
            # Charged to the server's memory limit beside the pool's own figures.
            "slot_table": {"leaves": self.slots.leaves, "bytes": self.slots.leaves * PAGE_SIZE},
            "classes": base["classes"],
        }


class DeviceRegistry:
    """Devices by name; each device's pool also lives in the pool registry."""

    def __init__(self, pools: PoolRegistry) -> None:
        self.pools = pools
        self._devices: dict[str, Device] = {}
        self._lock = threading.Lock()

    def create(
        self, name: str, size: int, config: PoolConfig | None = None, *, client: bool = False
    ) -> Device:
        """A new device of ``size`` bytes over a new pool called ``name``.

        Args:
            client: the configuration comes from a client (over HTTP): its
                backing file, if any, must be a new file inside the registry's
                backing_dir (PoolRegistry.create).

        Raises:
            ConfigError: a bad name, size or configuration (nothing is left).
            PoolExistsError: a device or pool of that name exists.
            TooManyPoolsError: the registry holds max_pools pools already.
        """
        check_pool_name(name)
        check_device_size(size)  # before the pool exists: a refused device leaves nothing
        with self._lock:
            if name in self._devices:
                raise PoolExistsError(f"device {name!r} exists already")
            pool = self.pools.create(name, config, client=client)
            try:
                device = Device(name, size, pool)
            except BaseException:
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
            device = self._devices.get(name)
            if device is None:
                raise UnknownPoolError(f"no device named {name!r}")
            self.pools.remove(name, device=True)
            del self._devices[name]
        device.close()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def close(self) -> None:
        """Remove every device (the daemon stops): devices are never saved, so a
        backing file made for a client goes with its device, as its pages do."""
        for name in self.names():
            with contextlib.suppress(UnknownPoolError):
                self.remove(name)
