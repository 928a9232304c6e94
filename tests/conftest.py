"""Shared fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from artifactstore_core import registry

# No wall-clock deadline per example: on a loaded 2-core machine a slow example is the machine, not a defect
# (test_list_page's sorting test failed that way once under load). Tests that set their own settings keep them.
settings.register_profile("artifactstore", deadline=None)
settings.load_profile("artifactstore")


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
