"""The server-wide limits: --memory-limit SIZE|N% and --max-pools N.

zswap bounds all its pools together by ``max_pool_percent`` of RAM; zswapd does
the same for every pool and device with one :class:`~allocator.PageBudget`
that all their allocators charge.  The same figure bounds the address space a
pool reserves for its arena (a pool can never hold more than the server
limit), or, with no limit, the machine's memory: so however many pools clients
create, up to ``--max-pools``, the reservations stay within what those limits
allow, and never exhaust the process's address space.
"""

from __future__ import annotations

import re
from pathlib import Path

from allocator import PageBudget
from zswapd.errors import ConfigError
from zswapd.pools import PoolRegistry
from zswapd.settings import ServerSettings, parse_size

__all__ = ["mem_total_bytes", "parse_memory_limit", "registry_for"]

PAGE_SIZE = 4096


def mem_total_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The machine's memory (MemTotal), bytes.

    Raises:
        ConfigError: /proc/meminfo unreadable or without MemTotal.
    """
    try:
        text = meminfo.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {meminfo} for MemTotal: {exc}") from exc
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB", text, re.MULTILINE)
    if m is None:
        raise ConfigError(f"no MemTotal in {meminfo}")
    return int(m.group(1)) * 1024


def parse_memory_limit(value: str | int, mem_total: int) -> int:
    """Bytes from ``--memory-limit``: a size (``4G``, ``1073741824``) or ``N%`` of
    ``mem_total``; 0 means no limit.

    Raises:
        ConfigError: not a size or a percentage in (0, 100], or a limit below one page.
    """
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            pct = -1.0
        # NaN fails both comparisons, as it should.
        if not 0 < pct <= 100:
            raise ConfigError(f"memory_limit {value!r}: a share must be in (0, 100]%")
        limit = int(mem_total * pct / 100)
    else:
        try:
            limit = parse_size(text)
        except ConfigError as exc:
            raise ConfigError(f"memory_limit {value!r}: {exc}") from exc
    if 0 < limit < PAGE_SIZE:
        raise ConfigError(f"memory_limit {value!r}: 0 (none) or at least one page (4096 bytes)")
    return limit


def registry_for(settings: ServerSettings, mem_total: int | None = None) -> PoolRegistry:
    """The daemon's pool registry, bounded by the settings' server-wide limits.

    Raises:
        ConfigError: a bad --memory-limit.
    """
    total = mem_total if mem_total is not None else mem_total_bytes()
    limit = parse_memory_limit(settings.memory_limit, total)
    limit_pages = limit // PAGE_SIZE if limit else None
    # Address space per pool: what the server limit lets one pool fill, or the
    # machine's memory when there is no limit; never the allocator's 64 GiB.
    arena_pages = max(limit_pages or total // PAGE_SIZE, 1)
    return PoolRegistry(
        budget=PageBudget(limit_pages), arena_pages=arena_pages, max_pools=settings.max_pools
    )
