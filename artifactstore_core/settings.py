"""Configuration through pydantic-settings.

Precedence, highest first: explicit arguments > environment variables > a config file > defaults.
The config file is ``$ARTIFACT_STORE_CONFIG`` if set, else ``artifactstore.toml`` in the working
directory, else the ``[tool.artifactstore]`` table of ``pyproject.toml`` in the working directory.
A file named ``pyproject.toml`` is read for its ``[tool.artifactstore]`` table, also when
``$ARTIFACT_STORE_CONFIG`` names it. Core settings are top-level keys; a backend's settings are in the
sub-table named after it (``[tool.artifactstore.redis]`` or ``[redis]``). A key that is none of the
settings of its table is refused with a :class:`ConfigurationError` (a typo must not leave the default
silently in force); a table at the top level belongs to a backend (or the server) and is checked when
that model is loaded.

Each backend owns a :class:`BackendSettings` subclass with the prefix ``ARTIFACT_STORE_<NAME>_``; the
core knows only the cross-cutting settings in :class:`CoreSettings`.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigurationError, raise_chained

__all__ = ["CONFIG_ENV", "BackendSettings", "CoreSettings", "env_name_of", "environment_value", "load_settings"]

#: Environment variable naming an explicit config file.
CONFIG_ENV = "ARTIFACT_STORE_CONFIG"

S = TypeVar("S", bound=BaseSettings)


@dataclass(frozen=True)
class _ConfigFile:
    """The config file in use: its path as the user gave it, the TOML table our settings start at, and
    that table (empty when there is no config file)."""

    path: str = ""
    prefix: str = ""
    table: dict[str, Any] = field(default_factory=dict)

    def where(self, section: str | None = None) -> str:
        """Where ``section`` (``None``: the top level) is, for messages: ``[redis] of artifactstore.toml``."""
        name = ".".join(part for part in (self.prefix, section) if part)
        return f"[{name}] of {self.path}" if name else self.path


def environment_value(name: str) -> str | None:
    """The value of the environment variable ``name`` matched in any case, as pydantic-settings matches every
    setting's variable: ``artifact_store_config`` is ``ARTIFACT_STORE_CONFIG`` too (read case-sensitively, the
    lower-case spelling was ignored without a word, and an allow-list so spelt lifted the restriction it set).
    ``None`` when no spelling is set.

    Raises:
        ConfigurationError: two spellings are set to different values (which one pydantic-settings takes
            depends on the environment's order, so either could have been meant); the message names the
            spellings, never the values.
    """
    _refuse_spellings([name])
    wanted = name.upper()
    for key, value in os.environ.items():
        if key.upper() == wanted:
            return value
    return None


def _in_environment(name: str) -> bool:
    """Whether the environment sets the variable ``name`` (upper case) in any spelling, as pydantic-settings
    matches it (``artifact_store_backend`` sets ``ARTIFACT_STORE_BACKEND``). Raises nothing."""
    return any(key.upper() == name for key in os.environ)


def _refuse_spellings(names: Iterable[str]) -> None:
    """Refuse any of the variables ``names`` set under several spellings with different values.

    pydantic-settings reads variables case-insensitively and, when two spellings are set, keeps whichever
    comes last in the environment: a value silently chosen by ordering, for a setting the user set twice.
    The same values are no conflict (a shell profile and a CI file exporting the same thing).

    Raises:
        ConfigurationError: naming each such variable and its spellings (not the values: one may be secret).
    """
    wanted = {name.upper() for name in names}
    spellings: dict[str, dict[str, str]] = {}
    for key, value in os.environ.items():
        upper = key.upper()
        if upper in wanted:
            spellings.setdefault(upper, {})[key] = value
    problems = [
        f"{name} is set as {' and '.join(sorted(found))} with different values"
        for name, found in sorted(spellings.items())
        if len(set(found.values())) > 1
    ]
    if problems:
        raise ConfigurationError(
            "; ".join(problems) + ": variables are read in any case, so keep one spelling (unset the others)"
        )


def _config_file() -> _ConfigFile:
    """Read the config file in use (see the module's docstring).

    A file named ``pyproject.toml`` is read for its ``[tool.artifactstore]`` table wherever it comes from,
    ``$ARTIFACT_STORE_CONFIG`` included: its top level is the project's, not ours.

    Raises:
        ConfigurationError: the file cannot be read, is not valid TOML, or its artifactstore table is not a
            table; the message names the file.
    """
    explicit = environment_value(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
    elif Path("artifactstore.toml").is_file():
        path = Path("artifactstore.toml")
    elif Path("pyproject.toml").is_file():
        path = Path("pyproject.toml")
    else:
        return _ConfigFile()
    shown = explicit or str(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read config file {shown}: {type(exc).__name__}: {exc}") from exc
    if path.name != "pyproject.toml":
        return _ConfigFile(shown, "", document)
    tool = document.get("tool")
    table = tool.get("artifactstore", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ConfigurationError(f"tool.artifactstore in {shown} must be a table ([tool.artifactstore])")
    return _ConfigFile(shown, "tool.artifactstore", table)


def _read_config_file() -> dict[str, Any]:
    """The artifactstore table of the config file in use (see :func:`_config_file`); ``{}`` when none."""
    return _config_file().table


def _check_keys(table: dict[str, Any], fields: Iterable[str], where: str, hint: str = "", env_prefix: str = "") -> None:
    """Refuse a key that is no setting: a typo would otherwise leave the default silently in force."""
    known = sorted(fields)
    for key in table:
        if key in known:
            continue
        # A key copied from the environment (URL, ARTIFACT_STORE_REDIS_URL) is the setting in another
        # spelling, which difflib, comparing characters case-sensitively, would not suggest.
        plain = key.lower()
        if env_prefix and plain.startswith(env_prefix.lower()):
            plain = plain[len(env_prefix) :]
        close = [plain] if plain in known else difflib.get_close_matches(plain, known, n=1, cutoff=0.6)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(f"unknown setting {key!r} in {where}{guess} (known: {', '.join(known)}{hint})")


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the config file's table for this settings model.

    Raises:
        ConfigurationError: the file cannot be read, this model's table holds a key that is none of its
            settings, or the table is a single value (the message names the file, table and key).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        config = _config_file()
        fields = self.settings_cls.model_fields
        section = getattr(self.settings_cls, "config_table", None)
        if section:
            if section not in config.table:
                return {}
            sub = config.table[section]
            if not isinstance(sub, dict):
                raise ConfigurationError(
                    f"{section!r} in {config.where()} must be a table ([{section}]), not a single value"
                )
            prefix = str(self.settings_cls.model_config.get("env_prefix") or "")
            _check_keys(sub, fields, config.where(section), env_prefix=prefix)
            return dict(sub)
        # The top level holds the core's settings; a table there is a backend's (or the server's) own.
        scalars = {key: value for key, value in config.table.items() if not isinstance(value, dict)}
        hint = "; a backend's settings go in its own table, e.g. [redis]"
        prefix = str(self.settings_cls.model_config.get("env_prefix") or "")
        _check_keys(scalars, fields, config.where(), hint, env_prefix=prefix)
        return scalars


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
        return env_name_of(cls, field_name)


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
            # Not "unset the variable": the empty key may come from an argument or the config file.
            raise ValueError(
                "is set but empty (or only whitespace); set the key, or leave it unset to not sign "
                "(no variable, config file key or argument)"
            )
        if value is not None:
            try:
                # What codec_from turns it into. Bytes of the environment that are not UTF-8 decode to
                # \udc80-\udcff and come back as they were; any other lone surrogate (a str argument) has no
                # bytes at all, and failed later as a UnicodeEncodeError whose repr holds the whole key.
                value.get_secret_value().encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise ValueError("holds a lone surrogate, which has no UTF-8 bytes; set the key as text") from None
        return value


class BackendSettings(_Settings):
    """Base of every backend's settings model. Subclasses set ``env_prefix`` and ``config_table``."""

    model_config = SettingsConfigDict(extra="ignore")


def env_name_of(model: type[BaseSettings], field_name: str) -> str:
    """The environment variable that sets ``field_name`` of ``model``: its ``env_prefix`` and the name, upper
    case. Works for any pydantic-settings model, not only :class:`BackendSettings` subclasses (a plugin's
    ``settings_model`` may be a plain ``BaseSettings``). Raises nothing."""
    prefix = model.model_config.get("env_prefix") or ""
    return f"{prefix}{field_name}".upper()


def load_settings(model: type[S], **overrides: Any) -> S:
    """Build ``model`` from explicit overrides, the environment, the config file and defaults.

    Raises:
        ConfigurationError: an override is not a setting of ``model``, a key of its config-file table is
            none of its settings, a variable is set under two spellings to different values (see
            ``environment_value``), or a value is invalid; the message names the environment variable to fix
            and, when the value came from an argument or the config file, where it was given instead; it
            never repeats the value (it may be a secret).
    """
    unknown = sorted(set(overrides) - set(model.model_fields))
    if unknown:
        known = ", ".join(sorted(model.model_fields))
        raise ConfigurationError(f"unknown setting(s) {', '.join(unknown)} for {model.__name__}; known: {known}")
    given = {key: value for key, value in overrides.items() if value is not None}
    _refuse_spellings(env_name_of(model, name) for name in model.model_fields if name not in given)
    try:
        return model(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            loc = error["loc"]
            # A validator's own ValueError reads as pydantic prefixes it, "Value error, must be ...": the
            # error's text alone is the sentence written for the user.
            cause = error.get("ctx", {}).get("error") if error["type"] == "value_error" else None
            msg = str(cause) if isinstance(cause, ValueError) and str(cause) else error["msg"]
            if loc and str(loc[0]) in model.model_fields:
                name = str(loc[0])
                problems.append(f"{env_name_of(model, name)}{_given_where(model, name, given)}: {msg}")
            else:
                # A check across several settings (a model validator): its message names them itself.
                problems.append(f"{env_name_of(model, '*')}: {msg}")
        # Not chained, nor left as the suppressed context: pydantic's error repeats the input, which may be a
        # secret.
        raise_chained(ConfigurationError("invalid setting " + "; ".join(problems)), None)


def _given_where(model: type[BaseSettings], name: str, given: dict[str, Any]) -> str:
    """Where the invalid value of ``name`` came from when not from its environment variable, for the message.

    The environment variable is always named (it is what most users set); a value given as an argument or
    in the config file must be fixed there instead, and the message says so.
    """
    if name in given:
        return f" (given as the argument {name})"
    env = env_name_of(model, name)
    if _in_environment(env):
        return ""
    config = _config_file()
    section = getattr(model, "config_table", None)
    table = config.table.get(section, {}) if section else config.table
    if isinstance(table, dict) and name in table:
        return f" (set by {name} in {config.where(section)})"
    return ""


def _source_of(model: type[BaseSettings], name: str) -> str | None:
    """Where the value of setting ``name`` came from when no argument gave it, for a message: its environment
    variable, or the key and table of the config file (``the key namespace in artifactstore.toml``); ``None`` for
    the default. Raises nothing: it only words an error that is being raised."""
    env = env_name_of(model, name)
    if _in_environment(env):
        return env
    try:
        config = _config_file()
    except ConfigurationError:
        return None
    section = getattr(model, "config_table", None)
    table = config.table.get(section, {}) if section else config.table
    if isinstance(table, dict) and name in table:
        return f"the key {name} in {config.where(section)}"
    return None
