"""The credentials of the settings never reach a log record, botocore's DEBUG wire trace included."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from s3_fixtures import ACCESS_KEY, SECRET_KEY

from artifactstore_core import ArtifactNotFoundError, Message
from artifactstore_s3 import S3Store

TOKEN = "session-token-canary-7d41b0"  # a canary: no credential of any deployment
MIB = 1024 * 1024


@pytest.mark.timeout(120)
def test_botocore_debug_records_carry_no_credential(
    new_s3_store: Callable[..., S3Store], caplog: pytest.LogCaptureFixture
) -> None:
    # A pipeline that turns on DEBUG for everything (logging.basicConfig(level=logging.DEBUG)) gets
    # botocore's wire trace: each request's headers (X-Amz-Security-Token, Authorization with the key id)
    # and the canonical request it signs.
    caplog.set_level(logging.DEBUG)
    store = new_s3_store(session_token=TOKEN, multipart_threshold=5 * MIB, part_size=5 * MIB)
    store.save("small", Message(content=b"x"))
    store.save("large", Message(content=b"y" * (6 * MIB)))
    assert store.get("small").content == b"x"
    assert sorted(info.step_id for info in store.list()) == ["large", "small"]
    with pytest.raises(ArtifactNotFoundError):
        store.get("missing")
    store.delete("small")
    store.close()

    trace = [record for record in caplog.records if record.name.startswith("botocore")]
    assert any("X-Amz-Security-Token" in record.getMessage() for record in trace)  # the trace is there
    for record in caplog.records:
        message = record.getMessage()
        for secret in (TOKEN, ACCESS_KEY, SECRET_KEY):
            assert secret not in message, (record.name, secret)
    assert any("**********" in record.getMessage() for record in trace)


@pytest.mark.timeout(60)
def test_a_closed_store_stops_masking_its_secrets(new_s3_store: Callable[..., S3Store]) -> None:
    from artifactstore_s3.logs import SECRETS_FILTER

    store = new_s3_store(session_token=TOKEN)
    assert TOKEN in SECRETS_FILTER._secrets
    store.close()
    assert TOKEN not in SECRETS_FILTER._secrets
