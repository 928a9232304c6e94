"""The executor: the diamond on every backend and mode, concurrency, failure and resume, policies."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import json
import logging
import multiprocessing.connection
import os
import pickle
import signal
import subprocess
import sys
import threading
import unicodedata
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from conftest import Case
from pipeline_steps import (
    EXPECTED_D,
    BarrierMeeting,
    CopiedNotPickled,
    Gate,
    Inputs,
    StepError,
    calls,
    children,
    diamond,
    is_dead,
    pids,
    step_a,
    step_b,
    step_beside_killed,
    step_carrying,
    step_crash,
    step_killed_beside_sibling,
    step_sibling,
    step_two_arg_error,
    step_waits_for_ever,
    step_with_a_child,
    step_with_payload,
    wait_until,
    waiting_pipeline,
)

import artifactstore_core.message as message_module
from artifactstore_core import (
    ArtifactInfo,
    ArtifactStore,
    ConfigurationError,
    InvalidStepIdError,
    Message,
    SerializationError,
    create_store,
)
from artifactstore_core.pipeline import (
    ArtifactConnector,
    Executor,
    Pipeline,
    RunResult,
    ServiceContainer,
    ServiceNotFoundError,
    Step,
    StepFailedError,
    StepResult,
    StepStatus,
    StoreConfig,
    _workers,
    register_artifact_store,
)
from artifactstore_core.pipeline._runner import replacement_id
from artifactstore_core.pipeline._workers import WorkerPool
from artifactstore_http.testing import TOKEN

pytestmark = pytest.mark.timeout(120)


def statuses(result: RunResult) -> dict[str, StepStatus]:
    return {step_id: step.status for step_id, step in result.steps.items()}


# -- the diamond everywhere ---------------------------------------------------------------------------


def test_diamond_same_result_and_branches_overlap(case: Case, workdir: Path) -> None:
    # B and C each wait for the other to arrive: the run can only succeed if they overlap.
    pipeline = diamond(workdir, meeting=case.meeting(workdir, "b", "c"))
    result = Executor(case.config, mode=case.mode, max_workers=2).run(pipeline)

    assert result.output.content == EXPECTED_D
    assert result.output.metadata == {"read": ("b", "c")}
    assert statuses(result) == dict.fromkeys("abcd", StepStatus.SUCCEEDED)
    assert all(step.size and step.size > 0 for step in result.steps.values())
    assert calls(workdir) == dict.fromkeys("abcd", 1)
    assert result.backend == case.config.backend
    assert result.cleared
    assert case.left(result.execution_id) == []
    ran_in = pids(workdir)
    if case.mode == "processes":
        assert os.getpid() not in ran_in.values()
        assert ran_in["b"] != ran_in["c"]  # also implied by the rendezvous
    else:
        assert set(ran_in.values()) == {os.getpid()}


def test_keep_on_success_leaves_every_artifact(case: Case, workdir: Path) -> None:
    result = Executor(case.config, mode=case.mode, on_success="keep").run(diamond(workdir))

    assert not result.cleared
    assert case.left(result.execution_id) == ["a", "b", "c", "d"]
    with case.config.create(result.execution_id) as store:
        assert store.get("d").content == EXPECTED_D
        assert store.get("c").schema is not None  # C returned a pydantic model: its schema was recorded
        store.clear()


def test_branches_that_cannot_overlap_do_not_meet(workdir: Path) -> None:
    # The control for the concurrency proof: with one worker, B and C never meet and the barrier breaks.
    meeting = BarrierMeeting(threading.Barrier(2, timeout=0.5))
    with pytest.raises(StepFailedError) as caught:
        Executor(StoreConfig("memory"), max_workers=1).run(diamond(workdir, meeting=meeting))
    assert isinstance(caught.value.__cause__, threading.BrokenBarrierError)


def test_a_step_starts_when_its_inputs_are_done_not_its_level(workdir: Path) -> None:
    # Level 0: a and slow; level 1: b (reads a). slow waits for b to have run: that deadlocks (and the
    # gate times out) if b waited for the whole of level 0.
    started_b = threading.Event()

    def slow(inputs: Inputs) -> str:
        assert started_b.wait(timeout=60), "b did not start while level 0 was still running"
        return "slow"

    def b(inputs: Inputs) -> str:
        started_b.set()
        return "b"

    pipeline = Pipeline(
        [Step("a", functools.partial(step_a, workdir=str(workdir))), Step("slow", slow), Step("b", b, ("a",))]
    )
    result = Executor(StoreConfig("memory"), max_workers=2).run(pipeline)
    assert set(result.outputs) == {"slow", "b"}


# -- failure and resume -------------------------------------------------------------------------------


def test_failure_names_step_keeps_upstream_and_resume_runs_the_rest(case: Case, workdir: Path) -> None:
    executor = Executor(case.config, mode=case.mode, max_workers=2)
    with pytest.raises(StepFailedError) as caught:
        executor.run(diamond(workdir, fail="c"))
    error = caught.value
    execution_id = error.execution_id
    assert execution_id is not None

    assert error.step_id == "c"
    assert "step 'c' failed" in str(error)
    assert "StepError: c was told to fail" in str(error)
    assert execution_id in str(error)
    assert isinstance(error.__cause__, StepError)
    assert error.backend == case.config.backend
    assert error.result is not None
    first = statuses(error.result)
    assert first["a"] == StepStatus.SUCCEEDED
    assert first["c"] == StepStatus.FAILED
    assert first["d"] == StepStatus.NOT_RUN
    left = case.left(execution_id)
    assert "a" in left
    assert "c" not in left
    assert "d" not in left
    assert ("b" in left) == (first["b"] == StepStatus.SUCCEEDED)
    assert calls(workdir)["c"] == 1
    assert "d" not in calls(workdir)

    # The bug is fixed; resume the same execution.
    result = executor.run(diamond(workdir), execution_id=execution_id)

    assert result.execution_id == execution_id
    assert result.output.content == EXPECTED_D
    expected_ran = ["c", "d"] if "b" in left else ["b", "c", "d"]
    assert result.ran() == expected_ran
    assert {step_id for step_id, status in statuses(result).items() if status == StepStatus.REUSED} == set(left)
    assert calls(workdir) == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert case.left(execution_id) == []


def test_step_failed_error_survives_pickling(workdir: Path) -> None:
    with pytest.raises(StepFailedError) as caught:
        Executor(StoreConfig("memory")).run(diamond(workdir, fail="a"))
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.step_id, copy.execution_id, copy.backend) == ("a", caught.value.execution_id, "memory")
    assert copy.result == caught.value.result
    assert str(copy) == str(caught.value)


def test_no_step_starts_after_a_failure_seen_with_a_sibling_that_finished_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two steps that end together come back from one wait, in an order no test controls. When the one that
    # succeeded came first, its reader was queued, and was started after the failure had been seen. This wait
    # returns both, the sibling first, every time.
    original = concurrent.futures.wait

    def both_sibling_first(fs: Any, timeout: float | None = None, return_when: str = "") -> Any:
        original(fs, timeout, concurrent.futures.ALL_COMPLETED)
        return [future for future in fs if future.done()], set()

    monkeypatch.setattr(concurrent.futures, "wait", both_sibling_first)
    started: list[str] = []

    def fails(inputs: Inputs) -> None:
        raise StepError("told to fail")

    def reader(inputs: Inputs) -> int:
        started.append("reader")  # an expensive model call, in a real pipeline
        return 2

    pipeline = Pipeline([Step("sibling", lambda inputs: 1), Step("fails", fails), Step("reader", reader, "sibling")])
    with pytest.raises(StepFailedError) as caught:
        Executor(max_workers=2).run(pipeline)

    assert caught.value.step_id == "fails"
    assert started == []
    assert caught.value.result is not None
    assert statuses(caught.value.result) == {
        "sibling": StepStatus.SUCCEEDED,
        "fails": StepStatus.FAILED,
        "reader": StepStatus.NOT_RUN,
    }


def test_failure_with_clear_policy_removes_everything(workdir: Path) -> None:
    config = StoreConfig("memory")
    with pytest.raises(StepFailedError) as caught:
        Executor(config, on_failure="clear").run(diamond(workdir, fail="d"))
    assert caught.value.step_id == "d"
    assert "cleared" in str(caught.value)
    assert caught.value.result is not None
    assert caught.value.result.cleared
    with config.create(caught.value.execution_id) as store:
        assert list(store.list()) == []


@pytest.mark.parametrize("policy", ["success", "failure"])
def test_clearing_a_given_execution_id_keeps_what_is_not_the_pipelines(
    tmp_path: Path, workdir: Path, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    # `artifactstore put -n work report ./report.pdf`, then `artifactstore demo -n work`: clearing the
    # namespace at the end of the run removed the user's report with the demo's artifacts.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    with config.create("work") as store:
        store.save("report", Message(content=b"%PDF the user's own"))
    executor = Executor(config, on_failure="clear")

    with caplog.at_level("WARNING", logger="artifactstore_core.pipeline"):
        if policy == "success":
            result = executor.run(diamond(workdir), execution_id="work")
            assert result.cleared
        else:
            with pytest.raises(StepFailedError):
                executor.run(diamond(workdir, fail="d"), execution_id="work")

    assert Case(config, "threads").left("work") == ["report"]
    assert any("'report'" in record.getMessage() for record in caplog.records)


def test_clearing_a_given_execution_id_removes_its_replacement_records(tmp_path: Path, workdir: Path) -> None:
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    with config.create("work") as store:
        store.save("report", Message(content="the user's own"))
        store.save("a", Message(content={"n": 3}))
        store.save(replacement_id("a", 1), Message(content={"n": 3}))

    Executor(config).run(diamond(workdir), execution_id="work")

    assert Case(config, "threads").left("work") == ["report"]


def test_clearing_a_given_execution_id_keeps_what_is_saved_after_its_listing(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The end of the run lists the namespace, then removes the execution's artifacts. When the listing held
    # nothing else it cleared the namespace, which also removed what another program saved in between.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    with config.create("work") as probe:
        store_class = type(probe)
    listing = store_class.list

    def list_then_another_program_saves(self: ArtifactStore) -> Iterator[ArtifactInfo]:
        listed = list(listing(self))
        yield from listed
        if listed:  # the listing at the end of the run (the one at its start finds the namespace empty)
            with config.create("work") as other:
                other.save("late", Message(content="saved by another program after the listing"))

    monkeypatch.setattr(store_class, "list", list_then_another_program_saves)
    Executor(config).run(diamond(workdir), execution_id="work")

    monkeypatch.undo()
    assert Case(config, "threads").left("work") == ["late"]


def test_resume_of_a_finished_execution_runs_nothing(workdir: Path) -> None:
    executor = Executor(StoreConfig("memory"), on_success="keep")
    first = executor.run(diamond(workdir))
    again = executor.run(diamond(workdir), execution_id=first.execution_id)
    assert statuses(again) == dict.fromkeys("abcd", StepStatus.REUSED)
    assert again.output.content == EXPECTED_D
    assert calls(workdir) == dict.fromkeys("abcd", 1)
    assert [again.steps[s].size for s in "abcd"] == [first.steps[s].size for s in "abcd"]
    with StoreConfig("memory").create(first.execution_id) as store:
        store.clear()


def test_a_step_returning_something_unstorable_fails_with_its_name() -> None:
    pipeline = Pipeline([Step("odd", lambda inputs: {1, 2})])
    with pytest.raises(StepFailedError) as caught:
        Executor().run(pipeline)
    assert caught.value.step_id == "odd"
    assert isinstance(caught.value.__cause__, SerializationError)
    assert "'odd' returned a set" in str(caught.value.__cause__)


@pytest.mark.parametrize(("value", "named"), [(object(), "an object"), (1 + 2j, "a complex")])
def test_an_unstorable_output_is_named_with_the_right_article(value: object, named: str) -> None:
    # "returned a object".
    pipeline = Pipeline([Step("odd", lambda inputs: value)])
    with pytest.raises(StepFailedError) as caught:
        Executor().run(pipeline)
    assert f"step 'odd' returned {named} that cannot be stored" in str(caught.value.__cause__)


def test_an_unstorable_value_deep_in_an_output_is_named() -> None:
    # "returned a dict, which is not ... a JSON value" sent the user looking at the dict, not at the NaN.
    pipeline = Pipeline([Step("scores", lambda inputs: {"relevance": 0.9, "novelty": float("nan")})])
    with pytest.raises(StepFailedError) as caught:
        Executor().run(pipeline)
    assert isinstance(caught.value.__cause__, SerializationError)
    assert "'scores' returned a dict that cannot be stored (content: nan is not a JSON number)" in str(
        caught.value.__cause__
    )


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise AttributeError("'UnprintableError' object has no attribute 'detail'")


def test_a_step_exception_whose_str_fails_is_still_a_step_failure() -> None:
    # The executor's own formatting of the message raised, replacing the StepFailedError (and with it the
    # execution id to resume and the partial result) by an AttributeError.
    def fails(inputs: Inputs) -> None:
        raise UnprintableError

    with pytest.raises(StepFailedError) as caught:
        Executor().run(Pipeline([Step("x", fails)]), execution_id="unprintable")

    assert isinstance(caught.value.__cause__, UnprintableError)
    assert "step 'x' failed: UnprintableError: <str() of the exception failed: AttributeError>" in str(caught.value)
    assert caught.value.execution_id == "unprintable"


class _CtrlCAgainWhileWaiting(concurrent.futures.ThreadPoolExecutor):
    """A thread pool whose shutdown, where run waits for the steps still running, gets a Ctrl-C."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        signal.raise_signal(signal.SIGINT)


@pytest.mark.timeout(60)
def test_a_second_ctrl_c_while_steps_finish_on_threads_still_names_the_execution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After Ctrl-C, run waits for the steps running on threads; a second Ctrl-C (the first seemed to do
    # nothing) raised a KeyboardInterrupt without the note, so the id of a fresh execution was lost.
    started, release = threading.Event(), threading.Event()
    monkeypatch.setattr(Executor, "_pool", lambda self, steps: _CtrlCAgainWhileWaiting(max_workers=2))

    def slow(inputs: Inputs) -> int:
        started.set()
        release.wait(timeout=30)
        return 1

    def interrupted(inputs: Inputs) -> None:
        started.wait(timeout=30)
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            Executor().run(Pipeline([Step("slow", slow), Step("x", interrupted)]), execution_id="stopped twice")
    finally:
        release.set()
    assert any("execution_id='stopped twice'" in note for note in getattr(caught.value, "__notes__", ()))
    assert isinstance(caught.value.__context__, KeyboardInterrupt)  # the first Ctrl-C, raised from the step


def test_keyboard_interrupt_in_a_step_is_not_wrapped() -> None:
    def interrupted(inputs: Inputs) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        Executor().run(Pipeline([Step("x", interrupted)]), execution_id="stopped")
    # The execution id of a fresh run is shown nowhere else: without it there is no resuming.
    assert any("execution 'stopped'" in note and "execution_id='stopped'" in note for note in caught.value.__notes__)


def test_resume_advice_on_the_memory_backend_says_it_holds_only_in_this_process(tmp_path: Path, http_url: str) -> None:
    # A memory store's artifacts end with the process: "run the pipeline again with execution_id=... to
    # resume" read as if a new process could (it starts from nothing). The http client does not declare
    # `persistent` (its server's store decides), but its artifacts are on the server: it was told "in this
    # process only", which sent a worker that could resume from another process away.
    def broken(inputs: Inputs) -> None:
        raise RuntimeError("boom")

    def interrupted(inputs: Inputs) -> None:
        raise KeyboardInterrupt

    configs = (
        (StoreConfig("memory"), True),
        (StoreConfig("filesystem", root=str(tmp_path)), False),
        (StoreConfig("http", endpoint=http_url, token=TOKEN), False),
    )
    for config, in_process in configs:
        with pytest.raises(StepFailedError) as failed:
            Executor(config).run(Pipeline([Step("x", broken)]), execution_id="failed")
        with pytest.raises(KeyboardInterrupt) as caught:
            Executor(config).run(Pipeline([Step("x", interrupted)]), execution_id="stopped")
        [note] = caught.value.__notes__
        for text in (str(failed.value), note):
            assert ("kept in this process only (the memory backend keeps nothing" in text) is in_process, text
            assert ("run the pipeline again in this process with execution_id=" in text) is in_process, text
        # Only a store that outlives the process offers a new process (the CLI's `-n ID`) the way back.
        assert hasattr(caught.value, "_artifactstore_interrupted") is not in_process


def _start_run(
    root: str, workdir: Path, *, deaf: bool, child: bool = False, stubborn: bool = False, deadline: bool = False
) -> subprocess.Popen[bytes]:
    """Start :func:`run_until_interrupted` in a session of its own; return once s0 and s1 run in workers."""
    code = (
        f"from pipeline_steps import run_until_interrupted; "
        f"run_until_interrupted({root!r}, {str(workdir)!r}, deaf={deaf!r}, child={child!r}, stubborn={stubborn!r}, "
        f"deadline={deadline!r})"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: Path(workdir, "s0-started").exists() and Path(workdir, "s1-started").exists(),
            60,
            "s0 and s1 never started",
        )
    except BaseException:
        _kill_group(process)
        raise
    return process


def _assert_stopped_after_a(root: str, workdir: Path) -> None:
    """What an interrupted :func:`run_until_interrupted` leaves: the note naming the execution to resume, s2
    never started, and only a's artifact kept."""
    assert "execution_id='interrupted'" in Path(workdir, "interrupted").read_text()
    assert "s2" not in calls(workdir)
    assert Case(StoreConfig("filesystem", root=root), "processes").left("interrupted") == ["a"]


def _kill_group(process: subprocess.Popen[bytes], workdir: Path | None = None) -> None:
    """Leave nothing of a test's run behind, whatever the test found (with ``workdir``, nor the processes its
    steps started, which are not in its group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pid in children(workdir).values() if workdir is not None else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_stops_worker_processes_and_says_how_to_resume(tmp_path: Path, workdir: Path) -> None:
    # The terminal's SIGINT reaches the executor's process and its workers. Each worker's step was
    # interrupted, but the worker then took the step queued for it (s2) and the run went on until that
    # step ended; the KeyboardInterrupt did not say which execution to resume.
    root = str(tmp_path / "artifacts")
    process = _start_run(root, workdir, deaf=False)
    try:
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        _kill_group(process)
    assert "execution_id='interrupted'" in Path(workdir, "interrupted").read_text()
    assert Case(StoreConfig("filesystem", root=root), "processes").left("interrupted") == ["a"]


def test_ctrl_c_terminates_workers_whose_steps_ignore_it_and_starts_no_queued_step(
    tmp_path: Path, workdir: Path
) -> None:
    # s0 and s1 ignore the terminal's SIGINT (blocked in native code, or catching KeyboardInterrupt); only the
    # executor can stop their workers. Without that the run waited for them (here, until their gate's
    # deadline), and then the workers went on to s2.
    root = str(tmp_path / "artifacts")
    process = _start_run(root, workdir, deaf=True)
    try:
        workers = [pids(workdir)[name] for name in ("s0", "s1")]
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 130
        # The run's process has ended: its workers, had any survived it, would be orphans by now.
        assert [pid for pid in workers if not is_dead(pid)] == []
    finally:
        _kill_group(process)
    _assert_stopped_after_a(root, workdir)


@pytest.mark.parametrize("how", ["ctrl-c", "sigint-to-the-runner", "sigkill-to-the-runner"])
def test_processes_a_step_started_do_not_outlive_the_run(how: str, tmp_path: Path, workdir: Path) -> None:
    # s0 and s1 each start a process that ignores SIGINT and SIGTERM. Terminating a worker (SIGTERM to it alone)
    # left that process running, and so did a worker that exited because its runner was killed; Ctrl-C at a
    # terminal reached it only when it did not ignore SIGINT.
    root = str(tmp_path / "artifacts")
    process = _start_run(root, workdir, deaf=True, child=True)
    try:
        started = [children(workdir)[name] for name in ("s0", "s1")]
        if how == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C: to the foreground process group
        else:
            os.kill(process.pid, signal.SIGINT if how == "sigint-to-the-runner" else signal.SIGKILL)
        assert process.wait(timeout=30) == (-signal.SIGKILL if how == "sigkill-to-the-runner" else 130)
        wait_until(lambda: all(is_dead(pid) for pid in started), 50, "a process a step started outlived the run")
    finally:
        _kill_group(process, workdir)
    assert Case(StoreConfig("filesystem", root=root), "processes").left("interrupted") == ["a"]


def test_ctrl_c_again_while_the_workers_are_given_their_grace_kills_them_at_once(tmp_path: Path, workdir: Path) -> None:
    # s0 and s1 ignore SIGINT and SIGTERM. A second Ctrl-C during the grace terminate() gives the workers after
    # SIGTERM ended that wait and skipped the SIGKILL after it: run()'s shutdown then waited for the workers
    # (here until their gate's deadline), a third Ctrl-C left them to multiprocessing's exit handler, and the
    # KeyboardInterrupt raised had no note naming the execution.
    root = str(tmp_path / "artifacts")
    process = _start_run(root, workdir, deaf=True, stubborn=True)
    try:
        workers = [pids(workdir)[name] for name in ("s0", "s1")]
        os.killpg(process.pid, signal.SIGINT)
        wait_until(
            lambda: all(Path(workdir, f"{name}-sigterm").exists() for name in ("s0", "s1")),
            30,
            "the workers were never asked to stop",
        )
        os.killpg(process.pid, signal.SIGINT)  # pressed again, since the first seemed to do nothing
        assert process.wait(timeout=30) == 130
        assert [pid for pid in workers if not is_dead(pid)] == []
    finally:
        _kill_group(process)
    _assert_stopped_after_a(root, workdir)


def test_ctrl_c_while_steps_finish_after_another_exception_terminates_the_workers(
    tmp_path: Path, workdir: Path
) -> None:
    # A SIGALRM handler (a deadline set with signal.alarm) raises TimeoutError while s0 and s1, deaf to Ctrl-C,
    # run in workers: the run waits for them to finish, as after a step failure, but in its final shutdown,
    # where a Ctrl-C was raised without stopping them. run() returned with both workers running, and the
    # interpreter's exit then waited for them (here until their gate's deadline).
    root = str(tmp_path / "artifacts")
    process = _start_run(root, workdir, deaf=True, deadline=True)
    try:
        os.kill(process.pid, signal.SIGALRM)
        wait_until(lambda: Path(workdir, "deadline").exists(), 30, "the deadline never passed")
        os.killpg(process.pid, signal.SIGINT)
        wait_until(lambda: Path(workdir, "outcome").exists(), 30, "run() did not return after Ctrl-C")
        outcome = json.loads(Path(workdir, "outcome").read_text())
        assert outcome["alive"] == []
        assert process.wait(timeout=30) == 130
    finally:
        _kill_group(process)
    # The KeyboardInterrupt is raised (Ctrl-C stops the program), the TimeoutError chained under it and named.
    assert outcome["context"] == "TimeoutError"
    assert outcome["notes"][0] == (
        "it came while the run waited for its running steps, after TimeoutError: the pipeline's deadline passed "
        "(raised above) had ended it"
    )
    _assert_stopped_after_a(root, workdir)


def test_workers_do_not_outlive_a_runner_killed_with_sigkill(tmp_path: Path, workdir: Path) -> None:
    # kill -9 of the executor's process (the OOM killer, a CI timeout) runs no cleanup in it. Its workers used
    # to live on for ever: running their steps (saving into an execution a resume may be running by then),
    # then waiting for steps that never came.
    root = str(tmp_path / "artifacts")
    process = _start_run(root, workdir, deaf=True)
    try:
        workers = [pids(workdir)[name] for name in ("s0", "s1")]
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        wait_until(lambda: all(is_dead(pid) for pid in workers), 50, "a worker outlived its executor")
    finally:
        _kill_group(process)
    assert "s2" not in calls(workdir)
    assert Case(StoreConfig("filesystem", root=root), "processes").left("interrupted") == ["a"]

    # The execution resumes from what the killed run finished.
    Gate(str(Path(workdir, "never"))).open()
    resumed = Executor(StoreConfig("filesystem", root=root), mode="processes", max_workers=2).run(
        waiting_pipeline(str(workdir)), execution_id="interrupted"
    )
    assert statuses(resumed) == {"a": StepStatus.REUSED, **dict.fromkeys(("s0", "s1", "s2"), StepStatus.SUCCEEDED)}
    assert calls(workdir) == {"a": 1, "s0": 2, "s1": 2, "s2": 1}


# -- namespaces ---------------------------------------------------------------------------------------


def test_concurrent_executions_have_their_own_namespaces(case: Case, workdir: Path) -> None:
    # Y starts and is held inside B (A saved). X then runs from start to end, clearing its namespace,
    # while Y is in flight. Y's artifacts must be untouched by X's clear, and Y then finishes correctly.
    gate = Gate(str(workdir / "x-finished"))
    y_dir, x_dir = workdir / "y", workdir / "x"
    y_dir.mkdir()
    x_dir.mkdir()
    executor = Executor(case.config, mode=case.mode)
    y_id = f"y-{uuid.uuid4().hex}"
    outcome: dict[str, Any] = {}

    def run_y() -> None:
        try:
            outcome["y"] = executor.run(diamond(y_dir, gate=gate), execution_id=y_id)
        except BaseException as exc:
            outcome["y"] = exc

    y = threading.Thread(target=run_y)
    y.start()
    try:
        wait_until(lambda: "b" in calls(y_dir), 60, "execution Y never reached step b")
        x = executor.run(diamond(x_dir))
        assert x.execution_id != y_id
        assert x.output.content == EXPECTED_D
        assert case.left(x.execution_id) == []
        assert "a" in case.left(y_id)  # X's clear left Y's artifacts alone
    finally:
        gate.open()
        y.join(timeout=100)
    assert not y.is_alive()
    assert isinstance(outcome["y"], RunResult), outcome["y"]
    assert outcome["y"].output.content == EXPECTED_D
    assert case.left(y_id) == []


def test_given_execution_id_is_the_namespace() -> None:
    seen: list[str] = []

    def factory(namespace: str) -> ArtifactStore:
        seen.append(namespace)
        return create_store("memory", namespace=namespace)

    result = Executor(factory).run(Pipeline([Step("x", lambda inputs: "hi")]), execution_id="run 7/ü")
    assert seen == ["run 7/ü"]
    assert result.execution_id == "run 7/ü"
    fresh = [Executor(factory).run(Pipeline([Step("x", lambda inputs: 1)])).execution_id for _ in range(2)]
    assert fresh[0] != fresh[1]
    assert all(len(name) == 32 for name in fresh)


@pytest.mark.parametrize("bad", ["", "nul\x00", "x" * 200])
def test_invalid_execution_id_is_refused_before_anything_runs(bad: str, workdir: Path) -> None:
    with pytest.raises(InvalidStepIdError):
        Executor().run(diamond(workdir), execution_id=bad)
    assert calls(workdir) == {}


def test_any_legal_step_id_works() -> None:
    ids = ["../up", "a b/c*?[x]", "ü 🎉", "%2F"]
    steps = [Step(ids[0], lambda inputs: b"\x00\xff")]
    steps += [
        Step(new, lambda inputs: repr(next(iter(inputs.values())).content), (old,))
        for old, new in itertools.pairwise(ids)
    ]
    result = Executor(on_success="keep").run(Pipeline(steps))
    with create_store("memory", namespace=result.execution_id) as store:
        assert sorted(info.step_id for info in store.list()) == sorted(ids)
        assert store.get(ids[0]).content == b"\x00\xff"
        store.clear()


# -- processes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "example"])
def test_processes_refuse_in_process_backends_up_front(backend: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Executor(StoreConfig(backend), mode="processes")
    message = str(caught.value)
    assert f"backend {backend!r}" in message
    assert "cross_process=False" in message
    assert "mode='threads'" in message
    assert "redis" in message
    assert "filesystem" in message
    assert caught.value.backend == backend


def test_processes_refuse_memory_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    with pytest.raises(ConfigurationError, match="cannot use backend 'memory'"):
        Executor(mode="processes")


def test_processes_need_a_store_config() -> None:
    with pytest.raises(ConfigurationError, match="needs a StoreConfig"):
        Executor(lambda namespace: create_store("memory", namespace=namespace), mode="processes")


def test_processes_refuse_unimportable_steps_before_any_step_runs(process_case: Case, workdir: Path) -> None:
    pipeline = Pipeline(
        [Step("a", functools.partial(step_a, workdir=str(workdir))), Step("b", lambda inputs: 1, ("a",))]
    )
    with pytest.raises(ConfigurationError) as caught:
        Executor(process_case.config, mode="processes").run(pipeline)
    assert caught.value.step_id == "b"
    assert "<lambda>" in str(caught.value)
    assert "module level" in str(caught.value)
    assert calls(workdir) == {}


@pytest.mark.parametrize(
    ("bound", "expected"),
    [
        # A lock (as in every client object) cannot be sent: found when the step was sent, after A had run.
        ({"meeting": BarrierMeeting(threading.Barrier(2))}, "cannot pickle '_thread"),
        ({"gate": lambda: None}, "<lambda> cannot be imported there"),
    ],
    ids=["lock", "lambda"],
)
def test_processes_refuse_partial_arguments_that_cannot_be_sent_before_any_step_runs(
    bound: dict[str, Any], expected: str, tmp_path: Path, workdir: Path
) -> None:
    b = functools.partial(step_b, workdir=str(workdir), **bound)
    pipeline = Pipeline([Step("a", functools.partial(step_a, workdir=str(workdir))), Step("b", b, ("a",))])
    with pytest.raises(ConfigurationError) as caught:
        Executor(StoreConfig("filesystem", root=str(tmp_path / "fs")), mode="processes").run(pipeline)
    assert caught.value.step_id == "b"
    assert expected in str(caught.value)
    assert "mode='threads'" in str(caught.value)
    assert calls(workdir) == {}


def test_a_worker_that_dies_fails_its_step(process_case: Case, workdir: Path) -> None:
    a = Step("a", functools.partial(step_a, workdir=str(workdir)))
    crashing = Pipeline([a, Step("last", functools.partial(step_crash, workdir=str(workdir)), ("a",))])
    executor = Executor(process_case.config, mode="processes")
    with pytest.raises(StepFailedError) as caught:
        executor.run(crashing)
    assert caught.value.step_id == "last"
    assert isinstance(caught.value.__cause__, BrokenProcessPool)
    execution_id = caught.value.execution_id
    assert execution_id is not None
    assert process_case.left(execution_id) == ["a"]

    fixed = Pipeline([a, Step("last", functools.partial(step_a, workdir=str(workdir)), ("a",))])
    result = executor.run(fixed, execution_id=execution_id)
    assert result.ran() == ["last"]
    assert calls(workdir) == {"a": 2, "crash": 1}  # a: once as itself, once as the fixed "last"


UNGUARDED_SCRIPT = """
from artifactstore_core.pipeline import Executor, Pipeline, Step, StoreConfig


def numbers(inputs):
    return [1, 2, 3]


Executor(StoreConfig("filesystem", root={root!r}), mode="processes").run(Pipeline([Step("numbers", numbers)]))
"""


def test_a_script_without_a_main_guard_is_told_why_no_worker_started(tmp_path: Path) -> None:
    # Each spawned worker imports the main module, whose unguarded run() then fails in the worker: the pool
    # broke, and the error blamed the step for a BrokenProcessPool, "terminated abruptly".
    script = tmp_path / "script.py"
    script.write_text(UNGUARDED_SCRIPT.format(root=str(tmp_path / "artifacts")))

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "no worker process started" in last
    assert "if __name__ == '__main__':" in last


HANGING_IMPORT_SCRIPT = """
import os
import threading
import unicodedata
from pathlib import Path

from artifactstore_core.pipeline import Executor, Pipeline, Step, StoreConfig

if __name__ == "__mp_main__":
    # A worker importing this module hangs here, as on a slow model load or a network call that never returns.
    Path({workdir!r}, f"importing-{{os.getpid()}}").touch()
    threading.Event().wait(120)


def numbers(inputs):
    return [1, 2, 3]


if __name__ == "__main__":
    Executor(StoreConfig("filesystem", root={root!r}), mode="processes").run(Pipeline([Step("numbers", numbers)]))
"""


def test_a_worker_hung_importing_the_main_module_does_not_outlive_a_runner_killed_with_sigkill(
    tmp_path: Path, workdir: Path
) -> None:
    # A spawned worker imports the main module before any code of the pool runs in it, so before it watches
    # its runner: one hung in that import lived on after its runner was killed with SIGKILL.
    script = HANGING_IMPORT_SCRIPT.format(workdir=str(workdir), root=str(tmp_path / "artifacts"))
    with _runner_with_importing_workers(script, tmp_path, workdir) as (process, workers):
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        wait_until(lambda: all(is_dead(pid) for pid in workers), 30, "a worker outlived its executor")


@contextlib.contextmanager
def _runner_with_importing_workers(
    script: str, tmp_path: Path, workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """Run ``script`` (one that makes ``importing-<pid>`` files as its workers import it) in a session of its
    own until a worker imports it; give the runner and the workers importing it, and kill all of them after."""
    path = tmp_path / "script.py"
    path.write_text(script)
    process = subprocess.Popen(
        [sys.executable, str(path)], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    workers: list[int] = []
    try:
        wait_until(lambda: any(workdir.glob("importing-*")), 60, "no worker imported the script")
        workers += [int(found.name.removeprefix("importing-")) for found in workdir.glob("importing-*")]
        yield process, workers
    finally:
        _kill_group(process)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


BIG_ARGUMENT_SCRIPT = """
import functools
import json
import os
import signal
import sys
import threading
from pathlib import Path

from artifactstore_core.pipeline import Executor, Pipeline, Step, StepFailedError, StoreConfig

if __name__ == "__mp_main__":
    Path({workdir!r}, f"importing-{{os.getpid()}}").touch()
    if {hang!r}:
        # A worker importing this module hangs here, as on a slow model load or a network call that never returns.
        threading.Event().wait(100)
    else:
        raise RuntimeError("the worker's import of the main module failed")


def size(inputs, *, blob):
    return len(blob)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Bound with partial: more than a pipe holds, so sending it waits until the worker reads it.
    pipeline = Pipeline([Step("size", functools.partial(size, blob=b"x" * {size!r}))])
    try:
        Executor(StoreConfig("filesystem", root={root!r}), mode="processes").run(pipeline)
    except KeyboardInterrupt as interrupt:
        Path({workdir!r}, "interrupted").write_text("\\n".join(getattr(interrupt, "__notes__", [])))
        sys.exit(130)
    except StepFailedError as error:
        failed = {{"cause": type(error.__cause__).__name__, "notes": getattr(error, "__notes__", [])}}
        Path({workdir!r}, "failed").write_text(json.dumps(failed))
        sys.exit(1)
"""


def test_ctrl_c_while_a_worker_imports_the_main_module_and_its_big_step_waits_to_be_sent(
    tmp_path: Path, workdir: Path
) -> None:
    # The pool's thread sent the step under the pool's lock, and the send of arguments bigger than the pipe
    # waited for the worker, which reads its pipe only once its import of the main module ends: terminate()
    # waited for that lock, so Ctrl-C did nothing until the import ended (for ever, if it hangs).
    script = BIG_ARGUMENT_SCRIPT.format(
        workdir=str(workdir), root=str(tmp_path / "artifacts"), hang=True, size=2_000_000
    )
    # Once a worker imports the script, the pool has started it (under its lock) and is about to send its step.
    with _runner_with_importing_workers(script, tmp_path, workdir) as (process, workers):
        # To the runner alone: the terminal's Ctrl-C would reach the worker too (it has no group of its own
        # yet), and an import that catches or ignores it (native code) goes on all the same.
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert [pid for pid in workers if not is_dead(pid)] == []
    assert "was interrupted" in Path(workdir, "interrupted").read_text()


@pytest.mark.parametrize("size", [1000, 2_000_000], ids=["small", "bigger-than-a-pipe"])
def test_a_worker_that_dies_while_starting_is_told_from_a_step_that_cannot_be_sent(
    size: int, tmp_path: Path, workdir: Path
) -> None:
    # A send that failed because the worker died while starting (importing the main module) was taken for
    # arguments that cannot be sent: with arguments bigger than the pipe (the send still waiting when the worker
    # died) the step failed with a bare BrokenPipeError, without the note that says why no worker started.
    script = tmp_path / "script.py"
    script.write_text(
        BIG_ARGUMENT_SCRIPT.format(workdir=str(workdir), root=str(tmp_path / "artifacts"), hang=False, size=size)
    )

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 1, done.stderr
    failed = json.loads(Path(workdir, "failed").read_text())
    assert failed["cause"] == "BrokenProcessPool"
    assert any("no worker process started" in note for note in failed["notes"]), failed["notes"]


def test_arguments_that_cannot_be_pickled_fail_their_step_not_the_pool(tmp_path: Path, workdir: Path) -> None:
    # Past the check up front (copy.deepcopy copies it), refused when the step is sent: the step's own error,
    # told from a worker that died while starting (no BrokenProcessPool), and the pool goes on.
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=str(workdir))),
            Step(
                "bad",
                functools.partial(step_with_payload, workdir=str(workdir), name="bad", payload=CopiedNotPickled()),
                ("a",),
            ),
        ]
    )
    with pytest.raises(StepFailedError) as caught:
        Executor(StoreConfig("filesystem", root=str(tmp_path / "artifacts")), mode="processes").run(pipeline)
    assert caught.value.step_id == "bad"
    assert type(caught.value.__cause__) is TypeError
    assert "a CopiedNotPickled cannot be pickled" in str(caught.value)
    assert not hasattr(caught.value, "__notes__")
    assert caught.value.result is not None
    assert statuses(caught.value.result) == {"a": StepStatus.SUCCEEDED, "bad": StepStatus.FAILED}
    assert calls(workdir) == {"a": 1}


class _OutcomeLateInItsPipe:
    """A worker's pipe as the pool sees it, where the step's outcome arrives just after the pool looked: once
    the worker's "ready" has been read, the next time the pool looks while the outcome is there, the worker is
    killed and its end awaited first, and the pipe shows nothing yet. (As a step's outcome sent, then the
    worker killed, between the pool's look at its pipe and its look at the worker's sentinel.)"""

    def __init__(self, conn: Any, process: Any) -> None:
        self._conn = conn
        self._process = process
        self._ready = False
        self._late = False

    def recv(self) -> Any:
        message = self._conn.recv()
        self._ready = self._ready or message[0] == "ready"
        return message

    def poll(self, timeout: float = 0.0) -> bool:
        if self._ready and not self._late and self._conn.poll():
            self._late = True
            os.kill(self._process.pid, signal.SIGKILL)
            assert multiprocessing.connection.wait([self._process.sentinel], 30), "the worker never died"
            return False
        return bool(self._conn.poll(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_pickled_steps_waiting_for_their_workers_stay_within_the_send_budget(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each step is sent by a thread of its own, which holds its pickled arguments until the worker (still
    # importing the main module) reads them: three steps of 4 MiB started together held three copies at once.
    # Past the budget, the next step waits until a worker has read its own.
    monkeypatch.setattr(_workers, "_SEND_BUDGET", 1 << 20)
    hand_over = WorkerPool._hand_over
    unsent: list[int] = []

    def counted(self: WorkerPool, *args: Any) -> None:
        hand_over(self, *args)
        with self._lock:
            unsent.append(self._unsent)

    monkeypatch.setattr(WorkerPool, "_hand_over", counted)
    padding = bytes(4 << 20)
    steps = [
        Step(name, functools.partial(step_carrying, workdir=str(workdir), name=name, padding=padding))
        for name in ("x", "y", "z")
    ]
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    result = Executor(config, mode="processes", max_workers=3).run(Pipeline(steps))
    assert statuses(result) == dict.fromkeys("xyz", StepStatus.SUCCEEDED)
    assert len(unsent) == 3
    # One step's pickled arguments at most (4 MiB and a few hundred bytes of the rest), never two.
    assert max(unsent) < 2 * len(padding), unsent


def test_an_outcome_sent_just_before_the_worker_died_is_not_lost(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool read a worker's pipe, then looked at its sentinel: an outcome that arrived in between, from a
    # worker that then died, was never read, and the step (saved) failed with BrokenProcessPool.
    start = WorkerPool._start

    def late(self: WorkerPool) -> Any:
        worker = start(self)
        worker.conn = _OutcomeLateInItsPipe(worker.conn, worker.process)
        return worker

    monkeypatch.setattr(WorkerPool, "_start", late)
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    result = Executor(config, mode="processes").run(
        Pipeline([Step("a", functools.partial(step_a, workdir=str(workdir)))])
    )
    assert statuses(result) == {"a": StepStatus.SUCCEEDED}
    assert result.output.content == {"n": 3}


def test_a_worker_killed_beside_a_running_sibling_fails_its_own_step(tmp_path: Path, workdir: Path) -> None:
    # When a worker dies, every running step gets the same BrokenProcessPool and the pool kills the
    # other workers: the failure used to name whichever future came first, often the innocent sibling.
    # (Python 3.11 notices the death of a worker it started on demand only at its next event, here the
    # sibling's return; then the sibling succeeds, and the killed step must still be the one named.)
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=str(workdir))),
            Step("killed", functools.partial(step_killed_beside_sibling, workdir=str(workdir)), ("a",)),
            Step("sibling", functools.partial(step_beside_killed, workdir=str(workdir)), ("a",)),
        ]
    )
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    with pytest.raises(StepFailedError) as caught:
        Executor(config, mode="processes", max_workers=2).run(pipeline)
    error = caught.value
    assert error.step_id == "killed"
    assert str(error).startswith("step 'killed' failed: BrokenProcessPool")
    assert isinstance(error.__cause__, BrokenProcessPool)
    assert error.__notes__ == ["the worker process running step 'killed' was killed by signal SIGKILL"]
    assert error.result is not None
    assert error.result.steps["killed"].status is StepStatus.FAILED
    # The executor owns its workers: the sibling's worker is not stopped with the one that died.
    assert error.result.steps["sibling"].status is StepStatus.SUCCEEDED


def test_workers_killed_together_are_each_named_in_step_order(tmp_path: Path, workdir: Path) -> None:
    # Two workers killed together (the OOM killer): the error named whichever death the pool saw first, and
    # said nothing of the other worker or how it ended. Now it names the first of their steps in step order,
    # and each worker's step and how it ended in a note, in step order.
    names = ("k0", "k1")

    def kill_both() -> None:
        wait_until(lambda: all(Path(workdir, f"{name}-started").exists() for name in names), 60, "k0, k1 never ran")
        running = pids(workdir)
        # k1 first, and k0 once the pool has reaped k1's worker: the pool sees k1's death first, as it may see
        # either of two that die together.
        os.kill(running["k1"], signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{running['k1']}").exists(), 30, "k1's worker was never reaped")
        os.kill(running["k0"], signal.SIGKILL)

    waits = functools.partial(step_waits_for_ever, workdir=str(workdir))
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=str(workdir))),
            *(Step(name, functools.partial(waits, name=name), "a") for name in names),
        ]
    )
    killer = threading.Thread(target=kill_both)
    killer.start()
    try:
        with pytest.raises(StepFailedError) as caught:
            Executor(StoreConfig("filesystem", root=str(tmp_path / "artifacts")), mode="processes", max_workers=2).run(
                pipeline
            )
    finally:
        killer.join()
    error = caught.value
    assert error.step_id == "k0"
    assert str(error).startswith("step 'k0' failed: BrokenProcessPool")
    assert error.__notes__ == [
        "the worker process running step 'k0' was killed by signal SIGKILL",
        "the worker process running step 'k1' was killed by signal SIGKILL",
    ]
    assert error.result is not None
    assert statuses(error.result) == {"a": StepStatus.SUCCEEDED, "k0": StepStatus.FAILED, "k1": StepStatus.FAILED}


def test_processes_a_step_started_do_not_outlive_its_worker_killed_under_it(tmp_path: Path, workdir: Path) -> None:
    # A worker killed while its step runs (the OOM killer, a crash): the process its step started (it ignores
    # SIGTERM) lived on, since only terminating the workers and a runner's death signalled a worker's group.
    def kill_the_worker() -> None:
        wait_until(lambda: Path(workdir, "s-started").exists(), 60, "the step never started")
        os.kill(pids(workdir)["s"], signal.SIGKILL)

    pipeline = Pipeline([Step("s", functools.partial(step_with_a_child, workdir=str(workdir), name="s"))])
    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    try:
        with pytest.raises(StepFailedError) as caught:
            Executor(StoreConfig("filesystem", root=str(tmp_path / "artifacts")), mode="processes").run(pipeline)
        assert caught.value.__notes__ == ["the worker process running step 's' was killed by signal SIGKILL"]
        child = children(workdir)["s"]
        wait_until(lambda: is_dead(child), 30, "the process the step started outlived its killed worker")
    finally:
        killer.join()
        for pid in children(workdir).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_an_exception_that_cannot_be_rebuilt_fails_its_step_not_the_pool(tmp_path: Path, workdir: Path) -> None:
    # Pickled fine in the worker, but TwoArgError(*args) fails in the parent: concurrent.futures used to
    # declare the pool broken, so the cause was "terminated abruptly", the real error was lost and the
    # sibling running at the time was killed and reported as failed.
    a = Step("a", functools.partial(step_a, workdir=str(workdir)))
    pipeline = Pipeline(
        [
            a,
            Step("bad", functools.partial(step_two_arg_error, workdir=str(workdir)), ("a",)),
            Step("sibling", functools.partial(step_sibling, workdir=str(workdir)), ("a",)),
        ]
    )
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    with pytest.raises(StepFailedError) as caught:
        Executor(config, mode="processes", max_workers=2, on_failure="keep").run(pipeline)
    error = caught.value
    assert error.step_id == "bad"
    cause = error.__cause__
    assert type(cause) is RuntimeError
    assert "pipeline_steps.TwoArgError: 503: the model is overloaded" in str(cause)
    assert "cannot be sent to the executor's process" in str(cause)
    assert "TwoArgError: 503: the model is overloaded" in str(error)
    # The worker's traceback still shows where the original was raised.
    assert 'raise TwoArgError(503, "the model is overloaded")' in str(cause.__cause__)
    assert error.result is not None
    assert statuses(error.result) == {
        "a": StepStatus.SUCCEEDED,
        "bad": StepStatus.FAILED,
        "sibling": StepStatus.SUCCEEDED,
    }
    assert error.execution_id is not None
    with config.create(error.execution_id) as store:
        assert sorted(info.step_id for info in store.list()) == ["a", "sibling"]


# -- construction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "fork"}, "mode must be one of"),
        ({"on_success": "drop"}, "on_success must be one of"),
        ({"on_failure": "retry"}, "on_failure must be one of"),
        ({"max_workers": 0}, "max_workers must be a positive int"),
        # A str failed with "'<' not supported between instances of 'str' and 'int'"; a float was taken.
        ({"max_workers": "4"}, "max_workers must be a positive int, not '4'"),
        ({"max_workers": 2.5}, "max_workers must be a positive int, not 2.5"),
    ],
)
def test_invalid_arguments(kwargs: Mapping[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Executor(**kwargs)


def test_a_store_instance_is_refused() -> None:
    with create_store("memory") as store, pytest.raises(TypeError, match="its own namespace"):
        Executor(store)  # type: ignore[arg-type]


def test_executor_from_a_service_container(workdir: Path) -> None:
    with ServiceContainer() as services:
        register_artifact_store(services, "example")
        result = Executor(services).run(diamond(workdir))
    assert result.backend == "example"
    assert result.output.content == EXPECTED_D


def test_a_container_without_a_store_config() -> None:
    with ServiceContainer() as services, pytest.raises(ServiceNotFoundError, match="StoreConfig"):
        Executor(services)


def test_step_outputs_are_wrapped_by_kind() -> None:
    seen: dict[str, Message] = {}

    def reader(inputs: Mapping[str, ArtifactConnector]) -> None:
        seen.update({name: connector.get() for name, connector in inputs.items()})

    pipeline = Pipeline(
        [
            Step("bytes", lambda inputs: b"\x00raw"),
            Step("text", lambda inputs: "text"),
            Step("json", lambda inputs: {"k": [1, 2]}),
            Step("message", lambda inputs: Message(content="m", metadata={"x": 1})),
            Step("read", reader, ("bytes", "text", "json", "message")),
        ]
    )
    result = Executor().run(pipeline)
    assert seen["bytes"].content == b"\x00raw"
    assert seen["bytes"].media_type == "application/octet-stream"
    assert seen["text"].content == "text"
    assert seen["json"].to_python() == {"k": [1, 2]}
    assert seen["message"].metadata == {"x": 1}
    assert result.output.content is None


@pytest.mark.parametrize("overwrite", [False, True], ids=["saved", "replaced"])
def test_a_json_output_is_encoded_once(overwrite: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The save encoded it, then the executor encoded it again to report its size: seconds more for an output of
    # a few hundred MB, outside the step's duration. A replacement is saved twice (its record, then over the
    # artifact), and was encoded three times.
    output = [{"part": n, "text": "words " * 20} for n in range(50)]
    encoded: list[int] = []
    real = message_module._canonical_text

    def counting(value: Any) -> str:
        if isinstance(value, tuple) and len(value) == len(output):
            encoded.append(1)
        return real(value)

    if overwrite:
        # A damaged artifact from an earlier run: the resume runs the step again and replaces it.
        with create_store("filesystem", namespace="encoded-once", root=str(tmp_path / "fs")) as store:
            store.save("out", Message(content=[]))
        (artifact,) = [path for path in (tmp_path / "fs").rglob("*") if path.is_file()]
        artifact.write_bytes(artifact.read_bytes()[:-1] + b"X")
    monkeypatch.setattr(message_module, "_canonical_text", counting)
    executor = Executor(StoreConfig("filesystem", root=str(tmp_path / "fs")), on_success="keep")
    result = executor.run(Pipeline([Step("out", lambda inputs: output)]), execution_id="encoded-once")

    assert result.steps["out"].status == StepStatus.SUCCEEDED
    assert (result.steps["out"].replaced is not None) == overwrite
    assert result.steps["out"].size == len(real(result.output.content).encode())
    assert encoded == [1]


def test_table_lists_every_step() -> None:
    result = Executor().run(
        Pipeline([Step("first", lambda inputs: "x" * 2000), Step("second", lambda inputs: 1, ("first",))])
    )
    table = result.table()
    assert "first" in table
    assert "second" in table
    assert "succeeded" in table
    assert "2.0 KiB" in table
    assert "2 of 2 ran" in table
    with pytest.raises(LookupError, match="0 outputs"):
        _ = RunResult(execution_id="x", backend="memory", steps={}).output


def test_table_says_steps_overlapped_only_where_they_did() -> None:
    # The last line always said "(steps in parallel overlap)", also under a sequential run or one step.
    def result(duration: float) -> RunResult:
        steps = {name: StepResult(step_id=name, status=StepStatus.SUCCEEDED, duration=0.5) for name in ("a", "b")}
        return RunResult(execution_id="x", backend="memory", steps=steps, duration=duration)

    assert result(0.6).table().splitlines()[-1] == "wall time 600.0 ms (steps in parallel overlap)"
    assert result(1.2).table().splitlines()[-1] == "wall time 1.20 s"


def test_output_of_several_sinks_says_where_the_outputs_are() -> None:
    # `result.output` of a pipeline with two sinks said only "has 2 outputs ('a', 'b'), not one".
    result = Executor().run(Pipeline([Step("a", lambda inputs: 1), Step("b", lambda inputs: 2)]))
    with pytest.raises(
        LookupError, match=r"2 outputs \('a', 'b'\), not one; read each from result\.outputs\[step_id\]"
    ):
        _ = result.output
    assert result.outputs["b"].content == 2


def test_reading_an_undeclared_input_says_to_declare_it() -> None:
    # A step that reads an id it does not list in `inputs` failed with a bare `KeyError: 'b'`.
    seen: dict[str, object] = {}

    def reader(inputs: Mapping[str, ArtifactConnector]) -> int:
        seen.update(keys=list(inputs), length=len(inputs), has_a="a" in inputs, missing=inputs.get("b"))
        return int(inputs["b"].content)

    pipeline = Pipeline([Step("a", lambda inputs: 1), Step("b", lambda inputs: 2), Step("sum", reader, inputs="a")])
    with pytest.raises(StepFailedError) as info:
        Executor().run(pipeline)
    cause = info.value.__cause__
    assert isinstance(cause, KeyError)
    assert cause.args == (
        "step 'sum' has no input 'b' (its inputs: 'a'); list it in Step('sum', fn, inputs=[...]) to read its output",
    )
    assert "list it in Step('sum', fn, inputs=[...])" in str(info.value)
    # Otherwise a read-only mapping as before.
    assert seen == {"keys": ["a"], "length": 1, "has_a": True, "missing": None}


def columns(text: str) -> int:
    """The columns a terminal gives ``text`` (wide characters two, combining marks none)."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text
    )


def test_table_columns_line_up_for_wide_and_combining_step_ids() -> None:
    # Padded by characters, not columns: a CJK or emoji id pushed its row's columns right, a decomposed
    # accent pulled them left.
    ids = ["取得", "要約-1", "summary-2", "e\u0301te\u0301", "🚀 launch"]
    pipeline = Pipeline([Step(step_id, lambda inputs: "x" * 3000) for step_id in ids])
    lines = Executor().run(pipeline).table().splitlines()[:-1]  # not the wall time

    status = columns(lines[0][: lines[0].index("status")])
    for line, step_id in zip(lines[2:], ids, strict=False):
        assert line.startswith(step_id)
        assert columns(line[: line.index("succeeded")]) == status, line
    assert len({columns(line) for line in lines}) == 1, lines


def test_table_escapes_step_id_characters_that_reorder_or_break_a_line() -> None:
    # A right-to-left override showed the rest of its row reversed; a line separator split the row in two.
    table = Executor().run(Pipeline([Step("a\u202eb\u2028c", lambda inputs: 1)])).table()
    assert "\u202e" not in table
    assert "\u2028" not in table
    assert "a\\u202eb\\u2028c  succeeded" in table


def test_the_execution_id_is_logged_before_any_step_runs(
    tmp_path: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A runner killed with SIGKILL raises nothing: the log line is the only place a fresh execution's id
    # (a uuid) is shown, so it must be written before the first step can run, not at the end.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    seen_before_step: list[str] = []

    def first_step(inputs: Inputs) -> Message:
        seen_before_step.extend(record.getMessage() for record in caplog.records)
        return Message(content={"ok": True})

    pipeline = Pipeline([Step("only", first_step)])
    with caplog.at_level(logging.INFO, logger="artifactstore_core.pipeline"):
        result = Executor(config, mode="threads", on_success="keep").run(pipeline)
        Executor(config, mode="threads", on_success="keep").run(pipeline, execution_id=result.execution_id)

    execution = result.execution_id
    assert any(f"starting execution {execution!r} on backend 'filesystem'" in line for line in seen_before_step)
    assert any(f"execution_id={execution!r}" in line for line in seen_before_step)
    assert any(f"resuming execution {execution!r}" in record.getMessage() for record in caplog.records), (
        "a resume says it resumes"
    )
