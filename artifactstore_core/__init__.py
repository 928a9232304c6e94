"""artifactstore: store the outputs of pipeline steps so later steps, anywhere, can read them.

Quick start::

    from artifactstore_core import Message, create_store

    with create_store() as store:          # ARTIFACT_STORE_BACKEND picks the backend (default: memory)
        store.save("extract", Message(content={"rows": 3}))
        print(store.get("extract").content)
"""

# No import runs here, not even `from __future__` or typing's (13 ms, the better part of the time the package
# took): the console script imports this package before its entry point (cli_main.main) can turn Ctrl-C into
# `aborted`, and a Ctrl-C while this module ran printed a traceback. typing.TYPE_CHECKING's idiom without
# typing: type checkers take a name TYPE_CHECKING as true.
TYPE_CHECKING = False

if TYPE_CHECKING:
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

#: The module of each public name, imported on first use of the name (PEP 562), not with the package:
#: importing all of them (pydantic, zstandard, blake3, ...) takes the better part of a second, and the
#: ``artifactstore`` command's entry point (:mod:`artifactstore_core.cli_main`) lives in this package. It
#: must be running, ready to turn Ctrl-C into its quiet ``aborted``, before any of that is imported.
_MODULE_OF = {
    "Codec": "envelope",
    "AccessDeniedError": "errors",
    "ArtifactCorruptedError": "errors",
    "ArtifactExistsError": "errors",
    "ArtifactNotFoundError": "errors",
    "ArtifactStoreError": "errors",
    "BackendError": "errors",
    "BackendNotFoundError": "errors",
    "BackendTimeoutError": "errors",
    "BackendUnavailableError": "errors",
    "CapacityError": "errors",
    "ConfigurationError": "errors",
    "InvalidStepIdError": "errors",
    "PayloadTooLargeError": "errors",
    "PluginLoadError": "errors",
    "SchemaMismatchError": "errors",
    "SerializationError": "errors",
    "StoreClosedError": "errors",
    "UnsupportedFormatError": "errors",
    "UnsupportedOperationError": "errors",
    "hookimpl": "hookspecs",
    "FrozenDict": "message",
    "Message": "message",
    "SchemaInfo": "message",
    "ArtifactInfo": "models",
    "Capabilities": "models",
    "BackendSpec": "registry",
    "BackendSettings": "settings",
    "CoreSettings": "settings",
    "ArtifactStore": "store",
    "StoreContext": "wiring",
    "create_store": "wiring",
}


# Defined for the interpreter only: a module-level __getattr__ that type checkers see makes every name
# resolve (mypy types ``from artifactstore_core import Typo`` as Any instead of reporting it); the
# TYPE_CHECKING imports above give them the real names.
if not TYPE_CHECKING:
    # `object`, not typing.Any (not imported, see above); no type checker sees this function anyway.
    def __getattr__(name: str) -> object:
        """A public name's value, imported on first use; a submodule (``artifactstore_core.errors``), imported.

        Submodules too because importing the package used to import them, so code that reads
        ``artifactstore_core.errors.X`` after a bare ``import artifactstore_core`` kept working.

        Raises:
            AttributeError: no such name or submodule.
        """
        import importlib  # here, not above: see the top of the module

        module = _MODULE_OF.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f".{module}", __name__), name)
            globals()[name] = value  # later uses are plain attribute reads
            return value
        if not name.startswith("_"):  # dunders that inspect/copy/pickle probe for are no submodules
            try:
                return importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":  # the submodule exists; something it imports does not
                    raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
