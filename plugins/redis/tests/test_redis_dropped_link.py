"""A pooled connection that a NAT or firewall dropped without a word while it idled: the health check finds
it dead and the store goes on over a new connection, instead of failing the call with a timeout. The link is
a small relay on loopback that can swallow the traffic of the connections it holds, as such a middlebox does."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis_helpers import Relay

from artifactstore_core import BackendTimeoutError, Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer


@pytest.fixture
def link(redis_server: RedisServer) -> Iterator[Relay]:
    relay = Relay(redis_server.port)
    try:
        yield relay
    finally:
        relay.close()


def _store(link: Relay, interval: float) -> RedisStore:
    # A health check interval of a microsecond: every reuse of a pooled connection is checked (no waiting).
    settings = RedisSettings(
        url=f"redis://{LOOPBACK}:{link.port}/0",  # type: ignore[arg-type]
        socket_timeout=0.5,
        health_check_interval=interval,
        retry_attempts=0,
    )
    return RedisStore(settings, namespace="dropped link")


OPERATIONS: dict[str, Callable[[RedisStore], object]] = {
    # Through the store's own round trips (get, save) and through redis-py's client API (exists, info).
    "get": lambda store: store.get("kept").content,
    "save": lambda store: store.save("new", Message(content=b"new")),
    "exists": lambda store: store.exists("kept"),
    "info": lambda store: store.info("kept").size,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_connection_dropped_while_idle_is_replaced_by_the_health_check(link: Relay, operation: str) -> None:
    with _store(link, 1e-6) as store:
        store.save("kept", Message(content=b"kept"), overwrite=True)
        opened = link.accepted
        link.drop()
        result = OPERATIONS[operation](store)
        assert result == {"get": b"kept", "save": None, "exists": True, "info": 4}[operation]
        assert link.accepted == opened + 1  # one new connection, over which the call went on
        assert store.get("new" if operation == "save" else "kept").content in (b"new", b"kept")
        store.clear()


@pytest.mark.timeout(30)
def test_without_a_health_check_a_dropped_connection_times_out(link: Relay) -> None:
    # The command itself went out over the dead connection: whether it ran cannot be known, so it is a timeout.
    with _store(link, 0) as store:
        store.save("kept", Message(content=b"kept"), overwrite=True)
        link.drop()
        with pytest.raises(BackendTimeoutError, match="may or may not have been applied"):
            store.get("kept")
    with _store(link, 0) as store:
        store.clear()


@pytest.mark.timeout(30)
def test_a_server_that_never_answers_still_times_out_after_one_replacement(link: Relay) -> None:
    with _store(link, 1e-6) as store:
        store.save("kept", Message(content=b"kept"), overwrite=True)
        opened = link.accepted
        link.dead = True
        link.drop()
        with pytest.raises(BackendTimeoutError):
            store.get("kept")
        assert link.accepted == opened + 1  # the check replaced the connection once, and did not loop
    link.dead = False
    with _store(link, 0) as store:
        store.clear()
