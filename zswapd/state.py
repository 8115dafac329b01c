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
any pages.  A page's idle age (for idle recompression) is saved as an age, so
it carries over a restart.  A written-back page's record holds its slot in the
backing file and its checksum: the file must still be there on restore (a
state file whose pages' backing file is gone is refused, never met with a new
empty file), and a page changed in it meanwhile fails its checksum on load
(corrupt_object), never served.

The directory is trusted only if nobody else can write it: the daemon makes it
0700, and refuses to start on one that is group- or world-writable or owned by
another user (it does not chmod it: files planted there before would still be
read, so the operator has to look).  A group- or world-readable directory is
accepted (systemd's StateDirectory= is 0755): the files themselves are 0600.
Every file is reached through one open descriptor of the directory (no path
is looked up twice), written through a temporary of unpredictable name opened
``O_CREAT | O_EXCL | O_NOFOLLOW``, and read with ``O_NOFOLLOW``: a symlink where
a state file should be is refused, never followed.  The directory's own path
may be a symlink (systemd's DynamicUser= makes one).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import secrets
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import compressors
from allocator import PageBudget
from zswapd.backing import BackingFile
from zswapd.config import PoolConfig, check_pool_name
from zswapd.entries import WRITTEN
from zswapd.errors import ConfigError, StateError, ZswapdError
from zswapd.pool import Counters, PagePool

__all__ = ["SUFFIX", "StateError", "load_pool", "load_state_dir", "save_pool", "save_state_dir"]

MAGIC = b"ZSWAPDST"
VERSION = 1
SUFFIX = ".zswapd"
_RECORD = struct.Struct("<QBHII")
_PREFIX = struct.Struct("<8sII")


_TMP_SUFFIX = ".tmp"


def foreign_dir(st: os.stat_result, what: str) -> str | None:
    """Why a directory the daemon reads from (``what``: "state directory
    DIR") is unsafe: someone else owns it or may write into it; None if safe."""
    if st.st_uid != os.geteuid():
        return (
            f"{what} is owned by uid {st.st_uid}, not by this daemon "
            f"(uid {os.geteuid()}); refusing it: another user could plant files there"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{what} is mode {stat.S_IMODE(st.st_mode):04o}: others can write into it "
            "and plant files or links; refusing it (chmod 700 it after checking its contents)"
        )
    return None


def _check_dir(fd: int, directory: Path) -> None:
    """Refuse a state directory that someone else could write into."""
    problem = foreign_dir(os.fstat(fd), f"state directory {directory}")
    if problem is not None:
        raise StateError(problem)


@contextmanager
def _open_dir(directory: Path, create: bool) -> Iterator[int]:
    """A checked descriptor of the state directory (made 0700 if absent and ``create``)."""
    if create:
        try:
            directory.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"cannot create the state directory {directory}: {exc}") from exc
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"cannot open the state directory {directory}: {exc}") from exc
    try:
        _check_dir(fd, directory)
        yield fd
    finally:
        os.close(fd)


def _temp_name(name: str) -> str:
    """An unpredictable name for a state file being written."""
    return f".{name}{SUFFIX}.{secrets.token_hex(16)}{_TMP_SUFFIX}"


def save_pool(pool: PagePool, directory: Path) -> Path:
    """Write ``pool`` to ``directory/<name>.zswapd`` atomically; returns the path.

    Raises:
        StateError: the directory is not safe (see the module's docstring).
    """
    with _open_dir(directory, create=True) as dfd:
        _save_pool(pool, dfd)
        os.fsync(dfd)
    return directory / f"{pool.name}{SUFFIX}"


def _save_pool(pool: PagePool, dfd: int) -> str:
    """Write ``pool`` into the directory open as ``dfd``; returns the file's name."""
    snapshot = pool.snapshot()
    config = snapshot["config"]
    header = json.dumps(
        {
            "name": pool.name,
            "config": {**config, "dictionary": snapshot["dictionary"]},
            "counters": snapshot["counters"],
            "mem_used_max": snapshot["mem_used_max"],
            "pages_compacted": snapshot["pages_compacted"],
            "backing_key": snapshot["backing_key"],
            "secondaries": snapshot["secondaries"],
            "backing_owned": snapshot["backing_owned"],
        }
    ).encode()
    digest = hashlib.sha256()
    target = f"{pool.name}{SUFFIX}"
    tmp = _temp_name(pool.name)
    # 0600: these are other programs' memory.  O_EXCL | O_NOFOLLOW: a name that
    # exists, a planted symlink included, fails instead of being written through.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
    try:
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
        # rename() replaces whatever is at the target, a symlink included,
        # without following it.
        os.replace(tmp, target, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    return target


def _read_state_file(dfd: int, name: str, path: Path) -> bytes:
    """The bytes of a regular state file, never through a symlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(
                f"{path} is a symlink; refusing it (state files are never followed)"
            ) from exc
        raise StateError(f"cannot open {path}: {exc}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{path} is not a regular file; refusing it")
        if st.st_uid != os.geteuid():
            raise StateError(f"{path} is owned by uid {st.st_uid}, not by this daemon; refusing it")
        return f.read()


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


def load_pool(
    path: Path, *, budget: PageBudget | None = None, arena_pages: int | None = None
) -> PagePool:
    """The pool saved in ``path``, every handle as it was.

    Args:
        budget, arena_pages: as for :class:`PagePool` (the server's limits).

    Raises:
        StateError: the file is torn, corrupted, inconsistent, a symlink, or
            in an unsafe directory.
    """
    with _open_dir(path.parent, create=False) as dfd:
        data = _read_state_file(dfd, path.name, path)
    return _load(data, path, budget, arena_pages)


def _load(data: bytes, path: Path, budget: PageBudget | None, arena_pages: int | None) -> PagePool:
    header, records = _parse(data, path)
    try:
        name = check_pool_name(header["name"])
        raw = dict(header["config"])
        if raw.get("dictionary") is not None:
            raw["dictionary"] = bytes.fromhex(raw["dictionary"])
        config = PoolConfig.from_dict(raw)
        # Restored without its own limit, so its arena can hold any limit set
        # later (set_live_settings), then given the saved limit back.
        unlimited = dataclasses.replace(config, limit_bytes=0)
        backing = None
        if config.backing_file is not None and any(r[1] & WRITTEN for r in records):
            # Pages live in it: it must be there still, never made afresh (a new,
            # empty file would only turn every written-back page into an error).
            try:
                backing = BackingFile.open(
                    config.backing_file, config.backing_size, create=False, budget=budget
                )
            except ConfigError as exc:
                raise StateError(
                    f"{path}: pages of pool {name!r} were written back to a backing file "
                    f"that cannot be reopened ({exc}); restore the file, or move {path} "
                    "aside to start without this pool"
                ) from exc
        pool = PagePool(name, unlimited, budget=budget, arena_pages=arena_pages, backing=backing)
        try:
            pool.backing_owned = bool(header.get("backing_owned", False))
            if pool.backing is not None and header.get("backing_key") is not None:
                # The tags of the pages in the file were made with this key.
                pool.backing.key = bytes.fromhex(header["backing_key"])
            for algo, options in header["secondaries"]:
                pool.add_secondary(compressors.get(algo, **options))
            counters = Counters(**header["counters"])
            if not all(type(v) is int and v >= 0 for v in vars(counters).values()):
                raise StateError(f"{path}: counters that are not counts")
            pool.restore(
                records,
                counters,
                int(header["mem_used_max"]),
                int(header.get("pages_compacted", 0)),
            )
            pool.set_live_settings(limit_bytes=config.limit_bytes)
        except BaseException:
            # What it took (pages, the backing file's descriptor) goes back;
            # the backing file itself stays, for the state file that names it.
            pool.backing_owned = False
            pool.close()
            raise
    except StateError:
        raise
    except (ZswapdError, KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: inconsistent state: {exc}") from exc
    return pool


def _state_names(dfd: int) -> list[str]:
    return sorted(n for n in os.listdir(dfd) if n.endswith(SUFFIX) and not n.startswith("."))


def save_state_dir(
    pools: list[PagePool], directory: Path, *, preserve: frozenset[str] = frozenset()
) -> list[Path]:
    """Save every pool; remove the files of pools that no longer exist.

    The files of the pools named in ``preserve`` are left as they are (a state
    file named like a configured device: not ours to load, nor to delete).

    Raises:
        StateError: the directory is not safe (see the module's docstring).
    """
    with _open_dir(directory, create=True) as dfd:
        keep = {_save_pool(p, dfd) for p in pools}
        kept = keep | {f"{name}{SUFFIX}" for name in preserve}
        for name in _state_names(dfd):
            if name not in kept:
                os.unlink(name, dir_fd=dfd)  # never follows a symlink
        os.fsync(dfd)
    return [directory / name for name in sorted(keep)]


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and SUFFIX + "." in name and name.endswith(_TMP_SUFFIX)


def load_state_dir(
    directory: Path,
    *,
    budget: PageBudget | None = None,
    arena_pages: int | None = None,
    skip: frozenset[str] = frozenset(),
) -> list[PagePool]:
    """Every pool saved in ``directory`` (made, 0700, if it does not exist yet),
    but those named in ``skip``, whose files are not even read.

    Raises:
        StateError: an unsafe directory, or any file refused (then nothing is
            loaded at all).
    """
    with _open_dir(directory, create=True) as dfd:
        for name in os.listdir(dfd):
            if _is_temporary(name):  # left by a crash mid-save (no saver runs yet)
                os.unlink(name, dir_fd=dfd)
        skipped = {f"{name}{SUFFIX}" for name in skip}
        files = [
            (n, _read_state_file(dfd, n, directory / n))
            for n in _state_names(dfd)
            if n not in skipped
        ]
    return [_load(data, directory / name, budget, arena_pages) for name, data in files]
