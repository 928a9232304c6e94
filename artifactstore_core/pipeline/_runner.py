"""Running one step: on a thread of the executor's process, or in a worker process.

A worker process receives only a :class:`WorkerTask` (the step, whose function travels by its import
path, the store config and the execution id), rebuilds the store from the config, saves the step's
output itself and sends back a small :class:`StepOutcome`: artifacts never travel through the pool.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .._wording import with_article
from ..envelope import content_bytes, reusing_verified_digests
from ..errors import ArtifactCorruptedError, ArtifactExistsError, ArtifactNotFoundError, SerializationError
from ..message import Message
from ..store import ArtifactStore
from .config import StoreConfig
from .connector import ArtifactConnector
from .graph import RESERVED_PREFIX, Step

__all__ = [
    "SAVE_ATTEMPTS",
    "ReusedInputsUnusable",
    "StepOutcome",
    "WorkerTask",
    "execute_step",
    "forget_replacements",
    "replacement_generations",
    "replacement_id",
    "run_in_worker",
    "save_or_adopt",
    "to_message",
]


class StepInputs(Mapping[str, ArtifactConnector]):
    """The read-only mapping a step's function receives: each input step id to its connector.

    A plain mapping's ``KeyError`` for an id the step did not declare names only the id; the step then fails
    with ``KeyError: 'x'``, which does not say that the step must list ``x`` in its ``inputs``.
    """

    __slots__ = ("_connectors", "_step_id")

    def __init__(self, step_id: str, connectors: dict[str, ArtifactConnector]) -> None:
        self._step_id = step_id
        self._connectors = connectors

    def __getitem__(self, name: str) -> ArtifactConnector:
        try:
            return self._connectors[name]
        except KeyError:
            declared = ", ".join(map(repr, self._connectors)) or "none"
            raise KeyError(
                f"step {self._step_id!r} has no input {name!r} (its inputs: {declared}); "
                f"list it in Step({self._step_id!r}, fn, inputs=[...]) to read its output"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._connectors)

    def __len__(self) -> int:
        return len(self._connectors)

    def __repr__(self) -> str:
        return f"StepInputs({self._step_id!r}, {list(self._connectors)!r})"


@dataclass(frozen=True)
class StepOutcome:
    """What running a step reports back (small, so it is cheap to send from a worker)."""

    step_id: str
    duration: float
    size: int
    #: False when a replacement another resume of the execution saved was restored instead of running the step.
    ran: bool = True


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker process needs to run one step."""

    step: Step
    config: StoreConfig
    execution_id: str
    #: The step's position in the pipeline's order (the worker pool reports it for a worker that died).
    index: int = -1
    #: Inputs reused from an earlier run of this execution, read (and so verified) before the step runs.
    verify: tuple[str, ...] = ()
    #: Save with ``overwrite=True``: the step replaces its own artifact, found damaged.
    overwrite: bool = False
    #: Remove the step's replacement records before saving a fresh output (a run given an execution id).
    forget: bool = False
    #: The highest generation of the step's replacement records that the resume's listing found (0: none).
    records: int = 0


class ReusedInputsUnusable(Exception):  # noqa: N818 - a signal to the executor, never raised to users
    """Inputs reused from an earlier run could not be read (damaged, or gone since they were listed).

    Raised by :func:`execute_step` before the step's function is called, so the executor can run the steps
    that produce those inputs again and then this step. Plain ``args`` (the step id, then ``(input id,
    reason, gone)`` triples, ``gone`` true for an ``ArtifactNotFoundError``) so that it travels from a worker
    process intact.
    """

    def __init__(self, step_id: str, unusable: tuple[tuple[str, str, bool], ...]) -> None:
        super().__init__(step_id, unusable)
        self.step_id = step_id
        self.unusable = unusable


def to_message(step_id: str, value: Any) -> Message:
    """Wrap a step's return value: a Message as is, a pydantic model with its schema, else as content.

    Raises:
        SerializationError: the value is not a Message, a pydantic model, a JSON value, ``str`` or ``bytes``.
    """
    if isinstance(value, Message):
        return value
    if isinstance(value, BaseModel):
        return Message.from_model(value)
    try:
        return Message(content=value)
    except ValidationError as exc:
        # The validator's own words say what is wrong, often deep inside (a NaN in a dict of scores): "a dict
        # is not a JSON value" alone sends the user looking for the wrong thing.
        why = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        raise SerializationError(
            f"step {step_id!r} returned {with_article(type(value).__name__)} that cannot be stored ({why}): "
            "a step returns a Message, a pydantic model, a JSON value, str or bytes",
            step_id=step_id,
        ) from exc


def replacement_id(step_id: str, generation: int) -> str:
    """The id of the record of the ``generation``-th replacement of ``step_id``'s artifact (from 1).

    Under ``RESERVED_PREFIX`` (``.artifactstore/``), which no step id has; the step id
    goes in as a digest, so the record id stays within the id length limit however long the step id is.
    Raises nothing.
    """
    digest = hashlib.sha256(step_id.encode("utf-8")).hexdigest()
    return f"{RESERVED_PREFIX}replacement/{generation}/{digest}"


def replacement_generations(step_ids: Iterable[str], stored_ids: Iterable[str]) -> dict[str, int]:
    """The highest generation of replacement record found among ``stored_ids`` for each of ``step_ids``
    (only the steps that have one). Raises nothing.
    """
    steps = {hashlib.sha256(step_id.encode("utf-8")).hexdigest(): step_id for step_id in step_ids}
    prefix = f"{RESERVED_PREFIX}replacement/"
    highest: dict[str, int] = {}
    for stored in stored_ids:
        generation, _, digest = stored.removeprefix(prefix).partition("/")
        step_id = steps.get(digest)
        if step_id is not None and stored.startswith(prefix) and generation.isdecimal():
            highest[step_id] = max(highest.get(step_id, 0), int(generation))
    return highest


def forget_replacements(store: ArtifactStore, step_id: str, known: int = 0) -> None:
    """Delete the replacement records of ``step_id``: generations 1 to ``known`` (the highest a listing of
    the namespace found, 0 when none or not known) whatever is missing among them, and those above it up
    to the first missing one.

    Records can have gaps: one deleted by hand, one expired before the next, a forget stopped part-way.
    Stopping at the first missing one would leave the records above a gap, and a later replacement of the
    step would restore an old output from one of them. Only a listing can see past a gap, so the caller
    passes what its listing found. The records are deleted from the highest down, so a forget stopped
    part-way leaves generations 1 to n, which the next finds without a listing.

    Raises:
        BackendError and the other errors of :meth:`ArtifactStore.exists` and :meth:`ArtifactStore.delete`.
    """
    top = known
    while store.exists(replacement_id(step_id, top + 1)):
        top += 1
    for generation in range(top, 0, -1):
        store.delete(replacement_id(step_id, generation))


def execute_step(
    store: ArtifactStore,
    step: Step,
    verify: tuple[str, ...] = (),
    overwrite: bool = False,
    forget: bool = False,
    records: int = 0,
) -> StepOutcome:
    """Run ``step`` with connectors on ``store`` and save its output under its id.

    Args:
        verify: inputs reused from an earlier run: read through their connectors before the step runs,
            which verifies them (size and digest) and keeps the message for the step, so it is read once.
        overwrite: the step replaces its damaged artifact: the replacement is written once (see
            :func:`_replace`), then over the artifact with ``overwrite=True``. A vanished artifact is not
            replaced this way: its step runs with ``overwrite=False`` (a plain write-once save).
        forget: the step's replacement records may exist (a run given an execution id): they are deleted
            before its fresh output is saved (see below).
        records: the highest generation of the step's records that a listing of the namespace found, so
            that records above a missing one are deleted too (see :func:`forget_replacements`).

    Raises:
        ReusedInputsUnusable: an input in ``verify`` is damaged (``ArtifactCorruptedError``) or gone
            (``ArtifactNotFoundError``); the step's function was not called.
        ArtifactNotFoundError: the step's saves kept losing to another run's artifact that was gone before
            it could be read back (see :func:`save_or_adopt`), or an input this run saved is gone.
        Whatever the step raises; SerializationError for an output that cannot be a message; the
        errors of :meth:`ArtifactStore.save` (not ``ArtifactExistsError``: the artifact another run saved
        first is read and used), and of reading an input in ``verify`` (a ``BackendError`` is the step's
        failure, never taken for damage).
    """
    started = time.perf_counter()
    inputs = StepInputs(step.id, {name: ArtifactConnector(store, name) for name in step.inputs})
    unusable = []
    for name in verify:
        try:
            inputs[name].get()
        except (ArtifactCorruptedError, ArtifactNotFoundError) as exc:
            unusable.append((name, f"{type(exc).__name__}: {exc}", isinstance(exc, ArtifactNotFoundError)))
    if unusable:
        raise ReusedInputsUnusable(step.id, tuple(unusable))
    if overwrite:
        _, ran, size = _replace(store, step, inputs, records)
        return StepOutcome(step.id, time.perf_counter() - started if ran else 0.0, size, ran)
    message = to_message(step.id, step.fn(inputs))
    # The save's encoding of JSON content is reused to measure it, not computed again (seconds for an output
    # of a few hundred MB). Not around the step's function: the context keeps every content it sees.
    with reusing_verified_digests():
        if forget:
            # A record stands for the artifact it replaced and its copies: once the step's artifact is saved
            # afresh (it was deleted by hand to be computed again, or it vanished), an old record would
            # restore an output older than this one when the new artifact is found damaged. So a fresh save
            # ends the step's records. Deleted before the save: a stop between the two leaves neither an
            # artifact nor records, which the next resume handles; the other order could leave both. This is
            # chosen over tying each record to the damaged artifact's identity (its digest and created time
            # from info()), which an artifact with a damaged header does not have.
            forget_replacements(store, step.id, records)
        # The step had no artifact when the run started (or it would have been reused): a conflict means another
        # run of this execution (a second resume at once) saved its output while it ran here. Write-once makes
        # that first output the step's artifact, the one every reader reads: this run uses it too.
        message = save_or_adopt(store, step.id, message, step.id)
        duration = time.perf_counter() - started
        return StepOutcome(step.id, duration, len(content_bytes(message)[1]))


#: How many times a step saves its output (or a replacement record) when each save loses to another run's
#: artifact that is gone again before this run can read it back (see :func:`save_or_adopt`).
SAVE_ATTEMPTS = 3


def save_or_adopt(store: ArtifactStore, artifact_id: str, message: Message, step_id: str) -> Message:
    """Save ``message`` write-once under ``artifact_id`` (``step_id``'s artifact, or one of its replacement
    records); return the message stored there: ``message``, or the one another run of the execution saved
    first (write-once: that first one is what every reader reads, so this run uses it too).

    Another run of the execution may also remove what it saved between this run's conflicting save and its
    read of it (it finished and cleared the execution with ``on_success='clear'``; or the artifact was
    deleted, or expired). The artifact is then simply missing again, as if never saved: this run saves its
    own message again rather than failing on an artifact it was about to hold. Bounded: after
    :data:`SAVE_ATTEMPTS` saves lost that way, it gives up.

    Raises:
        ArtifactNotFoundError: each of :data:`SAVE_ATTEMPTS` saves conflicted with an artifact that was gone
            when read back; it names the step and the execution, the last read's error chained.
        The errors of :meth:`ArtifactStore.save` (not ``ArtifactExistsError``) and ``get`` (an
        ``ArtifactCorruptedError`` of the other run's artifact is raised, not saved over).
    """
    gone: ArtifactNotFoundError | None = None
    for _ in range(SAVE_ATTEMPTS):
        try:
            store.save(artifact_id, message)
            return message
        except ArtifactExistsError:
            pass
        try:
            return store.get(artifact_id)
        except ArtifactNotFoundError as exc:
            gone = exc
    raise _lost_saves(store, artifact_id, step_id) from gone


def _lost_saves(store: ArtifactStore, artifact_id: str, step_id: str) -> ArtifactNotFoundError:
    """The error of a step that lost :data:`SAVE_ATTEMPTS` saves of ``artifact_id`` to artifacts that were
    gone again before it could read them. Raises nothing."""
    what = f"artifact {artifact_id!r}" if artifact_id == step_id else f"the replacement record {artifact_id!r}"
    error = ArtifactNotFoundError(
        f"step {step_id!r} saved its output {SAVE_ATTEMPTS} times, and each time another run of execution "
        f"{store.namespace!r} on backend {store.backend_name!r} had saved {what} first (write-once) and it was "
        "gone before this run could read it back: the other run cleared the execution (on_success='clear'; "
        "run executions that may overlap with on_success='keep'), or the artifact was deleted or expired",
        step_id=step_id,
        namespace=store.namespace,
        backend=store.backend_name,
    )
    error.missing_ids = (artifact_id,)
    return error


def _replace(store: ArtifactStore, step: Step, inputs: Any, records: int = 0) -> tuple[Message, bool, int]:
    """Replace ``step``'s damaged artifact; return the replacement, whether the step ran, and its content size.

    Two resumes of one execution (two processes) can find the same artifact damaged and replace it at
    once. Were each to overwrite it with its own run's output, the second would replace the artifact
    under the steps of the first that had already read it. So the replacement is decided write-once:
    it is saved first as a record (:func:`replacement_id`, one generation after the last record of
    the step), and whichever resume creates that record decides the replacement; the others take the
    record's message, and every resume writes that same message over the artifact. A sound last record
    found before running means another resume has replaced the artifact already (or an earlier resume
    did, and the artifact was damaged again): it is restored from the record, and the step does not run.
    It cannot be older than the artifact: a fresh save of the step deletes its records first
    (:func:`execute_step` with ``forget``).

    A vanished artifact never comes here: no record is needed to agree on its replacement, since a
    write-once save of the output run again already lets the first resume win and the other read it.
    """
    generation = 1
    last: Message | None = None
    while True:
        record = replacement_id(step.id, generation)
        try:
            last = store.get(record)
        except ArtifactNotFoundError:
            break
        except ArtifactCorruptedError:
            # A damaged record decides nothing: the next generation replaces it.
            last = None
        generation += 1
    ran = last is None
    message = to_message(step.id, step.fn(inputs)) if last is None else last
    # One encoding of JSON content for the record, the artifact and the size (see execute_step).
    with reusing_verified_digests():
        if ran:
            # A conflict: another resume created this generation's record while the step ran here; its output
            # is the replacement, the artifact its readers may have read already.
            message = save_or_adopt(store, record, message, step.id)
        installed = _install(store, step.id, message, record, max(records, generation))
        return installed, ran, len(content_bytes(installed)[1])


def _install(store: ArtifactStore, step_id: str, replacement: Message, record: str, records: int) -> Message:
    """Put ``replacement`` (decided by ``record``) in place of ``step_id``'s damaged artifact; return the
    message that is the step's artifact afterwards.

    Only a damaged artifact is overwritten. Between this resume's read that found it damaged and now, it may
    have been deleted (by hand, or it expired) and another resume, finding it gone, may have run the step and
    saved it write-once, as any step that runs does (deleting the step's records first); that resume's
    readers have read it. Overwriting it then would leave them computed from an artifact the execution no
    longer holds, so that sound artifact is used instead, and the records that do not stand for it are
    deleted, this resume's own included (as the other resume would have, had it saved after this one). A gone
    artifact is saved write-once, so a resume that finds it gone and saves at the same time agrees on one.

    ``records`` is the highest generation of the step's records known (``record``'s own, or higher from the
    resume's listing).

    Raises:
        ArtifactNotFoundError: as :func:`save_or_adopt`, the artifact kept being gone and then saved by
            another run, :data:`SAVE_ATTEMPTS` times.
        BackendError and the other errors of :meth:`ArtifactStore.get`, ``save``, ``exists`` and ``delete``.
    """
    gone: ArtifactNotFoundError | None = None
    # One read more than saves: after the last lost save, what the winner saved is read (and used) too.
    for attempt in range(SAVE_ATTEMPTS + 1):
        try:
            current = store.get(step_id)
        except ArtifactCorruptedError:
            # Still the damaged artifact (a sound one is never damaged by saving): ours replaces it. A deletion
            # and a fresh save landing between this read and this write would be overwritten; closing that
            # needs an overwrite conditional on the stored digest, which the store contract does not have.
            store.save(step_id, replacement, overwrite=True)
            return replacement
        except ArtifactNotFoundError as exc:
            gone = exc
            if attempt == SAVE_ATTEMPTS:
                break
            try:
                store.save(step_id, replacement)
                return replacement
            except ArtifactExistsError:
                continue  # another resume saved it since: read what it saved
        if current != replacement:
            # ``records`` is at least ``record``'s own generation, so this deletes it too.
            forget_replacements(store, step_id, records)
        return current
    # Bounded: each save lost to another run's, whose artifact was gone again when read.
    raise _lost_saves(store, step_id, step_id) from gone


# One store per worker process, reused by every step the worker runs for the same execution.
_worker_lock = threading.Lock()
_worker_store: tuple[StoreConfig, str, ArtifactStore] | None = None
_close_registered = False


def _close_worker_store() -> None:
    global _worker_store
    with _worker_lock:
        cached, _worker_store = _worker_store, None
    if cached is not None:
        cached[2].close()


def _store_for(config: StoreConfig, execution_id: str) -> ArtifactStore:
    global _worker_store, _close_registered
    with _worker_lock:
        if _worker_store is not None and _worker_store[0] == config and _worker_store[1] == execution_id:
            return _worker_store[2]
        previous, _worker_store = _worker_store, None
        if previous is not None:
            previous[2].close()
        if not _close_registered:
            # Release the backend's connections when the worker exits.
            atexit.register(_close_worker_store)
            _close_registered = True
        store = config.create(execution_id)
        _worker_store = (config, execution_id, store)
        return store


def run_in_worker(task: WorkerTask) -> StepOutcome:
    """Entry point of a worker process: rebuild the store from settings, run the step, save its output.

    Raises:
        The errors of :func:`execute_step`, and those of building the store. An exception that could not
        be rebuilt in the executor's process is replaced by a ``RuntimeError`` naming its type and text,
        with the original chained (so the worker's traceback still shows where it was raised).
    """
    try:
        store = _store_for(task.config, task.execution_id)
        return execute_step(store, task.step, task.verify, task.overwrite, task.forget, task.records)
    except Exception as exc:
        problem = _unrebuildable(exc)
        if problem is None:
            raise
        raise RuntimeError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} (step {task.step.id!r} raised it in a "
            f"worker process, and it cannot be sent to the executor's process: {problem})"
        ) from exc


def _unrebuildable(exc: Exception) -> str | None:
    """Why ``exc`` would not survive the trip to the executor's process, or ``None`` if it would.

    The pool sends exceptions by their reduce protocol, which rebuilds them as ``type(exc)(*exc.args)``.
    An exception whose ``__init__`` takes other arguments than ``args`` (``httpx.HTTPStatusError``, any
    ``__init__(self, a, b)`` that passes one message up) is sent fine but fails to rebuild in the
    receiving process, where only the rebuilding error would be left to report: the real error, its text
    and its traceback would be lost. ``copy.deepcopy`` goes through the same protocol,
    so it finds those (and attributes that cannot be sent at all) here, while the original is at hand.
    """
    try:
        copy.deepcopy(exc)
    except Exception as problem:
        return f"{type(problem).__name__}: {problem}"
    return None
