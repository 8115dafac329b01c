"""The record file (zswapd/record.py): what is written is read back, and a
damaged, forged or foreign file is refused whole, in one line."""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from tests.zswapd.daemon import CHECKOUT
from tests.zswapd.helpers import random_page, same_page, text_page
from tests.zswapd.timelines import Tick, sample_timeline, write_record
from zswapd.record import (
    FORMAT_VERSION,
    MAGIC,
    MAX_PROCESSES,
    FrameType,
    RecordError,
    RecordReader,
    RecordWriter,
    cut_short,
)
from zswapd.shadows import MAX_PROCESSES_TOTAL
from zswapd.timeline import Event, EventKind, ProcessScan, TickEnd

PAGE = 4096
NO_REF = 0xFFFFFFFF


# -- building files by hand (what a hostile user can write) ------------------------


def frame(kind: int, payload: bytes) -> bytes:
    head = struct.pack("<BI", kind, len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def preamble(version: int = FORMAT_VERSION) -> bytes:
    return MAGIC + struct.pack("<I", version)


def header(obj: dict[str, object] | None = None) -> bytes:
    return frame(FrameType.HEADER, json.dumps(obj or {}).encode())


def content(ident: int, page: bytes) -> bytes:
    return frame(FrameType.CONTENT, struct.pack("<I", ident) + zstandard.compress(page))


def events(*items: tuple[int, int, int, int], count: int | None = None) -> bytes:
    body = b"".join(struct.pack("<BIQI", *e) for e in items)
    n = len(items) if count is None else count
    return frame(FrameType.EVENTS, struct.pack("<I", n) + body)


def tick(t: object, scans: object = ()) -> bytes:
    return frame(FrameType.TICK, json.dumps({"t": t, "scans": list(scans)}).encode())  # type: ignore[call-overload]


def end(summary: dict[str, object] | None = None) -> bytes:
    return frame(FrameType.END, json.dumps(summary or {}).encode())


def frame_ends(data: bytes) -> list[tuple[int, int]]:
    """(type, offset where it ends) of each frame of a well-formed record."""
    out, at = [], len(preamble())
    while at < len(data):
        kind, length, _ = struct.unpack_from("<BII", data, at)
        at += 9 + length
        out.append((kind, at))
    return out


def refused(path: Path, *words: str, partial: bool = False) -> RecordError:
    with pytest.raises(RecordError) as info:
        RecordReader.open(str(path), partial=partial)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message
    return info.value


def read_all(path: Path, partial: bool = False) -> list[Tick]:
    with RecordReader.open(str(path), partial=partial) as reader:
        return [(list(evs), e) for evs, e in reader.ticks()]


def as_read(written: list[Event]) -> list[Event]:
    """What a reader gives back of events the writer handed on: no bytes, a ref on COLD."""
    return [Event(e.kind, e.pid, e.address, None, e.ref) for e in written]


# -- round trip -------------------------------------------------------------------

_PAGES = [text_page(i) for i in range(4)] + [random_page(i) for i in range(3)]
_PAGES += [same_page(b"\0" * 8), same_page(b"\x01" * 8)]
_pids = st.integers(1, 2**32 - 1)
_addresses = st.integers(0, 2**52 - 1).map(lambda n: n * PAGE)
_event = st.one_of(
    st.builds(
        lambda pid, a, i: Event(EventKind.COLD, pid, a, _PAGES[i]),
        _pids,
        _addresses,
        st.integers(0, len(_PAGES) - 1),
    ),
    st.builds(
        lambda k, pid, a: Event(k, pid, a),
        st.sampled_from([EventKind.CHANGED, EventKind.GONE]),
        _pids,
        _addresses,
    ),
    st.builds(lambda pid: Event(EventKind.EXIT, pid), _pids),
)
_scan = st.builds(
    ProcessScan,
    _pids,
    st.text(max_size=64),
    st.integers(0, 2**40),
    st.integers(0, 2**62),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_ticks = st.lists(
    st.tuples(
        st.lists(_event, max_size=40),
        st.floats(0, 1e4, allow_nan=False, allow_infinity=False),
        st.lists(_scan, max_size=3).map(tuple),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(
    _ticks,
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
)
def test_what_is_written_is_read_back(
    raw: list[tuple[list[Event], float, tuple[ProcessScan, ...]]], meta: dict[str, object]
) -> None:
    t, timeline, exited = 0.0, [], set()
    for evs, step, scans in raw:
        t += step
        kept = []  # a pid's figures end at its EXIT: nothing names it after
        for e in evs:
            if e.pid not in exited:
                kept.append(e)
                if e.kind == EventKind.EXIT:
                    exited.add(e.pid)
        alive = tuple(s for s in scans if s.exited or s.pid not in exited)
        timeline.append((kept, TickEnd(t, alive)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.rec"
        written = write_record(path, timeline, {"config": {}, **meta}, {"figures": meta})
        with RecordReader.open(str(path)) as reader:
            assert reader.header == {"config": {}, **meta}
            assert reader.summary == {"figures": meta}
            assert reader.ticks_count == len(timeline) and reader.complete
            back = [(list(evs), end) for evs, end in reader.ticks()]
            assert [end for _, end in back] == [end for _, end in timeline]
            assert [evs for evs, _ in back] == [as_read(w) for w in written]
            for w in written:
                for e in w:
                    if e.kind == EventKind.COLD:
                        assert e.data is not None and reader.page(e.ref) == e.data
            distinct = {e.data for w in written for e in w if e.kind == EventKind.COLD}
            assert reader.contents_count == len(distinct)  # each page stored once


class WriterMachine(RuleBasedStateMachine):
    """A writer fed events and ticks at random: every page it was given can be
    fetched back from it at any moment (the live shadow's retry), and the file
    reads back as written, whole or cut after any tick."""

    refs = Bundle("refs")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "m.rec"
        self.writer = RecordWriter.create(str(self.path), {"machine": True})
        self.pages: dict[int, bytes] = {}
        self.ticks: list[Tick] = []
        self.pending: list[Event] = []
        self.t = 0.0
        self.exited: set[int] = set()

    @rule(target=refs, i=st.integers(0, len(_PAGES) - 1), pid=_pids, address=_addresses)
    def cold(self, i: int, pid: int, address: int) -> int:
        assume(pid not in self.exited)
        (e,) = self.writer.events([Event(EventKind.COLD, pid, address, _PAGES[i])])
        assert e.data == _PAGES[i] and e.ref >= 0
        assert self.pages.setdefault(e.ref, _PAGES[i]) == _PAGES[i]
        self.pending.append(e)
        return e.ref

    @rule(e=_event.filter(lambda e: e.kind != EventKind.COLD))
    def other(self, e: Event) -> None:
        if e.pid in self.exited:  # a reused pid would be blamed on the dead process
            with pytest.raises(ValueError, match="after its EXIT"):
                list(self.writer.events([e]))
            return
        if e.kind == EventKind.EXIT:
            self.exited.add(e.pid)
        (out,) = self.writer.events([e])
        assert out == e
        self.pending.append(e)

    @rule(ref=refs)
    def fetch_back(self, ref: int) -> None:
        assert self.writer.page(ref) == self.pages[ref]

    @rule(step=st.floats(0, 100, allow_nan=False))
    def end_tick(self, step: float) -> None:
        self.t += step
        end = TickEnd(self.t, (ProcessScan(7, "m", 1, 2, 0.5),))
        self.writer.end_tick(end)
        self.ticks.append((as_read(self.pending), end))
        self.pending = []

    @invariant()
    def whole_ticks_are_on_disk(self) -> None:
        # What end_tick handed to the OS reads back as a file cut short.
        assert read_all(self.path, partial=True) == self.ticks

    def teardown(self) -> None:
        self.writer.close({"n": len(self.ticks)})
        assert read_all(self.path) == self.ticks
        with RecordReader.open(str(self.path)) as reader:
            assert reader.summary == {"n": len(self.ticks)}
        self.tmp.cleanup()


TestWriterMachine = WriterMachine.TestCase
TestWriterMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


# -- the writer ---------------------------------------------------------------------


def test_a_record_is_new_and_private(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    write_record(path, [])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(RecordError, match="exists already"):
        RecordWriter.create(str(path), {})
    assert path.read_bytes() == before
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RecordError):
        RecordWriter.create(str(tmp_path / "link"), {})
    assert not (tmp_path / "elsewhere").exists()


def test_the_writer_refuses_what_a_reader_would(tmp_path: Path) -> None:
    with RecordWriter.create(str(tmp_path / "r.rec"), {}) as writer:
        with pytest.raises(ValueError, match="4096 bytes"):
            list(writer.events([Event(EventKind.COLD, 1, 0, b"short")]))
        with pytest.raises(ValueError):
            list(writer.events([Event(EventKind.GONE, 1, 100)]))  # not page-aligned
        with pytest.raises(ValueError):
            list(writer.events([Event(EventKind.GONE, 0, 0)]))  # no pid 0
        writer.end_tick(TickEnd(5.0, ()))
        with pytest.raises(ValueError, match="comes before"):
            writer.end_tick(TickEnd(4.0, ()))
        with pytest.raises(ValueError, match="malformed"):
            writer.end_tick(TickEnd(6.0, (ProcessScan(1, "x" * 65, 0, 0, 0.0),)))
    assert read_all(tmp_path / "r.rec") == [([], TickEnd(5.0, ()))]


def test_the_writer_names_at_most_max_processes(tmp_path: Path) -> None:
    assert MAX_PROCESSES == MAX_PROCESSES_TOTAL == 4096  # the daemon's own cap, not a copy
    with RecordWriter.create(str(tmp_path / "r.rec"), {}) as writer:
        gone = [Event(EventKind.GONE, pid, 0) for pid in range(1, MAX_PROCESSES)]
        list(writer.events(gone))
        scans = (ProcessScan(1, "a", 0, 0, 0.0), ProcessScan(MAX_PROCESSES, "b", 0, 0, 0.0))
        writer.end_tick(TickEnd(1.0, scans))  # the 4096th, in a scan
        with pytest.raises(ValueError, match="at most 4096 processes"):
            list(writer.events([Event(EventKind.GONE, MAX_PROCESSES + 1, 0)]))
        with pytest.raises(ValueError, match="at most 4096 processes"):
            writer.end_tick(TickEnd(2.0, (ProcessScan(MAX_PROCESSES + 1, "c", 0, 0, 0.0),)))
        list(writer.events([Event(EventKind.EXIT, 7)]))  # a pid named already
        writer.end_tick(TickEnd(2.0, scans))
    with RecordReader.open(str(tmp_path / "r.rec")) as reader:
        assert reader.ticks_count == 2


def test_a_page_is_fetched_back_before_its_tick_ends(tmp_path: Path) -> None:
    with RecordWriter.create(str(tmp_path / "r.rec"), {}) as writer:
        out = list(writer.events([Event(EventKind.COLD, 1, PAGE * i, _PAGES[i]) for i in range(5)]))
        assert [writer.page(e.ref) for e in out] == _PAGES[:5]


# -- refusals -------------------------------------------------------------------------


def small_timeline() -> list[Tick]:
    """Three ticks in a file of about a KiB (every byte of it is cut or flipped)."""
    scan = (ProcessScan(5, "small", 4, PAGE, 0.25),)
    cold = [Event(EventKind.COLD, 5, i * PAGE, same_page(bytes([i]) * 8)) for i in range(3)]
    return [
        ([*cold, Event(EventKind.COLD, 5, 3 * PAGE, text_page(1))], TickEnd(1.0, scan)),
        ([Event(EventKind.CHANGED, 5, 0), Event(EventKind.GONE, 5, PAGE)], TickEnd(2.0, scan)),
        ([Event(EventKind.EXIT, 5)], TickEnd(3.5, ())),
    ]


def test_every_cut_is_refused_and_partial_plays_the_whole_ticks(tmp_path: Path) -> None:
    full = tmp_path / "full.rec"
    write_record(full, small_timeline(), {"config": {}}, {"done": True})
    data = full.read_bytes()
    whole = read_all(full)
    ends = frame_ends(data)
    header_end = ends[0][1]
    boundaries = {at for _, at in ends}
    cut = tmp_path / "cut.rec"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        if n < len(preamble()):
            refused(cut, "not a zswapd record")
            continue
        if n < header_end:
            refused(cut, "truncated before its header")
            continue
        ticks = sum(1 for kind, at in ends if kind == FrameType.TICK and at <= n)
        err = refused(cut, f"truncated after tick {ticks} ", "--partial")
        assert err.whole_ticks == ticks
        if n in boundaries or n - 1 in boundaries or n % 31 == 0:
            assert read_all(cut, partial=True) == whole[:ticks]


def test_every_flipped_byte_is_refused(tmp_path: Path) -> None:
    full = tmp_path / "full.rec"
    write_record(full, small_timeline(), {"config": {}}, {})
    data = bytearray(full.read_bytes())
    bad = tmp_path / "bad.rec"
    for i in range(len(data)):
        data[i] ^= 0xFF
        bad.write_bytes(data)
        refused(bad)
        data[i] ^= 0xFF


def test_foreign_empty_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    refused(empty, "not a zswapd record")
    foreign = tmp_path / "foreign.png"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    refused(foreign, "not a zswapd record")
    refused(tmp_path, "is a directory")
    refused(tmp_path / "absent", "cannot read", "No such file")
    os.mkfifo(tmp_path / "fifo")
    refused(tmp_path / "fifo", "not a regular file")  # and does not wait for a writer
    newer = tmp_path / "newer.rec"
    newer.write_bytes(preamble(FORMAT_VERSION + 1) + header() + end())
    refused(newer, f"version {FORMAT_VERSION + 1} is newer")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    write_record(path, [])
    path.chmod(0)
    refused(path, "cannot read", "Permission denied")


PAGE_A = text_page(1)
# A process's scan as a live shadow writes it, still alive.
_SCAN_ALIVE = {
    "pid": 5,
    "comm": "x",
    "resident_pages": 0,
    "scanned_bytes": 0,
    "scan_seconds": 0.0,
    "exited": False,
}

FORGED = {
    "a COLD ref never defined": (
        [events((EventKind.COLD, 5, 0, 0))],
        "refers to content 0, not defined before it",
    ),
    "a ref past the contents": (
        [content(0, PAGE_A), events((EventKind.COLD, 5, 0, 1))],
        "refers to content 1",
    ),
    "an unknown kind": ([events((9, 5, 0, NO_REF))], "unknown event kind 9"),
    "a count that lies": (
        [events((EventKind.GONE, 5, 0, NO_REF), count=3)],
        "says 3 events in 17 bytes",
    ),
    "an address not page-aligned": (
        [events((EventKind.GONE, 5, 4097, NO_REF))],
        "0x1001 is not page-aligned",
    ),
    "pid 0": ([events((EventKind.GONE, 0, 0, NO_REF))], "pid 0"),
    "a ref on a GONE event": ([events((EventKind.GONE, 5, 0, 0))], "GONE event with a content ref"),
    "a frame claiming 4 GiB": ([struct.pack("<BII", FrameType.EVENTS, 2**32 - 1, 0)], "4294967295"),
    "an events frame past its cap": (
        [struct.pack("<BII", FrameType.EVENTS, 4 + 17 * 2**16 + 17, 0)],
        "an events frame of 1114133 bytes, more than 1114116",
    ),
    "an unknown frame type": ([frame(7, b"")], "unknown frame type 7"),
    "a content of 4095 bytes": ([content(0, bytes(4095))], "does not decompress to 4096"),
    "a content of 5000 bytes": ([content(0, bytes(5000))], "does not decompress to 4096"),
    "a content not zstd": (
        [frame(FrameType.CONTENT, struct.pack("<I", 0) + b"garbage!" * 10)],
        "does not decompress",
    ),
    "content ids out of order": ([content(3, PAGE_A)], "content id 3 out of order"),
    "time going back": ([tick(5.0), tick(4.0)], "before the previous tick"),
    "a NaN time": ([frame(FrameType.TICK, b'{"t": NaN, "scans": []}')], "not JSON"),
    "an Infinity anywhere": (
        [frame(FrameType.TICK, b'{"t": 1, "scans": [], "x": -Infinity}')],
        "not JSON",
    ),
    "bytes after a content's page": (
        [
            frame(
                FrameType.CONTENT,
                struct.pack("<I", 0) + zstandard.ZstdCompressor().compress(PAGE_A) + b"junk",
            )
        ],
        "content 0 has 4 bytes after its page",
    ),
    "a time past a century": ([tick(1e300)], "not a number of seconds in 0.."),
    "a malformed scan": ([tick(1.0, [{"pid": "x"}])], "scan is malformed"),
    "a tick not JSON": ([frame(FrameType.TICK, b"\xff{")], "not JSON"),
    "a key twice": ([frame(FrameType.TICK, b'{"t": 1, "t": 0.5, "scans": []}')], "'t' twice"),
    "a second header": ([header()], "a second header"),
    "an event after its pid's EXIT": (
        [events((EventKind.EXIT, 5, 0, NO_REF)), events((EventKind.GONE, 5, 0, NO_REF))],
        "pid 5 named after its EXIT",
    ),
    "a scan alive after its pid's EXIT": (
        [events((EventKind.EXIT, 5, 0, NO_REF)), tick(1.0, [_SCAN_ALIVE])],
        "pid 5 scanned alive after its EXIT",
    ),
    "a frame after the end": ([end(), tick(1.0)], "after the end frame"),
    "an ended that is no object": ([end({"ended": "complete"})], "ended is not an object"),
    "an ended.how not an identifier": (
        [end({"ended": {"how": "\x1b[2J", "t": 1.0, "why": "x"}})],
        "ended.how is not a short identifier",
    ),
    "an ended.t not a time": (
        [end({"ended": {"how": "failed", "t": -1, "why": "x"}})],
        "ended.t is not a time",
    ),
    "an ended without its t": (
        [end({"ended": {"how": "failed", "why": "x"}})],
        "ended.t is missing",
    ),
    "an ended.why of two lines": (
        [end({"ended": {"how": "failed", "t": 1.0, "why": "a\nb"}})],
        "ended.why is not a line",
    ),
}


def test_how_a_run_ended_is_written_and_read_back(tmp_path: Path) -> None:
    """The summary's ``ended`` (docs/record.md) round-trips, a record without
    one (an older writer's) reads as not saying, and the writer refuses one
    a reader would refuse."""
    ended = {"how": "pool_removed", "t": 1.25, "why": "pool p was removed by another client"}
    path = tmp_path / "ended.rec"
    write_record(path, small_timeline(), summary={"figures": {}, "ended": ended})
    with RecordReader.open(str(path)) as reader:
        assert reader.complete and reader.ended == ended
    old = tmp_path / "old.rec"
    write_record(old, small_timeline(), summary={"figures": {}})
    with RecordReader.open(str(old)) as reader:
        assert reader.complete and reader.ended is None
    before = {"how": "daemon_unreachable", "t": None, "why": "cannot reach it"}
    path = tmp_path / "early.rec"
    write_record(path, [], summary={"ended": before})
    with RecordReader.open(str(path)) as reader:
        assert reader.ended == before and reader.ticks_count == 0
    bad = tmp_path / "bad.rec"
    with (
        RecordWriter.create(str(bad), {}) as writer,
        pytest.raises(ValueError, match=r"ended\.how"),
    ):
        writer.close({"ended": {"how": "Bad How", "t": 0.0, "why": ""}})
    with RecordReader.open(str(bad)) as reader:  # closed by the with, without the bad end
        assert reader.complete and reader.ended is None


def test_cut_short_says_how_and_when_and_nothing_for_a_complete_run() -> None:
    assert cut_short(None) is None
    assert cut_short({"how": "complete", "t": 9.0, "why": "stopped by SIGINT"}) is None
    assert cut_short({"how": "pool_removed", "t": 1.25, "why": "pool p was removed"}) == (
        "the recording was cut short at t=1.2s (pool_removed): pool p was removed; "
        "its figures stop at its last tick"
    )
    assert cut_short({"how": "failed", "t": None, "why": "boom"}) == (
        "the recording was cut short before its first tick (failed): boom; "
        "its figures stop at its last tick"
    )


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_frames_are_refused(tmp_path: Path, case: str) -> None:
    frames, words = FORGED[case]
    path = tmp_path / "forged.rec"
    path.write_bytes(preamble() + header() + b"".join(frames) + end())
    refused(path, "frame ", " at offset ", words)


def gone_events(pids: range) -> bytes:
    """GONE events of ``pids``, in frames of at most 65,536."""
    items = [(EventKind.GONE, pid, 0, NO_REF) for pid in pids]
    return b"".join(events(*items[i : i + 2**16]) for i in range(0, len(items), 2**16))


def test_a_record_naming_more_than_max_processes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pids.rec"
    first = preamble() + header() + gone_events(range(1, 3)) + tick(1.0)
    # 4096 pids in all (two in tick 1, the rest in events and a scan of tick 2): played.
    scan = {"pid": 4096, "comm": "x", "resident_pages": 0, "scanned_bytes": 0}
    scan |= {"scan_seconds": 0.0, "exited": False}
    path.write_bytes(first + gone_events(range(3, 4096)) + tick(2.0, [scan]) + end())
    with RecordReader.open(str(path)) as reader:
        assert reader.ticks_count == 2
    # One more, in an event or in a scan: refused, saying where.
    path.write_bytes(first + gone_events(range(3, 4098)) + tick(2.0) + end())
    refused(path, f"{path}: names more than 4096 processes (tick 2)")
    many = [{**scan, "pid": pid} for pid in range(4096, 4098)]
    path.write_bytes(first + gone_events(range(3, 4096)) + tick(2.0, many) + end())
    refused(path, "names more than 4096 processes (tick 2)")


def test_a_tick_is_read_a_frame_at_a_time(tmp_path: Path) -> None:
    # One tick of 200,000 events (3.4 MB): held whole, ~18 MB of Event objects.
    n = 200_000
    path = tmp_path / "big-tick.rec"
    items = [(EventKind.CHANGED + i % 2, 7, (i // 2) * PAGE, NO_REF) for i in range(n)]
    body = b"".join(events(*items[i : i + 2**16]) for i in range(0, n, 2**16))
    path.write_bytes(preamble() + header() + body + tick(1.0) + end())
    with RecordReader.open(str(path)) as reader:
        tracemalloc.start()
        try:
            count = 0
            for tick_events, t_end in reader.ticks():
                assert t_end.t == 1.0
                count += sum(1 for _ in tick_events)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == n
    assert peak < 8 << 20  # a frame (1.1 MB) and a read-ahead chunk (1 MiB), not the tick


def test_a_first_frame_not_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "forged.rec"
    path.write_bytes(preamble() + tick(1.0) + end())
    refused(path, "the first frame is not the header")


def test_a_frame_claiming_4_gib_allocates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "forged.rec"
    path.write_bytes(preamble() + header() + struct.pack("<BII", FrameType.CONTENT, 2**32 - 1, 0))
    tracemalloc.start()
    try:
        refused(path, "more than the 16 MiB a frame may hold")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_a_file_changed_after_it_was_checked_stops_the_play(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    write_record(path, sample_timeline(9))
    with RecordReader.open(str(path)) as reader:
        data = bytearray(path.read_bytes())
        data[-20] ^= 0xFF  # in the last tick's frames
        path.write_bytes(data)  # the same inode: the reader's descriptor sees it
        with pytest.raises(RecordError, match="CRC mismatch"):
            for _ in reader.ticks():
                pass


_KILLED_WRITER = r"""
import sys
from zswapd.record import RecordWriter
from zswapd.timeline import Event, EventKind, TickEnd

writer = RecordWriter.create(sys.argv[1], {"config": {}})
for t in range(1, 4):
    cold = [Event(EventKind.COLD, 9, (t * 5000 + i) * 4096, bytes([t, i % 256]) * 2048)
            for i in range(5000)]  # more than one events frame a tick
    list(writer.events(cold))
    if t < 3:
        writer.end_tick(TickEnd(float(t), ()))
print("ticked", flush=True)  # the third tick's pages and events are out, its end is not
sys.stdin.read()
"""


def test_a_writer_killed_with_sigkill_leaves_its_whole_ticks(tmp_path: Path) -> None:
    path = tmp_path / "killed.rec"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ticked\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    err = refused(
        path, "truncated after tick 2 ", "zswapd replay --partial plays its 2 whole ticks"
    )
    assert err.whole_ticks == 2
    ticks = read_all(path, partial=True)
    assert [end.t for _, end in ticks] == [1.0, 2.0]
    assert [len(evs) for evs, _ in ticks] == [5000, 5000]


# -- a file that cannot be written -------------------------------------------------------

_FILLING_WRITER = r"""
import json, os, resource, signal, sys
from zswapd.record import RecordError, RecordReader, RecordWriter
from zswapd.timeline import Event, EventKind, TickEnd

path, limit = sys.argv[1], int(sys.argv[2])
if limit >= 0:  # a file size limit: the write past it fails (EFBIG), as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
out = {}
try:
    writer = RecordWriter.create(path, {"config": {}})
except RecordError as exc:
    out["create"] = str(exc)
    out["left"] = os.path.exists(path)
    print(json.dumps(out))
    sys.exit()
try:
    for t in range(1, 1000):  # incompressible pages: the file grows ~4 KiB a page
        list(writer.events(Event(EventKind.COLD, 9, (t * 8 + i) * 4096, os.urandom(4096))
                           for i in range(8)))
        writer.end_tick(TickEnd(float(t), ()))
except RecordError as exc:
    out["error"] = str(exc)
out["ticks"] = writer.ticks_count
try:
    writer.end_tick(TickEnd(5000.0, ()))
except RecordError as exc:
    out["again"] = str(exc)
writer.close({"unwritten": True})
try:
    RecordReader.open(path)
except RecordError as exc:
    out["whole"] = exc.whole_ticks
with RecordReader.open(path, partial=True) as reader:
    out["played"] = sum(1 for _ in reader.ticks())
print(json.dumps(out))
"""


def _filling_writer(path: Path, limit: int, *wrap: str) -> dict[str, object]:
    result = subprocess.run(
        [*wrap, sys.executable, "-c", _FILLING_WRITER, str(path), str(limit)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def _check_filled(out: dict[str, object], path: Path, reason: str) -> None:
    # One line naming the file and the OS's reason; the same again on any later
    # write; the file left a clean record cut short, its whole ticks playable.
    assert out["error"] == f"{path}: write failed: {reason}", out
    assert out["again"] == out["error"]
    assert isinstance(out["ticks"], int) and out["ticks"] > 0
    assert out["whole"] == out["played"] == out["ticks"]


def test_a_write_past_the_file_size_limit_is_a_record_error(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    _check_filled(_filling_writer(path, 200_000), path, "File too large")


def test_a_record_that_cannot_take_its_header_is_not_left(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    out = _filling_writer(path, 10)
    assert out == {"create": f"{path}: write failed: File too large", "left": False}


def _can_mount_tmpfs() -> bool:
    probe = ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def test_a_full_disk_is_a_record_error_naming_the_file(tmp_path: Path) -> None:
    if not _can_mount_tmpfs():
        pytest.skip("needs unshare -rm (a user and mount namespace) to mount a tmpfs")
    # A 256 KiB tmpfs of our own, in a mount namespace of our own: gone with it.
    full = tmp_path / "full"
    full.mkdir()
    path = full / "r.rec"
    mount = f'mount -t tmpfs -o size=256k none {full} && exec "$0" "$@"'
    out = _filling_writer(path, -1, "unshare", "-rm", "sh", "-c", mount)
    _check_filled(out, path, "No space left on device")
