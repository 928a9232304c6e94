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

    At the end of the payload (the read that returns ``b""``) the verifier checks size and digest, so a
    damaged payload raises :class:`~artifactstore_core.ArtifactCorruptedError` at the latest there; a
    payload longer than its header says raises as soon as the excess arrives.

    Args:
        chunks: the payload's chunks.
        verifier: checks them against the verified header.
        on_close: releases the underlying response.
        fail: turns a client exception into the store's error and raises it.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        verifier: PayloadVerifier,
        on_close: Callable[[], None],
        fail: Callable[[Exception], NoReturn],
    ) -> None:
        super().__init__()
        self._chunks = chunks
        self._verifier = verifier
        self._on_close = on_close
        self._fail = fail
        self._pending = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` with the next payload bytes; 0 at the verified end.

        Raises:
            ArtifactCorruptedError: the payload does not match its header.
            BackendError: the download failed (its subclasses say how).
        """
        if self._done:
            return 0
        try:
            while not self._pending:
                try:
                    chunk = next(self._chunks)
                except StopIteration:
                    self._done = True
                    self._verifier.finish()
                    return 0
                self._verifier.update(chunk)
                self._pending = memoryview(chunk)
        except Exception as exc:
            self._fail(exc)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            try:
                self._on_close()
            finally:
                super().close()
