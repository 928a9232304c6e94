"""Object layout, interop with plain S3 clients, and keys within S3's limits."""

from __future__ import annotations

import base64
import http.client
import io
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from s3_fixtures import all_keys, make_settings

from artifactstore_core import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExistsError,
    BackendError,
    Codec,
    ConfigurationError,
    Message,
    SchemaInfo,
    UnsupportedFormatError,
)
from artifactstore_core.ids import MAX_ID_BYTES, MAX_NAMESPACE_BYTES
from artifactstore_s3 import MAX_PREFIX_BYTES, S3Store
from artifactstore_s3.keys import (
    ID_SEGMENT_LIMIT,
    MAX_KEY_BYTES,
    NAMESPACE_SEGMENT_LIMIT,
    KeyLayout,
    decode_segment,
    encode_segment,
)
from artifactstore_s3.layout import HEAD_META, HEAD_SIZE_META, LAYOUT_META

NewStore = Callable[..., S3Store]


def test_plain_boto3_client_reads_the_exact_payload(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store("interop")
    payload = bytes(range(256)) * 100 + b"\x00end"
    store.save("model/weights.bin", Message(content=payload, metadata={"epoch": 3}))
    # What another tool does: list the bucket, pick the object, GET it. No artifactstore code involved.
    (key,) = all_keys(raw, bucket)
    assert key == store.key_of("model/weights.bin") == "artifactstore/interop/model%2Fweights%2Ebin"
    response = raw.get_object(Bucket=bucket, Key=key)
    assert response["Body"].read() == payload
    assert response["ContentType"] == "application/octet-stream"
    # The head travels in the metadata and is the verified envelope head of docs/format.md.
    head = base64.b64decode(response["Metadata"][HEAD_META])
    header = Codec().decode_head(head)
    assert (header.size, header.codec, dict(header.metadata)) == (len(payload), "bytes", {"epoch": 3})


def test_text_and_json_bodies_are_their_utf8_encoding(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    store.save("t", Message(content="héllo", media_type="text/markdown"))
    store.save("j", Message(content={"b": 1, "a": [True, None]}))
    text = raw.get_object(Bucket=bucket, Key=store.key_of("t"))
    assert text["Body"].read() == "héllo".encode()
    assert text["ContentType"] == "text/markdown"
    doc = raw.get_object(Bucket=bucket, Key=store.key_of("j"))
    assert doc["Body"].read() == b'{"a":[true,null],"b":1}'
    assert doc["ContentType"] == "application/json"


def big_header_message(content: Any = b"payload bytes") -> Message:
    schema = SchemaInfo(name="big", json_schema={"description": "x" * 4000})
    return Message(content=content, schema=schema, metadata={"note": "y" * 500})


def test_a_head_too_large_for_metadata_uses_the_envelope_layout(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    message = big_header_message()
    store.save("big", message)
    response = raw.get_object(Bucket=bucket, Key=store.key_of("big"))
    assert response["Metadata"][LAYOUT_META] == "envelope"
    assert HEAD_META not in response["Metadata"]
    assert Codec().decode_bytes(response["Body"].read()) == message  # the body is a whole envelope
    assert store.get("big") == message
    with store.open("big") as handle:
        assert handle.read() == b"payload bytes"
    assert store.info("big").schema_name == "big"
    assert [info.step_id for info in store.list()] == ["big"]
    store.save("big", big_header_message())  # identical: the write-once check reads the head from the body
    with pytest.raises(ArtifactExistsError):
        store.save("big", big_header_message(b"other"))


def test_envelope_layout_is_still_verified(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    store.save("big", big_header_message())
    key = store.key_of("big")
    response = raw.get_object(Bucket=bucket, Key=key)
    blob = bytearray(response["Body"].read())
    blob[100] ^= 0x01  # inside the header
    raw.put_object(Bucket=bucket, Key=key, Body=bytes(blob), Metadata=response["Metadata"])
    with pytest.raises(ArtifactCorruptedError):
        store.get("big")
    with pytest.raises(ArtifactCorruptedError):
        store.open("big")


@pytest.mark.parametrize("size", [b"\xb2", b"\xb9\xb2"])  # "²", "¹²" as Latin-1 header bytes
def test_a_head_size_of_non_ascii_digits_is_corrupted(
    new_s3_store: NewStore, moto_endpoint: str, bucket: str, size: bytes
) -> None:
    # Metadata arrives decoded as Latin-1; str.isdigit() accepted "²", which int() then refused with a
    # ValueError, so every read of such a forged object failed as a BackendError about a ValueError.
    store = new_s3_store()
    # A raw PUT (the standard library's client: the s3 test environment has no other), since boto3 sends
    # metadata as ASCII only.
    endpoint = urllib.parse.urlsplit(moto_endpoint)
    connection = http.client.HTTPConnection(endpoint.hostname or "127.0.0.1", endpoint.port, timeout=30)
    try:
        connection.putrequest("PUT", f"/{bucket}/{urllib.parse.quote(store.key_of('forged'))}")
        connection.putheader(f"x-amz-meta-{LAYOUT_META}", b"envelope")
        connection.putheader(f"x-amz-meta-{HEAD_SIZE_META}", size)
        connection.putheader("Content-Length", "1")
        connection.endheaders(b"x")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    finally:
        connection.close()
    for call in (lambda: store.get("forged"), lambda: store.info("forged"), lambda: store.open("forged")):
        with pytest.raises(ArtifactCorruptedError, match=HEAD_SIZE_META) as info:
            call()
        assert info.value.step_id == "forged"
    with pytest.raises(ArtifactCorruptedError):
        list(store.list())


def test_an_object_without_artifactstore_metadata_is_refused(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    raw.put_object(Bucket=bucket, Key=store.key_of("foreign"), Body=b"written by someone else")
    with pytest.raises(UnsupportedFormatError) as info:
        store.get("foreign")
    assert info.value.step_id == "foreign"
    assert store.exists("foreign")


class _CanonicalHeaders(BaseHTTPRequestHandler):
    """Forwards each request to moto and its answer back with every header name in Go's canonical form
    (``X-Amz-Meta-Artifactstore-Head``), as MinIO answers and as a Go reverse proxy (Traefik, Caddy) passes
    on any service's headers: HTTP header names are case-insensitive, so both are correct."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header("-".join(word.capitalize() for word in name.split("-")), value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # The names http.server looks up.
    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815


@pytest.fixture
def canonical_headers_endpoint(moto_endpoint: str) -> Iterator[str]:
    """moto behind :class:`_CanonicalHeaders`, on a free loopback port; stopped after the test."""
    target = urllib.parse.urlsplit(moto_endpoint)
    handler = type("Handler", (_CanonicalHeaders,), {"upstream": (target.hostname or "127.0.0.1", target.port)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("metadata", [{}, {"schema": "x" * 3000}], ids=["split", "envelope"])
def test_metadata_names_are_read_whatever_their_case(
    canonical_headers_endpoint: str, bucket: str, metadata: dict[str, Any]
) -> None:
    # Was: botocore keeps the case of the x-amz-meta- names it receives ({"Artifactstore-Head": ...}), and the
    # store looked for "artifactstore-head" only, so behind such a service every artifact it had just saved was
    # "not an artifactstore artifact" (UnsupportedFormatError) to get, info, list and a second save.
    with S3Store(make_settings(canonical_headers_endpoint, bucket), namespace="ns") as store:
        message = Message(content=b"behind a proxy", metadata=metadata)
        store.save("a", message)
        head = store.client.head_object(Bucket=bucket, Key=store.key_of("a"))
        assert all(name[:1].isupper() for name in head["Metadata"])  # the proxy is at work
        assert store.get("a") == message
        with store.open("a") as handle:
            assert handle.read() == b"behind a proxy"
        assert store.info("a").size == len(b"behind a proxy")
        assert [info.step_id for info in store.list()] == ["a"]
        store.save("a", message)  # the identical artifact: a safe retry
        with pytest.raises(ArtifactExistsError):
            store.save("a", Message(content=b"another"))


def test_foreign_keys_under_a_namespace_are_neither_listed_nor_cleared(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store = new_s3_store("ns")
    store.save("mine", Message(content=1))
    # Not canonical encodings of any id: "UPPER" would be "%55%50...", "a.b" would be "a%2Eb".
    foreign = ["artifactstore/ns/UPPER", "artifactstore/ns/a.b", "artifactstore/ns/deep/er", "artifactstore/ns/%00"]
    for key in foreign:
        raw.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert [info.step_id for info in store.list()] == ["mine"]
    assert store.clear() == 1
    assert sorted(all_keys(raw, bucket)) == sorted(foreign)


def test_longest_ids_fit_the_key_limit_with_the_longest_prefix(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    prefix = "p" * MAX_PREFIX_BYTES
    namespace = "." * MAX_NAMESPACE_BYTES  # every byte escapes: the worst case of the readable encoding
    store = new_s3_store(namespace, prefix=prefix)
    ids = ["." * MAX_ID_BYTES, "é" * (MAX_ID_BYTES // 2), "日" * (MAX_ID_BYTES // 3), "x" * MAX_ID_BYTES]
    for index, step_id in enumerate(ids):
        assert len(store.key_of(step_id).encode()) <= MAX_KEY_BYTES
        store.save(step_id, Message(content=index))
    for index, step_id in enumerate(ids):
        assert store.get(step_id).content == index
    assert sorted(info.step_id for info in store.list()) == sorted(ids)
    assert store.namespaces() == [namespace]
    assert store.clear() == len(ids)


def test_a_prefix_too_long_is_refused_at_construction(new_s3_store: NewStore) -> None:
    with pytest.raises(ConfigurationError) as info:
        new_s3_store(prefix="p" * (MAX_PREFIX_BYTES + 1))
    assert "ARTIFACT_STORE_S3_PREFIX" in str(info.value)


def test_prefix_slashes_are_trimmed_and_an_empty_prefix_works(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store("n", prefix="/team/runs/")
    store.save("a", Message(content=1))
    top = new_s3_store("n", prefix="")
    top.save("a", Message(content=2))
    assert sorted(all_keys(raw, bucket)) == ["n/a", "team/runs/n/a"]
    assert store.get("a").content == 1
    # With an empty prefix the bucket's top level is shared: another prefix's first segment looks like a namespace,
    # but holds no artifact of one ("team/runs/n/a" is no canonical id key under "team/"), so it is not listed.
    assert top.namespaces() == ["n"]


def test_namespaces_lists_namespaces_with_artifacts_and_not_reserved_keys(new_s3_store: NewStore) -> None:
    one, two = new_s3_store("run one"), new_s3_store("run/two")
    one.save("a", Message(content=1))
    two.save_stream("s", io.BytesIO(b"x"))
    assert one.namespaces() == ["run one", "run/two"]  # the probe's reserved key is not a namespace
    two.clear()
    assert one.namespaces() == ["run one"]


def test_namespaces_lists_no_namespace_that_holds_only_foreign_objects(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    # namespaces() promises namespaces that hold an artifact (gc visits each): a "folder" made in the S3 console
    # (an empty object whose key ends with "/"), a file another tool dropped, or a key of no legal id are none,
    # and clear() leaves them alone, so such a namespace was listed for ever.
    store = new_s3_store("kept")
    store.save("a", Message(content=1))
    for key in ("artifactstore/folder/", "artifactstore/dropped/README.txt", "artifactstore/illegal/%00"):
        raw.put_object(Bucket=bucket, Key=key, Body=b"")
    # A namespace whose artifact's key sorts after foreign keys is still found.
    mixed = new_s3_store("mixed")
    for index in range(5):
        raw.put_object(Bucket=bucket, Key=f"artifactstore/mixed/FOREIGN{index}", Body=b"")
    mixed.save("z", Message(content=2))
    assert store.namespaces() == ["kept", "mixed"]
    for namespace in ("folder", "dropped", "illegal"):
        assert new_s3_store(namespace).clear() == 0
    assert store.namespaces() == ["kept", "mixed"]
    assert mixed.clear() == 1
    assert store.namespaces() == ["kept"]


@given(name=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300))
def test_segments_round_trip_and_stay_safe(name: str) -> None:
    for limit in (NAMESPACE_SEGMENT_LIMIT, ID_SEGMENT_LIMIT):
        segment = encode_segment(name, limit)
        assert decode_segment(segment, limit) == name
        assert "/" not in segment
        assert not segment.startswith(".")
        assert len(segment) <= max(limit, 1 + (4 * len(name.encode()) + 2) // 3)


def test_segments_are_injective_across_both_forms() -> None:
    long_name = "." * 200  # readable form is 600 characters: compact
    short_name = "ab"
    segments = {encode_segment(n, ID_SEGMENT_LIMIT) for n in (long_name, short_name, "AB", "a%2Eb", "a.b")}
    assert len(segments) == 5
    assert encode_segment(long_name, ID_SEGMENT_LIMIT).startswith("~")
    # A readable-looking segment for a long name, or a compact one for a short name, is not canonical.
    with pytest.raises(ValueError, match="canonical"):
        decode_segment("~YWI", ID_SEGMENT_LIMIT)
    layout = KeyLayout("p", "ns")
    assert layout.step_id("p/ns/~YWI") is None
    assert layout.step_id("p/ns/ab") == "ab"
    assert layout.step_id("p/other/ab") is None


def test_an_envelope_artifact_replaced_between_its_two_reads_is_still_there(new_s3_store: NewStore) -> None:
    # In the envelope layout the head is read in two requests: a HEAD, then the head's bytes from the body
    # (on the HEAD's ETag). An overwrite between the two makes the second fail with 412: the artifact is
    # there (replaced), and info(), list() and the write-once check must see the new one, not nothing.
    store = new_s3_store()
    other = new_s3_store()
    store.save("big", big_header_message(b"first"))
    replaced: list[str] = []

    def overwrite_once(**_: Any) -> None:
        if not replaced:
            replaced.append("yes")
            other.save("big", big_header_message(b"second, longer"), overwrite=True)

    store.client.meta.events.register("after-call.s3.HeadObject", overwrite_once)
    assert store.info("big").size == len(b"second, longer")
    replaced.clear()
    assert [info.size for info in store.list()] == [len(b"second, longer")]
    replaced.clear()
    store.save("big", big_header_message(b"second, longer"))  # identical to what is stored now: a success
    assert store.get("big").content == b"second, longer"


def _archive(raw: Any, bucket: str, key: str) -> None:
    """Move an object to Glacier in place, as a lifecycle rule would."""
    raw.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        StorageClass="GLACIER",
        MetadataDirective="COPY",
    )


@pytest.mark.timeout(60)
def test_an_archived_artifact_is_not_reported_as_access_denied(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    # A lifecycle rule that moves old objects to Glacier makes S3 answer their reads 403 InvalidObjectState:
    # no credential or policy change helps, a restore does.
    store = new_s3_store()
    store.save("old", Message(content=b"archived payload"))
    _archive(raw, bucket, store.key_of("old"))
    assert store.exists("old")
    for read in (lambda: store.get("old"), lambda: store.open("old"), lambda: store.get_many(["old"])):
        with pytest.raises(BackendError) as info:
            read()
        assert not isinstance(info.value, AccessDeniedError)
        assert "RestoreObject" in str(info.value)
        assert not info.value.retryable


def test_an_archived_artifact_in_the_envelope_layout_is_listed_only_once_restored(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    # Its head is in its body, which S3 refuses to read while archived: what docs/s3.md says it raises.
    store = new_s3_store()
    store.save("old", big_header_message())
    _archive(raw, bucket, store.key_of("old"))
    assert store.exists("old")
    for read in (
        lambda: store.info("old"),
        lambda: list(store.list()),
        lambda: store.save("old", big_header_message()),
    ):
        with pytest.raises(BackendError) as info:
            read()
        assert not isinstance(info.value, AccessDeniedError)
        assert "RestoreObject" in str(info.value)
