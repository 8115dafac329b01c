"""Shared fixtures: where the shared corpus lives, and realistic page sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# CI clones the repo beside ../shared; a developer checkout has it at the same place.
SHARED = Path(os.environ.get("ZSWAPD_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "corpus"


def corpus_or_skip() -> Path:
    """The shared corpus folder, or skip the test saying why."""
    if not (CORPUS / "kernel").is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS} (set ZSWAPD_SHARED to its parent)")
    return CORPUS
