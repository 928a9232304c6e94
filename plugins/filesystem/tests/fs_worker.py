"""Child processes for the multi-process tests, run as a script (``python fs_worker.py <role> ...``).

Roles:

``zygote``
    Imports everything once, then for each stdin line ``crash <root> <namespace> <seed>`` forks a writer
    (so a hundred writers start in milliseconds, not a hundred interpreter start-ups), prints
    ``pid <pid>``, waits for the writer to die and prints ``exit <signal or code>``. The writer saves
    artifacts of 1 KiB to 64 MiB forever and prints a line before every file-system call it makes, so
    the parent can SIGKILL it at a chosen point inside a write instead of sleeping.

``racer <root> <namespace> <index> <link|fallback>``
    Prints ``ready``; then for each stdin line ``race <id>`` saves its own content under ``<id>`` and
    prints ``won`` or ``lost``; for ``read <id>`` prints the index whose content it reads back. With
    ``fallback``, ``os.link`` fails as on a file system without hard links.

``overwriter <root> <namespace>``
    On a file system without hard links (``os.link`` fails): prints ``ready``; then for each stdin line
    ``overwrite <id>`` saves ``b"overwrite"`` under ``<id>`` with ``overwrite=True``, printing ``locking``
    before it waits for the root's lock file, and ``done`` when the save has returned.
"""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import sys
from typing import Any

import blake3

from artifactstore_core import ArtifactExistsError, Message
from artifactstore_filesystem import FilesystemSettings, FilesystemStore

KIB = 1024
MIB = 1024 * KIB
# Calls the writer announces before making them: every step of a write can be a kill point.
_ANNOUNCED = ("open", "write", "lseek", "fsync", "link", "replace", "rename", "unlink", "mkdir", "copy_file_range")
_write = os.write


def payload(step_id: str, size: int) -> bytes:
    """The content a writer saves under ``step_id``: derived from the id, so the parent can check it."""
    return blake3.blake3(step_id.encode()).digest(length=size)


def pick_size(rng: random.Random) -> int:
    """1 KiB to 64 MiB: mostly small and medium, some large."""
    band = rng.random()
    if band < 0.6:
        return rng.randint(KIB, 64 * KIB)
    if band < 0.9:
        return rng.randint(64 * KIB, 4 * MIB)
    return rng.randint(4 * MIB, 64 * MIB)


class Unsized(io.RawIOBase):
    """A readable stream with no known size (like a pipe or a socket)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._view = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), len(self._view), 100_000)
        buffer[:count] = self._view[:count]
        self._view = self._view[count:]
        return count


def _say(text: str) -> None:
    _write(1, text.encode() + b"\n")


def _announce(name: str) -> None:
    original = getattr(os, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        _say(f"call {name}")
        return original(*args, **kwargs)

    setattr(os, name, call)


def crash_writer(root: str, namespace: str, seed: int) -> None:
    """Save artifacts forever (until killed), announcing every file-system call."""
    store = FilesystemStore(FilesystemSettings(root=root, chunk_size=256 * KIB), namespace=namespace)
    for name in _ANNOUNCED:
        _announce(name)
    rng = random.Random(seed)
    index = 0
    while True:
        size = pick_size(rng)
        step_id = f"{index}-{size}"
        data = payload(step_id, size)
        mode = rng.choice(("save", "save", "stream", "stream-unsized", "overwrite"))
        _say(f"begin {step_id} {mode}")
        if mode == "save":
            store.save(step_id, Message(content=data))
        elif mode == "stream":
            store.save_stream(step_id, io.BytesIO(data))
        elif mode == "stream-unsized":
            store.save_stream(step_id, io.BufferedReader(Unsized(data)))
        else:
            store.save(step_id, Message(content=data))
            store.save(step_id, Message(content=data), overwrite=True)
        _say(f"done {step_id}")
        index += 1


def zygote() -> None:
    """Fork a crash writer per command; report its pid and how it died."""
    for line in sys.stdin:
        _, root, namespace, seed = line.split()
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: starts once its pid is announced, so "pid" is always the first line
            os.close(go_write)
            os.read(go_read, 1)
            os.close(go_read)
            try:
                crash_writer(root, namespace, int(seed))
            finally:
                os._exit(3)
        os.close(go_read)
        _say(f"pid {pid}")
        os.write(go_write, b"g")
        os.close(go_write)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _say(f"exit {code}")


def _no_hard_links() -> None:
    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "hard links not supported here")

    os.link = no_link


def racer(root: str, namespace: str, index: int, mode: str) -> None:
    """Race other processes to create ids; read back what won."""
    if mode == "fallback":
        _no_hard_links()
    store = FilesystemStore(FilesystemSettings(root=root), namespace=namespace)
    mine = f"racer {index} ".encode() * (MIB // 16)
    _say("ready")
    for line in sys.stdin:
        command, step_id = line.split()
        if command == "race":
            try:
                store.save(step_id, Message(content=mine, metadata={"racer": index}))
            except ArtifactExistsError:
                _say("lost")
            else:
                _say("won")
        else:
            message = store.get(step_id)
            winner = message.metadata["racer"]
            assert message.content == f"racer {winner} ".encode() * (MIB // 16)
            _say(f"read {winner}")


def overwriter(root: str, namespace: str) -> None:
    """Overwrite ids on command without hard links, saying when the save waits for the root's lock."""
    import fcntl

    _no_hard_links()
    real_lockf = fcntl.lockf

    def announced_lockf(*args: Any) -> Any:
        _say("locking")
        return real_lockf(*args)

    fcntl.lockf = announced_lockf
    store = FilesystemStore(FilesystemSettings(root=root), namespace=namespace)
    _say("ready")
    for line in sys.stdin:
        _, step_id = line.split()
        store.save(step_id, Message(content=b"overwrite"), overwrite=True)
        _say("done")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    role = sys.argv[1]
    if role == "zygote":
        zygote()
    elif role == "overwriter":
        overwriter(sys.argv[2], sys.argv[3])
    else:
        racer(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
