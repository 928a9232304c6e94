"""Fixtures of the redis backend's tests: a standalone server and a three-primary cluster for the session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pytest
import redis

import artifactstore_redis.store as store_module
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.scripts import LuaScript
from artifactstore_redis.testing import RedisClusterNodes, RedisServer


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No artifactstore variables from the caller's environment, and no config file in the working dir."""
    for name in list(os.environ):
        if name.startswith("ARTIFACT_STORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A standalone redis-server on a free loopback port, shared by the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis-standalone"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A three-primary Redis Cluster on loopback ports, shared by the session."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def store_factory() -> Iterator[Callable[..., RedisStore]]:
    """Build stores from settings overrides; every store it made is cleared and closed after the test."""
    made: list[RedisStore] = []

    def build(url: str, namespace: str = "default", **overrides: object) -> RedisStore:
        store = RedisStore(RedisSettings(url=url, **overrides), namespace=namespace)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield build
    for store in made:
        if not store.closed:
            try:
                store.clear()
            finally:
                store.close()


@pytest.fixture
def lose() -> Callable[..., list[str]]:
    """Lose the first attempt of a store's calls of one script, as a dropped connection would.

    ``lose(store, script, pattern)``: the n-th call of ``script`` (its retries excluded: a retry sends the
    very same command) has its first attempt treated as ``pattern[n % len(pattern)]`` says: ``"reply"``
    runs it on the server and then loses the reply, ``"request"`` loses it before it is sent, ``"none"``
    leaves it alone. Both losses raise ``redis.ConnectionError`` (which the store retries). Returns the log
    of what was done, one entry per call, so a test can check that its faults happened.
    """

    def install(store: RedisStore, script: LuaScript, pattern: Sequence[str]) -> list[str]:
        real = store._roundtrip
        seen: set[tuple[Any, ...]] = set()
        log: list[str] = []

        def roundtrip(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
            (command, *_) = commands
            # EVALSHA and its EVAL fallback name the script differently; the rest is the same on a retry.
            if len(commands) != 1 or command[:2] not in {("EVALSHA", script.sha), ("EVAL", script.source)}:
                return real(commands)
            if command[2:] in seen:
                return real(commands)
            seen.add(command[2:])
            fault = pattern[len(log) % len(pattern)]
            log.append(fault)
            if fault == "request":
                raise redis.ConnectionError("request lost (test)")
            replies = real(commands)
            if isinstance(replies[0], redis.exceptions.NoScriptError):
                # It did not run: the store falls back to EVAL, and that attempt gets the fault.
                seen.discard(command[2:])
                log.pop()
            elif fault == "reply":
                raise redis.ConnectionError("reply lost (test)")
            return replies

        store._roundtrip = roundtrip  # type: ignore[method-assign]
        return log

    return install


@pytest.fixture
def lasting() -> Callable[[Any, Iterable[bytes]], set[bytes]]:
    """``lasting(raw, keys)``: the keys without the result markers (``{P:N}:d:T``) of deletes and clears.

    A marker stays behind for a retry of its call and expires on its own; this checks that it does.
    """

    def keep(raw: Any, keys: Iterable[bytes]) -> set[bytes]:
        kept: set[bytes] = set()
        for key in keys:
            if key.partition(b"}")[2].startswith(b":d:"):
                assert 0 < raw.pttl(key) <= store_module._RESULT_TTL_MS, key
            else:
                kept.add(key)
        return kept

    return keep


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so that key snapshots see only this test's keys."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def raw(redis_server: RedisServer) -> Any:
    client = redis_server.client()
    yield client
    client.close()
