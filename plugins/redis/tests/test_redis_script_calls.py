"""How script calls recover, on a real server: every script this store runs goes through one path, which
pipelines many calls (a batch of saves, each upload's SET just before its commit), sends the calls whose
script the server lacked (NOSCRIPT) again with EVAL in one more round trip, and retries the calls that got
a transient error reply (TRYAGAIN, CLUSTERDOWN) under the store's retry policy, without sending again the
calls that already got their result. Pipelined reads (get_many, list, list_page) recover from a transient
error reply the same way.

A standalone server never answers TRYAGAIN or CLUSTERDOWN by itself, so the tests have the real server
answer them: the command of the chosen call is replaced, on its way out, by a one-line script that returns
that error reply, and redis-py parses it as it would parse a cluster's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis
from redis_helpers import payload_of

from artifactstore_core import BackendUnavailableError, Message
from artifactstore_core.ids import encode_name
from artifactstore_redis import RedisStore
from artifactstore_redis.scripts import COMMIT, REGISTER_NAMESPACE, SAVE
from artifactstore_redis.testing import RedisServer

MakeStore = Callable[..., RedisStore]
Command = tuple[Any, ...]

#: Stored in its own key: uploaded with SET, then committed.
LARGE = 40_000

#: The transient error replies of a cluster, as the server sends them, and what redis-py makes of them.
TRANSIENT = pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("TRYAGAIN Multiple keys request during rehashing of slot", redis.exceptions.TryAgainError),
        ("CLUSTERDOWN The cluster is down", redis.exceptions.ClusterDownError),
    ],
    ids=["TRYAGAIN", "CLUSTERDOWN"],
)


def mixed_items(count: int) -> dict[str, Message]:
    """Inline (small bytes), uploaded bytes and uploaded text, in turn."""
    items: dict[str, Message] = {}
    for i in range(count):
        step_id = f"s{i}"
        if i % 3 == 0:
            items[step_id] = Message(content=payload_of(step_id, 100 + i))
        elif i % 3 == 1:
            items[step_id] = Message(content=payload_of(step_id, LARGE + i))
        else:
            items[step_id] = Message(content=payload_of(step_id, LARGE).hex()[: LARGE + i])
    return items


class RoundTrips:
    """Records the commands of every round trip a store makes; can replace commands on their way out.

    ``replace(commands)`` returns the commands to send instead (the recording keeps what the store sent).
    """

    def __init__(self, store: RedisStore, replace: Callable[[list[Command]], list[Command]] | None = None) -> None:
        self.sent: list[list[Command]] = []
        real = store._roundtrip

        def roundtrip(commands: Sequence[Command]) -> list[Any]:
            self.sent.append(list(commands))
            return real(replace(list(commands)) if replace is not None else commands)

        store._roundtrip = roundtrip  # type: ignore[method-assign]

    def scripts_for(self, hash_key: bytes) -> list[str]:
        """The script commands (EVALSHA/EVAL) sent for the artifact whose hash is ``hash_key``, in order."""
        return [c[0] for trip in self.sent for c in trip if c[0] in {"EVALSHA", "EVAL"} and c[3] == hash_key]


def error_reply(reply: str) -> Command:
    # A script that only returns an error reply: the server answers it as the real error, and runs nothing.
    return ("EVAL", "return redis.error_reply(ARGV[1])", 0, reply)


def fail_commands_of(hash_key: bytes, reply: str, where: str, times: int) -> Callable[[list[Command]], list[Command]]:
    """Replace, ``times`` times, the script command of one artifact (``where="script"``) or its upload's SET
    (``where="upload"``, the command just before its commit) by a command the server answers with ``reply``."""
    left = times

    def replace(commands: list[Command]) -> list[Command]:
        nonlocal left
        out = list(commands)
        for position, command in enumerate(commands):
            if left and command[0] in {"EVALSHA", "EVAL"} and command[3] == hash_key:
                target = position if where == "script" else position - 1
                assert out[target][0] == ("SET" if where == "upload" else command[0])
                out[target] = error_reply(reply)
                left -= 1
        return out

    return replace


def hash_key(prefix: str, namespace: str, step_id: str) -> bytes:
    return f"{{{prefix}:{encode_name(namespace)}}}:a:{encode_name(step_id)}".encode()


def uploads_of(raw: Any, prefix: str, namespace: str) -> list[bytes]:
    return list(raw.scan_iter(match=f"{{{prefix}:{encode_name(namespace)}}}:u:*"))


def warmed(store: RedisStore) -> RedisStore:
    """``store`` after one save: its namespace is announced (once a minute) and its connection pooled, so
    neither shows up in the round trips a test counts."""
    store.save("warm-up", Message(content=0))
    return store


@pytest.mark.timeout(60)
def test_a_batch_whose_scripts_were_flushed_is_saved_in_one_more_round_trip(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = warmed(store_factory(redis_server.url, "flushed", key_prefix=prefix))
    items = mixed_items(30)
    raw.script_flush()  # what a restart without persistence does
    trips = RoundTrips(store)

    store.save_many(items)

    # The batch, then every call that got NOSCRIPT once more with EVAL: two round trips, not one per call;
    # then the namespace is announced again (with EVAL), because a flushed server may have lost its registry.
    assert len(trips.sent) == 3
    first, second, third = trips.sent
    assert [c[:2] for c in third] == [("EVAL", REGISTER_NAMESPACE.source)]
    assert [c[0] for c in first].count("EVALSHA") == 30
    assert [c[0] for c in first].count("SET") == 20
    # The uploads arrived the first time; only the scripts are sent again.
    assert [c[0] for c in second] == ["EVAL"] * 30
    assert {c[1] for c in second} == {SAVE.source, COMMIT.source}
    assert store.get_many(list(items)) == items
    assert uploads_of(raw, prefix, "flushed") == []
    # EVAL cached the scripts again: the next batch is one round trip.
    store.save_many({f"again-{step_id}": message for step_id, message in mixed_items(6).items()})
    assert len(trips.sent) == 3 + 1 + 2  # the batch, then get_many's two pipelines
    assert len([trip for trip in trips.sent if any(c[0] == "EVAL" for c in trip)]) == 2  # the batch, the announcement


@pytest.mark.timeout(60)
def test_an_upload_that_vanished_while_its_script_was_missing_is_sent_again(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = warmed(store_factory(redis_server.url, "gone", key_prefix=prefix))
    items = mixed_items(6)
    raw.script_flush()

    def expire_uploads(commands: list[Command]) -> list[Command]:
        # The round trip of EVALs, which relies on the uploads of the first: they expire just before it.
        if all(command[0] == "EVAL" for command in commands):
            for key in uploads_of(raw, prefix, "gone"):
                raw.delete(key)
        return commands

    trips = RoundTrips(store, expire_uploads)
    store.save_many(items)

    assert [[c[0] for c in trip] for trip in trips.sent[1:]] == [["EVAL"] * 6, ["SET", "EVAL"] * 4, ["EVAL"]]
    assert store.get_many(list(items)) == items
    assert uploads_of(raw, prefix, "gone") == []


@pytest.mark.timeout(60)
@TRANSIENT
@pytest.mark.parametrize(
    ("victim", "where"),
    [("s3", "script"), ("s4", "script"), ("s4", "upload"), ("s5", "upload")],
    ids=["inline-save", "commit", "upload-bytes", "upload-text"],
)
def test_a_transient_error_reply_in_a_pipelined_save_is_retried_for_that_call_only(
    redis_server: RedisServer,
    store_factory: MakeStore,
    raw: Any,
    prefix: str,
    reply: str,
    error: type[Exception],
    victim: str,
    where: str,
) -> None:
    store = warmed(store_factory(redis_server.url, "transient", key_prefix=prefix, retry_attempts=3, retry_backoff=0))
    items = mixed_items(9)
    target = hash_key(prefix, "transient", victim)
    trips = RoundTrips(store, fail_commands_of(target, reply, where, times=1))

    store.save_many(items)

    assert len(trips.sent) == 2
    # The failed call alone is sent again (with its upload, when it has one); the others ran once.
    assert [c[0] for c in trips.sent[1]] == (["EVALSHA"] if victim == "s3" else ["SET", "EVALSHA"])
    assert trips.scripts_for(target) == ["EVALSHA", "EVALSHA"]
    for step_id in items:
        if step_id != victim:
            assert trips.scripts_for(hash_key(prefix, "transient", step_id)) == ["EVALSHA"], step_id
    assert store.get_many(list(items)) == items
    assert uploads_of(raw, prefix, "transient") == []


@pytest.mark.timeout(60)
@TRANSIENT
def test_a_transient_error_reply_to_a_large_save_is_retried(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, reply: str, error: type[Exception]
) -> None:
    store = warmed(store_factory(redis_server.url, "single", key_prefix=prefix, retry_attempts=3, retry_backoff=0))
    message = Message(content=payload_of("large", LARGE))
    target = hash_key(prefix, "single", "large")
    trips = RoundTrips(store, fail_commands_of(target, reply, "script", times=2))

    store.save("large", message)

    assert [[c[0] for c in trip] for trip in trips.sent] == [["SET", "EVALSHA"]] * 3
    assert store.get("large") == message
    assert uploads_of(raw, prefix, "single") == []


@pytest.mark.timeout(60)
@TRANSIENT
@pytest.mark.parametrize("where", ["script", "upload"])
def test_a_transient_error_reply_that_outlasts_the_retries_fails_the_batch_naming_its_step(
    redis_server: RedisServer,
    store_factory: MakeStore,
    raw: Any,
    prefix: str,
    reply: str,
    error: type[Exception],
    where: str,
) -> None:
    store = warmed(store_factory(redis_server.url, "outlasts", key_prefix=prefix, retry_attempts=2, retry_backoff=0))
    items = mixed_items(6)
    target = hash_key(prefix, "outlasts", "s4")
    trips = RoundTrips(store, fail_commands_of(target, reply, where, times=1000))

    with pytest.raises(BackendUnavailableError) as info:
        store.save_many(items)

    assert info.value.step_id == "s4"
    assert info.value.retryable
    assert isinstance(info.value.__cause__, error)
    # The first attempt and retry_attempts retries, of that call alone.
    assert trips.scripts_for(target) == ["EVALSHA"] * 3
    assert len(trips.sent) == 3
    # Each artifact is saved atomically, the batch is not: the others were saved, once each.
    others = {step_id: message for step_id, message in items.items() if step_id != "s4"}
    for step_id in others:
        assert trips.scripts_for(hash_key(prefix, "outlasts", step_id)) == ["EVALSHA"], step_id
    assert store.get_many(list(others)) == others
    assert not store.exists("s4")
    # A commit behind a failed upload changed nothing. An upload whose commit never ran (where="script"; one
    # key, which every retry overwrote) is left to its safety expiry.
    left = uploads_of(raw, prefix, "outlasts")
    assert len(left) == (1 if where == "script" else 0)
    assert all(0 < raw.pttl(key) <= 60_000 for key in left)


# -- reads: the same recovery for pipelined reads -----------------------------------------------------------


def fail_read_of(name: str, key: bytes, reply: str, times: int) -> Callable[[list[Command]], list[Command]]:
    """Replace, ``times`` times, the read command ``name`` of ``key`` by a command answered with ``reply``."""
    left = times

    def replace(commands: list[Command]) -> list[Command]:
        nonlocal left
        out = list(commands)
        for position, command in enumerate(commands):
            if left and command[0] == name and command[1] == key:
                out[position] = error_reply(reply)
                left -= 1
        return out

    return replace


#: The batch reads that pipeline one command per artifact: the operation, the command, and the key's kind.
BATCH_READS = pytest.mark.parametrize(
    ("operation", "command", "kind"),
    [("get_many", "HMGET", "a"), ("get_many", "GET", "p"), ("list", "HGET", "a"), ("list_page", "HGET", "a")],
    ids=["get_many-hashes", "get_many-payloads", "list", "list_page"],
)


def read_all(store: RedisStore, operation: str, step_ids: list[str]) -> object:
    if operation == "get_many":
        return store.get_many(step_ids)
    if operation == "list":
        return sorted(info.step_id for info in store.list())
    return [info.step_id for info in store.list_page(limit=len(step_ids))]


@pytest.mark.timeout(60)
@TRANSIENT
@BATCH_READS
def test_a_transient_error_reply_in_a_batch_read_is_retried_for_that_command_only(
    redis_server: RedisServer,
    store_factory: MakeStore,
    prefix: str,
    reply: str,
    error: type[Exception],
    operation: str,
    command: str,
    kind: str,
) -> None:
    # A single get() retried a TRYAGAIN or CLUSTERDOWN reply, as every script call does, but get_many, list
    # and list_page raised it at once (BackendUnavailableError), although the read had not happened.
    store = store_factory(redis_server.url, "reads", key_prefix=prefix, retry_attempts=3, retry_backoff=0)
    items = mixed_items(9)
    store.save_many(items)
    expected = read_all(store, operation, list(items))
    key = hash_key(prefix, "reads", "s4").replace(b":a:", f":{kind}:".encode())
    trips = RoundTrips(store, fail_read_of(command, key, reply, times=2))

    assert read_all(store, operation, list(items)) == expected

    reads = [trip for trip in trips.sent if trip[0][0] == command]
    # The batch, then the command that got the reply, alone, twice.
    assert [len(trip) for trip in reads[1:]] == [1, 1]
    assert reads[1] == reads[2] == [next(c for c in reads[0] if c[1] == key)]


@pytest.mark.timeout(60)
@TRANSIENT
def test_a_transient_error_reply_that_outlasts_the_retries_fails_a_batch_read_naming_its_step(
    redis_server: RedisServer, store_factory: MakeStore, prefix: str, reply: str, error: type[Exception]
) -> None:
    store = store_factory(redis_server.url, "reads", key_prefix=prefix, retry_attempts=2, retry_backoff=0)
    items = mixed_items(6)
    store.save_many(items)
    trips = RoundTrips(store, fail_read_of("HMGET", hash_key(prefix, "reads", "s4"), reply, times=1000))

    with pytest.raises(BackendUnavailableError) as info:
        store.get_many(list(items))

    assert info.value.step_id == "s4"
    assert isinstance(info.value.__cause__, error)
    # The first attempt and retry_attempts retries, of that command alone.
    assert [len(trip) for trip in trips.sent] == [6, 1, 1]
