"""``zswapd estimate``: zram's figures per compressor, without a daemon.

Three promises.  A full run's figures are exactly what a daemon's pool of the
same compressor reports for the same pages.  A sample's figures land within
the bound it states of the full figures (on the shared corpus).  And the
command behaves as a command line should: processes and files, one-line
failures, a progress bar only on a terminal, silence under ``| head``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import random
import struct
import subprocess
import sys
import termios
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import corpus_or_skip
from tests.zswapd.daemon import CHECKOUT, Daemon, one_line_failure, run_cli, start_daemon
from zswapd import cli
from zswapd import estimate as est
from zswapd.client import Client
from zswapd.corpus import load_pages
from zswapd.errors import ConfigError
from zswapd.pagefile import open_page_file
from zswapd.pagerefs import PageRefs
from zswapd.procmem import Mapping, open_process, read_maps, resident_mappings, walk_pages

MM = ("orig_data_size", "compr_data_size", "mem_used_total", "same_pages", "huge_pages")

# A process whose memory the test knows: 300 pages of one repeated word
# (same-filled), 200 of random bytes (huge), and text.
_CHILD = r"""
import os, sys
same = bytearray(b"\x05\x00\x00\x00\x00\x00\x00\x07" * 512 * 300)
noise = bytearray(os.urandom(4096 * 200))
text = ("the quick brown fox %d jumps over the lazy dog\n" * 20000) % tuple(range(20000))
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = start_daemon()
    yield d
    assert d.stop() == 0


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    yield from _children(1)


@pytest.fixture
def two_children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = list(_spawn(2))
    try:
        yield procs
    finally:
        _reap(procs)


def _spawn(n: int) -> Iterator[subprocess.Popen[bytes]]:
    for _ in range(n):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield proc


def _children(n: int) -> Iterator[subprocess.Popen[bytes]]:
    procs = list(_spawn(n))
    try:
        yield from procs
    finally:
        _reap(procs)


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def _estimate_json(*args: str) -> dict[str, object]:
    result = run_cli("estimate", "--json", "--quiet", *args)
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def _rows(out: dict[str, object]) -> dict[str, dict[str, object]]:
    rows = out["rows"]
    assert isinstance(rows, list)
    return {r["algorithm"]: r for r in rows}


def _page_file(tmp_path: Path, pages: list[bytes], name: str = "p.pages") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(pages))
    return path


# -- a full run is the daemon's pool, exactly -------------------------------------


@pytest.mark.parametrize("compressor", ["lz4", "zstd:3", "zstd:-1"])
def test_full_run_equals_daemon_pool(
    daemon: Daemon, process_pages: list[bytes], tmp_path: Path, compressor: str
) -> None:
    pages = process_pages[:3000]
    src = _page_file(tmp_path, pages)
    name, _, level = compressor.partition(":")
    pool = "est-" + name + (level.replace("-", "m") if level else "")
    levels = ["--level", level] if level else []
    made = run_cli("pools", "create", pool, "--compressor", name, *levels, "--url", daemon.url)
    assert made.returncode == 0, made.stderr
    pushed = run_cli("push", str(src), "--pool", pool, "--url", daemon.url, "--quiet", cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    with Client(daemon.url) as c:
        mm = c.stats(pool)["mm_stat"]
    row = _rows(_estimate_json(str(src), "--compressor", compressor))[compressor]
    assert {k: row[k] for k in MM} == {k: mm[k] for k in MM}
    assert row["error"] is None


def test_sample_of_every_page_is_the_full_figure(process_pages: list[bytes]) -> None:
    pages = process_pages[:2000]
    configs = [est.Config("lz4"), est.Config("zstd", 3)]
    full = est.estimate(pages, configs)
    whole = est.estimate(pages, configs, sample=5000, seed=3)
    assert whole.sample is None  # every page was taken: exact, no bound
    for a, b in zip(full.rows, whole.rows, strict=True):
        assert [getattr(a, k) for k in MM] == [getattr(b, k) for k in MM]


# -- a sample lands within its bound ------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_sample_estimate_within_its_bound_on_corpus(seed: int) -> None:
    corpus = corpus_or_skip()
    configs = [est.Config("lz4"), est.Config("zstd", 3)]
    for path in sorted(corpus.glob("*.pages")):
        pages = load_pages([path])
        full = est.estimate(pages, configs)
        part = est.estimate(pages, configs, sample=1000, seed=seed)
        assert part.sample == 1000 and part.pages == full.pages == len(pages)
        for f, s in zip(full.rows, part.rows, strict=True):
            where = f"{path.name} {f.config.label} seed {seed}"
            assert s.error is not None and s.orig_data_size == f.orig_data_size
            b = s.error
            assert abs(s.mem_used_total - f.mem_used_total) <= b.mem_used_total, where
            assert abs(s.saved - f.saved) <= b.mem_used_total, where
            js = s.to_json()["error"]
            assert js["ratio_low"] <= f.ratio <= js["ratio_high"], where
            assert abs(s.compr_data_size - f.compr_data_size) <= b.compr_data_size, where
            assert abs(s.same_pages - f.same_pages) <= b.same_pages, where
            assert abs(s.huge_pages - f.huge_pages) <= b.huge_pages, where


def test_reservoir_keeps_every_item_equally_often() -> None:
    kept: Counter[int] = Counter()
    runs = 5000
    for seed in range(runs):
        sample: est.Reservoir[int] = est.Reservoir(10, random.Random(seed))
        for i in range(50):
            sample.add(i)
        assert len(sample.items) == 10 and len(set(sample.items)) == 10
        kept.update(sample.items)
    # Each of 50 items is kept with probability 1/5: 1000 of 5000 runs, sd 28.
    assert set(kept) == set(range(50))
    assert all(880 <= n <= 1120 for n in kept.values()), kept


def test_full_run_past_its_cap_asks_for_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(est, "FULL_RUN_MAX_PAGES", 512)
    pages = [bytes([i % 251 + 1]) * 4096 for i in range(1000)]
    with pytest.raises(ConfigError, match="--sample"):
        est.estimate(pages, [est.Config("lz4")])
    part = est.estimate(pages, [est.Config("lz4")], sample=100)
    assert part.pages == 1000 and part.rows[0].same_pages == 1000
    # Pages that do not compress fill the pools long before the page cap.
    monkeypatch.setattr(est, "FULL_RUN_MAX_PAGES", 1 << 18)
    monkeypatch.setattr(est, "FULL_RUN_MAX_HELD", 4 << 20)
    noise = [random.Random(i).randbytes(4096) for i in range(1000)]
    with pytest.raises(ConfigError, match="hold more than 4 MiB"):
        est.estimate(noise, [est.Config("lz4"), est.Config("zstd", 3)])


# -- processes and files ------------------------------------------------------------


def test_pid_figures_see_the_known_memory(child: subprocess.Popen[bytes]) -> None:
    out = _estimate_json("--pid", str(child.pid), "--compressor", "lz4")
    assert out["sources"] == [f"pid:{child.pid}"]
    row = _rows(out)["lz4"]
    assert row["same_pages"] >= 300
    assert row["huge_pages"] >= 200
    assert row["orig_data_size"] >= 500 * 4096
    assert row["mem_used_total"] < row["orig_data_size"]


def test_pid_sample_of_every_page_reads_what_a_full_run_reads(
    child: subprocess.Popen[bytes],
) -> None:
    # A sample is chosen from the page tables alone (pagerefs), a full run reads
    # every page (procmem): the same rule must pick the same pages.
    pid = str(child.pid)
    full = _estimate_json("--pid", pid, "--compressor", "lz4")
    whole = _estimate_json(
        "--pid", pid, "--compressor", "lz4", "--sample", str(est.FULL_RUN_MAX_PAGES)
    )
    assert whole["sample"] is None and whole["pages"] == full["pages"]
    a, b = _rows(full)["lz4"], _rows(whole)["lz4"]
    assert {k: a[k] for k in MM} == {k: b[k] for k in MM}
    part = _estimate_json("--pid", pid, "--compressor", "lz4", "--sample", "300")
    assert part["sample"]["pages"] == 300 and part["pages"] == full["pages"]  # type: ignore[index]


def test_several_pids_add_up(two_children: list[subprocess.Popen[bytes]]) -> None:
    a, b = (str(p.pid) for p in two_children)
    one = _rows(_estimate_json("--pid", a, "--compressor", "lz4"))["lz4"]
    other = _rows(_estimate_json("--pid", b, "--compressor", "lz4"))["lz4"]
    both = _rows(_estimate_json("--pid", a, "--pid", b, "--compressor", "lz4"))["lz4"]
    for key in ("orig_data_size", "same_pages", "huge_pages"):
        assert both[key] == one[key] + other[key], key  # type: ignore[operator]
    # A process named twice is one process.
    twice = _rows(_estimate_json("--pid", a, "--pid", a, "--compressor", "lz4"))["lz4"]
    assert {k: twice[k] for k in MM} == {k: one[k] for k in MM}


def test_pages_shared_by_processes_count_once() -> None:
    # A forked child shares its parent's anonymous pages until it writes them:
    # to swap they are one page each (one PFN), as ../shared/corpus counts them.
    parent = subprocess.Popen(
        [sys.executable, "-c", _FORKING], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        kid = int(parent.stdout.readline())
        if not os.access("/proc/kpageflags", os.R_OK):
            pytest.skip("PFNs need root (/proc/kpageflags): shared pages cannot be told apart")
        alone = _rows(_estimate_json("--pid", str(parent.pid), "--compressor", "lz4"))["lz4"]
        both = _rows(
            _estimate_json("--pid", str(parent.pid), "--pid", str(kid), "--compressor", "lz4")
        )["lz4"]
        only_kid = _rows(_estimate_json("--pid", str(kid), "--compressor", "lz4"))["lz4"]
        # The 2,000 shared pages of noise are counted once, not twice.
        shared = alone["orig_data_size"] + only_kid["orig_data_size"] - both["orig_data_size"]  # type: ignore[operator]
        assert shared >= 2000 * 4096
    finally:
        assert parent.stdin is not None
        parent.stdin.close()  # the parent kills its child, then leaves
        try:
            parent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait()


_FORKING = r"""
import os, sys, signal
noise = bytearray(os.urandom(4096 * 2000))
kid = os.fork()
if kid == 0:
    signal.pause()
    os._exit(0)
print(kid, flush=True)
try:
    sys.stdin.read()
finally:
    os.kill(kid, signal.SIGKILL)
"""


def test_several_files_are_their_pages_together(process_pages: list[bytes], tmp_path: Path) -> None:
    pages = process_pages[:1500]
    whole = _page_file(tmp_path, pages, "whole.pages")
    a = _page_file(tmp_path, pages[:700], "a.pages")
    b = _page_file(tmp_path, pages[700:], "b.pages")
    apart = _rows(_estimate_json(str(a), str(b), "--compressor", "zstd:1"))["zstd:1"]
    together = _rows(_estimate_json(str(whole), "--compressor", "zstd:1"))["zstd:1"]
    assert {k: apart[k] for k in MM} == {k: together[k] for k in MM}


def test_json_schema(process_pages: list[bytes], tmp_path: Path) -> None:
    src = _page_file(tmp_path, process_pages[:1200])
    out = _estimate_json(str(src), "--sample", "500", "--seed", "7")
    assert out["pages"] == 1200
    assert out["sample"] == {"pages": 500, "seed": 7, "confidence": 0.95}
    assert out["allocator"] == {"name": "zsmalloc", "chain_size": 8, "huge_class_size": 3625}
    assert isinstance(out["recommendation"], str) and out["recommendation"]
    rows = _rows(out)
    expected = [c.label for c in est.default_configs()[0]]
    assert list(rows) == expected and "zstd:-1" in rows and "lz4hc:9" in rows
    for row in rows.values():
        for key in (*MM, "saved_bytes"):
            assert type(row[key]) is int, key
        assert row["saved_bytes"] == row["orig_data_size"] - row["mem_used_total"]  # type: ignore[operator]
        assert isinstance(row["ratio"], float)
        assert isinstance(row["compress_us_per_page"], float)
        err = row["error"]
        assert isinstance(err, dict) and err["confidence"] == 0.95
        assert set(err) == {
            "compr_data_size",
            "mem_used_total",
            "same_pages",
            "huge_pages",
            "saved_bytes",
            "ratio_low",
            "ratio_high",
            "confidence",
        }
    names = {lo["compressor"] for lo in out["left_out"]}  # type: ignore[union-attr]
    assert names == {n for n, _ in est.DEFAULT_CONFIGS} - set(est.compressors.available())


def test_table_and_recommendation(process_pages: list[bytes], tmp_path: Path) -> None:
    src = _page_file(tmp_path, process_pages[:800])
    result = run_cli("estimate", str(src), "--compressor", "lz4", "--compressor", "zstd:3")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    header = "ALGORITHM DATA COMPR TOTAL ± RATIO SAVED ZERO-PAGES HUGE COMP-US DECOMP-US"
    assert lines[0].split() == header.split()
    assert lines[1].split()[:2] == ["lz4", "3.1M"]  # 800 pages, as zramctl writes it
    assert lines[2].split()[0] == "zstd:3"
    assert lines[-1].startswith("recommendation: ")


# -- a command line's manners ---------------------------------------------------------


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    one_line_failure(run_cli("estimate", "--pid", str(gone.pid)), None, str(gone.pid), "no such")
    odd = tmp_path / "odd.pages"
    odd.write_bytes(b"x" * 5000)
    one_line_failure(run_cli("estimate", str(odd)), None, "whole number")
    one_line_failure(run_cli("estimate", str(tmp_path / "absent")), None, "absent")
    one_line_failure(run_cli("estimate", str(tmp_path)), None, "not a regular file")
    one_line_failure(run_cli("estimate", "--pid", str(os.getpid()), str(odd)), None, "whole number")
    one_line_failure(run_cli("estimate"), None, "--pid")
    empty = tmp_path / "empty.pages"
    empty.write_bytes(b"")
    one_line_failure(run_cli("estimate", str(empty)), None, "no pages")
    page = tmp_path / "one.pages"
    page.write_bytes(b"a" * 4096)
    one_line_failure(run_cli("estimate", str(page), "--compressor", "zstd:99"), None, "level")
    one_line_failure(run_cli("estimate", str(page), "--compressor", "nope"), None, "nope")
    one_line_failure(run_cli("estimate", str(page), "--compressor", "lz4:x"), None, "level")
    assert run_cli("estimate", str(page), "--sample", "0").returncode == 2  # argparse's


def test_out_of_memory_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # A real MemoryError cannot be provoked here: a pool reserves 64 GiB of
    # address space up front, so an RLIMIT_AS low enough to exhaust Python's
    # heap stops the pool's creation first (ENOMEM, an OSError: one line too).
    def exhausted(args: argparse.Namespace) -> int:
        raise MemoryError

    for command in ("estimate", "push"):
        args = argparse.Namespace(command=command, func=exhausted)
        assert cli._dispatch(args) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"zswapd {command}: out of memory") and err.count("\n") == 1, err


def test_kernel_thread_has_no_memory_to_read() -> None:
    comm = Path("/proc/2/comm")
    if not comm.exists() or comm.read_text().strip() != "kthreadd":
        pytest.skip("pid 2 is not kthreadd here (a pid namespace)")
    one_line_failure(run_cli("estimate", "--pid", "2"), None, "--pid 2", "no user memory")


# -- bounded by the pages present, whatever the mappings ------------------------------

# A process that reserves 1 TiB (MAP_NORESERVE: free until touched), touches
# TOUCHED pages of it, and reserves 1 TiB more that it never touches.
_RESERVING = r"""
import mmap, sys
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value
TIB = 1 << 40
big = mmap.mmap(-1, TIB, flags=mmap.MAP_PRIVATE | MAP_NORESERVE)
# Read-only, so that the kernel does not merge it with the other into one mapping.
idle = mmap.mmap(-1, TIB, flags=mmap.MAP_PRIVATE | MAP_NORESERVE, prot=mmap.PROT_READ)
offsets = [0, 1 << 30, 1 << 38, TIB - 4096]
for i, off in enumerate(offsets):
    big[off : off + 4096] = bytes([i + 1]) * 4096
print(" ".join(str(off) for off in offsets), flush=True)
sys.stdin.read()
"""
TIB = 1 << 40


@pytest.fixture(scope="module")
def reserving() -> Iterator[tuple[int, list[int]]]:
    """(pid, offsets touched in its 1 TiB reservation)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _RESERVING], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        offsets = [int(x) for x in proc.stdout.readline().split()]
        assert offsets, "the child could not reserve 1 TiB"
        yield proc.pid, offsets
    finally:
        _reap([proc])


def _reservations(pid: int) -> list[Mapping]:
    return [m for m in read_maps(pid) if m.end - m.start == TIB]


def test_walk_of_a_huge_reservation_holds_little_and_finds_the_touched_pages(
    reserving: tuple[int, list[int]],
) -> None:
    pid, offsets = reserving
    big, idle = sorted(_reservations(pid), key=lambda m: m.perms, reverse=True)
    assert (big.perms, idle.perms) == ("rw-p", "r--p")
    tracemalloc.start()
    try:
        with open_process(pid) as process:
            found = [a for m, a in walk_pages(process) if m.start in (big.start, idle.start)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The whole pagemap of 1 TiB is 2 GiB; a walk reads it half a MiB at a time.
    assert peak < 4 << 20, peak
    assert found == [big.start + off for off in offsets]


def test_untouched_reservation_is_skipped_unread(reserving: tuple[int, list[int]]) -> None:
    pid, _ = reserving
    big, idle = sorted(_reservations(pid), key=lambda m: m.perms, reverse=True)
    resident = {m.start for m in resident_mappings(pid)}
    assert big.start in resident and idle.start not in resident  # its pagemap is never read


def test_estimate_pid_of_a_huge_reservation_is_bounded(
    reserving: tuple[int, list[int]], tmp_path: Path
) -> None:
    pid, offsets = reserving
    page = _page_file(tmp_path, [b"\1" * 4096])

    def peak_rss_kib(*args: str) -> int:
        # A parent of its own: RUSAGE_CHILDREN is then this one command's peak.
        code = (
            "import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "print(r.stderr, file=sys.stderr)"
        )
        argv = [sys.executable, "-m", "zswapd.cli", "estimate", "-q", "--json", *args]
        env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
        out = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env
        )
        code_text, rss = out.stdout.split()
        assert code_text == "0", out.stderr
        return int(rss)

    small = peak_rss_kib(str(page), "--compressor", "lz4")
    huge = peak_rss_kib("--pid", str(pid), "--compressor", "lz4")
    # Before: the mapping's whole pagemap (2 GiB) in one read, then unpacked.
    assert huge - small < 64 << 10, (small, huge)  # KiB; here 37 and 46 MiB
    row = _rows(_estimate_json("--pid", str(pid), "--compressor", "lz4"))["lz4"]
    assert row["orig_data_size"] >= len(offsets) * 4096  # type: ignore[operator]


# -- a sample is no way around the full run's caps ----------------------------------


def test_sample_past_the_full_run_cap_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(est, "FULL_RUN_MAX_PAGES", 512)
    pages = [bytes([i % 251 + 1]) * 4096 for i in range(1000)]
    # A sample of every page would hold them all, raw: the cap a full run has.
    with pytest.raises(ConfigError, match="--sample must be 1 to 512"):
        est.estimate(pages, [est.Config("lz4")], sample=1000)
    assert est.estimate(pages, [est.Config("lz4")], sample=512).sample == 512
    monkeypatch.undo()  # the command line, at the real cap
    page = _page_file(tmp_path, pages[:1])
    over = run_cli("estimate", str(page), "--sample", str(est.FULL_RUN_MAX_PAGES + 1))
    one_line_failure(over, None, "--sample", str(est.FULL_RUN_MAX_PAGES))


# -- page files: the file checked is the file read ------------------------------------


def test_page_file_is_read_through_the_descriptor_checked(tmp_path: Path) -> None:
    path = _page_file(tmp_path, [b"\1" * 4096, b"\2" * 4096], "mine.pages")
    other = _page_file(tmp_path, [b"\3" * 4096] * 3, "other.pages")
    with open_page_file(str(path)) as page_file:
        os.replace(other, path)  # the path now names another file
        refs = PageRefs([], [page_file])
        pages = refs.read(list(refs))
    assert pages == [b"\1" * 4096, b"\2" * 4096]


def test_page_file_that_is_a_link_fifo_or_device_is_refused_at_once(tmp_path: Path) -> None:
    real = _page_file(tmp_path, [b"\1" * 4096], "real.pages")
    link = tmp_path / "link.pages"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.pages"
    os.mkfifo(fifo)
    # A FIFO with no writer would block an open (or a read) forever: the
    # timeout only keeps a regression from hanging the suite.
    for path, words in (
        (link, ("link.pages", "symbolic link")),
        (fifo, ("fifo.pages", "not a regular file")),
        (Path("/dev/zero"), ("/dev/zero", "not a regular file")),
    ):
        one_line_failure(run_cli("estimate", str(path), timeout=60), None, *words)


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    src = tmp_path / "p.pages"
    src.write_bytes(b"".join(bytes([i % 200 + 1]) * 4096 for i in range(600)))
    piped = run_cli("estimate", str(src), "--compressor", "lz4")
    assert piped.returncode == 0 and piped.stderr == ""
    leader, follower = pty.openpty()
    # A terminal has a size (a new pty's is 0x0, where tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    proc = subprocess.run(
        [sys.executable, "-m", "zswapd.cli", "estimate", str(src), "--compressor", "lz4"],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        timeout=120,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"600/600" in shown and b"page" in shown
    quiet = subprocess.run(
        [sys.executable, "-m", "zswapd.cli", "estimate", str(src), "-q", "--compressor", "lz4"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert quiet.returncode == 0 and quiet.stderr == b""


@pytest.mark.parametrize("head", ["head -n 1", "head -c 0"])
def test_estimate_into_head_is_silent(tmp_path: Path, head: str) -> None:
    src = tmp_path / "p.pages"
    src.write_bytes(b"".join(bytes([i % 200 + 1]) * 4096 for i in range(300)))
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    # head -c 0 leaves at once: the table is written into a closed pipe.
    result = subprocess.run(
        f"{sys.executable} -m zswapd.cli estimate {src} | {head}",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0
    assert result.stdout == ("" if head.endswith("0") else result.stdout.splitlines()[0] + "\n")
    assert result.stderr == ""


def _row(label: str, saved_mib: int, us: float) -> est.Row:
    name, _, level = label.partition(":")
    mib = 1 << 20
    return est.Row(
        est.Config(name, int(level) if level else None),
        1000 * mib,
        0,
        (1000 - saved_mib) * mib,
        0,
        0,
        us,
        1.0,
    )


def test_the_recommendation_names_the_cheapest_whenever_it_is_not_the_pick() -> None:
    # zstd:1 is within 10% of zstd:9 and cheaper: picked; lz4, cheaper still, is
    # named for latency whether the pick is the best saver or not.
    rows = [_row("lz4", 600, 2.0), _row("zstd:1", 760, 13.0), _row("zstd:9", 800, 110.0)]
    said = est.recommend(rows)
    assert said.endswith(": zstd:1, or lz4 if latency matters"), said
    rows = [_row("lz4", 600, 2.0), _row("zstd:9", 800, 110.0)]
    assert est.recommend(rows).endswith(": zstd:9, or lz4 if latency matters")
    rows = [_row("lz4", 780, 2.0), _row("zstd:9", 800, 110.0)]
    assert est.recommend(rows).endswith(": lz4")  # within 10% and the cheapest: nothing to add
    assert "would not help" in est.recommend([_row("lz4", -1, 2.0)])


def test_the_report_says_which_rows_are_the_kernels_and_which_ran_pure() -> None:
    from zswapd.estimate import Config, estimate
    from zswapd.estimate_cli import render

    pages = [bytes(range(256)) * 16, bytes(4096)]
    configs = [Config("lz4"), Config("zstd", 3), Config("zstd", 9), Config("lz4-lib")]
    text = render(estimate(pages, configs))
    assert "every page used: 2 pages, no sampling" in text
    assert "as Linux 6.12's zram would report them: lz4, zstd:3" in text
    assert "not kernel-exact (compressed sizes differ): zstd:9, lz4-lib" in text
    # The backend is chosen at import: a process of its own, told to run pure.
    script = (
        "from zswapd.estimate import Config, estimate; from zswapd.estimate_cli import render; "
        "print(render(estimate([bytes(range(256)) * 16], [Config('lz4')])))"
    )
    env = {**os.environ, "ZSWAPD_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert "lz4 ran as pure Python here" in out.stdout
