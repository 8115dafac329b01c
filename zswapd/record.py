"""The record file: a shadow's timeline, kept to be played again (``zswapd replay``).

``zswapd shadow --record FILE`` writes every tick it sees (zswapd/timeline.py)
to FILE; ``zswapd replay FILE`` reads them back and plays them into a pool of
any configuration.  What it holds is what swap reacted to, never what the pool
did: the events, each distinct page's bytes once, and each tick's end.

The layout (little-endian throughout; docs/record.md has the same, with the
reasons)::

    magic    b"ZSWAPREC"   8 bytes
    version  u32           FORMAT_VERSION (1)
    frames   [type u8][length u32][crc32 u32][payload: length bytes] ...

``crc32`` covers the type, the length and the payload.  The frames, in order:

- ``HEADER`` (first, once): a JSON object, the recording's settings; zswapd
  reads ``config`` (the pool's settings, as ``GET .../stats`` gives them) and
  shows the rest.
- ``CONTENT``: ``id u32`` then one page compressed with zstd (its content
  size in the zstd frame, 4096).  Ids count up from 0, each distinct page
  (by its xxh3-128 digest) is stored once, and always before the first event
  that refers to it.
- ``EVENTS``: ``count u32`` then ``count`` events of 17 bytes each:
  ``kind u8, pid u32, address u64, ref u32`` (ref: the content id of a
  ``COLD`` page, 0xFFFFFFFF for the others).  Many events per frame; the
  writer flushes at most every :data:`EVENTS_PER_FRAME` and at each tick's end.
- ``TICK``: a JSON object ``{"t": seconds, "scans": [ProcessScan as an
  object, ...]}`` closing the tick whose events came before it.
- ``END`` (last, once): a JSON object, the summary (zswapd shadow puts the
  last tick's figures under ``figures``, and how its run ended under
  ``ended``: see :func:`check_ended`).  Nothing may follow it.

A file without its END frame was cut short (a shadow killed with SIGKILL, a
full disk): :meth:`RecordReader.open` refuses it, saying how many whole ticks
it holds, unless asked for them (``partial=True``, ``zswapd replay
--partial``).  Events after the last TICK belong to no whole tick and are
never played.

Reading trusts nothing: :meth:`RecordReader.open` checks the whole file in one
pass before anything is played: frame lengths at most :data:`MAX_FRAME`, and
each type's own cap, checked before its payload is read (JSON at most
:data:`MAX_JSON`, an EVENTS frame at most :data:`MAX_FRAME_EVENTS` events);
every CRC; counts against lengths; kinds known; addresses page-aligned; every
ref defined before use; content ids in order; every content decompressing to
exactly 4096 bytes; ticks' ``t`` finite and non-decreasing; at most
:data:`MAX_PROCESSES` distinct pids named (in events and scans) in the whole
file.  Its memory is the index, 8 bytes a distinct page (where each content
frame starts), and the pids seen, never what a frame claims.  Playing reads
the file again through the same checks, so a file changed under a replay
stops it with the same errors; a tick's events are read as they are played,
a frame at a time, so no tick is ever held whole, however many events it has.

What reading costs is bounded by the file: every event is O(1) to read and
check, every tick's end O(its scans); and the processes a replay keeps
figures for are at most :data:`MAX_PROCESSES` (docs/record.md says what a
crafted record can still make a replay's SwapSim do).

Writing: every failure of the file (a full disk, an I/O error) is a
:class:`RecordError` naming it; the writer then writes nothing more, so the
file stays a clean prefix: its whole ticks play with ``partial=True``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import struct
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

import xxhash
import zstandard

from zswapd.closing import Closing
from zswapd.errors import ConfigError
from zswapd.shadows import MAX_PROCESSES_TOTAL
from zswapd.timeline import Event, EventKind, ProcessScan, TickEnd

__all__ = [
    "ENDED_HOWS",
    "EVENTS_PER_FRAME",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_FRAME",
    "MAX_FRAME_EVENTS",
    "MAX_JSON",
    "MAX_PROCESSES",
    "MAX_T",
    "MAX_WHY",
    "FrameType",
    "RecordError",
    "RecordReader",
    "RecordWriter",
    "check_ended",
    "cut_short",
]

PAGE_SIZE = 4096
MAGIC = b"ZSWAPREC"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sI")
_FRAME = struct.Struct("<BII")  # type, length, crc32
_EVENT = struct.Struct("<BIQI")  # kind, pid, address, ref
_U32 = struct.Struct("<I")
NO_REF = 0xFFFFFFFF

# A frame is read whole before its CRC is checked: no frame of any type may
# claim more than this (each type has a smaller cap of its own, _MAX_LENGTH).
MAX_FRAME = 16 << 20
# A JSON frame (header, tick, end) is parsed whole: a megabyte is thousands of
# processes' scans, far beyond a real tick.
MAX_JSON = 1 << 20
# A page compressed by zstd grows by at most a few hundred bytes over 4096.
MAX_CONTENT_FRAME = _U32.size + 2 * PAGE_SIZE
# Distinct pids a record may name: as many as the daemon shows across all its
# shadows' reports.  A replay keeps figures for each process it has seen, and
# with --timeline makes them at every tick: this is what bounds that.
MAX_PROCESSES = MAX_PROCESSES_TOTAL
# Events buffered by the writer before an EVENTS frame is written (68 KiB).
EVENTS_PER_FRAME = 4096
# What a reader takes in one EVENTS frame: its payload is read whole (1.1 MB
# at most, whatever its length claims), its events decoded one by one.
MAX_FRAME_EVENTS = 1 << 16
MAX_SCANS = 1 << 16
# A tick's time, seconds since the recording began: a century at most (a
# replay at recorded speed sleeps until it).
MAX_T = float(100 * 365 * 86400)
MAX_COMM = 64
_ZSTD_LEVEL = 3


class FrameType:
    """The frame types (u8 on disk)."""

    HEADER = 1
    CONTENT = 2
    EVENTS = 3
    TICK = 4
    END = 5


_KINDS = {int(k) for k in EventKind}
_NAMES = {1: "a header", 2: "a content", 3: "an events", 4: "a tick", 5: "an end"}
# Each type's longest frame, checked before a byte of its payload is read.
_MAX_LENGTH = {
    FrameType.HEADER: MAX_JSON,
    FrameType.CONTENT: MAX_CONTENT_FRAME,
    FrameType.EVENTS: _U32.size + MAX_FRAME_EVENTS * _EVENT.size,
    FrameType.TICK: MAX_JSON,
    FrameType.END: MAX_JSON,
}


class RecordError(ConfigError):
    """A record file that cannot be written or read: one line, saying what is
    wrong and where (``FILE: truncated after tick 12 ...``).

    Attributes:
        whole_ticks: for a file cut short, the whole ticks before the cut
            (what ``partial=True`` plays); None otherwise.
    """

    code = "bad_record"

    def __init__(self, message: str, whole_ticks: int | None = None) -> None:
        super().__init__(message)
        self.whole_ticks = whole_ticks


# -- encoding -------------------------------------------------------------------


def _frame_crc(head: bytes, payload: bytes) -> int:
    """The CRC a frame carries: over its type and length (``head[:5]``), then its payload."""
    return zlib.crc32(payload, zlib.crc32(head[:5]))


def _frame(kind: int, payload: bytes) -> bytes:
    head = struct.pack("<BI", kind, len(payload))
    return head + _U32.pack(_frame_crc(head, payload)) + payload


def _json(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_JSON:
        raise ValueError(f"a record's JSON frame is at most {MAX_JSON} bytes, not {len(data)}")
    return data


def _scan_dict(scan: ProcessScan) -> dict[str, Any]:
    return {
        "pid": scan.pid,
        "comm": scan.comm,
        "resident_pages": scan.resident_pages,
        "scanned_bytes": scan.scanned_bytes,
        "scan_seconds": scan.scan_seconds,
        "exited": scan.exited,
    }


# -- decoding (every check a hostile file needs) ----------------------------------


class _Where:
    """Where the reader is, for error messages."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.frame = 0
        self.offset = 0

    def error(self, what: str) -> RecordError:
        return RecordError(f"{self.path}: frame {self.frame} at offset {self.offset}: {what}")


def _int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


# How a shadow's run ended (the summary's ``ended.how``).  "complete": it
# stopped as asked (a signal, --duration, every process gone); any other: its
# run was cut short, the record's last tick being the last it saw.  A reader
# takes any short identifier, so that a later writer may add one.
ENDED_HOWS = ("complete", "pool_removed", "daemon_unreachable", "interrupted", "failed")
_HOW = re.compile(r"[a-z][a-z_]{0,31}")
MAX_WHY = 1000


def check_ended(ended: Any) -> str | None:
    """What is wrong with a summary's ``ended`` (None: nothing).

    ``{"how": str, "t": seconds or null, "why": str}``: ``how`` one of
    :data:`ENDED_HOWS` (or any short identifier: a later writer's); ``t`` when
    the end was found, on the ticks' clock, null if before the first tick;
    ``why`` a line of at most :data:`MAX_WHY` characters.  Other keys are
    left to later writers.
    """
    if not isinstance(ended, dict):
        return "the summary's ended is not an object"
    how, t, why = ended.get("how"), ended.get("t"), ended.get("why")
    if not isinstance(how, str) or not _HOW.fullmatch(how):
        return "the summary's ended.how is not a short identifier"
    if "t" not in ended:  # null says "before the first tick"; absent says nothing
        return "the summary's ended.t is missing (null: before the first tick)"
    if t is not None and not (_finite(t) and t <= MAX_T):
        return "the summary's ended.t is not a time in seconds or null"
    if not isinstance(why, str) or len(why) > MAX_WHY or "\n" in why:
        return f"the summary's ended.why is not a line of at most {MAX_WHY} characters"
    return None


def cut_short(ended: dict[str, Any] | None) -> str | None:
    """One line saying that a recorded run was cut short, and why; None if it
    ended as asked, or if the record does not say (one written before
    ``ended`` existed)."""
    if ended is None or ended.get("how") == "complete":
        return None
    t = ended.get("t")
    when = "before its first tick" if t is None else f"at t={t:.1f}s"
    return (
        f"the recording was cut short {when} ({ended['how']}): {ended['why']}; "
        "its figures stop at its last tick"
    )


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two readers of one file must not disagree on its figures: Python keeps a
    # repeated key's last value, other JSON readers its first.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    # NaN and Infinity are no JSON (the writer refuses them: allow_nan=False);
    # taken, they would come out of a replay's --json for a strict reader to choke on.
    raise ValueError(f"{name} is not JSON")


def _decode_json(payload: bytes, where: _Where, what: str) -> dict[str, Any]:
    if len(payload) > MAX_JSON:
        raise where.error(f"{what} of {len(payload)} bytes, more than {MAX_JSON}")
    try:
        obj = json.loads(payload, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise where.error(f"{what} names {str(exc)[:40]!r} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise where.error(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise where.error(f"{what} is not a JSON object")
    return obj


def _decode_scan(raw: Any, where: _Where) -> ProcessScan:
    if not isinstance(raw, dict):
        raise where.error("a tick's scan is not an object")
    keys = ("pid", "comm", "resident_pages", "scanned_bytes", "scan_seconds", "exited")
    values: list[Any] = [raw.get(k) for k in keys]
    pid, comm, resident, scanned, seconds, exited = values
    ok = (
        _int(pid, 1, 0xFFFFFFFF)
        and isinstance(comm, str)
        and len(comm) <= MAX_COMM
        and _int(resident, 0, 1 << 52)
        and _int(scanned, 0, 1 << 63)
        and _finite(seconds)
        and isinstance(exited, bool)
    )
    if not ok:
        raise where.error(f"a tick's scan is malformed: {json.dumps(raw)[:120]}")
    return ProcessScan(pid, comm, resident, scanned, float(seconds), exited)


def _decode_tick(payload: bytes, where: _Where, last_t: float) -> TickEnd:
    obj = _decode_json(payload, where, "a tick's end")
    values: list[Any] = [obj.get("t"), obj.get("scans")]
    t, scans = values
    if not _finite(t) or t > MAX_T:
        raise where.error(f"a tick's t is not a number of seconds in 0..{MAX_T}: {t!r}")
    if t < last_t:
        raise where.error(f"tick t={t} comes before the previous tick's t={last_t}")
    if not isinstance(scans, list) or len(scans) > MAX_SCANS:
        raise where.error(f"a tick's scans are not a list of at most {MAX_SCANS}")
    return TickEnd(float(t), tuple(_decode_scan(s, where) for s in scans))


def _decode_events(payload: bytes, where: _Where, contents: int) -> Iterator[Event]:
    """The events of a frame, each checked as it is made (``contents``: ids
    defined so far); the count is checked against the length first."""
    if len(payload) < _U32.size:
        raise where.error("an events frame without its count")
    (count,) = _U32.unpack_from(payload)
    if count * _EVENT.size != len(payload) - _U32.size:
        raise where.error(
            f"an events frame says {count} events in {len(payload) - _U32.size} bytes "
            f"({_EVENT.size} bytes each)"
        )
    return _events_of(payload, where, contents)


def _events_of(payload: bytes, where: _Where, contents: int) -> Iterator[Event]:
    for kind, pid, address, ref in _EVENT.iter_unpack(memoryview(payload)[_U32.size :]):
        if kind not in _KINDS:
            raise where.error(f"unknown event kind {kind}")
        if pid == 0:
            raise where.error("an event of pid 0")
        if address % PAGE_SIZE:
            raise where.error(f"address {address:#x} is not page-aligned")
        if kind == EventKind.COLD:
            if ref >= contents:
                raise where.error(f"a COLD event refers to content {ref}, not defined before it")
            yield Event(EventKind.COLD, pid, address, None, ref)
        elif ref != NO_REF:
            raise where.error(f"a {EventKind(kind).name} event with a content ref {ref}")
        elif kind == EventKind.EXIT and address:
            raise where.error(f"an EXIT event with address {address:#x}")
        else:
            yield Event(EventKind(kind), pid, address)


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (reused: a context per page costs more than the page)."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def _decode_content(payload: bytes, where: _Where, expected_id: int | None) -> bytes:
    """A content frame's page (``expected_id``: the id it must have, if known)."""
    if len(payload) > MAX_CONTENT_FRAME or len(payload) < _U32.size:
        raise where.error(f"a content frame of {len(payload)} bytes")
    (ident,) = _U32.unpack_from(payload)
    if expected_id is not None and ident != expected_id:
        raise where.error(f"content id {ident} out of order (expected {expected_id})")
    data = payload[_U32.size :]
    try:
        # Checked first: zstd allocates what a frame's header claims.
        size = zstandard.frame_content_size(data)
        page, rest = b"", b""
        if size == PAGE_SIZE:
            frame = _decompressor().decompressobj()
            page, rest = frame.decompress(data), frame.unused_data
    except zstandard.ZstdError:
        raise where.error(f"content {ident} does not decompress") from None
    if len(page) != PAGE_SIZE:
        raise where.error(f"content {ident} does not decompress to {PAGE_SIZE} bytes")
    if rest:
        # Bytes after the page's frame: nothing a writer leaves, so a forgery.
        raise where.error(f"content {ident} has {len(rest)} bytes after its page")
    return page


# -- the writer -------------------------------------------------------------------


class RecordWriter(Closing):
    """Writes a timeline as it is made: events, their pages once, each tick's end.

    Buffered: bytes go to the file at each tick's end (and when the buffer
    passes a MiB), and are fsynced at :meth:`close`.  Each distinct page costs
    the writer one entry of a digest map (about 130 bytes: an xxh3-128 int
    key, its id, the dict's slot) and 8 bytes of offset, for the recording's
    whole life.

    A write the OS refuses (a full disk, EIO) is a :class:`RecordError`
    naming the file, and the writer is *failed*: it writes nothing more, not
    even at :meth:`close`, so the file ends at the last bytes the OS took, a
    record cut short whose whole ticks a reader plays with ``partial=True``.
    """

    _FLUSH_BYTES = 1 << 20

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path
        self._buf = bytearray()
        self._written = 0  # bytes already handed to the OS
        self._events = bytearray()
        self._n_events = 0
        self._pids: set[int] = set()
        self._exited: set[int] = set()
        self._failed: RecordError | None = None
        self._ids: dict[int, int] = {}
        self._offsets = array("Q")
        self._zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True)
        self._last_t = 0.0
        self._closed = False
        self.ticks_count = 0

    @classmethod
    def create(cls, path: str, header: dict[str, Any]) -> RecordWriter:
        """A new record file at ``path`` (0600), its header written.

        Raises:
            RecordError: the file exists already, or cannot be created or
                written (then it is removed: nothing half made).
            ValueError: a header that is not a JSON object of at most MAX_JSON bytes.
        """
        if not isinstance(header, dict):
            raise ValueError("a record's header is a dict")
        payload = _json(header)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise RecordError(f"{path}: exists already (a record is never overwritten)") from None
        except OSError as exc:
            raise RecordError(f"{path}: cannot create: {exc.strerror}") from None
        writer = cls(fd, path)
        writer._buf += _PREAMBLE.pack(MAGIC, FORMAT_VERSION)
        writer._buf += _frame(FrameType.HEADER, payload)
        try:
            writer._flush()
        except RecordError:
            writer._closed = True
            os.close(fd)
            with contextlib.suppress(OSError):  # ours (O_EXCL): without its header, nothing
                os.unlink(path)
            raise
        return writer

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the record is closed")
        if self._failed is not None:
            raise RecordError(str(self._failed))

    def _flush(self) -> None:
        if self._failed is not None:
            raise RecordError(str(self._failed))
        done = 0
        try:
            with memoryview(self._buf) as view:
                while done < len(view):
                    done += os.write(self._fd, view[done:])
        except OSError as exc:
            # What the OS took stays; nothing is written after it (a retry
            # would write a frame's start twice): the file is a clean prefix.
            self._failed = RecordError(f"{self.path}: write failed: {exc.strerror}")
            raise self._failed from None
        finally:
            self._written += done
            del self._buf[:done]

    def _count_pid(self, pid: int) -> None:
        if pid not in self._pids:
            if len(self._pids) >= MAX_PROCESSES:
                raise ValueError(f"a record names at most {MAX_PROCESSES} processes")
            self._pids.add(pid)

    def _put(self, frame: bytes) -> None:
        self._buf += frame
        if len(self._buf) >= self._FLUSH_BYTES:
            self._flush()

    def _flush_events(self) -> None:
        if self._n_events:
            self._put(_frame(FrameType.EVENTS, _U32.pack(self._n_events) + self._events))
            self._events.clear()
            self._n_events = 0

    def _content(self, data: bytes) -> int:
        digest = xxhash.xxh3_128_intdigest(data)
        ident = self._ids.get(digest)
        if ident is None:
            ident = self._ids[digest] = len(self._offsets)
            self._offsets.append(self._written + len(self._buf))
            self._put(_frame(FrameType.CONTENT, _U32.pack(ident) + self._zstd.compress(data)))
        return ident

    def events(self, events: Iterable[Event]) -> Iterator[Event]:
        """Write each event as it passes, and hand it on.

        ``COLD`` events come back with ``ref`` = their content id (their bytes
        kept), so a page waiting for room can be had again with :meth:`page`.

        Raises:
            ValueError: a ``COLD`` event without its 4096 bytes, an address
                not page-aligned, a pid outside 1..2**32-1, a pid past the
                MAX_PROCESSES the record may name.
            RecordError: the file could not be written (see the class).
        """
        self._check_open()
        for e in events:
            bad = e.kind not in _KINDS or not 1 <= e.pid <= 0xFFFFFFFF
            bad = bad or e.address % PAGE_SIZE != 0 or e.address >> 64 != 0
            if bad or (e.kind == EventKind.EXIT and e.address):
                raise ValueError(f"event {e.kind!r} pid {e.pid} address {e.address:#x}")
            if e.pid in self._exited:
                raise ValueError(f"pid {e.pid} named after its EXIT")
            if e.kind == EventKind.EXIT:
                self._exited.add(e.pid)
            self._count_pid(e.pid)
            ref = NO_REF
            if e.kind == EventKind.COLD:
                if e.data is None or len(e.data) != PAGE_SIZE:
                    raise ValueError(f"a COLD event needs its page's {PAGE_SIZE} bytes")
                ref = self._content(bytes(e.data))
                e = Event(e.kind, e.pid, e.address, e.data, ref)
            self._events += _EVENT.pack(e.kind, e.pid, e.address, ref)
            self._n_events += 1
            if self._n_events >= EVENTS_PER_FRAME:
                self._flush_events()
            yield e

    def page(self, ref: int) -> bytes:
        """The bytes of content ``ref``, read back from the file.

        Raises:
            RecordError: the file could not be written or read back.
        """
        self._check_open()
        if not 0 <= ref < len(self._offsets):
            raise ValueError(f"no content {ref} in {self.path}")
        offset = self._offsets[ref]
        if offset >= self._written:
            self._flush()
        return _read_content(self._fd, self.path, offset, ref)

    def end_tick(self, end: TickEnd) -> None:
        """Close a tick: its events, then its end, handed to the OS.

        Raises:
            ValueError: a tick a reader would refuse (time going back, a
                scan malformed, a pid past MAX_PROCESSES).
            RecordError: the file could not be written (see the class).
        """
        self._check_open()
        if not (math.isfinite(end.t) and end.t >= self._last_t):
            raise ValueError(f"tick t={end.t} comes before the previous one (t={self._last_t})")
        payload = _json({"t": end.t, "scans": [_scan_dict(s) for s in end.scans]})
        try:  # never write what a reader would refuse (a comm too long, say)
            _decode_tick(payload, _Where(self.path), self._last_t)
        except RecordError as exc:
            raise ValueError(str(exc)) from None
        alive = [s.pid for s in end.scans if s.pid in self._exited and not s.exited]
        if alive:
            raise ValueError(f"pid {alive[0]} scanned alive after its EXIT")
        new = {s.pid for s in end.scans} - self._pids
        if len(self._pids) + len(new) > MAX_PROCESSES:
            raise ValueError(f"a record names at most {MAX_PROCESSES} processes")
        self._pids |= new
        self._last_t = end.t
        self._flush_events()
        self._put(_frame(FrameType.TICK, payload))
        self._flush()
        self.ticks_count += 1

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Write the end frame (``summary``), flush, fsync and close.

        Events after the last :meth:`end_tick` are written but, belonging to
        no whole tick, never played.  A failed writer only closes its file
        (no end frame: a record cut short).  Safe to call twice.

        Raises:
            RecordError: the file could not be written, synced or closed.
        """
        if self._closed:
            return
        summary = dict(summary or {})
        if "ended" in summary and (wrong := check_ended(summary["ended"])) is not None:
            raise ValueError(wrong)
        try:
            if self._failed is None:
                self._flush_events()
                self._put(_frame(FrameType.END, _json(summary)))
                self._flush()
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    raise RecordError(f"{self.path}: write failed: {exc.strerror}") from None
        finally:
            self._closed = True
            try:
                os.close(self._fd)
            except OSError as exc:  # NFS reports a failed write here
                raise RecordError(f"{self.path}: write failed: {exc.strerror}") from None


# -- the reader -------------------------------------------------------------------


def _pread(fd: int, n: int, offset: int, path: str) -> bytes:
    """``os.pread``, its failure (EIO, a file on a vanished mount) said with the path."""
    try:
        return os.pread(fd, n, offset)
    except OSError as exc:
        raise RecordError(f"{path}: read failed: {exc.strerror}") from None


def _read_content(fd: int, path: str, offset: int, ref: int) -> bytes:
    """The page of the content frame at ``offset`` (checked again: the file may
    have changed since it was validated)."""
    where = _Where(path)
    where.offset = offset
    head = _pread(fd, _FRAME.size, offset, path)
    if len(head) < _FRAME.size:
        raise where.error(f"content {ref} is no longer there (the file shrank)")
    kind, length, crc = _FRAME.unpack(head)
    if kind != FrameType.CONTENT or length > MAX_CONTENT_FRAME:
        raise where.error(f"content {ref} is no longer there (the file changed)")
    payload = _pread(fd, length, offset + _FRAME.size, path)
    if len(payload) != length or _frame_crc(head, payload) != crc:
        raise where.error(f"content {ref}: CRC mismatch (the file changed)")
    return _decode_content(payload, where, ref)


class _Frames:
    """The frames of a record, read in order from its descriptor, each CRC-checked.

    Yields (type, payload); a cut yields nothing more and sets ``cut`` (the
    file ends inside or before a frame).  With ``only``, frames of other types
    are stepped over unread (their length is still checked).  Reads are
    ``pread`` at an offset of its own, so that several may walk one file
    description at once (a replay reads ahead to each tick's end).
    """

    # Read ahead a MiB at a time: a tick's end is a few dozen bytes.
    _CHUNK = 1 << 20

    def __init__(self, fd: int, path: str, only: int | None = None) -> None:
        self.where = _Where(path)
        self._fd = fd
        self._only = only
        self._buf = b""
        self._base = 0  # the file offset of _buf[0]
        self.cut = False

    def close(self) -> None:
        self._buf = b""

    def _read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the file)."""
        at = offset - self._base
        if at >= 0 and at + n <= len(self._buf):
            return self._buf[at : at + n]
        if n >= self._CHUNK:
            return _pread(self._fd, n, offset, self.where.path)
        self._buf, self._base = _pread(self._fd, self._CHUNK, offset, self.where.path), offset
        return self._buf[:n]

    def preamble(self) -> None:
        raw = self._read(0, _PREAMBLE.size)
        path = self.where.path
        if len(raw) < _PREAMBLE.size or raw[:8] != MAGIC:
            raise RecordError(f"{path}: not a zswapd record")
        (version,) = _U32.unpack_from(raw, 8)
        if version > FORMAT_VERSION:
            raise RecordError(
                f"{path}: record format version {version} is newer than this zswapd reads "
                f"({FORMAT_VERSION}): replay it with a newer zswapd"
            )
        if version < 1:
            raise RecordError(f"{path}: record format version {version} does not exist")
        self.where.offset = _PREAMBLE.size

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        where = self.where
        while True:
            head = self._read(where.offset, _FRAME.size)
            if len(head) < _FRAME.size:
                self.cut = True
                return
            kind, length, crc = _FRAME.unpack(head)
            if not FrameType.HEADER <= kind <= FrameType.END:
                raise where.error(f"unknown frame type {kind}")
            if length > MAX_FRAME:
                raise where.error(
                    f"claims {length} bytes, more than the {MAX_FRAME >> 20} MiB a frame may hold"
                )
            if length > _MAX_LENGTH[kind]:
                raise where.error(
                    f"{_NAMES[kind]} frame of {length} bytes, more than {_MAX_LENGTH[kind]}"
                )
            if self._only is None or kind == self._only:
                payload = self._read(where.offset + _FRAME.size, length)
                if len(payload) < length:
                    self.cut = True
                    return
                if _frame_crc(head, payload) != crc:
                    raise where.error("CRC mismatch")
                yield kind, payload
            where.frame += 1
            where.offset += _FRAME.size + length


class _TickEvents:
    """The events of a record's ticks, in order, a frame at a time."""

    def __init__(self, frames: _Frames) -> None:
        self._frames = frames
        self._iter = iter(frames)
        self._contents = 0  # content ids defined so far: what a COLD may refer to

    def tick(self, end: bytes) -> Iterator[Event]:
        """The events up to the next TICK frame, which must be ``end`` (the
        payload read ahead)."""
        where = self._frames.where
        for kind, payload in self._iter:
            if kind == FrameType.CONTENT:
                self._contents += 1
            elif kind == FrameType.EVENTS:
                yield from _decode_events(payload, where, self._contents)
            elif kind == FrameType.TICK:
                if payload != end:
                    raise where.error("a tick's end changed while being played")
                return
        raise RecordError(f"{where.path}: changed while being played (it shrank)")


class RecordReader(Closing):
    """A record, checked whole, to be played tick by tick.

    Attributes:
        header: the recording's settings (the HEADER frame).
        summary: its summary (the END frame; empty for a file cut short).
        ticks_count: the whole ticks it holds (those :meth:`ticks` yields).
        contents_count: distinct pages.
        cold_events: COLD events in those ticks (what a pool could hold at
            most at once: replay sizes a backing file by it).
        complete: whether the file has its END frame.
        ended: how the recorded run ended (the summary's ``ended``, checked:
            :func:`check_ended`); None if the file does not say (cut short,
            or written before zswapd recorded it).
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path
        self.header: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.ticks_count = 0
        self.cold_events = 0
        self.complete = False
        self.ended: dict[str, Any] | None = None
        # Where each content frame starts: the whole of the reader's memory.
        self._offsets = array("Q")
        self._closed = False

    @classmethod
    def open(cls, path: str, *, partial: bool = False) -> RecordReader:
        """Open ``path`` and check all of it (one pass) before anything is played.

        Args:
            partial: accept a file cut short (no END frame): its whole ticks
                are played, the rest is not.

        Raises:
            RecordError: not a record, a newer version, a frame damaged or
                malformed, cut short (unless ``partial``), unreadable.
        """
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block us
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise RecordError(f"{path}: cannot read: {exc.strerror}") from None
        reader = cls(fd, path)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise RecordError(f"{path}: is a directory, not a zswapd record")
            if not stat.S_ISREG(mode):
                raise RecordError(f"{path}: not a regular file, not a zswapd record")
            reader._validate(partial)
        except OSError as exc:
            reader.close()
            raise RecordError(f"{path}: cannot read: {exc.strerror}") from None
        except BaseException:
            reader.close()
            raise
        return reader

    def _validate(self, partial: bool) -> None:
        frames = _Frames(self._fd, self.path)
        try:
            frames.preamble()
            where = frames.where
            last_t, cold = 0.0, 0
            pids: set[int] = set()
            # A pid's figures end at its EXIT: one named again would credit a new
            # process's (a reused pid's) swap-outs and refaults to the dead one.
            exited: set[int] = set()
            for kind, payload in frames:
                if where.frame == 0:
                    if kind != FrameType.HEADER:
                        raise where.error("the first frame is not the header")
                    self.header = _decode_json(payload, where, "the header")
                elif kind == FrameType.HEADER:
                    raise where.error("a second header")
                elif self.complete:
                    raise where.error("a frame after the end frame")
                elif kind == FrameType.CONTENT:
                    _decode_content(payload, where, len(self._offsets))
                    if len(self._offsets) >= NO_REF:
                        raise where.error("more contents than ids")
                    self._offsets.append(where.offset)
                elif kind == FrameType.EVENTS:
                    for e in _decode_events(payload, where, len(self._offsets)):
                        cold += e.kind == EventKind.COLD
                        if e.pid in exited:
                            raise where.error(f"pid {e.pid} named after its EXIT")
                        if e.kind == EventKind.EXIT:
                            exited.add(e.pid)
                        if e.pid not in pids:
                            self._count_pid(pids, e.pid)
                elif kind == FrameType.TICK:
                    end = _decode_tick(payload, where, last_t)
                    for scan in end.scans:
                        if scan.pid in exited and not scan.exited:
                            raise where.error(f"pid {scan.pid} scanned alive after its EXIT")
                        if scan.pid not in pids:
                            self._count_pid(pids, scan.pid)
                    last_t = end.t
                    self.ticks_count += 1
                    self.cold_events += cold
                    cold = 0
                else:  # END
                    self.summary = _decode_json(payload, where, "the summary")
                    if "ended" in self.summary:
                        wrong = check_ended(self.summary["ended"])
                        if wrong is not None:
                            raise where.error(wrong)
                        self.ended = self.summary["ended"]
                    self.complete = True
            if where.frame == 0:
                raise RecordError(f"{self.path}: truncated before its header")
        finally:
            frames.close()
        if not self.complete and not partial:
            n = self.ticks_count
            raise RecordError(
                f"{self.path}: truncated after tick {n} (no end frame: the recording was "
                f"cut short, its shadow killed?); zswapd replay --partial plays its "
                f"{n} whole tick{'s' if n != 1 else ''}",
                whole_ticks=n,
            )

    def _count_pid(self, pids: set[int], pid: int) -> None:
        if len(pids) >= MAX_PROCESSES:
            raise RecordError(
                f"{self.path}: names more than {MAX_PROCESSES} processes "
                f"(tick {self.ticks_count + 1})"
            )
        pids.add(pid)

    @property
    def contents_count(self) -> int:
        return len(self._offsets)

    def ticks(self) -> Iterator[tuple[Iterator[Event], TickEnd]]:
        """Each whole tick: its events, then its end, read again from the file
        through the same checks.

        A tick's end comes first (a replay sets its clock to it before its
        events), read ahead; its events (``COLD`` ones with ``ref`` set, no
        bytes) are an iterator that reads them a frame at a time as it is
        consumed, so that no tick is ever held whole.  Consume them before
        asking for the next tick: whatever is left of them is read (and
        checked) then, unused.

        Raises:
            RecordError: the file changed since it was opened.
        """
        ahead = _Frames(self._fd, self.path, only=FrameType.TICK)
        body = _Frames(self._fd, self.path)
        try:
            ahead.preamble()
            body.preamble()
            ends, events = iter(ahead), _TickEvents(body)
            last_t = 0.0
            for _ in range(self.ticks_count):
                got = next(ends, None)  # only TICK frames come ahead
                if got is None:
                    raise RecordError(f"{self.path}: changed while being played (it shrank)")
                payload = got[1]
                end = _decode_tick(payload, ahead.where, last_t)
                last_t = end.t
                tick = events.tick(payload)
                yield tick, end
                for _ in tick:  # what the caller left: read, so the next tick starts right
                    pass
        finally:
            ahead.close()
            body.close()

    def page(self, ref: int) -> bytes:
        """The 4096 bytes of content ``ref``.

        Raises:
            RecordError: no such content, or the file changed since it was opened.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the record is closed")
        if not 0 <= ref < len(self._offsets):
            raise RecordError(f"{self.path}: no content {ref}")
        return _read_content(self._fd, self.path, self._offsets[ref], ref)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
