"""The third-party proof: a backend outside plugins/, installed into the test environment, found by its
entry point, selected by name through ARTIFACT_STORE_BACKEND, passing the whole conformance kit."""

from __future__ import annotations

import io
from importlib import metadata
from typing import IO, cast

import pytest

from artifactstore_core import Message, SerializationError, create_store
from artifactstore_core.registry import ENTRY_POINT_GROUP, plugin_host
from artifactstore_core.testing import StoreConformance


class TestExampleBackendConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, monkeypatch: pytest.MonkeyPatch) -> object:
        monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "example")
        return lambda namespace: create_store(namespace=namespace)


def test_discovered_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "example"]
    assert len(eps) == 1
    assert eps[0].dist is not None
    assert eps[0].dist.metadata["Name"] == "artifactstore-example"
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "example")
    with create_store(namespace="proof") as store:
        assert type(store).__module__ == "artifactstore_example"
        store.save("a", Message(content=b"bytes"))
        assert store.get("a").content == b"bytes"
        store.clear()
    info = {b.name: b for b in plugin_host().backends()}["example"]
    assert info.status == "loaded"
    assert info.distribution == "artifactstore-example"
    assert info.version == "0.1.0"


def test_backend_settings_come_from_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    from artifactstore_example import ExampleSettings

    monkeypatch.setenv("ARTIFACT_STORE_EXAMPLE_GREETING", "hi")
    assert ExampleSettings().greeting == "hi"


def test_save_stream_refuses_a_non_blocking_stream_on_a_backend_that_does_not_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The core reads the stream whole for such backends; read() returning None must not be stored as null.
    class NothingReady(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> None:
            return None

    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "example")
    with create_store(namespace="non-blocking") as store:
        assert not store.capabilities.streaming
        with pytest.raises(SerializationError, match="blocking stream"):
            store.save_stream("s", cast(IO[bytes], NothingReady()))
        assert not store.exists("s")
