"""The Redis backend of artifactstore: artifacts in a Redis server or Redis Cluster, shared by every process
and machine that reaches it.

Select it with ``ARTIFACT_STORE_BACKEND=redis`` and ``ARTIFACT_STORE_REDIS_URL=redis://host:6379/0``; see
``docs/redis.md`` for the settings, the key layout and the guarantees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from artifactstore_core import BackendSpec, StoreContext, hookimpl

from .settings import RedisSettings, mask_url
from .store import RedisClient, RedisStore

__all__ = ["RedisClient", "RedisSettings", "RedisStore", "mask_url"]


def _factory(context: StoreContext) -> RedisStore:
    settings = context.settings if isinstance(context.settings, RedisSettings) else None
    return RedisStore(settings, namespace=context.namespace, codec=context.codec)


@hookimpl
def artifactstore_register_backends(register: Callable[[BackendSpec], Any]) -> None:
    """Register the ``redis`` backend."""
    register(
        BackendSpec(
            name="redis",
            factory=_factory,
            settings_model=RedisSettings,
            capabilities=RedisStore.capabilities,
            description="Redis or Redis Cluster: shared across processes and machines, native TTL.",
        )
    )
