"""A 256 MiB artifact streamed from a file to the server and back to a file, in a client process whose memory
is measured.

The server runs in its own process, backed by the filesystem backend (whatever it holds in memory is its
own), and each direction runs in a fresh client process that resets its resident-set high-water mark
(``VmHWM``) just before the transfer, so the peak measured is the transfer's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import blake3
import pytest

from artifactstore_http.testing import TOKEN, ServerProcess

MIB = 1024 * 1024
SIZE = 256 * MIB
LIMIT = 64 * MIB

CLIENT = textwrap.dedent(
    """
    import io, json, shutil, sys

    from pydantic import SecretStr

    from artifactstore_core.testing_servers import peak_rss_bytes, reset_peak_rss, rss_bytes
    from artifactstore_http import HttpSettings, HttpStore

    mode, endpoint, token, path = sys.argv[1:]
    settings = HttpSettings(endpoint=endpoint, token=SecretStr(token), trust_env=False, read_timeout=300)
    store = HttpStore(settings, namespace="memory")
    # Imports, the client, a connection, and the health probe's answer: before the measurement.
    store.save_stream("warm-" + mode, io.BytesIO(b"x"), overwrite=True)
    store.get("warm-" + mode)
    exact = reset_peak_rss()
    before = rss_bytes()
    if mode == "upload":
        with open(path, "rb") as source:
            store.save_stream("big", source)
    else:
        with store.open("big") as handle, open(path, "wb") as target:
            shutil.copyfileobj(handle, target, 1024 * 1024)
    peak = peak_rss_bytes(exact)
    info = store.info("big")
    store.close()
    print(json.dumps({"before": before, "peak": peak, "size": info.size, "digest": info.digest}))
    """
)


def run_client(mode: str, endpoint: str, path: Path) -> dict[str, int | str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, mode, endpoint, TOKEN, str(path)],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, int | str] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def file_digest(path: Path) -> str:
    hasher = blake3.blake3()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            hasher.update(chunk)
    return hasher.hexdigest()


@pytest.mark.timeout(900)
def test_256_mib_round_trip_through_files_in_bounded_memory(tmp_path: Path) -> None:
    env = {
        "ARTIFACT_STORE_SERVER_TOKEN": TOKEN,
        "ARTIFACT_STORE_SERVER_BACKEND": "filesystem",
        "ARTIFACT_STORE_FILESYSTEM_ROOT": str(tmp_path / "root"),
    }
    server = ServerProcess(env, tmp_path).start()
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    block = os.urandom(MIB)
    with source.open("wb") as handle:
        for index in range(SIZE // MIB):
            handle.write(index.to_bytes(8, "big") + block[8:])  # every MiB distinct
    expected = file_digest(source)
    try:
        upload = run_client("upload", server.url, source)
        download = run_client("download", server.url, target)
    finally:
        server.stop()

    assert upload["size"] == SIZE
    assert upload["digest"] == f"blake3:{expected}"
    assert file_digest(target) == expected
    for direction, report in (("upload", upload), ("download", download)):
        growth = int(report["peak"]) - int(report["before"])
        assert growth < LIMIT, f"{direction}: peak RSS grew by {growth / MIB:.1f} MiB"
