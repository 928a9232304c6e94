"""Object keys: ``<prefix>/<namespace segment>/<id segment>``, always within S3's 1,024-byte key limit.

A segment is the core's :func:`~artifactstore_core.ids.encode_name` of the namespace or step id (readable,
only ``a-z 0-9 - _ %XX``) when that is short enough, else ``~`` followed by the unpadded base64url of
the name's UTF-8 bytes. The choice depends only on the name, and ``~`` never occurs in
``encode_name``'s output, so the mapping stays injective and reversible, and no segment contains ``/`` or
starts with ``.``.

Why two forms: ``encode_name`` can triple a name's length (every byte of ``"..."`` or of ``"ÉÉÉ"``
becomes ``%XX``), so a 128-byte namespace and a 256-byte id could need 1,152 characters, more than S3
allows for a whole key. The base64url form is at most 4/3 of the bytes: 172 characters for the longest
namespace and 343 for the longest id.

Keys the backend reserves for itself start with ``<prefix>/.`` (a namespace segment never does):
``<prefix>/.probe/`` for the conditional-write probe and ``<prefix>/.staging/`` for streamed uploads in
progress.
"""

from __future__ import annotations

import base64
import binascii

from artifactstore_core.errors import ConfigurationError
from artifactstore_core.ids import (
    MAX_ID_BYTES,
    MAX_NAMESPACE_BYTES,
    decode_name,
    encode_name,
    validate_namespace,
    validate_step_id,
)

__all__ = ["MAX_KEY_BYTES", "MAX_PREFIX_BYTES", "KeyLayout", "decode_segment", "encode_segment"]

#: S3's limit on a key, in bytes of UTF-8.
MAX_KEY_BYTES = 1024
#: Longest readable namespace segment; longer namespaces use the base64url form.
NAMESPACE_SEGMENT_LIMIT = 192
#: Longest readable id segment; longer ids use the base64url form.
ID_SEGMENT_LIMIT = 384
_COMPACT = "~"


def _b64_len(size: int) -> int:
    return 1 + (4 * size + 2) // 3


#: Longest prefix (bytes) that keeps the longest possible key within :data:`MAX_KEY_BYTES`.
MAX_PREFIX_BYTES = (
    MAX_KEY_BYTES
    - 2
    - max(NAMESPACE_SEGMENT_LIMIT, _b64_len(MAX_NAMESPACE_BYTES))
    - max(ID_SEGMENT_LIMIT, _b64_len(MAX_ID_BYTES))
)


def encode_segment(name: str, limit: int) -> str:
    """The key segment of a (validated) namespace or step id: readable if it fits ``limit``, else compact."""
    readable = encode_name(name)
    if len(readable) <= limit:
        return readable
    return _COMPACT + base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii").rstrip("=")


def decode_segment(segment: str, limit: int) -> str:
    """Invert :func:`encode_segment`.

    Raises:
        ValueError: ``segment`` is not exactly what :func:`encode_segment` makes for some name (only the
            canonical form decodes, so foreign keys under a namespace are recognised and ignored).
    """
    if segment.startswith(_COMPACT):
        body = segment[1:]
        try:
            name = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"bad compact key segment {segment!r}") from exc
    else:
        name = decode_name(segment)
    if encode_segment(name, limit) != segment:
        raise ValueError(f"key segment {segment!r} is not in canonical form")
    return name


class KeyLayout:
    """Maps one namespace's step ids to object keys and back.

    Args:
        prefix: the configured key prefix, without leading or trailing ``/``.
        namespace: the store's (validated) namespace.

    Raises:
        ConfigurationError: the prefix is too long for every legal id to fit S3's key limit.
    """

    def __init__(self, prefix: str, namespace: str) -> None:
        size = len(prefix.encode("utf-8"))
        if size > MAX_PREFIX_BYTES:
            raise ConfigurationError(
                f"ARTIFACT_STORE_S3_PREFIX is {size} bytes; at most {MAX_PREFIX_BYTES} keep every legal step id "
                f"within S3's {MAX_KEY_BYTES}-byte key limit"
            )
        self.root = f"{prefix}/" if prefix else ""
        #: Every key of this namespace starts with this; no other namespace's key does.
        self.namespace_prefix = f"{self.root}{encode_segment(namespace, NAMESPACE_SEGMENT_LIMIT)}/"

    def key(self, step_id: str) -> str:
        """The object key of ``step_id`` (validated) in this namespace."""
        return self.namespace_prefix + encode_segment(step_id, ID_SEGMENT_LIMIT)

    def step_id(self, key: str) -> str | None:
        """The step id whose key is ``key``, or ``None`` for a key this backend did not make."""
        if not key.startswith(self.namespace_prefix):
            return None
        try:
            # InvalidStepIdError is a ValueError too: a canonical segment of an illegal id is not ours either.
            return validate_step_id(decode_segment(key[len(self.namespace_prefix) :], ID_SEGMENT_LIMIT))
        except ValueError:
            return None

    def namespace_of(self, common_prefix: str) -> str | None:
        """The namespace whose keys start with ``common_prefix`` (``<prefix>/<segment>/``), ``None`` if not ours."""
        if not (common_prefix.startswith(self.root) and common_prefix.endswith("/")):
            return None
        try:
            return validate_namespace(decode_segment(common_prefix[len(self.root) : -1], NAMESPACE_SEGMENT_LIMIT))
        except ValueError:
            return None

    def reserved(self, kind: str, name: str) -> str:
        """A key outside every namespace, for the backend's own use (``kind`` is ``probe`` or ``staging``)."""
        return f"{self.root}.{kind}/{name}"
