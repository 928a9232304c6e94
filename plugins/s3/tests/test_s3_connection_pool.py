"""Many threads sharing one store reuse its connections instead of opening one per request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

from artifactstore_core import Message
from artifactstore_s3 import S3Store

THREADS = 24


@pytest.mark.timeout(120)
def test_threads_sharing_a_store_keep_their_connections(
    new_s3_store: Callable[..., S3Store], caplog: pytest.LogCaptureFixture
) -> None:
    # Each open() holds its connection until the stream is closed; the barrier makes all of them hold one
    # at once, so the client's pool must keep THREADS connections. With a pool of 10 (botocore's default,
    # which the store used to derive from max_concurrency alone), every connection past the tenth was
    # closed when given back, and urllib3 warned about each one.
    caplog.set_level(logging.WARNING, logger="urllib3")
    store = new_s3_store()
    store.save("shared", Message(content=b"payload"))
    barrier = threading.Barrier(THREADS, timeout=60)
    failures: list[BaseException] = []

    def read() -> None:
        try:
            with store.open("shared") as stream:
                barrier.wait()
                assert stream.read() == b"payload"
        except BaseException as exc:  # reported below: a thread's exception would otherwise be lost
            failures.append(exc)

    threads = [threading.Thread(target=read) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    discarded = [record for record in caplog.records if "pool is full" in record.getMessage()]
    assert discarded == []
