"""Access policies that grant the namespace's keys: what the store needs outside them, and what it says.

A moto server in a process of its own enforces IAM (its first requests, which create the users and the bucket,
are let through unauthenticated, as ``INITIAL_NO_AUTH_ACTION_COUNT`` says): nothing is injected.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from s3_fixtures import NonSeekable

from artifactstore_core import AccessDeniedError, Message
from artifactstore_s3 import S3Store
from artifactstore_s3.settings import MIB
from artifactstore_s3.testing import MotoServer

pytestmark = pytest.mark.timeout(120)

BUCKET = "policies"
# The users of the server: what each is granted beyond the listings (see policy).
GRANTS: dict[str, tuple[str, ...]] = {
    "namespace": ("artifactstore/ns/",),
    "documented": ("artifactstore/ns/", "artifactstore/.probe/", "artifactstore/.staging/"),
    # As documented, but explicitly denied deleting the staging objects: they are left behind.
    "undeleting": ("artifactstore/ns/", "artifactstore/.probe/", "artifactstore/.staging/"),
}
DENIED = {"undeleting": ("s3:DeleteObject", "artifactstore/.staging/")}
# Unauthenticated requests that set the server up: three per user (create it, its key, its policy) and the bucket.
SETUP_REQUESTS = 3 * len(GRANTS) + 1
ARTIFACTS = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def policy(*prefixes: str, denied: tuple[str, str] | None = None) -> str:
    """A user policy granting the artifacts' actions on ``prefixes`` of the bucket and the listings on it, and
    denying ``denied`` (an action and a prefix) explicitly."""
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": ARTIFACTS,
            "Resource": [f"arn:aws:s3:::{BUCKET}/{prefix}*" for prefix in prefixes],
        },
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
            "Resource": f"arn:aws:s3:::{BUCKET}",
        },
    ]
    if denied is not None:
        statements.append({"Effect": "Deny", "Action": denied[0], "Resource": f"arn:aws:s3:::{BUCKET}/{denied[1]}*"})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, dict[str, Any]]]:
    """A moto server that enforces IAM, with the bucket and the users of :data:`GRANTS`: ``namespace`` (granted
    the namespace ``ns``'s keys only), ``documented`` (granted them and the reserved keys, as docs/s3.md says)
    and ``undeleting`` (as documented, but denied deleting the staging objects)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", str(SETUP_REQUESTS))
        server = MotoServer(Path(tmp_path_factory.mktemp("iam-moto"))).start()
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="AKIASETUP0000000000",
            aws_secret_access_key="setup",
        )
        users: dict[str, Any] = {}
        for name, prefixes in GRANTS.items():
            iam.create_user(UserName=name)
            users[name] = iam.create_access_key(UserName=name)["AccessKey"]
            document = policy(*prefixes, denied=DENIED.get(name))
            iam.put_user_policy(UserName=name, PolicyName="artifacts", PolicyDocument=document)
        iam.close()
        setup = server.client(access_key_id="AKIASETUP0000000000", secret_access_key="setup")
        setup.create_bucket(Bucket=BUCKET)
        setup.close()
        yield server, users
    finally:
        server.stop()


def store_of(server: MotoServer, key: dict[str, Any], **overrides: Any) -> S3Store:
    return S3Store(
        server.settings(
            BUCKET,
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
            max_attempts=2,
            **overrides,
        ),
        namespace="ns",
    )


def test_a_refused_probe_names_its_key_and_what_to_grant(iam_moto: tuple[MotoServer, dict[str, Any]]) -> None:
    server, users = iam_moto
    with store_of(server, users["namespace"]) as store:
        assert not store.exists("a")  # the namespace's own keys are granted
        with pytest.raises(AccessDeniedError) as info:
            store.save("a", Message(content=b"x"))
    text = str(info.value)
    assert "artifactstore/.probe/*" in text
    assert "s3:PutObject" in text
    assert "s3:DeleteObject" in text
    assert "ARTIFACT_STORE_S3_CONDITIONAL_WRITES=trust" in text
    assert users["namespace"]["SecretAccessKey"] not in text


def test_a_refused_staging_upload_names_its_key_and_what_to_grant(
    iam_moto: tuple[MotoServer, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    server, users = iam_moto
    small = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB}
    caplog.set_level(logging.WARNING, logger="artifactstore_s3")
    with store_of(server, users["namespace"], conditional_writes="trust", **small) as store:
        store.save_stream("seekable", io.BytesIO(os.urandom(6 * MIB)))  # no staging key needed
        with pytest.raises(AccessDeniedError) as info:
            store.save_stream("piped", NonSeekable(os.urandom(6 * MIB)))
        assert not store.exists("piped")
    text = str(info.value)
    assert "artifactstore/.staging/*" in text
    assert "s3:PutObject" in text
    assert "s3:GetObject" in text
    # The staging object was never created: the delete sent after the refusal was refused too, and logged a
    # warning that it "could not be deleted", pointing at an object that does not exist.
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text


def test_a_staging_object_left_behind_is_still_warned_about(
    iam_moto: tuple[MotoServer, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    server, users = iam_moto
    payload = os.urandom(6 * MIB)
    small = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB}
    caplog.set_level(logging.WARNING, logger="artifactstore_s3")
    with store_of(server, users["undeleting"], conditional_writes="trust", **small) as store:
        store.save_stream("left", NonSeekable(payload))
        assert store.get("left").content == payload
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "could not delete the staging object 'artifactstore/.staging/" in warnings[0]
    assert "AccessDenied" in warnings[0]
    setup = server.client(
        access_key_id=users["documented"]["AccessKeyId"], secret_access_key=users["documented"]["SecretAccessKey"]
    )
    try:
        left = setup.list_objects_v2(Bucket=BUCKET, Prefix="artifactstore/.staging/").get("Contents", [])
    finally:
        setup.close()
    assert [entry["Key"] for entry in left] == [warnings[0].split("'")[1]]


def test_the_documented_grants_are_enough(iam_moto: tuple[MotoServer, dict[str, Any]]) -> None:
    server, users = iam_moto
    payload = os.urandom(6 * MIB)
    small = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB}
    with store_of(server, users["documented"], **small) as store:
        store.save("small", Message(content=b"x"))
        store.save("large", Message(content=payload))  # the completion's probe too
        store.save_stream("piped", NonSeekable(payload))
        assert store.get("piped").content == payload
        assert {"large", "piped", "small"} <= {info.step_id for info in store.list()}
        assert store.delete("small")


def test_the_documented_lifecycle_rules_are_accepted(raw: Any, bucket: str) -> None:
    # docs/s3.md gives them to paste into put-bucket-lifecycle-configuration: they must be a valid configuration
    # whose rules cover the store's own prefixes.
    page = (Path(__file__).parents[3] / "docs" / "s3.md").read_text(encoding="utf-8")
    block = page.split("put-bucket-lifecycle-configuration", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    rules = json.loads(block)
    raw.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
    stored = raw.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert {rule["Filter"]["Prefix"] for rule in stored} == {"artifactstore/", "artifactstore/.staging/"}
    assert any(rule.get("AbortIncompleteMultipartUpload") == {"DaysAfterInitiation": 1} for rule in stored)
