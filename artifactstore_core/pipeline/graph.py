"""Pipeline definitions: :class:`Step` (a callable with declared inputs) and :class:`Pipeline` (a DAG of them)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ids import validate_step_id
from .errors import InvalidPipelineError

if TYPE_CHECKING:
    from .connector import ArtifactConnector

__all__ = ["RESERVED_PREFIX", "Pipeline", "Step", "StepFunction"]

#: Step ids that start with this are the executor's own, in every execution's namespace: the records of the
#: replacements a resume saved (see ``docs/pipeline.md``). A :class:`Step` cannot have one.
RESERVED_PREFIX = ".artifactstore/"

#: A step: called with a read-only mapping from each input step id to an
#: :class:`~artifactstore_core.pipeline.ArtifactConnector`; returns a ``Message``, a pydantic model, or a
#: JSON value, ``str`` or ``bytes`` (which the executor wraps in a ``Message``).
StepFunction = Callable[["Mapping[str, ArtifactConnector]"], Any]


@dataclass(frozen=True, init=False)
class Step:
    """One step of a pipeline.

    Args:
        id: the step id; its output is saved under it. Any legal step id (see
            :func:`~artifactstore_core.ids.validate_step_id`).
        fn: the callable that computes the output (see :data:`StepFunction`). For worker processes it
            must be importable: a module-level function, or a :func:`functools.partial` of one with
            picklable arguments; not a lambda or a nested function.
        inputs: the ids of the steps whose outputs this step reads (a single id may be given as a str).

    Raises:
        InvalidStepIdError: ``id`` or an input is not a legal step id.
        InvalidPipelineError: ``id`` starts with ``.artifactstore/`` (reserved), ``fn`` is not callable or is
            an async or generator function (directly or through ``functools.partial``), ``inputs`` is neither a
            str nor an iterable of them (``None``, ``bytes``, :class:`Step` objects), or an input is listed
            twice or is the step itself.
    """

    id: str
    fn: StepFunction = field(repr=False)
    inputs: tuple[str, ...] = ()

    def __init__(self, id: str, fn: StepFunction, inputs: Iterable[str] | str = ()) -> None:
        validate_step_id(id)
        if id.startswith(RESERVED_PREFIX):
            raise InvalidPipelineError(
                f"step {id!r}: ids starting with {RESERVED_PREFIX!r} are reserved for the executor's own records"
            )
        if not callable(fn):
            raise InvalidPipelineError(f"step {id!r}: fn must be callable, got {type(fn).__name__}")
        kind = _unsupported_kind(fn)
        if kind is not None:
            # Refused here, not when the step runs: by then the steps upstream of it (model calls) have run.
            raise InvalidPipelineError(
                f"step {id!r}: fn is {kind}, and the executor calls a step's function and stores what it returns: "
                "a coroutine or generator is not an output. Make it a plain function that returns the output "
                "(for async code, one that calls asyncio.run on it)"
            )
        # Checked here with the step named: None (meant as "no inputs") failed as a bare TypeError, and bytes
        # or Step objects as an InvalidStepIdError about an int or a Step, none of which said which step it was.
        given: object = inputs  # typed object: the annotation is what a caller should pass, not what it did
        if not isinstance(given, str | Iterable) or isinstance(given, bytes | bytearray):
            raise InvalidPipelineError(
                f"step {id!r}: inputs must be a step id or an iterable of step ids, not {type(given).__name__}"
            )
        names = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        for name in names:
            named: object = name
            if isinstance(named, Step):
                raise InvalidPipelineError(f"step {id!r}: inputs are step ids, not Step objects: give {named.id!r}")
            validate_step_id(name)
        if len(set(names)) != len(names):
            raise InvalidPipelineError(f"step {id!r} lists an input more than once: {list(names)}")
        if id in names:
            raise InvalidPipelineError(f"step {id!r} lists itself as an input")
        # A frozen dataclass sets its fields this way in its own constructor.
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "inputs", names)


def _unsupported_kind(fn: object) -> str | None:
    """What kind of function ``fn`` is if calling it does not compute an output (through ``partial``)."""
    if inspect.iscoroutinefunction(fn):
        return "an async function"
    if inspect.isasyncgenfunction(fn):
        return "an async generator function"
    if inspect.isgeneratorfunction(fn):
        return "a generator function"
    return None


class Pipeline:
    """A validated DAG of steps.

    Args:
        steps: the steps, in any order.

    Raises:
        InvalidPipelineError: no steps, two steps share an id, an input names no step, or the steps
            depend on each other in a cycle (the message names the steps).
    """

    def __init__(self, steps: Iterable[Step]) -> None:
        by_id: dict[str, Step] = {}
        for step in steps:
            if not isinstance(step, Step):
                raise InvalidPipelineError(f"a pipeline holds Step objects, not {type(step).__name__}")
            if step.id in by_id:
                raise InvalidPipelineError(f"two steps have the id {step.id!r}")
            by_id[step.id] = step
        if not by_id:
            raise InvalidPipelineError("a pipeline needs at least one step")
        for step in by_id.values():
            unknown = [name for name in step.inputs if name not in by_id]
            if unknown:
                raise InvalidPipelineError(
                    f"step {step.id!r} reads {', '.join(map(repr, unknown))}, which is not a step of this pipeline"
                )
        self._steps = by_id
        # One pass over the edges: asking every step whether it reads every other was quadratic, minutes for
        # a fan-out of tens of thousands of steps. Dependents stay in definition order.
        dependents: dict[str, list[str]] = {step_id: [] for step_id in by_id}
        for step in by_id.values():
            for name in step.inputs:
                dependents[name].append(step.id)
        self._dependents: dict[str, tuple[str, ...]] = {step_id: tuple(ids) for step_id, ids in dependents.items()}
        self._levels = self._topological_levels()

    def _topological_levels(self) -> tuple[tuple[str, ...], ...]:
        # Kahn's algorithm, one level at a time; steps keep their definition order within a level.
        position = {step_id: index for index, step_id in enumerate(self._steps)}
        waiting = {step_id: len(step.inputs) for step_id, step in self._steps.items()}
        level = [step_id for step_id, count in waiting.items() if count == 0]
        levels: list[tuple[str, ...]] = []
        while level:
            levels.append(tuple(level))
            following: list[str] = []
            for step_id in level:
                del waiting[step_id]
                for dependent in self._dependents[step_id]:
                    waiting[dependent] -= 1
                    if waiting[dependent] == 0:
                        following.append(dependent)
            level = sorted(following, key=position.__getitem__)
        if waiting:
            cycle = self._cycle_among(set(waiting))
            path = " reads ".join(map(repr, [*cycle, cycle[0]]))
            raise InvalidPipelineError(
                f"steps depend on each other in a cycle: {', '.join(map(repr, sorted(cycle)))} ({path})"
            )
        return tuple(levels)

    def _cycle_among(self, blocked: set[str]) -> list[str]:
        """One cycle among the steps Kahn's algorithm could not order, in reading order.

        The blocked steps also include those merely downstream of a cycle; naming them as part of it
        would send the author looking for a loop where there is none. Every blocked step reads a blocked
        step, so following blocked inputs from any of them must come back to a step already visited.
        """
        seen: dict[str, int] = {}
        path: list[str] = []
        current = min(blocked)
        while current not in seen:
            seen[current] = len(path)
            path.append(current)
            current = next(name for name in self._steps[current].inputs if name in blocked)
        cycle = path[seen[current] :]
        start = cycle.index(min(cycle))
        return cycle[start:] + cycle[:start]

    # -- structure ------------------------------------------------------------------------------------

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps in topological order (every step after its inputs)."""
        return tuple(self._steps[step_id] for step_id in self.order)

    @property
    def order(self) -> tuple[str, ...]:
        """The step ids in topological order."""
        return tuple(step_id for level in self._levels for step_id in level)

    @property
    def levels(self) -> tuple[tuple[str, ...], ...]:
        """The step ids by topological level (level 0 has no inputs; level n reads only from levels below).

        The executor does not wait for a whole level: a step starts as soon as its own inputs are done.
        """
        return self._levels

    @property
    def sinks(self) -> tuple[str, ...]:
        """The steps no other step reads (their outputs are the pipeline's results)."""
        return tuple(step_id for step_id in self.order if not self._dependents[step_id])

    def dependents(self, step_id: str) -> tuple[str, ...]:
        """The steps that read ``step_id`` directly.

        Raises:
            KeyError: no step has that id.
        """
        return self._dependents[step_id]

    def __getitem__(self, step_id: str) -> Step:
        return self._steps[step_id]

    def __contains__(self, step_id: object) -> bool:
        return step_id in self._steps

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"<Pipeline steps={list(self.order)!r}>"
