"""The memory backend: artifacts in this process's memory, shared by every store of one namespace.

It keeps references to the saved messages (which are deeply immutable), never copies, and never evicts:
at a configured limit the save raises :class:`~artifactstore_core.CapacityError`.
"""

from __future__ import annotations

import os
import threading
import weakref
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
    """The artifacts of every namespace in one process; stores of the same namespace share them.

    Holds the namespaces that hold artifacts, and no others: a namespace emptied by ``delete`` or ``clear``
    is dropped, and its next save starts it again. A process that runs pipeline after pipeline, each in a
    namespace of its own, or a server asked about namespaces that hold nothing, would otherwise keep an
    entry for every namespace it ever saw. Stores therefore look their namespace up at each call rather than
    keep its dict.
    """

    def __init__(self) -> None:
        # Re-entrant for the fork handlers alone: a fork made while this thread holds it (a signal handler that
        # forks, run inside a save) takes it once more instead of waiting on itself for ever.
        self.lock = threading.RLock()
        # Only non-empty namespaces (see the class docstring); changed under the lock only.
        self._namespaces: dict[str, dict[str, Message]] = {}
        self._sizes: dict[str, _Sizes] = {}
        with _SPACES_LOCK:
            _SPACES.add(self)

    def namespace(self, name: str) -> dict[str, Message]:
        """The (live) dict of one namespace's artifacts, while it holds any.

        A namespace emptied by ``delete`` or ``clear`` is dropped from the space, and a later save starts a
        new dict: the one returned here then no longer changes.
        """
        with self.lock:
            return self._namespaces.setdefault(name, {})

    def _drop(self, name: str) -> None:
        """Forget the (emptied) namespace ``name``. Called under the lock."""
        self._namespaces.pop(name, None)
        self._sizes.pop(name, None)

    def namespace_names(self) -> list[str]:
        """Namespaces that hold at least one artifact."""
        with self.lock:
            return sorted(name for name, items in self._namespaces.items() if items)


# Every live space, for the fork handlers below (weakly: a space a test or a caller dropped goes away).
_SPACES: weakref.WeakSet[MemorySpace] = weakref.WeakSet()
# Guards _SPACES, which a space made in one thread would otherwise change while a fork in another reads it.
# Taken by a thread that holds a space's lock only re-entered from a signal handler that forks, through
# _before_fork, which takes it before the spaces' locks as everything else does.
_SPACES_LOCK = threading.RLock()  # re-entrant: see MemorySpace.lock
# The locks the forking thread took in _before_fork, each recorded once taken: a before-handler interrupted
# half-way (a signal's exception) leaves the after-handlers exactly those to release.
_HELD: list[threading.RLock] = []


def _before_fork() -> None:
    """Take every space's lock before ``os.fork()``, so the child gets each space between two changes.

    A thread inside a save or delete at the fork does not exist in the child, yet the lock it held stayed
    held there for good: the child's first save hung (DESIGN: fork-safe where the client allows). A new lock
    in the child alone would not do either: the space could be half-changed (a size counted for an artifact
    not stored yet). Waiting here ends: the lock is held only for a few dict updates, by code that takes no
    other lock and never forks, or by this very thread when a signal handler forks in the middle of a save:
    the locks are re-entrant, so it takes them once more (a plain lock hung the parent on itself), and that
    child alone gets the interrupted change half-done.
    """
    _SPACES_LOCK.acquire()
    _HELD.append(_SPACES_LOCK)
    for space in list(_SPACES):
        space.lock.acquire()
        _HELD.append(space.lock)


def _after_fork() -> None:
    """Release what :func:`_before_fork` took, in the parent and in the child (whose only thread holds it)."""
    while _HELD:
        _HELD.pop().release()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


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
        # The space's live map of namespaces: this store's namespace is looked up in it at each call, since
        # the space drops a namespace once it is empty (see MemorySpace).
        self._all = self._space._namespaces

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        limit, max_bytes = self._limit, self._max_bytes
        checked: Message | None = None
        size = 0
        if max_bytes is not None:
            # Write-once first: an identical re-save stores nothing, so measuring the message (an encoding of
            # JSON content) would be wasted, and the comparison would encode it a second time. Checked before
            # the lock, which every namespace of the space shares: a dict read is atomic, and an identical
            # artifact seen here makes the save a success whatever happens after (as if it ran just before).
            current = None if overwrite else self._all.get(self._namespace)
            checked = None if current is None else current.get(step_id)
            if checked is not None and checked.same_artifact(message):
                return
            size = _size(message)
        with self._lock:
            items = self._all.get(self._namespace)
            if items is None:
                # Registered only once something is stored: a refused save leaves no empty namespace behind.
                items = {}
                existing = None
            else:
                existing = items.get(step_id)
            if existing is None and limit is None and max_bytes is None:
                if not items:
                    self._all[self._namespace] = items
                items[step_id] = message
                return
            if existing is not None and not overwrite:
                # The one compared above (differing) unless another store replaced it since.
                if existing is not checked and existing.same_artifact(message):
                    return
                raise self._exists_error(step_id)
            if existing is None and limit is not None and len(items) >= limit:
                raise CapacityError(
                    f"memory store for namespace {self.namespace!r} holds its limit of {limit} "
                    f"artifact{'' if limit == 1 else 's'} "
                    f"(ARTIFACT_STORE_MEMORY_LIMIT); cannot save {step_id!r}",
                    step_id=step_id,
                )
            sizes = self._space._sizes.get(self._namespace)
            if max_bytes is not None:
                if sizes is None:
                    sizes = _Sizes()
                if len(sizes.by_id) < len(items):
                    # Stores of this namespace without a byte limit do not measure what they save (a save
                    # costs no serialisation): measure those artifacts once, so the limit counts every byte
                    # of the namespace, whoever saved it.
                    for key, stored in items.items():
                        if key not in sizes.by_id:
                            sizes.set(key, _size(stored))
                if sizes.total - sizes.by_id.get(step_id, 0) + size > max_bytes:
                    raise self._too_large_error(step_id, size, max_bytes)
                sizes.set(step_id, size)
                self._space._sizes[self._namespace] = sizes
            elif sizes is not None:
                # The replaced artifact's size no longer holds; a store with a byte limit measures the new one.
                sizes.forget(step_id)
            if not items:
                self._all[self._namespace] = items
            items[step_id] = message

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
        # Dict reads are atomic; writers replace whole values under the lock, so no lock is needed here. A
        # namespace dict dropped meanwhile (emptied) answers as the namespace did just before.
        items = self._all.get(self._namespace)
        message = None if items is None else items.get(step_id)
        if message is None:
            raise self._not_found(step_id)
        return message

    def _exists(self, step_id: str) -> bool:
        items = self._all.get(self._namespace)
        return items is not None and step_id in items

    def _delete(self, step_id: str) -> bool:
        with self._lock:
            items = self._all.get(self._namespace)
            if items is None:
                return False
            sizes = self._space._sizes.get(self._namespace)
            if sizes is not None:
                sizes.forget(step_id)
            found = items.pop(step_id, None) is not None
            if not items:
                self._space._drop(self._namespace)
            return found

    def _snapshot(self) -> tuple[dict[str, Message], list[str]]:
        """The namespace's dict and its ids now (an empty dict when the namespace holds nothing)."""
        with self._lock:
            items = self._all.get(self._namespace)
            return ({}, []) if items is None else (items, list(items))

    def _list(self) -> Iterator[ArtifactInfo]:
        items, ids = self._snapshot()
        # Each info is built as the listing is read, not all up front: a caller that keeps only some (the
        # http server picking one page) holds those, not an info for every artifact of the namespace.
        for step_id in ids:
            # Atomic, as in _get. None: deleted since the ids were taken (a dict dropped by a clear was
            # emptied first, and a dropped one is never written again).
            message = items.get(step_id)
            if message is not None:
                yield content_info(step_id, message)

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        # An info hashes its content: pick the page's ids from the keys first and build the infos of the page only.
        def names() -> Iterator[tuple[str, dict[str, Message]]]:
            items, ids = self._snapshot()
            return ((step_id, items) for step_id in ids)

        def infos(chosen: list[tuple[str, dict[str, Message]]]) -> Iterator[ArtifactInfo | None]:
            for step_id, items in chosen:
                message = items.get(step_id)  # atomic, as in _get; None: deleted since the ids were taken
                yield None if message is None else content_info(step_id, message)

        return self._page_of_ids(names, after, limit, infos)

    def _info(self, step_id: str) -> ArtifactInfo:
        return content_info(step_id, self._get(step_id))

    def _namespaces(self) -> Iterable[str]:
        return self._space.namespace_names()

    def _clear(self) -> int:
        with self._lock:
            items = self._all.get(self._namespace)
            if items is None:
                return 0
            count = len(items)
            self._space._drop(self._namespace)
            # Emptied too, not only dropped: a listing under way holds this dict, and must not go on to
            # show artifacts cleared before it read them.
            items.clear()
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
