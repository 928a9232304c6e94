"""The benchmark harness itself (speed is measured by `nox -s bench`, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import Case, Result, run_case, table, write_json


def test_harness_reports_medians_ratios_and_targets(tmp_path: Path) -> None:
    calls = {"ours": 0, "raw": 0, "before": 0}

    def ours(i: int) -> None:
        calls["ours"] += 1

    def raw(i: int) -> None:
        calls["raw"] += 1

    def before(i: int) -> None:
        calls["before"] += 1

    case = Case("demo", "noop", ours, raw, number=10, repeat=3, target=1000.0, before_ours=before)
    result = run_case(case)
    assert calls["ours"] == calls["raw"] == 31  # one warm-up call each, then 3 samples of 10
    assert calls["before"] == 3
    assert result.ratio > 0
    assert result.met is True
    assert len(result.samples_ours) == 3
    text = table([result], [{"backend": "demo", "workload": "rss", "value": "1 MB", "target": "< 2 MB", "met": True}])
    assert "demo" in text
    assert "<= 1000x" in text
    assert len(result.pair_ratios) == 3
    # The ratio of medians always lies between the lowest and the highest ratio of one repetition.
    assert min(result.pair_ratios) <= result.ratio * 1.0001
    assert max(result.pair_ratios) >= result.ratio * 0.9999
    assert result.spread in text

    write_json(tmp_path / "out.json", [result], [])
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["results"][0]["workload"] == "noop"
    assert doc["machine"]["cpus"] >= 1


def test_spread_is_the_range_of_per_repetition_ratios() -> None:
    result = Result("b", "w", 2.0, 1.0, 2.0, None, None, [2.0, 3.0, 1.5], [1.0, 1.0, 1.0])
    assert result.pair_ratios == [2.0, 3.0, 1.5]
    assert result.spread == "1.50-3.00x"


def test_a_floor_is_timed_beside_both_sides_and_explains_a_miss(tmp_path: Path) -> None:
    calls = {"ours": 0, "raw": 0, "floor": 0}
    order: list[str] = []

    def side(name: str):  # type: ignore[no-untyped-def]
        def run(i: int) -> None:
            calls[name] += 1
            if not order or order[-1] != name:
                order.append(name)

        return run

    case = Case(
        "demo", "floored", side("ours"), side("raw"), number=5, repeat=3, target=1e-9,
        floor=side("floor"), floor_note="raw + one digest",
    )  # fmt: skip
    result = run_case(case)
    assert calls == {"ours": 16, "raw": 16, "floor": 16}  # one warm-up call each, then 3 samples of 5
    # Each side goes first in one repetition out of three (after the warm-ups).
    firsts = [order[3 + 3 * rep] for rep in range(3)]
    assert sorted(firsts) == ["floor", "ours", "raw"]
    assert result.floor_s is not None
    assert result.floor_ratio is not None
    assert len(result.samples_floor) == 3
    # A target below even the floor's ratio is reported as such.
    assert result.met is False
    assert result.status == "MISSED (floor above target)"
    text = table([result], [])
    assert "MISSED (floor above target)" in text
    assert "raw + one digest" in text

    write_json(tmp_path / "out.json", [result], [])
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["results"][0]["floor_ratio"] == result.floor_ratio


def test_a_miss_above_a_reachable_floor_is_a_plain_miss() -> None:
    result = Result("b", "w", 3.0, 1.0, 3.0, 1.5, False, [3.0], [1.0], floor_s=1.2, floor_ratio=1.2)
    assert result.status == "MISSED"
    assert Result("b", "w", 1.0, 1.0, 1.0, 1.5, True).status == "ok"
    assert Result("b", "w", 1.0, 1.0, 1.0, None, None).status == "-"


@pytest.mark.timeout(300)
def test_every_case_of_the_suite_runs(tmp_path: Path) -> None:
    # The suite itself (what `nox -s bench` runs: every group, its servers, the streaming measurement), once
    # per case and with clears of 100: a case broken by a change fails here, not at the next full run.
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    groups = {result["backend"] for result in doc["results"]}
    assert groups == {"memory", "codec", "filesystem", "redis", "http", "s3"}
    assert {entry["backend"] for entry in doc["memory"]} == {"filesystem", "s3", "http (client)", "http (server)"}
    assert all(result["samples_ours"] and result["samples_raw"] for result in doc["results"])
    assert done.stdout.startswith("backend")  # the table
    assert "figures written" in done.stderr
