"""Compressors side by side: ratio, compress and decompress pages/s per algorithm and level.

Same pages for all, same run, medians of repeats.  Ratio = original bytes / sum
of min(compressed, 4096) over non-same-filled pages (a page that does not
compress is stored raw).  zstd with a dictionary is trained on a held-out half
(even pages) and measured on the other half (odd pages), beside plain zstd on
that same half.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import compressors
from zswapd.bench.stats import each, format_table, timed_rate
from zswapd.corpus import PAGE_SIZE, is_same_filled

__all__ = ["PLAN", "render", "run"]

PLAN: list[tuple[str, str, dict[str, Any]]] = [
    ("lz4", "lz4", {}),
    ("lz4 accel 8", "lz4", {"acceleration": 8}),
    ("lz4-lib", "lz4-lib", {}),
    ("lz4-lib accel 8", "lz4-lib", {"acceleration": 8}),
    ("lz4hc 9", "lz4hc", {"level": 9}),
    ("zstd -1", "zstd", {"level": -1}),
    ("zstd 1", "zstd", {"level": 1}),
    ("zstd 3", "zstd", {"level": 3}),
    ("zstd 9", "zstd", {"level": 9}),
    ("zstd 19", "zstd", {"level": 19}),
    ("deflate 6", "deflate", {"level": 6}),
    ("lzo 1", "lzo", {"level": 1}),
]


def _measure(
    comp: compressors.Compressor, pages: Sequence[bytes], repeats: int
) -> dict[str, float]:
    blobs = [comp.compress(p) for p in pages]
    stored = sum(min(len(b), PAGE_SIZE) for b in blobs)
    c_rates, d_rates = [], []
    for _ in range(repeats):
        c_rates.append(timed_rate(lambda: each(comp.compress, pages), len(pages)))
        d_rates.append(
            timed_rate(lambda: each(partial(comp.decompress, size=PAGE_SIZE), blobs), len(pages))
        )
    return {
        "ratio": PAGE_SIZE * len(pages) / stored,
        "compress_per_s": statistics.median(c_rates),
        "decompress_per_s": statistics.median(d_rates),
    }


def run(
    pages: Sequence[bytes],
    *,
    repeats: int = 5,
    max_pages: int = 4096,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    data = [p for p in pages if not is_same_filled(p)]
    data = data[:: max(1, len(data) // max_pages)][:max_pages]
    out: dict[str, Any] = {"pages": len(data), "repeats": repeats, "algorithms": {}}
    for label, name, options in PLAN:
        if name not in compressors.available():
            continue
        say(f"compressor {label}")
        out["algorithms"][label] = _measure(compressors.get(name, **options), data, repeats)
    train, test = data[0::2], data[1::2]
    if len(train) >= 16:
        say("zstd 3 with a dictionary")
        dictionary = compressors.train_dictionary(train, 64 * 1024)
        out["dictionary"] = {
            "held_out_pages": len(test),
            "zstd 3": _measure(compressors.get("zstd", level=3), test, repeats),
            "zstd 3 + dictionary": _measure(
                compressors.get("zstd", level=3, dictionary=dictionary), test, repeats
            ),
        }
    return out


def render(result: dict[str, Any]) -> str:
    rows = [
        [k, v["ratio"], f"{v['compress_per_s']:,.0f}", f"{v['decompress_per_s']:,.0f}"]
        for k, v in result["algorithms"].items()
    ]
    lines = [
        f"compressors on {result['pages']} non-same-filled pages, median of {result['repeats']}",
        format_table(["algorithm", "ratio", "compress pages/s", "decompress pages/s"], rows),
    ]
    if "dictionary" in result:
        d = result["dictionary"]
        lines += [
            "",
            f"zstd dictionary: trained on one half, measured on the other {d['held_out_pages']}",
            format_table(
                ["", "ratio", "compress pages/s", "decompress pages/s"],
                [
                    [
                        k,
                        d[k]["ratio"],
                        f"{d[k]['compress_per_s']:,.0f}",
                        f"{d[k]['decompress_per_s']:,.0f}",
                    ]
                    for k in ("zstd 3", "zstd 3 + dictionary")
                ],
            ),
        ]
    return "\n".join(lines)
