"""``zswapd bench nbd``: sequential nbdcopy write and read, zswapd against nbdkit.

The same image (the corpus pages, back to back) is copied with ``nbdcopy`` into
a zswapd device, an ``nbdkit memory`` RAM disk and an ``nbdkit memory
allocator=zstd`` one, each on a Unix socket, then read back (to ``null:``),
in the same run.  Memory is each server's RSS growth for the data.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from zswapd.bench.http import start_daemon
from zswapd.bench.stats import format_table, rss_of, wait_for_path

__all__ = ["render", "run"]


def _copy(src: str, dst: str) -> float:
    start = time.perf_counter()
    subprocess.run(["nbdcopy", src, dst], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def _server(kind: str, tmp: str, size: int) -> tuple[subprocess.Popen[bytes], str, str | None]:
    """A fresh server of ``kind``: (process, NBD URI, zswapd's HTTP URL or None)."""
    sock = os.path.join(tmp, f"{kind}.sock")
    if kind.startswith("zswapd-"):
        algo = kind.removeprefix("zswapd-")
        proc, url = start_daemon(
            "--nbd", f"unix:{sock}", "--device", f"disk={size},compressor={algo}"
        )
        wait_for_path(sock, proc)
        return proc, f"nbd+unix:///disk?socket={sock}", url
    extra = ["allocator=zstd"] if kind == "nbdkit-zstd" else []
    proc = subprocess.Popen(
        ["nbdkit", "-f", "-U", sock, "memory", f"size={size}", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_path(sock, proc)
    return proc, f"nbd+unix:///?socket={sock}", None


def run(
    pages: Sequence[bytes],
    *,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    for tool in ("nbdcopy", "nbdkit"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install libnbd-bin nbdkit)")
    data = b"".join(pages)
    size = len(data)
    out: dict[str, Any] = {"bytes": size, "repeats": repeats, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="zswapd-nbd-") as tmp:
        image = os.path.join(tmp, "image.raw")
        with open(image, "wb") as f:
            f.write(data)
        for kind in ("zswapd-lz4", "zswapd-zstd", "nbdkit", "nbdkit-zstd"):
            say(f"nbd: {kind}")
            writes, reads, grown, pool = [], [], 0, None
            for _ in range(repeats):
                proc, uri, url = _server(kind, tmp, size)
                try:
                    base = rss_of(proc.pid)
                    writes.append(size / _copy(image, uri))
                    grown = rss_of(proc.pid) - base
                    if url is not None:
                        stats = httpx.get(f"{url}/v1/devices/disk/stats").json()
                        pool = stats["mm_stat"]["mem_used_total"]
                    reads.append(size / _copy(uri, "null:"))
                finally:
                    proc.terminate()
                    proc.wait(30)
                    sock = os.path.join(tmp, f"{kind}.sock")
                    if os.path.exists(sock):
                        os.unlink(sock)
            out["servers"][kind] = {
                "write_mb_s": statistics.median(writes) / 1e6,
                "read_mb_s": statistics.median(reads) / 1e6,
                "rss_growth": grown,
                "pool_bytes": pool,
            }
    return out


def render(result: dict[str, Any]) -> str:
    s = result["servers"]
    rows = [
        [
            k,
            f"{v['write_mb_s']:.0f}",
            f"{v['read_mb_s']:.0f}",
            f"{v['rss_growth'] / 2**20:.1f}",
            f"{v['pool_bytes'] / 2**20:.1f}" if v["pool_bytes"] is not None else "",
        ]
        for k, v in s.items()
    ]
    return "\n".join(
        [
            f"nbdcopy of {result['bytes'] / 2**20:.0f} MiB, median of {result['repeats']} "
            "(a fresh server each time); memory = the server's RSS growth",
            format_table(["server", "write MB/s", "read MB/s", "RSS growth MiB", "pool MiB"], rows),
        ]
    )
