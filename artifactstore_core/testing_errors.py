"""What code that walks an exception's links (an error reporter, a debugger) can reach from an error: for a
backend's tests that prove its errors show no secret however they are read. The walk is the one
:func:`~artifactstore_core.errors.scrub_exception` checks for secrets, so a test reaches what scrubbing covers."""

from __future__ import annotations

from .errors import _linked

__all__ = ["reachable_exceptions", "reachable_text"]


def reachable_exceptions(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception linked from it as a cause, a context (suppressed or not, which a traceback
    does not print but an error reporter reads) or an exception group's member, each once. Raises nothing."""
    return list(_linked([exc], set()))


def reachable_text(exc: BaseException) -> str:
    """The str, repr, args, notes and attributes of every exception :func:`reachable_exceptions` finds from
    ``exc``, one line each: assert a secret is not in it. Raises nothing a well-behaved exception's ``str`` and
    ``repr`` do not."""
    return "\n".join(
        f"{link!s} {link!r} {link.args!r} {getattr(link, '__notes__', [])!r} {getattr(link, '__dict__', {})!r}"
        for link in reachable_exceptions(exc)
    )
