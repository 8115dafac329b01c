"""Errors raised by the compressors.

The tree::

    CompressorError             root: anything a backend refuses or fails at
    ├── UnknownCompressorError  no backend of that name (or its library is missing)
    ├── CompressorOptionError   an option the backend does not take, or out of range
    └── CorruptDataError        data that does not decompress to a page of the size asked

Library errors (lz4's, zstandard's, zlib's) are wrapped, ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "CompressorError",
    "CompressorOptionError",
    "CorruptDataError",
    "UnknownCompressorError",
]


class CompressorError(Exception):
    """Root of every error the compressors raise on purpose."""


class UnknownCompressorError(CompressorError, KeyError):
    """No backend of that name is registered (or its library is not installed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CompressorOptionError(CompressorError, ValueError):
    """An option the backend does not take, or a value out of its range."""


class CorruptDataError(CompressorError):
    """The data did not decompress, or not to exactly the size asked."""
