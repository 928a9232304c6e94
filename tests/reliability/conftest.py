"""Fixtures of the reliability suite: real servers with canary secrets, and every backend as a parameter.

Servers are started once per session and only when a test needs them: redis-server (with a canary
password), our artifact server in its own process (canary token, storing on the filesystem backend, at
DEBUG logging; a second one with the canary signing key for the signed-artifact test), and moto's S3
server in its own process (canary secret key).

While each test module runs, the root logger is at DEBUG and every record is scanned for the canaries
(:data:`reliability_backends.CANARIES`); a leak fails the module. The artifact server's own DEBUG log is
scanned at the end of the session.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import reliability_backends as rb

from artifactstore_http.testing import ServerProcess
from artifactstore_redis.testing import RedisServer, running
from artifactstore_s3.testing import MotoServer

# -- canaries in every log record ----------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def canary_logging() -> Iterator[rb.CanaryHandler]:
    """DEBUG logging for the module, with every record scanned for canaries."""
    root = logging.getLogger()
    handler = rb.CanaryHandler()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # Per-request server chatter of in-process servers is noise at DEBUG; client libraries stay at DEBUG.
    quiet = {name: logging.getLogger(name).level for name in ("werkzeug", "asyncio")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)
    assert handler.leaks == [], "canary secrets in log records:\n" + "\n".join(handler.leaks[:20])


# -- servers ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port that requires the canary password."""
    with running(tmp_path_factory.mktemp("rel-redis"), requirepass=rb.REDIS_PASSWORD) as server:
        yield server


@contextlib.contextmanager
def artifact_server(workdir: Path, **extra_env: str) -> Iterator[tuple[ServerProcess, Path]]:
    """Our artifact server in its own process, storing on the filesystem backend under ``workdir``."""
    root = workdir / "artifacts"
    env = {
        "ARTIFACT_STORE_SERVER_TOKEN": rb.HTTP_TOKEN,
        "ARTIFACT_STORE_SERVER_BACKEND": "filesystem",
        "ARTIFACT_STORE_SERVER_LOG_LEVEL": "debug",
        "ARTIFACT_STORE_FILESYSTEM_ROOT": str(root),
        # The filesystem backend's durability is proven with fsync on (the filesystem backend here); behind the
        # server it would only tie the http tests' deadlines to how busy the disk is.
        "ARTIFACT_STORE_FILESYSTEM_FSYNC": "false",
        **extra_env,
    }
    server = ServerProcess(env, workdir).start()
    try:
        yield server, root
    finally:
        server.stop()
        log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        leaks = rb.leaked(log) + rb.leaked(log, rb.IDENTIFIERS)
        assert leaks == [], f"canary secrets in the artifact server's log: {leaks}"


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """Our artifact server with the canary token and no signing key."""
    with artifact_server(tmp_path_factory.mktemp("rel-http")) as running_server:
        yield running_server


@pytest.fixture(scope="session")
def signed_http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """Our artifact server with the canary token and the canary signing key (its store signs artifacts)."""
    with artifact_server(
        tmp_path_factory.mktemp("rel-http-signed"), ARTIFACT_STORE_SIGNING_KEY=rb.SIGNING_KEY
    ) as running_server:
        yield running_server


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    """moto's S3 server in its own process, and one bucket for the session (namespaces keep tests apart)."""
    with MotoServer(tmp_path_factory.mktemp("rel-moto")) as server:
        yield server.endpoint_url, server.port, server.create_bucket(prefix="rel")


# -- backends --------------------------------------------------------------------------------------------


def build(name: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> rb.Backend:
    """The :class:`~reliability_backends.Backend` called ``name``, starting its server if needed."""
    if name == "memory":
        return rb.memory_backend()
    if name == "filesystem":
        return rb.filesystem_backend(tmp_path_factory.mktemp("rel-fs"))
    if name == "redis":
        return rb.redis_backend(request.getfixturevalue("redis_server").port)
    if name == "http":
        server, root = request.getfixturevalue("http_server")
        return rb.http_backend(server.url, server.port, root)
    if name == "s3":
        endpoint, port, bucket = request.getfixturevalue("moto")
        return rb.s3_backend(endpoint, port, bucket)
    raise AssertionError(f"unknown backend {name}")


@pytest.fixture(params=rb.NAMES)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> rb.Backend:
    """Every backend."""
    return build(request.param, request, tmp_path_factory)


@pytest.fixture(params=rb.CROSS_PROCESS)
def shared_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> rb.Backend:
    """Every backend that processes can share."""
    return build(request.param, request, tmp_path_factory)


@pytest.fixture(params=rb.NETWORK)
def network_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> rb.Backend:
    """Every backend with a server a fault proxy can stand in front of."""
    return build(request.param, request, tmp_path_factory)


@pytest.fixture(params=rb.BYTE_STORING)
def byte_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> rb.Backend:
    """Every backend that stores envelope bytes (all but memory)."""
    return build(request.param, request, tmp_path_factory)


@pytest.fixture(params=rb.BYTE_STORING)
def signed_byte_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> rb.Backend:
    """Every backend that stores envelope bytes, for stores that sign (set ARTIFACT_STORE_SIGNING_KEY to
    :data:`reliability_backends.SIGNING_KEY`); the artifact server here has that key too."""
    if request.param == "http":
        server, root = request.getfixturevalue("signed_http_server")
        return rb.http_backend(server.url, server.port, root)
    return build(request.param, request, tmp_path_factory)
