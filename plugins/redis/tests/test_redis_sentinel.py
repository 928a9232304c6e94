"""Redis Sentinel against a real sentinel process: the store takes no Sentinel URL (and says so), takes a
Sentinel-managed client, and names what it talks to."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import redis
from redis.sentinel import Sentinel
from redis_helpers import payload_of, wait_for

import artifactstore_redis.store as store_module
from artifactstore_core import BackendError, ConfigurationError, Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer, free_port, server_binary

SERVICE = "artifacts"


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int]]:
    """A primary and one sentinel monitoring it as SERVICE; yields the primary and the sentinel's port."""
    directory = tmp_path_factory.mktemp("redis-sentinel")
    with RedisServer(directory / "primary") as primary:
        port = free_port()
        config = directory / "sentinel.conf"  # a sentinel rewrites its config file: a file of its own
        config.write_text(
            f"port {port}\nbind {LOOPBACK}\ndir {directory}\nsentinel monitor {SERVICE} {LOOPBACK} {primary.port} 1\n"
        )
        log = (directory / "sentinel.log").open("wb")
        process = subprocess.Popen([server_binary(), str(config), "--sentinel"], stdout=log, stderr=log)
        try:
            probe = Sentinel([(LOOPBACK, port)], socket_timeout=1, socket_connect_timeout=1)

            def knows_primary() -> bool:
                try:
                    return probe.discover_master(SERVICE) == (LOOPBACK, primary.port)
                except redis.RedisError:
                    return False

            wait_for(knows_primary, 20, "the sentinel to know its primary")
            yield primary, port
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()


@pytest.mark.parametrize("scheme", ["redis+sentinel", "redis-sentinel", "sentinel", "rediss+sentinel"])
def test_a_sentinel_url_is_refused_naming_sentinel_and_the_way_to_use_it(scheme: str) -> None:
    # It used to be "not a valid Redis URL", which reads as a typo rather than as "not supported".
    with pytest.raises(ConfigurationError) as raised:
        RedisStore(RedisSettings(url=f"{scheme}://:s3cret@{LOOPBACK}:26379/{SERVICE}/0"))  # type: ignore[arg-type]
    message = str(raised.value)
    assert "Sentinel" in message
    assert "master_for" in message
    assert "s3cret" not in message


@pytest.mark.timeout(60)
def test_a_sentinel_managed_client_runs_every_operation_and_is_named(sentinel: tuple[RedisServer, int]) -> None:
    primary, port = sentinel
    client = Sentinel([(LOOPBACK, port)], socket_timeout=2).master_for(SERVICE, socket_timeout=2)
    try:
        with RedisStore(client=client, namespace="through sentinel") as store:
            # It named redis://localhost:6379/0 (redis-py's defaults: the pool's kwargs name no server).
            assert f"sentinel service {SERVICE!r}" in repr(store)
            assert "localhost" not in repr(store)
            store.save("small", Message(content=b"x"))
            store.save("large", Message(content=payload_of("large", store_module._INLINE_MAX + 1)))
            assert store.get("large").content == payload_of("large", store_module._INLINE_MAX + 1)
            assert sorted(info.step_id for info in store.list()) == ["large", "small"]
            admin = primary.client()
            try:
                assert admin.exists(store._index) == 1  # on the primary the sentinel names
            finally:
                admin.close()
            assert store.clear() == 2
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_a_url_pointing_at_the_sentinel_port_says_so(sentinel: tuple[RedisServer, int]) -> None:
    # A sentinel answers PING but knows no EVALSHA: "unknown command" alone did not say what was wrong.
    _, port = sentinel
    settings = RedisSettings(url=f"redis://{LOOPBACK}:{port}/0")  # type: ignore[arg-type]
    with RedisStore(settings, namespace="wrong port") as store, pytest.raises(BackendError) as raised:
        store.save("a", Message(content=b"x"))
    assert "Sentinel port" in str(raised.value)
    assert "unknown command" in str(raised.value)
