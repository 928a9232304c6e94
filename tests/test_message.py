"""Message: deep immutability, defaults, typed payloads."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import pickle
import re
import subprocess
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_serializer

from artifactstore_core import FrozenDict, Message, SchemaInfo, SchemaMismatchError, SerializationError
from artifactstore_core import message as message_module
from artifactstore_core.envelope import Codec
from artifactstore_core.message import canonical_json, freeze_json, loads_frozen, trusted_message
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


@pytest.mark.parametrize(
    "bad", ["text/plain\n", "text/plain\r\nX-Evil: 1", "a/\x1b[31mb", "a/b\x00", "a/\x7f", "a/\x85"]
)
def test_media_type_with_a_control_character_is_refused(bad: str) -> None:
    # A newline or an escape sequence in a media type was accepted, and broke line-by-line listings (ls).
    with pytest.raises(ValidationError, match="control character"):
        Message(content=b"x", media_type=bad)


@pytest.mark.parametrize("odd", ["x", "text/é", "application/x; charset=utf-8", " a/b "])
def test_media_type_is_otherwise_free_form(odd: str) -> None:
    # Stored artifacts and callers use free-form values; only control characters are refused.
    assert Message(content=b"x", media_type=odd).media_type == odd


def test_an_artifact_stored_with_a_control_character_in_its_media_type_still_reads() -> None:
    # Stored before the check: decoding builds the message without validation, so it is not lost.
    from artifactstore_core.envelope import Codec

    plain = Message(content=b"x")
    odd = trusted_message(plain.content, None, plain.metadata, "text/plain\n", plain.created_at)
    codec = Codec()
    assert codec.decode_bytes(codec.encode(odd).to_bytes()).media_type == "text/plain\n"


def test_empty_media_type_means_the_default_of_the_content_kind() -> None:
    assert Message(content=b"x", media_type="").media_type == "application/octet-stream"


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


@pytest.mark.parametrize(("first", "second"), [(1, True), (1, 1.0), (True, 1.0), (0.0, -0.0), (0, False)])
def test_same_artifact_is_strict_about_json_types_in_metadata_and_schema(first: object, second: object) -> None:
    def schema(value: object) -> SchemaInfo:
        return SchemaInfo(name="S", json_schema={"const": value})

    assert schema(first) == schema(second)  # pydantic's ==, which same_artifact must not use
    assert Message(content=1, schema=schema(first)).same_artifact(Message(content=1, schema=schema(first)))
    assert not Message(content=1, schema=schema(first)).same_artifact(Message(content=1, schema=schema(second)))
    assert not Message(content=1, metadata={"n": first}).same_artifact(Message(content=1, metadata={"n": second}))
    assert not Message(content=1, schema=schema(first)).same_artifact(Message(content=1))
    assert Message(content=1, schema=SchemaInfo(name="S")).same_artifact(
        Message(content=1, schema=SchemaInfo(name="S", version=None, json_schema=None))
    )


def test_model_copy_with_an_update_validates_like_construction() -> None:
    base = Message(content={"rows": [1]}, metadata={"run": "a"}, media_type="application/x-rows")
    rows = [1, 2]
    copied = base.model_copy(update={"content": {"rows": rows}, "metadata": {"tags": ["x"]}})
    assert isinstance(copied.content, FrozenDict)
    assert copied.content["rows"] == (1, 2)
    assert isinstance(copied.metadata, FrozenDict)
    assert copied.metadata["tags"] == ("x",)
    rows.append(3)
    assert copied.content["rows"] == (1, 2)
    # Fields not updated keep their values; the original is untouched.
    assert (copied.media_type, copied.created_at) == (base.media_type, base.created_at)
    assert base.content == {"rows": (1,)}
    local = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert base.model_copy(update={"created_at": local}).created_at.tzinfo is UTC
    assert base.model_copy(update={"content": bytearray(b"ab")}).content == b"ab"
    for bad in (
        {"content": {1, 2}},
        {"content": float("nan")},
        {"metadata": ["not", "a", "mapping"]},
        {"metadata": {"k": "\ud800"}},
        {"created_at": datetime(2026, 1, 1)},
        {"no_such_field": 1},
    ):
        with pytest.raises(ValidationError):
            base.model_copy(update=bad)
    # copy.replace (Python 3.13) goes through model_copy(update=...).
    assert isinstance(base.__replace__(content=[1, [2]]).content, tuple)
    # Without an update: a copy equal to the original.
    assert base.model_copy() == base
    assert base.model_copy(deep=True) == base
    assert base.model_copy(update={}) == base


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


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (Summary, "not the class Summary: pass Summary(...)"),  # was pydantic's "missing ... 'self'"
        ({"title": "t", "words": 3}, "got dict; wrap other content as Message(content=...)"),  # AttributeError
        (None, "got NoneType"),
    ],
    ids=["model-class", "dict", "none"],
)
def test_from_model_of_no_model_instance_is_a_type_error_saying_what_to_pass(given: object, says: str) -> None:
    with pytest.raises(TypeError, match=re.escape(says)):
        Message.from_model(given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        # An instance, None and dict raised AttributeError (on __qualname__ or __module__) or, for dict, a
        # SchemaMismatchError naming builtins.dict, which sent the caller looking for a wrong producer.
        (Summary(title="t", words=3), "not an instance of it: pass Summary, not Summary(...)"),
        (dict, "got the class dict"),
        (None, "got NoneType"),
    ],
    ids=["model-instance", "dict-class", "none"],
)
@pytest.mark.parametrize("check_name", [True, False])
def test_to_model_of_no_model_class_is_a_type_error_saying_what_to_pass(
    given: object, says: str, check_name: bool
) -> None:
    message = Message.from_model(Summary(title="t", words=3))
    with pytest.raises(TypeError, match=re.escape(says)):
        message.to_model(given, check_name=check_name)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=re.escape(says)):
        Message(content={"title": "t", "words": 3}).to_model(given, check_name=check_name)  # type: ignore[call-overload]


class _Colour(enum.Enum):
    RED = "red"


class _Aliased(BaseModel):
    total: int = Field(alias="Total")
    when: datetime | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)

    when: datetime
    colour: _Colour
    ident: uuid.UUID
    amount: Decimal
    big: int


class _Root(RootModel[str]):
    pass


def test_typed_round_trip_of_aliased_and_strict_models() -> None:
    # from_model stores the JSON dump by field name; to_model must read that back: an aliased model was
    # refused (validation expects the alias) and a strict one too (its datetime, enum, UUID and Decimal
    # fields are JSON strings, which only JSON-mode validation accepts for a strict model).
    aliased = _Aliased(Total=3, when=datetime(2026, 1, 2, tzinfo=UTC))
    assert Message.from_model(aliased).to_model(_Aliased) == aliased
    # Content written by hand with the alias is accepted too.
    assert Message(content={"Total": 4}).to_model(_Aliased, check_name=False).total == 4
    strict = _Strict(
        when=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        colour=_Colour.RED,
        ident=uuid.UUID(int=7),
        amount=Decimal("1.10"),
        big=10**40,
    )
    assert Message.from_model(strict).to_model(_Strict) == strict
    # Strictness still applies to what the JSON holds: a string is no int.
    with pytest.raises(SchemaMismatchError, match="1 error"):
        Message(content={**strict.model_dump(mode="json"), "big": "1"}).to_model(_Strict, check_name=False)
    assert Message.from_model(_Root("text")).to_model(_Root) == _Root("text")
    with pytest.raises(SchemaMismatchError):
        Message(content=b"bytes").to_model(_Aliased)


def test_int_too_long_for_json_is_refused_on_construction() -> None:
    # Python writes no int of more than sys.get_int_max_str_digits() digits as JSON: the memory backend
    # stored such a message (and failed its retried save with a BackendError), every other backend refused
    # it at save. Now no backend gets it.
    limit = sys.get_int_max_str_digits()
    huge = 10 ** (limit + 1)
    for bad in ({"content": huge}, {"content": [-huge]}, {"content": 1, "metadata": {"n": huge}}):
        with pytest.raises(ValidationError, match="digits cannot be written as JSON"):
            Message(**bad)
    fits = 10 ** (limit - 1)
    assert Message(content=[fits, -fits]).content == (fits, -fits)
    assert canonical_json(Message(content=fits).content) == str(fits).encode()
    sys.set_int_max_str_digits(0)
    try:
        assert Message(content=huge).content == huge
    finally:
        sys.set_int_max_str_digits(limit)


class _Blob(BaseModel):
    data: bytes


class _Blob64(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    data: bytes


def test_from_model_that_pydantic_cannot_dump_is_a_serialization_error() -> None:
    # A bare UnicodeDecodeError naming neither the model nor the field was all a caller got.
    with pytest.raises(SerializationError, match=r"_Blob as JSON: UnicodeDecodeError.*ser_json_bytes") as info:
        Message.from_model(_Blob(data=b"\xff\x00"))
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    # The way the message recommends round-trips.
    blob = _Blob64(data=b"\xff\x00")
    assert Message.from_model(blob).to_model(_Blob64) == blob


def test_a_schema_name_mismatch_says_what_to_do() -> None:
    # A model saved by a script (recorded as __main__.Summary) and read by code that imports that script as
    # a module was refused with only the two names: the reader was not told why they differ or what to do.
    stored = Message(content={"title": "t", "words": 1}, schema=SchemaInfo(name="__main__.Summary"))
    with pytest.raises(
        SchemaMismatchError, match=r"'__main__\.Summary', not '.*test_message\.Summary': .*script"
    ) as info:
        stored.to_model(Summary)
    assert "define the model in a module both the producer and the reader import" in str(info.value)
    assert "check_name=False" in str(info.value)
    assert stored.to_model(Summary, check_name=False).words == 1
    # Another model altogether: the hint names the way out too, without the __main__ explanation.
    with pytest.raises(SchemaMismatchError, match=r"Summary', not '.*Other'; validate as the model the producer"):
        Message.from_model(Summary(title="t", words=1)).to_model(Other)


def test_to_model_checks_the_schema_version_asked_for() -> None:
    v2 = Message.from_model(Summary(title="t", words=3), version="2")
    assert v2.to_model(Summary, version="2") == Summary(title="t", words=3)
    assert v2.to_model(Summary) == Summary(title="t", words=3)
    with pytest.raises(SchemaMismatchError, match=r"version '2' of .*Summary, not version '3'"):
        v2.to_model(Summary, version="3")
    for unversioned in (Message.from_model(Summary(title="t", words=3)), Message(content={"title": "t", "words": 3})):
        # It read "message holds schema no version of ...Summary".
        with pytest.raises(SchemaMismatchError, match=r"message holds no version of schema .*Summary, not version '2'"):
            unversioned.to_model(Summary, version="2")


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


def _same_frozen(left: object, right: object) -> bool:
    """Equal and of exactly the same types all the way down (1, 1.0 and True differ); no recursion."""
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, FrozenDict) and isinstance(b, FrozenDict):
            if list(a) != list(b):
                return False
            pending.extend((a[key], b[key]) for key in a)
        elif isinstance(a, tuple) and isinstance(b, tuple):
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif isinstance(a, float) and isinstance(b, float):
            if not (a == b and math.copysign(1, a) == math.copysign(1, b)):
                return False
        elif a != b:
            return False
    return True


def _two_pass(data: bytes) -> tuple[str, object]:
    """What decoding did before loads_frozen: json.loads, then the freezing walk."""
    try:
        return "ok", freeze_json(json.loads(str(data, "utf-8")))
    except (ValueError, RecursionError):
        return "refused", None


def _one_pass(data: bytes) -> tuple[str, object]:
    try:
        return "ok", loads_frozen(data)
    except ValueError:
        return "refused", None


def _assert_same_outcome(data: bytes) -> None:
    (expected_kind, expected), (kind, value) = _two_pass(data), _one_pass(data)
    assert kind == expected_kind, data
    assert _same_frozen(value, expected), data


_texts = st.text(max_size=6)
_json_keys = (
    _texts.map(json.dumps)
    | _texts.map(lambda key: json.dumps(key, ensure_ascii=False))
    | st.sampled_from(['"\\ud800"', '"\\udfff"', '"\\ud83d\\ude00"', '"\\\\ud800"', '"a"', '"\\u0061"'])
)
_json_leaf_texts = (
    st.sampled_from(
        [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "-0.0",
            "1.5",
            "1e400",
            "-1e400",
            "1e-400",
            "NaN",
            "Infinity",
            "-Infinity",
            "123456789012345678901234567890",
            "1" * 5000,
            "01",
            "1.",
            '"\\ud800"',
            '"\\udbff x"',
            '"\\ud83d\\ude00"',
            '"\\\\ud800"',
            '"\\u00e9\\n"',
            '"\\x"',
            '"tab\tin"',
        ]
    )
    | st.integers().map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | _texts.map(json.dumps)
    | _texts.map(lambda text: json.dumps(text, ensure_ascii=False))
)
_space = st.sampled_from(["", " ", "\n"])
# JSON text (and near-JSON): duplicate keys, escapes of lone and paired surrogates, NaN, numbers too large for
# a float, white space, trailing garbage.
_json_texts = st.recursive(
    _json_leaf_texts,
    lambda children: (
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.lists(st.tuples(_json_keys, children), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"
        )
    ),
    max_leaves=16,
)
_documents = st.tuples(_space, _json_texts, _space, st.sampled_from(["", "", "x", ",1", "]"])).map("".join)


@settings(max_examples=1500, deadline=None)
@given(text=_documents)
# A value freezing refuses is kept out by a later duplicate key: json.loads keeps the last one.
@example(text='{"":1e400,"":null}')
@example(text='[{"a":NaN,"a":[1]}]')
@example(text='{"a":[1,-Infinity],"a":2}')
def test_loads_frozen_is_exactly_json_loads_then_freeze(text: str) -> None:
    _assert_same_outcome(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(value=json_values, ascii_only=st.booleans())
def test_loads_frozen_of_encoded_json_values(value: object, ascii_only: bool) -> None:
    _assert_same_outcome(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_loads_frozen_of_arbitrary_bytes(data: bytes) -> None:
    _assert_same_outcome(data)


@pytest.mark.parametrize("opener", ["[", '{"k":', '[{"k":'])
@pytest.mark.parametrize("depth", [1, 2, 124, 125, 126, 249, 250, 251, 252, 400, 700, 1_000, 5_000])
def test_loads_frozen_refuses_deep_nesting_as_the_two_passes_do(opener: str, depth: int) -> None:
    closer = {"[": "]", '{"k":': "}", '[{"k":': "}]"}[opener]
    for filler in ("1", "1" + " " * 600):  # short text, and text too long to skip the depth look
        data = (opener * depth + filler + closer * depth).encode()
        _assert_same_outcome(data)
        if len(opener) * depth <= sys.getrecursionlimit() // 4:
            assert _one_pass(data)[0] == "ok"
    assert _one_pass((opener * 5_000 + "1" + closer * 5_000).encode())[0] == "refused"


def test_loads_frozen_parses_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # The point of loads_frozen: ordinary JSON never reaches the freezing walk.
    def walk(value: object, *, where: str = "content") -> object:
        raise AssertionError("freeze_json was called")

    monkeypatch.setattr(message_module, "freeze_json", walk)
    text = json.dumps({"text": "x" * 900, "n": [1, [2.5, {"é": None}]], "tags": ["a", "b"], "k": "\n"})
    value = loads_frozen(text.encode())
    assert value == {"text": "x" * 900, "n": (1, (2.5, {"é": None})), "tags": ("a", "b"), "k": "\n"}
    assert type(value["n"][1][1]) is FrozenDict
    assert type(loads_frozen(b"[[1], 2]")) is tuple


@pytest.mark.timeout(60)
def test_loads_frozen_from_many_threads_at_once() -> None:
    # One scanner serves every thread, and its hooks run Python code, so threads interleave inside a scan
    # (sharing the scanner's key memo): each must still get exactly its own value.
    texts = [json.dumps({f"k{n}-{i}": [i, {f"inner{n}": [str(i)] * 3}] for i in range(40)}).encode() for n in range(4)]
    expected = [freeze_json(json.loads(text)) for text in texts]
    start = threading.Barrier(len(texts))
    mismatches: list[int] = []

    def parse(n: int) -> None:
        start.wait(timeout=30)
        for _ in range(300):
            if not _same_frozen(loads_frozen(texts[n]), expected[n]):
                mismatches.append(n)

    threads = [threading.Thread(target=parse, args=(n,)) for n in range(len(texts))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can, inside scans too
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=50)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    assert mismatches == []


class _Stage(enum.StrEnum):
    TRAIN = "train"


class _Rank(enum.IntEnum):
    FIRST = 1


class _Score(float):
    pass


class _Name(str):
    __slots__ = ()


class _Bytes(bytes):
    pass


def test_subclasses_of_json_types_become_the_plain_values_every_backend_returns() -> None:
    # A dict keyed by StrEnum members was refused ("object keys must be str, not _Stage", though a StrEnum
    # member is a str), while the same keys in an OrderedDict were kept as members; and values kept their
    # subclass, so the memory backend (which keeps messages) returned _Stage.TRAIN where every byte-storing
    # backend returned "train".
    message = Message(content={_Stage.TRAIN: [_Stage.TRAIN, _Rank.FIRST, _Score(0.5)]}, metadata={_Stage.TRAIN: 1})
    assert message.content == {"train": ("train", 1, 0.5)}
    [(key, values)] = message.content.items()
    assert [type(key), *map(type, values)] == [str, str, int, float]
    assert [type(key) for key in message.metadata] == [str]
    decoded = Codec().decode_bytes(Codec().encode(message).to_bytes())
    assert decoded.content == message.content
    assert decoded.same_artifact(message)
    ordered = Message(content=OrderedDict([(_Stage.TRAIN, 1)])).content
    assert [type(key) for key in ordered] == [str]
    assert type(Message(content=_Name("text")).content) is str
    assert type(Message(content=_Bytes(b"raw")).content) is bytes
    assert Message(content=_Name("text")).same_artifact(Message(content="text"))

    # Keys that are one string only as plain str cannot both be written.
    class _Odd(str):
        __slots__ = ()

        def __hash__(self) -> int:
            return 1

        def __eq__(self, other: object) -> bool:
            return other is self

    with pytest.raises(ValidationError, match="two object keys are the same string"):
        Message(content=OrderedDict([(_Odd("k"), 1), (_Odd("k"), 2)]))


_SPAWNED_PRODUCER = """
import multiprocessing

from pydantic import BaseModel

from artifactstore_core import Message


class Report(BaseModel):
    rows: int


def produce(rows):
    return Message.from_model(Report(rows=rows))


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        [message] = pool.map(produce, [3])
    print(message.schema.name)
    print(message.to_model(Report).rows)
"""


@pytest.mark.timeout(90)
def test_a_model_of_the_running_script_has_one_schema_name_in_worker_processes(tmp_path: Path) -> None:
    # A spawned worker (the pipeline's mode="processes") imports the script as __mp_main__, so a model
    # defined there was recorded as __mp_main__.Report, and the parent's to_model(Report) (reading the
    # run's outputs, a resume on threads) raised SchemaMismatchError against __main__.Report.
    script = tmp_path / "producer.py"
    script.write_text(_SPAWNED_PRODUCER, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=80, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["__main__.Report", "3"]


def test_a_schema_name_a_worker_stored_as_mp_main_still_names_the_main_scripts_model() -> None:
    # Artifacts saved by workers before the fix hold __mp_main__.<name>; they still read as the script's model.
    stored = Message(content={"title": "t", "words": 1}, schema=SchemaInfo(name="__mp_main__.Summary"))
    main_summary = type("Summary", (Summary,), {"__module__": "__main__", "__qualname__": "Summary"})
    assert stored.to_model(main_summary).words == 1
    with pytest.raises(SchemaMismatchError, match=r"__mp_main__\.Summary"):
        stored.to_model(Summary)
    worker_summary = type("Summary", (Summary,), {"__module__": "__mp_main__", "__qualname__": "Summary"})
    written = Message.from_model(worker_summary(title="t", words=2))
    assert written.schema is not None
    assert written.schema.name == "__main__.Summary"
    assert written.to_model(main_summary).words == 2


class _Scores(BaseModel):
    mean: float
    spread: list[float]


class _ScoresAsStrings(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")

    mean: float
    spread: list[float]


class _Wrapped(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")

    scores: _Scores


class _WrappedAsStrings(BaseModel):
    scores: _ScoresAsStrings


def test_from_model_stores_nan_and_infinity_as_the_models_json_writes_them() -> None:
    # model_dump(mode="json") leaves NaN and infinities as floats whatever ser_json_inf_nan says, so a model
    # that pydantic round-trips through JSON ("NaN", "Infinity" strings) could not be stored at all.
    for model in (
        _ScoresAsStrings(mean=math.nan, spread=[1.0, math.inf, -math.inf]),
        _WrappedAsStrings(scores=_ScoresAsStrings(mean=math.nan, spread=[])),
    ):
        message = Message.from_model(model)
        codec = Codec()
        back = codec.decode_bytes(codec.encode(message).to_bytes()).to_model(type(model))
        assert back.model_dump_json() == model.model_dump_json()
    assert Message.from_model(_ScoresAsStrings(mean=math.nan, spread=[])).content == {"mean": "NaN", "spread": ()}
    # Where pydantic would write null (its default, here also for a model nested in one that asks for
    # strings), the value would be lost: refused, naming the model and the setting, as a SerializationError
    # like every other dump from_model cannot store (a pipeline step returning it fails with that cause).
    for lossy in (_Scores(mean=math.nan, spread=[]), _Wrapped(scores=_Scores(mean=1.0, spread=[math.inf]))):
        with pytest.raises(SerializationError, match=r"_(Scores|Wrapped) as JSON: .*NaN or infinite.*ser_json_inf_nan"):
            Message.from_model(lossy)
    # A finite model is untouched, and other refusals are still pydantic's.
    assert Message.from_model(_Scores(mean=0.5, spread=[-0.0])).content == {"mean": 0.5, "spread": (-0.0,)}
    with pytest.raises(ValidationError, match="metadata"):
        Message.from_model(_ScoresAsStrings(mean=math.nan, spread=[]), metadata=[1])  # type: ignore[arg-type]


class _Four(BaseModel):
    a: int
    b: int
    c: int
    d: list[int]


def test_schema_mismatch_says_which_fields_fail_and_why() -> None:
    # The message said only "2 error(s)": a pipeline's log of a failed step gave no clue what was wrong.
    with pytest.raises(SchemaMismatchError) as info:
        Message(content={"title": "t", "words": "many"}).to_model(Summary)
    assert str(info.value).endswith(
        ": 1 error(s): words: Input should be a valid integer, unable to parse string as an integer"
    )
    with pytest.raises(
        SchemaMismatchError, match=r"4 error\(s\): a: Field required; b: Field required; c: Field required; and 1 more$"
    ):
        Message(content={"d": ["x"]}).to_model(_Four)
    with pytest.raises(SchemaMismatchError, match=r": 1 error\(s\): \(the content\): Input should be an object$"):
        Message(content=[1]).to_model(_Four, check_name=False)
    # Field paths and pydantic's words only: never the content's values.
    with pytest.raises(SchemaMismatchError) as secret:
        Message(content={"title": "t", "words": "s3cr3t-value"}).to_model(Summary)
    assert "s3cr3t-value" not in str(secret.value)


class _Timestamp(datetime):
    """Like pandas' Timestamp: a datetime subclass whose isoformat() writes nanoseconds."""

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return super().isoformat(sep, timespec).replace("+00:00", "789+00:00")


def test_created_at_of_a_datetime_subclass_is_a_plain_datetime() -> None:
    # The subclass was kept (memory returned it where every other backend returned a datetime), and its own
    # isoformat() went into the envelope's header: a created_at with nine fraction digits, which the
    # format does not specify.
    stamp = _Timestamp(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    message = Message(content=1, created_at=stamp)
    assert type(message.created_at) is datetime
    assert message.created_at == stamp
    encoded = Codec().encode(message)
    assert b'"created_at":"2026-01-02T03:04:05.123456Z"' in encoded.head
    head, _ = Codec().encode_head(
        codec="bytes", media_type="x", schema=None, metadata={}, created_at=stamp, size=0, digest="0" * 64
    )
    assert b'"created_at":"2026-01-02T03:04:05.123456Z"' in head


@pytest.mark.parametrize(
    ("content", "size"),
    [(b"\x00" * 5_000_000, "5,000,000 bytes"), ("t" * 5_000_000, "5,000,000 characters"), (list(range(500_000)), "")],
)
def test_the_repr_of_a_large_message_shows_the_start_of_its_content_and_its_size(content: object, size: str) -> None:
    # pydantic's repr showed the whole content: a large artifact in a log line, a traceback or a pipeline's
    # RunResult printed all of it.
    message = Message(content=content, metadata={"run": 1})
    for text in (repr(message), str(message)):
        assert len(text) < 1_000
        assert size in text
        assert "FrozenDict({'run': 1})" in text
    small = Message(content=b"abc")
    assert repr(small).startswith("Message(content=b'abc', ")


# -- sets and frozensets: one dump whatever the process (from_model) -----------------------------------

_SET_PRODUCER = """
from pydantic import BaseModel
from artifactstore_core import Message
from artifactstore_core.envelope import Codec

class Tagged(BaseModel):
    tags: set[str]
    groups: dict[str, frozenset[str]]

model = Tagged(tags={f"tag-{n}" for n in range(20)}, groups={"g": frozenset({"x", "y", "z", "w"})})
print(Codec().encode(Message.from_model(model)).identity_key)
"""


@pytest.mark.timeout(90)
def test_a_model_with_sets_is_one_artifact_whatever_the_processs_hash_seed() -> None:
    # pydantic dumps a set in its iteration order, which for text follows the process's hash seed: the same
    # model saved by two workers (an identical retry) had two identities, and write-once refused the second.
    keys = set()
    for seed in ("1", "2", "3"):
        done = subprocess.run(
            [sys.executable, "-c", _SET_PRODUCER],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=80,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        keys.add(done.stdout.strip())
    assert len(keys) == 1


class _Member(BaseModel):
    marks: frozenset[int]


@dataclasses.dataclass
class _Plain:
    names: set[str]


class _Sets(BaseModel):
    model_config = ConfigDict(extra="allow")

    numbers: set[int]
    members: list[_Member]
    by_key: dict[int, set[int]]
    plain: _Plain
    maybe: set[float] | None = None
    mixed: set[str | int] = Field(default_factory=set)


class _RootSet(RootModel[set[int]]):
    pass


class _OwnOrder(BaseModel):
    kept: set[int]
    sorted_too: set[int]

    @field_serializer("kept")
    def _as_written(self, value: set[int]) -> list[int]:
        return [8, 1] if value == {1, 8} else sorted(value)


def test_from_model_writes_every_set_in_order_and_reads_it_back() -> None:
    # {1, 8} iterates as 8, 1 (both hash to slot 0 and 1 of an 8-slot table): the dump before the fix.
    model = _Sets(
        numbers={1, 8},
        members=[_Member(marks=frozenset({1, 8}))],
        by_key={3: {1, 8}},
        plain=_Plain(names={"b", "a"}),
        maybe={8.5, 1.5, 16.0},
        mixed={"a", 8, 1},
        extra_field={9, 1},
    )
    message = Message.from_model(model)
    content = message.content
    assert content["numbers"] == (1, 8)
    assert content["members"] == ({"marks": (1, 8)},)
    assert content["by_key"] == {"3": (1, 8)}
    assert content["plain"] == {"names": ("a", "b")}
    assert content["maybe"] == (1.5, 8.5, 16.0)
    assert content["mixed"] == ("a", 1, 8)  # by JSON text: "a" (a quote first), 1, 8
    assert content["extra_field"] == (1, 9)
    back = message.to_model(_Sets)
    # (An extra field has no type to read its list back as a set.)
    assert back.model_dump(exclude={"extra_field"}) == model.model_dump(exclude={"extra_field"})
    assert back.numbers == {1, 8}
    assert Message.from_model(_RootSet({8, 1})).content == (1, 8)
    # A field the model serializes itself is stored as its serializer wrote it.
    own = Message.from_model(_OwnOrder(kept={1, 8}, sorted_too={8, 1})).content
    assert own == {"kept": (8, 1), "sorted_too": (1, 8)}


def test_a_model_without_sets_is_dumped_as_before() -> None:
    assert not message_module._model_holds_set(Summary)
    assert message_module._model_holds_set(_Sets)
    assert Message.from_model(Summary(title="t", words=3)).content == {"title": "t", "words": 3}


class _NanSet(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")

    xs: set[float]


def test_a_set_holding_nan_is_stored_in_order_under_ser_json_inf_nan() -> None:
    # The sets were put in order before the NaN check compared the dump with pydantic's JSON position by
    # position: wherever the order moved the NaN, from_model refused the model for the setting it had.
    for number in range(50):
        content = Message.from_model(_NanSet(xs={float(number), math.nan, 7.5})).content
        # NaN as pydantic's JSON writes it; the members in the order of their JSON text (a quote first).
        assert content["xs"] == ("NaN", *sorted({float(number), 7.5}, key=json.dumps))
        assert Message.from_model(_NanSet(xs={7.5, math.nan, float(number)})).content == content
