"""A pool's settings, checked once, with today's kernel's defaults."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import allocator
import compressors
from allocator import Allocator, PageBudget
from allocator.options import ZSPOOL_DEFAULTS, ZSPOOL_OPTIONS, check_zspool_options
from zswapd.backing import MAX_BACKING_SIZE
from zswapd.errors import ConfigError

__all__ = [
    "DEFAULT_ACCEPT_THRESHOLD",
    "HUGE_POLICIES",
    "POOL_NAME",
    "WRITEBACK_MODES",
    "PoolConfig",
    "check_pool_name",
    "unavailable_compressor",
]

HUGE_POLICIES = ("store", "reject")
WRITEBACK_MODES = ("manual", "lru")
# zswap's default accept_threshold_percent: where an lru pool's writeback stops.
DEFAULT_ACCEPT_THRESHOLD = 90
# Pool names travel in URLs and may name files in a state directory: no paths.
# Allocator options that bound the whole server's memory (address space, the
# shared page budget): set by the registry, never by a pool's configuration.
_SERVER_OPTIONS = frozenset({"arena_pages", "budget"})
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Allocator parameters a pool sets from settings of its own, never from
# allocator_options (given twice, the allocator would be called with both).
_POOL_OWN_OPTIONS = {"chain_size": "set chain_size itself", "max_pages": "set limit_bytes"}


# Why a compressor a zram user would name cannot be had here, and the remedy.
_NO_COMPRESSOR = {
    "lzo": "python-lzo is not installed: apt-get install liblzo2-dev && "
    "pip install -e '.[lzo]' (from a checkout)",
    "lzo-rle": "zram's lzo-rle has no Python binding; the nearest is lzo, LZO1X-1 "
    "without its zero-run encoding",
    "842": "the kernel's 842 (POWER's hardware compressor) has no binding here",
    "lz4": "pip install lz4",
    "lz4-lib": "pip install lz4",
    "lz4hc": "pip install lz4",
    "zstd": "pip install zstandard",
}


def unavailable_compressor(name: str) -> str:
    """One line: ``name`` is no compressor here, why if known, and what there is."""
    why = _NO_COMPRESSOR.get(name)
    return (
        f"unknown compressor {name[:40]!r}"
        + (f" ({why})" if why else "")
        + f"; available: {', '.join(compressors.available())}"
    )


def check_pool_name(name: str) -> str:
    """``name`` if it is a valid pool name.

    Raises:
        ConfigError: not 1..64 of letters, digits, ``_ . -``, starting alphanumeric.
    """
    if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
        raise ConfigError(f"bad pool name {name!r}: 1-64 of A-Z a-z 0-9 _ . - (first alphanumeric)")
    return name


@dataclass(frozen=True)
class PoolConfig:
    """Everything that makes a pool: compressor, allocator, limit, policies.

    Attributes:
        compressor: primary algorithm (zram's comp_algorithm); default zstd.
        level: its level; None given becomes the backend's default (zstd 3, as
            the kernel's; lz4hc 9; deflate 6); lz4, which has none, keeps None.
        allocator: "zsmalloc" (zram's), "zbud" or "z3fold".
        chain_size: zsmalloc's longest zspage (kernel default 8).
        limit_bytes: pool memory limit, 0 = none (zram's mem_limit).
        huge_policy: "store" a page compressing to huge_class_size or more raw
            (zram), or "reject" it, counted as compress_poor (zswap before 6.18).
        accept_threshold_percent: zswap's hysteresis: once the limit is hit,
            refuse stores until the pool shrinks below this share of the limit
            (None: off, as zram).
        recompress_algo / recompress_level: zram's secondary algorithm.
        allocator_options: other options of the allocator (empty_cache,
            short_zspages, header, class_step, class_sizes, merge_classes).
        dictionary: a zstd dictionary for the primary compressor.
        backing_file: path of the second tier (zram's backing_dev, zswap's swap
            device); None: none, a pool at its limit refuses.
        backing_size: its size in bytes, whole 4 KiB slots (0: an existing
            file's own size).
        writeback: "manual" (zram: pages leave only when asked) or "lru"
            (zswap: a store past the limit first writes back the least
            recently used pages until the pool is below
            accept_threshold_percent of its limit, 90 if unset).
        writeback_limit: pages manual writeback may still write (zram's
            writeback_limit); None: no limit.
    """

    compressor: str = "zstd"
    level: int | None = None
    allocator: str = "zsmalloc"
    chain_size: int = 8
    limit_bytes: int = 0
    huge_policy: str = "store"
    accept_threshold_percent: int | None = None
    recompress_algo: str | None = None
    recompress_level: int | None = None
    allocator_options: dict[str, Any] = field(default_factory=dict)
    dictionary: bytes | None = field(default=None, repr=False)
    backing_file: str | None = None
    backing_size: int = 0
    writeback: str = "manual"
    writeback_limit: int | None = None

    def __post_init__(self) -> None:
        for key in ("compressor", "allocator", "huge_policy", "writeback"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key} must be a string, not {getattr(self, key)!r}")
        if self.recompress_algo is not None and not isinstance(self.recompress_algo, str):
            raise ConfigError(f"recompress_algo must be a string, not {self.recompress_algo!r}")
        if self.compressor not in compressors.available():
            raise ConfigError(unavailable_compressor(str(self.compressor)))
        if self.allocator not in allocator.ALLOCATORS:
            raise ConfigError(f"unknown allocator {self.allocator!r}")
        if type(self.chain_size) is not int or not 1 <= self.chain_size <= 16:
            raise ConfigError(f"chain_size must be an integer in 1..16, not {self.chain_size!r}")
        self._check_allocator_options()
        if type(self.limit_bytes) is not int or self.limit_bytes < 0:
            raise ConfigError(f"limit_bytes must be an int >= 0, not {self.limit_bytes!r}")
        if self.limit_bytes >= 1 << 64:
            raise ConfigError(f"limit_bytes must be below 2**64, not {self.limit_bytes}")
        if self.huge_policy not in HUGE_POLICIES:
            raise ConfigError(f"huge_policy must be one of {HUGE_POLICIES}")
        pct = self.accept_threshold_percent
        if pct is not None and (type(pct) is not int or not 0 <= pct <= 100):
            raise ConfigError(f"accept_threshold_percent must be an integer in 0..100, not {pct!r}")
        self._check_backing()
        if self.recompress_algo is not None and (
            self.recompress_algo not in compressors.available()
        ):
            raise ConfigError(f"unknown recompress_algo {self.recompress_algo!r}")
        # Build the parts once, so that a bad level or option fails here, clearly.
        try:
            primary = self.make_compressor()
            secondary = self.make_recompressor()
            # A one-page arena: this checks the options, it reserves nothing.
            self.make_allocator(arena_pages=1)
        except (compressors.CompressorError, ValueError, TypeError) as exc:
            raise ConfigError(str(exc)) from exc
        except (OSError, OverflowError, MemoryError) as exc:
            # A limit or arena larger than this process can even reserve.
            raise ConfigError(f"cannot reserve the pool's memory: {exc}") from exc
        # A level left to the backend is recorded as the one it uses (zstd's 3,
        # lz4hc's 9), so stats say "zstd:3" and not null; compression is the same
        # either way, since that is the level the backend was built with.
        if self.level is None and "level" in primary.options:
            object.__setattr__(self, "level", primary.options["level"])
        if secondary is not None and self.recompress_level is None:
            object.__setattr__(self, "recompress_level", secondary.options.get("level"))

    def _check_allocator_options(self) -> None:
        """Each allocator option by its name: known, the server's own left out,
        of the right type and range (the allocator's own check, so its words)."""
        options = self.allocator_options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ConfigError(
                f"allocator_options must be an object of option: value, not {options!r}"
            )
        reserved = sorted(set(options) & _SERVER_OPTIONS)
        if reserved:
            raise ConfigError(
                f"allocator option {', '.join(reserved)} is the server's to set "
                "(bounded by --memory-limit), not a pool's"
            )
        own = sorted(set(options) & set(_POOL_OWN_OPTIONS))
        if own:
            raise ConfigError(
                f"allocator_options: {own[0]} is a pool setting, not an allocator "
                f"option: {_POOL_OWN_OPTIONS[own[0]]}"
            )
        unknown = sorted(set(options) - set(ZSPOOL_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown allocator option {unknown[0][:40]!r}; the options are "
                f"{', '.join(ZSPOOL_OPTIONS)} (zsmalloc's; zbud and z3fold ignore them)"
            )
        try:
            check_zspool_options(**{**ZSPOOL_DEFAULTS, "chain_size": self.chain_size, **options})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"allocator_options: {exc}") from exc

    def _check_backing(self) -> None:
        path = self.backing_file
        if path is not None and (not isinstance(path, str) or not path or "\0" in path):
            raise ConfigError(f"backing_file must be a path, not {path!r}")
        if path is not None:
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError("backing_file must be valid UTF-8") from None
        size = self.backing_size
        if type(size) is not int or not 0 <= size <= MAX_BACKING_SIZE or size % 4096:
            raise ConfigError(
                f"backing_size must be a whole number of 4096-byte slots up to "
                f"{MAX_BACKING_SIZE} (16 TiB), not {size!r}"
            )
        if size and self.backing_file is None:
            raise ConfigError("backing_size without a backing_file")
        if self.writeback not in WRITEBACK_MODES:
            raise ConfigError(f"writeback must be one of {', '.join(WRITEBACK_MODES)}")
        if self.writeback_limit is not None and self.backing_file is None:
            raise ConfigError("writeback_limit without a backing_file to write back to")
        if self.writeback == "lru" and self.backing_file is None:
            raise ConfigError('writeback "lru" needs a backing_file to write back to')
        wbl = self.writeback_limit
        if wbl is not None and (type(wbl) is not int or not 0 <= wbl < 1 << 63):
            raise ConfigError(f"writeback_limit must be a number of pages >= 0, not {wbl!r}")

    @property
    def limit_pages(self) -> int | None:
        """The limit in whole pages, rounded up, as zram's mem_limit store does."""
        return -(-self.limit_bytes // 4096) if self.limit_bytes else None

    @property
    def alloc_max_pages(self) -> int | None:
        """The allocator's own page budget: the limit plus one zspage.

        zram allocates first and checks ``pages > limit`` after (then frees):
        a write may take a zspage past the limit for a moment, and mem_used_max
        sees it.  The pool checks the limit (:meth:`PagePool.store`); the
        allocator only needs room for that one zspage.
        """
        limit = self.limit_pages
        return None if limit is None else limit + self.chain_size

    def make_compressor(self) -> compressors.Compressor:
        opts: dict[str, Any] = {}
        if self.level is not None:
            opts["level"] = self.level
        if self.dictionary is not None:
            opts["dictionary"] = self.dictionary
        return compressors.get(self.compressor, **opts)

    def make_recompressor(self) -> compressors.Compressor | None:
        if self.recompress_algo is None:
            return None
        opts = {} if self.recompress_level is None else {"level": self.recompress_level}
        return compressors.get(self.recompress_algo, **opts)

    def make_allocator(
        self, budget: PageBudget | None = None, arena_pages: int | None = None
    ) -> Allocator:
        """The allocator, charging ``budget`` if given, its address space
        reserved for its limit but never more than ``arena_pages``."""
        if arena_pages is not None and self.alloc_max_pages:
            arena_pages = min(arena_pages, self.alloc_max_pages)
        return allocator.create(
            self.allocator,
            chain_size=self.chain_size,
            max_pages=self.alloc_max_pages,
            budget=budget,
            arena_pages=arena_pages,
            **self.allocator_options,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the dictionary by size only)."""
        out = asdict(self)
        out["dictionary"] = len(self.dictionary) if self.dictionary is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolConfig:
        """Settings from a mapping; unknown keys are refused.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown pool settings: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
