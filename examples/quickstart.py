"""Run the example pipeline and print what happened: steps, durations, artifact sizes and the result.

    uv run python examples/quickstart.py                      # memory backend, threads
    ARTIFACT_STORE_BACKEND=redis uv run python examples/quickstart.py --mode processes

The pipeline (artifactstore_core/pipeline/example.py) fetches a bundled text, splits it into parts,
summarises each part in parallel with a deterministic stand-in for an LLM call, and merges the summaries.
Each step's output is saved in the store under the step id, in a namespace of this execution's own; the
next steps read it from there. At the end the namespace is cleared.
"""

from __future__ import annotations

import argparse
import math
import sys

from artifactstore_core import ArtifactStoreError
from artifactstore_core.pipeline import StepFailedError
from artifactstore_core.pipeline.example import run_demo


def seconds(text: str) -> float:
    """A latency in seconds: a finite number, zero or more (argparse shows the error, not a traceback)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the example pipeline on the configured backend.")
    parser.add_argument("--mode", choices=["threads", "processes"], default="threads", help="where steps run")
    parser.add_argument("--workers", type=int, default=None, help="most steps running at once")
    parser.add_argument("--latency", type=seconds, default=0.2, help="seconds per stand-in model call (default 0.2)")
    parser.add_argument("--execution-id", default=None, help="resume this execution instead of starting a new one")
    args = parser.parse_args(argv)
    try:
        # The backend is the configured one: ARTIFACT_STORE_BACKEND (default "memory") and its settings.
        run_demo(mode=args.mode, max_workers=args.workers, latency=args.latency, execution_id=args.execution_id)
    except StepFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ArtifactStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
