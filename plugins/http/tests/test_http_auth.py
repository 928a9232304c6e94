"""Authentication: the bearer token matrix, the insecure mode, and a token that never leaks."""

from __future__ import annotations

import http.client
import logging
import traceback
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from artifactstore_core import AccessDeniedError, ArtifactStoreError, ConfigurationError, Message, create_store
from artifactstore_core.settings import load_settings
from artifactstore_http import HttpSettings, HttpStore
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, MakeClient, ServerThread, bound_socket, client_for
from artifactstore_memory import MemorySpace, MemoryStore

ARTIFACT = "/v1/namespaces/auth/artifacts/a%2Fb"
REQUESTS = [
    ("GET", ARTIFACT),
    ("HEAD", ARTIFACT),
    ("PUT", ARTIFACT),
    ("DELETE", ARTIFACT),
    ("GET", "/v1/namespaces/auth/artifacts"),
    ("DELETE", "/v1/namespaces/auth"),
    ("GET", "/v1/no/such/path"),
]
WRONG = "test-token-0123456789abcdeX"  # same length as TOKEN, last character differs
BAD_CREDENTIALS = {
    "no header": {},
    "empty header": {"Authorization": ""},
    "scheme only": {"Authorization": "Bearer"},
    "no scheme": {"Authorization": TOKEN},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "token scheme": {"Authorization": f"Token {TOKEN}"},
    "two spaces": {"Authorization": f"Bearer  {TOKEN}"},
    "trailing text": {"Authorization": f"Bearer {TOKEN} x"},
    "wrong token": {"Authorization": f"Bearer {WRONG}"},
    "prefix of token": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus": {"Authorization": f"Bearer {TOKEN}0"},
    "other header": {"X-Api-Key": TOKEN, "Cookie": f"token={TOKEN}"},
}
CANARY = "CANARY-d41d8cd98f00b204e980"
QUERY_TOKENS = [f"?token={TOKEN}", f"?access_token={TOKEN}", f"?authorization=Bearer%20{TOKEN}"]


def _envelope(message: Message) -> bytes:
    return MemoryStore(namespace="x", space=MemorySpace()).codec.encode(message).to_bytes()


@pytest.fixture(scope="module")
def raw(memory_server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=memory_server.url, timeout=30) as client:
        yield client


def _unauthorized_body(raw: httpx.Client, method: str, path: str, headers: dict[str, str]) -> bytes:
    content = _envelope(Message(content=b"x")) if method == "PUT" else None
    response = raw.request(method, path, headers=headers, content=content)
    assert response.status_code == 401, (method, path, headers, response.text)
    assert response.headers["www-authenticate"] == 'Bearer realm="artifactstore"'
    if method == "HEAD":
        assert response.headers["artifactstore-error"] == "AccessDeniedError"
        return b"HEAD"
    assert response.headers["content-type"] == "application/problem+json"
    return response.content


def test_every_bad_credential_gets_the_same_401(raw: httpx.Client) -> None:
    bodies = set()
    for method, path in REQUESTS:
        for headers in BAD_CREDENTIALS.values():
            bodies.add(_unauthorized_body(raw, method, path, headers))
        for query in QUERY_TOKENS:
            bodies.add(_unauthorized_body(raw, method, path + query, {}))
    bodies.discard(b"HEAD")
    assert len(bodies) == 1, bodies
    doc = httpx.Response(200, content=bodies.pop()).json()
    assert doc["type"] == "AccessDeniedError"
    assert doc["status"] == 401
    assert TOKEN not in str(doc)


def test_two_authorization_headers_are_refused(raw: httpx.Client) -> None:
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")]
    response = raw.get("/v1/namespaces/auth/artifacts", headers=headers)
    assert response.status_code == 401


def test_the_right_token_succeeds(raw: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = _envelope(Message(content=b"authorised"))
    assert raw.put(ARTIFACT, content=body, headers=auth).status_code == 204
    assert raw.head(ARTIFACT, headers=auth).status_code == 200
    got = raw.get(ARTIFACT, headers=auth)
    assert got.status_code == 200
    assert got.content == body
    # The scheme is case-insensitive (RFC 9110); the token is not.
    assert raw.get("/v1/namespaces/auth/artifacts", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert raw.delete("/v1/namespaces/auth", headers=auth).json() == {"removed": 1}


def test_health_and_openapi_need_no_token(raw: httpx.Client) -> None:
    # The body limit is advertised (it is in the open API document too), so clients can stop a stream early.
    assert raw.get("/v1/health").json() == {"status": "ok", "max_body_bytes": 32 * 1024 * 1024}
    assert raw.get("/v1/openapi.json").json()["openapi"].startswith("3.")


@pytest.mark.parametrize("token", [None, SecretStr(WRONG)], ids=["no token", "wrong token"])
def test_client_without_the_right_token_gets_access_denied(make_client: MakeClient, token: SecretStr | None) -> None:
    store = make_client("auth-client", token=token)
    calls = [
        lambda: store.save("a", Message(content=1)),
        lambda: store.get("a"),
        lambda: store.exists("a"),
        lambda: store.delete("a"),
        lambda: list(store.list()),
        lambda: store.clear(),
    ]
    for call in calls:
        with pytest.raises(AccessDeniedError) as info:
            call()
        assert "ARTIFACT_STORE_HTTP_TOKEN" in str(info.value)
        assert info.value.retryable is False
        assert info.value.backend == "http"
        # Without a token the message said the server "refused the bearer token", which sent the user looking
        # for a wrong token rather than a missing one.
        if token is None:
            assert "no bearer token was sent" in str(info.value)
        else:
            assert "refused the bearer token" in str(info.value)


def test_a_server_needs_a_token_or_the_insecure_flag() -> None:
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SERVER_TOKEN"):
        create_app(lambda ns: MemoryStore(namespace=ns), token=None)
    with pytest.raises(ConfigurationError, match="at least 16"):
        create_app(lambda ns: MemoryStore(namespace=ns), token=SecretStr("short"))


def test_insecure_server_serves_without_a_token() -> None:
    space = MemorySpace()
    server = ServerThread(create_app(lambda ns: MemoryStore(namespace=ns, space=space), token=None, insecure=True))
    server.start()
    try:
        with client_for(server.url, "open", token=None) as store:
            store.save("a", Message(content="open"))
            assert store.get("a").content == "open"
    finally:
        server.stop()


def test_the_token_never_appears_in_logs_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    canary = CANARY
    space = MemorySpace()
    server = ServerThread(create_app(lambda ns: MemoryStore(namespace=ns, space=space), token=SecretStr(canary)))
    server.start()
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    texts: list[str] = []
    try:
        settings = HttpSettings(endpoint=server.url, token=SecretStr(canary))
        with HttpStore(settings, namespace="canary") as store:
            texts += [repr(store), str(store), repr(settings), str(settings), repr(settings.model_dump())]
            store.save("a", Message(content=1))
            for call in (lambda: store.get("missing"), lambda: store.save("a", Message(content=2))):
                try:
                    call()
                except ArtifactStoreError as exc:
                    errors.append(exc)
        wrong = HttpSettings(endpoint=server.url, token=SecretStr(canary[::-1]))
        with HttpStore(wrong, namespace="canary") as store:
            try:
                store.get("a")
            except ArtifactStoreError as exc:
                errors.append(exc)
        # A token misplaced in a query string is not logged by the server (sent with http.client, which, unlike
        # the test's httpx, does not log the URL itself).
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", f"/v1/namespaces/canary/artifacts?token={canary}")
        assert connection.getresponse().status == 401
        connection.close()
        with bound_socket() as unused:
            dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
        with HttpStore(HttpSettings(endpoint=dead, token=SecretStr(canary), retries=0)) as store:
            try:
                store.exists("a")
            except ArtifactStoreError as exc:
                errors.append(exc)
    finally:
        server.stop()
    assert [type(e).__name__ for e in errors] == [
        "ArtifactNotFoundError",
        "ArtifactExistsError",
        "AccessDeniedError",
        "BackendUnavailableError",
    ]
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        cause = error.__cause__
        while cause is not None:
            texts += [str(cause), repr(cause), repr(getattr(cause, "request", None))]
            cause = cause.__cause__
    assert any("GET /v1/namespaces/canary/artifacts" in record.getMessage() for record in caplog.records)
    for text in [*texts, caplog.text]:
        assert canary not in text
        assert canary[::-1] not in text


@pytest.mark.parametrize(
    "token",
    [f"{CANARY}\n", f"{CANARY}\r\n", f"tök-{CANARY}", f"{CANARY} x", f"\t{CANARY}", f"{CANARY}\x00"],
    ids=["newline", "crlf", "non-ascii", "space", "tab", "nul"],
)
def test_a_token_that_cannot_travel_in_a_header_is_a_configuration_error_that_never_quotes_it(
    memory_server: ServerThread, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    # httpx refuses such a header with an error quoting it whole, token included: refused before any I/O.
    errors: list[BaseException] = []
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_HTTP_TOKEN") as from_argument:
        load_settings(HttpSettings, endpoint=memory_server.url, token=token)
    errors.append(from_argument.value)
    # Built directly, settings raise pydantic's error as every settings model does (load_settings turns it
    # into the ConfigurationError), with the input hidden.
    for value in (token, SecretStr(token)):
        with pytest.raises(ValidationError) as direct:
            HttpSettings(endpoint=memory_server.url, token=value)
        errors.append(direct.value)
    # Settings built without validation are checked by the store itself.
    unchecked = HttpSettings(endpoint=memory_server.url).model_copy(update={"token": SecretStr(token)})
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_HTTP_TOKEN") as from_store:
        HttpStore(unchecked)
    errors.append(from_store.value)
    if "\x00" not in token:  # an environment variable cannot hold a NUL
        monkeypatch.setenv("ARTIFACT_STORE_HTTP_ENDPOINT", memory_server.url)
        monkeypatch.setenv("ARTIFACT_STORE_HTTP_TOKEN", token)
        with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_HTTP_TOKEN") as from_env:
            create_store("http")
        errors.append(from_env.value)
    assert [type(error) for error in errors].count(ConfigurationError) == len(errors) - 2
    for error in errors:
        assert "printable ASCII" in str(error)
        text = "".join(traceback.format_exception(error)) + repr(error)
        assert CANARY not in text
        assert token.strip() not in text


@pytest.mark.parametrize("token", ["", " "], ids=["empty", "blank"])
def test_an_empty_token_is_a_configuration_error_naming_the_setting(
    memory_server: ServerThread, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    # A deployment template that leaves the variable empty: the client sent "Authorization: Bearer ", which
    # httpx refused at the first request, a BackendError "request to artifact server ... failed
    # (LocalProtocolError)" that named no setting.
    unchecked = HttpSettings(endpoint=memory_server.url).model_copy(update={"token": SecretStr(token)})
    with pytest.raises(ConfigurationError, match=r"ARTIFACT_STORE_HTTP_TOKEN.*set but empty"):
        HttpStore(unchecked)
    monkeypatch.setenv("ARTIFACT_STORE_HTTP_ENDPOINT", memory_server.url)
    monkeypatch.setenv("ARTIFACT_STORE_HTTP_TOKEN", token)
    with pytest.raises(ConfigurationError, match=r"ARTIFACT_STORE_HTTP_TOKEN.*set but empty"):
        create_store("http")
