"""Failures come out as the core's errors: configuration, unreachable servers, a server still loading."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis

from artifactstore_core import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    Message,
    create_store,
)
from artifactstore_core.settings import load_settings
from artifactstore_redis import RedisSettings, RedisStore, mask_url
from artifactstore_redis.testing import RedisServer, free_port


def settings(url: str, **overrides: Any) -> RedisSettings:
    return RedisSettings(url=url, **overrides)  # type: ignore[arg-type]


# -- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://u:pw@host:6379/0", "redis://u:***@host:6379/0"),
        ("redis://:p%40ss@host/1", "redis://:***@host/1"),
        ("rediss://host:6380", "rediss://host:6380"),
        ("redis://user:pw@[::1]:6379/0", "redis://user:***@[::1]:6379/0"),
        # A password with its ':' forgotten reads as a user name: hidden as well.
        ("redis://s3cret@[::1]:6379/0", "redis://***@[::1]:6379/0"),
        ("redis://s3cret@host/0?db=1", "redis://***@host/0?db=1"),
        ("unix:///run/redis.sock?db=2&password=pw", "unix:///run/redis.sock?db=2&password=***"),
        ("redis://host:notaport/0", "<unparseable redis url>"),
        # A password that was not URL-escaped: no part of it may show as host, path or query.
        ("redis://:p@ss/w:rd@host:6379/0", "redis://***@<host hidden: its credentials are not URL-escaped>"),
        ("redis://u:a/b?c#d@host/0", "redis://***@<host hidden: its credentials are not URL-escaped>"),
        # Mistyped schemes: without "://" a password reads as a path, so nothing is shown.
        ("redis:/:pw@host:6379/0", "<hidden: not a scheme://... URL>"),
        ("redis//:pw@host/0", "<hidden: not a scheme://... URL>"),
        ("redis:///:pw@host:6379/0", "redis://***@<host hidden: its credentials are not URL-escaped>"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_settings_repr_masks_the_url_password_and_the_password() -> None:
    configured = settings("redis://user:hunter2@db.example:6379/0", password=None)
    assert "hunter2" not in repr(configured)
    assert "url='redis://user:***@db.example:6379/0'" in repr(configured)
    separate = settings("redis://db.example:6379/0", password="hunter2")
    assert "hunter2" not in repr(separate)
    assert "hunter2" not in str(separate)
    assert "hunter2" not in separate.model_dump_json()


def test_every_setting_is_described_and_named_by_its_env_var() -> None:
    for name, field in RedisSettings.model_fields.items():
        assert field.description, name
        assert RedisSettings.env_name(name) == f"ARTIFACT_STORE_REDIS_{name.upper()}"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"url": "http://host:6379"}, "ARTIFACT_STORE_REDIS_URL is not a valid Redis URL"),
        ({"url": "redis://:pw@host/0", "password": "pw"}, "both in ARTIFACT_STORE_REDIS_URL and in"),
        ({"url": "redis://u@host/0", "username": "v"}, "ARTIFACT_STORE_REDIS_USERNAME"),
        ({"url": "redis://host/0?socket_timeout=3"}, "set ARTIFACT_STORE_REDIS_SOCKET_TIMEOUT instead"),
        ({"url": "redis://host/0?frobnicate=1"}, "'frobnicate' is not supported"),
        ({"url": "redis://host/1", "cluster": True}, "a Redis Cluster has only 0"),
        ({"url": "unix:///tmp/redis.sock", "cluster": True}, "not a unix socket"),
        # redis-py would take these for localhost:6379 without a password: a mistyped URL never connects.
        ({"url": "redis:///:pw@db.internal:6380/0"}, "ARTIFACT_STORE_REDIS_URL names no host"),
        ({"url": "redis:/:pw@db.internal:6380/0"}, "ARTIFACT_STORE_REDIS_URL is not a valid Redis URL"),
        ({"url": "redis://db.internal:6380/zero"}, "a path that is not a database number"),
        # redis-py takes the socket path from the URL's path alone: these reach /redis.sock and no path.
        ({"url": "unix://tmp/redis.sock"}, "a unix socket URL with a host name or without a path"),
        ({"url": "unix://:pw@run/redis.sock?db=1"}, "a unix socket URL with a host name or without a path"),
        ({"url": "unix://"}, "a unix socket URL with a host name or without a path"),
        # redis-py drops the inner '/' (database 15) and lets ?db= win over the path, without a word.
        ({"url": "redis://db.internal:6380/1/5"}, "a path that is not a database number"),
        ({"url": "redis://db.internal:6380/2?db=3"}, "selects database 2 in its path and 3 in its query"),
        # Options redis-py checks only when it makes a connection: at every call (a BackendError naming a
        # TypeError, a retried BackendUnavailableError), or, in a cluster, as "cannot be connected".
        ({"url": "redis://db.internal:6380/0?ssl_cert_reqs=none"}, "apply to rediss:// URLs only"),
        ({"url": "unix:///tmp/redis.sock?ssl_ca_certs=/ca.pem"}, "apply to rediss:// URLs only"),
        ({"url": "redis://db.internal:6380/0?ssl_cert_reqs=none", "cluster": True}, "apply to rediss:// URLs only"),
        ({"url": "redis://db.internal:6380/0?protocol=4"}, "protocol must be either 2 or 3"),
        ({"url": "redis://db.internal:6380/0?protocol=4", "cluster": True}, "protocol must be either 2 or 3"),
        ({"url": "rediss://db.internal:6380/0?ssl_cert_reqs=bogus"}, "Invalid SSL Certificate Requirements Flag"),
    ],
)
def test_invalid_configuration_is_a_configuration_error(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisStore(settings(**overrides))
    assert fragment in str(info.value)
    assert "pw" not in str(info.value).replace("password", "")


def test_a_url_error_says_where_the_url_was_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The store checks the URL's form after the settings are loaded, and named only the variable: a caller who
    # passed url=... (or a config file's key) and set no variable was told to fix ARTIFACT_STORE_REDIS_URL.
    monkeypatch.delenv("ARTIFACT_STORE_REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"^ARTIFACT_STORE_REDIS_URL \(given as the argument url\) is not a"):
        create_store("redis", url="http://db.internal")
    (tmp_path / "artifactstore.toml").write_text('[redis]\nurl = "http://db.internal"\n')
    expected = r"^ARTIFACT_STORE_REDIS_URL \(set by url in \[redis\] of artifactstore.toml\) is not a"
    with pytest.raises(ConfigurationError, match=expected):
        create_store("redis")
    # Both the URL and the password given as arguments: each name says so (the URL's alone named the variable).
    with pytest.raises(ConfigurationError) as info:
        create_store("redis", url="redis://:pw1@db.internal/0", password="pw2")
    assert "ARTIFACT_STORE_REDIS_URL (given as the argument url)" in str(info.value)
    assert "ARTIFACT_STORE_REDIS_PASSWORD (given as the argument password)" in str(info.value)
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_URL", "http://db.internal")
    with pytest.raises(ConfigurationError, match=r"^ARTIFACT_STORE_REDIS_URL is not a"):
        create_store("redis")


def test_invalid_setting_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_KEY_PREFIX", "has space")
    with pytest.raises(ConfigurationError) as info:
        load_settings(RedisSettings)
    assert "ARTIFACT_STORE_REDIS_KEY_PREFIX" in str(info.value)
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_KEY_PREFIX", "ok")
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_MAX_ARTIFACT_BYTES", str(2**40))
    with pytest.raises(ConfigurationError) as info:
        create_store("redis")
    assert "ARTIFACT_STORE_REDIS_MAX_ARTIFACT_BYTES" in str(info.value)


@pytest.mark.parametrize("value", ["inf", "1e12"])
@pytest.mark.parametrize("name", ["SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT", "POOL_TIMEOUT", "RETRY_BACKOFF_MAX"])
def test_a_wait_too_long_for_python_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # These were accepted, and then failed the store's creation or every call with a BackendError that named
    # nothing but an OverflowError (Python's sockets and waits refuse such timeouts).
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_URL", "redis://db.internal:6380/0")
    monkeypatch.setenv(f"ARTIFACT_STORE_REDIS_{name}", value)
    with pytest.raises(ConfigurationError, match=f"ARTIFACT_STORE_REDIS_{name}: Input should be less than or equal"):
        create_store("redis")


def test_retry_attempts_past_what_a_result_marker_can_outlive_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1e12 retries were accepted, and the delete/clear result marker's expiry (as long as a call's retries may
    # last) then went past what Redis accepts.
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_URL", "redis://db.internal:6380/0")
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_RETRY_ATTEMPTS", str(10**12))
    with pytest.raises(
        ConfigurationError, match="ARTIFACT_STORE_REDIS_RETRY_ATTEMPTS: Input should be less than or equal"
    ):
        create_store("redis")


def test_config_file_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "artifactstore.toml").write_text('[redis]\nkey_prefix = "from-file"\nsocket_timeout = 1.25\n')
    monkeypatch.chdir(tmp_path)
    loaded = load_settings(RedisSettings)
    assert (loaded.key_prefix, loaded.socket_timeout) == ("from-file", 1.25)


# -- unreachable ----------------------------------------------------------------------------------------


def test_refused_connection_is_retried_then_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="artifactstore_redis")
    store = RedisStore(
        settings(f"redis://127.0.0.1:{free_port()}/0", retry_attempts=2, retry_backoff=0.001), namespace="down"
    )
    with pytest.raises(BackendUnavailableError) as info:
        store.save("x", Message(content=1))
    error = info.value
    assert error.retryable
    assert isinstance(error.__cause__, redis.ConnectionError)
    assert error.namespace == "down"
    assert error.backend == "redis"
    assert "127.0.0.1" in str(error)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert "retry 2 of 2" in retries[-1]
    for call in (lambda: store.get("x"), lambda: store.exists("x"), lambda: list(store.list()), store.clear):
        with pytest.raises(BackendUnavailableError):
            call()
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:p%40ss%2Fw%3Ard@127.0.0.1:{port}/0",  # percent-encoded, as redis-py decodes and sends it
        "unix:///run/redis-{port}.sock?db=0&password=p%40ss%2Fw%3Ard",
    ],
)
def test_error_texts_never_quote_the_url_password_in_any_spelling(url: str) -> None:
    store = RedisStore(settings(url.format(port=free_port())), namespace="n")  # nothing connects yet
    try:
        for spelling in ("p@ss/w:rd", "p%40ss%2Fw%3Ard", "p%40ss/w%3Ard"):
            error = store._translate_error(redis.AuthenticationError(f"server said: {spelling} is wrong"))
            assert error is not None
            assert "p@ss" not in str(error)
            assert "p%40ss" not in str(error)
            assert "server said: ********** is wrong" in str(error)
    finally:
        store.close()


def test_unreachable_cluster_fails_at_creation() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        RedisStore(settings(f"redis://127.0.0.1:{free_port()}", cluster=True, socket_connect_timeout=0.5))
    assert info.value.__cause__ is not None


@pytest.mark.timeout(30)
def test_cluster_mode_against_a_standalone_server_says_which_setting_to_change(redis_server: RedisServer) -> None:
    # It was a retryable BackendUnavailableError ("is unavailable ... Cluster mode is not enabled on this node"),
    # as if the server could not be reached, naming no setting.
    with pytest.raises(ConfigurationError) as info:
        RedisStore(settings(redis_server.url, cluster=True))
    text = str(info.value)
    assert "ARTIFACT_STORE_REDIS_CLUSTER" in text
    assert "cluster support disabled" in text
    assert redis_server.url in text


# -- a server still loading its data ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_loading_is_retried_with_backoff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="artifactstore_redis")
    server = RedisServer(tmp_path / "loading", dbfilename="dump.rdb")
    server.start()
    try:
        with RedisStore(settings(server.url), namespace="loaded") as store:
            store.save("before-restart", Message(content=b"kept"))
        admin = server.client()
        pipe = admin.pipeline(transaction=False)
        for i in range(20_000):
            pipe.set(f"filler:{i}", b"x")
        pipe.execute()
        admin.save()
        admin.close()
        server.stop()
        # Loading now takes about a second (50 us per key), and the server answers LOADING meanwhile.
        server.options.update({"key-load-delay": "50", "loading-process-events-interval-bytes": "1024"})
        server.start(wait=False)
        impatient = RedisStore(settings(server.url, retry_attempts=0), namespace="loaded")
        with pytest.raises(BackendUnavailableError) as info:
            impatient.get("before-restart")
        assert "loading" in str(info.value)
        assert isinstance(info.value.__cause__, redis.BusyLoadingError)
        impatient.close()
        patient = RedisStore(
            settings(server.url, retry_attempts=60, retry_backoff=0.05, retry_backoff_max=0.2), namespace="loaded"
        )
        assert patient.get("before-restart").content == b"kept"
        assert any("BusyLoadingError" in r.getMessage() for r in caplog.records)
        patient.close()
    finally:
        server.stop()


def test_docs_list_every_setting() -> None:
    docs = Path(__file__).resolve().parents[3] / "docs" / "redis.md"
    text = docs.read_text()
    for name in RedisSettings.model_fields:
        assert f"`{RedisSettings.env_name(name)}`" in text, name


@pytest.mark.timeout(60)
def test_a_pool_with_every_connection_busy_fails_after_pool_timeout_not_retried(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="artifactstore_redis")
    settings = RedisSettings(url=redis_server.url, max_connections=1, pool_timeout=0.2, retry_attempts=3)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="busy pool") as store:
        store.save("x", Message(content=b"x"))
        pool = store.client.connection_pool
        held = pool.get_connection()  # what a thread in the middle of a long call would hold
        try:
            for operation in (
                lambda: store.get("x"),
                lambda: store.exists("x"),
                lambda: store.save("y", Message(content=1)),
            ):
                with pytest.raises(BackendUnavailableError) as info:
                    operation()
                assert "no free connection" in str(info.value)
                assert "ARTIFACT_STORE_REDIS_MAX_CONNECTIONS" in str(info.value)
                assert "ARTIFACT_STORE_REDIS_POOL_TIMEOUT" in str(info.value)
        finally:
            pool.release(held)
        assert [record for record in caplog.records if "retry" in record.getMessage()] == []  # waiting is the wait
        assert store.get("x").content == b"x"
        store.clear()


@pytest.mark.timeout(30)
def test_a_database_the_server_does_not_have_is_named(redis_server: RedisServer) -> None:
    # Redis's "DB index is out of range" named neither the number nor where it was set.
    settings = RedisSettings(url=redis_server.url.removesuffix("/0") + "/16")  # type: ignore[arg-type]
    with RedisStore(settings, namespace="db") as store, pytest.raises(BackendError) as raised:
        store.exists("x")
    assert not isinstance(raised.value, BackendUnavailableError)
    assert "no database 16" in str(raised.value)
    assert "ARTIFACT_STORE_REDIS_URL" in str(raised.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/2?db=2", "/2/", "?db=2"])
def test_a_database_given_once_or_alike_twice_is_the_one_used(redis_server: RedisServer, path: str) -> None:
    url = redis_server.url.removesuffix("/0") + path
    with RedisStore(RedisSettings(url=url), namespace="db two") as store:  # type: ignore[arg-type]
        store.save("x", Message(content=b"x"), overwrite=True)
        admin = redis_server.client(db=2)
        try:
            assert admin.exists(store._key(store._member("x")))
        finally:
            store.clear()
            admin.close()
