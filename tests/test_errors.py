"""The error hierarchy: families, flags, pickling."""

from __future__ import annotations

import inspect
import pickle

import pytest

import artifactstore_core
from artifactstore_core import errors

ERROR_CLASSES = [
    obj
    for name, obj in vars(errors).items()
    if inspect.isclass(obj) and issubclass(obj, errors.ArtifactStoreError) and name in errors.__all__
]


def test_every_error_ends_in_error_and_is_exported() -> None:
    assert len(ERROR_CLASSES) >= 18
    for cls in ERROR_CLASSES:
        assert cls.__name__.endswith("Error")
        assert getattr(artifactstore_core, cls.__name__) is cls
        assert cls.__doc__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_with_their_fields(cls: type[errors.ArtifactStoreError]) -> None:
    error = cls("something failed", step_id="s", namespace="n", backend="b")
    # Test-only use of pickle: errors must survive process pools, which pickle them.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == "something failed"
    assert (copy.step_id, copy.namespace, copy.backend) == ("s", "n", "b")
    assert copy.retryable == cls.retryable


def test_families() -> None:
    assert issubclass(errors.BackendNotFoundError, errors.ConfigurationError)
    assert issubclass(errors.PluginLoadError, errors.ConfigurationError)
    assert issubclass(errors.ArtifactCorruptedError, errors.SerializationError)
    assert issubclass(errors.UnsupportedFormatError, errors.SerializationError)
    assert issubclass(errors.SchemaMismatchError, errors.SerializationError)
    assert issubclass(errors.PayloadTooLargeError, errors.CapacityError)
    assert issubclass(errors.BackendUnavailableError, errors.BackendError)
    assert issubclass(errors.BackendTimeoutError, errors.BackendError)
    assert issubclass(errors.BackendTimeoutError, TimeoutError)
    assert issubclass(errors.ArtifactNotFoundError, LookupError)
    assert issubclass(errors.InvalidStepIdError, ValueError)
    retryable = {cls.__name__ for cls in ERROR_CLASSES if cls.retryable}
    assert retryable == {"BackendUnavailableError", "BackendTimeoutError"}
