"""English for messages that name a type or count things: "an int", "1 artifact"."""

from __future__ import annotations

__all__ = ["counted", "with_article"]

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
