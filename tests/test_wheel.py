"""The wheel is whole: built, installed into a fresh virtual environment away from
the checkout, every subcommand answers --help (a package missing from the wheel
fails its import there, as ``zswapd bench`` once did in the Docker image)."""

from __future__ import annotations

import argparse
import os
import shutil
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site) holding the wheel and what it depends on.

    Its own pip installs the dependencies (from PyPI or pip's cache): a venv
    that saw the system's site-packages would have pip uninstall the checkout's
    editable install there.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy without build/: setuptools would pack whatever an earlier build left there.
    src = tmp / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".*", "build", "*.egg-info", "__pycache__", "venv", "*.pages", "*.handles"
        ),
    )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp.glob("zswapd-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    install = _run(
        env_dir, str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return env_dir


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
