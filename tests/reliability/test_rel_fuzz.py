"""Property-based fuzzing of the two parsers that face untrusted input: the envelope decoder and the id
encodings (core, filesystem paths, S3 keys, HTTP path segments).

The decoder raises only its documented errors (``UnsupportedFormatError``, ``ArtifactCorruptedError``,
``ConfigurationError`` for a signed artifact without a key) whatever it is given: random bytes, mutated
valid envelopes, and headers that carry a valid tag (which anyone without a signing key can compute), so
fuzzing reaches the header parser behind the tag. The encodings are injective and reversible, and decoding
any string either fails with ``ValueError`` or gives the one value that encodes to it.

Profiles: ``reliability-ci`` (default, bounded for CI, derandomised so a CI run is reproducible) and
``reliability-long`` (``RELIABILITY_HYPOTHESIS_PROFILE=reliability-long``, used by the ``reliability_long``
nox session). The atheris harness ``fuzz_decoder.py`` fuzzes the decoder with coverage guidance.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from envelopes import forge, header_of, split
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from artifactstore_core import Codec, Message
from artifactstore_core.errors import (
    ArtifactCorruptedError,
    ConfigurationError,
    SerializationError,
    UnsupportedFormatError,
)
from artifactstore_core.ids import (
    MAX_ID_BYTES,
    decode_name,
    encode_name,
    is_legal,
    validate_namespace,
)
from artifactstore_core.testing import json_values, messages

settings.register_profile(
    "reliability-ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "reliability-long",
    max_examples=5_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile(os.environ.get("RELIABILITY_HYPOTHESIS_PROFILE", "reliability-ci"))

#: What the decoder may raise, per its docstrings.
DOCUMENTED = (UnsupportedFormatError, ArtifactCorruptedError, ConfigurationError)
PLAIN = Codec()
SIGNED = Codec(signing_key=b"fuzz signing key")


def decodes_or_refuses(codec: Codec, blob: bytes) -> Message | None:
    try:
        return codec.decode_bytes(blob)
    except DOCUMENTED:
        return None


# -- the envelope decoder ------------------------------------------------------------------------------


@settings(FUZZ)
@given(st.binary(max_size=2048))
@example(b"")
@example(b"ARTF\x01")
@example(b"ARTF\x01\x00\x00\x00\x02{}" + bytes(32))
def test_decoder_on_arbitrary_bytes(blob: bytes) -> None:
    decodes_or_refuses(PLAIN, blob)
    decodes_or_refuses(SIGNED, blob)


def mutations() -> st.SearchStrategy[list[tuple[str, int, int]]]:
    return st.lists(
        st.tuples(
            st.sampled_from(["flip", "set", "insert", "delete", "truncate"]), st.integers(0, 10**6), st.integers(0, 255)
        ),
        min_size=1,
        max_size=4,
    )


def mutate(blob: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(blob)
    for kind, where, value in steps:
        if not data:
            data.append(value)
            continue
        index = where % len(data)
        if kind == "flip":
            data[index] ^= 1 << (value % 8)
        elif kind == "set":
            data[index] = value
        elif kind == "insert":
            data.insert(index, value)
        elif kind == "delete":
            del data[index]
        else:
            del data[index:]
    return bytes(data)


@settings(FUZZ)
@given(messages, mutations(), st.booleans())
def test_decoder_on_mutated_envelopes(message: Message, steps: list[tuple[str, int, int]], signed: bool) -> None:
    codec = SIGNED if signed else PLAIN
    blob = codec.encode(message).to_bytes()
    mutated = mutate(blob, steps)
    decoded = decodes_or_refuses(codec, mutated)
    if decoded is not None:
        # A damaged envelope may decode only to the very message saved (the digest covers the content, so
        # bytes of a compressed frame that do not change the content can differ); anything else is a hole.
        assert decoded == message
        assert mutated == blob or codec.decode_head(mutated[: codec.head_size(mutated)]).compression == "zstd"


HEADER_FIELDS = (
    "codec", "compression", "media_type", "schema", "metadata", "created_at", "size", "stored_size", "digest", "mac"
)  # fmt: skip


@settings(FUZZ)
@given(
    st.dictionaries(st.sampled_from(HEADER_FIELDS), json_values, max_size=6),
    st.binary(max_size=64),
    st.integers(0, 2),
)
def test_decoder_on_forged_headers_with_valid_tags(changes: dict[str, Any], payload: bytes, version: int) -> None:
    header = {**header_of(split(Message(content=payload))[0]), **changes}
    head, body = forge(header, payload, version=version)
    try:
        message = PLAIN.decode(head, body)
    except DOCUMENTED:
        return
    assert isinstance(message, Message)
    # Whatever a forged header made it decode to, it is a message the codec round-trips.
    assert PLAIN.decode(*split(message)) == message
    if isinstance(message.content, bytes):
        assert message.content == payload


@pytest.mark.parametrize(("field", "value"), [("digest", "not an object"), ("created_at", 5)])
def test_header_fields_of_the_wrong_type_are_refused(field: str, value: Any) -> None:
    """Once a raw AttributeError from the header parser; now a documented error."""
    header = {**header_of(split(Message(content=b"x"))[0]), field: value}
    with pytest.raises(ArtifactCorruptedError):
        PLAIN.decode(*forge(header, b"x"))


def test_header_metadata_must_be_an_object() -> None:
    header = {**header_of(split(Message(content=b"x"))[0]), "metadata": [1, 2]}
    with pytest.raises(SerializationError):
        PLAIN.decode(*forge(header, b"x"))


def zstd_frame_claiming(frame: bytes, size: int) -> bytes:
    """``frame`` (a zstd frame) rewritten to declare ``size`` bytes of content, cut to its old length."""
    descriptor = frame[4]
    single_segment = (descriptor >> 5) & 1
    start = 5 + (0 if single_segment else 1)
    old = {0: 1 if single_segment else 0, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    patched = frame[:4] + bytes([(descriptor & 0x3F) | 0xC0]) + frame[5:start] + struct.pack("<Q", size)
    return (patched + frame[start + old :])[: len(frame)]


def test_a_compressed_payload_cannot_claim_more_than_its_header() -> None:
    codec = Codec(signing_key=b"a key the attacker does not have")
    encoded = codec.encode(Message(content=" ".join(f"z{i}" for i in range(12_000))))
    assert encoded.header.compression == "zstd"
    # Someone who can write the backend (a Redis hash field, an S3 body) but has no key swaps the payload.
    hostile = zstd_frame_claiming(encoded.payload, 2**40)
    assert len(hostile) == len(encoded.payload)
    with pytest.raises(ArtifactCorruptedError):
        codec.decode(encoded.head, hostile)


def test_the_forged_header_test_reaches_the_parser() -> None:
    """Forged headers pass the tag, so the property above exercises the header parser, not only the tag."""
    header = {**header_of(split(Message(content=b"x"))[0]), "codec": "pickle"}
    with pytest.raises(UnsupportedFormatError, match="codec"):
        PLAIN.decode(*forge(header, b"x"))
    good = header_of(split(Message(content=b"x"))[0])
    assert PLAIN.decode(*forge(good, b"x")).content == b"x"


# -- ids -----------------------------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=80).filter(lambda s: is_legal(s))


@settings(FUZZ)
@given(st.text(max_size=300) | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)))
def test_id_validation_matches_its_rules(value: str) -> None:
    try:
        size = len(value.encode("utf-8"))
        lone_surrogate = False
    except UnicodeEncodeError:
        size, lone_surrogate = 0, True
    control = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
    legal = bool(value) and not lone_surrogate and not control and size <= MAX_ID_BYTES
    assert is_legal(value) == legal
    if legal and size <= 128:
        assert validate_namespace(value) == value


@settings(FUZZ)
@given(ids)
def test_encode_name_round_trips_and_uses_only_safe_characters(value: str) -> None:
    name = encode_name(value)
    assert decode_name(name) == value
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_%ABCDEF")
    assert "/" not in name
    assert "." not in name  # so never "." or ".." either
    assert len(name) <= 3 * len(value.encode("utf-8"))


@settings(FUZZ)
@given(ids, ids)
def test_encode_name_is_injective_even_case_folded(a: str, b: str) -> None:
    assume(a != b)
    assert encode_name(a) != encode_name(b)
    assert encode_name(a).casefold() != encode_name(b).casefold()


@settings(FUZZ)
@given(st.text(alphabet="abcz09-_%ABCDEFG.é/", max_size=40) | st.text(max_size=40))
def test_decode_name_accepts_only_canonical_names(name: str) -> None:
    try:
        value = decode_name(name)
    except ValueError:
        return
    assert encode_name(value) == name


@settings(FUZZ)
@given(ids)
def test_filesystem_path_components_round_trip(value: str) -> None:
    from artifactstore_filesystem.layout import decode_components, encode_components

    parts = encode_components(value)
    assert decode_components(parts) == value
    for part in parts:
        assert not part.startswith(".")  # so never "." or ".." either
        assert "/" not in part
        assert "\\" not in part


@settings(FUZZ)
@given(st.lists(st.text(alphabet="+@abc%0123456789ABCDEF.", max_size=12), max_size=4))
def test_filesystem_decoding_of_foreign_paths(parts: list[str]) -> None:
    from artifactstore_filesystem.layout import decode_components, encode_components

    value = decode_components(parts)
    if value is not None:
        assert encode_components(value) == parts


@settings(FUZZ)
@given(ids, st.sampled_from([8, 64, 384]))
def test_s3_key_segments_round_trip(value: str, limit: int) -> None:
    from artifactstore_s3.keys import decode_segment, encode_segment

    segment = encode_segment(value, limit)
    assert decode_segment(segment, limit) == value
    assert "/" not in segment
    assert not segment.startswith(".")


@settings(FUZZ)
@given(st.text(max_size=40), st.sampled_from([8, 384]))
def test_s3_key_segment_decoding_accepts_only_canonical_segments(segment: str, limit: int) -> None:
    from artifactstore_s3.keys import decode_segment, encode_segment

    try:
        value = decode_segment(segment, limit)
    except ValueError:
        return
    assert encode_segment(value, limit) == segment


@settings(FUZZ)
@given(ids)
def test_http_path_segments_round_trip(value: str) -> None:
    from urllib.parse import unquote

    from artifactstore_http.protocol import quote_segment

    segment = quote_segment(value)
    assert unquote(segment, errors="strict") == value
    assert not set(segment) & set("/?#\\.")
