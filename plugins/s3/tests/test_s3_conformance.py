"""The core's conformance kit, unchanged, against the S3 backend on a moto server over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from s3_fixtures import ACCESS_KEY, SECRET_KEY, make_settings

from artifactstore_core.testing import StoreConformance
from artifactstore_core.testing_servers import free_port
from artifactstore_s3 import S3Store


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
    def secret_values(self) -> tuple[str, ...]:
        # The credentials both stores are configured with, which no error or repr may show; given here, not
        # only reported by the store's _secret_values(), so that the check does not depend on it.
        return (ACCESS_KEY, SECRET_KEY)
