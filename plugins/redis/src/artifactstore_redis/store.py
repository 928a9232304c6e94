"""The Redis store: one namespace of artifacts on a Redis server or Redis Cluster.

Layout (``P`` is the key prefix, ``N`` the encoded namespace, ``I`` an encoded step id, ``T`` a random
token; encoding is :func:`artifactstore_core.ids.encode_name`, whose output never holds ``{``, ``}`` or
``:``)::

    {P:N}:a:I    hash    head (envelope head), id (identity key, for write-once), and payload (the stored
                         payload) when it is smaller than _INLINE_MAX
    {P:N}:p:I    string  the stored payload when it is not kept in the hash
    {P:N}:u:T    string  a payload being uploaded, with a safety expiry, until COMMIT renames it to p:I
    {P:N}:d:T    string  what a delete (or the latest batch of a clear) removed, for a retry of that call
                         whose first attempt ran but lost its reply; expires after _RESULT_TTL_MS or longer
    {P:N}:idx    zset    member I, score = expiry time in ms since the epoch (server clock), or +inf

The braces are a cluster hash tag: all keys of one namespace live in one slot, so the scripts that change
an artifact and its index entry together are legal in cluster mode.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import random
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import (
    BlockingConnectionPool,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.connection import parse_url as _redis_parse_url
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterError,
    MaxConnectionsError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from artifactstore_core import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactInfo,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    Capabilities,
    CapacityError,
    Codec,
    ConfigurationError,
    Message,
    PayloadTooLargeError,
    StoreClosedError,
)
from artifactstore_core.envelope import Header
from artifactstore_core.errors import raise_chained, redact
from artifactstore_core.ids import decode_name, encode_name, validate_namespace, validate_step_id
from artifactstore_core.settings import load_settings

from .scripts import (
    CLEAR,
    COMMIT,
    DELETE,
    FORGET_NAMESPACE,
    READ,
    REGISTER_NAMESPACE,
    SAVE,
    SAVE_EXISTS,
    SAVE_KEPT,
    SAVE_UPLOAD_MISSING,
    SAVE_WRITTEN,
    LuaScript,
)
from .settings import REDIS_MAX_BULK_BYTES, RedisSettings, secret_query_values

__all__ = ["RedisClient", "RedisStore"]

#: The client types a store runs on.
RedisClient = redis.Redis | RedisCluster

T = TypeVar("T")

_log = logging.getLogger("artifactstore_redis")

# Connection options the URL's query may carry; the others have a setting of their own (so there is one
# place to set each) or are unknown to redis-py and would only fail at the first command.
_URL_QUERY_OPTIONS = frozenset(
    {
        "db",
        "username",
        "password",
        "client_name",
        "protocol",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
_URL_PARSED_OPTIONS = frozenset({"host", "port", "path", "connection_class"})
# A store announces its namespace in the registry at most this often (seconds); an empty namespace leaves
# the registry only when nobody announced it for _REGISTRY_GRACE seconds. The grace must exceed the longest
# save (with its retries) by far, so that a save in flight is never forgotten.
_REGISTER_EVERY = 60.0
_REGISTRY_GRACE = 900
#: How many unexpired index members namespaces() reads per namespace to find one that is a legal id's
#: encoding; an index whose first ones were all written by something else is read on (see _holds_legal_member).
_NAMESPACE_PEEK = 8
# A pipeline is sent when it holds this many payload bytes, so client buffers stay bounded.
_PIPELINE_BYTES = 16 * 1024 * 1024
# Stored payloads smaller than this travel through the SAVE script and live in the artifact's hash (one
# command, one key); larger ones are uploaded with a plain SET and renamed into place by COMMIT, because
# Redis copies script arguments (a 64 MB payload through Lua took 5x a plain SET). Measured on Redis 7.0
# with 2 cores: below about 16 KiB the single script call is the faster of the two.
_INLINE_MAX = 16 * 1024
# Safety expiry of an upload key: a writer that dies between upload and commit leaves only a key that
# expires, and is never visible as an artifact. A commit that finds its upload gone uploads once more.
_UPLOAD_TTL_MS = 60_000
# A delete, or a batch of a clear, records what it removed in a marker key, for a retry of the same call
# whose first attempt ran and only lost its reply: the retry finds the artifacts gone, and returns the
# recorded result instead of "nothing removed". The marker must outlive the call's last retry: at least
# this long, and longer when the retry policy allows more time (see _result_ttl_ms).
_RESULT_TTL_MS = 60_000
_ENV = "ARTIFACT_STORE_REDIS_"
# The servers (by their display URL) whose eviction policy this process has read, or may never read (an ACL
# without INFO): it is read once per process and server, at the first write, so a store per pipeline run
# costs no extra round trip each. A read that failed on the way (a dropped connection, a timeout, BUSY) leaves
# its server out, so that a later save reads it again.
_POLICY_READ: set[str] = set()
# The servers whose policy one thread is reading now: the saves of other threads do not read it as well.
_POLICY_READING: set[str] = set()
# Whether a server's (by its display URL; in a cluster, with the slot's primary) maxmemory-policy is allkeys-*,
# as this process read it (once per process and server): list() and clear() ask no more of a server that
# is not (see RedisStore._evicts_index).
_ALLKEYS: dict[str, bool] = {}
_POLICY_LOCK = threading.Lock()
# redis-py ships these two untyped.
_parse_url = cast(Callable[[str], dict[str, Any]], _redis_parse_url)
_BlockingPool = cast(Callable[..., BlockingConnectionPool], BlockingConnectionPool)


def _env(name: str) -> str:
    return f"{_ENV}{name.upper()}"


def _result_ttl_ms(settings: RedisSettings) -> int:
    """How long a delete's or clear batch's result marker lives, in milliseconds.

    Each attempt waits at most for a pooled connection, a connect and a reply, then a backoff: the last
    retry of a call starts within ``(retry_attempts + 1)`` such spans of the attempt that ran first.
    """
    attempt = (
        settings.pool_timeout + settings.socket_connect_timeout + settings.socket_timeout + settings.retry_backoff_max
    )
    return max(_RESULT_TTL_MS, math.ceil(1000 * (settings.retry_attempts + 1) * attempt))


def _connection_options(settings: RedisSettings) -> dict[str, Any]:
    """redis-py connection options from the URL and the settings.

    Raises:
        ConfigurationError: the URL is invalid, or sets something twice (never repeating the URL itself).
    """
    url = settings.url.get_secret_value()
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if "sentinel" in scheme:
        # redis-py's parse_url knows no Sentinel scheme and the store has no settings for one; say so rather
        # than calling the URL invalid. A Sentinel-managed client can be given to the store (documented).
        raise ConfigurationError(
            f"{_env('url')} is a Redis Sentinel URL ({scheme}://...), which the redis backend does not take: "
            "point it at the current primary (redis://host:port/db), or build the store in code with "
            "RedisStore(client=redis.sentinel.Sentinel([(host, port)]).master_for(service), ...), whose "
            "connections ask the sentinels for the current primary"
        )
    try:
        options = _parse_url(url)
    except ValueError:
        # Not chained, nor left as the suppressed context: the parser's message may repeat part of the URL,
        # which may hold a password.
        raise_chained(
            ConfigurationError(
                f"{_env('url')} is not a valid Redis URL (redis://[user[:password]@]host[:port][/db], "
                f"rediss://... or unix:///path); it reads {settings.display_url}"
            ),
            None,
        )
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        # redis-py takes a URL without a host for localhost and ignores a path that is no database number, so
        # a mistyped URL ("redis:/host", "redis:///:password@host") would silently reach another server.
        if not parts.hostname:
            raise ConfigurationError(f"{_env('url')} names no host; it reads {settings.display_url}")
        # redis-py drops every '/' of the path, so "/1/5" would select database 15.
        database = parts.path.removeprefix("/").removesuffix("/")
        if database and not (database.isascii() and database.isdigit()):
            raise ConfigurationError(
                f"{_env('url')} has a path that is not a database number; it reads {settings.display_url}"
            )
        # redis-py lets ?db= win over the path without a word.
        if database and options.get("db", int(database)) != int(database):
            raise ConfigurationError(
                f"{_env('url')} selects database {int(database)} in its path and {options['db']} in its query "
                f"(?db=); give it once. It reads {settings.display_url}"
            )
    if parts.scheme == "unix" and (parts.hostname or not parts.path):
        # redis-py takes the socket path from the URL's path alone: "unix://tmp/redis.sock" (two slashes)
        # connected to /redis.sock, and "unix://" to no path at all, failing every call as a server that is
        # unavailable (and retried) instead of a URL to fix.
        raise ConfigurationError(
            f"{_env('url')} is a unix socket URL with a host name or without a path; write it with three "
            f"slashes and the socket's absolute path (unix:///run/redis/redis.sock?db=0). It reads "
            f"{settings.display_url}"
        )
    tls_options = sorted(name for name in options if name.startswith("ssl_"))
    if tls_options and parts.scheme != "rediss":
        # redis-py would pass them to a plain connection, which refuses them at the first command of every call.
        raise ConfigurationError(
            f"{_env('url')} has the TLS option(s) {', '.join(tls_options)}, which apply to rediss:// URLs only: "
            f"use rediss://host:port/db for TLS, or drop them. It reads {settings.display_url}"
        )
    unknown = sorted(set(options) - _URL_QUERY_OPTIONS - _URL_PARSED_OPTIONS)
    if unknown:
        hint = "; ".join(
            f"set {_env(name)} instead" if name in RedisSettings.model_fields else f"{name!r} is not supported"
            for name in unknown
        )
        raise ConfigurationError(f"{_env('url')} has query option(s) {', '.join(unknown)}: {hint}")
    for name in ("password", "username"):
        value = getattr(settings, name)
        if value is None:
            continue
        if name in options:
            raise ConfigurationError(f"the {name} is given both in {_env('url')} and in {_env(name)}; give it once")
        options[name] = value.get_secret_value() if name == "password" else value
    if settings.cluster:
        if options.get("connection_class") is UnixDomainSocketConnection:
            raise ConfigurationError(f"{_env('cluster')} needs a redis:// or rediss:// URL, not a unix socket")
        if options.get("db", 0) != 0:
            raise ConfigurationError(f"{_env('url')} selects database {options['db']}; a Redis Cluster has only 0")
        options.pop("db", None)
    return options


# A large argument is sent in pieces of this size, each with its own SOCKET_TIMEOUT (see _PacedSend).
_SEND_PIECE = 1024 * 1024


def _in_pieces(command: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    pieces: list[bytes | memoryview] = []
    for item in command:
        if len(item) <= _SEND_PIECE:
            pieces.append(item)
            continue
        view = memoryview(item)  # slices of it are not copies
        pieces += [view[start : start + _SEND_PIECE] for start in range(0, len(view), _SEND_PIECE)]
    return pieces


class _PacedSend:
    """Sends a large argument in pieces of _SEND_PIECE bytes, so SOCKET_TIMEOUT bounds a stall, not a send.

    Python's ``sendall`` applies the socket timeout to the whole buffer, and redis-py sends each large
    argument with one ``sendall``: a 48 MB save over a link that moves 6 MB/s without ever pausing failed
    with "Timeout writing to socket" after SOCKET_TIMEOUT, every time (a read of the same artifact, which
    redis-py receives in pieces, succeeded). Mixed into the store's own connection classes.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not isinstance(command, str | bytes) and any(len(item) > _SEND_PIECE for item in command):
            command = _in_pieces(command)
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class _ReplacedWhenDead:
    """Replaces a pooled connection that fails its health check, instead of failing the call that reused it.

    redis-py checks a connection that idled for HEALTH_CHECK_INTERVAL with a PING before it sends a command,
    and retries a failed check only under its own retry policy, which the store switches off (it retries
    operations itself, and not after a timeout). So a connection that a NAT or firewall dropped without a
    word while it idled (its PING is never answered) failed the call with BackendTimeoutError ("may or may not
    have been applied") although nothing of the call had been sent. The PING goes out before the command, so
    a fresh connection is safe: the call goes on over it. Mixed into the store's own connection classes.
    """

    health_check_interval: float
    next_health_check: float
    # Set while a replacement connects: a failed check during its handshake fails the call (nothing loops).
    _replacing = False

    def check_health(self) -> None:
        try:
            super().check_health()  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError):
            if self._replacing:
                raise
            self._replacing = True
            try:
                # redis-py closed it. The new one is not checked in turn (it was just opened): a server that does
                # not answer fails the call at the handshake or the command, as without a check.
                cast(Any, self).disconnect()
                self.next_health_check = time.monotonic() + self.health_check_interval
                cast(Any, self).connect()
            finally:
                self._replacing = False


@functools.cache
def _paced(connection_class: type[Connection]) -> type[Connection]:
    return type(f"Paced{connection_class.__name__}", (_PacedSend, _ReplacedWhenDead, connection_class), {})


@functools.cache
def _checked(connection_class: type[Connection], interval: float) -> type[Connection]:
    """``connection_class``, whose connections are health-checked after idling ``interval`` seconds.

    For the cluster client, which passes its nodes' pools only the connection options it knows, and
    health_check_interval is not one of them: without this, a pooled connection that a NAT dropped while
    it idled failed the next call that reused it with BackendTimeoutError (see _ReplacedWhenDead).
    """

    def init(self: Connection, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("health_check_interval", interval)
        cast(Any, connection_class).__init__(self, *args, **kwargs)

    return type(connection_class.__name__, (connection_class,), {"__init__": init})


def _connect(settings: RedisSettings, options: dict[str, Any]) -> RedisClient:
    # redis-py's own retries are switched off (their defaults differ between versions and between the
    # standalone and cluster clients); RedisStore retries every operation under one explicit policy.
    no_retry = Retry(NoBackoff(), 0)
    timeouts: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
    }
    # RESP2 unless the URL asks for another: every server speaks it, it needs no HELLO round trip on connect,
    # and its reply shapes do not depend on the redis-py version (whose default moved to RESP3).
    options.setdefault("protocol", 2)
    options["connection_class"] = _paced(options.get("connection_class", Connection))
    if settings.cluster:
        # The URL path is the one on which RedisCluster gives every node a blocking pool; the URL was
        # checked above, and a password or user name from the settings is passed beside it. RedisCluster lets
        # the URL's scheme choose the connection class (rediss: SSLConnection) over the one passed to it, so
        # it is given the URL as redis:// and the store's class, which is the TLS one for a rediss:// URL.
        url = settings.url.get_secret_value()
        if urlsplit(url).scheme == "rediss":
            url = "redis" + url[len("rediss") :]
        credentials = {name: options[name] for name in ("username", "password") if name in options}
        return RedisCluster(
            url=url,
            retry=no_retry,
            connection_pool_class=BlockingConnectionPool,
            max_connections=settings.max_connections,
            timeout=settings.pool_timeout,
            protocol=options["protocol"],
            connection_class=_checked(options["connection_class"], settings.health_check_interval),
            **timeouts,
            **credentials,
        )
    pool = _BlockingPool(
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        retry=no_retry,
        health_check_interval=settings.health_check_interval,
        **timeouts,
        **options,
    )
    return redis.Redis(connection_pool=pool)


def _client_address(client: RedisClient) -> tuple[str, str | None]:
    """The server a client given to the store talks to, as a URL without credentials, and its password."""
    if isinstance(client, RedisCluster):
        node = cast(Any, client).get_default_node()  # untyped in redis-py
        kwargs: dict[str, Any] = dict(cast(Any, client).nodes_manager.connection_kwargs)
        where = f"redis://{node.host}:{node.port}/0" if node is not None else "a redis cluster"
    else:
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        service = getattr(pool, "service_name", None)
        if isinstance(service, str) and getattr(pool, "sentinel_manager", None) is not None:
            # A Sentinel-managed pool's kwargs name no server (redis-py's defaults would read as
            # localhost:6379): the primary is whichever the sentinels name at the moment.
            role = "primary" if getattr(pool, "is_master", True) else "a replica"
            where = f"the {role} of sentinel service {service!r} (db {kwargs.get('db', 0)})"
            password = kwargs.get("password")
            return where, password if isinstance(password, str) else None
        if kwargs.get("path"):
            where = f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        else:
            scheme = "rediss" if issubclass(client.connection_pool.connection_class, SSLConnection) else "redis"
            where = f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    password = kwargs.get("password")
    return where, password if isinstance(password, str) else None


def _client_db(client: RedisClient) -> object:
    """The database number a standalone client selects (for error messages)."""
    if isinstance(client, RedisCluster):
        return 0
    return client.connection_pool.connection_kwargs.get("db", 0)


def _batches(items: Iterable[T], size: Callable[[T], int], most: int) -> Iterator[list[T]]:
    """``items`` in order, in lists for one pipeline each: a list ends at ``most`` items, or as soon as the
    payloads it carries (``size`` of each item, in bytes) reach _PIPELINE_BYTES; never empty."""
    chunk: list[T] = []
    total = 0
    for item in items:
        chunk.append(item)
        total += size(item)
        if len(chunk) >= most or total >= _PIPELINE_BYTES:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


def _disconnect_idle(pool: ConnectionPool) -> None:
    """Close the idle connections of ``pool`` (they reconnect when next used); those in use are left alone."""
    # redis-py 5.0's BlockingConnectionPool takes no argument (it closes every connection, in use or not): there,
    # idle connections are not closed, and each is closed when it gets READONLY in turn.
    with contextlib.suppress(TypeError):
        pool.disconnect(inuse_connections=False)


def _pooled_connection(pool: ConnectionPool) -> Any:
    """A connection from ``pool`` (redis-py's Connection is untyped); give it back with ``pool.release``."""
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name, which it ignores
        return cast(Any, pool).get_connection("SET")


# Arguments at least this long are sent as their own buffer rather than copied into a joined one.
_JOIN_BELOW = 16 * 1024


# The RESP length lines of short arguments and of arrays, without their CRLF: formatting one per argument
# was most of the cost of packing a batch read.
_BULK_LENGTHS = [b"$%d" % size for size in range(1024)]
_ARRAY_LENGTHS = [b"*%d" % size for size in range(64)]


def _pack_commands(commands: Sequence[tuple[Any, ...]]) -> list[bytes | memoryview] | None:
    """The RESP encoding of ``commands`` as buffers to send in order, or ``None`` to let redis-py pack them.

    Every command is an array of bulk strings, led by a one-word command name. Only bytes, str (UTF-8, as
    redis-py encodes by default) and int arguments are packed here, which is all this module sends;
    anything else is left to redis-py. This costs a fraction of redis-py's general packer, which is a visible
    part of a small save or a batch read. Large arguments are never copied: they become buffers of their own.
    """
    out: list[bytes | memoryview] = []
    # Every line of RESP ends in CRLF: the lines are collected without it and joined with it, which
    # appends nothing per line. A large argument ends the lines joined so far (its length line last).
    lines: list[bytes] = []
    append = lines.append
    for command in commands:
        name = command[0]
        if type(name) is not str or " " in name or not name:
            return None  # redis-py splits "CLIENT KILL" into words
        count = len(command)
        append(_ARRAY_LENGTHS[count] if count < 64 else b"*%d" % count)
        for arg in command:
            kind = type(arg)
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode("utf-8")
            elif kind is int:
                data = b"%d" % arg
            else:
                return None
            size = len(data)
            if size < 1024:
                append(_BULK_LENGTHS[size])
                append(data)
            elif size < _JOIN_BELOW:
                append(b"$%d" % size)
                append(data)
            else:
                append(b"$%d" % size)
                append(b"")  # the CRLF that ends the length line
                out.append(b"\r\n".join(lines))
                out.append(data)
                lines = [b""]  # the CRLF that ends the argument
                append = lines.append
    append(b"")
    out.append(b"\r\n".join(lines))
    return out


def _replies(connection: Any, count: int) -> list[Any]:
    """Read ``count`` replies; an error reply is returned (not raised), so the replies after it are still read."""
    # One loop rather than a function call per reply: a batch read takes a reply per artifact.
    replies: list[Any] = []
    append, read = replies.append, connection.read_response
    for _ in range(count):
        try:
            append(read())
        except ResponseError as exc:
            append(exc)
    return replies


def _holds(replies: list[Any], kind: type[BaseException]) -> bool:
    """Whether a reply is a ``kind``: the types are collected in C, then the few distinct ones are looked at
    (a batch read's replies are all of one or two types), instead of an isinstance call per reply."""
    return any(issubclass(reply_type, kind) for reply_type in set(map(type, replies)))


def _pool_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, MaxConnectionsError) or (
        type(exc) is RedisConnectionError and str(exc).startswith("No connection available")
    )


@dataclass(frozen=True, slots=True)
class _ScriptCall:
    """One call of a script, with the upload that must precede it in the same round trip (if any)."""

    script: LuaScript
    keys: Sequence[bytes]
    args: Sequence[Any]
    #: The key to upload ``payload`` to with ``SET ... PX`` just before the script runs, or None.
    upload: bytes | None = None
    #: The stored payload of a save (inside ``args`` for SAVE; sent with SET for an upload).
    payload: bytes = b""

    def command(self, *, cached: bool) -> tuple[Any, ...]:
        """EVALSHA when the server is believed to hold the script, else EVAL (which also caches it)."""
        if cached:
            return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)
        return ("EVAL", self.script.source, len(self.keys), *self.keys, *self.args)


@dataclass(frozen=True, slots=True)
class _SavePlan(_ScriptCall):
    """One encoded artifact, ready to send: the SAVE script alone, or an upload followed by COMMIT."""

    step_id: str = field(kw_only=True)


def _decoded(member: bytes, validate: Callable[[object], str]) -> str | None:
    """The id or namespace whose encoding is ``member``, or ``None`` if none is (a key someone else wrote).

    Only the canonical encoding of a legal value decodes, as on the other backends, so a forged index or
    registry entry is skipped instead of failing the whole listing or being listed as an id that no call
    accepts.
    """
    try:
        # InvalidStepIdError is a ValueError too, and so is UnicodeDecodeError.
        return validate(decode_name(member.decode("ascii")))
    except ValueError:
        return None


def _is_wrong_type(exc: BaseException) -> bool:
    # A key of this namespace holding another type than this backend writes there (also inside a script).
    return isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)


# How Redis words an ACL denial of a command (or key) that a script calls: 7.0 and 7.2+ (after redis-py took
# off the "ERR " prefix). A denial of the script call itself, or of a plain command, is a NOPERM reply.
_SCRIPT_ACL_DENIALS = (
    "ACL failure in script",
    "The user executing the script can't",
)


_SCRIPTS = (SAVE, COMMIT, READ, DELETE, CLEAR, REGISTER_NAMESPACE, FORGET_NAMESPACE)


def _is_acl_denial(exc: BaseException) -> bool:
    return isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_SCRIPT_ACL_DENIALS)
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it, each once (a cause, else the context; a cycle ends the walk)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _access_failure(exc: BaseException) -> BaseException | None:
    """The refused login or ACL denial behind ``exc``, or ``None``.

    redis-py's cluster client reports a node that refused it while it discovers the cluster (a wrong
    password, a user without ``CLUSTER SLOTS``) as "Redis Cluster cannot be connected ... Cluster mode is not
    enabled on this node", a RedisClusterException whose chain holds the real reply; so the chain is read.
    """
    for current in _chain(exc):
        if isinstance(current, (AuthenticationError, AuthorizationError)) or _is_acl_denial(current):
            return current
    return None


def _cluster_disabled(exc: BaseException) -> ResponseError | None:
    """The reply of a server without cluster support to the cluster client's ``CLUSTER SLOTS``, or ``None``.

    redis-py's cluster client reports it as "Redis Cluster cannot be connected ... Cluster mode is not enabled
    on this node" (a RedisClusterException, the reply in its chain), like an unreachable node.
    """
    for current in _chain(exc):
        if isinstance(current, ResponseError) and "cluster support disabled" in str(current):
            return current
    return None


def _cluster_timeout(exc: BaseException) -> RedisTimeoutError | None:
    """The timeout behind ``exc`` when it is redis-py's cluster client giving up after one, or ``None``.

    When a command to a node times out, redis-py's cluster client rediscovers the cluster before it raises;
    a node that stopped answering times that out too, and the call fails with "Redis Cluster cannot be
    connected" (a RedisClusterException), the timeouts chained. It is a timeout all the same: the command
    was sent and may have run. A read timeout wins over a connect timeout (which sent nothing).
    """
    if not isinstance(exc, RedisClusterException):
        return None
    found: RedisTimeoutError | None = None
    for current in _chain(exc):
        if isinstance(current, RedisTimeoutError) and (found is None or _connect_timeout(found)):
            found = current
    return found


def _reset(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection the server reset (``ECONNRESET``)."""
    return isinstance(exc, RedisConnectionError) and "Connection reset by peer" in str(exc)


def _connect_timeout(exc: RedisTimeoutError) -> bool:
    # Nothing of the attempt reached the server.
    return str(exc).startswith("Timeout connecting")


def _tls_failure(exc: BaseException) -> OSError | None:
    """The TLS error behind ``exc`` (a certificate that does not verify, no common protocol...), or ``None``;
    also an ``OSError`` of reading the certificate, key or CA files a TLS connection was given.

    redis-py reports it as a ConnectionError ("Error 1 connecting to ..."), the same class as a refused
    connection; retrying cannot help, so the store neither retries it nor calls the server unavailable.
    """
    for current in _chain(exc):
        if isinstance(current, ssl.SSLError):
            return current
        if isinstance(current, (FileNotFoundError, PermissionError, IsADirectoryError)) and _loading_tls_files(current):
            return current
    return None


def _loading_tls_files(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by ``ssl`` while it loaded a certificate, key or CA file (a missing unix
    socket raises FileNotFoundError too, and is a server not listening yet: that one is retried)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(frame.name in _TLS_LOADERS for frame in frames)


# ssl's functions that read the files of redis-py's ssl_* options; an OSError from them is the configuration's.
_TLS_LOADERS = frozenset({"load_cert_chain", "load_verify_locations", "_wrap_socket_with_ssl"})


def _is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``BUSY`` reply: a script or function (another client's) has run past the server's
    ``busy-reply-threshold`` and the server refuses every other command, without running it, until it ends
    or is killed. So the command may be sent again, a write too, as after a refused connection."""
    # Not BUSYKEY or BUSYGROUP (commands this store never sends), nor LOADING (BusyLoadingError).
    return isinstance(exc, ResponseError) and str(exc).startswith("BUSY ")


def _is_oom(exc: BaseException) -> bool:
    # Inside a script the server reports OOM as a script error whose text names it.
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "OOM command not allowed" in str(exc)
    )


# SCAN's COUNT when looking for a namespace's unindexed keys (see RedisStore._unindexed): the work per call
# on the server is about this many keys of the whole database, so it stays a short call.
_SCAN_COUNT = 1000


def _glob_escape(text: bytes) -> bytes:
    """``text`` as a Redis glob pattern that matches exactly it (each special character escaped)."""
    return bytes(b for c in text for b in ((0x5C, c) if c in b"*?[]\\^-" else (c,)))


def _info_field(info: Any, name: str) -> str | None:
    """Field ``name`` of an ``INFO`` reply: parsed by redis-py (a dict), or its raw text (bytes or str)."""
    if isinstance(info, dict):
        value = info.get(name)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return None if value is None else str(value)
    text = info if isinstance(info, bytes) else str(info).encode("utf-8", "replace")
    # Every field is on a line of its own, after a "# Section" line: never at the start of the text.
    start = text.find(b"\n" + name.encode("ascii") + b":")
    if start < 0:
        return None
    start += len(name) + 2
    end = text.find(b"\n", start)
    return text[start : end if end >= 0 else len(text)].strip().decode("ascii", "replace")


def _info_refused_for_good(exc: BaseException) -> bool:
    """Whether ``exc``, the failure of an ``INFO``, would recur at every try: an ACL without ``INFO``, or a
    server that does not offer it (``rename-command``, a proxy). Not a dropped connection, a timeout, or a
    server busy (``BUSY``), loading (``LOADING``) or failing over, which a later try may get past."""
    if _access_failure(exc) is not None:
        return True
    return isinstance(exc, ResponseError) and not (_is_busy(exc) or isinstance(exc, (ClusterError, TryAgainError)))


def _eviction_policy(memory: Any) -> str | None:
    """The ``maxmemory-policy`` in an ``INFO memory`` reply, or ``None`` when the server never evicts
    (``noeviction``, or no ``maxmemory``)."""
    policy, limit = _info_field(memory, "maxmemory_policy"), _info_field(memory, "maxmemory")
    if policy is None or policy == "noeviction" or limit in (None, "0"):
        return None
    return policy


class RedisStore(ArtifactStore):
    """A namespace of artifacts on a Redis server or Redis Cluster. Thread-safe; fork-safe (standalone).

    :meth:`~artifactstore_core.ArtifactStore.close` may be called while other threads are in the middle of
    an operation: an operation whose request was on the wire (or that was waiting to retry) raises
    :class:`~artifactstore_core.errors.StoreClosedError` (the failure the close caused chained) instead of a
    ``BackendError``, none starts a new attempt, and no connection stays open after it.

    Args:
        settings: connection and behaviour; default :class:`RedisSettings` from the environment.
        namespace: the namespace.
        codec: the envelope codec (signing key, compression).
        client: an existing ``redis.Redis`` or ``RedisCluster`` (with ``decode_responses=False``) to use
            instead of building one from the settings: the URL, pool and timeout settings are then not used,
            the retry policy still is, and the store does not close the client.

    Raises:
        ConfigurationError: a setting (from ``settings`` or, without it, the environment) is invalid, the
            URL sets something twice, or cluster mode names a server without cluster support.
        BackendUnavailableError: cluster mode, and no node of the cluster could be reached.
        InvalidStepIdError: ``namespace`` is not legal.
    """

    backend_name = "redis"
    capabilities = Capabilities(
        cross_process=True,
        persistent=True,
        native_ttl=True,
        atomic_create=True,
        streaming=False,
        list_namespaces=True,
        max_artifact_bytes=REDIS_MAX_BULK_BYTES,
    )

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        namespace: str = "default",
        codec: Codec | None = None,
        client: RedisClient | None = None,
    ) -> None:
        super().__init__(namespace=namespace, codec=codec)
        # load_settings turns an invalid environment into a ConfigurationError naming the variable.
        self._settings = settings if settings is not None else load_settings(RedisSettings)
        self._where = self._settings.display_url
        self._secrets = self._secret_texts()
        tag = f"{{{self._settings.key_prefix}:{encode_name(self.namespace)}}}"
        self._tag = tag.encode("ascii")
        self._artifact_prefix = f"{tag}:a:".encode("ascii")
        self._index = f"{tag}:idx".encode("ascii")
        # Its own slot in a cluster; "{prefix}" can never equal a namespace's "{prefix:...}" tag.
        self._registry = f"{{{self._settings.key_prefix}}}:namespaces".encode("ascii")
        self._registered_at: float | None = None
        # Whether _POLICY_READ holds this store's server (so a save needs no lock to know it).
        self._policy_known = False
        # How many policy reads this store has sent: a save compares it before and after to tell whether it
        # made one already (see _check_policy_after).
        self._policy_reads = 0
        self._result_ttl_ms = _result_ttl_ms(self._settings)
        # Set by close(): a retry backoff waits on it, so that a thread waiting to retry stops at once.
        self._closing = threading.Event()
        self._owns_client = client is None
        # Whether the client exists (in a cluster: it discovered the nodes; see _cluster_timeout).
        self._discovered = False
        if client is not None:
            if getattr(cast(Any, client).get_encoder(), "decode_responses", False):
                raise ConfigurationError("the redis client given to RedisStore must not use decode_responses=True")
            self._client: RedisClient = client
            # Errors and logs name the server the client talks to, not the URL setting it ignores, and its
            # password is scrubbed from error texts like one from the settings.
            self._where, password = _client_address(client)
            if password:
                self._secrets = (*self._secrets, password)
        else:
            options = _connection_options(self._settings)
            self._check_connection_options(options)
            try:
                self._client = _connect(self._settings, options)
            except (RedisError, RedisClusterException) as exc:
                refusal = _cluster_disabled(exc)
                if refusal is not None:
                    raise_chained(
                        ConfigurationError(
                            f"{_env('cluster')} is true, but redis at {self._where} is not a cluster node "
                            f"({self._describe(refusal)}): set {_env('cluster')}=false for a standalone server, "
                            f"or point {_env('url')} at a node of the cluster"
                        ),
                        self._scrubbed(exc),
                    )
                raise_chained(self._translated(exc, "connect"), self._scrubbed(exc))
        self._discovered = True
        # The pool of our own standalone client: commands go straight through its connections, which skips
        # redis-py's per-command client machinery (about 10 us a call). A client given by the caller is used
        # through its own API (it may be a single-connection client), and so is a cluster client.
        self._pool: ConnectionPool | None = (
            self._client.connection_pool if self._owns_client and isinstance(self._client, redis.Redis) else None
        )
        _log.debug(
            "redis store for namespace %r on %s (cluster=%s)", self.namespace, self._where, self._settings.cluster
        )

    def _check_connection_options(self, options: dict[str, Any]) -> None:
        """Build one connection from ``options`` without connecting it (no I/O), so that an option of the URL
        that redis-py refuses (``protocol=4``, ``ssl_cert_reqs=bogus``) is a ``ConfigurationError`` now.

        redis-py checks them only when it makes a connection: at the first command of every call, as a
        ``BackendError`` (``protocol``: a retried ``BackendUnavailableError``), or in cluster mode, while it
        connects, as "Redis Cluster cannot be connected".
        """
        kwargs = {name: value for name, value in options.items() if name != "connection_class"}
        try:
            options.get("connection_class", Connection)(**kwargs)
        except (RedisError, TypeError, ValueError) as exc:
            raise_chained(
                ConfigurationError(
                    f"{_env('url')} has a connection option that redis-py refuses ({self._describe(exc)}); it "
                    f"reads {self._where}"
                ),
                self._scrubbed(exc),
            )

    @property
    def settings(self) -> RedisSettings:
        """The settings this store was built with."""
        return self._settings

    @property
    def client(self) -> RedisClient:
        """The redis-py client (for diagnostics; keys and layout are this module's business)."""
        return self._client

    def __repr__(self) -> str:
        mode = "cluster" if isinstance(self._client, RedisCluster) else "standalone"
        return (
            f"<{type(self).__name__} backend={self.backend_name!r} namespace={self.namespace!r} "
            f"url={self._where!r} mode={mode}>"
        )

    # -- keys and encoding ----------------------------------------------------------------------------

    def _member(self, step_id: str) -> bytes:
        return encode_name(step_id).encode("ascii")

    def _key(self, member: bytes) -> bytes:
        return self._artifact_prefix + member

    def _payload_key(self, member: bytes) -> bytes:
        return self._tag + b":p:" + member

    def _upload_key(self) -> bytes:
        # Unique per save call (and reused by its retries, which then overwrite their own upload).
        return self._tag + b":u:" + os.urandom(12).hex().encode("ascii")

    def _result_key(self) -> bytes:
        # Unique per delete or clear call, and reused by its retries, which find the first attempt's result.
        return self._tag + b":d:" + os.urandom(12).hex().encode("ascii")

    def _ttl_ms(self, ttl: float | None) -> int:
        seconds = ttl if ttl is not None else self._settings.default_ttl
        return 0 if seconds is None else max(1, math.ceil(seconds * 1000))

    def _plan(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> _SavePlan:
        """Encode ``message``, check the size limit, and choose inline or uploaded by the stored size."""
        limit = self._settings.max_artifact_bytes
        if isinstance(message.content, bytes) and len(message.content) > limit:
            # bytes are stored as they are, so the check needs no encoding (and no hashing).
            raise self._too_large_error(step_id, len(message.content), limit)
        encoded = self.codec.encode(message, place=(self.namespace, step_id))
        payload = encoded.payload
        if len(payload) > limit:
            raise self._too_large_error(step_id, len(payload), limit)
        member = self._member(step_id)
        keys = [self._key(member), self._index, self._payload_key(member)]
        flag = b"1" if overwrite else b"0"
        ttl_ms = self._ttl_ms(ttl)
        if len(payload) < _INLINE_MAX:
            args = [member, encoded.identity_key, encoded.head, payload, flag, ttl_ms]
            return _SavePlan(SAVE, keys, args, payload=payload, step_id=step_id)
        upload = self._upload_key()
        keys.append(upload)
        args = [member, encoded.identity_key, encoded.head, flag, ttl_ms]
        return _SavePlan(COMMIT, keys, args, upload, payload, step_id=step_id)

    def _decode(self, step_id: str, head: bytes | None, payload: bytes | None) -> Message:
        if head is None or payload is None:
            raise self._decode_error_missing(step_id, "head" if head is None else "payload")
        return self.codec.decode(head, payload, place=(self.namespace, step_id))

    def _decode_error_missing(self, step_id: str, part: str) -> ArtifactCorruptedError:
        return ArtifactCorruptedError(
            f"artifact {step_id!r} in namespace {self.namespace!r} is missing its {part} (evicted by a server "
            "whose maxmemory-policy is not noeviction, or written by something other than this backend?)",
            step_id=step_id,
        )

    # -- the operations -------------------------------------------------------------------------------

    def _announce(self, *, cached: bool = True) -> Exception | None:
        """Record this namespace in the registry before writing to it (at most every _REGISTER_EVERY s).

        Returns the error of a server at ``maxmemory`` that refused the record, instead of raising it: the
        saves are sent all the same, and :meth:`_announced_after` decides once their results tell whether
        they stored anything (an identical re-save stores nothing and must not fail for the bookkeeping).
        Any other error is raised.
        """
        now = time.monotonic()
        registered = self._registered_at
        if registered is not None and now - registered < _REGISTER_EVERY:
            # A policy read that failed is made again after the save's write (see _check_policy_after).
            return None
        # Two threads announcing at once only write the same entry twice.
        try:
            self._script(REGISTER_NAMESPACE, [self._registry], [encode_name(self.namespace)], cached=cached)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            return exc
        self._registered_at = now
        # After a write that reached the server, so that an unreachable server fails the save as fast as before.
        self._check_eviction_policy()
        return None

    def _announced_after(self, refused: Exception | None, results: Sequence[Any]) -> Exception | None:
        """Bookkeeping after saves were sent (``results``: theirs); ``refused``: what :meth:`_announce` returned.

        Returns ``refused`` while the namespace may still need recording before a later write, else ``None``.
        With ``refused`` (a full server refused to record the namespace before the saves):

        - nothing stored (each save refused, or a different artifact there): nothing to record;
        - a save stored its artifact, so the server had room again: the namespace is recorded now, after the
          write. That is as safe as before it: ``namespaces()`` forgets a namespace only if nobody recorded
          it within the grace period, so this record outlives any check that found the namespace empty;
        - only identical artifacts kept (stored earlier, by a save that recorded the namespace): enough if
          the registry still holds the namespace (read, which a full server allows).

        Raises:
            CapacityError: an artifact is stored (or kept) but its namespace is not in the registry and the
                server is too full to record it: ``namespaces()`` and ``artifactstore gc`` would miss it.
        """
        if refused is None:
            self._announce_again()
            return None
        written = any(result == SAVE_WRITTEN for result in results if not isinstance(result, BaseException))
        kept = any(result == SAVE_KEPT for result in results if not isinstance(result, BaseException))
        if written:
            again = self._announce()
            if again is None:
                return None
            refused = again
        elif not kept:
            return refused
        else:
            name = encode_name(self.namespace)
            if self._retrying(lambda: self._client.zscore(self._registry, name)) is not None:
                return refused
        error = CapacityError(
            f"redis at {self._where} is out of memory (maxmemory reached and nothing may be evicted) and refused "
            f"to record namespace {self.namespace!r} in the registry, which does not hold it: the artifact is "
            "stored, but namespaces() and artifactstore gc would not list its namespace. Free space (clear "
            f"finished namespaces) or raise the server's maxmemory, then save it again ({self._describe(refused)})"
        )
        raise error from refused

    def _check_eviction_policy(self) -> None:
        """Warn (once per process and server) when the server may evict keys of this store.

        With a ``maxmemory-policy`` other than ``noeviction`` (and a ``maxmemory``), Redis drops keys when it
        is full: an artifact's hash, its payload key or a whole namespace index, each on its own. Nothing in
        a reply says so: ``get`` then finds half an artifact, ``list``, ``clear`` and ``namespaces`` miss
        artifacts whose index went unless they look for them (see :meth:`_unindexed`). Managed Redis services
        often default to an evicting policy, so the store says so in the log before its first artifact is
        written rather than leaving the user to find out from a damaged artifact. A server that does not let
        us read ``INFO`` (an ACL without it) is not checked. A read that fails on the way (a dropped connection,
        a timeout, ``BUSY``) is not retried within the save, which it would delay, but made again after the write
        of the next save (of any store of this process on that server) until it succeeds.
        """
        if self._policy_known:
            return
        with _POLICY_LOCK:
            if self._where in _POLICY_READ:
                self._policy_known = True
                return
            if self._where in _POLICY_READING:
                return
            _POLICY_READING.add(self._where)
        final = False
        self._policy_reads += 1
        try:
            self._stop_if_closed()
            info = self._memory_info()
            final = True
        except (RedisError, RedisClusterException) as exc:
            final = _info_refused_for_good(exc)
            later = "" if final else "; read again at the next save"
            _log.debug("could not read the maxmemory-policy of %s%s: %s", self._where, later, self._describe(exc))
            return
        finally:
            with _POLICY_LOCK:
                _POLICY_READING.discard(self._where)
                if final:
                    _POLICY_READ.add(self._where)
            self._policy_known = final
            self._after_attempt()  # a close() that raced the read leaves no connection open
        self._remember_policy(info)
        policy = _eviction_policy(info)
        if policy is None:
            return
        _log.warning(
            "redis at %s has maxmemory-policy %s: when it is full it evicts keys%s, and artifacts stored there "
            "can be lost in part (get() raises ArtifactCorruptedError or ArtifactNotFoundError; list(), clear() "
            "and namespaces() scan the server for artifacts whose index entry was evicted). Set maxmemory-policy "
            "noeviction on a server that keeps artifacts (a full server then raises CapacityError on save).",
            self._where,
            policy,
            " that have an expiry (artifacts saved with a TTL)" if policy.startswith("volatile") else "",
        )

    def _check_policy_after(self, reads: int) -> None:
        """After a save's writes: read the eviction policy if it is still unknown and the save made no read of
        it yet (``reads``: :attr:`_policy_reads` when the save began).

        A read that failed (a timeout, ``BUSY``) is made again by a later save, but after that save's write, not
        before it: on a server that stopped answering, a read before the write cost every save one more
        ``SOCKET_TIMEOUT`` before its own write failed, and the write's failure is the one to report. The first
        read of all still comes before the first write (after the namespace is recorded: see :meth:`_announce`).
        """
        if not self._policy_known and self._policy_reads == reads:
            self._check_eviction_policy()

    def _memory_info(self) -> Any:
        """``INFO memory`` of the server that holds this namespace (in a cluster, its slot's primary); once."""
        client = self._client
        if isinstance(client, RedisCluster):
            node = cast(Any, client).get_node_from_key(self._index)  # untyped in redis-py
            return client.info("memory", target_nodes=node)
        return client.info("memory")

    def _eviction_reads(self, node: Any = None) -> list[tuple[str, str]]:
        """The ``INFO`` sections :meth:`_evicts_index` needs: none for a server whose policy this process
        knows cannot evict the index, so that ``list``, ``clear`` and ``namespaces`` cost nothing more there.

        ``node``: in a cluster, the primary to ask (default: this namespace's slot's primary).
        """
        allkeys = _ALLKEYS.get(self._policy_key(node))
        if allkeys is False:
            return []
        return [("INFO", "stats")] if allkeys else [("INFO", "memory"), ("INFO", "stats")]

    def _evicts_index(self, replies: Sequence[Any], node: Any = None) -> bool:
        """Whether the server may have evicted a namespace's index (which ``list`` and ``clear`` then find
        artifacts without: see :meth:`_unindexed`), from the replies to :meth:`_eviction_reads`'s commands
        (or the errors that refused them).

        Only an ``allkeys-*`` policy evicts keys without an expiry, the index among them (``volatile-*``
        evict only keys with one, and an artifact with a TTL leaves the index when its score passes); and
        only a server that has evicted a key since it started (``evicted_keys``) has done so. So a server
        with an ``allkeys-*`` policy that has never been full, as many caches are, is never swept. The
        policy is read once per process and server (as for the warning at the first save), ``evicted_keys``
        on every call, as it grows. A server that refuses ``INFO`` (an ACL without it) is taken not to evict.
        ``node``: as for :meth:`_eviction_reads`.
        """
        if not replies:
            return False
        stats = replies[-1]
        if len(replies) == 2:
            self._remember_policy(replies[0], node)
        if not _ALLKEYS.get(self._policy_key(node)) or self._refused_info(stats):
            return False
        return _info_field(stats, "evicted_keys") not in (None, "0")

    def _remember_policy(self, memory: Any, node: Any = None) -> None:
        """Record from an ``INFO memory`` reply (or the error that refused it) whether the server (in a
        cluster, ``node``, by default this namespace's primary) evicts keys without an expiry
        (``allkeys-*``); a server that refuses ``INFO`` is taken not to."""
        policy = None if self._refused_info(memory) else _eviction_policy(memory)
        _ALLKEYS[self._policy_key(node)] = policy is not None and policy.startswith("allkeys")

    def _policy_key(self, node: Any = None) -> str:
        """The server whose policy applies, for _ALLKEYS: in a cluster, ``node`` or this namespace's slot's
        primary."""
        client = self._client
        if isinstance(client, RedisCluster):
            node = node if node is not None else self._slot_primary()
            return f"{self._where} {node.name}"
        return self._where

    def _slot_primary(self) -> Any:
        """In a cluster, the primary of this namespace's slot (a redis-py ClusterNode, untyped)."""
        return cast(Any, self._client).get_node_from_key(self._index)

    def _refused_info(self, reply: Any) -> bool:
        """Whether ``reply`` is an ACL's refusal of ``INFO``; another error is raised."""
        if not isinstance(reply, BaseException):
            return False
        if _access_failure(reply) is None:
            raise reply
        _log.debug("could not read the eviction state of %s: %s", self._where, self._describe(reply))
        return True

    def _server_info(self, section: str, node: Any = None) -> Any:
        """``INFO section`` of this namespace's server (in a cluster, ``node``, by default its slot's
        primary), retried; an ACL's refusal is returned, not raised."""
        client = self._client
        if not isinstance(client, RedisCluster):
            (reply,) = self._pipelined([("INFO", section)])
            return reply
        # INFO has no key to route it by in a cluster pipeline: the node is asked directly.
        node = node if node is not None else self._slot_primary()

        def read() -> Any:
            try:
                return client.info(section, target_nodes=node)
            except (RedisError, RedisClusterException) as exc:
                if _access_failure(exc) is None:
                    raise
                return exc

        return self._retrying(read)

    def _unindexed(self, kinds: bytes) -> Iterator[list[bytes]]:
        """The members of this namespace's keys of ``kinds`` (``b"a"``: hashes; ``b"ap"``: hashes and payload
        keys), found by a ``SCAN`` of the server: batches of legal ids' encodings, each once per batch.

        For a server that evicts the index (see :meth:`_evicts_index`): artifacts whose index entry was
        evicted are found only this way. ``SCAN`` walks the whole database (in a cluster, the slot's primary),
        not just this namespace, so it is never run on a server that does not evict. The pattern is the
        namespace's own key prefix, escaped, with one trailing wildcard: no step id or namespace becomes
        part of a pattern (encode_name's output holds no glob character anyway), and every key found is
        checked against the prefix again. A user whose ACL refuses ``SCAN`` gets a warning and no sweep.
        """
        prefix = self._tag + b":"
        pattern = _glob_escape(prefix) + b"[" + kinds + b"]:*"
        missed = f"artifacts of namespace {self.namespace!r} whose index entry was evicted are not found"
        for keys in self._scan(pattern, None, missed):
            members: dict[bytes, None] = {}  # ordered, and each member once (a hash and its payload key)
            for key in keys:
                if key.startswith(prefix) and key[len(prefix) + 1 : len(prefix) + 2] == b":":
                    member = key[len(prefix) + 2 :]
                    if _decoded(member, validate_step_id) is not None:  # else written by something else
                        members[member] = None
            found = list(members)
            for start in range(0, len(found), self._settings.batch_size):
                yield found[start : start + self._settings.batch_size]

    def _scan(self, pattern: bytes, node: Any, missed: str) -> Iterator[list[bytes]]:
        """The keys that match ``pattern``, one ``SCAN`` call's worth at a time, each call retried; on a
        cluster, of ``node`` (by default this namespace's slot's primary).

        A user whose ACL refuses ``SCAN`` ends the scan with a warning that says what is ``missed``.
        """
        count = max(self._settings.batch_size, _SCAN_COUNT)
        cursor = 0
        while True:
            try:
                cursor, keys = self._retrying(functools.partial(self._scan_keys, cursor, pattern, count, node))
            except (RedisError, RedisClusterException) as exc:
                if _access_failure(exc) is None:
                    raise
                _log.warning(
                    "redis at %s evicts keys, but this user may not SCAN: %s (%s)",
                    self._where,
                    missed,
                    self._describe(exc),
                )
                return
            yield keys
            if cursor == 0:
                return

    def _scan_keys(self, cursor: int, pattern: bytes, count: int, node: Any = None) -> tuple[int, list[bytes]]:
        client = self._client
        if isinstance(client, RedisCluster):
            node = node if node is not None else self._slot_primary()
            cursors, keys = cast(Any, client).scan(cursor, match=pattern, count=count, target_nodes=node)
            # One node: redis-py's cluster client keys its cursors by node name.
            return int(next(iter(cursors.values()))), list(keys)
        next_cursor, keys = client.scan(cursor, match=pattern, count=count)
        return int(next_cursor), cast(list[bytes], keys)  # bytes: decode_responses is refused

    def _announce_again(self) -> None:
        """Announce once more after a write during which the server may have restarted (see _server_lost)."""
        if self._registered_at is None:
            # With EVAL: a server that lost the registry has lost its script cache too (one round trip, not two).
            self._announce(cached=False)

    def _server_lost(self) -> None:
        """Note that the server may have restarted or been flushed (a dropped connection, ``NOSCRIPT``).

        It may then have lost the registry entry this store announced, while the writes that follow survive:
        the next save announces the namespace again, so ``namespaces()`` (and ``artifactstore gc``) never
        miss a namespace that holds artifacts.
        """
        self._registered_at = None

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        plan = self._plan(step_id, message, overwrite, ttl)
        reads = self._policy_reads
        refused = self._announce()
        # One script call for an inline payload; otherwise upload and commit, pipelined in one round trip.
        (result,) = self._send([plan])
        self._announced_after(refused, [result])
        if isinstance(result, BaseException):
            raise result
        self._check_policy_after(reads)
        if result == SAVE_EXISTS:
            raise self._exists_error(step_id)

    def _get(self, step_id: str) -> Message:
        member = self._member(step_id)
        key, payload_key = self._key(member), self._payload_key(member)
        # One round trip reads both places a payload can be (the GET finds nothing for an inline artifact).
        found, apart = self._pipelined([("HMGET", key, b"head", b"payload"), ("GET", payload_key)], raise_errors=True)
        head, payload = found
        if head is None and payload is None:
            raise self._not_found(step_id)
        if head is None or payload is not None:
            # An inline artifact: the HMGET read its head and payload at one instant.
            return self._decode(step_id, head, payload)
        return self._decode_apart(step_id, member, head, apart)

    def _decode_apart(
        self, step_id: str, member: bytes, head: bytes, payload: bytes | None, header: Header | None = None
    ) -> Message:
        """Decode a head and a payload that were read from two keys, one after the other.

        A save, overwrite or delete that ran in between shows up as a missing payload or as a payload that
        does not match the head's digest (the codec verifies every payload): then both are read again at
        one instant, so a reader never sees a torn artifact. ``header``: ``head`` already verified.
        """
        if payload is not None:
            try:
                if header is not None:
                    return self.codec.decode_payload(header, payload)
                return self.codec.decode(head, payload, place=(self.namespace, step_id))
            except ArtifactCorruptedError:
                pass
        keys = [self._key(member), self._payload_key(member)]
        now_head, now_payload = cast(list[bytes | None], self._script(READ, keys, []))
        if now_head is None and now_payload is None:
            raise self._not_found(step_id)
        return self._decode(step_id, now_head, now_payload)

    def _header_or_none(self, step_id: str, head: bytes) -> Header | None:
        """``head`` verified and parsed, or ``None`` if it does not verify (decoding it with its payload then
        raises the error, after the payload was read again at one instant: see :meth:`_decode_apart`)."""
        try:
            return self.codec.decode_head(head, place=(self.namespace, step_id))
        except ArtifactStoreError:
            return None

    def _info(self, step_id: str) -> ArtifactInfo:
        key = self._key(self._member(step_id))
        head = self._retrying(lambda: cast(bytes | None, self._client.hget(key, b"head")))
        if head is None:
            # The artifact is its hash: a hash without a head (written by something else) exists, and is
            # damaged, as get() says; only a missing hash is "not found". Checked only on this rare path.
            if self._retrying(lambda: self._client.exists(key)):
                raise self._decode_error_missing(step_id, "head")
            raise self._not_found(step_id)
        return self.codec.decode_head(head, place=(self.namespace, step_id)).info(step_id)

    def _namespaces(self) -> Iterator[str]:
        prefix = self._settings.key_prefix
        names = cast(list[bytes], self._retrying(lambda: self._client.zrange(self._registry, 0, -1)))
        # A registry entry that is not ASCII was written by something else (one that is, but is no namespace's
        # encoding, is skipped below, after its count, so that the registry forgets it once empty).
        registered = [name.decode("ascii") for name in names if name.isascii()]
        batch = self._settings.batch_size
        chunks = [registered[start : start + batch] for start in range(0, len(registered), batch)] or [[]]
        standalone = not isinstance(self._client, RedisCluster)
        held: list[str] = []
        empty: list[str] = []
        info: list[Any] = []
        unsure: list[tuple[str, int]] = []
        for number, chunk in enumerate(chunks):
            now_ms = int(time.time() * 1000)
            # A namespace holds artifacts while its index has an unexpired entry that is a legal id's encoding
            # (a member something else wrote does not count, as list() skips it): the first few are looked at.
            commands = [
                ("ZRANGEBYSCORE", f"{{{prefix}:{name}}}:idx", f"({now_ms}", "+inf", "LIMIT", 0, _NAMESPACE_PEEK)
                for name in chunk
            ]
            # After the indexes are read (see _evicts_index), on a standalone server in the same round trip.
            reads = self._eviction_reads() if standalone and number == len(chunks) - 1 else []
            if not commands and not reads:
                continue
            replies = self._pipelined([*commands, *reads])
            info = replies[len(commands) :]
            for name, members in zip(chunk, replies[: len(commands)], strict=True):
                if isinstance(members, Exception):
                    raise members
                if any(_decoded(member, validate_step_id) is not None for member in members):
                    held.append(name)
                elif len(members) < _NAMESPACE_PEEK:
                    empty.append(name)
                else:  # as many foreign members as were asked for: read on (rare, see _holds_legal_member)
                    unsure.append((name, now_ms))
        for name, now_ms in unsure:
            (held if self._holds_legal_member(f"{{{prefix}:{name}}}:idx", now_ms) else empty).append(name)
        # On a server that may have evicted an index or registry entries: the namespaces that still hold an
        # artifact hash, listed (and kept registered) whatever their index and the registry say.
        swept = self._swept_namespaces(info if standalone else None)
        listed = {name: _decoded(name.encode("ascii"), validate_namespace) for name in held} | swept
        for name in empty:
            if name not in swept and not self._forget(name):
                break
        yield from (namespace for namespace in listed.values() if namespace is not None)

    def _holds_legal_member(self, index: str, now_ms: int) -> bool:
        """Whether ``index`` has a member unexpired at ``now_ms`` that is a legal id's encoding, read page by
        page past the first :data:`_NAMESPACE_PEEK`, which were all written by something else."""
        page = max(self._settings.batch_size, _NAMESPACE_PEEK)

        def read(offset: int) -> list[bytes]:
            return cast(list[bytes], self._client.zrangebyscore(index, f"({now_ms}", "+inf", start=offset, num=page))

        start = _NAMESPACE_PEEK
        while True:
            members = self._retrying(functools.partial(read, start))
            if any(_decoded(member, validate_step_id) is not None for member in members):
                return True
            if len(members) < page:
                return False
            start += page

    def _forget(self, name: str) -> bool:
        """Drop the empty namespace ``name`` (encoded) from the registry unless it was announced within the
        grace period; ``False`` when the server is a read-only replica, which refuses the write.

        The cleanup is bookkeeping of a read: a listing through a URL that names a replica works, and leaves
        the cleanup to the next ``namespaces()`` on the primary. The refused write is not retried (after a
        failover, the connections that got ``READONLY`` are closed all the same, see :meth:`_roundtrip`).
        """
        try:
            self._script(FORGET_NAMESPACE, [self._registry], [name, _REGISTRY_GRACE], retry_readonly=False)
        except ReadOnlyError:
            return False
        return True

    def _swept_namespaces(self, replies: Sequence[Any] | None) -> dict[str, str]:
        """The namespaces of this key prefix (encoded: decoded) that hold an artifact hash, found by a ``SCAN``
        of each server that may have evicted an index or the registry (see :meth:`_evicts_index`); empty on
        the others, which are not scanned.

        ``replies``: on a standalone server, the replies to :meth:`_eviction_reads`'s commands; ``None`` in a
        cluster, where each primary is asked in turn (namespaces spread over all of them). The pattern is
        the key prefix's own, escaped, with wildcards for the namespace and the step id; every key found is
        parsed again, and only a legal namespace's and id's canonical encodings count.
        """
        client = self._client
        if replies is not None:
            nodes: list[Any] = [None] if self._evicts_index(replies) else []
        else:
            nodes = [
                node
                for node in cast(Any, client).get_primaries()  # untyped in redis-py
                if self._evicts_index([self._server_info(s, node) for _, s in self._eviction_reads(node)], node)
            ]
        start = f"{{{self._settings.key_prefix}:".encode("ascii")
        pattern = _glob_escape(start) + b"*" + _glob_escape(b"}:a:") + b"*"
        missed = "namespaces whose index or registry entry was evicted are not listed"
        found: dict[bytes, str] = {}
        for node in nodes:
            for keys in self._scan(pattern, node, missed):
                for key in keys:
                    name, brace, rest = key[len(start) :].partition(b"}")
                    if not key.startswith(start) or not brace or not rest.startswith(b":a:") or name in found:
                        continue
                    # Else written by something else (encode_name's output holds no ':' or '}').
                    namespace = _decoded(name, validate_namespace)
                    if namespace is not None and _decoded(rest[3:], validate_step_id) is not None:
                        found[name] = namespace
        return {name.decode("ascii"): namespace for name, namespace in found.items()}

    def _exists(self, step_id: str) -> bool:
        key = self._key(self._member(step_id))
        return bool(self._retrying(lambda: self._client.exists(key)))

    def _delete(self, step_id: str) -> bool:
        member = self._member(step_id)
        keys = [self._key(member), self._index, self._payload_key(member), self._result_key()]
        # The same marker key for every retry of this call (the script records its result there).
        return bool(self._script(DELETE, keys, [member, self._result_ttl_ms]))

    def _list(self) -> Iterator[ArtifactInfo]:
        # ZSCAN may return a member twice while the index changes; the seen-set keeps the listing exact. It
        # grows with the namespace (members only, no heads); list_page cannot replace it: paging in id order
        # costs a pass over the index per page, as neither the index (by expiry) nor its members (encode_name)
        # are in id order.
        seen: set[bytes] = set()
        for batch in self._member_batches():
            members = [member for member in batch if member not in seen]
            seen.update(members)
            # Members that are no legal id's encoding were written by something else: not listed.
            named = [(member, _decoded(member, validate_step_id)) for member in members]
            members = [member for member, step_id in named if step_id is not None]
            step_ids = [step_id for _, step_id in named if step_id is not None]
            if members:
                heads = self._pipelined([("HGET", self._key(member), b"head") for member in members])
                for step_id, head in zip(step_ids, heads, strict=True):
                    if isinstance(head, Exception):
                        raise head
                    if head is None:  # expired or deleted since the index was read
                        continue
                    yield self.codec.decode_head(head, place=(self.namespace, step_id)).info(step_id)

    def _member_batches(self) -> Iterator[list[bytes]]:
        """Batches of the namespace's members: the index's (``ZSCAN``, possibly one twice), then, on a server
        that evicts the index, those of the artifact hashes found by ``SCAN`` (see :meth:`_unindexed`)."""
        cursor = 0
        while True:
            cursor, pairs = self._retrying(functools.partial(self._scan_index, cursor))
            yield [member for member, _ in pairs]
            if cursor == 0:
                break
        # Read after the index pass: see _evicts_index.
        if self._evicts_index([self._server_info(section) for _, section in self._eviction_reads()]):
            yield from self._unindexed(b"a")

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        # The index is ordered by expiry, and its members (encode_name of the ids) sort unlike the ids
        # anyway ("%41" for "A" before "-"), so no range of it is a page. The page's ids are picked from the
        # members alone (one ZSCAN pass, no hash read), and only the page's heads are read.
        return self._page_of_ids(self._index_ids, after, limit, self._heads_of)

    def _index_ids(self) -> Iterator[tuple[str, bytes]]:
        """``(step id, member)`` of every legal id of the namespace (see :meth:`_member_batches`), possibly one
        twice."""
        for batch in self._member_batches():
            for member in batch:
                step_id = _decoded(member, validate_step_id)
                if step_id is not None:  # not a legal id's encoding: written by something else
                    yield step_id, member

    def _heads_of(self, chosen: list[tuple[str, bytes]]) -> Iterator[ArtifactInfo | None]:
        batch = self._settings.batch_size
        for start in range(0, len(chosen), batch):
            part = chosen[start : start + batch]
            heads = self._pipelined([("HGET", self._key(member), b"head") for _, member in part])
            for (step_id, _), head in zip(part, heads, strict=True):
                if isinstance(head, Exception):
                    raise head
                if head is None:  # expired or deleted since the index was read
                    yield None
                else:
                    yield self.codec.decode_head(head, place=(self.namespace, step_id)).info(step_id)

    def _scan_index(self, cursor: int) -> tuple[int, list[tuple[bytes, float]]]:
        reply = self._client.zscan(self._index, cursor, count=self._settings.batch_size)
        return cast(tuple[int, list[tuple[bytes, float]]], reply)

    def _clear(self) -> int:
        batch = self._settings.batch_size
        # One marker for the whole call: each batch records its number and count there, and its retries
        # (the same number) read them back; the next batch is sent only after this one's reply arrived.
        marker = self._result_key()
        number = itertools.count()
        removed = 0
        members, evicts = self._first_batch_and_policy(batch)
        while members:
            removed += self._clear_batch(marker, next(number), members)
            members = cast(list[bytes], self._retrying(lambda: self._client.zrange(self._index, 0, batch - 1)))
        if evicts:
            # The index is empty now: what is left of the namespace (artifacts whose index entry was evicted,
            # payload keys whose hash was) is found by SCAN and removed by the same script, which counts only
            # the hashes it found.
            for members in self._unindexed(b"ap"):
                removed += self._clear_batch(marker, next(number), members)
        return removed

    def _first_batch_and_policy(self, batch: int) -> tuple[list[bytes], bool]:
        """The index's first ``batch`` members, and whether the server may have evicted the index (see
        :meth:`_evicts_index`), read in the same round trip on a standalone server."""
        first = ("ZRANGE", self._index, 0, batch - 1)
        reads = self._eviction_reads()
        if isinstance(self._client, RedisCluster):
            (members,) = self._pipelined([first], raise_errors=True)
            return cast(list[bytes], members), self._evicts_index([self._server_info(s) for _, s in reads])
        members, *replies = self._pipelined([first, *reads])
        if isinstance(members, Exception):
            raise members
        return cast(list[bytes], members), self._evicts_index(replies)

    def _clear_batch(self, marker: bytes, number: int, members: list[bytes]) -> int:
        keys = [self._index, marker, *map(self._key, members), *map(self._payload_key, members)]
        return int(self._script(CLEAR, keys, [number, self._result_ttl_ms, *members]))

    def _save_many(self, items: list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        if len(items) == 1:
            self._save(*items[0], overwrite, ttl)
            return
        # Every artifact is encoded and checked against the size limit before anything is sent.
        plans = [self._plan(step_id, message, overwrite, ttl) for step_id, message in items]
        reads = self._policy_reads
        refused = self._announce()
        for chunk in _batches(plans, lambda plan: len(plan.payload), self._settings.batch_size):
            results = self._send(chunk)
            refused = self._announced_after(refused, results)
            for plan, result in zip(chunk, results, strict=True):
                if isinstance(result, ArtifactStoreError):
                    result.step_id = plan.step_id
                    raise result
                if isinstance(result, Exception):
                    error = self._translated(result, "save_many")
                    error.step_id = plan.step_id
                    raise error from result
                if result == SAVE_EXISTS:
                    self._check_policy_after(reads)
                    raise self._exists_error(plan.step_id)
        self._check_policy_after(reads)

    def _get_many(self, step_ids: list[str]) -> dict[str, Message]:
        found: dict[str, Message] = {}
        missing: list[str] = []
        read_apart = False  # whether a large artifact was read after the small ones of its batch
        batch = self._settings.batch_size
        # Looked up once per batch, not per artifact.
        decode, namespace = self.codec.decode, self.namespace
        for start in range(0, len(step_ids), batch):
            chunk = [(step_id, self._member(step_id)) for step_id in step_ids[start : start + batch]]
            replies = self._pipelined([("HMGET", self._key(member), b"head", b"payload") for _, member in chunk])
            apart: list[tuple[str, bytes, bytes]] = []
            for (step_id, member), reply in zip(chunk, replies, strict=True):
                if isinstance(reply, Exception):
                    raise self._failed_for(reply, step_id) from reply
                head, payload = reply
                if head is not None and payload is not None:
                    found[step_id] = decode(head, payload, place=(namespace, step_id))
                elif head is None and payload is None:
                    missing.append(step_id)
                elif payload is None:
                    apart.append((step_id, member, head))
                else:
                    raise self._decode_error_missing(step_id, "head")
            # The payloads are read in pipelines of at most _PIPELINE_BYTES (as save_many sends them): the
            # heads tell their sizes, and a batch of large artifacts would otherwise arrive in one reply.
            read_apart = read_apart or bool(apart)
            sized = [(step_id, member, head, self._header_or_none(step_id, head)) for step_id, member, head in apart]
            for part in _batches(sized, lambda item: item[3].stored_size if item[3] else 0, batch):
                payloads = self._pipelined([("GET", self._payload_key(member)) for _, member, _, _ in part])
                for (step_id, member, head, header), payload in zip(part, payloads, strict=True):
                    if isinstance(payload, Exception):
                        raise self._failed_for(payload, step_id) from payload
                    try:
                        found[step_id] = self._decode_apart(step_id, member, head, payload, header)
                    except ArtifactNotFoundError:
                        missing.append(step_id)  # deleted between the two reads
                    except Exception as exc:
                        raise self._failed_for(exc, step_id) from exc
        if read_apart:
            # Large artifacts are read after the small ones of their batch: the dict, like the missing ids, is
            # put back in the order requested, as the other backends return it. (Each id is found or missing.)
            missing = [step_id for step_id in step_ids if step_id not in found] if missing else []
            found = {step_id: found[step_id] for step_id in step_ids if step_id in found}
        if missing:
            raise self._missing_many(missing)
        return found

    def _failed_for(self, exc: Exception, step_id: str) -> ArtifactStoreError:
        """``exc``, one item's failure in a batch read, as the error naming that item's step id.

        A pipelined reply's error (e.g. ``WRONGTYPE`` from a key of this namespace that something else
        wrote) would otherwise reach the caller naming no step id, and the batch has many.
        """
        error = exc if isinstance(exc, ArtifactStoreError) else self._translated(exc, "get_many")
        error.step_id = step_id
        return error

    def _close(self) -> None:
        self._closing.set()
        self._release_connections()

    def _release_connections(self) -> None:
        """Close every connection of our own client (a client given by the caller is left alone); idempotent.

        Operations in flight in other threads lose their connection and raise ``StoreClosedError`` (see
        :meth:`_stop_if_closed`).
        """
        if self._owns_client:
            self._client.close()
            if isinstance(self._client, redis.Redis):
                # redis-py's close() leaves open a pool that was passed in (as _connect passes ours): its
                # sockets would otherwise be closed only by the garbage collector.
                self._client.connection_pool.disconnect()

    def _closed_error(self) -> StoreClosedError:
        """The error of an operation that :meth:`close` cut short (its callers run only once one had begun)."""
        return StoreClosedError.of_store(self.namespace, self.backend_name, in_flight=True)

    def _stop_if_closed(self, cause: BaseException | None = None) -> None:
        """Raise ``StoreClosedError`` (``cause`` chained) if :meth:`close` was called: an operation that was
        in flight then makes no further attempt, which would open a new connection after close() and leave it
        open, and its failure (redis-py's socket closed under it) is reported as the close that caused it.
        """
        if self.closed:
            raise self._closed_error() from cause

    def _interrupted(self, exc: BaseException) -> None:
        """Raise ``StoreClosedError`` (``exc`` chained) if ``exc`` is what :meth:`close` did to an attempt in
        flight: it closed our own client's connection. A client given by the caller is not closed, so its
        failures are real ones (and, with the store closed, are not retried: see :meth:`_back_off`).
        """
        if self._owns_client:
            self._stop_if_closed(exc)

    def _after_attempt(self) -> None:
        """Close again what an attempt that raced :meth:`close` may have opened after it closed the pool.

        close() marks the store closed before it closes the connections, so an attempt that got a connection
        after that (it passed its closed check just before) finds the mark here and closes it.
        """
        if self.closed:
            self._release_connections()

    # -- talking to the server ------------------------------------------------------------------------

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying transient failures under the configured policy.

        Every operation of this store may be repeated safely: a save whose reply was lost finds its own
        artifact on the retry and succeeds as an identical save; a delete or clear batch whose reply was lost
        finds the result its first attempt recorded (see DELETE), so it reports what it removed. Script calls
        go through :meth:`_send`, which follows the same policy call by call.
        """
        retries = 0
        last: BaseException | None = None
        while True:
            self._stop_if_closed(last)
            try:
                return operation()
            except (RedisError, RedisClusterException) as exc:
                self._interrupted(exc)
                if isinstance(exc, RedisConnectionError):
                    self._server_lost()
                if not self._may_retry(exc, retries):
                    raise
                retries += 1
                self._back_off(exc, retries)
                last = exc
            finally:
                self._after_attempt()

    def _may_retry(self, exc: BaseException, retries: int) -> bool:
        """Whether a failure after ``retries`` retries is retried once more."""
        return retries < self._settings.retry_attempts and self._retryable(exc)

    def _back_off(self, exc: BaseException, retry: int) -> None:
        """Wait before retry number ``retry`` (from 1): exponential backoff with equal jitter.

        Raises:
            StoreClosedError: :meth:`close` was called before or during the wait (which it ends at once).
        """
        settings = self._settings
        ceiling = min(settings.retry_backoff_max, settings.retry_backoff * 2 ** (retry - 1))
        # Equal jitter spreads out many clients retrying after one failure; not security.
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311
        _log.debug(
            "redis %s on %s; retry %d of %d in %.3f s",
            type(exc).__name__,
            self._where,
            retry,
            settings.retry_attempts,
            delay,
        )
        if self._closing.wait(delay):
            raise self._closed_error() from exc

    def _retryable(self, exc: BaseException) -> bool:
        if _pool_exhausted(exc) or _access_failure(exc) is not None or _tls_failure(exc) is not None:
            return False
        if isinstance(exc, RedisTimeoutError) or _cluster_timeout(exc) is not None:
            return self._settings.retry_on_timeout
        if isinstance(exc, ReadOnlyError):
            # A primary that a failover demoted refuses writes (before any is made) on the connections opened to
            # it; our own pool's connection that got it was closed (see _roundtrip), so the retry opens a new
            # one, to wherever the URL leads now. Without our own pool there is nothing to renew.
            return self._pool is not None
        # ClusterError: CLUSTERDOWN, or redis-py's "TTL exhausted" after a run of MOVED, ASK and TRYAGAIN
        # replies (a slot migrating under a batch), which a later attempt gets past. BUSY: the command did not
        # run (see _is_busy), and the script that blocks the server may end or be killed.
        return _is_busy(exc) or isinstance(
            exc, (RedisConnectionError, ClusterError, TryAgainError, RedisClusterException)
        )

    def _script(
        self,
        script: LuaScript,
        keys: Sequence[bytes],
        args: Sequence[Any],
        *,
        cached: bool = True,
        retry_readonly: bool = True,
    ) -> Any:
        """Run one script call (see :meth:`_send`) and return its result; an error reply is raised."""
        (result,) = self._send([_ScriptCall(script, keys, args)], cached=cached, retry_readonly=retry_readonly)
        if isinstance(result, Exception):
            raise result
        return result

    def _send(self, calls: Sequence[_ScriptCall], *, cached: bool = True, retry_readonly: bool = True) -> list[Any]:
        """Run script calls, pipelined; return their results in order (an error reply is returned, not raised).

        ``cached=False`` sends the calls with ``EVAL`` from the start (see ``NOSCRIPT`` below).
        ``retry_readonly=False``: a ``READONLY`` reply is final, not retried (for a write that may be skipped).

        The one way this store runs its scripts. Each round trip sends every call still waiting for its
        result: its upload's ``SET`` (if it has one) just before the script. A call leaves the loop with its
        first final reply, and is never sent again after that. The others:

        - ``NOSCRIPT`` (the server restarted or its script cache was flushed): the script did not run. Every
          call that got it goes in the next round trip with ``EVAL``, which caches the script again, so a
          flushed cache costs one round trip per batch, not one per call; an upload the server accepted is
          not sent again.
        - a transient error reply (``TRYAGAIN``, ``CLUSTERDOWN``, ``BUSY``, what :meth:`_retryable` accepts): the call
          is retried alone, after the backoff, under the policy of :meth:`_retrying`. A round trip that
          failed as a whole (a dropped connection) is retried with every call it carried, each of which may
          or may not have run; every script is safe to repeat (see :meth:`_retrying`). The retries count
          per ``_send`` (one budget for the batch, as one operation has under :meth:`_retrying`), so no call
          is retried after a transient failure more than ``retry_attempts`` times; a ``NOSCRIPT`` and a
          vanished upload each add one send that is not counted, because the script did not run.
        - an upload that vanished before its commit (the commit found no upload although its ``SET``
          succeeded: it expired in a stall, or the server lost it) is sent again once, then is an error.

        Raises:
            RedisError, RedisClusterException: a round trip failed and was not retried (or its retries ran out).
        """
        results: list[Any] = [None] * len(calls)
        waiting = list(range(len(calls)))
        uncached: set[int] = set() if cached else set(range(len(calls)))  # calls to send with EVAL
        uploaded: set[int] = set()  # calls whose upload is on the server although their script has not run
        vanished: set[int] = set()  # calls whose upload vanished once
        retries = 0
        last: BaseException | None = None
        while waiting:
            self._stop_if_closed(last)
            commands: list[tuple[Any, ...]] = []
            uploading = [calls[index].upload is not None and index not in uploaded for index in waiting]
            for index, upload in zip(waiting, uploading, strict=True):
                call = calls[index]
                if upload:
                    commands.append(("SET", call.upload, call.payload, "PX", _UPLOAD_TTL_MS))
                commands.append(call.command(cached=index not in uncached))
            try:
                replies = iter(self._roundtrip(commands))
            except (RedisError, RedisClusterException) as exc:
                self._interrupted(exc)
                if isinstance(exc, RedisConnectionError):
                    self._server_lost()
                if not self._may_retry(exc, retries):
                    raise
                retries += 1
                self._back_off(exc, retries)
                last = exc
                continue
            finally:
                self._after_attempt()
            again: list[int] = []
            transient: list[tuple[int, Exception]] = []
            for index, upload in zip(waiting, uploading, strict=True):
                call = calls[index]
                upload_reply = next(replies) if upload else None
                result = next(replies)
                if isinstance(result, NoScriptError):
                    self._server_lost()
                    uncached.add(index)
                    if upload and not isinstance(upload_reply, Exception):
                        uploaded.add(index)  # in place: the EVAL needs no second upload
                    again.append(index)
                    continue
                if call.upload is not None and result == SAVE_UPLOAD_MISSING:
                    # The commit changed nothing. A failed upload (a full server...) is the call's error.
                    if isinstance(upload_reply, Exception):
                        result = upload_reply
                    elif index not in vanished:
                        vanished.add(index)
                        uploaded.discard(index)
                        again.append(index)
                        continue
                    else:
                        what = f"of {call.step_id!r} " if isinstance(call, _SavePlan) else ""
                        result = BackendError(
                            f"redis at {self._where} lost the uploaded payload {what}twice before it could be "
                            "committed; nothing was saved"
                        )
                if (
                    isinstance(result, Exception)
                    and (retry_readonly or not isinstance(result, ReadOnlyError))
                    and self._may_retry(result, retries)
                ):
                    transient.append((index, result))
                    continue
                results[index] = result
            if transient:
                retries += 1
                self._back_off(transient[0][1], retries)
                last = transient[0][1]
                again.extend(index for index, _ in transient)
                again.sort()  # the calls keep their order
            waiting = again
        return results

    def _pipelined(self, commands: Iterable[tuple[Any, ...]], *, raise_errors: bool = False) -> list[Any]:
        """Send read commands in one round trip, retried under the policy of :meth:`_retrying`.

        As :meth:`_send` does for script calls, the commands that got a transient error reply (``TRYAGAIN``,
        ``CLUSTERDOWN``, ``MASTERDOWN``, ``BUSY``: what :meth:`_retryable` accepts) are sent again, alone, after the
        backoff, and the others keep their replies; a round trip that failed as a whole is sent again. The
        results may be exceptions (error replies, a transient one once the retries ran out); with
        ``raise_errors`` the first one is raised instead.
        """
        commands = list(commands)
        results: list[Any] = [None] * len(commands)
        waiting = list(range(len(commands)))
        attempts = 0

        def run() -> list[Any]:
            # A transient reply is raised for _retrying to back off and call again (with the commands still
            # waiting) while it may retry; so this attempt's number is the number of retries so far.
            nonlocal waiting, attempts
            retries, attempts = attempts, attempts + 1
            if len(waiting) == len(commands):  # every command: the first attempt, or all were transient
                replies = self._roundtrip(commands)
                if len(replies) != len(commands):  # as zip(strict=True) refuses below: never a short result
                    raise RuntimeError(f"{len(commands)} commands were sent and {len(replies)} replies read")
                results[:] = replies
            else:
                replies = self._roundtrip([commands[index] for index in waiting])
                for index, reply in zip(waiting, replies, strict=True):
                    results[index] = reply
            if not _holds(replies, Exception):
                waiting = []
                return results
            again = [
                index
                for index, reply in zip(waiting, replies, strict=True)
                if isinstance(reply, Exception) and self._may_retry(reply, retries)
            ]
            waiting = again
            if again:
                raise results[again[0]]
            return results

        self._retrying(run)
        if raise_errors and _holds(results, Exception):
            raise next(result for result in results if isinstance(result, Exception))
        return results

    def _roundtrip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one round trip and read every reply; error replies are returned, not raised.

        Not retried here. A connection that fails midway is closed (a reply may still be on its way).
        """
        pool = self._pool
        if pool is None:
            client = self._client
            pipe = client.pipeline(transaction=False)
            for command in commands:
                # Through execute_command: redis-py's cluster pipeline refuses its evalsha() helper (it cannot
                # recover from NOSCRIPT itself); the NOSCRIPT fallbacks make pipelined EVALSHA safe.
                if isinstance(client, RedisCluster) and command[0] in ("EVALSHA", "EVAL") and command[2]:
                    # The primary of the script's slot (all its keys share one). Without a target, redis-py's
                    # cluster pipeline (8.x) asks the server for a script's keys with a COMMAND GETKEYS round
                    # trip of its own per call: a save_many of 500 artifacts cost 500 extra round trips. A
                    # MOVED or ASK reply is still followed (the retry is routed by the keys).
                    node = cast(Any, client).get_node_from_key(command[3])  # untyped in redis-py
                    pipe.execute_command(*command, target_nodes=node)
                else:
                    pipe.execute_command(*command)
            return list(pipe.execute(raise_on_error=False))
        connection = _pooled_connection(pool)
        try:
            packed = _pack_commands(commands)
            connection.send_packed_command(packed if packed is not None else connection.pack_commands(commands))
            replies = _replies(connection, len(commands))
            if _holds(replies, ReadOnlyError):
                # A primary demoted to a replica by a failover (a managed Redis moves its DNS name to the new
                # primary) keeps answering READONLY on this connection for as long as it lives: it is closed,
                # and so are the idle ones, which lead there too (reads through them would miss what is written
                # to the new primary from now on, while the demoted node syncs).
                connection.disconnect()
                _disconnect_idle(pool)
            return replies
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    # -- errors ---------------------------------------------------------------------------------------

    def _secret_texts(self) -> tuple[str, ...]:
        secrets: list[str] = []
        if self._settings.password is not None:
            secrets.append(self._settings.password.get_secret_value())
        try:
            parts = urlsplit(self._settings.url.get_secret_value())
            url_password = parts.password
            query = secret_query_values(parts.query)
        except ValueError:
            url_password, query = None, []
        if url_password:
            # As written in the URL (percent-encoded or not) and as redis-py decodes and sends it; redact()
            # adds the quoted spellings.
            secrets += [url_password, unquote(url_password)]
        # The query values display_url masks (redis-py reads e.g. ?password=... on unix socket URLs).
        secrets += query
        return tuple(secret for secret in secrets if secret)

    def _secret_values(self) -> Iterable[str]:
        return self._secrets

    def _describe(self, exc: BaseException) -> str:
        text = redact(str(exc), self._secrets).strip()
        if len(text) > 300:
            text = text[:300] + "..."
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def _max_artifact_bytes(self) -> int | None:
        """``max_artifact_bytes``: ``bytes`` content (all that ``save_stream`` stores) is stored as it is, so a
        stream longer than it can never be saved."""
        return self._settings.max_artifact_bytes

    def _too_large_error(self, step_id: str, size: int | None, limit: int) -> PayloadTooLargeError:
        """The error of a payload over ``max_artifact_bytes`` (``size=None``: a stream cut off past it)."""
        shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return PayloadTooLargeError(
            f"artifact {step_id!r} is {shown}; the redis backend stores at most {limit} bytes per artifact "
            f"({_env('max_artifact_bytes')}; Redis's own limit is {REDIS_MAX_BULK_BYTES}). Nothing was sent.",
            step_id=step_id,
        )

    def _translated(self, exc: BaseException, operation: str) -> ArtifactStoreError:
        error = self._translate_error(exc) if isinstance(exc, Exception) else None
        if error is None:
            error = BackendError(f"redis {operation} failed on {self._where}: {self._describe(exc)}")
        error.backend = self.backend_name
        error.namespace = self.namespace
        return error

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        """Map a redis-py exception to the core error family; the message never holds a secret."""
        if self.closed and self._owns_client:
            # close() took the connection from under the operation (redis-py then raises anything from a
            # ConnectionError to a ValueError of the closed socket): the cause to act on is the close.
            return self._closed_error()
        where = f"redis at {self._where}"
        what = self._describe(exc)
        settings = self._settings
        refused = _access_failure(exc)
        if refused is not None and _is_acl_denial(refused):
            # Redis names a script by its SHA1 only: say which of ours it was.
            script = next((f" in the store's {s.name} script" for s in _SCRIPTS if s.sha in str(refused)), "")
            return AccessDeniedError(
                f"{where} refused a command or key to this user{script} ({self._describe(refused)}); the user's "
                "ACL must allow the commands and keys listed under 'ACL' in the redis backend's documentation, or "
                f"point {_env('url')} / {_env('username')} at a user that has them"
            )
        if refused is not None:
            what = self._describe(refused)
            return AccessDeniedError(
                f"{where} refused the credentials ({what}); check {_env('url')}, "
                f"{_env('username')} and {_env('password')}"
            )
        if _is_wrong_type(exc):
            return ArtifactCorruptedError(
                f"a key of namespace {self.namespace!r} on {where} holds another kind of value than this backend "
                f"writes there (written by something other than this backend?); delete it ({what})"
            )
        if _is_oom(exc):
            return CapacityError(
                f"{where} is out of memory (maxmemory reached and nothing may be evicted); nothing was saved. "
                f"Free space (clear finished namespaces) or raise the server's maxmemory ({what})"
            )
        tls = _tls_failure(exc)
        if isinstance(tls, OSError) and not isinstance(tls, ssl.SSLError):
            return BackendError(
                f"a file named by the ssl_* options in the query of {_env('url')} (ssl_ca_certs, ssl_certfile, "
                f"ssl_keyfile) could not be read for the connection to {where} ({self._describe(tls)}); not retried"
            )
        if tls is not None:
            return BackendError(
                f"the TLS handshake with {where} failed ({self._describe(tls)}); not retried. Check the server's "
                f"certificate and the ssl_* options in the query of {_env('url')} (ssl_ca_certs=/path/to/ca.pem "
                "names the CA that signed it; a server that requires client certificates, tls-auth-clients, "
                "needs ssl_certfile and ssl_keyfile, and ssl_password for an encrypted key), and that the "
                "server speaks TLS on that port"
            )
        if self._discovered:
            # After the store was built (its discovery failing is "cannot be reached", as documented).
            exc = _cluster_timeout(exc) or exc
        if isinstance(exc, RedisTimeoutError) and _connect_timeout(exc):
            # Nothing of this attempt reached the server. A rediss:// URL to a server without TLS looks like
            # this too: the server waits for a command while the client waits for the handshake.
            plain = (
                "; or the server does not speak TLS on that port (the URL is rediss://)"
                if urlsplit(settings.url.get_secret_value()).scheme == "rediss"
                else ""
            )
            return BackendTimeoutError(
                f"{where} did not accept a connection within {_env('socket_connect_timeout')}="
                f"{settings.socket_connect_timeout} s: the host is unreachable or a firewall drops the packets"
                f"{plain} ({what})"
            )
        if isinstance(exc, RedisTimeoutError):
            return BackendTimeoutError(
                f"{where} did not answer in time ({_env('socket_timeout')}={settings.socket_timeout} s, "
                f"{_env('socket_connect_timeout')}={settings.socket_connect_timeout} s); the operation may or may "
                f"not have been applied ({what})"
            )
        if _pool_exhausted(exc):
            return BackendUnavailableError(
                f"no free connection to {where} within {settings.pool_timeout} s: all "
                f"{settings.max_connections} pooled connections are busy ({_env('max_connections')}, "
                f"{_env('pool_timeout')})"
            )
        if isinstance(exc, BusyLoadingError):
            return BackendUnavailableError(
                f"{where} is still loading its dataset after {settings.retry_attempts} retries; retry later or "
                f"raise {_env('retry_attempts')} ({what})"
            )
        if isinstance(exc, ReadOnlyError):
            # With our own pool, the write was retried on new connections (past a failover, they reach the
            # new primary): the URL itself leads to a replica.
            again = ", also over new connections" if self._pool is not None and settings.retry_attempts else ""
            return BackendUnavailableError(
                f"{where} is a read-only replica and refused the write{again}; point {_env('url')} at the "
                f"primary ({what})"
            )
        if _is_busy(exc):
            return BackendUnavailableError(
                f"{where} is busy running a script or function (past its busy-reply-threshold) and refused the "
                f"command without running it, also after {settings.retry_attempts} retries; retry later or raise "
                f"{_env('retry_attempts')} ({what})"
            )
        if isinstance(exc, (RedisConnectionError, ClusterError, TryAgainError, RedisClusterException)):
            # A TLS-only port resets a connection that sends a command instead of a handshake; so does a server
            # going away, so this is a hint, as for rediss:// to a plain port.
            hint = (
                "; if the server speaks TLS on that port, use rediss://"
                if self._where.startswith("redis://") and _reset(exc)
                else ""
            )
            return BackendUnavailableError(f"{where} is unavailable ({what}){hint}")
        if isinstance(exc, ResponseError) and str(exc).startswith("DB index is out of range"):
            return BackendError(
                f"{where} has no database {_client_db(self._client)}: the database number in {_env('url')} "
                f"must be below the server's 'databases' setting (16 by default) ({what})"
            )
        if isinstance(exc, MovedError) and not isinstance(self._client, RedisCluster):
            # A standalone client does not follow redirections: every command for another node's slot fails.
            fix = (
                f"set {_env('cluster')}=true"
                if self._owns_client
                else "give the store a redis.cluster.RedisCluster client"
            )
            return BackendError(
                f"{where} is a node of a Redis Cluster and redirected a command to another node ({what}): {fix}"
            )
        if isinstance(exc, ResponseError) and str(exc).lower().startswith("unknown command"):
            # EVALSHA, HMGET...: every Redis since 5 has them. A Sentinel port, or a proxy or service that
            # speaks only part of the protocol, does not.
            return BackendError(
                f"{where} does not know a command the redis backend needs ({what}); is {_env('url')} pointing "
                "at a Redis Sentinel port or a proxy instead of a Redis server? (For Sentinel, see the redis "
                "backend's documentation.)"
            )
        if isinstance(exc, RedisError):
            return BackendError(f"{where} failed ({what})")
        if isinstance(exc, TimeoutError):  # a socket error redis-py did not wrap (the builtin, an OSError)
            return BackendTimeoutError(f"{where} did not answer in time ({what})")
        if isinstance(exc, OSError):
            return BackendUnavailableError(f"{where} is unavailable ({what})")
        return None
