"""docs/s3.md: "A store used in a forked child builds a new client there"."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable

import pytest

from artifactstore_core import Message
from artifactstore_s3 import S3Store


def _in_child(store: S3Store, inherited: object) -> None:
    client = store.client
    assert client is not inherited, "the forked child kept the parent's boto3 client (and its sockets)"
    store.save("child", Message(content=b"from the child"))
    assert store.get("parent").content == b"from the parent"
    assert store.client is client  # built once per process, not per call


@pytest.mark.timeout(120)
def test_a_forked_child_builds_its_own_client(new_s3_store: Callable[..., S3Store]) -> None:
    store = new_s3_store("fork")
    store.save("parent", Message(content=b"from the parent"))  # the parent's client holds pooled connections
    inherited = store.client
    child = multiprocessing.get_context("fork").Process(target=_in_child, args=(store, inherited))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        child.start()
    child.join(timeout=90)
    assert child.exitcode == 0
    assert store.get("child").content == b"from the child"
    assert store.client is inherited  # the parent keeps its client
    store.save("parent-again", Message(content=b"again"))
    assert store.get("parent-again").content == b"again"
