"""The conformance kit: one test class every backend's tests subclass, unchanged.

Install with ``pip install 'artifactstore-core[testing]'`` and provide one fixture, ``make_store``: a
callable that builds a new store of your backend bound to the namespace it is given. The kit gives every
test fresh namespaces, clears and closes the stores it made, and skips optional capabilities (streaming
in bounded memory, native TTL) by the store's declared ``capabilities``, saying why. Three fixtures are
optional: ``make_unreachable_store`` (a store whose backend fails every operation),
``make_unauthorized_store`` (a store whose backend refuses its credentials) and ``secret_values`` (the
secrets the stores are configured with, which no error, repr or log record, at any level, may show)::

    import pytest
    from artifactstore_core.testing import StoreConformance

    class TestMyBackend(StoreConformance):
        @pytest.fixture
        def make_store(self):
            return lambda namespace: MyStore(namespace=namespace)
"""

from __future__ import annotations

import pytest

# pytest rewrites the asserts of test modules and of its plugins only: the kit's tests live in a module of
# the installed core, which pytest would import unrewritten, and a failing `assert store.clear() == 1` would
# report a bare AssertionError that does not say what the backend returned. Registered before the import.
pytest.register_assert_rewrite("artifactstore_core._conformance")

from ._conformance import (  # noqa: E402
    AWKWARD_IDS,
    INVALID_IDS,
    LONG_ID_PAIRS,
    ORDER_TRAP_IDS,
    MakeStore,
    StoreConformance,
    ZeroStream,
    json_values,
    messages,
)

__all__ = [
    "AWKWARD_IDS",
    "INVALID_IDS",
    "LONG_ID_PAIRS",
    "ORDER_TRAP_IDS",
    "MakeStore",
    "StoreConformance",
    "ZeroStream",
    "json_values",
    "messages",
]
