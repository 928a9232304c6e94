"""Hand-made envelopes for bad-input tests: valid ones, damaged ones, and ones that lie about themselves.

Built from the specification in ``docs/format.md`` (not by calling private codec methods), so these tests
also check that the format is what the document says.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import blake3

from artifactstore_core import Codec, Message

MAGIC = b"ARTF"


def split(message: Message, codec: Codec | None = None) -> tuple[bytes, bytes]:
    """The ``(head, payload)`` a byte-storing backend stores for ``message``."""
    encoded = (codec or Codec()).encode(message)
    return encoded.head, encoded.payload


def forge(header: dict[str, Any], payload: bytes, *, version: int = 1) -> tuple[bytes, bytes]:
    """An unsigned envelope with any header and version, and the tag that matches it, as any writer (or
    attacker) without a signing key can compute it."""
    body = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    prefix = struct.pack(">4sBI", MAGIC, version, len(body)) + body
    return prefix + blake3.blake3(prefix).digest(), payload


def header_of(head: bytes) -> dict[str, Any]:
    """The JSON header inside a head."""
    (length,) = struct.unpack(">I", head[5:9])
    doc = json.loads(head[9 : 9 + length])
    assert isinstance(doc, dict)
    return doc


def flip(data: bytes, bit: int) -> bytes:
    """``data`` with bit number ``bit`` (counting from the first byte's lowest bit) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


class Exploit:
    """Unpickling this creates ``marker``: proof that a pickle was loaded (and so could run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def hostile_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded (pickle.dumps: test code crafting the attack)."""
    return pickle.dumps(Exploit(marker), protocol=2)
