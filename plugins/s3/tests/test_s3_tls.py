"""An https endpoint whose certificate does not verify: a configuration to fix, not a service to wait for."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_fixtures import make_settings

from artifactstore_core import BackendError, BackendUnavailableError, Message
from artifactstore_core.testing_servers import LOOPBACK, self_signed_certificate
from artifactstore_s3 import S3Store


@pytest.fixture
def untrusted_endpoint(tmp_path: Path) -> Iterator[str]:
    """An https:// URL on 127.0.0.1 whose server presents a certificate no default CA bundle trusts."""
    cert_file, key_file = self_signed_certificate(tmp_path)
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
