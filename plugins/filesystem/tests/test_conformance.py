"""The core's conformance kit, run unchanged against the filesystem backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from artifactstore_core import ArtifactStore
from artifactstore_core.testing import StoreConformance
from artifactstore_filesystem import FilesystemSettings, FilesystemStore


class TestFilesystemConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[str], ArtifactStore]:
        settings = FilesystemSettings(root=tmp_path / "store")
        return lambda namespace: FilesystemStore(settings, namespace=namespace)


class TestFilesystemConformanceWithoutFsync(StoreConformance):
    """The same contract with fsync off (atomicity must not depend on it)."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[str], ArtifactStore]:
        settings = FilesystemSettings(root=tmp_path / "store", fsync=False)
        return lambda namespace: FilesystemStore(settings, namespace=namespace)
