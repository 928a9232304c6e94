"""Run the benchmark suite: ``python -m benchmarks [--json PATH] [--only NAME ...]``.

Prints one table (our median, the raw client's median, the ratio, the target) and writes the same figures,
with every sample, as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .harness import SMOKE_ENV, Case, run_case, table, write_json

STREAM_MB = 256
STREAM_TARGET_MB = 64


def _streaming(streaming: Any) -> list[tuple[str, dict[str, Any]]]:
    """Peak RSS growth of a child process streaming a large artifact through filesystem, s3 and http (the http
    client against a filesystem-backed artifact server in this process, whose own growth is measured too)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-root-") as root:
        print(f"running filesystem: stream {STREAM_MB} MB ...", file=sys.stderr, flush=True)
        results.append(("filesystem", streaming.measure("filesystem", STREAM_MB, {"root": root})))
    with tempfile.TemporaryDirectory(prefix="bench-stream-server-") as root:
        from pydantic import SecretStr

        from artifactstore_core import create_store
        from artifactstore_http.server import create_app
        from artifactstore_http.testing import TOKEN, ServerThread

        app = create_app(
            lambda namespace: create_store("filesystem", namespace=namespace, root=root),
            token=SecretStr(TOKEN),
            max_body_bytes=2 * STREAM_MB * 1024 * 1024,
        )
        server = ServerThread(app).start()
        try:
            print(f"running http: stream {STREAM_MB} MB ...", file=sys.stderr, flush=True)
            # The server runs in this process: its growth is this process's, from right before the child
            # starts (the token goes to the child in its environment, not on its command line).
            before = streaming.start_growth()
            options = {"endpoint": server.url, "trust_env": False}
            figures = streaming.measure("http", STREAM_MB, options, env={"ARTIFACT_STORE_HTTP_TOKEN": TOKEN})
            server_growth = streaming.growth_mb(before)
        finally:
            server.stop()
        results.append(("http (client)", figures))
        results.append(("http (server)", {**figures, "growth_mb": server_growth, "peak_reset": before[0]}))
    with ExitStack() as stack:
        from . import cases_servers

        endpoint, options = cases_servers.moto(stack)
        print(f"running s3: stream {STREAM_MB} MB ...", file=sys.stderr, flush=True)
        results.append(("s3", streaming.measure("s3", STREAM_MB, {"endpoint_url": endpoint, **options})))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="Where to write the figures.")
    parser.add_argument("--only", nargs="*", default=None, help="Groups to run (default: all).")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Run every case once (one repetition of one operation, clears of 100 artifacts): proves the cases "
        "work; the figures mean nothing.",
    )
    args = parser.parse_args()
    if args.smoke:
        os.environ[SMOKE_ENV] = "1"  # read by the cases as they are imported

    from . import cases_core, cases_servers, streaming

    groups: dict[str, Callable[[ExitStack], list[Case]]] = {
        "memory": lambda stack: cases_core.memory_cases(),
        "codec": lambda stack: cases_core.codec_cases(),
        "filesystem": cases_servers.filesystem_cases,
        "redis": cases_servers.redis_cases,
        "http": cases_servers.http_cases,
        "s3": cases_servers.s3_cases,
    }
    wanted = set(args.only) if args.only else None
    results = []
    extras: list[dict[str, Any]] = []
    for name, build in groups.items():
        if wanted is not None and name not in wanted:
            continue
        with ExitStack() as stack:
            for case in build(stack):
                if args.smoke:
                    case = dataclasses.replace(case, number=1, repeat=1)
                print(f"running {case.backend}: {case.workload} ...", file=sys.stderr, flush=True)
                results.append(run_case(case))
    if wanted is None or "streaming" in wanted:
        for backend, figures in _streaming(streaming):
            extras.append(
                {
                    "backend": backend,
                    "workload": f"peak RSS growth streaming {STREAM_MB} MB in and out",
                    "value": f"{figures['growth_mb']} MB",
                    "target": f"< {STREAM_TARGET_MB} MB",
                    "met": figures["growth_mb"] < STREAM_TARGET_MB,
                }
            )
    print(table(results, extras))
    write_json(args.json, results, extras)
    print(f"\nfigures written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
