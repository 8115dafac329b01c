"""``zswapd bench allocator`` runs end to end on a tiny corpus and reports every field.

No speed is asserted: figures belong to the benchmark, not to tests.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.zswapd.daemon import run_cli
from zswapd.bench.allocator import configs


def _bench_json(*args: str) -> dict[str, Any]:
    """``zswapd bench ARGS --json``, run as a user would, parsed."""
    out = run_cli("bench", *args, "--json", timeout=600)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _tiny_corpus(path: Path) -> Path:
    rng = random.Random(0)
    words = [rng.randbytes(rng.randint(2, 12)) for _ in range(200)]
    pages = []
    for i in range(300):
        if i % 10 == 0:
            pages.append(bytes(4096))  # same-filled: left out of the workload
        elif i % 10 == 1:
            pages.append(os.urandom(4096))  # incompressible: stored raw
        else:
            text = b"".join(rng.choice(words) for _ in range(1200))
            pages.append(text[:4096].ljust(4096, b"\0"))
    path.write_bytes(b"".join(pages))
    return path


def test_bench_allocator_json_has_every_field(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json(
        "allocator",
        "--corpus",
        str(corpus),
        "--objects",
        "1500",
        "3000",
        "--repeats",
        "1",
        "--rss-objects",
        "2000",
    )
    assert result["corpus_pages"] == 300 and result["workload_objects"] == 270
    labels = [label for label, _, _ in configs([100, 200], 10)]
    for scale in ("1500", "3000"):
        table = result["efficiency"][scale]
        assert list(table) == labels
        for row in table.values():
            assert 0 < row["all_live"] <= 1 and 0 < row["after_compact"] <= 1
            assert row["pages_compacted"] >= 0
    for key in ("whole_zspages", "short_zspages"):
        row = result["budget"][key]
        assert row["stored_after_fill"] > 0 and row["fill_failures"] >= 0
    speed = result["speed"]
    assert set(speed["ratio_to_lz4_compress"]) == {
        "malloc_write",
        "store",
        "map_read_free",
        "obj_read_free",
        "malloc_write_pure",
        "store_pure",
    }
    assert all(v > 0 for v in speed["rates_per_s"].values())
    assert result["rss"]["objects"] == 2000
    assert result["rss"]["handle_table_bytes_per_object"] >= 12


def test_bench_refuses_a_corpus_that_is_not_whole_pages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pages"
    bad.write_bytes(b"x" * 5000)
    out = run_cli("bench", "allocator", "--corpus", str(bad))
    assert out.returncode == 2
    assert "not a whole number of 4096-byte pages" in out.stderr


def test_bench_store_json_has_every_field(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json("store", "--corpus", str(corpus), "--repeats", "1", "--speed-pages", "120")
    assert result["corpus_pages"] == 300
    ratios = result["ratios"]
    assert {"lz4", "zstd-3 (default)", "zstd-3 + 64 KiB dictionary"} <= set(ratios)
    for row in ratios.values():
        assert row["same_pages"] == 30 and row["huge_pages"] >= 30
        assert row["mem_ratio"] > 1 and row["compr_ratio"] >= row["mem_ratio"] * 0.9
    for algo in ("lz4", "zstd"):
        speed = result["speed"][algo]
        assert set(speed["ratio_to_bare"]) == {"store_1", "store_64", "load_1", "load_64"}
        assert result["threads"][algo]["speedup"] > 0
    for kind in ("huge", "idle"):
        row = result["recompression"][kind]
        assert row["candidates"] >= row["recompressed"] >= 0


def test_bench_http_json_has_every_field(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json("http", "--corpus", str(corpus), "--repeats", "1", "--pages", "128")
    assert result["pages"] == 128
    assert set(result["ratio_to_lz4"]) == {"store_1", "store_64", "load_1", "load_64"}
    assert all(v > 0 for v in result["rates_per_s"].values())
    assert result["healthz_us"] > 0


def test_bench_wire_json_has_every_field(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json("wire", "--corpus", str(corpus), "--repeats", "1", "--pages", "256")
    assert result["pages"] == 256
    expected = {f"{op}_b{b}_c{c}" for op in ("store", "load") for b in (1, 64) for c in (1, 4)}
    assert set(result["ratio_to_lz4"]) == expected
    assert all(v > 0 for v in result["rates_per_s"].values())


def test_bench_every_suite_quick_with_plots(tmp_path: Path) -> None:
    import shutil

    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    plots = tmp_path / "plots"
    result = _bench_json("--corpus", str(corpus), "--quick", "--plot", str(plots))
    assert {"date", "machine", "corpus_pages"} <= set(result)
    assert set(result["compressors"]["algorithms"]) >= {"lz4", "zstd 3", "zstd 19"}
    assert {"zstd 3", "zstd 3 + dictionary"} <= set(result["compressors"]["dictionary"])
    assert list(result["allocators"]["efficiency"]) == ["2000"]
    paths = result["paths"]
    assert set(paths["in_process"]) == {"lz4", "zstd"}
    assert "store_b64_c4" in paths["wire"]["ratio_to_lz4"]
    assert "store_64" in paths["http"]["ratio_to_lz4"]
    levels = result["scale"]["levels"]
    assert [r["stored_pages"] for r in levels] == [1000, 3000]
    assert all(r["store_us_per_page"] > 0 and r["rss_per_stored_page"] > 0 for r in levels)
    servers = result["peers"]["servers"]
    assert {"zswapd wire, lz4", "zswapd wire, zstd"} <= set(servers)
    for name, binary in (("memcached", "memcached"), ("redis", "redis-server")):
        assert (name in servers) == (shutil.which(binary) is not None)
    for row in servers.values():
        assert row["store_per_s"] > 0 and row["load_per_s"] > 0
    assert {p.name for p in plots.iterdir()} == {
        "compressors.png",
        "allocators-2000.png",
        "scale.png",
        "peers.png",
    }


def test_bench_nbd_json_has_every_field(tmp_path: Path) -> None:
    import shutil

    if not (shutil.which("nbdcopy") and shutil.which("nbdkit")):
        pytest.skip("nbdcopy and nbdkit are needed (apt-get install libnbd-bin nbdkit)")
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json("nbd", "--corpus", str(corpus), "--repeats", "1")
    assert set(result["servers"]) == {"zswapd-lz4", "zswapd-zstd", "nbdkit", "nbdkit-zstd"}
    for name, row in result["servers"].items():
        assert row["write_mb_s"] > 0 and row["read_mb_s"] > 0
        assert (row["pool_bytes"] is not None) == name.startswith("zswapd")


def test_bench_soak_checks_every_byte(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json("soak", "--corpus", str(corpus), "--clients", "4", "--seconds", "3")
    assert result["transports"] == {"http": 2, "wire": 2}
    assert result["errors"] == 0 and result["mismatches"] == 0
    assert result["ops"]["store"] > 0 and result["ops"]["load"] > 0 and result["rss"]


def test_bench_soak_at_the_pool_limit_counts_refusals_apart(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json(
        "soak", "--corpus", str(corpus), "--clients", "4", "--seconds", "5", "--pool-limit", "256K"
    )
    # A pool far smaller than the working sets: stores are refused, nothing else fails.
    assert result["refused"] > 0 and result["ops"]["store"] > 0
    assert result["errors"] == 0 and result["mismatches"] == 0
    # A quarter-MiB pool is a few zspages: one freed drops it below 95%, so the
    # share of samples at the limit is noisy here; that stores keep being refused
    # is not.
    assert result["refused"] > result["ops"]["store"] / 4
    assert result["at_limit_share"] > 0


def test_bench_writeback_quick_json_has_every_field(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    result = _bench_json(
        "writeback", "--corpus", str(corpus), "--quick", "--dir", str(tmp_path), "--ops", "3000"
    )
    assert result["corpus_pages"] == 300 and result["quick"] and result["repeats"] == 1
    assert result["directory_fs"] != "unknown"
    for algo in ("lz4", "zstd"):
        sk = result["skewed"][algo]
        assert sk["mismatches"] == 0
        assert 0 < sk["limit_bytes"] <= sk["working_set_bytes"] // 3
        wb, plain = sk["with_writeback"], sk["without_writeback"]
        for row in (wb, plain):
            assert row["pages_per_s"] > 0 and row["ops"] == 2400
            assert row["stores"] + row["loads"] + row["skipped_loads"] == row["ops"]
            for key in ("store_us", "load_us"):
                assert set(row[key]) == {"p50", "p90", "p99", "max"}
                assert 0 < row[key]["p50"] <= row[key]["p90"] <= row[key]["p99"]
            assert row["refused_stores"] == 0 and row["reject_reclaim_fail"] == 0
            loads = row["loads_from"]
            assert loads["pool"] + loads["file"] + loads["same_filled"] == row["loads"]
        # A third of the working set in memory: pages go to the file and come back.
        assert wb["bd_stat"]["bd_writes"] > 0 and wb["bd_stat"]["bd_reads"] > 0
        assert wb["bd_stat"]["bd_reads"] == wb["loads_from"]["file"]
        assert wb["memory_share"] < 1 and wb["file_load_us"]["p50"] > 0
        assert wb["triggers"]["stores"] > 0 and wb["triggers"]["pages_per_trigger"] > 0
        assert wb["written_back_pages"] == wb["bd_stat"]["bd_writes"]
        # No limit: nothing leaves memory.
        assert plain["memory_share"] == 1 and plain["bd_stat"]["bd_writes"] == 0
        assert plain["file_load_us"] is None and plain["triggers"]["stores"] == 0
        m = result["manual"][algo]
        assert m["mismatches"] == 0
        # Every page but the 30 same-filled ones went to the file and came back twice.
        assert m["written_back"] == 270 and m["bd_stat"]["bd_reads"] == 540
        assert m["load_memory_per_s"] > 0 and m["load_file_cold_per_s"] > 0
    # Nothing is left behind in the directory.
    assert not [p for p in tmp_path.iterdir() if p.name != "tiny.pages"]


def test_bench_writeback_refuses_a_directory_it_cannot_use(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    missing = tmp_path / "missing"
    out = run_cli("bench", "writeback", "--corpus", str(corpus), "--quick", "--dir", str(missing))
    assert out.returncode == 2 and "cannot make a directory for backing files" in out.stderr
    assert not missing.exists()
    out = run_cli("bench", "writeback", "--corpus", str(corpus), "--ops", "0")
    assert out.returncode == 2 and "must be 1 or more" in out.stderr


def test_a_suite_whose_dependency_is_missing_is_skipped_and_the_rest_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`zswapd bench --quick` after an install without the bench extra: the
    peers suite says what to install, in one line, and what the other suites
    computed is still printed."""
    if shutil.which("memcached") is None:
        pytest.skip(
            "memcached is not installed (apt-get install memcached): the peers "
            "suite leaves it out before it needs pymemcache"
        )
    hidden = tmp_path / "hidden"
    (hidden / "pymemcache").mkdir(parents=True)
    # As on a machine without it: importing it fails as a missing module does.
    (hidden / "pymemcache" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pymemcache'\", name='pymemcache')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hidden))
    corpus = _tiny_corpus(tmp_path / "tiny.pages")
    out = run_cli(
        "bench", "--corpus", str(corpus), "--quick", "--only", "compressors", "peers", timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "skipped" in ln]
    assert lines == [
        "zswapd bench: peers skipped: needs the Python module pymemcache "
        "(pip install -e '.[bench]' from a checkout)"
    ], out.stderr
    assert "lz4" in out.stdout and "peers: skipped, needs the Python module" in out.stdout


# What each suite's --help must say: its own description, and the default of
# every option that has one (as the command runs without it).
_SUITE_HELP = {
    "allocator": [
        "Memory efficiency of every allocator",
        "--repeats N runs per figure (default: 5)",
        "(default: 200000 1000000)",
        "0 to skip it (default: 1000000)",
    ],
    "store": ["Each compressor's ratio", "(default: 5)", "speed figures (default: 8192)"],
    "http": ["over HTTP to a daemon it starts", "(default: 5)", "pages sampled (default: 4096)"],
    "wire": ["over the binary protocol", "(default: 5)", "pages sampled (default: 8192)"],
    "nbd": ["nbdcopy of the corpus", "runs per figure (default: 3)"],
    "soak": ["Client threads", "half of them HTTP (default: 8)", "how long (default: 60)"],
    "writeback": [
        "A pool limited to a third",
        "(default: 3; with --quick: 1)",
        "(default: 200000; with --quick: 4000)",
        "page files (default: ../shared/corpus if present, else the memory of a workload",
    ],
}


@pytest.mark.parametrize("suite", sorted(_SUITE_HELP))
def test_bench_suite_help_describes_the_suite_and_shows_defaults(suite: str) -> None:
    out = run_cli("bench", suite, "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines at the terminal's width
    for said in _SUITE_HELP[suite]:
        assert said in text, (suite, said, text)
    if suite != "writeback":  # every other suite dumps a workload process without --corpus
        assert "page files (default: the memory of a workload process it starts)" in text
