"""The server killed in the middle of an upload: a typed error, and no torn artifact after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactstore_core import ArtifactStoreError, BackendError, Message
from artifactstore_core.testing_servers import in_thread
from artifactstore_http.testing import TOKEN, HoldingProxy, ServerProcess, bound_socket, client_for
from artifactstore_redis.testing import RedisServer

SIZE = 8 * 1024 * 1024


def _server(redis: RedisServer, workdir: Path) -> ServerProcess:
    env = {
        "ARTIFACT_STORE_SERVER_TOKEN": TOKEN,
        "ARTIFACT_STORE_SERVER_BACKEND": "redis",
        "ARTIFACT_STORE_REDIS_URL": redis.url,
    }
    return ServerProcess(env, workdir)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("retries", [0, 2])
def test_server_killed_mid_upload(redis_process: RedisServer, tmp_path: Path, retries: int) -> None:
    namespace = f"killed-{retries}"
    message = Message(content=bytes(range(256)) * (SIZE // 256), metadata={"run": retries})
    server = _server(redis_process, tmp_path).start()
    # The proxy passes the first half of the upload, then holds the rest: the server is mid-body for sure.
    proxy = HoldingProxy(server.port, hold_after=SIZE // 2).start()
    try:
        with client_for(proxy.url, namespace, retries=retries, read_timeout=30) as store:
            store.save("before", Message(content="saved before the crash"))
            thread, outcome = in_thread(lambda: store.save("torn", message))
            assert proxy.held.wait(timeout=60), "the upload never reached the proxy's hold point"
            server.kill()
            thread.join(timeout=60)
            assert not thread.is_alive()
    finally:
        proxy.stop()
        server.stop()
    error = outcome[0]
    assert isinstance(error, ArtifactStoreError), error
    assert isinstance(error, BackendError), error
    assert error.retryable, error
    assert error.step_id == "torn"

    restarted = _server(redis_process, tmp_path).start()
    try:
        with client_for(restarted.url, namespace) as store:
            # Either absent or complete: never a part of the body.
            if store.exists("torn"):
                assert store.get("torn") == message
            else:
                assert "torn" not in [info.step_id for info in store.list()]
            assert store.get("before").content == "saved before the crash"
            store.save("torn", message)
            assert store.get("torn") == message
            assert store.clear() == 2
    finally:
        restarted.stop()


@pytest.mark.timeout(120)
def test_a_proxy_of_the_environment_does_not_take_the_test_helpers_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With HTTP_PROXY set (a CI runner behind a proxy, without NO_PROXY for loopback), ServerProcess's readiness
    # probe and client_for's stores went to the proxy, which cannot reach the loopback server: start() timed out
    # after 30 s with ServerStartError although the server was up.
    with bound_socket() as refused:  # bound, never listening: a proxy that refuses every connection
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{refused.getsockname()[1]}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        env = {"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": "memory"}
        server = ServerProcess(env, tmp_path).start()
        try:
            with client_for(server.url, "no-proxy") as store:
                store.save("a", Message(content=b"direct"))
                assert store.get("a").content == b"direct"
        finally:
            server.stop()
