"""One behaviour: the page store's compiled batch loops against the pure reference.

A hypothesis state machine keeps two entry tables and two allocators, built
alike (the same seed, budget, page limit, LRU or not), and runs the same random
batches through zswapd.batch on one side and zswapd._batch on the other:
splits of good and bad batches, stores of same-filled, compressible and
incompressible pages (some refused midway by the budget, the allocator's page
cap or the pool's limit, and undone; the high-water mark moved all the same),
loads of live, freed and forged handles (decoded into a list and into one
answer after a header), objects overwritten behind the table's back (so that
they decode to other bytes or fail to), frees.  After every step
the two must agree on everything: each call's value, or its error's type and
message; the table's columns, the handle table's arrays, free chain and
unused random words, the LRU ring, the budget, the allocator's class table.

The reference side always runs the pure allocator; the compiled side runs the
compiled one or the pure one, and both the kernel lz4 (compiled) or another
compressor: so the compiled loops' C calls (into allocator._zsmalloc and
compressors._lz4k) and their Python calls are both driven against the
reference.

Skipped when the extension is not built (saying how to build it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

import compressors
from allocator import PageBudget, zsmalloc
from allocator.handles import SLOT_MASK
from compressors.backend_lz4 import Lz4
from zswapd import batch
from zswapd.entries import COMPRESSED, ENCODING, HUGE, EntryTable

try:
    from zswapd import _batch
except ImportError as exc:
    pytest.skip(
        f"the compiled page store loops are not built ({exc}): "
        "python3 setup.py build_ext --inplace",
        allow_module_level=True,
    )

from allocator import _zsmalloc  # built with _batch, which calls it in C

PAGE = 4096
LZ4 = compressors.get("lz4")
# The kernel lz4 (compiled: C calls), python-lz4's lz4 and zstd (Python calls).
COMPRESSORS = [LZ4, compressors.get("lz4-lib"), compressors.get("zstd")]
HUGE_SIZE = zsmalloc.ZsPool().huge_class_size

# A page: one word repeated (zero often), text-like (compresses), or random (huge).
WORDS = st.one_of(st.just(0), st.integers(0, 2**64 - 1))
PAGES = st.one_of(
    WORDS.map(lambda w: w.to_bytes(8, "little") * (PAGE // 8)),
    st.binary(min_size=1, max_size=64).map(lambda b: (b * PAGE)[:PAGE]),
    st.integers(0, 2**32).map(lambda seed: os.urandom(PAGE)),
    # Same-filled but for one byte: the memcmp must see it.
    st.tuples(WORDS, st.integers(0, PAGE - 1)).map(
        lambda t: bytes(
            b ^ (i == t[1]) for i, b in enumerate(t[0].to_bytes(8, "little") * (PAGE // 8))
        )
    ),
)
FORGED = st.one_of(
    st.sampled_from([0, -1, 1, 2**24, 2**64, 2**80, "1", None, 3.5, True]),
    st.integers(-(2**70), 2**70),
)


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call did: its value, or its error's type and message."""
    try:
        return ("ok", call())
    except Exception as exc:  # every error must match, whatever it is
        return ("raised", type(exc), str(exc))


def plain(value: Any) -> Any:
    """A value with its buffers as bytes (the compiled split hands out memoryviews)
    and the compiled loops' batches (Prepared, Raw) as the reference's lists."""
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, _batch.Prepared | _batch.Raw):
        return plain(list(value))
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


class Side:
    """One implementation's state: a table, an allocator, a budget."""

    def __init__(
        self,
        paths: Any,
        lru: bool,
        budget: int | None,
        max_pages: int | None,
        limit_pages: int | None = None,
        compiled_alloc: bool = False,
        comp: compressors.Compressor = LZ4,
    ) -> None:
        self.paths = paths
        self.limit_pages = limit_pages
        self.comp = comp
        self.high = [0]  # the pool's mem_used_max
        self.budget = PageBudget(budget)
        pool = _zsmalloc.ZsPool if compiled_alloc else zsmalloc.ZsPool
        self.alloc = pool(seed=3, budget=self.budget, max_pages=max_pages)
        self.entries = EntryTable(seed=7, budget=self.budget, lru=lru)

    def state(self) -> tuple[Any, ...]:
        e, h = self.entries, self.entries._handles
        cols = [c.tolist() for c in e._columns()]
        return (
            cols,
            h._loc.tolist(),
            h._gen.tolist(),
            h._free,
            h.live,
            h._random.tolist(),
            e.lru_len,
            e.charged,
            e._frees,
            self.budget.used,
            self.alloc.class_stats(),
            self.alloc.total_size_bytes,
            self.high,
        )


class OneBehaviour(RuleBasedStateMachine):
    """The reference and the compiled loops, side by side."""

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.sides = [Side(batch, False, None, None), Side(_batch, False, None, None)]
        self.now = 0

    def both(self, call: Callable[[Side], Any]) -> tuple[Any, ...]:
        want, got = (plain(outcome(lambda side=side: call(side))) for side in self.sides)
        assert got == want, (got, want)
        return want

    @initialize(
        lru=st.booleans(),
        budget=st.one_of(st.none(), st.integers(0, 40)),
        max_pages=st.one_of(st.none(), st.integers(0, 40)),
        limit_pages=st.one_of(st.none(), st.integers(0, 12)),
        compiled_alloc=st.booleans(),
        comp=st.sampled_from(COMPRESSORS),
    )
    def build(
        self,
        lru: bool,
        budget: int | None,
        max_pages: int | None,
        limit_pages: int | None,
        compiled_alloc: bool,
        comp: compressors.Compressor,
    ) -> None:
        self.sides = [
            Side(batch, lru, budget, max_pages, limit_pages, False, comp),
            Side(_batch, lru, budget, max_pages, limit_pages, compiled_alloc, comp),
        ]

    @rule(pages=st.lists(PAGES, min_size=1, max_size=12), whole=st.booleans())
    def split(self, pages: list[bytes], whole: bool) -> None:
        given: Any = b"".join(pages) if whole else pages
        self.both(lambda s: s.paths.split_pages(given))

    @rule(n=st.sampled_from([0, 1, 4095, 4097, 8191]), as_list=st.booleans())
    def split_a_bad_batch(self, n: int, as_list: bool) -> None:
        given: Any = [bytes(n)] if as_list else bytes(n)
        self.both(lambda s: s.paths.split_pages(given))

    @rule(
        target=handles,
        pages=st.lists(PAGES, min_size=0, max_size=12),
        whole=st.booleans(),
        tick=st.integers(0, 3),
    )
    def store(self, pages: list[bytes], whole: bool, tick: int) -> Any:
        self.now += tick
        given: Any = b"".join(pages) if whole and pages else pages

        def run(s: Side) -> list[int]:
            split = s.paths.split_pages(given) if given else []
            prepared, poor, same, compr = s.paths.prepare(split, s.comp, HUGE_SIZE)
            handles: list[int] = s.paths.add_entries(
                s.entries, prepared, s.alloc, self.now, s.limit_pages, s.high
            )
            return [handles, poor, same, compr]  # type: ignore[list-item]

        result = self.both(run)
        return tuple(result[1][0]) if result[0] == "ok" else ()

    @rule(
        stored=handles,
        forged=st.lists(FORGED, max_size=2),
        tick=st.integers(0, 3),
        data=st.data(),
    )
    def load(self, stored: tuple[int, ...], forged: list[Any], tick: int, data: Any) -> None:
        self.now += tick
        handles = data.draw(st.permutations(list(stored) + forged))

        def run(s: Side) -> Any:
            slots, raw, same, written = s.paths.read_entries(s.entries, handles, s.alloc, self.now)
            other = lambda kind, d: s.comp.decompress(d, PAGE)  # noqa: E731
            listed = outcome(lambda: s.paths.decode(raw, s.comp, other))
            # The same pages after a header, in one answer (the wire's LOAD).
            framed = outcome(lambda: s.paths.decode_frame(raw, s.comp, other, b"head"))
            if listed[0] == "ok":
                assert framed == ("ok", b"head" + b"".join(listed[1]))
            else:
                assert framed == listed
            return slots, raw, same, written, listed

        self.both(run)

    @rule(stored=handles, data=st.data())
    def overwrite(self, stored: tuple[int, ...], data: Any) -> None:
        """An object's bytes changed behind the table's back (as a hostile write
        to the pool's memory would): both sides alike, so their loads must agree."""
        ref = self.sides[0]
        live = [
            h & SLOT_MASK
            for h in stored
            if ref.entries.kind[h & SLOT_MASK] & ENCODING in (COMPRESSED, HUGE)
        ]
        if not live:
            return
        slot = data.draw(st.sampled_from(live))
        obj, clen = ref.entries.obj[slot], ref.entries.clen[slot]
        old = ref.alloc.obj_read(obj, clen)
        new = data.draw(
            st.one_of(
                st.binary(min_size=clen, max_size=clen),
                st.tuples(st.integers(0, clen - 1), st.integers(0, 255)).map(
                    lambda t: old[: t[0]] + bytes([t[1]]) + old[t[0] + 1 :]
                ),
            )
        )
        for s in self.sides:
            s.alloc.obj_write(obj, new)

    @rule(stored=consumes(handles))
    def free(self, stored: tuple[int, ...]) -> None:
        # A free as the pool's (entry, object, then a trim), the same code both sides.
        self.both(lambda s: batch.undo(s.entries, list(stored), s.alloc.free))

    @invariant()
    def same_state(self) -> None:
        self.both(lambda s: s.state())


OneBehaviour.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_page_store_loops_behave_as_the_reference = OneBehaviour.TestCase


def test_the_compiled_loops_run_unless_pure_python_is_asked_for() -> None:
    from zswapd import fastpath

    pure = os.environ.get("ZSWAPD_PURE_PYTHON") == "1"
    assert fastpath.ACCELERATED is not pure
    assert fastpath.batch() is (batch if pure else _batch)


def test_the_c_calls_are_taken_for_exactly_the_compiled_lz4_and_pool() -> None:
    pages = [bytes(PAGE), b"text " * 819 + b"t", os.urandom(PAGE)]
    compiled_pool = _zsmalloc.ZsPool(seed=1)

    class SubLz4(Lz4):
        pass

    class SubPool(_zsmalloc.ZsPool):
        pass

    kernel_compiled = compressors.backend_lz4.IMPLEMENTATION == "compiled"
    for comp, in_c in ((LZ4, kernel_compiled), (SubLz4(), False), (COMPRESSORS[1], False)):
        prepared, poor, same, _ = _batch.prepare(pages, comp, HUGE_SIZE)
        assert isinstance(prepared, _batch.Prepared) is in_c
        assert (poor, same) == (1, 1)
    for alloc, in_c in (
        (compiled_pool, True),
        (SubPool(seed=1), False),
        (zsmalloc.ZsPool(), False),
    ):
        entries = EntryTable(seed=7)
        prepared = _batch.prepare(pages, LZ4, HUGE_SIZE)[0]
        handles = _batch.add_entries(entries, prepared, alloc, 0, None, [0])
        raw = _batch.read_entries(entries, handles, alloc, 0)[1]
        assert isinstance(raw, _batch.Raw) is in_c
        assert _batch.decode(raw, LZ4, None) == pages
        assert _batch.decode_frame(raw, LZ4, None, b"h") == b"h" + b"".join(pages)


def test_a_failed_allocator_build_leaves_the_loops_unbuilt_and_pure(tmp_path: Path) -> None:
    # The loops call the compiled allocator in C: when it fails to compile, they
    # are not built (never built to fail on import), and the rest still is.
    repo = Path(__file__).resolve().parents[2]
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(repo / name, tmp_path)
    for package in ("allocator", "compressors", "zswapd"):
        shutil.copytree(
            repo / package, tmp_path / package, ignore=shutil.ignore_patterns("*.so", "*.c")
        )
    with open(tmp_path / "allocator" / "_zsmalloc.pyx", "a") as f:
        f.write('\ncdef extern from *:\n    """\n    #error broken on purpose\n    """\n')
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        # Unoptimised: only whether each builds matters here.
        env={**os.environ, "ZSWAPD_DEBUG_BUILD": "1", "CFLAGS": "-O0"},
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert "zswapd._batch not built (it calls allocator._zsmalloc in C" in build.stderr
    assert not list((tmp_path / "allocator").glob("*.so"))
    assert not list((tmp_path / "zswapd").glob("*.so"))
    assert list((tmp_path / "compressors").glob("_lz4k*.so"))
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if '__editable__' not in getattr(f, '__module__', '')]; "
            "from zswapd import fastpath; print(fastpath.__file__, fastpath.describe())",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if k != "ZSWAPD_PURE_PYTHON"},
            "PYTHONPATH": str(tmp_path),
        },
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"{tmp_path}/zswapd/fastpath.py pure Python (not built")
