"""Proxies from the environment (``ARTIFACT_STORE_HTTP_TRUST_ENV``): a forward proxy on loopback relays to a real
server."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactstore_core import BackendUnavailableError, ConfigurationError, Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_http import HttpSettings, HttpStore
from artifactstore_http.testing import ServerThread, bound_socket, client_for

# A host name that never resolves (RFC 6761): only a proxy can reach the server under it.
UNRESOLVABLE = "artifacts.invalid"


class ForwardProxy:
    """A plain-HTTP forward proxy on loopback: every request, whatever host its absolute URL names, goes to
    ``upstream_port``; one request per connection. ``requests`` records the request lines received."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[str] = []
        self.listener = bound_socket()
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ForwardProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() ends the accept() waiting in the proxy's thread; close() alone would leave it waiting.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the proxy did not stop"
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with client:
                self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.requests.append(request_line)
        method, target, version = request_line.split(" ")
        # The absolute form a client sends a proxy, made the origin form the server expects.
        path = "/" + target.split("://", 1)[1].split("/", 1)[1]
        length = 0
        headers = []
        for line in header_lines:
            name = line.split(":", 1)[0].lower()
            if name == "content-length":
                length = int(line.split(":", 1)[1])
            if name not in ("connection", "proxy-connection"):
                headers.append(line)
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                return
            body += chunk
        upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=30)
        with upstream:
            upstream.sendall(
                "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""]).encode("latin-1")
                + body
            )
            while chunk := upstream.recv(65536):
                client.sendall(chunk)


@pytest.fixture
def proxy(memory_server: ServerThread) -> Iterator[ForwardProxy]:
    relay = ForwardProxy(memory_server.port).start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.mark.timeout(60)
def test_the_client_goes_through_the_proxy_the_environment_names(
    proxy: ForwardProxy, memory_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client gave httpx a transport of its own, and httpx then ignores the proxy variables: a worker that
    # could reach the server only through its proxy could not reach it at all, though TRUST_ENV says it would.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with client_for(f"http://{UNRESOLVABLE}:{memory_server.port}", "proxied", trust_env=True) as store:
        store.save("a/b", Message(content=b"through the proxy"))
        assert store.get("a/b").content == b"through the proxy"
        assert store.exists("a/b")
        assert [info.step_id for info in store.list()] == ["a/b"]
        assert store.clear() == 1
    assert f"PUT http://{UNRESOLVABLE}:{memory_server.port}/v1/namespaces/proxied/artifacts/a%2Fb HTTP/1.1" in (
        proxy.requests
    )
    # Without TRUST_ENV the proxy is not used (the unresolvable host is then unreachable), and a host NO_PROXY
    # names is reached directly.
    with (
        client_for(f"http://{UNRESOLVABLE}:{memory_server.port}", trust_env=False, retries=0) as store,
        pytest.raises(BackendUnavailableError),
    ):
        store.exists("a")
    monkeypatch.setenv("NO_PROXY", LOOPBACK)
    seen = len(proxy.requests)
    with client_for(memory_server.url, "direct", trust_env=True) as store:
        assert not store.exists("a")
    assert len(proxy.requests) == seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variable", ["ALL_PROXY", "HTTPS_PROXY", "http_proxy"])
@pytest.mark.parametrize("proxy_url", ["socks5://user:hunter2@127.0.0.1:1080", "ftp://user:hunter2@proxy:21"])
def test_an_unusable_proxy_of_the_environment_is_a_configuration_error(
    memory_server: ServerThread, monkeypatch: pytest.MonkeyPatch, variable: str, proxy_url: str
) -> None:
    # httpx refuses a socks5:// proxy without the socksio package (not a dependency: ImportError) and a scheme
    # it does not know (ValueError) when it builds a client: every operation failed with a BackendError
    # "... failed in backend 'http': ImportError", naming neither the variable nor the fix.
    assert importlib.util.find_spec("socksio") is None, "socksio is installed: socks5:// proxies work then"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv(variable, proxy_url)
    with client_for(memory_server.url, "unusable-proxy", retries=2, trust_env=True) as store:
        for call in (lambda: store.exists("a"), lambda: store.save("a", Message(content=b"x"))):
            with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_HTTP_TRUST_ENV=false") as info:
                call()
            assert "proxy" in str(info.value)
            assert "hunter2" not in str(info.value)
    # Ignoring the environment's proxies, as the message says, works.
    with client_for(memory_server.url, "unusable-proxy", trust_env=False) as store:
        assert not store.exists("a")


@pytest.mark.timeout(60)
def test_unusable_ca_certificates_of_the_environment_are_a_configuration_error_at_creation(
    memory_server: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each of the store's clients loaded SSL_CERT_FILE itself, at its first request: a missing file failed
    # every operation with a BackendError "... failed in backend 'http': FileNotFoundError".
    for content in (None, "not a certificate"):
        path = tmp_path / "ca.pem"
        if content is not None:
            path.write_text(content)
        monkeypatch.setenv("SSL_CERT_FILE", str(path))
        with pytest.raises(ConfigurationError, match="SSL_CERT_FILE") as info:
            HttpStore(HttpSettings(endpoint=memory_server.url))
        assert "ARTIFACT_STORE_HTTP_TRUST_ENV=false" in str(info.value)
        # Without trust_env the variable is not read.
        with client_for(memory_server.url, "ca-env", trust_env=False) as store:
            assert not store.exists("a")


def test_the_clients_of_a_store_share_one_tls_context(memory_server: ServerThread) -> None:
    # Given verify=True, httpx loaded its CA bundle anew for each client the store made (tens of milliseconds
    # of CPU each, for an http:// endpoint too): a fresh store's get_many of 10 artifacts took ten times as long.
    with client_for(memory_server.url, "tls-context") as store:
        first, second = store._new_client(), store._new_client()
        try:
            contexts = [client._transport._pool._ssl_context for client in (first, second)]  # type: ignore[attr-defined]
            assert contexts[0] is contexts[1] is store._verify
        finally:
            first.close()
            second.close()
