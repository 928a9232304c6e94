"""The filesystem store: each artifact is one file (envelope head, then payload) under a root directory.

Writes are atomic and durable: the bytes go to a temporary file in the artifact's own directory, which
is flushed and fsynced, then published under its final name in one step (``os.link``, which fails if
the name exists, for write-once; ``os.replace`` for overwrite), and the directory is fsynced. A reader or
a process killed at any moment sees either no artifact or a complete one, never a partial file.
See ``docs/filesystem.md`` for the layout and the guarantees.
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from artifactstore_core import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactInfo,
    ArtifactStore,
    ArtifactStoreError,
    BackendError,
    BackendUnavailableError,
    Capabilities,
    CapacityError,
    Codec,
    ConfigurationError,
    Message,
    SerializationError,
)
from artifactstore_core.envelope import PREFIX_SIZE, Header, content_stream, new_hasher
from artifactstore_core.ids import is_legal, validate_namespace
from artifactstore_core.store import ContextThreadPoolExecutor, checked_read

from . import durable
from .layout import FINAL, PART, TEMP_PREFIX, decode_components, encode_components
from .reader import VerifiedPayload, check_payload_size, payload_size_error
from .settings import FilesystemSettings

__all__ = ["FilesystemStore"]

logger = logging.getLogger(__name__)

_ROOT_ENV = "ARTIFACT_STORE_FILESYSTEM_ROOT"
# O_NONBLOCK: opening a FIFO that sits at an artifact's name must not wait for a writer (the open is then
# refused by the regular-file check); on a regular file it changes nothing.
# O_NOFOLLOW: a symbolic link at an artifact's name is refused, as saves refuse it, never read through: read
# through, it made an id exist that list() did not list and clear() did not remove (see FilesystemStore._open_file).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = (
    os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | _NOFOLLOW
)
# What open(2) with O_NOFOLLOW fails with at a symbolic link: ELOOP (Linux, macOS), EMLINK (FreeBSD), EFTYPE (NetBSD).
_LINK_REFUSED = {errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", errno.ELOOP)}
# The root's lock file is opened without following a symbolic link at its name (ELOOP instead).
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
# A writer retries this often when a concurrent clear/delete removes the (empty) directory it just created.
_DIR_RETRIES = 100
# link(2) errors that mean "this file system has no hard links" (FAT, some network and FUSE file systems).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1), errno.EMLINK}
# A write-once publish tries to create the final name at most this often when the file that made it fail
# is deleted before it can be read (concurrent deletes or clears), so no race can keep a save spinning.
_PUBLISH_ATTEMPTS = 100
# Entries clear() reads from a directory before it removes them and reads the directory again (see
# FilesystemStore._clear_walk): bounds its memory in a namespace of millions of files.
_CLEAR_BATCH = 4096
# Threads that write and fsync the files of one save_many at once.
_BATCH_THREADS = 8
_CAPACITY = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
# (st_dev, st_ino) of the directories whose entry, and the entries of the directories above them up to the
# root's parent, this process has fsynced: a directory another writer created may have lost that writer (it
# dies between mkdir and fsync), and a save into it promises that its artifact is reachable after a power
# loss. Checked once per directory and process; forgotten whole past _DURABLE_DIRS_MAX entries.
# A directory this process removes is forgotten (see _remove_dir): file systems hand its inode number to the
# next directory made (ext4 does so at once, often for the next namespace), which would pass as known. No
# field of os.stat tells two lives of one inode number apart (a directory's ctime changes with every entry,
# a birth time is not offered on Linux and is coarse), so a removal by another process stays unseen here.
_DURABLE_DIRS: set[tuple[int, int]] = set()
_DURABLE_DIRS_MAX = 65536
# Directories in which a delete of this process removed an artifact's file and then failed (or was interrupted)
# before fsyncing the directory: the removal may not survive a power loss. The retry finds the file gone, and
# only this record tells it from the delete of an id that was never there, which the pipeline does often and
# which must not pay an fsync. A delete killed in that window leaves no record: its retry in another process
# cannot be told apart. Forgotten whole past _UNSYNCED_REMOVALS_MAX entries.
_UNSYNCED_REMOVALS: set[str] = set()
_UNSYNCED_REMOVALS_MAX = 4096
# Serialises the check-then-rename fallback within one process (the lock on <root>/.lock is per process,
# not per thread).
_FALLBACK_LOCK = threading.Lock()


def _reset_fallback_in_child() -> None:
    """In a forked child: a new ``_FALLBACK_LOCK``.

    A thread that was inside :meth:`FilesystemStore._root_lock` at the fork does not exist in the child,
    but the lock it held stays held there for good: the child's first save that needs it would hang.
    """
    global _FALLBACK_LOCK
    _FALLBACK_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_reset_fallback_in_child)


def _remove_dir(path: str) -> None:
    """Remove the empty directory ``path`` and forget it in ``_DURABLE_DIRS``.

    Raises:
        OSError: as :func:`os.rmdir` (not empty, gone, not a directory).
    """
    try:
        info = os.lstat(path)
    except OSError:
        info = None
    os.rmdir(path)
    if info is not None:
        _DURABLE_DIRS.discard((info.st_dev, info.st_ino))


#: Files smaller than this are read whole with one call.
_READ_WHOLE_BELOW = 64 * 1024


def _read_exact(file: io.FileIO, size: int) -> bytes:
    """Read ``size`` bytes (fewer only at the end of the file).

    One ``read`` returns a whole regular file's range (up to 2 GiB on Linux) straight into a new bytes
    object, which ``bytes`` content then keeps: no further copy. Short reads are joined.
    """
    data = file.read(size) or b""
    if len(data) == size or not data:
        return data
    parts, got = [data], len(data)
    while got < size:
        more = file.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class FilesystemStore(ArtifactStore):
    """A namespace of artifacts stored as files under a root directory, shared by every process.

    Args:
        settings: the root and durability options; default :class:`FilesystemSettings` from the
            environment and config file.
        namespace: the namespace.
        codec: the envelope codec (signing key, compression).

    Raises:
        InvalidStepIdError: if ``namespace`` is not legal.

    Opening sweeps temporary files older than ``temp_max_age`` that killed writers left in this
    namespace (best effort: a failure there is logged, not raised).
    """

    backend_name = "filesystem"
    capabilities = Capabilities(
        cross_process=True,
        persistent=True,
        native_ttl=False,
        atomic_create=True,
        streaming=True,
        list_namespaces=True,
    )

    def __init__(
        self, settings: FilesystemSettings | None = None, *, namespace: str = "default", codec: Codec | None = None
    ) -> None:
        super().__init__(namespace=namespace, codec=codec)
        self._settings = settings if settings is not None else FilesystemSettings()
        # Absolute once, so a later chdir does not move the store.
        self._root = os.path.abspath(self._settings.root)
        self._ns_parts = encode_components(self.namespace)
        self._ns_dir = os.path.join(self._root, *self._ns_parts)
        # Whether this root's file system has hard links: None until a publish finds out (see _links_work).
        self._hard_links: bool | None = None
        try:
            self._guard(self._ns_dir)
            self._sweep_temp(self._ns_dir)
        except (OSError, BackendError, ConfigurationError) as exc:
            logger.debug("could not sweep temporary files in %s: %s", self._relative(self._ns_dir), exc)

    @property
    def root(self) -> str:
        """The absolute root directory."""
        return self._root

    @property
    def settings(self) -> FilesystemSettings:
        """The settings this store was built with."""
        return self._settings

    def __repr__(self) -> str:
        return f"<FilesystemStore root={self._root!r} namespace={self.namespace!r}>"

    # -- paths ----------------------------------------------------------------------------------------

    def _path(self, step_id: str) -> tuple[str, str]:
        """The directory and final path of ``step_id``'s file, checked to stay inside the namespace.

        Raises:
            BackendError: a continuation directory on the way is a symbolic link (see :meth:`_refuse_linked_parts`).
        """
        parts = encode_components(step_id)
        path = os.path.join(self._ns_dir, *parts)
        # Second guard: the encoding already makes an escape impossible by construction.
        if not os.path.normpath(path).startswith(self._ns_dir + os.sep):
            raise BackendError(f"step id {step_id!r} maps outside its namespace directory", step_id=step_id)
        if len(parts) > 1:
            self._refuse_linked_parts(parts[:-1], step_id)
        return os.path.dirname(path), path

    def _refuse_linked_parts(self, parts: builtins.list[str], step_id: str) -> None:
        """Raise if one of the continuation directories ``parts`` of a long id's path is a symbolic link.

        Followed, such a link (made by hand: the store never makes one) leads to another id's directory: the
        id read, and was deleted, as that other artifact, and a save of it landed under that other id, while
        list() and clear() (which follow no link) never saw it. Costs an lstat per continuation directory,
        for ids whose encoding exceeds one path component only.

        Raises:
            BackendError: naming the link.
        """
        directory = self._ns_dir
        for part in parts:
            directory = os.path.join(directory, part)
            try:
                mode = os.lstat(directory).st_mode
            except OSError:
                return  # missing (nor are those below it), or in the way: the operation itself reports it
            if stat.S_ISLNK(mode):
                raise BackendError(
                    f"artifact {step_id!r} in namespace {self.namespace!r}: a symbolic link sits at "
                    f"{self._relative(directory)!r} under the filesystem root, where the store needs a directory "
                    "of the artifact's path; it was not followed: remove it",
                    step_id=step_id,
                )

    def _guard(self, path: str) -> None:
        """Refuse to write or delete through a symbolic link that leads out of the root."""
        real_root = os.path.realpath(self._root)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise BackendError(
                f"{self._relative(path)!r} resolves outside the filesystem root ({_ROOT_ENV}) through a symbolic "
                "link; refusing to write or delete there"
            )

    def _relative(self, path: object) -> str:
        # An OSError's filename may be anything the failing call was given: None, a path, or a file
        # descriptor (io.FileIO(fd) on a directory reports the fd number), which names no path.
        if not isinstance(path, (str, bytes, os.PathLike)):
            return "(unknown path)"
        text = os.fsdecode(path)
        if text == self._root or text.startswith(self._root.rstrip(os.sep) + os.sep):
            return os.path.relpath(text, self._root)
        return text

    def _placed(self, path: object) -> str:
        """Where ``path`` (an ``OSError``'s filename) lies, for a message: under the root, or on the way to
        it (a root not created yet, whose parent the user may not write to), or elsewhere."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return "under the filesystem root"
        text = os.fsdecode(path)
        if text == self._root or text.startswith(self._root.rstrip(os.sep) + os.sep):
            return "under the filesystem root"
        if self._on_the_way(text):
            return "on the way to the filesystem root"
        return "outside the filesystem root"

    def _on_the_way(self, path: object) -> bool:
        """Whether ``path`` is a directory above the root (where a root not created yet would be made)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        return self._root.startswith(os.fsdecode(path).rstrip(os.sep) + os.sep)

    def _ensure_dir(self, directory: str, created: builtins.list[str]) -> None:
        """Create ``directory`` and the missing directories above it; append each new one's parent to
        ``created`` (they need an fsync to make the new entries durable).

        Raises:
            ConfigurationError, BackendError: a symbolic link to nothing stands where a directory is needed
                (see :meth:`_dangling_link`).
            OSError: as :func:`os.mkdir`.
        """
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        if parent != directory:
            self._ensure_dir(parent, created)
        try:
            os.mkdir(directory)
        except FileExistsError:
            # A symbolic link whose target is missing (a mount point not mounted) makes mkdir fail as "exists"
            # and the directories below it "not found": the save retried for a second, then blamed '.'.
            if os.path.islink(directory) and not os.path.isdir(directory):
                raise self._dangling_link(directory) from None
            return
        created.append(parent)

    def _dangling_link(self, path: str) -> BackendError | ConfigurationError:
        """The error for the symbolic link ``path`` to a missing directory, standing where one is needed.

        At or above the root it is the setting's (or the mount's) fault: a :class:`ConfigurationError` naming
        ``ARTIFACT_STORE_FILESYSTEM_ROOT``; inside the root, broken state: a ``BackendError``.
        """
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if path == self._root or self._on_the_way(path):
            return ConfigurationError(
                f"filesystem store at {self._root!r}: {path!r}, on the way to the root, is a symbolic link to "
                f"{target!r}, which does not exist (a file system not mounted?): mount or create it, or set "
                f"{_ROOT_ENV} to another directory"
            )
        # Relative to the root, which it does not show: an artifact server sends this to its clients.
        return BackendError(
            f"{self._relative(path)!r} under the filesystem root is a symbolic link to a directory that does not "
            "exist, where the store needs a directory; remove it"
        )

    def _new_temp(self, directory: str) -> tuple[int, str]:
        """A temporary file in ``directory``, creating the directory first.

        A concurrent clear or delete may remove an empty directory between our mkdir and our create; then
        we make it again. Once our temporary file is in it, the directory cannot be removed under us, so
        only then are new directories fsynced (an fsync inside that window would make losing it likely).
        """
        created: builtins.list[str] = []
        for attempt in range(_DIR_RETRIES + 1):
            try:
                self._ensure_dir(directory, created)
                fd, path = durable.make_temp(directory)
                break
            except FileNotFoundError:
                if attempt == _DIR_RETRIES:
                    raise
                if attempt >= 3:
                    # Back off so a clear running in a loop cannot starve this writer.
                    time.sleep(min(0.0005 * attempt, 0.01))
        if self._settings.fsync:
            try:
                for parent in dict.fromkeys(reversed(created)):
                    durable.fsync_dir(parent)
                self._sync_above(directory)
            except BaseException:
                os.close(fd)
                durable.unlink_quiet(path)
                raise
        return fd, path

    def _sync_above(self, directory: str) -> None:
        """Fsync the directories above ``directory`` up to the root's parent, once per directory and process.

        Whoever created one of them fsynced its parent only if it lived long enough; a save into
        ``directory`` must not depend on that. The creator's own fsyncs (in :meth:`_new_temp`) do not
        replace this: the directories above the ones it created may have been left by a killed writer.
        """
        try:
            info = os.stat(directory)
        except FileNotFoundError:
            return  # removed by a concurrent clear or delete since: nothing of it to make durable
        key = (info.st_dev, info.st_ino)
        if key in _DURABLE_DIRS:
            return
        stop = os.path.dirname(self._root)
        parent = os.path.dirname(directory)
        while parent != stop and os.path.dirname(parent) != parent:
            durable.fsync_dir(parent)
            parent = os.path.dirname(parent)
        try:
            durable.fsync_dir(parent)
        except PermissionError as exc:
            # The root's parent is not ours: a user may write a root whose parent they can only pass through
            # (mode 0711), which cannot be opened to fsync. Saves worked there before this step existed.
            logger.debug("could not fsync the filesystem root's parent directory: %s", exc)
        if len(_DURABLE_DIRS) >= _DURABLE_DIRS_MAX:
            _DURABLE_DIRS.clear()
        _DURABLE_DIRS.add(key)

    # -- writing --------------------------------------------------------------------------------------

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        with self._doing("save", step_id):
            temps: list[str] = []
            try:
                prepared = self._prepare(step_id, message, overwrite, temps)
                if prepared is not None:
                    self._publish(*prepared, overwrite)
                elif self._settings.fsync:
                    # The identical artifact is already there, but its writer may have been killed between
                    # publishing it and fsyncing its directory: returning success promises durability.
                    directory = self._path(step_id)[0]
                    durable.fsync_dir(directory)
                    self._sync_above(directory)
            finally:
                for temp in temps:
                    durable.unlink_quiet(temp)

    def _save_many(self, items: builtins.list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        """Write and fsync every file first (on a few threads, so the fsyncs overlap), then publish them all
        and fsync each directory once: one directory flush per batch instead of one per artifact.
        """
        if len(items) == 1 or not self._settings.fsync:
            super()._save_many(items, overwrite, ttl)
            return
        temps: list[str] = []
        directories: set[str] = set()
        try:
            # Each in a copy of the caller's context: what the caller set for its codec (such as
            # reusing_verified_digests) holds in the workers too.
            with ContextThreadPoolExecutor(max_workers=min(_BATCH_THREADS, len(items))) as pool:
                futures = [pool.submit(self._prepare, step_id, message, overwrite, temps) for step_id, message in items]
            prepared = [future.result() for future in futures]
            for (step_id, _), entry in zip(items, prepared, strict=True):
                if entry is not None:
                    with self._doing("save", entry[0]):
                        self._publish(*entry, overwrite, sync=False)
                # An identical artifact already stored (entry None) gets its directory fsynced too, as in
                # _save: its writer may have died before doing it.
                directories.add(self._path(step_id)[0])
        finally:
            try:
                with self._doing("save_many", None):
                    for directory in directories:
                        durable.fsync_dir(directory)
                        self._sync_above(directory)  # known already, unless only identical artifacts went there
            finally:
                for temp in temps:
                    durable.unlink_quiet(temp)

    def _prepare(
        self, step_id: str, message: Message, overwrite: bool, temps: builtins.list[str]
    ) -> tuple[str, str, str, Header] | None:
        """Encode ``message`` into a complete, synced temporary file (appended to ``temps``).

        Returns what :meth:`_publish` needs, or ``None`` when an identical artifact is already stored.

        Raises:
            ArtifactExistsError: a different artifact is stored and not ``overwrite`` (checked before
                writing, to spare the write; :meth:`_publish` checks again, atomically).
            BackendError: something other than a regular file (a symbolic link, a directory) sits at the
                final name and not ``overwrite``.
            ArtifactStoreError: any failure, naming ``step_id``.
        """
        with self._doing("save", step_id):
            encoded = self.codec.encode(message, place=(self.namespace, step_id))
            directory, final = self._path(step_id)
            # Before the look for an existing artifact: through a link out of the root, that look found the
            # artifact out there, and a save returned as an identical retry (fsyncing a directory outside the
            # root) or raised ArtifactExistsError, instead of refusing the link as every other save does.
            self._guard(directory)
            if not overwrite:
                # Looked at without following a symbolic link, as the publish does: through a link, a save
                # "found" an identical artifact and stored nothing (links are never listed nor cleared), or
                # read a file outside the root.
                existing = self._existing_at(final, step_id)
                if existing is not None:
                    if existing.identity() == encoded.header.identity():
                        return None
                    raise self._exists_error(step_id)
            fd, temp = self._new_temp(directory)
            temps.append(temp)
            try:
                # Head and payload are written one after the other, never concatenated into a copy.
                durable.write_all(fd, encoded.head, temp)
                durable.write_all(fd, encoded.payload, temp)
                if self._settings.fsync:
                    durable.fsync_file(fd, temp)
            finally:
                os.close(fd)
            return step_id, temp, final, encoded.header

    def _save_stream(
        self, step_id: str, stream: IO[bytes], template: Message, overwrite: bool, ttl: float | None
    ) -> None:
        with self._doing("save_stream", step_id):
            place = (self.namespace, step_id)

            def head_for(size: int, digest: str) -> tuple[bytes, Header]:
                return self.codec.encode_stream_head(template, size=size, digest=digest, place=place)

            directory, final = self._path(step_id)
            self._guard(directory)
            # With the payload size known up front (a regular file, a BytesIO), the head's length is known too
            # (the digest is always 64 hex digits), so the payload is written once, after a gap the head fills.
            # Otherwise the payload goes to one temporary file and is copied after the head into a second one.
            expected = _remaining_size(stream)
            reserve = len(head_for(expected, "0" * 64)[0]) if expected is not None else 0
            fd, temp = self._new_temp(directory)
            temps = [temp]
            try:
                try:
                    size, digest = self._copy_stream(stream, fd, reserve, temp)
                    head, header = head_for(size, digest)
                    if len(head) == reserve:
                        durable.write_at(fd, head, 0, temp)
                        if self._settings.fsync:
                            durable.fsync_file(fd, temp)
                    else:
                        temp = self._assemble(directory, head, fd, reserve, size, temps)
                finally:
                    os.close(fd)
                self._publish(step_id, temp, final, header, overwrite)
            finally:
                for path in temps:
                    durable.unlink_quiet(path)

    def _copy_stream(self, stream: IO[bytes], fd: int, offset: int, path: str) -> tuple[int, str]:
        """Write ``stream`` to ``fd`` from ``offset`` in chunks while hashing it; return size and digest."""
        chunk = self._settings.chunk_size
        hasher = new_hasher(chunk)
        size = 0
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        while True:
            try:
                data = checked_read(stream.read(chunk))
            except (SerializationError, MemoryError):
                # A MemoryError is this process running out of memory (the chunk's buffer is ours), not the
                # caller's stream failing: it goes on as what it is.
                raise
            except Exception as exc:
                # The caller's source failed, not the file system: say so rather than blame the root, and as
                # the other backends do (a SerializationError, not retryable: the stream is spent).
                raise SerializationError(f"reading the stream to save failed: {type(exc).__name__}: {exc}") from exc
            if not data:
                break
            hasher.update(data)
            durable.write_all(fd, data, path)
            size += len(data)
        return size, hasher.hexdigest()

    def _assemble(self, directory: str, head: bytes, fd: int, offset: int, size: int, temps: list[str]) -> str:
        """A second temporary file holding ``head`` then the payload copied from ``fd``; returns its path."""
        out, path = self._new_temp(directory)
        temps.append(path)
        try:
            durable.write_all(out, head, path)
            durable.copy_range(fd, offset, size, out, path, self._settings.chunk_size)
            if self._settings.fsync:
                durable.fsync_file(out, path)
        finally:
            os.close(out)
        return path

    def _publish(
        self, step_id: str, temp: str, final: str, header: Header, overwrite: bool, *, sync: bool = True
    ) -> None:
        """Give the complete, synced ``temp`` its final name under the write-once rule; fsync the directory.

        The caller removes ``temp`` afterwards (after ``link`` it is a second name of the final file).
        With ``sync=False`` the caller fsyncs the directory itself (once for a batch).
        """
        directory = os.path.dirname(final)
        if overwrite:
            try:
                if self._links_work(temp):
                    os.replace(temp, final)
                else:
                    # Without hard links a write-once save checks then renames under the root lock; a replace
                    # landing between its check and its rename would be replaced in turn, by an artifact
                    # saved write-once over an existing one: the overwrite lost although it returned.
                    with self._root_lock():
                        os.replace(temp, final)
            except OSError as exc:
                # The OSError names the temporary file (removed right after), not what is in the way.
                blocked = self._directory_at(final, step_id)
                if blocked is None:
                    raise
                raise blocked from exc
        else:
            for _ in range(_PUBLISH_ATTEMPTS):
                try:
                    self._link(temp, final)
                    break
                except FileExistsError:
                    existing = self._existing_at(final, step_id)
                    if existing is None:
                        continue  # deleted between our attempt and our look: try to create it again
                    if existing.identity() == header.identity():
                        # An identical artifact: a safe retry, keep the stored one. Its writer may have
                        # been killed before the directory fsync below, so that fsync is still ours to do.
                        break
                    raise self._exists_error(step_id) from None
            else:
                raise BackendUnavailableError(
                    f"save of {step_id!r} in namespace {self.namespace!r}: its file kept being deleted between "
                    f"{_PUBLISH_ATTEMPTS} attempts to create it and looks at it (concurrent deletes or clears); "
                    "nothing was stored, retry",
                    step_id=step_id,
                )
        # Drop the temporary name before the directory fsync, so both changes are made durable at once.
        durable.unlink_quiet(temp)
        if sync and self._settings.fsync:
            durable.fsync_dir(directory)

    def _directory_at(self, final: str, step_id: str) -> BackendError | None:
        """The error naming a directory that sits at ``final`` (which no ``rename`` can replace), else ``None``."""
        try:
            mode = os.lstat(final).st_mode
        except OSError:
            return None
        return self._not_a_file(final, mode, step_id) if stat.S_ISDIR(mode) else None

    def _existing_at(self, final: str, step_id: str) -> Header | None:
        """The header of the artifact file that made our link fail, ``None`` if it is gone by now.

        Looked at without following a symbolic link: only a regular file is an artifact. Anything else
        (a dangling or any other symbolic link, a directory, a FIFO) is neither followed nor replaced.

        Raises:
            BackendError: something that is not a regular file sits at the final name.
            ArtifactCorruptedError, UnsupportedFormatError: the file there is not a readable envelope.
        """
        try:
            mode = os.lstat(final).st_mode
        except FileNotFoundError:
            return None
        except NotADirectoryError as exc:
            raise self._in_the_way(final, exc) from exc
        if not stat.S_ISREG(mode):
            raise BackendError(
                f"save of {step_id!r} in namespace {self.namespace!r}: {_file_kind(mode)} sits at its final name "
                f"{self._relative(final)!r} under the filesystem root, where only an artifact file belongs; "
                "it was neither followed nor replaced: remove it"
                + ("" if stat.S_ISDIR(mode) else ", or save with overwrite=True to replace it"),
                step_id=step_id,
            )
        return self._header_or_none(final, step_id)

    def _link(self, temp: str, final: str) -> None:
        """Create ``final`` as ``temp``, failing with ``FileExistsError`` if it exists (atomically)."""
        try:
            os.link(temp, final)
            self._hard_links = True
            return
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            self._hard_links = False
        if os.name == "nt":  # pragma: no cover - Windows: rename refuses an existing target
            os.rename(temp, final)
            return
        # No hard links here: check-then-rename, made atomic by a lock every writer on this root shares.
        with self._root_lock():
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, "artifact exists", final)
            os.rename(temp, final)

    def _links_work(self, temp: str) -> bool:
        """Whether this root's file system has hard links, learned once per store: from the first write-once
        publish, or else by linking the temporary file ``temp`` to a second temporary name and removing it.

        Where they are missing, an overwrite must take the root lock that write-once saves check and rename
        under. On Windows the fallback is a rename that refuses an existing target, atomic without the lock.
        """
        if self._hard_links is None and os.name != "nt":
            probe = temp + "-link"  # a temporary name too, so a killed prober's file is swept like any other
            try:
                os.link(temp, probe)
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                self._hard_links = False
            else:
                durable.unlink_quiet(probe)
                self._hard_links = True
        return self._hard_links is not False

    @contextmanager
    def _root_lock(self) -> Iterator[None]:
        import fcntl

        path = os.path.join(self._root, ".lock")
        with _FALLBACK_LOCK:
            try:
                fd = os.open(path, _LOCK_FLAGS, 0o666)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                # Followed, a link planted there would make the store create (or lock) a file anywhere.
                raise BackendError(
                    f"'.lock' under the filesystem root ({_ROOT_ENV}) is a symbolic link, which the store does not "
                    "follow (it could lead out of the root); remove it, the store creates a plain file there"
                ) from exc
            try:
                # A POSIX record lock (lockf), not flock: a flock belongs to the open file, so a child forked
                # while this descriptor was open would keep the lock through its copy after we close ours,
                # and every writer on the root (the child included) would wait until the child exits. A
                # record lock belongs to this process alone and ends when it closes the descriptor.
                fcntl.lockf(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # -- reading --------------------------------------------------------------------------------------

    def _open_file(self, path: str, step_id: str) -> io.FileIO | None:
        """The artifact file opened unbuffered for reading, or ``None`` if there is none.

        Raises:
            BackendError: something other than a regular file (a symbolic link, a directory, a FIFO, a device)
                is there.
        """
        if not _NOFOLLOW:  # pragma: no cover - Windows: no O_NOFOLLOW, so look first (racy, but not silent)
            self._refuse_link(path, step_id)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            return None
        except NotADirectoryError as exc:
            raise self._in_the_way(path, exc) from exc
        except OSError as exc:
            if exc.errno in _LINK_REFUSED:
                self._refuse_link(path, step_id)
            raise
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                # Read as an artifact, a FIFO would block and a device could stream without end.
                raise self._not_a_file(path, mode, step_id)
            return io.FileIO(fd, "rb", closefd=True)
        except BaseException:
            os.close(fd)
            raise

    def _refuse_link(self, path: str, step_id: str) -> None:
        """Raise the error naming a symbolic link if one sits at ``path`` (``step_id``'s name); else nothing.

        Saves refuse such a link (neither followed nor replaced), and list() and clear() pass over it; read
        through, an id existed that was never listed and that clear() left behind.

        Raises:
            BackendError: a symbolic link (dangling or not) is at ``path``.
        """
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return
        if stat.S_ISLNK(mode):
            raise self._not_a_file(path, mode, step_id)

    def _in_the_way(self, path: str, exc: NotADirectoryError) -> BackendError | ConfigurationError:
        """The error for a file standing where ``path`` needs a directory (the root itself, a namespace's or
        a continuation directory), never "absent" (a root that is a file would otherwise read as an empty
        store, and clear() would report 0). A file at the root or on the way to it is the setting's fault,
        a :class:`ConfigurationError` naming it; a file inside the root is broken state, a ``BackendError``.

        The message names the file that is in the way, not ``path`` (which does not exist), so that "remove
        it" points at something; finding it costs a stat per level, on this error path only.
        """
        where = exc.filename if isinstance(exc.filename, str) else path
        blocker = self._first_non_directory(where)
        if blocker == self._root:
            what = f"the root {self._root!r} is a file, not a directory; set {_ROOT_ENV} to a directory"
            return ConfigurationError(f"filesystem store at {self._root!r}: {what}")
        if not blocker.startswith(self._root + os.sep):
            what = f"{blocker!r}, on the way to the root, is a file, not a directory; set {_ROOT_ENV} to a directory"
            return ConfigurationError(f"filesystem store at {self._root!r}: {what}")
        # Relative to the root, which it does not show: an artifact server sends this to its clients.
        return BackendError(
            f"{self._relative(blocker)!r} under the filesystem root is a file, not a directory, where the store "
            "needs one; remove it"
        )

    def _first_non_directory(self, path: str) -> str:
        """The first of the directories above the root, the root and the paths from it down to ``path`` that
        exists and is not a directory (symbolic links followed, as the failed call followed them); ``path``
        if none is (the tree changed since). Raises nothing."""
        above = []
        parent = os.path.dirname(self._root)
        while parent and parent != os.path.dirname(parent):
            above.append(parent)
            parent = os.path.dirname(parent)
        for ancestor in reversed(above):
            if os.path.exists(ancestor) and not os.path.isdir(ancestor):
                return ancestor
        current = self._root
        below = os.path.relpath(path, self._root).split(os.sep) if path.startswith(self._root + os.sep) else []
        for part in ["", *below]:
            current = os.path.join(current, part) if part else current
            # isdir() and exists() answer False, never raise, for a path they cannot stat.
            if not os.path.isdir(current):
                return current if os.path.exists(current) else path
        return path

    def nothing_found_note(self) -> str | None:
        """That the root does not exist, if it does not (a directory that is not there, or a symbolic link to
        one: a mount point not mounted); else ``None``. Raises nothing.

        A mistyped ``ARTIFACT_STORE_FILESYSTEM_ROOT`` otherwise reads as a plain miss ("no artifact
        'report'"), which sends the user looking for a step that never ran, and as an empty listing. The root
        is not made here: a read creates nothing, and the first save creates it. A root that is a file never
        needs this: every operation reports it (see :meth:`_in_the_way`).
        """
        if os.path.isdir(self._root):  # isdir() answers False, never raises, for a path it cannot stat
            return None
        # The root is not named, as in every message of this store: an artifact server sends the message to its
        # remote clients, to whom the server's paths are none of their business (`config` shows it).
        return (
            f"the filesystem root ({_ROOT_ENV}) does not exist: nothing has been saved there, or {_ROOT_ENV} "
            "names the wrong directory (`artifactstore config` shows it)"
        )

    def _not_a_file(self, path: str, mode: int, step_id: str) -> BackendError:
        """The error for ``mode``, not a regular file, at ``step_id``'s name: the store's state is broken
        there, which is an I/O failure to report, never "absent"."""
        return BackendError(
            f"artifact {step_id!r} in namespace {self.namespace!r}: {_file_kind(mode)} sits at its name "
            f"{self._relative(path)!r} under the filesystem root, where only an artifact file belongs; remove it",
            step_id=step_id,
        )

    def _read_header(self, file: io.FileIO, step_id: str) -> Header:
        """The verified header of ``step_id``'s artifact (signed for this namespace and that id)."""
        prefix = _read_exact(file, PREFIX_SIZE)
        size = self.codec.head_size(prefix)
        rest = _read_exact(file, size - PREFIX_SIZE)
        if len(rest) != size - PREFIX_SIZE:
            raise ArtifactCorruptedError("stored artifact is truncated inside its head")
        return self.codec.decode_head(prefix + rest, place=(self.namespace, step_id))

    def _header_or_none(self, path: str, step_id: str) -> Header | None:
        file = self._open_file(path, step_id)
        if file is None:
            return None
        with file:
            return self._read_header(file, step_id)

    def _read_message(self, file: io.FileIO, step_id: str) -> Message:
        # One read of up to 64 KiB: the whole of most artifacts, the head of nearly all (a read for each part
        # of the envelope, and one more for the end, cost a visible share of a small get).
        start = _read_exact(file, _READ_WHOLE_BELOW)
        whole = len(start) < _READ_WHOLE_BELOW  # the read reached the end of the file
        size = self.codec.head_size(start)
        if len(start) < size:
            if whole:
                raise ArtifactCorruptedError("stored artifact is truncated inside its head")
            # A head larger than the first read (a very large metadata or schema): read it again whole.
            file.seek(0)
            header = self._read_header(file, step_id)
        else:
            header = self.codec.decode_head(start[:size], place=(self.namespace, step_id))
            if whole:
                payload = start[size:]
                if len(payload) != header.stored_size:
                    raise payload_size_error(header)
                return self.codec.decode_payload(header, payload)
            file.seek(size)
        # A larger file: the payload is read straight into a bytes object of its own, which bytes content
        # then keeps (no copy of a large payload out of a bigger buffer). That read allocates the size the
        # header claims, so the file is checked to be that long first.
        check_payload_size(file, header)
        payload = _read_exact(file, header.stored_size)
        if len(payload) != header.stored_size or file.read(1):
            raise payload_size_error(header)
        return self.codec.decode_payload(header, payload)

    def _get(self, step_id: str) -> Message:
        with self._doing("get", step_id):
            file = self._open_file(self._path(step_id)[1], step_id)
            if file is None:
                raise self._not_found(step_id)
            with file:
                return self._read_message(file, step_id)

    def _info(self, step_id: str) -> ArtifactInfo:
        with self._doing("info", step_id):
            header = self._header_or_none(self._path(step_id)[1], step_id)
            if header is None:
                raise self._not_found(step_id)
            return header.info(step_id)

    def _exists(self, step_id: str) -> bool:
        with self._doing("exists", step_id):
            path = self._path(step_id)[1]
            try:
                # lstat: a symbolic link at the name is reported (below), as get() and save() report it, not
                # followed to a file that list() and clear() would never reach.
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                return False
            except NotADirectoryError as exc:
                raise self._in_the_way(path, exc) from exc
            if not stat.S_ISREG(mode):
                raise self._not_a_file(path, mode, step_id)
            return True

    def _open(self, step_id: str) -> IO[bytes]:
        return self._open_with_header(step_id)[1]

    def _open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
        with self._doing("open", step_id):
            file = self._open_file(self._path(step_id)[1], step_id)
            if file is None:
                raise self._not_found(step_id)
            try:
                header = self._read_header(file, step_id)
                if header.compression is not None:
                    # Compressed JSON or text was held in memory when saved; decode it whole and stream the result.
                    file.seek(0)
                    message = self._read_message(file, step_id)
                    file.close()
                    return header, content_stream(message)
                raw = VerifiedPayload(file, header, self._stream_failure(step_id))
                return header, io.BufferedReader(raw, buffer_size=min(self._settings.chunk_size, 1 << 20))
            except BaseException:
                file.close()
                raise

    def _stream_failure(self, step_id: str) -> Callable[[Exception], ArtifactStoreError]:
        def fail(exc: Exception) -> ArtifactStoreError:
            if isinstance(exc, ArtifactStoreError):
                error = exc
            elif isinstance(exc, OSError):
                error = self._os_error(exc, "read", step_id)
            else:  # pragma: no cover - VerifiedPayload only passes OSError and store errors
                error = BackendError(f"reading {step_id!r} failed: {type(exc).__name__}")
            return self._in_context(error, "open", step_id)

        return fail

    # -- listing, deleting ----------------------------------------------------------------------------

    def _scan(
        self, directory: str, parts: tuple[str, ...] = (), *, artifacts: bool = True
    ) -> Iterator[tuple[str, str, str | None]]:
        """Walk a namespace directory: ``("artifact", path, step_id)``, ``("temp", path, None)``, and
        ``("dir", path, None)`` for each continuation directory after its contents. Symlinks are not followed.

        With ``artifacts=False`` artifact files are passed over unexamined: a sweep looks for temporary files
        only, and decoding every artifact's name made opening a store of 100,000 artifacts 15 times slower
        than reading the directory.
        """
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            return
        except NotADirectoryError as exc:
            raise self._in_the_way(directory, exc) from exc
        # Streamed, not collected: a namespace may hold millions of files. Whether an entry added or removed
        # while the directory is read shows up is unspecified (removing entries during the read can even
        # skip others: clear() does not, see _clear_walk).
        with entries:
            for entry in entries:
                kind, step_id = _kind_of(entry, parts, artifacts)
                if kind == "dir":
                    yield from self._scan(entry.path, (*parts, entry.name), artifacts=artifacts)
                    yield "dir", entry.path, None
                elif kind is not None:
                    yield kind, entry.path, step_id

    def _list(self) -> Iterable[ArtifactInfo]:
        with self._doing("list", None):
            for kind, path, step_id in self._scan(self._ns_dir):
                if kind != "artifact" or step_id is None:
                    continue
                try:
                    header = self._header_or_none(path, step_id)
                except ArtifactStoreError as exc:
                    exc.step_id = step_id
                    raise
                if header is not None:  # None: deleted while we listed
                    yield header.info(step_id)

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        # Directory entries come in no useful order, and encoded names sort unlike the ids anyway ("%41" for
        # "A" before "-"). The page's ids are picked from the file names alone (no file opened), and only
        # the page's headers are read.
        def names() -> Iterator[tuple[str, str]]:
            for kind, path, step_id in self._scan(self._ns_dir):
                if kind == "artifact" and step_id is not None:
                    yield step_id, path

        def infos(chosen: list[tuple[str, str]]) -> Iterator[ArtifactInfo | None]:
            for step_id, path in chosen:
                try:
                    header = self._header_or_none(path, step_id)
                except ArtifactStoreError as exc:
                    exc.step_id = step_id
                    raise
                yield None if header is None else header.info(step_id)  # None: deleted since it was listed

        with self._doing("list", None):
            return self._page_of_ids(names, after, limit, infos)

    def _delete(self, step_id: str) -> bool:
        with self._doing("delete", step_id):
            directory, final = self._path(step_id)
            self._guard(directory)
            try:
                os.unlink(final)
            except FileNotFoundError:
                if directory in _UNSYNCED_REMOVALS:
                    self._finish_removal(directory)
                return False
            except NotADirectoryError as exc:
                raise self._in_the_way(final, exc) from exc
            if self._settings.fsync:
                try:
                    durable.fsync_dir(directory)
                except BaseException:
                    if len(_UNSYNCED_REMOVALS) >= _UNSYNCED_REMOVALS_MAX:
                        _UNSYNCED_REMOVALS.clear()
                    _UNSYNCED_REMOVALS.add(directory)
                    raise
            self._prune(directory, stop=self._ns_dir)
            return True

    def _finish_removal(self, directory: str) -> None:
        """Fsync ``directory``, where an earlier delete removed a file and failed before its own fsync, and
        remove the continuation directories that delete left empty (what a delete does after its unlink).
        """
        # Forgotten before the fsync, which then covers every removal recorded until now; one recorded
        # after this point stays recorded for the next retry.
        _UNSYNCED_REMOVALS.discard(directory)
        try:
            durable.fsync_dir(directory)
        except BaseException:
            _UNSYNCED_REMOVALS.add(directory)
            raise
        self._prune(directory, stop=self._ns_dir)

    def _prune(self, directory: str, *, stop: str) -> None:
        """Remove empty continuation directories from ``directory`` up to (not including) ``stop``."""
        while directory != stop and os.path.basename(directory).startswith(PART):
            try:
                _remove_dir(directory)
            except OSError:
                return  # not empty (another artifact, or a writer's temporary file) or already gone
            directory = os.path.dirname(directory)
            if self._settings.fsync:
                durable.fsync_dir(directory)

    def _clear(self) -> int:
        with self._doing("clear", None):
            self._guard(self._ns_dir)
            changed: set[str] = set()
            cutoff = time.time() - self._settings.temp_max_age
            removed = self._clear_walk(self._ns_dir, (), cutoff, changed, artifacts=True)
            if self._settings.fsync:
                for directory in sorted(changed, key=len, reverse=True):
                    durable.fsync_dir(directory)
            # The namespace directory goes too when empty, so namespaces() forgets it.
            self._prune_namespace(self._ns_dir)
            return removed

    def _clear_walk(
        self, directory: str, parts: tuple[str, ...], cutoff: float, changed: set[str], *, artifacts: bool
    ) -> int:
        """Remove from ``directory`` (a namespace's or continuation directory) and below: the artifacts (if
        ``artifacts``), the temporary files older than ``cutoff``, the continuation directories so emptied.
        Add each directory whose entries changed to ``changed``; return how many artifacts were removed.

        Reads up to :data:`_CLEAR_BATCH` entries, stops reading, removes them, then reads the directory again
        from its start, until a read reaches the end. Removing entries while a directory is being read makes
        file systems whose directory cookies are positions in the listing (SMB, some NFS servers) skip as
        many others: a clear that removed as it read left a third of a namespace behind there. Entries left
        in place (a live writer's temporary file, a directory still holding one) are remembered, so that
        they are not read into every batch again; stray files are never part of one.
        """
        removed = 0
        kept: set[str] = set()
        while True:
            batch: builtins.list[tuple[str, str, str]] = []
            complete = True
            try:
                entries = os.scandir(directory)
            except FileNotFoundError:
                return removed
            except NotADirectoryError as exc:
                raise self._in_the_way(directory, exc) from exc
            with entries:
                for entry in entries:
                    if entry.name in kept:
                        continue
                    kind, _ = _kind_of(entry, parts, artifacts)
                    if kind is None:
                        continue
                    if len(batch) == _CLEAR_BATCH:
                        complete = False
                        break
                    batch.append((kind, entry.path, entry.name))
            for kind, path, name in batch:
                if kind == "artifact":
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        continue  # deleted concurrently: not ours to count
                    removed += 1
                    changed.add(directory)
                elif kind == "temp":
                    if not self._sweep_one(path, cutoff):
                        kept.add(name)
                else:
                    removed += self._clear_walk(path, (*parts, name), cutoff, changed, artifacts=artifacts)
                    try:
                        _remove_dir(path)
                    except OSError:
                        kept.add(name)  # not empty: a live writer's temporary file or a stray file
                        continue
                    changed.add(directory)
            if complete:
                return removed

    def _prune_namespace(self, directory: str) -> None:
        """Remove the namespace directory ``directory`` and the continuation directories above it, as far
        as they are empty."""
        while directory != self._root:
            try:
                _remove_dir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)
            if self._settings.fsync:
                durable.fsync_dir(directory)

    def _sweep_temp(self, directory: str) -> None:
        # Removes while it reads: a file system that then skips entries leaves some for the next opening.
        cutoff = time.time() - self._settings.temp_max_age
        for kind, path, _ in self._scan(directory, artifacts=False):
            if kind == "temp":
                self._sweep_one(path, cutoff)

    @staticmethod
    def _sweep_one(path: str, cutoff: float) -> bool:
        """Remove the temporary file ``path`` if it is older than ``cutoff``; whether it is gone now."""
        try:
            if os.lstat(path).st_mtime > cutoff:
                return False  # may belong to a write in progress
            os.unlink(path)
        except FileNotFoundError:
            pass  # its writer published or removed it meanwhile
        return True

    def _close(self) -> None:
        """Nothing to release: no file stays open between calls."""

    # -- namespaces -----------------------------------------------------------------------------------

    def _namespaces(self) -> Iterable[str]:
        """The namespaces under this store's root that hold at least one artifact.

        A namespace directory without an artifact is what a crashed or collected run left behind: its
        temporary files older than ``temp_max_age`` and then-empty directories are removed after the walk
        (best effort), since no other call would ever reach them (``artifactstore gc`` sees only the listed
        ones).

        A namespace directory that cannot be read (another user's, mode 0700) is listed: it exists and may
        hold artifacts, and the namespace's own operations raise its ``AccessDeniedError``. Failing the whole
        listing made ``artifactstore gc`` collect nothing because of one namespace it could not read.
        """
        with self._doing("listing the namespaces", None, in_namespace=False):
            found: builtins.list[str] = []
            leftovers: builtins.list[str] = []
            for namespace, path in self._namespace_dirs(self._root, ()):
                try:
                    holds = self._has_artifact(path)
                except ArtifactStoreError:
                    raise  # a file in the way of a directory (see _in_the_way): the tree is broken there
                except OSError as exc:
                    logger.debug("cannot tell whether namespace %r holds artifacts: %s", namespace, exc)
                    found.append(namespace)  # kept, not collected: it may hold artifacts
                    continue
                if holds:
                    found.append(namespace)
                else:
                    leftovers.append(path)
            # Removed after the walk, not during it: on file systems whose directory cookies are positions
            # (SMB, some NFS servers), removing entries while the root is read skips others, which would
            # drop a namespace that holds artifacts from the answer.
            for path in leftovers:
                self._collect_leftovers(path)
            return found

    def _collect_leftovers(self, directory: str) -> None:
        """Sweep the stale temporary files of the artifact-less namespace ``directory``, then remove it and
        its continuation directories as far as they are empty.

        Safe beside a live writer, as :meth:`_clear` is: its younger temporary file is kept (so its
        directories are not empty), and a writer whose fresh directory goes creates it again. A failure
        (a read-only root someone else owns) is logged, not raised: listing must still work there.
        """
        cutoff = time.time() - self._settings.temp_max_age
        try:
            self._guard(directory)
            self._clear_walk(directory, (), cutoff, set(), artifacts=False)
            self._prune_namespace(directory)
        except (OSError, ArtifactStoreError) as exc:
            logger.debug("could not remove leftovers in %s: %s", self._relative(directory), exc)

    def _namespace_dirs(self, directory: str, parts: tuple[str, ...]) -> Iterator[tuple[str, str]]:
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            return
        except NotADirectoryError as exc:
            raise self._in_the_way(directory, exc) from exc
        with entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if entry.name.startswith(PART):
                    yield from self._namespace_dirs(entry.path, (*parts, entry.name))
                elif entry.name.startswith(FINAL):
                    namespace = decode_components((*parts, entry.name))
                    # A directory whose name decodes to no legal namespace (a control character, too long) was
                    # made by hand: listing it would hand callers (``artifactstore gc``) a name no store accepts.
                    if namespace is not None and is_legal(namespace, validate_namespace):
                        yield namespace, entry.path

    def _has_artifact(self, directory: str) -> bool:
        return any(kind == "artifact" for kind, _, _ in self._scan(directory))

    # -- errors ---------------------------------------------------------------------------------------

    @contextmanager
    def _doing(self, operation: str, step_id: str | None, *, in_namespace: bool = True) -> Iterator[None]:
        """Raise an ``OSError`` inside as the store's error, naming the operation, step id and namespace
        (not the namespace with ``in_namespace=False``: an operation on the whole root, see :meth:`_os_error`)."""
        try:
            yield
        except ArtifactStoreError as exc:  # first: AccessDeniedError is itself an OSError
            if step_id is not None and exc.step_id is None:
                exc.step_id = step_id
            raise
        except OSError as exc:
            raise self._os_error(exc, operation, step_id, in_namespace=in_namespace) from exc

    def _os_error(
        self, exc: OSError, operation: str, step_id: str | None, *, in_namespace: bool = True
    ) -> ArtifactStoreError:
        """Disk full, quota and file too large -> :class:`CapacityError`; permissions and read-only file
        systems -> :class:`AccessDeniedError` (each with its own advice); a file where a directory is needed ->
        as :meth:`_in_the_way` says (:class:`ConfigurationError` at or above the root); any other ``OSError``
        -> :class:`BackendError`. Paths are shown relative to the root.

        The message names this store's namespace unless ``in_namespace`` is false: listing the namespaces
        reads the whole root, and "in namespace 'default'" blamed a namespace that had nothing to do with it.
        """
        code = exc.errno
        name = errno.errorcode.get(code, str(code)) if code is not None else type(exc).__name__
        target = f" of {step_id!r}" if step_id is not None else ""
        where = f" in namespace {self.namespace!r}" if in_namespace else ""
        detail = (
            f"{operation}{target}{where} failed: {exc.strerror or type(exc).__name__} "
            f"({name}) at {self._relative(exc.filename)!r} {self._placed(exc.filename)}"
        )
        error: ArtifactStoreError
        if isinstance(exc, NotADirectoryError):
            # A file where the store needs a directory, met on a path the operation's own handling did not
            # expect it on (save_stream's temporary file): named as every operation names it (see _in_the_way),
            # a ConfigurationError when it is the root or above it.
            error = self._in_the_way(exc.filename if isinstance(exc.filename, str) else self._root, exc)
        elif code == errno.EFBIG:
            # Not PayloadTooLargeError: that one promises nothing was written, and here writing began. Not
            # "free space" either: the limit is the file system's largest file or the process's `ulimit -f`.
            error = CapacityError(
                f"{detail}; the file exceeds the largest file this file system or the process's file size limit "
                f"(ulimit -f, RLIMIT_FSIZE) allows: raise the limit, or set {_ROOT_ENV} to another file system"
            )
        elif code in _CAPACITY:
            error = CapacityError(f"{detail}; free space or quota, or set {_ROOT_ENV} to another file system")
        elif code == errno.ENAMETOOLONG:
            # Ids within the documented limit make paths of up to about 1,200 characters below the root (names
            # of at most 201 bytes), so it is the root that is too deep; without this the error, at a path of
            # escapes, read as "the id is too long".
            error = BackendError(
                f"{detail}; the path is longer than this system allows: the root's path is "
                f"{len(os.fsencode(self._root))} bytes and an artifact's path below it takes up to about 1,200 "
                f"(names of up to 201 bytes): set {_ROOT_ENV} to a shorter path (or, for names, another file system)"
            )
        elif code == errno.EROFS:
            # Not "check the permissions": they are fine on a read-only mount, and a user checking them finds
            # nothing wrong.
            error = AccessDeniedError(
                f"{detail}; the file system is mounted read-only: remount it read-write, or set {_ROOT_ENV} to a "
                "directory on a writable file system"
            )
        elif code in _DENIED or isinstance(exc, PermissionError):
            if self._on_the_way(exc.filename):
                advice = (
                    f"the root does not exist and cannot be made there: create it, or set {_ROOT_ENV} to a "
                    "directory you may write to"
                )
            else:
                advice = f"check the permissions of {_ROOT_ENV} and what is under it"
            error = AccessDeniedError(f"{detail}; {advice}")
        else:
            error = BackendError(detail)
        error.step_id = step_id
        return error

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        """The mapping of :meth:`_os_error`, for an ``OSError`` that escaped the per-operation handling."""
        if isinstance(exc, OSError):
            return self._os_error(exc, "operation", None)
        return None


def _kind_of(entry: os.DirEntry[str], parts: tuple[str, ...], artifacts: bool) -> tuple[str | None, str | None]:
    """What a directory entry under a namespace directory (reached through continuation directories
    ``parts``) is to the store: ``("artifact", step_id)`` (only if ``artifacts``), ``("temp", None)``,
    ``("dir", None)`` for a continuation directory, or ``(None, None)`` for anything else (a stray file, a
    non-canonical name, a symbolic link: none is followed)."""
    name = entry.name
    if name.startswith(TEMP_PREFIX):
        return ("temp", None) if entry.is_file(follow_symlinks=False) else (None, None)
    if name.startswith(PART):
        return ("dir", None) if entry.is_dir(follow_symlinks=False) else (None, None)
    if artifacts and name.startswith(FINAL) and entry.is_file(follow_symlinks=False):
        step_id = decode_components((*parts, name))
        if step_id is not None and is_legal(step_id):
            return "artifact", step_id
    return None, None


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words, for an error message."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return f"a file of type {stat.S_IFMT(mode):#o}"


def _remaining_size(stream: IO[bytes]) -> int | None:
    """Bytes left in ``stream`` when that is cheap and certain to know (a regular file, a BytesIO)."""
    try:
        if isinstance(stream, io.BytesIO):
            # Not getbuffer(): on a BytesIO made from bytes it copies the whole payload first.
            position = stream.tell()
            end = stream.seek(0, io.SEEK_END)
            stream.seek(position)
            return max(end - position, 0)
        info = os.fstat(stream.fileno())
        if stat.S_ISREG(info.st_mode):
            return max(info.st_size - stream.tell(), 0)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass
    return None
