"""The README's examples, run as a reader would run them, so that they cannot rot.

Every fenced ```sh, ```python and ```toml block of README.md is one test case,
its id naming the section heading and the line of its opening fence
(``Using-it-L61-python``), run against a real daemon:

- each block gets a fresh, empty temporary working directory and a daemon of its
  own (a real ``zswapd serve`` subprocess on a free loopback port), so that what
  one example makes (pools, files) cannot make another pass or fail;
- in the block's text ``127.0.0.1:7415``, the default address the README shows,
  is replaced by the daemon's real address, and ``$ZSWAPD_URL`` (the CLI's
  default ``--url``) is set to the daemon's URL;
- ``sh`` blocks run with ``bash -euo pipefail``, ``python`` blocks with
  ``python3`` (asserts on): a non-zero exit, a failed assert or 120 s without
  finishing fails the case; whatever a block leaves running is ended after it;
- ``toml`` blocks are daemon configuration files: ``zswapd serve --config`` must
  start with the block and list every ``[pools.NAME]`` (with the compressor,
  level, allocator, ... it gives) and every ``[devices.NAME]``;
- ``zswapd`` and ``python3`` in a block are this checkout's (``zswapd`` runs
  ``python -m zswapd.cli`` with the checkout on PYTHONPATH), so that a checkout
  tests its own README against its own code, installed or not;
- an sh block that calls a tool the machine lacks (``nbdcopy``, ``qemu-img``,
  ...; see ``TOOLS``) is skipped, naming the Debian package that brings it; one
  that pushes a process (``--pid``) is skipped where Yama lets only root read
  another process's memory and the tests do not run as root.

Markers, each an HTML comment on the line right before a block's fence
(rendered Markdown shows none of them):

``<!-- readme: not run (REASON) -->``
    the block is skipped with REASON: it needs Docker, root or a package
    installed, is a benchmark of minutes, or would run the test suite from
    inside itself.
``<!-- readme: daemon -->``
    the block ends in one ``zswapd serve ...`` command that the README asks the
    reader to leave running, in another terminal, in the same directory; the
    commands before it, if any, prepare what it needs (a token file). It is not
    a case of its own: the test runs those commands, then starts that daemon
    (on a free port), in the next block's directory, as the next block's daemon,
    so that relative paths such as ``unix:nbd.sock`` mean the same to both. A
    runnable block may not start ``zswapd serve`` itself: a reader pasting
    ``zswapd serve &`` races the commands after it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.zswapd.daemon import CHECKOUT, Daemon, start_daemon

README = CHECKOUT / "README.md"
# What the README shows as the daemon's address (its default), replaced by the
# test daemon's real one.
DEFAULT_ADDRESS = "127.0.0.1:7415"
LANGUAGES = ("sh", "python", "toml")
TIMEOUT = 120

# Tools a block may call that are not everywhere, and the Debian package of each
# (CI installs them: .ci/run).
TOOLS = {
    "nbdcopy": "libnbd-bin",
    "nbdinfo": "libnbd-bin",
    "nbdsh": "python3-libnbd",
    "qemu-img": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "nbdkit": "nbdkit",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "memcached": "memcached",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "systemd-analyze": "systemd",
    "curl": "curl",
    "jq": "jq",
}

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!-- readme: (.*) -->$")
_NOT_RUN = re.compile(r"not run \((.+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$")


@dataclass(frozen=True)
class DaemonBlock:
    """A block marked ``daemon``: what prepares the daemon, and its arguments."""

    setup: str  # the commands before ``zswapd serve``, or ""
    args: tuple[str, ...]


@dataclass(frozen=True)
class Block:
    """One fenced block of the README, and how the test runs it."""

    lang: str
    line: int  # of the opening fence, 1-based
    heading: str
    text: str
    not_run: str | None = None  # the reason, when marked not run
    daemon: DaemonBlock | None = None  # the daemon block before it, if any

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.heading).strip("-")
        return f"{slug}-L{self.line}-{self.lang}"


def _commands(text: str) -> list[str]:
    """The block's lines with continuations joined and comments dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        command = re.sub(r"(^|\s)#.*$", "", line).strip()
        if command:
            out.append(command)
    return out


def _daemon_block(text: str) -> DaemonBlock | str:
    """A daemon block's setup and ``zswapd serve`` arguments, or what is wrong with it."""
    commands = _commands(text)
    words = shlex.split(commands[-1]) if commands else []
    if words[:2] != ["zswapd", "serve"] or {"&", "&&", ";", "|"} & set(words):
        return "a daemon block ends in one `zswapd serve ...` command, not put in the background"
    setup = "".join(f"{c}\n" for c in commands[:-1])
    return DaemonBlock(setup, tuple(w.replace(DEFAULT_ADDRESS, "127.0.0.1:0") for w in words[2:]))


def parse_readme(text: str) -> tuple[list[Block], list[str]]:
    """The README's runnable-language blocks, and every misuse of a marker."""
    blocks: list[Block] = []
    problems: list[str] = []
    lines = text.splitlines()
    heading = "top"
    daemon: DaemonBlock | None = None
    daemon_line = 0
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            heading_match = _HEADING.match(lines[i])
            if heading_match:
                heading = heading_match.group(1)
            marker = _MARKER.match(lines[i])
            if marker and (i + 1 >= len(lines) or not _FENCE.match(lines[i + 1])):
                problems.append(f"line {i + 1}: a readme marker not right before a fence")
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            problems.append(f"line {start + 1}: a fence never closed")
            break
        i = end + 1
        lang = fence.group(1)
        body = "\n".join(lines[start + 1 : end]) + "\n"
        marker = _MARKER.match(lines[start - 1]) if start else None
        if lang not in LANGUAGES:
            if marker:
                problems.append(f"line {start}: a marker before a ```{lang} block, never run")
            continue
        not_run = None
        if marker:
            what = marker.group(1)
            reason = _NOT_RUN.fullmatch(what)
            if reason:
                not_run = reason.group(1)
            elif what == "daemon":
                parsed = _daemon_block(body) if lang == "sh" else "a daemon block is ```sh"
                if isinstance(parsed, str):
                    problems.append(f"line {start}: {parsed}")
                elif daemon is not None:
                    problems.append(f"line {start}: two daemon blocks with no block between")
                else:
                    daemon, daemon_line = parsed, start
                continue
            else:
                problems.append(f"line {start}: unknown marker {what!r}")
        if lang == "sh" and not_run is None:
            # (a daemon block's own command is not checked here: it `continue`d above)
            for command in _commands(body):
                if re.search(r"(^|[;&|(]\s*)zswapd serve\b", command):
                    problems.append(
                        f"line {start + 1}: a runnable block starts `zswapd serve`; show it"
                        " in a block marked `<!-- readme: daemon -->` before this one"
                    )
        if daemon is not None and lang == "toml":
            problems.append(f"line {daemon_line}: a daemon block before a toml block")
        blocks.append(Block(lang, start + 1, heading, body, not_run, daemon))
        daemon = None
    if daemon is not None:
        problems.append(f"line {daemon_line}: a daemon block with no block after it")
    return blocks, problems


BLOCKS, PROBLEMS = parse_readme(README.read_text())


# -- running a block ------------------------------------------------------------------


def _missing_tools(block: Block) -> list[str]:
    if block.lang != "sh":
        return []
    text = "\n".join(_commands(block.text))
    if block.daemon is not None:
        text += block.daemon.setup
    return [
        f"{tool} (Debian package {package})"
        for tool, package in TOOLS.items()
        if re.search(rf"(?<![\w./-]){re.escape(tool)}(?![\w.-])", text) and not shutil.which(tool)
    ]


def _pid_unreadable(block: Block) -> str | None:
    """Why ``push --pid`` cannot read the block's processes here, if it cannot.

    Yama's ptrace_scope 1 (Ubuntu's default) lets a process read only its
    descendants, and 2 only with CAP_SYS_PTRACE; ``zswapd push --pid $$`` reads
    its own parent, so these examples run here as root only.
    """
    if block.lang != "sh" or "--pid" not in block.text or os.geteuid() == 0:
        return None
    try:
        scope = int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except (OSError, ValueError):
        return None
    if scope == 0:
        return None
    return f"push --pid needs root here (Yama ptrace_scope is {scope})"


def _shims(directory: Path) -> Path:
    """A bin directory whose ``zswapd`` and ``python3`` are this checkout's."""
    directory.mkdir()
    python = shlex.quote(sys.executable)
    for name, command in (("zswapd", f"{python} -m zswapd.cli"), ("python3", python)):
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    return directory


def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of the daemon and the block: none of the developer's settings."""
    for name in list(os.environ):
        if name.startswith("ZSWAPD_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("PYTHONOPTIMIZE", raising=False)  # asserts must run
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("PATH", f"{_shims(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run(lang: str, text: str, what: str, tmp_path: Path, work: Path) -> str | None:
    """Run ``text`` in ``work``; what went wrong, or None."""
    script = tmp_path / ("block.sh" if lang == "sh" else "block.py")
    script.write_text(text)
    argv = ["bash", "-euo", "pipefail", str(script)]
    if lang == "python":
        argv = [sys.executable, str(script)]
    out, err = tmp_path / f"{script.name}.stdout", tmp_path / f"{script.name}.stderr"
    # Files, not pipes: a background process the block leaves would hold a pipe
    # open; its own session, so that all it started can be ended after it.
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            status: int | str = proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            status = f"still running after {TIMEOUT} s"
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
            proc.wait()
    if status == 0:
        return None
    return (
        f"{what}: exit status {status}\n"
        f"--- block ---\n{text}--- stdout ---\n{_tail(out)}\n--- stderr ---\n{_tail(err)}"
    )


# Pool settings that a config file and a pool's stats spell alike.
_SAME_SETTINGS = ("compressor", "level", "allocator", "chain_size", "huge_policy", "writeback")


def _check_config(text: str, tmp_path: Path, work: Path) -> None:
    """A TOML block is a config file the daemon starts with, serving what it names."""
    config = tmp_path / "zswapd.toml"
    config.write_text(text.replace(DEFAULT_ADDRESS, "127.0.0.1:0"))
    wanted = tomllib.loads(text)
    daemon = start_daemon("--config", str(config), cwd=work)
    try:
        pools = httpx.get(f"{daemon.url}/v1/pools").json()["pools"]
        devices = httpx.get(f"{daemon.url}/v1/devices").json()["devices"]
        assert set(wanted.get("pools", {})) <= set(pools), (pools, daemon.log)
        assert set(wanted.get("devices", {})) <= set(devices), (devices, daemon.log)
        for name, settings in wanted.get("pools", {}).items():
            got = httpx.get(f"{daemon.url}/v1/pools/{name}/stats").json()["config"]
            for key in set(_SAME_SETTINGS) & set(settings):
                assert got[key] == settings[key], (name, key, got)
    finally:
        daemon.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a case starts, stopped however the case ends."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def test_readme_markers_are_well_formed() -> None:
    assert not PROBLEMS, PROBLEMS


def test_the_examples_are_found() -> None:
    # A parser that found nothing would pass every case by having none.
    runnable = [b for b in BLOCKS if b.not_run is None]
    assert {b.lang for b in runnable} == set(LANGUAGES), runnable
    assert any(b.heading == "Using it" and b.lang == "python" for b in runnable)
    assert any(b.daemon for b in runnable)


def test_markers_and_daemon_blocks_are_read_as_documented() -> None:
    text = (
        "## A\n<!-- readme: not run (needs Docker) -->\n```sh\ndocker ps\n```\n"
        "## B\n<!-- readme: daemon -->\n```sh\nzswapd serve --nbd unix:n.sock \\\n"
        "    --http 127.0.0.1:7415   # leave it running\n```\ntext\n```python\nprint(1)\n```\n"
        "```sh\nzswapd stats\n```\n```\n# not a heading\n```\n```sh\nzswapd serve &\n```\n"
        "<!-- readme: daemon -->\n```sh\nzswapd serve & zswapd stats\n```\n"
        "<!-- readme: nonsense -->\n```sh\ntrue\n```\n"
        "<!-- readme: daemon -->\n```sh\necho s3cret > token  # a token\n"
        "zswapd serve --auth-token-file token\n```\n```sh\nzswapd stats --token-file token\n```\n"
    )
    blocks, problems = parse_readme(text)
    nbd = DaemonBlock("", ("--nbd", "unix:n.sock", "--http", "127.0.0.1:0"))
    token = DaemonBlock("echo s3cret > token\n", ("--auth-token-file", "token"))
    assert [(b.heading, b.lang, b.line, b.not_run, b.daemon) for b in blocks] == [
        ("A", "sh", 3, "needs Docker", None),
        # the daemon block is no case: it is the next block's daemon, port freed
        ("B", "python", 13, None, nbd),
        ("B", "sh", 16, None, None),  # the daemon went with the block before
        ("B", "sh", 22, None, None),
        ("B", "sh", 30, None, None),
        ("B", "sh", 38, None, token),
    ]
    assert len(problems) == 3, problems
    assert problems[0].startswith("line 22: a runnable block starts `zswapd serve`")
    assert problems[1].startswith("line 25: a daemon block ends in one `zswapd serve ...`")
    assert problems[2] == "line 29: unknown marker 'nonsense'"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_example(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemons: list[Daemon]
) -> None:
    if block.not_run is not None:
        pytest.skip(block.not_run)
    missing = _missing_tools(block)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    unreadable = _pid_unreadable(block)
    if unreadable:
        pytest.skip(unreadable)
    _environment(tmp_path, monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    if block.lang == "toml":
        _check_config(block.text, tmp_path, work)
        return
    what = f"README line {block.line} ({block.heading})"
    args: tuple[str, ...] = ()
    if block.daemon is not None:
        args = block.daemon.args
        setup = block.daemon.setup
        failure = setup and _run("sh", setup, f"{what}, its daemon's setup", tmp_path, work)
        if failure:
            pytest.fail(failure, pytrace=False)
    daemon = start_daemon(*args, cwd=work)
    daemons.append(daemon)
    monkeypatch.setenv("ZSWAPD_URL", daemon.url)
    text = block.text.replace(DEFAULT_ADDRESS, daemon.url.removeprefix("http://"))
    failure = _run(block.lang, text, what, tmp_path, work)
    if failure:
        daemon.stop()
        pytest.fail(f"{failure}\n--- daemon ---\n" + "\n".join(daemon.log[-20:]), pytrace=False)
