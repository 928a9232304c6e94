"""Acceptance across processes: writers SIGKILLed mid-write, and processes racing to create one id."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from artifactstore_core import ArtifactNotFoundError, Message
from artifactstore_core.testing_servers import fork_child, wait_child
from artifactstore_filesystem import FilesystemSettings, FilesystemStore
from artifactstore_filesystem import store as store_module
from artifactstore_filesystem.layout import TEMP_PREFIX

from .fs_worker import payload

WORKER = str(Path(__file__).with_name("fs_worker.py"))
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals and fork")


class LineReader:
    """Lines of a child's stdout through a queue, so every wait has a deadline."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._pump, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            self._lines.put(raw.decode().rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float = 60.0) -> str:
        line = self._lines.get(timeout=timeout)
        assert line is not None, "the child process closed its output"
        return line


@pytest.fixture
def zygote() -> Iterator[tuple[subprocess.Popen[bytes], LineReader]]:
    process = subprocess.Popen(
        [sys.executable, WORKER, "zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )
    yield process, LineReader(process)
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=30)
    finally:
        if process.poll() is None:  # a failed test left it waiting for a writer: end both
            process.kill()
            process.wait(timeout=30)
        assert process.stdout is not None
        process.stdout.close()


def _temp_files(directory: Path) -> list[Path]:
    return [path for path in directory.rglob(f"{TEMP_PREFIX}*")] if directory.exists() else []


@pytest.mark.timeout(600)
def test_crash_loop_leaves_every_artifact_absent_or_complete(
    tmp_path: Path, zygote: tuple[subprocess.Popen[bytes], LineReader]
) -> None:
    process, lines = zygote
    assert process.stdin is not None
    rng = random.Random(20260105)
    root = tmp_path / "root"
    killed_mid_write = 0
    verified = 0
    max_verified = 0
    for round_ in range(100):
        namespace = f"crash-{round_}"
        process.stdin.write(f"crash {root} {namespace} {rng.randrange(2**32)}\n".encode())
        first = lines.next()
        assert first.startswith("pid "), first
        pid = int(first.split()[1])
        begun: list[str] = []
        try:
            # Kill after a random number of announced steps: before an open, a write, an fsync, a link...
            for _ in range(rng.randint(1, 60)):
                line = lines.next()
                assert not line.startswith("exit"), f"writer died on its own: {line}"
                if line.startswith("begin "):
                    begun.append(line.split()[1])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while not (line := lines.next()).startswith("exit"):
            if line.startswith("begin "):
                begun.append(line.split()[1])
        assert line == f"exit {-signal.SIGKILL}"

        settings = FilesystemSettings(root=root)
        if _temp_files(root):
            killed_mid_write += 1
        with FilesystemStore(settings, namespace=namespace) as store:
            listed = {info.step_id: info for info in store.list()}
            assert set(listed) <= set(begun)
            for step_id in begun:
                size = int(step_id.split("-")[1])
                if step_id in listed:
                    assert listed[step_id].size == size
                    assert store.get(step_id).content == payload(step_id, size)
                    with store.open(step_id) as handle:
                        assert handle.read() == payload(step_id, size)
                    verified += 1
                    max_verified = max(max_verified, size)
                else:
                    assert not store.exists(step_id)
                    with pytest.raises(ArtifactNotFoundError):
                        store.get(step_id)
        # No writer is alive now, so a store with no grace period sweeps whatever the killed one left.
        with FilesystemStore(settings.model_copy(update={"temp_max_age": 0.0}), namespace=namespace) as sweeper:
            assert _temp_files(root) == []
            sweeper.clear()
    # The kills really landed inside writes, and completed artifacts were checked byte for byte.
    assert killed_mid_write >= 20, killed_mid_write
    assert verified >= 50, verified
    assert max_verified >= 4 * 1024 * 1024, max_verified


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["link", "fallback"])
def test_eight_processes_race_to_create_one_id(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "root"
    racers = [
        subprocess.Popen(
            [sys.executable, WORKER, "racer", str(root), "race", str(index), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        for index in range(8)
    ]
    try:
        readers = [LineReader(racer) for racer in racers]
        for reader in readers:
            assert reader.next() == "ready"
        for round_ in range(8):
            step_id = f"contested-{round_}"
            for racer in racers:
                assert racer.stdin is not None
                racer.stdin.write(f"race {step_id}\n".encode())
            outcomes = [reader.next() for reader in readers]
            assert outcomes.count("won") == 1, outcomes
            assert outcomes.count("lost") == 7, outcomes
            winner = outcomes.index("won")
            for racer in racers:
                assert racer.stdin is not None
                racer.stdin.write(f"read {step_id}\n".encode())
            assert [reader.next() for reader in readers] == [f"read {winner}"] * 8
            with FilesystemStore(FilesystemSettings(root=root), namespace="race") as store:
                assert store.get(step_id).metadata["racer"] == winner
        assert _temp_files(root) == []
    finally:
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.close()
        for racer in racers:
            try:
                racer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                racer.kill()
                racer.wait(timeout=30)
            assert racer.stdout is not None
            racer.stdout.close()


@pytest.mark.timeout(60)
def test_without_hard_links_an_overwrite_in_another_process_is_not_lost_to_a_write_once_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without hard links a write-once save checks that the name is free, then renames, under the root's lock.
    # An overwrite in another process replaced without that lock: landing between the check and the rename,
    # it returned, and was then replaced by the write-once artifact, saved over an existing one.
    root = tmp_path / "root"
    overwriter = subprocess.Popen(
        [sys.executable, WORKER, "overwriter", str(root), "ns"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert overwriter.stdin is not None
    try:
        lines = LineReader(overwriter)
        assert lines.next() == "ready"

        def no_link(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        real_lexists = os.path.lexists
        seen: list[str] = []

        def overwrite_after_the_check(path: Any) -> bool:
            taken = real_lexists(path)
            if not seen:
                assert overwriter.stdin is not None
                overwriter.stdin.write(b"overwrite x\n")
                # The overwriter either finishes now (the defect) or waits for the lock this save holds.
                seen.append(lines.next())
            return taken

        monkeypatch.setattr(os, "link", no_link)
        monkeypatch.setattr(os.path, "lexists", overwrite_after_the_check)
        store = FilesystemStore(FilesystemSettings(root=root), namespace="ns")
        store.save("x", Message(content=b"write-once"))  # the name was free at its check: it wins
        monkeypatch.undo()
        if seen == ["locking"]:
            seen.append(lines.next())
        assert seen == ["locking", "done"]
        assert store.get("x").content == b"overwrite"
    finally:
        overwriter.stdin.close()
        try:
            overwriter.wait(timeout=30)
        except subprocess.TimeoutExpired:
            overwriter.kill()
            overwriter.wait(timeout=30)
        assert overwriter.stdout is not None
        overwriter.stdout.close()


@pytest.mark.timeout(60)
def test_without_hard_links_an_overwrite_waits_for_a_write_once_save_between_its_check_and_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same race between two threads of one process: the overwrite must wait for the thread lock.
    class WatchedLock:
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def __enter__(self) -> None:
            if not self._lock.acquire(blocking=False):
                overwriter_waits_or_ended.set()
                self._lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self._lock.release()

    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    real_lexists = os.path.lexists
    checked, proceed, overwriter_waits_or_ended = threading.Event(), threading.Event(), threading.Event()

    def paused_after_the_check(path: Any) -> bool:
        taken = real_lexists(path)
        if threading.current_thread().name == "write-once":
            checked.set()
            assert proceed.wait(30)
        return taken

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os.path, "lexists", paused_after_the_check)
    monkeypatch.setattr(store_module, "_FALLBACK_LOCK", WatchedLock())
    store = FilesystemStore(FilesystemSettings(root=tmp_path / "root"), namespace="ns")
    outcomes: dict[str, BaseException | None] = {}

    def run(name: str, call: Any) -> threading.Thread:
        def body() -> None:
            try:
                call()
                outcomes[name] = None
            except BaseException as exc:
                outcomes[name] = exc
            finally:
                if name == "overwrite":
                    overwriter_waits_or_ended.set()

        thread = threading.Thread(target=body, name=name)
        thread.start()
        return thread

    once = run("write-once", lambda: store.save("x", Message(content=b"write-once")))
    try:
        assert checked.wait(30)
        over = run("overwrite", lambda: store.save("x", Message(content=b"overwrite"), overwrite=True))
        assert overwriter_waits_or_ended.wait(30)
    finally:
        proceed.set()
    once.join(30)
    over.join(30)
    assert outcomes == {"write-once": None, "overwrite": None}
    assert store.get("x").content == b"overwrite"


@pytest.mark.timeout(60)
def test_a_child_forked_while_a_thread_publishes_without_hard_links_can_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without hard links a save publishes under a process-wide thread lock and a lock on <root>/.lock. A child
    # forked while another thread held them inherited the thread lock held for good (its first such save
    # hung), and, with flock, a copy of the locked descriptor that kept every writer waiting.
    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    real_rename = os.rename
    inside, proceed = threading.Event(), threading.Event()

    def held_rename(source: Any, target: Any) -> None:
        if threading.current_thread().name == "publishing":
            inside.set()
            proceed.wait(30)
        real_rename(source, target)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "rename", held_rename)
    store = FilesystemStore(FilesystemSettings(root=tmp_path / "root"), namespace="fork")
    publishing = threading.Thread(target=store.save, args=("parent", Message(content=b"p")), name="publishing")
    publishing.start()
    try:
        # The thread is inside the publish: it holds both locks.
        assert inside.wait(30)
        pid = fork_child(lambda: store.save("child", Message(content=b"c")), deadline=20)
    finally:
        proceed.set()
        publishing.join(timeout=30)
    wait_child(pid, "the child's save")
    assert store.get("parent").content == b"p"
    assert store.get("child").content == b"c"
