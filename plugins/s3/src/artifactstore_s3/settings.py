"""Settings of the S3 backend (environment prefix ``ARTIFACT_STORE_S3_``, config table ``[s3]``).

Credentials come from boto3's normal chain (environment, shared config and credentials files, container
and instance roles) unless :attr:`S3Settings.access_key_id` and :attr:`S3Settings.secret_access_key` are
set; those two and :attr:`S3Settings.session_token` are :class:`~pydantic.SecretStr` and never appear in a
repr, a log line or an error message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from artifactstore_core import BackendSettings

__all__ = ["MIB", "MIN_PART_SIZE", "S3Settings", "credential_problem"]

MIB = 1024 * 1024
#: S3's smallest part (every part of a multipart upload but the last).
MIN_PART_SIZE = 5 * MIB
#: S3's largest part.
MAX_PART_SIZE = 5 * 1024 * MIB

# C0 controls and DEL: no S3 credential holds one, and a line break in one that goes into a header (the key id,
# the session token) makes http.client refuse the request with a ValueError that quotes the whole header value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def credential_problem(value: str) -> str | None:
    """What makes ``value`` unusable as an S3 credential (``None``: nothing), without quoting any of it.

    A control character, most often the line break that ends the file or the secret a credential was read
    from: in the access key id or the session token it makes every request fail before it is sent, as an
    error that quotes the credential (which botocore reports as a connection failure), and in the secret
    key every signature. Raises nothing.
    """
    if not _CONTROL.search(value):
        return None
    if value.rstrip("\r\n") != value and not _CONTROL.search(value.rstrip("\r\n")):
        return (
            "ends with a line break (left by the file or secret it was read from?); no S3 service accepts it, remove it"
        )
    return "contains a control character (a line break, a tab); no S3 service accepts it, remove it"


class S3Settings(BackendSettings):
    """Settings of the S3 backend (prefix ``ARTIFACT_STORE_S3_``, config table ``[s3]``).

    Every field can be set by an environment variable named ``ARTIFACT_STORE_S3_<FIELD>``, e.g.
    ``ARTIFACT_STORE_S3_BUCKET`` or ``ARTIFACT_STORE_S3_ENDPOINT_URL``. ``bucket`` may stay unset while
    settings are merely loaded (``artifactstore backends`` lists the backend without it); creating a store
    without it raises :class:`~artifactstore_core.errors.ConfigurationError`.
    """

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_S3_", extra="ignore")
    config_table = "s3"

    bucket: str | None = Field(
        default=None,
        description="Name of the bucket that holds the artifacts (required to create a store). The bucket "
        "must exist; the backend never creates or configures buckets.",
    )
    prefix: str = Field(
        default="artifactstore",
        description="Key prefix under which every namespace lives: keys are <prefix>/<namespace>/<step id>, "
        "both encoded. Leading and trailing '/' are ignored; empty puts namespaces at the bucket's top level. "
        "At most 446 bytes, so that every legal id fits S3's 1,024-byte key limit.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible service (MinIO, Ceph, R2, a local test server), e.g. "
        "http://127.0.0.1:9000. Unset: botocore's own (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the AWS config "
        "file), else AWS S3 for the region. No query or fragment, and no user info: credentials go in "
        "ARTIFACT_STORE_S3_ACCESS_KEY_ID / ARTIFACT_STORE_S3_SECRET_ACCESS_KEY, which are kept secret.",
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates this store trusts for an https:// endpoint (a private CA "
        "of an S3-compatible service), instead of the default bundle; for this store's client only, unlike "
        "AWS_CA_BUNDLE, which every boto3 client of the process reads. Checked when a store is created: a file "
        "that is missing, unreadable or holds no certificate is a ConfigurationError.",
    )
    region: str | None = Field(
        default=None, description="AWS region of the bucket. Unset: from boto3's configuration chain."
    )
    addressing_style: Literal["auto", "virtual", "path"] = Field(
        default="auto",
        description="How the bucket appears in request URLs: 'virtual' (bucket.host), 'path' (host/bucket; "
        "most S3-compatible services) or 'auto' (botocore decides: virtual on AWS S3, path on an endpoint that "
        "is set).",
    )
    multipart_threshold: int = Field(
        default=32 * MIB,
        ge=MIN_PART_SIZE,
        # S3 refuses a single PutObject over 5 GiB, and only after the whole body was sent.
        le=MAX_PART_SIZE,
        description="Payloads of at least this many bytes are uploaded in parts (multipart upload), in "
        "parallel; smaller ones in one PUT (5 MiB to 5 GiB: S3 refuses a single PUT over 5 GiB).",
    )
    part_size: int = Field(
        default=8 * MIB,
        ge=MIN_PART_SIZE,
        le=MAX_PART_SIZE,
        description="Size of each part of a multipart upload, in bytes (S3 allows 5 MiB to 5 GiB and at most "
        "10,000 parts, so the largest artifact is 10,000 x part_size). A streamed upload holds at most "
        "part_size x max_concurrency bytes of payload in memory (a stream that cannot seek first buffers up "
        "to multipart_threshold).",
    )
    max_concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most parts uploaded at once by one upload, and most requests in flight for one "
        "save_many, get_many or list.",
    )
    max_pool_connections: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Most connections to the service the client keeps open for reuse (botocore's "
        "max_pool_connections), at least 2 x max_concurrency + 2 whatever this says (the store's own batch and "
        "part workers). Set it to at least the number of threads that share one store plus that: past it, "
        "requests still run, but each on a new connection that is closed after it (a new TLS handshake; urllib3 "
        "warns 'Connection pool is full, discarding connection'). Connections are opened only when needed.",
    )
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        default="standard",
        description="botocore's retry mode: 'standard' retries throttling, 5xx and connection errors with "
        "exponential backoff; 'adaptive' adds client-side rate limiting.",
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Most HTTP attempts per request, the first one included (1 disables retries).",
    )
    checksum_calculation: Literal["when_supported", "when_required"] | None = Field(
        default=None,
        description="botocore's request_checksum_calculation for this store's client: 'when_supported' sends "
        "a CRC32 of every uploaded body, and multipart uploads then declare CRC32 so that S3 checks every "
        "part again when it assembles them; 'when_required' sends checksums only where S3 requires them, "
        "for an S3-compatible service that refuses them. Unset: botocore's own setting "
        "(AWS_REQUEST_CHECKSUM_CALCULATION or the AWS config file; 'when_supported' by default).",
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for a connection.")
    read_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for the server to send the next bytes of a response."
    )
    access_key_id: SecretStr | None = Field(
        default=None,
        description="Access key id, when not taken from boto3's credential chain (set together with "
        "secret_access_key). Secret: never shown.",
    )
    secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key that goes with access_key_id. Secret: never shown."
    )
    session_token: SecretStr | None = Field(
        default=None, description="Session token of temporary credentials. Secret: never shown."
    )
    conditional_writes: Literal["require", "warn", "trust"] = Field(
        default="require",
        description="Write-once relies on the endpoint honouring 'If-None-Match: *' on PutObject and on "
        "CompleteMultipartUpload. Probes run once per store: before its first write (write a reserved key "
        "twice, then delete it) and before its first write-once save in parts (complete two multipart uploads "
        "of a reserved key, then delete it). 'require' refuses such writes (ConfigurationError) on an endpoint "
        "that ignores the condition there; 'warn' logs a warning and falls back to a check-then-write that is "
        "not atomic between concurrent writers; 'trust' skips the probes.",
    )
    probe_at_start: bool = Field(
        default=False,
        description="Run both conditional-write probes when the store is created (so a missing bucket, bad "
        "credentials or an endpoint without conditional writes fail at once) instead of before the first "
        "write (and the first save in parts).",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        # A URL is shown in reprs and logs; credentials in it would be too.
        if "@" in parts.netloc:
            raise ValueError("must not contain user info; set the access key settings instead")
        # botocore accepts any of these when the client is built and refuses them only at the first request
        # (EndpointResolutionError, "not a valid URI"), far from the setting that causes it.
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000")
        # botocore refuses a query at the first request ("not a valid URI"); a fragment it drops without a word,
        # and with it whatever path followed the '#'. Neither is part of an endpoint, so say so now.
        # (A bare '?' or '#' leaves urlsplit's query or fragment empty: hence the raw checks too.)
        if parts.query or value.split("#", 1)[0].endswith("?"):
            raise ValueError("must not contain a query ('?...'): an endpoint is scheme, host, port and path")
        if parts.fragment or value.endswith("#"):
            raise ValueError("must not contain a fragment ('#...'): an endpoint is scheme, host, port and path")
        try:
            parts.port  # noqa: B018 (urlsplit checks the port only when it is asked for)
        except ValueError as exc:
            raise ValueError(f"has an invalid port ({exc})") from None
        return value

    @field_validator("access_key_id", "secret_access_key", "session_token")
    @classmethod
    def _check_credential(cls, value: SecretStr | None) -> SecretStr | None:
        # Refused here, naming the variable: sent, such a value fails every request with an error that quotes it.
        if value is not None:
            problem = credential_problem(value.get_secret_value())
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        return value.strip("/")

    @model_validator(mode="after")
    def _check_credentials(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "set both ARTIFACT_STORE_S3_ACCESS_KEY_ID and ARTIFACT_STORE_S3_SECRET_ACCESS_KEY, or neither "
                "(to use boto3's credential chain)"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("ARTIFACT_STORE_S3_SESSION_TOKEN needs ARTIFACT_STORE_S3_ACCESS_KEY_ID as well")
        return self
