"""The administrative command line against a real daemon: stats, pools, devices, compact.

What a person who reads ``zramctl`` every day expects: a row per pool and per
device in human units (DATA orig_data_size, COMPR compr_data_size, TOTAL
mem_used_total, RATIO DATA/TOTAL, SAVED DATA-TOTAL); the kernel's figures on
request; nested subcommands that each list only their own options; and ``serve``
saying, once up, what it serves and at which real addresses.
"""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

import compressors
from tests.zswapd.daemon import Daemon, one_line_failure, run_cli, start_daemon
from tests.zswapd.helpers import random_page, same_page, text_page
from tests.zswapd.nbd_client import open_device, request
from zswapd.cli import build_parser
from zswapd.cli_format import human, printable
from zswapd.client import Client
from zswapd.nbd_protocol import Cmd
from zswapd.settings import POOL_OPTIONS

PAGE = 4096


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    """A daemon with every frontend: HTTP, wire, metrics, NBD with one device."""
    where = tmp_path_factory.mktemp("admin")
    d = start_daemon(
        *("--unix-socket", str(where / "wire.sock"), "--nbd", f"unix:{where / 'nbd.sock'}"),
        *("--device", "zram0=64M,compressor=lz4", "--metrics", "127.0.0.1:0"),
    )
    yield d, where
    assert d.stop() == 0


def _ok(*argv: str, url: str, cwd: Path | None = None) -> str:
    result = run_cli(*argv, "--url", url, cwd=cwd)
    assert result.returncode == 0 and result.stderr == "", result
    return result.stdout


def _rows(text: str) -> dict[str, dict[str, str]]:
    """A zramctl-like table by its NAME column (cells hold no spaces)."""
    lines = text.splitlines()
    head = lines[0].split()
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break  # the table ends at the first blank line
        cells = line.split()
        assert len(cells) == len(head), (head, line)
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def _store(d: Daemon, pool: str, pages: list[bytes]) -> list[int]:
    with Client(d.url) as c:
        return c.store(pages, pool=pool)


def _stats(d: Daemon, pool: str) -> dict[str, object]:
    with Client(d.url) as c:
        return c.stats(pool)


# -- human units ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (4096, "4K"),
        (112_640 + 614, "110.6K"),
        (int(340.5 * 2**20), "340.5M"),
        (int(1.2 * 2**30), "1.2G"),
        (2**20 - 1, "1M"),  # 1023.999K rounds up to the next unit, not "1024K"
        (-131072, "-128K"),  # SAVED below zero: the pool costs more than it holds
    ],
)
def test_human_units_are_zramctls(n: int, text: str) -> None:
    assert human(n) == text


def test_names_a_client_chose_cannot_drive_the_terminal() -> None:
    assert printable("a\x1b[2Jb\n.swap") == "a\\x1b[2Jb\\n.swap"


# -- stats ------------------------------------------------------------------------------


def test_stats_prints_a_zramctl_row_per_pool_and_device(served: tuple[Daemon, Path]) -> None:
    d, _ = served
    assert _ok("pools", "create", "sumry", "--compressor", "lz4", "--pool-limit", "8M", url=d.url)
    pages = [text_page(i) for i in range(40)] + [same_page(b"\0" * 8)] * 3
    pages += [random_page(i) for i in range(2)]
    _store(d, "sumry", pages)
    rows = _rows(_ok("stats", url=d.url))
    mm = _stats(d, "sumry")["mm_stat"]
    assert isinstance(mm, dict)
    data, total = mm["orig_data_size"], mm["mem_used_total"]
    assert rows["sumry"] == {
        "NAME": "sumry",
        "ALGORITHM": "lz4",
        "DISKSIZE": "-",
        "MEM-LIMIT": "8M",
        "DATA": "180K",  # 45 pages
        "COMPR": human(mm["compr_data_size"]),
        "TOTAL": human(total),
        "ZERO-PAGES": "3",
        "HUGE": "2",
        "RATIO": f"{data / total:.2f}",
        "SAVED": human(data - total),
    }
    # zstd at its default level says 3; the device is a row of its own, with its size.
    assert rows["default"]["ALGORITHM"] == "zstd:3" and rows["default"]["MEM-LIMIT"] == "none"
    assert rows["zram0"]["DISKSIZE"] == "64M" and rows["zram0"]["ALGORITHM"] == "lz4"
    assert list(rows).count("zram0") == 1  # a device's pool is not listed twice
    # One pool: its row, then the kernel's figures under the kernel's names.
    one = _ok("stats", "--pool", "sumry", url=d.url)
    assert list(_rows(one)) == ["sumry"]
    assert f"orig_data_size={data}" in one and "same_pages=3" in one
    assert "obj_allocated" not in one  # the class table only when asked for


def test_stats_of_a_default_level_zstd_pool_says_level_3(served: tuple[Daemon, Path]) -> None:
    d, _ = served
    assert _ok("pools", "create", "zdef", "--compressor", "zstd", url=d.url)
    as_json = json.loads(_ok("stats", "--pool", "zdef", "--json", url=d.url))
    assert as_json["config"]["level"] == 3
    assert _rows(_ok("stats", "--pool", "zdef", url=d.url))["zdef"]["ALGORITHM"] == "zstd:3"
    assert _rows(_ok("pools", "list", url=d.url))["zdef"]["ALGORITHM"] == "zstd:3"
    assert _ok("pools", "remove", "zdef", url=d.url)


def test_stats_classes_and_json(served: tuple[Daemon, Path]) -> None:
    d, _ = served
    _store(d, "default", [text_page(100 + i) for i in range(20)])
    stats = _stats(d, "default")
    classes = stats["classes"]
    assert isinstance(classes, list)
    used = [r for r in classes if r["obj_allocated"]]
    table = _ok("stats", "--pool", "default", "--classes", url=d.url).split("\n\n")[-1]
    lines = [line for line in table.splitlines() if "obj_allocated" not in line]
    header = next(line for line in table.splitlines() if "obj_allocated" in line)
    assert header.split()[:3] == ["class", "size", "10%"] and len(lines) == len(used) > 0
    every = _ok("stats", "--pool", "default", "--all", url=d.url).split("\n\n")[-1]
    assert len(every.splitlines()) == len(classes) + 1  # --all: empty classes too
    # --json: the API's figures as they are; without --pool, every pool and device.
    one = json.loads(_ok("stats", "--pool", "default", "--json", url=d.url))
    assert one["mm_stat"] == _stats(d, "default")["mm_stat"]
    everything = json.loads(_ok("stats", "--json", url=d.url))
    assert set(everything) == {"pools", "devices"}
    assert "default" in everything["pools"] and "zram0" not in everything["pools"]
    assert everything["devices"]["zram0"]["size"] == 64 << 20
    assert everything["pools"]["default"]["config"]["level"] == 3


# -- pools ------------------------------------------------------------------------------


def test_pools_list_shows_each_pools_settings_and_size(served: tuple[Daemon, Path]) -> None:
    d, _ = served
    assert _ok(
        *("pools", "create", "listed", "--compressor", "lz4hc", "--allocator", "zbud"),
        *("--pool-limit", "16M", "--huge-policy", "reject"),
        url=d.url,
    )
    _store(d, "listed", [text_page(200 + i) for i in range(7)])
    mm = _stats(d, "listed")["mm_stat"]
    assert isinstance(mm, dict)
    row = _rows(_ok("pools", "list", url=d.url))["listed"]
    assert row == {
        "NAME": "listed",
        "ALGORITHM": "lz4hc:9",
        "ALLOCATOR": "zbud",
        "CHAIN": "8",
        "MEM-LIMIT": "16M",
        "HUGE": "reject",
        "WRITEBACK": "-",  # no backing file
        "PAGES": "7",
        "TOTAL": human(mm["mem_used_total"]),
    }
    as_json = json.loads(_ok("pools", "list", "--json", url=d.url))
    assert as_json["listed"]["config"]["allocator"] == "zbud"
    assert as_json["listed"]["mm_stat"] == mm
    assert _ok("pools", "remove", "listed", url=d.url) == "removed pool 'listed'\n"


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _options(*path: str) -> set[str]:
    return {o for a in _subparser(*path)._actions for o in a.option_strings}


def test_pools_set_takes_the_live_pool_options_parsed_as_pools_create_does() -> None:
    changes = _options("pools", "set")
    for option in POOL_OPTIONS:
        assert (option.flag in changes) == option.live, option.flag
    assert {"--accept-threshold-percent", "--no-writeback-limit"} <= changes
    args = build_parser().parse_args(["pools", "set", "p", "--pool-limit", "1M"])
    assert args.pool_limit == 1 << 20
    # A bad size is refused by the parser, in one line, before any request.
    refused = run_cli("pools", "set", "p", "--pool-limit", "lots", "--url", "http://192.0.2.1:9")
    one_line_failure(refused, 2, "zswapd pools set:", "--pool-limit", "not a size")
    nothing = run_cli("pools", "set", "p", "--url", "http://192.0.2.1:9")
    one_line_failure(nothing, 1, "give --pool-limit, --huge-policy, --writeback-limit")


def test_each_subcommand_has_its_own_help_and_only_its_options() -> None:
    create = run_cli("pools", "create", "--help")
    assert create.returncode == 0
    for flag in ("--compressor", "--level", "--allocator", "--chain-size", "--pool-limit"):
        assert flag in create.stdout, flag
    assert _options("pools", "remove") == {"-h", "--help", "--url", "--token-file"} | {
        "--batch-pages",
        "--quiet",  # accepted unlisted, so older scripts keep working
    }
    removal = run_cli("pools", "remove", "--help").stdout
    assert "--compressor" not in removal and "--quiet" not in removal
    assert "--batch-pages" not in run_cli("stats", "--help").stdout
    assert "--batch-pages" in run_cli("push", "--help").stdout
    assert "--recompress-algo" not in _options("pools", "set")
    assert {"--size", "--compressor", "--backing-file"} <= _options("devices", "create")
    # Every --pool says what it is for.
    for path in [("push",), ("fetch",), ("free",), ("stats",), ("compact",), ("writeback",)]:
        (pool,) = [a for a in _subparser(*path)._actions if "--pool" in a.option_strings]
        assert pool.help and pool.help.startswith("pool to act on"), (path, pool.help)
    # A usage error is one line, said by the subcommand, before any request.
    refused = run_cli("pools", "remove", "p", "--compressor", "lz4")
    one_line_failure(refused, 2, "zswapd pools remove:", "--compressor", "--help")


def test_compressor_choices_are_what_is_installed() -> None:
    installed = compressors.available()
    for path, flag in [
        (("serve",), "--recompress-algo"),
        (("pools", "create"), "--recompress-algo"),
        (("recompress",), "--algo"),
    ]:
        (action,) = [a for a in _subparser(*path)._actions if flag in a.option_strings]
        assert list(action.choices or ()) == installed, (path, flag)
    # --compressor takes NAME[:LEVEL], as estimate names them: NAME among the installed.
    for path in [("serve",), ("pools", "create"), ("devices", "create")]:
        (action,) = [a for a in _subparser(*path)._actions if "--compressor" in a.option_strings]
        assert action.type is not None and callable(action.type)
        for name in installed:
            assert action.type(name) == (name, None)
        with pytest.raises(argparse.ArgumentTypeError, match=", ".join(installed)):
            action.type("nosuch:3")


def test_compressor_takes_a_level_as_estimate_recommends_it(served: tuple[Daemon, Path]) -> None:
    d, _ = served
    made = _ok("pools", "create", "z9", "--compressor", "zstd:9", url=d.url)
    assert made == "created pool z9: zstd:9, zsmalloc, limit none\n"  # one line, as devices'
    assert _stats(d, "z9")["config"]["level"] == 9  # type: ignore[index]
    # --level still works, and agreeing with NAME:LEVEL is no conflict.
    same = _ok("pools", "create", "z9b", "--compressor", "zstd:9", "--level", "9", url=d.url)
    assert same.startswith("created pool z9b: zstd:9,")
    negative = _ok("pools", "create", "zm1", "--compressor", "zstd:-1", url=d.url)
    assert negative.startswith("created pool zm1: zstd:-1,")
    device = _ok("devices", "create", "zram7", "--size", "4M", "--compressor", "lz4hc:4", url=d.url)
    assert device.startswith("created device zram7: 4M, lz4hc:4, zsmalloc,")
    assert _ok("devices", "remove", "zram7", url=d.url)
    # Refused in one line, before any request: two levels, a level not a number,
    # a name not installed (the line lists what is).
    before = set(json.loads(_ok("pools", "list", "--json", url=d.url)))
    conflict = run_cli(
        "pools", "create", "zx", "--compressor", "zstd:3", "--level", "9", "--url", d.url
    )
    one_line_failure(conflict, 1, "zswapd pools create:", "zstd:3", "--level 9")
    one_line_failure(
        run_cli("pools", "create", "zx", "--compressor", "zstd:high", "--url", d.url),
        2,
        "whole number",
    )
    one_line_failure(
        run_cli(
            "devices", "create", "zx", "--size", "4M", "--compressor", "zstdd:3", "--url", d.url
        ),
        2,
        "zswapd devices create:",
        ", ".join(compressors.available()),
    )
    assert set(json.loads(_ok("pools", "list", "--json", url=d.url))) == before
    for name in ("z9", "z9b", "zm1"):
        assert _ok("pools", "remove", name, url=d.url)


def test_pools_create_and_set_say_one_line_and_json_on_request(
    served: tuple[Daemon, Path],
) -> None:
    d, _ = served
    said = _ok("pools", "create", "said", "--compressor", "lz4", "--pool-limit", "16M", url=d.url)
    assert said == "created pool said: lz4, zsmalloc, limit 16M\n"
    changed = _ok("pools", "set", "said", "--pool-limit", "8M", url=d.url)
    assert changed == "changed pool said: lz4, zsmalloc, limit 8M, huge store\n"
    as_json = json.loads(
        _ok("pools", "set", "said", "--huge-policy", "reject", "--json", url=d.url)
    )
    assert as_json["pool"] == "said" and as_json["config"]["huge_policy"] == "reject"
    made = json.loads(_ok("pools", "create", "said2", "--json", url=d.url))
    assert made["config"]["compressor"] == "zstd"
    for name in ("said", "said2"):
        assert _ok("pools", "remove", name, url=d.url)


# -- a server that is not what it says ---------------------------------------------------

ESC = "\x1b"
HOSTILE = f"ok{ESC}[2J{ESC}]0;owned{chr(7)}"


class _FakeZswapd(http.server.BaseHTTPRequestHandler):
    """Answers as zswapd's API is shaped, with escape sequences in every string."""

    def do_GET(self) -> None:
        path = self.path
        config = {
            "compressor": f"lz4{ESC}[31m",
            "level": None,
            "allocator": f"zs{ESC}[5m",
            "chain_size": 8,
            "limit_bytes": 0,
            "huge_policy": f"store{ESC}[8m",
            "writeback": "manual",
            "backing_file": None,
        }
        mm = dict.fromkeys(
            [
                "orig_data_size", "compr_data_size", "mem_used_total", "mem_limit",
                "mem_used_max", "same_pages", "pages_compacted", "huge_pages", "huge_pages_since",
            ],
            0,
        )  # fmt: skip
        stats = {
            "pool": HOSTILE,
            "config": config,
            "huge_class_size": 3625,
            "mm_stat": {**mm, f"evil{ESC}[1m": f"v{ESC}[1m"},
            "zswap": {"stored_pages": f"0{ESC}[31m"},
            "classes": [],
            "size": 4096,
            "io_stat": {"failed_reads": 0},
        }
        if path == "/v1/pools":
            body: object = {"pools": [HOSTILE, f"x{ESC}[31m"]}
        elif path == "/v1/devices":
            body = {"devices": [f"d{ESC}[2J"]}
        elif path.endswith("/broken/stats"):  # JSON, not shaped as zswapd's
            body = {**stats, "mm_stat": dict.fromkeys(mm, f"x{ESC}[2J")}
        elif path.endswith("/stats"):
            body = stats
        elif path == "/healthz":
            body = {"status": "ok"}
        else:
            self._answer(404, {"error": "unknown_pool", "detail": f"no{ESC}[2J pool"})
            return
        self._answer(200, body)

    def do_POST(self) -> None:
        if self.path.endswith("/writeback"):
            stop = {"stopped": f"io{ESC}[31m", "error": f"e{ESC}]0;t{chr(7)}"}
            body = {"written_back": f"1{ESC}[2J", "candidates": 1, "writeback_limit": None}
            self._answer(200, {**body, **stop})
        elif self.path.endswith("/recompress"):
            figures = ["recompressed", "candidates", "bytes_saved", "not_smaller", "alloc_failed"]
            self._answer(200, dict.fromkeys(figures, f"9{ESC}[2J"))
        else:
            detail = f"no pool {ESC}]0;pwned{chr(7)}" + "!" * 100_000
            self._answer(404, {"error": "unknown_pool", "detail": detail})

    def do_DELETE(self) -> None:
        self.do_POST()

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_stats_pool_says_which_kernel_its_figures_are_exact_for(
    served: tuple[Daemon, Path],
) -> None:
    d, _ = served
    text = _ok("stats", "--pool", "default", url=d.url)
    assert "compressor zstd: libzstd 1.5.6 (python-zstandard 0.23" in text
    assert "; exact for Linux 6.12" in text
    as_json = json.loads(_ok("stats", "--pool", "default", "--json", url=d.url))
    assert as_json["compressor"]["kernel_exact"] is True
    assert _ok("pools", "create", "libz", "--compressor", "lz4-lib", url=d.url)
    text = _ok("stats", "--pool", "libz", url=d.url)
    assert "compressor lz4-lib: liblz4 1.9" in text and "; not kernel-exact: liblz4" in text
    # Every pool and device: the table, then which of them are exact.
    lines = _ok("stats", url=d.url).splitlines()
    assert any(
        line.endswith(": exact for Linux 6.12") and "default" in line and "zram0" in line
        for line in lines
    ), lines
    assert any(line.startswith("libz: not kernel-exact: liblz4") for line in lines), lines
    assert _ok("pools", "remove", "libz", url=d.url)
    device = json.loads(_ok("devices", "stats", "zram0", "--json", url=d.url))
    assert device["compressor"]["fidelity"] == "exact for Linux 6.12"  # the kernel's lz4


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeZswapd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "argv",
    [
        ["stats"],
        ["stats", "--pool", HOSTILE],
        ["pools", "list"],
        ["devices", "list"],
        ["devices", "stats", f"d{ESC}[2J"],
        ["compact", "--pool", HOSTILE],
        ["pools", "remove", HOSTILE],
        ["stats", "--pool", "broken"],
        ["writeback", "--pool", "p", "--type", "huge"],
        ["recompress", "--pool", "p", "--type", "huge"],
    ],
    ids=lambda a: "-".join(x for x in a if ESC not in x),
)
def test_a_hostile_server_cannot_drive_the_terminal(fake_server: str, argv: list[str]) -> None:
    """Whatever a server sends comes out escaped, and never as a traceback."""
    result = run_cli(*argv, "--url", fake_server)
    assert ESC not in result.stdout and ESC not in result.stderr and chr(7) not in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr) < 1200  # a 100 KB error detail is cut
    if result.returncode != 0 and argv[0] != "writeback":  # a stopped writeback: exit 1
        assert result.stderr.count("\n") == 1, result.stderr
    if "broken" in argv:
        assert result.returncode == 1 and "did not answer as zswapd's" in result.stderr
    elif argv[0] in ("stats", "writeback", "recompress") or argv[:2] == ["pools", "list"]:
        assert result.returncode == (argv[0] == "writeback"), result  # it stopped early
        assert "\\x1b" in result.stdout, result  # said, escaped


def test_a_url_httpx_refuses_is_one_line() -> None:
    for url in (f"http://127.0.0.1:1/{ESC}[31m", f"http://exa{ESC}mple:1"):
        result = run_cli("stats", "--url", url)
        one_line_failure(result, 1, "invalid URL")
        assert ESC not in result.stderr


# -- devices, compact ---------------------------------------------------------------------


def test_devices_create_list_stats_remove(served: tuple[Daemon, Path]) -> None:
    d, where = served
    created = _ok("devices", "create", "zram9", "--size", "8M", "--compressor", "zstd", url=d.url)
    said = "created device zram9: 8M, zstd:3, zsmalloc, limit none (NBD export 'zram9')\n"
    assert created == said
    with open_device(str(where / "nbd.sock"), "zram9") as s:
        for i in range(5):
            request(s, Cmd.WRITE, i * PAGE, PAGE, text_page(300 + i))
    row = _rows(_ok("devices", "list", url=d.url))["zram9"]
    assert (row["DISKSIZE"], row["ALGORITHM"], row["DATA"]) == ("8M", "zstd:3", "20K")
    one = _ok("devices", "stats", "zram9", url=d.url)
    assert _rows(one)["zram9"]["DATA"] == "20K"
    assert "io_stat: failed_reads=0" in one and f"orig_data_size={5 * PAGE}" in one
    as_json = json.loads(_ok("devices", "stats", "zram9", "--json", url=d.url))
    assert as_json["size"] == 8 << 20 and as_json["mm_stat"]["orig_data_size"] == 5 * PAGE
    assert "obj_allocated" in _ok("devices", "stats", "zram9", "--classes", url=d.url)
    # Bad input changes nothing: a size that is not whole slots, a name taken.
    one_line_failure(
        run_cli("devices", "create", "zram8", "--size", "5000", "--url", d.url), 1, "4096"
    )
    one_line_failure(
        run_cli("devices", "create", "zram9", "--size", "8M", "--url", d.url), 1, "exists"
    )
    assert _ok("devices", "remove", "zram9", url=d.url) == "removed device 'zram9'\n"
    assert set(_rows(_ok("devices", "list", url=d.url))) == {"zram0"}
    one_line_failure(run_cli("devices", "stats", "zram9", "--url", d.url), 1, "zram9")


def test_compact_prints_the_pages_it_released(served: tuple[Daemon, Path]) -> None:
    d, _ = served
    assert _ok("pools", "create", "frag", "--compressor", "lz4", url=d.url)
    handles = _store(d, "frag", [text_page(400 + i) for i in range(400)])
    with Client(d.url) as c:
        c.free(handles[::3] + handles[1::3], pool="frag")  # two thirds: sparse zspages
        before = c.stats("frag")["mm_stat"]["pages_compacted"]
    out = _ok("compact", "--pool", "frag", url=d.url)
    released = _stats(d, "frag")["mm_stat"]["pages_compacted"] - before  # type: ignore[index]
    assert released > 0
    assert out == f"pool frag: {released} pages released ({human(released * PAGE)})\n"
    assert _ok("compact", "--pool", "frag", url=d.url) == "pool frag: 0 pages released (0B)\n"


# -- URLs -------------------------------------------------------------------------------


def test_unix_path_urls_are_accepted_as_serve_takes_them(tmp_path: Path) -> None:
    d = start_daemon("--http", "unix:http.sock", "--unix-socket", "wire.sock", cwd=tmp_path)
    try:
        # The banner gives the absolute HTTP socket.
        assert d.url == f"http+unix://{tmp_path / 'http.sock'}"
        for url in ("unix:wire.sock", f"unix:{tmp_path}/wire.sock", f"unix://{tmp_path}/wire.sock"):
            # The wire shows the default pool, and says so on stderr.
            shown = run_cli("stats", "--url", url, cwd=tmp_path)
            assert shown.returncode == 0 and list(_rows(shown.stdout)) == ["default"], url
            assert shown.stderr == (
                "note: wire protocol: the default pool only; use the HTTP API for every "
                "pool and device\n"
            )
            assert not shown.stdout.endswith("\n\n")  # no stray blank line
        with Client(f"unix:{tmp_path}/wire.sock") as c:
            assert c.stats()["pool"] == "default"
        for url in ("http+unix:http.sock", f"http+unix://{tmp_path}/http.sock"):
            assert "default" in _rows(_ok("pools", "list", url=url, cwd=tmp_path)), url
        # serve's --http unix:PATH speaks HTTP: unix:PATH there says what to use instead.
        wrong = run_cli("stats", "--url", "unix:http.sock", cwd=tmp_path)
        one_line_failure(wrong, 1, "wire protocol", "http+unix:PATH")
        # What the wire protocol cannot do says so, in one line.
        for argv in (("pools", "list"), ("devices", "list")):
            result = run_cli(*argv, "--url", "unix:wire.sock", cwd=tmp_path)
            one_line_failure(result, 1, f"zswapd {' '.join(argv)}:", "needs the HTTP API")
        with pytest.raises(ValueError, match="names no socket path"):
            Client("unix:")
    finally:
        assert d.stop() == 0


# -- serve's banner -----------------------------------------------------------------------


def test_serve_prints_its_pools_devices_and_real_addresses(served: tuple[Daemon, Path]) -> None:
    d, where = served
    said = [line.removeprefix("zswapd: ") for line in d.log]
    assert "pool default: zstd:3, zsmalloc, limit none" in said
    # The server-wide bound every client meets, and whether it asks for a token.
    (limits,) = [x for x in said if x.startswith("memory limit ")]
    assert "(20% of RAM) for all pools and devices together" in limits
    assert limits.endswith("; no token required (none set)")
    assert "device zram0: 64M, lz4, limit none" in said
    assert f"serving the wire protocol on unix://{where / 'wire.sock'}" in said
    # HTTP last: a parent waiting for it knows every other frontend is up.
    assert said[-1] == f"serving HTTP on {d.url}" and not d.url.endswith(":0")
    metrics = next(x for x in said if x.startswith("serving metrics on "))
    url = metrics.removeprefix("serving metrics on ")
    assert not url.endswith(":0/metrics")  # the port bound, not the 0 asked for
    assert httpx.get(url).status_code == 200
    (nbd,) = [x.removeprefix("serving NBD on ") for x in said if x.startswith("serving NBD on")]
    uri = urlparse(nbd)
    assert (uri.scheme, uri.path) == ("nbd+unix", "/zram0")
    (socket_path,) = parse_qs(uri.query)["socket"]
    assert socket_path == str(where / "nbd.sock")
    # The URI is usable: the export it names answers, and holds what is written.
    with open_device(socket_path, uri.path.lstrip("/")) as s:
        request(s, Cmd.WRITE, 0, PAGE, text_page(500))
        assert request(s, Cmd.READ, 0, PAGE) == text_page(500)
    if shutil.which("nbdinfo"):
        info = subprocess.run(["nbdinfo", "--size", nbd], capture_output=True, text=True)
        assert info.returncode == 0 and info.stdout.strip() == str(64 << 20), info


def test_serve_says_its_memory_limit_and_token_and_counts_in_words(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    state = tmp_path / "state"
    d = start_daemon(
        *("--memory-limit", "64M", "--auth-token-file", str(token), "--state-dir", str(state)),
        *("--compressor", "zstd:1"),  # NAME:LEVEL, as pools create takes it
    )
    try:
        said = [line.removeprefix("zswapd: ") for line in d.log]
        assert "pool default: zstd:1, zsmalloc, limit none" in said
        assert (
            "memory limit 64M for all pools and devices together, max pools and devices 64; "
            "a token is required"
        ) in said
    finally:
        assert d.stop() == 0
    said = [line.removeprefix("zswapd: ") for line in d.log]
    assert f"saved 1 pool to {state}" in said, said  # not "1 pools"


def test_serve_on_nbd_port_0_prints_the_port_it_bound() -> None:
    d = start_daemon("--nbd", "127.0.0.1:0", "--device", "zram0=4M", "--device", "zram1=8M")
    try:
        said = [line.removeprefix("zswapd: ") for line in d.log]
        uris = [urlparse(x.removeprefix("serving NBD on ")) for x in said if "NBD on" in x]
        assert [u.path for u in uris] == ["/zram0", "/zram1"]
        assert {u.scheme for u in uris} == {"nbd"} and uris[0].port not in (None, 0)
        assert uris[0].netloc == uris[1].netloc
        assert uris[0].hostname is not None and uris[0].port is not None
        with open_device((uris[0].hostname, uris[0].port), "zram1") as s:
            assert request(s, Cmd.READ, 0, PAGE) == bytes(PAGE)  # an empty slot reads as zeros
        if shutil.which("nbdinfo"):
            uri = uris[1].geturl()
            info = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True)
            assert info.returncode == 0 and info.stdout.strip() == str(8 << 20), info
    finally:
        assert d.stop() == 0
