"""Fixtures of the redis backend's tests: a standalone server and a three-primary cluster for the session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisClusterNodes, RedisServer


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No artifactstore variables from the caller's environment, and no config file in the working dir."""
    for name in list(os.environ):
        if name.startswith("ARTIFACT_STORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A standalone redis-server on a free loopback port, shared by the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis-standalone"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A three-primary Redis Cluster on loopback ports, shared by the session."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def store_factory() -> Iterator[Callable[..., RedisStore]]:
    """Build stores from settings overrides; every store it made is cleared and closed after the test."""
    made: list[RedisStore] = []

    def build(url: str, namespace: str = "default", **overrides: object) -> RedisStore:
        store = RedisStore(RedisSettings(url=url, **overrides), namespace=namespace)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield build
    for store in made:
        if not store.closed:
            try:
                store.clear()
            finally:
                store.close()
