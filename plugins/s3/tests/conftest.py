"""Fixtures: a moto S3 server over real HTTP on a free loopback port, buckets, stores and a raw client."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto.server import ThreadedMotoServer
from s3_fixtures import make_settings, raw_client

from artifactstore_core.testing_servers import free_port
from artifactstore_s3 import S3Store
from artifactstore_s3.testing import MotoServer


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server in this process, serving S3 over HTTP on 127.0.0.1; stopped at the end of the session."""
    # One log record per request, captured by pytest for every test, costs more than the request itself.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def raw(moto_endpoint: str) -> Any:
    """A plain boto3 client on the moto server."""
    return raw_client(moto_endpoint)


@pytest.fixture
def bucket(raw: Any) -> str:
    """A new, empty bucket for one test (tests never share state through buckets)."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    raw.create_bucket(Bucket=name)
    return name


@pytest.fixture
def new_s3_store(moto_endpoint: str, bucket: str) -> Iterator[Callable[..., S3Store]]:
    """Build stores on this test's bucket (settings overridable); all closed after the test."""
    made: list[S3Store] = []

    def build(namespace: str = "default", **overrides: Any) -> S3Store:
        store = S3Store(make_settings(moto_endpoint, bucket, **overrides), namespace=namespace)
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()


@pytest.fixture(scope="session")
def moto_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server in a process of its own (its objects do not count against this process's memory, and
    it does not share this process's GIL); stopped at the end of the session."""
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server.endpoint_url
