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

from artifactstore_core.pipeline import Executor, Pipeline, Step, StepStatus, StoreConfig
from artifactstore_http.testing import TOKEN, ServerProcess

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
