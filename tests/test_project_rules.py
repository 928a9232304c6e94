"""Rules the whole project keeps: no unsafe deserialisation, the README's code runs, examples work."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(
    # Python's eval/exec are called bare (or through builtins); a client's method such as Redis's
    # `client.eval(script)` runs Lua on the server and is not Python code evaluation.
    r"^\s*(import|from)\s+(pickle|marshal|shelve|dill|cloudpickle)\b|(?<![.\w])(eval|exec)\(|\bbuiltins\.(eval|exec)\b"
    r"|\b(pickle|marshal)\.loads?\(|\b__import__\(",
    re.MULTILINE,
)


def project_code() -> list[Path]:
    """Library code of the core and every plugin (test code may craft hostile pickles to prove they never run)."""
    files = list((ROOT / "artifactstore_core").rglob("*.py"))
    files += [p for p in (ROOT / "plugins").glob("*/src/**/*.py")]
    files += list((ROOT / "tests" / "example_backend" / "src").rglob("*.py"))
    return files


def test_no_pickle_marshal_shelve_dill_eval_exec_in_project_code() -> None:
    files = project_code()
    assert len(files) > 10
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for path in files
        for match in FORBIDDEN.finditer(path.read_text())
    ]
    assert offenders == []


def test_the_rule_itself_catches_offenders() -> None:
    for bad in ("import pickle", "from marshal import loads", "x = eval(s)", "exec(code)", "import dill"):
        assert FORBIDDEN.search(bad), bad
    assert FORBIDDEN.search("getattr(builtins, 'x') or builtins.eval")
    assert not FORBIDDEN.search("evaluate(x)")
    assert not FORBIDDEN.search("client.eval(lua_script, 1, key)")


def test_readme_quickstart_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    namespace: dict[str, object] = {"__name__": "__readme__"}
    with redirect_stdout(out):
        compiled = compile(code, "README.md", "exec")
        # Running documented example code in a test is the point of this test; it is our own README.
        exec(compiled, namespace)
    printed = out.getvalue()
    assert "(1, 2, 3) demo application/json" in printed
    assert "artifacts removed" in printed


# Built from parts so that this file does not match itself.
MACHINE_MARKERS = ("/" + "work/main", "/tmp/" + "venv-", "/" + "root/", str(ROOT))


def test_no_machine_paths_in_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".txt", ".cfg", ".yaml", ".yml"} or name == ".ci/run":
            text = path.read_text(errors="replace")
            if any(marker in text for marker in MACHINE_MARKERS):
                offenders.append(name)
    assert offenders == []


@pytest.mark.timeout(600)
def test_fresh_install_as_the_readme_says(tmp_path: Path) -> None:
    """Acceptance: a fresh virtualenv with only the core installed runs the one-liner with no env vars."""
    venv = tmp_path / "venv"
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    # The README says `pip install artifactstore-core`; from a checkout the same distributions come from
    # their source directories (the core pulls artifactstore-memory in as its dependency).
    subprocess.run(
        ["uv", "pip", "install", "-q", "--python", str(python), str(ROOT / "plugins" / "memory"), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    one_liner = (
        "from artifactstore_core import create_store, Message; s = create_store(); "
        "s.save('a', Message(content={'x': 1})); print(s.get('a'))"
    )
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    result = subprocess.run([str(python), "-c", one_liner], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "content=FrozenDict({'x': 1})" in result.stdout
    # Only the core is installed here: selecting a first-party backend names the exact install command.
    for name in ("redis", "s3", "http", "filesystem"):
        missing = subprocess.run(
            [str(python), "-c", "from artifactstore_core import create_store; create_store()"],
            capture_output=True,
            text=True,
            env={**env, "ARTIFACT_STORE_BACKEND": name},
            cwd=tmp_path,
        )
        assert missing.returncode != 0
        assert f"BackendNotFoundError: no backend named '{name}' is installed" in missing.stderr
        assert f"install it with: pip install artifactstore-{name}" in missing.stderr
