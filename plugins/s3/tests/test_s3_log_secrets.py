"""Credentials never reach a log record, botocore's DEBUG wire trace included, whatever their source."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import ACCESS_KEY, SECRET_KEY

from artifactstore_core import ArtifactNotFoundError, Message
from artifactstore_core.testing_errors import reachable_text
from artifactstore_s3 import S3Store
from artifactstore_s3.logs import SECRETS_FILTER

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
    store = new_s3_store(session_token=TOKEN)
    assert TOKEN in SECRETS_FILTER._secrets
    store.close()
    assert TOKEN not in SECRETS_FILTER._secrets


ENV_KEY = "AKIAENVCANARY0000001"
ENV_SECRET = "env-secret-canary-91ab0f"  # canaries: no credential of any deployment
ENV_TOKEN = "env-token-canary-77cd2e"

# A credential_process that issues a new set of temporary credentials on every call, and records each set.
# The first set expires in five minutes (inside botocore's refresh window: the first request refreshes it),
# the next ones in an hour, as a role's credentials do when the first ones were cached near their end.
CREDENTIAL_PROCESS = """\
import datetime, json, pathlib, sys, uuid
issued = pathlib.Path(sys.argv[1])
minutes = 60 if issued.exists() else 5
n = uuid.uuid4().hex[:12]
values = {
    "Version": 1,
    "AccessKeyId": "AKIAPROC" + n.upper(),
    "SecretAccessKey": "proc-secret-canary-" + n,
    "SessionToken": "proc-token-canary-" + n,
    "Expiration": (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)).isoformat(),
}
with issued.open("a") as out:
    out.write(" ".join((values["AccessKeyId"], values["SecretAccessKey"], values["SessionToken"])) + "\\n")
print(json.dumps(values))
"""


def _no_aws_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing of this machine's AWS setup reaches boto3's chain."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _record_signatures(store: S3Store) -> list[str]:
    """The signature and session token of every request the store's client sends, as they are sent."""
    sent: list[str] = []

    def before_send(request: Any, **_: Any) -> None:
        authorization = request.headers.get("Authorization", b"")
        authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
        sent.extend(re.findall(r"Signature=([0-9a-f]+)", authorization))

    store.client.meta.events.register_first("before-send.s3", before_send)
    return sent


def _exercise(store: S3Store) -> None:
    store.save("small", Message(content=b"x"))
    assert store.get("small").content == b"x"
    assert [info.step_id for info in store.list()] == ["small"]
    with pytest.raises(ArtifactNotFoundError):
        store.get("missing")
    store.delete("small")


def _assert_clean(records: list[logging.LogRecord], secrets: list[str]) -> None:
    trace = [record for record in records if record.name.startswith("botocore")]
    assert any("Authorization" in record.getMessage() for record in trace)  # the trace is there
    assert any("**********" in record.getMessage() for record in trace)
    for record in records:
        message = record.getMessage()
        for secret in secrets:
            assert secret not in message, (record.name, secret)


@pytest.mark.timeout(120)
def test_credentials_from_the_environment_are_masked_too(
    new_s3_store: Callable[..., S3Store],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # They used to appear in clear: the filter knew only the settings' credentials.
    _no_aws_setup(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", ENV_TOKEN)
    caplog.set_level(logging.DEBUG)
    store = new_s3_store(access_key_id=None, secret_access_key=None)
    signatures = _record_signatures(store)
    _exercise(store)
    store.close()

    assert len(signatures) >= 5
    _assert_clean(caplog.records, [ENV_KEY, ENV_SECRET, ENV_TOKEN, *signatures])


@pytest.mark.timeout(120)
def test_refreshed_credentials_of_a_profile_are_masked_too(
    new_s3_store: Callable[..., S3Store],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Temporary credentials that boto3 refreshes while the store is open (a role's, an SSO login's), here
    # from a credential_process.
    _no_aws_setup(monkeypatch, tmp_path)
    script, issued = tmp_path / "credentials.py", tmp_path / "issued.txt"
    script.write_text(CREDENTIAL_PROCESS)
    (tmp_path / "aws-config").write_text(
        f"[profile rotating]\ncredential_process = {sys.executable} {script} {issued}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    caplog.set_level(logging.DEBUG)
    store = new_s3_store(access_key_id=None, secret_access_key=None)
    signatures = _record_signatures(store)
    _exercise(store)
    sets = [line.split() for line in issued.read_text().splitlines()]
    assert len(sets) == 2  # refreshed once
    # The set the last request signed with is registered itself, the secret key too (which botocore does not
    # log, but a server's answer or another library might quote), and forgotten when the store closes.
    assert set(sets[-1]) <= set(SECRETS_FILTER._secrets)
    store.close()
    assert not set(sets[-1]) & set(SECRETS_FILTER._secrets)
    _assert_clean(caplog.records, [value for values in sets for value in values] + signatures)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        # An STS AssumeRole answer, as botocore.parsers logs its body before any client uses the credentials.
        (
            "Response body:\nb'<AssumeRoleResult><Credentials><AccessKeyId>ASIASTSCANARY</AccessKeyId>"
            "<SecretAccessKey>sts-secret-canary</SecretAccessKey><SessionToken>sts-token-canary</SessionToken>"
            "</Credentials></AssumeRoleResult>'",
            ("ASIASTSCANARY", "sts-secret-canary", "sts-token-canary"),
        ),
        # An SSO GetRoleCredentials answer (JSON).
        (
            'Response body:\nb\'{"roleCredentials": {"accessKeyId": "ASIASSOCANARY", "secretAccessKey": '
            '"sso-secret-canary", "sessionToken": "sso-token-canary", "expiration": 1}}\'',
            ("ASIASSOCANARY", "sso-secret-canary", "sso-token-canary"),
        ),
        # A presigned URL.
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAURLCANARY%2F2026"
            "%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Security-Token=url-token%2Fcanary%3D&X-Amz-Signature="
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ("ASIAURLCANARY", "url-token", "0123456789abcdef"),
        ),
        # A request signed with the legacy SigV2 (signature_version="s3"), and such a presigned URL.
        (
            "headers={'Authorization': b'AWS AKIAV2CANARY:c2lnbmF0dXJlLWNhbmFyeQ==', 'Date': b'x'}",
            ("AKIAV2CANARY", "c2lnbmF0dXJlLWNhbmFyeQ"),
        ),
        (
            "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIAV2URL&Signature=c2lnbmF0dXJl%2Bcanary%3D&Expires=1",
            ("AKIAV2URL", "c2lnbmF0dXJl"),
        ),
        # botocore.auth's signature line.
        ("Signature:\n" + "ab" * 32, ("abababab",)),
    ],
    ids=["sts", "sso", "presigned-url", "sigv2-header", "sigv2-url", "signature-line"],
)
def test_what_botocore_writes_of_anyones_credentials_is_masked(text: str, secret: tuple[str, ...]) -> None:
    record = logging.LogRecord("botocore.parsers", logging.DEBUG, __file__, 1, "%s", (text,), None)
    assert SECRETS_FILTER.filter(record)
    message = record.getMessage()
    assert "**********" in message
    for value in secret:
        assert value not in message, value


def test_a_logged_exception_keeps_no_suppressed_context_that_shows_a_credential() -> None:
    # botocore logs an exception raised "from None" in the except block of one that quoted the endpoint URL:
    # no traceback prints that context, but an error reporter that walks __context__ found the password.
    password = "log-context-" + "canary-2b7e"
    try:
        try:
            raise OSError(f"cannot connect to http://key:{password}@127.0.0.1:9")
        except OSError:
            raise ConnectionError("connection failed") from None
    except ConnectionError as exc:
        info = (type(exc), exc, exc.__traceback__)
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1, "retrying", None, info)
    assert SECRETS_FILTER.filter(record)
    assert record.exc_info is not None
    assert record.exc_info[1] is not None
    assert "ConnectionError: connection failed" in str(record.exc_info[1])
    assert password not in reachable_text(record.exc_info[1])
