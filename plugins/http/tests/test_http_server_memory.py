"""A 256 MiB artifact uploaded to and downloaded from a filesystem-backed artifact server in its own process, whose
peak resident memory is measured by the server process itself.

The server runs under uvicorn in a subprocess; a small ASGI wrapper (in that process only, not part of the
product) answers ``/_memory/reset`` by resetting the process's resident-set high-water mark (``VmHWM``, through
``/proc/self/clear_refs``) and ``/_memory/peak`` with it and the current ``VmRSS``, so that each transfer's own
peak is measured. The test client streams the body from a file and the answer to a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import blake3
import httpx
import pytest

from artifactstore_core import Message
from artifactstore_core.envelope import Codec
from artifactstore_core.testing_servers import wait_for
from artifactstore_http.protocol import MEDIA_TYPE_ENVELOPE
from artifactstore_http.testing import TOKEN, bound_socket

MIB = 1024 * 1024
SIZE = 256 * MIB
LIMIT = 64 * MIB
AUTH = {"Authorization": f"Bearer {TOKEN}"}

SERVER = textwrap.dedent(
    """
    import json, sys

    import uvicorn
    from pydantic import SecretStr

    from artifactstore_core.testing_servers import peak_rss_bytes, reset_peak_rss, rss_bytes
    from artifactstore_filesystem import FilesystemSettings, FilesystemStore
    from artifactstore_http.server import create_app

    fd, root, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    exact = True  # VmHWM, since the start until /_memory/reset resets it

    app = create_app(
        lambda namespace: FilesystemStore(FilesystemSettings(root=root), namespace=namespace),
        token=SecretStr(token),
        max_body_bytes=1024 * 1024 * 1024,
    )

    async def measured(scope, receive, send):
        global exact
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path in ("/_memory/reset", "/_memory/peak"):
            if path == "/_memory/reset":
                exact = reset_peak_rss()
            body = json.dumps({"rss": rss_bytes(), "peak": peak_rss_bytes(exact), "exact": exact}).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    uvicorn.run(measured, fd=fd, http="h11", ws="none", lifespan="on", log_level="warning", access_log=False)
    """
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    sock = bound_socket()
    port = int(sock.getsockname()[1])
    fd = sock.fileno()
    log = (tmp_path / "server.log").open("wb")
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(fd), str(tmp_path / "root"), TOKEN],
        pass_fds=(fd,),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    sock.close()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {(tmp_path / 'server.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/v1/health", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, "the artifact server to start", timeout=60)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def memory(url: str, what: str) -> dict[str, int]:
    report: dict[str, int] = httpx.get(f"{url}/_memory/{what}", timeout=10, trust_env=False).json()
    return report


@pytest.mark.timeout(900)
def test_256_mib_through_a_filesystem_server_in_bounded_server_memory(server: str, tmp_path: Path) -> None:
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    block = os.urandom(MIB)
    hasher = blake3.blake3()
    with source.open("wb") as handle:
        for index in range(SIZE // MIB):
            chunk = index.to_bytes(8, "big") + block[8:]  # every MiB distinct
            hasher.update(chunk)
            handle.write(chunk)
    digest = hasher.hexdigest()
    head, _ = Codec().encode_head(
        codec="bytes", media_type="application/octet-stream", schema=None, metadata={}, created_at=datetime.now(UTC),
        size=SIZE, digest=digest, place=("memory", "big"),
    )  # fmt: skip
    url = f"{server}/v1/namespaces/memory/artifacts/big"
    warm = Codec().encode(Message(content=b"x" * 1024), place=("memory", "warm"))
    with httpx.Client(timeout=300, trust_env=False, headers=AUTH) as client:
        # Warm up: imports, the namespace's store, a save and a read.
        client.put(f"{server}/v1/namespaces/memory/artifacts/warm", content=warm.head + warm.payload).raise_for_status()
        client.get(f"{server}/v1/namespaces/memory/artifacts/warm").raise_for_status()

        def body() -> Iterator[bytes]:
            yield head
            with source.open("rb") as handle:
                while piece := handle.read(MIB):
                    yield piece

        before = memory(server, "reset")
        response = client.put(
            url,
            content=body(),
            headers={"Content-Type": MEDIA_TYPE_ENVELOPE, "Content-Length": str(len(head) + SIZE)},
        )
        assert response.status_code == 204, response.text
        upload = memory(server, "peak")

        before_download = memory(server, "reset")
        received = blake3.blake3()
        with client.stream("GET", url) as answer, target.open("wb") as out:
            assert answer.status_code == 200
            assert int(answer.headers["content-length"]) == len(head) + SIZE
            first = True
            for piece in answer.iter_bytes(MIB):
                if first:
                    size = Codec.head_size(piece[:9])
                    piece = piece[size:]
                    first = False
                received.update(piece)
                out.write(piece)
        download = memory(server, "peak")
    assert received.hexdigest() == digest
    assert target.stat().st_size == SIZE
    report = {
        "upload": upload["peak"] - before["rss"],
        "download": download["peak"] - before_download["rss"],
    }
    shown = json.dumps({key: f"{value / MIB:.1f} MiB" for key, value in report.items()})
    print(f"server peak RSS growth: {shown}")
    assert max(report.values()) < LIMIT, f"the server's peak RSS grew by {shown}"
