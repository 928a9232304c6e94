"""Fixtures shared by the filesystem backend's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from artifactstore_filesystem import FilesystemSettings, FilesystemStore

MakeFsStore = Callable[..., FilesystemStore]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A store root inside a private directory, so a test can check nothing appeared beside it."""
    return tmp_path / "inner" / "root"


@pytest.fixture
def make_fs_store(root: Path) -> Iterator[MakeFsStore]:
    """Build filesystem stores on ``root`` (settings overridable); closes them after the test."""
    made: list[FilesystemStore] = []

    def build(namespace: str = "default", **settings: object) -> FilesystemStore:
        options: dict[str, object] = {"root": root, **settings}
        store = FilesystemStore(FilesystemSettings(**options), namespace=namespace)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()
