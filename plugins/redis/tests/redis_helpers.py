"""Helpers shared by the redis backend's tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from artifactstore_core.testing_servers import wait_for as _wait_for


def payload_of(name: str, size: int) -> bytes:
    """Deterministic, incompressible bytes for a name, so a read can be checked byte for byte."""
    seed = hashlib.blake2b(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` after ``timeout`` seconds."""
    _wait_for(condition, what, timeout, error=AssertionError)
