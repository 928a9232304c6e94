"""The public store API's argument checks, which the base class makes for every backend."""

from __future__ import annotations

import copy
import enum
import io
import pickle
import re
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from artifactstore_core import (
    ArtifactNotFoundError,
    Capabilities,
    ConfigurationError,
    InvalidStepIdError,
    Message,
    StoreClosedError,
    UnsupportedOperationError,
    create_store,
)
from artifactstore_memory import MemorySpace, MemoryStore


@pytest.mark.parametrize("ids", ["ab", b"ab"])
def test_get_many_refuses_one_id_given_as_a_string(ids: object) -> None:
    # A str is an iterable of str: get_many("extract") looked up "e", "x", "t", ... and reported them missing
    # (or, worse, returned one-letter artifacts that happen to exist).
    with create_store("memory", namespace="get-many-str") as store:
        store.save("a", Message(content=1))
        store.save("b", Message(content=2))
        with pytest.raises(TypeError, match="not one id"):
            store.get_many(ids)  # type: ignore[arg-type]
        assert set(store.get_many(["a", "b"])) == {"a", "b"}
        store.clear()


@pytest.mark.parametrize(
    ("items", "says"),
    [
        # Each was unpacked as it came: ValueError "too many values to unpack" (a Message iterates over its
        # fields) or "not enough values", where the docstring promises TypeError.
        ([Message(content=1), Message(content=2)], "got a Message without its step id"),
        ([("a",)], "got an item of type tuple that is not one"),
        ([1], "got an item of type int that is not one"),
        ("abc", "not a str; use save(step_id, message)"),
        (Message(content=1), "not a Message; use save(step_id, message)"),
    ],
    ids=["messages-without-ids", "one-tuple", "int", "str", "one-message"],
)
def test_save_many_of_what_is_no_pairs_is_a_type_error_saying_what_it_takes(items: object, says: str) -> None:
    with create_store("memory", namespace="save-many-shape") as store:
        with pytest.raises(TypeError, match=re.escape(says)):
            store.save_many(items)  # type: ignore[arg-type]
        assert list(store.list()) == []
        # What it takes: pairs (tuples or lists) and mappings.
        store.save_many([("a", Message(content=1)), ["b", Message(content=2)]])
        store.save_many({"c": Message(content=3)})
        assert sorted(info.step_id for info in store.list()) == ["a", "b", "c"]
        store.clear()


@pytest.mark.parametrize("backend", ["memory", "filesystem"])
def test_a_store_refuses_to_be_pickled_saying_how_a_worker_gets_one(backend: str, tmp_path: Path) -> None:
    # Passing a store to a spawned process or a process pool failed with pickle's "cannot pickle
    # '_thread.lock' object", which named neither the store nor what to do instead.
    options = {"root": str(tmp_path)} if backend == "filesystem" else {}
    with create_store(backend, namespace="run-8", **options) as store:
        for send in (pickle.dumps, copy.deepcopy):
            with pytest.raises(TypeError, match=r"cannot be pickled") as info:
                send(store)
            text = str(info.value)
            assert f"backend {backend!r}, namespace 'run-8'" in text
            assert "create_store(" in text
            assert "_thread.lock" not in text
        # copy.copy keeps giving the shallow copy it gave before, sharing the store's clients.
        clone = copy.copy(store)
        clone.save("a", Message(content=1))
        assert store.get("a").content == 1
        store.clear()


class _PicklableStore(MemoryStore):
    """A backend's store that can be pickled: it sends its namespace and rebuilds itself when loaded."""

    def __getstate__(self) -> dict[str, str]:  # type: ignore[override]
        return {"namespace": self.namespace}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(namespace=state["namespace"])  # type: ignore[misc]


class _SlottedStore(MemoryStore):
    __slots__ = ("__private", "tag")

    def __init__(self, namespace: str) -> None:
        super().__init__(namespace=namespace)
        self.tag = "kept"
        self.__private = "kept too"

    def private(self) -> str:
        return self.__private


def test_a_store_that_can_be_pickled_says_so_and_a_copy_keeps_slots() -> None:
    # The refusal is the base's __getstate__: a backend whose store reconnects when loaded overrides it (the
    # refusal in __reduce__ overrode theirs), and copy.copy keeps what the reduce-based copy kept.
    loaded = pickle.loads(pickle.dumps(_PicklableStore(namespace="sent")))
    assert (type(loaded), loaded.namespace) == (_PicklableStore, "sent")
    loaded.close()
    slotted = _SlottedStore("slots")
    clone = copy.copy(slotted)
    assert (clone.tag, clone.private(), clone.namespace) == ("kept", "kept too", "slots")
    slotted.close()


def test_a_signed_artifact_read_without_the_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # "artifact is signed; set ARTIFACT_STORE_SIGNING_KEY ..." alone did not say which artifact, namespace
    # or backend, where a damaged artifact's error does: a batch read's log line could not be traced.
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "example")
    with create_store(namespace="signed-unnamed", signing_key="k") as signed:
        signed.save("s", Message(content={"a": 1}))
        with create_store(namespace="signed-unnamed") as reader:
            for operation, call in (("get", reader.get), ("get_many", lambda step_id: reader.get_many([step_id]))):
                with pytest.raises(ConfigurationError) as info:
                    call("s")
                assert str(info.value) == (
                    f"{operation}: artifact 's' in namespace 'signed-unnamed' of backend 'example': artifact is "
                    "signed; set ARTIFACT_STORE_SIGNING_KEY to the signing key to read it"
                )
                assert (info.value.step_id, info.value.namespace, info.value.backend) == (
                    "s",
                    "signed-unnamed",
                    "example",
                )
        signed.clear()


@pytest.mark.parametrize("stream", [iter([b"a", b"b"]), [b"ab"], b"ab"])
def test_save_stream_refuses_what_has_no_read_before_anything_is_read(stream: object) -> None:
    # An iterable of chunks (a generator) is a natural guess for "stream": it failed as a SerializationError
    # "reading the stream ... failed: AttributeError", which reads as a broken source.
    with create_store("memory", namespace="save-stream-no-read") as store:
        with pytest.raises(TypeError, match=r"save_stream needs a binary file object with read\(\)"):
            store.save_stream("s", stream)  # type: ignore[arg-type]
        assert not store.exists("s")


def test_entering_a_closed_store_raises_store_closed() -> None:
    # "later calls raise StoreClosedError": a `with` on a closed store returned it, and the mistake surfaced
    # (if at all) at the first operation inside, away from where the store was reused.
    store = create_store("memory", namespace="enter-closed")
    with store:
        store.save("a", Message(content=1))
        store.clear()
    with pytest.raises(StoreClosedError, match="'enter-closed' of backend 'memory' is closed"):
        store.__enter__()
    store.close()  # still idempotent


class _TtlRecorder(MemoryStore):
    """A memory store that declares native TTL and records the seconds each save was given."""

    capabilities = Capabilities(native_ttl=True)

    def __init__(self) -> None:
        super().__init__(namespace="ttl-values", space=MemorySpace())
        self.seconds: list[float | None] = []

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        self.seconds.append(ttl)


@pytest.mark.parametrize(
    ("ttl", "error"),
    [
        (10**400, ValueError),  # float() raised OverflowError, which the docs do not name
        (-(10**400), ValueError),  # positive is what it must be, not shorter
        (10**5000, ValueError),  # more digits than repr() writes: the message must not quote it
        (True, TypeError),  # was one second
        ("60", TypeError),  # was parsed as 60 seconds
        (b"60", TypeError),
        ([60], TypeError),
    ],
    ids=["huge", "huge-negative", "beyond-repr", "bool", "str", "bytes", "list"],
)
def test_a_ttl_that_is_no_duration_is_refused_as_documented(ttl: object, error: type[Exception]) -> None:
    store = _TtlRecorder()
    calls = [
        lambda: store.save("t", Message(content=1), ttl=ttl),  # type: ignore[arg-type]
        lambda: store.save_many({"t": Message(content=1)}, ttl=ttl),  # type: ignore[arg-type]
        lambda: store.save_stream("t", io.BytesIO(b"x"), ttl=ttl),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(error, match="ttl") as info:
            call()
        if isinstance(ttl, int) and ttl < 0:
            assert "must be positive" in str(info.value)
    assert store.seconds == []


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [(60, 60.0), (1.5, 1.5), (timedelta(minutes=2), 120.0), (Decimal("2.5"), 2.5), (Fraction(3, 2), 1.5)],
)
def test_a_ttl_in_seconds_of_any_real_number_type_is_taken(ttl: object, seconds: float) -> None:
    store = _TtlRecorder()
    store.save("t", Message(content=1), ttl=ttl)  # type: ignore[arg-type]
    assert store.seconds == [seconds]


@pytest.mark.parametrize("backend", ["memory", "filesystem"])
def test_a_ttl_on_a_backend_without_native_ttl_names_the_step_and_namespace(backend: str, tmp_path: Path) -> None:
    # docs/errors.md: every error has step_id, namespace and backend where they apply, and says them. This
    # one had only the backend ("backend 'memory' has no native TTL; save without ttl"): a pipeline's log
    # line did not say which step's save was refused, nor in which execution.
    options = {"root": str(tmp_path)} if backend == "filesystem" else {}
    with create_store(backend, namespace="run-7", **options) as store:
        calls = {
            "save": (lambda: store.save("train", Message(content=1), ttl=60), "train"),
            "save_stream": (lambda: store.save_stream("train", io.BytesIO(b"x"), ttl=60), "train"),
            "save_many": (lambda: store.save_many({"train": Message(content=1)}, ttl=60), None),
        }
        for operation, (call, step_id) in calls.items():
            with pytest.raises(UnsupportedOperationError) as info:
                call()
            error = info.value
            assert (error.step_id, error.namespace, error.backend) == (step_id, "run-7", backend)
            target = f" of {step_id!r}" if step_id is not None else ""
            assert str(error).startswith(f"{operation}{target} in namespace 'run-7' with a ttl: "), str(error)
            assert f"backend {backend!r} has no native TTL" in str(error)
        assert list(store.list()) == []


@pytest.mark.parametrize("backend", ["memory", "filesystem"])
def test_an_invalid_id_given_to_a_store_names_its_namespace_and_backend(backend: str, tmp_path: Path) -> None:
    # The ids module checks the id and knows no store: the error of store.get("") had namespace and backend
    # None, unlike every other error of a store's call (docs/errors.md).
    options = {"root": str(tmp_path)} if backend == "filesystem" else {}
    with create_store(backend, namespace="run-7", **options) as store:
        calls = [
            lambda: store.get(""),
            lambda: store.save("bad\x00id", Message(content=1)),
            lambda: store.get_many(["a", "bad\x00"]),
            lambda: store.save_many([("d", Message(content=1)), ("d", Message(content=1))]),
            lambda: list(store.list_page(after="")),
            lambda: store.open("\x00"),
        ]
        for call in calls:
            with pytest.raises(InvalidStepIdError) as info:
                call()
            assert (info.value.namespace, info.value.backend) == ("run-7", backend), info.value
        assert list(store.list()) == []


class _Step(str, enum.Enum):  # noqa: UP042  (the mixin, not StrEnum: it formats as "_Step.TRAIN" on 3.12+)
    TRAIN = "train"
    SCORE = "score"


@pytest.mark.parametrize("backend", ["memory", "filesystem"])
def test_a_str_enum_member_as_id_is_its_plain_value(backend: str, tmp_path: Path) -> None:
    # A (str, Enum) member formats as "_Step.TRAIN" in f-strings on Python 3.12 and newer, and the memory
    # backend handed the member itself back from list(): ids are their plain str everywhere.
    options = {"root": str(tmp_path)} if backend == "filesystem" else {}
    with create_store(backend, namespace="enum-ids", **options) as store:
        store.save(_Step.TRAIN, Message(content=b"t"))
        store.save_many({_Step.SCORE: Message(content=b"s")})
        ids = [info.step_id for info in store.list()]
        assert sorted(ids) == ["score", "train"]
        assert all(type(step_id) is str for step_id in ids)
        assert store.get("train").content == b"t"
        assert set(store.get_many([_Step.TRAIN, "score"])) == {"train", "score"}
        assert [type(key) for key in store.get_many([_Step.TRAIN])] == [str]
        assert [info.step_id for info in store.list_page(after=_Step.SCORE, limit=5)] == ["train"]


def test_not_found_errors_end_with_the_store_s_nothing_found_note() -> None:
    # The hook by which a store says why finding nothing may be its configuration's doing (the filesystem
    # store's missing root); the command line warns with it beside an empty listing.
    class NotedStore(MemoryStore):
        note: str | None = "the example setting names no storage"

        def nothing_found_note(self) -> str | None:
            return self.note

    with MemoryStore(namespace="no-note") as plain:
        assert plain.nothing_found_note() is None
        with pytest.raises(ArtifactNotFoundError) as info:
            plain.get("x")
        assert str(info.value) == "no artifact 'x' in namespace 'no-note' of backend 'memory'"
    with NotedStore(namespace="noted") as store:
        for call, words in (
            (lambda: store.get("x"), "no artifact 'x'"),
            (lambda: store.get_many(["x", "y"]), "no artifacts 'x', 'y'"),
        ):
            with pytest.raises(ArtifactNotFoundError) as info:
                call()
            assert str(info.value) == f"{words} in namespace 'noted' of backend 'memory'; {NotedStore.note}"
        store.note = None
        with pytest.raises(ArtifactNotFoundError, match=r"'memory'$"):
            store.info("x")


def test_open_with_header_on_a_store_that_decodes_hashes_the_payload_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A store without streaming reads the artifact whole and describes it: the header's digest was computed
    # again after the decode had verified the very same bytes (two passes over every payload the artifact
    # server streams from redis, or the CLI's get writes out).
    from artifactstore_core import envelope

    payload = bytes(range(256)) * 4096  # 1 MiB
    hashed: list[int] = []
    digest = envelope._digest

    def counted(data: bytes | memoryview) -> str:
        hashed.append(len(data))
        return digest(data)

    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "example")
    with create_store(namespace="open-once") as store:
        assert not store.capabilities.streaming
        store.save("big", Message(content=payload))
        monkeypatch.setattr(envelope, "_digest", counted)
        header, stream = store.open_with_header("big")
        with stream:
            assert stream.read() == payload
        assert [size for size in hashed if size == len(payload)] == [len(payload)]
        assert header.digest == digest(payload)
        store.clear()
