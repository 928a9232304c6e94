"""An https endpoint whose certificate does not verify: a configuration to fix (ARTIFACT_STORE_S3_CA_BUNDLE),
not a service to wait for."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_fixtures import ACCESS_KEY, SECRET_KEY, make_settings

from artifactstore_core import BackendError, BackendUnavailableError, ConfigurationError, Message, create_store
from artifactstore_core.testing_servers import LOOPBACK, self_signed_certificate
from artifactstore_s3 import S3Store
from artifactstore_s3.testing import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer


class UntrustedEndpoint:
    """An https:// URL on 127.0.0.1 whose server presents a certificate no default CA bundle trusts, and the
    number of connections it accepted (each one handshake the client refuses)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted = 0


@pytest.fixture
def untrusted_endpoint(tmp_path: Path) -> Iterator[UntrustedEndpoint]:
    cert_file, key_file = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server((LOOPBACK, 0))
    endpoint = UntrustedEndpoint(f"https://{LOOPBACK}:{listener.getsockname()[1]}")
    stop = threading.Event()

    def serve() -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not stop.is_set():
                if not selector.select(timeout=0.1):
                    continue  # look at stop again
                connection, _ = listener.accept()
                # Counted before the handshake: the client cannot see its failure before this.
                endpoint.accepted += 1
                try:
                    with context.wrap_socket(connection, server_side=True):
                        pass  # the client refuses the certificate during the handshake
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


@pytest.mark.timeout(60)
def test_a_certificate_that_does_not_verify_is_not_called_unavailable(
    untrusted_endpoint: UntrustedEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    # It used to come out as a retryable BackendUnavailableError ("cannot reach S3 ... check the network"):
    # repeating never helps.
    store = S3Store(make_settings(untrusted_endpoint.url, "any-bucket", max_attempts=2), namespace="n")
    try:
        with pytest.raises(BackendError) as info:
            store.save("a", Message(content=b"x"))
    finally:
        store.close()
    assert not isinstance(info.value, BackendUnavailableError)
    assert not info.value.retryable
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert "AWS_CA_BUNDLE" in str(info.value)
    # Nothing reached the service: the probe wrote nothing, so it is not deleted (which would fail the same
    # way, after as many retries) nor reported as left behind.
    assert not [record for record in caplog.records if "probe object" in record.getMessage()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("retry_mode", ["standard", "adaptive", "legacy"])
def test_a_refused_handshake_is_not_retried(untrusted_endpoint: UntrustedEndpoint, retry_mode: str) -> None:
    # botocore retried it as a connection error, max_attempts handshakes and their backoff (0.6 s for the
    # default 5 attempts, 8 s for 10) before the same error.
    settings = make_settings(untrusted_endpoint.url, "any-bucket", max_attempts=5, retry_mode=retry_mode)
    with S3Store(settings, namespace="n") as store:
        with pytest.raises(BackendError) as info:
            store.save("a", Message(content=b"x"))
        assert untrusted_endpoint.accepted == 1
        with pytest.raises(BackendError):
            store.get("a")
        assert untrusted_endpoint.accepted == 2
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, Path]]:
    """moto's S3 server speaking TLS only, with a self-signed certificate; and that certificate's file."""
    directory = tmp_path_factory.mktemp("tls-moto")
    certificate = self_signed_certificate(directory)
    with MotoServer(directory, certificate=certificate) as server:
        yield server, certificate[0]


@pytest.mark.timeout(120)
def test_a_ca_bundle_setting_trusts_a_private_ca(tls_moto: tuple[MotoServer, Path]) -> None:
    server, ca_file = tls_moto
    bucket = server.create_bucket()
    with S3Store(server.settings(bucket, ca_bundle=ca_file), namespace="n") as store:
        store.save("a", Message(content=b"over TLS"))
        assert store.get("a").content == b"over TLS"
    # The same server without the setting: refused as before (nothing in this process trusts it otherwise).
    store = S3Store(server.settings(bucket, max_attempts=1), namespace="n")
    try:
        with pytest.raises(BackendError) as info:
            store.get("a")
    finally:
        store.close()
    assert not isinstance(info.value, BackendUnavailableError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert "ARTIFACT_STORE_S3_CA_BUNDLE" in str(info.value)


@pytest.mark.timeout(120)
def test_the_ca_bundle_is_read_from_the_environment(
    tls_moto: tuple[MotoServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca_file = tls_moto
    bucket = server.create_bucket()
    monkeypatch.setenv("ARTIFACT_STORE_S3_CA_BUNDLE", str(ca_file))
    with create_store(
        "s3",
        namespace="n",
        bucket=bucket,
        endpoint_url=server.endpoint_url,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
    ) as store:
        store.save("a", Message(content=1))
        assert store.get("a").content == 1


@pytest.mark.parametrize("kind", ["missing", "directory", "not-pem"])
def test_a_ca_bundle_that_cannot_be_used_is_a_configuration_error(tmp_path: Path, kind: str) -> None:
    path = {"missing": tmp_path / "absent.pem", "directory": tmp_path, "not-pem": tmp_path / "empty.pem"}[kind]
    if kind == "not-pem":
        path.write_text("not a certificate\n")
    settings = make_settings("https://127.0.0.1:9", "any-bucket", ca_bundle=path)
    with pytest.raises(ConfigurationError) as info:
        S3Store(settings, namespace="n")
    message = str(info.value)
    assert "ARTIFACT_STORE_S3_CA_BUNDLE" in message
    assert str(path) in message
    assert SECRET_KEY not in message
    assert ACCESS_KEY not in message
