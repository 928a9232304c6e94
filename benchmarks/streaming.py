"""Peak resident memory while streaming a large artifact through a backend, measured in a child process.

Also imported by the suite's runner, which measures its own peak the same way (an artifact server in it).

The child creates the store, records its peak RSS, streams a file of ``size`` bytes in with
``save_stream`` and back out with ``open``, and reports how much its peak RSS grew. Run as
``python -m benchmarks.streaming BACKEND SIZE_MB ROOT_OR_URL``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from artifactstore_core.testing_servers import peak_rss_bytes, reset_peak_rss, rss_bytes

CHUNK = 1024 * 1024


def growth_mb(before: tuple[bool, int]) -> float:
    """How far the peak RSS rose above ``before`` (what :func:`start_growth` returned), in MiB."""
    exact, baseline = before
    return round((peak_rss_bytes(exact) - baseline) / CHUNK, 1)


def start_growth() -> tuple[bool, int]:
    """Reset the peak RSS where possible and return what :func:`growth_mb` measures from: the resident size
    right now (or, where the peak cannot be reset, the lifetime peak, so that the import-time peak of this
    process cannot hide what streaming costs)."""
    exact = reset_peak_rss()
    return exact, rss_bytes() if exact else peak_rss_bytes(False)


def _child(backend: str, size_mb: int, options: dict[str, Any]) -> None:
    from artifactstore_core import create_store

    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        source = Path(tmp) / "source.bin"
        digest = hashlib.blake2b()
        with source.open("wb") as handle:
            block = os.urandom(CHUNK)
            for _ in range(size_mb):
                handle.write(block)
                digest.update(block)
        with create_store(backend, namespace="bench-stream", **options) as store:
            store.clear()
            # Growth is measured from the resident size right before the transfer to the peak during it.
            before = start_growth()
            with source.open("rb") as handle:
                store.save_stream("big", handle)
            check = hashlib.blake2b()
            with store.open("big") as reader:
                while chunk := reader.read(CHUNK):
                    check.update(chunk)
            growth = growth_mb(before)
            store.clear()
    if check.digest() != digest.digest():
        raise SystemExit("streamed artifact read back differently")
    print(json.dumps({"growth_mb": growth, "baseline_mb": round(before[1] / CHUNK, 1), "peak_reset": before[0]}))


def measure(backend: str, size_mb: int, options: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the child for ``backend`` (with ``env`` added to this process's environment) and return its figures."""
    result = subprocess.run(  # noqa: S603 - our own interpreter and module, arguments we built
        [sys.executable, "-m", "benchmarks.streaming", backend, str(size_mb), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
        env={**os.environ, **(env or {})},
    )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
