"""``info`` through the server: one artifact's head, never a search of the namespace's listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from artifactstore_core import ArtifactStore, Message, SchemaInfo
from artifactstore_core.errors import ArtifactCorruptedError, ArtifactNotFoundError
from artifactstore_filesystem import FilesystemSettings, FilesystemStore
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, MakeClient, ServerThread, client_for


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
