"""Pages with known properties, for store tests, and what tests of metrics share."""

from __future__ import annotations

import random
import subprocess

from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

PAGE = 4096

# The second tier's series: every pool has them, zeros without a backing file.
BACKING_SERIES = (
    "zswapd_backing_pages",
    "zswapd_backing_size_bytes",
    "zswapd_backing_io_pages_total",
    "zswapd_written_back_pages_total",
    "zswapd_backing_errors_total",
    "zswapd_loaded_pages_total",
)


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (compared as a number:
    the client writes floats in their shortest form, 4.15744e+06, not 4.157440e+06)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise KeyError(f"no sample {name}{labels}")


def poor_page(seed: int) -> bytes:
    """Random bytes from a 16-symbol alphabet: lz4 finds no matches (huge), zstd's
    entropy coder halves it (so recompression has something to gain)."""
    rng = random.Random(seed)
    alphabet = bytes(range(0x41, 0x51))
    return bytes(rng.choice(alphabet) for _ in range(PAGE))


def random_page(seed: int) -> bytes:
    return random.Random(seed).randbytes(PAGE)


def text_page(seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"page", b"zspage", b"class", b"handle", b"zram", b"swap", b"%d" % seed]
    out = b" ".join(rng.choice(words) for _ in range(900))
    return out[:PAGE].ljust(PAGE, b".")


def same_page(word: bytes) -> bytes:
    return word * (PAGE // len(word))


# Every kind of page a pool tells apart: compressible, huge (lz4), huge but
# shrinkable by zstd (recompression), same-filled.
PAGES = st.one_of(
    st.builds(text_page, st.integers(0, 50)),
    st.builds(random_page, st.integers(0, 50)),
    st.builds(poor_page, st.integers(0, 5)),
    st.builds(same_page, st.binary(min_size=8, max_size=8)),
)


def ask(proc: subprocess.Popen[str], what: str) -> list[str]:
    """Send a test target one command line; its answer's words, which must
    begin ``ok <what>`` (the targets' line protocol)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(what + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline().split()
    assert answer[:2] == ["ok", what], answer
    return answer
