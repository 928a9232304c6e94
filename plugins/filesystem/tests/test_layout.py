"""The name-to-path encoding: reversible, injective under case-folding, portable, never a traversal."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifactstore_core import InvalidStepIdError
from artifactstore_core.ids import MAX_ID_BYTES, validate_step_id
from artifactstore_core.testing import AWKWARD_IDS
from artifactstore_filesystem.layout import CHUNK, FINAL, PART, TEMP_PREFIX, decode_components, encode_components

# Windows refuses these as a whole name and, on most versions, as the part before the first dot.
WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{d}" for p in ("com", "lpt") for d in "0123456789¹²³"}
COMPONENT = re.compile(rf"^[{re.escape(PART + FINAL)}][a-z0-9_%A-F-]{{0,{CHUNK}}}$")


def _valid(value: str) -> bool:
    try:
        validate_step_id(value)
    except InvalidStepIdError:
        return False
    return True


step_ids = st.text(min_size=1, max_size=MAX_ID_BYTES).filter(_valid)


def _check_components(parts: list[str]) -> None:
    for part in parts:
        assert COMPONENT.match(part), part
        assert part not in (".", "..")
        assert part.split(".")[0].lower() not in WINDOWS_RESERVED
        assert not part.startswith(TEMP_PREFIX[0])
        assert len(part.encode("ascii")) <= CHUNK + 1
    assert all(part.startswith(PART) for part in parts[:-1])
    assert parts[-1].startswith(FINAL)


@given(step_ids)
def test_components_round_trip_and_are_portable(value: str) -> None:
    parts = encode_components(value)
    _check_components(parts)
    assert decode_components(parts) == value


@given(step_ids, step_ids)
def test_distinct_values_never_share_a_path_even_case_folded(one: str, two: str) -> None:
    if one != two:
        folded_one = [part.casefold() for part in encode_components(one)]
        folded_two = [part.casefold() for part in encode_components(two)]
        assert folded_one != folded_two


@pytest.mark.parametrize("value", AWKWARD_IDS, ids=repr)
def test_awkward_ids(value: str) -> None:
    parts = encode_components(value)
    _check_components(parts)
    assert decode_components(parts) == value


def test_known_names() -> None:
    assert encode_components("extract") == ["@extract"]
    assert encode_components("A") == ["@%41"]
    assert encode_components("a") == ["@a"]
    assert encode_components("CON") == ["@%43%4F%4E"]
    assert encode_components("nul") == ["@nul"]
    assert encode_components("x.") == ["@x%2E"]
    assert encode_components("../../etc/passwd") == ["@%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"]
    long = encode_components("é" * 128)  # 768 encoded characters: four components
    assert [len(part) for part in long] == [201, 201, 201, 169]


@pytest.mark.parametrize(
    "parts",
    [
        [],
        ["extract"],  # no prefix
        ["+extract"],  # a continuation as the last component
        ["@ab", "@cd"],  # a final name in the middle
        ["@"],  # empty
        ["@%41%"],  # a broken escape
        ["@%4a"],  # lower-case hex is not canonical
        ["@A"],  # a bare upper-case letter is never produced
        ["@x.y"],  # a dot is never produced
        ["+abc", "@def"],  # a short name split where the encoder would not split it
        [TEMP_PREFIX + "0123"],
    ],
    ids=repr,
)
def test_non_canonical_paths_are_not_ours(parts: list[str]) -> None:
    assert decode_components(parts) is None
