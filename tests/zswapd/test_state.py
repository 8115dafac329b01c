"""Saving and restoring pools: every handle back with its bytes; torn or
corrupted state refused whole; the daemon's --state-dir across SIGTERM and kill -9."""

from __future__ import annotations

import signal
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.zswapd.daemon import run_cli, start_daemon
from tests.zswapd.helpers import poor_page, random_page, same_page, text_page
from zswapd.client import Client
from zswapd.config import PoolConfig
from zswapd.errors import PoolLimitError
from zswapd.pool import PagePool
from zswapd.state import StateError, load_pool, load_state_dir, save_pool, save_state_dir


def _pool_with_every_kind() -> tuple[PagePool, dict[int, bytes]]:
    pool = PagePool(
        "kinds", PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19)
    )
    pages = [text_page(i) for i in range(40)] + [random_page(1), same_page(b"\x01" * 8)]
    pages += [poor_page(i) for i in range(3)]
    handles = pool.store(pages)
    pool.recompress("huge")  # the poor pages move to the secondary algorithm
    pool.free(handles[:5])
    return pool, dict(zip(handles[5:], pages[5:], strict=True))


def test_round_trip_keeps_handles_bytes_and_figures(tmp_path: Path) -> None:
    pool, model = _pool_with_every_kind()
    path = save_pool(pool, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = load_pool(path)
    assert back.load(list(model)) == list(model.values())
    before, after = pool.mm_stat(), back.mm_stat()
    for key in (
        "orig_data_size",
        "compr_data_size",
        "same_pages",
        "huge_pages",
        "huge_pages_since",
        "pages_compacted",
    ):
        assert getattr(after, key) == getattr(before, key), key
    assert back.stats().recompress == pool.stats().recompress
    back.check_invariants()
    fresh = back.store([text_page(999)] * 10)  # new handles never collide with old ones
    assert not set(fresh) & set(model)
    assert back.load(list(model)) == list(model.values())


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "empty"])
def test_torn_or_corrupted_state_is_refused(tmp_path: Path, damage: str) -> None:
    pool, _ = _pool_with_every_kind()
    good = save_pool(pool, tmp_path)
    data = bytearray(good.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "magic":
        data[:8] = b"NOTOURS!"
    else:
        data = bytearray()
    good.write_bytes(bytes(data))
    with pytest.raises(StateError):
        load_pool(good)
    with pytest.raises(StateError):
        load_state_dir(tmp_path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_are_a_state_error_or_a_pool(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.zswapd"
        path.write_bytes(data)
        with pytest.raises(StateError):
            load_pool(path)


def test_save_state_dir_drops_removed_pools(tmp_path: Path) -> None:
    a, b = PagePool("a"), PagePool("b")
    save_state_dir([a, b], tmp_path)
    save_state_dir([a], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zswapd"]


def test_sigterm_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = start_daemon("--state-dir", str(state))
    acked: dict[int, bytes] = {}
    stop = threading.Event()

    def writer() -> None:
        n = 0
        with Client(d.url) as c:
            while not stop.is_set():
                batch = [text_page(n + i) for i in range(16)]
                try:
                    acked.update(zip(c.store(batch), batch, strict=True))
                except Exception:  # the server went away mid-request: not acknowledged
                    return
                n += 16

    t = threading.Thread(target=writer)
    t.start()
    import time

    time.sleep(1.0)
    assert d.stop(signal.SIGTERM) == 0
    stop.set()
    t.join()
    assert len(acked) > 100
    d2 = start_daemon("--state-dir", str(state))
    try:
        with Client(d2.url) as c:
            handles = list(acked)
            assert c.load(handles) == [acked[h] for h in handles]
    finally:
        d2.stop()


def test_periodic_snapshot_survives_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = start_daemon("--state-dir", str(state), "--snapshot-interval", "0.3")
    with Client(d.url) as c:
        handles = c.store([text_page(i) for i in range(50)])
    import time

    time.sleep(1.5)  # at least one snapshot after the store
    d.stop(signal.SIGKILL)
    d2 = start_daemon("--state-dir", str(state))
    try:
        with Client(d2.url) as c:
            assert c.load(handles) == [text_page(i) for i in range(50)]
    finally:
        d2.stop()


def test_daemon_refuses_a_corrupted_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pool, _ = _pool_with_every_kind()
    path = save_pool(pool, state.mkdir() or state)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    out = run_cli("serve", "--state-dir", str(state))
    assert out.returncode == 2
    assert "checksum mismatch" in out.stderr


def test_idle_ages_carry_over_a_restore(tmp_path: Path) -> None:
    now = [5000.0]
    cfg = PoolConfig(compressor="lz4", recompress_algo="zstd")
    pool = PagePool("aged", cfg, clock=lambda: now[0])
    pool.store([text_page(i) for i in range(6)])
    now[0] += 1000  # idle for 1000 s
    back = load_pool(save_pool(pool, tmp_path))
    result = back.recompress("idle", idle_seconds=500)
    assert result["candidates"] == 6


def test_duplicate_handles_in_saved_state_are_refused(tmp_path: Path) -> None:
    pool = PagePool("dup")
    pool.store([text_page(1), text_page(2)])
    snap = pool.snapshot()
    fresh = PagePool("dup")
    from zswapd.errors import ConfigError
    from zswapd.pool import Counters

    rows = snap["entries"] + snap["entries"][:1]
    with pytest.raises(ConfigError):
        fresh.restore(rows, Counters(), 0)


def test_devices_start_empty_and_do_not_block_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = ("--state-dir", str(state), "--nbd", f"unix:{tmp_path / 'n.sock'}", "--device", "d1=1M")
    d = start_daemon(*args)
    with Client(d.url) as c:
        c.store([text_page(1)])
    assert d.stop() == 0
    assert sorted(p.name for p in state.iterdir()) == ["default.zswapd"]
    d2 = start_daemon(*args)  # used to fail: "pool 'd1' exists already"
    assert d2.stop() == 0


def test_restored_pools_take_live_settings_and_report_the_others(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    d = start_daemon("--state-dir", state, "--compressor", "zstd", "--pool-limit", "1M")
    pages = [text_page(i) for i in range(64)]
    with Client(d.url) as c:
        handles = c.store(pages)
    assert d.stop() == 0
    # New flags: the live ones are taken, the others reported in one line.
    d = start_daemon(
        "--state-dir", state, "--compressor", "lz4hc", "--level", "9",
        "--pool-limit", "2M", "--huge-policy", "reject",
    )  # fmt: skip
    try:
        with Client(d.url) as c:
            config = c.stats()["config"]
            assert c.load(handles) == pages
        assert config["limit_bytes"] == 2 << 20 and config["huge_policy"] == "reject"
        # zstd's default level is recorded as the 3 it is (not null)
        assert config["compressor"] == "zstd" and config["level"] == 3
        (line,) = [x for x in d.log if "ignored" in x]
        assert "pool default restored with compressor zstd, level 3;" in line
        assert "given compressor lz4hc, level 9 ignored" in line
    finally:
        assert d.stop() == 0
    # Nothing given: the saved settings stand, nothing is reported.
    d = start_daemon("--state-dir", state)
    try:
        with Client(d.url) as c:
            config = c.stats()["config"]
        assert config["limit_bytes"] == 2 << 20 and config["huge_policy"] == "reject"
        assert not [x for x in d.log if "ignored" in x]
    finally:
        assert d.stop() == 0
    # A limit below what the pool holds keeps every page and refuses new ones.
    d = start_daemon("--state-dir", state, "--pool-limit", "16K", "--huge-policy", "store")
    try:
        with Client(d.url) as c:
            assert c.load(handles) == pages
            with pytest.raises(PoolLimitError):
                c.store([random_page(999)])
            assert c.stats()["mm_stat"]["mem_limit"] == 16 << 10
    finally:
        assert d.stop() == 0
