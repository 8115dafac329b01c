"""lz4-lib and lz4hc, through python-lz4's block API (liblz4 1.9.x).

``lz4-lib`` is userspace liblz4's fast mode: faster than :mod:`compressors.backend_lz4`
(zram's own lz4, which this project reproduces), but its 1.9-series match finder
gives most pages a compressed size a few bytes off the kernel's, so its figures
are near zram's, not equal.  ``lz4hc`` is zram's lz4hc algorithm as liblz4
makes it.

Pages have a fixed size, so blocks are stored without lz4's 4-byte size prefix
(``store_size=False``); decompression is told the size instead.  python-lz4
releases the GIL, so threads compress in parallel.
"""

from __future__ import annotations

from typing import Any

import lz4
import lz4.block as _block

from compressors.base import KERNEL, Compressor, Data, int_option, no_more

__all__ = ["Lz4HC", "Lz4Lib"]

_LIBRARY = f"liblz4 {lz4.library_version_string()} (python-lz4 {lz4.__version__})"


class _LibLz4Block(Compressor):
    """What liblz4's two block modes share: the library, its errors, decompression."""

    version = _LIBRARY
    _errors = (_block.LZ4BlockError, ValueError)

    def _decompress(self, data: Data, size: int) -> bytes:
        out: bytes = _block.decompress(data, uncompressed_size=size)
        return out


class Lz4Lib(_LibLz4Block):
    """liblz4's block mode; ``acceleration`` 1 (default) .. 65537 buys speed."""

    name = "lz4-lib"

    def __init__(self, **options: Any) -> None:
        accel = int_option(options, "acceleration", 1, 1, 65537)
        no_more(self.name, options)
        super().__init__({"acceleration": accel})
        self._accel = accel

    def compress(self, page: Data) -> bytes:
        out: bytes
        if self._accel == 1:
            out = _block.compress(page, store_size=False)
        else:
            out = _block.compress(page, mode="fast", acceleration=self._accel, store_size=False)
        return out

    def inexact_because(self) -> str | None:
        return (
            f"liblz4 {lz4.library_version_string()} finds matches differently from "
            f"{KERNEL}'s lib/lz4 (1.8 series); use lz4 for the kernel's sizes"
        )


class Lz4HC(_LibLz4Block):
    """lz4 high-compression mode, ``level`` 1..12 (default 9, the kernel's LZ4HC_DEFAULT_CLEVEL)."""

    name = "lz4hc"

    def __init__(self, **options: Any) -> None:
        level = int_option(options, "level", 9, 1, 12)
        no_more(self.name, options)
        super().__init__({"level": level})
        self._level = level

    def compress(self, page: Data) -> bytes:
        out: bytes = _block.compress(
            page, mode="high_compression", compression=self._level, store_size=False
        )
        return out

    def inexact_because(self) -> str | None:
        return (
            f"liblz4 {lz4.library_version_string()}'s HC, not {KERNEL}'s lib/lz4 "
            "(1.8 series); not checked against the kernel's"
        )
