"""The error hierarchy: families, flags, pickling."""

from __future__ import annotations

import inspect
import pickle
import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

import artifactstore_core
from artifactstore_core import errors
from artifactstore_core.testing_errors import reachable_text

ERROR_CLASSES = [
    obj
    for name, obj in vars(errors).items()
    if inspect.isclass(obj) and issubclass(obj, errors.ArtifactStoreError) and name in errors.__all__
]


def test_every_error_ends_in_error_and_is_exported() -> None:
    assert len(ERROR_CLASSES) >= 18
    for cls in ERROR_CLASSES:
        assert cls.__name__.endswith("Error")
        assert getattr(artifactstore_core, cls.__name__) is cls
        assert cls.__doc__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_with_their_fields(cls: type[errors.ArtifactStoreError]) -> None:
    error = cls("something failed", step_id="s", namespace="n", backend="b")
    # Test-only use of pickle: errors must survive process pools, which pickle them.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == "something failed"
    assert (copy.step_id, copy.namespace, copy.backend) == ("s", "n", "b")
    assert copy.retryable == cls.retryable


def test_families() -> None:
    assert issubclass(errors.BackendNotFoundError, errors.ConfigurationError)
    assert issubclass(errors.PluginLoadError, errors.ConfigurationError)
    assert issubclass(errors.ArtifactCorruptedError, errors.SerializationError)
    assert issubclass(errors.UnsupportedFormatError, errors.SerializationError)
    assert issubclass(errors.SchemaMismatchError, errors.SerializationError)
    assert issubclass(errors.PayloadTooLargeError, errors.CapacityError)
    assert issubclass(errors.BackendUnavailableError, errors.BackendError)
    assert issubclass(errors.BackendTimeoutError, errors.BackendError)
    assert issubclass(errors.BackendTimeoutError, TimeoutError)
    assert issubclass(errors.ArtifactNotFoundError, LookupError)
    assert issubclass(errors.InvalidStepIdError, ValueError)
    retryable = {cls.__name__ for cls in ERROR_CLASSES if cls.retryable}
    assert retryable == {"BackendUnavailableError", "BackendTimeoutError"}


# -- redact --------------------------------------------------------------------------------------------


def test_redact_masks_every_occurrence_with_the_documented_mask() -> None:
    assert errors.REDACTED == "**********"
    text = "auth hunter2 failed (hunter2)"
    assert errors.redact(text, ["hunter2"]) == "auth ********** failed (**********)"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            'Could not connect to "http://AKIA1:pw@127.0.0.1:9/b/k"',
            'Could not connect to "http://AKIA1:***@127.0.0.1:9/b/k"',
        ),
        ("{'Endpoint': 'https://u:p:w@h:1', 'x': 'a@b'}", "{'Endpoint': 'https://u:***@h:1', 'x': 'a@b'}"),
        ("redis://:pw@h/0 and rediss://user:pw@h:6380", "redis://:***@h/0 and rediss://user:***@h:6380"),
        ("http://u:p@w@h/x", "http://u:***@h/x"),  # an unescaped '@' in the password: masked to the last one
        ("http://u:%40pw@h", "http://u:***@h"),
        ("http://user@h/ and a@b:c", "http://user@h/ and a@b:c"),  # a user name alone is no password
    ],
)
def test_url_passwords_are_masked_and_the_rest_of_the_url_kept(text: str, shown: str) -> None:
    assert errors.mask_url_passwords(text) == shown
    assert errors.redact(text, []) == shown
    # Ids may look like such URLs: text that is an id is never rewritten.
    assert errors.redact(text, [], url_passwords=False) == text


def _chained(message: str) -> ValueError:
    try:
        try:
            raise OSError("connection refused")
        except OSError as low:
            raise ValueError(message) from low
    except ValueError as exc:
        return exc


def test_scrub_exception_keeps_an_exception_without_secrets() -> None:
    exc = _chained("could not connect to http://127.0.0.1:9")
    assert errors.scrub_exception(exc, ["hunter2"]) is exc


def test_scrub_exception_stands_in_for_what_holds_a_secret_and_keeps_the_rest() -> None:
    exc = _chained("could not connect to http://AKIA1:hunter2@127.0.0.1:9 (token tok-123)")
    shown = errors.scrub_exception(exc, ["tok-123"])
    assert isinstance(shown, errors.RedactedError)
    assert str(shown) == "ValueError: could not connect to http://AKIA1:***@127.0.0.1:9 (token **********)"
    assert shown.original_type == "ValueError"
    assert shown.__traceback__ is exc.__traceback__  # where it failed stays readable
    assert shown.__cause__ is exc.__cause__  # the clean cause below is kept, type and all
    text = "".join(traceback.format_exception(shown))
    assert "hunter2" not in text
    assert "tok-123" not in text
    assert "OSError: connection refused" in text
    assert exc.args == ("could not connect to http://AKIA1:hunter2@127.0.0.1:9 (token tok-123)",)  # untouched
    copy = pickle.loads(pickle.dumps(shown))
    assert (type(copy), str(copy), copy.original_type) == (errors.RedactedError, str(shown), "ValueError")


def test_scrub_exception_reaches_a_secret_deep_in_the_chain() -> None:
    url = "http://u:" + "hunter2" + "@h:1"  # not in a source line the traceback quotes
    try:
        try:
            raise ConnectionError(f"Could not connect to {url}")
        except ConnectionError:
            raise RuntimeError("wrapped")  # noqa: B904 (the implicit context is what is being tested)
    except RuntimeError as exc:
        shown = errors.scrub_exception(exc)
    text = "".join(traceback.format_exception(shown))
    assert "hunter2" not in text
    assert "RuntimeError: wrapped" in text
    assert "ConnectionError: Could not connect to http://u:***@h:1" in text


def test_redact_leaves_text_without_secrets_alone() -> None:
    assert errors.redact("nothing to hide", ["hunter2"]) == "nothing to hide"
    assert errors.redact("", ["hunter2"]) == ""
    assert errors.redact("nothing to hide", []) == "nothing to hide"


def test_redact_ignores_empty_secrets() -> None:
    # An empty secret occurs everywhere: masking it would turn every message into masks.
    assert errors.redact("plain text", ["", ""]) == "plain text"
    assert errors.redact("key pw!", ["", "pw!"]) == "key **********"


def test_a_secret_containing_another_is_masked_whole() -> None:
    # Replacing the shorter secret first would leave the longer one's tail ("xyz") readable.
    for secrets in (["hunter2", "hunter2xyz"], ["hunter2xyz", "hunter2"]):
        assert errors.redact("token hunter2xyz, hunter2", secrets) == "token **********, **********"


def test_overlapping_secrets_leave_no_piece_of_either() -> None:
    # Neither contains the other: one after the other, "abc" then "cde" would leave "de" of the second.
    assert errors.redact("xabcdey", ["abc", "cde"]) == "x**********y"
    assert errors.redact("aaaa", ["aa"]) == "**********"


@pytest.mark.parametrize("spelling", ["p%40ss%2Fw%3Ard", "p%40ss/w%3Ard", "p@ss/w:rd"])
def test_redact_masks_the_url_quoted_forms(spelling: str) -> None:
    assert errors.redact(f"redis://:{spelling}@host/0", ["p@ss/w:rd"]) == "redis://:**********@host/0"


def test_redact_masks_a_secret_that_cannot_be_url_quoted() -> None:
    # An environment value that was not valid UTF-8 holds lone surrogates; quoting it would raise.
    assert errors.redact("bad pw\udcff!", ["pw\udcff"]) == "bad **********!"


@given(
    text=st.text(alphabet="ab/@ %", max_size=40),
    secrets=st.lists(st.text(alphabet="ab/@", max_size=5), max_size=4),
)
def test_no_secret_survives_redact(text: str, secrets: list[str]) -> None:
    redacted = errors.redact(text, secrets)
    for secret in secrets:
        if secret:
            assert secret not in redacted
    if not any(secret and secret in text for secret in secrets) and "%" not in text:
        assert redacted == text


@pytest.mark.parametrize(
    ("in_flight", "detail", "expected"),
    [
        (False, "", "store for namespace 'run-1' of backend 's3' is closed; create a new one"),
        (
            True,
            "the upload was aborted",
            "store for namespace 'run-1' of backend 's3' was closed while this operation was in flight; "
            "the upload was aborted; create a new one",
        ),
    ],
)
def test_store_closed_error_of_store_has_one_wording_and_its_fields(
    in_flight: bool, detail: str, expected: str
) -> None:
    error = errors.StoreClosedError.of_store("run-1", "s3", in_flight=in_flight, detail=detail)
    assert str(error) == expected
    assert (error.namespace, error.backend, error.step_id) == ("run-1", "s3", None)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # Passwords that are not escaped as a URL asks (botocore quotes such an invalid endpoint as given).
        (
            "Custom endpoint `http://AKIA:pa/ss@127.0.0.1:9` was not",
            "Custom endpoint `http://AKIA:***@127.0.0.1:9` was not",
        ),
        ("endpoint http://AKIA:pa#ss@h:9/b", "endpoint http://AKIA:***@h:9/b"),
        ("endpoint http://AKIA:pa?ss@h:9/b", "endpoint http://AKIA:***@h:9/b"),
        ("at 12:30@home, http://h:9/x", "at 12:30@home, http://h:9/x"),  # no scheme, no URL
    ],
)
def test_url_passwords_with_unescaped_delimiters_are_masked(text: str, shown: str) -> None:
    assert errors.mask_url_passwords(text) == shown


@pytest.mark.timeout(30)
def test_masking_reads_a_long_run_of_scheme_characters_once() -> None:
    # The scheme could start at every letter of a dotted run, each start reading the run again: 64 KiB of
    # "a." took seconds, 256 KiB minutes (a problem detail of that size comes from any server).
    text = "x://" + "a." * (128 * 1024)
    assert errors.redact(text, []) == text


def test_scrub_exception_reaches_the_members_of_an_exception_group() -> None:
    inner = ValueError("the upload failed")
    inner.__cause__ = OSError("endpoint http://AKIA:sekret@h:9 refused")
    group = ExceptionGroup("several failed", [inner, KeyError("k")])
    shown = errors.scrub_exception(group)
    assert isinstance(shown, errors.RedactedError)
    assert shown.original_type == "ExceptionGroup"
    text = "".join(traceback.format_exception(shown))
    assert "sekret" not in text
    assert "several failed" in text
    assert "ValueError: the upload failed" in text


def test_scrub_exception_keeps_an_artifactstore_error_whose_ids_look_like_urls() -> None:
    step_id, namespace = "job://daily:12:30@2024", "team://a:b@c"
    try:
        try:
            raise errors.ArtifactNotFoundError(f"no artifact {step_id!r} in namespace {namespace!r}", step_id=step_id)
        except errors.ArtifactNotFoundError as low:
            raise errors.BackendError("read failed") from low
    except errors.BackendError as exc:
        top = exc
    assert errors.scrub_exception(top, ["hunter2"]) is top


def test_a_stand_in_carries_the_notes_of_what_it_stands_for_redacted() -> None:
    exc = OSError("cannot reach http://u:pw@h")
    exc.add_note("token hunter2 was sent")
    shown = errors.scrub_exception(exc, ["hunter2"])
    assert isinstance(shown, errors.RedactedError)
    assert shown.__notes__ == ["token ********** was sent"]


def test_an_error_raised_from_a_stand_in_keeps_no_way_back_to_the_original() -> None:
    # ``raise error from stand_in`` in the except block kept the original as the suppressed __context__:
    # no traceback printed it, but an error reporter walking __context__ found the password.
    def fail() -> None:
        try:
            raise OSError("cannot reach http://u:" + "hunter2" + "@h")
        except OSError as exc:
            errors.raise_chained(errors.BackendError("read failed"), errors.scrub_exception(exc))

    with pytest.raises(errors.BackendError) as info:
        fail()
    assert isinstance(info.value.__cause__, errors.RedactedError)
    assert info.value.__context__ is info.value.__cause__
    assert info.value.__suppress_context__
    assert "hunter2" not in reachable_text(info.value)
    assert "http://u:***@h" in str(info.value.__cause__)


def test_raise_chained_with_no_cause_keeps_no_context_either() -> None:
    def fail() -> None:
        try:
            raise ValueError("redis://:" + "hunter2" + "@h:x/0")
        except ValueError:
            errors.raise_chained(errors.ConfigurationError("not a valid URL"), None)

    with pytest.raises(errors.ConfigurationError) as info:
        fail()
    assert (info.value.__cause__, info.value.__context__) == (None, None)


def test_scrub_exception_stands_in_for_a_secret_in_a_suppressed_context() -> None:
    # A client library's "raise ... from None" hides its own exception from tracebacks, not from reporters.
    try:
        try:
            raise OSError("cannot reach http://u:" + "hunter2" + "@h")
        except OSError:
            raise ConnectionError("connection failed") from None
    except ConnectionError as exc:
        hidden = exc
    shown = errors.scrub_exception(hidden)
    assert isinstance(shown, errors.RedactedError)
    assert str(shown) == "ConnectionError: connection failed"
    assert "hunter2" not in reachable_text(shown)


def test_scrub_exception_reaches_a_suppressed_context_below_a_clean_cause() -> None:
    low = KeyError("clean")
    try:
        raise OSError("cannot reach http://u:" + "hunter2" + "@h")
    except OSError as exc:
        low.__context__ = exc  # kept by "raise low from None" in the except block
        low.__suppress_context__ = True
    top = RuntimeError("wrapped")
    top.__cause__ = low
    shown = errors.scrub_exception(top)
    assert "hunter2" not in reachable_text(shown)
    assert "KeyError: 'clean'" in "".join(traceback.format_exception(shown))  # still shown, by a stand-in


def test_scrub_exception_reaches_a_group_members_suppressed_context() -> None:
    member = ValueError("the upload failed")
    member.__context__ = OSError("endpoint http://AKIA:" + "sekret" + "@h:9 refused")
    member.__suppress_context__ = True
    group = ExceptionGroup("several failed", [member])
    shown = errors.scrub_exception(group)
    assert isinstance(shown, errors.RedactedError)
    assert "sekret" not in reachable_text(shown)


def test_a_store_keeps_no_way_back_to_a_client_exception_that_shows_a_secret() -> None:
    from artifactstore_memory import MemoryStore

    secret = "tok-" + "4d2f9a"

    class Leaky(MemoryStore):
        def _secret_values(self) -> list[str]:
            return [secret]

        def _get(self, step_id: str) -> artifactstore_core.Message:
            if step_id == "raw":
                raise OSError(f"server said: bad token {secret}")
            try:
                raise OSError(f"server said: bad token {secret}")
            except OSError as exc:
                raise errors.AccessDeniedError("refused") from exc

    store = Leaky(namespace="leaky")
    for step_id, error in (("raw", errors.BackendError), ("own", errors.AccessDeniedError)):
        with pytest.raises(error) as info:
            store.get(step_id)
        assert isinstance(info.value.__cause__, errors.RedactedError)
        assert secret not in reachable_text(info.value)
