"""One error table: every class carries its code and status, the tree in the
module's docstring says the same, and each frontend reads those attributes."""

from __future__ import annotations

import re
import subprocess
import sys

import zswapd.errors as errors
from zswapd.errors import ZswapdError, error_class


def _classes() -> list[type[ZswapdError]]:
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, ZswapdError)
    ]


def test_every_error_has_its_own_code_and_a_status() -> None:
    codes = [cls.code for cls in _classes()]
    assert len(codes) == len(set(codes)), codes
    for cls in _classes():
        assert "code" in vars(cls) and "status" in vars(cls), cls  # said beside it, not inherited
        assert 400 <= cls.status < 600


def test_the_docstring_tree_is_the_table() -> None:
    tree = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"(\w+Error) +(\d{3}) ", errors.__doc__ or "")
    }
    assert tree == {cls.__name__: cls.status for cls in _classes()}


def test_a_code_from_a_server_comes_back_as_its_class() -> None:
    for cls in _classes():
        assert error_class(cls.code) is cls
    assert error_class("no_such_code") is ZswapdError


def test_the_wire_frontend_needs_no_web_framework() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, zswapd.wire_server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'starlette') or m == 'zswapd.http_api'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
