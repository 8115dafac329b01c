"""NBD: the sans-IO core alone, devices' zram semantics, and a real daemon driven
by real NBD clients from Debian's packages (nbdinfo, nbdcopy, qemu-io, qemu-img)."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.zswapd.daemon import Daemon, start_daemon
from tests.zswapd.helpers import text_page
from zswapd.config import PoolConfig
from zswapd.device import DeviceRegistry
from zswapd.errors import InvalidRequestError, PoolLimitError
from zswapd.nbd_protocol import (
    IHAVEOPT,
    REQUEST_MAGIC,
    Cmd,
    Command,
    NbdProtocolError,
    NbdServerConnection,
    Opt,
    OptionRequest,
)
from zswapd.pools import PoolRegistry

# -- the sans-IO core ----------------------------------------------------------------


def _opt(option: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, option, len(data)) + data


def test_handshake_options_and_commands_parse() -> None:
    c = NbdServerConnection(max_payload=1 << 20)
    assert c.greeting().startswith(b"NBDMAGICIHAVEOPT")
    c.feed(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    go = struct.pack(">I", 5) + b"zram0" + struct.pack(">H", 0)
    for byte in _opt(Opt.GO, go):  # one byte at a time
        c.feed(bytes([byte]))
    ev = c.next_event()
    assert ev == OptionRequest(Opt.GO, go)
    assert c.parse_info_request(go) == ("zram0", [])
    c.info_replies(Opt.GO, "zram0", 1 << 20, 1, [])
    assert c.state == c.TRANSMISSION
    c.feed(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.WRITE, 7, 4096, 3) + b"abc")
    assert c.next_event() == Command(Cmd.WRITE, 0, 7, 4096, 3, b"abc")
    assert c.next_event() is None


@pytest.mark.parametrize(
    "stream",
    [
        struct.pack(">I", 0),  # not fixed newstyle
        struct.pack(">I", 1) + struct.pack(">QII", 0x1234, 7, 0),  # bad option magic
        struct.pack(">I", 1) + struct.pack(">QII", IHAVEOPT, 7, 1 << 20),  # huge option
    ],
)
def test_broken_handshakes_raise(stream: bytes) -> None:
    c = NbdServerConnection()
    with pytest.raises(NbdProtocolError):
        c.feed(stream)
        while c.next_event() is not None:
            pass


def test_oversized_write_raises() -> None:
    c = NbdServerConnection(max_payload=4096)
    c.state = c.TRANSMISSION
    c.feed(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.WRITE, 1, 0, 8192))
    with pytest.raises(NbdProtocolError):
        c.next_event()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, transmitting: bool) -> None:
    c = NbdServerConnection(max_payload=4096)
    if transmitting:
        c.state = c.TRANSMISSION
    try:
        c.feed(data)
        while c.next_event() is not None:
            pass
    except NbdProtocolError:
        pass


# -- devices ---------------------------------------------------------------------------


def _device(size: int = 16 * 4096, **config: object) -> tuple[DeviceRegistry, object]:
    reg = DeviceRegistry(PoolRegistry())
    return reg, reg.create("d", size, PoolConfig(compressor="lz4", **config))  # type: ignore[arg-type]


def test_device_zram_semantics() -> None:
    _, dev = _device()
    assert dev.read(0, 8192) == bytes(8192)  # type: ignore[attr-defined]
    dev.write(100, b"x" * 5000)  # type: ignore[attr-defined]  # partial slots: RMW
    got = dev.read(0, 8192)  # type: ignore[attr-defined]
    assert got == bytes(100) + b"x" * 5000 + bytes(8192 - 5100)
    dev.write(3 * 4096, text_page(1) * 2)  # type: ignore[attr-defined]
    pool = dev.pool  # type: ignore[attr-defined]
    assert pool.stored_pages == 4
    dev.trim(3 * 4096 + 10, 8192)  # type: ignore[attr-defined]  # only slot 4 is whole
    assert pool.stored_pages == 3 and dev.io.notify_free == 1  # type: ignore[attr-defined]
    assert dev.read(3 * 4096, 4096) == text_page(1)  # type: ignore[attr-defined]
    dev.zero(0, 8192, keep_allocated=False)  # type: ignore[attr-defined]
    assert pool.stored_pages == 1 and dev.read(0, 8192) == bytes(8192)  # type: ignore[attr-defined]
    dev.zero(0, 8192, keep_allocated=True)  # type: ignore[attr-defined]  # NO_HOLE
    assert pool.stored_pages == 3 and pool.mm_stat()["same_pages"] == 2
    dev.zero(4096 + 1, 10, keep_allocated=False)  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequestError):
        dev.read(16 * 4096 - 1, 2)  # type: ignore[attr-defined]
    assert dev.io.invalid_io == 1  # type: ignore[attr-defined]
    pool.check_invariants()


def test_a_failed_write_changes_nothing() -> None:
    _, dev = _device(size=64 * 4096, limit_bytes=4 * 4096)
    import os

    with pytest.raises(PoolLimitError):
        dev.write(0, os.urandom(40 * 4096))  # type: ignore[attr-defined]
    assert dev.read(0, 40 * 4096) == bytes(40 * 4096)  # type: ignore[attr-defined]
    assert dev.io.failed_writes == 1  # type: ignore[attr-defined]
    assert dev.pool.stored_pages == 0  # type: ignore[attr-defined]


# -- a real daemon, real clients ---------------------------------------------------------


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install libnbd-bin qemu-utils)")


@pytest.fixture(scope="module")
def nbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    sock = str(tmp_path_factory.mktemp("nbd") / "nbd.sock")
    d = start_daemon(
        "--nbd", f"unix:{sock}", "--device", "zram0=64M,compressor=lz4", "--device", "zram1=8M"
    )
    yield d, sock
    assert d.stop() == 0


def _uri(sock: str, name: str) -> str:
    return f"nbd+unix:///{name}?socket={sock}"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (argv, out.stdout, out.stderr)
    return out


def _stats(d: Daemon, name: str) -> dict[str, object]:
    result: dict[str, object] = httpx.get(f"{d.url}/v1/devices/{name}/stats").json()
    return result


def test_nbdinfo_lists_the_devices(nbd: tuple[Daemon, str]) -> None:
    _need("nbdinfo")
    _, sock = nbd
    out = _run("nbdinfo", "--list", "--json", f"nbd+unix:///?socket={sock}")
    exports = {e["export-name"]: e for e in json.loads(out.stdout)["exports"]}
    assert set(exports) == {"zram0", "zram1"}
    e = exports["zram0"]
    assert e["export-size"] == 64 << 20 and e["can_trim"] and e["can_zero"]
    assert e["block_size_minimum"] == 1 and e["block_size_preferred"] == 4096


def test_nbdcopy_round_trip_of_process_memory(
    nbd: tuple[Daemon, str], tmp_path: Path, process_pages: list[bytes]
) -> None:
    _need("nbdcopy", "qemu-img")
    d, sock = nbd
    src = tmp_path / "src.img"
    src.write_bytes(b"".join(process_pages[:4096]).ljust(64 << 20, b"\0"))
    _run("nbdcopy", str(src), _uri(sock, "zram0"))  # several connections (multi-conn)
    back = tmp_path / "back.img"
    _run("nbdcopy", _uri(sock, "zram0"), str(back))
    assert back.read_bytes() == src.read_bytes()
    _run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), _uri(sock, "zram0"))
    mm = _stats(d, "zram0")["mm_stat"]
    assert isinstance(mm, dict) and mm["mem_used_total"] < mm["orig_data_size"]


def test_qemu_io_patterns_trim_zeroes_and_flush(nbd: tuple[Daemon, str]) -> None:
    _need("qemu-io")
    d, sock = nbd
    uri = _uri(sock, "zram1")

    def qio(*cmds: str) -> str:
        argv = ["qemu-io", "-f", "raw", uri]
        for c in cmds:
            argv += ["-c", c]
        out = _run(*argv).stdout
        assert "Pattern verification failed" not in out and "failed" not in out, out
        return out

    qio(
        "write -P 0xab 100 3000", "read -P 0xab 100 3000", "read -P 0 0 100", "read -P 0 3100 996"
    )  # inside one slot, unaligned
    qio("write -P 0xcd 4000 10000", "read -P 0xcd 4000 10000", "read -P 0xab 100 3000")
    before = _stats(d, "zram1")
    qio("discard 0 65536", "read -P 0 0 65536", "flush")
    after = _stats(d, "zram1")
    assert after["mm_stat"]["orig_data_size"] < before["mm_stat"]["orig_data_size"]  # type: ignore[index]
    assert after["io_stat"]["notify_free"] > before["io_stat"]["notify_free"]  # type: ignore[index]
    qio("write -P 0x11 0 16384", "write -z 0 16384", "read -P 0 0 16384")
    qio("write -P 0x22 0 8192", "write -z -u 0 8192", "read -P 0 0 8192")  # -u: may unmap


def test_two_clients_at_once(nbd: tuple[Daemon, str]) -> None:
    _need("qemu-io")
    _, sock = nbd
    uri = _uri(sock, "zram1")
    results: list[str] = []

    def client(pattern: int, offset: int) -> None:
        out = subprocess.run(
            [
                "qemu-io",
                "-f",
                "raw",
                uri,
                "-c",
                f"write -P {pattern} {offset} 1M",
                "-c",
                f"read -P {pattern} {offset} 1M",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        results.append(out.stdout + out.stderr)

    threads = [
        threading.Thread(target=client, args=(p, o)) for p, o in ((0x31, 0), (0x32, 2 << 20))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and not any("fail" in r.lower() for r in results)


def test_a_client_that_disconnects_mid_request(nbd: tuple[Daemon, str], tmp_path: Path) -> None:
    _need("qemu-io")
    _, sock = nbd
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    assert s.recv(18).startswith(b"NBDMAGIC")
    s.sendall(struct.pack(">I", 3))
    name = b"zram1"
    s.sendall(_opt(Opt.GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)))
    s.recv(4096)
    # A WRITE of 64 KiB whose payload stops short, then the client is gone.
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.WRITE, 1, 0, 65536) + b"q" * 1000)
    s.close()
    _run(
        "qemu-io",
        "-f",
        "raw",
        _uri(sock, "zram1"),
        "-c",
        "write -P 0x44 0 4096",
        "-c",
        "read -P 0x44 0 4096",
    )


def test_devices_over_http_and_in_metrics(nbd: tuple[Daemon, str]) -> None:
    d, _ = nbd
    with httpx.Client(base_url=d.url) as h:
        r = h.put("/v1/devices/zram9", json={"size": 1 << 20, "compressor": "zstd"})
        assert r.status_code == 201 and r.json()["size"] == 1 << 20
        assert "zram9" in h.get("/v1/devices").json()["devices"]
        assert "zram9" in h.get("/v1/pools").json()["pools"]
        st_ = h.get("/v1/devices/zram9/stats").json()
        assert set(st_) >= {"mm_stat", "io_stat", "bd_stat", "classes"}
        assert h.put("/v1/devices/bad", json={"size": 1000}).status_code == 400
        assert h.put("/v1/devices/zram9", json={"size": 4096}).status_code == 409
        metrics = h.get("/metrics").text
        assert 'zswapd_device_io_total{kind="notify_free",pool="zram9"}' in metrics
        assert 'zswapd_stored_pages{pool="zram9"}' in metrics
        assert h.delete("/v1/devices/zram9").status_code == 204
        assert h.get("/v1/devices/zram9/stats").status_code == 404


def test_devices_from_the_config_file(tmp_path: Path) -> None:
    _need("nbdinfo")
    conf = tmp_path / "z.toml"
    sock = tmp_path / "n.sock"
    conf.write_text(
        f'[server]\nnbd = "unix:{sock}"\n\n'
        '[devices.swap0]\nsize = "4M"\ncompressor = "lz4"\n\n'
        '[devices.swap1]\nsize = 1048576\nlimit = "64K"\n'
    )
    d = start_daemon("--config", str(conf))
    try:
        out = _run("nbdinfo", "--list", "--json", f"nbd+unix:///?socket={sock}")
        sizes = {e["export-name"]: e["export-size"] for e in json.loads(out.stdout)["exports"]}
        assert sizes == {"swap0": 4 << 20, "swap1": 1 << 20}
        cfg = httpx.get(f"{d.url}/v1/pools/swap1/stats").json()["config"]
        assert cfg["limit_bytes"] == 64 << 10
    finally:
        d.stop()


def test_review_findings_stay_fixed(nbd: tuple[Daemon, str]) -> None:
    d, sock = nbd
    # A pool backing a device cannot be removed as a pool.
    r = httpx.delete(f"{d.url}/v1/pools/zram1")
    assert r.status_code == 409
    # A READ over the advertised maximum block size is refused, not served.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    s.recv(18)
    s.sendall(struct.pack(">I", 3))
    name = b"zram0"
    s.sendall(_opt(Opt.GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)))
    got = b""
    while not got.endswith(struct.pack(">QII", 0x3E889045565A9, Opt.GO, 1) + b"\0\0\0\0"):
        got += s.recv(4096)
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.READ, 9, 0, 48 << 20))
    reply = s.recv(16)
    _, error, cookie = struct.unpack(">IIQ", reply)
    assert (error, cookie) == (22, 9)  # EINVAL
    s.close()
