"""Faults injected into real redis-server processes: crash and restart, killed connections, a paused server,
a full server. Each test runs its own server so the faults never touch another test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_helpers import Relay, payload_of, wait_for

import artifactstore_redis.store as store_module
from artifactstore_core import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    BackendTimeoutError,
    BackendUnavailableError,
    CapacityError,
    Message,
    StoreClosedError,
)
from artifactstore_core.testing_servers import LOOPBACK, in_thread
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.scripts import CLEAR, COMMIT, DELETE, REGISTER_NAMESPACE, SAVE, SAVE_KEPT
from artifactstore_redis.testing import RedisServer, running

#: A payload size stored in its own key (uploaded, then committed), not inline in the artifact's hash.
LARGE = store_module._INLINE_MAX + 1000


def message_of(kind: str, step_id: str, size: int) -> Message:
    """Bytes for ``inline`` (small) and ``uploaded`` (large), text of the same size for ``uploaded text``."""
    payload = payload_of(step_id, size)
    return Message(content=payload.hex()[:size] if kind == "uploaded text" else payload)


#: The three ways a single save reaches the server, with the payload size that selects each.
SAVE_PATHS = pytest.mark.parametrize(
    ("kind", "size"),
    [("inline", 8 * 1024), ("uploaded", LARGE), ("uploaded text", LARGE)],
    ids=["inline", "uploaded", "uploaded-text"],
)


def make_store(server: RedisServer, namespace: str, **overrides: Any) -> RedisStore:
    return RedisStore(RedisSettings(url=server.url, **overrides), namespace=namespace)  # type: ignore[arg-type]


@pytest.mark.timeout(180)
def test_sigkill_and_restart_lose_no_acknowledged_save(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "aof", appendonly="yes", appendfsync="always")
    server.start()
    store = make_store(server, "durable", retry_attempts=2, retry_backoff=0.02, socket_timeout=5)
    acknowledged: dict[str, int] = {}
    uncertain: dict[str, int] = {}
    problems: list[str] = []
    failures = {"writes": 0, "reads": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        i = 0
        while not stop.is_set():
            step_id, size = f"w{worker}-{i}", 512 + (i * 997 + worker * 131) % 32_000
            if i % 8 == 3:
                size += LARGE  # stored in its own key: uploaded, then renamed into place by the commit
            i += 1
            try:
                store.save(step_id, Message(content=payload_of(step_id, size)))
            except (BackendUnavailableError, BackendTimeoutError):
                with lock:
                    uncertain[step_id] = size  # may or may not have been saved; if it was, it must be whole
                    failures["writes"] += 1
            except Exception as exc:
                with lock:
                    problems.append(f"save {step_id}: {exc!r}")
            else:
                with lock:
                    acknowledged[step_id] = size

    def reader() -> None:
        while not stop.is_set():
            with lock:
                if not acknowledged:
                    continue
                step_id, size = next(reversed(acknowledged.items()))
            try:
                content = store.get(step_id).content
            except (BackendUnavailableError, BackendTimeoutError):
                with lock:
                    failures["reads"] += 1
                continue
            except (ArtifactCorruptedError, ArtifactNotFoundError) as exc:
                content = exc
            if content != payload_of(step_id, size):
                with lock:
                    problems.append(f"read of acknowledged {step_id} gave {content!r:.80}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 1000, 60, "1000 saves before the crash")
        server.kill()
        at_kill = len(acknowledged)
        # Stay down until the writers have felt the outage (their retries ran out), then restart.
        wait_for(lambda: failures["writes"] >= 8, 60, "saves failing while the server is down")
        server.start()
        wait_for(lambda: len(acknowledged) >= at_kill + 1000, 60, "1000 saves after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    try:
        assert problems == []
        # Every acknowledged save survived the SIGKILL byte for byte, read through the same store object.
        for step_id, size in acknowledged.items():
            assert store.get(step_id).content == payload_of(step_id, size), step_id
        for step_id, size in uncertain.items():
            if store.exists(step_id):
                assert store.get(step_id).content == payload_of(step_id, size), step_id
        listed = {info.step_id for info in store.list()}
        assert set(acknowledged) <= listed <= set(acknowledged) | set(uncertain)
    finally:
        store.close()
        server.stop()


@pytest.mark.timeout(120)
def test_client_kill_during_a_burst_gives_no_spurious_exists_error(tmp_path: Path) -> None:
    with running(tmp_path / "kill") as server:
        store = make_store(server, "burst", retry_attempts=10, retry_backoff=0.005, retry_backoff_max=0.05)
        admin = server.client()
        landed_then_retried = 0
        large_landed_then_retried = 0
        real_roundtrip = store._roundtrip

        def observing_roundtrip(commands: Any) -> Any:
            nonlocal landed_then_retried, large_landed_then_retried
            replies = real_roundtrip(commands)
            for command, reply in zip(commands, replies, strict=True):
                # Each id is saved once by this test, so "kept" means an earlier attempt had landed.
                if command[:2] == ("EVALSHA", SAVE.sha) and reply == SAVE_KEPT:
                    landed_then_retried += 1
                if command[:2] == ("EVALSHA", COMMIT.sha) and reply == SAVE_KEPT:
                    large_landed_then_retried += 1  # the upload path: a commit that found its artifact
            return replies

        store._roundtrip = observing_roundtrip  # type: ignore[method-assign]
        saved: dict[str, int] = {}
        problems: list[str] = []
        killed = 0
        lock = threading.Lock()

        def burst(round_: int) -> None:
            def writer(worker: int) -> None:
                for i in range(60):
                    step_id, size = f"r{round_}-w{worker}-{i}", 2_000 + 300 * i
                    if i % 4 == 1:
                        size += LARGE
                    try:
                        store.save(step_id, Message(content=payload_of(step_id, size)))
                    except BackendUnavailableError:
                        continue  # retries ran out under the kill storm; allowed, and checked below
                    except Exception as exc:  # an ArtifactExistsError here would be the bug
                        with lock:
                            problems.append(f"{step_id}: {exc!r}")
                    else:
                        with lock:
                            saved[step_id] = size

            writers = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
            for thread in writers:
                thread.start()
            nonlocal killed
            while any(thread.is_alive() for thread in writers):
                killed += int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal"))
                time.sleep(0.002)  # pacing the kill storm, not synchronisation
            for thread in writers:
                thread.join()

        # The interesting interleaving (the save ran, its reply was lost) is likely in every burst; a few
        # bounded rounds make sure it happened at least once.
        for round_ in range(6):
            burst(round_)
            if landed_then_retried and large_landed_then_retried and round_ >= 1:
                break
        admin.close()
        try:
            assert problems == []
            assert killed > 0
            assert landed_then_retried > 0
            assert large_landed_then_retried > 0
            for step_id, size in saved.items():
                assert store.get(step_id).content == payload_of(step_id, size)
        finally:
            store.close()


@pytest.mark.timeout(60)
@SAVE_PATHS
def test_client_pause_longer_than_the_socket_timeout_raises_timeout_in_time(
    tmp_path: Path, kind: str, size: int
) -> None:
    with running(tmp_path / "pause") as server:
        timeout = 0.5
        store = make_store(server, "pause", socket_timeout=timeout, retry_attempts=3)
        admin = server.client()
        message = message_of(kind, "during the pause", size)
        try:
            store.save("before", Message(content=b"warm"))
            admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            started = time.monotonic()
            with pytest.raises(BackendTimeoutError) as info:
                store.save("during", message)
            elapsed = time.monotonic() - started
            admin.execute_command("CLIENT", "UNPAUSE")
            # Timeouts are not retried by default: the deadline is one socket timeout (plus a margin).
            assert elapsed < timeout + 1.5, elapsed
            assert info.value.retryable
            assert "ARTIFACT_STORE_REDIS_SOCKET_TIMEOUT" in str(info.value)
            assert isinstance(info.value.__cause__, redis.TimeoutError)
            # The very next call succeeds (the timed-out save may have run once the pause ended: then this
            # is an identical retry).
            store.save("during", message)
            assert store.get("during") == message
        finally:
            admin.close()
            store.close()


@pytest.mark.timeout(60)
def test_client_pause_with_retry_on_timeout_retries_within_its_deadline(tmp_path: Path) -> None:
    with running(tmp_path / "pause-retry") as server:
        timeout, retries = 0.3, 2
        store = make_store(
            server, "pause", socket_timeout=timeout, retry_attempts=retries, retry_on_timeout=True, retry_backoff=0.01
        )
        admin = server.client()
        try:
            store.save("before", Message(content=b"warm"))
            admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            started = time.monotonic()
            with pytest.raises(BackendTimeoutError):
                store.save("during", Message(content=b"x"))
            elapsed = time.monotonic() - started
            admin.execute_command("CLIENT", "UNPAUSE")
            # One attempt and two retries, each one socket timeout; the backoff adds at most 0.03 s.
            assert (retries + 1) * timeout <= elapsed < (retries + 1) * timeout + 0.03 + 1.5, elapsed
            store.save("after", Message(content=b"y"))
        finally:
            admin.close()
            store.close()


@pytest.mark.timeout(60)
@SAVE_PATHS
def test_maxmemory_noeviction_raises_capacity_error_and_saves_nothing(
    tmp_path: Path, kind: str, size: int, lose: Callable[..., list[str]]
) -> None:
    # The inline SAVE script is refused at its first write; an upload is refused at its SET (the commit sent
    # with it then finds no upload and changes nothing).
    commands = ("evalsha",) if kind == "inline" else ("set", "evalsha")
    with running(tmp_path / "oom", maxmemory="2mb", **{"maxmemory-policy": "noeviction"}) as server:
        store = make_store(server, "full", retry_attempts=3, retry_backoff=0, batch_size=16)
        admin = server.client()
        try:
            failed, error = None, None
            for i in range(200):
                step_id = f"fill-{i}"
                before = _attempts(admin, commands)
                try:
                    store.save(step_id, message_of(kind, step_id, size))
                except CapacityError as exc:
                    failed, error = step_id, exc
                    attempts = _attempts(admin, commands) - before
                    break
            assert failed is not None, "the server never ran out of memory"
            assert failed != "fill-0", "not even one artifact fit"
            assert error is not None
            assert attempts == len(commands)  # OOM is not retried
            assert not error.retryable
            assert error.step_id == failed
            assert isinstance(error.__cause__, redis.ResponseError)
            assert "maxmemory" in str(error)
            assert not store.exists(failed)
            assert failed not in {info.step_id for info in store.list()}
            assert not admin.zscore("{artifactstore:full}:idx", failed)
            assert list(admin.scan_iter(match="{artifactstore:full}:u:*")) == []  # no upload left behind
            # What was saved before is intact, and deleting makes room again.
            assert store.get("fill-0").content == message_of(kind, "fill-0", size).content
            # Delete and clear work on a full server, and report exactly what they removed even when their
            # replies are lost: the result markers are written while the server is full. (With maxmemory at
            # one byte every command starts out of memory, whatever the last removal freed.)
            admin.config_set("maxmemory", "1")
            with pytest.raises(CapacityError):
                store.save("refused", Message(content=b"r"))
            deletes = lose(store, DELETE, ["reply"])
            assert store.delete("fill-0") is True
            assert deletes == ["reply"]
            assert not store.exists("fill-0")
            assert len(list(admin.scan_iter(match="{artifactstore:full}:d:*"))) == 1
            batches = lose(store, CLEAR, ["reply"])
            assert store.clear() == int(failed.split("-")[1]) - 1
            assert len(batches) >= 2
            assert len(list(admin.scan_iter(match="{artifactstore:full}:d:*"))) == 2
            admin.config_set("maxmemory", "2mb")
            store.save(failed, Message(content=b"fits now"))
            assert store.get(failed).content == b"fits now"
        finally:
            admin.close()
            store.close()


@pytest.mark.timeout(60)
@SAVE_PATHS
def test_an_identical_resave_succeeds_on_a_full_server(tmp_path: Path, kind: str, size: int) -> None:
    # A store announces its namespace in the registry (a ZADD, which a full server refuses) before its first
    # save and again once a minute: an identical re-save, which stores nothing, failed with CapacityError.
    with running(tmp_path / "oom", **{"maxmemory-policy": "noeviction"}) as server:
        writer = make_store(server, "full")
        admin = server.client()
        try:
            writer.save("a", message_of(kind, "a", size))
            writer.save("b", message_of(kind, "b", size))
            admin.config_set("maxmemory", "1")  # every memory-growing command is refused from now on
            for store in (make_store(server, "full"), make_store(server, "full")):
                with store:
                    store.save("a", message_of(kind, "a", size))
                    store.save_many([("a", message_of(kind, "a", size)), ("b", message_of(kind, "b", size))])
                    with pytest.raises(CapacityError, match="nothing was saved"):
                        store.save("new", message_of(kind, "new", size))
                    with pytest.raises(CapacityError, match="nothing was saved"):
                        store.save("a", message_of(kind, "a", size), overwrite=True)
            assert writer.namespaces() == ["full"]
            assert not writer.exists("new")
            # Stored, but not in the registry (which the server lost, say): a save that cannot record the
            # namespace fails, or namespaces() and gc would miss it; once there is room, saving again records it.
            admin.delete("{artifactstore}:namespaces")
            with make_store(server, "full") as store:
                with pytest.raises(CapacityError, match="the artifact is stored, but namespaces"):
                    store.save("a", message_of(kind, "a", size))
                admin.config_set("maxmemory", "0")
                store.save("a", message_of(kind, "a", size))
                assert store.namespaces() == ["full"]
        finally:
            admin.config_set("maxmemory", "0")
            admin.close()
            writer.close()


@pytest.mark.timeout(60)
def test_a_save_stored_after_its_announce_was_refused_records_its_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Room freed between the refused announce and the save (played by lowering maxmemory for the announce
    # alone): the save stores its artifact, so it records the namespace after the write; if that is refused
    # too, the save says the artifact is stored but not listed.
    with running(tmp_path / "oom", **{"maxmemory-policy": "noeviction"}) as server:
        admin = server.client()
        store = make_store(server, "late")
        script = store._script
        full_for: list[str] = []

        def announce_on_a_full_server(called: Any, *args: Any, **kwargs: Any) -> Any:
            if called is REGISTER_NAMESPACE and full_for:
                full_for.pop()
                admin.config_set("maxmemory", "1")
                try:
                    return script(called, *args, **kwargs)
                finally:
                    admin.config_set("maxmemory", "0")
            return script(called, *args, **kwargs)

        monkeypatch.setattr(store, "_script", announce_on_a_full_server)
        try:
            full_for[:] = ["before"]
            store.save("a", Message(content=b"a"))
            assert admin.zscore("{artifactstore}:namespaces", "late") is not None
            store._registered_at = None  # as a minute later
            admin.delete("{artifactstore}:namespaces")
            full_for[:] = ["after", "before"]
            with pytest.raises(CapacityError, match="the artifact is stored, but namespaces"):
                store.save("b", Message(content=b"b"))
            assert store.get("b").content == b"b"
            assert store.namespaces() == []  # what the error warned of
            store.save("b", Message(content=b"b"))
            assert store.namespaces() == ["late"]
        finally:
            admin.close()
            store.close()


def _attempts(admin: Any, commands: tuple[str, ...]) -> int:
    # "calls" counts executed commands, failed ones included; "rejected_calls" those refused before running.
    stats = admin.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        + int(stats.get(f"cmdstat_{name}", {}).get("rejected_calls", 0))
        for name in commands
    )


def _connections_named(admin: Any, name: str) -> list[dict[str, Any]]:
    return [client for client in admin.client_list() if client.get("name") == name]


def _closing_store(server: RedisServer, **overrides: Any) -> RedisStore:
    """A store whose connections are named ``closing`` in ``CLIENT LIST``."""
    settings = RedisSettings(url=f"{server.url}?client_name=closing", **overrides)  # type: ignore[arg-type]
    return RedisStore(settings, namespace="closing")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("operation", "size"),
    [("save", 8 * 1024), ("save", LARGE), ("clear", 0)],
    ids=["save-inline", "save-uploaded", "clear"],
)
def test_close_during_an_operation_in_flight_raises_store_closed(tmp_path: Path, operation: str, size: int) -> None:
    # close() disconnects the pool under a request that is on the wire; redis-py then raised a ValueError
    # of the closed socket, which reached the caller as "BackendError: ... ValueError".
    with running(tmp_path / "close") as server:
        store = _closing_store(server)
        admin = server.client()
        try:
            store.save("before", Message(content=b"warm"))
            # A write pause holds the request in the server (flag "b"), where close() finds it in flight.
            admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            if operation == "save":
                thread, outcome = in_thread(lambda: store.save("during", Message(content=b"x" * size)))
            else:
                thread, outcome = in_thread(store.clear)
            wait_for(
                lambda: any("b" in client["flags"] for client in _connections_named(admin, "closing")),
                10,
                "the request to be held in the server",
            )
            store.close()
            thread.join(timeout=10)
            assert not thread.is_alive()
            assert len(outcome) == 1
            assert isinstance(outcome[0], StoreClosedError), repr(outcome[0])
            assert outcome[0].__cause__ is not None
            admin.execute_command("CLIENT", "UNPAUSE")
            # The held request died with its connection: nothing was saved or removed after close().
            assert _connections_named(admin, "closing") == []
            assert admin.exists(b"{artifactstore:closing}:a:before") == 1
            assert admin.exists(b"{artifactstore:closing}:a:during") == 0
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
            admin.close()
            store.close()


@pytest.mark.timeout(60)
def test_close_ends_a_retry_backoff_and_nothing_reconnects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A save waiting to retry slept out its backoff after close(), then opened a new connection (which
    # close() could no longer close) and saved after close() had returned.
    with running(tmp_path / "backoff") as server:
        store = _closing_store(server, retry_attempts=3, retry_backoff=60, retry_backoff_max=60)
        admin = server.client()
        try:
            store.save("before", Message(content=b"warm"))
            admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            with caplog.at_level("DEBUG", logger="artifactstore_redis"):
                thread, outcome = in_thread(lambda: store.save("during", Message(content=b"x")))
                wait_for(
                    lambda: any("b" in client["flags"] for client in _connections_named(admin, "closing")),
                    10,
                    "the save to be held in the server",
                )
                # Its connection dropped: the save backs off (30 to 60 s) before it tries again.
                (held,) = _connections_named(admin, "closing")
                admin.execute_command("CLIENT", "KILL", "ID", held["id"])
                wait_for(lambda: "retry 1 of 3" in caplog.text, 10, "the save to wait for its retry")
                admin.execute_command("CLIENT", "UNPAUSE")
                store.close()
                thread.join(timeout=10)
            assert not thread.is_alive(), "the backoff outlived close()"
            assert len(outcome) == 1
            assert isinstance(outcome[0], StoreClosedError), repr(outcome[0])
            assert isinstance(outcome[0].__cause__, redis.ConnectionError)
            assert _connections_named(admin, "closing") == []
            assert admin.exists(b"{artifactstore:closing}:a:during") == 0
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
            admin.close()
            store.close()


@pytest.mark.timeout(60)
def test_after_a_failover_writes_reach_the_new_primary_over_new_connections(tmp_path: Path) -> None:
    # A managed Redis fails over by promoting a replica, moving its DNS name to it, and demoting the old
    # primary to a replica of it (the relay plays the DNS name). The store's pooled connections to the old
    # one got READONLY on every write for as long as they lived, and the error said to point the URL, which
    # was right, at a primary; only a new store got past it.
    with running(tmp_path / "old") as old, running(tmp_path / "new") as new:
        relay = Relay(old.port)
        old_admin, new_admin = old.client(), new.client()
        try:
            settings = RedisSettings(url=f"redis://{LOOPBACK}:{relay.port}/0", max_connections=4)  # type: ignore[arg-type]
            with RedisStore(settings, namespace="failover") as store:
                store.save_many({f"warm {i}": Message(content=i) for i in range(3)})
                relay.upstream = new.port
                old_admin.replicaof(LOOPBACK, new.port)
                store.save("inline", Message(content=b"after"))
                store.save("uploaded", Message(content=payload_of("uploaded", LARGE)))
                store.save_many({"many 1": Message(content=1), "many 2": Message(content=2)})
                assert store.delete("many 2") is True
                for step_id in ("inline", "uploaded", "many 1"):
                    assert new_admin.exists(store._key(store._member(step_id))), step_id
                assert not new_admin.exists(store._key(store._member("many 2")))
        finally:
            relay.close()
            old_admin.close()
            new_admin.close()


@pytest.mark.timeout(60)
def test_a_url_naming_a_replica_fails_writes_after_the_retries(tmp_path: Path) -> None:
    with running(tmp_path / "primary") as primary, running(tmp_path / "replica") as replica:
        admin = replica.client()
        try:
            admin.replicaof(LOOPBACK, primary.port)
            store = make_store(replica, "on a replica", retry_attempts=2, retry_backoff=0.001)
            with store, pytest.raises(BackendUnavailableError) as raised:
                store.save("x", Message(content=b"x"))
            assert "read-only replica" in str(raised.value)
            assert "ARTIFACT_STORE_REDIS_URL at the primary" in str(raised.value)
        finally:
            admin.close()


@pytest.mark.timeout(60)
def test_namespaces_through_a_url_naming_a_replica_lists_and_skips_the_registry_cleanup(tmp_path: Path) -> None:
    # namespaces() drops an empty namespace from the registry once nobody announced it for the grace period:
    # a write, which a replica refused with READONLY, failing the whole (read-only) listing after the retries.
    registry = "{artifactstore}:namespaces"
    with running(tmp_path / "primary") as primary, running(tmp_path / "replica") as replica:
        admin, replica_admin = primary.client(), replica.client()
        writer = make_store(primary, "held")
        try:
            writer.save("a", Message(content=b"a"))
            admin.zadd(registry, {"emptied": 1, "gone": 2})  # announced long ago, holding nothing now
            replica_admin.replicaof(LOOPBACK, primary.port)
            wait_for(lambda: replica_admin.zscore(registry, "gone") is not None, 30, "the replica to sync")
            store = make_store(replica, "held", retry_attempts=3, retry_backoff=0.001)
            with store:
                before = _attempts(replica_admin, ("evalsha",))
                assert store.namespaces() == ["held"]
                # The first refused cleanup ends the cleanup: neither it nor the next one is tried again.
                assert _attempts(replica_admin, ("evalsha",)) - before == 1
                assert store.namespaces() == ["held"]
            assert admin.zrange(registry, 0, -1) == [b"emptied", b"gone", b"held"]
            # On the primary the cleanup happens.
            assert writer.namespaces() == ["held"]
            assert admin.zrange(registry, 0, -1) == [b"held"]
        finally:
            writer.close()
            admin.close()
            replica_admin.close()


@pytest.mark.timeout(60)
def test_after_a_failover_reads_through_idle_connections_see_the_new_primary(tmp_path: Path) -> None:
    # The idle pooled connections lead to the demoted node too, which serves its old data set until the new
    # primary's snapshot arrives (held back here for 30 s): a read through one of them missed what had just
    # been saved on the new primary.
    with running(tmp_path / "old") as old, running(tmp_path / "new", **{"repl-diskless-sync-delay": "30"}) as new:
        relay = Relay(old.port)
        old_admin = old.client()
        try:
            settings = RedisSettings(url=f"redis://{LOOPBACK}:{relay.port}/0", max_connections=4)  # type: ignore[arg-type]
            with RedisStore(settings, namespace="failover reads") as store:
                pool = store._pool
                assert pool is not None
                store.save("before", Message(content=b"before"))
                # Two connections to the old primary, both idle.
                first, second = store_module._pooled_connection(pool), store_module._pooled_connection(pool)
                pool.release(first)
                pool.release(second)
                relay.upstream = new.port
                old_admin.replicaof(LOOPBACK, new.port)
                store.save("after", Message(content=b"after"))  # READONLY, then saved over a new connection
                # The pool hands out its last released connection first: make it the one not used since.
                used, idle = store_module._pooled_connection(pool), store_module._pooled_connection(pool)
                pool.release(used if idle is first else idle)
                pool.release(first)
                assert store.get("after").content == b"after"
        finally:
            relay.close()
            old_admin.close()
