"""Large artifacts stream through the server into and out of streaming stores (filesystem, s3), verified on the way.

A save of more than ``STREAM_FROM_BYTES`` (or of unknown length) to a store with ``capabilities.streaming``
goes to ``save_stream`` as it arrives; a ``GET`` of an uncompressed ``bytes`` artifact is sent as the store's
stream is read. A damaged, short or over-long body stores nothing and gets the answer a whole body gets (the
memory-backed server receives every body whole).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from pydantic import SecretStr

from artifactstore_core import ArtifactStore, Message
from artifactstore_core.envelope import Codec, Header
from artifactstore_core.errors import ArtifactCorruptedError, ArtifactExistsError, ArtifactNotFoundError
from artifactstore_core.message import SchemaInfo
from artifactstore_core.store import Ttl
from artifactstore_core.testing_servers import wait_for
from artifactstore_filesystem import FilesystemSettings, FilesystemStore
from artifactstore_http.protocol import MEDIA_TYPE_ENVELOPE, quote_segment
from artifactstore_http.server import STREAM_FROM_BYTES, STREAMED_SAVES, create_app
from artifactstore_http.testing import TOKEN, ServerThread, client_for
from artifactstore_s3 import S3Settings, S3Store
from artifactstore_s3.testing import SECRET_ACCESS_KEY, MotoServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024
LIMIT = 64 * MIB
SIZE = 6 * MIB + 12345  # streamed (over STREAM_FROM_BYTES), and more than one piece of a GET


class Recording(FilesystemStore):
    """A filesystem store that counts its streaming calls, so a test knows which path the server took."""

    calls: list[str] = []  # noqa: RUF012 - shared by every store of a server, read by the test

    def save_stream(self, step_id: str, stream: IO[bytes], **options: Any) -> None:
        type(self).calls.append(f"save_stream {step_id}")
        super().save_stream(step_id, stream, **options)

    def save(self, step_id: str, message: Message, *, overwrite: bool = False, ttl: Ttl | None = None) -> None:
        type(self).calls.append(f"save {step_id}")
        super().save(step_id, message, overwrite=overwrite, ttl=ttl)

    def open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
        type(self).calls.append(f"open_with_header {step_id}")
        return super().open_with_header(step_id)

    def get(self, step_id: str) -> Message:
        type(self).calls.append(f"get {step_id}")
        return super().get(step_id)


def fs_app(root: Path) -> Any:
    """An artifact server application backed by :class:`Recording` filesystem stores under ``root``."""
    Recording.calls = []

    def factory(namespace: str) -> ArtifactStore:
        return Recording(FilesystemSettings(root=root), namespace=namespace)

    return create_app(factory, token=SecretStr(TOKEN), max_body_bytes=LIMIT)


@pytest.fixture
def fs_server(tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    """An artifact server backed by filesystem stores under ``tmp_path / "root"``."""
    root = tmp_path / "root"
    server = ServerThread(fs_app(root)).start()
    try:
        yield server, root
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_server(moto: MotoServer) -> Iterator[ServerThread]:
    """An artifact server backed by s3 stores on a moto server (a new bucket per test)."""
    bucket = f"streaming-{uuid.uuid4().hex[:16]}"
    moto.client().create_bucket(Bucket=bucket)
    settings = S3Settings(
        bucket=bucket, endpoint_url=moto.endpoint_url, region="us-east-1", access_key_id="AKIAMOTOTESTING00001",
        secret_access_key=SecretStr("moto-secret"), part_size=5 * MIB, multipart_threshold=5 * MIB, read_timeout=60,
    )  # fmt: skip
    server = ServerThread(
        create_app(
            lambda namespace: S3Store(settings, namespace=namespace), token=SecretStr(TOKEN), max_body_bytes=LIMIT
        )
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def memory_reference() -> Iterator[ServerThread]:
    """A memory-backed server with the same limit: it receives every body whole (the in-memory path)."""
    from artifactstore_memory import MemorySpace, MemoryStore

    space = MemorySpace()
    app = create_app(lambda ns: MemoryStore(namespace=ns, space=space), token=SecretStr(TOKEN), max_body_bytes=LIMIT)
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


def payload(size: int = SIZE, seed: int = 1) -> bytes:
    block = os.urandom(MIB)
    return b"".join(i.to_bytes(4, "big") + bytes([seed]) + block[5:] for i in range(size // MIB + 1))[:size]


def rich(content: bytes) -> Message:
    return Message(
        content=content,
        media_type="application/x-parquet",
        schema=SchemaInfo(name="table", version="3"),
        metadata={"rows": 12, "source": "unit"},
        created_at=datetime(2021, 5, 4, 3, 2, 1, 123456, tzinfo=UTC),
    )


def artifact_url(server: ServerThread, namespace: str, step_id: str) -> str:
    return f"{server.url}/v1/namespaces/{quote_segment(namespace)}/artifacts/{quote_segment(step_id)}"


def envelope(message: Message, place: tuple[str, str]) -> tuple[bytes, bytes]:
    encoded = Codec().encode(message, place=place)
    return encoded.head, encoded.payload


def put(server: ServerThread, namespace: str, step_id: str, body: bytes, *, chunked: bool = False) -> httpx.Response:
    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    content: Any = pieces() if chunked else body
    headers = {**AUTH, "Content-Type": MEDIA_TYPE_ENVELOPE}
    return httpx.put(artifact_url(server, namespace, step_id), content=content, headers=headers, timeout=60)


def answer(response: httpx.Response) -> tuple[int, str, str]:
    doc = response.json()
    return response.status_code, doc["type"], doc["detail"]


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


@pytest.mark.timeout(120)
def test_large_bytes_round_trip_through_a_filesystem_server_byte_identical_with_their_fields(
    fs_server: tuple[ServerThread, Path],
) -> None:
    server, _ = fs_server
    assert SIZE > STREAM_FROM_BYTES
    message = rich(payload())
    with client_for(server.url, "big") as client:
        client.save("a/b c", message)
        assert Recording.calls == ["save_stream a/b c"]  # the streamed path, not save()
        back = client.get("a/b c")
        assert Recording.calls[-1] == "open_with_header a/b c"  # opened once, never read whole with get()
    assert back == message
    assert back.content == message.content
    assert (back.media_type, back.schema, back.metadata) == (message.media_type, message.schema, message.metadata)
    assert back.created_at == message.created_at


@pytest.mark.timeout(120)
def test_a_chunked_upload_streams_too(fs_server: tuple[ServerThread, Path]) -> None:
    server, _ = fs_server
    message = rich(payload(3 * MIB))
    head, data = envelope(message, ("chunked", "x"))
    response = put(server, "chunked", "x", head + data, chunked=True)
    assert response.status_code == 204, response.text
    assert Recording.calls == ["save_stream x"]
    with client_for(server.url, "chunked") as client:
        assert client.get("x") == message


@pytest.mark.timeout(120)
def test_small_uploads_json_and_text_keep_the_whole_body_path(fs_server: tuple[ServerThread, Path]) -> None:
    server, _ = fs_server
    big_text = "text " * (MIB // 2)  # over the threshold, but text: received whole (and compressed)
    with client_for(server.url, "small") as client:
        client.save("small", Message(content=b"x" * 1000))
        client.save("json", Message(content={"k": list(range(1000))}))
        client.save("text", Message(content=big_text, metadata={"m": 1}))
        assert Recording.calls == ["save small", "save json", "save text"]
        assert client.get("small").content == b"x" * 1000
        assert client.get("json").content == {"k": tuple(range(1000))}
        assert client.get("text").content == big_text
    # Each read opened its artifact once: JSON and text were read whole from the stream, not with get().
    assert Recording.calls[3:] == ["open_with_header small", "open_with_header json", "open_with_header text"]


@pytest.mark.timeout(180)
def test_large_bytes_round_trip_through_an_s3_server(s3_server: ServerThread) -> None:
    message = rich(payload(12 * MIB + 7))  # more than two parts of a multipart upload
    with client_for(s3_server.url, "s3-big") as client:
        client.save("big", message)
        back = client.get("big")
        info = client.info("big")
    assert back == message
    assert back.created_at == message.created_at
    assert info.size == len(message.content)


@pytest.mark.timeout(120)
def test_write_once_and_overwrite_on_the_streamed_path(fs_server: tuple[ServerThread, Path]) -> None:
    server, _ = fs_server
    first, second = rich(payload(seed=1)), rich(payload(seed=2))
    with client_for(server.url, "once") as client:
        client.save("x", first)
        client.save("x", first)  # identical: a safe retry
        with pytest.raises(ArtifactExistsError):
            client.save("x", second)
        assert client.get("x") == first
        client.save("x", second, overwrite=True)
        assert client.get("x") == second
    # The different artifact was refused before its payload went to the store (see the early 409 tests below).
    assert Recording.calls.count("save_stream x") == 3


def counting_body(app: Any, received: list[int]) -> Any:
    """``app`` recording in ``received`` how many request body bytes the ASGI server handed it, per request."""

    async def counted_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        index = len(received)
        received.append(0)

        async def counted() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                received[index] += len(message.get("body", b""))
            return message

        await app(scope, counted, send)

    return counted_app


@pytest.mark.timeout(120)
@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_a_streamed_save_over_a_different_artifact_is_refused_before_its_body_is_received(
    fs_server: tuple[ServerThread, Path], framing: str
) -> None:
    # The whole body was received (and handed to the store's save_stream, spooled to a temporary file) before the
    # store's write-once commit refused it: a 409 that cost the upload of the whole artifact, up to the limit.
    server, _ = fs_server
    first = rich(payload(seed=1))
    with client_for(server.url, "early") as client:
        client.save("x", first)
    head, data = envelope(rich(payload(seed=2)), ("early", "x"))
    length = "Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {len(head) + len(data)}"
    sent = head + data[:MIB]
    if framing == "chunked":
        sent = f"{len(sent):x}\r\n".encode() + sent + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(
            f"PUT /v1/namespaces/early/artifacts/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {MEDIA_TYPE_ENVELOPE}\r\n{length}\r\n\r\n".encode()
            + sent
        )
        # The rest of the body is never sent: the answer comes all the same, and the connection ends after it (once
        # the server has waited a moment for the rest, see LINGER_IDLE_SECONDS; by a reset if bytes were unread).
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    top, _, body = answer.partition(b"\r\n\r\n")
    assert top.startswith(b"HTTP/1.1 409 "), top
    assert b"connection: close" in top.lower()
    assert f"content-length: {len(body)}".encode() in top.lower()
    problem = httpx.Response(409, content=body).json()
    assert problem["type"] == "ArtifactExistsError"
    assert problem["step_id"] == "x"
    assert "overwrite" in problem["detail"]
    assert Recording.calls.count("save_stream x") == 1  # the first save's only
    with client_for(server.url, "early") as client:
        assert client.get("x") == first


@pytest.mark.timeout(300)
def test_the_client_gets_the_early_409_as_artifact_exists_and_identical_resaves_still_succeed(tmp_path: Path) -> None:
    received: list[int] = []
    server = ServerThread(counting_body(fs_app(tmp_path / "root"), received)).start()
    big = 48 * MIB  # far more than the sockets' buffers hold: the client is still sending when it is answered
    first, second = rich(payload(big, seed=1)), rich(payload(big, seed=2))
    try:
        with client_for(server.url, "early", retries=0) as client:
            client.save("x", first)
            for _ in range(3):  # an early answer with the body unread is read, never a reset
                with pytest.raises(ArtifactExistsError) as info:
                    client.save("x", second)
                assert info.value.step_id == "x"
                assert received[-1] < big // 2, "the server received the body before refusing it"
            # The same artifact again (a retry; a new created_at) is a safe re-save: received whole and accepted.
            client.save("x", first.model_copy(update={"created_at": datetime.now(UTC)}))
            assert received[-1] > big
            # Same content, other metadata: a different artifact the server cannot tell before the body (the
            # stored artifact's info matches), refused by the store's write-once commit.
            with pytest.raises(ArtifactExistsError):
                client.save("x", first.model_copy(update={"metadata": {"rows": 13}}))
            assert client.get("x") == first
            client.save("x", second, overwrite=True)
            assert client.get("x") == second
    finally:
        server.stop()


def faults(message: Message, place: tuple[str, str]) -> dict[str, tuple[bytes, bool]]:
    """Bodies with one fault each, and whether each is sent chunked (a short or long body cannot be declared)."""
    head, data = envelope(message, place)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    return {
        "wrong digest": (head + bytes(damaged), False),
        "wrong digest, chunked": (head + bytes(damaged), True),
        "short, declared": (head + data[:-1000], False),
        "short, chunked": (head + data[:-1000], True),
        "over-long, declared": (head + data + b"extra", False),
        "over-long, chunked": (head + data + b"extra" * 100_000, True),
        "head cut short": (head[:-5] + b"", True),
        "over the limit, chunked": (head + data + bytes(LIMIT), True),
    }


@pytest.mark.timeout(300)
def test_a_faulty_body_stores_nothing_and_is_answered_as_a_whole_body_is(
    fs_server: tuple[ServerThread, Path], memory_reference: ServerThread
) -> None:
    server, root = fs_server
    message = rich(payload(2 * MIB))
    for name, (body, chunked) in faults(message, ("faults", "x")).items():
        Recording.calls = []
        streamed = put(server, "faults", "x", body, chunked=chunked)
        whole = put(memory_reference, "faults", "x", body, chunked=chunked)
        assert streamed.status_code >= 400, name
        assert answer(streamed) == answer(whole), name
        # Met on the streamed path: while the store read the stream, or (a declared length that is not the
        # header's) before anything was handed to it.
        expected = [] if "declared" in name or name == "head cut short" else ["save_stream x"]
        if name != "over the limit, chunked":
            assert Recording.calls == expected, name
        with client_for(server.url, "faults") as client:
            assert not client.exists("x"), name
        assert files_under(root) == [], name


@pytest.mark.timeout(120)
def test_a_client_that_disconnects_mid_upload_stores_nothing(
    fs_server: tuple[ServerThread, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="artifactstore_http.server")
    server, root = fs_server
    head, data = envelope(rich(payload()), ("gone", "x"))
    path = "/v1/namespaces/gone/artifacts/x"
    request = (
        f"PUT {path} HTTP/1.1\r\nHost: {server.url[7:]}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {MEDIA_TYPE_ENVELOPE}\r\nContent-Length: {len(head) + len(data)}\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request + head + data[: len(data) // 2])
        # The store has begun: its temporary file exists.
        wait_for(lambda: bool(files_under(root)), "the store to begin the save")
    # The request ends (logged by the server) once the server saw the disconnect.
    wait_for(
        lambda: any(record.getMessage().startswith(f"PUT {path} ") for record in caplog.records), "the request to end"
    )
    assert Recording.calls == ["save_stream x"]
    with client_for(server.url, "gone") as client:
        assert not client.exists("x")
    assert files_under(root) == []  # nor a temporary file left behind


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip early":
        data[len(data) - SIZE + 10] ^= 0x01  # in the first piece sent
    elif how == "flip last":
        data[-1] ^= 0x01
    else:  # truncated: the stream ends 2 MiB early
        del data[-2 * MIB :]
    path.write_bytes(bytes(data))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["flip early", "flip last", "truncated"])
def test_an_artifact_damaged_on_disk_is_corrupt_at_the_client(
    fs_server: tuple[ServerThread, Path], how: str, caplog: pytest.LogCaptureFixture
) -> None:
    server, root = fs_server
    with client_for(server.url, "damaged") as client:
        client.save("x", rich(payload()))
        (stored,) = root.rglob("@x")
        damage(stored, how)
        with pytest.raises(ArtifactCorruptedError):
            client.get("x")
        # The server is still serving, on a fresh connection or the same one.
        client.save("y", Message(content=b"fine"))
        assert client.get("y").content == b"fine"
    # A payload damaged midway is found after the head went out (then logged); a file cut short, from its size
    # before anything is sent (an error answer).
    assert any("is damaged" in record.getMessage() for record in caplog.records) == (how != "truncated")


@pytest.mark.timeout(60)
def test_a_missing_artifact_is_not_found_through_the_streamed_get(fs_server: tuple[ServerThread, Path]) -> None:
    server, _ = fs_server
    with client_for(server.url, "missing") as client, pytest.raises(ArtifactNotFoundError):
        client.get("nothing")


@pytest.mark.timeout(180)
def test_stalled_streamed_uploads_leave_every_other_request_served(tmp_path: Path) -> None:
    # More stalled uploads than anyio's 40 default worker threads: each streamed save holds a thread while its
    # client sends the body. On the default threads they stopped every other store call of the server (a GET
    # of another namespace timed out); streamed saves now have threads of their own (STREAMED_SAVES).
    root = tmp_path / "root"
    app = create_app(
        lambda namespace: FilesystemStore(FilesystemSettings(root=root), namespace=namespace),
        token=SecretStr(TOKEN),
        max_body_bytes=LIMIT,
    )
    server = ServerThread(app).start()
    uploads: list[tuple[socket.socket, bytes]] = []
    try:
        with client_for(server.url, "other", read_timeout=5.0, retries=0) as client:
            client.save("small", Message(content=b"hello"))
            message = Message(content=bytes(2 * MIB))
            for number in range(STREAMED_SAVES + 26):
                encoded = Codec().encode(message, place=("up", f"x{number}"))
                body = encoded.head + encoded.payload
                connection = socket.create_connection(("127.0.0.1", server.port), timeout=60)
                uploads.append((connection, body))
                request = (
                    f"PUT /v1/namespaces/up/artifacts/x{number} HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nContent-Type: {MEDIA_TYPE_ENVELOPE}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode("ascii")
                connection.sendall(request + body[:100_000])

            def writing() -> int:
                # The temporary files of the saves in progress (the other namespace's artifact aside).
                return sum(1 for path in root.rglob("*") if path.is_file() and "other" not in path.parts)

            # Every thread streamed saves may have is taken, each waiting for the rest of its body.
            wait_for(lambda: writing() >= STREAMED_SAVES, f"{STREAMED_SAVES} streamed saves to begin")
            assert client.get("small").content == b"hello"
            assert client.exists("small")
            for connection, body in uploads:
                connection.sendall(body[100_000:])
            statuses = [connection.recv(64).split(b"\r\n")[0] for connection, _ in uploads]
        assert statuses == [b"HTTP/1.1 204 No Content"] * len(uploads)
        with client_for(server.url, "up") as reader:
            assert reader.get(f"x{len(uploads) - 1}").content == bytes(2 * MIB)
    finally:
        for connection, _ in uploads:
            connection.close()
        server.stop()


@pytest.mark.timeout(180)
def test_an_s3_store_failing_midway_through_a_streamed_get_cuts_the_body_with_one_warning_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # moto stopped while the server streams an artifact from it: the server's next read of the S3 object fails.
    # uvicorn logged "Exception in ASGI application" with the whole traceback, a crash to an operator, for a
    # failure of the store that the server handles: the answer is cut short (the client may retry).
    caplog.set_level(logging.INFO)
    size = 48 * MIB  # far more than the sockets between moto and the server hold
    with MotoServer(tmp_path) as moto:
        bucket = moto.create_bucket()
        settings = moto.settings(bucket, read_timeout=30)
        app = create_app(lambda ns: S3Store(settings, namespace=ns), token=SecretStr(TOKEN), max_body_bytes=LIMIT)
        server = ServerThread(app).start()
        try:
            with client_for(server.url, "cut") as client:
                client.save("big", Message(content=payload(size)))
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                path = "/v1/namespaces/cut/artifacts/big"
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
                data = b""
                while len(data) < 2 * MIB:  # the server is mid-stream, held by this client that reads no more
                    chunk = sock.recv(65536)
                    assert chunk, "the server ended the answer early"
                    data += chunk
                moto.kill()
                while chunk := sock.recv(1 << 20):  # then reads to the end of the connection
                    data += chunk
            top, _, body = data.partition(b"\r\n\r\n")
            assert top.startswith(b"HTTP/1.1 200 ")
            length = int(next(line for line in top.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
            assert len(body) < length, "a body cut short must never look complete"
            wait_for(
                lambda: any(r.getMessage().startswith(f"GET {path} ") for r in caplog.records), "the request to end"
            )
        finally:
            server.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "Exception in ASGI application" in m]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    (line,) = [r for r in caplog.records if "failed midway" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.name == "artifactstore_http.server"
    assert line.getMessage().startswith("reading artifact 'big' in namespace 'cut' failed midway, ")
    assert "(BackendUnavailableError: cannot reach S3 " in line.getMessage()
    assert SECRET_ACCESS_KEY not in line.getMessage()
    assert TOKEN not in line.getMessage()
