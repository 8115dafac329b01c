"""The registry: backends by name, those whose library imports."""

from __future__ import annotations

import importlib
from typing import Any

from compressors.base import Compressor
from compressors.errors import UnknownCompressorError

__all__ = ["available", "get"]

# name -> (module, class).  A backend whose module fails to import (its library
# is not installed) drops out, as a kernel built without CONFIG_ZRAM_BACKEND_X.
_BACKENDS = {
    "lz4": ("compressors.backend_lz4", "Lz4"),  # the kernel's own lz4
    "lz4-lib": ("compressors.backend_liblz4", "Lz4Lib"),  # userspace liblz4
    "lz4hc": ("compressors.backend_liblz4", "Lz4HC"),
    "zstd": ("compressors.backend_zstd", "Zstd"),
    "deflate": ("compressors.backend_deflate", "Deflate"),
    "lzo": ("compressors.backend_lzo", "Lzo"),
}


def _load() -> dict[str, type[Compressor]]:
    found: dict[str, type[Compressor]] = {}
    for name, (module, cls) in _BACKENDS.items():
        try:
            found[name] = getattr(importlib.import_module(module), cls)
        except ImportError:
            continue
    return found


_LOADED = _load()


def available() -> list[str]:
    """Names of the backends usable here, in the registry's order."""
    return list(_LOADED)


def get(name: str, **options: Any) -> Compressor:
    """A compressor of backend ``name`` with ``options`` (level, acceleration, ...).

    Raises:
        UnknownCompressorError: no such backend here.
        CompressorOptionError: an option it does not take, or out of range.
    """
    try:
        cls = _LOADED[name]
    except KeyError:
        known = ", ".join(available())
        raise UnknownCompressorError(f"no compressor {name!r} here; available: {known}") from None
    return cls(**options)
