"""The wheel is whole: built, installed into a fresh virtual environment away from
the checkout, every subcommand answers --help (a package missing from the wheel
fails its import there, as ``zswapd bench`` once did in the Docker image).

It carries the compiled allocator when a C compiler is there, and installs all
the same without one (CC=/bin/false: the build warns, the pure-Python allocator runs)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from zswapd.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Every command path of the parser: ("serve",), ("bench", "store"), ..."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


def _install(tmp: Path, build_env: dict[str, str] | None = None) -> tuple[Path, str]:
    """Build the wheel (with ``build_env`` added to the environment) and install it
    into a fresh venv (no system site) with what it depends on; (venv, build log).

    Its own pip installs the dependencies (from PyPI or pip's cache): a venv
    that saw the system's site-packages would have pip uninstall the checkout's
    editable install there.
    """
    # A copy without build/ or built extensions: setuptools would pack whatever
    # an earlier build left there.
    src = tmp / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".*",
            "build",
            "*.egg-info",
            "__pycache__",
            "venv",
            "*.pages",
            "*.handles",
            "*.so",
            "_zsmalloc.c",
            "_batch.c",
        ),
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, **(build_env or {})},
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp.glob("zswapd-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    install = _run(
        env_dir, str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return env_dir, build.stdout + build.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built as usual (with the system's C compiler), installed."""
    env_dir, _ = _install(tmp_path_factory.mktemp("wheel"))
    return env_dir


@pytest.fixture(scope="module")
def installed_without_compiler(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel built where the C compiler fails at once, installed; and its build log."""
    return _install(tmp_path_factory.mktemp("wheel-cc-false"), {"CC": "/bin/false"})


def _run(env_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=env_dir, env=env)


def test_the_wheel_holds_every_package_of_the_checkout(installed: Path) -> None:
    where = _run(
        installed,
        str(installed / "bin" / "python"),
        "-c",
        "import zswapd, zswapd.bench, allocator, compressors; print(zswapd.__file__)",
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed)), where.stdout  # the wheel's, not the checkout's
    packages = {
        ".".join(p.relative_to(REPO).parent.parts)
        for top in ("zswapd", "allocator", "compressors")
        for p in (REPO / top).rglob("__init__.py")
    }
    site = Path(where.stdout.strip()).parent.parent
    missing = [p for p in packages if not (site / p.replace(".", "/") / "__init__.py").is_file()]
    assert not missing, missing


def test_every_subcommand_answers_help_from_the_wheel(installed: Path) -> None:
    script = installed / "bin" / "zswapd"
    failed = []
    for command in _commands(build_parser()):
        out = _run(installed, str(script), *command, "--help")
        if out.returncode != 0 or "usage:" not in out.stdout:
            failed.append((command, out.stderr[-500:]))
    assert not failed, failed


# Run in the installed venv: which allocator runs, and a round trip through it.
_PROBE = """
import allocator
pool = allocator.create("zsmalloc", seed=1)
h = pool.store(bytes(range(256)) * 4)
assert pool.obj_read(h, 1024) == bytes(range(256)) * 4
pool.free(h)
print(allocator.describe())
print(type(pool).__module__)
from zswapd import fastpath
print(fastpath.describe())
"""


def test_the_wheel_carries_the_compiled_allocator(installed: Path) -> None:
    out = _run(installed, str(installed / "bin" / "python"), "-c", _PROBE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [
        "compiled (Cython)",
        "allocator._zsmalloc",
        "compiled (Cython)",  # the page store's loops, zswapd/_batch.pyx
    ]


def test_without_a_compiler_the_install_succeeds_and_runs_pure_python(
    installed_without_compiler: tuple[Path, str],
) -> None:
    env_dir, log = installed_without_compiler
    assert "allocator._zsmalloc not built" in log and "compressors._lz4k not built" in log
    assert "zswapd._batch not built" in log
    assert not list(env_dir.rglob("_zsmalloc*.so")) and not list(env_dir.rglob("_batch*.so"))
    out = _run(env_dir, str(env_dir / "bin" / "python"), "-c", _PROBE)
    assert out.returncode == 0, out.stderr
    said, module, store = out.stdout.split("\n")[:3]
    assert said.startswith("pure Python (not built: ") and module == "allocator.zsmalloc"
    assert store.startswith("pure Python (not built: ")
    # The daemon starts, says which allocator runs and why, and stops cleanly.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZSWAPD_PURE_PYTHON")}
    daemon = subprocess.Popen(
        [str(env_dir / "bin" / "zswapd"), "serve", "--http", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=env_dir,
        env=env,
    )
    assert daemon.stderr is not None
    lines = []
    try:
        for line in daemon.stderr:  # the banner ends with the HTTP line
            lines.append(line.rstrip("\n"))
            if "serving HTTP on" in line:
                break
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, lines
    assert any("allocator: pure Python (not built: " in line for line in lines), lines
