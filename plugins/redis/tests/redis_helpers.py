"""Helpers shared by the redis backend's tests."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis

from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_core.testing_servers import wait_for as _wait_for


def payload_of(name: str, size: int) -> bytes:
    """Deterministic, incompressible bytes for a name, so a read can be checked byte for byte."""
    seed = hashlib.blake2b(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` after ``timeout`` seconds."""
    _wait_for(condition, what, timeout, error=AssertionError)


def evict_once(admin: Any, tag: str) -> None:
    """Make the server behind ``admin`` evict keys (``INFO stats`` ``evicted_keys`` above 0), only keys of
    its own: under ``volatile-ttl``, with a ``maxmemory`` just above what it uses, keys ``{tag}:filler:N``
    with an expiry are written until one is evicted (read back, no timing). Then ``maxmemory`` and the
    policy are put back and the fillers deleted. ``tag``: a key prefix that hashes to ``admin``'s node."""
    before = admin.config_get("maxmemory*")
    admin.config_set("maxmemory-policy", "volatile-ttl")
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 2**20)
    written = 0
    try:
        while admin.info("stats")["evicted_keys"] == 0:
            admin.set(f"{tag}:filler:{written}", b"f" * 10_000, px=600_000)
            written += 1
            assert written < 10_000, "the server never evicted"
    finally:
        admin.config_set("maxmemory", before["maxmemory"])
        admin.config_set("maxmemory-policy", before["maxmemory-policy"])
        for start in range(0, written, 500):
            admin.delete(*(f"{tag}:filler:{n}" for n in range(start, min(written, start + 500))))


class Relay:
    """A TCP relay on loopback to the port ``upstream``, which a test may change (new connections go to the new
    one, as to a DNS name moved to another server, while the connections made so far stay).

    After :meth:`drop`, the connections it holds swallow whatever either side sends (nothing is forwarded,
    nothing is closed: no RST, no FIN, as a NAT that forgot them); connections made later are relayed, unless
    :attr:`dead` is set (a server that accepts connections and never answers). Stop it with :meth:`close`.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.sockets: list[socket.socket] = [self.listener]
        self.dropped: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.dead = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection((LOOPBACK, self.upstream))
                with self.lock:
                    self.accepted += 1
                    self.sockets += [client, server]
                    if self.dead:
                        self.dropped.update((client, server))
                for source, sink in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                with self.lock:
                    if source in self.dropped:
                        continue
                sink.sendall(data)

    def drop(self) -> None:
        """Swallow, from now on, the traffic of every connection made so far."""
        with self.lock:
            self.dropped.update(self.sockets)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


# A read-only busy loop: SCRIPT KILL may end it.
_BUSY_LOOP = "while true do end"


class Blocker:
    """Another client whose script keeps ``server`` (a RedisServer; with a low ``busy-reply-threshold``) busy
    until :meth:`kill` (SCRIPT KILL) ends it: the server answers ``BUSY`` to every other command meanwhile."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._admin = server.client()
        self._thread: threading.Thread | None = None
        self.killed = 0

    def start(self) -> None:
        client = self._server.client(socket_timeout=50)

        def run() -> None:
            # Ended by SCRIPT KILL, which fails the call.
            with contextlib.suppress(redis.ResponseError):
                client.eval(_BUSY_LOOP, 0)
            client.close()

        self._thread = threading.Thread(target=run)
        self._thread.start()
        wait_for(self._busy, 10, "the server to answer BUSY")

    def _busy(self) -> bool:
        try:
            self._admin.ping()
        except redis.ResponseError as exc:
            return str(exc).startswith("BUSY")
        return False

    def kill(self) -> None:
        if self._thread is None:
            return
        self._admin.script_kill()
        self._thread.join()  # its EVAL has answered: the script has ended
        self._thread = None
        self.killed += 1

    def close(self) -> None:
        self.kill()
        self._admin.close()
