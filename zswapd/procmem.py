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
mappings is then taken, and ``ProcessPages.exact`` says so.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "Mapping",
    "PageRecord",
    "PfnSet",
    "ProcessPages",
    "Skipped",
    "read_maps",
    "swappable_pages",
    "walk_pages",
]

PAGE_SIZE = 4096
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1
_KPF_ANON = 1 << 12
_KPF_ZERO_PAGE = 1 << 24
_SKIP = ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]")
_SHARED_ANON = ("/dev/zero (deleted)", "/SYSV", "/memfd:", "/dev/shm/")


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


def read_maps(pid: int) -> list[Mapping]:
    """The mappings of ``pid``."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append(Mapping(lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


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


def walk_pages(
    pid: int, seen: PfnSet | None = None, skipped: Skipped | None = None
) -> Iterator[tuple[Mapping, int]]:
    """(mapping, address) of every page swap would see in ``pid``, by the rule
    above, from the page tables alone (no page is read).

    ``seen`` carries the PFNs met across several walks, so that a page mapped
    by several processes is taken once.
    """
    seen = PfnSet() if seen is None else seen
    skipped = Skipped() if skipped is None else skipped
    flags_fd = _open_or_none("/proc/kpageflags")
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
                        skipped.exact = True
                        (flags,) = struct.unpack("<Q", raw_flags)
                        if flags & _KPF_ZERO_PAGE:
                            skipped.zero += 1
                            continue
                        if m.private and not flags & _KPF_ANON:
                            skipped.file += 1
                            continue
                        if not seen.add(pfn):
                            skipped.shared_dup += 1
                            continue
                    yield m, m.start + i * PAGE_SIZE
    finally:
        if flags_fd is not None:
            os.close(flags_fd)


@dataclass
class ProcessPages:
    """Iterate the swappable pages of a process, with their bytes.

    Attributes:
        skipped: what the walk left out (``skipped.exact``: the whole rule applied).
        unreadable: pages gone between the walk and the read.
    """

    pid: int
    limit: int | None = None
    skipped: Skipped = field(default_factory=Skipped)
    unreadable: int = 0

    @property
    def exact(self) -> bool:
        return self.skipped.exact

    def __iter__(self) -> Iterator[PageRecord]:
        taken = 0
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            for m, address in walk_pages(self.pid, skipped=self.skipped):
                try:
                    data = os.pread(mem.fileno(), PAGE_SIZE, address)
                except OSError:
                    data = b""
                if len(data) != PAGE_SIZE:
                    self.unreadable += 1
                    continue
                yield PageRecord(address, m.path, data)
                taken += 1
                if self.limit is not None and taken >= self.limit:
                    return


def _open_or_none(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def swappable_pages(pid: int, limit: int | None = None) -> list[PageRecord]:
    """Every page swap would see in ``pid`` (up to ``limit``), in address order."""
    return list(ProcessPages(pid, limit))
