"""How an artifact is laid out as one S3 object (normative description: ``docs/s3.md``).

*Split* layout, the usual one: the object body is exactly the stored payload (for ``bytes`` content, the
bytes saved) and the envelope head (magic, version, header, tag; see ``docs/format.md``) travels base64-
encoded in the user metadata ``x-amz-meta-artifactstore-head``. The header inside the head holds the
payload's size and BLAKE3 digest and the tag covers the header, so the pair is verified as a whole.

*Envelope* layout, when the head does not fit S3's 2 KB of user metadata (a large JSON Schema or large
message metadata): the body is the whole envelope (head, then payload) and the metadata says
``artifactstore-layout: envelope`` and ``artifactstore-head-size: <bytes>``. Still verified the same way;
only the payload no longer starts at byte 0.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

from artifactstore_core.envelope import Header
from artifactstore_core.errors import ArtifactCorruptedError, UnsupportedFormatError

__all__ = [
    "ENVELOPE_CONTENT_TYPE",
    "HEAD_META",
    "HEAD_SIZE_META",
    "LAYOUT_META",
    "MAX_METADATA_BYTES",
    "ObjectLayout",
    "StoredHead",
    "layout_for",
    "stored_head",
]

#: User-metadata key (without ``x-amz-meta-``) of the base64 head in the split layout.
HEAD_META = "artifactstore-head"
#: User-metadata key that marks the envelope layout.
LAYOUT_META = "artifactstore-layout"
#: User-metadata key holding the head's size in the envelope layout.
HEAD_SIZE_META = "artifactstore-head-size"
#: S3's limit on user metadata: the UTF-8 bytes of every key and value added up.
MAX_METADATA_BYTES = 2048
#: Content type of an object in the envelope layout.
ENVELOPE_CONTENT_TYPE = "application/vnd.artifactstore.envelope"

# The key is counted with its "x-amz-meta-" prefix to stay clear of the limit whichever way a service counts.
_HEAD_BUDGET = MAX_METADATA_BYTES - len("x-amz-meta-" + HEAD_META)
# A media type goes out as the Content-Type header only if it is a plain, printable ASCII value.
_HEADER_SAFE = re.compile(r"[\x20-\x7e]{1,255}")


@dataclass(frozen=True)
class ObjectLayout:
    """What to write for one artifact besides its payload.

    Attributes:
        metadata: the user metadata (keys without ``x-amz-meta-``).
        prelude: bytes that precede the payload in the body (empty in the split layout, the head in the
            envelope layout).
        content_type: the object's ``Content-Type``.
    """

    metadata: dict[str, str]
    prelude: bytes
    content_type: str


def layout_for(head: bytes, header: Header) -> ObjectLayout:
    """The layout of an artifact with this head: split if the head fits the metadata, else envelope."""
    encoded = base64.b64encode(head).decode("ascii")
    if len(encoded) <= _HEAD_BUDGET:
        if header.compression is not None:
            content_type = "application/zstd"
        elif _HEADER_SAFE.fullmatch(header.media_type):
            content_type = header.media_type
        else:
            content_type = "application/octet-stream"
        return ObjectLayout({HEAD_META: encoded}, b"", content_type)
    return ObjectLayout({LAYOUT_META: "envelope", HEAD_SIZE_META: str(len(head))}, head, ENVELOPE_CONTENT_TYPE)


@dataclass(frozen=True)
class StoredHead:
    """Where an object's head is: in its metadata (``head`` set) or at the start of its body (``size`` bytes)."""

    head: bytes | None
    size: int


def stored_head(metadata: Mapping[str, str], where: str) -> StoredHead:
    """Find the head of an object from its user metadata.

    Raises:
        UnsupportedFormatError: the object carries no artifactstore metadata (not written by this backend).
        ArtifactCorruptedError: the metadata is present but malformed.
    """
    # Header names are case-insensitive, and botocore keeps the case it receives: MinIO, and any Go reverse
    # proxy (Traefik, Caddy) in front of a service, send "X-Amz-Meta-Artifactstore-Head", which botocore
    # gives as "Artifactstore-Head". The names written are lower-case, so lower-case is what is read.
    metadata = {name.lower(): value for name, value in metadata.items()}
    encoded = metadata.get(HEAD_META)
    if encoded is not None:
        try:
            head = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ArtifactCorruptedError(f"{where}: the {HEAD_META} metadata is not valid base64") from exc
        return StoredHead(head, len(head))
    if metadata.get(LAYOUT_META) == "envelope":
        raw = metadata.get(HEAD_SIZE_META, "")
        # ASCII digits only: str.isdigit() also accepts "²" (which int() refuses with a ValueError) and other
        # scripts' digits (which int() reads), and metadata arrives decoded as Latin-1 from whatever answered.
        if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= 32 * 1024 * 1024:
            raise ArtifactCorruptedError(f"{where}: the {HEAD_SIZE_META} metadata is missing or invalid")
        return StoredHead(None, int(raw))
    raise UnsupportedFormatError(
        f"{where} is not an artifactstore artifact: it has no x-amz-meta-{HEAD_META} or x-amz-meta-{LAYOUT_META}"
    )
