"""Building the configured store: :func:`create_store` and the :class:`StoreContext` factories receive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic_settings import BaseSettings

from .envelope import Codec
from .ids import validate_namespace
from .registry import BackendSpec, plugin_host
from .settings import CoreSettings, load_settings
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
    key = core.signing_key.get_secret_value().encode("utf-8") if core.signing_key else None
    return Codec(signing_key=key, compress_threshold=core.compress_threshold if core.compression else None)


def create_store(backend: str | None = None, *, namespace: str | None = None, **options: Any) -> ArtifactStore:
    """Create the configured store. Close it when done (it is a context manager).

    Args:
        backend: the backend name; default ``ARTIFACT_STORE_BACKEND`` (then the config file, then ``memory``).
        namespace: the namespace; default ``ARTIFACT_STORE_NAMESPACE`` (then ``"default"``).
        **options: the backend's settings by field name (``url=...`` for redis), overriding the environment.

    Raises:
        ConfigurationError: a setting is invalid or unknown (the message names the env var).
        BackendNotFoundError: no backend of that name is installed (with the ``pip install`` line, or a
            "did you mean").
        PluginLoadError: the backend's plugin failed to load.
        InvalidStepIdError: the namespace is not legal.
        BackendError: the backend could not be set up.
    """
    core = load_settings(CoreSettings, backend=backend, namespace=namespace)
    spec: BackendSpec = plugin_host().load(core.backend)
    settings = load_settings(spec.settings_model, **options) if spec.settings_model is not None else None
    if spec.settings_model is None and options:
        from .errors import ConfigurationError

        raise ConfigurationError(f"backend {spec.name!r} takes no options, got {', '.join(sorted(options))}")
    context = StoreContext(
        namespace=validate_namespace(core.namespace), settings=settings, codec=codec_from(core), core=core
    )
    return spec.factory(context)
