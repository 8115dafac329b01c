"""lz4k: the pure reference makes valid LZ4 blocks, and the compiled module the same bytes."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import lz4.block
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compressors
from compressors import lz4k
from compressors.backend_lz4 import Lz4
from tests.conftest import REPO, corpus_or_skip
from zswapd.corpus import iter_pages

PROGRAMS = ["redis", "postgresql", "python3"]


def _compiled() -> ModuleType:
    try:
        from compressors import _lz4k
    except ImportError:
        pytest.skip("compressors._lz4k is not built (python3 setup.py build_ext --inplace)")
    return _lz4k


def _round_trips(block: bytes, page: bytes) -> bool:
    return bool(lz4.block.decompress(block, uncompressed_size=len(page)) == page)


# Pages built from what memory holds: runs of one byte, repeated fragments
# (near and far, so offsets of every size occur), small integers, random bytes.
_piece = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.tuples(st.integers(0, 255), st.integers(1, 600)).map(lambda t: bytes([t[0]]) * t[1]),
    st.tuples(st.binary(min_size=1, max_size=16), st.integers(1, 80)).map(lambda t: t[0] * t[1]),
    st.lists(st.integers(0, 300), max_size=64).map(
        lambda xs: b"".join(x.to_bytes(8, "little") for x in xs)
    ),
)


@st.composite
def pages(draw: st.DrawFn) -> bytes:
    size = draw(st.integers(1, 4096))
    pieces = draw(st.lists(_piece, min_size=1, max_size=40))
    # Sometimes a piece comes back: matches far behind the current position.
    repeats = draw(st.lists(st.integers(0, len(pieces) - 1), max_size=8))
    body = b"".join(pieces + [pieces[i] for i in repeats])
    return (body * (size // max(1, len(body)) + 1))[:size] if draw(st.booleans()) else body[:size]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page=st.one_of(pages(), st.binary(min_size=1, max_size=4096)))
def test_reference_output_decompresses_to_the_input(page: bytes) -> None:
    assert _round_trips(lz4k.compress(page), page)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    page=st.one_of(pages(), st.binary(min_size=1, max_size=4096)),
    acceleration=st.sampled_from([1, 1, 1, 2, 7, 65537]),
)
def test_compiled_output_is_the_reference_output(page: bytes, acceleration: int) -> None:
    compiled = _compiled()
    expected = lz4k.compress(page, acceleration)
    assert compiled.compress(page, acceleration) == expected
    assert compiled.compress(bytearray(page), acceleration) == expected
    assert compiled.compress(memoryview(page), acceleration) == expected


def test_compiled_and_reference_agree_on_corpus_pages() -> None:
    compiled = _compiled()
    corpus = corpus_or_skip()
    for program in PROGRAMS:
        for page in list(iter_pages(corpus / f"{program}.pages"))[::97]:
            block = compiled.compress(page)
            assert block == lz4k.compress(page), program
            assert _round_trips(block, page)


def test_short_inputs_are_literals_and_edges_round_trip() -> None:
    compiled = _compiled()
    # Under MFLIMIT + 1 = 13 bytes nothing is searched: a token and the bytes.
    for n in range(13):
        assert lz4k.compress(b"a" * n) == bytes([min(n, 15) << 4]) + b"a" * n
    # 20 bytes of one value: one literal, a match of 14 at offset 1, 5 last literals.
    assert lz4k.compress(b"a" * 20) == b"\x1aa\x01\x00\x50aaaaa"
    rng = random.Random(3)
    for n in [*range(13, 80), 255, 256, 270, 4095, 4096, 8192, lz4k.MAX_INPUT_SIZE]:
        for page in (bytes(n), os.urandom(n), bytes(rng.choice(b"ab") for _ in range(n))):
            block = lz4k.compress(page)
            assert compiled.compress(page) == block
            assert _round_trips(block, page)


def test_too_long_input_and_acceleration_are_refused() -> None:
    compiled = _compiled()
    for impl in (lz4k, compiled):
        with pytest.raises(ValueError, match="at most"):
            impl.compress(bytes(lz4k.MAX_INPUT_SIZE + 1))
        with pytest.raises(ValueError, match="acceleration"):
            impl.compress(bytes(4096), lz4k.MAX_ACCELERATION + 1)
        # Below 1 counts as 1, as in the kernel; above, the search skips more.
        page = (b"".join(i.to_bytes(4, "little") for i in range(700)) + b"tail" * 400)[:4096]
        assert impl.compress(page, 0) == impl.compress(page, -3) == impl.compress(page, 1)
        assert len(impl.compress(page, 64)) > len(impl.compress(page, 1))


def test_registered_as_lz4_with_its_version() -> None:
    comp = compressors.get("lz4")
    assert isinstance(comp, Lz4)
    assert comp.options == {"acceleration": 1}
    assert "Linux 6.12" in comp.version
    page = (b"zswapd lz4k " * 400)[:4096]
    assert comp.decompress(comp.compress(page), 4096) == page


def _lib_decoded(block: bytes, size: int) -> bytes | None:
    """What liblz4 (python-lz4's, the reference decoder) makes of ``block``."""
    try:
        return bytes(lz4.block.decompress(block, uncompressed_size=size))
    except lz4.block.LZ4BlockError:
        return None


@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid block (lz4k's or liblz4's) with bytes changed, cut or added."""
    page = draw(pages())
    if draw(st.booleans()):
        block = bytearray(lz4k.compress(page))
    else:
        block = bytearray(lz4.block.compress(page, store_size=False))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(0, len(block) - 1)))
        what = draw(st.sampled_from(["set", "cut", "add"]))
        if what == "set" and block:
            block[at] = draw(st.integers(0, 255))
        elif what == "cut" and len(block) > 1:
            del block[at : at + draw(st.integers(1, 8))]
        else:
            block[at:at] = draw(st.binary(min_size=1, max_size=8))
    size = len(page) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    return bytes(block), max(size, 0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page=st.one_of(pages(), st.binary(min_size=1, max_size=4096)))
def test_compiled_decoder_reads_every_valid_block(page: bytes) -> None:
    compiled = _compiled()
    assert compiled.decompress(lz4k.compress(page), len(page)) == page
    assert compiled.decompress(lz4.block.compress(page, store_size=False), len(page)) == page


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(damaged(), st.tuples(st.binary(max_size=64), st.integers(0, 4096))))
def test_compiled_decoder_takes_only_what_liblz4_takes(case: tuple[bytes, int]) -> None:
    # Stricter than liblz4 is allowed (a refused block goes to liblz4); any
    # block it takes, liblz4 takes too, and decodes to the same bytes.
    block, size = case
    compiled = _compiled()
    try:
        mine = compiled.decompress(block, size)
    except ValueError:
        return
    assert mine == _lib_decoded(block, size)


def test_compiled_decoder_refuses_blocks_that_break_the_end_rules() -> None:
    compiled = _compiled()
    page = (b"abcdefgh" * 512)[:4096]
    block = lz4k.compress(page)
    for bad, size in [
        (b"", 4096),  # nothing
        (block[:-1], 4096),  # the last literal missing
        (block + b"\x00", 4096),  # a byte past the end
        (block, 4095),  # one byte too many for the page
        (block, 4097),  # one too few
        (b"\x10a\x00\x00", 5),  # offset 0
        (b"\x10a\x02\x00\x50aaaaa", 10),  # offset before the start
        (b"\x10a\x01\x00", 5),  # a match in the last bytes, no last literals
        (b"\xf0", 15),  # a literal run's length cut off
        # A match whose length run ends the input: no token after it (the
        # decoder read past the end; hostile review).
        (bytes([0x4F]) + b"abcd" + b"\x01\x00" + b"\xff" * 5 + b"\x00", 4096),
        (bytes([0x4F]) + b"abcd" + b"\x01\x00" + b"\xff" * 5, 4096),
    ]:
        with pytest.raises(ValueError):
            compiled.decompress(bad, size)
    with pytest.raises(ValueError):
        compiled.decompress(block, -1)
    assert compiled.decompress(b"\x00", 0) == b""


# The package from the directory given, not from an editable install of this
# checkout: setuptools' editable finder sits on sys.meta_path, ahead of sys.path.
_FROM_THERE = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if '__editable__' not in getattr(f, '__module__', '')]; "
    "import compressors; "
)


def _implementation(pythonpath: Path, **env: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", _FROM_THERE + "print(compressors.get('lz4').version)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pythonpath,  # python -c looks in its working directory first
        env={
            **{k: v for k, v in os.environ.items() if k != "ZSWAPD_PURE_PYTHON"},
            **env,
            "PYTHONPATH": str(pythonpath),
        },
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_a_failed_build_installs_the_pure_reference(tmp_path: Path) -> None:
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path)
    shutil.copytree(
        REPO / "compressors", tmp_path / "compressors", ignore=shutil.ignore_patterns("*.so", "*.c")
    )
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CC": "/bin/false"},
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert not list((tmp_path / "compressors").glob("*.so"))
    assert _implementation(tmp_path).endswith(", pure Python\n")


def test_zswapd_pure_python_forces_the_reference() -> None:
    _compiled()
    assert _implementation(REPO).endswith(", compiled\n")
    assert _implementation(REPO, ZSWAPD_PURE_PYTHON="1").endswith(", pure Python\n")
