"""How namespaces and step ids become path components under the store's root, and back.

A value (namespace or step id) is first encoded with :func:`artifactstore_core.ids.encode_name`, which is
injective even under case-folding and only yields ``a-z 0-9 - _ %`` and upper-case hex digits. The encoded
name (up to 768 characters for a 256-byte id) is cut into chunks of at most :data:`CHUNK` characters:
every chunk but the last becomes a directory named ``+<chunk>``, the last becomes ``@<chunk>`` (the
artifact file, or the namespace directory)::

    root/@default/@extract                       namespace "default", step id "extract"
    root/@default/@%43%4F%4E                     step id "CON"
    root/@default/+<200 chars>/@<rest>           a step id whose encoding is longer than 200 characters

Why this is safe by construction:

* a component never contains ``/``, ``\\``, ``.``, ``:`` or a space, so it cannot be ``.``, ``..``, a drive
  or an absolute path, and nothing a user passes can leave the root;
* the fixed one-character prefix keeps Windows' reserved basenames (``CON``, ``nul``, ``COM1``...) from ever
  being a whole name or the part before a dot, and a continuation directory (``+``) can never be confused
  with a final name (``@``);
* every component is ASCII and at most ``CHUNK + 1`` bytes, far below every file system's name limit,
  and two different values never map to component lists that differ only by letter case;
* temporary and lock files start with ``.``, which no component does, so they can never collide with an
  artifact and :meth:`FilesystemStore.list` skips them by their first character.

Decoding (:func:`decode_components`) accepts only the canonical form, so a file someone dropped into the
tree by hand is ignored rather than misread as another id.
"""

from __future__ import annotations

from collections.abc import Sequence

from artifactstore_core.ids import decode_name, encode_name

__all__ = ["CHUNK", "FINAL", "PART", "TEMP_PREFIX", "decode_components", "encode_components"]

#: Longest chunk of an encoded name in one path component (plus its one-character prefix).
CHUNK = 200
#: Prefix of a continuation directory (a chunk that is not the last).
PART = "+"
#: Prefix of the last chunk: an artifact file, or a namespace directory.
FINAL = "@"
#: Prefix of temporary files (in-progress writes). No encoded component starts with ".".
TEMP_PREFIX = ".tmp-"


def encode_components(value: str) -> list[str]:
    """The path components for a (validated) namespace or step id: ``+chunk``... then ``@chunk``."""
    name = encode_name(value)
    chunks = [name[i : i + CHUNK] for i in range(0, len(name), CHUNK)] or [""]
    return [PART + chunk for chunk in chunks[:-1]] + [FINAL + chunks[-1]]


def decode_components(components: Sequence[str]) -> str | None:
    """The value that :func:`encode_components` maps to exactly ``components``, or ``None`` if none does.

    ``None`` means the path is not ours (a stray file, a differently cut name): callers skip it.
    """
    if not components or not all(part.startswith(PART) for part in components[:-1]):
        return None
    if not components[-1].startswith(FINAL):
        return None
    try:
        value = decode_name("".join(part[1:] for part in components))
    except ValueError:
        return None
    if not value or encode_components(value) != list(components):
        return None
    return value
