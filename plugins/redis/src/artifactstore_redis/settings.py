"""Settings of the Redis backend (environment prefix ``ARTIFACT_STORE_REDIS_``).

The URL is kept as a :class:`~pydantic.SecretStr` because it may carry a password
(``redis://:password@host:6379/0``); :attr:`RedisSettings.display_url` and the settings' repr show it with
the password replaced by ``***``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from artifactstore_core import BackendSettings
from artifactstore_core.store import MAX_TTL

__all__ = ["DEFAULT_URL", "MAX_WAIT", "REDIS_MAX_BULK_BYTES", "RedisSettings", "mask_url"]

#: The server the backend connects to when ``ARTIFACT_STORE_REDIS_URL`` is not set.
DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: Redis's largest string or hash-field value (``proto-max-bulk-len``'s default): 512 MiB.
REDIS_MAX_BULK_BYTES = 512 * 1024 * 1024
#: The longest timeout or wait between retries a setting may give, in seconds: one day. Python refuses a
#: socket timeout or a wait much longer (``inf`` or ``1e12`` failed every call with an ``OverflowError``).
MAX_WAIT = 86_400.0

# Shown instead of host, path and query when credentials cannot be told apart from them (see mask_url).
_UNPARSED_TAIL = "<host hidden: its credentials are not URL-escaped>"
# Shown instead of a URL that does not start with scheme://, where nothing can be told apart.
_NOT_A_URL = "<hidden: not a scheme://... URL>"
# Query parameters whose names suggest a credential: their values are masked like a URL password.
_SECRET_QUERY_WORDS = ("pass", "secret", "token", "key")


def secret_query_values(query: str) -> list[str]:
    """The values of the query parameters whose names suggest a credential (what :func:`mask_url` masks)."""
    return [value for name, value in parse_qsl(query, keep_blank_values=True) if _secret_name(name)]


def _secret_name(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_QUERY_WORDS)


def mask_url(url: str) -> str:
    """``url`` with its password (and any credential-like query value) replaced by ``***``; a user name
    given without a password is hidden too (it may be a password whose ``:`` was forgotten).

    Never raises: a URL that does not start with ``scheme://`` is hidden whole, and one that cannot be
    parsed is shown as ``<unparseable redis url>``.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        # Not scheme://...: URL parsing would take a password for a path ("redis:/:pw@host" has no host), so
        # nothing of it is shown.
        return _NOT_A_URL
    userinfo, at, _ = rest.rpartition("@")
    if at and any(mark in userinfo for mark in "/?#@"):
        # A password written without escaping can hold '/', '?', '#' or '@', which URL parsing takes for the
        # end of the host (so it would show the rest of the password as host and path). Whatever precedes
        # the last '@' is taken for credentials and hidden whole: a URL with an '@' in its query loses its
        # host from view, which is the safe way to be wrong.
        return f"{scheme}://***@{_UNPARSED_TAIL}"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal needs its brackets back
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc}"
        elif parts.username is not None:
            # "redis://secret@host" (the ':' before a password forgotten) reads as a user name: hidden too,
            # since a user of its own without a password is rare and a password shown is a leak.
            netloc = f"***@{netloc}"
        query = [
            (name, "***" if _secret_name(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        masked = f"{parts.scheme}://{netloc}{parts.path}"
        return f"{masked}?{urlencode(query, safe='*')}" if query else masked
    except ValueError:
        return "<unparseable redis url>"


class RedisSettings(BackendSettings):
    """Settings of the Redis backend (prefix ``ARTIFACT_STORE_REDIS_``, config table ``[redis]``).

    Every field can be set by an environment variable named ``ARTIFACT_STORE_REDIS_<FIELD>``, e.g.
    ``ARTIFACT_STORE_REDIS_URL`` or ``ARTIFACT_STORE_REDIS_SOCKET_TIMEOUT``. The URL is checked when a store
    is created (:class:`~artifactstore_core.errors.ConfigurationError`), so an invalid one is never echoed back.
    """

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_REDIS_", extra="ignore")
    config_table = "redis"

    url: SecretStr = Field(
        default=SecretStr(DEFAULT_URL),
        description="Server URL: redis://[user[:password]@]host[:port][/db], rediss:// for TLS, or "
        "unix:///path/to/socket (standalone only). In cluster mode, the address of any one node. A password "
        "here is a secret like ARTIFACT_STORE_REDIS_PASSWORD and is masked wherever the URL is shown.",
    )
    username: str | None = Field(
        default=None, description="ACL user name, when the URL does not give one (Redis 6 and later)."
    )
    password: SecretStr | None = Field(
        default=None,
        description="Password (AUTH), when the URL does not give one. Never shown in reprs, logs or errors.",
    )
    cluster: bool = Field(
        default=False,
        description="Connect to a Redis Cluster: the URL names one node and the others are discovered.",
    )
    key_prefix: str = Field(
        default="artifactstore",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="First part of every key this backend writes (letters, digits, '_', '.', '-'); stores "
        "with different prefixes on one server never see each other's artifacts.",
    )
    default_ttl: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL,
        description="Seconds after which artifacts saved without an explicit ttl expire (at most 100 years); "
        "unset: never.",
    )
    max_connections: int = Field(
        default=32,
        ge=1,
        description="Size of the connection pool (per cluster node); a call waits for a free connection.",
    )
    pool_timeout: float = Field(
        default=5.0,
        gt=0,
        le=MAX_WAIT,
        description="Seconds a call waits for a free pooled connection before BackendUnavailableError.",
    )
    socket_connect_timeout: float = Field(
        default=2.0, gt=0, le=MAX_WAIT, description="Seconds to establish a connection before the attempt fails."
    )
    socket_timeout: float = Field(
        default=5.0,
        gt=0,
        le=MAX_WAIT,
        description="Seconds to wait for a reply; then the call raises BackendTimeoutError (the command may "
        "or may not have run on the server).",
    )
    retry_attempts: int = Field(
        default=3,
        ge=0,
        # Bounded so that the delete/clear result markers, which live as long as a call's retries may last,
        # keep an expiry Redis accepts; more retries than this would wait days anyway.
        le=1000,
        description="Retries after a refused or reset connection, a server still loading its data "
        "(LOADING) or busy running another client's long script (BUSY); 0 disables retries, at most 1000. "
        "Every operation of this backend is safe to repeat.",
    )
    retry_backoff: float = Field(
        default=0.05,
        ge=0,
        description="Base of the exponential backoff between retries, in seconds (doubled per retry, with jitter).",
    )
    retry_backoff_max: float = Field(
        default=1.0, ge=0, le=MAX_WAIT, description="Longest wait between two retries, in seconds."
    )
    retry_on_timeout: bool = Field(
        default=False,
        description="Also retry after a timeout. Off by default: a timed-out server is usually overloaded, "
        "and a timeout should surface within socket_timeout.",
    )
    health_check_interval: float = Field(
        default=15.0,
        ge=0,
        description="Seconds a pooled connection may sit idle before it is checked with PING on reuse; 0 "
        "disables the check.",
    )
    batch_size: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Artifacts per pipeline in save_many/get_many/list and per script call in clear(), "
        "which bounds how long any one call holds the server.",
    )
    max_artifact_bytes: int = Field(
        default=REDIS_MAX_BULK_BYTES,
        ge=1,
        le=REDIS_MAX_BULK_BYTES,
        description="Largest stored payload accepted; a larger one raises PayloadTooLargeError before any "
        "byte is sent. At most 512 MiB, Redis's limit for one value.",
    )

    @property
    def display_url(self) -> str:
        """The URL with its password masked: safe to log or show."""
        return mask_url(self.url.get_secret_value())

    def __repr_args__(self) -> Any:
        # SecretStr already masks the password field; show the URL's host and port with only its
        # password masked, which is what a reader of a repr or log line needs.
        for name, value in super().__repr_args__():
            yield name, (self.display_url if name == "url" else value)
