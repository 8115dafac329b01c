"""What a shadow sees of a live process, interval by interval: the timeline.

A shadow (``zswapd shadow``) scans a process every interval and reduces what it
saw to a few events per page, the ones swap reacts to:

- ``COLD``: the page has not changed for ``--cold-after``; reclaim would now
  take it.  Carries the page's bytes (live) or a reference to them (replay).
- ``CHANGED``: a page that had gone cold was written again.  If swap held it,
  that is a refault: the kernel brings it back (a load) before the write lands.
- ``GONE``: the page left the process (unmapped, or the mapping shrank).
- ``EXIT``: the process ended; every page it had is gone.

The events say what happened to the *process*, never what the pool did about it:
whether a cold page fits, waits for room, or goes to a backing file is the
pool's business (zswapd/swapsim.py).  That is what lets one recorded timeline be
played again into a pool of any compressor, allocator or limit.

A tick is one interval: its time, its events in the order the scan found them,
and what the scan saw of each process (resident pages, its own cost).  The same
tick goes to the pool (live), to the record file (``--record``), and comes back
from it (``zswapd replay``), so the pool is driven by the very same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Event", "EventKind", "ProcessScan", "TickEnd"]


class EventKind(IntEnum):
    """What happened to one page (the values are the record file's)."""

    COLD = 1
    CHANGED = 2
    GONE = 3
    EXIT = 4


@dataclass(frozen=True, slots=True)
class Event:
    """One page's event.

    Attributes:
        kind: what happened.
        pid: the process it happened in.
        address: the page's virtual address (0 for ``EXIT``).
        data: ``COLD`` only: the page's 4096 bytes when the shadow has them;
            None when they are fetched later through ``ref``.
        ref: ``COLD`` only: where the bytes can be had again (the record's
            content id); -1 for none.
    """

    kind: EventKind
    pid: int
    address: int = 0
    data: bytes | None = None
    ref: int = -1


@dataclass(frozen=True, slots=True)
class ProcessScan:
    """What one interval's scan saw of one process.

    Attributes:
        pid, comm: the process (comm as /proc/PID/comm says, at most 64 chars).
        resident_pages: pages swap could take, present in RAM, at this scan.
        scanned_bytes: bytes the scan read or hashed (its work).
        scan_seconds: CPU seconds the scan spent on this process.
        exited: the process ended during or before this scan.
    """

    pid: int
    comm: str
    resident_pages: int
    scanned_bytes: int
    scan_seconds: float
    exited: bool = False


@dataclass(frozen=True, slots=True)
class TickEnd:
    """The close of one interval: when, and what the scan saw.

    Attributes:
        t: seconds since the shadow's first scan began.
        scans: one per shadowed process still followed at this interval.
    """

    t: float
    scans: tuple[ProcessScan, ...]
