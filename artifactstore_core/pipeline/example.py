"""The example pipeline: fetch a text, split it into parts, summarise each part in parallel, merge.

::

    fetch -> split -> summarise-1 --\\
                   -> summarise-2 ---+-> merge
                   -> summarise-3 --/
                   -> summarise-4 -/

The "LLM call" is a deterministic stand-in (first sentence as headline, most frequent words as
keywords), optionally with a simulated latency, so the demo needs no network, no key and always prints
the same result. Step functions live at module level, so the pipeline also runs on worker processes.
:func:`run_demo` runs it and prints what happened; ``examples/quickstart.py`` and ``artifactstore demo``
call it.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any, TextIO

from pydantic import BaseModel

from ..ids import validate_namespace
from ..message import Message
from .config import StoreConfig
from .connector import ArtifactConnector
from .executor import Executor, Mode
from .graph import RESERVED_PREFIX, Pipeline, Step
from .results import RunResult

__all__ = ["EXAMPLE_TEXT", "EXAMPLE_TITLE", "Summary", "example_pipeline", "paragraphs", "run_demo"]

EXAMPLE_TITLE = "The night shift at a small bakery"

#: The bundled text the ``fetch`` step returns (written for this example).
EXAMPLE_TEXT = """\
The night shift at the bakery starts at ten, when the street outside is already quiet. The first task \
is the dough: flour, water, salt and a spoonful of the old starter go into the big mixer, and the baker \
listens to the motor to judge when the dough is ready.

While the dough rests, the ovens warm up. They are old ovens with stone floors, and they need two hours \
to reach an even heat. The baker uses the time to shape yesterday's rested dough into loaves, rolls and \
one long braided loaf for the cafe on the corner.

Shaping is the slow part of the night. Each loaf is weighed, folded and rolled, then laid seam up in a \
floured basket. The baskets are stacked on racks and wheeled into the cool room, where the loaves rise \
slowly until morning.

At four the loaves go into the ovens, a rack at a time. Steam makes the crust shine, the kitchen fills \
with the smell of bread, and by six the first delivery van is loaded. The baker writes the next night's \
list on the board, sweeps the flour from the floor and goes home as the street wakes up.
"""

_STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "by", "each", "for", "from", "go", "goes", "into", "is", "it", "of"}
    | {"on", "one", "or", "the", "their", "then", "they", "this", "to", "until", "up", "uses", "when", "where"}
    | {"while", "with"}
)


def paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs of ``text`` (separated by blank lines), whitespace normalised."""
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


class Summary(BaseModel):
    """One part's summary, as the stand-in model returns it (stored with its schema name)."""

    part: int
    headline: str
    keywords: list[str]
    words: int


def fetch_text(inputs: Mapping[str, ArtifactConnector]) -> Message:
    """Step ``fetch``: the bundled text (a real pipeline would download it)."""
    return Message(content=EXAMPLE_TEXT, metadata={"title": EXAMPLE_TITLE, "source": "bundled"})


def split_text(inputs: Mapping[str, ArtifactConnector]) -> dict[str, object]:
    """Step ``split``: the text's paragraphs, with the title carried along."""
    fetched = inputs["fetch"].get()
    return {"title": fetched.metadata["title"], "parts": paragraphs(fetched.content)}


def _stand_in_llm(text: str, *, latency: float) -> tuple[str, list[str]]:
    """A deterministic stand-in for a summarising model: a headline and three keywords."""
    if latency > 0:
        # Simulates the network round trip of a real model call, so parallel steps visibly overlap.
        time.sleep(latency)
    first_sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    words = first_sentence.split()
    headline = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
    counts = Counter(word for word in re.findall(r"[a-z']+", text.lower()) if len(word) > 3 and word not in _STOPWORDS)
    # Most frequent first; ties keep the order of first appearance (Counter.most_common is stable).
    keywords = [word for word, _ in counts.most_common(3)]
    return headline, keywords


def summarise_part(inputs: Mapping[str, ArtifactConnector], *, index: int, latency: float = 0.0) -> Summary:
    """Step ``summarise-<n>``: summarise part ``index`` (0-based) of the split text."""
    text = inputs["split"].content["parts"][index]
    headline, keywords = _stand_in_llm(text, latency=latency)
    return Summary(part=index + 1, headline=headline, keywords=keywords, words=len(text.split()))


def merge_summaries(inputs: Mapping[str, ArtifactConnector]) -> str:
    """Step ``merge``: one short report from the part summaries, in part order."""
    summaries = sorted((connector.model(Summary) for connector in inputs.values()), key=lambda s: s.part)
    total = sum(summary.words for summary in summaries)
    lines = [f"{EXAMPLE_TITLE} ({len(summaries)} parts, {total} words)"]
    for summary in summaries:
        lines.append(f"  {summary.part}. {summary.headline}  [{', '.join(summary.keywords)}]")
    return "\n".join(lines)


def example_pipeline(*, latency: float = 0.0) -> Pipeline:
    """The example pipeline: one ``summarise-<n>`` step per paragraph of :data:`EXAMPLE_TEXT`.

    Args:
        latency: seconds each summarise step waits, standing in for a model's response time.

    Raises:
        ValueError: ``latency`` is negative or not finite (NaN was taken and waited for nothing).
    """
    if not math.isfinite(latency) or latency < 0:
        raise ValueError(f"latency must be a finite number of seconds >= 0, got {latency!r}")
    parts = len(paragraphs(EXAMPLE_TEXT))
    summarise = [
        Step(f"summarise-{n + 1}", functools.partial(summarise_part, index=n, latency=latency), inputs=("split",))
        for n in range(parts)
    ]
    return Pipeline(
        [
            Step("fetch", fetch_text),
            Step("split", split_text, inputs=("fetch",)),
            *summarise,
            Step("merge", merge_summaries, inputs=tuple(step.id for step in summarise)),
        ]
    )


def run_demo(
    *,
    backend: str | None = None,
    execution_id: str | None = None,
    mode: Mode = "threads",
    max_workers: int | None = None,
    latency: float = 0.2,
    out: TextIO | None = None,
    **options: Any,
) -> RunResult:
    """Run the example pipeline on the configured backend and print its steps, sizes and result.

    Args:
        backend: the backend name; default ``ARTIFACT_STORE_BACKEND`` (then ``memory``).
        execution_id: the execution id; default a fresh one (give a failed execution's id to resume it).
        mode: ``"threads"`` or ``"processes"`` (which needs a backend shared across processes).
        max_workers: most steps running at once.
        latency: seconds each stand-in model call takes, so the parallel summaries visibly overlap.
        out: where to print; default ``sys.stdout``.
        **options: the backend's settings by field name (as :func:`~artifactstore_core.create_store`).

    Returns:
        The :class:`RunResult`.

    Raises:
        The errors of :class:`Executor` and :meth:`Executor.run` (``ConfigurationError`` for processes on
        memory, ``StepFailedError``, backend errors).
    """
    stream = out if out is not None else sys.stdout
    config = StoreConfig(backend, **options)
    executor = Executor(config, mode=mode, max_workers=max_workers)
    pipeline = example_pipeline(latency=latency)
    # Named here and shown (flushed) before any step runs, as the runtime's docs advise: a demo killed outright
    # (kill -9, the OOM killer) prints nothing afterwards, and on a persistent backend the id of its execution
    # is what resumes it (`artifactstore demo -n ID`); a fresh uuid would be known to nobody.
    fresh = execution_id is None
    execution_id = uuid.uuid4().hex if execution_id is None else validate_namespace(execution_id)
    print(f"execution {execution_id} on backend {config.backend_name()!r}, mode {mode!r}\n", file=stream, flush=True)
    # A new id stays a fresh execution, as run() would make it (its namespace cleared whole at the end).
    result = executor._run(pipeline, execution_id, fresh=fresh)
    print(result.table(), file=stream)
    print("\nfinal result (artifact 'merge'):\n", file=stream)
    print(result.output.content, file=stream)
    with config.create(result.execution_id) as store:
        # Only the execution's own: artifacts of a given execution id's namespace that are not its steps' stay.
        left = sum(1 for info in store.list() if info.step_id in pipeline or info.step_id.startswith(RESERVED_PREFIX))
    print(f"\nnamespace cleared: {result.cleared} ({left} artifacts of this execution left in the store)", file=stream)
    return result
