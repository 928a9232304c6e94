"""Faults injected through botocore's events: retries, typed errors, and nothing torn or left behind."""

from __future__ import annotations

import io
import itertools
import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from s3_fixtures import (
    SECRET_KEY,
    NonSeekable,
    all_keys,
    delete_result,
    error_response,
    make_settings,
    open_uploads,
    warm,
)

from artifactstore_core import (
    AccessDeniedError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    Message,
    PayloadTooLargeError,
    StoreClosedError,
)
from artifactstore_core.errors import RedactedError
from artifactstore_core.testing_errors import reachable_text
from artifactstore_core.testing_servers import free_port, in_thread
from artifactstore_s3 import S3Store
from artifactstore_s3.settings import MIB

NewStore = Callable[..., S3Store]
SMALL_PARTS = {"part_size": 5 * MIB, "multipart_threshold": 5 * MIB, "max_concurrency": 2}


def inject(store: S3Store, operation: str, responses: Callable[[Any, int], Any]) -> list[Any]:
    """Answer ``operation``'s HTTP attempts with ``responses(request, attempt)`` (``None``: send for real).

    Returns the list of attempts, which grows as requests are made.
    """
    attempts: list[Any] = []

    def handler(request: Any, **_: Any) -> Any:
        attempts.append(request)
        return responses(request, len(attempts))

    store.client.meta.events.register(f"before-send.s3.{operation}", handler)
    return attempts


def save_big(store: S3Store, payload: bytes, how: str) -> None:
    """Save ``payload`` as "big" the way ``how`` names: "save", "seekable stream" or "non-seekable stream"."""
    if how == "save":
        store.save("big", Message(content=payload))
    else:
        store.save_stream("big", io.BytesIO(payload) if how == "seekable stream" else NonSeekable(payload))


def test_two_500s_then_success_is_three_attempts(new_s3_store: NewStore) -> None:
    store = new_s3_store(max_attempts=3)
    warm(store)  # the conditional-write probes run before the first writes
    attempts = inject(
        store, "PutObject", lambda request, n: error_response(request.url, 500, "InternalError") if n <= 2 else None
    )
    store.save("flaky", Message(content={"ok": True}))
    assert len(attempts) == 3
    assert store.get("flaky").content == {"ok": True}


def test_persistent_slowdown_raises_a_retryable_error_after_max_attempts(new_s3_store: NewStore) -> None:
    store = new_s3_store(max_attempts=4)
    warm(store)
    attempts = inject(store, "PutObject", lambda request, n: error_response(request.url, 503, "SlowDown"))
    with pytest.raises(BackendUnavailableError) as info:
        store.save("throttled", Message(content=1))
    assert len(attempts) == 4
    error = info.value
    assert error.retryable is True
    assert (error.step_id, error.backend, error.namespace) == ("throttled", "s3", "default")
    assert "SlowDown" in str(error)
    assert "ClientError" in repr(error.__cause__)
    assert not store.exists("throttled")


@pytest.mark.parametrize("how", ["save", "seekable stream", "non-seekable stream"])
def test_connection_reset_during_a_part_leaves_nothing(new_s3_store: NewStore, raw: Any, bucket: str, how: str) -> None:
    store = new_s3_store(max_attempts=2, **SMALL_PARTS)
    warm(store)
    payload = bytes(itertools.islice(itertools.cycle(range(256)), 12 * MIB))

    def reset_part_two(request: Any, attempt: int) -> Any:
        if "partNumber=2" in request.url:
            raise ConnectionClosedError(endpoint_url=request.url)
        return None

    inject(store, "UploadPart", reset_part_two)
    with pytest.raises(BackendUnavailableError) as info:
        save_big(store, payload, how)
    assert info.value.retryable
    assert not store.exists("big")
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("warm")]


def test_missing_bucket_is_a_configuration_error_naming_the_setting(moto_endpoint: str) -> None:
    store = S3Store(make_settings(moto_endpoint, "no-such-bucket-here"))
    with pytest.raises(ConfigurationError) as info:
        store.save("x", Message(content=1))
    assert "ARTIFACT_STORE_S3_BUCKET" in str(info.value)
    assert "no-such-bucket-here" in str(info.value)
    with pytest.raises(ConfigurationError):
        store.exists("x")
    store.close()
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_S3_BUCKET"):
        S3Store(make_settings(moto_endpoint, "no-such-bucket-here", probe_at_start=True))


def test_access_denied_is_typed_and_exists_never_says_false(new_s3_store: NewStore) -> None:
    store = new_s3_store()
    store.save("x", Message(content=1))
    for operation in ("HeadObject", "GetObject", "PutObject", "ListObjectsV2", "DeleteObjects"):
        inject(store, operation, lambda request, n: error_response(request.url, 403, "AccessDenied"))
    with pytest.raises(AccessDeniedError):
        store.exists("x")
    with pytest.raises(AccessDeniedError):
        store.get("x")
    with pytest.raises(AccessDeniedError):
        store.save("y", Message(content=1))
    with pytest.raises(AccessDeniedError):
        list(store.list())
    with pytest.raises(AccessDeniedError):
        store.clear()


def test_an_unreachable_endpoint_is_unavailable(moto_endpoint: str, bucket: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3Store(make_settings(dead, bucket, max_attempts=2, connect_timeout=2))
    with pytest.raises(BackendUnavailableError) as info:
        store.exists("x")
    assert "ARTIFACT_STORE_S3_ENDPOINT_URL" in str(info.value)
    with pytest.raises(BackendUnavailableError):
        store.get("x")
    store.close()


def test_timeouts_are_typed(new_s3_store: NewStore) -> None:
    store = new_s3_store(max_attempts=2)

    def time_out(request: Any, attempt: int) -> Any:
        raise ReadTimeoutError(endpoint_url=request.url)

    attempts = inject(store, "GetObject", time_out)  # exists() reads the first byte
    with pytest.raises(BackendTimeoutError) as info:
        store.exists("x")
    assert len(attempts) == 2
    assert "ARTIFACT_STORE_S3_READ_TIMEOUT" in str(info.value)


def test_entity_too_large_is_payload_too_large(new_s3_store: NewStore) -> None:
    store = new_s3_store()
    warm(store)
    inject(store, "PutObject", lambda request, n: error_response(request.url, 400, "EntityTooLarge"))
    with pytest.raises(PayloadTooLargeError):
        store.save("huge", Message(content=b"x"))


def test_errors_pickle_and_never_carry_a_secret(new_s3_store: NewStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="artifactstore_s3")
    store = new_s3_store()
    assert SECRET_KEY not in repr(store._settings)
    assert SECRET_KEY not in repr(store)
    warm(store)
    # A server that echoes the secret back in its error text: the message quotes the text, scrubbed.
    inject(store, "PutObject", lambda request, n: error_response(request.url, 400, "InvalidArgument", SECRET_KEY))
    with pytest.raises(ArtifactStoreError) as info:
        store.save("x", Message(content=1))
    assert "InvalidArgument" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value)
    assert copy.step_id == "x"
    for text in (str(info.value), repr(info.value), str(copy), caplog.text, reachable_text(info.value)):
        assert SECRET_KEY not in text


@pytest.mark.timeout(60)
def test_an_endpoint_password_is_reachable_from_no_error(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, bucket: str
) -> None:
    # botocore quotes the endpoint URL, user info included, when it cannot connect; an endpoint from boto3's
    # configuration is not checked by our settings. The error chains a stand-in, and the original must not
    # stay reachable as its suppressed __context__ (an error reporter walks those).
    password = "endpoint-canary-" + "51c0de"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://user:{password}@127.0.0.1:{free_port()}")
    store = S3Store(make_settings(moto_endpoint, bucket, endpoint_url=None, max_attempts=1, connect_timeout=2))
    try:
        with pytest.raises(BackendUnavailableError) as info:
            store.exists("x")
    finally:
        store.close()
    assert isinstance(info.value.__cause__, RedactedError)
    assert "EndpointConnectionError" in str(info.value.__cause__)
    assert password not in reachable_text(info.value)


# -- a 404 during a write: something the write needed vanished, not a missing artifact -------------------


def _staging_keys(raw: Any, bucket: str) -> list[str]:
    return [key for key in all_keys(raw, bucket) if "/.staging/" in key]


@pytest.mark.parametrize("layout", ["split", "envelope"])
def test_a_staging_object_that_vanishes_before_its_copy_is_retryable_not_missing(
    new_s3_store: NewStore, raw: Any, bucket: str, layout: str
) -> None:
    from artifactstore_core import SchemaInfo

    store = new_s3_store(**SMALL_PARTS)
    warm(store)
    payload = bytes(itertools.islice(itertools.cycle(range(256)), 11 * MIB))
    # The staging object expires (a lifecycle rule on .staging/) between its upload and its copy into the
    # final key: the envelope layout reads its first part back first, the split layout copies at once.
    operation = "GetObject" if layout == "envelope" else "UploadPartCopy"
    expired: list[str] = []

    def expire(params: dict[str, Any], **_: Any) -> None:
        staging = _staging_keys(raw, bucket)
        if staging and not expired:
            expired.extend(staging)
            raw.delete_object(Bucket=bucket, Key=staging[0])

    store.client.meta.events.register(f"before-parameter-build.s3.{operation}", expire)
    schema = SchemaInfo(name="big", json_schema={"description": "x" * 5000}) if layout == "envelope" else None
    with pytest.raises(BackendUnavailableError) as info:
        store.save_stream("big", NonSeekable(payload), schema=schema)
    error = info.value
    assert expired, "the hook never ran"
    assert type(error) is BackendUnavailableError
    assert error.retryable
    assert f"the staging object {expired[0]!r} vanished before it was copied into {store.key_of('big')!r}" in str(error)
    assert "nothing was stored" in str(error)
    assert (error.step_id, error.namespace) == ("big", "default")
    assert isinstance(error.__cause__, ClientError)
    assert not store.exists("big")
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("warm")]


@pytest.mark.parametrize(
    ("how", "operation"),
    [
        ("save", "UploadPart"),
        ("save", "CompleteMultipartUpload"),
        ("seekable stream", "UploadPart"),
        ("non-seekable stream", "UploadPart"),
        ("non-seekable stream", "UploadPartCopy"),
    ],
)
def test_an_upload_aborted_under_a_save_is_retryable_not_missing(
    new_s3_store: NewStore, raw: Any, bucket: str, how: str, operation: str
) -> None:
    store = new_s3_store(max_attempts=2, **SMALL_PARTS)
    warm(store)
    payload = bytes(itertools.islice(itertools.cycle(range(256)), 12 * MIB))
    # What S3 answers for an upload that an AbortIncompleteMultipartUpload rule (or another client) aborted
    # meanwhile (moto answers a 500 instead, so the answer is injected).
    inject(
        store,
        operation,
        lambda request, n: error_response(request.url, 404, "NoSuchUpload", "The specified upload does not exist."),
    )
    with pytest.raises(BackendUnavailableError) as info:
        save_big(store, payload, how)
    assert type(info.value) is BackendUnavailableError
    assert info.value.retryable
    assert "was aborted while it was being written" in str(info.value)
    assert "AbortIncompleteMultipartUpload" in str(info.value)
    assert info.value.step_id == "big"
    assert not store.exists("big")
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("warm")]


def test_a_missing_bucket_during_an_upload_is_still_a_configuration_error(new_s3_store: NewStore) -> None:
    store = new_s3_store(max_attempts=2, **SMALL_PARTS)
    warm(store)
    inject(store, "UploadPart", lambda request, n: error_response(request.url, 404, "NoSuchBucket"))
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_S3_BUCKET"):
        store.save("big", Message(content=b"x" * (6 * MIB)))


# -- a bucket deleted after the store used it ------------------------------------------------------------


def _delete_bucket(raw: Any, bucket: str) -> None:
    for key in all_keys(raw, bucket):
        raw.delete_object(Bucket=bucket, Key=key)
    raw.delete_bucket(Bucket=bucket)


def _count_requests(store: S3Store) -> list[str]:
    sent: list[str] = []

    def count(event_name: str, **_: Any) -> None:
        sent.append(event_name.split(".")[2])

    store.client.meta.events.register("before-send.s3", count)
    return sent


def test_a_bucket_deleted_after_use_is_a_configuration_error_not_a_missing_artifact(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store = new_s3_store()
    store.save("a", Message(content=b"1"))  # the store has seen its bucket: probe, PUT
    assert store.exists("a")
    assert not store.exists("never-saved")
    store.info("a")
    _delete_bucket(raw, bucket)
    sent = _count_requests(store)
    checks: dict[str, Callable[[], object]] = {
        "exists": lambda: store.exists("a"),
        "exists of another id": lambda: store.exists("never-saved"),
        "info": lambda: store.info("a"),
        "get": lambda: store.get("a"),
        "open": lambda: store.open("a"),
        "delete": lambda: store.delete("a"),
        "get_many": lambda: store.get_many(["a"]),
    }
    for what, call in checks.items():
        with pytest.raises(ConfigurationError) as info:
            call()
        assert "ARTIFACT_STORE_S3_BUCKET" in str(info.value), what
        assert bucket in str(info.value), what
    # exists() tells the bucket from the key with the one request it always makes.
    assert sent[:2] == ["GetObject", "GetObject"]


def test_exists_makes_one_request_whatever_the_answer(new_s3_store: NewStore) -> None:
    store = new_s3_store()
    store.save("a", Message(content=b"1"))
    store.save("empty", Message(content=b""))  # an object with an empty body: no first byte to read
    sent = _count_requests(store)
    assert store.exists("a")
    assert store.exists("empty")
    assert not store.exists("missing")
    assert sent == ["GetObject", "GetObject", "GetObject"]
    sent.clear()
    with pytest.raises(ArtifactNotFoundError):
        store.info("missing")
    assert sent == ["HeadObject", "HeadBucket"]  # a HEAD's 404 has no body: the bucket is looked at


# -- close() while another thread is in the middle of a multipart save ---------------------------------

BIG_SAVE = bytes(itertools.islice(itertools.cycle(range(256)), 12 * MIB))  # three parts of SMALL_PARTS


def save_while_closing(
    store: S3Store, how: str, operation: str, monkeypatch: pytest.MonkeyPatch
) -> BaseException | None:
    """Save ``BIG_SAVE`` as "big" in another thread, hold its first ``operation`` request, and call
    ``store.close()`` here: the held request goes on once ``close()`` has marked the store closed, so that
    ``close()`` meets it in flight. Returns what the save raised (``None``: it returned).
    """
    held, release = threading.Event(), threading.Event()

    def hold_the_first(request: Any, **_: Any) -> None:
        if not held.is_set():
            held.set()
            assert release.wait(60), "close() never started"
        # None: the request goes to moto

    store.client.meta.events.register(f"before-send.s3.{operation}", hold_the_first)
    real_close = store._close

    def release_then_close() -> None:
        release.set()
        real_close()

    monkeypatch.setattr(store, "_close", release_then_close)
    saver, outcome = in_thread(lambda: save_big(store, BIG_SAVE, how))
    assert held.wait(60), f"the save never sent {operation}"
    store.close()  # the test's timeout stops a close() that waits forever
    saver.join(60)
    assert not saver.is_alive()
    return outcome[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("how", "operation"),
    [
        ("save", "CreateMultipartUpload"),
        ("save", "UploadPart"),
        ("seekable stream", "UploadPart"),
        ("non-seekable stream", "UploadPart"),  # the staging upload
        ("non-seekable stream", "CompleteMultipartUpload"),  # the staging object is being completed
        ("non-seekable stream", "UploadPartCopy"),  # the staging object is there, being copied
    ],
)
def test_close_during_a_multipart_save_aborts_it_and_leaves_nothing(
    new_s3_store: NewStore,
    raw: Any,
    bucket: str,
    how: str,
    operation: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="artifactstore_s3")
    store = new_s3_store(max_attempts=2, **SMALL_PARTS)
    warm(store)
    error = save_while_closing(store, how, operation, monkeypatch)
    assert isinstance(error, StoreClosedError), repr(error)
    assert "was closed while this operation was in flight" in str(error)
    assert (error.step_id, error.backend, error.namespace) == ("big", "s3", "default")
    if operation != "CompleteMultipartUpload":
        # What close() cut short is chained. A save between its two uploads (the staging one complete)
        # is refused at its next request instead, and has nothing to chain.
        assert error.__cause__ is not None
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("warm")]  # no artifact and no staging object
    assert [record.getMessage() for record in caplog.records] == []  # nothing failed to be cleaned up


@pytest.mark.timeout(120)
def test_close_does_not_undo_a_completion_already_sent(
    new_s3_store: NewStore, raw: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_s3_store(max_attempts=2, **SMALL_PARTS)
    warm(store)
    assert save_while_closing(store, "save", "CompleteMultipartUpload", monkeypatch) is None
    assert open_uploads(raw, bucket) == []
    reader = new_s3_store()
    assert reader.get("big").content == BIG_SAVE


class StallingProducer(NonSeekable):
    """A pipe whose producer stalls at ``stall_at`` bytes until ``go`` is set."""

    def __init__(self, data: bytes, stall_at: int) -> None:
        super().__init__(data)
        self._stall_at = stall_at
        self.stalled = threading.Event()
        self.go = threading.Event()

    def readinto(self, buffer: Any) -> int:
        if self._source.tell() >= self._stall_at and not self.go.is_set():
            self.stalled.set()
            assert self.go.wait(60), "the test never let the producer go on"
        return super().readinto(buffer)


@pytest.mark.timeout(120)
def test_close_aborts_the_upload_of_a_save_waiting_for_its_stream(
    new_s3_store: NewStore, raw: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="artifactstore_s3")
    store = new_s3_store(max_attempts=2, **SMALL_PARTS)
    warm(store)
    stream = StallingProducer(BIG_SAVE, stall_at=10 * MIB)  # two parts sent, the third never comes
    saver, outcome = in_thread(lambda: store.save_stream("big", stream))
    try:
        assert stream.stalled.wait(60)
        # close() does not wait for the saving thread (its stream may never go on): it aborts the upload
        # itself, with the client still open.
        store.close()
        assert open_uploads(raw, bucket) == []
    finally:
        stream.go.set()
        saver.join(60)
    assert not saver.is_alive()
    error = outcome[0]
    assert isinstance(error, StoreClosedError), repr(error)
    assert error.__cause__ is not None
    assert open_uploads(raw, bucket) == []
    assert all_keys(raw, bucket) == [store.key_of("warm")]
    assert [record.getMessage() for record in caplog.records] == []


class HugeFile(io.RawIOBase):
    """A seekable stream that says it holds ``size`` bytes (a file far larger than this test can write), and
    refuses to be read: every byte it would hash or upload is time a doomed save wastes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._position = 0
        self.reads = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._position = offset if whence == io.SEEK_SET else self._size + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        raise AssertionError("the stream was read although its size alone rules the save out")


@pytest.mark.parametrize("how", ["save", "seekable stream"])
def test_an_artifact_needing_more_than_10000_parts_is_refused_before_anything_is_sent(
    new_s3_store: NewStore, raw: Any, bucket: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    store = new_s3_store(part_size=5 * MIB, multipart_threshold=5 * MIB)
    warm(store)
    sent = {
        operation: inject(store, operation, lambda request, n: None)
        for operation in ("CreateMultipartUpload", "UploadPart", "HeadObject")
    }
    if how == "save":
        # A payload in memory that needs 10,001 parts would be 50 GB: the part limit is lowered for the test.
        monkeypatch.setattr("artifactstore_s3.multipart.MAX_PARTS", 3)
        with pytest.raises(PayloadTooLargeError) as info:
            store.save("big", Message(content=bytes(15 * MIB + 1)))
        assert "at least 6 MiB" in str(info.value)  # 15 MiB + 1 byte in 3 parts
        needed = "4 parts"
    else:
        huge = HugeFile(10_000 * 5 * MIB + 1)  # one byte more than 10,000 parts of 5 MiB hold
        with pytest.raises(PayloadTooLargeError) as info:
            store.save_stream("big", huge)
        assert huge.reads == 0
        assert "at least 6 MiB" in str(info.value)  # 50,000 MiB + 1 byte in 10,000 parts
        needed = "10001 parts"
    assert needed in str(info.value)
    assert "ARTIFACT_STORE_S3_PART_SIZE" in str(info.value)
    assert info.value.step_id == "big"
    assert {operation: len(requests) for operation, requests in sent.items()} == dict.fromkeys(sent, 0)
    assert all_keys(raw, bucket) == [store.key_of("warm")]
    assert open_uploads(raw, bucket) == []


# S3 answers DeleteObjects with 200 and refuses some keys in the body, e.g. with SlowDown or InternalError
# under load: a transient refusal that botocore does not retry (the request as a whole succeeded).
def test_clear_sends_keys_refused_as_busy_again_and_counts_them_once(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store = new_s3_store("busy")
    warm(store)
    store.save_many({f"s{i}": Message(content=i) for i in range(5)})
    slow = [store.key_of("s1"), store.key_of("s3")]

    def refuse_two_once(request: Any, n: int) -> Any:
        if n > 1:
            return None
        # The first request deletes every key but two, which S3 refuses as busy.
        for i in (0, 2, 4):
            raw.delete_object(Bucket=bucket, Key=store.key_of(f"s{i}"))
        raw.delete_object(Bucket=bucket, Key=store.key_of("warm"))
        return delete_result(request.url, [(slow[0], "SlowDown"), (slow[1], "InternalError")])

    attempts = inject(store, "DeleteObjects", refuse_two_once)
    assert store.clear() == 6  # warm and s0..s4, each counted once
    assert len(attempts) == 2
    assert b"s1" in attempts[1].body  # the refused keys went again, and only they
    assert b"s0" not in attempts[1].body
    assert all_keys(raw, bucket) == []


@pytest.mark.parametrize(
    ("code", "expected", "retryable"),
    [
        ("SlowDown", BackendUnavailableError, True),
        ("AccessDenied", AccessDeniedError, False),
        ("Weird", BackendError, False),
    ],
)
def test_clear_refused_for_good_says_what_and_how_many_were_removed(
    new_s3_store: NewStore, raw: Any, bucket: str, code: str, expected: type[BackendError], retryable: bool
) -> None:
    store = new_s3_store("refused", max_attempts=3)
    warm(store)
    store.save("s1", Message(content=1))

    def refuse_s1(request: Any, n: int) -> Any:
        raw.delete_object(Bucket=bucket, Key=store.key_of("warm"))
        return delete_result(request.url, [(store.key_of("s1"), code)])

    attempts = inject(store, "DeleteObjects", refuse_s1)
    with pytest.raises(expected) as info:
        store.clear()
    assert type(info.value) is expected
    assert info.value.retryable is retryable
    assert code in str(info.value)
    assert "1 removed" in str(info.value)
    assert len(attempts) == (3 if retryable else 1)  # busy keys are sent again, max_attempts requests in all
    assert all_keys(raw, bucket) == [store.key_of("s1")]


def send_for_real(request: Any) -> None:
    """Send a request botocore prepared (signed) to the server ourselves, as its first attempt would reach it."""
    import urllib3

    body = request.body.read() if hasattr(request.body, "read") else request.body
    with urllib3.PoolManager() as http:
        answer = http.request(request.method, request.url, body=body, headers=dict(request.headers), retries=False)
    assert answer.status == 200, answer.data


# Several S3-compatible services answer a completion sent again (botocore's retry after the answer to the
# first was lost) with 404 NoSuchUpload: the first one completed the upload and removed it. The artifact is
# stored whole, so the save must not fail saying that nothing was stored.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("how", ["save", "seekable stream", "non-seekable stream"])
def test_a_completion_that_went_in_then_answered_no_such_upload_is_a_success(
    new_s3_store: NewStore, raw: Any, bucket: str, how: str, overwrite: bool
) -> None:
    store = new_s3_store(**SMALL_PARTS)
    warm(store)
    payload = bytes(itertools.islice(itertools.cycle(range(256)), 12 * MIB))
    if overwrite:
        store.save("big", Message(content=b"the old artifact"))

    finals: list[Any] = []  # the completions of the artifact's own upload (a staging upload goes through)

    def lose_the_answer_then_no_such_upload(request: Any, n: int) -> Any:
        if "/.staging/" in request.url:
            return None
        finals.append(request)
        if len(finals) > 2:
            return None
        if len(finals) == 1:
            send_for_real(request)  # the upload is completed...
            raise ConnectionClosedError(endpoint_url=request.url)  # ...and the answer lost
        return error_response(request.url, 404, "NoSuchUpload", "The specified upload does not exist.")

    inject(store, "CompleteMultipartUpload", lose_the_answer_then_no_such_upload)
    if how == "save":
        store.save("big", Message(content=payload), overwrite=overwrite)
    else:
        source = io.BytesIO(payload) if how == "seekable stream" else NonSeekable(payload)
        store.save_stream("big", source, overwrite=overwrite)
    assert len(finals) == 2
    assert store.get("big").content == payload
    assert open_uploads(raw, bucket) == []
    assert sorted(all_keys(raw, bucket)) == sorted([store.key_of("warm"), store.key_of("big")])


# A completion answered NoSuchUpload, and a DIFFERENT artifact is stored when the store looks: another
# writer's (our upload was aborted under us) or an overwrite that replaced ours (our completion went in and
# lost its answer). A write-once save reports the id taken (what repeating it would report); an overwriting
# save, which repeating would complete, reports the retryable error.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("ours_went_in", [False, True])
def test_a_completion_answered_no_such_upload_with_a_different_artifact_stored(
    new_s3_store: NewStore, raw: Any, bucket: str, ours_went_in: bool, overwrite: bool
) -> None:
    store = new_s3_store(**SMALL_PARTS)
    other = new_s3_store()
    warm(store)
    payload = bytes(itertools.islice(itertools.cycle(range(256)), 12 * MIB))
    finals: list[Any] = []

    def another_writer_then_no_such_upload(request: Any, n: int) -> Any:
        finals.append(request)
        if len(finals) == 1 and ours_went_in:
            send_for_real(request)  # our upload is completed...
            raise ConnectionClosedError(endpoint_url=request.url)  # ...and the answer lost
        # Before the answer NoSuchUpload: another writer's artifact (an overwrite of ours when ours went in).
        other.save("big", Message(content=b"the other writer's"), overwrite=ours_went_in)
        return error_response(request.url, 404, "NoSuchUpload", "The specified upload does not exist.")

    inject(store, "CompleteMultipartUpload", another_writer_then_no_such_upload)
    expected = BackendUnavailableError if overwrite else ArtifactExistsError
    with pytest.raises(expected) as info:
        store.save("big", Message(content=payload), overwrite=overwrite)
    assert type(info.value) is expected
    assert info.value.step_id == "big"
    assert info.value.retryable is overwrite
    if not overwrite:
        assert "NoSuchUpload" in str(info.value)
        assert "overwrite=True" in str(info.value)
    assert len(finals) == (2 if ours_went_in else 1)
    assert store.get("big").content == b"the other writer's"
    assert open_uploads(raw, bucket) == []


# A creation whose answer is lost is sent again by botocore: the lost attempt created an upload whose id
# never came back. At a staging key (one save's own) the store finds and aborts it; at an artifact's key it
# cannot tell it from another writer's upload in progress, and says so.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["staging", "artifact"])
def test_an_upload_created_by_a_creation_whose_answer_was_lost(
    new_s3_store: NewStore, raw: Any, bucket: str, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    store = new_s3_store(**SMALL_PARTS)
    warm(store)
    payload = bytes(itertools.islice(itertools.cycle(range(256)), 12 * MIB))
    lost: list[str] = []

    def lose_one_answer(request: Any, n: int) -> Any:
        if not lost and ("/.staging/" in request.url) == (where == "staging"):
            send_for_real(request)
            lost.append(request.url)
            raise ConnectionClosedError(endpoint_url=request.url)
        return None

    inject(store, "CreateMultipartUpload", lose_one_answer)
    with caplog.at_level(logging.WARNING, logger="artifactstore_s3"):
        if where == "staging":
            store.save_stream("big", NonSeekable(payload))
        else:
            store.save("big", Message(content=payload))
    assert len(lost) == 1
    assert store.get("big").content == payload
    if where == "staging":
        assert open_uploads(raw, bucket) == []
        assert caplog.text == ""
    else:
        assert [upload["Key"] for upload in open_uploads(raw, bucket)] == [store.key_of("big")]
        assert "AbortIncompleteMultipartUpload" in caplog.text
