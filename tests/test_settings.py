"""Settings: the user's env var names, precedence, config files, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactstore_core import ConfigurationError, CoreSettings, Message, create_store
from artifactstore_core.settings import load_settings
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
