"""The package's lazy names (PEP 562 ``__getattr__`` in ``artifactstore_core/__init__.py``): each public name,
the submodules that importing the package used to import, unknown names, and what type checkers see."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

import artifactstore_core

pytestmark = pytest.mark.timeout(120)


def run_fresh(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing of the package imported yet); return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_public_name_resolves_and_star_import_gets_them_all() -> None:
    out = run_fresh(
        """
        import sys
        import artifactstore_core
        assert "pydantic" not in sys.modules, "importing the package imported its modules"
        namespace = {}
        exec("from artifactstore_core import *", namespace)
        missing = sorted(set(artifactstore_core.__all__) - set(namespace))
        print(missing)
        """
    )
    assert out.strip() == "[]"
    for name in artifactstore_core.__all__:
        value = getattr(artifactstore_core, name)
        assert getattr(value, "__name__", name) == name  # hookimpl, a marker object, has no __name__
        assert name in dir(artifactstore_core)


def test_submodules_are_attributes_after_a_bare_import() -> None:
    # Importing the package used to import errors, store, ... so `artifactstore_core.errors.X` worked after
    # a bare `import artifactstore_core`; third-party backends and scripts read names that way.
    out = run_fresh(
        """
        import artifactstore_core
        print(artifactstore_core.errors.ArtifactNotFoundError.__name__, artifactstore_core.store.MAX_TTL > 0)
        """
    )
    assert out.split() == ["ArtifactNotFoundError", "True"]


@pytest.mark.parametrize("name", ["no_such_name", "_private_nothing", "__wrapped__"])
def test_an_unknown_name_is_the_usual_attribute_error(name: str) -> None:
    with pytest.raises(AttributeError, match=rf"^module 'artifactstore_core' has no attribute '{name}'$") as info:
        getattr(artifactstore_core, name)
    assert info.value.__context__ is None  # no ModuleNotFoundError chained to it
    assert not hasattr(artifactstore_core, name)


def test_type_checkers_report_an_unknown_name(tmp_path: Path) -> None:
    # A module-level __getattr__ that mypy sees types every unknown name as Any: `from artifactstore_core
    # import Typo` passed the type check and failed only when run.
    source = tmp_path / "uses.py"
    source.write_text("from artifactstore_core import ArtifactStore, Typo\n")
    out, _, status = mypy_api.run(["--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)])
    assert status == 1, out
    assert 'Module "artifactstore_core" has no attribute "Typo"' in out
    assert "ArtifactStore" not in out
