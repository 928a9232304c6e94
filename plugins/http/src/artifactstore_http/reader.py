"""The stream :meth:`HttpStore.open` returns: the payload of a streamed ``GET``, verified as it is read."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from artifactstore_core import ArtifactCorruptedError
from artifactstore_core.envelope import Header, PayloadVerifier

__all__ = ["PayloadReader"]


class PayloadReader(io.RawIOBase):
    """The uncompressed payload of an envelope whose head was read and verified, from the rest of its body.

    No byte of the chunk that completes the size the header states is handed out before the body is known
    to end there and the digest matches: the read that would return the payload's last bytes raises
    :class:`~artifactstore_core.ArtifactCorruptedError` instead, even for a caller that reads exactly the
    payload's size and never reads the end. A body that runs on past that size raises as soon as the
    excess arrives, one that ends short raises ``short(received)``'s error. Bytes returned before the last
    chunk are not verified yet; closing the stream early verifies nothing. After an error every later read
    raises it again.

    The response (and the connection the store lent for it) is released as soon as nothing more is to be
    read from it: at the verified end, on the first error, or when the stream is closed, whichever comes
    first; an abandoned stream is closed, and so released, when it is garbage-collected.

    Args:
        first: the payload bytes that came with the head.
        chunks: the rest of the body.
        header: the verified header (an uncompressed payload).
        where: names the server and the step id in the errors of a body that disagrees with its header.
        short: the exception for a body that ended after ``received`` bytes of payload (a dropped connection
            or a damaged answer, as the framing tells).
        release: closes the response and hands its connection back (called once).
        fail: turns any exception into the store's error and raises it.

    Raises:
        SerializationError: ``header`` describes a compressed payload.
    """

    def __init__(
        self,
        first: bytes,
        chunks: Iterator[bytes],
        header: Header,
        *,
        where: str,
        short: Callable[[int], Exception],
        release: Callable[[], None],
        fail: Callable[[Exception], NoReturn],
    ) -> None:
        super().__init__()
        self._verifier = PayloadVerifier(header)
        self._first = first
        self._chunks = chunks
        self._size = header.size
        self._left = header.size
        self._where = where
        self._short = short
        self._release_once: Callable[[], None] | None = release
        self._fail = fail
        self._pending = memoryview(b"")
        self._done = False
        self._error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next payload bytes; 0 at the verified end.

        Raises:
            ArtifactCorruptedError: the payload does not match its header (every later read raises it too).
            BackendUnavailableError, BackendTimeoutError: the connection failed or timed out midway (as the
                store maps transport failures); StoreClosedError: the store was closed meanwhile.
            ValueError: the stream is closed.
        """
        if self.closed:
            raise ValueError("read of closed file")
        if self._error is not None:
            raise self._error
        try:
            while not self._pending and not self._done:
                if self._left == 0:
                    self._finish()
                    break
                chunk = self._next()
                if chunk is None:
                    raise self._short(self._size - self._left)
                if len(chunk) > self._left:
                    # Stopped here: a body that runs on past its header is not read to its end.
                    raise self._longer()
                self._verifier.update(chunk)
                self._left -= len(chunk)
                if self._left == 0:
                    # Complete: that the body ends here and the digest matches is checked before any byte of
                    # this chunk is handed out (a caller reading exactly the size never reads the end).
                    self._finish()
                self._pending = memoryview(chunk)
        except Exception as exc:
            self._pending = memoryview(b"")
            self._done = True
            with contextlib.suppress(Exception):
                self._release()  # nothing more is read from this answer
            try:
                self._fail(exc)
            except BaseException as error:
                self._error = error
                raise
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _next(self) -> bytes | None:
        """The next non-empty chunk of the body, ``None`` at its end."""
        if self._first:
            first, self._first = self._first, b""
            return first
        for chunk in self._chunks:
            if chunk:
                return chunk
        return None

    def _longer(self) -> ArtifactCorruptedError:
        return ArtifactCorruptedError(f"{self._where} a payload longer than the {self._size} bytes its header says")

    def _finish(self) -> None:
        if self._next() is not None:
            raise self._longer()
        try:
            self._verifier.finish()
        except ArtifactCorruptedError as exc:
            raise ArtifactCorruptedError(f"{self._where} a payload that fails verification: {exc}") from None
        self._done = True
        # The body was read to its end: its connection goes back to the store's pool at once.
        self._release()

    def _release(self) -> None:
        release, self._release_once = self._release_once, None
        if release is not None:
            release()

    def close(self) -> None:
        if not self.closed:
            try:
                self._release()
            finally:
                super().close()
