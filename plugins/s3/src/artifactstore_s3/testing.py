"""moto's S3 server for tests and benchmarks, in a process of its own on a free loopback port.

Shipped with the plugin so that its own tests, the reliability suite, the benchmarks and third parties start
the server the same way::

    from artifactstore_s3 import S3Store
    from artifactstore_s3.testing import MotoServer

    with MotoServer() as server:
        bucket = server.create_bucket()
        with S3Store(server.settings(bucket), namespace="demo") as store:
            ...

moto is a test dependency, not one of artifactstore-s3, and nothing here imports it: the launcher runs
``python -m moto.server`` with this interpreter, in its own process (its work does not share the GIL with
the clients under test, and the objects it keeps do not count in their memory). Without moto's server mode,
:meth:`MotoServer.start` raises :class:`MotoServerError` naming the install line (``INSTALL``); failures
fail the calling test, never skip it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from artifactstore_core.testing_servers import LOOPBACK, ServerStartError, ServerSubprocess

from .settings import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["ACCESS_KEY_ID", "INSTALL", "REGION", "SECRET_ACCESS_KEY", "MotoServer", "MotoServerError"]

#: How to install what the launcher needs (moto 5.1.11 honours If-None-Match on multipart completion too).
INSTALL = "pip install 'moto[server]>=5.1.11'"
#: Test credentials moto accepts (any are accepted; these are no secret of any deployment).
ACCESS_KEY_ID = "AKIAMOTOTESTING00000"
SECRET_ACCESS_KEY = "moto-testing-secret"  # noqa: S105
REGION = "us-east-1"
#: Seconds moto has to accept connections (it imports every AWS service it emulates first).
READY_TIMEOUT = 60.0
#: The modules ``python -m moto.server`` needs beyond moto itself (its ``server`` extra).
SERVER_MODULES = ("moto", "flask", "flask_cors")


class MotoServerError(ServerStartError):
    """The moto server could not be started: moto's server mode is not installed, it exited, or it did not
    accept connections in time."""


class MotoServer(ServerSubprocess):
    """``python -m moto.server`` on 127.0.0.1, started by :meth:`start` and stopped by ``stop()`` (or a
    ``with`` block). Restartable on the same port (with empty storage: moto keeps objects in memory).

    ``workdir``, if given, receives the server's log (``moto.log``), quoted in errors. ``certificate``, if
    given, is a ``(certificate file, key file)`` pair of PEM files (e.g. from
    :func:`artifactstore_core.testing_servers.self_signed_certificate`): the server then speaks TLS only
    (an ``https://`` :attr:`endpoint_url`), and :meth:`client` trusts that certificate.
    """

    name = "moto server"
    error = MotoServerError

    def __init__(
        self, workdir: Path | None = None, *, port: int | None = None, certificate: tuple[Path, Path] | None = None
    ) -> None:
        super().__init__(port=port, log_path=None if workdir is None else workdir / "moto.log")
        self.certificate = certificate

    @property
    def endpoint_url(self) -> str:
        """The server's URL, for ``S3Settings.endpoint_url`` or a boto3 client."""
        scheme = "http" if self.certificate is None else "https"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    def start(self) -> MotoServer:
        """Start the server and return once it accepts connections.

        Raises :class:`MotoServerError` if moto's server mode is not installed (naming ``INSTALL``), if
        the server exits first (with its log, when there is a ``workdir``), or after 60 seconds.
        """
        missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise MotoServerError(
                f"moto's server mode is not installed (no module {', '.join(missing)}); the s3 tests and "
                f"benchmarks need it: {INSTALL}"
            )
        tls = [] if self.certificate is None else ["-c", str(self.certificate[0]), "-k", str(self.certificate[1])]
        self.spawn(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port), *tls],
            timeout=READY_TIMEOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # so that the log is complete when it is quoted
        )
        return self

    def client(
        self,
        *,
        access_key_id: str = ACCESS_KEY_ID,
        secret_access_key: str = SECRET_ACCESS_KEY,
        region: str = REGION,
        **config: Any,
    ) -> S3Client:
        """A plain boto3 S3 client on the server (``config``: options of :class:`botocore.config.Config`)."""
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        verify = None if self.certificate is None else str(self.certificate[0])
        return session.client("s3", endpoint_url=self.endpoint_url, config=Config(**config), verify=verify)

    def create_bucket(self, name: str | None = None, *, prefix: str = "test") -> str:
        """Create a bucket (by default a new name starting with ``prefix``) and return its name.

        Raises botocore's ``ClientError`` if the server refuses (a name that exists, an invalid one).
        """
        bucket = name or f"{prefix}-{uuid.uuid4().hex[:20]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        finally:
            client.close()
        return bucket

    def settings(self, bucket: str, **overrides: Any) -> S3Settings:
        """:class:`~artifactstore_s3.S3Settings` for ``bucket`` on this server, with the test credentials;
        any field can be overridden. Raises :class:`pydantic.ValidationError` for invalid overrides."""
        fields: dict[str, Any] = {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
        }
        fields.update(overrides)
        return S3Settings(**fields)
