"""A small reference pipeline runtime on top of the store: the plan's "execution flow", for real.

* :class:`ServiceContainer` provides services; :func:`register_artifact_store` registers the configured
  store (and the :class:`StoreConfig` it is built from) so a framework can inject it.
* A :class:`Pipeline` is a DAG of :class:`Step`\\ s: plain callables with declared input step ids.
* An :class:`Executor` runs it on a thread pool (or on spawned worker processes), giving each step an
  :class:`ArtifactConnector` per input and saving its output under the step id, in a namespace of its
  own (the execution id). It clears that namespace on success and keeps it on failure, so a run with the
  same execution id resumes.

Example::

    from artifactstore_core.pipeline import Executor, Pipeline, Step

    def numbers(inputs):
        return [1, 2, 3]

    def total(inputs):
        return sum(inputs["numbers"].content)

    result = Executor().run(Pipeline([Step("numbers", numbers), Step("total", total, inputs=["numbers"])]))
    print(result.output.content)   # 6
    print(result.table())

It is the integration test bed and the demo, not a workflow engine. See ``docs/pipeline.md``.
"""

from __future__ import annotations

from .config import StoreConfig
from .connector import ArtifactConnector
from .container import ServiceContainer, ServiceKey, register_artifact_store
from .errors import ContainerClosedError, InvalidPipelineError, ServiceNotFoundError, StepFailedError
from .executor import Executor, FailurePolicy, Mode, StoreFactory, SuccessPolicy
from .graph import Pipeline, Step, StepFunction
from .results import RunResult, StepResult, StepStatus

__all__ = [
    "ArtifactConnector",
    "ContainerClosedError",
    "Executor",
    "FailurePolicy",
    "InvalidPipelineError",
    "Mode",
    "Pipeline",
    "RunResult",
    "ServiceContainer",
    "ServiceKey",
    "ServiceNotFoundError",
    "Step",
    "StepFailedError",
    "StepFunction",
    "StepResult",
    "StepStatus",
    "StoreConfig",
    "StoreFactory",
    "SuccessPolicy",
    "register_artifact_store",
]
