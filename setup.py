"""Builds the optional compiled allocator (allocator/_zsmalloc.pyx) beside the pure one.

Everything else is in pyproject.toml.  The extension is optional, as CPython's
``_heapq`` is to ``heapq``: where there is no C compiler, no Cython, or the
build fails for any other reason, the install still succeeds with one warning
and ``allocator`` uses the pure-Python ZsPool (``allocator.ACCELERATED`` says
which one runs, and why).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WARNING = "zswapd: the compiled allocator was not built ({}); the pure-Python one will be used"


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        print(WARNING.format(f"Cython is missing: {exc}"), file=sys.stderr)
        return []
    ext = Extension("allocator._zsmalloc", ["allocator/_zsmalloc.pyx"])
    # ZSWAPD_BUILD_DIR: where generated C goes (the ASan build keeps its own).
    return cythonize(
        [ext],
        language_level=3,
        build_dir=os.environ.get("ZSWAPD_BUILD_DIR") or None,
        quiet=True,
    )


class OptionalBuildExt(build_ext):
    """build_ext that turns any compiler failure into one warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all, or a broken toolchain
            print(WARNING.format(exc), file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(WARNING.format(exc), file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
