"""The core's conformance kit, unchanged, against the S3 backend on a moto server over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from s3_fixtures import ACCESS_KEY, SECRET_KEY, make_settings

from artifactstore_core.testing import StoreConformance
from artifactstore_core.testing_servers import free_port
from artifactstore_s3 import S3Store
from artifactstore_s3.testing import MotoServer


@pytest.fixture(scope="module")
def refusing_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server in a process of its own that enforces IAM and knows no user: every request is refused
    (``InvalidAccessKeyId``), as AWS refuses a key that does not exist. Not the session's server, which lets
    every request through: the setting is per process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
        server = MotoServer(tmp_path_factory.mktemp("refusing-moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kit_bucket(raw: Any) -> str:
    name = f"kit-{uuid.uuid4().hex[:20]}"
    raw.create_bucket(Bucket=name)
    return name


class TestS3Conformance(StoreConformance):
    @pytest.fixture
    def make_store(self, moto_endpoint: str, kit_bucket: str) -> Callable[[str], S3Store]:
        settings = make_settings(moto_endpoint, kit_bucket)
        return lambda namespace: S3Store(settings, namespace=namespace)

    @pytest.fixture
    def make_unreachable_store(self, kit_bucket: str) -> Callable[[str], S3Store]:
        # An endpoint on a free loopback port nothing listens on: every request is refused.
        settings = make_settings(f"http://127.0.0.1:{free_port()}", kit_bucket, max_attempts=1, connect_timeout=2)
        return lambda namespace: S3Store(settings, namespace=namespace)

    @pytest.fixture
    def make_unauthorized_store(self, refusing_moto: MotoServer, kit_bucket: str) -> Callable[[str], S3Store]:
        # The kit's credentials, which this server does not know: botocore logs the answer that refuses them.
        settings = make_settings(refusing_moto.endpoint_url, kit_bucket, max_attempts=1)
        return lambda namespace: S3Store(settings, namespace=namespace)

    @pytest.fixture
    def secret_values(self) -> tuple[str, ...]:
        # The credentials both stores are configured with, which no error or repr may show; given here, not
        # only reported by the store's _secret_values(), so that the check does not depend on it.
        return (ACCESS_KEY, SECRET_KEY)
