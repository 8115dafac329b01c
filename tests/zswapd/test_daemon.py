"""The daemon end to end: a real ``zswapd serve`` process, real HTTP on loopback
TCP and on a Unix socket, the client library and the command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.threads import run_threads
from tests.zswapd.daemon import Daemon, run_cli, start_daemon, token_file
from tests.zswapd.helpers import poor_page, random_page, text_page
from zswapd.client import Client, UnauthorizedError
from zswapd.errors import PoolLimitError, StaleHandleError, UnknownPoolError
from zswapd.procmem import swappable_pages


@pytest.fixture(scope="module")
def tcp_daemon() -> Iterator[Daemon]:
    d = start_daemon("--max-pages-per-request", "64")
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def unix_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    path = tmp_path_factory.mktemp("sock") / "zswapd.sock"
    d = start_daemon("--http", f"unix:{path}", "--compressor", "lz4")
    yield d
    assert d.stop() == 0
    assert not path.exists()  # removed on shutdown


def _http(d: Daemon) -> httpx.Client:
    if d.url.startswith("http+unix://"):
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=d.url[len("http+unix://") :]),
            base_url="http://zswapd",
        )
    return httpx.Client(base_url=d.url)


@pytest.mark.parametrize("which", ["tcp_daemon", "unix_daemon"])
def test_process_memory_round_trips(
    which: str, request: pytest.FixtureRequest, process_pages: list[bytes]
) -> None:
    d: Daemon = request.getfixturevalue(which)
    pages = process_pages[:1500]
    with Client(d.url, batch_pages=64) as c:
        pool = f"rt{which[:3]}"
        c.create_pool(pool)
        handles = c.store(b"".join(pages), pool=pool)  # batched by the client
        assert len(handles) == len(pages)
        assert c.load(handles, pool=pool) == pages
        assert c.load_one(handles[7], pool=pool) == pages[7]
        st = c.stats(pool)
        assert st["mm_stat"]["orig_data_size"] == 4096 * len(pages)
        assert st["zswap"]["stored_pages"] == len(pages)
        c.free(handles, pool=pool)
        assert c.stats(pool)["mm_stat"]["orig_data_size"] == 0
        c.remove_pool(pool)


def test_unix_socket_is_private(unix_daemon: Daemon) -> None:
    path = unix_daemon.url[len("http+unix://") :]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _snapshot(c: Client, pool: str) -> dict[str, object]:
    st = c.stats(pool)
    # mem_used_max is a high-water mark that a write refused at the limit moves,
    # as zram's does (update_used_max runs before the limit check): not "changed".
    mm = {k: v for k, v in st["mm_stat"].items() if k != "mem_used_max"}
    return {"mm": mm, "zswap": st["zswap"]["stored_pages"]}


def test_every_error_has_its_status_and_changes_nothing(tcp_daemon: Daemon) -> None:
    with _http(tcp_daemon) as h, Client(tcp_daemon.url) as c:
        c.create_pool("errs", chain_size=8)
        good = c.store([text_page(1)], pool="errs")
        before = _snapshot(c, "errs")
        octets = {"content-type": "application/octet-stream"}
        cases = [
            (
                "POST",
                "/v1/pools/errs/pages",
                {"content": b"x" * 100, "headers": octets},
                422,
                "bad_page_size",
            ),
            (
                "POST",
                "/v1/pools/errs/pages",
                {"content": b"", "headers": octets},
                422,
                "bad_page_size",
            ),
            (
                "POST",
                "/v1/pools/errs/pages",
                {"content": b"x" * 4096 * 65, "headers": octets},
                413,
                "too_large",
            ),
            (
                "POST",
                "/v1/pools/nope/pages",
                {"content": b"x" * 4096, "headers": octets},
                404,
                "unknown_pool",
            ),
            ("GET", f"/v1/pools/errs/pages/{good[0] + 1}", {}, 404, "stale_handle"),
            ("GET", "/v1/pools/errs/pages/notanumber", {}, 400, "bad_request"),
            ("DELETE", f"/v1/pools/errs/pages/{good[0] ^ (1 << 40)}", {}, 404, "stale_handle"),
            (
                "POST",
                "/v1/pools/errs/pages:load",
                {"content": b"{not json", "headers": {"content-type": "application/json"}},
                400,
                "bad_request",
            ),
            ("POST", "/v1/pools/errs/pages:load", {"json": {"handles": "x"}}, 400, "bad_request"),
            (
                "POST",
                "/v1/pools/errs/pages:load",
                {"json": {"handles": list(range(65))}},
                413,
                "too_large",
            ),
            (
                "POST",
                "/v1/pools/errs/pages:free",
                {"json": {"handles": [good[0], 12345]}},
                404,
                "stale_handle",
            ),
            (
                "POST",
                "/v1/pools/errs/pages:free",
                {"json": {"handles": [good[0], good[0]]}},
                400,
                "bad_request",
            ),
            ("PUT", "/v1/pools/errs", {"json": {}}, 409, "pool_exists"),
            ("PUT", "/v1/pools/new1", {"json": {"compressor": "brotli"}}, 400, "bad_config"),
            ("PUT", "/v1/pools/new2", {"json": {"chain_size": 99}}, 400, "bad_request"),
            ("PUT", "/v1/pools/new3", {"json": {"what": 1}}, 400, "bad_request"),
            ("PUT", "/v1/pools/.hidden", {"json": {}}, 400, "bad_request"),
            ("GET", "/v1/nothing/here", {}, 404, "not_found"),
            ("POST", "/v1/pools/errs/recompress", {"json": {"type": "never"}}, 400, "bad_request"),
            ("POST", "/v1/pools/errs/recompress", {"json": {"type": "huge"}}, 400, "bad_config"),
            ("DELETE", "/v1/pools/nope", {}, 404, "unknown_pool"),
        ]
        for method, url, kwargs, status, code in cases:
            r = h.request(method, url, **kwargs)  # type: ignore[arg-type]
            assert r.status_code == status, (method, url, r.status_code, r.text)
            body = r.json()
            assert body["error"] == code and body["detail"], (method, url, body)
            assert _snapshot(c, "errs") == before, (method, url)
        assert c.load(good, pool="errs") == [text_page(1)]
        assert "new1" not in c.pools() and "new2" not in c.pools()


def test_pool_limit_and_compress_poor(tcp_daemon: Daemon) -> None:
    with Client(tcp_daemon.url) as c, _http(tcp_daemon) as h:
        c.create_pool("small", compressor="lz4", limit_bytes=16 * 4096)
        kept = []
        with pytest.raises(PoolLimitError):
            for i in range(100):
                kept += c.store([random_page(i)], pool="small")
        before = _snapshot(c, "small")
        r = h.post(
            "/v1/pools/small/pages",
            content=text_page(1) + random_page(999),
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 507 and r.json()["error"] == "pool_limit"
        assert _snapshot(c, "small") == before
        assert c.stats("small")["zswap"]["pool_limit_hit"] == 2
        c.create_pool("picky", compressor="lz4", huge_policy="reject")
        r = h.post(
            "/v1/pools/picky/pages",
            content=random_page(1),
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 422 and r.json()["error"] == "compress_poor"
        assert c.stats("picky")["zswap"]["reject_compress_poor"] == 1


def test_compact_and_recompress_over_http(tcp_daemon: Daemon) -> None:
    with Client(tcp_daemon.url) as c:
        c.create_pool("maint", compressor="lz4", recompress_algo="zstd", recompress_level=19)
        pages = [text_page(i) for i in range(300)]
        handles = c.store(pages, pool="maint")
        c.free(handles[::2], pool="maint")
        assert c.compact("maint") >= 0
        result = c.recompress("maint", type="idle", idle_seconds=0)
        assert result["candidates"] == 150
        assert c.load(handles[1::2], pool="maint") == pages[1::2]


def test_concurrent_clients(unix_daemon: Daemon) -> None:
    def work(n: int) -> None:
        with Client(unix_daemon.url) as c:
            pages = [text_page(n * 1000 + i) for i in range(200)] + [random_page(n)]
            for _ in range(3):
                handles = c.store(pages)
                assert c.load(handles) == pages
                c.free(handles[:100])
                assert c.load(handles[100:]) == pages[100:]
                c.free(handles[100:])

    run_threads(work, range(6))


def test_bearer_token(tmp_path: Path) -> None:
    d = start_daemon("--auth-token-file", token_file(tmp_path, "s3cret-token"))
    try:
        with httpx.Client(base_url=d.url) as h:
            assert h.get("/healthz").status_code == 200
            for headers in (
                {},
                {"authorization": "Bearer nope"},
                {"authorization": "s3cret-token"},
            ):
                r = h.get("/v1/pools", headers=headers)
                assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            r = h.post(
                "/v1/pools/default/pages",
                content=b"x" * 4096,
                headers={"content-type": "application/octet-stream"},
            )
            assert r.status_code == 401
        with pytest.raises(UnauthorizedError), Client(d.url, token="wrong") as c:
            c.pools()
        with Client(d.url, token="s3cret-token") as c:
            assert c.load(c.store([text_page(5)])) == [text_page(5)]
    finally:
        assert d.stop() == 0


def test_client_errors_are_the_stores(tcp_daemon: Daemon) -> None:
    with Client(tcp_daemon.url) as c:
        with pytest.raises(UnknownPoolError):
            c.stats("missing")
        h = c.store([text_page(9)])
        c.free(h)
        with pytest.raises(StaleHandleError):
            c.load(h)


def test_openapi_describes_routes_and_errors(tcp_daemon: Daemon) -> None:
    with _http(tcp_daemon) as h:
        spec = h.get("/openapi.json").json()
    paths = spec["paths"]
    for route in (
        "/v1/pools/{pool}/pages",
        "/v1/pools/{pool}/pages/{handle}",
        "/v1/pools/{pool}/pages:load",
        "/v1/pools/{pool}/pages:free",
        "/v1/pools/{pool}/stats",
        "/v1/pools/{pool}/compact",
        "/v1/pools/{pool}/recompress",
        "/v1/pools",
        "/v1/pools/{pool}",
        "/healthz",
    ):
        assert route in paths, route
    store = paths["/v1/pools/{pool}/pages"]["post"]
    assert "application/octet-stream" in store["requestBody"]["content"]
    assert {"201", "400", "404", "413", "422", "507"} <= set(store["responses"])


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    # zstd-19 on pages of random letters: about a second of work for the request.
    d = start_daemon("--level", "19")
    results: list[int] = []
    body = b"".join(poor_page(i) for i in range(1024))
    started = time.perf_counter()

    def big_request() -> None:
        with httpx.Client(base_url=d.url, timeout=60) as h:
            r = h.post(
                "/v1/pools/default/pages",
                content=body,
                headers={"content-type": "application/octet-stream"},
            )
            results.append(r.status_code)

    t = threading.Thread(target=big_request)
    t.start()
    time.sleep(0.3)  # the request is in the server, compressing
    code = d.stop(signal.SIGTERM)
    t.join()
    assert code == 0
    assert results == [201]
    assert time.perf_counter() - started > 0.5  # it really was in flight
    assert any("stopped" in line for line in d.log)


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "z.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: as after a crash
    d = start_daemon("--http", f"unix:{path}")
    try:
        with Client(d.url) as c:
            assert c.health()["status"] == "ok"
        second = subprocess.run(
            [sys.executable, "-m", "zswapd.cli", "serve", "--http", f"unix:{path}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "another process is serving" in second.stderr
        with Client(d.url) as c:  # the first one is unharmed
            assert c.health()["status"] == "ok"
    finally:
        assert d.stop() == 0
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    refused = run_cli("serve", "--http", f"unix:{regular}")
    assert refused.returncode == 2 and "not a socket" in refused.stderr
    assert regular.read_text() == "keep me"


def test_settings_precedence_flags_env_file(tmp_path: Path) -> None:
    conf = tmp_path / "zswapd.toml"
    conf.write_text(
        "[server]\nmax_pages_per_request = 8\n\n"
        '[pools.default]\ncompressor = "lz4"\nlimit = "1M"\n\n'
        '[pools.archive]\ncompressor = "zstd"\nlevel = 19\n'
    )
    d = start_daemon("--config", str(conf), "--chain-size", "4", env={"ZSWAPD_COMPRESSOR": "lz4hc"})
    try:
        with Client(d.url) as c:
            assert sorted(c.pools()) == ["archive", "default"]
            cfg = c.stats("default")["config"]
            assert cfg["compressor"] == "lz4hc"  # env over file
            assert cfg["chain_size"] == 4  # flag
            assert cfg["limit_bytes"] == 1 << 20  # file
            assert c.stats("archive")["config"]["level"] == 19
        with httpx.Client(base_url=d.url) as h:
            r = h.post(
                "/v1/pools/default/pages",
                content=b"\0" * 4096 * 9,
                headers={"content-type": "application/octet-stream"},
            )
            assert r.status_code == 413  # the file's cap of 8 pages
    finally:
        d.stop()
    bad = run_cli("serve", "--compressor", "brotli")
    assert bad.returncode == 2 and "brotli" in bad.stderr


def test_cli_push_fetch_free_stats_pools(
    tcp_daemon: Daemon, tmp_path: Path, process_pages: list[bytes]
) -> None:
    url = ["--url", tcp_daemon.url, "--quiet"]
    src = tmp_path / "mem.pages"
    src.write_bytes(b"".join(process_pages[:700]))
    handles = tmp_path / "h.tsv"
    assert run_cli("pools", "create", "cli", "--compressor", "lz4", *url).returncode == 0
    push = run_cli("push", str(src), "--pool", "cli", "-o", str(handles), *url)
    assert push.returncode == 0, push.stderr
    assert "stored 700 pages" in push.stdout and "ratio" in push.stdout
    lines = handles.read_text().splitlines()
    assert lines[0].startswith("# zswapd handles v1 pool=cli") and len(lines) == 701
    assert lines[1].split("\t")[1:] == [str(src), "0"]
    out = tmp_path / "back.pages"
    fetch = run_cli("fetch", str(handles), "-o", str(out), *url)
    assert fetch.returncode == 0, fetch.stderr
    assert out.read_bytes() == src.read_bytes()
    stats = run_cli("stats", "--pool", "cli", "--classes", *url)
    assert stats.returncode == 0
    assert "orig_data_size=2867200" in stats.stdout and "obj_allocated" in stats.stdout
    as_json = json.loads(run_cli("stats", "--pool", "cli", "--json", *url).stdout)
    assert as_json["mm_stat"]["orig_data_size"] == 700 * 4096
    assert run_cli("free", str(handles), "--keep", *url).returncode == 0
    again = run_cli("fetch", str(handles), "-o", str(out), *url)
    assert again.returncode == 1 and "no page stored" in again.stderr
    listed = run_cli("pools", "list", *url)
    assert "cli" in listed.stdout.split()
    assert run_cli("pools", "remove", "cli", *url).returncode == 0
    missing = run_cli("stats", "--pool", "cli", *url)
    assert missing.returncode == 1 and "no pool named" in missing.stderr
    bad = tmp_path / "bad.pages"
    bad.write_bytes(b"x" * 5000)
    refused = run_cli("push", str(bad), *url, cwd=tmp_path)  # never in the checkout
    assert refused.returncode == 1 and "whole number" in refused.stderr
    assert not (tmp_path / "zswapd-default.handles").exists()


def test_cli_push_pid(tcp_daemon: Daemon, tmp_path: Path) -> None:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; d = [str(i) * 20 for i in range(50000)]; "
            "print('ready', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == b"ready"
        os.kill(worker.pid, signal.SIGSTOP)  # hold its memory still
        handles = tmp_path / "pid.tsv"
        push = run_cli(
            "push", "--pid", str(worker.pid), "-o", str(handles), "--url", tcp_daemon.url, "--quiet"
        )
        assert push.returncode == 0, push.stderr
        expected = [r.data for r in swappable_pages(worker.pid)]
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    lines = handles.read_text().splitlines()[1:]
    assert len(lines) == len(expected) > 100
    assert lines[0].split("\t")[1].startswith(f"pid:{worker.pid}:")
    out = tmp_path / "pid.pages"
    assert run_cli("fetch", str(handles), "-o", str(out), "--url", tcp_daemon.url).returncode == 0
    assert out.read_bytes() == b"".join(expected)


def test_chunked_bodies_past_the_cap_are_413(tcp_daemon: Daemon) -> None:
    def chunks() -> Iterator[bytes]:
        # Just past the 1 MiB JSON cap (28 x 40,002 bytes): the client has sent
        # it all long before the server's lingering close ends (LINGER_SECONDS),
        # so a loaded machine cannot turn the 413 into a reset.
        for _ in range(28):
            yield b"[" + b"1," * 20000 + b"1]"

    for method, url in (("POST", "/v1/pools/default/pages:load"), ("PUT", "/v1/pools/big")):
        # A connection each: a refusal closes its own (said in the answer), and a
        # client reusing it would race that close.
        with _http(tcp_daemon) as h:
            r = h.request(
                method, url, content=chunks(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
            assert r.headers["connection"] == "close"
    with _http(tcp_daemon) as h:
        r = h.put("/v1/pools/huge", json={"limit_bytes": 2**70})
        assert r.status_code == 400
        r = h.post("/v1/pools/default/pages:load", json={"handles": [True]})
        assert r.status_code == 400


def test_bad_server_settings_are_refused(tmp_path: Path) -> None:
    for text in (
        '[server]\ntoken = "x"\n',
        '[server]\nmax_pages_per_request = "64"\n',
        "[server]\nmax_pages_per_request = 0\n",
        "[server]\nhttp = 7415\n",
    ):
        conf = tmp_path / "bad.toml"
        conf.write_text(text)
        out = run_cli("serve", "--config", str(conf))
        assert out.returncode == 2 and "zswapd serve:" in out.stderr, (text, out.stderr)


def test_a_wrong_method_gets_405_with_allow(tcp_daemon: Daemon) -> None:
    # Found by schemathesis: the JSON error handler dropped the Allow header.
    with _http(tcp_daemon) as h:
        r = h.request("TRACE", "/healthz")
        assert r.status_code == 405 and "GET" in r.headers["allow"]
        assert r.json()["error"] == "method_not_allowed"


def test_an_unallowed_method_is_405_naming_the_allowed_ones(tcp_daemon: Daemon) -> None:
    with _http(tcp_daemon) as h:
        r = h.request("OPTIONS", "/v1/pools/x")
        allowed = set(r.headers["allow"].split(", "))
        assert r.status_code == 405 and allowed == {"PUT", "PATCH", "DELETE"}


def test_a_boolean_is_no_integer_in_a_request(tcp_daemon: Daemon) -> None:
    with _http(tcp_daemon) as h:
        r = h.put("/v1/pools/boolish", json={"recompress_level": False})
        assert r.status_code == 400
        r = h.post("/v1/pools/default/recompress", json={"threshold": True})
        assert r.status_code == 400
        assert "boolish" not in h.get("/v1/pools").json()["pools"]


def test_the_document_lists_409_for_a_pool_that_exists(tcp_daemon: Daemon) -> None:
    with _http(tcp_daemon) as h:
        spec = h.get("/openapi.json").json()
        assert "409" in spec["paths"]["/v1/pools/{pool}"]["put"]["responses"]
