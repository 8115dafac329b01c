"""Blocking store work off the event loop, without keeping what failed alive.

Every frontend hands large batches to a worker thread so that the loop goes on
serving other connections.  Starlette's ``run_in_threadpool`` (anyio) carries
a worker's exception back in an asyncio future and raises it out of
``await future``; the exception's traceback then holds anyio's frame, whose
local ``future`` holds the exception: a reference cycle

    exception -> traceback -> run_sync_in_worker_thread frame -> future -> exception

that keeps every frame on the traceback alive, with its locals: the request's
payload (4 MiB for a full STORE), the split pages, the compressed ones.  Only
the cyclic garbage collector frees it, and it runs by count of container
allocations, not of bytes: a pool at its limit answering 507 to 4 MiB stores
grew a daemon by GiBs, kept when idle.  Rejected requests are a full pool's
normal state, so this module never lets an exception cross the thread pool's
future: the worker returns it as a value and the loop raises it afresh, with
no frame holding it, so reference counting frees everything once the error
is answered.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import anyio
import anyio.to_thread

__all__ = [
    "DISK_THREADS",
    "DISK_THREADS_PER_POOL",
    "INLINE_PAGES",
    "MAINTENANCE_THREADS",
    "offload",
    "run_in_thread",
    "run_maintenance",
    "run_on_disk",
    "runs_inline",
    "thread_jobs",
]

T = TypeVar("T")

# Up to this many pages, a request is served on the event loop itself: the work
# (well under a millisecond) costs less than handing it to a worker thread and
# back.  Larger batches go to the thread pool so the loop keeps serving others.
INLINE_PAGES = 64

_thread_jobs = 0  # calls handed to worker threads (on the loop's thread only)


def thread_jobs() -> int:
    """Calls handed to worker threads so far: large batches, the work that
    allocates and frees most memory (zswapd.malloc trims after it)."""
    return _thread_jobs


class _Job(Generic[T]):
    """One call for a worker thread, handed back empty.

    The call and its outcome live here, not in the thread pool's arguments and
    return value: anyio's worker keeps those of its last call until the next
    one, which would keep an idle worker holding a request's payload.
    """

    __slots__ = ("_call", "_outcome")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._call: tuple[Callable[..., T], tuple[Any, ...]] | None = (fn, args)
        self._outcome: tuple[T | None, Exception | None] = (None, None)

    def run(self) -> None:
        """In the worker thread: make the call, keep its result or exception."""
        if self._call is None:
            return
        fn, args = self._call
        self._call = None
        try:
            self._outcome = (fn(*args), None)
        except Exception as exc:  # carried back as a value, raised again on the loop
            self._outcome = (None, exc)

    def take(self) -> tuple[T | None, Exception | None]:
        """The outcome, leaving the job empty (it holds no payload, no exception)."""
        outcome, self._outcome, self._call = self._outcome, (None, None), None
        return outcome


async def _run(
    fn: Callable[..., T], args: tuple[Any, ...], limiter: anyio.CapacityLimiter | None
) -> T:
    global _thread_jobs
    _thread_jobs += 1
    job = _Job(fn, args)
    try:
        # limiter None: anyio's default, the pool starlette's run_in_threadpool uses.
        await anyio.to_thread.run_sync(job.run, limiter=limiter)
    finally:
        # Emptied whatever happened (cancelled too): the job's traceback frame
        # holds the job, so a job still holding the exception would be a cycle.
        result, error = job.take()
    if error is None:
        return cast(T, result)
    try:
        raise error
    finally:
        # This frame is on the traceback: it must not hold the exception too.
        del error


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; its exception, if any, raised here.

    Unlike ``run_in_threadpool`` alone, a failed call leaves no reference
    cycle: the exception is freed with its traceback as soon as its handler is
    done with it.
    """
    return await _run(fn, args, None)


# Recompression and compaction walk a whole pool, seconds of CPU each: left to
# the shared thread pool (40 threads), a burst of them took every thread, and a
# Prometheus scrape waited 54 s behind them.  They queue for threads of their
# own instead, MAINTENANCE_THREADS at a time for the whole server.
MAINTENANCE_THREADS = 2
_maintenance: anyio.CapacityLimiter | None = None


async def run_maintenance(fn: Callable[..., T], *args: Any) -> T:
    """As :func:`run_in_thread`, for whole-pool work: at most MAINTENANCE_THREADS
    such calls run at once, and they never take the threads requests need."""
    global _maintenance
    if _maintenance is None:  # made on first use: it belongs to the running loop
        _maintenance = anyio.CapacityLimiter(MAINTENANCE_THREADS)
    return await _run(fn, args, _maintenance)


# Work on a pool with a backing file may wait for a disk, for as long as the
# disk likes: a client storing into an lru pool on a slow disk held all 40 of
# the shared pool's threads, and loads of every other pool (and /metrics) waited
# 0.7 s for one.  Such work gets threads of its own, DISK_THREADS for the whole
# server and DISK_THREADS_PER_POOL for any one pool (a device and its pool
# count as one); what waits beyond that waits on the loop, holding no thread.
DISK_THREADS = 16
DISK_THREADS_PER_POOL = 4
_disk: anyio.CapacityLimiter | None = None
_per_pool: weakref.WeakKeyDictionary[Any, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


async def run_on_disk(owner: Any, fn: Callable[..., T], *args: Any) -> T:
    """As :func:`run_in_thread`, for work on ``owner`` (a pool with a backing
    file, or its device) that may wait for its disk: at most
    DISK_THREADS_PER_POOL such calls of one pool and DISK_THREADS of all run
    at once, apart from the threads every other request needs."""
    global _disk
    if _disk is None:  # made on first use: it belongs to the running loop
        _disk = anyio.CapacityLimiter(DISK_THREADS)
    key = getattr(owner, "pool", owner)
    mine = _per_pool.get(key)
    if mine is None:
        mine = _per_pool[key] = anyio.CapacityLimiter(DISK_THREADS_PER_POOL)
    async with mine:
        return await _run(fn, args, _disk)


def runs_inline(pages: int, fn: Callable[..., Any]) -> bool:
    """Whether :func:`offload` would run ``fn`` on the event loop itself: a
    batch of at most INLINE_PAGES pages of an owner neither busy nor disk-bound.

    A frontend asks before answering a request at once, in the callback that
    received it, with no task or thread in between.
    """
    owner = getattr(fn, "__self__", None)
    return (
        pages <= INLINE_PAGES
        and not getattr(owner, "disk_bound", False)
        and not getattr(owner, "busy", False)
    )


async def offload(pages: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: on the loop for small batches, in a worker thread for large.

    A small batch still goes to a thread when ``fn`` is a method of an object
    that says it is ``busy`` (a pool whose lock is held): a compaction of a large
    pool holds the lock for a second, and waiting for it on the loop stalled
    every connection of every pool meanwhile.  Work on an object that says it
    is ``disk_bound`` (it has a backing file) goes to the disk's threads
    (:func:`run_on_disk`).
    """
    owner = getattr(fn, "__self__", None)
    if getattr(owner, "disk_bound", False):
        return await run_on_disk(owner, fn, *args)
    if runs_inline(pages, fn):
        return fn(*args)
    return await run_in_thread(fn, *args)
