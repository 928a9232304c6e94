"""The package's lazy names (PEP 562 ``__getattr__`` in ``artifactstore_core/__init__.py``): each public name,
the submodules that importing the package used to import, unknown names, and what type checkers see."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


def test_the_entry_point_imports_no_other_module() -> None:
    # The console script imports artifactstore_core.cli_main, and with it the package, before cli_main.main
    # can turn Ctrl-C into `aborted`: a module imported there (typing, 13 ms) was a window for a traceback.
    out = run_fresh(
        """
        import sys
        before = set(sys.modules)
        import artifactstore_core.cli_main
        print(sorted(set(sys.modules) - before))
        """
    )
    assert out.strip() == "['artifactstore_core', 'artifactstore_core.cli_main']"


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


def test_type_checkers_do_not_see_the_module_getattr() -> None:
    # A module-level __getattr__ that mypy sees types every unknown name as Any: `from artifactstore_core
    # import Typo` passed the type check and failed only when run. Checked on the source (mypy is not in
    # the test environment): __getattr__ is defined only under `if not TYPE_CHECKING:`.
    tree = ast.parse(Path(artifactstore_core.__file__).read_text(encoding="utf-8"))
    unguarded = [node.lineno for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"]
    assert unguarded == [], f"__getattr__ visible to type checkers at line {unguarded}"
    guarded = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and ast.unparse(node.test) == "not TYPE_CHECKING"
        and any(isinstance(inner, ast.FunctionDef) and inner.name == "__getattr__" for inner in node.body)
    ]
    assert len(guarded) == 1


def test_the_three_lists_of_public_names_agree() -> None:
    # Each public name is written three times: imported under TYPE_CHECKING (what type checkers and IDEs
    # see), mapped to its module in _MODULE_OF (what runs) and listed in __all__. A name added to one only
    # type-checks but fails when run, or runs but is Any to type checkers and missing from `import *`.
    tree = ast.parse(Path(artifactstore_core.__file__).read_text(encoding="utf-8"))
    typed: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom) and inner.level == 1 and inner.module is not None:
                    typed.update((alias.name, inner.module) for alias in inner.names)
    mapped = artifactstore_core._MODULE_OF
    assert typed == mapped
    assert sorted(mapped) == sorted(artifactstore_core.__all__)
