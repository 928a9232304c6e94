"""The conformance kit's tests, imported through :mod:`artifactstore_core.testing` (see there).

Imported from there so that pytest rewrites the asserts here: a failing kit test then shows the values
that differed, not a bare ``AssertionError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any, NoReturn, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from pydantic import BaseModel, ValidationError

from . import envelope as envelope_module
from .envelope import Codec, Encoded, content_info, limiting_json_content, reusing_verified_digests
from .errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    BackendError,
    BackendNotFoundError,
    BackendTimeoutError,
    BackendUnavailableError,
    CapacityError,
    InvalidStepIdError,
    PayloadTooLargeError,
    SchemaMismatchError,
    SerializationError,
    StoreClosedError,
    UnsupportedOperationError,
    redact,
)
from .ids import MAX_ID_BYTES
from .message import FrozenDict, Message, SchemaInfo
from .registry import plugin_host
from .store import ArtifactStore
from .testing_errors import reachable_text
from .testing_skips import CAPABILITY_SKIP

__all__ = [
    "AWKWARD_IDS",
    "INVALID_IDS",
    "LONG_ID_PAIRS",
    "ORDER_TRAP_IDS",
    "StoreConformance",
    "ZeroStream",
    "json_values",
    "messages",
]

MakeStore = Callable[[str], ArtifactStore]

#: Ids every backend must store as distinct artifacts and round-trip exactly.
AWKWARD_IDS: tuple[str, ...] = (
    "plain",
    "Plain",
    "with space",
    "a/b",
    "a%2Fb",
    "/leading",
    "..",
    ".",
    "../../etc/passwd",
    "*",
    "?",
    "[abc]",
    "%2e",
    "%2E",
    "x.",
    "CON",
    "nul",
    "tab\u00a0nbsp",
    "emoji 🚀🧪",
    "日本語",
    "a:b",
    "a\\b",
    "é",
    "e\u0301",
    "x" * MAX_ID_BYTES,
    "é" * (MAX_ID_BYTES // 2),
)

#: Ids whose storage names (``encode_name``, S3's compact form for long ids) sort unlike the ids themselves, and
#: ids that prefix one another: ``list_page`` must return them in ``sorted()`` order all the same.
ORDER_TRAP_IDS: tuple[str, ...] = (
    " ",
    "!",
    "%",
    "%41",
    "-",
    ".",
    "/",
    "0",
    "9",
    "A",
    "Z",
    "_",
    "`",
    "a",
    "a-",
    "a/",
    "a0",
    "aA",
    "a_",
    "b",
    "step-10",
    "step-2",
    "z",
    "{",
    "~",
    "é",
    "e\u0301",
    "日本語",
    "\uffff",
    "\U0001f680",
    "x" * 100 + "-",
    "x" * 100 + "A",
    "x" * MAX_ID_BYTES,
    "é" * (MAX_ID_BYTES // 2),
)


def _twins(size: int, filler: str = "x", ends: tuple[str, str] = ("a", "b")) -> tuple[str, str]:
    """Two ids of ``size`` bytes of UTF-8 (for a ``filler`` and ``ends`` that fit it exactly): ``filler``
    repeated, then one of ``ends``."""
    repeated = filler * ((size - len(ends[0].encode())) // len(filler.encode()))
    return repeated + ends[0], repeated + ends[1]


#: Pairs of long ids that differ only in their last character: a backend that keys artifacts by a cut id (a file
#: name's 255 bytes, a column's or a key's width, a hash of the first bytes) keeps each pair as one artifact. At
#: lengths where such cuts are common, up to MAX_ID_BYTES, and with a last character of several bytes, which a
#: cut in bytes can drop whole. Each pair has a filler of its own, so that a cut makes no two pairs collide.
LONG_ID_PAIRS: tuple[tuple[str, str], ...] = (
    *(_twins(size, filler) for size, filler in zip((100, 128, 200, 250, 255, MAX_ID_BYTES), "klmnop", strict=True)),
    _twins(MAX_ID_BYTES, "é", ("🚀", "🧪")),
)

# Afters that are stored nowhere in ORDER_TRAP_IDS: before, between and after them.
_ABSENT_AFTER = ("\u00a0", "+", "0a", "@", "Y", "^", "a.", "aB", "a\u00e0", "step-1", "x", "x" * 101, "\U0010fffd")

#: Ids every backend must refuse with InvalidStepIdError before any I/O.
INVALID_IDS: tuple[Any, ...] = (
    "",
    "a\x00b",
    "line\nbreak",
    "tab\there",
    "del\x7f",
    "c1\x85",
    "lone \ud800 surrogate",
    "x" * (MAX_ID_BYTES + 1),
    "é" * (MAX_ID_BYTES // 2 + 1),
    None,
    42,
    b"bytes",
)

_json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
#: Hypothesis strategy for JSON values.
json_values = st.recursive(
    _json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_contents = st.one_of(json_values, st.text(max_size=64), st.binary(max_size=256))
_schemas = st.none() | st.builds(
    SchemaInfo, name=st.text(min_size=1, max_size=16), version=st.none() | st.text(max_size=5)
)
#: Hypothesis strategy for messages of every content kind.
messages = st.builds(
    Message,
    content=_contents,
    schema=_schemas,
    metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)


class _Report(BaseModel):
    title: str
    score: float
    tags: list[str]


class _Other(BaseModel):
    title: str


def _not_declared(store: ArtifactStore, capability: str) -> NoReturn:
    """Skip a test of ``capability``, which ``store``'s backend does not declare (a skip CI allows)."""
    pytest.skip(f"{CAPABILITY_SKIP} backend {store.backend_name!r} does not declare {capability}")


def _shown_result(value: object) -> str:
    """``repr(value)``, cut short (a message can be megabytes): for a failure that says what a read returned."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _assert_gone(store: ArtifactStore, step_id: str, *, after: str) -> None:
    """Fail unless every read of ``store`` agrees that ``step_id`` is not stored (``after``: what removed it).

    A backend that deletes softly (a tombstone, a deleted flag) or clears by a marker filters the removed
    artifacts in each read path, and a path that forgets serves them on: each read is asked here.
    """
    what = f"{step_id[:40]!r}{'...' if len(step_id) > 40 else ''} after {after}"
    assert store.exists(step_id) is False, f"exists({what}) is True"
    reads: dict[str, Callable[[], object]] = {
        "get": lambda: store.get(step_id),
        "info": lambda: store.info(step_id),
        "open": lambda: store.open(step_id).close(),
        "get_many": lambda: store.get_many([step_id]),
    }
    for name, read in reads.items():
        try:
            outcome = read()
        except ArtifactNotFoundError:
            continue
        pytest.fail(f"{name}({what}) gave {_shown_result(outcome)} instead of raising ArtifactNotFoundError")
    assert step_id not in {info.step_id for info in store.list()}, f"list() lists {what}"
    assert step_id not in {info.step_id for info in store.list_page()}, f"list_page() lists {what}"


#: Secrets shorter than this are not looked for: so short a value could be in any text by chance.
_SHORTEST_SECRET = 6


class _Secrets(frozenset[str]):
    """Secret values the kit looks for, shown masked: pytest prints a failing test's arguments."""

    def __repr__(self) -> str:
        return f"<{len(self)} secret values, masked>"

    __str__ = __repr__


def _secrets_of(values: Iterable[str], store: ArtifactStore | None = None) -> _Secrets:
    """``values`` (the ``secret_values`` fixture's) and the secrets ``store`` reports (``_secret_values()``),
    without the ones too short to look for."""
    __tracebackhide__ = True  # its arguments are secrets, which a report of a failure here would print
    found = []
    for value in (*values, *(store._secret_values() if store is not None else ())):
        if not isinstance(value, str):
            pytest.fail(f"a secret value must be a str, not {type(value).__name__} (secret_values, _secret_values())")
        if len(value) >= _SHORTEST_SECRET:
            found.append(value)
    return _Secrets(found)


def _assert_no_secret(what: str, text: str, secrets: Iterable[str]) -> None:
    """Fail if ``text`` holds one of ``secrets`` as it is or URL-quoted (the spellings ``redact`` masks).

    The failure shows the text masked, and must not be raised inside an ``except`` block whose exception
    holds the secret: pytest would print that exception as the failure's context.
    """
    __tracebackhide__ = True  # its arguments hold the secret: pytest prints a shown frame's arguments
    for secret in secrets:
        if redact(text, [secret], url_passwords=False) != text:
            masked = redact(text, secrets, url_passwords=False)
            pytest.fail(
                f"{what} shows a secret the store is configured with ({len(secret)} characters; masked here as "
                f"**********): {masked[:2000]}"
            )


def _assert_secrets_reported(store: ArtifactStore, declared: Iterable[str]) -> None:
    """Fail if one of ``declared`` (the ``secret_values`` fixture's) is not among ``store._secret_values()``.

    The store masks only what ``_secret_values()`` reports (in the causes ``ArtifactStore._raise`` chains, and
    wherever the backend redacts), so an error the kit did not provoke could show a secret it leaves out.
    """
    __tracebackhide__ = True  # its arguments hold the secrets
    reported = set(store._secret_values())
    missing = sorted(len(secret) for secret in _secrets_of(declared) if secret not in reported)
    if missing:
        pytest.fail(
            f"{type(store).__name__}._secret_values() does not report {len(missing)} of the secret_values "
            f"fixture's values ({', '.join(map(str, missing))} characters long; not shown here): the store masks "
            "only the secrets _secret_values() returns, in the errors it chains and the text it redacts, so an "
            "error the kit did not provoke may show these. Return every credential the store is configured "
            "with, as the fixture gives it, from _secret_values()"
        )


def _error_text(call: Callable[[], object]) -> str | None:
    """The text of everything reachable from the error ``call`` raises (``reachable_text``), ``None`` if none."""
    try:
        call()
    except Exception as exc:
        return reachable_text(exc)
    return None


class _LogRecorder(logging.Handler):
    """Keeps every record it is handed as a reader of the log would see it: the message with its arguments,
    the record's exception (its traceback with causes, and everything linked from it, as an error reporter
    that reads ``exc_info`` walks it) and the stack it was logged with."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.texts: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = [record.getMessage()]
        except Exception:  # a handler would fail on it; a log reader would still see its pieces
            parts = [repr(record.msg), repr(record.args)]
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            try:
                parts += ["".join(traceback.format_exception(error)), reachable_text(error)]
            except Exception as exc:  # raised out of emit, logging would print the record to stderr
                parts.append(f"<its exception could not be shown: {type(exc).__name__}>")
        parts += [text for text in (record.exc_text, record.stack_info) if text]
        self.texts.append((f"a {record.levelname} record of logger {record.name!r}", "\n".join(parts)))


class _AsBefore(logging.Filter):
    """Lets a handler that was there before :func:`_every_log_record` see only the records it would have seen
    without it: the levels raised to DEBUG for the kit's check must not flood pytest's captured log (printed
    whole with a failure, secrets and all) or an application's handlers."""

    def __init__(self, levels: dict[logging.Logger, int], disabled: int) -> None:
        super().__init__()
        self._levels = levels
        self._disabled = disabled

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= self._disabled:
            return False
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            level = self._levels.get(logger, logger.level)
            if level:
                return record.levelno >= level
            logger = logger.parent
        return True


@contextlib.contextmanager
def _every_log_record() -> Iterator[list[tuple[str, str]]]:
    """Record what every logger logs, at every level (``DEBUG`` included), while in the block: for each record,
    what it is and its text (:class:`_LogRecorder`), in the list this yields.

    As a pipeline that calls ``logging.basicConfig(level=logging.DEBUG)`` logs, and more: the root and every
    logger with a level of its own (``uvicorn``'s, a test's ``werkzeug`` at ``WARNING``) log at ``DEBUG``,
    loggers that do not propagate hand their records over too, and ``logging.disable`` is lifted. The handlers
    already there see only what they saw before (:class:`_AsBefore`), and all is put back after the block.
    Loggers a library creates inside the block with a level of its own or without propagation are not reached.
    A library that logs only to a logger with handlers (uvicorn's access log, turned off by emptying a
    non-propagating logger) logs to this one too: stricter than the library's own setting, never laxer.
    """
    recorder = _LogRecorder()
    root = logging.getLogger()
    # Copied in one step: a thread of an in-process server may create a logger meanwhile.
    existing = list(logging.Logger.manager.loggerDict.values())
    loggers = [root, *(item for item in existing if isinstance(item, logging.Logger))]
    levels = {logger: logger.level for logger in loggers if logger is root or logger.level > logging.DEBUG}
    hooked = [logger for logger in loggers if logger is root or not logger.propagate]
    handlers = {handler for logger in loggers for handler in logger.handlers}
    disabled = logging.root.manager.disable
    as_before = _AsBefore(levels, disabled)
    for handler in handlers:
        handler.addFilter(as_before)
    logging.disable(logging.NOTSET)
    for logger in levels:
        logger.setLevel(logging.DEBUG)
    for logger in hooked:
        logger.addHandler(recorder)
    try:
        yield recorder.texts
    finally:
        for logger in hooked:
            logger.removeHandler(recorder)
        for logger, level in levels.items():
            logger.setLevel(level)
        logging.disable(disabled)
        for handler in handlers:
            handler.removeFilter(as_before)


def _assert_no_secret_logged(records: list[tuple[str, str]], during: str, secrets: Iterable[str]) -> None:
    """Fail if one of ``records`` (:func:`_every_log_record`'s) holds one of ``secrets``, as
    :func:`_assert_no_secret` finds them."""
    __tracebackhide__ = True  # its arguments hold the secret
    for what, text in records:
        _assert_no_secret(f"{what}, logged {during},", text, secrets)


def _check_failing_store(
    make: MakeStore,
    declared: Iterable[str],
    *,
    where: str,
    raises: type[ArtifactStoreError],
    refusals: tuple[type[ArtifactStoreError], ...],
    advice: str,
) -> None:
    """Build a store with ``make`` (on ``where``, a backend that fails every operation) and check that every
    operation raises ``raises`` (building the store may raise one of ``refusals`` instead), and that no error,
    repr or log record (:func:`_every_log_record`) shows one of ``declared`` or the store's ``_secret_values()``.

    The secrets are checked before anything that could print an error fails the test.
    """
    secrets = _secrets_of(declared)
    refusal: Exception | None = None
    with _every_log_record() as logged:
        try:
            store = make(f"kit-{uuid.uuid4().hex[:12]}")
        except Exception as exc:
            refusal = exc
    if refusal is not None:
        _assert_no_secret(f"the refusal to build a store on {where}", reachable_text(refusal), secrets)
        _assert_no_secret_logged(logged, f"while a store was built on {where}", secrets)
        if isinstance(refusal, refusals):
            return
        raise pytest.fail.Exception(f"building a store on {where} raised {refusal!r}; {advice}") from refusal
    outcomes: dict[str, object] = {}
    with _every_log_record() as more:
        try:
            secrets = _secrets_of(secrets, store)
            shown = {"repr()": repr(store), "str()": str(store)}
            for name, call in _every_operation(store).items():
                try:
                    outcomes[name] = call()
                except ArtifactStoreError as exc:
                    outcomes[name] = exc
        finally:
            with contextlib.suppress(ArtifactStoreError):
                store.close()
    for what, text in shown.items():
        _assert_no_secret(f"{what} of a store on {where}", text, secrets)
    for name, outcome in outcomes.items():
        if isinstance(outcome, ArtifactStoreError):
            _assert_no_secret(f"the error of {name} on {where}", reachable_text(outcome), secrets)
    _assert_no_secret_logged(logged + more, f"while every operation failed on {where}", secrets)
    article = "an" if raises.__name__[0] in "AEIOU" else "a"
    for name, outcome in outcomes.items():
        assert isinstance(outcome, raises), (
            f"{name} on {where} gave {outcome!r} instead of raising {article} {raises.__name__}"
        )


def _every_operation(store: ArtifactStore) -> dict[str, Callable[[], object]]:
    """One call of each operation of ``store`` that asks its backend, by name."""
    return {
        "exists": lambda: store.exists("x"),
        "get": lambda: store.get("x"),
        "get_many": lambda: store.get_many(["x", "y"]),
        "info": lambda: store.info("x"),
        "list": lambda: list(store.list()),
        "delete": lambda: store.delete("x"),
        "save": lambda: store.save("x", Message(content=1)),
        "clear": store.clear,
    }


def _sample_messages() -> dict[str, Message]:
    schema = SchemaInfo(name="tests.Report", version="2", json_schema={"type": "object"})
    return {
        "json": Message(content={"a": [1, 2.5, None, True], "b": {"c": "d"}}, schema=schema, metadata={"k": [1]}),
        "scalar": Message(content=3),
        "null": Message(content=None),
        "str": Message(content="héllo wörld 🚀", media_type="text/markdown"),
        "empty-str": Message(content=""),
        "bytes": Message(content=bytes(range(256)) * 4, metadata={"binary": True}),
        "empty-bytes": Message(content=b""),
        "non-utf8": Message(content=b"\xff\xfe\x00\x80invalid utf-8"),
    }


class ZeroStream(io.RawIOBase):
    """A binary stream of zero bytes, without end (or ``size`` of them), counting what is read.

    For tests of size bounds (``save_stream`` must stop reading past a store's bound): ``read_bytes`` says
    how far a store read. Reading past ``cutoff`` bytes (default 64 MiB) raises ``OSError``, so a store that
    does not stop fails its test with an error instead of exhausting memory.
    """

    def __init__(self, size: int | None = None, *, cutoff: int = 64 * 1024 * 1024) -> None:
        self.read_bytes = 0
        self._size = size
        self._cutoff = cutoff

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.read_bytes >= self._cutoff:
            raise OSError(f"the endless stream was read past {self._cutoff} bytes: the size bound was not applied")
        with memoryview(buffer) as view:
            count = view.nbytes if self._size is None else min(view.nbytes, self._size - self.read_bytes)
            view.cast("B")[:count] = bytes(count)
        self.read_bytes += count
        return count


class StoreConformance:
    """The contract, as tests. Subclass it and provide the ``make_store`` fixture.

    ``make_store(namespace)`` must return a new, open store of the backend under test bound to
    ``namespace``; stores it returns for the same namespace must see the same artifacts.
    """

    #: Size of the "large" artifact round trips; backends with a smaller limit may lower it.
    large_size: int = 4 * 1024 * 1024
    #: How many artifacts the listing and batch test saves: more than one page of common listing APIs.
    many_count: int = 1_100
    #: Largest size bound (``ArtifactStore._max_artifact_bytes``) the kit saves and streams past in full. A
    #: larger bound (redis's default 512 MiB) has its type and ceiling checked, and the cut-off of a stream
    #: checked under a bound lowered to 1 MiB; give the kit a store configured with a smaller bound for the rest.
    size_bound_limit: int = 64 * 1024 * 1024
    #: Hypothesis settings of the state machine that compares the store with a dict
    #: (``test_matches_a_dict_model``): raise ``max_examples`` for a deeper run, or set ``derandomize=True``
    #: for the same sequence of calls on every run.
    state_machine_settings: settings = settings(
        max_examples=20, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
    )

    # -- fixtures -------------------------------------------------------------------------------------

    @pytest.fixture
    def make_store(self) -> MakeStore:
        """Override: return a callable building a store of the backend under test for a namespace."""
        raise NotImplementedError("subclasses of StoreConformance must provide a make_store fixture")

    @pytest.fixture
    def make_unreachable_store(self) -> MakeStore | None:
        """Optional override: a callable building a store of the backend under test for a namespace, whose
        backend fails every operation (a server on a closed port, a database file replaced by garbage).

        The kit then checks that every operation raises a :class:`~artifactstore_core.errors.BackendError`
        and none reports the failure as an answer (``exists`` returning ``False``, ``get`` raising
        not-found, an empty listing). ``None`` (the default): not checked, and the test says so.

        A backend that connects when a store is built may refuse there instead: the callable then raises
        :class:`~artifactstore_core.errors.BackendUnavailableError` (or
        :class:`~artifactstore_core.errors.BackendTimeoutError`, when reaching the backend timed out), which
        the kit accepts; any other error from building the store fails the check.
        """
        return None

    @pytest.fixture
    def make_unauthorized_store(self) -> MakeStore | None:
        """Optional override: a callable building a store of the backend under test for a namespace, whose
        backend is reachable but refuses the store's credentials (a wrong password, token or key).

        The kit then checks that every operation raises
        :class:`~artifactstore_core.errors.AccessDeniedError`, and that none of those errors, the store's
        ``repr()`` and ``str()``, nor any log record (as ``test_errors_and_reprs_show_no_secret`` checks them)
        shows a secret. Make the wrong credential one that contains a value of ``secret_values`` (the right
        password with a suffix, say): the kit then finds it however it is spelled, whether or not the store
        reports it. ``None`` (the default): not checked, and the test says so.

        A backend that authenticates when a store is built may refuse there instead, with
        :class:`~artifactstore_core.errors.AccessDeniedError`.
        """
        return None

    @pytest.fixture
    def secret_values(self) -> Iterable[str]:
        """Optional override: the secret values (passwords, tokens, keys) that the stores of ``make_store``
        and ``make_unreachable_store`` are configured with.

        The kit saves, reads, lists, deletes and clears artifacts, provokes errors (missing artifacts,
        write-once conflicts, an invalid id, a closed store, every operation of a ``make_unreachable_store``
        and of a ``make_unauthorized_store`` store) and fails if one of these values, as it is or URL-quoted, is
        in the text of an error or of anything linked from it
        (:func:`~artifactstore_core.testing_errors.reachable_text`), in ``repr()`` or ``str()`` of a store, or
        in a log record of any logger at any level, ``DEBUG`` included, its message with its arguments, its
        exception and its stack (client libraries' loggers too, and those of servers that run in the test's
        process). The values each store's ``_secret_values()`` returns are looked for too, so a backend that
        reports its secrets there is checked without this fixture; give it all the same, so that the check
        does not depend on what the backend reports: the kit also fails if a value given here is not among
        ``_secret_values()`` of a ``make_store`` store, which is what the store masks in the errors the kit
        did not provoke. With no secret from either, the check is skipped as ``capability not declared:``.
        Values shorter than 6 characters are not looked for. Default: none.
        """
        return ()

    @pytest.fixture
    def configured_secrets(self, secret_values: Iterable[str]) -> Iterable[str]:
        """``secret_values``, as the kit's checks take them: shown masked where pytest prints a failing test's
        arguments. Not to be overridden."""
        return _secrets_of(secret_values)

    @pytest.fixture
    def new_store(self, make_store: MakeStore) -> Iterator[Callable[..., ArtifactStore]]:
        """Build stores on fresh (or given) namespaces; clear and close them all after the test."""
        made: list[ArtifactStore] = []

        def build(namespace: str | None = None) -> ArtifactStore:
            wanted = namespace or f"kit-{uuid.uuid4().hex[:12]}"
            # The fixture's mistakes, said as such: otherwise a store returned in place of a callable fails
            # every test with "object is not callable", and one that ignores the namespace fails the tests of
            # isolation and emptiness as if the backend leaked artifacts between namespaces.
            if not callable(make_store):
                pytest.fail(
                    f"make_store returned {type(make_store).__name__}, not a callable: return one that builds a "
                    "new store for the namespace it is given, such as `lambda namespace: "
                    "create_store(namespace=namespace)`"
                )
            store = make_store(wanted)
            if not isinstance(store, ArtifactStore):
                pytest.fail(f"make_store({wanted!r}) returned {type(store).__name__}, not an ArtifactStore")
            if store.namespace != wanted:
                # Closed, not cleared: the namespace is not the kit's, and may hold someone's artifacts.
                store.close()
                pytest.fail(
                    f"make_store({wanted!r}) built a store of namespace {store.namespace!r}: bind the store to "
                    "the namespace it is given (`create_store(namespace=namespace)`, "
                    "`MyStore(..., namespace=namespace)`)"
                )
            made.append(store)
            return store

        yield build
        for store in reversed(made):
            if not store.closed:
                store.clear()
                store.close()

    @pytest.fixture
    def store(self, new_store: Callable[..., ArtifactStore]) -> ArtifactStore:
        """An empty store on a fresh namespace."""
        return new_store()

    # -- round trips ----------------------------------------------------------------------------------

    @pytest.mark.parametrize("kind", sorted(_sample_messages()))
    def test_round_trip(self, store: ArtifactStore, kind: str) -> None:
        message = _sample_messages()[kind]
        store.save(kind, message)
        got = store.get(kind)
        assert got == message
        assert type(got.content) is type(message.content)
        assert got.schema == message.schema
        assert got.metadata == message.metadata
        assert got.media_type == message.media_type
        assert got.created_at == message.created_at

    def test_large_bytes_round_trip(self, store: ArtifactStore) -> None:
        payload = bytes(itertools.islice(itertools.cycle(range(251)), self.large_size))
        store.save("large", Message(content=payload))
        assert store.get("large").content == payload

    def test_large_json_round_trip(self, store: ArtifactStore) -> None:
        content = {"rows": [{"i": i, "text": f"row {i} " * 5} for i in range(20_000)]}
        store.save("large-json", Message(content=content))
        assert store.get("large-json").content == Message(content=content).content

    def test_highly_repetitive_json_round_trip(self, store: ArtifactStore) -> None:
        # One character repeated compresses past the ratio readers accept (MAX_COMPRESSION_RATIO), so the
        # codec stores it uncompressed: it must still come back whole, within the backend's size limit.
        content = {"text": "a" * self.large_size}
        store.save("repetitive", Message(content=content))
        assert store.get("repetitive").content == content

    def test_result_is_deeply_immutable(self, store: ArtifactStore) -> None:
        store.save("m", Message(content={"list": [1, {"x": 2}]}, metadata={"m": {"n": [1]}}))
        got = store.get("m")
        assert isinstance(got.content, FrozenDict)
        with pytest.raises(TypeError):
            got.content["new"] = 1  # type: ignore[index]
        with pytest.raises(AttributeError):
            got.content["list"].append(3)
        with pytest.raises(TypeError):
            got.content["list"][1]["x"] = 3
        with pytest.raises(TypeError):
            got.metadata["m"]["n"] = 2
        with pytest.raises(ValidationError):
            got.content = "replaced"

    def test_typed_model_round_trip(self, store: ArtifactStore) -> None:
        report = _Report(title="t", score=0.5, tags=["a", "b"])
        store.save("report", Message.from_model(report, version="1"))
        got = store.get("report")
        assert got.to_model(_Report) == report
        with pytest.raises(SchemaMismatchError):
            got.to_model(_Other)

    # -- presence -------------------------------------------------------------------------------------

    def test_missing_is_not_found_and_not_exists(self, store: ArtifactStore) -> None:
        assert store.exists("nope") is False
        with pytest.raises(ArtifactNotFoundError) as info:
            store.get("nope")
        assert info.value.step_id == "nope"
        assert "nope" in str(info.value)
        assert isinstance(info.value, LookupError)

    def test_exists_after_save(self, store: ArtifactStore) -> None:
        store.save("here", Message(content="x"))
        assert store.exists("here") is True

    # -- write-once -----------------------------------------------------------------------------------

    def test_identical_resave_succeeds(self, store: ArtifactStore) -> None:
        message = Message(content={"v": 1}, metadata={"m": 1})
        store.save("s", message)
        store.save("s", message)
        # A re-created identical message (new created_at) is also a safe retry; the first one stays.
        store.save("s", Message(content={"v": 1}, metadata={"m": 1}))
        assert store.get("s").created_at == message.created_at

    @pytest.mark.parametrize(
        "other",
        [
            Message(content={"v": 2}, metadata={"m": 1}),
            Message(content={"v": 1}, metadata={"m": 2}),
            Message(content={"v": 1}, metadata={"m": 1}, media_type="application/x-other"),
            Message(content={"v": 1}, metadata={"m": 1}, schema=SchemaInfo(name="s")),
            Message(content={"v": 1.0}, metadata={"m": 1}),
        ],
    )
    def test_different_resave_raises_exists(self, store: ArtifactStore, other: Message) -> None:
        original = Message(content={"v": 1}, metadata={"m": 1})
        store.save("s", original)
        with pytest.raises(ArtifactExistsError) as info:
            store.save("s", other)
        assert info.value.step_id == "s"
        assert store.get("s") == original

    @pytest.mark.parametrize("field", ["metadata", "schema"])
    def test_resave_differing_only_by_json_number_type_raises_exists(self, store: ArtifactStore, field: str) -> None:
        # 1 == 1.0 == True in Python, but they are three different JSON values as stored: a write-once
        # check that compares with Python's == would keep one artifact for a save of another.
        def message(value: object) -> Message:
            if field == "metadata":
                return Message(content=b"x", metadata={"n": value})
            return Message(content=b"x", schema=SchemaInfo(name="S", json_schema={"const": value}))

        def stored(got: Message) -> object:
            if field == "metadata":
                return got.metadata["n"]
            assert got.schema is not None
            return got.schema.json_schema["const"]

        for index, (first, second) in enumerate(itertools.permutations((1, True, 1.0), 2)):
            step_id = f"s{index}"
            store.save(step_id, message(first))
            store.save(step_id, message(first))  # identical: a safe retry
            with pytest.raises(ArtifactExistsError):
                store.save(step_id, message(second))
            with pytest.raises(ArtifactExistsError):
                store.save_many({step_id: message(second)})
            kept = stored(store.get(step_id))
            assert type(kept) is type(first), (first, second, kept)

    def test_overwrite_replaces(self, store: ArtifactStore) -> None:
        store.save("s", Message(content=b"one"))
        store.save("s", Message(content="two"), overwrite=True)
        assert store.get("s").content == "two"
        store.save("fresh", Message(content=1), overwrite=True)
        assert store.get("fresh").content == 1

    def test_concurrent_creates_have_one_winner(self, new_store: Callable[..., ArtifactStore]) -> None:
        first = new_store()
        stores = [first] + [new_store(first.namespace) for _ in range(3)]
        barrier = threading.Barrier(8)
        outcomes: list[str] = []
        lock = threading.Lock()

        def contend(index: int) -> None:
            barrier.wait()
            try:
                stores[index % 4].save("race", Message(content=f"writer {index}"))
            except ArtifactExistsError:
                result = "lost"
            else:
                result = f"writer {index}"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes if o != "lost"]
        assert len(winners) == 1, outcomes
        assert first.get("race").content == winners[0]

    # -- delete, list, clear --------------------------------------------------------------------------

    def test_delete(self, store: ArtifactStore) -> None:
        store.save("d", Message(content=1))
        store.save("keep", Message(content=2))
        assert store.delete("d") is True
        _assert_gone(store, "d", after="delete")
        assert store.delete("d") is False
        assert store.get("keep").content == 2
        assert [info.step_id for info in store.list_page()] == ["keep"]
        store.save("d", Message(content=3))
        assert store.get("d").content == 3

    def test_list(self, store: ArtifactStore) -> None:
        assert list(store.list()) == []
        schema = SchemaInfo(name="pkg.Model")
        saved = {
            "j": Message(content={"a": 1}, schema=schema),
            "s": Message(content="text"),
            "b": Message(content=b"\x00" * 100),
        }
        store.save_many(saved)
        infos = {info.step_id: info for info in store.list()}
        assert set(infos) == set(saved)
        assert infos["b"].size == 100
        assert infos["s"].size == 4
        assert infos["j"].schema_name == "pkg.Model"
        assert infos["s"].schema_name is None
        assert infos["b"].media_type == "application/octet-stream"
        for step_id, info in infos.items():
            assert info.created_at == saved[step_id].created_at
            assert info.digest.startswith("blake3:")
        assert infos["b"].digest != infos["s"].digest

    def test_a_listing_under_way_stops_once_the_store_is_closed(self, new_store: Callable[..., ArtifactStore]) -> None:
        # list() is a generator, read after close() as easily as before it: a backend that must ask its server
        # for the next batch fails there (its client is closed), while one that holds the batch already (a
        # small namespace, memory, a directory being read) went on. Code tested on one then broke on another.
        reader = new_store()
        closing = new_store(reader.namespace)  # closed here: the fixture clears the namespace through reader
        closing.save_many({f"c{index}": Message(content=index) for index in range(3)})
        listing = closing.list()
        first = next(listing)
        assert first.step_id in {"c0", "c1", "c2"}
        closing.close()
        with pytest.raises(StoreClosedError):
            next(listing)
        assert sorted(info.step_id for info in reader.list()) == ["c0", "c1", "c2"]

    def test_infos_describe_the_content_not_what_is_stored(self, store: ArtifactStore) -> None:
        # An info's size and digest are the content's (uncompressed; JSON and text as UTF-8), whatever the
        # backend stores: JSON and text past the codec's compress_threshold (64 KiB by default) are stored
        # zstd-compressed, so a backend that reports its stored payload's size (an object's length, a file's)
        # is right for every small artifact and wrong for these.
        rows = [{"row": index, "text": "compressible " * 4} for index in range(2_000)]
        lines = " ".join(f"line {index} of compressible text" for index in range(4_000))
        saved = {
            **{f"small-{kind}": message for kind, message in _sample_messages().items()},
            "large-json": Message(content={"rows": rows}, schema=SchemaInfo(name="tests.Rows")),
            "large-text": Message(content=lines, media_type="text/plain"),
        }
        store.save_many(saved)
        expected = {step_id: content_info(step_id, message) for step_id, message in saved.items()}
        assert {info.step_id: info for info in store.list()} == expected
        assert store.list_page(limit=len(saved)) == [expected[step_id] for step_id in sorted(expected)]
        for step_id, info in expected.items():
            assert store.info(step_id) == info, f"info({step_id!r})"

    def test_list_and_batches_beyond_a_page(self, store: ArtifactStore) -> None:
        # Listings come in pages (S3 returns 1,000 keys a request, SCAN a batch, SQL a LIMIT) and batch reads
        # in chunks (a SQL statement takes a limited number of variables): every artifact must come back,
        # not only the first page.
        count = self.many_count
        items = {f"p{index:05d}": Message(content=index) for index in range(count)}
        store.save_many(items)
        assert sorted(info.step_id for info in store.list()) == sorted(items)
        got = store.get_many(list(items))
        assert len(got) == count
        assert all(got[step_id].content == message.content for step_id, message in items.items())
        walked: list[str] = []
        after = None
        while page := store.list_page(after=after, limit=400):
            walked += [info.step_id for info in page]
            after = page[-1].step_id
        assert walked == sorted(items)
        assert store.clear() == count
        assert list(store.list()) == []

    def test_list_page_is_in_step_id_order_after_any_id(self, store: ArtifactStore) -> None:
        # Pages are slices of sorted(step_id) (code point order, the order of the ids' UTF-8 bytes), whatever
        # order the backend's names keep: encode_name's "%41" for "A" sorts before "-", a long id's compact
        # S3 key after every readable one, UTF-16 puts "\U0001f680" before "\uffff".
        store.save_many({step_id: Message(content=index) for index, step_id in enumerate(ORDER_TRAP_IDS)})
        infos = {info.step_id: info for info in store.list()}
        ordered = sorted(ORDER_TRAP_IDS)
        assert store.list_page(limit=len(ordered) + 1) == [infos[step_id] for step_id in ordered]
        for start in (*ORDER_TRAP_IDS, *_ABSENT_AFTER):
            following = [infos[step_id] for step_id in ordered if step_id > start]
            assert store.list_page(after=start, limit=3) == following[:3], f"after={start!r}"
        walked: list[str] = []
        after: str | None = None
        while True:
            page = store.list_page(after=after, limit=2)
            assert len(page) <= 2
            walked += [info.step_id for info in page]
            if len(page) < 2:
                break
            after = page[-1].step_id
        assert walked == ordered

    def test_list_page_refuses_bad_limits(self, new_store: Callable[..., ArtifactStore], monkeypatch: Any) -> None:
        store = new_store()
        store.save("a", Message(content=1))
        assert [info.step_id for info in store.list_page(limit=1)] == ["a"]
        assert store.list_page(after="a") == []

        def no_io(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("backend was called with an invalid limit")

        monkeypatch.setattr(store, "_list_page", no_io)
        bad_limits: tuple[Any, ...] = (0, -1, True, 1.5, "3", None)
        for bad in bad_limits:
            with pytest.raises(ValueError, match="limit"):
                store.list_page(limit=bad)
        monkeypatch.undo()
        closed = new_store(store.namespace)
        closed.close()
        with pytest.raises(StoreClosedError):
            closed.list_page()

    def test_clear_leaves_other_namespaces(self, new_store: Callable[..., ArtifactStore]) -> None:
        mine, theirs = new_store(), new_store()
        similar = new_store(mine.namespace + "0")
        for store in (mine, theirs, similar):
            store.save_many({f"id{i}": Message(content=i) for i in range(5)})
        mine.save("only-mine", Message(content="m"))
        assert mine.clear() == 6
        for step_id in ("id0", "only-mine"):
            _assert_gone(mine, step_id, after="clear")
        assert list(mine.list()) == []
        assert mine.list_page() == []
        for store in (theirs, similar):
            assert sorted(info.step_id for info in store.list()) == [f"id{i}" for i in range(5)]
            assert store.get("id3").content == 3
        assert mine.clear() == 0

    def test_namespaces_are_isolated(self, new_store: Callable[..., ArtifactStore]) -> None:
        one, two = new_store(), new_store()
        one.save("same", Message(content="one"))
        assert not two.exists("same")
        two.save("same", Message(content="two"))
        assert one.get("same").content == "one"
        assert two.get("same").content == "two"

    def test_stores_of_one_namespace_see_each_others_changes(self, new_store: Callable[..., ArtifactStore]) -> None:
        # Many workers share a namespace through their own store objects: a store that answers from what it
        # read or wrote earlier (a read cache, a remembered absence) hands out stale artifacts after another
        # store overwrote, deleted or cleared them.
        reader = new_store()
        writer = new_store(reader.namespace)
        assert reader.exists("s") is False
        writer.save("s", Message(content="one"))
        assert reader.exists("s") is True
        assert reader.get("s").content == "one"
        assert reader.get_many(["s"])["s"].content == "one"
        writer.save("s", Message(content="two"), overwrite=True)
        assert reader.get("s").content == "two"
        assert reader.get_many(["s"])["s"].content == "two"
        with reader.open("s") as handle:
            assert handle.read() == b"two"
        assert reader.info("s").digest == writer.info("s").digest
        with pytest.raises(ArtifactExistsError):
            reader.save("s", Message(content="one"))
        assert writer.delete("s") is True
        _assert_gone(reader, "s", after="another store's delete")
        writer.save("s", Message(content="three"))
        assert reader.get("s").content == "three"
        assert writer.clear() == 1
        assert list(reader.list()) == []
        _assert_gone(reader, "s", after="another store's clear")

    @pytest.mark.parametrize(
        ("name", "sibling"),
        [
            ("run1", "run10"),  # a prefix
            ("Ns", "ns"),  # case (SQL LIKE, case-insensitive file systems, lower-cased keys)
            ("n_s", "nXs"),  # SQL LIKE's one-character wildcard
            ("n%s", "nXYs"),  # SQL LIKE's any-characters wildcard
            ("ns[1]", "ns1"),  # a glob character class (Redis SCAN MATCH, fnmatch)
            ("n?s", "nXs"),  # a glob's one-character wildcard
            ("n*s", "nXYs"),  # a glob's any-characters wildcard
            ("n.s", "nXs"),  # a regular expression's any character
        ],
    )
    def test_clear_and_list_keep_to_their_namespace_whatever_its_name(
        self, new_store: Callable[..., ArtifactStore], name: str, sibling: str
    ) -> None:
        # clear() must work from an exact namespace, never a pattern built from it: each pair of names here
        # matches under one common pattern syntax, and neither store may list or clear the other's artifacts.
        unique = uuid.uuid4().hex[:8]
        one, two = new_store(f"{unique}-{name}"), new_store(f"{unique}-{sibling}")
        for first, second in ((one, two), (two, one)):
            first.save("x", Message(content=first.namespace))
            second.save_many({"x": Message(content=second.namespace), "y": Message(content=2)})
            assert [info.step_id for info in first.list()] == ["x"], (first.namespace, second.namespace)
            assert first.clear() == 1, (first.namespace, second.namespace)
            assert sorted(info.step_id for info in second.list()) == ["x", "y"], (first.namespace, second.namespace)
            assert second.get("x").content == second.namespace
            assert second.clear() == 2

    def test_awkward_namespaces(self, new_store: Callable[..., ArtifactStore]) -> None:
        stores = [new_store(f"{prefix}-{uuid.uuid4().hex[:6]}") for prefix in ("ns[1]", "ns 1", "ns/1", "NS:1")]
        for index, store in enumerate(stores):
            store.save("x", Message(content=index))
        for index, store in enumerate(stores):
            assert store.get("x").content == index
            assert [info.step_id for info in store.list()] == ["x"]

    def test_info(self, store: ArtifactStore) -> None:
        message = Message(content=b"12345", metadata={"a": 1})
        store.save("i", message)
        store.save("other", Message(content="x"))
        info = store.info("i")
        assert (info.step_id, info.size, info.created_at) == ("i", 5, message.created_at)
        assert info == next(i for i in store.list() if i.step_id == "i")
        with pytest.raises(ArtifactNotFoundError):
            store.info("missing")

    def test_namespaces(self, new_store: Callable[..., ArtifactStore]) -> None:
        store = new_store()
        if not store.capabilities.list_namespaces:
            with pytest.raises(UnsupportedOperationError):
                store.namespaces()
            _not_declared(store, "list_namespaces")
        assert type(store)._namespaces is not ArtifactStore._namespaces, (
            f"backend {store.backend_name!r} declares list_namespaces but does not implement _namespaces()"
        )
        other, emptied = new_store(), new_store()
        store.save("a", Message(content=1))
        other.save("b", Message(content=2))
        emptied.save_many({"c": Message(content=3), "d": Message(content=4)})
        names = store.namespaces()
        assert {store.namespace, other.namespace, emptied.namespace} <= set(names)
        other.clear()
        assert other.namespace not in store.namespaces()
        # A namespace whose last artifact was deleted holds none either, as after clear(): a registry of
        # namespaces pruned only by clear() lists every namespace ever used, and gc visits them all for ever.
        emptied.delete("c")
        assert emptied.namespace in store.namespaces()
        emptied.delete("d")
        assert emptied.namespace not in store.namespaces(), "a namespace whose artifacts were all deleted is listed"

    # -- ids ------------------------------------------------------------------------------------------

    def test_awkward_ids_round_trip_and_stay_distinct(self, store: ArtifactStore) -> None:
        for index, step_id in enumerate(AWKWARD_IDS):
            store.save(step_id, Message(content=index))
        for index, step_id in enumerate(AWKWARD_IDS):
            assert store.get(step_id).content == index, step_id
            assert store.exists(step_id)
        assert sorted(info.step_id for info in store.list()) == sorted(AWKWARD_IDS)
        assert store.delete("..") is True
        assert store.get(".").content == AWKWARD_IDS.index(".")

    def test_long_ids_that_differ_only_at_the_end_stay_distinct(self, store: ArtifactStore) -> None:
        # A backend that keys artifacts by a cut id (a file name's 255 bytes, a key column's width, a hash of
        # the first bytes) passes every test of distinct ids that differ early: here each pair differs only in
        # its last character. The second of each pair is first absent, then saved with content of its own.
        def shown(step_id: str) -> str:
            return f"the {len(step_id.encode())}-byte id ending {step_id[-3:]!r}"

        firsts = {first: Message(content=f"first {index}".encode()) for index, (first, _) in enumerate(LONG_ID_PAIRS)}
        seconds = {second: Message(content=f"second {index}") for index, (_, second) in enumerate(LONG_ID_PAIRS)}
        for step_id, message in firsts.items():
            store.save(step_id, message)
        for second in seconds:
            assert store.exists(second) is False, f"{shown(second)} exists, never saved; only its twin was"
            for name, read in (("get", store.get), ("info", store.info)):
                try:
                    outcome = read(second)
                except ArtifactNotFoundError:
                    continue
                pytest.fail(f"{name}({shown(second)}), never saved, gave {_shown_result(outcome)}; only its twin was")
        store.save_many(seconds)
        both = {**firsts, **seconds}
        for step_id, message in both.items():
            assert store.get(step_id).content == message.content, shown(step_id)
            assert store.info(step_id).step_id == step_id, shown(step_id)
        assert store.get_many(list(both)) == both
        assert [info.step_id for info in store.list_page(limit=len(both) + 1)] == sorted(both)
        for first, second in LONG_ID_PAIRS:
            assert store.delete(first) is True, shown(first)
            assert store.exists(first) is False, shown(first)
            assert store.get(second).content == seconds[second].content, f"{shown(second)} after its twin's delete"

    @pytest.mark.parametrize("bad", INVALID_IDS, ids=repr)
    def test_invalid_ids_rejected_before_io(self, store: ArtifactStore, bad: Any, monkeypatch: Any) -> None:
        def no_io(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("backend was called with an invalid id")

        names = (
            "_save",
            "_get",
            "_exists",
            "_delete",
            "_save_many",
            "_get_many",
            "_save_stream",
            "_open",
            "_list_page",
        )
        for name in names:
            monkeypatch.setattr(store, name, no_io)
        message = Message(content=1)
        calls: list[Callable[[], Any]] = [
            lambda: store.save(bad, message),
            lambda: store.get(bad),
            lambda: store.exists(bad),
            lambda: store.delete(bad),
            lambda: store.save_many([("fine", message), (bad, message)]),
            lambda: store.get_many(["fine", bad]),
            lambda: store.save_stream(bad, io.BytesIO(b"x")),
            lambda: store.open(bad),
        ]
        if bad is not None:  # after=None is the start of a listing
            calls.append(lambda: store.list_page(after=bad))
        for call in calls:
            with pytest.raises(InvalidStepIdError):
                call()

    def test_invalid_namespace_rejected(self, make_store: MakeStore) -> None:
        for bad in ("", "a\nb", "x" * 1000):
            with pytest.raises(InvalidStepIdError):
                make_store(bad)

    # -- batches --------------------------------------------------------------------------------------

    def test_save_many_get_many(self, store: ArtifactStore) -> None:
        items = {f"step-{i}": Message(content={"i": i}) for i in range(200)}
        items["bytes"] = Message(content=b"\x00\xff")
        store.save_many(items)
        got = store.get_many(list(items))
        assert got == items
        store.save_many(list(items.items()))  # identical re-save of a batch is a no-op
        assert store.get_many([]) == {}

    def test_get_many_names_missing(self, store: ArtifactStore) -> None:
        store.save("a", Message(content=1))
        with pytest.raises(ArtifactNotFoundError) as info:
            store.get_many(["a", "missing-1", "missing-2"])
        assert "missing-1" in str(info.value)
        assert "missing-2" in str(info.value)
        assert info.value.missing_ids == ("missing-1", "missing-2")
        # Beyond the ten the message shows, the error still lists every missing id, in the order requested.
        many = [f"m-{index:02d}" for index in range(25, 0, -1)]
        with pytest.raises(ArtifactNotFoundError) as info:
            store.get_many(["a", *many])
        assert info.value.missing_ids == tuple(many)
        assert info.value.step_id == many[0]

    def test_get_many_decodes_within_the_callers_context(self, store: ArtifactStore) -> None:
        # A limit the caller sets on decoding (the artifact server sets limiting_json_content around a read)
        # holds in get_many as it does in get, also where the backend decodes in worker threads of its own:
        # a pool's threads run in a context of their own, so each task must run in a copy of the caller's
        # (artifactstore_core.store.ContextThreadPoolExecutor; see docs/writing-a-backend.md).
        items = {f"ctx-{index}": Message(content=[{"i": i} for i in range(100)]) for index in range(4)}
        store.save_many(items)
        with limiting_json_content(64, setting="CONFORMANCE_JSON_LIMIT"):
            refused: PayloadTooLargeError | None = None
            try:
                store.get("ctx-0")
            except PayloadTooLargeError as exc:
                refused = exc
            if refused is None:
                # A backend that keeps messages (memory) parses nothing, in get as in get_many.
                assert store.get_many(list(items)) == items
            else:
                assert "CONFORMANCE_JSON_LIMIT" in str(refused), str(refused)
                with pytest.raises(PayloadTooLargeError, match="CONFORMANCE_JSON_LIMIT"):
                    store.get_many(list(items))

    def test_save_many_encodes_within_the_callers_context(
        self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # What the caller set for its codec holds in save_many as in save, also where the backend encodes in
        # worker threads of its own (see test_get_many_decodes_within_the_callers_context). Here it is
        # reusing_verified_digests, which the artifact server sets around a save: payloads the caller has just
        # verified are not hashed again. A backend that encodes nothing (memory) hashes nothing either.
        codec = Codec()
        encoded = {f"ctx-{index}": codec.encode(Message(content=bytes([index]) * (4096 + index))) for index in range(4)}
        hashed: list[int] = []
        verified: set[int] = set()
        real = envelope_module._digest

        def counting(data: bytes | memoryview) -> str:
            # Only the caller's own payloads count: a server behind the store (http) verifies what it
            # receives, in bytes of its own.
            if id(data.obj if isinstance(data, memoryview) else data) in verified:
                hashed.append(len(data))
            return real(data)

        monkeypatch.setattr(envelope_module, "_digest", counting)
        with reusing_verified_digests():
            messages = {step_id: codec.decode(blob.head, blob.payload) for step_id, blob in encoded.items()}
            verified = {id(message.content) for message in messages.values()}
            store.save_many(messages)
            assert hashed == [], "save_many hashed payloads the caller had verified: it encoded outside its context"
        assert store.get_many(list(messages)) == messages

    def test_save_many_rejects_duplicates_and_conflicts(self, store: ArtifactStore) -> None:
        with pytest.raises(InvalidStepIdError):
            store.save_many([("a", Message(content=1)), ("a", Message(content=2))])
        assert not store.exists("a")
        store.save("a", Message(content=1))
        with pytest.raises(ArtifactExistsError):
            store.save_many([("a", Message(content=2))])
        store.save_many([("a", Message(content=2))], overwrite=True)
        assert store.get("a").content == 2

    # -- streaming ------------------------------------------------------------------------------------

    def test_stream_round_trip(self, store: ArtifactStore) -> None:
        payload = bytes(itertools.islice(itertools.cycle(range(253)), 3 * 1024 * 1024 + 17))
        schema = SchemaInfo(name="tests.Blob", version="1")
        before = datetime.now(UTC)
        store.save_stream(
            "stream", io.BytesIO(payload), media_type="application/x-test", schema=schema, metadata={"k": 1}
        )
        after = datetime.now(UTC)
        got = store.get("stream")
        assert got.content == payload
        assert got.media_type == "application/x-test"
        assert got.schema == schema
        assert got.metadata == {"k": 1}
        assert before <= got.created_at <= after
        with store.open("stream") as handle:
            chunks = []
            while chunk := handle.read(256 * 1024):
                chunks.append(chunk)
        assert b"".join(chunks) == payload
        store.save_stream(
            "stream", io.BytesIO(payload), media_type="application/x-test", schema=schema, metadata={"k": 1}
        )
        with pytest.raises(ArtifactExistsError):
            store.save_stream("stream", io.BytesIO(b"different"))
        with pytest.raises(ArtifactNotFoundError):
            store.open("missing")

    def test_small_stream_keeps_its_fields(self, store: ArtifactStore) -> None:
        # Small streams may take a backend's non-streaming path; they keep every field all the same.
        schema = SchemaInfo(name="tests.Small", version="3")
        for step_id, payload in (("empty", b""), ("small", b"\x00small\xff")):
            before = datetime.now(UTC)
            store.save_stream(step_id, io.BytesIO(payload), schema=schema, metadata={"n": [1, None]})
            after = datetime.now(UTC)
            got = store.get(step_id)
            assert got.content == payload
            assert got.media_type == "application/octet-stream"
            assert got.schema == schema
            assert got.metadata == {"n": (1, None)}
            assert before <= got.created_at <= after
            with store.open(step_id) as handle:
                assert handle.read() == payload

    def test_stream_of_bytearrays_is_stored_as_bytes(self, store: ArtifactStore) -> None:
        class Chunks(io.RawIOBase):
            """Returns mutable bytearrays from read(), which IO[bytes] allows a custom stream to do."""

            def __init__(self, data: bytes) -> None:
                self._data = io.BytesIO(data)

            def readable(self) -> bool:
                return True

            def read(self, size: int | None = -1) -> bytearray:
                return bytearray(self._data.read(size))

        payload = b"mutable chunks " * 100
        store.save_stream("chunks", cast(IO[bytes], Chunks(payload)))
        got = store.get("chunks")
        assert type(got.content) is bytes
        assert got.content == payload

    def test_save_stream_of_short_reads_keeps_every_byte(self, store: ArtifactStore) -> None:
        # A pipe, a socket or an unbuffered file returns fewer bytes than asked: every read must be kept, in
        # order, across a backend's switch from a small save to a streamed one (the http client lost all but the
        # first of the chunks it had read before it started spooling).
        class ShortReads(io.RawIOBase):
            def __init__(self, data: bytes, most: int) -> None:
                self._data = io.BytesIO(data)
                self._most = most

            def readable(self) -> bool:
                return True

            def read(self, size: int | None = -1) -> bytes:
                wanted = self._most if size is None or size < 0 else min(size, self._most)
                return self._data.read(wanted)

        payload = bytes(itertools.islice(itertools.cycle(range(241)), 3 * 1024 * 1024 + 11))
        for step_id, most in (("short-64k", 64 * 1024), ("short-odd", 65_537)):
            store.save_stream(step_id, cast(IO[bytes], ShortReads(payload, most)))
            assert store.info(step_id).size == len(payload)
            assert store.get(step_id).content == payload

    def test_save_stream_refuses_a_non_blocking_stream(self, store: ArtifactStore) -> None:
        # read() returning None means "nothing ready yet" on a non-blocking stream. Taking it for the end
        # would store the artifact cut short; every backend refuses such a stream instead, streaming or not.
        class NonBlocking(io.RawIOBase):
            def __init__(self, *steps: bytes | None) -> None:
                self._steps = list(steps)

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int | None:
                if not self._steps:
                    return 0
                step = self._steps[0]
                if step is None:
                    self._steps.pop(0)
                    return None
                count = min(len(buffer), len(step))
                buffer[:count] = step[:count]
                self._steps[0] = step[count:]
                if not self._steps[0]:
                    self._steps.pop(0)
                return count

        for steps in ((None, b"late bytes"), (b"early bytes", None, b"late bytes")):
            with pytest.raises(SerializationError, match="blocking stream"):
                store.save_stream("non-blocking", cast(IO[bytes], NonBlocking(*steps)))
            assert not store.exists("non-blocking")

    def test_save_stream_refuses_a_text_stream(self, store: ArtifactStore) -> None:
        # A file opened without 'b' is the common mistake. It used to fail inside the backend with a bare
        # TypeError, reported as the backend failing ("save_stream failed in backend ...: TypeError").
        text = io.StringIO("some text")
        with pytest.raises(TypeError, match="binary stream"):
            store.save_stream("text", cast(IO[bytes], text))
        assert text.tell() == 0  # refused before anything was read
        assert not store.exists("text")

        class StrChunks(io.RawIOBase):
            """A custom stream whose read() returns str (not an io.TextIOBase, so seen only when read)."""

            def __init__(self) -> None:
                self._chunks = ["some text"]

            def readable(self) -> bool:
                return True

            def read(self, size: int | None = -1) -> Any:
                return self._chunks.pop() if self._chunks else ""

        with pytest.raises(SerializationError, match="binary stream") as info:
            store.save_stream("text", cast(IO[bytes], StrChunks()))
        assert info.value.step_id == "text"
        assert not store.exists("text")

    def test_save_stream_does_not_blame_the_backend_for_a_failing_stream(self, store: ArtifactStore) -> None:
        # The caller's source failing (a disk error, a dropped download) is not the backend failing: the error
        # must not claim the backend is unavailable or invite a retry (the stream is spent), it must chain the
        # stream's own exception, and nothing may be stored.
        class Failing(io.RawIOBase):
            def __init__(self, error: Exception) -> None:
                self._error = error
                self._sent = False

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                if self._sent:
                    raise self._error
                self._sent = True
                buffer[:5] = b"first"
                return 5

        errors = (OSError(5, "Input/output error"), ConnectionResetError(104, "reset"), ValueError("bad chunk"))
        for error in errors:
            with pytest.raises(ArtifactStoreError) as info:
                store.save_stream("failing-source", cast(IO[bytes], Failing(error)))
            raised = info.value
            # Every backend reports it alike: the caller's data could not be read (SerializationError).
            assert isinstance(raised, SerializationError), f"{type(raised).__name__}: {raised}"
            assert not raised.retryable, f"{type(raised).__name__}: {raised}"
            assert not isinstance(raised, (BackendUnavailableError, BackendTimeoutError)), raised
            causes = []
            cause: BaseException | None = raised
            while cause is not None:
                causes.append(cause)
                cause = cause.__cause__
            assert error in causes, f"the stream's error is not chained: {raised!r}"
            assert not store.exists("failing-source")

    def test_open_text_and_json(self, store: ArtifactStore) -> None:
        store.save("t", Message(content="héllo"))
        with store.open("t") as handle:
            assert handle.read() == "héllo".encode()
        # Large enough to be stored compressed: open() still yields the plain UTF-8 JSON.
        content = {"rows": [f"row {i}" for i in range(30_000)]}
        store.save("j", Message(content=content))
        with store.open("j") as handle:
            assert json.loads(handle.read()) == content

    def test_open_with_header_describes_what_the_stream_yields(self, store: ArtifactStore) -> None:
        # Every backend, streaming or not: bytes large enough to be streamed, text, and JSON large enough to
        # be stored compressed (the header still gives the size and digest of the bytes the stream yields).
        large = bytes(itertools.islice(itertools.cycle(range(251)), 3 * 1024 * 1024 + 5))
        schema = SchemaInfo(name="tests.Header", version="2")
        rows = {"rows": [f"row {i}" for i in range(30_000)]}
        cases = {
            "bytes": Message(content=large, media_type="application/x-test", schema=schema, metadata={"k": [1]}),
            "text": Message(content="héllo"),
            "json": Message(content=rows),
        }
        for step_id, message in cases.items():
            store.save(step_id, message)
            saved = store.get(step_id)
            info = store.info(step_id)
            header, stream = store.open_with_header(step_id)
            with stream:
                data = stream.read()
            if step_id == "json":
                assert json.loads(data) == rows
            else:
                assert data == (large if step_id == "bytes" else "héllo".encode())
            assert header.codec == {"bytes": "bytes", "text": "utf-8", "json": "json"}[step_id]
            assert (header.size, f"{header.digest_alg}:{header.digest}") == (info.size, info.digest)
            assert header.size == len(data)
            assert header.media_type == saved.media_type
            assert header.schema == saved.schema
            assert header.metadata == saved.metadata
            assert header.created_at == saved.created_at
        with pytest.raises(ArtifactNotFoundError):
            store.open_with_header("missing")

    def test_save_stream_keeps_a_given_created_at(self, store: ArtifactStore) -> None:
        then = datetime(2020, 2, 29, 12, 30, tzinfo=UTC)
        for step_id, payload in (("small", b"x"), ("large", b"\x01" * (3 * 1024 * 1024))):
            store.save_stream(step_id, io.BytesIO(payload), created_at=then)
            assert store.get(step_id).created_at == then
            assert store.info(step_id).created_at == then
        stream = io.BytesIO(b"never read")
        with pytest.raises(SerializationError, match="timezone"):
            store.save_stream("naive", stream, created_at=datetime(2020, 1, 1))
        assert stream.tell() == 0
        assert not store.exists("naive")

    def test_open_returns_a_read_only_stream(self, store: ArtifactStore) -> None:
        # Payloads of every kind and size, so both of a backend's paths are held to it: the payload kept in
        # memory (small, text, compressed JSON) and the streamed one (large bytes).
        large = bytes(itertools.islice(itertools.cycle(range(251)), 3 * 1024 * 1024 + 5))
        rows = {"rows": [f"row {i}" for i in range(30_000)]}  # large enough to be stored compressed
        payloads: dict[str, tuple[Message, bytes]] = {
            "empty": (Message(content=b""), b""),
            "small": (Message(content=b"\x00small\xff"), b"\x00small\xff"),
            "large": (Message(content=large), large),
            "text": (Message(content="héllo"), "héllo".encode()),
            "json": (Message(content=rows), b""),
        }
        for step_id, (message, expected) in payloads.items():
            store.save(step_id, message)
            with store.open(step_id) as handle:
                assert handle.readable(), step_id
                assert not handle.writable(), step_id
                changes: list[Callable[[], object]] = [
                    lambda: handle.write(b"x"),
                    lambda: handle.writelines([b"x"]),
                    lambda: handle.truncate(0),
                ]
                for change in changes:
                    with pytest.raises(io.UnsupportedOperation):
                        change()
                first = handle.read(1)
                if handle.seekable():
                    # Seekable or not is the stream's to say; one that says so must seek.
                    assert handle.seek(0) == 0
                    first = b""
                got = first + handle.read()
            assert handle.closed
            with pytest.raises(ValueError, match="closed"):
                handle.read()
            if step_id == "json":
                assert json.loads(got) == rows
            else:
                assert got == expected, step_id
            # The refused writes changed nothing, in the store or in what a second reader gets.
            assert store.get(step_id).content == message.content
            with store.open(step_id) as again:
                assert again.read() == got

    def test_save_stream_refuses_invalid_fields_before_reading(self, store: ArtifactStore) -> None:
        # Whether the backend streams or not, bad fields are the same SerializationError, and nothing is read.
        stream = io.BytesIO(b"never read")
        for fields in ({"metadata": {"k": {1, 2}}}, {"media_type": "text/\ud800"}, {"metadata": {"k": math.nan}}):
            with pytest.raises(SerializationError):
                store.save_stream("s", stream, **fields)
        assert stream.tell() == 0
        assert not store.exists("s")

    # -- size bound -----------------------------------------------------------------------------------

    def _size_bound(self, store: ArtifactStore) -> int:
        """The store's size bound, checked for its type and against the backend's declared ceiling; skips
        (a declared-capability skip) when the store knows none."""
        bound = store._max_artifact_bytes()
        assert bound is None or (type(bound) is int and bound >= 1), f"not a size bound: {bound!r}"
        ceiling = store.capabilities.max_artifact_bytes
        if ceiling is not None:
            assert bound is not None, "capabilities.max_artifact_bytes is declared, but the store reports no bound"
            assert bound <= ceiling, f"bound {bound} above the declared max_artifact_bytes {ceiling}"
        if bound is None:
            _not_declared(store, "a size bound (capabilities.max_artifact_bytes or _max_artifact_bytes())")
        return bound

    def _check_too_large(self, store: ArtifactStore, error: ArtifactStoreError, step_id: str) -> None:
        assert isinstance(error, CapacityError), f"{type(error).__name__}: {error}"
        assert (error.step_id, error.namespace, error.backend) == (step_id, store.namespace, store.backend_name)
        assert repr(step_id) in str(error), str(error)
        assert not store.exists(step_id)

    def test_save_refuses_content_over_the_size_bound(self, store: ArtifactStore) -> None:
        # The bound is a promise that save_stream relies on to stop reading: a save beyond it must never be
        # accepted, or save_stream would refuse a stream that save keeps.
        bound = self._size_bound(store)
        if bound > self.size_bound_limit:
            return  # too large to send here; its type and ceiling were checked
        with pytest.raises(ArtifactStoreError) as info:
            store.save("over-bound", Message(content=bytes(bound + 1)))
        self._check_too_large(store, info.value, "over-bound")

    def test_save_stream_stops_reading_past_the_size_bound(
        self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A stream the backend can never accept (endless, or 10 GB for a 1 MB store) is refused as soon as it
        # is longer than the bound, with the backend's own error, read no further, and nothing is stored.
        bound = self._size_bound(store)
        streaming = store.capabilities.streaming
        if bound > self.size_bound_limit:
            if streaming:
                return  # a streaming backend bounds its own reads; too large to read here
            # The same path of the core and the backend's own error, without reading hundreds of megabytes.
            bound = 1024 * 1024
            monkeypatch.setattr(store, "_max_artifact_bytes", lambda: bound)
        stream = ZeroStream(cutoff=bound + 64 * 1024 * 1024)
        with pytest.raises(ArtifactStoreError) as info:
            store.save_stream("endless", cast(IO[bytes], stream))
        self._check_too_large(store, info.value, "endless")
        assert stream.read_bytes > bound
        if not streaming:
            # One byte past the bound proves the stream too large; the core reads no more than that.
            assert stream.read_bytes == bound + 1
        store.save_stream("after", io.BytesIO(b"still usable"))
        assert store.get("after").content == b"still usable"

    def test_streaming_capability_is_implemented(self, store: ArtifactStore) -> None:
        if not store.capabilities.streaming:
            _not_declared(store, "streaming")
        assert type(store)._save_stream is not ArtifactStore._save_stream
        assert type(store)._open is not ArtifactStore._open

    # -- ttl ------------------------------------------------------------------------------------------

    def test_ttl(self, store: ArtifactStore) -> None:
        if not store.capabilities.native_ttl:
            with pytest.raises(UnsupportedOperationError):
                store.save("t", Message(content=1), ttl=60)
            _not_declared(store, "native_ttl")
        short = timedelta(milliseconds=300)
        # Saved first, so that its first expiry has passed once the others' have: an overwrite without a
        # ttl stores an artifact that never expires, and must not keep the replaced one's expiry (which
        # would silently delete what the caller saved for good).
        store.save("renewed", Message(content="expiring"), ttl=short)
        store.save("renewed", Message(content="kept"), overwrite=True)
        store.save("short", Message(content=1), ttl=short)
        # Every way of saving takes the ttl: a batch or stream path that drops it keeps artifacts for ever.
        store.save_many({"short-many-a": Message(content=4), "short-many-b": Message(content=5)}, ttl=short)
        store.save_stream("short-stream", io.BytesIO(b"streamed"), ttl=short)
        store.save("long", Message(content=2), ttl=3600)
        store.save("forever", Message(content=3))
        expiring = ("short", "short-many-a", "short-many-b", "short-stream")
        deadline = time.monotonic() + 10
        while any(store.exists(step_id) for step_id in expiring):
            left = [step_id for step_id in expiring if store.exists(step_id)]
            assert time.monotonic() < deadline, f"artifacts saved with a 300 ms TTL still exist after 10 s: {left}"
            time.sleep(0.05)  # polling for expiry, not synchronisation
        # An expired artifact is gone from every read, not only from the ones checked above (a batch read or
        # a page that skips the expiry check serves it on).
        for step_id in expiring:
            with pytest.raises(ArtifactNotFoundError):
                store.get(step_id)
            with pytest.raises(ArtifactNotFoundError):
                store.info(step_id)
            with pytest.raises(ArtifactNotFoundError):
                store.open(step_id).close()
        try:
            found = store.get_many(["forever", *expiring])
        except ArtifactNotFoundError as exc:
            missing = exc.missing_ids
        else:
            pytest.fail(f"get_many returned expired artifacts: {sorted(set(found) - {'forever'})}")
        assert missing == expiring, f"get_many returned expired artifacts: {sorted(set(expiring) - set(missing))}"
        assert store.exists("renewed"), "an overwrite without a ttl kept the replaced artifact's expiry"
        assert store.get("renewed").content == "kept"
        kept = ["forever", "long", "renewed"]
        assert sorted(info.step_id for info in store.list()) == kept
        listed = [info.step_id for info in store.list_page()]
        assert listed == kept, f"list_page listed {listed}, not {kept}: expired artifacts"

    # -- concurrency ----------------------------------------------------------------------------------

    def test_threads_save_and_read_concurrently(self, store: ArtifactStore) -> None:
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for i in range(50):
                    step_id = f"w{worker}-{i}"
                    store.save(step_id, Message(content={"w": worker, "i": i}))
                    assert store.get(step_id).content == {"w": worker, "i": i}
                    if i % 10 == 0:
                        assert store.exists(f"w{worker}-0")
            except BaseException as exc:  # collected and re-raised by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(list(store.list())) == 8 * 50
        for worker in range(8):
            assert store.get(f"w{worker}-49").content == {"w": worker, "i": 49}

    # -- failures are typed ---------------------------------------------------------------------------

    def test_failures_are_typed(self, store: ArtifactStore) -> None:
        with pytest.raises(TypeError):
            store.save("x", {"not": "a message"})  # type: ignore[arg-type]
        with pytest.raises(ArtifactNotFoundError):
            store.get("x")
        store.close()
        store.close()  # idempotent
        with pytest.raises(StoreClosedError):
            store.get("x")
        with pytest.raises(StoreClosedError):
            store.save("x", Message(content=1))

    def test_errors_name_what_they_concern(self, store: ArtifactStore) -> None:
        store.save("named", Message(content=1))
        with pytest.raises(ArtifactExistsError) as info:
            store.save("named", Message(content=2))
        error = info.value
        assert error.backend == store.backend_name
        assert error.namespace == store.namespace
        assert isinstance(error, ArtifactStoreError)
        assert error.retryable is False

    def test_reads_verify_the_stored_digest(self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
        # A byte-storing backend must verify what it reads (codec.decode, decode_bytes, decode_payload or a
        # PayloadVerifier), never rebuild a message from stored bytes it did not check. The store's own codec
        # is made to damage one payload byte after computing its digest, as a bad disk or a tampering writer
        # would; every read of that artifact must then raise ArtifactCorruptedError.
        codec = store.codec
        encode = codec.encode
        damaged: list[str] = []

        payload = b"a payload whose last byte is flipped once encoded"

        def damaging_encode(message: Message, *, place: tuple[str, str] | None = None) -> Encoded:
            encoded = encode(message, place=place)
            # Recognised by its content, not by place: a backend that passes no place must be checked too.
            if message.content != payload:
                return encoded
            damaged.append("damaged")
            flipped = encoded.payload[:-1] + bytes([encoded.payload[-1] ^ 0x01])
            return dataclasses.replace(encoded, payload=flipped)

        monkeypatch.setattr(codec, "encode", damaging_encode)
        try:
            store.save("damaged", Message(content=payload))
        except ArtifactCorruptedError:
            # Verified on the way in (a server that checks what it is sent): refused, and nothing stored.
            assert not store.exists("damaged")
            return
        if not damaged:
            # The backend keeps Message objects, not envelopes (as memory does): no stored bytes to damage.
            assert store.get("damaged").content.endswith(b"encoded")
            return
        with pytest.raises(ArtifactCorruptedError) as info:
            store.get("damaged")
        assert info.value.step_id == "damaged"
        with pytest.raises(ArtifactCorruptedError):
            store.get_many(["damaged"])
        with pytest.raises(ArtifactCorruptedError):
            _read_all(store, "damaged")

    def test_every_codec_call_names_the_artifacts_place(
        self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # With a signing key (ARTIFACT_STORE_SIGNING_KEY) the codec binds each signature to the artifact's
        # place, (namespace, step id), so that an artifact copied to another id or namespace is refused. It
        # can only do so when the backend passes place= to every call that writes or verifies a head; one that
        # passes none works without a key (as every other test here runs) and with one, and never refuses a
        # copy. Each such call on the store's codec is recorded here with the place it was given.
        codec = store.codec
        calls: list[tuple[str, object]] = []
        for name in ("encode", "encode_stream_head", "decode", "decode_bytes", "decode_head", "header_of"):
            real = getattr(codec, name)

            def recording(*args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
                calls.append((_name, kwargs.get("place")))
                return _real(*args, **kwargs)

            monkeypatch.setattr(codec, name, recording)
        ids = ("placed", "placed/many", "placed-stream")
        store.save(ids[0], Message(content={"k": [1, 2]}))
        store.save(ids[0], Message(content={"k": [1, 2]}))  # an identical retry compares with the stored one
        store.save_many({ids[1]: Message(content=b"\x00many")})
        store.save_stream(ids[2], io.BytesIO(b"streamed " * 1000))
        store.get(ids[0])
        store.get_many(list(ids))
        store.info(ids[1])
        list(store.list())
        _read_all(store, ids[2])
        wrong = sorted(
            {f"{name}(place={place!r})" for name, place in calls if place not in {(store.namespace, i) for i in ids}}
        )
        assert not wrong, (
            f"codec calls without the artifact's place=(store.namespace, step_id): {', '.join(wrong)}; with a "
            "signing key, signatures would not be bound to the artifact, and a copy under another id or "
            "namespace would be accepted (see docs/writing-a-backend.md)"
        )

    def test_registered_as_it_names_itself(self, store: ArtifactStore) -> None:
        # Errors name store.backend_name; the pipeline runtime and `artifactstore backends` read the
        # capabilities registered in the BackendSpec, the kit and the store read the class's: they must agree.
        assert store.backend_name != ArtifactStore.backend_name, (
            f"{type(store).__name__} does not set backend_name: its errors would name backend 'unknown'"
        )
        try:
            spec = plugin_host().load(store.backend_name)
        except BackendNotFoundError:
            return  # a store class tested on its own, not installed as a plugin: no registration to compare
        assert spec.capabilities == store.capabilities, (
            f"backend {store.backend_name!r} registered {spec.capabilities} but its store declares {store.capabilities}"
        )

    def test_failures_are_raised_never_reported_as_absent(
        self, make_unreachable_store: MakeStore | None, configured_secrets: Iterable[str]
    ) -> None:
        # "Absent" and "could not ask" must never be confused: a pipeline that takes a failed exists() for
        # False re-runs a step or skips one, and a listing that hides an error makes clear() report 0. These
        # errors are also where a client quotes the URL, request or credentials it was given, and where it
        # logs its retries and the exceptions it met: none may show a secret (see
        # test_errors_and_reprs_show_no_secret), checked before the kit prints an error.
        if make_unreachable_store is None:
            pytest.skip(
                f"{CAPABILITY_SKIP} no make_unreachable_store fixture, so failures of an unreachable backend "
                "are not checked"
            )
        _check_failing_store(
            make_unreachable_store,
            configured_secrets,
            where="an unreachable backend",
            raises=BackendError,
            # Refused when built, as a backend that connects in its constructor does: no store exists, so no
            # operation can answer for the backend, and the caller was told it is unreachable (retryable).
            refusals=(BackendUnavailableError, BackendTimeoutError),
            advice="a backend that connects when a store is built must raise BackendUnavailableError (or "
            "BackendTimeoutError) there, and one that connects later must build the store and raise a "
            "BackendError from its operations",
        )

    def test_refused_credentials_are_denied_and_show_no_secret(
        self, make_unauthorized_store: MakeStore | None, configured_secrets: Iterable[str]
    ) -> None:
        # A wrong password or token is where a client library quotes the credentials it sent (an AUTH error, a
        # signature mismatch that echoes the signed request, a 401 logged with its request): the caller must be
        # told to fix the credentials (AccessDeniedError, not retryable), and nothing may show them.
        if make_unauthorized_store is None:
            pytest.skip(
                f"{CAPABILITY_SKIP} no make_unauthorized_store fixture, so a backend that refuses the store's "
                "credentials is not checked"
            )
        _check_failing_store(
            make_unauthorized_store,
            configured_secrets,
            where="a backend that refuses the store's credentials",
            raises=AccessDeniedError,
            refusals=(AccessDeniedError,),
            advice="a backend that authenticates when a store is built must raise AccessDeniedError there, and "
            "one that authenticates later must build the store and raise AccessDeniedError from its operations",
        )

    def test_errors_and_reprs_show_no_secret(
        self, new_store: Callable[..., ArtifactStore], configured_secrets: Iterable[str]
    ) -> None:
        # "Never put a secret in the message": errors go to logs, tracebacks and error reporters (which read
        # every linked exception, suppressed contexts too), and a store's repr to debuggers and log lines.
        # Provoked here are the errors a store raises most (not found, exists, invalid id, closed); the errors
        # of an unreachable backend, where a client quotes what it was given, are checked by
        # test_failures_are_raised_never_reported_as_absent. Every log record of every logger, DEBUG included,
        # is checked too: a pipeline that turns on DEBUG logging gets its client library's wire trace.
        with _every_log_record() as logged:
            store = new_store()
            secrets = _secrets_of(configured_secrets, store)
            if not secrets:
                _not_declared(store, "secrets to keep out of errors (a secret_values fixture or _secret_values())")
            store.save("kit-saved", Message(content=b"saved"))
            store.save("kit-deleted", Message(content={"k": 1}))
            assert store.get("kit-saved").content == b"saved"
            assert store.exists("kit-deleted")
            assert sorted(info.step_id for info in store.list()) == ["kit-deleted", "kit-saved"]
            store.delete("kit-deleted")
            closed = new_store(store.namespace)
            closed.close()
            texts = {
                "repr(store)": repr(store),
                "str(store)": str(store),
                "repr() of a closed store": repr(closed),
                "the error of get of a missing id": _error_text(lambda: store.get("kit-missing")),
                "the error of info of a missing id": _error_text(lambda: store.info("kit-missing")),
                "the error of open of a missing id": _error_text(lambda: store.open("kit-missing")),
                "the error of get_many of a missing id": _error_text(
                    lambda: store.get_many(["kit-saved", "kit-missing"])
                ),
                "the error of save of another artifact": _error_text(
                    lambda: store.save("kit-saved", Message(content=b"new"))
                ),
                "the error of save_many of another artifact": _error_text(
                    lambda: store.save_many({"kit-saved": Message(content=b"new")})
                ),
                "the error of save_stream of another artifact": _error_text(
                    lambda: store.save_stream("kit-saved", io.BytesIO(b"new"))
                ),
                "the error of get of an invalid id": _error_text(lambda: store.get("kit\ninvalid")),
                "the error of get on a closed store": _error_text(lambda: closed.get("kit-saved")),
            }
            assert store.clear() == 1
        for what, text in texts.items():
            assert text is not None, f"{what}: nothing was raised"
            _assert_no_secret(what, text, secrets)
        _assert_no_secret_logged(logged, "while the kit saved, read, listed, deleted and cleared artifacts", secrets)
        _assert_secrets_reported(store, configured_secrets)

    def test_context_manager_closes(self, new_store: Callable[..., ArtifactStore]) -> None:
        store = new_store()
        with store as entered:
            assert entered is store
            store.save("x", Message(content=1))
            store.clear()
        assert store.closed

    # -- property-based -------------------------------------------------------------------------------

    def test_arbitrary_messages_round_trip(self, store: ArtifactStore) -> None:
        counter = itertools.count()

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(message=messages)
        def check(message: Message) -> None:
            step_id = f"h{next(counter)}"
            store.save(step_id, message)
            assert store.get(step_id) == message

        check()

    def test_matches_a_dict_model(self, store: ArtifactStore) -> None:
        machine = _model_machine(store)
        run_state_machine_as_test(machine, settings=self.state_machine_settings)


def _read_all(store: ArtifactStore, step_id: str) -> bytes:
    """Everything ``store.open(step_id)`` yields, read to its end in chunks, as a streaming reader does."""
    chunks = []
    with store.open(step_id) as handle:
        while chunk := handle.read(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def _model_machine(store: ArtifactStore) -> type[RuleBasedStateMachine]:
    ids = st.sampled_from(["a", "b", "A", "a/b", "..", "é", "x" * 40])
    small = st.builds(
        Message,
        content=st.one_of(st.integers(0, 3), st.sampled_from(["s", "t"]), st.sampled_from([b"\x00", b"\x01"])),
        created_at=st.just(datetime(2026, 1, 1, tzinfo=UTC)),
    )

    class StoreMatchesDict(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            store.clear()
            self.model: dict[str, Message] = {}

        @rule(step_id=ids, message=small, overwrite=st.booleans())
        def save(self, step_id: str, message: Message, overwrite: bool) -> None:
            current = self.model.get(step_id)
            if current is not None and not overwrite and not current.same_artifact(message):
                with pytest.raises(ArtifactExistsError):
                    store.save(step_id, message, overwrite=overwrite)
                return
            store.save(step_id, message, overwrite=overwrite)
            if current is None or overwrite:
                self.model[step_id] = message

        @rule(step_id=ids)
        def get(self, step_id: str) -> None:
            if step_id in self.model:
                assert store.get(step_id).same_artifact(self.model[step_id])
            else:
                with pytest.raises(ArtifactNotFoundError):
                    store.get(step_id)

        @rule(step_id=ids)
        def delete(self, step_id: str) -> None:
            assert store.delete(step_id) is (self.model.pop(step_id, None) is not None)
            # info and list_page are read paths of their own (a query, a head request), which a soft delete or
            # clear (a tombstone, a deleted flag) must filter as exists, get and list do. Checked here, where
            # an artifact goes, rather than in the invariant, which runs after every step.
            with pytest.raises(ArtifactNotFoundError):
                store.info(step_id)
            assert step_id not in [info.step_id for info in store.list_page()]

        @precondition(lambda self: bool(self.model))
        @rule(data=st.data())
        def delete_saved(self, data: st.DataObject) -> None:
            # An id drawn from all of them is mostly one never saved: the deletes of saved artifacts, where a
            # soft delete shows, were rare enough that a run of the machine could miss one.
            self.delete(data.draw(st.sampled_from(sorted(self.model))))

        @rule()
        def clear(self) -> None:
            assert store.clear() == len(self.model)
            self.model.clear()
            assert store.list_page() == []

        @invariant()
        def same_ids(self) -> None:
            assert sorted(info.step_id for info in store.list()) == sorted(self.model)
            for step_id in ("a", "b"):
                assert store.exists(step_id) is (step_id in self.model)

    return StoreMatchesDict
