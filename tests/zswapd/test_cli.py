"""The command line as a user meets it: the real ``zswapd`` in a subprocess.

Two promises.  ``push`` never loses handles: its handles file appears, whole,
only after the daemon acknowledged every store; an existing one is kept unless
``--force``; a push that fails leaves neither a file nor stored pages.  And every
failure is one line on stderr with a non-zero exit, never a traceback, while a
reader of stdout that goes away (``| head``) ends the command silently.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.zswapd.daemon import (
    CHECKOUT,
    Daemon,
    one_line_failure,
    run_cli,
    run_cli_bytes,
    start_daemon,
)
from zswapd.client import Client


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = start_daemon()
    yield d
    assert d.stop() == 0


def _orig(d: Daemon, pool: str) -> int:
    with Client(d.url) as c:
        return int(c.stats(pool)["mm_stat"]["orig_data_size"])


# -- push never loses handles ---------------------------------------------------------


def test_push_refuses_to_overwrite_handles_without_force(daemon: Daemon, tmp_path: Path) -> None:
    url = ["--url", daemon.url, "--quiet", "--pool", "keep"]
    assert run_cli("pools", "create", "keep", "--url", daemon.url).returncode == 0
    src = tmp_path / "a.pages"
    src.write_bytes(b"".join(bytes([i + 1]) * 4096 for i in range(5)))
    handles = tmp_path / "h"
    assert run_cli("push", str(src), "-o", str(handles), *url).returncode == 0
    first = handles.read_text()
    again = run_cli("push", str(src), "-o", str(handles), *url)
    one_line_failure(again, None, str(handles), "--force")
    assert handles.read_text() == first  # the first push's handles are still there
    assert _orig(daemon, "keep") == 5 * 4096  # and the second stored nothing
    forced = run_cli("push", str(src), "-o", str(handles), "--force", *url)
    assert forced.returncode == 0, forced.stderr
    assert handles.read_text() != first and len(handles.read_text().splitlines()) == 6
    assert sorted(os.listdir(tmp_path)) == ["a.pages", "h"]  # no temporary left


def test_push_rejected_file_leaves_no_file_and_stores_nothing(
    daemon: Daemon, tmp_path: Path
) -> None:
    good = tmp_path / "good.pages"
    good.write_bytes(b"\x07" * 4096 * 3)
    bad = tmp_path / "bad.pages"
    bad.write_bytes(b"x" * 5000)
    before = _orig(daemon, "default")
    # The default handles file goes to the cwd: a directory of the test's own.
    refused = run_cli("push", str(good), str(bad), "--url", daemon.url, cwd=tmp_path)
    one_line_failure(refused, None, "whole number")
    assert sorted(os.listdir(tmp_path)) == ["bad.pages", "good.pages"]
    assert _orig(daemon, "default") == before


def test_push_bad_pid_leaves_no_file_and_stores_nothing(daemon: Daemon, tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that was a process and is none now
    before = _orig(daemon, "default")
    result = run_cli("push", "--pid", str(gone.pid), "--url", daemon.url, cwd=tmp_path)
    one_line_failure(result, None, str(gone.pid), "no such process")
    assert os.listdir(tmp_path) == []
    assert _orig(daemon, "default") == before


def test_push_kernel_thread_is_one_line_as_estimate_says_it(daemon: Daemon, tmp_path: Path) -> None:
    comm = Path("/proc/2/comm")
    if not comm.exists() or comm.read_text().strip() != "kthreadd":
        pytest.skip("pid 2 is not kthreadd here (a pid namespace)")
    before = _orig(daemon, "default")
    result = run_cli("push", "--pid", "2", "--url", daemon.url, cwd=tmp_path)
    one_line_failure(result, None, "--pid 2", "no user memory")
    assert os.listdir(tmp_path) == []
    assert _orig(daemon, "default") == before


def test_push_of_no_pages_is_refused_and_writes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pages"
    empty.write_bytes(b"")
    before = _orig(daemon, "default")
    work = tmp_path / "work"
    work.mkdir()
    one_line_failure(
        run_cli("push", str(empty), "--url", daemon.url, cwd=work), None, "empty.pages", "no pages"
    )
    # A /proc file says 0 bytes whatever it holds: no pages, and it is named.
    one_line_failure(
        run_cli("push", "/proc/self/status", "--url", daemon.url, cwd=work),
        None,
        "/proc/self/status",
    )
    assert os.listdir(work) == []
    assert _orig(daemon, "default") == before


def test_push_reads_no_link_fifo_or_device(daemon: Daemon, tmp_path: Path) -> None:
    real = tmp_path / "real.pages"
    real.write_bytes(b"\1" * 4096)
    (tmp_path / "link.pages").symlink_to(real)
    os.mkfifo(tmp_path / "fifo.pages")
    work = tmp_path / "work"
    work.mkdir()
    before = _orig(daemon, "default")
    # A FIFO with no writer would block the push forever: the timeout only
    # keeps a regression from hanging the suite.
    for name, why in (
        ("link.pages", "symbolic link"),
        ("fifo.pages", "not a regular file"),
        ("/dev/zero", "not a regular file"),
    ):
        result = run_cli("push", str(tmp_path / name), "--url", daemon.url, cwd=work, timeout=60)
        one_line_failure(result, None, name, why)
    assert os.listdir(work) == []
    assert _orig(daemon, "default") == before


def test_page_commands_take_q(daemon: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "a.pages"
    src.write_bytes(b"".join(bytes([i + 1]) * 4096 for i in range(3)))
    url = ["--url", daemon.url, "-q"]
    for argv in (
        ["push", str(src), "-o", "h"],
        ["fetch", "h", "-o", "back.pages"],
        ["free", "h"],
    ):
        result = run_cli(*argv, *url, cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == "", (argv, result.stderr)
    assert (tmp_path / "back.pages").read_bytes() == src.read_bytes()


def test_push_refused_midway_frees_what_it_stored(daemon: Daemon, tmp_path: Path) -> None:
    with Client(daemon.url) as c:
        c.create_pool("small", limit_bytes=2 << 20)
    src = tmp_path / "random.pages"
    src.write_bytes(os.urandom(4096 * 1000))  # 4 MiB of huge pages into a 2 MiB pool
    handles = tmp_path / "h"
    result = run_cli(
        "push", str(src), "-o", str(handles), "--pool", "small", "--url", daemon.url, "--quiet"
    )
    one_line_failure(result, None, "limit")
    assert sorted(os.listdir(tmp_path)) == ["random.pages"]  # no handles, no temporary
    assert _orig(daemon, "small") == 0  # the 256-page chunks stored before it are freed


# -- every failure one line -----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLIENT_ARGVS = [
    ["push", "pages"],
    ["fetch", "h", "-o", "out"],
    ["free", "h"],
    ["stats"],
    ["pools", "list"],
    ["pools", "create", "p"],
    ["pools", "set", "p", "--pool-limit", "1M"],
    ["pools", "remove", "p"],
    ["devices", "list"],
    ["devices", "create", "d", "--size", "1M"],
    ["devices", "stats", "d"],
    ["compact"],
    ["writeback", "--type", "huge"],
    ["recompress", "--type", "huge"],
]


@pytest.mark.parametrize("scheme", ["http", "http+unix", "unix"])
@pytest.mark.parametrize("argv", CLIENT_ARGVS, ids=lambda a: "-".join(a[:2]))
def test_client_command_without_daemon_is_one_line(
    argv: list[str], scheme: str, tmp_path: Path
) -> None:
    (tmp_path / "pages").write_bytes(b"\1" * 4096)
    (tmp_path / "h").write_text("# zswapd handles v1 pool=default\n1\tpages\t0\n")
    url = {
        "http": f"http://127.0.0.1:{_closed_port()}",
        "http+unix": f"http+unix://{tmp_path}/none.sock",
        "unix": f"unix://{tmp_path}/none.sock",
    }[scheme]
    result = run_cli(*argv, "--url", url, cwd=tmp_path, timeout=30)
    # The line names the command, and the action of those that have one.
    command = " ".join(argv[:2] if argv[0] in ("pools", "devices") else argv[:1])
    one_line_failure(result, None, f"zswapd {command}:", "cannot connect")
    assert sorted(os.listdir(tmp_path)) == ["h", "pages"]  # push left no handles file


def test_a_url_that_is_not_zswapds_api_is_one_line() -> None:
    d = start_daemon("--metrics", "127.0.0.1:0")
    try:
        line = next(line for line in d.log if "serving metrics on" in line)
        metrics = line.rsplit(" ", 1)[1].removesuffix("/metrics")
        for argv in (["stats"], ["pools", "list"], ["devices", "list"]):
            one_line_failure(run_cli(*argv, "--url", metrics), None, "not JSON", "--metrics")
    finally:
        d.stop()


def test_serve_on_busy_ports_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        metrics = run_cli("serve", "--http", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}")
        one_line_failure(metrics, None, "--metrics", str(port), "in use")
        http = run_cli("serve", "--http", f"127.0.0.1:{port}")
        one_line_failure(http, None, str(port), "in use")


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``zswapd ARGS`` with stdout a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return run_cli_bytes(*args, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "argv",
    [
        ["stats", "--all"],
        ["stats", "--json"],
        ["stats"],
        ["pools", "list"],
        ["devices", "list"],
        ["--help"],
    ],
    ids=lambda a: "-".join(a),
)
def test_output_into_closed_pipe_is_silent(daemon: Daemon, argv: list[str]) -> None:
    url = [] if argv == ["--help"] else ["--url", daemon.url]
    result = _into_closed_pipe(*argv, *url)
    assert result.stderr == b""
    # 128 + SIGPIPE, as a shell reports grep | head (argparse's help swallows the error: 0)
    assert result.returncode == (0 if argv == ["--help"] else 141)


def test_stats_piped_into_head_is_silent(daemon: Daemon) -> None:
    shell = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m zswapd.cli stats --all --url {daemon.url} | head -1'],
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        timeout=60,
    )
    assert shell.returncode == 0 and shell.stderr == ""
    assert shell.stdout.startswith("NAME ")  # the zramctl-like header


def test_python_m_zswapd_is_the_zswapd_command() -> None:
    """Where the script is not on PATH (a venv not activated), ``python -m zswapd``."""
    result = subprocess.run(
        [sys.executable, "-m", "zswapd", "--version"],
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("zswapd ")


# -- URLs and the default daemon ------------------------------------------------------


@pytest.mark.parametrize("url", ["unix://host/x.sock", "http+unix://host/x.sock"])
def test_unix_urls_with_a_host_are_refused(url: str, tmp_path: Path) -> None:
    # Read as a path, host/x.sock would be relative: a socket other than the one meant.
    result = run_cli("stats", "--url", url, cwd=tmp_path)
    one_line_failure(result, None, "unix URLs take a path", "///ABS/PATH")
    with pytest.raises(ValueError, match="unix URLs take a path"):
        Client(url)


def test_without_url_the_systemd_socket_is_used_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the TCP port, which any local user may bind and be sent the token."""
    import zswapd.client
    from zswapd.cli import main

    monkeypatch.delenv("ZSWAPD_URL", raising=False)
    sock = tmp_path / "http.sock"
    monkeypatch.setattr(zswapd.client, "DEFAULT_SOCKET", str(sock))
    assert zswapd.client.default_url() == "http://127.0.0.1:7415"  # no socket: serve's default
    d = start_daemon("--http", f"unix:{sock}")
    try:
        assert zswapd.client.default_url() == f"http+unix://{sock}"
        assert main(["pools", "create", "viasock"]) == 0
        assert "created pool viasock" in capsys.readouterr().out
        with Client() as c:  # the library takes the same default
            assert "viasock" in c.pools()
        monkeypatch.setenv("ZSWAPD_URL", d.url)
        assert zswapd.client.default_url() == d.url  # $ZSWAPD_URL first
    finally:
        assert d.stop() == 0
    helped = run_cli("stats", "--help").stdout
    assert "http+unix:///run/zswapd/http.sock" in " ".join(helped.split())


# -- handles files: fetch, free -------------------------------------------------------


def test_a_page_file_given_as_handles_is_one_short_line(daemon: Daemon, tmp_path: Path) -> None:
    pages = tmp_path / "text.pages"
    pages.write_bytes(os.urandom(4096 * 4))
    url = ["--url", daemon.url, "--quiet"]
    for argv in (["fetch", str(pages), "-o", str(tmp_path / "x")], ["free", str(pages)]):
        result = run_cli(*argv, *url)
        one_line_failure(result, None, f"{pages}: not a zswapd handles file")
    assert sorted(os.listdir(tmp_path)) == ["text.pages"]
    # Text that is not handles: the message quotes a little of it, not all 430 KB.
    text = b"zswapd " * 61440
    free = run_cli_bytes("free", "-", *url, input=text, capture_output=True, cwd=tmp_path)
    assert free.returncode == 1 and free.stderr.count(b"\n") == 1
    assert len(free.stderr) < 200 and b"not a handle" in free.stderr, free.stderr


def test_free_removes_its_handles_file_and_a_second_free_says_why(
    daemon: Daemon, tmp_path: Path
) -> None:
    url = ["--url", daemon.url, "--quiet"]
    src = tmp_path / "a.pages"
    src.write_bytes(b"".join(bytes([i + 1]) * 4096 for i in range(3)) + os.urandom(4096))
    handles = tmp_path / "h"
    before = _orig(daemon, "default")
    assert run_cli("push", str(src), "-o", str(handles), *url).returncode == 0
    freed = run_cli("free", str(handles), *url)
    assert freed.returncode == 0, freed.stderr
    assert freed.stdout == f"freed 4 pages in pool 'default'; removed {handles}\n"
    assert not handles.exists() and _orig(daemon, "default") == before
    # The name is free again: the next push to it goes ahead, no --force.
    assert run_cli("push", str(src), "-o", str(handles), *url).returncode == 0
    kept = run_cli("free", str(handles), "--keep", *url)
    assert kept.returncode == 0 and kept.stdout == "freed 4 pages in pool 'default'\n"
    assert handles.exists()
    for argv in (["free", str(handles)], ["fetch", str(handles), "-o", str(tmp_path / "o")]):
        again = run_cli(*argv, *url)
        one_line_failure(again, None, "404", "freed already, or stored in another daemon/pool?")
    assert handles.exists() and not (tmp_path / "o").exists()  # a failed free keeps it
    # Handles from stdin: nothing to remove.
    assert run_cli("push", str(src), "-o", str(tmp_path / "h2"), *url).returncode == 0
    with open(tmp_path / "h2", "rb") as f:
        piped = run_cli_bytes("free", "-", *url, stdin=f, capture_output=True)
    assert piped.returncode == 0 and piped.stdout == b"freed 4 pages in pool 'default'\n"
    assert (tmp_path / "h2").exists() and _orig(daemon, "default") == before


def test_fetch_to_dash_writes_the_pages_to_stdout(daemon: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "a.pages"
    src.write_bytes(os.urandom(4096) + bytes(4096) + b"page" * 1024)
    url = ["--url", daemon.url, "--quiet"]
    assert run_cli("push", str(src), "-o", str(tmp_path / "h"), *url).returncode == 0
    fetched = run_cli_bytes(
        "fetch", str(tmp_path / "h"), "-o", "-", *url, capture_output=True, cwd=tmp_path
    )
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == src.read_bytes()  # the pages alone: the summary goes to stderr
    assert fetched.stderr == b"fetched 3 pages from pool 'default'\n"
    assert sorted(os.listdir(tmp_path)) == ["a.pages", "h"]  # no file named '-'
    assert run_cli("free", str(tmp_path / "h"), *url).returncode == 0


def test_ctrl_c_during_push_frees_what_it_stored_and_says_so(
    daemon: Daemon, tmp_path: Path
) -> None:
    with Client(daemon.url) as c:
        c.create_pool("intr")
    big = tmp_path / "big.pages"
    with open(big, "wb") as f:  # 2 GiB of zero pages, sparse: seconds to push
        f.truncate(2 << 30)
    argv = ["push", str(big), "--pool", "intr", "-o", str(tmp_path / "h")]
    push = subprocess.Popen(
        [sys.executable, "-m", "zswapd.cli", *argv, "--url", daemon.url, "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
    )
    try:
        # Interrupted once some pages are acknowledged, long before the last.
        deadline = time.monotonic() + 60
        while not _orig(daemon, "intr"):
            assert push.poll() is None and time.monotonic() < deadline, "push stuck or done"
            time.sleep(0.01)
        push.send_signal(signal.SIGINT)
        assert push.wait(60) == 130
    finally:
        push.kill()
    assert push.stderr is not None
    said = push.stderr.read()
    assert re.fullmatch(
        r"zswapd push: interrupted: freed \d+ pages?, no handles file written\n", said
    ), said
    assert _orig(daemon, "intr") == 0
    assert os.listdir(tmp_path) == ["big.pages"]  # no handles, no temporary
