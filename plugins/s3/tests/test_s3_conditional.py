"""Write-once through conditional writes, and the start-up probe for endpoints that ignore them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from s3_fixtures import all_keys, open_uploads

from artifactstore_core import ArtifactExistsError, ConfigurationError, Message
from artifactstore_s3 import S3Store
from artifactstore_s3.settings import MIB

NewStore = Callable[..., S3Store]


def ignore_if_none_match(store: S3Store) -> None:
    """Make the store's client drop If-None-Match, as an endpoint that ignores the condition would."""

    def strip(params: dict[str, Any], **_: Any) -> None:
        params.pop("IfNoneMatch", None)

    for operation in ("PutObject", "CompleteMultipartUpload"):
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


def test_probe_at_start_refuses_at_construction(moto_endpoint: str, bucket: str) -> None:
    from s3_fixtures import make_settings

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
