"""The scanner's walk against hostile and huge targets: PAGEMAP_SCAN against the
whole pagemap read, stopping mid-scan, and processes that fight the walk.

The targets are real processes these tests start: tests/zswapd/shadow_target.py
(regions of known pages, a huge MAP_NORESERVE reservation) and the small
program below (thousands of tiny mappings, mappings moved and unmapped without
pause).  Nothing is timed: a stop is proved by the pagemap bytes read, not by
a clock.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.zswapd.helpers import ask
from zswapd import procmem
from zswapd.pagemap_scan import Unsupported, present_ranges
from zswapd.procmem import (
    KPAGEFLAGS_CHUNK,
    PFN_MASK,
    ProcessMemory,
    Stopped,
    _resident,
    open_process,
    page_flags,
    read_maps,
    resident_mappings,
    walk_entries,
)
from zswapd.scanner import STATE_BYTES_PER_PAGE, Detection, Scanner
from zswapd.timeline import Event, EventKind

PAGE = 4096
TARGET = Path(__file__).with_name("shadow_target.py")
COLD_AFTER = 1.0
# Reservations of the shadow target, in GiB: 64 GiB costs the whole-pagemap
# read 128 MiB (a fraction of a second), 64 TiB would cost it 128 GiB (minutes).
SMALL_RESERVE = 64
HUGE_RESERVE = 64 << 10

# A process that fights the walk.  ``--tiny N``: N one-page mappings, each
# written once (every other page of a PROT_NONE reservation made writable, so
# that no two merge: 2N mappings).  ``--churn``: threads that, without pause,
# move a written region back and forth (mremap) and map, write and unmap
# another (munmap).  ``--thp``: a huge page written and one only read.  It
# prints one JSON line (the tiny pages' and huge pages' addresses), then
# answers each line of stdin with ``ok LINE``, as shadow_target.py does.
_HOSTILE = r"""
import ctypes, json, mmap, sys, threading
PAGE = 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_void_p]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_NONE, PROT_RW = 0, 3
MAP_PRIVATE_ANON = 0x02 | 0x20
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2

def reserve(pages, prot):
    at = libc.mmap(None, pages * PAGE, prot, MAP_PRIVATE_ANON, -1, 0)
    assert at not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    return at

def write(at, pages, tag):
    for i in range(pages):
        ctypes.memmove(at + i * PAGE, (b"%s %d " % (tag, i)) * 64, 64 * 8)

tiny = []
if "--tiny" in sys.argv:
    n = int(sys.argv[sys.argv.index("--tiny") + 1])
    base = reserve(2 * n, PROT_NONE)
    for i in range(n):
        at = base + 2 * i * PAGE
        assert libc.mprotect(at, PAGE, PROT_RW) == 0, ctypes.get_errno()
        write(at, 1, b"tiny")
        tiny.append(at)

def move():
    here = reserve(64, PROT_RW)
    write(here, 64, b"moved")
    while True:
        there = reserve(64, PROT_NONE)  # a place of its own, taken over by the move
        got = libc.mremap(here, 64 * PAGE, 64 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, there)
        assert got == there, ctypes.get_errno()
        here = there

def unmap():
    n = 0
    while True:
        n += 1
        at = reserve(64, PROT_RW)
        write(at, 64, b"gone %d" % n)
        libc.munmap(at, 64 * PAGE)

huge = []
if "--thp" in sys.argv:
    # Transparent huge pages (MADV_HUGEPAGE): 2 MiB written, 2 MiB only read
    # (the huge zero page, where the kernel offers it).
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    raw = reserve(6 * 512, PROT_RW)
    at = (raw + (2 << 20) - 1) & ~((2 << 20) - 1)
    libc.madvise(at, 4 << 20, 14)
    ctypes.memset(at, 7, 2 << 20)
    sum(ctypes.string_at(at + (2 << 20), PAGE))
    huge = [at, at + (2 << 20)]

if "--churn" in sys.argv:
    for f in (move, unmap):
        threading.Thread(target=f, daemon=True).start()
print(json.dumps({"tiny": tiny, "huge": huge}), flush=True)
for line in sys.stdin:
    print("ok", line.strip(), flush=True)
"""


# A process that leaves 16 pages of a region to a userfaultfd it never serves
# (UFFDIO_REGISTER_MODE_MISSING): a fault there waits for it, forever.  It
# prints the region's address (or why userfaultfd was refused), then answers stdin.
_UFFD = r"""
import ctypes, fcntl, json, mmap, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)  # userfaultfd, x86-64
if fd < 0:
    print(json.dumps({"error": os.strerror(ctypes.get_errno())}), flush=True)
else:
    iowr = lambda nr, size: (3 << 30) | (size << 16) | (0xAA << 8) | nr
    fcntl.ioctl(fd, iowr(0x3F, 24), bytearray(struct.pack("=QQQ", 0xAA, 0, 0)))
    m = mmap.mmap(-1, 16 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = (ctypes.c_char * len(m)).from_buffer(m)
    at = ctypes.addressof(view)
    del view
    fcntl.ioctl(fd, iowr(0x00, 32), bytearray(struct.pack("=QQQQ", at, 16 * 4096, 1, 0)))
    print(json.dumps({"region": at}), flush=True)
for line in sys.stdin:
    print("ok", line.strip(), flush=True)
"""


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a target and wait until it is idle: its first answer comes from the
    loop it then waits in, so its memory is set (walks compare equal)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    proc.stdin.write("sync\n")
    proc.stdin.flush()
    assert proc.stdout.readline().split() == ["ok", "sync"]
    return proc, info


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


@pytest.fixture
def sparse() -> Iterator[tuple[int, list[int]]]:
    """A shadow target with 64 GiB reserved, 3 pages of it touched: (pid, their addresses)."""
    proc, info = _start([sys.executable, str(TARGET), "--reserve", str(SMALL_RESERVE)])
    try:
        yield proc.pid, list(info["reserved"])
    finally:
        _stop(proc)


@pytest.fixture
def huge() -> Iterator[tuple[int, list[int]]]:
    """A shadow target with 64 TiB reserved (MAP_NORESERVE), 3 pages of it touched."""
    proc, info = _start([sys.executable, str(TARGET), "--reserve", str(HUGE_RESERVE)])
    try:
        yield proc.pid, list(info["reserved"])
    finally:
        _stop(proc)


def _walk(pid: int, pagemap_scan: bool) -> tuple[list[tuple[int, int, int]], ProcessMemory]:
    with open_process(pid, pagemap_scan=pagemap_scan) as memory:
        return [(m.start, a, e) for m, a, e in walk_entries(memory)], memory


def _events(events: list[Event]) -> list[tuple[EventKind, int, int, bytes | None]]:
    return [(e.kind, e.pid, e.address, e.data) for e in events]


def _after(calls: int) -> Callable[[], bool]:
    """A stop condition that turns True at its ``calls``-th question, and stays."""
    asked = [0]

    def should_stop() -> bool:
        asked[0] += 1
        return asked[0] >= calls

    return should_stop


# -- PAGEMAP_SCAN and the whole pagemap read give the same pages -----------------


def test_pagemap_scan_finds_the_present_pages_of_a_64_tib_reservation(
    huge: tuple[int, list[int]],
) -> None:
    pid, touched = huge
    with open_process(pid) as memory:
        found = {a for _, a, _ in walk_entries(memory)}
        assert memory.pagemap_scan and memory.scan_calls > 0
        # Three pages of 64 TiB: the entries read are those of the present pages
        # (a few thousand, the interpreter's), not the reservation's 128 GiB.
        assert memory.pagemap_bytes < 1 << 20
    assert set(touched) <= found


def test_pagemap_scan_and_the_whole_pagemap_give_the_same_entries(
    sparse: tuple[int, list[int]],
) -> None:
    pid, touched = sparse
    fast, fast_memory = _walk(pid, pagemap_scan=True)
    slow, slow_memory = _walk(pid, pagemap_scan=False)
    # Same mappings, addresses and entries (PFNs, soft-dirty bits, flags).
    assert fast == slow
    assert set(touched) <= {a for _, a, _ in fast}
    assert fast_memory.scan_calls > 0 and slow_memory.scan_calls == 0
    assert slow_memory.pagemap_bytes >= SMALL_RESERVE << 21  # 8 bytes a page of 64 GiB
    # The ioctl's reads: the entries of present pages (some the rule then
    # leaves out), not the reservation's.
    assert 8 * len(fast) <= fast_memory.pagemap_bytes < 1 << 20


def test_both_walks_give_the_scanner_the_same_events_and_figures(
    sparse: tuple[int, list[int]],
) -> None:
    pid, touched = sparse
    with (
        Scanner([pid], COLD_AFTER, Detection(), pagemap_scan=True) as fast,
        Scanner([pid], COLD_AFTER, Detection(), pagemap_scan=False) as slow,
    ):
        for t in (0.0, COLD_AFTER, 2 * COLD_AFTER):
            assert _events(list(fast.scan(t))) == _events(list(slow.scan(t)))
            ((f,), (s,)) = fast.scans, slow.scans
            assert (f.resident_pages, f.scanned_bytes) == (s.resident_pages, s.scanned_bytes)
        assert all(fast.is_cold(pid, a) for a in touched)
        memory = fast.memory(pid)
        assert memory is not None and memory.pagemap_scan


def test_present_ranges_are_the_pagemap_present_bits(sparse: tuple[int, list[int]]) -> None:
    """The ioctl's runs, with a buffer of two runs a call (so many calls), cover
    exactly the present pages the whole read finds."""
    pid, _ = sparse
    slow, _ = _walk(pid, pagemap_scan=False)
    lo, hi = slow[0][1], slow[-1][1] + PAGE
    with open_process(pid) as memory:
        pages = [
            a
            for runs in present_ranges(memory.pagemap_fd, lo, hi, regions=2)
            for start, end in runs
            for a in range(start, end, PAGE)
        ]
    walked = {a for _, a, _ in slow}
    # The walk leaves out what the rule does (zero page, file pages, unwanted
    # mappings); every page it takes is a present one the ioctl answers.
    assert walked <= set(pages) and pages == sorted(set(pages))


def test_a_descriptor_without_pagemap_scan_is_unsupported(tmp_path: Path) -> None:
    f = tmp_path / "not-a-pagemap"
    f.write_bytes(bytes(PAGE))
    with open(f, "rb") as fh, pytest.raises(Unsupported):
        next(present_ranges(fh.fileno(), 0, PAGE))


# -- a scan told to stop stops ----------------------------------------------------------


def test_a_walk_of_64_tib_on_the_whole_pagemap_path_stops_when_told(
    huge: tuple[int, list[int]],
) -> None:
    pid, _ = huge
    with open_process(pid, pagemap_scan=False) as memory:
        with pytest.raises(Stopped):
            for _ in walk_entries(memory, should_stop=_after(200)):
                pass
        # 200 questions, at most a chunk (512 KiB) of pagemap each: far short of
        # the 128 GiB of pagemap that 64 TiB takes.
        assert 0 < memory.pagemap_bytes <= 200 * (512 << 10) < (HUGE_RESERVE << 21)


def test_a_scan_told_to_stop_mid_walk_keeps_its_state_and_says_so(
    huge: tuple[int, list[int]],
) -> None:
    pid, _ = huge
    with Scanner([pid], COLD_AFTER, Detection(), pagemap_scan=False) as scanner:
        # The first scan runs through the 64 TiB only up to its stop.
        assert list(scanner.scan(0.0, _after(500))) == []
        assert scanner.stopped
        ((scan,),) = (scanner.scans,)
        assert scan.resident_pages == 0 and not scan.exited
        assert scanner.tracked_pages(pid) == 0
        memory = scanner.memory(pid)
        assert memory is not None and memory.pagemap_bytes < HUGE_RESERVE << 21


def test_a_scan_told_to_stop_mid_read_keeps_every_figure_consistent(
    sparse: tuple[int, list[int]],
) -> None:
    """Stopped after its first run of reads, a scan declares cold what it read;
    the pages it had not reached keep their state (not GONE, not COLD), and the
    next whole scan declares exactly those cold, none twice."""
    pid, _ = sparse
    with Scanner([pid], COLD_AFTER, Detection()) as scanner:
        list(scanner.scan(0.0))
        tracked = scanner.tracked_pages(pid)
        stop: list[bool] = []
        first = []
        for e in scanner.scan(COLD_AFTER, lambda: bool(stop)):
            first.append(e)
            stop.append(True)  # the scan is asked again before its next run
        assert scanner.stopped and first
        assert {e.kind for e in first} == {EventKind.COLD}
        assert len(first) < tracked == scanner.tracked_pages(pid)
        second = list(scanner.scan(2 * COLD_AFTER))
        assert not scanner.stopped
        assert {e.kind for e in second} == {EventKind.COLD}
        cold = [e.address for e in first + second]
        assert len(cold) == len(set(cold)) == tracked == scanner.tracked_pages(pid)


def test_processes_after_the_stop_keep_their_figures(sparse: tuple[int, list[int]]) -> None:
    pid, _ = sparse
    proc, _ = _start([sys.executable, str(TARGET)])
    try:
        with Scanner([pid, proc.pid], COLD_AFTER, Detection()) as scanner:
            list(scanner.scan(0.0))
            before = [s.resident_pages for s in scanner.scans]
            list(scanner.scan(COLD_AFTER, _after(1)))  # stopped at once
            assert scanner.stopped
            assert [s.pid for s in scanner.scans] == [pid, proc.pid]
            assert [s.resident_pages for s in scanner.scans] == before
    finally:
        _stop(proc)


# -- hostile targets -----------------------------------------------------------------------


def _consistent(scanner: Scanner, pid: int, events: list[Event], cold: set[int]) -> None:
    """Apply ``events`` to ``cold`` (what a pool would hold) and check the scanner
    agrees: no page COLD twice, no CHANGED or GONE for a page not cold."""
    for e in events:
        if e.kind == EventKind.COLD:
            assert e.address not in cold
            cold.add(e.address)
        elif e.kind in (EventKind.CHANGED, EventKind.GONE):
            cold.remove(e.address)
    memory = scanner.memory(pid)
    assert memory is not None
    assert {a for a in cold if scanner.is_cold(pid, a)} == cold


def test_thousands_of_tiny_mappings_are_each_seen_and_state_stays_per_page() -> None:
    """30,000 writable one-page mappings between PROT_NONE ones (60,000 mappings,
    near vm.max_map_count's 65,530): every page is tracked, once, and the state
    held is the per-page figure, whatever the number of mappings."""
    proc, info = _start([sys.executable, "-c", _HOSTILE, "--tiny", "30000"])
    try:
        tiny: list[int] = info["tiny"]
        for pagemap_scan in (True, False):
            with Scanner([proc.pid], COLD_AFTER, Detection(), pagemap_scan=pagemap_scan) as s:
                list(s.scan(0.0))
                events = list(s.scan(COLD_AFTER))
                cold = {e.address for e in events if e.kind == EventKind.COLD}
                assert set(tiny) <= cold
                assert len(cold) == len(events) == s.tracked_pages(proc.pid)
                (t,) = s._targets
                held = sum(x.itemsize * len(x) for x in (t.addrs, t.fps, t.since)) + len(t.cold)
                assert held == STATE_BYTES_PER_PAGE * s.tracked_pages(proc.pid)
    finally:
        _stop(proc)


def test_mappings_moved_and_unmapped_during_scans_leave_the_figures_consistent() -> None:
    """Threads mremap a region back and forth and map, write and unmap another,
    without pause: walks stay strictly ascending and the events always add up."""
    proc, _ = _start([sys.executable, "-c", _HOSTILE, "--churn"])
    try:
        with open_process(proc.pid) as memory:
            for _ in range(20):
                addresses = [a for _, a, _ in walk_entries(memory)]
                assert all(a < b for a, b in itertools.pairwise(addresses))
        cold: set[int] = set()
        with Scanner([proc.pid], COLD_AFTER, Detection()) as scanner:
            for i in range(40):
                events = list(scanner.scan(i * COLD_AFTER / 2))
                _consistent(scanner, proc.pid, events, cold)
                ((scan,),) = (scanner.scans,)
                assert scan.resident_pages == scanner.tracked_pages(proc.pid)
    finally:
        _stop(proc)


def test_zswapd_pagemap_scan_0_forces_the_whole_pagemap_read(
    sparse: tuple[int, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch for a whole command (``ZSWAPD_PAGEMAP_SCAN=0 zswapd shadow ...``)."""
    pid, touched = sparse
    monkeypatch.setenv("ZSWAPD_PAGEMAP_SCAN", "0")
    with Scanner([pid], COLD_AFTER, Detection()) as scanner:
        list(scanner.scan(0.0))
        list(scanner.scan(COLD_AFTER))
        memory = scanner.memory(pid)
        assert memory is not None and not memory.pagemap_scan and memory.scan_calls == 0
        assert memory.pagemap_bytes >= 2 * (SMALL_RESERVE << 21)  # two whole reads
        assert all(scanner.is_cold(pid, a) for a in touched)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
    reason="the target calls userfaultfd by its x86-64 syscall number",
)
def test_a_page_left_to_an_unserved_userfaultfd_reads_as_gone_without_waiting() -> None:
    """Reading a page of another process faults it in; a hostile target can
    leave that fault to a userfaultfd nobody serves.  A remote read does not
    wait for one (the kernel answers it SIGBUS, so EIO): the page is gone."""
    proc, info = _start([sys.executable, "-c", _UFFD])
    try:
        if "error" in info:
            pytest.skip(f"userfaultfd refused here: {info['error']}")
        got: list[bytes | None] = []
        with Scanner([proc.pid], COLD_AFTER, Detection()) as scanner:
            reader = threading.Thread(
                target=lambda: got.append(scanner.read_page(proc.pid, info["region"])),
                daemon=True,
            )
            reader.start()
            # Not a timing: a deadline so that a kernel that waited fails the
            # test instead of hanging it (ending the target ends any wait).
            reader.join(60)
            answered = not reader.is_alive()
            _stop(proc)
            reader.join()
            assert answered and got == [None]
    finally:
        _stop(proc)


def test_huge_pages_read_the_same_both_ways() -> None:
    """A transparent huge page is one range to PAGEMAP_SCAN and 512 entries to
    the pagemap: the walks agree, page for page."""
    proc, info = _start([sys.executable, "-c", _HOSTILE, "--thp"])
    try:
        fast, _ = _walk(proc.pid, pagemap_scan=True)
        slow, _ = _walk(proc.pid, pagemap_scan=False)
        assert fast == slow
        written = info["huge"][0]
        assert {a for _, a, _ in fast} >= set(range(written, written + (2 << 20), PAGE))
    finally:
        _stop(proc)


# -- /proc/kpageflags read in runs ------------------------------------------------

# KPF_MMAP, KPF_ANON, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_THP, KPF_ZERO_PAGE.
_STABLE_FLAGS = sum(1 << bit for bit in (11, 12, 15, 16, 22, 24))


def _flags_one_at_a_time(fd: int, pfns: list[int]) -> list[int]:
    """The reference: one pread of 8 bytes per frame, as the walk once did."""
    out = []
    for pfn in pfns:
        raw = os.pread(fd, 8, pfn * 8) if pfn else b""
        out.append(int.from_bytes(raw, sys.byteorder) if len(raw) == 8 else -1)
    return out


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_a_batch_ending_at_a_mappings_last_page_loses_and_breaks_nothing(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk takes its pages in batches; one flushed exactly at the last
    page of the last mapping left no batch to take, which a CI run met as a
    crash.  With batches of one page (every mapping ends on a flush) and of a
    few, the walk gives what the default batches give."""
    proc, _ = _start([sys.executable, "-c", _HOSTILE, "--tiny", "8"])
    os.kill(proc.pid, signal.SIGSTOP)  # the same memory for both walks
    try:
        with open_process(proc.pid) as memory:
            want = [(a, e) for _, a, e in walk_entries(memory)]
        monkeypatch.setattr(procmem, "_WALK_BATCH", batch)
        with open_process(proc.pid) as memory:
            got = [(a, e) for _, a, e in walk_entries(memory)]
    finally:
        _stop(proc)
    assert got == want and len(want) > batch


@pytest.mark.skipif(not os.access("/proc/kpageflags", os.R_OK), reason="needs root")
def test_page_flags_read_in_runs_are_those_read_one_at_a_time() -> None:
    """The PFNs of a real process (huge pages among them: runs of 512), read
    in runs through buffers of several sizes, give the words read one by one;
    a frame past the end of RAM and PFN 0 read as -1."""
    proc, _ = _start([sys.executable, "-c", _HOSTILE, "--thp", "--tiny", "64"])
    # The target stays alive, stopped, while its frames are read: a frame it
    # freed could be anyone's by the next read, with other flags.
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        with open_process(proc.pid) as memory:
            pfns = [e & PFN_MASK for _, _, e in walk_entries(memory)]
        _compare_flag_reads(pfns)
    finally:
        _stop(proc)


def _stable(words: list[int]) -> list[int]:
    """The flags a stopped process's frame keeps (the kernel may still age
    its LRU bits meanwhile): those the walk tests and those telling one frame
    of a huge page from the next."""
    return [w if w == -1 else w & _STABLE_FLAGS for w in words]


def _compare_flag_reads(pfns: list[int]) -> None:
    assert len(pfns) > 1024 and all(pfns)  # the walk's own PFNs, readable as root
    longest = max(
        len(list(g)) for _, g in itertools.groupby(enumerate(pfns), lambda x: x[1] - x[0])
    )
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert longest >= 512  # the huge page written: one run
    beyond = 1 << 40  # 4 PiB of RAM: past the end here
    asked = [0, *pfns[:100], beyond, beyond + 1, *pfns[100:], 0, beyond]
    fd = os.open("/proc/kpageflags", os.O_RDONLY)
    try:
        want = _stable(_flags_one_at_a_time(fd, asked))
        assert want.count(-1) == 5
        for words in (1, 7, 512, KPAGEFLAGS_CHUNK):
            assert _stable(page_flags(fd, asked, array("Q", bytes(8 * words)))) == want
        assert _stable(page_flags(fd, asked)) == want
        assert page_flags(fd, []) == []
    finally:
        os.close(fd)


# -- targets that fork and exec ---------------------------------------------------


def _regions(info: dict[str, Any]) -> set[int]:
    return {info[r] + i * PAGE for r in ("cold", "hot", "gone") for i in range(info["pages"])}


def test_a_fork_changes_nothing_of_the_parent_and_the_child_is_not_followed() -> None:
    """The child rewrites its copy of the cold region and sleeps: the parent's
    pages (shared copy-on-write, then its own) read the same, so none of its
    regions changes or goes, and no event names the child."""
    proc, info = _start([sys.executable, str(TARGET)])
    child = 0
    try:
        with Scanner([proc.pid], COLD_AFTER, Detection()) as scanner:
            list(scanner.scan(0.0))
            cold = {e.address for e in scanner.scan(COLD_AFTER) if e.kind == EventKind.COLD}
            assert _regions(info) <= cold
            child = int(ask(proc, "fork")[2])
            events = list(scanner.scan(2 * COLD_AFTER))
            assert {e.pid for e in events} <= {proc.pid}
            moved = {e.address for e in events if e.kind != EventKind.COLD}
            assert not moved & _regions(info)
            assert all(scanner.is_cold(proc.pid, a) for a in _regions(info))
            assert [s.pid for s in scanner.scans] == [proc.pid] and scanner.execs(proc.pid) == 0
    finally:
        if child:
            os.kill(child, 9)
        _stop(proc)


def _wait_exec(pid: int) -> None:
    """Until the target runs its new image (a deadline so a broken exec fails
    the test, not hangs it: nothing is asserted of the time it takes)."""
    deadline = time.monotonic() + 60
    while b"time.sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the exec never happened"
        time.sleep(0.01)


def test_exec_frees_every_cold_page_without_a_refault_and_the_new_image_starts_fresh() -> None:
    """Same pid, a new address space: every page cold before is GONE (first
    among its events), none CHANGED, no EXIT; the new image's pages are met
    for the first time (no event), then go cold in their turn."""
    proc, info = _start([sys.executable, str(TARGET)])
    try:
        with Scanner([proc.pid], COLD_AFTER, Detection()) as scanner:
            list(scanner.scan(0.0))
            cold = [e.address for e in scanner.scan(COLD_AFTER) if e.kind == EventKind.COLD]
            assert _regions(info) <= set(cold)
            ask(proc, "exec")
            _wait_exec(proc.pid)
            events = list(scanner.scan(2 * COLD_AFTER))
            # Every cold page freed, in address order, and nothing else.
            assert _events(events) == [(EventKind.GONE, proc.pid, a, None) for a in sorted(cold)]
            assert scanner.alive and scanner.execs(proc.pid) == 1
            ((scan,),) = (scanner.scans,)
            assert not scan.exited and scan.resident_pages == scanner.tracked_pages(proc.pid) > 0
            assert not any(scanner.is_cold(proc.pid, a) for a in cold)
            # The new image (still starting, maybe): its pages go cold in
            # their turn, the events adding up, none at the old regions.
            held: set[int] = set()
            t, deadline = 3 * COLD_AFTER, time.monotonic() + 60
            while not held or len(held) < scanner.tracked_pages(proc.pid):
                assert time.monotonic() < deadline, "the new image never went cold"
                events = list(scanner.scan(t))
                assert EventKind.EXIT not in {e.kind for e in events}
                _consistent(scanner, proc.pid, events, held)
                t += COLD_AFTER
            assert not _regions(info) & held and scanner.execs(proc.pid) == 1
    finally:
        _stop(proc)


@pytest.mark.parametrize("reaped", [False, True])
def test_a_process_that_ends_is_an_exit_not_an_exec(reaped: bool) -> None:
    """Ended, a zombie (same pid, same start time, no memory) or reaped (its
    pid anyone's): EXIT, not taken for an exec."""
    proc, _ = _start([sys.executable, str(TARGET)])
    try:
        with Scanner([proc.pid], COLD_AFTER, Detection()) as scanner:
            list(scanner.scan(0.0))
            list(scanner.scan(COLD_AFTER))
            ask(proc, "exit")
            if reaped:
                proc.wait()
            else:  # ended, left a zombie: waited for, not reaped
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            events = list(scanner.scan(2 * COLD_AFTER))
            assert _events(events) == [(EventKind.EXIT, proc.pid, 0, None)]
            assert not scanner.alive and scanner.execs(proc.pid) == 0
    finally:
        _stop(proc)


# -- which mappings have anything resident: smaps, or maps and PAGEMAP_SCAN ---------

# Mappings only read (the kernel's zero page, 4 KiB and huge: smaps's Rss is 0),
# one written, each apart (read-only ones do not merge with the writable).
_ZERO = r"""
import ctypes, json, mmap, sys
PRIVATE = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
m4 = mmap.mmap(-1, 64 * 4096, flags=PRIVATE, prot=mmap.PROT_READ)
sum(m4[i * 4096] for i in range(64))
huge = mmap.mmap(-1, 8 << 20, flags=PRIVATE, prot=mmap.PROT_READ)
huge.madvise(14)  # MADV_HUGEPAGE
sum(huge[i * 4096] for i in range(0, 2048))
written = mmap.mmap(-1, 16 * 4096, flags=PRIVATE)
written.write(b"x" * 16 * 4096)
print(json.dumps({}), flush=True)
for line in sys.stdin:
    print("ok", line.strip(), flush=True)
"""


def test_maps_and_pagemap_scan_find_the_mappings_smaps_says_are_resident(
    sparse: tuple[int, list[int]],
) -> None:
    """smaps's Rss > 0, asked instead of PAGEMAP_SCAN (present, not the zero
    page), over mappings only read, tiny ones, huge pages and a 64 GiB
    reservation: the same mappings, and the same walk."""
    procs = [
        _start([sys.executable, "-c", _ZERO])[0],
        _start([sys.executable, "-c", _HOSTILE, "--thp", "--tiny", "200"])[0],
    ]
    try:
        pids = [p.pid for p in procs] + [sparse[0]]
        for pid in pids:
            with open_process(pid) as memory:
                assert memory.pagemap_scan
                by_smaps = [m for m in resident_mappings(pid) if m.wanted]
                by_scan = list(_resident(memory))
                assert memory.pagemap_scan, "PAGEMAP_SCAN is needed here"
                assert by_scan == by_smaps
                read_only = [m for m in read_maps(pid) if m.perms.startswith("r--p") and not m.path]
                if pid == procs[0].pid:  # the two read, 4 KiB and huge
                    assert len(read_only) >= 2 and not set(read_only) & set(by_scan)
            fast, _ = _walk(pid, pagemap_scan=True)
            slow, _ = _walk(pid, pagemap_scan=False)
            assert fast == slow
    finally:
        for p in procs:
            _stop(p)
