"""A server whose maxmemory-policy evicts keys: the store says so before its first write, and reads of
artifacts that lost a part to eviction name the cause. Each test runs its own server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from redis_helpers import Blocker, Relay, evict_once, payload_of

import artifactstore_redis.store as store_module
from artifactstore_core import ArtifactCorruptedError, ArtifactNotFoundError, BackendTimeoutError, Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer, running

#: A payload size stored in its own key (uploaded, then committed), not inline in the artifact's hash.
LARGE = store_module._INLINE_MAX + 1000


@pytest.fixture(autouse=True)
def _policies_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no server's policy read (a port may be reused by a later test's server)."""
    monkeypatch.setattr(store_module, "_POLICY_READ", set())
    monkeypatch.setattr(store_module, "_ALLKEYS", {})


def make_store(server: RedisServer, namespace: str) -> RedisStore:
    return RedisStore(RedisSettings(url=server.url), namespace=namespace)  # type: ignore[arg-type]


def _policy_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "artifactstore_redis" and record.levelno == logging.WARNING
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_server_is_named_in_a_warning_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    caplog.set_level(logging.DEBUG)
    with running(tmp_path / "evicting", maxmemory="64mb", **{"maxmemory-policy": policy}) as server:
        first, second = make_store(server, "one"), make_store(server, "two")
        try:
            assert _policy_warnings(caplog) == []  # nothing is read before a store writes
            first.save("a", Message(content=b"x"))
            (warning,) = _policy_warnings(caplog)
            assert f"maxmemory-policy {policy}" in warning
            assert server.url.removesuffix("/0") in warning
            assert "noeviction" in warning
            assert ("artifacts saved with a TTL" in warning) == policy.startswith("volatile")
            # Once per process and server: another store, and more writes, add nothing.
            second.save("b", Message(content=b"y"))
            first.save_many({"c": Message(content=b"z"), "d": Message(content=b"w")})
            assert len(_policy_warnings(caplog)) == 1
        finally:
            for store in (first, second):
                store.clear()
                store.close()


def _info_calls(admin: Any) -> int:
    """How many INFO commands the server ran (this one not yet counted)."""
    return int(admin.info("commandstats")["cmdstat_info"]["calls"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["busy", "dropped-link"])
def test_a_policy_read_that_failed_is_made_again_at_a_later_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    # The server was marked as checked before its one INFO was sent: when that INFO failed (the server busy
    # with another client's script, a link that dropped the connection), the process never warned that the
    # server evicts artifacts. The failure is real: a script keeps the server busy, or the relay swallows the
    # connection's traffic, just for the store's first INFO.
    caplog.set_level(logging.DEBUG)
    options = {"maxmemory": "64mb", "maxmemory-policy": "allkeys-lru", "busy-reply-threshold": "10"}
    with running(tmp_path / "evicting", **options) as server:
        relay = Relay(server.port)
        blocker = Blocker(server)
        admin = server.client()
        settings = RedisSettings(url=f"redis://{LOOPBACK}:{relay.port}/0", socket_timeout=0.5)  # type: ignore[arg-type]
        store, other = RedisStore(settings, namespace="late"), RedisStore(settings, namespace="other")
        real = store._memory_info
        failures: list[str] = []

        def fails_once() -> Any:
            if failures:
                return real()
            if fault == "busy":
                blocker.start()
            else:
                relay.drop()
            try:
                return real()
            except Exception as exc:
                failures.append(type(exc).__name__)
                raise
            finally:
                blocker.kill()

        store._memory_info = fails_once  # type: ignore[method-assign]
        for script in store_module._SCRIPTS:
            # Cached, so that no NOSCRIPT has the first save announce its namespace (and read the policy) again.
            admin.script_load(script.source)
        try:
            store.save("a", Message(content=b"x"))
            assert failures == [{"busy": "ResponseError", "dropped-link": "TimeoutError"}[fault]]
            assert _policy_warnings(caplog) == []
            # A later save of the same store (which announced its namespace a moment ago) reads it again.
            store.save("b", Message(content=b"y"))
            (warning,) = _policy_warnings(caplog)
            assert "maxmemory-policy allkeys-lru" in warning
            # Once read, no save asks again: the only INFO the server runs is the test's own.
            before = _info_calls(admin)
            store.save("c", Message(content=b"z"))
            store.save_many({"d": Message(content=b"w"), "e": Message(content=payload_of("e", LARGE))})
            other.save("f", Message(content=b"v"))
            assert _info_calls(admin) == before + 1
            assert len(_policy_warnings(caplog)) == 1
        finally:
            for each in (store, other):
                each.clear()
                each.close()
            admin.close()
            blocker.close()
            relay.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "options",
    [{"maxmemory": "64mb", "maxmemory-policy": "noeviction"}, {"maxmemory-policy": "allkeys-lru"}],
    ids=["noeviction", "no-maxmemory"],
)
def test_a_server_that_never_evicts_gives_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, options: dict[str, str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with running(tmp_path / "keeping", **options) as server:
        store = make_store(server, "kept")
        try:
            store.save("a", Message(content=b"x"))
            assert _policy_warnings(caplog) == []
        finally:
            store.clear()
            store.close()


@pytest.mark.timeout(120)
def test_artifacts_that_lost_a_part_to_eviction_read_as_damaged_naming_the_cause(tmp_path: Path) -> None:
    # allkeys-lru evicts hashes, payload keys and the namespace index independently of each other.
    options = {"maxmemory": "8mb", "maxmemory-policy": "allkeys-lru", "maxmemory-samples": "10"}
    with running(tmp_path / "lru", **options) as server:
        store = make_store(server, "lru")
        admin = server.client()
        try:
            saved = [f"a{i}" for i in range(1200)]
            for i, step_id in enumerate(saved):
                store.save(step_id, Message(content=payload_of(step_id, LARGE if i % 2 else 2000)))
            assert admin.info("stats")["evicted_keys"] > 0
            outcomes = {"read": 0, "not found": 0, "damaged": 0}
            damaged: list[str] = []
            for i, step_id in enumerate(saved):
                try:
                    content = store.get(step_id).content
                except ArtifactNotFoundError:
                    outcomes["not found"] += 1
                    assert not store.exists(step_id)
                except ArtifactCorruptedError as exc:
                    outcomes["damaged"] += 1
                    damaged.append(str(exc))
                    assert store.exists(step_id)  # its hash is there, its payload key was evicted
                else:
                    outcomes["read"] += 1
                    assert content == payload_of(step_id, LARGE if i % 2 else 2000)
            assert outcomes["damaged"] > 0, outcomes
            assert [text for text in damaged if "evicted" not in text or "maxmemory-policy" not in text] == []
        finally:
            admin.close()
            store.close()


@pytest.mark.timeout(60)
def test_a_user_not_allowed_info_saves_without_the_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The refusal would recur: the policy is not asked for again at each save (a failure that may pass is).
    caplog.set_level(logging.DEBUG)
    with running(tmp_path / "acl", maxmemory="64mb", **{"maxmemory-policy": "allkeys-lru"}) as server:
        admin = server.client()
        admin.acl_setuser("noinfo", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"])
        url = server.url.replace("redis://", "redis://noinfo:pw@")
        store = RedisStore(RedisSettings(url=url), namespace="acl")  # type: ignore[arg-type]
        real = store._memory_info
        reads: list[None] = []

        def counted() -> Any:
            reads.append(None)
            return real()

        store._memory_info = counted  # type: ignore[method-assign]
        try:
            store.save("a", Message(content=b"x"))
            assert store.get("a").content == b"x"
            store.save("b", Message(content=b"y"))
            store.save_many({"c": Message(content=b"z"), "d": Message(content=b"w")})
            assert len(reads) == 1
            assert _policy_warnings(caplog) == []
            assert any("could not read the maxmemory-policy" in record.getMessage() for record in caplog.records)
        finally:
            store.clear()
            store.close()
            admin.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ttl", [None, 3600.0])
@pytest.mark.parametrize("size", [2000, LARGE], ids=["inline", "uploaded"])
def test_saving_the_identical_message_again_restores_an_evicted_index_entry(
    tmp_path: Path, size: int, ttl: float | None
) -> None:
    # An evicting server drops the namespace's index key as it drops any other; the artifacts' hashes stay,
    # but list() and clear() work from the index and miss them. Saving the identical message again (the
    # write-once "kept" path) used to leave the index as it was. The eviction is played by deleting the
    # index key, so that the test does not depend on which keys the LRU sampling picks; on a server whose
    # policy does not evict the index, so that list() and clear() do not look for unindexed artifacts
    # (test_clear_and_list_find_artifacts_whose_index_was_evicted) and the index is all they see.
    options = {"maxmemory": "64mb", "maxmemory-policy": "volatile-lru"}
    with running(tmp_path / "lru", **options) as server:
        store = make_store(server, "reindexed")
        admin = server.client()
        try:
            messages = {step_id: Message(content=payload_of(step_id, size)) for step_id in ("a", "b")}
            for step_id, message in messages.items():
                store.save(step_id, message, ttl=ttl)
            before = dict(admin.zrange(store._index, 0, -1, withscores=True))
            admin.delete(store._index)  # evicted
            assert list(store.list()) == []
            store.save("a", messages["a"], ttl=ttl)  # identical: kept, and its index entry put back
            assert [info.step_id for info in store.list()] == ["a"]
            after = dict(admin.zrange(store._index, 0, -1, withscores=True))
            if ttl is None:
                assert after == {b"a": float("inf")}
            else:  # the hash's own expiry, as the first save scored it (give or take the clock's milliseconds)
                assert abs(after[b"a"] - before[b"a"]) < 1000
            store.save_many(messages, ttl=ttl)
            assert sorted(info.step_id for info in store.list()) == ["a", "b"]
            assert store.clear() == 2
            assert not store.exists("a")
            assert not store.exists("b")
        finally:
            admin.close()
            store.close()


def _namespace_keys(admin: Any, store: RedisStore) -> set[bytes]:
    """The namespace's keys (result markers of clears excluded), read with SCAN by the test."""
    tag = store._tag.decode()
    return {
        key
        for key in admin.scan_iter(match=f"{tag}:*", count=1000)
        if not key.startswith(f"{tag}:d:".encode()) and not key.startswith(f"{tag}:u:".encode())
    }


def _save_then_evict_index(admin: Any, store: RedisStore, saved: list[str]) -> None:
    """Save ``saved`` (every third one large), read each back (so the index is the LRU's oldest key) and
    evict the index (see :func:`_evict_index`)."""
    for i, step_id in enumerate(saved):
        store.save(step_id, Message(content=payload_of(step_id, LARGE if i % 3 == 0 else 1000)))
    for step_id in saved:  # touch every artifact, not the index: the index is the oldest key
        store.get(step_id)
    _evict_index(admin, store)


def _evict_index(admin: Any, store: RedisStore) -> None:
    """Fill the server with other keys until it evicts ``store``'s index (the LRU's oldest key, as the
    caller read every artifact after saving it). Deterministic: filled until the eviction is read back."""
    filler = 0
    while admin.exists(store._index):
        with admin.pipeline(transaction=False) as pipe:
            for _ in range(50):
                pipe.set(f"filler:{filler}", b"f" * 4000)
                filler += 1
            pipe.execute()
        assert filler < 200_000, "the server never evicted the index"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
def test_clear_and_list_find_artifacts_whose_index_was_evicted(tmp_path: Path, policy: str) -> None:
    # A real evicting server: list() and clear() used to work from the index alone, so once the index
    # was evicted they missed the artifacts still stored (list() empty, clear() == 0, the keys left).
    options = {"maxmemory": "4mb", "maxmemory-policy": policy, "maxmemory-samples": "10"}
    with running(tmp_path / "lru", **options) as server:
        store = make_store(server, "orphans")
        other = make_store(server, "kept")
        admin = server.client()
        try:
            saved = [f"step {i}/*?[" for i in range(150)]
            _save_then_evict_index(admin, store, saved)
            # Room again, the policy unchanged: nothing more is evicted while the test reads (Redis evicts
            # before any command, reads included, while it is over maxmemory).
            admin.config_set("maxmemory", "64mb")
            other.save("x", Message(content=b"other namespace"))
            left = _namespace_keys(admin, store)
            hashes = {key for key in left if key.startswith(store._artifact_prefix)}
            assert hashes, "every artifact was evicted along with the index"
            listed = sorted(info.step_id for info in store.list())
            page = sorted(info.step_id for info in store.list_page(limit=1000))
            cleared = store.clear()
            assert (len(listed), len(page), cleared) == (len(hashes),) * 3
            assert set(listed) <= set(saved)
            assert page == listed
            assert _namespace_keys(admin, store) == set()  # hashes and payload keys alike
            assert list(store.list()) == []
            assert other.get("x").content == b"other namespace"  # another namespace is left alone
        finally:
            admin.close()
            other.close()
            store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("evicted", [False, True], ids=["never-full", "has-evicted"])
@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "allkeys-lru"])
def test_a_server_that_cannot_have_evicted_the_index_is_not_scanned(tmp_path: Path, policy: str, evicted: bool) -> None:
    # The sweep walks the whole database, so it runs only where the index can have been evicted: under an
    # allkeys-* policy (the index has no expiry, which volatile-* need), on a server that has evicted.
    with running(tmp_path / policy, maxmemory="64mb", **{"maxmemory-policy": policy}) as server:
        store = make_store(server, "plain")
        admin = server.client()
        try:
            if evicted:
                evict_once(admin, "other")
            store.save_many({f"a{i}": Message(content=b"x") for i in range(10)})
            assert len(list(store.list())) == 10
            assert len(store.list_page(limit=5)) == 5
            assert store.namespaces() == ["plain"]
            assert store.clear() == 10
            scanned = "cmdstat_scan" in admin.info("commandstats")
            assert scanned == (policy == "allkeys-lru" and evicted)
        finally:
            admin.close()
            store.close()


@pytest.mark.timeout(60)
def test_a_user_not_allowed_scan_clears_the_index_and_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running(tmp_path / "acl", maxmemory="64mb", **{"maxmemory-policy": "allkeys-lru"}) as server:
        admin = server.client()
        admin.acl_setuser("noscan", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-scan"])
        url = server.url.replace("redis://", "redis://noscan:pw@")
        store = RedisStore(RedisSettings(url=url), namespace="acl")  # type: ignore[arg-type]
        try:
            evict_once(admin, "other")
            store.save_many({"a": Message(content=b"x"), "b": Message(content=b"y")})
            assert sorted(info.step_id for info in store.list()) == ["a", "b"]
            assert store.clear() == 2
            assert any("may not SCAN" in message for message in _policy_warnings(caplog))
        finally:
            store.close()
            admin.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("given", [False, True], ids=["own-client", "given-client"])
def test_the_policy_is_read_in_every_client_shape(tmp_path: Path, protocol: int, given: bool) -> None:
    # clear() reads INFO in the pipeline of its first index read: raw text through the store's own pool
    # (RESP2 or RESP3), a dict through a client given by the caller. The server evicts once (keys of
    # the test's own), and then the eviction of the index is played by deleting it.
    with running(tmp_path / "shapes", maxmemory="512mb", **{"maxmemory-policy": "allkeys-lfu"}) as server:
        admin = server.client()
        evict_once(admin, "other")
        client = server.client(protocol=protocol) if given else None
        url = f"{server.url}?protocol={protocol}"
        # A prefix and namespace whose keys hold '-', '.', '%' and '_': the SCAN pattern escapes them.
        settings = RedisSettings(url=url, key_prefix="a-b.c_d")  # type: ignore[arg-type]
        store = RedisStore(settings, namespace="run-1 [x]*?", client=client)
        try:
            store.save_many({"a": Message(content=b"x"), "b": Message(content=payload_of("b", LARGE))})
            admin.delete(store._index)
            assert sorted(info.step_id for info in store.list()) == ["a", "b"]
            assert store.clear() == 2
            assert _namespace_keys(admin, store) == set()
        finally:
            store.close()
            if client is not None:
                client.close()
            admin.close()


@pytest.mark.timeout(120)
def test_namespaces_lists_a_namespace_whose_index_and_registry_entry_were_evicted(tmp_path: Path) -> None:
    # namespaces() (what gc collects) used to count each registered namespace's index alone: once the index
    # was evicted, a namespace that still held artifacts was not listed (and one whose registry entry, or
    # the whole registry, was evicted never was), so gc never removed it although list() found its artifacts.
    options = {"maxmemory": "4mb", "maxmemory-policy": "allkeys-lru", "maxmemory-samples": "10"}
    with running(tmp_path / "lru", **options) as server:
        store = make_store(server, "orphans")
        other = make_store(server, "kept")
        admin = server.client()
        try:
            saved = [f"step {i}" for i in range(150)]
            _save_then_evict_index(admin, store, saved)
            admin.config_set("maxmemory", "64mb")  # nothing more is evicted while the test reads
            other.save("x", Message(content=b"other namespace"))
            assert list(store.list()), "every artifact was evicted along with the index"
            assert store.namespaces() == ["kept", "orphans"]
            assert other.namespaces() == ["kept", "orphans"]
            admin.delete(store._registry)  # evicted as well (the LRU may have taken it already)
            assert store.namespaces() == ["kept", "orphans"]
            store.clear()
            other.clear()
            assert store.namespaces() == []
        finally:
            admin.close()
            other.close()
            store.close()


@pytest.mark.timeout(60)
def test_a_policy_read_that_failed_waits_for_a_later_saves_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A policy read that failed was made again before the next save's write: on a server that stopped
    # answering, every save then waited one SOCKET_TIMEOUT for INFO before its own write timed out. Now the
    # read comes after a write that succeeded, still once per save.
    caplog.set_level(logging.DEBUG)
    with running(tmp_path / "evicting", maxmemory="64mb", **{"maxmemory-policy": "allkeys-lru"}) as server:
        relay = Relay(server.port)
        admin = server.client()
        settings = RedisSettings(
            url=f"redis://{LOOPBACK}:{relay.port}/0",  # type: ignore[arg-type]
            socket_timeout=0.5,
            retry_attempts=0,
        )
        store = RedisStore(settings, namespace="hung")
        real = store._memory_info
        reads: list[str] = []

        def recorded() -> Any:
            if not reads:
                relay.drop()  # the first read is lost on the way
            reads.append("sent")
            return real()

        store._memory_info = recorded  # type: ignore[method-assign]
        for script in store_module._SCRIPTS:
            # Cached, so that no NOSCRIPT has the first save announce its namespace (and read the policy) again.
            admin.script_load(script.source)
        try:
            store.save("a", Message(content=b"x"))
            assert reads == ["sent"]
            assert _policy_warnings(caplog) == []
            # The server stops answering: the next save fails on its write, having sent no policy read first.
            relay.dead = True
            relay.drop()
            with pytest.raises(BackendTimeoutError):
                store.save("b", Message(content=b"y"))
            assert reads == ["sent"]
            # Back again: the save writes, then reads the policy (once) and warns.
            relay.dead = False
            store.save("c", Message(content=b"z"))
            assert reads == ["sent", "sent"]
            (warning,) = _policy_warnings(caplog)
            assert "maxmemory-policy allkeys-lru" in warning
            assert admin.exists(*[key for key in admin.keys("*:a:*")]) == 2  # a and c stored
            store.save_many({"d": Message(content=b"w"), "e": Message(content=b"v")})
            assert reads == ["sent", "sent"]
        finally:
            store.clear()
            store.close()
            admin.close()
            relay.close()
