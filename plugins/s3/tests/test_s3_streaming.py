"""Multipart uploads (from memory, seekable and non-seekable streams) and verified streamed downloads."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from s3_fixtures import NonSeekable, all_keys, open_uploads

from artifactstore_core import ArtifactCorruptedError, ArtifactExistsError, Message, SchemaInfo, SerializationError
from artifactstore_s3 import S3Store
from artifactstore_s3.layout import LAYOUT_META
from artifactstore_s3.settings import MIB

NewStore = Callable[..., S3Store]
SMALL_PARTS = {"part_size": 5 * MIB, "multipart_threshold": 5 * MIB, "max_concurrency": 2}
PAYLOAD = bytes(itertools.islice(itertools.cycle(range(251)), 12 * MIB + 17))


def count_calls(store: S3Store, operation: str) -> list[Any]:
    """The requests of ``operation`` made for artifacts (not those of the conditional-write probes)."""
    calls: list[Any] = []

    def record(request: Any, **_: Any) -> None:
        if "/.probe/" not in request.url:
            calls.append(request)

    store.client.meta.events.register(f"before-send.s3.{operation}", record)
    return calls


def read_all(handle: Any, size: int = 1 * MIB) -> bytes:
    chunks = []
    while chunk := handle.read(size):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("source", ["seekable", "non-seekable"])
def test_streamed_multipart_round_trip(new_s3_store: NewStore, raw: Any, bucket: str, source: str) -> None:
    store = new_s3_store(**SMALL_PARTS)
    parts = count_calls(store, "UploadPart")

    def stream() -> Any:
        return io.BytesIO(PAYLOAD) if source == "seekable" else NonSeekable(PAYLOAD)

    store.save_stream("big", stream(), media_type="application/x-tar", metadata={"k": 1})
    assert len(parts) == 3  # 12 MiB in 5 MiB parts
    with store.open("big") as handle:
        assert read_all(handle) == PAYLOAD
    got = store.get("big")
    assert (got.content, got.media_type, dict(got.metadata)) == (PAYLOAD, "application/x-tar", {"k": 1})
    # Interop holds for streamed artifacts too, and nothing else is left in the bucket.
    assert raw.get_object(Bucket=bucket, Key=store.key_of("big"))["Body"].read() == PAYLOAD
    assert all_keys(raw, bucket) == [store.key_of("big")]
    # Write-once: identical succeeds without uploading again, different is refused, overwrite replaces.
    before = len(parts)
    store.save_stream("big", stream(), media_type="application/x-tar", metadata={"k": 1})
    if source == "seekable":
        assert len(parts) == before  # hashed first, found identical, nothing uploaded
    with pytest.raises(ArtifactExistsError):
        store.save_stream("big", io.BytesIO(PAYLOAD[:-1]) if source == "seekable" else NonSeekable(PAYLOAD[:-1]))
    store.save_stream("big", NonSeekable(PAYLOAD[::-1]), overwrite=True)
    assert store.get("big").content == PAYLOAD[::-1]
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("big")]


def test_stream_at_an_offset_saves_the_rest(new_s3_store: NewStore) -> None:
    store = new_s3_store(**SMALL_PARTS)
    handle = io.BytesIO(b"skip" + PAYLOAD)
    handle.read(4)
    store.save_stream("rest", handle)
    assert store.get("rest").content == PAYLOAD


class UnderstatedEnd(io.RawIOBase):
    """A seekable stream whose end, as a seek reports it, comes before its last byte: a file of ``/proc``
    (``/proc/<pid>/environ``, ``cmdline``: seekable, ``seek(0, SEEK_END)`` says 0, the content is made as it
    is read), or a file that grows while it is saved."""

    def __init__(self, data: bytes, reported_end: int) -> None:
        super().__init__()
        self._source = io.BytesIO(data)
        self._reported_end = reported_end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            return self._source.seek(self._reported_end + offset)
        return self._source.seek(offset, whence)

    def tell(self) -> int:
        return self._source.tell()

    def readinto(self, buffer: Any) -> int:
        return self._source.readinto(buffer)


@pytest.mark.parametrize(
    ("size", "reported_end"),
    [(1293, 0), (1293, 700), (7 * MIB + 3, 0), (7 * MIB + 3, 5 * MIB - 1)],
    ids=["small-end-0", "small-end-short", "parts-end-0", "parts-end-short"],
)
def test_a_seekable_stream_is_saved_to_its_real_end_not_the_end_a_seek_reports(
    new_s3_store: NewStore, raw: Any, bucket: str, size: int, reported_end: int
) -> None:
    # Was: the size the seek reported was read and saved, silently cutting the artifact (an empty one for
    # /proc/self/environ), where the memory and filesystem backends saved every byte.
    store = new_s3_store(**SMALL_PARTS)
    data = PAYLOAD[:size]
    store.save_stream("proc", UnderstatedEnd(data, reported_end))
    assert store.get("proc").content == data
    with store.open("proc") as handle:
        assert read_all(handle) == data
    store.save_stream("proc", UnderstatedEnd(data, reported_end))  # the identical artifact: a safe retry
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("proc")]


class ReadOnly:
    """A stream with nothing but ``read`` (no ``seekable``, ``readinto``, ``tell``): what the core accepts."""

    def __init__(self, data: bytes) -> None:
        self._source = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._source.read(size)


@pytest.mark.parametrize("size", [1293, 12 * MIB + 17], ids=["small", "parts"])
def test_a_stream_with_only_a_read_method_is_saved(new_s3_store: NewStore, raw: Any, bucket: str, size: int) -> None:
    # Was: BackendError "save_stream ... failed in backend 's3': AttributeError" (the store asked it whether it
    # can seek), where the memory and filesystem backends saved it.
    store = new_s3_store(**SMALL_PARTS)
    store.save_stream("duck", ReadOnly(PAYLOAD[:size]))  # type: ignore[arg-type]
    assert store.get("duck").content == PAYLOAD[:size]
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("duck")]


@pytest.mark.parametrize("source", ["seekable", "non-seekable"])
def test_streamed_envelope_layout(new_s3_store: NewStore, raw: Any, bucket: str, source: str) -> None:
    store = new_s3_store(**SMALL_PARTS)
    schema = SchemaInfo(name="big", json_schema={"description": "x" * 5000})
    stream = io.BytesIO(PAYLOAD) if source == "seekable" else NonSeekable(PAYLOAD)
    store.save_stream("env", stream, schema=schema)
    assert raw.head_object(Bucket=bucket, Key=store.key_of("env"))["Metadata"][LAYOUT_META] == "envelope"
    with store.open("env") as handle:
        assert read_all(handle, 3 * MIB + 1) == PAYLOAD
    assert store.get("env").schema == schema
    assert all_keys(raw, bucket) == [store.key_of("env")]


def test_in_memory_multipart_save(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store(**SMALL_PARTS)
    parts = count_calls(store, "UploadPart")
    store.save("m", Message(content=PAYLOAD))
    assert len(parts) == 3
    assert store.get("m").content == PAYLOAD
    store.save("m", Message(content=PAYLOAD))
    with pytest.raises(ArtifactExistsError):
        store.save("m", Message(content=PAYLOAD[1:]))
    store.save("m", Message(content=b"small now"), overwrite=True)
    assert store.get("m").content == b"small now"
    assert open_uploads(raw, bucket) == []


class ChangesOnSecondPass(io.BytesIO):
    """A seekable stream whose bytes change after the first pass (a file modified while it is saved)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.seeks = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.seeks += 1
        if self.seeks == 3:  # two seeks to size the stream, then the seek back before uploading
            self.getbuffer()[-1] ^= 0xFF
        return super().seek(offset, whence)


def test_a_stream_that_changes_while_saved_is_not_stored(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store(**SMALL_PARTS)
    with pytest.raises(SerializationError, match="changed"):
        store.save_stream("moving", ChangesOnSecondPass(PAYLOAD))
    assert all_keys(raw, bucket) == []
    assert open_uploads(raw, bucket) == []


@pytest.mark.parametrize("fail_after", [0, 7 * MIB])
def test_a_failing_input_stream_leaves_nothing(new_s3_store: NewStore, raw: Any, bucket: str, fail_after: int) -> None:
    store = new_s3_store(**SMALL_PARTS)
    with pytest.raises(SerializationError, match="producer died") as info:
        store.save_stream("broken", NonSeekable(PAYLOAD, fail_after=fail_after))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.step_id == "broken"
    assert all_keys(raw, bucket) == []
    assert open_uploads(raw, bucket) == []


def flip_in_transit(store: S3Store, offset: int) -> None:
    """Damage one byte of every GetObject body on its way to the store (after botocore parsed it)."""
    from botocore.response import StreamingBody

    def damage(parsed: dict[str, Any], **_: Any) -> None:
        if "Body" in parsed:
            data = bytearray(parsed["Body"].read())
            if len(data) > offset:
                data[offset] ^= 0x01
            parsed["Body"] = StreamingBody(io.BytesIO(bytes(data)), len(data))

    store.client.meta.events.register("after-call.s3.GetObject", damage)


@pytest.mark.parametrize("size", [1000, 12 * MIB + 17])
def test_a_flipped_byte_in_a_downloaded_body_raises_corrupted(new_s3_store: NewStore, size: int) -> None:
    store = new_s3_store(**SMALL_PARTS)
    store.save("victim", Message(content=PAYLOAD[:size]))
    flip_in_transit(store, offset=size // 2)
    with pytest.raises(ArtifactCorruptedError) as info:
        store.get("victim")
    assert info.value.step_id == "victim"
    with store.open("victim") as handle, pytest.raises(ArtifactCorruptedError):
        read_all(handle)


def test_a_flipped_byte_at_rest_raises_corrupted(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    store.save("victim", Message(content=b"0123456789" * 100))
    key = store.key_of("victim")
    stored = raw.get_object(Bucket=bucket, Key=key)
    body = bytearray(stored["Body"].read())
    body[0] ^= 0x80
    raw.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=stored["Metadata"])
    with pytest.raises(ArtifactCorruptedError):
        store.get("victim")
    with store.open("victim") as handle, pytest.raises(ArtifactCorruptedError):
        handle.read()
    raw.put_object(Bucket=bucket, Key=key, Body=bytes(body) + b"!", Metadata=stored["Metadata"])
    with store.open("victim") as handle, pytest.raises(ArtifactCorruptedError, match="longer"):
        read_all(handle, 4096)


def test_open_of_compressed_json_yields_its_utf8_encoding(new_s3_store: NewStore) -> None:
    store = new_s3_store()
    content = {"rows": [f"row {i}" for i in range(20_000)]}
    store.save("doc", Message(content=content))
    with store.open("doc") as handle:
        data = handle.read()
    assert data.startswith(b'{"rows":["row 0"')
    assert len(data) > 64 * 1024


@pytest.mark.parametrize("checksums", ["when_supported", "when_required", "setting"])
@pytest.mark.parametrize("source", ["memory", "non-seekable"])
def test_multipart_uploads_declare_crc32_where_botocore_sends_it(
    new_s3_store: NewStore, monkeypatch: pytest.MonkeyPatch, source: str, checksums: str
) -> None:
    # botocore's own setting, or the store's (over botocore's): "when_required" is what a user of an
    # S3-compatible service that refuses checksums sets, and then the upload must not declare one either.
    if checksums == "setting":
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
        store = new_s3_store(**SMALL_PARTS, checksum_calculation="when_required")
        checksums = "when_required"
    else:
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", checksums)
        store = new_s3_store(**SMALL_PARTS)
    creates = count_calls(store, "CreateMultipartUpload")
    completes = count_calls(store, "CompleteMultipartUpload")
    if source == "memory":
        store.save("m", Message(content=PAYLOAD))
    else:  # staged, then assembled from server-side copies of the staged parts
        store.save_stream("m", NonSeekable(PAYLOAD))
    assert len(creates) == len(completes) == (1 if source == "memory" else 2)
    declared = [request.headers.get("x-amz-checksum-algorithm") for request in creates]
    listed = [request.body.count(b"<ChecksumCRC32>") for request in completes]
    parts = [request.body.count(b"<PartNumber>") for request in completes]
    if checksums == "when_required":
        assert declared == [None] * len(creates)
        assert listed == [0] * len(completes)
    elif source == "memory":
        assert declared == [b"CRC32"]
        assert listed == parts  # every part listed with the checksum S3 answered for it
    else:
        # The staged upload of the stream's parts declares CRC32; the upload assembled from server-side
        # copies of them declares nothing, as boto3's copy does (S3 would then want every copied part's
        # checksum, which some S3-compatible services never answer for a copy).
        assert declared == [b"CRC32", None]
        assert listed == [parts[0], 0]
    assert store.get("m").content == PAYLOAD


@pytest.mark.parametrize("size", [1000, 3 * MIB + 5])
@pytest.mark.parametrize("how", ["read", "readinto"])
def test_reading_exactly_the_size_of_an_altered_payload_raises_before_returning_it(
    new_s3_store: NewStore, raw: Any, bucket: str, size: int, how: str
) -> None:
    # A caller that knows the size reads exactly that much and never asks for the end: the last bytes must
    # not be handed out before the digest is checked (they were, unverified, and close() said nothing).
    store = new_s3_store()
    original = PAYLOAD[:size]
    store.save("victim", Message(content=original))
    key = store.key_of("victim")
    stored = raw.get_object(Bucket=bucket, Key=key)
    body = bytearray(stored["Body"].read())
    body[-size] ^= 0x80  # the payload's first byte (the body ends with the payload)
    raw.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=stored["Metadata"])
    with store.open("victim") as handle:
        read_size: Callable[[], object] = (
            (lambda: handle.read(size)) if how == "read" else (lambda: handle.readinto(bytearray(size)))
        )
        with pytest.raises(ArtifactCorruptedError, match="digest") as info:
            read_size()
        assert info.value.step_id == "victim"
        with pytest.raises(ArtifactCorruptedError):  # not a clean, empty end on a second try
            handle.read()
    # An intact payload read the same way: every byte, and nothing more is needed to finish it.
    store.save("fine", Message(content=original))
    with store.open("fine") as handle:
        assert handle.read(size) == original
        assert handle.read() == b""
