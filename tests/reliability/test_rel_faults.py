"""Network faults between the client and its server, for every backend with a server (redis, http, s3).

A :class:`~faultproxy.FaultProxy` stands between the store and the real server. Under every fault, every
call returns within the backend's deadline (attempts x timeouts + backoff: see
``reliability_backends``) with a result or a typed, retryable error; nothing hangs; once the fault is
gone the same store works again; the history checker passes over everything that happened; and the
number of threads returns to what it was.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faultproxy import BlackHole, Delay, Fault, FaultProxy, FlipBits, PassThrough, ResetAfter
from history import Workload, assert_no_violations, check, clients_of, final_reads, run_load
from reliability_backends import Backend, wait_until

from artifactstore_core import ArtifactStore, Message
from artifactstore_core.errors import (
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
)

CHAOS_OPS = int(os.environ.get("RELIABILITY_CHAOS_OPS", "60"))
TIMEOUT = 300 * max(1, CHAOS_OPS // 60)


def namespace(tag: str) -> str:
    return f"rel-fault-{tag}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def proxy(network_backend: Backend) -> Iterator[FaultProxy]:
    assert network_backend.upstream_port is not None
    with FaultProxy(network_backend.upstream_port) as running:
        yield running


class Progress:
    """Counts finished operations; lets the fault schedule wait for the next N (no sleeping)."""

    def __init__(self) -> None:
        self.done = 0
        self.finished = False
        self._cond = threading.Condition()

    def tick(self) -> None:
        with self._cond:
            self.done += 1
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.done >= count or self.finished, timeout=timeout)


# Each phase lasts until this many more operations have finished. Faults that make calls wait for their
# timeouts get fewer operations, to keep the run short.
PHASES: list[tuple[Fault, int]] = [
    (PassThrough(), 20),
    (Delay(0.02), 20),
    (BlackHole(), 8),
    (PassThrough(), 10),
    (ResetAfter(16, "up"), 20),
    (ResetAfter(600, "down"), 20),
    # One bit of a large answer (an artifact's bytes, past the protocol's own header): reads must detect it.
    (FlipBits(probability=1.0, direction="down", min_chunk=1024, skip=256, seed=5), 30),
    (PassThrough(), 10**9),
]


@pytest.mark.timeout(TIMEOUT)
def test_chaos_load_through_every_fault(network_backend: Backend, proxy: FaultProxy) -> None:
    backend = network_backend
    assert backend.through is not None
    workload = Workload(seed=11, namespace=namespace(backend.name), threads=6, ops=CHAOS_OPS, list_every=30)
    baseline = threading.active_count() - 1  # the proxy's own thread is not the client's
    progress = Progress()
    seen: dict[str, int] = {}
    flipping: list[float] = []  # when the bit flips began and ended

    def schedule() -> None:
        target = 0
        for fault, count in PHASES:
            proxy.set(fault)
            if isinstance(fault, FlipBits):
                flipping.append(time.monotonic())
            target += count
            progress.wait_for(target, timeout=240)
            if isinstance(fault, FlipBits):
                flipping.append(time.monotonic())
            if progress.finished:
                break
            seen[type(fault).__name__] = seen.get(type(fault).__name__, 0) + 1
        proxy.set(PassThrough())

    store = backend.through(proxy, workload.namespace)
    controller = threading.Thread(target=schedule, name="fault-schedule")
    controller.start()
    try:
        ops = run_load(store, workload, pace=progress.tick)
    finally:
        progress.finish()
        controller.join(timeout=60)
        proxy.set(PassThrough())
    try:
        # After the faults, the same store object works again.
        store.save("o/after/0", Message(content=b"healed"))
        assert store.get("o/after/0").content == b"healed"
        store.delete("o/after/0")
    finally:
        store.close()
    stats = proxy.stats
    assert stats.swallowed > 0, "the black hole never swallowed anything"
    assert stats.resets > 0, "no connection was ever reset"
    assert stats.flips > 0, "no bit was ever flipped"
    assert {"BlackHole", "ResetAfter", "FlipBits", "Delay"} <= set(seen), seen

    slowest = max(ops, key=lambda op: op.end - op.start)
    assert slowest.end - slowest.start <= backend.deadline, f"call took too long (a hang): {slowest.describe()}"
    errors = {op.error for op in ops if op.error}
    assert errors, "no call failed: the faults did not bite"
    assert all(op.bad is None for op in ops), [op.describe() for op in ops if op.bad][:5]

    with backend.make(workload.namespace) as direct:
        ops += final_reads(direct, workload.keys(clients_of(ops)), workload.seed)
        direct.clear()
    violations = check(
        ops,
        seed=workload.seed,
        namespace=workload.namespace,
        corruption_detected_ok=True,
        # Listings (a JSON body, an XML page, a Redis index) travel outside envelopes: bits flipped in them
        # change ids and digests undetected, as in any protocol framing (TLS is the defence).
        untrusted_list=lambda op: len(flipping) == 2 and op.start < flipping[1] and op.end > flipping[0],
    )
    assert_no_violations(violations, ops)

    proxy.stop()
    wait_until(lambda: threading.active_count() <= baseline, f"threads back to {baseline}")


# -- one fault at a time: every operation fails typed and in time, then the store recovers --------------


def operations(store: ArtifactStore, neighbour: ArtifactStore) -> dict[str, Callable[[], Any]]:
    """Every operation once (``clear`` on a neighbouring namespace, so it cannot race the reads)."""
    message = Message(content=b"x" * 3000, metadata={"fault": True})
    return {
        "save": lambda: store.save("k-save", message),
        "get": lambda: store.get("k-present"),
        "exists": lambda: store.exists("k-present"),
        "delete": lambda: store.delete("k-delete"),
        "list": lambda: list(store.list()),
        "save_many": lambda: store.save_many({"m-1": message, "m-2": message}),
        "get_many": lambda: store.get_many(["k-present", "k-delete"]),
        "clear": lambda: neighbour.clear(),
    }


def run_concurrently(calls: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, BaseException | None]]:
    """Run every call in its own thread at once; return each one's duration and error."""
    results: dict[str, tuple[float, BaseException | None]] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        start = time.monotonic()
        try:
            call()
        except BaseException as exc:
            results[name] = (time.monotonic() - start, exc)
        else:
            results[name] = (time.monotonic() - start, None)

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call hung"
    return results


FAULTS: dict[str, Fault] = {
    "black-hole": BlackHole(),
    "delay-beyond-timeout": Delay(2.0),
    "reset-at-once": ResetAfter(0, "up"),
    "reset-mid-request": ResetAfter(40, "up"),
    "reset-mid-answer": ResetAfter(20, "down"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_call_fails_typed_within_its_deadline(network_backend: Backend, proxy: FaultProxy, fault: str) -> None:
    backend = network_backend
    assert backend.through is not None
    ns = namespace(fault)
    with backend.make(ns) as direct:
        direct.save("k-present", Message(content=b"present"))
        direct.save("k-delete", Message(content=b"to delete"))
    baseline = threading.active_count() - 1
    store = backend.through(proxy, ns)
    neighbour = backend.through(proxy, ns + "-neighbour")
    try:
        # Connections exist in the pool before the fault, as in a running application.
        assert store.get("k-present").content == b"present"
        proxy.set(FAULTS[fault])
        results = run_concurrently(operations(store, neighbour))
        proxy.set(PassThrough())
        failures = {}
        for name, (elapsed, error) in results.items():
            assert elapsed <= backend.deadline, f"{name} took {elapsed:.1f} s under {fault} (a hang)"
            if error is None:
                continue  # a retry on a fresh connection may get through a fault that needs bytes to bite
            assert isinstance(error, ArtifactStoreError), f"{name} raised a raw {type(error).__name__}: {error}"
            assert isinstance(error, BackendError), f"{name} raised {type(error).__name__}: {error}"
            failures[name] = error
        if fault in ("black-hole", "delay-beyond-timeout", "reset-at-once"):
            # Nothing can get through these: every call must have failed, and said it may be retried.
            assert set(failures) == set(results), f"succeeded under {fault}: {set(results) - set(failures)}"
            assert all(error.retryable for error in failures.values()), failures
            expected = BackendUnavailableError if fault == "reset-at-once" else BackendTimeoutError
            assert any(isinstance(error, expected) for error in failures.values()), failures
        # The fault is gone: the same store object works again, and the data is intact.
        assert store.get("k-present").content == b"present"
        with pytest.raises(ArtifactNotFoundError):
            store.get("never-saved")
    finally:
        store.close()
        neighbour.close()
    with backend.make(ns) as direct:
        direct.clear()
    proxy.stop()
    wait_until(lambda: threading.active_count() <= baseline, f"threads back to {baseline}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lost", ["request", "reply"])
def test_a_lost_request_or_reply_does_not_change_what_delete_returns(
    network_backend: Backend, proxy: FaultProxy, lost: str
) -> None:
    backend = network_backend
    assert backend.through is not None
    ns = namespace(f"delete-lost-{lost}")
    with backend.make(ns) as direct:
        direct.save("k", Message(content=b"to delete"))
    store = backend.through(proxy, ns)
    try:
        # A pooled connection, as in a running application, and server-side scripts already loaded.
        assert store.exists("k")
        assert store.delete("never-saved") is False
        # "request": the connection drops before the request reaches the server; nothing was removed yet, so
        # asking again settles it (http repeats a delete and trusts a repeat that removed the artifact).
        # "reply": the request arrives and runs; only its answer is lost, once.
        proxy.set(ResetAfter(0, "up" if lost == "request" else "down", times=1))
        removed: bool | None
        try:
            removed = store.delete("k")
        except BackendError:
            removed = None  # an honest "it may or may not have happened"
        assert removed is not False, "delete() reported nothing removed, but it removed the artifact"
        # After a lost reply redis retries, and the retry reads what its first attempt recorded: it knows.
        if lost == "request" or backend.name == "redis":
            assert removed is True, f"{backend.name} gave up on a delete it could settle"
        proxy.set(PassThrough())
        assert not store.exists("k")
    finally:
        store.close()
