""":class:`Executor`: runs a :class:`~artifactstore_core.pipeline.Pipeline` on threads or worker processes.

Each execution stores its artifacts in its own namespace, the execution id. A step starts as soon as all
its inputs are saved (not level by level), so independent steps run in parallel. At the end the
namespace is cleared on success and kept on failure, by default; a run with the id of a failed execution
resumes it, skipping every step whose artifact already exists.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process as cfp
import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import time
import types
import uuid
from collections.abc import Callable
from typing import Any, Literal, get_args

from ..errors import ConfigurationError
from ..ids import validate_namespace
from ..store import ArtifactStore
from ._runner import StepOutcome, WorkerTask, execute_step, init_worker, run_in_worker, running_step
from .config import StoreConfig
from .container import ServiceContainer
from .errors import StepFailedError
from .graph import Pipeline, Step
from .results import RunResult, StepResult, StepStatus

__all__ = ["Executor", "FailurePolicy", "Mode", "StoreFactory", "SuccessPolicy"]

#: Where steps run: ``"threads"`` (a thread pool in this process) or ``"processes"`` (spawned workers).
Mode = Literal["threads", "processes"]
#: What happens to an execution's artifacts after it succeeds.
SuccessPolicy = Literal["clear", "keep"]
#: What happens to an execution's artifacts after a step fails.
FailurePolicy = Literal["keep", "clear"]
#: Builds a store bound to the namespace it is given (the execution id). :class:`StoreConfig` is one.
StoreFactory = Callable[[str], ArtifactStore]

_CROSS_PROCESS_BACKENDS = "filesystem (pip install artifactstore-filesystem), redis, s3 or http"


def _choice(name: str, value: str, allowed: object) -> None:
    options = get_args(allowed)
    if value not in options:
        raise ConfigurationError(f"{name} must be one of {', '.join(map(repr, options))}, not {value!r}")


class Executor:
    """Runs pipelines, saving each step's output in the execution's namespace.

    Args:
        store: where artifacts go: a :class:`StoreConfig` (backend name and options), a
            :class:`ServiceContainer` in which :func:`register_artifact_store` registered one, or any
            callable that takes a namespace and returns a new store (threads only). Default:
            ``StoreConfig()``, the configured backend (``ARTIFACT_STORE_BACKEND``, default ``memory``).
        max_workers: most steps running at once; default: the thread pool's default for threads, the CPU
            count for processes (never more than the steps to run).
        mode: ``"threads"``, or ``"processes"`` to run each step in a worker process started with the
            ``spawn`` method; each worker rebuilds the store from the :class:`StoreConfig`, so the backend
            must be visible across processes (filesystem, redis, s3, http) and step functions must be
            importable (module-level functions, or :func:`functools.partial` of them).
        on_success: ``"clear"`` (default) removes the execution's artifacts after a successful run
            (the final outputs are read first and returned); ``"keep"`` leaves them.
        on_failure: ``"keep"`` (default) leaves the artifacts of the steps that finished, so a run with the
            same execution id resumes; ``"clear"`` removes them (no resume possible).

    Raises:
        ConfigurationError: an argument is invalid; ``mode="processes"`` with a store factory that is not a
            :class:`StoreConfig`, or with a backend that declares ``cross_process=False`` (memory).
        ServiceNotFoundError: a container without a registered :class:`StoreConfig`.
        BackendNotFoundError, PluginLoadError: with ``mode="processes"``, the backend cannot be loaded.
        TypeError: ``store`` is none of the accepted kinds (an ``ArtifactStore`` instance, for example).
    """

    def __init__(
        self,
        store: StoreConfig | ServiceContainer | StoreFactory | None = None,
        *,
        max_workers: int | None = None,
        mode: Mode = "threads",
        on_success: SuccessPolicy = "clear",
        on_failure: FailurePolicy = "keep",
    ) -> None:
        _choice("mode", mode, Mode)
        _choice("on_success", on_success, SuccessPolicy)
        _choice("on_failure", on_failure, FailurePolicy)
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ConfigurationError(f"max_workers must be a positive int, not {max_workers!r}")
        if isinstance(store, ServiceContainer):
            store = store.resolve(StoreConfig)
        if store is None:
            store = StoreConfig()
        if isinstance(store, ArtifactStore) or not callable(store):
            raise TypeError(
                f"store must be a StoreConfig, a ServiceContainer or a callable namespace -> ArtifactStore, "
                f"not {type(store).__name__}: each execution needs a store bound to its own namespace"
            )
        self._mode: Mode = mode
        self._on_success: SuccessPolicy = on_success
        self._on_failure: FailurePolicy = on_failure
        self._max_workers = max_workers
        self._factory: StoreFactory = store
        self._config: StoreConfig | None = None
        if mode == "processes":
            if not isinstance(store, StoreConfig):
                raise ConfigurationError(
                    "mode='processes' needs a StoreConfig (a backend name and options), not a store factory "
                    "callable: each worker process rebuilds the store from it"
                )
            # Fix the backend name now, so workers build exactly the backend checked here.
            self._config = store.resolved()
            self._factory = self._config
            self._check_cross_process(self._config)

    @property
    def mode(self) -> Mode:
        """Where steps run, ``"threads"`` or ``"processes"``."""
        return self._mode

    @staticmethod
    def _check_cross_process(config: StoreConfig) -> None:
        name = config.backend_name()
        if not config.capabilities().cross_process:
            raise ConfigurationError(
                f"mode='processes' cannot use backend {name!r}: it declares cross_process=False (its artifacts "
                f"live in one process, so a worker process would not see the outputs of steps run by the "
                f"others). Use mode='threads' with it, or a backend shared across processes: "
                f"{_CROSS_PROCESS_BACKENDS} (select it with ARTIFACT_STORE_BACKEND or StoreConfig(backend=...))",
                backend=name,
            )

    # -- running --------------------------------------------------------------------------------------

    def run(self, pipeline: Pipeline, execution_id: str | None = None) -> RunResult:
        """Run ``pipeline`` and return what happened.

        Args:
            execution_id: the namespace of this execution's artifacts. Default: a fresh ``uuid4().hex``.
                Give the id of an execution that failed (``StepFailedError.execution_id``) to resume it:
                every step whose artifact exists is skipped (reported as ``reused``), and only the
                others run. Write-once saving makes this safe: a step never replaces an artifact.

        Returns:
            A :class:`RunResult`: the execution id, each step's status, duration and artifact size, and
            the final outputs (the messages of the sink steps).

        Raises:
            StepFailedError: a step raised or its output could not be saved; it names the step and the
                execution id, chains the step's exception, and carries the partial result. No new step
                starts after a failure; steps already running finish.
            ConfigurationError: ``mode="processes"`` and a step function cannot be imported by a worker
                (raised before any step runs).
            InvalidStepIdError: ``execution_id`` is not a legal namespace.
            The errors of building the store (``ConfigurationError``, ``BackendError``, ...) and of
            listing, reading or clearing it.
        """
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"expected a Pipeline, got {type(pipeline).__name__}")
        fresh = execution_id is None
        execution_id = uuid.uuid4().hex if execution_id is None else validate_namespace(execution_id)
        if self._mode == "processes":
            for step in pipeline.steps:
                _check_importable(step)
        started = time.perf_counter()
        store = self._factory(execution_id)
        try:
            result = self._execute(store, pipeline, execution_id, fresh, started)
        except BaseException:
            # The error being raised is the one to report; failing to close after it is secondary.
            with contextlib.suppress(Exception):
                store.close()
            raise
        store.close()
        return result

    def _execute(
        self, store: ArtifactStore, pipeline: Pipeline, execution_id: str, fresh: bool, started: float
    ) -> RunResult:
        backend = store.backend_name
        results: dict[str, StepResult] = {}
        if not fresh:
            # A resume: whatever a step already saved in this namespace is its output (write-once).
            for info in store.list():
                if info.step_id in pipeline:
                    results[info.step_id] = StepResult(info.step_id, StepStatus.REUSED, size=info.size)
        waiting = {
            step.id: {name for name in step.inputs if name not in results}
            for step in pipeline.steps
            if step.id not in results
        }
        ready = [step_id for step_id, inputs in waiting.items() if not inputs]
        failure: tuple[str, BaseException] | None = None
        death = ""
        if waiting:
            pool, slots = self._pool(len(waiting))
            positions = {step_id: index for index, step_id in enumerate(pipeline.order)}
            workers: dict[int, multiprocessing.process.BaseProcess] = {}
            running: dict[cf.Future[StepOutcome], str] = {}
            try:
                while ready or running:
                    for step_id in ready:
                        running[self._submit(pool, store, pipeline[step_id], execution_id, positions[step_id])] = (
                            step_id
                        )
                    ready = []
                    finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in finished:
                        step_id = running.pop(future)
                        if future.cancelled():
                            continue
                        error = future.exception()
                        if error is not None:
                            results[step_id] = StepResult(step_id, StepStatus.FAILED)
                            if failure is None:
                                failure = (step_id, error)
                                if isinstance(error, cfp.BrokenProcessPool):
                                    # Kept to read their exit codes once the pool has joined them.
                                    workers = dict(getattr(pool, "_processes", None) or {})
                                # Fail fast: steps not started yet never start; running ones finish.
                                for other in running:
                                    other.cancel()
                            continue
                        outcome = future.result()
                        results[step_id] = StepResult(step_id, StepStatus.SUCCEEDED, outcome.duration, outcome.size)
                        for dependent in pipeline.dependents(step_id):
                            inputs = waiting.get(dependent)
                            if inputs is not None and step_id in inputs:
                                inputs.discard(step_id)
                                if not inputs and failure is None:
                                    ready.append(dependent)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if failure is not None and workers and slots is not None:
                died = _died_in(pipeline, workers, slots)
                if died is not None:
                    failure = (died[0], failure[1])
                    death = died[1]
        steps = {step_id: results.get(step_id, StepResult(step_id, StepStatus.NOT_RUN)) for step_id in pipeline.order}
        if failure is not None:
            step_id, error = failure
            if not isinstance(error, Exception):
                # KeyboardInterrupt or SystemExit raised inside a step: not a step failure, the way out.
                raise error
            failed = self._failed(store, execution_id, steps, started, step_id, error)
            if death:
                failed.add_note(f"the worker process running step {step_id!r} {death}")
            raise failed from error
        outputs = store.get_many(pipeline.sinks)
        cleared = self._on_success == "clear"
        if cleared:
            store.clear()
        return RunResult(
            execution_id=execution_id,
            backend=backend,
            steps=steps,
            outputs={step_id: outputs[step_id] for step_id in pipeline.sinks},
            duration=time.perf_counter() - started,
            cleared=cleared,
        )

    def _failed(
        self,
        store: ArtifactStore,
        execution_id: str,
        steps: dict[str, StepResult],
        started: float,
        step_id: str,
        error: Exception,
    ) -> StepFailedError:
        cleared = self._on_failure == "clear"
        if cleared:
            store.clear()
            after = "its artifacts were cleared (on_failure='clear'), so it cannot be resumed"
        else:
            after = (
                f"the artifacts of the steps that finished are kept: run the pipeline again with "
                f"execution_id={execution_id!r} to resume from the failed step"
            )
        result = RunResult(
            execution_id=execution_id,
            backend=store.backend_name,
            steps=steps,
            duration=time.perf_counter() - started,
            cleared=cleared,
        )
        return StepFailedError(
            f"step {step_id!r} failed: {type(error).__name__}: {error}. Execution {execution_id!r} on backend "
            f"{store.backend_name!r} stopped; {after}",
            step_id=step_id,
            namespace=execution_id,
            backend=store.backend_name,
            result=result,
        )

    def _pool(self, steps: int) -> tuple[cf.Executor, Any]:
        """The pool, and for processes the array in which each worker writes the step it runs."""
        if self._mode == "processes":
            workers = min(self._max_workers or os.cpu_count() or 1, steps)
            # spawn, not fork: a forked child would inherit this process's threads, locks and clients.
            context = multiprocessing.get_context("spawn")
            slots = context.Array("q", 2 * workers, lock=False)
            pool = cf.ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=init_worker, initargs=(slots, context.Lock())
            )
            return pool, slots
        workers = min(self._max_workers or min(32, (os.cpu_count() or 1) + 4), steps)
        return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artifactstore-step"), None

    def _submit(
        self, pool: cf.Executor, store: ArtifactStore, step: Step, execution_id: str, index: int
    ) -> cf.Future[StepOutcome]:
        if self._config is not None:
            return pool.submit(run_in_worker, WorkerTask(step, self._config, execution_id, index))
        return pool.submit(execute_step, store, step)

    def __repr__(self) -> str:
        return (
            f"<Executor mode={self._mode!r} max_workers={self._max_workers} on_success={self._on_success!r} "
            f"on_failure={self._on_failure!r}>"
        )


def _died_in(
    pipeline: Pipeline, workers: dict[int, multiprocessing.process.BaseProcess], slots: Any
) -> tuple[str, str] | None:
    """The step that was running in the worker process that died on its own, if exactly one did, and how
    the process ended ("exited with code 3", "was killed by signal SIGKILL").

    When a worker dies, ``concurrent.futures`` fails every running step with one ``BrokenProcessPool``
    and terminates the other workers, so the first failed future is any of them. The worker that died
    first exited with its own code (a crash, ``os._exit``, a signal such as SIGKILL or SIGSEGV); the
    pool ended the others with SIGTERM.
    """
    order = pipeline.order
    died = [
        (order[index], process.exitcode)
        for pid, process in workers.items()
        if process.exitcode not in (None, 0, -signal.SIGTERM)
        and (index := running_step(slots, pid)) is not None
        and 0 <= index < len(order)
    ]
    if len(died) != 1:
        return None
    step_id, code = died[0]
    assert code is not None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return step_id, f"was killed by signal {name}"
    return step_id, f"exited with code {code}"


def _check_importable(step: Step) -> None:
    """Refuse, before anything runs, a step function a spawned worker could not import."""
    fn: object = step.fn
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not isinstance(fn, types.FunctionType):
        # Callable instances, bound methods, builtins: pickled by reference to their class or module.
        return
    where = f"{fn.__module__}.{fn.__qualname__}"
    problem = None
    if "<" in fn.__qualname__:
        problem = "it is a lambda or is defined inside another function"
    else:
        module = sys.modules.get(fn.__module__)
        target: object = module
        for part in fn.__qualname__.split("."):
            target = getattr(target, part, None)
        if module is None or target is not fn:
            problem = f"it is not reachable as {where}"
        elif fn.__module__ == "__main__" and not getattr(module, "__file__", None):
            problem = "it is defined in an interactive session (__main__ has no file a worker can import)"
    if problem is not None:
        raise ConfigurationError(
            f"step {step.id!r}: mode='processes' sends each step's function to worker processes by its import "
            f"path, and {where} cannot be imported there: {problem}. Define it at module level (a "
            f"functools.partial of a module-level function also works), or use mode='threads'",
            step_id=step.id,
        )
