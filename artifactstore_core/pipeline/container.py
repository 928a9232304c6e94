""":class:`ServiceContainer`: a small, thread-safe registry of lazily built services.

It is how a framework hands the configured :class:`~artifactstore_core.ArtifactStore` (and its LLM
clients, ...) to the code that needs them: register once, resolve anywhere, close everything at the end.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, overload

from ..errors import ConfigurationError
from ..store import ArtifactStore
from .config import StoreConfig
from .errors import ContainerClosedError, ServiceNotFoundError

__all__ = ["ServiceContainer", "ServiceKey", "register_artifact_store"]

T = TypeVar("T")

#: A service key: a class (resolving returns an instance of it) or a name.
ServiceKey = type[Any] | str


def _key_name(key: ServiceKey) -> str:
    return key if isinstance(key, str) else f"{key.__module__}.{key.__qualname__}"


@dataclass
class _Registration:
    factory: Callable[[ServiceContainer], Any] | None
    instance: Any
    created: bool
    owned: bool


class ServiceContainer:
    """Services by key, built lazily on first :meth:`resolve`, closed in reverse order of creation.

    Thread-safe: one lock guards registration and resolution, so a factory runs at most once even when
    many threads resolve its key together (factories run under that lock; keep them quick). A factory
    receives the container, so it can resolve the services it depends on.

    Use it as a context manager (``with ServiceContainer() as services: ...``) or call :meth:`close`.

    Example::

        with ServiceContainer() as services:
            register_artifact_store(services, backend="redis", url="redis://localhost:6379/0")
            store = services.resolve(ArtifactStore)
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._registrations: dict[ServiceKey, _Registration] = {}
        self._creation_order: list[ServiceKey] = []
        self._resolving: list[ServiceKey] = []
        self._closed = False

    # -- registration ---------------------------------------------------------------------------------

    def register(self, key: ServiceKey, factory: Callable[[ServiceContainer], Any], *, close: bool = True) -> None:
        """Register a factory for ``key``, called with this container on the first :meth:`resolve`.

        Args:
            close: call the service's ``close()`` (if it has one) when the container closes.

        Raises:
            ConfigurationError: ``key`` is already registered.
            ContainerClosedError: the container was closed.
        """
        self._add(key, _Registration(factory=factory, instance=None, created=False, owned=close))

    def register_instance(self, key: ServiceKey, instance: Any, *, close: bool = False) -> None:
        """Register an existing object for ``key``.

        Args:
            close: hand ownership to the container, which then closes the object (if it has ``close()``)
                when it closes. By default the caller keeps ownership.

        Raises:
            ConfigurationError: ``key`` is already registered, or ``instance`` is not an instance of ``key``.
            ContainerClosedError: the container was closed.
        """
        _check_type(key, instance)
        self._add(key, _Registration(factory=None, instance=instance, created=True, owned=close))

    def _add(self, key: ServiceKey, registration: _Registration) -> None:
        if not isinstance(key, (str, type)) or (isinstance(key, str) and not key):
            raise ConfigurationError(f"a service key is a class or a non-empty str, not {key!r}")
        with self._lock:
            self._check_open()
            if key in self._registrations:
                raise ConfigurationError(f"service {_key_name(key)!r} is already registered")
            self._registrations[key] = registration
            if registration.created:
                self._creation_order.append(key)

    # -- resolution -----------------------------------------------------------------------------------

    @overload
    def resolve(self, key: str) -> Any: ...

    # Typed as a callable returning T rather than type[T], so abstract classes such as ArtifactStore
    # are accepted by type checkers (mypy refuses an abstract class where type[T] is expected).
    @overload
    def resolve(self, key: Callable[..., T]) -> T: ...

    def resolve(self, key: Any) -> Any:
        """Return the service registered under ``key``, building it on first use.

        Raises:
            ServiceNotFoundError: nothing is registered under ``key`` (the message lists what is).
            ConfigurationError: the factories depend on each other in a cycle, or a factory returned an
                object that is not an instance of its key class.
            ContainerClosedError: the container was closed.
            Whatever the factory raises (the container stays usable; the next resolve tries again).
        """
        with self._lock:
            self._check_open()
            registration = self._registrations.get(key)
            if registration is None:
                known = ", ".join(sorted(_key_name(k) for k in self._registrations)) or "none"
                raise ServiceNotFoundError(f"no service {_key_name(key)!r} is registered; registered: {known}")
            if registration.created:
                return registration.instance
            if key in self._resolving:
                chain = " -> ".join(_key_name(k) for k in [*self._resolving, key])
                raise ConfigurationError(f"services depend on each other in a cycle: {chain}")
            assert registration.factory is not None
            self._resolving.append(key)
            try:
                instance = registration.factory(self)
            finally:
                self._resolving.pop()
            try:
                _check_type(key, instance)
            except ConfigurationError:
                if registration.owned:
                    _close_quietly(instance)
                raise
            registration.instance = instance
            registration.created = True
            self._creation_order.append(key)
            return instance

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._registrations

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Close the services the container owns, newest first. Idempotent.

        Every owned service is closed even if one fails; then the first failure is raised (the others are
        attached to it as notes).

        Raises:
            Whatever the first failing ``close()`` raised.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            owned = [
                self._registrations[key].instance
                for key in reversed(self._creation_order)
                if self._registrations[key].owned
            ]
            self._registrations.clear()
            self._creation_order.clear()
        errors: list[Exception] = []
        for service in owned:
            closer = getattr(service, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception as exc:
                    errors.append(exc)
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"also failed while closing services: {type(other).__name__}: {other}")
            raise first

    def __enter__(self) -> ServiceContainer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ContainerClosedError("the service container is closed; create a new one")

    def __repr__(self) -> str:
        with self._lock:
            keys = ", ".join(_key_name(k) for k in self._registrations)
        return f"<ServiceContainer closed={self._closed} services=[{keys}]>"


def _check_type(key: ServiceKey, instance: Any) -> None:
    if isinstance(key, type) and not isinstance(instance, key):
        raise ConfigurationError(f"service {_key_name(key)!r} must be an instance of it, got {type(instance).__name__}")


def _close_quietly(service: Any) -> None:
    closer = getattr(service, "close", None)
    if callable(closer):
        # The type error about to be raised is the one worth reporting; a close failure here is secondary.
        with contextlib.suppress(Exception):
            closer()


def register_artifact_store(
    container: ServiceContainer, backend: str | None = None, *, namespace: str | None = None, **options: Any
) -> StoreConfig:
    """Register the configured store in ``container``, the way a framework injects it.

    Registers two services:

    * :class:`StoreConfig`: the backend name and options; an
      :class:`~artifactstore_core.pipeline.Executor` built from the container uses it to make one store
      per execution (namespace = execution id), in this process or in worker processes;
    * :class:`~artifactstore_core.ArtifactStore`: a store bound to ``namespace`` (default: the configured
      one), built lazily by :func:`~artifactstore_core.create_store` on first resolve and closed with
      the container.

    Args:
        backend: the backend name; default ``ARTIFACT_STORE_BACKEND`` (then the config file, then ``memory``).
        namespace: the namespace of the ``ArtifactStore`` service.
        **options: the backend's settings by field name, as :func:`~artifactstore_core.create_store` takes.

    Returns:
        The registered :class:`StoreConfig`.

    Raises:
        ConfigurationError: ``StoreConfig`` or ``ArtifactStore`` is already registered.
        ContainerClosedError: the container was closed.
        (Backend errors are raised later, by ``resolve(ArtifactStore)``.)
    """
    config = StoreConfig(backend, **options)
    with container._lock:
        taken = [_key_name(key) for key in (StoreConfig, ArtifactStore) if key in container]
        if taken:
            raise ConfigurationError(f"service(s) {', '.join(taken)} already registered in this container")
        container.register_instance(StoreConfig, config)
        container.register(ArtifactStore, lambda _: config.create(namespace))
    return config
