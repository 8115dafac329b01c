"""zstd through python-zstandard: levels (negative ones too) and a trained dictionary.

Frames carry the content size and no checksum, as the kernel's zstd backend
writes them.  With libzstd 1.5.6, the version Linux 6.12 carries (python-zstandard
0.23, which pyproject pins), level 3 gives every page the compressed size a real
6.12 zram gives it; libzstd 1.5.7 (python-zstandard 0.25) differs on some pages,
and the backend says so (:meth:`Zstd.inexact_because`).  A ZstdCompressor is
not thread-safe, so each thread gets its own compression and decompression
context, reused across calls.

A dictionary (zram's ``algorithm_params algo=zstd dict=...``) is trained from
sample pages with :func:`train_dictionary` and passed as ``dictionary=``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import zstandard

from compressors.base import KERNEL, Compressor, Data, int_option, no_more
from compressors.errors import CompressorOptionError

__all__ = ["Zstd", "train_dictionary"]

# zstd's fastest negative level; ZSTD_maxCLevel() is 22.
_MIN_LEVEL = -(1 << 17)
# The libzstd the kernel of compressors.KERNEL carries (lib/zstd).
KERNEL_LIBZSTD = (1, 5, 6)
_LIBZSTD = ".".join(map(str, zstandard.ZSTD_VERSION))


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
    version = f"libzstd {_LIBZSTD} (python-zstandard {zstandard.__version__})"
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

    def inexact_because(self) -> str | None:
        if zstandard.ZSTD_VERSION != KERNEL_LIBZSTD:
            kernel = ".".join(map(str, KERNEL_LIBZSTD))
            return f"libzstd {_LIBZSTD}, where {KERNEL} carries {kernel}"
        if self._dict is not None:
            return "a dictionary: not checked against the kernel's"
        if self._level != 3:
            return f"level {self._level}: only the kernel's default, 3, is checked"
        return None
