"""Peers: the same pages in memcached and Redis, beside zswapd, in one run.

Debian's memcached and redis-server are started on Unix sockets and driven
from this process with well-kept clients (pymemcache, redis-py), 64 pages a
round trip (set_many/get_many, a pipelined MSET/MGET), like zswapd's wire
protocol at 64 pages a request.  Memory is each server's RSS growth for the
same pages (read from /proc), so Python's own overhead counts against zswapd
as the C servers' overhead counts against them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from zswapd.bench.http import start_daemon
from zswapd.bench.stats import format_table, rss_of, sample_pages, timed_rate, wait_for_path
from zswapd.wire_client import WireClient

__all__ = ["render", "run"]

BATCH = 64


def _drive_kv(
    put_many: Callable[[dict[str, bytes]], object],
    count_found: Callable[[list[str]], int],
    pages: Sequence[bytes],
    proc: subprocess.Popen[bytes],
    base_rss: int,
) -> dict[str, Any]:
    """Store then load ``pages`` through a key-value client, 64 a round trip."""
    keys = [f"p{i}" for i in range(len(pages))]
    batches = [(keys[i : i + BATCH], pages[i : i + BATCH]) for i in range(0, len(pages), BATCH)]

    def store() -> None:
        for k, v in batches:
            put_many(dict(zip(k, v, strict=True)))

    def load() -> None:
        for k, _ in batches:
            if count_found(list(k)) != len(k):
                raise RuntimeError("a peer lost pages it was given")

    s = timed_rate(store, len(pages))
    ld = timed_rate(load, len(pages))
    return {"store_per_s": s, "load_per_s": ld, "rss_growth": rss_of(proc.pid) - base_rss}


def _memcached(tmp: str, pages: Sequence[bytes]) -> dict[str, Any] | None:
    binary = shutil.which("memcached")
    if binary is None:
        return None
    from pymemcache.client.base import Client as Memcache

    path = os.path.join(tmp, "mc.sock")
    mb = max(64, 2 * len(pages) * 4096 // 2**20)
    proc = subprocess.Popen(
        [binary, "-s", path, "-m", str(mb), "-I", "8m", "-u", "root", "-t", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_path(path, proc)
        client = Memcache(path)
        base = rss_of(proc.pid)
        return _drive_kv(
            client.set_many, lambda keys: len(client.get_many(keys)), pages, proc, base
        )
    finally:
        proc.kill()
        proc.wait()


def _redis(tmp: str, pages: Sequence[bytes]) -> dict[str, Any] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    import redis

    path = os.path.join(tmp, "redis.sock")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            path,
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_path(path, proc)
        client = redis.Redis(unix_socket_path=path)
        client.ping()
        base = rss_of(proc.pid)
        return _drive_kv(
            client.mset,
            lambda keys: sum(v is not None for v in client.mget(keys)),
            pages,
            proc,
            base,
        )
    finally:
        proc.kill()
        proc.wait()


def _zswapd(tmp: str, pages: Sequence[bytes], compressor: str) -> dict[str, Any]:
    path = os.path.join(tmp, "zswapd.sock")
    proc, _ = start_daemon("--compressor", compressor, "--unix-socket", path)
    try:
        wait_for_path(path, proc)
        client = WireClient(path)
        client._req.max_pages = BATCH
        base = rss_of(proc.pid)
        handles: list[int] = []

        def store() -> None:
            handles.extend(client.store(pages))

        def load() -> None:
            got = client.load(handles)
            assert len(got) == len(pages)

        s = timed_rate(store, len(pages))
        ld = timed_rate(load, len(pages))
        grown = rss_of(proc.pid) - base
        mm = client.stats()["mm_stat"]
        client.close()
        return {
            "store_per_s": s,
            "load_per_s": ld,
            "rss_growth": grown,
            "mem_used_total": mm["mem_used_total"],
        }
    finally:
        proc.terminate()
        proc.wait(30)


def run(
    pages: Sequence[bytes],
    *,
    n_pages: int = 16384,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    sample = sample_pages(pages, n_pages)
    out: dict[str, Any] = {"pages": len(sample), "batch": BATCH, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="zswapd-peers-") as tmp:
        runners: list[tuple[str, Callable[[], dict[str, Any] | None]]] = [
            ("zswapd wire, lz4", lambda: _zswapd(tmp, sample, "lz4")),
            ("zswapd wire, zstd", lambda: _zswapd(tmp, sample, "zstd")),
            ("memcached", lambda: _memcached(tmp, sample)),
            ("redis", lambda: _redis(tmp, sample)),
        ]
        for name, fn in runners:
            say(f"peers: {name}")
            result = fn()
            if result is not None:
                out["servers"][name] = result
    return out


def render(result: dict[str, Any]) -> str:
    raw = result["pages"] * 4096
    rows = [
        [
            name,
            f"{v['store_per_s']:,.0f}",
            f"{v['load_per_s']:,.0f}",
            f"{v['rss_growth'] / 2**20:.1f}",
            f"{v['rss_growth'] / raw:.2f}",
        ]
        for name, v in result["servers"].items()
    ]
    return "\n".join(
        [
            f"peers: {result['pages']} pages ({raw / 2**20:.0f} MiB), {result['batch']} pages a "
            "round trip, Unix sockets; memory = the server's RSS growth",
            format_table(["server", "store pages/s", "load pages/s", "memory MiB", "of raw"], rows),
        ]
    )
