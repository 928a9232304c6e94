"""Many threads on one client store: each pooled client serves one thread at a time.

httpcore's shared connection pool can close a connection it has just handed to another thread's request
(encode/httpcore#1110); the store therefore gives every thread a client of its own for the duration of a
request (``_Clients``). These tests pin that arrangement against a real server.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from artifactstore_core import Message
from artifactstore_http import HttpStore
from artifactstore_http.testing import ServerThread, client_for

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
    store._clients = type(store._clients)(new_client, POOL, 30.0)


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

    store._clients = type(store._clients)(new_client, POOL, 30.0)
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
