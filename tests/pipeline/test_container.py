"""ServiceContainer and register_artifact_store."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from artifactstore_core import ArtifactStore, BackendNotFoundError, ConfigurationError, Message
from artifactstore_core.pipeline import (
    ContainerClosedError,
    ServiceContainer,
    ServiceNotFoundError,
    StoreConfig,
    register_artifact_store,
)


class Service:
    def __init__(self, name: str, log: list[str], fail_close: bool = False) -> None:
        self.name, self.log, self.fail_close = name, log, fail_close

    def close(self) -> None:
        self.log.append(self.name)
        if self.fail_close:
            raise RuntimeError(f"{self.name} failed to close")


def test_factories_run_lazily_once() -> None:
    made: list[object] = []

    def factory(container: ServiceContainer) -> object:
        made.append(object())
        return made[-1]

    services = ServiceContainer()
    services.register("thing", factory)
    assert made == []
    assert "thing" in services
    first = services.resolve("thing")
    assert services.resolve("thing") is first
    assert made == [first]


def test_concurrent_resolution_builds_one_instance() -> None:
    made: list[object] = []
    start = threading.Barrier(8, timeout=30)

    def factory(container: ServiceContainer) -> object:
        made.append(object())
        return made[-1]

    services = ServiceContainer()
    services.register("shared", factory)
    got: list[object] = []

    def worker() -> None:
        start.wait()
        got.append(services.resolve("shared"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(made) == 1
    assert len(got) == 8
    assert all(item is made[0] for item in got)


def test_closes_in_reverse_order_of_creation_not_registration() -> None:
    log: list[str] = []
    with ServiceContainer() as services:
        services.register("db", lambda c: Service("db", log))
        services.register("cache", lambda c: Service("cache", log))
        services.register("app", lambda c: (c.resolve("db"), Service("app", log))[1])
        services.register("unused", lambda c: Service("unused", log))
        services.resolve("cache")
        services.resolve("app")  # creates db first, then app
    assert log == ["app", "db", "cache"]
    assert services.closed


def test_instances_are_closed_only_when_owned() -> None:
    log: list[str] = []
    services = ServiceContainer()
    services.register_instance("borrowed", Service("borrowed", log))
    services.register_instance("owned", Service("owned", log), close=True)
    services.close()
    services.close()  # idempotent
    assert log == ["owned"]


def test_typed_keys_and_type_check() -> None:
    services = ServiceContainer()
    services.register(Service, lambda c: Service("s", []))
    services.register(int, lambda c: "not an int")
    assert services.resolve(Service).name == "s"
    with pytest.raises(ConfigurationError, match="must be an instance"):
        services.resolve(int)
    with pytest.raises(ConfigurationError, match="must be an instance"):
        services.register_instance(float, "nope")


def test_unknown_key_lists_registered_ones() -> None:
    services = ServiceContainer()
    services.register("known", lambda c: 1)
    with pytest.raises(ServiceNotFoundError, match=r"no service 'missing'.*registered: known") as caught:
        services.resolve("missing")
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, ConfigurationError)


def test_duplicate_and_bad_keys() -> None:
    services = ServiceContainer()
    services.register("x", lambda c: 1)
    with pytest.raises(ConfigurationError, match="already registered"):
        services.register_instance("x", 2)
    with pytest.raises(ConfigurationError, match="service key"):
        services.register("", lambda c: 1)


def test_cycles_are_reported() -> None:
    services = ServiceContainer()
    services.register("a", lambda c: c.resolve("b"))
    services.register("b", lambda c: c.resolve("a"))
    with pytest.raises(ConfigurationError, match="cycle: a -> b -> a"):
        services.resolve("a")


def test_a_failing_factory_can_be_retried() -> None:
    attempts: list[int] = []

    def flaky(container: ServiceContainer) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("not yet")
        return "ok"

    services = ServiceContainer()
    services.register("flaky", flaky)
    with pytest.raises(RuntimeError, match="not yet"):
        services.resolve("flaky")
    assert services.resolve("flaky") == "ok"


def test_every_service_is_closed_even_if_one_fails() -> None:
    log: list[str] = []
    services = ServiceContainer()
    for name, fails in [("first", True), ("second", False), ("third", True)]:
        services.register_instance(name, Service(name, log, fails), close=True)
    with pytest.raises(RuntimeError, match="third failed") as caught:
        services.close()
    assert log == ["third", "second", "first"]
    assert any("first failed" in note for note in caught.value.__notes__)


def test_closed_container_resolves_nothing() -> None:
    services = ServiceContainer()
    services.register("x", lambda c: 1)
    services.close()
    with pytest.raises(ContainerClosedError):
        services.resolve("x")
    with pytest.raises(ContainerClosedError):
        services.register("y", lambda c: 2)


def test_register_artifact_store() -> None:
    with ServiceContainer() as services:
        config = register_artifact_store(services, "memory", namespace="framework", limit=10)
        assert services.resolve(StoreConfig) is config
        assert config == StoreConfig("memory", limit=10)
        store = services.resolve(ArtifactStore)
        assert store.backend_name == "memory"
        assert store.namespace == "framework"
        store.save("x", Message(content=1))
        assert services.resolve(ArtifactStore) is store
        store.clear()
        with pytest.raises(ConfigurationError, match="already registered"):
            register_artifact_store(services)
    assert store.closed


def test_register_artifact_store_builds_lazily() -> None:
    services = ServiceContainer()
    register_artifact_store(services, "no-such-backend")  # nothing is built yet
    with pytest.raises(BackendNotFoundError):
        services.resolve(ArtifactStore)
    services.close()


def test_store_config_repr_hides_option_values() -> None:
    config = StoreConfig("redis", url="redis://:hunter2@localhost/0")
    assert "hunter2" not in repr(config)
    assert "url" in repr(config)
    other: Any = StoreConfig("redis", url="redis://:hunter2@localhost/0")
    assert config == other
    assert config != StoreConfig("redis")


def test_store_config_refuses_a_namespace_option() -> None:
    # It was taken, then every store built from it failed with "create_store() got multiple values for keyword
    # argument 'namespace'" (a TypeError), at the first run, or in each worker process.
    with pytest.raises(ConfigurationError, match="execution_id") as caught:
        StoreConfig("memory", namespace="run-42")
    assert "create(namespace)" in str(caught.value)
