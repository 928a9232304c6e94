"""The conformance kit through the http client, against real servers backed by memory, redis and filesystem."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from artifactstore_core.testing import MakeStore, StoreConformance
from artifactstore_core.testing_servers import free_port
from artifactstore_http.testing import TOKEN, ServerThread, client_for


class _WithToken(StoreConformance):
    """The kit on clients that send the test servers' bearer token, which no error or repr may show."""

    @pytest.fixture
    def secret_values(self) -> tuple[str, ...]:
        # Given here, not only reported by the store's _secret_values(): the check must not depend on it.
        return (TOKEN,)


class TestHttpOverMemory(_WithToken):
    """The client against an artifact server whose store is the memory backend."""

    @pytest.fixture
    def make_store(self, memory_server: ServerThread) -> MakeStore:
        return lambda namespace: client_for(memory_server.url, namespace)

    @pytest.fixture
    def make_unreachable_store(self) -> MakeStore:
        # A free loopback port nothing listens on: every request is refused.
        url = f"http://127.0.0.1:{free_port()}"
        return lambda namespace: client_for(url, namespace, retries=0, connect_timeout=2.0)

    @pytest.fixture
    def make_unauthorized_store(self, memory_server: ServerThread) -> MakeStore:
        # A wrong token that contains the right one: the kit looks for the right one, and so finds either.
        return lambda namespace: client_for(memory_server.url, namespace, token=SecretStr(TOKEN + "-wrong"))


class TestHttpOverRedis(_WithToken):
    """The client against an artifact server whose store is the redis backend on a real redis-server."""

    @pytest.fixture
    def make_store(self, redis_server: ServerThread) -> MakeStore:
        return lambda namespace: client_for(redis_server.url, namespace)


class TestHttpOverFilesystem(_WithToken):
    """The client against an artifact server whose store streams (filesystem): the kit's large streams and
    artifacts go through the server's streamed save and read, and the client's streamed save_stream and open."""

    @pytest.fixture
    def make_store(self, filesystem_server: ServerThread) -> MakeStore:
        return lambda namespace: client_for(filesystem_server.url, namespace)
