"""Fixtures: a moto S3 server over real HTTP on a free loopback port, buckets, stores and a raw client."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto.server import ThreadedMotoServer
from s3_fixtures import free_port, make_settings, raw_client

from artifactstore_s3 import S3Store


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
def moto_process() -> Iterator[str]:
    """A moto server in a process of its own (its objects do not count against this process's memory, and
    it does not share this process's GIL); terminated at the end of the session."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "the moto server exited at start"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the moto server did not listen within 60 s"
                time.sleep(0.1)  # polling for the port, with a deadline
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
