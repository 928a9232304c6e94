"""Plugin discovery and loading through real entry points of (fake) installed distributions."""

from __future__ import annotations

import re
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from artifactstore_core import BackendNotFoundError, Message, PluginLoadError, create_store, errors
from artifactstore_core.registry import ENTRY_POINT_GROUP, PluginHost, plugin_host
from artifactstore_core.testing_errors import reachable_text
from fakedist import install_fake_distribution


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_unknown_name_suggests_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memroy")
    with pytest.raises(BackendNotFoundError) as info:
        create_store()
    text = str(info.value)
    assert "did you mean 'memory'?" in text
    assert "installed backends:" in text
    assert "memory" in text.split("installed backends:")[1]


@pytest.mark.parametrize(("given", "meant"), [("MEMORY", "memory"), ("Redis", "redis"), ("S3", "s3")])
def test_a_name_in_the_wrong_case_suggests_the_right_one(
    monkeypatch: pytest.MonkeyPatch, given: str, meant: str
) -> None:
    # Names are case-sensitive (entry point names); "MEMORY" got no "did you mean" at all.
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", given)
    with pytest.raises(BackendNotFoundError) as info:
        create_store()
    assert f"no backend named {given!r} is installed; did you mean {meant!r}?" in str(info.value)


def test_a_name_in_the_wrong_case_outside_the_allow_list_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # "add it to load it" sent the user to put "MEMORY" in the allow-list, where it still would not load.
    monkeypatch.setenv("ARTIFACT_STORE_PLUGINS", "memory")
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "MEMORY")
    with pytest.raises(BackendNotFoundError) as info:
        create_store()
    assert "did you mean 'memory'?; installed backends: memory" in str(info.value)


def test_known_backend_not_installed_names_the_install_command() -> None:
    # Simulate an environment with only the memory plugin (test_project_rules proves it in a real one).
    only_memory = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "memory"]
    host = PluginHost(entry_points=lambda: only_memory)
    for name in ("redis", "s3", "http", "filesystem"):
        with pytest.raises(BackendNotFoundError) as info:
            host.load(name)
        assert f"install it with: pip install artifactstore-{name}" in str(info.value)
        assert "installed backends: memory" in str(info.value)
    assert host.load("memory").name == "memory"


def test_broken_plugin_fails_alone(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_distribution(
        site,
        "artifactstore-broken",
        "1.2.3",
        {"broken": "artifactstore_broken_mod"},
        {"artifactstore_broken_mod": "raise RuntimeError('boom at import')\n"},
    )
    # The memory backend still works in this process ...
    with create_store(namespace="broken-test") as store:
        store.save("a", Message(content=1))
        assert store.get("a").content == 1
        store.clear()
    # ... the listing reports the broken one without crashing ...
    infos = {info.name: info for info in plugin_host().backends()}
    assert infos["memory"].status == "loaded"
    assert "boom at import" in infos["broken"].status
    assert infos["broken"].distribution == "artifactstore-broken"
    # ... and selecting it names its distribution and version, with the original chained.
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "broken")
    with pytest.raises(PluginLoadError) as info:
        create_store()
    assert "artifactstore-broken 1.2.3" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_plugin_whose_hook_raises(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_distribution(
        site,
        "artifactstore-badhook",
        "0.0.1",
        {"badhook": "badhook_mod"},
        {
            "badhook_mod": """
                from artifactstore_core import hookimpl

                @hookimpl
                def artifactstore_register_backends(register):
                    raise ValueError("cannot register")
            """
        },
    )
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "badhook")
    with pytest.raises(PluginLoadError, match=re.escape("artifactstore-badhook 0.0.1")) as info:
        create_store()
    assert isinstance(info.value.__cause__, ValueError)


def test_plugin_registering_another_name(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_distribution(
        site,
        "artifactstore-liar",
        "0.1",
        {"liar": "liar_mod"},
        {
            "liar_mod": """
                from artifactstore_core import BackendSpec, hookimpl

                @hookimpl
                def artifactstore_register_backends(register):
                    register(BackendSpec(name="memory", factory=lambda context: None))
            """
        },
    )
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "liar")
    with pytest.raises(PluginLoadError, match=re.escape("registered 'memory', not backend 'liar'")):
        create_store()
    # The liar did not replace the real memory backend.
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    with create_store() as store:
        assert store.backend_name == "memory"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # register() given something that is not a BackendSpec: it used to escape as an AttributeError from
        # the core, which crashed `artifactstore backends` and every other command.
        (
            "@hookimpl\ndef artifactstore_register_backends(register):\n    register({'name': 'NAME'})\n",
            "passed register() a dict, not an artifactstore_core.BackendSpec",
        ),
        (
            "@hookimpl\ndef artifactstore_register_backends(register):\n"
            "    return BackendSpec(name='NAME', factory=lambda ctx: None)\n",
            "returned a BackendSpec; call register(spec) with each BackendSpec instead of returning it",
        ),
        (
            "def artifactstore_register_backends(register):\n"
            "    register(BackendSpec(name='NAME', factory=lambda ctx: None))\n",
            "is not decorated with @artifactstore_core.hookimpl",
        ),
        (
            "@hookimpl\ndef artifactstore_register_backend(register):\n"
            "    register(BackendSpec(name='NAME', factory=lambda ctx: None))\n",
            "no artifactstore_register_backends hook (found 'artifactstore_register_backend': a misspelling?)",
        ),
        (
            "@hookimpl\ndef artifactstore_register_backends(register):\n"
            "    register(BackendSpec(name='NAME_x', factory=lambda ctx: None))\n",
            "registered 'NAME_x', not backend 'NAME'; a BackendSpec's name must equal its entry point's name",
        ),
        (
            "@hookimpl\ndef artifactstore_register_backends(register):\n"
            "    register(BackendSpec(name='NAME', factory=None))\n",
            "its factory is a NoneType, not a callable",
        ),
        (
            "from pydantic_settings import BaseSettings\n\n@hookimpl\ndef artifactstore_register_backends(register):\n"
            "    register(BackendSpec(name='NAME', factory=lambda ctx: None, settings_model=BaseSettings()))\n",
            "its settings_model is a BaseSettings, not a BackendSettings subclass",
        ),
        # A settings model without its own env_prefix reads other programs' variables (a field `path` takes
        # the shell's PATH); one without a config_table reads the core's top level of the config file.
        (
            "from artifactstore_core import BackendSettings\n\nclass S(BackendSettings):\n"
            "    config_table = 'NAME'\n    path: str = 'x'\n\n@hookimpl\n"
            "def artifactstore_register_backends(register):\n"
            "    register(BackendSpec(name='NAME', factory=lambda ctx: None, settings_model=S))\n",
            "its settings_model S has env_prefix '', so it would read other programs' variables; set "
            "model_config = SettingsConfigDict(env_prefix='ARTIFACT_STORE_NAME_')",
        ),
        (
            "from artifactstore_core import BackendSettings\nfrom pydantic_settings import SettingsConfigDict\n\n"
            "class S(BackendSettings):\n    model_config = SettingsConfigDict(env_prefix='ARTIFACT_STORE_X_')\n"
            "    path: str = 'x'\n\n@hookimpl\ndef artifactstore_register_backends(register):\n"
            "    register(BackendSpec(name='NAME', factory=lambda ctx: None, settings_model=S))\n",
            "its settings_model S sets no config_table, so it would read the config file's top level (the core's "
            "settings); set config_table = 'NAME'",
        ),
    ],
    ids=[
        "not-a-spec",
        "returned",
        "unmarked",
        "misspelt",
        "misnamed",
        "no-factory",
        "settings-instance",
        "no-env-prefix",
        "no-config-table",
    ],
)
def test_a_plugin_that_registers_wrongly_is_named_and_fails_alone(
    site: Path, monkeypatch: pytest.MonkeyPatch, body: str, expected: str
) -> None:
    name = f"wrong{uuid.uuid4().hex[:8]}"
    source = "from artifactstore_core import BackendSpec, hookimpl\n\n" + body.replace("NAME", name)
    install_fake_distribution(site, "artifactstore-wrong", "0.3", {name: f"{name}_mod"}, {f"{name}_mod": source})
    expected = expected.replace("ARTIFACT_STORE_NAME_", f"ARTIFACT_STORE_{name.upper()}_").replace("NAME", name)
    # The listing reports it and still lists the others ...
    infos = {info.name: info for info in plugin_host().backends()}
    assert infos["memory"].status == "loaded"
    assert expected in infos[name].status
    assert "artifactstore-wrong 0.3" in infos[name].status
    # ... and selecting it is a PluginLoadError that says what to fix.
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", name)
    with pytest.raises(PluginLoadError) as info:
        create_store()
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("attribute", "named"),
    [("Store", "the class Store"), ("artifactstore_register_backends", "the hook function itself")],
)
def test_an_entry_point_naming_an_object_in_the_module_says_to_name_the_module(
    site: Path, monkeypatch: pytest.MonkeyPatch, attribute: str, named: str
) -> None:
    # "module:attribute" is how many plugin systems name a class or a function; here the value is the module.
    # It used to say "the module defines no artifactstore_register_backends hook" about a module that does.
    name = f"attr{uuid.uuid4().hex[:8]}"
    source = f"""
        from artifactstore_core import ArtifactStore, BackendSpec, hookimpl

        class Store(ArtifactStore):
            backend_name = {name!r}

        @hookimpl
        def artifactstore_register_backends(register):
            register(BackendSpec(name={name!r}, factory=lambda ctx: Store(namespace=ctx.namespace)))
    """
    install_fake_distribution(
        site, "artifactstore-attr", "0.2", {name: f"{name}_mod:{attribute}"}, {f"{name}_mod": source}
    )
    expected = f"the entry point names {named}, not the module that defines the hook; make its value the module: "
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", name)
    with pytest.raises(PluginLoadError) as info:
        create_store()
    assert f"{expected}'{name}_mod'" in str(info.value)
    assert "artifactstore-attr 0.2" in str(info.value)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        # Forgetting codec=context.codec silently dropped ARTIFACT_STORE_SIGNING_KEY: the store wrote unsigned
        # artifacts and accepted ones forged without the key, and the conformance kit (run without a key)
        # passed it.
        (
            "Store(namespace=ctx.namespace)",
            "built the store with a codec of its own, so the signing key and compression settings "
            "(ARTIFACT_STORE_SIGNING_KEY, ARTIFACT_STORE_COMPRESSION, ARTIFACT_STORE_COMPRESS_THRESHOLD) do not "
            "apply to it; pass codec=context.codec",
        ),
        (
            "Store(codec=ctx.codec)",
            "bound the store to namespace 'default', not 'ns-1'; pass namespace=context.namespace",
        ),
        # A bare AttributeError ('_closed') on first use, far from the cause.
        (
            "Uninitialised()",
            "returned an Uninitialised whose __init__ did not call ArtifactStore.__init__; call "
            "super().__init__(namespace=context.namespace, codec=context.codec)",
        ),
    ],
    ids=["own-codec", "other-namespace", "no-base-init"],
)
def test_a_factory_that_ignores_its_context_is_a_plugin_error(
    site: Path, monkeypatch: pytest.MonkeyPatch, factory: str, expected: str
) -> None:
    name = f"ctx{uuid.uuid4().hex[:8]}"
    source = f"""
        from artifactstore_memory import MemoryStore
        from artifactstore_core import BackendSpec, hookimpl

        class Store(MemoryStore):
            backend_name = {name!r}

        class Uninitialised(MemoryStore):
            backend_name = {name!r}

            def __init__(self):
                pass

        @hookimpl
        def artifactstore_register_backends(register):
            register(BackendSpec(name={name!r}, factory=lambda ctx: {factory}))
    """
    install_fake_distribution(site, "artifactstore-ctx", "0.5", {name: f"{name}_mod"}, {f"{name}_mod": source})
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", name)
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", "a signing key the factory must not drop")
    with pytest.raises(PluginLoadError) as info:
        create_store(namespace="ns-1")
    assert str(info.value) == f"backend {name!r} (artifactstore-ctx 0.5) is broken: its factory {expected}"
    assert "a signing key" not in str(info.value)


def test_a_module_providing_two_backends_is_asked_to_register_once(site: Path) -> None:
    # The hook's contract: called once per plugin. A plugin that sets something up in it (a client pool,
    # a metrics registration) must not find it done twice because a second of its backends was loaded.
    module = f"twin_{uuid.uuid4().hex}"
    install_fake_distribution(
        site,
        "artifactstore-twin",
        "1.0",
        {"twin-a": module, "twin-b": module},
        {
            module: """
from artifactstore_core import BackendSpec, hookimpl
from artifactstore_memory import MemoryStore

CALLS = []

class A(MemoryStore):
    backend_name = "twin-a"

class B(MemoryStore):
    backend_name = "twin-b"

@hookimpl
def artifactstore_register_backends(register):
    CALLS.append("called")
    register(BackendSpec(name="twin-a", factory=lambda c: A(namespace=c.namespace, codec=c.codec)))
    register(BackendSpec(name="twin-b", factory=lambda c: B(namespace=c.namespace, codec=c.codec)))
"""
        },
    )
    with create_store("twin-a") as first, create_store("twin-b") as second:
        assert (first.backend_name, second.backend_name) == ("twin-a", "twin-b")
    assert {info.name: info.status for info in plugin_host().backends()}["twin-b"] == "loaded"
    assert __import__(module).CALLS == ["called"]


def test_two_distributions_claiming_one_name(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for dist in ("artifactstore-twin-a", "artifactstore-twin-b"):
        install_fake_distribution(site, dist, "1.0", {"twin": f"{dist.replace('-', '_')}_mod"}, {})
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "twin")
    with pytest.raises(PluginLoadError) as info:
        create_store()
    assert "artifactstore-twin-a 1.0" in str(info.value)
    assert "artifactstore-twin-b 1.0" in str(info.value)


def test_allow_list(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_distribution(
        site, "artifactstore-never", "1.0", {"never": "never_mod"}, {"never_mod": "raise SystemExit('imported!')\n"}
    )
    monkeypatch.setenv("ARTIFACT_STORE_PLUGINS", "memory")
    assert plugin_host().names() == ["memory"]
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "never")
    with pytest.raises(BackendNotFoundError, match="ARTIFACT_STORE_PLUGINS"):
        create_store()
    listing = {info.name: info.status for info in plugin_host().backends()}
    assert listing["never"] == "not in ARTIFACT_STORE_PLUGINS"


@pytest.mark.parametrize("value", [",", " , ,", ",,"])
def test_an_allow_list_of_no_names_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # It excluded every backend, with "backend 'memory' is not in ARTIFACT_STORE_PLUGINS=; add it to load it".
    monkeypatch.setenv("ARTIFACT_STORE_PLUGINS", value)
    for attempt in (create_store, plugin_host().names, plugin_host().backends):
        with pytest.raises(errors.ConfigurationError, match=r"^ARTIFACT_STORE_PLUGINS is set but names no backend"):
            attempt()


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_allow_list_is_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_PLUGINS", value)
    assert "memory" in plugin_host().names()
    with create_store() as store:
        assert store.backend_name == "memory"


def test_plugins_load_only_when_needed(site: Path) -> None:
    install_fake_distribution(
        site, "artifactstore-lazy", "1.0", {"lazy": "lazy_mod"}, {"lazy_mod": "raise SystemExit('imported!')\n"}
    )
    # Creating a memory store never imports another plugin's module.
    with create_store() as store:
        store.save("x", Message(content=1))
        store.clear()
    assert "lazy" in plugin_host().names()


def test_a_commands_hook_that_raises_costs_only_its_own_plugin_its_commands(site: Path) -> None:
    import click

    # Each plugin's hook is called on its own: the broken one raises after adding a command, which is
    # removed again; the other plugin's command stays, whichever order pluggy calls them in.
    for dist, name, body in (
        ("cmd-broken", "cmdbroken", "cli.command('half')(lambda: None)\n    raise RuntimeError('setup is broken')"),
        ("cmd-fine", "cmdfine", "cli.command('hello')(lambda: None)"),
    ):
        install_fake_distribution(
            site,
            dist,
            "0.1",
            {name: f"{name}_mod"},
            {
                f"{name}_mod": f"""
from artifactstore_core import BackendSpec, hookimpl

@hookimpl
def artifactstore_register_backends(register):
    register(BackendSpec(name={name!r}, factory=lambda ctx: None))

@hookimpl
def artifactstore_register_commands(cli):
    {body}
"""
            },
        )
    group = click.Group()
    problems = plugin_host().call_commands_hook(group)
    assert set(group.commands) >= {"hello"}
    assert "half" not in group.commands
    [problem] = [line for line in problems if "cmdbroken" in line]
    assert "cmd-broken 0.1" in problem
    assert "RuntimeError: setup is broken" in problem
    infos = {info.name: info for info in plugin_host().backends()}
    assert infos["cmdbroken"].spec is not None  # the backend itself still loads
    assert infos["cmdbroken"].commands_error == "RuntimeError: setup is broken"
    assert infos["cmdbroken"].status == "loaded; commands failed: RuntimeError: setup is broken"
    assert infos["cmdfine"].status == "loaded"


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        ("OSError('connect to redis://:hunter2@db:6379 failed')", "BackendError"),
        ("ConnectionRefusedError('hunter2')", "BackendUnavailableError"),
        ("TimeoutError('hunter2')", "BackendTimeoutError"),
        ("PermissionError('hunter2')", "AccessDeniedError"),
        ("ValueError('bad url redis://:hunter2@db')", "ConfigurationError"),
        ("RuntimeError('hunter2')", "BackendError"),
        ("errors.CapacityError('full')", "CapacityError"),
        ("errors.BackendUnavailableError('down') from OSError('redis://:hunter2@db')", "BackendUnavailableError"),
    ],
)
def test_a_factory_error_becomes_a_core_error_naming_the_plugin(site: Path, raised: str, expected: str) -> None:
    module = f"failing_factory_{uuid.uuid4().hex}"  # a new module each time: imports are cached
    install_fake_distribution(
        site,
        "factory-fails",
        "2.0",
        {"failing": module},
        {
            module: f"""
from artifactstore_core import BackendSpec, errors, hookimpl

def factory(ctx):
    raise {raised}

@hookimpl
def artifactstore_register_backends(register):
    register(BackendSpec(name="failing", factory=factory))
"""
        },
    )
    with pytest.raises(errors.ArtifactStoreError) as info:
        create_store("failing")
    assert type(info.value).__name__ == expected
    assert info.value.backend == "failing"
    if "://" in raised:
        # A URL's password: not even an error reporter that walks the links (the suppressed context too)
        # finds it.
        assert "hunter2" not in reachable_text(info.value)
    if " from " in raised:  # the factory's own error, its cause scrubbed
        assert isinstance(info.value.__cause__, errors.RedactedError)
    elif expected != "CapacityError":  # an artifactstore error passes through unchanged
        assert "backend 'failing' (factory-fails 2.0)" in str(info.value)
        assert "hunter2" not in str(info.value)
        cause = info.value.__cause__
        if "://" in raised:
            # The factory's own exception quoted a URL's password: a stand-in with its type name is chained.
            assert isinstance(cause, errors.RedactedError)
            assert cause.original_type == raised.split("(")[0]
            assert "hunter2" not in str(cause)
        else:
            assert type(cause).__name__ == raised.split("(")[0]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ("settings_model=Settings", "refused its settings (ARTIFACT_STORE_MYDB_*)"),
        ("", "refused its configuration (it has no settings of its own)"),
    ],
    ids=["own-prefix", "no-settings"],
)
def test_a_factory_value_error_names_the_variables_its_settings_read(site: Path, settings: str, named: str) -> None:
    # The backend's name upper-cased is not its variables' prefix: "my-db" cannot be part of a variable's name,
    # and this plugin reads ARTIFACT_STORE_MYDB_*; a backend without settings reads none at all.
    module = f"mydb_{uuid.uuid4().hex}"
    install_fake_distribution(
        site,
        "artifactstore-mydb",
        "1.0",
        {"my-db": module},
        {
            module: f"""
from pydantic_settings import SettingsConfigDict
from artifactstore_core import BackendSettings, BackendSpec, hookimpl

class Settings(BackendSettings):
    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_MYDB_")
    config_table = "my-db"
    dsn: str = "db://here"

def factory(ctx):
    raise ValueError("the dsn is not a database")

@hookimpl
def artifactstore_register_backends(register):
    register(BackendSpec(name="my-db", factory=factory, {settings}))
"""
        },
    )
    with pytest.raises(errors.ConfigurationError) as info:
        create_store("my-db")
    assert named in str(info.value)
    assert "MY-DB" not in str(info.value)


def test_a_plugin_cannot_replace_an_existing_command(site: Path) -> None:
    import click

    install_fake_distribution(
        site,
        "cmd-hijack",
        "0.2",
        {"cmdhijack": "cmdhijack_mod"},
        {
            "cmdhijack_mod": """
import click
from artifactstore_core import BackendSpec, hookimpl

@hookimpl
def artifactstore_register_backends(register):
    register(BackendSpec(name="cmdhijack", factory=lambda ctx: None))

@hookimpl
def artifactstore_register_commands(cli):
    cli.command("get")(lambda: click.echo("hijacked"))
    cli.command("own")(lambda: None)
"""
        },
    )
    group = click.Group()
    original = group.command("get")(lambda: None)
    problems = plugin_host().call_commands_hook(group)
    assert group.commands["get"] is original
    assert "own" in group.commands  # its other commands stay
    [problem] = [line for line in problems if "cmdhijack" in line]
    assert "cmd-hijack 0.2" in problem
    assert "'get'" in problem
    info = {info.name: info for info in plugin_host().backends()}["cmdhijack"]
    assert (
        info.status
        == "loaded; commands failed: tried to replace the existing command(s) 'get'; kept the existing one(s)"
    )
    # Run again on the same group (main() called twice in one process): the plugin re-registers its own
    # command freely, and still cannot take the other one.
    problems = plugin_host().call_commands_hook(group)
    assert group.commands["get"] is original
    [problem] = [line for line in problems if "cmdhijack" in line]
    assert "'own'" not in problem


@pytest.mark.parametrize(
    ("where", "body"),
    [
        # A module that exits when a dependency is missing, or parses sys.argv at import as scripts do.
        ("import", "import sys\nsys.exit('needs libfoo')\n"),
        (
            "register hook",
            "from artifactstore_core import hookimpl\n\n@hookimpl\n"
            "def artifactstore_register_backends(register):\n    raise SystemExit(2)\n",
        ),
        (
            "commands hook",
            "from artifactstore_core import BackendSpec, hookimpl\n\n@hookimpl\n"
            "def artifactstore_register_backends(register):\n"
            "    register(BackendSpec(name='exiter', factory=lambda ctx: None))\n\n@hookimpl\n"
            "def artifactstore_register_commands(cli):\n"
            "    cli.command('half')(lambda: None)\n    raise SystemExit(1)\n",
        ),
    ],
)
def test_a_plugin_that_calls_sys_exit_fails_alone(site: Path, where: str, body: str) -> None:
    import click

    module = f"exiter_{uuid.uuid4().hex}"  # a new module each time: imports are cached
    install_fake_distribution(site, "artifactstore-exiter", "0.3", {"exiter": module}, {module: body})
    group = click.Group()
    problems = plugin_host().call_commands_hook(group)  # what every CLI command runs first
    assert "half" not in group.commands
    [problem] = [line for line in problems if "exiter" in line]
    assert "SystemExit" in problem
    infos = {info.name: info for info in plugin_host().backends()}
    assert infos["memory"].status == "loaded"
    assert "SystemExit" in infos["exiter"].status
    if where != "commands hook":
        with pytest.raises(PluginLoadError, match=r"artifactstore-exiter 0\.3.*SystemExit") as info:
            plugin_host().load("exiter")
        assert isinstance(info.value.__cause__, SystemExit)
    with create_store("memory", namespace="exiter-test") as store:
        store.save("a", Message(content=1))
        store.clear()


def test_a_factory_that_returns_no_store_is_a_plugin_error(site: Path) -> None:
    install_fake_distribution(
        site,
        "artifactstore-nostore",
        "0.4",
        {"nostore": "nostore_mod"},
        {
            "nostore_mod": """
from artifactstore_core import BackendSpec, hookimpl

@hookimpl
def artifactstore_register_backends(register):
    register(BackendSpec(name="nostore", factory=lambda ctx: None))
"""
        },
    )
    # Not a None handed back to fail later, far from the cause, as "NoneType ... context manager protocol".
    with pytest.raises(PluginLoadError) as info:
        create_store("nostore")
    assert str(info.value) == (
        "backend 'nostore' (artifactstore-nostore 0.4) is broken: its factory returned NoneType, not an ArtifactStore"
    )
    assert info.value.backend == "nostore"


def test_a_backend_setting_named_like_a_core_option_stays_the_backends(site: Path) -> None:
    # create_store passes signing_key, compression and compress_threshold to the core, unless the backend
    # has a setting of that name: a third-party backend's own `compression` must keep working.
    name = f"own{uuid.uuid4().hex[:8]}"
    source = f"""
        from pydantic_settings import SettingsConfigDict
        from artifactstore_memory import MemoryStore
        from artifactstore_core import BackendSettings, BackendSpec, hookimpl

        class Settings(BackendSettings):
            model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_{name.upper()}_")
            config_table = {name!r}
            compression: str = "none"

        class Store(MemoryStore):
            backend_name = {name!r}

        def factory(ctx):
            store = Store(namespace=ctx.namespace, codec=ctx.codec)
            store.own_compression = ctx.settings.compression
            return store

        @hookimpl
        def artifactstore_register_backends(register):
            register(BackendSpec(name={name!r}, factory=factory, settings_model=Settings))
    """
    install_fake_distribution(site, "artifactstore-own", "0.1", {name: f"{name}_mod"}, {f"{name}_mod": source})
    with create_store(name, namespace="own", compression="lz4", compress_threshold=3) as store:
        assert store.own_compression == "lz4"  # type: ignore[attr-defined]
        assert store.codec.compress_threshold == 3
