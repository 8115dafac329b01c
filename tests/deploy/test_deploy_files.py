"""deploy/: every file checked by its own tool, and the files consistent with each other."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus / systemd)")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_prometheus_config_rules_and_rule_tests() -> None:
    promtool = _tool("promtool")
    out = _run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    out = _run(
        promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules" / "zswapd.rules.yml")
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = _run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "tests" / "zswapd_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "zswapd.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "zswapd_test.yml").read_text())
    fired = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts and alerts == fired


def test_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(DEPLOY / "prometheus" / "rules", tmp_path / "rules")
    out = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_systemd_unit_verifies_and_is_hardened() -> None:
    analyze = _tool("systemd-analyze")
    unit = DEPLOY / "systemd" / "zswapd.service"
    out = _run(analyze, "verify", str(unit))
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    text = unit.read_text()
    for setting in (
        "DynamicUser=yes",
        "RuntimeDirectory=zswapd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
    ):
        assert setting in text
    assert "--metrics 127.0.0.1:" in text  # the one TCP listener: loopback only
    assert "--http unix:/run/zswapd/" in text  # inside its RuntimeDirectory
    assert "--unix-socket /run/zswapd/" in text


def test_dashboard_is_provisionable_and_uses_its_variables() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "zswapd.json").read_text())
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "pool", "device", "shadow"} <= names
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles)) >= 10
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert any(p["type"] == "heatmap" for p in dash["panels"])
    for panel in _graphs(dash):
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].strip()
    wanted = [
        "zswapd_pool_size_bytes",
        "zswapd_pool_limit_bytes",
        "zswapd_original_bytes",
        "zswapd_compressed_bytes",
        "zswapd:compression_ratio",
        "zswapd_same_filled_pages",
        "zswapd_huge_pages",
        "zswapd_class_zspages",
        "zswapd_class_objects_allocated",
        "zswapd_class_objects_used",
        "zswapd_request_duration_seconds",
        "zswapd_rejected_pages_total",
        # The second tier.
        "zswapd_backing_pages",
        "zswapd_backing_size_bytes",
        "zswapd_backing_io_pages_total",
        "zswapd_written_back_pages_total",
        "zswapd_loaded_pages_total",
        "zswapd:load_hit_ratio:rate5m",
        'reason="reclaim_fail"',
        "zswapd_backing_errors_total",
        # Block devices: zramctl's columns, io_stat, bd_stat, NBD commands.
        "zswapd_device_size_bytes",
        "zswapd_device_io_total",
        "zswapd_device_bd_total",
        'interface="nbd"',
        # Shadowed processes: what zswap would do for a live service.
        "zswapd_shadow_resident_pages",
        "zswapd_shadow_cold_pages",
        "zswapd_shadow_stored_pages",
        "zswapd_shadow_saved_bytes",
        "rate(zswapd_shadow_refaults_total{",
        "rate(zswapd_shadow_scan_seconds_total{",
        "rate(zswapd_shadow_scanned_bytes_total{",
    ]
    exprs = " ".join(t["expr"] for p in _graphs(dash) for t in p["targets"])
    for metric in wanted:
        assert metric in exprs, metric


def _graphs(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that query (rows only group them)."""
    return [p for p in dash["panels"] if p["type"] != "row"]


def _rows(dash: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each row and the panels under it, in the order Grafana lays them out."""
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for panel in sorted(dash["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            out.append((panel, []))
        else:
            assert out, f"{panel['title']!r} is above the first row"
            out[-1][1].append(panel)
    return out


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def test_the_dashboard_imports_into_a_grafana_whose_data_source_has_any_name() -> None:
    """No data source is named but through the `datasource` variable, which starts on
    Grafana's default Prometheus: an import (UI or POST /api/dashboards/db) needs no
    edit and no `__inputs` to fill; the id is Grafana's to give."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "zswapd.json").read_text())
    assert "__inputs" not in dash and dash.get("id") is None and dash["uid"] == "zswapd"
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    assert not var.get("current")  # nothing pinned: Grafana picks its default
    refs = [
        d for d in _datasources(dash["panels"] + dash["templating"]["list"]) if d != "prometheus"
    ]
    assert refs and all(d == {"type": "prometheus", "uid": "${datasource}"} for d in refs), refs


def test_the_dashboard_has_a_row_for_block_devices() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "zswapd.json").read_text())
    rows = {row["title"]: panels for row, panels in _rows(dash)}
    (devices,) = [panels for title, panels in rows.items() if title.startswith("Block devices")]
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "device"]
    assert "zswapd_device_size_bytes" in var["definition"]  # only pools that are devices
    exprs = [t["expr"] for p in devices for t in p["targets"]]
    # Every device panel keeps to the chosen devices (the NBD command rate has no device).
    assert all('pool=~"$device"' in e or 'interface="nbd"' in e for e in exprs), exprs
    legends = " ".join(t["legendFormat"] for p in devices for t in p["targets"])
    for column in ("DISKSIZE", "DATA", "COMPR", "TOTAL"):  # zramctl's
        assert column in legends
    for name in ("zswapd_device_io_total", "zswapd_device_bd_total", "zswapd:compression_ratio"):
        assert any(name in e for e in exprs), name


def test_the_dashboard_has_a_row_for_shadowed_processes() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "zswapd.json").read_text())
    rows = {row["title"]: panels for row, panels in _rows(dash)}
    (shadowed,) = [p for title, p in rows.items() if title.startswith("Shadowed processes")]
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "shadow"]
    assert "zswapd_shadow_" in var["definition"] and var["multi"] and var["includeAll"]
    exprs = [t["expr"] for p in shadowed for t in p["targets"]]
    # Every panel keeps to the chosen shadows, and names the process in its legend.
    assert all('shadow=~"$shadow"' in e for e in exprs), exprs
    # One panel says each shadow's detection (hash sees writes only: its figures
    # are bounds); every other one is per process, named in its legend.
    (info,) = [p for p in shadowed if "zswapd_shadow_info" in str(p["targets"])]
    assert "detection" in info["title"] and "upper bounds" in info["description"]
    assert "{{detection}}" in info["targets"][0]["legendFormat"]
    legends = [t["legendFormat"] for p in shadowed if p is not info for t in p["targets"]]
    assert all("{{comm}}" in le and "{{pid}}" in le for le in legends), legends
    # A panel plotting rejected pages says so in its title.
    for p in shadowed:
        if "zswapd_shadow_rejected_pages_total" in str(p["targets"]):
            assert "rejected" in p["title"], p["title"]
    for wanted in (
        "zswapd_shadow_resident_pages",
        "zswapd_shadow_cold_pages",
        "zswapd_shadow_stored_pages",
        "zswapd_shadow_saved_bytes",
        "rate(zswapd_shadow_refaults_total",
        "rate(zswapd_shadow_scan_seconds_total",
        "rate(zswapd_shadow_scanned_bytes_total",
    ):
        assert any(wanted in e for e in exprs), wanted
    # The refaults and saving panels use the README's words for them.
    described = {p["title"]: p["description"] for p in shadowed}
    refaults = described["Shadowed processes: refaults, swap-outs and rejected pages per second"]
    assert "workingset_refault_anon" in refaults and "writes only under hash" in refaults
    saved = described["Shadowed processes: memory saved"]
    assert "orig_data_size - 4096 x bd_count - mem_used_total" in saved
    pages = described["Shadowed processes: resident, cold and stored pages"]
    assert "in the pool or written back from it: bd_count of them on disk" in pages
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in shadowed}
    assert units["Shadowed processes: memory saved"] == "bytes"
    assert units["Shadow scanned bytes per second"] == "Bps"


def test_shadow_rules_record_rates_by_process() -> None:
    records = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    for name in ("swapouts", "refaults", "scan_seconds", "scanned_bytes"):
        expr = records[f"zswapd:shadow_{name}:rate5m"]
        assert f"rate(zswapd_shadow_{name}_total[5m])" in expr, name
        assert "by (shadow, pool, pid, comm)" in expr, name
    assert "> 0" in records["zswapd:shadow_scan_seconds_per_gib:rate5m"]  # no scans: no figure


def test_compose_is_consistent_with_the_other_files() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"zswapd", "prometheus", "grafana"}
    build = services["zswapd"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    port = re.search(r"EXPOSE (\d+)", dockerfile)
    assert port is not None
    assert f':{port.group(1)}"]' in dockerfile or f":{port.group(1)}" in dockerfile
    assert any(p.endswith(f":{port.group(1)}") for p in services["zswapd"]["ports"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), source
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    target = scrape["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == f"zswapd:{port.group(1)}"
    prov = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "zswapd.yml").read_text()
    )
    mount = [
        v for v in services["grafana"]["volumes"] if "dashboards" in v and "provisioning" not in v
    ]
    assert mount and mount[0].split(":")[1] == prov["providers"][0]["options"]["path"]
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    for path in ("/etc/prometheus/prometheus.yml", "/etc/prometheus/rules"):
        assert any(v.split(":")[1] == path for v in services["prometheus"]["volumes"])


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "zswapd.rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_second_tier_rules_record_the_hit_ratio_and_alert_on_spills_and_reclaim_fail() -> None:
    rules = _rules()
    records = {r["record"]: r["expr"] for r in rules if "record" in r}
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    ratio = records["zswapd:load_hit_ratio:rate5m"]
    assert 'source!="backing"' in ratio and "> 0" in ratio  # no loads: no ratio, not NaN
    spill = alerts["ZswapdWorkingSetSpillsToDisk"]
    assert "zswapd:load_hit_ratio:rate5m" in spill["expr"] and spill["for"] == "10m"
    assert 'reason="reclaim_fail"' in alerts["ZswapdReclaimFailing"]["expr"]
    # One refusal, one alert: the general one leaves reclaim_fail to its own.
    assert 'reason!="reclaim_fail"' in alerts["ZswapdRejectsRising"]["expr"]
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "zswapd.json").read_text())
    shares = [p for p in _graphs(dash) if "zswapd_loaded_pages_total" in str(p["targets"])]
    assert shares and all(p["fieldConfig"]["defaults"]["unit"] == "percentunit" for p in shares)


def test_every_metric_the_dashboard_and_rules_name_is_exported(tmp_path: Path) -> None:
    """No panel or rule reads a series the daemon does not export (a typo shows as an
    empty panel, an alert that never fires): names checked against a real scrape of a
    registry with a pool with and a pool without a backing file."""
    from prometheus_client.parser import text_string_to_metric_families

    from zswapd.config import PoolConfig
    from zswapd.device import DeviceRegistry
    from zswapd.metrics import Metrics
    from zswapd.pools import PoolRegistry
    from zswapd.shadows import ShadowRegistry

    reg = PoolRegistry()
    # A page stored: class series are there for classes that held a zspage.
    reg.create("plain").store([b"zswapd " * 585 + b"."])
    reg.create(
        "spill",
        PoolConfig(
            limit_bytes=8 * 4096,
            backing_file=str(tmp_path / "spill.bin"),
            backing_size=16 * 4096,
            writeback="lru",
        ),
    )
    devices = DeviceRegistry(reg)
    devices.create("zram0", 1 << 20)
    shadows = ShadowRegistry()
    figures = {
        "resident_pages": 10,
        "cold_pages": 4,
        "stored_pages": 4,
        "saved_bytes": 8192,
        "swapouts_total": 5,
        "refaults_total": 1,
        "rejected_total": 0,
        "scan_seconds_total": 0.01,
        "scanned_bytes_total": 40960,
    }
    shadows.report(
        "svc",
        {
            "pool": "plain",
            "detection": "hash",
            "interval_seconds": 10,
            "cold_after_seconds": 120,
            "processes": [{"pid": 1, "comm": "init", "exited": False, **figures}],
        },
    )
    metrics = Metrics(reg, devices, shadows)
    metrics.observe("http", "store", 0.001)
    exported = set()
    for fam in text_string_to_metric_families(metrics.exposition().decode()):
        exported |= {s.name for s in fam.samples}
    recorded = {r["record"] for r in _rules() if "record" in r}
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "zswapd.json").read_text())
    exprs = [t["expr"] for p in _graphs(dash) for t in p["targets"]]
    exprs += [r["expr"] for r in _rules()]
    named = {n for e in exprs for n in re.findall(r"\b(zswapd[_:][a-z0-9_:]+)", e)}
    assert named
    missing = sorted(n for n in named if n not in exported and n not in recorded)
    assert not missing, missing
