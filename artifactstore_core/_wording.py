"""English for messages that name a type or count things: "an int", "1 artifact"."""

from __future__ import annotations

import re

__all__ = ["counted", "visible", "with_article"]

# Words that begin with a vowel letter but a consonant sound ("a UserDict", "a usable ...").
_CONSONANT_SOUNDS = ("use", "usu", "uu")


def with_article(word: str) -> str:
    """``word`` after "a" or "an" by its first letter: ``"an int"``, ``"a dict"``, ``"a UUID"``. Raises nothing.

    By spelling, not sound; an acronym of capitals starting with U (``UUID``, ``URL``) is read letter by
    letter ("you"), so it takes "a".
    """
    first = word[:1].lower()
    acronym = word[:1] == "U" and word[1:2].isupper()
    vowel = first in "aeiou" and first != "" and not acronym and not word.lower().startswith(_CONSONANT_SOUNDS)
    return f"{'an' if vowel else 'a'} {word}"


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is one: ``"1 artifact"``, ``"0 artifacts"``.

    ``noun`` is a regular noun (its plural adds an s). Raises nothing.
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


#: Characters text output shows escaped (``\\x1b``, ``\\u202e``), never as they are: the C0 and C1 controls
#: and DEL (an escape sequence can retitle, clear or reprogram a terminal, a newline or carriage return forge
#: a line), the line and paragraph separators, the bidirectional controls that reorder what a line shows
#: (the "Trojan Source" characters, CVE-2021-42574), and lone surrogates. Other format characters (the
#: zero-width joiner of an emoji sequence, the tags of a flag) display as intended and are kept.
_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


#: The short escapes Python writes for these (``repr``), which people know best.
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str) -> str:
    """``text`` as text output shows it: the characters of :data:`_UNSAFE_TEXT` escaped as Python writes
    them (``\\x1b``, ``\\u202e``), everything else as it is. Raises nothing.

    Every line the commands print for people, on stdout and stderr, goes through this one function: any
    of it may quote text read from storage (media types, schema names, ids, namespaces, error messages),
    which an artifact written by another tool, or before saves refused control characters, can fill with
    terminal escape sequences. ``--json`` output is not escaped this way: ``json.dumps`` already writes
    every such character as a ``\\u`` escape, exactly.
    """
    if text.isascii() and text.isprintable():  # the usual line: one C scan, no regular expression
        return text
    return _UNSAFE_TEXT.sub(_escape_char, text)
