"""A third-party artifactstore backend in one small module: the example of ``docs/writing-a-backend.md``.

It keeps encoded envelopes (bytes) in a dict per namespace, which makes it a byte-storing backend like
Redis or S3: every artifact goes through the core's codec, so digests and signatures are verified on read.
It uses only the public API of ``artifactstore_core``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from artifactstore_core import (
    ArtifactInfo,
    ArtifactStore,
    BackendSettings,
    BackendSpec,
    Capabilities,
    Codec,
    Message,
    StoreContext,
    hookimpl,
)

# namespace -> step id -> envelope bytes. Process-wide, like a server every store talks to.
_SHELF: dict[str, dict[str, bytes]] = {}
_LOCK = threading.Lock()


class ExampleSettings(BackendSettings):
    """Settings of the example backend (prefix ``ARTIFACT_STORE_EXAMPLE_``)."""

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_EXAMPLE_", extra="ignore")
    config_table = "example"

    greeting: str = Field(default="hello", description="An example setting, to show how settings work.")


class ExampleStore(ArtifactStore):
    """Envelopes in a process-wide dict."""

    backend_name = "example"
    capabilities = Capabilities(cross_process=False, persistent=False, atomic_create=True)

    def __init__(self, *, namespace: str = "default", codec: Codec | None = None) -> None:
        super().__init__(namespace=namespace, codec=codec)
        with _LOCK:
            self._blobs = _SHELF.setdefault(self.namespace, {})

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        # Signed (with a signing key) for this namespace and id, so a copy under another id is refused.
        place = (self.namespace, step_id)
        encoded = self.codec.encode(message, place=place)
        blob = encoded.to_bytes()
        with _LOCK:
            existing = self._blobs.get(step_id)
            if existing is not None and not overwrite:
                # Write-once: an identical artifact (created_at aside) is a successful retry.
                if self.codec.header_of(existing, place=place).identity() == encoded.header.identity():
                    return
                raise self._exists_error(step_id)
            self._blobs[step_id] = blob

    def _get(self, step_id: str) -> Message:
        blob = self._blobs.get(step_id)
        if blob is None:
            raise self._not_found(step_id)
        return self.codec.decode_bytes(blob, place=(self.namespace, step_id))

    def _exists(self, step_id: str) -> bool:
        return step_id in self._blobs

    def _delete(self, step_id: str) -> bool:
        with _LOCK:
            return self._blobs.pop(step_id, None) is not None

    def _list(self) -> Iterable[ArtifactInfo]:
        with _LOCK:
            snapshot = list(self._blobs.items())
        for step_id, blob in snapshot:
            yield self.codec.header_of(blob, place=(self.namespace, step_id)).info(step_id)

    def _clear(self) -> int:
        with _LOCK:
            count = len(self._blobs)
            self._blobs.clear()
            return count


def _factory(context: StoreContext) -> ExampleStore:
    return ExampleStore(namespace=context.namespace, codec=context.codec)


@hookimpl
def artifactstore_register_backends(register: Callable[[BackendSpec], Any]) -> None:
    """Register the ``example`` backend."""
    register(
        BackendSpec(
            name="example",
            factory=_factory,
            settings_model=ExampleSettings,
            capabilities=ExampleStore.capabilities,
            description="Example third-party backend: envelopes in a dict.",
        )
    )
