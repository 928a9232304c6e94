"""Cases that need no server: the memory backend beside a locked dict, and the codec beside a copy."""

from __future__ import annotations

import threading
from typing import Any

import blake3

from artifactstore_core import Codec, Message
from artifactstore_memory import MemorySpace, MemoryStore

from .harness import Case

SMALL = Message(content={"text": "x" * 900, "n": 1, "tags": ["a", "b"]})  # about 1 KB of JSON


def memory_cases() -> list[Case]:
    """Memory backend save+get of a small message beside a plain dict guarded by a lock."""
    store = MemoryStore(namespace="bench", space=MemorySpace())
    plain: dict[str, Any] = {}
    lock = threading.Lock()
    ids = [f"step-{i}" for i in range(200_000)]

    def ours(i: int) -> None:
        store.save(ids[i % len(ids)], SMALL)
        store.get(ids[i % len(ids)])

    def raw(i: int) -> None:
        with lock:
            plain[ids[i % len(ids)]] = SMALL
        with lock:
            plain[ids[i % len(ids)]]

    def reset() -> None:
        store.clear()
        plain.clear()

    return [Case("memory", "small save+get", ours, raw, number=20_000, repeat=9, target=3.0, reset=reset)]


def codec_cases() -> list[Case]:
    """Encode+decode of 64 MB of bytes beside one plain copy, and beside the digest alone."""
    codec = Codec()
    payload = bytes(64 * 1024 * 1024)
    message = Message(content=payload)

    def ours(i: int) -> None:
        encoded = codec.encode(message)
        codec.decode(encoded.head, encoded.payload)

    def copy(i: int) -> None:
        bytes(memoryview(payload))

    def digest(i: int) -> None:
        blake3.blake3(payload, max_threads=blake3.blake3.AUTO).digest()

    return [
        Case("codec", "64 MB encode+decode vs copy", ours, copy, number=3, repeat=7, target=2.0),
        Case("codec", "64 MB encode+decode vs digest", ours, digest, number=3, repeat=7),
    ]
