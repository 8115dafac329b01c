"""deflate through zlib, with the kernel's parameters (zram's deflate backend).

Raw deflate (no zlib header), a 2 KiB window (windowBits 11) and memLevel 9, as
the kernel's backend_deflate sets them; ``level`` 1..9, default 6
(Z_DEFAULT_COMPRESSION).  zlib releases the GIL while it works.
"""

from __future__ import annotations

import zlib
from typing import Any

from compressors.base import Compressor, Data, int_option, no_more

__all__ = ["Deflate"]

_WINBITS = 11
_MEMLEVEL = 9


class Deflate(Compressor):
    """Raw deflate, ``level`` 1..9 (default 6)."""

    name = "deflate"
    version = f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    _errors = (zlib.error,)

    def __init__(self, **options: Any) -> None:
        level = int_option(options, "level", 6, 1, 9)
        no_more(self.name, options)
        super().__init__({"level": level})
        self._level = level

    def compress(self, page: Data) -> bytes:
        c = zlib.compressobj(self._level, zlib.DEFLATED, -_WINBITS, _MEMLEVEL)
        return c.compress(page) + c.flush()

    def _decompress(self, data: Data, size: int) -> bytes:
        d = zlib.decompressobj(-_WINBITS)
        out = d.decompress(data, size)
        # Data past the page, or a stream that has not ended, is not a page.
        if d.unconsumed_tail or d.unused_data or not d.eof:
            raise zlib.error("trailing or truncated deflate stream")
        return out
