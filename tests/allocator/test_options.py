"""A bad option is refused by its own name, in the same words, by the compiled
and the pure-Python zsmalloc pool (and by zbud and z3fold, which ignore
zsmalloc's options but check them)."""

from __future__ import annotations

from typing import Any

import pytest

from allocator import Z3foldPool, ZbudPool, zsmalloc
from tests.allocator.zspools import COMPILED

# (options, the exception's type, its message): a wrong type is a TypeError,
# a value out of range a ValueError; a boolean is no integer, nor 1 a boolean.
SIZES = "class_sizes must be a non-empty list of integers, ascending, multiples of 8 in 16..4096"

BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    (
        {"class_step": "8"},
        TypeError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not '8'",
    ),
    (
        {"class_step": 8.5},
        TypeError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not 8.5",
    ),
    (
        {"class_step": True},
        TypeError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not True",
    ),
    (
        {"class_step": None},
        TypeError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not None",
    ),
    (
        {"class_step": 12},
        ValueError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not 12",
    ),
    (
        {"class_step": 0},
        ValueError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not 0",
    ),
    (
        {"class_step": -8},
        ValueError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not -8",
    ),
    ({"chain_size": "8"}, TypeError, "chain_size must be an integer in 1..16, not '8'"),
    ({"chain_size": 17}, ValueError, "chain_size must be an integer in 1..16, not 17"),
    ({"max_pages": -1}, ValueError, "max_pages must be an integer >= 0, or None, not -1"),
    ({"max_pages": 1.5}, TypeError, "max_pages must be an integer >= 0, or None, not 1.5"),
    ({"empty_cache": True}, TypeError, "empty_cache must be an integer in 0..65536, not True"),
    ({"empty_cache": -1}, ValueError, "empty_cache must be an integer in 0..65536, not -1"),
    ({"header": False}, TypeError, "header must be 0 or 8 (an integer), not False"),
    ({"header": "8"}, TypeError, "header must be 0 or 8 (an integer), not '8'"),
    ({"header": 4}, ValueError, "header must be 0 or 8 (an integer), not 4"),
    ({"short_zspages": 1}, TypeError, "short_zspages must be true or false, not 1"),
    ({"merge_classes": "yes"}, TypeError, "merge_classes must be true or false, not 'yes'"),
    (
        {"class_sizes": "64"},
        TypeError,
        f"{SIZES}, not '64'",
    ),
    (
        {"class_sizes": [64, True]},
        TypeError,
        f"{SIZES}, not [64, True]",
    ),
    (
        {"class_sizes": [64, 8, 100]},
        ValueError,
        f"{SIZES}, not [8, 100]",
    ),
    ({"seed": "x"}, TypeError, "seed must be an integer in 0..2**64-1, or None, not 'x'"),
    # Degenerate pools a hostile client asked for: every page would go huge, a
    # class would never release, a seed would not fit a client's int64.
    ({"class_sizes": []}, ValueError, f"{SIZES}, not []"),
    (
        {"class_sizes": [4096, 16, 16]},
        ValueError,
        f"{SIZES}, not 4096 before 16 (at index 1)",
    ),
    (
        {"class_sizes": [16, 16]},
        ValueError,
        f"{SIZES}, not 16 before 16 (at index 1)",
    ),
    (
        {"class_step": 1 << 62},
        ValueError,
        "class_step must be a multiple of 8 in 8..4096 (an integer), not 4611686018427387904",
    ),
    (
        {"empty_cache": 10**18},
        ValueError,
        "empty_cache must be an integer in 0..65536, not 1000000000000000000",
    ),
    ({"seed": -1}, ValueError, "seed must be an integer in 0..2**64-1, or None, not -1"),
    (
        {"seed": 1 << 64},
        ValueError,
        "seed must be an integer in 0..2**64-1, or None, not 18446744073709551616",
    ),
    (
        {"class_sizes": list(range(16, 4097, 8)) * 2},
        ValueError,
        f"{SIZES}, not 4096 before 16 (at index 511)",
    ),
]


def test_a_huge_value_is_quoted_short() -> None:
    """A 3,600-digit seed comes back as its first characters, not whole."""
    for pool in [*_pools(), ZbudPool, Z3foldPool]:
        with pytest.raises(ValueError) as caught:
            pool(seed=1 << 12000)
        said = str(caught.value)
        assert said.startswith("seed must be an integer in 0..2**64-1, or None, not 229")
        assert said.endswith("...") and len(said) < 160


def _pools() -> list[Any]:
    return [zsmalloc.ZsPool] + ([COMPILED] if COMPILED is not None else [])


@pytest.mark.parametrize(("options", "kind", "said"), BAD, ids=[str(b[0]) for b in BAD])
def test_a_bad_option_is_refused_by_its_name_alike_by_every_pool(
    options: dict[str, Any], kind: type[Exception], said: str
) -> None:
    got = []
    for pool in [*_pools(), ZbudPool, Z3foldPool]:
        with pytest.raises(kind) as caught:
            pool(**options)
        got.append(str(caught.value))
    assert got == [said] * len(got)


def test_both_zsmalloc_pools_are_compared() -> None:
    if COMPILED is None:
        pytest.skip("the compiled pool is not built: python3 setup.py build_ext --inplace")
    assert len(_pools()) == 2


def test_good_options_still_build() -> None:
    for pool in _pools():
        p = pool(
            chain_size=4,
            max_pages=0,
            empty_cache=2,
            short_zspages=True,
            header=0,
            class_step=24,
            class_sizes=[64, 128],
            merge_classes=False,
            seed=7,
        )
        assert [c.size for c in p.table.classes] == [64, 128, 4096]
