"""lz4k: lz4 with the compressed sizes of Linux's own lz4 (zram's lz4 on 6.12).

The kernel compresses with its copy of the LZ4 1.8-series compressor, liblz4
1.9.x (python-lz4's) with different match-finding choices, so the two disagree
on most pages by a few bytes.  This backend compresses with
:mod:`compressors.lz4k` (compiled as ``compressors._lz4k`` when it was built;
``ZSWAPD_PURE_PYTHON=1`` forces the pure-Python reference) and decompresses
with python-lz4: the output is a standard LZ4 block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lz4.block as _block

from compressors import lz4k
from compressors.base import Compressor, Data, int_option, no_more

__all__ = ["Lz4K"]


def _pick() -> tuple[Callable[[Data, int], bytes], str]:
    if os.environ.get("ZSWAPD_PURE_PYTHON") != "1":
        try:
            from compressors import _lz4k
        except ImportError:
            pass
        else:
            return _lz4k.compress, "compiled"
    return lz4k.compress, "pure Python"


_COMPRESS, IMPLEMENTATION = _pick()


class Lz4K(Compressor):
    """lz4 as Linux 6.12's zram makes it; ``acceleration`` 1 (default) .. 65537."""

    name = "lz4k"
    #: what makes its output: the kernel's algorithm, and which build of it runs.
    version = f"lz4 1.8-series match finder, as Linux 6.12 lib/lz4 ({IMPLEMENTATION})"
    _errors = (_block.LZ4BlockError, ValueError)

    def __init__(self, **options: Any) -> None:
        accel = int_option(options, "acceleration", 1, 1, lz4k.MAX_ACCELERATION)
        no_more(self.name, options)
        super().__init__({"acceleration": accel})
        self._accel = accel

    def compress(self, page: Data) -> bytes:
        return _COMPRESS(page, self._accel)

    def _decompress(self, data: Data, size: int) -> bytes:
        out: bytes = _block.decompress(data, uncompressed_size=size)
        return out
