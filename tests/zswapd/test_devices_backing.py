"""Block devices with a backing file (zram's backing_dev): writeback in block
index order, bd_stat, slots released by overwrite and TRIM, an lru device at
its limit, a full backing file, and where a client may put one."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.zswapd import nbd_client
from tests.zswapd.daemon import Daemon, start_daemon
from tests.zswapd.helpers import random_page, text_page
from zswapd.config import PoolConfig
from zswapd.device import Device, DeviceRegistry
from zswapd.errors import ConfigError, CorruptObjectError
from zswapd.nbd_protocol import Cmd
from zswapd.offload import offload, thread_jobs
from zswapd.pool import PagePool
from zswapd.pools import PoolRegistry
from zswapd.settings import load_settings

PAGE = 4096


def _device(tmp_path: Path, name: str = "d", size: int = 64 * PAGE, **config: object) -> Device:
    values: dict[str, object] = dict(
        compressor="lz4", backing_file=str(tmp_path / f"{name}.img"), backing_size=64 * PAGE
    )
    values.update(config)
    return DeviceRegistry(PoolRegistry()).create(name, size, PoolConfig(**values))  # type: ignore[arg-type]


def _in_file(dev: Device, blocks: list[int]) -> list[int]:
    """The blocks among ``blocks`` whose read comes from the backing file (bd_reads grows)."""
    out = []
    for b in blocks:
        before = dev.pool.bd_stat().bd_reads
        dev.read(b * PAGE, PAGE)
        if dev.pool.bd_stat().bd_reads > before:
            out.append(b)
    return out


# -- in process ---------------------------------------------------------------------------


def test_writeback_takes_slots_in_index_order(tmp_path: Path) -> None:
    # zram's writeback walks its slots from index 0, whatever order they were
    # written in; a pool's own order is its handles' (store order).
    written = [7, 3, 5, 0, 6]
    devs = [_device(tmp_path, name) for name in ("device", "its_pool")]
    for dev in devs:
        for b in written:
            dev.write(b * PAGE, text_page(b))
    device, its_pool = devs
    r = device.writeback("idle", idle_seconds=0, max_pages=2)
    assert (r["written_back"], r["candidates"], r["stopped"]) == (2, 5, None)
    assert _in_file(device, written) == [3, 0]  # blocks 0 and 3: the lowest indexes
    # The pool's own route (/v1/pools/{name}/writeback) takes the device's order too.
    assert its_pool.pool.writeback("idle", idle_seconds=0, max_pages=2)["written_back"] == 2
    assert _in_file(its_pool, written) == [3, 0]
    # A plain pool given the same pages in the same order takes them in store order.
    plain = PagePool(
        "plain",
        PoolConfig(compressor="lz4", backing_file=str(tmp_path / "p.img"), backing_size=PAGE * 8),
    )
    handles = plain.store([text_page(b) for b in written])
    assert plain.writeback("idle", idle_seconds=0, max_pages=2)["written_back"] == 2
    assert plain.stats().bd_stat.bd_reads == 0
    plain.load(handles[:2])  # blocks 7 and 3: from the file
    assert plain.stats().bd_stat.bd_reads == 2
    plain.load(handles[2:])
    assert plain.stats().bd_stat.bd_reads == 2
    plain.close()
    assert device.writeback("idle", idle_seconds=0)["written_back"] == 3
    for dev in devs:
        for b in written:
            assert dev.read(b * PAGE, PAGE) == text_page(b)
        dev.pool.check_invariants()


def test_writeback_limit_writes_exactly_that_many_in_index_order(tmp_path: Path) -> None:
    dev = _device(tmp_path, writeback_limit=3)
    for b in (9, 1, 4, 2, 8):
        dev.write(b * PAGE, text_page(b))
    r = dev.writeback("idle", idle_seconds=0)
    assert (r["written_back"], r["stopped"], r["writeback_limit"]) == (3, "writeback_limit", 0)
    assert _in_file(dev, [1, 2, 4, 8, 9]) == [1, 2, 4]
    again = dev.writeback("idle", idle_seconds=0)
    assert (again["written_back"], again["stopped"]) == (0, "writeback_limit")


def test_huge_writeback_picks_huge_blocks_only_and_never_same_filled(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    dev.write(0, text_page(0) + random_page(1) + bytes(PAGE) + random_page(3))
    assert dev.writeback("huge")["written_back"] == 2
    assert _in_file(dev, [0, 1, 2, 3]) == [1, 3]
    r = dev.writeback("idle", idle_seconds=0)
    assert r["written_back"] == 1  # block 0; the zero page stays a same-filled word
    assert dev.stats()["bd_stat"]["bd_count"] == 3
    assert dev.stats()["mm_stat"]["same_pages"] == 1


def test_overwrite_partial_write_trim_and_zeroes_free_file_slots(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    dev.write(0, b"".join(text_page(b) for b in range(6)))
    assert dev.writeback("idle", idle_seconds=0)["written_back"] == 6
    backing = dev.pool.backing
    assert backing is not None and backing.used == 6
    dev.write(0, text_page(100))  # whole block
    dev.write(PAGE + 10, b"patch")  # part of a block: read from the file, rewritten
    dev.trim(2 * PAGE, PAGE)
    dev.zero(3 * PAGE, PAGE, keep_allocated=False)
    dev.zero(4 * PAGE, PAGE, keep_allocated=True)  # a zero page stored: same-filled
    assert backing.used == 1 and dev.stats()["bd_stat"]["bd_count"] == 1
    assert dev.read(0, PAGE) == text_page(100)
    one = text_page(1)
    assert dev.read(PAGE, PAGE) == one[:10] + b"patch" + one[15:]
    assert dev.read(2 * PAGE, 3 * PAGE) == bytes(3 * PAGE)
    assert dev.read(5 * PAGE, PAGE) == text_page(5)  # still in the file, still there
    assert dev.stats()["io_stat"]["notify_free"] == 2
    dev.pool.check_invariants()


def test_writeback_races_with_writes_trims_and_reads(tmp_path: Path) -> None:
    # The handles are taken under the device's lock, the I/O without it: blocks
    # rewritten or trimmed meanwhile must come back as last written, never stale.
    dev = _device(tmp_path, size=64 * PAGE, backing_size=256 * PAGE)
    model: dict[int, bytes] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def write_back() -> None:
        kinds = ["idle", "huge", "lru", "huge_idle"]
        try:
            while not stop.is_set():
                kind = random.choice(kinds)
                idle = 0 if kind in ("idle", "huge_idle") else None
                dev.writeback(kind, idle_seconds=idle, max_pages=random.randint(1, 8))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=write_back)
    worker.start()
    rng = random.Random(13)
    try:
        for step in range(600):
            b = rng.randrange(64)
            op = rng.random()
            if op < 0.5:
                page = text_page(step) if rng.random() < 0.7 else random_page(step)
                dev.write(b * PAGE, page)
                model[b] = page
            elif op < 0.65:
                dev.trim(b * PAGE, PAGE)
                model.pop(b, None)
            elif op < 0.75:
                dev.write(b * PAGE + 7, b"xyz")
                old = model.get(b, bytes(PAGE))
                model[b] = old[:7] + b"xyz" + old[10:]
            else:
                assert dev.read(b * PAGE, PAGE) == model.get(b, bytes(PAGE)), step
    finally:
        stop.set()
        worker.join()
    assert not errors, errors
    assert dev.read(0, 64 * PAGE) == b"".join(model.get(b, bytes(PAGE)) for b in range(64))
    dev.pool.check_invariants()
    stats = dev.stats()
    assert stats["bd_stat"]["bd_writes"] > 0
    assert stats["bd_stat"]["bd_count"] == stats["backing"]["used_slots"]


def test_a_block_changed_in_the_file_is_an_error_never_wrong_bytes(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    dev.write(0, text_page(0) + text_page(1))
    assert dev.writeback("idle", idle_seconds=0)["written_back"] == 2
    with open(tmp_path / "d.img", "r+b") as f:  # block 0 took file slot 0
        f.write(b"tampered")
    with pytest.raises(CorruptObjectError):
        dev.read(0, 2 * PAGE)
    assert dev.stats()["io_stat"]["failed_reads"] == 1
    assert dev.read(PAGE, PAGE) == text_page(1)  # the other block is served
    dev.write(0, text_page(2))  # and the bad one can be written over
    assert dev.read(0, PAGE) == text_page(2)
    dev.pool.check_invariants()


def test_a_device_without_a_backing_file_refuses_writeback() -> None:
    dev = DeviceRegistry(PoolRegistry()).create("plain", 16 * PAGE)
    dev.write(0, text_page(1))
    with pytest.raises(ConfigError, match="no backing file"):
        dev.writeback("idle", idle_seconds=0)
    assert dev.stats()["bd_stat"] == {"bd_count": 0, "bd_reads": 0, "bd_writes": 0}
    assert dev.stats()["backing"] is None


def test_a_device_with_a_backing_file_is_served_off_the_event_loop(tmp_path: Path) -> None:
    # NBD hands a request to a thread by zswapd.offload's rule, which asks the
    # object whose method it runs whether it is busy: one NBD READ of a block
    # in the file must not wait for the disk on the loop that serves everyone.
    plain = DeviceRegistry(PoolRegistry()).create("plain", 16 * PAGE)
    backed = _device(tmp_path)
    for dev in (plain, backed):
        dev.write(0, text_page(1))
    assert backed.writeback("idle", idle_seconds=0)["written_back"] == 1

    async def jobs(dev: Device) -> int:
        before = thread_jobs()
        assert await offload(1, dev.read, 0, PAGE) == text_page(1)
        await offload(1, dev.write, PAGE, text_page(2))
        return thread_jobs() - before

    assert asyncio.run(jobs(plain)) == 0  # small, and nothing to wait for: on the loop
    assert asyncio.run(jobs(backed)) == 2
    assert backed.pool.bd_stat().bd_reads == 1


def test_device_backing_options_from_flags_and_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "zswapd.toml"
    conf.write_text(
        "[devices.zram1]\n"
        'size = "1M"\n'
        f'backing_file = "{tmp_path / "z1.img"}"\n'
        'backing_size = "256K"\n'
        'writeback = "lru"\n'
        'limit = "64K"\n'
    )
    flag = f"zram0=1M,backing_file={tmp_path / 'z0.img'},backing_size=1M,writeback_limit=5"
    settings = load_settings(str(conf), flags={"devices": [flag]})
    configs = settings.device_configs()
    size, c0 = configs["zram0"]
    assert (size, c0.backing_size, c0.writeback, c0.writeback_limit) == (
        1 << 20,
        1 << 20,
        "manual",
        5,
    )
    _, c1 = configs["zram1"]
    assert (c1.backing_size, c1.writeback, c1.limit_bytes) == (256 << 10, "lru", 64 << 10)
    bad = load_settings(flags={"devices": ["zram2=1M,backing_file=/x,backing_size=lots"]})
    with pytest.raises(ConfigError, match=r"zram2.*backing_size.*not a size"):
        bad.device_configs()
    # Two devices cannot share one file: the second is refused, and leaves nothing.
    devices = DeviceRegistry(PoolRegistry())
    devices.create("zram0", size, c0)
    with pytest.raises(ConfigError, match="is the backing file of pool 'zram0'"):
        devices.create("zram3", size, c0)
    assert devices.names() == ["zram0"] and devices.pools.names() == ["zram0"]


# -- where a client's backing file may go -------------------------------------------------


def test_a_client_device_gets_a_new_file_inside_the_backing_dir(tmp_path: Path) -> None:
    bdir = tmp_path / "backing"
    bdir.mkdir(mode=0o700)
    devices = DeviceRegistry(PoolRegistry(backing_dir=bdir))
    config = PoolConfig(backing_file="zram0.img", backing_size=16 * PAGE)
    dev = devices.create("zram0", 16 * PAGE, config, client=True)
    made = bdir / "zram0.img"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and made.stat().st_size == 16 * PAGE
    assert dev.stats()["backing"]["file"] == str(made)
    dev.write(0, text_page(1))
    assert dev.writeback("idle", idle_seconds=0)["written_back"] == 1
    assert dev.read(0, PAGE) == text_page(1)
    devices.remove("zram0")
    assert not made.exists()  # made for the client: gone with its device


@pytest.mark.parametrize("name", ["ABS", "../escape.img", "link/x.img", "taken.img", "./x.img"])
def test_a_client_device_elsewhere_is_refused_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    bdir = tmp_path / "backing"
    bdir.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    (bdir / "link").symlink_to(outside)
    (bdir / "taken.img").write_bytes(b"the operator's")
    if name == "ABS":
        name = str(outside / "abs.img")
    pools = PoolRegistry(backing_dir=bdir)
    devices = DeviceRegistry(pools)
    config = PoolConfig(backing_file=name, backing_size=16 * PAGE)
    with pytest.raises(ConfigError):
        devices.create("evil", 16 * PAGE, config, client=True)
    assert devices.names() == [] and "evil" not in pools
    assert sorted(os.listdir(outside)) == []
    assert sorted(os.listdir(bdir)) == ["link", "taken.img"]
    assert (bdir / "taken.img").read_bytes() == b"the operator's"


def test_closing_the_devices_removes_client_files_and_keeps_the_operators(
    tmp_path: Path,
) -> None:
    bdir = tmp_path / "backing"
    bdir.mkdir(mode=0o700)
    devices = DeviceRegistry(PoolRegistry(backing_dir=bdir))
    ops = tmp_path / "operator.img"
    devices.create("op", 16 * PAGE, PoolConfig(backing_file=str(ops), backing_size=16 * PAGE))
    devices.create(
        "cl", 16 * PAGE, PoolConfig(backing_file="cl.img", backing_size=16 * PAGE), client=True
    )
    devices.close()
    assert devices.names() == [] and devices.pools.names() == []
    assert ops.exists() and not (bdir / "cl.img").exists()


# -- a real daemon, over HTTP and NBD -----------------------------------------------------


@contextmanager
def _nbd_daemon(tmp_path: Path, device: str) -> Iterator[tuple[Daemon, str]]:
    """A daemon with one device (``--device DEVICE``) exported over NBD on
    TMP_PATH/nbd.sock: the daemon and the socket.  Stopped, it must exit 0."""
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--nbd", f"unix:{sock}", "--device", device)
    try:
        yield d, sock
    finally:
        assert d.stop() == 0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, str, Path]]:
    img = tmp_path / "zram0.img"
    device = f"zram0=4M,compressor=lz4,backing_file={img},backing_size=256K"
    with _nbd_daemon(tmp_path, device) as (d, sock):
        yield d, sock, img


def _bd(h: httpx.Client, name: str = "zram0") -> dict[str, int]:
    stats = h.get(f"/v1/devices/{name}/stats").json()
    bd: dict[str, int] = stats["bd_stat"]
    return bd


def test_device_writeback_over_http_reads_back_identical_bd_stat_exact(
    daemon: tuple[Daemon, str, Path],
) -> None:
    d, sock, img = daemon
    # 8 text pages, 4 random ones (huge under lz4), 2 zero pages.
    blocks = [text_page(i) for i in range(8)] + [random_page(i) for i in range(4)]
    blocks += [bytes(PAGE)] * 2
    s = nbd_client.open_device(sock, "zram0")
    with httpx.Client(base_url=d.url, timeout=30) as h:
        for i, page in enumerate(blocks):
            nbd_client.request(s, Cmd.WRITE, i * PAGE, PAGE, page)
        assert img.stat().st_size == 256 * 1024
        r = h.post("/v1/devices/zram0/writeback", json={"type": "huge"})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "written_back": 4,
            "candidates": 4,
            "stopped": None,
            "error": None,
            "writeback_limit": None,
        }
        assert _bd(h) == {"bd_count": 4, "bd_reads": 0, "bd_writes": 4}
        data = nbd_client.request(s, Cmd.READ, 0, len(blocks) * PAGE)
        assert data == b"".join(blocks)
        assert _bd(h) == {"bd_count": 4, "bd_reads": 4, "bd_writes": 4}  # read, left there
        r = h.post("/v1/devices/zram0/writeback", json={"type": "idle", "idle_seconds": 0})
        assert r.json()["written_back"] == 8  # the text pages; zero pages never go
        stats = h.get("/v1/devices/zram0/stats").json()
        mm = stats["mm_stat"]
        assert mm["orig_data_size"] == 14 * PAGE and mm["same_pages"] == 2
        assert mm["compr_data_size"] == 0 and mm["huge_pages"] == 0
        assert stats["backing"]["used_slots"] == 12
        assert nbd_client.request(s, Cmd.READ, 0, len(blocks) * PAGE) == b"".join(blocks)
        assert _bd(h) == {"bd_count": 12, "bd_reads": 16, "bd_writes": 12}
        metrics = h.get("/metrics").text
        assert 'zswapd_device_bd_total{kind="bd_reads",pool="zram0"} 16.0' in metrics
        assert 'zswapd_device_bd_total{kind="bd_writes",pool="zram0"} 12.0' in metrics
        assert 'kind="bd_count"' not in metrics  # a level: zswapd_backing_pages{pool="zram0"}
        assert 'zswapd_backing_pages{pool="zram0"} 12.0' in metrics
        # Bad requests: a clear 400, nothing written.
        for body in ({"type": "sideways"}, {"max_pages": 0}, {"idle_seconds": -1}, {"x": 1}):
            r = h.post("/v1/devices/zram0/writeback", json=body)
            assert r.status_code == 400, (body, r.text)
        assert (
            h.post(
                "/v1/devices/nope/writeback", json={"type": "idle", "idle_seconds": 0}
            ).status_code
            == 404
        )
        assert h.put("/v1/devices/plain", json={"size": 1 << 20}).status_code == 201
        r = h.post("/v1/devices/plain/writeback", json={"type": "huge"})
        assert r.status_code == 400 and "no backing file" in r.json()["detail"]
        assert _bd(h)["bd_writes"] == 12
    s.close()


def test_overwrite_and_trim_over_nbd_release_file_slots(
    daemon: tuple[Daemon, str, Path],
) -> None:
    d, sock, _ = daemon
    s = nbd_client.open_device(sock, "zram0")
    with httpx.Client(base_url=d.url, timeout=30) as h:
        nbd_client.request(s, Cmd.WRITE, 0, 6 * PAGE, b"".join(text_page(b) for b in range(6)))
        assert (
            h.post("/v1/devices/zram0/writeback", json={"type": "idle", "idle_seconds": 0}).json()[
                "written_back"
            ]
            == 6
        )
        nbd_client.request(s, Cmd.WRITE, 0, PAGE, text_page(100))
        nbd_client.request(s, Cmd.WRITE, PAGE + 100, 5, b"patch")
        nbd_client.request(s, Cmd.TRIM, 2 * PAGE, 2 * PAGE)
        stats = h.get("/v1/devices/zram0/stats").json()
        assert stats["bd_stat"] == {"bd_count": 2, "bd_reads": 1, "bd_writes": 6}
        assert stats["backing"]["used_slots"] == 2
        assert stats["io_stat"]["notify_free"] == 2
        one = text_page(1)
        expect = text_page(100) + one[:100] + b"patch" + one[105:] + bytes(2 * PAGE)
        assert nbd_client.request(s, Cmd.READ, 0, 4 * PAGE) == expect
        assert nbd_client.request(s, Cmd.READ, 4 * PAGE, 2 * PAGE) == text_page(4) + text_page(5)
        assert _bd(h) == {"bd_count": 2, "bd_reads": 3, "bd_writes": 6}
    s.close()


def test_an_lru_device_at_its_limit_keeps_accepting_writes(tmp_path: Path) -> None:
    img = tmp_path / "lru.img"
    device = f"lru0=4M,compressor=lz4,limit=256K,backing_file={img},backing_size=4M,writeback=lru"
    with _nbd_daemon(tmp_path, device) as (d, sock):
        s = nbd_client.open_device(sock, "lru0")
        # 2 MiB of text, about 900 KiB compressed: over three times what 256 KiB holds.
        blocks = [text_page(i) for i in range(512)]
        for i in range(0, 512, 8):
            nbd_client.request(s, Cmd.WRITE, i * PAGE, 8 * PAGE, b"".join(blocks[i : i + 8]))
        with httpx.Client(base_url=d.url, timeout=30) as h:
            stats = h.get("/v1/devices/lru0/stats").json()
            assert stats["mm_stat"]["mem_used_total"] <= 256 * 1024
            assert stats["mm_stat"]["orig_data_size"] == 512 * PAGE
            written = stats["bd_stat"]["bd_writes"]
            assert written > 0 and stats["bd_stat"]["bd_count"] == written
            assert stats["io_stat"]["failed_writes"] == 0
            for i in range(0, 512, 32):
                got = nbd_client.request(s, Cmd.READ, i * PAGE, 32 * PAGE)
                assert got == b"".join(blocks[i : i + 32]), i
            assert h.get("/v1/devices/lru0/stats").json()["bd_stat"]["bd_reads"] > 0
        s.close()
    assert img.exists()  # the operator's file stays


def test_a_full_backing_file_is_enospc_for_that_write_and_reads_go_on(tmp_path: Path) -> None:
    img = tmp_path / "small.img"
    device = f"full0=4M,compressor=lz4,limit=32K,backing_file={img},backing_size=64K,writeback=lru"
    with _nbd_daemon(tmp_path, device) as (d, sock):
        s = nbd_client.open_device(sock, "full0")
        acked: dict[int, bytes] = {}
        refused = None
        for b in range(512):
            page = random_page(b)  # huge: one page of pool each, one slot of file each
            try:
                nbd_client.request(s, Cmd.WRITE, b * PAGE, PAGE, page)
            except OSError as exc:
                refused = (b, exc.errno)
                break
            acked[b] = page
        assert refused is not None and refused[1] == errno.ENOSPC, refused
        assert len(acked) >= 16  # the file's 16 slots, and memory's pages besides
        # Reads go on: every acknowledged block, byte-identical, and the refused one empty.
        for b, page in acked.items():
            assert nbd_client.request(s, Cmd.READ, b * PAGE, PAGE) == page
        assert nbd_client.request(s, Cmd.READ, refused[0] * PAGE, PAGE) == bytes(PAGE)
        with httpx.Client(base_url=d.url, timeout=30) as h:
            stats = h.get("/v1/devices/full0/stats").json()
            assert stats["backing"]["used_slots"] == 16 == stats["bd_stat"]["bd_count"]
            assert stats["io_stat"]["failed_writes"] == 1
            assert stats["mm_stat"]["orig_data_size"] == len(acked) * PAGE
            assert stats["zswap"]["reject_reclaim_fail"] == 1
            # A trim frees room: the same write now goes through.
            nbd_client.request(s, Cmd.TRIM, 0, 4 * PAGE)
            nbd_client.request(s, Cmd.WRITE, refused[0] * PAGE, PAGE, random_page(refused[0]))
            got = nbd_client.request(s, Cmd.READ, refused[0] * PAGE, PAGE)
            assert got == random_page(refused[0])
        s.close()


def test_a_client_backing_file_needs_the_daemons_backing_dir(tmp_path: Path) -> None:
    target = tmp_path / "evil.img"
    d = start_daemon()
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            for name in (str(target), "evil.img", "../evil.img"):
                body = {"size": 1 << 20, "backing_file": name, "backing_size": 1 << 20}
                r = h.put("/v1/devices/evil", json=body)
                assert r.status_code == 400, r.text
                assert r.json()["error"] == "bad_config"
            r = h.put("/v1/devices/evil", json={"size": 1 << 20, "writeback": "lru"})
            assert r.status_code == 400  # lru with nowhere to write back
            assert h.get("/v1/devices").json()["devices"] == []
            assert "evil" not in h.get("/v1/pools").json()["pools"]
    finally:
        assert d.stop() == 0
    assert not target.exists() and not Path("evil.img").exists()
    assert sorted(os.listdir(tmp_path)) == []
