"""Saving pools to disk and restoring them, handles and all (``--state-dir``).

One file per pool, ``<name>.zswapd``, written whole and atomically: to a
temporary file in the same directory, fsync'd, renamed over the old one, and
the directory fsync'd, so a crash leaves either the old file or the new, never
half of one.  The layout (little-endian)::

    b"ZSWAPDST"  u32 version (1)  u32 header length  header (JSON)
    records: u64 handle  u8 kind  u16 length  u32 age (s)  u32 payload length  payload
    32-byte SHA-256 of everything before it

The header holds the pool's settings (the zstd dictionary hex-encoded), its
counters and the secondary algorithms recompressed pages use.  A record's
payload is the stored object (the compressed bytes, or the raw page of a huge
page) or, for a same-filled page, its 8-byte word; objects are placed afresh on
restore, and every handle issued before the save loads the same bytes after.

A file whose checksum, magic, version or structure does not hold is refused
with :class:`StateError`: nothing is loaded from it, and the daemon does not
start (better than serving half a pool).  The checksum catches torn writes and
corruption, not tampering: whoever can write the state directory can write
any pages (keep it 0700, as the daemon makes it).  A page's idle age (for idle
recompression) is saved as an age, so it carries over a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import compressors
from zswapd.config import PoolConfig, check_pool_name
from zswapd.errors import ZswapdError
from zswapd.pool import Counters, PagePool

__all__ = ["SUFFIX", "StateError", "load_pool", "load_state_dir", "save_pool", "save_state_dir"]

MAGIC = b"ZSWAPDST"
VERSION = 1
SUFFIX = ".zswapd"
_RECORD = struct.Struct("<QBHII")
_PREFIX = struct.Struct("<8sII")


class StateError(ZswapdError):
    """A state file that is torn, corrupted or not ours: refused whole."""

    code = "bad_state"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_pool(pool: PagePool, directory: Path) -> Path:
    """Write ``pool`` to ``directory/<name>.zswapd`` atomically; returns the path."""
    snapshot = pool.snapshot()
    config = snapshot["config"]
    header = json.dumps(
        {
            "name": pool.name,
            "config": {**config, "dictionary": snapshot["dictionary"]},
            "counters": snapshot["counters"],
            "mem_used_max": snapshot["mem_used_max"],
            "secondaries": snapshot["secondaries"],
        }
    ).encode()
    digest = hashlib.sha256()
    target = directory / f"{pool.name}{SUFFIX}"
    tmp = directory / f".{pool.name}{SUFFIX}.tmp"
    # 0600: these are other programs' memory.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:

        def put(data: bytes) -> None:
            digest.update(data)
            f.write(data)

        put(_PREFIX.pack(MAGIC, VERSION, len(header)))
        put(header)
        for handle, kind, clen, age, payload in snapshot["entries"]:
            put(_RECORD.pack(handle, kind, clen, age, len(payload)))
            put(payload)
        f.write(digest.digest())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(directory)
    return target


def _parse(
    data: bytes, path: Path
) -> tuple[dict[str, Any], list[tuple[int, int, int, int, bytes]]]:
    if len(data) < _PREFIX.size + 32:
        raise StateError(f"{path}: {len(data)} bytes is too short to be a state file (torn?)")
    body, checksum = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != checksum:
        raise StateError(f"{path}: checksum mismatch: the file is torn or corrupted; refusing it")
    magic, version, header_len = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise StateError(f"{path}: not a zswapd state file")
    if version != VERSION:
        raise StateError(f"{path}: state version {version}; this zswapd reads {VERSION}")
    pos = _PREFIX.size
    try:
        header = json.loads(body[pos : pos + header_len])
    except ValueError as exc:
        raise StateError(f"{path}: unreadable header: {exc}") from exc
    pos += header_len
    records = []
    while pos < len(body):
        if pos + _RECORD.size > len(body):
            raise StateError(f"{path}: truncated record at byte {pos}")
        handle, kind, clen, age, n = _RECORD.unpack_from(body, pos)
        pos += _RECORD.size
        if pos + n > len(body):
            raise StateError(f"{path}: truncated payload at byte {pos}")
        records.append((handle, kind, clen, age, body[pos : pos + n]))
        pos += n
    return header, records


def load_pool(path: Path) -> PagePool:
    """The pool saved in ``path``, every handle as it was.

    Raises:
        StateError: the file is torn, corrupted, or inconsistent.
    """
    header, records = _parse(path.read_bytes(), path)
    try:
        name = check_pool_name(header["name"])
        raw = dict(header["config"])
        if raw.get("dictionary") is not None:
            raw["dictionary"] = bytes.fromhex(raw["dictionary"])
        config = PoolConfig.from_dict(raw)
        pool = PagePool(name, config)
        for algo, options in header["secondaries"]:
            pool.add_secondary(compressors.get(algo, **options))
        counters = Counters(**header["counters"])
        if not all(type(v) is int and v >= 0 for v in vars(counters).values()):
            raise StateError(f"{path}: counters that are not counts")
        pool.restore(records, counters, int(header["mem_used_max"]))
    except StateError:
        raise
    except (ZswapdError, KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: inconsistent state: {exc}") from exc
    return pool


def save_state_dir(pools: list[PagePool], directory: Path) -> list[Path]:
    """Save every pool; remove the files of pools that no longer exist."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = [save_pool(p, directory) for p in pools]
    keep = {p.name for p in written}
    for stale in directory.glob(f"*{SUFFIX}"):
        if stale.name not in keep:
            stale.unlink()
    _fsync_dir(directory)
    return written


def load_state_dir(directory: Path) -> list[PagePool]:
    """Every pool saved in ``directory`` (none if it does not exist yet).

    Raises:
        StateError: any file refused (then nothing is loaded at all).
    """
    if not directory.exists():
        return []
    return [load_pool(path) for path in sorted(directory.glob(f"*{SUFFIX}"))]
