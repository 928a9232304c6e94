"""The one error mapping, as a table (fast unit tests; the fault tests prove it end to end over HTTP)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore import exceptions as bx

from artifactstore_core import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    PayloadTooLargeError,
)
from artifactstore_s3.errors import translate_error


def client_error(code: str, status: int, message: str = "text") -> bx.ClientError:
    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bx.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "expected", "retryable"),
    [
        (client_error("NoSuchBucket", 404), ConfigurationError, False),
        (client_error("InvalidBucketName", 400), ConfigurationError, False),
        (client_error("PermanentRedirect", 301), ConfigurationError, False),
        (client_error("AuthorizationHeaderMalformed", 400), ConfigurationError, False),
        (client_error("NoSuchKey", 404), ArtifactNotFoundError, False),
        (client_error("404", 404), ArtifactNotFoundError, False),
        # An upload aborted under a write (a lifecycle rule): never "missing", and a retry may succeed.
        (client_error("NoSuchUpload", 404), BackendUnavailableError, True),
        (client_error("AccessDenied", 403), AccessDeniedError, False),
        (client_error("SignatureDoesNotMatch", 403), AccessDeniedError, False),
        (client_error("ExpiredToken", 400), AccessDeniedError, False),
        (client_error("403", 403), AccessDeniedError, False),
        # 403s that no credential or policy fixes: an archived object, a clock that is off.
        (client_error("InvalidObjectState", 403), BackendError, False),
        (client_error("RequestTimeTooSkewed", 403), AccessDeniedError, False),
        (client_error("EntityTooLarge", 400), PayloadTooLargeError, False),
        (client_error("SlowDown", 503), BackendUnavailableError, True),
        (client_error("ServiceUnavailable", 503), BackendUnavailableError, True),
        (client_error("InternalError", 500), BackendUnavailableError, True),
        (client_error("BadGateway", 502), BackendUnavailableError, True),
        (client_error("TooManyRequests", 429), BackendUnavailableError, True),
        (client_error("RequestTimeout", 400), BackendTimeoutError, True),
        (client_error("InvalidArgument", 400), BackendError, False),
        (bx.EndpointConnectionError(endpoint_url="http://x"), BackendUnavailableError, True),
        (bx.ConnectionClosedError(endpoint_url="http://x"), BackendUnavailableError, True),
        (bx.ResponseStreamingError(error="reset"), BackendUnavailableError, True),
        (bx.ConnectTimeoutError(endpoint_url="http://x"), BackendTimeoutError, True),
        (bx.ReadTimeoutError(endpoint_url="http://x"), BackendTimeoutError, True),
        (bx.FlexibleChecksumError(error_msg="crc32 mismatch"), ArtifactCorruptedError, False),
        (bx.NoCredentialsError(), ConfigurationError, False),
        (bx.NoRegionError(), ConfigurationError, False),
        (bx.ParamValidationError(report="bad"), BackendError, False),
        (ConnectionResetError(104, "reset"), BackendUnavailableError, True),
        # boto3's configuration and credential sources: fixed by a setting, never by repeating the call.
        (bx.ProfileNotFound(profile="absent"), ConfigurationError, False),
        (bx.ConfigParseError(path="/home/u/.aws/config"), ConfigurationError, False),
        (bx.SSOTokenLoadError(error_msg="Token for my does not exist"), ConfigurationError, False),
        (bx.UnauthorizedSSOTokenError(), ConfigurationError, False),
        (bx.TokenRetrievalError(provider="sso", error_msg="expired"), ConfigurationError, False),
        (bx.EndpointResolutionError(msg="Custom endpoint `ftp://h` was not a valid URI"), ConfigurationError, False),
        (bx.ParamValidationError(report='Invalid bucket name "a b": must match'), ConfigurationError, False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_mapping(exc: BaseException, expected: type[BackendError], retryable: bool) -> None:
    error = translate_error(exc, bucket="my-bucket", secrets=("hunter2",))
    assert type(error) is expected
    assert error.retryable is retryable
    assert "my-bucket" in str(error)


def test_a_403_that_credentials_do_not_fix_says_what_does() -> None:
    archived = translate_error(client_error("InvalidObjectState", 403), bucket="b")
    assert archived is not None
    assert "RestoreObject" in str(archived)
    assert "credentials" not in str(archived)
    skewed = translate_error(client_error("RequestTimeTooSkewed", 403), bucket="b")
    assert skewed is not None
    assert "clock" in str(skewed)


def test_unknown_exceptions_are_left_to_the_base() -> None:
    assert translate_error(ValueError("mine"), bucket="b") is None


def test_server_text_is_quoted_without_secrets() -> None:
    error = translate_error(
        client_error("InvalidArgument", 400, "token hunter2 rejected"), bucket="b", secrets=["hunter2"]
    )
    assert error is not None
    assert "InvalidArgument" in str(error)
    assert "hunter2" not in str(error)
    assert "token ********** rejected" in str(error)


def test_a_secret_containing_another_is_masked_whole() -> None:
    # A session token that contains the secret key: masking the key first used to leave the token's tail.
    error = translate_error(
        client_error("InvalidArgument", 400, "token hunter2xyz rejected"), bucket="b", secrets=["hunter2", "hunter2xyz"]
    )
    assert error is not None
    assert "xyz" not in str(error)
    assert "token ********** rejected" in str(error)


def test_a_secret_across_the_length_limit_is_masked() -> None:
    # The server's text is shortened to 200 characters after it is redacted; shortening first used to cut
    # the secret in two and leave its first part readable.
    error = translate_error(
        client_error("InvalidArgument", 400, "x" * 195 + " hunter2 rejected"), bucket="b", secrets=["hunter2"]
    )
    assert error is not None
    assert "hunt" not in str(error)
    assert " ****" in str(error)
