"""What code that walks an exception's links (an error reporter, a debugger) can reach from it."""

from __future__ import annotations


def reachable_exceptions(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception linked from it as a cause, a context (suppressed or not) or a group member."""
    found: list[BaseException] = []
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        pending += [link for link in (current.__cause__, current.__context__) if link is not None]
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
    return found


def reachable_text(exc: BaseException) -> str:
    """The str, repr, args, notes and attributes of every exception reachable from ``exc``."""
    return "\n".join(
        f"{link!s} {link!r} {link.args!r} {getattr(link, '__notes__', [])!r} {getattr(link, '__dict__', {})!r}"
        for link in reachable_exceptions(exc)
    )
