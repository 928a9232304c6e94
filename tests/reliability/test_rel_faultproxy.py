"""The fault proxy does what the fault tests rely on, shown against a plain TCP echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from faultproxy import BlackHole, Delay, FaultProxy, FlipBits, PassThrough, ResetAfter

MESSAGE = bytes(range(256)) * 8


class Echo(socketserver.ThreadingTCPServer):
    """Echoes every byte back; counts connections and bytes received."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.received = 0
        self.connections = 0
        self.lock = threading.Lock()


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Echo = self.server  # type: ignore[assignment]
        with server.lock:
            server.connections += 1
        try:
            while data := self.request.recv(65536):
                with server.lock:
                    server.received += len(data)
                self.request.sendall(data)
        except OSError:
            pass


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def exchange(port: int, payload: bytes = MESSAGE, timeout: float = 5.0) -> bytes:
    """Send ``payload`` and read back as many bytes (fewer if the connection ends or is reset)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            while len(got) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return got


def test_pass_through_and_delay_forward_everything(echo: Echo) -> None:
    with FaultProxy(echo.server_address[1]) as proxy:
        assert exchange(proxy.port) == MESSAGE
        proxy.set(Delay(0.05))
        assert exchange(proxy.port) == MESSAGE
        assert proxy.stats.delayed > 0
        assert proxy.stats.bytes_up >= 2 * len(MESSAGE)


def test_bit_flips_change_exactly_one_bit_per_chunk(echo: Echo) -> None:
    with FaultProxy(echo.server_address[1], fault=FlipBits(direction="down", seed=3)) as proxy:
        got = exchange(proxy.port)
    assert len(got) == len(MESSAGE)
    changed = sum(bin(a ^ b).count("1") for a, b in zip(got, MESSAGE, strict=True))
    assert changed == proxy.stats.flips >= 1


def test_reset_after_n_bytes_forwards_n_then_resets(echo: Echo) -> None:
    with FaultProxy(echo.server_address[1], fault=ResetAfter(100, "up")) as proxy:
        assert len(exchange(proxy.port)) < len(MESSAGE)
        assert proxy.stats.resets >= 1
    assert echo.received <= 100


def test_reset_times_lets_later_connections_through(echo: Echo) -> None:
    with FaultProxy(echo.server_address[1], fault=ResetAfter(0, "down", times=1)) as proxy:
        assert exchange(proxy.port) == b""
        assert exchange(proxy.port) == MESSAGE


def test_black_hole_answers_nothing_and_reaches_nobody(echo: Echo) -> None:
    with FaultProxy(echo.server_address[1], fault=BlackHole()) as proxy:
        with pytest.raises(TimeoutError):
            exchange(proxy.port, timeout=0.3)
        assert proxy.stats.swallowed > 0
        proxy.set(PassThrough())
        assert exchange(proxy.port) == MESSAGE
    assert echo.connections == 1  # only the connection made after the black hole
