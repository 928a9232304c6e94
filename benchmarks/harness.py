"""A small timing harness: medians of interleaved repetitions, ratios measured side by side.

These machines are small and noisy, so nothing here compares absolute times across runs: each case times
our call and the raw client's call alternately in the same run, takes the median of several repetitions
of each, and reports the ratio.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Case:
    """One workload: our operation beside the raw client's equivalent.

    ``ours(i)`` and ``raw(i)`` perform one operation for iteration ``i`` (fresh ids/keys per iteration
    where the operation would otherwise hit a cache or the write-once path); ``reset()`` runs untimed
    after every sample so storage does not grow without bound.
    """

    backend: str
    workload: str
    ours: Callable[[int], Any]
    raw: Callable[[int], Any]
    number: int = 100
    repeat: int = 7
    target: float | None = None
    reset: Callable[[], None] | None = None
    prepare: Callable[[], None] | None = None
    #: Untimed set-up before each sample of ours / of raw (e.g. fill a namespace that the sample clears).
    before_ours: Callable[[int], None] | None = None
    before_raw: Callable[[int], None] | None = None
    #: The least any store doing this work must pay: the raw call plus the work of a verified read or write
    #: (one digest pass, the JSON parse) or the raw client's own way of sending that much (multipart).
    #: Timed beside the other two, so its ratio to raw shows whether a target is within reach at all.
    floor: Callable[[int], Any] | None = None
    #: What ``floor`` does, in a few words (printed under the table).
    floor_note: str = ""


@dataclass
class Result:
    """The medians and ratio of one case."""

    backend: str
    workload: str
    ours_s: float
    raw_s: float
    ratio: float
    target: float | None
    met: bool | None
    samples_ours: list[float] = field(default_factory=list)
    samples_raw: list[float] = field(default_factory=list)
    floor_s: float | None = None
    floor_ratio: float | None = None
    floor_note: str = ""
    samples_floor: list[float] = field(default_factory=list)

    @property
    def status(self) -> str:
        """ok, MISSED, or MISSED with the reason when the floor itself is above the target."""
        if self.met is None:
            return "-"
        if self.met:
            return "ok"
        if self.target is not None and self.floor_ratio is not None and self.floor_ratio > self.target:
            return "MISSED (floor above target)"
        return "MISSED"

    @property
    def pair_ratios(self) -> list[float]:
        """Ours over raw for each repetition (the two samples of a repetition ran back to back)."""
        return [o / r for o, r in zip(self.samples_ours, self.samples_raw, strict=False) if r > 0]

    @property
    def spread(self) -> str:
        """The lowest and highest ratio of one repetition: how much this machine's noise moved the ratio."""
        ratios = self.pair_ratios
        return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-"


#: Set (by ``python -m benchmarks --smoke``) to run every case once and at a small scale.
SMOKE_ENV = "ARTIFACTSTORE_BENCH_SMOKE"


def smoke() -> bool:
    """Whether this is a smoke run: every case once, clears of 100 artifacts; the figures mean nothing."""
    return os.environ.get(SMOKE_ENV) == "1"


def _sample(func: Callable[[int], Any], number: int, offset: int) -> float:
    gc.collect()
    gc.disable()  # collector pauses are noise, not the cost of the code under test
    try:
        start = time.perf_counter()
        for i in range(offset, offset + number):
            func(i)
        return (time.perf_counter() - start) / number
    finally:
        gc.enable()


def run_case(case: Case) -> Result:
    """Time ``case``: ours and raw alternately, ``repeat`` samples of ``number`` operations each."""
    if case.prepare is not None:
        case.prepare()
    ours: list[float] = []
    raw: list[float] = []
    floor: list[float] = []
    sides = [(case.ours, ours, case.before_ours), (case.raw, raw, case.before_raw)]
    if case.floor is not None:
        sides.append((case.floor, floor, case.before_raw))  # the floor writes where raw writes
    for func, _, _ in sides:
        _sample(func, 1, 10_000_000)  # warm-up: connections, caches, lazy imports
    if case.reset is not None:
        case.reset()
    for rep in range(case.repeat):
        offset = rep * case.number
        # Rotate which goes first so drift on a noisy machine does not favour one side.
        shift = rep % len(sides)
        order = sides[shift:] + sides[:shift]
        for func, samples, before in order:
            if before is not None:
                before(offset)
            samples.append(_sample(func, case.number, offset))
            if case.reset is not None:
                case.reset()
    ours_median, raw_median = statistics.median(ours), statistics.median(raw)
    ratio = ours_median / raw_median if raw_median > 0 else float("inf")
    met = None if case.target is None else ratio <= case.target
    result = Result(case.backend, case.workload, ours_median, raw_median, ratio, case.target, met, ours, raw)
    if floor:
        result.floor_s = statistics.median(floor)
        result.floor_ratio = result.floor_s / raw_median if raw_median > 0 else float("inf")
        result.floor_note = case.floor_note
        result.samples_floor = floor
    return result


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def table(results: list[Result], extras: list[dict[str, Any]]) -> str:
    """The results as an aligned text table (with the memory figures after it)."""
    headers = ["backend", "workload", "ours", "raw", "ratio", "per repetition", "floor", "target", "status"]
    rows = []
    for r in results:
        target = "-" if r.target is None else f"<= {r.target:g}x"
        floor = "-" if r.floor_ratio is None else f"{r.floor_ratio:.2f}x"
        rows.append(
            [r.backend, r.workload, _fmt(r.ours_s), _fmt(r.raw_s), f"{r.ratio:.2f}x", r.spread, floor, target, r.status]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
        for line in [headers, *rows]
    ]
    for extra in extras:
        status = "ok" if extra.get("met") else ("MISSED" if extra.get("met") is False else "-")
        lines.append(f"{extra['backend']}  {extra['workload']}: {extra['value']}  (target {extra['target']})  {status}")
    notes = [r for r in results if r.floor_note]
    if notes:
        lines.append("")
        lines.append("floor: the raw call plus the work any verified store must do, as a ratio to raw:")
        lines.extend(f"  {r.backend} {r.workload}: {r.floor_note}" for r in notes)
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the benchmark ran on."""
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def write_json(path: Path, results: list[Result], extras: list[dict[str, Any]]) -> None:
    """Write the figures (with the raw samples) as JSON."""
    doc = {"machine": machine(), "results": [asdict(r) for r in results], "memory": extras}
    path.write_text(json.dumps(doc, indent=2))
