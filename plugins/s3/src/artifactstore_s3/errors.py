"""The one mapping from boto3/botocore exceptions to artifactstore errors.

The store's base class chains the original exception as ``__cause__``; messages here name the bucket,
the S3 error code, the HTTP status and the setting to fix, and never a credential.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from botocore import exceptions as bx

from artifactstore_core.errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    PayloadTooLargeError,
    redact,
)

__all__ = [
    "busy_code",
    "client_error_code",
    "refused_before_sending",
    "tls_refused",
    "translate_error",
    "unresolved_name",
    "virtual_host_missing",
]

_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_BUSY_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalError",
        "OperationAborted",
        "ConditionalRequestConflict",
    }
)
_TIMEOUT_CODES = frozenset({"RequestTimeout"})
_WRONG_PLACE_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
# Errors of boto3's credential chain beyond "none found": a source that is configured but cannot give
# credentials now (an SSO login missing or expired, a token or credential provider that failed).
_CREDENTIAL_SOURCE_ERRORS: tuple[type[bx.BotoCoreError], ...] = (
    bx.SSOError,
    bx.TokenRetrievalError,
    bx.UnknownCredentialError,
    bx.RefreshWithMFAUnsupportedError,
)
# The AWS config or credentials file cannot be read as botocore needs it.
_AWS_CONFIG_ERRORS: tuple[type[bx.BotoCoreError], ...] = (bx.ConfigParseError, bx.ConfigNotFound, bx.InvalidConfigError)
_CREDENTIAL_HINT = (
    "set ARTIFACT_STORE_S3_ACCESS_KEY_ID and ARTIFACT_STORE_S3_SECRET_ACCESS_KEY, or configure boto3's "
    "credential chain (AWS_PROFILE, AWS_ACCESS_KEY_ID, an instance role)"
)


# What OpenSSL says when the peer's certificate does not verify, or when the peer does not speak TLS at all
# (an https:// URL to a plain HTTP port); other TLS failures (a connection cut during the handshake) may pass.
_TLS_REFUSALS = ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "record layer failure")


def tls_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a TLS handshake the client refused: the endpoint's certificate does not verify, or
    the endpoint does not speak TLS. Repeating it fails the same way. Raises nothing."""
    if not isinstance(exc, bx.SSLError):
        return False
    text = str(exc)
    return any(refusal in text for refusal in _TLS_REFUSALS)


def unresolved_name(exc: BaseException) -> tuple[str, bool] | None:
    """The host name a connection failed to resolve, and whether the DNS answered that it does not exist
    (rather than failing for the moment); ``None``: ``exc`` is no name-resolution failure. Raises nothing."""
    if not isinstance(exc, bx.EndpointConnectionError):
        return None
    error: BaseException | None = exc.kwargs.get("error")
    seen = 0
    # botocore wraps urllib3's NameResolutionError, which chains the resolver's gaierror.
    while error is not None and not isinstance(error, socket.gaierror) and seen < 5:
        error, seen = error.__cause__ or error.__context__, seen + 1
    if not isinstance(error, socket.gaierror):
        return None
    host = urlsplit(str(exc.kwargs.get("endpoint_url", ""))).hostname or "?"
    return host, error.errno == socket.EAI_NONAME


def _virtual_host(exc: BaseException, bucket: str) -> bool:
    """Whether the request of ``exc`` addressed ``bucket`` by virtual host (``bucket.host/key``), not by path
    (``host/bucket/key``, whose host may start with the bucket's name too)."""
    parts = urlsplit(str(exc.kwargs.get("endpoint_url", "")) if isinstance(exc, bx.BotoCoreError) else "")
    path = parts.path
    return (
        bool(bucket)
        and (parts.hostname or "").startswith(f"{bucket.lower()}.")
        and path != f"/{bucket}"
        and not path.startswith(f"/{bucket}/")
    )


def virtual_host_missing(exc: BaseException, bucket: str) -> bool:
    """Whether ``exc`` is a request that addressed ``bucket`` by virtual host (``bucket.host``) and whose host
    name the DNS says does not exist: asking again cannot help. Raises nothing."""
    unresolved = unresolved_name(exc)
    return unresolved is not None and unresolved[1] and _virtual_host(exc, bucket)


def refused_before_sending(exc: BaseException) -> bool:
    """Whether a request failed before the service could act on it: no usable credentials or configuration
    (nothing was signed or sent) or a TLS handshake the client refused (nothing reached the service). Raises
    nothing."""
    if isinstance(exc, bx.ClientError):
        return False
    if isinstance(exc, bx.SSLError):
        return tls_refused(exc)
    resolved = unresolved_name(exc)
    if resolved is not None and resolved[1]:
        return True  # a name that does not exist: no attempt reached any service
    return isinstance(translate_error(exc, bucket=""), ConfigurationError)


def busy_code(code: str) -> bool:
    """Whether an S3 error code says the service is busy or failed for the moment (repeat later). Raises nothing."""
    return code in _BUSY_CODES


def client_error_code(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of a ``ClientError`` (``("", 0)`` for anything else)."""
    if not isinstance(exc, bx.ClientError):
        return "", 0
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def translate_error(exc: BaseException, *, bucket: str, secrets: Iterable[str] = ()) -> ArtifactStoreError | None:
    """Map a boto3/botocore exception to an artifactstore error; ``None`` for exceptions it does not know.

    ``secrets`` are removed from any server text quoted in the message.
    """
    where = f"bucket {bucket!r}"
    if isinstance(exc, bx.ClientError):
        code, status = client_error_code(exc)
        # Redacted before it is shortened: cutting first could leave the start of a secret behind.
        server_text = redact(str(exc.response.get("Error", {}).get("Message", "")), secrets)[:200]
        what = f"S3 error {code or '?'} (HTTP {status or '?'}) on {where}"
        if server_text:
            what += f": {server_text}"
        if code == "NoSuchBucket":
            return ConfigurationError(f"{where} does not exist; set ARTIFACT_STORE_S3_BUCKET to an existing bucket")
        if code == "InvalidBucketName":
            return ConfigurationError(f"{what}; set ARTIFACT_STORE_S3_BUCKET to a valid bucket name")
        if code in _WRONG_PLACE_CODES or status == 301:
            return ConfigurationError(
                f"{what}; set ARTIFACT_STORE_S3_REGION (or ARTIFACT_STORE_S3_ENDPOINT_URL) to the bucket's region"
            )
        if code == "NoSuchUpload":
            # Only writes have uploads: a write must never say "missing". The store says more where it
            # knows the upload (S3Store._upload); this is the fallback for any other path.
            return BackendUnavailableError(
                f"{what}; the multipart upload was aborted under us (an AbortIncompleteMultipartUpload "
                "lifecycle rule or another client); nothing was stored (retryable)"
            )
        if code in ("NoSuchKey", "NotFound") or status == 404:
            # Reads reach this; the store's writes turn their 404s into BackendUnavailableError first.
            return ArtifactNotFoundError(what)
        if code == "InvalidObjectState":
            # A 403 that is no refusal of access: the object is archived. Changing credentials never helps;
            # a restore (hours) does, so it is not retryable either.
            return BackendError(
                f"{what}; the object is archived (a lifecycle rule moved it to S3 Glacier Flexible Retrieval, Deep "
                "Archive or an Intelligent-Tiering archive tier) and cannot be read until it is restored "
                "(RestoreObject); keep the artifact prefix out of such rules"
            )
        if code == "RequestTimeTooSkewed":
            return AccessDeniedError(
                f"{what}; this machine's clock differs from the service's by more than 15 minutes, so S3 refuses "
                "its signatures: synchronise the clock (NTP)"
            )
        if code in _ACCESS_CODES or status == 403:
            return AccessDeniedError(f"{what}; check the credentials and the bucket policy ({_CREDENTIAL_HINT})")
        if code == "EntityTooLarge":
            return PayloadTooLargeError(f"{what}; the artifact is larger than the service accepts")
        if code in _TIMEOUT_CODES:
            return BackendTimeoutError(what)
        if code in _BUSY_CODES or status in (429, 500, 502, 503, 504):
            return BackendUnavailableError(f"{what} (retryable; raise ARTIFACT_STORE_S3_MAX_ATTEMPTS to retry longer)")
        return BackendError(what)
    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return BackendTimeoutError(
            f"S3 request to {where} timed out ({type(exc).__name__}); see ARTIFACT_STORE_S3_CONNECT_TIMEOUT and "
            "ARTIFACT_STORE_S3_READ_TIMEOUT"
        )
    if isinstance(exc, bx.FlexibleChecksumError):
        return ArtifactCorruptedError(f"S3 response from {where} failed its checksum: the body was damaged")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return ConfigurationError(f"no usable S3 credentials for {where}: {type(exc).__name__}; {_CREDENTIAL_HINT}")
    if isinstance(exc, _CREDENTIAL_SOURCE_ERRORS):
        # Credentials that boto3's chain cannot produce (an SSO profile without a valid login, a credential
        # process that failed): repeating the call does not help, setting them up does.
        return ConfigurationError(
            f"no usable S3 credentials for {where}: {type(exc).__name__}; {_CREDENTIAL_HINT} (for an SSO "
            "profile, log in again: aws sso login)"
        )
    if isinstance(exc, bx.ProfileNotFound):
        # The profile's name is the user's own setting, not a secret; saying it is what makes this fixable.
        profile = redact(str(exc.kwargs.get("profile", "?")), secrets)
        return ConfigurationError(
            f"the AWS profile {profile!r} is not in the AWS config files (AWS_PROFILE or another profile's "
            f"source_profile names it), so no S3 client can be made for {where}; set AWS_PROFILE to an existing "
            "profile, or unset it and set ARTIFACT_STORE_S3_ACCESS_KEY_ID and ARTIFACT_STORE_S3_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, _AWS_CONFIG_ERRORS):
        # Names the file (its path is no secret), never its contents.
        path = exc.kwargs.get("path")
        which = f" {redact(str(path), secrets)!r}" if path else ""
        return ConfigurationError(
            f"the AWS configuration{which} cannot be used for {where} ({type(exc).__name__}); fix the file that "
            "AWS_CONFIG_FILE or AWS_SHARED_CREDENTIALS_FILE names (by default ~/.aws/config and ~/.aws/credentials)"
        )
    if isinstance(exc, bx.ParamValidationError) and "Invalid bucket name" in str(exc.kwargs.get("report", "")):
        # botocore checks the name before sending anything; the name is the user's setting, no secret.
        return ConfigurationError(
            f"{where} is not a name S3 accepts (letters, digits, '.', '-' and '_', at most 255 characters, or an "
            "access point ARN); set ARTIFACT_STORE_S3_BUCKET to a valid bucket name"
        )
    if isinstance(exc, bx.EndpointResolutionError):
        # botocore's endpoint rules refuse the configuration itself (an endpoint that is not an http(s) URL,
        # a region that is not a valid name): nothing was sent, and repeating it fails the same way.
        text = redact(str(exc), secrets)[:200]
        return ConfigurationError(
            f"no S3 endpoint can be resolved for {where}: {text}; check ARTIFACT_STORE_S3_ENDPOINT_URL (unset: "
            "botocore's AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the AWS config file's endpoint_url), "
            "ARTIFACT_STORE_S3_REGION and ARTIFACT_STORE_S3_ADDRESSING_STYLE"
        )
    if isinstance(exc, bx.NoRegionError):
        return ConfigurationError(f"no region for {where}; set ARTIFACT_STORE_S3_REGION")
    if tls_refused(exc):
        # Not the network failing for a moment: the endpoint's certificate is not trusted here, or it does
        # not speak TLS. Every repetition fails the same way, so this is not retryable.
        return BackendError(
            f"the TLS handshake with the S3 endpoint for {where} failed: {redact(str(exc), secrets)[:300]}; if the "
            "endpoint uses a private CA, point ARTIFACT_STORE_S3_CA_BUNDLE (or AWS_CA_BUNDLE, for every boto3 "
            "client of the process) at its certificate; a certificate for another host name is what "
            "virtual-hosted addressing of a bucket whose name has dots meets (set "
            "ARTIFACT_STORE_S3_ADDRESSING_STYLE=path); check that "
            "ARTIFACT_STORE_S3_ENDPOINT_URL says https:// only for a TLS port"
        )
    unresolved = unresolved_name(exc)
    if unresolved is not None and _virtual_host(exc, bucket):
        host, missing = unresolved
        # botocore put the bucket in the host name (ARTIFACT_STORE_S3_ADDRESSING_STYLE=virtual; auto does so on
        # AWS only, whose DNS has every bucket's name): an S3-compatible service without a wildcard DNS record
        # for its buckets never has that name, so repeating the request cannot help; addressing by path does.
        advice = (
            "an S3-compatible service (MinIO, Ceph, a local server) is usually addressed by path: set "
            "ARTIFACT_STORE_S3_ADDRESSING_STYLE=path; otherwise check the endpoint's host name "
            "(ARTIFACT_STORE_S3_ENDPOINT_URL, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)"
        )
        if missing:
            return ConfigurationError(
                f"the virtual-hosted name of {where}, {host!r}, does not exist in the DNS (virtual-hosted "
                f"addressing puts the bucket in the host name), so no request was sent; {advice}"
            )
        return BackendUnavailableError(
            f"the virtual-hosted name of {where}, {host!r}, could not be resolved for now (the DNS did not "
            f"answer; retryable); if it never resolves, {advice}"
        )
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError)):
        return BackendUnavailableError(
            f"cannot reach S3 for {where} ({type(exc).__name__}); check ARTIFACT_STORE_S3_ENDPOINT_URL (unset: "
            "AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the AWS config file's endpoint_url) and the network"
        )
    if isinstance(exc, TimeoutError):
        return BackendTimeoutError(f"S3 request to {where} timed out ({type(exc).__name__})")
    if isinstance(exc, OSError):
        return BackendUnavailableError(f"connection to S3 for {where} failed ({type(exc).__name__})")
    if isinstance(exc, bx.BotoCoreError):
        return BackendError(f"S3 client error for {where}: {type(exc).__name__}")
    return None
