"""Two processes running one execution: what the one that finishes second gets when an artifact it saved
is gone (the other cleared the execution) or was deleted before it read its final outputs. The store is
shared the way machines share it: a redis-server, a filesystem root, or the artifact server in a process
of its own (over a filesystem root), reached through the http backend."""

from __future__ import annotations

import functools
import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_steps import DEADLINE, Gate, run_shared, step_a, step_sink, wait_until

from artifactstore_core import ArtifactExistsError, ArtifactNotFoundError, ArtifactStore, Message, create_store
from artifactstore_core.pipeline import Executor, Pipeline, Step, StepFailedError, StepStatus, StoreConfig
from artifactstore_core.pipeline._runner import _install, replacement_id
from artifactstore_http.testing import TOKEN, ServerProcess
from artifactstore_memory import MemorySpace, MemoryStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The artifact server (``python -m artifactstore_http``) in a process of its own, over a filesystem root."""
    workdir = tmp_path / "server"
    workdir.mkdir()
    env = {
        "ARTIFACT_STORE_SERVER_TOKEN": TOKEN,
        "ARTIFACT_STORE_SERVER_BACKEND": "filesystem",
        "ARTIFACT_STORE_FILESYSTEM_ROOT": str(tmp_path / "served"),
    }
    server = ServerProcess(env, workdir).start()
    try:
        yield server.url
    finally:
        server.stop()


def _config(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if backend == "filesystem":
        return StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    if backend == "http":
        return StoreConfig("http", endpoint=request.getfixturevalue("served"), token=TOKEN)
    return StoreConfig("redis", url=request.getfixturevalue("redis_url"))


def _start(config: StoreConfig, execution_id: str, workdir: Path, by: str, gate: Gate | None) -> Any:
    process = multiprocessing.get_context("spawn").Process(
        target=run_shared, args=(config, execution_id, str(workdir), by, gate)
    )
    process.start()
    return process


def _finish(process: Any, workdir: Path, by: str) -> dict[str, Any]:
    try:
        process.join(timeout=90)
        assert process.exitcode == 0, f"{by} ended with {process.exitcode} (None: still running)"
    finally:
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)
    return json.loads(Path(workdir, f"{by}.result").read_text())


@pytest.mark.parametrize("backend", ["redis", "filesystem", "http"])
@pytest.mark.parametrize("how", ["cleared by the other run", "deleted"])
def test_a_final_output_gone_before_it_is_read_fails_its_step_with_the_way_to_resume(
    backend: str, how: str, request: pytest.FixtureRequest, tmp_path: Path, workdir: Path
) -> None:
    config = _config(backend, request, tmp_path)
    execution_id = f"shared-{backend}-{how.split()[0]}"
    gate = Gate(str(workdir / "gate"))
    late = _start(config, execution_id, workdir, "late", gate)
    try:
        # c1 is saved (one thread: c2 starts after it) and c2 waits: late has yet to read its final outputs.
        wait_until(lambda: (workdir / "c2-waiting").exists(), DEADLINE, "late's c2 never started")
        if how == "deleted":
            with config.create(execution_id) as store:
                assert store.delete("c1")
        else:
            first = _finish(_start(config, execution_id, workdir, "first", None), workdir, "first")
            assert first == {"steps": {"a": "reused", "c1": "reused", "c2": "succeeded"}}
    finally:
        gate.open()
    outcome = _finish(late, workdir, "late")

    assert outcome.get("failed") == "c1", outcome
    assert outcome["execution_id"] == execution_id
    assert outcome["cause"] == "ArtifactNotFoundError"
    assert f"run the pipeline again with execution_id={execution_id!r} to resume" in outcome["message"]
    assert "c1" in outcome["message"]
    assert any("gone when the final outputs were read" in note for note in outcome["notes"]), outcome["notes"]
    assert outcome["steps"] == {"a": "succeeded", "c1": "failed", "c2": "succeeded"}

    # The advice works: a resume computes what is missing, and only that.
    before = (workdir / "c1.calls").stat().st_size
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=str(workdir))),
            Step("c1", functools.partial(step_sink, workdir=str(workdir), name="c1"), ("a",)),
            Step("c2", functools.partial(step_sink, workdir=str(workdir), name="c2"), ("a",)),
        ]
    )
    resumed = Executor(config).run(pipeline, execution_id=execution_id)
    expected_a = StepStatus.REUSED if how == "deleted" else StepStatus.SUCCEEDED
    assert {k: v.status for k, v in resumed.steps.items()} == {
        "a": expected_a,
        "c1": StepStatus.SUCCEEDED,
        "c2": StepStatus.REUSED,
    }
    assert (workdir / "c1.calls").stat().st_size == before + 1
    assert resumed.outputs["c1"].content == {"from": "c1", "n": 3}


# -- a step's save loses to the other run's, whose artifact is gone before it is read back ------------------


def _racing_store(backend: str, execution_id: str, tmp_path: Path, space: MemorySpace) -> ArtifactStore:
    if backend == "memory":
        return MemoryStore(namespace=execution_id, space=space)
    return create_store("filesystem", namespace=execution_id, root=str(tmp_path / "artifacts"))


def _lose_every_save_of(
    step_id: str,
    mine: ArtifactStore,
    other: ArtifactStore,
    monkeypatch: pytest.MonkeyPatch,
    times: int,
    clears: int | None = None,
) -> list[str]:
    """Make ``mine`` (the executor's store) lose its first ``times`` saves of ``step_id`` to ``other`` (the other
    run of the execution, on the same backend): just before each such save the other run saves its own output,
    so this one conflicts (write-once), and just before this run reads that output back the other run clears
    it (its on_success='clear'), the first ``clears`` times (default: every time). Return what happened, in
    order."""
    events: list[str] = []
    save, get = mine.save, mine.get
    lost = [0, False]  # saves lost so far; whether the last save lost
    cleared = [times if clears is None else clears]  # clears left

    def racing_save(sid: str, message: Message, **kwargs: Any) -> None:
        if sid == step_id and lost[0] < times:
            lost[0] += 1
            other.save(step_id, Message(content={"by": "other", "n": lost[0]}))
            events.append("other saved")
        events.append(f"save {sid}")
        try:
            save(sid, message, **kwargs)
        except ArtifactExistsError:
            lost[1] = sid == step_id
            raise

    def racing_get(sid: str) -> Message:
        if sid == step_id and lost[1] and cleared[0] > 0:
            lost[1] = False
            cleared[0] -= 1
            assert other.delete(step_id)
            events.append("other cleared")
        events.append(f"get {sid}")
        return get(sid)

    monkeypatch.setattr(mine, "save", racing_save)
    monkeypatch.setattr(mine, "get", racing_get)
    return events


@pytest.mark.parametrize("backend", ["memory", "filesystem"])
def test_a_step_whose_save_lost_to_an_artifact_gone_before_it_is_read_saves_again(
    backend: str, tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers run one execution. This one's save of a conflicts with the other's a (write-once), so it
    # reads the other's a back to use it; but the other run cleared the execution in between. The step failed
    # with a bare ArtifactNotFoundError about its own artifact. The step saves its own output instead.
    space = MemorySpace()
    execution_id = f"lost-save-{backend}"
    mine = _racing_store(backend, execution_id, tmp_path, space)
    other = _racing_store(backend, execution_id, tmp_path, space)
    events = _lose_every_save_of("a", mine, other, monkeypatch, times=1)
    where = str(workdir)
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=where)),
            Step("c1", functools.partial(step_sink, workdir=where, name="c1"), ("a",)),
        ]
    )

    result = Executor(lambda _namespace: mine, on_success="keep").run(pipeline, execution_id=execution_id)

    assert events[:5] == ["other saved", "save a", "other cleared", "get a", "save a"], events
    assert {k: v.status for k, v in result.steps.items()} == {"a": StepStatus.SUCCEEDED, "c1": StepStatus.SUCCEEDED}
    assert result.output.content == {"from": "c1", "n": 3}
    assert other.get("a").content == {"n": 3}
    other.close()


def test_a_step_that_keeps_losing_its_save_that_way_fails_with_the_execution_to_resume(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = MemorySpace()
    execution_id = "lost-save-always"
    mine = _racing_store("memory", execution_id, tmp_path, space)
    other = _racing_store("memory", execution_id, tmp_path, space)
    events = _lose_every_save_of("a", mine, other, monkeypatch, times=1000)
    pipeline = Pipeline([Step("a", functools.partial(step_a, workdir=str(workdir)))])

    with pytest.raises(StepFailedError) as caught:
        Executor(lambda _namespace: mine).run(pipeline, execution_id=execution_id)

    error = caught.value
    assert error.step_id == "a"
    assert error.execution_id == execution_id
    assert isinstance(error.__cause__, ArtifactNotFoundError)
    assert f"run the pipeline again in this process with execution_id={execution_id!r}" in str(error)
    assert "another run of execution 'lost-save-always'" in str(error)
    assert "saved its output 3 times" in str(error)
    # Bounded: three saves, each lost the same way, and no more.
    assert events.count("save a") == 3, events
    assert events.count("other cleared") == 3, events
    assert error.result.steps["a"].status == StepStatus.FAILED


def test_a_replacement_that_keeps_finding_its_artifact_gone_then_taken_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replacement of a damaged artifact reads it, finds it gone, saves write-once, conflicts with another
    # run's save, reads again... That loop had no bound.
    space = MemorySpace()
    mine = _racing_store("memory", "lost-install", tmp_path, space)
    other = _racing_store("memory", "lost-install", tmp_path, space)
    events = _lose_every_save_of("a", mine, other, monkeypatch, times=1000)

    with pytest.raises(ArtifactNotFoundError, match="saved its output 3 times") as caught:
        _install(mine, "a", Message(content={"n": 3}), replacement_id("a", 1), 1)

    assert caught.value.step_id == "a"
    assert events.count("save a") == 3, events


def test_a_replacement_whose_last_save_lost_uses_what_the_winner_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After its last lost save, the replacement gave up saying the artifact was gone, without reading what the
    # winning run had just saved; it reads it once more and uses it.
    space = MemorySpace()
    mine = _racing_store("memory", "won-install", tmp_path, space)
    other = _racing_store("memory", "won-install", tmp_path, space)
    events = _lose_every_save_of("a", mine, other, monkeypatch, times=3, clears=2)

    used = _install(mine, "a", Message(content={"n": 3}), replacement_id("a", 1), 1)

    assert used.content == {"by": "other", "n": 3}
    assert events.count("save a") == 3, events
    assert events[-1] == "get a", events


# -- an input this run saved, gone before its reader reads it --------------------------------------------------


def test_an_input_this_run_saved_and_lost_fails_its_reader_saying_why_and_a_resume_computes_it(
    workdir: Path,
) -> None:
    # Not recomputed within the run (only inputs reused from an earlier run are read, and so checked, before
    # their reader starts): the reader's own read finds it gone. The failure said only "no artifact 'a'".
    space = MemorySpace()
    execution_id = "input-lost"
    where = str(workdir)

    def reader(inputs: Any, *, lose: bool) -> Any:
        if lose:  # another run of the execution cleared it, gc collected it, or it expired
            with MemoryStore(namespace=execution_id, space=space) as other:
                assert other.delete("a")
        return step_sink(inputs, workdir=where, name="c1")

    def pipeline(*, lose: bool) -> Pipeline:
        return Pipeline(
            [
                Step("a", functools.partial(step_a, workdir=where)),
                Step("c1", functools.partial(reader, lose=lose), ("a",)),
            ]
        )

    executor = Executor(lambda namespace: MemoryStore(namespace=namespace, space=space))
    with pytest.raises(StepFailedError) as caught:
        executor.run(pipeline(lose=True), execution_id=execution_id)

    error = caught.value
    assert error.step_id == "c1"
    assert isinstance(error.__cause__, ArtifactNotFoundError)
    assert {k: v.status for k, v in error.result.steps.items()} == {"a": StepStatus.SUCCEEDED, "c1": StepStatus.FAILED}
    notes = getattr(error, "__notes__", [])
    assert any("input 'a' of step 'c1' was saved by this run and was gone when read" in note for note in notes), notes
    assert any("a resume runs step 'a' again" in note for note in notes), notes

    resumed = executor.run(pipeline(lose=False), execution_id=execution_id)
    assert {k: v.status for k, v in resumed.steps.items()} == {"a": StepStatus.SUCCEEDED, "c1": StepStatus.SUCCEEDED}
    assert resumed.output.content == {"from": "c1", "n": 3}
