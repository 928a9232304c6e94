"""Fixtures of the pipeline runtime tests: backends and modes to run the diamond on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from pipeline_steps import DEADLINE, BarrierMeeting, Meeting, Rendezvous
from pydantic import SecretStr

from artifactstore_core.pipeline import Mode, StoreConfig
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, ServerThread
from artifactstore_memory import MemorySpace, MemoryStore
from artifactstore_redis.testing import free_port, running


@dataclass(frozen=True)
class Case:
    """A backend (as a StoreConfig) and the mode to run steps in."""

    config: StoreConfig
    mode: Mode

    def meeting(self, workdir: Path, *parties: str) -> Meeting:
        """A rendezvous the parties can pass only when they run at the same time."""
        if self.mode == "threads":
            return BarrierMeeting(threading.Barrier(len(parties), timeout=DEADLINE))
        return Rendezvous(str(workdir), parties)

    def left(self, execution_id: str) -> list[str]:
        """The step ids stored in an execution's namespace."""
        with self.config.create(execution_id) as store:
            return sorted(info.step_id for info in store.list())


def _config(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if backend == "filesystem":
        return StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    if backend == "http":
        # An artifact server in this process, in front of memory: worker processes reach it over HTTP.
        return StoreConfig("http", endpoint=request.getfixturevalue("http_url"), token=TOKEN)
    if backend == "s3":
        return StoreConfig("s3", **request.getfixturevalue("s3_options"))
    if backend == "redis":
        # Started only when a redis case runs; shared by the session. Executions never collide: each has
        # its own namespace, which is what these tests check.
        return StoreConfig("redis", url=request.getfixturevalue("redis_url"))
    return StoreConfig(backend)


# Every backend, in every mode it supports: in-process backends with threads, backends shared across
# processes with threads and with processes. Add s3 and http here as they land (with their server fixtures).
CASES = [
    ("memory", "threads"),
    ("example", "threads"),
    ("filesystem", "threads"),
    ("filesystem", "processes"),
    ("redis", "threads"),
    ("redis", "processes"),
    ("http", "threads"),
    ("http", "processes"),
    ("s3", "threads"),
    ("s3", "processes"),
]


@pytest.fixture(params=CASES, ids=[f"{backend}-{mode}" for backend, mode in CASES])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    backend, mode = request.param
    return Case(_config(backend, request, tmp_path), mode)


@pytest.fixture(params=[c for c in CASES if c[1] == "processes"], ids=lambda c: f"{c[0]}-{c[1]}")
def process_case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    backend, mode = request.param
    return Case(_config(backend, request, tmp_path), mode)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the session; fails (never skips) without one."""
    with running(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def http_url() -> Iterator[str]:
    """Our artifact server under uvicorn on loopback, backed by an in-process memory store."""
    space = MemorySpace()
    app = create_app(lambda namespace: MemoryStore(namespace=namespace, space=space), token=SecretStr(TOKEN))
    server = ServerThread(app).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, str]]:
    """A moto S3 server over real HTTP on loopback, with one bucket; the s3 store's options for it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {
            "bucket": "pipeline",
            "endpoint_url": f"http://{host}:{port}",
            "region": "us-east-1",
            "access_key_id": "AKIAPIPELINETEST0001",
            "secret_access_key": "pipeline-test-secret",
        }
        boto3.client(
            "s3",
            endpoint_url=options["endpoint_url"],
            region_name=options["region"],
            aws_access_key_id=options["access_key_id"],
            aws_secret_access_key=options["secret_access_key"],
        ).create_bucket(Bucket=options["bucket"])
        yield options
    finally:
        server.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where steps record their calls and meet (shared with worker processes through the path)."""
    path = tmp_path / "work"
    path.mkdir()
    return path
