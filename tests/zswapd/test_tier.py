"""The second tier of the page store: the kernel's figures after writeback (as a
real 6.12 zram shows them, DESIGN.md), races between a write-back's three steps
and everything else, and a backing file that fills, vanishes or changes."""

from __future__ import annotations

import os
import random
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from allocator import PageBudget
from tests.zswapd.helpers import random_page, same_page, text_page
from zswapd.backing import BackingFile
from zswapd.config import PoolConfig
from zswapd.corpus import default_corpus_files
from zswapd.errors import (
    ConfigError,
    CorruptObjectError,
    InvalidRequestError,
    MemoryLimitError,
    ReclaimFailError,
    StaleHandleError,
    UnknownPoolError,
)
from zswapd.figures import BdStat
from zswapd.pool import WRITEBACK_TYPES, PagePool

PAGE = 4096


def manual_pool(tmp_path: Path, slots: int = 64, **config: Any) -> PagePool:
    cfg = PoolConfig(
        compressor="lz4",
        backing_file=str(tmp_path / "backing"),
        backing_size=slots * PAGE,
        **config,
    )
    return PagePool("t", cfg, seed=1)


def lru_pool(
    tmp_path: Path, limit_pages: int, slots: int = 256, file: Path | None = None, **config: Any
) -> PagePool:
    cfg = PoolConfig(
        compressor="lz4",
        limit_bytes=limit_pages * PAGE,
        writeback="lru",
        backing_file=str(file or tmp_path / "backing"),
        backing_size=slots * PAGE,
        **config,
    )
    return PagePool("t", cfg, seed=1)


# -- the kernel's figures (DESIGN.md: what a real 6.12 zram does) -------------------


def test_written_back_page_counts_in_orig_data_size_and_leaves_memory(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    text = [text_page(i) for i in range(20)]
    huge = [random_page(i) for i in range(4)]
    pool.store(text + huge)
    before = pool.mm_stat()
    assert before.huge_pages == before.huge_pages_since == 4
    got = pool.writeback("idle", idle_seconds=0)
    assert got["written_back"] == 24
    mm = pool.mm_stat()
    assert mm.orig_data_size == 24 * PAGE  # still stored
    assert mm.compr_data_size == 0  # its object is freed
    assert mm.huge_pages == 0  # only huge pages still in memory
    assert mm.huge_pages_since == 4  # unchanged
    pool.compact()
    assert pool.mm_stat().mem_used_total == 0
    assert pool.stats().bd_stat.bd_count == 24
    pool.check_invariants()


def test_huge_pages_counts_only_huge_pages_left_in_memory(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    pool.store([random_page(i) for i in range(5)] + [text_page(1)])
    compr = pool.mm_stat().compr_data_size
    assert pool.writeback("huge", max_pages=2)["written_back"] == 2
    mm = pool.mm_stat()
    assert (mm.huge_pages, mm.huge_pages_since) == (3, 5)
    assert mm.compr_data_size == compr - 2 * PAGE  # a huge page counts 4096
    pool.check_invariants()


def test_same_filled_pages_are_never_written_back(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    pool.store([same_page(bytes([i]) * 8) for i in range(8)])
    for type in WRITEBACK_TYPES:
        got = pool.writeback(type, idle_seconds=0 if "idle" in type else None)
        assert (got["written_back"], got["candidates"]) == (0, 0), type
    assert pool.mm_stat().same_pages == 8
    assert pool.stats().bd_stat == BdStat(bd_count=0, bd_reads=0, bd_writes=0)


def test_lru_reclaim_never_writes_back_same_filled_pages(tmp_path: Path) -> None:
    pool = lru_pool(tmp_path, limit_pages=4)
    zeros = pool.store([same_page(b"\0" * 8)] * 50)
    for i in range(12):
        pool.store([random_page(i)])
    assert pool.stats().bd_stat.bd_writes > 0
    assert pool.mm_stat().same_pages == 50
    before = pool.stats().bd_stat.bd_reads
    assert pool.load(zeros) == [bytes(PAGE)] * 50
    assert pool.stats().bd_stat.bd_reads == before
    pool.check_invariants()


def test_writeback_takes_slots_in_index_order(tmp_path: Path) -> None:
    """Pages leave in store order, into the lowest free file slots: the file
    itself shows it (huge pages go raw)."""
    pool = manual_pool(tmp_path, slots=8)
    pages = [random_page(i) for i in range(6)]
    handles = pool.store(pages)
    assert pool.writeback("huge", max_pages=3)["written_back"] == 3
    raw = (tmp_path / "backing").read_bytes()
    assert [raw[i * PAGE : (i + 1) * PAGE] for i in range(3)] == pages[:3]
    assert pool.load(handles[3:]) == pages[3:]
    assert pool.stats().bd_stat.bd_reads == 0  # the others are still in memory
    # A freed page gives its slot back; the next page written takes the lowest.
    pool.free([handles[1]])
    assert pool.writeback("huge", max_pages=1)["written_back"] == 1
    raw = (tmp_path / "backing").read_bytes()
    assert raw[PAGE : 2 * PAGE] == pages[3]
    pool.check_invariants()


def test_writeback_limit_writes_exactly_that_many_then_stops_at_zero(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path, writeback_limit=3)
    pool.store([text_page(i) for i in range(10)])
    got = pool.writeback("idle", idle_seconds=0)
    assert (got["written_back"], got["stopped"], got["writeback_limit"]) == (
        3,
        "writeback_limit",
        0,
    )
    again = pool.writeback("lru")
    assert (again["written_back"], again["stopped"]) == (0, "writeback_limit")
    assert pool.stats().bd_stat.bd_writes == 3
    # Raised again (zram: echo N > writeback_limit), it counts down anew.
    pool.set_live_settings(writeback_limit=100)
    got = pool.writeback("idle", idle_seconds=0)
    assert (got["written_back"], got["stopped"], got["writeback_limit"]) == (7, None, 93)


def test_reading_a_written_back_page_reads_the_file_and_leaves_it_there(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    pages = [text_page(1), random_page(2)]
    handles = pool.store(pages)
    pool.writeback("idle", idle_seconds=0)
    for n in (1, 2):
        assert pool.load(handles) == pages
        bd = pool.stats().bd_stat
        assert bd == BdStat(bd_count=2, bd_reads=2 * n, bd_writes=2)
    pool.free(handles)
    assert pool.stats().bd_stat.bd_count == 0
    assert pool.stats().backing.used_slots == 0


def test_compaction_after_writeback_frees_what_written_objects_left(tmp_path: Path) -> None:
    """Objects written back leave holes in their zspages; only compaction
    gives those pages back (zram's compact after writeback)."""
    pool = manual_pool(tmp_path, slots=512)
    handles = pool.store([text_page(i) for i in range(400)])
    full = pool.mm_stat().mem_used_total
    got = pool.writeback("idle", idle_seconds=0, order=handles[::2])
    assert got["written_back"] == 200
    holes = pool.mm_stat().mem_used_total
    assert holes > full * 3 // 4  # barely anything freed: every zspage keeps half
    released = pool.compact()
    after = pool.mm_stat()
    assert released > 0 and after.pages_compacted == released
    assert after.mem_used_total <= full * 6 // 10
    pool.check_invariants()


# -- races: a write-back's three steps and everything else -------------------------


class HookedBacking(BackingFile):
    """A real backing file that runs ``hook`` once, just before its next write:
    what another thread does while a write-back's I/O runs outside the lock."""

    hook: Callable[[], None] | None = None

    def write(self, slot: int, data: bytes) -> int:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return super().write(slot, data)


def hooked_pool(tmp_path: Path, **config: Any) -> tuple[PagePool, HookedBacking]:
    path = str(tmp_path / "backing")
    backing = HookedBacking.open(path, 64 * PAGE, create=True)
    cfg = PoolConfig(compressor="lz4", backing_file=path, backing_size=64 * PAGE, **config)
    return PagePool("t", cfg, seed=1, backing=backing), backing


def test_page_freed_during_its_write_back_gives_its_slot_back(tmp_path: Path) -> None:
    """Every page freed (the table trimmed to nothing) while in flight: the
    write-back finishes quietly, no file slot is left taken."""
    pool, backing = hooked_pool(tmp_path)
    handles = pool.store([text_page(i) for i in range(3)])
    backing.hook = lambda: pool.free(handles)
    got = pool.writeback("lru")
    assert got["written_back"] == 0
    assert backing.used == 0
    pool.check_invariants()


def test_page_stored_in_a_freed_entry_during_write_back_stays_in_memory(tmp_path: Path) -> None:
    pool, backing = hooked_pool(tmp_path)
    old = pool.store([text_page(1)])
    new: list[int] = []

    def replace() -> None:
        pool.free(old)
        new.extend(pool.store([text_page(2)]))

    backing.hook = replace
    assert pool.writeback("lru")["written_back"] == 0
    assert pool.load(new) == [text_page(2)]
    assert pool.stats().bd_stat.bd_reads == 0
    pool.check_invariants()
    assert pool.writeback("lru")["written_back"] == 1  # still on the LRU, once


def test_page_recompressed_during_write_back_stays_in_memory(tmp_path: Path) -> None:
    from tests.zswapd.helpers import poor_page

    pool, backing = hooked_pool(tmp_path)
    pages = [poor_page(1), text_page(3)]
    handles = pool.store(pages)
    backing.hook = lambda: pool.recompress("huge", algo="zstd")
    got = pool.writeback("lru")
    assert got["written_back"] == 1  # the text page; the huge one changed meanwhile
    assert pool.load(handles) == pages
    pool.check_invariants()


def test_loads_and_compaction_during_write_back_see_the_right_bytes(tmp_path: Path) -> None:
    pool, backing = hooked_pool(tmp_path)
    pages = [text_page(i) for i in range(40)]
    handles = pool.store(pages)
    pool.free(handles[::2])
    keep = handles[1::2]

    def meanwhile() -> None:
        assert pool.load(keep) == pages[1::2]
        pool.compact()  # objects move; their handles (and the copies taken) stay good

    backing.hook = meanwhile
    assert pool.writeback("lru")["written_back"] == 20
    assert pool.load(keep) == pages[1::2]
    pool.check_invariants()


def test_pool_removed_during_write_back_is_refused_cleanly(tmp_path: Path) -> None:
    pool, backing = hooked_pool(tmp_path)
    pool.store([text_page(1)])
    backing.hook = pool.close
    with pytest.raises(UnknownPoolError):
        pool.writeback("lru")


def test_page_freed_while_read_back_is_stale_not_wrong(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    h = pool.store([text_page(1)])
    pool.writeback("lru")
    backing = pool.backing
    assert backing is not None
    real_read = backing.read

    def read(slot: int, length: int, crc: int) -> bytes | None:
        pool.free(h)  # freed (and its table trimmed) between the lock and the read
        return real_read(slot, length, crc)

    backing.read = read  # type: ignore[method-assign]
    with pytest.raises(StaleHandleError):
        pool.load(h)
    pool.check_invariants()


# -- faults: a full disk, a file removed, truncated, overwritten, or unusable -------


@contextmanager
def small_filesystem(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        pytest.skip(f"cannot mount a size-limited tmpfs for the ENOSPC test: {r.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def test_full_disk_mid_writeback_ends_stores_in_reclaim_fail(tmp_path: Path) -> None:
    """An lru pool whose 1 MiB file sits on a 256 KiB filesystem: write-back
    runs into ENOSPC, stores are then refused whole (507, reclaim_fail), and
    everything acknowledged loads back exactly."""
    with small_filesystem(tmp_path / "fs", "256k") as fs:
        pool = lru_pool(tmp_path, limit_pages=8, slots=256, file=fs / "backing")
        stored: dict[int, bytes] = {}
        refused = 0
        for i in range(200):
            page = random_page(i)
            try:
                (h,) = pool.store([page])
            except ReclaimFailError as exc:
                assert "No space left" in str(exc) and "nothing stored" in str(exc)
                refused += 1
                if refused == 3:
                    break
                continue
            stored[h] = page
        assert refused == 3
        s = pool.stats()
        assert 0 < s.bd_stat.bd_count <= 64 < 256  # the disk filled, not the file
        assert s.backing.io_errors >= 3
        assert s.zswap.reject_reclaim_fail == 3
        assert s.bd_stat.bd_count == s.zswap.written_back_pages
        handles = list(stored)
        assert pool.load(handles) == [stored[h] for h in handles]
        pool.check_invariants()
        # A manual writeback says why it stopped.
        got = pool.writeback("lru", max_pages=1)
        assert got["stopped"] == "io_error" and "No space left" in got["error"]
        # Frees make room again: the pool keeps serving.
        in_memory = handles[-4:]
        pool.free(in_memory)
        assert len(pool.store([random_page(1000)])) == 1
        pool.check_invariants()
        pool.close()


def test_backing_file_removed_while_running(tmp_path: Path) -> None:
    pool = lru_pool(tmp_path, limit_pages=4)
    pages = [random_page(i) for i in range(8)]
    handles = pool.store(pages[:4])
    for page in pages[4:]:
        handles += pool.store([page])
    assert pool.stats().bd_stat.bd_count > 0
    os.unlink(tmp_path / "backing")
    assert pool.stats().backing.removed is True
    got = pool.writeback("lru")
    assert got["written_back"] == 0 and got["stopped"] == "backing_removed"
    assert "was removed" in got["error"]
    with pytest.raises(ReclaimFailError, match="was removed"):
        pool.store([random_page(100)])
    # Written pages are still read from the open file.
    assert pool.load(handles) == pages
    pool.check_invariants()


def test_backing_file_truncated_behind_the_daemon_is_corrupt_never_wrong(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    pages = [text_page(1), random_page(2), text_page(3)]
    handles = pool.store(pages)
    pool.writeback("idle", idle_seconds=0, max_pages=2)
    os.truncate(tmp_path / "backing", 0)
    for h in handles[:2]:
        with pytest.raises(CorruptObjectError, match="tag"):
            pool.load([h])
    assert pool.load(handles[2:]) == pages[2:]  # memory is untouched
    assert pool.stats().backing.corrupt_pages == 2


def test_backing_file_overwritten_behind_the_daemon_is_corrupt_never_wrong(
    tmp_path: Path,
) -> None:
    pool = manual_pool(tmp_path)
    pages = [random_page(1), text_page(2)]
    handles = pool.store(pages)
    pool.writeback("idle", idle_seconds=0)
    with open(tmp_path / "backing", "r+b") as f:
        f.write(random_page(9))  # slot 0: another page, whole
        f.seek(PAGE + 10)
        f.write(b"X")  # slot 1: one byte
    for h in handles:
        with pytest.raises(CorruptObjectError):
            pool.load([h])
    assert pool.stats().backing.corrupt_pages == 2
    pool.check_invariants()


def _open_pool(path: Path, size: int = 16 * PAGE) -> PagePool:
    return PagePool("t", PoolConfig(backing_file=str(path), backing_size=size))


def test_backing_file_too_small_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"a" * PAGE)
    with pytest.raises(ConfigError, match="smaller than its backing_size"):
        _open_pool(path)
    assert path.read_bytes() == b"a" * PAGE


def test_backing_file_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("fifo", "dir"):
        with pytest.raises(ConfigError, match="backing file"):
            _open_pool(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo"]


def test_backing_file_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        with pytest.raises(ConfigError, match="symlink"):
            _open_pool(tmp_path / name)
    assert target.read_bytes() == b"precious"
    assert not (tmp_path / "nowhere").exists()


def test_backing_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open backing file"):
        _open_pool(tmp_path / "missing" / "backing")
    assert list(tmp_path.iterdir()) == []


def test_backing_file_created_then_refused_is_removed(tmp_path: Path) -> None:
    """A new file whose slot map the server's budget cannot pay for goes again."""
    budget = PageBudget(1)
    budget.charge(1)
    with pytest.raises(MemoryLimitError, match="slot map"):
        PagePool(
            "t",
            PoolConfig(backing_file=str(tmp_path / "b"), backing_size=1 << 30),
            budget=budget,
        )
    assert list(tmp_path.iterdir()) == []


# -- concurrency ----------------------------------------------------------------------


def test_threads_at_the_limit_while_writeback_runs(tmp_path: Path) -> None:
    """Store, load, free, compact, recompress and write back at once on one lru
    pool at its limit: every page loads back exactly, the books balance."""
    # 48 pages: a batch of 4 pages of distinct classes may need 4 new 8-page zspages.
    pool = lru_pool(tmp_path, limit_pages=48, slots=4096)
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        mine: dict[int, bytes] = {}
        try:
            for n in range(150):
                r = rng.random()
                if r < 0.45 or not mine:
                    pages = [
                        rng.choice((text_page, random_page))(seed * 1000 + n * 8 + k)
                        for k in range(rng.randint(1, 4))
                    ]
                    mine.update(zip(pool.store(pages), pages, strict=True))
                elif r < 0.85:
                    hs = rng.sample(list(mine), min(len(mine), 5))
                    assert pool.load(hs) == [mine[h] for h in hs]
                else:
                    h = rng.choice(list(mine))
                    pool.free([h])
                    del mine[h]
            hs = list(mine)
            assert pool.load(hs) == [mine[h] for h in hs]
        except BaseException as exc:
            errors.append(exc)

    def maintenance() -> None:
        try:
            while not stop.is_set():
                pool.writeback("lru", max_pages=8)
                pool.compact()
                pool.recompress("huge", algo="zstd")
                pool.writeback("idle", idle_seconds=0, max_pages=4)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    keeper = threading.Thread(target=maintenance)
    keeper.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    keeper.join()
    assert not errors, errors
    s = pool.stats()
    assert s.bd_stat.bd_writes > 0 and s.bd_stat.bd_reads > 0
    assert s.mm_stat.mem_used_total <= 48 * PAGE
    pool.check_invariants()


# -- the lru reclaim policy ------------------------------------------------------------

CORPUS = next((p for p in default_corpus_files() if p.name == "redis.pages"), None)


def test_lru_reclaim_writes_back_what_the_threshold_asks_on_real_pages(tmp_path: Path) -> None:
    """zsmalloc frees a page only when its zspage empties, so written-back
    objects leave holes; compaction between rounds keeps a trigger close to
    what accept_threshold_percent asks (10% of the pool at 90), never near the
    whole pool.  Real pages (redis's heap), a 2048-page limit."""
    if CORPUS is None:
        pytest.skip("no corpus (../shared/corpus/redis.pages beside the checkout)")
    pool = lru_pool(tmp_path, limit_pages=2048, slots=16384)
    with CORPUS.open("rb") as f:
        pages = [f.read(PAGE) for _ in range(8192)]
    shares = []
    for page in pages:
        before, in_memory = pool.counters.bd_writes, pool._entries.lru_len
        pool.store([page])
        wrote = pool.counters.bd_writes - before
        if wrote:
            shares.append(wrote / in_memory)
    assert len(shares) >= 3
    print(f"shares: max {max(shares):.2f} mean {sum(shares) / len(shares):.2f}")
    assert max(shares) < 0.2, shares
    assert sum(shares) / len(shares) < 0.1, shares
    pool.check_invariants()


def test_lru_store_that_cannot_fit_an_empty_pool_fails_at_once(tmp_path: Path) -> None:
    pool = lru_pool(tmp_path, limit_pages=4)
    pool.store([random_page(1)])
    with pytest.raises(ReclaimFailError, match="nothing stored"):
        pool.store([random_page(i) for i in range(2, 10)])  # 8 huge pages, 4-page limit
    assert pool.stats().zswap.reject_reclaim_fail == 8
    assert pool.mm_stat().orig_data_size == PAGE
    pool.check_invariants()


def test_lru_reclaim_for_the_server_limit_writes_back_only_what_the_store_needs(
    tmp_path: Path,
) -> None:
    """Other pools hold most of --memory-limit, which this pool cannot shrink:
    it writes back enough for the store, not every page it holds."""
    budget = PageBudget(128)  # each pool's entry table takes 8 of it, the slot map 1
    other = PagePool("other", PoolConfig(compressor="lz4"), budget=budget)
    other.store([random_page(i) for i in range(80)])
    cfg = PoolConfig(
        compressor="lz4",
        writeback="lru",
        backing_file=str(tmp_path / "backing"),
        backing_size=256 * PAGE,
    )
    pool = PagePool("t", cfg, seed=1, budget=budget)
    pages = [random_page(100 + i) for i in range(40)]
    handles = []
    for page in pages:
        handles += pool.store([page])
    s = pool.stats()
    assert s.bd_stat.bd_count > 0
    assert s.backing.lru_pages >= 25  # most of the pool stays in memory
    assert pool.load(handles) == pages
    pool.check_invariants()
    other.close()


def test_restart_with_the_backing_file_gone_is_refused_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    """Written-back pages survive a restart with their file; a state file whose
    backing file is gone is refused, saying why, and no empty file is made in
    its place (which would turn every written-back page into an error)."""
    from zswapd import state

    pool = manual_pool(tmp_path)
    pages = [text_page(1), random_page(2), text_page(3)]
    handles = pool.store(pages)
    pool.writeback("idle", idle_seconds=0, max_pages=2)
    path = state.save_pool(pool, tmp_path / "state")
    pool.close()
    restored = state.load_pool(path)
    assert restored.load(handles) == pages
    assert restored.stats().bd_stat.bd_count == 2
    restored.check_invariants()
    restored.close()
    os.unlink(tmp_path / "backing")
    with pytest.raises(state.StateError, match="backing file"):
        state.load_pool(path)
    assert not (tmp_path / "backing").exists()


# -- figures and arguments a zswap/zram user reads ------------------------------------


def test_zswap_stored_pages_leave_with_written_back_pages(tmp_path: Path) -> None:
    """zswap's stored_pages drops as its entries are written back (they left
    zswap); zram's orig_data_size still counts them."""
    pool = manual_pool(tmp_path)
    pool.store([text_page(i) for i in range(4)] + [same_page(b"\0" * 8)])
    pool.writeback("idle", idle_seconds=0, max_pages=3)
    s = pool.stats()
    assert s.zswap.stored_pages == 2  # one text page and the same-filled one
    assert s.bd_stat.bd_count == 3
    assert s.mm_stat.orig_data_size == 5 * PAGE


def test_idle_writeback_needs_idle_seconds_and_the_others_refuse_it(tmp_path: Path) -> None:
    """zram writes nothing for "idle" until pages are marked idle: no silent
    "every page" default; idle_seconds with a type it does not apply to is refused."""
    pool = manual_pool(tmp_path)
    pool.store([text_page(i) for i in range(3)])
    for type in ("idle", "huge_idle"):
        with pytest.raises(InvalidRequestError, match="needs idle_seconds"):
            pool.writeback(type)
    for type in ("huge", "incompressible", "lru"):
        with pytest.raises(InvalidRequestError, match="applies to idle"):
            pool.writeback(type, idle_seconds=0)
    assert pool.stats().bd_stat.bd_writes == 0
    assert pool.writeback("idle", idle_seconds=0)["written_back"] == 3


def test_lru_candidates_are_the_pages_on_the_lru_before_max_pages(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    pool.store([text_page(i) for i in range(5)] + [same_page(b"\0" * 8)])
    got = pool.writeback("lru", max_pages=2)
    assert (got["written_back"], got["candidates"]) == (2, 5)


def test_writeback_limit_needs_a_backing_file() -> None:
    with pytest.raises(ConfigError, match="writeback_limit without a backing_file"):
        PoolConfig(writeback_limit=10)


def test_one_lru_store_counts_one_limit_hit(tmp_path: Path) -> None:
    """zswap counts a store that found the pool full once, however many
    rounds of write-back it took to make room."""
    pool = lru_pool(tmp_path, limit_pages=16, slots=1024)
    hits = 0
    for i in range(200):
        before = pool.counters.pool_limit_hit
        pool.store([text_page(i), random_page(i)])
        hits += pool.counters.pool_limit_hit - before
        assert pool.counters.pool_limit_hit - before <= 1
    assert hits >= 1 and pool.counters.written_back_pages > 0
    pool.check_invariants()


def test_recompress_counts_every_page_it_tried(tmp_path: Path) -> None:
    pool = manual_pool(tmp_path)
    pool.store([random_page(i) for i in range(3)])  # huge: zstd cannot shrink them
    got = pool.recompress("huge", algo="zstd")
    assert got["not_smaller"] == 3
    assert pool.stats().recompress.attempts == 3


def test_pages_compacted_survives_a_restore(tmp_path: Path) -> None:
    """zram's pages_compacted counts since the device was made."""
    from zswapd import state

    pool = PagePool("c", PoolConfig(compressor="lz4"), seed=1)
    handles = pool.store([text_page(i) for i in range(300)])
    pool.free(handles[::2])
    assert pool.compact() > 0
    compacted = pool.mm_stat().pages_compacted
    path = state.save_pool(pool, tmp_path / "state")
    restored = state.load_pool(path)
    assert restored.mm_stat().pages_compacted == compacted
    restored.close()


# -- a hostile user who can write the file, or fill the server -------------------------


def test_a_forged_page_is_refused_and_gets_one_try(tmp_path: Path) -> None:
    """Tags are keyed: a page rewritten in the file does not pass by fixing up
    a checksum, and a page that failed its tag is never read again (a forger
    cannot retry until a guess passes)."""
    pool = manual_pool(tmp_path)
    (h,) = pool.store([random_page(7)])
    pool.writeback("idle", idle_seconds=0)
    assert pool.backing is not None
    other = BackingFile.open(str(tmp_path / "other"), 4 * PAGE, create=True)
    forged = b"chosen by whoever can write the file".ljust(PAGE, b"!")
    assert other.tag(forged) != pool.backing.tag(forged)  # a key of its own
    other.close(unlink=True)
    with open(tmp_path / "backing", "r+b") as f:
        f.write(forged)
    for _ in range(3):
        with pytest.raises(CorruptObjectError, match="tag"):
            pool.load([h])
    assert pool.stats().backing.corrupt_pages == 1
    pool.free([h])
    pool.check_invariants()


def test_a_slot_map_the_budget_refuses_is_never_allocated(tmp_path: Path) -> None:
    import tracemalloc

    budget = PageBudget(4)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryLimitError, match="slot map"):
            BackingFile.open(str(tmp_path / "big"), 1 << 40, create=True, budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the 32 MiB map of a 1 TiB file was not made
    assert budget.used == 0 and not (tmp_path / "big").exists()
