"""The core's paging helpers: :func:`smallest_after` and the default ``ArtifactStore._list_page``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifactstore_core.store import smallest_after

_ids = st.text(alphabet=st.sampled_from(["a", "A", "-", "%", "é", "\uffff", "\U0001f680"]), min_size=1, max_size=4)


@given(
    ids=st.lists(_ids, max_size=40),
    repeats=st.lists(st.integers(0, 39), max_size=10),
    after=st.none() | _ids,
    count=st.integers(1, 12),
)
def test_smallest_after_is_a_slice_of_the_sorted_distinct_ids(
    ids: list[str], repeats: list[int], after: str | None, count: int
) -> None:
    # A repeated id (a Redis SCAN may return a member twice) comes back once, with its first handle.
    pairs = [(step_id, index) for index, step_id in enumerate(ids)]
    pairs += [(ids[index], -1) for index in repeats if index < len(ids)]
    chosen = smallest_after(pairs, after, count)
    expected = [step_id for step_id in sorted(set(ids)) if after is None or step_id > after][:count]
    assert [step_id for step_id, _ in chosen] == expected
    assert all(handle == ids.index(step_id) for step_id, handle in chosen)


@pytest.mark.parametrize("count", [0, -1])
def test_smallest_after_of_no_count_chooses_nothing(count: int) -> None:
    # The first pair filled the heap (len 0 < 0 is false) and the next compared with the top of an empty heap:
    # IndexError from a public helper a backend's _list_page may call with whatever room its page has left.
    assert smallest_after([("b", 1), ("a", 2)], None, count) == []


def test_smallest_after_keeps_the_smallest_when_ids_come_in_descending_order() -> None:
    # Every id is smaller than those kept so far: each one replaces the top of the heap.
    pairs = ((f"{index:05d}", index) for index in range(10_000, 0, -1))
    chosen = smallest_after(pairs, "00010", 5)
    assert chosen == [("00011", 11), ("00012", 12), ("00013", 13), ("00014", 14), ("00015", 15)]
