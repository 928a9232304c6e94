"""The S3 store: one namespace of artifacts as objects under ``<prefix>/<namespace>/`` in one bucket."""

from __future__ import annotations

import builtins
import functools
import io
import logging
import os
import random
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import wait
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import ClientError

from artifactstore_core import (
    AccessDeniedError,
    ArtifactExistsError,
    ArtifactInfo,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    BackendError,
    BackendUnavailableError,
    Capabilities,
    Codec,
    ConfigurationError,
    Message,
    SerializationError,
    StoreClosedError,
)
from artifactstore_core.envelope import Header, PayloadReader, content_stream, new_hasher
from artifactstore_core.errors import raise_chained
from artifactstore_core.ids import validate_step_id
from artifactstore_core.settings import load_settings
from artifactstore_core.store import ContextThreadPoolExecutor, checked_read

from .errors import (
    busy_code,
    client_error_code,
    refused_before_sending,
    tls_refused,
    translate_error,
    virtual_host_missing,
)
from .keys import KeyLayout
from .layout import ObjectLayout, layout_for, stored_head
from .logs import StoreSecrets
from .multipart import MultipartUpload, check_part_count
from .reader import split_prelude
from .settings import MIB, S3Settings, credential_problem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

__all__ = ["S3Store"]

_T = TypeVar("_T")

logger = logging.getLogger("artifactstore_s3")

#: Most keys one DeleteObjects request may name (S3's limit).
DELETE_BATCH = 1000
# Chunk size of streamed downloads: the memory one open() holds, apart from its small read buffer.
_READ_CHUNK = 1 * MIB
# Server-side copies move this much per request when a staged stream is assembled into its final object.
_COPY_PART_SIZE = 256 * MIB
# Backoff before looking again after a 409 ConditionalRequestConflict, and before deleting keys again that
# DeleteObjects refused as busy: doubles per attempt from the base, up to the cap, with jitter so that
# writers racing for one key do not retry in step.
_CONFLICT_BACKOFF = 0.05
_CONFLICT_BACKOFF_CAP = 1.0
_STAGING_LAYOUT = ObjectLayout({}, b"", "application/octet-stream")
# The kinds of conditional write the probes check, in the order a multipart write needs them.
_PROBE_KINDS = ("put", "multipart")


def _no_retry_of_a_refused_handshake(caught_exception: BaseException | None = None, **_: Any) -> None:
    """``needs-retry`` handler: a TLS handshake the client refused (an untrusted certificate, an endpoint that
    does not speak TLS) fails the same way however often it is repeated, and botocore's retries only delay
    the error (up to ``max_attempts`` handshakes and their backoff). Raising the refusal here, before the
    retry handler runs, ends the request with it at once, as after its last attempt (and spends none of the
    client's retry quota). Returning a value would not do: the first value that is not ``None`` wins, and
    older botocore releases retry on any such value, ``False`` included."""
    if caught_exception is not None and tls_refused(caught_exception):
        raise caught_exception


def _no_retry_of_a_missing_name(bucket: str, caught_exception: BaseException | None = None, **_: Any) -> None:
    """``needs-retry`` handler: a virtual-hosted name of the bucket that the DNS says does not exist (an
    S3-compatible service addressed as ``bucket.host``) is refused alike however often it is asked for, so
    it ends the request at once (see :func:`_no_retry_of_a_refused_handshake`)."""
    if caught_exception is not None and virtual_host_missing(caught_exception, bucket):
        raise caught_exception


# Where boto3's chain found static credentials (Credentials.method), for an error about them.
_CREDENTIAL_SOURCES = {
    "env": "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)",
    "shared-credentials-file": "the credentials file (AWS_SHARED_CREDENTIALS_FILE, by default ~/.aws/credentials)",
    "config-file": "the AWS config file (AWS_CONFIG_FILE, by default ~/.aws/config)",
}


def _chain_credential_problem(credentials: Credentials | None) -> str | None:
    """What makes static credentials from boto3's chain unusable (see :func:`credential_problem`), ``None``:
    nothing, or credentials that refresh (reading them could call STS or SSO; they do not come from a file or
    a variable a person filled in). Never quotes them. Raises nothing."""
    if credentials is None or isinstance(credentials, RefreshableCredentials):
        return None
    method = str(getattr(credentials, "method", "") or "")
    if method == "explicit":
        return None  # the settings' own, checked when they were loaded
    for what, value in (
        ("access key id", credentials.access_key),
        ("secret access key", credentials.secret_key),
        ("session token", credentials.token),
    ):
        problem = credential_problem(value or "") if isinstance(value, str) else None
        if problem is not None:
            source = _CREDENTIAL_SOURCES.get(method, f"boto3's credential chain ({method or 'unknown source'})")
            return f"the S3 {what} found in {source} {problem}"
    return None


# Every open store, so that a forked child resets their per-process state in one place (S3Store._after_fork).
_STORES: weakref.WeakSet[S3Store] = weakref.WeakSet()


def _reset_stores_in_child() -> None:
    for store in builtins.list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_reset_stores_in_child)


class _CompletionUncertainError(Exception):
    """A completion of an artifact's upload answered ``NoSuchUpload``: an abort under us, or a completion
    sent again (botocore's retry after the first one's answer was lost) to a service that answers so once
    the first one has completed the upload. :meth:`S3Store._write_once` looks before it reports ``error``.
    """

    def __init__(self, error: BackendUnavailableError) -> None:
        super().__init__(str(error))
        self.error = error


def _precondition_failed(exc: BaseException) -> bool:
    code, status = client_error_code(exc)
    return status == 412 or code == "PreconditionFailed"


def _conflict(exc: BaseException) -> bool:
    """S3's 409 on a conditional write: a concurrent write or delete of the key was in flight; retry."""
    code, _ = client_error_code(exc)
    return code == "ConditionalRequestConflict"


# Refusals of a GET that still say the object exists: no byte in range (an empty body), an archived object.
_EXISTING_CODES = frozenset({"InvalidRange", "InvalidObjectState"})


def _may_have_written(exc: ClientError) -> bool:
    """Whether a write refused with ``exc`` may still have gone in: not after a 4xx (or a 501), which refuses
    the request; possibly after a 5xx, which can follow an attempt that went in and lost its answer."""
    _, status = client_error_code(exc)
    return status >= 500 and status != 501


def _missing(exc: BaseException) -> bool:
    code, status = client_error_code(exc)
    return status == 404 or code in ("NoSuchKey", "NotFound")


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    """Read ``size`` bytes, fewer only at the end of the stream (``read`` may return short counts).

    Raises:
        SerializationError: reading the caller's stream failed (the original chained): not a backend error.
    """
    try:
        data = checked_read(stream.read(size))
        if len(data) >= size or not data:
            # bytes() returns bytes itself without a copy, and turns another buffer a custom stream
            # returned into the immutable bytes a Message holds.
            return bytes(data)
        buffer = bytearray(data)
        while len(buffer) < size:
            more = checked_read(stream.read(size - len(buffer)))
            if not more:
                break
            buffer += more
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"reading the stream to save failed: {type(exc).__name__}: {exc}") from exc
    return bytes(buffer)


def _fill(stream: IO[bytes], buffer: bytearray, limit: int | None = None) -> int:
    """Read into ``buffer`` (its first ``limit`` bytes) until full or the end of the stream; return the count.

    Raises:
        SerializationError: reading the caller's stream failed (the original chained).
    """
    view = memoryview(buffer)[: len(buffer) if limit is None else limit]
    filled = 0
    try:
        readinto = getattr(stream, "readinto", None)
        while filled < len(view):
            if readinto is not None:
                count = checked_read(readinto(view[filled:]))
            else:
                data = checked_read(stream.read(len(view) - filled))
                count = len(data)
                view[filled : filled + count] = data
            if not count:
                break
            filled += count
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"reading the stream to save failed: {type(exc).__name__}: {exc}") from exc
    return filled


def _start_of(stream: IO[bytes]) -> tuple[int, int] | None:
    """``(position, remaining bytes)`` of a seekable stream, ``None`` if it cannot seek (or cannot say: a
    stream needs only ``read``, as the core's ``save_stream`` promises)."""
    try:
        if not stream.seekable():
            return None
        start = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(start)
    except (OSError, ValueError, AttributeError):
        return None
    return start, max(0, end - start)


def _url_password(url: object) -> tuple[str, ...]:
    """The password of ``url``'s user info, as written and as decoded (empty: none). Raises nothing."""
    try:
        password = urlsplit(str(url)).password
    except ValueError:
        return ()
    return (password, unquote(password)) if password else ()


class S3Store(ArtifactStore):
    """A namespace of artifacts in an S3 bucket (or an S3-compatible service).

    Each artifact is one object, ``<prefix>/<namespace>/<step id>`` (both encoded, see
    :mod:`artifactstore_s3.keys`), whose body is the stored payload and whose metadata carries the
    envelope head (:mod:`artifactstore_s3.layout`). Write-once is enforced by conditional writes
    (``If-None-Match: *``); ``save_stream`` and ``open`` stream through multipart uploads and streamed
    downloads in bounded memory. Thread-safe; one store may serve many threads.

    Args:
        settings: the backend's settings; default :class:`S3Settings` from the environment and config file.
        namespace: the namespace.
        codec: the envelope codec (signing key, compression).

    Raises:
        ConfigurationError: no bucket is configured, the prefix is too long, or the client cannot be built
            (and, with ``probe_at_start``, the endpoint ignores conditional writes or the bucket is missing).
        InvalidStepIdError: ``namespace`` is not legal.
        BackendError: with ``probe_at_start``, the probe failed to reach the service.
    """

    backend_name = "s3"
    capabilities = Capabilities(
        cross_process=True,
        persistent=True,
        native_ttl=False,
        atomic_create=True,
        streaming=True,
        list_namespaces=True,
        max_artifact_bytes=None,
    )

    def __init__(
        self, settings: S3Settings | None = None, *, namespace: str = "default", codec: Codec | None = None
    ) -> None:
        super().__init__(namespace=namespace, codec=codec)
        self._settings = settings if settings is not None else load_settings(S3Settings)
        if not self._settings.bucket:
            raise ConfigurationError(
                "the s3 backend needs a bucket: set ARTIFACT_STORE_S3_BUCKET (or pass bucket=... to create_store)",
                backend=self.backend_name,
            )
        self._bucket: str = self._settings.bucket
        self._keys = KeyLayout(self._settings.prefix, self.namespace)
        # botocore's DEBUG wire trace shows the token and key id: masked there while the store is open, those
        # of the settings and those the client resolves (see _make_client).
        self._log_secrets = StoreSecrets(
            secret.get_secret_value()
            for secret in (self._settings.access_key_id, self._settings.secret_access_key, self._settings.session_token)
            if secret is not None
        )
        self._forget_log_secrets = weakref.finalize(self, self._log_secrets.forget)
        self._lock = threading.Lock()
        # Held while a conditional-write probe runs, apart from _lock: the probe sends requests, and building
        # the client (in a forked child), starting a pool or registering an upload take _lock meanwhile.
        self._probe_lock = threading.Lock()
        # What the probes found, per kind of conditional write ("put": PutObject, "multipart":
        # CompleteMultipartUpload): True honoured, False ignored and accepted (warn); a kind missing from both
        # dicts is not probed yet, one in _probe_refusals is refused (require) with that text.
        trusted = self._settings.conditional_writes == "trust"
        self._conditional: dict[str, bool] = dict.fromkeys(_PROBE_KINDS, True) if trusted else {}
        self._probe_refusals: dict[str, str] = {}
        # Cleared when the endpoint answers a conditional DeleteObject 501 NotImplemented (see _delete).
        self._conditional_delete = True
        self._pools: dict[str, ContextThreadPoolExecutor] = {}
        # What close() settles for a write in flight in another thread: its multipart uploads (aborted) and
        # its staging objects (deleted), with the client still open. Each is registered before its first
        # request, so close() never misses one whose creation is on the way.
        self._uploads: set[MultipartUpload] = set()
        self._staging: set[str] = set()
        try:
            client = self._make_client()
        except Exception as exc:
            self._forget_log_secrets()
            self._raise(exc, "connect", None)
        self._client: S3Client | None = client
        if self._settings.probe_at_start:
            try:
                self._ensure_conditional(multipart=True)
            except Exception as exc:
                for pool in self._pools.values():  # the completion probe's part upload started one
                    pool.shutdown(wait=True)
                client.close()
                self._forget_log_secrets()
                self._raise(exc, "connect", None)
        _STORES.add(self)

    # -- client and pools -----------------------------------------------------------------------------

    def _make_client(self) -> S3Client:
        settings = self._settings
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id.get_secret_value() if settings.access_key_id else None,
            aws_secret_access_key=settings.secret_access_key.get_secret_value() if settings.secret_access_key else None,
            aws_session_token=settings.session_token.get_secret_value() if settings.session_token else None,
            region_name=settings.region,
        )
        config = Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
            s3={"addressing_style": settings.addressing_style},
            # Batch workers and part uploads (max_concurrency each) need a connection of their own, and so does
            # every caller's thread at once: a connection given back to a full pool is closed, so a pool sized for
            # the workers alone made each request of many threads sharing the store open a new one.
            max_pool_connections=max(settings.max_pool_connections, 2 * settings.max_concurrency + 2),
        )
        if settings.checksum_calculation is not None:
            # Merged over botocore's own setting (environment, config file) for this client only.
            config = config.merge(Config(request_checksum_calculation=settings.checksum_calculation))
        verify = self._ca_bundle()
        try:
            client = session.client("s3", endpoint_url=settings.endpoint_url, config=config, verify=verify)
        except ValueError as exc:
            # botocore's text quotes the endpoint, which may come from its own configuration with user info.
            raise_chained(
                ConfigurationError(
                    f"cannot build the S3 client: {type(exc).__name__}; check ARTIFACT_STORE_S3_ENDPOINT_URL and "
                    "ARTIFACT_STORE_S3_REGION"
                ),
                self._scrubbed(exc),
            )
        # The setting refuses user info, but an endpoint from boto3's configuration (AWS_ENDPOINT_URL_S3,
        # AWS_ENDPOINT_URL, the AWS config file) is not checked: botocore sends and quotes it as it is, so its
        # password is one of this store's secrets (masked in errors and botocore's log records).
        self._log_secrets.add(_url_password(client.meta.endpoint_url))
        # Ahead of botocore's retry handler (any mode), which retries a refused handshake as a connection error.
        client.meta.events.register_first("needs-retry.s3", _no_retry_of_a_refused_handshake)
        client.meta.events.register_first(
            "needs-retry.s3", functools.partial(_no_retry_of_a_missing_name, self._bucket)
        )
        # Credentials from the environment, a profile or a role are masked in logs as the settings' are. The
        # session keeps what building the client resolved, so this is the very object the client signs with and
        # asks no provider again; only when the chain found nothing does it look once more (requests then fail
        # for want of credentials, as before).
        try:
            credentials = session.get_credentials()
        except Exception:  # the client's first request meets the same failure and reports it
            credentials = None
        problem = _chain_credential_problem(credentials)
        if problem is not None:
            client.close()
            raise ConfigurationError(problem, backend=self.backend_name)
        self._log_secrets.watch(client, credentials)
        return client

    def _ca_bundle(self) -> str | None:
        """The path of ``ca_bundle``, once it is known to hold certificates; ``None``: unset.

        Raises:
            ConfigurationError: the file is missing, cannot be read or holds no PEM certificate (urllib3
                would say so only at the first https:// connection, as a TLS failure far from the setting).
        """
        path = self._settings.ca_bundle
        if path is None:
            return None
        cause: OSError
        try:
            ssl.create_default_context(cafile=os.fspath(path))
        except FileNotFoundError as exc:
            problem, cause = "does not exist", exc
        except IsADirectoryError as exc:
            problem, cause = "is a directory, not a PEM file", exc
        except ssl.SSLError as exc:  # before OSError: it is one
            problem, cause = "holds no PEM certificate", exc
        except OSError as exc:
            problem, cause = f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})", exc
        else:
            return os.fspath(path)
        # A path is no secret: naming it is what makes this fixable.
        raise ConfigurationError(
            f"ARTIFACT_STORE_S3_CA_BUNDLE {os.fspath(path)!r} {problem}; set it to a readable PEM file of the CA "
            "certificates of the S3 endpoint, or unset it to use the default bundle",
            backend=self.backend_name,
        ) from cause

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client this store uses (a new one in a forked child, whose sockets are not its own).

        Exposed for inspection and for botocore event hooks; do not close it. Hooks registered in a parent
        process are not carried into a forked child's client.

        Raises:
            ConfigurationError: in a forked child, the new client cannot be built.
        """
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    client = self._client = self._make_client()
        return client

    @property
    def _live_client(self) -> S3Client:
        """:attr:`client`, for a request of an operation: refused once :meth:`close` has begun, so that an
        operation in flight in another thread stops at its next request instead of sending it on a client
        being closed.

        Raises:
            StoreClosedError: :meth:`close` was called.
        """
        if self.closed:
            raise self._closed_error()
        return self.client

    def _endpoint_label(self) -> str:
        """The endpoint this store's client sends to, for a message: botocore's (ARTIFACT_STORE_S3_ENDPOINT_URL,
        else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the AWS config file, else AWS S3 for the region), with
        where it came from when not from this store's settings. Only scheme, host, port and path are shown:
        an endpoint from boto3's configuration is not checked as the setting is, and may hold user info.
        Raises nothing."""
        try:
            url = urlsplit(str(self.client.meta.endpoint_url))
            # The host and port as written ([::1] keeps its brackets), without any user info.
            shown = f"{url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"
        except Exception:
            return self._settings.endpoint_url or "(endpoint unknown)"
        if self._settings.endpoint_url is not None:
            return shown
        if (url.hostname or "").endswith(".amazonaws.com"):
            return f"{shown} (AWS S3)"
        return f"{shown} (from boto3's configuration: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the AWS config file)"

    def _closed_error(self) -> StoreClosedError:
        return StoreClosedError.of_store(
            self.namespace,
            self.backend_name,
            in_flight=True,
            detail="any multipart upload it had begun was aborted",
        )

    def _register(self, pending: set[_T], item: _T) -> None:
        """Add ``item`` to ``pending`` (:attr:`_uploads` or :attr:`_staging`), for :meth:`close` to settle.

        Raises:
            StoreClosedError: :meth:`close` has begun and taken its list already: it would miss ``item``.
        """
        with self._lock:
            if self.closed:
                raise self._closed_error()
            pending.add(item)

    def _after_fork(self) -> None:
        """Drop everything that belongs to the parent process; run in a forked child, before anything else.

        The one place for per-process state: the parent's sockets must not be shared; its pools' worker
        threads do not exist in the child, so work submitted to them would wait forever; and a lock another
        thread held at the fork would never be released here. The client is built again when first used, so
        a child that never touches the store pays nothing.
        """
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._log_secrets.after_fork()
        self._pools = {}
        self._client = None
        # The parent's uploads and staging objects are the parent's to settle, not this child's.
        self._uploads = set()
        self._staging = set()

    @property
    def bucket(self) -> str:
        """The bucket this store writes to."""
        return self._bucket

    def key_of(self, step_id: str) -> str:
        """The object key of ``step_id`` in this namespace (for tools that read the bucket directly).

        Raises:
            InvalidStepIdError: ``step_id`` is not a legal id.
        """
        return self._keys.key(validate_step_id(step_id))

    def _pool(self, kind: str) -> ContextThreadPoolExecutor:
        """The pool of ``kind`` (``batch``, ``parts``), started when first needed.

        Raises:
            StoreClosedError: :meth:`close` was called (a pool started after it would never be shut down).
        """
        pool = self._pools.get(kind)
        if pool is None:
            with self._lock:
                if self.closed:
                    raise self._closed_error()
                pool = self._pools.get(kind)
                if pool is None:
                    # Every task runs in a copy of its submitter's context, as a call made there would.
                    pool = ContextThreadPoolExecutor(
                        max_workers=self._settings.max_concurrency, thread_name_prefix=f"artifactstore-s3-{kind}"
                    )
                    self._pools[kind] = pool
        return pool

    def _absent(self, exc: ClientError, *, bucket_known: bool = False) -> bool:
        """Whether ``exc`` says the object is missing (the bucket being there).

        A GET's 404 names ``NoSuchKey`` or ``NoSuchBucket`` in its body; a HEAD's 404 has no body and says
        neither. Such a 404 is taken as a missing object when ``bucket_known`` (the caller learns of a
        missing bucket anyway: from the write that follows, or from the listing it is in); otherwise the
        bucket is looked at (``HeadBucket``), each time: a bucket deleted after the store used it must
        never read as "artifact missing".

        Raises:
            ConfigurationError: the bucket itself does not exist.
        """
        if not _missing(exc):
            return False
        code, _ = client_error_code(exc)
        if code == "NoSuchBucket":
            return False  # re-raised by the caller and translated to ConfigurationError
        if code != "NoSuchKey" and not bucket_known:
            self._check_bucket()
        return True

    def _check_bucket(self) -> None:
        """Raise ``ConfigurationError`` if the bucket does not exist (one ``HeadBucket``)."""
        try:
            self._live_client.head_bucket(Bucket=self._bucket)
        except ClientError as bucket_exc:
            if _missing(bucket_exc):
                raise ConfigurationError(
                    f"bucket {self._bucket!r} does not exist; set ARTIFACT_STORE_S3_BUCKET to an existing bucket"
                ) from bucket_exc
            raise

    def _where(self, key: str) -> str:
        return f"object {key!r} in bucket {self._bucket!r}"

    def _secret_values(self) -> Iterable[str]:
        return self._log_secrets.secrets

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        if self.closed:
            # Whatever failed an operation in flight during close() (a part cancelled, a pool shut down, a
            # request on the closing client), the cause to act on is the close; the original is chained.
            return self._closed_error()
        return translate_error(exc, bucket=self._bucket, secrets=self._log_secrets.secrets)

    # -- conditional-write probe ----------------------------------------------------------------------

    def _ensure_conditional(self, *, multipart: bool = False) -> bool:
        """Whether write-once writes may rely on ``If-None-Match: *`` (probing the endpoint once per kind).

        ``multipart``: the write completes a multipart upload, so ``CompleteMultipartUpload`` must honour the
        condition too. Some S3-compatible services honour it on ``PutObject`` and ignore it on the completion,
        where it would let a second writer of a large artifact silently replace the first one's.

        Raises:
            ConfigurationError: the endpoint ignores the condition on such a write and ``conditional_writes``
                is ``require``.
            AccessDeniedError: S3 refused the probe's key (``<prefix>/.probe/``), naming it.
        """
        for kind in _PROBE_KINDS if multipart else _PROBE_KINDS[:1]:
            if kind not in self._conditional and kind not in self._probe_refusals:
                with self._probe_lock:
                    if kind not in self._conditional and kind not in self._probe_refusals:
                        self._settle_probe(kind)
            refusal = self._probe_refusals.get(kind)
            if refusal is not None:
                raise ConfigurationError(refusal, backend=self.backend_name)
            if not self._conditional[kind]:
                return False  # accepted (warn): check-then-write, and no need to probe the completion
        return True

    def _settle_probe(self, kind: str) -> None:
        """Probe one kind of conditional write and record what to do about it (see :meth:`_ensure_conditional`)."""
        try:
            honoured = self._probe_put() if kind == "put" else self._probe_multipart()
        except ClientError as exc:
            refused = self._reserved_refusal(exc, "probe")
            if refused is None:
                raise
            raise refused from exc
        if honoured:
            self._conditional[kind] = True
            return
        endpoint = self._endpoint_label()
        if kind == "put":
            problem = (
                f"the S3 endpoint {endpoint} ignores conditional writes (If-None-Match: *) on bucket "
                f"{self._bucket!r}, so write-once cannot be enforced atomically"
            )
        else:
            problem = (
                f"the S3 endpoint {endpoint} ignores conditional writes (If-None-Match: *) on "
                f"CompleteMultipartUpload on bucket {self._bucket!r} (it honours them on PutObject), so write-once "
                "cannot be enforced atomically for artifacts uploaded in parts (ARTIFACT_STORE_S3_MULTIPART_THRESHOLD "
                "bytes or more, and streams that long)"
            )
        if self._settings.conditional_writes == "require":
            self._probe_refusals[kind] = (
                f"{problem}; set ARTIFACT_STORE_S3_CONDITIONAL_WRITES=warn to accept a check-then-write that "
                "concurrent writers can race"
            )
            return
        logger.warning(
            "%s; falling back to a non-atomic check-then-write (ARTIFACT_STORE_S3_CONDITIONAL_WRITES=warn)", problem
        )
        self._conditional[kind] = False

    def _probe_put(self) -> bool:
        """Whether ``PutObject`` honours ``If-None-Match: *``: a new reserved key written twice with the
        condition, then deleted; the second write must be refused (412)."""
        key = self._keys.reserved("probe", uuid.uuid4().hex)
        client = self._live_client
        created = True
        try:
            try:
                client.put_object(Bucket=self._bucket, Key=key, Body=b"", IfNoneMatch="*")
            except ClientError as exc:
                if _precondition_failed(exc):
                    # The key is new: only this very write can have created it, its answer lost and the
                    # retry (botocore's) refused. The service did honour the condition.
                    return True
                created = _may_have_written(exc)
                code, status = client_error_code(exc)
                if code == "NotImplemented" or status == 501:
                    return False
                raise
            except Exception as exc:
                # No credentials, a refused TLS handshake: there is nothing to delete, and deleting would
                # fail the same way (after as many retries), only to log a warning about an object that
                # was never written.
                created = not refused_before_sending(exc)
                raise
            try:
                client.put_object(Bucket=self._bucket, Key=key, Body=b"", IfNoneMatch="*")
            except ClientError as exc:
                if _precondition_failed(exc):
                    return True
                raise
            return False
        finally:
            if created:
                self._delete_probe(key)

    def _probe_multipart(self) -> bool:
        """Whether ``CompleteMultipartUpload`` honours ``If-None-Match: *``: two uploads of a new reserved key
        completed with the condition, then the key deleted; the second completion must be refused (412).

        The first object is uploaded in parts too: a service has been seen to honour the condition on a
        completion over an object written by ``PutObject`` but not over one uploaded in parts. A 409
        ``ConditionalRequestConflict`` on the second completion also shows that the condition is evaluated.
        """
        key = self._keys.reserved("probe", uuid.uuid4().hex)

        def empty(upload: MultipartUpload) -> None:
            pass  # complete() uploads the one empty part an upload needs

        created = True
        try:
            try:
                self._upload(key, _STAGING_LAYOUT, empty, True)
            except ClientError as exc:
                if not _precondition_failed(exc):
                    created = _may_have_written(exc)
                    raise
                # The key is new: this completion was retried after its answer was lost (the upload aborted).
            except Exception as exc:
                created = not refused_before_sending(exc)  # as in _probe_put
                raise
            try:
                self._upload(key, _STAGING_LAYOUT, empty, True)
            except ClientError as exc:
                if _precondition_failed(exc) or _conflict(exc):
                    return True
                raise
            return False
        finally:
            if created:
                self._delete_probe(key)

    def _reserved_refusal(self, exc: ClientError, kind: str) -> AccessDeniedError | None:
        """What an ``AccessDenied`` on a reserved key (``kind``: ``probe`` or ``staging``) means, ``None`` for
        any other error.

        A bucket policy or IAM role often grants the artifacts' keys only (``<prefix>/<namespace>/*``): the
        plain translation, "check the credentials and the bucket policy", would send the user to a policy that
        looks right, for a save of an artifact it covers. This names the key outside the namespace that was
        refused, why the store writes there, and what to grant.
        """
        code, _ = client_error_code(exc)
        if code != "AccessDenied":  # a wrong key or signature fails every request alike: the usual message fits
            return None
        pattern = self._keys.reserved(kind, "*")
        if kind == "probe":
            why = (
                "the store checks there, before its first write, that the endpoint honours conditional writes "
                "(If-None-Match)"
            )
            actions = "s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload"
            instead = (
                "; or set ARTIFACT_STORE_S3_CONDITIONAL_WRITES=trust to skip that check (on AWS S3, which honours "
                "the condition)"
            )
        else:
            why = "a stream that cannot seek is uploaded there first, then copied into the artifact's key"
            actions = "s3:PutObject, s3:GetObject, s3:DeleteObject and s3:AbortMultipartUpload"
            instead = ""
        return AccessDeniedError(
            f"S3 refused access (AccessDenied) to {pattern!r} in bucket {self._bucket!r}, outside the namespace: "
            f"{why}; grant {actions} on the keys {pattern!r} (resource arn:aws:s3:::{self._bucket}/{pattern} on "
            f"AWS) as well as on the namespace's{instead}"
        )

    def _delete_probe(self, key: str) -> None:
        """Delete a probe object (there or not); never raises (a failure is logged)."""
        try:
            self._live_client.delete_object(Bucket=self._bucket, Key=key)
        except Exception as exc:
            logger.warning(
                "could not delete the probe object %r: %s", key, client_error_code(exc)[0] or type(exc).__name__
            )

    # -- reading heads --------------------------------------------------------------------------------

    def _read_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        extra: dict[str, Any] = {"IfMatch": etag} if etag else {}
        response = self._live_client.get_object(Bucket=self._bucket, Key=key, Range=f"bytes={start}-{end - 1}", **extra)
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def _existing_header(self, key: str, step_id: str, *, bucket_known: bool) -> Header | None:
        """The verified header of ``step_id``'s object at ``key``, ``None`` if there is none.

        ``bucket_known``: see :meth:`_absent` (``False`` costs a ``HeadBucket`` when nothing is found).

        In the envelope layout the head is read from the body, on the ETag the HEAD answered: an object
        replaced between the two requests (412) is looked at again, ``max_attempts`` times in all.

        Raises:
            ConfigurationError: the bucket does not exist (looked at only without ``bucket_known``).
            BackendUnavailableError: the object was replaced between the two requests every time.
        """
        where = self._where(key)
        for _ in range(self._settings.max_attempts):
            try:
                response = self._live_client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if self._absent(exc, bucket_known=bucket_known):
                    return None
                raise
            found = stored_head(response.get("Metadata", {}), where)
            head = found.head
            if head is None:
                try:
                    head = self._read_range(key, 0, found.size, etag=response.get("ETag"))
                except ClientError as exc:
                    if _missing(exc):
                        return None  # removed between the two requests: not there
                    if _precondition_failed(exc):
                        continue  # replaced between the two requests: there, and the new one is what counts
                    raise
            return self.codec.decode_head(head, place=(self.namespace, step_id))
        raise BackendUnavailableError(
            f"{where} was replaced again and again while its head was read; retry", step_id=step_id
        )

    # -- writing --------------------------------------------------------------------------------------

    def _put(self, key: str, layout: ObjectLayout, payload: bytes, conditional: bool) -> None:
        """One PUT (``If-None-Match: *`` when ``conditional``).

        Raises:
            ClientError: any refusal, 412 and 409 included; :meth:`_write_once` decides what they mean.
        """
        body = layout.prelude + payload if layout.prelude else payload
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if conditional else {}
        self._live_client.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=body,
            Metadata=layout.metadata,
            ContentType=layout.content_type,
            **extra,
        )

    def _upload(
        self,
        key: str,
        layout: ObjectLayout,
        feed: Callable[[MultipartUpload], None],
        conditional: bool,
        *,
        copy_source: str | None = None,
        artifact: bool = False,
    ) -> None:
        """A multipart upload fed by ``feed`` and completed (``If-None-Match: *`` when ``conditional``).

        On any failure the upload is aborted before the error propagates, so nothing is left behind; a
        refused completion (412, 409) is then decided by :meth:`_write_once` like a refused PUT. While it
        runs the upload is registered with the store, so that :meth:`close` in another thread stops it and
        aborts it before closing the client.
        ``copy_source``: the key ``feed`` copies parts from server-side (the upload then declares no
        checksum, see :class:`MultipartUpload`). ``artifact``: the upload writes an artifact, inside
        :meth:`_write_once`, which settles a completion answered ``NoSuchUpload``.

        Raises:
            BackendUnavailableError: S3 answered 404 for something the upload needed: the upload itself
                (``NoSuchUpload``: aborted under us) or ``copy_source`` (deleted before it was copied).
                Nothing was stored; the save may be repeated. Never ``ArtifactNotFoundError``: that would
                say an artifact is missing, and this is a write.
            _CompletionUncertainError: with ``artifact``, the completion was sent and answered
                ``NoSuchUpload`` (:meth:`_write_once` looks at what is stored).
            StoreClosedError: :meth:`close` was called before the upload completed (it was aborted).
            ClientError: any other refusal, 412 and 409 included.
        """
        upload = MultipartUpload(
            self._live_client,
            self._bucket,
            key,
            metadata=layout.metadata,
            content_type=layout.content_type,
            pool=self._pool("parts"),
            concurrency=self._settings.max_concurrency,
            part_size=self._settings.part_size,
            checksums=copy_source is None,
            cancelled=lambda: self.closed,
        )
        self._register(self._uploads, upload)
        try:
            upload.start()
            feed(upload)
            upload.complete(if_none_match=conditional)
        except BaseException as exc:
            upload.abort()  # sends nothing if close() has aborted it already
            if self.closed and isinstance(exc, Exception) and not isinstance(exc, StoreClosedError):
                raise self._closed_error() from exc
            vanished = self._vanished(exc, key, copy_source)
            if vanished is None:
                raise
            vanished.__cause__ = exc
            if artifact and upload.completion_sent and client_error_code(exc)[0] == "NoSuchUpload":
                raise _CompletionUncertainError(vanished) from exc
            raise vanished from exc
        finally:
            with self._lock:
                self._uploads.discard(upload)
            if upload.creation_repeated:
                self._abort_strays(upload, exclusive=not artifact)

    def _abort_strays(self, upload: MultipartUpload, *, exclusive: bool) -> None:
        """After a creation that botocore sent again, abort the upload its lost attempt may have created.

        Only a key no other writer uses (``exclusive``: a staging or probe key) can be cleaned so: at an
        artifact's key, another writer's upload in progress cannot be told from a stray, and is left for a
        bucket lifecycle rule (a warning says so). Never raises (a failure is logged).
        """
        key = upload.key
        if not exclusive:
            logger.warning(
                "the creation of the multipart upload of %r was sent again after a failed attempt, which may have "
                "created an upload that is left incomplete; a bucket lifecycle rule AbortIncompleteMultipartUpload "
                "removes it",
                key,
            )
            return
        try:
            listing = self._live_client.list_multipart_uploads(Bucket=self._bucket, Prefix=key)
            for stray in listing.get("Uploads", []):
                if stray.get("Key") == key and stray.get("UploadId") not in (None, upload.upload_id):
                    self._live_client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=stray["UploadId"])
        except Exception as exc:
            logger.warning(
                "could not abort the stray uploads of %r: %s", key, client_error_code(exc)[0] or type(exc).__name__
            )

    def _vanished(self, exc: BaseException, key: str, copy_source: str | None) -> BackendUnavailableError | None:
        """What a 404 during an upload means: something the write needed is gone (``None``: not a 404).

        A missing bucket is left to the usual mapping (``ConfigurationError``).
        """
        code, _ = client_error_code(exc)
        if code == "NoSuchBucket" or not (_missing(exc) or code == "NoSuchUpload"):
            return None
        if code == "NoSuchUpload":
            what = (
                f"the multipart upload to {key!r} was aborted while it was being written (by an "
                "AbortIncompleteMultipartUpload lifecycle rule that acts too soon, or another client)"
            )
        elif copy_source is not None:
            what = (
                f"the staging object {copy_source!r} vanished before it was copied into {key!r} (a lifecycle "
                "rule that expires the .staging/ prefix too soon, or another client deleted it)"
            )
        else:
            what = f"S3 answered 404 ({code or 'no code'}) while writing {key!r}: something the upload needed vanished"
        return BackendUnavailableError(f"{what}, in bucket {self._bucket!r}; nothing was stored, retry the save")

    def _write_once(
        self,
        step_id: str,
        key: str,
        header: Header,
        write: Callable[[bool], None],
        overwrite: bool,
        *,
        multipart: bool,
    ) -> None:
        """Run ``write(conditional)`` under the write-once rule: the one place that decides what a refused
        conditional write (single PUT or multipart completion alike) means.

        ``multipart``: ``write`` completes a multipart upload, so the completion's handling of the condition
        is what counts (probed on its own), and an existing artifact is looked for before writing (worth one
        HEAD before a large upload). Without working conditional writes the check always runs and the write
        is unconditional.

        A conditional write can end without settling the id: a 409 ``ConditionalRequestConflict`` (another
        conditional write or a delete of the key was in flight; S3 asks to retry, and for a multipart upload
        to start it again) or a 412 whose object is deleted before we look. Then the stored artifact is read:
        the same artifact is success, a different one :class:`ArtifactExistsError`, none at all means
        writing again, ``max_attempts`` writes in all (the configured retry policy), backing off after a 409.

        Raises:
            ArtifactExistsError: a different artifact is stored under ``step_id``.
            ConfigurationError: the endpoint ignores the condition on this kind of write (``require``).
            BackendUnavailableError: every attempt was left unsettled by a deleted object.
            ClientError: the last 409 when every attempt was left unsettled by conflicts, and any other
                failure of the write or the look (the caller translates them: a 409 becomes a retryable
                :class:`BackendUnavailableError` naming its code).
        """
        if overwrite:
            try:
                write(False)
            except _CompletionUncertainError as uncertain:
                self._settle_uncertain(step_id, key, header, uncertain, overwrite=True)
            return
        atomic = self._ensure_conditional(multipart=multipart)
        look = multipart or not atomic
        attempts = self._settings.max_attempts
        unsettled: ClientError | None = None
        for attempt in range(attempts + 1):
            if look:
                # A missing bucket is told by the write that follows: no HeadBucket on this common path.
                existing = self._existing_header(key, step_id, bucket_known=True)
                if existing is not None:
                    if existing.identity() == header.identity():
                        return
                    raise self._exists_error(step_id)
            if attempt == attempts:
                break  # the last write was not settled and nothing is stored: give up
            try:
                write(atomic)
                return
            except _CompletionUncertainError as uncertain:
                self._settle_uncertain(step_id, key, header, uncertain, overwrite=False)
                return
            except ClientError as exc:
                if not atomic:
                    raise
                if _conflict(exc):
                    # The other write may be about to finish: wait before looking, so that its artifact
                    # settles the id instead of another upload.
                    delay = min(_CONFLICT_BACKOFF_CAP, _CONFLICT_BACKOFF * 2**attempt)
                    time.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not a secret)
                elif not _precondition_failed(exc):
                    raise
                unsettled = exc
            look = True
        if unsettled is not None and _conflict(unsettled):
            raise unsettled  # translated to BackendUnavailableError naming the code; the caller may retry
        raise BackendUnavailableError(
            f"saving {step_id!r}: the object kept being created and deleted by other writers; retry",
            step_id=step_id,
        )

    def _settle_uncertain(
        self, step_id: str, key: str, header: Header, uncertain: _CompletionUncertainError, *, overwrite: bool
    ) -> None:
        """Return if the artifact stored under ``key`` is the one just written (its completion went in), else
        raise what the completion's ``NoSuchUpload`` and the stored object say together.

        An identical artifact stored is the state the save asked for, whichever upload stored it.

        Raises:
            ArtifactExistsError: a write-once save (not ``overwrite``) finds a different artifact stored.
            BackendUnavailableError: no artifact is stored, or an overwriting save finds a different one
                (``uncertain.error``: nothing of ours is stored, retry the save).
        """
        existing = self._existing_header(key, step_id, bucket_known=True)
        if existing is not None and existing.identity() == header.identity():
            logger.debug("the completion of %r answered NoSuchUpload, and the artifact is stored: a success", key)
            return
        if existing is not None and not overwrite:
            # The id holds a different message. Either another writer stored it (our upload was aborted, or
            # our conditional completion would have been refused with a 412 anyway), or our completion went
            # in, lost its answer, and an overwriting save replaced it before this HEAD. One HEAD cannot tell
            # the two apart, and both leave the id taken by a different message: that is what a write-once
            # save reports, and what repeating it would report. A retryable error would only send the caller
            # round again to the same answer. (In the second case our artifact was stored for a moment and
            # replaced, the same end state as an overwrite that came just after a successful save.)
            error = self._exists_error(step_id)
            raise ArtifactExistsError(
                f"{error} (the completion of its upload answered NoSuchUpload: another writer stored it, or "
                "replaced ours with overwrite=True)",
                step_id=error.step_id,
                namespace=error.namespace,
                backend=error.backend,
            ) from uncertain.error.__cause__
        raise uncertain.error from uncertain.error.__cause__

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        encoded = self.codec.encode(message, place=(self.namespace, step_id))
        key = self._keys.key(step_id)
        layout = layout_for(encoded.head, encoded.header)
        payload = encoded.payload
        part_size = self._settings.part_size
        large = len(layout.prelude) + len(payload) >= self._settings.multipart_threshold
        if large:
            check_part_count(len(payload), part_size)  # the prelude travels in the first part

        def feed(upload: MultipartUpload) -> None:
            view = memoryview(payload)
            # One copy of the first part (prelude and payload joined), not a slice copy and then a second.
            upload.add(b"".join((layout.prelude, view[:part_size])))
            for offset in range(part_size, len(payload), part_size):
                part = view[offset : offset + part_size]
                buffer = upload.buffer()
                buffer[: len(part)] = part
                upload.add_buffer(buffer, len(part))

        def write(conditional: bool) -> None:
            if large:
                self._upload(key, layout, feed, conditional, artifact=True)
            else:
                self._put(key, layout, payload, conditional)

        self._write_once(step_id, key, encoded.header, write, overwrite, multipart=large)

    def _save_many(self, items: builtins.list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        if not overwrite:
            # Once, before the workers start. Overwriting never needs the condition (save does not probe for
            # it either): probing would cost requests and refuse the batch where the endpoint ignores it.
            self._ensure_conditional()

        def save_one(step_id: str, message: Message) -> None:
            try:
                self._save(step_id, message, overwrite, ttl)
            except Exception as exc:
                self._raise(exc, "save", step_id)

        pool = self._pool("batch")
        # The pool runs each save in a copy of the caller's context (ContextThreadPoolExecutor): what the
        # caller set for its codec (reusing_verified_digests) holds in the workers too.
        futures = [pool.submit(save_one, step_id, message) for step_id, message in items]
        wait(futures)
        for future in futures:
            future.result()  # the first failure, in input order

    # -- streaming writes -----------------------------------------------------------------------------

    def _save_stream(
        self, step_id: str, stream: IO[bytes], template: Message, overwrite: bool, ttl: float | None
    ) -> None:
        def as_message(data: bytes) -> Message:
            # A copy keeps the template's created_at; the validation it skips has nothing to do, because
            # _read_up_to returns bytes, which content keeps as they are.
            return template.model_copy(update={"content": data})

        threshold, part_size = self._settings.multipart_threshold, self._settings.part_size
        key = self._keys.key(step_id)
        seekable = _start_of(stream)
        if seekable is not None:
            start, remaining = seekable
            if remaining < threshold:
                # The end a seek reports is a hint, not the stream's length: a file of /proc says 0 (its
                # content is made as it is read), a file may grow meanwhile. One byte more than it says tells
                # whether the stream goes on; if so it is read on, to its real end or the threshold.
                data = _read_up_to(stream, remaining + 1)
                if remaining < len(data) < threshold:
                    data += _read_up_to(stream, threshold - len(data))
                if len(data) < threshold:
                    self._save(step_id, as_message(data), overwrite, ttl)
                    return
                # As long as a large artifact after all: two passes from the start, of a size not known yet
                # (a stream past 10,000 parts fails at its 10,001st, as a pipe does).
                del data
                stream.seek(start)
            else:
                check_part_count(remaining, part_size)  # before the stream is read: too large is known already
            if not overwrite:
                self._ensure_conditional(multipart=True)  # a refusal before the stream is read
            self._stream_seekable(step_id, key, stream, start, template, overwrite)
            return
        pending: list[bytes] = []
        total = 0
        while total < threshold:
            chunk = _read_up_to(stream, part_size)
            if chunk:
                pending.append(chunk)
                total += len(chunk)
            if len(chunk) < part_size:
                break
        if total < threshold:
            self._save(step_id, as_message(b"".join(pending)), overwrite, ttl)
            return
        if not overwrite:
            self._ensure_conditional(multipart=True)  # a refusal before the stream is uploaded to staging
        self._stream_staged(step_id, key, stream, pending, template, overwrite)

    def _head_for(self, step_id: str, template: Message, size: int, digest: str) -> tuple[Header, ObjectLayout]:
        head, header = self.codec.encode_stream_head(
            template, size=size, digest=digest, place=(self.namespace, step_id)
        )
        return header, layout_for(head, header)

    def _stream_seekable(
        self, step_id: str, key: str, stream: IO[bytes], start: int, template: Message, overwrite: bool
    ) -> None:
        """Two passes over a seekable stream: hash it, then upload it with its head in the metadata.

        The second pass hashes again and aborts the upload before completing it if the bytes changed, so a
        file modified while it is saved never becomes an artifact.
        """
        part_size = self._settings.part_size
        hasher = new_hasher(part_size)
        size = 0
        scratch = bytearray(part_size)
        while count := _fill(stream, scratch):
            hasher.update(memoryview(scratch)[:count])
            size += count
        del scratch
        digest = hasher.hexdigest()
        header, layout = self._head_for(step_id, template, size, digest)

        def feed(upload: MultipartUpload) -> None:
            stream.seek(start)
            check = new_hasher(part_size)
            seen = 0
            prelude = layout.prelude
            while seen < size:
                buffer = upload.buffer()
                count = _fill(stream, buffer, min(part_size, size - seen))
                if not count:
                    break
                check.update(memoryview(buffer)[:count])
                seen += count
                if prelude:
                    upload.add(prelude + memoryview(buffer)[:count])
                    upload.release(buffer)
                    prelude = b""
                else:
                    upload.add_buffer(buffer, count)
            if seen != size or check.hexdigest() != digest:
                raise SerializationError(f"the stream saved as {step_id!r} changed while it was being uploaded")

        def write(conditional: bool) -> None:
            self._upload(key, layout, feed, conditional, artifact=True)

        self._write_once(step_id, key, header, write, overwrite, multipart=True)

    def _stream_staged(
        self,
        step_id: str,
        key: str,
        stream: IO[bytes],
        pending: builtins.list[bytes],
        template: Message,
        overwrite: bool,
    ) -> None:
        """A stream that cannot seek: upload it to a staging key while hashing it, then copy it server-side
        into its final key with the head (known only now) in the metadata, conditionally."""
        part_size = self._settings.part_size
        staging = self._keys.reserved("staging", uuid.uuid4().hex)
        hasher = new_hasher(part_size)
        size = 0
        staged: MultipartUpload | None = None  # the staging upload, once created
        # Registered before the staging upload starts: close() deletes it if this thread cannot.
        self._register(self._staging, staging)

        def feed_staging(upload: MultipartUpload) -> None:
            nonlocal size, staged
            staged = upload
            while pending:
                chunk = pending.pop(0)
                hasher.update(chunk)
                size += len(chunk)
                upload.add(chunk)
            while True:
                buffer = upload.buffer()
                count = _fill(stream, buffer)
                if not count:
                    upload.release(buffer)
                    break
                hasher.update(memoryview(buffer)[:count])
                size += count
                upload.add_buffer(buffer, count)

        try:
            try:
                self._upload(staging, _STAGING_LAYOUT, feed_staging, False)
            except ClientError as exc:
                refused = self._reserved_refusal(exc, "staging")
                if refused is None:
                    raise
                raise refused from exc
            header, layout = self._head_for(step_id, template, size, hasher.hexdigest())

            def assemble(upload: MultipartUpload) -> None:
                offset = 0
                if layout.prelude:
                    offset = min(size, part_size)
                    upload.add(layout.prelude + self._read_range(staging, 0, offset))
                while offset < size:
                    end = min(size, offset + max(part_size, _COPY_PART_SIZE))
                    upload.add_copy(staging, offset, end)
                    offset = end

            def write(conditional: bool) -> None:
                self._upload(key, layout, assemble, conditional, copy_source=staging, artifact=True)

            self._write_once(step_id, key, header, write, overwrite, multipart=True)
        finally:
            # The staging object exists only once its upload's completion was sent: an upload refused or
            # failed before that (its parts aborted) left nothing, and a delete would only fail the same way
            # (a policy that refuses the .staging/ keys, an unreachable endpoint) and warn of an object that
            # never existed.
            self._delete_staging(staging, created=staged is not None and staged.completion_sent)

    def _delete_staging(self, staging: str, *, created: bool) -> None:
        """Delete a staging object if it may have been ``created`` (there or not: S3 answers a delete of a
        missing key with success), then forget it; never raises (a failure is logged, but a 404: nothing is
        left)."""
        try:
            if created:
                self._live_client.delete_object(Bucket=self._bucket, Key=staging)
        except StoreClosedError:
            pass  # close() has begun: it deletes the object (still registered) before closing the client
        except Exception as exc:
            if not _missing(exc):
                logger.warning(
                    "could not delete the staging object %r: %s",
                    staging,
                    client_error_code(exc)[0] or type(exc).__name__,
                )
        finally:
            with self._lock:
                self._staging.discard(staging)

    # -- reading --------------------------------------------------------------------------------------

    def _get_object(self, step_id: str, key: str) -> Any:
        try:
            return self._live_client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if self._absent(exc):
                raise self._not_found(step_id) from None
            raise

    def _get(self, step_id: str) -> Message:
        key = self._keys.key(step_id)
        response = self._get_object(step_id, key)
        body = response["Body"]
        try:
            found = stored_head(response.get("Metadata", {}), self._where(key))
            data = body.read()
        finally:
            body.close()
        place = (self.namespace, step_id)
        if found.head is not None:
            return self.codec.decode(found.head, data, place=place)
        view = memoryview(data)
        return self.codec.decode(view[: found.size], view[found.size :], place=place)

    def _get_many(self, step_ids: builtins.list[str]) -> dict[str, Message]:
        def get_one(step_id: str) -> Message | None:
            try:
                return self._get(step_id)
            except ArtifactNotFoundError:
                return None
            except Exception as exc:
                self._raise(exc, "get", step_id)

        # The pool decodes each read in a copy of the caller's context (ContextThreadPoolExecutor): a limit
        # the caller set (limiting_json_content, as the artifact server sets it around a read) holds there too.
        results = builtins.list(self._pool("batch").map(get_one, step_ids))
        missing = [step_id for step_id, message in zip(step_ids, results, strict=True) if message is None]
        if missing:
            raise self._missing_many(missing)
        return {step_id: message for step_id, message in zip(step_ids, results, strict=True) if message is not None}

    def _open(self, step_id: str) -> IO[bytes]:
        return self._open_with_header(step_id)[1]

    def _open_with_header(self, step_id: str) -> tuple[Header, IO[bytes]]:
        key = self._keys.key(step_id)
        response = self._get_object(step_id, key)
        body = response["Body"]
        try:
            found = stored_head(response.get("Metadata", {}), self._where(key))
            chunks: Iterator[bytes] = body.iter_chunks(chunk_size=_READ_CHUNK)
            head = found.head
            if head is None:
                head, chunks = split_prelude(chunks, found.size)
            header = self.codec.decode_head(head, place=(self.namespace, step_id))
            if header.compression is not None:
                # Only JSON and text are compressed, and those are read whole by get() anyway.
                message = self.codec.decode_payload(header, b"".join(chunks))
                body.close()
                return header, content_stream(message)

            def fail(exc: Exception) -> NoReturn:
                self._raise(exc, "open", step_id)

            reader = PayloadReader(chunks, header, release=body.close, fail=fail)
        except BaseException:
            body.close()
            raise
        return header, io.BufferedReader(reader, buffer_size=_READ_CHUNK)

    def _exists(self, step_id: str) -> bool:
        return self._look(self._keys.key(step_id)) is not False

    def _look(self, key: str) -> str | bool:
        """The ETag of the object at ``key`` (``True``: there, ETag not told; ``False``: not there).

        A GET of the first byte, not a HEAD: as many requests, but its 404 says NoSuchKey or NoSuchBucket,
        so a deleted bucket raises instead of reading as "no artifact", with no second request.

        Raises:
            ConfigurationError: the bucket does not exist.
            ClientError: any other failure (translated by the caller).
        """
        try:
            response = self._live_client.get_object(Bucket=self._bucket, Key=key, Range="bytes=0-0")
        except ClientError as exc:
            code, status = client_error_code(exc)
            if code in _EXISTING_CODES or status == 416:
                # An empty object has no first byte; an archived one cannot be read but is there.
                etag = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("etag")
                return etag if isinstance(etag, str) and etag else True
            if self._absent(exc):
                return False
            raise
        response["Body"].close()
        etag = response.get("ETag")
        return etag if etag else True

    def _etag_of(self, key: str) -> str | bool:
        """The ETag of the object at ``key`` from a ``HeadObject`` (``True``: there, ETag not told; ``False``:
        not there). For an object :meth:`_look` found without learning its ETag: the bucket is known to exist.

        Raises:
            ClientError: any failure but a missing object (translated by the caller).
        """
        try:
            response = self._live_client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if self._absent(exc, bucket_known=True):
                return False
            raise
        etag = response.get("ETag")
        return etag if etag else True

    def _delete(self, step_id: str) -> bool:
        """Delete the object the look found, on its ETag (``If-Match``), so that of two concurrent deleters
        only the one whose ``DeleteObject`` removed it reports ``True``.

        Without the condition both would look, both find the object, both delete (S3's delete does not say
        whether the key existed) and both report it deleted. With it, the later delete is answered 404
        ``NoSuchKey``: the object is gone, not by us. A 412 (replaced since the look: an overwrite, or a
        delete and a save) or a 409 ``ConditionalRequestConflict`` (a write or delete of the key in flight)
        means looking again and deleting what is there then, ``max_attempts`` times in all. An endpoint that
        ignores ``If-Match`` on ``DeleteObject`` deletes unconditionally: the behaviour without it; one that
        refuses it (501 ``NotImplemented``) is sent unconditional deletes from then on, with a warning.

        Raises:
            BackendUnavailableError: the object was replaced between the look and the delete every time.
        """
        key = self._keys.key(step_id)
        for _ in range(self._settings.max_attempts):
            found = self._look(key)
            if found is True and self._conditional_delete:
                # The look's refusal carried no ETag: S3 answers the first byte of an empty object (an artifact
                # of b"" or "") 416 with none. Without one the delete would be unconditional, and every
                # concurrent deleter of it would report it deleted.
                found = self._etag_of(key)
            if found is False:
                return False
            conditional = isinstance(found, str) and self._conditional_delete
            extra: dict[str, Any] = {"IfMatch": found} if conditional else {}
            try:
                self._live_client.delete_object(Bucket=self._bucket, Key=key, **extra)
            except ClientError as exc:
                if _precondition_failed(exc) or _conflict(exc):
                    continue
                code, status = client_error_code(exc)
                if conditional and (status == 501 or code == "NotImplemented"):
                    logger.warning(
                        "the S3 endpoint %s refuses If-Match on DeleteObject (%s); deleting unconditionally, so two "
                        "concurrent deletes of one artifact may both report it deleted",
                        self._endpoint_label(),
                        code or status,
                    )
                    self._conditional_delete = False
                    self._live_client.delete_object(Bucket=self._bucket, Key=key)
                    return True
                if code != "NoSuchKey":
                    raise
                # Gone before our delete reached it. Unless botocore sent the delete again after an attempt
                # whose answer was lost: that attempt may be the one that removed it, and the artifact
                # was there when we looked, so it counts as ours (the unconditional delete's answer).
                retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                return bool(retried)
            return True
        raise BackendUnavailableError(
            f"deleting {step_id!r}: the object was replaced between each look and delete; retry", step_id=step_id
        )

    # -- listing and clearing -------------------------------------------------------------------------

    def _pages(self) -> Iterator[builtins.list[tuple[str, str]]]:
        """``(key, step id)`` of this namespace's artifacts, one list-objects page (<= 1,000 keys) at a time."""
        paginator = self._live_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=self._keys.namespace_prefix):
            pairs = []
            for item in page.get("Contents", []):
                step_id = self._keys.step_id(item["Key"])
                if step_id is not None:
                    pairs.append((item["Key"], step_id))
            yield pairs

    def _info_of(self, pair: tuple[str, str]) -> ArtifactInfo | None:
        key, step_id = pair
        try:
            # The bucket was just listed: a key gone since then is an artifact deleted meanwhile.
            header = self._existing_header(key, step_id, bucket_known=True)
        except Exception as exc:
            self._raise(exc, "list", step_id)
        return header.info(step_id) if header is not None else None

    def _info(self, step_id: str) -> ArtifactInfo:
        header = self._existing_header(self._keys.key(step_id), step_id, bucket_known=False)
        if header is None:
            raise self._not_found(step_id)
        return header.info(step_id)

    def _namespaces(self) -> Iterable[str]:
        paginator = self._live_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=self._keys.root, Delimiter="/"):
            named = [
                (namespace, KeyLayout(self._settings.prefix, namespace))
                for common in page.get("CommonPrefixes", [])
                if (namespace := self._keys.namespace_of(common.get("Prefix", ""))) is not None
            ]
            # A prefix is a namespace's only if it holds an artifact: a console "folder" (an empty object named
            # "<ns>/"), a file another tool dropped, or another key prefix's first segment (with an empty
            # prefix) holds none, and clear() leaves those objects alone, so such a prefix was listed for ever.
            held = self._pool("batch").map(self._holds_artifact, [keys for _, keys in named])
            for (namespace, _), holds in zip(named, held, strict=True):
                if holds:
                    yield namespace

    def _holds_artifact(self, keys: KeyLayout) -> bool:
        """Whether the namespace of ``keys`` holds an object whose key is an id's.

        Reads its keys only as far as the first such one: one ``ListObjectsV2`` for a namespace of artifacts.
        """
        paginator = self._live_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=keys.namespace_prefix):
            if any(keys.step_id(item["Key"]) is not None for item in page.get("Contents", [])):
                return True
        return False

    def _list(self) -> Iterable[ArtifactInfo]:
        pool = self._pool("batch")
        for pairs in self._pages():
            for info in pool.map(self._info_of, pairs):
                if info is not None:
                    yield info

    def _list_page(self, after: str | None, limit: int) -> builtins.list[ArtifactInfo]:
        # Keys sort unlike the ids they encode ("%41" for "A" sorts before "-", a long id's "~" form after
        # everything), so StartAfter cannot start a page. The page's ids are picked from the keys alone (one
        # ListObjectsV2 per 1,000 artifacts, no HeadObject), and only the page's objects are read.
        def names() -> Iterator[tuple[str, str]]:
            for pairs in self._pages():
                for key, step_id in pairs:
                    yield step_id, key

        def infos(chosen: builtins.list[tuple[str, str]]) -> Iterator[ArtifactInfo | None]:
            return self._pool("batch").map(self._info_of, [(key, step_id) for step_id, key in chosen])

        return self._page_of_ids(names, after, limit, infos)

    def _clear(self) -> int:
        removed = 0
        for pairs in self._pages():
            for offset in range(0, len(pairs), DELETE_BATCH):
                removed += self._delete_batch([key for key, _ in pairs[offset : offset + DELETE_BATCH]], removed)
        return removed

    def _delete_batch(self, keys: builtins.list[str], removed_before: int) -> int:
        """Delete ``keys`` (at most :data:`DELETE_BATCH`) with ``DeleteObjects``; return how many went.

        S3 answers 200 and refuses some keys in the body, e.g. with ``SlowDown`` or ``InternalError`` under
        load, which botocore does not retry (the request succeeded): those keys are sent again after a
        backoff, ``max_attempts`` requests in all. A key refused any other way ends the batch.

        Raises:
            AccessDeniedError: a key was refused with ``AccessDenied``.
            BackendUnavailableError: keys were still refused as busy after ``max_attempts`` requests.
            BackendError: a key was refused for another reason.
        """
        removed = 0
        pending = keys
        for attempt in range(self._settings.max_attempts):
            if attempt:
                delay = min(_CONFLICT_BACKOFF_CAP, _CONFLICT_BACKOFF * 2**attempt)
                time.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not a secret)
            batch: builtins.list[ObjectIdentifierTypeDef] = [{"Key": key} for key in pending]
            response = self._live_client.delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors", [])
            removed += len(pending) - len(errors)
            if not errors:
                return removed
            busy = [str(error.get("Key", "")) for error in errors if busy_code(str(error.get("Code", "")))]
            if len(busy) < len(errors):
                break  # a refusal that waiting does not help
            pending = busy
        codes = [str(error.get("Code", "?")) for error in errors]
        code = next((code for code in codes if not busy_code(code)), codes[0])
        text = (
            f"clear: S3 refused to delete {len(errors)} object(s) in bucket {self._bucket!r} ({code}); "
            f"{removed_before + removed} removed before it stopped"
        )
        if code == "AccessDenied":
            raise AccessDeniedError(text)
        if busy_code(code):
            raise BackendUnavailableError(f"{text} (retryable)")
        raise BackendError(text)

    # -- lifecycle ------------------------------------------------------------------------------------

    def _close(self) -> None:
        """Stop the writes in flight in other threads, settle what they leave, then close the client.

        The store is already marked closed: from here no request of an operation starts (see
        :attr:`_live_client`), and no multipart upload creates, sends a part or completes. Queued parts and
        batch items are cancelled, and the requests already on the wire are waited for (each is bounded by
        the client's timeouts and retries): S3 may keep a part that finishes after the abort of its
        upload. Then every upload still open is aborted and every staging object deleted, on the client
        that is still open, and only then is the client closed. The writing threads raise
        ``StoreClosedError`` at their next step.
        """
        _STORES.discard(self)  # nothing left to reset in a child forked from now on
        with self._lock:
            pools, self._pools = self._pools, {}
            uploads = builtins.list(self._uploads)
            staging = builtins.list(self._staging)
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        client = self._client
        if client is None:  # a forked child that never used the store: nothing of its own is in flight
            self._forget_log_secrets()
            return
        for upload in uploads:
            upload.stop()
        for key in staging:
            try:
                client.delete_object(Bucket=self._bucket, Key=key)
            except Exception as exc:
                if not _missing(exc):  # a service that answers 404 to a delete of a missing key: nothing left
                    logger.warning(
                        "could not delete the staging object %r: %s",
                        key,
                        client_error_code(exc)[0] or type(exc).__name__,
                    )
        client.close()
        self._forget_log_secrets()  # after the last request of this store's client
