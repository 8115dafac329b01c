"""What holds a descriptor or a connection until ``close()``, and closes it on ``with``."""

from __future__ import annotations

from typing import Self

__all__ = ["Closing"]


class Closing:
    """A base for what is released by ``close()``: ``with`` closes it, however it leaves.

    ``close()`` must be safe to call twice, since a caller may close early and
    still leave a ``with`` block.
    """

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
