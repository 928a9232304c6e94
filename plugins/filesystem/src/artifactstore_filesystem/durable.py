"""Low-level file operations for atomic, durable writes: temporary files, full writes, fsync, copies.

Every ``OSError`` raised here carries the path it concerns in ``filename`` (``os.write`` alone would not),
so the store can report it relative to its root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys

from .layout import TEMP_PREFIX

__all__ = [
    "copy_range",
    "fsync_dir",
    "fsync_file",
    "make_temp",
    "unlink_quiet",
    "write_all",
    "write_at",
]

_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# One write call per this many bytes: macOS refuses writes above 2 GiB, and smaller calls keep a failure
# (disk full) close to where it happened.
_MAX_WRITE = 8 * 1024 * 1024
# Errors of copy_file_range that mean "not possible here" (old kernel, other file system), not "failed".
_NO_COPY_RANGE = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1)}
# Errors of fsync on a directory that mean "not supported by this file system", which we accept as SQLite does.
_NO_DIR_FSYNC = {errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1), errno.EBADF}


def _with_path(exc: OSError, path: str) -> OSError:
    if exc.filename is None:
        exc.filename = path
    return exc


def make_temp(directory: str) -> tuple[int, str]:
    """Create a new, empty temporary file in ``directory``; return its descriptor and path.

    The name starts with :data:`~artifactstore_filesystem.layout.TEMP_PREFIX`, which no artifact name
    does. The mode is ``0o666`` less the umask, like any file the user creates.
    """
    while True:
        path = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(8)}")
        try:
            return os.open(path, _CREATE_FLAGS, 0o666), path
        except FileExistsError:  # pragma: no cover - 64 random bits colliding
            continue


def write_all(fd: int, data: bytes | memoryview, path: str) -> None:
    """Write all of ``data`` at the descriptor's position (``os.write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    try:
        while view:
            written = os.write(fd, view[:_MAX_WRITE])
            view = view[written:]
    except OSError as exc:
        raise _with_path(exc, path) from None


def write_at(fd: int, data: bytes | memoryview, offset: int, path: str) -> None:
    """Write all of ``data`` at ``offset`` (portable: ``os.pwrite`` does not exist on Windows)."""
    try:
        os.lseek(fd, offset, os.SEEK_SET)
    except OSError as exc:
        raise _with_path(exc, path) from None
    write_all(fd, data, path)


def fsync_file(fd: int, path: str) -> None:
    """Flush a file's data and metadata to stable storage.

    On macOS ``fsync`` only reaches the drive's cache; ``F_FULLFSYNC`` (what SQLite uses) reaches the medium.
    """
    try:
        if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
            import fcntl

            try:
                fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
                return
            except OSError:
                pass  # not supported by this file system: fall back to fsync
        os.fsync(fd)
    except OSError as exc:
        raise _with_path(exc, path) from None


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (a new name, a removed name) durable.

    A no-op on Windows, where directories cannot be opened for fsync and NTFS journals metadata itself,
    and for a directory that no longer exists (a concurrent clear removed it: its removal is the newer state).
    """
    if os.name == "nt":  # pragma: no cover - Windows only
        return
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise _with_path(exc, path) from None
    finally:
        os.close(fd)


def copy_range(src: int, offset: int, count: int, dst: int, path: str, chunk: int) -> None:
    """Append ``count`` bytes of ``src`` from ``offset`` to ``dst`` (at its position) in bounded memory.

    Uses ``copy_file_range`` where the kernel offers it (an in-kernel copy, a reflink on btrfs and XFS),
    otherwise reads and writes ``chunk`` bytes at a time.

    Raises:
        OSError: the copy failed; ``EIO`` if ``src`` is shorter than ``offset + count``.
    """
    done = 0
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is not None:
        try:
            while done < count:
                copied = copy_file_range(src, dst, min(count - done, max(chunk, _MAX_WRITE)), offset + done)
                if copied == 0:
                    raise OSError(errno.EIO, "source file ended early")
                done += copied
            return
        except OSError as exc:
            if done or exc.errno not in _NO_COPY_RANGE:
                raise _with_path(exc, path) from None
    try:
        os.lseek(src, offset, os.SEEK_SET)
        while done < count:
            data = os.read(src, min(chunk, count - done))
            if not data:
                raise OSError(errno.EIO, "source file ended early")
            write_all(dst, data, path)
            done += len(data)
    except OSError as exc:
        raise _with_path(exc, path) from None


def unlink_quiet(path: str) -> None:
    """Remove ``path`` if it is there; used for cleanup, where a second error would hide the first."""
    with contextlib.suppress(OSError):
        os.unlink(path)
