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
