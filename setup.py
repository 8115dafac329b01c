"""Compiled accelerators, each optional: a failed build leaves the pure-Python path.

Everything else about the package is in pyproject.toml; this file only adds the
extension modules.  Each has a pure-Python twin that is the reference (for
compressors._lz4k, compressors/lz4k.py), so a machine without a C compiler or
without Cython still installs and runs, only slower.  Build in place with
``python3 setup.py build_ext --inplace``.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# name -> the Cython source, relative to this file.
ACCELERATORS = {
    "compressors._lz4k": "compressors/_lz4k.pyx",
}


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("zswapd: Cython not found; using the pure-Python compressors", file=sys.stderr)
        return []
    exts = [
        Extension(name, [src], extra_compile_args=["-O3", "-g0"])
        for name, src in ACCELERATORS.items()
    ]
    try:
        return list(cythonize(exts, language_level=3, quiet=True))
    except Exception as exc:  # a Cython error must not fail the install
        print(f"zswapd: cannot translate the accelerators ({exc}); pure Python", file=sys.stderr)
        return []


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing, so the install always succeeds."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            print(f"zswapd: accelerators not built ({exc}); pure Python", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # this one failed to compile
            print(f"zswapd: {ext.name} not built ({exc}); pure Python", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
