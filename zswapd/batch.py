"""The page store's per-page work, one batch at a time: the pure-Python reference.

:class:`~zswapd.pool.PagePool` hands every batch to four functions, each a
loop over its pages:

* :func:`prepare` (outside the lock): the same-filled test, compression and
  the huge rule;
* :func:`add_entries` (under the lock): an object per page that is not
  same-filled and an entry per page, all or nothing;
* :func:`read_entries` (under the lock): the entries and stored bytes of a
  batch of live handles, access times and the LRU touched;
* :func:`decode` (outside the lock): the pages back, same-filled ones refilled
  from their word; :func:`decode_frame`, the same after a header in one bytes
  object (the wire protocol's LOAD answer).

:mod:`zswapd._batch` is the same four in Cython, one C loop per batch where
this module runs one Python loop; :mod:`zswapd.fastpath` says which one runs.
This module stays the reference: tests/zswapd/test_batch.py drives both with
the same random batches and requires the same handles, tables, bytes and
errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from allocator import PoolFullError
from allocator.handles import SLOT_MASK
from compressors import Compressor
from zswapd.entries import COMPRESSED, ENCODING, HUGE, SAME, WRITTEN, EntryTable
from zswapd.errors import PageSizeError

__all__ = [
    "PAGE_SIZE",
    "Prepared",
    "Raw",
    "add_entries",
    "decode",
    "decode_frame",
    "prepare",
    "read_entries",
    "split_pages",
    "undo",
]

PAGE_SIZE = 4096

Page = bytes | bytearray | memoryview
# One page ready to store: (kind, the compressed or raw bytes or a same-filled
# page's word, stored length).
Prepared = tuple[int, Any, int]
# One page read under the lock: (kind, word of a same-filled page or file
# slot | crc, stored bytes or None for a written-back page, stored length).
Raw = tuple[int, int, bytes | None, int]


def split_pages(pages: Page | Iterable[Page]) -> list[bytes]:
    """Pages from ``k * 4096`` contiguous bytes or from an iterable of 4096-byte items.

    Raises:
        PageSizeError: a length that is not a whole number of pages, or an item
            that is not exactly one page.
    """
    if isinstance(pages, bytes | bytearray | memoryview):
        raw = bytes(pages)
        if not raw or len(raw) % PAGE_SIZE:
            raise PageSizeError(f"{len(raw)} bytes is not a whole, non-zero number of pages")
        return [raw[i : i + PAGE_SIZE] for i in range(0, len(raw), PAGE_SIZE)]
    out = []
    for n, page in enumerate(pages):
        if not isinstance(page, bytes | bytearray | memoryview) or len(page) != PAGE_SIZE:
            size = len(page) if isinstance(page, bytes | bytearray | memoryview) else type(page)
            raise PageSizeError(f"page {n} is {size}, not {PAGE_SIZE} bytes")
        out.append(bytes(page))
    return out


def prepare(
    batch: Sequence[bytes], comp: Compressor, huge_size: int
) -> tuple[Sequence[Prepared], int, int, int]:
    """Each page's kind and payload, compressed by ``comp``; and how many are
    huge (compress to ``huge_size`` bytes or more: stored raw), how many
    same-filled, and the stored bytes of the others: (prepared, huge, same,
    stored bytes)."""
    compress = comp.compress
    prepared: list[Prepared] = []
    poor = same = compr = 0
    for page in batch:
        # The first/last word comparison rejects almost every other page at once.
        if page[:8] == page[-8:] and page == page[:8] * (PAGE_SIZE // 8):
            prepared.append((SAME, int.from_bytes(page[:8], "little"), 0))
            same += 1
            continue
        data = compress(page)
        if len(data) >= huge_size:
            prepared.append((HUGE, page, PAGE_SIZE))
            poor += 1
            compr += PAGE_SIZE
        else:
            prepared.append((COMPRESSED, data, len(data)))
            compr += len(data)
    return prepared, poor, same, compr


def undo(entries: EntryTable, handles: list[int], free: Callable[[int], None]) -> None:
    """Take back the entries of ``handles`` and their objects, in order."""
    for h in handles:
        kind, obj, _ = entries.remove(h)
        if kind != SAME:
            free(obj)
    entries.trim()


def add_entries(
    entries: EntryTable,
    prepared: Sequence[Prepared],
    alloc: Any,
    now: int,
    limit_pages: int | None,
    high: list[int],
) -> list[int]:
    """An object (``alloc.store``) and an entry for every prepared page; their handles.

    zram_write_page's order, page by page: allocate, raise the high-water mark
    ``high[0]`` (the pool's mem_used_max, raised in place, also when the batch
    then fails), and refuse when the allocator holds more than ``limit_pages``
    pages, whether or not this object took new ones.

    All or nothing: whatever stops the batch (the budget cannot pay for the
    table, the allocator is full, the limit is passed), the objects and
    entries it made are taken back before the error goes on.

    Raises:
        PoolFullError: the limit is passed (or the allocator's own refusal).
    """
    handles: list[int] = []
    store, limit = alloc.store, -1 if limit_pages is None else limit_pages * PAGE_SIZE
    try:
        # The entries' slots first: a table the budget cannot grow
        # refuses the batch before any object is taken.
        entries.reserve(len(prepared))
        for kind, payload, clen in prepared:
            if kind == SAME:
                obj = payload
            else:
                obj = store(payload)
                used = alloc.total_size_bytes
                if used > high[0]:
                    high[0] = used
                if 0 <= limit < used:
                    alloc.free(obj)
                    raise PoolFullError(
                        f"{used // PAGE_SIZE} pages held, limit {limit // PAGE_SIZE}"
                    )
            handle = entries.add(kind, obj, clen, now)
            handles.append(handle)
            if kind != SAME:
                entries.lru_push(handle & SLOT_MASK)
    except BaseException:
        undo(entries, handles, alloc.free)
        raise
    return handles


def read_entries(
    entries: EntryTable,
    handles: Sequence[int],
    alloc: Any,
    now: int,
) -> tuple[list[int], Sequence[Raw], int, int]:
    """The slots of ``handles`` and what each stores, read from the allocator
    ``alloc`` (its ``obj_read``): (slots, raw, same, written).

    Every handle is checked before anything is read or touched.

    Raises:
        StaleHandleError: a handle is not live (nothing touched).
    """
    slots = [entries.slot(h) for h in handles]
    read = alloc.obj_read
    kinds, objs, clens, atime = entries.kind, entries.obj, entries.clen, entries.atime
    raw: list[Raw] = []
    same = written = 0
    for slot in slots:
        kind = kinds[slot]
        if kind & WRITTEN:
            raw.append((kind, objs[slot], None, clens[slot]))
            written += 1
        elif kind == SAME:
            raw.append((kind, objs[slot], b"", 0))
            same += 1
        else:
            raw.append((kind, 0, read(objs[slot], clens[slot]), 0))
            entries.lru_touch(slot)
        atime[slot] = now
    return slots, raw, same, written


def decode(
    raw: Sequence[Raw],
    comp: Compressor,
    decompress: Callable[[int, bytes], bytes],
) -> list[bytes]:
    """The pages of ``raw`` (every one read: none left ``None``).

    ``comp``, the primary algorithm, decodes a page of its own
    (``comp.decompress(data, 4096)``), ``decompress(kind, data)`` one of any
    other; their errors go on.
    """
    primary = comp.decompress
    out = []
    for kind, word, data, _ in raw:
        assert data is not None
        if kind == SAME:
            out.append(word.to_bytes(8, "little") * (PAGE_SIZE // 8))
        elif kind & ENCODING == HUGE:
            out.append(data)
        elif kind & ENCODING == COMPRESSED:
            out.append(primary(data, PAGE_SIZE))
        else:
            out.append(decompress(kind, data))
    return out


def decode_frame(
    raw: Sequence[Raw],
    comp: Compressor,
    decompress: Callable[[int, bytes], bytes],
    header: bytes,
) -> bytes:
    """``header`` and the pages of ``raw`` after it, as one new bytes object
    (a frontend's whole answer: written once, never joined again)."""
    return b"".join([header, *decode(raw, comp, decompress)])
