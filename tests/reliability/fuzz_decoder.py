"""Coverage-guided fuzzing of the envelope decoder with atheris (libFuzzer for Python).

Run for a bounded time by ``nox -s fuzz`` (``FUZZ_SECONDS``, default 60), or by hand::

    python tests/reliability/fuzz_decoder.py --allow-known -max_total_time=60 \
        -dict=tests/reliability/fuzz_decoder.dict -artifact_prefix=CRASH_DIR/ CORPUS_DIR

Each input is decoded three ways: as raw stored bytes; as a header the fuzzer writes itself behind a valid
tag (the tag is a plain BLAKE3 anyone can compute, so this reaches the header parser); and as a valid
envelope the fuzzer then damages. The decoder may raise only its documented errors; anything else is a
crash that libFuzzer reports with the input that caused it.

``--allow-known`` (the nox session passes it) tolerates the known defects listed in :data:`KNOWN` (none
today), each to be tracked by a strict xfail test in ``test_rel_fuzz.py``, so that a run finds *new*
defects; remove an entry when its defect is fixed (its xfail test then fails, as a reminder).
"""

from __future__ import annotations

import struct
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    import blake3

    from artifactstore_core import Codec, Message, SchemaInfo
    from artifactstore_core.errors import ArtifactCorruptedError, ConfigurationError, UnsupportedFormatError

DOCUMENTED = (UnsupportedFormatError, ArtifactCorruptedError, ConfigurationError)
PLAIN = Codec()
SIGNED = Codec(signing_key=b"atheris signing key")
ALLOW_KNOWN = "--allow-known" in sys.argv
TEMPLATES = [
    Message(content=b"\x00\x01binary"),
    Message(content="text é 🚀", media_type="text/markdown"),
    Message(content={"a": [1, 2.5, None, True], "b": {"c": "d"}}, metadata={"k": [1]}),
    Message(content=" ".join(f"z{i}" for i in range(12_000))),  # compressed
    Message(content={"x": 1}, schema=SchemaInfo(name="m.Model", version="2", json_schema={"type": "object"})),
]
BLOBS = [codec.encode(message).to_bytes() for message in TEMPLATES for codec in (PLAIN, SIGNED)]


# Known defects, each tracked by an xfail test in test_rel_fuzz.py: (exception type, function raising it).
# The two this harness found first (a raw AttributeError from forged header fields, a zstd frame claiming
# more than its header) are fixed and pinned by test_rel_fuzz.py.
KNOWN: tuple[tuple[type[BaseException], str], ...] = ()


def _known(exc: BaseException) -> bool:
    if not ALLOW_KNOWN:
        return False
    frames = {frame.name for frame in traceback.extract_tb(exc.__traceback__)}
    return any(isinstance(exc, kind) and where in frames for kind, where in KNOWN)


def check(call: Callable[[], Any]) -> None:
    try:
        call()
    except DOCUMENTED:
        pass
    except Exception as exc:
        if not _known(exc):
            raise


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        blob = fdp.ConsumeBytes(fdp.remaining_bytes())
        check(lambda: PLAIN.decode_bytes(blob))
        check(lambda: SIGNED.decode_bytes(blob))
    elif mode == 1:
        version = fdp.ConsumeIntInRange(0, 2)
        header = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())
        prefix = struct.pack(">4sBI", b"ARTF", version, len(header)) + header
        head = prefix + blake3.blake3(prefix).digest()
        check(lambda: PLAIN.decode(head, payload))
    else:
        pick = fdp.ConsumeIntInRange(0, len(BLOBS) - 1)
        original, message = BLOBS[pick], TEMPLATES[pick // 2]
        blob = bytearray(original)
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            where = fdp.ConsumeIntInRange(0, len(blob) - 1)
            blob[where] ^= fdp.ConsumeIntInRange(1, 255)
        mutated = bytes(blob)
        if mutated == original:  # two changes cancelled out
            return
        for codec in (PLAIN, SIGNED):
            try:
                decoded = codec.decode_bytes(mutated)
            except DOCUMENTED:
                continue
            except Exception as exc:
                if _known(exc):
                    continue
                raise
            # Damage may leave the content intact (a zstd frame has bits that do not change what it
            # decompresses to, and the digest covers the content): then it must decode to exactly the
            # original. Anything else that decodes is a hole in what the tag and digest cover.
            if decoded != message:
                raise AssertionError(f"a damaged envelope decoded to a different message: {decoded!r:.300}")


def seed(corpus: Path) -> None:
    """Start an empty corpus with valid envelopes (mode 0) so the fuzzer begins from real structure."""
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for index, blob in enumerate(BLOBS):
        (corpus / f"seed-{index}").write_bytes(b"\x00" + blob)


def main() -> None:
    args = [arg for arg in sys.argv if arg != "--allow-known"]
    # Positional arguments are corpus directories, or files to replay (a crash reproducer).
    corpora = [Path(arg) for arg in args[1:] if not arg.startswith("-") and not Path(arg).is_file()]
    for corpus in corpora:
        seed(corpus)
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
