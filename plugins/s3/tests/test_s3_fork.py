"""docs/s3.md: "A store used in a forked child builds a new client there", and new pools and a new lock."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from artifactstore_core import Message
from artifactstore_s3 import S3Store
from artifactstore_s3.settings import MIB

SMALL_PARTS = {"part_size": 5 * MIB, "multipart_threshold": 5 * MIB, "max_concurrency": 2}
BIG = b"m" * (6 * MIB)  # two parts: a multipart upload on the store's part pool


def _in_child(store: S3Store, inherited: object) -> None:
    client = store.client
    assert client is not inherited, "the forked child kept the parent's boto3 client (and its sockets)"
    store.save("child", Message(content=b"from the child"))
    assert store.get("parent").content == b"from the parent"
    assert store.client is client  # built once per process, not per call


def _fork(target: Callable[..., None], *args: Any) -> Any:
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        child.start()
    return child


def _finish(child: Any, what: str) -> None:
    """Wait for the child; a child still running after a generous minute is hung: kill it and fail."""
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"the forked child hung in {what}")
    assert child.exitcode == 0, f"the forked child failed in {what} (its traceback is on stderr)"


@pytest.mark.timeout(120)
def test_a_forked_child_builds_its_own_client(new_s3_store: Callable[..., S3Store]) -> None:
    store = new_s3_store("fork")
    store.save("parent", Message(content=b"from the parent"))  # the parent's client holds pooled connections
    inherited = store.client
    _finish(_fork(_in_child, store, inherited), "save and get")
    assert store.get("child").content == b"from the child"
    assert store.client is inherited  # the parent keeps its client
    store.save("parent-again", Message(content=b"again"))
    assert store.get("parent-again").content == b"again"


def _batches_in_child(store: S3Store, operation: str) -> None:
    if operation == "get_many":
        got = store.get_many(["p1", "p2", "big"])
        assert [got["p1"].content, got["p2"].content, got["big"].content] == [b"1", b"2", BIG]
    elif operation == "list":
        assert sorted(info.step_id for info in store.list()) == ["big", "p1", "p2"]
    elif operation == "save_many":
        store.save_many({"c1": Message(content=b"c1"), "c2": Message(content=b"c2")})
    else:  # a multipart save: its parts go through the part pool
        store.save("c-big", Message(content=BIG[::-1]))


# The parent has used every pool before the fork (its batch pool by save_many/get_many/list, its part pool
# by a multipart save), and holds the store's lock while forking, as a thread creating a pool would: the
# child must use pools and a lock of its own. With the parent's, its work would wait forever for worker
# threads that do not exist in the child (or for a lock nobody there will release).
@pytest.mark.timeout(180)
@pytest.mark.parametrize("operation", ["get_many", "list", "save_many", "multipart save"])
def test_a_forked_child_runs_batches_on_pools_of_its_own(new_s3_store: Callable[..., S3Store], operation: str) -> None:
    store = new_s3_store("fork-batches", **SMALL_PARTS)
    store.save_many({"p1": Message(content=b"1"), "p2": Message(content=b"2")})
    store.save("big", Message(content=BIG))
    assert len(store.get_many(["p1", "p2"])) == 2
    assert len(list(store.list())) == 3
    with store._lock:
        child = _fork(_batches_in_child, store, operation)
    _finish(child, operation)
    if operation == "save_many":
        assert store.get("c2").content == b"c2"
    elif operation == "multipart save":
        assert store.get("c-big").content == BIG[::-1]
    # The parent's own pools and client still work.
    store.save_many({"after1": Message(content=b"a"), "after2": Message(content=b"b")})
    assert store.get_many(["after1", "big"])["big"].content == BIG


def _first_write_in_child(store: S3Store) -> None:
    store.save("child", Message(content=b"first write of this store"))
    store.save("child-big", Message(content=BIG))


# The conditional-write probe runs before a store's first write. A store forked before that (a parent that
# builds the store, maybe reads, then starts workers) probes in the child, where the client is built anew:
# building it must not wait for a lock the probe itself holds.
@pytest.mark.timeout(120)
def test_a_child_forked_before_the_first_write_probes_and_writes(new_s3_store: Callable[..., S3Store]) -> None:
    store = new_s3_store("fork-probe", **SMALL_PARTS)
    assert not store.exists("child")  # the parent uses its client, but writes nothing: no probe yet
    _finish(_fork(_first_write_in_child, store), "its first write")
    assert store.get("child").content == b"first write of this store"
    assert store.get("child-big").content == BIG
    store.save("parent", Message(content=b"the parent probes and writes too"))
