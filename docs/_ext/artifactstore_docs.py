"""Sphinx extension of the artifactstore docs: references generated from the code, so they cannot drift.

- ``{artifactstore-settings} <section>``: the configuration reference of one settings model (every
  environment variable, its type, default, description, and whether it is a secret), built from the
  pydantic-settings model itself. A field without a description fails the build.
- :data:`cli`: the ``artifactstore`` click group with the commands plugins add (``serve``), for
  sphinx-click.

The functions here are plain Python so that ``tests/test_docs.py`` checks exactly what the site shows.
"""

from __future__ import annotations

import importlib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = [
    "EXTRA_SETTINGS",
    "SECTIONS",
    "MissingDescriptionError",
    "Section",
    "SettingDoc",
    "extra_settings_markdown",
    "section_markdown",
    "setting_docs",
]


class MissingDescriptionError(ValueError):
    """A setting has no description: the configuration reference would have a hole."""


@dataclass(frozen=True)
class Section:
    """One settings model in the configuration reference."""

    key: str
    title: str
    model: str  # "module:Class"
    distribution: str
    page: str | None  # the backend's own page (a docname), if any

    def load(self) -> type[BaseModel]:
        module, _, name = self.model.partition(":")
        model = getattr(importlib.import_module(module), name)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{self.model} is not a pydantic model")
        return model


#: Every settings model of the core and the first-party plugins, in the order the reference shows them.
#: ``tests/test_docs.py`` checks that this covers every registered backend's model and every
#: ``BackendSettings`` subclass the first-party plugins define.
SECTIONS: tuple[Section, ...] = (
    Section("core", "Core", "artifactstore_core.settings:CoreSettings", "artifactstore-core", None),
    Section("memory", "memory backend", "artifactstore_memory:MemorySettings", "artifactstore-memory", "memory"),
    Section(
        "filesystem",
        "filesystem backend",
        "artifactstore_filesystem.settings:FilesystemSettings",
        "artifactstore-filesystem",
        "filesystem",
    ),
    Section("redis", "redis backend", "artifactstore_redis.settings:RedisSettings", "artifactstore-redis", "redis"),
    Section("s3", "s3 backend", "artifactstore_s3.settings:S3Settings", "artifactstore-s3", "s3"),
    Section("http", "http backend (client)", "artifactstore_http.settings:HttpSettings", "artifactstore-http", "http"),
    Section(
        "server", "artifact server", "artifactstore_http.settings:ServerSettings", "artifactstore-http[server]", "http"
    ),
)


def _extra_settings() -> tuple[tuple[str, str], ...]:
    # Variables read directly (not through a settings model): the names come from the code's constants.
    from artifactstore_core.registry import PLUGINS_ENV
    from artifactstore_core.settings import CONFIG_ENV

    return (
        (
            PLUGINS_ENV,
            "Comma-separated allow-list of backend names whose plugins may load, e.g. memory,redis. Unset or "
            "empty: every installed backend may load. A backend outside the list raises BackendNotFoundError; "
            "a value of only commas (no name) raises ConfigurationError.",
        ),
        (
            CONFIG_ENV,
            "Path of a TOML config file to read instead of artifactstore.toml or the [tool.artifactstore] "
            "table of pyproject.toml in the working directory (a file named pyproject.toml is read for its "
            "[tool.artifactstore] table). An unreadable file, or a key in it that is no setting, raises "
            "ConfigurationError.",
        ),
    )


#: Environment variables the core reads directly: ``(name, description)``.
EXTRA_SETTINGS = _extra_settings()


@dataclass(frozen=True)
class SettingDoc:
    """What the reference shows about one setting."""

    env: str
    field: str
    type: str
    default: str
    secret: bool
    description: str


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "string"}


def _type_text(annotation: Any, field: FieldInfo) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        text = "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    elif origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        text = " or ".join(_type_text(arg, FieldInfo()) for arg in args)
    else:
        text = _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = []
    for item in field.metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {_number(value)}")
        for attr, label in (("min_length", "at least {} characters"), ("max_length", "at most {} characters")):
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(label.format(value))
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            bounds.append(f"matching `{pattern}`")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _number_parts(value: Any) -> tuple[str, str]:
    """A number as written in code, and its round binary unit if it has one: ``("268435456", "256 MiB")``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1024:
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value % size == 0:
                return str(value), f"{value // size} {unit}"
    return str(value), ""


def _number(value: Any) -> str:
    text, unit = _number_parts(value)
    return f"{text} ({unit})" if unit else text


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        # Never evaluate it here: a computed default (a home directory) would put this machine in the docs.
        name = getattr(field.default_factory, "__name__", "a function")
        return f"computed by `{name}()`"
    default = field.default
    if default is PydanticUndefined:
        return "required"
    if default is None:
        return "unset"
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, (int, float)):
        text, unit = _number_parts(default)
        return f"`{text}`" + (f" ({unit})" if unit else "")
    if default == "":
        return "empty"
    return f"`{default}`"


def setting_docs(model: type[BaseModel]) -> list[SettingDoc]:
    """The reference entries of ``model``, in field order.

    Raises:
        MissingDescriptionError: a field has no (or an empty) description.
    """
    env_name = getattr(model, "env_name", None)
    prefix = (model.model_config.get("env_prefix") or "") if env_name is None else None
    docs = []
    for name, field in model.model_fields.items():
        env = env_name(name) if env_name is not None else f"{prefix}{name}".upper()
        description = (field.description or "").strip()
        if not description:
            raise MissingDescriptionError(
                f"{model.__module__}.{model.__qualname__}.{name} ({env}) has no description: add "
                "Field(description=...) so that the configuration reference documents it"
            )
        docs.append(
            SettingDoc(
                env=env,
                field=name,
                type=_type_text(field.annotation, field),
                default=_default_text(field),
                secret=_is_secret(field.annotation),
                description=description,
            )
        )
    return docs


# Backslash-escape what markdown would otherwise read as markup (descriptions are plain text).
_MARKUP = re.compile(r"([\\`*_{}\[\]<>#|&~$!])")


def escape(text: str) -> str:
    """``text`` as literal markdown."""
    return _MARKUP.sub(r"\\\1", text)


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_markdown(section: Section, *, entries: bool = True) -> str:
    """The markdown of one section: a summary table and (with ``entries``) one ``envvar`` entry per setting.

    Raises:
        MissingDescriptionError: a field of the model has no description.
    """
    model = section.load()
    docs = setting_docs(model)
    table = getattr(model, "config_table", None)
    where = f"the `[{table}]` table" if table else "the top level"
    lines = [
        f"Model `{model.__module__}.{model.__qualname__}` from `{section.distribution}`; in a config file, keys "
        f"go in {where} of `artifactstore.toml` (or of `[tool.artifactstore]` in `pyproject.toml`).",
        "",
        "| variable | type | default | secret |",
        "|---|---|---|---|",
    ]
    for doc in docs:
        name = f"{{envvar}}`{doc.env}`" if entries else f"`{doc.env}`"
        lines.append(
            f"| {name} | {_table_cell(doc.type)} | {_table_cell(doc.default)} | {'**yes**' if doc.secret else 'no'} |"
        )
    if entries:
        for doc in docs:
            key = f"`{doc.field}`" + (f" in `[{table}]`" if table else "")
            facts = f"Type: {doc.type}. Default: {doc.default}. Config key: {key}."
            if doc.secret:
                facts += " **Secret**: masked in every repr, log line and error message."
            lines += ["", f"````{{envvar}} {doc.env}", escape(doc.description), "", facts, "````"]
    return "\n".join(lines) + "\n"


def extra_settings_markdown() -> str:
    """``envvar`` entries for the variables the core reads directly."""
    lines: list[str] = []
    for name, description in EXTRA_SETTINGS:
        lines += ["", f"````{{envvar}} {name}", escape(description), "", "Type: string. Default: unset.", "````"]
    return "\n".join(lines) + "\n"


# An entry of a Google-style "Raises:" section: "SomeError: text" or "AError, BError: text".
_RAISES_ENTRY = re.compile(r"^[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*:(?:\s|$)")
# A second entry run into the same line: "... not a legal id. ArtifactNotFoundError: it is not stored."
_RUN_IN_ENTRY = re.compile(r"(?<=\.)\s+(?=[A-Z]\w*Error(?:\s*,\s*[A-Z]\w*Error)*:\s)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def normalise_raises(lines: list[str]) -> list[str]:
    """Make every "Raises:" section of a Google-style docstring one "Type: text" entry per exception.

    napoleon reads each entry of the section as "Type: description". Some docstrings run the section
    header into a sentence ("... Raises:"), put two entries on one line, or add an entry that names no
    exception ("The errors of :meth:`get`."), which napoleon renders as a type name or as a broken field
    list. Such entries move after the section as an "Also raises" sentence; a section left empty is dropped.
    """
    split: list[str] = []
    for line in lines:
        if line.strip().endswith(" Raises:"):
            split += [line[: line.rindex(" Raises:")], "", " " * _indent(line) + "Raises:"]
        else:
            split.append(line)
    result: list[str] = []
    index = 0
    while index < len(split):
        line = split[index]
        index += 1
        if line.strip() != "Raises:":
            result.append(line)
            continue
        section_indent = _indent(line)
        items: list[str] = []
        entry_indent: int | None = None
        while index < len(split):
            entry = split[index]
            if entry.strip() and _indent(entry) <= section_indent:
                break
            index += 1
            if not entry.strip():
                continue
            if entry_indent is None:
                entry_indent = _indent(entry)
            if _indent(entry) > entry_indent and items:
                items[-1] += " " + entry.strip()  # a continuation line
            else:
                items.append(entry.strip())
        typed: list[str] = []
        untyped: list[str] = []
        for item in items:
            for part in _RUN_IN_ENTRY.split(item):
                (typed if _RAISES_ENTRY.match(part) else untyped).append(part)
        if typed:
            result.append(line)
            result += [" " * (section_indent + 4) + entry for entry in typed]
        for text in untyped:
            lead = "Also raises" if typed else "Raises"
            result += ["", f"{' ' * section_indent}{lead}: {text[0].lower()}{text[1:]}"]
        result.append("")
    return result


def sentence_not_type(lines: list[str]) -> list[str]:
    """An attribute's or property's docstring whose first line is a sentence with a colon ("Where steps
    run: threads or processes"), broken after the colon so that napoleon does not read the words before
    it as a type (it does for "int: the count"); the rendered sentence is the same."""
    if not lines:
        return lines
    head, colon, rest = lines[0].partition(": ")
    if not colon or " " not in head.strip() or "`" in head:
        return lines
    return [head + ":", rest, *lines[1:]]


def _normalise_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in ("attribute", "property", "data"):
        lines[:] = sentence_not_type(lines)
    lines[:] = normalise_raises(lines)


def _settings_signature(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, return_annotation: str | None
) -> tuple[str, str | None] | None:
    # A settings model's __init__ is pydantic-settings' (dozens of private _env_*/_cli_* options), not
    # how it is used: it is read from the environment and config file; its fields are in the
    # configuration reference.
    from pydantic_settings import BaseSettings

    if what == "class" and isinstance(obj, type) and issubclass(obj, BaseSettings):
        return "", return_annotation
    return None


def _cli() -> Any:
    from artifactstore_core.cli import cli as group
    from artifactstore_core.registry import plugin_host

    # What `artifactstore` itself does at start: plugins add their commands (the http plugin adds `serve`).
    plugin_host().call_commands_hook(group)
    return group


def __getattr__(name: str) -> Any:
    # sphinx-click imports "artifactstore_docs:cli"; built on first use, not when the module is imported.
    if name == "cli":
        return _cli()
    raise AttributeError(name)


def setup(app: Any) -> dict[str, Any]:
    """Register the directives."""
    from docutils import nodes
    from docutils.parsers.rst import directives
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    by_key = {section.key: section for section in SECTIONS}

    class SettingsDirective(SphinxDirective):
        """``{artifactstore-settings} <section key>``, or ``extra`` for the variables read directly."""

        required_arguments = 1
        option_spec: typing.ClassVar[dict[str, Any]] = {"no-entries": directives.flag}

        def run(self) -> list[nodes.Node]:
            key = self.arguments[0]
            if key == "extra":
                text = extra_settings_markdown()
            else:
                if key not in by_key:
                    raise self.error(f"unknown settings section {key!r}; known: {', '.join(by_key)}")
                section = by_key[key]
                model_path = section.model.partition(":")[0]
                self.env.note_dependency(importlib.import_module(model_path).__file__ or "")
                try:
                    text = section_markdown(section, entries="no-entries" not in self.options)
                except MissingDescriptionError as exc:
                    raise self.error(str(exc)) from exc
            container = nodes.container()
            self.state.nested_parse(StringList(text.splitlines(), source=self.get_source_info()[0]), 0, container)
            return list(container.children)

    app.add_directive("artifactstore-settings", SettingsDirective)
    # Before napoleon (priority 500) turns "Raises:" sections into field lists.
    app.connect("autodoc-process-docstring", _normalise_docstring, priority=400)
    app.connect("autodoc-process-signature", _settings_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
