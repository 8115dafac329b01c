"""The OpenAPI document as a client generator reads it: valid, every integer's
width said, optional bodies a generator can express, the bearer scheme,
stable operation ids, each operation's own errors, binary pages described;
and a Python client generated from it (openapi-python-client, unmodified)
driving every route of a real daemon that wants a token, page bytes checked.

Other languages' generators are checked by structure only (what breaks Go's
and Java's: bare integers, null-or-ref bodies, missing security, odd ids).
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import zswapd
from tests.zswapd.daemon import Daemon, start_daemon
from tests.zswapd.helpers import poor_page, random_page, same_page, text_page
from zswapd.config import PoolConfig
from zswapd.device import DeviceRegistry
from zswapd.http_schemas import DeviceStatsOut, PoolConfigOut, PoolStatsOut
from zswapd.pools import PoolRegistry

PAGE = 4096
TOKEN = "openapi-test-token"
CONFIG = Path(__file__).with_name("openapi-python-client.yaml")
INT32_MAX = 2**31 - 1

# Every route, by operationId.
OPERATIONS = {
    "healthz",
    "metrics",
    "devices_list",
    "device_create",
    "device_remove",
    "device_stats",
    "device_writeback",
    "pools_list",
    "pool_create",
    "pool_update",
    "pool_remove",
    "store",
    "load",
    "load_batch",
    "free",
    "free_batch",
    "stats",
    "compact",
    "recompress",
    "writeback",
    "shadows_list",
    "shadow_report",
    "shadow_remove",
}

# What any request may meet: the connection's limits (zswapd.http_protocol).
CONNECTION = {408, 431, 503}
# The error statuses each operation may answer with, beyond CONNECTION.
ERRORS = {
    "healthz": set(),
    "metrics": {401},
    "devices_list": {401},
    "device_create": {400, 401, 409, 413, 507},
    "device_remove": {400, 401, 404},
    "device_stats": {400, 401, 404},
    "device_writeback": {400, 401, 404, 413},
    "pools_list": {401},
    "pool_create": {400, 401, 409, 413, 507},
    "pool_update": {400, 401, 404, 413},
    "pool_remove": {400, 401, 404, 409},
    "store": {400, 401, 404, 413, 422, 507},
    "load": {400, 401, 404, 500, 507},
    "load_batch": {400, 401, 404, 413, 500, 507},
    "free": {400, 401, 404},
    "free_batch": {400, 401, 404, 413},
    "stats": {400, 401, 404},
    "compact": {400, 401, 404},
    "recompress": {400, 401, 404, 413, 500},
    "writeback": {400, 401, 404, 413},
    "shadows_list": {401},
    "shadow_report": {400, 401, 413, 422, 507},
    "shadow_remove": {400, 401, 404},
}

# Integers small enough for int32: compression levels, percents, chain sizes.
INT32_FIELDS = {"level", "recompress_level", "chain_size", "accept_threshold_percent"}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon that wants a token, and takes clients' backing files."""
    root = tmp_path_factory.mktemp("openapi")
    token = root / "token"
    token.write_text(TOKEN + "\n")
    d = start_daemon("--auth-token-file", str(token), "--backing-dir", str(root / "clients"))
    try:
        yield d
    finally:
        assert d.stop() == 0


@pytest.fixture(scope="module")
def document(daemon: Daemon) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {TOKEN}"}
    r = httpx.get(f"{daemon.url}/openapi.json", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


@pytest.fixture(scope="module")
def generated(
    document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleType]:
    """The package openapi-python-client makes of the document, imported as made."""
    pytest.importorskip("openapi_python_client")
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_text(json.dumps(document))
    out = root / "client"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            *("--path", str(spec), "--output-path", str(out), "--config", str(CONFIG)),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # A route or model the generator cannot express is a warning: none allowed.
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("zswapd_client")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.split(".")[0] == "zswapd_client"]:
            del sys.modules[name]


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def _schemas(node: Any, key: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema-like dict under ``node``, with the property name it sits under."""
    if isinstance(node, dict):
        yield key, node
        for k, v in node.items():
            if k == "properties" and isinstance(v, dict):
                for name, sub in v.items():
                    yield from _schemas(sub, name)
            else:
                yield from _schemas(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _schemas(v, key)


def _ref(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


# -- the document --------------------------------------------------------------------------


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(document)
    assert document["openapi"].startswith("3.1")
    info = document["info"]
    assert info["title"] == "zswapd" and info["version"] == zswapd.__version__
    assert "--auth-token-file" in info["description"]
    assert document["servers"][0]["url"] == "http://127.0.0.1:7415"


def test_operation_ids_are_the_route_names(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(document)]
    assert len(ids) == len(set(ids))
    assert set(ids) == OPERATIONS
    for _, _, op in _operations(document):
        # An identifier in any language, and grouped for generators that make
        # one class per tag (Java's PagesApi, Go's PagesAPI).
        assert op["operationId"].isidentifier() and op["operationId"].islower()
        assert len(op["tags"]) == 1


def test_every_integer_says_its_width(document: dict[str, Any]) -> None:
    # A bare integer is an int32 to Go's and Java's generators.
    seen = 0
    for name, schema in _schemas(document):
        if schema.get("type") != "integer":
            continue
        seen += 1
        assert schema.get("format") in ("int32", "int64"), (name, schema)
        if schema["format"] == "int32":
            assert name in INT32_FIELDS, name
        for bound in ("minimum", "maximum"):
            assert isinstance(schema.get(bound, 0), int), (name, schema)
    assert seen > 80
    schemas = document["components"]["schemas"]
    # Byte counts pass 2**31.
    for name in ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit"):
        assert schemas["MmStat"]["properties"][name]["format"] == "int64"
    # Handles fill 64 bits, unsigned: openapi-generator's uint64 (x-unsigned).
    unsigned = {"type": "integer", "format": "int64", "x-unsigned": True, "minimum": 0}
    assert schemas["HandleList"]["properties"]["handles"]["items"] == unsigned
    for path, _, op in _operations(document):
        if "{handle}" in path:
            (handle,) = [p for p in op["parameters"] if p["name"] == "handle"]
            assert unsigned.items() <= handle["schema"].items(), path
    handles = [s for _, s in _schemas(document) if s.get("x-unsigned")]
    assert len(handles) == 3  # the list, and the two paths


def test_bounds_are_minimum_and_maximum(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    for leftover in ("ge", "le", "gt", "lt", "exclusiveMinimum", "exclusiveMaximum"):
        assert f'"{leftover}":' not in text, leftover
    live = document["components"]["schemas"]["LiveSettings"]["properties"]
    assert live["accept_threshold_percent"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
        "format": "int32",
    }
    device = document["components"]["schemas"]["DeviceSettings"]["properties"]
    assert device["size"]["minimum"] == 1 and device["size"]["maximum"] == 1 << 44


def test_request_bodies_are_plain_models(document: dict[str, Any]) -> None:
    optional = set()
    for _, _, op in _operations(document):
        body = op.get("requestBody")
        if body is None:
            continue
        for content in body["content"].values():
            schema = content["schema"]
            assert "anyOf" not in schema and "oneOf" not in schema, op["operationId"]
            if "$ref" in schema:
                assert set(schema) == {"$ref"}, op["operationId"]
        if not body["required"]:
            optional.add(op["operationId"])
            # Absent means every default: a model with nothing required.
            model = _ref(document, body["content"]["application/json"]["schema"]["$ref"])
            assert not model.get("required"), op["operationId"]
    assert optional == {"pool_create", "recompress"}


def test_an_optional_body_is_absent_or_an_object(daemon: Daemon) -> None:
    # Absent: every default; an object: its fields; JSON null is no object (400,
    # and nothing made), as the document's plain model says.
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=daemon.url, headers=auth, timeout=30) as h:
        r = h.put("/v1/pools/nobody")
        assert r.status_code == 201 and r.json()["config"]["compressor"] == "zstd", r.text
        r = h.put("/v1/pools/empty", json={})
        assert r.status_code == 201, r.text
        r = h.put("/v1/pools/nulled", content=b"null", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
        assert sorted(h.get("/v1/pools").json()["pools"]) == ["default", "empty", "nobody"]
        r = h.post(
            "/v1/pools/nobody/recompress",
            content=b"null",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
        for name in ("nobody", "empty"):
            assert h.delete(f"/v1/pools/{name}").status_code == 204


def test_integers_past_their_documented_width_are_refused(
    daemon: Daemon, document: dict[str, Any]
) -> None:
    # A limit of 2**63 was once stored and answered back: no int64 client could
    # then read that pool's stats.
    limit = document["components"]["schemas"]["PoolSettings"]["properties"]["limit_bytes"]
    assert limit["format"] == "int64"
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=daemon.url, headers=auth, timeout=30) as h:
        for body in ({"limit_bytes": 2**63}, {"level": 2**31}, {"level": -(2**31) - 1}):
            r = h.put("/v1/pools/wide", json=body)
            assert r.status_code == 400 and r.json()["error"] == "bad_request", (body, r.text)
        r = h.patch("/v1/pools/default", json={"limit_bytes": 2**64 - 1})
        assert r.status_code == 400, r.text
        assert "wide" not in h.get("/v1/pools").json()["pools"]
        r = h.put("/v1/pools/wide", json={"limit_bytes": 2**40})
        assert r.status_code == 201 and r.json()["config"]["limit_bytes"] == 2**40, r.text
        assert h.delete("/v1/pools/wide").status_code == 204


def test_every_operation_but_healthz_takes_the_bearer_token(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "--auth-token-file" in scheme["description"]
    for _, _, op in _operations(document):
        want = [] if op["operationId"] == "healthz" else [{"bearerAuth": []}]
        assert op["security"] == want, op["operationId"]


def test_the_daemon_wants_the_token_where_the_document_says(
    document: dict[str, Any], daemon: Daemon
) -> None:
    with httpx.Client(base_url=daemon.url, timeout=30) as h:
        for path, method, op in _operations(document):
            url = path.format(pool="default", name="nodev", handle=1)
            r = h.request(method, url)
            if op["security"]:
                assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
            else:
                assert r.status_code == 200, path


def test_each_operation_lists_its_own_errors(document: dict[str, Any]) -> None:
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for _, _, op in _operations(document):
        name = op["operationId"]
        statuses = {int(s) for s in op["responses"]}
        errors = {s for s in statuses if s >= 400}
        assert errors == ERRORS[name] | CONNECTION, name
        assert len(statuses - errors) == 1, name  # one success
        for status in errors:
            answer = op["responses"][str(status)]
            assert answer["content"] == {"application/json": {"schema": error_body}}
    assert set(document["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "detail"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    # Each error answer names the codes it may carry.
    paths = document["paths"]
    store = paths["/v1/pools/{pool}/pages"]["post"]["responses"]
    for code in ("pool_limit", "memory_limit", "reclaim_fail"):
        assert f"`{code}`" in store["507"]["description"]
    assert "`bad_page_size`" in store["422"]["description"]
    load = paths["/v1/pools/{pool}/pages/{handle}"]["get"]["responses"]
    assert "`stale_handle`" in load["404"]["description"]
    assert "`corrupt_object`" in load["500"]["description"]


def test_binary_routes_say_what_they_carry(document: dict[str, Any]) -> None:
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    paths = document["paths"]
    store = paths["/v1/pools/{pool}/pages"]["post"]["requestBody"]
    assert store["required"] and store["content"] == binary
    assert "k x 4096 bytes" in store["description"]
    load = paths["/v1/pools/{pool}/pages/{handle}"]["get"]["responses"]["200"]
    assert load["content"] == binary and "4096 bytes" in load["description"]
    batch = paths["/v1/pools/{pool}/pages:load"]["post"]["responses"]["200"]
    assert batch["content"] == binary
    assert "N x 4096 bytes" in batch["description"]
    assert "in the order of the handles" in batch["description"]


# -- answers match their models exactly -----------------------------------------------------


def _exactly(model: type[BaseModel], raw: dict[str, Any]) -> None:
    """``raw`` (as JSON) is what ``model`` describes: no field missing, none left out."""
    as_json = json.loads(json.dumps(raw))
    assert model.model_validate(as_json).model_dump(mode="json", by_alias=True) == as_json


def test_device_and_pool_answers_match_their_models(tmp_path: Path) -> None:
    devices = DeviceRegistry(PoolRegistry())
    for name, config in (
        ("plain", PoolConfig(compressor="lz4")),
        ("tiered", PoolConfig(backing_file=str(tmp_path / "d.img"), backing_size=16 * PAGE)),
    ):
        device = devices.create(name, 64 * PAGE, config)
        device.write(0, text_page(1) + poor_page(2) + same_page(b"\x07" * 8))
        if name == "tiered":
            assert device.writeback("idle", idle_seconds=0)["written_back"] == 2
        _exactly(DeviceStatsOut, {**device.stats(), "nbd": None})  # the route adds its URI
        _exactly(PoolStatsOut, device.pool.stats().to_dict())
        _exactly(PoolConfigOut, device.pool.config.to_dict())


# -- a generated client --------------------------------------------------------------------


def test_the_generated_client_has_every_operation(generated: ModuleType) -> None:
    api = Path(generated.__file__).parent / "api"
    made = {p.stem for p in api.glob("*/*.py") if p.stem != "__init__"}
    assert made == OPERATIONS


def test_a_generated_client_drives_every_route(generated: ModuleType, daemon: Daemon) -> None:
    from zswapd_client import AuthenticatedClient, Client, models
    from zswapd_client.api.devices import (
        device_create,
        device_remove,
        device_stats,
        device_writeback,
        devices_list,
    )
    from zswapd_client.api.pages import free, free_batch, load, load_batch, store
    from zswapd_client.api.pools import (
        compact,
        pool_create,
        pool_remove,
        pool_update,
        pools_list,
        recompress,
        stats,
        writeback,
    )
    from zswapd_client.api.server import healthz, metrics
    from zswapd_client.api.shadows import shadow_remove, shadow_report, shadows_list
    from zswapd_client.types import File

    pages = [text_page(1), random_page(2), poor_page(3), same_page(b"\x05" * 8), text_page(4)]

    def store_pages(c: Any, pool: str, batch: list[bytes]) -> list[int]:
        out = store.sync(pool, client=c, body=File(payload=io.BytesIO(b"".join(batch))))
        assert isinstance(out, models.HandleList), out
        return list(out.handles)

    # Patient: the machine may be busy (the generated client's default is 5 s).
    patient = httpx.Timeout(60)
    with Client(daemon.url, timeout=patient) as anonymous:
        health = healthz.sync(client=anonymous)
        assert isinstance(health, models.Health) and health.version == zswapd.__version__
        refused = pools_list.sync_detailed(client=anonymous)
        assert refused.status_code == 401
        assert (
            isinstance(refused.parsed, models.ErrorBody) and refused.parsed.error == "unauthorized"
        )

    with AuthenticatedClient(daemon.url, token=TOKEN, timeout=patient) as c:
        assert isinstance(healthz.sync(client=c), models.Health)
        text = metrics.sync(client=c)
        assert isinstance(text, str) and "zswapd_pool_size_bytes" in text

        # Pools: created without a body (every default), with one, changed live.
        made = pool_create.sync("oa", client=c)
        assert isinstance(made, models.PoolCreated) and made.config.compressor == "zstd"
        tiered = models.PoolSettings.from_dict(
            {
                "compressor": "lz4",
                "recompress_algo": "zstd",
                "backing_file": "oa.swap",
                "backing_size": 64 * PAGE,
            }
        )
        made = pool_create.sync("tier", client=c, body=tiered)
        assert isinstance(made, models.PoolCreated) and made.config.backing_size == 64 * PAGE
        changed = pool_update.sync(
            "oa", client=c, body=models.LiveSettings(limit_bytes=64 << 20, writeback_limit=None)
        )
        assert isinstance(changed, models.PoolCreated) and changed.config.limit_bytes == 64 << 20
        listed = pools_list.sync(client=c)
        assert isinstance(listed, models.PoolList)
        assert set(listed.pools) == {"default", "oa", "tier"}
        taken = pool_create.sync_detailed("oa", client=c)
        assert taken.status_code == 409 and isinstance(taken.parsed, models.ErrorBody)

        # Pages: raw bytes in, handles out; one and many back, byte for byte.
        handles = store_pages(c, "oa", pages)
        # A handle past 2**63 (half of them are: 64 random-ish bits) goes
        # through the client's JSON and its URLs unharmed.
        big: list[int] = []
        for i in range(64):
            (h,) = store_pages(c, "oa", [text_page(100 + i)])
            big.append(h)
            if h >= 1 << 63:
                break
        assert big[-1] >= 1 << 63
        one = load.sync("oa", big[-1], client=c)
        assert isinstance(one, File) and one.payload.read() == text_page(100 + len(big) - 1)
        freed = free_batch.sync_detailed("oa", client=c, body=models.HandleList(handles=big))
        assert freed.status_code == 204
        assert len(handles) == len(pages)
        for h, page in zip(handles, pages, strict=True):
            one = load.sync("oa", h, client=c)
            assert isinstance(one, File) and one.payload.read() == page
        order = handles[::-1]
        many = load_batch.sync("oa", client=c, body=models.HandleList(handles=order))
        assert isinstance(many, File)
        assert many.payload.read() == b"".join(pages[::-1])
        assert free.sync_detailed("oa", handles[0], client=c).status_code == 204
        stale = load.sync_detailed("oa", handles[0], client=c)
        assert stale.status_code == 404
        assert isinstance(stale.parsed, models.ErrorBody) and stale.parsed.error == "stale_handle"
        freed = free_batch.sync_detailed(
            "oa", client=c, body=models.HandleList(handles=handles[1:3])
        )
        assert freed.status_code == 204
        short = store.sync_detailed("oa", client=c, body=File(payload=io.BytesIO(b"x" * 100)))
        assert short.status_code == 422
        assert isinstance(short.parsed, models.ErrorBody) and short.parsed.error == "bad_page_size"
        unknown = store.sync_detailed("nope", client=c, body=File(payload=io.BytesIO(pages[0])))
        assert unknown.status_code == 404
        assert (
            isinstance(unknown.parsed, models.ErrorBody) and unknown.parsed.error == "unknown_pool"
        )

        figures = stats.sync("oa", client=c)
        assert isinstance(figures, models.PoolStatsOut)
        assert figures.mm_stat.orig_data_size == 2 * PAGE  # two pages left
        assert figures.config.limit_bytes == 64 << 20
        assert sum(row.obj_used for row in figures.classes) >= 1
        assert all(row.class_ >= 0 and row.field_100 >= 0 for row in figures.classes)
        squeezed = compact.sync("oa", client=c)
        assert isinstance(squeezed, models.CompactResult) and squeezed.pages_released >= 0

        # Recompress, with and without a body; writeback to the pool's file.
        tier_handles = store_pages(c, "tier", pages)
        redone = recompress.sync("tier", client=c)  # the huge pages, the pool's algo
        assert isinstance(redone, models.RecompressResult) and redone.candidates >= 1
        redone = recompress.sync(
            "tier",
            client=c,
            body=models.RecompressRequest(
                type_=models.RecompressRequestType.HUGE_IDLE, algo="zstd"
            ),
        )
        assert isinstance(redone, models.RecompressResult)
        wrote = writeback.sync(
            "tier",
            client=c,
            body=models.WritebackRequest(type_=models.WritebackRequestType.IDLE, idle_seconds=0),
        )
        assert isinstance(wrote, models.WritebackResult) and wrote.written_back >= 3, wrote
        back = load_batch.sync("tier", client=c, body=models.HandleList(handles=tier_handles))
        assert isinstance(back, File) and back.payload.read() == b"".join(pages)
        tier_figures = stats.sync("tier", client=c)
        assert isinstance(tier_figures, models.PoolStatsOut)
        assert tier_figures.bd_stat.bd_count == wrote.written_back
        assert tier_figures.backing is not None and tier_figures.backing.slots == 64

        # Devices: made, inspected, written back, removed.
        nothing = devices_list.sync(client=c)
        assert isinstance(nothing, models.DeviceList) and nothing.devices == []
        settings = models.DeviceSettings.from_dict(
            {"size": 1 << 20, "backing_file": "dev.swap", "backing_size": 16 * PAGE}
        )
        dev = device_create.sync("dev", client=c, body=settings)
        assert isinstance(dev, models.DeviceCreated) and dev.size == 1 << 20
        assert dev.nbd is None  # this daemon serves no NBD: the answer says so
        dev_figures = device_stats.sync("dev", client=c)
        assert isinstance(dev_figures, models.DeviceStatsOut)
        assert dev_figures.size == 1 << 20 and dev_figures.io_stat.invalid_io == 0
        assert dev_figures.backing is not None and dev_figures.slot_table.leaves == 0
        dev_wrote = device_writeback.sync(
            "dev", client=c, body=models.WritebackRequest(type_=models.WritebackRequestType.HUGE)
        )
        assert isinstance(dev_wrote, models.WritebackResult) and dev_wrote.written_back == 0
        listed_devices = devices_list.sync(client=c)
        assert isinstance(listed_devices, models.DeviceList) and listed_devices.devices == ["dev"]
        assert device_remove.sync_detailed("dev", client=c).status_code == 204
        assert device_stats.sync_detailed("dev", client=c).status_code == 404

        # Shadows: a report (with the expiry left to the daemon), listed, removed.
        shadow = models.ShadowReportIn.from_dict(
            {
                "pool": "oa",
                "detection": "hash",
                "interval_seconds": 10.0,
                "cold_after_seconds": 120.0,
                "processes": [
                    {
                        "pid": 123,
                        "comm": "redis-server",
                        "resident_pages": 1000,
                        "cold_pages": 400,
                        "stored_pages": 2,  # at most the pages "oa" holds
                        "saved_bytes": -4096,
                        "swapouts_total": 420,
                        "refaults_total": 30,
                        "rejected_total": 10,
                        "scan_seconds_total": 1.5,
                        "scanned_bytes_total": 40960000,
                        "exited": False,
                    }
                ],
            }
        )
        assert shadow_report.sync_detailed("gen", client=c, body=shadow).status_code == 204
        shadows = shadows_list.sync(client=c)
        assert isinstance(shadows, models.ShadowList)
        got = shadows.shadows["gen"]
        assert got.expires_seconds == 30 and got.age_seconds >= 0
        assert got.processes[0].comm == "redis-server" and got.processes[0].saved_bytes == -4096
        assert shadow_remove.sync_detailed("gen", client=c).status_code == 204
        gone = shadow_remove.sync_detailed("gen", client=c)
        assert gone.status_code == 404
        assert isinstance(gone.parsed, models.ErrorBody) and gone.parsed.error == "unknown_shadow"

        for name in ("oa", "tier"):
            assert pool_remove.sync_detailed(name, client=c).status_code == 204
        listed = pools_list.sync(client=c)
        assert isinstance(listed, models.PoolList) and listed.pools == ["default"]
