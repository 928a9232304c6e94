"""``delete`` between its look and its ``DeleteObject``: another deleter, an overwrite, a lost answer.

The delete carries ``If-Match`` with the ETag its look found, so that of two concurrent deleters only the
one that removed the object reports ``True``. The other requests go to moto over real HTTP; a hook on the
``DeleteObject`` attempts plays the other client just before ours reaches the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError
from s3_fixtures import all_keys, error_response

from artifactstore_core import BackendUnavailableError, Message
from artifactstore_s3 import S3Store

NewStore = Callable[..., S3Store]
pytestmark = pytest.mark.timeout(60)


def before_delete(store: S3Store, action: Callable[[Any, int], Any]) -> list[Any]:
    """Run ``action(request, n)`` before each ``DeleteObject`` attempt of ``store``; its result answers the
    attempt (``None``: the request goes to moto). Returns the attempts, which grows as they are made."""
    attempts: list[Any] = []

    def handler(request: Any, **_: Any) -> Any:
        attempts.append(request)
        return action(request, len(attempts))

    store.client.meta.events.register("before-send.s3.DeleteObject", handler)
    return attempts


def send_for_real(request: Any) -> None:
    """Send a request botocore prepared (signed) to the server ourselves, as its first attempt would reach it."""
    import urllib3

    with urllib3.PoolManager() as http:
        answer = http.request(request.method, request.url, body=request.body, headers=dict(request.headers))
    assert answer.status == 204, answer.data


@pytest.mark.parametrize("content", ["x", b""])
def test_a_delete_sends_the_etag_it_looked_at(new_s3_store: NewStore, raw: Any, bucket: str, content: Any) -> None:
    store = new_s3_store()
    store.save("a", Message(content=content))
    etag = raw.head_object(Bucket=bucket, Key=store.key_of("a"))["ETag"]
    attempts = before_delete(store, lambda request, n: None)
    assert store.delete("a") is True
    assert [request.headers.get("If-Match") for request in attempts] == [etag.encode()]
    assert all_keys(raw, bucket) == []


# An empty artifact too: S3 answers its first byte 416 without an ETag, and the delete used to go unconditional.
@pytest.mark.parametrize("content", ["x", b""])
def test_of_two_deleters_only_the_one_that_removed_it_reports_true(new_s3_store: NewStore, content: Any) -> None:
    store, other = new_s3_store(), new_s3_store()
    store.save("a", Message(content=content))
    answers: list[bool] = []

    def other_deletes_first(request: Any, n: int) -> None:
        answers.append(other.delete("a"))  # looked at it too, and its delete reaches S3 first

    attempts = before_delete(store, other_deletes_first)
    assert store.delete("a") is False
    assert answers == [True]
    assert len(attempts) == 1
    assert not store.exists("a")


def test_an_artifact_replaced_between_the_look_and_the_delete_is_looked_at_again(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store, other = new_s3_store(), new_s3_store()
    store.save("a", Message(content="old"))

    def overwrite_once(request: Any, n: int) -> None:
        if n == 1:
            other.save("a", Message(content="new"), overwrite=True)

    attempts = before_delete(store, overwrite_once)
    assert store.delete("a") is True  # the 412 sent it to look again, and it deleted what is there now
    assert len(attempts) == 2
    assert all_keys(raw, bucket) == []


def test_replaced_every_time_gives_a_retryable_error(new_s3_store: NewStore) -> None:
    store = new_s3_store(max_attempts=3)
    store.save("a", Message(content="x"))
    attempts = before_delete(store, lambda request, n: error_response(request.url, 412, "PreconditionFailed"))
    with pytest.raises(BackendUnavailableError) as info:
        store.delete("a")
    assert info.value.retryable
    assert info.value.step_id == "a"
    assert "replaced" in str(info.value)
    assert len(attempts) == 3
    assert store.exists("a")


def test_a_delete_whose_answer_was_lost_still_reports_true(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    store.save("a", Message(content="x"))

    def lose_the_first_answer(request: Any, n: int) -> None:
        if n == 1:
            send_for_real(request)  # the object is deleted...
            raise ConnectionClosedError(endpoint_url=request.url)  # ...and the answer lost; botocore sends it again

    attempts = before_delete(store, lose_the_first_answer)
    assert store.delete("a") is True  # the repeat's NoSuchKey follows our own lost attempt
    assert len(attempts) == 2
    assert all_keys(raw, bucket) == []


def test_an_endpoint_that_ignores_if_match_deletes_as_before(new_s3_store: NewStore, raw: Any, bucket: str) -> None:
    store = new_s3_store()
    store.save("a", Message(content="x"))

    def drop_the_condition(request: Any, n: int) -> None:
        del request.headers["If-Match"]  # as an endpoint that ignores it would (moto checks no signature)

    before_delete(store, drop_the_condition)
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert all_keys(raw, bucket) == []


def test_an_endpoint_that_refuses_if_match_gets_unconditional_deletes(
    new_s3_store: NewStore, raw: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_s3_store()
    store.save_many({"a": Message(content="x"), "b": Message(content="y")})

    def refuse_the_condition(request: Any, n: int) -> Any:
        if request.headers.get("If-Match") is None:
            return None
        return error_response(request.url, 501, "NotImplemented", "A header you provided implies functionality...")

    attempts = before_delete(store, refuse_the_condition)
    with caplog.at_level(logging.WARNING, logger="artifactstore_s3"):
        assert store.delete("a") is True
        assert store.delete("b") is True  # no conditional attempt any more
    assert [request.headers.get("If-Match") is not None for request in attempts] == [True, False, False]
    assert caplog.text.count("refuses If-Match on DeleteObject") == 1
    assert all_keys(raw, bucket) == []
