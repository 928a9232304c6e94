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

    @pytest.fixture
    def make_unreachable_store(self, tmp_path: Path) -> Callable[[str], ArtifactStore]:
        # A root that is a regular file (a mistyped path, a mount point replaced by a file): every operation
        # must fail, never read as an empty store.
        root = tmp_path / "not-a-directory"
        root.write_bytes(b"garbage")
        settings = FilesystemSettings(root=root)
        return lambda namespace: FilesystemStore(settings, namespace=namespace)


class TestFilesystemConformanceWithoutFsync(StoreConformance):
    """The same contract with fsync off (atomicity must not depend on it)."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[str], ArtifactStore]:
        settings = FilesystemSettings(root=tmp_path / "store", fsync=False)
        return lambda namespace: FilesystemStore(settings, namespace=namespace)
