"""lzo through python-lzo (LZO1X-1, the kernel's lzo), when it is installed.

zram's long-time default was lzo-rle, the kernel's own variant of LZO1X that
encodes runs of zeros specially; no binding of lzo-rle exists on PyPI, so it is
not offered (see the README).  python-lzo ships no wheels: it builds against
liblzo2 (Debian's liblzo2-dev), and when it is absent this backend drops out of
the registry.
"""

from __future__ import annotations

from typing import Any

import lzo as _lzo

from compressors.base import Compressor, Data, no_more

__all__ = ["Lzo"]


def _text(value: object) -> str:
    # python-lzo gives its versions as bytes.
    return value.decode() if isinstance(value, bytes) else str(value)


class Lzo(Compressor):
    """LZO1X-1 (``level`` 1, the kernel's) or LZO1X-999 (``level`` 9)."""

    name = "lzo"
    version = f"liblzo2 {_text(_lzo.LZO_VERSION_STRING)} (python-lzo {_text(_lzo.__version__)})"
    _errors = (_lzo.error,)

    def __init__(self, **options: Any) -> None:
        level = options.pop("level", 1)
        no_more(self.name, options)
        if level not in (1, 9):
            from compressors.errors import CompressorOptionError

            raise CompressorOptionError(f"level must be 1 or 9, not {level!r}")
        super().__init__({"level": level})
        self._level = level

    def compress(self, page: Data) -> bytes:
        return bytes(_lzo.compress(bytes(page), self._level, False))

    def _decompress(self, data: Data, size: int) -> bytes:
        return bytes(_lzo.decompress(bytes(data), False, size))
