"""The stored format: round trips, damage of every kind, versions, signing, compression."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
from datetime import UTC, datetime
from typing import Any, NoReturn

import blake3
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import artifactstore_core.message as message_module
from artifactstore_core import (
    ArtifactCorruptedError,
    Codec,
    ConfigurationError,
    Message,
    PayloadTooLargeError,
    SchemaInfo,
    SerializationError,
    UnsupportedFormatError,
    envelope,
)
from artifactstore_core.envelope import MAGIC, PREFIX_SIZE, TAG_SIZE, PayloadVerifier, new_hasher, place_bytes
from artifactstore_core.message import canonical_json, thaw_json
from artifactstore_core.testing import json_values, messages

CODEC = Codec()
SAMPLE = Message(
    content={"text": "hello " * 50, "n": [1, 2, 3]},
    schema=SchemaInfo(name="m.M", version="1"),
    metadata={"origin": "test"},
    created_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
)


@settings(max_examples=200, deadline=None)
@given(message=messages)
def test_arbitrary_messages_round_trip(message: Message) -> None:
    encoded = CODEC.encode(message)
    assert CODEC.decode(encoded.head, encoded.payload) == message
    assert CODEC.decode_bytes(encoded.to_bytes()) == message


def test_layout_is_as_specified() -> None:
    encoded = CODEC.encode(Message(content=b"payload"))
    blob = encoded.to_bytes()
    magic, version, length = struct.unpack(">4sBI", blob[:PREFIX_SIZE])
    assert (magic, version) == (MAGIC, 1)
    assert len(encoded.head) == PREFIX_SIZE + length + TAG_SIZE
    assert blob.endswith(b"payload")
    assert encoded.payload is encoded.payload  # bytes content is stored as the very object, no copy


def test_bytes_payload_is_the_content_object() -> None:
    content = b"x" * 100_000
    assert CODEC.encode(Message(content=content)).payload is content


@pytest.mark.parametrize("position", ["head", "header", "tag", "payload"])
def test_every_flipped_bit_is_detected(position: str) -> None:
    blob = CODEC.encode(SAMPLE).to_bytes()
    head_size = CODEC.head_size(blob[:PREFIX_SIZE])
    ranges = {
        "head": range(5, PREFIX_SIZE),
        "header": range(PREFIX_SIZE, head_size - TAG_SIZE),
        "tag": range(head_size - TAG_SIZE, head_size),
        "payload": range(head_size, len(blob)),
    }
    for index in ranges[position]:
        for bit in (0, 7):
            damaged = bytearray(blob)
            damaged[index] ^= 1 << bit
            with pytest.raises(ArtifactCorruptedError):
                CODEC.decode_bytes(bytes(damaged))


def test_damaged_magic_is_not_an_envelope() -> None:
    blob = bytearray(CODEC.encode(SAMPLE).to_bytes())
    blob[0] ^= 1
    with pytest.raises(UnsupportedFormatError):
        CODEC.decode_bytes(bytes(blob))


def test_unknown_version_is_unsupported() -> None:
    blob = bytearray(CODEC.encode(SAMPLE).to_bytes())
    blob[4] = 2
    with pytest.raises(UnsupportedFormatError, match="version 2"):
        CODEC.decode_bytes(bytes(blob))


def test_every_truncation_is_detected() -> None:
    blob = CODEC.encode(Message(content=b"0123456789" * 5)).to_bytes()
    for cut in range(len(blob)):
        with pytest.raises(ArtifactCorruptedError):
            CODEC.decode_bytes(blob[:cut])


def test_appended_bytes_are_detected() -> None:
    blob = CODEC.encode(SAMPLE).to_bytes()
    for extra in (b"\x00", b"garbage", blob):
        with pytest.raises(ArtifactCorruptedError):
            CODEC.decode_bytes(blob + extra)


def test_not_an_envelope() -> None:
    for blob in (b"", b"\x80\x04\x95pickle", b"{json: 1}"):
        with pytest.raises(SerializationError):
            CODEC.decode_bytes(blob)


def test_header_rewritten_with_a_valid_tag_still_fails_on_the_payload() -> None:
    # An attacker without a signing key can recompute a plain tag, but not make a payload match the digest.
    encoded = CODEC.encode(Message(content=b"original"))
    forged = CODEC.encode(Message(content=b"tampered"))
    with pytest.raises(ArtifactCorruptedError):
        CODEC.decode(encoded.head, forged.payload)


def test_signed_artifacts() -> None:
    signer, other = Codec(signing_key=b"k1"), Codec(signing_key=b"k2")
    blob = signer.encode(SAMPLE).to_bytes()
    assert signer.decode_bytes(blob) == SAMPLE
    # A reader with the wrong key is told so (it said only "altered or damaged", sending users to look
    # for damage that is not there).
    with pytest.raises(ArtifactCorruptedError, match=r"signature.*another signing key.*ARTIFACT_STORE_SIGNING_KEY"):
        other.decode_bytes(blob)
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SIGNING_KEY"):
        CODEC.decode_bytes(blob)
    # An unsigned artifact (or one re-tagged by someone without the key) is refused by a signing reader.
    with pytest.raises(ArtifactCorruptedError, match="not signed"):
        signer.decode_bytes(CODEC.encode(SAMPLE).to_bytes())
    assert "k1" not in repr(signer)


# -- signatures bound to a place (namespace, step id) --------------------------------------------------

SIGNER = Codec(signing_key=b"place key")
HERE = ("ns", "a")


def test_an_empty_signing_key_is_refused_not_taken_for_no_key() -> None:
    # b"" (a missing secret: os.environ.get("KEY", "").encode()) made an unsigned codec without a word.
    with pytest.raises(ValueError, match="signing_key is empty"):
        Codec(signing_key=b"")
    assert not Codec(signing_key=None).signed
    assert Codec(signing_key=b"\x00").signed


def test_a_bound_signature_verifies_only_for_its_own_place() -> None:
    encoded = SIGNER.encode(SAMPLE, place=HERE)
    assert encoded.header.mac == "blake3-keyed-place"
    assert SIGNER.decode(encoded.head, encoded.payload, place=HERE) == SAMPLE
    assert SIGNER.decode_bytes(encoded.to_bytes(), place=HERE) == SAMPLE
    assert SIGNER.header_of(encoded.to_bytes(), place=HERE).identity() == encoded.header.identity()
    for elsewhere in [("ns", "b"), ("other", "a"), ("a", "ns"), ("ns", "a ")]:
        with pytest.raises(ArtifactCorruptedError, match="different namespace or step id"):
            SIGNER.decode(encoded.head, encoded.payload, place=elsewhere)
        with pytest.raises(ArtifactCorruptedError, match="different namespace or step id"):
            SIGNER.header_of(encoded.to_bytes(), place=elsewhere)
    # A reader without a place (a standalone tool) cannot verify a bound tag: it says what it needs.
    with pytest.raises(ArtifactCorruptedError, match="place="):
        SIGNER.decode(encoded.head, encoded.payload)
    # Another key or no key: refused as for any signed artifact.
    with pytest.raises(ArtifactCorruptedError, match=r"signature.*another signing key.*ARTIFACT_STORE_SIGNING_KEY"):
        Codec(signing_key=b"other key").decode(encoded.head, encoded.payload, place=HERE)
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SIGNING_KEY"):
        CODEC.decode(encoded.head, encoded.payload, place=HERE)


def test_the_bound_tag_is_keyed_blake3_of_place_then_head_body() -> None:
    # docs/format.md, exactly: PLACE = label, both UTF-8 lengths (>HH), namespace, step id.
    namespace, step_id = "espace é", "étape/1"
    place = b"artifactstore place v1\x00" + struct.pack(">HH", 9, 8) + namespace.encode() + step_id.encode()
    encoded = SIGNER.encode(SAMPLE, place=(namespace, step_id))
    key = blake3.blake3(b"place key", derive_key_context="artifactstore envelope signing key v1").digest()
    body = encoded.head[:-TAG_SIZE]
    assert encoded.head[-TAG_SIZE:] == blake3.blake3(place + body, key=key).digest()


def test_an_unbound_signed_artifact_is_refused_by_a_reader_with_a_place() -> None:
    # Signed with the right key by a tool that gave no place: accepting it would let it be copied anywhere.
    unbound = SIGNER.encode(SAMPLE)
    assert unbound.header.mac == "blake3-keyed"
    assert SIGNER.decode(unbound.head, unbound.payload) == SAMPLE
    with pytest.raises(ArtifactCorruptedError, match="not bound to its namespace and step id"):
        SIGNER.decode(unbound.head, unbound.payload, place=HERE)
    # An unsigned artifact is still diagnosed as unsigned.
    with pytest.raises(ArtifactCorruptedError, match="not signed"):
        SIGNER.decode_bytes(CODEC.encode(SAMPLE).to_bytes(), place=HERE)


def test_a_header_claiming_a_bound_tag_cannot_pass_with_an_unbound_one() -> None:
    # The header's "mac" is part of the tagged body, so rewriting it needs the key; without rewriting it,
    # an unbound tag under a header saying "blake3-keyed-place" does not verify for any place.
    encoded = SIGNER.encode(SAMPLE, place=HERE)
    body = encoded.head[:-TAG_SIZE]
    key = blake3.blake3(b"place key", derive_key_context="artifactstore envelope signing key v1").digest()
    retagged = body + blake3.blake3(body, key=key).digest()
    with pytest.raises(ArtifactCorruptedError):
        SIGNER.decode(retagged, encoded.payload, place=HERE)
    with pytest.raises(ArtifactCorruptedError):
        SIGNER.decode(retagged, encoded.payload)


def test_unsigned_codecs_ignore_the_place() -> None:
    for codec in (CODEC, Codec(compress_threshold=None)):
        plain = codec.encode(SAMPLE)
        placed = codec.encode(SAMPLE, place=HERE)
        assert placed.head == plain.head
        assert placed.payload == plain.payload
        assert placed.header.mac == "blake3"
        assert codec.decode(plain.head, plain.payload, place=("elsewhere", "z")) == SAMPLE
    head, _ = CODEC.encode_head(
        codec="bytes", media_type="m/t", schema=None, metadata={}, created_at=SAMPLE.created_at, size=0,
        digest=blake3.blake3(b"").hexdigest(), place=HERE,
    )  # fmt: skip
    assert head == CODEC.encode_head(
        codec="bytes", media_type="m/t", schema=None, metadata={}, created_at=SAMPLE.created_at, size=0,
        digest=blake3.blake3(b"").hexdigest(),
    )[0]  # fmt: skip


def test_place_encoding_is_injective() -> None:
    assert place_bytes(("ab", "c")) != place_bytes(("a", "bc"))
    assert place_bytes(("", "ab")) != place_bytes(("a", "b"))
    encoded = SIGNER.encode(SAMPLE, place=("ab", "c"))
    with pytest.raises(ArtifactCorruptedError, match="different namespace or step id"):
        SIGNER.decode(encoded.head, encoded.payload, place=("a", "bc"))
    with pytest.raises(ValueError, match="65535"):
        place_bytes(("ns", "x" * 65_536))


def test_encode_head_binds_a_streamed_artifact_to_its_place() -> None:
    payload = b"streamed"
    head, header = SIGNER.encode_head(
        codec="bytes", media_type="application/octet-stream", schema=None, metadata={},
        created_at=SAMPLE.created_at, size=len(payload), digest=blake3.blake3(payload).hexdigest(), place=HERE,
    )  # fmt: skip
    assert header.mac == "blake3-keyed-place"
    assert SIGNER.decode(head, payload, place=HERE).content == payload
    with pytest.raises(ArtifactCorruptedError, match="different namespace or step id"):
        SIGNER.decode_head(head, place=("ns", "b"))


@pytest.mark.parametrize("codec", [CODEC, SIGNER], ids=["plain", "signed"])
def test_encode_stream_head_is_the_head_encode_writes_for_the_template_with_its_payload(codec: Codec) -> None:
    # A streamed artifact must be indistinguishable from the same bytes saved whole: same head, byte for byte.
    template = Message(
        content=b"", media_type="application/x-test", schema=SchemaInfo(name="blob", version="2"),
        metadata={"k": [1, {"n": None}]}, created_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    )  # fmt: skip
    payload = b"streamed \x00\xff" * 1000
    message = template.model_copy(update={"content": payload})
    head, header = codec.encode_stream_head(
        template, size=len(payload), digest=blake3.blake3(payload).hexdigest(), place=HERE
    )
    encoded = codec.encode(message, place=HERE)
    assert head == encoded.head
    assert header == encoded.header
    decoded = codec.decode(head, payload, place=HERE)
    assert decoded == message
    assert decoded.created_at == template.created_at
    with pytest.raises(SerializationError, match="digest"):
        codec.encode_stream_head(template, size=len(payload), digest="0" * 63, place=HERE)


@pytest.mark.parametrize("compressed", [False, True])
def test_every_bit_flip_of_a_bound_signed_envelope_is_detected(compressed: bool) -> None:
    message = Message(content="bound " * 40 if compressed else b"bound payload")
    codec = Codec(signing_key=b"place key", compress_threshold=64 if compressed else None)
    encoded = codec.encode(message, place=HERE)
    assert (encoded.header.compression == "zstd") is compressed
    blob = encoded.to_bytes()
    for bit in range(len(blob) * 8):
        mutated = bytearray(blob)
        mutated[bit // 8] ^= 1 << (bit % 8)
        if compressed and bit // 8 >= len(encoded.head):
            # A zstd frame has bits that do not change its content (the digest covers the content): such a
            # flip may decode, but only to the very message saved.
            with contextlib.suppress(ArtifactCorruptedError):
                assert codec.decode_bytes(bytes(mutated), place=HERE) == message
            continue
        with pytest.raises((ArtifactCorruptedError, UnsupportedFormatError)):
            codec.decode_bytes(bytes(mutated), place=HERE)


def test_compression_above_threshold_only_for_text_and_json() -> None:
    codec = Codec(compress_threshold=1024)
    big_json = Message(content={"text": " ".join(f"abc{i}" for i in range(6_000))})
    encoded = codec.encode(big_json)
    assert encoded.header.compression == "zstd"
    assert len(encoded.payload) < 3 * encoded.header.size // 4
    assert codec.decode(encoded.head, encoded.payload) == big_json
    assert codec.encode(Message(content="abc" * 10)).header.compression is None
    assert codec.encode(Message(content=b"abc" * 10_000)).header.compression is None
    assert Codec(compress_threshold=None).encode(big_json).header.compression is None


def test_text_compressing_past_the_ratio_readers_accept_is_stored_uncompressed() -> None:
    # 4 MB of one character compresses about 28,000 times: a reader would take such a frame for a bomb.
    for content in ("a" * 4_000_000, {"text": "a" * 4_000_000}):
        encoded = CODEC.encode(Message(content=content))
        assert encoded.header.compression is None
        assert encoded.header.stored_size == encoded.header.size == len(encoded.payload)
        assert CODEC.decode(encoded.head, encoded.payload).content == Message(content=content).content
    # Repetitive but within the ratio: still compressed.
    encoded = CODEC.encode(Message(content="".join(f"{i:03d}" for i in range(100)) * 300))
    assert encoded.header.compression == "zstd"
    assert encoded.header.size <= envelope.MAX_COMPRESSION_RATIO * encoded.header.stored_size


def _claiming(size: int) -> bytes:
    """A zstd frame header declaring ``size`` bytes of content, then one empty raw block: a few bytes in all."""
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x00]) + struct.pack("<Q", size) + b"\x01\x00\x00"
    assert zstandard.frame_content_size(frame) == size
    return frame


@pytest.mark.parametrize("size", [2**40, envelope.MAX_COMPRESSION_RATIO * 17 + 1])
def test_a_compressed_payload_claiming_more_than_the_ratio_is_refused_before_decompressing(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _claiming(size)
    head, _ = CODEC.encode_head(
        codec="utf-8",
        media_type="text/plain",
        schema=None,
        metadata={},
        created_at=datetime(2026, 11, 25, tzinfo=UTC),
        size=len(payload),
        digest="0" * 64,
    )
    # The header a writer without a key can forge: it agrees with the frame, and its tag is valid.
    doc = json.loads(head[PREFIX_SIZE:-TAG_SIZE])
    doc.update(compression="zstd", size=size, stored_size=len(payload))
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    prefix = struct.pack(">4sBI", MAGIC, 1, len(body)) + body
    forged = prefix + blake3.blake3(prefix).digest()

    def no_decompressor(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a decompressor was built for a payload past the ratio")

    monkeypatch.setattr(zstandard, "ZstdDecompressor", no_decompressor)
    with pytest.raises(ArtifactCorruptedError, match="times as many"):
        CODEC.decode(forged, payload)
    with pytest.raises(ArtifactCorruptedError, match="times as many"):
        CODEC.decode_head(forged)
    # A Header built by hand (decode_head never saw it) is refused by decode_payload alone.
    header = CODEC.decode_head(head)._replace(compression="zstd", size=size, stored_size=len(payload))
    with pytest.raises(ArtifactCorruptedError, match="times as many"):
        CODEC.decode_payload(header, payload)


def test_encode_head_refuses_a_compressed_payload_past_the_ratio() -> None:
    fields: dict[str, Any] = {
        "codec": "utf-8",
        "media_type": "text/plain",
        "schema": None,
        "metadata": {},
        "created_at": datetime(2026, 11, 25, tzinfo=UTC),
        "digest": "a" * 64,
        "compression": "zstd",
    }
    ratio = envelope.MAX_COMPRESSION_RATIO
    CODEC.encode_head(size=ratio * 10, stored_size=10, **fields)
    with pytest.raises(SerializationError, match="uncompressed"):
        CODEC.encode_head(size=ratio * 10 + 1, stored_size=10, **fields)


@pytest.mark.parametrize("created_at", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_created_at_outside_the_range_of_utc_is_corrupted(created_at: str) -> None:
    # Valid ISO 8601 that datetime parses, but astimezone(UTC) overflows (year 10000 or year 0).
    head, payload = _forge(b"x", codec="bytes")
    doc = json.loads(head[PREFIX_SIZE:-TAG_SIZE])
    doc["created_at"] = created_at
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    prefix = struct.pack(">4sBI", MAGIC, 1, len(body)) + body
    with pytest.raises(ArtifactCorruptedError, match="malformed"):
        CODEC.decode(prefix + blake3.blake3(prefix).digest(), payload)
    aware = datetime.fromisoformat(created_at)
    with pytest.raises(SerializationError, match="out of range"):
        CODEC.encode_head(
            codec="bytes", media_type="x", schema=None, metadata={}, created_at=aware, size=1, digest="a" * 64
        )


def test_compressed_payload_damage_is_detected() -> None:
    codec = Codec(compress_threshold=1024)
    encoded = codec.encode(Message(content=" ".join(f"abc{i}" for i in range(6_000))))
    assert encoded.header.compression == "zstd"
    damaged = bytearray(encoded.payload)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(ArtifactCorruptedError):
        codec.decode(encoded.head, bytes(damaged))


def test_identity_ignores_created_at_only() -> None:
    a = CODEC.encode(Message(content={"a": 1}, created_at=datetime(2020, 1, 1, tzinfo=UTC)))
    b = CODEC.encode(Message(content={"a": 1}))
    c = CODEC.encode(Message(content={"a": 1.0}))
    assert a.header.identity() == b.header.identity()
    assert a.identity_key == b.identity_key
    assert a.identity_key != c.identity_key
    assert a.header.identity() != c.header.identity()


@pytest.mark.parametrize("field", ["metadata", "schema"])
def test_identity_is_the_canonical_json_and_exact_about_json_types(field: str) -> None:
    # identity() is what filesystem and s3 compare for write-once: Python's == (1 == 1.0 == True) would
    # keep one artifact for a save of another.
    def encoded(value: object) -> envelope.Encoded:
        if field == "metadata":
            return CODEC.encode(Message(content=b"x", metadata={"n": value}))
        return CODEC.encode(Message(content=b"x", schema=SchemaInfo(name="S", json_schema={"const": value})))

    values = (1, True, 1.0, 0.0, -0.0)
    identities = {encoded(value).header.identity() for value in values}
    assert len(identities) == len(values)
    for value in values:
        one = encoded(value)
        header = one.header
        expected = canonical_json(
            [
                header.codec,
                header.media_type,
                header.schema.model_dump(mode="json") if header.schema else None,
                thaw_json(header.metadata),
                header.size,
                header.digest,
            ]
        )
        assert header.identity() == one.identity_json == expected
        decoded = CODEC.header_of(one.to_bytes())
        assert decoded.identity() == header.identity()
        assert one.identity_key == blake3.blake3(header.identity()).hexdigest()[:32]


def test_streaming_verifier() -> None:
    payload = bytes(range(256)) * 100
    head, _ = CODEC.encode_head(
        codec="bytes",
        media_type="application/octet-stream",
        schema=None,
        metadata={},
        created_at=datetime.now(UTC),
        size=len(payload),
        digest=CODEC.encode(Message(content=payload)).header.digest,
    )
    verified = CODEC.decode_head(head)
    verifier = PayloadVerifier(verified)
    for start in range(0, len(payload), 1000):
        verifier.update(payload[start : start + 1000])
    verifier.finish()
    bad = PayloadVerifier(verified)
    bad.update(payload[:-1] + b"\x00")
    with pytest.raises(ArtifactCorruptedError):
        bad.finish()
    short = PayloadVerifier(verified)
    short.update(payload[:10])
    with pytest.raises(ArtifactCorruptedError):
        short.finish()


class _RecordingBlake3:
    """Stands in for ``blake3.blake3`` and records the ``max_threads`` each hasher is built with."""

    AUTO = blake3.blake3.AUTO

    def __init__(self, threads: list[int]) -> None:
        self.threads = threads

    def __call__(self, data: bytes = b"", *, max_threads: int = 1) -> blake3.blake3:
        self.threads.append(max_threads)
        return blake3.blake3(data, max_threads=max_threads)


@pytest.fixture
def hasher_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``max_threads`` of every hasher the envelope module builds from here on in the test."""
    threads: list[int] = []
    recording = type("blake3_module", (), {"blake3": _RecordingBlake3(threads)})
    monkeypatch.setattr(envelope, "blake3", recording)
    return threads


@pytest.mark.parametrize(
    ("chunk_size", "threads"),
    [
        (None, 1),
        (0, 1),
        (64 << 10, 1),
        ((2 << 20) - 1, 1),
        (2 << 20, blake3.blake3.AUTO),
        (64 << 20, blake3.blake3.AUTO),
    ],
)
def test_new_hasher_uses_threads_from_2_mib_per_update(
    chunk_size: int | None, threads: int, hasher_threads: list[int]
) -> None:
    new_hasher(chunk_size)
    assert hasher_threads == [threads]


def test_the_verifier_hashes_chunks_of_unknown_size_on_one_thread(hasher_threads: list[int]) -> None:
    header = CODEC.encode(Message(content=b"x" * 100)).header
    hasher_threads.clear()  # encoding hashed too
    PayloadVerifier(header)
    assert hasher_threads == [1]


def test_new_hasher_gives_the_header_digest() -> None:
    payload = bytes(range(256)) * 40
    expected = CODEC.encode(Message(content=payload)).header.digest
    for chunk_size in (None, 1000, 4 << 20):
        hasher = new_hasher(chunk_size)
        for start in range(0, len(payload), 1000):
            hasher.update(payload[start : start + 1000])
        assert hasher.hexdigest() == expected


@given(st.binary(max_size=200))
def test_random_bytes_never_decode_and_never_crash_untyped(blob: bytes) -> None:
    with pytest.raises(SerializationError):
        CODEC.decode_bytes(MAGIC + b"\x01" + blob)


# -- the fast paths are the same format ----------------------------------------------------------------

# Any text a Message accepts as a media type: no control character (category Cc), no lone surrogate.
_media_types = st.sampled_from(["application/json", "text/plain; charset=utf-8"]) | st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12
)


@settings(max_examples=300, deadline=None)
@given(message=messages, media_type=_media_types, signed=st.booleans())
def test_header_is_exactly_canonical_json_of_its_fields(message: Message, media_type: str, signed: bool) -> None:
    # The encoder writes the header out by hand; it must be byte for byte what canonical_json would give.
    message = message.model_copy(update={"media_type": media_type})
    codec = Codec(signing_key=b"k" * 32) if signed else CODEC
    encoded = codec.encode(message)
    header = encoded.header
    doc = {
        "codec": header.codec,
        "compression": header.compression,
        "media_type": media_type,
        "schema": message.schema.model_dump(mode="json") if message.schema else None,
        "metadata": thaw_json(message.metadata),
        "created_at": message.created_at.isoformat().replace("+00:00", "Z"),
        "size": header.size,
        "stored_size": header.stored_size,
        "digest": {"alg": "blake3", "hex": header.digest},
        "mac": "blake3-keyed" if signed else "blake3",
    }
    length = struct.unpack(">I", encoded.head[5:9])[0]
    assert encoded.head[PREFIX_SIZE : PREFIX_SIZE + length] == canonical_json(doc)
    # The identity key from the encoder's pieces equals the one derived from the header alone.
    assert encoded.identity_key == dataclasses.replace(encoded, identity_json=b"").identity_key


def test_compressed_header_is_canonical_too() -> None:
    text = "".join(f"x{i}" for i in range(40_000))
    encoded = CODEC.encode(Message(content=text))
    assert encoded.header.compression == "zstd"
    assert b'"compression":"zstd"' in encoded.head
    assert CODEC.decode(encoded.head, encoded.payload).content == text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("digest", "AB" * 32),
        ("digest", 'a"' * 32),
        ("digest", "a" * 63),
        ("size", True),
        ("size", -1),
        ("size", 1.0),
        ("stored_size", "1"),
        ("compression", "gzip"),
        ("codec", "pickle"),
        ("metadata", ["not", "an", "object"]),
        ("metadata", {"k": {1, 2}}),
        ("media_type", "half \ud800"),
    ],
)
def test_encode_head_refuses_fields_that_would_break_the_header(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "codec": "bytes",
        "media_type": "application/octet-stream",
        "schema": None,
        "metadata": {},
        "created_at": datetime(2026, 11, 25, tzinfo=UTC),
        "size": 1,
        "digest": "a" * 64,
    }
    fields[field] = value
    with pytest.raises(SerializationError):
        CODEC.encode_head(**fields)  # type: ignore[arg-type]


def _forge(payload: bytes, codec: str = "json") -> tuple[bytes, bytes]:
    head, _ = CODEC.encode_head(
        codec=codec,
        media_type="application/json",
        schema=None,
        metadata={},
        created_at=datetime(2026, 11, 25, tzinfo=UTC),
        size=len(payload),
        digest=blake3.blake3(payload).hexdigest(),
    )
    return head, payload


@pytest.mark.parametrize(
    "payload",
    [b'"\\ud800"', b'{"k":"\\udfff"}', b'{"\\ud83d":1}', b"NaN", b"[1, Infinity]", b"", b"  ", b"1 2", b'{"a":1}x'],
)
def test_a_validly_tagged_payload_that_is_not_storable_json_is_corrupted(payload: bytes) -> None:
    # Anyone who can write to a backend can tag an unsigned envelope: its content must still be a value
    # every backend could store (no lone surrogates, no NaN), or reading it fails as corrupted data.
    with pytest.raises(ArtifactCorruptedError):
        CODEC.decode(*_forge(payload))


@pytest.mark.parametrize("payload", [b' {"a": [1, 2.5]} ', b'\n["x"]\t', b'"\\u00e9t\\u00e9"', b"\xef\xbb\xbf1"])
def test_json_payloads_parse_as_json_loads_does(payload: bytes) -> None:
    try:
        expected = json.loads(payload.decode("utf-8"))
    except ValueError:
        with pytest.raises(ArtifactCorruptedError):
            CODEC.decode(*_forge(payload))
    else:
        assert CODEC.decode(*_forge(payload)).to_python() == expected


@pytest.mark.parametrize(("first", "second"), [(0, False), (1, True), (1, 1.0), (0.0, -0.0)])
def test_schemas_that_python_calls_equal_keep_their_own_json(first: object, second: object) -> None:
    # 0 == False and 0.0 == -0.0 in Python, but they are different JSON; nothing may reuse one for the other.
    def message(value: object) -> Message:
        return Message(content={"v": 1}, schema=SchemaInfo(name="m.M", json_schema={"default": value}))

    for value in (first, second):
        decoded = CODEC.decode_bytes(CODEC.encode(message(value)).to_bytes())
        assert decoded.schema is not None
        assert canonical_json(decoded.schema.json_schema) == canonical_json({"default": value})
    assert CODEC.encode(message(first)).identity_key != CODEC.encode(message(second)).identity_key


def test_json_nested_deeper_than_the_recursion_limit_is_corrupted_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    head = struct.pack(">4sBI", MAGIC, 1, len(deep)) + deep + b"\0" * TAG_SIZE
    with pytest.raises(ArtifactCorruptedError):
        CODEC.decode_head(head)
    with pytest.raises(ArtifactCorruptedError):
        CODEC.decode(*_forge(deep))
    nested_objects = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
    with pytest.raises(ArtifactCorruptedError):
        CODEC.decode(*_forge(nested_objects))


_TRICKY_PAYLOADS = [
    b'{"a":1,"a":[2]}',
    b'["\\ud83d\\ude00", "\\\\ud800"]',
    b"[1e400]",
    b"[-Infinity]",
    b"[1.0, 1, true]",
    b'{"a":NaN,"a":1}',
]


@settings(max_examples=300, deadline=None)
@given(
    payload=st.sampled_from(_TRICKY_PAYLOADS)
    | st.tuples(json_values, st.booleans()).map(lambda pair: json.dumps(pair[0], ensure_ascii=pair[1]).encode())
)
def test_json_payloads_decode_as_parsing_then_freezing_did(payload: bytes) -> None:
    # decode_payload parses JSON straight into frozen values; message_from(header, json.loads(...)) is the
    # two-pass way it replaced. Same message, same frozen types (repr tells 1 from 1.0 and tuples from lists),
    # and corrupted exactly when the two-pass way refused.
    head, _ = _forge(payload)
    header = CODEC.decode_head(head)
    try:
        expected: Message | None = Codec.message_from(header, json.loads(payload.decode("utf-8")))
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ArtifactCorruptedError):
            CODEC.decode(*_forge(payload))
    else:
        decoded = CODEC.decode(*_forge(payload))
        assert decoded == expected
        assert repr(decoded.content) == repr(expected.content)


@pytest.fixture
def digests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the payloads the codec hashes from now on (the payload digest, not head tags)."""
    hashed: list[int] = []
    real = envelope._digest

    def counting(data: bytes | memoryview) -> str:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(envelope, "_digest", counting)
    return hashed


BIG_TEXT = "".join(f"ü{i}" for i in range(8_000))  # compressed when stored: the digest is of the uncompressed payload


@pytest.mark.parametrize("content", [b"\x00payload" * 1000, BIG_TEXT, "short text", b""])
@pytest.mark.parametrize("signing_key", [None, b"k" * 32])
def test_a_verified_payload_is_not_hashed_again_when_its_content_is_encoded(
    digests: list[int], content: bytes | str, signing_key: bytes | None
) -> None:
    codec = Codec(signing_key=signing_key)
    stored = codec.encode(Message(content=content, metadata={"a": 1}), place=("ns", "from"))
    digests.clear()
    with envelope.reusing_verified_digests():
        # Head and payload as bytes, as backends read them.
        message = codec.decode(stored.head, stored.payload, place=("ns", "from"))
        again = codec.encode(message, place=("other", "to"))
    assert len(digests) == 1  # the decode's verification only
    # Exactly what encoding without the record gives (the record supplied the very same digest).
    digests.clear()
    plain = codec.encode(message, place=("other", "to"))
    assert len(digests) == 1
    assert (again.head, again.payload) == (plain.head, plain.payload)
    assert codec.decode(again.head, again.payload, place=("other", "to")) == message


def test_outside_the_context_or_for_other_content_the_payload_is_hashed(digests: list[int]) -> None:
    stored = CODEC.encode(Message(content=b"abc" * 100)).to_bytes()
    stored_json = CODEC.encode(SAMPLE).to_bytes()
    json_size = len(CODEC.encode(SAMPLE).payload)
    message = CODEC.decode_bytes(stored)
    digests.clear()
    CODEC.encode(message)  # no context: hashed
    assert digests == [300]
    with envelope.reusing_verified_digests():
        message = CODEC.decode_bytes(stored)
        json_message = CODEC.decode_bytes(stored_json)
        digests.clear()
        # Equal content in another object, a copy with other content, and JSON content: each hashed.
        CODEC.encode(Message(content=bytes(bytearray(message.content))))
        CODEC.encode(message.model_copy(update={"content": b"other"}))
        CODEC.encode(json_message)
        assert digests == [300, 5, json_size]
    # The record ends with the context.
    digests.clear()
    CODEC.encode(message)
    assert digests == [300]


def test_bytes_from_a_buffer_are_recorded_and_text_from_a_buffer_is_not(digests: list[int]) -> None:
    # A payload in a caller's buffer (decode_bytes views it) could change after it is hashed: bytes content
    # is copied before it is hashed, so its digest is recorded; text decoded from the buffer is not.
    blob = bytearray(CODEC.encode(Message(content=b"abc" * 100)).to_bytes())
    text_blob = bytearray(CODEC.encode(Message(content="short text")).to_bytes())
    with envelope.reusing_verified_digests():
        binary = CODEC.decode_bytes(memoryview(blob))
        text = CODEC.decode_bytes(memoryview(text_blob))
        blob[-1] ^= 1  # the caller's buffer changes; the message's bytes do not
        digests.clear()
        assert CODEC.decode(*_split(CODEC.encode(binary))) == binary
        assert digests == [300]  # only the decode's verification: the encode reused the record
        digests.clear()
        CODEC.encode(text)
        assert digests == [10]


def _split(encoded: envelope.Encoded) -> tuple[bytes, bytes]:
    return encoded.head, encoded.payload


def test_a_payload_that_failed_verification_is_not_recorded(digests: list[int]) -> None:
    encoded = CODEC.encode(Message(content=b"abc" * 100))
    damaged = encoded.payload[:-1] + b"?"
    with envelope.reusing_verified_digests():
        with pytest.raises(ArtifactCorruptedError):
            CODEC.decode(encoded.head, damaged)
        digests.clear()
        CODEC.encode(Message(content=damaged))
    assert digests == [300]


@pytest.fixture
def encodings(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The JSON values canonically encoded from now on (content, schema and metadata alike)."""
    encoded: list[Any] = []
    real = message_module._canonical_text

    def counting(value: Any) -> str:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(message_module, "_canonical_text", counting)
    return encoded


@pytest.mark.parametrize("signing_key", [None, b"k" * 32])
def test_json_content_is_encoded_once_within_the_context(encodings: list[Any], signing_key: bytes | None) -> None:
    # The artifact server measures JSON content as stored (content_bytes) before its store encodes it: the
    # encoding was built twice, the largest single cost of such a save.
    codec = Codec(signing_key=signing_key)
    message = Message(content=[{"k": index, "v": "ü" * (index % 7)} for index in range(2000)], metadata={"a": 1})
    plain = codec.encode(message, place=("ns", "id"))
    encodings.clear()
    with envelope.reusing_verified_digests():
        measured = envelope.content_bytes(message)
        again = codec.encode(message, place=("ns", "id"))
        assert envelope.content_bytes(message) == measured
        assert [value for value in encodings if value is message.content] == [message.content]
        # Equal content in another object is encoded anew: recognised by identity, never by equality.
        other = Message(content=thaw_json(message.content))
        encodings.clear()
        codec.encode(other)
        assert [value for value in encodings if value is other.content] == [other.content]
    # Exactly what encoding without the record gives.
    assert measured == ("json", canonical_json(message.content))
    assert (again.head, again.payload) == (plain.head, plain.payload)
    # The record ends with the context.
    encodings.clear()
    envelope.content_bytes(message)
    codec.encode(message)
    assert [value for value in encodings if value is message.content] == [message.content] * 2


def test_metadata_and_schema_are_encoded_once_within_the_context(encodings: list[Any]) -> None:
    # The artifact server measures a large head as stored before its store encodes it again.
    schema = SchemaInfo(name="s", json_schema={"type": "array", "items": {"type": "integer"}})
    message = Message(content=1, schema=schema, metadata={"note": "m" * 1000, "n": [1, 2]})
    plain = CODEC.encode(message)
    encodings.clear()
    with envelope.reusing_verified_digests():
        head, _ = CODEC.encode_head(
            codec="json", media_type=message.media_type, schema=schema, metadata=message.metadata,
            created_at=message.created_at, size=1, digest=plain.header.digest,
        )  # fmt: skip
        again = CODEC.encode(message)
    assert [value for value in encodings if value is message.metadata] == [message.metadata]
    assert len([value for value in encodings if isinstance(value, dict) and "json_schema" in value]) == 1
    assert head == plain.head
    assert (again.head, again.payload) == (plain.head, plain.payload)


def test_limiting_json_content_refuses_only_json_over_its_limit_and_only_within() -> None:
    json_blob = CODEC.encode(Message(content={"k": "v" * 1000})).to_bytes()
    text_blob = CODEC.encode(Message(content="v" * 2000)).to_bytes()
    with envelope.limiting_json_content(500, setting="SOME_SETTING"):
        with pytest.raises(PayloadTooLargeError, match=r"1008 bytes of JSON content; at most 500 .*\(SOME_SETTING\)"):
            CODEC.decode_bytes(json_blob)
        assert CODEC.decode_bytes(text_blob).content == "v" * 2000  # text is not limited by it
        with envelope.limiting_json_content(10_000, setting="INNER"):
            assert CODEC.decode_bytes(json_blob).content == {"k": "v" * 1000}
        with pytest.raises(PayloadTooLargeError):
            CODEC.decode_bytes(json_blob)  # the outer limit is back
    assert CODEC.decode_bytes(json_blob).content == {"k": "v" * 1000}


def test_limiting_json_content_refuses_a_header_over_its_limit_before_parsing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The header is JSON too (metadata, schema: up to 16 MiB), and was parsed whatever the limit said.
    encoded = CODEC.encode(Message(content=b"x", metadata={"note": "m" * 1000}))
    header_size = len(encoded.head) - PREFIX_SIZE - TAG_SIZE
    parsed: list[int] = []
    real = envelope._loads_text

    def counting(text: str) -> Any:
        parsed.append(len(text))
        return real(text)

    monkeypatch.setattr(envelope, "_loads_text", counting)
    with envelope.limiting_json_content(header_size, setting="SOME_SETTING"):
        assert CODEC.decode(encoded.head, encoded.payload, place=("ns", "x")).content == b"x"  # at the limit
    assert parsed == [header_size]  # parsed as JSON (it has metadata), so the check below means something
    parsed.clear()
    with (
        envelope.limiting_json_content(header_size - 1, setting="SOME_SETTING"),
        pytest.raises(PayloadTooLargeError) as info,
    ):
        CODEC.decode(encoded.head, encoded.payload, place=("ns", "x"))
    assert parsed == []
    assert f"envelope header of {header_size} bytes of JSON" in str(info.value)
    assert f"at most {header_size - 1} are parsed here (SOME_SETTING)" in str(info.value)
    assert info.value.step_id == "x"


def test_a_canonical_header_without_metadata_or_schema_is_read_without_the_json_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[str] = []
    real = envelope._loads_text

    def counting(text: str) -> Any:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(envelope, "_loads_text", counting)
    plain = Message(content={"text": "x" * 900, "n": 1, "tags": ["a", "b"]})
    encoded = CODEC.encode(plain)
    assert CODEC.decode(encoded.head, encoded.payload) == plain
    assert parsed == []
    # Metadata or a schema: the header is parsed as JSON.
    encoded = CODEC.encode(SAMPLE)
    assert CODEC.decode(encoded.head, encoded.payload) == SAMPLE
    assert len(parsed) == 1


def _tagged(body: bytes) -> bytes:
    prefix = struct.pack(">4sBI", MAGIC, 1, len(body)) + body
    return prefix + blake3.blake3(prefix).digest()


def _outcome(head: bytes) -> object:
    try:
        return CODEC.decode_head(head)
    except Exception as exc:  # the error itself is the outcome compared
        return (type(exc), str(exc))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"codec": "bytes"},
        {"codec": "utf-8", "media_type": "text/plain; charset=utf-8"},
        {"codec": "yaml"},
        {"compression": "zstd", "size": 10, "stored_size": 5},
        {"compression": "zstd", "size": 10**12, "stored_size": 5},  # past the ratio
        {"compression": "gzip"},
        {"created_at": "2026-11-25T12:00:00.123456+02:00"},
        {"created_at": "2026-11-25T12:00:00"},  # no time zone
        {"created_at": "yesterday"},
        {"created_at": "9999-12-31T23:59:59-01:00"},  # no UTC datetime
        {"created_at": "2026-11-25T12:00:00\u00e9Z"},
        {"media_type": ""},
        {"media_type": "t\u00ebxt/\u20ac; x=\U0001f600"},
        {"media_type": "a\x7fb\u0085"},  # DEL and a C1 control are JSON text; only C0 must be escaped
        {"digest": {"alg": "blake3", "hex": "not hex"}},
        {"digest": {"alg": "sha256", "hex": "0" * 64}},
        {"mac": "blake3-keyed"},
        {"size": 0, "stored_size": 0},
        {"size": 10**17 + 1},
        {"size": 10**18 + 1},  # more digits than the pattern reads: parsed as JSON
        {"size": 10**40},
        {"size": -1},
        {"size": 1.0},
        {"stored_size": True},
        {"media_type": 5},
        {"created_at": None},
        {"metadata": {"k": "v"}},
        {"schema": {"name": "m.M", "version": None, "json_schema": None}},
    ],
)
def test_a_canonical_header_reads_as_the_json_parser_reads_it(changes: dict[str, Any]) -> None:
    # The canonical pattern and the JSON parser must accept and refuse the same headers, with the same
    # errors: the same document written compactly (canonical) and with white space (always parsed as JSON).
    head, _ = _forge(b'{"k":1}')
    doc = json.loads(head[PREFIX_SIZE:-TAG_SIZE])
    doc.update(changes)
    compact = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    spaced = json.dumps(doc, separators=(", ", ": "), sort_keys=True, ensure_ascii=False).encode()
    assert _outcome(_tagged(compact)) == _outcome(_tagged(spaced))


@settings(max_examples=200, deadline=None)
@given(message=messages, media_type=st.text(max_size=12))
def test_canonical_headers_of_any_message_read_as_the_json_parser_reads_them(message: Message, media_type: str) -> None:
    with contextlib.suppress(ValueError):
        message = message.model_copy(update={"media_type": media_type})
    head = CODEC.encode(message).head
    doc = json.loads(head[PREFIX_SIZE:-TAG_SIZE])
    spaced = json.dumps(doc, separators=(", ", ": "), sort_keys=True, ensure_ascii=False).encode()
    assert CODEC.decode_head(head) == _outcome(_tagged(spaced))
