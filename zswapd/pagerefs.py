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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from zswapd.pagefile import PageFile
from zswapd.procmem import PAGE_SIZE, PfnSet, ProcessMemory, walk_pages

__all__ = ["PAGE_SIZE", "PageRef", "PageRefs"]


@dataclass(frozen=True, slots=True)
class PageRef:
    """One page: the index of its source, and its address (a process) or offset (a file)."""

    source: int
    offset: int


class PageRefs:
    """The pages of processes and page files, as references, and their bytes on demand.

    Args:
        processes: processes, opened (and so checked) by the caller.
        files: page files, opened (and so checked) by the caller.

    Every read goes through the descriptors the caller opened: a pid reused
    or a path replaced after the check is never read.  The caller closes them.
    """

    def __init__(self, processes: Sequence[ProcessMemory], files: Sequence[PageFile]) -> None:
        self.processes = list(processes)
        self.files = list(files)
        self.vanished = 0
        self._seen = PfnSet()

    def __iter__(self) -> Iterator[PageRef]:
        for i, process in enumerate(self.processes):
            for _, address in walk_pages(process, self._seen):
                yield PageRef(i, address)
        for j, page_file in enumerate(self.files, start=len(self.processes)):
            for page in range(page_file.pages):
                yield PageRef(j, page * PAGE_SIZE)

    def read(self, refs: Sequence[PageRef]) -> list[bytes]:
        """The bytes of ``refs``, in (source, offset) order, not the order given:
        each source is read front to back.  Pages gone meanwhile (unmapped,
        the process ended, the file shrank) are left out and counted in
        ``vanished``.
        """
        out = []
        for ref in sorted(refs, key=lambda r: (r.source, r.offset)):
            source = (
                self.processes[ref.source]
                if ref.source < len(self.processes)
                else self.files[ref.source - len(self.processes)]
            )
            data = source.read_page(ref.offset)
            if data is None:
                self.vanished += 1
                continue
            out.append(data)
        return out
