"""The core's conformance kit, unchanged, against a real standalone server and a real three-primary cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from artifactstore_core.testing import StoreConformance
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisClusterNodes, RedisServer, free_port

#: The password of the standalone server the kit runs on: a canary that no error or repr may show. Its "/" and
#: "@" are percent-encoded in the URL, so the kit looks for the password as written there and as sent.
PASSWORD = "kit-canary/7d2e@f41b"


def _url_with_password(port: int, password: str = PASSWORD) -> str:
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A standalone redis-server on a free loopback port that requires :data:`PASSWORD`."""
    server = RedisServer(tmp_path_factory.mktemp("redis-password"), requirepass=PASSWORD)
    try:
        yield server.start()
    finally:
        server.stop()


class TestRedisStandaloneConformance(StoreConformance):
    """The kit on a server that requires a password in the URL, as a deployed one does: the kit then also
    checks that no error or repr of the store shows it."""

    @pytest.fixture
    def make_store(self, password_server: RedisServer) -> Callable[[str], RedisStore]:
        settings = RedisSettings(url=_url_with_password(password_server.port))  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)

    @pytest.fixture
    def make_unreachable_store(self) -> Callable[[str], RedisStore]:
        # A free loopback port nothing listens on: every command is refused.
        settings = RedisSettings(url=_url_with_password(free_port()), retry_attempts=0)  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)

    @pytest.fixture
    def make_unauthorized_store(self, password_server: RedisServer) -> Callable[[str], RedisStore]:
        # A wrong password that contains the right one: the kit looks for the right one, and so finds either.
        settings = RedisSettings(url=_url_with_password(password_server.port, PASSWORD + "-wrong"))  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)

    @pytest.fixture
    def secret_values(self) -> tuple[str, ...]:
        # Given here, not only reported by the store's _secret_values(): the check must not depend on it.
        return (PASSWORD,)


class TestRedisClusterConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, redis_cluster: RedisClusterNodes) -> Callable[[str], RedisStore]:
        settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
        return lambda namespace: RedisStore(settings, namespace=namespace)
