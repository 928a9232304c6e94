"""Errors of the pipeline runtime. Like every artifactstore error they derive from ``ArtifactStoreError``,
carry a ``retryable`` flag and are picklable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ArtifactStoreError, ConfigurationError, StoreClosedError

if TYPE_CHECKING:
    from .results import RunResult

__all__ = ["ContainerClosedError", "InvalidPipelineError", "ServiceNotFoundError", "StepFailedError"]


class StepFailedError(ArtifactStoreError):
    """A step raised (or its output could not be saved); the execution stopped.

    The step's exception is chained as ``__cause__`` (from a worker process, with the worker's traceback
    as its own ``__cause__``). Artifacts of the steps that finished are kept unless the executor's
    ``on_failure`` policy is ``"clear"``, so running the same pipeline again with the same execution id
    resumes: steps whose artifact exists are skipped.

    Attributes:
        step_id: the step that failed.
        namespace: the execution id (also available as :attr:`execution_id`).
        backend: the backend name, when known.
        result: the :class:`~artifactstore_core.pipeline.RunResult` of the steps so far (statuses,
            durations, sizes), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        step_id: str | None = None,
        namespace: str | None = None,
        backend: str | None = None,
        result: RunResult | None = None,
    ) -> None:
        super().__init__(message, step_id=step_id, namespace=namespace, backend=backend)
        self.result = result

    @property
    def execution_id(self) -> str | None:
        """The execution id to pass to ``Executor.run`` to resume (the namespace of its artifacts)."""
        return self.namespace


class InvalidPipelineError(ArtifactStoreError, ValueError):
    """A pipeline definition is invalid: a duplicate step id, an unknown input, or a cycle.

    The message names the steps concerned. Raised when the :class:`~artifactstore_core.pipeline.Pipeline`
    is built, before anything runs.
    """


class ServiceNotFoundError(ConfigurationError, LookupError):
    """No service is registered under the requested key in a ``ServiceContainer``.

    The message lists the registered keys.
    """


class ContainerClosedError(StoreClosedError):
    """The ``ServiceContainer`` was closed: it resolves nothing more. Create a new one."""
