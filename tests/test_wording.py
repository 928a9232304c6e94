"""The English of messages: articles before type names, plurals of counts."""

from __future__ import annotations

import pytest

from artifactstore_core._wording import counted, with_article


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("int", "an int"),
        ("object", "an object"),
        ("Uninitialised", "an Uninitialised"),
        ("ellipsis", "an ellipsis"),
        ("dict", "a dict"),
        ("NoneType", "a NoneType"),
        ("UUID", "a UUID"),
        ("UserDict", "a UserDict"),
    ],
)
def test_with_article(word: str, expected: str) -> None:
    assert with_article(word) == expected


@pytest.mark.parametrize(("count", "expected"), [(0, "0 artifacts"), (1, "1 artifact"), (2, "2 artifacts")])
def test_counted(count: int, expected: str) -> None:
    assert counted(count, "artifact") == expected
