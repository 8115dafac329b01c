"""``zswapd replay`` (zswapd/replay.py): a record played into pools of any
settings, the same figures every time, and the live pool's under the recorded
settings."""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import dump_process
from tests.zswapd.daemon import Daemon, one_line_failure, run_cli, start_daemon
from tests.zswapd.helpers import random_page
from tests.zswapd.test_record import (
    NO_REF,
    end,
    events,
    frame_ends,
    gone_events,
    header,
    preamble,
    tick,
)
from tests.zswapd.timelines import Tick, sample_timeline, write_record
from zswapd.cli_format import human
from zswapd.client import Client
from zswapd.config import PoolConfig
from zswapd.errors import ConfigError
from zswapd.record import FrameType, RecordError, RecordReader, RecordWriter
from zswapd.replay import Overrides, replay, replay_config
from zswapd.swapsim import ClientTarget, SwapSim
from zswapd.timeline import Event, EventKind, ProcessScan, TickEnd

PAGE = 4096


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample timeline, recorded with a zstd pool's settings."""
    path = tmp_path_factory.mktemp("rec") / "sample.rec"
    write_record(path, sample_timeline(), {"config": {"compressor": "zstd", "level": 3}})
    return path


def replay_json(*args: str) -> dict[str, Any]:
    result = run_cli("replay", "--json", *args)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return out


def one(out: dict[str, Any], pid: int) -> dict[str, Any]:
    (p,) = [p for p in out["figures"]["processes"] if p["pid"] == pid]
    return p


def test_the_same_file_and_settings_give_the_same_figures(record: Path) -> None:
    args = ("--limit", "96K", "--timeline")
    first = run_cli("replay", "--json", str(record), *args)
    second = run_cli("replay", "--json", str(record), *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # every tick's line and the end, byte for byte
    assert len(first.stdout.splitlines()) == len(sample_timeline()) + 1


def test_compressors_side_by_side_differ_as_expected(record: Path) -> None:
    lz4 = replay_json(str(record), "--compressor", "lz4")
    zstd = replay_json(str(record))
    assert lz4["config"]["compressor"] == "lz4" and lz4["config"]["level"] is None
    assert zstd["config"]["compressor"] == "zstd" and zstd["config"]["level"] == 3
    # The same pages held, in more memory under lz4.
    assert lz4["figures"]["pool"]["orig_data_size"] == zstd["figures"]["pool"]["orig_data_size"]
    assert lz4["figures"]["pool"]["compr_data_size"] > zstd["figures"]["pool"]["compr_data_size"]
    assert [one(lz4, p)["refaults_total"] for p in (1001, 1002)] == [
        one(zstd, p)["refaults_total"] for p in (1001, 1002)
    ]


def test_under_a_limit_cold_pages_wait_and_are_retried(record: Path) -> None:
    free = replay_json(str(record))
    tight = replay_json(str(record), "--limit", "48K")
    a_free, a_tight = one(free, 1001), one(tight, 1001)
    assert a_free["rejected_total"] == 0 and free["figures"]["pool"]["pool_limit_hit"] == 0
    assert a_tight["rejected_total"] > 0 and tight["figures"]["pool"]["pool_limit_hit"] > 0
    # Waiting: cold, not stored; the same pages went cold whatever the pool.
    assert a_tight["cold_pages"] > a_tight["stored_pages"]
    assert a_tight["cold_pages"] == a_free["cold_pages"] == a_free["stored_pages"]
    assert tight["figures"]["pool"]["mem_used_total"] <= 48 << 10


def test_under_a_limit_every_same_filled_page_is_still_stored(record: Path) -> None:
    """A review saw ``--limit`` store none of the same-filled pages it stored
    unlimited: they take no pool memory, and zram stores them at its limit."""
    free = replay_json(str(record))["figures"]["pool"]
    tight = replay_json(str(record), "--limit", "48K")["figures"]["pool"]
    assert tight["pool_limit_hit"] > 0 and tight["stored_pages"] < free["stored_pages"]
    assert tight["same_pages"] == free["same_pages"] > 0


def test_waiting_pages_are_stored_once_room_is_made(tmp_path: Path) -> None:
    pid, pages = 77, 40
    cold = [
        Event(EventKind.COLD, pid, i * PAGE, random_page(i)[:2048] + bytes(2048))
        for i in range(pages)
    ]
    scan = (ProcessScan(pid, "w", pages, 0, 0.0),)
    timeline: list[Tick] = [
        (cold, TickEnd(1.0, scan)),
        ([Event(EventKind.GONE, pid, i * PAGE) for i in range(0, pages, 2)], TickEnd(2.0, scan)),
    ]
    path = tmp_path / "w.rec"
    write_record(path, timeline, {"config": {"compressor": "lz4", "limit_bytes": 16 * PAGE}})
    result = run_cli("replay", "--json", "--timeline", str(path))
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line)["processes"][0] for line in result.stdout.splitlines()[:2])
    assert first["stored_pages"] < first["cold_pages"] == pages  # the rest waits
    assert second["swapouts_total"] > first["swapouts_total"]  # retried into the room made
    assert second["rejected_total"] == first["rejected_total"]  # a retry is no new rejection


def test_lru_writeback_replays_to_a_temporary_file(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = replay_json(str(record), "--limit", "48K", "--writeback", "lru")
    pool = out["figures"]["pool"]
    assert pool["bd_count"] > 0 and pool["written_back_pages"] > 0
    a = one(out, 1001)
    assert a["rejected_total"] == 0 and a["stored_pages"] == a["cold_pages"]
    assert out["config"]["backing_file"] == "(temporary)"
    # The file and its directory are gone at the end.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with RecordReader.open(str(record)) as reader:
        config = replay_config(
            reader, Overrides(limit_bytes=48 << 10, writeback="lru"), str(tmp_path)
        )
        replay(reader, config)
    assert list(tmp_path.iterdir()) == []


def test_partial_plays_only_the_whole_ticks(record: Path, tmp_path: Path) -> None:
    data = record.read_bytes()
    cut = tmp_path / "cut.rec"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with RecordReader.open(str(cut), partial=True) as reader:
        whole = reader.ticks_count
    assert 0 < whole < len(sample_timeline())
    one_line_failure(
        run_cli("replay", str(cut)), 1, f"truncated after tick {whole}", "replay --partial"
    )
    out = replay_json(str(cut), "--partial")
    assert out["complete"] is False and out["ticks"] == whole
    assert out["figures"]["t"] == sample_timeline()[whole - 1][1].t


def test_a_run_cut_short_is_said_in_one_line_and_in_json(tmp_path: Path) -> None:
    """A shadow stopped by its pool's removal writes an END frame saying so
    (``ended``): the replay plays its ticks and says, in one line, that the
    recording was cut short, when and why; --json carries ``ended`` and the
    line.  A complete run, or a record written before ``ended`` existed, says
    nothing of the kind."""
    why = "pool shadow-7 was removed by another client: found gone at t=21.3s"
    ended = {"how": "pool_removed", "t": 21.3, "why": why}
    cut = tmp_path / "cut.rec"
    write_record(cut, sample_timeline()[:2], summary={"ended": ended})
    text = run_cli("replay", str(cut))
    assert text.returncode == 0, text.stderr
    line = (
        f"the recording was cut short at t=21.3s (pool_removed): {why}; "
        "its figures stop at its last tick"
    )
    assert text.stdout.splitlines().count(line) == 1, text.stdout
    out = replay_json(str(cut))
    assert out["complete"] is True and out["ticks"] == 2
    assert out["ended"] == ended and out["cut_short"] == line
    for name, summary in [
        ("whole.rec", {"ended": {"how": "complete", "t": 60.5, "why": "stopped by SIGINT"}}),
        ("old.rec", {}),
    ]:
        path = tmp_path / name
        write_record(path, sample_timeline(), summary=summary)
        text = run_cli("replay", str(path))
        assert text.returncode == 0 and "cut short" not in text.stdout, text.stdout
        out = replay_json(str(path))
        assert out["ended"] == (summary.get("ended")) and out["cut_short"] is None


def test_a_crafted_why_is_printed_escaped(tmp_path: Path) -> None:
    """``why`` is anyone's text: its control characters cannot drive the terminal."""
    ended = {"how": "failed", "t": 1.0, "why": "\x1b]0;owned\x07 boom"}
    path = tmp_path / "crafted.rec"
    write_record(path, sample_timeline()[:1], summary={"ended": ended})
    text = run_cli("replay", str(path))
    assert text.returncode == 0 and "\x1b" not in text.stdout and "\x07" not in text.stdout
    assert "cut short at t=1.0s (failed): " in text.stdout
    # Escaping makes each of 1000 zero-width spaces six characters: the line is
    # cut after escaping, not six times as long.
    ended["why"] = "\u200b" * 1000
    write_record(tmp_path / "long.rec", sample_timeline()[:1], summary={"ended": ended})
    text = run_cli("replay", str(tmp_path / "long.rec"))
    (line,) = [x for x in text.stdout.splitlines() if "cut short" in x]
    assert line.endswith("...") and len(line) == 1203, len(line)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: d / "absent.rec", ["cannot read"]),
        (lambda d: d, ["is a directory"]),
        (
            lambda d: (d / "foreign").write_text("hello\n") and d / "foreign",
            ["not a zswapd record"],
        ),
    ],
)
def test_a_bad_file_is_one_line_and_nothing_played(
    tmp_path: Path, make: Any, words: list[str]
) -> None:
    result = run_cli("replay", str(make(tmp_path)))
    one_line_failure(result, 1, "zswapd replay:", *words)
    assert result.stdout == ""


def test_bad_settings_are_refused_before_any_pool(record: Path) -> None:
    one_line_failure(run_cli("replay", str(record), "--backing-size", "1M"), 1, "--writeback lru")
    one_line_failure(run_cli("replay", str(record), "--compressor", "nope"), 2, "nope")
    one_line_failure(run_cli("replay", str(record), "--chain-size", "99"), 1, "chain_size")


def test_a_compressors_level_is_checked_with_the_flag(tmp_path: Path) -> None:
    """``lz4:99`` is the flag's error (exit 2, before the file is read, as an
    unknown name is), naming the compressors that take a level; a level out
    of range says the range."""
    absent = str(tmp_path / "absent.rec")
    result = run_cli("replay", absent, "--compressor", "lz4:99")
    one_line_failure(result, 2, "--compressor", "'lz4:99': lz4 takes no level", "zstd")
    assert "those that do: " in result.stderr and "lz4hc" in result.stderr
    one_line_failure(run_cli("replay", absent, "--compressor", "zstd:99"), 2, "zstd's level", "22")
    one_line_failure(run_cli("replay", absent, "--compressor", "lz4hc:13"), 2, "1..12")


def test_the_replays_json_reads_as_the_shadows_summary(tmp_path: Path) -> None:
    """The end object carries the shadow summary's detection, refaults_note and
    bounds_note, so one parser reads both; the header's started stays epoch
    seconds, started_iso beside it is what the text prints."""
    path = tmp_path / "hash.rec"
    head = {"started": 1796279224.137699, "detection": "hash", "config": {"compressor": "lz4"}}
    write_record(path, sample_timeline(), head)
    out = replay_json(str(path))
    assert out["detection"] == "hash" and out["refaults_note"].startswith("refaults (writes")
    assert "upper bounds" in out["bounds_note"] and "REFAULTS a lower bound" in out["bounds_note"]
    assert out["header"]["started"] == 1796279224.137699
    assert out["started_iso"] == "2026-12-03T06:27:04Z"
    idle = tmp_path / "idle.rec"
    write_record(idle, sample_timeline(), {"detection": "hash+idle", "started": "yesterday"})
    out = replay_json(str(idle))
    assert out["detection"] == "hash+idle" and out["refaults_note"] == "refaults"
    assert out["bounds_note"] is None and out["started_iso"] is None


def test_refused_pages_are_said_as_zswap_would_have_swapped_them(record: Path) -> None:
    """Under a limit without writeback a replay is zram without a backing
    device: the summary says the refused pages would have gone to the swap
    device under zswap, and what pool_limit_hit counts beside them."""
    out = replay_json(str(record), "--limit", "48K")
    hits = out["figures"]["pool"]["pool_limit_hit"]
    rejected = sum(p["rejected_total"] for p in out["figures"]["processes"])
    assert hits > 0 and rejected > 0
    text = run_cli("replay", str(record), "--limit", "48K").stdout
    assert f"pool_limit_hit {hits} (refused batches; zswap counts pages: REJECTED {rejected})" in (
        text
    )
    assert (
        f"REJECTED {rejected}: under zswap these would have gone to the swap device"
    ) in text and "replay with --writeback lru for close to zswap's behaviour" in text
    lru = run_cli("replay", str(record), "--limit", "48K", "--writeback", "lru").stdout
    assert "swap device" not in lru and "wrote back first, a batch each" in lru


@pytest.mark.parametrize(
    "config, words",
    [
        ({"chain_size": 99}, ["the replay's pool", "chain_size"]),
        ({"compressor": "zstd", "colour": "red"}, ["unknown pool settings: colour"]),
        ([1, 2], ["the header's config is not a JSON object"]),
        ({"compressor": "zstd", "dictionary": 4096}, ["zstd dictionary", "--compressor"]),
        ({"allocator_options": {"colour": 1}}, ["unknown allocator option 'colour'"]),
        ({"allocator_options": {"chain_size": 4}}, ["unknown allocator option 'chain_size'"]),
        ({"allocator": "zbud", "allocator_options": {"x": 1}}, ["unknown allocator option 'x'"]),
        ({"allocator_options": 5}, ["allocator_options must be a JSON object", "not 5"]),
        ({"allocator_options": {"class_sizes": "x"}}, ["option class_sizes is of the wrong type"]),
        ({"allocator_options": {"empty_cache": []}}, ["option empty_cache is of the wrong type"]),
    ],
)
def test_a_bad_recorded_config_is_one_line(tmp_path: Path, config: Any, words: list[str]) -> None:
    path = tmp_path / "bad-config.rec"
    write_record(path, sample_timeline(6)[:1], {"config": config})
    result = run_cli("replay", str(path))
    one_line_failure(result, 1, str(path), *words)
    assert result.stdout == ""


# What a header's config may hold that no pool takes: every field, of every wrong type.
_WRONG = [None, True, "x", "", -1, 0, 7, 1.5, 1e300, 2**64, [], [1], {}, {"a": 1}]
_ALLOCATOR_OPTIONS = ["empty_cache", "short_zspages", "header", "class_step", "class_sizes"]
_ALLOCATOR_OPTIONS += ["merge_classes", "seed", "arena_pages", "budget", "chain_size", "colour"]


def test_no_recorded_setting_of_a_wrong_type_escapes_as_a_raw_exception(tmp_path: Path) -> None:
    configs: list[dict[str, Any]] = []
    for f in fields(PoolConfig):
        for value in _WRONG:
            configs.append({f.name: value})
            configs.append({f.name: value, "limit_bytes": 1 << 16, "writeback": "lru"})
    for option in _ALLOCATOR_OPTIONS:
        for value in _WRONG:
            for allocator in ("zsmalloc", "zbud"):
                configs.append({"allocator": allocator, "allocator_options": {option: value}})
    path = tmp_path / "c.rec"
    write_record(path, sample_timeline(6)[:2])
    with RecordReader.open(str(path)) as reader:
        for config in configs:
            reader.header = {"config": config}
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    replay(reader, replay_config(reader, Overrides(), tmp))
            except ConfigError as exc:  # what the CLI prints as one line, exit 1
                message = str(exc)
                assert message.startswith(f"{path}: ") and "\n" not in message, message
                for raw in ("object is not iterable", "argument after **", "not supported between"):
                    assert raw not in message, (config, message)
                assert "unexpected keyword" not in message, (config, message)


def test_a_record_naming_more_than_4096_processes_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pids.rec"
    path.write_bytes(preamble() + header() + gone_events(range(1, 4098)) + tick(1.0) + end())
    result = run_cli("replay", str(path))
    one_line_failure(result, 1, f"zswapd replay: {path}: names more than 4096 processes (tick 1)")
    assert result.stdout == ""


def test_a_big_tick_is_played_in_memory_independent_of_its_size(tmp_path: Path) -> None:
    # One tick of 200,000 tiny events (3.4 MB), refaults and unmaps of pages
    # never stored: held as a list, ~18 MB of Event objects before any was played.
    n = 200_000
    items = [(2 + i % 2, 7, (i // 2) * PAGE, NO_REF) for i in range(n)]
    body = b"".join(events(*items[i : i + 2**16]) for i in range(0, n, 2**16))
    path = tmp_path / "big-tick.rec"
    path.write_bytes(preamble() + header() + body + tick(1.0) + end())
    with RecordReader.open(str(path)) as reader, tempfile.TemporaryDirectory() as tmp:
        config = replay_config(reader, Overrides(compressor=("lz4", None)), tmp)
        tracemalloc.start()
        try:
            figures = replay(reader, config)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert figures.t == 1.0 and [p.pid for p in figures.processes] == [7]
    assert peak < 8 << 20, peak


def test_accept_threshold_percent_changes_a_limit_bound_replay(record: Path) -> None:
    plain = replay_json(str(record), "--limit", "48K")
    assert plain["config"]["accept_threshold_percent"] is None
    latched = replay_json(str(record), "--limit", "48K", "--accept-threshold-percent", "50")
    assert latched["config"]["accept_threshold_percent"] == 50
    # Once it hit the limit, the pool refuses until it is below half of it: it
    # ends holding less, each process more refused.
    pool, pool50 = plain["figures"]["pool"], latched["figures"]["pool"]
    assert pool50["orig_data_size"] < pool["orig_data_size"]
    assert one(latched, 1001)["rejected_total"] > one(plain, 1001)["rejected_total"]
    # With lru writeback it is where writeback stops: 50% writes more back than 90% (its default).
    lru = replay_json(str(record), "--limit", "48K", "--writeback", "lru")
    lru50 = replay_json(
        str(record), "--limit", "48K", "--writeback", "lru", "--accept-threshold-percent", "50"
    )
    assert lru50["figures"]["pool"]["bd_count"] > lru["figures"]["pool"]["bd_count"]
    text = run_cli("replay", str(record), "--limit", "48K", "--accept-threshold-percent", "50")
    assert "accept threshold 50%" in text.stdout


def test_accept_threshold_percent_needs_a_limit_and_0_to_100(record: Path) -> None:
    result = run_cli("replay", str(record), "--accept-threshold-percent", "50")
    one_line_failure(result, 1, "--accept-threshold-percent", "give --limit")
    assert result.stdout == ""
    for bad in ("101", "-1", "half"):
        result = run_cli("replay", str(record), "--limit", "48K", "--accept-threshold-percent", bad)
        one_line_failure(result, 2, "--accept-threshold-percent", bad)


@pytest.mark.parametrize("limit", ["40K", "48K", "120K", "1M"])
def test_mem_used_max_above_the_limit_is_said_in_exact_bytes_and_only_then(
    record: Path, limit: str
) -> None:
    """Rounded, 48K and 52K may print alike (1M and 1M+4K do): above the limit,
    mem_used_max and mem_limit are printed in bytes, and the note names the
    difference; at or below it, no note."""
    pool = replay_json(str(record), "--limit", limit)["figures"]["pool"]
    text = run_cli("replay", str(record), "--limit", limit)
    assert text.returncode == 0, text.stderr
    most, cap = pool["mem_used_max"], pool["mem_limit"]
    if most > cap:
        assert f"mem_used_max {most} bytes > mem_limit {cap} bytes;" in text.stdout
        assert f"mem_used_max above mem_limit by {human(most - cap)}: as zram" in text.stdout
    else:
        assert f"mem_used_max {human(most)} mem_limit {human(cap)};" in text.stdout
        assert "above mem_limit" not in text.stdout
    assert f"limit {limit}, huge pages" in text.stdout  # the flag's own units, not bytes


def test_the_replay_says_its_time_limit_and_scan_cost_in_one_style(tmp_path: Path) -> None:
    """The header's start as ISO 8601 UTC, not an epoch number; a limit rounding
    would hide in its exact bytes too; the recorded scans' cost per GiB, in the
    text and in --json (``scan_cost``)."""
    path = tmp_path / "dated.rec"
    head = {"started": 1796279224.137699, "config": {"compressor": "lz4"}}
    write_record(path, sample_timeline(), head)
    result = run_cli("replay", str(path), "--limit", "100000")
    assert result.returncode == 0, result.stderr
    assert "recorded with started=2026-12-03T06:27:04Z\n" in result.stdout
    assert "limit 97.7K (100000 bytes), huge pages" in result.stdout
    out = replay_json(str(path))
    seconds = sum(p["scan_seconds_total"] for p in out["figures"]["processes"])
    scanned = sum(p["scanned_bytes_total"] for p in out["figures"]["processes"])
    assert out["scan_cost"] == {
        "scan_seconds_total": seconds,
        "scanned_bytes_total": scanned,
        "cpu_seconds_per_gib": pytest.approx(seconds * (1 << 30) / scanned),
    }
    per_gib = out["scan_cost"]["cpu_seconds_per_gib"]
    assert f"{human(scanned)} read, {per_gib:.2f} CPU s per GiB scanned" in result.stdout


# -- against a live pool ----------------------------------------------------------------

_CHILD = r"""
import os, sys
text = ("record %d of the shadow, replayed\n" * 30000) % tuple(range(30000))
noise = bytearray(os.urandom(4096 * 100))
zeros = bytearray(4096 * 100)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = start_daemon()
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def process_pages() -> list[tuple[int, bytes]]:
    """(address, bytes) of up to 1200 pages swap would see in a process the test starts."""
    return [(r.address, r.data) for r in dump_process(_CHILD, 1200)]


def _live_ticks(pid: int, pages: list[tuple[int, bytes]]) -> list[Tick]:
    half = len(pages) // 2
    cold = [Event(EventKind.COLD, pid, a, d) for a, d in pages]
    scan = (ProcessScan(pid, "child", len(pages), len(pages) * PAGE, 0.01),)
    return [
        (cold[:half], TickEnd(10.0, scan)),
        (cold[half:], TickEnd(20.0, scan)),
        (
            [Event(EventKind.CHANGED, pid, a) for a, _ in pages[::5]]
            + [Event(EventKind.GONE, pid, a) for a, _ in pages[1::7]],
            TickEnd(30.0, scan),
        ),
        (cold[::5], TickEnd(40.0, scan)),
        ([], TickEnd(50.0, scan)),
        ([], TickEnd(60.0, scan)),
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {"compressor": "zstd"},
        {"compressor": "lz4", "limit_bytes": 1 << 20},
        # So tight that pages wait tick after tick, retried only once room is made.
        {"compressor": "lz4", "limit_bytes": 128 << 10},
    ],
)
def test_a_replay_under_the_recorded_settings_gives_the_live_figures(
    daemon: Daemon,
    process_pages: list[tuple[int, bytes]],
    tmp_path: Path,
    settings: dict[str, Any],
) -> None:
    name = "live-" + settings["compressor"]
    path = tmp_path / "live.rec"
    with Client(daemon.url) as client:
        client.create_pool(name, **settings)
        head = {"pool": name, "config": client.stats(name)["config"]}
        with RecordWriter.create(str(path), head) as writer:
            sim = SwapSim(ClientTarget(client, name), lambda e: writer.page(e.ref))
            for events, end in _live_ticks(4242, process_pages):
                sim.feed(writer.events(events))
                writer.end_tick(end)
                sim.end_tick(end)
            live = sim.figures()
            writer.close({"figures": live.to_dict()})
        sim.release()
        client.remove_pool(name)
    (p,) = live.processes
    assert p.swapouts_total > 0 and p.refaults_total > 0
    if "limit_bytes" in settings:
        assert p.rejected_total > 0 and live.pool.pool_limit_hit > 0
    if settings.get("limit_bytes") == 128 << 10:
        assert p.cold_pages > p.stored_pages  # still waiting at the last tick
    with RecordReader.open(str(path)) as reader:
        assert reader.summary["figures"] == live.to_dict()
        with tempfile.TemporaryDirectory() as tmp:
            replayed = replay(reader, replay_config(reader, Overrides(), tmp))
    assert replayed == live
    assert replay_json(str(path))["figures"] == live.to_dict()


def test_recorded_speed_waits_for_each_ticks_time(record: Path) -> None:
    waits: list[float] = []  # what replay asked to sleep (nothing slept)
    with RecordReader.open(str(record)) as reader, tempfile.TemporaryDirectory() as tmp:
        replay(
            reader, replay_config(reader, Overrides(), tmp), speed="recorded", sleep=waits.append
        )
    times = [end.t for _, end in sample_timeline()]
    # Each wait runs to its tick's t, counted from the start, less the play so far.
    assert waits and all(w <= times[-1] for w in waits) and max(waits) > times[-1] - 10


@pytest.mark.parametrize("change", ["cut", "flip"])
def test_a_record_changed_under_a_replay_stops_it_in_one_line(tmp_path: Path, change: str) -> None:
    path = tmp_path / "changing.rec"
    write_record(path, sample_timeline(), {"config": {"compressor": "lz4"}})
    data = path.read_bytes()
    # The last content frame: its page is read again (pread) when its COLD event plays.
    last = max(at for kind, at in frame_ends(data) if kind == FrameType.CONTENT)

    def on_tick(_: object) -> None:
        with path.open("r+b") as f:  # the same inode: the reader's descriptor sees it
            if change == "cut":
                f.truncate(last - 100)
            else:
                f.seek(last - 100)
                f.write(bytes([data[last - 100] ^ 0xFF]))

    with (
        RecordReader.open(str(path)) as reader,
        tempfile.TemporaryDirectory() as tmp,
        pytest.raises(RecordError) as info,
    ):
        replay(reader, replay_config(reader, Overrides(), tmp), on_tick=on_tick)
    message = str(info.value)  # what the CLI prints, as every RecordError: one line
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert "(the file changed)" in message or "shrank" in message, message
