"""Resume: what the executor does with artifacts of an earlier run that it cannot trust or read.

Artifacts are damaged the way a disk or a stray writer damages them: a byte of the filesystem backend's
file, or of the Redis hash field, is changed behind the store's back.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Case
from pipeline_steps import (
    EXPECTED_D,
    Gate,
    Inputs,
    StepError,
    calls,
    diamond,
    record,
    resume_held,
    resume_in_process,
    step_a,
    step_a_counted,
    step_a_replaced,
    step_b,
    step_b_copies_a,
    step_b_reads_a,
    step_d_reads_a,
    step_e_gated,
    step_f,
    wait_until,
)
from pydantic import SecretStr

from artifactstore_core import (
    ArtifactCorruptedError,
    ArtifactInfo,
    ArtifactStore,
    BackendUnavailableError,
    ConfigurationError,
    create_store,
)
from artifactstore_core.pipeline import (
    Executor,
    InvalidPipelineError,
    Mode,
    Pipeline,
    RunResult,
    Step,
    StepFailedError,
    StepStatus,
    StoreConfig,
)
from artifactstore_core.pipeline._runner import replacement_id
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, ServerThread
from artifactstore_memory import MemorySpace, MemoryStore

pytestmark = pytest.mark.timeout(120)

PAYLOAD = "payload"
HEAD = "head"


def statuses(result: RunResult) -> dict[str, StepStatus]:
    return {step_id: step.status for step_id, step in result.steps.items()}


def damage(config: StoreConfig, execution_id: str, step_id: str, where: str) -> None:
    """Flip one byte of ``step_id``'s stored artifact: the last of its payload, or one inside its head."""
    with config.create(execution_id) as store:
        if config.backend == "filesystem":
            path = Path(store._path(step_id)[1])  # type: ignore[attr-defined]
            data = bytearray(path.read_bytes())
            data[-1 if where == PAYLOAD else 12] ^= 0x01
            path.write_bytes(bytes(data))
            return
        assert config.backend == "redis"
        key = store._key(store._member(step_id))  # type: ignore[attr-defined]
        client = redis.Redis.from_url(config.options["url"])
        try:
            field = client.hget(key, where)
            assert field is not None, f"{step_id!r} has no {where} field"
            data = bytearray(field)
            data[-1 if where == PAYLOAD else 12] ^= 0x01
            client.hset(key, where, bytes(data))
        finally:
            client.close()


DAMAGE_CASES = [
    ("filesystem", "threads"),
    ("filesystem", "processes"),
    ("redis", "threads"),
    ("redis", "processes"),
]


def damage_config(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """A store config of ``backend`` ("filesystem" or "redis") in the exact layout damage() reaches into."""
    if backend == "filesystem":
        return StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    return StoreConfig("redis", url=request.getfixturevalue("redis_url"))


@pytest.fixture(params=DAMAGE_CASES, ids=[f"{b}-{m}" for b, m in DAMAGE_CASES])
def damage_case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    backend, mode = request.param
    return Case(damage_config(backend, request, tmp_path), mode)


def two_resumes_at_once(
    config: StoreConfig, execution_id: str, workdir: Path, *, upstream: bool = False
) -> dict[str, Any]:
    """Run :func:`resume_in_process` as "one" and "two" in two spawned processes at once; return how each
    ended (its ``.result`` file). A process still running after the timeout is terminated, not left behind."""
    context = multiprocessing.get_context("spawn")
    resumes = [
        context.Process(
            target=resume_in_process,
            args=(config, execution_id, str(workdir), by, "one", "two"),
            kwargs={"upstream": upstream},
        )
        for by in ("one", "two")
    ]
    for process in resumes:
        process.start()
    try:
        for process in resumes:
            process.join(timeout=90)
            assert process.exitcode == 0, f"a resume ended with {process.exitcode} (None: still running)"
    finally:
        for process in resumes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    return {by: json.loads(Path(workdir, f"{by}.result").read_text()) for by in ("one", "two")}


def failed_once(executor: Executor, pipeline: Pipeline) -> str:
    with pytest.raises(StepFailedError) as caught:
        executor.run(pipeline)
    assert caught.value.execution_id is not None
    return caught.value.execution_id


def damaged_a_after_b_failed(config: StoreConfig, workdir: str) -> str:
    """The id of an execution of a -> b in which b failed and a's stored payload was then damaged."""
    first_run = Pipeline(
        [
            Step("a", functools.partial(step_a, workdir=workdir)),
            Step("b", functools.partial(step_b, workdir=workdir, fail=True), ("a",)),
        ]
    )
    execution_id = failed_once(Executor(config), first_run)
    damage(config, execution_id, "a", PAYLOAD)
    return execution_id


@pytest.mark.parametrize("where", [PAYLOAD, HEAD])
def test_a_damaged_reused_input_is_replaced_not_blamed_on_its_reader(
    damage_case: Case, workdir: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    # One worker: a, then b, then c fails; a and b are kept.
    executor = Executor(damage_case.config, mode=damage_case.mode, max_workers=1)
    execution_id = failed_once(executor, diamond(workdir, fail="c"))
    assert damage_case.left(execution_id) == ["a", "b"]
    damage(damage_case.config, execution_id, "a", where)

    with caplog.at_level(logging.WARNING, logger="artifactstore_core.pipeline"):
        result = executor.run(diamond(workdir), execution_id=execution_id)

    assert result.output.content == EXPECTED_D
    assert statuses(result) == {
        "a": StepStatus.SUCCEEDED,
        "b": StepStatus.REUSED,
        "c": StepStatus.SUCCEEDED,
        "d": StepStatus.SUCCEEDED,
    }
    replaced = result.steps["a"].replaced
    assert replaced is not None
    assert "ArtifactCorruptedError" in replaced
    assert "'a'" in replaced
    assert [s for s in "bcd" if result.steps[s].replaced is not None] == []
    assert calls(workdir) == {"a": 2, "b": 1, "c": 2, "d": 1}
    assert "succeeded (replaced)" in result.table()
    assert any("'a'" in r.getMessage() and "runs again" in r.getMessage() for r in caplog.records)


def test_a_damaged_reused_final_output_is_replaced(damage_case: Case, workdir: Path) -> None:
    executor = Executor(damage_case.config, mode=damage_case.mode, on_success="keep")
    first = executor.run(diamond(workdir))
    damage(damage_case.config, first.execution_id, "d", PAYLOAD)

    again = Executor(damage_case.config, mode=damage_case.mode).run(diamond(workdir), execution_id=first.execution_id)

    assert again.output.content == EXPECTED_D
    assert statuses(again) == {**dict.fromkeys("abc", StepStatus.REUSED), "d": StepStatus.SUCCEEDED}
    assert again.steps["d"].replaced is not None
    assert calls(workdir) == {"a": 1, "b": 1, "c": 1, "d": 2}
    assert damage_case.left(first.execution_id) == []


@pytest.mark.parametrize("workers", [1, 3])
def test_damage_upstream_of_damage_is_replaced_once_in_order(tmp_path: Path, workdir: Path, workers: int) -> None:
    # d's inputs b and c are damaged, and so is a, which they read: a runs again (once, though both b and c
    # find it damaged), then b and c, then d, which never sees a damaged input.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    execution_id = failed_once(Executor(config), diamond(workdir, fail="d"))
    for step_id in ("a", "b", "c"):
        damage(config, execution_id, step_id, PAYLOAD)

    again = Executor(config, max_workers=workers).run(diamond(workdir), execution_id=execution_id)

    assert again.output.content == EXPECTED_D
    assert statuses(again) == dict.fromkeys("abcd", StepStatus.SUCCEEDED)
    assert [s for s in "abcd" if again.steps[s].replaced is not None] == ["a", "b", "c"]
    assert calls(workdir) == dict.fromkeys("abcd", 2)


def test_a_reused_artifact_that_nothing_reads_is_not_read(tmp_path: Path, workdir: Path) -> None:
    # The documented cost: only reused artifacts a running step reads, and final outputs, are read.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    first = Executor(config, on_success="keep").run(diamond(workdir))
    damage(config, first.execution_id, "a", PAYLOAD)

    again = Executor(config).run(diamond(workdir), execution_id=first.execution_id)

    assert statuses(again) == dict.fromkeys("abcd", StepStatus.REUSED)
    assert calls(workdir) == dict.fromkeys("abcd", 1)


# -- gone between the listing and the read (expired) ----------------------------------------------------


def expire_now(inputs: Inputs, *, workdir: str, url: str, key: bytes) -> str:
    """Makes a reused artifact expire, as its TTL would between the resume's listing and its reader."""
    record(workdir, "x")
    client = redis.Redis.from_url(url)
    try:
        assert client.pexpireat(key, 1)  # a time in the past: the key expires at once
    finally:
        client.close()
    return "x"


def reads_a(inputs: Inputs, *, workdir: str) -> int:
    record(workdir, "c")
    return int(inputs["a"].content["n"]) + 1


def test_a_reused_input_that_expired_before_it_is_read_is_recomputed(redis_url: str, workdir: Path) -> None:
    config = StoreConfig("redis", url=redis_url, default_ttl=3600)
    executor = Executor(config, max_workers=1)

    def pipeline(*, fail: bool, key: bytes = b"") -> Pipeline:
        where = str(workdir)
        x: Callable[..., Any] = functools.partial(expire_now, workdir=where, url=redis_url, key=key)
        if fail:
            x = functools.partial(_fails, workdir=where)
        return Pipeline(
            [
                Step("a", functools.partial(_a, workdir=where)),
                Step("x", x),
                Step("c", functools.partial(reads_a, workdir=where), ("a", "x")),
            ]
        )

    execution_id = failed_once(executor, pipeline(fail=True))
    with config.create(execution_id) as store:
        key = store._key(store._member("a"))  # type: ignore[attr-defined]

    result = executor.run(pipeline(fail=False, key=key), execution_id=execution_id)

    assert result.output.content == 4
    assert statuses(result) == dict.fromkeys("axc", StepStatus.SUCCEEDED)
    replaced = result.steps["a"].replaced
    assert replaced is not None
    assert "ArtifactNotFoundError" in replaced
    assert calls(workdir) == {"a": 2, "x": 2, "c": 1}


def _a(inputs: Inputs, *, workdir: str) -> dict[str, int]:
    record(workdir, "a")
    return {"n": 3}


def _fails(inputs: Inputs, *, workdir: str) -> None:
    record(workdir, "x")
    raise StepError("x was told to fail")


# -- backend failures are neither "absent" nor "present" ------------------------------------------------


class FailingMemoryStore(MemoryStore):
    """A memory store whose backend fails reading or listing the given ids (as an unreachable server)."""

    def __init__(self, *, namespace: str, space: MemorySpace, get: Iterable[str] = (), info: bool = False) -> None:
        super().__init__(namespace=namespace, space=space)
        self.failing_get = set(get)
        self.failing_info = info

    def _get(self, step_id: str) -> Any:
        if step_id in self.failing_get:
            raise BackendUnavailableError(f"cannot reach the server reading {step_id!r}", step_id=step_id)
        return super()._get(step_id)

    def _list(self) -> Iterable[ArtifactInfo]:
        if self.failing_info:
            raise ArtifactCorruptedError("a header does not verify", step_id="a")
        return super()._list()

    def _info(self, step_id: str) -> ArtifactInfo:
        if self.failing_info:
            raise BackendUnavailableError(f"cannot reach the server for {step_id!r}", step_id=step_id)
        return super()._info(step_id)


def test_a_backend_failure_reading_a_reused_input_fails_its_reader_and_replaces_nothing(workdir: Path) -> None:
    space = MemorySpace()
    execution_id = failed_once(
        Executor(lambda ns: MemoryStore(namespace=ns, space=space), max_workers=1), diamond(workdir, fail="c")
    )
    executor = Executor(lambda ns: FailingMemoryStore(namespace=ns, space=space, get="a"), max_workers=1)

    with pytest.raises(StepFailedError) as caught:
        executor.run(diamond(workdir), execution_id=execution_id)

    assert caught.value.step_id == "c"
    assert isinstance(caught.value.__cause__, BackendUnavailableError)
    assert calls(workdir)["a"] == 1  # not taken for damage or absence: a did not run again
    with MemoryStore(namespace=execution_id, space=space) as store:
        assert sorted(info.step_id for info in store.list()) == ["a", "b"]


def test_a_backend_failure_checking_artifacts_to_resume_propagates_before_any_step_runs(workdir: Path) -> None:
    space = MemorySpace()
    execution_id = failed_once(
        Executor(lambda ns: MemoryStore(namespace=ns, space=space), max_workers=1), diamond(workdir, fail="c")
    )
    executor = Executor(lambda ns: FailingMemoryStore(namespace=ns, space=space, info=True))

    with pytest.raises(BackendUnavailableError):
        executor.run(diamond(workdir), execution_id=execution_id)
    assert calls(workdir) == {"a": 1, "b": 1, "c": 1}


# -- a store in another namespace ------------------------------------------------------------------------


def test_a_store_factory_that_ignores_the_namespace_is_refused(tmp_path: Path, workdir: Path) -> None:
    root = str(tmp_path / "shared")
    Executor(lambda ns: create_store("filesystem", root=root, namespace=ns), on_success="keep").run(
        diamond(workdir), execution_id="default"
    )

    def ignores_namespace(namespace: str) -> ArtifactStore:
        return create_store("filesystem", root=root)

    with pytest.raises(ConfigurationError, match=r"ignores_namespace.*'other'.*'default'"):
        Executor(ignores_namespace).run(diamond(workdir), execution_id="other")
    assert calls(workdir) == dict.fromkeys("abcd", 1)
    with create_store("filesystem", root=root) as store:  # nothing reused into, or cleared from, "default"
        assert sorted(info.step_id for info in store.list()) == ["a", "b", "c", "d"]


def test_a_replaced_step_that_fails_again_says_why_it_ran(tmp_path: Path, workdir: Path) -> None:
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    execution_id = failed_once(Executor(config, max_workers=1), diamond(workdir, fail="c"))
    damage(config, execution_id, "a", PAYLOAD)

    with pytest.raises(StepFailedError) as caught:
        Executor(config, max_workers=1).run(diamond(workdir, fail="a"), execution_id=execution_id)

    error = caught.value
    assert error.step_id == "a"
    assert any(
        "ran again because its artifact" in note and "ArtifactCorruptedError" in note for note in error.__notes__
    )
    assert error.result is not None
    assert error.result.steps["a"].status == StepStatus.FAILED
    assert error.result.steps["a"].replaced is not None
    assert "failed (to replace)" in error.result.table()


# -- a replaced step's other readers wait for it ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_step_that_reads_a_replaced_artifact_waits_for_its_replacement(
    tmp_path: Path, workdir: Path, mode: Mode
) -> None:
    # b finds a damaged and a runs again; d also reads a, but was not ready then (it waits for e, which
    # a's run lets finish). d must wait for a's replacement too, not start once e is done and read the
    # damaged artifact (or nothing, mid-replacement) and fail.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    where = str(workdir)
    first = Executor(config, on_success="keep").run(
        Pipeline([Step("a", functools.partial(_a, workdir=where))]), execution_id="resumed"
    )
    damage(config, first.execution_id, "a", PAYLOAD)
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a_replaced, workdir=where)),
            Step("b", functools.partial(step_b_reads_a, workdir=where), ("a",)),
            Step("e", functools.partial(step_e_gated, workdir=where)),
            Step("d", functools.partial(step_d_reads_a, workdir=where), ("a", "e")),
            Step("f", functools.partial(step_f, workdir=where), ("e",)),
        ]
    )

    result = Executor(config, mode=mode, max_workers=2).run(pipeline, execution_id="resumed")

    assert statuses(result) == dict.fromkeys("abedf", StepStatus.SUCCEEDED)
    assert result.outputs["d"].content == 4
    assert result.steps["a"].replaced is not None
    assert calls(workdir) == {"a": 2, "b": 1, "e": 1, "d": 1, "f": 1}


# -- a wrong signing key is not damage ---------------------------------------------------------------------


def test_a_resume_with_another_signing_key_is_refused_and_overwrites_nothing(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under another key every artifact fails verification as if damaged; running every step again would
    # overwrite each one with an artifact that only the wrong key can read.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", "the key they were saved with")
    execution_id = failed_once(Executor(config, max_workers=1), diamond(workdir, fail="c"))
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", "a mistyped key")

    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SIGNING_KEY") as caught:
        Executor(config).run(diamond(workdir), execution_id=execution_id)

    assert "mistyped" not in str(caught.value)
    assert caught.value.namespace == execution_id
    assert calls(workdir) == {"a": 1, "b": 1, "c": 1}
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", "the key they were saved with")
    with config.create(execution_id) as store:
        assert store.get("a").content == {"n": 3}
        assert store.get("b").content == {"n": 30}
    result = Executor(config).run(diamond(workdir), execution_id=execution_id)
    assert statuses(result) == {**dict.fromkeys("ab", StepStatus.REUSED), **dict.fromkeys("cd", StepStatus.SUCCEEDED)}


def test_a_damaged_signed_artifact_beside_one_that_verifies_is_replaced(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # b verifies under the key, which proves it right: a's failure is damage, and a is recomputed.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", "the key")
    execution_id = failed_once(Executor(config, max_workers=1), diamond(workdir, fail="c"))
    damage(config, execution_id, "a", HEAD)

    result = Executor(config, max_workers=1).run(diamond(workdir), execution_id=execution_id)

    assert result.output.content == EXPECTED_D
    assert result.steps["a"].status == StepStatus.SUCCEEDED
    assert result.steps["a"].replaced is not None
    assert result.steps["b"].status == StepStatus.REUSED


# -- a backend whose info() is read from its listing -------------------------------------------------------


def test_a_damaged_header_on_a_backend_without_its_own_info_replaces_only_that_step(
    tmp_path: Path, workdir: Path
) -> None:
    # The http client reads info() from the listing, which fails on the damaged artifact whatever step is
    # asked for: that error names a, and must not make b, which is sound, count as damaged and be overwritten.
    root = str(tmp_path / "artifacts")
    app = create_app(
        lambda namespace: create_store("filesystem", root=root, namespace=namespace), token=SecretStr(TOKEN)
    )
    server = ServerThread(app).start()
    try:
        config = StoreConfig("http", endpoint=server.url, token=TOKEN)
        execution_id = failed_once(Executor(config, max_workers=1), diamond(workdir, fail="c"))
        damage(StoreConfig("filesystem", root=root), execution_id, "a", HEAD)

        result = Executor(config, max_workers=1).run(diamond(workdir), execution_id=execution_id)
    finally:
        server.stop()

    assert result.output.content == EXPECTED_D
    assert statuses(result) == {**dict.fromkeys("acd", StepStatus.SUCCEEDED), "b": StepStatus.REUSED}
    assert [s for s in "abcd" if result.steps[s].replaced is not None] == ["a"]
    assert calls(workdir) == {"a": 2, "b": 1, "c": 2, "d": 1}


# -- two resumes of one execution at once ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["filesystem", "redis"])
def test_two_resumes_at_once_replace_a_damaged_artifact_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, workdir: Path
) -> None:
    # Two processes resume one execution whose a is damaged; both find it so and run a again at once (they
    # meet inside a). The first saves its replacement, and its b reads it; then the second's a returns
    # another output. Replacing with a plain overwrite, the second overwrote a under the first's b (the
    # execution then held a b computed from an a it no longer had) and its own b failed with
    # ArtifactExistsError. The replacement is written once: the second adopts the first's.
    config = damage_config(backend, request, tmp_path)
    where = str(workdir)
    execution_id = damaged_a_after_b_failed(config, where)

    outcomes = two_resumes_at_once(config, execution_id, workdir)
    assert outcomes["one"] == {"output": "one", "steps": {"a": "succeeded", "b": "succeeded"}}
    assert outcomes["two"] == {"output": "one", "steps": {"a": "succeeded", "b": "succeeded"}}
    assert calls(workdir) == {"a": 1, "b": 1, "a-one": 1, "a-two": 1, "b-one": 1, "b-two": 1}
    with config.create(execution_id) as store:
        assert store.get("a").content == {"by": "one"}
        assert store.get("b").content == {"from": "one"}


def test_two_resumes_at_once_running_a_missing_step_both_use_the_first_output_saved(
    tmp_path: Path, workdir: Path
) -> None:
    # x was saved, a failed. Both resumes run a at once (they meet inside it) with different outputs; the
    # second's returns once the first's b has read the first's a. Write-once kept the first; the second
    # resume failed with ArtifactExistsError ("pass overwrite=True", which a pipeline cannot). It now uses
    # the output saved first, as its readers and the other resume's do.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    where = str(workdir)
    first_run = Pipeline(
        [
            Step("x", functools.partial(step_a, workdir=where)),
            Step("a", functools.partial(step_b, workdir=where, fail=True), ("x",)),
        ]
    )
    execution_id = failed_once(Executor(config), first_run)

    outcomes = two_resumes_at_once(config, execution_id, workdir, upstream=True)
    both = {"x": "reused", "a": "succeeded", "b": "succeeded"}
    assert outcomes == {"one": {"output": "one", "steps": both}, "two": {"output": "one", "steps": both}}
    with config.create(execution_id) as store:
        assert store.get("a").content == {"by": "one"}
        assert store.get("b").content == {"from": "one"}


def test_a_replaced_artifact_damaged_again_is_restored_from_its_replacement_not_recomputed(
    tmp_path: Path, workdir: Path
) -> None:
    # The record a replacement is decided by is also a sound copy of it: the artifact b was computed from.
    # The same path lets a resume that found the damage before another resume replaced it take that
    # replacement instead of running the step again.
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    executor = Executor(config, max_workers=1, on_success="keep")
    execution_id = failed_once(executor, diamond(workdir, fail="b"))
    damage(config, execution_id, "a", PAYLOAD)
    with pytest.raises(StepFailedError):  # b finds a damaged, a is replaced, then b fails again
        executor.run(diamond(workdir, fail="b"), execution_id=execution_id)
    assert (calls(workdir)["a"], calls(workdir)["b"]) == (2, 2)
    damage(config, execution_id, "a", PAYLOAD)

    result = executor.run(diamond(workdir), execution_id=execution_id)

    assert result.output.content == EXPECTED_D
    assert result.steps["a"].status == StepStatus.REUSED
    assert result.steps["b"].status == StepStatus.SUCCEEDED
    assert result.steps["a"].replaced is not None
    assert "reused (restored)" in result.table()
    assert (calls(workdir)["a"], calls(workdir)["b"]) == (2, 3)
    with config.create(execution_id) as store:
        assert store.get("a").content == {"n": 3}


def test_a_damaged_replacement_record_is_replaced_by_the_next_generation(tmp_path: Path, workdir: Path) -> None:
    config = StoreConfig("filesystem", root=str(tmp_path / "artifacts"))
    executor = Executor(config, max_workers=1, on_success="keep")
    execution_id = failed_once(executor, diamond(workdir, fail="b"))
    damage(config, execution_id, "a", PAYLOAD)
    with pytest.raises(StepFailedError):  # b finds a damaged, a is replaced, then b fails again
        executor.run(diamond(workdir, fail="b"), execution_id=execution_id)
    damage(config, execution_id, "a", PAYLOAD)
    damage(config, execution_id, replacement_id("a", 1), PAYLOAD)

    result = executor.run(diamond(workdir), execution_id=execution_id)

    assert result.output.content == EXPECTED_D
    assert result.steps["a"].status == StepStatus.SUCCEEDED
    assert calls(workdir)["a"] == 3
    with config.create(execution_id) as store:
        assert store.get(replacement_id("a", 2)).content == {"n": 3}


def test_step_ids_under_the_reserved_prefix_are_refused() -> None:
    with pytest.raises(InvalidPipelineError, match="reserved"):
        Step(".artifactstore/replacement/1/x", _a)


# -- replacement records never outlive the artifact they replaced --------------------------------------------


def _counted(workdir: Path, *, fail: bool) -> Pipeline:
    where = str(workdir)
    return Pipeline(
        [
            Step("a", functools.partial(step_a_counted, workdir=where)),
            Step("b", functools.partial(step_b_copies_a, workdir=where, fail=fail), ("a",)),
        ]
    )


def _replaced_then_recomputed(config: StoreConfig, workdir: Path, mode: Mode = "threads") -> tuple[Executor, str]:
    """An execution whose a was replaced once (its record holds call 2), then deleted by hand and computed
    afresh (call 3) by a resume in which b failed again: a holds call 3, b has no artifact."""
    executor = Executor(config, mode=mode, max_workers=1, on_success="keep")
    execution_id = failed_once(executor, _counted(workdir, fail=True))
    damage(config, execution_id, "a", PAYLOAD)
    with pytest.raises(StepFailedError):  # b finds a damaged: a is replaced by call 2, then b fails again
        executor.run(_counted(workdir, fail=True), execution_id=execution_id)
    with config.create(execution_id) as store:
        assert store.get(replacement_id("a", 1)).content == {"call": 2}
        assert store.delete("a")  # by hand, to have a computed again
    with pytest.raises(StepFailedError):  # a runs again (call 3), b fails again
        executor.run(_counted(workdir, fail=True), execution_id=execution_id)
    with config.create(execution_id) as store:
        assert store.get("a").content == {"call": 3}
    return executor, execution_id


def test_a_step_computed_afresh_after_a_replacement_is_never_restored_from_the_old_record(
    damage_case: Case, workdir: Path
) -> None:
    # The record of a's replacement (call 2) outlived it: once a was computed afresh (call 3) and then found
    # damaged, a resume restored call 2 from the record without running a, though a had since held call 3
    # (that the record never replaced), and b read a stale output.
    config = damage_case.config
    executor, execution_id = _replaced_then_recomputed(config, workdir, damage_case.mode)
    damage(config, execution_id, "a", PAYLOAD)

    result = executor.run(_counted(workdir, fail=False), execution_id=execution_id)

    assert result.steps["a"].status == StepStatus.SUCCEEDED
    assert result.steps["a"].replaced is not None
    assert result.output.content == 4
    assert calls(workdir)["a"] == 4
    with config.create(execution_id) as store:
        assert store.get("a").content == {"call": 4}
        # The old record was deleted when a was saved afresh (call 3): this replacement's record is the first.
        assert store.get(replacement_id("a", 1)).content == {"call": 4}
        assert not store.exists(replacement_id("a", 2))


def test_records_above_a_missing_one_are_deleted_when_the_step_is_saved_afresh(
    damage_case: Case, workdir: Path
) -> None:
    # a's records were generations 1 and 2, and 1 went missing (deleted by hand, expired before 2, or a
    # forget stopped after its first delete). When a was computed afresh, its records were deleted only up to
    # the first missing one: record 2 (call 3) outlived it, and once a was replaced again (record 1, call 5)
    # and then damaged again, a resume restored call 3 from record 2, and b read that stale output.
    config = damage_case.config
    executor = Executor(config, mode=damage_case.mode, max_workers=1, on_success="keep")
    execution_id = failed_once(executor, _counted(workdir, fail=True))
    damage(config, execution_id, "a", PAYLOAD)
    with pytest.raises(StepFailedError):  # a is replaced by call 2 (record 1), b fails again
        executor.run(_counted(workdir, fail=True), execution_id=execution_id)
    damage(config, execution_id, "a", PAYLOAD)
    damage(config, execution_id, replacement_id("a", 1), PAYLOAD)
    with pytest.raises(StepFailedError):  # a is replaced by call 3 (record 2), b fails again
        executor.run(_counted(workdir, fail=True), execution_id=execution_id)
    with config.create(execution_id) as store:
        assert store.get(replacement_id("a", 2)).content == {"call": 3}
        assert store.delete(replacement_id("a", 1))
        assert store.delete("a")  # by hand, to have a computed again

    with pytest.raises(StepFailedError):  # a is computed afresh (call 4), b fails again
        executor.run(_counted(workdir, fail=True), execution_id=execution_id)

    with config.create(execution_id) as store:
        assert store.get("a").content == {"call": 4}
        assert not store.exists(replacement_id("a", 2))
    damage(config, execution_id, "a", PAYLOAD)
    assert executor.run(_counted(workdir, fail=False), execution_id=execution_id).output.content == 5
    damage(config, execution_id, "a", PAYLOAD)
    with config.create(execution_id) as store:
        assert store.delete("b")  # so that b reads a again
    result = executor.run(_counted(workdir, fail=False), execution_id=execution_id)
    assert result.output.content == 5
    assert result.steps["a"].status == StepStatus.REUSED  # restored from record 1
    assert calls(workdir)["a"] == 5


def _deletes_a(inputs: Inputs, *, workdir: str, config: StoreConfig, execution_id: str) -> str:
    """x: deletes a after the resume listed it and before b, which reads a, starts."""
    record(workdir, "x")
    with config.create(execution_id) as store:
        assert store.delete("a")
    return "x"


@pytest.mark.parametrize("backend", ["filesystem", "redis"])
def test_a_step_computed_afresh_after_a_replacement_and_then_gone_is_run_again(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, workdir: Path
) -> None:
    # As above, but a is gone (deleted after the listing, as an expiry would) when b reads it: the resume
    # restored call 2 from the old record instead of running a.
    config = damage_config(backend, request, tmp_path)
    executor, execution_id = _replaced_then_recomputed(config, workdir)
    where = str(workdir)
    pipeline = Pipeline(
        [
            Step("a", functools.partial(step_a_counted, workdir=where)),
            Step("x", functools.partial(_deletes_a, workdir=where, config=config, execution_id=execution_id)),
            Step("b", functools.partial(step_b_copies_a, workdir=where), ("a", "x")),
        ]
    )

    result = executor.run(pipeline, execution_id=execution_id)

    assert statuses(result) == dict.fromkeys("axb", StepStatus.SUCCEEDED)
    replaced = result.steps["a"].replaced
    assert replaced is not None
    assert "ArtifactNotFoundError" in replaced
    assert result.outputs["b"].content == 4
    with config.create(execution_id) as store:
        assert store.get("a").content == {"call": 4}
        assert not store.exists(replacement_id("a", 1))  # deleted when a was saved afresh (call 3)


@pytest.mark.parametrize("backend", ["filesystem", "redis"])
def test_a_resume_that_finds_an_artifact_damaged_and_one_that_finds_it_gone_agree(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, workdir: Path
) -> None:
    # One resume lists a damaged and runs it again to replace it; a is then deleted (by hand, or it expired),
    # and a second resume lists it gone, runs it, saves it write-once, and its b reads it. The first resume's
    # a then returned: it overwrote the second's a under the second's b, and adopted that b (write-once), so
    # the execution held a b computed from an a it no longer had, and the first resume reported it.
    config = damage_config(backend, request, tmp_path)
    where = str(workdir)
    execution_id = damaged_a_after_b_failed(config, where)
    one = multiprocessing.get_context("spawn").Process(
        target=resume_held, args=(config, execution_id, where, "one", True)
    )
    one.start()
    try:
        wait_until(lambda: Path(workdir, "a-one-started").exists(), 60, "the first resume never ran a")
        with config.create(execution_id) as store:
            assert store.delete("a")
        resume_held(config, execution_id, where, "two", False)
        Gate(str(Path(workdir, "a-one-go"))).open()
        one.join(timeout=90)
        assert one.exitcode == 0
    finally:
        if one.is_alive():
            one.terminate()
            one.join(timeout=10)

    outcomes = {by: json.loads(Path(workdir, f"{by}.result").read_text()) for by in ("one", "two")}
    assert outcomes["two"] == {"output": "two", "steps": {"a": "succeeded", "b": "succeeded"}}
    assert outcomes["one"] == {"output": "two", "steps": {"a": "succeeded", "b": "succeeded"}}
    with config.create(execution_id) as store:
        assert store.get("a").content == {"by": "two"}
        assert store.get("b").content == {"from": "two"}
        # No record stands for a replacement that did not happen: a later damage of a runs a again.
        assert not store.exists(replacement_id("a", 1))
