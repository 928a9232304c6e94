""":class:`StoreConfig`: how to build the configured store, in this process or in a worker process."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from ..ids import validate_namespace
from ..models import Capabilities
from ..registry import plugin_host
from ..settings import CoreSettings, load_settings
from ..store import ArtifactStore
from ..wiring import create_store

__all__ = ["StoreConfig"]


class StoreConfig:
    """A backend name and its options: everything needed to (re)build a store for any namespace.

    It holds plain values only, so it can be sent to a worker process, which rebuilds the store there
    with :func:`~artifactstore_core.create_store`. Settings not given here come, as always, from the
    environment and the config file (worker processes inherit both: the environment and working
    directory of the process that started them).

    A ``StoreConfig`` is also a store factory: ``config(namespace)`` is ``config.create(namespace)``.

    Args:
        backend: the backend name; default ``ARTIFACT_STORE_BACKEND`` (then the config file, then ``memory``).
        **options: the backend's settings by field name (``url=...`` for redis, ``root=...`` for
            filesystem), as :func:`~artifactstore_core.create_store` takes them; not ``namespace``, which
            each store built from the config is given.

    Raises:
        ConfigurationError: a ``namespace`` option.
    """

    def __init__(self, backend: str | None = None, **options: Any) -> None:
        if "namespace" in options:
            # Every store built from a config is bound to the namespace it is built for (an executor's: the
            # execution id), so this one could never be used: each create() would fail with a TypeError.
            raise ConfigurationError(
                "StoreConfig takes no namespace option: an Executor stores each execution in a namespace of its "
                "own, the execution id (Executor.run(pipeline, execution_id=...)); for a store bound to a "
                "namespace of your choice, call config.create(namespace)"
            )
        self.backend = backend
        self.options: dict[str, Any] = dict(options)

    def create(self, namespace: str | None = None) -> ArtifactStore:
        """Build a store bound to ``namespace`` (default: the configured namespace). Close it when done.

        Raises:
            The errors of :func:`~artifactstore_core.create_store`: ``ConfigurationError``,
            ``BackendNotFoundError``, ``PluginLoadError``, ``InvalidStepIdError``, ``BackendError``.
        """
        if namespace is not None:
            validate_namespace(namespace)
        return create_store(self.backend, namespace=namespace, **self.options)

    def __call__(self, namespace: str) -> ArtifactStore:
        """Same as :meth:`create`: lets a ``StoreConfig`` stand wherever a store factory is expected."""
        return self.create(namespace)

    def backend_name(self) -> str:
        """The backend this config selects, resolving the default from the environment and config file.

        Raises:
            ConfigurationError: the core settings are invalid.
        """
        if self.backend is not None:
            return self.backend
        return load_settings(CoreSettings).backend

    def resolved(self) -> StoreConfig:
        """A copy with the backend name fixed, so another process builds exactly the same backend.

        Raises:
            ConfigurationError: the core settings are invalid.
        """
        return StoreConfig(self.backend_name(), **self.options)

    def capabilities(self) -> Capabilities:
        """The capabilities the selected backend declares, read from its registration (nothing is built).

        Raises:
            BackendNotFoundError: the backend is not installed. PluginLoadError: its plugin fails to load.
            ConfigurationError: the core settings are invalid.
        """
        return plugin_host().load(self.backend_name()).capabilities

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoreConfig):
            return NotImplemented
        return self.backend == other.backend and self.options == other.options

    def __repr__(self) -> str:
        # Option values may be secrets (a password in a URL): show only their names.
        names = ", ".join(sorted(self.options))
        return f"StoreConfig(backend={self.backend!r}, options=[{names}])"
