"""Each payload is hashed once per verification on its way through the server, never again to re-encode it."""

from __future__ import annotations

import pytest

from artifactstore_core import Message, envelope
from artifactstore_http.testing import ServerThread, client_for

# Sizes no other payload of these tests has, so that the counts are of this payload alone.
BYTES = b"\x01" * 200_003
TEXT = "".join(f"é{i} " for i in range(20_000))  # stored compressed; hashed uncompressed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("content", [BYTES, TEXT], ids=["bytes", "text"])
def test_a_save_and_a_get_through_a_redis_backed_server_hash_the_payload_twice_each(
    redis_server: ServerThread, monkeypatch: pytest.MonkeyPatch, content: bytes | str
) -> None:
    size = len(content.encode() if isinstance(content, str) else content)
    hashed: list[int] = []
    real = envelope._digest

    def counting(data: bytes | memoryview) -> str:
        if len(data) == size:
            hashed.append(size)
        return real(data)

    # The server runs in this process (uvicorn in a thread), so the count includes its hashing.
    monkeypatch.setattr(envelope, "_digest", counting)
    with client_for(redis_server.url, "hashing") as client:
        client.save(f"once-{type(content).__name__}", Message(content=content), overwrite=True)
        # The client encodes it, the server verifies it; the backend reuses that digest.
        assert len(hashed) == 2
        hashed.clear()
        assert client.get(f"once-{type(content).__name__}").content == content
        # The backend verifies what it reads, the client verifies what it receives; the server's encoding
        # for the client reuses the backend's digest.
        assert len(hashed) == 2
