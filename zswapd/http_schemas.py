"""The HTTP API's schemas: every request and answer body as a pydantic model,
and the integer types that give each its width in the OpenAPI document.

Kept apart from the routes (zswapd.http_api): what a client sends and gets
is read here, how it is served there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from zswapd.device import MAX_DEVICE_SIZE
from zswapd.openapi import INT32, INT64, UINT64
from zswapd.shadows import (
    MAX_COMM,
    MAX_COUNT,
    MAX_EXPIRES_SECONDS,
    MAX_PID,
    MAX_PROCESSES,
    MIN_DEFAULT_EXPIRES_SECONDS,
)

__all__ = [
    "NOT_BOOL",
    "WITHIN_INT32",
    "WITHIN_INT64",
    "BackingFigures",
    "BdStat",
    "ClassRow",
    "CompactResult",
    "CompressorOut",
    "DeviceCreated",
    "DeviceList",
    "DeviceSettings",
    "DeviceStatsOut",
    "ErrorBody",
    "Handle",
    "HandleList",
    "Health",
    "Int32",
    "Int64",
    "IoStat",
    "JsonCount",
    "JsonFloat",
    "JsonInt",
    "JsonInt32",
    "JsonPercent",
    "LiveSettings",
    "MetadataFigures",
    "MmStat",
    "PageCounters",
    "PoolConfigOut",
    "PoolCreated",
    "PoolList",
    "PoolSettings",
    "PoolStatsOut",
    "RecompressCounters",
    "RecompressRequest",
    "RecompressResult",
    "ServerFigures",
    "ShadowList",
    "ShadowOut",
    "ShadowProcess",
    "ShadowReportIn",
    "SlotTable",
    "WritebackRequest",
    "WritebackResult",
    "ZswapCounters",
]


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable error code")
    detail: str = Field(description="what went wrong, for people")


def _not_bool(value: Any) -> Any:
    # JSON's true is not 1 here (schemathesis found a level of `false` accepted).
    if isinstance(value, bool):
        raise ValueError("a number is required, not a boolean")
    return value


NOT_BOOL = BeforeValidator(_not_bool)


def _within(bits: int) -> AfterValidator:
    # A request's integers are held to the width the document gives them
    # (format int64 / int32): a limit_bytes of 2**63 was once stored and
    # answered back, and no int64 client could read that pool's stats.  A
    # validator, not Ge/Le: those would replace the fields' own bounds.
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"out of range for a {bits}-bit integer")
        return value

    return AfterValidator(check)


WITHIN_INT64 = _within(64)
WITHIN_INT32 = _within(32)

# Integers with their width in the document (zswapd.openapi): handles fill 64
# bits and byte counts pass 2**31, which a generator's bare "integer" (int32 in
# Go and Java) would not hold.  Answers use Int64 / Int32.
Int64 = Annotated[int, INT64]
Int32 = Annotated[int, INT32]
# Only the document's bounds: a handle out of them is stale (404), as ever.
Handle = Annotated[StrictInt, UINT64]
# Lax ints for requests (360.0 is an integer in JSON Schema) that still refuse
# booleans.  Bounds go before NOT_BOOL, on the int itself: so the document says
# them as minimum / maximum, even when the field is nullable.
JsonInt = Annotated[int, NOT_BOOL, INT64, WITHIN_INT64]
JsonInt32 = Annotated[int, NOT_BOOL, INT32, WITHIN_INT32]
JsonCount = Annotated[int, Ge(0), NOT_BOOL, INT64, WITHIN_INT64]
JsonPercent = Annotated[int, Ge(0), Le(100), NOT_BOOL, INT32]
JsonFloat = Annotated[float, NOT_BOOL]
# The bytes a table of metadata (a pool's entries, a device's slots) charges.
TableBytes = Annotated[
    int, INT64, Field(description="what the table charges the server's memory limit")
]


class HandleList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    handles: list[Handle] = Field(description="handles as the server returned them")


class RecompressRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["huge", "idle", "huge_idle"] = "huge"
    algo: str | None = Field(default=None, description="secondary algorithm (default: pool's)")
    level: JsonInt32 | None = None
    idle_seconds: JsonFloat = Field(default=0, ge=0)
    threshold: Annotated[int, Ge(1), NOT_BOOL, INT64] | None = Field(
        default=None,
        description="bytes, zram's: objects smaller are skipped, results must be smaller; "
        "below huge_class_size (400 otherwise)",
    )


class RecompressResult(BaseModel):
    candidates: Int64
    recompressed: Int64
    not_smaller: Int64
    alloc_failed: Int64
    bytes_saved: Int64


class CompactResult(BaseModel):
    pages_released: Int64


class WritebackRequest(BaseModel):
    """zram's ``echo TYPE > writeback`` (and ``echo N > idle``), with a cap."""

    model_config = ConfigDict(extra="forbid")
    # Required: an empty body writing every page back would be a costly surprise.
    type: Literal["idle", "huge", "huge_idle", "incompressible", "lru"] = Field(
        description="idle: not stored or loaded for idle_seconds (0: every page, zram's "
        "'all'); huge; huge_idle: both; incompressible: huge pages recompression could "
        "not shrink; lru: the least recently used first",
    )
    idle_seconds: Annotated[float, Ge(0), NOT_BOOL] | None = Field(
        default=None,
        description="what idle means, seconds: required for idle and huge_idle (0: every "
        "page, zram's 'all'), refused for the other types",
    )
    max_pages: Annotated[int, Ge(1), NOT_BOOL, INT64] | None = Field(
        default=None, description="write at most this many"
    )


class WritebackResult(BaseModel):
    written_back: Int64 = Field(description="pages written to the backing file")
    candidates: Int64 = Field(description="pages of the type asked for, before max_pages")
    stopped: str | None = Field(
        description="why it stopped before writing every candidate: writeback_limit, "
        "backing_full, io_error, backing_removed (null: it did not)"
    )
    error: str | None = Field(description="what failed, for people (null: nothing)")
    writeback_limit: Int64 | None = Field(
        description="pages manual writeback may still write (null: no limit)"
    )


class PoolSettings(BaseModel):
    """A pool's configuration (every field optional; defaults are the kernel's)."""

    model_config = ConfigDict(extra="forbid")
    compressor: str = "zstd"
    level: JsonInt32 | None = None
    allocator: Literal["zsmalloc", "zbud", "z3fold"] = "zsmalloc"
    chain_size: JsonInt32 = Field(default=8, ge=1, le=16)
    limit_bytes: JsonInt = Field(default=0, ge=0)
    huge_policy: Literal["store", "reject"] = "store"
    accept_threshold_percent: JsonPercent | None = None
    recompress_algo: str | None = None
    recompress_level: JsonInt32 | None = None
    allocator_options: dict[str, Any] = Field(default_factory=dict)
    backing_file: str | None = Field(
        default=None,
        description="a new file inside the daemon's --backing-dir: a name, or a path under "
        "it (no absolute path, no '..', no symlink)",
    )
    backing_size: JsonInt = Field(
        default=0, ge=0, description="bytes, whole 4096-byte slots (needed with backing_file)"
    )
    writeback: Literal["manual", "lru"] = Field(
        default="manual",
        description="manual (zram: pages leave when asked) or lru (zswap: a store past the "
        "limit writes back the least recently used pages first)",
    )
    writeback_limit: JsonCount | None = Field(
        default=None, description="pages manual writeback may still write (null: no limit)"
    )


class LiveSettings(BaseModel):
    """Settings a pool takes while it holds pages (zram's ``echo N > mem_limit``,
    ``echo N > writeback_limit``); the ones not given stay as they are."""

    model_config = ConfigDict(extra="forbid")
    limit_bytes: JsonCount | None = None
    accept_threshold_percent: JsonPercent | None = Field(default=None, description="null: off")
    huge_policy: Literal["store", "reject"] | None = None
    writeback_limit: JsonCount | None = Field(
        default=None, description="null: no limit (zram's writeback_limit_enable=0)"
    )


class PoolConfigOut(BaseModel):
    """A pool's settings as applied (the dictionary by size)."""

    compressor: str
    level: Int32 | None
    allocator: str
    chain_size: Int32
    limit_bytes: Int64
    huge_policy: str
    accept_threshold_percent: Int32 | None
    recompress_algo: str | None
    recompress_level: Int32 | None
    allocator_options: dict[str, Any]
    dictionary: Int64 | None
    backing_file: str | None
    backing_size: Int64
    writeback: str
    writeback_limit: Int64 | None


class PoolCreated(BaseModel):
    pool: str
    config: PoolConfigOut


class MmStat(BaseModel):
    """zram's mm_stat, field for field."""

    orig_data_size: Int64
    compr_data_size: Int64
    mem_used_total: Int64
    mem_limit: Int64
    mem_used_max: Int64
    same_pages: Int64
    pages_compacted: Int64
    huge_pages: Int64
    huge_pages_since: Int64


class ZswapCounters(BaseModel):
    stored_pages: Int64
    same_filled_pages: Int64
    pool_total_size: Int64
    pool_limit_hit: Int64
    reject_compress_poor: Int64
    decompress_fail: Int64
    written_back_pages: Int64 = Field(description="pages moved to the backing file")
    reject_reclaim_fail: Int64 = Field(description="pages refused: no room could be made")


class PageCounters(BaseModel):
    stored_pages_total: Int64
    loaded_pages_total: Int64
    freed_pages_total: Int64
    memory_limit_hit: Int64 = Field(description="pages refused at the server-wide --memory-limit")
    stale_handle_requests: Int64 = Field(description="loads and frees refused for a stale handle")
    loaded_same_pages: Int64 = Field(description="loads served by a same-filled word")
    limit_hit_written_back: Int64 = Field(
        description="limit hits of an lru pool answered by writing back (or refused as "
        "reject_reclaim_fail); in pool_limit_hit too"
    )


class BdStat(BaseModel):
    """zram's bd_stat, in pages: in the backing file now, read from it, written to it."""

    bd_count: Int64
    bd_reads: Int64
    bd_writes: Int64


class BackingFigures(BaseModel):
    """The backing file of a pool: where, how big, how full, how healthy."""

    file: str
    slots: Int64
    size: Int64 = Field(description="bytes, slots x 4096")
    used_slots: Int64
    writeback: str
    writeback_limit: Int64 | None
    lru_pages: Int64 = Field(description="pages in memory on the LRU list")
    removed: bool
    io_errors: Int64
    corrupt_pages: Int64 = Field(description="pages read back that failed their checksum")


class ServerFigures(BaseModel):
    """Every pool and device together, against --memory-limit (bytes; 0 = no limit)."""

    memory_limit: Int64
    memory_used: Int64
    memory_used_max: Int64


class MetadataFigures(BaseModel):
    """The pool's table of entries, charged to --memory-limit (not in mm_stat)."""

    entry_slots: Int64 = Field(description="slots the table holds, live or free")
    bytes: TableBytes


class CompressorOut(BaseModel):
    """What compresses the pool's pages, and whether its sizes are the kernel's."""

    name: str
    version: str = Field(description='what makes its output, e.g. "libzstd 1.5.6 (...)"')
    kernel_exact: bool = Field(description="every page gets the kernel's compressed size")
    fidelity: str = Field(
        description='"exact for Linux 6.12", or "not kernel-exact: " and the reason'
    )


class RecompressCounters(BaseModel):
    attempts: Int64
    recompressed_pages: Int64
    saved_bytes: Int64
    algorithms: list[str]


class ClassRow(BaseModel):
    """One row of the debugfs ``classes`` table; fullness columns named "0".."100"."""

    model_config = ConfigDict(populate_by_name=True)
    class_: Int64 = Field(alias="class")
    size: Int64
    f0: Int64 = Field(alias="0")
    f10: Int64 = Field(alias="10")
    f20: Int64 = Field(alias="20")
    f30: Int64 = Field(alias="30")
    f40: Int64 = Field(alias="40")
    f50: Int64 = Field(alias="50")
    f60: Int64 = Field(alias="60")
    f70: Int64 = Field(alias="70")
    f80: Int64 = Field(alias="80")
    f90: Int64 = Field(alias="90")
    f99: Int64 = Field(alias="99")
    f100: Int64 = Field(alias="100")
    obj_allocated: Int64
    obj_used: Int64
    pages_used: Int64
    pages_per_zspage: Int64
    freeable: Int64


class PoolStatsOut(BaseModel):
    pool: str
    config: PoolConfigOut
    compressor: CompressorOut
    huge_class_size: Int64
    mm_stat: MmStat
    zswap: ZswapCounters
    counters: PageCounters
    bd_stat: BdStat
    backing: BackingFigures | None = Field(description="null: no backing file")
    server: ServerFigures
    metadata: MetadataFigures
    recompress: RecompressCounters
    classes: list[ClassRow]


class DeviceSettings(PoolSettings):
    """A device: its size in bytes (a multiple of 4096), and its pool's settings."""

    size: JsonInt = Field(
        ge=1, le=MAX_DEVICE_SIZE, description="bytes, a multiple of 4096, at most 16 TiB"
    )
    # zram's backing_dev.  A client's file must be a new name inside the daemon's
    # --backing-dir (refused, 400, otherwise): no client picks where the daemon writes.
    backing_file: str | None = Field(
        default=None, description="a new file's name inside the daemon's --backing-dir"
    )
    backing_size: JsonInt = Field(default=0, ge=0, description="bytes, whole 4096-byte slots")
    writeback: Literal["manual", "lru"] = "manual"
    writeback_limit: JsonCount | None = Field(
        default=None, description="pages manual writeback may still write (zram's)"
    )


_NBD_DESCRIPTION = (
    "the device's NBD URI as libnbd tools take it (nbd+unix:///NAME?socket=PATH or "
    "nbd://HOST:PORT/NAME); null: the daemon serves no NBD (serve --nbd), so nothing "
    "can read or write the device"
)


class DeviceCreated(BaseModel):
    device: str
    size: Int64 = Field(description="bytes")
    config: PoolConfigOut
    nbd: str | None = Field(description=_NBD_DESCRIPTION)


class IoStat(BaseModel):
    """zram's io_stat (its columns as the kernel names them)."""

    failed_reads: Int64
    failed_writes: Int64
    invalid_io: Int64
    notify_free: Int64


class SlotTable(BaseModel):
    """The device's table of slots, charged to --memory-limit (not in mm_stat)."""

    leaves: Int64 = Field(description="4096-byte leaves of the table")
    bytes: TableBytes


class DeviceStatsOut(BaseModel):
    device: str
    size: Int64 = Field(description="bytes")
    nbd: str | None = Field(description=_NBD_DESCRIPTION)
    compressor: CompressorOut
    mm_stat: MmStat
    io_stat: IoStat
    bd_stat: BdStat
    backing: BackingFigures | None = Field(description="null: no backing file")
    zswap: ZswapCounters
    slot_table: SlotTable
    classes: list[ClassRow]


class DeviceList(BaseModel):
    devices: list[str]


class PoolList(BaseModel):
    pools: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    max_pages_per_request: Int64 = Field(description="cap on pages in one store or load")


# -- shadows (zswapd.shadows): what a `zswapd shadow` reports of its processes ----------


def _json_number(value: Any) -> Any:
    # A shadow's figures are JSON numbers: no boolean, and no "12" either (the
    # lax mode's string-to-number, which a pool's settings tolerate).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a JSON number is required")
    return value


JSON_NUMBER = BeforeValidator(_json_number)
# Counts a JSON number holds exactly; seconds that are a number (no NaN, no infinity).
ShadowCount = Annotated[int, Ge(0), Le(MAX_COUNT), JSON_NUMBER, INT64]
Seconds = Annotated[float, AllowInfNan(False), Ge(0), JSON_NUMBER]
# A comm without control characters or line separators (zswapd.shadows checks
# lone surrogates too, which a pattern cannot say, and format characters, Unicode
# Cf, a set each Unicode version adds to: Python's unicodedata knows it).
_COMM_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"


class ShadowProcess(BaseModel):
    """One shadowed process, as of the shadow's last scan (zswapd.swapsim's
    ProcessFigures, field for field)."""

    model_config = ConfigDict(extra="forbid")
    pid: Annotated[int, Ge(1), Le(MAX_PID), JSON_NUMBER, INT64] = Field(
        description="unique within a report (a pid twice is 422 impossible_report)"
    )
    comm: str = Field(
        max_length=MAX_COMM,
        pattern=_COMM_PATTERN,
        description=f"the process's name (/proc/PID/comm), at most {MAX_COMM} characters, "
        "no control or format characters (Unicode Cc, Cf: zero-width, bidi): a shadow "
        "sends them escaped, as it prints them",
    )
    resident_pages: ShadowCount = Field(description="pages swap could take, present at the scan")
    cold_pages: ShadowCount = Field(
        description="pages unchanged for cold_after_seconds: stored, or waiting for room; "
        "at most resident_pages"
    )
    stored_pages: ShadowCount = Field(
        description="of the cold pages, those the pool holds; at most cold_pages, and "
        "summed over the report's processes at most the pages the pool holds (in RAM or "
        "written back): else 422 impossible_report"
    )
    saved_bytes: Annotated[int, Ge(-MAX_COUNT), Le(MAX_COUNT), JSON_NUMBER, INT64] = Field(
        description="the process's share of the pool's saving (orig_data_size - "
        "mem_used_total), by stored pages; negative while the pool takes more than it holds"
    )
    swapouts_total: ShadowCount = Field(description="pages stored (swapped out), ever")
    refaults_total: ShadowCount = Field(
        description="stored pages touched again (zswap's zswpin; writes only under hash); "
        "at most swapouts_total"
    )
    rejected_total: ShadowCount = Field(description="cold pages the pool refused")
    scan_seconds_total: Seconds = Field(description="CPU seconds the shadow's scans took")
    scanned_bytes_total: ShadowCount = Field(description="bytes the shadow's scans read")
    exited: StrictBool = Field(
        description="the process has exited; its pages are freed: true with any of "
        "resident_pages, cold_pages, stored_pages above 0 is 422 impossible_report"
    )


class ShadowReportIn(BaseModel):
    """A shadow's report: its settings and its processes' figures."""

    model_config = ConfigDict(extra="forbid")
    pool: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="the pool the shadow drives: one of this daemon's (else 422 "
        "impossible_report); the report is removed with it",
    )
    detection: Literal["soft-dirty", "hash", "soft-dirty+idle", "hash+idle"] = Field(
        description="how the shadow tells a page changed: soft-dirty bits or a hash of "
        "its bytes (writes only); +idle: the idle-page bitmap too (reads)"
    )
    interval_seconds: Seconds = Field(
        description="seconds between the shadow's scans; under 0.001 is 422 impossible_report"
    )
    cold_after_seconds: Seconds = Field(description="a page unchanged this long is stored")
    expires_seconds: (
        Annotated[float, AllowInfNan(False), Ge(1), Le(MAX_EXPIRES_SECONDS), JSON_NUMBER] | None
    ) = Field(
        default=None,
        description="the report is dropped if not renewed within this (default: 3 x "
        f"interval_seconds, at least {MIN_DEFAULT_EXPIRES_SECONDS:g})",
    )
    processes: list[ShadowProcess] = Field(
        max_length=MAX_PROCESSES, description="pids unique; at most 1024"
    )


class ShadowOut(ShadowReportIn):
    """A shadow's last report, as received, with its expiry resolved and its age."""

    expires_seconds: Annotated[float, Ge(1), Le(MAX_EXPIRES_SECONDS)] = Field(
        description="the report is dropped if not renewed within this"
    )
    age_seconds: Annotated[float, Ge(0)] = Field(description="seconds since it was received")


class ShadowList(BaseModel):
    shadows: dict[str, ShadowOut] = Field(description="every live report, by shadow name")
