"""Compression backends for single pages (built in issue 3; empty for now)."""

from __future__ import annotations

__all__: list[str] = []
