"""Redis ACL users: the user the documentation describes runs every operation, standalone and in a cluster,
and a refused login, command or key is an AccessDeniedError wherever Redis refuses it (a plain command, a
command inside a script, the cluster client's discovery)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_helpers import payload_of

import artifactstore_redis.store as store_module
from artifactstore_core import AccessDeniedError, Message
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.scripts import COMMIT, DELETE, LuaScript
from artifactstore_redis.testing import RedisClusterNodes, RedisServer

DOCS = Path(__file__).resolve().parents[3] / "docs" / "redis.md"
LARGE = store_module._INLINE_MAX + 1000
#: The ACL users' password: a canary that no error text may quote.
PASSWORD = "acl-canary-5f1d"


def documented_acl(prefix: str, password: str) -> list[str]:
    """The rules of the ``ACL SETUSER`` line of docs/redis.md (after the user name), for ``prefix``."""
    (line,) = re.findall(r"^ACL SETUSER .*$", DOCS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    words = shlex.split(line)[3:]
    return [
        word.replace("{P:", f"{{{prefix}:").replace("{P}", f"{{{prefix}}}").replace("PASSWORD", password)
        for word in words
    ]


def run_every_operation(store: RedisStore) -> None:
    store.save("small", Message(content=b"x"))
    store.save("large", Message(content=payload_of("large", LARGE)))
    store.save("small", Message(content=payload_of("small", LARGE)), overwrite=True)  # inline to uploaded
    store.save("large", Message(content=b"y"), overwrite=True)  # uploaded to inline
    store.save("ttl", Message(content=payload_of("ttl", LARGE)), ttl=600)
    store.save_many({f"m{i}": Message(content=payload_of(f"m{i}", LARGE if i % 2 else 100)) for i in range(6)})
    assert store.get("small").content == payload_of("small", LARGE)
    assert store.get_many(["large", "m1", "m2"])["m1"].content == payload_of("m1", LARGE)
    assert store.exists("ttl")
    assert store.info("large").size == 1
    assert len(list(store.list())) == 9
    assert store.namespaces() == [store.namespace]
    assert store.delete("m1") is True
    assert store.clear() == 8


def _user_url(url: str, user: str, password: str) -> str:
    return url.replace("redis://", f"redis://{user}:{password}@")


@pytest.fixture
def acl_users(redis_server: RedisServer) -> Iterator[Any]:
    admin = redis_server.client()
    made: list[str] = []

    def add(name: str, rules: list[str]) -> str:
        admin.execute_command("ACL", "SETUSER", name, "reset", *rules)
        made.append(name)
        return _user_url(redis_server.url, name, PASSWORD)

    yield add
    for name in made:
        admin.execute_command("ACL", "DELUSER", name)
    admin.close()


@pytest.mark.timeout(60)
def test_the_documented_acl_runs_every_operation(acl_users: Any, prefix: str) -> None:
    url = acl_users("documented", documented_acl(prefix, PASSWORD))
    with RedisStore(RedisSettings(url=url, key_prefix=prefix), namespace="acl run") as store:  # type: ignore[arg-type]
        run_every_operation(store)


@pytest.mark.timeout(60)
def test_the_documented_acl_restores_an_evicted_index_entry(
    acl_users: Any, redis_server: RedisServer, prefix: str
) -> None:
    # The save that finds its identical artifact kept and its index entry gone (evicted) reads the hash's
    # expiry and puts the entry back: commands that the documented user must be allowed too.
    url = acl_users("documented", documented_acl(prefix, PASSWORD))
    admin = redis_server.client()
    messages = {"small": Message(content=b"x"), "large": Message(content=payload_of("large", LARGE))}
    try:
        with RedisStore(RedisSettings(url=url, key_prefix=prefix), namespace="acl evicted") as store:  # type: ignore[arg-type]
            for ttl in (None, 600.0):
                store.save_many(messages, ttl=ttl, overwrite=True)
                admin.delete(store._index)  # evicted
                for step_id, message in messages.items():
                    store.save(step_id, message, ttl=ttl)
                assert sorted(info.step_id for info in store.list()) == ["large", "small"]
            assert store.clear() == 2
    finally:
        admin.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("missing", "operation", "script"),
    [
        ("+rename", lambda store: store.save("big", Message(content=payload_of("big", LARGE))), COMMIT),
        ("+unlink", lambda store: store.delete("there"), DELETE),
        ("+evalsha", lambda store: store.save("small", Message(content=b"s")), None),
    ],
    ids=["rename-in-commit-script", "unlink-in-delete-script", "evalsha"],
)
def test_a_refused_command_is_access_denied_wherever_it_runs(
    acl_users: Any, prefix: str, missing: str, operation: Any, script: LuaScript | None
) -> None:
    full = acl_users("full", documented_acl(prefix, PASSWORD))
    with RedisStore(RedisSettings(url=full, key_prefix=prefix), namespace="acl") as store:  # type: ignore[arg-type]
        store.save("there", Message(content=b"t"))
        url = acl_users("lacking", [rule for rule in documented_acl(prefix, PASSWORD) if rule != missing])
        lacking = RedisStore(RedisSettings(url=url, key_prefix=prefix, retry_attempts=3), namespace="acl")  # type: ignore[arg-type]
        try:
            with pytest.raises(AccessDeniedError) as info:
                operation(lacking)
        finally:
            lacking.close()
            store.clear()
    error = info.value
    assert not error.retryable
    assert isinstance(error.__cause__, redis.ResponseError)
    assert "ACL" in str(error)
    assert PASSWORD not in str(error)
    if script is not None:
        assert f"the store's {script.name} script" in str(error)


@pytest.mark.timeout(120)
def test_cluster_logins_and_acls_refused_during_discovery_are_access_denied(
    redis_cluster: RedisClusterNodes, prefix: str
) -> None:
    admins = [node.client() for node in redis_cluster.nodes]
    rules = documented_acl(prefix, PASSWORD)
    try:
        for admin in admins:
            admin.execute_command("ACL", "SETUSER", "documented", "reset", *rules)
            admin.execute_command("ACL", "SETUSER", "noslots", "reset", *(r for r in rules if r != "+cluster|slots"))
        cases = {
            "documented": _user_url(redis_cluster.url, "documented", PASSWORD),
            "wrong password": _user_url(redis_cluster.url, "documented", PASSWORD + "-wrong"),
            "no cluster slots": _user_url(redis_cluster.url, "noslots", PASSWORD),
        }
        settings = {name: RedisSettings(url=url, cluster=True, key_prefix=prefix) for name, url in cases.items()}  # type: ignore[arg-type]
        with RedisStore(settings["documented"], namespace="acl in cluster") as store:
            run_every_operation(store)
        with pytest.raises(AccessDeniedError, match="refused the credentials") as wrong:
            RedisStore(settings["wrong password"], namespace="acl in cluster")
        with pytest.raises(AccessDeniedError, match=r"cluster\|slots") as slots:
            RedisStore(settings["no cluster slots"], namespace="acl in cluster")
        for error in (wrong.value, slots.value):
            assert not error.retryable
            assert PASSWORD not in str(error)
    finally:
        for admin in admins:
            admin.execute_command("ACL", "DELUSER", "documented", "noslots")
            admin.close()
