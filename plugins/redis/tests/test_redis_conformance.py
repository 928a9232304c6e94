"""The core's conformance kit, unchanged, against a real standalone server and a real three-primary cluster."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from artifactstore_core.testing import StoreConformance
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisClusterNodes, RedisServer


class TestRedisStandaloneConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, redis_server: RedisServer) -> Callable[[str], RedisStore]:
        settings = RedisSettings(url=redis_server.url)  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)


class TestRedisClusterConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, redis_cluster: RedisClusterNodes) -> Callable[[str], RedisStore]:
        settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)
