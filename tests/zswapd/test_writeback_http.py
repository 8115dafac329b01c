"""The second tier through the daemon's faces: pool options and writeback over
HTTP, the serve flags, the config file, the CLI, the wire protocol's STATS, the
client's backing files inside --backing-dir (and every way a client might try
to write elsewhere), and written-back pages across a --state-dir restart.

Real daemons, real files: one daemon serves most tests (its start is the slow
part); the restart and start-up refusals start their own.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.zswapd.daemon import Daemon, run_cli, start_daemon
from tests.zswapd.helpers import poor_page, random_page, same_page, text_page
from zswapd.cli import main as cli_main
from zswapd.client import Client
from zswapd.config import PoolConfig
from zswapd.errors import ConfigError, ZswapdError
from zswapd.limits import backing_dir_for
from zswapd.pool import LIVE_SETTINGS, PagePool
from zswapd.pools import PoolRegistry
from zswapd.settings import load_settings

PAGE = 4096


class Served:
    """The shared daemon and the places it may and may not write."""

    def __init__(self, daemon: Daemon, backing_dir: Path, outside: Path, wire: Path) -> None:
        self.daemon = daemon
        self.backing_dir = backing_dir
        self.outside = outside  # the operator's files, and a victim directory
        self.wire = wire
        self.http = httpx.Client(base_url=daemon.url, timeout=30)

    def put(self, name: str, **config: Any) -> httpx.Response:
        return self.http.put(f"/v1/pools/{name}", json=config)

    def store(self, pool: str, pages: list[bytes]) -> list[int]:
        r = self.http.post(f"/v1/pools/{pool}/pages", content=b"".join(pages))
        assert r.status_code == 201, r.text
        handles: list[int] = r.json()["handles"]
        return handles

    def load(self, pool: str, handles: list[int]) -> list[bytes]:
        r = self.http.post(f"/v1/pools/{pool}/pages:load", json={"handles": handles})
        assert r.status_code == 200, r.text
        return [r.content[i : i + PAGE] for i in range(0, len(r.content), PAGE)]

    def stats(self, pool: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/pools/{pool}/stats")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def writeback(self, pool: str, **body: Any) -> httpx.Response:
        return self.http.post(f"/v1/pools/{pool}/writeback", json=body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tier")
    backing_dir = root / "clients"  # made by the daemon, 0700
    outside = root / "operator"
    outside.mkdir()
    config = root / "zswapd.toml"
    config.write_text(
        f'[pools.op]\ncompressor = "lz4"\nbacking_file = "{outside / "op.swap"}"\n'
        'backing_size = "256K"\nwriteback = "manual"\n'
    )
    wire = root / "wire.sock"
    d = start_daemon(
        "--config",
        str(config),
        "--unix-socket",
        str(wire),
        "--compressor",
        "lz4",
        "--backing-file",
        str(outside / "default.swap"),
        "--backing-size",
        "1M",
        "--writeback",
        "manual",
        "--backing-dir",
        str(backing_dir),
        "--backing-quota",
        "2M",
    )
    s = Served(d, backing_dir, outside, wire)
    try:
        yield s
    finally:
        s.http.close()
        assert d.stop() == 0
    # Without --state-dir the files made for clients go (nothing could read
    # them again); the operator's stay.
    left = {p.name for p in backing_dir.iterdir() if p.suffix == ".swap"}
    assert not left, left
    assert (outside / "default.swap").exists()


def _client_files(s: Served) -> set[str]:
    return {str(p.relative_to(s.backing_dir)) for p in s.backing_dir.rglob("*")}


# -- zswap: lru ------------------------------------------------------------------------


def _lru_pool(s: Served, name: str, file_pages: int) -> None:
    """Pool NAME: lz4, a 16-page limit, lru writeback to a client's file NAME.swap."""
    r = s.put(
        name,
        compressor="lz4",
        limit_bytes=16 * PAGE,
        backing_file=f"{name}.swap",
        backing_size=file_pages * PAGE,
        writeback="lru",
    )
    assert r.status_code == 201, r.text
    assert r.json()["config"]["backing_file"] == str(s.backing_dir / f"{name}.swap")


def test_an_lru_pool_at_its_limit_writes_back_instead_of_refusing(served: Served) -> None:
    s = served
    _lru_pool(s, "lru", 256)
    created = s.backing_dir / "lru.swap"
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    pages = [random_page(i) for i in range(48)] + [text_page(i) for i in range(16)]
    handles = []
    # Four times the limit, one page a request (as zram writes): never a 507.  A
    # batch of text pages in as many size classes needs a whole zspage each (up
    # to 8 pages: zsmalloc, as the kernel's, allocates no shorter ones), more
    # than this 16-page limit holds, however much is written back.
    for page in pages:
        handles += s.store("lru", [page])
    st = s.stats("lru")
    assert st["mm_stat"]["mem_used_total"] <= 16 * PAGE
    assert st["mm_stat"]["orig_data_size"] == len(pages) * PAGE
    written = st["bd_stat"]["bd_count"]
    assert written >= len(pages) - 16
    assert st["zswap"]["written_back_pages"] == st["bd_stat"]["bd_writes"] == written
    assert st["zswap"]["reject_reclaim_fail"] == 0
    assert st["backing"]["used_slots"] == written and st["backing"]["writeback"] == "lru"
    assert s.load("lru", handles) == pages  # from memory and from the file, byte for byte
    assert s.stats("lru")["bd_stat"]["bd_reads"] == written
    assert s.http.delete("/v1/pools/lru").status_code == 204
    assert not created.exists()  # a client's file goes with its pool


def test_a_full_backing_file_ends_in_507_reclaim_fail_and_the_pool_keeps_serving(
    served: Served,
) -> None:
    s = served
    _lru_pool(s, "tiny", 8)
    stored: dict[int, bytes] = {}
    refusal = None
    for i in range(60):
        page = random_page(1000 + i)
        r = s.http.post("/v1/pools/tiny/pages", content=page)
        if r.status_code != 201:
            refusal = r
            break
        stored[r.json()["handles"][0]] = page
    assert refusal is not None and refusal.status_code == 507, "never refused"
    assert refusal.json()["error"] == "reclaim_fail"
    assert 16 <= len(stored) <= 16 + 8
    st = s.stats("tiny")
    assert st["zswap"]["reject_reclaim_fail"] >= 1
    assert st["bd_stat"]["bd_count"] == st["backing"]["slots"] == 8
    # Everything acknowledged is served, byte for byte; other pools are untouched.
    assert s.load("tiny", list(stored)) == list(stored.values())
    s.store("default", [text_page(7)])
    # Freeing written-back pages (the oldest went first) gives their slots back:
    # stores go on.
    gone = list(stored)[:4]
    assert s.http.post("/v1/pools/tiny/pages:free", json={"handles": gone}).status_code == 204
    st = s.stats("tiny")
    assert st["backing"]["used_slots"] == st["bd_stat"]["bd_count"] == 4
    s.store("tiny", [random_page(2000)])
    assert s.http.delete("/v1/pools/tiny").status_code == 204


# -- zram: manual writeback ------------------------------------------------------------


def test_manual_writeback_types_over_http(served: Served) -> None:
    s = served
    r = s.put(
        "man",
        compressor="lz4",
        recompress_algo="zstd",
        backing_file="man.swap",
        backing_size=64 * PAGE,
    )
    assert r.status_code == 201, r.text
    huge = [random_page(i) for i in range(3)]
    poor = [poor_page(i) for i in range(2)]  # huge for lz4, zstd halves them
    text = [text_page(i) for i in range(4)]
    same = [same_page(b"\0" * 8), same_page(b"zswapd!!")]
    pages = huge + poor + text + same
    handles = s.store("man", pages)
    # Recompression shrinks the poor pages and marks the random ones incompressible.
    r = s.http.post("/v1/pools/man/recompress", json={"type": "huge"})
    assert r.json()["recompressed"] == 2, r.text

    def wb(**body: Any) -> dict[str, Any]:
        r = s.writeback("man", **body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        assert out["stopped"] is None and out["error"] is None
        return out

    assert wb(type="idle", idle_seconds=3600)["candidates"] == 0  # nothing idle that long
    out = wb(type="incompressible")
    assert (out["written_back"], out["candidates"]) == (3, 3)
    assert s.stats("man")["mm_stat"]["huge_pages"] == 0  # huge pages left memory
    assert wb(type="huge")["candidates"] == 0  # the huge ones are in the file already
    out = wb(type="lru", max_pages=1)
    # Candidates: the pages on the LRU (in memory, not same-filled), before max_pages.
    assert (out["written_back"], out["candidates"]) == (1, len(poor) + len(text))
    out = wb(
        type="idle", idle_seconds=0
    )  # idle_seconds 0: every page (zram's "all"), same-filled never
    assert out["written_back"] == out["candidates"] == len(poor) + len(text) - 1
    st = s.stats("man")
    n = len(huge) + len(poor) + len(text)
    assert st["bd_stat"] == {"bd_count": n, "bd_reads": 0, "bd_writes": n}
    assert st["mm_stat"]["orig_data_size"] == len(pages) * PAGE  # still stored
    assert st["mm_stat"]["compr_data_size"] == 0 and st["mm_stat"]["same_pages"] == 2
    assert s.load("man", handles) == pages
    assert s.stats("man")["bd_stat"]["bd_reads"] == n
    assert s.http.post("/v1/pools/man/pages:free", json={"handles": handles[:2]}).status_code == 204
    st = s.stats("man")
    assert st["bd_stat"]["bd_count"] == st["backing"]["used_slots"] == n - 2
    assert s.http.delete("/v1/pools/man").status_code == 204


def test_writeback_limit_stops_and_says_so_and_is_set_live(served: Served) -> None:
    s = served
    r = s.put("lim", backing_file="lim.swap", backing_size=64 * PAGE, writeback_limit=3)
    assert r.status_code == 201, r.text
    pages = [text_page(100 + i) for i in range(10)]
    handles = s.store("lim", pages)
    out = s.writeback("lim", type="idle", idle_seconds=0).json()
    assert out["written_back"] == 3 and out["candidates"] == 10
    assert out["stopped"] == "writeback_limit" and out["writeback_limit"] == 0
    out = s.writeback("lim", type="idle", idle_seconds=0).json()
    assert out["written_back"] == 0 and out["stopped"] == "writeback_limit"
    # zram's echo N > writeback_limit, while the pool holds pages.
    r = s.http.patch("/v1/pools/lim", json={"writeback_limit": 2})
    assert r.status_code == 200 and r.json()["config"]["writeback_limit"] == 2, r.text
    assert s.writeback("lim", type="idle", idle_seconds=0).json()["written_back"] == 2
    assert s.http.patch("/v1/pools/lim", json={"writeback_limit": None}).status_code == 200
    out = s.writeback("lim", type="idle", idle_seconds=0).json()
    assert (out["written_back"], out["stopped"], out["writeback_limit"]) == (5, None, None)
    assert s.load("lim", handles) == pages
    # Only live settings, each with a value it can take.
    for bad in ({"compressor": "zstd"}, {"huge_policy": None}, {"writeback_limit": -1}):
        r = s.http.patch("/v1/pools/lim", json=bad)
        assert r.status_code == 400, (bad, r.text)
    assert s.http.delete("/v1/pools/lim").status_code == 204


def test_a_live_limit_is_never_raised_past_the_room_the_pool_reserved(served: Served) -> None:
    # A pool made with a limit reserves that much address space: a limit raised
    # past it would be shown in mm_stat and never be reached.
    s = served
    assert s.put("lm", limit_bytes=16 * PAGE).status_code == 201
    for limit, status in ((8 * PAGE, 200), (32 * PAGE, 400), (0, 400), (16 * PAGE, 200)):
        r = s.http.patch("/v1/pools/lm", json={"limit_bytes": limit})
        assert r.status_code == status, (limit, r.text)
    assert (
        "reserved room for 65536 bytes"
        in s.http.patch("/v1/pools/lm", json={"limit_bytes": 0}).json()["detail"]
    )
    assert s.stats("lm")["mm_stat"]["mem_limit"] == 16 * PAGE
    # A pool made without one can take any limit, and drop it again.
    assert s.put("lm2").status_code == 201
    for limit in (4 * PAGE, 1 << 26, 0):
        r = s.http.patch("/v1/pools/lm2", json={"limit_bytes": limit})
        assert r.status_code == 200 and r.json()["config"]["limit_bytes"] == limit, r.text
    for name in ("lm", "lm2"):
        assert s.http.delete(f"/v1/pools/{name}").status_code == 204


def test_the_live_settings_route_takes_every_live_setting() -> None:
    from zswapd.http_schemas import LiveSettings

    assert set(LiveSettings.model_fields) == set(LIVE_SETTINGS)


def test_writeback_without_a_backing_file_or_with_a_bad_body_is_400(served: Served) -> None:
    s = served
    assert s.put("plain").status_code == 201
    s.store("plain", [text_page(1)])
    r = s.writeback("plain", type="idle", idle_seconds=0)
    assert r.status_code == 400 and "has no backing file" in r.json()["detail"]
    for body in (
        {"type": "all"},
        {"type": "idle", "idle_seconds": -1},
        {"type": "lru", "max_pages": 0},
        {},
        {"type": "huge", "colour": "red"},
    ):
        r = s.writeback("default", **body)
        assert r.status_code == 400, (body, r.text)
    assert s.writeback("nosuchpool", type="idle", idle_seconds=0).status_code == 404
    assert s.http.post("/v1/pools/default/writeback").status_code == 400  # a type is needed
    assert s.http.delete("/v1/pools/plain").status_code == 204


CliRun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(served: Served, capsys: pytest.CaptureFixture[str]) -> CliRun:
    """``zswapd ARGV --url <the daemon>`` in this process (a client command: no
    interpreter to start): the exit code, stdout and stderr."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main([*argv, "--url", served.daemon.url])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_writeback_and_stats_from_the_command_line(served: Served, cli: CliRun) -> None:
    s = served
    code, out, err = cli(
        *("pools", "create", "cli", "--compressor", "lz4", "--json"),
        *("--backing-file", "cli.swap", "--backing-size", "128K", "--writeback", "manual"),
    )
    assert code == 0, err
    assert f'"backing_file": "{s.backing_dir / "cli.swap"}"' in out
    s.store("cli", [random_page(50 + i) for i in range(3)] + [text_page(9)])
    code, out, err = cli("writeback", "--pool", "cli", "--type", "huge")
    assert code == 0, err
    assert "wrote back 3 of 3 huge pages of pool 'cli'" in out
    code, out, err = cli("stats", "--pool", "cli")
    assert code == 0, err
    assert "bd_stat: bd_count=3 bd_reads=0 bd_writes=3" in out
    assert f"backing {s.backing_dir / 'cli.swap'}: 3 of 32 slots used" in out
    code, out, err = cli("pools", "set", "cli", "--writeback-limit", "0", "--json")
    assert code == 0, err
    assert '"writeback_limit": 0' in out
    idle = ("writeback", "--pool", "cli", "--type", "idle", "--idle-seconds", "0")
    code, out, err = cli(*idle, "--json")
    # The JSON answer too: a writeback that stopped early failed (zram answers EIO).
    assert code == 1 and '"stopped": "writeback_limit"' in out
    code, out, err = cli(*idle)
    assert code == 1 and "stopped early: writeback_limit" in out
    # A pool without a backing file: no backing line, and writeback a clear error.
    assert s.put("plain2").status_code == 201
    code, out, err = cli("stats", "--pool", "plain2")
    assert code == 0 and "mm_stat" in out and "bd_stat" not in out and "backing" not in out
    code, out, err = cli("writeback", "--pool", "plain2", "--type", "huge")
    assert code == 1 and "pool 'plain2' has no backing file" in err
    for name in ("cli", "plain2"):
        assert s.http.delete(f"/v1/pools/{name}").status_code == 204


def test_idle_seconds_is_required_for_the_idle_types_and_refused_for_the_others(
    served: Served, cli: CliRun
) -> None:
    """zram marks pages idle before an idle writeback or recompress: the age is
    part of the request, never a silent "every page"; bad flags ask nothing."""
    s = served
    assert (
        s.put("idl", compressor="lz4", backing_file="idl.swap", backing_size=PAGE * 16).status_code
        == 201
    )
    s.store("idl", [text_page(70 + i) for i in range(4)] + [random_page(70)])
    wanted = "needs --idle-seconds N (0: every page, zram's 'all')"
    for argv, problem in [
        (("writeback", "--type", "idle"), f"--type idle {wanted}"),
        (("writeback", "--type", "huge_idle", "--json"), f"--type huge_idle {wanted}"),
        (("writeback", "--type", "huge", "--idle-seconds", "0"), "not huge"),
        (("writeback", "--type", "lru", "--idle-seconds", "5"), "not lru"),
        (("writeback", "--type", "idle", "--idle-seconds", "-1"), "0 or more, not -1"),
        (("recompress", "--type", "idle"), f"--type idle {wanted}"),
        (("recompress", "--type", "huge", "--idle-seconds", "0"), "not huge"),
    ]:
        code, out, err = cli(*argv, "--pool", "idl")
        assert code == 2 and out == "", (argv, out)
        assert err.startswith(f"zswapd {argv[0]}: ") and err.count("\n") == 1, err
        assert problem in err, (argv, err)
    assert s.stats("idl")["bd_stat"] == {"bd_count": 0, "bd_reads": 0, "bd_writes": 0}
    # 0 is zram's "all"; a long age picks nothing yet.
    code, out, err = cli("writeback", "--pool", "idl", "--type", "idle", "--idle-seconds", "3600")
    assert code == 0 and "wrote back 0 of 0 idle pages" in out, err
    code, out, err = cli("writeback", "--pool", "idl", "--type", "idle", "--idle-seconds", "0")
    assert code == 0 and "wrote back 5 of 5 idle pages" in out, err
    assert s.http.delete("/v1/pools/idl").status_code == 204


def test_pools_create_and_set_take_the_threshold_and_recompression_flags(
    served: Served, cli: CliRun
) -> None:
    s = served
    code, out, err = cli(
        *("pools", "create", "rc", "--compressor", "lz4"),
        *("--accept-threshold-percent", "80", "--recompress-algo", "zstd"),
        *("--recompress-level", "19"),
    )
    assert code == 0, err
    config = s.stats("rc")["config"]
    assert config["accept_threshold_percent"] == 80
    assert (config["recompress_algo"], config["recompress_level"]) == ("zstd", 19)
    code, out, err = cli("pools", "set", "rc", "--accept-threshold-percent", "50", "--json")
    assert code == 0 and '"accept_threshold_percent": 50' in out, err
    assert s.stats("rc")["config"]["accept_threshold_percent"] == 50
    # Refused, one line each, the pool as it was: by the daemon (exit 1), or, for
    # what ``pools set`` does not take and an algorithm not installed, before any
    # request (exit 2, as any usage error).
    for argv, status, prefix in [
        (("pools", "set", "rc", "--accept-threshold-percent", "101"), 1, "zswapd pools set: "),
        (("pools", "set", "rc", "--recompress-algo", "lz4"), 2, "zswapd pools set: "),
        (("pools", "create", "rc2", "--recompress-algo", "nosuchalgo"), 2, "zswapd pools create: "),
    ]:
        code, out, err = cli(*argv)
        assert code == status and err.startswith(prefix) and err.count("\n") == 1, (argv, err)
    assert s.stats("rc")["config"] == {**config, "accept_threshold_percent": 50}
    assert "rc2" not in s.http.get("/v1/pools").json()["pools"]
    assert s.http.delete("/v1/pools/rc").status_code == 204


def test_recompress_from_the_command_line(served: Served, cli: CliRun) -> None:
    s = served
    assert s.put("rcc", compressor="lz4", recompress_algo="zstd").status_code == 201
    handles = s.store("rcc", [poor_page(80 + i) for i in range(3)] + [text_page(80)])
    assert s.stats("rcc")["mm_stat"]["huge_pages"] == 3
    code, out, err = cli("recompress", "--pool", "rcc", "--type", "huge", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["candidates"] == result["recompressed"] == 3 and result["bytes_saved"] > 0
    assert s.stats("rcc")["mm_stat"]["huge_pages"] == 0
    assert s.load("rcc", handles) == [poor_page(80 + i) for i in range(3)] + [text_page(80)]
    code, out, err = cli(
        *("recompress", "--pool", "rcc", "--type", "idle", "--idle-seconds", "0"),
        *("--algo", "zstd", "--level", "3", "--threshold", "100"),
    )
    assert code == 0 and "of 1 idle page of pool 'rcc'" in out, err
    code, out, err = cli("recompress", "--pool", "nosuch", "--type", "huge")
    assert code == 1 and err.startswith("zswapd recompress: 404"), err
    assert s.http.delete("/v1/pools/rcc").status_code == 204


# -- the operator's files, the serve flags, the wire protocol ---------------------------


def test_the_serve_flags_give_default_its_backing_file_and_wire_stats_carry_bd_stat(
    served: Served,
) -> None:
    s = served
    page = text_page(77)
    with Client(f"unix://{s.wire}") as wire:
        (h,) = wire.store([page])
        assert s.writeback("default", type="idle", idle_seconds=0).json()["written_back"] >= 1
        assert wire.load([h]) == [page]
        st = wire.stats("default")
        assert st["bd_stat"]["bd_count"] >= 1 and st["bd_stat"]["bd_reads"] >= 1
        assert st["backing"]["file"] == str(s.outside / "default.swap")
        assert st["backing"]["slots"] == 256  # --backing-size 1M
        with pytest.raises(ZswapdError, match="writeback needs the HTTP API"):
            wire.writeback("default", type="idle", idle_seconds=0)


def test_delete_removes_a_clients_file_and_keeps_the_operators(served: Served) -> None:
    s = served
    op = s.outside / "op.swap"  # from the config file
    assert op.exists() and s.stats("op")["backing"]["slots"] == 64  # "256K"
    assert s.put("gone", backing_file="sub-gone.swap", backing_size=PAGE).status_code == 201
    assert (s.backing_dir / "sub-gone.swap").exists()
    assert s.http.delete("/v1/pools/gone").status_code == 204
    assert not (s.backing_dir / "sub-gone.swap").exists()
    assert s.http.delete("/v1/pools/op").status_code == 204
    assert op.exists()


# -- no client chooses where the daemon writes -----------------------------------------


def test_client_backing_files_outside_the_dir_are_refused_and_nothing_is_created(
    served: Served,
) -> None:
    s = served
    victim_dir = s.outside / "victim"
    victim_dir.mkdir()
    existing = s.backing_dir / "existing.swap"
    existing.write_bytes(b"the operator's bytes")
    (s.backing_dir / "link").symlink_to(victim_dir)  # a directory link inside the dir
    (s.backing_dir / "last.swap").symlink_to(victim_dir / "target")  # a dangling file link
    (s.backing_dir / "sub").mkdir()
    before = _client_files(s)
    cases = {
        "absolute": str(victim_dir / "abs.swap"),
        "dotdot": "../victim.swap",
        "dotdot inside": "sub/../../victim.swap",
        "dot": "./x.swap",
        "symlinked directory": "link/x.swap",
        "symlink as the file": "last.swap",
        "existing file": "existing.swap",
        "directory": "sub",
        "a subdirectory": "sub/n.swap",
        "empty": "",
    }
    for what, name in cases.items():
        r = s.put("evil", backing_file=name, backing_size=16 * PAGE)
        assert r.status_code == 400, (what, r.text)
        assert r.json()["error"] == "bad_config", (what, r.text)
    r = s.put("evil", backing_file="big.swap", backing_size=4 << 20)  # over the 2M quota
    assert r.status_code == 400 and "--backing-quota" in r.json()["detail"], r.text
    r = s.put("evil", backing_file="nosize.swap")
    assert r.status_code == 400 and "backing_size" in r.json()["detail"], r.text
    # A device's backing file is a client's too.
    r = s.http.put("/v1/devices/evil", json={"size": 1 << 20, "backing_file": "/tmp/evil.swap"})
    assert r.status_code == 400, r.text
    assert "evil" not in s.http.get("/v1/pools").json()["pools"]
    assert _client_files(s) == before
    assert list(victim_dir.iterdir()) == [] and not (s.outside / "victim.swap").exists()
    assert existing.read_bytes() == b"the operator's bytes"
    # A lone surrogate (JSON's \udcff) is no file name: 400, no pool, no file.
    r = s.http.put(
        "/v1/pools/evil",
        content=b'{"backing_file": "\\udcff", "backing_size": 4096}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"] == "bad_config", r.text
    assert "evil" not in s.http.get("/v1/pools").json()["pools"]
    assert _client_files(s) == before
    # Bare names only: a subdirectory could be swapped for a symlink between
    # the file's creation and its removal (hostile review).
    assert list((s.backing_dir / "sub").iterdir()) == []
    for planted in ("existing.swap", "link", "last.swap"):
        (s.backing_dir / planted).unlink()
    (s.backing_dir / "sub").rmdir()


def test_the_backing_quota_counts_every_clients_file(served: Served) -> None:
    s = served
    assert s.put("q1", backing_file="q1.swap", backing_size=1 << 20).status_code == 201
    r = s.put("q2", backing_file="q2.swap", backing_size=(1 << 20) + PAGE)
    assert r.status_code == 400 and "--backing-quota" in r.json()["detail"], r.text
    assert not (s.backing_dir / "q2.swap").exists()
    assert s.put("q2", backing_file="q2.swap", backing_size=1 << 20).status_code == 201
    assert s.http.delete("/v1/pools/q1").status_code == 204  # gives its share back
    assert s.put("q3", backing_file="q3.swap", backing_size=1 << 20).status_code == 201
    for name in ("q2", "q3"):
        assert s.http.delete(f"/v1/pools/{name}").status_code == 204


def test_concurrent_creations_cannot_pass_the_quota_together(tmp_path: Path) -> None:
    # Each thread's quota check and its file's creation are apart in time: the
    # registry counts the bytes being created, so eight at once still fit the quota.
    bd = tmp_path / "bd"
    bd.mkdir(mode=0o700)

    def slow_pool(*args: Any, **kwargs: Any) -> PagePool:
        time.sleep(0.05)  # a pool that takes a while to build: the window is wide open
        return PagePool(*args, **kwargs)

    registry = PoolRegistry(slow_pool, backing_dir=bd, backing_quota=3 * 64 * PAGE)
    barrier = threading.Barrier(8)
    made, refused = [], []

    def create(i: int) -> None:
        config = PoolConfig(backing_file=f"c{i}.swap", backing_size=64 * PAGE)
        barrier.wait()
        try:
            made.append(registry.create(f"c{i}", config, client=True).name)
        except ConfigError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 3 and len(refused) == 5
    assert all("--backing-quota" in r for r in refused)
    assert sorted(p.name for p in bd.iterdir()) == sorted(f"{n}.swap" for n in made)
    for name in made:
        registry.remove(name)
    assert list(bd.iterdir()) == []


def test_two_pools_never_share_a_file(served: Served) -> None:
    s = served
    assert s.put("one", backing_file="one.swap", backing_size=PAGE).status_code == 201
    r = s.put("two", backing_file="one.swap", backing_size=PAGE)
    assert r.status_code == 400, r.text
    assert s.http.delete("/v1/pools/one").status_code == 204


def test_shutdown_removes_clients_files_without_state_dir_and_keeps_the_operators(
    tmp_path: Path,
) -> None:
    bd, op = tmp_path / "bd", tmp_path / "op.swap"
    d = start_daemon(
        *("--backing-dir", str(bd), "--backing-file", str(op), "--backing-size", "64K")
    )
    try:
        with Client(d.url) as c:
            c.create_pool("p", backing_file="p.swap", backing_size=16 * PAGE)
            c.store([text_page(i) for i in range(4)], pool="p")
            c.store([text_page(i) for i in range(4)])
            assert c.writeback("p", type="idle", idle_seconds=0)["written_back"] == 4
            assert c.writeback("default", type="idle", idle_seconds=0)["written_back"] == 4
    finally:
        assert d.stop() == 0
    # Nothing could read the client's pages again: gone.  The operator's file stays.
    assert list(bd.iterdir()) == []
    assert op.stat().st_size == 64 << 10
    assert any("removed" in line and "p.swap" in line for line in d.log), d.log


def test_without_backing_dir_clients_get_no_file(tmp_path: Path) -> None:
    d = start_daemon()
    try:
        with httpx.Client(base_url=d.url) as http:
            r = http.put("/v1/pools/p", json={"backing_file": "p.swap", "backing_size": PAGE})
            assert r.status_code == 400 and "--backing-dir" in r.json()["detail"], r.text
            assert http.get("/v1/pools").json()["pools"] == ["default"]
            paths = http.get("/openapi.json").json()["paths"]
            assert "post" in paths["/v1/pools/{pool}/writeback"]
            assert "patch" in paths["/v1/pools/{pool}"]
    finally:
        assert d.stop() == 0
    assert not (Path.cwd() / "p.swap").exists()


def test_a_backing_dir_others_can_write_stops_the_daemon(tmp_path: Path) -> None:
    opened = tmp_path / "open"
    opened.mkdir()
    opened.chmod(0o777)
    out = run_cli("serve", "--http", "127.0.0.1:0", "--backing-dir", str(opened), timeout=60)
    assert out.returncode == 2, out.stderr
    assert "mode 0777: others can write" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backing-quota", "1G"], "--backing-quota without --backing-dir"),
        (["--backing-dir", "{tmp}/bd", "--backing-quota", "lots"], "--backing-quota 'lots'"),
        (["--backing-dir", "{tmp}/bd", "--backing-quota", "150%"], "--backing-quota '150%'"),
        (["--writeback", "lru"], 'writeback "lru" needs a backing_file'),
        (["--backing-file", "{tmp}/f.swap"], "give its backing_size"),
        (["--backing-file", "{tmp}/f.swap", "--backing-size", "1000"], "4096-byte slots"),
        # A client could name a file the next start reads, or deletes, as state.
        (["--backing-dir", "{tmp}/bd", "--state-dir", "{tmp}/bd"], "overlap"),
        (["--backing-dir", "{tmp}/bd", "--state-dir", "{tmp}/bd/state"], "overlap"),
        (["--backing-dir", "{tmp}/st/bd", "--state-dir", "{tmp}/st"], "overlap"),
    ],
)
def test_bad_backing_settings_stop_the_daemon_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # In this process: each is refused before anything listens.
    argv = [a.format(tmp=tmp_path) for a in args]
    assert cli_main(["serve", "--http", "127.0.0.1:0", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "f.swap").exists()


# -- settings --------------------------------------------------------------------------


def test_backing_settings_from_file_environment_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "z.toml"
    toml.write_text(
        '[server]\nbacking_dir = "bd"\nbacking_quota = "10%"\n'
        '[pools.fast]\nbacking_file = "fast.swap"\nbacking_size = "2M"\nwriteback = "lru"\n'
        "writeback_limit = 100\n"
    )
    env = {
        "ZSWAPD_BACKING_FILE": str(tmp_path / "d.swap"),
        "ZSWAPD_BACKING_SIZE": "512K",
        "ZSWAPD_WRITEBACK": "manual",
        "ZSWAPD_WRITEBACK_LIMIT": "7",
    }
    settings = load_settings(str(toml), env, {"backing_quota": "1M"})
    configs = settings.pool_configs()
    fast = configs["fast"]
    assert fast.backing_file == os.path.abspath("fast.swap")  # absolute for the state file
    assert (fast.backing_size, fast.writeback, fast.writeback_limit) == (2 << 20, "lru", 100)
    d = configs["default"]
    assert (d.backing_file, d.backing_size, d.writeback_limit) == (
        str(tmp_path / "d.swap"),
        512 << 10,
        7,
    )
    assert (settings.backing_dir, settings.backing_quota) == ("bd", "1M")  # the flag won


def test_the_backing_dir_is_made_private_and_the_quota_defaults_to_a_quarter(
    tmp_path: Path,
) -> None:
    settings = load_settings(None, {}, {"backing_dir": str(tmp_path / "new" / "bd")})
    where, quota = backing_dir_for(settings)
    assert where == (tmp_path / "new" / "bd").resolve()
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    fs = os.statvfs(where)
    quarter = fs.f_blocks * fs.f_frsize // 4
    assert quota == quarter - quarter % PAGE
    link = tmp_path / "link"
    link.symlink_to(where)
    settings = load_settings(None, {}, {"backing_dir": str(link), "backing_quota": "0"})
    assert backing_dir_for(settings) == (where, None)  # its real path; 0: no bound


# -- --state-dir: written-back pages survive a restart ----------------------------------


def test_written_back_pages_survive_a_restart_and_a_changed_file_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, bd = tmp_path / "state", tmp_path / "bd"
    args = ("--state-dir", str(state), "--backing-dir", str(bd), "--compressor", "lz4")
    pages = [random_page(300 + i) for i in range(4)] + [text_page(300 + i) for i in range(4)]
    later = [text_page(400 + i) for i in range(3)]  # stay in memory
    d = start_daemon(*args)
    try:
        with Client(d.url) as c:
            c.create_pool("keep", backing_file="keep.swap", backing_size=64 * PAGE)
            handles = c.store(pages, pool="keep")
            assert c.writeback("keep", type="idle", idle_seconds=0)["written_back"] == len(pages)
            handles += c.store(later, pool="keep")
    finally:
        assert d.stop() == 0
    swap = bd / "keep.swap"
    assert swap.exists()  # a state file names it: it stays

    # Changed behind the daemon's back: the checksum catches it, never wrong bytes;
    # every other page comes back from the file or from memory, byte for byte.
    with open(swap, "r+b") as f:
        f.write(b"\xff" * 64)  # slot 0: the first page written back
    d = start_daemon(*args)
    try:
        with httpx.Client(base_url=d.url) as http:
            r = http.get(f"/v1/pools/keep/pages/{handles[0]}")
            assert r.status_code == 500 and r.json()["error"] == "corrupt_object", r.text
            r = http.post("/v1/pools/keep/pages:load", json={"handles": handles[1:]})
            assert r.status_code == 200 and r.content == b"".join(pages[1:] + later)
            st = http.get("/v1/pools/keep/stats").json()
            assert st["bd_stat"]["bd_count"] == len(pages)
            assert st["bd_stat"]["bd_reads"] >= len(pages) - 1
            assert st["backing"]["file"] == str(swap.resolve())
            assert st["backing"]["corrupt_pages"] == 1
    finally:
        assert d.stop() == 0

    # Gone while the daemon was down: refused at start (before anything listens),
    # and not made afresh.
    swap.unlink()
    assert cli_main(["serve", "--http", "127.0.0.1:0", *args]) == 2
    err = capsys.readouterr().err
    assert "keep.swap" in err and "cannot be reopened" in err, err
    assert not swap.exists()
