"""Shadows' reports: what each ``zswapd shadow`` last said of its processes.

A shadow is a client process: it scans a live process's memory, drives a pool
in the daemon with the pages swap would hold (store, load, free, as any client
does), and every interval reports its per-process figures here, so that they
appear in the metrics beside the pool's own.  The scanning stays client-side on
purpose: a daemon (often root) that read arbitrary processes' memory on a
client's request would let any local user read any process.  The daemon only
keeps and exports what shadows tell it; it reads nothing itself.

What a report holds is a client's word, and any local user may send one, so
everything about it is bounded: at most :data:`MAX_SHADOWS` names, at most
:data:`MAX_PROCESSES` processes a report and :data:`MAX_PROCESSES_TOTAL` across
every live report, a ``comm`` of at most
:data:`MAX_COMM` characters, none of them a control or format character (see
:data:`_REFUSED_CATEGORIES`), counts in 0..2**53 (what a JSON number
holds exactly), seconds finite and >= 0.

A report must also be one a shadow could send (:func:`check_possible`; 422
``impossible_report`` otherwise): a process's pages nest, stored within cold
within resident, since a stored page is a cold one and a cold one a page the
last scan found present; a refault brings back a page that was swapped out, so
there are never more refaults than swap-outs; a process that exited holds no
page (the shadow frees its pages at its EXIT, and its last scan finds none
present); the interval is at least :data:`MIN_INTERVAL_SECONDS`, what
``zswapd shadow --interval`` accepts; the pool is one of this daemon's.

The pool holds the pages the report says are stored: the stored_pages of its
processes, summed, are at most the pages the pool holds as the report arrives,
in RAM or written back (a shadow's handles stay valid when its pages are
written back).  A real shadow keeps to that: it reports once a tick's stores
and frees are done, and at the tick's end finds the pages another client freed
(stale handles) and counts them lost, no longer stored.  A report is checked
against its own sum only: one shadow drives a pool, and another report naming
the same pool is another sender's claim, not this one's.  (A page another
client frees between a tick's end and its report makes that one report claim a
page that is gone: refused, and taken again at the next tick.)

``saved_bytes`` may be negative: a process's share of the pool's saving is
negative while the pool takes more memory than the pages it keeps (a few pages
in a zspage of several pages; incompressible pages, stored whole, save nothing
to make up for it), and a real shadow reports that as it is.  Two reports
(names) may shadow one pid, e.g. to compare two compressors on one process;
one report names a pid once.

A report is removed with its pool: the figures are about the pages of that
pool, and a pool made again under the name would hold none of them.

A report is as unowned as a pool: whoever may reach the daemon (the Unix
socket's mode, the bearer token) may replace or remove any report, as they may
any pool; a report says what its sender claims, no more.

A report lives until the shadow
replaces it, removes it, or stops renewing it: one not renewed within its
``expires_seconds`` is gone (from the listing and the metrics), so a shadow
that died leaves no figures frozen in a dashboard.  Expiry is lazy, at the next
read or report: memory stays bounded by the caps either way (4096 processes
of a dozen numbers each, a few MiB at the very worst).

Why a cap across reports, beyond the 64 x 1024 the two others allow: every
process is 10 series in every scrape (and every shadow 3 more).  64 full
reports made a 95 MiB exposition that took 53 s of CPU to render (measured on
this project's machine), past any scrape timeout: one local user could have
blinded the monitoring of every pool.
4096 processes (64 reports of 64, one GET /metrics each, same machine) make
41,200 lines: 4.0 MB in 0.45 s with short names and figures; 11.4 MB with
64-character shadow, pool and comm names and the largest figures; 14.0 MB when
every comm character is one the exposition escapes (a backslash: two bytes);
19.3 MB, the worst a client can send, when every one is a four-byte UTF-8
character.  Each renders in 0.5 to 1 s.

The registry is read by the metrics collector at scrape time, from another
thread than the HTTP API's: one lock guards the table, and what it hands out
(frozen reports) is never changed afterwards.
"""

from __future__ import annotations

import math
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from zswapd.config import check_pool_name
from zswapd.errors import (
    ConfigError,
    ImpossibleReportError,
    InvalidRequestError,
    TooManyShadowsError,
    UnknownShadowError,
)
from zswapd.swapsim import ProcessFigures

__all__ = [
    "DETECTIONS",
    "MAX_COMM",
    "MAX_COUNT",
    "MAX_EXPIRES_SECONDS",
    "MAX_PID",
    "MAX_PROCESSES",
    "MAX_PROCESSES_TOTAL",
    "MAX_SHADOWS",
    "MIN_DEFAULT_EXPIRES_SECONDS",
    "MIN_INTERVAL_SECONDS",
    "PROCESS_KEYS",
    "ShadowRegistry",
    "ShadowReport",
    "check_possible",
    "default_expires",
    "parse_report",
]

# Shadows kept at once: as --max-pools' default; each is one process's worth of
# series per shadowed process in every scrape.
MAX_SHADOWS = 64
# Processes a report may name.
MAX_PROCESSES = 1024
# Processes across every live report: what keeps a scrape cheap (see above).
MAX_PROCESSES_TOTAL = 4096
# Characters of a comm: the kernel's is 15 (TASK_COMM_LEN - 1); room for a
# longer name a shadow may give, no room for a page of text in every series.
MAX_COMM = 64
# The largest integer a JSON number carries exactly (a double's 53-bit mantissa).
MAX_COUNT = 2**53
# The kernel's PID_MAX_LIMIT on 64-bit machines: no pid is larger.
MAX_PID = 1 << 22
# A report lives at most a day without renewal.
MAX_EXPIRES_SECONDS = 86400.0
# The shortest interval between scans, here and for ``zswapd shadow --interval``
# (which reads it from here): a millisecond, the finest unit a duration takes
# (500ms).  Shorter is no real shadow's (a scan of a few pages takes longer)
# and would only put a meaningless figure in the metrics.
MIN_INTERVAL_SECONDS = 0.001
# Without expires_seconds: three intervals, so that one late report (a scan
# that took long, a daemon busy) does not make a shadow flap; never under 30 s.
MIN_DEFAULT_EXPIRES_SECONDS = 30.0
# How a shadow tells a page changed: soft-dirty bits (the kernel's) or a hash of
# its bytes (write-coldness only); "+idle" adds the idle-page bitmap (reads too).
DETECTIONS = ("soft-dirty", "hash", "soft-dirty+idle", "hash+idle")
# A process's figures: exactly zswapd.swapsim.ProcessFigures's fields.
PROCESS_KEYS = tuple(f.name for f in fields(ProcessFigures))
# Figures of a process that are counts; saved_bytes is not one (below).
_COUNTS = (
    "resident_pages",
    "cold_pages",
    "stored_pages",
    "swapouts_total",
    "refaults_total",
    "rejected_total",
    "scanned_bytes_total",
)
# Characters refused in a comm: control characters (a newline in a label value
# breaks a log line, an escape sequence a terminal), format characters (Cf,
# invisible: a zero-width space makes two series' comms look alike in a
# Grafana legend, a bidi override reverses the text after it), lone surrogates
# (not UTF-8: the exposition could not be encoded) and the Unicode line
# separators.  A real shadow sends none: it escapes a comm as it prints it
# (zswapd.scanner reads it through cli_format.printable).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """One shadow's last report, as received (and checked).

    Attributes:
        name: the shadow's name (pool-name rules).
        pool: the pool the shadow drives (one of the daemon's when the report
            arrived; the report goes with it).
        detection: how the shadow tells a page changed (:data:`DETECTIONS`).
        interval_seconds, cold_after_seconds: the shadow's settings.
        expires_seconds: how long the report lives without renewal.
        processes: the processes' figures, in the order given.
        received: when it arrived (the registry's clock: monotonic).
    """

    name: str
    pool: str
    detection: str
    interval_seconds: float
    cold_after_seconds: float
    expires_seconds: float
    processes: tuple[ProcessFigures, ...]
    received: float

    def expired(self, now: float) -> bool:
        return now - self.received >= self.expires_seconds

    def to_dict(self, now: float) -> dict[str, Any]:
        """The report as the shadow sent it (expiry resolved), and its age."""
        return {
            "pool": self.pool,
            "detection": self.detection,
            "interval_seconds": self.interval_seconds,
            "cold_after_seconds": self.cold_after_seconds,
            "expires_seconds": self.expires_seconds,
            "processes": [p.to_dict() for p in self.processes],
            "age_seconds": max(0.0, now - self.received),
        }


def default_expires(interval_seconds: float) -> float:
    """Three intervals, at least :data:`MIN_DEFAULT_EXPIRES_SECONDS`, at most a day."""
    return min(MAX_EXPIRES_SECONDS, max(MIN_DEFAULT_EXPIRES_SECONDS, 3 * interval_seconds))


def _name(value: Any, what: str) -> str:
    # A pool's rules: the name is a label value and a URL segment.
    try:
        return check_pool_name(value)
    except ConfigError as exc:
        raise InvalidRequestError(f"{what}: {exc}") from exc


def _int(value: Any, what: str, low: int, high: int) -> int:
    # JSON has one number type: 360.0 is the integer 360, as pydantic takes it;
    # a boolean is no number, whatever Python thinks.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{what} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise InvalidRequestError(f"{what} must be in {low}..{high}, not {value}")
    return value


def _seconds(value: Any, what: str, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{what} must be a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an integer of 400 digits is no float
        seconds = math.inf
    if not math.isfinite(seconds) or not low <= seconds <= high:
        bounds = f">= {low:g}" if high == math.inf else f"in {low:g}..{high:g}"
        raise InvalidRequestError(f"{what} must be finite and {bounds}, not {value!r}")
    return seconds


def _comm(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{what} must be a string")
    if len(value) > MAX_COMM:
        raise InvalidRequestError(f"{what} is {len(value)} characters; at most {MAX_COMM}")
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in value):
        raise InvalidRequestError(
            f"{what} {value!r} holds control or format characters (Unicode Cc, Cf): "
            "send them escaped, as zswapd shadow does"
        )
    return value


def _process(value: Any, where: str) -> ProcessFigures:
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{where} must be an object")
    keys = set(value)
    if keys != set(PROCESS_KEYS):
        missing = sorted(set(PROCESS_KEYS) - keys)
        extra = sorted(str(k) for k in keys - set(PROCESS_KEYS))
        said = "; ".join(
            s
            for s in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(extra)}" if extra else "",
            )
            if s
        )
        raise InvalidRequestError(f"{where}: {said}")
    exited = value["exited"]
    if not isinstance(exited, bool):
        raise InvalidRequestError(f"{where}.exited must be true or false")
    counts = {k: _int(value[k], f"{where}.{k}", 0, MAX_COUNT) for k in _COUNTS}
    return ProcessFigures(
        pid=_int(value["pid"], f"{where}.pid", 1, MAX_PID),
        comm=_comm(value["comm"], f"{where}.comm"),
        # The process's share of the pool's saving, which is negative while the
        # pool holds less than it takes (a few pages in a zspage of several).
        saved_bytes=_int(value["saved_bytes"], f"{where}.saved_bytes", -MAX_COUNT, MAX_COUNT),
        scan_seconds_total=_seconds(value["scan_seconds_total"], f"{where}.scan_seconds_total"),
        exited=exited,
        **counts,
    )


_REPORT_KEYS = frozenset(
    {"pool", "detection", "interval_seconds", "cold_after_seconds", "expires_seconds", "processes"}
)


def parse_report(name: str, body: Mapping[str, Any], received: float) -> ShadowReport:
    """A shadow's report checked whole: every bound of the module docstring.

    Args:
        name: the shadow's name.
        body: the report, as JSON decodes it.
        received: when it arrived (the registry's clock).

    Raises:
        InvalidRequestError: anything out of bounds, missing or unknown.
        ImpossibleReportError: figures no shadow could send (:func:`check_possible`).
    """
    _name(name, "shadow name")
    if not isinstance(body, Mapping):
        raise InvalidRequestError("a report must be an object")
    unknown = sorted(str(k) for k in set(body) - _REPORT_KEYS)
    if unknown:
        raise InvalidRequestError(f"unknown field(s) {', '.join(unknown)}")
    missing = sorted(_REPORT_KEYS - {"expires_seconds"} - set(body))
    if missing:
        raise InvalidRequestError(f"missing field(s) {', '.join(missing)}")
    detection = body["detection"]
    if detection not in DETECTIONS:
        raise InvalidRequestError(f"detection must be one of {', '.join(DETECTIONS)}")
    interval = _seconds(body["interval_seconds"], "interval_seconds")
    expires = body.get("expires_seconds")
    processes = body["processes"]
    if not isinstance(processes, list):
        raise InvalidRequestError("processes must be a list")
    if len(processes) > MAX_PROCESSES:
        raise InvalidRequestError(
            f"{len(processes)} processes; at most {MAX_PROCESSES} in a report"
        )
    parsed = tuple(_process(p, f"processes[{i}]") for i, p in enumerate(processes))
    report = ShadowReport(
        name=name,
        pool=_name(body["pool"], "pool"),
        detection=str(detection),
        interval_seconds=interval,
        cold_after_seconds=_seconds(body["cold_after_seconds"], "cold_after_seconds"),
        expires_seconds=(
            default_expires(interval)
            if expires is None
            else _seconds(expires, "expires_seconds", 1.0, MAX_EXPIRES_SECONDS)
        ),
        processes=parsed,
        received=received,
    )
    check_possible(report)
    return report


def _possible(p: ProcessFigures, where: str) -> None:
    # The rules of the module docstring, each said with the fields it binds.
    if p.stored_pages > p.cold_pages:
        raise ImpossibleReportError(
            f"{where}.stored_pages {p.stored_pages} > cold_pages {p.cold_pages}: "
            "a stored page is a cold one (stored_pages <= cold_pages <= resident_pages)"
        )
    if p.cold_pages > p.resident_pages:
        raise ImpossibleReportError(
            f"{where}.cold_pages {p.cold_pages} > resident_pages {p.resident_pages}: "
            "a cold page is one the scan found present (cold_pages <= resident_pages)"
        )
    if p.exited and (p.resident_pages or p.cold_pages or p.stored_pages):
        raise ImpossibleReportError(
            f"{where}.exited with stored_pages {p.stored_pages}, cold_pages {p.cold_pages}, "
            f"resident_pages {p.resident_pages}: a process that exited holds no page "
            "(its pages are freed at its exit; all three are 0)"
        )
    if p.refaults_total > p.swapouts_total:
        raise ImpossibleReportError(
            f"{where}.refaults_total {p.refaults_total} > swapouts_total "
            f"{p.swapouts_total}: a refault brings back a page swapped out "
            "(refaults_total <= swapouts_total)"
        )


def check_possible(report: ShadowReport) -> None:
    """Raise unless a shadow could have sent ``report`` (the module docstring's
    rules, but the pool's existence and the pages it holds, which are the
    registry's to know).

    Raises:
        ImpossibleReportError: the first rule broken, naming its fields.
    """
    if report.interval_seconds < MIN_INTERVAL_SECONDS:
        raise ImpossibleReportError(
            f"interval_seconds {report.interval_seconds!r} is below "
            f"{MIN_INTERVAL_SECONDS:g}, the shortest interval a shadow scans at"
        )
    first: dict[int, int] = {}
    for i, p in enumerate(report.processes):
        where = f"processes[{i}]"
        if p.pid in first:
            raise ImpossibleReportError(
                f"{where}.pid {p.pid} is processes[{first[p.pid]}]'s too: a report names "
                "a pid once (two reports may shadow one pid)"
            )
        first[p.pid] = i
        _possible(p, where)


class ShadowRegistry:
    """The shadows' last reports, by name, each until it expires.

    Args:
        max_shadows: names kept at once (default :data:`MAX_SHADOWS`).
        max_processes: processes across every live report (default
            :data:`MAX_PROCESSES_TOTAL`).
        clock: seconds, monotonic (tests may give their own).
        pool_exists: whether a pool of that name exists (None: every name
            does, for a registry used alone); a report naming no pool is
            refused, and one whose pool has gone is dropped.
        pool_pages: the pages a pool of that name holds, in RAM or written
            back (None: any number, for a registry used alone); a report
            whose processes' stored_pages sum to more is refused.
    """

    def __init__(
        self,
        max_shadows: int = MAX_SHADOWS,
        max_processes: int = MAX_PROCESSES_TOTAL,
        clock: Callable[[], float] = time.monotonic,
        pool_exists: Callable[[str], bool] | None = None,
        pool_pages: Callable[[str], int] | None = None,
    ) -> None:
        self.max_shadows = max_shadows
        self.max_processes = max_processes
        self._clock = clock
        self.pool_exists = pool_exists
        self.pool_pages = pool_pages
        self._reports: dict[str, ShadowReport] = {}
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        # Under the lock.  A report whose pool has gone goes too, whichever way
        # the pool went (forget_pool is told of the HTTP API's removals; this
        # catches any other, e.g. a device that failed to start).
        exists = self.pool_exists
        for name in [
            n
            for n, r in self._reports.items()
            if r.expired(now) or (exists is not None and not exists(r.pool))
        ]:
            del self._reports[name]

    def report(self, name: str, body: Mapping[str, Any]) -> ShadowReport:
        """Replace ``name``'s report with ``body``; checked whole first, so a
        report refused leaves the previous one as it was.

        Raises:
            InvalidRequestError: a bound broken (see :func:`parse_report`).
            ImpossibleReportError: figures no shadow could send (see
                :func:`check_possible`), no such pool, or more pages stored
                than the pool holds.
            TooManyShadowsError: ``name`` is new and max_shadows others report,
                or the report would take the processes of every live report
                past max_processes.
        """
        report = parse_report(name, body, self._clock())
        with self._lock:
            # Under the lock: a pool removed meanwhile is either seen gone here
            # or has its reports forgotten after this one is kept.
            if self.pool_exists is not None and not self.pool_exists(report.pool):
                raise ImpossibleReportError(
                    f"pool {report.pool!r}: no pool of that name here; a shadow reports "
                    "on the pool it drives (create it first: PUT /v1/pools/NAME)"
                )
            self._check_pages(report)
            self._expire(report.received)
            if name not in self._reports and len(self._reports) >= self.max_shadows:
                raise TooManyShadowsError(
                    f"{len(self._reports)} shadows report already, the most this daemon "
                    f"keeps: remove one (DELETE /v1/shadows/NAME) or wait for one to expire"
                )
            others = sum(len(r.processes) for n, r in self._reports.items() if n != name)
            if others + len(report.processes) > self.max_processes:
                raise TooManyShadowsError(
                    f"{len(report.processes)} processes, with the {others} other shadows "
                    f"report, pass the {self.max_processes} this daemon keeps across all "
                    f"shadows: remove a shadow or report fewer processes"
                )
            self._reports[name] = report
        return report

    def _check_pages(self, report: ShadowReport) -> None:
        # Under the lock, as the pool's existence: the pool's count as the
        # report is kept.  Only this report's sum (see the module docstring).
        if self.pool_pages is None:
            return
        claimed = sum(p.stored_pages for p in report.processes)
        if claimed == 0:
            return
        held = self.pool_pages(report.pool)
        if claimed > held:
            raise ImpossibleReportError(
                f"processes' stored_pages sum to {claimed}, but pool {report.pool!r} holds "
                f"{held} page{'' if held == 1 else 's'}: a shadow's stored pages are in its "
                "pool (the sum is at most the pool's pages, in RAM or written back)"
            )

    def remove(self, name: str) -> None:
        """Forget ``name``'s report.

        Raises:
            UnknownShadowError: no live report of that name.
        """
        with self._lock:
            self._expire(self._clock())
            if self._reports.pop(name, None) is None:
                raise UnknownShadowError(f"no shadow {name!r} reports here")

    def forget_pool(self, pool: str) -> list[str]:
        """Drop every report on ``pool`` (just removed); their names."""
        with self._lock:
            gone = [n for n, r in self._reports.items() if r.pool == pool]
            for name in gone:
                del self._reports[name]
        return gone

    def snapshot(self) -> tuple[float, list[ShadowReport]]:
        """The clock's reading and the live reports, by name."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            return now, [self._reports[n] for n in sorted(self._reports)]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every live report by name, as ``GET /v1/shadows`` answers."""
        now, reports = self.snapshot()
        return {r.name: r.to_dict(now) for r in reports}
