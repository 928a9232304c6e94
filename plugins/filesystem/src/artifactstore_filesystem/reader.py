"""The stream :meth:`FilesystemStore.open` returns: a payload read in chunks and verified as it is read."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

from artifactstore_core import ArtifactCorruptedError, ArtifactStoreError
from artifactstore_core.envelope import Header, PayloadVerifier

__all__ = ["VerifiedPayload", "check_payload_size", "payload_size_error"]


def payload_size_error(header: Header) -> ArtifactCorruptedError:
    """The error for a payload that is not ``header.stored_size`` bytes."""
    return ArtifactCorruptedError(
        f"stored payload is not {header.stored_size} bytes, as its header says (truncated or extended)"
    )


def check_payload_size(file: io.FileIO, header: Header) -> None:
    """Check that ``file`` holds exactly ``header.stored_size`` bytes from its position on.

    Runs before anything is allocated for the payload: the header's size is only as trustworthy as its
    tag, and an unsigned header anyone with write access can forge (a plain tag is no secret), so a
    claimed size is never allocated before the file is known to be that long.

    Raises:
        ArtifactCorruptedError: the file is shorter or longer than its header says.
        OSError: ``fstat`` failed.
    """
    if os.fstat(file.fileno()).st_size - file.tell() != header.stored_size:
        raise payload_size_error(header)


class VerifiedPayload(io.RawIOBase):
    """The payload of an open artifact file, verified against its header while it is read.

    The file must be positioned at the start of the payload. Its size is checked against the header's at
    once (see :func:`check_payload_size`); the read that reaches the end of the payload checks its size and
    digest (and that nothing follows it) before returning, so a damaged artifact raises
    :class:`ArtifactCorruptedError` at the latest when its last bytes are read.

    Args:
        file: the artifact file, unbuffered, positioned after the head; closed with this stream.
        header: the verified header (an uncompressed payload).
        fail: turns an exception into the store's error (with step id, namespace and backend).

    Raises:
        ArtifactStoreError: from ``fail``: :class:`ArtifactCorruptedError` when the file's size does not
            match the header's, the store's mapping of an ``OSError`` when ``fstat`` fails.
    """

    def __init__(self, file: io.FileIO, header: Header, fail: Callable[[Exception], ArtifactStoreError]) -> None:
        super().__init__()
        try:
            # Before readall() can allocate the claimed size (a forged header could claim any size).
            check_payload_size(file, header)
        except (OSError, ArtifactCorruptedError) as exc:
            raise fail(exc) from (exc if isinstance(exc, OSError) else None)
        self._file = file
        self._left = header.stored_size
        self._verifier = PayloadVerifier(header)
        self._fail = fail
        self._verified = False

    def readable(self) -> bool:
        """Always ``True``."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read up to ``len(buffer)`` payload bytes into ``buffer``; 0 at the end.

        Raises:
            ArtifactCorruptedError: the payload is shorter or longer than its header says, or its digest
                does not match.
            BackendError: reading the file failed (``CapacityError``/``AccessDeniedError`` as mapped).
            ValueError: the stream is closed.
        """
        view = memoryview(buffer).cast("B")
        if not view:
            # Nothing asked for. Not the end of the payload: finishing here read the byte past a payload not yet
            # read and reported it as "bytes after its payload".
            if self.closed:
                raise ValueError("I/O operation on closed file")
            return 0
        if self._left == 0:
            self._finish()
            return 0
        try:
            count = self._file.readinto(view[: min(len(view), self._left)]) or 0
        except OSError as exc:
            raise self._fail(exc) from exc
        if count == 0:
            self._finish()  # ended early: the verifier reports the short payload
            return 0  # pragma: no cover - _finish always raises here
        try:
            self._verifier.update(view[:count])
        except ArtifactCorruptedError as exc:
            raise self._fail(exc) from None
        self._left -= count
        if self._left == 0:
            self._finish()
        return count

    def readall(self) -> bytes:
        """Read the rest of the payload at once (one ``read`` of the remaining size, not 8 KiB steps).

        The bytes the file's ``read`` returns are the result: filling a buffer and converting it to ``bytes``
        held the payload twice at the peak. The size was checked against the file's when this stream was
        made, so nothing larger than what the file held then is allocated.

        Raises:
            As :meth:`readinto`.
        """
        if self._left == 0:
            self._finish()  # runs the final verification when nothing was left to read
            return b""
        try:
            data = self._file.read(self._left) or b""
        except OSError as exc:
            raise self._fail(exc) from exc
        if len(data) < self._left:
            # read() may return less than asked (over 2 GiB on Linux, a network file system): the rest is read
            # until the file ends; a payload that ends early (the file shrank since it was opened) is then
            # reported by the verification.
            parts, got = [data], len(data)
            while data and got < self._left:
                try:
                    data = self._file.read(self._left - got) or b""
                except OSError as exc:
                    raise self._fail(exc) from exc
                parts.append(data)
                got += len(data)
            data = b"".join(parts)
        try:
            self._verifier.update(data)
        except ArtifactCorruptedError as exc:
            raise self._fail(exc) from None
        self._left -= len(data)
        self._finish()
        return data

    def _finish(self) -> None:
        if self._verified:
            return
        try:
            trailing = self._file.read(1)
        except OSError as exc:
            raise self._fail(exc) from exc
        try:
            if trailing:
                raise ArtifactCorruptedError("stored artifact has bytes after its payload")
            self._verifier.finish()
        except ArtifactCorruptedError as exc:
            raise self._fail(exc) from None
        self._verified = True

    def close(self) -> None:
        """Close the stream and its file."""
        if not self.closed:
            self._file.close()
        super().close()
