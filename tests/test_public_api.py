"""Each package's ``__all__`` names exactly what it exports, and every name exists."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["allocator", "compressors", "zswapd"])
def test_all_is_complete_and_importable(package: str) -> None:
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.{name} is in __all__ but missing"
    public = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_")
        and getattr(v, "__module__", "").startswith(package)
        and not isinstance(v, type(mod))
    }
    assert public <= set(mod.__all__), f"{package} exports {public - set(mod.__all__)} silently"


def test_layers_import_down_only() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for package, forbidden in (
        ("allocator", {"zswapd", "compressors"}),
        ("compressors", {"zswapd", "allocator"}),
    ):
        for path in (root / package).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
