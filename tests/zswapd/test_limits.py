"""Server-wide limits on a real daemon: --memory-limit over every pool and
device, --max-pools, and address space bounded by them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.zswapd.daemon import Daemon, run_cli, start_daemon
from tests.zswapd.helpers import metric_value

PAGE = 4096
MiB = 1 << 20


def _field_kib(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in {path}")


def _status_kib(pid: int, field: str) -> int:
    """VmRSS, VmSize ... of a process, KiB."""
    return _field_kib(f"/proc/{pid}/status", field)


def _pages(n: int, seed: int) -> bytes:
    # Random bytes do not compress: each page is a huge object, one page of pool.
    return random.Random(seed).randbytes(n * PAGE)


def _fill(c: httpx.Client, pool: str, batch: int, seed: int) -> tuple[int, dict[str, str]]:
    """Store batches into ``pool`` until refused; (pages stored, the refusal)."""
    stored = 0
    for i in range(10_000):
        r = c.post(f"/v1/pools/{pool}/pages", content=_pages(batch, seed * 100_000 + i))
        if r.status_code != 201:
            assert r.status_code == 507, r.text
            return stored, r.json()
        stored += batch
    raise AssertionError("never refused")


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    d = start_daemon(*request.param)
    try:
        yield d
    finally:
        d.stop()


@pytest.mark.parametrize("daemon", [("--memory-limit", "4M", "--max-pools", "8")], indirect=True)
def test_pools_together_stop_at_the_memory_limit(daemon: Daemon) -> None:
    names = [f"p{i}" for i in range(4)]
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        for name in names:
            assert c.put(f"/v1/pools/{name}", json={"compressor": "lz4"}).status_code == 201
        stored = {}
        refusals = []
        for round_ in range(3):  # round after round: every pool is refused in turn
            for n, name in enumerate(names):
                got, refusal = _fill(c, name, 16, seed=round_ * 10 + n)
                stored[name] = stored.get(name, 0) + got
                refusals.append(refusal)
        assert {r["error"] for r in refusals} == {"memory_limit"}
        stats = {name: c.get(f"/v1/pools/{name}/stats").json() for name in names}
        # The allocators' pages and the pools' tables of entries (8 pages each
        # here), together; the default pool, empty, charges nothing.
        used = sum(s["mm_stat"]["mem_used_total"] + s["metadata"]["bytes"] for s in stats.values())
        assert sum(s["metadata"]["bytes"] for s in stats.values()) > 0
        assert used <= 4 * MiB
        assert used > 4 * MiB - 16 * PAGE  # filled to within one batch of the limit
        for name, s in stats.items():
            # Nothing half stored: every page kept came from a batch that succeeded.
            assert s["zswap"]["stored_pages"] == stored[name]
            assert s["counters"]["memory_limit_hit"] % 16 == 0
            assert s["server"]["memory_limit"] == 4 * MiB
            assert s["server"]["memory_used"] == used
        assert sum(s["counters"]["memory_limit_hit"] for s in stats.values()) == 16 * 12
        text = c.get("/metrics").text
        assert "zswapd_memory_limit_bytes 4.194304e+06" in text
        assert metric_value(text, "zswapd_memory_used_bytes") == used
        assert 'zswapd_rejected_pages_total{pool="p0",reason="memory_limit"} 48.0' in text
        # Dropping one pool makes room for the others (a batch was refused; the few
        # pages left below the limit may still take a smaller one).
        assert c.post("/v1/pools/p1/pages", content=_pages(16, 1)).status_code == 507
        assert c.delete("/v1/pools/p0").status_code == 204
        assert c.post("/v1/pools/p1/pages", content=_pages(16, 2)).status_code == 201


@pytest.mark.parametrize(
    "daemon", [("--memory-limit", "64M", "--max-pools", "3", "--nbd", "127.0.0.1:0")], indirect=True
)
def test_max_pools_counts_pools_and_devices(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        assert c.put("/v1/pools/a").status_code == 201  # with default: 2
        assert c.put("/v1/devices/d", json={"size": 1 << 20}).status_code == 201  # 3
        r = c.put("/v1/pools/b")
        assert r.status_code == 507 and r.json()["error"] == "max_pools", r.text
        assert "--max-pools 3" in r.json()["detail"]
        r = c.put("/v1/devices/e", json={"size": 1 << 20})
        assert r.status_code == 507 and r.json()["error"] == "max_pools", r.text
        assert sorted(c.get("/v1/pools").json()["pools"]) == ["a", "d", "default"]
        assert c.delete("/v1/devices/d").status_code == 204
        assert c.put("/v1/pools/b").status_code == 201


@pytest.mark.parametrize(
    "daemon", [("--memory-limit", "2M", "--pool-limit", "1M", "--compressor", "lz4")], indirect=True
)
def test_delete_and_put_default_cannot_escape_the_server_limit(daemon: Daemon) -> None:
    pid = daemon.proc.pid
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        stored, refusal = _fill(c, "default", 8, seed=1)
        assert refusal["error"] == "pool_limit" and stored <= 256
        rss0 = _status_kib(pid, "VmRSS")
        for cycle in range(5):
            assert c.delete("/v1/pools/default").status_code == 204
            # Re-created without a pool limit: the server's still holds.
            assert c.put("/v1/pools/default", json={"compressor": "lz4"}).status_code == 201
            stored, refusal = _fill(c, "default", 8, seed=10 + cycle)
            assert refusal["error"] == "memory_limit"
            assert stored <= 512
            mm = c.get("/v1/pools/default/stats").json()["mm_stat"]
            assert mm["mem_used_total"] <= 2 * MiB
        # Dropped pools gave their pages back: RSS follows the limit, not the cycles.
        assert _status_kib(pid, "VmRSS") - rss0 < 8 * 1024


@pytest.mark.parametrize("daemon", [("--memory-limit", "16M", "--max-pools", "64")], indirect=True)
def test_64_pools_reserve_no_more_address_space_than_the_limits_allow(daemon: Daemon) -> None:
    pid = daemon.proc.pid
    before = _status_kib(pid, "VmSize")
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        for i in range(63):
            assert c.put(f"/v1/pools/p{i}", json={"compressor": "lz4"}).status_code == 201
        assert c.put("/v1/pools/one-too-many").status_code == 507
    grown = _status_kib(pid, "VmSize") - before
    # Each pool may reserve at most the server limit (16 MiB) of arena; 128 MiB
    # more for everything else (worker threads' stacks and malloc arenas, tables).
    # Unbounded, each pool reserved 64 GiB.
    assert grown <= (63 * 16 + 128) * 1024, f"VmSize grew {grown} KiB for 63 pools"


def test_memory_limit_percent_and_bad_values() -> None:
    for bad in ("150%", "abc", "0.5%x", "100"):
        out = run_cli("serve", "--http", "127.0.0.1:0", "--memory-limit", bad, timeout=60)
        assert out.returncode == 2, (bad, out.stderr)
        assert "memory_limit" in out.stderr, out.stderr
    d = start_daemon("--memory-limit", "1%")
    try:
        s = httpx.get(f"{d.url}/v1/pools/default/stats").json()["server"]
        total = _field_kib("/proc/meminfo", "MemTotal") * 1024
        assert s["memory_limit"] == total // 100 // PAGE * PAGE
    finally:
        d.stop()
