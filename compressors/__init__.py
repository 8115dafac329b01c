"""Compression backends for single 4096-byte pages, and their registry.

Stateless from the caller's view: ``get(name, **options)`` returns a
:class:`Compressor` that can be shared between threads (each thread gets its own
library context where the library has one).  Backends come from well-kept
libraries only: lz4 and lz4hc (python-lz4), zstd (python-zstandard, with levels,
negative levels and trained dictionaries), deflate (zlib) and lzo (python-lzo,
when installed).  A backend whose library is missing drops out of ``available()``.
"""

from __future__ import annotations

from compressors.backend_zstd import train_dictionary
from compressors.base import Compressor
from compressors.errors import (
    CompressorError,
    CompressorOptionError,
    CorruptDataError,
    UnknownCompressorError,
)
from compressors.registry import available, get

__all__ = [
    "Compressor",
    "CompressorError",
    "CompressorOptionError",
    "CorruptDataError",
    "UnknownCompressorError",
    "available",
    "get",
    "train_dictionary",
]
