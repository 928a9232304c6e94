"""Building the configured store: :func:`create_store` and the :class:`StoreContext` factories receive."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from ._wording import with_article
from .envelope import Codec
from .errors import (
    AccessDeniedError,
    ArtifactStoreError,
    BackendError,
    BackendNotFoundError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidStepIdError,
    PluginLoadError,
    _scrub_links,
    raise_chained,
    scrub_exception,
)
from .ids import validate_namespace
from .registry import BackendSpec, plugin_host
from .settings import CoreSettings, _given_where, _source_of, env_name_of, load_settings
from .store import ArtifactStore

__all__ = ["StoreContext", "codec_from", "create_store"]


@dataclass(frozen=True)
class StoreContext:
    """Everything a backend factory needs to build a store.

    Attributes:
        namespace: the namespace to bind the store to (already validated).
        settings: the backend's own settings (an instance of its ``settings_model``), or ``None``.
        codec: the envelope codec configured from the core settings.
        core: the core settings.
    """

    namespace: str
    settings: BaseSettings | None
    codec: Codec
    core: CoreSettings


def codec_from(core: CoreSettings) -> Codec:
    """The envelope codec the core settings describe."""
    # surrogateescape: a variable whose bytes are not UTF-8 (a binary secret) is keyed by exactly those
    # bytes, as any other program reading the environment sees them; strict UTF-8 crashed create_store.
    key = core.signing_key.get_secret_value().encode("utf-8", "surrogateescape") if core.signing_key else None
    return Codec(signing_key=key, compress_threshold=core.compress_threshold if core.compression else None)


#: The core settings create_store takes as keyword arguments (backend and namespace have parameters of their own).
_CORE_OPTIONS = ("signing_key", "compression", "compress_threshold")


def create_store(backend: str | None = None, *, namespace: str | None = None, **options: Any) -> ArtifactStore:
    """Create the configured store. Close it when done (it is a context manager).

    Args:
        backend: the backend name; default ``ARTIFACT_STORE_BACKEND`` (then the config file, then ``memory``).
        namespace: the namespace; default ``ARTIFACT_STORE_NAMESPACE`` (then ``"default"``).
        **options: the backend's settings by field name (``url=...`` for redis), and the core's
            ``signing_key``, ``compression`` and ``compress_threshold``, overriding the environment and the
            config file. A backend whose own settings include one of those three names gets it instead.

    Raises:
        ConfigurationError: a setting is invalid or unknown (the message names the env var and, when the
            value was an argument or a config-file key, where it was given).
        BackendNotFoundError: no backend of that name is installed (with the ``pip install`` line, or a
            "did you mean"; and the variable or config-file key that named it, when no argument did).
        PluginLoadError: the backend's plugin failed to load, or its factory returned something that is not
            an ``ArtifactStore``, or a store not built from the ``StoreContext`` it was given (with a codec of
            its own instead of ``context.codec``, bound to another namespace, or whose ``__init__`` skipped
            ``ArtifactStore.__init__``); the message names its distribution and version.
        InvalidStepIdError: the namespace is not legal (the message names the variable or config-file key
            that set it, when no argument did).
        BackendError: the backend could not be set up: any error of its factory that is not an
            artifactstore error becomes one, naming the backend and its distribution, with the original
            chained (``AccessDeniedError`` for a ``PermissionError``, ``BackendTimeoutError`` for a
            ``TimeoutError``, ``BackendUnavailableError`` for a ``ConnectionError``,
            ``ConfigurationError`` for a ``ValueError``, ``BackendError`` otherwise).
    """
    core = load_settings(CoreSettings, backend=backend, namespace=namespace)
    try:
        spec: BackendSpec = plugin_host().load(core.backend)
    except BackendNotFoundError as exc:
        raise _named_source(exc, "backend", backend) from None
    # A third-party backend may have a setting of one of these names: it keeps it (as it did before the
    # core took them), so the backend must be known before the options are split.
    own = spec.settings_model.model_fields if spec.settings_model is not None else {}
    core_options = {name: options.pop(name) for name in _CORE_OPTIONS if name in options and name not in own}
    if core_options:
        core = load_settings(CoreSettings, backend=backend, namespace=namespace, **core_options)
    settings = load_settings(spec.settings_model, **options) if spec.settings_model is not None else None
    if spec.settings_model is None and options:
        raise ConfigurationError(f"backend {spec.name!r} takes no options, got {', '.join(sorted(options))}")
    try:
        checked_namespace = validate_namespace(core.namespace)
    except InvalidStepIdError as exc:
        raise _named_source(exc, "namespace", namespace) from None
    context = StoreContext(namespace=checked_namespace, settings=settings, codec=codec_from(core), core=core)
    try:
        store = spec.factory(context)
    except ArtifactStoreError as exc:
        if exc.backend is None:
            exc.backend = spec.name
        if isinstance(exc, ConfigurationError) and spec.settings_model is not None:
            _name_where_given(exc, spec.settings_model, options)
        # A factory's own error may chain a client library's exception as it is (raise ... from exc).
        secrets = _secret_values(settings, core)
        _scrub_links(exc, lambda link: scrub_exception(link, secrets))
        raise
    except Exception as exc:
        # Only the type is quoted; the original is chained without the settings' secrets (its text may hold
        # them), and is not left behind as the error's suppressed context either.
        raise_chained(
            _factory_error(spec, plugin_host().origin(spec.name), exc),
            scrub_exception(exc, _secret_values(settings, core)),
        )
    if not isinstance(store, ArtifactStore):
        # A plugin bug that would otherwise surface far from here, as an AttributeError on first use.
        raise PluginLoadError(
            f"backend {spec.name!r} ({plugin_host().origin(spec.name)}) is broken: its factory returned "
            f"{type(store).__name__}, not an ArtifactStore",
            backend=spec.name,
        )
    problem = _misbuilt(store, context)
    if problem is not None:
        # Each of these fails silently or far from here: a codec of the store's own drops the signing key
        # (it writes unsigned artifacts and accepts forged ones), another namespace mixes executions, and a
        # store whose __init__ skipped the base's raises a bare AttributeError on first use.
        with contextlib.suppress(Exception):  # the store is unusable; the error below is what matters
            store.close()
        raise PluginLoadError(
            f"backend {spec.name!r} ({plugin_host().origin(spec.name)}) is broken: its factory {problem}",
            backend=spec.name,
        )
    return store


def _named_source(exc: ArtifactStoreError, name: str, argument: str | None) -> ArtifactStoreError:
    """``exc`` with its message saying where the core setting ``name`` it is about was set, unless the caller
    passed it as an argument: a value from a variable or a config file ("no backend named ''", "namespace
    must not be empty") is otherwise hard to trace to the deployment that set it."""
    source = _source_of(CoreSettings, name) if argument is None else None
    if source is not None:
        exc.args = (f"{exc.message} (the {name} was set by {source})",)
    return exc


def _name_where_given(exc: ConfigurationError, model: type[BaseSettings], options: dict[str, Any]) -> None:
    """Say, in a factory's ``exc``, where each setting it names by its variable was given when that was not
    the variable: a factory checks values load_settings accepted (a Redis URL's form) and names the variable,
    as every message does, which misled a caller who passed ``url=...`` and set no variable at all. The
    wording is load_settings' own ("ARTIFACT_STORE_REDIS_URL (given as the argument url)"). Raises nothing."""
    text = exc.message
    given = {key: value for key, value in options.items() if value is not None}
    for name in model.model_fields:
        env = env_name_of(model, name)
        if env not in text:
            continue
        try:
            where = _given_where(model, name, given)
        except ConfigurationError:  # an unreadable config file: the error being raised matters more
            continue
        if where and where not in text:
            # Whole names only (ARTIFACT_STORE_REDIS_URL is not found inside a longer variable's name), and not a
            # suggestion to set the variable ("or set ARTIFACT_STORE_HTTP_TRUST_ENV=false"), which it would cut.
            found = re.search(rf"(?<![A-Z0-9_]){re.escape(env)}(?![A-Z0-9_=])", text)
            if found is not None:
                text = text[: found.end()] + where + text[found.end() :]
    exc.args = (text, *exc.args[1:])


def _misbuilt(store: ArtifactStore, context: StoreContext) -> str | None:
    """What is wrong with a store a factory built from ``context`` (for the message), or ``None``. Raises nothing."""
    try:
        namespace, codec = store.namespace, store.codec
    except AttributeError:
        return (
            f"returned {with_article(type(store).__name__)} whose __init__ did not call ArtifactStore.__init__; call "
            "super().__init__(namespace=context.namespace, codec=context.codec)"
        )
    if namespace != context.namespace:
        return (
            f"bound the store to namespace {namespace!r}, not {context.namespace!r}; pass namespace=context.namespace"
        )
    if codec is not context.codec:
        return (
            "built the store with a codec of its own, so the signing key and compression settings "
            "(ARTIFACT_STORE_SIGNING_KEY, ARTIFACT_STORE_COMPRESSION, ARTIFACT_STORE_COMPRESS_THRESHOLD) do not "
            "apply to it; pass codec=context.codec"
        )
    return None


def _secret_values(*models: BaseSettings | None) -> list[str]:
    """Every ``SecretStr`` value of ``models`` (a backend's settings, the core's signing key)."""
    return [
        value.get_secret_value()
        for model in models
        if model is not None
        for value in (getattr(model, name, None) for name in type(model).model_fields)
        if isinstance(value, SecretStr)
    ]


def _factory_error(spec: BackendSpec, origin: str, exc: Exception) -> ArtifactStoreError:
    """The core error for a backend factory's own exception (a client that cannot connect or parse a setting).

    Only the exception's type is quoted, as the stores do for client errors they do not know: its text may
    hold a URL with a password or a token, which no message may carry. The original is chained.
    """
    name = spec.name
    cls: type[ArtifactStoreError]
    if isinstance(exc, PermissionError):
        cls, what = AccessDeniedError, "was denied access"
    elif isinstance(exc, TimeoutError):
        cls, what = BackendTimeoutError, "timed out"
    elif isinstance(exc, ConnectionError):
        cls, what = BackendUnavailableError, "could not connect"
    elif isinstance(exc, ValueError):
        # A factory that refuses a value its settings model accepted: the configuration is what to fix. The
        # variables are named by the model's own prefix, which need not be the backend's name upper-cased
        # (a name such as "my-db" cannot even be part of a variable's name).
        if spec.settings_model is not None:
            cls, what = ConfigurationError, f"refused its settings ({env_name_of(spec.settings_model, '*')})"
        else:
            cls, what = ConfigurationError, "refused its configuration (it has no settings of its own)"
    else:
        cls, what = BackendError, "failed"
    return cls(
        f"backend {name!r} ({origin}) {what} while creating the store: {type(exc).__name__}"
        " (the original exception is chained; the CLI shows it with --debug)",
        backend=name,
    )
