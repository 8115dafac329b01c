"""Sampling and its error bounds: a reservoir of a stream, 95% half-widths.

The statistics behind ``zswapd estimate --sample`` (see :mod:`zswapd.estimate`
for how a sample's figures are scaled); nothing here knows pages or pools.
"""

from __future__ import annotations

import math
import random
from typing import Generic, TypeVar

__all__ = ["Z95", "Reservoir", "count_bound", "mean_bound"]

# 95% two-sided normal quantile.
Z95 = 1.96

T = TypeVar("T")


class Reservoir(Generic[T]):
    """A uniform random sample of ``size`` items of a stream: only ``size`` items
    are ever held, however long the stream.

    Li's Algorithm L: once full, it draws how many items to skip before the
    next replacement, so a stream of P items costs about size x ln(P / size)
    random draws, not P (a 32 GiB process is 8 million pages).
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.items: list[T] = []
        self.seen = 0
        self._rng = rng
        self._w = 1.0
        self._next = 0

    def add(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            if len(self.items) == self.size:
                self._w = math.exp(math.log(self._uniform()) / self.size)
                self._next = self.seen + self._skip()
            return
        if self.seen == self._next:
            self.items[self._rng.randrange(self.size)] = item
            self._w *= math.exp(math.log(self._uniform()) / self.size)
            self._next += self._skip()

    def _uniform(self) -> float:
        """Uniform on (0, 1): a logarithm is taken of it."""
        u = 0.0
        while u == 0.0:
            u = self._rng.random()
        return u

    def _skip(self) -> int:
        """Items until the next one kept (1 or more)."""
        if self._w >= 1.0:
            return 1
        return int(math.log(self._uniform()) / math.log1p(-self._w)) + 1


def mean_bound(values_sum: float, squares_sum: float, n: int, population: int) -> float:
    """95% half-width of population x mean, from a sample's sum and sum of squares."""
    if n < 2 or n >= population:
        return 0.0
    mean = values_sum / n
    var = max(0.0, (squares_sum - n * mean * mean) / (n - 1))
    return Z95 * population * math.sqrt(var / n * (1 - n / population))


def count_bound(k: int, n: int, population: int) -> int:
    """95% half-width of a page count, Agresti-Coull (honest at k = 0)."""
    if n >= population:
        return 0
    p = (k + 2) / (n + 4)
    half = Z95 * math.sqrt(p * (1 - p) / (n + 4)) * math.sqrt(1 - n / population)
    # The interval is about p, not k/n: cover the difference too.
    return math.ceil(population * (half + abs(p - k / n)))
