"""Running one piece of test work in several threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def run_threads(work: Callable[[T], None], parts: Sequence[T]) -> None:
    """Run ``work(part)`` in a thread per part, all at once, and wait for them.

    A failure in a thread is raised here (the first one), where pytest sees it;
    a thread's own exception would only be printed.
    """
    errors: list[BaseException] = []

    def run(part: T) -> None:
        try:
            work(part)
        except BaseException as exc:  # raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(part,)) for part in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
