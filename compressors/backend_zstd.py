"""zstd through python-zstandard: levels (negative ones too) and a trained dictionary.

Frames carry the content size and no checksum, as the kernel's zstd backend
writes them (python-zstandard at level 3 then matches a real zram's compressed
sizes to within 0.03% in total).  A ZstdCompressor is not thread-safe, so each
thread gets its own compression and decompression context, reused across calls.

A dictionary (zram's ``algorithm_params algo=zstd dict=...``) is trained from
sample pages with :func:`train_dictionary` and passed as ``dictionary=``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import zstandard

from compressors.base import Compressor, Data, int_option, no_more
from compressors.errors import CompressorOptionError

__all__ = ["Zstd", "train_dictionary"]

# zstd's fastest negative level; ZSTD_maxCLevel() is 22.
_MIN_LEVEL = -(1 << 17)


def train_dictionary(pages: Iterable[bytes], size: int = 64 * 1024) -> bytes:
    """A zstd dictionary of ``size`` bytes trained on sample pages.

    Raises:
        CompressorOptionError: too few or too uniform samples to train on.
    """
    samples: list[bytes | bytearray | memoryview] = [bytes(p) for p in pages]
    try:
        return zstandard.train_dictionary(size, samples).as_bytes()
    except zstandard.ZstdError as exc:
        raise CompressorOptionError(f"cannot train a zstd dictionary: {exc}") from exc


class Zstd(Compressor):
    """zstd, ``level`` -131072..22 (default 3, the kernel's), optional ``dictionary`` bytes."""

    name = "zstd"
    _errors = (zstandard.ZstdError,)

    def __init__(self, **options: Any) -> None:
        level = int_option(options, "level", 3, _MIN_LEVEL, zstandard.MAX_COMPRESSION_LEVEL)
        dictionary = options.pop("dictionary", None)
        no_more(self.name, options)
        if dictionary is not None and not isinstance(dictionary, bytes | bytearray):
            raise CompressorOptionError("dictionary must be bytes")
        super().__init__({"level": level, "dictionary": dictionary})
        self._dict = (
            zstandard.ZstdCompressionDict(bytes(dictionary)) if dictionary is not None else None
        )
        if self._dict is not None:
            try:
                self._dict.precompute_compress(level=level)
            except zstandard.ZstdError as exc:
                raise CompressorOptionError(f"not a usable zstd dictionary: {exc}") from exc
        self._level = level
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        try:
            return self._local.ctx  # type: ignore[no-any-return]
        except AttributeError:
            if self._dict is not None:
                ctx = (
                    zstandard.ZstdCompressor(level=self._level, dict_data=self._dict),
                    zstandard.ZstdDecompressor(dict_data=self._dict),
                )
            else:
                ctx = (zstandard.ZstdCompressor(level=self._level), zstandard.ZstdDecompressor())
            self._local.ctx = ctx
            return ctx

    def compress(self, page: Data) -> bytes:
        return self._contexts()[0].compress(page)

    def _decompress(self, data: Data, size: int) -> bytes:
        return self._contexts()[1].decompress(data, max_output_size=size, allow_extra_data=False)
