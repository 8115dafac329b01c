"""Size classes: which slot size an object of a given length is stored in.

zsmalloc rounds every object up to a *class size* and packs objects of one class
back to back in zspages.  For a class of size S it picks the number of pages per
zspage (1..chain_size) that leaves the smallest tail after the last whole object,
since that tail is wasted for the zspage's whole life.  A few rows at chain size 8:

    size  pages  objs  tail      size  pages  objs  tail
      32      1   128     0      2448      3     5    48
      48      3   256     0      3264      4     5    64
     208      3    59    16      3632      8     9    80
    1008      1     4    64      3648      1     1   448  <- huge: one per page

(The kernel skips the search for powers of two: one page divides evenly.)
Classes whose (pages_per_zspage, objs_per_zspage) come out equal behave the
same, so the smaller is merged into the larger, as ``zs_create_pool`` does: at
chain 4, 8 and 16 the kernel's 255 classes collapse to 69, 119 and 192.

A class with one object in a one-page zspage is *huge*: its object fills the
page and carries no header.  ``huge_class_size`` is the smallest object length
that lands there; zram stores any page that compresses to that or more raw.

Today's kernel prefixes every non-huge object with an 8-byte header holding its
handle (so compaction can tell who owns an object).  A table built with
``header=8`` reproduces the kernel byte for byte; ``header=0``, a finer ``step``
or explicit ``sizes`` (see :func:`fit_class_sizes`) are zswapd's improvements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from allocator.arena import PAGE_SIZE

__all__ = [
    "KERNEL_HEADER",
    "MAX_CHAIN_SIZE",
    "ZS_MIN_ALLOC_SIZE",
    "ClassSpec",
    "ClassTable",
    "best_pages_per_zspage",
    "fit_class_sizes",
]

# The kernel's smallest class: room for a free-list link and a handle header
# with sizes kept a multiple of 16 (PAGE_SIZE >> CLASS_BITS).
ZS_MIN_ALLOC_SIZE = 32
KERNEL_STEP = PAGE_SIZE >> 8
KERNEL_HEADER = 8
# CONFIG_ZSMALLOC_CHAIN_SIZE accepts 4..16; we also allow shorter chains (down to
# 1) for experiments, where every class is a one-page zspage.
MAX_CHAIN_SIZE = 16
# Objects start on 8-byte boundaries so that the in-place free-list link (one
# 64-bit word) never straddles two pages.
_ALIGN = 8


@dataclass(frozen=True, slots=True)
class ClassSpec:
    """One distinct size class.

    Attributes:
        index: the kernel's class index (the largest index among those merged).
        size: slot size in bytes, header included.
        pages_per_zspage: pages linked into one zspage of this class.
        objs_per_zspage: slots in one zspage.
        huge: one object per one-page zspage; stored without a header.
    """

    index: int
    size: int
    pages_per_zspage: int
    objs_per_zspage: int

    @property
    def huge(self) -> bool:
        return self.pages_per_zspage == 1 and self.objs_per_zspage == 1


def best_pages_per_zspage(size: int, chain_size: int) -> int:
    """Pages per zspage that waste least for ``size`` (the kernel's rule).

    Ties go to the fewer pages; a power of two always takes one page.
    """
    if size & (size - 1) == 0:
        return 1
    best, least = 1, PAGE_SIZE
    for pages in range(1, chain_size + 1):
        waste = (pages * PAGE_SIZE) % size
        if waste < least:
            best, least = pages, waste
    return best


@dataclass(frozen=True)
class ClassTable:
    """The classes of one pool and the lookup from object length to class.

    Attributes:
        classes: distinct classes, ascending by size.
        header: bytes prefixed to every non-huge object.
        chain_size: the longest zspage, in pages.
        huge_class_size: the smallest object length stored in a huge class.
        lookup: ``lookup[n]`` is the position in ``classes`` for an object of
            ``n`` bytes (0 < n <= 4096), header already accounted for.
    """

    classes: tuple[ClassSpec, ...]
    header: int
    chain_size: int
    huge_class_size: int
    lookup: tuple[int, ...]

    @classmethod
    def kernel(cls, chain_size: int = 8) -> ClassTable:
        """The kernel's table: 32..4096 by 16, 8-byte header, merged classes."""
        return cls.build(chain_size=chain_size, step=KERNEL_STEP, header=KERNEL_HEADER)

    @classmethod
    def build(
        cls,
        *,
        chain_size: int = 8,
        step: int = KERNEL_STEP,
        header: int = KERNEL_HEADER,
        sizes: Iterable[int] | None = None,
        merge: bool = True,
    ) -> ClassTable:
        """Build a table from a step (``min, min+step, ..., 4096``) or explicit sizes.

        Args:
            chain_size: longest zspage in pages, 1..16.
            step: distance between class sizes when ``sizes`` is not given.
            header: in-object header bytes (8 as the kernel, or 0).
            sizes: explicit class sizes (header included); 4096 is always added.
            merge: merge classes with equal (pages, objects) as the kernel does.

        Raises:
            ValueError: a parameter out of range.
        """
        if not 1 <= chain_size <= MAX_CHAIN_SIZE:
            raise ValueError(f"chain_size must be 1..{MAX_CHAIN_SIZE}, not {chain_size}")
        if header not in (0, KERNEL_HEADER):
            raise ValueError(f"header must be 0 or {KERNEL_HEADER}, not {header}")
        if sizes is None:
            if step < _ALIGN or step % _ALIGN:
                raise ValueError(f"step must be a positive multiple of {_ALIGN}, not {step}")
            count = -(-(PAGE_SIZE - ZS_MIN_ALLOC_SIZE) // step) + 1
            raw = [min(ZS_MIN_ALLOC_SIZE + i * step, PAGE_SIZE) for i in range(count)]
        else:
            raw = sorted(set(sizes) | {PAGE_SIZE})
            bad = [s for s in raw if s < 2 * _ALIGN or s > PAGE_SIZE or s % _ALIGN]
            if bad:
                raise ValueError(f"class sizes must be multiples of 8 in 16..4096: {bad[:5]}")
        return cls._from_sizes(raw, chain_size=chain_size, header=header, merge=merge)

    @classmethod
    def _from_sizes(
        cls, raw: Sequence[int], *, chain_size: int, header: int, merge: bool
    ) -> ClassTable:
        # Walk from the largest class down, as zs_create_pool does, so that a
        # merged size points at the larger class it shares a shape with.
        owner_of_index: list[ClassSpec] = [None] * len(raw)  # type: ignore[list-item]
        prev: ClassSpec | None = None
        largest_non_huge = 0
        for i in range(len(raw) - 1, -1, -1):
            size = raw[i]
            pages = best_pages_per_zspage(size, chain_size)
            objs = pages * PAGE_SIZE // size
            if not largest_non_huge and not (pages == 1 and objs == 1):
                largest_non_huge = size
            if (
                merge
                and prev is not None
                and (prev.pages_per_zspage, prev.objs_per_zspage)
                == (
                    pages,
                    objs,
                )
            ):
                owner_of_index[i] = prev
                continue
            prev = ClassSpec(i, size, pages, objs)
            owner_of_index[i] = prev
        distinct = sorted(set(owner_of_index), key=lambda c: c.size)
        position = {spec: n for n, spec in enumerate(distinct)}
        # An object one byte past the largest non-huge slot (header included)
        # is the first to go huge; with no non-huge class every object is huge.
        huge_class_size = largest_non_huge - header + 1 if largest_non_huge else 1
        lookup = [0] * (PAGE_SIZE + 1)
        i = 0
        for n in range(1, PAGE_SIZE + 1):
            need = min(n + header, PAGE_SIZE)
            while raw[i] < need:
                i += 1
            lookup[n] = position[owner_of_index[i]]
        return cls(tuple(distinct), header, chain_size, huge_class_size, tuple(lookup))

    def class_for(self, length: int) -> ClassSpec:
        """The class an object of ``length`` bytes is stored in."""
        return self.classes[self.lookup[length]]

    def class_index(self, length: int) -> int:
        """The kernel's ``zs_lookup_class_index(length)``: the index of the
        class for ``length`` bytes *without* the header (zram asks it of the raw
        compressed length, while zs_malloc adds the header before its lookup)."""
        if not 0 < length <= PAGE_SIZE:
            raise ValueError(f"length must be 1..{PAGE_SIZE}, not {length}")
        return self.classes[self.lookup[max(1, length - self.header)]].index


def fit_class_sizes(
    lengths: Iterable[int],
    *,
    chain_size: int = 8,
    header: int = 0,
    objects: int | None = None,
) -> list[int]:
    """Class sizes that hold the observed object lengths in the fewest pages.

    The kernel's own comment is that its class sizes "should be empirically
    determined".  This determines them: given a sample of object lengths, it
    picks, among sizes that are multiples of 8, the set of classes that minimises
    the pages needed to hold ``objects`` objects distributed like the sample,
    every class paying for its zspage tail and its last, partly filled zspage.
    The search is a dynamic programme over the 511 candidate sizes (O(511**2)).

    Args:
        lengths: observed object lengths (1..4096).
        chain_size: the pool's longest zspage.
        header: the pool's in-object header.
        objects: how many objects the pool is expected to hold (default: as
            many as the sample).

    Returns:
        Ascending class sizes, 4096 included.
    """
    sample = [min(PAGE_SIZE, n + header) for n in lengths if 0 < n <= PAGE_SIZE]
    candidates = list(range(2 * _ALIGN, PAGE_SIZE + 1, _ALIGN))
    if not sample:
        return [PAGE_SIZE]
    scale = (objects or len(sample)) / len(sample)
    counts = [0] * len(candidates)
    for need in sample:
        counts[max(0, -(-need // _ALIGN) - 2)] += 1
    prefix = [0.0]
    for c in counts:
        prefix.append(prefix[-1] + c * scale)
    shape = []
    for size in candidates:
        pages = best_pages_per_zspage(size, chain_size)
        shape.append((pages, pages * PAGE_SIZE // size))
    # best[j]: fewest pages for every object up to candidates[j], with a class there.
    inf = float("inf")
    best = [inf] * len(candidates)
    back = [-1] * len(candidates)
    for j, (pages, objs) in enumerate(shape):
        for i in range(-1, j):
            below = best[i] if i >= 0 else 0.0
            if below == inf:
                continue
            n = prefix[j + 1] - prefix[i + 1]
            cost = below + -(-n // objs) * pages if n else below
            if cost < best[j]:
                best[j], back[j] = cost, i
    sizes = []
    j = len(candidates) - 1
    while j >= 0:
        sizes.append(candidates[j])
        j = back[j]
    return sorted(sizes)
