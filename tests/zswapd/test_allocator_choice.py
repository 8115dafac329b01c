"""``zswapd serve`` and ``zswapd bench`` say which ZsPool runs: the compiled one
(allocator/_zsmalloc.pyx) or the pure-Python one, and why; ``ZSWAPD_PURE_PYTHON=1``
forces the pure one in a real daemon and a real bench run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.allocator.zspools import COMPILED, NOT_BUILT
from tests.zswapd.daemon import run_cli, start_daemon

PURE = "allocator: pure Python (ZSWAPD_PURE_PYTHON=1)"
COMPILED_LINE = "allocator: compiled (Cython)"
# The page store's batch loops (zswapd/_batch.pyx), chosen the same way.
PURE_STORE = "page store: pure Python (ZSWAPD_PURE_PYTHON=1)"
COMPILED_STORE = "page store: compiled (Cython)"


def _banner(env: dict[str, str]) -> str:
    d = start_daemon(env=env)
    try:
        return next(line for line in d.log if line.startswith("zswapd: zswapd "))
    finally:
        assert d.stop() == 0


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT or "built")
def test_serve_says_it_runs_the_compiled_allocator_when_built() -> None:
    first = _banner({"ZSWAPD_PURE_PYTHON": "0"})
    assert first.endswith(f"{COMPILED_LINE}, {COMPILED_STORE}, kernel lz4: compiled"), first


def test_serve_runs_the_pure_allocator_when_told_and_says_why() -> None:
    first = _banner({"ZSWAPD_PURE_PYTHON": "1"})
    assert first.endswith(f"{PURE}, {PURE_STORE}, kernel lz4: pure Python"), first


def test_bench_header_names_the_allocator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSWAPD_PURE_PYTHON", "1")
    corpus = tmp_path / "tiny.pages"
    corpus.write_bytes(b"".join(os.urandom(1000).ljust(4096, b"\0") for _ in range(40)))
    argv = ("bench", "allocator", "--corpus", str(corpus), "--objects", "200")
    argv += ("--repeats", "1", "--rss-objects", "0")
    out = run_cli(*argv, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == [PURE, PURE_STORE]
    assert "malloc_write_pure" in out.stdout
