"""The module's own RESP packer sends exactly what redis-py would."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import Connection

from artifactstore_redis.store import _JOIN_BELOW, _pack_commands

_args = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=16),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.integers(min_value=_JOIN_BELOW - 2, max_value=_JOIN_BELOW + 2).map(lambda n: b"x" * n),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["SET", "GET", "EVALSHA", "HMGET"]), st.lists(_args, max_size=8)).map(
            lambda command: (command[0], *command[1])
        ),
        min_size=1,
        max_size=5,
    )
)
def test_packed_bytes_are_redis_pys(commands: list[tuple[Any, ...]]) -> None:
    ours = _pack_commands(commands)
    assert ours is not None
    assert b"".join(ours) == b"".join(Connection().pack_commands(commands))


def test_large_arguments_are_sent_as_they_are() -> None:
    payload = b"p" * (_JOIN_BELOW * 4)
    packed = _pack_commands([("SET", b"key", payload)])
    assert packed is not None
    assert any(chunk is payload for chunk in packed)  # no copy of the payload


def test_other_argument_types_are_left_to_redis_py() -> None:
    assert _pack_commands([("SET", b"k", 1.5)]) is None
    assert _pack_commands([("SET", b"k", memoryview(b"v"))]) is None
    # redis-py splits a command name holding a space ("CLIENT KILL") into words; that is left to it too.
    assert _pack_commands([("CLIENT KILL", b"x")]) is None
