"""The server's streamed save and read under faults: a client gone mid-download, the graceful shutdown in the
middle of a streamed PUT or GET, many streams at once while the namespace cache evicts, and signing keys.

Every server here is a filesystem-backed one under real uvicorn on loopback, in a thread of the test process,
so its file descriptors are the test's own: an artifact file left open by the server shows in /proc/self/fd.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import httpx
import pytest
from pydantic import SecretStr

from artifactstore_core import ArtifactStore, Message
from artifactstore_core.envelope import Codec, Header
from artifactstore_core.errors import ArtifactCorruptedError, ConfigurationError
from artifactstore_core.testing_servers import in_thread, wait_for
from artifactstore_filesystem import FilesystemSettings, FilesystemStore
from artifactstore_http import HttpSettings, HttpStore
from artifactstore_http.protocol import ERROR_HEADER, MEDIA_TYPE_ENVELOPE, PROTOCOL_HEADER, PROTOCOL_VERSION
from artifactstore_http.server import STREAM_FROM_BYTES, _StoreCache, create_app
from artifactstore_http.testing import TOKEN, ServerThread, client_for

MIB = 1024 * 1024
LIMIT = 96 * MIB


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from block to block and from seed to seed (a misplaced block shows)."""
    block = os.urandom(MIB)
    return b"".join(i.to_bytes(4, "big") + bytes([seed]) + block[5:] for i in range(size // MIB + 1))[:size]


class Ledger:
    """What the stores of one server did, in order, and whether any was closed under a stream still open."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.streams: list[tuple[str, IO[bytes]]] = []  # (namespace, stream) of every open_with_header
        self.saving: dict[str, int] = {}  # namespace -> save_stream calls running
        self.closed: dict[str, int] = {}  # namespace -> stores closed
        self.violations: list[str] = []
        self.changed = threading.Condition(self.lock)

    def note(self, event: str) -> None:
        with self.lock:
            self.events.append(event)
            self.changed.notify_all()

    def open_streams(self, namespace: str | None = None) -> list[IO[bytes]]:
        with self.lock:
            return [s for ns, s in self.streams if not s.closed and (namespace is None or ns == namespace)]


def tracked_factory(root: Path, ledger: Ledger, codec: Codec | None = None) -> Callable[[str], ArtifactStore]:
    """Filesystem stores under ``root`` that report to ``ledger``; a close under an open stream of the same
    store, or under a running ``save_stream``, is a violation."""

    class Tracked(FilesystemStore):
        def __init__(self, namespace: str) -> None:
            super().__init__(FilesystemSettings(root=root), namespace=namespace, codec=codec)
            self._mine: list[IO[bytes]] = []
            self._saving = 0

        def save_stream(self, step_id: str, stream: IO[bytes], **options: Any) -> None:
            with ledger.lock:
                self._saving += 1
                ledger.events.append(f"save_stream {self.namespace}/{step_id}")
            try:
                super().save_stream(step_id, stream, **options)
            finally:
                with ledger.lock:
                    self._saving -= 1
                    ledger.events.append(f"save_stream ended {self.namespace}/{step_id}")
                    ledger.changed.notify_all()

        def open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
            header, stream = super().open_with_header(step_id)
            with ledger.lock:
                self._mine.append(stream)
                ledger.streams.append((self.namespace, stream))
                ledger.events.append(f"open {self.namespace}/{step_id}")
            return header, stream

        def _close(self) -> None:
            with ledger.lock:
                still = [s for s in self._mine if not s.closed]
                if still or self._saving:
                    ledger.violations.append(
                        f"store {self.namespace} closed with {len(still)} open streams, {self._saving} saves running"
                    )
                ledger.events.append(f"close {self.namespace}")
                ledger.closed[self.namespace] = ledger.closed.get(self.namespace, 0) + 1
                ledger.changed.notify_all()
            super()._close()

    return Tracked


def files_open_under(root: Path) -> list[str]:
    """The files under ``root`` this process holds open (the server runs in one of its threads)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile (the listing's own descriptor, among others)
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def users(cache: _StoreCache, namespace: str) -> int | None:
    """How many uses of the cached store of ``namespace`` are counted (``None``: none is cached)."""
    with cache._lock:
        entry = cache._entries.get(namespace)
        return None if entry is None else int(entry[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, Path, Ledger]]:
    root = tmp_path / "root"
    ledger = Ledger()
    app = create_app(tracked_factory(root, ledger), token=SecretStr(TOKEN), max_body_bytes=LIMIT)
    server = ServerThread(app).start()
    try:
        yield server, root, ledger
    finally:
        server.stop()


def request_head(method: str, server: ServerThread, path: str, length: int | None = None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Authorization: Bearer {TOKEN}",
    ]
    if length is not None:
        lines += [f"Content-Type: {MEDIA_TYPE_ENVELOPE}", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the body (up to the connection's end) of the answer on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    while chunk := sock.recv(65536):
        body += chunk
    return int(status_line.split()[1]), headers, body


# -- 1. a client gone mid-download --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_client_gone_mid_download_closes_the_stream_and_releases_the_store(
    served: tuple[ServerThread, Path, Ledger],
) -> None:
    server, root, ledger = served
    cache = _cache_of(server)
    size = 48 * MIB  # far more than the sockets' buffers hold: the server is mid-stream when the client goes
    content = payload(size)
    with client_for(server.url, "gone") as client:
        client.save("big", Message(content=content))
        client.save("other", Message(content=b"small"))
    ledger.events.clear()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request_head("GET", server, "/v1/namespaces/gone/artifacts/big"))
        received = 0
        while received < 2 * MIB:
            chunk = sock.recv(65536)
            assert chunk, "the server ended the answer early"
            received += len(chunk)
        (stream,) = ledger.open_streams("gone")
        assert files_open_under(root), "the artifact's file is open while it is sent"
        # A reset rather than an orderly close: the server finds the client gone at its next write.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_for(lambda: stream.closed, "the server to close the store's stream")
    wait_for(lambda: users(cache, "gone") == 0, "the server to end its use of the store")
    assert files_open_under(root) == []
    assert ledger.violations == []
    # The store was not closed under the stream, and is closed when the cache lets it go.
    assert ledger.closed.get("gone", 0) == 0
    with client_for(server.url, "gone") as client:
        assert client.get("other").content == b"small"
        assert client.get("big").content == content  # and the same artifact in full, after that
    cache.close()
    assert ledger.closed.get("gone") == 1
    assert files_open_under(root) == []


def _cache_of(server: ServerThread) -> _StoreCache:
    app: Any = server.server.config.app
    cache: _StoreCache = app.state.store_cache
    return cache


# -- 2. the graceful shutdown during a streamed save or read ------------------------------------------------------


@pytest.fixture
def shutting(tmp_path: Path) -> Iterator[tuple[ServerThread, Path, Ledger]]:
    """A filesystem-backed server whose graceful shutdown gives up on running requests after 0.2 s."""
    root = tmp_path / "root"
    ledger = Ledger()
    app = create_app(tracked_factory(root, ledger), token=SecretStr(TOKEN), max_body_bytes=LIMIT)
    server = ServerThread(app, timeout_graceful_shutdown=0.2).start()
    try:
        yield server, root, ledger
    finally:
        if server.thread.is_alive():
            server.stop()
        server.sock.close()


def stop_server(server: ServerThread) -> None:
    server.server.should_exit = True
    server.thread.join(timeout=30)
    assert not server.thread.is_alive(), "uvicorn did not stop"


@pytest.mark.timeout(120)
def test_the_graceful_shutdown_during_a_streamed_save_is_a_marked_503_and_stores_nothing(
    shutting: tuple[ServerThread, Path, Ledger],
) -> None:
    server, root, ledger = shutting
    encoded = Codec().encode(Message(content=payload(8 * MIB)), place=("cut", "x"))
    head, data = encoded.head, encoded.payload
    assert len(head) + len(data) > STREAM_FROM_BYTES
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request_head("PUT", server, "/v1/namespaces/cut/artifacts/x", len(head) + len(data)))
        sock.sendall(head + data[: 2 * MIB])
        # The store has begun writing: its temporary file exists.
        wait_for(lambda: bool(files_under(root)), "the store to begin the save")
        assert ledger.events == ["save_stream cut/x"]
        thread, outcome = in_thread(lambda: stop_server(server))
        status, headers, body = read_response(sock)
    thread.join(timeout=60)
    assert outcome == [None]
    assert status == 503, body
    assert headers[PROTOCOL_HEADER.lower()] == PROTOCOL_VERSION
    assert headers[ERROR_HEADER.lower()] == "BackendUnavailableError"
    assert b"nothing was saved" in body
    # The save failed on its body, then the store was closed: after its last call, never under it.
    with ledger.lock:
        assert ledger.changed.wait_for(lambda: "close cut" in ledger.events, timeout=30)
    assert ledger.events == ["save_stream cut/x", "save_stream ended cut/x", "close cut"]
    assert ledger.violations == []
    assert files_under(root) == []  # no artifact, no temporary file
    assert files_open_under(root) == []


class HeldStream(io.RawIOBase):
    """A store's stream whose reads after the first wait for ``go``: a slow disk or network under a streamed GET."""

    def __init__(self, inner: IO[bytes], go: threading.Event, ledger: Ledger) -> None:
        super().__init__()
        self._inner, self._go, self._ledger = inner, go, ledger
        self._reads = 0
        self.waiting = threading.Event()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        self._reads += 1
        if self._reads > 1:
            self.waiting.set()
            assert self._go.wait(timeout=60)
            self._ledger.note("read ended")
        return self._inner.read(size)

    def close(self) -> None:
        if not self.closed:
            self._ledger.note("stream closed")
            self._inner.close()
        super().close()


@pytest.mark.timeout(120)
def test_the_graceful_shutdown_during_a_streamed_read_cuts_it_ends_the_lease_then_closes_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = tmp_path / "root"
    ledger = Ledger()
    go = threading.Event()
    held: list[HeldStream] = []
    plain = tracked_factory(root, ledger)

    class Held(plain):  # type: ignore[valid-type, misc]
        def open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
            header, stream = super().open_with_header(step_id)
            held.append(HeldStream(stream, go, ledger))
            return header, cast("IO[bytes]", held[-1])

    app = create_app(Held, token=SecretStr(TOKEN), max_body_bytes=LIMIT)
    server = ServerThread(app, timeout_graceful_shutdown=0.2).start()
    cache = _cache_of(server)
    size = 8 * MIB
    content = payload(size)
    try:
        with client_for(server.url, "read") as client:
            client.save("x", Message(content=content))
        ledger.events.clear()
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(request_head("GET", server, "/v1/namespaces/read/artifacts/x"))
            # The client reads all it is sent; the server waits for its store's second read.
            answers: list[tuple[int, dict[str, str], bytes]] = []
            reader, _ = in_thread(lambda: answers.append(read_response(sock)))
            wait_for(lambda: bool(held), "the server to open the artifact")
            (stream,) = held
            assert stream.waiting.wait(timeout=30)
            stopper, stopped = in_thread(lambda: stop_server(server))
            # uvicorn gave up on the request and ran the app's shutdown: the store is still in use by the read.
            wait_for(lambda: cache._closed, "the server's shutdown to close its store cache")
            assert "close read" not in ledger.events, "the store was closed under a read in flight"
            # The server stops while the read is still in flight: its event loop never waits for a store's read
            # (the lease's end once held it until the read returned, every other task of the loop with it).
            stopper.join(timeout=30)
            assert stopped == [None]
            assert not stream.closed
            assert "close read" not in ledger.events
            go.set()
            reader.join(timeout=60)
            assert not reader.is_alive()
    finally:
        go.set()
        if server.thread.is_alive():
            server.stop()
        server.sock.close()
    with ledger.lock:
        assert ledger.changed.wait_for(lambda: "close read" in ledger.events, timeout=30)
    # The answer was cut short: the client sees a truncated body (and may retry), never a wrong one.
    ((status, headers, body),) = answers
    assert status == 200
    assert len(body) < int(headers["content-length"])
    # The read in flight ended, then the stream was closed (the lease), then the store (its last user gone).
    assert ledger.events == ["open read/x", "read ended", "stream closed", "close read"]
    assert ledger.violations == []
    assert files_open_under(root) == []
    # An expected end, logged as one line of the server's own that names the artifact; no crash of the
    # application with a traceback, as uvicorn reported it.
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "Exception in ASGI application" in m]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    (line,) = [m for m in messages if "cut short" in m]
    assert line == (
        f"GET of artifact 'x' in namespace 'read' cut short by the server's shutdown, {MIB} of its {size} payload "
        "bytes sent; the client sees a truncated body"
    )


# -- 3. many streams at once while the namespace cache evicts -----------------------------------------------------


@pytest.mark.timeout(300)
def test_concurrent_streamed_saves_and_reads_under_eviction_are_byte_identical_and_no_store_closes_under_a_stream(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    ledger = Ledger()
    # Eight namespaces for two cache places: every use that ends evicts another namespace's idle store.
    app = create_app(tracked_factory(root, ledger), token=SecretStr(TOKEN), max_body_bytes=LIMIT, store_cache_size=2)
    server = ServerThread(app).start()
    count, size = 8, 3 * MIB + 17
    contents = [payload(size, seed=i) for i in range(count)]
    barrier = threading.Barrier(count)

    def upload(i: int) -> None:
        with client_for(server.url, f"ns{i}", read_timeout=120) as client:
            barrier.wait(timeout=60)
            client.save_stream("a", io.BytesIO(contents[i]))

    def download(i: int) -> bytes:
        with client_for(server.url, f"ns{i}", read_timeout=120) as client:
            barrier.wait(timeout=60)
            with client.open("a") as stream:
                pieces = []
                while piece := stream.read(256 * 1024):
                    pieces.append(piece)
        return b"".join(pieces)

    try:
        uploads = [in_thread(lambda i=i: upload(i)) for i in range(count)]  # type: ignore[misc]
        for thread, _ in uploads:
            thread.join(timeout=240)
        assert [outcome for _, outcome in uploads] == [[None]] * count
        received: dict[int, bytes] = {}
        downloads = [in_thread(lambda i=i: received.__setitem__(i, download(i))) for i in range(count)]  # type: ignore[misc]
        for thread, _ in downloads:
            thread.join(timeout=240)
        assert [outcome for _, outcome in downloads] == [[None]] * count
        evicted = sum(ledger.closed.values())
    finally:
        server.stop()
    assert all(received[i] == contents[i] for i in range(count)), "a download differs from its upload"
    # Each went the streamed way both ways (a save received whole, or a read whole with get(), would show here).
    for i in range(count):
        assert f"save_stream ns{i}/a" in ledger.events, ledger.events
        assert f"open ns{i}/a" in ledger.events, ledger.events
    assert evicted >= count, "the cache evicted stores while the others streamed"
    assert sum(ledger.closed.values()) >= count
    assert ledger.violations == []
    assert ledger.open_streams() == []
    assert files_open_under(root) == []


@pytest.mark.timeout(120)
def test_a_store_evicted_right_after_its_build_still_takes_the_streamed_ways(tmp_path: Path) -> None:
    # The server asked its cache whether a namespace's store streams a moment after building it; another
    # request's end could evict the idle store in between, and the large upload or download then went the way
    # that holds the whole artifact in memory. Here another request ends exactly then, every time.
    ledger = Ledger()
    app = create_app(tracked_factory(tmp_path / "root", ledger), token=SecretStr(TOKEN), store_cache_size=1)
    cache: _StoreCache = app.state.store_cache
    build = cache._build

    def build_then_another_request_ends(namespace: str) -> Any:
        built = build(namespace)
        if namespace == "big":
            with cache.acquire("other"):
                pass  # its end evicts the idle store of "big" (one place in the cache)
        return built

    cache._build = build_then_another_request_ends  # type: ignore[method-assign]
    server = ServerThread(app).start()
    content = payload(3 * MIB + 5)
    envelope = Codec().encode(Message(content=content)).to_bytes()
    try:
        # A bare PUT (the client's save_stream asks first with a HEAD, which would build the store before).
        auth = {"Authorization": f"Bearer {TOKEN}"}
        url = f"{server.url}/v1/namespaces/big/artifacts/a"
        put = httpx.put(url, content=envelope, headers={**auth, "Content-Type": MEDIA_TYPE_ENVELOPE}, timeout=60)
        assert put.status_code == 204, put.text
        assert "save_stream big/a" in ledger.events, ledger.events
        assert ledger.closed["big"] >= 1, "the store of 'big' was not evicted after its build"
        with client_for(server.url, "other") as client:
            client.exists("x")  # evicts the store of "big" again: the GET builds it anew
        got = httpx.get(url, headers=auth, timeout=60)
        assert got.status_code == 200
        assert got.content == envelope
        assert "open big/a" in ledger.events, ledger.events
    finally:
        server.stop()
    assert ledger.violations == []


# -- 4. signing keys on the streamed paths -----------------------------------------------------------------------


def signed_client(server: ServerThread, namespace: str, key: bytes | None) -> HttpStore:
    settings = HttpSettings(endpoint=server.url, token=SecretStr(TOKEN), retries=0, read_timeout=60, trust_env=False)
    return HttpStore(settings, namespace=namespace, codec=Codec(signing_key=key))


@pytest.mark.timeout(180)
def test_a_signed_server_and_client_stream_a_large_artifact_and_another_key_is_refused_both_ways(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    ledger = Ledger()
    key = b"the server's and its clients' key"
    factory = tracked_factory(root, ledger, codec=Codec(signing_key=key))
    server = ServerThread(create_app(factory, token=SecretStr(TOKEN), max_body_bytes=LIMIT)).start()
    content = payload(6 * MIB + 3)
    try:
        with signed_client(server, "signed", key) as client:
            client.save_stream("a", io.BytesIO(content), metadata={"k": "v"})
            with client.open("a") as stream:
                assert stream.read() == content
            assert client.get("a").metadata == {"k": "v"}
        with signed_client(server, "signed", b"another key entirely") as other:
            with pytest.raises(ArtifactCorruptedError):
                other.save_stream("b", io.BytesIO(content))
            with pytest.raises(ArtifactCorruptedError):
                other.open("a")
        with (
            signed_client(server, "signed", None) as unsigned,
            pytest.raises(ArtifactCorruptedError, match="not signed"),
        ):
            unsigned.save_stream("c", io.BytesIO(content))
    finally:
        server.stop()
    assert ledger.events.count("save_stream signed/a") == 1
    assert "save_stream signed/b" not in ledger.events  # refused from its head, before the store was handed it
    assert sorted(path.name for path in files_under(root)) == ["@a"]
    assert ledger.violations == []
    assert files_open_under(root) == []


@pytest.mark.timeout(120)
def test_a_client_with_a_key_streaming_to_a_server_without_one_is_a_configuration_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    server = ServerThread(
        create_app(tracked_factory(root, Ledger()), token=SecretStr(TOKEN), max_body_bytes=LIMIT)
    ).start()
    try:
        with (
            signed_client(server, "unsigned-server", b"a key the server does not have") as client,
            pytest.raises(ConfigurationError, match="signed"),
        ):
            client.save_stream("d", io.BytesIO(payload(2 * MIB)))
    finally:
        server.stop()
    assert files_under(root) == []
