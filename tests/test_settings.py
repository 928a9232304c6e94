"""Settings: the user's env var names, precedence, config files, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactstore_core import ConfigurationError, CoreSettings, Message, create_store
from artifactstore_core.envelope import Codec
from artifactstore_core.settings import environment_value, load_settings
from artifactstore_core.testing_errors import reachable_exceptions, reachable_text
from artifactstore_memory import MemorySettings


def test_defaults_need_no_environment() -> None:
    settings = CoreSettings()
    assert settings.backend == "memory"
    assert settings.namespace == "default"
    with create_store() as store:
        assert store.backend_name == "memory"
        assert store.namespace == "default"


def test_user_env_var_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "example")
    monkeypatch.setenv("ARTIFACT_STORE_NAMESPACE", "run-7")
    monkeypatch.setenv("ARTIFACT_STORE_MEMORY_LIMIT", "100")
    assert CoreSettings().backend == "example"
    assert MemorySettings().limit == 100
    with create_store() as store:
        assert (store.backend_name, store.namespace) == ("example", "run-7")


def test_precedence_arguments_env_file_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "artifactstore.toml").write_text('namespace = "from-file"\n[memory]\nlimit = 5\nmax_bytes = 9\n')
    monkeypatch.chdir(tmp_path)
    assert CoreSettings().namespace == "from-file"
    assert MemorySettings().limit == 5
    monkeypatch.setenv("ARTIFACT_STORE_NAMESPACE", "from-env")
    monkeypatch.setenv("ARTIFACT_STORE_MEMORY_LIMIT", "6")
    assert CoreSettings().namespace == "from-env"
    assert MemorySettings().limit == 6
    assert MemorySettings().max_bytes == 9
    assert load_settings(MemorySettings, limit=7).limit == 7
    with create_store(namespace="from-arg", limit=1) as store:
        assert store.namespace == "from-arg"
        store.save("a", Message(content=1))
        store.clear()


def test_core_settings_as_arguments_of_create_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The configuration reference promises every setting as a keyword argument of create_store; the core's
    # own were refused as unknown settings of the backend, so a key from a secret manager had to go
    # through os.environ.
    (tmp_path / "artifactstore.toml").write_text("compress_threshold = 5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARTIFACT_STORE_COMPRESSION", "true")
    with create_store("memory", signing_key="from-arg", compression=False, limit=3) as store:
        assert store.codec.signed
        assert store.codec.compress_threshold is None
    with create_store("memory", compress_threshold=7) as store:
        assert not store.codec.signed
        assert store.codec.compress_threshold == 7
    with create_store("memory") as store:
        assert store.codec.compress_threshold == 5
    # Given as an argument, "unset the variable" was the wrong advice: the message covers every source.
    with pytest.raises(
        ConfigurationError,
        match=r"ARTIFACT_STORE_SIGNING_KEY \(given as the argument signing_key\).*leave it unset to not sign "
        r"\(no variable, config file key or argument\)",
    ):
        create_store("memory", signing_key=" ")


def test_pyproject_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.artifactstore]\nbackend = "example"\n[tool.artifactstore.memory]\nlimit = 3\n'
    )
    monkeypatch.chdir(tmp_path)
    assert CoreSettings().backend == "example"
    assert MemorySettings().limit == 3


def test_explicit_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('namespace = "explicit"\n')
    monkeypatch.setenv("ARTIFACT_STORE_CONFIG", str(config))
    assert CoreSettings().namespace == "explicit"
    monkeypatch.setenv("ARTIFACT_STORE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigurationError, match=r"missing\.toml"):
        load_settings(CoreSettings)


def test_invalid_value_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_MEMORY_LIMIT"):
        create_store()
    monkeypatch.setenv("ARTIFACT_STORE_MEMORY_LIMIT", "0")
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_MEMORY_LIMIT"):
        create_store()


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="limt"):
        create_store(limt=3)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-signing-key-6f1e"
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", canary)
    settings = CoreSettings()
    assert canary not in repr(settings)
    assert canary not in str(settings.model_dump())
    with create_store() as store:
        assert store.codec.signed
        assert canary not in repr(store) + repr(store.codec)
    monkeypatch.setenv("ARTIFACT_STORE_COMPRESS_THRESHOLD", canary)
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_COMPRESS_THRESHOLD") as info:
        load_settings(CoreSettings)
    assert canary not in str(info.value)
    assert info.value.__cause__ is None


def test_signed_store_round_trip_and_refuses_unsigned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "example")
    with create_store(namespace="signing") as unsigned:
        unsigned.save("plain", Message(content=b"x"))
        monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", "k")
        with create_store(namespace="signing") as signed:
            signed.save("signed", Message(content=b"y"))
            assert signed.get("signed").content == b"y"
            from artifactstore_core import ArtifactCorruptedError

            with pytest.raises(ArtifactCorruptedError, match="not signed"):
                signed.get("plain")
        unsigned.clear()


@pytest.mark.parametrize("value", ["", " ", "\t\n  "])
def test_empty_signing_key_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    # A deployment template whose secret is missing sets the variable to "": that must not quietly mean
    # "write and accept unsigned artifacts". Unset is the way to not sign.
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", value)
    with pytest.raises(ConfigurationError, match=r"ARTIFACT_STORE_SIGNING_KEY.*empty") as info:
        create_store()
    assert info.value.__cause__ is None
    monkeypatch.delenv("ARTIFACT_STORE_SIGNING_KEY")
    (tmp_path / "artifactstore.toml").write_text(f"signing_key = {value!r}\n".replace("'", '"'))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_SIGNING_KEY"):
        load_settings(CoreSettings)
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", " a key with spaces ")
    with create_store() as store:
        assert store.codec.signed


@pytest.mark.parametrize(
    ("text", "model", "expected"),
    [
        # A misspelt core key: the default namespace would silently stay in force.
        ('namspace = "nightly"\n', CoreSettings, r"'namspace' in artifactstore\.toml; did you mean 'namespace'\?"),
        # A backend's setting at the top level instead of in its table.
        ("limit = 5\n", CoreSettings, r"'limit' in artifactstore\.toml .*its own table"),
        # A misspelt key in a backend's table.
        (
            "[memory]\nlimt = 5\n",
            MemorySettings,
            r"'limt' in \[memory\] of artifactstore\.toml; did you mean 'limit'\?",
        ),
        # A backend's table written as a single value (the core refuses it first, as no core setting).
        ('memory = "5"\n', MemorySettings, r"'memory' in artifactstore\.toml"),
    ],
)
def test_a_config_file_key_that_is_no_setting_is_refused(
    text: str,
    model: type[CoreSettings] | type[MemorySettings],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    (tmp_path / "artifactstore.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=expected):
        load_settings(model)
    with pytest.raises(ConfigurationError, match=expected):
        create_store()


def test_an_unknown_key_is_named_but_its_value_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    canary = "canary-signing-key-1d9c"
    (tmp_path / "pyproject.toml").write_text(f'[tool.artifactstore]\nsigning_kye = "{canary}"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigurationError, match=r"'signing_kye' in \[tool\.artifactstore\] of pyproject\.toml"
    ) as info:
        load_settings(CoreSettings)
    assert canary not in str(info.value)


def test_other_tables_and_the_pyproject_top_level_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # [server] belongs to the http server's settings and [redis] to a backend not in use: the core and the
    # memory backend ignore them; pyproject's own tables ([project], [tool.ruff]) are not ours to check.
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.ruff]\nline-length = 1\n[tool.artifactstore]\nnamespace = "ok"\n'
        "[tool.artifactstore.server]\nport = 1\n[tool.artifactstore.redis]\nwhatever = 1\n"
    )
    monkeypatch.chdir(tmp_path)
    assert load_settings(CoreSettings).namespace == "ok"
    assert load_settings(MemorySettings).limit is None


def test_config_env_naming_a_pyproject_reads_its_tool_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # As in the working directory: the [tool.artifactstore] table, not the project's top level.
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.artifactstore]\nnamespace = "from-pyproject"\n'
        "[tool.artifactstore.memory]\nlimit = 4\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARTIFACT_STORE_CONFIG", str(project / "pyproject.toml"))
    assert load_settings(CoreSettings).namespace == "from-pyproject"
    assert load_settings(MemorySettings).limit == 4


def test_an_unreadable_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"cannot read config file pyproject\.toml: TOMLDecodeError"):
        load_settings(CoreSettings)


def test_an_invalid_value_says_where_it_was_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The variable is named always; a value from the config file or an argument is to be fixed there, and a
    # user who never set the variable must not be sent looking for it.
    (tmp_path / "artifactstore.toml").write_text('compress_threshold = "big"\n[memory]\nlimit = 0\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        load_settings(MemorySettings)
    assert str(info.value).startswith(
        "invalid setting ARTIFACT_STORE_MEMORY_LIMIT (set by limit in [memory] of artifactstore.toml): "
    )
    with pytest.raises(ConfigurationError, match=r"^invalid setting ARTIFACT_STORE_COMPRESS_THRESHOLD \(set by "):
        create_store()
    with pytest.raises(
        ConfigurationError, match=r"^invalid setting ARTIFACT_STORE_MEMORY_LIMIT \(given as the argument limit\): "
    ):
        load_settings(MemorySettings, limit=-1)
    monkeypatch.setenv("ARTIFACT_STORE_MEMORY_LIMIT", "-2")  # the environment wins over the file
    with pytest.raises(ConfigurationError, match=r"^invalid setting ARTIFACT_STORE_MEMORY_LIMIT: "):
        load_settings(MemorySettings)


def test_a_check_across_settings_names_the_prefix_not_a_made_up_variable() -> None:
    from pydantic import model_validator
    from pydantic_settings import SettingsConfigDict

    from artifactstore_core import BackendSettings

    class PairSettings(BackendSettings):
        model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_PAIR_", extra="ignore")
        config_table = "pair"
        left: int | None = None
        right: int | None = None

        @model_validator(mode="after")
        def _both(self) -> PairSettings:
            if (self.left is None) != (self.right is None):
                raise ValueError("set both ARTIFACT_STORE_PAIR_LEFT and ARTIFACT_STORE_PAIR_RIGHT, or neither")
            return self

    with pytest.raises(ConfigurationError) as info:
        load_settings(PairSettings, left=1)
    assert str(info.value) == (
        "invalid setting ARTIFACT_STORE_PAIR_*: set both ARTIFACT_STORE_PAIR_LEFT and "
        "ARTIFACT_STORE_PAIR_RIGHT, or neither"
    )


def test_a_validators_message_is_shown_without_pydantics_prefix() -> None:
    # pydantic words a validator's ValueError "Value error, must be ...": the user reads the sentence alone.
    from pydantic import field_validator
    from pydantic_settings import SettingsConfigDict

    from artifactstore_core import BackendSettings

    class PortSettings(BackendSettings):
        model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_PORTS_", extra="ignore")
        config_table = "ports"
        port: int = 1

        @field_validator("port")
        @classmethod
        def _positive(cls, value: int) -> int:
            if value <= 0:
                raise ValueError("must be a port number above 0")
            return value

    with pytest.raises(ConfigurationError) as info:
        load_settings(PortSettings, port=0)
    assert str(info.value) == (
        "invalid setting ARTIFACT_STORE_PORTS_PORT (given as the argument port): must be a port number above 0"
    )
    with pytest.raises(ConfigurationError) as info:
        load_settings(PortSettings, port="x")
    assert "Input should be a valid integer" in str(info.value)  # pydantic's own messages stay as they are


def test_a_plain_pydantic_settings_model_is_named_by_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # BackendSpec.settings_model may be any pydantic-settings model, not only a BackendSettings subclass.
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class PlainSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_PLAIN_")
        depth: int = 1

    monkeypatch.setenv("ARTIFACT_STORE_PLAIN_DEPTH", "deep")
    with pytest.raises(ConfigurationError, match=r"^invalid setting ARTIFACT_STORE_PLAIN_DEPTH: "):
        load_settings(PlainSettings)


def test_a_bad_backend_or_namespace_from_the_environment_or_file_says_where_it_was_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # "no backend named ''" or "namespace must not be empty" alone sent users looking through their code,
    # when a deployment template had left a variable (or a config key) empty.
    from artifactstore_core import BackendNotFoundError, InvalidStepIdError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "")
    with pytest.raises(BackendNotFoundError, match=r"\(the backend was set by ARTIFACT_STORE_BACKEND\)$"):
        create_store()
    monkeypatch.delenv("ARTIFACT_STORE_BACKEND")
    (tmp_path / "artifactstore.toml").write_text('namespace = ""\n')
    with pytest.raises(
        InvalidStepIdError, match=r"\(the namespace was set by the key namespace in artifactstore.toml\)$"
    ):
        create_store("memory")
    monkeypatch.setenv("ARTIFACT_STORE_NAMESPACE", "tab\there")
    with pytest.raises(InvalidStepIdError, match=r"\(the namespace was set by ARTIFACT_STORE_NAMESPACE\)$"):
        create_store("memory")
    # An argument is the caller's own: nothing to trace.
    with pytest.raises(InvalidStepIdError, match=r"^namespace must not be empty$"):
        create_store("memory", namespace="")
    with pytest.raises(BackendNotFoundError, match=r"installed backends: [^(]*$"):
        create_store("")


@pytest.mark.parametrize(
    ("table", "key", "setting"),
    [
        ("", "NAMESPACE", "namespace"),
        ("", "ARTIFACT_STORE_NAMESPACE", "namespace"),
        ("memory", "LIMIT", "limit"),
        ("memory", "ARTIFACT_STORE_MEMORY_MAX_BYTES", "max_bytes"),
        ("memory", "Max_Byte", "max_bytes"),
    ],
)
def test_a_config_key_spelt_as_its_variable_is_named_with_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, table: str, key: str, setting: str
) -> None:
    # Keys copied from the environment (upper case, with the prefix) got no "did you mean".
    header = f"[{table}]\n" if table else ""
    (tmp_path / "artifactstore.toml").write_text(f"{header}{key} = 5\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=f"unknown setting '{key}' .*did you mean '{setting}'"):
        create_store("memory")


def test_a_signing_key_whose_bytes_are_not_utf8_is_those_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A binary secret in the environment (bytes that are not UTF-8) crashed create_store, and every CLI
    # command, with a UnicodeEncodeError whose repr holds the whole key. The key is the variable's bytes.
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", b"canary\xff\xfekey-5b2e".decode("utf-8", "surrogateescape"))
    message = Message(content={"rows": 3})
    with create_store("memory", namespace="binary-key") as store:
        assert store.codec.signed
        encoded = store.codec.encode(message, place=("binary-key", "a"))
    same_bytes = Codec(signing_key=b"canary\xff\xfekey-5b2e")
    assert same_bytes.decode(encoded.head, encoded.payload, place=("binary-key", "a")).content == message.content
    # A lone surrogate that stands for no byte (only a str argument can hold one) is refused as a setting,
    # without the key in the message.
    monkeypatch.delenv("ARTIFACT_STORE_SIGNING_KEY")
    with pytest.raises(ConfigurationError, match=r"ARTIFACT_STORE_SIGNING_KEY .*lone surrogate") as info:
        create_store("memory", signing_key="canary\ud800key-5b2e")
    assert "canary" not in str(info.value)
    assert "canary" not in repr(info.value)
    assert info.value.__cause__ is None


def test_an_invalid_secret_setting_is_reachable_from_no_error() -> None:
    # The error is "not chained" so that pydantic's error, whose errors() hold the input, is not shown; it
    # stayed reachable as the suppressed __context__, where an error reporter walking the links found it.
    from pydantic import SecretStr, field_validator
    from pydantic_settings import SettingsConfigDict

    from artifactstore_core import BackendSettings

    class TokenSettings(BackendSettings):
        model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_TOKENTEST_")
        token: SecretStr | None = None

        @field_validator("token")
        @classmethod
        def _no_spaces(cls, value: SecretStr | None) -> SecretStr | None:
            if value is not None and " " in value.get_secret_value():
                raise ValueError("must not contain spaces")
            return value

    secret = "hunter2 " + "e1c3"
    with pytest.raises(ConfigurationError) as info:
        load_settings(TokenSettings, token=secret)
    reached = reachable_exceptions(info.value)
    assert reached == [info.value]
    assert secret not in reachable_text(info.value)


def test_a_variable_set_under_two_spellings_to_different_values_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # pydantic-settings reads variables in any case and kept whichever spelling came last in the environment,
    # while environment_value preferred the exact one: the same two variables could select different backends.
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "memory")
    monkeypatch.setenv("artifact_store_backend", "nosuchbackend")
    with pytest.raises(ConfigurationError) as raised:
        create_store()
    assert "ARTIFACT_STORE_BACKEND is set as ARTIFACT_STORE_BACKEND and artifact_store_backend" in str(raised.value)
    assert "nosuchbackend" not in str(raised.value)
    monkeypatch.setenv("ARTIFACT_STORE_PLUGINS", "memory")
    monkeypatch.setenv("Artifact_Store_Plugins", "memory,filesystem")
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_PLUGINS is set as"):
        environment_value("ARTIFACT_STORE_PLUGINS")
    # The same value under two spellings is no conflict (a profile and a CI file exporting the same thing),
    # nor is a conflict in a setting an argument overrides.
    monkeypatch.setenv("Artifact_Store_Plugins", "memory")
    assert environment_value("ARTIFACT_STORE_PLUGINS") == "memory"
    with create_store("memory") as store:
        assert store.backend_name == "memory"


def test_where_a_factory_named_setting_was_given_is_added_to_its_name_not_to_an_assignment() -> None:
    # "or set ARTIFACT_STORE_HTTP_TRUST_ENV=false" became "...TRUST_ENV (given as the argument trust_env)=false".
    from artifactstore_core.wiring import _name_where_given

    error = ConfigurationError(
        "ARTIFACT_STORE_MEMORY_LIMIT is too small for the pipeline; or set ARTIFACT_STORE_MEMORY_LIMIT=0"
    )
    _name_where_given(error, MemorySettings, {"limit": 3})
    assert str(error) == (
        "ARTIFACT_STORE_MEMORY_LIMIT (given as the argument limit) is too small for the pipeline; or set "
        "ARTIFACT_STORE_MEMORY_LIMIT=0"
    )
    suggestion = ConfigurationError("the limit is too small: set ARTIFACT_STORE_MEMORY_LIMIT=0")
    _name_where_given(suggestion, MemorySettings, {"limit": 3})
    assert str(suggestion) == "the limit is too small: set ARTIFACT_STORE_MEMORY_LIMIT=0"
