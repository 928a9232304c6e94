"""Races on the conditional write itself: S3's 409 ConditionalRequestConflict and a 412 at completion.

The same write-once rule must hold whether the artifact goes up as one ``PutObject`` or as a multipart
upload completed by ``CompleteMultipartUpload``: after a refused or conflicting conditional write, an
identical stored artifact is success, a different one is ``ArtifactExistsError``, and no artifact at all
means the write is tried again, a bounded number of times. Every request but the injected 409s goes to
moto over real HTTP.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from s3_fixtures import NonSeekable, all_keys, error_response, open_uploads, warm

from artifactstore_core import ArtifactExistsError, BackendUnavailableError, Message
from artifactstore_s3 import S3Store
from artifactstore_s3.settings import MIB

NewStore = Callable[..., S3Store]
SMALL_PARTS = {"part_size": 5 * MIB, "multipart_threshold": 5 * MIB, "max_concurrency": 2}
# Two parts with 5 MiB parts: the smallest payload that goes through a multipart upload here.
BIG = bytes(itertools.islice(itertools.cycle(range(251)), 6 * MIB + 3))

# How each way of saving writes its artifact: the operation that carries If-None-Match, and the save.
WAYS: dict[str, tuple[str, Callable[[S3Store, bytes], None]]] = {
    "put": ("PutObject", lambda store, data: store.save("x", Message(content=data))),
    "multipart": ("CompleteMultipartUpload", lambda store, data: store.save("x", Message(content=data))),
    "seekable stream": ("CompleteMultipartUpload", lambda store, data: store.save_stream("x", io.BytesIO(data))),
    "non-seekable stream": ("CompleteMultipartUpload", lambda store, data: store.save_stream("x", NonSeekable(data))),
}
pytestmark = [pytest.mark.timeout(120), pytest.mark.parametrize("way", list(WAYS))]


def payload_for(way: str, variant: int = 0) -> bytes:
    if way == "put":
        return b"small artifact %d" % variant
    return BIG if variant == 0 else BIG[:-1] + b"\xff"


def on_conditional_write(store: S3Store, operation: str, respond: Callable[[Any, int], Any]) -> list[Any]:
    """Answer the conditional (``If-None-Match: *``) attempts of ``operation`` with ``respond(request, n)``;
    ``None`` sends the request to moto. Unconditional requests (a staging upload) always go to moto.

    Returns the conditional attempts, which grows as they are made.
    """
    attempts: list[Any] = []

    def handler(request: Any, **_: Any) -> Any:
        if request.headers.get("If-None-Match") not in (b"*", "*"):  # botocore holds signed values as bytes
            return None
        attempts.append(request)
        return respond(request, len(attempts))

    store.client.meta.events.register(f"before-send.s3.{operation}", handler)
    return attempts


def conflict(request: Any) -> Any:
    return error_response(
        request.url, 409, "ConditionalRequestConflict", "A conflicting operation occurred. Please retry."
    )


def prepared(new_s3_store: NewStore, **overrides: Any) -> S3Store:
    store = new_s3_store(**SMALL_PARTS, **overrides)
    warm(store)  # the conditional-write probes run before the first writes
    return store


def test_a_409_then_nothing_stored_is_written_again(new_s3_store: NewStore, raw: Any, bucket: str, way: str) -> None:
    store = prepared(new_s3_store)
    operation, save = WAYS[way]
    attempts = on_conditional_write(store, operation, lambda request, n: conflict(request) if n == 1 else None)
    save(store, payload_for(way))
    assert len(attempts) == 2
    assert store.get("x").content == payload_for(way)
    assert open_uploads(raw, bucket) == []
    assert sorted(all_keys(raw, bucket)) == sorted([store.key_of("warm"), store.key_of("x")])


def test_409s_that_never_stop_give_up_after_max_attempts(
    new_s3_store: NewStore, raw: Any, bucket: str, way: str
) -> None:
    store = prepared(new_s3_store, max_attempts=3)
    operation, save = WAYS[way]
    attempts = on_conditional_write(store, operation, lambda request, n: conflict(request))
    with pytest.raises(BackendUnavailableError) as info:
        save(store, payload_for(way))
    assert info.value.retryable
    assert info.value.step_id == "x"
    assert "ConditionalRequestConflict" in str(info.value)
    assert len(attempts) == 3
    assert not store.exists("x")
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("warm")]


@pytest.mark.parametrize("same", [True, False], ids=["identical", "different"])
@pytest.mark.parametrize("refusal", [409, 412])
def test_a_refused_write_while_another_writer_creates_the_artifact_follows_the_write_once_rule(
    new_s3_store: NewStore, raw: Any, bucket: str, way: str, same: bool, refusal: int
) -> None:
    # Another writer creates the artifact after this store looked for it (a large save checks first) and
    # before its own conditional write reaches S3. 412: moto itself refuses the write, as the key exists.
    # 409: the write is answered with ConditionalRequestConflict (a concurrent write was in flight).
    store = prepared(new_s3_store)
    other = new_s3_store(**SMALL_PARTS)
    operation, save = WAYS[way]
    theirs = payload_for(way, 0 if same else 1)

    def other_wins(request: Any, n: int) -> Any:
        if n > 1:
            return None
        other.save("x", Message(content=theirs))
        return conflict(request) if refusal == 409 else None

    attempts = on_conditional_write(store, operation, other_wins)
    if same:
        save(store, payload_for(way))  # the same artifact: a safe retry
    else:
        with pytest.raises(ArtifactExistsError) as info:
            save(store, payload_for(way))
        assert info.value.step_id == "x"
    assert len(attempts) == 1  # the stored artifact settled it: nothing was written (or uploaded) again
    assert store.get("x").content == theirs
    assert open_uploads(raw, bucket) == []
    assert sorted(all_keys(raw, bucket)) == sorted([store.key_of("warm"), store.key_of("x")])
