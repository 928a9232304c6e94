"""PayloadReader: a payload that arrives in chunks, verified before its last bytes are handed out."""

from __future__ import annotations

import gc
import io
import traceback
from collections.abc import Iterator
from typing import NoReturn

import pytest

from artifactstore_core import ArtifactCorruptedError, BackendUnavailableError, Codec, Message, SerializationError
from artifactstore_core.envelope import Header, PayloadReader

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


def header_of(payload: bytes) -> Header:
    return Codec().encode(Message(content=payload)).header


def chunks_of(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


class Source:
    """Chunks that record how far they were read and whether they were released."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error  # raised once the chunks are used up, instead of ending
        self.taken = 0
        self.released = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.taken += 1
            yield chunk
        if self.error is not None:
            raise self.error

    def release(self) -> None:
        self.released += 1


def test_reads_the_payload_and_releases_once_at_the_verified_end() -> None:
    source = Source([b"", *chunks_of(PAYLOAD), b""])
    reader = PayloadReader(source, header_of(PAYLOAD), release=source.release)
    assert reader.readable()
    assert not reader.writable()
    assert not reader.seekable()
    assert io.BufferedReader(reader).read() == PAYLOAD
    assert source.released == 1
    reader.close()
    assert source.released == 1


def test_an_empty_payload_is_verified_at_the_first_read() -> None:
    source = Source([])
    reader = PayloadReader(source, header_of(b""), release=source.release)
    assert reader.read(10) == b""
    assert source.released == 1


def test_an_altered_last_chunk_is_never_handed_out_to_a_reader_of_exactly_the_size() -> None:
    damaged = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])
    source = Source(chunks_of(damaged))
    reader = PayloadReader(source, header_of(PAYLOAD), release=source.release)
    received = bytearray()

    def read_the_size() -> None:
        while len(received) < len(PAYLOAD):
            received.extend(reader.read(len(PAYLOAD) - len(received)))

    with pytest.raises(ArtifactCorruptedError, match="digest does not match"):
        read_the_size()
    # Everything but the last chunk came out (unverified, as documented); the last chunk did not.
    assert bytes(received) == damaged[:10_000]
    assert source.released == 1
    # The error sticks.
    with pytest.raises(ArtifactCorruptedError):
        reader.read(1)


def test_chunks_past_the_size_raise_as_the_excess_arrives_without_reading_on() -> None:
    source = Source([*chunks_of(PAYLOAD), b"x", *[b"more"] * 100])
    reader = PayloadReader(source, header_of(PAYLOAD), release=source.release)
    with pytest.raises(ArtifactCorruptedError, match="longer than its header"):
        reader.read()
    assert source.taken == len(chunks_of(PAYLOAD)) + 1
    assert source.released == 1


def test_a_single_chunk_longer_than_the_payload_is_refused() -> None:
    reader = PayloadReader([PAYLOAD + b"x"], header_of(PAYLOAD))
    with pytest.raises(ArtifactCorruptedError, match="longer than its header"):
        reader.read(1)


def test_chunks_that_end_short_raise_the_default_or_the_given_error() -> None:
    with pytest.raises(ArtifactCorruptedError, match=f"payload is 9000 bytes; its header says {len(PAYLOAD)}"):
        io.BufferedReader(PayloadReader(chunks_of(PAYLOAD)[:9], header_of(PAYLOAD))).read()

    def dropped(received: int) -> Exception:
        return BackendUnavailableError(f"connection dropped after {received} bytes")

    reader = PayloadReader(chunks_of(PAYLOAD)[:3], header_of(PAYLOAD), short=dropped)
    with pytest.raises(BackendUnavailableError, match="after 3000 bytes"):
        reader.read()


def test_every_failure_goes_through_fail_and_releases() -> None:
    source = Source(chunks_of(PAYLOAD)[:2], error=ConnectionResetError("reset by peer"))
    seen: list[Exception] = []

    def fail(exc: Exception) -> NoReturn:
        seen.append(exc)
        raise BackendUnavailableError("the store's error") from exc

    reader = PayloadReader(source, header_of(PAYLOAD), release=source.release, fail=fail)
    assert reader.read(1000) == PAYLOAD[:1000]
    assert source.released == 0
    with pytest.raises(BackendUnavailableError, match="the store's error"):
        reader.read()
    assert [type(exc) for exc in seen] == [ConnectionResetError]
    assert source.released == 1
    with pytest.raises(BackendUnavailableError):
        reader.read(1)
    assert len(seen) == 1  # raised again, not made again


def test_closing_early_or_dropping_the_stream_releases_once() -> None:
    source = Source(chunks_of(PAYLOAD))
    reader = PayloadReader(source, header_of(PAYLOAD), release=source.release)
    reader.read(10)
    reader.close()
    reader.close()
    assert source.released == 1
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)

    abandoned = Source(chunks_of(PAYLOAD))
    PayloadReader(abandoned, header_of(PAYLOAD), release=abandoned.release).read(10)
    gc.collect()
    assert abandoned.released == 1


def test_a_compressed_header_is_refused() -> None:
    header = Codec(compress_threshold=0).encode(Message(content="text " * 1000)).header
    assert header.compression is not None
    with pytest.raises(SerializationError, match="compressed"):
        PayloadReader([b""], header)


def test_a_fail_that_returns_still_ends_the_stream_with_the_error() -> None:
    # fail must raise; one that only logs and returns made a damaged payload read as a shorter, complete one.
    logged: list[Exception] = []
    reader = PayloadReader([PAYLOAD[:5000], bytes(len(PAYLOAD) - 5000)], header_of(PAYLOAD), fail=logged.append)  # type: ignore[arg-type]
    with pytest.raises(ArtifactCorruptedError):
        reader.read()
    assert len(logged) == 1
    with pytest.raises(ArtifactCorruptedError):
        reader.read(1)


def test_a_release_that_fails_at_the_verified_end_does_not_fail_the_read() -> None:
    def release() -> None:
        raise OSError("the connection failed to close")

    assert io.BufferedReader(PayloadReader(chunks_of(PAYLOAD), header_of(PAYLOAD), release=release)).read() == PAYLOAD


@pytest.mark.parametrize("wrapped", [False, True], ids=["raw", "buffered"])
def test_reading_again_after_an_error_does_not_grow_its_traceback(wrapped: bool) -> None:
    # The error is raised again as the same object: each raise added this frame (and the caller's) to its
    # traceback, so a caller that read on after an error held an ever longer traceback.
    def fail(exc: Exception) -> NoReturn:
        raise BackendUnavailableError("the store's error") from exc

    raw = PayloadReader(chunks_of(PAYLOAD)[:3], header_of(PAYLOAD), fail=fail)
    stream: io.RawIOBase | io.BufferedReader = io.BufferedReader(raw) if wrapped else raw
    lengths = []
    first: BaseException | None = None
    for _ in range(20):
        with pytest.raises(BackendUnavailableError) as info:
            stream.read()
        first = first or info.value
        assert info.value is first  # the same error every time
        lengths.append(len(traceback.extract_tb(info.value.__traceback__)))
    # Raised again: the first raise's frames and the frames of this raise, the same each time.
    assert len(set(lengths[1:])) == 1, lengths
    assert first is not None
    assert isinstance(first.__cause__, ArtifactCorruptedError)


def test_reading_again_in_an_except_block_keeps_the_errors_context() -> None:
    reader = PayloadReader(chunks_of(PAYLOAD)[:3], header_of(PAYLOAD))
    with pytest.raises(ArtifactCorruptedError) as info:
        reader.read()
    context = info.value.__context__
    try:
        raise KeyError("the caller's own")
    except KeyError:
        with pytest.raises(ArtifactCorruptedError) as again:
            reader.read()
    assert again.value is info.value
    assert again.value.__context__ is context
