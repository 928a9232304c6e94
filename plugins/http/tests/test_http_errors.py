"""Errors: every core error crosses the wire as itself; transport failures become typed backend errors."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from artifactstore_core import (
    ArtifactCorruptedError,
    ArtifactInfo,
    ArtifactStore,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    Codec,
    ConfigurationError,
    Message,
    UnsupportedFormatError,
    create_store,
)
from artifactstore_core.errors import ArtifactStoreError
from artifactstore_core.testing_servers import self_signed_certificate
from artifactstore_http import HttpStore
from artifactstore_http.protocol import (
    ERROR_CLASSES,
    ERROR_HEADER,
    ERROR_STATUS,
    MAX_DETAIL_BYTES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    decode_detail,
    encode_detail,
    status_for,
)
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, ServerThread, bound_socket, client_for
from artifactstore_memory import MemorySpace, MemoryStore
from artifactstore_redis.testing import RedisServer


class RaisingStore(ArtifactStore):
    """A store whose every operation raises the core error named by its namespace (or a non-core error)."""

    backend_name = "raising"

    def _fail(self, step_id: str | None = None) -> Any:
        name = self.namespace.split("-")[0]
        if name == "RuntimeError":
            raise RuntimeError("internal detail with a secret: hunter2")
        raise ERROR_CLASSES[name](f"{name} raised for {step_id!r} in {self.namespace!r}", step_id=step_id)

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        self._fail(step_id)

    def _get(self, step_id: str) -> Message:
        return self._fail(step_id)  # type: ignore[no-any-return]

    def _exists(self, step_id: str) -> bool:
        return self._fail(step_id)  # type: ignore[no-any-return]

    def _delete(self, step_id: str) -> bool:
        return self._fail(step_id)  # type: ignore[no-any-return]

    def _list(self) -> Iterable[ArtifactInfo]:
        return self._fail()  # type: ignore[no-any-return]

    def _clear(self) -> int:
        return self._fail()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def raising_server() -> Iterator[ServerThread]:
    def factory(namespace: str) -> ArtifactStore:
        if namespace == "FactoryBug":
            raise RuntimeError("internal detail with a secret: hunter2")
        return RaisingStore(namespace=namespace)

    server = ServerThread(create_app(factory, token=SecretStr(TOKEN))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("name", sorted(ERROR_CLASSES))
def test_every_core_error_round_trips_as_its_own_class(raising_server: ServerThread, name: str) -> None:
    expected = BackendUnavailableError if name == "StoreClosedError" else ERROR_CLASSES[name]
    with client_for(raising_server.url, f"{name}-ns", retries=0) as store:
        calls = {
            "save": lambda: store.save("a/b", Message(content=1)),
            "get": lambda: store.get("a/b"),
            "exists": lambda: store.exists("a/b"),
            "delete": lambda: store.delete("a/b"),
            "list": lambda: list(store.list()),
            "clear": store.clear,
        }
        if name == "ArtifactNotFoundError":
            # "Not found" is what a 404 to HEAD means: exists() answers False, as the store said.
            assert calls.pop("exists")() is False
        for operation, call in calls.items():
            with pytest.raises(ArtifactStoreError) as info:
                call()
            error = info.value
            assert type(error) is expected, (operation, error)
            assert error.retryable is expected.retryable
            assert error.backend == "http"
            assert error.namespace == f"{name}-ns"
            if operation in ("save", "get", "exists", "delete"):
                assert error.step_id == "a/b"
            if name != "StoreClosedError":
                # The server's message travels, to HEAD too (in a header: the answer has no body).
                assert f"{name} raised for" in str(error), (operation, error)


def test_every_core_error_has_a_status() -> None:
    statuses = {name: status_for(cls("x")) for name, cls in ERROR_CLASSES.items()}
    assert statuses["ArtifactNotFoundError"] == 404
    assert statuses["ArtifactExistsError"] == 409
    assert statuses["InvalidStepIdError"] == 400
    assert statuses["PayloadTooLargeError"] == 413
    assert statuses["ArtifactCorruptedError"] == 422
    assert statuses["BackendUnavailableError"] == 503
    assert statuses["BackendTimeoutError"] == 504
    assert all(400 <= status < 600 for status in statuses.values())
    assert set(ERROR_STATUS) <= set(ERROR_CLASSES.values())


def test_a_server_bug_is_a_backend_error_without_its_details(
    raising_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    # A non-core error inside a store call is translated by the store itself (the core's base class)...
    with client_for(raising_server.url, "RuntimeError-ns", retries=0) as store, pytest.raises(BackendError) as info:
        store.get("x")
    assert type(info.value) is BackendError
    assert "RuntimeError" in str(info.value)
    # ...and one outside (here the store factory) is a 500 whose details stay in the server's log.
    with client_for(raising_server.url, "FactoryBug", retries=0) as store, pytest.raises(BackendError) as info:
        store.get("x")
    assert type(info.value) is BackendError
    assert "500" in str(info.value)
    assert "InternalServerError" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "hunter2" in caplog.text


@pytest.mark.timeout(60)
def test_a_failed_exists_says_why_its_backend_failed(tmp_path_factory: pytest.TempPathFactory) -> None:
    # An answer to HEAD has no body: exists() on a server whose backend failed said only "answered 503
    # (BackendUnavailableError)", not what the backend said.
    redis = RedisServer(tmp_path_factory.mktemp("redis-stopped")).start()
    try:

        def factory(namespace: str) -> ArtifactStore:
            return create_store("redis", namespace=namespace, url=redis.url, retry_attempts=0)

        server = ServerThread(create_app(factory, token=SecretStr(TOKEN))).start()
        try:
            with client_for(server.url, retries=0) as store:
                store.save("a", Message(content=1))  # the server's store is built while its redis runs
                redis.stop()
                with pytest.raises(BackendUnavailableError) as info:
                    store.exists("a")
                with pytest.raises(BackendUnavailableError) as read:
                    store.get("a")
        finally:
            server.stop()
    finally:
        redis.stop()
    # The same reason as the GET's problem body gives, which names the redis server's address.
    assert info.value.message == read.value.message
    assert f"{redis.port}" in info.value.message
    assert "answered 503" not in info.value.message


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("plain text: 'quotes' and (brackets)", "plain text: 'quotes' and (brackets)"),
        ("a\r\nSet-Cookie: x=1\x00 100% é → 😀", "a\r\nSet-Cookie: x=1\x00 100% é → 😀"),
        ("  around  ", "around"),
        ("é" * 600, "é" * 510 + "..."),
    ],
)
def test_a_problem_detail_travels_in_a_header_value_it_cannot_break(detail: str, expected: str) -> None:
    encoded = encode_detail(detail)
    # Visible ASCII and the space only: no line break to end the header, no byte a parser would refuse.
    assert all(" " <= char <= "~" for char in encoded)
    assert len(encoded) <= 3 * MAX_DETAIL_BYTES
    assert decode_detail(encoded) == expected


def test_a_server_echoing_the_token_in_a_head_detail_never_gets_it_into_an_error() -> None:
    def app(request: Request) -> Response:
        echoed = encode_detail(f"bad request with {request.headers['authorization']} and token={TOKEN}")
        headers = {"Artifactstore-Error": "BackendUnavailableError", "Artifactstore-Error-Detail": echoed}
        return Response(status_code=503, headers=headers)

    with store_of_a_server_answering(app, methods=("HEAD",)) as store, pytest.raises(ArtifactStoreError) as info:
        store.exists("a")
    text = f"{info.value} {info.value!r} {info.value.args}"
    assert TOKEN not in text
    assert "bad request with Bearer" in text  # the rest of the server's text is kept


#: The protocol marker of an artifact server, for stand-ins that play one (a hostile or broken one).
MARKED = {PROTOCOL_HEADER: PROTOCOL_VERSION}


@contextlib.contextmanager
def store_of_a_server_answering(
    answer: Callable[[Request], Response],
    *,
    path: str = "/v1/namespaces/default/artifacts/{step}",
    methods: Iterable[str] = ("GET",),
    **overrides: Any,
) -> Iterator[HttpStore]:
    """A client store (no retries unless ``overrides`` say otherwise) of a stand-in server whose every
    ``methods`` request to ``path`` (by default: artifact reads in "default") is answered by ``answer``: a
    hostile, confused or broken server, or one that is no artifact server at all."""
    routes = [Route(path, answer, methods=list(methods))]
    server = ServerThread(Starlette(routes=routes)).start()
    try:
        with client_for(server.url, **{"retries": 0, **overrides}) as store:
            yield store
    finally:
        server.stop()


def test_problem_types_outside_the_allow_list_are_never_looked_up() -> None:
    def app(request: Request) -> Response:
        # A hostile or confused server naming arbitrary classes.
        names = {"a": "os.system", "b": "SystemExit", "c": "KeyboardInterrupt", "d": "__import__"}
        body = f'{{"type": "{names[request.path_params["step"]]}", "detail": "x", "status": 404}}'
        return Response(body, status_code=404, media_type="application/problem+json")

    with store_of_a_server_answering(app) as store:
        for step in "abcd":
            with pytest.raises(BackendError) as info:
                store.get(step)
            assert type(info.value) is BackendError


def test_a_server_echoing_the_token_in_its_problem_detail_never_gets_it_into_an_error() -> None:
    def app(request: Request) -> Response:
        # A confused proxy or a hostile server quoting the request's credentials back.
        kind = {"a": "ArtifactNotFoundError", "b": "NoSuchThing"}[request.path_params["step"]]
        echoed = f"bad request with {request.headers['authorization']} and token={TOKEN}"
        body = json.dumps({"type": kind, "detail": echoed, "status": 404})
        return Response(body, status_code=404, media_type="application/problem+json")

    with store_of_a_server_answering(app) as store:
        for step in "ab":
            with pytest.raises(ArtifactStoreError) as info:
                store.get(step)
            text = f"{info.value} {info.value!r} {info.value.args}"
            assert TOKEN not in text
            assert "bad request with Bearer" in text  # the rest of the server's text is kept


@pytest.mark.parametrize("status", [400, 500, 503])
def test_a_server_echoing_the_token_in_other_problem_fields_never_gets_it_into_an_error(status: int) -> None:
    # Only the detail was redacted: an echoed type (quoted in the message when it is not a known error),
    # Artifactstore-Error header, step_id or namespace carried the token into the error.
    def app(request: Request) -> Response:
        auth = request.headers["authorization"]
        doc = {"status": status, "step_id": auth, "namespace": auth, "detail": "echo"}
        if request.path_params["step"] == "a":
            doc["type"] = auth
        headers = {"Artifactstore-Error": auth}
        return Response(json.dumps(doc), status_code=status, media_type="application/problem+json", headers=headers)

    with store_of_a_server_answering(app) as store:
        for step in "ab":
            with pytest.raises(BackendError) as info:
                store.get(step)
            error = info.value
            text = f"{error} {error!r} {error.args} {error.__dict__}"
            assert TOKEN not in text
            assert "(Bearer **********)" in str(error)  # what was quoted, masked


def test_a_server_repeating_a_list_cursor_cannot_make_list_endless() -> None:
    # Each page's next_cursor pointed back to an earlier page: list() yielded the same items forever.
    item = {"step_id": "a", "size": 1, "digest": "blake3:00", "media_type": "x/y", "schema_name": None}
    item["created_at"] = "2026-01-01T00:00:00Z"

    def app(request: Request) -> Response:
        following = {None: "YQ", "YQ": "Yg", "Yg": "YQ"}[request.query_params.get("cursor")]
        body = json.dumps({"items": [item], "next_cursor": following})
        return Response(body, media_type="application/json", headers={PROTOCOL_HEADER: PROTOCOL_VERSION})

    def first_hundred(store: HttpStore) -> list[str]:
        return [info.step_id for info, _ in zip(store.list(), range(100), strict=False)]

    with (
        store_of_a_server_answering(app, path="/v1/namespaces/default/artifacts") as store,
        pytest.raises(BackendError, match="list cursor it had already given"),
    ):
        first_hundred(store)  # without the check: 100 copies of "a", and the listing would go on


def test_unreachable_server_is_backend_unavailable() -> None:
    with bound_socket() as unused:
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"  # bound, never listening: connections are refused
        for retries in (0, 2):
            with client_for(url, retries=retries) as store:
                for call in (lambda: store.get("a"), lambda: store.save("a", Message(content=1)), store.clear):
                    with pytest.raises(BackendUnavailableError) as info:
                        call()
                    assert info.value.retryable is True
                    assert isinstance(info.value.__cause__, httpx.ConnectError)
                    assert url in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("refusal", ["CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER"])
def test_a_refused_tls_handshake_is_not_retried_and_names_the_ca_setting(
    memory_server: ServerThread, tmp_path: Path, refusal: str
) -> None:
    # A certificate that does not verify (a private CA, a self-signed one), or an https:// endpoint on the
    # server's plain-HTTP port, failed as a retryable BackendUnavailableError ("cannot reach ..., or it dropped
    # the connection"), after every retry: callers kept retrying what never succeeds, told nothing of TLS.
    server: ServerThread | None = None
    if refusal == "CERTIFICATE_VERIFY_FAILED":
        certificate, key = self_signed_certificate(tmp_path)
        app = create_app(lambda ns: MemoryStore(namespace=ns), token=SecretStr(TOKEN))
        server = ServerThread(app, ssl_certfile=str(certificate), ssl_keyfile=str(key)).start()
        url = server.url.replace("http://", "https://")
    else:
        url = memory_server.url.replace("http://", "https://")
    try:
        with client_for(url, retries=2) as store:
            attempts: list[str] = []
            make = store._new_client

            def counted_client() -> httpx.Client:
                client = make()
                client.event_hooks = {"request": [lambda request: attempts.append(request.method)], "response": []}
                return client

            store._new_client = counted_client  # type: ignore[method-assign]
            store._clients = store._new_clients()
            calls: list[Callable[[], object]] = [
                lambda: store.get("a"),
                lambda: store.save("a", Message(content=b"x")),
                lambda: store.exists("a"),
                lambda: store.delete("a"),
                store.clear,
            ]
            for call in calls:
                attempts.clear()
                with pytest.raises(BackendError) as info:
                    call()
                assert type(info.value) is BackendError
                assert info.value.retryable is False
                assert len(attempts) == 1, attempts  # not repeated
                assert refusal in str(info.value)
                assert "ARTIFACT_STORE_HTTP_CA_FILE" in str(info.value)
                assert TOKEN not in str(info.value)
                assert isinstance(info.value.__cause__, httpx.ConnectError)
    finally:
        if server is not None:
            server.stop()


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with bound_socket() as silent:
        silent.listen(8)  # the kernel accepts connections; nobody ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with client_for(url, retries=0, read_timeout=0.5) as store, pytest.raises(BackendTimeoutError) as info:
            store.get("a")
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_a_reset_connection_is_backend_unavailable() -> None:
    listener = bound_socket()
    listener.listen(8)
    stop = threading.Event()

    def reset_everything() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if stop.is_set():
                conn.close()
                return
            conn.recv(1024)
            # Linger 0: close sends an RST instead of a FIN.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=reset_everything, daemon=True)
    thread.start()
    try:
        with client_for(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=1) as store:
            with pytest.raises(BackendUnavailableError):
                store.get("a")
            with pytest.raises(BackendUnavailableError):
                store.save("a", Message(content=b"x" * 100_000))
    finally:
        stop.set()
        # Wake the accept() call (closing a socket does not interrupt it in another thread).
        socket.create_connection(listener.getsockname(), timeout=5).close()
        thread.join(timeout=10)
        listener.close()
    assert not thread.is_alive()


class FlakyStore(MemoryStore):
    """Fails the first ``failures`` operations of its namespace with BackendUnavailableError (or the class
    ``errors`` names for the namespace)."""

    failures: ClassVar[dict[str, int]] = {}
    calls: ClassVar[dict[str, int]] = {}
    errors: ClassVar[dict[str, type[ArtifactStoreError]]] = {}

    def _flaky(self) -> None:
        count = FlakyStore.calls.get(self.namespace, 0)
        FlakyStore.calls[self.namespace] = count + 1
        if count < FlakyStore.failures.get(self.namespace, 0):
            raise FlakyStore.errors.get(self.namespace, BackendUnavailableError)("failure")

    def _get(self, step_id: str) -> Message:
        self._flaky()
        return super()._get(step_id)

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        self._flaky()
        super()._save(step_id, message, overwrite, ttl)

    def _delete(self, step_id: str) -> bool:
        self._flaky()
        return super()._delete(step_id)


@pytest.fixture(scope="module")
def flaky_server() -> Iterator[ServerThread]:
    space = MemorySpace()
    app = create_app(lambda ns: FlakyStore(namespace=ns, space=space), token=SecretStr(TOKEN))
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


def test_idempotent_operations_retry_retryable_answers(flaky_server: ServerThread) -> None:
    FlakyStore.failures["retry"] = 2
    with client_for(flaky_server.url, "retry", retries=2) as store:
        store.save("a", Message(content=1))  # fails twice on the server, succeeds on the third attempt
        assert FlakyStore.calls["retry"] == 3
        FlakyStore.calls["retry"], FlakyStore.failures["retry"] = 0, 3
        with pytest.raises(BackendUnavailableError):
            store.get("a")
        assert FlakyStore.calls["retry"] == 3


@pytest.mark.parametrize(
    ("error", "attempts"), [(BackendError, 1), (BackendUnavailableError, 3), (BackendTimeoutError, 3)]
)
def test_answers_are_retried_only_when_the_server_says_they_are_retryable(
    flaky_server: ServerThread, error: type[ArtifactStoreError], attempts: int
) -> None:
    # A plain BackendError (502, e.g. a Redis error reply the backend does not classify) is permanent: repeating it
    # repeats the failure.
    namespace = f"permanent-{error.__name__}"
    FlakyStore.failures[namespace], FlakyStore.errors[namespace] = 100, error
    with client_for(flaky_server.url, namespace, retries=2) as store:
        for call in (lambda: store.get("a"), lambda: store.save("a", Message(content=1))):
            FlakyStore.calls[namespace] = 0
            with pytest.raises(error) as info:
                call()
            assert type(info.value) is error
            assert FlakyStore.calls[namespace] == attempts


@pytest.mark.parametrize(
    ("headers", "body", "attempts"),
    [
        # A proxy's or gateway's answer: not from an artifact server, transient by its status.
        ({}, "bad gateway", 3),
        # An artifact server's problem of a class outside the allow-list: its own retryable flag decides.
        ({"Artifactstore-Error": "WrongTypeError"}, {"type": "WrongTypeError", "status": 502, "retryable": False}, 1),
        ({"Artifactstore-Error": "FlappingError"}, {"type": "FlappingError", "status": 502, "retryable": True}, 3),
    ],
    ids=["proxy", "not retryable", "retryable"],
)
def test_a_502_is_retried_unless_an_artifact_server_says_it_is_permanent(
    headers: dict[str, str], body: object, attempts: int
) -> None:
    calls: list[str] = []

    def answer(request: Request) -> Response:
        calls.append(request.method)
        if isinstance(body, str):
            return Response(body, status_code=502, headers=headers, media_type="text/plain")
        return Response(json.dumps(body), status_code=502, headers=headers, media_type="application/problem+json")

    server = ServerThread(Starlette(routes=[Route("/v1/namespaces/default/artifacts/{step}", answer)])).start()
    try:
        with client_for(server.url, retries=2) as store, pytest.raises(BackendError) as info:
            store.get("a")
    finally:
        server.stop()
    assert calls == ["GET"] * attempts
    # What is raised says what was done: retried answers raise a retryable error, the other does not.
    assert info.value.retryable is (attempts > 1)


def test_delete_is_not_repeated_after_the_server_answered(flaky_server: ServerThread) -> None:
    FlakyStore.failures["once"] = 1
    with client_for(flaky_server.url, "once", retries=3) as store, pytest.raises(BackendUnavailableError):
        store.delete("a")
    assert FlakyStore.calls["once"] == 1


def test_redirects_are_not_followed(memory_server: ServerThread) -> None:
    target = f"{memory_server.url}/v1/namespaces/default/artifacts/a"
    app = Starlette(routes=[Route("/{path:path}", lambda request: RedirectResponse(target, status_code=307))])
    server = ServerThread(app).start()
    try:
        with client_for(server.url, retries=0) as store, pytest.raises(BackendError, match="redirect"):
            store.get("a")
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/not-the-api", "/v1"])
def test_a_wrong_endpoint_path_is_an_error_not_absent(memory_server: ServerThread, path: str) -> None:
    with client_for(memory_server.url + path, retries=0) as store:
        # info() takes a "no such API path" for a server without the info path and asks the listing, which
        # answers the same: the error still names the setting to fix.
        for call in (lambda: store.exists("a"), lambda: store.get("a"), lambda: store.info("a")):
            with pytest.raises(BackendError) as info:
                call()
            assert type(info.value) is BackendError
            # The server's "no such API path" said nothing of what to fix: the endpoint's path.
            assert "set ARTIFACT_STORE_HTTP_ENDPOINT" in str(info.value)
            assert "without /v1" in str(info.value)


ANY_METHOD = ("GET", "HEAD", "PUT", "DELETE", "POST")


def _answer_everything_with_no_content(request: Request) -> Response:
    """A catch-all app, a proxy's default page or a WebDAV server: "done" to whatever is asked."""
    return Response(status_code=204)


def _answer_everything_as_an_artifact_server_would(request: Request) -> Response:
    """The hardest case: every answer is what the artifact server would send, except for the marker."""
    if request.method == "GET" and not request.url.path.endswith("/artifacts"):
        envelope = Codec().encode(Message(content="not from an artifact store")).to_bytes()
        return Response(envelope, media_type="application/vnd.artifactstore.envelope")
    body = {"deleted": True, "removed": 3, "items": [], "next_cursor": None}
    return Response(json.dumps(body), media_type="application/json")


@pytest.mark.parametrize(
    "answer",
    [_answer_everything_with_no_content, _answer_everything_as_an_artifact_server_would],
    ids=["204", "200"],
)
def test_a_success_without_the_protocol_marker_is_never_believed(answer: Callable[[Request], Response]) -> None:
    # A mistyped ARTIFACT_STORE_HTTP_ENDPOINT reaching another web server: before the marker, a save was
    # "done" (and silently lost) and exists() answered True.
    requests: list[str] = []

    def counted(request: Request) -> Response:
        requests.append(f"{request.method} {request.url.path}")
        return answer(request)

    with store_of_a_server_answering(counted, path="/{path:path}", methods=ANY_METHOD, retries=2) as store:
        endpoint = store._display
        calls: dict[str, Callable[[], object]] = {
            "save": lambda: store.save("a", Message(content=1)),
            "exists": lambda: store.exists("a"),
            "get": lambda: store.get("a"),
            "delete": lambda: store.delete("a"),
            "list": lambda: list(store.list()),
            "clear": store.clear,
            "save_many": lambda: store.save_many({"a": Message(content=1), "b": Message(content=2)}),
            "get_many": lambda: store.get_many(["a", "b"]),
        }
        for operation, call in calls.items():
            requests.clear()
            try:
                result = call()
            except BackendError as exc:
                error = exc
            else:
                pytest.fail(f"{operation} reported {result!r} from a server that is no artifact server")
            assert type(error) is BackendError, (operation, error)
            assert error.retryable is False
            assert error.backend == "http"
            assert "did not answer as an artifact server" in str(error), operation
            assert f"no {PROTOCOL_HEADER} header" in str(error)
            assert endpoint in str(error)
            assert "ARTIFACT_STORE_HTTP_ENDPOINT" in str(error)
            assert TOKEN not in f"{error} {error!r} {error.args}"
            # Not retried: whatever answered will answer the same way again. (A batch may stop before its
            # second request is sent: it fails as soon as its first request has.)
            assert requests, operation
            assert len(set(requests)) == len(requests), (operation, requests)
            if not operation.endswith("_many"):
                assert len(requests) == 1, (operation, requests)
            if operation in ("save", "exists", "get", "delete"):
                assert error.step_id == "a"


def test_every_answer_of_the_artifact_server_carries_the_protocol_marker(memory_server: ServerThread) -> None:
    envelope = Codec().encode(Message(content=b"marked")).to_bytes()
    other = Codec().encode(Message(content=b"other")).to_bytes()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    artifact = "/v1/namespaces/marker/artifacts/a%2Fb"
    requests: list[tuple[str, str, dict[str, str], bytes | None, int]] = [
        ("PUT", artifact, auth, envelope, 204),
        ("HEAD", artifact, auth, None, 200),
        ("GET", artifact, auth, None, 200),
        ("GET", "/v1/namespaces/marker/artifacts", auth, None, 200),
        ("PUT", artifact, auth, other, 409),
        ("PUT", "/v1/namespaces/marker/artifacts/c", auth, b"not an envelope", 422),
        ("DELETE", artifact, auth, None, 200),
        ("HEAD", artifact, auth, None, 404),
        ("GET", artifact, auth, None, 404),
        ("DELETE", "/v1/namespaces/marker", auth, None, 200),
        ("HEAD", artifact, {}, None, 401),
        ("PUT", artifact, {}, envelope, 401),
        ("GET", "/v1/no/such/path", auth, None, 404),
        ("POST", artifact, auth, None, 405),
        ("GET", "/v1/health", {}, None, 200),
        ("HEAD", "/v1/openapi.json", {}, None, 200),
        ("GET", "/v1/namespaces/marker/artifacts", {**auth, **{f"X-H{i}": "v" for i in range(120)}}, None, 431),
    ]
    with httpx.Client(base_url=memory_server.url, timeout=30) as raw:
        for method, path, headers, body, status in requests:
            response = raw.request(method, path, headers=headers, content=body)
            assert response.status_code == status, (method, path, response.text)
            assert response.headers.get(PROTOCOL_HEADER) == PROTOCOL_VERSION, (method, path, status)
            assert response.headers.get_list(PROTOCOL_HEADER) == [PROTOCOL_VERSION]
        document = raw.get("/v1/openapi.json").json()
    # The API document declares it on every response of every operation.
    for item in document["paths"].values():
        for operation in (value for key, value in item.items() if key != "parameters"):
            for response in operation["responses"].values():
                assert PROTOCOL_HEADER in response["headers"], operation["operationId"]


def test_an_absent_answer_without_the_protocol_marker_is_never_believed() -> None:
    # Even an answer that names the artifact server's "not found" type is "absent" only with the marker.
    def answer(request: Request) -> Response:
        marked = MARKED if request.path_params["step"] == "marked" else {}
        return Response(status_code=404, headers={"Artifactstore-Error": "ArtifactNotFoundError", **marked})

    with store_of_a_server_answering(answer, methods=("HEAD",)) as store:
        assert store.exists("marked") is False
        with pytest.raises(BackendError, match="did not answer as an artifact server") as info:
            store.exists("bare")
        assert type(info.value) is BackendError


def test_a_marker_of_another_protocol_version_is_not_believed() -> None:
    def answer(request: Request) -> Response:
        return Response(status_code=204, headers={PROTOCOL_HEADER: f"2 {TOKEN}"})

    with store_of_a_server_answering(answer, methods=("PUT",)) as store, pytest.raises(BackendError) as info:
        store.save("a", Message(content=1))
    assert type(info.value) is BackendError
    assert f"another {PROTOCOL_HEADER} version" in str(info.value)
    assert TOKEN not in str(info.value)


def test_the_client_verifies_what_it_reads() -> None:
    good = Codec().encode(Message(content=b"payload")).to_bytes()
    bodies = {"flipped": good[:-1] + bytes([good[-1] ^ 1]), "truncated": good[:-3], "junk": b"not an envelope"}

    def app(request: Request) -> Response:
        body = bodies[request.path_params["step"]]
        return Response(body, headers=MARKED, media_type="application/vnd.artifactstore.envelope")

    with store_of_a_server_answering(app) as store:
        for step, error in [
            ("flipped", ArtifactCorruptedError),
            ("truncated", ArtifactCorruptedError),
            ("junk", UnsupportedFormatError),
        ]:
            with pytest.raises(error):
                store.get(step)


def test_the_server_verifies_what_it_receives(memory_server: ServerThread, memory_space: MemorySpace) -> None:
    good = Codec().encode(Message(content=b"payload")).to_bytes()
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.artifactstore.envelope"}
    url = f"{memory_server.url}/v1/namespaces/verify/artifacts/a"
    for body, kind in [
        (good[:-1] + bytes([good[-1] ^ 1]), "ArtifactCorruptedError"),
        (good[:20], "ArtifactCorruptedError"),
        (b"JUNKJUNKJUNK", "UnsupportedFormatError"),
        (b"", "ArtifactCorruptedError"),
    ]:
        response = httpx.put(url, content=body, headers=auth, timeout=10)
        assert response.status_code == 422, response.text
        assert response.json()["type"] == kind
    assert memory_space.namespace("verify") == {}


@contextlib.contextmanager
def _signed_server(key: bytes | None) -> Iterator[ServerThread]:
    space = MemorySpace()
    codec = Codec(signing_key=key)
    app = create_app(lambda ns: MemoryStore(namespace=ns, space=space, codec=codec), token=SecretStr(TOKEN))
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


def _signed_client(server: ServerThread, key: bytes | None) -> Any:
    from artifactstore_http import HttpSettings, HttpStore

    settings = HttpSettings(endpoint=server.url, token=SecretStr(TOKEN), retries=0)
    return HttpStore(settings, namespace="signed", codec=Codec(signing_key=key))


def test_signatures_are_bound_to_the_namespace_and_id_of_the_url() -> None:
    key = b"server and client key"
    signer = Codec(signing_key=key)
    body = signer.encode(Message(content="for a"), place=("signed", "a")).to_bytes()
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.artifactstore.envelope"}
    # The server's store keeps another namespace than the URL's: signatures follow the URL on both sides.
    space = MemorySpace()
    app = create_app(
        lambda ns: MemoryStore(namespace=f"kept-{ns}", space=space, codec=Codec(signing_key=key)),
        token=SecretStr(TOKEN),
    )
    server = ServerThread(app).start()
    try:
        with _signed_client(server, key) as store:
            store.save("a", Message(content="bound"))
            assert store.get("a").content == "bound"
        for where in ("signed/artifacts/b", "other/artifacts/a"):
            response = httpx.put(f"{server.url}/v1/namespaces/{where}", content=body, headers=auth, timeout=10)
            assert response.status_code == 422, response.text
            assert response.json()["type"] == "ArtifactCorruptedError"
            assert "different namespace or step id" in response.json()["detail"]
        assert set(space.namespace("kept-signed")) == {"a"}
        assert space.namespace("kept-other") == {}
    finally:
        server.stop()

    # A server (or anything between) answering "b" with the envelope signed for "a" is caught by the client.
    def answer(request: Request) -> Response:
        return Response(body, headers=MARKED, media_type="application/vnd.artifactstore.envelope")

    fake = ServerThread(Starlette(routes=[Route("/v1/namespaces/signed/artifacts/{step}", answer)])).start()
    try:
        with _signed_client(fake, key) as store:
            assert store.get("a").content == "for a"
            with pytest.raises(ArtifactCorruptedError, match="different namespace or step id"):
                store.get("b")
    finally:
        fake.stop()


def test_signing_keys_are_checked_on_both_sides() -> None:
    with _signed_server(b"server and client key") as server:
        with _signed_client(server, b"server and client key") as store:
            store.save("a", Message(content="signed"))
            assert store.get("a").content == "signed"
        with _signed_client(server, b"another key") as store:
            with pytest.raises(ArtifactCorruptedError):
                store.save("b", Message(content="forged"))
            with pytest.raises(ArtifactCorruptedError):
                store.get("a")
        with _signed_client(server, None) as store, pytest.raises(ArtifactCorruptedError, match="not signed"):
            store.save("c", Message(content="unsigned"))
    with (
        _signed_server(None) as server,
        _signed_client(server, b"client key") as store,
        pytest.raises(ConfigurationError, match="signed"),
    ):
        store.save("d", Message(content="signed for nobody"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("query", ["?overwrite", "?overwrite=", "?overwrite=yes"])
def test_an_overwrite_parameter_without_true_or_false_is_refused_naming_it(
    memory_server: ServerThread, query: str
) -> None:
    # "?overwrite" (as a curl user writes it) and "?overwrite=" were dropped by the query parser and read as
    # false: a save meant to replace got 409, or was write-once without a word.
    with client_for(memory_server.url, "query-overwrite") as client:
        client.save("x", Message(content={"v": 1}), overwrite=True)
        client.save("y", Message(content={"v": 2}), overwrite=True)
    with httpx.Client(base_url=memory_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
        body = raw.get("/v1/namespaces/query-overwrite/artifacts/y").content
        answer = raw.put(f"/v1/namespaces/query-overwrite/artifacts/x{query}", content=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers[ERROR_HEADER] == "InvalidRequest"
    assert answer.json()["detail"] == "query parameter 'overwrite' must be overwrite=true or overwrite=false"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["+2", "1_0", "%202", "2%20", "%D9%A2", "", "abc", "0", "10001", "9" * 5000])
def test_a_limit_that_is_not_plain_decimal_digits_in_range_is_refused_naming_it(
    memory_server: ServerThread, value: str
) -> None:
    # int() took "+2", " 2", "1_0" and other scripts' digits, and a blank limit was dropped (the default
    # page): the OpenAPI document promises an integer, which another implementation would hold to.
    with httpx.Client(base_url=memory_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
        answer = raw.get(f"/v1/namespaces/query-limit/artifacts?limit={value}")
        plain = raw.get("/v1/namespaces/query-limit/artifacts?limit=02")
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == "query parameter 'limit' must be an integer from 1 to 10000"
    assert plain.status_code == 200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("query", ["?cursor=", "?cursor", "?cursor=%25%25"])
def test_a_blank_or_malformed_cursor_is_refused_naming_it(memory_server: ServerThread, query: str) -> None:
    # A blank cursor was dropped and the first page served again: a client looping on a lost cursor restarted.
    with httpx.Client(base_url=memory_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
        answer = raw.get(f"/v1/namespaces/query-cursor/artifacts{query}")
    assert answer.status_code == 400, answer.text
    assert "query parameter 'cursor' is malformed" in answer.json()["detail"]


@pytest.mark.timeout(60)
def test_a_misspelt_overwrite_is_refused_naming_it_and_nothing_is_saved(memory_server: ServerThread) -> None:
    # An unknown parameter was ignored: "?overwite=true" saved write-once, and the answer was a 409 that said
    # to pass overwrite=True, which the user believed they had.
    with client_for(memory_server.url, "query-typo") as client:
        client.save("x", Message(content={"v": 1}))
        client.save("y", Message(content={"v": 2}))
    with httpx.Client(base_url=memory_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
        body = raw.get("/v1/namespaces/query-typo/artifacts/y").content
        answer = raw.put("/v1/namespaces/query-typo/artifacts/x?overwite=true", content=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers[ERROR_HEADER] == "InvalidRequest"
    assert answer.headers[PROTOCOL_HEADER] == PROTOCOL_VERSION
    assert answer.json()["detail"] == (
        "unknown query parameter 'overwite': PUT on this path takes only 'overwrite'; did you mean 'overwrite'?"
    )
    with client_for(memory_server.url, "query-typo") as client:
        assert client.get("x").content == {"v": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("method", "path", "accepted"),
    [
        ("GET", "/v1/namespaces/query-unknown/artifacts/x", "takes no query parameters"),
        ("DELETE", "/v1/namespaces/query-unknown/artifacts/x", "takes no query parameters"),
        ("GET", "/v1/namespaces/query-unknown/artifacts/x/info", "takes no query parameters"),
        ("GET", "/v1/namespaces/query-unknown/artifacts", "takes only 'limit', 'cursor'"),
        ("DELETE", "/v1/namespaces/query-unknown", "takes no query parameters"),
    ],
)
def test_every_route_refuses_a_query_parameter_it_does_not_take_and_does_nothing(
    memory_server: ServerThread, method: str, path: str, accepted: str
) -> None:
    with client_for(memory_server.url, "query-unknown") as client:
        client.save("x", Message(content=b"kept"))
    with httpx.Client(base_url=memory_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
        answer = raw.request(method, f"{path}?ttl=60&b=")
        head = raw.head(f"{path}?ttl=60") if method == "GET" else None
    assert answer.status_code == 400, answer.text
    assert answer.headers[ERROR_HEADER] == "InvalidRequest"
    assert answer.json()["detail"] == f"unknown query parameter 'b' (and 1 more): {method} on this path {accepted}"
    if head is not None:  # the detail of a HEAD's answer travels in a header
        assert head.status_code == 400
        assert head.headers[ERROR_HEADER] == "InvalidRequest"
    # Refused before the store was used: the artifact (and its namespace) are as they were.
    with client_for(memory_server.url, "query-unknown") as client:
        assert client.get("x").content == b"kept"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/v1/health", "/v1/openapi.json"])
def test_the_health_and_api_document_paths_take_any_query(memory_server: ServerThread, path: str) -> None:
    # A monitor's cache-busting parameter must not make a running server look down.
    answer = httpx.get(f"{memory_server.url}{path}?_=1700000000&ttl=60", timeout=10)
    assert answer.status_code == 200, answer.text


@pytest.mark.timeout(60)
def test_a_misspelt_list_parameter_is_refused_with_the_parameter_it_resembles(memory_server: ServerThread) -> None:
    with httpx.Client(base_url=memory_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
        answer = raw.get("/v1/namespaces/query-list/artifacts?limt=5")
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == (
        "unknown query parameter 'limt': GET on this path takes only 'limit', 'cursor'; did you mean 'limit'?"
    )


@pytest.mark.timeout(60)
def test_an_unexpected_error_is_a_500_and_its_logged_traceback_keeps_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A custom store factory that fails with its own exception is the server's "unexpected error": logged with
    # its traceback, whose text quoted the password of a URL and the server's own token as they were.
    password = "hunter2-url-password"

    def factory(namespace: str) -> ArtifactStore:
        try:
            raise OSError(f"cannot reach http://user:{password}@127.0.0.1:1/ (token {TOKEN})")
        except OSError as exc:
            raise RuntimeError("the store could not be built") from exc

    server = ServerThread(create_app(factory, token=SecretStr(TOKEN))).start()
    try:
        with caplog.at_level("ERROR", logger="artifactstore_http"):
            answer = httpx.get(
                f"{server.url}/v1/namespaces/ns/artifacts/a", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
    finally:
        server.stop()
    assert answer.status_code == 500
    assert "the server failed unexpectedly" in answer.text
    (record,) = [r for r in caplog.records if "unexpected error serving" in r.getMessage()]
    assert record.exc_info is not None
    logged = caplog.text
    assert "RuntimeError: the store could not be built" in logged  # what failed, and where, stays readable
    assert "127.0.0.1:1" in logged
    assert password not in logged
    assert TOKEN not in logged
