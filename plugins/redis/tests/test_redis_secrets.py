"""A canary password, set for this whole module, never appears in a log line, a repr or an exception text.

The module's server requires the canary as its password. Every test here runs with all loggers at DEBUG, and
an autouse fixture checks everything each test logged or printed; the tests add reprs and full exception
texts (with their chained causes) to what is checked.
"""

from __future__ import annotations

import logging
import pickle
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from artifactstore_core import (
    AccessDeniedError,
    ArtifactStoreError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    Message,
    create_store,
)
from artifactstore_core.settings import load_settings
from artifactstore_core.testing_errors import reachable_text
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer, free_port

# Characters that need escaping in a URL make sure both spellings of the password are looked for.
CANARY = f"Canary/{uuid.uuid4().hex}@:%?#"
SPELLINGS = (CANARY, quote(CANARY, safe=""), quote(CANARY))


@pytest.fixture(scope="module")
def canary_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-canary"), requirepass=CANARY)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def seen() -> list[str]:
    """Texts a test hands over to be checked for the canary."""
    return []


@pytest.fixture(autouse=True)
def _no_canary_anywhere(
    seen: list[str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    captured = capsys.readouterr()
    # In teardown, caplog.records holds only the teardown's records: collect each phase's explicitly.
    records = [record for when in ("setup", "call") for record in caplog.get_records(when)]
    assert records, "nothing was logged: the check would prove nothing"
    handler = logging.Formatter("%(levelname)s %(name)s %(message)s")
    logged = [handler.format(record) for record in records]
    everything = "\n".join([*seen, *logged, captured.out, captured.err])
    for spelling in SPELLINGS:
        assert spelling not in everything


def url_with_password(server: RedisServer, password: str = CANARY) -> str:
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


def full_text(exc: BaseException) -> str:
    """Everything a user could see of an exception: str, repr, traceback with causes, after pickling, and every
    exception reachable from it (a suppressed context too)."""
    copy = pickle.loads(pickle.dumps(exc)) if isinstance(exc, ArtifactStoreError) else exc
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), str(copy), repr(copy)]
    return "\n".join([*shown, reachable_text(exc)])


def failing(call: Callable[[], Any], error: type[BaseException], seen: list[str]) -> BaseException:
    with pytest.raises(error) as info:
        call()
    seen.append(full_text(info.value))
    return info.value


def test_working_stores_never_show_the_password(canary_server: RedisServer, seen: list[str]) -> None:
    for configured in (
        RedisSettings(url=url_with_password(canary_server)),  # type: ignore[arg-type]
        RedisSettings(url=canary_server.url, password=CANARY),  # type: ignore[arg-type]
    ):
        seen += [repr(configured), str(configured), configured.model_dump_json(), configured.display_url]
        with RedisStore(configured, namespace="canary") as store:
            seen += [repr(store), repr(store.client), repr(store.settings)]
            store.save("x", Message(content=b"payload"))
            assert store.get("x").content == b"payload"
            seen += [repr(info) for info in store.list()]
            assert store.clear() == 1
    assert any("***" in text for text in seen)
    assert canary_server.client().ping()  # the canary really is the server's password


def test_failures_never_show_the_password(canary_server: RedisServer, seen: list[str], tmp_path: Path) -> None:
    # A wrong password that contains the canary.
    wrong = RedisStore(RedisSettings(url=url_with_password(canary_server, CANARY + "x")), namespace="n")  # type: ignore[arg-type]
    failing(lambda: wrong.save("x", Message(content=1)), AccessDeniedError, seen)
    wrong.close()
    # No password at all.
    anonymous = RedisStore(RedisSettings(url=canary_server.url), namespace="n")  # type: ignore[arg-type]
    failing(lambda: anonymous.get("x"), AccessDeniedError, seen)
    anonymous.close()
    # Nobody listening, with the password in the URL, retried with debug logging on.
    unreachable = f"redis://:{quote(CANARY, safe='')}@127.0.0.1:{free_port()}/0"
    down = RedisStore(RedisSettings(url=unreachable, retry_attempts=2, retry_backoff=0.001), namespace="n")  # type: ignore[arg-type]
    failing(lambda: down.exists("x"), BackendUnavailableError, seen)
    seen.append(repr(down))
    down.close()
    failing(
        lambda: RedisStore(RedisSettings(url=unreachable, cluster=True, socket_connect_timeout=0.5)),  # type: ignore[arg-type]
        BackendUnavailableError,
        seen,
    )
    # A timeout.
    paused = RedisStore(RedisSettings(url=url_with_password(canary_server), socket_timeout=0.2), namespace="n")  # type: ignore[arg-type]
    paused.save("warm", Message(content=1))
    admin = canary_server.client()
    admin.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
    try:
        failing(lambda: paused.save("y", Message(content=2)), BackendTimeoutError, seen)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    paused.clear()
    paused.close()


def test_configuration_errors_never_show_the_password(
    canary_server: RedisServer, seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = quote(CANARY, safe="")
    mistyped = (f"redis:/:{secret}@127.0.0.1:6379/0", f"redis//:{secret}@127.0.0.1/0", f"redis:///:{secret}@h:1/0")
    for url in (
        f"redis://:{secret}@127.0.0.1:notaport/0",
        f"http://:{secret}@host/0",
        f"redis://:{secret}@h/0?x=1",
        *mistyped,
    ):
        failing(lambda url=url: RedisStore(RedisSettings(url=url)), ConfigurationError, seen)  # type: ignore[misc]
        seen.append(repr(RedisSettings(url=url)))  # type: ignore[arg-type]
    failing(
        lambda: RedisStore(RedisSettings(url=url_with_password(canary_server), password=CANARY)),  # type: ignore[arg-type]
        ConfigurationError,
        seen,
    )
    failing(
        lambda: load_settings(RedisSettings, url=f"redis://:{secret}@h/0", max_connections=0), ConfigurationError, seen
    )
    # A pydantic error of a directly built settings object shows only the failing field's input.
    failing(lambda: RedisSettings(url=f"redis://:{secret}@h/0", password=CANARY, max_connections=0), ValueError, seen)
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_URL", url_with_password(canary_server))
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_PASSWORD", CANARY)
    failing(lambda: create_store("redis"), ConfigurationError, seen)
    monkeypatch.delenv("ARTIFACT_STORE_REDIS_PASSWORD")
    with create_store("redis", namespace="env") as store:
        seen.append(repr(store))
        store.save("x", Message(content="via env"))
        store.clear()
