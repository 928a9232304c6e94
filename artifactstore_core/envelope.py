"""The stored format: how every byte-storing backend writes a :class:`~artifactstore_core.Message`.

Layout (the normative specification is ``docs/format.md``)::

    offset   size  field
    0        4     magic  b"ARTF"
    4        1     format version (1)
    5        4     header length N, unsigned big-endian, at most 16 MiB
    9        N     header: a UTF-8 JSON object
    9+N      32    tag: BLAKE3 of bytes [0, 9+N); keyed BLAKE3 when the header's "mac" is "blake3-keyed",
                   keyed BLAKE3 of PLACE followed by bytes [0, 9+N) when it is "blake3-keyed-place"
    41+N     ...   payload: exactly header["stored_size"] bytes

Bytes [0, 41+N) are the *head*. The header records the BLAKE3 digest of the uncompressed payload, so the
tag over the head covers the payload too, and a signing key (keyed BLAKE3) authenticates everything. A
store signs its artifacts for their *place*, the namespace and step id they are saved under, so a signed
artifact copied to another id or namespace is refused (see :meth:`Codec.decode_head`).
Backends may keep head and payload apart (a Redis hash field, S3 object metadata and body, a file after
the head) so a large payload is never concatenated or sliced into a copy.

Decoding never runs code: the header is JSON and a class is never looked up by a name read from it.
"""

from __future__ import annotations

import functools
import io
import json
import json.scanner
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, NamedTuple, NoReturn, cast

import blake3
import zstandard
from pydantic import ValidationError

from .errors import (
    ArtifactCorruptedError,
    ArtifactStoreError,
    ConfigurationError,
    PayloadTooLargeError,
    SerializationError,
    UnsupportedFormatError,
)
from .message import (
    FrozenDict,
    Message,
    SchemaInfo,
    canonical_json,
    check_text,
    freeze_json,
    loads_frozen,
    trusted_message,
)
from .models import ArtifactInfo

__all__ = [
    "DEFAULT_COMPRESS_THRESHOLD",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_COMPRESSION_RATIO",
    "PREFIX_SIZE",
    "TAG_SIZE",
    "BytesReader",
    "Codec",
    "Encoded",
    "Header",
    "PayloadReader",
    "PayloadVerifier",
    "content_bytes",
    "content_digest",
    "content_info",
    "content_stream",
    "digest_of",
    "limiting_json_content",
    "new_hasher",
    "place_bytes",
    "reusing_verified_digests",
]

MAGIC = b"ARTF"
FORMAT_VERSION = 1
#: Length of the fixed prefix that starts every envelope: the magic, the version byte and the header length.
PREFIX_SIZE = 9
TAG_SIZE = 32
MAX_HEADER_SIZE = 16 * 1024 * 1024
#: JSON and text payloads at least this large are zstd-compressed (when that saves at least 1/8).
DEFAULT_COMPRESS_THRESHOLD = 64 * 1024
#: The most a zstd payload may expand: a header whose ``size`` exceeds this many times its ``stored_size``
#: is refused as corrupted before anything is decompressed, so a forged frame (anyone who can write to an
#: unsigned backend can tag one) cannot make a reader allocate more than this multiple of what it read.
#: Writers store a payload that would compress better than this uncompressed (only extremely repetitive
#: text does), so no honest artifact is ever refused.
MAX_COMPRESSION_RATIO = 1024

_PREFIX = struct.Struct(">4sBI")
_CODECS = ("bytes", "utf-8", "json")
_KEY_CONTEXT = "artifactstore envelope signing key v1"
_PLACE_LABEL = b"artifactstore place v1\x00"
_PLACE_LENGTHS = struct.Struct(">HH")
#: The ``mac`` header values: a plain tag, a tag under the signing key, and a tag under the signing key
#: that also covers the artifact's place (namespace and step id).
_MAC_PLAIN, _MAC_KEYED, _MAC_PLACE = "blake3", "blake3-keyed", "blake3-keyed-place"
_SIGNED_MACS = (_MAC_KEYED, _MAC_PLACE)
# Hashing on several threads pays off when one call hashes at least this much; below it waking the pool's
# threads costs more than it saves. Measured on a 2-core machine: at 1 MiB one thread was as fast or faster
# (and steadier while a local server used the other core), from 2 MiB the pool won (4 MiB: 0.52 ms against
# 0.75 ms). A stream copied in chunks (read, hash, write) agreed: with 64 KiB to 1 MiB chunks the pool made
# the copy 10-15% slower, from 4 MiB chunks it was faster. The rule lives in new_hasher (and, inlined for
# speed, in _digest).
_PARALLEL_HASH_FROM = 2 << 20
# BLAKE3 hashes on several threads through Rayon's global pool, which does not survive fork(): in a child
# forked after the pool started, a threaded hash waits forever for workers that exist only in the parent.
# Such a child (and its own children) hash on one thread; a child forked before any threaded hash may
# start a pool of its own.
_hash_threads: int = blake3.blake3.AUTO
_pool_started = False


def _threads_for(size: int) -> int:
    global _pool_started
    if size < _PARALLEL_HASH_FROM:
        return 1
    _pool_started = True
    return _hash_threads


def _hash_on_one_thread_if_pool_started() -> None:
    global _hash_threads
    if _pool_started:
        _hash_threads = 1


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_hash_on_one_thread_if_pool_started)
_HEX_DIGEST = re.compile("[0-9a-f]{64}")
_EMPTY = FrozenDict()
_new_tuple = tuple.__new__
# The header a writer of this format writes for a message without metadata or schema, as text: canonical
# JSON, keys in order, nothing escaped. Reading one through this pattern instead of the JSON scanner costs a
# third as much (building a dict of eleven keys, then reading it back, is most of a small read's header). It
# matches only text that json.loads parses into exactly these values, each of the type the header wants: a
# string's characters are any but '"', '\\' and the control characters JSON refuses unescaped (so the match
# is the value), a size is a JSON integer without sign or leading zero, short enough to stay a plain int.
# Any other header (metadata, a schema, escapes, white space) is parsed as JSON; both ways then run the same
# checks (_header).
_JSON_CHARS = r'[^"\\\x00-\x1f]*'
_CANONICAL_HEADER = re.compile(
    r'\{"codec":"(bytes|utf-8|json)","compression":(null|"zstd"),'
    rf'"created_at":"({_JSON_CHARS})","digest":\{{"alg":"blake3","hex":"({_JSON_CHARS})"\}},'
    r'"mac":"(blake3|blake3-keyed|blake3-keyed-place)",'
    rf'"media_type":"({_JSON_CHARS})","metadata":\{{\}},"schema":null,'
    r'"size":(0|[1-9][0-9]{0,17}),"stored_size":(0|[1-9][0-9]{0,17})\}'
)


def _schema_json(schema: SchemaInfo) -> str:
    if schema.json_schema is None:
        return _named_schema_json(schema.name, schema.version)
    # Not cached: a cache keyed by the schema compares JSON values with Python's ==, for which 1, 1.0 and
    # True are one key, and would write one schema's encoding for another.
    return canonical_json(schema.model_dump(mode="json")).decode("utf-8")


@functools.lru_cache(maxsize=256)
def _named_schema_json(name: str, version: str | None) -> str:
    # A pipeline saves many messages of few schemas, most without a JSON Schema document; for those the
    # encoding depends on two strings only, which compare exactly.
    return canonical_json({"json_schema": None, "name": name, "version": version}).decode("utf-8")


# The standard library's C scanner: what json.loads runs after detecting the encoding and checking for
# trailing data, minus that per-call overhead (half the cost of parsing a header). Anything unusual falls
# back to json.loads, so what is accepted and refused is exactly json.loads' behaviour on UTF-8 text.
_SCAN = getattr(json.scanner, "c_make_scanner", None)
_SCAN_ONCE = _SCAN(json.JSONDecoder()) if _SCAN is not None else None


def _loads_text(text: str) -> Any:
    """Parse JSON text. Raises ValueError (JSONDecodeError) when it is not."""
    try:
        if _SCAN_ONCE is not None:
            try:
                value, end = _SCAN_ONCE(text, 0)
            except StopIteration:
                end = -1
            if end == len(text):
                return value
        return json.loads(text)
    except RecursionError:
        # Nesting deeper than the interpreter's recursion limit: refused as malformed like any bad JSON.
        raise ValueError("JSON is nested too deeply") from None


@functools.lru_cache(maxsize=256)
def _json_str(value: str) -> str:
    # Media types repeat from save to save; the cache keeps their JSON encoding.
    return canonical_json(value).decode("utf-8")


def _identity_json(
    codec_json: str, media_json: str, schema_json: str, metadata_json: str, size: int, digest_json: str
) -> bytes:
    """The canonical JSON of ``[codec, media_type, schema, metadata, size, digest]``, from those pieces'
    canonical JSON (and ``size``, an int)."""
    return f"[{codec_json},{media_json},{schema_json},{metadata_json},{size},{digest_json}]".encode()


def _canonical_metadata(metadata: Any, reuse: _Reuse | None = None) -> str:
    if not metadata:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise TypeError("metadata must be a JSON object")
    if reuse is None or type(metadata) is not FrozenDict:
        # Reused only for a frozen mapping (a message's metadata): encode_head also takes a caller's dict,
        # which may change between two calls.
        return canonical_json(metadata).decode("utf-8")
    return reuse.text(metadata, lambda: canonical_json(metadata).decode("utf-8"))


def _check_ratio(size: int, stored_size: int) -> None:
    """Refuse a compressed payload of ``stored_size`` bytes that claims to expand to ``size``, past the ratio
    any writer produces (see :data:`MAX_COMPRESSION_RATIO`): a decompression bomb, refused before anything
    is allocated for it."""
    if size > MAX_COMPRESSION_RATIO * stored_size:
        raise ArtifactCorruptedError(
            f"compressed payload of {stored_size} bytes claims {size} bytes, more than {MAX_COMPRESSION_RATIO}"
            " times as many; no writer compresses that much (a forged or damaged artifact)"
        )


def _header(
    codec: str,
    compression: str | None,
    media_type: Any,
    schema: Any,
    metadata: Any,
    created: Any,
    size: Any,
    stored_size: Any,
    digest_hex: str,
    mac: str,
) -> Header:
    """The :class:`Header` of a verified head: the checks of its fields that both ways of reading a header
    share (the canonical pattern and the JSON parser), in the order the parser's way has always run them, so
    a forged header that breaks several rules is refused with the same error either way.

    ``codec``, ``compression``, ``metadata`` and the digest are checked already; ``schema`` is the parsed
    JSON (or None).

    Raises:
        ValueError, TypeError, OverflowError, ValidationError: a field of the wrong type or value (the caller
            turns them into ArtifactCorruptedError).
        ArtifactCorruptedError: a compressed payload that claims too large a size (see :func:`_check_ratio`).
    """
    # Each field's type is checked before it is used: a header with a valid plain tag can be forged by
    # anyone who can write to the backend, and must fail as corrupted data, never as an AttributeError.
    if type(created) is not str:
        raise ValueError("header field 'created_at' must be a str")
    # fromisoformat reads the "Z" suffix itself (Python 3.11 and later).
    created_at = datetime.fromisoformat(created)
    if created_at.tzinfo is not UTC:
        if created_at.utcoffset() is None:
            raise ValueError("created_at has no time zone")
        created_at = created_at.astimezone(UTC)
    if type(size) is not int or type(stored_size) is not int or size < 0 or stored_size < 0:
        raise ValueError("sizes must be non-negative integers")
    if compression is not None:
        _check_ratio(size, stored_size)
    if type(media_type) is not str:
        raise ValueError("header field 'media_type' must be a str")
    if not media_type.isascii():
        check_text(media_type, where="media_type")
    # Built as its named tuple's own _make does, without the Python frame of Header(...) (keywords would
    # cost twice as much again): one is built for every artifact read.
    return _new_tuple(
        Header,
        (
            codec,
            compression,
            media_type,
            SchemaInfo.model_validate(schema) if schema is not None else None,
            metadata,
            created_at,
            size,
            stored_size,
            digest_hex,
            "blake3",
            mac,
        ),
    )


def _attribute(exc: ArtifactStoreError, place: tuple[str, str] | None) -> None:
    """Give ``exc`` the namespace and step id of ``place`` (the artifact being read), where it has none.

    The checks that find damage know nothing of ids; without this, a batch read or a listing that meets
    one damaged artifact among many could not say which one it is.
    """
    if place is not None:
        if exc.namespace is None:
            exc.namespace = place[0]
        if exc.step_id is None:
            exc.step_id = place[1]


def place_bytes(place: tuple[str, str]) -> bytes:
    """The PLACE prefix a ``blake3-keyed-place`` tag covers, for ``(namespace, step_id)`` (``docs/format.md``).

    Both lengths are written before either string, so no two places share an encoding.

    Raises:
        ValueError: if either string cannot be encoded as UTF-8 or is longer than 65,535 bytes.
    """
    namespace, step_id = (part.encode("utf-8") for part in place)
    if len(namespace) > 0xFFFF or len(step_id) > 0xFFFF:
        raise ValueError("a namespace and a step id can each be at most 65535 bytes of UTF-8 in a place")
    return _PLACE_LABEL + _PLACE_LENGTHS.pack(len(namespace), len(step_id)) + namespace + step_id


def new_hasher(chunk_size: int | None = None) -> blake3.blake3:
    """A BLAKE3 hasher for payload bytes (the header's ``digest``), threaded only where that is faster.

    Use it wherever a payload's digest is computed in pieces, e.g. while a stream is copied, and pass it
    the most bytes one ``update()`` call will be given: the size of the whole payload when it is hashed in
    one call, the chunk size when it is hashed chunk by chunk. The hasher uses several threads when that
    is at least 2 MiB, one otherwise (and always one in a process forked after threads were used).
    ``None`` (the chunk sizes are not known, e.g. they are whatever a
    caller's ``read`` asks for) gives one thread: BLAKE3 splits work across threads within one
    ``update()`` call only, and such chunks are usually small (8 KiB to 1 MiB), where waking the pool for
    every call made hashing slower, not faster; a rare large chunk costs one core's speed at worst.

    Payload digests are never keyed (the signing key keys the tag over the head, which covers the
    digest), so this takes no key.

    Args:
        chunk_size: the largest number of bytes a single ``update()`` will hash, or ``None``.

    Returns:
        A new ``blake3.blake3`` hasher; ``hexdigest()`` gives the header's ``digest``. Raises nothing.
    """
    return blake3.blake3(max_threads=_threads_for(chunk_size) if chunk_size is not None else 1)


class _Reuse:
    """What :func:`reusing_verified_digests` records, by the id of the content object."""

    __slots__ = ("digests", "encodings", "texts")

    def __init__(self) -> None:
        # Digests of bytes and text payloads the codec verified while decoding: (content, digest).
        self.digests: dict[int, tuple[bytes | str, str]] = {}
        # Canonical encodings of JSON content computed by content_bytes: (content, encoding).
        self.encodings: dict[int, tuple[Any, bytes]] = {}
        # Canonical JSON of metadata mappings and schemas written into headers: (value, text).
        self.texts: dict[int, tuple[Any, str]] = {}

    def text(self, value: Any, encode: Callable[[], str]) -> str:
        """The canonical JSON of the immutable ``value``, computed by ``encode`` once per object."""
        known = self.texts.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        text = encode()
        self.texts[id(value)] = (value, text)
        return text


_REUSE: ContextVar[_Reuse | None] = ContextVar("artifactstore_verified", default=None)


@contextmanager
def reusing_verified_digests() -> Iterator[None]:
    """Within this context, a payload the codec verified while decoding is not hashed again when the very
    same content object is encoded again (by any codec) in the same context: this thread, or this asyncio
    task (and what it runs in a copy of its context). Likewise, JSON is encoded canonically once per object:
    :func:`~artifactstore_core.envelope.content_bytes` and :meth:`~artifactstore_core.Codec.encode` reuse
    the encoding of JSON content that an earlier one of them computed in the context for the very same
    content object, and every head encoded in the context reuses the encoding of the very same metadata
    mapping or schema (with a JSON Schema document).

    For code that decodes an artifact and encodes it again, as the http artifact server does twice per
    request (it verifies what a client sends, then its backend encodes it; its backend verifies what it
    reads, then the server encodes it for the client): each payload is then hashed once on the way through,
    not twice. Only ``bytes`` and text content qualify for the digest, whose payload is a function of the
    content alone; JSON content is hashed again, because the payload that was verified need not be the
    canonical encoding the codec writes. The server measures JSON content and large heads as stored (in
    their canonical encoding) before it saves them, and the store's encode then reuses those encodings
    rather than building them again. A content object is recognised by identity, never by equality, so a
    message built around other (even equal) content is hashed and encoded as usual. The record holds the
    content objects and their encodings until the context exits: keep the context to one request or one copy.

    Raises nothing of its own.
    """
    record = _Reuse()
    token = _REUSE.set(record)
    try:
        yield
    finally:
        # Emptied, not only unset: a context copied inside (a task, a worker thread) still refers to it.
        record.digests.clear()
        record.encodings.clear()
        record.texts.clear()
        _REUSE.reset(token)


# The JSON content limit of limiting_json_content(): (most bytes of text, the setting that sets it), or None.
_JSON_LIMIT: ContextVar[tuple[int, str] | None] = ContextVar("artifactstore_json_limit", default=None)


@contextmanager
def limiting_json_content(max_bytes: int, *, setting: str) -> Iterator[None]:
    """Within this context (this thread, or this asyncio task), decoding refuses JSON content of more than
    ``max_bytes`` bytes of text, from its verified header, before the payload is decompressed or parsed.

    For code that decodes artifacts it did not write on behalf of others, as the http artifact server does
    to answer a read: a parsed JSON value takes many times its text in memory (each ``{},`` of a list is 3
    bytes of text and about 120 bytes of frozen mapping), and a compressed payload of a few KB can hold
    megabytes of such text. An envelope header (JSON: the metadata and schema) over ``max_bytes`` is refused
    the same way, before it is parsed. ``bytes`` and text content are not limited by it. The refusal is
    :class:`~artifactstore_core.errors.PayloadTooLargeError`, whose message names ``setting`` (the setting
    that raises the limit), raised by whatever decodes the artifact (a store's ``get``,
    :meth:`~artifactstore_core.Codec.decode`).

    A thread that a store starts for its own work (a worker of a ``ThreadPoolExecutor``) runs in a context
    of its own, where this limit does not hold: backends that decode on worker threads run them on a
    :class:`~artifactstore_core.store.ContextThreadPoolExecutor`, which runs each task in a copy of the
    caller's context, as the first-party ones do.

    Raises nothing of its own.
    """
    token = _JSON_LIMIT.set((max_bytes, setting))
    try:
        yield
    finally:
        _JSON_LIMIT.reset(token)


def _digest(data: bytes | memoryview) -> str:
    # new_hasher's rule, written out: this runs for every artifact saved or read, and for small ones one
    # more call (and a separate update) would be a visible share of the cost.
    if len(data) < _PARALLEL_HASH_FROM:
        # One thread is blake3's default: passed by keyword it costs a tenth of hashing a small payload.
        return blake3.blake3(data).hexdigest()
    return blake3.blake3(data, max_threads=_threads_for(len(data))).hexdigest()


def digest_of(data: bytes | memoryview) -> str:
    """The BLAKE3 hex digest of ``data``, as a header's ``digest`` holds it (hashed as the codec hashes)."""
    return _digest(data)


def content_digest(message: Message) -> tuple[str, bytes, str]:
    """The codec name, the uncompressed payload bytes and their BLAKE3 hex digest, for ``message``'s content.

    Within :func:`~artifactstore_core.envelope.reusing_verified_digests`, the digest the codec verified while
    decoding this very content object (``bytes`` or text) is reused rather than computed again, as
    :meth:`~artifactstore_core.Codec.encode` reuses it.

    Raises:
        SerializationError: if the content cannot be encoded.
    """
    reuse = _REUSE.get()
    codec, raw = _content_bytes(message.content, reuse)
    return codec, raw, _reused_digest(message.content, codec, raw, reuse)


def _reused_digest(content: Any, codec: str, raw: bytes, reuse: _Reuse | None) -> str:
    """The digest of ``raw``, the payload of ``content``: the one recorded for that very object when decoding
    verified it (bytes and text only: verified JSON need not be the canonical encoding), else computed."""
    known = reuse.digests.get(id(content)) if reuse is not None and codec != "json" else None
    # The identity check: an id can be reused by another object once the one recorded is gone (it cannot be
    # while the record holds it, but the check costs nothing and needs no such argument).
    return known[1] if known is not None and known[0] is content else _digest(raw)


def content_bytes(message: Message) -> tuple[str, bytes]:
    """The codec name and the uncompressed payload bytes of ``message``'s content.

    JSON content is encoded canonically (``canonical_json``: compact, keys sorted); within
    :func:`~artifactstore_core.envelope.reusing_verified_digests`, the encoding of a content object is
    computed once and then reused by every later call for the very same object (and by
    :meth:`~artifactstore_core.Codec.encode`).

    Raises:
        SerializationError: if the content cannot be encoded.
    """
    return _content_bytes(message.content, _REUSE.get())


def _content_bytes(content: Any, reuse: _Reuse | None) -> tuple[str, bytes]:
    if isinstance(content, bytes):
        return "bytes", content
    if isinstance(content, str):
        try:
            return "utf-8", content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerializationError("str content contains a lone surrogate") from exc
    if reuse is not None:
        known = reuse.encodings.get(id(content))
        # The identity check: see Codec.encode.
        if known is not None and known[0] is content:
            return "json", known[1]
    try:
        raw = canonical_json(content)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"content is not JSON-serializable: {exc}") from exc
    if reuse is not None:
        # Content is deeply immutable, so its encoding cannot change while the record holds it.
        reuse.encodings[id(content)] = (content, raw)
    return "json", raw


class BytesReader(io.BufferedIOBase):
    """A read-only, seekable binary stream over ``bytes``, without a copy of them: what
    :meth:`ArtifactStore.open() <artifactstore_core.ArtifactStore.open>` returns for a payload held in memory.

    Unlike an ``io.BytesIO``, which a caller could write into, it refuses every change: ``writable()`` is
    False and ``write``, ``writelines`` and ``truncate`` raise ``io.UnsupportedOperation``, like the
    streaming backends' readers. ``read()`` of the whole payload from the start returns the very ``bytes``
    object given (no copy); other reads copy only what they return. After ``close()`` every method but
    ``close`` raises ``ValueError``.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        # BytesIO shares an exact bytes object until it is written to, which this class never does: the
        # payload is not copied, however large.
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return self._data.readable()

    def seekable(self) -> bool:
        return self._data.seekable()

    def writable(self) -> bool:
        self._data.readable()  # raises ValueError once closed, as every io stream's writable() does
        return False

    def read(self, size: int | None = -1, /) -> bytes:
        return self._data.read(size)

    def read1(self, size: int = -1, /) -> bytes:
        return self._data.read1(size)

    def readinto(self, buffer: Any, /) -> int:
        return self._data.readinto(buffer)

    def readinto1(self, buffer: Any, /) -> int:
        return self._data.readinto1(buffer)

    def readline(self, size: int | None = -1, /) -> bytes:
        return self._data.readline(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()

    def close(self) -> None:
        self._data.close()
        super().close()


def content_stream(message: Message) -> IO[bytes]:
    """A :class:`BytesReader` over the payload of ``message`` (the UTF-8 of text and JSON content).

    Raises:
        SerializationError: if the content cannot be encoded.
    """
    # Typed as IO[bytes], what ArtifactStore.open() returns: BufferedIOBase is not one for type checkers.
    return cast("IO[bytes]", BytesReader(content_bytes(message)[1]))


def content_info(step_id: str, message: Message) -> ArtifactInfo:
    """The :class:`ArtifactInfo` of a message (for backends that keep messages, not bytes)."""
    _, raw = content_bytes(message)
    return ArtifactInfo(
        step_id=step_id,
        size=len(raw),
        digest=f"blake3:{_digest(raw)}",
        media_type=message.media_type,
        schema_name=message.schema.name if message.schema else None,
        created_at=message.created_at,
    )


class Header(NamedTuple):
    """The decoded, verified header of an envelope (immutable; a named tuple because one is built for
    every artifact read or written, and a frozen dataclass cost four times as much to build)."""

    codec: str
    compression: str | None
    media_type: str
    schema: SchemaInfo | None
    metadata: Any
    created_at: datetime
    size: int
    stored_size: int
    digest: str
    digest_alg: str
    mac: str

    def identity(self) -> bytes:
        """What makes two artifacts the same for the write-once rule, as bytes to compare with ``==``.

        The canonical JSON of ``[codec, media_type, schema, metadata, size, digest]`` (``created_at`` is not
        part of it): exactly what :attr:`Encoded.identity_key` hashes. JSON values that Python calls equal
        but that are stored differently (``1``, ``1.0`` and ``true``; ``0.0`` and ``-0.0``) give different
        identities, so a save that differs only by them is a different artifact.

        Raises:
            SerializationError: if the metadata or schema is not JSON (never for a header a codec
                encoded or decoded).
        """
        try:
            return _identity_json(
                _json_str(self.codec),
                _json_str(self.media_type),
                _schema_json(self.schema) if self.schema is not None else "null",
                _canonical_metadata(self.metadata),
                self.size,
                # A decoded digest is whatever string a forged header holds: encoded, not trusted to be hex.
                canonical_json(self.digest).decode("utf-8"),
            )
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"header is not JSON-serializable: {exc}") from exc

    def info(self, step_id: str) -> ArtifactInfo:
        """The :class:`~artifactstore_core.ArtifactInfo` of the artifact this header describes."""
        return ArtifactInfo(
            step_id=step_id,
            size=self.size,
            digest=f"{self.digest_alg}:{self.digest}",
            media_type=self.media_type,
            schema_name=self.schema.name if self.schema else None,
            created_at=self.created_at,
        )


@dataclass(frozen=True)
class Encoded:
    """An encoded message: the head and the stored payload, kept apart to avoid copies.

    Attributes:
        head: magic, version, header length, header and tag.
        payload: the stored payload (the message's own ``bytes`` object for uncompressed bytes content).
        header: the header that ``head`` holds.
    """

    head: bytes
    payload: bytes
    header: Header
    # The canonical JSON of [codec, media type, schema, metadata, size, digest], which the encoder has in
    # pieces anyway; empty when the Encoded was built by hand (then it is derived from the header).
    identity_json: bytes = field(default=b"", repr=False)

    def to_bytes(self) -> bytes:
        """Head and payload in one buffer (one copy of the payload)."""
        return self.head + self.payload

    @property
    def identity_key(self) -> str:
        """A short string equal for two encodings exactly when :meth:`Header.identity` is equal (a hash of it).

        Raises:
            SerializationError: as :meth:`Header.identity`, for an ``Encoded`` built by hand.
        """
        doc = self.identity_json or self.header.identity()
        return blake3.blake3(doc).hexdigest()[:32]


class PayloadVerifier:
    """Checks a payload read in chunks against its header (used by streaming reads).

    Call :meth:`update` with each chunk of the *stored* payload, then :meth:`finish`.
    Only uncompressed payloads can be verified in a stream.

    Raises:
        SerializationError: when built for a header of a compressed payload.
    """

    def __init__(self, header: Header) -> None:
        if header.compression is not None:
            raise SerializationError("a compressed payload cannot be verified as a stream")
        self._header = header
        # The chunks are whatever the reader is asked for, so their size is unknown here (see new_hasher).
        self._hasher = new_hasher()
        self._seen = 0

    def update(self, chunk: bytes | memoryview) -> None:
        """Feed the next chunk of payload.

        Raises:
            ArtifactCorruptedError: once the payload is longer than its header says.
        """
        self._seen += len(chunk)
        if self._seen > self._header.size:
            raise ArtifactCorruptedError("payload is longer than its header says")
        self._hasher.update(chunk)

    def finish(self) -> None:
        """Check that the payload seen so far is complete and intact.

        Raises:
            ArtifactCorruptedError: the payload is shorter than its header says, or its digest differs.
        """
        if self._seen != self._header.size:
            raise ArtifactCorruptedError(f"payload is {self._seen} bytes; its header says {self._header.size}")
        if self._hasher.hexdigest() != self._header.digest:
            raise ArtifactCorruptedError("payload digest does not match its header")


def _nothing() -> None:
    return None


def _reraise(exc: Exception) -> NoReturn:
    raise exc


class PayloadReader(io.RawIOBase):
    """A read-only raw stream of an uncompressed payload that arrives in chunks, verified as it is read.

    What a backend's ``_open`` can return (wrapped in an ``io.BufferedReader``) when it reads the payload
    as an iterator of chunks (the body of an HTTP answer, say), after it read and verified the head. No
    byte of the chunk that completes the size ``header`` states is handed out before the chunks are known
    to end there and the digest matches: the read that would return the payload's last bytes raises
    :class:`~artifactstore_core.errors.ArtifactCorruptedError` instead, even for a caller that reads exactly
    the payload's size and never asks for the end. Chunks that run on past that size raise as soon as the
    excess arrives (the rest is not read); chunks that end short raise ``short(received)``'s error. Bytes
    returned before the last chunk are not verified yet, and closing the stream early verifies nothing.
    After an error every later read raises it again: the same exception, with the traceback and context it was
    first raised with (reading on does not make its traceback longer).

    ``release`` is called once, as soon as nothing more is to be read from the chunks: at the verified end,
    at the first error, or when the stream is closed, whichever comes first (an abandoned stream is closed,
    and so released, when it is garbage-collected).

    Args:
        chunks: the payload's chunks (empty ones are skipped).
        header: the verified header (from :meth:`~artifactstore_core.Codec.decode_head`).
        release: frees what the chunks come from (closes the response, returns a pooled connection).
        fail: turns any exception raised while reading (the chunks' own, or the reader's
            ``ArtifactCorruptedError``) into the store's error and raises it; by default it is raised as it is.
        short: the exception for chunks that ended after ``received`` bytes of payload; by default
            ``ArtifactCorruptedError`` (a transport that can tell a dropped connection from a damaged body
            says so here).

    Raises:
        SerializationError: ``header`` describes a compressed payload (only an uncompressed one can be
            verified as it streams).
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        header: Header,
        *,
        release: Callable[[], None] = _nothing,
        fail: Callable[[Exception], NoReturn] = _reraise,
        short: Callable[[int], Exception] | None = None,
    ) -> None:
        super().__init__()
        self._verifier = PayloadVerifier(header)
        self._chunks = iter(chunks)
        self._size = header.size
        self._left = header.size
        self._release_once: Callable[[], None] | None = release
        self._fail = fail
        self._short = short
        self._pending = memoryview(b"")
        self._done = False
        self._error: BaseException | None = None
        # The first error's traceback and context as it was first raised (see _raise_again).
        self._error_origin: tuple[TracebackType | None, BaseException | None] = (None, None)

    def readable(self) -> bool:
        """Always ``True``."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next payload bytes; 0 at the verified end.

        Raises:
            ArtifactCorruptedError: the payload does not match its header (every later read raises it too).
            ValueError: the stream is closed.
            Exception: what ``fail`` makes of a failure of the chunks (the store's ``BackendError``).
        """
        if self.closed:
            raise ValueError("read of closed file")
        if self._error is not None:
            self._raise_again(self._error)
        try:
            while not self._pending and not self._done:
                if self._left == 0:
                    self._finish()  # an empty payload: nothing came before the end
                    break
                chunk = self._next()
                if chunk is None:
                    received = self._size - self._left
                    if self._short is not None:
                        raise self._short(received)
                    raise ArtifactCorruptedError(f"payload is {received} bytes; its header says {self._size}")
                self._verifier.update(chunk)  # raises at once for a chunk that runs past the size
                self._left -= len(chunk)
                if self._left == 0:
                    # Complete: that the chunks end here and the digest matches is checked before any byte of
                    # this chunk is handed out (a caller reading exactly the size never reads the end).
                    self._finish()
                self._pending = memoryview(chunk)
        except Exception as exc:
            self._pending = memoryview(b"")
            self._done = True
            with suppress(Exception):
                self._release()  # nothing more is read from the chunks; their error is the one to report
            try:
                self._fail(exc)
                raise exc  # a fail that returned (it must raise) never turns a failure into the stream's end
            except BaseException as error:
                self._error = error
                self._error_origin = (error.__traceback__, error.__context__)
                raise
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _raise_again(self, error: BaseException) -> NoReturn:
        """Raise the stream's first error again, as it was first raised.

        A raise adds the frames it passes through to the exception's traceback: raising the same object after
        every read would make its traceback a little longer each time (and each raise in an ``except`` block
        of the caller's would make that block's exception its context). Its traceback starts again from the
        first raise's, and its context stays the first one.
        """
        origin, context = self._error_origin
        try:
            raise error.with_traceback(origin)
        finally:
            error.__context__ = context

    def _next(self) -> bytes | None:
        """The next non-empty chunk, ``None`` at the end."""
        for chunk in self._chunks:
            if chunk:
                return chunk
        return None

    def _finish(self) -> None:
        extra = self._next()
        if extra is not None:
            self._verifier.update(extra)  # raises: the payload is longer than its header says
        self._verifier.finish()
        self._done = True
        # Read to the end: what the chunks come from is freed at once (a pooled connection goes back). The
        # payload is verified: a failure to free it (a connection that fails to close) does not fail the read.
        with suppress(Exception):
            self._release()

    def _release(self) -> None:
        release, self._release_once = self._release_once, None
        if release is not None:
            release()

    def close(self) -> None:
        """Close the stream, releasing what the chunks come from if that was not done yet."""
        if not self.closed:
            try:
                self._release()
            finally:
                super().close()


class Codec:
    """Encodes messages into envelopes and decodes them back, verifying everything.

    Args:
        signing_key: when set, heads carry a keyed BLAKE3 MAC and decoding refuses artifacts that were
            not signed with the same key. Given a ``place`` (``(namespace, step_id)``), a signing codec
            binds the MAC to it (``"blake3-keyed-place"``), and decoding for a place refuses artifacts
            signed for any other place or not bound to one. Unsigned codecs ignore ``place``.
        compress_threshold: JSON and text payloads of at least this many bytes are zstd-compressed when
            that saves at least an eighth; ``None`` disables compression. ``bytes`` content is never
            compressed, so its stored payload is exactly the bytes saved.

    Raises:
        ValueError: ``signing_key`` is empty. ``None`` means "do not sign"; an empty key is what a missing
            secret turns into (``os.environ.get("KEY", "").encode()``) and must not quietly mean the same.
    """

    def __init__(
        self, *, signing_key: bytes | None = None, compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD
    ) -> None:
        if signing_key is not None and not signing_key:
            raise ValueError("signing_key is empty; pass None to not sign")
        self._key = blake3.blake3(signing_key, derive_key_context=_KEY_CONTEXT).digest() if signing_key else None
        self.compress_threshold = compress_threshold

    @property
    def signed(self) -> bool:
        """Whether this codec signs and requires signatures."""
        return self._key is not None

    def __repr__(self) -> str:
        return f"Codec(signed={self.signed}, compress_threshold={self.compress_threshold})"

    # -- encoding -------------------------------------------------------------------------------------

    def encode(self, message: Message, *, place: tuple[str, str] | None = None) -> Encoded:
        """Encode ``message``; a signing codec binds the signature to ``place`` (``(namespace, step_id)``).

        Raises:
            SerializationError: if the content cannot be encoded.
            ValueError: if ``place`` holds a string that is not UTF-8 or longer than 65,535 bytes.
        """
        reuse = _REUSE.get()
        codec, raw = _content_bytes(message.content, reuse)
        digest = _reused_digest(message.content, codec, raw, reuse)
        stored, compression = raw, None
        threshold = self.compress_threshold
        if codec != "bytes" and threshold is not None and len(raw) >= threshold:
            packed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
            # Kept uncompressed when it saves too little, or expands more than readers accept (extremely
            # repetitive text): readers refuse such a ratio as a decompression bomb.
            if len(packed) <= len(raw) - len(raw) // 8 and len(raw) <= MAX_COMPRESSION_RATIO * len(packed):
                stored, compression = packed, "zstd"
        head, header, identity = self._encode_head(
            codec, message.media_type, message.schema, message.metadata, message.created_at, len(raw), digest,
            len(stored), compression, place,
        )  # fmt: skip
        return Encoded(head=head, payload=stored, header=header, identity_json=identity)

    def encode_head(
        self,
        *,
        codec: str,
        media_type: str,
        schema: SchemaInfo | None,
        metadata: Any,
        created_at: datetime,
        size: int,
        digest: str,
        stored_size: int | None = None,
        compression: str | None = None,
        place: tuple[str, str] | None = None,
    ) -> tuple[bytes, Header]:
        """Build the head for a payload described by these fields (streaming writers hash first, then call this).

        ``digest`` is the BLAKE3 hex digest of the uncompressed payload of ``size`` bytes. ``place`` is as
        for :meth:`encode`.

        Raises:
            SerializationError: an unknown codec or compression, a malformed digest or size, metadata that
                is not JSON, or a header above the size limit.
            ValueError: if ``place`` holds a string that is not UTF-8 or longer than 65,535 bytes.
        """
        stored_size = size if stored_size is None else stored_size
        head, header, _ = self._encode_head(
            codec, media_type, schema, metadata, created_at, size, digest, stored_size, compression, place
        )
        return head, header

    def encode_stream_head(
        self, template: Message, *, size: int, digest: str, place: tuple[str, str]
    ) -> tuple[bytes, Header]:
        """The head of a streamed ``bytes`` payload that takes its other fields from ``template``.

        For a backend's ``_save_stream``: ``template`` is the message the store handed it, whose media type,
        schema, metadata and ``created_at`` the artifact keeps (its content is ignored). ``size`` and
        ``digest`` describe the payload as :meth:`encode_head` has them; the payload is stored
        uncompressed, as every ``bytes`` payload is. ``place`` is ``(namespace, step_id)``, as for
        :meth:`encode`.

        Raises:
            SerializationError: a malformed digest or size, or a header above the size limit.
            ValueError: if ``place`` holds a string that is not UTF-8 or longer than 65,535 bytes.
        """
        head, header, _ = self._encode_head(
            "bytes", template.media_type, template.schema, template.metadata, template.created_at, size, digest,
            size, None, place,
        )  # fmt: skip
        return head, header

    def _encode_head(
        self,
        codec: str,
        media_type: str,
        schema: SchemaInfo | None,
        metadata: Any,
        created_at: datetime,
        size: int,
        digest: str,
        stored_size: int,
        compression: str | None,
        place: tuple[str, str] | None,
    ) -> tuple[bytes, Header, bytes]:
        """The head, the header and the identity JSON (see :attr:`Encoded.identity_json`)."""
        if codec not in _CODECS:
            raise SerializationError(f"unknown codec {codec!r}")
        if compression is not None and compression != "zstd":
            raise SerializationError(f"unknown compression {compression!r}")
        if type(size) is not int or type(stored_size) is not int or size < 0 or stored_size < 0:
            raise SerializationError("sizes must be non-negative integers")
        if compression is not None and size > MAX_COMPRESSION_RATIO * stored_size:
            # Every reader would refuse it (see MAX_COMPRESSION_RATIO): store such a payload uncompressed.
            raise SerializationError(
                f"a compressed payload may expand at most {MAX_COMPRESSION_RATIO} times; {stored_size} bytes"
                f" expanding to {size} must be stored uncompressed"
            )
        if type(digest) is not str or _HEX_DIGEST.fullmatch(digest) is None:
            raise SerializationError("digest must be 64 lower-case hex digits of BLAKE3")
        # Unsigned codecs ignore the place: a plain tag is not a signature, so binding it would prove nothing.
        key = self._key
        mac = _MAC_PLAIN if key is None else _MAC_KEYED if place is None else _MAC_PLACE
        prefix_of_place = place_bytes(place) if key is not None and place is not None else b""
        reuse = _REUSE.get()
        try:
            media_json = _json_str(media_type)
            if schema is None:
                schema_json = "null"
            elif reuse is None or schema.json_schema is None:
                schema_json = _schema_json(schema)
            else:
                # A frozen model around a frozen document: its encoding cannot change while the record holds it.
                schema_json = reuse.text(schema, lambda: _schema_json(schema))
            metadata_json = _canonical_metadata(metadata, reuse)
            # datetime's own isoformat: a subclass's (pandas' Timestamp adds nanoseconds) is not the format's.
            created = datetime.isoformat(created_at.astimezone(UTC)).replace("+00:00", "Z")
            compression_json = "null" if compression is None else '"zstd"'
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"metadata is not JSON-serializable: {exc}") from exc
        except OverflowError as exc:
            # encode_head takes any aware datetime; 9999-12-31 23:59 at UTC-1 has no UTC datetime.
            raise SerializationError(f"created_at is out of range in UTC: {exc}") from exc
        # Exactly canonical_json() of the header object (keys in sorted order, compact), written out
        # directly: every value is either fixed, checked above, or already canonical JSON. The tests
        # compare it with canonical_json() of the same object.
        header_bytes = (
            f'{{"codec":"{codec}","compression":{compression_json},'
            f'"created_at":"{created}","digest":{{"alg":"blake3","hex":"{digest}"}},"mac":"{mac}",'
            f'"media_type":{media_json},"metadata":{metadata_json},"schema":{schema_json},'
            f'"size":{size},"stored_size":{stored_size}}}'
        ).encode()
        if len(header_bytes) > MAX_HEADER_SIZE:
            raise SerializationError(f"header is {len(header_bytes)} bytes; the limit is {MAX_HEADER_SIZE}")
        # The codec is one of _CODECS and the digest was checked to be hex: neither needs escaping.
        identity = _identity_json(f'"{codec}"', media_json, schema_json, metadata_json, size, f'"{digest}"')
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
        # Positional: with keywords a named tuple costs more than twice as much to build.
        header = Header(
            codec, compression, media_type, schema, metadata, created_at, size, stored_size, digest, "blake3", mac
        )
        return prefix + self._tag(prefix, prefix_of_place), header, identity

    def _tag(self, data: bytes | memoryview, place: bytes = b"") -> bytes:
        """The tag of head body ``data``: plain, keyed, or keyed over ``place`` (PLACE bytes) then ``data``."""
        if self._key is None:
            return blake3.blake3(data).digest()
        hasher = blake3.blake3(key=self._key)
        if place:
            # Fed in two updates: the place is never concatenated with the head into a copy.
            hasher.update(place)
        hasher.update(data)
        return hasher.digest()

    # -- decoding -------------------------------------------------------------------------------------

    @staticmethod
    def head_size(prefix: bytes | memoryview) -> int:
        """The size of the whole head, from its first :data:`~artifactstore_core.envelope.PREFIX_SIZE` bytes.

        Raises:
            UnsupportedFormatError: if the bytes are not an envelope or the version is unknown.
            ArtifactCorruptedError: if fewer than :data:`~artifactstore_core.envelope.PREFIX_SIZE` bytes are given
                or the length is absurd.
        """
        if len(prefix) < PREFIX_SIZE:
            raise ArtifactCorruptedError("stored artifact is truncated (no complete envelope prefix)")
        magic, version, length = _PREFIX.unpack_from(prefix)
        if magic != MAGIC:
            raise UnsupportedFormatError("stored bytes are not an artifactstore envelope (bad magic)")
        if version != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"envelope format version {version} is not supported (this library reads {FORMAT_VERSION});"
                " upgrade artifactstore-core"
            )
        if length > MAX_HEADER_SIZE:
            raise ArtifactCorruptedError(f"envelope header length {length} exceeds {MAX_HEADER_SIZE}")
        return PREFIX_SIZE + int(length) + TAG_SIZE

    def decode_head(self, head: bytes | memoryview, *, place: tuple[str, str] | None = None) -> Header:
        """Verify and parse a head (exactly :meth:`head_size` bytes).

        A signing codec given ``place`` (``(namespace, step_id)``) accepts only ``"blake3-keyed-place"``
        tags computed for that place; without a place it accepts only ``"blake3-keyed"`` tags. An unsigned
        codec accepts only plain tags and ignores ``place``.

        Raises:
            UnsupportedFormatError: not an envelope, unknown version, codec or compression.
            ArtifactCorruptedError: wrong length, tag mismatch, malformed header, missing signature, a
                signature for another place (namespace or step id), or a signed artifact not bound to
                ``place``.
            ConfigurationError: the artifact is signed and this codec has no signing key.
            PayloadTooLargeError: the header is over the limit of
                :func:`~artifactstore_core.envelope.limiting_json_content`, when called within it (before it
                is parsed).
            ValueError: if ``place`` holds a string that is not UTF-8 or longer than 65,535 bytes.
        """
        try:
            return self._verify_head(head, place)
        except ArtifactStoreError as exc:
            _attribute(exc, place)
            raise

    def _verify_head(self, head: bytes | memoryview, place: tuple[str, str] | None) -> Header:
        size = self.head_size(head)
        if len(head) != size:
            raise ArtifactCorruptedError(f"envelope head is {len(head)} bytes; expected {size}")
        if (limit := _JSON_LIMIT.get()) is not None and size - PREFIX_SIZE - TAG_SIZE > limit[0]:
            # The header is JSON too (its metadata and schema), parsed below before anything else is checked.
            raise PayloadTooLargeError(
                f"artifact has an envelope header of {size - PREFIX_SIZE - TAG_SIZE} bytes of JSON (its metadata "
                f"and schema); at most {limit[0]} are parsed here ({limit[1]}), because a parsed JSON value takes "
                "many times its text in memory"
            )
        # Sliced as given: a bytes head (what backends read) is sliced into small copies, cheaper than
        # making memoryviews of it; a memoryview head is sliced into views.
        body, tag = head[: size - TAG_SIZE], bytes(head[size - TAG_SIZE :])
        try:
            text: str | None = str(head[PREFIX_SIZE : size - TAG_SIZE], "utf-8")
        except UnicodeDecodeError:
            text = None
        # A header as writers write it is read through the pattern (see _CANONICAL_HEADER), any other as JSON.
        canonical = _CANONICAL_HEADER.fullmatch(text) if text is not None else None
        doc: Any = None
        if canonical is not None:
            mac = canonical[5]
        else:
            if text is not None:
                with suppress(ValueError):
                    doc = _loads_text(text)
            mac = doc.get("mac") if isinstance(doc, dict) else None
        if self._key is None:
            # Unsigned: the plain tag, computed inline (the common case; the place plays no part).
            expected, actual = _MAC_PLAIN, blake3.blake3(body).digest()
        elif place is None:
            expected, actual = _MAC_KEYED, self._tag(body)
        else:
            expected, actual = _MAC_PLACE, self._tag(body, place_bytes(place))
        # Nothing in the header is trusted until the tag matches; a mismatch is only diagnosed from it.
        if actual != tag or mac != expected:
            raise self._refusal(body, tag, mac, place)
        if canonical is None and not isinstance(doc, dict):
            raise ArtifactCorruptedError("envelope header is not a JSON object")
        try:
            if canonical is not None:
                codec, compression, created, digest_hex, _, media_type, size_text, stored_text = canonical.groups()
                return _header(
                    codec, None if compression == "null" else "zstd", media_type, None, _EMPTY, created,
                    int(size_text), int(stored_text), digest_hex, mac,
                )  # fmt: skip
            return self._parse_header(doc, mac)
        except (KeyError, TypeError, ValueError, ValidationError, RecursionError, OverflowError) as exc:
            # OverflowError: a created_at whose conversion to UTC leaves the datetime range
            # ("9999-12-31T23:59:59-01:00").
            raise ArtifactCorruptedError(f"envelope header is malformed: {exc}") from exc

    def _refusal(
        self, body: bytes | memoryview, tag: bytes, mac: Any, place: tuple[str, str] | None
    ) -> ArtifactCorruptedError | ConfigurationError:
        """The error for a head whose tag failed, diagnosed from its unverified ``mac`` for the message only."""
        key = self._key
        if key is None:
            if mac in _SIGNED_MACS:
                return ConfigurationError(
                    "artifact is signed; set ARTIFACT_STORE_SIGNING_KEY to the signing key to read it"
                )
            return ArtifactCorruptedError("envelope header digest does not match: the artifact was altered or damaged")
        if mac == _MAC_PLAIN and blake3.blake3(body).digest() == tag:
            return ArtifactCorruptedError("artifact is not signed, and this store requires signed artifacts")
        if place is not None and mac == _MAC_KEYED and self._tag(body) == tag:
            # Signed with our key but for no place: accepting it would let anyone who can write to the
            # backend copy an artifact signed by a standalone tool to any id or namespace.
            return ArtifactCorruptedError(
                "artifact is signed but not bound to its namespace and step id, and this store requires that"
            )
        if place is not None and mac == _MAC_PLACE:
            # Which place (or key) it was signed for cannot be known: neither is stored, only covered. A
            # reader with the wrong key is the common case in practice, so it is named too.
            return ArtifactCorruptedError(
                "envelope signature does not match: the artifact was signed for a different namespace or step id,"
                " or with another signing key (check ARTIFACT_STORE_SIGNING_KEY), or altered"
            )
        if place is None and mac == _MAC_PLACE:
            return ArtifactCorruptedError(
                "artifact is signed for a namespace and step id; decode it with place=(namespace, step_id)"
                " (or the artifact was altered)"
            )
        return ArtifactCorruptedError(
            "envelope signature does not match: the artifact was signed with another signing key (check"
            " ARTIFACT_STORE_SIGNING_KEY), or altered or damaged"
        )

    @staticmethod
    def _parse_header(doc: dict[str, Any], mac: str) -> Header:
        # Runs for every artifact read: the checks are written out (exact types, as JSON parsing gives
        # them) rather than through helpers, which cost a third of this function's time.
        get = doc.get
        codec = doc["codec"]
        if codec not in _CODECS:
            raise UnsupportedFormatError(f"unknown envelope codec {codec!r}")
        compression = get("compression")
        if compression is not None and compression != "zstd":
            raise UnsupportedFormatError(f"unknown envelope compression {compression!r}")
        # Each field's type is checked before it is used: a header with a valid plain tag can be forged by
        # anyone who can write to the backend, and must fail as corrupted data, never as an AttributeError.
        digest = doc["digest"]
        if type(digest) is not dict:
            raise ValueError("header field 'digest' must be a dict")
        if digest.get("alg") != "blake3":
            raise UnsupportedFormatError(f"unknown digest algorithm {digest.get('alg')!r}")
        digest_hex = digest["hex"]
        if type(digest_hex) is not str:
            raise ValueError("header field 'hex' must be a str")
        schema = get("schema")
        metadata = get("metadata")
        if metadata is None or metadata == {}:
            # Most messages carry no metadata; the one empty FrozenDict serves them all (it is immutable).
            metadata = _EMPTY
        elif type(metadata) is dict:
            metadata = freeze_json(metadata, where="metadata")
        else:
            raise ValueError("metadata must be a JSON object")
        created, size, stored_size = doc["created_at"], doc["size"], doc["stored_size"]
        return _header(
            codec, compression, doc["media_type"], schema, metadata, created, size, stored_size, digest_hex, mac
        )

    def header_of(self, blob: bytes | memoryview, *, place: tuple[str, str] | None = None) -> Header:
        """Verify and parse the head at the start of ``blob`` (head followed by anything) for ``place``.

        Raises:
            The errors of :meth:`decode_head`.
        """
        view = memoryview(blob)
        size = self._whole_head_size(view, place)
        return self.decode_head(view[:size], place=place)

    def decode(
        self, head: bytes | memoryview, payload: bytes | memoryview, *, place: tuple[str, str] | None = None
    ) -> Message:
        """Verify and decode an artifact stored as head and payload, for ``place`` (see :meth:`decode_head`).

        Raises:
            UnsupportedFormatError, ArtifactCorruptedError, ConfigurationError, ValueError: as
                :meth:`decode_head`, and :class:`~artifactstore_core.errors.ArtifactCorruptedError` for a
                payload of the wrong size or digest.
            PayloadTooLargeError: as :meth:`decode_payload`, within
                :func:`~artifactstore_core.envelope.limiting_json_content`.
        """
        # decode_head and decode_payload in one try: both attribute their errors to the place alike.
        try:
            return self.decode_payload(self._verify_head(head, place), payload)
        except ArtifactStoreError as exc:
            _attribute(exc, place)
            raise

    def decode_bytes(self, blob: bytes | memoryview, *, place: tuple[str, str] | None = None) -> Message:
        """Verify and decode an artifact stored as one buffer (head followed by payload), for ``place``.

        Raises:
            The errors of :meth:`decode`.
        """
        view = memoryview(blob)
        size = self._whole_head_size(view, place)
        return self.decode(view[:size], view[size:], place=place)

    def _whole_head_size(self, view: memoryview, place: tuple[str, str] | None) -> int:
        """The head's size from the prefix of ``view``, which must hold the whole head.

        Raises:
            UnsupportedFormatError, ArtifactCorruptedError: as :meth:`head_size`, or the head is cut short;
                naming ``place``.
        """
        try:
            size = self.head_size(view[:PREFIX_SIZE])
            if len(view) < size:
                raise ArtifactCorruptedError("stored artifact is truncated inside its head")
        except ArtifactStoreError as exc:
            _attribute(exc, place)
            raise
        return size

    def decode_payload(self, header: Header, payload: bytes | memoryview) -> Message:
        """Verify ``payload`` against a verified ``header`` and build the message.

        Raises:
            ArtifactCorruptedError: a payload of the wrong size or digest, or content that is not valid for
                its codec.
            PayloadTooLargeError: JSON content over the limit of
                :func:`~artifactstore_core.envelope.limiting_json_content`, when called within it (before
                anything is decompressed or parsed).
        """
        # The fields are read once (this runs for every artifact read; each attribute of a named tuple is a lookup).
        codec, compression, media_type, schema, metadata, created_at, size, stored_size, digest, _, _ = header
        if len(payload) != stored_size:
            raise ArtifactCorruptedError(f"stored payload is {len(payload)} bytes; its header says {stored_size}")
        if codec == "json" and (limit := _JSON_LIMIT.get()) is not None and size > limit[0]:
            raise PayloadTooLargeError(
                f"artifact holds {size} bytes of JSON content; at most {limit[0]} are parsed here "
                f"({limit[1]}), because a parsed JSON value takes many times its text in memory; store large "
                "data as bytes or text"
            )
        raw: bytes | memoryview = payload
        if compression == "zstd":
            # Checked again here (decode_head did) for a Header built by hand: this is what bounds the
            # allocation below to a multiple of the bytes already read.
            _check_ratio(size, stored_size)
            # The frame's declared content size decides what zstandard allocates (max_output_size only
            # bounds frames without one), so a frame claiming more than the header's size is refused
            # before anything is decompressed.
            try:
                declared = zstandard.frame_content_size(bytes(payload[:18]))
            except zstandard.ZstdError as exc:
                raise ArtifactCorruptedError("compressed payload has no valid zstd frame header") from exc
            if declared != size:
                raise ArtifactCorruptedError(f"compressed payload declares {declared} bytes; its header says {size}")
            try:
                raw = zstandard.ZstdDecompressor().decompress(bytes(payload), max_output_size=size)
            except zstandard.ZstdError as exc:
                raise ArtifactCorruptedError("compressed payload cannot be decompressed") from exc
        if len(raw) != size:
            raise ArtifactCorruptedError(f"payload is {len(raw)} bytes; its header says {size}")
        if codec == "bytes" and not isinstance(raw, bytes):
            # Copied before it is hashed (the message keeps a copy either way): the digest verified is then
            # that of the very bytes the message holds, whatever becomes of the caller's buffer.
            raw = bytes(raw)
        if _digest(raw) != digest:
            raise ArtifactCorruptedError("payload digest does not match its header")
        content: Any
        try:
            # JSON is parsed straight into frozen values (what message_from(header, json.loads(raw)) gives, in one
            # pass); bytes need no check, and UTF-8 decoding already refuses encoded surrogates: no second
            # scan of the content (message_from's checks) on the read path.
            if codec == "json":
                content = loads_frozen(raw)
            else:
                content = str(raw, "utf-8") if codec == "utf-8" else raw
                reuse = _REUSE.get()
                if reuse is not None and type(raw) is bytes:
                    # Recorded only when what was hashed is immutable (text decoded from a caller's
                    # memoryview is not), so the digest is provably that of the content's encoding.
                    reuse.digests[id(content)] = (content, digest)
            return trusted_message(content, schema, metadata, media_type, created_at)
        except ValueError as exc:  # UnicodeDecodeError included; loads_frozen turns RecursionError into it
            # json.loads turns an escaped lone surrogate into a str that UTF-8 cannot encode; freezing the
            # content refuses it, so a forged artifact cannot yield a message no backend could store.
            raise ArtifactCorruptedError(f"payload is not valid {codec}") from exc

    @staticmethod
    def message_from(header: Header, content: Any) -> Message:
        """Build the message a header describes around already-verified content.

        ``content`` must be bytes, str, or a JSON value this codec just parsed (nobody else holds it).

        Raises:
            ValueError: if JSON content holds what a message refuses (a lone surrogate, NaN).
        """
        if isinstance(content, str):
            check_text(content)
        elif not isinstance(content, bytes):
            content = freeze_json(content)
        # Every field is already valid: content frozen here, the header's fields checked when it was parsed
        # (created_at aware UTC, metadata frozen, schema a SchemaInfo). Skipping re-validation halves the
        # cost of decoding a small message.
        return trusted_message(content, header.schema, header.metadata, header.media_type, header.created_at)
