"""Proxies from the environment (``ARTIFACT_STORE_HTTP_TRUST_ENV``): a forward proxy on loopback relays to a real
server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from artifactstore_core import BackendUnavailableError, Message
from artifactstore_core.testing_servers import LOOPBACK
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
    with client_for(f"http://{UNRESOLVABLE}:{memory_server.port}", "proxied") as store:
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
    with client_for(memory_server.url, "direct") as store:
        assert not store.exists("a")
    assert len(proxy.requests) == seen
