"""Bounded reads: the client never takes a body whole on the server's word, and the server never parses JSON
content over its limit to answer a read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

import artifactstore_core.envelope
from artifactstore_core import ArtifactStore, Message, PayloadTooLargeError, create_store
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, ServerThread, client_for
from artifactstore_redis.testing import RedisServer

pytestmark = pytest.mark.timeout(120)


# -- the server: JSON content read from its store -------------------------------------------------------


@pytest.fixture(scope="module")
def redis_bounds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, ServerThread]]:
    """A redis-backed artifact server that parses at most 4 KiB of JSON, and its redis."""
    redis = RedisServer(tmp_path_factory.mktemp("redis-bounds")).start()
    try:

        def factory(namespace: str) -> ArtifactStore:
            return create_store("redis", namespace=namespace, url=redis.url)

        server = ServerThread(create_app(factory, token=SecretStr(TOKEN), max_json_bytes=4096)).start()
        try:
            yield redis, server
        finally:
            server.stop()
    finally:
        redis.stop()


def test_the_server_does_not_parse_json_content_over_its_limit_to_answer_a_read(
    redis_bounds: tuple[RedisServer, ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written to the backend without the server (which refuses it on save): the server's GET decoded it, and
    # a byte backend's decode parses JSON, so a few KB of stored zstd could cost it gigabytes of objects.
    redis, server = redis_bounds
    big = Message(content=[{}] * 3000)  # 9001 bytes of JSON text
    small = Message(content=[{}] * 10)
    with create_store("redis", namespace="direct", url=redis.url) as direct:
        direct.save_many({"big": big, "small": small, "bytes": Message(content=b"y" * 9000)})
    parsed: list[int] = []
    real = artifactstore_core.envelope.loads_frozen

    def counting(data: Any) -> Any:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(artifactstore_core.envelope, "loads_frozen", counting)
    with client_for(server.url, "direct", retries=0) as store:
        with pytest.raises(PayloadTooLargeError) as info:
            store.get("big")
        assert parsed == []  # refused from the verified header, before decompressing or parsing
        message = str(info.value)
        assert "9001 bytes of JSON content" in message
        assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in message
        assert info.value.step_id == "big"
        assert store.get("small") == small  # under the limit: served as before
        assert store.get("bytes").content == b"y" * 9000  # bytes content is not a JSON limit's business
        # The save's limit and the read's agree: what the server refuses to serve, it refuses to take.
        with pytest.raises(PayloadTooLargeError, match="ARTIFACT_STORE_SERVER_MAX_JSON_BYTES"):
            store.save("again", big)
