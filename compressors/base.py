"""The one interface every backend has, and the checks they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from compressors.errors import CompressorOptionError, CorruptDataError

__all__ = ["KERNEL", "Compressor", "Data"]

Data = bytes | bytearray | memoryview

#: The kernel whose zram the exact backends reproduce, compressed size for
#: compressed size (checked page by page against its own, tests/compressors).
KERNEL = "Linux 6.12"


class Compressor(ABC):
    """Compresses and decompresses single pages; safe to share between threads.

    Attributes:
        name: the registry name ("lz4", "zstd", ...), as zram's comp_algorithm.
        version: what makes its output: library and version ("libzstd 1.5.6"),
            or the kernel code it reproduces; sizes depend on it, so figures
            are only comparable between equal versions.
        options: the options the backend was built with, defaults filled in.
    """

    name: ClassVar[str]
    version: ClassVar[str]

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options: dict[str, Any] = dict(options)

    @abstractmethod
    def compress(self, page: Data) -> bytes:
        """The compressed form of ``page`` (no size prefix: pages have a fixed size)."""

    @abstractmethod
    def _decompress(self, data: Data, size: int) -> bytes:
        """Backend's decompression; may raise its library's errors."""

    #: Library exceptions that mean "this is not valid compressed data".
    _errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def decompress(self, data: Data, size: int) -> bytes:
        """Exactly ``size`` bytes from ``data``.

        Raises:
            CorruptDataError: the data does not decompress, or not to ``size`` bytes.
        """
        try:
            out = self._decompress(data, size)
        except self._errors as exc:
            raise CorruptDataError(f"{self.name}: cannot decompress: {exc}") from exc
        if len(out) != size:
            raise CorruptDataError(f"{self.name}: decompressed to {len(out)} bytes, not {size}")
        return out

    def inexact_because(self) -> str | None:
        """Why its compressed sizes may differ from :data:`KERNEL`'s zram with
        the same algorithm and options; None when they are the kernel's."""
        return "not checked against the kernel's"

    @property
    def kernel_exact(self) -> bool:
        """Every page compresses to the size :data:`KERNEL`'s zram gives it."""
        return self.inexact_because() is None

    @property
    def fidelity(self) -> str:
        """``"exact for Linux 6.12"`` or ``"not kernel-exact: <why>"``."""
        why = self.inexact_because()
        return f"exact for {KERNEL}" if why is None else f"not kernel-exact: {why}"

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k != "dictionary")
        return f"{type(self).__name__}({opts})"


def int_option(options: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """Pop an integer option and check its range."""
    value = options.pop(key, default)
    if type(value) is not int or not low <= value <= high:
        raise CompressorOptionError(f"{key} must be an int in {low}..{high}, not {value!r}")
    return value


def no_more(name: str, options: dict[str, Any]) -> None:
    """Refuse options a backend did not take."""
    if options:
        raise CompressorOptionError(f"{name} takes no option {', '.join(sorted(options))}")
