"""The :class:`Message`: the unit of data that flows between pipeline steps.

A message is frozen and deeply immutable: JSON objects become :class:`FrozenDict` and arrays become
tuples, so no mutable container can be reached from it. That is what lets the memory backend hand out the
very object that was saved, and lets many threads share one message without copies.
"""

from __future__ import annotations

import dataclasses
import json
import json.encoder
import json.scanner
import math
import re
import sys
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Self, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from .errors import SchemaMismatchError, SerializationError

__all__ = [
    "FrozenDict",
    "JsonValue",
    "Message",
    "SchemaInfo",
    "canonical_json",
    "check_text",
    "freeze_json",
    "loads_frozen",
    "thaw_json",
]

#: A JSON value as stored in a message: ``None``, ``bool``, ``int``, finite ``float``, ``str``, a tuple of
#: JSON values, or a :class:`FrozenDict` of ``str`` to JSON values.
JsonValue = Union[None, bool, int, float, str, tuple["JsonValue", ...], "FrozenDict"]

Model = TypeVar("Model", bound=BaseModel)

MEDIA_TYPE_BYTES = "application/octet-stream"
MEDIA_TYPE_TEXT = "text/plain; charset=utf-8"
MEDIA_TYPE_JSON = "application/json"


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping used for JSON objects inside a message.

    It compares equal to any mapping with the same items (``FrozenDict({"a": 1}) == {"a": 1}``).

    Raises:
        ValueError: if ``data`` is not a JSON object (see ``freeze_json``): values are checked and frozen
            on construction, because everything else trusts a FrozenDict to hold frozen JSON.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        frozen = freeze_json(dict(data), where="FrozenDict") if data else None
        self._data: dict[str, Any] = frozen._data if frozen is not None else {}
        self._hash: int | None = None

    @classmethod
    def _adopt(cls, data: dict[str, Any]) -> FrozenDict:
        # Takes ownership of a dict nobody else holds (freeze_json builds it), saving a copy per object.
        frozen = cls.__new__(cls)
        frozen._data = data
        frozen._hash = None
        return frozen

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (self._data,))


# A lone surrogate is a str code point that UTF-8 cannot encode, so no backend could store it.
_SURROGATE = re.compile("[\ud800-\udfff]")


#: Unicode category Cc (C0 controls, DEL, C1 controls), refused in a media type.
_MEDIA_TYPE_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_text(value: str, *, where: str = "content") -> str:
    """Return ``value`` if UTF-8 can encode it.

    Raises:
        ValueError: if ``value`` holds a lone surrogate (a half of a UTF-16 pair, as ``"\\ud800"``).
    """
    # isascii() is a C scan that settles almost every string; only non-ASCII text pays for the search.
    if not value.isascii() and _SURROGATE.search(value) is not None:
        raise ValueError(f"{where}: text holds a lone surrogate, which UTF-8 cannot encode")
    return value


def freeze_json(value: Any, *, where: str = "content") -> Any:
    """Return a deeply immutable copy of a JSON value (dicts to :class:`FrozenDict`, lists to tuples).

    Subclasses of ``str``, ``int`` and ``float``, as values or keys (a ``StrEnum`` or ``IntEnum`` member, a
    NumPy float), become the plain ``str``, ``int`` or ``float`` JSON writes for them.

    Raises:
        ValueError: if ``value`` is not a JSON value: a non-str key (or two keys that are one string), a
            NaN or infinite float, a string (or key) with a lone surrogate, an int of more digits than
            ``sys.get_int_max_str_digits()`` allows in decimal (Python could not write it as JSON), or a
            type JSON cannot hold. (Inside a :class:`Message` this surfaces as a pydantic
            ``ValidationError``.) Also for a value nested deeper than the interpreter's recursion limit,
            or one that contains itself.
    """
    try:
        return _freeze(value, where)
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply (or contains itself)") from None


# Python refuses to write an int of more than sys.get_int_max_str_digits() digits in decimal, so JSON
# encoding (every backend but memory) would fail at save, or a retried save on memory, when comparing.
# That limit is 640 digits at the lowest; a smaller int needs no look.
_ALWAYS_DECIMAL = 10**639


def _check_int(value: int, where: str) -> int:
    try:
        str(value)
    except ValueError:
        raise ValueError(
            f"{where}: an integer of more than {sys.get_int_max_str_digits()} digits cannot be written as JSON "
            "(sys.set_int_max_str_digits)"
        ) from None
    return value


def _freeze(value: Any, where: str) -> Any:
    kind = type(value)
    # Exact-type fast paths first: this runs for every value of every JSON message saved or read.
    if kind is str:
        return value if value.isascii() else check_text(value, where=where)
    if kind is int:
        return value if -_ALWAYS_DECIMAL < value < _ALWAYS_DECIMAL else _check_int(value, where)
    if kind is bool or value is None:
        return value
    if kind is dict:
        for key in value:
            if type(key) is not str:
                # A str subclass key (a StrEnum member) is made a plain str there, anything else refused.
                return _freeze_mapping(value, where)
            if not key.isascii():
                check_text(key, where=where)
        return FrozenDict._adopt({key: _freeze(item, where) for key, item in value.items()})
    if kind is list or kind is tuple:
        return tuple([_freeze(item, where) for item in value])
    # Subclasses of str, int and float (a StrEnum or IntEnum member, a NumPy float) become the plain value
    # JSON writes for them: that is what every byte-storing backend gives back, so a message holds the
    # same values on every backend (memory keeps messages, it would have returned the subclass), and
    # compares as stored (same_artifact).
    if isinstance(value, str):
        return check_text(str.__str__(value), where=where)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        value = int.__int__(value)
        return value if -_ALWAYS_DECIMAL < value < _ALWAYS_DECIMAL else _check_int(value, where)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a JSON number")
        return float.__float__(value)
    if isinstance(value, Mapping):
        if isinstance(value, FrozenDict):
            return value
        return _freeze_mapping(value, where)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item, where) for item in value)
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def _freeze_mapping(value: Mapping[Any, Any], where: str) -> FrozenDict:
    frozen = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: object keys must be str, not {type(key).__name__}")
        frozen[check_text(str.__str__(key), where=where)] = _freeze(item, where)
    if len(frozen) != len(value):
        # Two keys that differ as objects but are one string (a str subclass with its own __eq__): JSON
        # would write the key twice and a reader keep only the last value.
        raise ValueError(f"{where}: two object keys are the same string")
    return FrozenDict._adopt(frozen)


# Parsing JSON straight into frozen values (see loads_frozen). The standard library's C scanner calls
# object_hook for every object it completes, parse_float for every number with a fraction or exponent and
# parse_constant for NaN and the infinities; arrays it always builds as lists, so each object turns the
# arrays among its values into tuples (and loads_frozen turns a top-level array).
_C_SCANNER = getattr(json.scanner, "c_make_scanner", None)
# A lone surrogate in parsed text can only come from a \u escape of D800-DFFF (UTF-8 decoding refuses an
# encoded one); text without such an escape needs no check. A match may also be an escaped backslash
# followed by "ud8..", which only costs the exact path.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _frozen_array(items: list[Any]) -> tuple[Any, ...]:
    # Objects inside are frozen already (the scanner completed them); only nested arrays remain lists.
    for item in items:
        if type(item) is list:
            return tuple([_frozen_array(item) if type(item) is list else item for item in items])
    return tuple(items)


def _frozen_object(data: dict[str, Any]) -> FrozenDict:
    for key, value in data.items():
        if type(value) is list:
            # Replacing a value does not resize the dict, so iterating on is safe.
            data[key] = _frozen_array(value)
    # FrozenDict._adopt written out: this runs for every object of every JSON message read.
    frozen = _new_object(FrozenDict)
    frozen._data = data
    frozen._hash = None
    return frozen


class _NotFastError(Exception):
    """Raised by a scanner hook to send the text the exact way (which refuses it, or keeps a later duplicate)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: a JSON number too large for a float
        raise _NotFastError
    return value


def _no_constant(name: str) -> Any:
    raise _NotFastError


_FROZEN_SCAN = (
    _C_SCANNER(json.JSONDecoder(object_hook=_frozen_object, parse_float=_finite_float, parse_constant=_no_constant))
    if _C_SCANNER is not None
    else None
)


def _deeper_than(value: FrozenDict | tuple[Any, ...], limit: int) -> bool:
    """Whether a frozen value nests arrays and objects more than ``limit`` deep (level by level, no recursion)."""
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        append = inner.append
        for container in level:
            for item in container._data.values() if type(container) is FrozenDict else container:
                kind = type(item)
                if kind is tuple or kind is FrozenDict:
                    append(item)
        level = inner
    return False


def loads_frozen(data: bytes | memoryview) -> Any:
    """Parse UTF-8 JSON into a frozen value: exactly ``freeze_json(json.loads(str(data, "utf-8")))``, faster.

    Raises:
        ValueError: if ``data`` is not UTF-8 (``UnicodeDecodeError``) or not JSON (``json.JSONDecodeError``),
            or holds what ``freeze_json`` refuses (a lone surrogate, NaN or an infinite number), or is nested
            too deeply.
    """
    # Decoded here, not by the caller: UTF-8 decoding refuses surrogates, so the text can only hold one
    # through a \u escape, which is what the check below looks for.
    text = str(data, "utf-8")
    # One pass, the scanner building frozen values through its hooks, where that gives what the two
    # passes would. The hooks never see strings, so text with an escaped surrogate goes the exact way
    # ("\\" is a memchr, the escape search runs only on text with a backslash).
    if _FROZEN_SCAN is not None and ("\\" not in text or _ESCAPED_SURROGATE.search(text) is None):
        try:
            value, end = _FROZEN_SCAN(text, 0)
            if type(value) is list:
                value = _frozen_array(value)
        except (StopIteration, ValueError, RecursionError, _NotFastError):
            # Not JSON, deep, or a NaN, which is refused unless a later duplicate key replaces it: the exact
            # way decides (and words the error). Only such rare texts pay for both ways.
            end = -1
        if end == len(text):
            if type(value) is not FrozenDict and type(value) is not tuple:
                return value
            # The scanner alone accepts values nested up to the recursion limit, where freeze_json's walk
            # (and thaw_json) take two frames a level before Python 3.12 and refuse half as deep. Values
            # nested deeper than a quarter of the limit go the exact way, which refuses as it always did;
            # text too short to nest that deep (each level takes two brackets) needs no look.
            shallow = sys.getrecursionlimit() // 4
            if len(text) <= 2 * shallow or not _deeper_than(value, shallow):
                return value
        # Anything unusual (surrounding white space, trailing data, not JSON, deep nesting) goes the exact way.
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None
    return freeze_json(value)


def _json_default(value: Any) -> Any:
    if type(value) is FrozenDict:
        # Its own dict, not a copy: the encoder only reads it.
        return value._data
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# The standard library's C encoder, called directly with the canonical settings. It is built per call: its
# markers dict (the check for circular containers) is state of one encoding, so one encoder must not be
# shared by threads. json.dumps would also build a JSONEncoder around it on every call, which was most of
# the cost of encoding a small message. Where the C encoder is missing (other interpreters), json.dumps
# with the same settings produces the same bytes.
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)


def _canonical_text(value: Any) -> str:
    if _C_ENCODER is not None:
        encoder = _C_ENCODER({}, _json_default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
        return "".join(encoder(value, 0))
    return json.dumps(  # pragma: no cover - interpreters without the C encoder
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False, default=_json_default
    )


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 JSON encoding of a (frozen or plain) JSON value: compact, keys sorted.

    Equal JSON values of the same types encode identically, which is what write-once comparisons use.
    The bytes are exactly ``json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
    allow_nan=False)`` encoded as UTF-8 (with frozen mappings encoded as objects).

    Raises:
        TypeError, ValueError: if ``value`` is not a JSON value (a lone surrogate raises
            ``UnicodeEncodeError``, a ``ValueError``).
    """
    return _canonical_text(value).encode("utf-8")


def thaw_json(value: Any) -> Any:
    """Return a plain, mutable copy of a frozen JSON value (FrozenDict to dict, tuples to lists)."""
    if isinstance(value, Mapping):
        return {key: thaw_json(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(item) for item in value]
    return value


class SchemaInfo(BaseModel):
    """What schema a message's content follows. Survives every backend unchanged.

    Attributes:
        name: a stable name for the schema, by default the model's ``module.QualName``. Only ever
            compared, never imported.
        version: an optional version string.
        json_schema: an optional JSON Schema document of the content.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str | None = None
    json_schema: Any = None

    @field_validator("json_schema", mode="before")
    @classmethod
    def _freeze_schema(cls, value: Any) -> Any:
        return freeze_json(value, where="json_schema")

    @field_validator("name", "version")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        return value if value is None else check_text(value, where="schema")

    @field_serializer("json_schema")
    def _serialize_schema(self, value: Any) -> Any:
        return thaw_json(value)


def _same_schema(first: SchemaInfo | None, second: SchemaInfo | None) -> bool:
    """Whether two schemas are stored the same: SchemaInfo's own ``==`` compares the JSON Schema documents
    with Python's ``==``, for which ``{"const": 1}``, ``{"const": 1.0}`` and ``{"const": True}`` are equal."""
    if first is second:
        return True
    if first is None or second is None:
        return False
    return (
        first.name == second.name
        and first.version == second.version
        and canonical_json(first.json_schema) == canonical_json(second.json_schema)
    )


# The name multiprocessing's spawn and forkserver workers import the main script under: a model defined in
# the script that runs is __mp_main__.Name in a worker and __main__.Name in the parent, one class all the same.
_WORKER_MAIN, _MAIN = "__mp_main__.", "__main__."


def _schema_name(model: type[BaseModel]) -> str:
    module = model.__module__
    return f"{'__main__' if module == '__mp_main__' else module}.{model.__qualname__}"


def _check_model_instance(model: object) -> None:
    """Refuse what ``from_model`` cannot take with a TypeError saying what to pass: the model class itself
    failed inside pydantic ("model_dump() missing 1 required positional argument: 'self'"), and a dict with
    an AttributeError, neither of which said what was wrong."""
    if isinstance(model, BaseModel):
        return
    if isinstance(model, type) and issubclass(model, BaseModel):
        raise TypeError(
            f"from_model takes an instance of a pydantic model, not the class {model.__qualname__}: "
            f"pass {model.__qualname__}(...)"
        )
    raise TypeError(
        f"from_model takes an instance of a pydantic model, got {type(model).__name__}; "
        "wrap other content as Message(content=...)"
    )


def _check_model_class(model: object) -> None:
    """Refuse what ``to_model`` cannot validate as with a TypeError saying what to pass (an instance, or
    ``None``, failed with an AttributeError on ``__qualname__`` or ``__module__``; ``dict`` with a
    SchemaMismatchError naming ``builtins.dict``, or an AttributeError with ``check_name=False``)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return
    if isinstance(model, BaseModel):
        name = type(model).__qualname__
        raise TypeError(f"to_model takes a pydantic model class, not an instance of it: pass {name}, not {name}(...)")
    what = f"the class {model.__qualname__}" if isinstance(model, type) else type(model).__name__
    raise TypeError(f"to_model takes a pydantic model class, got {what}")


def _same_schema_name(stored: str, expected: str) -> bool:
    """Whether a stored schema name names the model of ``expected`` (:func:`_schema_name`); a name stored by a
    worker before worker names were written as ``__main__`` counts as the main script's."""
    if stored.startswith(_WORKER_MAIN):
        stored = _MAIN + stored[len(_WORKER_MAIN) :]
    return stored == expected


def _name_mismatch(stored: str, expected: str) -> str:
    """The message of a ``to_model`` refused for its schema name, saying what to do about it."""
    text = f"message holds schema {stored!r}, not {expected!r}"
    if stored.rpartition(".")[2] == expected.rpartition(".")[2] and _MAIN in (
        stored[: len(_MAIN)],
        expected[: len(_MAIN)],
    ):
        # The usual cause: the producer ran the script that defines the model (recorded as __main__), and the
        # reader imports the model from that file as a module (or the other way round). The name alone
        # cannot tell it is the same class, so say how to make the names agree.
        return (
            f"{text}: one side defined the model in the script it ran ('__main__'); define the model in a "
            "module both the producer and the reader import, or pass check_name=False if it is the same model"
        )
    return f"{text}; validate as the model the producer used, or pass check_name=False to skip the name check"


#: How many of a validation's errors a SchemaMismatchError names (the pydantic error chained has them all).
_ERRORS_SHOWN = 3


def _validation_summary(exc: ValidationError) -> str:
    """Where and why content failed validation (``rows: Field required``), for the first errors: the count
    alone left a pipeline's log without a clue. No input values: only the field path and pydantic's words."""
    parts = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False)[:_ERRORS_SHOWN]:
        where = ".".join(str(part) for part in error["loc"]) or "(the content)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


# Core schema types of the containers pydantic dumps as a list in their iteration order, which for text
# (hash-randomised per process) differs from one process to the next.
_SET_SCHEMAS = frozenset({"set", "frozenset"})
_HOLDS_SET: weakref.WeakKeyDictionary[type[BaseModel], bool] = weakref.WeakKeyDictionary()
_MISSING = object()


def _schema_holds_set(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("type") in _SET_SCHEMAS or any(_schema_holds_set(item) for item in node.values())
    if isinstance(node, (list, tuple)):
        return any(_schema_holds_set(item) for item in node)
    return False


def _model_holds_set(model_cls: type[BaseModel]) -> bool:
    """Whether a model of ``model_cls`` can hold a set or frozenset anywhere (looked up once per class)."""
    holds = _HOLDS_SET.get(model_cls)
    if holds is None:
        holds = _HOLDS_SET[model_cls] = _schema_holds_set(getattr(model_cls, "__pydantic_core_schema__", None))
    return holds


def _set_order(items: list[Any]) -> list[Any]:
    """``items`` (the JSON dump of a set's members) in an order that does not depend on the process: numbers
    or text in their natural order, anything else by its JSON text."""
    kinds = {type(item) for item in items}
    if kinds <= {str} or (kinds <= {int, float} and all(math.isfinite(item) for item in items)):
        return sorted(items)
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, ensure_ascii=False, default=repr))


def _own_serializers(cls: type) -> set[str] | None:
    """The fields of ``cls`` that its own code serializes (``None``: the whole object is)."""
    decorators = getattr(cls, "__pydantic_decorators__", None)
    if decorators is None:
        return set()
    if decorators.model_serializers:
        return None
    fields = {name for serializer in decorators.field_serializers.values() for name in serializer.info.fields}
    return None if "*" in fields else fields


def _fields_in_order(value: Any, dumped: Mapping[str, Any], names: Iterable[tuple[str, str]]) -> Any:
    custom = _own_serializers(type(value))
    if custom is None:
        return dumped
    out = dict(dumped)
    for name, key in names:
        if name not in custom and key in out:
            out[key] = _sets_in_order(getattr(value, name, _MISSING), out[key])
    return _like(dumped, out)


def _sets_in_order(value: Any, dumped: Any) -> Any:
    """``dumped`` (pydantic's JSON dump of ``value``) with every list it made of a set or frozenset in the
    order of :func:`_set_order`.

    A set has no order, but pydantic dumps it in its iteration order, which for text changes with each
    process's hash seed: the same model saved from two processes was two different artifacts (an identical
    retry from another worker was refused as a conflict). Walks ``value`` beside its dump; wherever the two
    do not have the same shape (a field the model serializes with its own code, an alias it does not use) the
    dump is left as it was written.
    """
    if isinstance(value, (set, frozenset)):
        if not isinstance(dumped, (list, tuple)) or len(dumped) != len(value):
            return dumped
        items = _set_order([_sets_in_order(item, out) for item, out in zip(value, dumped, strict=True)])
        return items if type(dumped) is list else tuple(items)
    if not isinstance(dumped, (Mapping, list, tuple)):
        return dumped
    if isinstance(value, BaseModel):
        model_cls = type(value)
        if not _model_holds_set(model_cls):
            return dumped  # (each row of a long list of models is skipped by one cached lookup)
        if model_cls.__pydantic_root_model__:
            return _sets_in_order(getattr(value, "root", _MISSING), dumped)
        if not isinstance(dumped, Mapping):
            return dumped
        # model_dump(mode="json") writes field names unless the model's config asks for its aliases.
        by_alias = model_cls.model_config.get("serialize_by_alias", False)
        names = [
            (name, (info.serialization_alias or info.alias or name) if by_alias else name)
            for name, info in model_cls.__pydantic_fields__.items()
        ]
        names += [(name, name) for name in value.__pydantic_extra__ or ()]
        return _fields_in_order(value, dumped, iter(names))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not isinstance(dumped, Mapping):
            return dumped
        return _fields_in_order(value, dumped, ((field.name, field.name) for field in dataclasses.fields(value)))
    if isinstance(value, Mapping):
        if not isinstance(dumped, Mapping) or len(value) != len(dumped):
            return dumped
        # A dict's dump keeps its order; its keys may be written otherwise (an int key as text).
        out = {key: _sets_in_order(item, out) for item, (key, out) in zip(value.values(), dumped.items(), strict=True)}
        return _like(dumped, out)
    if isinstance(value, (list, tuple)) and not isinstance(dumped, Mapping) and len(value) == len(dumped):
        items = [
            out if isinstance(item, _SCALARS) else _sets_in_order(item, out)
            for item, out in zip(value, dumped, strict=True)
        ]
        return items if type(dumped) is list else tuple(items)
    return dumped


_SCALARS = (str, int, float, bool, type(None), bytes)


def _like(dumped: Any, out: dict[Any, Any]) -> Any:
    """``out`` as the mapping type of ``dumped`` (a FrozenDict where the dump was parsed frozen)."""
    return out if type(dumped) is dict else type(dumped)(out)


def _holds_non_finite(value: Any) -> bool:
    """Whether a plain JSON-like value (a model's dump) holds a NaN or infinite float anywhere."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_holds_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_non_finite(item) for item in value)
    return False


def _written_as_strings(dumped: Any, written: Any) -> bool:
    """Whether ``written`` (pydantic's JSON of a model, parsed) holds a string wherever ``dumped`` (its
    ``model_dump(mode="json")``) holds a NaN or infinite float: the model's JSON keeps them, not ``null``."""
    if isinstance(dumped, float) and not math.isfinite(dumped):
        return type(written) is str
    if isinstance(dumped, dict):
        return isinstance(written, Mapping) and all(
            key in written and _written_as_strings(item, written[key]) for key, item in dumped.items()
        )
    if isinstance(dumped, (list, tuple)):
        return (
            isinstance(written, tuple)
            and len(written) == len(dumped)
            and all(_written_as_strings(item, other) for item, other in zip(dumped, written, strict=True))
        )
    return True


def _non_finite_as_strings(model: BaseModel, dumped: Any, name: str) -> Any:
    """The content of ``model``, whose dump ``dumped`` holds a NaN or infinity, as pydantic's JSON writes it.

    Raises:
        SerializationError: that JSON does not keep them as strings (``null``, pydantic's default, would
            store another value; ``NaN`` literals are not JSON).
    """
    try:
        written = loads_frozen(model.model_dump_json().encode("utf-8"))
        kept = _written_as_strings(dumped, written)
    except (ValueError, RecursionError):  # NaN literals (ser_json_inf_nan="constants") are not JSON
        kept = False
    if not kept:
        raise SerializationError(
            f"cannot store {name} as JSON: it holds a NaN or infinite float, which JSON cannot hold; set "
            'ser_json_inf_nan="strings" in the model_config of the models holding them (pydantic then writes '
            '"NaN" and "Infinity", and reads them back), or store another value'
        )
    return written


# How much of a message's content its repr shows (characters of the content's own repr).
_REPR_CONTENT = 300


class _ShortRepr:
    """Stands for a large content in a message's repr: the start of the content's repr and its size."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text

    @staticmethod
    def of(value: Any) -> Any:
        if isinstance(value, (bytes, str)):
            if len(value) <= _REPR_CONTENT:
                return value
            unit = "bytes" if isinstance(value, bytes) else "characters"
            # The slice bounds the work, the cut the text (a NUL byte takes four characters of repr).
            return _ShortRepr(f"{repr(value[:_REPR_CONTENT])[:_REPR_CONTENT]}... ({len(value):,} {unit})")
        text = repr(value)
        if len(text) <= _REPR_CONTENT:
            return value
        return _ShortRepr(f"{text[:_REPR_CONTENT]}... ({len(text):,} characters of repr)")


with warnings.catch_warnings():
    # Message.schema is the documented field name; it deliberately replaces pydantic v1's deprecated
    # BaseModel.schema() classmethod on this class.
    warnings.filterwarnings("ignore", message='Field name "schema"')

    class Message(BaseModel):
        """A step's output: content plus what describes it. Frozen and deeply immutable.

        Attributes:
            content: a JSON value (frozen), a ``str``, or ``bytes``. ``bytearray`` and ``memoryview`` are
                copied into ``bytes``; JSON objects become :class:`FrozenDict`, arrays tuples.
            schema: optional :class:`SchemaInfo`.
            metadata: a mapping of str to JSON values (frozen).
            media_type: free-form text without control characters (e.g. ``type/subtype``); empty (the
                default) means the default of the content kind: ``application/octet-stream`` for bytes,
                ``text/plain; charset=utf-8`` for str, ``application/json`` otherwise.
            created_at: timezone-aware, normalised to a plain ``datetime`` in UTC; defaults to now.

        Constructing a message with invalid content raises pydantic's ``ValidationError`` (a
        ``ValueError``): a value JSON cannot hold (a set, NaN, a non-str key, an int of more digits than
        ``sys.get_int_max_str_digits()``, 4300 by default, which Python cannot write as JSON), or text
        UTF-8 cannot encode (a lone surrogate in content, metadata, media type or schema), which no backend
        could store, or a media type holding a control character (Unicode category Cc: a newline, a tab,
        an escape).
        An empty media type (the default) means the default of the content kind.
        """

        model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

        content: Any
        schema: SchemaInfo | None = None  # type: ignore[assignment]  # replaces the deprecated method
        metadata: Any = Field(default_factory=FrozenDict)
        media_type: str = ""
        created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

        @field_validator("content", mode="before")
        @classmethod
        def _freeze_content(cls, value: Any) -> Any:
            # A bytes or str subclass becomes the plain value, as freeze_json makes JSON values plain.
            if isinstance(value, bytes):
                return value if type(value) is bytes else bytes(memoryview(value))
            if isinstance(value, str):
                return check_text(value if type(value) is str else str.__str__(value))
            if isinstance(value, (bytearray, memoryview)):
                return bytes(value)
            return freeze_json(value)

        @field_validator("metadata", mode="before")
        @classmethod
        def _freeze_metadata(cls, value: Any) -> Any:
            if value is None:
                return FrozenDict()
            if not isinstance(value, Mapping):
                raise ValueError("metadata must be a mapping of str to JSON values")
            return freeze_json(value, where="metadata")

        @field_validator("media_type")
        @classmethod
        def _encodable_media_type(cls, value: str) -> str:
            # No media type form has a control character, and one (a newline, an escape sequence) broke the
            # listings that show it line by line: ``artifactstore ls`` on a terminal. The shape is not
            # checked further (``type/subtype``): stored artifacts and callers use free-form values.
            control = _MEDIA_TYPE_CONTROL.search(value)
            if control is not None:
                raise ValueError(f"media_type: contains the control character {control.group()!r}")
            return check_text(value, where="media_type")

        @field_validator("created_at")
        @classmethod
        def _utc(cls, value: datetime) -> datetime:
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError("created_at must be timezone-aware")
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                # 9999-12-31 23:59 at UTC-1 is a year 10000 in UTC: a ValueError, so pydantic reports it.
                raise ValueError("created_at is out of range in UTC") from None
            if type(value) is not datetime:
                # A subclass (pandas' Timestamp) is made a plain datetime, as freeze_json makes JSON values
                # plain: byte-storing backends give back a datetime, and its own isoformat() (nanoseconds)
                # would otherwise write a created_at the format does not specify.
                value = datetime(*value.timetuple()[:6], value.microsecond, tzinfo=UTC)
            return value

        @model_validator(mode="after")
        def _default_media_type(self) -> Message:
            if not self.media_type:
                if isinstance(self.content, bytes):
                    kind = MEDIA_TYPE_BYTES
                elif isinstance(self.content, str):
                    kind = MEDIA_TYPE_TEXT
                else:
                    kind = MEDIA_TYPE_JSON
                # The model is frozen; this is its own validator completing construction.
                object.__setattr__(self, "media_type", kind)
            return self

        def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
            # pydantic's repr (and str, and rich's) shows every field in full: a 1 GB artifact in a log line,
            # a traceback, a notebook or a pipeline's RunResult would print 1 GB. Content is cut to its first
            # characters past _REPR_CONTENT, with its size; smaller content shows exactly as before.
            for name, value in super().__repr_args__():
                yield name, (_ShortRepr.of(value) if name == "content" else value)

        def same_artifact(self, other: Message) -> bool:
            """Whether ``other`` stores the same artifact: equal content, schema, metadata and media type.

            JSON values (content, metadata, the JSON Schema document) are compared as they are stored, by
            their canonical JSON: ``1``, ``1.0`` and ``True`` differ, though Python calls them equal.
            ``created_at`` is ignored, so a retried or re-run save of the same output is recognised as
            identical. Used by the write-once rule of every backend.
            """
            if self is other:
                return True
            if type(self.content) is not type(other.content):
                return False
            if self.media_type != other.media_type or not _same_schema(self.schema, other.schema):
                return False
            # JSON values compare by canonical encoding: 1, 1.0 and True are equal in Python but not as stored.
            if self.metadata is not other.metadata and canonical_json(self.metadata) != canonical_json(other.metadata):
                return False
            if isinstance(self.content, (bytes, str)):
                return bool(self.content == other.content)
            return canonical_json(self.content) == canonical_json(other.content)

        def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
            """A copy of this message with the fields in ``update`` replaced, validated as construction is.

            pydantic's own ``model_copy(update=...)`` skips validation, which would put a caller's mutable
            dict or list into a message (and the memory backend stores messages by reference). Here
            ``update`` goes through the same validators as ``Message(...)``: content and metadata are
            frozen, ``created_at`` normalised to UTC. Fields not in ``update`` keep their values, including
            ``media_type`` and ``created_at``. ``copy.replace`` (Python 3.13) comes here too. Without an
            update this is pydantic's plain copy (``deep`` as pydantic has it; the message is immutable,
            so either copy shares nothing that can change).

            Raises:
                pydantic.ValidationError: if ``update`` holds what ``Message(...)`` refuses (a value JSON
                    cannot hold, unencodable text, a naive ``created_at``) or a name that is not a field.
            """
            if not update:
                return super().model_copy(deep=deep)
            fields = {name: getattr(self, name) for name in type(self).model_fields}
            fields.update(update)
            return self.model_validate(fields)

        def to_python(self) -> Any:
            """The content as plain, mutable Python (dicts and lists): a copy, for JSON content."""
            return thaw_json(self.content)

        @field_serializer("content", "metadata")
        def _serialize_json(self, value: Any) -> Any:
            return thaw_json(value)

        @classmethod
        def from_model(
            cls,
            model: BaseModel,
            *,
            version: str | None = None,
            include_json_schema: bool = False,
            metadata: Mapping[str, Any] | None = None,
        ) -> Message:
            """Wrap a pydantic model instance as a JSON message that records its schema.

            The schema name is the model class's ``module.QualName``; pass ``version`` to record one. A model
            of the script being run is ``__main__.QualName`` also in the worker processes of
            ``multiprocessing`` (spawn, forkserver), which import that script as ``__mp_main__``.
            Sets and frozensets are stored in one order (numbers and text sorted, other members by their
            JSON text), not in their iteration order, which for text differs from process to process: the
            same model saved from two processes is one artifact. A field the model serializes with its own
            code is stored as that code writes it.

            Raises:
                SerializationError: pydantic cannot dump the model as JSON (a ``bytes`` field that is not
                    UTF-8, whose model needs ``ser_json_bytes="base64"`` and ``val_json_bytes="base64"``;
                    a field of a type pydantic cannot serialize); the message names the model and the
                    pydantic error is chained.
                    A NaN or infinite float is stored as pydantic's JSON writes it where that is a string
                    (``ser_json_inf_nan="strings"`` in the model's ``model_config``: ``"NaN"``,
                    ``"Infinity"``, which ``to_model`` reads back); otherwise (pydantic's default writes
                    ``null``, which would lose it) it is this error, saying so.
                pydantic.ValidationError: the dump holds another value a :class:`Message` refuses (text with
                    a lone surrogate, an int too long for JSON), or ``metadata`` is not a JSON object.
                TypeError: ``model`` is not an instance of a pydantic model (a model class, a dict, ...).
            """
            _check_model_instance(model)
            model_cls = type(model)
            name = _schema_name(model_cls)
            try:
                content = model.model_dump(mode="json")
            except ValueError as exc:  # UnicodeDecodeError, PydanticSerializationError
                raise SerializationError(
                    f"cannot dump {name} as JSON: {type(exc).__name__}: {exc} (a bytes field "
                    'that is not UTF-8 needs ser_json_bytes="base64" and val_json_bytes="base64" in its model_config)'
                ) from exc
            schema = SchemaInfo(
                name=name,
                version=version,
                json_schema=model_cls.model_json_schema() if include_json_schema else None,
            )
            # Sets are put in order on the content stored, after the NaN check below compared the dump with
            # pydantic's JSON position by position (both still in the sets' own order).
            holds_set = _model_holds_set(model_cls)
            try:
                return cls(
                    content=_sets_in_order(model, content) if holds_set else content,
                    schema=schema,
                    metadata=metadata or {},
                )
            except ValidationError:
                # model_dump(mode="json") leaves NaN and infinities as floats, whatever the model's
                # ser_json_inf_nan says; only pydantic's JSON writer applies it. Looked at only when the
                # plain dump was refused, so the common case pays nothing.
                try:
                    non_finite = _holds_non_finite(content)
                except RecursionError:  # refused as nested too deeply: that is the error to raise
                    non_finite = False
                if not non_finite:
                    raise
            written = _non_finite_as_strings(model, content, name)
            if holds_set:
                written = _sets_in_order(model, written)
            return cls(content=written, schema=schema, metadata=metadata or {})

        def to_model(self, model: type[Model], *, check_name: bool = True, version: str | None = None) -> Model:
            """Validate the content back into ``model``.

            No class is ever imported from a name in stored data: the caller names the class, and the
            stored schema name is only compared with it.

            JSON content is validated as JSON, the form :meth:`from_model` stored it in, so every model
            that pydantic round-trips through JSON comes back: fields by name or by alias, and a strict
            model's datetime, enum, UUID or Decimal fields (JSON strings). ``bytes`` content is validated
            as it is.

            Args:
                model: the pydantic model class to validate the content as.
                check_name: refuse a message that records another schema name (one that records none passes).
                version: when given, the schema version the message must record (``from_model(...,
                    version=...)``): a message recording another version, or none, is refused, so a reader
                    never validates an older layout that happens to fit the new model.

            Raises:
                SchemaMismatchError: if the message records a different schema name (and ``check_name``), or
                    not the schema ``version`` asked for, or the content does not validate as ``model``.
                TypeError: ``model`` is not a pydantic model class (an instance of one, ``dict``, ``None``, ...).
            """
            _check_model_class(model)
            if check_name and self.schema is not None and not _same_schema_name(self.schema.name, _schema_name(model)):
                raise SchemaMismatchError(_name_mismatch(self.schema.name, _schema_name(model)))
            if version is not None:
                stored = self.schema.version if self.schema is not None else None
                if stored != version:
                    held = f"version {stored!r}" if stored is not None else "no version"
                    raise SchemaMismatchError(
                        f"message holds {held} of schema {_schema_name(model)}, not version {version!r}"
                    )
            content = self.content
            try:
                if isinstance(content, bytes):
                    return model.model_validate(content)
                # from_model dumps by field name: by_name=True reads that back for an aliased model, and a
                # hand-written content may use the aliases (by_alias=True).
                return model.model_validate_json(canonical_json(content), by_alias=True, by_name=True)
            except ValidationError as exc:
                raise SchemaMismatchError(
                    f"content does not validate as {_schema_name(model)}: {exc.error_count()} error(s): "
                    f"{_validation_summary(exc)}"
                ) from exc


_FIELDS_SET = frozenset(Message.model_fields)
_new_object = object.__new__
_set_attribute = object.__setattr__


def trusted_message(
    content: Any, schema: SchemaInfo | None, metadata: Any, media_type: str, created_at: datetime
) -> Message:
    """Build a :class:`Message` from fields that are already valid, without validating them again.

    For decoders only: ``content`` frozen (or bytes/str), ``metadata`` a frozen mapping, ``created_at``
    aware UTC, ``media_type`` non-empty. Equivalent to ``Message.model_construct`` with every field given
    (the tests pin that), at a third of its cost, which is most of what a small read spends in Python.
    """
    # Module globals rather than attribute lookups (Message's metaclass is pydantic's): this runs per read.
    message = _new_object(Message)
    fields = {"content": content, "schema": schema, "metadata": metadata, "media_type": media_type}
    fields["created_at"] = created_at
    _set_attribute(message, "__dict__", fields)
    _set_attribute(message, "__pydantic_fields_set__", set(_FIELDS_SET))
    _set_attribute(message, "__pydantic_extra__", None)
    _set_attribute(message, "__pydantic_private__", None)
    return message
