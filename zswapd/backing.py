"""The second tier: a backing file of 4 KiB slots (zram's backing_dev, zswap's swap device).

A pool writes pages here when it must make room (zswap's LRU writeback) or
when asked (zram's ``writeback``), and reads them back here when they are
loaded.  The file is a real file of fixed size, read and written with
``pread``/``pwrite``; which of its slots are taken is a bitmap in memory (zram's
``bitmap`` of the backing device), and what each holds is verified against a
32-bit tag (keyed BLAKE2b) kept with the page's entry, so a file changed,
truncated or swapped behind the daemon's back yields an error, never wrong
bytes, even when whoever changed it meant to forge a page: without the key a
forged page passes once in 2**32 tries, and the pool gives each page one try
(a page that failed its tag is never read again).

What goes into a slot is the page's stored object: compressed bytes as the
pool holds them, or the raw page of a huge page.  The kernel writes the
decompressed page, because whoever reads a block device wants the page; here
only the pool reads it back, so writing the object saves a decompression on
every write-back (the store that triggered it waits for less) and most of
the disk bandwidth.  A slot is 4 KiB either way, so bd_count, bd_reads and
bd_writes count exactly what the kernel's would; only the bytes moved differ.

The file is created ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600, and sized
with ``ftruncate`` (sparse: disk is used only by what is written).  The
bitmap, one bit a slot, is charged to the server's page budget while the file
is open.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import threading
from contextlib import suppress
from pathlib import PurePosixPath

from allocator import PageBudget
from zswapd.errors import BackingIoError, ConfigError, MemoryLimitError

__all__ = ["MAX_BACKING_SIZE", "SLOT_SIZE", "BackingFile", "check_client_name", "pack", "unpack"]

SLOT_SIZE = 4096
# A slot number and its tag share an entry's 64-bit object field.
MAX_BACKING_SIZE = SLOT_SIZE << 32  # 16 TiB
_NOT_FULL = re.compile(rb"[^\xff]")


def map_pages(slots: int) -> int:
    """Budget pages the slot map of a file of ``slots`` slots costs (a bit a slot)."""
    map_bytes = -(-slots // 8)
    return -(-map_bytes // SLOT_SIZE)


def pack(slot: int, tag: int) -> int:
    """An entry's object field for a page in file slot ``slot`` with tag ``tag``."""
    return slot | tag << 32


def unpack(obj: int) -> tuple[int, int]:
    """(slot, tag) from an entry's object field."""
    return obj & 0xFFFFFFFF, obj >> 32


class BackingFile:
    """A file of ``slots`` 4 KiB slots, with the map of which are taken.

    Thread-safe: slot allocation is under a lock of its own; reads and writes
    of distinct slots need none (pread/pwrite at their own offsets).
    """

    def __init__(self, fd: int, path: str, slots: int, budget: PageBudget | None) -> None:
        self._fd = fd
        self.path = path
        self.slots = slots
        self.used = 0
        self._map = bytearray(-(-slots // 8))
        self._hint = 0  # no free slot below this byte of the map
        self._lock = threading.Lock()
        # I/O in flight: close() waits for it, so that no pread/pwrite can
        # reach a descriptor number the process has reused for another file.
        self._io = threading.Condition()
        self._active = 0
        self._budget = budget
        self.charged = map_pages(slots)
        # The key of the pages' tags: someone who can write the file but does
        # not know it cannot make a page of their choosing pass (a CRC could be
        # fixed up to match).  Saved with the pool's state, to read the file
        # again after a restart.
        self.key = os.urandom(16)
        self.closed = False
        self.created = False  # made by this open (a client's file goes with its pool)

    @classmethod
    def open(
        cls,
        path: str,
        size: int,
        *,
        create: bool,
        must_create: bool = False,
        budget: PageBudget | None = None,
        dir_fd: int | None = None,
    ) -> BackingFile:
        """Open (or create) the backing file at ``path``.

        Args:
            size: bytes to use (whole slots); 0: the size of an existing file.
            create: create the file if it is absent (0600, sized to ``size``).
            must_create: refuse a file that exists already (a client's request:
                nothing existing is ever written through).
            budget: the server's page budget, charged for the slot map.
            dir_fd: open ``path`` relative to this directory (a client's name,
                walked by :func:`open_client_dir`).

        Raises:
            ConfigError: the path cannot be created or opened, is a symlink or
                not a regular file, or is smaller than ``size``; or a bad size.
            MemoryLimitError: the budget cannot pay for the slot map.
        """
        if type(size) is not int or size < 0 or size % SLOT_SIZE:
            raise ConfigError(
                f"backing_size must be a whole number of 4096-byte slots, not {size!r}"
            )
        if size > MAX_BACKING_SIZE:
            raise ConfigError(f"backing_size is at most {MAX_BACKING_SIZE} bytes (2**32 slots)")
        base = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        created = False
        try:
            if must_create or create:
                try:
                    fd = os.open(path, base | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
                    created = True
                except FileExistsError:
                    if must_create:
                        raise ConfigError(
                            f"backing file {path} exists already; a client may only name a "
                            "new file (remove it, or name it in the daemon's own config)"
                        ) from None
                    fd = os.open(path, base, dir_fd=dir_fd)
            else:
                fd = os.open(path, base, dir_fd=dir_fd)
        except ConfigError:
            raise
        except OSError as exc:
            why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise ConfigError(f"cannot open backing file {path}: {why}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"backing file {path} is not a regular file")
            if created:
                if not size:
                    raise ConfigError(f"backing file {path} is new: give its backing_size")
                os.ftruncate(fd, size)
            elif size > st.st_size:
                raise ConfigError(
                    f"backing file {path} is {st.st_size} bytes, smaller than its "
                    f"backing_size of {size}"
                )
            size = size or st.st_size - st.st_size % SLOT_SIZE
            if not size:
                raise ConfigError(f"backing file {path} holds no whole 4096-byte slot")
            if size > MAX_BACKING_SIZE:
                size = MAX_BACKING_SIZE
            # Charged before the map is made: refused, it is never allocated.
            if budget is not None and not budget.charge(map_pages(size // SLOT_SIZE)):
                raise MemoryLimitError(
                    f"the server's --memory-limit cannot pay for the slot map of backing "
                    f"file {path} ({map_pages(size // SLOT_SIZE)} pages)"
                )
            try:
                backing = cls(fd, path, size // SLOT_SIZE, budget)
            except BaseException:
                if budget is not None:
                    budget.uncharge(map_pages(size // SLOT_SIZE))
                raise
        except BaseException as exc:
            os.close(fd)
            if created:
                with suppress(OSError):
                    os.unlink(path, dir_fd=dir_fd)
            if isinstance(exc, OSError):
                raise ConfigError(f"cannot size backing file {path}: {exc.strerror}") from exc
            raise
        backing.created = created
        return backing

    # -- slots ---------------------------------------------------------------------

    @property
    def free(self) -> int:
        return self.slots - self.used

    def alloc(self) -> int | None:
        """The lowest free slot, now taken; None when the file is full."""
        with self._lock:
            if self.used >= self.slots:
                return None
            m = _NOT_FULL.search(self._map, self._hint)
            if m is None:
                return None
            byte = m.start()
            bits = self._map[byte]
            bit = (~bits & (bits + 1)).bit_length() - 1  # lowest clear bit
            slot = byte * 8 + bit
            if slot >= self.slots:
                return None
            self._map[byte] = bits | 1 << bit
            self._hint = byte
            self.used += 1
            return slot

    def take(self, slot: int) -> None:
        """Mark ``slot`` taken (restoring a saved pool).

        Raises:
            ConfigError: out of range or taken already.
        """
        with self._lock:
            if not 0 <= slot < self.slots:
                raise ConfigError(f"backing slot {slot} is outside {self.path}")
            byte, bit = divmod(slot, 8)
            if self._map[byte] >> bit & 1:
                raise ConfigError(f"backing slot {slot} of {self.path} is claimed twice")
            self._map[byte] |= 1 << bit
            self.used += 1

    def release(self, slot: int) -> None:
        """Give ``slot`` back (its page was freed, or its write failed)."""
        with self._lock:
            byte, bit = divmod(slot, 8)
            if self._map[byte] >> bit & 1:
                self._map[byte] &= ~(1 << bit)
                self.used -= 1
                self._hint = min(self._hint, byte)

    # -- I/O -----------------------------------------------------------------------

    def _enter(self) -> None:
        with self._io:
            if self.closed:
                raise BackingIoError(f"backing file {self.path} is closed (its pool was removed)")
            self._active += 1

    def _leave(self) -> None:
        with self._io:
            self._active -= 1
            if not self._active:
                self._io.notify_all()

    def write(self, slot: int, data: bytes) -> int:
        """Write ``data`` (at most a slot) into ``slot``; returns its tag.

        Raises:
            BackingIoError: the write failed or was short (a full disk: ENOSPC).
        """
        self._enter()
        try:
            n = os.pwrite(self._fd, data, slot * SLOT_SIZE)
        except OSError as exc:
            raise BackingIoError(
                f"cannot write to backing file {self.path}: {exc.strerror}"
            ) from exc
        finally:
            self._leave()
        if n != len(data):
            raise BackingIoError(
                f"short write to backing file {self.path} ({n} of {len(data)} bytes: disk full?)"
            )
        return self.tag(data)

    def read(self, slot: int, length: int, tag: int) -> bytes | None:
        """The ``length`` bytes in ``slot`` if they match ``tag``; None if they do not.

        Raises:
            BackingIoError: the read itself failed.
        """
        self._enter()
        try:
            data = os.pread(self._fd, length, slot * SLOT_SIZE)
        except OSError as exc:
            raise BackingIoError(f"cannot read backing file {self.path}: {exc.strerror}") from exc
        finally:
            self._leave()
        if len(data) != length or self.tag(data) != tag:
            return None
        return data

    def tag(self, data: bytes) -> int:
        """The page's 32-bit tag: keyed BLAKE2b, kept in its entry."""
        return int.from_bytes(hashlib.blake2b(data, key=self.key, digest_size=4).digest(), "little")

    @property
    def removed(self) -> bool:
        """The file's name is gone (unlinked behind the daemon's back)."""
        if self.closed:
            return False
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def flush(self) -> None:
        """Make what was written durable (before a state file names it)."""
        self._enter()
        try:
            os.fsync(self._fd)
        finally:
            self._leave()

    def close(self, *, unlink: bool = False) -> None:
        """Close the file; ``unlink``: remove it too (a file this daemon created
        for a client).  The slot map's charge goes back to the budget."""
        with self._io:
            if self.closed:
                return
            self.closed = True
            while self._active:
                self._io.wait()
        os.close(self._fd)
        if unlink:
            with suppress(OSError):
                os.unlink(self.path)
        if self._budget is not None:
            self._budget.uncharge(self.charged)

    def identity(self) -> tuple[int, int]:
        """(device, inode): two pools must never share one file."""
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino


def check_client_name(name: object) -> PurePosixPath:
    """A client's ``backing_file``, checked: a bare file name.

    Only a name directly inside --backing-dir: a subdirectory could be swapped
    for a symlink by whoever may write into it, between the file's creation
    and its removal or reopening at a restart (both by path), and the daemon
    would then delete or write a file elsewhere.

    Raises:
        ConfigError: empty, not UTF-8, ``.`` or ``..``, or with a ``/``.
    """
    if not isinstance(name, str) or not name or "\0" in name or len(name) > 255:
        raise ConfigError("backing_file must be a name of 1..255 characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("backing_file must be valid UTF-8") from None
    if "/" in name or name in (".", ".."):
        raise ConfigError(
            f"backing_file {name!r}: over HTTP only a file name directly inside the "
            "daemon's --backing-dir (no directory, no absolute path, no '..')"
        )
    return PurePosixPath(name)


def open_client_dir(directory: str, rel: PurePosixPath) -> int:
    """A descriptor of the directory that will hold ``rel``, walked from
    ``directory`` one component at a time without following a symlink (a
    directory swapped for one meanwhile is refused, not followed).

    Raises:
        ConfigError: a component is missing, not a directory, or a symlink.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(directory, flags)
    except OSError as exc:
        raise ConfigError(f"cannot open --backing-dir {directory}: {exc.strerror}") from exc
    try:
        for part in rel.parts[:-1]:
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
                raise ConfigError(
                    f"backing_file {str(rel)!r}: {part!r} inside --backing-dir is {why}"
                ) from exc
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd
