"""The server-wide limits: --memory-limit SIZE|N%, --max-pools N, and where
clients may write: --backing-dir DIR within --backing-quota SIZE|N%.

zswap bounds all its pools together by ``max_pool_percent`` of RAM; zswapd does
the same for every pool and device with one :class:`~allocator.PageBudget`
that all their allocators charge.  The same figure bounds the address space a
pool reserves for its arena (a pool can never hold more than the server
limit), or, with no limit, the machine's memory: so however many pools clients
create, up to ``--max-pools``, the reservations stay within what those limits
allow, and never exhaust the process's address space.

Backing files bound the disk the same way: a client (over HTTP) may only
create new files inside ``--backing-dir``, all of them together at most
``--backing-quota`` bytes (default: a quarter of that directory's filesystem,
measured at start), so no client can fill the disk or the daemon's own files
(state, the operator's backing files) of room.  The directory is trusted as
the state directory is: refused if another user owns it or could write into
it (they could plant a symlink or a file under a name a client will ask for).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from allocator import PageBudget
from zswapd.errors import ConfigError
from zswapd.pools import PoolRegistry
from zswapd.settings import ServerSettings, parse_size

__all__ = [
    "DEFAULT_BACKING_QUOTA",
    "backing_dir_for",
    "mem_total_bytes",
    "parse_memory_limit",
    "registry_for",
]

PAGE_SIZE = 4096
# Share of the backing dir's filesystem clients' files may take without
# --backing-quota: room for them, and three quarters left for everyone else.
DEFAULT_BACKING_QUOTA = "25%"


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


def _check_backing_dir(path: Path) -> None:
    """Refuse a backing dir someone else could write into (as a state directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open --backing-dir {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"--backing-dir {path} is owned by uid {st.st_uid}, not by this daemon "
            f"(uid {os.geteuid()}); refusing it: another user could plant files there"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"--backing-dir {path} is mode {stat.S_IMODE(st.st_mode):04o}: others can write "
            f"into it and plant files or links where clients' files go; refusing it "
            f"(chmod 700 {path} after checking its contents)"
        )


def backing_dir_for(settings: ServerSettings) -> tuple[Path | None, int | None]:
    """Where clients may create backing files, and how many bytes in all.

    The directory is made (0700) if absent and named by its real path (no
    symlink on the way: clients' files are opened below it without following
    one).  The quota is a size, ``N%`` of the directory's filesystem, or 0 for
    no bound; unset, DEFAULT_BACKING_QUOTA.

    Raises:
        ConfigError: a quota without a directory, a directory another user
            owns or may write, or a bad quota.
    """
    if settings.backing_dir is None:
        if settings.backing_quota is not None:
            raise ConfigError("--backing-quota without --backing-dir: clients may write nowhere")
        return None, None
    if not settings.backing_dir:
        raise ConfigError("--backing-dir needs a directory")
    path = Path(os.path.realpath(settings.backing_dir))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --backing-dir {path}: {exc.strerror}") from exc
    _check_backing_dir(path)
    if settings.state_dir is not None:
        state = Path(os.path.realpath(settings.state_dir))
        if state == path or path in state.parents or state in path.parents:
            # A client's file named like a state file would be read, or
            # deleted as a stale one, by the next start.
            raise ConfigError(
                f"--backing-dir {path} and --state-dir {state} overlap: clients could "
                "name files the daemon reads or deletes as state; keep them apart"
            )
    fs = os.statvfs(path)
    value = settings.backing_quota if settings.backing_quota is not None else DEFAULT_BACKING_QUOTA
    try:
        # A share of the filesystem is a share of "memory" to parse_memory_limit.
        quota = parse_memory_limit(value, fs.f_blocks * fs.f_frsize)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("memory_limit", "--backing-quota", 1)) from exc
    return path, (quota - quota % PAGE_SIZE) or None


def registry_for(settings: ServerSettings, mem_total: int | None = None) -> PoolRegistry:
    """The daemon's pool registry, bounded by the settings' server-wide limits.

    Raises:
        ConfigError: a bad --memory-limit, --backing-dir or --backing-quota.
    """
    total = mem_total if mem_total is not None else mem_total_bytes()
    limit = parse_memory_limit(settings.memory_limit, total)
    limit_pages = limit // PAGE_SIZE if limit else None
    # Address space per pool: what the server limit lets one pool fill, or the
    # machine's memory when there is no limit; never the allocator's 64 GiB.
    arena_pages = max(limit_pages or total // PAGE_SIZE, 1)
    backing_dir, backing_quota = backing_dir_for(settings)
    return PoolRegistry(
        budget=PageBudget(limit_pages),
        arena_pages=arena_pages,
        max_pools=settings.max_pools,
        backing_dir=backing_dir,
        backing_quota=backing_quota,
    )
