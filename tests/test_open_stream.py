"""ArtifactStore.open() over a payload held in memory: read-only, and no copy of the payload."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from artifactstore_core import Message
from artifactstore_core.envelope import BytesReader
from artifactstore_core.wiring import create_store

MB = 1024 * 1024


@pytest.mark.timeout(120)
def test_open_of_a_64_mb_artifact_copies_nothing_and_cannot_be_written() -> None:
    with create_store("memory", namespace="open-stream") as store:
        store.save("big", Message(content=bytes(64 * MB)))
        stored = store.get("big").content
        tracemalloc.start()
        try:
            with store.open("big") as handle:
                assert not handle.writable()
                with pytest.raises(io.UnsupportedOperation):
                    handle.write(b"x")
                data = handle.read()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The stored bytes themselves: neither open() nor the whole read copied 64 MB.
        assert data is stored
        assert peak < MB, f"open() + read() allocated {peak} bytes"


def test_bytes_reader_reads_seeks_and_refuses_every_change() -> None:
    payload = b"line one\nline two\nrest"
    reader = BytesReader(payload)
    assert reader.readable()
    assert reader.seekable()
    assert not reader.writable()
    assert reader.readline() == b"line one\n"
    assert reader.read1(4) == b"line"
    buffer = bytearray(5)
    assert reader.readinto(buffer) == 5
    assert bytes(buffer) == b" two\n"
    assert reader.tell() == 18
    assert list(reader) == [b"rest"]
    assert reader.seek(-4, io.SEEK_END) == 18
    assert reader.read() == b"rest"
    assert reader.seek(0) == 0
    assert reader.read() is payload  # the whole payload from the start: the object given, not a copy
    for change in (lambda: reader.write(b"x"), lambda: reader.writelines([b"x"]), lambda: reader.truncate(0)):
        with pytest.raises(io.UnsupportedOperation):
            change()
    with pytest.raises(io.UnsupportedOperation):
        reader.fileno()
    reader.close()
    assert reader.closed
    for after_close in (reader.read, reader.readable, reader.writable, reader.tell):
        with pytest.raises(ValueError, match="closed"):
            after_close()
    reader.close()  # idempotent
