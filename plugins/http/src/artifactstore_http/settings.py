"""Settings of the ``http`` client backend and of the artifact server (pydantic-settings)."""

from __future__ import annotations

import ipaddress
import os

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from artifactstore_core import BackendSettings
from artifactstore_core.envelope import MAX_HEADER_SIZE, PREFIX_SIZE, TAG_SIZE

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_JSON_BYTES",
    "MAX_HEAD_BYTES",
    "MIN_TOKEN_LENGTH",
    "HttpSettings",
    "ServerSettings",
    "head_allowance",
    "is_loopback",
]

#: Shortest bearer token the server accepts: a token is a password that never needs typing.
MIN_TOKEN_LENGTH = 16
#: Default largest artifact content (and stored payload) the server accepts and the client reads; the body
#: that carries it may hold the envelope's head on top (see :func:`head_allowance`).
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
#: The largest envelope head the stored format allows: prefix, a header of at most 16 MiB, and the tag.
MAX_HEAD_BYTES = PREFIX_SIZE + MAX_HEADER_SIZE + TAG_SIZE
#: Default largest JSON content (decoded text) the server parses in a save or a read, and the client reads.
#: Lower than the body limit because a parsed JSON value costs many times its text in memory: eight million
#: ``{}`` are 24 MB of text and about 1 GB of dicts.
DEFAULT_MAX_JSON_BYTES = 32 * 1024 * 1024
# The log levels that logging and uvicorn both know.
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _token_problem(token: str) -> str | None:
    """What makes ``token`` unusable as a bearer token (``None``: nothing), without quoting it.

    A token must be printable ASCII without spaces: anything else cannot travel in an HTTP header, and
    httpx's refusal quotes the whole header, token included, in an exception (a trailing newline from a
    file or a shell is the usual case).
    """
    if not token.strip():
        # What a deployment template leaves when the secret is missing: sent, it is an "Authorization: Bearer "
        # header that httpx refuses at the first request, a failure that names no setting.
        return "is set but empty (or only white space); set it to the token, or unset the variable"
    if not token.isascii() or not token.isprintable() or " " in token:
        return "must be printable ASCII without spaces or line breaks (check for a trailing newline)"
    return None


def head_allowance(max_body_bytes: int, max_json_bytes: int) -> int:
    """The most bytes of envelope head an artifact's body may carry on top of ``max_body_bytes`` of payload.

    The one rule the server and the client share: ``MAX_BODY_BYTES`` counts an artifact's content (the
    header's ``size``, after decompression) and its stored payload, never the head, whose size depends on
    the metadata and schema and on how the writer compressed (a server re-encodes what it serves with its
    own codec). So whatever content a server accepts, a client with the same limits reads. The head is
    bounded apart: by the format's largest head (:data:`~artifactstore_http.settings.MAX_HEAD_BYTES`), by
    the body limit itself, so that a body is never more than twice the limit, and by ``max_json_bytes``:
    the head's header is JSON text (the metadata and schema) that the reader parses, which costs many times
    its text in memory like JSON content, so it is bounded by the same ``MAX_JSON_BYTES`` (the head is at
    most ``max_json_bytes`` of header and the fixed 41 bytes of prefix and tag). Raises nothing.
    """
    return min(max_body_bytes, PREFIX_SIZE + min(MAX_HEADER_SIZE, max_json_bytes) + TAG_SIZE)


def _head_setting(max_body_bytes: int, max_json_bytes: int, prefix: str) -> str:
    # The setting (MAX_JSON_BYTES or MAX_BODY_BYTES, after prefix) that decides head_allowance, for error
    # messages: the body limit unless the JSON limit is the lower bound.
    if PREFIX_SIZE + min(MAX_HEADER_SIZE, max_json_bytes) + TAG_SIZE < min(max_body_bytes, MAX_HEAD_BYTES):
        return f"{prefix}MAX_JSON_BYTES"
    return f"{prefix}MAX_BODY_BYTES"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) names this machine's loopback interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpSettings(BackendSettings):
    """Settings of the ``http`` backend, the client of an artifact server (prefix ``ARTIFACT_STORE_HTTP_``)."""

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_HTTP_", extra="ignore")
    config_table = "http"

    endpoint: str | None = Field(
        default=None,
        description="Base URL of the artifact server, e.g. http://127.0.0.1:8765 on its own machine (the server "
        "speaks plain HTTP) or https://proxy.example/artifactstore through a TLS proxy (a path prefix is kept). "
        "http or https, no user info. Required to create a store.",
    )
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token sent in the Authorization header; the server's token (printable ASCII, no spaces).",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to wait for a connection.")
    read_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for each read or write on a connection."
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Extra attempts after a transient failure, for idempotent operations only (see docs/http.md).",
    )
    pool_size: int = Field(default=10, ge=1, le=1000, description="Most connections kept open to the server.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate (https endpoints).")
    ca_file: str | None = Field(
        default=None,
        description="A PEM file of CA certificates to verify the server with (a private CA's), instead of the "
        "default bundle (httpx's, certifi's: not the system's trust store).",
    )
    trust_env: bool = Field(
        default=True,
        description="Honour HTTP(S)_PROXY, ALL_PROXY, NO_PROXY, SSL_CERT_FILE and SSL_CERT_DIR from the environment.",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest artifact read: its content (after decompression) and its stored payload; the "
        "envelope's head comes on top (at most this many bytes, and at most the format's 16 MiB header), so "
        "whatever content a server with the same ARTIFACT_STORE_SERVER_MAX_BODY_BYTES accepts is read. A larger "
        "artifact raises PayloadTooLargeError before its payload is read. The server's default.",
    )
    spool_dir: str | None = Field(
        default=None,
        description="Directory of the temporary file save_stream spools a stream of more than 1 MiB to before it "
        "sends it (the envelope's head carries the payload's digest, so the stream is read whole first); the file "
        "has no name there and is gone when the save ends. Default: the system's temporary directory (TMPDIR). "
        "It needs room for the largest stream saved at once; a tmpfs holds it in memory. Set but empty is refused.",
    )
    max_json_bytes: int = Field(
        default=DEFAULT_MAX_JSON_BYTES,
        ge=1024,
        description="Largest JSON read: a JSON answer (a list page, a delete or clear result) and the JSON content "
        "(its text, after decompression) of an artifact, checked before it is decompressed or parsed. The "
        "server's default ARTIFACT_STORE_SERVER_MAX_JSON_BYTES.",
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("not a valid URL") from None
        if url.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not url.host:
            raise ValueError("must name a host")
        if url.userinfo:
            # Credentials in a URL end up in logs and error messages; the token has its own secret setting.
            raise ValueError("must not contain user info; put the token in ARTIFACT_STORE_HTTP_TOKEN")
        if url.query or url.fragment:
            raise ValueError("must not have a query or fragment")
        return value

    @field_validator("spool_dir")
    @classmethod
    def _refuse_empty_spool_dir(cls, value: str | None) -> str | None:
        # An empty value is what `SPOOL_DIR=$UNSET_VARIABLE` or a template with a missing value leaves; tempfile
        # takes "" for the working directory (not the default, the system's temporary directory), so every
        # large save would spool wherever the process was started, and an error would name the wrong place.
        if value is not None and not value.strip():
            raise ValueError(
                "is set but empty (or only whitespace); set a directory ('.' for the working directory), "
                "or unset the variable for the system's temporary directory"
            )
        # "~/spool" in a config file is the user's directory, as ARTIFACT_STORE_FILESYSTEM_ROOT's "~" is (a shell
        # expands it only in the environment); tempfile would take it as a directory named "~".
        return os.path.expanduser(value) if value is not None else None

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := _token_problem(value.get_secret_value())) is not None:
            raise ValueError(problem)
        return value


class ServerSettings(BackendSettings):
    """Settings of the artifact server (prefix ``ARTIFACT_STORE_SERVER_``, config table ``[server]``)."""

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_SERVER_", extra="ignore")
    config_table = "server"

    host: str = Field(default="127.0.0.1", description="Address to bind; loopback unless told otherwise.")
    port: int = Field(default=8765, ge=0, le=65535, description="TCP port to listen on.")
    token: SecretStr | None = Field(
        default=None,
        description=f"The bearer token clients must send (at least {MIN_TOKEN_LENGTH} characters). "
        "Required unless insecure is set.",
    )
    insecure: bool = Field(
        default=False, description="Serve without authentication (only when no token is set). For local tests."
    )
    backend: str | None = Field(
        default=None,
        description="Backend the server exposes; default ARTIFACT_STORE_BACKEND. Its own settings are read "
        "from its usual variables (ARTIFACT_STORE_REDIS_URL, ...).",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest artifact content (after decompression) a save may carry, and the limit advertised "
        "by /v1/health; larger gets 413. The request body may carry the envelope's head on top (at most this "
        "many bytes, and at most the format's 16 MiB header); a body over both together gets 413 unread.",
    )
    max_json_bytes: int = Field(
        default=DEFAULT_MAX_JSON_BYTES,
        ge=1024,
        description="Largest JSON content (its decoded text, and its text as stored) accepted in a save, or "
        "parsed from the store to answer a read; larger gets 413 before it is decompressed or parsed. A parsed "
        "JSON value takes many times its text in memory. Also the most bytes of a list page, so that a client "
        "with the same ARTIFACT_STORE_HTTP_MAX_JSON_BYTES reads every page.",
    )
    max_header_count: int = Field(default=100, ge=8, description="Most request headers accepted; more gets 431.")
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="Most bytes of request line and headers accepted."
    )
    store_cache_size: int = Field(
        default=128, ge=1, description="Most namespaces whose stores are kept open between requests."
    )
    path_prefix: str = Field(
        default="",
        description="Path prefix every API path carries when a reverse proxy passes paths through unchanged "
        "(e.g. /artifactstore).",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Comma-separated proxy addresses whose X-Forwarded-* headers are trusted.",
    )
    log_level: str = Field(
        default="info", description="Server log level (debug, info, warning, error or critical; any case)."
    )
    shutdown_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds the requests in flight are given to finish after SIGINT or SIGTERM; a request still "
        "running then is answered 504 (503 for a save whose body was still arriving). Keep it below the time "
        "the process manager waits before killing the server (Kubernetes' terminationGracePeriodSeconds).",
    )

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        # Checked here, not left to logging.basicConfig, which raises ValueError once the app is built.
        level = value.strip().lower()
        if level not in _LOG_LEVELS:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return level

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
        if (problem := _token_problem(secret)) is not None:
            raise ValueError(problem)
        return value
