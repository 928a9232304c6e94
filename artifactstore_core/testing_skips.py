"""A pytest plugin that turns unexplained skips into failures on CI.

A skipped test proves nothing; on a CI machine, a skip usually means a missing service, binary or feature
that the run should have had (a ``redis-server`` not installed, a platform check gone wrong). With this
plugin loaded and the ``CI`` environment variable set to anything but ``""``, ``0`` or ``false``, a test
that skips fails instead, unless its reason starts with :data:`CAPABILITY_SKIP`: the conformance kit
skips with that reason where a backend does not declare a capability (after checking, where the contract
says what happens then, that the backend refuses the operation), and the first-party backends' declared
capabilities are pinned by a test, so such a skip cannot hide a capability that went missing. The kit
uses the same reason for its one check of an optional fixture, ``make_unreachable_store``, which a backend
that cannot fail (an in-process one) has no way to provide.

Load it with ``-p artifactstore_core.testing_skips`` (this project does so in the pytest ``addopts`` of
its ``pyproject.toml``); third-party backends can do the same in their CI.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

__all__ = ["CAPABILITY_SKIP", "strict"]

#: Reasons of skips that stay skips on CI: a capability the backend under test does not declare.
CAPABILITY_SKIP = "capability not declared:"


def strict() -> bool:
    """Whether skips fail: the ``CI`` environment variable is set and not ``""``, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_unexplained_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not strict():
        return
    reason = _reason(report)
    if reason.startswith(CAPABILITY_SKIP):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped on CI ({reason}): a skip here would hide a missing service, binary or feature. Install what "
        f"the test needs, or unset CI to allow skips locally."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    """On CI, report a skip whose reason is not a declared-capability skip as a failure."""
    outcome = yield
    _fail_unexplained_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """On CI, the same for a whole module skipped while it is collected (``pytest.importorskip`` of a
    missing client library, ``pytest.skip(..., allow_module_level=True)``): a collection error instead."""
    outcome = yield
    _fail_unexplained_skip(outcome.get_result())
