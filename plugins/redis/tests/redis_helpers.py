"""Helpers shared by the redis backend's tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from artifactstore_core.testing_servers import wait_for as _wait_for


def payload_of(name: str, size: int) -> bytes:
    """Deterministic, incompressible bytes for a name, so a read can be checked byte for byte."""
    seed = hashlib.blake2b(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` after ``timeout`` seconds."""
    _wait_for(condition, what, timeout, error=AssertionError)


def evict_once(admin: Any, tag: str) -> None:
    """Make the server behind ``admin`` evict keys (``INFO stats`` ``evicted_keys`` above 0), only keys of
    its own: under ``volatile-ttl``, with a ``maxmemory`` just above what it uses, keys ``{tag}:filler:N``
    with an expiry are written until one is evicted (read back, no timing). Then ``maxmemory`` and the
    policy are put back and the fillers deleted. ``tag``: a key prefix that hashes to ``admin``'s node."""
    before = admin.config_get("maxmemory*")
    admin.config_set("maxmemory-policy", "volatile-ttl")
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 2**20)
    written = 0
    try:
        while admin.info("stats")["evicted_keys"] == 0:
            admin.set(f"{tag}:filler:{written}", b"f" * 10_000, px=600_000)
            written += 1
            assert written < 10_000, "the server never evicted"
    finally:
        admin.config_set("maxmemory", before["maxmemory"])
        admin.config_set("maxmemory-policy", before["maxmemory-policy"])
        for start in range(0, written, 500):
            admin.delete(*(f"{tag}:filler:{n}" for n in range(start, min(written, start + 500))))
