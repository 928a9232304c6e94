"""What a developer sees when the conformance kit fails their backend: the values that differed.

The kit is a module of the installed core, not a test module, so pytest rewrites its asserts only if it is
told to before the kit is imported; otherwise a failing ``assert store.clear() == 1`` reports a bare
``AssertionError`` with nothing to say what the store returned.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BROKEN_BACKEND_TESTS = '''
import pytest

from artifactstore_core.testing import StoreConformance
from artifactstore_example import ExampleStore


class UncountedClear(ExampleStore):
    """Clears, but reports no artifacts removed."""

    def _clear(self):
        super()._clear()
        return 0


class TestUncountedClear(StoreConformance):
    @pytest.fixture
    def make_store(self):
        return lambda namespace: UncountedClear(namespace=namespace)
'''


@pytest.mark.timeout(300)
def test_a_failing_kit_assert_shows_the_values_that_differed(tmp_path: Path) -> None:
    (tmp_path / "test_broken_backend.py").write_text(BROKEN_BACKEND_TESTS)
    test = "test_broken_backend.py::TestUncountedClear::test_clear_and_list_keep_to_their_namespace_whatever_its_name"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c",
         os.devnull, f"{tmp_path / test}[Ns-ns]"],
        capture_output=True, text=True, timeout=240, check=False, env={**os.environ, "CI": ""},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    # The store's clear() returned 0 where the kit expected 1: the report says so.
    assert "assert 0 == 1" in done.stdout, done.stdout


MISTAKEN_FIXTURES = """
import pytest

from artifactstore_core.testing import StoreConformance
from artifactstore_example import ExampleStore


class TestStoreInsteadOfCallable(StoreConformance):
    @pytest.fixture
    def make_store(self):
        return ExampleStore(namespace="mistake-one")


class TestNamespaceIgnored(StoreConformance):
    @pytest.fixture
    def make_store(self):
        return lambda namespace: ExampleStore(namespace="mistake-two")
"""


@pytest.mark.timeout(300)
def test_a_make_store_fixture_built_wrong_is_named_as_the_mistake(tmp_path: Path) -> None:
    # Two common slips in the one fixture a backend writes: returning a store, and ignoring the namespace.
    (tmp_path / "test_mistaken_fixtures.py").write_text(MISTAKEN_FIXTURES)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c",
         os.devnull, "-k", "test_info", str(tmp_path / "test_mistaken_fixtures.py")],
        capture_output=True, text=True, timeout=240, check=False, env={**os.environ, "CI": ""},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "make_store returned ExampleStore, not a callable" in done.stdout, done.stdout
    assert "built a store of namespace 'mistake-two'" in done.stdout, done.stdout


LEAKY_BACKEND_TESTS = """
import pytest

from artifactstore_core.testing import StoreConformance
from artifactstore_example import ExampleStore

TOKEN = "canary-token-5b7e2d"


class LeakyRepr(ExampleStore):
    def __repr__(self):
        return f"<LeakyRepr token={TOKEN}>"


class LeakyNotFound(ExampleStore):
    def _not_found(self, step_id):
        error = super()._not_found(step_id)
        error.add_note(f"asked with token {TOKEN}")
        return error


class TestLeakyRepr(StoreConformance):
    @pytest.fixture
    def make_store(self):
        return lambda namespace: LeakyRepr(namespace=namespace)

    @pytest.fixture
    def secret_values(self):
        return (TOKEN,)


class TestLeakyNotFound(TestLeakyRepr):
    @pytest.fixture
    def make_store(self):
        return lambda namespace: LeakyNotFound(namespace=namespace)
"""


@pytest.mark.timeout(300)
def test_a_secret_the_kit_finds_is_not_printed_in_its_report(tmp_path: Path) -> None:
    # The report of a failing test goes to CI logs: it says where the secret showed, masked, and shows neither
    # the secret_values fixture's value (pytest prints a failing test's arguments) nor the error that held it
    # (pytest prints the exception a failure was raised while handling).
    (tmp_path / "test_leaky_backend.py").write_text(LEAKY_BACKEND_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--tb=long", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, "-k", "test_errors_and_reprs_show_no_secret", str(tmp_path / "test_leaky_backend.py")],
        capture_output=True, text=True, timeout=240, check=False, env={**os.environ, "CI": ""},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "repr(store) shows a secret the store is configured with" in done.stdout, done.stdout
    assert "the error of get of a missing id shows a secret" in done.stdout, done.stdout
    assert "canary-token-5b7e2d" not in done.stdout + done.stderr, done.stdout
