"""``zswapd bench``: every suite in one run, on one corpus, with a progress bar.

Suites: compressors; allocators (efficiency, budget, speed, RSS); paths (store
and load in process, over the wire protocol and over HTTP, batches of 1 and 64,
each against bare lz4 in the same run); scale (10^4..10^6 stored pages); peers
(memcached and Redis on Unix sockets).  ``quick`` shrinks every size for a smoke
run (CI runs it on a tiny corpus; no test asserts a speed).
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from zswapd import __version__
from zswapd.bench import allocator, compressors, http, peers, scale, store, wire

__all__ = ["SUITES", "render", "run"]

SUITES = ("compressors", "allocators", "paths", "scale", "peers")


def _plan(pages: Sequence[bytes], quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    reps = 1 if quick else 5
    return {
        "compressors": lambda: compressors.run(
            pages, repeats=reps, max_pages=256 if quick else 4096, progress=say
        ),
        "allocators": lambda: allocator.run(
            pages,
            scales=(2000,) if quick else (200_000, 1_000_000),
            repeats=reps,
            rss_objects=2000 if quick else 1_000_000,
            progress=say,
        ),
        "paths": lambda: {
            "in_process": {
                algo: store.speed(
                    list(pages[:: max(1, len(pages) // (256 if quick else 8192))]), algo, reps
                )
                for algo in ("lz4", "zstd")
            },
            "wire": wire.run(pages, repeats=reps, n_pages=256 if quick else 8192, progress=say),
            "http": http.run(pages, repeats=reps, n_pages=128 if quick else 4096, progress=say),
        },
        "scale": lambda: scale.run(
            pages, levels=(1000, 3000) if quick else scale.LEVELS, progress=say
        ),
        "peers": lambda: peers.run(pages, n_pages=256 if quick else 16384, progress=say),
    }


def run(
    pages: Sequence[bytes],
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Every suite (or ``only`` those); a JSON-ready dict."""
    wanted = [s for s in SUITES if not only or s in only]
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "kernel": platform.release(),
            "python": sys.version.split()[0],
            "zswapd": __version__,
        },
        "corpus_pages": len(pages),
        "quick": quick,
    }
    bar = tqdm(wanted, unit="suite", disable=quiet or None, file=sys.stderr)

    def say(msg: str) -> None:
        bar.set_postfix_str(msg[:60])

    plan = _plan(pages, quick, say)
    for name in bar:
        bar.set_description(name)
        try:
            result[name] = plan[name]()
        except ModuleNotFoundError as exc:
            # An optional dependency (the peers' clients): the other suites'
            # results stand, and the line says what to install.
            why = f"needs the Python module {exc.name} (pip install -e '.[bench]' from a checkout)"
            result[name] = {"skipped": why}
            tqdm.write(f"zswapd bench: {name} skipped: {why}", file=sys.stderr)
    return result


def _skipped(result: dict[str, Any], name: str) -> list[str] | None:
    """The line for a suite that did not run, or None if it ran."""
    got = result[name]
    if isinstance(got, dict) and set(got) == {"skipped"}:
        return ["", f"{name}: skipped, {got['skipped']}"]
    return None


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    out = [
        f"zswapd bench, {result['date']}: {m['cpus']} CPUs {m['processor']}, Linux "
        f"{m['kernel']}, Python {m['python']}; {result['corpus_pages']} corpus pages"
    ]
    if "compressors" in result:
        out += _skipped(result, "compressors") or ["", compressors.render(result["compressors"])]
    if "allocators" in result:
        out += _skipped(result, "allocators") or ["", allocator.render(result["allocators"])]
    if "paths" in result and _skipped(result, "paths"):
        out += _skipped(result, "paths") or []
    elif "paths" in result:
        paths = result["paths"]
        out += ["", "paths: in process (ratio = pool / bare compressor, same run)"]
        for algo, sp in paths["in_process"].items():
            out.append(
                "  "
                + algo
                + ": "
                + ", ".join(
                    f"{k} {sp['rates_per_s'][k]:,.0f}/s ({v:.2f})"
                    for k, v in sp["ratio_to_bare"].items()
                )
            )
        out += ["", wire.render(paths["wire"]), "", http.render(paths["http"])]
    if "scale" in result:
        out += _skipped(result, "scale") or ["", scale.render(result["scale"])]
    if "peers" in result:
        out += _skipped(result, "peers") or ["", peers.render(result["peers"])]
    return "\n".join(out)
