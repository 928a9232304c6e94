"""Message: deep immutability, defaults, typed payloads."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from pydantic import BaseModel, ValidationError

from artifactstore_core import FrozenDict, Message, SchemaInfo, SchemaMismatchError
from artifactstore_core.message import canonical_json, freeze_json, trusted_message
from artifactstore_core.testing import json_values


class Summary(BaseModel):
    title: str
    words: int


class Other(BaseModel):
    title: str
    words: int


def test_json_content_is_deeply_frozen() -> None:
    source = {"a": [1, {"b": [2]}]}
    message = Message(content=source, metadata={"m": [1]})
    source["a"].append(99)  # type: ignore[attr-defined]
    assert message.content == {"a": (1, {"b": (2,)})}
    assert isinstance(message.content["a"], tuple)
    with pytest.raises(TypeError):
        message.content["a"][1]["b"] = 3
    with pytest.raises(ValidationError):
        message.metadata = {}  # type: ignore[misc]
    assert hash(message.content) == hash(Message(content={"a": [1, {"b": [2]}]}).content)


def test_bytes_like_content_is_copied_to_bytes() -> None:
    buffer = bytearray(b"abc")
    message = Message(content=buffer)
    buffer[0] = 0
    assert message.content == b"abc"
    assert Message(content=memoryview(b"xyz")).content == b"xyz"


@pytest.mark.parametrize(
    ("content", "media_type"),
    [(b"x", "application/octet-stream"), ("x", "text/plain; charset=utf-8"), ({"x": 1}, "application/json")],
)
def test_default_media_types(content: object, media_type: str) -> None:
    assert Message(content=content).media_type == media_type
    assert Message(content=content, media_type="a/b").media_type == "a/b"


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1: "int key"}, {"set": {1}}, object()])
def test_non_json_content_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        Message(content=bad)


def test_created_at_is_utc_and_aware() -> None:
    local = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert Message(content=1, created_at=local).created_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    with pytest.raises(ValidationError):
        Message(content=1, created_at=datetime(2026, 1, 1))


def test_same_artifact_is_strict_about_json_types() -> None:
    assert Message(content={"a": 1}).same_artifact(Message(content={"a": 1}))
    assert not Message(content={"a": 1}).same_artifact(Message(content={"a": True}))
    assert not Message(content={"a": 1}).same_artifact(Message(content={"a": 1.0}))
    assert not Message(content="1").same_artifact(Message(content=b"1"))


def test_typed_round_trip_and_mismatch() -> None:
    message = Message.from_model(Summary(title="t", words=3), version="2", include_json_schema=True)
    assert message.schema is not None
    assert message.schema.name.endswith("test_message.Summary")
    assert message.schema.version == "2"
    assert message.schema.json_schema is not None
    assert message.to_model(Summary) == Summary(title="t", words=3)
    with pytest.raises(SchemaMismatchError, match="Summary"):
        message.to_model(Other)
    assert message.to_model(Other, check_name=False) == Other(title="t", words=3)
    with pytest.raises(SchemaMismatchError):
        Message(content={"title": "t"}).to_model(Summary)


def test_schema_name_is_never_imported() -> None:
    # A stored schema naming a module is only compared, never imported.
    message = Message(content={"title": "t", "words": 1}, schema=SchemaInfo(name="os.system"))
    with pytest.raises(SchemaMismatchError):
        message.to_model(Summary)


def test_to_python_gives_mutable_copies() -> None:
    message = Message(content={"a": [1]})
    plain = message.to_python()
    plain["a"].append(2)
    assert message.content == {"a": (1,)}


def test_frozen_dict_behaves_as_a_mapping() -> None:
    frozen = FrozenDict({"a": 1})
    assert frozen == {"a": 1}
    assert dict(frozen) == {"a": 1}
    assert pickle.loads(pickle.dumps(frozen)) == frozen  # test-only: the library itself never pickles
    assert "FrozenDict" in repr(frozen)


def test_model_dump_json_is_plain_json() -> None:
    message = Message(content={"a": [1]}, metadata={"b": {"c": 1}}, schema=SchemaInfo(name="n", json_schema={"x": 1}))
    dumped = message.model_dump(mode="json")
    assert dumped["content"] == {"a": [1]}
    assert dumped["metadata"] == {"b": {"c": 1}}


@pytest.mark.parametrize(
    "build",
    [
        lambda: Message(content="half a pair: \ud800"),
        lambda: Message(content={"text": "\udfff"}),
        lambda: Message(content={"\ud83d": 1}),
        lambda: Message(content=["ok", ("nested", "\udc00")]),
        lambda: Message(content=b"ok", metadata={"note": "\ud83d"}),
        lambda: Message(content=b"ok", metadata={"\ud83d": "key"}),
        lambda: Message(content=b"ok", media_type="text/\ud800"),
        lambda: Message(content=b"ok", schema=SchemaInfo(name="m.\ud800")),
        lambda: Message(content=b"ok", schema=SchemaInfo(name="m.M", version="\udfff")),
    ],
)
def test_text_utf8_cannot_encode_is_refused_when_the_message_is_built(build: Callable[[], Message]) -> None:
    # No backend can store a lone surrogate; refusing it here makes every backend (memory too) agree.
    with pytest.raises(ValidationError, match=r"lone surrogate|unicode"):
        build()


def test_paired_surrogates_and_other_unicode_are_fine() -> None:
    message = Message(content={"emoji": "\U0001f600", "é": "ü"}, metadata={"ß": "日本"}, media_type="text/é")
    assert message.content["emoji"] == "\U0001f600"


def test_trusted_message_is_model_construct() -> None:
    fields = {
        "content": freeze_json({"a": [1, 2]}),
        "schema": SchemaInfo(name="m.M"),
        "metadata": FrozenDict({"k": "v"}),
        "media_type": "application/json",
        "created_at": datetime(2026, 11, 25, tzinfo=UTC),
    }
    fast = trusted_message(**fields)
    slow = Message.model_construct(**fields)
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert pickle.loads(pickle.dumps(fast)) == slow
    assert fast.model_copy(update={"media_type": "x"}).media_type == "x"
    with pytest.raises(ValidationError):
        fast.media_type = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "data",
    [{"k": "\ud800"}, {"\udfff": 1}, {"k": math.nan}, {"k": {1, 2}}, {1: "int key"}, {"k": [object()]}],
)
def test_frozen_dict_checks_what_it_is_given(data: dict[object, object]) -> None:
    # Everything else trusts a FrozenDict to hold frozen JSON, so its public constructor checks it.
    with pytest.raises(ValueError, match=r"FrozenDict"):
        FrozenDict(data)  # type: ignore[arg-type]


def test_frozen_dict_freezes_nested_values() -> None:
    frozen = FrozenDict({"a": [1, {"b": [2]}]})
    assert frozen["a"] == (1, FrozenDict({"b": (2,)}))
    assert isinstance(frozen["a"][1], FrozenDict)


def test_content_nested_past_the_recursion_limit_is_refused_as_invalid() -> None:
    deep: object = 1
    for _ in range(5_000):
        deep = [deep]
    with pytest.raises(ValidationError, match="nested too deeply"):
        Message(content=deep)
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(ValidationError, match="nested too deeply"):
        Message(content={"a": circular})


@settings(max_examples=500, deadline=None)
@given(value=json_values)
def test_canonical_json_is_exactly_json_dumps(value: object) -> None:
    # The docstring's promise: the C-encoder fast path writes what json.dumps with these settings writes,
    # for plain values and for their frozen form.
    expected = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )
    assert canonical_json(value) == expected
    assert canonical_json(freeze_json(value)) == expected
