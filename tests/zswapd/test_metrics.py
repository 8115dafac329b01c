"""The collector alone: fresh figures at every scrape, class series that do not flap."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.zswapd.helpers import text_page
from zswapd.metrics import Metrics
from zswapd.pools import PoolRegistry


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
