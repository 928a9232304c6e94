"""One multipart upload with bounded parallelism, that is either completed or aborted, never left behind."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from artifactstore_core.errors import PayloadTooLargeError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["MAX_PARTS", "MultipartUpload", "UploadCancelledError", "check_part_count"]

#: S3's most parts per upload.
MAX_PARTS = 10_000
_MIB = 1024 * 1024


def check_part_count(size: int, part_size: int) -> None:
    """Refuse an upload of ``size`` bytes that needs more than :data:`MAX_PARTS` parts of ``part_size``.

    For a size known before the upload starts (a payload in memory, a file), so that an artifact S3 cannot
    take in one upload is refused before its bytes are read, hashed or sent, not after 10,000 parts.

    Raises:
        PayloadTooLargeError: naming the smallest ``ARTIFACT_STORE_S3_PART_SIZE`` (whole MiB) that would do.
    """
    parts = -(-size // part_size)
    if parts > MAX_PARTS:
        needed = -(-size // MAX_PARTS)
        raise PayloadTooLargeError(
            f"{size} bytes need {parts} parts of {part_size} bytes, more than the {MAX_PARTS} S3 allows in one "
            f"upload; set ARTIFACT_STORE_S3_PART_SIZE to at least {-(-needed // _MIB)} MiB"
        )


logger = logging.getLogger("artifactstore_s3")


class UploadCancelledError(Exception):
    """The upload was cancelled (its store is being closed): no request of it is started any more.

    Internal to the backend: the store raises ``StoreClosedError`` with this chained.
    """


def _never() -> bool:
    return False


class MultipartUpload:
    """A multipart upload to ``key``: :meth:`start` it, add parts in order, then :meth:`complete`; on any
    failure, :meth:`abort`.

    At most ``concurrency`` parts are in flight at once. A caller that reads each part into
    :meth:`buffer` and hands it to :meth:`add_buffer` holds at most ``concurrency`` parts in memory;
    :meth:`add` takes bytes the caller already holds and waits for the oldest part when the window is full.
    ``checksums=False`` is for an upload assembled from server-side copies: it declares no checksum
    algorithm (an upload of parts sent from here declares CRC32 where botocore sends part checksums).

    Once ``cancelled()`` returns true (the store is being closed), no request of the upload starts any more
    (no creation, no part, no completion): each raises :class:`UploadCancelledError` instead, and
    another thread may then settle the upload with :meth:`stop`. The creation, the completion and the
    abort are sent one at a time under a lock, so :meth:`stop` waits for one in flight and never aborts
    an upload whose completion was sent, nor misses one whose creation was.

    Raises (from every method): botocore exceptions, which the store translates;
    :class:`PayloadTooLargeError` past :data:`MAX_PARTS` parts; :class:`UploadCancelledError`.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        metadata: dict[str, str],
        content_type: str,
        pool: ThreadPoolExecutor,
        concurrency: int,
        part_size: int,
        checksums: bool = True,
        cancelled: Callable[[], bool] = _never,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self.key = key
        self._pool = pool
        self._concurrency = concurrency
        self._part_size = part_size
        # Each part in flight, with the reusable buffer it was read into (None for bytes given by the caller).
        self._inflight: deque[tuple[Future[CompletedPartTypeDef], bytearray | None]] = deque()
        self._free: list[bytearray] = []
        self._buffers = 0
        self._parts: list[CompletedPartTypeDef] = []
        self._number = 0
        self._cancelled = cancelled
        # Held while the creation, the completion or the abort is sent; _settled: completed or aborted.
        self._lock = threading.Lock()
        self._settled = False
        self.upload_id: str | None = None
        #: Whether the completion was sent (what S3 did with it may be unknown: its answer can be lost).
        self.completion_sent = False
        #: Whether the creation needed more than one attempt (an upload of a lost attempt may exist).
        self.creation_repeated = False
        # botocore sends a CRC32 of every part unless told to send checksums only where S3 requires them
        # (request_checksum_calculation, e.g. for an S3-compatible service that refuses them). Where it does,
        # an upload of parts sent from here declares CRC32, as boto3's upload_fileobj does: S3 then checks
        # every part's checksum again at completion and keeps a checksum of the whole object. (moto also
        # assembles such uploads faster: 64 MB completed in about 200 instead of 300 ms.) An upload
        # assembled from server-side copies (``checksums=False``) declares nothing, as boto3's copy does:
        # S3 would then require every copied part's checksum at completion, which some S3-compatible
        # services (MinIO) never answer for a copy.
        self._checksum: dict[str, Any] = (
            {"ChecksumAlgorithm": "CRC32"}
            if checksums and getattr(client.meta.config, "request_checksum_calculation", None) == "when_supported"
            else {}
        )
        self._metadata = metadata
        self._content_type = content_type

    def start(self) -> None:
        """Create the upload on the service (S3's ``CreateMultipartUpload``); before any other method."""
        with self._lock:
            self._check()
            if self._settled:
                raise UploadCancelledError(f"the multipart upload to {self.key!r} was stopped before it started")
            created = self._client.create_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                Metadata=self._metadata,
                ContentType=self._content_type,
                **self._checksum,
            )
            self.upload_id = created["UploadId"]
            # botocore sent the creation again after a failed attempt: that attempt may have created an
            # upload too, whose id never came back (see the store's _abort_strays).
            self.creation_repeated = bool(created.get("ResponseMetadata", {}).get("RetryAttempts"))

    def _started_id(self) -> str:
        if self.upload_id is None:
            raise RuntimeError(f"the multipart upload to {self.key!r} was not started")  # a bug, not a fault
        return self.upload_id

    def _check(self) -> None:
        if self._cancelled():
            raise UploadCancelledError(f"the multipart upload to {self.key!r} was cancelled: its store is closing")

    def _next_number(self) -> int:
        self._check()
        self._number += 1
        if self._number > MAX_PARTS:
            raise PayloadTooLargeError(
                f"an upload to S3 needs more than {MAX_PARTS} parts; raise ARTIFACT_STORE_S3_PART_SIZE"
            )
        return self._number

    def _finish_oldest(self) -> None:
        future, buffer = self._inflight.popleft()
        self._parts.append(future.result())
        if buffer is not None:
            self._free.append(buffer)

    def buffer(self) -> bytearray:
        """A ``part_size`` buffer to read the next part into, for :meth:`add_buffer`.

        At most ``concurrency`` buffers exist: when all are in flight this waits for the oldest part. The
        same buffers are reused for the whole upload, so memory stays at ``concurrency x part_size`` and the
        allocator sees no churn of large blocks (which fragments the heap and inflates resident memory).
        """
        while not self._free and self._buffers >= self._concurrency:
            self._finish_oldest()
        if self._free:
            return self._free.pop()
        self._buffers += 1
        return bytearray(self._part_size)

    def add_buffer(self, buffer: bytearray, size: int) -> None:
        """Upload the first ``size`` bytes of a buffer from :meth:`buffer` as the next part."""
        if size == len(buffer):
            self._submit(self._pool.submit(self._upload, self._next_number(), buffer), buffer)
        else:  # a short last part: upload a copy and the buffer is free again at once
            self._free.append(buffer)
            self.add(bytes(memoryview(buffer)[:size]))

    def release(self, buffer: bytearray) -> None:
        """Give back a buffer from :meth:`buffer` that was not uploaded."""
        self._free.append(buffer)

    def _submit(self, future: Future[CompletedPartTypeDef], buffer: bytearray | None = None) -> None:
        self._inflight.append((future, buffer))
        while len(self._inflight) > self._concurrency:
            self._finish_oldest()

    def add(self, data: bytes | bytearray) -> None:
        """Upload ``data`` as the next part (every part but the last must be at least 5 MiB)."""
        number = self._next_number()
        self._submit(self._pool.submit(self._upload, number, data))

    def add_copy(self, source_key: str, start: int, end: int) -> None:
        """Copy bytes ``[start, end)`` of ``source_key`` (same bucket) server-side as the next part."""
        number = self._next_number()
        self._submit(self._pool.submit(self._copy, number, source_key, start, end))

    def _upload(self, number: int, data: bytes | bytearray) -> CompletedPartTypeDef:
        self._check()  # a part queued before the store began closing is not sent after
        # botocore accepts a bytearray body (its validator allows bytes, bytearray and files); the stubs
        # list only bytes, so the type is narrowed by a cast rather than by copying the part.
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=self.key,
            UploadId=self._started_id(),
            PartNumber=number,
            Body=cast(bytes, data),
            **self._checksum,
        )
        return self._completed(number, response)

    def _copy(self, number: int, source_key: str, start: int, end: int) -> CompletedPartTypeDef:
        self._check()
        response = self._client.upload_part_copy(
            Bucket=self._bucket,
            Key=self.key,
            UploadId=self._started_id(),
            PartNumber=number,
            CopySource={"Bucket": self._bucket, "Key": source_key},
            CopySourceRange=f"bytes={start}-{end - 1}",
        )
        return self._completed(number, response["CopyPartResult"])

    def _completed(self, number: int, result: Mapping[str, Any]) -> CompletedPartTypeDef:
        # A part of an upload that declared CRC32 is listed with the checksum S3 answered for it, which the
        # completion checks against what S3 received. A service that answers none gets the part listed
        # without one, as boto3's upload_fileobj lists it (S3 itself always answers one).
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": result["ETag"]}
        if self._checksum and "ChecksumCRC32" in result:
            part["ChecksumCRC32"] = result["ChecksumCRC32"]
        return part

    def complete(self, *, if_none_match: bool) -> None:
        """Wait for every part and complete the upload (``If-None-Match: *`` when ``if_none_match``).

        Raises:
            ClientError: ``PreconditionFailed`` (412) when ``if_none_match`` and the key exists, or
                ``ConditionalRequestConflict`` (409) when a concurrent write or delete of the key was in
                flight (S3 then wants a new upload, not a second completion of this one); either way the
                caller must :meth:`abort` this upload.
            UploadCancelledError: the upload was cancelled before its completion was sent.
        """
        while self._inflight:
            self._finish_oldest()
        if not self._parts:
            # S3 refuses to complete an upload without parts; an empty body is one empty last part.
            self.add(b"")
            self._finish_oldest()
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        with self._lock:
            self._check()
            if self._settled or self.upload_id is None:
                raise UploadCancelledError(f"the multipart upload to {self.key!r} was aborted before its completion")
            self.completion_sent = True
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": sorted(self._parts, key=lambda part: part["PartNumber"])},
                **extra,
            )
            self._settled = True

    def abort(self) -> None:
        """Stop the upload and release its parts; never raises (a failure is logged). Called by the thread
        that feeds the upload; nothing is sent if it is already settled (completed, or aborted by :meth:`stop`).

        Parts still in flight are cancelled or waited for first: S3 may otherwise keep a part that finishes
        uploading after the abort.
        """
        futures = [future for future, _ in self._inflight]
        for future in futures:
            future.cancel()
        wait(futures)
        self._inflight.clear()
        self._abort_once()

    def stop(self) -> None:
        """Abort the upload from another thread, once ``cancelled()`` is true and no part is in flight any
        more (the store's ``close`` shuts the part pool down first); never raises (a failure is logged).

        Waits for a creation, completion or abort in flight: an upload whose completion was sent is left
        completed, one whose creation was sent is aborted. The feeding thread's own :meth:`abort` then sends
        nothing.
        """
        self._abort_once()

    def _abort_once(self) -> None:
        with self._lock:
            if not self._settled and self.upload_id is not None:
                self._send_abort(self.upload_id)
            self._settled = True

    def _send_abort(self, upload_id: str) -> None:
        for attempt in range(3):
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=upload_id)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return
                failure: Exception = exc
            except BotoCoreError as exc:
                failure = exc
            logger.debug("aborting multipart upload of %r failed (attempt %d)", self.key, attempt + 1)
        logger.warning(
            "could not abort the multipart upload of %r (%s); a bucket lifecycle rule "
            "AbortIncompleteMultipartUpload removes it later",
            self.key,
            type(failure).__name__,
        )
