"""Every developer task is a nox session; CI runs the default ones (`uv run nox`).

Each session gets its own virtualenv, filled from the committed lock file with `uv sync --frozen`, so a
plugin's tests run with exactly that plugin's dependencies and cannot lean on another plugin's.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "plugin_tests", "lint", "typing", "docs"]

ROOT = Path(__file__).parent
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())


def sync(session: nox.Session, *args: str) -> None:
    """Install from the lock file into this session's virtualenv, with every installed module compiled.

    --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (as on our CI machines) Python never caches a
    module it compiles, so every process the tests start (each console-script call, spawned pipeline worker,
    docs example, server) compiled pydantic, boto3, moto... from source again: about 2 s of CPU each. Compiled
    once at install (a no-op on a reused environment), they are only read; the tests run the same code.
    """
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--no-default-groups",
        "--compile-bytecode",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The core's tests, the conformance kit on the third-party example, and the pipeline runtime."""
    sync(session, "--group", "test")
    session.run("pytest", "tests", *session.posargs)


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugin_tests(session: nox.Session, plugin: str) -> None:
    """One plugin's tests, in an environment holding only that plugin and its own dependencies."""
    sync(session, "--package", f"artifactstore-{plugin}", "--group", "test")
    session.run("pytest", f"plugins/{plugin}/tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and bandit (medium severity and up) on the library code."""
    sync(session, "--only-group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    bandit(session)


def bandit(session: nox.Session) -> None:
    """bandit on the library code of the core and every plugin (tests may do what library code must not)."""
    session.run(
        "bandit", "-q", "-r", "artifactstore_core", *(f"plugins/{name}/src" for name in PLUGINS),
        "--severity-level", "medium", "--confidence-level", "low",
    )  # fmt: skip


@nox.session
def typing(session: nox.Session) -> None:
    """mypy, strict, on the core and every plugin's library code."""
    sync(session, "--all-packages", "--group", "typing", "--group", "test")
    session.run("mypy", "artifactstore_core", *(f"plugins/{name}/src" for name in PLUGINS))


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: the example pipeline on the default embedded backend."""
    sync(session, "--all-packages")
    session.run("artifactstore", "demo")


@nox.session
def bench(session: nox.Session) -> None:
    """Every backend beside its raw client, in one run: a table of medians and ratios, and JSON."""
    sync(session, "--all-packages", "--group", "bench")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site with warnings as errors (into docs/_build/html).

    Its tests (the examples in the pages run; every hook, error class and setting is documented) are in
    tests/test_docs.py and run with the `tests` session.
    """
    # The test group too: the API reference imports the conformance kit (pytest) and the http server.
    sync(session, "--all-packages", "--group", "docs", "--group", "test")
    # -E: read every page again, so that a warning is reported on every build, not only when its page changed.
    # -n: every cross-reference must resolve (docs/conf.py lists the few exempt targets and why).
    session.run("sphinx-build", "-n", "-W", "--keep-going", "-E", "-q", "-b", "html", "docs", "docs/_build/html")


# -- reliability and security (tests/reliability, docs/reliability.md) ----------------------------------
# The bounded suite runs in `tests`; these sessions run its long variants and the audits.


@nox.session
def reliability_long(session: nox.Session) -> None:
    """The reliability suite at full size: 16 threads x 2,000 operations per backend, longer fault runs,
    every bit of every stored envelope flipped on every backend, and the long Hypothesis profile."""
    sync(session, "--group", "test")
    env = {
        "RELIABILITY_OPS": "2000",
        "RELIABILITY_CHAOS_OPS": "300",
        "RELIABILITY_BIT_STRIDE": "1",
        "RELIABILITY_HYPOTHESIS_PROFILE": "reliability-long",
    }
    session.run("pytest", "tests/reliability", *session.posargs, env=env)


@nox.session
def fuzz(session: nox.Session) -> None:
    """atheris (coverage-guided) on the envelope decoder for FUZZ_SECONDS seconds (default 60).

    A crash leaves its input in the session's tmp directory (fuzz-crashes/); replay it with
    `python tests/reliability/fuzz_decoder.py <file>`.
    """
    import os

    sync(session, "--group", "reliability")
    tmp = Path(session.create_tmp())
    crashes = tmp / "fuzz-crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    session.run(
        "python",
        "tests/reliability/fuzz_decoder.py",
        "--allow-known",
        f"-max_total_time={os.environ.get('FUZZ_SECONDS', '60')}",
        "-dict=tests/reliability/fuzz_decoder.dict",
        f"-artifact_prefix={crashes}/",
        str(tmp / "fuzz-corpus"),
        *session.posargs,
    )


@nox.session
def audit(session: nox.Session) -> None:
    """Security audits: bandit (as in lint) and pip-audit on every locked third-party dependency.

    pip-audit needs the package index's JSON API (or OSV); it is not a default session because CI machines
    here reach only the index's simple API, where it can check nothing (and --strict then fails it).
    """
    sync(session, "--only-group", "audit")
    bandit(session)
    requirements = Path(session.create_tmp()) / "locked-requirements.txt"
    session.run_install(
        "uv", "export", "--frozen", "--all-packages", "--all-groups", "--no-emit-workspace", "--no-hashes",
        "--quiet", "--output-file", str(requirements),
    )  # fmt: skip
    # --strict: a dependency the vulnerability service does not know fails the audit instead of being skipped,
    # so an audit that could check nothing (no access to the index's JSON API) never passes.
    session.run(
        "pip-audit", "--requirement", str(requirements), "--no-deps", "--disable-pip", "--strict",
        "--progress-spinner", "off",
    )  # fmt: skip
