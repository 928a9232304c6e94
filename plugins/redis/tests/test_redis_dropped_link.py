"""A pooled connection that a NAT or firewall dropped without a word while it idled: the health check finds
it dead and the store goes on over a new connection, instead of failing the call with a timeout. The link is
a small relay on loopback that can swallow the traffic of the connections it holds, as such a middlebox does."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis_helpers import Relay, wait_for

from artifactstore_core import BackendTimeoutError, Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer, free_port, running


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


# -- cluster mode ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """A one-node Redis Cluster (every slot) that announces the relay's port, so that the cluster client's
    connections, also those it opens to the node it discovers, all go through the relay."""
    port = free_port(cluster_bus=True)
    relay = Relay(port)
    options = {
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        "cluster-announce-port": str(relay.port),
        "cluster-announce-bus-port": str(port + 10000),
    }
    try:
        with running(tmp_path_factory.mktemp("redis-cluster-link"), port=port, **options) as server:
            admin = server.client()
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            wait_for(lambda: admin.cluster("INFO")["cluster_state"] == "ok", 30, "the one-node cluster to be ok")
            admin.close()
            yield relay
    finally:
        relay.close()


def _cluster_store(link: Relay, interval: float, retry_attempts: int = 0) -> RedisStore:
    settings = RedisSettings(
        url=f"redis://{LOOPBACK}:{link.port}/0",  # type: ignore[arg-type]
        cluster=True,
        socket_timeout=0.5,
        health_check_interval=interval,
        retry_attempts=retry_attempts,
    )
    return RedisStore(settings, namespace="dropped cluster link")


CLUSTER_OPERATIONS: dict[str, Callable[[RedisStore], object]] = {
    **OPERATIONS,
    # Through redis-py's cluster client API, one command each (get, save and exists go through its pipeline).
    "list": lambda store: [info.step_id for info in store.list()],
    "namespaces": lambda store: "dropped cluster link" in set(store.namespaces()),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", list(CLUSTER_OPERATIONS))
def test_in_a_cluster_a_connection_dropped_while_idle_is_replaced_by_the_health_check(
    cluster_link: Relay, operation: str
) -> None:
    with _cluster_store(cluster_link, 1e-6) as store:
        store.save("kept", Message(content=b"kept"), overwrite=True)
        opened = cluster_link.accepted
        cluster_link.drop()
        result = CLUSTER_OPERATIONS[operation](store)
        expected = {"get": b"kept", "save": None, "exists": True, "info": 4, "list": ["kept"], "namespaces": True}
        assert result == expected[operation]
        assert cluster_link.accepted == opened + 1  # one new connection, over which the call went on
        store.clear()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", ["get", "info"])
def test_in_a_cluster_a_node_that_stops_answering_is_a_timeout_not_retried(cluster_link: Relay, operation: str) -> None:
    # redis-py's cluster client rediscovers the cluster after the command's timeout, which times out as well,
    # and raises "Redis Cluster cannot be connected": that was retried (RETRY_ON_TIMEOUT is off), as a
    # BackendUnavailableError, and took several times SOCKET_TIMEOUT per attempt.
    with _cluster_store(cluster_link, 0, retry_attempts=3) as store:
        store.save("kept", Message(content=b"kept"), overwrite=True)
        backoffs: list[BaseException] = []
        store._back_off = lambda exc, retry: backoffs.append(exc)  # type: ignore[method-assign]
        cluster_link.dead = True
        cluster_link.drop()
        try:
            with pytest.raises(BackendTimeoutError, match="may or may not have been applied"):
                CLUSTER_OPERATIONS[operation](store)
            assert backoffs == []
        finally:
            cluster_link.dead = False
    with _cluster_store(cluster_link, 0) as store:
        store.clear()
