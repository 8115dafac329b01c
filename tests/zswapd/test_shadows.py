"""Shadows' reports against a real daemon: kept, listed, exported per process
with their labels, replaced, removed, expired; every bound a hostile local user
could push refused whole, with nothing changed; the 64-shadow cap; the token."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.zswapd.daemon import Daemon, start_daemon, token_file, wire_daemon
from tests.zswapd.helpers import metric_value, same_page, text_page
from zswapd.client import Client
from zswapd.errors import (
    ImpossibleReportError,
    InvalidRequestError,
    TooManyShadowsError,
    UnauthorizedError,
    UnknownShadowError,
    ZswapdError,
)
from zswapd.metrics import Metrics
from zswapd.pools import PoolRegistry
from zswapd.shadows import MAX_SHADOWS, MIN_INTERVAL_SECONDS, PROCESS_KEYS, ShadowRegistry
from zswapd.swapsim import ProcessFigures

# The series of a process, and the figure each carries.
GAUGES = {
    "zswapd_shadow_resident_pages": "resident_pages",
    "zswapd_shadow_cold_pages": "cold_pages",
    "zswapd_shadow_stored_pages": "stored_pages",
    "zswapd_shadow_saved_bytes": "saved_bytes",
}
COUNTERS = {
    "zswapd_shadow_swapouts_total": "swapouts_total",
    "zswapd_shadow_refaults_total": "refaults_total",
    "zswapd_shadow_rejected_pages_total": "rejected_total",
    "zswapd_shadow_scan_seconds_total": "scan_seconds_total",
    "zswapd_shadow_scanned_bytes_total": "scanned_bytes_total",
}


def process(pid: int, comm: str = "redis-server", **figures: Any) -> dict[str, Any]:
    """A process's figures as a shadow reports them (ProcessFigures's fields)."""
    out: dict[str, Any] = {
        "pid": pid,
        "comm": comm,
        "resident_pages": 1000 + pid,
        "cold_pages": 400,
        "stored_pages": 390,
        "saved_bytes": 1_200_000,
        "swapouts_total": 420,
        "refaults_total": 30,
        "rejected_total": 10,
        "scan_seconds_total": 1.5,
        "scanned_bytes_total": 40_960_000,
        "exited": False,
    }
    out.update(figures)
    assert tuple(out) == PROCESS_KEYS
    return out


def report(*processes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pool": "shadow-123",
        "detection": "hash",
        "interval_seconds": 10.0,
        "cold_after_seconds": 120.0,
        "expires_seconds": 600.0,
        "processes": list(processes) or [process(123)],
    }
    body.update(fields)
    return body


def exited(pid: int, comm: str = "worker", **figures: Any) -> dict[str, Any]:
    """A process that exited, as a shadow reports it: its pages freed, none present."""
    held = {"resident_pages": 0, "cold_pages": 0, "stored_pages": 0}
    return process(pid, comm, **{**held, **figures, "exited": True})


def fill(url: str, pool: str, pages: int) -> list[int]:
    """Store ``pages`` same-filled pages in ``pool`` (no allocator memory): the
    pages a report's stored_pages must be within."""
    with Client(url) as c:
        return c.store([same_page(b"shadowed")] * pages, pool=pool)


# The pools the reports below name: a report must name a pool of the daemon's,
# holding at least the pages its processes' stored_pages sum to.
POOLS = ("shadow-123", "other", "pool0", "pool1", "pool2", "pool3")
HELD = 1024


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = start_daemon()
    try:
        with httpx.Client(base_url=d.url, timeout=60) as h:
            for pool in POOLS:
                assert h.put(f"/v1/pools/{pool}").status_code == 201, pool
                fill(d.url, pool, HELD)
        yield d
    finally:
        assert d.stop() == 0, d.log


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, timeout=60) as h:
        yield h
        # Whatever a test left, the next one starts without.
        for name in h.get("/v1/shadows").json()["shadows"]:
            h.delete(f"/v1/shadows/{name}")


def scrape(h: httpx.Client) -> str:
    r = h.get("/metrics")
    assert r.status_code == 200
    return r.text


def labels(shadow: str, p: dict[str, Any], pool: str = "shadow-123") -> dict[str, str]:
    return {"shadow": shadow, "pool": pool, "pid": str(p["pid"]), "comm": p["comm"]}


def shadow_series(text: str) -> set[tuple[str, str]]:
    """(metric, shadow) of every shadow sample in an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, s.labels["shadow"])
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("zswapd_shadow_")
    }


# -- the round trip --------------------------------------------------------------------


def test_a_report_is_listed_exported_replaced_and_removed(
    daemon: Daemon, http: httpx.Client
) -> None:
    redis, worker = process(123), exited(456, 'worker "q" \\ é', saved_bytes=-8192)
    with Client(daemon.url) as c:
        c.report_shadow("redis", report(redis, worker, detection="soft-dirty+idle"))
        listed = c.shadows()
    assert set(listed) == {"redis"}
    got = listed["redis"]
    age = got.pop("age_seconds")
    assert 0 <= age < 60
    assert got == report(redis, worker, detection="soft-dirty+idle")

    text = scrape(http)
    for p in (redis, worker):
        want = labels("redis", p)
        for metric, key in {**GAUGES, **COUNTERS}.items():
            assert metric_value(text, metric, **want) == p[key], (metric, p["pid"])
        assert metric_value(text, "zswapd_shadow_exited", **want) == int(p["exited"])
    pair = {"shadow": "redis", "pool": "shadow-123"}
    assert metric_value(text, "zswapd_shadow_interval_seconds", **pair) == 10.0
    assert metric_value(text, "zswapd_shadow_cold_after_seconds", **pair) == 120.0
    assert metric_value(text, "zswapd_shadow_info", detection="soft-dirty+idle", **pair) == 1

    # Replaced whole: the worker is gone from the report, its series with it.
    moved = process(123, refaults_total=31, scan_seconds_total=2.25)
    r = http.put("/v1/shadows/redis", json=report(moved, pool="other"))
    assert r.status_code == 204 and r.content == b""
    listed = http.get("/v1/shadows").json()["shadows"]
    assert [p["pid"] for p in listed["redis"]["processes"]] == [123]
    text = scrape(http)
    assert (
        metric_value(text, "zswapd_shadow_refaults_total", **labels("redis", moved, "other")) == 31
    )
    with pytest.raises(KeyError):
        metric_value(text, "zswapd_shadow_refaults_total", **labels("redis", redis))
    with pytest.raises(KeyError):
        metric_value(text, "zswapd_shadow_resident_pages", **labels("redis", worker))

    with Client(daemon.url) as c:
        c.remove_shadow("redis")
        assert c.shadows() == {}
        with pytest.raises(UnknownShadowError, match="404"):
            c.remove_shadow("redis")
    r = http.delete("/v1/shadows/redis")
    assert r.status_code == 404 and r.json()["error"] == "unknown_shadow", r.text
    assert shadow_series(scrape(http)) == set()


def test_expiry_defaults_to_three_intervals_at_least_30_seconds(http: httpx.Client) -> None:
    for interval, expires in ((0.5, 30.0), (10.0, 30.0), (20.0, 60.0), (1e9, 86400.0)):
        body = report(interval_seconds=interval)
        del body["expires_seconds"]
        assert http.put("/v1/shadows/d", json=body).status_code == 204
        got = http.get("/v1/shadows").json()["shadows"]["d"]
        assert got["expires_seconds"] == expires, interval


def test_a_report_not_renewed_is_gone_from_the_listing_and_the_metrics(
    http: httpx.Client,
) -> None:
    assert http.put("/v1/shadows/brief", json=report(expires_seconds=1)).status_code == 204
    assert http.put("/v1/shadows/lasting", json=report()).status_code == 204
    # Polled: gone once a second has passed, whenever this machine gets to look.
    deadline = time.monotonic() + 60
    while "brief" in http.get("/v1/shadows").json()["shadows"]:
        assert time.monotonic() < deadline, "a report past its expires_seconds is still listed"
        time.sleep(0.1)
    shadows = {s for _, s in shadow_series(scrape(http))}
    assert shadows == {"lasting"}
    assert set(http.get("/v1/shadows").json()["shadows"]) == {"lasting"}
    r = http.delete("/v1/shadows/brief")
    assert r.status_code == 404 and r.json()["error"] == "unknown_shadow"


# -- bounds -------------------------------------------------------------------------------


def _with_process(**change: Any) -> dict[str, Any]:
    p = process(123)
    p.update(change)
    return report(p)


def _without(key: str) -> dict[str, Any]:
    p = process(123)
    del p[key]
    return report(p)


BAD_REPORTS: dict[str, dict[str, Any]] = {
    "1025 processes": report(*(process(i) for i in range(1, 1026))),
    "pid 0": _with_process(pid=0),
    "pid past PID_MAX_LIMIT": _with_process(pid=(1 << 22) + 1),
    "comm of 65 characters": _with_process(comm="x" * 65),
    "comm with a newline": _with_process(comm="evil\nzswapd_pools 0"),
    "comm with an escape": _with_process(comm="\x1b[2J"),
    "comm with DEL": _with_process(comm="a\x7f"),
    "comm with a C1 control": _with_process(comm="a\x85"),
    "comm with a line separator": _with_process(comm="a\u2028b"),
    # Format characters (Cf): invisible, yet they tell two series apart, or turn
    # the text after them around, in a legend.
    "comm with a zero-width space": _with_process(comm="redis\u200b"),
    "comm with a left-to-right mark": _with_process(comm="a\u200eb"),
    "comm with a right-to-left override": _with_process(comm="\u202etxt.exe"),
    "comm with a left-to-right isolate": _with_process(comm="a\u2066b\u2069"),
    "comm with a byte order mark": _with_process(comm="\ufeffredis"),
    "comm with a soft hyphen": _with_process(comm="re\u00addis"),
    "comm not a string": _with_process(comm=12),
    "a negative count": _with_process(cold_pages=-1),
    "a count past 2**53": _with_process(swapouts_total=2**53 + 1),
    "a count that is a boolean": _with_process(refaults_total=True),
    "a count that is a fraction": _with_process(stored_pages=1.5),
    "a count that is a string": _with_process(resident_pages="12"),
    "saved_bytes past 2**53": _with_process(saved_bytes=2**53 + 1),
    "negative scan seconds": _with_process(scan_seconds_total=-0.5),
    "exited not a boolean": _with_process(exited=1),
    "a process key unknown": _with_process(swappiness=60),
    "a process key missing": _without("rejected_total"),
    "negative interval": report(interval_seconds=-1),
    "negative cold_after": report(cold_after_seconds=-0.1),
    "expires under 1 s": report(expires_seconds=0.5),
    "expires over a day": report(expires_seconds=86401),
    "detection unknown": report(detection="magic"),
    "pool not a name": report(pool="../etc"),
    "pool too long": report(pool="p" * 65),
    "a report key unknown": report(owner="root"),
    "processes not a list": report(processes={"123": process(123)}),
}

# What a JSON encoder will not write but a hostile client may send.
RAW_REPORTS: dict[str, bytes] = {
    "NaN seconds": json.dumps(report(interval_seconds=float("nan"))).encode(),
    "infinite seconds": json.dumps(report(cold_after_seconds=float("inf"))).encode(),
    "infinite scan seconds": json.dumps(
        report(process(123, scan_seconds_total=float("inf")))
    ).encode(),
    "a lone surrogate in comm": json.dumps(report(process(123, comm="x")))
    .replace('"comm": "x"', '"comm": "\\ud800"')
    .encode(),
    "null": b"null",
    "not JSON": b"{pool",
    "a list": b"[]",
}


def test_every_bound_is_refused_whole_and_changes_nothing(http: httpx.Client) -> None:
    before = report(process(1, "kept"), expires_seconds=600)
    assert http.put("/v1/shadows/kept", json=before).status_code == 204
    exposition = {s for s in shadow_series(scrape(http))}
    cases = [(what, json.dumps(body).encode()) for what, body in BAD_REPORTS.items()]
    cases += list(RAW_REPORTS.items())
    for what, raw in cases:
        for name in ("kept", "fresh"):  # a replacement refused, a first report refused
            r = http.put(
                f"/v1/shadows/{name}", content=raw, headers={"content-type": "application/json"}
            )
            assert r.status_code == 400, (what, r.status_code, r.text)
            assert r.json()["error"] == "bad_request" and r.json()["detail"], (what, r.text)
    for name in ("-leading-dash", "x" * 65, "a b", "a%2Fb"):
        r = http.put(f"/v1/shadows/{name}", json=report())
        assert r.status_code in (400, 404), (name, r.text)
    listed = http.get("/v1/shadows").json()["shadows"]
    assert set(listed) == {"kept"}
    listed["kept"].pop("age_seconds")
    assert listed["kept"] == before
    assert shadow_series(scrape(http)) == exposition


# Well formed, but no shadow could send them: 422, naming the field and the rule.
IMPOSSIBLE_REPORTS: dict[str, tuple[dict[str, Any], str]] = {
    "stored > cold": (
        _with_process(stored_pages=401),
        "processes[0].stored_pages 401 > cold_pages 400",
    ),
    "cold > resident": (
        _with_process(resident_pages=399),
        "processes[0].cold_pages 400 > resident_pages 399",
    ),
    "refaults > swapouts": (
        report(process(5), process(6, refaults_total=421)),
        "processes[1].refaults_total 421 > swapouts_total 420",
    ),
    "a pid twice": (
        report(process(7), process(8), process(7)),
        "processes[2].pid 7 is processes[0]'s too",
    ),
    "interval 1e-300": (report(interval_seconds=1e-300), "interval_seconds 1e-300 is below 0.001"),
    "interval 0": (report(interval_seconds=0), "interval_seconds 0.0 is below 0.001"),
    "a pool that does not exist": (report(pool="no-such-pool"), "pool 'no-such-pool': no pool"),
    "exited holding stored pages": (
        _with_process(exited=True),
        "processes[0].exited with stored_pages 390, cold_pages 400, resident_pages 1123: "
        "a process that exited holds no page",
    ),
    "exited with pages present": (
        report(exited(5, resident_pages=1)),
        "processes[0].exited with stored_pages 0, cold_pages 0, resident_pages 1",
    ),
    "2**53 stored in a pool of 1024 pages": (
        _with_process(resident_pages=2**53, cold_pages=2**53, stored_pages=2**53),
        f"stored_pages sum to {2**53}, but pool 'shadow-123' holds {HELD} pages",
    ),
    "stored pages that fit one by one, not summed": (
        report(
            process(1, cold_pages=600, stored_pages=600),
            process(2, cold_pages=600, stored_pages=600),
        ),
        f"stored_pages sum to 1200, but pool 'shadow-123' holds {HELD} pages",
    ),
}


def test_an_impossible_report_is_refused_422_and_changes_nothing(http: httpx.Client) -> None:
    before = report(process(1, "kept"), expires_seconds=600)
    assert http.put("/v1/shadows/kept", json=before).status_code == 204
    exposition = shadow_series(scrape(http))
    for what, (body, said) in IMPOSSIBLE_REPORTS.items():
        for name in ("kept", "fresh"):
            r = http.put(f"/v1/shadows/{name}", json=body)
            assert r.status_code == 422, (what, r.status_code, r.text)
            assert r.json()["error"] == "impossible_report", (what, r.text)
            assert said in r.json()["detail"], (what, r.text)
    listed = http.get("/v1/shadows").json()["shadows"]
    assert set(listed) == {"kept"}
    listed["kept"].pop("age_seconds")
    assert listed["kept"] == before
    assert shadow_series(scrape(http)) == exposition
    with Client(str(http.base_url).rstrip("/")) as c, pytest.raises(ImpossibleReportError):
        c.report_shadow("kept", _with_process(stored_pages=401))


def test_what_a_real_shadow_may_send_is_taken(http: httpx.Client) -> None:
    """The limits of the rules, each possible: pages nested to the brim, every
    refault of every page swapped out, a saving below zero (a pool that takes
    more than it keeps), the shortest interval, and two reports (say, two
    compressors) shadowing one pid."""
    edge = process(
        9,
        resident_pages=400,
        cold_pages=400,
        stored_pages=400,
        refaults_total=420,
        saved_bytes=-3 * 4096,
    )
    # A process may name itself "" (prctl); an exited one holds nothing.
    nothing = process(10, "", resident_pages=0, cold_pages=0, stored_pages=0)
    body = report(edge, nothing, exited(11))
    assert http.put("/v1/shadows/lz4", json=body).status_code == 204
    twin = report(edge, pool="other", interval_seconds=MIN_INTERVAL_SECONDS)
    assert http.put("/v1/shadows/zstd", json=twin).status_code == 204
    # Every page the pool holds, as one shadow's, and another report on the
    # same pool claiming them too: each report is its own sender's claim.
    brim = process(12, resident_pages=HELD, cold_pages=HELD, stored_pages=HELD)
    assert http.put("/v1/shadows/brim", json=report(brim, pool="other")).status_code == 204
    listed = http.get("/v1/shadows").json()["shadows"]
    assert listed["lz4"]["processes"] == [edge, nothing, exited(11)]
    assert listed["lz4"]["processes"][0] == edge == listed["zstd"]["processes"][0]
    assert listed["zstd"]["interval_seconds"] == MIN_INTERVAL_SECONDS
    assert listed["brim"]["processes"] == [brim]


def _listed(http: httpx.Client, name: str) -> dict[str, Any]:
    got: dict[str, Any] = http.get("/v1/shadows").json()["shadows"][name]
    got.pop("age_seconds")
    return got


def _refused_422(http: httpx.Client, name: str, body: dict[str, Any], said: str) -> None:
    r = http.put(f"/v1/shadows/{name}", json=body)
    assert r.status_code == 422 and r.json()["error"] == "impossible_report", r.text
    assert said in r.json()["detail"], r.text


def test_stored_pages_are_at_most_the_pools_pages_as_it_is_now(
    daemon: Daemon, http: httpx.Client
) -> None:
    """The sum of a report's stored_pages against the pages its pool holds when
    the report arrives: an empty pool takes no stored page, a page stored makes
    room for one more, a page another client frees takes it back; a report
    refused leaves the last one taken as it was (it is not judged again)."""
    assert http.put("/v1/pools/counted").status_code == 201
    try:
        one = process(1, cold_pages=400, stored_pages=1)
        _refused_422(http, "counted", report(one, pool="counted"), "pool 'counted' holds 0 pages")
        none = report(process(1, stored_pages=0), pool="counted")
        assert http.put("/v1/shadows/counted", json=none).status_code == 204
        handles = fill(daemon.url, "counted", 10)
        ten = report(process(1, stored_pages=6), process(2, stored_pages=4), pool="counted")
        assert http.put("/v1/shadows/counted", json=ten).status_code == 204
        exposition = shadow_series(scrape(http))
        eleven = report(process(1, stored_pages=7), process(2, stored_pages=4), pool="counted")
        _refused_422(http, "counted", eleven, "stored_pages sum to 11, but pool 'counted' holds 10")
        assert _listed(http, "counted") == ten
        # Another client frees two of the pages: the next report may claim eight.
        with Client(daemon.url) as other:
            other.free(handles[:2], pool="counted")
        _refused_422(http, "counted", ten, "stored_pages sum to 10, but pool 'counted' holds 8")
        assert _listed(http, "counted") == ten and shadow_series(scrape(http)) == exposition
        eight = report(process(1, stored_pages=4), process(2, stored_pages=4), pool="counted")
        assert http.put("/v1/shadows/counted", json=eight).status_code == 204
        assert _listed(http, "counted") == eight
    finally:
        assert http.delete("/v1/pools/counted").status_code == 204


def test_stored_pages_count_the_pools_pages_written_back(tmp_path: Path) -> None:
    """A page written back to the backing file is still the shadow's (its handle
    holds): the pool's pages are those in RAM and those on disk."""
    d = start_daemon("--backing-dir", str(tmp_path))
    try:
        with httpx.Client(base_url=d.url, timeout=60) as h, Client(d.url) as c:
            r = h.put(
                "/v1/pools/spill",
                json={
                    "compressor": "lz4",
                    "backing_file": "spill.swap",
                    "backing_size": 64 * 4096,
                    "writeback": "manual",
                },
            )
            assert r.status_code == 201, r.text
            c.store([text_page(i) for i in range(8)], pool="spill")
            r = h.post("/v1/pools/spill/writeback", json={"type": "idle", "idle_seconds": 0})
            assert r.json()["written_back"] == 8, r.text
            stats = c.stats("spill")
            assert stats["zswap"]["stored_pages"] == 0 and stats["bd_stat"]["bd_count"] == 8
            full = report(process(1, stored_pages=8), pool="spill")
            assert h.put("/v1/shadows/s", json=full).status_code == 204
            more = report(process(1, stored_pages=9), pool="spill")
            r = h.put("/v1/shadows/s", json=more)
            assert r.status_code == 422 and "pool 'spill' holds 8 pages" in r.text, r.text
            assert c.shadows()["s"]["processes"] == full["processes"]
    finally:
        assert d.stop() == 0, d.log


def test_a_report_goes_with_its_pool(http: httpx.Client) -> None:
    assert http.put("/v1/pools/doomed").status_code == 201
    empty = process(123, stored_pages=0)  # the pool holds no page
    assert http.put("/v1/shadows/doomed", json=report(empty, pool="doomed")).status_code == 204
    assert http.put("/v1/shadows/bystander", json=report()).status_code == 204
    assert ("zswapd_shadow_stored_pages", "doomed") in shadow_series(scrape(http))
    assert http.delete("/v1/pools/doomed").status_code == 204
    assert set(http.get("/v1/shadows").json()["shadows"]) == {"bystander"}
    assert {s for _, s in shadow_series(scrape(http))} == {"bystander"}
    # A pool made again under the name does not bring the dead shadow's figures back.
    assert http.put("/v1/pools/doomed").status_code == 201
    try:
        assert set(http.get("/v1/shadows").json()["shadows"]) == {"bystander"}
        r = http.delete("/v1/shadows/doomed")
        assert r.status_code == 404 and r.json()["error"] == "unknown_shadow", r.text
    finally:
        assert http.delete("/v1/pools/doomed").status_code == 204


def test_a_report_goes_with_its_device(http: httpx.Client) -> None:
    assert http.put("/v1/devices/zram9", json={"size": 1 << 20}).status_code == 201
    empty = process(123, stored_pages=0)
    assert http.put("/v1/shadows/dev", json=report(empty, pool="zram9")).status_code == 204
    assert http.delete("/v1/devices/zram9").status_code == 204
    assert http.get("/v1/shadows").json()["shadows"] == {}


def test_a_registry_drops_a_report_whose_pool_went_another_way() -> None:
    """Whatever removed the pool (not only the HTTP routes, which tell the
    registry at once): the report is gone at the next read."""
    pools = {"p"}
    shadows = ShadowRegistry(pool_exists=pools.__contains__)
    shadows.report("s", report(pool="p"))
    with pytest.raises(ImpossibleReportError, match="no pool"):
        shadows.report("t", report(pool="q"))
    pools.clear()
    assert shadows.to_dict() == {}


def test_a_body_past_the_json_cap_is_refused(http: httpx.Client) -> None:
    # The server's cap on any JSON body (1 MiB), before a byte of it is parsed.
    body = json.dumps(report(pool="p" * (2 << 20))).encode()
    r = http.put("/v1/shadows/big", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert http.get("/v1/shadows").json()["shadows"] == {}


def test_a_full_report_of_1024_processes_with_the_largest_figures_is_taken(
    http: httpx.Client,
) -> None:
    top = 2**53
    big = [
        process(
            i,
            "c" * 64,
            resident_pages=top,
            cold_pages=top,
            saved_bytes=-top,
            swapouts_total=top,
            refaults_total=top,
            # Stored pages are within the pool's (summed, below), not 2**53.
            stored_pages=0,
            rejected_total=top,
            scan_seconds_total=1e300,
            scanned_bytes_total=top,
        )
        for i in range(1, 1025)
    ]
    r = http.put("/v1/shadows/full", json=report(*big, expires_seconds=86400))
    assert r.status_code == 204, r.text
    got = http.get("/v1/shadows").json()["shadows"]["full"]
    assert len(got["processes"]) == 1024 and got["processes"][-1] == big[-1]
    text = scrape(http)
    assert metric_value(text, "zswapd_shadow_cold_pages", **labels("full", big[0])) == top


def test_the_65th_shadow_is_refused_and_replacing_one_still_works(http: httpx.Client) -> None:
    names = [f"s{i}" for i in range(MAX_SHADOWS)]
    for name in names:
        assert http.put(f"/v1/shadows/{name}", json=report()).status_code == 204, name
    r = http.put("/v1/shadows/one-too-many", json=report())
    assert r.status_code == 507, r.text
    assert r.json()["error"] == "max_shadows" and "64 shadows" in r.json()["detail"]
    listed = http.get("/v1/shadows").json()["shadows"]
    assert sorted(listed) == sorted(names)
    # A shadow already reporting renews whatever the count.
    r = http.put("/v1/shadows/s0", json=report(process(9, "renewed")))
    assert r.status_code == 204, r.text
    assert http.get("/v1/shadows").json()["shadows"]["s0"]["processes"][0]["comm"] == "renewed"
    assert http.delete("/v1/shadows/s1").status_code == 204
    assert http.put("/v1/shadows/one-too-many", json=report()).status_code == 204
    with Client(str(http.base_url).rstrip("/")) as c:
        with pytest.raises(TooManyShadowsError, match="507"):
            c.report_shadow("and-another", report())
        with pytest.raises(InvalidRequestError, match="400"):
            c.report_shadow("s0", report(detection="magic"))


def test_processes_across_all_shadows_are_capped_at_4096(http: httpx.Client) -> None:
    # 64 full reports would make every scrape 95 MiB and most of a minute of CPU.
    full = report(*(process(i, stored_pages=0) for i in range(1, 1025)))
    for k in range(4):
        assert http.put(f"/v1/shadows/full{k}", json=full).status_code == 204
    r = http.put("/v1/shadows/one-more", json=report(process(1)))
    assert r.status_code == 507 and r.json()["error"] == "max_shadows", r.text
    assert "4096" in r.json()["detail"]
    # A shadow renewing a report of the same size is not held back by the cap.
    renewed = report(*(process(i, "renewed", stored_pages=0) for i in range(1, 1025)))
    assert http.put("/v1/shadows/full0", json=renewed).status_code == 204
    assert http.put("/v1/shadows/full1", json=report(process(1))).status_code == 204
    assert http.put("/v1/shadows/one-more", json=report(process(1))).status_code == 204
    listed = http.get("/v1/shadows").json()["shadows"]
    assert sum(len(r["processes"]) for r in listed.values()) == 3 * 1024 + 2
    assert listed["full0"]["processes"][0]["comm"] == "renewed"


# -- who may report -------------------------------------------------------------------------


def test_the_token_is_wanted_on_every_shadow_route(tmp_path: Path) -> None:
    d = start_daemon("--auth-token-file", token_file(tmp_path, "shadow-token"))
    try:
        with httpx.Client(base_url=d.url, timeout=60) as h:
            for method, path, body in (
                ("PUT", "/v1/shadows/s", report()),
                ("GET", "/v1/shadows", None),
                ("DELETE", "/v1/shadows/s", None),
            ):
                r = h.request(method, path, json=body)
                assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
                r = h.request(method, path, json=body, headers={"authorization": "Bearer wrong"})
                assert r.status_code == 401, path
        with Client(d.url) as anonymous, pytest.raises(UnauthorizedError):
            anonymous.report_shadow("s", report())
        with Client(d.url, token="shadow-token") as c:
            c.create_pool("shadow-123")
            c.report_shadow("s", report(process(123, stored_pages=0)))
            assert set(c.shadows()) == {"s"}
            c.remove_shadow("s")
            assert c.shadows() == {}
    finally:
        assert d.stop() == 0, d.log


def test_the_wire_protocol_has_no_shadow_requests(tmp_path: Path) -> None:
    with wire_daemon(tmp_path) as (_, path), Client(f"unix:{path}") as c:
        for call in (
            lambda: c.report_shadow("s", report()),
            lambda: c.shadows(),
            lambda: c.remove_shadow("s"),
        ):
            with pytest.raises(ZswapdError, match="needs the HTTP API"):
                call()


# -- the exposition -----------------------------------------------------------------------


def test_an_exposition_carrying_shadows_passes_promtool(http: httpx.Client) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    odd = ['quote " backslash \\', "tab-free é 名前", "", "{}=,"]
    for i, comm in enumerate(odd):
        body = report(process(100 + i, comm), exited(200 + i), pool=f"pool{i}")
        assert http.put(f"/v1/shadows/odd{i}", json=body).status_code == 204
    text = scrape(http)
    for i, comm in enumerate(odd):
        p = process(100 + i, comm)
        assert (
            metric_value(text, "zswapd_shadow_stored_pages", **labels(f"odd{i}", p, f"pool{i}"))
            == 390
        )
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_reports_and_scrapes_race_without_harm() -> None:
    """The collector reads the registry from the scrape's thread while reports
    replace and remove entries: every exposition is whole, every report one of
    those sent."""
    shadows = ShadowRegistry()
    metrics = Metrics(PoolRegistry(), shadows=shadows)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(k: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                shadows.report(f"t{k}", report(*(process(p) for p in range(1, 1 + i % 50))))
                if i % 7 == 0:
                    shadows.remove(f"t{k}")
                i += 1
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            text = metrics.exposition().decode()
            assert text.endswith("\n")
            for name, figures in shadows.to_dict().items():
                assert name.startswith("t") and len(figures["processes"]) < 50
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors


def test_an_expired_report_frees_its_place_under_the_caps() -> None:
    """The registry on a clock of its own: a silent shadow's report stops
    counting against the caps the moment it expires, without anyone reading."""
    now = [1000.0]
    shadows = ShadowRegistry(max_shadows=2, max_processes=3, clock=lambda: now[0])
    shadows.report("a", report(process(1), process(2), expires_seconds=5))
    shadows.report("b", report(process(1), expires_seconds=50))
    with pytest.raises(TooManyShadowsError):
        shadows.report("c", report(process(1)))
    with pytest.raises(TooManyShadowsError, match="processes"):
        shadows.report("b", report(process(1), process(2)))
    now[0] += 4.9
    assert set(shadows.to_dict()) == {"a", "b"}
    assert shadows.to_dict()["a"]["age_seconds"] == pytest.approx(4.9)
    # Through Python, what the HTTP models refuse before: refused all the same.
    for bad in (
        report(interval_seconds=10**400),
        report(expires_seconds=True),
        report(process(1, comm="\ud800")),
        report(process(1, saved_bytes=float("nan"))),
        {**report(), "processes": [process(1)] * 2},
        "not an object",
    ):
        with pytest.raises(InvalidRequestError):
            shadows.report("a", bad)  # type: ignore[arg-type]
    assert len(shadows.to_dict()["a"]["processes"]) == 2
    now[0] += 0.1
    shadows.report("c", report(process(1), process(2)))
    assert set(shadows.to_dict()) == {"b", "c"}
    with pytest.raises(UnknownShadowError):
        shadows.remove("a")


def test_process_keys_are_the_shadows_figures() -> None:
    assert set(PROCESS_KEYS) == set(ProcessFigures.__dataclass_fields__)
