"""The history checker catches what it claims to: deliberately broken stores fail it, a correct one passes.

Each broken store is the memory backend with one bug of the kind real backends have had: an acknowledged
write that is lost, a torn read, namespaces that leak into each other, a write-once check that races, a
stale read, a delete that does not delete. The same load and checker that pass on every real backend
must report each of them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
from history import ABSENT, Op, Recorder, Workload, check, clients_of, digest_of, final_reads, payload, run_load

from artifactstore_core import ArtifactStore, Message
from artifactstore_core.errors import BackendTimeoutError
from artifactstore_memory import MemorySpace, MemoryStore

SEED = 7

# -- broken stores ---------------------------------------------------------------------------------------


class _Counting(MemoryStore):
    """A memory store that misbehaves on every ``every``-th call of one kind (deterministic)."""

    every = 6

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls = itertools.count(1)
        self._count_lock = threading.Lock()

    def _unlucky(self) -> bool:
        with self._count_lock:
            return next(self._calls) % self.every == 0


class LosesAcknowledgedSaves(_Counting):
    """Acknowledges some saves without storing them (a write buffered and never flushed)."""

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        if self._unlucky():
            return
        super()._save(step_id, message, overwrite, ttl)


class TornReads(_Counting):
    """Returns half of the content on some reads (a read racing a non-atomic write)."""

    def _get(self, step_id: str) -> Message:
        message = super()._get(step_id)
        content = message.content
        if self._unlucky() and isinstance(content, (bytes, str)) and content:
            return message.model_copy(update={"content": content[: len(content) // 2]})
        if self._unlucky() and not isinstance(content, (bytes, str)):
            return message.model_copy(update={"content": {"torn": True}})
        return message


class _OneTable:
    """Stands for a memory space's map of namespaces, filing every namespace's artifacts under one name."""

    def __init__(self, namespaces: dict[str, dict[str, Message]]) -> None:
        self._namespaces = namespaces

    def get(self, name: str, default: object = None) -> object:
        return self._namespaces.get("everyone", default)

    def __setitem__(self, name: str, items: dict[str, Message]) -> None:
        self._namespaces["everyone"] = items


class LeaksNamespaces(MemoryStore):
    """Keys every namespace's artifacts in one table (a prefix that forgot the namespace)."""

    def __init__(self, *, namespace: str, space: MemorySpace) -> None:
        super().__init__(namespace=namespace, space=space)
        # The store looks its namespace's dict up in this map at each call.
        self._all = _OneTable(self._all)  # type: ignore[assignment]


class RacyWriteOnce(MemoryStore):
    """Write-once checked without a lock around check and write, so concurrent writers all win."""

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        items = self._all.get(self._namespace)
        existing = None if items is None else items.get(step_id)
        if existing is not None and not overwrite and step_id.startswith("o/"):
            super()._save(step_id, message, overwrite, ttl)
            return
        # The bug: shared keys are written blindly, the last writer replacing the first.
        self._all.setdefault(self._namespace, {})[step_id] = message


class StaleReads(_Counting):
    """Answers "not found" for some stored artifacts (a read served by a lagging replica)."""

    def _get(self, step_id: str) -> Message:
        message = super()._get(step_id)
        if self._unlucky():
            raise self._not_found(step_id)
        return message


class DeleteThatKeeps(_Counting):
    """Reports some deletes as done without removing anything."""

    every = 3

    def _delete(self, step_id: str) -> bool:
        if self._unlucky():
            items = self._all.get(self._namespace)
            return items is not None and step_id in items
        return super()._delete(step_id)


def run_on(make: Callable[[str], ArtifactStore], threads: int = 8, ops: int = 150) -> list[str]:
    """Load two namespaces that use the same step ids; return every violation the checker finds."""
    violations: list[str] = []
    for name in ("ns-a", "ns-b"):
        workload = Workload(seed=SEED, namespace=name, threads=threads, ops=ops)
        store = make(name)
        ops_done = run_load(store, workload)
        ops_done += final_reads(store, workload.keys(clients_of(ops_done)), SEED)
        violations += check(ops_done, seed=SEED, namespace=name)
    return violations


def test_a_correct_store_passes() -> None:
    space = MemorySpace()
    assert run_on(lambda ns: MemoryStore(namespace=ns, space=space)) == []


BROKEN: dict[str, tuple[type[MemoryStore], str]] = {
    "lost-save": (LosesAcknowledgedSaves, "acknowledged save lost"),
    "torn-read": (TornReads, "torn/corrupt"),
    "namespace-leak": (LeaksNamespaces, "'s data"),
    "racy-write-once": (RacyWriteOnce, "write-once"),
    "stale-read": (StaleReads, "read found nothing"),
    "delete-that-keeps": (DeleteThatKeeps, "only hold"),
}


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_a_broken_store_fails_the_checker(bug: str) -> None:
    cls, symptom = BROKEN[bug]
    space = MemorySpace()
    violations = run_on(lambda ns: cls(namespace=ns, space=space))
    assert violations, f"the checker missed a {bug} store"
    assert any(symptom in violation for violation in violations), violations[:5]


# -- the rules, on small literal histories -------------------------------------------------------------


def op(client: str, seq: int, kind: str, key: str, **fields: Any) -> Op:
    start = fields.pop("start", float(seq))
    return Op(client=client, seq=seq, kind=kind, key=key, start=start, end=fields.pop("end", start + 0.5), **fields)


def checked(*ops: Op) -> list[str]:
    return check(ops, seed=SEED, namespace="ns")


def test_ok_save_then_nothing_read_is_a_lost_write() -> None:
    assert checked(op("c", 0, "save", "o/c/0", value="c#1"), op("c", 1, "get", "o/c/0", value=ABSENT))
    assert not checked(op("c", 0, "save", "o/c/0", value="c#1"), op("c", 1, "get", "o/c/0", value="c#1"))


def test_definitely_failed_save_must_stay_absent() -> None:
    save = op("c", 0, "save", "o/c/0", value="c#1", outcome="fail", error="PayloadTooLargeError")
    assert checked(save, op("c", 1, "get", "o/c/0", value="c#1"))
    assert not checked(save, op("c", 1, "get", "o/c/0", value=ABSENT))


def test_indeterminate_save_is_absent_or_identical_even_later() -> None:
    save = op("c", 0, "save", "o/c/0", value="c#1", outcome="unknown", error="BackendTimeoutError")
    assert not checked(save, op("c", 1, "get", "o/c/0", value=ABSENT), op("c", 2, "get", "o/c/0", value="c#1"))
    assert checked(save, op("c", 1, "get", "o/c/0", value="c#2"))


def test_write_once_refusal_needs_a_different_value() -> None:
    refused = op("c", 1, "save", "o/c/0", value="c#2", outcome="fail", error="ArtifactExistsError")
    assert not checked(op("c", 0, "save", "o/c/0", value="c#1"), refused)
    assert checked(refused)


def test_overwrite_and_delete_are_followed() -> None:
    history = [
        op("c", 0, "save", "o/c/0", value="c#1"),
        op("c", 1, "save", "o/c/0", value="c#2", overwrite=True),
        op("c", 2, "get", "o/c/0", value="c#2"),
        op("c", 3, "delete", "o/c/0", result=True),
        op("c", 4, "exists", "o/c/0", result=False),
    ]
    assert not checked(*history)
    assert checked(*history[:2], op("c", 2, "get", "o/c/0", value="c#1"))
    assert checked(*history[:4], op("c", 4, "exists", "o/c/0", result=True))


def test_shared_write_once_register() -> None:
    a = op("a", 0, "save", "s/0", value="a#0", start=0.0, end=1.0)
    b = op("b", 0, "save", "s/0", value="b#0", start=0.2, end=1.2)
    assert checked(a, b), "two different acknowledged values"
    b_refused = op("b", 0, "save", "s/0", value="b#0", outcome="fail", error="ArtifactExistsError", start=2, end=3)
    late_miss = op("c", 0, "get", "s/0", value=ABSENT, start=1.5, end=1.6)
    assert checked(a, late_miss), "nothing read after the save was acknowledged"
    early_miss = op("c", 0, "get", "s/0", value=ABSENT, start=0.1, end=0.9)
    assert not checked(a, b_refused, early_miss, op("c", 1, "get", "s/0", value="a#0", start=4, end=5))
    assert checked(a, b_refused, op("c", 1, "get", "s/0", value="b#0", start=4, end=5))


def test_reads_must_not_be_foreign_or_torn_and_raw_errors_must_not_escape() -> None:
    assert checked(op("c", 0, "get", "o/c/0", bad="read returned key 'x''s data"))
    assert checked(op("c", 0, "list", "", result=[["stranger", "blake3:00"]]))
    assert checked(op("c", 0, "get", "o/c/0", outcome="unknown", error="KeyError", bad="raw KeyError escaped"))


def test_detected_corruption_is_an_error_unless_the_fault_corrupts_in_transit() -> None:
    corrupt = op("c", 0, "get", "o/c/0", outcome="fail", error="ArtifactCorruptedError")
    assert checked(corrupt)
    assert not check([corrupt], seed=SEED, namespace="ns", corruption_detected_ok=True)


def test_list_must_match_what_the_client_knows() -> None:
    save = op("c", 0, "save", "o/c/0", value="c#1")
    right = op("c", 1, "list", "", result=[["o/c/0", digest_of(SEED, "ns", "o/c/0", "c#1")]])
    assert not checked(save, right)
    assert checked(save, op("c", 1, "list", "", result=[]))
    assert checked(save, op("c", 1, "list", "", result=[["o/c/0", "blake3:00"]]))


def test_recorder_records_raw_exceptions_and_classifies_errors() -> None:
    class Raw(MemoryStore):
        def get(self, step_id: str) -> Message:  # a broken override that bypasses the translation
            raise KeyError(step_id)

        def exists(self, step_id: str) -> bool:
            raise BackendTimeoutError("slow")

    recorder = Recorder(Raw(namespace="ns"), "c", SEED)
    got = recorder.get("o/c/0")
    assert got.bad is not None
    assert "KeyError" in got.bad
    assert recorder.exists("o/c/0").outcome == "unknown"
    assert recorder.save("o/c/0", "c#1").outcome == "ok"


def test_payloads_are_deterministic_and_self_describing() -> None:
    first = payload(SEED, "ns", "o/c/0", "c#1")
    assert first == payload(SEED + 0, "ns", "o/c/0", "c#1")
    assert first != payload(SEED, "ns", "o/c/0", "c#2")
    assert first.metadata["key"] == "o/c/0"
    kinds = {payload(SEED, "ns", f"k{n}", "c#1").metadata["kind"] for n in range(40)}
    assert kinds == {"bytes", "text", "json"}
