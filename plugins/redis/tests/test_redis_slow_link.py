"""A slow link that never stalls: a large save takes longer than SOCKET_TIMEOUT to send, and succeeds,
because the timeout bounds a stall, not a whole send. The link is a small throttling relay on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from redis_helpers import payload_of

import artifactstore_redis.store as store_module
from artifactstore_core import Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisClusterNodes, RedisServer

#: The relay forwards what the client sends in pieces of this size, one piece per INTERVAL: 13 MB/s.
PIECE = 64 * 1024
INTERVAL = 0.005


class SlowLink:
    """A TCP relay to ``upstream`` that forwards client-to-server bytes at PIECE per INTERVAL (the sleep is
    the injected slowness, not synchronisation) and server-to-client bytes at once."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        # Small buffers on the relay, so that what the client has sent is soon what the server has read: the
        # client's own send buffer (a few MB) is the only sizeable one left, drained in well under a second.
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PIECE)
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.socket()
                server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIECE)
                server.connect((LOOPBACK, self.upstream))
                self.sockets += [client, server]
                for source, sink, pause in ((client, server, INTERVAL), (server, client, 0.0)):
                    thread = threading.Thread(target=self._pump, args=(source, sink, pause), daemon=True)
                    self.threads.append(thread)
                    thread.start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, pause: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(PIECE):
                sink.sendall(data)
                if pause:
                    time.sleep(pause)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def slow_link(redis_server: RedisServer) -> Iterator[SlowLink]:
    link = SlowLink(redis_server.port)
    yield link
    link.close()


@pytest.mark.timeout(60)
def test_a_large_save_slower_than_the_socket_timeout_succeeds_while_it_makes_progress(
    slow_link: SlowLink, prefix: str
) -> None:
    settings = RedisSettings(url=f"redis://{LOOPBACK}:{slow_link.port}/0", socket_timeout=1, key_prefix=prefix)  # type: ignore[arg-type]
    payload = payload_of("slow", 32 * 1024 * 1024)  # about 2.5 s at the link's 13 MB/s
    with RedisStore(settings, namespace="slow link") as store:
        try:
            started = time.monotonic()
            store.save("large", Message(content=payload))
            took = time.monotonic() - started
            assert store.get("large").content == payload
        finally:
            store.clear()
    # The save really took several socket timeouts: the link, not the timeout, set its pace.
    assert took > 2 * settings.socket_timeout


def test_cluster_connections_send_large_arguments_in_pieces(redis_cluster: RedisClusterNodes) -> None:
    settings = RedisSettings(url=redis_cluster.url, cluster=True)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="paced") as store:
        client = store.client
        assert isinstance(client, store_module.RedisCluster)
        pools = [node.redis_connection.connection_pool for node in client.get_nodes()]
        assert pools
        assert all(issubclass(pool.connection_class, store_module._PacedSend) for pool in pools)
