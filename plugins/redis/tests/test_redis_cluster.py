"""Redis Cluster specifics against the session's real three-primary cluster."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Callable

import pytest
import redis
from redis.cluster import RedisCluster
from redis_helpers import evict_once

import artifactstore_redis.store as store_module
from artifactstore_core import BackendError, Message
from artifactstore_core.ids import encode_name
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisClusterNodes


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterNodes) -> RedisCluster:
    client = RedisCluster.from_url(redis_cluster.url)
    yield client
    client.close()


def test_a_namespace_lives_in_one_slot_and_namespaces_spread_over_the_primaries(
    redis_cluster: RedisClusterNodes, cluster_client: RedisCluster
) -> None:
    settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
    primaries = set()
    for i in range(12):
        with RedisStore(settings, namespace=f"spread {i}") as store:
            store.save_many({f"id-{n} *": Message(content=n) for n in range(5)})
            store.save("ttl", Message(content=b"t"), ttl=60)
            tag = f"{{artifactstore:{encode_name(store.namespace)}}}"
            keys = [f"{tag}:idx", f"{tag}:a:ttl", *(f"{tag}:a:{encode_name(f'id-{n} *')}" for n in range(5))]
            assert cluster_client.exists(*keys) == len(keys)
            assert len({cluster_client.keyslot(key) for key in keys}) == 1
            primaries.add(cluster_client.get_node_from_key(keys[0]).name)
            assert sorted(info.step_id for info in store.list()) == sorted([*(f"id-{n} *" for n in range(5)), "ttl"])
            assert store.get_many([f"id-{n} *" for n in range(5)])["id-3 *"].content == 3
            assert store.clear() == 6
            assert cluster_client.exists(*keys) == 0
    # The namespaces above hash to different primaries: the cluster really is in use, not one node.
    assert len(primaries) >= 2


def test_payloads_in_their_own_keys_share_the_namespace_slot(
    redis_cluster: RedisClusterNodes, cluster_client: RedisCluster
) -> None:
    settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
    payload = bytes(range(256)) * (store_module._INLINE_MAX // 256 + 1)
    with RedisStore(settings, namespace="large in cluster") as store:
        # In cluster mode every large save is pipelined (upload and commit go to the slot's primary).
        store.save("piped", Message(content=payload), ttl=600)
        store.save("text", Message(content=payload.hex()))
        store.save_many({"many": Message(content=payload), "small": Message(content=b"s")})
        tag = f"{{artifactstore:{encode_name(store.namespace)}}}"
        names = ("piped", "text", "many")
        keys = [f"{tag}:idx", *(f"{tag}:{kind}:{step_id}" for kind in "ap" for step_id in names)]
        assert cluster_client.exists(*keys) == len(keys)
        assert len({cluster_client.keyslot(key) for key in keys}) == 1
        assert store.get("text").content == payload.hex()
        assert store.get_many(["piped", "many", "small"])["many"].content == payload
        assert sorted(info.step_id for info in store.list()) == ["many", "piped", "small", "text"]
        assert store.delete("piped") is True
        assert store.clear() == 3
        assert cluster_client.exists(*keys) == 0


@pytest.mark.timeout(60)
def test_the_eviction_policy_is_read_from_the_namespace_primary(
    redis_cluster: RedisClusterNodes,
    cluster_client: RedisCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(store_module, "_POLICY_READ", set())
    caplog.set_level(logging.DEBUG)
    settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="evicting primary") as store:
        node = cluster_client.get_node_from_key(f"{{artifactstore:{encode_name(store.namespace)}}}:idx")
        primary = cluster_client.get_redis_connection(node)
        primary.config_set("maxmemory-policy", "allkeys-lfu")
        primary.config_set("maxmemory", "1gb")
        try:
            store.save("a", Message(content=b"x"))
        finally:
            primary.config_set("maxmemory", "0")
            primary.config_set("maxmemory-policy", "noeviction")
            store.clear()
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "maxmemory" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "maxmemory-policy allkeys-lfu" in warnings[0]


def test_a_given_cluster_client_is_named_by_its_node(cluster_client: RedisCluster) -> None:
    with RedisStore(namespace="given cluster", client=cluster_client) as store:
        node = cluster_client.get_default_node()
        assert f"url='redis://{node.host}:{node.port}/0'" in repr(store)
        store.save("a", Message(content=b"x"))
        assert store.clear() == 1


def _getkeys_calls(nodes: RedisClusterNodes) -> int:
    total = 0
    for node in nodes.nodes:
        client = node.client()
        try:
            total += int(client.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0))
        finally:
            client.close()
    return total


def test_pipelined_scripts_cost_no_key_lookup_round_trips(redis_cluster: RedisClusterNodes) -> None:
    settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
    payload = bytes(range(256)) * (store_module._INLINE_MAX // 256 + 1)
    with RedisStore(settings, namespace="no getkeys") as store:
        store.save("warm", Message(content=b"w"))
        before = _getkeys_calls(redis_cluster)
        store.save_many({f"k{i}": Message(content=payload if i % 5 == 0 else b"s%d" % i) for i in range(50)})
        store.save("one", Message(content=payload))
        assert store.delete("k1") is True
        # redis-py's cluster pipeline asked the server for the keys of each script call (COMMAND GETKEYS), one
        # round trip per call, unless the call names its node.
        assert _getkeys_calls(redis_cluster) == before
        assert store.clear() == 51


@pytest.mark.timeout(120)
def test_a_batch_meeting_a_slot_migration_is_retried_and_lands(redis_cluster: RedisClusterNodes) -> None:
    settings = RedisSettings(url=redis_cluster.url, cluster=True, retry_backoff=0.01)  # type: ignore[arg-type]
    admins = [node.client() for node in redis_cluster.nodes]
    store = RedisStore(settings, namespace="migrating")
    finished: list[bool] = []
    finish: Callable[[], None] | None = None
    try:
        store.save_many({f"old{i}": Message(content=b"o%d" % i) for i in range(20)})
        index = f"{{artifactstore:{encode_name(store.namespace)}}}:idx"
        slot = admins[0].cluster("KEYSLOT", index)
        ids = [admin.cluster("MYID") for admin in admins]
        ids = [node_id.decode() if isinstance(node_id, bytes) else node_id for node_id in ids]
        source = next(i for i, admin in enumerate(admins) if admin.cluster("COUNTKEYSINSLOT", slot))
        target = (source + 1) % len(admins)
        admins[target].cluster("SETSLOT", slot, "IMPORTING", ids[source])
        admins[source].cluster("SETSLOT", slot, "MIGRATING", ids[target])
        # Only the index moves: every script of the namespace now finds its keys split over two nodes
        # (TRYAGAIN, ASK), until the migration is finished, which the store's first retry backoff does here.
        port = redis_cluster.nodes[target].port
        admins[source].migrate("127.0.0.1", port, index, 0, 5000)
        real_back_off = store._back_off
        retries: list[str] = []

        def finish() -> None:
            while keys := admins[source].cluster("GETKEYSINSLOT", slot, 100):
                admins[source].migrate("127.0.0.1", port, keys, 0, 5000)
            for admin in admins:
                admin.cluster("SETSLOT", slot, "NODE", ids[target])
            finished.append(True)

        def finish_then_back_off(exc: BaseException, retry: int) -> None:
            if not finished:
                finish()
            retries.append(type(exc).__name__)
            real_back_off(exc, retry)

        store._back_off = finish_then_back_off  # type: ignore[method-assign]
        store.save_many({f"new{i}": Message(content=b"n%d" % i) for i in range(20)})
        assert retries, "the batch never met the migration"
        found = store.get_many([*(f"old{i}" for i in range(20)), *(f"new{i}" for i in range(20))])
        assert found["new7"].content == b"n7"
        assert found["old7"].content == b"o7"
        assert store.clear() == 40
    finally:
        if finish is not None and not finished:
            finish()  # leave the session's cluster with every slot served
        store.close()
        for admin in admins:
            admin.close()
        # redis-py's cluster client drops a connection it opened while following the redirections without
        # closing it (its socket is closed when collected); collect it here, not in whichever test runs next.
        del store
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.mark.timeout(60)
def test_clear_and_list_find_unindexed_artifacts_on_an_evicting_primary(
    redis_cluster: RedisClusterNodes, cluster_client: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep of an evicting server SCANs the namespace slot's primary, not some node of the cluster.
    # The eviction of the index is played by deleting it (test_redis_eviction evicts for real); the policy
    # is set without a maxmemory that could be reached, so nothing else is evicted from the shared cluster;
    # the node has evicted keys of the test's own before (the sweep runs only on a server that evicted).
    settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="evicting primary") as store:
        node = cluster_client.get_node_from_key(store._index)
        admin = cluster_client.get_redis_connection(node)
        evict_once(admin, store._tag.decode())  # keys of the namespace's slot, with an expiry: none else
        old = admin.config_get("maxmemory*")
        # The policy is read once per process and node: forget what earlier tests' stores read.
        monkeypatch.setattr(store_module, "_ALLKEYS", {})
        admin.config_set("maxmemory-policy", "allkeys-lru")
        admin.config_set("maxmemory", "1gb")
        try:
            payload = bytes(range(256)) * (store_module._INLINE_MAX // 256 + 1)
            store.save_many({"small": Message(content=b"s"), "large": Message(content=payload)})
            cluster_client.delete(store._index)
            assert sorted(info.step_id for info in store.list()) == ["large", "small"]
            assert store.clear() == 2
            tag = store._tag.decode()
            assert cluster_client.exists(f"{tag}:a:small", f"{tag}:a:large", f"{tag}:p:large") == 0
        finally:
            admin.config_set("maxmemory", old["maxmemory"])
            admin.config_set("maxmemory-policy", old["maxmemory-policy"])


@pytest.mark.timeout(60)
def test_namespaces_finds_a_namespace_whose_index_and_registry_were_evicted_on_its_primary(
    redis_cluster: RedisClusterNodes, cluster_client: RedisCluster, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    # The registry lives in a slot of its own and the namespaces spread over every primary: namespaces()
    # asks each primary whether it evicts, and SCANs the one that does. As in the test above, the evictions
    # are played by deletes (a prefix of the test's own, so the shared cluster's registry is left alone).
    settings = RedisSettings(url=redis_cluster.url, cluster=True, key_prefix=prefix)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="evicting primary") as store:
        node = cluster_client.get_node_from_key(store._index)
        others = [f"elsewhere {i}" for i in range(12)]
        stores = [RedisStore(settings, namespace=name) for name in others]
        admin = cluster_client.get_redis_connection(node)
        evict_once(admin, store._tag.decode())
        old = admin.config_get("maxmemory*")
        monkeypatch.setattr(store_module, "_ALLKEYS", {})
        admin.config_set("maxmemory-policy", "allkeys-lru")
        admin.config_set("maxmemory", "1gb")
        try:
            for each in (store, *stores):
                each.save("a", Message(content=b"x"))
            # Some namespace lives on another primary than the evicting one (and keeps its index there).
            assert {cluster_client.get_node_from_key(each._index).name for each in stores} - {node.name}
            cluster_client.delete(store._index)
            assert store.namespaces() == sorted(["evicting primary", *others])
            cluster_client.delete(store._registry)
            assert "evicting primary" in store.namespaces()
        finally:
            admin.config_set("maxmemory", old["maxmemory"])
            admin.config_set("maxmemory-policy", old["maxmemory-policy"])
            for each in (store, *stores):
                each.clear()
                each.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given", [False, True], ids=["own-client", "given-client"])
def test_a_cluster_node_reached_without_cluster_mode_says_which_setting_to_change(
    redis_cluster: RedisClusterNodes, cluster_client: RedisCluster, given: bool
) -> None:
    # The node redirects a command for another node's slot: this was "failed (MovedError: 10908 host:port)",
    # naming nothing to change. A node that does not hold the registry's slot redirects every first save.
    registry = cluster_client.get_node_from_key("{artifactstore}:namespaces")
    node = next(node for node in redis_cluster.nodes if node.port != registry.port)
    client = node.client() if given else None
    store = RedisStore(RedisSettings(url=node.url), namespace="not clustered", client=client)  # type: ignore[arg-type]
    try:
        with pytest.raises(BackendError) as info:
            store.save("a", Message(content=b"x"))
        assert isinstance(info.value.__cause__, redis.exceptions.MovedError)
        assert "node of a Redis Cluster" in str(info.value)
        assert ("RedisCluster" if given else "ARTIFACT_STORE_REDIS_CLUSTER=true") in str(info.value)
    finally:
        store.close()
        if client is not None:
            client.close()
