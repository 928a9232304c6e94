"""Message: deep immutability, defaults, typed payloads."""

from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from artifactstore_core import FrozenDict, Message, SchemaInfo, SchemaMismatchError


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
