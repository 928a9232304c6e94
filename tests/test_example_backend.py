"""The third-party proof: a backend outside plugins/, installed into the test environment, found by its
entry point, selected by name through ARTIFACT_STORE_BACKEND, passing the whole conformance kit."""

from __future__ import annotations

from importlib import metadata

import pytest

from artifactstore_core import Message, create_store
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
