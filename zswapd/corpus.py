"""Page corpora: files of 4096-byte pages back to back, as in ../shared/corpus."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["PAGE_SIZE", "default_corpus_files", "is_same_filled", "iter_pages", "load_pages"]

PAGE_SIZE = 4096


def is_same_filled(page: bytes) -> bool:
    """One 8-byte word repeated over the whole page (zeros included)."""
    return page == page[:8] * (PAGE_SIZE // 8)


def iter_pages(path: Path) -> Iterator[bytes]:
    """The pages of one corpus file, in file order.

    Raises:
        ValueError: the file is not a whole number of pages.
    """
    data = path.read_bytes()
    if len(data) % PAGE_SIZE:
        raise ValueError(f"{path}: {len(data)} bytes is not a whole number of 4096-byte pages")
    for off in range(0, len(data), PAGE_SIZE):
        yield data[off : off + PAGE_SIZE]


def load_pages(paths: Iterable[Path]) -> list[bytes]:
    """Every page of every file, in order."""
    return [page for path in paths for page in iter_pages(path)]


def default_corpus_files() -> list[Path]:
    """The shared corpus beside this checkout (../shared/corpus/*.pages), if any."""
    here = Path(__file__).resolve().parent.parent
    return sorted((here.parent / "shared" / "corpus").glob("*.pages"))
