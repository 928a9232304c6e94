"""The wire protocol shared by the server and the client: paths, media types and error problems.

Paths: ``/v1/namespaces/{namespace}/artifacts/{step_id}``, and ``.../artifacts/{step_id}/info``
(:data:`INFO_SEGMENT`) for an artifact's info alone. A namespace or step id travels as one path segment in
which every byte of its UTF-8 encoding that is not an ASCII letter, digit, ``-``, ``_`` or ``~`` is
percent-encoded, including ``/``, ``%`` and ``.`` (so no id can become a ``..`` dot segment that a client or
proxy would normalise away). The server percent-decodes each segment exactly once and never sanitizes. So no
step id can reach the info sub-resource: an id ``info``, ``x/info`` or ``x?view=info`` is one segment
(``.../artifacts/info``, ``.../artifacts/x%2Finfo``, ``.../artifacts/x%3Fview%3Dinfo``), and the info path
has one segment more.

Errors: every failure is a JSON problem body (``application/problem+json``, after RFC 9457) whose ``type``
is the name of a core error class, plus an ``Artifactstore-Error`` header with the same name (so a ``HEAD``
response, which has no body, is typed too). A ``HEAD`` problem also carries the problem's ``detail`` in an
``Artifactstore-Error-Detail`` header (:func:`encode_detail`), so a failed ``exists`` says why. The client
maps a name back to a class only through :data:`ERROR_CLASSES`, an explicit allow-list: a class is never
looked up or imported by a name read from the network.

Marker: every response the server makes, success or problem (``HEAD`` and ``204`` included), carries
``Artifactstore-Protocol: 1`` (:data:`PROTOCOL_HEADER`, :data:`PROTOCOL_VERSION`). A success status alone
proves nothing: a mistyped endpoint may reach another web server (a catch-all app, a proxy's default page,
a WebDAV server) that answers ``PUT`` or ``HEAD`` with 200, and the client would report a save that stored
nothing. So the client trusts a success answer only when it carries the marker.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from artifactstore_core.errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    BackendNotFoundError,
    BackendTimeoutError,
    BackendUnavailableError,
    CapacityError,
    ConfigurationError,
    InvalidStepIdError,
    PayloadTooLargeError,
    PluginLoadError,
    SchemaMismatchError,
    SerializationError,
    StoreClosedError,
    UnsupportedFormatError,
    UnsupportedOperationError,
)
from artifactstore_core.ids import is_legal

__all__ = [
    "API_PREFIX",
    "ERROR_CLASSES",
    "ERROR_DETAIL_HEADER",
    "ERROR_HEADER",
    "ERROR_STATUS",
    "INFO_SEGMENT",
    "MAX_DETAIL_BYTES",
    "MEDIA_TYPE_ENVELOPE",
    "MEDIA_TYPE_PROBLEM",
    "PROBLEM_BAD_REQUEST",
    "PROBLEM_INTERNAL",
    "PROBLEM_METHOD_NOT_ALLOWED",
    "PROBLEM_NOT_FOUND",
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "decode_cursor",
    "decode_detail",
    "encode_cursor",
    "encode_detail",
    "problem_document",
    "quote_segment",
    "status_for",
]

#: The version prefix of every API path.
API_PREFIX = "/v1"
#: The media type of a request or response body holding one artifact envelope (docs/format.md).
MEDIA_TYPE_ENVELOPE = "application/vnd.artifactstore.envelope"
#: The last segment of ``/v1/namespaces/{namespace}/artifacts/{step_id}/info``, whose ``GET`` answers the
#: artifact's info as JSON (the item of a list page) from its head alone, never reading its payload.
INFO_SEGMENT = "info"
#: The media type of error bodies.
MEDIA_TYPE_PROBLEM = "application/problem+json"
#: The response header naming the problem type (also on ``HEAD`` responses, which carry no body).
ERROR_HEADER = "Artifactstore-Error"
#: The response header that carries a ``HEAD`` problem's ``detail`` (:func:`encode_detail`): no body carries it.
ERROR_DETAIL_HEADER = "Artifactstore-Error-Detail"
#: The most bytes of a detail's UTF-8 encoding that :data:`ERROR_DETAIL_HEADER` carries (at most three
#: times that once percent-encoded: far below the 8 to 16 KiB of headers that servers and proxies accept).
MAX_DETAIL_BYTES = 1024
#: The response header that marks every answer of an artifact server, whose value is :data:`PROTOCOL_VERSION`.
PROTOCOL_HEADER = "Artifactstore-Protocol"
#: The protocol version this server speaks and this client understands (the API of :data:`API_PREFIX`).
PROTOCOL_VERSION = "1"

#: Problem types that are not core errors: a malformed request, an unknown path, a wrong method, a
#: server bug. The client raises :class:`~artifactstore_core.BackendError` for them.
PROBLEM_BAD_REQUEST = "InvalidRequest"
PROBLEM_NOT_FOUND = "NotFound"
PROBLEM_METHOD_NOT_ALLOWED = "MethodNotAllowed"
PROBLEM_INTERNAL = "InternalServerError"

#: The allow-list of core error classes a problem ``type`` may name. Explicit on purpose.
ERROR_CLASSES: Mapping[str, type[ArtifactStoreError]] = {
    "AccessDeniedError": AccessDeniedError,
    "ArtifactCorruptedError": ArtifactCorruptedError,
    "ArtifactExistsError": ArtifactExistsError,
    "ArtifactNotFoundError": ArtifactNotFoundError,
    "ArtifactStoreError": ArtifactStoreError,
    "BackendError": BackendError,
    "BackendNotFoundError": BackendNotFoundError,
    "BackendTimeoutError": BackendTimeoutError,
    "BackendUnavailableError": BackendUnavailableError,
    "CapacityError": CapacityError,
    "ConfigurationError": ConfigurationError,
    "InvalidStepIdError": InvalidStepIdError,
    "PayloadTooLargeError": PayloadTooLargeError,
    "PluginLoadError": PluginLoadError,
    "SchemaMismatchError": SchemaMismatchError,
    "SerializationError": SerializationError,
    "StoreClosedError": StoreClosedError,
    "UnsupportedFormatError": UnsupportedFormatError,
    "UnsupportedOperationError": UnsupportedOperationError,
}

#: The HTTP status of each core error class (a subclass not listed takes its nearest listed base's).
ERROR_STATUS: Mapping[type[BaseException], int] = {
    InvalidStepIdError: 400,
    AccessDeniedError: 403,  # the server's own backend refused it; 401 is reserved for the bearer token
    ArtifactNotFoundError: 404,
    ArtifactExistsError: 409,
    PayloadTooLargeError: 413,
    SerializationError: 422,
    UnsupportedOperationError: 501,
    BackendError: 502,
    BackendUnavailableError: 503,
    StoreClosedError: 503,
    BackendTimeoutError: 504,
    CapacityError: 507,
    ConfigurationError: 500,
    ArtifactStoreError: 500,
}

# What a detail keeps as it is in a header value: visible ASCII and the space, except "%" (the escape).
_DETAIL_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
# Unreserved characters minus "." (RFC 3986 lets "." and ".." segments be removed as dot segments).
_SAFE = "-_~"


def status_for(error: ArtifactStoreError) -> int:
    """The HTTP status for ``error``: that of its class or of its nearest listed base class."""
    for cls in type(error).__mro__:
        status = ERROR_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def quote_segment(value: str) -> str:
    """Percent-encode a namespace or step id as one path segment (the inverse of one percent-decoding).

    Every byte of the UTF-8 encoding except ASCII letters, digits, ``-``, ``_`` and ``~`` is escaped, so the
    result never contains ``/``, ``?``, ``#``, ``\\`` or ``.``.
    """
    return quote(value, safe=_SAFE, encoding="utf-8", errors="strict").replace(".", "%2E")


def encode_cursor(step_id: str) -> str:
    """The opaque list cursor that resumes after ``step_id``."""
    return base64.urlsafe_b64encode(step_id.encode("utf-8")).decode("ascii")


def decode_cursor(cursor: str) -> str:
    """The step id a cursor made by :func:`encode_cursor` resumes after.

    Raises:
        ValueError: if ``cursor`` was not made by :func:`encode_cursor` of a legal step id (a page ends at an
            artifact, so a cursor of any other text was not made by a server).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii"))
        step_id = raw.decode("utf-8")
    except (binascii.Error, UnicodeError) as exc:
        raise ValueError("malformed cursor") from exc
    if not is_legal(step_id) or encode_cursor(step_id) != cursor:
        raise ValueError("malformed cursor")
    return step_id


def problem_document(
    type_: str, *, status: int, title: str, detail: str, retryable: bool = False, **fields: Any
) -> dict[str, Any]:
    """A problem body: ``type``, ``title``, ``status``, ``detail``, ``retryable`` and optional fields."""
    doc: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail, "retryable": retryable}
    doc.update({key: value for key, value in fields.items() if value is not None})
    return doc


def encode_detail(detail: str) -> str:
    """``detail`` as the value of :data:`ERROR_DETAIL_HEADER`: percent-encoded UTF-8 (every byte but visible
    ASCII and the space, and every ``%``), so that any text is a valid header value that cannot end the header
    or start another. Cut to :data:`MAX_DETAIL_BYTES` bytes of UTF-8 (at a character's boundary, marked
    ``...``), and stripped of surrounding white space, which a header value loses.
    """
    raw = detail.strip().encode("utf-8")
    if len(raw) > MAX_DETAIL_BYTES:
        raw = raw[: MAX_DETAIL_BYTES - 3].decode("utf-8", errors="ignore").rstrip().encode("utf-8") + b"..."
    return quote(raw, safe=_DETAIL_SAFE)


def decode_detail(value: str) -> str:
    """The detail :func:`encode_detail` encoded as ``value``; undecodable bytes are replaced, never raised on,
    and the result is cut to :data:`MAX_DETAIL_BYTES` characters (the value is text from the network)."""
    return unquote(value, encoding="utf-8", errors="replace")[:MAX_DETAIL_BYTES]
