"""A request still running when the server's graceful shutdown runs out: a typed, marked answer, and the
store closed only after the call that uses it has returned."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from artifactstore_core import BackendTimeoutError, BackendUnavailableError, Codec, ConfigurationError, Message
from artifactstore_core.settings import load_settings
from artifactstore_core.testing_servers import in_thread, wait_for
from artifactstore_http.protocol import (
    ERROR_HEADER,
    MEDIA_TYPE_ENVELOPE,
    MEDIA_TYPE_PROBLEM,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
)
from artifactstore_http.server import _StoreCache, create_app
from artifactstore_http.settings import ServerSettings
from artifactstore_http.testing import TOKEN, HoldingProxy, ServerProcess, ServerThread, client_for
from artifactstore_memory import MemorySpace, MemoryStore


class _SlowStore(MemoryStore):
    """A memory store whose saves wait for ``release``, recording the order of saves and close."""

    events: list[str]
    entered: threading.Event
    release: threading.Event
    closed_event: threading.Event

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        self.events.append("save started")
        self.entered.set()
        assert self.release.wait(timeout=60)
        # A backend whose clients were released under it fails here (a closed pool, a closed file).
        self.events.append("save on a closed store" if self.closed else "save on an open store")
        super()._save(step_id, message, overwrite, ttl)

    def _close(self) -> None:
        self.events.append("close")
        super()._close()
        self.closed_event.set()


def _slow_class() -> type[_SlowStore]:
    attrs = {
        "events": [],
        "entered": threading.Event(),
        "release": threading.Event(),
        "closed_event": threading.Event(),
    }
    return type("Slow", (_SlowStore,), attrs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", ["client", "raw"])
def test_a_request_cut_by_the_graceful_shutdown_gets_a_marked_timeout_and_its_store_outlives_it(via: str) -> None:
    space = MemorySpace()
    slow = _slow_class()
    app = create_app(lambda ns: slow(namespace=ns, space=space), token=SecretStr(TOKEN))
    # uvicorn waits this long for requests to finish after it was told to stop, then cancels them.
    server = ServerThread(app, timeout_graceful_shutdown=0.2).start()
    answers: list[httpx.Response] = []
    try:
        if via == "client":
            store = client_for(server.url, "shutdown", retries=0)
            thread, outcome = in_thread(lambda: store.save("slow", Message(content=b"x")))
        else:
            url = f"{server.url}/v1/namespaces/shutdown/artifacts/slow"
            body = Codec().encode(Message(content=b"x")).to_bytes()

            def put() -> None:
                answers.append(
                    httpx.put(
                        url,
                        content=body,
                        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": MEDIA_TYPE_ENVELOPE},
                        timeout=30,
                        trust_env=False,
                    )
                )

            thread, outcome = in_thread(put)
        assert slow.entered.wait(timeout=30)
        server.server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()
        # uvicorn has run the application's shutdown and stopped; the save is still running on its worker.
        server.thread.join(timeout=30)
        assert not server.thread.is_alive()
        assert slow.events == ["save started"], "the store was closed under a call still using it"
    finally:
        slow.release.set()
        if server.thread.is_alive():
            server.stop()
        server.sock.close()
    # The store is closed once the call that used it has returned, and the call ran on an open store.
    assert slow.closed_event.wait(timeout=30)
    assert slow.events == ["save started", "save on an open store", "close"]
    if via == "client":
        store.close()
        error = outcome[0]
        assert isinstance(error, BackendTimeoutError), repr(error)
        assert error.retryable
        assert "may or may not" in error.message
    else:
        assert outcome == [None]
        (answer,) = answers
        assert answer.status_code == 504
        assert answer.headers[PROTOCOL_HEADER] == PROTOCOL_VERSION
        assert answer.headers[ERROR_HEADER] == "BackendTimeoutError"
        assert answer.headers["content-type"].startswith(MEDIA_TYPE_PROBLEM)
        problem = answer.json()
        assert problem["type"] == "BackendTimeoutError"
        assert problem["retryable"] is True
        assert problem["step_id"] == "slow"


@pytest.mark.timeout(60)
def test_a_save_whose_body_the_graceful_shutdown_cut_off_is_unavailable_and_saved_nothing() -> None:
    space = MemorySpace()
    slow = _slow_class()
    app = create_app(lambda ns: slow(namespace=ns, space=space), token=SecretStr(TOKEN))
    server = ServerThread(app, timeout_graceful_shutdown=0.2).start()
    # Small enough for the rest of the upload to fit in the sockets' buffers: the client has sent it all and
    # waits for the answer, which it reads once the server gives up on the body.
    content = b"y" * (64 * 1024)
    # The proxy passes half the upload, then holds the rest: the server is still reading the body.
    proxy = HoldingProxy(server.port, hold_after=len(content) // 2).start()
    try:
        with client_for(proxy.url, "cut-body", retries=0) as store:
            thread, outcome = in_thread(lambda: store.save("big", Message(content=content)))
            assert proxy.held.wait(timeout=30)
            server.stop()
            thread.join(timeout=30)
            assert not thread.is_alive()
    finally:
        proxy.stop()
        if server.thread.is_alive():
            server.stop()
    error = outcome[0]
    assert isinstance(error, BackendUnavailableError), repr(error)
    assert "nothing was saved" in error.message
    assert slow.events == []
    assert list(space.namespace("cut-body")) == []


#: The signals that ask ``artifactstore-serve`` for a graceful stop: SIGTERM (a service manager's stop) and SIGHUP
#: (the terminal closed, the shell that started it exited).
STOP_SIGNALS = pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])


def _memory_server_process(tmp_path: Path, shutdown_timeout: float | None = None) -> ServerProcess:
    """``artifactstore-serve`` of the memory backend in a subprocess, started (see :class:`ServerProcess`)."""
    env = {"ARTIFACT_STORE_SERVER_TOKEN": TOKEN, "ARTIFACT_STORE_SERVER_BACKEND": "memory"}
    if shutdown_timeout is not None:
        env["ARTIFACT_STORE_SERVER_SHUTDOWN_TIMEOUT"] = str(shutdown_timeout)
    return ServerProcess(env, tmp_path).start()


def _stopped(server: ServerProcess, stop: signal.Signals) -> int:
    """Send ``stop`` to the server process and return its exit status once it has exited."""
    assert server.process is not None
    server.process.send_signal(stop)
    return server.process.wait(timeout=30)


@pytest.mark.timeout(60)
@STOP_SIGNALS
def test_the_graceful_shutdown_lasts_the_configured_seconds(tmp_path: Path, stop: signal.Signals) -> None:
    # It was a hard-coded 30 s, the very time after which Kubernetes kills a pod it sent SIGTERM (by default):
    # the answers the server gives a cut request were never sent. Set to 0.5 s, a held save is answered
    # (and the server exits) long before 30 s.
    server = _memory_server_process(tmp_path, shutdown_timeout=0.5)
    content = b"y" * (64 * 1024)
    proxy = HoldingProxy(server.port, hold_after=len(content) // 2).start()
    try:
        with client_for(proxy.url, "short-grace", retries=0, read_timeout=50) as store:
            thread, outcome = in_thread(lambda: store.save("big", Message(content=content)))
            assert proxy.held.wait(timeout=30)
            # Exited: a stop asked by SIGTERM or SIGHUP ends with status 0 (see test_http_plugin's serve tests).
            assert _stopped(server, stop) == 0, server.log
            thread.join(timeout=15)
            assert not thread.is_alive(), f"the save was not answered within 15 s of {stop.name}"
    finally:
        proxy.stop()
        server.stop()
    error = outcome[0]
    assert isinstance(error, BackendUnavailableError), repr(error)
    assert "nothing was saved" in error.message


@pytest.mark.timeout(60)
@STOP_SIGNALS
def test_a_request_in_flight_when_the_server_is_asked_to_stop_is_answered_before_it_exits(
    tmp_path: Path, stop: signal.Signals
) -> None:
    # SIGHUP ended artifactstore-serve at once (its default action) and left `artifactstore serve` hanging: a save
    # whose body was still coming in was never answered.
    server = _memory_server_process(tmp_path)
    path = "/v1/namespaces/in-flight/artifacts/x"
    body = Codec().encode(Message(content=b"z" * 4096)).to_bytes()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: {MEDIA_TYPE_ENVELOPE}\r\nContent-Length: {len(body)}\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            # uvicorn sends "100 Continue" once the application reads the body: the request is in flight.
            assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")
            assert server.process is not None
            server.process.send_signal(stop)
            wait_for(lambda: "Shutting down" in server.log or not server.running, "the server to begin its shutdown")
            assert server.running, f"ended by {stop.name} at once: {server.process.returncode}"
            sock.sendall(body)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 204 "), answer
        assert server.process.wait(timeout=30) == 0, server.log
    finally:
        server.stop()
    assert server.log.splitlines()[-1] == "stopped: graceful shutdown complete"


@pytest.mark.timeout(60)
def test_a_hang_up_ignored_when_the_server_started_is_ignored_nohup(tmp_path: Path) -> None:
    # nohup starts a program with SIGHUP ignored, to keep it running after the terminal goes: the server keeps
    # that, and only a stop asked otherwise stops it.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the server process
    try:
        server = _memory_server_process(tmp_path)
    finally:
        signal.signal(signal.SIGHUP, previous)
    try:
        assert server.process is not None
        # Still ignored once serving (a handler would show among the caught signals instead).
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{server.pid}/status").read_text().splitlines())
        assert int(status["SigIgn"], 16) & (1 << (signal.SIGHUP - 1))
        assert not int(status["SigCgt"], 16) & (1 << (signal.SIGHUP - 1))
        server.process.send_signal(signal.SIGHUP)
        with client_for(server.url, "nohup", retries=0) as store:
            store.save("still", Message(content=b"served"))
        assert server.running
        assert _stopped(server, signal.SIGTERM) == 0, server.log
    finally:
        server.stop()
    assert "Shutting down" in server.log


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("2.5", 2.5), (None, 30.0)])
def test_the_shutdown_timeout_setting_takes_seconds(value: str | None, expected: float) -> None:
    assert load_settings(ServerSettings, shutdown_timeout=value).shutdown_timeout == expected


def test_a_negative_shutdown_timeout_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SERVER_SHUTDOWN_TIMEOUT"):
        load_settings(ServerSettings, shutdown_timeout=-1)


@pytest.mark.timeout(30)
def test_a_request_cancelled_while_its_store_is_built_leaves_no_store_open() -> None:
    # uvicorn's shutdown cancels a request with a plain Task.cancel(), which ends the await of the build's
    # worker thread while the thread goes on: the store it built stayed counted as in use, so the cache's
    # close() never closed it (its last "user" had gone).
    building, finish, built = threading.Event(), threading.Event(), threading.Event()
    closed: list[str] = []

    class Store(MemoryStore):
        def close(self) -> None:
            closed.append(self.namespace)
            super().close()

    def factory(namespace: str) -> MemoryStore:
        building.set()
        finish.wait(10)
        return Store(namespace=namespace, space=MemorySpace())

    cache = _StoreCache(factory, capacity=4)
    original = cache._release

    def release(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        built.set()

    cache._release = release  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.ensure_future(cache.prepare("a"))
        await asyncio.get_running_loop().run_in_executor(None, building.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    finish.set()
    assert built.wait(10)
    cache.close()
    assert closed == ["a"]


@pytest.mark.timeout(120)
def test_an_answer_the_graceful_shutdown_cuts_off_is_one_warning_line_and_a_truncated_body(tmp_path: Path) -> None:
    # A large artifact of a store that does not stream, sent whole to a client that reads slowly, when the
    # graceful shutdown (SIGTERM) runs out: uvicorn logged "Exception in ASGI application" with a traceback.
    env = {
        "ARTIFACT_STORE_SERVER_TOKEN": TOKEN,
        "ARTIFACT_STORE_SERVER_BACKEND": "memory",
        "ARTIFACT_STORE_SERVER_SHUTDOWN_TIMEOUT": "0.2",
    }
    server = ServerProcess(env, tmp_path).start()
    path = "/v1/namespaces/slow-reader/artifacts/big"
    try:
        with client_for(server.url, "slow-reader") as store:
            store.save("big", Message(content=os.urandom(48 * 1024 * 1024)))
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            data = sock.recv(65536)  # the answer has begun; the client reads no more until the server exits
            assert data.startswith(b"HTTP/1.1 200 ")
            server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            server.process.wait(timeout=30)  # type: ignore[union-attr]
            while chunk := sock.recv(1 << 20):
                data += chunk
    finally:
        server.stop()
    top, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in top.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    assert len(body) < length, "a body cut short must never look complete"
    log = server.log
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log
    (line,) = [line for line in log.splitlines() if "cut short" in line]
    assert line.endswith(
        f"WARNING artifactstore_http.server: GET {path} cut short by the server's shutdown while its answer was "
        "sent; the client sees a truncated body"
    )
