"""Small value types of the contract: :class:`ArtifactInfo` and :class:`Capabilities`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["ArtifactInfo", "Capabilities"]


@dataclass(frozen=True)
class ArtifactInfo:
    """What :meth:`ArtifactStore.list` reports about one artifact, without reading its payload.

    Attributes:
        step_id: the artifact's step id.
        size: the content size in bytes (uncompressed; for JSON and text, of its UTF-8 encoding).
        digest: ``"<algorithm>:<hex>"`` of the content bytes, e.g. ``"blake3:ab12..."``.
        media_type: the message's media type.
        schema_name: the message's schema name, if it has one.
        created_at: when the message was created (UTC).
    """

    step_id: str
    size: int
    digest: str
    media_type: str
    schema_name: str | None
    created_at: datetime


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers. The runtime and the conformance kit decide by these, never by backend name.

    Attributes:
        cross_process: other processes (and machines, for network backends) see the same artifacts.
        persistent: artifacts survive the process (and, per the backend's docs, a server restart).
        native_ttl: ``save(..., ttl=...)`` is supported and expiry is enforced by the backend.
        atomic_create: write-once is enforced atomically by the backend, even across processes.
        streaming: ``save_stream``/``open`` keep memory bounded whatever the artifact size.
        list_namespaces: the backend can enumerate namespaces (used by garbage collection).
        max_artifact_bytes: the largest payload accepted, or ``None`` for no fixed limit. A store's settings may
            lower it: ``ArtifactStore._max_artifact_bytes()`` gives the store's own bound, which
            ``save_stream`` stops reading at.
    """

    cross_process: bool = False
    persistent: bool = False
    native_ttl: bool = False
    atomic_create: bool = True
    streaming: bool = False
    list_namespaces: bool = False
    max_artifact_bytes: int | None = None

    @property
    def outlives_the_process(self) -> bool:
        """Whether the artifacts are still there for another process once this one exits: ``persistent`` or
        ``cross_process``. Not ``persistent`` alone: the http client cannot promise persistence (its server's
        store decides), yet its artifacts are on the server, which another process reads; only an in-process
        store (memory) loses them with the process. Raises nothing."""
        return self.persistent or self.cross_process
