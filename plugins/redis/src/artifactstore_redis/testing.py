"""Throwaway redis-server processes for tests and benchmarks, on free loopback ports.

Shipped with the plugin so that its own tests, the cross-backend tests, the benchmarks and third parties
start servers the same way. A missing ``redis-server`` raises :class:`RedisServerError`, which fails the
calling test (it never skips it): install it with ``apt-get install redis-server``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from artifactstore_core.testing_servers import (
    LOOPBACK,
    ServerStartError,
    ServerSubprocess,
    accepts_connections,
    can_bind,
    wait_for,
)
from artifactstore_core.testing_servers import free_port as _free_port

READY_TIMEOUT = 20.0


class RedisServerError(ServerStartError):
    """A test redis-server could not be started (not installed, exited, or never became ready)."""


def server_binary(name: str = "redis-server") -> str:
    """Path of ``name``; raises :class:`RedisServerError` (failing, never skipping, the calling test) when it
    is not installed."""
    path = shutil.which(name)
    if path is None:
        raise RedisServerError(
            f"{name} is not installed; the redis backend's tests need it (apt-get install redis-server)"
        )
    return path


def _bus_port_free(port: int) -> bool:
    return port + 10000 <= 65535 and can_bind(port + 10000)


def free_port(*, cluster_bus: bool = False, avoid: tuple[int, ...] = ()) -> int:
    """A loopback port that is free now (and, for cluster nodes, whose bus port ``port + 10000`` is too).

    Raises :class:`~artifactstore_core.testing_servers.ServerStartError` when none is found.
    """
    return _free_port(avoid=avoid, accept=_bus_port_free if cluster_bus else None)


class RedisServer(ServerSubprocess):
    """One redis-server process on 127.0.0.1, with its data directory; restartable on the same port.

    Failures raise :class:`RedisServerError`; ``with RedisServer(workdir) as server:`` starts and stops it.
    """

    name = "redis-server"
    error = RedisServerError
    log_tail = 3000

    def __init__(self, workdir: Path, *, port: int | None = None, **options: str) -> None:
        self.binary = server_binary()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # redis-server writes its own log there; anything it prints before opening it is appended too.
        super().__init__(port=port, log_path=workdir / "redis.log")
        self.options: dict[str, str] = {"save": "", "appendonly": "no", **options}
        self.password = options.get("requirepass")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, *, wait: bool = True) -> RedisServer:
        """Start the server; return once it answers PING (``wait``) or merely accepts connections (it may
        still be loading its data). Raises :class:`RedisServerError` if it exits or is not ready in time."""
        args = [self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.workdir)]
        args += ["--logfile", str(self.log_path)]
        for name, value in self.options.items():
            args += [f"--{name}", value]
        if not wait:
            self.spawn(args, what=self._listening, timeout=READY_TIMEOUT)
            return self
        probe = self._probe()
        try:
            self.spawn(args, ready=lambda: self._pings(probe), what=self._answering, timeout=READY_TIMEOUT)
        finally:
            probe.close()
        return self

    @property
    def _listening(self) -> str:
        return f"redis-server on port {self.port} to listen"

    @property
    def _answering(self) -> str:
        return f"redis-server on port {self.port} to answer PING"

    def wait_listening(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll until the server accepts TCP connections (it may still be loading its data).

        Raises :class:`RedisServerError` if it exits, or after ``timeout`` seconds.
        """
        self.wait_until(lambda: accepts_connections(self.port), self._listening, timeout)

    def client(self, **options: object) -> redis.Redis:
        """A plain redis-py client for the test to inspect or disturb the server with."""
        options.setdefault("socket_timeout", 10)
        return redis.Redis(host=LOOPBACK, port=self.port, password=self.password, **options)  # type: ignore[arg-type]

    def _probe(self) -> redis.Redis:
        return self.client(socket_timeout=1, socket_connect_timeout=1)

    @staticmethod
    def _pings(probe: redis.Redis) -> bool:
        try:
            return bool(probe.ping())
        except redis.RedisError:  # LOADING, or not listening yet
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll PING until the server answers (LOADING counts as not ready).

        Raises :class:`RedisServerError` if it exits, or after ``timeout`` seconds.
        """
        probe = self._probe()
        try:
            self.wait_until(lambda: self._pings(probe), self._answering, timeout)
        finally:
            probe.close()


@contextlib.contextmanager
def running(workdir: Path, *, port: int | None = None, **options: str) -> Iterator[RedisServer]:
    """A started server, stopped on exit."""
    with RedisServer(workdir, port=port, **options) as server:
        yield server


class RedisClusterNodes:
    """A three-primary Redis Cluster on loopback, built with ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        ports: list[int] = []
        while len(ports) < size:
            ports.append(free_port(cluster_bus=True, avoid=(*ports, *(p + 10000 for p in ports))))
        self.nodes = [
            RedisServer(
                workdir / f"node{index}",
                port=port,
                **{"cluster-enabled": "yes", "cluster-config-file": "nodes.conf", "cluster-node-timeout": "5000"},
            )
            for index, port in enumerate(ports)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterNodes:
        for node in self.nodes:
            node.start()
        create = [server_binary("redis-cli"), "--cluster", "create"]
        create += [f"{LOOPBACK}:{node.port}" for node in self.nodes]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        result = subprocess.run(create, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed:\n{result.stdout.decode()}\n{result.stderr.decode()}"
            )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Poll CLUSTER INFO on every node until each reports cluster_state:ok and knows every primary.

        Raises :class:`RedisServerError` after ``timeout`` seconds, with the first node's log.
        """
        clients = [node.client(socket_timeout=2) for node in self.nodes]

        def ok() -> bool:
            try:
                return all(
                    client.cluster("INFO")["cluster_state"] == "ok" and len(client.cluster("SLOTS")) == len(self.nodes)
                    for client in clients
                )
            except redis.RedisError:
                return False

        try:
            wait_for(
                ok, "the redis cluster to reach cluster_state:ok", timeout,
                error=RedisServerError, interval=0.05, detail=lambda: ":\n" + self.nodes[0].log,
            )  # fmt: skip
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
