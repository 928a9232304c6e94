"""artifactstore: store the outputs of pipeline steps so later steps, anywhere, can read them.

Quick start::

    from artifactstore_core import Message, create_store

    with create_store() as store:          # ARTIFACT_STORE_BACKEND picks the backend (default: memory)
        store.save("extract", Message(content={"rows": 3}))
        print(store.get("extract").content)
"""

from __future__ import annotations

from .envelope import Codec
from .errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    BackendNotFoundError,
    BackendTimeoutError,
    BackendUnavailableError,
    CapacityError,
    ConfigurationError,
    InvalidStepIdError,
    PayloadTooLargeError,
    PluginLoadError,
    SchemaMismatchError,
    SerializationError,
    StoreClosedError,
    UnsupportedFormatError,
    UnsupportedOperationError,
)
from .hookspecs import hookimpl
from .message import FrozenDict, Message, SchemaInfo
from .models import ArtifactInfo, Capabilities
from .registry import BackendSpec
from .settings import BackendSettings, CoreSettings
from .store import ArtifactStore
from .wiring import StoreContext, create_store

__all__ = [
    "AccessDeniedError",
    "ArtifactCorruptedError",
    "ArtifactExistsError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "ArtifactStoreError",
    "BackendError",
    "BackendNotFoundError",
    "BackendSettings",
    "BackendSpec",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "Capabilities",
    "CapacityError",
    "Codec",
    "ConfigurationError",
    "CoreSettings",
    "FrozenDict",
    "InvalidStepIdError",
    "Message",
    "PayloadTooLargeError",
    "PluginLoadError",
    "SchemaInfo",
    "SchemaMismatchError",
    "SerializationError",
    "StoreClosedError",
    "StoreContext",
    "UnsupportedFormatError",
    "UnsupportedOperationError",
    "create_store",
    "hookimpl",
]
