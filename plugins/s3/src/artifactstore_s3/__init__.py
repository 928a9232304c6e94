"""The S3 backend of artifactstore (``ARTIFACT_STORE_BACKEND=s3``), on boto3.

Each artifact is one object whose body is the payload (for ``bytes`` content, exactly the bytes saved)
and whose metadata carries the verified envelope head, so other tools can read the payload with a plain
S3 client. Write-once uses conditional writes; ``save_stream``/``open`` stream in bounded memory. See
``docs/s3.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from artifactstore_core import BackendSpec, StoreContext, hookimpl

from .keys import MAX_PREFIX_BYTES
from .settings import S3Settings
from .store import S3Store

__all__ = ["MAX_PREFIX_BYTES", "S3Settings", "S3Store"]


def _factory(context: StoreContext) -> S3Store:
    settings = context.settings if isinstance(context.settings, S3Settings) else None
    return S3Store(settings, namespace=context.namespace, codec=context.codec)


@hookimpl
def artifactstore_register_backends(register: Callable[[BackendSpec], Any]) -> None:
    """Register the ``s3`` backend."""
    register(
        BackendSpec(
            name="s3",
            factory=_factory,
            settings_model=S3Settings,
            capabilities=S3Store.capabilities,
            description="S3 or an S3-compatible service: conditional writes, streaming multipart uploads.",
        )
    )
