"""Artifacts whose payload lives in its own key: uploaded with SET, moved into place by the COMMIT script.

Upload and commit travel in one pipeline. What these tests pin down: the layout and its transitions
(inline <-> payload key), TTL on both keys, write-once and retries, an upload left behind by a killed writer
(it expires and is never visible), one winner in a create race, and reads that never show a torn artifact.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis_helpers import payload_of, wait_for

import artifactstore_redis.store as store_module
from artifactstore_core import ArtifactExistsError, ArtifactNotFoundError, BackendError, Message
from artifactstore_core.envelope import DEFAULT_COMPRESS_THRESHOLD
from artifactstore_core.ids import encode_name
from artifactstore_redis import RedisStore
from artifactstore_redis.scripts import COMMIT, READ, SAVE_KEPT, SAVE_UPLOAD_MISSING, SAVE_WRITTEN
from artifactstore_redis.testing import RedisServer

MakeStore = Callable[..., RedisStore]

#: Stored in its own key (at least _INLINE_MAX).
LARGE = 100_000
#: Text this long is stored in its own key but not compressed (below the codec's compression threshold).
TEXT = 40_000


def test_the_size_classes_of_these_tests_match_the_store() -> None:
    assert store_module._INLINE_MAX <= TEXT < DEFAULT_COMPRESS_THRESHOLD
    assert store_module._INLINE_MAX <= LARGE


def large(kind: str, name: str, size: int = LARGE, **fields: Any) -> tuple[Message, bytes]:
    """A message stored in its own key (``bytes`` or ``text`` content), and its stored payload."""
    payload = payload_of(name, size)
    if kind == "bytes":
        return Message(content=payload, **fields), payload
    text = payload.hex()[:TEXT]
    return Message(content=text, **fields), text.encode()


def keys_of(raw: Any, prefix: str, namespace: str) -> set[bytes]:
    """Every key of one namespace (test code may SCAN: the pattern is the test's own)."""
    return set(raw.scan_iter(match=f"{{{prefix}:{encode_name(namespace)}}}:*", count=1000))


def uploads_of(raw: Any, prefix: str, namespace: str) -> set[bytes]:
    tag = f"{{{prefix}:{encode_name(namespace)}}}:u:".encode()
    return {key for key in keys_of(raw, prefix, namespace) if key.startswith(tag)}


# -- layout and transitions -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "text"])
def test_a_large_payload_lives_in_its_own_key_and_no_upload_remains(
    redis_server: RedisServer,
    store_factory: MakeStore,
    raw: Any,
    prefix: str,
    kind: str,
    lasting: Callable[[Any, Any], set[bytes]],
) -> None:
    store = store_factory(redis_server.url, "big", key_prefix=prefix)
    message, payload = large(kind, "big", metadata={"k": 1})
    store.save("step", message)
    tag = f"{{{prefix}:big}}"
    artifact, payload_key = f"{tag}:a:step".encode(), f"{tag}:p:step".encode()
    assert keys_of(raw, prefix, "big") == {artifact, payload_key, f"{tag}:idx".encode()}
    assert raw.type(payload_key) == b"string"
    assert raw.get(payload_key) == payload  # the exact bytes, readable with a plain GET
    assert set(raw.hkeys(artifact)) == {b"head", b"id"}
    assert raw.pttl(payload_key) == -1  # the upload's safety expiry is gone
    assert raw.pttl(artifact) == -1
    assert store.get("step") == message
    assert store.get_many(["step"])["step"] == message
    assert [info.size for info in store.list()] == [len(payload)]
    assert store.info("step").size == len(payload)
    # Identical retry: kept, and its own upload is removed.
    store.save("step", large(kind, "big", metadata={"k": 1})[0])
    with pytest.raises(ArtifactExistsError):
        store.save("step", large(kind, "big", metadata={"k": 2})[0])
    assert uploads_of(raw, prefix, "big") == set()
    assert store.delete("step") is True
    assert lasting(raw, keys_of(raw, prefix, "big")) == set()


def test_overwrites_move_the_payload_between_the_hash_and_its_own_key(
    redis_server: RedisServer,
    store_factory: MakeStore,
    raw: Any,
    prefix: str,
    lasting: Callable[[Any, Any], set[bytes]],
) -> None:
    store = store_factory(redis_server.url, "ow", key_prefix=prefix)
    artifact, payload_key = f"{{{prefix}:ow}}:a:s".encode(), f"{{{prefix}:ow}}:p:s".encode()
    small = b"small"
    (binary, binary_payload), (text, text_payload) = large("bytes", "l"), large("text", "l")
    store.save("s", Message(content=small))
    store.save("s", binary, overwrite=True)
    assert set(raw.hkeys(artifact)) == {b"head", b"id"}  # the inline payload field is gone
    assert store.get("s") == binary
    store.save("s", text, overwrite=True, ttl=60)
    assert raw.get(payload_key) == text_payload
    assert store.get("s") == text
    store.save("s", Message(content=small), overwrite=True)
    assert not raw.exists(payload_key)  # the old payload key is gone with the overwrite
    assert raw.hget(artifact, "payload") == small
    assert raw.pttl(artifact) == -1  # no ttl: permanent again
    store.save_many({"s": binary, "t": text}, overwrite=True)
    assert raw.get(payload_key) == binary_payload
    assert store.get_many(["s", "t"]) == {"s": binary, "t": text}
    assert raw.zcard(f"{{{prefix}:ow}}:idx") == 2
    assert uploads_of(raw, prefix, "ow") == set()
    assert store.clear() == 2
    assert lasting(raw, keys_of(raw, prefix, "ow")) == set()


def test_payload_key_expires_with_its_artifact(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = store_factory(redis_server.url, "ttl", key_prefix=prefix)
    store.save("long", large("text", "long")[0], ttl=3600)
    artifact, payload_key = f"{{{prefix}:ttl}}:a:long".encode(), f"{{{prefix}:ttl}}:p:long".encode()
    # One expiry instant for both keys (PEXPIRETIME is Redis 7; compare the remaining time instead). Both are
    # read by one script, inside which the server's clock stands still: two separate PTTL calls would differ
    # by however long the test process waited between them on a loaded machine.
    both = raw.eval("return {redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2])}", 2, artifact, payload_key)
    assert abs(both[0] - both[1]) <= 5
    assert 3_590_000 < raw.pttl(payload_key) <= 3_600_000
    store.save("short", large("bytes", "short")[0], ttl=0.05)
    short = f"{{{prefix}:ttl}}:p:short".encode()
    wait_for(lambda: raw.pttl(short) == -2, 10, "the payload key to expire")
    assert raw.pttl(f"{{{prefix}:ttl}}:a:short") == -2
    with pytest.raises(ArtifactNotFoundError):
        store.get("short")
    assert [info.step_id for info in store.list()] == ["long"]
    store.save("later", Message(content=b"x"))  # writes prune expired index entries
    assert raw.zscore(f"{{{prefix}:ttl}}:idx", "short") is None


# -- retries and lost replies ---------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_commit_whose_reply_was_lost_is_not_a_conflict_when_retried(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, overwrite: bool
) -> None:
    store = store_factory(redis_server.url, "lost", key_prefix=prefix)
    message = large("bytes", "lost")[0]
    if overwrite:
        store.save("step", Message(content=b"before"))
    plan = store._plan("step", message, overwrite, None)
    assert plan.upload is not None
    # The first attempt ran on the server (upload and commit), but its reply was lost...
    raw.set(plan.upload, plan.payload, px=60_000)
    assert raw.eval(COMMIT.source, len(plan.keys), *plan.keys, *plan.args) == SAVE_WRITTEN
    # ...so the retry uploads again (same upload key) and commits again.
    assert store._send([plan]) == [SAVE_WRITTEN if overwrite else SAVE_KEPT]
    assert store.get("step") == message
    assert uploads_of(raw, prefix, "lost") == set()


@pytest.mark.parametrize("lost", [1, 2])
def test_an_upload_that_vanished_before_its_commit_is_sent_again_once(
    redis_server: RedisServer,
    store_factory: MakeStore,
    raw: Any,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    lost: int,
) -> None:
    store = store_factory(redis_server.url, "vanish", key_prefix=prefix)
    plan = store._plan("step", large("bytes", "v")[0], False, None)
    assert plan.upload is not None
    # Without its upload, the commit changes nothing and says so.
    assert raw.eval(COMMIT.source, len(plan.keys), *plan.keys, *plan.args) == SAVE_UPLOAD_MISSING
    assert keys_of(raw, prefix, "vanish") == set()
    # The server accepts the upload, but the commit does not find it (as if it expired during a long stall):
    # the first `lost` uploads are sent to another key.
    elsewhere = plan.upload + b"-elsewhere"
    real_roundtrip = store._roundtrip
    redirected = 0

    def lose_upload(commands: Any) -> Any:
        nonlocal redirected
        sent = []
        for command in commands:
            if command[:2] == ("SET", plan.upload) and redirected < lost:
                redirected += 1
                command = ("SET", elsewhere, *command[2:])
            sent.append(command)
        return real_roundtrip(sent)

    monkeypatch.setattr(store, "_roundtrip", lose_upload)
    (result,) = store._send([plan])
    monkeypatch.undo()
    raw.delete(elsewhere)
    if lost == 1:
        assert result == SAVE_WRITTEN  # uploaded once more, then committed
        assert store.get("step").content == plan.payload
    else:
        assert isinstance(result, BackendError)  # lost twice: an error, and nothing saved
        assert "lost the uploaded payload of 'step' twice" in str(result)
        assert not store.exists("step")
    assert uploads_of(raw, prefix, "vanish") == set()


def test_scripts_flushed_between_upload_and_commit_are_sent_again(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = store_factory(redis_server.url, "noscript", key_prefix=prefix)
    saved = {}
    for kind in ("bytes", "text"):
        raw.script_flush()
        saved[kind], _ = large(kind, "n")
        store.save(kind, saved[kind])
    raw.script_flush()
    saved["m1"] = large("bytes", "m1")[0]
    store.save_many({"m1": saved["m1"], "m2": Message(content=b"small")})
    assert store.get_many(list(saved)) == saved
    assert uploads_of(raw, prefix, "noscript") == set()


# -- a writer killed between upload and commit ------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import artifactstore_redis.store as store_module
    from artifactstore_core import Message
    from artifactstore_redis import RedisSettings, RedisStore

    url, prefix, ttl_ms, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store_module._UPLOAD_TTL_MS = ttl_ms
    store = RedisStore(RedisSettings(url=url, key_prefix=prefix), namespace="killed")

    real_roundtrip = store._roundtrip

    def die_between_upload_and_commit(commands):
        if commands[0][0] == "SET":  # the upload: it reaches the server, the commit behind it never does
            real_roundtrip(commands[:1])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_roundtrip(commands)

    store._roundtrip = die_between_upload_and_commit
    store.save("victim", Message(content=os.urandom(size)))
    """
)


@pytest.mark.timeout(60)
def test_an_upload_left_by_a_killed_writer_is_never_visible_and_expires(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    ttl_ms = 1500
    writer = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, redis_server.url, prefix, str(ttl_ms), str(LARGE)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert writer.returncode == -9, writer.stderr.decode()
    (upload,) = uploads_of(raw, prefix, "killed")  # the killed writer's upload is all that is left...
    assert 0 < raw.pttl(upload) <= ttl_ms  # ...and it expires by itself
    assert raw.strlen(upload) == LARGE
    store = store_factory(redis_server.url, "killed", key_prefix=prefix)
    assert not store.exists("victim")
    with pytest.raises(ArtifactNotFoundError):
        store.get("victim")
    with pytest.raises(ArtifactNotFoundError):
        store.get_many(["victim"])
    assert list(store.list()) == []
    assert store.clear() == 0
    store.save("victim", Message(content=b"a later save is not disturbed"))
    assert store.get("victim").content == b"a later save is not disturbed"
    wait_for(lambda: not raw.exists(upload), 30, "the abandoned upload to expire")
    assert store.get("victim").content == b"a later save is not disturbed"


# -- concurrency ------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["bytes", "text"])
def test_a_create_race_of_large_payloads_has_exactly_one_winner(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str, kind: str
) -> None:
    writers = 6
    stores = [store_factory(redis_server.url, "race", key_prefix=prefix) for _ in range(writers)]
    for round_ in range(3):
        step_id = f"r{round_}"
        messages = [large(kind, f"{step_id}-{w}")[0] for w in range(writers)]
        outcomes: list[Any] = [None] * writers
        start = threading.Barrier(writers)

        def write(
            w: int, step_id: str = step_id, messages: list[Message] = messages, start: threading.Barrier = start
        ) -> None:
            start.wait()
            try:
                stores[w].save(step_id, messages[w])
                outcomes[w] = "won"  # noqa: B023 - each round joins its threads before the next
            except ArtifactExistsError as exc:
                outcomes[w] = exc  # noqa: B023

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [w for w, outcome in enumerate(outcomes) if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert all(isinstance(outcome, ArtifactExistsError) for w, outcome in enumerate(outcomes) if w != winners[0])
        assert stores[0].get(step_id) == messages[winners[0]]
    # Identical saves racing all succeed: one wrote, the others were kept.
    same = large(kind, "same")[0]
    errors: list[BaseException] = []

    def write_same(w: int) -> None:
        try:
            stores[w].save("same", same)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write_same, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert stores[0].get("same") == same
    assert uploads_of(raw, prefix, "race") == set()  # every loser removed its upload


def test_a_read_that_raced_a_change_is_read_again_at_one_instant(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    store = store_factory(redis_server.url, "torn", key_prefix=prefix)
    first, second = payload_of("first", LARGE), payload_of("second", LARGE)
    store.save("s", Message(content=first))
    old_head = raw.hget(f"{{{prefix}:torn}}:a:s", "head")
    store.save("s", Message(content=second), overwrite=True)
    member = store._member("s")
    # The interleavings a reader of two keys can meet: old head with the new payload, a payload deleted
    # in between, and an artifact deleted in between. Each is read again, atomically.
    assert store._decode_apart("s", member, old_head, second).content == second
    assert store._decode_apart("s", member, old_head, None).content == second
    # A head and payload that match were both current at some instant between the reads: that is the read.
    assert store._decode_apart("s", member, old_head, first).content == first
    # So is one whose head get_many verified before it read the payloads (to size their pipelines).
    old_header = store.codec.decode_head(old_head, place=(store.namespace, "s"))
    assert store._decode_apart("s", member, old_head, second, old_header).content == second
    store.save("s", Message(content=b"inline now"), overwrite=True)
    assert store._decode_apart("s", member, old_head, second).content == b"inline now"
    store.delete("s")
    with pytest.raises(ArtifactNotFoundError):
        store._decode_apart("s", member, old_head, second)


@pytest.mark.timeout(60)
def test_get_many_returns_the_order_requested_with_large_and_small_artifacts_mixed(
    redis_server: RedisServer, store_factory: MakeStore, raw: Any, prefix: str
) -> None:
    # Large artifacts are read after the small ones of their batch: the dict came back small ones first,
    # unlike every other backend's, and so did the missing ids when a large one was deleted in between.
    store = store_factory(redis_server.url, "order", key_prefix=prefix, batch_size=3)
    messages = {
        step_id: Message(content=payload_of(step_id, LARGE if step_id.startswith("big") else 10))
        for step_id in ["big 1", "small 1", "big 2", "small 2", "small 3", "big 3", "small 4"]
    }
    store.save_many(messages)
    wanted = ["big 3", "small 4", "big 1", "small 1", "big 2", "small 3", "small 2"]
    found = store.get_many(wanted)
    assert list(found) == wanted
    assert found == messages

    real = store._roundtrip

    def roundtrip(commands: Any) -> list[Any]:
        if commands[0][0] == "GET":  # "big 1" is deleted between its head's read and its payload's
            raw.delete(f"{{{prefix}:order}}:a:big%201", f"{{{prefix}:order}}:p:big%201")
        return real(commands)

    store._roundtrip = roundtrip  # type: ignore[method-assign]
    with pytest.raises(ArtifactNotFoundError) as missing:
        store.get_many(["big 1", "gone", "small 1"])
    assert missing.value.missing_ids == ("big 1", "gone")


@pytest.mark.timeout(120)
def test_get_many_reads_large_payloads_in_pipelines_of_at_most_the_byte_cap(
    redis_server: RedisServer, store_factory: MakeStore, prefix: str
) -> None:
    # save_many sends a pipeline once it holds _PIPELINE_BYTES (16 MiB) of payload; get_many read every
    # payload key of a batch (up to BATCH_SIZE) in one pipeline: 500 artifacts of 1 MB arrived as one
    # reply of 500 MB. The heads, read first, tell the sizes: the payload reads are cut at the same cap.
    store = store_factory(redis_server.url, "many large", key_prefix=prefix)
    size = 1_000_000
    per_pipeline = -(-store_module._PIPELINE_BYTES // size)  # the pipeline that reaches the cap is sent
    count = 2 * per_pipeline + 3
    messages = {f"big {i}": Message(content=payload_of(f"big {i}", size)) for i in range(count)}
    messages |= {f"small {i}": Message(content=f"small {i}") for i in range(5)}
    store.save_many(messages)
    real = store._roundtrip
    gets: list[tuple[int, int]] = []  # per round trip of GETs: how many, and the bytes of their replies

    def roundtrip(commands: Any) -> list[Any]:
        replies = real(commands)
        if commands[0][0] == "GET":
            gets.append((len(commands), sum(len(reply) for reply in replies if isinstance(reply, bytes))))
        return replies

    store._roundtrip = roundtrip  # type: ignore[method-assign]
    found = store.get_many(list(messages))
    assert found == messages
    assert gets == [(per_pipeline, per_pipeline * size)] * 2 + [(3, 3 * size)]
    assert max(received for _, received in gets) < store_module._PIPELINE_BYTES + size


@pytest.mark.timeout(120)
def test_readers_never_see_a_torn_artifact_while_it_is_overwritten_and_deleted(
    redis_server: RedisServer, store_factory: MakeStore, prefix: str
) -> None:
    writer_store = store_factory(redis_server.url, "churn", key_prefix=prefix)
    reader_store = store_factory(redis_server.url, "churn", key_prefix=prefix)
    versions = [payload_of(f"v{n}", size) for n, size in enumerate((LARGE, LARGE * 2, 10, LARGE * 7))]
    writer_store.save("s", Message(content=versions[0]))
    stop = threading.Event()
    problems: list[str] = []
    reads = {"found": 0, "missing": 0, "read again": 0}
    real_script = reader_store._script

    def counting_script(script: Any, keys: Any, args: Any) -> Any:
        if script is READ:
            reads["read again"] += 1
        return real_script(script, keys, args)

    reader_store._script = counting_script  # type: ignore[method-assign]

    def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 7 == 0:
                writer_store.delete("s")
            writer_store.save("s", Message(content=versions[n % len(versions)]), overwrite=True)

    def read() -> None:
        while not stop.is_set():
            try:
                # get_many reads heads and payload keys in two pipelines: the widest window for a tear.
                content = reader_store.get_many(["s"])["s"].content
            except ArtifactNotFoundError:
                reads["missing"] += 1
                continue
            except Exception as exc:  # a torn read would surface here as ArtifactCorruptedError
                problems.append(repr(exc))
                continue
            reads["found"] += 1
            if content not in versions:
                problems.append(f"read {len(content)} bytes matching no version")

    threads = [threading.Thread(target=churn), *(threading.Thread(target=read) for _ in range(2))]
    for thread in threads:
        thread.start()
    try:
        # Until the race this test is about (a change between the two reads) has happened a few times.
        wait_for(lambda: reads["found"] >= 300 and reads["read again"] >= 3, 90, "300 reads, 3 of them racing")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert problems == []


def test_a_forked_child_uploads_on_its_own_connections(redis_server: RedisServer, store_factory: MakeStore) -> None:
    import multiprocessing
    import warnings

    store = store_factory(redis_server.url, f"fork-{uuid.uuid4().hex[:6]}")
    store.save("parent", Message(content=payload_of("parent", LARGE)))  # the parent holds pooled connections
    child = multiprocessing.get_context("fork").Process(target=_save_large_in_child, args=(store,))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert store.get("child").content == payload_of("child", LARGE)
    store.save("parent-again", Message(content=payload_of("again", LARGE)))  # the parent's pool still works
    assert store.get("parent-again").content == payload_of("again", LARGE)


def _save_large_in_child(store: RedisStore) -> None:
    store.save("child", Message(content=payload_of("child", LARGE)))
    assert store.get("parent").content == payload_of("parent", LARGE)
