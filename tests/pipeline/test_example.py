"""The example pipeline and the quickstart script (the README's main job)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

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
