"""A zsmalloc pool's options, checked by the names a caller gives them.

Both pools, the compiled (allocator/_zsmalloc.pyx) and the pure-Python
reference (allocator/zsmalloc.py), check their options here before anything
else, so that a bad option is refused with the same words by either: the
option as the caller wrote it (``class_step``, not the class table's ``step``)
and what it must be.  A wrong type is a TypeError, a value out of range a
ValueError.  JSON's true is no integer here, whatever Python thinks (``True ==
1``): an option that must be a number refuses a boolean, and one that must be
a boolean refuses a number.
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["ZSPOOL_DEFAULTS", "ZSPOOL_OPTIONS", "check_zspool_options"]

# What a caller may tune beyond chain_size and the page budget (max_pages,
# arena_pages, budget), with what each must be, as the errors say it.
ZSPOOL_OPTIONS: dict[str, str] = {
    "empty_cache": "an integer in 0..65536",
    "short_zspages": "true or false",
    "header": "0 or 8 (an integer)",
    "class_step": "a multiple of 8 in 8..4096 (an integer)",
    "class_sizes": "a non-empty list of integers, ascending, multiples of 8 in 16..4096",
    "merge_classes": "true or false",
    "seed": "an integer in 0..2**64-1",
}

# Every option :func:`check_zspool_options` takes, at ZsPool's defaults (zbud
# and z3fold accept zsmalloc's options and ignore them, but check them too).
ZSPOOL_DEFAULTS: dict[str, Any] = {
    "chain_size": 8,
    "max_pages": None,
    "empty_cache": 0,
    "short_zspages": False,
    "header": 8,
    "class_step": 16,
    "class_sizes": None,
    "merge_classes": True,
    "seed": None,
}

_CHAIN_SIZE = "an integer in 1..16"
# Emptied zspages a class may keep: far past any use, short of "never release".
_EMPTY_CACHE_MAX = 65536
_MAX_PAGES = "an integer >= 0, or None"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A refused value is quoted up to this many characters: a 200,000-entry list
# or a 3,600-digit seed must not come back whole in every refusal.
_QUOTED = 80


def _quoted(value: Any) -> str:
    said = repr(value)
    return said if len(said) <= _QUOTED else f"{said[: _QUOTED - 3]}..."


def _refuse(name: str, what: str, value: Any, *, kind: type[Exception]) -> Exception:
    return kind(f"{name} must be {what}, not {_quoted(value)}")


def _int(name: str, what: str, value: Any, ok: bool) -> None:
    if not _is_int(value):
        raise _refuse(name, what, value, kind=TypeError)
    if not ok:
        raise _refuse(name, what, value, kind=ValueError)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _refuse(name, ZSPOOL_OPTIONS[name], value, kind=TypeError)


def check_zspool_options(
    *,
    chain_size: Any,
    max_pages: Any,
    empty_cache: Any,
    short_zspages: Any,
    header: Any,
    class_step: Any,
    class_sizes: Any,
    merge_classes: Any,
    seed: Any,
) -> None:
    """Raise unless every option is what a zsmalloc pool takes.

    Raises:
        TypeError: an option of the wrong type (a boolean for a number, a
            string for an integer, ...), named as given.
        ValueError: an option out of range, named as given.
    """
    _int("chain_size", _CHAIN_SIZE, chain_size, _is_int(chain_size) and 1 <= chain_size <= 16)
    if max_pages is not None:
        _int("max_pages", _MAX_PAGES, max_pages, _is_int(max_pages) and max_pages >= 0)
    _int(
        "empty_cache",
        ZSPOOL_OPTIONS["empty_cache"],
        empty_cache,
        _is_int(empty_cache) and 0 <= empty_cache <= _EMPTY_CACHE_MAX,
    )
    _flag("short_zspages", short_zspages)
    _int("header", ZSPOOL_OPTIONS["header"], header, header in (0, 8))
    _int(
        "class_step",
        ZSPOOL_OPTIONS["class_step"],
        class_step,
        _is_int(class_step) and 0 < class_step <= 4096 and class_step % 8 == 0,
    )
    if class_sizes is not None:
        what = ZSPOOL_OPTIONS["class_sizes"]
        if not isinstance(class_sizes, list | tuple) or not all(map(_is_int, class_sizes)):
            raise _refuse("class_sizes", what, class_sizes, kind=TypeError)
        bad = [s for s in class_sizes if not 16 <= s <= 4096 or s % 8]
        if bad:
            raise ValueError(f"class_sizes must be {what}, not {_quoted(bad[:5])}")
        if not class_sizes:
            raise _refuse("class_sizes", what, class_sizes, kind=ValueError)
        # Unsorted or repeated sizes would build a table whose classes no size
        # finds (every page then stored huge), not a pool tuned some other way.
        for i, (a, b) in enumerate(itertools.pairwise(class_sizes)):
            if a >= b:
                raise ValueError(
                    f"class_sizes must be {what}, not {a} before {b} (at index {i + 1})"
                )
    _flag("merge_classes", merge_classes)
    if seed is not None:
        ok = _is_int(seed) and 0 <= seed < 1 << 64
        _int("seed", "an integer in 0..2**64-1, or None", seed, ok)
