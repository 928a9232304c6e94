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
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: writing 5 to clear_refs resets VmHWM); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """Peak RSS in MiB: VmHWM (resettable) where available, else ru_maxrss (since process start)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return _peak_mb()


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
            # Growth is measured from the resident size right before the transfer to the peak during it, so
            # the import-time peak of this process cannot hide what streaming costs.
            reset = _reset_peak()
            before = _rss_mb() if reset else _peak_mb()
            with source.open("rb") as handle:
                store.save_stream("big", handle)
            check = hashlib.blake2b()
            with store.open("big") as reader:
                while chunk := reader.read(CHUNK):
                    check.update(chunk)
            after = _peak_mb()
            store.clear()
    if check.digest() != digest.digest():
        raise SystemExit("streamed artifact read back differently")
    print(json.dumps({"growth_mb": round(after - before, 1), "baseline_mb": round(before, 1), "peak_reset": reset}))


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
