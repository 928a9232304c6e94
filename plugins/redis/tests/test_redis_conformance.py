"""The core's conformance kit, unchanged, against a real standalone server and a real three-primary cluster."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from artifactstore_core.testing import StoreConformance
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisClusterNodes, RedisServer, free_port


class TestRedisStandaloneConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, redis_server: RedisServer) -> Callable[[str], RedisStore]:
        settings = RedisSettings(url=redis_server.url)  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)

    @pytest.fixture
    def make_unreachable_store(self) -> Callable[[str], RedisStore]:
        # A free loopback port nothing listens on: every command is refused.
        url = f"redis://127.0.0.1:{free_port()}/0"
        settings = RedisSettings(url=url, retry_attempts=0)  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)


class TestRedisClusterConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, redis_cluster: RedisClusterNodes) -> Callable[[str], RedisStore]:
        settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)
