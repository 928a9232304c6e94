"""A history checker for artifact stores, in the manner of Jepsen: record, break things, then check.

Concurrent clients run mixed operations through a :class:`Recorder`, which logs each one as an
:class:`Op` with its outcome: ``ok``, ``fail`` (definitely did not happen) or ``unknown`` (may or may not
have happened: a timeout, a dropped connection). Payloads derive from ``(seed, namespace, key, writer,
version)`` (:func:`payload`), and every message carries its own identity in its metadata, so a read can be
verified byte for byte without keeping copies, and a read of another key's or namespace's data is caught.

:func:`check` replays the history against the contract and returns the violations:

- every ``ok`` save reads back byte-identical until it is replaced or deleted;
- every definitely failed save is absent (its value is never read);
- every indeterminate save is absent or byte-identical;
- no read is ever torn, corrupt, or another key's or namespace's data; a write-once key never changes;
- a read that starts after a save was acknowledged (or after another read saw the value) sees it;
- ``list`` shows exactly the keys a client knows to be there, with their digests, and nothing foreign;
- no exception other than an ``ArtifactStoreError`` escapes the public API.

Keys are of two kinds: *owned* keys ``o/<client>/<n>`` that one client saves (write-once or overwrite),
deletes and reads in its own order, so their history is sequential and checked exactly; and *shared*
keys ``s/<n>`` that every client saves write-once with its own value and reads concurrently, checked as a
write-once register with real-time order (``time.monotonic`` is system-wide, so processes compare too).

:func:`run_load` drives threads; :func:`process_worker` is the target of fork and spawn writer processes.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from artifactstore_core import ArtifactStore, Message, SchemaInfo
from artifactstore_core.envelope import content_info
from artifactstore_core.errors import (
    AccessDeniedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
)

__all__ = [
    "ABSENT",
    "Op",
    "Recorder",
    "Workload",
    "check",
    "final_reads",
    "load_history",
    "payload",
    "process_worker",
    "run_load",
    "save_history",
]

#: The state of a key that holds no artifact.
ABSENT = "-"

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.é日本🚀\u00a0/\\\"'{}[]%*?:\n\t"
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
_LARGE_EVERY = 40  # one payload in this many is large (compressed path for text and JSON)


# -- payloads ----------------------------------------------------------------------------------------


def value_id(writer: str, version: int) -> str:
    """The name of one value of a key: which client wrote it, and its version."""
    return f"{writer}#{version}"


def _rng(seed: int, namespace: str, key: str, value: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}\0{namespace}\0{key}\0{value}".encode(), digest_size=16).digest()
    return random.Random(digest)


_PAYLOADS: dict[tuple[int, str, str, str], Message] = {}
_PAYLOADS_LOCK = threading.Lock()


def payload(seed: int, namespace: str, key: str, value: str) -> Message:
    """The message value ``value`` of ``key`` in ``namespace`` stands for; deterministic in its arguments.

    Content kind (bytes, text, JSON), size, schema, media type and ``created_at`` all derive from the
    arguments; the metadata names the namespace, key and value, which is how reads identify what they got.
    """
    cache_key = (seed, namespace, key, value)
    cached = _PAYLOADS.get(cache_key)
    if cached is not None:
        return cached
    rng = _rng(seed, namespace, key, value)
    size = rng.randint(70_000, 100_000) if rng.randrange(_LARGE_EVERY) == 0 else rng.randint(0, 2_500)
    kind = rng.choice(("bytes", "bytes", "text", "json"))
    content: Any
    if kind == "bytes":
        content = rng.randbytes(size)
    elif kind == "text":
        content = "".join(_ALPHABET[b % len(_ALPHABET)] for b in rng.randbytes(size))
    else:
        rows = [[rng.randrange(-(2**40), 2**40), rng.random(), f"r{index}é"] for index in range(size // 40 + 1)]
        content = {"key": key, "rows": rows, "flag": rng.random() < 0.5, "none": None}
    schema = SchemaInfo(name="reliability.Payload", version=value) if rng.random() < 0.3 else None
    extra: dict[str, Any] = {"media_type": "application/x-reliability"} if rng.random() < 0.2 else {}
    message = Message(
        content=content,
        schema=schema,
        metadata={"ns": namespace, "key": key, "value": value, "kind": kind},
        created_at=_EPOCH + timedelta(microseconds=rng.randrange(10**15)),
        **extra,
    )
    with _PAYLOADS_LOCK:
        if len(_PAYLOADS) > 50_000:
            _PAYLOADS.clear()
        _PAYLOADS[cache_key] = message
    return message


def digest_of(seed: int, namespace: str, key: str, value: str) -> str:
    """The digest ``list()`` reports for that value (``blake3:<hex>`` of the uncompressed payload)."""
    return content_info(key, payload(seed, namespace, key, value)).digest


def identify(seed: int, namespace: str, key: str, message: object) -> tuple[str | None, str | None]:
    """Which value a message read from ``key`` is: ``(value, None)``, or ``(None, why it is wrong)``."""
    if not isinstance(message, Message):
        return None, f"read returned {type(message).__name__}, not a Message"
    meta = message.metadata
    try:
        ns, where, value = meta["ns"], meta["key"], meta["value"]
    except (KeyError, TypeError):
        return None, "read returned a message without the test's identity metadata (foreign data)"
    if ns != namespace:
        return None, f"read returned namespace {ns!r}'s data"
    if where != key:
        return None, f"read returned key {where!r}'s data"
    if not isinstance(value, str):
        return None, "read returned a malformed value id"
    expected = payload(seed, namespace, key, value)
    if message != expected:
        fields = [name for name in ("content", "schema", "metadata", "media_type", "created_at")]
        wrong = [name for name in fields if getattr(message, name) != getattr(expected, name)]
        return None, f"read of value {value} differs from what was saved in {', '.join(wrong) or 'type'} (torn/corrupt)"
    return value, None


# -- recording ---------------------------------------------------------------------------------------


@dataclass
class Op:
    """One operation as a client saw it.

    Attributes:
        client: who ran it (``f0.t3``: thread 3 of forked process 0; ``final``: the verification pass).
        seq: its position in that client's own order.
        kind: ``save``, ``get``, ``exists``, ``delete`` or ``list``.
        key: the step id (``""`` for ``list``).
        value: for a save, the value written; for a successful get, the value read (or :data:`ABSENT`).
        overwrite: whether a save replaced.
        outcome: ``ok``, ``fail`` (definitely did not happen) or ``unknown``.
        result: ``exists``/``delete``: the bool returned; ``list``: ``[[key, digest], ...]``.
        error: the class name of the error raised, if any.
        cause: the class name of that error's ``__cause__`` (the client library's exception), if any.
        bad: why the result is wrong (a corrupt, torn or foreign read; an escaped raw exception).
        start, end: ``time.monotonic()`` around the call.
    """

    client: str
    seq: int
    kind: str
    key: str
    value: str | None = None
    overwrite: bool = False
    outcome: str = "ok"
    result: Any = None
    error: str | None = None
    cause: str | None = None
    bad: str | None = None
    start: float = 0.0
    end: float = 0.0

    def describe(self) -> str:
        what = f"{self.kind}({self.key!r}" + (f", {self.value}" if self.kind == "save" else "")
        what += ", overwrite)" if self.overwrite else ")"
        got = self.error or (self.value if self.kind == "get" else self.result)
        if self.cause:
            got = f"{got} (from {self.cause})"
        text = f"{self.client}#{self.seq} {what} -> {self.outcome} {got}"
        return text if len(text) < 300 else text[:300] + "..."


def classify(exc: BaseException) -> str:
    """``fail`` if the error proves the operation did not take effect, else ``unknown``.

    A backend failure in the middle of a call (timeout, reset, a garbled answer) leaves the operation
    indeterminate; answers that refuse it (exists, denied, invalid, too large) are definite.
    """
    if isinstance(exc, AccessDeniedError):
        return "fail"
    if isinstance(exc, BackendError):
        return "unknown"
    return "fail"


class Recorder:
    """Runs operations on ``store`` for one client and appends an :class:`Op` for each to ``ops``.

    Raw (non-``ArtifactStoreError``) exceptions are recorded as violations, not raised, so one escaped
    exception does not hide the rest of the history.
    """

    def __init__(self, store: ArtifactStore, client: str, seed: int, ops: list[Op] | None = None) -> None:
        self.store = store
        self.client = client
        self.seed = seed
        self.ops: list[Op] = ops if ops is not None else []
        self._seq = 0

    def _op(self, kind: str, key: str, **fields: Any) -> Op:
        op = Op(client=self.client, seq=self._seq, kind=kind, key=key, **fields)
        self._seq += 1
        return op

    def _run(self, op: Op, call: Callable[[], Any], on_ok: Callable[[Any], None]) -> Op:
        op.start = time.monotonic()
        try:
            result = call()
        except ArtifactNotFoundError as exc:
            op.end = time.monotonic()
            if op.kind == "get":
                op.value = ABSENT
            else:
                op.outcome, op.error = "fail", type(exc).__name__
        except ArtifactStoreError as exc:
            op.end = time.monotonic()
            op.outcome, op.error = classify(exc), type(exc).__name__
            op.cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else None
        except Exception as exc:  # a raw exception escaping is exactly what is being recorded
            op.end = time.monotonic()
            op.outcome, op.error = "unknown", type(exc).__name__
            op.bad = f"raw {type(exc).__module__}.{type(exc).__name__} escaped the public API: {exc}"
        else:
            op.end = time.monotonic()
            on_ok(result)
        self.ops.append(op)
        return op

    def save(self, key: str, value: str, *, overwrite: bool = False) -> Op:
        message = payload(self.seed, self.store.namespace, key, value)
        op = self._op("save", key, value=value, overwrite=overwrite)
        return self._run(op, lambda: self.store.save(key, message, overwrite=overwrite), lambda _: None)

    def get(self, key: str) -> Op:
        op = self._op("get", key)

        def read(message: Any) -> None:
            value, bad = identify(self.seed, self.store.namespace, key, message)
            op.value, op.bad = value, bad

        return self._run(op, lambda: self.store.get(key), read)

    def exists(self, key: str) -> Op:
        op = self._op("exists", key)
        return self._run(op, lambda: self.store.exists(key), lambda result: setattr(op, "result", bool(result)))

    def delete(self, key: str) -> Op:
        op = self._op("delete", key)
        return self._run(op, lambda: self.store.delete(key), lambda result: setattr(op, "result", bool(result)))

    def list(self) -> Op:
        op = self._op("list", "")
        return self._run(
            op,
            lambda: sorted([info.step_id, info.digest] for info in self.store.list()),
            lambda result: setattr(op, "result", result),
        )


# -- checking ----------------------------------------------------------------------------------------


def owner_of(key: str) -> str | None:
    """The client that owns ``key`` (``o/<client>/<n>``), or ``None`` for a shared key."""
    if key.startswith("o/"):
        return key[2:].rsplit("/", 1)[0]
    return None


def _known_key(key: str) -> bool:
    if key.startswith("s/"):
        return key[2:].isdigit()
    owner = owner_of(key)
    return owner is not None and key.rsplit("/", 1)[1].isdigit()


@dataclass
class Checker:
    """Replays one namespace's history and collects violations (use :func:`check`)."""

    seed: int
    namespace: str
    corruption_detected_ok: bool
    violations: list[str] = field(default_factory=list)
    _digests: dict[tuple[str, str], str] = field(default_factory=dict)

    def fail(self, op: Op | None, message: str) -> None:
        self.violations.append(f"{message}" + (f"  [{op.describe()}]" if op is not None else ""))

    def digest(self, key: str, value: str) -> str:
        cached = self._digests.get((key, value))
        if cached is None:
            cached = self._digests[(key, value)] = digest_of(self.seed, self.namespace, key, value)
        return cached

    # -- common rules --

    def generic(self, op: Op) -> None:
        if op.bad is not None:
            self.fail(op, op.bad)
        if op.kind in ("get", "exists") and op.outcome == "fail" and op.error is not None:
            corrupt = op.error in _SERIALIZATION_ERRORS
            # The verification pass reads over a clean connection: what it finds damaged was stored damaged.
            if corrupt and (op.client == "final" or not self.corruption_detected_ok):
                self.fail(op, "read of stored data failed verification (an acknowledged artifact was damaged)")
        if op.kind == "list" and op.outcome == "ok":
            for key, _ in op.result:
                if not _known_key(key):
                    self.fail(op, f"list returned {key!r}, which no client of this namespace wrote (foreign id)")

    # -- owned keys: one client's sequential history per key --
    #
    # The belief about a key is the set of values it may hold now. An indeterminate operation may take
    # effect at any later moment (a request held up in the network can land after the client gave up),
    # so it stays *pending*: every observation is checked against the belief closed under the pending
    # effects, which is sound (no false alarms) and exact when nothing was indeterminate.

    def owned(self, client: str, ops: Sequence[Op]) -> None:
        state: dict[str, set[str]] = defaultdict(lambda: {ABSENT})
        pending: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
        for op in ops:
            if op.kind == "list":
                if op.outcome == "ok":
                    self._owned_list(op, client, state, pending)
                continue
            possible = _closure(state[op.key], pending[op.key])
            after = self._owned_step(op, possible, pending[op.key])
            state[op.key] = after if after else possible

    def _owned_list(
        self, op: Op, client: str, state: dict[str, set[str]], pending: dict[str, list[tuple[str, str | None]]]
    ) -> None:
        listed = {key: digest for key, digest in op.result if owner_of(key) == client}
        for key in set(listed) | set(state):
            if owner_of(key) != client:
                continue
            possible = _closure(state[key], pending[key])
            if key in listed:
                matching = {v for v in possible if v != ABSENT and self.digest(key, v) == listed[key]}
                if not matching:
                    self.fail(op, f"list showed {key!r} with a digest none of its possible values {possible} has")
                state[key] = matching or possible
            elif ABSENT not in possible:
                self.fail(op, f"list omitted {key!r}, which holds one of {possible}")
            else:
                state[key] = {ABSENT}

    def _owned_step(self, op: Op, possible: set[str], pending: list[tuple[str, str | None]]) -> set[str]:
        present = possible - {ABSENT}
        if op.kind == "save":
            v = op.value
            assert v is not None
            effect = ("overwrite" if op.overwrite else "create", v)
            if op.outcome == "unknown":
                pending.append(effect)
                return _closure(possible, [effect])
            if op.outcome == "fail":
                if op.error == "ArtifactExistsError" and not op.overwrite:
                    others = present - {v}
                    if not others:
                        self.fail(op, f"save refused as existing, but the key can only hold {possible}")
                    return others
                return possible
            if not op.overwrite and ABSENT not in possible and v not in possible:
                self.fail(op, f"write-once save acknowledged while a different artifact {possible} was stored")
            return {v}
        if op.kind == "get":
            if op.outcome != "ok" or op.bad is not None:
                return possible
            if op.value == ABSENT:
                if ABSENT not in possible:
                    self.fail(op, f"read found nothing, but the key holds {possible} (acknowledged save lost)")
                return {ABSENT}
            if op.value not in possible:
                self.fail(op, f"read {op.value}, but the key can only hold {possible} (a failed or replaced save)")
            return {op.value} if op.value is not None else possible
        if op.kind == "exists":
            if op.outcome != "ok":
                return possible
            if op.result:
                if not present:
                    self.fail(op, "exists() is True for a key that holds nothing")
                return present
            if ABSENT not in possible:
                self.fail(op, f"exists() is False, but the key holds {possible}")
            return {ABSENT}
        if op.kind == "delete":
            if op.outcome == "unknown":
                pending.append(("delete", None))
                return possible | {ABSENT}
            if op.outcome == "ok":
                if op.result and not present:
                    self.fail(op, "delete() removed something from a key that held nothing")
                if not op.result and ABSENT not in possible:
                    self.fail(op, f"delete() found nothing, but the key held {possible}")
                return {ABSENT}
            return possible
        raise AssertionError(f"unknown operation {op.kind}")

    # -- shared keys: a write-once register, concurrent clients, real-time order --

    def shared(self, key: str, ops: Sequence[Op]) -> None:
        saves = [op for op in ops if op.kind == "save"]
        reads = [op for op in ops if op.kind == "get" and op.outcome == "ok" and op.bad is None]
        acknowledged = {op.value for op in saves if op.outcome == "ok"}
        maybe = {op.value for op in saves if op.outcome == "unknown"}
        refused = [op for op in saves if op.error == "ArtifactExistsError"]
        failed = {op.value for op in saves if op.outcome == "fail"} - acknowledged - maybe
        for op in saves:
            if op.overwrite:
                self.fail(op, "shared keys are write-once in this workload; overwrite is not allowed")
        if len(acknowledged) > 1:
            self.fail(None, f"{key!r}: write-once acknowledged {len(acknowledged)} different values {acknowledged}")
        seen = {op.value for op in reads if op.value != ABSENT}
        if len(seen) > 1:
            self.fail(None, f"{key!r}: write-once key read as {len(seen)} different values {seen}")
        for op in reads:
            if op.value != ABSENT and op.value in failed:
                self.fail(op, f"read {op.value}, whose save definitely failed")
            elif op.value != ABSENT and op.value not in acknowledged | maybe:
                self.fail(op, f"read {op.value}, which nobody tried to save")
        if acknowledged and seen and not seen <= acknowledged:
            self.fail(None, f"{key!r}: acknowledged {acknowledged} but read {seen}")
        # Once something is known to be stored, every read that starts later must find it.
        established = [op.end for op in saves if op.outcome == "ok"]
        established += [op.end for op in reads if op.value != ABSENT]
        established += [op.end for op in refused]
        if established:
            since = min(established)
            for op in reads:
                if op.value == ABSENT and op.start > since:
                    self.fail(op, f"read found nothing {op.start - since:.3f} s after {key!r} was known stored")
        for op in refused:
            if not (acknowledged | maybe) - {op.value}:
                self.fail(op, "save refused as existing, but no other value of the key was ever saved")


_SERIALIZATION_ERRORS = frozenset(
    {"SerializationError", "ArtifactCorruptedError", "UnsupportedFormatError", "SchemaMismatchError"}
)


def _closure(state: set[str], effects: Sequence[tuple[str, str | None]]) -> set[str]:
    """``state`` with every pending effect applied any number of times, in any order."""
    result = set(state)
    while True:
        grown = set(result)
        for kind, value in effects:
            if kind == "delete":
                grown.add(ABSENT)
            elif kind == "overwrite" or ABSENT in result:
                assert value is not None
                grown.add(value)
        if grown == result:
            return result
        result = grown


def check(
    ops: Iterable[Op],
    *,
    seed: int,
    namespace: str,
    corruption_detected_ok: bool = False,
    untrusted_list: Callable[[Op], bool] | None = None,
) -> list[str]:
    """The violations of the contract in one namespace's history (empty: the history is valid).

    Args:
        ops: every operation of every client on ``namespace``, the final verification reads included.
        corruption_detected_ok: reads that raise ``ArtifactCorruptedError`` (or another serialization
            error) are fine: the fault injected corrupts data in transit and the store detected it. Never
            for the verification pass (client ``final``), which reads over a clean connection.
        untrusted_list: ``list`` results for which this returns ``True`` are not checked (only that no raw
            exception escaped): listings travel outside envelopes, so bits flipped in transit change them
            undetected, like any protocol framing.
    """
    checker = Checker(
        seed=seed,
        namespace=namespace,
        corruption_detected_ok=corruption_detected_ok,
    )
    ops = list(ops)
    if untrusted_list is not None:
        ops = [op for op in ops if not (op.kind == "list" and untrusted_list(op) and op.bad is None)]
    by_client: dict[str, list[Op]] = defaultdict(list)
    shared: dict[str, list[Op]] = defaultdict(list)
    final: list[Op] = []
    for op in ops:
        checker.generic(op)
        if op.client == "final":
            final.append(op)
        elif op.kind == "list" or owner_of(op.key) is not None:
            owner = owner_of(op.key)
            if owner is not None and owner != op.client:
                checker.fail(op, "a client touched another client's owned key (workload bug)")
                continue
            by_client[op.client].append(op)
        else:
            shared[op.key].append(op)
    final.sort(key=lambda op: op.seq)
    for client, client_ops in by_client.items():
        client_ops.sort(key=lambda op: op.seq)
        # The verification pass runs after every client finished: it continues each owner's sequence.
        tail = [op for op in final if op.kind == "list" or owner_of(op.key) == client]
        checker.owned(client, client_ops + tail)
    for op in final:
        if op.kind == "get" and owner_of(op.key) is None:
            shared[op.key].append(op)
    for key, key_ops in shared.items():
        checker.shared(key, key_ops)
    # A listed shared key shows the digest of a value somebody (possibly) saved.
    attempted: dict[str, set[str]] = defaultdict(set)
    for key, key_ops in shared.items():
        attempted[key] = {op.value for op in key_ops if op.kind == "save" and op.outcome != "fail" and op.value}
    for op in ops:
        if op.kind != "list" or op.outcome != "ok":
            continue
        for key, digest in op.result:
            if key.startswith("s/") and not any(checker.digest(key, v) == digest for v in attempted[key]):
                checker.fail(op, f"list showed shared key {key!r} with a digest of no value saved there")
    return checker.violations


# -- load ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A mixed workload: ``threads`` clients of ``ops`` operations each on ``namespace``.

    Each client owns ``owned_keys`` keys and shares ``shared_keys`` keys with the others. ``pace`` is
    called after every operation (fault tests use it to count progress).
    """

    seed: int
    namespace: str
    threads: int = 16
    ops: int = 200
    owned_keys: int = 4
    shared_keys: int = 12
    list_every: int = 100

    def keys(self, clients: Iterable[str]) -> list[str]:
        """Every key the workload may touch, for the verification pass."""
        owned = [f"o/{client}/{n}" for client in clients for n in range(self.owned_keys)]
        return owned + [f"s/{n}" for n in range(self.shared_keys)]


def _client_loop(
    recorder: Recorder, workload: Workload, start: threading.Barrier | None, pace: Callable[[], None] | None
) -> None:
    client = recorder.client
    rng = random.Random(f"{workload.seed}/{client}")
    versions = [0] * workload.owned_keys
    if start is not None:
        start.wait()
    for index in range(workload.ops):
        roll = rng.random()
        owned = f"o/{client}/{rng.randrange(workload.owned_keys)}"
        n = int(owned.rsplit("/", 1)[1])
        if workload.list_every and index % workload.list_every == workload.list_every // 2:
            recorder.list()
        elif roll < 0.22:  # a new version, write-once: refused if an older one is still there
            versions[n] += 1
            recorder.save(owned, value_id(client, versions[n]))
        elif roll < 0.27:  # a retry of the current version: must succeed as an identical save
            recorder.save(owned, value_id(client, versions[n]))
        elif roll < 0.34:
            versions[n] += 1
            recorder.save(owned, value_id(client, versions[n]), overwrite=True)
        elif roll < 0.42:
            recorder.delete(owned)
        elif roll < 0.60:
            recorder.get(owned)
        elif roll < 0.65:
            recorder.exists(owned)
        elif roll < 0.80:
            recorder.save(f"s/{rng.randrange(workload.shared_keys)}", value_id(client, 0))
        else:
            recorder.get(f"s/{rng.randrange(workload.shared_keys)}")
        if pace is not None:
            pace()


def run_load(
    store: ArtifactStore | Callable[[int], ArtifactStore],
    workload: Workload,
    *,
    prefix: str = "t",
    pace: Callable[[], None] | None = None,
    deadline: float = 600.0,
) -> list[Op]:
    """Run ``workload.threads`` client threads; returns the merged history.

    ``store`` is one store shared by every thread (the thread-safety contract) or a factory called with
    the thread index. Threads start together (a barrier) so that they really overlap.
    """
    recorders = []
    for index in range(workload.threads):
        target = store(index) if callable(store) and not isinstance(store, ArtifactStore) else store
        recorders.append(Recorder(target, f"{prefix}{index}", workload.seed))
    barrier = threading.Barrier(workload.threads, timeout=60)
    errors: list[BaseException] = []

    def body(recorder: Recorder) -> None:
        try:
            _client_loop(recorder, workload, barrier, pace)
        except BaseException as exc:  # a bug in the workload itself: surface it in the test
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), name=f"load-{r.client}") for r in recorders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=deadline)
        if thread.is_alive():
            raise AssertionError(f"load thread {thread.name} still running after {deadline} s (hang)")
    if errors:
        raise errors[0]
    return [op for recorder in recorders for op in recorder.ops]


def summary(ops: Iterable[Op]) -> str:
    """How many operations ended how, e.g. ``save:ok=120, get:unknown:BackendTimeoutError=3``."""
    counts: dict[str, int] = {}
    for op in ops:
        label = f"{op.kind}:{op.outcome}" + (f":{op.error}" if op.error else "") + (f"<{op.cause}" if op.cause else "")
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{label}={count}" for label, count in sorted(counts.items()))


def assert_no_violations(violations: list[str], ops: list[Op]) -> None:
    """Fail with the first violations of :func:`check` and a summary of the history they came from."""
    assert violations == [], f"{len(violations)} violations ({summary(ops)}):\n" + "\n".join(violations[:20])


def final_reads(store: ArtifactStore, keys: Iterable[str], seed: int) -> list[Op]:
    """The verification pass: read every key (and list) through ``store``, as client ``final``."""
    recorder = Recorder(store, "final", seed)
    for key in keys:
        recorder.get(key)
    recorder.list()
    return recorder.ops


def clients_of(ops: Iterable[Op]) -> list[str]:
    return sorted({op.client for op in ops if op.client != "final"})


# -- processes ----------------------------------------------------------------------------------------


def save_history(ops: Iterable[Op], path: Path) -> None:
    path.write_text("\n".join(json.dumps(asdict(op)) for op in ops))


def load_history(path: Path) -> list[Op]:
    text = path.read_text()
    return [Op(**json.loads(line)) for line in text.splitlines() if line]


def process_worker(
    store: ArtifactStore | None,
    config: Any,
    workload: Workload,
    prefix: str,
    out: str,
    ready: Any,
) -> None:
    """A writer process: run ``workload`` on ``store`` (forked: the parent's store) or on a store built
    from ``config`` (spawned), and write the history to ``out``. ``ready`` is a barrier shared with the
    parent so that every process runs at the same time."""
    own = store is None
    if store is None:
        store = config.create(workload.namespace)
    try:
        ready.wait(60)
        ops = run_load(store, workload, prefix=prefix)
    finally:
        if own:
            store.close()
    save_history(ops, Path(out))
