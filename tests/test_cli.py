"""The artifactstore command, run as the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, cast

import pytest

from artifactstore_core import ArtifactInfo, ArtifactStore, Message, errors
from artifactstore_redis.testing import free_port, running
from fakedist import install_fake_distribution

SCRIPT = Path(sys.executable).parent / "artifactstore"
_DEFAULT_ROOT: list[Path] = []


@pytest.fixture(autouse=True)
def _filesystem_root(tmp_path: Path) -> Iterator[None]:
    """Commands default to the filesystem backend: keep its artifacts in this test's directory."""
    _DEFAULT_ROOT.append(tmp_path / "default-root")
    yield
    _DEFAULT_ROOT.pop()


def run(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_STORE_")}
    base["ARTIFACT_STORE_FILESYSTEM_ROOT"] = str(_DEFAULT_ROOT[-1])
    base.update(env or {})
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=stdin is None,
        input=stdin,
        env=base,
        timeout=120,
        check=False,
    )


def test_script_is_installed() -> None:
    assert SCRIPT.is_file()
    result = run("--help")
    assert result.returncode == 0
    for command in ("backends", "config", "doctor", "put", "get", "ls", "stat", "rm", "clear", "gc", "demo"):
        assert command in result.stdout


def test_backends_lists_everything_even_with_a_broken_plugin(tmp_path: Path) -> None:
    install_fake_distribution(
        tmp_path,
        "artifactstore-broken",
        "6.6.6",
        {"broken": "broken_cli_mod"},
        {"broken_cli_mod": "raise ImportError('missing native library')\n"},
    )
    # A plugin whose hook hands register() something else than a BackendSpec: it used to crash the command.
    install_fake_distribution(
        tmp_path,
        "artifactstore-notaspec",
        "0.1",
        {"notaspec": "notaspec_cli_mod"},
        {
            "notaspec_cli_mod": "from artifactstore_core import hookimpl\n\n@hookimpl\n"
            "def artifactstore_register_backends(register):\n    register({'name': 'notaspec'})\n"
        },
    )
    env = {"PYTHONPATH": str(tmp_path)}
    table = run("backends", env=env)
    assert table.returncode == 0, table.stderr
    assert "memory" in table.stdout
    assert "missing native library" in table.stdout
    listing = run("backends", "--json", env=env)
    assert listing.returncode == 0
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["memory"]["status"] == "loaded"
    assert rows["memory"]["capabilities"]["cross_process"] is False
    assert rows["broken"]["distribution"] == "artifactstore-broken"
    assert rows["broken"]["version"] == "6.6.6"
    assert "missing native library" in rows["broken"]["status"]
    assert "passed register() a dict, not an artifactstore_core.BackendSpec" in rows["notaspec"]["status"]
    # Other commands keep working beside the broken plugin.
    assert run("doctor", env=env).returncode == 0


def test_a_plugin_that_exits_at_import_breaks_no_other_command(tmp_path: Path) -> None:
    install_fake_distribution(
        tmp_path,
        "artifactstore-exits",
        "1.0",
        {"exits": "exits_cli_mod"},
        {"exits_cli_mod": "import sys\nsys.exit('exits_cli_mod needs libfoo')\n"},
    )
    env = {"PYTHONPATH": str(tmp_path)}
    assert run("ls", "-b", "memory", env=env).returncode == 0
    rows = {row["name"]: row for row in json.loads(run("backends", "--json", env=env).stdout)}
    assert rows["memory"]["status"] == "loaded"
    assert "SystemExit: exits_cli_mod needs libfoo" in rows["exits"]["status"]
    result = run("ls", "-b", "exits", env=env)
    assert result.returncode == 5, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: PluginLoadError: backend 'exits' failed to load")


def test_a_plugin_whose_commands_hook_raises_loses_only_its_own_commands(tmp_path: Path) -> None:
    install_fake_distribution(
        tmp_path,
        "badcmd-plugin",
        "0.1",
        {"badcmd": "badcmd_plugin"},
        {
            "badcmd_plugin": """
            from artifactstore_core import BackendSpec, hookimpl

            @hookimpl
            def artifactstore_register_backends(register):
                register(BackendSpec(name="badcmd", factory=lambda ctx: None))

            @hookimpl
            def artifactstore_register_commands(cli):
                raise RuntimeError("this plugin's command setup is broken")
            """
        },
    )
    env = {"PYTHONPATH": str(tmp_path)}
    listing = run("backends", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["memory"]["status"] == "loaded"
    assert "this plugin's command setup is broken" in rows["badcmd"]["status"]
    # Every other command, and other plugins' commands, still work.
    assert run("ls", "-b", "memory", env=env).returncode == 0
    assert "serve" in run("--help", env=env).stdout
    # A command of the broken plugin is unknown: the answer says a plugin registered no commands (it used to
    # say "No such command" alone, which sent the user looking for a typo), and only when one did not.
    unknown = run("vacuum", env=env)
    assert unknown.returncode == 2
    assert "No such command 'vacuum'." in unknown.stderr
    assert "Plugins not loaded or without their commands: badcmd (its commands failed);" in unknown.stderr
    assert "`artifactstore backends` shows why." in unknown.stderr
    # The allow-list leaves plugins out: named as such, not as broken.
    left_out = run("vacuum", env={**env, "ARTIFACT_STORE_PLUGINS": "memory"})
    assert "badcmd (not in ARTIFACT_STORE_PLUGINS)" in left_out.stderr
    assert "memory" not in left_out.stderr.split("commands:")[1]
    plain = run("vacuum")
    assert (plain.returncode, "plugin" in plain.stderr) == (2, False)
    assert "No such command 'vacuum'." in plain.stderr


def test_backends_lists_every_distribution_claiming_one_name(tmp_path: Path) -> None:
    for dist, version in (("claim-one", "1.0"), ("claim-two", "2.0")):
        module = dist.replace("-", "_")
        install_fake_distribution(
            tmp_path,
            dist,
            version,
            {"twice": module},
            {
                module: """
                from artifactstore_core import BackendSpec, hookimpl

                @hookimpl
                def artifactstore_register_backends(register):
                    register(BackendSpec(name="twice", factory=lambda ctx: None))
                """
            },
        )
    env = {"PYTHONPATH": str(tmp_path)}
    rows = [row for row in json.loads(run("backends", "--json", env=env).stdout) if row["name"] == "twice"]
    assert sorted((row["distribution"], row["version"]) for row in rows) == [("claim-one", "1.0"), ("claim-two", "2.0")]
    assert all("claimed by more than one distribution" in row["status"] for row in rows)
    table = run("backends", env=env)
    assert table.returncode == 0, table.stderr
    assert "claim-one" in table.stdout
    assert "claim-two" in table.stdout
    # Both rows are one backend, named once, for an unknown command's note.
    assert run("nosuch", env=env).stderr.count("twice (failed to load)") == 1


def test_a_plugin_cannot_hijack_a_core_command(tmp_path: Path) -> None:
    install_fake_distribution(
        tmp_path,
        "hijack-plugin",
        "0.1",
        {"hijack": "hijack_plugin"},
        {
            "hijack_plugin": """
            import click
            from artifactstore_core import BackendSpec, hookimpl

            @hookimpl
            def artifactstore_register_backends(register):
                register(BackendSpec(name="hijack", factory=lambda ctx: None))

            @hookimpl
            def artifactstore_register_commands(cli):
                @cli.command()
                @click.argument("step_id")
                @click.option("-b", "--backend")
                def get(step_id, backend):
                    click.echo("hijacked")
            """
        },
    )
    env = {"PYTHONPATH": str(tmp_path)}
    assert run("put", "a", "-b", "memory", env=env, stdin=b"x").returncode == 0
    # The core's get still runs: a missing artifact is exit 3, not the plugin's "hijacked".
    result = run("get", "missing", "-b", "memory", env=env)
    assert "hijacked" not in result.stdout
    assert result.returncode == 3, (result.stdout, result.stderr)
    rows = {row["name"]: row for row in json.loads(run("backends", "--json", env=env).stdout)}
    assert rows["hijack"]["status"] == (
        "loaded; commands failed: tried to replace the existing command(s) 'get'; kept the existing one(s)"
    )


def test_config_shows_sources_and_masks_secrets(tmp_path: Path) -> None:
    canary = "canary-secret-5d2c"
    env = {"ARTIFACT_STORE_SIGNING_KEY": canary, "ARTIFACT_STORE_MEMORY_LIMIT": "7", "ARTIFACT_STORE_BACKEND": "memory"}
    result = run("config", "--json", "--namespace", "cli-ns", env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["ARTIFACT_STORE_SIGNING_KEY"]["value"] == "**********"
    assert rows["ARTIFACT_STORE_SIGNING_KEY"]["secret"] is True
    assert rows["ARTIFACT_STORE_MEMORY_LIMIT"] == {**rows["ARTIFACT_STORE_MEMORY_LIMIT"], "value": 7, "source": "env"}
    assert rows["ARTIFACT_STORE_NAMESPACE"]["source"] == "argument"
    assert rows["ARTIFACT_STORE_BACKEND"]["source"] == "env"
    for args in (("config",), ("doctor",), ("doctor", "--json"), ("ls",), ("backends",)):
        out = run(*args, env=env)
        assert canary not in out.stdout + out.stderr


def test_config_describe_shows_each_settings_description() -> None:
    env = {"ARTIFACT_STORE_BACKEND": "memory"}
    plain = run("config", env=env)
    described = run("config", "--describe", env=env)
    assert described.returncode == 0, described.stderr
    assert plain.stdout.splitlines()[0].split() == ["setting", "value", "source"]
    assert described.stdout.splitlines()[0].split() == ["setting", "value", "source", "description"]
    helps = {row["name"]: row["help"] for row in json.loads(run("config", "--json", env=env).stdout)}
    lines = {line.split()[0]: line for line in described.stdout.splitlines()[1:]}
    assert helps["ARTIFACT_STORE_MEMORY_LIMIT"]
    assert lines["ARTIFACT_STORE_MEMORY_LIMIT"].endswith(" ".join(helps["ARTIFACT_STORE_MEMORY_LIMIT"].split()))
    assert set(lines) == set(helps)


def test_config_shows_a_plugin_whose_settings_are_a_plain_pydantic_settings_model(tmp_path: Path) -> None:
    install_fake_distribution(
        tmp_path,
        "plain-settings",
        "0.1",
        {"plain": "plain_settings_backend"},
        {
            "plain_settings_backend": """
            from pydantic_settings import BaseSettings, SettingsConfigDict
            from artifactstore_core import BackendSpec, hookimpl
            from artifactstore_memory import MemoryStore

            class PlainSettings(BaseSettings):
                model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_PLAIN_")
                depth: int = 1

            @hookimpl
            def artifactstore_register_backends(register):
                register(BackendSpec(
                    name="plain",
                    factory=lambda ctx: MemoryStore(namespace=ctx.namespace),
                    settings_model=PlainSettings,
                ))
            """
        },
    )
    env = {"PYTHONPATH": str(tmp_path), "ARTIFACT_STORE_PLAIN_DEPTH": "3"}
    result = run("config", "--json", "-b", "plain", env=env)
    assert result.returncode == 0, result.stderr  # was an AttributeError traceback (env_name)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert (rows["ARTIFACT_STORE_PLAIN_DEPTH"]["value"], rows["ARTIFACT_STORE_PLAIN_DEPTH"]["source"]) == (3, "env")


def test_doctor_reports_ok() -> None:
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "ok"
    assert report["backend"] == "filesystem"
    assert run("doctor", "-b", "memory").stdout.startswith("ok: backend 'memory'")
    assert report["save_ms"] >= 0


def test_doctor_and_config_name_misspelt_variables_they_ignore() -> None:
    canary = "redis://:canary-pw-71f0@db:6379/0"
    env = {
        "ARTIFACT_STORE_BACKNED": "redis",  # close to a core variable
        "ARTIFACT_STORE_FILESYSTEM_ROT": canary,  # under the selected backend's prefix
        # Not flagged: another backend's (not in use), the server's, and one close to nothing.
        "ARTIFACT_STORE_REDIS_URL": canary,
        "ARTIFACT_STORE_SERVER_TOKEN": canary,
        "ARTIFACT_STORE_TEAM_NOTE": "x",
    }
    expected = [
        "warning: ARTIFACT_STORE_BACKNED is no setting and is ignored; did you mean ARTIFACT_STORE_BACKEND?",
        "warning: ARTIFACT_STORE_FILESYSTEM_ROT is no setting of backend 'filesystem' and is ignored; did you mean "
        "ARTIFACT_STORE_FILESYSTEM_ROOT?",
    ]
    _DEFAULT_ROOT[-1].mkdir()  # else doctor also warns that the root does not exist
    result = run("doctor", env=env)
    assert result.returncode == 0, result.stderr  # the probe itself worked, with the defaults
    assert result.stderr.splitlines() == expected
    report = run("doctor", "--json", env=env)
    assert [f"warning: {line}" for line in json.loads(report.stdout)["warnings"]] == expected
    config = run("config", env=env)
    assert config.returncode == 0
    assert config.stderr.splitlines() == expected
    for out in (result, report, config):
        assert "canary" not in out.stdout + out.stderr
    assert json.loads(run("doctor", "--json").stdout)["warnings"] == []


def test_config_and_doctor_name_typos_no_setting_check_saw(tmp_path: Path) -> None:
    # Each left the filesystem's defaults in force without a word: `doctor` said "ok" and wrote to the
    # default root, and an allow-list missing the backend meant made the command fall back to memory.
    config_file = tmp_path / "artifactstore.toml"
    config_file.write_text('[filesytem]\nroot = "elsewhere"\n[server]\nport = 8080\n[team]\nowner = "x"\n')
    env = {
        "ARTIFACT_STORE_CONFIG": str(config_file),
        "ARTIFACT_STORE_FILESYTEM_ROOT": "/nowhere",  # the backend part misspelt
        "ARTIFACT_STORE_PLUGINS": "filesystem,memroy",
    }
    expected = [
        "warning: ARTIFACT_STORE_FILESYTEM_ROOT is no setting and is ignored; did you mean "
        "ARTIFACT_STORE_FILESYSTEM_ROOT?",
        "warning: ARTIFACT_STORE_PLUGINS names 'memroy', which no installed plugin provides; did you mean 'memory'?",
        f"warning: table [filesytem] in {config_file} is read by no installed backend and is ignored; "
        "did you mean [filesystem]?",
        f"warning: table [team] in {config_file} is read by no installed backend and is ignored",
    ]
    _DEFAULT_ROOT[-1].mkdir()  # else doctor also warns that the root does not exist
    for command in ("config", "doctor"):
        result = run(command, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == expected
    assert json.loads(run("doctor", "--json", env=env).stdout)["warnings"] == [line[9:] for line in expected]


def test_config_knows_a_backend_table_not_named_after_it_and_suggests_only_settings(tmp_path: Path) -> None:
    # A backend's settings may read a table not named after the backend (its config_table), which was
    # reported as read by no backend while its values were in force; and a misspelt backend part was
    # "corrected" into a variable that is no setting either.
    install_fake_distribution(
        tmp_path,
        "acme-backend",
        "0.1",
        {"acme": "acme_backend_mod"},
        {
            "acme_backend_mod": """
            from artifactstore_core import BackendSettings, BackendSpec, hookimpl
            from artifactstore_memory import MemoryStore
            from pydantic_settings import SettingsConfigDict

            class AcmeSettings(BackendSettings):
                model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_ACME_")
                config_table = "acme_store"
                bucket: str = "dev"

            @hookimpl
            def artifactstore_register_backends(register):
                register(BackendSpec(
                    name="acme",
                    factory=lambda ctx: MemoryStore(namespace=ctx.namespace),
                    settings_model=AcmeSettings,
                ))
            """
        },
    )
    config_file = tmp_path / "artifactstore.toml"
    config_file.write_text('[acme_store]\nbucket = "prod"\n')
    env = {"PYTHONPATH": str(tmp_path), "ARTIFACT_STORE_CONFIG": str(config_file), "ARTIFACT_STORE_HTTPS_PROXY": "x"}
    result = run("config", "--json", "-b", "acme", env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["ARTIFACT_STORE_ACME_BUCKET"]["value"] == "prod"
    assert result.stderr.splitlines() == ["warning: ARTIFACT_STORE_HTTPS_PROXY is no setting and is ignored"]


IN_PROCESS_WARNING = (
    "warning: backend 'memory' keeps artifacts in this command's process only: they are gone when it ends "
    "(choose a persistent backend with --backend or ARTIFACT_STORE_BACKEND, e.g. filesystem)"
)


@pytest.mark.parametrize("command", [("put", "lost"), ("ls",), ("doctor",), ("gc", "--older-than", "7d")])
def test_commands_warn_that_an_in_process_backend_forgets_when_they_end(command: tuple[str, ...]) -> None:
    # `put` said "saved" and exited 0, and the next command's `get` found nothing: each command is a process.
    result = run(*command, env={"ARTIFACT_STORE_BACKEND": "memory"}, stdin=b"data")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.decode().splitlines() if "warning" in line] == [IN_PROCESS_WARNING]
    # The command's own default, filesystem, keeps them (in a root that exists: else ls and doctor say it does not).
    _DEFAULT_ROOT[-1].mkdir()
    assert "warning" not in run(*command, stdin=b"data").stderr.decode()


def test_config_and_plugin_variables_are_read_in_any_case(tmp_path: Path) -> None:
    # pydantic-settings reads every setting's variable in any case; these two were read case-sensitively, so
    # a lower-case allow-list lifted the restriction it set, and a lower-case config path was ignored.
    config_file = tmp_path / "my.toml"
    config_file.write_text('namespace = "fromfile"\n')
    shown = run("config", "--json", env={"artifact_store_config": str(config_file)})
    rows = {row["name"]: row for row in json.loads(shown.stdout)}
    assert (rows["ARTIFACT_STORE_NAMESPACE"]["value"], rows["ARTIFACT_STORE_NAMESPACE"]["source"]) == (
        "fromfile",
        "config file",
    )
    backends = run("backends", "--json", env={"artifact_store_plugins": "memory"})
    statuses = {row["name"]: row["status"] for row in json.loads(backends.stdout)}
    assert statuses["memory"] == "loaded"
    assert statuses["filesystem"] == "not in ARTIFACT_STORE_PLUGINS"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("doctor",), {"ARTIFACT_STORE_NAMESPACE": ""}),
        (("doctor", "--json"), {"ARTIFACT_STORE_NAMESPACE": "run\x01"}),
        (("doctor", "-n", ""), {}),
    ],
)
def test_doctor_refuses_the_namespace_every_other_command_refuses(args: tuple[str, ...], env: dict[str, str]) -> None:
    # The probe runs in a namespace of its own; an "ok" would leave `ls`, `put`, ... failing on this one.
    assert run("ls", *args[1:], env=env).returncode == 5
    result = run(*args, env=env)
    assert result.returncode == 5, (result.stdout, result.stderr)
    if "--json" in args:
        report = json.loads(result.stdout)
        assert (report["status"], report["error"]["type"], report["error"]["exit_code"]) == (
            "error",
            "InvalidStepIdError",
            5,
        )
    else:
        assert result.stdout == ""
    assert result.stderr.startswith("error: InvalidStepIdError: namespace ")


@pytest.mark.parametrize(
    ("args", "env", "code", "text"),
    [
        (("get", "missing"), {}, 3, "ArtifactNotFoundError"),
        (("ls",), {"ARTIFACT_STORE_BACKEND": "memroy"}, 5, "did you mean 'memory'?"),
        (("ls", "-b", "memory"), {"ARTIFACT_STORE_MEMORY_LIMIT": "many"}, 5, "ARTIFACT_STORE_MEMORY_LIMIT"),
        (("stat", "bad\nid"), {}, 5, "control character"),
        (("rm", "a", "b"), {}, 3, "no artifacts 'a', 'b' in namespace 'default'"),
        (("clear",), {}, 2, "--yes"),
        (("gc", "--older-than", "soon"), {}, 2, "duration"),
        (("gc", "--older-than", "99999999999w"), {}, 2, "too long"),
    ],
)
def test_errors_are_one_line_with_documented_codes(
    args: tuple[str, ...], env: dict[str, str], code: int, text: str
) -> None:
    result = run(*args, env=env)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert text in result.stderr
    assert "Traceback" not in result.stderr


def test_a_misspelt_config_file_key_fails_every_command_instead_of_being_ignored(tmp_path: Path) -> None:
    config = tmp_path / "team.toml"
    config.write_text('backend = "memory"\n[memory]\nlimt = 1\n')
    env = {"ARTIFACT_STORE_CONFIG": str(config)}
    for args in (("doctor",), ("config",), ("ls",)):
        result = run(*args, env=env)
        assert result.returncode == 5, (args, result.stdout, result.stderr)
        assert result.stderr.strip() == (
            f"error: ConfigurationError: unknown setting 'limt' in [memory] of {config}; did you mean 'limit'? "
            "(known: limit, max_bytes)"
        )


def test_gc_older_than_any_date_removes_nothing() -> None:
    # A million weeks reaches back past year 1: nothing is that old (the cutoff used to overflow).
    assert run("put", "keep", "-n", "recent", stdin=b"x").returncode == 0
    result = run("gc", "--older-than", "1000000w", "--json")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout) == {"dry_run": False, "namespaces": [], "failed": [], "warnings": []}
    assert run("stat", "keep", "-n", "recent").returncode == 0


def test_local_file_errors_are_one_line_with_their_own_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.bin"
    result = run("put", "step", str(missing))
    assert result.returncode == 10, (result.stdout, result.stderr)
    assert result.stderr.strip() == f"error: cannot read {str(missing)!r}: No such file or directory"
    assert run("put", "step", "-", stdin=b"hi").returncode == 0
    target = tmp_path / "no" / "such" / "dir" / "out"
    result = run("get", "step", "-o", str(target))
    assert result.returncode == 10, (result.stdout, result.stderr)
    assert result.stderr.strip() == f"error: cannot write {str(target)!r}: No such file or directory"
    assert not (tmp_path / "no").exists()


def _corrupt_the_only_artifact(root: Path) -> None:
    """Flip a payload byte of the one artifact stored under the filesystem backend's ``root``."""
    [stored] = [path for path in root.rglob("*") if path.is_file()]
    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF
    stored.write_bytes(bytes(data))


def test_get_of_a_corrupted_artifact_leaves_an_existing_output_file_as_it_was(tmp_path: Path) -> None:
    # Large enough to be read in several chunks: the digest fails only after some were written.
    assert run("put", "model", "-", stdin=os.urandom(3 * 1024 * 1024)).returncode == 0
    _corrupt_the_only_artifact(_DEFAULT_ROOT[-1])
    previous = tmp_path / "model.bin"
    previous.write_bytes(b"yesterday's good model")
    previous.chmod(0o640)
    result = run("get", "model", "-o", str(previous))
    assert result.returncode == 8, (result.stdout, result.stderr)
    assert "ArtifactCorruptedError" in result.stderr
    assert previous.read_bytes() == b"yesterday's good model"  # was truncated, then removed
    # A damaged head is found by the one read get makes of it, and named by that read, not by an "info" call
    # the user never made (get read the head twice: info for the size, then open).
    [stored] = [path for path in _DEFAULT_ROOT[-1].rglob("*") if path.is_file()]
    with stored.open("r+b") as handle:
        handle.seek(40)
        handle.write(b"X")
    result = run("get", "model")
    assert result.returncode == 8, (result.stdout, result.stderr)
    assert "ArtifactCorruptedError: open: artifact 'model'" in result.stderr, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["default-root", "model.bin"]  # no partial file
    # A good artifact replaces it, keeping its permissions, through a symbolic link too.
    assert run("put", "fresh", "-", stdin=b"today").returncode == 0
    link = tmp_path / "current.bin"
    link.symlink_to(previous.name)
    assert run("get", "fresh", "-o", str(link)).returncode == 0
    assert link.is_symlink()
    assert previous.read_bytes() == b"today"
    assert previous.stat().st_mode & 0o777 == 0o640
    # A target that is no regular file is written in place, never replaced.
    assert run("get", "fresh", "-o", os.devnull).returncode == 0
    assert not Path(os.devnull).is_file()


def test_a_backend_factory_error_is_one_typed_line(tmp_path: Path) -> None:
    install_fake_distribution(
        tmp_path,
        "flaky-backend",
        "0.1",
        {"flaky": "flaky_backend"},
        {
            "flaky_backend": """
            from artifactstore_core import BackendSpec, hookimpl

            def factory(ctx):
                raise OSError("connect to redis://:hunter2@10.0.0.1:6379 failed")

            @hookimpl
            def artifactstore_register_backends(register):
                register(BackendSpec(name="flaky", factory=factory))
            """
        },
    )
    result = run("ls", "-b", "flaky", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "error: BackendError: backend 'flaky' (flaky-backend 0.1)" in result.stderr
    assert "hunter2" not in result.stderr


def test_a_factory_that_returns_no_store_is_one_line(tmp_path: Path) -> None:
    install_fake_distribution(
        tmp_path,
        "nostore-backend",
        "0.1",
        {"nostore": "nostore_backend"},
        {
            "nostore_backend": """
            from artifactstore_core import BackendSpec, hookimpl

            @hookimpl
            def artifactstore_register_backends(register):
                register(BackendSpec(name="nostore", factory=lambda ctx: None))
            """
        },
    )
    result = run("ls", "-b", "nostore", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 5, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: PluginLoadError: backend 'nostore' (nostore-backend 0.1) is broken")


def test_debug_shows_the_traceback_and_keeps_the_exit_code() -> None:
    # The documented code of the error, not Python's 1 for an uncaught exception.
    result = run("--debug", "get", "missing")
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "Traceback" in result.stderr
    # The traceback's last line is the error's; it goes on to say so when the test's root does not exist yet.
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(
        "artifactstore_core.errors.ArtifactNotFoundError: no artifact 'missing' in namespace 'default' of backend "
        "'filesystem'"
    ), last
    stopped = {
        "ARTIFACT_STORE_BACKEND": "redis",
        "ARTIFACT_STORE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "ARTIFACT_STORE_REDIS_RETRY_ATTEMPTS": "1",
    }
    result = run("--debug", "ls", env=stopped)
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert "Traceback" in result.stderr


def test_in_process_data_commands_round_trip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """put/ls/stat/get/rm/clear in one process (memory does not cross processes)."""
    from artifactstore_core.cli import main

    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    source = tmp_path / "in.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    out = tmp_path / "out.bin"
    assert main(["put", "blob", str(source), "--meta", "k=v", "-n", "cli"]) == 0
    assert main(["stat", "blob", "-n", "cli", "--json"]) == 0
    assert main(["get", "blob", "-o", str(out), "-n", "cli"]) == 0
    assert out.read_bytes() == source.read_bytes()
    assert main(["put", "blob", str(source), "-n", "cli"]) == 4  # different metadata: write-once refuses
    assert "already exists" in capsys.readouterr().err.replace("\n", " ")
    assert main(["--debug", "put", "blob", str(source), "-n", "cli"]) == 4
    debug = capsys.readouterr().err
    assert "Traceback" in debug
    assert "pass --overwrite to replace it" in debug
    assert main(["clear", "--dry-run", "-n", "cli"]) == 0
    assert main(["rm", "blob", "-n", "cli"]) == 0
    assert main(["rm", "blob", "-n", "cli"]) == 3
    assert main(["gc", "--older-than", "1s", "--dry-run"]) == 0


def test_get_writes_in_place_where_no_file_can_be_created_beside_the_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A writable file in a directory the user may not create files in (as root, tests cannot make one)."""
    import tempfile

    from artifactstore_core.cli import main

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    source = tmp_path / "in.bin"
    source.write_bytes(b"payload")
    assert main(["put", "blob", str(source), "-n", "in-place"]) == 0
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"old")
    assert main(["get", "blob", "-o", str(existing), "-n", "in-place"]) == 0
    assert existing.read_bytes() == b"payload"
    # A new file cannot be created there either: one line, exit 10.
    assert main(["get", "blob", "-o", str(tmp_path / "new.bin"), "-n", "in-place"]) == 10


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(tmp_path_factory.mktemp("cli-redis")) as server:
        yield server.url


def _backend_env(kind: str, tmp_path: Path, redis_url: str) -> dict[str, str]:
    if kind == "filesystem":
        return {"ARTIFACT_STORE_BACKEND": "filesystem", "ARTIFACT_STORE_FILESYSTEM_ROOT": str(tmp_path / "root")}
    return {"ARTIFACT_STORE_BACKEND": "redis", "ARTIFACT_STORE_REDIS_URL": redis_url}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["filesystem", "redis"])
def test_50_mb_round_trip_through_the_console_script(kind: str, tmp_path: Path, redis_url: str) -> None:
    env = _backend_env(kind, tmp_path, redis_url)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1024 * 1024) * 50)
    ns = ("-n", f"cli-{kind}")
    assert run("put", "data/big file.bin", str(source), *ns, env=env).returncode == 0
    listing = run("ls", "--json", *ns, env=env)
    assert [row["step_id"] for row in json.loads(listing.stdout)] == ["data/big file.bin"]
    assert json.loads(listing.stdout)[0]["size"] == 50 * 1024 * 1024
    out = tmp_path / "out.bin"
    got = run("get", "data/big file.bin", "-o", str(out), *ns, env=env)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == source.read_bytes()
    piped = run("get", "data/big file.bin", *ns, env=env, stdin=b"")
    assert piped.stdout == source.read_bytes()
    assert run("put", "small", "-", *ns, env=env, stdin=b"from stdin").returncode == 0
    assert run("rm", "data/big file.bin", *ns, env=env).returncode == 0
    assert run("get", "data/big file.bin", *ns, env=env).returncode == 3
    cleared = run("clear", "--yes", *ns, env=env)
    assert cleared.stdout.strip() == "removed 1 artifact"
    assert json.loads(run("ls", "--json", *ns, env=env).stdout) == []


def test_filesystem_is_the_command_default(tmp_path: Path) -> None:
    env = {"ARTIFACT_STORE_FILESYSTEM_ROOT": str(tmp_path / "root"), "HOME": str(tmp_path)}
    assert run("put", "kept", "-", env=env, stdin=b"persisted").returncode == 0
    assert run("get", "kept", env=env, stdin=b"").stdout == b"persisted"
    rows = {row["name"]: row for row in json.loads(run("config", "--json", env=env).stdout)}
    assert rows["ARTIFACT_STORE_BACKEND"]["value"] == "filesystem"
    assert rows["ARTIFACT_STORE_BACKEND"]["source"] == "command default"


@pytest.mark.timeout(60)
def test_doctor_against_a_stopped_redis_fails_fast_with_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here: a stopped server
    env = {
        "ARTIFACT_STORE_BACKEND": "redis",
        "ARTIFACT_STORE_REDIS_URL": f"redis://:canary-pass-93e1@127.0.0.1:{port}/0",
        "ARTIFACT_STORE_REDIS_SOCKET_CONNECT_TIMEOUT": "1",
        "ARTIFACT_STORE_REDIS_SOCKET_TIMEOUT": "1",
        "ARTIFACT_STORE_REDIS_RETRY_ATTEMPTS": "1",
    }
    started = time.monotonic()
    result = run("doctor", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 6, result.stderr
    assert elapsed < 30  # a hang guard, not a speed assertion
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: BackendUnavailableError")
    assert "Traceback" not in result.stderr
    assert "canary-pass-93e1" not in result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_doctor_json_reports_a_failure_as_json_too() -> None:
    # A monitoring script parses stdout: a failing doctor printed nothing there, only the stderr line.
    port = free_port()  # nothing listens here
    env = {
        "ARTIFACT_STORE_BACKEND": "redis",
        "ARTIFACT_STORE_REDIS_URL": f"redis://:canary-pass-5c1d@127.0.0.1:{port}/0",
        "ARTIFACT_STORE_REDIS_SOCKET_CONNECT_TIMEOUT": "1",
        "ARTIFACT_STORE_REDIS_RETRY_ATTEMPTS": "1",
        "ARTIFACT_STORE_REDIS_ULR": "x",
    }
    result = run("doctor", "--json", env=env)
    assert result.returncode == 6, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "error"
    assert report["backend"] == "redis"
    assert report["error"]["type"] == "BackendUnavailableError"
    assert report["error"]["retryable"] is True
    assert report["error"]["exit_code"] == 6
    assert f"127.0.0.1:{port}" in report["error"]["message"]
    assert [warning.split()[0] for warning in report["warnings"]] == ["ARTIFACT_STORE_REDIS_ULR"]
    assert result.stderr.strip().splitlines()[-1].startswith("error: BackendUnavailableError")
    assert "canary-pass-5c1d" not in result.stdout + result.stderr
    unknown = run("doctor", "--json", env={"ARTIFACT_STORE_BACKEND": "nope"})
    assert unknown.returncode == 5
    assert json.loads(unknown.stdout)["error"]["type"] == "BackendNotFoundError"


def test_no_secret_in_any_command_output(tmp_path: Path, redis_url: str) -> None:
    canaries = {"ARTIFACT_STORE_SIGNING_KEY": "canary-sign-11aa", "ARTIFACT_STORE_REDIS_PASSWORD": "canary-redis-22bb"}
    env = {**_backend_env("filesystem", tmp_path, redis_url), **canaries}
    env["ARTIFACT_STORE_HTTP_TOKEN"] = "canary-http-33cc-long-enough"
    commands: list[tuple[str, ...]] = [
        ("backends",),
        ("backends", "--json"),
        ("config",),
        ("config", "--json"),
        ("config", "-b", "redis"),
        ("config", "-b", "http", "--json"),
        ("doctor",),
        ("doctor", "--json"),
        ("ls",),
        ("stat", "missing"),
        ("gc", "--older-than", "1d", "--dry-run"),
    ]
    for args in commands:
        result = run(*args, env=env)
        text = result.stdout + result.stderr
        for canary in [*canaries.values(), env["ARTIFACT_STORE_HTTP_TOKEN"]]:
            assert canary not in text, (args, canary)


def test_demo_is_the_main_job() -> None:
    """The README's main-job command: the example pipeline on the default embedded backend."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "uv run artifactstore demo" in readme
    result = run("demo")
    assert result.returncode == 0, result.stderr
    for text in ("backend 'filesystem'", "summarise-4", "succeeded", "final result", "namespace cleared: True"):
        assert text in result.stdout
    assert list(_DEFAULT_ROOT[-1].rglob("@*")) == []  # nothing of the execution is left on disk


def test_demo_in_a_namespace_of_ones_own_keeps_its_other_artifacts(tmp_path: Path) -> None:
    # The demo cleared the whole namespace at the end, deleting the report saved there before it.
    report = tmp_path / "report.txt"
    report.write_bytes(b"the user's own")
    assert run("put", "-n", "work", "report", str(report)).returncode == 0

    result = run("demo", "-n", "work")

    assert result.returncode == 0, result.stderr
    assert "execution work on backend 'filesystem'" in result.stdout
    assert "namespace cleared: True (0 artifacts of this execution left in the store)" in result.stdout
    listing = run("ls", "-n", "work")
    assert listing.stdout.split()[-1] == "report"
    assert len(listing.stdout.splitlines()) == 1
    # -n is the execution id: the help does not claim ARTIFACT_STORE_NAMESPACE, which the demo does not read.
    assert "ARTIFACT_STORE_NAMESPACE" not in run("demo", "--help").stdout


def test_serve_is_contributed_by_the_http_plugin() -> None:
    listing = run("--help")
    assert "serve" in listing.stdout
    result = run("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout
    # Without a token and without the explicit insecure flag the server refuses to start.
    refused = run("serve", "--port", "0")
    assert refused.returncode == 5
    assert "Traceback" not in refused.stderr


def test_unread_variables_follow_the_settings_model_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    # A plugin whose prefix is not ARTIFACT_STORE_<NAME>_ (its name has a dash): its own variables are judged.
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from artifactstore_core import BackendSpec
    from artifactstore_core.cli import unread_variables

    class OddSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_ODD_")
        depth: int = 1

    spec = BackendSpec(name="odd-name", factory=lambda ctx: None, settings_model=OddSettings)  # type: ignore[arg-type,return-value]
    for key in [key for key in os.environ if key.upper().startswith("ARTIFACT_STORE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ARTIFACT_STORE_ODD_DEPTH", "2")
    monkeypatch.setenv("ARTIFACT_STORE_ODD_DEPHT", "3")
    assert unread_variables(spec) == [
        "ARTIFACT_STORE_ODD_DEPHT is no setting of backend 'odd-name' and is ignored; "
        "did you mean ARTIFACT_STORE_ODD_DEPTH?"
    ]


def test_gc_removes_what_it_listed_and_keeps_an_artifact_saved_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run resumed while gc runs saves into the old namespace between gc's listing and its removal."""
    import artifactstore_core.cli as cli_module
    from artifactstore_core import create_store
    from artifactstore_core.cli import main

    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    with create_store(namespace="old-run") as store:
        store.save("a", Message(content=1))
        store.save("b", Message(content=2))
        store_class = type(store)
    listed = store_class.list

    def list_then_resume(self: ArtifactStore) -> Iterator[ArtifactInfo]:
        yield from listed(self)
        if self.namespace == "old-run" and not self.exists("fresh"):
            with create_store(namespace="old-run") as writer:
                writer.save("fresh", Message(content=3))

    class Later(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Later:
            return cast(Later, datetime.now(tz) + timedelta(days=1))  # every artifact is a day old

    monkeypatch.setattr(store_class, "list", list_then_resume)
    monkeypatch.setattr(cli_module, "datetime", Later)
    assert main(["gc", "--older-than", "1h"]) == 0
    with create_store(namespace="old-run") as store:
        assert [info.step_id for info in listed(store)] == ["fresh"]
        store.clear()


def test_doctor_leaves_no_probe_behind_when_a_step_after_the_save_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from artifactstore_core import BackendUnavailableError, create_store
    from artifactstore_core.cli import main

    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    with create_store() as store:
        store_class = type(store)

    def failing_get(self: ArtifactStore, step_id: str) -> Message:
        raise BackendUnavailableError("the read failed")

    monkeypatch.setattr(store_class, "get", failing_get)
    assert main(["doctor"]) != 0
    with create_store() as root:
        assert [name for name in root.namespaces() if name.startswith("artifactstore-doctor-")] == []


def test_core_commands_run_without_importing_the_plugins_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every plugin's commands hook imports that plugin (boto3, redis-py, ...): about a second of start-up
    # that a core command such as `ls` does not need. Plugin commands, unknown names and the help still load.
    import artifactstore_core.cli as cli_module

    loads: list[list[str]] = []
    monkeypatch.setattr(cli_module, "_load_plugin_commands", lambda: loads.append(args))
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    for args, loaded in (
        (["ls"], False),
        (["--debug", "ls", "-b", "memory"], False),
        (["stat", "missing", "--json"], False),
        (["backends"], True),
        (["--debug", "no-such-command"], True),
        (["--help"], True),
    ):
        loads.clear()
        cli_module.main(args)
        assert loads == ([args] if loaded else []), args


@pytest.mark.parametrize(
    ("head", "text"),
    [
        (b"plain ascii\n", True),
        ("déjà vu".encode(), True),
        ("déjà".encode()[:-1], True),  # a character cut at the chunk's end: the next chunk holds the rest
        (b"\x1b[31mred\x1b[0m", True),  # escape sequences in text are written, as cat writes them
        (b"", True),
        (b"nul\0byte", False),
        (b"\xff\xfe latin", False),
        ("é".encode("latin-1") + b" and more", False),
    ],
)
def test_what_get_takes_for_text_on_a_terminal(head: bytes, text: bool) -> None:
    import click

    from artifactstore_core.cli import _refuse_binary_on_terminal

    if text:
        _refuse_binary_on_terminal("x", head)
    else:
        with pytest.raises(click.UsageError, match="not writing the binary payload of 'x' to a terminal"):
            _refuse_binary_on_terminal("x", head)


def test_ids_that_stdout_cannot_encode_are_escaped_not_a_traceback() -> None:
    # Under PYTHONIOENCODING=ascii (or a Latin-1 locale and a CJK id) ls and stat failed with a traceback.
    env = {"PYTHONIOENCODING": "ascii"}
    assert run("put", "é-日", "-", env=env, stdin=b"x").returncode == 0
    for args, shown in [(("ls",), "\\xe9-\\u65e5"), (("stat", "é-日"), "step_id: \\xe9-\\u65e5")]:
        result = run(*args, env=env, stdin=b"")
        assert result.returncode == 0, result.stderr
        assert shown in result.stdout.decode("ascii")
        assert result.stderr == b""
    # JSON is ASCII whatever the ids: exact for scripts.
    listing = run("ls", "--json", env=env, stdin=b"")
    assert [row["step_id"] for row in json.loads(listing.stdout)] == ["é-日"]


def test_usage_errors_name_the_option_or_argument_as_the_help_does() -> None:
    result = run("gc", "--older-than", "7x")
    assert result.returncode == 2
    # It said "Invalid value: expected a duration ...", naming no option.
    assert "Invalid value for '--older-than': expected a duration like 30s" in result.stderr
    assert "Missing option '--older-than'" in run("gc").stderr
    # put's help and errors called its FILE (the docs' and the docstring's name) SOURCE.
    assert "Usage: artifactstore put [OPTIONS] STEP_ID [FILE|-]" in run("put", "--help").stdout
    assert "Invalid value for '[FILE|-]'" in run("put", "x", str(Path(__file__).parent)).stderr
    # --backend's help named only ARTIFACT_STORE_BACKEND, as if the library's memory were the default.
    assert "else filesystem" in " ".join(run("ls", "--help").stdout.split())


@pytest.mark.parametrize("kind", ["filesystem", "memory", "redis"])
def test_a_file_or_stdin_that_fails_to_read_is_a_local_file_error(kind: str, tmp_path: Path, redis_url: str) -> None:
    # The store reported the failed read as its own SerializationError (exit 8, "the data is bad").
    env = {"ARTIFACT_STORE_BACKEND": "memory"} if kind == "memory" else _backend_env(kind, tmp_path, redis_url)
    # Reading a process's own memory at offset 0 (never mapped) fails with EIO, whoever runs the test.
    result = run("put", "x", "/proc/self/mem", env=env)
    warned = IN_PROCESS_WARNING + "\n" if kind == "memory" else ""
    assert (result.returncode, result.stderr) == (
        10,
        f"{warned}error: cannot read '/proc/self/mem': {os.strerror(5)}\n",
    )
    write_only = os.open(tmp_path / "write-only", os.O_WRONLY | os.O_CREAT)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_STORE_")}
        piped = subprocess.run(
            [str(SCRIPT), "put", "x", "-"], stdin=write_only, capture_output=True, env={**base, **env}, timeout=120
        )
    finally:
        os.close(write_only)
    assert (piped.returncode, piped.stderr) == (
        10,
        f"{warned}error: cannot read from stdin: {os.strerror(9)}\n".encode(),
    )


class _IdsThenSay(list[str]):
    """The ids to delete, which say when the pool has taken the last of them (pool.map submits them all)."""

    def __init__(self, ids: list[str], taken: threading.Event) -> None:
        super().__init__(ids)
        self.taken = taken

    def __iter__(self) -> Iterator[str]:
        yield from super().__iter__()
        self.taken.set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_while_gc_deletes_stops_the_deletes_and_ends(signal_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Ctrl-C while gc deleted raised KeyboardInterrupt in the main thread wherever it was, inside the thread
    # pool's locks included, and the command could hang for good (workers waiting for a lock left held, the
    # main thread waiting for them). Whether a given Ctrl-C hits that window is chance; where the
    # KeyboardInterrupt is raised is not. SIGTERM, which stops a command as Ctrl-C does, is deferred alike.
    import signal

    from artifactstore_core.cli import _GC_THREADS, _raise_stop, _StopSignal

    signum = getattr(signal, signal_name)
    # For SIGTERM, the handler the command's main() sets where the signal has its default action.
    previous = signal.signal(signum, _raise_stop) if signum != signal.SIGINT else None
    try:
        raised, left, handler = _interrupt_gc_deletes(signum, monkeypatch)
    finally:
        monkeypatch.undo()
        if previous is not None:
            signal.signal(signum, previous)
    assert type(raised) is (KeyboardInterrupt if signum == signal.SIGINT else _StopSignal)
    if isinstance(raised, _StopSignal):
        assert raised.signum == signum
    # Ctrl-C is Python's own again, and SIGTERM the command's.
    assert handler is (signal.default_int_handler if signum == signal.SIGINT else _raise_stop)
    # The deletes past gc's check of the flag before it was set ran (one per thread, and the next one of the
    # thread that ran the first delete); none of the hundreds queued behind them.
    assert left >= 2000 - _GC_THREADS - 1, left


def _interrupt_gc_deletes(signum: int, monkeypatch: pytest.MonkeyPatch) -> tuple[BaseException, int, Any]:
    """Send ``signum`` while gc's deletes run; return what was raised, the artifacts left, and the handler of
    ``signum`` afterwards."""
    import signal

    from artifactstore_core import create_store
    from artifactstore_core.cli import _delete_listed

    ids = [f"a{i}" for i in range(2000)]
    taken, handled = threading.Event(), threading.Event()
    set_handler = signal.signal

    def set_handler_that_says_it_ran(number: int, handler: Any) -> Any:
        if not callable(handler) or handler is signal.default_int_handler or number != signum:
            return set_handler(number, handler)
        if getattr(handler, "__name__", "") != "on_signal":  # the command's own handler, put back
            return set_handler(number, handler)

        def handler_then_say(number: int, frame: Any) -> None:
            handler(number, frame)
            handled.set()

        return set_handler(number, handler_then_say)

    monkeypatch.setattr(signal, "signal", set_handler_that_says_it_ran)
    with create_store("memory", namespace="gc-interrupted") as store:
        store.save_many({step_id: Message(content=b"x") for step_id in ids})
        delete = store.delete

        def delete_then_interrupt(step_id: str) -> bool:
            assert taken.wait(30)  # every delete submitted: the main thread waits for the first's result
            if step_id == ids[0]:
                # The signal, then the result the main thread waits for: it wakes and runs the handler (a
                # signal that comes while it waits is only handled once something wakes it).
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
                return delete(step_id)
            # No other delete goes on until the handler has run: the ones already past gc's check of the
            # flag (one per thread at most) are the only ones that run.
            if not handled.wait(30):
                handled.set()  # the others need not wait as well
                raise AssertionError("the signal was never handled")
            return delete(step_id)

        monkeypatch.setattr(store, "delete", delete_then_interrupt)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            _delete_listed(store, _IdsThenSay(ids, taken))
        left = sum(1 for _ in store.list())
    # Raised once the pool has ended, not from inside its locks (waiting for a result here), where it can
    # leave one of them held (a KeyboardInterrupt between a `with lock:`'s acquire and its block).
    assert interrupted.traceback[-1].name == "_ctrl_c_deferred"
    return interrupted.value, left, signal.getsignal(signum)


def test_gc_deletes_off_the_main_thread_raise_their_own_error_unchained() -> None:
    # Where no SIGINT handler can be set (not the main thread), the block ran inside the except clause that
    # caught signal.signal's ValueError: a delete's error then carried that ValueError as its context, and a
    # --debug traceback showed it under "During handling of the above exception, another exception occurred".
    from artifactstore_core.cli import _delete_listed

    class FailingStore:
        def delete(self, step_id: str) -> bool:
            raise errors.BackendUnavailableError(f"cannot delete {step_id!r}")

    caught: list[BaseException] = []

    def run() -> None:
        try:
            _delete_listed(FailingStore(), ["a"])  # type: ignore[arg-type]
        except errors.BackendUnavailableError as exc:
            caught.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert len(caught) == 1
    assert caught[0].__context__ is None, repr(caught[0].__context__)


def test_rm_says_where_it_looked_and_put_refuses_a_repeated_meta_key(tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_bytes(b"a")
    assert run("put", "kept", str(source)).returncode == 0
    assert run("put", "gone", str(source)).returncode == 0
    result = run("rm", "gone", "missing")
    assert result.returncode == 3
    # It said "not found: 'missing'", without the namespace and backend every other not-found names.
    assert result.stderr == (
        "error: ArtifactNotFoundError: no artifact 'missing' in namespace 'default' of backend 'filesystem'; "
        "removed the other 1\n"
    )
    # The second value of a key silently replaced the first.
    result = run("put", "meta", str(source), "--meta", "k=1", "--meta", "k=2")
    assert result.returncode == 2
    assert "Invalid value for --meta: 'k' is given twice" in result.stderr
    assert run("stat", "meta").returncode == 3


def test_commands_that_find_nothing_under_a_root_that_does_not_exist_say_so(tmp_path: Path) -> None:
    # A mistyped ARTIFACT_STORE_FILESYSTEM_ROOT: `ls` printed nothing and exited 0, as for an empty store (get
    # and stat already said the root did not exist). Still exit 0: nothing has been saved there yet is legitimate.
    typo = tmp_path / "typo-root"
    env = {"ARTIFACT_STORE_BACKEND": "filesystem", "ARTIFACT_STORE_FILESYSTEM_ROOT": str(typo)}
    note = (
        "the filesystem root (ARTIFACT_STORE_FILESYSTEM_ROOT) does not exist: nothing has been saved there, or "
        "ARTIFACT_STORE_FILESYSTEM_ROOT names the wrong directory (`artifactstore config` shows it)"
    )
    for args in [("ls",), ("ls", "--json"), ("clear", "--yes"), ("clear", "--dry-run"), ("gc", "--older-than", "7d")]:
        result = run(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr.startswith(f"warning: {note}\n"), (args, result.stderr)
        assert str(typo) not in result.stderr  # the setting is named, not its value (`config` shows it)
        if args == ("ls", "--json"):
            assert result.stdout == "[]\n"
    result = run("gc", "--older-than", "7d", "--json", env=env)
    assert json.loads(result.stdout)["warnings"] == [note]
    for args in [("rm", "x"), ("stat", "x"), ("get", "x")]:
        result = run(*args, env=env)
        assert result.returncode == 3, (args, result.stderr)
        assert result.stderr == (
            f"error: ArtifactNotFoundError: no artifact 'x' in namespace 'default' of backend 'filesystem'; {note}\n"
        ), args
    assert not typo.exists()  # none of them made the root
    # doctor's probe makes it: said before, as the root then exists and later commands have nothing to say.
    result = run("doctor", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["warnings"] == [note]
    assert typo.is_dir()
    assert run("ls", env=env).stderr == ""
    assert "root" not in run("rm", "x", env=env).stderr


def _corrupt_the_artifact_of(namespace: str) -> None:
    """Damage the envelope of the one artifact stored in ``namespace`` under the default filesystem root."""
    (path,) = [p for p in (_DEFAULT_ROOT[-1] / f"@{namespace}").rglob("*") if p.is_file()]
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF  # the magic marker
    path.write_bytes(bytes(data))


def test_gc_goes_on_past_a_namespace_it_cannot_collect_and_reports_it() -> None:
    # One corrupted artifact made the whole of gc fail: the namespaces after it were not collected.
    key = "canary-gc-5e5e"
    env = {"ARTIFACT_STORE_SIGNING_KEY": key}
    for namespace in ("old-a", "old-b", "old-c"):
        assert run("put", "-n", namespace, "x", "-", env=env, stdin=b"payload").returncode == 0
    _corrupt_the_artifact_of("old-b")
    result = run("gc", "--older-than", "0s", "--force", "--json", env=env)
    assert result.returncode == 8, result.stderr  # the exit code of the failure (ArtifactCorruptedError's family)
    report = json.loads(result.stdout)
    assert [row["namespace"] for row in report["namespaces"]] == ["old-a", "old-c"]
    assert [row["namespace"] for row in report["failed"]] == ["old-b"]
    errors_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    (error_line,) = errors_lines
    assert "namespace 'old-b'" in error_line
    assert key not in result.stderr + result.stdout
    for namespace in ("old-a", "old-c"):
        assert run("ls", "-n", namespace, env=env).stdout == ""
    # Text output says the same: the other namespaces are collected, the failure is counted.
    result = run("gc", "--older-than", "0s", "--force", env=env)
    assert result.returncode == 8
    assert "removed 0 namespaces; 1 could not be collected" in result.stderr


def _save_dated(namespace: str, created_at: datetime) -> None:
    """Save one artifact into ``namespace`` of the default filesystem root, stamped ``created_at`` (as a writer
    whose clock reads that time stamps it)."""
    from artifactstore_core import create_store

    with create_store("filesystem", namespace=namespace, root=str(_DEFAULT_ROOT[-1])) as store:
        store.save("x", Message(content="payload", created_at=created_at))


@pytest.mark.timeout(60)
def test_gc_refuses_an_age_under_its_minimum_without_force() -> None:
    # An age shorter than the longest step (which saves nothing while it runs), or than the clock skew between
    # a writer and gc's machine, collects executions still running; gc took any age, 0s included.
    _save_dated("running", datetime.now(UTC) - timedelta(minutes=20))
    refused = run("gc", "--older-than", "10m")
    assert refused.returncode == 2, refused.stderr
    assert "--older-than 10m is shorter than 1h" in refused.stderr
    assert "--force" in refused.stderr
    assert run("ls", "-n", "running").stdout != ""
    # A dry run deletes nothing: it says what the forced gc would remove.
    dry = run("gc", "--older-than", "10m", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would remove namespace 'running'")
    forced = run("gc", "--older-than", "10m", "--force")
    assert forced.returncode == 0, forced.stderr
    assert run("ls", "-n", "running").stdout == ""


@pytest.mark.timeout(60)
def test_gc_keeps_and_reports_a_namespace_dated_in_its_future() -> None:
    # A writer whose clock is ahead of gc's stamps its artifacts in gc's future: such a namespace is kept, and
    # the skew it shows (writers' clocks disagree with gc's, so one behind may be collected running) is said.
    _save_dated("ahead", datetime.now(UTC) + timedelta(hours=3))
    _save_dated("old", datetime.now(UTC) - timedelta(days=30))
    result = run("gc", "--older-than", "7d", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["namespace"] for row in report["namespaces"]] == ["old"]
    (warning,) = report["warnings"]
    assert "namespace 'ahead'" in warning
    assert "dated 3h in the future" in warning
    assert f"warning: {warning}" in result.stderr
    assert run("ls", "-n", "ahead").stdout != ""
    # Not for a clock a moment ahead, as NTP keeps machines: only beyond the tolerance.
    _save_dated("barely", datetime.now(UTC) + timedelta(seconds=5))
    quiet = run("gc", "--older-than", "7d", "--json")
    assert [w for w in json.loads(quiet.stdout)["warnings"] if "'barely'" in w] == []


@pytest.mark.timeout(60)
def test_counts_of_one_are_singular() -> None:
    # "removed 1 artifacts", "would remove 1 namespaces".
    assert run("put", "-n", "one-a", "x", "-", stdin=b"payload").returncode == 0
    dry = run("clear", "--dry-run", "-n", "one-a")
    assert dry.stdout == "would remove 1 artifact from namespace 'one-a'\n"
    gc = run("gc", "--older-than", "0s", "--dry-run")
    assert gc.stdout.startswith("would remove namespace 'one-a': 1 artifact, newest ")
    assert gc.stderr == "would remove 1 namespace\n"
    assert run("put", "-n", "one-a", "y", "-", stdin=b"payload").returncode == 0
    gc = run("gc", "--older-than", "0s", "--force")
    assert gc.stdout.startswith("removed namespace 'one-a': 2 artifacts, newest ")
    assert gc.stderr == "removed 1 namespace\n"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["filesystem", "redis"])
def test_ls_under_a_signing_key_lists_what_verifies_and_reports_the_rest(
    kind: str, tmp_path: Path, redis_url: str
) -> None:
    # One unsigned artifact (or one signed with another key) made the whole of ls fail.
    base = {**_backend_env(kind, tmp_path, redis_url), "ARTIFACT_STORE_NAMESPACE": f"ls-signed-{kind}"}
    key, other = "canary-ls-key-1a2b", "canary-ls-other-3c4d"
    for step_id, signing_key in [("a-signed", key), ("b-unsigned", None), ("c-signed", key), ("d-other", other)]:
        env = {**base, **({"ARTIFACT_STORE_SIGNING_KEY": signing_key} if signing_key else {})}
        assert run("put", step_id, "-", env=env, stdin=b"payload").returncode == 0
    env = {**base, "ARTIFACT_STORE_SIGNING_KEY": key}
    result = run("ls", env=env)
    assert result.returncode == 8, result.stderr  # ArtifactCorruptedError's family
    assert [line.split()[-1] for line in result.stdout.splitlines()] == ["a-signed", "c-signed"]
    failed = [line for line in result.stderr.splitlines() if line.startswith("error: cannot list")]
    assert len(failed) == 2
    assert "'b-unsigned'" in failed[0]
    assert "not signed" in failed[0]
    assert "'d-other'" in failed[1]
    assert key not in result.stderr
    assert other not in result.stderr
    result = run("ls", "--json", env=env)
    assert result.returncode == 8
    assert [row["step_id"] for row in json.loads(result.stdout)] == ["a-signed", "c-signed"]
    # Without a key, the signed ones are the ones that cannot be read: exit 5, as for get.
    result = run("ls", env=base)
    assert result.returncode == 5
    assert [line.split()[-1] for line in result.stdout.splitlines()] == ["b-unsigned"]
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: cannot list")]) == 3
    # get still refuses what does not verify.
    assert run("get", "b-unsigned", "-o", str(tmp_path / "out"), env=env).returncode == 8


@pytest.mark.parametrize(("media_type", "reason"), [("", "must not be empty"), ("text/x\nevil", "control character")])
def test_put_refuses_an_empty_media_type_or_one_with_a_control_character(media_type: str, reason: str) -> None:
    # `put --media-type ""` stored application/octet-stream (a message's "default"), and a newline was stored
    # as it was, breaking ls's lines.
    result = run("put", "x", "-", "--media-type", media_type, stdin=b"payload")
    assert result.returncode == 2
    assert b"Invalid value for '--media-type'" in result.stderr
    assert reason.encode() in result.stderr
    assert run("ls").stdout == ""


def test_times_are_iso_8601_in_json_and_labelled_utc_in_text() -> None:
    # ls --json and stat --json printed str(datetime) ("2026-01-02 03:04:05.123+00:00") where gc printed
    # isoformat(); ls showed UTC times without saying so.
    assert run("put", "t", "-", stdin=b"payload").returncode == 0
    (listed,) = json.loads(run("ls", "--json").stdout)
    stated = json.loads(run("stat", "t", "--json").stdout)
    for created in (listed["created_at"], stated["created_at"]):
        assert "T" in created
        assert created.endswith("+00:00")
        assert datetime.fromisoformat(created).isoformat() == created
    line = run("ls").stdout.strip()
    assert f"{datetime.fromisoformat(listed['created_at']):%Y-%m-%d %H:%M:%S} UTC" in line
    assert f"created_at: {listed['created_at']}" in run("stat", "t").stdout.splitlines()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["filesystem", "redis"])
def test_clear_dry_run_counts_what_does_not_verify_and_names_it(kind: str, tmp_path: Path, redis_url: str) -> None:
    # One unsigned artifact (or one signed with another key) made the whole dry run fail, counting nothing,
    # though clear removes it with the others.
    base = {**_backend_env(kind, tmp_path, redis_url), "ARTIFACT_STORE_NAMESPACE": f"clear-dry-{kind}"}
    key, other = "canary-clear-key-5f6a", "canary-clear-other-7b8c"
    for step_id, signing_key in [("a-signed", key), ("b-unsigned", None), ("c-signed", key), ("d-other", other)]:
        env = {**base, **({"ARTIFACT_STORE_SIGNING_KEY": signing_key} if signing_key else {})}
        assert run("put", step_id, "-", env=env, stdin=b"payload").returncode == 0
    env = {**base, "ARTIFACT_STORE_SIGNING_KEY": key}
    result = run("clear", "--dry-run", env=env)
    assert result.returncode == 8, result.stderr  # as ls: the first failure's code (ArtifactCorruptedError)
    assert result.stdout == (
        f"would remove 4 artifacts from namespace 'clear-dry-{kind}' (2 of them could not be verified)\n"
    )
    failed = [line for line in result.stderr.splitlines() if line.startswith("error: cannot verify")]
    assert len(failed) == 2
    assert "'b-unsigned'" in failed[0]
    assert "'d-other'" in failed[1]
    assert key not in result.stderr + result.stdout
    assert other not in result.stderr + result.stdout
    # Without a key, the signed ones cannot be verified: exit 5, as for ls and get.
    result = run("clear", "--dry-run", env=base)
    assert result.returncode == 5
    assert "would remove 4 artifacts" in result.stdout
    # The count is what clear then removes.
    assert json.loads(run("ls", "--json", env={**base, "ARTIFACT_STORE_SIGNING_KEY": key}).stdout)
    assert run("clear", "--yes", env=env).stdout == "removed 4 artifacts\n"
    result = run("clear", "--dry-run", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"would remove 0 artifacts from namespace 'clear-dry-{kind}'\n",
        "",
    )


#: A media type, schema name and metadata as an artifact stored before saves refused control characters
#: (or written by another tool) can hold them: escape sequences that clear the screen and retitle the window.
_HOSTILE = "\x1b[2J\x1b]0;PWNED\x07"


def test_text_from_storage_is_shown_escaped_and_json_stays_exact(tmp_path: Path) -> None:
    from artifactstore_core import create_store
    from artifactstore_core.message import FrozenDict, SchemaInfo, trusted_message

    # Built as a decoder builds a stored message, past Message's validation, which refuses such a media type.
    message = trusted_message(
        b"payload",
        SchemaInfo(name=f"schema{_HOSTILE}"),
        FrozenDict({f"key{_HOSTILE}": f"value{_HOSTILE}"}),
        f"text/plain{_HOSTILE}",
        datetime.now().astimezone(),
    )
    step_id = "evil\u202eid"  # a legal id: a right-to-left override, which reorders what the line shows
    with create_store("filesystem", root=_DEFAULT_ROOT[-1]) as store:
        store.save(step_id, message)
    escaped = "\\x1b[2J\\x1b]0;PWNED\\x07"
    listing = run("ls")
    assert listing.returncode == 0, listing.stderr
    assert "\x1b" not in listing.stdout
    assert "\u202e" not in listing.stdout
    assert listing.stdout.rstrip().endswith(f"text/plain{escaped}  evil\\u202eid")
    stated = run("stat", step_id)
    assert stated.returncode == 0, stated.stderr
    assert f"media_type: text/plain{escaped}" in stated.stdout.splitlines()
    assert f"schema_name: schema{escaped}" in stated.stdout.splitlines()
    assert "step_id: evil\\u202eid" in stated.stdout.splitlines()
    # JSON is exact: the characters themselves, as JSON escapes.
    (row,) = json.loads(run("ls", "--json").stdout)
    assert (row["step_id"], row["media_type"]) == (step_id, f"text/plain{_HOSTILE}")
    assert json.loads(run("stat", step_id, "--json").stdout)["schema_name"] == f"schema{_HOSTILE}"


def test_messages_on_stderr_and_plugin_statuses_are_shown_escaped(tmp_path: Path) -> None:
    # An error's text comes from a backend (a server's reply, a file name), a plugin's status from its import.
    install_fake_distribution(
        tmp_path,
        "hostile-backend",
        "0.1",
        {"hostile": "hostile_backend", "hostileimport": "hostile_import"},
        {
            "hostile_backend": f"""
            from artifactstore_core import BackendSpec, errors, hookimpl

            def factory(ctx):
                raise errors.BackendError("server said {_HOSTILE.encode("unicode_escape").decode()}")

            @hookimpl
            def artifactstore_register_backends(register):
                register(BackendSpec(name="hostile", factory=factory))
            """,
            "hostile_import": f"raise ImportError('no lib{_HOSTILE.encode('unicode_escape').decode()}')\n",
        },
    )
    env = {"PYTHONPATH": str(tmp_path)}
    result = run("ls", "-b", "hostile", env=env)
    assert result.returncode == 1
    assert result.stderr == "error: BackendError: server said \\x1b[2J\\x1b]0;PWNED\\x07\n"
    table = run("backends", env=env)
    assert table.returncode == 0
    assert "\x1b" not in table.stdout
    assert "no lib\\x1b[2J\\x1b]0;PWNED\\x07" in table.stdout
    rows = {row["name"]: row for row in json.loads(run("backends", "--json", env=env).stdout)}
    assert f"no lib{_HOSTILE}" in rows["hostileimport"]["status"]
    # click's own messages quote the arguments: escaped too (off a terminal click drops the CSI sequence).
    result = run("get", "x", f"extra{_HOSTILE}")
    assert result.returncode == 2
    assert "\x1b" not in result.stderr
    assert "\\x1b]0;PWNED\\x07)" in result.stderr


_DISPLAYED = "café 👩\u200d👩\u200d👧 🏴\U000e0067\U000e0062\U000e007f"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain ascii/text; q=1", "plain ascii/text; q=1"),
        ("tab\tnew\nline\rcr\x7fdel\x9bcsi", "tab\\tnew\\nline\\rcr\\x7fdel\\x9bcsi"),
        ("a\u202eb\u2066c\u200fd\u2028e", "a\\u202eb\\u2066c\\u200fd\\u2028e"),
        # Characters that display as meant stay: accents, emoji joined by a zero-width joiner, a flag's tags.
        (_DISPLAYED, _DISPLAYED),
    ],
)
def test_what_text_output_escapes(text: str, shown: str) -> None:
    from artifactstore_core._wording import visible as _visible

    assert _visible(text) == shown
    assert _visible(shown) == shown  # escaping twice changes nothing: the table measures escaped cells


@pytest.mark.timeout(120)
def test_a_listing_reads_a_run_of_artifacts_that_fail_verification_one_page_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each failure reset the page size to 1,000 and took ten halvings to find the next failing artifact, each
    # a scan of the namespace: `ls` of 500 artifacts saved before a signing key was set took minutes.
    from artifactstore_core import create_store
    from artifactstore_core.cli import _verified_listing

    monkeypatch.setenv("ARTIFACT_STORE_FILESYSTEM_ROOT", str(tmp_path / "root"))
    # Runs of unsigned artifacts between signed ones, long and short, at the start and at the end.
    unsigned = [f"u{i:03d}" for i in [*range(0, 40), *range(41, 43), *range(60, 150)]]
    signed = [f"u{i:03d}" for i in [40, *range(43, 60), 150, 151]]
    with create_store("filesystem", namespace="runs") as store:
        store.save_many([(step_id, Message(content=b"old")) for step_id in unsigned])
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", "canary-runs-key")
    reads = [0]
    list_page = ArtifactStore.list_page

    def counted(self: ArtifactStore, **kwargs: Any) -> list[ArtifactInfo]:
        reads[0] += 1
        return list_page(self, **kwargs)

    with create_store("filesystem", namespace="runs") as store:
        store.save_many([(step_id, Message(content=b"new")) for step_id in signed])
        monkeypatch.setattr(ArtifactStore, "list_page", counted)
        infos, failures = _verified_listing(store)
    assert [info.step_id for info in infos] == signed
    assert [failure.step_id for failure in failures] == unsigned
    # One read per failing artifact, plus the halvings to the first and the doublings after each run.
    assert reads[0] <= len(unsigned) + 40, reads[0]


def test_rm_of_an_id_given_twice_removes_it_once_and_stat_shows_no_schema_as_a_dash() -> None:
    # `rm a a` removed a, then failed with exit 3: "no artifact 'a' ...; removed the other 1".
    assert run("put", "a", "-", stdin=b"payload").returncode == 0
    result = run("rm", "a", "a")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert run("stat", "a").returncode == 3
    # stat printed Python's "schema_name: None" for an artifact without a schema.
    assert run("put", "b", "-", stdin=b"payload").returncode == 0
    assert "schema_name: -" in run("stat", "b").stdout.splitlines()
    assert json.loads(run("stat", "b", "--json").stdout)["schema_name"] is None


@pytest.mark.parametrize("kind", ["filesystem", "redis"])
def test_stat_meta_shows_what_put_meta_recorded(kind: str, tmp_path: Path, redis_url: str) -> None:
    # Metadata recorded by `put --meta` was shown by no command (stat prints the info, which has none).
    env = {**_backend_env(kind, tmp_path, redis_url), "ARTIFACT_STORE_NAMESPACE": f"stat-meta-{kind}"}
    put = run("put", "m", "-", "--meta", "owner=ana", "--meta", "note=two\nlines", env=env, stdin=b"x")
    assert put.returncode == 0, put.stderr
    lines = run("stat", "m", "--meta", env=env).stdout.splitlines()
    assert 'metadata: {"note": "two\\nlines", "owner": "ana"}' in lines
    assert json.loads(run("stat", "m", "--meta", "--json", env=env).stdout)["metadata"] == {
        "note": "two\nlines",
        "owner": "ana",
    }
    # Not read unless asked: stat stays one info lookup.
    assert "metadata" not in json.loads(run("stat", "m", "--json", env=env).stdout)


def test_demo_help_names_the_commands_default_backend() -> None:
    # It said "default: ARTIFACT_STORE_BACKEND", while demo, as every data command, runs on filesystem when
    # none is configured.
    assert "else filesystem when installed" in " ".join(run("demo", "--help").stdout.split())


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("get", "blob", "-o", ""), "'-o' / '--output'"),
        (("put", "other", ""), "'[FILE|-]'"),
        (("ls", "-b", ""), "'--backend' / '-b'"),
        (("gc", "--older-than", "1s", "-b", ""), "'--backend' / '-b'"),
        (("demo", "-b", ""), "'--backend' / '-b'"),
    ],
)
def test_an_empty_file_or_backend_is_a_usage_error_not_the_default(args: tuple[str, ...], option: str) -> None:
    # A script's unset variable (`get blob -o "$OUT"`): `-o ""` wrote the binary payload to stdout, `put ID ""`
    # failed reading the current directory ("cannot read '': Is a directory"), `-b ""` used the default backend.
    assert run("put", "blob", "-", stdin=b"\0binary\xff").returncode == 0
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert f"Invalid value for {option}: must not be empty" in result.stderr
    assert [line.split()[-1] for line in run("ls").stdout.splitlines()] == ["blob"]


def test_variables_set_in_lower_case_are_used_and_shown_as_the_settings_read_them() -> None:
    # pydantic-settings reads `artifact_store_backend` as ARTIFACT_STORE_BACKEND; the command did not see it:
    # it used filesystem (its own default) where the library used memory, and `config` showed the value read
    # from the variable with the source "default".
    assert run("put", "on-filesystem", "-", stdin=b"x").returncode == 0
    env = {"artifact_store_backend": "memory", "Artifact_Store_Namespace": "lower"}
    result = run("config", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["ARTIFACT_STORE_BACKEND"] == {**rows["ARTIFACT_STORE_BACKEND"], "value": "memory", "source": "env"}
    assert rows["ARTIFACT_STORE_NAMESPACE"] == {**rows["ARTIFACT_STORE_NAMESPACE"], "value": "lower", "source": "env"}
    result = run("ls", env={"artifact_store_backend": "memory"})
    assert (result.returncode, result.stdout) == (0, "")


def test_demo_against_a_backend_that_is_down_exits_6_and_says_how_to_resume_with_the_command() -> None:
    stopped = {
        "ARTIFACT_STORE_BACKEND": "redis",
        "ARTIFACT_STORE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "ARTIFACT_STORE_REDIS_RETRY_ATTEMPTS": "1",
    }
    # A given execution id is looked up first: the BackendUnavailableError (a ConnectionError too) was
    # reported as "cannot write to stdout", exit 10.
    result = run("demo", "-n", "my run", env=stopped)
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: BackendUnavailableError: redis at redis://127.0.0.1:")
    assert "stdout" not in result.stderr
    # A new execution fails in its first step: the StepFailedError exited 1, hiding the "retry later" of
    # its cause, and said how to resume from Python (execution_id='...').
    result = run("demo", "-b", "redis", env=stopped)
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: StepFailedError: step 'fetch' failed: BackendUnavailableError: ")
    execution = result.stderr.split("Execution '")[1].split("'")[0]
    assert f"run `artifactstore demo -b redis -n {execution}` to resume from the failed step" in result.stderr
    assert "execution_id=" not in result.stderr


@pytest.mark.timeout(120)
def test_demo_interrupted_by_ctrl_c_says_how_to_resume_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The pipeline names an interrupted execution in a note of the KeyboardInterrupt, which the command's
    # `aborted` did not show: a fresh execution's id, and with it the way to its kept artifacts, was lost.
    from artifactstore_core.cli import main
    from artifactstore_core.pipeline import example

    monkeypatch.setenv("ARTIFACT_STORE_FILESYSTEM_ROOT", str(tmp_path))
    split_text = example.split_text

    def pressed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C while the second step runs: the first step's output is kept

    monkeypatch.setattr(example, "split_text", pressed)
    assert main(["demo", "-b", "filesystem"]) == 130
    err = capsys.readouterr().err
    assert err.endswith("aborted\n"), err
    execution = err.split("execution '")[1].split("'")[0]
    again = f"artifactstore demo -b filesystem -n {execution}"
    assert f"was interrupted; the artifacts of the steps that finished are kept: run `{again}` to resume" in err
    monkeypatch.setattr(example, "split_text", split_text)
    assert main(again.split()[1:]) == 0
    resumed = capsys.readouterr().out
    assert resumed.startswith(f"execution {execution} on backend 'filesystem'")
    assert "fetch        reused" in resumed


@pytest.mark.parametrize(
    ("option", "shown"), [(("--meta", "k=caf\xe9"), "--meta"), (("--media-type", "text/\xff"), "'--media-type'")]
)
def test_put_refuses_an_option_value_that_is_not_text_in_the_locale(option: tuple[str, str], shown: str) -> None:
    # Bytes the locale cannot decode reach Python as lone surrogates, which no stored text holds: the save
    # failed with exit 8 (SerializationError, "the data is bad") and pydantic's whole validation report.
    name, value = option
    result = subprocess.run(
        [str(SCRIPT), "put", "x", "-", name, value.encode("latin-1")],
        capture_output=True,
        input=b"payload",
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_STORE_")},
            "ARTIFACT_STORE_FILESYSTEM_ROOT": str(_DEFAULT_ROOT[-1]),
            "LC_ALL": "C.UTF-8",
        },
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    byte = value.encode("latin-1")[-1]
    assert f"Invalid value for {shown}: holds the byte \\x{byte:02x}, which is not utf-8 text".encode() in result.stderr
    assert b"pydantic" not in result.stderr
    assert run("ls").stdout == ""


def test_config_shows_an_empty_namespace_argument_as_the_argument() -> None:
    # `config -n ""` showed the empty value with the source "default", as if nothing had been given.
    result = run("config", "--json", "-n", "", env={"ARTIFACT_STORE_NAMESPACE": "from-env"})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["ARTIFACT_STORE_NAMESPACE"] == {**rows["ARTIFACT_STORE_NAMESPACE"], "value": "", "source": "argument"}


def test_rm_checks_every_id_before_removing_any() -> None:
    for step_id in ("a", "c"):
        assert run("put", step_id, "-", stdin=b"x").returncode == 0
    result = run("rm", "a", "b\x01", "c")
    assert result.returncode == 5, (result.stdout, result.stderr)
    assert result.stderr == "error: InvalidStepIdError: step id 'b\\x01' contains the control character '\\x01'\n"
    # Nothing removed: `a`, before the invalid id, was removed and `c`, after it, kept.
    assert [line.split()[-1] for line in run("ls").stdout.splitlines()] == ["a", "c"]


@pytest.mark.timeout(120)
def test_messages_on_stderr_show_ids_as_given_on_one_line() -> None:
    # rich replaced emoji codes in every message (`saved 'run<smiling face>1'`, an id that does not exist),
    # and broke a message longer than 80 columns into lines when stderr is a file or a pipe (a CI log).
    step_id = "run:smile:1-" + "step-" * 30
    saved = run("put", step_id, "-b", "filesystem", stdin=b"data")
    assert saved.returncode == 0, saved.stderr
    assert saved.stderr == f"saved {step_id!r}\n".encode()
    missing = run("get", "x:warning:y", "-b", "filesystem")
    assert missing.returncode == 3
    assert missing.stderr.startswith("error: ArtifactNotFoundError: no artifact 'x:warning:y' in namespace")
    assert missing.stderr.count("\n") == 1
    listed = run("ls", "--json")
    assert [row["step_id"] for row in json.loads(listed.stdout)] == [step_id]


@pytest.mark.timeout(120)
def test_config_json_marks_secret_settings_whether_or_not_they_are_set() -> None:
    # "secret" followed the value: an unset signing key or redis password was "secret": false.
    unset = {row["name"]: row for row in json.loads(run("config", "--json", "-b", "redis").stdout)}
    given = {
        row["name"]: row
        for row in json.loads(
            run(
                "config", "--json", "-b", "redis",
                env={"ARTIFACT_STORE_SIGNING_KEY": "k" * 32, "ARTIFACT_STORE_REDIS_PASSWORD": "p" * 16},
            ).stdout
        )
    }  # fmt: skip
    for name in ("ARTIFACT_STORE_SIGNING_KEY", "ARTIFACT_STORE_REDIS_PASSWORD", "ARTIFACT_STORE_REDIS_URL"):
        assert unset[name]["secret"] is True, name
        assert given[name]["secret"] is True, name
        assert given[name]["value"] == "**********"
    assert unset["ARTIFACT_STORE_SIGNING_KEY"]["value"] is None
    secrets = {name for name, row in unset.items() if row["secret"]}
    assert secrets == {name for name, row in given.items() if row["secret"]}
    assert unset["ARTIFACT_STORE_REDIS_KEY_PREFIX"]["secret"] is False


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["put", "caf\udce9"], "'STEP_ID'"),
        (["get", "caf\udce9"], "'STEP_ID'"),
        (["stat", "caf\udce9"], "'STEP_ID'"),
        (["rm", "ok", "caf\udce9"], "'STEP_IDS...'"),
        (["ls", "-n", "run-\udcff"], "'--namespace' / '-n'"),
        (["demo", "-n", "run-\udcff"], "'--namespace' / '-n'"),
    ],
)
def test_an_id_or_namespace_with_a_byte_the_locale_cannot_decode_is_a_usage_error(args: list[str], named: str) -> None:
    # A Latin-1 file name used as an id under a UTF-8 locale (`for f in *; do artifactstore put "$f" "$f"`)
    # was refused as "step id 'caf\udce9' contains a lone surrogate" (exit 5), naming no byte the user typed.
    # subprocess encodes the surrogate back into the byte (0xe9, 0xff) the shell would have passed.
    result = run(*args, env={"LC_ALL": "C.UTF-8"}, stdin=b"data")
    assert result.returncode == 2, result.stderr
    byte = "e9" if "caf\udce9" in args else "ff"
    assert f"Invalid value for {named}: holds the byte \\x{byte}, which is not utf-8 text".encode() in result.stderr
    assert b"surrogate" not in result.stderr
    assert json.loads(run("ls", "--json").stdout) == []
