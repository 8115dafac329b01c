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
them, by PFN, as ../shared/corpus was (one procmem.PfnSet for every walk).

A page of a live process may be gone by the time it is read (unmapped,
swapped out): it is left out and counted in ``vanished``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from zswapd.procmem import PAGE_SIZE, PfnSet, walk_pages

__all__ = ["PAGE_SIZE", "PageRef", "PageRefs"]


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
        self._seen = PfnSet()

    def __iter__(self) -> Iterator[PageRef]:
        for i, pid in enumerate(self.pids):
            yield from self._process(i, pid)
        for j, name in enumerate(self.files, start=len(self.pids)):
            size = os.path.getsize(name)
            for off in range(0, size - size % PAGE_SIZE, PAGE_SIZE):
                yield PageRef(j, off)

    def _process(self, index: int, pid: int) -> Iterator[PageRef]:
        for _, address in walk_pages(pid, self._seen):
            yield PageRef(index, address)

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
