""":class:`Executor`: runs a :class:`~artifactstore_core.pipeline.Pipeline` on threads or worker processes.

Each execution stores its artifacts in its own namespace, the execution id. A step starts as soon as all
its inputs are saved (not level by level), so independent steps run in parallel. At the end the
namespace is cleared on success and kept on failure, by default; a run with the id of a failed execution
resumes it, skipping every step whose artifact already exists, and running again (with overwrite) a step
whose artifact turns out damaged or gone when it is read.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process as cfp
import contextlib
import copy
import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
import types
import uuid
from collections.abc import Callable
from typing import Any, Literal, get_args

from ..errors import ArtifactCorruptedError, ArtifactNotFoundError, ArtifactStoreError, ConfigurationError
from ..ids import validate_namespace
from ..message import Message
from ..store import ArtifactStore
from ._runner import (
    ReusedInputsUnusable,
    StepOutcome,
    WorkerTask,
    execute_step,
    forget_replacements,
    replacement_generations,
    run_in_worker,
)
from ._workers import WorkerDied, WorkerPool
from .config import StoreConfig
from .container import ServiceContainer
from .errors import StepFailedError
from .graph import RESERVED_PREFIX, Pipeline, Step
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

logger = logging.getLogger(__name__)

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
        if max_workers is not None and (
            not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1
        ):
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
                others run. Write-once saving makes this safe: a step never replaces an artifact, except
                one found damaged (``ArtifactCorruptedError``) or gone (``ArtifactNotFoundError``) when it
                is read: reused inputs are read before the step that needs them starts, final outputs at
                the end, and the step that produced such an artifact runs again (saving with
                ``overwrite=True`` over a damaged one; see ``StepResult.replaced``). A step that saves a
                fresh output deletes the step's replacement records first, so none outlives it.

        Returns:
            A :class:`RunResult`: the execution id, each step's status, duration and artifact size, and
            the final outputs (the messages of the sink steps).

        Raises:
            StepFailedError: a step raised or its output could not be saved; it names the step and the
                execution id, chains the step's exception, and carries the partial result. No new step
                starts after a failure; steps already running finish. A note names each worker process that
                died running a step and how it ended, in step order (and the error names the first of those
                steps when a death was the first failure). Also for a sink whose artifact, saved
                by this run, is gone or damaged when the final outputs are read (deleted, expired, or
                cleared by another run of the execution), with that ``ArtifactNotFoundError`` or
                ``ArtifactCorruptedError`` chained.
            ConfigurationError: ``mode="processes"`` and a step function cannot be imported by a worker (or
                its ``functools.partial`` arguments cannot be sent to one),
                or the store factory returned a store bound to another namespace than ``execution_id``, or
                the store has a signing key under which none of the execution's artifacts verifies (a
                wrong key, not damage: nothing is overwritten). Raised before any step runs.
            InvalidStepIdError: ``execution_id`` is not a legal namespace.
            KeyboardInterrupt, SystemExit: raised by a step, or in this process (Ctrl-C): re-raised at once,
                with a note naming the execution id to resume; worker processes are terminated with the
                processes their steps started (their process groups), and the artifacts of the steps that
                finished are kept. A Ctrl-C while ``run`` waits for running steps after another exception ended
                the run (one a signal handler raised, such as a ``SIGALRM`` deadline's) stops them the same way and
                is raised instead of it, that exception its ``__context__`` and named in a note.
            The errors of building the store (``ConfigurationError``, ``BackendError``, ...) and of
            listing, reading or clearing it (a ``BackendError`` while listing to resume is raised, never
            taken for "absent"; an ``UnsupportedFormatError`` is raised, never overwritten).
        """
        if execution_id is None:
            return self._run(pipeline, uuid.uuid4().hex, fresh=True)
        return self._run(pipeline, validate_namespace(execution_id), fresh=False)

    def _run(self, pipeline: Pipeline, execution_id: str, *, fresh: bool) -> RunResult:
        """:meth:`run` of the valid ``execution_id``; ``fresh``: a new id (a uuid) whose namespace this run owns,
        which is neither listed to resume nor cleared step by step. :func:`run_demo` names a fresh execution
        itself, to show its id before any step runs. Raises as :meth:`run`."""
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"expected a Pipeline, got {type(pipeline).__name__}")
        if self._mode == "processes":
            memo: dict[int, Any] = {}
            for step in pipeline.steps:
                _check_importable(step, memo)
        started = time.perf_counter()
        store = self._factory(execution_id)
        try:
            if store.namespace != execution_id:
                # A factory that ignores the namespace it is given would make this execution reuse, and clear,
                # the artifacts of every other execution built by it.
                # Named by its qualified name, not its repr, which could hold a credential.
                name = getattr(self._factory, "__qualname__", type(self._factory).__qualname__)
                raise ConfigurationError(
                    f"the store factory {name} was asked for a store bound to namespace "
                    f"{execution_id!r} (the execution id) and returned one bound to {store.namespace!r}: "
                    "it must pass the namespace on, e.g. lambda namespace: create_store(..., namespace=namespace)",
                    namespace=execution_id,
                    backend=store.backend_name,
                )
            # Logged before any step runs: if this process is killed (kill -9, the OOM killer), no exception
            # note can name the execution, and a fresh execution's id is a uuid nobody else knows.
            logger.info(
                "%s execution %r on backend %r (%d steps); to resume it after a crash, run the pipeline "
                "again with execution_id=%r",
                "starting" if fresh else "resuming", execution_id, store.backend_name, len(pipeline.steps),
                execution_id,
            )  # fmt: skip
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
        # Steps whose artifact from an earlier run is used without running them (a resume). A step leaves
        # this set when a read finds its artifact damaged or gone, and joins ``replaced``: it runs again, and
        # a damaged one saves with overwrite (write-once would keep a damaged artifact whose header still
        # matches).
        reused: set[str] = set()
        replaced: dict[str, str] = {}
        # The steps of ``replaced`` whose artifact was damaged (not gone): they save with overwrite, through a
        # replacement record. A gone one saves write-once, like any step that runs.
        damaged_ids: set[str] = set()
        # The highest generation of each step's replacement records that the resume's listing found.
        records: dict[str, int] = {}
        if not fresh:
            sizes, damaged, records = self._existing(store, pipeline)
            for step_id, size in sizes.items():
                results[step_id] = StepResult(step_id, StepStatus.REUSED, size=size)
                reused.add(step_id)
            for step_id, reason in damaged.items():
                replaced[step_id] = reason
                damaged_ids.add(step_id)
                _warn_replaced(store, step_id, reason)
        waiting = {
            step.id: {name for name in step.inputs if name not in results}
            for step in pipeline.steps
            if step.id not in results
        }
        ready = [step_id for step_id, inputs in waiting.items() if not inputs]
        failure: tuple[str, BaseException] | None = None
        # Each failed step's exception: a worker death seen after the first failure may name the step instead.
        errors: dict[str, Exception] = {}
        # The exception leaving the loop that is not a step's failure (see _shut_down).
        leaving: BaseException | None = None
        # The sink whose artifact, saved by this run, could not be read back as a final output.
        lost_output: str | None = None
        outputs: dict[str, Message] = {}
        pool: cf.Executor | None = None
        positions = {step_id: index for index, step_id in enumerate(pipeline.order)}
        running: dict[cf.Future[StepOutcome], str] = {}

        def available(step_id: str) -> bool:
            done = results.get(step_id)
            return done is not None and done.status in (StepStatus.REUSED, StepStatus.SUCCEEDED)

        def replace(step_id: str, reason: str, gone: bool) -> None:
            """Run ``step_id`` again: its reused artifact turned out damaged or (``gone``) gone."""
            reused.discard(step_id)
            del results[step_id]
            replaced[step_id] = reason
            if not gone:
                damaged_ids.add(step_id)
            _warn_replaced(store, step_id, reason)
            waiting[step_id] = {name for name in pipeline[step_id].inputs if not available(name)}
            if not waiting[step_id] and failure is None:
                ready.append(step_id)
            # Its readers that have not started wait for it too: one that started now would read the damaged
            # (or no) artifact, not the replacement, and fail. Readers already running verify it (it was
            # reused when they were submitted) and come back as ReusedInputsUnusable if it is unusable.
            started = set(running.values())
            for dependent in pipeline.dependents(step_id):
                if dependent in waiting and dependent not in results and dependent not in started:
                    waiting[dependent].add(step_id)
                    if dependent in ready:
                        ready.remove(dependent)

        try:
            while True:
                while ready or running:
                    if pool is None:
                        pool = self._pool(len(waiting))
                    for step_id in ready:
                        step = pipeline[step_id]
                        verify = tuple(name for name in step.inputs if name in reused)
                        overwrite = step_id in damaged_ids
                        future = self._submit(
                            pool,
                            store,
                            step,
                            execution_id,
                            positions[step_id],
                            verify,
                            overwrite,
                            fresh,
                            records.get(step_id, 0),
                        )
                        running[future] = step_id
                    ready = []
                    finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    # In step order: of two steps that failed in one wait, the first failure is then not a
                    # matter of how a set is laid out.
                    for future in sorted(finished, key=lambda done: positions[running[done]]):
                        step_id = running.pop(future)
                        if future.cancelled():
                            continue
                        error = future.exception()
                        if isinstance(error, ReusedInputsUnusable):
                            # The step did not run: inputs it was to reuse are damaged or gone. Their steps
                            # run again, then this one (or, after a failure, neither: it is "not run").
                            waiting[step_id] = set()
                            for name, reason, vanished in error.unusable:
                                if name in reused:
                                    replace(name, reason, vanished)
                            # All its inputs, not only those it found unusable: another may have been sent to
                            # run again (found damaged by another reader) since this step was submitted.
                            inputs = waiting[step_id] = {
                                name for name in pipeline[step_id].inputs if not available(name)
                            }
                            if not inputs and failure is None:
                                ready.append(step_id)
                            continue
                        if error is not None and not isinstance(error, Exception):
                            # KeyboardInterrupt or SystemExit raised inside a step: not a step failure, the
                            # way out, now rather than after the steps still running (see the except below).
                            raise error
                        if error is not None:
                            results[step_id] = StepResult(step_id, StepStatus.FAILED, replaced=replaced.get(step_id))
                            errors[step_id] = error
                            if failure is None:
                                failure = (step_id, error)
                                # Fail fast: steps not started yet never start; running ones finish.
                                for other in running:
                                    other.cancel()
                                # Nor do the readers of a step that finished in this same wait and came
                                # first: they were queued before the failure was seen.
                                ready.clear()
                            continue
                        outcome = future.result()
                        # A replacement another resume saved first, restored without running the step.
                        status = StepStatus.SUCCEEDED if outcome.ran else StepStatus.REUSED
                        results[step_id] = StepResult(
                            step_id, status, outcome.duration, outcome.size, replaced.get(step_id)
                        )
                        for dependent in pipeline.dependents(step_id):
                            pending = waiting.get(dependent)
                            if pending is not None and step_id in pending:
                                pending.discard(step_id)
                                if not pending and failure is None:
                                    ready.append(dependent)
                if failure is not None:
                    break
                # The final outputs are read here anyway: that read is also the check of reused ones.
                gone, lost = _read_outputs(store, pipeline, reused, outputs)
                if lost:
                    # A final output this run saved is gone or damaged by now: another run of the execution
                    # cleared it, it expired or was deleted. Not a reused artifact to run again (this run
                    # trusted its own save, and its inputs may be gone too): the sink fails, so the error
                    # names it and the execution to resume, which computes what is missing.
                    step_id, error = lost[0]
                    done = results[step_id]
                    results[step_id] = StepResult(step_id, StepStatus.FAILED, replaced=done.replaced)
                    failure = (step_id, error)
                    lost_output = step_id
                    break
                if not gone:
                    break
                for step_id, reason, vanished in gone:
                    replace(step_id, reason, vanished)
        except BaseException as exc:
            leaving = exc
            if not isinstance(exc, Exception):
                # Ctrl-C (in this process, or in a step), SystemExit: no step starts any more. Worker processes
                # are terminated, so their steps stop now: a step may ignore or catch the terminal's SIGINT, and
                # waiting for it is not what Ctrl-C asked. Threads cannot be stopped: their steps finish first.
                _interrupted(pool, exc, execution_id, store)
            raise
        finally:
            if pool is not None:
                _shut_down(pool, leaving, execution_id, store)
        # The workers that died on their own while running a step, in step order: several die at once (the OOM
        # killer, a machine's memory pressure), and which the pool saw first is chance.
        died: list[tuple[str, WorkerDied]] = []
        unstarted = False
        if failure is not None and isinstance(pool, WorkerPool):
            indexed = ((worker.step_index, worker) for worker in pool.died() if worker.step_index is not None)
            died = [(pipeline.order[index], worker) for index, worker in sorted(indexed, key=lambda pair: pair[0])]
            dead = [step_id for step_id, _ in died]
            if isinstance(failure[1], cfp.BrokenProcessPool) and failure[0] in dead:
                # Named: the first of them in step order, whichever death the pool saw first.
                named = next(step_id for step_id in dead if step_id in errors)
                failure = (named, errors[named])
                # A worker that never took a step failed while starting: typically importing the main module,
                # whose unguarded call to run() tried to start workers of its own.
                unstarted = not pool.any_started()
        steps = {
            step_id: results.get(step_id, StepResult(step_id, StepStatus.NOT_RUN, replaced=replaced.get(step_id)))
            for step_id in pipeline.order
        }
        if failure is not None:
            step_id, error = failure
            assert isinstance(error, Exception)
            failed = self._failed(store, pipeline, fresh, execution_id, steps, started, step_id, error)
            for dead_step, worker in died:
                if worker.started:
                    failed.add_note(f"the worker process running step {dead_step!r} {_how_it_ended(worker)}")
            if unstarted:
                failed.add_note(
                    "no worker process started: each ended before it could run a step. Spawned workers import the "
                    "main module, so a script must keep its call to run() under if __name__ == '__main__': (the "
                    "workers' own error is above, on stderr)"
                )
            if step_id == lost_output:
                how = "was gone" if isinstance(error, ArtifactNotFoundError) else "failed verification"
                failed.add_note(
                    f"step {step_id!r} ran and saved its output in this run, but its artifact {how} when the final "
                    "outputs were read: it was deleted or expired (a backend's default TTL), another run of "
                    f"execution {execution_id!r} that finished first cleared it (on_success='clear'; run "
                    "executions that may overlap with on_success='keep'), or it was damaged in the store. A "
                    "resume runs again every step whose artifact is missing"
                )
            if step_id in replaced:
                failed.add_note(
                    f"step {step_id!r} ran again because its artifact from the earlier run could not be used: "
                    f"{replaced[step_id]}"
                )
            lost_input = _lost_input(error, pipeline[step_id], steps, execution_id)
            if lost_input is not None:
                # Not run again within this run, as a reused input is (that one is read before its reader
                # starts): this one was gone only when the reader's function read it, and running the reader
                # again would repeat what it did before (model calls, ...). A resume is the way.
                failed.add_note(
                    f"input {lost_input!r} of step {step_id!r} was saved by this run and was gone when read: it "
                    "expired (a backend's default TTL), was deleted or collected by `artifactstore gc`, or another "
                    f"run of execution {execution_id!r} that finished first cleared it (on_success='clear'). A run "
                    f"does not compute it twice; a resume runs step {lost_input!r} again, then {step_id!r}"
                )
            raise failed from error
        cleared = self._on_success == "clear"
        if cleared:
            _clear_execution(store, pipeline, fresh)
        return RunResult(
            execution_id=execution_id,
            backend=backend,
            steps=steps,
            outputs={step_id: outputs[step_id] for step_id in pipeline.sinks},
            duration=time.perf_counter() - started,
            cleared=cleared,
        )

    @staticmethod
    def _existing(
        store: ArtifactStore, pipeline: Pipeline
    ) -> tuple[dict[str, int | None], dict[str, str], dict[str, int]]:
        """The steps of ``pipeline`` that have an artifact in the store (with its size, ``None`` when it is
        not known), those whose artifact is damaged (with the reason), and the highest generation of each
        step's replacement records (empty when the listing failed), for a resume.

        One listing; only when it fails on a damaged artifact (a listing verifies each header, and stops
        at the first that does not verify) is each step asked for separately, to find all of them. A step
        counts as damaged only on an error that names it: a backend without its own ``info`` reads it from
        the same listing, which fails on the damaged artifact whichever step is asked for. The artifacts
        that cannot be told apart that way are reused, size unknown, and verified when they are read, like
        every reused artifact.

        Raises:
            ConfigurationError: the store has a signing key, an artifact fails verification and none
                verifies (a wrong key looks like damage to every artifact).
            BackendError, UnsupportedFormatError, ...: as :meth:`ArtifactStore.list`,
                :meth:`ArtifactStore.info` and :meth:`ArtifactStore.exists` raise them; a backend failure is
                never taken for "absent".
        """
        sizes: dict[str, int | None] = {}
        reserved: list[str] = []
        try:
            for info in store.list():
                if info.step_id in pipeline:
                    sizes[info.step_id] = info.size
                elif info.step_id.startswith(RESERVED_PREFIX):
                    reserved.append(info.step_id)
            return sizes, {}, replacement_generations(pipeline.order, reserved)
        except ArtifactCorruptedError as exc:
            listing_error = exc
        # The base class's info() is a search of the listing: asking it would repeat the listing's error.
        own_info = type(store)._info is not ArtifactStore._info
        sizes = {}
        damaged: dict[str, str] = {}
        for step in pipeline.steps:
            error: ArtifactCorruptedError = listing_error
            if own_info:
                try:
                    sizes[step.id] = store.info(step.id).size
                    continue
                except ArtifactNotFoundError:
                    continue
                except ArtifactCorruptedError as exc:
                    error = exc
            if error.step_id == step.id:
                damaged[step.id] = _reason(error)
            elif store.exists(step.id):
                sizes[step.id] = None
        if damaged and store.codec.signed and all(size is None for size in sizes.values()):
            # Under a signing key, a wrong key (mistyped, rotated) fails every artifact exactly as damage does;
            # running every step again would overwrite each one with an artifact that only the wrong key
            # reads. One artifact that verifies proves the key, so only this case is refused.
            first = next(iter(damaged.values()))
            raise ConfigurationError(
                f"no artifact of execution {store.namespace!r} on backend {store.backend_name!r} verifies under "
                f"this store's signing key (first: {first}): the signing key (ARTIFACT_STORE_SIGNING_KEY) is "
                "probably not the one they were saved with, so nothing was run or overwritten. Set that key to "
                "resume; if the artifacts are damaged, delete them, or start a new execution",
                namespace=store.namespace,
                backend=store.backend_name,
            )
        return sizes, damaged, {}

    def _failed(
        self,
        store: ArtifactStore,
        pipeline: Pipeline,
        fresh: bool,
        execution_id: str,
        steps: dict[str, StepResult],
        started: float,
        step_id: str,
        error: Exception,
    ) -> StepFailedError:
        cleared = self._on_failure == "clear"
        if cleared:
            _clear_execution(store, pipeline, fresh)
            after = "its artifacts were cleared (on_failure='clear'), so it cannot be resumed"
        else:
            after = f"{_resume_advice(store, execution_id)} from the failed step"
        result = RunResult(
            execution_id=execution_id,
            backend=store.backend_name,
            steps=steps,
            duration=time.perf_counter() - started,
            cleared=cleared,
        )
        return StepFailedError(
            f"step {step_id!r} failed: {type(error).__name__}: {_text_of(error)}. Execution {execution_id!r} on "
            f"backend {store.backend_name!r} stopped; {after}",
            step_id=step_id,
            namespace=execution_id,
            backend=store.backend_name,
            result=result,
        )

    def _pool(self, steps: int) -> cf.Executor:
        """The pool: this executor's own worker processes, or a thread pool."""
        if self._mode == "processes":
            workers = min(self._max_workers or os.cpu_count() or 1, steps)
            # spawn, not fork: a forked child would inherit this process's threads, locks and clients.
            return WorkerPool(workers, multiprocessing.get_context("spawn"))
        workers = min(self._max_workers or min(32, (os.cpu_count() or 1) + 4), steps)
        return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artifactstore-step")

    def _submit(
        self,
        pool: cf.Executor,
        store: ArtifactStore,
        step: Step,
        execution_id: str,
        index: int,
        verify: tuple[str, ...],
        overwrite: bool,
        fresh: bool,
        records: int,
    ) -> cf.Future[StepOutcome]:
        # A fresh execution's namespace (a new uuid) holds no replacement records to forget.
        forget = not fresh
        if self._config is not None:
            task = WorkerTask(step, self._config, execution_id, index, verify, overwrite, forget, records)
            return pool.submit(run_in_worker, task)
        return pool.submit(execute_step, store, step, verify, overwrite, forget, records)

    def __repr__(self) -> str:
        return (
            f"<Executor mode={self._mode!r} max_workers={self._max_workers} on_success={self._on_success!r} "
            f"on_failure={self._on_failure!r}>"
        )


def _text_of(error: BaseException) -> str:
    """``str(error)``, or a stand-in when the step's exception cannot say what it is.

    A user's exception whose ``__str__`` raises (an attribute its ``__init__`` did not set) must not replace
    the :class:`StepFailedError`, which carries the execution id to resume and the partial result.
    """
    try:
        return str(error)
    except Exception as problem:
        return f"<str() of the exception failed: {type(problem).__name__}>"


def _lost_input(error: Exception, step: Step, steps: dict[str, StepResult], execution_id: str) -> str | None:
    """The input of ``step`` that ``step`` failed on because it was gone, if that input was saved by this run
    (``succeeded``), else ``None``. Raises nothing."""
    if not isinstance(error, ArtifactNotFoundError) or error.step_id not in step.inputs:
        return None
    if error.namespace not in (None, execution_id):
        return None  # the step read another store of its own
    done = steps.get(error.step_id)
    return error.step_id if done is not None and done.status == StepStatus.SUCCEEDED else None


def _reason(exc: ArtifactStoreError) -> str:
    return f"{type(exc).__name__}: {exc}"


def _warn_replaced(store: ArtifactStore, step_id: str, reason: str) -> None:
    logger.warning(
        "execution %r on backend %r: the artifact of step %r from the earlier run cannot be used (%s); "
        "the step runs again and replaces it",
        store.namespace,
        store.backend_name,
        step_id,
        reason,
    )


def _clear_execution(store: ArtifactStore, pipeline: Pipeline, fresh: bool) -> None:
    """Remove the execution's artifacts: its steps' and its replacement records.

    A fresh execution (a new uuid) owns its namespace: it is cleared. A run given an execution id may
    find artifacts there that are not its steps' (a user's ``artifactstore put -n <id>``, a step removed
    from the pipeline since): those are not the executor's to remove, so they are kept (with a warning),
    and only the execution's own artifacts are deleted, one by one.

    Raises:
        BackendError and the other errors of listing, clearing and deleting.
    """
    if fresh:
        store.clear()
        return
    own: list[str] = []
    foreign: list[str] = []
    try:
        for info in store.list():
            mine = info.step_id in pipeline or info.step_id.startswith(RESERVED_PREFIX)
            (own if mine else foreign).append(info.step_id)
    except ArtifactCorruptedError:
        # A damaged artifact that is none of the steps' (theirs were read or replaced in this run) stops the
        # listing: delete the steps' artifacts and their records by name, and keep whatever else is there.
        for step_id in pipeline.order:
            store.delete(step_id)
            forget_replacements(store, step_id)
        return
    # One by one even when nothing else was listed: a clear() here would also remove what another program
    # saved into the namespace after the listing.
    for step_id in own:
        store.delete(step_id)
    if not foreign:
        return
    logger.warning(
        "execution %r on backend %r: kept %d artifacts of its namespace that are not steps of the pipeline (%s)",
        store.namespace,
        store.backend_name,
        len(foreign),
        ", ".join(map(repr, sorted(foreign)[:10])) + (", ..." if len(foreign) > 10 else ""),
    )


def _read_outputs(
    store: ArtifactStore, pipeline: Pipeline, reused: set[str], outputs: dict[str, Message]
) -> tuple[list[tuple[str, str, bool]], list[tuple[str, ArtifactStoreError]]]:
    """Read the sinks' messages not in ``outputs`` yet into it; return the reused sinks that turned out
    damaged or gone, with the reason and whether it was gone, for the executor to run again, and the sinks
    this run saved that turned out damaged or gone, with the error, for the executor to fail.

    One ``get_many`` as before; only when it fails on a damaged or missing artifact are the sinks read one
    by one, to tell which.

    Raises:
        BackendError and the other errors of ``get_many``/``get`` (not ``ArtifactCorruptedError`` or
        ``ArtifactNotFoundError``, which are returned).
    """
    missing = [step_id for step_id in pipeline.sinks if step_id not in outputs]
    try:
        outputs.update(store.get_many(missing))
        return [], []
    except (ArtifactCorruptedError, ArtifactNotFoundError):
        pass
    gone = []
    lost: list[tuple[str, ArtifactStoreError]] = []
    for step_id in missing:
        try:
            outputs[step_id] = store.get(step_id)
        except (ArtifactCorruptedError, ArtifactNotFoundError) as exc:
            if step_id in reused:
                gone.append((step_id, _reason(exc), isinstance(exc, ArtifactNotFoundError)))
            else:
                lost.append((step_id, exc))
    return gone, lost


def _how_it_ended(worker: WorkerDied) -> str:
    """How a worker process that died on its own ended: "exited with code 3", "was killed by signal SIGKILL"."""
    code = worker.exitcode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {name}"
    return f"exited with code {code}"


def _check_importable(step: Step, memo: dict[int, Any]) -> None:
    """Refuse, before anything runs, a step function a spawned worker could not import, or whose
    ``functools.partial`` arguments (or, for a callable instance, its state) cannot be sent to it.

    ``memo`` is shared by the steps of one run, so a value many steps bind is copied once.
    """
    for fn in _functions_of(step.fn):
        _check_function(step, fn)
    try:
        # The pool sends the step by the reduce protocol, which copy.deepcopy goes through too (nothing here
        # may pickle): a lock, an open client or file bound with partial is found now, not once the steps
        # upstream of it (model calls) have run.
        copy.deepcopy(step.fn, memo)
    except Exception as exc:
        raise ConfigurationError(
            f"step {step.id!r}: mode='processes' sends each step's function, with its functools.partial "
            f"arguments, to a worker process, and this one cannot be sent: {type(exc).__name__}: {_text_of(exc)}. "
            "Bind only plain values (build clients, locks and open files inside the step function), or use "
            "mode='threads'",
            step_id=step.id,
        ) from exc


def _functions_of(fn: object) -> list[object]:
    """``fn`` through its ``functools.partial`` wrappers, and the functions bound as their arguments."""
    found: list[object] = []
    pending = [fn]
    while pending:
        item = pending.pop()
        if isinstance(item, functools.partial):
            pending += [item.func, *item.args, *item.keywords.values()]
        elif isinstance(item, types.FunctionType):
            found.append(item)
    return found


def _check_function(step: Step, fn: object) -> None:
    """Refuse ``fn``, the step's function or one bound as an argument, if a spawned worker could not import it."""
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
            f"step {step.id!r}: mode='processes' sends each step's function (and any function bound to it with "
            f"functools.partial) to worker processes by its import path, and {where} cannot be imported there: "
            f"{problem}. Define it at module level (a functools.partial of a module-level function also works), "
            "or use mode='threads'",
            step_id=step.id,
        )


def _resume_advice(store: ArtifactStore, execution_id: str) -> str:
    """What is left of an execution that stopped, on ``store``, and how to resume it (a memory store's
    artifacts end with the process, so only a run in this process can)."""
    if store.capabilities.outlives_the_process:
        kept, where = "the artifacts of the steps that finished are kept", ""
    else:
        kept = (
            f"the artifacts of the steps that finished are kept in this process only (the {store.backend_name} "
            "backend keeps nothing once the process exits)"
        )
        where = " in this process"
    return f"{kept}: run the pipeline again{where} with execution_id={execution_id!r} to resume"


def _interrupted(pool: cf.Executor | None, exc: BaseException, execution_id: str, store: ArtifactStore) -> None:
    """After ``exc`` (Ctrl-C, ``SystemExit``): terminate the worker processes, if any, and note on ``exc`` the
    execution to resume.

    Raises:
        KeyboardInterrupt: a Ctrl-C pressed again while the workers were stopped (it cut their grace short:
            they have been killed and have ended), with the note, to be raised instead of ``exc``.
    """
    if isinstance(pool, WorkerPool):
        try:
            # Workers lead process groups of their own, which the terminal's Ctrl-C does not reach.
            pool.terminate(interrupt=isinstance(exc, KeyboardInterrupt))
        except BaseException as again:
            _note_interrupted(again, execution_id, store)
            raise
    _note_interrupted(exc, execution_id, store)


def _shut_down(pool: cf.Executor, leaving: BaseException | None, execution_id: str, store: ArtifactStore) -> None:
    """Shut ``pool`` down at the end of a run: wait for the steps still running, then for the workers to end.

    Steps are still running here only on threads after a Ctrl-C (threads cannot be stopped), or when
    ``leaving``, an exception that is no step's failure (a signal handler's, such as a deadline's on
    ``SIGALRM``, or a fault of the executor's own), left the run's loop while they ran: they finish first, as
    after a step failure. A Ctrl-C (or ``SystemExit``) meanwhile stops the worker processes as one in the
    loop does (:func:`_interrupted`: it carries the note naming the execution, the only place a fresh
    execution's id is given), and is raised instead of ``leaving``: Ctrl-C must stop the program, which an
    ``except Exception`` in the caller would not let ``leaving`` do. ``leaving`` stays its ``__context__``,
    and a note names it.

    Raises:
        KeyboardInterrupt, SystemExit: as described, with the note naming the execution to resume.
        RuntimeError and other faults of the pool itself.
    """
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except BaseException as again:
        if isinstance(again, Exception):
            raise
        if isinstance(leaving, Exception):
            again.add_note(
                f"it came while the run waited for its running steps, after {type(leaving).__name__}: "
                f"{_text_of(leaving)} (raised above) had ended it"
            )
        # After a Ctrl-C in the loop the workers are gone already (terminate() killed them); after anything else
        # (a step failure, a signal handler's exception), this one stops them, threads' steps excepted.
        _interrupted(pool, again, execution_id, store)
        raise


def _note_interrupted(exc: BaseException, execution_id: str, store: ArtifactStore) -> None:
    """Add to ``exc`` (Ctrl-C, ``SystemExit``) the note that names the interrupted execution and says how to
    resume it, unless it has it already. Raises nothing."""
    note = (
        f"execution {execution_id!r} on backend {store.backend_name!r} was interrupted; "
        f"{_resume_advice(store, execution_id)}"
    )
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    if store.capabilities.outlives_the_process:
        # For a caller that words the way to resume its own way (`artifactstore demo -n ID`, a new process);
        # a note is text.
        exc._artifactstore_interrupted = (execution_id, store.backend_name)  # type: ignore[attr-defined]
