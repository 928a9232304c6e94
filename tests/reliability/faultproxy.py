"""A TCP fault proxy for tests: asyncio, on 127.0.0.1, in front of one upstream server.

The proxy runs its own event loop in a daemon thread. Its fault can be changed at any moment with
:meth:`FaultProxy.set`; the new fault applies to the next chunk of data on every connection, new and
existing (so a kept-alive pooled connection is disturbed too, as a real network fault would do):

- :class:`PassThrough`: forward everything unchanged.
- :class:`Delay`: hold each chunk for a while before forwarding it.
- :class:`BlackHole`: accept connections and data, forward nothing and answer nothing (a dead peer
  behind a live route: the client can only notice by its own timeout).
- :class:`ResetAfter`: forward up to N bytes per connection (counted from when the fault was set), then
  abort the connection with a TCP reset (RST) on both sides.
- :class:`FlipBits`: flip one bit in some forwarded chunks (seeded, so a failing run can be replayed).

``direction`` is ``"up"`` (client to server), ``"down"`` (server to client) or ``"both"``. Counters in
:attr:`FaultProxy.stats` let tests prove that, for example, an invalid call sent no byte at all.

Delays inside the proxy are the fault being injected; tests never use them to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down", "both"]

__all__ = ["BlackHole", "Delay", "Fault", "FaultProxy", "FlipBits", "PassThrough", "ResetAfter", "Stats"]


@dataclass(frozen=True)
class PassThrough:
    """Forward everything unchanged."""


@dataclass(frozen=True)
class Delay:
    """Hold each chunk ``seconds`` before forwarding it."""

    seconds: float
    direction: Direction = "both"


@dataclass(frozen=True)
class BlackHole:
    """Swallow every byte in both directions; new connections are accepted and never answered."""


@dataclass(frozen=True)
class ResetAfter:
    """Reset each connection once ``nbytes`` more bytes went through it in ``direction``.

    With ``times``, only that many connections are reset; later ones pass (a one-off failure that a
    retry on a new connection gets past).
    """

    nbytes: int
    direction: Direction = "up"
    times: int | None = None


@dataclass(frozen=True)
class FlipBits:
    """Flip one bit in a chunk with ``probability``, in chunks of at least ``min_chunk`` bytes.

    ``skip`` leaves the first bytes of each chunk alone (``min_chunk`` and ``skip`` aim the fault at the
    bodies of large messages rather than at protocol framing; both default to "anywhere").
    """

    probability: float = 1.0
    direction: Direction = "down"
    min_chunk: int = 1
    skip: int = 0
    seed: int = 0


Fault = PassThrough | Delay | BlackHole | ResetAfter | FlipBits


@dataclass
class Stats:
    """What the proxy saw (read them from the test thread; ints are updated atomically enough for tests)."""

    connections: int = 0
    open_connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    swallowed: int = 0
    resets: int = 0
    flips: int = 0
    delayed: int = 0


def _applies(direction: Direction, way: str) -> bool:
    return direction == "both" or direction == way


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    # Bytes forwarded per direction since the current ResetAfter fault was set.
    counted: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    epoch: int = -1
    closed: bool = False


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with a TCP reset (SO_LINGER 0), not an orderly FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy on a free loopback port that forwards to ``upstream_host:upstream_port``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Thread-safe: :meth:`set` may be
    called from any thread while clients use the proxy.
    """

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", fault: Fault | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stats = Stats()
        self._fault: Fault = fault or PassThrough()
        self._epoch = 0
        self._resets_this_epoch = 0
        self._rng = random.Random(0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener and abort every connection; join the proxy's thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the fault proxy's thread did not stop"
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    # -- control --------------------------------------------------------------------------------------

    def set(self, fault: Fault) -> None:
        """Switch to ``fault`` for every following chunk on every connection."""

        def apply() -> None:
            self._fault = fault
            self._epoch += 1
            self._resets_this_epoch = 0
            if isinstance(fault, FlipBits):
                self._rng = random.Random(fault.seed)

        self._call(apply)

    def _call(self, function: object) -> None:
        async def run() -> None:
            function()  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    # -- the proxy ------------------------------------------------------------------------------------

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # Aborting every connection ends every pump and handler on its own; cancelling the handlers
        # instead would make asyncio's stream callback log the cancellation as an error.
        self._reset_all()
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=5)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def _reset_all(self) -> None:
        for connection in list(self._connections):
            self._kill(connection)

    def _kill(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self.stats.resets += 1
        _abort(connection.client)
        _abort(connection.upstream)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        connection = _Connection(client=writer)
        self._connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if isinstance(self._fault, BlackHole):
                # Never even connect upstream; read and drop until the client gives up.
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                _abort(writer)
                return
            connection.upstream = up_writer
            await asyncio.gather(
                self._pump(reader, up_writer, "up", connection),
                self._pump(up_reader, writer, "down", connection),
                return_exceptions=True,
            )
        finally:
            self.stats.open_connections -= 1
            self._connections.discard(connection)
            if not connection.closed:
                connection.closed = True
                for end in (connection.client, connection.upstream):
                    if end is not None:
                        end.close()
            if task is not None:
                self._tasks.discard(task)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                self.stats.swallowed += len(data)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, way: str, connection: _Connection
    ) -> None:
        try:
            while not connection.closed:
                data = await source.read(65536)
                if not data:
                    # Orderly end of one direction: pass the half-close on.
                    if sink.can_write_eof():
                        with contextlib.suppress(OSError):
                            sink.write_eof()
                    return
                forward = await self._apply(data, way, connection)
                if forward is None or connection.closed:
                    continue
                sink.write(forward)
                if way == "up":
                    self.stats.bytes_up += len(forward)
                else:
                    self.stats.bytes_down += len(forward)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            self._kill(connection)

    async def _apply(self, data: bytes, way: str, connection: _Connection) -> bytes | None:
        """The fault's effect on one chunk: the bytes to forward, or ``None`` to forward nothing."""
        fault = self._fault
        if isinstance(fault, PassThrough):
            return data
        if isinstance(fault, BlackHole):
            self.stats.swallowed += len(data)
            return None
        if isinstance(fault, Delay):
            if _applies(fault.direction, way):
                self.stats.delayed += 1
                await asyncio.sleep(fault.seconds)  # the injected fault itself
            return data
        if isinstance(fault, ResetAfter):
            if not _applies(fault.direction, way):
                return data
            if connection.epoch != self._epoch:
                connection.epoch = self._epoch
                connection.counted = {"up": 0, "down": 0}
            if fault.times is not None and self._resets_this_epoch >= fault.times:
                return data
            allowed = fault.nbytes - connection.counted[way]
            if allowed >= len(data):
                connection.counted[way] += len(data)
                return data
            if allowed > 0:
                connection.counted[way] += allowed
                # Forward the part within the budget, then reset both ends.
                connection_sink = connection.upstream if way == "up" else connection.client
                if connection_sink is not None:
                    connection_sink.write(data[:allowed])
                    with contextlib.suppress(OSError):
                        await connection_sink.drain()
            self._resets_this_epoch += 1
            self._kill(connection)
            return None
        if isinstance(fault, FlipBits):
            if (
                _applies(fault.direction, way)
                and len(data) >= max(fault.min_chunk, fault.skip + 1)
                and self._rng.random() < fault.probability
            ):
                position = self._rng.randrange(fault.skip, len(data))
                flipped = bytearray(data)
                flipped[position] ^= 1 << self._rng.randrange(8)
                self.stats.flips += 1
                return bytes(flipped)
            return data
        raise AssertionError(f"unknown fault {fault!r}")
