"""Many threads on one client store: each pooled client serves one thread at a time.

httpcore's shared connection pool can close a connection it has just handed to another thread's request
(encode/httpcore#1110); the store therefore gives every thread a client of its own for the duration of a
request (``_Clients``). These tests pin that arrangement against a real server.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from artifactstore_core import BackendUnavailableError, Message, StoreClosedError
from artifactstore_core.testing_servers import fork_child, in_thread, self_signed_certificate, wait_child, wait_for
from artifactstore_http import HttpStore, client
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, ServerThread, client_for
from artifactstore_memory import MemorySpace, MemoryStore

THREADS = 12
POOL = 3


class InFlight:
    """Counts requests in flight per client and overall, through httpx event hooks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.per_client: Counter[int] = Counter()
        self.total = 0
        self.most_per_client = 0
        self.most_total = 0
        self.clients: set[int] = set()

    def hooks(self, client_id: int) -> dict[str, list[Any]]:
        def started(request: httpx.Request) -> None:
            with self.lock:
                self.clients.add(client_id)
                self.per_client[client_id] += 1
                self.total += 1
                self.most_per_client = max(self.most_per_client, self.per_client[client_id])
                self.most_total = max(self.most_total, self.total)

        def finished(response: httpx.Response) -> None:
            response.read()
            with self.lock:
                self.per_client[client_id] -= 1
                self.total -= 1

        return {"request": [started], "response": [finished]}


def instrumented(store: HttpStore, counts: InFlight) -> None:
    make = store._new_client

    def new_client() -> httpx.Client:
        client = make()
        client.event_hooks = counts.hooks(id(client))
        return client

    store._new_client = new_client  # type: ignore[method-assign]
    store._clients = type(store._clients)(new_client, POOL, 30.0, namespace=store.namespace, backend=store.backend_name)


@pytest.mark.timeout(120)
def test_threads_share_at_most_pool_size_clients_one_request_each(memory_server: ServerThread) -> None:
    counts = InFlight()
    with client_for(memory_server.url, "threads", pool_size=POOL) as store:
        instrumented(store, counts)

        def work(thread: int) -> None:
            for i in range(40):
                step_id = f"t{thread}-{i % 5}"
                store.save(step_id, Message(content=b"x" * (i * 97)), overwrite=True)
                assert store.get(step_id).content == b"x" * (i * 97)
                store.delete(step_id)

        with ThreadPoolExecutor(THREADS) as pool:
            for future in [pool.submit(work, thread) for thread in range(THREADS)]:
                future.result()
    assert counts.most_per_client == 1  # no client ever carried two requests at once
    assert 1 <= len(counts.clients) <= POOL
    assert counts.most_total <= POOL
    assert counts.total == 0


@pytest.mark.timeout(60)
def test_closing_the_store_closes_every_client(memory_server: ServerThread) -> None:
    store = client_for(memory_server.url, "close", pool_size=POOL)
    made: list[httpx.Client] = []
    make = store._new_client

    def new_client() -> httpx.Client:
        made.append(make())
        return made[-1]

    store._clients = type(store._clients)(new_client, POOL, 30.0, namespace=store.namespace, backend=store.backend_name)
    barrier = threading.Barrier(POOL)

    def hold(i: int) -> None:
        # Every thread checks a client out at once, so that POOL clients exist.
        with store._clients.checkout() as client:
            barrier.wait(timeout=10)
            client.get(f"{memory_server.url}/v1/health").raise_for_status()

    with ThreadPoolExecutor(POOL) as pool:
        list(pool.map(hold, range(POOL)))
    assert len(made) == POOL
    assert not any(client.is_closed for client in made)
    store.close()
    assert all(client.is_closed for client in made)


class _GatedStore(MemoryStore):
    """A memory store whose first save answers 503 and whose reads wait for ``release``: a server to
    close a client store against, at a moment the test chooses."""

    saves: list[str]
    entered: threading.Event
    release: threading.Event

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        self.saves.append(step_id)
        if len(self.saves) == 1:
            raise BackendUnavailableError("transient failure")
        super()._save(step_id, message, overwrite, ttl)

    def _get(self, step_id: str) -> Message:
        self.entered.set()
        assert self.release.wait(timeout=60)
        return super()._get(step_id)


@contextlib.contextmanager
def _gated_server(**config: Any) -> Iterator[tuple[ServerThread, type[_GatedStore], MemorySpace]]:
    space = MemorySpace()
    store_class = type(
        "Gated", (_GatedStore,), {"saves": [], "entered": threading.Event(), "release": threading.Event()}
    )
    app = create_app(lambda ns: store_class(namespace=ns, space=space), token=SecretStr(TOKEN))
    server = ServerThread(app, **config)
    server.start()
    try:
        yield server, store_class, space
    finally:
        store_class.release.set()
        server.stop()


@pytest.fixture
def gated() -> Iterator[tuple[ServerThread, type[_GatedStore], MemorySpace]]:
    with _gated_server() as served:
        yield served


def _recording_clients(
    store: HttpStore, on_response: Callable[[httpx.Response], None] | None = None
) -> list[httpx.Client]:
    """Every httpx client the store makes from now on, optionally with a response hook."""
    made: list[httpx.Client] = []
    make = store._new_client

    def new_client() -> httpx.Client:
        made.append(make())
        if on_response is not None:
            made[-1].event_hooks = {"request": [], "response": [on_response]}
        return made[-1]

    store._new_client = new_client  # type: ignore[method-assign]
    store._clients = store._new_clients()
    return made


@pytest.mark.timeout(120)
def test_close_ends_a_retry_backoff_and_no_attempt_follows(
    gated: tuple[ServerThread, type[_GatedStore], MemorySpace], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, store_class, space = gated
    # A backoff of 30 to 60 s: the writer thread ends in time only if close() cuts it short.
    monkeypatch.setattr(client, "_BACKOFF_BASE", 60.0)
    monkeypatch.setattr(client, "_BACKOFF_MAX", 60.0)
    answered = threading.Event()
    store = client_for(server.url, "close-backoff", retries=5)
    made = _recording_clients(store, lambda response: answered.set() if response.status_code == 503 else None)
    thread, outcome = in_thread(lambda: store.save("a", Message(content=b"x")))
    assert answered.wait(timeout=30)  # the first attempt got its 503: the writer backs off
    store.close()
    thread.join(timeout=20)
    assert not thread.is_alive(), "close() did not end the retry backoff"
    assert isinstance(outcome[0], StoreClosedError), outcome
    assert outcome[0].namespace == "close-backoff"
    assert store_class.saves == ["a"]  # no attempt after close()
    assert list(space.namespace("close-backoff")) == []
    # No client was made after close(), and every one made is closed: no connection is left open.
    assert len(made) == 1
    assert all(made_client.is_closed for made_client in made)
    assert store._clients._all == []
    assert store._clients._idle == []


@pytest.mark.timeout(120)
def test_a_request_in_flight_during_close_raises_store_closed_and_leaves_no_client(
    gated: tuple[ServerThread, type[_GatedStore], MemorySpace],
) -> None:
    server, store_class, space = gated
    space.namespace("close-inflight")["a"] = Message(content=b"stored")
    store = client_for(server.url, "close-inflight", retries=2)
    _close_while_waiting(store, store_class, release=True)


@pytest.mark.timeout(60)
def test_a_store_slow_to_build_holds_up_no_other_namespace() -> None:
    # The server's store cache built each namespace's store under its one lock, so a store slow to build (a
    # large filesystem namespace is swept when opened, a cluster client connects, a custom factory may do
    # anything) stalled every request of every other namespace until it was built.
    space = MemorySpace()
    building, release = threading.Event(), threading.Event()
    builds: Counter[str] = Counter()

    def factory(namespace: str) -> MemoryStore:
        builds[namespace] += 1
        if namespace == "slow":
            building.set()
            release.wait(30)
        return MemoryStore(namespace=namespace, space=space)

    server = ServerThread(create_app(factory, token=SecretStr(TOKEN))).start()
    slow = client_for(server.url, "slow")
    fast = client_for(server.url, "fast", read_timeout=5.0, retries=0)
    try:
        first, first_outcome = in_thread(lambda: slow.save("a", Message(content=1)))
        assert building.wait(10)
        second, second_outcome = in_thread(lambda: slow.save("b", Message(content=2)))
        # Served while the store of "slow" is being built (this waited for the build, and timed out, before).
        fast.save("x", Message(content=3))
        assert fast.get("x").content == 3
        release.set()
        for thread in (first, second):
            thread.join(timeout=30)
            assert not thread.is_alive()
        assert first_outcome == [None]
        assert second_outcome == [None]
        assert builds == Counter({"slow": 1, "fast": 1})  # the second request of "slow" used the first build
        assert slow.get("b").content == 2
    finally:
        release.set()
        slow.close()
        fast.close()
        server.stop()


@pytest.mark.timeout(60)
def test_a_client_handed_back_goes_to_the_thread_that_waited_longest() -> None:
    # The clients were lent through a semaphore: a thread that sent request after request took its client
    # straight back while others waited, so with more threads than clients some failed with PoolTimeout
    # after waiting out the timeout (12 threads on 4 clients: 25 failures in 40 s, on a healthy server).
    clients = client._Clients(httpx.Client, 1, 30.0, namespace="default", backend="http")
    order: list[str] = []

    def use(name: str) -> None:
        with clients.checkout():
            order.append(name)

    try:
        with clients.checkout():
            waiter, outcome = in_thread(lambda: use("waiter"))
            wait_for(lambda: clients.waiting == 1, "the other thread to wait for the client")
        use("again at once")  # this thread gives its client back and asks for one again straight away
        waiter.join(timeout=30)
        assert outcome == [None]
        assert order == ["waiter", "again at once"]
    finally:
        clients.close()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_closes_the_store_while_parent_threads_use_it(make_client: Callable[..., HttpStore]) -> None:
    # A child forked while the parent's threads were sending requests, closing the store it inherited
    # without using it (a `with store:` block, a worker's cleanup), closed the parent's clients and waited
    # for locks that those threads held at the fork: about one child in four hung for good.
    store = make_client(pool_size=4)
    store.save("a", Message(content=b"x"))
    stop = threading.Event()
    failures: list[BaseException] = []

    def busy() -> None:
        while not stop.is_set():
            try:
                store.get("a")
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=busy) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            wait_child(fork_child(store.close, deadline=10), "the child's close()")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert store.get("a").content == b"x"  # the parent's store and its clients are untouched


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_close_ends_a_request_waiting_for_its_answer_at_once(tmp_path: Path, tls: bool) -> None:
    # close() closed the socket under a thread waiting in poll() for the server's answer: that poll went on
    # waiting, on a descriptor number the process could hand to another socket meanwhile, until the read
    # timeout (60 s by default) even after the server had answered. Now the socket is shut down, which ends
    # the wait at once, and only the thread using it closes it.
    config: dict[str, Any] = {}
    if tls:
        certificate, key = self_signed_certificate(tmp_path)
        config = {"ssl_certfile": str(certificate), "ssl_keyfile": str(key)}
    with _gated_server(**config) as (server, store_class, space):
        space.namespace("close-waiting")["a"] = Message(content=b"stored")
        url = server.url.replace("http://", "https://") if tls else server.url
        tls_settings = {"ca_file": str(tmp_path / "cert.pem")} if tls else {}
        store = client_for(url, "close-waiting", retries=2, read_timeout=600.0, **tls_settings)
        _close_while_waiting(store, store_class)


def _close_while_waiting(store: HttpStore, store_class: type[_GatedStore], *, release: bool = False) -> None:
    """close() ``store`` while a get() of ``a`` waits for the gated server's answer (with ``release``, the
    server answers right after the close): that get() raises StoreClosedError and no client is left."""
    made = _recording_clients(store)
    thread, outcome = in_thread(lambda: store.get("a"))
    assert store_class.entered.wait(timeout=30)  # the request reached the server's store
    store.close()
    if release:
        store_class.release.set()
    thread.join(timeout=20)
    assert not thread.is_alive(), "close() did not end a request waiting for its answer"
    assert isinstance(outcome[0], StoreClosedError), outcome
    assert "in flight" in str(outcome[0])
    assert len(made) == 1  # not retried on a new client
    assert all(made_client.is_closed for made_client in made)
    assert store._clients._all == []
    assert store._clients._idle == []


@pytest.mark.timeout(120)
def test_requests_waiting_for_a_namespaces_store_leave_the_worker_threads_to_other_namespaces() -> None:
    # Requests of a namespace whose store was being built each waited for the build on a worker thread: 40 of
    # them (anyio's worker threads) held them all, and no request of any other namespace was served until
    # the build ended, though the server promises to serve them meanwhile.
    space = MemorySpace()
    release, builds = threading.Event(), Counter[str]()

    def factory(namespace: str) -> MemoryStore:
        builds[namespace] += 1
        if namespace == "slow":
            assert release.wait(timeout=60)
        return MemoryStore(namespace=namespace, space=space)

    app = create_app(factory, token=SecretStr(TOKEN))
    arrived: list[bytes] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            arrived.append(scope["raw_path"])
        await app(scope, receive, send)

    waiting = 50  # more than anyio's 40 worker threads
    server = ServerThread(counting).start()
    try:
        with client_for(server.url, "slow", retries=0, pool_size=waiting) as slow, ThreadPoolExecutor(waiting) as pool:
            futures = [pool.submit(slow.exists, "a") for _ in range(waiting)]
            wait_for(lambda: len(arrived) >= waiting, "every request to reach the server", timeout=30)
            try:
                with client_for(server.url, "fast", retries=0, read_timeout=10) as fast:
                    assert not fast.exists("a")  # served while the other namespace's store is built
            finally:
                release.set()
            assert [future.result(timeout=30) for future in futures] == [False] * waiting
    finally:
        release.set()
        server.stop()
    assert builds == {"slow": 1, "fast": 1}  # one build each: the waiting requests did not build their own
