"""Step ids and namespaces: validation and the reversible, injective name encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifactstore_core import InvalidStepIdError
from artifactstore_core.ids import MAX_ID_BYTES, decode_name, encode_name, validate_namespace, validate_step_id
from artifactstore_core.testing import AWKWARD_IDS, INVALID_IDS

valid_ids = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=MAX_ID_BYTES // 4)


@pytest.mark.parametrize("step_id", AWKWARD_IDS)
def test_awkward_ids_are_valid(step_id: str) -> None:
    assert validate_step_id(step_id) == step_id


@pytest.mark.parametrize("bad", INVALID_IDS, ids=repr)
def test_invalid_ids(bad: object) -> None:
    with pytest.raises(InvalidStepIdError):
        validate_step_id(bad)


def test_namespace_limit_is_smaller() -> None:
    validate_namespace("n" * 128)
    with pytest.raises(InvalidStepIdError, match="128"):
        validate_namespace("n" * 129)


@given(valid_ids)
def test_encoding_round_trips(step_id: str) -> None:
    name = encode_name(step_id)
    assert decode_name(name) == step_id
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_%ABCDEF")
    assert name not in (".", "..")


@given(valid_ids, valid_ids)
def test_encoding_is_injective_even_case_folded(a: str, b: str) -> None:
    if a != b:
        assert encode_name(a).casefold() != encode_name(b).casefold()


def test_encoded_awkward_ids_are_distinct_case_insensitively() -> None:
    names = {encode_name(step_id).lower() for step_id in AWKWARD_IDS}
    assert len(names) == len(AWKWARD_IDS)
    assert max(len(encode_name(step_id)) for step_id in AWKWARD_IDS) <= 3 * MAX_ID_BYTES


@pytest.mark.parametrize("bad", ["%2e", "A", "a.b", "%4", "%ZZ", "%61"])
def test_only_canonical_names_decode(bad: str) -> None:
    with pytest.raises(ValueError, match="encoded name"):
        decode_name(bad)


@pytest.mark.parametrize("bad", ["\ud800" + "x" * 1_000_000, "x" * 1_000_000 + "\ud800", "a\nb" * 50])
def test_an_invalid_id_is_quoted_cut_short_in_the_error(bad: str) -> None:
    with pytest.raises(InvalidStepIdError) as info:
        validate_step_id(bad)
    text = str(info.value)
    assert len(text) < 200
    assert f"({len(bad)} characters)" in text
    with pytest.raises(InvalidStepIdError, match="'short\\\\n'"):
        validate_step_id("short\n")


def test_is_legal_answers_what_validation_would_raise() -> None:
    from artifactstore_core.ids import is_legal

    assert is_legal("step/1")
    assert not is_legal("")
    assert not is_legal("a\x00b")
    assert not is_legal(3)
    assert is_legal("n" * 256)
    assert not is_legal("n" * 256, validate_namespace)


def test_encode_name_gives_a_plain_str_for_a_str_subclass() -> None:
    # Its fast path (a name that needs no escape is its own encoding) returned the caller's object: a
    # (str, Enum) member formats as "Kind.raw", not as the name a backend must store it under.
    import enum

    class Kind(str, enum.Enum):  # noqa: UP042  (the mixin, not StrEnum: it formats as "Kind.RAW")
        RAW = "raw"

    encoded = encode_name(Kind.RAW)
    assert type(encoded) is str
    assert f"{encoded}" == "raw"
