"""The shipped moto launcher: a real server in its own process, usable at once, and gone when stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

import artifactstore_s3.testing as s3_testing
from artifactstore_core import Message
from artifactstore_core.testing_servers import accepts_connections
from artifactstore_s3 import S3Store
from artifactstore_s3.testing import INSTALL, MotoServer, MotoServerError

pytestmark = pytest.mark.timeout(120)


def test_moto_server_serves_s3_and_stops(tmp_path: Path) -> None:
    with MotoServer(tmp_path) as server:
        assert server.endpoint_url == f"http://127.0.0.1:{server.port}"
        bucket = server.create_bucket()
        client = server.client()
        try:
            client.put_object(Bucket=bucket, Key="a/b", Body=b"through moto")
            assert client.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"through moto"
        finally:
            client.close()
        with S3Store(server.settings(bucket), namespace="launcher") as store:
            store.save("x", Message(content=b"via the store"))
            assert store.get("x").content == b"via the store"
    assert not server.running
    # Reaped (a return code is only known once the process has been waited for): no process, not even a zombie.
    assert server.process is not None
    assert server.process.returncode is not None
    assert not accepts_connections(server.port)


def test_settings_overrides_any_field(tmp_path: Path) -> None:
    server = MotoServer(tmp_path)  # not started: settings need only the port
    settings = server.settings("b", prefix="p", max_attempts=2)
    assert (settings.bucket, settings.prefix, settings.max_attempts) == ("b", "p", 2)
    assert settings.endpoint_url == server.endpoint_url


def test_missing_server_mode_names_the_install_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(s3_testing, "SERVER_MODULES", ("moto", "no_such_module_for_moto_server"))
    server = MotoServer(tmp_path)
    with pytest.raises(MotoServerError, match="no_such_module_for_moto_server") as caught:
        server.start()
    assert INSTALL in str(caught.value)
    assert server.process is None  # nothing was started
