"""The ``http`` backend: an :class:`~artifactstore_core.ArtifactStore` that talks to an artifact server.

It uses one pooled :class:`httpx.Client` per store (thread-safe, rebuilt after a fork), explicit connect
and read timeouts, never follows redirects, and retries transient failures only where repeating the
request cannot change its outcome (see :data:`RETRY_POLICY`). Bodies are the envelope of the stored format,
verified by the server on save and by this client on read. A success answer counts only when it carries
the artifact server's protocol marker (:data:`~artifactstore_http.protocol.PROTOCOL_HEADER`): another web
server at a mistyped endpoint that answers 200 to anything must not turn a save into silent data loss.

httpx rather than requests: per-phase timeouts, typed, redirects off by default, a thread-safe client
whose pool size is one setting, and the same API for the async mirror later.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import itertools
import json
import logging
import os
import random
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Literal, NoReturn, TypeVar, cast

import httpcore
import httpx

from artifactstore_core import ArtifactInfo, ArtifactStore, Capabilities, Codec, Message
from artifactstore_core.envelope import PREFIX_SIZE, TAG_SIZE, Header, PayloadReader, content_stream, new_hasher
from artifactstore_core.errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    CapacityError,
    ConfigurationError,
    PayloadTooLargeError,
    SerializationError,
    StoreClosedError,
    raise_chained,
    redact,
)
from artifactstore_core.settings import load_settings
from artifactstore_core.store import ContextThreadPoolExecutor, checked_read

from .protocol import (
    API_PREFIX,
    ERROR_CLASSES,
    ERROR_DETAIL_HEADER,
    ERROR_HEADER,
    INFO_SEGMENT,
    MEDIA_TYPE_ENVELOPE,
    MEDIA_TYPE_PROBLEM,
    PROBLEM_NOT_FOUND,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    decode_detail,
    encode_cursor,
    quote_segment,
)
from .settings import HttpSettings, _head_setting, _token_problem, head_allowance, is_loopback

__all__ = ["RETRY_POLICY", "HttpStore"]

logger = logging.getLogger("artifactstore_http.client")

_T = TypeVar("_T")


#: Which failures each kind of request retries. ``"transient"``: connection failures, timeouts, resets and
#: 502/503/504 answers that are retryable (an artifact server's problem whose ``retryable`` is true, or an
#: answer not from an artifact server, e.g. a proxy's); ``"unsent"``: only failures before the request left
#: (connect errors and timeouts, pool timeouts), because repeating a delete or clear that did happen would
#: change what it returns. A delete whose request may have been sent is repeated once more, and only a
#: repeat that removed the artifact is trusted (see ``HttpStore._delete``).
RETRY_POLICY: dict[str, Literal["transient", "unsent"]] = {
    "get": "transient",
    # open: the request and the envelope's head only; a failure while the payload is read is not repeated
    # (bytes were handed out already): the caller opens the artifact again.
    "open": "transient",
    "info": "transient",
    "exists": "transient",
    "list": "transient",
    # Write-once makes a repeated save a no-op, and a repeated overwrite stores the same bytes again.
    "save": "transient",
    "delete": "unsent",
    "clear": "unsent",
    # save_stream asks the server's body limit (GET /v1/health) before it reads the stream: a read.
    "health": "transient",
}

_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# What OpenSSL says when the server's certificate does not verify here, or when what answers does not speak TLS
# (an https:// endpoint on the artifact server's own plain-HTTP port). A handshake cut by the network says
# something else, and stays retryable.
_TLS_REFUSALS = ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "record layer failure")
_RETRY_STATUSES = (502, 503, 504)
_BACKOFF_BASE = 0.1
_BACKOFF_MAX = 2.0
# Most bytes read of an answer whose body is not needed (a problem, or a save's success): an artifact server's
# problem is a few hundred bytes. Beyond it the body is left unread (the connection is closed, not drained)
# and the error is told from the status and the Artifactstore-Error header alone.
_MAX_SMALL_BODY = 64 * 1024
# Most items list_page asks the server for in one request: the server's default page (it accepts up to 10,000).
_LIST_REQUEST_ITEMS = 1000
# save_stream: the most bytes asked of the caller's stream in one read, and written to or read from the spool
# at once; a stream that ends before _SMALL_STREAM bytes is sent with save's request, from memory, unspooled.
_SPOOL_CHUNK = 1024 * 1024
_SMALL_STREAM = 1024 * 1024
# open: the buffer of the stream it returns (httpcore reads the socket 64 KiB at a time).
_OPEN_BUFFER = 64 * 1024


def _handed_over(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks of ``first``, each dropped from the list as it is yielded (the first megabyte of a spooled
    stream is not held while the rest is written), then those of ``rest``.

    Not ``itertools.chain(first, rest)`` with ``first.clear()`` in the loop: a list emptied while chain walks
    it ends there, and every chunk of it but the first was silently skipped (a stream of short reads was
    saved without bytes 64 KiB to 1 MiB, its digest taken over what was left)."""
    first.reverse()
    while first:
        yield first.pop()
    yield from rest


@dataclass(eq=False, slots=True)
class _Body:
    """The rest of an envelope's body after its head, left unread for a stream that ``open`` returns.

    ``held`` holds the response open and the client lent for it; closing it closes the one and hands the
    other back. ``close_delimited``: only the closing of the connection ends the body (see
    :func:`_close_delimited`).
    """

    first: bytes
    chunks: Iterator[bytes]
    close_delimited: bool
    held: contextlib.ExitStack


@dataclass(frozen=True, slots=True)
class _Answer:
    """An answer of the server, its body read within a bound while its connection was lent (see ``_send``).

    ``content`` is the body of a JSON or problem answer (empty when it was not read, or was larger than its
    bound); ``header`` and ``payload`` are the verified header and the payload bytes of a get's envelope.
    """

    status_code: int
    headers: httpx.Headers
    method: str
    content: bytes = b""
    header: Header | None = None
    payload: bytes = b""
    body: _Body | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        """The body parsed as JSON. Raises ValueError when it is not JSON."""
        return json.loads(self.content)


# How long a store trusts the body limit its server advertised: save_stream asks again after this, so a
# server restarted with another limit is believed within a minute, at one request a minute at most.
_LIMIT_TTL = 60.0


class _Sockets:
    """The open sockets of a store's connections, so that :meth:`_Clients.close` can end requests in flight
    in other threads without closing a descriptor that another thread is still using.

    Closing a socket under a thread that waits on it does not wake that thread: its ``poll()`` goes on
    waiting, on a descriptor number the process may already have handed to another socket or file, until
    the read timeout, even after the server has answered. ``shutdown()`` ends every wait on the socket at
    once (reads see the end of the stream, writes fail) and frees no descriptor; the thread using the
    connection closes it. Once shut, no connection is opened any more.
    """

    def __init__(self) -> None:
        # Held while a socket is shut down or forgotten, so that its owner never closes it in between.
        self._lock = threading.Lock()
        self._open: set[_TrackedStream] = set()
        self.shut = False
        #: The clients whose every connection is tracked (see :func:`_track`).
        self.clients: set[httpx.Client] = set()

    def add(self, stream: _TrackedStream) -> bool:
        """Track ``stream``; ``False`` (not tracked) if :meth:`shut_all` was called."""
        with self._lock:
            if self.shut:
                return False
            self._open.add(stream)
            return True

    def discard(self, stream: _TrackedStream) -> None:
        with self._lock:
            self._open.discard(stream)

    def shut_all(self) -> None:
        """Shut down every tracked socket, and refuse to track (and so to open) any more."""
        with self._lock:
            self.shut = True
            for stream in self._open:
                sock = stream.get_extra_info("socket")
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        # Its owner's close() then resets the connection, as closing it here did: the server
                        # learns at once that nobody reads what it still sends.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        # The plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would drop
                        # the TLS state under the thread that is using it.
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackedStream(httpcore.NetworkStream):
    """A connection's stream that :class:`_Sockets` knows of from its opening until its owner closes it."""

    def __init__(self, inner: httpcore.NetworkStream, sockets: _Sockets) -> None:
        self._inner = inner
        self._sockets = sockets

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._sockets.discard(self)
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        try:
            tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        finally:
            # The TLS stream owns the descriptor from here (or, on failure, it is closed).
            self._sockets.discard(self)
        return _tracked(tls, self._sockets)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _tracked(stream: httpcore.NetworkStream, sockets: _Sockets) -> _TrackedStream:
    """``stream``, tracked by ``sockets``; closed, and ``httpcore.ConnectError`` raised, once they are shut."""
    tracked = _TrackedStream(stream, sockets)
    if not sockets.add(tracked):
        stream.close()
        raise httpcore.ConnectError("the store was closed")
    return tracked


class _TrackingBackend(httpcore.SyncBackend):
    """httpcore's network backend, with every connection it opens tracked by a :class:`_Sockets`."""

    def __init__(self, sockets: _Sockets) -> None:
        self._sockets = sockets

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if self._sockets.shut:
            raise httpcore.ConnectError("the store was closed")
        return _tracked(super().connect_tcp(host, port, timeout, local_address, socket_options), self._sockets)


def _track(transports: Iterable[object], backend: _TrackingBackend) -> bool:
    """Make every one of ``transports`` open its connections through ``backend``; whether that was done.

    httpx takes no network backend, so it is set on the httpcore pool of each transport (the one the store
    made, and those httpx made for proxies from the environment). ``False``, and nothing changed, when a
    transport is not of the known shape: :meth:`_Clients.close` then closes that client as a whole.
    """
    pools = [getattr(transport, "_pool", None) for transport in transports]
    known = [
        pool
        for pool in pools
        if isinstance(pool, httpcore.ConnectionPool)
        and isinstance(getattr(pool, "_network_backend", None), httpcore.SyncBackend)
    ]
    if len(known) != len(pools):
        return False
    for pool in known:
        pool._network_backend = backend
    return True


class _Clients:
    """At most ``size`` httpx clients of one connection each, every one used by one thread at a time.

    Why not one client with a pool of ``size`` connections shared by all threads: httpcore's shared pool
    can close a connection it has just handed to a request another thread is about to send (with httpcore
    1.0.9, the newest release: encode/httpcore#1110). That request then fails with ``ReadError`` (EBADF)
    after it may have reached the server, which a delete or clear cannot safely repeat; 32 threads on a
    pool of 4 hit it about once a minute. A client that one thread uses at a time never runs two pool
    passes at once, so the race cannot happen. Clients are created on demand and reused most recently
    used first, so idle connections age out (``keepalive_expiry``) instead of being kept warm in turn.

    Once closed, nothing is lent any more and a client handed back is closed, not kept: a thread that was
    waiting out a retry backoff, or whose request was in flight, must not open a connection nobody closes.

    Threads that find every client lent wait in line, first come first served: a client handed back goes
    to the thread that has waited longest, never to one that asks again at once. (A semaphore let a thread
    that sends request after request take its client straight back, so with more threads than clients
    some waited out the pool timeout and failed with ``PoolTimeout`` while others were served thousands
    of times.)
    """

    def __init__(
        self,
        make: Callable[[], httpx.Client],
        size: int,
        timeout: float,
        *,
        namespace: str,
        backend: str,
        sockets: _Sockets | None = None,
    ) -> None:
        self._make = make
        # The sockets of the clients ``make`` makes, if it tracks them (see close()).
        self._sockets = sockets
        self._timeout = timeout
        self._namespace = namespace
        self._backend = backend
        # Reentrant: a stream from open() that nobody closed, caught in a reference cycle, is closed by the
        # garbage collector, which runs at any allocation of this thread, also inside a block holding this lock;
        # closing it hands its client back (checkout's end, _give_slot), which takes the lock again. A plain
        # lock would deadlock the thread there; the nested hand-back only appends and counts, which the blocks
        # it can interrupt tolerate.
        self._lock = threading.RLock()
        self._free = size  # clients that may be lent without waiting (under _lock)
        # One lock per waiting thread, held until a client is handed to it (under _lock), oldest first.
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._idle: list[httpx.Client] = []
        self._all: list[httpx.Client] = []
        # An event rather than a flag, so that a retry backoff waiting on it ends when close() is called.
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed.is_set()

    def closed_error(self, *, in_flight: bool = False) -> StoreClosedError:
        """The error of a request refused (or, ``in_flight``, cut short) because :meth:`close` was called."""
        return StoreClosedError.of_store(self._namespace, self._backend, in_flight=in_flight)

    def wait_closed(self, seconds: float) -> bool:
        """Wait up to ``seconds``; ``True`` as soon as (or if already) :meth:`close` is called."""
        return self._closed.wait(seconds)

    @property
    def waiting(self) -> int:
        """How many threads wait for a client."""
        with self._lock:
            return len(self._waiters)

    def _take_slot(self) -> bool:
        """Wait in line for the right to use a client, up to the timeout; ``False`` if it ran out."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=self._timeout):
            return True  # handed over by _give_slot
        with self._lock:
            if turn in self._waiters:
                self._waiters.remove(turn)
                return False
        return True  # handed over just as the wait timed out

    def _give_slot(self) -> None:
        """Hand the right to use a client to the thread that waited longest, or free it."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1

    @contextlib.contextmanager
    def checkout(self) -> Iterator[httpx.Client]:
        """A client for this thread alone until the block ends.

        Raises:
            StoreClosedError: :meth:`close` was called (nothing was sent).
            httpx.PoolTimeout: no client became free within the timeout (nothing was sent).
        """
        if self._closed.is_set():
            raise self.closed_error()
        if not self._take_slot():
            raise httpx.PoolTimeout("no connection to the artifact server became free in time")
        try:
            with self._lock:
                if self._closed.is_set():
                    raise self.closed_error()
                client = self._idle.pop() if self._idle else None
            if client is None:
                client = self._make()
                with self._lock:
                    # close() may have run while the client was being built: then it never saw this one.
                    closed = self._closed.is_set()
                    if not closed:
                        self._all.append(client)
                if closed:
                    client.close()
                    raise self.closed_error()
            try:
                yield client
            finally:
                with self._lock:
                    keep = not self._closed.is_set()
                    if keep:
                        self._idle.append(client)
                if not keep:
                    client.close()
        finally:
            self._give_slot()

    def close(self) -> None:
        """Close every client and lend no more (a request still in flight on one fails at once).

        A client lent to another thread is not closed here but has its sockets shut down (see
        :class:`_Sockets`), which ends the request it carries; that thread closes it when it hands it back.
        """
        with self._lock:
            self._closed.set()
            clients, idle, self._all, self._idle = self._all, self._idle, [], []
        tracked: set[httpx.Client] = set()
        if self._sockets is not None:
            self._sockets.shut_all()
            tracked = self._sockets.clients
        for client in clients:
            if client in idle or client not in tracked:
                client.close()


class HttpStore(ArtifactStore):
    """A namespace of artifacts on an artifact server (``artifactstore-serve``).

    Args:
        settings: endpoint, token, timeouts, retries, pool and TLS; default :class:`HttpSettings` from the
            environment (``ARTIFACT_STORE_HTTP_*``) and the config file.
        namespace: the namespace.
        codec: encodes what is sent and verifies what is read. Give it the server's signing key, if it has one.

    Every operation raises :class:`~artifactstore_core.errors.BackendError` (not retryable) when the endpoint
    answers with a success status (or, to ``exists``, "absent") without the artifact server's
    ``Artifactstore-Protocol`` marker: another web server is at ``ARTIFACT_STORE_HTTP_ENDPOINT``.

    Raises:
        ConfigurationError: no endpoint is configured, the token cannot travel in a header (not printable
            ASCII, or holding spaces or line breaks, or empty), or the TLS settings are unusable
            (``ARTIFACT_STORE_HTTP_CA_FILE``, or with ``trust_env`` the ``SSL_CERT_FILE`` of the environment,
            cannot be loaded). An operation raises it too when a proxy variable of the environment is unusable
            (see ``ARTIFACT_STORE_HTTP_TRUST_ENV`` in docs/http.md).
        InvalidStepIdError: ``namespace`` is not legal.
    """

    backend_name = "http"
    # Persistence is the server's store's: reported False because this client cannot promise it.
    capabilities = Capabilities(
        cross_process=True, persistent=False, native_ttl=False, atomic_create=True, streaming=True
    )

    def __init__(
        self, settings: HttpSettings | None = None, *, namespace: str = "default", codec: Codec | None = None
    ) -> None:
        super().__init__(namespace=namespace, codec=codec)
        self._settings = settings if settings is not None else load_settings(HttpSettings)
        if self._settings.endpoint is None:
            raise ConfigurationError(
                "the http backend needs the artifact server's URL: set ARTIFACT_STORE_HTTP_ENDPOINT",
                backend=self.backend_name,
            )
        token = self._settings.token
        # Checked again here for settings built without validation (model_copy, model_construct): httpx
        # would refuse such a header with an error that quotes it, token and all.
        if token is not None and (problem := _token_problem(token.get_secret_value())) is not None:
            raise ConfigurationError(f"ARTIFACT_STORE_HTTP_TOKEN {problem}", backend=self.backend_name)
        base = httpx.URL(self._settings.endpoint)
        self._base = base
        self._prefix = base.raw_path.split(b"?")[0].rstrip(b"/") + API_PREFIX.encode("ascii")
        self._ns_path = self._prefix + b"/namespaces/" + quote_segment(self.namespace).encode("ascii")
        # Shown in messages: scheme, host, port and path only (the endpoint has no user info by validation).
        self._display = str(base.copy_with(query=None, fragment=None))
        self._verify = self._tls_verify()
        if self._settings.token is not None and base.scheme == "http" and not is_loopback(base.host):
            logger.warning(
                "sending the artifact server token over plain http to %s; use https outside a trusted network",
                base.host,
            )
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._clients = self._new_clients()
        # (when it was asked, by time.monotonic(); the server's body limit or None), see _max_artifact_bytes.
        self._body_limit: tuple[float, int | None] | None = None

    def __repr__(self) -> str:
        return f"<HttpStore endpoint={self._display!r} namespace={self.namespace!r}>"

    # -- transport ------------------------------------------------------------------------------------

    def _tls_verify(self) -> ssl.SSLContext:
        """The TLS context of every client of this store, built once.

        Given ``verify=True`` instead, httpx loads its CA bundle anew for each client (tens of milliseconds of
        CPU each, for an ``http://`` endpoint too), and a store makes up to ``POOL_SIZE`` of them; and an
        unusable ``SSL_CERT_FILE`` would fail each operation with an ``OSError`` naming no setting.

        Raises:
            ConfigurationError: ``ARTIFACT_STORE_HTTP_CA_FILE``, or (with ``trust_env``) the ``SSL_CERT_FILE``
                or ``SSL_CERT_DIR`` of the environment, cannot be loaded.
        """
        settings = self._settings
        if not settings.verify_tls:
            return httpx.create_ssl_context(verify=False)
        if settings.ca_file is None:
            try:
                # httpx's own default: certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR with trust_env.
                return httpx.create_ssl_context(verify=True, trust_env=settings.trust_env)
            except OSError as exc:  # ssl.SSLError is one
                # httpx reads SSL_CERT_FILE first, SSL_CERT_DIR only without it: name the one it read.
                used = next((name for name in ("SSL_CERT_FILE", "SSL_CERT_DIR") if os.environ.get(name)), None)
                source = f"{used}={os.environ[used]!r}" if settings.trust_env and used else "certifi's bundle"
                raise_chained(
                    ConfigurationError(
                        f"cannot load the CA certificates of the environment ({type(exc).__name__}: {exc}; "
                        f"{source}): fix or unset that variable, or set ARTIFACT_STORE_HTTP_CA_FILE, or "
                        "ARTIFACT_STORE_HTTP_TRUST_ENV=false",
                        backend=self.backend_name,
                    ),
                    self._scrubbed(exc),
                )
        try:
            return ssl.create_default_context(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise_chained(
                ConfigurationError(
                    f"cannot load ARTIFACT_STORE_HTTP_CA_FILE ({type(exc).__name__}: {exc})",
                    backend=self.backend_name,
                ),
                self._scrubbed(exc),
            )

    def _new_client(self) -> httpx.Client:
        settings = self._settings
        headers = {"User-Agent": "artifactstore-http"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        # One connection per client: _Clients hands each client to one thread at a time (see there). Idle
        # connections are dropped well before servers close them (uvicorn's default keep-alive is 5 s,
        # httpx's own expiry too): reusing one the server is closing at that instant fails a request that
        # cannot be retried safely (delete, clear).
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=2.0)
        # httpx builds the transports itself: given one, it ignores the proxy variables (HTTP_PROXY, NO_PROXY,
        # ...) that trust_env promises to honour. (A save writes head and payload separately; httpcore sets
        # TCP_NODELAY on every socket, so Nagle never holds the second write for an ACK.)
        try:
            client = httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(
                    connect=settings.connect_timeout,
                    read=settings.read_timeout,
                    write=settings.read_timeout,
                    pool=settings.read_timeout,
                ),
                follow_redirects=False,
                verify=self._verify,
                limits=limits,
                trust_env=settings.trust_env,
            )
        except (ImportError, ValueError) as exc:
            # httpx builds a transport for each proxy variable of the environment, and refuses a socks5:// proxy
            # without the socksio package (ImportError) or a scheme it does not know (ValueError, quoting the
            # proxy's URL, which is not repeated here). Every operation would fail the same way, as an ImportError
            # that names no setting.
            raise_chained(
                ConfigurationError(
                    "a proxy variable of the environment (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY, in either case) is "
                    f"unusable ({type(exc).__name__}): a socks5:// proxy needs pip install 'httpx[socks]', and "
                    "httpx knows only http://, https://, socks5:// and socks5h:// proxies; or set "
                    "ARTIFACT_STORE_HTTP_TRUST_ENV=false to ignore the proxy variables (NO_PROXY does not help: "
                    "httpx builds every proxy's transport)",
                    backend=self.backend_name,
                ),
                self._scrubbed(exc),
            )
        # So that close() can end this client's requests in other threads (see _Sockets): the direct
        # transport, and those of the proxies from the environment (None stands for a NO_PROXY exception).
        direct = getattr(client, "_transport", None)
        mounted = [mount for mount in getattr(client, "_mounts", {}).values() if mount is not None]
        sockets = self._sockets
        if direct is not None and _track([direct, *mounted], _TrackingBackend(sockets)):
            sockets.clients.add(client)
        return client

    def _new_clients(self) -> _Clients:
        # The sockets of the clients _new_client makes from now on (a new set after a fork).
        self._sockets = _Sockets()
        # Waiting for a free client is bounded like httpx's own pool wait was (its pool timeout).
        return _Clients(
            self._new_client,
            self._settings.pool_size,
            self._settings.read_timeout,
            namespace=self.namespace,
            backend=self.backend_name,
            sockets=self._sockets,
        )

    def _http(self) -> _Clients:
        if os.getpid() != self._pid:
            # After a fork the parent's pooled sockets must not be shared: start fresh clients, and leave the
            # parent's alone (closing them here would close the parent's connections).
            with self._lock:
                if os.getpid() != self._pid:
                    self._clients = self._new_clients()
                    self._pid = os.getpid()
        return self._clients

    def _url(self, *segments: str) -> httpx.URL:
        path = self._ns_path
        for segment in segments:
            path += b"/" + quote_segment(segment).encode("ascii")
        return self._base.copy_with(raw_path=path)

    def _send(
        self,
        operation: str,
        method: str,
        url: httpx.URL,
        *,
        params: dict[str, str] | None = None,
        body: Callable[[], Iterator[bytes]] | None = None,
        length: int = 0,
        step_id: str | None = None,
    ) -> _Answer:
        """Send one request, retrying per :data:`RETRY_POLICY`; the answer's body is read within a bound.

        Raises:
            StoreClosedError: the store was closed before an attempt, during a backoff, or while the
                request was in flight.
            BackendError: a success answer without the protocol marker (but to ``health``, which the caller
                judges), or a JSON answer over ``ARTIFACT_STORE_HTTP_MAX_JSON_BYTES`` (not retried).
            PayloadTooLargeError, ArtifactCorruptedError, UnsupportedFormatError, ConfigurationError: a get's
                envelope is over the client's limits, disagrees with its own header or its Content-Length,
                or fails verification of its head (see :meth:`_read_envelope`; not retried).
            httpx.HTTPError: the last attempt failed (translated by the caller's ``_translate_error``).
        """
        policy = RETRY_POLICY[operation]
        retryable = _TRANSIENT if policy == "transient" else _UNSENT
        attempt = 0
        while True:
            headers = {}
            content = None
            if body is not None:
                # A new iterator per attempt; with Content-Length set httpx sends it unchunked.
                content = body()
                headers = {"Content-Type": MEDIA_TYPE_ENVELOPE, "Content-Length": str(length)}
            clients = self._http()
            try:
                with contextlib.ExitStack() as held:
                    http = held.enter_context(clients.checkout())
                    request = http.build_request(method, url, params=params, content=content, headers=headers)
                    # Streamed, so that every body is read within a bound (see _read) and never taken whole
                    # from whatever answers; read while the connection is this thread's alone. An open's
                    # answer may take the response and the client along (pop_all), for the stream it gives.
                    # An answer the server gives before it has the whole body (401, 413, an early 409) is read
                    # even when the send then fails, reset by the server's close: httpcore reads the response
                    # after a write error, and the caller gets that answer's error, not a connection error.
                    streamed = http.send(request, stream=True)
                    held.callback(streamed.close)
                    response = self._read(operation, streamed, step_id, held)
            except StoreClosedError:
                raise
            except Exception as exc:
                if clients.closed:
                    # close() closed the client under this request: whatever httpx or httpcore raised for
                    # it (a RuntimeError of a closed pool, a read error), the cause is the close.
                    raise clients.closed_error(in_flight=True) from exc
                if not isinstance(exc, retryable) or attempt >= self._settings.retries:
                    raise
                if _tls_refusal(exc) is not None:
                    # A connect error, but not the network failing for a moment: every repetition of the
                    # handshake is refused the same way (see _translate_error).
                    raise
            else:
                # The health probe is advisory: _max_artifact_bytes believes only a marked answer and otherwise
                # leaves the limit unknown, so a proxy's own health page never fails the save_stream that asked.
                if response.is_success and not _marked(response) and operation != "health":
                    # Not retried: whatever answered will answer the same way again.
                    raise self._unmarked(operation, response)
                if response.body is not None or not (
                    policy == "transient" and response.status_code in _RETRY_STATUSES and _retryable_answer(response)
                ):
                    return response
                if attempt >= self._settings.retries:
                    return response
            attempt += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_BASE * 2**attempt)
            # A backoff that close() ends at once: no attempt is made, and no connection opened, after it.
            if clients.wait_closed(delay * random.uniform(0.5, 1.0)):  # noqa: S311 - jitter, not cryptography
                raise clients.closed_error()

    def _read(
        self, operation: str, response: httpx.Response, step_id: str | None, held: contextlib.ExitStack
    ) -> _Answer:
        """Read what is needed of a streamed ``response``, never more than a bound, into an :class:`_Answer`.

        Nothing of an answer is ever taken whole on the server's word: a wrong endpoint, a proxy or a hostile
        server could otherwise make this client allocate without limit. A get's envelope is read within
        ``max_body_bytes`` and the sizes its verified header states (:meth:`_read_envelope`); the JSON answer of
        a list, info, delete or clear request within ``max_json_bytes``; a problem, or a body nothing reads,
        within 64 KiB (beyond that it is not read, and the error is told from the status and headers). A
        health answer is read within 64 KiB too, and one larger is taken as empty: the server's is a few
        dozen bytes, and anything else only leaves the limit it is asked for unknown. An open's envelope is
        read as a get's up to its head; an uncompressed payload is then left unread in the answer's ``body``,
        which takes the response and its client from ``held`` (see :class:`_Body`).
        """
        answer = _Answer(response.status_code, response.headers, response.request.method)
        if response.is_success and not _marked(response):
            return answer  # refused by _send from its headers alone (a health answer: not believed)
        if operation == "health":
            content = _read_within(response, _MAX_SMALL_BODY)
            if content is None:
                return answer
            return _Answer(answer.status_code, answer.headers, answer.method, content=content)
        if response.is_success and operation in ("list", "info", "delete", "clear"):
            content = _read_within(response, self._settings.max_json_bytes)
            if content is None:
                raise BackendError(
                    f"artifact server {self._display} answered a {operation} request with a JSON body over this "
                    f"client's limit of {self._settings.max_json_bytes} bytes (ARTIFACT_STORE_HTTP_MAX_JSON_BYTES); "
                    "raise it if the server's answers are really that large",
                    step_id=step_id,
                )
            return _Answer(answer.status_code, answer.headers, answer.method, content=content)
        if (
            operation in ("get", "open")
            and response.status_code == 200
            and _media_type(response) == MEDIA_TYPE_ENVELOPE
        ):
            header, payload, body = self._read_envelope(response, step_id or "", held if operation == "open" else None)
            return _Answer(answer.status_code, answer.headers, answer.method, header=header, payload=payload, body=body)
        content = _read_within(response, _MAX_SMALL_BODY)
        if response.is_success or content is None:
            return answer
        return _Answer(answer.status_code, answer.headers, answer.method, content=content)

    def _read_envelope(
        self, response: httpx.Response, step_id: str, held: contextlib.ExitStack | None = None
    ) -> tuple[Header, bytes, _Body | None]:
        """The verified header and the payload bytes of the envelope a get's ``response`` carries.

        Given ``held`` (an open's), an uncompressed payload is not read: the rest of the body comes back as a
        :class:`_Body` that takes the response and its client from ``held``, with empty payload bytes, and
        ``max_json_bytes`` does not apply to it (nothing parses it). A compressed one (JSON or text, which the
        stream yields decompressed) is read whole as a get's.

        The head is read and verified first; its header states the payload's size, and the body is read up
        to exactly that many bytes, never further. The payload is joined from the chunks received in one
        copy, which is what the codec then verifies and keeps (``bytes`` content is not copied again).

        ``max_body_bytes`` counts the content and the stored payload, as the server's limit does; the head
        comes on top, within :func:`~artifactstore_http.settings.head_allowance`. So an artifact whose content
        a server with the same limit accepted is always read, however either side compressed it.

        Raises:
            PayloadTooLargeError: the body (by its Content-Length) is over ``max_body_bytes`` and the head
                allowance together, the head is over its allowance, the content after decompression or the
                stored payload (as the verified header states them) is over ``max_body_bytes``, or JSON
                content is over ``max_json_bytes``: refused before the payload is read.
            ArtifactCorruptedError: the body disagrees with its header (a Content-Length other than head
                plus payload, a payload cut short or running on), or the head fails verification.
            UnsupportedFormatError, ConfigurationError: as :meth:`Codec.decode_head`.
        """
        limit = self._settings.max_body_bytes
        max_head = head_allowance(limit, self._settings.max_json_bytes)
        where = self._where(step_id)
        declared = _declared_length(response)
        if declared is not None and declared > limit + max_head:
            raise self._too_large(
                step_id,
                f"{where} a body of {declared} bytes (its Content-Length), more than {limit} bytes of payload and a "
                f"head of at most {max_head}",
            )
        chunks = response.iter_bytes()
        header, buffer, head_size = self._read_head(chunks, step_id, _close_delimited(response))
        streamed = held is not None and header.compression is None
        total = head_size + header.stored_size
        if header.size > limit:
            shown = "after decompression, " if header.compression is not None else ""
            raise self._too_large(step_id, f"{where} {header.size} bytes of content ({shown}its header says)")
        if header.stored_size > limit:
            raise self._too_large(step_id, f"{where} a stored payload of {header.stored_size} bytes (its header says)")
        if header.codec == "json" and header.size > self._settings.max_json_bytes and not streamed:
            raise PayloadTooLargeError(
                f"{where} {header.size} bytes of JSON content; this client parses at most "
                f"{self._settings.max_json_bytes} (ARTIFACT_STORE_HTTP_MAX_JSON_BYTES), because a parsed JSON "
                "value takes many times its text in memory; raise it to read this artifact",
                step_id=step_id,
            )
        if declared is not None and declared != total:
            raise ArtifactCorruptedError(
                f"{where} a body of {declared} bytes (its Content-Length), but the envelope's header says "
                f"{total}: the answer was cut or padded on the way",
                step_id=step_id,
            )
        if held is not None and streamed:
            body = _Body(buffer[head_size:], chunks, _close_delimited(response), held.pop_all())
            return header, b"", body
        stored = header.stored_size
        parts: list[bytes] = [buffer[head_size:]] if len(buffer) > head_size else []
        received = len(buffer) - head_size
        for chunk in chunks:
            received += len(chunk)
            if received > stored:
                # Stopped here: a body that runs on past its header is not read to its end.
                raise ArtifactCorruptedError(
                    f"{where} a payload longer than the {stored} bytes its envelope's header says", step_id=step_id
                )
            parts.append(chunk)
        if received < stored:
            if _close_delimited(response):
                raise _dropped(f"{where} a payload of {received} bytes; its envelope's header says {stored}")
            raise ArtifactCorruptedError(
                f"{where} a payload of {received} bytes; its envelope's header says {stored}", step_id=step_id
            )
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        return header, payload, None

    def _read_head(
        self, chunks: Iterator[bytes], step_id: str, close_delimited: bool = False
    ) -> tuple[Header, bytes, int]:
        """The verified header of the envelope whose body ``chunks`` yields, the bytes read of that body (its
        head, and whatever of the payload came with it), and the head's size.

        The head is refused over its allowance (:func:`~artifactstore_http.settings.head_allowance`) from its
        prefix, before the rest of it is read or its header parsed.

        Raises:
            PayloadTooLargeError: the head is over its allowance.
            ArtifactCorruptedError: the body ends inside the head, or the head fails verification.
            httpx.RemoteProtocolError: the body ends inside the head, and the body is one that only the
                connection's closing ends (``close_delimited``): the connection was dropped.
            UnsupportedFormatError, ConfigurationError: as :meth:`Codec.decode_head`.
        """
        limit = self._settings.max_body_bytes
        max_head = head_allowance(limit, self._settings.max_json_bytes)
        where = self._where(step_id)
        buffer = _fill(chunks, b"", PREFIX_SIZE)
        if close_delimited and len(buffer) < PREFIX_SIZE:
            raise _dropped(f"{where} an envelope cut short inside its head")
        head_size = self.codec.head_size(buffer[:PREFIX_SIZE])
        if head_size > max_head:
            # Refused before the head is read: its header is JSON (the metadata and schema), which costs many
            # times its text once parsed, so the JSON limit bounds it too (see head_allowance).
            setting = _head_setting(limit, self._settings.max_json_bytes, "ARTIFACT_STORE_HTTP_")
            raise PayloadTooLargeError(
                f"{where} an envelope whose head alone is {head_size} bytes (its header, the JSON of its metadata "
                f"and schema, is {head_size - PREFIX_SIZE - TAG_SIZE}); this client reads a head of at most "
                f"{max_head} bytes ({setting}, up to the format's largest head); raise it to read this artifact",
                step_id=step_id,
            )
        buffer = _fill(chunks, buffer, head_size)
        if len(buffer) < head_size:
            if close_delimited:
                raise _dropped(f"{where} an envelope cut short inside its head")
            raise ArtifactCorruptedError(f"{where} an envelope cut short inside its head", step_id=step_id)
        return self.codec.decode_head(buffer[:head_size], place=(self.namespace, step_id)), buffer, head_size

    def _where(self, step_id: str) -> str:
        """The start of the message of an answer that disagrees with its envelope (it names the artifact, so
        the core adds nothing to it: the namespace is named here too)."""
        return f"artifact server {self._display} answered {step_id!r} of namespace {self.namespace!r} with"

    def _too_large(self, step_id: str, what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"{what}, over this client's limit of {self._settings.max_body_bytes} bytes of content "
            "(ARTIFACT_STORE_HTTP_MAX_BODY_BYTES); raise it to read larger artifacts",
            step_id=step_id,
        )

    def _unmarked(self, operation: str, response: _Answer) -> BackendError:
        """The error of an answer that a result would be believed from (a success; "absent" to ``HEAD``)
        but that lacks this client's protocol marker: something other than an artifact server answered."""
        answer = f"its {response.status_code} answer to {response.method}"
        if PROTOCOL_HEADER not in response.headers:
            why = f"{answer} has no {PROTOCOL_HEADER} header"
        else:
            # The value is not quoted: it is text from whatever answered, which may echo the token.
            why = f"{answer} names another {PROTOCOL_HEADER} version than this client's {PROTOCOL_VERSION!r}"
        return BackendError(
            f"the endpoint {self._display} did not answer as an artifact server ({why}), so the {operation} "
            "was not done by an artifact store; set ARTIFACT_STORE_HTTP_ENDPOINT to the URL of "
            "artifactstore-serve (with its path prefix, if it has one)"
        )

    def _fail(self, response: _Answer, step_id: str | None = None) -> ArtifactStoreError:
        """The core error a non-success response stands for."""
        token = self._settings.token
        return error_from_response(
            response,
            display=self._display,
            step_id=step_id,
            namespace=self.namespace,
            secrets=() if token is None else (token.get_secret_value(),),
            token_sent=token is not None,
        )

    # -- the contract ---------------------------------------------------------------------------------

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        # Signed for the namespace and id in the URL: the server verifies it for exactly those.
        encoded = self.codec.encode(message, place=(self.namespace, step_id))
        head, payload = encoded.head, encoded.payload

        def body() -> Iterator[bytes]:
            # Head and payload as two writes: the payload is never concatenated into a copy.
            yield head
            yield payload

        self._put(step_id, body, len(head) + len(payload), overwrite)

    def _put(self, step_id: str, body: Callable[[], Iterator[bytes]], length: int, overwrite: bool) -> None:
        """Send an envelope of ``length`` bytes (``body()`` yields it anew for each attempt) as a save does.

        Raises:
            ArtifactStoreError: the server's answer is not a success (see :meth:`_fail`).
            httpx.HTTPError: the last attempt failed (translated by the caller).
        """
        params = {"overwrite": "true"} if overwrite else None
        response = self._send("save", "PUT", self._url("artifacts", step_id), params=params, body=body, length=length)
        if response.status_code not in (200, 201, 204):
            raise self._fail(response, step_id)

    def _save_stream(
        self, step_id: str, stream: IO[bytes], template: Message, overwrite: bool, ttl: float | None
    ) -> None:
        """Save a stream in bounded memory: spooled to a temporary file while it is hashed, then sent.

        The envelope's head carries the payload's size and digest, so it cannot be sent before the stream is
        read to its end; the stream goes to an anonymous temporary file (``ARTIFACT_STORE_HTTP_SPOOL_DIR``,
        else the system's temporary directory) in 1 MiB chunks, and the request sends the head and then the
        spool, 1 MiB at a time. A retry (see :data:`RETRY_POLICY`) sends the whole spool again. A stream
        that ends within 1 MiB is sent from memory as :meth:`save` sends it. The server's content limit
        (``/v1/health``, see :meth:`_max_artifact_bytes`) stops reading one byte past it, before anything
        is sent. The spool has no name in the file system (it is gone when closed, or when the process
        dies), and it is closed whatever happens.

        Raises:
            PayloadTooLargeError: the stream holds more than the server's content limit (nothing sent).
            SerializationError: ``stream.read()`` raised (chained), or returned ``None`` or ``str``.
            CapacityError: the spool's file system is full (``ENOSPC``, ``EDQUOT``).
            BackendError: the spool cannot be created or written otherwise (both name the setting).
            ArtifactStoreError, httpx.HTTPError: as :meth:`_save`.
        """
        limit = self._max_artifact_bytes()
        chunks = self._read_stream(stream, step_id, limit)
        pending: list[bytes] = []
        total = 0
        for chunk in chunks:
            pending.append(chunk)
            total += len(chunk)
            if total >= _SMALL_STREAM:
                break
        else:
            # A copy keeps the template's created_at; the chunks are bytes, which content keeps as they are.
            self._save(step_id, template.model_copy(update={"content": b"".join(pending)}), overwrite, ttl)
            return
        # Before the rest is spooled (a stream may be gigabytes, and the spool's disk must hold it): one request
        # that needs the token, so that a wrong token, an endpoint of no artifact server or a server that does not
        # answer fails now (the health probe asks no token), not after the whole stream was read and written.
        self._exists(step_id)
        with self._spool() as spool:
            hasher = new_hasher(_SPOOL_CHUNK)
            size = 0
            for chunk in _handed_over(pending, chunks):
                hasher.update(chunk)
                self._spooled(lambda: spool.write(chunk))  # noqa: B023 - called at once, in this iteration
                size += len(chunk)
            head, _ = self.codec.encode_stream_head(
                template, size=size, digest=hasher.hexdigest(), place=(self.namespace, step_id)
            )

            def body() -> Iterator[bytes]:
                # Each attempt reads the spool from its start.
                yield head
                self._spooled(lambda: spool.seek(0))
                left = size
                while left:
                    data = self._spooled(lambda: spool.read(min(_SPOOL_CHUNK, left)))  # noqa: B023
                    if not data:
                        raise BackendError(f"the spool file of {step_id!r} ended before its {size} bytes")
                    left -= len(data)
                    yield data

            self._put(step_id, body, len(head) + size, overwrite)

    def _read_stream(self, stream: IO[bytes], step_id: str, limit: int | None) -> Iterator[bytes]:
        """The chunks of the caller's ``stream``, as ``bytes``; past ``limit`` bytes, the store's too-large error.

        At most ``limit + 1`` bytes are read: one byte past the limit proves the stream too large.

        Raises:
            PayloadTooLargeError: the stream holds more than ``limit`` bytes.
            SerializationError: ``stream.read()`` raised (chained), or returned ``None`` or ``str``
                (:func:`~artifactstore_core.store.checked_read`).
        """
        left = None if limit is None else limit + 1
        while left is None or left > 0:
            try:
                data = stream.read(_SPOOL_CHUNK if left is None else min(_SPOOL_CHUNK, left))
            except Exception as exc:
                # The caller's source failed, not the server: never reported as the backend unavailable, nor
                # retryable (the stream is spent).
                raise SerializationError(
                    f"reading the stream to save as {step_id!r} failed: {type(exc).__name__}: {exc}", step_id=step_id
                ) from exc
            chunk = checked_read(data)
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            # bytes() freezes a bytearray or memoryview a custom stream returned (bytes are returned as they are).
            yield bytes(chunk)
        assert limit is not None  # left reaches 0 only with a limit
        raise self._too_large_error(step_id, None, limit)

    def _spool(self) -> IO[bytes]:
        """A new anonymous temporary file for :meth:`_save_stream`.

        Raises:
            CapacityError, BackendError: as :meth:`_spooled`.
        """
        directory = self._settings.spool_dir
        return self._spooled(lambda: tempfile.TemporaryFile(dir=directory))

    def _spooled(self, work: Callable[[], _T]) -> _T:
        """``work()``, an operation on the spool of :meth:`_save_stream`, with its ``OSError`` translated.

        Raises:
            CapacityError: the spool's file system is full (``ENOSPC``, ``EDQUOT``).
            BackendError: another ``OSError`` (not retryable: the local file system failed, not the server).
        """
        try:
            return work()
        except OSError as exc:
            where = self._settings.spool_dir or tempfile.gettempdir()
            what = f"the temporary file save_stream spools the stream to, in {where!r}, failed ({exc.strerror or exc})"
            fix = "set ARTIFACT_STORE_HTTP_SPOOL_DIR to a directory with room for the largest stream"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CapacityError(f"{what}: {fix}") from exc
            raise BackendError(f"{what}: {fix}, writable by this process") from exc

    def _max_artifact_bytes(self) -> int | None:
        """The server's body limit (``ARTIFACT_STORE_SERVER_MAX_BODY_BYTES``), as its ``/v1/health`` advertises.

        The limit counts content, as ``save_stream`` does (the envelope's head travels on top of it, see
        :func:`~artifactstore_http.settings.head_allowance`): content of exactly the limit is saved, one byte
        more never is, so ``save_stream`` stops reading there.
        Asked at most once a minute per store (:data:`_LIMIT_TTL`), on the first ``save_stream`` after that,
        never by ``save``. ``None`` (read the whole stream, and let the server decide, as before) when the
        answer is not a 200 of an artifact server (its protocol marker) carrying the limit: a server of an
        earlier version, or a proxy in front of it that does not pass ``/v1/health`` on (a 404, or a health
        page of its own). Only the save itself decides whether the endpoint is an artifact server.

        Raises:
            httpx.HTTPError: the server could not be reached (translated by ``save_stream``).
        """
        cached = self._body_limit
        now = time.monotonic()
        if cached is not None and now - cached[0] < _LIMIT_TTL:
            return cached[1]
        health = self._base.copy_with(raw_path=self._prefix + b"/health")
        response = self._send("health", "GET", health)
        limit: int | None = None
        if response.status_code == 200 and _marked(response):
            try:
                doc = response.json()
            except ValueError:
                doc = None
            value = doc.get("max_body_bytes") if isinstance(doc, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                limit = value
        self._body_limit = (now, limit)
        return limit

    def _too_large_error(self, step_id: str, size: int | None, limit: int) -> PayloadTooLargeError:
        """The error of content over the server's body limit, worded as the server words its own 413
        (``size=None``: a stream cut off past the limit, nothing sent)."""
        shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return PayloadTooLargeError(
            f"artifact {step_id!r} holds {shown} of content; the artifact server {self._display} accepts at "
            f"most {limit} (ARTIFACT_STORE_SERVER_MAX_BODY_BYTES). Nothing was sent.",
            step_id=step_id,
        )

    def _get(self, step_id: str) -> Message:
        return self._whole(self._send("get", "GET", self._url("artifacts", step_id), step_id=step_id), step_id)

    def _whole(self, response: _Answer, step_id: str) -> Message:
        """The message of a ``GET`` answer whose envelope was read whole.

        Raises:
            ArtifactStoreError: the answer is a failure (see :meth:`_fail`); BackendError: its body is no
                envelope; ArtifactCorruptedError: the payload does not match its verified head.
        """
        if response.status_code != 200:
            raise self._fail(response, step_id)
        if response.header is None:
            raise BackendError(
                f"artifact server {self._display} answered {step_id!r} with a body that is not an envelope",
                step_id=step_id,
            )
        # The client's own codec verified the head (and, with a signing key, the signature) while the body
        # was read; here it verifies the payload's size and digest.
        return self.codec.decode_payload(response.header, response.payload)

    def _open(self, step_id: str) -> IO[bytes]:
        return self._open_with_header(step_id)[1]

    def _open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
        """The verified header and a stream of the artifact's content, from one streamed ``GET``.

        The request and the envelope's head are read (and retried) as a get's, within the same limits; an
        uncompressed payload is then streamed and verified as it is read
        (:class:`~artifactstore_core.envelope.PayloadReader`), one held on one of the store's ``POOL_SIZE``
        connections until the stream ends or is closed. A
        compressed one (JSON or text the server's store compressed) is read whole, as :meth:`get` reads it.

        Raises:
            ArtifactNotFoundError, AccessDeniedError, PayloadTooLargeError, ArtifactCorruptedError,
                BackendError: as :meth:`get`; reads of the stream raise ArtifactCorruptedError,
                BackendUnavailableError, BackendTimeoutError or StoreClosedError (see the reader).
        """
        response = self._send("open", "GET", self._url("artifacts", step_id), step_id=step_id)
        body = response.body
        if body is None:
            message = self._whole(response, step_id)
            assert response.header is not None  # _whole refuses an answer without one
            return response.header, content_stream(message)
        header = response.header
        assert header is not None  # a body comes with its header (see _read_envelope)
        where = self._where(step_id)
        clients = self._clients

        def dropped(received: int) -> Exception:
            # Only the closing of the connection ends this body: ending short, it was dropped on the way (retried
            # like a dropped connection); any other body that ends short is damage the reader reports.
            return _dropped(f"{where} a payload of {received} bytes; its envelope's header says {header.size}")

        def fail(exc: Exception) -> NoReturn:
            if isinstance(exc, ArtifactCorruptedError):
                # The reader's own finding (a payload shorter or longer than its header says, or altered): the
                # chunks are httpx's, which raise only transport errors. Named with the server it came from, as
                # every answer that disagrees with its envelope is.
                error = ArtifactCorruptedError(f"{where} a payload that fails verification: {exc}", step_id=step_id)
                raise self._in_context(error, "open", step_id) from None
            if clients.closed and not isinstance(exc, ArtifactStoreError):
                # close() shut the connection under this stream (see _Clients.close).
                raise self._in_context(clients.closed_error(in_flight=True), "open", step_id) from exc
            self._raise(exc, "open", step_id)

        try:
            reader = PayloadReader(
                itertools.chain((body.first,), body.chunks),
                header,
                release=body.held.close,
                fail=fail,
                short=dropped if body.close_delimited else None,
            )
        except BaseException:
            body.held.close()
            raise
        # Typed as IO[bytes], what open() returns: BufferedReader is not one for type checkers.
        return header, cast("IO[bytes]", io.BufferedReader(reader, buffer_size=_OPEN_BUFFER))

    def _info(self, step_id: str) -> ArtifactInfo:
        """The artifact's info from its server's info answer (``GET .../artifacts/{step_id}/info``).

        The server answers from its store's ``info()``, which reads the artifact's head alone, and verifies that
        head with its own codec (its signature too, with a signing key): one request, whatever the size of the
        artifact or of the namespace. The answer is JSON (a list page's item), not the head itself, so this
        client cannot verify it again: the info is trusted as far as the server is, exactly as what ``list()``
        reports. (Reading the head at the start of the artifact's ``GET`` instead cost the server a read of the
        whole artifact; searching the listing cost a request per 1,000 artifacts of the namespace.)
        """
        response = self._send("info", "GET", self._url("artifacts", step_id, INFO_SEGMENT), step_id=step_id)
        if response.status_code == 413:
            # A header over the server's JSON limit (written to its store by something else), which it does not
            # parse to answer an info or a GET; its listing still shows it.
            return super()._info(step_id)
        if (
            response.status_code == 404
            and response.headers.get(ERROR_HEADER) == PROBLEM_NOT_FOUND
            and _marked(response)
        ):
            # An artifact server that knows no such path: one of an earlier version, without the info path (a
            # missing artifact is "ArtifactNotFoundError"). Its listing has the info. (Its "no such API path"
            # was raised as it was, telling to fix an endpoint that every other operation reached.) Were the
            # endpoint's path wrong, the listing answers that same 404 and its error says so.
            return super()._info(step_id)
        if response.status_code != 200:
            raise self._fail(response, step_id)
        info = _info_from(_json(response, self._display), self._display, what=f"the info of {step_id!r}")
        if info.step_id != step_id:
            raise BackendError(
                f"artifact server {self._display} answered the info of {step_id!r} with that of another artifact",
                step_id=step_id,
            )
        return info

    def _exists(self, step_id: str) -> bool:
        response = self._send("exists", "HEAD", self._url("artifacts", step_id))
        if response.status_code == 200:
            return True
        if response.status_code == 404 and response.headers.get(ERROR_HEADER) == "ArtifactNotFoundError":
            # "Absent" is an answer too: believed only from an artifact server, like a success.
            if not _marked(response):
                raise self._unmarked("exists", response)
            return False
        # A bare 404 (a proxy, a wrong endpoint path) is a failure, never "absent".
        raise self._fail(response, step_id)

    def _delete(self, step_id: str) -> bool:
        url = self._url("artifacts", step_id)
        try:
            response = self._send("delete", "DELETE", url, step_id=step_id)
        except _TRANSIENT as lost:
            # The request may or may not have reached the server (a reset, a dropped connection, no answer
            # in time). Sending it once more settles the question only when the repeat removes the
            # artifact: then the first attempt had not. A repeat that removes nothing may follow a first
            # attempt that removed it, so the honest answer stays "unknown": the first failure is raised.
            if self._settings.retries < 1 or _tls_refusal(lost) is not None or not self._removed_on_repeat(url):
                raise
            logger.debug("delete of %r: the first request got no answer (%s); its repeat removed it", step_id, lost)
            return True
        if response.status_code != 200:
            raise self._fail(response, step_id)
        return bool(_json_field(response, "deleted", bool, self._display))

    def _removed_on_repeat(self, url: httpx.URL) -> bool:
        """Whether a repeated DELETE of ``url`` removed an artifact (False on any failure of the repeat)."""
        try:
            response = self._send("delete", "DELETE", url)
            return response.status_code == 200 and _json(response, self._display) == {"deleted": True}
        except (httpx.HTTPError, BackendError):
            return False

    def _list(self) -> Iterator[ArtifactInfo]:
        cursor: str | None = None
        # A cursor the server already gave would list the same page again, and again: a broken or hostile
        # server could keep list() (and list(store.list())'s memory) going without end.
        given: set[str] = set()
        while True:
            params = {"cursor": cursor} if cursor is not None else None
            response = self._send("list", "GET", self._url("artifacts"), params=params)
            if response.status_code != 200:
                raise self._fail(response)
            items = _json_field(response, "items", list, self._display)
            for item in items:
                yield _info_from(item, self._display)
            cursor = _json_field(response, "next_cursor", (str, type(None)), self._display)
            if cursor is None:
                return
            if cursor in given:
                raise BackendError(
                    f"artifact server {self._display} answered a list cursor it had already given: the listing "
                    "would never end"
                )
            given.add(cursor)

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        # The server pages in step id order from a cursor (the last id of a page), as list_page does: a page
        # takes a request per _LIST_REQUEST_ITEMS of it, where the core's default would list the namespace.
        page: list[ArtifactInfo] = []
        while len(page) < limit:
            params = {"limit": str(min(limit - len(page), _LIST_REQUEST_ITEMS))}
            if after is not None:
                params["cursor"] = encode_cursor(after)
            response = self._send("list", "GET", self._url("artifacts"), params=params)
            if response.status_code != 200:
                raise self._fail(response)
            items = [_info_from(item, self._display) for item in _json_field(response, "items", list, self._display)]
            # Only ids after the last one taken: a broken server repeating itself cannot keep this going.
            fresh = [info for info in items if after is None or info.step_id > after]
            page += fresh[: limit - len(page)]
            if not fresh or _json_field(response, "next_cursor", (str, type(None)), self._display) is None:
                break
            after = page[-1].step_id
        return page

    def _clear(self) -> int:
        response = self._send("clear", "DELETE", self._base.copy_with(raw_path=self._ns_path))
        if response.status_code != 200:
            raise self._fail(response)
        return int(_json_field(response, "removed", int, self._display))

    def _save_many(self, items: list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        if len(items) == 1:
            super()._save_many(items, overwrite, ttl)
            return

        def one(pair: tuple[str, Message]) -> None:
            step_id, message = pair
            try:
                self._save(step_id, message, overwrite, ttl)
            except ArtifactStoreError as exc:
                exc.step_id = exc.step_id or step_id
                raise

        with self._pool(len(items)) as pool:
            # list() re-raises the first failure in input order, after every request has finished.
            list(pool.map(one, items))

    def _get_many(self, step_ids: list[str]) -> dict[str, Message]:
        if len(step_ids) == 1:
            return super()._get_many(step_ids)

        def one(step_id: str) -> Message | None:
            try:
                return self._get(step_id)
            except ArtifactNotFoundError:
                return None
            except ArtifactStoreError as exc:
                # Damage the client's own codec finds names no artifact (a streaming server cannot answer it with
                # an error once the head went out): in a batch the error must say which one it is.
                if exc.step_id is None:
                    exc.step_id = step_id
                raise

        with self._pool(len(step_ids)) as pool:
            results = list(pool.map(one, step_ids))
        missing = [step_id for step_id, message in zip(step_ids, results, strict=True) if message is None]
        if missing:
            raise self._missing_many(missing)
        return {step_id: message for step_id, message in zip(step_ids, results, strict=True) if message is not None}

    def _pool(self, count: int) -> ContextThreadPoolExecutor:
        # Each request runs in a copy of the caller's context: a limit the caller set on decoding
        # (limiting_json_content) holds in the workers as it does for get(), and reusing_verified_digests
        # spares hashing again what the caller verified.
        return ContextThreadPoolExecutor(max_workers=min(count, self._settings.pool_size, 16))

    def _close(self) -> None:
        if os.getpid() != self._pid:
            # A forked child that never used the store: its clients are the parent's. Closing them here
            # waited for locks that the parent's threads held at the fork (httpcore's pool lock, ours),
            # which nobody in the child ever releases, and so hung; their connections are the parent's too.
            return
        self._clients.close()

    def _secret_values(self) -> Iterable[str]:
        token = self._settings.token
        return () if token is None else (token.get_secret_value(),)

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        where = f"artifact server {self._display}"
        kind = type(exc).__name__
        refusal = _tls_refusal(exc)
        if refusal is not None:
            # Not retryable, unlike the connect error it arrives as: the certificate is not trusted here (a
            # private CA, a name it was not issued for), or the endpoint does not speak TLS, on every attempt.
            return BackendError(
                f"the TLS handshake with {where} failed ({str(refusal)[:300]}): if its certificate is signed by a "
                "private CA, set ARTIFACT_STORE_HTTP_CA_FILE to that CA's certificate (a PEM file); a certificate "
                "issued for another host name needs an endpoint with that name; and artifactstore-serve itself "
                "speaks plain HTTP, so https:// only for the port of a reverse proxy that terminates TLS"
            )
        if isinstance(exc, httpx.PoolTimeout):
            # Nothing went out: every connection of this store was in use (open() streams hold one each).
            return BackendTimeoutError(
                f"no connection to {where} became free within ARTIFACT_STORE_HTTP_READ_TIMEOUT: all "
                f"{self._settings.pool_size} (ARTIFACT_STORE_HTTP_POOL_SIZE) were in use, by other threads or by "
                "streams from open() not yet read to their end or closed; nothing was sent"
            )
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeoutError(f"{where} did not answer in time ({kind}); the operation may have happened")
        if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)):
            return BackendUnavailableError(f"cannot reach {where}, or it dropped the connection ({kind})")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return ConfigurationError(f"ARTIFACT_STORE_HTTP_ENDPOINT {self._display!r} is not usable ({kind})")
        if isinstance(exc, (httpx.HTTPError, httpx.StreamError)):
            return BackendError(f"request to {where} failed ({kind})")
        return None


def _tls_refusal(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under ``exc`` (an httpx connect error) if the client refused the handshake: the server's
    certificate does not verify, or the endpoint does not speak TLS. ``None`` otherwise. Raises nothing."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            refused = isinstance(current, ssl.SSLCertVerificationError) or any(
                refusal in str(current) for refusal in _TLS_REFUSALS
            )
            return current if refused else None
        current = current.__cause__ or current.__context__
    return None


def _marked(response: httpx.Response | _Answer) -> bool:
    """Whether ``response`` carries the protocol marker of an artifact server of this client's version."""
    marker: str | None = response.headers.get(PROTOCOL_HEADER)
    return marker == PROTOCOL_VERSION


def _media_type(response: httpx.Response | _Answer) -> str:
    return str(response.headers.get("content-type", "")).split(";")[0].strip()


def _declared_length(response: httpx.Response) -> int | None:
    """The length of the body as read, from Content-Length, or ``None`` when it does not say.

    With a Content-Encoding (a proxy compressing answers) Content-Length counts the encoded bytes, not the
    bytes read after decoding, so it says nothing about those.
    """
    if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return None
    value = response.headers.get("content-length")
    # h11 refuses a malformed or repeated Content-Length before the response is handed over.
    return int(value) if value is not None and value.strip().isdigit() else None


def _close_delimited(response: httpx.Response) -> bool:
    """Whether only the closing of the connection ends the body of ``response`` (no Content-Length, not chunked).

    Such a body that ends short of what its envelope's header says was cut by a dropped connection, as one
    short of its Content-Length is (which h11 reports itself); a complete chunked body that is short was sent
    so, and is damaged.
    """
    if "content-length" in response.headers:
        return False
    return "chunked" not in response.headers.get("transfer-encoding", "").lower()


def _dropped(what: str) -> httpx.RemoteProtocolError:
    """The error of a close-delimited body cut short: a dropped connection, retried like one."""
    return httpx.RemoteProtocolError(f"{what}, and closed the connection: it was dropped on the way")


def _fill(chunks: Iterator[bytes], buffer: bytes, size: int) -> bytes:
    """``buffer`` followed by chunks of the body until it holds at least ``size`` bytes, or the body ended."""
    if len(buffer) >= size:
        return buffer
    # Without an empty first part, a single chunk is returned as it is (bytes.join copies nothing then).
    parts, have = ([buffer] if buffer else []), len(buffer)
    for chunk in chunks:
        parts.append(chunk)
        have += len(chunk)
        if have >= size:
            break
    return b"".join(parts)


def _read_within(response: httpx.Response, limit: int) -> bytes | None:
    """The body of ``response``, or ``None`` (having stopped reading) once it is found to exceed ``limit``.

    The Content-Length (when it counts the bytes read) refuses a larger body before any of it is read; the
    bytes read are counted too, for a chunked body or one a proxy compressed.
    """
    declared = _declared_length(response)
    if declared is not None and declared > limit:
        return None
    parts: list[bytes] = []
    have = 0
    for chunk in response.iter_bytes():
        have += len(chunk)
        if have > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _retryable_answer(response: _Answer) -> bool:
    """Whether a 502, 503 or 504 answer may be worth repeating.

    An artifact server types each failure (the ``Artifactstore-Error`` header and a problem body) and says
    in the problem whether it is retryable: a plain ``BackendError`` (502, e.g. a Redis error reply the
    backend does not classify) is not, and repeating it only repeats the failure. An answer without that
    header is not from an artifact server (a proxy or gateway) and is transient by its status.
    """
    name = response.headers.get(ERROR_HEADER)
    if name is None:
        return True
    if _media_type(response) == MEDIA_TYPE_PROBLEM:
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("retryable"), bool):
            return bool(doc["retryable"])
    cls = ERROR_CLASSES.get(name)
    return cls.retryable if cls is not None else True


def _json(response: _Answer, display: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise BackendError(f"artifact server {display} answered with a body that is not JSON") from None


def _json_field(response: _Answer, name: str, kind: type | tuple[type, ...], display: str) -> Any:
    doc = _json(response, display)
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BackendError(f"artifact server {display} answered without a valid {name!r}")
    return value


def _info_from(item: Any, display: str, what: str = "an artifact in a listing") -> ArtifactInfo:
    """An :class:`ArtifactInfo` from its JSON (a list page's item, or an info answer).

    Raises:
        BackendError: ``item`` is not such a JSON object (``what`` says where it was).
    """
    try:
        schema_name = item["schema_name"]
        return ArtifactInfo(
            step_id=str(item["step_id"]),
            size=int(item["size"]),
            digest=str(item["digest"]),
            media_type=str(item["media_type"]),
            schema_name=str(schema_name) if schema_name is not None else None,
            created_at=datetime.fromisoformat(str(item["created_at"]).replace("Z", "+00:00")),
        )
    except (KeyError, TypeError, ValueError):
        raise BackendError(f"artifact server {display} answered a malformed info for {what}") from None


def error_from_response(
    response: _Answer,
    *,
    display: str,
    step_id: str | None = None,
    namespace: str | None = None,
    secrets: Iterable[str] = (),
    token_sent: bool = True,
) -> ArtifactStoreError:
    """The core error a non-success response of an artifact server stands for.

    A problem body whose ``type`` is in the allow-list :data:`~artifactstore_http.protocol.ERROR_CLASSES`
    becomes that class; anything else is classified by its status code alone, except that a 5xx answer of an
    artifact server whose problem says ``"retryable": false`` is a plain (non-retryable)
    :class:`~artifactstore_core.BackendError`. Every text of the answer the error carries (the ``detail``, a
    type name outside the allow-list, the ``step_id`` and ``namespace``) has every one of ``secrets``
    redacted (:func:`~artifactstore_core.errors.redact`): a proxy or a hostile server may echo the request's
    bearer token back in any of them. A 401 says whether the request carried a token (``token_sent``): a
    missing token and a wrong one are fixed differently.
    """
    status = response.status_code
    where = f"artifact server {display}"
    if status == 401:
        what = "refused the bearer token" if token_sent else "requires a bearer token, and no bearer token was sent"
        return AccessDeniedError(
            f"{where} {what} (401): set ARTIFACT_STORE_HTTP_TOKEN to the server's token",
            step_id=step_id,
            namespace=namespace,
        )
    if 300 <= status < 400:
        return BackendError(
            f"{where} answered with a redirect ({status}), which this client does not follow; set "
            "ARTIFACT_STORE_HTTP_ENDPOINT to the URL the server is really at",
            step_id=step_id,
            namespace=namespace,
        )
    secrets = tuple(secrets)
    name = response.headers.get(ERROR_HEADER)
    detail = ""
    retryable: bool | None = None
    if _media_type(response) == MEDIA_TYPE_PROBLEM and response.content:
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            if isinstance(doc.get("type"), str):
                name = doc["type"]
            if isinstance(doc.get("detail"), str) and doc["detail"]:
                # Only this client's secrets: the detail names step ids and namespaces, which may look like a
                # URL with a password and are never rewritten (the server masked what its own text quoted).
                detail = redact(doc["detail"], secrets, url_passwords=False)
            # Everything the answer says is redacted like the detail, not only the detail: an echo of the
            # request (a proxy, a hostile server) can put the token in any field or header.
            if isinstance(doc.get("step_id"), str):
                step_id = redact(doc["step_id"], secrets, url_passwords=False)
            if isinstance(doc.get("namespace"), str):
                namespace = redact(doc["namespace"], secrets, url_passwords=False)
            if isinstance(doc.get("retryable"), bool):
                retryable = doc["retryable"]
    if not detail and (encoded := response.headers.get(ERROR_DETAIL_HEADER)):
        # An answer to HEAD has no body: its server's detail is in this header (redacted like the body's).
        detail = redact(decode_detail(encoded), secrets, url_passwords=False)
    cls = ERROR_CLASSES.get(name or "")
    if cls is not None:
        # The server's message already names the step id, namespace and backend.
        return cls(detail or f"{where} answered {status}", step_id=step_id, namespace=namespace)
    # Not in the allow-list: the type name is the answer's text, quoted redacted (and cut: it can be anything).
    shown = redact(name, secrets)[:100] if name else "not an artifactstore problem"
    detail = f"{where} answered {status} ({shown})" + (f": {detail}" if detail else "")
    if status == 404 and name == PROBLEM_NOT_FOUND and ERROR_HEADER in response.headers:
        # An artifact server that knows no such path: the endpoint's path is not where its API is.
        detail += (
            "; set ARTIFACT_STORE_HTTP_ENDPOINT to the server's URL, with the path prefix it is served under "
            "(if any) and without /v1"
        )
    if status == 413:
        return PayloadTooLargeError(detail, step_id=step_id, namespace=namespace)
    if retryable is False and status >= 500 and ERROR_HEADER in response.headers:
        # A server error outside the allow-list that its server calls permanent: as the client did not
        # retry it (_retryable_answer), it must not be raised as a retryable one either.
        return BackendError(detail, step_id=step_id, namespace=namespace)
    if status in (429, 502, 503):
        return BackendUnavailableError(detail, step_id=step_id, namespace=namespace)
    if status in (408, 504):
        return BackendTimeoutError(detail, step_id=step_id, namespace=namespace)
    if status == 403:
        return AccessDeniedError(detail, step_id=step_id, namespace=namespace)
    return BackendError(detail, step_id=step_id, namespace=namespace)
