"""Settings: env var names, validation that names the variable, secrets never shown, plugin registration."""

from __future__ import annotations

import traceback
import uuid
from typing import Any

import pytest
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, make_settings

from artifactstore_core import ConfigurationError, Message, create_store
from artifactstore_core.registry import plugin_host, reset_plugin_host
from artifactstore_core.settings import load_settings
from artifactstore_s3 import S3Settings, S3Store

ENV_PREFIX = "ARTIFACT_STORE_S3_"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ARTIFACT_STORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no config file from the checkout


def test_every_field_is_described_and_has_its_env_var() -> None:
    for name, field in S3Settings.model_fields.items():
        assert field.description, name
        assert S3Settings.env_name(name) == ENV_PREFIX + name.upper()
    assert "bucket" in S3Settings.model_fields


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_S3_BUCKET", "from-env")
    monkeypatch.setenv("ARTIFACT_STORE_S3_PART_SIZE", str(16 * 1024 * 1024))
    monkeypatch.setenv("ARTIFACT_STORE_S3_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("ARTIFACT_STORE_S3_ACCESS_KEY_ID", ACCESS_KEY)
    settings = load_settings(S3Settings)
    assert (settings.bucket, settings.part_size) == ("from-env", 16 * 1024 * 1024)
    assert settings.secret_access_key is not None
    assert settings.secret_access_key.get_secret_value() == SECRET_KEY
    assert SECRET_KEY not in repr(settings)
    assert SECRET_KEY not in str(settings.model_dump())


def test_a_store_needs_a_bucket() -> None:
    with pytest.raises(ConfigurationError) as info:
        S3Store(S3Settings())
    assert "ARTIFACT_STORE_S3_BUCKET" in str(info.value)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("PART_SIZE", "1024"),
        ("MULTIPART_THRESHOLD", "10"),
        # Above S3's largest single PUT: payloads below it would be sent whole and refused after the upload.
        ("MULTIPART_THRESHOLD", str(5 * 1024**3 + 1)),
        ("MAX_ATTEMPTS", "0"),
        ("CONDITIONAL_WRITES", "maybe"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(ENV_PREFIX + env, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(S3Settings)
    assert ENV_PREFIX + env in str(info.value)


@pytest.mark.parametrize("field", ["ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN"])
@pytest.mark.parametrize("value", ["credential-canary-7e1\n", "credential-canary-7e1\r\n", "credential\tcanary-7e1"])
def test_a_credential_with_a_control_character_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    # A line break left by the file or secret the value came from: sent, it failed every request with a
    # retryable "cannot reach S3" whose chained error quoted the key id or the token.
    monkeypatch.setenv(ENV_PREFIX + "ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv(ENV_PREFIX + "SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv(ENV_PREFIX + field, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(S3Settings, bucket="b")
    assert ENV_PREFIX + field in str(info.value)
    assert ("line break" if value.endswith("\n") else "control character") in str(info.value)
    assert "canary-7e1" not in "".join(traceback.format_exception(info.value))


def test_half_explicit_credentials_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(S3Settings, bucket="b", secret_access_key=SECRET_KEY)
    assert "ARTIFACT_STORE_S3_ACCESS_KEY_ID" in str(info.value)
    assert SECRET_KEY not in str(info.value)


def test_create_store_finds_the_plugin_by_its_entry_point(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    import boto3

    bucket = "create-store-bucket"
    boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION).client(
        "s3", endpoint_url=moto_endpoint
    ).create_bucket(Bucket=bucket)
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "s3")
    monkeypatch.setenv("ARTIFACT_STORE_NAMESPACE", "run-42")
    monkeypatch.setenv("ARTIFACT_STORE_S3_BUCKET", bucket)
    monkeypatch.setenv("ARTIFACT_STORE_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("ARTIFACT_STORE_S3_REGION", REGION)
    monkeypatch.setenv("ARTIFACT_STORE_S3_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("ARTIFACT_STORE_S3_SECRET_ACCESS_KEY", SECRET_KEY)
    reset_plugin_host()
    try:
        spec = plugin_host().load("s3")
        assert spec.capabilities.streaming
        assert spec.capabilities.cross_process
        with create_store() as store:
            assert isinstance(store, S3Store)
            assert store.namespace == "run-42"
            store.save("a", Message(content={"x": 1}))
            assert store.get("a").content == {"x": 1}
            assert store.key_of("a") == "artifactstore/run-42/a"
            store.clear()
        with create_store(prefix="elsewhere") as store:
            assert isinstance(store, S3Store)
            assert store.key_of("a") == "elsewhere/run-42/a"
    finally:
        reset_plugin_host()


@pytest.mark.parametrize("value", ["ftp://127.0.0.1:9000", "127.0.0.1:9000", "http://127.0.0.1:99999", "http://"])
def test_an_endpoint_that_is_no_http_url_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # botocore builds a client on such an endpoint and refuses it only at the first request.
    monkeypatch.setenv(ENV_PREFIX + "ENDPOINT_URL", value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(S3Settings)
    assert ENV_PREFIX + "ENDPOINT_URL" in str(info.value)


@pytest.fixture
def aws_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """An AWS config file of the test's own (written by the test), no AWS credentials in the environment and
    no instance metadata: boto3's chain sees only that file."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    config = tmp_path / "aws-config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))  # the SSO token cache is under ~/.aws/sso
    return config


@pytest.mark.timeout(60)
def test_a_missing_aws_profile_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, aws_files: Any, moto_endpoint: str
) -> None:
    # boto3 refuses to make a session for a profile that does not exist, explicit keys or not.
    monkeypatch.setenv("AWS_PROFILE", "absent-profile")
    with pytest.raises(ConfigurationError) as info:
        S3Store(make_settings(moto_endpoint, "any-bucket"))
    assert "AWS_PROFILE" in str(info.value)
    assert "absent-profile" in str(info.value)
    assert SECRET_KEY not in str(info.value)


@pytest.mark.timeout(60)
def test_an_unreadable_aws_config_file_is_a_configuration_error(aws_files: Any, moto_endpoint: str) -> None:
    aws_files.write_text("[default\nregion = us-east-1\n")
    with pytest.raises(ConfigurationError) as info:
        S3Store(make_settings(moto_endpoint, "any-bucket"))
    assert str(aws_files) in str(info.value)


@pytest.mark.timeout(60)
def test_an_sso_profile_without_a_login_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, aws_files: Any, moto_endpoint: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The SSO token is looked for when the first request is signed: the store is made, its save fails.
    bucket = f"sso-{uuid.uuid4().hex[:16]}"
    raw.create_bucket(Bucket=bucket)
    aws_files.write_text(
        "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\nsso_role_name = Dev\n"
        "region = us-east-1\n[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\n"
        "sso_region = us-east-1\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "dev")
    store = S3Store(S3Settings(bucket=bucket, endpoint_url=moto_endpoint, max_attempts=1), namespace="n")
    try:
        with pytest.raises(ConfigurationError) as info:
            store.save("a", Message(content=b"x"))
        assert "aws sso login" in str(info.value)
        assert not info.value.retryable
    finally:
        store.close()
    assert raw.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    # Nothing was sent: no probe object to delete, and no warning about one.
    assert not [record for record in caplog.records if "probe object" in record.getMessage()]


@pytest.mark.timeout(60)
def test_an_invalid_bucket_name_names_the_variable(moto_endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    # botocore refuses the name before sending anything; it used to come out as a BackendError naming only
    # ParamValidationError, after a warning about a probe object that was never written.
    store = S3Store(make_settings(moto_endpoint, "not a bucket!"))
    try:
        with pytest.raises(ConfigurationError) as info:
            store.save("a", Message(content=b"x"))
    finally:
        store.close()
    assert "ARTIFACT_STORE_S3_BUCKET" in str(info.value)
    assert not [record for record in caplog.records if "probe object" in record.getMessage()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
def test_chain_credentials_with_a_line_break_are_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, aws_files: Any, moto_endpoint: str, variable: str
) -> None:
    credentials = {
        "AWS_ACCESS_KEY_ID": "AKIACHAINCANARY00000",
        "AWS_SECRET_ACCESS_KEY": "chain-secret-canary",
        "AWS_SESSION_TOKEN": "chain-token-canary",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value + "\n" if name == variable else value)
    with pytest.raises(ConfigurationError) as info:
        S3Store(make_settings(moto_endpoint, "any-bucket", access_key_id=None, secret_access_key=None))
    assert variable in str(info.value)
    assert "line break" in str(info.value)
    shown = "".join(traceback.format_exception(info.value))
    assert all(value not in shown for value in credentials.values())


@pytest.mark.parametrize(
    "value",
    ["http://127.0.0.1:9000?region=x", "http://127.0.0.1:9000/s3/?", "http://127.0.0.1:9000#/s3", "http://h:9000/#"],
)
def test_an_endpoint_with_a_query_or_a_fragment_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # A query was accepted here and refused at the first request ("not a valid URI"); a fragment was dropped
    # by botocore without a word, with whatever path followed the '#'.
    monkeypatch.setenv(ENV_PREFIX + "ENDPOINT_URL", value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(S3Settings)
    assert ENV_PREFIX + "ENDPOINT_URL" in str(info.value)
    assert ("query" if "?" in value else "fragment") in str(info.value)


@pytest.mark.parametrize(
    "value", ["http://key:canary-7e1@127.0.0.1:9000?x=1", "https://h/?X-Amz-Security-Token=canary-7e1#frag"]
)
def test_an_endpoint_refused_for_its_query_never_shows_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_PREFIX + "ENDPOINT_URL", value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(S3Settings)
    assert "canary-7e1" not in "".join(traceback.format_exception(info.value))


@pytest.mark.timeout(60)
def test_a_virtual_hosted_name_that_does_not_exist_says_to_address_by_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # botocore puts the bucket in the host name (bucket.s3.invalid), which no DNS has (RFC 6761): this was a
    # retryable "cannot reach S3" that never succeeds, after max_attempts lookups, with a warning about a
    # probe object that was never written, and no word of the addressing style.
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    store = S3Store(make_settings("http://s3.invalid:9000", bucket, addressing_style="virtual", max_attempts=3))
    attempts: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: attempts.append(request.url))
    try:
        with caplog.at_level("WARNING"), pytest.raises(ConfigurationError) as info:
            store.save("a", Message(content=b"x"))
    finally:
        store.close()
    message = str(info.value)
    assert f"'{bucket}.s3.invalid'" in message
    assert "ARTIFACT_STORE_S3_ADDRESSING_STYLE=path" in message
    assert not info.value.retryable
    assert len(attempts) == 1  # not looked up again: the DNS said the name does not exist
    assert "probe object" not in caplog.text  # nothing was sent, so there is nothing to delete


@pytest.mark.timeout(60)
def test_an_endpoint_from_aws_endpoint_url_that_botocore_refuses_names_that_variable(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str
) -> None:
    # botocore reads AWS_ENDPOINT_URL_S3 when the store's setting is unset, and refuses a query in it at the
    # first request: the message named only ARTIFACT_STORE_S3_ENDPOINT_URL, which was not set.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"{moto_endpoint}?x=1")
    store = S3Store(make_settings(moto_endpoint, "any-bucket", endpoint_url=None, conditional_writes="trust"))
    try:
        with pytest.raises(ConfigurationError) as info:
            store.save("a", Message(content=b"x"))
    finally:
        store.close()
    assert "AWS_ENDPOINT_URL_S3" in str(info.value)
