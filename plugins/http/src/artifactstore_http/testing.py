"""Real servers for tests and benchmarks of the http backend, on loopback, started and stopped by their users.

Shipped with the plugin (it needs the ``server`` extra) so that its tests, the cross-backend tests, the
benchmarks and third parties start servers the same way. Failures raise
:class:`~artifactstore_core.testing_servers.ServerStartError`.

- :class:`ServerThread`: our ASGI app under a real uvicorn in a thread of the test process.
- :class:`ServerProcess`: ``python -m artifactstore_http`` in a subprocess, on a socket the test bound
  (so it can be killed with SIGKILL and its memory measured).
- :class:`HoldingProxy`: a TCP proxy that forwards a set number of request bytes, then holds the rest (or
  resets that connection once, for a retry to pass).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from artifactstore_core.testing_servers import LOOPBACK, READY_TIMEOUT, ServerStartError, ServerSubprocess, wait_for
from artifactstore_http import HttpSettings, HttpStore

__all__ = [
    "READY_TIMEOUT",
    "TOKEN",
    "HoldingProxy",
    "MakeClient",
    "ServerProcess",
    "ServerStartError",
    "ServerThread",
    "bound_socket",
    "client_for",
    "wait_for",
]

#: The bearer token test servers accept (a test value, not a secret of any deployment).
TOKEN = "test-token-0123456789abcdef"  # noqa: S105

MakeClient = Callable[..., HttpStore]


def client_for(url: str, namespace: str = "default", **overrides: Any) -> HttpStore:
    """An http store on ``url`` with the test token, overridable field by field.

    It ignores the proxy variables of the environment (``trust_env=False``; pass ``trust_env=True`` to test
    them): a CI runner's ``HTTP_PROXY`` would otherwise take the requests to a loopback test server.
    """
    fields: dict[str, Any] = {"endpoint": url, "token": SecretStr(TOKEN), "read_timeout": 30.0, "trust_env": False}
    fields.update(overrides)
    return HttpStore(HttpSettings(**fields), namespace=namespace)


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 (not yet listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; asyncio sets it only on sockets created with proto IPPROTO_TCP, and
    # without it every response on a kept-alive connection waits ~40 ms for a delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((LOOPBACK, 0))
    return sock


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.sock = bound_socket()
        self.port = int(self.sock.getsockname()[1])
        options: dict[str, Any] = {
            "http": "h11",
            "ws": "none",
            "lifespan": "on",
            "log_config": None,
            "access_log": False,
            "h11_max_incomplete_event_size": 16 * 1024,
            "timeout_graceful_shutdown": 5,
        }
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), "uvicorn to start")
        assert self.server.started, "uvicorn exited during startup"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn did not stop"
        self.sock.close()


class ServerProcess(ServerSubprocess):
    """``python -m artifactstore_http`` on a loopback socket bound by the test, with its own environment.

    Each :meth:`start` binds a new port. Failures raise :class:`~artifactstore_core.testing_servers.ServerStartError`.
    """

    name = "artifact server"
    stop_timeout = 15.0

    def __init__(self, env: Mapping[str, str], workdir: Path, *args: str) -> None:
        super().__init__(port=0, log_path=workdir / "server.log")
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
        self.env.update(env)
        self.workdir = workdir
        self.args = args

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ServerProcess:
        """Start the server and return once ``/v1/health`` answers 200.

        Raises :class:`~artifactstore_core.testing_servers.ServerStartError` if it exits first, or after
        ``READY_TIMEOUT`` seconds.
        """
        sock = bound_socket()
        self.port = int(sock.getsockname()[1])
        fd = sock.fileno()
        try:
            self.spawn(
                [sys.executable, "-m", "artifactstore_http", "--fd", str(fd), *self.args],
                ready=self._healthy,
                what=f"the artifact server on port {self.port}",
                env=self.env,
                cwd=self.workdir,
                pass_fds=(fd,),
            )
        finally:
            # From here the child alone holds the listening socket: once it dies, connections are refused, not
            # queued.
            sock.close()
        return self

    def _healthy(self) -> bool:
        try:
            # Not through a proxy of the environment (a CI runner's HTTP_PROXY), which cannot reach this loopback
            # port: the server would never be seen ready.
            return httpx.get(f"{self.url}/v1/health", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")


class HoldingProxy:
    """Forwards client connections to an upstream port; after ``hold_after`` request bytes it stops forwarding.

    ``held`` is set once a connection has reached the limit. Connections made after the upstream is gone
    are closed at once. With ``reset_once``, the first connection to reach the limit is reset there instead
    (RST both ways, counted in ``resets``) and every later one passes whole: a request cut on the way, then
    its retry. ``sent`` holds the request bytes each connection carried upstream, in the order they came.
    """

    def __init__(self, upstream_port: int, hold_after: int, *, reset_once: bool = False) -> None:
        self.upstream_port = upstream_port
        self.hold_after = hold_after
        self.reset_once = reset_once
        self.held = threading.Event()
        self.resets = 0
        self.sent: list[int] = []
        self._lock = threading.Lock()
        self.listener = bound_socket()
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> HoldingProxy:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            with self._lock:
                index = len(self.sent)
                self.sent.append(0)
            threading.Thread(target=self._pump_up, args=(client, upstream, index), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _limited(self) -> bool:
        # Held connections are all limited; a reset is done once, and later connections pass whole.
        with self._lock:
            return not self.reset_once or self.resets == 0

    def _pump_up(self, client: socket.socket, upstream: socket.socket, index: int) -> None:
        try:
            while True:
                limited = self._limited()
                want = min(65536, self.hold_after - self.sent[index]) if limited else 65536
                if want <= 0:
                    break
                data = client.recv(want)
                if not data:
                    return
                upstream.sendall(data)
                with self._lock:
                    self.sent[index] += len(data)
        except OSError:
            return
        if not self.reset_once:
            self.held.set()  # keep both sockets open, forwarding nothing more
            return
        with self._lock:
            first = self.resets == 0
            self.resets += first
        if not first:  # another connection was reset meanwhile: this one passes on
            self._pump_up(client, upstream, index)
            return
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        # The upstream closed (or died): so does the client's connection.
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        client.close()

    def stop(self) -> None:
        self._stopping = True
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
