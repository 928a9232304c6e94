"""The error hierarchy of artifactstore.

Every error the public API raises derives from :class:`ArtifactStoreError`. The families are grouped by
what the caller should do about them:

* fix the configuration or the input: :class:`ConfigurationError` (and :class:`BackendNotFoundError`,
  :class:`PluginLoadError`), :class:`InvalidStepIdError`, :class:`UnsupportedOperationError`;
* handle an expected outcome: :class:`ArtifactNotFoundError`, :class:`ArtifactExistsError`;
* the stored data cannot be used: :class:`SerializationError` (and :class:`ArtifactCorruptedError`,
  :class:`UnsupportedFormatError`, :class:`SchemaMismatchError`);
* make room or store less: :class:`CapacityError` (and :class:`PayloadTooLargeError`);
* the backend failed: :class:`BackendError`; retry :class:`BackendUnavailableError` and
  :class:`BackendTimeoutError`; fix credentials for :class:`AccessDeniedError`.

Each class has a ``retryable`` flag, every instance is picklable (so errors cross process pools intact),
and messages name the step id, namespace, backend or setting concerned, never a secret. Errors raised
while translating a client library's exception always chain the original as ``__cause__``.
:func:`redact` removes secrets from text a backend quotes in a message (a server's error, a client's
exception text), and :func:`scrub_exception` gives the exception to chain in place of a client library's
whose text holds a secret (a :class:`RedactedError` standing in for it); :func:`raise_chained` raises an error
with it as cause without keeping the original as the error's hidden ``__context__``.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote

__all__ = [
    "AccessDeniedError",
    "ArtifactCorruptedError",
    "ArtifactExistsError",
    "ArtifactNotFoundError",
    "ArtifactStoreError",
    "BackendError",
    "BackendNotFoundError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "CapacityError",
    "ConfigurationError",
    "InvalidStepIdError",
    "PayloadTooLargeError",
    "PluginLoadError",
    "REDACTED",
    "RedactedError",
    "SchemaMismatchError",
    "SerializationError",
    "StoreClosedError",
    "UnsupportedFormatError",
    "URL_PASSWORD_MASK",
    "UnsupportedOperationError",
    "mask_url_passwords",
    "raise_chained",
    "redact",
    "scrub_exception",
]

#: What :func:`redact` puts in place of a secret: pydantic's mask for a ``SecretStr``, which
#: ``artifactstore config`` prints too, so a masked value looks the same everywhere.
REDACTED = "**********"

#: What :func:`mask_url_passwords` puts in place of the password of a URL's user info
#: (``redis://:***@host``), as the redis backend has always shown its URL.
URL_PASSWORD_MASK = "***"  # noqa: S105 (a mask, not a password)

# scheme://user:password@ in any text. The password runs to the last '@' before what ends a quoted URL (white
# space, a quote, a bracket): a password may hold an unescaped ':', '@', '/', '#' or '?' (botocore quotes such
# an invalid endpoint URL as it was given), and masking a path that holds an '@' too only hides more. The
# scheme starts only where a run of scheme characters starts, and its quantifiers never backtrack, so that a
# long run of them ("a.a.a...") is read once, not once from each of its letters.
_URL_PASSWORD = re.compile(
    r"""(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*+://[^\s/?#@:'"`<>\\]*+):([^\s'"`<>\\]*)@"""
)


class ArtifactStoreError(Exception):
    """Root of every error raised by artifactstore.

    Attributes:
        retryable: ``True`` when repeating the same call later may succeed (a transient backend
            failure); ``False`` when the call will fail again until something changes.
        step_id: the step id concerned, when there is one.
        namespace: the namespace concerned, when there is one.
        backend: the backend name concerned, when there is one.
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        step_id: str | None = None,
        namespace: str | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(message)
        self.step_id = step_id
        self.namespace = namespace
        self.backend = backend

    @property
    def message(self) -> str:
        """The human-readable message, without the class name."""
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling replays only ``args``; keyword fields travel in the state dict so
        # errors survive process pools and the HTTP round trip unchanged.
        return (self.__class__, (self.message,), self.__dict__.copy())


class ConfigurationError(ArtifactStoreError, ValueError):
    """A setting is missing or invalid. The message names the environment variable to fix."""


class BackendNotFoundError(ConfigurationError):
    """No backend of the requested name is installed (or the allow-list excludes it).

    The message lists the installed backends, suggests a close name for a typo, and gives the exact
    ``pip install`` line for a known first-party backend that is not installed.
    """


class PluginLoadError(ConfigurationError):
    """A backend plugin was found but could not be loaded or registered.

    The message names the entry point, its distribution and version; the original error is chained.
    """


class UnsupportedOperationError(ArtifactStoreError):
    """The backend does not offer the requested optional capability (see ``Capabilities``)."""


class InvalidStepIdError(ArtifactStoreError, ValueError):
    """A step id or namespace is empty, too long, or holds a control character or lone surrogate.

    Raised before any I/O.
    """


class ArtifactNotFoundError(ArtifactStoreError, LookupError):
    """No artifact is stored under this step id in this namespace (or it has expired).

    Attributes:
        missing_ids: from :meth:`~artifactstore_core.ArtifactStore.get_many`, every requested id that is
            missing, in the order requested (the message shows the first ten; ``step_id`` is the first).
            From single-artifact operations, ``(step_id,)`` or empty.
    """

    missing_ids: tuple[str, ...] = ()


class ArtifactExistsError(ArtifactStoreError):
    """A different artifact is already stored under this step id; pass ``overwrite=True`` to replace it."""


class SerializationError(ArtifactStoreError):
    """A message could not be encoded, or stored bytes could not be decoded into a message."""


class ArtifactCorruptedError(SerializationError):
    """Stored bytes fail verification: wrong size, wrong digest, bad signature, or truncated."""


class UnsupportedFormatError(SerializationError):
    """Stored bytes are not an artifactstore envelope, or use a newer format version or an unknown codec."""


class SchemaMismatchError(SerializationError):
    """A message's content does not validate as the requested model, or names a different schema."""


class CapacityError(ArtifactStoreError):
    """The store is full: a configured limit, server memory (Redis OOM) or disk space."""


class PayloadTooLargeError(CapacityError):
    """One artifact is larger than this backend accepts. Raised before any byte is sent (or, by a read
    with a size limit such as the http client's, before the payload is read)."""


class BackendError(ArtifactStoreError):
    """The backend failed in a way not covered by a more specific error; the cause is chained."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The backend cannot be reached (refused, reset, DNS, server loading). Retry later."""

    retryable: ClassVar[bool] = True


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer within the configured timeout. The operation may or may not have happened."""

    retryable: ClassVar[bool] = True


class AccessDeniedError(BackendError, PermissionError):
    """The backend refused the credentials or denied permission for the operation."""


class StoreClosedError(ArtifactStoreError):
    """The store was closed with :meth:`~artifactstore_core.ArtifactStore.close`; create a new one."""

    @classmethod
    def of_store(cls, namespace: str, backend: str, *, in_flight: bool = False, detail: str = "") -> StoreClosedError:
        """The error for the store of ``namespace`` on ``backend``, with ``namespace`` and ``backend`` set.

        One wording for every store and backend, so that users (and their log searches) meet one text.

        Args:
            namespace: the closed store's namespace.
            backend: the closed store's backend name.
            in_flight: the operation had begun when :meth:`~artifactstore_core.ArtifactStore.close` was
                called (and was cut short), rather than being called after it.
            detail: what became of the cut-short operation's work, such as an upload that was aborted.
        """
        state = "was closed while this operation was in flight" if in_flight else "is closed"
        detail = f"; {detail}" if detail else ""
        return cls(
            f"store for namespace {namespace!r} of backend {backend!r} {state}{detail}; create a new one",
            namespace=namespace,
            backend=backend,
        )


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every URL's user info replaced by :data:`URL_PASSWORD_MASK`:
    ``http://AKIA...:pw@host:9000/b`` becomes ``http://AKIA...:***@host:9000/b``, ``redis://:pw@host``
    becomes ``redis://:***@host``. The user name, host, port and path stay, to say which server and user
    were meant; a user name alone (``scheme://user@host``) is left as it is. Raises nothing.
    """
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(_mask_password, text)


def _mask_password(match: re.Match[str]) -> str:
    password = match.group(2)
    # A password already masked (by redact, as one of its secrets, or by us before) keeps its mask; an empty one
    # (``user:@host``) gets one too, so that no reader wonders whether it was shown.
    kept = password if password and not password.strip("*") else URL_PASSWORD_MASK
    return f"{match.group(1)}:{kept}@"


def redact(text: str, secrets: Iterable[str], *, url_passwords: bool = True) -> str:
    """``text`` with every occurrence of each secret replaced by :data:`REDACTED`, and the password of
    every URL's user info by :data:`URL_PASSWORD_MASK` (:func:`mask_url_passwords`).

    Each secret is also masked in its URL-quoted forms (``urllib.parse.quote`` with and without ``/``
    escaped), as it appears inside a connection URL or a request path. The URL passwords are masked whether
    or not they are among ``secrets``: a client library quotes the URL it was given, and a URL may come
    from a setting that is not the store's (botocore's ``AWS_ENDPOINT_URL``, a proxy variable); pass
    ``url_passwords=False`` for text that is a step id or a namespace, which may legally look like a URL with
    a password and is never rewritten. Empty secrets are ignored. Where
    secrets overlap or one contains another (a password and a longer token that includes it), the whole
    stretch they cover becomes one mask, so no part of either is left readable. Backends call it on any
    text they did not write themselves before putting it in an error message::

        from artifactstore_core.errors import BackendError, redact

        raise BackendError(f"server said: {redact(str(exc), [password])}") from exc

    Args:
        text: the text to clean, e.g. ``str(exc)`` of a client library's exception.
        secrets: the secret values, e.g. each ``SecretStr.get_secret_value()`` of the settings.
        url_passwords: also mask the password of every URL's user info.

    Returns:
        The text without any of the secrets. Raises nothing.
    """
    forms = {form for secret in secrets if secret for form in _spellings(secret)}
    if url_passwords:
        # After the secrets are masked: a password among them keeps the mask every other secret gets.
        return mask_url_passwords(_mask_secrets(text, forms))
    return _mask_secrets(text, forms)


def _mask_secrets(text: str, forms: set[str]) -> str:
    if not text or not forms:
        return text
    # Mark every character any form covers, then mask each marked run once: replacing the forms one after
    # another would leave pieces of two secrets that overlap without one containing the other.
    covered = bytearray(len(text))
    for form in forms:
        start = text.find(form)
        while start >= 0:
            covered[start : start + len(form)] = b"\x01" * len(form)
            start = text.find(form, start + 1)
    if 1 not in covered:
        return text
    parts: list[str] = []
    index = 0
    while index < len(text):
        end = covered.find(b"\x01" if not covered[index] else b"\x00", index)
        end = len(text) if end < 0 else end
        parts.append(REDACTED if covered[index] else text[index:end])
        index = end
    return "".join(parts)


def _spellings(secret: str) -> tuple[str, ...]:
    try:
        return secret, quote(secret), quote(secret, safe="")
    except UnicodeEncodeError:
        # A lone surrogate (an environment value that was not valid UTF-8) has no URL-quoted form; the
        # secret as it is can still be masked, and masking must never fail while an error is being raised.
        return (secret,)


class RedactedError(Exception):
    """Stands in, in the chain of causes of an error, for a client library's exception whose text held a
    secret (see :func:`scrub_exception`).

    Its message is the original's qualified type name and its text, redacted
    (``botocore.exceptions.EndpointConnectionError: Could not connect to the endpoint URL:
    "http://AKIA...:***@127.0.0.1:9000/..."``), and it carries the original's traceback, so a traceback still
    shows what failed and where. Not an :class:`ArtifactStoreError`: the API never raises it, it is only
    ever found as a ``__cause__`` or ``__context__``.

    Attributes:
        original_type: the qualified name of the exception it stands for, e.g.
            ``"botocore.exceptions.EndpointConnectionError"``.
    """

    def __init__(self, message: str, *, original_type: str = "") -> None:
        super().__init__(message)
        self.original_type = original_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (str(self.args[0]) if self.args else "",), self.__dict__.copy())


def _shown_link(exc: BaseException) -> BaseException | None:
    """The exception a traceback prints after ``exc``: its cause, else its context unless suppressed."""
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


def _hidden_links(exc: BaseException) -> list[BaseException]:
    """What can be reached from ``exc`` other than through the link a traceback prints after it: a context
    that is suppressed or overridden by a cause, and the members of an exception group. A traceback does not
    print the former, but code that walks ``__context__`` (an error reporter) reaches it all the same."""
    hidden: list[BaseException] = []
    if exc.__context__ is not None and exc.__context__ is not _shown_link(exc):
        hidden.append(exc.__context__)
    if isinstance(exc, BaseExceptionGroup):
        hidden.extend(exc.exceptions)
    return hidden


def _linked(starts: Iterable[BaseException], seen: set[int]) -> Iterator[BaseException]:
    """Each exception reachable from ``starts`` through causes, contexts (suppressed or not) and exception
    group members, once, skipping those whose ``id`` is in ``seen`` (which it adds to). Raises nothing.

    The one walk of an error's links: :func:`scrub_exception` looks for secrets along it, and
    :func:`artifactstore_core.testing_errors.reachable_exceptions` gives backends' tests the same reach.
    """
    pending = list(starts)
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(link for link in (current.__cause__, current.__context__) if link is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def _reaches_secret(starts: Iterable[BaseException], known: tuple[str, ...], seen: set[int]) -> bool:
    """Whether any exception reachable from ``starts`` (see :func:`_linked`) holds one of ``known`` or a URL's
    password (see :func:`_holds_secret`)."""
    return any(_holds_secret(current, known) for current in _linked(starts, seen))


#: How much of an exception's text is checked for secrets: a text is read whole up to this size; a longer one
#: (an exception carrying a whole payload) is not read, and the exception is replaced (see _text_of).
_MAX_CHECKED_TEXT = 1 << 20


def _text_of(exc: BaseException) -> str | None:
    """Everything of ``exc`` that a traceback, a log formatter or a debugging repr shows, the members of an
    exception group with their own chains included; ``None``: some of it cannot be made (a ``__str__`` or
    ``__repr__`` that raises) or is too long to check."""
    try:
        notes = getattr(exc, "__notes__", None) or ()
        text = f"{exc!s} {exc!r} {exc.args!r} {getattr(exc, '__dict__', {})!r} {list(notes)!r}"
        if isinstance(exc, BaseExceptionGroup):
            # A traceback prints every member, with its causes and notes (anyio's task groups raise these).
            text += "".join(traceback.format_exception(exc))
    except Exception:
        return None
    return text if len(text) <= _MAX_CHECKED_TEXT else None


def _holds_secret(exc: BaseException, known: tuple[str, ...]) -> bool:
    """Whether what a traceback shows of ``exc`` holds one of ``known`` or a URL's password.

    An artifactstore error's text names step ids and namespaces, which may legally look like a URL with a
    password and are never rewritten: only the secrets themselves are looked for there (its own causes are
    checked as links of their own)."""
    text = _text_of(exc)
    if text is None:
        return True
    return redact(text, known, url_passwords=not isinstance(exc, ArtifactStoreError)) != text


def _quoted(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """The text of ``exc`` for its stand-in: its ``str`` (and its members', for a group), redacted and cut to
    :data:`_MAX_CHECKED_TEXT` characters. Raises nothing."""
    try:
        text = str(exc)
        if isinstance(exc, BaseExceptionGroup):
            text += "".join(f"\n  [{n}] {type(m).__name__}: {m}" for n, m in enumerate(exc.exceptions, 1))
        if len(text) > _MAX_CHECKED_TEXT:
            text = text[:_MAX_CHECKED_TEXT] + f"... ({len(text)} characters)"
        return redact(text, secrets, url_passwords=not isinstance(exc, ArtifactStoreError))
    except Exception:
        return "<its text cannot be shown>"


def scrub_exception(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """``exc`` itself when nothing that a traceback of it shows holds a secret; otherwise the same chain with
    each exception down to the last one that does replaced by a :class:`RedactedError`.

    What is checked, for ``exc`` and each exception its traceback prints after it (its ``__cause__``, else its
    ``__context__`` unless suppressed): its ``str``, ``repr``, ``args``, attributes and notes, for each of
    ``secrets`` (in the spellings :func:`redact` masks) and for a password in a URL's user info. An exception
    is replaced too when such a secret is reachable from it by a link a traceback does not print (a
    suppressed ``__context__``, a member of an exception group, and whatever those link to), since code that
    walks ``__context__`` would find it; a replacement links only to the next exception a traceback prints. A
    replacement keeps the original's qualified type name and its text, redacted, and the original's traceback
    (frames show code, not values); the exceptions below the last one replaced are kept as they are, types
    and all, and nothing that holds a secret is reachable from them. Nothing of the original exceptions is
    changed: they may be shared (a client library may keep one). Chain what this returns with
    :func:`raise_chained` (``raise_chained(error, scrub_exception(exc, secrets))``): inside the ``except``
    block that caught ``exc``, ``raise error from ...`` would keep ``exc`` as ``error.__context__``.

    Not covered: values of local variables in the traceback's frames, which only a debugger or a tool that
    collects locals shows.

    Args:
        exc: the exception about to be chained or logged.
        secrets: the secret values the caller knows, e.g. each ``SecretStr.get_secret_value()`` of its
            settings.

    Returns:
        ``exc``, or a :class:`RedactedError` standing in for it. Raises nothing.
    """
    known = tuple(secret for secret in secrets if secret)
    links: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        links.append(current)
        current = _shown_link(current)
    deepest = -1
    for index, link in enumerate(links):
        if _holds_secret(link, known) or _reaches_secret(_hidden_links(link), known, set(seen)):
            deepest = index
    if deepest < 0:
        return exc
    below: BaseException | None = links[deepest + 1] if deepest + 1 < len(links) else None
    stand_in = exc
    for link in reversed(links[: deepest + 1]):
        kind = type(link)
        name = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__
        stand_in = RedactedError(f"{name}: {_quoted(link, known)}", original_type=name)
        stand_in.__traceback__ = link.__traceback__
        for note in getattr(link, "__notes__", None) or ():
            with contextlib.suppress(Exception):
                stand_in.add_note(redact(str(note), known))
        if below is not None:
            if link.__cause__ is not None:
                stand_in.__cause__ = below
            else:
                stand_in.__context__ = below
        below = stand_in
    return stand_in


def raise_chained(error: BaseException, cause: BaseException | None) -> NoReturn:
    """Raise ``error`` with ``cause`` as its ``__cause__`` and its ``__context__`` (``raise error from cause``
    that keeps no other exception reachable from ``error``); ``cause`` ``None`` chains nothing.

    Inside an ``except`` block, ``raise error from cause`` still sets ``error.__context__`` to the exception
    being handled: a traceback does not print it (the context is suppressed), but code that walks
    ``__context__`` (an error reporter, a debugger) reaches it. When that exception is the one that
    :func:`scrub_exception` replaced because it shows a secret, or one that ``raise ... from None`` meant to
    drop, this keeps it out of reach.

    Raises:
        BaseException: ``error``, always.
    """
    try:
        raise error from cause
    finally:
        # Python sets the context while raising, so it can only be replaced afterwards, on the way out.
        error.__context__ = cause


def _scrub_links(error: BaseException, scrub: Callable[[BaseException], BaseException]) -> None:
    """Replace ``error``'s cause and its context, shown or suppressed, by what ``scrub`` makes of them (for an
    error of ours about to be raised again, which may be changed; a client library's exceptions may not)."""
    cause, context = error.__cause__, error.__context__
    if cause is not None:
        error.__cause__ = scrub(cause)
    if context is not None:
        # ``raise error from exc`` in the except block of exc: both are exc, and stay one stand-in. A
        # suppressed context is scrubbed too: a traceback hides it, code that walks __context__ does not.
        error.__context__ = error.__cause__ if context is cause else scrub(context)
