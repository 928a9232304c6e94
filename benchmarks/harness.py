"""A small timing harness: medians of interleaved repetitions, ratios measured side by side.

These machines are small and noisy, so nothing here compares absolute times across runs: each case times
our call and the raw client's call alternately in the same run, takes the median of several repetitions
of each, and reports the ratio.
"""

from __future__ import annotations

import gc
import json
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

    @property
    def pair_ratios(self) -> list[float]:
        """Ours over raw for each repetition (the two samples of a repetition ran back to back)."""
        return [o / r for o, r in zip(self.samples_ours, self.samples_raw, strict=False) if r > 0]

    @property
    def spread(self) -> str:
        """The lowest and highest ratio of one repetition: how much this machine's noise moved the ratio."""
        ratios = self.pair_ratios
        return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-"


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
    _sample(case.ours, 1, 10_000_000)  # warm-up: connections, caches, lazy imports
    _sample(case.raw, 1, 10_000_000)
    if case.reset is not None:
        case.reset()
    for rep in range(case.repeat):
        offset = rep * case.number
        # Alternate which goes first so drift on a noisy machine does not favour one side.
        sides = [(case.ours, ours, case.before_ours), (case.raw, raw, case.before_raw)]
        order = sides if rep % 2 == 0 else sides[::-1]
        for func, samples, before in order:
            if before is not None:
                before(offset)
            samples.append(_sample(func, case.number, offset))
            if case.reset is not None:
                case.reset()
    ours_median, raw_median = statistics.median(ours), statistics.median(raw)
    ratio = ours_median / raw_median if raw_median > 0 else float("inf")
    met = None if case.target is None else ratio <= case.target
    return Result(case.backend, case.workload, ours_median, raw_median, ratio, case.target, met, ours, raw)


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def table(results: list[Result], extras: list[dict[str, Any]]) -> str:
    """The results as an aligned text table (with the memory figures after it)."""
    headers = ["backend", "workload", "ours", "raw", "ratio", "per repetition", "target", "status"]
    rows = []
    for r in results:
        status = "-" if r.met is None else ("ok" if r.met else "MISSED")
        target = "-" if r.target is None else f"<= {r.target:g}x"
        rows.append([r.backend, r.workload, _fmt(r.ours_s), _fmt(r.raw_s), f"{r.ratio:.2f}x", r.spread, target, status])
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
        for line in [headers, *rows]
    ]
    for extra in extras:
        status = "ok" if extra.get("met") else ("MISSED" if extra.get("met") is False else "-")
        lines.append(f"{extra['backend']}  {extra['workload']}: {extra['value']}  (target {extra['target']})  {status}")
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
