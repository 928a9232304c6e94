"""TLS against a real redis-server with a TLS port: a verified connection works (large payloads included),
and the usual misconfigurations are reported as what they are, without retries that cannot help."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from redis_helpers import payload_of

import artifactstore_redis.store as store_module
from artifactstore_core import BackendError, BackendTimeoutError, BackendUnavailableError, Message
from artifactstore_core.testing_servers import LOOPBACK, self_signed_certificate
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer, free_port


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, Path]]:
    """A redis-server with a plain port and a TLS port; yields it, the TLS port and the CA (its certificate)."""
    directory = tmp_path_factory.mktemp("redis-tls")
    cert_file, key_file = self_signed_certificate(directory)
    tls_port = free_port()
    options = {
        "tls-port": str(tls_port),
        "tls-cert-file": str(cert_file),
        "tls-key-file": str(key_file),
        "tls-ca-cert-file": str(cert_file),
        "tls-auth-clients": "no",
    }
    with RedisServer(directory / "data", **options) as server:
        yield server, tls_port, cert_file


@pytest.mark.timeout(60)
def test_a_verified_tls_connection_saves_and_reads(tls_server: tuple[RedisServer, int, Path]) -> None:
    _, tls_port, ca = tls_server
    url = f"rediss://{LOOPBACK}:{tls_port}/0?ssl_ca_certs={ca}"
    large = payload_of("tls", 3 * store_module._SEND_PIECE + 5)  # sent in pieces over TLS
    with RedisStore(RedisSettings(url=url), namespace="tls") as store:  # type: ignore[arg-type]
        try:
            store.save("small", Message(content=b"s"))
            store.save("large", Message(content=large))
            assert store.get("large").content == large
            assert store.get_many(["small", "large"])["small"].content == b"s"
        finally:
            store.clear()


@pytest.mark.timeout(60)
def test_a_certificate_that_does_not_verify_is_not_retried_nor_called_unavailable(
    tls_server: tuple[RedisServer, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="artifactstore_redis")
    _, tls_port, _ = tls_server
    settings = RedisSettings(url=f"rediss://{LOOPBACK}:{tls_port}/0", retry_attempts=3)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="tls") as store, pytest.raises(BackendError) as info:
        store.exists("x")
    error = info.value
    assert not isinstance(error, BackendUnavailableError)
    assert not error.retryable
    assert "TLS handshake" in str(error)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert "ssl_ca_certs" in str(error)
    assert [record for record in caplog.records if "retry" in record.getMessage()] == []


@pytest.mark.timeout(60)
def test_rediss_to_a_port_without_tls_says_so(tls_server: tuple[RedisServer, int, Path]) -> None:
    server, _, _ = tls_server
    # The plain port: the server waits for a command, the client for the handshake, until the connect timeout.
    settings = RedisSettings(url=f"rediss://{LOOPBACK}:{server.port}/0", socket_connect_timeout=0.5)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="tls") as store, pytest.raises(BackendTimeoutError) as info:
        store.exists("x")
    assert "did not accept a connection" in str(info.value)
    assert "does not speak TLS" in str(info.value)
    assert "may or may not have been applied" not in str(info.value)


@pytest.mark.timeout(60)
def test_redis_to_a_tls_port_says_it_may_need_rediss(tls_server: tuple[RedisServer, int, Path]) -> None:
    _, tls_port, _ = tls_server
    # The server takes the first command for a broken handshake and resets the connection: this was "is
    # unavailable (... Connection reset by peer)", as for a server that went away, naming nothing to change.
    settings = RedisSettings(url=f"redis://{LOOPBACK}:{tls_port}/0", retry_attempts=0)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="tls") as store, pytest.raises(BackendUnavailableError) as info:
        store.exists("x")
    assert "speaks TLS on that port, use rediss://" in str(info.value)


#: The password of the encrypted client key: a canary that no error text may quote.
KEY_PASSWORD = "k3y&p@ss word"


@pytest.fixture(scope="module")
def client_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path, Path]]:
    """A redis-server that requires client certificates (``tls-auth-clients yes``); yields its TLS port, the CA
    (also the client certificate: it signs itself), its key, and that key encrypted with KEY_PASSWORD."""
    directory = tmp_path_factory.mktemp("redis-tls-clients")
    cert_file, key_file = self_signed_certificate(directory)
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    encrypted = directory / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    tls_port = free_port()
    options = {
        "tls-port": str(tls_port),
        "tls-cert-file": str(cert_file),
        "tls-key-file": str(key_file),
        "tls-ca-cert-file": str(cert_file),
        "tls-auth-clients": "yes",
    }
    with RedisServer(directory / "data", **options):
        yield tls_port, cert_file, key_file, encrypted


@pytest.mark.timeout(60)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-key", "encrypted-key"])
def test_a_client_certificate_is_presented(client_auth_server: tuple[int, Path, Path, Path], encrypted: bool) -> None:
    port, cert, key, encrypted_key = client_auth_server
    url = f"rediss://{LOOPBACK}:{port}/0?ssl_ca_certs={cert}&ssl_certfile={cert}"
    url += f"&ssl_keyfile={encrypted_key}&ssl_password={quote(KEY_PASSWORD)}" if encrypted else f"&ssl_keyfile={key}"
    with RedisStore(RedisSettings(url=url), namespace="client cert") as store:  # type: ignore[arg-type]
        store.save("large", Message(content=payload_of("large", store_module._INLINE_MAX + 1)))
        assert store.get("large").content == payload_of("large", store_module._INLINE_MAX + 1)
        assert store.clear() == 1


@pytest.mark.timeout(60)
def test_a_missing_client_certificate_is_named_as_the_likely_cause(
    client_auth_server: tuple[int, Path, Path, Path],
) -> None:
    port, cert, _, _ = client_auth_server
    settings = RedisSettings(url=f"rediss://{LOOPBACK}:{port}/0?ssl_ca_certs={cert}")  # type: ignore[arg-type]
    with RedisStore(settings, namespace="tls") as store, pytest.raises(BackendError) as info:
        store.exists("x")
    assert not isinstance(info.value, BackendUnavailableError)
    # The handshake error alone ("EOF occurred in violation of protocol") did not point at the client side.
    assert "ssl_certfile" in str(info.value)
    assert "tls-auth-clients" in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option", ["ssl_certfile", "ssl_keyfile", "ssl_ca_certs"])
def test_a_tls_file_that_cannot_be_read_is_a_configuration_problem_not_retried(
    client_auth_server: tuple[int, Path, Path, Path], caplog: pytest.LogCaptureFixture, tmp_path: Path, option: str
) -> None:
    # It was "unavailable" (retryable, retried three times): the file named in the URL does not exist.
    caplog.set_level(logging.DEBUG, logger="artifactstore_redis")
    port, cert, key, _ = client_auth_server
    files = {"ssl_ca_certs": cert, "ssl_certfile": cert, "ssl_keyfile": key, option: tmp_path / "missing.pem"}
    query = "&".join(f"{name}={path}" for name, path in files.items())
    settings = RedisSettings(url=f"rediss://{LOOPBACK}:{port}/0?{query}", retry_attempts=3)  # type: ignore[arg-type]
    with RedisStore(settings, namespace="tls") as store, pytest.raises(BackendError) as info:
        store.exists("x")
    assert not isinstance(info.value, BackendUnavailableError)
    assert not info.value.retryable
    assert "could not be read" in str(info.value)
    assert [record for record in caplog.records if "retry" in record.getMessage()] == []


@pytest.mark.timeout(60)
def test_a_wrong_key_password_is_never_shown(client_auth_server: tuple[int, Path, Path, Path]) -> None:
    port, cert, _, encrypted_key = client_auth_server
    wrong = "wr0ng-key-canary"
    url = f"rediss://{LOOPBACK}:{port}/0?ssl_ca_certs={cert}&ssl_certfile={cert}&ssl_keyfile={encrypted_key}"
    settings = RedisSettings(url=f"{url}&ssl_password={wrong}")  # type: ignore[arg-type]
    with RedisStore(settings, namespace="tls") as store, pytest.raises(BackendError) as info:
        store.exists("x")
    assert not isinstance(info.value, BackendUnavailableError)
    assert wrong not in str(info.value)
    assert wrong not in repr(store)
