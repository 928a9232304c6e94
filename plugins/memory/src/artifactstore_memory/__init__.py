"""The memory backend: artifacts in this process's memory, shared by every store of one namespace.

It keeps references to the saved messages (which are deeply immutable), never copies, and never evicts:
at a configured limit the save raises :class:`~artifactstore_core.CapacityError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from artifactstore_core import (
    ArtifactInfo,
    ArtifactStore,
    BackendSettings,
    BackendSpec,
    Capabilities,
    CapacityError,
    Codec,
    Message,
    StoreContext,
    hookimpl,
)
from artifactstore_core.envelope import content_bytes, content_info

__all__ = ["MemorySettings", "MemorySpace", "MemoryStore"]


class MemorySettings(BackendSettings):
    """Settings of the memory backend (prefix ``ARTIFACT_STORE_MEMORY_``)."""

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_MEMORY_", extra="ignore")
    config_table = "memory"

    limit: int | None = Field(
        default=None, ge=1, description="Most artifacts per namespace; the next save raises CapacityError."
    )
    max_bytes: int | None = Field(
        default=None, ge=1, description="Most content bytes per namespace; a save beyond raises CapacityError."
    )


class _Sizes:
    """The content sizes of one namespace's artifacts that were measured, and their running total.

    Kept as a total so that a save under ``max_bytes`` costs the same in a namespace of 40,000 artifacts as
    in one of ten (summing every size on each save made it linear in the namespace). Changed under the
    space's lock only.
    """

    __slots__ = ("by_id", "total")

    def __init__(self) -> None:
        self.by_id: dict[str, int] = {}
        self.total = 0

    def set(self, step_id: str, size: int) -> None:
        self.total += size - self.by_id.get(step_id, 0)
        self.by_id[step_id] = size

    def forget(self, step_id: str) -> None:
        self.total -= self.by_id.pop(step_id, 0)

    def clear(self) -> None:
        self.by_id.clear()
        self.total = 0


class MemorySpace:
    """The artifacts of every namespace in one process; stores of the same namespace share them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._namespaces: dict[str, dict[str, Message]] = {}
        self._sizes: dict[str, _Sizes] = {}

    def namespace(self, name: str) -> dict[str, Message]:
        """The (live) dict of one namespace's artifacts."""
        with self.lock:
            return self._namespaces.setdefault(name, {})

    def namespace_names(self) -> list[str]:
        """Namespaces that hold at least one artifact."""
        with self.lock:
            return sorted(name for name, items in self._namespaces.items() if items)


_PROCESS_SPACE = MemorySpace()


def _size(message: Message) -> int:
    return len(content_bytes(message)[1])


class MemoryStore(ArtifactStore):
    """A namespace of artifacts in process memory.

    Args:
        settings: limits; default :class:`MemorySettings` from the environment.
        namespace: the namespace.
        codec: unused for storage (messages are kept as objects); kept for the common interface.
        space: where artifacts live; default the process-wide space.

    Raises:
        InvalidStepIdError: if ``namespace`` is not legal.
    """

    backend_name = "memory"
    capabilities = Capabilities(
        cross_process=False, persistent=False, native_ttl=False, atomic_create=True, list_namespaces=True
    )

    def __init__(
        self,
        settings: MemorySettings | None = None,
        *,
        namespace: str = "default",
        codec: Codec | None = None,
        space: MemorySpace | None = None,
    ) -> None:
        super().__init__(namespace=namespace, codec=codec)
        self._settings = settings if settings is not None else MemorySettings()
        # Plain attributes: read on every save, cheaper than the settings model's.
        self._limit, self._max_bytes = self._settings.limit, self._settings.max_bytes
        self._space = space if space is not None else _PROCESS_SPACE
        self._lock = self._space.lock
        self._items = self._space.namespace(self.namespace)
        with self._lock:
            self._sizes = self._space._sizes.setdefault(self.namespace, _Sizes())

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        limit, max_bytes = self._limit, self._max_bytes
        checked: Message | None = None
        size = 0
        if max_bytes is not None:
            # Write-once first: an identical re-save stores nothing, so measuring the message (an encoding of
            # JSON content) would be wasted, and the comparison would encode it a second time. Checked before
            # the lock, which every namespace of the space shares: a dict read is atomic, and an identical
            # artifact seen here makes the save a success whatever happens after (as if it ran just before).
            checked = None if overwrite else self._items.get(step_id)
            if checked is not None and checked.same_artifact(message):
                return
            size = _size(message)
        with self._lock:
            existing = self._items.get(step_id)
            if existing is None and limit is None and max_bytes is None:
                self._items[step_id] = message
                return
            if existing is not None and not overwrite:
                # The one compared above (differing) unless another store replaced it since.
                if existing is not checked and existing.same_artifact(message):
                    return
                raise self._exists_error(step_id)
            if existing is None and limit is not None and len(self._items) >= limit:
                raise CapacityError(
                    f"memory store for namespace {self.namespace!r} holds its limit of {limit} artifacts "
                    f"(ARTIFACT_STORE_MEMORY_LIMIT); cannot save {step_id!r}",
                    step_id=step_id,
                )
            sizes = self._sizes
            if max_bytes is not None:
                if len(sizes.by_id) < len(self._items):
                    # Stores of this namespace without a byte limit do not measure what they save (a save
                    # costs no serialisation): measure those artifacts once, so the limit counts every byte
                    # of the namespace, whoever saved it.
                    for key, stored in self._items.items():
                        if key not in sizes.by_id:
                            sizes.set(key, _size(stored))
                if sizes.total - sizes.by_id.get(step_id, 0) + size > max_bytes:
                    raise self._too_large_error(step_id, size, max_bytes)
                sizes.set(step_id, size)
            else:
                # The replaced artifact's size no longer holds; a store with a byte limit measures the new one.
                sizes.forget(step_id)
            self._items[step_id] = message

    def _max_artifact_bytes(self) -> int | None:
        """``max_bytes``: it limits the namespace's total, so no single artifact can be larger.

        Not ``max_bytes`` minus what is stored: other stores of the namespace save and delete meanwhile,
        so that room is no bound; :meth:`_save` checks the total under the lock as for any save.
        """
        return self._max_bytes

    def _too_large_error(self, step_id: str, size: int | None, limit: int) -> CapacityError:
        """The :class:`~artifactstore_core.CapacityError` of a save past ``max_bytes`` (``size=None``: a
        stream that ``save_stream`` stopped reading at ``max_bytes + 1`` bytes)."""
        shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return CapacityError(
            f"saving {step_id!r} ({shown}) would exceed the memory store's limit of {limit} bytes "
            "(ARTIFACT_STORE_MEMORY_MAX_BYTES)",
            step_id=step_id,
        )

    def _get(self, step_id: str) -> Message:
        # A dict read is atomic; writers replace whole values under the lock, so no lock is needed here.
        message = self._items.get(step_id)
        if message is None:
            raise self._not_found(step_id)
        return message

    def _exists(self, step_id: str) -> bool:
        return step_id in self._items

    def _delete(self, step_id: str) -> bool:
        with self._lock:
            self._sizes.forget(step_id)
            return self._items.pop(step_id, None) is not None

    def _list(self) -> Iterator[ArtifactInfo]:
        with self._lock:
            ids = list(self._items)
        # Each info is built as the listing is read, not all up front: a caller that keeps only some (the
        # http server picking one page) holds those, not an info for every artifact of the namespace.
        for step_id in ids:
            message = self._items.get(step_id)  # atomic, as in _get
            if message is not None:  # None: deleted since the ids were taken
                yield content_info(step_id, message)

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        # An info hashes its content: pick the page's ids from the keys first and build the infos of the page only.
        def names() -> Iterator[tuple[str, None]]:
            with self._lock:
                ids = list(self._items)
            return ((step_id, None) for step_id in ids)

        def infos(chosen: list[tuple[str, None]]) -> Iterator[ArtifactInfo | None]:
            for step_id, _ in chosen:
                message = self._items.get(step_id)  # atomic, as in _get; None: deleted since the ids were taken
                yield None if message is None else content_info(step_id, message)

        return self._page_of_ids(names, after, limit, infos)

    def _info(self, step_id: str) -> ArtifactInfo:
        return content_info(step_id, self._get(step_id))

    def _namespaces(self) -> Iterable[str]:
        return self._space.namespace_names()

    def _clear(self) -> int:
        with self._lock:
            count = len(self._items)
            # Cleared in place: other stores of this namespace hold the same dict.
            self._items.clear()
            self._sizes.clear()
            return count


def _factory(context: StoreContext) -> MemoryStore:
    settings = context.settings if isinstance(context.settings, MemorySettings) else None
    return MemoryStore(settings, namespace=context.namespace, codec=context.codec)


@hookimpl
def artifactstore_register_backends(register: Callable[[BackendSpec], Any]) -> None:
    """Register the ``memory`` backend."""
    register(
        BackendSpec(
            name="memory",
            factory=_factory,
            settings_model=MemorySettings,
            capabilities=MemoryStore.capabilities,
            description="In-process memory (default); not shared across processes.",
        )
    )
