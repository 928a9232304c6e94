"""The public store API's argument checks, which the base class makes for every backend."""

from __future__ import annotations

import pytest

from artifactstore_core import Message, create_store


@pytest.mark.parametrize("ids", ["ab", b"ab"])
def test_get_many_refuses_one_id_given_as_a_string(ids: object) -> None:
    # A str is an iterable of str: get_many("extract") looked up "e", "x", "t", ... and reported them missing
    # (or, worse, returned one-letter artifacts that happen to exist).
    with create_store("memory", namespace="get-many-str") as store:
        store.save("a", Message(content=1))
        store.save("b", Message(content=2))
        with pytest.raises(TypeError, match="not one id"):
            store.get_many(ids)  # type: ignore[arg-type]
        assert set(store.get_many(["a", "b"])) == {"a", "b"}
        store.clear()
