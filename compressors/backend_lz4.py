"""lz4 and lz4hc, through python-lz4's block API (zram's lz4 and lz4hc).

Pages have a fixed size, so blocks are stored without lz4's 4-byte size prefix
(``store_size=False``); decompression is told the size instead.  python-lz4
releases the GIL, so threads compress in parallel.
"""

from __future__ import annotations

from typing import Any

import lz4.block as _block

from compressors.base import Compressor, Data, int_option, no_more

__all__ = ["Lz4", "Lz4HC"]


class Lz4(Compressor):
    """lz4 block mode; ``acceleration`` 1 (the kernel's, default) .. 65537 buys speed."""

    name = "lz4"
    _errors = (_block.LZ4BlockError, ValueError)

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

    def _decompress(self, data: Data, size: int) -> bytes:
        out: bytes = _block.decompress(data, uncompressed_size=size)
        return out


class Lz4HC(Compressor):
    """lz4 high-compression mode, ``level`` 1..12 (default 9, the kernel's LZ4HC_DEFAULT_CLEVEL)."""

    name = "lz4hc"
    _errors = (_block.LZ4BlockError, ValueError)

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

    def _decompress(self, data: Data, size: int) -> bytes:
        out: bytes = _block.decompress(data, uncompressed_size=size)
        return out
