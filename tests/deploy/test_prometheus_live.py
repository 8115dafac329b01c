"""Metrics end to end: a real zswapd with two pools under a workload, scraped by
Debian's real ``prometheus`` on loopback, checked through Prometheus's own API:
the target is up, every DESIGN metric is there with the value the pool reports,
and every PromQL expression of the dashboard and the recording rules has data."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.zswapd import nbd_client
from tests.zswapd.daemon import Daemon, start_daemon
from tests.zswapd.helpers import BACKING_SERIES, poor_page, random_page, same_page, text_page
from zswapd.client import Client
from zswapd.errors import PoolLimitError
from zswapd.nbd_protocol import Cmd

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
POOLS = ("default", "fast")
DESIGN_METRICS = [
    "zswapd_pool_size_bytes",
    "zswapd_pool_size_max_bytes",
    "zswapd_pool_limit_bytes",
    "zswapd_stored_pages",
    "zswapd_original_bytes",
    "zswapd_compressed_bytes",
    "zswapd_same_filled_pages",
    "zswapd_huge_pages",
    "zswapd_compacted_pages_total",
    "zswapd_rejected_pages_total",
    "zswapd_class_zspages",
    "zswapd_class_objects_allocated",
    "zswapd_class_objects_used",
    "zswapd_class_pages",
    *BACKING_SERIES,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workload(url: str, wire: str, pages: list[bytes]) -> None:
    with Client(url) as c:
        c.create_pool("fast", compressor="lz4", limit_bytes=96 * 4096)
        handles = c.store(pages[:1200] + [same_page(bytes(8))] * 20)
        c.load(handles[:300])
        c.free(handles[::3])
        c.compact()
        fast: list[int] = []
        for i in range(150):
            # Past the limit: these are the rejects the metrics count.
            with contextlib.suppress(PoolLimitError):
                fast += c.store([random_page(i), text_page(i), poor_page(i)], pool="fast")
        c.free(fast[:10], pool="fast")
    with Client(f"unix://{wire}") as w:
        w.load(w.store(pages[1200:1400]))


PAGE = 4096
DEVICE = "zram0"


def _device_io(sock: str) -> None:
    """A block device's traffic over NBD: 48 blocks written (8 of them zeros), 16
    read, 4 trimmed, one read past the end (invalid_io)."""
    s = nbd_client.open_device(sock, DEVICE)
    try:
        blocks = [text_page(i) for i in range(40)] + [bytes(PAGE)] * 8
        nbd_client.request(s, Cmd.WRITE, 0, len(blocks) * PAGE, b"".join(blocks))
        assert nbd_client.request(s, Cmd.READ, 0, 16 * PAGE) == b"".join(blocks[:16])
        nbd_client.request(s, Cmd.TRIM, 16 * PAGE, 4 * PAGE)
        with contextlib.suppress(OSError):
            nbd_client.request(s, Cmd.READ, 64 * 1024 * 1024, PAGE)
    finally:
        s.close()


def _spill(url: str, start: int, n: int) -> list[int]:
    """Pages into the lru pool "spill" one a store (past its limit: the oldest go to
    its backing file); their handles."""
    with Client(url) as c:
        return [h for i in range(start, start + n) for h in c.store([random_page(i)], pool="spill")]


def _spill_loads(url: str, handles: list[int]) -> None:
    # Loads served from the file (the oldest pages), from memory (the newest), same-filled.
    with Client(url) as c:
        c.load(handles[:10], pool="spill")
        c.load(handles[-5:], pool="spill")
        c.load(c.store([same_page(b"spill!!!")] * 3, pool="spill"), pool="spill")


SHADOW = "svc"
# The shadow's reports, oldest first: renewed on every pass of the fixture's wait,
# its counters growing, so that rates (and the cost per GiB) have data.
_shadow_reports: list[dict[str, Any]] = []


def _report_shadow(url: str, tick: int) -> None:
    worker = {
        "pid": 4242,
        "comm": "svc-worker",
        "resident_pages": 5000,
        "cold_pages": 1200 + tick,
        "stored_pages": 1100 + tick,
        "saved_bytes": 3_000_000,
        "swapouts_total": 1100 + 10 * tick,
        "refaults_total": 3 * tick,
        "rejected_total": 0,
        "scan_seconds_total": 0.25 * tick,
        "scanned_bytes_total": 20_480_000 * tick,
        "exited": False,
    }
    body = {
        "pool": "shadow-svc",
        "detection": "soft-dirty",
        "interval_seconds": 1.0,
        "cold_after_seconds": 120.0,
        "expires_seconds": 3600.0,
        "processes": [worker],
    }
    with Client(url) as c:
        if tick == 0:  # a report names a pool of the daemon's (the shadow's own)
            c.create_pool("shadow-svc")
            # ... holding the pages it says are stored (1100 + tick, a tick every
            # 0.5 s for at most a minute): same-filled, no allocator memory.
            c.store([same_page(b"svc-page")] * 2048, pool="shadow-svc")
        c.report_shadow(SHADOW, body)
    _shadow_reports.append(body)


class Prom:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        body = r.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, process_pages: list[bytes]
) -> Iterator[tuple[Daemon, Prom]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prom")
    wire = str(tmp / "w.sock")
    # An lru pool with a backing file (the operator's config may name any path).
    config = tmp / "zswapd.toml"
    config.write_text(
        f'[pools.spill]\nlimit = {32 * 4096}\nbacking_file = "{tmp / "spill.bin"}"\n'
        f'backing_size = {256 * 4096}\nwriteback = "lru"\n'
    )
    nbd = str(tmp / "nbd.sock")
    d = start_daemon(
        "--unix-socket",
        wire,
        "--config",
        str(config),
        "--nbd",
        f"unix:{nbd}",
        "--device",
        f"{DEVICE}=64M,compressor=lz4",
    )
    _workload(d.url, wire, process_pages)
    _device_io(nbd)
    spilled = _spill(d.url, 0, 80)
    host_port = d.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "rules" / "zswapd.rules.yml")],
        "scrape_configs": [{"job_name": "zswapd", "static_configs": [{"targets": [host_port]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prom = Prom(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        loaded = False
        tick = 0
        while time.monotonic() < deadline:
            _report_shadow(d.url, tick)
            tick += 1
            try:
                # Rates need two scrapes inside their window; recording rules a pass.
                if prom.query("zswapd:pages:rate1m") and prom.query("zswapd:requests:rate1m"):
                    if not loaded:
                        # Loads after the first scrape: the hit ratio has a rate to divide.
                        _spill_loads(d.url, spilled)
                        loaded = True
                    elif (
                        prom.query('sum(zswapd_loaded_pages_total{pool="spill"}) == 18')
                        and prom.query('zswapd:load_hit_ratio:rate5m{pool="spill"} > 0')
                        and (prom.query("zswapd:shadow_scan_seconds_per_gib:rate5m"))
                    ):
                        # Every load scraped: a scrape between the file's loads and
                        # memory's would otherwise leave a ratio of 0 for a while.
                        break
            except (httpx.HTTPError, AssertionError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail("prometheus never scraped zswapd and evaluated the rules")
        yield d, prom
    finally:
        proc.terminate()
        proc.wait(30)
        d.stop()


def test_target_is_up(stack: tuple[Daemon, Prom]) -> None:
    _, prom = stack
    (up,) = prom.query('up{job="zswapd"}')
    assert up["value"][1] == "1"


def test_every_design_metric_has_the_pools_value(stack: tuple[Daemon, Prom]) -> None:
    d, prom = stack
    with Client(d.url) as c:
        stats = {p: c.stats(p) for p in POOLS}
    for metric in DESIGN_METRICS:
        pools = {s["metric"]["pool"] for s in prom.query(metric)}
        assert set(POOLS) <= pools, metric
    expect = {
        "zswapd_stored_pages": ("zswap", "stored_pages"),
        "zswapd_original_bytes": ("mm_stat", "orig_data_size"),
        "zswapd_compressed_bytes": ("mm_stat", "compr_data_size"),
        "zswapd_pool_size_bytes": ("mm_stat", "mem_used_total"),
        "zswapd_pool_size_max_bytes": ("mm_stat", "mem_used_max"),
        "zswapd_pool_limit_bytes": ("mm_stat", "mem_limit"),
        "zswapd_same_filled_pages": ("mm_stat", "same_pages"),
        "zswapd_huge_pages": ("mm_stat", "huge_pages"),
        "zswapd_compacted_pages_total": ("mm_stat", "pages_compacted"),
    }
    for metric, (section, key) in expect.items():
        for pool in POOLS:
            (sample,) = prom.query(f'{metric}{{pool="{pool}"}}')
            assert float(sample["value"][1]) == stats[pool][section][key], (metric, pool)
    for pool in POOLS:
        (rejects,) = prom.query(f'zswapd_rejected_pages_total{{pool="{pool}",reason="pool_limit"}}')
        assert float(rejects["value"][1]) == stats[pool]["zswap"]["pool_limit_hit"]
        objects = stats[pool]["zswap"]["stored_pages"] - stats[pool]["mm_stat"]["same_pages"]
        (used,) = prom.query(f'sum(zswapd_class_objects_used{{pool="{pool}"}})')
        assert float(used["value"][1]) == objects
        (pages,) = prom.query(f'sum(zswapd_class_pages{{pool="{pool}"}}) * 4096')
        assert float(pages["value"][1]) == stats[pool]["mm_stat"]["mem_used_total"]
    assert (
        float(
            prom.query('zswapd_rejected_pages_total{pool="fast",reason="pool_limit"}')[0]["value"][
                1
            ]
        )
        > 0
    )
    interfaces = {
        s["metric"]["interface"] for s in prom.query("zswapd_request_duration_seconds_count")
    }
    assert interfaces == {"http", "wire", "nbd"}
    assert prom.query("zswapd_build_info")[0]["metric"]["version"]
    assert prom.query("process_resident_memory_bytes")


def test_second_tier_series_have_the_spill_pools_values(stack: tuple[Daemon, Prom]) -> None:
    """Through Prometheus: bd_stat, written-back pages, loads by source and the hit
    ratio are what the stats route says (nothing runs after the loads)."""
    d, prom = stack
    with Client(d.url) as c:
        stats = c.stats("spill")
        plain = c.stats("default")

    def value(expr: str) -> float:
        (sample,) = prom.query(expr)
        return float(sample["value"][1])

    bd, counters = stats["bd_stat"], stats["counters"]
    assert bd["bd_count"] > 0 and bd["bd_reads"] == 10
    spill = 'pool="spill"'
    assert value(f"zswapd_backing_pages{{{spill}}}") == bd["bd_count"]
    assert value(f"zswapd_backing_size_bytes{{{spill}}}") == stats["backing"]["size"]
    assert value(f'zswapd_backing_io_pages_total{{{spill},op="read"}}') == bd["bd_reads"]
    assert value(f'zswapd_backing_io_pages_total{{{spill},op="write"}}') == bd["bd_writes"]
    written_back = stats["zswap"]["written_back_pages"]
    assert value(f"zswapd_written_back_pages_total{{{spill}}}") == written_back
    by_source = {
        s["metric"]["source"]: float(s["value"][1])
        for s in prom.query(f"zswapd_loaded_pages_total{{{spill}}}")
    }
    assert by_source == {"pool": 5, "backing": 10, "same": 3}
    assert sum(by_source.values()) == counters["loaded_pages_total"]
    # 8 of 18 loads without the file (the exact share depends on rate()'s window).
    assert 0 < value(f"zswapd:load_hit_ratio:rate5m{{{spill}}}") < 1
    assert value('zswapd_backing_pages{pool="default"}') == plain["bd_stat"]["bd_count"] == 0


def test_block_device_series_have_the_devices_values(stack: tuple[Daemon, Prom]) -> None:
    """Through Prometheus, what the dashboard's device row reads is what zramctl and
    /sys/block/zramN would say: GET /v1/devices/NAME/stats."""
    d, prom = stack
    with httpx.Client(base_url=d.url, timeout=10) as h:
        stats = h.get(f"/v1/devices/{DEVICE}/stats").json()

    def value(expr: str) -> float:
        (sample,) = prom.query(expr)
        return float(sample["value"][1])

    dev = f'pool="{DEVICE}"'
    mm = stats["mm_stat"]
    assert value(f"zswapd_device_size_bytes{{{dev}}}") == stats["size"] == 64 << 20
    assert value(f"zswapd_original_bytes{{{dev}}}") == mm["orig_data_size"] == 44 * PAGE
    assert value(f"zswapd_compressed_bytes{{{dev}}}") == mm["compr_data_size"]
    assert value(f"zswapd_pool_size_bytes{{{dev}}}") == mm["mem_used_total"] > 0
    assert value(f"zswapd_same_filled_pages{{{dev}}}") == mm["same_pages"] == 8
    io = stats["io_stat"]
    assert io["notify_free"] == 4 and io["invalid_io"] == 1
    for kind, count in io.items():
        assert value(f'zswapd_device_io_total{{{dev},kind="{kind}"}}') == count, kind
    for kind in ("bd_reads", "bd_writes"):
        assert value(f'zswapd_device_bd_total{{{dev},kind="{kind}"}}') == 0
    ops = {
        s["metric"]["op"]
        for s in prom.query('zswapd_request_duration_seconds_count{interface="nbd"}')
    }
    assert {"read", "write", "trim"} <= ops, ops


def test_a_shadows_figures_reach_prometheus_with_their_labels(stack: tuple[Daemon, Prom]) -> None:
    """A shadow's last report, as Prometheus scraped it: each figure under its
    process's labels, and the recorded rates of a process swapping and refaulting."""
    _, prom = stack
    last = _shadow_reports[-1]
    (worker,) = last["processes"]
    who = f'shadow="{SHADOW}",pool="shadow-svc",pid="4242",comm="svc-worker"'

    def value(expr: str) -> float:
        (sample,) = prom.query(expr)
        return float(sample["value"][1])

    # Reports stopped when the fixture's wait did: the next scrape has the last.
    deadline = time.monotonic() + 30
    while value(f"zswapd_shadow_refaults_total{{{who}}}") != worker["refaults_total"]:
        assert time.monotonic() < deadline, "the last report never reached Prometheus"
        time.sleep(0.5)
    for metric, key in (
        ("zswapd_shadow_resident_pages", "resident_pages"),
        ("zswapd_shadow_cold_pages", "cold_pages"),
        ("zswapd_shadow_stored_pages", "stored_pages"),
        ("zswapd_shadow_saved_bytes", "saved_bytes"),
        ("zswapd_shadow_swapouts_total", "swapouts_total"),
        ("zswapd_shadow_rejected_pages_total", "rejected_total"),
        ("zswapd_shadow_scan_seconds_total", "scan_seconds_total"),
        ("zswapd_shadow_scanned_bytes_total", "scanned_bytes_total"),
    ):
        assert value(f"{metric}{{{who}}}") == worker[key], metric
    assert value(f'zswapd_shadow_interval_seconds{{shadow="{SHADOW}",pool="shadow-svc"}}') == 1
    assert value(f'zswapd_shadow_info{{shadow="{SHADOW}",detection="soft-dirty"}}') == 1
    assert value(f"zswapd:shadow_refaults:rate5m{{{who}}}") > 0
    assert value(f"zswapd:shadow_swapouts:rate5m{{{who}}}") > 0
    # 0.25 s of scanning per 20,480,000 bytes, whatever the rates' window.
    per_gib = value(f"zswapd:shadow_scan_seconds_per_gib:rate5m{{{who}}}")
    assert per_gib == pytest.approx(0.25 / 20_480_000 * 2**30)


def _exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "zswapd.json").read_text())
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "zswapd.rules.yml").read_text())
    out += [r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r]
    return out


@pytest.mark.parametrize("expr", _exprs())
def test_every_dashboard_and_rule_expression_has_data(
    stack: tuple[Daemon, Prom], expr: str
) -> None:
    _, prom = stack
    # 5m: the spill pool's loads happen once, at the start; a window that still
    # holds them keeps the load-share panel's rate > 0 on a slow machine too.
    concrete = (
        expr.replace("$pool", ".*")
        .replace("$device", DEVICE)
        .replace("$shadow", ".*")
        .replace("$__rate_interval", "5m")
    )
    assert prom.query(concrete), concrete


def test_exposition_passes_promtool_check_metrics(stack: tuple[Daemon, Prom]) -> None:
    d, _ = stack
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    body = httpx.get(f"{d.url}/metrics").text
    out = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
