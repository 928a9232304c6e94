"""Step and Pipeline: validation and structure."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Iterator

import pytest

from artifactstore_core import InvalidStepIdError
from artifactstore_core.pipeline import InvalidPipelineError, Pipeline, Step


def noop(inputs: object) -> None:
    return None


def test_structure_of_a_diamond_defined_out_of_order() -> None:
    pipeline = Pipeline([Step("d", noop, ("b", "c")), Step("c", noop, "a"), Step("b", noop, ["a"]), Step("a", noop)])
    assert pipeline.levels == (("a",), ("c", "b"), ("d",))
    assert pipeline.order == ("a", "c", "b", "d")
    assert [step.id for step in pipeline.steps] == list(pipeline.order)
    assert pipeline.sinks == ("d",)
    assert pipeline.dependents("a") == ("c", "b")
    assert pipeline["c"].inputs == ("a",)
    assert "a" in pipeline
    assert "z" not in pipeline
    assert len(pipeline) == 4


def test_several_sinks_and_roots() -> None:
    pipeline = Pipeline([Step("x", noop), Step("y", noop), Step("z", noop, ("x",))])
    assert pipeline.levels == (("x", "y"), ("z",))
    assert pipeline.sinks == ("y", "z")


def test_duplicate_ids() -> None:
    with pytest.raises(InvalidPipelineError, match="two steps have the id 'a'"):
        Pipeline([Step("a", noop), Step("a", noop)])


def test_unknown_input() -> None:
    with pytest.raises(InvalidPipelineError, match="step 'b' reads 'ghost'"):
        Pipeline([Step("a", noop), Step("b", noop, ("a", "ghost"))])


def test_cycle_names_its_steps() -> None:
    with pytest.raises(InvalidPipelineError, match="cycle: 'b', 'c'") as caught:
        Pipeline([Step("a", noop), Step("b", noop, ("a", "c")), Step("c", noop, ("b",)), Step("d", noop, ("c",))])
    assert "'a'" not in str(caught.value).split("cycle:")[1]


def test_cycle_names_only_the_steps_in_it_not_those_downstream() -> None:
    # "report" and "email" only read the cycle: listing them as part of it sent the author looking for a
    # loop through them. "0" reads the cycle too and sorts first, so the walk starts outside the cycle.
    steps = [
        Step("0", noop, ("x",)),
        Step("a", noop),
        Step("x", noop, ("a", "z")),
        Step("y", noop, ("x",)),
        Step("z", noop, ("y",)),
        Step("report", noop, ("z",)),
        Step("email", noop, ("report",)),
    ]
    with pytest.raises(InvalidPipelineError) as caught:
        Pipeline(steps)
    assert str(caught.value) == (
        "steps depend on each other in a cycle: 'x', 'y', 'z' ('x' reads 'z' reads 'y' reads 'x')"
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Step("a", noop, ("a",)), "lists itself"),
        (lambda: Step("a", noop, ("b", "b")), "more than once"),
        (lambda: Step("a", "not callable"), "must be callable"),  # type: ignore[arg-type]
        (lambda: Pipeline([]), "at least one step"),
        (lambda: Pipeline(["a"]), "Step objects"),  # type: ignore[list-item]
    ],
)
def test_invalid_definitions(make: object, match: str) -> None:
    with pytest.raises(InvalidPipelineError, match=match):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (None, "'b': inputs must be a step id or an iterable of step ids, not NoneType"),
        (3, "'b': inputs must be a step id or an iterable of step ids, not int"),
        (b"a", "'b': inputs must be a step id or an iterable of step ids, not bytes"),
        ([Step("a", noop)], "'b': inputs are step ids, not Step objects: give 'a'"),
    ],
)
def test_inputs_that_are_no_step_ids_are_refused_naming_the_step(inputs: object, match: str) -> None:
    # None ("no inputs") raised a bare TypeError ("'NoneType' object is not iterable"), bytes and Step objects
    # an InvalidStepIdError about an int or a Step, none of which said which step of the pipeline was wrong.
    with pytest.raises(InvalidPipelineError, match=re.escape(match)):
        Step("b", noop, inputs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 300])
def test_invalid_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidStepIdError):
        Step(bad, noop)
    with pytest.raises(InvalidStepIdError):
        Step("ok", noop, (bad,))


def test_invalid_pipeline_error_is_a_value_error() -> None:
    assert issubclass(InvalidPipelineError, ValueError)


class CountingId(str):
    """A step id that counts the comparisons made with it (a str subclass is a legal id)."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingId.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_building_a_large_fan_out_and_fan_in_is_linear_in_its_edges() -> None:
    # Finding each step's dependents asked every step whether it reads every other: n * n comparisons of
    # ids, minutes to build a pipeline with tens of thousands of steps. Counted, not timed.
    n = 500
    leaves = [CountingId(f"leaf-{i}") for i in range(n)]
    steps = [Step(CountingId("src"), noop)]
    steps += [Step(leaf, noop, (CountingId("src"),)) for leaf in leaves]
    steps.append(Step(CountingId("total"), noop, tuple(CountingId(leaf) for leaf in leaves)))
    CountingId.comparisons = 0

    pipeline = Pipeline(steps)

    assert CountingId.comparisons < 20 * n
    assert pipeline.dependents("src") == tuple(leaves)
    assert pipeline.dependents("leaf-7") == ("total",)
    assert pipeline.sinks == ("total",)


async def summarise(inputs: object) -> str:
    return "summary"


def chunks(inputs: object) -> Iterator[str]:
    yield "chunk"


async def stream(inputs: object) -> AsyncIterator[str]:
    yield "chunk"


@pytest.mark.parametrize(
    ("fn", "kind"),
    [
        (summarise, "an async function"),
        (functools.partial(summarise), "an async function"),
        (chunks, "a generator function"),
        (stream, "an async generator function"),
    ],
)
def test_async_and_generator_step_functions_are_refused_when_the_step_is_built(fn: object, kind: str) -> None:
    # They failed only when the step ran (its upstream steps done, and paid for), with "returned a
    # coroutine" and a "never awaited" warning.
    with pytest.raises(InvalidPipelineError, match=f"'s': fn is {kind}"):
        Step("s", fn)  # type: ignore[arg-type]
