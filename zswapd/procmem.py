"""The pages swap would see in a live process, read through /proc.

The rule (the one ../shared/corpus was dumped with): every readable private
mapping and every anonymous shared one (``/dev/zero (deleted)``, ``/SYSV*``,
``/memfd:*``, ``/dev/shm/*``), but not ``[vvar]``, ``[vdso]``, ``[vsyscall]``;
of those, only pages present in RAM (``/proc/PID/pagemap`` bit 63), not the
kernel's shared zero page (``/proc/kpageflags`` KPF_ZERO_PAGE), and in private
mappings only anonymous pages (KPF_ANON: a clean file page would be dropped, not
swapped); a page mapped several times is taken once (by PFN).

PFNs and page flags need CAP_SYS_ADMIN (root).  Without them the zero-page,
anonymity and sharing tests cannot be made; every present page of the chosen
mappings is then taken, and ``ProcessPages.exact`` says so.  The flags are
read for a batch of pages at once (:func:`page_flags`), a run of consecutive
frames per pread: measured here on a process with 1 GiB resident (263,885
pages), the flags cost 0.06 CPU s where its memory is in huge pages (runs of
512; 0.22 s a pread per page) and as much as before, 0.22 s, where its frames
are scattered (about four pages a run); the walk as a whole, 0.40 and 0.58 s
where it was 0.58 and 0.62.

What a walk costs is bounded by the pages present, not by the size of the
mappings: a process may reserve 64 TiB (MAP_NORESERVE) for free, and whoever
walks it (root, often) must not pay for that.  Mappings with nothing resident
(smaps's ``Rss: 0``: no present page but the kernel's zero page) are skipped
without reading their pagemap, found by PAGEMAP_SCAN from /proc/PID/maps
where the kernel has it, else from /proc/PID/smaps; of the others, the
kernel is asked which pages are present (zswapd/pagemap_scan.py's
PAGEMAP_SCAN, Linux 6.7+) and only those pages' entries are read, so a
mapping of 64 TiB with three pages touched costs three entries.  A kernel
without that ioctl has the whole pagemap of each such mapping read, in chunks
of :data:`PAGEMAP_CHUNK` entries into one buffer, so memory stays at half a
MiB whatever the mappings; time then grows with the size of a mapping that
has anything resident: its pagemap is 2 MiB per GiB mapped, about 2 s per TiB
here.  Either way a walk may be told to stop (``should_stop``, asked between
chunks, calls and mappings): it then raises :class:`Stopped`.

A walk yields addresses strictly ascending, whatever the process does to its
mappings meanwhile (maps or smaps is read as the walk goes, and a mapping
made or moved behind the walk could otherwise come round again).

A process is opened once (:func:`open_process`): /proc/PID/mem and
/proc/PID/pagemap are opened by its pid at that moment, and every later read
goes through those descriptors, so a pid reused meanwhile cannot swap in
another process.  (/proc/PID/maps or smaps is read by path at each walk: if the
process has ended and its pid been reused, those are another's mappings, but
the old descriptors then read nothing, as the process's memory is gone.)
The kernel checks the right to read a process at open (ptrace's read mode),
so a reused pid never gives more than the caller had.

A process whose main thread has ended (pthread_exit) while others run on
keeps its memory, but its leader, /proc/PID, is a zombie: its maps read empty
and its mem and pagemap refuse to open (ESRCH).  The memory is the thread
group's, so it is read through a live thread, /proc/PID/task/TID
(``ProcessMemory.base``); each walk checks that thread is still live and picks
another if not.  Descriptors opened through any of its threads read the same
memory for as long as any thread keeps it.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import re
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat

from zswapd.closing import Closing
from zswapd.errors import ConfigError
from zswapd.pagemap_scan import Unsupported, any_resident, present_ranges
from zswapd.ptrace_access import exists, refusal, task_state
from zswapd.ptrace_access import hidden as hidden_by_proc

__all__ = [
    "KPAGEFLAGS_CHUNK",
    "PAGEMAP_CHUNK",
    "PFN_MASK",
    "SOFT_DIRTY",
    "Mapping",
    "PageRecord",
    "PfnSet",
    "ProcessMemory",
    "ProcessPages",
    "Skipped",
    "Stopped",
    "live_task",
    "open_process",
    "page_flags",
    "read_maps",
    "resident_mappings",
    "swappable_pages",
    "walk_entries",
    "walk_pages",
]

PAGE_SIZE = 4096
_PRESENT = 1 << 63
# A pagemap entry's soft-dirty bit: written since the last ``echo 4 > clear_refs``
# (CONFIG_MEM_SOFT_DIRTY kernels only; always clear elsewhere).
SOFT_DIRTY = 1 << 55
PFN_MASK = (1 << 55) - 1
_KPF_ANON = 1 << 12
_KPF_ZERO_PAGE = 1 << 24
# /proc/kpageflags words read at once: 64 KiB, frames 32 MiB of RAM apart at
# most in one read.
KPAGEFLAGS_CHUNK = 1 << 13
# Frames this far apart (or nearer) share a read: 16 words (128 bytes) nobody
# asked for cost less to copy than another pread.
_KPAGEFLAGS_GAP = 16
# Pages of a mapping walked before their flags are read, as a batch: enough to
# find runs among their frames, few enough that the walk still streams.
_WALK_BATCH = 1 << 12
_SKIP = ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]")
_SHARED_ANON = ("/dev/zero (deleted)", "/SYSV", "/memfd:", "/dev/shm/")
# Pagemap entries read at a time: 512 KiB, the most a walk holds, and large
# enough that a TiB of holes costs 4096 reads, not millions.
PAGEMAP_CHUNK = 1 << 16
# Mappings up to this size have their pagemap read whole (4 KiB of entries at
# most, one pread): for them the ioctl's own cost is more than it saves.
_SCAN_FROM_BYTES = 512 * PAGE_SIZE
# An entry is a native u64; its top byte carries bit 63 (present), so a
# chunk's present entries are found by a regex over its top bytes, in C
# (holes are not all zero: a hole's entry may carry soft-dirty, bit 55).
_TOP_BYTE = 7 if sys.byteorder == "little" else 0
_PRESENT_TOP = re.compile(rb"[\x80-\xff]")


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    path: str

    @property
    def private(self) -> bool:
        return self.perms[3] == "p"

    @property
    def wanted(self) -> bool:
        """Would swap see pages of this mapping?"""
        if self.perms[0] != "r" or self.path in _SKIP:
            return False
        return self.private or self.path.startswith(_SHARED_ANON)


@dataclass(frozen=True, slots=True)
class PageRecord:
    """A page taken from a process: where it came from, and its bytes."""

    address: int
    path: str
    data: bytes


def _mapping(line: str) -> Mapping:
    parts = line.split(maxsplit=5)
    lo, hi = (int(x, 16) for x in parts[0].split("-"))
    return Mapping(lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else "")


def _live(base: str) -> bool:
    # Z: ended, not reaped (a leader stays so while its threads run); X: dead.
    return task_state(base) not in (None, "Z", "X")


def live_task(pid: int) -> str | None:
    """The /proc directory through which ``pid``'s memory can be read: /proc/PID
    while its main thread lives, else a live thread's /proc/PID/task/TID; None
    if no thread of it is left (ended, or a zombie)."""
    base = f"/proc/{pid}"
    if _live(base):
        return base
    try:
        tids = os.listdir(f"{base}/task")
    except OSError:
        return None
    for tid in tids:
        if tid != str(pid) and _live(task := f"{base}/task/{tid}"):
            return task
    return None


def read_maps(pid: int) -> list[Mapping]:
    """The mappings of ``pid``."""
    with open(f"/proc/{pid}/maps") as f:
        return [_mapping(line) for line in f]


def resident_mappings(pid: int) -> Iterator[Mapping]:
    """The mappings of ``pid`` with anything resident (smaps's ``Rss``).

    smaps counts no page of the kernel's shared zero page in Rss, so a mapping
    only read from is skipped too: the rule leaves those pages out anyway.
    """
    return _resident_in(f"/proc/{pid}/smaps")


def _resident_in(smaps: str) -> Iterator[Mapping]:
    current: Mapping | None = None
    with open(smaps) as f:
        for line in f:
            key, _, rest = line.partition(" ")
            if not key.endswith(":"):
                current = _mapping(line)  # a header: the line maps has
            elif key == "Rss:" and current is not None:
                if int(rest.split()[0]):
                    yield current
                current = None


def _resident(process: ProcessMemory) -> Iterator[Mapping]:
    """The mappings of ``process`` with anything resident, as
    :func:`resident_mappings` gives them, read the cheapest way this kernel has.

    With PAGEMAP_SCAN, /proc/PID/maps and one call per mapping
    (:func:`any_resident`) say what smaps's ``Rss`` does, and smaps costs
    its every other figure besides (PSS, swap, locked, ...): measured here on
    64,000 mappings (32,000 one-page ones written, between PROT_NONE ones), a
    walk takes 0.66 CPU s this way and 1.24 s from smaps, 0.85 s of which is
    reading smaps.  Without the ioctl, smaps it is: the alternative would be
    reading the whole pagemap of every mapping, a 64 TiB reservation's
    included.
    """
    base = process.walk_base()
    if process.pagemap_scan:
        with open(f"{base}/maps") as f:
            first = True
            for line in f:
                m = _mapping(line)
                if not m.wanted:
                    continue
                try:
                    found = any_resident(process.pagemap_fd, m.start, m.end)
                except Unsupported:
                    if not first:
                        raise
                    process.pagemap_scan = False  # only ever the first call
                    break
                first = False
                if found:
                    yield m
            else:
                return
    yield from _resident_in(f"{base}/smaps")


class PfnSet:
    """Page frames seen: one bit each, grown to the highest PFN met.

    A bitmap, not a set: one bit per page frame of the machine (768 KiB for
    24 GiB of RAM), whatever the size of the processes walked.
    """

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, pfn: int) -> bool:
        """Mark ``pfn``; False if it was marked already."""
        byte, bit = pfn >> 3, 1 << (pfn & 7)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits) + len(self._bits) // 2))
        if self._bits[byte] & bit:
            return False
        self._bits[byte] |= bit
        return True


@dataclass
class Skipped:
    """What a walk left out, and whether the whole rule could apply.

    Attributes:
        exact: PFNs and page flags were readable, so the whole rule applied.
        zero, file, shared_dup: present pages left out (the kernel's zero page,
            clean file pages of private mappings, pages met before by PFN).
    """

    exact: bool = False
    zero: int = 0
    file: int = 0
    shared_dup: int = 0


class Stopped(Exception):
    """A walk's ``should_stop`` said so: the pages it gave are not all."""


class ProcessMemory(Closing):
    """A process opened once: its /proc/PID/mem and /proc/PID/pagemap.

    Made by :func:`open_process`; close it (or use ``with``) when done.

    Attributes:
        pagemap_scan: ask the kernel for present pages (PAGEMAP_SCAN); turned
            off at the first call a kernel without it refuses.
        pagemap_bytes: bytes of pagemap read so far, by every walk (the work
            the ioctl saves).
        scan_calls: PAGEMAP_SCAN calls made so far.
        base: the /proc directory its maps are read from: /proc/PID, or a live
            thread's /proc/PID/task/TID once its main thread has ended.
    """

    def __init__(
        self,
        pid: int,
        mem_fd: int,
        pagemap_fd: int,
        pagemap_scan: bool = True,
        base: str | None = None,
    ) -> None:
        self.pid = pid
        self.base = f"/proc/{pid}" if base is None else base
        self.mem_fd = mem_fd
        self.pagemap_fd = pagemap_fd
        self.pagemap_scan = pagemap_scan
        self.pagemap_bytes = 0
        self.scan_calls = 0

    def read_page(self, address: int) -> bytes | None:
        """The page at ``address``; None if it is gone (unmapped, the process ended)."""
        try:
            data = os.pread(self.mem_fd, PAGE_SIZE, address)
        except OSError:
            return None
        return data if len(data) == PAGE_SIZE else None

    def walk_base(self) -> str:
        """:attr:`base` if its thread still lives, else another live thread's
        (the one before ended, or the main thread did).

        Raises:
            ProcessLookupError: no thread of the process is left.
        """
        if not _live(self.base):
            base = live_task(self.pid)
            if base is None:
                raise ProcessLookupError(errno.ESRCH, f"{self.base}: no live thread left")
            self.base = base
        return self.base

    def close(self) -> None:
        fds = (self.mem_fd, self.pagemap_fd)
        self.mem_fd = self.pagemap_fd = -1
        for fd in fds:
            if fd >= 0:
                # One that fails to close must not keep the other open.
                with contextlib.suppress(OSError):
                    os.close(fd)


def open_process(pid: int, *, pagemap_scan: bool | None = None) -> ProcessMemory:
    """Open ``pid``'s memory, or say in one line why it cannot be read.

    The one check of a ``--pid`` (push and estimate): it fails before any page
    is read or stored.  ``pagemap_scan=False`` reads the pagemap whole, as on a
    kernel without PAGEMAP_SCAN (tests of that path); None leaves it to the
    environment: ``ZSWAPD_PAGEMAP_SCAN=0`` does the same for a whole command.

    A process whose main thread has ended while others run is opened through
    a live thread (see the module's docstring).

    Raises:
        ConfigError: no such process, a zombie, a kernel thread (no user
            memory), or no right to read it.
    """
    base = f"/proc/{pid}"
    try:
        try:
            fds = _open_fds(base)
        except ProcessLookupError:
            # No mm: a kernel thread, or a zombie leader whose threads may
            # still hold the process's memory.
            if task_state(base) != "Z":
                raise
            task = live_task(pid)
            if task is None:
                raise
            base = task
            fds = _open_fds(base)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            if exists(pid) and (hidden := hidden_by_proc(pid)):
                raise ConfigError(f"--pid {pid}: cannot read its memory: {hidden}") from None
            raise ConfigError(f"--pid {pid}: no such process") from None
        if isinstance(exc, ProcessLookupError):  # /proc/PID is there, its mm is not
            if task_state(f"/proc/{pid}") == "Z":
                raise ConfigError(
                    f"--pid {pid}: has ended (a zombie, not yet reaped by its parent)"
                ) from None
            raise ConfigError(f"--pid {pid}: has no user memory (a kernel thread?)") from None
        if isinstance(exc, PermissionError):
            raise ConfigError(
                f"--pid {pid}: cannot read its memory: {exc.strerror}: {refusal(pid)}"
            ) from None
        raise ConfigError(f"--pid {pid}: cannot read its memory: {exc.strerror}") from None
    if pagemap_scan is None:
        pagemap_scan = os.environ.get("ZSWAPD_PAGEMAP_SCAN", "1") != "0"
    return ProcessMemory(pid, fds[0], fds[1], pagemap_scan, base)


def _open_fds(base: str) -> tuple[int, int]:
    """``base``'s mem and pagemap, opened; both or neither."""
    fds: list[int] = []
    try:
        for name in ("mem", "pagemap"):
            fds.append(os.open(f"{base}/{name}", os.O_RDONLY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1]


def _entries(
    process: ProcessMemory,
    start: int,
    end: int,
    buf: bytearray,
    should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[int, int]]:
    """(address, pagemap entry) of each present page in [start, end), read a
    chunk of ``buf`` (a multiple of 8 bytes) at a time."""
    entries = memoryview(buf).cast("Q")
    chunk = len(entries)
    last = end // PAGE_SIZE
    for lo in range(start // PAGE_SIZE, last, chunk):
        if should_stop is not None and should_stop():
            raise Stopped
        want = min(chunk, last - lo)
        got = os.preadv(process.pagemap_fd, [entries[:want]], lo * 8) // 8
        process.pagemap_bytes += got * 8
        tops = buf[_TOP_BYTE : 8 * got : 8]  # one byte an entry, bit 7 = present
        for hit in _PRESENT_TOP.finditer(tops):
            i = hit.start()
            yield (lo + i) * PAGE_SIZE, entries[i]
        if got < want:
            return  # the process ended, or the mapping shrank


def _present(
    process: ProcessMemory, start: int, end: int, should_stop: Callable[[], bool] | None
) -> Iterator[tuple[int, int]]:
    """(address, pagemap entry) of each present page in [start, end), one mapping's."""
    # No larger than the mapping: a small one (most are) costs no half-MiB buffer.
    buf = bytearray(8 * min(PAGEMAP_CHUNK, (end - start) // PAGE_SIZE))
    if process.pagemap_scan and end - start > _SCAN_FROM_BYTES:
        try:
            for runs in present_ranges(process.pagemap_fd, start, end):
                process.scan_calls += 1
                for lo, hi in runs:
                    # The entries themselves (PFN, soft-dirty) from the pagemap:
                    # the same as a whole read would give.
                    yield from _entries(process, lo, hi, buf, should_stop)
                if should_stop is not None and should_stop():
                    raise Stopped
            return
        except Unsupported:
            # Raised by the first call, before anything was yielded.
            process.pagemap_scan = False
    yield from _entries(process, start, end, buf, should_stop)


def walk_pages(
    process: ProcessMemory, seen: PfnSet | None = None, skipped: Skipped | None = None
) -> Iterator[tuple[Mapping, int]]:
    """(mapping, address) of every page swap would see in ``process``, by the rule
    above, from the page tables alone (no page is read).

    ``seen`` carries the PFNs met across several walks, so that a page mapped
    by several processes is taken once.
    """
    for m, address, _ in walk_entries(process, seen, skipped):
        yield m, address


def walk_entries(
    process: ProcessMemory,
    seen: PfnSet | None = None,
    skipped: Skipped | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[Mapping, int, int]]:
    """:func:`walk_pages` with each page's pagemap entry (its PFN, when readable,
    under :data:`PFN_MASK`; its :data:`SOFT_DIRTY` bit), strictly ascending.

    Raises:
        Stopped: ``should_stop()`` said so (asked between mappings and chunks).
    """
    seen = PfnSet() if seen is None else seen
    skipped = Skipped() if skipped is None else skipped
    flags_fd = _open_or_none("/proc/kpageflags")
    floor = 0  # the lowest address still to walk
    flags_buf = array("Q", bytes(8 * KPAGEFLAGS_CHUNK)) if flags_fd is not None else None
    addrs = array("Q")
    entries = array("Q")
    # The batch's mappings: (index of the first page of each, the mapping).
    owners: list[tuple[int, Mapping]] = []

    def taken() -> Iterator[tuple[Mapping, int, int]]:
        """The batch's pages the rule takes, in address order; the batch emptied."""
        if not owners:  # a batch flushed at a mapping's last page leaves none
            return
        flags: list[int] = []
        if flags_fd is not None and flags_buf is not None:
            flags = page_flags(flags_fd, [e & PFN_MASK for e in entries], flags_buf)
        bounds = [i for i, _ in owners[1:]] + [len(addrs)]
        add = seen.add
        for (lo, m), hi in zip(owners, bounds, strict=True):
            private = m.private
            for k in range(lo, hi):
                entry = entries[k]
                if flags:
                    got = flags[k]
                    if got < 0:
                        if entry & PFN_MASK:
                            continue  # past the end of RAM (a device's memory)
                    else:
                        skipped.exact = True
                        if got & _KPF_ZERO_PAGE:
                            skipped.zero += 1
                            continue
                        if private and not got & _KPF_ANON:
                            skipped.file += 1
                            continue
                        if not add(entry & PFN_MASK):
                            skipped.shared_dup += 1
                            continue
                yield m, addrs[k], entry
        del addrs[:], entries[:], owners[:]

    try:
        for m in _resident(process):
            if should_stop is not None and should_stop():
                raise Stopped
            if not m.wanted or m.end <= floor:
                continue
            owners.append((len(addrs), m))
            for address, entry in _present(process, max(m.start, floor), m.end, should_stop):
                floor = address + PAGE_SIZE
                addrs.append(address)
                entries.append(entry)
                if len(addrs) >= _WALK_BATCH:
                    yield from taken()
                    owners.append((0, m))
            if owners and owners[-1][0] == len(addrs):
                owners.pop()  # nothing of it present
        yield from taken()
    finally:
        if flags_fd is not None:
            os.close(flags_fd)


def page_flags(fd: int, pfns: Sequence[int], buf: array[int] | None = None) -> list[int]:
    """/proc/kpageflags's word of each of ``pfns``, in their order: -1 for a
    frame past the end of RAM, and for PFN 0 (not readable here).

    Frames are read a run at a time, not one pread each: a run is frames that
    follow each other, in the order given (a huge page's 512, memory faulted
    in together), up to ``len(buf)`` of them (:data:`KPAGEFLAGS_CHUNK` if no
    buffer is given), so memory stays bounded whatever the frames.  Finding
    the runs and taking the words out are C loops; a walk as root pays this
    per page.

    Args:
        fd: an open /proc/kpageflags.
        pfns: page frame numbers.
        buf: a reused buffer of native u64 words; its length bounds a run.
    """
    if buf is None:
        buf = array("Q", bytes(8 * KPAGEFLAGS_CHUNK))
    limit = len(buf)
    n = len(pfns)
    # Where a run must end: where the next frame does not follow.
    breaks = [k + 1 for k, d in enumerate(map(operator.sub, islice(pfns, 1, None), pfns)) if d != 1]
    breaks.append(n)
    out: list[int] = []
    i = 0
    with memoryview(buf) as view:
        for stop in breaks:
            while i < stop:
                j = min(stop, i + limit)
                lo = pfns[i]
                if lo == 0:  # only the first of a run can be 0
                    out.append(-1)
                    i += 1
                    continue
                got = os.preadv(fd, [view[: j - i]], lo * 8) // 8
                out.extend(buf[: min(got, j - i)])
                out.extend(repeat(-1, j - i - got))  # past the end of RAM
                i = j
    return out


@dataclass
class ProcessPages:
    """Iterate the swappable pages of an opened process, with their bytes.

    Attributes:
        skipped: what the walk left out (``skipped.exact``: the whole rule applied).
        unreadable: pages gone between the walk and the read.
    """

    process: ProcessMemory
    limit: int | None = None
    skipped: Skipped = field(default_factory=Skipped)
    unreadable: int = 0

    @property
    def exact(self) -> bool:
        return self.skipped.exact

    def __iter__(self) -> Iterator[PageRecord]:
        taken = 0
        for m, address in walk_pages(self.process, skipped=self.skipped):
            data = self.process.read_page(address)
            if data is None:
                self.unreadable += 1
                continue
            yield PageRecord(address, m.path, data)
            taken += 1
            if self.limit is not None and taken >= self.limit:
                return


def _open_or_none(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def swappable_pages(pid: int, limit: int | None = None) -> list[PageRecord]:
    """Every page swap would see in ``pid`` (up to ``limit``), in address order."""
    with open_process(pid) as process:
        return list(ProcessPages(process, limit))
