"""Benchmarks behind ``zswapd bench``: figures, never pass/fail tests."""

from __future__ import annotations

__all__: list[str] = []
