"""Change detection over a live process's pages: what a shadow sees, interval by interval.

Theory of operation.  Each interval the scanner walks the pages swap could take
in each shadowed process (zswapd/procmem.py's rule: private anonymous and shared
anonymous pages present in RAM, the kernel's zero page and, with PFNs readable,
a page met before left out) and compares them with what it saw before.  Per
page it keeps three things: a fingerprint of its bytes (xxh3-64), the time it
last changed (first sight counts as a change) and whether it was declared cold.
From those come the timeline's events (zswapd/timeline.py):

- ``COLD``: unchanged for ``cold_after`` since its last change; carries the
  bytes read at this scan.  Once, until the page changes again.
- ``CHANGED``: a cold page whose fingerprint changed (or, with the idle bitmap,
  that was touched at all); it is hot again.
- ``GONE``: a cold page no longer present (unmapped, the mapping shrank, the
  real kernel swapped it out, or exec replaced the process's memory).  A page
  that was never cold is just forgotten.
- ``EXIT``: the process ended; it is no longer scanned.

Events come in a fixed order: processes in the order given, within one
addresses ascending, ``CHANGED`` and ``COLD`` as met, then its ``GONE``;
the ``EXIT`` of processes that ended come last.  A page shared by several
shadowed processes (same PFN) belongs to the first that maps it.  Forks of a
target are not followed (a child is shadowed only if its pid is given); a fork
shares the target's pages copy-on-write, which read the same, so the target's
figures go on unchanged.

exec keeps the pid and replaces the memory: the descriptors opened at the
start then read nothing, as an ended process's do.  The scanner tells the two
apart by opening the pid again: the same start time (/proc/PID/stat, which
exec keeps and a reused pid cannot have) read after the open means the same
process.  Its every cold page is then ``GONE`` (the old image's memory was
freed, not faulted back: no refault), first among its events, its state
forgotten, and the new image is walked from the new descriptors as a process
met for the first time (its comm is read again).  A process that execs what
it may no longer be read (a set-user-ID program) has ended, for the shadow.

How change is seen (:class:`Detection`, decided once at start by probing the
shadow's own memory):

- ``hash``: every present page is read and fingerprinted at every scan.  This
  sees writes only: a page that is only read keeps its fingerprint and goes on
  looking cold, where real zswap would fault it back in.  Reading a page also
  marks it accessed for the kernel's LRU (remote reads of /proc/PID/mem touch
  what they read), so on a machine with real swap the shadow keeps its targets'
  pages looking used.
- ``soft-dirty`` (CONFIG_MEM_SOFT_DIRTY): right after the walk the scanner
  writes ``4`` to /proc/PID/clear_refs; at the next walk only pages whose
  pagemap bit 55 is set (written since), new pages and pages about to go cold
  are read.  The others are unchanged without being read.  A write that lands
  between reading the pagemap and clearing the bits is seen at the page's next
  write, not this one.  Clearing soft-dirty bits also costs the target a minor
  fault at its next write to each page, and is not compatible with another
  soft-dirty user of the same process (CRIU).
- ``+idle`` (CONFIG_IDLE_PAGE_TRACKING, with PFNs readable): after each scan
  the scanner marks the pages it saw idle in /sys/kernel/mm/page_idle/bitmap;
  a page whose idle bit is clear at the next scan was touched, read or
  written: it is hot, so a page only read is not cold.

What a scan costs: the walk is bounded by the pages present (procmem: the
kernel's PAGEMAP_SCAN answers which, where it has it), the pages are read in
contiguous runs of up to :data:`BUFFER_PAGES` with one ``preadv`` into one
reused buffer, never stopping or ptrace-stopping the target.  A run cut short
(a mapping that vanished between the walk and the read) goes on after the
missing page.  The state kept is :data:`STATE_BYTES_PER_PAGE` bytes a tracked
page, in arrays: no Python object per page.  A scan holds, besides, about as
much again for the pages of its walk.

Measured here (Linux 6.18, 2 cores): a process reserving 16 TiB
(MAP_NORESERVE), three pages of it touched, 1,934 pages tracked in all: a scan
takes 0.02 s with PAGEMAP_SCAN (29 KiB of pagemap read, 120 calls) and 40 s
without (the whole 32 GiB of its pagemap read).  A hostile target's other
lever is the number of mappings: 64,000 (vm.max_map_count is 65,530), half
of them a written page each, cost a walk 0.66 CPU s with PAGEMAP_SCAN
(/proc/PID/maps, and a call per mapping for what smaps's Rss says) and
1.24 s without (0.85 s of it reading /proc/PID/smaps); memory stays per page,
not per mapping.

A scan may be told to stop (``scan(now, should_stop)``, asked between chunks
of the walk and runs of the read), so a shadow asked to end does not wait for
a walk of a huge mapping on a kernel without PAGEMAP_SCAN.  Stopped mid-walk,
a process's state stays as the last scan left it (no event); stopped mid-read,
the pages read are taken into account and the others keep their state (not
GONE, not COLD), so the figures stay those of pages really seen and the next
scan goes on from there.  The processes after the stop are reported as they
were.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import mmap
import os
import struct
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import xxhash

from zswapd.cli_format import printable
from zswapd.closing import Closing
from zswapd.errors import ConfigError
from zswapd.procmem import (
    PFN_MASK,
    SOFT_DIRTY,
    PfnSet,
    ProcessMemory,
    Stopped,
    open_process,
    walk_entries,
)
from zswapd.timeline import Event, EventKind, ProcessScan

__all__ = [
    "BUFFER_PAGES",
    "IDLE_BITMAP",
    "STATE_BYTES_PER_PAGE",
    "Detection",
    "Scanner",
    "probe_detection",
    "probe_idle",
    "probe_soft_dirty",
]

PAGE_SIZE = 4096
# Pages read with one preadv: 1 MiB, the scanner's one read buffer.  Large
# enough that a syscall's cost is spread over 256 pages, small enough that the
# COLD events of one run (their bytes copied out) hold no more than a MiB.
BUFFER_PAGES = 256
IDLE_BITMAP = "/sys/kernel/mm/page_idle/bitmap"
# Per tracked page: address, fingerprint, time of last change (8 bytes each),
# the cold flag (1); with the idle bitmap its PFN too (8 more).
STATE_BYTES_PER_PAGE = 8 + 8 + 8 + 1
_IDLE_BYTES_PER_PAGE = 8
# The most of the idle bitmap read or written at once (a bit per page frame:
# 32 KiB covers a GiB of RAM).
_BITMAP_CHUNK = 1 << 20
_COMM_CHARS = 64


@dataclass(frozen=True, slots=True)
class Detection:
    """How the scanner sees change, from what the kernel offers.

    Attributes:
        soft_dirty: read only the pages written since the last scan.
        idle: a page read (not only written) since the last scan is hot.
        why: what the probe found, for the first line and the README.
    """

    soft_dirty: bool = False
    idle: bool = False
    why: str = ""

    @property
    def name(self) -> str:
        """``hash``, ``soft-dirty``, ``hash+idle`` or ``soft-dirty+idle``."""
        return ("soft-dirty" if self.soft_dirty else "hash") + ("+idle" if self.idle else "")

    @property
    def coldness(self) -> str:
        """What "cold" means under this detection, in words."""
        if self.idle:
            return "read- and write-coldness (a page read or written since the last scan is hot)"
        return (
            "write-coldness only (a page only read still looks cold, "
            "while real zswap would fault it back in)"
        )

    @property
    def bytes_per_page(self) -> int:
        """The state kept per tracked page."""
        return STATE_BYTES_PER_PAGE + (_IDLE_BYTES_PER_PAGE if self.idle else 0)


# -- probes: what this kernel offers, tried on the shadow's own memory ---------


def _own_page() -> tuple[mmap.mmap, int]:
    """A private anonymous page of this process, written once, and its address."""
    page = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    page[0] = 1
    view = (ctypes.c_char * PAGE_SIZE).from_buffer(page)
    address = ctypes.addressof(view)
    del view  # the export would keep the mapping from closing
    return page, address


def _own_entry(address: int) -> int:
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        raw = os.pread(f.fileno(), 8, address // PAGE_SIZE * 8)
    return int(struct.unpack("=Q", raw)[0]) if len(raw) == 8 else 0


def probe_soft_dirty() -> tuple[bool, str]:
    """Whether pagemap's soft-dirty bit works here: clear it, write a page, look.

    Writing ``4`` to clear_refs is accepted even by a kernel built without
    CONFIG_MEM_SOFT_DIRTY, where bit 55 simply never comes back: only a
    write seen is proof.
    """
    page, address = _own_page()
    try:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("4")
        except OSError as exc:
            return False, f"/proc/self/clear_refs: {exc.strerror}"
        cleared = not _own_entry(address) & SOFT_DIRTY
        page[0] = 2
        if cleared and _own_entry(address) & SOFT_DIRTY:
            return True, "soft-dirty bits work"
        return False, "no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY off)"
    finally:
        page.close()


def probe_idle() -> tuple[bool, str]:
    """Whether the idle page bitmap can be used: it exists and PFNs are readable."""
    if not os.path.exists(IDLE_BITMAP):
        return False, "no idle page bitmap (CONFIG_IDLE_PAGE_TRACKING off)"
    page, address = _own_page()
    try:
        pfn = _own_entry(address) & PFN_MASK
        if not pfn:
            return False, "page frame numbers not readable (needs CAP_SYS_ADMIN)"
        try:
            fd = os.open(IDLE_BITMAP, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return False, f"{IDLE_BITMAP}: {exc.strerror}"
        os.close(fd)
        return True, "idle page bitmap works"
    finally:
        page.close()


def probe_detection() -> Detection:
    """The best detection this machine offers (the probes run once, at start)."""
    soft_dirty, why_sd = probe_soft_dirty()
    idle, why_idle = probe_idle()
    return Detection(soft_dirty, idle, f"{why_sd}; {why_idle}")


# -- the per-process state -----------------------------------------------------


class _Target:
    """One shadowed process: its descriptors and the state of its pages, in
    parallel arrays sorted by address."""

    __slots__ = (
        "addrs",
        "clear_refs",
        "clear_refs_base",
        "cold",
        "comm",
        "execs",
        "exited",
        "fps",
        "memory",
        "pfns",
        "pid",
        "since",
        "start_time",
    )

    def __init__(
        self, memory: ProcessMemory, comm: str, clear_refs: int, start_time: int | None
    ) -> None:
        self.pid = memory.pid
        self.memory = memory
        self.comm = comm
        self.clear_refs = clear_refs
        self.clear_refs_base = memory.base
        self.start_time = start_time
        self.execs = 0
        self.exited = False
        self.addrs = array("Q")
        self.fps = array("Q")
        self.since = array("d")
        self.cold = bytearray()
        self.pfns = array("Q")

    def alive(self) -> bool:
        """Whether the memory opened at the start is still there.

        An ended process's (a zombie's too) and one replaced by exec read
        nothing through the descriptors opened before: the kernel answers 0
        bytes where a live one answers the (empty) entry of address 0.
        """
        return _readable(self.memory)

    def forget(self) -> None:
        """Drop every page's state (the process ended, or exec replaced its memory)."""
        self.addrs, self.fps, self.since, self.cold, self.pfns = (
            array("Q"),
            array("Q"),
            array("d"),
            bytearray(),
            array("Q"),
        )

    def after_exec(self) -> ProcessMemory | None:
        """The new memory of this process if exec replaced it; None if it ended.

        The same pid with the same start time (/proc/PID/stat's, which exec
        keeps) read after the open is the same process: a pid is reused
        only once its process is gone, and its successor starts later.
        """
        if self.start_time is None:
            return None
        try:
            memory = open_process(self.pid, pagemap_scan=self.memory.pagemap_scan)
        except ConfigError:
            return None  # gone, or what it exec'd may not be read (set-user-ID)
        try:
            if _start_time(self.pid) == self.start_time and _readable(memory):
                self.comm = _comm(self.pid)
                return memory
        except ConfigError:
            pass
        memory.close()
        return None

    def follow_clear_refs(self) -> None:
        """Reopen clear_refs through the thread the walk now reads: the one
        opened through an ended thread (the main one, say) clears nothing,
        as the kernel finds no memory behind it.  If it cannot be reopened,
        this process's pages are told apart by their hashes instead."""
        if self.clear_refs < 0 or self.clear_refs_base == self.memory.base:
            return
        with contextlib.suppress(OSError):
            os.close(self.clear_refs)
        self.clear_refs_base = self.memory.base
        try:
            self.clear_refs = os.open(f"{self.memory.base}/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self.clear_refs = -1

    def close(self) -> None:
        self.memory.close()
        if self.clear_refs >= 0:
            with contextlib.suppress(OSError):
                os.close(self.clear_refs)
            self.clear_refs = -1


def _readable(memory: ProcessMemory) -> bool:
    if memory.pagemap_fd < 0:
        return False
    try:
        return len(os.pread(memory.pagemap_fd, 8, 0)) == 8
    except OSError:
        return False


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, /proc/PID/stat's 22nd
    field); None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        # The name, in parentheses, may hold anything: fields follow the last ')'.
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _comm(pid: int) -> str:
    """The process's name, its control characters escaped: a process names itself
    (prctl), and a name the daemon refuses in a report must not stop the shadow."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            raw = f.read(_COMM_CHARS).decode(errors="replace").removesuffix("\n")
    except OSError:
        raise ConfigError(f"--pid {pid}: no such process") from None
    return printable(raw)[:_COMM_CHARS]


def _open_target(pid: int, detection: Detection, pagemap_scan: bool | None) -> _Target:
    memory = open_process(pid, pagemap_scan=pagemap_scan)
    try:
        comm = _comm(pid)
        clear_refs = -1
        if detection.soft_dirty:
            try:
                clear_refs = os.open(f"{memory.base}/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise ConfigError(
                    f"--pid {pid}: cannot clear its soft-dirty bits: {exc.strerror}"
                ) from None
        target = _Target(memory, comm, clear_refs, _start_time(pid))
        if not target.alive():
            raise ConfigError(f"--pid {pid}: has ended")
        return target
    except BaseException:
        memory.close()
        raise


# -- the idle bitmap -----------------------------------------------------------


def _idle_words(fd: int, pfns: Sequence[int]) -> tuple[int, bytes]:
    """The bitmap's 64-bit words covering ``pfns``: (first word, their bytes)."""
    live = [p for p in pfns if p]
    if not live:
        return 0, b""
    lo, hi = min(live) >> 6, max(live) >> 6
    out = bytearray()
    for word in range(lo, hi + 1, _BITMAP_CHUNK // 8):
        want = min(_BITMAP_CHUNK, (hi + 1 - word) * 8)
        try:
            got = os.pread(fd, want, word * 8)
        except OSError:
            got = b""
        out += got.ljust(want, b"\0")  # a frame the bitmap does not cover: not idle
    return lo, bytes(out)


def _idle(words: tuple[int, bytes], pfn: int) -> bool:
    lo, bits = words
    byte = (pfn >> 3) - lo * 8
    return pfn != 0 and 0 <= byte < len(bits) and bool(bits[byte] >> (pfn & 7) & 1)


def _mark_idle(fd: int, pfns: Sequence[int]) -> None:
    """Set the idle bit of each of ``pfns`` (only the bits written as 1 act)."""
    live = [p for p in pfns if p]
    if not live:
        return
    lo = min(live) >> 6
    bits = bytearray(((max(live) >> 6) - lo + 1) * 8)
    for pfn in live:
        bits[(pfn >> 3) - lo * 8] |= 1 << (pfn & 7)
    for off in range(0, len(bits), _BITMAP_CHUNK):
        with contextlib.suppress(OSError):  # a frame freed meanwhile: nothing to mark
            os.pwrite(fd, bits[off : off + _BITMAP_CHUNK], lo * 8 + off)


# -- the scanner ---------------------------------------------------------------


class Scanner(Closing):
    """Change detection over the pages of a set of processes.

    Args:
        pids: the processes, in the order their events come.
        cold_after: seconds a page must stay unchanged to be declared cold.
        detection: how change is seen (default: :func:`probe_detection`).
        pagemap_scan: find present pages with PAGEMAP_SCAN where the kernel
            has it (False: read the whole pagemap, as on a kernel without it;
            None: as procmem's ``ZSWAPD_PAGEMAP_SCAN`` says).

    Raises:
        ConfigError: a pid that does not exist or may not be read (one line,
            naming it); nothing stays open.
    """

    def __init__(
        self,
        pids: Sequence[int],
        cold_after: float,
        detection: Detection | None = None,
        *,
        pagemap_scan: bool | None = None,
    ) -> None:
        if cold_after < 0:
            raise ConfigError(f"cold_after must be 0 or more seconds, not {cold_after}")
        self.cold_after = cold_after
        self.detection = probe_detection() if detection is None else detection
        self._targets: list[_Target] = []
        self._idle_fd = -1
        try:
            for pid in dict.fromkeys(pids):
                self._targets.append(_open_target(pid, self.detection, pagemap_scan))
            if self.detection.idle:
                self._idle_fd = os.open(IDLE_BITMAP, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise
        self._buffer = bytearray(BUFFER_PAGES * PAGE_SIZE)
        self._view = memoryview(self._buffer)
        self.scans: tuple[ProcessScan, ...] = ()
        self.stopped = False

    def close(self) -> None:
        for target in self._targets:
            target.close()
        if self._idle_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._idle_fd)
            self._idle_fd = -1

    # -- what callers ask ------------------------------------------------------

    @property
    def processes(self) -> list[tuple[int, str]]:
        """(pid, comm) of every process given, in order."""
        return [(t.pid, t.comm) for t in self._targets]

    @property
    def alive(self) -> bool:
        """Whether any process is still followed."""
        return any(not t.exited for t in self._targets)

    def execs(self, pid: int) -> int:
        """How many times ``pid`` has exec'd while followed."""
        return next((t.execs for t in self._targets if t.pid == pid), 0)

    def tracked_pages(self, pid: int) -> int:
        return next((len(t.addrs) for t in self._targets if t.pid == pid), 0)

    def memory(self, pid: int) -> ProcessMemory | None:
        """The opened memory of ``pid`` (its walk counters: ``pagemap_bytes``,
        ``scan_calls``, ``pagemap_scan``); None for a pid not given."""
        return next((t.memory for t in self._targets if t.pid == pid), None)

    def is_cold(self, pid: int, address: int) -> bool:
        """Whether the page at ``address`` of ``pid`` is declared cold now."""
        for t in self._targets:
            if t.pid == pid:
                i = _find(t.addrs, address)
                return i >= 0 and bool(t.cold[i])
        return False

    def read_page(self, pid: int, address: int) -> bytes | None:
        """A page's bytes now (a waiting page's retry); None if it is gone."""
        for t in self._targets:
            if t.pid == pid and not t.exited:
                return t.memory.read_page(address)
        return None

    # -- the scan ----------------------------------------------------------------

    def scan(self, now: float, should_stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        """One interval's scan of every process still followed: its events, in order.

        Consume it whole; then :attr:`scans` holds what it saw of each process
        and :attr:`stopped` whether ``should_stop`` cut it short.

        Args:
            now: the scan's time (seconds, on the clock ``cold_after`` is counted in).
            should_stop: asked between chunks of the walk and runs of the read;
                once True, the scan ends there.  What it had not reached stays
                as the last scan saw it (no event, figures unchanged), so the
                figures stay those of pages really seen; a page it had read is
                taken into account.
        """
        seen = PfnSet()
        scans: list[ProcessScan] = []
        ended: list[_Target] = []
        self.stopped = False
        for target in self._targets:
            if target.exited:
                continue
            got: list[ProcessScan] = []
            if self.stopped:
                # Not reached: as it was.
                got.append(ProcessScan(target.pid, target.comm, len(target.addrs), 0, 0.0))
            else:
                yield from self._scan_target(target, now, seen, got, should_stop)
            scans.extend(got)
            if target.exited:
                ended.append(target)
        for target in ended:
            yield Event(EventKind.EXIT, target.pid)
        self.scans = tuple(scans)

    def _scan_target(
        self,
        t: _Target,
        now: float,
        seen: PfnSet,
        out: list[ProcessScan],
        should_stop: Callable[[], bool] | None,
    ) -> Iterator[Event]:
        """Scan one process; its ProcessScan goes to ``out``.

        The CPU clock runs only while this generator does: the time its
        consumer spends on the events (the pool's) is not the scan's.
        """
        clock = time.process_time()
        cost = 0.0
        read = 0

        def ended() -> None:
            """It ended before or during the scan: EXIT frees all it had."""
            t.exited = True
            t.memory.close()
            t.forget()
            spent = cost + time.process_time() - clock
            out.append(ProcessScan(t.pid, t.comm, 0, read, spent, exited=True))

        def execed(cold: Sequence[int]) -> list[Event] | None:
            """If exec replaced its memory: a GONE for each of ``cold`` (the
            addresses its consumer holds as cold), the state forgotten and the
            new image's memory opened; None if it ended instead."""
            memory = t.after_exec()
            if memory is None:
                return None
            t.memory.close()
            t.memory = memory
            t.execs += 1
            t.forget()
            return [Event(EventKind.GONE, t.pid, a) for a in cold]

        if not t.alive():
            gone = execed(_cold_addresses(t.addrs, t.cold))
            if gone is None:
                ended()
                return
            # Freed first: the new image may map a page where a freed one was.
            cost += time.process_time() - clock
            yield from gone
            clock = time.process_time()
        # The walk: addresses and pagemap entries, from the page tables alone.
        walked = array("Q")
        entries = array("Q")
        try:
            for _, address, entry in walk_entries(t.memory, seen, should_stop=should_stop):
                walked.append(address)
                entries.append(entry)
        except Stopped:
            # Mid-walk: nothing of this walk is known whole; the state stays.
            self.stopped = True
            spent = time.process_time() - clock
            out.append(ProcessScan(t.pid, t.comm, len(t.addrs), 0, spent))
            return
        except OSError:
            if t.alive():
                raise
            gone = execed(_cold_addresses(t.addrs, t.cold))
            if gone is None:
                ended()
                return
            # exec mid-walk: the new image is walked at the next scan.
            spent = cost + time.process_time() - clock
            out.append(ProcessScan(t.pid, t.comm, 0, read, spent))
            yield from gone
            return
        n = len(walked)
        old_addrs, old_fps, old_since, old_cold = t.addrs, t.fps, t.since, t.cold
        # Each walked page's index in the old state (-1: new), and which old
        # pages are still there (the rest are gone).
        where = array("q", bytes(8 * n))
        matched = bytearray(len(old_addrs))
        j = 0
        for i in range(n):
            a = walked[i]
            while j < len(old_addrs) and old_addrs[j] < a:
                j += 1
            if j < len(old_addrs) and old_addrs[j] == a:
                where[i] = j
                matched[j] = 1
                j += 1
            else:
                where[i] = -1
        pfns = array("Q", (e & PFN_MASK for e in entries)) if self.detection.idle else array("Q")
        touched = bytearray(n)
        if self.detection.idle and self._idle_fd >= 0:
            words = _idle_words(self._idle_fd, pfns)
            for i in range(n):
                touched[i] = where[i] >= 0 and not _idle(words, pfns[i])
        if self.detection.soft_dirty:
            t.follow_clear_refs()
        soft_dirty = self.detection.soft_dirty and t.clear_refs >= 0
        if soft_dirty:
            # Right after the walk: a write from now on sets the bit again.
            with contextlib.suppress(OSError):
                os.write(t.clear_refs, b"4")
        cold_after = self.cold_after

        def need(i: int) -> bool:
            w = where[i]
            if not soft_dirty or w < 0 or touched[i] or entries[i] & SOFT_DIRTY:
                return True
            return not old_cold[w] and now - old_since[w] >= cold_after

        new_addrs = array("Q")
        new_fps = array("Q")
        new_since = array("d")
        new_cold = bytearray()
        new_pfns = array("Q")
        pid = t.pid
        events: list[Event] = []
        # Bound once: this runs for every page of every scan.
        keep_addr, keep_fp, keep_since, keep_cold = (
            new_addrs.append,
            new_fps.append,
            new_since.append,
            new_cold.append,
        )
        emit = events.append

        def page(i: int, fp: int, data: memoryview | None) -> None:
            """Page ``i`` seen with fingerprint ``fp`` (``data``: its bytes, if read)."""
            w = where[i]
            if w < 0:
                since, cold = now, 0
            elif fp != old_fps[w] or touched[i]:
                if old_cold[w]:
                    emit(Event(EventKind.CHANGED, pid, walked[i]))
                since, cold = now, 0
            else:
                since, cold = old_since[w], old_cold[w]
            if not cold and now - since >= cold_after and data is not None:
                emit(Event(EventKind.COLD, pid, walked[i], bytes(data)))
                cold = 1
            keep_addr(walked[i])
            keep_fp(fp)
            keep_since(since)
            keep_cold(cold)
            if pfns:
                new_pfns.append(pfns[i])

        view = self._view
        fd = t.memory.mem_fd
        fingerprint = xxhash.xxh3_64_intdigest
        i = 0
        while i < n:
            if soft_dirty and not need(i):
                page(i, old_fps[where[i]], None)
                i += 1
                continue
            if should_stop is not None and should_stop():
                self.stopped = True
                break
            # A run: needed pages at consecutive addresses, at most a buffer's worth.
            end = i + 1
            last = min(n, i + BUFFER_PAGES)
            while (
                end < last
                and walked[end] == walked[end - 1] + PAGE_SIZE
                and (not soft_dirty or need(end))
            ):
                end += 1
            while i < end:
                try:
                    got = os.preadv(fd, [view[: (end - i) * PAGE_SIZE]], walked[i]) // PAGE_SIZE
                except OSError:
                    got = 0
                read += got * PAGE_SIZE
                for k in range(got):
                    data = view[k * PAGE_SIZE : (k + 1) * PAGE_SIZE]
                    page(i + k, fingerprint(data), data)
                i += got
                if i < end:
                    # Gone between the walk and the read: not present (a cold
                    # one becomes GONE below); the run goes on after it.
                    if where[i] >= 0:
                        matched[where[i]] = 0
                    i += 1
            if events:
                cost += time.process_time() - clock
                yield from events
                events.clear()
                clock = time.process_time()
        if not t.alive():
            # exec mid-read: cold are the pages this scan kept cold or
            # declared so, and those of the old state it did not reach.
            kept = set(new_addrs)
            held = sorted(
                {a for a, c in zip(new_addrs, new_cold, strict=True) if c}
                | {a for a, c in zip(old_addrs, old_cold, strict=True) if c and a not in kept}
            )
            gone = execed(held)
            if gone is None:
                ended()
                return
            cost += time.process_time() - clock
            out.append(ProcessScan(pid, t.comm, 0, read, cost))
            yield from gone
            return
        # Stopped midway: the pages not read yet keep the state they had (a
        # new one is left for the next scan to meet), still matched, so not GONE.
        # But what the kernel said of them is spent (soft-dirty bits cleared
        # above, idle bits set again below): one it saw written or touched has
        # changed, now, as the read would have found.
        for k in range(i, n):
            w = where[k]
            if w < 0:
                continue
            since, cold = old_since[w], old_cold[w]
            if touched[k] or (soft_dirty and entries[k] & SOFT_DIRTY):
                if cold:
                    events.append(Event(EventKind.CHANGED, pid, walked[k]))
                since, cold = now, 0
            keep_addr(walked[k])
            keep_fp(old_fps[w])
            keep_since(since)
            keep_cold(cold)
            if pfns:
                new_pfns.append(pfns[k])
        for k in range(len(old_addrs)):
            if old_cold[k] and not matched[k]:
                events.append(Event(EventKind.GONE, pid, old_addrs[k]))
        t.addrs, t.fps, t.since, t.cold, t.pfns = new_addrs, new_fps, new_since, new_cold, new_pfns
        if self.detection.idle and self._idle_fd >= 0:
            # After the reads: reading a page marks it accessed.
            _mark_idle(self._idle_fd, new_pfns)
        cost += time.process_time() - clock
        out.append(ProcessScan(pid, t.comm, len(new_addrs), read, cost))
        yield from events


def _cold_addresses(addrs: array[int], cold: bytearray) -> list[int]:
    return [a for a, c in zip(addrs, cold, strict=True) if c]


def _find(addrs: array[int], address: int) -> int:
    """The index of ``address`` in the sorted ``addrs``; -1 if absent."""
    i = bisect.bisect_left(addrs, address)
    return i if i < len(addrs) and addrs[i] == address else -1
