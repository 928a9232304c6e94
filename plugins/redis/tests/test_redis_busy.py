"""A server busy running another client's long script (``BUSY``) refuses commands without running them: retried."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis_helpers import Blocker, payload_of

from artifactstore_core import BackendUnavailableError, Message
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer, running

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server that answers BUSY 10 ms into a script (the default is 5 s)."""
    with running(tmp_path_factory.mktemp("redis-busy"), **{"busy-reply-threshold": "10"}) as server:
        yield server


@pytest.fixture
def blocker(busy_server: RedisServer) -> Iterator[Blocker]:
    made = Blocker(busy_server)
    try:
        yield made
    finally:
        made.close()


def _kill_at_first_backoff(store: RedisStore, blocker: Blocker) -> list[str]:
    """End the busy script when the store backs off to retry; returns the errors it backed off after."""
    seen: list[str] = []
    real = store._back_off

    def back_off(exc: BaseException, retry: int) -> None:
        seen.append(str(exc))
        blocker.kill()
        real(exc, retry)

    store._back_off = back_off  # type: ignore[method-assign]
    return seen


def _payload(size: int) -> Message:
    return Message(content=payload_of("busy", size))


OPERATIONS: dict[str, Callable[[RedisStore], Any]] = {
    "save": lambda store: store.save("new", _payload(100)),
    "save uploaded": lambda store: store.save("new", _payload(100_000)),
    "save_many": lambda store: store.save_many({"a2": _payload(10), "b2": _payload(100_000)}),
    "get": lambda store: store.get("small").content,
    "get uploaded": lambda store: store.get("large").content,
    "get_many": lambda store: sorted(store.get_many(["small", "large"])),
    "exists": lambda store: store.exists("small"),
    "info": lambda store: store.info("small").step_id,
    "list": lambda store: sorted(info.step_id for info in store.list()),
    "namespaces": lambda store: "busy" in set(store.namespaces()),
    "delete": lambda store: store.delete("small"),
    "clear": lambda store: store.clear(),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_an_operation_refused_with_busy_is_retried_once_the_script_ends(
    busy_server: RedisServer, blocker: Blocker, operation: str
) -> None:
    store = RedisStore(RedisSettings(url=busy_server.url, retry_attempts=3), namespace="busy")  # type: ignore[arg-type]
    try:
        store.clear()
        store.save("small", _payload(100))
        store.save("large", _payload(100_000))
        before = OPERATIONS[operation](store) if operation not in ("save", "save uploaded", "save_many") else None
        if operation in ("delete", "clear"):
            store.save("small", _payload(100))
            store.save("large", _payload(100_000))
        seen = _kill_at_first_backoff(store, blocker)
        blocker.start()
        result = OPERATIONS[operation](store)
        assert blocker.killed == 1
        assert seen
        assert seen[0].startswith("BUSY")
        if before is not None:
            assert result == before
        if operation.startswith("save"):
            step_ids = ["new"] if operation != "save_many" else ["a2", "b2"]
            assert all(store.get(step_id).content for step_id in step_ids)
    finally:
        store.clear()
        store.close()


def test_busy_after_the_retries_is_backend_unavailable_saying_why(busy_server: RedisServer, blocker: Blocker) -> None:
    store = RedisStore(RedisSettings(url=busy_server.url, retry_attempts=1, retry_backoff=0), namespace="busy")  # type: ignore[arg-type]
    try:
        blocker.start()
        with pytest.raises(BackendUnavailableError, match="busy-reply-threshold") as caught:
            store.save("x", _payload(10))
        assert isinstance(caught.value.__cause__, redis.ResponseError)
        blocker.kill()
        assert not store.exists("x")
    finally:
        store.clear()
        store.close()
