"""Compression backends for single 4096-byte pages, and their registry.

Stateless from the caller's view: ``get(name, **options)`` returns a
:class:`Compressor` that can be shared between threads (each thread gets its own
library context where the library has one).  Backends: lz4
(Linux's own lz4, reproduced here: :mod:`compressors.lz4k`), lz4-lib and lz4hc
(python-lz4's liblz4), zstd (python-zstandard, with levels, negative levels and
trained dictionaries), deflate (zlib) and lzo (python-lzo, when installed).  A
backend whose library is missing drops out of ``available()``.

Each says what makes its output (``version``) and whether its compressed sizes
are those of :data:`KERNEL`'s zram (``kernel_exact``, ``fidelity``): lz4 and
zstd (with libzstd 1.5.6) are, page for page.
"""

from __future__ import annotations

from compressors.backend_zstd import train_dictionary
from compressors.base import KERNEL, Compressor
from compressors.errors import (
    CompressorError,
    CompressorOptionError,
    CorruptDataError,
    UnknownCompressorError,
)
from compressors.registry import available, get

__all__ = [
    "KERNEL",
    "Compressor",
    "CompressorError",
    "CompressorOptionError",
    "CorruptDataError",
    "UnknownCompressorError",
    "available",
    "get",
    "train_dictionary",
]
