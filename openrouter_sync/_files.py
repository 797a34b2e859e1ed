"""Opening files in places other local users can write to (``/tmp``), without following what they plant."""

from __future__ import annotations

import errno
import os
import stat
from typing import IO

#: Flags that make opening a planted FIFO or terminal harmless: it never waits, never becomes ours.
QUIET = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class UnsafeFile(OSError):
    """A file in a shared place that is not safely ours (see ``open_private``)."""

    def __str__(self) -> str:
        return str(self.strerror)


def open_private(path: str) -> int:
    """Open (or create, mode 0600) a file in a place others can write to, such as ``/tmp``, for
    reading and writing, refusing anything another local user could have planted there: a
    symbolic link (``O_NOFOLLOW``), a FIFO, device or directory, a file owned by another user or
    writable by group or others, or one with other hard links (a link to one of our own files
    would have us overwrite it). Raises ``UnsafeFile`` saying which, or ``OSError``."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | QUIET
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise UnsafeFile(exc.errno or errno.ELOOP, "it is a symbolic link (not followed)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(errno.EINVAL, "it is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise UnsafeFile(errno.EPERM, f"it is owned by another user (uid {info.st_uid})")
        if info.st_mode & 0o022:
            raise UnsafeFile(errno.EPERM, f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})")
        if info.st_nlink != 1:
            raise UnsafeFile(errno.EPERM, f"it has {info.st_nlink} hard links")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: str) -> IO[str]:
    """Open a text file to append to (created 0644 if missing) as ``open(path, "a")`` would, but
    never through a symbolic link, never a FIFO (which would wait for a reader forever), device or
    directory, and never a file of another user. Raises ``UnsafeFile`` or ``OSError``."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | QUIET
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise UnsafeFile(exc.errno or errno.ELOOP, f"{path} is a symbolic link (not followed)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(errno.EINVAL, f"{path} is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise UnsafeFile(errno.EPERM, f"{path} is owned by another user (uid {info.st_uid})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "a", encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise
