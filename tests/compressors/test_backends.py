"""Every backend: real pages round-trip, options are checked, bad data is refused."""

from __future__ import annotations

import contextlib
import os

import pytest

import compressors
from compressors import CompressorError, CompressorOptionError, CorruptDataError
from tests.conftest import corpus_or_skip
from tests.threads import run_threads
from zswapd.corpus import iter_pages

OPTION_SETS = {
    "lz4": [{}, {"acceleration": 8}],
    "lz4-lib": [{}, {"acceleration": 8}],
    "lz4hc": [{}, {"level": 1}, {"level": 12}],
    "zstd": [{}, {"level": 1}, {"level": -5}, {"level": 19}],
    "deflate": [{}, {"level": 1}, {"level": 9}],
    "lzo": [{}, {"level": 9}],
}
CASES = [(name, opts) for name in compressors.available() for opts in OPTION_SETS.get(name, [{}])]


def test_the_libraries_installed_here_are_all_registered() -> None:
    assert {"lz4", "lz4hc", "zstd", "deflate"} <= set(compressors.available())


@pytest.mark.parametrize(("name", "options"), CASES)
def test_process_memory_round_trips(
    name: str, options: dict[str, int], process_pages: list[bytes]
) -> None:
    comp = compressors.get(name, **options)
    total = 0
    for page in process_pages[::3]:
        data = comp.compress(page)
        total += min(len(data), 4096)
        assert comp.decompress(data, 4096) == page
    # Real memory compresses; random bytes would not.
    assert total < 0.7 * 4096 * len(process_pages[::3])


@pytest.mark.parametrize(("name", "options"), CASES)
def test_incompressible_and_same_filled_pages_round_trip(
    name: str, options: dict[str, int]
) -> None:
    comp = compressors.get(name, **options)
    for page in (os.urandom(4096), bytes(4096), b"\xab" * 4096):
        assert comp.decompress(comp.compress(page), 4096) == page


@pytest.mark.parametrize("name", compressors.available())
def test_bad_data_raises_corrupt_data_error(name: str) -> None:
    comp = compressors.get(name)
    page = (b"zswapd " * 600)[:4096]
    good = comp.compress(page)
    for bad in (b"", os.urandom(64), good[: len(good) // 2], good + b"\x00\x00"):
        with pytest.raises(CorruptDataError):
            comp.decompress(bad, 4096)
    with pytest.raises(CorruptDataError):
        comp.decompress(good, 1000)  # not the size it was compressed from
    # Whatever a flipped byte does, the answer is a page of the right size or an error.
    for i in range(0, len(good), max(1, len(good) // 16)):
        mutated = bytearray(good)
        mutated[i] ^= 0x5A
        with contextlib.suppress(CorruptDataError):
            assert len(comp.decompress(bytes(mutated), 4096)) == 4096


def test_unknown_backend_and_bad_options_are_refused() -> None:
    with pytest.raises(compressors.UnknownCompressorError, match="available"):
        compressors.get("lzo-rle")
    for name, opts in [
        ("zstd", {"level": 23}),
        ("zstd", {"level": "3"}),
        ("lz4", {"acceleration": 0}),
        ("lz4hc", {"level": 13}),
        ("deflate", {"level": 0}),
        ("lz4", {"level": 3}),
    ]:
        with pytest.raises(CompressorOptionError):
            compressors.get(name, **opts)
    assert issubclass(CompressorOptionError, CompressorError)


def test_zstd_dictionary_round_trips(process_pages: list[bytes]) -> None:
    dictionary = compressors.train_dictionary(process_pages[0::2], 32 * 1024)
    plain = compressors.get("zstd", level=3)
    with_dict = compressors.get("zstd", level=3, dictionary=dictionary)
    for page in process_pages[1::4]:
        assert with_dict.decompress(with_dict.compress(page), 4096) == page
    with pytest.raises(CorruptDataError):  # a dictionary frame without the dictionary
        plain.decompress(with_dict.compress(process_pages[1]), 4096)
    with pytest.raises(CompressorOptionError):
        compressors.get("zstd", dictionary="not bytes")


def test_zstd_dictionary_trained_on_a_held_out_half_helps_real_pages() -> None:
    corpus = corpus_or_skip()
    pages = [p for p in iter_pages(corpus / "postgresql.pages") if p != p[:8] * 512][:4000]
    dictionary = compressors.train_dictionary(pages[0::2], 64 * 1024)
    plain = compressors.get("zstd", level=3)
    with_dict = compressors.get("zstd", level=3, dictionary=dictionary)
    test = pages[1::2]
    plain_total = sum(len(plain.compress(p)) for p in test)
    dict_total = sum(len(with_dict.compress(p)) for p in test)
    assert dict_total < 0.9 * plain_total


def test_one_compressor_serves_many_threads(process_pages: list[bytes]) -> None:
    comp = compressors.get("zstd", level=3)

    def work(pages: list[bytes]) -> None:
        for page in pages:
            assert comp.decompress(comp.compress(page), 4096) == page

    run_threads(work, [process_pages[i::4] for i in range(4)])


@pytest.mark.parametrize("name", compressors.available())
def test_every_backend_names_its_version_and_whether_it_is_kernel_exact(name: str) -> None:
    comp = compressors.get(name)
    assert comp.version and comp.version[0].isalpha()
    assert comp.fidelity == (
        f"exact for {compressors.KERNEL}"
        if comp.kernel_exact
        else f"not kernel-exact: {comp.inexact_because()}"
    )


def test_lz4_and_zstd_are_the_kernels_and_lz4_lib_is_not() -> None:
    import zstandard

    lz4 = compressors.get("lz4")
    assert lz4.kernel_exact and lz4.fidelity == "exact for Linux 6.12"
    assert "Linux 6.12 lib/lz4 (1.8 series)" in lz4.version
    assert not compressors.get("lz4", acceleration=8).kernel_exact
    lib = compressors.get("lz4-lib")
    assert not lib.kernel_exact and "liblz4 1.9" in lib.fidelity
    zstd = compressors.get("zstd")
    assert zstd.version.startswith(f"libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))} ")
    # pyproject pins python-zstandard 0.23, which bundles the kernel's libzstd 1.5.6.
    assert zstandard.ZSTD_VERSION == (1, 5, 6)
    assert zstd.kernel_exact and zstd.fidelity == "exact for Linux 6.12"
    assert compressors.get("zstd", level=1).fidelity.startswith("not kernel-exact: level 1")
