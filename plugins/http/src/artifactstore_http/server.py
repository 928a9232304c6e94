"""The artifact server: an ASGI application that exposes any store over the versioned REST API.

Build it with :func:`create_app` and run it under any ASGI server (``artifactstore-serve`` runs it under
uvicorn). Routing reads the undecoded request path (ASGI ``raw_path``), because the decoded ``path`` has
already turned ``%2F`` into ``/``; each namespace and step id segment is percent-decoded exactly once and
handed to the store, which validates it. Nothing from a request is ever used as a file path or a URL.

Store calls are synchronous and run on worker threads; request bodies are received in chunks and refused
with 413 as soon as the declared or received size passes the limit, before the rest is read. After such an
early answer a bounded part of the rest is read and dropped before the connection closes, so that a client
still sending reads the answer rather than a reset (see :data:`LINGER_BYTES`).

Every response carries the protocol marker ``Artifactstore-Protocol: 1``, by which clients tell an artifact
server from any other web server at the endpoint (see :mod:`artifactstore_http.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hmac
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC
from typing import IO, Any, TypeVar, cast
from urllib.parse import parse_qs, unquote_to_bytes

import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from artifactstore_core import ArtifactInfo, ArtifactStore, create_store
from artifactstore_core.envelope import (
    PREFIX_SIZE,
    TAG_SIZE,
    Codec,
    Encoded,
    Header,
    PayloadVerifier,
    content_bytes,
    limiting_json_content,
    reusing_verified_digests,
)
from artifactstore_core.errors import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidStepIdError,
    PayloadTooLargeError,
    StoreClosedError,
    scrub_exception,
)
from artifactstore_core.ids import validate_namespace, validate_step_id
from artifactstore_core.message import Message as ArtifactMessage
from artifactstore_core.registry import plugin_host
from artifactstore_core.settings import CoreSettings, load_settings

from .openapi import openapi_document
from .protocol import (
    ERROR_DETAIL_HEADER,
    ERROR_HEADER,
    INFO_SEGMENT,
    MEDIA_TYPE_ENVELOPE,
    MEDIA_TYPE_PROBLEM,
    PROBLEM_BAD_REQUEST,
    PROBLEM_INTERNAL,
    PROBLEM_METHOD_NOT_ALLOWED,
    PROBLEM_NOT_FOUND,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    decode_cursor,
    encode_cursor,
    encode_detail,
    problem_document,
    status_for,
)
from .settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_BYTES, MIN_TOKEN_LENGTH, _head_setting, head_allowance

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_JSON_BYTES", "StoreFactory", "create_app", "default_store_factory"]

logger = logging.getLogger("artifactstore_http.server")

_T = TypeVar("_T")

#: A function that returns a store bound to the given (validated) namespace.
StoreFactory = Callable[[str], ArtifactStore]

DEFAULT_LIST_LIMIT = 1000
# The most the canonical encoding of a JSON value (what a store keeps) can be longer than any valid JSON text
# of it: a lone float written 1e15 (4 bytes) is 1000000000000000.0 (18). Whitespace, escapes, duplicate keys
# and long numbers only shrink; a float's repr is at most 24 characters, and floats of 1e16 and up keep an
# exponent. JSON content sent this many times under the limit cannot be stored over it.
_MAX_JSON_GROWTH = 5
# What a head can gain once stored besides that growth of its metadata and schema: the store's own "mac" and
# "compression", created_at written with microseconds, a schema's absent fields written as null, a digit
# more of "size". Far more than those take.
_HEAD_GROWTH_SLACK = 256
MAX_LIST_LIMIT = 10_000
# A path as it appears in a request: RFC 3986 path characters (unreserved, sub-delims, ":", "@", "/") and
# well-formed percent escapes.
_PREFIX = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")

_INFO = INFO_SEGMENT.encode("ascii")

# A save whose body is larger than this (or of unknown length: chunked) streams into a store that declares
# capabilities.streaming; smaller ones are received whole, which is faster (one hash pass, one store call).
STREAM_FROM_BYTES = 1 << 20
# Streamed saves that write to their stores at once. Each holds a worker thread while its client sends the
# body, however slowly: on anyio's default 40 threads, 40 stalled uploads stopped every other store call of
# the server (and uploads copying from the same server's streamed GETs deadlocked, each GET needing a thread
# per piece). Their own threads, fewer: more uploads wait for one, with their bodies not yet read.
STREAMED_SAVES = 16
# The largest piece of a streamed payload read from a store (on a worker thread) and sent at once.
SEND_CHUNK_BYTES = 1 << 20
_FILLER = bytes(SEND_CHUNK_BYTES)
# An answer given before the request body was received (401, 413, an early 409: sent with "Connection: close") is
# followed by reading and dropping what the client still sends, before the ASGI server closes the connection:
# until the body ends or the client goes away, but LINGER_BYTES at most, no longer than LINGER_IDLE_SECONDS
# without a byte, and LINGER_SECONDS in all. Closed at once, the connection was reset (Linux answers a close()
# with unread bytes with a TCP RST): a client still sending got ECONNRESET or EPIPE from its send, and one that
# gives up there (the standard library's http.client, most others) never read the answer. Within these bounds
# the rest of a body of a few MiB is received and the connection ends in order; a longer body is still cut by
# a reset, and a hostile client holds the connection for seconds at most.
LINGER_BYTES = 8 << 20
LINGER_IDLE_SECONDS = 1.0
LINGER_SECONDS = 5.0

_UNAUTHORIZED = problem_document(
    "AccessDeniedError",
    status=401,
    title="Unauthorized",
    detail="a valid bearer token is required in the Authorization header",
)


def default_store_factory(backend: str | None = None) -> StoreFactory:
    """A factory that builds stores of ``backend`` (default: the configured ``ARTIFACT_STORE_BACKEND``).

    The backend's plugin is loaded, and a store of the ``default`` namespace built and closed, here, so that
    a server for a backend that is not there, or whose settings are invalid, fails to start. (A setting that
    only the backend's factory checks, such as a malformed Redis URL, otherwise started a server that
    answered every request with that error, telling each client to fix a variable of the server's.) Any other
    failure to build that store (the backend unreachable for now) is logged, and the server starts.

    Raises:
        ConfigurationError: the backend is ``http`` itself (a server serving itself), or the settings (the
            core's or the backend's) are invalid.
        BackendNotFoundError: no backend of that name is installed (with "did you mean" or the
            ``pip install`` line).
        PluginLoadError: the backend's plugin failed to load.
    """
    name = backend or load_settings(CoreSettings).backend
    if name == "http":
        raise ConfigurationError(
            "the artifact server cannot expose the http backend itself; set ARTIFACT_STORE_SERVER_BACKEND "
            "(or ARTIFACT_STORE_BACKEND for the server process) to the store it should serve"
        )
    # Otherwise a mistyped name would start a server that answers every request 500.
    plugin_host().load(name)
    try:
        probe = create_store(name, namespace="default")
    except ConfigurationError:
        raise
    except ArtifactStoreError as exc:
        logger.warning("cannot open a %s store yet (%s); serving, each request tries again", name, exc.message)
    else:
        _close_quietly(probe)

    def factory(namespace: str) -> ArtifactStore:
        return create_store(name, namespace=namespace)

    return factory


class _ProblemError(Exception):
    """A failure answered with a problem body that is not a core error (bad request, unknown path)."""

    def __init__(self, status: int, type_: str, title: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.type, self.title, self.detail = status, type_, title, detail
        self.headers = headers or {}


def _problem_response(
    doc: dict[str, Any], *, headers: dict[str, str] | None = None, close: bool = False, head: bool = False
) -> Response:
    extra = {ERROR_HEADER: str(doc["type"]), **(headers or {})}
    if head and doc.get("detail"):
        # An answer to HEAD has no body: the detail travels in a header, or the client could say only the
        # status and the type. It is the body's own detail (a core error's message, which names no secret).
        extra[ERROR_DETAIL_HEADER] = encode_detail(str(doc["detail"]))
    if close:
        # The request body was not read: the connection ends after this answer, rather than the whole body being
        # received for the next request's sake (_Guard reads a bounded part of it first, see LINGER_BYTES).
        extra["Connection"] = "close"
    return JSONResponse(doc, status_code=int(doc["status"]), headers=extra, media_type=MEDIA_TYPE_PROBLEM)


def _bodiless(response: Response) -> Response:
    """``response`` as the answer to ``HEAD``: its status and headers (``Content-Length`` the size of the body a
    ``GET`` gets), without the body.

    The body is dropped here rather than left to the ASGI server (uvicorn drops it, the ASGI spec does not say
    every server must): a ``HEAD`` on a list page is never sent the page.
    """
    answer = Response(status_code=response.status_code)
    answer.raw_headers = list(response.raw_headers)
    return answer


def _without_length(response: Response) -> Response:
    """``response`` without the ``Content-Length`` Starlette gives it (see ``_App._exists``)."""
    response.raw_headers = [(name, value) for name, value in response.raw_headers if name != b"content-length"]
    return response


def _error_document(error: ArtifactStoreError, status: int | None = None) -> dict[str, Any]:
    if isinstance(error, StoreClosedError):
        # The store closes only when the server shuts down; to the client that is an unavailable server.
        error = BackendUnavailableError("the artifact server is shutting down; retry against a running server")
    status = status if status is not None else status_for(error)
    return problem_document(
        type(error).__name__,
        status=status,
        title=type(error).__name__,
        detail=error.message,
        retryable=type(error).retryable,
        step_id=error.step_id,
        namespace=error.namespace,
        backend=error.backend,
    )


def _uncancel() -> None:
    """Withdraw one cancellation request from the current asyncio task (none under another event loop)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop running (trio)
        return
    if task is not None and task.cancelling():
        task.uncancel()


def _cut_short(body_pending: bool, namespace: str | None, step_id: str | None) -> ArtifactStoreError:
    """The error of a request the server's shutdown cut short (``body_pending``: a save whose body was not
    read yet, so nothing was done)."""
    if body_pending:
        return BackendUnavailableError(
            "the artifact server shut down while it was receiving this request; nothing was saved; retry "
            "against a running server",
            step_id=step_id,
            namespace=namespace,
        )
    return BackendTimeoutError(
        "the artifact server shut down before its store finished this request (its graceful shutdown timed "
        "out): the operation may or may not have happened; retry against a running server",
        step_id=step_id,
        namespace=namespace,
    )


class _StoreCache:
    """Stores by namespace, built on first use, kept for the most recently used, closed on eviction.

    A store is built outside the cache's lock: building one may take long (a filesystem store sweeps its
    namespace's directory, a cluster client connects, a custom factory may do anything), and requests for
    every other namespace are served meanwhile. Requests for the namespace being built wait for that one
    build instead of starting their own: on the event loop (:meth:`prepare`), before they take a worker thread.
    """

    def __init__(self, factory: StoreFactory, capacity: int) -> None:
        self._factory = factory
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list[Any]] = OrderedDict()  # namespace -> [store, users]
        self._building: dict[str, threading.Lock] = {}  # namespace -> held while its store is built
        # namespace -> set once the build that prepare() started has ended (touched on the event loop only)
        self._preparing: dict[str, anyio.Event] = {}
        self._closed = False

    def _use(self, namespace: str) -> list[Any] | None:
        """The cached entry of ``namespace``, counted as in use, or ``None``; call with ``_lock`` held.

        Raises:
            StoreClosedError: the cache was closed (the server is shutting down).
        """
        if self._closed:
            raise StoreClosedError("the artifact server is shutting down")
        entry = self._entries.get(namespace)
        if entry is not None:
            self._entries.move_to_end(namespace)
            entry[1] += 1
        return entry

    def _entry(self, namespace: str) -> list[Any]:
        """The entry of ``namespace``, counted as in use, building its store if there is none."""
        with self._lock:
            entry = self._use(namespace)
            if entry is not None:
                return entry
            building = self._building.setdefault(namespace, threading.Lock())
        with building:
            with self._lock:
                entry = self._use(namespace)  # built while this request waited for the build
                if entry is not None:
                    return entry
            try:
                store = self._factory(namespace)
            except BaseException:
                with self._lock:
                    self._built(namespace, building)
                raise
            unused: ArtifactStore | None = None
            with self._lock:
                self._built(namespace, building)
                if self._closed:
                    entry, unused = None, store
                else:
                    entry = self._entries.get(namespace)
                    if entry is None:
                        entry = self._entries[namespace] = [store, 0]
                    else:  # pragma: no cover - another build of this namespace was cached first (a rare race)
                        unused = store
                    self._entries.move_to_end(namespace)
                    entry[1] += 1
            if unused is not None:
                # Not cached: the server began shutting down during the build, or another build won.
                _close_quietly(unused)
            if entry is None:
                raise StoreClosedError("the artifact server is shutting down")
            return entry

    def _built(self, namespace: str, building: threading.Lock) -> None:
        """Forget the build lock of ``namespace`` once its build ended; call with ``_lock`` held."""
        if self._building.get(namespace) is building:
            del self._building[namespace]

    async def prepare(self, namespace: str) -> bool:
        """Wait until the store of ``namespace`` is built, building it (on a worker thread) if nobody is; return
        whether it declares ``capabilities.streaming``.

        The answer is taken while the store is known to be there (cached, or just built): asked of the cache a
        moment later, a store that another request's end evicted meanwhile read as one that does not stream,
        and a large upload was then received whole into memory.

        Requests wait here for another request's build on the event loop, not each on a worker thread of
        its own: the worker threads are few (anyio's 40), and 40 requests of a namespace whose store took
        long to build (a cluster being connected) held them all, so that no request of any other namespace
        was served until the build ended.

        Raises:
            StoreClosedError: the cache was closed (the server is shutting down).
            Whatever the factory raises building the store.
        """
        while True:
            with self._lock:
                if self._closed:
                    raise StoreClosedError("the artifact server is shutting down")
                entry = self._entries.get(namespace)
                if entry is not None:
                    return bool(entry[0].capabilities.streaming)
                done = self._preparing.get(namespace)
                builder = done is None
                if done is None:
                    done = self._preparing[namespace] = anyio.Event()
            if not builder:
                # Then look again: built, or the build failed and this request tries its own.
                await done.wait()
                continue
            try:
                return await anyio.to_thread.run_sync(self._build, namespace)
            finally:
                with self._lock:
                    del self._preparing[namespace]
                done.set()

    def _build(self, namespace: str) -> bool:
        """Build the store of ``namespace`` (on a worker thread) and count its use as ended at once; return
        whether it streams.

        Both in the thread: a request cancelled while it awaits the build (the server's shutdown) cannot leave
        the store counted as in use, which would keep it from ever being closed.
        """
        entry = self._entry(namespace)
        try:
            return bool(entry[0].capabilities.streaming)
        finally:
            # Not evicted here, though idle for a moment: the request that built it is about to use it.
            self._release(namespace, entry, evict=False)

    def lend(self, namespace: str) -> tuple[ArtifactStore, Callable[[], None]]:
        """The store of ``namespace``, counted as in use until the returned function is called (once or more:
        only its first call counts), for a use that outlives one worker call (a response streamed from it).

        Raises:
            StoreClosedError: the cache was closed (the server is shutting down).
            Whatever the factory raises building the store.
        """
        entry = self._entry(namespace)
        released = threading.Lock()

        def release() -> None:
            if released.acquire(blocking=False):
                self._release(namespace, entry)

        return entry[0], release

    @contextlib.contextmanager
    def acquire(self, namespace: str) -> Iterator[ArtifactStore]:
        """The store of ``namespace``, counted as in use until the block ends (it is never closed meanwhile).

        Raises:
            StoreClosedError: the cache was closed (the server is shutting down).
            Whatever the factory raises building the store.
        """
        entry = self._entry(namespace)
        try:
            yield entry[0]
        finally:
            self._release(namespace, entry)

    def _release(self, namespace: str, entry: list[Any], *, evict: bool = True) -> None:
        """Count one use of ``entry`` (of ``namespace``) as ended; close the stores that leaves to be closed
        (``evict``: the least recently used idle ones beyond the capacity, too)."""
        evicted = []
        with self._lock:
            entry[1] -= 1
            if self._closed:
                # The server shut down while this call used the store (see close()): its last user closes it.
                if entry[1] == 0 and self._entries.get(namespace) is entry:
                    del self._entries[namespace]
                    evicted.append(entry[0])
            elif evict and len(self._entries) > self._capacity:
                for name, (store, users) in list(self._entries.items()):
                    if len(self._entries) <= self._capacity:
                        break
                    if users == 0:
                        del self._entries[name]
                        evicted.append(store)
        for store in evicted:
            _close_quietly(store)

    def close(self) -> None:
        """Build and lend no more stores; close those not in use now, and each one in use when its last user ends.

        A store call still running when the server shuts down (uvicorn's graceful shutdown gives up on its
        request after its timeout, but cannot stop the worker thread) goes on with an open store: closing it
        under the call (a pool or file released under a running read or write) made the call fail, or worse,
        half-done inside the backend. The process exits once those worker threads have returned.
        """
        with self._lock:
            self._closed = True
            stores = [store for store, users in self._entries.values() if users == 0]
            for name in [name for name, (_, users) in self._entries.items() if users == 0]:
                del self._entries[name]
        for store in stores:
            _close_quietly(store)


def _close_quietly(store: ArtifactStore) -> None:
    try:
        store.close()
    except ArtifactStoreError as exc:
        logger.warning("closing the store of namespace %r failed: %s", store.namespace, exc.message)


def _refuse_another_artifact(store: ArtifactStore, step_id: str, header: Header) -> None:
    """Before a large save's payload is received (on a worker thread): refuse it at once when ``step_id`` holds an
    artifact that is certainly another one, whose size, digest, media type or schema name differ from ``header``'s
    (a verified head, whose payload is checked against it as it arrives).

    Otherwise the whole body was received (and the store's ``save_stream`` spooled it) before the store's
    write-once commit refused it. That commit stays the guard: an artifact saved meanwhile, or one that differs
    only by its metadata or schema document (which its info does not show), is refused by it once the body is in;
    the same artifact again (a retry) is received and saved as before, a success.

    Raises:
        ArtifactExistsError: ``step_id`` holds another artifact.
        ArtifactStoreError: the store's ``info`` failed (as the save would have).
    """
    if type(store)._info is ArtifactStore._info:
        # The base class's info lists the whole namespace: more than the early answer saves. The commit refuses.
        return
    try:
        stored = store.info(step_id)
    except ArtifactNotFoundError:
        return
    incoming = header.info(step_id)
    if (stored.size, stored.digest, stored.media_type, stored.schema_name) != (
        incoming.size, incoming.digest, incoming.media_type, incoming.schema_name,
    ):  # fmt: skip
        # The store's own words for a write-once refusal, as its save would have raised it.
        raise store._exists_error(step_id)


class _UploadFailedError(Exception):
    """What a streamed save's body reader raises to the store when the body fails; the server answers with the
    reader's own error (:attr:`_Upload.error`), not with the store's wrapping of this one."""


class _Upload:
    """The body of a streamed save: its head is read on the event loop, its payload by the store on a worker thread
    (:meth:`read`, pulling the body's chunks from the event loop), verified on the way.

    The payload is checked as the in-memory path checks a whole body, with the same errors: a body longer than the
    request limit is refused with 413 once it passes it; a payload of another length than its header says, or
    whose digest differs, with ``ArtifactCorruptedError``. Both are found before the store is handed the last
    bytes (the read that completes the payload also reads the body's end and checks the digest), and the
    streaming stores store nothing from a stream whose read raised. Memory stays bounded by one chunk of the
    body (the ASGI server's, 64 KiB under uvicorn) at a time.
    """

    def __init__(self, request: Request, max_request: int, too_large: Callable[[], Exception]) -> None:
        self._chunks = request.stream().__aiter__()
        self._token = anyio.lowlevel.current_token()
        self._too_large = too_large
        self._max_request = max_request
        self._lock = threading.Lock()
        self._received = 0  # bytes of the body received so far (head included)
        self._body_done = False  # the body's end was received
        self._delivered_end = False  # the store was handed the end of a verified payload
        self._abandoned = False  # the request was answered: the store gets nothing more
        self.error: Exception | None = None
        self._header: Header | None = None
        self._verifier: PayloadVerifier | None = None
        self._head_size = 0
        self._buffer = memoryview(b"")
        self._payload_seen = 0  # payload bytes received (verified as received)
        self._payload_given = 0  # payload bytes handed to the store

    # -- the event loop's side ----------------------------------------------------------------------------------

    async def pull(self) -> bytes | None:
        """The next non-empty chunk of the body, or ``None`` at its end.

        Raises:
            ClientDisconnect: the client went away.
            PayloadTooLargeError: the body passed the request limit.
        """
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                with self._lock:
                    self._body_done = True
                return None
            if chunk:
                self._received += len(chunk)
                if self._received > self._max_request:
                    raise self._too_large()
                return chunk

    def settle(self) -> bool:
        """Whether the request's body is still pending (not received to its end), for an answer other than
        success; from then on the store is handed nothing more, so a save still running (the server's shutdown
        answered the request meanwhile) fails and stores nothing unless it already had the whole payload."""
        with self._lock:
            self._abandoned = True
            return not self._body_done

    # -- the worker thread's side -------------------------------------------------------------------------------

    def start(self, header: Header, head_size: int, rest: bytes | bytearray) -> None:
        """Begin the payload, described by its verified ``header``, with ``rest`` (what followed the head).

        Raises:
            ArtifactCorruptedError, PayloadTooLargeError, ClientDisconnect: as :meth:`read`.
        """
        self._header = header
        self._head_size = head_size
        self._verifier = PayloadVerifier(header)
        if rest:
            self._accept(bytes(rest))

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """At most ``size`` bytes of the payload (all that is buffered when ``size`` is negative); ``b""`` at its end.

        Raises:
            _UploadFailedError: the body failed (its error in :attr:`error`), now or at an earlier read.
        """
        if self.error is not None:
            raise _UploadFailedError("the request body failed earlier")
        try:
            return self._read(size)
        except Exception as exc:
            self.error = exc
            raise _UploadFailedError(f"the request body failed: {type(exc).__name__}") from None

    def _read(self, size: int | None) -> bytes:
        header = self._header
        assert header is not None
        if self._delivered_end:
            return b""
        if self._payload_given == header.size:  # an empty payload: nothing to hand over but its end
            self._finish()
            return b""
        while not self._buffer:
            chunk = self._next()
            if chunk is None:
                raise self._wrong_size(self._payload_seen)
            self._accept(chunk)
        count = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
        piece = bytes(self._buffer[:count])
        self._buffer = self._buffer[count:]
        self._payload_given += count
        if self._payload_given == header.size:
            # The last bytes: the body must end here and the payload be intact before the store has them.
            self._finish()
        return piece

    def _accept(self, chunk: bytes) -> None:
        header, verifier = self._header, self._verifier
        assert header is not None
        assert verifier is not None
        if self._payload_seen + len(chunk) > header.size:
            self._overlong(self._payload_seen + len(chunk))
        self._payload_seen += len(chunk)
        verifier.update(chunk)
        self._buffer = memoryview(chunk)

    def _finish(self) -> None:
        header, verifier = self._header, self._verifier
        assert header is not None
        assert verifier is not None
        extra = self._next()
        if extra is not None:
            self._overlong(self._payload_seen + len(extra))
        verifier.finish()  # "payload digest does not match its header", as the in-memory path says
        with self._lock:
            if self._abandoned:
                raise ClientDisconnect()
            self._delivered_end = True

    def _next(self) -> bytes | None:
        with self._lock:
            if self._abandoned:
                raise ClientDisconnect()
        return anyio.from_thread.run(self.pull, token=self._token)

    def _overlong(self, seen: int) -> None:
        # Received to its end, as the in-memory path does, for the same answer: 413 past the request limit (pull
        # raises it), otherwise the payload's true length. Nothing more is kept.
        while (chunk := self._next()) is not None:
            seen += len(chunk)
        raise self._wrong_size(seen)

    def _wrong_size(self, seen: int) -> ArtifactCorruptedError:
        header = self._header
        assert header is not None
        return ArtifactCorruptedError(f"stored payload is {seen} bytes; its header says {header.stored_size}")


class _Lease:
    """A store lent to a streamed ``GET`` and the stream opened from it, held until the response ends.

    :meth:`end` closes the stream and counts the store's use as ended, once, from whichever thread calls it
    first: the response's cleanup, or the request's if the response is never sent. It never waits for a read
    in flight: the stream is then closed (and the store's use ended) by that read's own thread once the read
    returns, never under it. A lease ended before the worker that opened the stream handed it over (the request
    was cancelled meanwhile) closes what it is then handed at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: IO[bytes] | None = None
        self._release: Callable[[], None] | None = None
        self._ended = False
        self._reading = False

    def keep(self, stream: IO[bytes], release: Callable[[], None]) -> None:
        with self._lock:
            if not self._ended:
                self._stream, self._release = stream, release
                return
        _close_stream(stream)
        release()

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the stream (on a worker thread; one read at a time).

        Raises:
            StoreClosedError: the lease was ended.
            What the stream's ``read`` raises (``ArtifactCorruptedError`` for a damaged payload).
        """
        with self._lock:
            stream = self._stream
            if stream is None or self._ended:
                raise StoreClosedError("the response was ended")
            self._reading = True
        try:
            data: bytes = stream.read(size)
            return data
        finally:
            if self._read_done():  # ended during the read, which was left to finish: its thread closes the stream
                self._close()

    def _read_done(self) -> bool:
        """Count the read in flight as ended; whether the lease was ended meanwhile."""
        with self._lock:
            self._reading = False
            return self._ended

    def end(self) -> None:
        """Close the stream and end the store's use (idempotent). Blocks for the stream's close only, never for
        a read in flight (which closes it when it returns), so the event loop may call it when it must."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if self._reading:
                return
        self._close()

    def _close(self) -> None:
        with self._lock:
            stream, release = self._stream, self._release
            self._stream = self._release = None
        try:
            if stream is not None:
                _close_stream(stream)
        finally:
            if release is not None:
                release()


def _whole_envelope(head: bytes, payload: bytes) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        # Head and payload go out as two writes: the payload is never concatenated into a copy.
        yield head
        yield payload

    return StreamingResponse(
        chunks(), media_type=MEDIA_TYPE_ENVELOPE, headers={"Content-Length": str(len(head) + len(payload))}
    )


def _streamable(header: Header) -> bool:
    """Whether an artifact of this verified header is passed on as a stream: uncompressed ``bytes`` content,
    whose payload is the content itself (JSON and text are parsed or decoded by the server anyway)."""
    return header.codec == "bytes" and header.compression is None and header.stored_size == header.size


def _close_stream(stream: IO[bytes]) -> None:
    try:
        stream.close()
    except Exception as exc:
        # Closing frees a file or a connection; its failure changes nothing for the answer already given.
        logger.warning("closing a store's stream failed: %s", getattr(exc, "message", type(exc).__name__))


class _AnswerCutShortError(Exception):
    """Raised out of the application to have the ASGI server drop the connection of an answer begun with a
    ``Content-Length`` it can no longer complete (the ASGI way to abort a response); the cause was logged by this
    module already, in one line, and :class:`_QuietCutShort` keeps the server from logging it as a crash."""


class _QuietCutShort(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" record (and its traceback) for an answer this server cut
    short on purpose (:class:`_AnswerCutShortError`), which is logged as one line instead; every other record
    passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, _AnswerCutShortError)


_QUIET_CUT_SHORT = _QuietCutShort()


def _quiet_uvicorn() -> None:
    """Attach :data:`_QUIET_CUT_SHORT` to the logger uvicorn reports application errors on (once)."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _QUIET_CUT_SHORT not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_QUIET_CUT_SHORT)


class _StreamedEnvelope(Response):
    """The answer to ``GET`` of an uncompressed ``bytes`` artifact of a streaming store: the server's head, then
    the payload read from the store's stream in pieces of :data:`SEND_CHUNK_BYTES` on worker threads.

    ``Content-Length`` is known from the header (head plus size). A client that goes away ends the sending; the
    lease (store stream and store use) ends in every case. The payload is verified by the store's stream as it is
    read, the last piece at the latest. A damaged payload found midway cannot be answered with an error any more
    (the status and head went out): the body is completed with zero bytes up to its announced length, so that
    the client's own digest check (against the stored digest the head carries) fails with
    ``ArtifactCorruptedError`` instead of the connection being cut (which a client retries), and the damage is
    logged. Any other failure of the store midway, and the server's graceful shutdown running out while the
    answer is sent, cut the response short: one warning line is logged (namespace, step id, the store's error),
    and the connection is dropped (:class:`_AnswerCutShortError`), so the client sees a truncated body, never
    one that looks complete, and may retry.
    """

    def __init__(self, head: bytes, size: int, lease: _Lease, place: tuple[str, str]) -> None:
        super().__init__(
            status_code=200, media_type=MEDIA_TYPE_ENVELOPE, headers={"Content-Length": str(len(head) + size)}
        )
        self._head, self._size, self._lease, self._place = head, size, lease, place
        self._left = size  # payload bytes not sent yet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        failure: Exception | None = None  # the store's error that cut the answer short
        shutdown = False  # the server's shutdown cut it short
        try:
            try:
                async with anyio.create_task_group() as group:

                    async def watch() -> None:
                        # A disconnect is not an error of send() under every ASGI server (uvicorn drops the writes).
                        while (await receive())["type"] != "http.disconnect":
                            pass
                        group.cancel_scope.cancel()

                    group.start_soon(watch)
                    failure = await self._send(send)
                    group.cancel_scope.cancel()
            except anyio.get_cancelled_exc_class():
                # uvicorn's graceful shutdown ran out and cancelled this request (see _App.endpoint): an expected
                # end, not a crash of the application. The task goes on to end its answer as cut short.
                _uncancel()
                shutdown = True
                logger.warning(
                    "GET of artifact %r in namespace %r cut short by the server's shutdown, %d of its %d payload "
                    "bytes sent; the client sees a truncated body",
                    self._place[1], self._place[0], self._size - self._left, self._size,
                )  # fmt: skip
        finally:
            try:
                await _end_lease(self._lease)
            except anyio.get_cancelled_exc_class():
                if not shutdown and failure is None:
                    raise
                # The task cancelled again once its answer was cut short (the event loop closing after the
                # shutdown): the lease is ended all the same (see _end_lease), and the answer was logged.
                _uncancel()
        # Raised outside the task group, which would wrap it in an exception group.
        if shutdown:
            raise _AnswerCutShortError("cut short by the server's shutdown")
        if failure is not None:
            raise _AnswerCutShortError("the store failed midway") from failure

    async def _send(self, send: Send) -> Exception | None:
        """Send the answer; the store's error that cut it short (logged here), or ``None`` once it is complete."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self._head, "more_body": True})
        while self._left:
            left = self._left
            try:
                chunk = await anyio.to_thread.run_sync(self._lease.read, min(SEND_CHUNK_BYTES, left))
                if not chunk or len(chunk) > left:
                    raise ArtifactCorruptedError(
                        f"the payload stream gave {'no more' if not chunk else 'more'} bytes than its header says"
                    )
            except ArtifactCorruptedError as exc:
                logger.error(
                    "artifact %r in namespace %r is damaged (%s): its response is completed with %d zero bytes, so "
                    "that the client's digest check fails",
                    self._place[1], self._place[0], exc.message, left,
                )  # fmt: skip
                while self._left:
                    filler = _FILLER if self._left >= len(_FILLER) else _FILLER[: self._left]
                    await send({"type": "http.response.body", "body": filler, "more_body": True})
                    self._left -= len(filler)
                break
            except Exception as exc:
                # Only a core error's message is shown: it names no secret (a raw error from a third-party
                # stream might quote anything, so only its type is).
                why = (
                    f"{type(exc).__name__}: {exc.message}"
                    if isinstance(exc, ArtifactStoreError)
                    else type(exc).__name__
                )
                logger.warning(
                    "reading artifact %r in namespace %r failed midway, %d of its %d payload bytes sent (%s); its "
                    "response is cut short",
                    self._place[1], self._place[0], self._size - left, self._size, why,
                )  # fmt: skip
                return exc
            self._left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return None


async def _end_lease(lease: _Lease) -> None:
    """End ``lease`` on a worker thread (its stream's close may block), also when the caller is being cancelled
    (then, if the worker call could not start or was given up, right here: :meth:`_Lease.end` does not wait for a
    read in flight, so the event loop is held for the stream's close at most)."""
    try:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lease.end)
    except BaseException:
        lease.end()  # returns at once if the worker call ended (or is ending) it
        raise


def _info_json(info: ArtifactInfo) -> dict[str, Any]:
    return {
        "step_id": info.step_id,
        "size": info.size,
        "digest": info.digest,
        "media_type": info.media_type,
        "schema_name": info.schema_name,
        "created_at": info.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


# What JSONResponse writes (compact, UTF-8 as is), one encoder for every item of a page.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# Room a list page keeps under the JSON limit for what is not an item: the braces, the keys and the cursor
# (an encoded step id of at most 256 bytes).
_PAGE_FRAME = 1024


def _page_body(infos: list[ArtifactInfo], limit: int, max_json: int) -> bytes:
    """The JSON answer of a list page: the first ``limit`` of ``infos`` (sorted by step id) that fit, together,
    in at most ``max_json`` bytes (at least one), and the cursor after the last of them if more follow.

    A client reads a list answer within its ``ARTIFACT_STORE_HTTP_MAX_JSON_BYTES``, whose default is this
    server's JSON limit: a page of 1,000 artifacts with 40 KB media types or schema names (each of which the
    server accepted) made a 40 MB answer that a default client refused, so the listing could not be read
    at all. A page ends early instead; the cursor resumes after its last item, as after any page.
    """
    page = infos[:limit]
    budget = max_json - _PAGE_FRAME
    # Most pages fit by a bound on their text (no character takes more than 6 bytes in JSON; keys, digest, size
    # and time take under 256 bytes an item), and are encoded in one call, as before; only a page that may
    # not fit is encoded item by item.
    if sum(6 * (len(i.step_id) + len(i.media_type) + len(i.schema_name or "")) + 256 for i in page) <= budget:
        items = page
    else:
        items, used = [], 0
        for info in page:
            used += len(_JSON.encode(_info_json(info)).encode("utf-8")) + 1
            if items and used > budget:
                break
            items.append(info)
    more = len(items) < len(page) or len(infos) > limit
    next_cursor = encode_cursor(items[-1].step_id) if more else None
    return _JSON.encode({"items": [_info_json(info) for info in items], "next_cursor": next_cursor}).encode("utf-8")


def _decode_segment(raw: bytes, what: str) -> str:
    """Percent-decode one path segment exactly once into a str (never sanitized)."""
    if b"%" in raw:
        # unquote_to_bytes leaves a malformed escape as is; a malformed escape is a client bug, refuse it.
        i = raw.find(b"%")
        while i != -1:
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in pair):
                raise InvalidStepIdError(f"{what} path segment has a malformed percent escape")
            i = raw.find(b"%", i + 3)
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidStepIdError(f"{what} is not valid UTF-8 after percent-decoding") from None


def _query(request: Request) -> dict[str, str]:
    try:
        # Blank values kept: parse_qs drops "?overwrite" and "?overwrite=" otherwise, and the parameter was
        # silently taken as absent (false), though whoever wrote it meant something.
        parsed = parse_qs(
            request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True, strict_parsing=False
        )
    except ValueError:
        raise _ProblemError(400, PROBLEM_BAD_REQUEST, "Bad request", "malformed query string") from None
    query = {}
    for key, values in parsed.items():
        if len(values) != 1:
            raise _ProblemError(400, PROBLEM_BAD_REQUEST, "Bad request", f"query parameter {key!r} is repeated")
        query[key] = values[0]
    return query


def _accept_query(request: Request, *accepted: str) -> None:
    """Refuse a request whose query string holds a parameter other than ``accepted`` (the route's own).

    A parameter the server does not know was ignored: a misspelt ``?overwite=true`` saved write-once (and was
    answered 409), a mistyped option was silently dropped. The answer names the parameter and those the route
    takes.

    Raises:
        _ProblemError: 400, a parameter the route does not take (or a malformed query string).
    """
    unknown = sorted(set(_query(request)) - set(accepted))
    if not unknown:
        return
    # Shown as the client sent it but bounded: the answer quotes it back, and a query may be long.
    name = unknown[0] if len(unknown[0]) <= 64 else unknown[0][:64] + "..."
    close = difflib.get_close_matches(unknown[0], accepted, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    takes = f"takes only {', '.join(repr(a) for a in accepted)}" if accepted else "takes no query parameters"
    what = f"{request.method} on this path"
    raise _ProblemError(
        400,
        PROBLEM_BAD_REQUEST,
        "Bad request",
        f"unknown query parameter {name!r}{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}: "
        f"{what} {takes}{hint}",
    )


def _bool_param(query: dict[str, str], name: str) -> bool:
    value = query.get(name, "false").lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise _ProblemError(
        400, PROBLEM_BAD_REQUEST, "Bad request", f"query parameter {name!r} must be {name}=true or {name}=false"
    )


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    # Plain ASCII decimal digits only: int() also takes "+5", " 5", "1_000" and other scripts' digits, which
    # the OpenAPI document's integer does not allow and another server implementation would refuse. The length
    # is checked first: int() raises on more than 4300 digits.
    if value.isascii() and value.isdigit() and len(value.lstrip("0")) <= len(str(high)) and low <= int(value) <= high:
        return int(value)
    raise _ProblemError(
        400, PROBLEM_BAD_REQUEST, "Bad request", f"query parameter {name!r} must be an integer from {low} to {high}"
    )


class _App:
    """The request handlers; one instance per application."""

    def __init__(
        self,
        cache: _StoreCache,
        *,
        token: SecretStr | None,
        max_body_bytes: int,
        max_json_bytes: int,
        path_prefix: str,
    ) -> None:
        self._cache = cache
        self._prefix = path_prefix.encode("ascii")
        self._token = token.get_secret_value().encode("ascii") if token is not None else None
        self._max_body = max_body_bytes
        # The limit counts content; a body may carry the envelope's head on top (see head_allowance).
        self._max_head = head_allowance(max_body_bytes, max_json_bytes)
        self._head_setting = _head_setting(max_body_bytes, max_json_bytes, "ARTIFACT_STORE_SERVER_")
        self._max_request = max_body_bytes + self._max_head
        self._max_json = max_json_bytes
        # Created on the event loop, at the first streamed save (anyio binds a limiter to its loop).
        self._upload_limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A plain ASGI app (the router's default), so every method and path reaches the handler and gets a
        # problem body (Starlette's own 404 and 405 are plain text).
        request = Request(scope, receive)
        response = await self.endpoint(request)
        if request.method == "HEAD":
            response = _bodiless(response)
        try:
            await response(scope, receive, send)
        except anyio.get_cancelled_exc_class():
            # uvicorn's graceful shutdown ran out while the answer was sent (a large artifact to a slow client):
            # one line, and the connection dropped with the body cut short (see _AnswerCutShortError).
            _uncancel()
            logger.warning(
                "%s %s cut short by the server's shutdown while its answer was sent; the client sees a truncated "
                "body",
                request.method, _loggable_path(scope),
            )  # fmt: skip
            raise _AnswerCutShortError("cut short by the server's shutdown") from None

    # -- entry ----------------------------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        # Until the handler reads the body, an error response also closes the connection (see _problem_response).
        request.state.body_read = False

        def body_pending() -> bool:
            if request.method not in ("PUT", "POST", "PATCH"):
                return False
            upload: _Upload | None = getattr(request.state, "upload", None)
            # A streamed save: pending until its body's end was received; the store is handed nothing more.
            return upload.settle() if upload is not None else not request.state.body_read

        head = request.method == "HEAD"
        namespace: str | None = None
        step_id: str | None = None

        try:
            segments = self._segments(request)
            # The health and open API paths take any query: nothing is read from it, and monitors add their own
            # (a cache-busting "?_=1700000000"), which must not read as a server down.
            if segments == [b"v1", b"health"]:
                self._allow(request, "GET", "HEAD")
                # The body limit is advertised so that a client's save_stream can stop reading a stream this
                # server would refuse (it is in the open API document already, so nothing new is disclosed).
                return JSONResponse({"status": "ok", "max_body_bytes": self._max_body})
            if segments == [b"v1", b"openapi.json"]:
                self._allow(request, "GET", "HEAD")
                return JSONResponse(
                    openapi_document(
                        max_body_bytes=self._max_body,
                        max_json_bytes=self._max_json,
                        path_prefix=self._prefix.decode("ascii"),
                    )
                )
            if not self._authorized(request):
                return _problem_response(
                    _UNAUTHORIZED,
                    headers={"WWW-Authenticate": 'Bearer realm="artifactstore"'},
                    close=body_pending(),
                    head=head,
                )
            if len(segments) >= 3 and segments[:2] == [b"v1", b"namespaces"]:
                namespace = validate_namespace(_decode_segment(segments[2], "namespace"))
                rest = segments[3:]
                if not rest:
                    self._allow(request, "DELETE")
                    _accept_query(request)
                    return await self._clear(namespace)
                # HEAD is answered wherever GET is (RFC 9110; probes and proxies send it): the GET's answer,
                # status and headers, without its body (see __call__).
                if rest == [b"artifacts"]:
                    self._allow(request, "GET", "HEAD")
                    _accept_query(request, "limit", "cursor")
                    return await self._list(request, namespace)
                if len(rest) == 3 and rest[0] == b"artifacts" and rest[2] == _INFO:
                    # One segment more than any artifact's path: a step id is one segment, its "/" encoded.
                    step_id = validate_step_id(_decode_segment(rest[1], "step id"))
                    self._allow(request, "GET", "HEAD")
                    _accept_query(request)
                    return await self._info(namespace, step_id)
                if len(rest) == 2 and rest[0] == b"artifacts":
                    step_id = validate_step_id(_decode_segment(rest[1], "step id"))
                    self._allow(request, "PUT", "GET", "HEAD", "DELETE")
                    _accept_query(request, *(("overwrite",) if request.method == "PUT" else ()))
                    if request.method == "PUT":
                        return await self._save(request, namespace, step_id)
                    if request.method == "GET":
                        return await self._get(namespace, step_id)
                    if request.method == "HEAD":
                        return await self._exists(namespace, step_id)
                    return await self._delete(namespace, step_id)
            raise _ProblemError(404, PROBLEM_NOT_FOUND, "Not found", "no such API path")
        except _ProblemError as exc:
            doc = problem_document(exc.type, status=exc.status, title=exc.title, detail=exc.detail)
            return _problem_response(doc, headers=exc.headers, close=body_pending(), head=head)
        except PayloadTooLargeError as exc:
            return _problem_response(_error_document(exc), close=True, head=head)
        except ArtifactStoreError as exc:
            return _problem_response(_error_document(exc), close=body_pending(), head=head)
        except ClientDisconnect:
            # Nothing was saved; the client is gone, so nobody reads this response.
            return Response(status_code=400)
        except anyio.get_cancelled_exc_class():
            # The ASGI server gave up on this request: uvicorn's graceful shutdown cancels the requests still
            # running when its timeout ends. Its own answer was an unmarked plain-text 500, which the client
            # took for a permanent server failure. The store call itself goes on in its worker thread (a
            # thread cannot be stopped; the store is closed after it, see _StoreCache.close), so its outcome
            # is unknown, as after a timeout. The cancellation ends here, with the answer sent: it was only
            # asked so that this request would end.
            logger.warning("%s %s cut short by the server's shutdown", request.method, _loggable_path(request.scope))
            # The task goes on to send the answer: no longer count it as being cancelled (asyncio's record of
            # the request to cancel, which uvicorn made with a plain Task.cancel()).
            _uncancel()
            return _problem_response(
                _error_document(_cut_short(body_pending(), namespace, step_id)), close=True, head=head
            )
        except Exception as exc:
            # Logged with its traceback, but without a secret its text or its causes' may quote (a URL with a
            # password from a library's own configuration, this server's token).
            secrets = () if self._token is None else (self._token.decode("ascii"),)
            logger.error(
                "unexpected error serving %s %s",
                request.method,
                _loggable_path(request.scope),
                exc_info=scrub_exception(exc, secrets),
            )
            doc = problem_document(
                PROBLEM_INTERNAL, status=500, title="Internal server error", detail="the server failed unexpectedly"
            )
            return _problem_response(doc, close=body_pending(), head=head)

    def _segments(self, request: Request) -> list[bytes]:
        scope = request.scope
        raw = scope.get("raw_path")
        if not isinstance(raw, bytes):
            raise _ProblemError(
                500, PROBLEM_INTERNAL, "Internal server error", "the ASGI server does not provide raw_path"
            )
        root = str(scope.get("root_path", "")).encode("ascii", "replace")
        if root and raw.startswith(root):
            raw = raw[len(root) :]
        if self._prefix:
            if not raw.startswith(self._prefix + b"/"):
                raise _ProblemError(404, PROBLEM_NOT_FOUND, "Not found", "no such API path")
            raw = raw[len(self._prefix) :]
        if not raw.startswith(b"/"):
            raise _ProblemError(404, PROBLEM_NOT_FOUND, "Not found", "no such API path")
        return raw[1:].split(b"/")

    @staticmethod
    def _allow(request: Request, *methods: str) -> None:
        if request.method not in methods:
            raise _ProblemError(
                405,
                PROBLEM_METHOD_NOT_ALLOWED,
                "Method not allowed",
                f"{request.method} is not allowed here; allowed: {', '.join(methods)}",
                headers={"Allow": ", ".join(methods)},
            )

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        values = [value for key, value in request.scope["headers"] if key == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, presented = values[0].partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            return False
        # Constant time in the token's content; only its length can leak, and tokens are long random strings.
        return hmac.compare_digest(presented, self._token)

    # -- handlers -------------------------------------------------------------------------------------

    async def _run(self, namespace: str, work: Callable[[], _T], limiter: anyio.CapacityLimiter | None = None) -> _T:
        """``work`` (a store call of ``namespace``) on a worker thread, once the namespace's store is built
        (a thread of ``limiter``'s, else of anyio's default 40)."""
        await self._cache.prepare(namespace)
        return await anyio.to_thread.run_sync(work, limiter=limiter)

    def _uploads(self) -> anyio.CapacityLimiter:
        """The worker threads of streamed saves, apart from every other store call's (see
        :data:`STREAMED_SAVES`); created on the event loop."""
        if self._upload_limiter is None:
            self._upload_limiter = anyio.CapacityLimiter(STREAMED_SAVES)
        return self._upload_limiter

    async def _save(self, request: Request, namespace: str, step_id: str) -> Response:
        overwrite = _bool_param(_query(request), "overwrite")
        declared = self._declared_length(request, step_id)
        # A large body (or one of unknown length) is streamed into a store that streams; the store is built
        # first to know whether it does.
        if (declared is None or declared > STREAM_FROM_BYTES) and await self._cache.prepare(namespace):
            return await self._save_streamed(request, namespace, step_id, overwrite, declared)
        upload = _Upload(request, self._max_request, lambda: self._too_large(None, step_id))
        body = await self._read_rest(upload, bytearray())
        request.state.body_read = True
        await self._run(namespace, lambda: self._save_whole(namespace, step_id, body, overwrite))
        return Response(status_code=204)

    def _save_whole(self, namespace: str, step_id: str, body: bytearray, overwrite: bool) -> None:
        """Verify a whole request body and save it (on a worker thread)."""
        # The payload verified here is not hashed again when the backend encodes the same content, nor is
        # JSON content measured as stored (below) encoded again.
        with self._cache.acquire(namespace) as store, reusing_verified_digests():
            codec = store.codec
            # The client signed the body for the namespace and id of the URL, whatever the store's
            # own namespace is (a custom store factory may map namespaces).
            place = (namespace, step_id)
            view = memoryview(body)
            try:
                # The head's size is known from its prefix, and its header (JSON) is refused over the
                # allowance before it is parsed.
                head_size = codec.head_size(view)
                self._check_head_size(head_size, step_id)
                header = codec.header_of(view, place=place)
                self._check_sizes(header, step_id)
                self._check_json_size(header, step_id)
                # The server's own codec verifies the digest (and the signature, with a signing key).
                # The head is verified once: the payload is what follows it.
                message = codec.decode_payload(header, view[head_size:])
                if header.codec == "json":
                    self._check_stored_json_size(message, header, step_id)
                self._check_stored_head_size(codec, header, head_size, place, message)
            except ConfigurationError as exc:
                # A signed artifact sent to a server without the key: the request is what is wrong.
                raise _ProblemError(422, "ConfigurationError", "ConfigurationError", exc.message) from exc
            store.save(step_id, message, overwrite=overwrite)

    async def _save_streamed(
        self, request: Request, namespace: str, step_id: str, overwrite: bool, declared: int | None
    ) -> Response:
        """Save into a streaming store without holding the body: the head is read and checked as
        :meth:`_save_whole` checks it, then the payload of an uncompressed ``bytes`` artifact goes to
        ``save_stream`` as it arrives, verified on the way (see :class:`_Upload`); any other artifact (JSON and
        text, bounded by their limits and parsed anyway) is received whole and saved as a small body is."""
        upload = _Upload(request, self._max_request, lambda: self._too_large(None, step_id))
        request.state.upload = upload
        buffer = bytearray()
        while len(buffer) < PREFIX_SIZE and (chunk := await upload.pull()) is not None:
            buffer += chunk
        # The same checks, in the same order and with the same errors, as for a whole body.
        head_size = Codec.head_size(memoryview(buffer)[:PREFIX_SIZE])
        self._check_head_size(head_size, step_id)
        while len(buffer) < head_size and (chunk := await upload.pull()) is not None:
            buffer += chunk
        head = bytes(buffer[:head_size])
        rest = buffer[head_size:]

        def work() -> bool:
            """Save the stream; ``False``: the artifact is not one to stream (its head is checked)."""
            with self._cache.acquire(namespace) as store, reusing_verified_digests():
                codec = store.codec
                place = (namespace, step_id)
                try:
                    header = codec.header_of(head, place=place)  # a head cut short: "truncated inside its head"
                    self._check_sizes(header, step_id)
                    self._check_json_size(header, step_id)
                    streamed = store.capabilities.streaming and _streamable(header)
                    if streamed:
                        self._check_stored_head_size(codec, header, head_size, place)
                except ConfigurationError as exc:
                    raise _ProblemError(422, "ConfigurationError", "ConfigurationError", exc.message) from exc
                if not overwrite:
                    # Before the rest of the body is received, whichever way it is saved (outside the try: a
                    # store's ConfigurationError is no fault of the request).
                    _refuse_another_artifact(store, step_id, header)
                if not streamed:
                    return False
                if declared is not None and declared - head_size != header.stored_size:
                    # Known before the payload is read: what the in-memory path finds once it has it all.
                    raise ArtifactCorruptedError(
                        f"stored payload is {declared - head_size} bytes; its header says {header.stored_size}"
                    )
                try:
                    upload.start(header, head_size, rest)
                    # A reader with read() alone (no readinto): each read hands over at most one received chunk.
                    store.save_stream(
                        step_id, cast("IO[bytes]", upload), media_type=header.media_type, schema=header.schema,
                        metadata=header.metadata, created_at=header.created_at, overwrite=overwrite,
                    )  # fmt: skip
                except Exception as exc:
                    # The store reports a failing stream as its own error (wrapped, or as a backend failure): the
                    # answer is the body's own error, the one the in-memory path gives for the same fault.
                    failure = upload.error or (exc if not isinstance(exc, _UploadFailedError) else None)
                    if failure is None or failure is exc:
                        raise
                    raise failure from None
                if upload.error is not None:  # pragma: no cover - a store that swallowed its stream's error
                    raise upload.error
                return True

        if await self._run(namespace, work, self._uploads()):
            return Response(status_code=204)
        # Not streamed: the rest of the body is received and the whole saved, as for a small one.
        body = await self._read_rest(upload, buffer)
        request.state.upload = None
        request.state.body_read = True
        await self._run(namespace, lambda: self._save_whole(namespace, step_id, body, overwrite))
        return Response(status_code=204)

    def _declared_length(self, request: Request, step_id: str) -> int | None:
        """The request's ``Content-Length``; 413 before anything is read when it is over the limit."""
        declared = request.headers.get("content-length")
        if declared is None:
            return None
        try:
            size = int(declared)
        except ValueError:
            raise _ProblemError(400, PROBLEM_BAD_REQUEST, "Bad request", "malformed Content-Length") from None
        if size > self._max_request:
            raise self._too_large(size, step_id)
        return size

    @staticmethod
    async def _read_rest(upload: _Upload, body: bytearray) -> bytearray:
        """``body`` followed by the rest of the request body (413 once it passes the limit)."""
        while (chunk := await upload.pull()) is not None:
            body += chunk
        return body

    def _check_head_size(self, head_size: int, step_id: str) -> None:
        """Refuse a head over its allowance from its prefix, before its header is parsed.

        The header is JSON (the metadata and schema), which costs many times its text once parsed, like JSON
        content: it is bounded by ``MAX_JSON_BYTES`` too (see :func:`~.settings.head_allowance`).
        """
        if head_size > self._max_head:
            raise PayloadTooLargeError(
                f"artifact {step_id!r} has an envelope head of {head_size} bytes (its header, the JSON of its "
                f"metadata and schema, is {head_size - PREFIX_SIZE - TAG_SIZE}); this server accepts a head of at "
                f"most {self._max_head} bytes ({self._head_setting}, up to the format's largest head), because "
                "it parses the header; send large data as content",
                step_id=step_id,
            )

    def _check_sizes(self, header: Header, step_id: str) -> None:
        """Refuse content or a stored payload over the body limit from the verified header, before the
        payload is hashed or decompressed.

        The limit counts the content (and the stored payload, which an honest writer never makes larger),
        not the head: the server re-encodes what it serves with its own codec, so what a client with the
        same limit can read is decided by the content alone (see :func:`~.settings.head_allowance`).
        """
        largest = max(header.size, header.stored_size)
        if largest > self._max_body:
            what = "content" if header.size >= header.stored_size else "stored payload"
            raise PayloadTooLargeError(
                f"artifact {step_id!r} holds {largest} bytes of {what}; this server accepts at most "
                f"{self._max_body} (ARTIFACT_STORE_SERVER_MAX_BODY_BYTES)",
                step_id=step_id,
            )

    def _check_json_size(self, header: Header, step_id: str) -> None:
        """Refuse JSON content over the JSON limit from its verified header, before it is decompressed or parsed.

        The body limit bounds bytes, not the objects they parse into: a few KB of compressed ``[{},{},...]``
        would otherwise become a gigabyte of dicts on this server.
        """
        if header.codec == "json" and header.size > self._max_json:
            raise PayloadTooLargeError(
                f"artifact {step_id!r} holds {header.size} bytes of JSON content; this server parses at most "
                f"{self._max_json} (ARTIFACT_STORE_SERVER_MAX_JSON_BYTES), because a parsed JSON value takes "
                "many times its text in memory; send large data as bytes or text",
                step_id=step_id,
            )

    def _check_stored_json_size(self, message: ArtifactMessage, header: Header, step_id: str) -> None:
        """Refuse JSON content whose stored form is over a limit, though the text sent was within it.

        A store keeps JSON content in its canonical encoding (compact, keys sorted, as ``Codec.encode`` writes
        it), which a writer other than this project's client need not have sent: a float sent as ``1e15`` is
        stored, and served, as ``1000000000000000.0``. Measured from the text sent, such content was saved and
        then refused by this server's own GET (over ``MAX_JSON_BYTES``, from a byte backend) or by a client with
        the server's limits. The stored form is measured only where it can matter (:data:`_MAX_JSON_GROWTH`), so
        a save of JSON content well under the limits encodes nothing more. Called within
        :func:`~artifactstore_core.envelope.reusing_verified_digests`, where the store's encode of this
        message reuses the encoding measured here instead of building it again.
        """
        limit = min(self._max_json, self._max_body)
        if header.size * _MAX_JSON_GROWTH <= limit:
            return
        stored = len(content_bytes(message)[1])
        if stored <= limit:
            return
        setting = (
            "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES"
            if self._max_json <= self._max_body
            else "ARTIFACT_STORE_SERVER_MAX_BODY_BYTES"
        )
        raise PayloadTooLargeError(
            f"artifact {step_id!r} holds JSON content of {header.size} bytes as sent, but {stored} bytes as stored "
            f"(canonical JSON: compact, keys sorted, numbers as Python writes them); this server accepts at most "
            f"{limit} ({setting}), because it parses JSON content to serve it; send it as this project's client "
            "does, or send large data as bytes or text",
            step_id=step_id,
        )

    def _check_stored_head_size(
        self,
        codec: Codec,
        header: Header,
        head_size: int,
        place: tuple[str, str],
        message: ArtifactMessage | None = None,
    ) -> None:
        """Refuse a head whose stored form is over the allowance, though the head sent was within it.

        The store writes the head anew (canonical metadata and schema, its own ``mac`` and compression), and
        this server serves that head: a head sent with metadata written ``1e15`` grows 4.5 times once stored,
        and would be saved and then refused by every client with the server's limits. Measured only where it
        can matter, like JSON content (:data:`_MAX_JSON_GROWTH`); the canonical metadata and schema measured
        here are reused by the store's encode (within ``reusing_verified_digests``), not built again. The message
        (built from ``header``) is needed for JSON and text content only; a streamed ``bytes`` save has none.
        """
        if head_size * _MAX_JSON_GROWTH + _HEAD_GROWTH_SLACK <= self._max_head:
            return
        size = len(content_bytes(message)[1]) if header.codec == "json" and message is not None else header.size
        threshold = codec.compress_threshold
        # The message's fields are the header's (it was built from them).
        fields: dict[str, Any] = {
            "codec": header.codec, "media_type": header.media_type, "schema": header.schema,
            "metadata": header.metadata, "created_at": header.created_at, "size": size, "digest": header.digest,
            "place": place,
        }  # fmt: skip
        # Whether the store compresses the payload changes the head by a few bytes ("zstd" for null, fewer
        # digits of "stored_size"); the head without compression is the smallest it can be, and with it the
        # largest. Only a head within those bytes of the allowance needs the store's very encoding.
        stored = len(codec.encode_head(**fields)[0])
        if header.codec != "bytes" and threshold is not None and size >= threshold:
            largest = len(codec.encode_head(**fields, stored_size=size, compression="zstd")[0])
            if stored <= self._max_head < largest and message is not None:
                stored = len(codec.encode(message, place=place).head)
        if stored <= self._max_head:
            return
        raise PayloadTooLargeError(
            f"artifact {place[1]!r} has an envelope head of {head_size} bytes as sent, but {stored} bytes as "
            f"stored (canonical JSON of its metadata and schema: compact, keys sorted, numbers as Python writes "
            f"them); this server accepts a head of at most {self._max_head} bytes ({self._head_setting}, up to "
            "the format's largest head), because it parses the header to serve it",
            step_id=place[1],
        )

    def _too_large(self, size: int | None, step_id: str) -> PayloadTooLargeError:
        what = f"{size} bytes" if size is not None else "more bytes"
        # Named like every other error of a save, so a log line of a batch says which artifact it was.
        return PayloadTooLargeError(
            f"the request body of artifact {step_id!r} ({what}) exceeds this server's limit of "
            f"{self._max_request} bytes: {self._max_body} bytes of content (ARTIFACT_STORE_SERVER_MAX_BODY_BYTES) "
            f"and an envelope head of at most {self._max_head}",
            step_id=step_id,
        )

    async def _get(self, namespace: str, step_id: str) -> Response:
        if await self._cache.prepare(namespace):
            return await self._get_streamed(namespace, step_id)

        def work() -> tuple[bytes, bytes]:
            # The payload the backend verified is not hashed again to encode it for the client. A byte
            # backend parses JSON content to return a message: content over the JSON limit (written to the
            # backend by anything but this server, which refuses it on save) is refused from its verified
            # header before it is decompressed or parsed, as a save of it would be.
            with (
                self._cache.acquire(namespace) as store,
                reusing_verified_digests(),
                limiting_json_content(self._max_json, setting="ARTIFACT_STORE_SERVER_MAX_JSON_BYTES"),
            ):
                # Signed for the URL's namespace and id: what the client verifies it against.
                encoded = store.codec.encode(store.get(step_id), place=(namespace, step_id))
                return encoded.head, encoded.payload

        return _whole_envelope(*await self._run(namespace, work))

    async def _get_streamed(self, namespace: str, step_id: str) -> Response:
        """``GET`` from a streaming store, which is opened once: an uncompressed ``bytes`` artifact is sent as it
        is read (:class:`_StreamedEnvelope`), under a head the server's codec signs for the URL's place from the
        verified header; any other (JSON and text, which the server decodes anyway) is read whole from the same
        stream and encoded as from :meth:`~artifactstore_core.ArtifactStore.get`."""
        lease = _Lease()
        place = (namespace, step_id)

        def work() -> tuple[bytes, int, bytes | None]:
            """The head, the payload's size, and the payload itself unless it is to be streamed (then the lease
            holds the stream and the store's use)."""
            store, release = self._cache.lend(namespace)
            kept = False
            try:
                with (
                    reusing_verified_digests(),
                    limiting_json_content(self._max_json, setting="ARTIFACT_STORE_SERVER_MAX_JSON_BYTES"),
                ):
                    header, stream = store.open_with_header(step_id)
                    try:
                        if _streamable(header):
                            head, _ = store.codec.encode_head(
                                codec="bytes", media_type=header.media_type, schema=header.schema,
                                metadata=header.metadata, created_at=header.created_at, size=header.size,
                                digest=header.digest, place=place,
                            )  # fmt: skip
                            kept = True
                            lease.keep(stream, release)
                            return head, header.size, None
                        encoded = self._encode_read(store, header, stream, place)
                    finally:
                        if not kept:
                            _close_stream(stream)
                    return encoded.head, len(encoded.payload), encoded.payload
            finally:
                if not kept:
                    release()

        try:
            head, size, payload = await self._run(namespace, work)
        except BaseException:
            # Cancelled (the server's shutdown) after the worker handed the stream over: nobody will send it.
            lease.end()
            raise
        if payload is not None:
            return _whole_envelope(head, payload)
        return _StreamedEnvelope(head, size, lease, place)

    def _encode_read(self, store: ArtifactStore, header: Header, stream: IO[bytes], place: tuple[str, str]) -> Encoded:
        """The server's encoding of a JSON or text artifact (or compressed content) read whole from ``stream``.

        The stream yields the content uncompressed and verified (``header`` describes it so but for its stored
        form); the codec decodes it as from an uncompressed payload, within the caller's JSON limit. JSON over
        that limit, and content that fails to decode, is read again with ``get``, whose error (the store's,
        naming the artifact) is the answer, as before.
        """
        if header.codec != "json" or header.size <= self._max_json:
            raw = stream.read()
            plain = header._replace(compression=None, stored_size=header.size)
            try:
                message = store.codec.decode_payload(plain, raw)
            except ArtifactStoreError:
                pass
            else:
                return store.codec.encode(message, place=place)
        return store.codec.encode(store.get(place[1]), place=place)

    async def _info(self, namespace: str, step_id: str) -> Response:
        """The artifact's info as JSON, the very item a list page holds for it, from its store's ``info()``.

        Every first-party backend reads the head alone for it (a backend without its own ``_info`` searches
        its listing), so an info costs the server no read of the payload, where the envelope's ``GET`` reads,
        verifies and encodes the whole artifact before it sends a byte. The head is verified by the store's
        codec (its signature too, with a signing key), and a header over the JSON limit (written to the
        backend by anything but this server, which refuses it on save) is refused before it is parsed, as
        for a ``GET``.
        """

        def work() -> ArtifactInfo:
            with (
                self._cache.acquire(namespace) as store,
                limiting_json_content(self._max_json, setting="ARTIFACT_STORE_SERVER_MAX_JSON_BYTES"),
            ):
                return store.info(step_id)

        body = _JSON.encode(_info_json(await self._run(namespace, work))).encode("utf-8")
        if len(body) > self._max_json:
            # Only for a header close to the limit that is mostly a media type or schema name (the answer holds
            # those, the id and a few short fields): a client with the same limit could not read it.
            raise PayloadTooLargeError(
                f"the info of artifact {step_id!r} is {len(body)} bytes of JSON; this server answers at most "
                f"{self._max_json} (ARTIFACT_STORE_SERVER_MAX_JSON_BYTES)",
                step_id=step_id,
            )
        return Response(body, media_type="application/json")

    async def _exists(self, namespace: str, step_id: str) -> Response:
        def work() -> bool:
            with self._cache.acquire(namespace) as store:
                return store.exists(step_id)

        # The answer to HEAD is the GET's status and header fields, but for the length of the body (RFC 9110: a
        # Content-Length, if sent, must be that of the GET's body). That length is not known without reading
        # the artifact and encoding it, which a GET does and exists() must not: the GET serves the artifact
        # re-encoded by the server's codec, whose head holds the metadata (not in the info) and whose payload
        # may be compressed anew. Starlette's "Content-Length: 0" claimed an empty artifact to any proxy or
        # cache; without one the length is unknown (h11 marks the answer "Transfer-Encoding: chunked").
        if await self._run(namespace, work):
            return _without_length(Response(status_code=200, media_type=MEDIA_TYPE_ENVELOPE))
        return _without_length(
            Response(status_code=404, media_type=MEDIA_TYPE_PROBLEM, headers={ERROR_HEADER: "ArtifactNotFoundError"})
        )

    async def _delete(self, namespace: str, step_id: str) -> Response:
        def work() -> bool:
            with self._cache.acquire(namespace) as store:
                return store.delete(step_id)

        return JSONResponse({"deleted": await self._run(namespace, work)})

    async def _clear(self, namespace: str) -> Response:
        def work() -> int:
            with self._cache.acquire(namespace) as store:
                return store.clear()

        return JSONResponse({"removed": await self._run(namespace, work)})

    async def _list(self, request: Request, namespace: str) -> Response:
        query = _query(request)
        limit = _int_param(query, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        after: str | None = None
        if "cursor" in query:
            try:
                after = decode_cursor(query["cursor"])
            except ValueError:
                raise _ProblemError(
                    400,
                    PROBLEM_BAD_REQUEST,
                    "Bad request",
                    "query parameter 'cursor' is malformed: pass the next_cursor of the previous page unchanged",
                ) from None

        def work() -> list[ArtifactInfo]:
            with self._cache.acquire(namespace) as store:
                # Pages are slices of the id order, so a page boundary is a step id: no artifact present
                # throughout a listing is skipped or repeated, without any state kept on the server. The store
                # picks the page (a backend that can list its ids cheaply reads the infos of this page only;
                # any other holds limit + 1 infos at a time, never the whole namespace); one more than the
                # page says whether another follows.
                return store.list_page(after=after, limit=limit + 1)

        infos = await self._run(namespace, work)
        return Response(_page_body(infos, limit, self._max_json), media_type="application/json")


def _loggable_path(scope: Scope) -> str:
    # The raw (still percent-encoded) path and never the query string, where a misplaced token would be.
    raw = scope.get("raw_path")
    return raw.decode("ascii", "replace") if isinstance(raw, bytes) else "?"


_MARKER = (PROTOCOL_HEADER.lower().encode("ascii"), PROTOCOL_VERSION.encode("ascii"))
# As Starlette writes _problem_response's header (names lowercased); uvicorn closes the connection after such an
# answer.
_CLOSE = (b"connection", b"close")


class _RequestBody:
    """A request's ``receive``, noting whether the request body has ended, and the lingering read of its rest
    (:meth:`linger`) before the connection of an early answer closes (see :data:`LINGER_BYTES`)."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._receive = receive
        self._ended = False  # the body's end, or the client's disconnect, was received
        self._asked = False  # receive() was called
        # A client that sent "Expect: 100-continue" sends its body only once told to (uvicorn sends the "100
        # Continue" at the application's first receive()): answered before that, it has nothing in flight.
        self._expects = any(
            name == b"expect" and value.lower() == b"100-continue" for name, value in scope.get("headers") or ()
        )

    async def receive(self) -> Message:
        self._asked = True
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._ended = True
        return message

    @property
    def pending(self) -> bool:
        """Whether the client may still be sending the request body."""
        return not self._ended and not (self._expects and not self._asked)

    async def linger(self) -> None:
        """Receive and drop the rest of the request body, within :data:`LINGER_BYTES`, :data:`LINGER_IDLE_SECONDS`
        and :data:`LINGER_SECONDS`; called once an early answer is sent whole, before it is ended (the ASGI server
        closes the connection then). Memory stays at one received chunk. Raises nothing; the server's shutdown
        cancelling the request ends it."""
        left = LINGER_BYTES
        try:
            with anyio.move_on_after(LINGER_SECONDS):
                while left > 0 and not self._ended:
                    with anyio.move_on_after(LINGER_IDLE_SECONDS) as idle:
                        message = await self.receive()
                    if idle.cancelled_caught:
                        return
                    left -= len(message.get("body", b""))
        except anyio.get_cancelled_exc_class():
            # uvicorn's graceful shutdown ran out: the answer is whole already, and is ended (the task goes on to
            # end it, no longer counted as being cancelled, as _App.endpoint does).
            _uncancel()


class _Guard:
    """Outermost middleware: header count and size limits, an access log without query strings, the protocol
    marker on every response (see :data:`~artifactstore_http.protocol.PROTOCOL_HEADER`), and the lingering read
    of a request body that an answer closing the connection came before (see :data:`LINGER_BYTES`).

    The marker is added here rather than by each handler so that no answer can miss it: successes, problem
    answers, ``HEAD`` and ``204`` answers, and this middleware's own 431. The linger likewise follows every answer
    that closes the connection before the body ended, whichever handler gave it.
    """

    def __init__(self, app: ASGIApp, *, max_header_count: int, max_header_bytes: int) -> None:
        self._app = app
        self._max_count = max_header_count
        self._max_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 0
        closing = False  # the answer ends the connection
        body = _RequestBody(scope, receive)

        async def send_marked(message: Message) -> None:
            nonlocal status, closing
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [*message.get("headers", ()), _MARKER]
                closing = _CLOSE in headers
                message = {**message, "headers": headers}
            elif (
                closing
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and body.pending
            ):
                # An answer before the body was received: sent whole (the client reads it by its Content-Length)
                # but not yet ended, which would close the connection; the rest of the body is read first, within
                # bounds, so that the close is no reset (see LINGER_BYTES).
                await send({**message, "more_body": True})
                await body.linger()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        headers = scope.get("headers") or []
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(key) + len(value) + 4 for key, value in headers)
        if len(headers) > self._max_count or size > self._max_bytes:
            doc = problem_document(
                PROBLEM_BAD_REQUEST,
                status=431,
                title="Request header fields too large",
                detail=f"at most {self._max_count} headers and {self._max_bytes} bytes of request line and headers",
            )
            await _problem_response(doc, close=True, head=scope.get("method") == "HEAD")(
                scope, body.receive, send_marked
            )
            logger.info("%s %s 431", scope.get("method"), _loggable_path(scope))
            return
        try:
            await self._app(scope, body.receive, send_marked)
        finally:
            logger.info("%s %s %s", scope.get("method"), _loggable_path(scope), status or "-")


def create_app(
    store_factory: StoreFactory | None = None,
    *,
    token: SecretStr | None,
    insecure: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_header_count: int = 100,
    max_header_bytes: int = 16 * 1024,
    store_cache_size: int = 128,
    path_prefix: str = "",
) -> Starlette:
    """Build the ASGI application that serves stores over the REST API.

    Args:
        store_factory: returns the store of a namespace; called once per namespace (the stores are cached,
            the least recently used beyond ``store_cache_size`` closed, and all closed at shutdown).
            Default: :func:`default_store_factory` (the configured backend).
        token: the bearer token every API request must carry (compared in constant time).
        insecure: serve without authentication; only allowed, and only effective, when ``token`` is ``None``.
        max_body_bytes: largest artifact content (after decompression) and stored payload a save may carry;
            the request body may carry the envelope's head on top (see
            :func:`~artifactstore_http.settings.head_allowance`). A body over both together gets 413 unread,
            larger content 413 once its verified header is read.
        max_json_bytes: largest JSON content (its decoded text) of a save; larger gets 413 before the
            payload is decompressed or parsed (a parsed JSON value takes many times its text in memory).
        max_header_count, max_header_bytes: request header limits; beyond them gets 431.
        path_prefix: a prefix such as ``/artifactstore`` that every API path carries, for a reverse proxy
            that passes the request path through unchanged (and so undecoded).

    Raises:
        ConfigurationError: no token and not ``insecure``, a token shorter than 16 characters, or a
            path prefix that does not start with ``/`` or holds a character a request path holds only
            percent-encoded (a space, ``#``, ``\\``, non-ASCII, ...; trailing ``/`` are dropped).
        BackendNotFoundError, PluginLoadError: without ``store_factory``, the configured backend is not
            installed or fails to load (see :func:`default_store_factory`).
    """
    path_prefix = path_prefix.rstrip("/")
    if path_prefix and (not path_prefix.startswith("/") or not path_prefix.isascii() or "?" in path_prefix):
        raise ConfigurationError("ARTIFACT_STORE_SERVER_PATH_PREFIX must be an ASCII path starting with /")
    if path_prefix and not _PREFIX.fullmatch(path_prefix):
        # Matched against the raw request path, which holds such a character percent-encoded: a prefix holding
        # it as is would match no request at all.
        raise ConfigurationError(
            "ARTIFACT_STORE_SERVER_PATH_PREFIX must be written as it appears in a request path: letters, digits, "
            "/ and -._~!$&'()*+,;=:@, anything else percent-encoded (e.g. %20 for a space)"
        )
    if token is None and not insecure:
        raise ConfigurationError(
            "the artifact server needs a token: set ARTIFACT_STORE_SERVER_TOKEN, or pass insecure=True "
            "(--insecure) to serve without authentication"
        )
    if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(f"ARTIFACT_STORE_SERVER_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
    try:
        if token is not None:
            token.get_secret_value().encode("ascii")
    except UnicodeEncodeError:
        raise ConfigurationError("ARTIFACT_STORE_SERVER_TOKEN must be ASCII") from None
    cache = _StoreCache(store_factory or default_store_factory(), store_cache_size)
    _quiet_uvicorn()
    handlers = _App(
        cache, token=token, max_body_bytes=max_body_bytes, max_json_bytes=max_json_bytes, path_prefix=path_prefix
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(cache.close)

    app = Starlette(lifespan=lifespan)
    # Every request goes to the handlers, which route on the raw path themselves: a Starlette route pattern
    # matches the decoded path, where "%2F" is already "/" and "%0A" is a newline its regex refuses.
    app.router.default = handlers
    app.add_middleware(_Guard, max_header_count=max_header_count, max_header_bytes=max_header_bytes)
    app.state.store_cache = cache
    return app
