"""TLS against a real redis-server with a TLS port: a verified connection works (large payloads included),
and the usual misconfigurations are reported as what they are, without retries that cannot help."""

from __future__ import annotations

import datetime
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis_helpers import payload_of

import artifactstore_redis.store as store_module
from artifactstore_core import BackendError, BackendTimeoutError, BackendUnavailableError, Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer, free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, Path]]:
    """A redis-server with a plain port and a TLS port; yields it, the TLS port and the CA (its certificate)."""
    directory = tmp_path_factory.mktemp("redis-tls")
    cert_file, key_file = self_signed(directory)
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
