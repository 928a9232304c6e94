"""Validation and reversible encoding of step ids and namespaces.

A step id (or namespace) is any non-empty Unicode string of at most :data:`MAX_ID_BYTES`
(:data:`MAX_NAMESPACE_BYTES`) bytes of UTF-8, with no control character (Unicode category ``Cc``) and no
lone surrogate. Everything else (spaces, ``/``, ``..``, ``*``, ``?``, ``[``, ``%``, emoji) is legal on every
backend. Backends never sanitize: they map ids to storage names with an injective, reversible encoding
such as :func:`encode_name`, so no id can become a path, a glob pattern or another namespace's key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from .errors import InvalidStepIdError

__all__ = [
    "MAX_ID_BYTES",
    "MAX_NAMESPACE_BYTES",
    "decode_name",
    "encode_name",
    "is_legal",
    "validate_namespace",
    "validate_step_id",
]

#: Longest step id, in bytes of UTF-8. Chosen so that an encoded namespace and id fit every first-party
#: backend's key limit (S3: 1,024 bytes per key) with room for a prefix.
MAX_ID_BYTES = 256
#: Longest namespace, in bytes of UTF-8.
MAX_NAMESPACE_BYTES = 128

# Characters that stand for themselves in an encoded name. Upper-case letters and "." are escaped so
# that encoded names are distinct on case-insensitive file systems and can never be "." or "..".
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = "0123456789ABCDEF"
# A non-empty encoded name without escapes: exactly the characters of _SAFE.
_PLAIN = re.compile("[a-z0-9_-]+")
# Unicode category Cc is exactly these 65 code points: C0 controls, DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


#: How much of an invalid id an error message quotes: ids are short, but an invalid one can be any size.
_SHOWN_CHARS = 64


def _shown(value: str) -> str:
    """``repr(value)``, cut to its first characters for a long value (it goes into an error message)."""
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"


def _check(value: object, *, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidStepIdError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidStepIdError(f"{what} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidStepIdError(f"{what} {_shown(value)} contains a lone surrogate") from None
    if size > limit:
        raise InvalidStepIdError(f"{what} is {size} bytes of UTF-8; the limit is {limit}")
    control = _CONTROL.search(value)
    if control is not None:
        raise InvalidStepIdError(f"{what} {_shown(value)} contains the control character {control.group()!r}")
    # A str subclass (a StrEnum member, an ``class Step(str, Enum)``) becomes the plain str: backends build
    # keys and paths with f-strings, where such a member may format as "Step.TRAIN" (Python 3.12 and newer),
    # and the memory backend would hand the member back from list() where the others give a str.
    return value if type(value) is str else str.__str__(value)


@functools.lru_cache(maxsize=4096)
def _valid_step_id(value: str) -> str:
    return _check(value, what="step id", limit=MAX_ID_BYTES)


def validate_step_id(step_id: object) -> str:
    """Return ``step_id`` if it is a legal step id (a ``str`` subclass, such as a ``StrEnum`` member, as the
    plain ``str`` of its value).

    Raises:
        InvalidStepIdError: if it is not a non-empty str within :data:`MAX_ID_BYTES` bytes of UTF-8, or
            holds a control character or a lone surrogate.
    """
    if type(step_id) is str:
        # The cache keeps validation off the hot path for ids a pipeline uses over and over.
        return _valid_step_id(step_id)
    return _check(step_id, what="step id", limit=MAX_ID_BYTES)


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is a legal namespace (a ``str`` subclass as its plain ``str``).

    Raises:
        InvalidStepIdError: under the same rules as :func:`validate_step_id`, with
            :data:`MAX_NAMESPACE_BYTES` as the limit.
    """
    return _check(namespace, what="namespace", limit=MAX_NAMESPACE_BYTES)


def is_legal(value: object, validate: Callable[[object], str] = validate_step_id) -> bool:
    """Whether ``validate`` (:func:`validate_step_id`, or :func:`validate_namespace`) accepts ``value``.

    For listings that skip, rather than fail on, a name someone else wrote into a backend. Raises nothing.
    """
    try:
        validate(value)
    except InvalidStepIdError:
        return False
    return True


def encode_name(value: str) -> str:
    """Encode a (validated) id or namespace as a storage-safe name; the inverse of :func:`decode_name`.

    The result holds only ``a-z``, ``0-9``, ``-``, ``_`` and ``%XX`` escapes of UTF-8 bytes with
    upper-case hex digits. It is injective even under case-folding (names stay distinct on
    case-insensitive file systems), never contains ``/``, ``.``, ``:``, ``*``, ``?`` or ``[``, and is at most
    three times the id's UTF-8 length.
    """
    if type(value) is str and _SAFE.issuperset(value):
        # Most ids (and namespaces) need no escape: one C scan instead of a Python loop per character. (A str
        # subclass goes the long way, which returns a plain str: a StrEnum member formats as its name.)
        return value
    out: list[str] = []
    for char in value:
        if char in _SAFE:
            out.append(char)
        else:
            for byte in char.encode("utf-8"):
                out.append("%" + _HEX[byte >> 4] + _HEX[byte & 15])
    return "".join(out)


def decode_name(name: str) -> str:
    """Decode a name made by :func:`encode_name`.

    Raises:
        ValueError: if ``name`` is not exactly what :func:`encode_name` produces for some string (only the
            canonical form decodes, which keeps the encoding a bijection).
    """
    if _PLAIN.fullmatch(name):
        # Only characters that stand for themselves: the name is its own decoding, and canonical. Most ids
        # are such names, and a listing that sorts them (ArtifactStore.list_page) decodes every one per page.
        return name
    raw = bytearray()
    i = 0
    while i < len(name):
        char = name[i]
        if char == "%":
            pair = name[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in _HEX for c in pair):
                raise ValueError(f"bad escape in encoded name {name!r}")
            raw.append(int(pair, 16))
            i += 3
        elif char in _SAFE:
            raw.append(ord(char))
            i += 1
        else:
            raise ValueError(f"unexpected character {char!r} in encoded name {name!r}")
    decoded = raw.decode("utf-8")
    if encode_name(decoded) != name:
        raise ValueError(f"encoded name {name!r} is not in canonical form")
    return decoded
