"""The core's conformance kit, run unchanged against the filesystem backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from artifactstore_core import ArtifactStore
from artifactstore_core.testing import StoreConformance
from artifactstore_filesystem import FilesystemSettings, FilesystemStore
from artifactstore_filesystem.layout import encode_components


class TestFilesystemConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[str], ArtifactStore]:
        settings = FilesystemSettings(root=tmp_path / "store")
        return lambda namespace: FilesystemStore(settings, namespace=namespace)

    @pytest.fixture
    def make_unreachable_store(self, tmp_path: Path) -> Callable[[str], ArtifactStore]:
        # A file where the namespace's directory belongs (broken state under the root): every operation must
        # fail, never read as an empty store. (A root that is a file fails too, as a ConfigurationError: a
        # setting to fix, see test_filesystem.py.)
        root = tmp_path / "store"
        root.mkdir()
        settings = FilesystemSettings(root=root)

        def make(namespace: str) -> ArtifactStore:
            (root / encode_components(namespace)[0]).write_bytes(b"garbage")
            return FilesystemStore(settings, namespace=namespace)

        return make


class TestFilesystemConformanceWithoutFsync(StoreConformance):
    """The same contract with fsync off (atomicity must not depend on it)."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[str], ArtifactStore]:
        settings = FilesystemSettings(root=tmp_path / "store", fsync=False)
        return lambda namespace: FilesystemStore(settings, namespace=namespace)
