"""Skips on CI: only a backend's undeclared capability may skip, and what each backend declares is pinned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifactstore_core import registry
from artifactstore_core.models import Capabilities
from artifactstore_core.testing_skips import CAPABILITY_SKIP

# What each first-party backend declares. The conformance kit skips the tests of an undeclared capability,
# so a capability dropped by mistake would turn real tests into skips; pinned here, it fails instead.
DECLARED = {
    "memory": Capabilities(atomic_create=True, list_namespaces=True),
    "filesystem": Capabilities(
        cross_process=True, persistent=True, atomic_create=True, streaming=True, list_namespaces=True
    ),
    "redis": Capabilities(
        cross_process=True,
        persistent=True,
        native_ttl=True,
        atomic_create=True,
        list_namespaces=True,
        max_artifact_bytes=512 * 1024 * 1024,
    ),
    "s3": Capabilities(cross_process=True, persistent=True, atomic_create=True, streaming=True, list_namespaces=True),
    "http": Capabilities(cross_process=True, atomic_create=True, streaming=True),
}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_first_party_capabilities_are_pinned(name: str) -> None:
    assert registry.plugin_host().load(name).capabilities == DECLARED[name]


def _run(tmp_path: Path, body: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(f"import pytest\n\n\ndef test_sample():\n    {body}\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "artifactstore_core.testing_skips", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.timeout(300)
def test_a_skip_fails_on_ci_unless_it_is_an_undeclared_capability(tmp_path: Path) -> None:
    plain = 'pytest.skip("redis-server not found")'
    capability = f"pytest.skip(\"{CAPABILITY_SKIP} backend 'x' does not declare native_ttl\")"
    failed = _run(tmp_path, plain, ci="true")
    assert failed.returncode == 1, failed.stdout
    assert "skipped on CI (redis-server not found)" in failed.stdout
    assert _run(tmp_path, plain, ci=None).returncode == 0  # locally a skip stays a skip
    assert _run(tmp_path, plain, ci="false").returncode == 0
    allowed = _run(tmp_path, capability, ci="true")
    assert allowed.returncode == 0, allowed.stdout
    assert "1 skipped" in allowed.stdout
    marked = _run(
        tmp_path, "pass\n\n\n@pytest.mark.skipif(True, reason='needs POSIX')\ndef test_marked():\n    pass", "1"
    )
    assert marked.returncode == 1, marked.stdout
    assert "skipped on CI (needs POSIX)" in marked.stdout


@pytest.mark.timeout(300)
def test_a_module_skipped_while_collected_fails_on_ci(tmp_path: Path) -> None:
    # A missing client library skips a whole module before any test runs: that must not pass either.
    for body in (
        'pass\n\n\npytest.importorskip("no_such_client_library")',
        'pass\n\n\npytest.skip("no redis-server", allow_module_level=True)',
    ):
        failed = _run(tmp_path, body, ci="true")
        assert failed.returncode != 0, failed.stdout
        assert "skipped on CI (" in failed.stdout
        local = _run(tmp_path, body, ci=None)
        assert "1 skipped" in local.stdout, local.stdout  # locally the module stays skipped


def test_the_skip_guard_is_loaded_in_every_run_of_this_project(request: pytest.FixtureRequest) -> None:
    # Loaded by the pytest addopts in pyproject.toml, which every nox test session runs under; if that
    # line went, skips would pass on CI again without anything failing.
    assert request.config.pluginmanager.has_plugin("artifactstore_core.testing_skips")
