"""Fixtures of the http backend's tests: artifact servers under real uvicorn on loopback, and their clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from artifactstore_core import ArtifactStore, create_store
from artifactstore_http import HttpStore
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, MakeClient, ServerThread, client_for
from artifactstore_memory import MemorySpace, MemoryStore
from artifactstore_redis.testing import RedisServer


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No artifactstore variables from the caller's environment, and no config file in the working dir."""
    for name in list(os.environ):
        if name.startswith("ARTIFACT_STORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def memory_space() -> MemorySpace:
    """The memory the memory-backed server keeps its artifacts in (tests can look behind the server)."""
    return MemorySpace()


@pytest.fixture(scope="session")
def memory_server(memory_space: MemorySpace) -> Iterator[ServerThread]:
    """An artifact server backed by the memory backend, with token authentication."""
    app = create_app(
        lambda namespace: MemoryStore(namespace=namespace, space=memory_space),
        token=SecretStr(TOKEN),
        max_body_bytes=32 * 1024 * 1024,
    )
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port."""
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="session")
def redis_server(redis_process: RedisServer) -> Iterator[ServerThread]:
    """An artifact server backed by the redis backend (through ``create_store``, as ``serve`` does)."""

    def factory(namespace: str) -> ArtifactStore:
        return create_store("redis", namespace=namespace, url=redis_process.url)

    server = ServerThread(create_app(factory, token=SecretStr(TOKEN), max_body_bytes=32 * 1024 * 1024)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def filesystem_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """An artifact server backed by the filesystem backend, which streams: large bytes artifacts take the
    server's streamed save and read, end to end with the client's own streaming."""
    root = tmp_path_factory.mktemp("filesystem-server")

    def factory(namespace: str) -> ArtifactStore:
        return create_store("filesystem", namespace=namespace, root=str(root))

    server = ServerThread(create_app(factory, token=SecretStr(TOKEN), max_body_bytes=32 * 1024 * 1024)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_client(memory_server: ServerThread) -> Iterator[MakeClient]:
    """Build clients of the memory-backed server; each is closed after the test."""
    made: list[HttpStore] = []

    def build(namespace: str = "default", *, url: str | None = None, **overrides: Any) -> HttpStore:
        store = client_for(url or memory_server.url, namespace, **overrides)
        made.append(store)
        return store

    yield build
    for store in made:
        if not store.closed:
            store.close()
