"""lz4 and zstd compress every corpus page to the size Linux 6.12 zram's did.

lz4 is compressors.lz4k (the kernel's 1.8-series choices), zstd libzstd 1.5.6.
../shared/corpus/kernel/<program>.<algo>.perpage.txt has, for every page of
<program>.pages, the kernel's compressed size and what zram did with the page:
``comp`` (kept compressed: the size must be equal), ``same`` (a repeated 8-byte
word, never compressed: ours must see one too) or ``huge`` (recorded as 4096, the
compressed length was huge_class_size or more: ours must be too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lz4.block
import pytest

import compressors
from allocator import ZsPool
from compressors import lz4k
from tests.conftest import corpus_or_skip
from zswapd.corpus import iter_pages

PROGRAMS = ["redis", "postgresql", "python3"]
# The kernel ran zsmalloc at chain size 8 (Debian's configuration).
HUGE_CLASS_SIZE = ZsPool(chain_size=8).huge_class_size

Compress = Callable[[bytes, int], bytes]


def _kernel_sizes(corpus: Path, program: str, algo: str) -> list[tuple[int, str]]:
    rows = []
    for line in (corpus / "kernel" / f"{program}.{algo}.perpage.txt").read_text().splitlines():
        index, size, kind = line.split()
        assert int(index) == len(rows)
        rows.append((int(size), kind))
    return rows


def _mismatches(program: str, compress: Compress, step: int = 1, algo: str = "lz4") -> list[str]:
    corpus = corpus_or_skip()
    kernel = _kernel_sizes(corpus, program, algo)
    pages = list(iter_pages(corpus / f"{program}.pages"))
    assert len(pages) == len(kernel)
    wrong = []
    for i in range(0, len(pages), step):
        page = pages[i]
        size, kind = kernel[i]
        if kind == "same":
            assert page == page[:8] * 512, f"{program} page {i}"
            continue
        n = len(compress(page, 1))
        if (kind == "comp" and n != size) or (kind == "huge" and n < HUGE_CLASS_SIZE):
            wrong.append(f"page {i}: kernel {size} ({kind}), ours {n}")
    return wrong


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_page_has_the_kernels_compressed_size(program: str) -> None:
    comp = compressors.get("lz4")

    def compress(page: bytes, acceleration: int) -> bytes:
        assert acceleration == 1  # the kernel's default, and the backend's
        block = comp.compress(page)
        assert lz4.block.decompress(block, uncompressed_size=4096) == page
        return block

    wrong = _mismatches(program, compress)
    assert not wrong, f"{program}: {len(wrong)} pages differ, first {wrong[:5]}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_pure_reference_has_the_kernels_sizes_too(program: str) -> None:
    # Every 61st page: the reference runs at Python speed.
    wrong = _mismatches(program, lz4k.compress, step=61)
    assert not wrong, f"{program}: {len(wrong)} pages differ, first {wrong[:5]}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_zstd_gives_every_page_the_kernels_compressed_size(program: str) -> None:
    comp = compressors.get("zstd")
    assert comp.kernel_exact, comp.fidelity  # libzstd 1.5.6 (python-zstandard 0.23)

    def compress(page: bytes, level: int) -> bytes:
        return comp.compress(page)

    wrong = _mismatches(program, compress, algo="zstd")
    assert not wrong, f"{program}: {len(wrong)} pages differ, first {wrong[:5]}"
