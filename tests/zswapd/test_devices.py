"""Block devices under pressure: memory that follows the slots written, sizes past
the largest supported refused whole, and devices never saved to the state directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.zswapd import nbd_client
from tests.zswapd.daemon import start_daemon
from tests.zswapd.helpers import text_page
from zswapd.config import PoolConfig
from zswapd.device import LEAF_SLOTS, MAX_DEVICE_SIZE, DeviceRegistry, SlotTable
from zswapd.errors import ConfigError
from zswapd.nbd_protocol import Cmd
from zswapd.pools import PoolRegistry

TIB = 1 << 40


def _rss(pid: int) -> int:
    """The process's resident set, bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- the slot table ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("set"), st.integers(0, 8 * LEAF_SLOTS), st.integers(0, 3)),
            st.tuples(st.just("clear"), st.integers(0, 8 * LEAF_SLOTS), st.integers(0, 3000)),
        ),
        max_size=60,
    )
)
def test_slot_table_behaves_as_a_dict(ops: list[tuple[str, int, int]]) -> None:
    table, model = SlotTable(), {}
    for op, slot, value in ops:
        if op == "set":
            table[slot] = value
            model[slot] = value
        else:
            doomed = table.clear(slot, slot + value)
            expect = [model[s] for s in sorted(model) if slot <= s < slot + value and model[s]]
            assert sorted(doomed) == sorted(expect)
            for s in range(slot, slot + value):
                model.pop(s, None)
        # A leaf exists exactly while one of its slots holds a handle.
        assert table.leaves == len({s // LEAF_SLOTS for s, h in model.items() if h})
    for s in range(9 * LEAF_SLOTS):
        assert table[s] == model.get(s, 0)


def test_a_device_table_grows_with_writes_and_shrinks_with_trims() -> None:
    reg = DeviceRegistry(PoolRegistry())
    dev = reg.create("d", TIB, PoolConfig(compressor="lz4"))
    assert dev.slots.leaves == 0
    far = TIB - 4096
    dev.write(0, text_page(1))
    dev.write(far, text_page(2))
    dev.write(TIB // 2, bytes(4096))
    assert dev.slots.leaves == 3
    assert dev.read(far, 4096) == text_page(2) and dev.read(4096, 4096) == bytes(4096)
    dev.trim(0, TIB // 2 + 4096)  # the whole first half: walks 2 leaves, not 2**27 slots
    assert dev.slots.leaves == 1 and dev.pool.stored_pages == 1
    dev.zero(far, 4096, keep_allocated=False)
    assert dev.slots.leaves == 0 and dev.pool.stored_pages == 0
    dev.pool.check_invariants()


@pytest.mark.parametrize("size", [0, 1000, MAX_DEVICE_SIZE + 4096, 1 << 50, 1 << 64])
def test_a_refused_size_creates_no_pool(size: int) -> None:
    pools = PoolRegistry()
    with pytest.raises(ConfigError):
        DeviceRegistry(pools).create("d", size)
    assert "d" not in pools


# -- a real daemon --------------------------------------------------------------------------


def test_a_1tib_device_costs_nothing_until_written(tmp_path: Path) -> None:
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--nbd", f"unix:{sock}")
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            # Warm up the route (first-request allocations are not the device's).
            assert h.put("/v1/devices/warm", json={"size": 1 << 20}).status_code == 201
            assert h.delete("/v1/devices/warm").status_code == 204
            before = _rss(d.proc.pid)
            r = h.put("/v1/devices/big", json={"size": TIB, "compressor": "lz4"})
            assert r.status_code == 201, r.text
            created = _rss(d.proc.pid)
            assert created - before < 4 << 20, (before, created)
            # 64 pages, each in a leaf of its own, spread over the whole TiB.
            s = nbd_client.open_device(sock, "big")
            offsets = [i * (TIB // 64) + 4096 * i for i in range(64)]
            for i, off in enumerate(offsets):
                nbd_client.request(s, Cmd.WRITE, off, 4096, text_page(i))
            for i, off in enumerate(offsets):
                assert nbd_client.request(s, Cmd.READ, off, 4096) == text_page(i)
            assert nbd_client.request(s, Cmd.READ, TIB - 8192, 8192) == bytes(8192)
            s.close()
            written = _rss(d.proc.pid)
            assert written - before < 8 << 20, (before, written)
            mm = h.get("/v1/devices/big/stats").json()["mm_stat"]
            assert mm["orig_data_size"] == 64 * 4096
    finally:
        assert d.stop() == 0


def test_absurd_device_sizes_are_400_and_leave_nothing() -> None:
    d = start_daemon()
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            for size in (2**50, 2**64, MAX_DEVICE_SIZE + 4096):
                r = h.put("/v1/devices/huge", json={"size": size})
                assert r.status_code == 400, r.text
                assert r.json()["error"] == "bad_request" and "size" in r.json()["detail"]
                assert "huge" not in h.get("/v1/pools").json()["pools"]
                assert "huge" not in h.get("/v1/devices").json()["devices"]
            # The largest supported costs nothing either; then the name is free to reuse.
            assert h.put("/v1/devices/huge", json={"size": MAX_DEVICE_SIZE}).status_code == 201
            assert h.delete("/v1/devices/huge").status_code == 204
            assert h.put("/v1/devices/huge", json={"size": 1 << 20}).status_code == 201
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize(
    ("how", "size"),
    [("toml", '"1024T"'), ("toml", '"' + "9" * 400 + 'T"'), ("flag", "17T")],
)
def test_a_device_too_big_in_the_config_is_a_one_line_error(
    tmp_path: Path, how: str, size: str
) -> None:
    argv = [sys.executable, "-m", "zswapd.cli", "serve", "--http", "127.0.0.1:0"]
    if how == "toml":
        conf = tmp_path / "z.toml"
        conf.write_text(f"[devices.big]\nsize = {size}\n")
        argv += ["--config", str(conf)]
    else:
        argv += ["--device", f"big={size}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zswapd serve: device 'big': "), out.stderr
    assert "largest supported" in lines[0]


def test_devices_are_never_saved(tmp_path: Path) -> None:
    state, sock = tmp_path / "state", str(tmp_path / "nbd.sock")
    args = ("--state-dir", str(state), "--nbd", f"unix:{sock}", "--device", "cfg0=1M")

    def fill() -> None:
        s = nbd_client.open_device(sock, "cfg0")
        nbd_client.request(s, Cmd.WRITE, 0, 4096, text_page(1))
        s.close()

    d = start_daemon(*args)
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            assert h.put("/v1/devices/web0", json={"size": 1 << 20}).status_code == 201
            s = nbd_client.open_device(sock, "web0")
            nbd_client.request(s, Cmd.WRITE, 0, 4096, text_page(2))
            s.close()
            fill()
            r = h.post("/v1/pools/default/pages", content=text_page(3))
            assert r.status_code == 201
    finally:
        assert d.stop() == 0
    assert sorted(p.name for p in state.glob("*.zswapd")) == ["default.zswapd"]

    d = start_daemon(*args)
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            assert h.get("/v1/devices").json()["devices"] == ["cfg0"]
            assert "web0" not in h.get("/v1/pools").json()["pools"]
            # No trap: the name is free for a device again.
            assert h.put("/v1/devices/web0", json={"size": 1 << 20}).status_code == 201
            assert h.get("/v1/pools/default/stats").json()["mm_stat"]["orig_data_size"] == 4096
    finally:
        assert d.stop() == 0


def test_a_state_file_named_like_a_device_is_left_alone(tmp_path: Path) -> None:
    state, sock = tmp_path / "state", str(tmp_path / "nbd.sock")
    # A run where cfg0 was a pool leaves cfg0.zswapd behind ...
    d = start_daemon("--state-dir", str(state))
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            assert h.put("/v1/pools/cfg0").status_code == 201
            assert h.post("/v1/pools/cfg0/pages", content=text_page(1)).status_code == 201
    finally:
        assert d.stop() == 0
    assert (state / "cfg0.zswapd").exists()
    saved = (state / "cfg0.zswapd").read_bytes()
    # ... and a run where cfg0 is a device starts it empty, says so, and leaves the
    # file alone (the pool's pages come back once the name is free again).
    d = start_daemon("--state-dir", str(state), "--nbd", f"unix:{sock}", "--device", "cfg0=1M")
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            assert h.get("/v1/devices/cfg0/stats").json()["mm_stat"]["orig_data_size"] == 0
            s = nbd_client.open_device(sock, "cfg0")
            assert nbd_client.request(s, Cmd.READ, 0, 4096) == bytes(4096)
            s.close()
    finally:
        assert d.stop() == 0
    assert any("names the device cfg0" in line for line in d.log), d.log
    assert (state / "cfg0.zswapd").read_bytes() == saved
    # Not even read: a corrupted file of a device's name does not stop the start.
    (state / "cfg0.zswapd").write_bytes(b"junk")
    d = start_daemon("--state-dir", str(state), "--nbd", f"unix:{sock}", "--device", "cfg0=1M")
    assert d.stop() == 0
