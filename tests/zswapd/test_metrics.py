"""The collector alone: fresh figures at every scrape, class series that do not flap."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.zswapd.helpers import random_page, same_page, text_page
from zswapd.config import PoolConfig
from zswapd.errors import ReclaimFailError
from zswapd.metrics import Metrics
from zswapd.pool import PagePool
from zswapd.pools import PoolRegistry
from zswapd.shadows import ShadowRegistry


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrapes_read_the_pools_now_and_class_series_stay() -> None:
    reg = PoolRegistry()
    pool = reg.create("p")
    metrics = Metrics(reg)
    handles = pool.store([text_page(i) for i in range(50)])
    first = _samples(metrics)
    assert first[("zswapd_stored_pages", (("pool", "p"),))] == 50
    sizes = {dict(k[1])["size"] for k in first if k[0] == "zswapd_class_objects_used"}
    assert sizes
    pool.free(handles)
    second = _samples(metrics)
    assert second[("zswapd_stored_pages", (("pool", "p"),))] == 0
    still = {dict(k[1])["size"] for k in second if k[0] == "zswapd_class_objects_used"}
    assert still == sizes  # emptied classes report zeros, not nothing
    assert all(v == 0 for k, v in second.items() if k[0] == "zswapd_class_objects_used")
    reg.remove("p")
    third = _samples(metrics)
    assert not [k for k in third if dict(k[1]).get("pool") == "p"]


def test_separate_metrics_listener() -> None:
    import re

    import httpx

    from tests.zswapd.daemon import start_daemon

    d = start_daemon("--metrics", "127.0.0.1:0")
    try:
        line = next(line for line in d.log if "serving metrics on" in line)
        url = re.search(r"(http://\S+)", line)
        assert url is not None
        text = httpx.get(url.group(1)).text
        assert 'zswapd_stored_pages{pool="default"}' in text
        assert "zswapd_build_info" in text
    finally:
        d.stop()


def test_stale_handle_requests_are_counted_and_pass_promtool() -> None:
    import shutil
    import subprocess

    import httpx

    from tests.zswapd.daemon import start_daemon

    d = start_daemon("--memory-limit", "64M")
    try:
        with httpx.Client(base_url=d.url, timeout=30) as c:
            r = c.post("/v1/pools/default/pages", content=text_page(1) + text_page(2))
            (h1, h2) = r.json()["handles"]
            assert c.delete(f"/v1/pools/default/pages/{h1}").status_code == 204
            # A freed handle, a forged one, a batch with one stale handle: 4 requests.
            assert c.get(f"/v1/pools/default/pages/{h1}").status_code == 404
            assert c.delete(f"/v1/pools/default/pages/{h1}").status_code == 404
            assert c.get(f"/v1/pools/default/pages/{h2 ^ (1 << 40)}").status_code == 404
            r = c.post("/v1/pools/default/pages:load", json={"handles": [h2, h1]})
            assert r.status_code == 404
            assert c.get(f"/v1/pools/default/pages/{h2}").status_code == 200  # not counted
            stats = c.get("/v1/pools/default/stats").json()
            assert stats["counters"]["stale_handle_requests"] == 4
            body = c.get("/metrics").text
        line = 'zswapd_rejected_requests_total{pool="default",reason="stale_handle"} 4.0'
        assert line in body
        assert "# TYPE zswapd_rejected_requests_total counter" in body
        assert "zswapd_memory_limit_bytes 6.7108864e+07" in body
        assert "# TYPE zswapd_memory_used_bytes gauge" in body
        promtool = shutil.which("promtool")
        if promtool is not None:
            out = subprocess.run(
                [promtool, "check", "metrics"],
                input=body,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stdout + out.stderr
    finally:
        d.stop()


# -- the second tier -----------------------------------------------------------------


def _spill_config(tmp_path: Path, more: str = "") -> Path:
    """A config file with an lru pool "spill" of 24 pages over a 256-slot file,
    and ``more`` (other pools) after it."""
    config = tmp_path / "zswapd.toml"
    config.write_text(
        "[pools.spill]\n"
        'compressor = "lz4"\n'
        f"limit = {24 * 4096}\n"
        f'backing_file = "{tmp_path / "spill.bin"}"\n'
        f"backing_size = {256 * 4096}\n"
        'writeback = "lru"\n' + more
    )
    return config


def _lru_pool(reg: PoolRegistry, tmp: Path, *, limit: int = 16, slots: int = 64) -> PagePool:
    """An lru pool of ``limit`` pages in memory over a file of ``slots`` slots."""
    config = PoolConfig(
        limit_bytes=limit * 4096,
        backing_file=str(tmp / "spill.bin"),
        backing_size=slots * 4096,
        writeback="lru",
    )
    return reg.create("spill", config)


def _one_by_one(pool: PagePool, pages: list[bytes]) -> list[int]:
    # One page a store, as the kernel's: each store past the limit writes back.
    return [h for page in pages for h in pool.store([page])]


def test_backing_series_are_there_with_zeros_for_a_pool_without_a_file() -> None:
    reg = PoolRegistry()
    pool = reg.create("p")
    pool.load(pool.store([text_page(1), same_page(b"12345678")]))
    got = _samples(Metrics(reg))
    p = (("pool", "p"),)
    assert got[("zswapd_backing_pages", p)] == 0
    assert got[("zswapd_backing_size_bytes", p)] == 0
    assert got[("zswapd_written_back_pages_total", p)] == 0
    for op in ("read", "write"):
        assert got[("zswapd_backing_io_pages_total", (("op", op), *p))] == 0
    for kind in ("io", "corrupt"):
        assert got[("zswapd_backing_errors_total", (("kind", kind), *p))] == 0
    assert got[("zswapd_rejected_pages_total", (*p, ("reason", "reclaim_fail")))] == 0
    by_source = {
        dict(k[1])["source"]: v for k, v in got.items() if k[0] == "zswapd_loaded_pages_total"
    }
    assert by_source == {"pool": 1, "backing": 0, "same": 1}


def test_lru_writeback_is_not_a_pool_limit_reject_but_reclaim_fail_is(tmp_path: Path) -> None:
    reg = PoolRegistry()
    pool = _lru_pool(reg, tmp_path, limit=16, slots=32)
    metrics = Metrics(reg)
    _one_by_one(pool, [random_page(i) for i in range(40)])  # 40 > 16: writes back
    stats = pool.stats()
    assert stats.zswap.pool_limit_hit > 0  # zswap's counter: the limit was hit
    assert stats.zswap.written_back_pages > 0
    got = _samples(metrics)
    reason = {
        dict(k[1])["reason"]: v for k, v in got.items() if k[0] == "zswapd_rejected_pages_total"
    }
    # Every page was stored: no reason shows a refusal.
    assert reason == {"pool_limit": 0, "compress_poor": 0, "memory_limit": 0, "reclaim_fail": 0}
    # The file is full (32 slots) and memory too: the next stores fail whole, counted.
    refused = 0
    for i in range(40, 60):
        try:
            pool.store([random_page(i)])
        except ReclaimFailError:
            refused += 1
    assert refused > 0
    got = _samples(metrics)
    sp = (("pool", "spill"),)
    assert got[("zswapd_rejected_pages_total", (*sp, ("reason", "reclaim_fail")))] == refused
    assert got[("zswapd_rejected_pages_total", (*sp, ("reason", "pool_limit")))] == 0
    assert got[("zswapd_backing_pages", sp)] == 32
    pool.check_invariants()


def test_loads_from_memory_never_go_down_while_a_read_back_is_in_flight(
    tmp_path: Path,
) -> None:
    """A counter that goes down is a reset to Prometheus (rate() jumps): the pool
    counts a written-back page as loaded only when it has read it back."""
    reg = PoolRegistry()
    pool = _lru_pool(reg, tmp_path)
    handles = _one_by_one(pool, [random_page(i) for i in range(24)])
    metrics = Metrics(reg)
    assert pool.backing is not None
    backing = pool.backing
    read = backing.read
    reading, go_on = threading.Event(), threading.Event()

    def slow_read(slot: int, length: int, crc: int) -> bytes | None:
        reading.set()
        go_on.wait(10)
        return read(slot, length, crc)

    backing.read = slow_read  # type: ignore[method-assign]
    key = ("zswapd_loaded_pages_total", (("pool", "spill"), ("source", "pool")))
    before = _samples(metrics)
    loader = threading.Thread(target=pool.load, args=([handles[0]],))  # the oldest: in the file
    loader.start()
    try:
        assert reading.wait(10)
        during = _samples(metrics)
    finally:
        go_on.set()
        loader.join(10)
    after = _samples(metrics)
    assert before[key] == during[key] == after[key] == 0
    backing_key = ("zswapd_loaded_pages_total", (("pool", "spill"), ("source", "backing")))
    assert (during[backing_key], after[backing_key]) == (0, 1)
    assert pool.stats().counters.loaded_pages_total == 1


def test_backing_series_match_the_stats_route(tmp_path: Path) -> None:
    """A real daemon, an lru pool with a backing file (the operator's config)
    stored into past its limit: each new series has the stats route's value."""
    import shutil
    import subprocess

    import httpx

    from tests.zswapd.daemon import start_daemon

    config = _spill_config(tmp_path)
    d = start_daemon("--config", str(config))
    try:
        with httpx.Client(base_url=d.url, timeout=30) as c:
            handles: list[int] = []
            for i in range(60):  # 60 pages of 24: the oldest go to the file
                page = random_page(i) if i % 2 else text_page(i)
                r = c.post("/v1/pools/spill/pages", content=page)
                assert r.status_code == 201, r.text
                handles += r.json()["handles"]
            r = c.post("/v1/pools/spill/pages", content=same_page(b"zswapd!!") * 2)
            handles += r.json()["handles"]
            # From the file (the oldest), from memory (the newest), same-filled.
            r = c.post("/v1/pools/spill/pages:load", json={"handles": handles[:5]})
            assert r.status_code == 200
            r = c.post("/v1/pools/spill/pages:load", json={"handles": handles[-9:]})
            assert r.status_code == 200
            stats = c.get("/v1/pools/spill/stats").json()
            default = c.get("/v1/pools/default/stats").json()
            body = c.get("/metrics").text
    finally:
        d.stop()
    got = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    sp = (("pool", "spill"),)
    bd, counters, backing = stats["bd_stat"], stats["counters"], stats["backing"]
    assert bd["bd_count"] > 0 and bd["bd_reads"] == 5 and counters["loaded_same_pages"] == 2
    expect = {
        ("zswapd_backing_pages", sp): bd["bd_count"],
        ("zswapd_backing_size_bytes", sp): backing["size"],
        ("zswapd_backing_io_pages_total", (("op", "read"), *sp)): bd["bd_reads"],
        ("zswapd_backing_io_pages_total", (("op", "write"), *sp)): bd["bd_writes"],
        ("zswapd_written_back_pages_total", sp): stats["zswap"]["written_back_pages"],
        ("zswapd_backing_errors_total", (("kind", "io"), *sp)): backing["io_errors"],
        ("zswapd_backing_errors_total", (("kind", "corrupt"), *sp)): backing["corrupt_pages"],
        ("zswapd_rejected_pages_total", (*sp, ("reason", "reclaim_fail"))): stats["zswap"][
            "reject_reclaim_fail"
        ],
        ("zswapd_rejected_pages_total", (*sp, ("reason", "pool_limit"))): 0,
        ("zswapd_loaded_pages_total", (*sp, ("source", "backing"))): bd["bd_reads"],
        ("zswapd_loaded_pages_total", (*sp, ("source", "same"))): counters["loaded_same_pages"],
        ("zswapd_loaded_pages_total", (*sp, ("source", "pool"))): 7,
        ("zswapd_pages_total", (("op", "load"), *sp)): counters["loaded_pages_total"],
    }
    assert {k: got[k] for k in expect} == expect
    assert stats["zswap"]["written_back_pages"] == bd["bd_writes"] == bd["bd_count"] > 0
    assert counters["loaded_pages_total"] == 14
    # A pool without a file: the same series, zeros.
    dp = (("pool", "default"),)
    assert default["backing"] is None
    assert got[("zswapd_backing_pages", dp)] == got[("zswapd_backing_size_bytes", dp)] == 0
    promtool = shutil.which("promtool")
    if promtool is not None:
        out = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_a_devices_bd_stat_is_its_pools(tmp_path: Path) -> None:
    from zswapd.device import DeviceRegistry

    reg = PoolRegistry()
    devices = DeviceRegistry(reg)
    config = PoolConfig(backing_file=str(tmp_path / "zram0.bin"), backing_size=64 * 4096)
    dev = devices.create("zram0", 1 << 20, config)
    dev.write(0, b"".join(random_page(i) for i in range(6)))  # huge: raw
    assert dev.pool.writeback("huge")["written_back"] == 6
    assert dev.read(4096, 4096) == random_page(1)  # read back from the file
    got = _samples(Metrics(reg, devices))
    for kind, value in {"bd_reads": 1, "bd_writes": 6}.items():
        assert got[("zswapd_device_bd_total", (("kind", kind), ("pool", "zram0")))] == value
    # bd_count is a level, not a counter: it is the pool's backing pages.
    assert ("zswapd_device_bd_total", (("kind", "bd_count"), ("pool", "zram0"))) not in got
    assert got[("zswapd_backing_pages", (("pool", "zram0"),))] == 6
    dev.trim(0, 4096)  # a written-back block discarded: the level falls
    assert _samples(Metrics(reg, devices))[("zswapd_backing_pages", (("pool", "zram0"),))] == 5


def test_writeback_mode_limit_hits_and_writeback_limit_match_the_stats_route(
    tmp_path: Path,
) -> None:
    """A real daemon with an lru pool, a manual one with a writeback_limit and one
    without a file: the mode, zswap's pool_limit_hit and zram's writeback_limit
    left are the stats route's, and a lifted limit reads -1."""
    import shutil
    import subprocess

    import httpx

    from tests.zswapd.daemon import start_daemon

    config = _spill_config(
        tmp_path,
        "[pools.wb]\n"
        'compressor = "lz4"\n'
        f"limit = {8 * 4096}\n"
        f'backing_file = "{tmp_path / "wb.bin"}"\n'
        f"backing_size = {64 * 4096}\n"
        "writeback_limit = 5\n",
    )
    d = start_daemon("--config", str(config))

    def scrape(c: httpx.Client) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
        body = c.get("/metrics").text
        got = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                got[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return body, got

    try:
        with httpx.Client(base_url=d.url, timeout=30) as c:
            for i in range(40):  # past spill's limit: written back, not refused
                r = c.post("/v1/pools/spill/pages", content=random_page(i))
                assert r.status_code == 201, r.text
            refused = 0
            for i in range(12):  # past wb's limit (manual): refused with 507
                r = c.post("/v1/pools/wb/pages", content=random_page(100 + i))
                refused += r.status_code == 507
            assert refused > 0
            r = c.post("/v1/pools/wb/writeback", json={"type": "huge", "max_pages": 3})
            assert r.status_code == 200 and r.json()["writeback_limit"] == 2, r.text
            stats = {p: c.get(f"/v1/pools/{p}/stats").json() for p in ("spill", "wb", "default")}
            body, got = scrape(c)
            r = c.patch("/v1/pools/wb", json={"writeback_limit": None})
            assert r.status_code == 200, r.text
            _, lifted = scrape(c)
    finally:
        d.stop()
    assert stats["spill"]["zswap"]["pool_limit_hit"] > 0
    assert stats["wb"]["zswap"]["pool_limit_hit"] >= refused
    for pool, mode in {"spill": "lru", "wb": "manual", "default": "none"}.items():
        p = (("pool", pool),)
        assert got[("zswapd_pool_writeback_info", (("mode", mode), *p))] == 1
        modes = [
            dict(k[1])["mode"]
            for k in got
            if k[0] == "zswapd_pool_writeback_info" and dict(k[1])["pool"] == pool
        ]
        assert modes == [mode]  # one series a pool
        hits = stats[pool]["zswap"]["pool_limit_hit"]
        assert got[("zswapd_pool_limit_hit_total", p)] == hits
    assert got[("zswapd_writeback_limit_pages", (("pool", "wb"),))] == 2
    assert got[("zswapd_writeback_limit_pages", (("pool", "spill"),))] == -1
    assert got[("zswapd_writeback_limit_pages", (("pool", "default"),))] == -1
    assert lifted[("zswapd_writeback_limit_pages", (("pool", "wb"),))] == -1
    promtool = shutil.which("promtool")
    if promtool is not None:
        out = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_shadow_help_texts_name_refaults_and_stored_pages_as_the_readme_does() -> None:
    # A refault is what workingset_refault_anon counts (zswpin counts more), and
    # a stored page may be on disk: the HELP says so as the README and summary do.
    text = Metrics(PoolRegistry(), shadows=ShadowRegistry()).exposition().decode()
    helps = {f.name: f.documentation for f in text_string_to_metric_families(text)}
    assert "(workingset_refault_anon; writes only under hash)" in helps["zswapd_shadow_refaults"]
    assert "zswpin" not in helps["zswapd_shadow_refaults"]
    assert (
        "in the pool or written back from it (bd_count of them on disk)"
        in (helps["zswapd_shadow_stored_pages"])
    )
