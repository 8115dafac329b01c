"""Timelines for record and replay tests: ticks of events with known pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.zswapd.helpers import random_page, same_page, text_page
from zswapd.record import RecordWriter
from zswapd.timeline import Event, EventKind, ProcessScan, TickEnd

Tick = tuple[list[Event], TickEnd]
PAGE = 4096


def write_record(
    path: Path,
    ticks: list[Tick],
    header: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> list[list[Event]]:
    """Write ``ticks`` to a new record at ``path``; the events as the writer
    handed them on (COLD ones with their ref)."""
    out = []
    with RecordWriter.create(str(path), header or {}) as writer:
        for events, end in ticks:
            out.append(list(writer.events(events)))
            writer.end_tick(end)
        writer.close(summary)
    return out


def _scan(pid: int, resident: int, exited: bool = False) -> ProcessScan:
    return ProcessScan(pid, f"proc{pid}", resident, resident * PAGE, 0.001 * resident, exited)


def sample_timeline(pages: int = 120) -> list[Tick]:
    """Two processes over six ticks: pages go cold (text, random, same-filled,
    some with the same bytes), some are rewritten, some unmapped, one process
    exits.  Enough to fill, refault, drop and refill a pool."""
    kinds = (text_page, random_page, lambda s: same_page(bytes([s % 7 + 1]) * 8))

    def page(i: int) -> bytes:
        return kinds[i % 3](i % 40)  # i and i+120 share their bytes

    def cold(pid: int, lo: int, hi: int, salt: int = 0) -> list[Event]:
        return [Event(EventKind.COLD, pid, i * PAGE, page(i + salt)) for i in range(lo, hi)]

    a, b = 1001, 1002
    half = pages // 2
    return [
        (cold(a, 0, half), TickEnd(10.0, (_scan(a, pages),))),
        (cold(a, half, pages) + cold(b, 0, half), TickEnd(20.0, (_scan(a, pages), _scan(b, half)))),
        (
            [Event(EventKind.CHANGED, a, i * PAGE) for i in range(0, pages, 5)]
            + [Event(EventKind.GONE, a, i * PAGE) for i in range(1, pages, 7)],
            TickEnd(30.0, (_scan(a, pages), _scan(b, half))),
        ),
        (cold(a, 0, pages, salt=3)[::5], TickEnd(40.0, (_scan(a, pages), _scan(b, half)))),
        (
            [Event(EventKind.EXIT, b), *cold(a, pages, pages + half)],
            TickEnd(50.0, (_scan(a, pages + half), _scan(b, 0, exited=True))),
        ),
        ([], TickEnd(60.0, (_scan(a, pages + half),))),
    ]
