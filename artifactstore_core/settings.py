"""Configuration through pydantic-settings.

Precedence, highest first: explicit arguments > environment variables > a config file > defaults.
The config file is ``$ARTIFACT_STORE_CONFIG`` if set, else ``artifactstore.toml`` in the working
directory, else the ``[tool.artifactstore]`` table of ``pyproject.toml`` in the working directory.
Core settings are top-level keys; a backend's settings are in the sub-table named after it
(``[tool.artifactstore.redis]`` or ``[redis]``).

Each backend owns a :class:`BackendSettings` subclass with the prefix ``ARTIFACT_STORE_<NAME>_``; the
core knows only the cross-cutting settings in :class:`CoreSettings`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigurationError

__all__ = ["CONFIG_ENV", "BackendSettings", "CoreSettings", "load_settings"]

#: Environment variable naming an explicit config file.
CONFIG_ENV = "ARTIFACT_STORE_CONFIG"

S = TypeVar("S", bound=BaseSettings)


def _read_config_file() -> dict[str, Any]:
    explicit = os.environ.get(CONFIG_ENV)
    try:
        if explicit:
            with open(explicit, "rb") as handle:
                return tomllib.load(handle)
        local = Path("artifactstore.toml")
        if local.is_file():
            with local.open("rb") as handle:
                return tomllib.load(handle)
        pyproject = Path("pyproject.toml")
        if pyproject.is_file():
            with pyproject.open("rb") as handle:
                table = tomllib.load(handle).get("tool", {}).get("artifactstore", {})
            return table if isinstance(table, dict) else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        where = explicit or "the artifactstore config file"
        raise ConfigurationError(f"cannot read {where}: {type(exc).__name__}: {exc}") from exc
    return {}


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the config file's table for this settings model."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        table = _read_config_file()
        section = getattr(self.settings_cls, "config_table", None)
        if section:
            table = table.get(section, {})
            if not isinstance(table, dict):
                return {}
        fields = self.settings_cls.model_fields
        return {key: value for key, value in table.items() if key in fields}


class _Settings(BaseSettings):
    """Shared behaviour: env > config file > defaults, and errors that name the env var."""

    # Validation errors never repeat the input: it may be a password or a URL holding one.
    model_config = SettingsConfigDict(hide_input_in_errors=True)
    #: The config-file sub-table of this model (``None``: top level).
    config_table: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable that sets ``field_name``."""
        prefix = cls.model_config.get("env_prefix") or ""
        return f"{prefix}{field_name}".upper()


class CoreSettings(_Settings):
    """Settings every backend shares (prefix ``ARTIFACT_STORE_``)."""

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_", extra="ignore")

    backend: str = Field(default="memory", description="Name of the backend to use (an installed plugin).")
    namespace: str = Field(
        default="default", description="Namespace of the store: a pipeline run's execution id, for example."
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="Secret that turns every artifact's digest into a keyed MAC (BLAKE3 keyed mode); readers "
        "with the key refuse artifacts written or altered without it. Unset: artifacts are not signed. Set "
        "but empty or only whitespace: ConfigurationError (a missing secret, not a request for no signing).",
    )
    compression: bool = Field(
        default=True, description="zstd-compress JSON and text payloads of at least compress_threshold bytes."
    )
    compress_threshold: int = Field(
        default=64 * 1024, ge=0, description="Smallest JSON or text payload (bytes) that is compressed."
    )

    @field_validator("signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty value is what a deployment template leaves when its secret is missing: taking it for
        # "no key" would write unsigned artifacts (and accept them) without anyone noticing. Leaving the
        # variable unset is the way to ask for no signing.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty (or only whitespace); set the key, or unset the variable to not sign")
        return value


class BackendSettings(_Settings):
    """Base of every backend's settings model. Subclasses set ``env_prefix`` and ``config_table``."""

    model_config = SettingsConfigDict(extra="ignore")


def load_settings(model: type[S], **overrides: Any) -> S:
    """Build ``model`` from explicit overrides, the environment, the config file and defaults.

    Raises:
        ConfigurationError: an override is not a setting of ``model``, or a value is invalid; the message
            names the environment variable to fix and never repeats the value (it may be a secret).
    """
    unknown = sorted(set(overrides) - set(model.model_fields))
    if unknown:
        known = ", ".join(sorted(model.model_fields))
        raise ConfigurationError(f"unknown setting(s) {', '.join(unknown)} for {model.__name__}; known: {known}")
    try:
        return model(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        env_name = getattr(model, "env_name", lambda name: name)
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "?"
            problems.append(f"{env_name(name)}: {error['msg']}")
        # Not chained: pydantic's error repeats the input, which may be a secret.
        raise ConfigurationError("invalid setting " + "; ".join(problems)) from None
