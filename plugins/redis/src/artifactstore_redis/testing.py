"""Throwaway redis-server processes for tests and benchmarks, on free loopback ports.

Shipped with the plugin so that its own tests, the cross-backend tests, the benchmarks and third parties
start servers the same way. A missing ``redis-server`` raises :class:`RedisServerError`, which fails the
calling test (it never skips it): install it with ``apt-get install redis-server``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import redis

READY_TIMEOUT = 20.0


class RedisServerError(RuntimeError):
    """A test redis-server could not be started (not installed, exited, or never became ready)."""


def _fail(message: str) -> NoReturn:
    raise RedisServerError(message)


def server_binary(name: str = "redis-server") -> str:
    """Path of ``name``; fails (never skips) the calling test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        _fail(f"{name} is not installed; the redis backend's tests need it (apt-get install redis-server)")
    return path


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False, avoid: tuple[int, ...] = ()) -> int:
    """A loopback port that is free now (and, for cluster nodes, whose bus port ``port + 10000`` is too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port in avoid:
            continue
        if cluster_bus and (port + 10000 > 65535 or not _can_bind(port + 10000)):
            continue
        return port
    raise RuntimeError("no free loopback port found")


class RedisServer:
    """One redis-server process on 127.0.0.1, with its data directory; restartable on the same port."""

    def __init__(self, workdir: Path, *, port: int | None = None, **options: str) -> None:
        self.binary = server_binary()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.options: dict[str, str] = {"save": "", "appendonly": "no", **options}
        self.password = options.get("requirepass")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self, *, wait: bool = True) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--logfile", str(self.workdir / "redis.log")]
        for name, value in self.options.items():
            args += [f"--{name}", value]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        else:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll until the server accepts TCP connections (it may still be loading its data)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                _fail(f"redis-server on port {self.port} exited with {self.process.returncode}:\n{self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                _fail(f"redis-server on port {self.port} not listening after {timeout} s:\n{self.log}")
            time.sleep(0.01)  # polling a condition with a deadline

    def client(self, **options: object) -> redis.Redis:
        """A plain redis-py client for the test to inspect or disturb the server with."""
        options.setdefault("socket_timeout", 10)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **options)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll PING until the server answers (LOADING counts as not ready)."""
        deadline = time.monotonic() + timeout
        probe = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    _fail(f"redis-server on port {self.port} exited with {self.process.returncode}:\n{self.log}")
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    _fail(f"redis-server on port {self.port} not ready after {timeout} s:\n{self.log}")
                time.sleep(0.02)  # polling a condition with a deadline
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no save) and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running(workdir: Path, *, port: int | None = None, **options: str) -> Iterator[RedisServer]:
    """A started server, stopped on exit."""
    server = RedisServer(workdir, port=port, **options)
    try:
        yield server.start()
    finally:
        server.stop()


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
        create += [f"127.0.0.1:{node.port}" for node in self.nodes]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        result = subprocess.run(create, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            _fail(f"redis-cli --cluster create failed:\n{result.stdout.decode()}\n{result.stderr.decode()}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Poll CLUSTER INFO on every node until each reports cluster_state:ok and knows every primary."""
        deadline = time.monotonic() + timeout
        clients = [node.client(socket_timeout=2) for node in self.nodes]
        try:
            while True:
                try:
                    ready = all(
                        client.cluster("INFO")["cluster_state"] == "ok"
                        and len(client.cluster("SLOTS")) == len(self.nodes)
                        for client in clients
                    )
                except redis.RedisError:
                    ready = False
                if ready:
                    return
                if time.monotonic() > deadline:
                    _fail("redis cluster did not reach cluster_state:ok:\n" + self.nodes[0].log)
                time.sleep(0.05)  # polling a condition with a deadline
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
