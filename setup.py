"""Compiled accelerators, each optional: a failed build leaves the pure-Python path.

Everything else about the package is in pyproject.toml; this file only adds the
extension modules.  Each has a pure-Python twin that is the reference, as
CPython's ``_heapq`` is to ``heapq``: ``allocator._zsmalloc`` for
allocator/zsmalloc.py (``allocator.ACCELERATED`` says which runs, and why),
``compressors._lz4k`` for compressors/lz4k.py, ``zswapd._batch`` for
zswapd/batch.py (the page store's per-page loops; ``zswapd.fastpath`` says
which runs).  Where there is no C compiler,
no Cython, or a build fails for any other reason, the install still succeeds
with one warning per module.  Build in place with
``python3 setup.py build_ext --inplace``.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# name -> the Cython source, relative to this file; built in this order.
ACCELERATORS = {
    "allocator._zsmalloc": "allocator/_zsmalloc.pyx",
    "compressors._lz4k": "compressors/_lz4k.pyx",
    "zswapd._batch": "zswapd/_batch.pyx",
}
# The extensions whose C functions another calls (cimports, through their
# .pxd): built only when those were, so that it is never built to fail on
# import; unbuilt, its pure-Python twin runs (zswapd.fastpath).
NEEDS = {"zswapd._batch": ("allocator._zsmalloc", "compressors._lz4k")}


def _warn(what: str, exc: object) -> None:
    print(f"zswapd: {what} not built ({exc}); its pure-Python twin will be used", file=sys.stderr)


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn("the accelerators", f"Cython is missing: {exc}")
        return []
    # -g0: the wheel carries the modules without debug info (a sixth the size);
    # ZSWAPD_DEBUG_BUILD=1 (the ASan build) keeps the flags CFLAGS gives.
    extra = [] if os.environ.get("ZSWAPD_DEBUG_BUILD") == "1" else ["-O3", "-g0"]
    exts = [Extension(name, [src], extra_compile_args=extra) for name, src in ACCELERATORS.items()]
    try:
        # ZSWAPD_BUILD_DIR: where generated C goes (the ASan build keeps its own).
        return list(
            cythonize(
                exts,
                language_level=3,
                build_dir=os.environ.get("ZSWAPD_BUILD_DIR") or None,
                quiet=True,
            )
        )
    except Exception as exc:  # a Cython error must not fail the install
        _warn("the accelerators", exc)
        return []


class OptionalBuildExt(build_ext):
    """build_ext that turns any compiler failure into one warning."""

    def initialize_options(self) -> None:
        super().initialize_options()
        self._failed: set[str] = set()  # the extensions not built, by name

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all, or a broken toolchain
            _warn("the accelerators", exc)

    def copy_extensions_to_source(self) -> None:
        # --inplace: copy the ones built (setuptools would stop at the first missing).
        built = [ext for ext in self.extensions if ext.name not in self._failed]
        self.extensions, every = built, self.extensions
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every

    def build_extension(self, ext: Extension) -> None:
        missing = [name for name in NEEDS.get(ext.name, ()) if name in self._failed]
        if missing:
            self._failed.add(ext.name)
            _warn(ext.name, f"it calls {', '.join(missing)} in C, which was not built")
            return
        try:
            super().build_extension(ext)
        except Exception as exc:  # this one failed to compile
            self._failed.add(ext.name)
            _warn(ext.name, exc)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
