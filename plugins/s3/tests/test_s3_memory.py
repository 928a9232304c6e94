"""A 256 MiB artifact streamed from a file and back to a file, in a client process whose memory is measured.

The moto server runs in its own process (it keeps objects in memory), and each direction runs in a fresh
client process that resets its resident-set high-water mark (``VmHWM``) just before the transfer, so the
peak measured is the transfer's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import blake3
import pytest
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, raw_client

from artifactstore_s3.settings import MIB

SIZE = 256 * MIB
LIMIT = 64 * MIB

CLIENT = textwrap.dedent(
    """
    import json, shutil, sys

    from artifactstore_core import Message
    from artifactstore_core.testing_servers import peak_rss_bytes, reset_peak_rss, rss_bytes
    from artifactstore_s3 import S3Settings, S3Store

    mode, endpoint, bucket, path, access, secret, region = sys.argv[1:]
    settings = S3Settings(
        bucket=bucket, endpoint_url=endpoint, region=region, access_key_id=access, secret_access_key=secret,
        part_size=8 * 1024 * 1024, multipart_threshold=8 * 1024 * 1024, max_concurrency=4,
        read_timeout=300,  # moto assembles 256 MiB in Python when the upload completes: slow on a busy machine
    )
    store = S3Store(settings, namespace="memory")
    store.save("warm-" + mode, Message(content=b"x" * 1024), overwrite=True)  # imports, client, connections
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


def run_client(mode: str, endpoint: str, bucket: str, path: Path) -> dict[str, int | str]:
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, mode, endpoint, bucket, str(path), ACCESS_KEY, SECRET_KEY, REGION],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
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
def test_256_mib_round_trip_through_files_in_bounded_memory(moto_process: str, tmp_path: Path) -> None:
    bucket = f"memory-{uuid.uuid4().hex[:20]}"
    raw_client(moto_process).create_bucket(Bucket=bucket)
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    block = os.urandom(MIB)
    with source.open("wb") as handle:
        for index in range(SIZE // MIB):
            handle.write(index.to_bytes(8, "big") + block[8:])  # every MiB distinct
    expected = file_digest(source)

    upload = run_client("upload", moto_process, bucket, source)
    download = run_client("download", moto_process, bucket, target)

    assert upload["size"] == SIZE
    assert upload["digest"] == f"blake3:{expected}"
    assert file_digest(target) == expected
    for direction, report in (("upload", upload), ("download", download)):
        growth = int(report["peak"]) - int(report["before"])
        assert growth < LIMIT, f"{direction}: peak RSS grew by {growth / MIB:.1f} MiB"
