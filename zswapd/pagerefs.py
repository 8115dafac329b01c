"""Where pages are, before their bytes are read: so a sample reads only its own.

A sample of n pages of a 32 GiB process should not read 32 GiB.  The pages
swap would see are chosen from the page tables alone (``/proc/PID/pagemap``,
8 bytes a page, and ``/proc/kpageflags``), by the rule of
:class:`zswapd.procmem.ProcessPages` (the one ../shared/corpus was dumped
with); only the pages a sample keeps are then read from ``/proc/PID/mem``.
That is about seven times faster than reading every page (2.4 against 16
microseconds a page here).  Page files are pages at known offsets.

A page mapped by several of the processes (shared memory, a page a fork
has not yet copied) is one page to swap, so it is taken once across all of
them, by PFN, as ../shared/corpus was.  The PFNs seen are kept in a bitmap,
one bit per page frame of the machine (768 KiB for 24 GiB of RAM), not in a
set that would grow with the processes' size.

A page of a live process may be gone by the time it is read (unmapped,
swapped out): it is left out and counted in ``vanished``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from zswapd.procmem import read_maps

__all__ = ["PAGE_SIZE", "PageRef", "PageRefs"]

PAGE_SIZE = 4096
# /proc/PID/pagemap and /proc/kpageflags bits (Documentation/admin-guide/mm/pagemap.rst).
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1
_KPF_ANON = 1 << 12
_KPF_ZERO_PAGE = 1 << 24


class _PfnBitmap:
    """Page frames seen: one bit each, grown to the highest PFN met."""

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


@dataclass(frozen=True, slots=True)
class PageRef:
    """One page: the index of its source, and its address (a process) or offset (a file)."""

    source: int
    offset: int


class PageRefs:
    """The pages of processes and page files, as references, and their bytes on demand.

    Args:
        pids: processes (checked by the caller: they exist and have memory).
        files: page files (checked by the caller: whole pages).
    """

    def __init__(self, pids: Sequence[int], files: Sequence[str]) -> None:
        self.pids = list(pids)
        self.files = list(files)
        self.vanished = 0
        self._seen = _PfnBitmap()

    def __iter__(self) -> Iterator[PageRef]:
        for i, pid in enumerate(self.pids):
            yield from self._process(i, pid)
        for j, name in enumerate(self.files, start=len(self.pids)):
            size = os.path.getsize(name)
            for off in range(0, size - size % PAGE_SIZE, PAGE_SIZE):
                yield PageRef(j, off)

    def _process(self, index: int, pid: int) -> Iterator[PageRef]:
        """The rule of procmem.ProcessPages, on page tables only."""
        try:
            flags_fd: int | None = os.open("/proc/kpageflags", os.O_RDONLY)
        except OSError:
            flags_fd = None  # not root: every present page of the chosen mappings
        try:
            with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
                for m in read_maps(pid):
                    if not m.wanted:
                        continue
                    n = (m.end - m.start) // PAGE_SIZE
                    raw = os.pread(pagemap.fileno(), 8 * n, m.start // PAGE_SIZE * 8)
                    for i, entry in enumerate(struct.unpack(f"<{len(raw) // 8}Q", raw)):
                        if not entry & _PRESENT:
                            continue
                        pfn = entry & _PFN_MASK
                        if pfn and flags_fd is not None:
                            raw_flags = os.pread(flags_fd, 8, pfn * 8)
                            if len(raw_flags) != 8:
                                continue  # past the end of RAM (a device's memory)
                            (flags,) = struct.unpack("<Q", raw_flags)
                            if flags & _KPF_ZERO_PAGE or (m.private and not flags & _KPF_ANON):
                                continue
                            if not self._seen.add(pfn):
                                continue  # mapped twice, here or in another of the processes
                        yield PageRef(index, m.start + i * PAGE_SIZE)
        finally:
            if flags_fd is not None:
                os.close(flags_fd)

    def read(self, refs: Sequence[PageRef]) -> list[bytes]:
        """The bytes of ``refs``, in their order; pages gone meanwhile are left out."""
        out = []
        fds: dict[int, int] = {}
        try:
            for ref in sorted(refs, key=lambda r: (r.source, r.offset)):
                fd = fds.get(ref.source)
                if fd is None:
                    fd = fds[ref.source] = os.open(self._path(ref.source), os.O_RDONLY)
                try:
                    data = os.pread(fd, PAGE_SIZE, ref.offset)
                except OSError:
                    data = b""
                if len(data) != PAGE_SIZE:
                    self.vanished += 1
                    continue
                out.append(data)
        finally:
            for fd in fds.values():
                os.close(fd)
        return out

    def _path(self, source: int) -> str:
        if source < len(self.pids):
            return f"/proc/{self.pids[source]}/mem"
        return self.files[source - len(self.pids)]
