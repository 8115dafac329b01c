"""A page file opened once: the file checked is the file read.

``push FILE`` and ``estimate FILE`` are often run by root on files in
directories others can write.  Checking a path and reopening it later would
read whatever the path names by then (a FIFO that blocks forever, another
file), so a page file is opened once, its descriptor checked (a regular file
of whole pages) and every page read through it (``pread``).

A symbolic link as the last component of the path is refused (``O_NOFOLLOW``):
a link dropped by another user cannot turn root's ``push`` into a copy of
/etc/shadow into a pool others may fetch from.  A user who names a link to
their own file names the file instead (``"$(realpath LINK)"``).  Directories
on the way are resolved as usual: name files through directories that whoever
you do not trust cannot write.

The open does not block: ``O_NONBLOCK`` makes opening a FIFO return at once (a
FIFO is then refused as not a regular file), and a regular file ignores it.
Anything but a regular file or a symlink is refused before it is opened, so a
device is never opened at all (a tape rewinds, a terminal hangs up).
"""

from __future__ import annotations

import os
import stat

from zswapd.closing import Closing
from zswapd.errors import ConfigError

__all__ = ["PAGE_SIZE", "PageFile", "open_page_file"]

PAGE_SIZE = 4096


class PageFile(Closing):
    """An open page file: ``pages`` whole 4096-byte pages, read by offset."""

    def __init__(self, name: str, fd: int, pages: int) -> None:
        self.name = name
        self.fd = fd
        self.pages = pages

    def read_page(self, offset: int) -> bytes | None:
        """The page at byte ``offset``; None if the file no longer reaches it."""
        data = os.pread(self.fd, PAGE_SIZE, offset)
        return data if len(data) == PAGE_SIZE else None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _not_regular(name: str) -> ConfigError:
    return ConfigError(f"{name}: not a regular file (a page file is 4096-byte pages)")


def open_page_file(name: str) -> PageFile:
    """Open ``name`` for reading pages, checked through the descriptor it returns.

    Raises:
        ConfigError: it cannot be opened, is a symbolic link, is not a regular
            file, or is not a whole number of pages.
    """
    try:
        st = os.lstat(name)
    except OSError as exc:
        raise ConfigError(f"{name}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{name}: is a symbolic link; name the file it points to")
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(name)  # before opening: a device is never opened
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP: made a symlink since the lstat
        raise ConfigError(f"{name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file that will be read, whatever the path names now
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(name)
        if st.st_size % PAGE_SIZE:
            raise ConfigError(
                f"{name}: {st.st_size} bytes is not a whole number of 4096-byte pages"
            )
    except BaseException:
        os.close(fd)
        raise
    return PageFile(name, fd, st.st_size // PAGE_SIZE)
