"""NBD against a real daemon, driven by real NBD clients from Debian's packages
(nbdinfo, nbdcopy, qemu-io, qemu-img)."""

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

from tests.zswapd import nbd_client
from tests.zswapd.daemon import Daemon, start_daemon
from zswapd.nbd_protocol import (
    REQUEST_MAGIC,
    Cmd,
    Opt,
)

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
    s.sendall(nbd_client.go_option(name.decode()))
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


def test_a_device_made_over_http_is_told_its_usable_nbd_uri(nbd: tuple[Daemon, str]) -> None:
    d, sock = nbd
    with httpx.Client(base_url=d.url) as h:
        made = h.put("/v1/devices/zram8", json={"size": 1 << 20}).json()
        try:
            assert made["nbd"] == _uri(sock, "zram8")
            assert h.get("/v1/devices/zram0/stats").json()["nbd"] == _uri(sock, "zram0")
            if shutil.which("nbdinfo"):
                info = json.loads(_run("nbdinfo", "--json", made["nbd"]).stdout)
                assert info["exports"][0]["export-size"] == 1 << 20
        finally:
            h.delete("/v1/devices/zram8")


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


def test_a_pool_backing_a_device_cannot_be_removed_as_a_pool(nbd: tuple[Daemon, str]) -> None:
    d, _ = nbd
    assert httpx.delete(f"{d.url}/v1/pools/zram1").status_code == 409
    assert httpx.get(f"{d.url}/v1/devices/zram1/stats").status_code == 200


def test_a_read_over_the_maximum_block_size_is_einval(nbd: tuple[Daemon, str]) -> None:
    _, sock = nbd
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    s.recv(18)
    s.sendall(struct.pack(">I", 3))
    name = b"zram0"
    s.sendall(nbd_client.go_option(name.decode()))
    got = b""
    while not got.endswith(struct.pack(">QII", 0x3E889045565A9, Opt.GO, 1) + b"\0\0\0\0"):
        got += s.recv(4096)
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.READ, 9, 0, 48 << 20))
    reply = s.recv(16)
    _, error, cookie = struct.unpack(">IIQ", reply)
    assert (error, cookie) == (22, 9)  # EINVAL
    s.close()
