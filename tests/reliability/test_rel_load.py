"""Load: many clients, mixed operations, every backend; the history checker must pass.

Default size: 16 threads x ``RELIABILITY_OPS`` operations (200 by default, 100 on s3; the
``reliability_long`` nox session sets 2,000 for every backend). Writer processes (fork, with the store
created and used before the fork, and spawn) run on every backend that processes share: two children and
the parent, three threads each, half as many operations per thread.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from history import (
    Op,
    Workload,
    assert_no_violations,
    check,
    clients_of,
    final_reads,
    load_history,
    process_worker,
    run_load,
    summary,
)
from reliability_backends import Backend, wait_until

from artifactstore_core import Message

OPS = int(os.environ.get("RELIABILITY_OPS", "200"))
THREADS = 16
# moto serves about one request per 7 ms on two cores, so the default (bounded) run gives s3 half the
# operations; the long variant (RELIABILITY_OPS set) runs every backend at full size.
SCALE = {"s3": 0.5} if "RELIABILITY_OPS" not in os.environ else {}


def ops_for(backend: Backend, ops: int) -> int:
    return max(int(ops * SCALE.get(backend.name, 1)), 50)


# A hang fails the test, not the whole run; the long variant gets proportionally more time.
TIMEOUT = 600 * max(1, OPS // 200)


def namespace(tag: str) -> str:
    return f"rel-{tag}-{uuid.uuid4().hex[:8]}"


def verify(backend: Backend, ops: list[Op], workload: Workload) -> list[str]:
    """Read back every key through a fresh store, then check the whole history."""
    with backend.make(workload.namespace) as store:
        ops = ops + final_reads(store, workload.keys(clients_of(ops)), workload.seed)
    return check(ops, seed=workload.seed, namespace=workload.namespace)


def unknown(ops: list[Op]) -> list[str]:
    """The operations that ended indeterminate, described with their errors' causes."""
    return [op.describe() for op in ops if op.outcome == "unknown"]


def clear_loop(backend: Backend, rounds: int, stop: threading.Event, errors: list[BaseException]) -> None:
    """A neighbour namespace that saves and clears over and over: clear() must touch nothing else."""
    try:
        with backend.make(namespace("clear")) as store:
            for index in range(rounds):
                if stop.is_set():
                    return
                store.save_many({f"s/{n}": Message(content=f"neighbour {index}") for n in range(3)})
                store.save(f"o/t0/{index % 4}", Message(content=b"neighbour"))
                assert store.clear() == 4
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.timeout(TIMEOUT)
def test_threads_on_two_namespaces(backend: Backend) -> None:
    """16 threads share stores on two namespaces that use the same step ids, while a third namespace is
    saved and cleared over and over; each namespace's history must check out."""
    seed = 1
    ops = ops_for(backend, OPS)
    a = Workload(seed=seed, namespace=namespace("a"), threads=THREADS * 3 // 4, ops=ops)
    b = Workload(seed=seed, namespace=namespace("b"), threads=THREADS - a.threads, ops=ops)
    baseline = threading.active_count()
    histories: dict[str, list[Op]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    with backend.make(a.namespace) as store_a, backend.make(b.namespace) as store_b:

        def run_b() -> None:
            try:
                histories["b"] = run_load(store_b, b, prefix="b")
            except BaseException as exc:
                errors.append(exc)

        side = [threading.Thread(target=run_b), threading.Thread(target=clear_loop, args=(backend, 40, stop, errors))]
        for thread in side:
            thread.start()
        try:
            histories["a"] = run_load(store_a, a)
        finally:
            side[0].join(timeout=600)
            stop.set()
            side[1].join(timeout=120)
    assert errors == []
    for name, workload in (("a", a), ("b", b)):
        history = histories[name]
        assert len(history) == workload.threads * workload.ops
        # No fault is injected here: a call that fails mid-way is an availability bug of its own.
        assert unknown(history) == [], summary(history)
        violations = verify(backend, history, workload)
        assert_no_violations(violations, history)
    wait_until(lambda: threading.active_count() <= baseline, "the load's threads to end")


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_writer_processes(shared_backend: Backend, method: str, tmp_path: Path) -> None:
    """Two writer processes and the parent hammer one namespace at once. With fork, the children use the
    store the parent created (and used) before forking; with spawn, they rebuild it from its config."""
    backend = shared_backend
    assert backend.config is not None
    seed = 2
    workload = Workload(seed=seed, namespace=namespace(method), threads=3, ops=ops_for(backend, OPS // 2))
    ctx: Any = multiprocessing.get_context(method)
    children = 2
    ready = ctx.Barrier(children + 1, timeout=120)
    with backend.make(workload.namespace) as store:
        # Use the client before the fork, so pooled connections exist that the children must not share.
        store.save("warm-up", Message(content=b"x"))
        assert store.get("warm-up").content == b"x"
        assert store.delete("warm-up")
        processes = []
        for index in range(children):
            out = tmp_path / f"history-{index}.jsonl"
            inherited = store if method == "fork" else None
            args = (inherited, backend.config, workload, f"{method[0]}{index}.", str(out), ready)
            processes.append((ctx.Process(target=process_worker, args=args), out))
        for process, _ in processes:
            process.start()
        ready.wait()
        ops = run_load(store, workload, prefix="parent.")
        # The parent's own client still works after the children used their copies of it.
        assert not store.exists("warm-up")
        for process, _ in processes:
            process.join(timeout=300)
            assert process.exitcode == 0, f"writer process exited with {process.exitcode}"
        for _, out in processes:
            ops += load_history(out)
    assert len(ops) == (children + 1) * workload.threads * workload.ops
    assert unknown(ops) == [], summary(ops)
    violations = verify(backend, ops, workload)
    assert_no_violations(violations, ops)
