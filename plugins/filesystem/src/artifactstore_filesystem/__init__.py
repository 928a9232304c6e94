"""The filesystem backend: persistent artifacts as files under a local directory, shared by processes.

Select it with ``ARTIFACT_STORE_BACKEND=filesystem``; set the directory with
``ARTIFACT_STORE_FILESYSTEM_ROOT`` (default: the per-user data directory). Writes are atomic, durable
and write-once across processes; see ``docs/filesystem.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from artifactstore_core import BackendSpec, StoreContext, hookimpl

from .settings import FilesystemSettings, default_root
from .store import FilesystemStore

__all__ = ["FilesystemSettings", "FilesystemStore", "default_root"]


def _factory(context: StoreContext) -> FilesystemStore:
    settings = context.settings if isinstance(context.settings, FilesystemSettings) else None
    return FilesystemStore(settings, namespace=context.namespace, codec=context.codec)


@hookimpl
def artifactstore_register_backends(register: Callable[[BackendSpec], Any]) -> None:
    """Register the ``filesystem`` backend."""
    register(
        BackendSpec(
            name="filesystem",
            factory=_factory,
            settings_model=FilesystemSettings,
            capabilities=FilesystemStore.capabilities,
            description="Files under a local directory: persistent, shared by processes, crash-safe.",
        )
    )
