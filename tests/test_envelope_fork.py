"""Threaded BLAKE3 hashing in a forked child (the codec is used after fork by every backend's store)."""

from __future__ import annotations

import multiprocessing
import warnings

import pytest

from artifactstore_core import Codec, Message
from artifactstore_core.envelope import new_hasher

LARGE = bytes(range(256)) * (16 * 1024)  # 4 MiB: hashed on several threads


def _hash_large_payloads() -> None:
    codec = Codec()
    encoded = codec.encode(Message(content=LARGE))  # one call: _digest
    assert codec.decode(encoded.head, encoded.payload).content == LARGE
    hasher = new_hasher(len(LARGE))  # hashing in pieces
    hasher.update(LARGE)
    assert hasher.hexdigest() == encoded.header.digest


# BLAKE3's threads are Rayon's global pool, which a forked child does not inherit: once the parent has
# hashed on it, a threaded hash in the child waited forever for workers that exist only in the parent.
@pytest.mark.timeout(120)
def test_a_child_forked_after_threaded_hashing_hashes_without_hanging() -> None:
    _hash_large_payloads()  # the parent starts the pool
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        child = multiprocessing.get_context("fork").Process(target=_hash_large_payloads)
        child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child hung hashing a large payload")
    assert child.exitcode == 0
    _hash_large_payloads()  # the parent keeps hashing on its pool
