"""What an execution reports: :class:`StepStatus`, :class:`StepResult` and :class:`RunResult`."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .._wording import visible
from ..message import Message

__all__ = ["RunResult", "StepResult", "StepStatus", "format_duration", "format_size"]


class StepStatus(StrEnum):
    """How a step ended in one execution."""

    #: The step ran and its output was saved.
    SUCCEEDED = "succeeded"
    #: The step's artifact already existed in the execution's namespace (a resume); it did not run.
    REUSED = "reused"
    #: The step raised, or its output could not be saved.
    FAILED = "failed"
    #: The step did not run because an earlier step failed.
    NOT_RUN = "not run"


@dataclass(frozen=True)
class StepResult:
    """One step's outcome.

    Attributes:
        step_id: the step.
        status: how it ended.
        duration: seconds spent running the step and saving its output (0 unless it succeeded).
        size: the size of its artifact's content in bytes (uncompressed), when known.
        replaced: on a resume, why the step's artifact from the earlier run could not be reused (it failed
            verification, ``ArtifactCorruptedError``, or was gone when read, ``ArtifactNotFoundError``), so
            this run ran the step again to replace it (or, with status ``not run``, would have, had another
            step not failed first; with status ``reused``, it restored the replacement that another resume
            of the execution had saved, without running the step); ``None`` otherwise.
    """

    step_id: str
    status: StepStatus
    duration: float = 0.0
    size: int | None = None
    replaced: str | None = None


@dataclass(frozen=True)
class RunResult:
    """The outcome of one execution.

    Attributes:
        execution_id: the execution id (the namespace its artifacts were stored in).
        backend: the backend name.
        steps: each step's :class:`StepResult`, in topological order.
        outputs: the messages of the pipeline's sink steps (the steps no other step reads), read before
            the namespace was cleared. Empty when the execution failed.
        duration: wall-clock seconds of the whole execution.
        cleared: whether the execution's artifacts were removed at the end (its namespace cleared; on a run
            given an execution id, artifacts there that are not the pipeline's are kept).
    """

    execution_id: str
    backend: str
    steps: Mapping[str, StepResult]
    outputs: Mapping[str, Message] = field(default_factory=dict)
    duration: float = 0.0
    cleared: bool = False

    @property
    def output(self) -> Message:
        """The single final output, for a pipeline with exactly one sink step.

        Raises:
            LookupError: the pipeline has no output here (it failed) or more than one sink step.
        """
        if len(self.outputs) != 1:
            names = ", ".join(map(repr, self.outputs)) or "none"
            # Say where the outputs are: a caller who wrote `result.output` may not know of `outputs`.
            hint = "; read each from result.outputs[step_id]" if self.outputs else ""
            raise LookupError(
                f"execution {self.execution_id!r} has {len(self.outputs)} outputs ({names}), not one{hint}"
            )
        return next(iter(self.outputs.values()))

    def ran(self) -> list[str]:
        """The ids of the steps that ran in this execution (succeeded or failed), in topological order."""
        return [s.step_id for s in self.steps.values() if s.status in (StepStatus.SUCCEEDED, StepStatus.FAILED)]

    def table(self) -> str:
        """A plain-text table of the steps: status, duration and artifact size, with a total line."""
        rows = [("step", "status", "duration", "size")]
        for step in self.steps.values():
            # Only a step that ran to the end has a measured duration; reused steps have a size, not a time.
            timed = step.status == StepStatus.SUCCEEDED
            size = format_size(step.size) if step.size is not None else "-"
            status = str(step.status)
            if step.replaced is not None:
                # Its earlier artifact was damaged or gone: replaced, restored from the replacement another
                # resume saved, or still to replace after a failure.
                status += {StepStatus.SUCCEEDED: " (replaced)", StepStatus.REUSED: " (restored)"}.get(
                    step.status, " (to replace)"
                )
            # As the command line shows text: bidirectional controls and line separators escaped, so a row cannot
            # reorder itself or pass for another step's.
            rows.append((visible(step.step_id), status, format_duration(step.duration) if timed else "-", size))
        work = sum(step.duration for step in self.steps.values())
        total_size = sum(step.size or 0 for step in self.steps.values())
        rows.append(
            ("total", f"{len(self.ran())} of {len(self.steps)} ran", format_duration(work), format_size(total_size))
        )
        # Columns, not characters: a step id may hold wide characters (CJK, emoji) or combining marks.
        widths = [max(_width(row[i]) for row in rows) for i in range(4)]
        lines = []
        for index, row in enumerate(rows):
            if index == len(rows) - 1:
                lines.append("  ".join("-" * width for width in widths))
            cells = [_pad(row[0], widths[0]), _pad(row[1], widths[1]), _pad(row[2], widths[2], right=True)]
            lines.append("  ".join([*cells, _pad(row[3], widths[3], right=True)]))
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
        # The note explains a wall time below the steps' total; it is not said where no steps overlapped.
        overlapped = self.duration < work and len(self.ran()) > 1
        lines.append(
            f"wall time {format_duration(self.duration)}" + (" (steps in parallel overlap)" if overlapped else "")
        )
        return "\n".join(lines)


def _width(text: str) -> int:
    """The columns a terminal gives ``text``: two for a wide character (East Asian, most emoji), none for a
    combining mark or a zero-width format character, one for the others."""
    if text.isascii():
        return len(text)
    return sum(
        0
        if unicodedata.category(char) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(char) in ("W", "F")
        else 1
        for char in text
    )


def _pad(text: str, width: int, *, right: bool = False) -> str:
    padding = " " * (width - _width(text))
    return padding + text if right else text + padding


def format_duration(seconds: float) -> str:
    """``0.0123`` -> ``"12.3 ms"``; ``2.5`` -> ``"2.50 s"``."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def format_size(size: int) -> str:
    """``512`` -> ``"512 B"``; ``2048`` -> ``"2.0 KiB"``."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
