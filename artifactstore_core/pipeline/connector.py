""":class:`ArtifactConnector`: a step's lazy handle on one upstream artifact."""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from pydantic import BaseModel

from ..ids import validate_step_id
from ..message import Message
from ..store import ArtifactStore

__all__ = ["ArtifactConnector"]

Model = TypeVar("Model", bound=BaseModel)


class ArtifactConnector:
    """Reads the output of one upstream step, on first use, from the execution's store.

    The executor gives each step one connector per declared input. Nothing is read until the step asks,
    so a step that needs only part of its inputs (or only checks :meth:`exists`) never pays for the rest;
    except on a resume, where the executor reads each input reused from the earlier run through its
    connector before the step starts, to verify it (the step then gets that message without a new read).
    The message is read once and then kept (messages are immutable). Use a connector only while its
    step runs: the executor closes the store afterwards.

    Args:
        store: the store of the execution (its namespace is the execution id).
        step_id: the upstream step whose artifact this connector reads.

    Raises:
        InvalidStepIdError: ``step_id`` is not a legal step id.
    """

    def __init__(self, store: ArtifactStore, step_id: str) -> None:
        self._store = store
        self._step_id = validate_step_id(step_id)
        self._message: Message | None = None
        self._lock = threading.Lock()

    @property
    def step_id(self) -> str:
        """The upstream step this connector reads."""
        return self._step_id

    def get(self) -> Message:
        """The upstream message, read from the store on the first call.

        Raises:
            ArtifactNotFoundError: the upstream step has no artifact in this execution.
            ArtifactCorruptedError, BackendError: as :meth:`~artifactstore_core.ArtifactStore.get`.
        """
        with self._lock:
            if self._message is None:
                self._message = self._store.get(self._step_id)
            return self._message

    @property
    def content(self) -> Any:
        """The upstream message's content (frozen JSON, ``str`` or ``bytes``). Raises as :meth:`get`."""
        return self.get().content

    def model(self, model: type[Model], *, check_name: bool = True) -> Model:
        """The upstream content validated as ``model`` (see :meth:`~artifactstore_core.Message.to_model`).

        Raises:
            SchemaMismatchError: the message records a different schema name (with ``check_name``), or
                the content does not validate as ``model``.
            ArtifactNotFoundError, ArtifactCorruptedError, BackendError: as :meth:`get`.
        """
        return self.get().to_model(model, check_name=check_name)

    def exists(self) -> bool:
        """Whether the upstream artifact exists (asks the store unless it was already read).

        Raises:
            BackendError: the backend failed (never reported as ``False``).
        """
        with self._lock:
            if self._message is not None:
                return True
        return self._store.exists(self._step_id)

    def __repr__(self) -> str:
        state = "read" if self._message is not None else "not read"
        return f"<ArtifactConnector step_id={self._step_id!r} {state}>"
