"""The example pipeline and the quickstart script (the README's main job)."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_steps import DEADLINE, wait_until

from artifactstore_core import create_store
from artifactstore_core.pipeline import Executor, StepStatus, StoreConfig
from artifactstore_core.pipeline.example import EXAMPLE_TEXT, EXAMPLE_TITLE, example_pipeline, paragraphs

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def test_shape() -> None:
    pipeline = example_pipeline()
    parts = len(paragraphs(EXAMPLE_TEXT))
    assert parts == 4
    assert pipeline.levels[:2] == (("fetch",), ("split",))
    assert len(pipeline.levels[2]) == parts
    assert pipeline.sinks == ("merge",)


def test_result_is_deterministic_across_runs_and_modes(tmp_path: Path) -> None:
    threads = Executor(StoreConfig("memory")).run(example_pipeline())
    processes = Executor(StoreConfig("filesystem", root=str(tmp_path)), mode="processes").run(example_pipeline())
    text = threads.output.content
    assert text == processes.output.content == Executor().run(example_pipeline()).output.content
    lines = text.splitlines()
    assert lines[0] == f"{EXAMPLE_TITLE} (4 parts, {len(EXAMPLE_TEXT.split())} words)"
    assert lines[1].startswith("  1. The night shift at the bakery")
    assert lines[1].endswith("[dough, night, shift]")
    assert len(lines) == 5
    assert all(step.status == StepStatus.SUCCEEDED for step in threads.steps.values())


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="latency"):
        example_pipeline(latency=-1)


def test_quickstart_main(capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(QUICKSTART), run_name="quickstart")["main"]
    assert main(["--latency", "0"]) == 0
    out = capsys.readouterr().out
    assert "on backend 'memory'" in out
    for step_id in example_pipeline().order:
        assert step_id in out
    assert "7 of 7 ran" in out
    assert EXAMPLE_TITLE in out
    assert "(0 artifacts of this execution left in the store)" in out


@pytest.mark.parametrize("latency", ["-1", "nan"])
def test_quickstart_refuses_a_latency_that_is_no_duration(latency: str, capsys: pytest.CaptureFixture[str]) -> None:
    # -1 ended in a ValueError traceback from example_pipeline; nan was taken and summarised nothing.
    main = runpy.run_path(str(QUICKSTART), run_name="quickstart")["main"]
    with pytest.raises(SystemExit) as caught:
        main(["--latency", latency])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--latency" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("latency", [-1.0, float("nan"), float("inf")])
def test_example_pipeline_refuses_a_latency_that_is_no_duration(latency: float) -> None:
    with pytest.raises(ValueError, match="latency must be a finite number of seconds"):
        example_pipeline(latency=latency)


def test_quickstart_refuses_processes_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(QUICKSTART), run_name="quickstart")["main"]
    assert main(["--mode", "processes"]) == 2
    assert "cross_process=False" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_quickstart_as_a_script(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    done = subprocess.run(
        [sys.executable, str(QUICKSTART), "--latency", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "final result" in done.stdout
    assert "summarise-4" in done.stdout


@pytest.mark.timeout(120)
def test_a_demo_killed_outright_has_already_shown_the_execution_to_resume(tmp_path: Path) -> None:
    # The execution id was printed with the table, after the run: a demo killed with SIGKILL (the OOM killer)
    # showed nothing, and its kept artifacts could not be resumed (`artifactstore demo -n ID`).
    root = tmp_path / "artifacts"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    env["ARTIFACT_STORE_FILESYSTEM_ROOT"] = str(root)
    code = (
        "from artifactstore_core.pipeline.example import run_demo\n"
        f"run_demo(backend='filesystem', latency={DEADLINE})\n"  # the summaries wait until killed
    )
    demo = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        with create_store("filesystem", root=str(root)) as store:

            def split_saved() -> bool:
                for namespace in store.namespaces():
                    with create_store("filesystem", root=str(root), namespace=namespace) as execution:
                        return execution.exists("split")
                return False

            wait_until(split_saved, DEADLINE, "the demo never saved 'split'")
            (namespace,) = store.namespaces()
    finally:
        demo.kill()
        out, _ = demo.communicate(timeout=30)
    assert demo.returncode == -signal.SIGKILL
    assert out.startswith(f"execution {namespace} on backend 'filesystem', mode 'threads'"), out

    again = subprocess.run(
        [str(Path(sys.executable).parent / "artifactstore"), "demo", "-b", "filesystem", "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "fetch        reused" in again.stdout
    assert "split        reused" in again.stdout
    assert "summarise-1  succeeded" in again.stdout
