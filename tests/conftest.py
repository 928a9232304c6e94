"""Shared fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from artifactstore_core import registry


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test starts without artifactstore env vars, in a directory without config files."""
    import os

    for name in list(os.environ):
        if name.startswith("ARTIFACT_STORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    registry.reset_plugin_host()
    yield
    registry.reset_plugin_host()
