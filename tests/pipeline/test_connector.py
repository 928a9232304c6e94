"""ArtifactConnector: lazy, cached reads of one upstream artifact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from artifactstore_core import ArtifactNotFoundError, InvalidStepIdError, Message, SchemaMismatchError
from artifactstore_core.pipeline import ArtifactConnector
from artifactstore_memory import MemorySpace, MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts backend reads."""

    reads = 0

    def _get(self, step_id: str) -> Message:
        self.reads += 1
        return super()._get(step_id)


class Point(BaseModel):
    x: int


class Other(BaseModel):
    x: int


@pytest.fixture
def store() -> Iterator[CountingStore]:
    store = CountingStore(namespace="connector", space=MemorySpace())
    yield store
    store.close()


def test_reads_lazily_and_once(store: CountingStore) -> None:
    store.save("p", Message.from_model(Point(x=3)))
    connector = ArtifactConnector(store, "p")
    assert store.reads == 0
    assert connector.exists()
    assert connector.content == {"x": 3}
    assert connector.get() is connector.get()
    assert connector.model(Point) == Point(x=3)
    assert store.reads == 1
    assert connector.step_id == "p"
    assert "read" in repr(connector)


def test_model_checks_the_schema(store: CountingStore) -> None:
    store.save("p", Message.from_model(Point(x=3)))
    with pytest.raises(SchemaMismatchError):
        ArtifactConnector(store, "p").model(Other)
    assert ArtifactConnector(store, "p").model(Other, check_name=False) == Other(x=3)


def test_missing_artifact(store: CountingStore) -> None:
    connector = ArtifactConnector(store, "nothing")
    assert not connector.exists()
    with pytest.raises(ArtifactNotFoundError, match="nothing"):
        connector.get()


def test_invalid_step_id(store: CountingStore) -> None:
    with pytest.raises(InvalidStepIdError):
        ArtifactConnector(store, "")
