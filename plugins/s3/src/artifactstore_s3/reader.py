"""A binary stream over a streamed GET that verifies the payload as it is read."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import NoReturn

from artifactstore_core.envelope import PayloadVerifier

__all__ = ["VerifiedReader", "split_prelude"]


def split_prelude(chunks: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """Take the first ``size`` bytes off a chunk iterator; return them and an iterator over the rest.

    Returns fewer than ``size`` bytes only if the chunks end first.
    """
    taken = bytearray()
    rest = b""
    for chunk in chunks:
        need = size - len(taken)
        taken += chunk[:need]
        if len(chunk) > need:
            rest = chunk[need:]
        if len(taken) >= size:
            break

    def remaining() -> Iterator[bytes]:
        if rest:
            yield rest
        yield from chunks

    return bytes(taken), remaining()


class VerifiedReader(io.RawIOBase):
    """Reads a payload chunk by chunk, feeding a :class:`PayloadVerifier`.

    No byte of the payload's last chunk is handed out before the whole payload is verified: the chunk that
    completes the size the header states is held back until the body is known to end there and the digest
    matches. So the read that returns the payload's last bytes raises
    :class:`~artifactstore_core.ArtifactCorruptedError` instead, even for a caller that reads exactly the
    payload's size and never reads the end; a payload longer than its header says raises as soon as the
    excess arrives, a shorter one when the body ends. Bytes returned before the last chunk are not verified
    yet, and closing the stream early verifies nothing. After an error every later read raises it again.

    Args:
        chunks: the payload's chunks.
        verifier: checks them against the verified header.
        size: the payload's size, as the verified header states it.
        on_close: releases the underlying response.
        fail: turns a client exception into the store's error and raises it.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        verifier: PayloadVerifier,
        size: int,
        on_close: Callable[[], None],
        fail: Callable[[Exception], NoReturn],
    ) -> None:
        super().__init__()
        self._chunks = chunks
        self._verifier = verifier
        self._left = size
        self._on_close = on_close
        self._fail = fail
        self._pending = memoryview(b"")
        self._done = False
        self._error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` with the next payload bytes; 0 at the verified end.

        Raises:
            ArtifactCorruptedError: the payload does not match its header (raised by every later read too).
            BackendError: the download failed (its subclasses say how).
            ValueError: the stream is closed.
        """
        if self.closed:
            raise ValueError("read of closed file")
        if self._error is not None:
            raise self._error
        try:
            while not self._pending and not self._done:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._done = True
                    self._verifier.finish()  # the body ended early: reports the short payload
                    break
                self._verifier.update(chunk)
                self._left -= len(chunk)
                if self._left == 0:
                    # The payload is complete: check that the body ends here and the digest matches before
                    # any of this chunk is handed out (a caller reading exactly the size never reads the end).
                    self._verify_end()
                self._pending = memoryview(chunk)
        except Exception as exc:
            self._pending = memoryview(b"")
            self._done = True
            try:
                self._fail(exc)
            except BaseException as error:
                self._error = error
                raise
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _verify_end(self) -> None:
        for extra in self._chunks:
            self._verifier.update(extra)  # raises on a first byte past the header's size
        self._done = True
        self._verifier.finish()

    def close(self) -> None:
        if not self.closed:
            try:
                self._on_close()
            finally:
                super().close()
