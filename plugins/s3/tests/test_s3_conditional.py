"""Write-once through conditional writes, and the start-up probe for endpoints that ignore them."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ConnectionClosedError
from s3_fixtures import NonSeekable, all_keys, make_settings, open_uploads

from artifactstore_core import ArtifactExistsError, ConfigurationError, Message
from artifactstore_s3 import S3Store
from artifactstore_s3.settings import MIB

NewStore = Callable[..., S3Store]


def ignore_if_none_match(
    store: S3Store, operations: tuple[str, ...] = ("PutObject", "CompleteMultipartUpload")
) -> None:
    """Make the store's client drop If-None-Match on ``operations``, as an endpoint that ignores the
    condition there would."""

    def strip(params: dict[str, Any], **_: Any) -> None:
        params.pop("IfNoneMatch", None)

    for operation in operations:
        store.client.meta.events.register(f"before-parameter-build.s3.{operation}", strip)


def count(store: S3Store, operation: str) -> list[str]:
    urls: list[str] = []
    store.client.meta.events.register(f"before-send.s3.{operation}", lambda request, **_: urls.append(request.url))
    return urls


def test_probe_runs_once_and_leaves_nothing(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    puts = count(store, "PutObject")
    store.save("a", Message(content=1))
    store.save("b", Message(content=2))
    probes = [url for url in puts if "/.probe/" in url]
    assert len(probes) == 2  # the same reserved key twice: created, then refused with 412
    assert sorted(all_keys(raw, bucket)) == sorted([store.key_of("a"), store.key_of("b")])


def test_require_refuses_an_endpoint_that_ignores_the_condition(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()  # conditional_writes="require" is the default
    ignore_if_none_match(store)
    with pytest.raises(ConfigurationError) as info:
        store.save("x", Message(content=1))
    assert "ARTIFACT_STORE_S3_CONDITIONAL_WRITES" in str(info.value)
    assert info.value.step_id == "x"
    with pytest.raises(ConfigurationError):  # remembered: no second probe, still refused
        store.save_many({"y": Message(content=1)})
    store.save("x", Message(content=1), overwrite=True)  # overwriting never needed the condition
    assert all_keys(raw, bucket) == [store.key_of("x")]


@pytest.mark.timeout(60)
def test_overwriting_batches_need_no_probe_and_work_where_the_condition_is_ignored(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store = new_s3_store()  # require
    ignore_if_none_match(store)
    puts = count(store, "PutObject")
    store.save_many({"x": Message(content=1), "y": Message(content=2)}, overwrite=True)
    store.save_many({"x": Message(content=3)}, overwrite=True)
    assert [url for url in puts if "/.probe/" in url] == []  # overwriting never needs the condition
    assert (store.get("x").content, store.get("y").content) == (3, 2)
    with pytest.raises(ConfigurationError):  # a write-once batch still is refused
        store.save_many({"z": Message(content=1)})
    assert sorted(all_keys(raw, bucket)) == sorted([store.key_of("x"), store.key_of("y")])


def test_probe_at_start_refuses_at_construction(moto_endpoint: str, bucket: str) -> None:
    class Ignoring(S3Store):
        def _make_client(self) -> Any:
            client = super()._make_client()
            client.meta.events.register(
                "before-parameter-build.s3.PutObject", lambda params, **_: params.pop("IfNoneMatch", None)
            )
            return client

    with pytest.raises(ConfigurationError, match="ignores conditional writes"):
        Ignoring(make_settings(moto_endpoint, bucket, probe_at_start=True))


def test_warn_falls_back_to_check_then_write(
    new_s3_store: NewStore, raw: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_s3_store(conditional_writes="warn", part_size=5 * MIB, multipart_threshold=5 * MIB)
    ignore_if_none_match(store)
    with caplog.at_level(logging.WARNING, logger="artifactstore_s3"):
        store.save("x", Message(content=1))
    assert "ignores conditional writes" in caplog.text
    store.save("x", Message(content=1))  # identical: fine
    with pytest.raises(ArtifactExistsError):
        store.save("x", Message(content=2))
    big = b"\x07" * (6 * MIB)
    store.save("big", Message(content=big))
    with pytest.raises(ArtifactExistsError):
        store.save("big", Message(content=big[1:]))
    assert store.get("x").content == 1
    assert store.get("big").content == big
    assert open_uploads(raw, bucket) == []


def test_trust_skips_the_probe(new_s3_store: NewStore) -> None:
    store = new_s3_store(conditional_writes="trust")
    puts = count(store, "PutObject")
    store.save("x", Message(content=1))
    assert [url for url in puts if "/.probe/" in url] == []
    with pytest.raises(ArtifactExistsError):
        store.save("x", Message(content=2))


def test_write_once_needs_no_read_before_a_small_write(new_s3_store: NewStore) -> None:
    store = new_s3_store()
    store.save("warm", Message(content=0))
    heads, puts = count(store, "HeadObject"), count(store, "PutObject")
    store.save("x", Message(content=1))
    assert (len(heads), len(puts)) == (0, 1)  # one conditional PUT
    store.save("x", Message(content=1))
    assert (len(heads), len(puts)) == (1, 2)  # 412, then one HEAD to compare the stored head


def test_a_key_deleted_between_412_and_the_check_is_written_again(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store = new_s3_store()
    store.save("x", Message(content=1))
    other = new_s3_store()
    key = store.key_of("x")
    deleted = []

    def delete_once(parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("Error", {}).get("Code") == "PreconditionFailed" and not deleted:
            deleted.append(True)
            raw.delete_object(Bucket=bucket, Key=key)

    # After the conditional PUT is refused, another writer deletes the key before our HEAD.
    other.client.meta.events.register("after-call.s3.PutObject", delete_once)
    other.save("x", Message(content=2))
    assert deleted == [True]
    assert other.get("x").content == 2


# Services have been seen to honour If-None-Match on PutObject and ignore it on CompleteMultipartUpload
# (moto before 5.1.11 over an object uploaded in parts, and other S3 emulators): a probe of PutObject alone
# passes there, and a second writer of a large artifact silently replaced the first one's, both told success.
BIG = bytes(range(256)) * (5 * MIB // 256 + 1)  # over the 5 MiB threshold below: a multipart upload
BIG_WAYS: dict[str, Callable[[S3Store, bytes], None]] = {
    "save": lambda store, data: store.save("big", Message(content=data)),
    "seekable stream": lambda store, data: store.save_stream("big", io.BytesIO(data)),
    "non-seekable stream": lambda store, data: store.save_stream("big", NonSeekable(data)),
}
SMALL_PARTS = {"part_size": 5 * MIB, "multipart_threshold": 5 * MIB, "max_concurrency": 2}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", list(BIG_WAYS))
def test_require_refuses_multipart_writes_where_completion_ignores_the_condition(
    new_s3_store: NewStore, raw: Any, bucket: str, way: str
) -> None:
    store = new_s3_store(**SMALL_PARTS)
    ignore_if_none_match(store, ("CompleteMultipartUpload",))
    store.save("small", Message(content=1))  # PutObject honours the condition: small artifacts are fine
    parts = count(store, "UploadPart")
    with pytest.raises(ConfigurationError) as info:
        BIG_WAYS[way](store, BIG)
    assert "CompleteMultipartUpload" in str(info.value)
    assert "ARTIFACT_STORE_S3_CONDITIONAL_WRITES" in str(info.value)
    assert info.value.step_id == "big"
    assert len(parts) == 2  # the probe's two empty parts: nothing of the artifact was sent, not even to staging
    with pytest.raises(ConfigurationError):  # remembered: no second probe, still refused
        BIG_WAYS[way](store, BIG)
    assert len(parts) == 2
    store.save("big", Message(content=BIG), overwrite=True)  # overwriting never needed the condition
    store.save("small-2", Message(content=2))
    assert sorted(all_keys(raw, bucket)) == sorted(store.key_of(name) for name in ("small", "small-2", "big"))
    assert open_uploads(raw, bucket) == []


def test_the_multipart_probe_runs_once_before_the_first_multipart_write_and_leaves_nothing(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store = new_s3_store(**SMALL_PARTS)
    completions = count(store, "CompleteMultipartUpload")
    store.save("small", Message(content=1))
    assert completions == []  # a store that writes only small artifacts never pays for it
    store.save("big", Message(content=BIG))
    store.save_stream("big-2", NonSeekable(BIG))
    probes = [url for url in completions if "/.probe/" in url]
    assert len(probes) == 2  # two uploads of one reserved key: completed, then refused with 412
    with pytest.raises(ArtifactExistsError):
        store.save("big", Message(content=BIG[::-1]))
    assert sorted(all_keys(raw, bucket)) == sorted(store.key_of(name) for name in ("small", "big", "big-2"))
    assert open_uploads(raw, bucket) == []


def test_warn_checks_before_a_multipart_write_where_completion_ignores_the_condition(
    new_s3_store: NewStore, raw: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_s3_store(conditional_writes="warn", **SMALL_PARTS)
    ignore_if_none_match(store, ("CompleteMultipartUpload",))
    with caplog.at_level(logging.WARNING, logger="artifactstore_s3"):
        store.save("big", Message(content=BIG))
    assert "CompleteMultipartUpload" in caplog.text
    with pytest.raises(ArtifactExistsError):
        store.save_stream("big", io.BytesIO(BIG[::-1]))
    heads, puts = count(store, "HeadObject"), count(store, "PutObject")
    store.save("small", Message(content=1))
    assert (len(heads), len(puts)) == (0, 1)  # small artifacts keep their atomic conditional PUT
    assert store.get("big").content == BIG
    assert open_uploads(raw, bucket) == []


def test_probe_at_start_probes_the_completion_too(moto_endpoint: str, bucket: str) -> None:
    class IgnoringOnCompletion(S3Store):
        def _make_client(self) -> Any:
            client = super()._make_client()
            client.meta.events.register(
                "before-parameter-build.s3.CompleteMultipartUpload", lambda params, **_: params.pop("IfNoneMatch", None)
            )
            return client

    before = set(threading.enumerate())
    with pytest.raises(ConfigurationError, match="CompleteMultipartUpload"):
        IgnoringOnCompletion(make_settings(moto_endpoint, bucket, probe_at_start=True))
    # The probe's part upload started the store's part pool: a store that fails to be built stops it.
    assert [thread.name for thread in set(threading.enumerate()) - before if "artifactstore-s3" in thread.name] == []


def test_a_lost_answer_to_the_first_probe_write_is_not_a_failure(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    lost: list[str] = []

    def land_then_lose_the_answer(request: Any, **_: Any) -> None:
        if "/.probe/" in request.url and not lost:
            # The write reaches S3, its answer never comes back; botocore sends it again, which S3 refuses
            # with 412 (the key exists now). The probe must read that as the condition at work.
            key = urlsplit(request.url).path.split("/", 2)[2]
            raw.put_object(Bucket=bucket, Key=key, Body=b"")
            lost.append(key)
            raise ConnectionClosedError(endpoint_url=request.url)

    store.client.meta.events.register("before-send.s3.PutObject", land_then_lose_the_answer)
    store.save("x", Message(content=1))
    assert len(lost) == 1
    assert store.get("x").content == 1
    assert all_keys(raw, bucket) == [store.key_of("x")]  # and the probe object is gone


@pytest.mark.timeout(60)
def test_the_refusal_names_an_endpoint_taken_from_aws_endpoint_url(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, bucket: str
) -> None:
    # botocore takes the endpoint from AWS_ENDPOINT_URL_S3 when the store's setting is unset: the message
    # said "the S3 endpoint AWS S3 ignores conditional writes", sending the reader to the wrong service.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    store = S3Store(make_settings(moto_endpoint, bucket, endpoint_url=None))
    try:
        ignore_if_none_match(store)
        with pytest.raises(ConfigurationError) as info:
            store.save("x", Message(content=1))
    finally:
        store.close()
    message = str(info.value)
    assert f"the S3 endpoint {moto_endpoint} (from boto3's configuration: AWS_ENDPOINT_URL_S3" in message
    assert "AWS S3" not in message
