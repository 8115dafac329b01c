"""The default benchmark corpus: the memory of a process the benchmark starts.

A Python program that builds what real programs hold (dicts of small records,
text, floats, an in-memory SQLite table, random and zero-filled buffers) is
started, its swappable pages are read through /proc exactly as ``zswapd push
--pid`` reads them, and it is stopped.  Users with their own dump pass
``--corpus`` instead.
"""

from __future__ import annotations

import subprocess
import sys

from zswapd.procmem import swappable_pages

__all__ = ["WORKLOAD", "dump_workload"]

WORKLOAD = r"""
import json, os, random, sqlite3, sys
rng = random.Random(11)
records = {
    f"user:{i}": {"id": i, "name": "user%06d" % i, "score": rng.random(),
                  "tags": ["alpha", "beta", "gamma"][: i % 4]}
    for i in range(120000)
}
text = json.dumps(records)[:6_000_000]
floats = [rng.gauss(0, 1) for _ in range(300000)]
db = sqlite3.connect(":memory:")
db.execute("create table t (k integer primary key, v text)")
db.executemany("insert into t values (?, ?)", ((i, "v" * (i % 200)) for i in range(60000)))
noise = [os.urandom(4096) for _ in range(800)]
zeros = bytearray(4096 * 400)
print("ready", flush=True)
sys.stdin.read()
"""


def dump_workload() -> list[bytes]:
    """Pages swap would see in a freshly started workload process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the workload process did not start")
        return [r.data for r in swappable_pages(proc.pid)]
    finally:
        proc.kill()
        proc.wait()
