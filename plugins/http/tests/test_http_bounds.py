"""Bounded reads: the client never takes a body whole on the server's word, and the server never parses JSON
content over its limit to answer a read."""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import blake3
import httpx
import pytest
from pydantic import SecretStr

import artifactstore_core.envelope
import artifactstore_core.message
from artifactstore_core import (
    ArtifactCorruptedError,
    ArtifactStore,
    BackendError,
    BackendUnavailableError,
    Codec,
    Message,
    PayloadTooLargeError,
    create_store,
)
from artifactstore_core.envelope import PREFIX_SIZE, TAG_SIZE
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, MakeClient, ServerThread, bound_socket, client_for
from artifactstore_redis.testing import RedisServer

pytestmark = pytest.mark.timeout(120)

ENVELOPE = "application/vnd.artifactstore.envelope"
MARKER = "Artifactstore-Protocol: 1\r\n"
#: What a hostile server offers to send: far more than any bound below, and than socket buffers hold.
BIG = 256 * 1024 * 1024
#: Most body bytes a bounded client may let through: its limit plus what the kernel's socket buffers take in
#: after it stopped reading (loopback autotuning lets a receive buffer grow to 32 MiB here).
SENT_BOUND = 64 * 1024 * 1024

Answer = tuple[str, Iterable[bytes]]  # the status line and headers, then the body's pieces


def _zeros(total: int, piece: int = 1 << 20) -> Iterator[bytes]:
    block = bytes(piece)
    for start in range(0, total, piece):
        yield block[: min(piece, total - start)]


def _chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``pieces`` in HTTP/1.1 chunked framing (a body with no Content-Length)."""
    for piece in pieces:
        if piece:
            yield b"%x\r\n" % len(piece) + piece + b"\r\n"
    yield b"0\r\n\r\n"


class HostileServer:
    """A raw HTTP/1.1 server on 127.0.0.1 that answers each request with whatever ``answer`` makes of its
    request line, counting the body bytes it got out before the client hung up. ``hold`` keeps a connection
    open after the answer until the client closes it."""

    def __init__(self, answer: Callable[[str], Answer], *, hold: bool = False) -> None:
        self.answer = answer
        self.hold = hold
        self.sent = 0
        self.requests: list[str] = []
        self.listener = bound_socket()
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._handlers: list[threading.Thread] = []
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self._stopping:
                conn.close()
                return
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._handlers.append(handler)
            handler.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            received = b""
            while b"\r\n\r\n" not in received:
                data = conn.recv(65536)
                if not data:
                    return
                received += data
            head, _, rest = received.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
            )
            while len(rest) < length:  # a save's body: read it all before answering
                data = conn.recv(65536)
                if not data:
                    return
                rest += data
            self.requests.append(lines[0])
            status_and_headers, body = self.answer(lines[0])
            try:
                conn.sendall(status_and_headers.encode("latin-1") + b"\r\n")
                for piece in body:
                    conn.sendall(piece)
                    self.sent += len(piece)
                if self.hold:
                    conn.recv(1)  # returns once the client closes the connection
            except OSError:
                return  # the client hung up: what it did not read is not counted

    def finish(self) -> None:
        """Wait until every connection has ended (the client closed those it refused), then stop."""
        for handler in self._handlers:
            handler.join(timeout=60)
            assert not handler.is_alive(), "a connection of the hostile server did not end"
        self._stopping = True
        # Wake accept() (closing a listening socket does not interrupt it in another thread).
        socket.create_connection(self.listener.getsockname(), timeout=5).close()
        self._acceptor.join(timeout=30)
        self.listener.close()


@contextlib.contextmanager
def hostile(answer: Callable[[str], Answer], *, hold: bool = False) -> Iterator[HostileServer]:
    server = HostileServer(answer, hold=hold)
    try:
        yield server
    finally:
        server.finish()


def _envelope(content: Any = b"x" * 1000) -> bytes:
    return Codec().encode(Message(content=content)).to_bytes()


def _claiming_head(size: int) -> bytes:
    """A valid (unsigned) head whose header says the payload is ``size`` bytes: anyone can make one."""
    head, _ = Codec().encode_head(
        codec="bytes", media_type="application/octet-stream", schema=None, metadata={},
        created_at=datetime.now(UTC), size=size, digest="0" * 64,
    )  # fmt: skip
    return head


# -- the client: an artifact's body --------------------------------------------------------------------------


def test_a_body_declared_over_the_limit_is_refused_unread() -> None:
    # The client read the whole 256 MiB (twice its size at peak) before it looked at a byte of it.
    def answer(line: str) -> Answer:
        return f"HTTP/1.1 200 OK\r\nContent-Type: {ENVELOPE}\r\n{MARKER}Content-Length: {BIG}\r\n", _zeros(BIG)

    with (
        hostile(answer) as server,
        client_for(server.url, retries=2, max_body_bytes=1 << 20) as store,
        pytest.raises(PayloadTooLargeError) as info,
    ):
        store.get("a/b")
    error = info.value
    assert error.step_id == "a/b"
    assert error.namespace == "default"
    assert error.backend == "http"
    assert error.retryable is False
    assert f"a body of {BIG} bytes" in str(error)
    assert "ARTIFACT_STORE_HTTP_MAX_BODY_BYTES" in str(error)
    assert server.sent < SENT_BOUND
    assert len(server.requests) == 1  # not retried


def test_an_envelope_whose_header_claims_more_than_the_limit_is_refused_before_its_payload() -> None:
    # A chunked body has no Content-Length: the verified header's sizes are what bound the read.
    def answer(line: str) -> Answer:
        body = _chunked([_claiming_head(200 << 20), *_zeros(BIG)])
        return f"HTTP/1.1 200 OK\r\nContent-Type: {ENVELOPE}\r\n{MARKER}Transfer-Encoding: chunked\r\n", body

    with (
        hostile(answer) as server,
        client_for(server.url, retries=0, max_body_bytes=1 << 20) as store,
        pytest.raises(PayloadTooLargeError, match="ARTIFACT_STORE_HTTP_MAX_BODY_BYTES") as info,
    ):
        store.get("a")
    assert "its header says" in str(info.value)
    assert server.sent < SENT_BOUND


def test_a_payload_running_on_past_its_header_is_not_read_to_its_end() -> None:
    # Within the client's limit (the default, 256 MiB) a body longer than its header says used to be read
    # whole before the envelope was checked.
    def answer(line: str) -> Answer:
        body = _chunked([_envelope(), *_zeros(BIG - 4096)])
        return f"HTTP/1.1 200 OK\r\nContent-Type: {ENVELOPE}\r\n{MARKER}Transfer-Encoding: chunked\r\n", body

    with (
        hostile(answer) as server,
        client_for(server.url, retries=0) as store,
        pytest.raises(ArtifactCorruptedError, match="longer than the 1000 bytes its envelope's header says"),
    ):
        store.get("a")
    assert server.sent < SENT_BOUND


@pytest.mark.parametrize("lie", ["shorter", "longer"])
def test_a_content_length_disagreeing_with_the_envelope_is_corrupted(lie: str) -> None:
    # "longer": the client waited for bytes that never come (until its read timeout, then retried); now the
    # disagreement is seen from the head. "shorter": h11 stops at the Content-Length, so the payload is cut.
    envelope = _envelope()
    declared = len(envelope) + 10 if lie == "longer" else len(envelope) - 10
    sent = envelope if lie == "longer" else envelope[:declared]

    def answer(line: str) -> Answer:
        return f"HTTP/1.1 200 OK\r\nContent-Type: {ENVELOPE}\r\n{MARKER}Content-Length: {declared}\r\n", [sent]

    with (
        hostile(answer, hold=True) as server,
        client_for(server.url, retries=2, read_timeout=5.0) as store,
        pytest.raises(ArtifactCorruptedError) as info,
    ):
        store.get("a")
    assert info.value.step_id == "a"
    if lie == "longer":
        assert f"a body of {declared} bytes (its Content-Length), but the envelope's header says" in str(info.value)
    assert len(server.requests) == 1  # not retried: the same answer would come again


def test_a_body_cut_short_of_its_content_length_is_a_dropped_connection() -> None:
    envelope = _envelope()

    def answer(line: str) -> Answer:
        # The server closes the connection after half the body: the answer was lost, not damaged.
        return f"HTTP/1.1 200 OK\r\nContent-Type: {ENVELOPE}\r\n{MARKER}Content-Length: {len(envelope)}\r\n", [
            envelope[: len(envelope) // 2]
        ]

    with (
        hostile(answer) as server,
        client_for(server.url, retries=1) as store,
        pytest.raises(BackendUnavailableError),
    ):
        store.get("a")
    assert len(server.requests) == 2  # transient, so retried


@pytest.mark.parametrize("cut", ["in the payload", "in the head"])
def test_a_body_ended_by_closing_the_connection_short_of_its_header_is_a_dropped_connection(cut: str) -> None:
    # An answer without Content-Length or chunked framing (HTTP/1.0 style, as some proxies send) ends where the
    # connection closes, so a body short of what its header says is a connection dropped on the way, like one
    # cut short of its Content-Length: it was reported as ArtifactCorruptedError, "damaged", and not retried.
    envelope = _envelope()
    end = len(envelope) - 100 if cut == "in the payload" else 20

    def answer(line: str) -> Answer:
        return f"HTTP/1.1 200 OK\r\nContent-Type: {ENVELOPE}\r\n{MARKER}Connection: close\r\n", [envelope[:end]]

    with (
        hostile(answer) as server,
        client_for(server.url, retries=1) as store,
        pytest.raises(BackendUnavailableError, match="dropped the connection"),
    ):
        store.get("a")
    assert len(server.requests) == 2  # transient, so retried


# -- the client: JSON answers, problems and bodies nobody reads -------------------------------------------


@pytest.mark.parametrize("operation", ["list", "delete", "clear"])
def test_a_json_answer_over_the_limit_is_refused_without_reading_it_whole(operation: str) -> None:
    def answer(line: str) -> Answer:
        body = _chunked([b'{"items": [', *_zeros(BIG)])
        return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{MARKER}Transfer-Encoding: chunked\r\n", body

    with hostile(answer) as server, client_for(server.url, retries=0, max_json_bytes=64 * 1024) as store:
        calls: dict[str, Callable[[], object]] = {
            "list": lambda: list(store.list()),
            "delete": lambda: store.delete("a"),
            "clear": store.clear,
        }
        with pytest.raises(BackendError) as info:
            calls[operation]()
    assert type(info.value) is BackendError
    assert "ARTIFACT_STORE_HTTP_MAX_JSON_BYTES" in str(info.value)
    assert server.sent < SENT_BOUND


def test_a_problem_body_is_read_only_as_far_as_a_problem_goes() -> None:
    def answer(line: str) -> Answer:
        body = _chunked([b'{"type": "BackendUnavailableError", "detail": "', *_zeros(BIG)])
        return (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
            f"{MARKER}Artifactstore-Error: BackendUnavailableError\r\nTransfer-Encoding: chunked\r\n"
        ), body

    with (
        hostile(answer) as server,
        client_for(server.url, retries=0) as store,
        pytest.raises(BackendUnavailableError) as info,
    ):
        store.get("a")
    # Typed from the status and the Artifactstore-Error header; the body was not read to its end.
    assert "answered 503" in str(info.value)
    assert server.sent < SENT_BOUND


def test_a_save_answered_with_an_endless_body_is_not_read_to_its_end() -> None:
    def answer(line: str) -> Answer:
        return f"HTTP/1.1 200 OK\r\n{MARKER}Transfer-Encoding: chunked\r\n", _chunked(_zeros(BIG))

    with hostile(answer) as server, client_for(server.url, retries=0) as store:
        store.save("a", Message(content=b"payload"))  # a marked success: the save is done
    assert server.sent < SENT_BOUND


# -- the client against a real server ---------------------------------------------------------------------


def test_artifacts_up_to_the_limit_are_read_and_larger_ones_refused(make_client: MakeClient) -> None:
    # The limit counts the content, as the server's does, and the head comes on top: content of exactly the
    # limit is read (it was refused: the client counted head and payload together, so content a server with
    # the same limit had accepted could not be read), one byte more is refused before the payload is read.
    content = secrets.token_bytes(100_000)
    make_client("bounds-edge").save("a", Message(content=content))
    assert make_client("bounds-edge", max_body_bytes=len(content)).get("a").content == content
    with pytest.raises(PayloadTooLargeError, match=f"{len(content)} bytes of content \\(its header says\\)"):
        make_client("bounds-edge", max_body_bytes=len(content) - 1).get("a")


def test_content_over_the_limit_after_decompression_is_refused(make_client: MakeClient) -> None:
    # Hex text compresses to about half: the body is within the limit, the content it expands to is not.
    text = secrets.token_hex(1 << 20)
    make_client("bounds-zstd").save("t", Message(content=text))
    limit = 3 * len(text) // 4
    with pytest.raises(
        PayloadTooLargeError, match=f"{len(text)} bytes of content \\(after decompression, its header says\\)"
    ):
        make_client("bounds-zstd", max_body_bytes=limit).get("t")
    assert make_client("bounds-zstd", max_body_bytes=len(text)).get("t").content == text


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the JSON contents the codec parses (in this process: the client and in-process servers)."""
    sizes: list[int] = []
    real = artifactstore_core.envelope.loads_frozen

    def counting(data: Any) -> Any:
        sizes.append(len(data))
        return real(data)

    monkeypatch.setattr(artifactstore_core.envelope, "loads_frozen", counting)
    return sizes


def test_json_content_over_the_json_limit_is_refused_before_it_is_parsed(
    make_client: MakeClient, parsed: list[int]
) -> None:
    big_json = Message(content=[{"k": i} for i in range(300)])
    make_client("bounds-json").save_many({"j": big_json, "b": Message(content=b"x" * 5000)})
    parsed.clear()  # the in-process server parsed the upload to verify it; only the read counts here
    bounded = make_client("bounds-json", max_json_bytes=1024)
    with pytest.raises(PayloadTooLargeError, match="ARTIFACT_STORE_HTTP_MAX_JSON_BYTES") as info:
        bounded.get("j")
    assert info.value.step_id == "j"
    assert parsed == []  # neither the server (memory-backed: it keeps messages) nor the client parsed it
    assert bounded.get("b").content == b"x" * 5000  # bytes content keeps the body limit
    assert make_client("bounds-json").get("j") == big_json


# -- the server: JSON content read from its store -------------------------------------------------------


@pytest.fixture(scope="module")
def redis_bounds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, ServerThread]]:
    """A redis-backed artifact server that parses at most 4 KiB of JSON, and its redis."""
    redis = RedisServer(tmp_path_factory.mktemp("redis-bounds")).start()
    try:

        def factory(namespace: str) -> ArtifactStore:
            return create_store("redis", namespace=namespace, url=redis.url)

        server = ServerThread(create_app(factory, token=SecretStr(TOKEN), max_json_bytes=4096)).start()
        try:
            yield redis, server
        finally:
            server.stop()
    finally:
        redis.stop()


def test_the_server_does_not_parse_json_content_over_its_limit_to_answer_a_read(
    redis_bounds: tuple[RedisServer, ServerThread], parsed: list[int]
) -> None:
    # Written to the backend without the server (which refuses it on save): the server's GET decoded it, and
    # a byte backend's decode parses JSON, so a few KB of stored zstd could cost it gigabytes of objects.
    redis, server = redis_bounds
    big = Message(content=[{}] * 3000)  # 9001 bytes of JSON text
    small = Message(content=[{}] * 10)
    with create_store("redis", namespace="direct", url=redis.url) as direct:
        direct.save_many({"big": big, "small": small, "bytes": Message(content=b"y" * 9000)})
    with client_for(server.url, "direct", retries=0) as store:
        with pytest.raises(PayloadTooLargeError) as info:
            store.get("big")
        assert parsed == []  # refused from the verified header, before decompressing or parsing
        message = str(info.value)
        assert "9001 bytes of JSON content" in message
        assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in message
        assert info.value.step_id == "big"
        assert store.get("small") == small  # under the limit: served as before
        assert store.get("bytes").content == b"y" * 9000  # bytes content is not a JSON limit's business
        # The save's limit and the read's agree: what the server refuses to serve, it refuses to take.
        with pytest.raises(PayloadTooLargeError, match="ARTIFACT_STORE_SERVER_MAX_JSON_BYTES"):
            store.save("again", big)


def _sent_as_is(url: str, namespace: str, step_id: str, text: bytes) -> httpx.Response:
    """PUT JSON content as the bytes ``text``, in whatever valid form it is written (as a writer other than this
    project's client may send it), in a valid envelope."""
    head, _ = Codec().encode_head(
        codec="json", media_type="application/json", schema=None, metadata={},
        created_at=datetime.now(UTC), size=len(text), digest=blake3.blake3(text).hexdigest(),
    )  # fmt: skip
    return httpx.put(
        f"{url}/v1/namespaces/{namespace}/artifacts/{step_id}",
        content=head + text,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ENVELOPE},
        timeout=30,
    )


def test_json_content_stored_over_the_limit_is_refused_at_save_though_sent_under_it(
    redis_bounds: tuple[RedisServer, ServerThread],
) -> None:
    # The store keeps JSON content in its canonical encoding, which can be longer than what was sent: 1e15 is
    # stored, and served, as 1000000000000000.0. The server measured the text sent (2001 bytes, under its limit
    # of 4096), saved it, and then refused its own GET of it (7601 bytes of JSON content: 413).
    _, server = redis_bounds
    over = ("[" + ",".join(["1e15"] * 400) + "]").encode()
    answer = _sent_as_is(server.url, "sent", "over", over)
    assert answer.status_code == 413, answer.text
    detail = answer.json()["detail"]
    assert "2001 bytes as sent, but 7601 bytes as stored" in detail
    assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in detail
    # Sent longer than it is stored (spaces), near the limit: measured, and saved.
    spaced = ("[" + ", ".join(["1"] * 1000) + "]").encode()
    assert len(spaced) * 5 > 4096
    assert _sent_as_is(server.url, "sent", "spaced", spaced).status_code == 204
    with client_for(server.url, "sent", retries=0) as store:
        assert not store.exists("over")
        assert store.get("spaced").content == Message(content=[1] * 1000).content
        store.clear()


def test_json_content_measured_as_stored_is_encoded_once(
    redis_bounds: tuple[RedisServer, ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over a fifth of the limit the server measures JSON content as stored (its canonical encoding), and its
    # store's encode then built that same encoding again: about a third more CPU for such a save.
    _, server = redis_bounds
    content = [{"k": index} for index in range(120)]
    text = artifactstore_core.message.canonical_json(content)
    assert 4096 / 5 < len(text) <= 4096
    encoded: list[Any] = []
    real = artifactstore_core.message._canonical_text

    def counting(value: Any) -> str:
        if type(value) is tuple and len(value) == len(content):  # the content (no header field is such a tuple)
            encoded.append(value)
        return real(value)

    monkeypatch.setattr(artifactstore_core.message, "_canonical_text", counting)
    # Sent by raw HTTP: nothing in this process but the server encodes the content.
    assert _sent_as_is(server.url, "once", "json", text).status_code == 204
    assert len(encoded) == 1
    monkeypatch.setattr(artifactstore_core.message, "_canonical_text", real)
    with client_for(server.url, "once", retries=0) as store:
        assert store.get("json").content == Message(content=content).content
        store.clear()


# -- the envelope's header is JSON too: bounded by MAX_JSON_BYTES on both sides ------------------------------


def _with_header_of(size: int, *, content: Any = 1) -> Message:
    """A message whose envelope header (as this project's codec writes it, unsigned) is exactly ``size`` bytes."""
    base = Message(content=content, metadata={"note": ""})
    short = len(Codec(compress_threshold=None).encode(base).head) - PREFIX_SIZE - TAG_SIZE
    message = base.model_copy(update={"metadata": {"note": "m" * (size - short)}})
    assert len(Codec(compress_threshold=None).encode(message).head) - PREFIX_SIZE - TAG_SIZE == size
    return message


@pytest.fixture
def parsed_heads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the envelope headers the codec parses (in this process: the client and in-process servers)."""
    sizes: list[int] = []
    real = artifactstore_core.envelope._loads_text

    def counting(text: str) -> Any:
        sizes.append(len(text.encode("utf-8")))
        return real(text)

    monkeypatch.setattr(artifactstore_core.envelope, "_loads_text", counting)
    return sizes


def test_the_server_refuses_a_header_over_its_json_limit_before_parsing_it(
    redis_bounds: tuple[RedisServer, ServerThread], parsed_heads: list[int]
) -> None:
    # The header (metadata, schema) was bounded only by the format's 16 MiB, while JSON content had its own
    # limit: a save with 3 MB of [{},{},...] metadata was parsed (and kept) by a server with a 64 KiB JSON limit.
    _, server = redis_bounds  # MAX_JSON_BYTES: 4096
    with client_for(server.url, "heads", retries=0) as store:
        at = _with_header_of(4096)
        store.save("at", at)  # exactly the limit: saved, and served to a client with the same limits
        with client_for(server.url, "heads", retries=0, max_json_bytes=4096) as same:
            assert same.get("at") == at
        parsed_heads.clear()
        with pytest.raises(PayloadTooLargeError) as info:
            store.save("over", _with_header_of(4097))
        assert max(parsed_heads, default=0) < 4097  # refused from the head's prefix, never parsed
        message = str(info.value)
        assert "head of 4138 bytes (its header, the JSON of its metadata and schema, is 4097)" in message
        assert "at most 4137 bytes (ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in message
        assert info.value.step_id == "over"
        assert not store.exists("over")
        store.clear()


def test_the_server_does_not_parse_a_stored_header_over_its_json_limit_to_answer_a_read(
    redis_bounds: tuple[RedisServer, ServerThread], parsed_heads: list[int]
) -> None:
    # Written to the backend without the server: its GET parsed a header of any size (up to 16 MiB).
    redis, server = redis_bounds
    with create_store("redis", namespace="direct-heads", url=redis.url) as direct:
        direct.save("big", _with_header_of(9000))
    with client_for(server.url, "direct-heads", retries=0) as store:
        parsed_heads.clear()
        with pytest.raises(PayloadTooLargeError) as info:
            store.get("big")
        assert max(parsed_heads, default=0) < 9000
        assert "envelope header of 9000 bytes of JSON" in str(info.value)
        assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in str(info.value)
        assert info.value.step_id == "big"
        store.clear()


def test_the_openapi_document_states_the_header_bound_and_its_413(
    redis_bounds: tuple[RedisServer, ServerThread],
) -> None:
    # The document said nothing of the header's bound: a client generated from it could not know that its
    # metadata counts against MAX_JSON_BYTES, nor that a read may answer 413.
    redis, server = redis_bounds  # MAX_JSON_BYTES: 4096, so a head of at most 4137 bytes
    document = httpx.get(f"{server.url}/v1/openapi.json", timeout=10).json()
    artifact = document["paths"]["/v1/namespaces/{namespace}/artifacts/{step_id}"]
    body = artifact["put"]["requestBody"]["description"]
    assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES (4096 bytes)" in body
    assert "envelope's header (the JSON of its metadata and schema): a head of at most 4137 bytes" in body
    assert f"read from its {PREFIX_SIZE}-byte prefix, and a longer head gets 413" in body
    assert "envelope's header" in artifact["put"]["responses"]["413"]["description"]
    assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in artifact["get"]["responses"]["413"]["description"]
    # What the document says is what the server does, on a save and on a read.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    over = Codec(compress_threshold=None).encode(_with_header_of(4097)).to_bytes()
    with create_store("redis", namespace="documented-heads", url=redis.url) as direct:
        direct.save("big", _with_header_of(4097))
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=10) as raw:
            assert raw.put("/v1/namespaces/documented-heads/artifacts/sent", content=over).status_code == 413
            assert raw.get("/v1/namespaces/documented-heads/artifacts/big").status_code == 413
    finally:
        with create_store("redis", namespace="documented-heads", url=redis.url) as direct:
            direct.clear()


def test_the_client_refuses_a_header_over_its_json_limit_before_parsing_it(
    make_client: MakeClient, parsed_heads: list[int]
) -> None:
    # The client read and parsed a head of up to 16 MiB of header whatever its MAX_JSON_BYTES said.
    writer = make_client("client-heads")
    at, over = _with_header_of(4096, content=b"x"), _with_header_of(4097, content=b"x")
    writer.save_many({"at": at, "over": over})
    reader = make_client("client-heads", max_json_bytes=4096, retries=0)
    assert reader.get("at") == at
    parsed_heads.clear()
    with pytest.raises(PayloadTooLargeError) as info:
        reader.get("over")
    assert max(parsed_heads, default=0) < 4097
    message = str(info.value)
    assert "head alone is 4138 bytes (its header, the JSON of its metadata and schema, is 4097)" in message
    assert "at most 4137 bytes (ARTIFACT_STORE_HTTP_MAX_JSON_BYTES" in message
    assert info.value.step_id == "over"
    assert writer.get("over") == over  # a client with the server's limits reads it
    writer.clear()


def _head_of(header: bytes) -> bytes:
    """An unsigned envelope head around the header text ``header``, written however its writer likes."""
    prefix = struct.pack(">4sBI", b"ARTF", 1, len(header)) + header
    return prefix + blake3.blake3(prefix).digest()


def test_a_header_stored_over_the_limit_is_refused_at_save_though_sent_under_it(
    redis_bounds: tuple[RedisServer, ServerThread],
) -> None:
    # The store writes the header canonically: metadata sent as 1e15 is stored, and served, as
    # 1000000000000000.0. Sent under the limit, such a header would be saved and then refused by every reader
    # with the server's limits (its own GET included).
    _, server = redis_bounds

    def put(step_id: str, metadata: str) -> httpx.Response:
        digest = blake3.blake3(b"1").hexdigest()
        header = (
            '{"codec":"json","compression":null,"created_at":"2026-01-01T00:00:00Z","digest":{"alg":"blake3",'
            f'"hex":"{digest}"}},"mac":"blake3","media_type":"application/json","metadata":{metadata},'
            '"schema":null,"size":1,"stored_size":1}'
        ).encode()
        return httpx.put(
            f"{server.url}/v1/namespaces/sent-heads/artifacts/{step_id}",
            content=_head_of(header) + b"1",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ENVELOPE},
            timeout=30,
        )

    over = put("over", '{"n":[' + ",".join(["1e15"] * 600) + "]}")
    assert over.status_code == 413, over.text
    detail = over.json()["detail"]
    assert "bytes as sent, but" in detail
    assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in detail
    # Sent longer than it is stored (spaces), near the limit: measured, and saved.
    spaced = put("spaced", '{"n": [' + ", ".join(["1"] * 1200) + "]}")
    assert spaced.status_code == 204, spaced.text
    with client_for(server.url, "sent-heads", retries=0, max_json_bytes=4096) as store:
        assert not store.exists("over")
        assert store.get("spaced").metadata == {"n": (1,) * 1200}
        store.clear()
