"""Worker-thread calls and the C heap: what a failed request leaves behind.

The daemon-level flood is test_exhaustion.py; these pin the mechanism down in
process: a call that fails in a worker thread must leave nothing that only the
cyclic garbage collector could free (run with the collector off), and the
heaps are trimmed once after each burst of work.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from zswapd import malloc
from zswapd.offload import INLINE_PAGES, offload, run_in_thread, thread_jobs


class Payload(bytearray):
    """A request's bytes, weakly referenceable (bytes are not)."""


class Refused(Exception):
    pass


def _refuse(payload: Payload) -> None:
    pages = [payload[i : i + 16] for i in range(0, len(payload), 16)]  # noqa: F841 (held by the frame)
    raise Refused("pool full")


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("pages", [1, INLINE_PAGES + 1])  # on the loop; in a worker thread
def test_a_failed_call_is_freed_by_reference_counting(no_gc: None, pages: int) -> None:
    async def main() -> weakref.ref[Payload]:
        payload = Payload(4096)
        ref = weakref.ref(payload)
        with pytest.raises(Refused, match="pool full"):
            await offload(pages, _refuse, payload)
        del payload
        return ref

    ref = asyncio.run(main())
    assert ref() is None  # nothing kept it: no cycle through anyio's future


def test_results_and_errors_come_back() -> None:
    async def main() -> None:
        before = thread_jobs()
        assert await run_in_thread(sum, [1, 2, 3]) == 6
        with pytest.raises(ZeroDivisionError):
            await run_in_thread(divmod, 1, 0)
        assert thread_jobs() == before + 2

    asyncio.run(main())


def test_the_heaps_are_trimmed_once_after_each_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    activity = iter([0, 0, 3, 5, 5, 5, 5, 9, 9, 9])  # two bursts, each then idle
    now = [0]

    def count() -> int:
        now[0] = next(activity, now[0])
        return now[0]

    monkeypatch.setattr(malloc, "trim", lambda: trims.append(now[0]) or True)

    async def main() -> None:
        task = asyncio.create_task(malloc.trim_when_idle(count, interval=0.01))
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(main())
    assert trims == [5, 9]  # not during a burst, once after it


def test_trim_runs_here() -> None:
    assert malloc.trim() in (True, False)  # glibc; elsewhere False, changing nothing


def test_maintenance_work_never_takes_the_threads_requests_need() -> None:
    """Whole-pool work (recompress, compact) runs MAINTENANCE_THREADS at a time;
    requests' thread work goes on while every maintenance slot is busy."""
    import threading

    from zswapd.offload import MAINTENANCE_THREADS, run_maintenance

    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def long_maintenance() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1

    async def scenario() -> None:
        jobs = [asyncio.ensure_future(run_maintenance(long_maintenance)) for _ in range(60)]
        await asyncio.sleep(0.2)
        # Sixty queued, MAINTENANCE_THREADS running: a request still gets a thread.
        assert await asyncio.wait_for(run_in_thread(lambda: 42), 5) == 42
        assert running == MAINTENANCE_THREADS
        release.set()
        await asyncio.gather(*jobs)

    asyncio.run(scenario())
    assert most == MAINTENANCE_THREADS


def test_a_small_batch_for_a_busy_pool_waits_in_a_thread_not_on_the_loop() -> None:
    from zswapd.config import PoolConfig
    from zswapd.pool import PagePool

    pool = PagePool("busy", PoolConfig(compressor="lz4"))
    page = bytes(range(256)) * 16

    async def scenario() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        held = threading.Event()

        def compaction() -> None:  # holds the pool for half a second, as a big one does
            with pool._lock:
                held.set()
                time.sleep(0.5)

        holder = threading.Thread(target=compaction)
        holder.start()
        held.wait(5)
        t = asyncio.ensure_future(ticker())
        (handle,) = await asyncio.wait_for(offload(1, pool.store, page), 5)
        # The loop went on serving while the store waited for the lock.
        assert ticks >= 10
        assert pool.load([handle]) == [page]
        t.cancel()
        holder.join()

    asyncio.run(scenario())


class Disk:
    """A pool with a backing file on a disk that answers when told to."""

    disk_bound = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def wait_for_disk(self) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        return "written"

    def quick(self) -> str:
        return "served"


def test_a_slow_disk_holds_its_own_threads_not_everyone_elses() -> None:
    """A client storing into a pool on a slow disk held every thread of the
    shared pool: now a pool's disk-bound work takes at most
    DISK_THREADS_PER_POOL threads of the disk's own, and other pools (and work
    without a disk) are served meanwhile."""
    from zswapd.offload import DISK_THREADS_PER_POOL

    async def main() -> None:
        slow, other = Disk(), Disk()
        other.release.set()
        jobs = [asyncio.ensure_future(offload(1, slow.wait_for_disk)) for _ in range(40)]
        await asyncio.sleep(0.2)
        assert slow.most == DISK_THREADS_PER_POOL
        # Another pool with a backing file, and plain work in the shared pool.
        assert await asyncio.wait_for(offload(1, other.wait_for_disk), 5) == "written"
        assert await asyncio.wait_for(run_in_thread(other.quick), 5) == "served"
        slow.release.set()
        assert await asyncio.gather(*jobs) == ["written"] * 40
        assert slow.most == DISK_THREADS_PER_POOL

    asyncio.run(main())
