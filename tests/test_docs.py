"""The documentation tells the truth: its examples run, and everything the code offers is documented.

- Every ``python`` code block of ``docs/*.md`` runs, page by page, in a fresh interpreter, against real
  services where a block says so (the conventions are in ``docs/README.md``); outputs the docs show are
  the outputs the code prints.
- The quickstart runs unchanged in a fresh virtualenv installed as it says, then on Redis by one
  environment variable.
- Meta-tests: every hook, every public error class and every setting is documented, with what the code
  says (retryable flags, parents, defaults, exit codes); removing a setting's description or an error
  class's entry fails a test (shown on mutated copies).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import artifactstore_core
import artifactstore_core.pipeline
from artifactstore_core import ArtifactStoreError, BackendSettings, CoreSettings, hookspecs
from artifactstore_core.cli import EXIT_CODES
from artifactstore_core.registry import KNOWN_BACKENDS, plugin_host

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import artifactstore_docs  # noqa: E402  (the docs' own extension, which builds the generated references)
from artifactstore_docs import SECTIONS, MissingDescriptionError, Section  # noqa: E402

PAGES = sorted(path for path in DOCS.rglob("*.md") if "_build" not in path.parts and path.name != "README.md")
PYTHON = {"python", "py"}
SERVICES = ("filesystem", "redis", "http", "s3")


# -- reading the pages --------------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<body>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page, with the ``docs-test`` marker on the line before it, if any."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page (fences at the start of a line, as in our pages)."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines):
            closing = lines[index].strip()
            if closing and set(closing) == {fence[0]} and len(closing) >= len(fence):
                break
            body.append(lines[index])
            index += 1
        index += 1
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        found.append(
            Block(page, start + 1, info.split()[0] if info else "", "\n".join(body) + "\n", marker and marker["body"])
        )
    return found


def parse_marker(marker: str | None) -> tuple[str, str]:
    """``(kind, argument)`` of a marker: ``("run", "")``, ``("skip", reason)``, ``("requires", service)``,
    ``("output", "")``.

    Raises:
        ValueError: the marker is not one of the documented forms.
    """
    if marker is None:
        return ("run", "")
    kind, _, argument = marker.partition(":")
    kind, argument = kind.strip(), argument.strip()
    if kind == "skip" and argument:
        return ("skip", argument)
    if kind == "requires" and argument in SERVICES:
        return ("requires", argument)
    if kind == "output" and not argument:
        return ("output", "")
    raise ValueError(
        f"unknown docs-test marker {marker!r}: use 'skip: <reason>', 'requires: <{'|'.join(SERVICES)}>' or 'output'"
    )


def output_matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` matches ``expected``, where ``...`` stands for anything: a line of its own for
    any number of lines, inside a line for any text."""
    pattern = []
    for line in expected.strip("\n").splitlines():
        if line.strip() == "...":
            pattern.append(r"(?:.*\n)*?")
        else:
            pattern.append(".*".join(re.escape(part) for part in line.rstrip().split("...")) + r"[ \t]*\n")
    return re.fullmatch("".join(pattern), actual.rstrip("\n") + "\n") is not None


# The README's quickstart is the first code a newcomer runs: it is run like a page's.
PAGES_WITH_CODE = [page for page in [*PAGES, ROOT / "README.md"] if any(block.lang in PYTHON for block in blocks(page))]


# -- services the blocks may require ------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, stopped at the end of the module."""
    from artifactstore_redis.testing import running

    with running(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="module")
def http_server() -> Iterator[tuple[str, str]]:
    """Our artifact server under uvicorn on loopback, serving memory stores: ``(url, token)``."""
    from artifactstore_http.server import create_app
    from artifactstore_http.testing import TOKEN, ServerThread
    from artifactstore_memory import MemorySpace, MemoryStore

    space = MemorySpace()
    app = create_app(lambda namespace: MemoryStore(namespace=namespace, space=space), token=SecretStr(TOKEN))
    server = ServerThread(app).start()
    try:
        yield server.url, TOKEN
    finally:
        server.stop()


#: The bucket the S3 page's shell lines name.
S3_BUCKET = "my-pipeline-artifacts"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP on loopback, holding the page's bucket; stopped at the end."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ModuleNotFoundError as exc:  # the test group installs every backend: a gap is a broken environment
        pytest.fail(f"{exc.name} is not installed; install the test group (`nox -s tests` has every backend)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="docs", aws_secret_access_key="docs"
        )
        client.create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        server.stop()


def service_env(service: str, request: pytest.FixtureRequest, workdir: Path) -> dict[str, str]:
    """The environment a block marked ``requires: <service>`` runs in: the backend selected by one
    variable, as the page's own shell lines select it, with a real service behind it."""
    if service == "filesystem":
        return {"ARTIFACT_STORE_BACKEND": "filesystem", "ARTIFACT_STORE_FILESYSTEM_ROOT": str(workdir / "fs-root")}
    if service == "redis":
        return {"ARTIFACT_STORE_BACKEND": "redis", "ARTIFACT_STORE_REDIS_URL": request.getfixturevalue("redis_url")}
    if service == "http":
        url, token = request.getfixturevalue("http_server")
        return {
            "ARTIFACT_STORE_BACKEND": "http",
            "ARTIFACT_STORE_HTTP_ENDPOINT": url,
            "ARTIFACT_STORE_HTTP_TOKEN": token,
        }
    if service == "s3":
        # Credentials and region from boto3's own chain, as the page says; the endpoint is the test server,
        # for the store and for plain boto3 in the page's interop examples (botocore's AWS_ENDPOINT_URL_S3).
        endpoint = request.getfixturevalue("s3_endpoint")
        return {
            "ARTIFACT_STORE_BACKEND": "s3",
            "ARTIFACT_STORE_S3_BUCKET": S3_BUCKET,
            "ARTIFACT_STORE_S3_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "docs",
            "AWS_SECRET_ACCESS_KEY": "docs",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    raise AssertionError(service)


# Runs one page's blocks in order, in one namespace, in a fresh interpreter: each block with its own
# environment; prints a separator after each block so the test can check each block's output.
RUNNER = """
import json, os, sys, traceback
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for block in blocks:
    saved = dict(os.environ)
    os.environ.update(block["env"])
    try:
        exec(compile(block["code"], block["where"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print("docs-test: the block at " + block["where"] + " failed", file=sys.stderr)
        sys.exit(1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    print(block["separator"], flush=True)
"""
SEPARATOR = "----- docs-test: end of block -----"


def clean_environment(workdir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTIFACT_STORE_")}
    # A block that falls back to the filesystem backend's default root must not write into a real home.
    env["XDG_DATA_HOME"] = str(workdir / "xdg-data")
    return env


# -- the examples run ---------------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda page: str(page.relative_to(ROOT)))
def test_python_examples_run(page: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    page_blocks = blocks(page)
    to_run: list[dict[str, Any]] = []
    expectations: list[tuple[int, Block]] = []  # (index of the python block run before it, output block)
    for block in page_blocks:
        kind, argument = parse_marker(block.marker)
        if kind == "output":
            assert to_run, f"{block.where}: an output block must follow a python block that runs"
            expectations.append((len(to_run) - 1, block))
            continue
        if block.lang not in PYTHON or kind == "skip":
            continue
        env = service_env(argument, request, tmp_path) if kind == "requires" else {}
        to_run.append({"code": block.code, "where": block.where, "env": env, "separator": SEPARATOR})
    assert to_run, f"{page.name}: every python block is skipped; the page has nothing tested"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(to_run),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_environment(tmp_path),
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    outputs = result.stdout.split(SEPARATOR + "\n")
    assert len(outputs) == len(to_run) + 1, result.stdout
    for index, block in expectations:
        assert output_matches(block.code, outputs[index]), (
            f"{block.where}: the page shows\n{block.code}\nbut the block printed\n{outputs[index]}"
        )


def test_markers_are_well_formed_and_placed() -> None:
    for page in PAGES:
        page_blocks = blocks(page)
        for previous, block in zip([None, *page_blocks], page_blocks, strict=False):
            kind, _ = parse_marker(block.marker)  # raises on an unknown marker
            if kind == "output":
                assert block.lang == "text", f"{block.where}: an output block is a ```text block"
                assert previous is not None, f"{block.where}: no python block before it"
                assert previous.lang in PYTHON, f"{block.where}: no python block before it"
            elif kind != "run":
                assert block.lang in PYTHON, f"{block.where}: '{block.marker}' marks a python block"
        text = page.read_text()
        marked = len(re.findall(r"<!--\s*docs-test:", text))
        assert marked == sum(block.marker is not None for block in page_blocks), (
            f"{page.name}: a docs-test marker is not on the line right before a code fence"
        )


def test_output_matching() -> None:
    assert output_matches("a\nb\n", "a\nb\n")
    assert not output_matches("a\nb\n", "a\nc\n")
    assert output_matches("step 'x' failed: ...\nok\n", "step 'x' failed: boom; resume with '12'\nok\n")
    assert output_matches("...\nlast\n", "one\ntwo\nlast\n")
    assert not output_matches("first\n", "first\nextra\n")


def test_marker_grammar() -> None:
    assert parse_marker(None) == ("run", "")
    assert parse_marker("skip: needs a bucket") == ("skip", "needs a bucket")
    assert parse_marker("requires: redis") == ("requires", "redis")
    for bad in ("skip", "skip:", "requires: mongodb", "output: x", "run"):
        with pytest.raises(ValueError, match="unknown docs-test marker"):
            parse_marker(bad)


# -- the quickstart, as a newcomer runs it ------------------------------------------------------------


def section_blocks(page: Path, heading: str) -> list[Block]:
    """The python blocks between ``heading`` and the next heading of the same level."""
    text = page.read_text()
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + 1)
    first_line = text[:start].count("\n") + 2
    last_line = text[:end].count("\n") + 1 if end != -1 else len(text.splitlines()) + 1
    return [b for b in blocks(page) if b.lang in PYTHON and first_line <= b.line <= last_line]


@pytest.mark.timeout(600)
def test_quickstart_runs_unchanged_in_a_fresh_environment(tmp_path: Path, redis_url: str) -> None:
    """Acceptance: the quickstart's code, pasted into a fresh virtualenv installed as the page says, runs
    unchanged; one environment variable moves it onto a real Redis, which another process then reads."""
    page = DOCS / "quickstart.md"
    text = page.read_text()
    assert "pip install artifactstore-core" in text
    assert "pip install artifactstore-redis" in text
    [save] = section_blocks(page, "## Save and read a message")
    [read] = section_blocks(page, "## Switch to Redis")
    [shown] = [b for b in blocks(page) if b.marker == "output" and b.line > save.line][:1]
    (tmp_path / "quickstart.py").write_text(save.code)
    (tmp_path / "read.py").write_text(read.code)

    venv = tmp_path / "venv"
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"

    def install(*projects: str) -> None:
        # `pip install artifactstore-core` / `artifactstore-redis`: from a checkout the same distributions
        # come from their source directories (the core pulls artifactstore-memory in as its dependency).
        paths = [str(ROOT / project) for project in projects]
        subprocess.run(["uv", "pip", "install", "-q", "--python", str(python), *paths], check=True, cwd=tmp_path)

    def run(script: str, **env: str) -> str:
        result = subprocess.run(
            [str(python), script],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PATH": str(venv / "bin"), "HOME": str(tmp_path), **env},
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    install("plugins/memory", ".")
    assert output_matches(shown.code, run("quickstart.py"))

    install("plugins/memory", ".", "plugins/redis")
    on_redis = {"ARTIFACT_STORE_BACKEND": "redis", "ARTIFACT_STORE_REDIS_URL": redis_url}
    assert run("quickstart.py", **on_redis).splitlines() == ["redis (1, 2, 3) demo", "['extract', 'raw']"]
    # Another process reads what the first one saved, then clears the namespace.
    assert run("read.py", **on_redis).splitlines() == ["(1, 2, 3)", "2 artifacts removed"]
    (tmp_path / "count.py").write_text(
        "from artifactstore_core import create_store\n"
        "with create_store(namespace='quickstart') as store:\n"
        "    print(len(list(store.list())))\n"
    )
    assert run("count.py", **on_redis).strip() == "0"


@pytest.mark.timeout(120)
def test_the_quickstart_command_line_runs_as_written(tmp_path: Path) -> None:
    """The quickstart's shell lines, run one by one as written (comments dropped) on a file of their own:
    each succeeds, and the artifact comes back byte for byte, on the command line's default backend."""
    page = DOCS / "quickstart.md"
    text = page.read_text()
    start = text.index("\n## From the command line\n")
    [block] = [b for b in blocks(page) if b.lang == "bash" and b.line > text[:start].count("\n")][:1]
    commands = [line.split("#", 1)[0].strip() for line in block.code.splitlines() if line.split("#", 1)[0].strip()]
    assert [command.split()[:2] for command in commands] == [
        ["artifactstore", "backends"],
        ["artifactstore", "put"],
        ["artifactstore", "ls"],
        ["artifactstore", "get"],
    ]
    report = os.urandom(5000)
    (tmp_path / "report.pdf").write_bytes(report)
    env = clean_environment(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for command in commands:
        result = subprocess.run(
            command.split(), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False
        )
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        if command.startswith("artifactstore ls"):
            assert "report" in result.stdout, result.stdout
    assert (tmp_path / "copy.pdf").read_bytes() == report


# -- hooks --------------------------------------------------------------------------------------------


def hook_names() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets
    return sorted(name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, marker))


def prose(pages: list[Path] | None = None) -> str:
    """The hand-written pages (not the generated references)."""
    return "\n".join(page.read_text() for page in (pages or PAGES) if "reference" not in page.parts)


def test_every_hook_is_documented() -> None:
    hooks = hook_names()
    assert hooks == ["artifactstore_register_backends", "artifactstore_register_commands"]
    api = (DOCS / "reference" / "api.md").read_text()
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        for part in ("Called", "Args:", "Returns:"):
            assert part in doc, f"{name}: the docstring does not say {part!r}"
        assert f"autofunction:: artifactstore_core.hookspecs.{name}" in api, f"{name} missing in the API reference"
        assert f"`{name}" in prose(), f"{name} is not explained in any page"


# -- errors -------------------------------------------------------------------------------------------


def public_error_classes() -> dict[str, type[ArtifactStoreError]]:
    classes: dict[str, type[ArtifactStoreError]] = {}
    for module in (artifactstore_core, artifactstore_core.pipeline):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, ArtifactStoreError):
                classes[name] = obj
    return classes


ERROR_ROW = re.compile(r"^\|\s*`(?P<name>\w+Error)`\s*\|(?P<rest>.*)\|\s*$")


def error_reference_problems(text: str, classes: dict[str, type[BaseException]]) -> list[str]:
    """What the error reference (``docs/errors.md``) gets wrong about ``classes``: a class without a row,
    a row for no class, a wrong parent or retryable flag, an empty "raised when" or "what to do"."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = ERROR_ROW.match(line)
        if match:
            rows[match["name"]] = [cell.strip() for cell in match["rest"].split("|")]
    problems = [f"{name}: no row in the error reference" for name in classes if name not in rows]
    problems += [f"{name}: documented but not a public error class" for name in rows if name not in classes]
    for name, cells in rows.items():
        cls = classes.get(name)
        if cls is None:
            continue
        if len(cells) != 4:
            problems.append(f"{name}: expected the columns parent | retryable | raised when | what to do")
            continue
        parents, retryable, raised_when, what_to_do = cells
        if set(re.findall(r"`(\w+)`", parents)) != {base.__name__ for base in cls.__bases__}:
            problems.append(f"{name}: parents should be {', '.join(base.__name__ for base in cls.__bases__)}")
        if (retryable.strip("* ") == "yes") != bool(getattr(cls, "retryable", False)):
            problems.append(f"{name}: retryable should be {'yes' if getattr(cls, 'retryable', False) else 'no'}")
        if not raised_when:
            problems.append(f"{name}: says nothing about when it is raised")
        if not what_to_do:
            problems.append(f"{name}: says nothing about what to do")
    return problems


def test_every_public_error_class_is_in_the_error_reference() -> None:
    classes = public_error_classes()
    assert len(classes) >= 23
    assert error_reference_problems((DOCS / "errors.md").read_text(), classes) == []
    for name, cls in classes.items():
        assert cls.__doc__, f"{name} has no docstring for the API reference"


def test_removing_an_error_entry_fails() -> None:
    """Demonstrated on mutated copies of the page: the check above catches each kind of hole."""
    text = (DOCS / "errors.md").read_text()
    classes = public_error_classes()
    without_row = "\n".join(line for line in text.splitlines() if not line.startswith("| `CapacityError`"))
    assert error_reference_problems(without_row, classes) == ["CapacityError: no row in the error reference"]
    emptied = re.sub(r"(\| `ArtifactExistsError` \|[^|]*\|[^|]*\|[^|]*\|)[^|]*\|", r"\1 |", text)
    assert error_reference_problems(emptied, classes) == ["ArtifactExistsError: says nothing about what to do"]
    flipped = text.replace("| `BackendTimeoutError` | `BackendError`, `TimeoutError` | **yes** |",
                           "| `BackendTimeoutError` | `BackendError`, `TimeoutError` | no |")  # fmt: skip
    assert error_reference_problems(flipped, classes) == ["BackendTimeoutError: retryable should be yes"]

    class BrandNewError(ArtifactStoreError):
        """A class added to the API without a docs entry."""

    assert error_reference_problems(text, {**classes, "BrandNewError": BrandNewError}) == [
        "BrandNewError: no row in the error reference"
    ]


def test_cli_exit_codes_match_the_docs() -> None:
    text = (DOCS / "cli.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented: dict[int, set[str]] = {}
    for line in table.splitlines():
        match = re.match(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", line)
        if match:
            documented[int(match[1])] = set(re.findall(r"`(\w+Error)`", match[2]))
    for cls, code in EXIT_CODES:
        if cls is ArtifactStoreError:
            continue  # the row of code 1 says "another artifactstore error"
        assert cls.__name__ in documented.get(code, set()), f"{cls.__name__} exits with {code}; cli.md disagrees"


def test_every_command_is_in_the_command_guide() -> None:
    group = artifactstore_docs.cli  # the click group with the plugins' commands, as the reference shows it
    text = (DOCS / "cli.md").read_text()
    assert "serve" in group.commands, "the http plugin's serve command is missing from the generated reference"
    for name in group.commands:
        assert f"`artifactstore {name}" in text, f"artifactstore {name} is not in cli.md's command table"


# -- settings -----------------------------------------------------------------------------------------


def installed(section: Section) -> bool:
    try:
        metadata.distribution(section.distribution.split("[")[0])
    except metadata.PackageNotFoundError:
        return False
    return True


def loaded_sections() -> list[tuple[Section, type[Any]]]:
    """The sections whose distribution this environment has (``nox -s docs`` has every one)."""
    return [(section, section.load()) for section in SECTIONS if installed(section)]


def test_every_first_party_distribution_is_in_this_environment() -> None:
    missing = [section.distribution for section in SECTIONS if not installed(section)]
    assert missing == [], "install the test group: `nox -s tests` has every backend"


@pytest.mark.parametrize("section", SECTIONS, ids=lambda section: section.key)
def test_every_setting_has_a_description(section: Section) -> None:
    assert installed(section), f"{section.distribution} is not installed; install the test group"
    docs = artifactstore_docs.setting_docs(section.load())  # raises MissingDescriptionError on a hole
    assert docs
    for doc in docs:
        assert doc.env.startswith("ARTIFACT_STORE_"), doc
        assert doc.type, doc
        assert doc.default, doc


def test_removing_a_description_fails() -> None:
    """Demonstrated on a mutated copy of a real settings model: the reference (and so the docs build,
    whose directive raises the same error) refuses a setting without a description."""

    class CoreSettingsCopy(CoreSettings):
        pass

    fields = dict(CoreSettingsCopy.__pydantic_fields__)
    fields["signing_key"] = copy.copy(fields["signing_key"])
    fields["signing_key"].description = None
    CoreSettingsCopy.__pydantic_fields__ = fields
    assert CoreSettings.model_fields["signing_key"].description, "the original must be untouched"
    with pytest.raises(MissingDescriptionError, match="ARTIFACT_STORE_SIGNING_KEY"):
        artifactstore_docs.setting_docs(CoreSettingsCopy)
    section = Section("copy", "copy", f"{__name__}:CoreSettingsCopy", "artifactstore-core", None)
    globals()["CoreSettingsCopy"] = CoreSettingsCopy
    try:
        with pytest.raises(MissingDescriptionError):
            artifactstore_docs.section_markdown(section)
    finally:
        del globals()["CoreSettingsCopy"]


def test_secrets_are_marked() -> None:
    docs = [doc for _, model in loaded_sections() for doc in artifactstore_docs.setting_docs(model)]
    secrets = {doc.env for doc in docs if doc.secret}
    assert {"ARTIFACT_STORE_SIGNING_KEY", "ARTIFACT_STORE_REDIS_URL", "ARTIFACT_STORE_REDIS_PASSWORD"} <= secrets
    markdown = artifactstore_docs.section_markdown(SECTIONS[0])
    assert "| {envvar}`ARTIFACT_STORE_SIGNING_KEY` | string | unset | **yes** |" in markdown


def test_the_reference_covers_every_settings_model() -> None:
    """Every registered first-party backend's settings model, and every BackendSettings subclass the
    first-party plugins define (such as the artifact server's), has a section in the reference."""
    documented = {model for _, model in loaded_sections()}
    host = plugin_host()
    for name, distribution in KNOWN_BACKENDS.items():
        if name not in host.names():
            assert not any(s.distribution.startswith(distribution) and installed(s) for s in SECTIONS)
            continue
        spec = host.load(name)
        assert spec.settings_model is None or spec.settings_model in documented, f"{name}: settings not documented"
    for name in KNOWN_BACKENDS:
        for module in (f"artifactstore_{name}", f"artifactstore_{name}.settings"):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError:
                continue
    for subclass in all_subclasses(BackendSettings):
        if subclass.__module__.split(".")[0] in {f"artifactstore_{name}" for name in KNOWN_BACKENDS}:
            assert subclass in documented, f"{subclass.__module__}.{subclass.__qualname__} is not in the reference"


def all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


ENV_NAME = re.compile(r"\bARTIFACT_STORE_[A-Z0-9_]*[A-Z0-9]\b(?!_)")


def documented_env_names() -> set[str]:
    names = {doc.env for _, model in loaded_sections() for doc in artifactstore_docs.setting_docs(model)}
    return names | {name for name, _ in artifactstore_docs.EXTRA_SETTINGS}


def test_every_env_var_the_code_reads_is_documented() -> None:
    """Every complete ``ARTIFACT_STORE_*`` name in library code is a documented setting (a variable read
    with ``os.environ`` directly would otherwise escape the reference)."""
    sources = list((ROOT / "artifactstore_core").rglob("*.py"))
    for section, _ in loaded_sections():
        package = section.model.split(".")[0].split(":")[0]
        sources += list((ROOT / "plugins" / package.removeprefix("artifactstore_") / "src").rglob("*.py"))
    documented = documented_env_names()
    undocumented = {
        f"{name} ({path.relative_to(ROOT)})"
        for path in sources
        for name in ENV_NAME.findall(path.read_text())
        if name not in documented
    }
    assert sorted(undocumented) == []


def test_the_docs_name_no_setting_that_does_not_exist() -> None:
    from artifactstore_example import ExampleSettings  # the tutorial's third-party backend

    known = documented_env_names() | {ExampleSettings.env_name(name) for name in ExampleSettings.model_fields}
    # Names of a distribution this environment lacks are checked by `nox -s docs`, which has every one.
    unchecked = tuple(f"ARTIFACT_STORE_{section.key.upper()}_" for section in SECTIONS if not installed(section))
    unknown = {
        f"{name} ({page.relative_to(ROOT)})"
        for page in [*PAGES, ROOT / "README.md"]
        for name in ENV_NAME.findall(page.read_text())
        if name not in known and not name.startswith(unchecked or ("\0",))
    }
    assert sorted(unknown) == []


TABLE_ROW = re.compile(r"^\|\s*`(?P<env>ARTIFACT_STORE_[A-Z0-9_]+)`\s*\|(?P<default>[^|]*)\|")
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def default_problem(env: str, cell: str, default: Any) -> str | None:
    """Whether a hand-written table's default cell contradicts the model's default (None: it agrees,
    or the cell describes rather than states the value)."""
    if default is None:
        return None
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    literal = re.search(r"`([^`]*)`", cell)
    if isinstance(default, bool):
        value = literal[1] if literal else cell
        return None if value.strip().lower() == str(default).lower() else f"{env}: default is {default}"
    if isinstance(default, (int, float)):
        number = re.search(r"(\d[\d,_]*(?:\.\d+)?)\s*(KiB|MiB|GiB)?", literal[1] if literal else cell)
        if number is None:
            return f"{env}: default {default} not stated"
        value = float(number[1].replace(",", "").replace("_", "")) * UNITS.get(number[2] or "", 1)
        return None if value == float(default) else f"{env}: default is {default}, the docs say {cell}"
    if default == "":
        return None if cell in ("empty", "``") else f"{env}: default is empty"
    return None if literal and literal[1] == str(default) else f"{env}: default is {default!r}, the docs say {cell}"


def test_backend_pages_document_their_settings_as_the_code_defines_them() -> None:
    """Each backend page names every variable of its settings, and its hand-written table states the
    same defaults as the model (the generated reference is the full description)."""
    problems = []
    for section, model in loaded_sections():
        if section.page is None:
            continue
        text = (DOCS / f"{section.page}.md").read_text()
        fields = {model.env_name(name): field for name, field in model.model_fields.items()}
        generated = f"```{{artifactstore-settings}} {section.key}" in text  # the page embeds the generated table
        problems += [f"{env}: not on {section.page}.md" for env in fields if env not in text and not generated]
        for line in text.splitlines():
            match = TABLE_ROW.match(line)
            if match and match["env"] in fields:
                field = fields[match["env"]]
                if field.default_factory is None:
                    problem = default_problem(match["env"], match["default"].strip(), field.default)
                    if problem:
                        problems.append(problem)
    assert problems == []


def test_default_check_catches_drift() -> None:
    assert default_problem("X", "`5`", 5.0) is None
    assert default_problem("X", "32 MiB", 32 * 1024 * 1024) is None
    assert default_problem("X", "`268435456` (256 MiB)", 256 * 1024 * 1024) is None
    assert default_problem("X", "`true`", True) is None
    assert default_problem("X", "`6`", 5.0) is not None
    assert default_problem("X", "`false`", True) is not None
    assert default_problem("X", "`other`", "artifactstore") is not None
    assert default_problem("X", "`redis://127.0.0.1:6379/0`", SecretStr("redis://127.0.0.1:6379/0")) is None


TABLE_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def headless_table_rows(text: str) -> list[int]:
    """1-based lines that start a table (a ``|`` line after a line that is not one) without the header
    separator right after them: markdown renders such rows as a paragraph of pipes, not as a table. Code
    blocks are skipped."""
    lines = text.splitlines()
    problems = []
    fence: str | None = None
    for index, line in enumerate(lines):
        match = FENCE.match(line)
        if match and (fence is None or line.strip().startswith(fence)):
            fence = None if fence else match["fence"]
            continue
        if fence or not line.startswith("|"):
            continue
        previous = lines[index - 1] if index else ""
        if previous.startswith("|"):
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if not TABLE_SEPARATOR.match(following.strip()):
            problems.append(index + 1)
    return problems


def test_every_table_has_a_header() -> None:
    problems = [
        f"{page.relative_to(ROOT)}:{line}"
        for page in [*PAGES, ROOT / "README.md"]
        for line in headless_table_rows(page.read_text())
    ]
    assert problems == [], "a table row without a header (a blank line inside a table?): " + ", ".join(problems)


def test_headless_table_check_catches_a_blank_line_inside_a_table() -> None:
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert headless_table_rows(table) == []
    assert headless_table_rows(table + "\n| 3 | 4 |\n") == [5]
    assert headless_table_rows("```\n| not | a table |\n```\n") == []


# -- the site's pages ---------------------------------------------------------------------------------


def test_every_page_is_in_a_toctree() -> None:
    index = (DOCS / "index.md").read_text()
    listed = set(re.findall(r"^([\w/-]+)$", index, re.MULTILINE))
    pages = {str(page.relative_to(DOCS).with_suffix("")) for page in PAGES} - {"index"}
    assert pages - listed == set(), "pages missing from the toctree in docs/index.md"
    assert listed & {"s3", "reliability"} <= pages


def test_the_tutorial_includes_the_tested_example_backend() -> None:
    """The writing-a-backend tutorial shows the third-party example and its conformance test by inclusion,
    so the code it shows is the code the test suite runs."""
    text = (DOCS / "writing-a-backend.md").read_text()
    for included in re.findall(r"```\{literalinclude\} (\S+)", text):
        assert (DOCS / included).resolve().is_file(), included
    for name in ("ExampleSettings", "ExampleStore", "TestExampleBackendConformance"):
        assert f":pyobject: {name}" in text
    assert ':start-at: "def _factory("' in text
