"""Splitting the head off a streamed GET whose body holds it (the payload then streams through the core's
:class:`~artifactstore_core.envelope.PayloadReader`)."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["split_prelude"]


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
