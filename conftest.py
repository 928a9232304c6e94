"""Root conftest: applies to every test run from this repository (core, plugins, reliability)."""

# On CI (the CI environment variable, which .ci/run sets), a skip that is not a backend's undeclared
# capability fails the run instead of hiding a missing service or feature.
pytest_plugins = ["artifactstore_core.testing_skips"]
