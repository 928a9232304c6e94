"""Early answers (401, 413, an early 409: given before the request body is received) reach a client still sending.

The server answers with ``Connection: close`` and, before the connection closes, reads and drops the rest of the
body within bounds (``LINGER_BYTES``, ``LINGER_IDLE_SECONDS``, ``LINGER_SECONDS``). Closed at once with the
body's bytes unread, the connection was reset (Linux sends an RST for a close() with unread data): the client's
send failed with ECONNRESET, and a client that gives up there (the standard library's http.client) never read
the answer. Real uvicorn, real sockets on loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from raw_http import read_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from artifactstore_core import ArtifactStore, create_store
from artifactstore_core import Message as Artifact
from artifactstore_core.envelope import Codec
from artifactstore_core.errors import AccessDeniedError, ArtifactExistsError, PayloadTooLargeError
from artifactstore_http import server as server_module
from artifactstore_http.protocol import MEDIA_TYPE_ENVELOPE
from artifactstore_http.server import LINGER_BYTES, create_app
from artifactstore_http.testing import TOKEN, ServerThread, client_for
from artifactstore_memory import MemorySpace, MemoryStore

MIB = 1024 * 1024
SMALL_LIMIT = MIB  # the 413 server's body limit (a request of at most twice it is accepted)
# Far more than loopback's socket buffers hold (about 4 MiB here), so the client is still sending when it is
# answered (the server reads no more than uvicorn's 64 KiB buffer and one 256 KiB read before its answer), and
# within LINGER_BYTES, so the server reads it all before it closes.
BODY = 6 * MIB
WRONG = "wrong-token-0123456789abcdef"
EARLY = ["413", "401", "409"]
BIG = "/v1/namespaces/early/artifacts/big"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _memory_app(limit: int) -> ASGIApp:
    space = MemorySpace()
    return create_app(lambda ns: MemoryStore(namespace=ns, space=space), token=SecretStr(TOKEN), max_body_bytes=limit)


@dataclass
class Servers:
    small: ServerThread  # memory-backed, 1 MiB limit: a 6 MiB body is refused with 413 at its headers
    streaming: ServerThread  # filesystem-backed (streams), 64 MiB limit: 401 for a wrong token, 409 over "taken"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("linger")

    def filesystem(namespace: str) -> ArtifactStore:
        return create_store("filesystem", namespace=namespace, root=str(root))

    small = ServerThread(_memory_app(SMALL_LIMIT)).start()
    try:
        streaming = ServerThread(create_app(filesystem, token=SecretStr(TOKEN), max_body_bytes=64 * MIB)).start()
        try:
            with client_for(streaming.url, "early") as store:
                store.save("taken", Artifact(content=b"another artifact"))
            yield Servers(small, streaming)
        finally:
            streaming.stop()
    finally:
        small.stop()


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time bounds no loaded machine reaches, for the tests of what is read within the byte bound."""
    monkeypatch.setattr(server_module, "LINGER_IDLE_SECONDS", 60.0)
    monkeypatch.setattr(server_module, "LINGER_SECONDS", 120.0)


def _request(servers: Servers, early: str, size: int) -> tuple[int, str, dict[str, str], bytes]:
    """The port, path, headers and body of a save answered ``early`` before its body is received."""
    content = bytes(size)
    if early == "413":
        return servers.small.port, BIG, AUTH, content
    head = Codec().encode(Artifact(content=content), place=("early", "taken")).head
    headers = {"Authorization": f"Bearer {WRONG}"} if early == "401" else AUTH
    return servers.streaming.port, "/v1/namespaces/early/artifacts/taken", headers, head + content


def _head_bytes(path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: x", f"Content-Type: {MEDIA_TYPE_ENVELOPE}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """One response with a Content-Length body, its body a problem document."""
    status, headers, body = read_response(sock)
    return status, headers, json.loads(body)


def _expected(early: str) -> tuple[int, str]:
    return {"413": (413, "PayloadTooLargeError"), "401": (401, "AccessDeniedError")}.get(
        early, (409, "ArtifactExistsError")
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("early", EARLY)
@pytest.mark.usefixtures("patient")
def test_a_client_still_sending_sends_its_whole_body_reads_the_answer_and_sees_an_orderly_close(
    servers: Servers, early: str
) -> None:
    port, path, headers, body = _request(servers, early, BODY)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        # All of it, as a client that reads only once it has sent its request: the server answers while this
        # runs. Closed at once, the server reset the connection and this raised ConnectionResetError.
        sock.sendall(_head_bytes(path, headers, len(body)) + body)
        status, answer_headers, problem = _read_answer(sock)
        assert (status, problem["type"]) == _expected(early)
        assert answer_headers["connection"] == "close"
        # The server closes once it has read the body: an end of stream, not a reset (which raises here).
        assert sock.recv(65536) == b""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("early", EARLY)
@pytest.mark.usefixtures("patient")
def test_the_standard_library_client_gets_the_early_answer(servers: Servers, early: str) -> None:
    # http.client sends the whole request before it reads, and raises when a send fails: it saw
    # ConnectionResetError instead of the answer.
    port, path, headers, body = _request(servers, early, BODY)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("PUT", path, body=body, headers={**headers, "Content-Type": MEDIA_TYPE_ENVELOPE})
        response = connection.getresponse()
        problem = json.loads(response.read())
    finally:
        connection.close()
    assert (response.status, problem["type"]) == _expected(early)


class _Counted:
    """The application, counting the request body bytes the server received (in ``received``, per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.received: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        index = len(self.received)
        self.received.append(0)

        async def counted() -> Message:
            message = await receive()
            self.received[index] += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture
def counted() -> Iterator[tuple[ServerThread, _Counted]]:
    """A memory-backed server with a 1 MiB limit that counts the body bytes it receives."""
    app = _Counted(_memory_app(SMALL_LIMIT))
    server = ServerThread(app).start()
    try:
        yield server, app
    finally:
        server.stop()


def _send_until_refused(sock: socket.socket) -> OSError:
    """Send zeros until the connection refuses them (the server closed it with bytes unread: a reset)."""
    chunk = bytes(256 * 1024)
    try:
        while True:
            sock.sendall(chunk)
    except (ConnectionResetError, BrokenPipeError) as exc:
        return exc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bound", ["bytes", "time"])
def test_a_body_longer_than_the_linger_is_cut_by_the_close_and_its_answer_still_read(
    counted: tuple[ServerThread, _Counted], monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    server, app = counted
    if bound == "bytes":
        monkeypatch.setattr(server_module, "LINGER_IDLE_SECONDS", 60.0)
        monkeypatch.setattr(server_module, "LINGER_SECONDS", 120.0)
    else:
        # Whatever a client sends, and however fast, the connection is held 0.3 s at most.
        monkeypatch.setattr(server_module, "LINGER_BYTES", 1 << 62)
        monkeypatch.setattr(server_module, "LINGER_SECONDS", 0.3)
    declared = 1 << 40
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(_head_bytes(BIG, AUTH, declared))
        _send_until_refused(sock)
        # Linux keeps what was received before the reset: a client that reads after its failed send (httpx
        # does) still gets the answer.
        status, _, problem = _read_answer(sock)
    assert (status, problem["type"]) == (413, "PayloadTooLargeError")
    if bound == "bytes":
        # The bound, and at most one received piece (uvicorn's 64 KiB buffer and a 256 KiB read) beyond it.
        assert app.received[-1] <= LINGER_BYTES + MIB, app.received


@pytest.mark.timeout(60)
def test_a_client_that_stops_sending_is_not_waited_for(
    counted: tuple[ServerThread, _Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither the byte bound nor the overall time ends this one: the time without a byte does.
    monkeypatch.setattr(server_module, "LINGER_IDLE_SECONDS", 0.2)
    monkeypatch.setattr(server_module, "LINGER_SECONDS", 600.0)
    server, _ = counted
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(_head_bytes(BIG, AUTH, 1 << 40) + bytes(MIB))
        status, _, _ = _read_answer(sock)
        assert status == 413
        # The rest never comes; the server ends the connection all the same (in order, having read what came,
        # unless this thread was held up mid-send past the idle bound: then with a reset).
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass


@pytest.mark.timeout(60)
def test_an_early_answer_to_a_client_waiting_for_100_continue_closes_at_once(
    counted: tuple[ServerThread, _Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Told nothing, such a client (curl for a large upload) sends no body: there is nothing to wait for.
    monkeypatch.setattr(server_module, "LINGER_IDLE_SECONDS", 600.0)
    monkeypatch.setattr(server_module, "LINGER_SECONDS", 600.0)
    server, app = counted
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(_head_bytes(BIG, {**AUTH, "Expect": "100-continue"}, 1 << 40))
        status, _, _ = _read_answer(sock)
        assert status == 413
        assert sock.recv(65536) == b""
    assert app.received == [0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", [BODY, 4 * LINGER_BYTES], ids=["within the linger", "beyond it"])
@pytest.mark.parametrize("early", EARLY)
def test_this_client_raises_the_early_answer_of_a_large_save(
    servers: Servers, tmp_path: Path, early: str, size: int
) -> None:
    # httpcore reads the answer when a send fails (the server's close cut a body beyond the linger short); the
    # client raises the error it describes, not a connection error (retries=0: the first attempt's answer).
    content = bytes(size) if early != "409" else b"\1" * size
    if early == "413":
        url, overrides, error = servers.small.url, {}, PayloadTooLargeError
    else:
        url = servers.streaming.url
        overrides = {"token": SecretStr(WRONG)} if early == "401" else {}
        error = AccessDeniedError if early == "401" else ArtifactExistsError
    with client_for(url, "early", retries=0, **overrides) as store:
        for _ in range(3):
            with pytest.raises(error) as info:
                store.save("taken", Artifact(content=content))
            if early != "401":
                assert info.value.step_id == "taken"


@pytest.mark.timeout(60)
def test_the_servers_graceful_shutdown_ends_a_linger_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that neither sends nor closes holds a linger until its bounds (here never reached); the graceful
    # shutdown's end cancels it, and the answer, sent whole already, is ended, with no "cut short" warning.
    monkeypatch.setattr(server_module, "LINGER_IDLE_SECONDS", 600.0)
    monkeypatch.setattr(server_module, "LINGER_SECONDS", 600.0)
    server = ServerThread(_memory_app(SMALL_LIMIT), timeout_graceful_shutdown=0.2).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(_head_bytes(BIG, AUTH, 1 << 40))
            status, _, _ = _read_answer(sock)
            assert status == 413
            with caplog.at_level(logging.WARNING):
                server.stop()
            assert sock.recv(65536) == b""
    finally:
        if server.thread.is_alive():
            server.stop()
    assert not [record for record in caplog.records if "cut short" in record.getMessage()]
    assert not [record for record in caplog.records if record.exc_info]
