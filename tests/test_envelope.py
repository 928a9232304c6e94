"""The stored format: round trips, damage of every kind, versions, signing, compression."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifactstore_core import (
    ArtifactCorruptedError,
    Codec,
    ConfigurationError,
    Message,
    SchemaInfo,
    SerializationError,
    UnsupportedFormatError,
)
from artifactstore_core.envelope import MAGIC, PREFIX_SIZE, TAG_SIZE, PayloadVerifier
from artifactstore_core.testing import messages

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
    with pytest.raises(ArtifactCorruptedError, match="signature"):
        other.decode_bytes(blob)
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SIGNING_KEY"):
        CODEC.decode_bytes(blob)
    # An unsigned artifact (or one re-tagged by someone without the key) is refused by a signing reader.
    with pytest.raises(ArtifactCorruptedError, match="not signed"):
        signer.decode_bytes(CODEC.encode(SAMPLE).to_bytes())
    assert "k1" not in repr(signer)


def test_compression_above_threshold_only_for_text_and_json() -> None:
    codec = Codec(compress_threshold=1024)
    big_json = Message(content={"text": "abc" * 10_000})
    encoded = codec.encode(big_json)
    assert encoded.header.compression == "zstd"
    assert len(encoded.payload) < 3 * 10_000 // 4
    assert codec.decode(encoded.head, encoded.payload) == big_json
    assert codec.encode(Message(content="abc" * 10)).header.compression is None
    assert codec.encode(Message(content=b"abc" * 10_000)).header.compression is None
    assert Codec(compress_threshold=None).encode(big_json).header.compression is None


def test_compressed_payload_damage_is_detected() -> None:
    codec = Codec(compress_threshold=1024)
    encoded = codec.encode(Message(content="abc" * 10_000))
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


@given(st.binary(max_size=200))
def test_random_bytes_never_decode_and_never_crash_untyped(blob: bytes) -> None:
    with pytest.raises(SerializationError):
        CODEC.decode_bytes(MAGIC + b"\x01" + blob)
