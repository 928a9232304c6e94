"""Behaviour specific to the Redis backend, against the session's real redis-server."""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import Callable
from typing import IO, Any, cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import artifactstore_redis.store as store_module
from artifactstore_core import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    BackendUnavailableError,
    ConfigurationError,
    Message,
    PayloadTooLargeError,
    create_store,
)
from artifactstore_core.ids import encode_name
from artifactstore_core.store import MAX_TTL
from artifactstore_core.testing import ZeroStream
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.scripts import CLEAR, DELETE, SAVE
from artifactstore_redis.settings import REDIS_MAX_BULK_BYTES
from artifactstore_redis.testing import RedisServer, free_port

MakeStore = Callable[..., RedisStore]
#: The ``lose`` fixture (conftest.py).
Lose = Callable[..., list[str]]
#: The ``lasting`` fixture (conftest.py).
Lasting = Callable[[Any, Any], set[bytes]]


def snapshot(raw: Any, prefix: str) -> dict[bytes, bytes]:
    """Every key under ``prefix`` with a serialized dump of its value (test code may SCAN: its pattern is ours)."""
    keys = sorted(raw.scan_iter(match=f"{{{prefix}*", count=1000))
    return {key: raw.dump(key) for key in keys}


def commandstat(raw: Any, command: str) -> int:
    stats = raw.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


# -- namespaces and layout ----------------------------------------------------------------------------


@pytest.mark.parametrize(("mine", "theirs"), [("run1", "run10"), ("run10", "run1"), ("ns[1]", "ns1"), ("ns1", "ns[1]")])
def test_clear_leaves_every_key_of_a_similar_namespace_intact(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, mine: str, theirs: str, lasting: Lasting
) -> None:
    mine_store = store_factory(redis_server.url, mine, key_prefix=prefix)
    their_store = store_factory(redis_server.url, theirs, key_prefix=prefix)
    ids = ["a", "b", "*", "?", "[1]", "run1", "x" * 50]
    for store in (mine_store, their_store):
        store.save_many({step_id: Message(content=f"{store.namespace}/{step_id}") for step_id in ids})
        store.save("ttl", Message(content=b"t"), ttl=3600)
    theirs_tag = f"{{{prefix}:{encode_name(theirs)}}}".encode()
    before = {key: value for key, value in snapshot(raw, prefix).items() if key.startswith(theirs_tag)}
    assert len(before) == len(ids) + 2  # artifacts, the ttl one and the index

    assert mine_store.clear() == len(ids) + 1

    after = {key: value for key, value in snapshot(raw, prefix).items() if key.startswith(theirs_tag)}
    assert after == before
    assert raw.pttl(theirs_tag + b":a:ttl") > 0
    assert sorted(info.step_id for info in their_store.list()) == sorted([*ids, "ttl"])
    assert list(mine_store.list()) == []
    mine_tag = f"{{{prefix}:{encode_name(mine)}}}".encode()
    assert [key for key in lasting(raw, snapshot(raw, prefix)) if key.startswith(mine_tag)] == []


def test_key_layout(redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str) -> None:
    store = store_factory(redis_server.url, "Run 1/ä", key_prefix=prefix)
    store.save("step *?[x]", Message(content={"v": 1}))
    tag = f"{{{prefix}:Run 1/ä}}"  # what a naive layout would have produced
    assert not raw.exists(tag + ":idx")
    encoded_ns = "%52un%201%2F%C3%A4"
    assert encode_name("Run 1/ä") == encoded_ns
    keys = set(snapshot(raw, prefix))
    artifact = f"{{{prefix}:{encoded_ns}}}:a:step%20%2A%3F%5Bx%5D".encode()
    index = f"{{{prefix}:{encoded_ns}}}:idx".encode()
    assert keys == {artifact, index, f"{{{prefix}}}:namespaces".encode()}
    assert raw.type(artifact) == b"hash"
    assert set(raw.hkeys(artifact)) == {b"head", b"payload", b"id"}
    assert raw.zrange(index, 0, -1, withscores=True) == [(b"step%20%2A%3F%5Bx%5D", float("inf"))]
    # Head and payload are separate fields: the payload is exactly the content's bytes for bytes content.
    store.save("raw", Message(content=b"\x00payload\xff"))
    assert raw.hget(f"{{{prefix}:{encoded_ns}}}:a:raw", "payload") == b"\x00payload\xff"


def test_retry_of_a_save_whose_first_attempt_landed_is_not_a_conflict(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any
) -> None:
    store = store_factory(redis_server.url, f"retry-{uuid.uuid4().hex[:6]}")
    message = Message(content={"rows": 3}, metadata={"m": 1})
    # The first attempt ran on the server but its reply was lost: replay exactly what the store sends.
    plan = store._plan("step", message, False, None)
    raw.eval(SAVE.source, len(plan.keys), *plan.keys, *plan.args)
    store.save("step", Message(content={"rows": 3}, metadata={"m": 1}))  # the retry: a new created_at
    assert store.get("step").created_at == message.created_at
    with pytest.raises(ArtifactExistsError):
        store.save("step", Message(content={"rows": 4}, metadata={"m": 1}))


def markers_of(raw: Any, tag: str) -> dict[bytes, int]:
    """The result markers (``d:`` keys) a delete or clear left in a namespace, with their remaining lifetime."""
    return {key: raw.pttl(key) for key in raw.scan_iter(match=f"{tag}:d:*", count=1000)}


@pytest.mark.parametrize("retries", [1, 3])
def test_a_delete_whose_reply_was_lost_still_reports_what_it_removed(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, lose: Lose, retries: int
) -> None:
    store = store_factory(redis_server.url, "del", key_prefix=prefix, retry_backoff=0, retry_attempts=retries)
    tag = f"{{{prefix}:del}}"
    store.save("small", Message(content=b"s"))
    store.save("large", Message(content=bytes(store_module._INLINE_MAX)))
    log = lose(store, DELETE, ["reply"])
    # Each delete ran on the server and its reply was lost; the retry finds the artifact gone, and the
    # result its first attempt recorded.
    assert store.delete("small") is True
    assert store.delete("large") is True
    assert store.delete("never-saved") is False  # nothing removed, nothing recorded
    assert log == ["reply"] * 3
    assert not store.exists("small")
    assert not store.exists("large")
    assert raw.zcard(f"{tag}:idx") == 0
    markers = markers_of(raw, tag)
    assert len(markers) == 2  # one per delete that removed something, each expiring on its own
    assert all(0 < ttl <= store._result_ttl_ms for ttl in markers.values()), markers
    # A later delete of the same id is a new call: it finds nothing.
    assert store.delete("small") is False
    # Saved again after the delete: a new delete removes it.
    store.save("small", Message(content=b"again"))
    assert store.delete("small") is True


def test_the_result_marker_outlives_the_retry_policy(redis_server: RedisServer, store_factory: MakeStore) -> None:
    assert store_factory(redis_server.url)._result_ttl_ms == store_module._RESULT_TTL_MS
    patient = store_factory(redis_server.url, retry_attempts=10, socket_timeout=30.0, retry_on_timeout=True)
    # Eleven attempts of up to 5 + 2 + 30 + 1 seconds each.
    assert patient._result_ttl_ms == 11 * 38_000


@pytest.mark.parametrize(
    "pattern",
    [["reply"], ["reply", "request", "none"], ["request", "reply"]],
    ids=["every-reply-lost", "mixed", "request-then-reply"],
)
def test_clear_counts_exactly_when_batch_replies_are_lost(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, lose: Lose, pattern: list[str]
) -> None:
    store = store_factory(redis_server.url, "clr", key_prefix=prefix, retry_backoff=0, batch_size=3)
    store.save_many({f"a-{i}": Message(content=i) for i in range(10)})
    store.save("large", Message(content=bytes(store_module._INLINE_MAX)))
    store.save("expired", Message(content=b"gone"), ttl=3600)
    raw.delete(f"{{{prefix}:clr}}:a:expired")  # as if it had expired: still in the index, not counted
    log = lose(store, CLEAR, pattern)
    # A batch's lost reply is retried and returns the count of its first run; a lost request is retried
    # and runs then (the previous batch's record in the marker is not mistaken for its own).
    assert store.clear() == 11
    assert len(log) == 4  # 12 index entries in batches of 3
    assert set(log) == set(pattern)
    assert raw.exists(f"{{{prefix}:clr}}:idx") == 0
    assert list(store.list()) == []
    markers = markers_of(raw, f"{{{prefix}:clr}}")
    assert len(markers) == 1  # one per clear call, each batch overwriting it
    assert all(0 < ttl <= store._result_ttl_ms for ttl in markers.values()), markers


def test_scripts_flushed_from_the_server_are_sent_again(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any
) -> None:
    store = store_factory(redis_server.url, f"flush-{uuid.uuid4().hex[:6]}")
    store.save("a", Message(content=1))
    raw.script_flush()  # what a restart without persistence, or SCRIPT FLUSH, does
    store.save("b", Message(content=2))
    raw.script_flush()
    store.save_many({"c": Message(content=3), "d": Message(content=4)})
    raw.script_flush()
    assert store.delete("a") is True
    raw.script_flush()
    assert store.clear() == 3


@pytest.mark.parametrize("save", ["save", "save_many"])
def test_a_namespace_lost_by_the_server_is_announced_again(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, save: str
) -> None:
    # The registry entry a store announced (at most once a minute) is gone with a restart without
    # persistence; the saves after it must announce the namespace again, or namespaces() and gc would
    # never see the artifacts they write. A restarted server has lost its script cache too (NOSCRIPT).
    store = store_factory(redis_server.url, "lost", key_prefix=prefix)
    store.save("before", Message(content=1))
    assert store.namespaces() == ["lost"]
    raw.delete(f"{{{prefix}}}:namespaces")
    raw.script_flush()
    if save == "save":
        store.save("after", Message(content=2))
    else:
        store.save_many({"after": Message(content=2), "big": Message(content=b"x" * 64 * 1024)})
    fresh = store_factory(redis_server.url, "other", key_prefix=prefix)
    assert fresh.namespaces() == ["lost"]


def test_overwrite_replaces_and_keeps_one_index_entry(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = store_factory(redis_server.url, "ow", key_prefix=prefix)
    store.save("s", Message(content=b"x" * 1000), ttl=60)
    store.save("s", Message(content="short"), overwrite=True)
    assert store.get("s").content == "short"
    key = f"{{{prefix}:ow}}:a:s"
    assert raw.pttl(key) == -1  # an overwrite without ttl makes the artifact permanent again
    assert raw.zcard(f"{{{prefix}:ow}}:idx") == 1


# -- size limit ---------------------------------------------------------------------------------------


def _no_io(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a command was sent to redis")


def test_too_large_is_refused_before_any_byte_is_sent(
    redis_server: RedisServer, store_factory: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory(redis_server.url, f"big-{uuid.uuid4().hex[:6]}", max_artifact_bytes=1000)
    store.save("fits", Message(content=b"x" * 1000))
    # JSON is limited by its stored (compressed) size: this one compresses far below the limit (a text of
    # one character repeated would not: it compresses past the ratio readers accept, so it is stored whole).
    store.save("compressible", Message(content={"text": "".join(f"{i:03d}" for i in range(100)) * 230}))
    monkeypatch.setattr(store.client, "execute_command", _no_io)
    monkeypatch.setattr(store.client, "pipeline", _no_io)
    monkeypatch.setattr(store.client.connection_pool, "get_connection", _no_io)  # the store's direct path
    with pytest.raises(PayloadTooLargeError) as info:
        store.save("big", Message(content=b"x" * 1001))
    assert info.value.step_id == "big"
    assert "1001 bytes" in str(info.value)
    assert "ARTIFACT_STORE_REDIS_MAX_ARTIFACT_BYTES" in str(info.value)
    with pytest.raises(PayloadTooLargeError):
        store.save_many({"small": Message(content=b"s"), "big": Message(content=b"x" * 5000)})
    monkeypatch.undo()
    assert not store.exists("big")
    assert not store.exists("small")


@pytest.mark.timeout(60)
def test_save_stream_stops_reading_past_max_artifact_bytes(
    redis_server: RedisServer, store_factory: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # save_stream used to read the whole stream (an endless one until MemoryError) before the size check.
    limit = 1024 * 1024
    store = store_factory(redis_server.url, f"stream-{uuid.uuid4().hex[:6]}", max_artifact_bytes=limit)
    stream = ZeroStream()
    with monkeypatch.context() as patch:  # nothing may be sent, and the fixture's clear() must still work
        patch.setattr(store.client, "execute_command", _no_io)
        patch.setattr(store.client, "pipeline", _no_io)
        patch.setattr(store.client.connection_pool, "get_connection", _no_io)
        with pytest.raises(PayloadTooLargeError) as info:
            store.save_stream("endless", cast(IO[bytes], stream))
        # The wording of save's own refusal, with what is known of the size.
        with pytest.raises(PayloadTooLargeError) as saved:
            store.save("endless", Message(content=bytes(limit + 1)))
    assert stream.read_bytes == limit + 1
    error = info.value
    assert (error.step_id, error.namespace, error.backend) == ("endless", store.namespace, "redis")
    assert str(error) == str(saved.value).replace(f"{limit + 1} bytes", f"more than {limit} bytes")
    assert not store.exists("endless")
    store.save_stream("exact", io.BytesIO(bytes(limit)))
    assert store.info("exact").size == limit


@pytest.mark.timeout(60)
def test_redis_limit_is_the_default(redis_server: RedisServer, store_factory: MakeStore) -> None:
    store = store_factory(redis_server.url, f"huge-{uuid.uuid4().hex[:6]}")
    assert store.capabilities.max_artifact_bytes == REDIS_MAX_BULK_BYTES == 512 * 1024 * 1024
    with pytest.raises(PayloadTooLargeError):
        store.save("huge", Message(content=bytes(REDIS_MAX_BULK_BYTES + 1)))
    assert not store.exists("huge")


# -- ttl ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 64 * 1024], ids=["inline", "payload-apart"])
def test_overwrite_with_the_same_message_applies_its_ttl(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, size: int
) -> None:
    # The same message object (created_at included) saved again with overwrite: for a payload kept apart,
    # COMMIT finds its own head, which it used to take for a retry and return without touching the expiry.
    store = store_factory(redis_server.url, "same", key_prefix=prefix)
    message = Message(content=b"x" * size)
    key, payload_key = f"{{{prefix}:same}}:a:m", f"{{{prefix}:same}}:p:m"
    store.save("m", message, ttl=60)
    store.save("m", message, overwrite=True)  # without a ttl: permanent again
    assert raw.pttl(key) == -1
    assert raw.zscore(f"{{{prefix}:same}}:idx", "m") == float("inf")
    store.save("m", message, overwrite=True, ttl=3600)
    assert 3_500_000 < raw.pttl(key) <= 3_600_000
    if size > store_module._INLINE_MAX:
        assert abs(raw.pttl(key) - raw.pttl(payload_key)) < 1000  # set at one instant: expire together
    assert store.get("m").content == message.content


@pytest.mark.parametrize("ttl", [float("inf"), 1e15, MAX_TTL * 1.01])
def test_a_ttl_beyond_the_longest_is_refused_before_any_write(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, ttl: float
) -> None:
    # Such an expiry used to overflow the script's arithmetic after its first write: a permanent artifact
    # outside the index, which clear() did not remove.
    store = store_factory(redis_server.url, "huge", key_prefix=prefix)
    for size in (10, 64 * 1024):
        with pytest.raises(ValueError, match="at most"):
            store.save(f"s{size}", Message(content=b"x" * size), ttl=ttl)
    with pytest.raises(ValueError, match="at most"):
        store.save_many({"a": Message(content=1)}, ttl=ttl)
    assert snapshot(raw, prefix) == {}
    store.save("longest", Message(content=1), ttl=MAX_TTL)
    assert raw.pttl(f"{{{prefix}:huge}}:a:longest") > 3_000_000_000_000
    assert store.clear() == 1


def test_a_default_ttl_beyond_the_longest_is_a_configuration_error(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="default_ttl"):
        RedisSettings(url=redis_server.url, default_ttl=1e15)  # type: ignore[arg-type]


def test_default_ttl_and_per_save_override(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = store_factory(redis_server.url, "ttl", key_prefix=prefix, default_ttl=100)
    store.save("default", Message(content=1))
    store.save("override", Message(content=2), ttl=5000)
    assert 90_000 < raw.pttl(f"{{{prefix}:ttl}}:a:default") <= 100_000
    assert 4_900_000 < raw.pttl(f"{{{prefix}:ttl}}:a:override") <= 5_000_000
    plain = store_factory(redis_server.url, "plain", key_prefix=prefix)
    plain.save("forever", Message(content=3))
    assert raw.pttl(f"{{{prefix}:plain}}:a:forever") == -1


def test_expired_artifact_is_not_found_and_its_index_entry_goes(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = store_factory(redis_server.url, "exp", key_prefix=prefix)
    store.save("short", Message(content=1), ttl=0.05)
    store.save("kept", Message(content=2))
    key = f"{{{prefix}:exp}}:a:short"
    index = f"{{{prefix}:exp}}:idx"
    # Wait for the server to consider the key expired (polled, with a deadline; PTTL is -2 once it is).
    assert_eventually(lambda: raw.pttl(key) == -2)
    assert not store.exists("short")
    with pytest.raises(ArtifactNotFoundError):
        store.get("short")
    assert [info.step_id for info in store.list()] == ["kept"]
    assert store.namespaces().count("exp") == 1
    store.save("later", Message(content=3))  # writes prune expired index entries
    assert raw.zscore(index, "short") is None
    assert store.clear() == 2


def assert_eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)  # polling a condition with a deadline


# -- batches and clear at scale -----------------------------------------------------------------------


def test_save_many_and_get_many_use_pipelines(
    redis_server: RedisServer, store_factory: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory(redis_server.url, f"pipe-{uuid.uuid4().hex[:6]}", batch_size=100)
    store.save("warm-up", Message(content=0))  # announces the namespace (a single script call, once a minute)
    # Every round trip takes one connection from the pool; count them, and at the server the commands sent.
    pool = store.client.connection_pool
    round_trips = 0
    real_get_connection = pool.get_connection

    def counting_get_connection(*args: Any, **kwargs: Any) -> Any:
        nonlocal round_trips
        round_trips += 1
        return real_get_connection(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", counting_get_connection)
    monkeypatch.setattr(store.client, "execute_command", _no_io)  # no per-artifact calls outside pipelines
    items = {f"s{i}": Message(content={"i": i}) for i in range(250)}
    store.save_many(items)
    assert round_trips == 3
    assert store.get_many(list(items)) == items
    assert round_trips == 6
    monkeypatch.undo()


@pytest.mark.timeout(120)
def test_clear_of_100k_artifacts_runs_in_bounded_batches_without_scan(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, lasting: Lasting
) -> None:
    store = store_factory(redis_server.url, "big", key_prefix=prefix)
    neighbour = store_factory(redis_server.url, "big0", key_prefix=prefix)
    neighbour.save("stays", Message(content=1))
    store.save("template", Message(content={"v": 1}))
    template = raw.hgetall(f"{{{prefix}:big}}:a:template")
    # Seed 100,000 artifacts the way the save script stores them (much faster than encoding each one).
    count = 100_000
    pipe = raw.pipeline(transaction=False)
    for i in range(count - 1):
        member = f"id-{i}"
        pipe.hset(f"{{{prefix}:big}}:a:{member}", mapping=template)
        pipe.zadd(f"{{{prefix}:big}}:idx", {member: float("inf")})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    assert raw.zcard(f"{{{prefix}:big}}:idx") == count
    scripts, keys, scans = commandstat(raw, "evalsha"), commandstat(raw, "keys"), commandstat(raw, "scan")

    assert store.clear() == count

    batches = commandstat(raw, "evalsha") - scripts
    assert count / 500 <= batches <= count / 500 + 2  # each script call deletes at most batch_size artifacts
    assert (commandstat(raw, "keys"), commandstat(raw, "scan")) == (keys, scans)
    assert raw.exists(f"{{{prefix}:big}}:idx") == 0
    assert neighbour.get("stays").content == 1
    assert lasting(raw, snapshot(raw, prefix)) == {
        f"{{{prefix}:big0}}:a:stays".encode(),
        f"{{{prefix}:big0}}:idx".encode(),
        f"{{{prefix}}}:namespaces".encode(),
    }


@pytest.mark.timeout(120)
def test_clear_with_the_largest_batch_size(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, lasting: Lasting
) -> None:
    # 10,000 artifacts per script call: more keys than one Lua unpack() may hold (8000).
    store = store_factory(redis_server.url, "wide", key_prefix=prefix, batch_size=10_000)
    store.save("template", Message(content={"v": 1}))
    store.save("large", Message(content=bytes(store_module._INLINE_MAX)))
    template = raw.hgetall(f"{{{prefix}:wide}}:a:template")
    pipe = raw.pipeline(transaction=False)
    for i in range(12_000):
        pipe.hset(f"{{{prefix}:wide}}:a:id-{i}", mapping=template)
        pipe.zadd(f"{{{prefix}:wide}}:idx", {f"id-{i}": float("inf")})
    pipe.execute()
    assert store.clear() == 12_002
    assert [key for key in lasting(raw, snapshot(raw, prefix)) if key.startswith(f"{{{prefix}:wide}}".encode())] == []


# -- corruption -----------------------------------------------------------------------------------------


def test_damaged_artifacts_raise_corrupted(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = store_factory(redis_server.url, "bad", key_prefix=prefix)
    store.save("flipped", Message(content=b"abcdef"))
    store.save("headless", Message(content=b"abcdef"))
    raw.hset(f"{{{prefix}:bad}}:a:flipped", "payload", b"abcdeF")
    raw.hdel(f"{{{prefix}:bad}}:a:headless", "head")
    with pytest.raises(ArtifactCorruptedError) as info:
        store.get("flipped")
    assert info.value.step_id == "flipped"
    with pytest.raises(ArtifactCorruptedError):
        store.get("headless")
    with pytest.raises(ArtifactCorruptedError):
        store.get_many(["flipped"])
    # info() reads only the head: a hash without one is damaged too, not missing (it exists, as get() says).
    assert store.exists("headless")
    with pytest.raises(ArtifactCorruptedError, match="missing its head") as info:
        store.info("headless")
    assert info.value.step_id == "headless"
    with pytest.raises(ArtifactNotFoundError):
        store.info("never saved")


@pytest.mark.parametrize("where", ["hash", "payload"])
def test_get_many_names_the_step_id_of_a_key_of_the_wrong_type(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, where: str
) -> None:
    # A key of the namespace holding another type than the backend writes there: its WRONGTYPE reply came out
    # of get_many's pipeline unnamed, so of a batch of ids the error named none (get named its one id).
    store = store_factory(redis_server.url, "wrong type", key_prefix=prefix)
    store.save("fine", Message(content=b"x"))
    store.save("damaged", Message(content=b"y" * (64 * 1024)))  # large: its payload has a key of its own
    member = store._member("damaged")
    key = store._key(member) if where == "hash" else store._payload_key(member)
    raw.delete(key)
    raw.rpush(key, b"a list")
    for call in (lambda: store.get("damaged"), lambda: store.get_many(["fine", "damaged"])):
        with pytest.raises(ArtifactCorruptedError, match="another kind of value") as info:
            call()
        assert info.value.step_id == "damaged"
        assert info.value.namespace == "wrong type"
    assert store.get_many(["fine"])["fine"].content == b"x"


@pytest.mark.parametrize("member", [b"%FF", b"ABC", b"\xff\xfe", b"%00", b"a" * 800, b"a:b"])
def test_forged_index_and_registry_entries_are_skipped(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, member: bytes
) -> None:
    # Entries that are no legal id's (or namespace's) canonical encoding were written by something else: they
    # used to fail the whole listing with a BackendError about a ValueError, or (%00, too long) to be listed as
    # ids that no call accepts. They are skipped, as on the s3 and filesystem backends.
    store = store_factory(redis_server.url, "forged", key_prefix=prefix)
    store.save("real", Message(content=b"x"))
    head = raw.hget(f"{{{prefix}:forged}}:a:real", "head")
    raw.hset(f"{{{prefix}:forged}}:a:".encode() + member, mapping={"head": head, "payload": b"x"})
    raw.zadd(f"{{{prefix}:forged}}:idx", {member: float("inf")})
    raw.zadd(f"{{{prefix}}}:namespaces", {member: 1e12})
    raw.zadd(f"{{{prefix}:".encode() + member + b"}:idx", {b"x": float("inf")})
    assert [info.step_id for info in store.list()] == ["real"]
    assert store.namespaces() == ["forged"]


def test_a_key_of_the_wrong_type_is_corrupted_not_a_backend_failure(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    # WRONGTYPE from a key someone else wrote into the namespace was a plain BackendError.
    store = store_factory(redis_server.url, "typed", key_prefix=prefix)
    store.save("big", Message(content=b"y" * 100_000))  # its payload lives in a key of its own
    raw.set(f"{{{prefix}:typed}}:a:string", b"not a hash")
    raw.zadd(f"{{{prefix}:typed}}:idx", {b"string": float("inf")})
    raw.delete(f"{{{prefix}:typed}}:p:big")
    raw.hset(f"{{{prefix}:typed}}:p:big", "not", "a string")
    for call in (
        lambda: store.get("string"),
        lambda: store.info("string"),
        lambda: store.get_many(["string"]),
        lambda: list(store.list()),
        lambda: store.save("string", Message(content=b"z")),
        lambda: store.get("big"),
        lambda: store.get_many(["big"]),
    ):
        with pytest.raises(ArtifactCorruptedError, match="holds another kind of value") as info:
            call()
        assert isinstance(info.value.__cause__, redis.ResponseError)
        assert info.value.namespace == "typed"


# -- namespaces registry --------------------------------------------------------------------------------


def test_namespaces_lists_non_empty_ones_and_forgets_empty_ones(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = store_factory(redis_server.url, "one", key_prefix=prefix)
    two = store_factory(redis_server.url, "two [2]", key_prefix=prefix)
    one.save("a", Message(content=1))
    two.save("a", Message(content=2))
    assert one.namespaces() == ["one", "two [2]"]
    two.clear()
    assert one.namespaces() == ["one"]
    registry = f"{{{prefix}}}:namespaces"
    assert raw.zscore(registry, "two%20%5B2%5D") is not None  # announced recently: kept for a while
    monkeypatch.setattr(store_module, "_REGISTRY_GRACE", -1)
    assert one.namespaces() == ["one"]
    assert raw.zrange(registry, 0, -1) == [b"one"]


def test_namespaces_ignores_an_index_that_holds_only_foreign_members(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/redis.md: an index member that is not the canonical encoding of a legal id is ignored. A namespace
    # whose index held only such members (something else wrote them) was listed, holding nothing.
    # Small batches: an index is read in several pages past the first members.
    one = store_factory(redis_server.url, "one", key_prefix=prefix, batch_size=10)
    one.save("a", Message(content=1))
    registry = f"{{{prefix}}}:namespaces"
    foreign = {"not canonical": "+inf", b"\xff\xfe": "+inf", "%zz": "+inf", "": "+inf"}
    for name, members in (
        ("foreign", foreign),
        # Many foreign members ahead of one legal id: found however far it sorts.
        ("late", {**{f"x y {n}": 10**15 for n in range(40)}, encode_name("real"): "+inf"}),
        # A legal id whose entry expired does not count either.
        ("expired", {**foreign, encode_name("gone"): 1}),
    ):
        raw.zadd(f"{{{prefix}:{name}}}:idx", members)
        raw.zadd(registry, {name: 0})
    assert one.namespaces() == ["late", "one"]
    monkeypatch.setattr(store_module, "_REGISTRY_GRACE", -1)
    assert one.namespaces() == ["late", "one"]
    assert sorted(raw.zrange(registry, 0, -1)) == [b"late", b"one"]  # the empty ones are forgotten
    one.clear()


def test_info_reads_only_the_head(redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str) -> None:
    store = store_factory(redis_server.url, "info", key_prefix=prefix)
    store.save("i", Message(content=b"12345"))
    raw.hset(f"{{{prefix}:info}}:a:i", "payload", b"damaged, but info never reads it")
    assert store.info("i").size == 5
    with pytest.raises(ArtifactNotFoundError):
        store.info("missing")


# -- wiring ---------------------------------------------------------------------------------------------


def test_selected_by_environment(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "redis")
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_KEY_PREFIX", prefix)
    monkeypatch.setenv("ARTIFACT_STORE_NAMESPACE", "from-env")
    with create_store() as store:
        assert isinstance(store, RedisStore)
        assert store.namespace == "from-env"
        assert store.settings.key_prefix == prefix
        store.save("x", Message(content="via env"))
        assert store.get("x").content == "via env"
        assert store.clear() == 1
    with create_store("redis", url=redis_server.url, socket_timeout=1.5) as store:
        assert store.settings.socket_timeout == 1.5  # type: ignore[attr-defined]


def test_client_can_be_shared(redis_server: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    first = RedisStore(namespace="shared-1", client=client)
    second = RedisStore(namespace="shared-2", client=client)
    first.save("x", Message(content=1))
    second.save("x", Message(content=2))
    first.clear()
    first.close()
    assert second.get("x").content == 2  # closing a store does not close a client it was given
    second.clear()
    second.close()
    client.close()
    with pytest.raises(ConfigurationError):
        RedisStore(client=redis.Redis(port=redis_server.port, decode_responses=True))


@pytest.mark.timeout(60)
def test_errors_of_a_given_client_name_its_server_never_its_password(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The URL setting (from the environment here) is not what a given client talks to: naming it would send
    # the user to the wrong server.
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_URL", "redis://elsewhere.invalid:6390/0")
    port = free_port()
    no_retries = Retry(NoBackoff(), 0)
    unreachable = redis.Redis(host="127.0.0.1", port=port, db=3, password="given-canary-6c1e", retry=no_retries)
    with RedisStore(namespace="given", client=unreachable, settings=None) as store:
        assert f"redis://127.0.0.1:{port}/3" in repr(store)
        with pytest.raises(BackendUnavailableError) as info:
            store.exists("x")
    assert f"redis at redis://127.0.0.1:{port}/3 " in str(info.value)
    assert "elsewhere" not in str(info.value)
    assert "given-canary-6c1e" not in str(info.value)
    unreachable.close()
    # A wrong password given in the client: refused, and the password is not quoted.
    wrong = redis.Redis(
        host="127.0.0.1", port=redis_server.port, username="nobody", password="given-canary-6c1e", retry=no_retries
    )
    with RedisStore(namespace="given", client=wrong) as store, pytest.raises(AccessDeniedError) as denied:
        store.exists("x")
    assert f"127.0.0.1:{redis_server.port}" in str(denied.value)
    assert "given-canary-6c1e" not in str(denied.value)
    wrong.close()


def _use_inherited_store(store: RedisStore) -> None:
    # Runs in a forked child: the pool must notice the new process and open its own connections.
    store.save("from-child", Message(content="child"))
    assert store.get("from-parent").content == "parent"


def test_a_forked_child_can_use_the_inherited_store(redis_server: RedisServer, store_factory: MakeStore) -> None:
    import multiprocessing

    store = store_factory(redis_server.url, f"fork-{uuid.uuid4().hex[:6]}")
    store.save("from-parent", Message(content="parent"))  # the parent holds pooled connections now
    child = multiprocessing.get_context("fork").Process(target=_use_inherited_store, args=(store,))
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() whenever any thread exists in the test process; forking is the point.
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert store.get("from-child").content == "child"
    assert store.get("from-parent").content == "parent"  # the parent's connections were left alone


def test_close_closes_every_pooled_connection(redis_server: RedisServer, raw: Any) -> None:
    name = f"closing-{uuid.uuid4().hex[:8]}"
    store = RedisStore(RedisSettings(url=f"{redis_server.url}?client_name={name}"), namespace=name)  # type: ignore[arg-type]
    store.save("small", Message(content=b"s"))
    store.save("large", Message(content=bytes(store_module._INLINE_MAX)))  # uploaded and committed
    assert store.get("large").content == bytes(store_module._INLINE_MAX)

    def connections() -> int:
        return sum(1 for client in raw.client_list() if client.get("name") == name)

    assert connections() >= 1
    store.clear()
    store.close()
    # The server drops a connection as soon as the client closes its socket (not when it is collected).
    assert_eventually(lambda: connections() == 0)
