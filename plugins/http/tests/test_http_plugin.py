"""The plugin: registration, settings from the environment, the serve command and the store cache."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, ClassVar

import click
import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from pydantic import SecretStr
from starlette.applications import Starlette

from artifactstore_core import (
    ArtifactInfo,
    ArtifactStore,
    ArtifactStoreError,
    BackendError,
    BackendNotFoundError,
    ConfigurationError,
    Message,
    StoreClosedError,
    create_store,
)
from artifactstore_core.registry import PluginHost
from artifactstore_core.settings import load_settings
from artifactstore_core.testing_servers import free_port, wait_for
from artifactstore_http import HttpSettings, HttpStore, ServerSettings, artifactstore_register_commands
from artifactstore_http import serve as serve_module
from artifactstore_http.protocol import (
    ERROR_DETAIL_HEADER,
    ERROR_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    decode_detail,
)
from artifactstore_http.serve import serve, serve_command
from artifactstore_http.server import _StoreCache, create_app, default_store_factory
from artifactstore_http.testing import TOKEN, ServerProcess, ServerThread, client_for
from artifactstore_memory import MemorySpace, MemoryStore


def test_create_store_from_the_environment(memory_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "http")
    monkeypatch.setenv("ARTIFACT_STORE_HTTP_ENDPOINT", memory_server.url)
    monkeypatch.setenv("ARTIFACT_STORE_HTTP_TOKEN", TOKEN)
    monkeypatch.setenv("ARTIFACT_STORE_NAMESPACE", "from-env")
    with create_store() as store:
        assert isinstance(store, HttpStore)
        assert store.namespace == "from-env"
        store.save("a", Message(content="via env"))
        assert store.get("a").content == "via env"
        assert TOKEN not in repr(store)
        assert store.clear() == 1


def test_the_entry_point_registers_the_backend() -> None:
    spec = PluginHost().load("http")
    assert spec.settings_model is HttpSettings
    assert spec.capabilities.cross_process
    assert spec.capabilities.atomic_create


def test_a_missing_endpoint_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_HTTP_ENDPOINT"):
        create_store("http")


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("ftp://host/x", "http:// or https://"),
        ("https://user:secret@host", "user info"),
        ("http://host/x?a=1", "query"),
        ("not a url at all", "http"),
    ],
)
def test_bad_endpoints_are_configuration_errors(endpoint: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_HTTP_ENDPOINT") as info:
        load_settings(HttpSettings, endpoint=endpoint)
    assert problem in str(info.value)
    assert "secret" not in str(info.value)


def test_settings_mask_the_token() -> None:
    settings = load_settings(HttpSettings, endpoint="https://h", token=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert isinstance(settings.token, SecretStr)
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SERVER_TOKEN") as info:
        load_settings(ServerSettings, token="short")
    assert "short" not in str(info.value).replace("shorter", "")


def test_a_path_prefix_behind_a_proxy_round_trips() -> None:
    space = MemorySpace()
    app = create_app(
        lambda ns: MemoryStore(namespace=ns, space=space), token=SecretStr(TOKEN), path_prefix="/artifactstore/"
    )
    server = ServerThread(app).start()
    try:
        settings = HttpSettings(endpoint=server.url + "/artifactstore", token=SecretStr(TOKEN), retries=0)
        with HttpStore(settings, namespace="a/b") as store:
            assert store._url("artifacts", "c/d").raw_path == b"/artifactstore/v1/namespaces/a%2Fb/artifacts/c%2Fd"
            store.save("c/d", Message(content="prefixed"))
            assert store.get("c/d").content == "prefixed"
            assert [info.step_id for info in store.list()] == ["c/d"]
        assert list(space.namespace("a/b")) == ["c/d"]
        # The API description names the prefix, so a client generated from it calls the prefixed paths.
        document = httpx.get(
            server.url + "/artifactstore/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
        ).json()
        assert document["servers"] == [{"url": "/artifactstore"}]
        assert "/v1/namespaces/{namespace}/artifacts/{step_id}" in document["paths"]
        # Without the prefix there is no API, and that is an error, never "absent".
        unprefixed = HttpSettings(endpoint=server.url, token=SecretStr(TOKEN), retries=0)
        with HttpStore(unprefixed) as store, pytest.raises(BackendError, match="NotFound"):
            store.exists("c/d")
    finally:
        server.stop()


@pytest.mark.parametrize("prefix", ["no-slash", "/my store", "/a#b", "/a\\b", "/a{b}", "/a%2", "/a%zz", "/tab\there"])
def test_a_bad_path_prefix_is_refused(prefix: str) -> None:
    # A prefix with a character that a request path never holds as is (a space, "#", "\\") was accepted, and
    # then no request matched it: the proxy passes the path percent-encoded, so every request got 404.
    with pytest.raises(ConfigurationError, match="PATH_PREFIX"):
        create_app(lambda ns: MemoryStore(namespace=ns), token=SecretStr(TOKEN), path_prefix=prefix)


@pytest.mark.parametrize("prefix", ["/my%20store", "/a~b/c-d_e.f", "/v=1;x,y!$&'()*+:@"])
def test_a_path_prefix_as_it_appears_in_a_request_is_accepted(prefix: str) -> None:
    create_app(lambda ns: MemoryStore(namespace=ns), token=SecretStr(TOKEN), path_prefix=prefix)


def test_the_serve_command_is_added_to_a_click_group() -> None:
    @click.group()
    def cli() -> None:
        """A stand-in for the artifactstore CLI."""

    artifactstore_register_commands(cli)
    assert "serve" in cli.commands
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--insecure" in result.output
    assert "--port" in result.output
    # The limit counts content, as ARTIFACT_STORE_SERVER_MAX_BODY_BYTES does: the help called it the largest
    # request body, which is up to the head allowance larger.
    options = " ".join(result.output.split())
    assert "Largest request body" not in options
    assert "--max-body-bytes INTEGER Largest artifact content (after decompression) accepted" in options
    # No token and no --insecure: the core error propagates, for the artifactstore CLI to report.
    result = CliRunner().invoke(cli, ["serve"])
    assert isinstance(result.exception, ConfigurationError)
    assert "ARTIFACT_STORE_SERVER_TOKEN" in str(result.exception)


def test_the_commands_hook_ignores_other_clis() -> None:
    artifactstore_register_commands(object())  # nothing to add to, nothing raised


def test_the_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "artifactstore_http", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "ARTIFACT_STORE_SERVER_TOKEN" in result.stdout
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    result = subprocess.run(
        [sys.executable, "-m", "artifactstore_http"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert "ConfigurationError" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_to_start_without_a_token() -> None:
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SERVER_TOKEN"):
        serve(port=0)


def test_the_server_refuses_to_serve_the_http_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "http")
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SERVER_BACKEND"):
        default_store_factory()
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SERVER_BACKEND"):
        default_store_factory("http")


def test_a_server_for_a_backend_that_is_not_installed_does_not_start() -> None:
    # A mistyped backend name used to start a server that answered every request 500.
    with pytest.raises(BackendNotFoundError, match="did you mean 'memory'"):
        default_store_factory("memroy")
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    env.update({"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": "memroy"})
    result = subprocess.run(
        [sys.executable, "-m", "artifactstore_http", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert "BackendNotFoundError: no backend named 'memroy' is installed; did you mean 'memory'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stderr


class _CountingStore(ArtifactStore):
    closed_namespaces: ClassVar[list[str]] = []

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        pass

    def _get(self, step_id: str) -> Message:
        raise self._not_found(step_id)

    def _exists(self, step_id: str) -> bool:
        return False

    def _delete(self, step_id: str) -> bool:
        return False

    def _list(self) -> Iterable[ArtifactInfo]:
        return []

    def _clear(self) -> int:
        return 0

    def _close(self) -> None:
        _CountingStore.closed_namespaces.append(self.namespace)


def test_the_store_cache_closes_the_least_recently_used_idle_store() -> None:
    made: list[str] = []

    def factory(namespace: str) -> ArtifactStore:
        made.append(namespace)
        return _CountingStore(namespace=namespace)

    _CountingStore.closed_namespaces = []
    cache = _StoreCache(factory, capacity=2)
    with cache.acquire("a") as busy:
        with cache.acquire("b"):
            pass
        with cache.acquire("c"):
            pass
        # "a" is in use, so "b" (idle, least recently used) was closed instead.
        assert _CountingStore.closed_namespaces == ["b"]
        assert not busy.closed
    with cache.acquire("b"):
        pass
    assert made == ["a", "b", "c", "b"]
    cache.close()
    assert sorted(_CountingStore.closed_namespaces) == ["a", "b", "b", "c"]
    with pytest.raises(StoreClosedError), cache.acquire("a"):
        pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["--log-level", "verbose"], {}, "ARTIFACT_STORE_SERVER_LOG_LEVEL"),
        (["--log-level", "trace"], {}, "ARTIFACT_STORE_SERVER_LOG_LEVEL"),
        ([], {"ARTIFACT_STORE_SERVER_LOG_LEVEL": "loud"}, "ARTIFACT_STORE_SERVER_LOG_LEVEL"),
        (["--fd", "987"], {}, "--fd 987"),
    ],
)
def test_serve_reports_a_bad_log_level_or_descriptor_as_a_configuration_error(
    args: list[str], extra_env: dict[str, str], message: str
) -> None:
    # A log level logging does not know raised ValueError from logging.basicConfig, and an --fd that is no
    # socket an OSError from socket.socket: a traceback, exit 1 from either CLI, and no setting named.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    env.update({"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": "memory", **extra_env})
    for command in (["-m", "artifactstore_http"], ["-m", "artifactstore_core.cli_main", "serve"]):
        result = subprocess.run(
            [sys.executable, *command, "--port", "0", *args], capture_output=True, text=True, timeout=60, env=env
        )
        assert "Traceback" not in result.stderr, result.stderr
        assert "ConfigurationError" in result.stderr
        assert message in result.stderr
        assert "Uvicorn running" not in result.stderr
        # artifactstore-serve prints one line and exits 1; the artifactstore CLI exits 5 for a ConfigurationError.
        assert result.returncode == (1 if command[1] == "artifactstore_http" else 5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNIX], ids=["udp", "unix-datagram"])
def test_serve_on_a_datagram_socket_descriptor_is_a_configuration_error(family: socket.AddressFamily) -> None:
    # A datagram socket (a socket unit's ListenDatagram=) failed uvicorn's startup with a ValueError traceback
    # (a Unix one), or setting TCP_NODELAY on it with an OSError traceback (a UDP one): exit 1, no setting named.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    env.update({"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": "memory"})
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        fd = str(sock.fileno())
        for command in (["-m", "artifactstore_http"], ["-m", "artifactstore_core.cli_main", "serve"]):
            result = subprocess.run(
                [sys.executable, *command, "--fd", fd],
                capture_output=True, text=True, timeout=60, env=env, pass_fds=(sock.fileno(),),
            )  # fmt: skip
            assert "Traceback" not in result.stderr, result.stderr
            assert f"ConfigurationError: --fd {fd} is not a stream socket" in result.stderr, result.stderr
            assert result.returncode == (1 if command[1] == "artifactstore_http" else 5)


def test_the_log_level_setting_is_one_of_the_levels() -> None:
    assert load_settings(ServerSettings, log_level="WARNING").log_level == "warning"
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SERVER_LOG_LEVEL"):
        load_settings(ServerSettings, log_level="verbose")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("backend", "variable", "value"),
    [("redis", "ARTIFACT_STORE_REDIS_URL", "notaurl"), ("memory", "ARTIFACT_STORE_MEMORY_LIMIT", "-5")],
)
def test_a_server_whose_backend_settings_are_invalid_does_not_start(backend: str, variable: str, value: str) -> None:
    # It started, answered /v1/health, and then answered every request with that ConfigurationError, telling
    # each client to fix a variable that only the server's environment can.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    env.update({"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": backend, variable: value})
    result = subprocess.run(
        [sys.executable, "-m", "artifactstore_http", "--port", "0"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert "ConfigurationError" in result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stderr


@pytest.mark.timeout(60)
def test_the_open_api_document_declares_exactly_the_methods_the_server_answers(memory_server: ServerThread) -> None:
    # The server answered HEAD on /v1/health and /v1/openapi.json (200) while the document declared GET only, so
    # a client generated from it, or a probe checked against it, did not know of them.
    methods = ("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS")
    with httpx.Client(base_url=memory_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
        document = raw.get("/v1/openapi.json").json()
        for template, item in document["paths"].items():
            path = template.replace("{namespace}", "ns").replace("{step_id}", "x")
            declared = {method for method in methods if method.lower() in item}
            for method in methods:
                response = raw.request(method, path)
                if method in declared:
                    assert response.status_code != 405, (method, template)
                    assert str(response.status_code) in item[method.lower()]["responses"], (method, template)
                else:
                    assert response.status_code == 405, (method, template)
                    assert set(response.headers["Allow"].split(", ")) == declared, (method, template)


@pytest.mark.timeout(60)
def test_head_is_answered_wherever_get_is_with_its_status_and_headers_and_no_body() -> None:
    # HEAD on a list page and on an artifact's info answered 405, though RFC 9110 asks a server to answer HEAD
    # wherever it answers GET: a monitoring probe of the listing, or a proxy, got "method not allowed".
    space = MemorySpace()
    store = MemoryStore(namespace="ns", space=space)
    for step_id in ("a", "b/c", "d"):
        store.save(step_id, Message(content=step_id.encode() * 100, metadata={"n": step_id}))
    app = create_app(lambda namespace: MemoryStore(namespace=namespace, space=space), token=SecretStr(TOKEN))
    sent: list[bytes] = []  # what the application handed the ASGI server as the bodies of HEAD answers

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def record(message: Any) -> None:
            if scope.get("method") == "HEAD" and message["type"] == "http.response.body":
                sent.append(message.get("body", b""))
            await send(message)

        await app(scope, receive, record)

    paths = {
        "/v1/namespaces/ns/artifacts": 200,
        "/v1/namespaces/ns/artifacts?limit=2": 200,
        "/v1/namespaces/empty/artifacts": 200,
        "/v1/namespaces/ns/artifacts?limit=0": 400,
        "/v1/namespaces/ns/artifacts?cursor=%25%25": 400,
        "/v1/namespaces/ns/artifacts/b%2Fc/info": 200,
        "/v1/namespaces/ns/artifacts/missing/info": 404,
        "/v1/namespaces/ns/artifacts/%00/info": 400,
    }
    server = ServerThread(recording).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
            for path, status in paths.items():
                got = raw.get(path)
                head = raw.head(path)
                assert (got.status_code, head.status_code) == (status, status), (path, head.headers)
                assert head.content == b"", path
                for name in ("content-type", "content-length", ERROR_HEADER):
                    assert head.headers.get(name) == got.headers.get(name), (path, name)
                assert int(head.headers["content-length"]) == len(got.content) > 0, path
                assert head.headers[PROTOCOL_HEADER] == PROTOCOL_VERSION, path
                if status == 200:
                    assert ERROR_HEADER not in head.headers, path
                else:
                    # A problem's detail travels in a header, as on a HEAD of an artifact (no body to hold it).
                    assert decode_detail(head.headers[ERROR_DETAIL_HEADER]) == got.json()["detail"], path
                assert raw.head(path, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    finally:
        server.stop()
    # Not even handed to the ASGI server: a HEAD on a list page costs no page sent.
    assert sent, "no HEAD answer was recorded"
    assert set(sent) == {b""}, [len(body) for body in sent]


@pytest.mark.timeout(60)
def test_head_on_an_artifact_claims_no_length_its_get_would_not_send() -> None:
    # HEAD on an artifact is exists(), answered without reading the artifact; it said "Content-Length: 0" where the
    # GET sends the envelope, which RFC 9110 forbids (a Content-Length to HEAD must be the GET's): a proxy or cache
    # took the artifact for empty. The length is not known without encoding the artifact, so none is sent.
    space = MemorySpace()
    MemoryStore(namespace="ns", space=space).save("a", Message(content=b"x" * 1000, metadata={"k": "v"}))
    app = create_app(lambda namespace: MemoryStore(namespace=namespace, space=space), token=SecretStr(TOKEN))
    server = ServerThread(app).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
            for path, status in (("/v1/namespaces/ns/artifacts/a", 200), ("/v1/namespaces/ns/artifacts/b", 404)):
                got = raw.get(path)
                head = raw.head(path)
                assert (got.status_code, head.status_code) == (status, status), path
                assert len(got.content) > 0, path
                assert head.headers.get("content-length") in (None, str(len(got.content))), (path, head.headers)
                assert head.headers["content-type"] == got.headers["content-type"], path
                assert head.headers.get(ERROR_HEADER) == got.headers.get(ERROR_HEADER), path
            # The connection is still usable after those answers: each was framed as having no body.
            assert raw.head("/v1/namespaces/ns/artifacts/a").status_code == 200
            assert raw.get("/v1/namespaces/ns/artifacts").json()["items"][0]["step_id"] == "a"
        with client_for(server.url, "ns") as store:
            assert store.exists("a")
            assert not store.exists("b")
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_serve_on_a_port_in_use_is_a_configuration_error_naming_the_address() -> None:
    # uvicorn bound the port itself, logged the failure and exited with its own status 3: "artifact not
    # found" in the artifactstore CLI's table, and no setting named.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    env.update({"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": "memory"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (["-m", "artifactstore_http"], ["-m", "artifactstore_core.cli_main", "serve"]):
            result = subprocess.run(
                [sys.executable, *command, "--host", "127.0.0.1", "--port", str(port)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert "Traceback" not in result.stderr, result.stderr
            assert f"ConfigurationError: cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
            assert "ARTIFACT_STORE_SERVER_PORT" in result.stderr
            assert "Uvicorn running" not in result.stderr
            assert result.returncode == (1 if command[1] == "artifactstore_http" else 5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("env", "args", "auth"),
    [
        ({"ARTIFACT_STORE_SERVER_TOKEN": TOKEN}, (), "bearer token required"),
        ({}, ("--insecure",), "WITHOUT AUTHENTICATION"),
    ],
)
def test_the_server_logs_where_it_serves_what_and_whether_it_asks_for_a_token(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], auth: str
) -> None:
    # uvicorn names the address only for a socket it binds itself, and serve binds its own: the log said
    # "Application startup complete", and not the port (--port 0), the prefix or the backend.
    server = ServerProcess({"ARTIFACT_STORE_BACKEND": "memory", **env}, tmp_path, *args).start()
    try:
        log = server.log
    finally:
        server.stop()
    assert f"serving the memory backend at http://127.0.0.1:{server.port} ({auth})" in log, log
    assert TOKEN not in log


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("command", "signal_name", "code", "last_line"),
    [
        (["-m", "artifactstore_core.cli_main", "serve"], "SIGTERM", 0, "stopped: graceful shutdown complete"),
        (["-m", "artifactstore_http"], "SIGTERM", 0, "stopped: graceful shutdown complete"),
        # A hang-up (the terminal closed, the shell that started it exited) is a stop asked for, as SIGTERM is.
        (["-m", "artifactstore_core.cli_main", "serve"], "SIGHUP", 0, "stopped: graceful shutdown complete"),
        (["-m", "artifactstore_http"], "SIGHUP", 0, "stopped: graceful shutdown complete"),
        # Ctrl-C at a terminal keeps the CLI's usual end (docs/cli.md), after the same graceful shutdown.
        (["-m", "artifactstore_core.cli_main", "serve"], "SIGINT", 130, "aborted"),
    ],
)
def test_serve_stopped_by_sigterm_shuts_down_gracefully_says_stopped_and_exits_0(
    tmp_path: Path, command: list[str], signal_name: str, code: int, last_line: str
) -> None:
    # After SIGTERM (how systemd and Kubernetes stop a server) `artifactstore serve` shut down gracefully, then
    # printed the CLI's "aborted" and ended by the signal (143): a stop asked for looked like a failure.
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    env.update({"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": "memory"})
    with (tmp_path / "stderr").open("w+") as err:
        process = subprocess.Popen(
            [sys.executable, *command, "--port", str(port)], stdout=subprocess.PIPE, stderr=err, env=env, text=True
        )
        try:
            wait_for(lambda: process.poll() is not None or _healthy(port), "the server to answer")
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            process.send_signal(getattr(signal, signal_name))
            stdout, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr = (tmp_path / "stderr").read_text()
    assert process.returncode == code, stderr
    assert "Application shutdown complete" in stderr  # the graceful shutdown ran
    assert stderr.splitlines()[-1] == last_line
    assert "aborted" not in stderr.splitlines()[:-1]
    assert "Traceback" not in stderr
    assert stdout == ""


def _app_whose_startup_fails(*_args: Any, **_kwargs: Any) -> Any:
    """An application whose lifespan startup fails (ours has none that can: a stand-in for uvicorn's failure)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the application cannot start")
        yield  # pragma: no cover - an async generator

    return Starlette(lifespan=lifespan)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("uvicorn_ends", ["by sys.exit", "by returning"])
def test_a_failed_startup_is_reported_as_an_error_not_as_a_graceful_stop(
    monkeypatch: pytest.MonkeyPatch, uvicorn_ends: str
) -> None:
    # uvicorn ends a failed startup with sys.exit(3) (the CLI's "artifact not found"); before 0.3x its
    # Server.run() returned, started False, and serve said "stopped: graceful shutdown complete", status 0.
    monkeypatch.setenv("ARTIFACT_STORE_SERVER_TOKEN", TOKEN)
    monkeypatch.setattr(serve_module, "build_app", _app_whose_startup_fails)
    if uvicorn_ends == "by returning":
        monkeypatch.setattr(uvicorn.Server, "run", lambda _self, sockets=None: None)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    result = CliRunner().invoke(serve_command(standalone=True), ["--port", "0", "--backend", "memory"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == (
        "Error: ArtifactStoreError: the artifact server failed to start: uvicorn's startup failed (the log above "
        "says why); nothing was served"
    )
    assert "stopped" not in result.output
    # The CLI reports it as any other failure (1), through its own error handling.
    with pytest.raises(ArtifactStoreError, match="failed to start") as info:
        serve(port=0, backend="memory")
    assert type(info.value) is ArtifactStoreError
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
