"""lz4 as Linux's zram makes it: the kernel's compressed sizes (zram's lz4 on 6.12).

The kernel compresses with its own copy of the LZ4 1.8-series compressor
(lib/lz4); liblz4 1.9.x, python-lz4's, makes different match-finding choices,
so the two disagree on most pages by a few bytes (that one is ``lz4-lib``,
:mod:`compressors.backend_liblz4`).  This backend compresses with
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
from compressors.base import KERNEL, Compressor, Data, int_option, no_more

__all__ = ["Lz4"]


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


class Lz4(Compressor):
    """lz4 as Linux 6.12's zram makes it; ``acceleration`` 1 (default) .. 65537."""

    name = "lz4"
    version = f"{KERNEL} lib/lz4 (1.8 series), {IMPLEMENTATION}"
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

    def inexact_because(self) -> str | None:
        # zram passes its default acceleration, 1; others follow the same rules
        # but only 1 was checked against the kernel's own sizes.
        if self._accel != 1:
            return f"acceleration {self._accel}: only the kernel's default, 1, is checked"
        return None
