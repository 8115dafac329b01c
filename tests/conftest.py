"""Shared fixtures: where the shared corpus lives, and realistic page sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from zswapd.procmem import PageRecord

REPO = Path(__file__).resolve().parent.parent
# CI clones the repo beside ../shared; a developer checkout has it at the same place.
SHARED = Path(os.environ.get("ZSWAPD_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "corpus"


def corpus_or_skip() -> Path:
    """The shared corpus folder, or skip the test saying why."""
    if not (CORPUS / "kernel").is_dir():
        pytest.skip(
            f"shared corpus not found at {CORPUS} (set ZSWAPD_SHARED to the folder holding corpus/)"
        )
    return CORPUS


# A program whose memory looks like a real workload's: interpreter state, dicts
# of small objects, text, floats, some random (incompressible) buffers and
# zero-filled ones.  Tests dump it through /proc, as `zswapd push --pid` does.
_WORKLOAD = r"""
import json, os, random, sys
rng = random.Random(7)
records = {
    f"key:{i}": {"id": i, "name": "user%05d" % i, "score": rng.random(), "tags": ["a"] * (i % 4)}
    for i in range(40000)
}
text = json.dumps(records)[:3_000_000]
floats = [rng.gauss(0, 1) for _ in range(200000)]
noise = [os.urandom(4096) for _ in range(300)]
zeros = bytearray(4096 * 200)
ones = bytearray(b"\x01\x00\x00\x00\x00\x00\x00\x00" * 512 * 20)
print("ready", flush=True)
sys.stdin.read()
"""


def dump_process(script: str, most: int) -> list[PageRecord]:
    """Up to ``most`` pages, evenly spread, that swap would see in a Python
    process running ``script`` (which prints ``ready`` once its memory is
    set, then waits on stdin); the process is ended before this returns."""
    from zswapd.procmem import swappable_pages

    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        records = swappable_pages(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    step = max(1, len(records) // most)
    return records[::step]


@pytest.fixture(scope="session")
def process_pages() -> list[bytes]:
    """Pages swap would see in a process this session starts (up to 6,000)."""
    return [r.data for r in dump_process(_WORKLOAD, 6000)]
