"""Pagination past 1,000 keys and batched deletes, counted through botocore's event hooks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from s3_fixtures import all_keys, make_settings, raw_client

from artifactstore_core import Message
from artifactstore_s3 import S3Store

NewStore = Callable[..., S3Store]


@pytest.fixture
def remote_bucket(moto_process: str) -> tuple[str, str, Any]:
    """A new bucket on the moto server that runs in its own process (two cores for client and server)."""
    client = raw_client(moto_process)
    name = f"scale-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    return moto_process, name, client


@pytest.fixture
def remote_store(remote_bucket: tuple[str, str, Any]) -> Iterator[Callable[..., S3Store]]:
    endpoint, bucket, _ = remote_bucket
    made: list[S3Store] = []

    def build(namespace: str, **overrides: Any) -> S3Store:
        made.append(S3Store(make_settings(endpoint, bucket, **overrides), namespace=namespace))
        return made[-1]

    yield build
    for store in made:
        store.close()


def count(store: S3Store, operation: str) -> list[str]:
    urls: list[str] = []
    store.client.meta.events.register(f"before-send.s3.{operation}", lambda request, **_: urls.append(request.url))
    return urls


@pytest.mark.timeout(600)
def test_clear_of_10000_artifacts_uses_at_most_10_delete_requests(
    new_s3_store: NewStore, raw: Any, bucket: str
) -> None:
    store = new_s3_store("many", max_concurrency=8)
    neighbour = new_s3_store("many0")  # a namespace whose name extends this one's: must survive
    neighbour.save_many({f"n{i}": Message(content=i) for i in range(3)})
    store.save_many({f"step-{i:05d}": Message(content=b"") for i in range(10_000)})
    assert len(all_keys(raw, bucket)) == 10_003
    deletes, lists = count(store, "DeleteObjects"), count(store, "ListObjectsV2")
    assert store.clear() == 10_000
    assert len(deletes) <= 10
    assert len(lists) == 10  # 1,000 keys a page
    assert sorted(all_keys(raw, bucket)) == sorted(neighbour.key_of(f"n{i}") for i in range(3))
    assert store.clear() == 0


def test_list_page_reads_the_objects_of_its_page_only(remote_store: NewStore) -> None:
    # A page was picked from list(): a HeadObject for every artifact of the namespace to return 10 of them.
    # Keys sort unlike ids ("%41" for "A" before "-"), so the keys are listed whole, but only the page's
    # objects are read.
    store = remote_store("page", max_concurrency=8)
    ids = [f"s{i:04d}" if i % 2 else f"S{i:04d}" for i in range(1_050)]
    store.save_many({step_id: Message(content=step_id) for step_id in ids})
    heads, gets, lists = count(store, "HeadObject"), count(store, "GetObject"), count(store, "ListObjectsV2")
    page = store.list_page(after="S0500", limit=10)
    assert [info.step_id for info in page] == [step_id for step_id in sorted(ids) if step_id > "S0500"][:10]
    assert all(info.size == len(info.step_id) for info in page)
    assert len(lists) == 2
    assert len(heads) + len(gets) <= 10


def test_list_pages_past_1000(remote_store: NewStore) -> None:
    store = remote_store("paged", max_concurrency=8)
    items = {f"s{i}": Message(content=i) for i in range(1_050)}
    store.save_many(items)
    lists = count(store, "ListObjectsV2")
    infos = list(store.list())
    assert len(lists) == 2
    assert sorted(info.step_id for info in infos) == sorted(items)
    assert all(info.size == len(str(int(info.step_id[1:]))) for info in infos)
