"""The :class:`ArtifactStore` base class: the contract every backend implements.

Public methods validate their arguments (before any I/O), check the store is open, call one small
``_underscore`` method that the backend implements, and turn any exception that is not already an
:class:`~artifactstore_core.errors.ArtifactStoreError` into one, chaining the original. Backends supply the
``_underscore`` methods, their ``capabilities`` and, optionally, :meth:`ArtifactStore._translate_error`.
"""

from __future__ import annotations

import builtins
import contextvars
import decimal
import heapq
import io
import math
import numbers
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from types import TracebackType
from typing import IO, Any, ClassVar, Generic, NoReturn, ParamSpec, Self, TypeVar, cast

from .envelope import Codec, Header, content_digest, content_stream, reusing_verified_digests
from .errors import (
    ArtifactExistsError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    CapacityError,
    ConfigurationError,
    InvalidStepIdError,
    PayloadTooLargeError,
    SerializationError,
    StoreClosedError,
    UnsupportedOperationError,
    _scrub_links,
    raise_chained,
    scrub_exception,
)
from .ids import validate_namespace, validate_step_id
from .message import MEDIA_TYPE_BYTES, Message, SchemaInfo
from .models import ArtifactInfo, Capabilities

__all__ = ["MAX_TTL", "ArtifactStore", "ContextThreadPoolExecutor", "Ttl", "checked_read", "smallest_after"]

#: A time to live: seconds (int or float) or a :class:`~datetime.timedelta`.
Ttl = float | int | timedelta
#: The longest time to live, in seconds: 100 years. Longer is refused with ``ValueError`` before any I/O
#: (save without ``ttl`` to keep an artifact for good): a backend computes an expiry time from it, and an
#: absurd one (``inf``, 10**15 s) overflows the server's arithmetic halfway through a write.
MAX_TTL = 100 * 36525 * 864
# save_stream on a backend without streaming reads the stream in chunks of this size (see save_stream).
_FALLBACK_CHUNK = 8 * 1024 * 1024


_T = TypeVar("_T")
_H = TypeVar("_H")
_P = ParamSpec("_P")


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A :class:`~concurrent.futures.ThreadPoolExecutor` whose every task runs in a copy of the context of
    the thread (or asyncio task) that submitted it, as a call made there would.

    A pool's worker threads otherwise run in a context of their own, where the context variables the caller
    set do not hold: :func:`~artifactstore_core.envelope.limiting_json_content` (the artifact server sets it
    around every read it answers) and :func:`~artifactstore_core.envelope.reusing_verified_digests` (around
    every save). A backend that decodes or encodes on threads of its own (``_get_many``, ``_save_many``, a
    multipart upload) would then parse JSON its caller had bounded, or hash payloads again. Use this class
    wherever a backend would use ``ThreadPoolExecutor``: it takes the same arguments, and ``submit``,
    ``map`` and ``loop.run_in_executor`` (which call ``submit`` in the caller's thread) all carry the
    context. The first-party filesystem, s3 and http backends use it for every pool they start.

    The copy is taken when the task is submitted, one per task (a context cannot be entered by two threads
    at once), so a variable the task sets stays in its copy and a variable the caller sets after submitting
    does not reach it. Costs one :func:`contextvars.copy_context` per task, which copies no data.

    Raises what :meth:`ThreadPoolExecutor.submit <concurrent.futures.Executor.submit>` raises
    (``RuntimeError`` after ``shutdown``); a task's own exception is raised by its future's ``result()``.
    """

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)`` to run in a copy of the calling thread's current context.

        Raises:
            RuntimeError: the executor was shut down (or the interpreter is exiting).
        """
        run: Callable[..., _T] = contextvars.copy_context().run  # taken here, in the submitting thread
        return super().submit(run, fn, *args, **kwargs)


class _Largest(Generic[_H]):
    """A heap entry that sorts in reverse step id order, so that :mod:`heapq`'s min-heap keeps the largest of
    the chosen ids on top, the one a smaller id replaces."""

    __slots__ = ("handle", "step_id")

    def __init__(self, step_id: str, handle: _H) -> None:
        self.step_id = step_id
        self.handle = handle

    def __lt__(self, other: _Largest[_H]) -> bool:
        return self.step_id > other.step_id


def smallest_after(pairs: Iterable[tuple[str, _H]], after: str | None, count: int) -> builtins.list[tuple[str, _H]]:
    """The ``count`` pairs with the smallest distinct step ids greater than ``after`` (all ids when ``None``),
    in step id order, from ``(step_id, handle)`` pairs in any order, in one pass holding at most ``count``.

    A step id that comes twice (a Redis ``SCAN`` may return a member twice) is chosen once, with the handle
    it came with first. For backends' ``_list_page`` (see
    :meth:`~artifactstore_core.ArtifactStore.list_page`): pick the ids of a page from a cheap listing of
    names, then read the infos of those ids only.

    A ``count`` of 0 or less chooses nothing (``pairs`` is not read). Raises nothing of its own: what
    iterating ``pairs`` raises propagates.
    """
    if count < 1:
        return []  # an empty heap has no top to compare with
    heap: builtins.list[_Largest[_H]] = []
    held: set[str] = set()  # the ids in the heap, so that a repeated id is not chosen twice
    for step_id, handle in pairs:
        if (after is not None and step_id <= after) or step_id in held:
            continue
        if len(heap) < count:
            heapq.heappush(heap, _Largest(step_id, handle))
            held.add(step_id)
        elif step_id < heap[0].step_id:
            # An id pushed out is larger than every id kept from now on, so a repeat of it is refused above.
            held.discard(heapq.heapreplace(heap, _Largest(step_id, handle)).step_id)
            held.add(step_id)
    return [(entry.step_id, entry.handle) for entry in sorted(heap, reverse=True)]


def checked_read(result: _T | None) -> _T:
    """What one ``read()`` or ``readinto()`` of a stream handed to ``save_stream`` returned, refusing ``None``
    and ``str``.

    A non-blocking stream returns ``None`` when nothing is ready yet; taking that for the end (as
    ``stream.read(n) or b""`` or ``while chunk := stream.read(n)`` would) stores the artifact cut short.
    A text stream returns ``str``, which would otherwise fail deep inside a backend as a ``TypeError`` that
    the backend's translation reports as a backend failure. Every path of ``save_stream`` (the core's for
    backends that do not stream, and each streaming backend's ``_save_stream``) passes each read through
    this, so all refuse such streams the same way.

    Raises:
        SerializationError: ``result`` is ``None`` or a ``str``.
    """
    if result is None:
        raise SerializationError("save_stream needs a blocking stream; read() returned None")
    if isinstance(result, str):
        raise SerializationError(
            "save_stream needs a binary stream (a file opened with 'rb', io.BytesIO); read() returned str"
        )
    return result


def _ttl_seconds(ttl: object) -> float | None:
    """``ttl`` in seconds, checked (see :meth:`ArtifactStore.save`). Typed ``object``: a caller's ``ttl`` is
    whatever was passed, and what is not a :data:`Ttl` is refused here.

    Raises:
        TypeError: ``ttl`` is neither a number of seconds nor a :class:`~datetime.timedelta`: a ``bool``
            (``True`` would be one second) or a ``str`` (``"60"`` would be parsed) is a mistake.
        ValueError: ``ttl`` is not positive or is longer than :data:`MAX_TTL`.
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float, numbers.Real, decimal.Decimal, timedelta)):
        raise TypeError(f"ttl must be a number of seconds or a timedelta, not {type(ttl).__name__}")
    shown: str | None = None  # repr(ttl) unless set here
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int) and not -MAX_TTL <= ttl <= MAX_TTL:
        # Out of range whatever else: float() of an int past 1e308 raises OverflowError, and repr() of one
        # past 4,300 digits ValueError, so it is neither converted nor quoted whole.
        seconds = math.inf if ttl > 0 else -math.inf
        shown = f"{'a negative' if ttl < 0 else 'an'} int of {ttl.bit_length()} bits"
    else:
        seconds = float(ttl)
    if not seconds > 0:
        raise ValueError(f"ttl must be positive, got {shown or repr(ttl)}")
    if not seconds <= MAX_TTL:  # also refuses inf
        raise ValueError(
            f"ttl must be at most {MAX_TTL} seconds (100 years), got {shown or repr(ttl)}; save without ttl to keep it"
        )
    return seconds


def _name_the_artifact(exc: ArtifactStoreError, operation: str) -> None:
    """Put the operation, step id, namespace and backend in the message of ``exc``, unless it names the id
    already (see :meth:`ArtifactStore._in_context`)."""
    message = exc.message
    if exc.step_id is not None and repr(exc.step_id) in message:
        return
    target = f"artifact {exc.step_id!r} in namespace" if exc.step_id is not None else "namespace"
    exc.args = (f"{operation}: {target} {exc.namespace!r} of backend {exc.backend!r}: {message}",)


def _read_source(stream: IO[bytes], step_id: str, size: int = _FALLBACK_CHUNK) -> bytes | None:
    """One read of at most ``size`` bytes of the caller's stream for :meth:`ArtifactStore.save_stream` on a
    backend that does not stream.

    Raises:
        SerializationError: the stream's ``read()`` raised (chained): the source failed, not the backend,
            so its error (an ``OSError``, a ``ConnectionError`` of a download) must not pass through the
            backend's translation, which would report the backend unavailable and the call retryable.
    """
    try:
        return stream.read(size)
    except Exception as exc:
        raise SerializationError(
            f"reading the stream to save as {step_id!r} failed: {type(exc).__name__}: {exc}", step_id=step_id
        ) from exc


def _pair(item: object) -> tuple[Any, Any]:
    """One item of ``save_many`` as its ``(step_id, message)``. Unpacked as it came, a list of messages failed
    with ValueError "too many values to unpack" (a Message iterates over its fields) and an id alone with
    "not enough values", neither of which said what save_many takes."""
    if isinstance(item, Message):
        raise TypeError(
            "save_many takes (step_id, Message) pairs or a mapping of step id to Message, got a Message "
            "without its step id; pass [(step_id, message), ...] or {step_id: message}"
        )
    try:
        step_id, message = cast("Iterable[Any]", item)
    except (TypeError, ValueError):
        raise TypeError(
            f"save_many takes (step_id, Message) pairs or a mapping of step id to Message, got an item of "
            f"type {type(item).__name__} that is not one; pass [(step_id, message), ...] or {{step_id: message}}"
        ) from None
    return step_id, message


def _check_message(message: object) -> Message:
    if not isinstance(message, Message):
        raise TypeError(f"expected a Message, got {type(message).__name__}; wrap it as Message(content=...)")
    return message


class ArtifactStore(ABC):
    """A namespace of artifacts on one backend. Thread-safe; a context manager that closes on exit.

    Args:
        namespace: the namespace this store reads and writes (for a pipeline, its execution id).
        codec: the envelope codec (signing key, compression) byte-storing backends use.

    Raises:
        InvalidStepIdError: if ``namespace`` is not a legal namespace.
    """

    #: The backend's registered name.
    backend_name: ClassVar[str] = "unknown"
    #: What this backend offers.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, *, namespace: str = "default", codec: Codec | None = None) -> None:
        self._namespace = validate_namespace(namespace)
        self._codec = codec if codec is not None else Codec()
        self._closed = False
        self._close_lock = threading.Lock()

    # -- properties -----------------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        """The namespace this store is bound to."""
        return self._namespace

    @property
    def codec(self) -> Codec:
        """The envelope codec this store encodes and verifies with."""
        return self._codec

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend_name!r} namespace={self._namespace!r}>"

    def __getstate__(self) -> NoReturn:
        """Refuse to be pickled (or deep-copied), saying how a worker process gets a store.

        A store holds its clients, pools and locks, none of which can be sent to another process; without
        this, passing a store to a spawned process or a process pool failed with pickle's "cannot pickle
        '_thread.lock' object", which did not say what to do instead. (Refused here rather than in
        ``__reduce__``, so that a backend's store that can be pickled, reconnecting when it is loaded, may
        say so with a ``__getstate__`` and ``__setstate__`` of its own.)

        Raises:
            TypeError: always.
        """
        raise TypeError(
            f"{type(self).__name__} (backend {self.backend_name!r}, namespace {self._namespace!r}) cannot be "
            "pickled (nor deep-copied): it holds open clients and locks. A worker process makes its own store "
            "with create_store(...), the same backend, settings and namespace (a forked child may use the "
            "parent's); the pipeline runtime does this from a StoreConfig"
        )

    def __copy__(self) -> Self:
        # copy.copy goes through __getstate__, which refuses; it keeps giving what it gave before: a shallow
        # copy, sharing this store's clients (the attributes of a subclass's __slots__ included).
        cls = type(self)
        clone = object.__new__(cls)
        clone.__dict__.update(self.__dict__)
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name.startswith("__") and not name.endswith("__"):
                    name = f"_{klass.__name__.lstrip('_')}{name}"  # a private name, as Python mangles it
                if name not in ("__dict__", "__weakref__") and hasattr(self, name):
                    object.__setattr__(clone, name, getattr(self, name))
        return clone

    # -- public API -----------------------------------------------------------------------------------

    def save(self, step_id: str, message: Message, *, overwrite: bool = False, ttl: Ttl | None = None) -> None:
        """Store ``message`` as the output of ``step_id``.

        Write-once: saving a message equal to the stored one (same content, schema, metadata and media
        type; ``created_at`` is ignored) succeeds and keeps the stored artifact, so retries are safe.

        Args:
            overwrite: replace an existing, different artifact atomically instead of raising.
            ttl: expire the artifact after this long (backends with ``capabilities.native_ttl`` only); an
                expired artifact is gone from every read (``get``, ``get_many``, ``exists``, ``info``,
                ``open``, ``list``, ``list_page``). ``None``: it never expires, also when it overwrites one
                that would have (the replaced artifact's expiry goes with it).

        Raises:
            InvalidStepIdError: ``step_id`` is not a legal id (before any I/O).
            TypeError: ``message`` is not a :class:`Message`.
            ArtifactExistsError: a different artifact is stored under ``step_id`` and not ``overwrite``.
            UnsupportedOperationError: ``ttl`` was given and the backend has no native TTL.
            ValueError: ``ttl`` is not positive or is longer than ``artifactstore_core.store.MAX_TTL`` (100 years;
                before any I/O).
            TypeError: ``ttl`` is neither a number of seconds nor a ``timedelta`` (a ``bool`` or ``str`` included;
                before any I/O).
            CapacityError, PayloadTooLargeError: the store is full or the artifact too large.
            SerializationError: the message cannot be encoded.
            BackendError: the backend failed (see its subclasses).
            StoreClosedError: the store was closed.
        """
        step_id = self._valid_id(step_id)
        message = _check_message(message)
        seconds = None if ttl is None else self._ttl(ttl, "save", step_id)
        if self._closed:
            self._check_open()
        try:
            self._save(step_id, message, overwrite, seconds)
        except Exception as exc:
            self._raise(exc, "save", step_id)

    def get(self, step_id: str) -> Message:
        """Return the message stored for ``step_id``, verified and equal to what was saved.

        Raises:
            InvalidStepIdError: ``step_id`` is not a legal id (before any I/O).
            ArtifactNotFoundError: nothing is stored under ``step_id`` (or it expired).
            ArtifactCorruptedError, UnsupportedFormatError: the stored bytes fail verification.
            BackendError: the backend failed. StoreClosedError: the store was closed.
        """
        step_id = self._valid_id(step_id)
        if self._closed:
            self._check_open()
        try:
            return self._get(step_id)
        except Exception as exc:
            self._raise(exc, "get", step_id)

    def exists(self, step_id: str) -> bool:
        """Whether an artifact is stored under ``step_id``.

        Never turns a failure into ``False``.

        Raises:
            InvalidStepIdError: ``step_id`` is not a legal id.
            BackendError: the backend failed.
            StoreClosedError: the store was closed.
        """
        step_id = self._valid_id(step_id)
        self._check_open()
        try:
            return self._exists(step_id)
        except Exception as exc:
            self._raise(exc, "exists", step_id)

    def delete(self, step_id: str) -> bool:
        """Remove the artifact stored under ``step_id``. Returns whether there was one to remove.

        Raises:
            InvalidStepIdError: ``step_id`` is not a legal id.
            BackendError: the backend failed.
            StoreClosedError: the store was closed.
        """
        step_id = self._valid_id(step_id)
        self._check_open()
        try:
            return self._delete(step_id)
        except Exception as exc:
            self._raise(exc, "delete", step_id)

    def list(self) -> Iterator[ArtifactInfo]:
        """Iterate over the artifacts of this namespace (order unspecified), without reading payloads.

        The iteration is not a snapshot: an artifact saved or deleted while it runs may or may not be
        yielded (backends read a listing in batches, and a deleted artifact's batch may have been read
        already); :meth:`exists` or :meth:`get` tell what holds now.

        Raises:
            BackendError: the backend failed (possibly part-way through the iteration).
            StoreClosedError: the store was closed, before the iteration or during it: no artifact is yielded
                after :meth:`close`.
        """
        self._check_open()
        try:
            for info in self._list():
                # Checked at every item, not only where the backend asks its server for more: what a backend
                # holds already (a batch read before close(), memory, a directory being read) would otherwise
                # go on being yielded, and a listing would stop after close() on some backends and namespace
                # sizes and not on others.
                if self._closed:
                    self._check_open()
                yield info
        except Exception as exc:
            self._raise(exc, "list", None)

    def list_page(self, *, after: str | None = None, limit: int = 1000) -> builtins.list[ArtifactInfo]:
        """One page of a listing in step id order: the (at most) ``limit`` artifacts with the smallest step
        ids greater than ``after``, sorted by step id.

        The order is Python's ``str`` order (code points, which is also the order of the ids' UTF-8 bytes),
        whatever order the backend keeps its names in. Pass the last step id of a page as ``after`` to get
        the next one; a page shorter than ``limit`` is the last. ``after`` need not be a stored id. An
        artifact present for the whole of a paged listing is listed exactly once; one saved or deleted
        meanwhile may or may not be.

        Backends that can find the ids of a page without reading every artifact's info (Redis, S3, the
        file system: from their list of names) read the infos of that page only; others pick the page out
        of :meth:`list` holding ``limit`` infos at a time (see "Listing in pages" in the guide to writing
        a backend).

        Raises:
            InvalidStepIdError: ``after`` is not a legal step id (before any I/O).
            ValueError: ``limit`` is not a positive int (before any I/O).
            BackendError: the backend failed.
            StoreClosedError: the store was closed.
        """
        if after is not None:
            after = self._valid_id(after)
        if type(limit) is not int or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        self._check_open()
        try:
            return builtins.list(self._list_page(after, limit))
        except Exception as exc:
            self._raise(exc, "list", None)

    def info(self, step_id: str) -> ArtifactInfo:
        """The :class:`ArtifactInfo` of one artifact, without reading its payload where the backend can.

        Raises:
            InvalidStepIdError: ``step_id`` is not a legal id.
            ArtifactNotFoundError: it is not stored.
            BackendError: the backend failed.
            StoreClosedError: the store was closed.
        """
        step_id = self._valid_id(step_id)
        self._check_open()
        try:
            return self._info(step_id)
        except Exception as exc:
            self._raise(exc, "info", step_id)

    def namespaces(self) -> builtins.list[str]:
        """The namespaces that hold artifacts on this backend (with ``capabilities.list_namespaces``).

        Used to find namespaces left behind by crashed runs.

        Raises:
            UnsupportedOperationError: the backend cannot enumerate namespaces.
            BackendError: the backend failed. StoreClosedError: the store was closed.
        """
        if not self.capabilities.list_namespaces:
            raise UnsupportedOperationError(
                f"backend {self.backend_name!r} cannot list namespaces", backend=self.backend_name
            )
        self._check_open()
        try:
            return sorted(self._namespaces())
        except Exception as exc:
            self._raise(exc, "namespaces", None)

    def clear(self) -> int:
        """Remove every artifact of this namespace, and nothing outside it. Returns how many were removed.

        Raises:
            BackendError: the backend failed (some artifacts may have been removed).
            StoreClosedError: the store was closed.
        """
        self._check_open()
        try:
            return self._clear()
        except Exception as exc:
            self._raise(exc, "clear", None)

    def nothing_found_note(self) -> str | None:
        """Why this store may find nothing for a reason other than an empty store, or ``None`` when there is
        nothing to say (the default): a configuration pointing at storage that does not exist, which a typo
        in a setting looks like (the filesystem store's root that does not exist).

        The not-found errors (``_not_found``, ``_missing_many``) add it to their message, and the
        command line shows it as a warning beside an answer that found nothing (an empty ``ls``, ``clear`` of
        nothing, ``gc`` without namespaces), which would otherwise look like an empty store. Asked on those
        paths only, so it may cost a call to the backend (the filesystem store's is a stat). The artifact
        server sends the errors it is in to remote clients: it names a setting, never a secret or a local
        path. Not for a backend that is down (its operations raise for that).

        Raises nothing: an error here would take the place of the answer it is a note to.
        """
        return None

    def save_many(
        self,
        items: Mapping[str, Message] | Iterable[tuple[str, Message]],
        *,
        overwrite: bool = False,
        ttl: Ttl | None = None,
    ) -> None:
        """Save several artifacts, batched where the backend can (Redis pipelines, S3 in parallel).

        Every id and message is validated before any I/O. Each artifact is saved atomically, the batch is
        not: if one fails, the error is raised and the others may or may not have been saved.

        Raises:
            InvalidStepIdError: an id is not legal, or appears twice (before any I/O).
            TypeError: an item is not a :class:`Message`, or ``items`` is neither a mapping nor an iterable of
                ``(step_id, message)`` pairs (a ``str``, a list of messages without their ids, ...).
            ArtifactExistsError, CapacityError, SerializationError, BackendError, StoreClosedError,
                UnsupportedOperationError, ValueError: as :meth:`save`.
        """
        if isinstance(items, (str, bytes, Message)):
            raise TypeError(
                f"save_many takes (step_id, Message) pairs or a mapping of step id to Message, not a "
                f"{type(items).__name__}; use save(step_id, message) for one artifact"
            )
        given = builtins.list(items.items() if isinstance(items, Mapping) else items)
        # validate_step_id makes a str subclass id (a StrEnum member) the plain str the backend stores.
        pairs = [(self._valid_id(step_id), message) for step_id, message in map(_pair, given)]
        seen: set[str] = set()
        for step_id, message in pairs:
            _check_message(message)
            if step_id in seen:
                raise InvalidStepIdError(
                    f"step id {step_id!r} appears twice in one save_many",
                    step_id=step_id,
                    namespace=self._namespace,
                    backend=self.backend_name,
                )
            seen.add(step_id)
        seconds = self._ttl(ttl, "save_many", None)
        self._check_open()
        if not pairs:
            return
        try:
            self._save_many(pairs, overwrite, seconds)
        except Exception as exc:
            self._raise(exc, "save_many", None)

    def get_many(self, step_ids: Iterable[str]) -> dict[str, Message]:
        """Read several artifacts at once; returns a dict from step id to message.

        Raises:
            ArtifactNotFoundError: if any is missing (the message names the first ten missing ids, its
                ``missing_ids`` all of them, in the order requested).
            InvalidStepIdError, ArtifactCorruptedError, BackendError, StoreClosedError: as :meth:`get`.
            TypeError: ``step_ids`` is a ``str`` (or ``bytes``): one id, whose characters would otherwise
                be taken for ids.
        """
        if isinstance(step_ids, (str, bytes)):
            raise TypeError(
                f"get_many takes an iterable of step ids, not one id as a {type(step_ids).__name__}; "
                "use get(step_id) or get_many([step_id])"
            )
        ids = builtins.list(dict.fromkeys(self._valid_id(step_id) for step_id in step_ids))
        self._check_open()
        if not ids:
            return {}
        try:
            return self._get_many(ids)
        except Exception as exc:
            self._raise(exc, "get_many", None)

    def save_stream(
        self,
        step_id: str,
        stream: IO[bytes],
        *,
        media_type: str = MEDIA_TYPE_BYTES,
        schema: SchemaInfo | None = None,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        ttl: Ttl | None = None,
        created_at: datetime | None = None,
    ) -> None:
        """Save ``bytes`` content read from a binary stream (a file, a socket, ...).

        With ``capabilities.streaming`` memory stays bounded whatever the size; other backends read the
        stream whole and save it as :meth:`save` would. The write-once rule is the same as :meth:`save`.
        ``created_at`` (timezone-aware) is the artifact's creation time, now when not given: a copy of an
        artifact from another store (the artifact server saving what its client sent) keeps the original's.

        On a backend that does not stream and knows the largest content any save of this store can accept
        (``_max_artifact_bytes()``: memory's ``max_bytes``, redis's ``max_artifact_bytes``, the http
        server's body limit), reading stops as soon as the stream holds one byte more than that: at most
        that bound plus one byte is read (and held), and the backend's own error for too large an artifact
        is raised, the one its :meth:`save` gives. Nothing is stored.

        Raises:
            InvalidStepIdError, ArtifactExistsError, BackendError, StoreClosedError, UnsupportedOperationError,
                ValueError: as :meth:`save`.
            CapacityError: as :meth:`save`; or (usually the subclass
                :class:`~artifactstore_core.errors.PayloadTooLargeError`, per backend) the stream is longer than
                the largest artifact the store can accept, raised before the rest of the stream is read.
            TypeError: ``stream`` is a text stream (an :class:`io.TextIOBase`, such as a file opened without
                ``'b'``), or has no ``read`` method (an iterable of chunks, ``bytes``); before anything is read.
            SerializationError: ``media_type``, ``schema``, ``metadata`` or ``created_at`` (naive, or nothing
                pydantic reads as a time: it takes ISO 8601 text and Unix timestamps too) is not valid (before
                any I/O); or ``stream.read()`` returned ``None`` (a non-blocking
                stream with nothing ready: refused, never stored cut short) or a ``str`` (a text stream of
                another kind); or ``stream.read()``
                raised (the stream's error chained; a streaming backend may raise another non-retryable
                error for it, see its docs). Nothing is stored.
        """
        step_id = self._valid_id(step_id)
        source: object = stream  # typed IO[bytes], but a caller's text file gets here all the same
        if isinstance(source, io.TextIOBase):
            # Refused before anything is read: its str chunks would otherwise fail inside the backend,
            # reported as a backend failure.
            raise TypeError(
                f"save_stream needs a binary stream, got the text stream {type(stream).__name__}; "
                "open the file with 'rb' or pass its .buffer"
            )
        if not callable(getattr(source, "read", None)):
            # An iterable of chunks would otherwise fail on the first read as a SerializationError about a
            # broken source, and bytes as an AttributeError of theirs.
            raise TypeError(
                f"save_stream needs a binary file object with read(), got {type(stream).__name__}; "
                "wrap bytes in io.BytesIO, or save them with save(step_id, Message(content=...))"
            )
        seconds = self._ttl(ttl, "save_stream", step_id)
        self._check_open()
        try:
            # The fields are checked here, once, before anything is read or written, so every backend
            # refuses the same bad media type or metadata with the same SerializationError.
            try:
                # Left out when not given, so that Message's own default (now) applies.
                when = {} if created_at is None else {"created_at": created_at}
                template = Message(content=b"", media_type=media_type, schema=schema, metadata=metadata, **when)
            except (TypeError, ValueError) as exc:
                raise SerializationError(f"cannot save a stream as {step_id!r}: {exc}", step_id=step_id) from exc
            if self.capabilities.streaming:
                self._save_stream(step_id, stream, template, overwrite, seconds)
            else:
                # Read in sized chunks, not with one read(): a non-blocking stream's readall() returns what
                # was ready and hides the None that said "more to come", which would store a truncated
                # payload. join() of one chunk returns it without a copy.
                chunks: list[bytes] = []
                limit = self._max_artifact_bytes()
                if limit is None:
                    while chunk := checked_read(_read_source(stream, step_id)):
                        # bytes() freezes a bytearray or memoryview a custom stream returned (and returns
                        # bytes themselves without a copy) chunk by chunk, before they are joined.
                        chunks.append(bytes(chunk))
                else:
                    # The whole stream is held before the backend sees it, so a stream the backend can never
                    # accept (an endless one, a 10 GB file for a 1 MB store) is cut off here: one byte past
                    # the bound proves it too large, and no read asks for more than that byte.
                    left = limit + 1
                    while left > 0 and (
                        chunk := checked_read(
                            _read_source(stream, step_id, left if left < _FALLBACK_CHUNK else _FALLBACK_CHUNK)
                        )
                    ):
                        chunks.append(bytes(chunk))
                        left -= len(chunk)
                    if left <= 0:
                        raise self._too_large_error(step_id, None, limit)
                message = template.model_copy(update={"content": b"".join(chunks)})
                self._save(step_id, message, overwrite, seconds)
        except Exception as exc:
            self._raise(exc, "save_stream", step_id)

    def open(self, step_id: str) -> IO[bytes]:
        """Open the artifact's payload for reading as a binary stream (close it when done).

        The stream is read-only on every backend: ``readable()`` is True, ``writable()`` False, and
        ``write``, ``writelines`` and ``truncate`` raise ``io.UnsupportedOperation``; closed, it raises
        ``ValueError`` like any closed file. Whether it can seek is what its ``seekable()`` says: a payload
        the backend holds in memory (backends without ``capabilities.streaming``, and text or JSON stored
        compressed on those with it) comes as a seekable
        :class:`~artifactstore_core.envelope.BytesReader` over that payload, not a copy of it; a streamed
        payload is read forward only, so code meant for any backend reads forward.

        For text and JSON content the stream yields their UTF-8 encoding. With
        ``capabilities.streaming`` the payload is read in chunks and verified as it is read: a damaged
        artifact raises :class:`~artifactstore_core.errors.ArtifactCorruptedError` at the latest from the
        read that would return the payload's last bytes, so a caller that reads exactly the payload's size
        (and never reads the empty end) still gets the error. Bytes returned before that are not verified
        yet: act on them only after the last read succeeded. Closing the stream early verifies nothing.
        Other backends verify the whole artifact before ``open`` returns.

        Raises:
            InvalidStepIdError, ArtifactNotFoundError, ArtifactCorruptedError, BackendError, StoreClosedError:
                as :meth:`get`.
        """
        step_id = self._valid_id(step_id)
        self._check_open()
        try:
            if self.capabilities.streaming:
                return self._open(step_id)
            message = self._get(step_id)
        except Exception as exc:
            self._raise(exc, "open", step_id)
        return content_stream(message)

    def open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
        """Open the artifact's content as :meth:`open` does, together with the verified header describing it.

        For code that passes an artifact on without holding it (the artifact server streams it to its
        client under a head of its own): the header tells what the stream will yield before a byte of it is
        read. ``header.size`` and ``header.digest`` are those of the bytes the stream yields (the content's
        UTF-8 for text and JSON); ``header.codec``, ``media_type``, ``schema``, ``metadata`` and
        ``created_at`` are the artifact's. ``compression`` and ``stored_size`` are how the backend keeps the
        payload (the stream yields it decompressed all the same); ``mac`` is the stored head's and says
        nothing about the stream. A backend without ``capabilities.streaming`` reads the artifact whole and
        describes it as uncompressed; one with it reads only the head before this returns, and its stream
        verifies the payload as it is read, as :meth:`open`'s does.

        Raises:
            InvalidStepIdError, ArtifactNotFoundError, ArtifactCorruptedError, BackendError, StoreClosedError:
                as :meth:`open`.
        """
        step_id = self._valid_id(step_id)
        self._check_open()
        try:
            if self.capabilities.streaming:
                return self._open_with_header(step_id)
            message, header = self._get_with_header(step_id)
        except Exception as exc:
            self._raise(exc, "open", step_id)
        return header, content_stream(message)

    def close(self) -> None:
        """Release the backend's clients and pools.

        Idempotent; later calls raise :class:`~artifactstore_core.errors.StoreClosedError`.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._close()
        except Exception as exc:
            self._raise(exc, "close", None)

    def __enter__(self) -> ArtifactStore:
        """The store itself.

        Raises:
            StoreClosedError: the store was closed (a ``with`` block reusing it would fail at its first call).
        """
        self._check_open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- helpers for backends -------------------------------------------------------------------------

    def _not_found(self, step_id: str) -> ArtifactNotFoundError:
        """The error a backend raises when ``step_id`` is missing (with :meth:`nothing_found_note`'s note)."""
        return ArtifactNotFoundError(
            f"no artifact {step_id!r} in namespace {self._namespace!r} of backend {self.backend_name!r}"
            f"{self._with_note()}",
            step_id=step_id,
            namespace=self._namespace,
            backend=self.backend_name,
        )

    def _with_note(self) -> str:
        """``"; "`` and :meth:`nothing_found_note`'s note, to end a not-found message with; ``""`` without one."""
        note = self.nothing_found_note()
        return f"; {note}" if note else ""

    def _exists_error(self, step_id: str) -> ArtifactExistsError:
        """The error a backend raises when write-once refuses a different artifact."""
        return ArtifactExistsError(
            f"a different artifact {step_id!r} already exists in namespace {self._namespace!r} of backend "
            f"{self.backend_name!r}; pass overwrite=True to replace it",
            step_id=step_id,
            namespace=self._namespace,
            backend=self.backend_name,
        )

    def _too_large_error(self, step_id: str, size: int | None, limit: int) -> CapacityError:
        """The error for content of ``step_id`` larger than ``limit`` bytes, the store's size bound.

        :meth:`save_stream` raises it, with ``size`` ``None``, for a stream it stopped reading once the
        stream held more than :meth:`_max_artifact_bytes` (its full size is unknown then). Backends with a
        size bound override it to give the same error (class, wording, setting to change) as their
        :meth:`_save` gives for too large a message, and call it from there with the known ``size``, so
        both paths read alike. The default is a
        :class:`~artifactstore_core.errors.PayloadTooLargeError` naming the bound.
        """
        shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return PayloadTooLargeError(
            f"artifact {step_id!r} is {shown}; backend {self.backend_name!r} accepts at most {limit} bytes per "
            "artifact. Nothing was stored.",
            step_id=step_id,
        )

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        """Map a client library's exception to a core error (``None``: a generic :class:`BackendError`).

        Backends override this with one small mapping; the base chains the original as ``__cause__``.
        The returned message must never contain a secret.
        """
        return None

    def _secret_values(self) -> Iterable[str]:
        """The secret values this store knows (its settings' credentials, a password in its URL), for
        :meth:`_raise` to keep out of the causes it chains (:func:`~artifactstore_core.errors.scrub_exception`).

        The base knows none; a password in a URL's user info is masked whether or not it is listed here.
        Backends with credentials override this. Raises nothing.
        """
        return ()

    def _scrubbed(self, exc: BaseException) -> BaseException:
        """``exc``, or a stand-in whose text holds none of this store's secrets
        (:func:`~artifactstore_core.errors.scrub_exception`). Raises nothing."""
        try:
            secrets = tuple(self._secret_values())
        except Exception:  # an override that fails must not replace the error being raised
            secrets = ()
        return scrub_exception(exc, secrets)

    def _scrub_causes(self, error: ArtifactStoreError) -> ArtifactStoreError:
        """``error`` with its cause and its context, shown or suppressed, scrubbed in place (it is ours to
        change; the client library's exceptions are not). Raises nothing."""
        _scrub_links(error, self._scrubbed)
        return error

    # -- what a backend implements --------------------------------------------------------------------

    @abstractmethod
    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        """Store ``message`` under the write-once rule; ``ttl`` is seconds or ``None``."""

    @abstractmethod
    def _get(self, step_id: str) -> Message:
        """Return the stored message or raise ``self._not_found(step_id)``."""

    @abstractmethod
    def _exists(self, step_id: str) -> bool:
        """Whether ``step_id`` is stored."""

    @abstractmethod
    def _delete(self, step_id: str) -> bool:
        """Remove ``step_id``; return whether it was there."""

    @abstractmethod
    def _list(self) -> Iterable[ArtifactInfo]:
        """The artifacts of this namespace."""

    @abstractmethod
    def _clear(self) -> int:
        """Remove this namespace's artifacts; return the count."""

    def _info(self, step_id: str) -> ArtifactInfo:
        """One artifact's info; override when the backend can read it without a full listing."""
        for info in self._list():
            if info.step_id == step_id:
                return info
        raise self._not_found(step_id)

    def _list_page(self, after: str | None, limit: int) -> Iterable[ArtifactInfo]:
        """The at most ``limit`` artifacts with the smallest step ids greater than ``after`` (``None``: from
        the first), in step id order (Python ``str`` order), each id once. Called by :meth:`list_page`
        with a valid ``after`` and a positive ``limit`` on an open store.

        This default makes one pass over :meth:`_list`, holding at most ``limit`` infos: correct for every
        backend, but it reads every artifact's info for each page. Override it when the backend can list
        its ids more cheaply than their infos (see :meth:`_page_of_ids`), or can read its ids in step id
        order from a given one (a sorted index whose order is the ids' own: most encodings of ids, such as
        :func:`~artifactstore_core.ids.encode_name`, do not keep that order).
        """
        return [info for _, info in smallest_after(((info.step_id, info) for info in self._list()), after, limit)]

    def _page_of_ids(
        self,
        names: Callable[[], Iterable[tuple[str, _H]]],
        after: str | None,
        limit: int,
        infos: Callable[[builtins.list[tuple[str, _H]]], Iterable[ArtifactInfo | None]],
    ) -> builtins.list[ArtifactInfo]:
        """A :meth:`_list_page` for backends that can list their ids more cheaply than their infos.

        Args:
            names: returns a new pass over the namespace's ``(step_id, handle)`` pairs, in any order, a
                step id possibly more than once; ``handle`` is what ``infos`` needs to read that artifact
                (its key, its path).
            after, limit: as :meth:`_list_page`.
            infos: reads the infos of the pairs it is given (sorted by step id), one for each pair and in
                their order; ``None`` for an artifact gone since ``names`` listed it.

        Picks the page's ids with :func:`smallest_after` and reads only their infos. If some were gone by
        then, the page is filled up from another pass over ``names`` after the last id read, so that a
        short page still means the listing's end.

        Raises:
            Whatever ``names`` and ``infos`` raise, unchanged (:meth:`list_page` maps it to the store's
            errors, as for every hook).
        """
        page: builtins.list[ArtifactInfo] = []
        while True:
            wanted = limit - len(page)
            chosen = smallest_after(names(), after, wanted)
            if chosen:
                page.extend(info for info in infos(chosen) if info is not None)
            if len(chosen) < wanted or len(page) == limit:
                return page
            after = chosen[-1][0]

    def _namespaces(self) -> Iterable[str]:
        """Namespaces holding artifacts, for backends that declare ``capabilities.list_namespaces``."""
        # Reached only when the capability is declared (namespaces() checks it first): the backend's bug.
        raise UnsupportedOperationError(
            f"backend {self.backend_name!r} declares capabilities.list_namespaces but does not implement _namespaces()"
        )

    def _close(self) -> None:  # noqa: B027 - optional hook: most backends have nothing to release
        """Release clients and pools (called once)."""

    def _max_artifact_bytes(self) -> int | None:
        """The largest content, in bytes, that a save to this store could ever accept; ``None``: no known bound.

        :meth:`save_stream` on a backend without ``capabilities.streaming`` holds the whole stream in memory
        before :meth:`_save` sees it. With a bound it stops reading once the stream holds ``bound + 1``
        bytes and raises :meth:`_too_large_error` (``size=None``) instead, storing nothing. So the bound
        must be one that every save refuses beyond, whatever else is stored and whoever saves beside it: a
        limit on a total (memory's ``max_bytes`` per namespace) is such a bound, the room left under it is
        not (concurrent saves and deletes change it; the backend's own check in :meth:`_save` still
        decides). A bound lower than what :meth:`_save` accepts would refuse streams a save keeps; a
        higher one, or ``None``, only reads further before the backend refuses. The conformance kit checks
        that a save over the bound is refused and that a stream over it is cut off.

        Called once per :meth:`save_stream` on an open store, before the stream is read; it may do I/O
        (the http client asks its server) and its errors are those of the save. The default is
        ``capabilities.max_artifact_bytes``; backends whose bound depends on settings override it.
        """
        return self.capabilities.max_artifact_bytes

    def _save_many(self, items: builtins.list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        """Save validated pairs; override to batch."""
        for step_id, message in items:
            try:
                self._save(step_id, message, overwrite, ttl)
            except ArtifactStoreError as exc:
                if exc.step_id is None:
                    exc.step_id = step_id
                raise

    def _get_many(self, step_ids: builtins.list[str]) -> dict[str, Message]:
        """Read validated, distinct ids; override to batch. Raise not-found naming every missing id."""
        found: dict[str, Message] = {}
        missing: builtins.list[str] = []
        for step_id in step_ids:
            try:
                found[step_id] = self._get(step_id)
            except ArtifactNotFoundError:
                missing.append(step_id)
        if missing:
            raise self._missing_many(missing)
        return found

    def _missing_many(self, missing: builtins.list[str]) -> ArtifactNotFoundError:
        """The error for a batch read with missing ids (with :meth:`nothing_found_note`'s note)."""
        shown = ", ".join(repr(step_id) for step_id in missing[:10])
        more = f" and {len(missing) - 10} more (all in the error's missing_ids)" if len(missing) > 10 else ""
        error = ArtifactNotFoundError(
            f"no artifacts {shown}{more} in namespace {self._namespace!r} of backend {self.backend_name!r}"
            f"{self._with_note()}",
            step_id=missing[0],
            namespace=self._namespace,
            backend=self.backend_name,
        )
        # Every id, not only the ten the message shows: a caller re-running the missing steps needs them all.
        error.missing_ids = tuple(missing)
        return error

    def _save_stream(
        self, step_id: str, stream: IO[bytes], template: Message, overwrite: bool, ttl: float | None
    ) -> None:
        """Streaming save, for backends that declare ``capabilities.streaming``.

        Called by :meth:`save_stream` with a valid ``step_id``, an open store and ``template``: the
        validated, frozen message with empty ``bytes`` content whose media type, schema, metadata and
        ``created_at`` the stored artifact takes (fields are never validated again here). Read ``stream``
        to its end in bounded memory and store its bytes as that artifact's content, under the same
        write-once rule, ``overwrite`` and ``ttl`` (seconds, or ``None``) as :meth:`_save`. A payload
        small enough to save at once may go to :meth:`_save` as
        ``template.model_copy(update={"content": data})`` (a copy keeps ``created_at``); a streamed one
        takes its head from ``self.codec.encode_stream_head(template, size=..., digest=...,
        place=(self.namespace, step_id))``. Nothing partial may become visible: a failed save stores nothing.

        Raises:
            ArtifactExistsError: (``self._exists_error(step_id)``) a different artifact is stored and
                ``overwrite`` is false.
            SerializationError: ``stream.read()`` returned ``None`` (a non-blocking stream with nothing
                ready), at the start or midway: never take it for the end, which would store the artifact
                cut short; or returned ``str`` (a text stream). :func:`checked_read` raises both (the
                conformance kit checks them).
            UnsupportedOperationError: this default implementation, for backends that do not stream.
            Exception: anything else, which :meth:`save_stream` passes through :meth:`_translate_error`
                and chains; raise a core error for a failing source stream, so it is not blamed on the
                backend.
        """
        raise UnsupportedOperationError(f"backend {self.backend_name!r} does not implement streaming")

    def _open(self, step_id: str) -> IO[bytes]:
        """Streaming read, for backends that declare ``capabilities.streaming``."""
        raise UnsupportedOperationError(f"backend {self.backend_name!r} does not implement streaming")

    def _open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
        """Streaming read with the artifact's verified header, for :meth:`open_with_header`.

        Called with a valid ``step_id`` on an open store of a backend that declares
        ``capabilities.streaming``. A backend that decodes the head before it streams the payload returns that
        header (as :meth:`~artifactstore_core.envelope.Codec.decode_head` gave it) and the stream its
        :meth:`_open` would return. This default reads the artifact whole with :meth:`_get` and describes
        it, which is correct but holds it in memory: override it together with :meth:`_open`.

        Raises:
            ArtifactNotFoundError: (``self._not_found(step_id)``) no such artifact.
            Exception: anything else, as :meth:`_open`.
        """
        message, header = self._get_with_header(step_id)
        return header, content_stream(message)

    def _get_with_header(self, step_id: str) -> tuple[Message, Header]:
        """:meth:`_get`'s message and the header of its content kept uncompressed.

        The digest the codec verified while decoding a ``bytes`` or text payload is the header's
        (:func:`~artifactstore_core.envelope.content_digest` within ``reusing_verified_digests``): it was
        hashed again, a second pass over the whole payload for every streamed read of a store that decodes
        envelopes (redis behind the artifact server, the CLI's ``get``). A store that keeps messages (memory)
        hashes once, here.
        """
        with reusing_verified_digests():
            message = self._get(step_id)
            codec, raw, digest = content_digest(message)
        return message, self.codec.encode_head(
            codec=codec, media_type=message.media_type, schema=message.schema, metadata=message.metadata,
            created_at=message.created_at, size=len(raw), digest=digest, place=(self.namespace, step_id),
        )[1]  # fmt: skip

    # -- internals ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError.of_store(self._namespace, self.backend_name)

    def _valid_id(self, step_id: str) -> str:
        """``step_id`` checked as :func:`~artifactstore_core.ids.validate_step_id` checks it (and made a plain
        ``str``), its error naming this store's namespace and backend: the ids module knows neither, and an
        error of a store's call names them in its fields as every other one does.

        Raises:
            InvalidStepIdError: ``step_id`` is not legal.
        """
        try:
            return validate_step_id(step_id)
        except InvalidStepIdError as exc:
            exc.namespace = self._namespace
            exc.backend = self.backend_name
            raise

    def _ttl(self, ttl: Ttl | None, operation: str, step_id: str | None) -> float | None:
        if ttl is None:
            return None
        if not self.capabilities.native_ttl:
            # Named like every other store error: the step id (none for a batch), namespace and backend, in the
            # fields and the text, so that a log line of a failed step says which save it was.
            target = f" of {step_id!r}" if step_id is not None else ""
            raise UnsupportedOperationError(
                f"{operation}{target} in namespace {self._namespace!r} with a ttl: backend {self.backend_name!r} "
                "has no native TTL; save without ttl",
                step_id=step_id,
                namespace=self._namespace,
                backend=self.backend_name,
            )
        return _ttl_seconds(ttl)

    def _in_context(self, exc: ArtifactStoreError, operation: str, step_id: str | None) -> ArtifactStoreError:
        """``exc`` with this store's backend, namespace and ``step_id`` where it names none.

        A :class:`SerializationError` (damaged or foreign stored bytes, content that cannot be encoded) comes
        from the codec, which knows nothing of ids; its message then also gets ``operation`` and the artifact,
        so a log line of a batch read or a listing says which artifact it is. Backends that raise errors
        outside :meth:`_raise` (from a stream returned by :meth:`open`) pass them through this too.
        """
        if exc.backend is None:
            exc.backend = self.backend_name
        if exc.namespace is None:
            exc.namespace = self._namespace
        if exc.step_id is None:
            exc.step_id = step_id
        # The codec's "artifact is signed; set ARTIFACT_STORE_SIGNING_KEY" is a ConfigurationError that, like
        # its SerializationErrors, knows no id: in a batch read's log line it would not say which artifact.
        if isinstance(exc, SerializationError) or (isinstance(exc, ConfigurationError) and exc.step_id is not None):
            _name_the_artifact(exc, operation)
        return exc

    def _raise(self, exc: Exception, operation: str, step_id: str | None) -> NoReturn:
        if isinstance(exc, ArtifactStoreError):
            # A backend's own error may chain a client library's exception directly (raise ... from exc).
            raise self._in_context(self._scrub_causes(exc), operation, step_id)
        error = self._translate_error(exc)
        if error is None:
            target = f" of {step_id!r}" if step_id is not None else ""
            error = BackendError(
                f"{operation}{target} failed in backend {self.backend_name!r} (namespace {self._namespace!r}): "
                f"{type(exc).__name__}"
            )
        error.backend = error.backend or self.backend_name
        error.namespace = error.namespace or self._namespace
        error.step_id = error.step_id or step_id
        # The original is chained as it is unless its text holds a secret (botocore quotes the endpoint URL it
        # was given, user info included, and the URL may come from AWS_ENDPOINT_URL, which no setting of ours
        # checks). Then a stand-in is chained instead, with the original's type name, redacted text and
        # traceback: what failed and where stays readable, only the secret goes. (``raise error from None``
        # would lose the whole chain; the text alone, without a cause, would lose where it failed.) The stand-in
        # is the context too: the original, kept there by a plain raise, would still be reachable.
        raise_chained(error, self._scrubbed(exc))
