"""Step functions of the test pipelines, at module level so spawned worker processes can import them.

Every step records each call by appending to ``<workdir>/<step>.calls`` (so calls are counted across
processes), and the pipelines are parametrised with :func:`functools.partial`, which pickles by reference.
Synchronisation between steps uses a :class:`Rendezvous` or a :class:`Gate`: files polled with a deadline,
or a ``threading.Barrier`` when every step runs in one process. Nothing here sleeps to wait for an event.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from artifactstore_core import Message
from artifactstore_core.pipeline import ArtifactConnector, Pipeline, Step

Inputs = Mapping[str, ArtifactConnector]

#: What the diamond's final step D produces, whatever the backend and mode.
EXPECTED_D = {"b": 30, "c": 7, "sum": 37}
#: How long a step waits for another before it declares the expected overlap did not happen.
DEADLINE = 60.0


class Part(BaseModel):
    """C's output: a typed payload, so D reads it back with ``.model(Part)``."""

    n: int


class Meeting(Protocol):
    def meet(self, name: str) -> None: ...


@dataclass(frozen=True)
class Rendezvous:
    """Parties meet through marker files: each arrives, then waits until every party has arrived.

    It can only complete if all parties are running at the same time, which is the point.
    """

    directory: str
    parties: tuple[str, ...]
    deadline: float = DEADLINE

    def meet(self, name: str) -> None:
        Path(self.directory, f"arrived-{name}").touch()
        wait_until(
            lambda: all(Path(self.directory, f"arrived-{party}").exists() for party in self.parties),
            self.deadline,
            f"{name} waited for {self.parties}: the steps did not run at the same time",
        )


@dataclass(frozen=True)
class BarrierMeeting:
    """Parties meet at a ``threading.Barrier`` (threads mode: steps share this process)."""

    barrier: threading.Barrier

    def meet(self, name: str) -> None:
        self.barrier.wait()


@dataclass(frozen=True)
class Gate:
    """A step waits at a gate until the test opens it (creates the file)."""

    path: str
    deadline: float = DEADLINE

    def open(self) -> None:
        Path(self.path).touch()

    def wait(self) -> None:
        wait_until(lambda: os.path.exists(self.path), self.deadline, f"gate {self.path} never opened")


def wait_until(condition: Any, deadline: float, message: str) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(message)
        time.sleep(0.005)


def record(workdir: str, step: str) -> None:
    with open(os.path.join(workdir, f"{step}.calls"), "a") as handle:
        handle.write("x")
    # Written whole, then renamed into place: a reader polling for the file (another step, the test) would
    # otherwise find it created but still empty, between write_text's truncation and its write.
    partial = Path(workdir, f"{step}.pid.{os.getpid()}.partial")
    partial.write_text(str(os.getpid()))
    os.replace(partial, Path(workdir, f"{step}.pid"))


def pids(workdir: str | Path) -> dict[str, int]:
    """The process id each step last ran in."""
    return {path.stem: int(path.read_text()) for path in Path(workdir).glob("*.pid")}


def calls(workdir: str | Path) -> dict[str, int]:
    """How many times each step was called, from the record files."""
    return {path.stem: path.stat().st_size for path in Path(workdir).glob("*.calls")}


class StepError(RuntimeError):
    """What a step raises when a test tells it to fail."""


def _fail_if(fail: bool, step: str) -> None:
    if fail:
        raise StepError(f"{step} was told to fail")


def step_a(inputs: Inputs, *, workdir: str, fail: bool = False) -> dict[str, Any]:
    record(workdir, "a")
    _fail_if(fail, "a")
    return {"n": 3}


def step_carrying(inputs: Inputs, *, workdir: str, name: str, padding: bytes) -> dict[str, int]:
    """A step whose partial arguments are large (``padding``): its worker is sent them all before it runs."""
    record(workdir, name)
    return {"size": len(padding)}


def step_b(
    inputs: Inputs, *, workdir: str, fail: bool = False, meeting: Meeting | None = None, gate: Gate | None = None
) -> dict[str, Any]:
    record(workdir, "b")
    if meeting is not None:
        meeting.meet("b")
    if gate is not None:
        gate.wait()
    _fail_if(fail, "b")
    assert inputs["a"].exists()
    return {"n": inputs["a"].content["n"] * 10}


def step_c(inputs: Inputs, *, workdir: str, fail: bool = False, meeting: Meeting | None = None) -> Part:
    record(workdir, "c")
    if meeting is not None:
        meeting.meet("c")
    _fail_if(fail, "c")
    return Part(n=inputs["a"].content["n"] + 4)


def step_d(inputs: Inputs, *, workdir: str, fail: bool = False) -> Message:
    record(workdir, "d")
    _fail_if(fail, "d")
    b = inputs["b"].content["n"]
    c = inputs["c"].model(Part).n
    return Message(content={"b": b, "c": c, "sum": b + c}, metadata={"read": ["b", "c"]})


def step_crash(inputs: Inputs, *, workdir: str) -> None:
    """Kills the worker process that runs it, as a segfault or the OOM killer would."""
    record(workdir, "crash")
    os._exit(3)


def diamond(
    workdir: str | Path,
    *,
    fail: str | None = None,
    meeting: Meeting | None = None,
    gate: Gate | None = None,
) -> Pipeline:
    """A; B and C read A; D reads B and C. ``fail`` names a step that raises :class:`StepError`."""
    where = str(workdir)
    return Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=where, fail=fail == "a")),
            Step("b", functools.partial(step_b, workdir=where, fail=fail == "b", meeting=meeting, gate=gate), ("a",)),
            Step("c", functools.partial(step_c, workdir=where, fail=fail == "c", meeting=meeting), ("a",)),
            Step("d", functools.partial(step_d, workdir=where, fail=fail == "d"), ("b", "c")),
        ]
    )


class TwoArgError(Exception):
    """Sent to another process fine, but cannot be rebuilt there: ``__init__`` takes two arguments and
    passes one message up (as ``httpx.HTTPStatusError`` and many library errors do)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def step_two_arg_error(inputs: Inputs, *, workdir: str) -> None:
    """Waits until its sibling runs, lets it go, then raises a :class:`TwoArgError`."""
    record(workdir, "two-arg-error")
    wait_until(lambda: Path(workdir, "sibling-started").exists(), DEADLINE, "the sibling step never started")
    Gate(str(Path(workdir, "sibling-go"))).open()
    raise TwoArgError(503, "the model is overloaded")


def step_sibling(inputs: Inputs, *, workdir: str) -> dict[str, Any]:
    """Runs while its sibling fails, and finishes after the sibling raised."""
    record(workdir, "sibling")
    Path(workdir, "sibling-started").touch()
    Gate(str(Path(workdir, "sibling-go"))).wait()
    return {"sibling": True}


def step_killed_beside_sibling(inputs: Inputs, *, workdir: str) -> None:
    """Waits until its sibling runs, then its worker process is killed (as by the OOM killer)."""
    record(workdir, "killed")
    wait_until(lambda: Path(workdir, "sibling-started").exists(), DEADLINE, "the sibling step never started")
    os.kill(os.getpid(), signal.SIGKILL)


def step_beside_killed(inputs: Inputs, *, workdir: str) -> dict[str, Any]:
    """Runs until the process of :func:`step_killed_beside_sibling` is dead, then returns."""
    record(workdir, "sibling")
    Path(workdir, "sibling-started").touch()
    wait_until(lambda: Path(workdir, "killed.pid").exists(), DEADLINE, "the killed step never started")
    pid = int(Path(workdir, "killed.pid").read_text())
    wait_until(lambda: is_dead(pid), DEADLINE, f"process {pid} never died")
    return {"sibling": True}


def is_dead(pid: int) -> bool:
    # A killed child stays a zombie until the executor's process reaps it: dead all the same.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


# Resume: a step run again to replace its damaged artifact, and the steps around it (test_resume.py).


def step_a_replaced(inputs: Inputs, *, workdir: str) -> dict[str, int]:
    """a, run again: lets e finish, then saves only once d read a (the old code) or f started (the fix)."""
    record(workdir, "a")
    Gate(str(Path(workdir, "e-go"))).open()
    wait_until(
        lambda: Path(workdir, "d-read").exists() or Path(workdir, "f-started").exists(),
        DEADLINE,
        "neither d nor f started while a ran again",
    )
    return {"n": 3}


def step_e_gated(inputs: Inputs, *, workdir: str) -> str:
    record(workdir, "e")
    Gate(str(Path(workdir, "e-go"))).wait()
    return "e"


def step_d_reads_a(inputs: Inputs, *, workdir: str) -> int:
    record(workdir, "d")
    try:
        return int(inputs["a"].content["n"]) + 1
    finally:
        Path(workdir, "d-read").touch()


def step_f(inputs: Inputs, *, workdir: str) -> str:
    record(workdir, "f")
    Path(workdir, "f-started").touch()
    return "f"


def step_b_reads_a(inputs: Inputs, *, workdir: str) -> int:
    record(workdir, "b")
    return int(inputs["a"].content["n"]) * 10


# Two resumes of one execution at once, in two processes (test_resume.py).


def step_a_by(inputs: Inputs, *, workdir: str, by: str, first: str, second: str) -> dict[str, str]:
    """a, run again by resume ``by``: both resumes run it at once; the second returns only once the
    first resume's b has read a's replacement and saved its own output."""
    record(workdir, f"a-{by}")
    Rendezvous(workdir, (f"a-{first}", f"a-{second}")).meet(f"a-{by}")
    if by == second:
        Gate(str(Path(workdir, f"b-{first}-done"))).wait()
    return {"by": by}


def step_b_from_a(inputs: Inputs, *, workdir: str, by: str) -> dict[str, str]:
    record(workdir, f"b-{by}")
    try:
        return {"from": inputs["a"].content["by"]}
    finally:
        Path(workdir, f"b-{by}-done").touch()


def _resume_and_record(config: Any, pipeline: Pipeline, execution_id: str, workdir: str, by: str) -> None:
    """Resume ``execution_id`` with ``pipeline`` and write its outcome (b's output and each step's status, or
    the failed step and its cause) as JSON to ``<workdir>/<by>.result``, for the test to read."""
    import json

    from artifactstore_core.pipeline import Executor, StepFailedError

    try:
        result = Executor(config, on_success="keep").run(pipeline, execution_id=execution_id)
        outcome: dict[str, Any] = {
            "output": result.output.content["from"],
            "steps": {step_id: str(step.status) for step_id, step in result.steps.items()},
        }
    except StepFailedError as error:
        outcome = {"failed": error.step_id, "cause": f"{type(error.__cause__).__name__}: {error.__cause__}"}
    Path(workdir, f"{by}.result").write_text(json.dumps(outcome))


def resume_in_process(
    config: Any, execution_id: str, workdir: str, by: str, first: str, second: str, *, upstream: bool = False
) -> None:
    """Run one resume of the a -> b pipeline (x -> a -> b with ``upstream``) and write how it ended to
    ``<workdir>/<by>.result``."""
    a = functools.partial(step_a_by, workdir=workdir, by=by, first=first, second=second)
    pipeline = Pipeline(
        [
            *([Step("x", functools.partial(step_a, workdir=workdir))] if upstream else []),
            Step("a", a, ("x",) if upstream else ()),
            Step("b", functools.partial(step_b_from_a, workdir=workdir, by=by), ("a",)),
        ]
    )
    _resume_and_record(config, pipeline, execution_id, workdir, by)


# Ctrl-C while steps run in worker processes (test_executor.py).


def step_waits_for_ever(inputs: Inputs, *, workdir: str, name: str) -> str:
    """Records its start, then waits at a gate the test never opens (until Ctrl-C, or the deadline)."""
    record(workdir, name)
    Path(workdir, f"{name}-started").touch()
    Gate(str(Path(workdir, "never"))).wait()
    return name


def step_deaf_to_ctrl_c(inputs: Inputs, *, workdir: str, name: str) -> str:
    """As :func:`step_waits_for_ever`, but deaf to Ctrl-C, as a step blocked in native code or one that
    catches ``KeyboardInterrupt`` to clean up and carries on is."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return step_waits_for_ever(inputs, workdir=workdir, name=name)


#: A process that ignores SIGTERM (SIGINT too, when the process that starts it does) and says when it runs.
_STUBBORN_CHILD = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(600)"
)


def step_with_a_child(inputs: Inputs, *, workdir: str, name: str) -> str:
    """As :func:`step_deaf_to_ctrl_c`, after starting a process that ignores SIGINT and SIGTERM (a server
    or a tool the step runs): its pid goes to ``<workdir>/<name>.child``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ready = Path(workdir, f"{name}-child-ready")
    child = subprocess.Popen([sys.executable, "-c", _STUBBORN_CHILD, str(ready)])
    # Written whole, then renamed into place, as record() does: the test's cleanup reads every .child file.
    partial = Path(workdir, f"{name}.child.{os.getpid()}.partial")
    partial.write_text(str(child.pid))
    os.replace(partial, Path(workdir, f"{name}.child"))
    wait_until(ready.exists, DEADLINE, f"the process {name} started never ran")
    return step_waits_for_ever(inputs, workdir=workdir, name=name)


def step_deaf_to_sigterm(inputs: Inputs, *, workdir: str, name: str) -> str:
    """As :func:`step_deaf_to_ctrl_c`, and deaf to SIGTERM too (a step that catches it to clean up, and carries
    on): each SIGTERM it gets is recorded as ``<workdir>/<name>-sigterm``. Only SIGKILL stops its worker."""

    def noted(signum: int, frame: object) -> None:
        Path(workdir, f"{name}-sigterm").touch()

    signal.signal(signal.SIGTERM, noted)
    return step_deaf_to_ctrl_c(inputs, workdir=workdir, name=name)


def children(workdir: str | Path) -> dict[str, int]:
    """The process id of the process each step of :func:`step_with_a_child` started."""
    return {path.stem: int(path.read_text()) for path in Path(workdir).glob("*.child")}


def waiting_pipeline(workdir: str, deaf: bool = False, child: bool = False, stubborn: bool = False) -> Pipeline:
    """a, then s0, s1 and s2, which read it and wait at the gate ``<workdir>/never`` (``deaf`` to Ctrl-C;
    with ``child``, also after starting a process that ignores SIGINT and SIGTERM; ``stubborn``: deaf to
    SIGTERM too)."""
    waits = step_waits_for_ever
    if child:
        waits = step_with_a_child
    elif stubborn:
        waits = step_deaf_to_sigterm
    elif deaf:
        waits = step_deaf_to_ctrl_c
    return Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=workdir)),
            *(Step(name, functools.partial(waits, workdir=workdir, name=name), ("a",)) for name in ("s0", "s1", "s2")),
        ]
    )


def run_until_interrupted(
    root: str, workdir: str, deaf: bool = False, child: bool = False, stubborn: bool = False, deadline: bool = False
) -> None:
    """Run a pipeline of three waiting steps (``deaf`` to Ctrl-C, or not; with a ``child`` process each, or
    not; ``stubborn``: deaf to SIGTERM too) on two worker processes, for the test to interrupt or kill.

    With ``deadline``, under a deadline as a program sets one with ``signal.alarm``: a ``SIGALRM`` handler
    raises ``TimeoutError``, and ``<workdir>/deadline`` is written once the run's final shutdown begins (written
    by the handler itself, a Ctrl-C sent when it appeared could land in the handler before its raise). On a
    ``KeyboardInterrupt``, its notes go to ``<workdir>/interrupted``, and to ``<workdir>/outcome`` (JSON) its
    notes, the type of its ``__context__`` and which of the workers of s0 and s1 were still alive when run()
    raised it."""
    import json
    import signal as signals
    import sys

    from artifactstore_core.pipeline import Executor, StoreConfig

    # A process started in the background inherits an ignored SIGINT; a terminal's foreground job does not.
    signals.signal(signals.SIGINT, signals.default_int_handler)
    if deadline:
        from artifactstore_core.pipeline._workers import WorkerPool

        def expired(signum: int, frame: object) -> None:
            raise TimeoutError("the pipeline's deadline passed")

        shutdown = WorkerPool.shutdown

        def shutting_down(self: WorkerPool, wait: bool = True, *, cancel_futures: bool = False) -> None:
            _write(Path(workdir, "deadline"), "passed")
            shutdown(self, wait, cancel_futures=cancel_futures)

        signals.signal(signals.SIGALRM, expired)
        WorkerPool.shutdown = shutting_down  # type: ignore[method-assign]
    pipeline = waiting_pipeline(workdir, deaf, child, stubborn)
    try:
        Executor(StoreConfig("filesystem", root=root), mode="processes", max_workers=2).run(
            pipeline, execution_id="interrupted"
        )
    except KeyboardInterrupt as interrupt:
        notes = getattr(interrupt, "__notes__", [])
        workers = [pids(workdir)[name] for name in ("s0", "s1")]
        Path(workdir, "interrupted").write_text("\n".join(notes))
        outcome = {
            "context": type(interrupt.__context__).__name__,
            "notes": notes,
            "alive": [pid for pid in workers if not is_dead(pid)],
        }
        _write(Path(workdir, "outcome"), json.dumps(outcome))
        sys.exit(130)


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole, then rename it into place, for a test that polls for ``path``."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


# A step whose partial arguments pass the executor's check but cannot be sent to a worker (test_executor.py).


class CopiedNotPickled:
    """Copied by ``copy.deepcopy`` (the executor's check before any step runs) but refused by pickle: found
    only when its step is sent to a worker."""

    def __deepcopy__(self, memo: dict[int, Any]) -> CopiedNotPickled:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a CopiedNotPickled cannot be pickled")


def step_with_payload(inputs: Inputs, *, workdir: str, name: str, payload: object) -> str:
    record(workdir, name)
    return name


# A step whose output changes with every call, so a stale replacement is told from a fresh output (test_resume.py).


def step_a_counted(inputs: Inputs, *, workdir: str) -> dict[str, int]:
    """a, returning how many times it has been called (this call included)."""
    record(workdir, "a")
    return {"call": calls(workdir)["a"]}


def step_b_copies_a(inputs: Inputs, *, workdir: str, fail: bool = False) -> int:
    """b, returning the call of a that it read (or failing, when told to)."""
    record(workdir, "b")
    _fail_if(fail, "b")
    return int(inputs["a"].content["call"])


# One resume finds an artifact damaged, another finds it gone (test_resume.py).


def step_a_held(inputs: Inputs, *, workdir: str, by: str, hold: bool) -> dict[str, str]:
    """a, run again by resume ``by``: says it started, and with ``hold`` returns only once the test lets it."""
    record(workdir, f"a-{by}")
    Path(workdir, f"a-{by}-started").touch()
    if hold:
        Gate(str(Path(workdir, f"a-{by}-go"))).wait()
    return {"by": by}


def resume_held(config: Any, execution_id: str, workdir: str, by: str, hold: bool) -> None:
    """Run one resume of the a -> b pipeline, a held with ``hold``; write how it ended to ``<by>.result``."""
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a_held, workdir=workdir, by=by, hold=hold)),
            Step("b", functools.partial(step_b_from_a, workdir=workdir, by=by), ("a",)),
        ]
    )
    _resume_and_record(config, pipeline, execution_id, workdir, by)


# Two processes running one execution (test_shared_execution.py).


def step_sink(inputs: Inputs, *, workdir: str, name: str, gate: Gate | None = None) -> dict[str, Any]:
    """Reads a; with ``gate``, says it is waiting (``<name>-waiting``) and waits at the gate first."""
    record(workdir, name)
    n = inputs["a"].content["n"]
    if gate is not None:
        Path(workdir, f"{name}-waiting").touch()
        gate.wait()
    return {"from": name, "n": n}


def run_shared(config: Any, execution_id: str, workdir: str, by: str, gate: Gate | None) -> None:
    """Run a -> (c1, c2) as execution ``execution_id`` on one thread (so c1 is saved before c2 starts), c2
    held at ``gate`` if given, clearing on success; write how it ended to ``<workdir>/<by>.result``: each
    step's status, or the failed step, its cause, message and notes, or any other error's type and text."""
    import json

    from artifactstore_core.pipeline import Executor, StepFailedError

    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=workdir)),
            Step("c1", functools.partial(step_sink, workdir=workdir, name="c1"), ("a",)),
            Step("c2", functools.partial(step_sink, workdir=workdir, name="c2", gate=gate), ("a",)),
        ]
    )
    try:
        result = Executor(config, max_workers=1).run(pipeline, execution_id=execution_id)
        outcome: dict[str, Any] = {"steps": {step_id: str(step.status) for step_id, step in result.steps.items()}}
    except StepFailedError as error:
        outcome = {
            "failed": error.step_id,
            "execution_id": error.execution_id,
            "cause": type(error.__cause__).__name__,
            "message": str(error),
            "notes": getattr(error, "__notes__", []),
            "steps": {step_id: str(step.status) for step_id, step in error.result.steps.items()}
            if error.result
            else {},
        }
    except Exception as error:
        outcome = {"raised": type(error).__name__, "message": str(error)}
    Path(workdir, f"{by}.result").write_text(json.dumps(outcome))
