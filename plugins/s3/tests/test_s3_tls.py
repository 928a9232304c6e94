"""An https endpoint whose certificate does not verify: a configuration to fix, not a service to wait for."""

from __future__ import annotations

import datetime
import ipaddress
import selectors
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from s3_fixtures import make_settings

from artifactstore_core import BackendError, BackendUnavailableError, Message
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_s3 import S3Store


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
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def untrusted_endpoint(tmp_path: Path) -> Iterator[str]:
    """An https:// URL on 127.0.0.1 whose server presents a certificate no default CA bundle trusts."""
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not stop.is_set():
                if not selector.select(timeout=0.1):
                    continue  # look at stop again
                connection, _ = listener.accept()
                try:
                    with context.wrap_socket(connection, server_side=True):
                        pass  # the client refuses the certificate during the handshake
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://{LOOPBACK}:{port}"
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


@pytest.mark.timeout(60)
def test_a_certificate_that_does_not_verify_is_not_called_unavailable(
    untrusted_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    # botocore retries it as a connection error, and it used to come out as a retryable
    # BackendUnavailableError ("cannot reach S3 ... check the network"): repeating never helps.
    store = S3Store(make_settings(untrusted_endpoint, "any-bucket", max_attempts=2), namespace="n")
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
