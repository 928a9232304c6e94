"""``info`` through the server: one artifact's head, never its payload nor a search of the namespace's listing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest
from pydantic import SecretStr
from starlette.responses import JSONResponse

from artifactstore_core import ArtifactStore, Codec, Message, SchemaInfo
from artifactstore_core.envelope import PREFIX_SIZE, TAG_SIZE
from artifactstore_core.errors import ArtifactCorruptedError, ArtifactNotFoundError
from artifactstore_filesystem import FilesystemSettings, FilesystemStore
from artifactstore_http.protocol import (
    ERROR_HEADER,
    MEDIA_TYPE_PROBLEM,
    PROBLEM_NOT_FOUND,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    problem_document,
    quote_segment,
)
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, MakeClient, ServerThread, client_for
from artifactstore_memory import MemorySpace, MemoryStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def filesystem_server(tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    """An artifact server backed by a filesystem store under ``tmp_path / "root"``."""
    root = tmp_path / "root"

    def factory(namespace: str) -> ArtifactStore:
        return FilesystemStore(FilesystemSettings(root=root), namespace=namespace)

    server = ServerThread(create_app(factory, token=SecretStr(TOKEN))).start()
    try:
        yield server, root
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_info_reads_the_artifact_not_the_listing(filesystem_server: tuple[ServerThread, Path]) -> None:
    # info() searched the namespace's listing, page after page: its cost grew with the namespace, and a
    # damaged artifact anywhere before the one asked for failed it (and `artifactstore get` and `stat`,
    # which ask info() first) with that other artifact's ArtifactCorruptedError.
    server, root = filesystem_server
    with client_for(server.url, "info") as client:
        client.save("a-damaged", Message(content=b"soon damaged"))
        client.save("b-asked", Message(content=b"intact"))
        (damaged,) = root.rglob("@a-damaged")
        data = bytearray(damaged.read_bytes())
        data[20] ^= 0x01  # inside the header, which the listing reads and verifies
        damaged.write_bytes(bytes(data))
        with pytest.raises(ArtifactCorruptedError):
            list(client.list())
        info = client.info("b-asked")
        assert (info.step_id, info.size) == ("b-asked", len(b"intact"))
        with pytest.raises(ArtifactCorruptedError):
            client.info("a-damaged")
        with pytest.raises(ArtifactNotFoundError):
            client.info("c-missing")


@pytest.mark.timeout(60)
def test_info_is_what_the_listing_says(make_client: MakeClient, filesystem_server: tuple[ServerThread, Path]) -> None:
    messages = {
        "json": Message(content={"k": [1, 2, 3]}, schema=SchemaInfo(name="Rows", version="1")),
        "text": Message(content="é" * 100_000, media_type="text/markdown"),  # compressed when stored
        "bytes": Message(content=b"\x00" * 10, metadata={"run": 7}),
        "id/with %2F and ..": Message(content=b"odd id"),
    }
    filesystem, _ = filesystem_server
    for client in (make_client("info-is-list"), client_for(filesystem.url, "info-is-list")):
        with client:
            client.save_many(messages)
            listed = {info.step_id: info for info in client.list()}
            assert {step_id: client.info(step_id) for step_id in messages} == listed
            client.clear()


@pytest.mark.timeout(60)
def test_info_does_not_read_the_payload(filesystem_server: tuple[ServerThread, Path]) -> None:
    # info() read the head at the start of the artifact's GET, for which the server read, verified and encoded
    # the whole artifact before it sent a byte (256 MB read, and 735 MB more resident, for a 256 MB artifact).
    # The server now answers from its store's info(), which reads the head alone: an artifact whose payload
    # is damaged, and which get() therefore refuses, still has its info.
    server, root = filesystem_server
    content = bytes(range(256)) * 400
    with client_for(server.url, "payload", retries=0) as client:
        client.save("damaged payload", Message(content=content, media_type="application/x-rows"))
        (path,) = root.rglob("@damaged*")
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01  # the payload's last byte; the head is intact
        path.write_bytes(bytes(data))
        with pytest.raises(ArtifactCorruptedError):
            client.get("damaged payload")
        info = client.info("damaged payload")
        assert info.step_id == "damaged payload"
        assert info.size == len(content)
        assert info.digest == f"blake3:{blake3.blake3(content).hexdigest()}"
        assert info.media_type == "application/x-rows"
        assert info.schema_name is None
        with pytest.raises(ArtifactNotFoundError) as missing:
            client.info("never saved")
        assert (missing.value.step_id, missing.value.namespace) == ("never saved", "payload")


# Ids that need encoding, and ids that look like the info sub-resource or a query: each is one artifact of
# its own size, so an info answered for another id shows.
_ODD_IDS = ["info", "x", "x/info", "info/info", "x%2Finfo", "x?view=info", "a/b?c%d#e", "é/🎉 ..", "..", "%"]


@pytest.mark.timeout(60)
def test_info_of_ids_that_need_encoding_or_look_like_its_path(
    make_client: MakeClient, filesystem_server: tuple[ServerThread, Path]
) -> None:
    filesystem, _ = filesystem_server
    messages = {step_id: Message(content=b"v" * (index + 1)) for index, step_id in enumerate(_ODD_IDS)}
    for client in (make_client("odd ids/info"), client_for(filesystem.url, "odd ids/info")):
        with client:
            client.save_many(messages)
            for index, step_id in enumerate(_ODD_IDS):
                info = client.info(step_id)
                assert (info.step_id, info.size) == (step_id, index + 1)
            assert {info.step_id: info for info in client.list()} == {s: client.info(s) for s in _ODD_IDS}
            # The artifact named "info" is read at .../artifacts/info, its info at .../artifacts/info/info.
            base = f"{client._display}/v1/namespaces/{quote_segment('odd ids/info')}/artifacts"
            with httpx.Client(headers=AUTH, timeout=10) as raw:
                envelope = raw.get(f"{base}/info")
                assert envelope.headers["content-type"] == "application/vnd.artifactstore.envelope"
                size = Codec().head_size(envelope.content)
                assert Codec().decode(envelope.content[:size], envelope.content[size:]).content == b"v"
                assert raw.get(f"{base}/info/info").json()["size"] == 1
                assert raw.get(f"{base}/x/info").json()["size"] == 2
                assert raw.get(f"{base}/x%2Finfo/info").json()["size"] == 3
            client.clear()


@pytest.mark.timeout(60)
def test_the_info_answer_is_the_list_item(make_client: MakeClient) -> None:
    client = make_client("info-answer")
    client.save("a/b", Message(content={"k": 1}, schema=SchemaInfo(name="Rows", version="1"), media_type="x/y"))
    base = f"{client._display}/v1/namespaces/info-answer/artifacts"
    with httpx.Client(headers=AUTH, timeout=10) as raw:
        answer = raw.get(f"{base}/a%2Fb/info")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers[PROTOCOL_HEADER] == PROTOCOL_VERSION
        (item,) = raw.get(base).json()["items"]
        assert answer.json() == item
        assert item["step_id"] == "a/b"
        assert item["schema_name"] == "Rows"
        assert item["created_at"].endswith("Z")
        # The usual errors: a problem body typed like every other answer's.
        missing = raw.get(f"{base}/missing/info")
        assert (missing.status_code, missing.headers["artifactstore-error"]) == (404, "ArtifactNotFoundError")
        assert missing.json()["step_id"] == "missing"
        wrong = raw.put(f"{base}/a%2Fb/info", content=b"")
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET, HEAD")
        assert raw.get(f"{base}/a%2Fb/info/more").json()["type"] == "NotFound"
        assert raw.get(f"{base}/%00/info").json()["type"] == "InvalidStepIdError"
        # The document describes this answer as the list item's schema, and the read's 413.
        document = raw.get(f"{client._display}/v1/openapi.json").json()
        operation = document["paths"]["/v1/namespaces/{namespace}/artifacts/{step_id}/info"]["get"]
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ArtifactInfo"}
        assert sorted(document["components"]["schemas"]["ArtifactInfo"]["required"]) == sorted(item)
        assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in operation["responses"]["413"]["description"]
    unauthorized = httpx.get(f"{base}/a%2Fb/info", timeout=10)
    assert unauthorized.status_code == 401
    assert "Rows" not in unauthorized.text


def _with_header_of(size: int) -> Message:
    """A message whose envelope header (as this project's codec writes it, unsigned) is exactly ``size`` bytes."""
    base = Message(content=b"x", metadata={"note": ""})
    short = len(Codec(compress_threshold=None).encode(base).head) - PREFIX_SIZE - TAG_SIZE
    return base.model_copy(update={"metadata": {"note": "m" * (size - short)}})


@pytest.mark.timeout(60)
def test_a_head_over_the_servers_json_limit_gets_413_and_the_client_finds_it_listed(tmp_path: Path) -> None:
    # A head over MAX_JSON_BYTES (written to the backend by something other than the server, which refuses
    # such a save) is not parsed to answer an info, as it is not for a GET; the listing still shows it.
    root = tmp_path / "root"
    with FilesystemStore(FilesystemSettings(root=root), namespace="heads") as direct:
        direct.save("big", _with_header_of(9000))
        direct.save("small", Message(content=b"y"))

    def factory(namespace: str) -> ArtifactStore:
        return FilesystemStore(FilesystemSettings(root=root), namespace=namespace)

    server = ServerThread(create_app(factory, token=SecretStr(TOKEN), max_json_bytes=4096)).start()
    try:
        with httpx.Client(headers=AUTH, timeout=10) as raw:
            answer = raw.get(f"{server.url}/v1/namespaces/heads/artifacts/big/info")
            assert answer.status_code == 413
            problem = json.loads(answer.content)
            assert problem["type"] == "PayloadTooLargeError"
            assert "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES" in problem["detail"]
            assert raw.get(f"{server.url}/v1/namespaces/heads/artifacts/small/info").status_code == 200
        with client_for(server.url, "heads", retries=0) as client:
            listed = {info.step_id: info for info in client.list()}
            assert client.info("big") == listed["big"]
            assert client.info("small") == listed["small"]
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_server_without_the_info_path_is_answered_from_its_listing(make_client: MakeClient) -> None:
    # A server of an earlier version has no .../artifacts/{id}/info: it answers "404 NotFound, no such API path",
    # which the client reported as a BackendError telling to fix ARTIFACT_STORE_HTTP_ENDPOINT (which was right:
    # every other operation worked), so info(), and `artifactstore get` and `stat`, failed on every artifact.
    space = MemorySpace()
    app = create_app(lambda namespace: MemoryStore(namespace=namespace, space=space), token=SecretStr(TOKEN))
    asked: list[bytes] = []

    async def earlier_server(scope: Any, receive: Any, send: Any) -> None:
        # The earlier server's answer to any path it did not route, marked like every answer of it.
        raw = scope.get("raw_path") or b""
        if scope["type"] == "http" and raw.endswith(b"/info"):
            asked.append(raw)
            doc = problem_document(PROBLEM_NOT_FOUND, status=404, title="Not found", detail="no such API path")
            headers = {ERROR_HEADER: PROBLEM_NOT_FOUND, PROTOCOL_HEADER: PROTOCOL_VERSION}
            await JSONResponse(doc, status_code=404, headers=headers, media_type=MEDIA_TYPE_PROBLEM)(
                scope, receive, send
            )
            return
        await app(scope, receive, send)

    server = ServerThread(earlier_server).start()
    try:
        with client_for(server.url, "earlier", retries=0) as store:
            store.save("a/b", Message(content=b"x", media_type="text/x-a"))
            store.save("c", Message(content=b"yy"))
            listed = {info.step_id: info for info in store.list()}
            assert store.info("a/b") == listed["a/b"]
            assert store.info("c") == listed["c"]
            with pytest.raises(ArtifactNotFoundError):
                store.info("missing")
        assert len(asked) == 3  # the info path was asked first each time
    finally:
        server.stop()
    # The server of this version answers the info path itself, and a missing artifact is not the path missing.
    with make_client("earlier-now") as store, pytest.raises(ArtifactNotFoundError):
        store.info("missing")
