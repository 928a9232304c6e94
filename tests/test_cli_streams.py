"""The artifactstore command's standard streams: a reader that goes away, a stdout that cannot be written, a
closed or terminal stdin, Ctrl-C. Each runs the installed console script with real pipes and terminals."""

from __future__ import annotations

import errno
import os
import pty
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from test_cli import IN_PROCESS_WARNING

from artifactstore_core import Message
from artifactstore_core.wiring import create_store
from artifactstore_redis.testing import running
from fakedist import install_fake_distribution

SCRIPT = Path(sys.executable).parent / "artifactstore"
#: Larger than any pipe's buffer (64 KiB by default on Linux, at most 1 MiB unless raised): a writer of this
#: much must still be writing when a reader that took a few bytes closes its end.
LARGE = 8 * 1024 * 1024

#: The documented exit codes (docs/cli.md), spelt out: artifactstore_core.cli's constants must equal them.
CLOSED_PIPE_EXIT_CODE = 141
INTERRUPTED_EXIT_CODE = 130
LOCAL_FILE_EXIT_CODE = 10

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a command using the filesystem backend under this test's directory."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_STORE_")}
    base["ARTIFACT_STORE_FILESYSTEM_ROOT"] = str(tmp_path / "root")
    base["ARTIFACT_STORE_FILESYSTEM_FSYNC"] = "false"
    return base


@pytest.fixture
def payload(env: dict[str, str]) -> bytes:
    """A LARGE artifact ``big`` and a small one ``small``, saved by the library into the commands' store."""
    data = bytes(range(256)) * (LARGE // 256)
    with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) as store:
        store.save("big", Message(content=data))
        store.save("small", Message(content=b"small"))
    return data


@pytest.fixture
def many(env: dict[str, str]) -> None:
    """Enough artifacts with long ids that ``ls`` (and more so ``ls --json``) prints well over a pipe buffer."""
    with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"], fsync=False) as store:
        store.save_many({f"{i:05d}-{'x' * 200}": Message(content=b"") for i in range(6000)})


def _default_sigint() -> None:
    # A command started from a background job inherits SIGINT ignored, and Python then installs no handler:
    # give the child the default a terminal's foreground command has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _stop_what_was_started() -> Iterator[None]:
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        with process:  # closes its pipes and waits
            pass


def _start(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([str(SCRIPT), *args], env=env, stderr=subprocess.PIPE, **kwargs)
    _STARTED.append(process)
    return process


def _read_some_then_close(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run a command into a pipe whose reader takes a few bytes and then closes it, like ``| head -c 10``."""
    process = _start(args, env, stdout=subprocess.PIPE)
    stdout = cast_io(process.stdout)
    first = stdout.read(10)
    stdout.close()
    error = cast_io(process.stderr).read()
    return process.wait(timeout=60), first, error


def cast_io(stream: IO[bytes] | None) -> IO[bytes]:
    assert stream is not None
    return stream


@pytest.mark.parametrize(
    ("args", "fixture"),
    [
        (["get", "big"], "payload"),
        (["ls"], "many"),
        (["ls", "--json"], "many"),
    ],
)
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_reader_that_goes_away_stops_the_command_quietly(
    args: list[str], fixture: str, unbuffered: bool, env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(fixture)
    # Unbuffered, stdout is a raw file whose write() takes part of a large write when the reader goes away:
    # the rest was dropped, and the command said 0 as if the reader had had it all.
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    code, first, error = _read_some_then_close(args, env)
    assert len(first) == 10
    # No traceback, no "Exception ignored" at shutdown, no error line: the shell's status of a cat or grep.
    assert error == b""
    assert code == CLOSED_PIPE_EXIT_CODE


def test_help_into_a_pipe_already_closed_is_quiet(env: dict[str, str]) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes a byte
    try:
        process = _start(["--help"], env, stdout=write)
    finally:
        os.close(write)
    assert cast_io(process.stderr).read() == b""
    assert process.wait(timeout=60) == CLOSED_PIPE_EXIT_CODE


def test_a_closed_stdout_pipe_leaves_output_files_and_error_lines_alone(
    payload: bytes, env: dict[str, str], tmp_path: Path
) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        out = tmp_path / "out.bin"
        saved = _start(["get", "big", "-o", str(out)], env, stdout=write)
        missing = _start(["get", "missing"], env, stdout=write)
    finally:
        os.close(write)
    assert cast_io(saved.stderr).read() == b""
    assert saved.wait(timeout=60) == 0
    assert out.read_bytes() == payload
    assert b"error: ArtifactNotFoundError: no artifact 'missing'" in cast_io(missing.stderr).read()
    assert missing.wait(timeout=60) == 3


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
@pytest.mark.parametrize("args", [["get", "small"], ["get", "big"], ["ls"], ["ls", "--json"], ["stat", "small"]])
def test_a_stdout_that_cannot_be_written_is_an_error(
    args: list[str], unbuffered: bool, payload: bytes, env: dict[str, str]
) -> None:
    # A full disk is not a reader that went away: one line and the local-file code, never a silent 141.
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "wb") as full:
        process = _start(args, env, stdout=full)
        error = cast_io(process.stderr).read().decode()
    assert process.wait(timeout=60) == LOCAL_FILE_EXIT_CODE, error
    assert error == f"error: cannot write to stdout: {os.strerror(errno.ENOSPC)}\n"


@pytest.mark.parametrize("args", [["get", "small"], ["ls"], ["stat", "small", "--json"]])
def test_a_closed_stdout_descriptor_is_an_error_not_lost_output(
    args: list[str], payload: bytes, env: dict[str, str]
) -> None:
    # `artifactstore ls >&-`: Python starts with sys.stdout None, and the listing used to vanish with status 0.
    process = _start(args, env, preexec_fn=lambda: os.close(1))
    error = cast_io(process.stderr).read().decode()
    assert process.wait(timeout=60) == LOCAL_FILE_EXIT_CODE, error
    assert error == f"error: cannot write to stdout: {os.strerror(errno.EBADF)}\n"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["ls", "--help"], ["serve", "--help"]])
@pytest.mark.parametrize("stdout", ["full disk", "closed descriptor"])
def test_help_and_version_that_cannot_be_written_are_an_error(
    args: list[str], stdout: str, env: dict[str, str]
) -> None:
    # Printed by click while the arguments are parsed, outside every command's handling of stdout: into
    # /dev/full they ended in click's OSError traceback (exit 1), and with stdout closed (`>&-`) they
    # printed nothing and exited 0. `serve` is a plugin's command, added with add_command.
    if stdout == "full disk":
        with open("/dev/full", "wb") as full:
            process = _start(args, env, stdout=full)
        reason = os.strerror(errno.ENOSPC)
    else:
        process = _start(args, env, preexec_fn=lambda: os.close(1))
        reason = os.strerror(errno.EBADF)
    error = cast_io(process.stderr).read().decode()
    assert process.wait(timeout=60) == LOCAL_FILE_EXIT_CODE, error
    assert error == f"error: cannot write to stdout: {reason}\n"


@pytest.mark.parametrize("args", [["ls", "--help"], ["serve", "--help"], ["--version"]])
def test_help_of_a_command_into_a_pipe_already_closed_is_quiet(args: list[str], env: dict[str, str]) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        process = _start(args, env, stdout=write)
    finally:
        os.close(write)
    assert cast_io(process.stderr).read() == b""
    assert process.wait(timeout=60) == CLOSED_PIPE_EXIT_CODE


def test_put_from_a_closed_stdin_is_one_line(env: dict[str, str]) -> None:
    process = _start(["put", "step"], env, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(0))
    _, error = process.communicate(timeout=60)
    assert process.returncode == LOCAL_FILE_EXIT_CODE
    assert error.decode() == f"error: cannot read from stdin: {os.strerror(errno.EBADF)}\n"
    process = _start(["clear"], env, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(0))
    _, error = process.communicate(timeout=60)
    assert process.returncode == 2
    assert b"refusing to clear without --yes" in error
    assert b"Traceback" not in error


@pytest.mark.parametrize("where", ["closed pipe", "full disk"])
def test_a_stderr_that_cannot_be_written_loses_the_messages_not_the_exit_code(
    where: str, payload: bytes, env: dict[str, str], tmp_path: Path
) -> None:
    # Every command exited 1 when its messages could not be written: a put that saved, a gc that removed,
    # a missing artifact's 3.
    source = tmp_path / "source.bin"
    source.write_bytes(b"data")
    cases = [
        (["put", "new", str(source)], 0),
        (["gc", "--older-than", "1d"], 0),
        (["get", "missing"], 3),
        (["ls", "-b", "nosuch"], 5),
        (["put", "other", str(tmp_path / "missing.bin")], LOCAL_FILE_EXIT_CODE),
        (["nosuchcommand"], 2),
    ]
    for args, code in cases:
        if where == "closed pipe":
            read, write = os.pipe()
            os.close(read)
        else:
            write = os.open("/dev/full", os.O_WRONLY)
        try:
            process = subprocess.Popen([str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=write)
            _STARTED.append(process)
        finally:
            os.close(write)
        process.communicate(timeout=60)
        assert process.returncode == code, args
    with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) as store:
        assert store.get("new").content == b"data"


def _on_terminal(
    args: list[str], env: dict[str, str], then: Callable[[int, subprocess.Popen[bytes]], None]
) -> tuple[int, bytes]:
    """Run a command whose stdin is a terminal; ``then(terminal, process)`` plays the user."""
    terminal, child = pty.openpty()
    try:
        process = _start(args, env, stdin=child, stdout=subprocess.PIPE, preexec_fn=_default_sigint)
    finally:
        os.close(child)
    try:
        then(terminal, process)
        _, error = process.communicate(timeout=60)
    finally:
        os.close(terminal)
    return process.returncode, error


def _type(text: bytes) -> Callable[[int, subprocess.Popen[bytes]], None]:
    def user(terminal: int, _process: subprocess.Popen[bytes]) -> None:
        os.write(terminal, text)

    return user


def _blocked_reading_the_terminal(pid: int) -> bool:
    # The kernel's wait of a read on a terminal (n_tty_read).
    with open(f"/proc/{pid}/wchan") as wchan:
        return wchan.read() == "wait_woken"


def _interrupt_at_prompt(terminal: int, process: subprocess.Popen[bytes]) -> None:
    prompt = cast_io(process.stderr).read1(200)  # type: ignore[attr-defined]
    assert b"[y/N]" in prompt
    # The prompt is printed before the read starts, and a SIGINT in between is only noticed when the read
    # returns (Python's handler sets a flag): the user presses Ctrl-C once the command waits in the read.
    deadline = time.monotonic() + 30
    while not _blocked_reading_the_terminal(process.pid):
        assert time.monotonic() < deadline, "the command never waited for the answer"
    process.send_signal(signal.SIGINT)


def test_put_without_file_refuses_a_terminal_stdin(env: dict[str, str]) -> None:
    code, error = _on_terminal(["put", "typed"], env, lambda *_: None)
    assert code == 2, error
    assert b"no FILE given and stdin is a terminal" in error
    code, _ = _on_terminal(["stat", "typed"], env, lambda *_: None)
    assert code == 3
    # An explicit - reads the terminal, up to Ctrl-D.
    code, error = _on_terminal(["put", "typed", "-"], env, _type(b"hello\n\x04"))
    assert code == 0, error
    with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) as store:
        assert store.get("typed").content == b"hello\n"


def _on_terminal_stdout(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run a command whose stdout is a terminal; return its code, what the terminal showed, and stderr.

    Only for output smaller than the terminal's buffer, read once the command has ended."""
    terminal, child = pty.openpty()
    tty.setraw(child)  # the bytes as written, without "\n" turned into "\r\n"
    try:
        process = _start(args, env, stdout=child)
    finally:
        os.close(child)
    try:
        error = cast_io(process.stderr).read()
        code = process.wait(timeout=60)
        shown = b""
        while True:
            try:
                data = os.read(terminal, 65536)
            except OSError:  # EIO: all read, and no process has the terminal open any more
                break
            if not data:
                break
            shown += data
    finally:
        os.close(terminal)
    return code, shown, error


def test_get_does_not_write_binary_to_a_terminal_unless_asked(env: dict[str, str]) -> None:
    binary = bytes(range(256))  # control sequences among them, which reconfigure a terminal
    text = "héllo, \x1b[1mworld\x1b[0m\n".encode()
    with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) as store:
        store.save("binary", Message(content=binary))
        store.save("text", Message(content=text))
    code, shown, error = _on_terminal_stdout(["get", "binary"], env)
    assert (code, shown) == (2, b""), error
    assert b"not writing the binary payload of 'binary' to a terminal" in error
    assert b"-o -" in error
    code, shown, error = _on_terminal_stdout(["get", "binary", "-o", "-"], env)
    assert (code, shown) == (0, binary), error
    code, shown, error = _on_terminal_stdout(["get", "text"], env)
    assert (code, shown) == (0, text), error


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(tmp_path_factory.mktemp("cli-streams-redis")) as server:
        yield server.url


@pytest.mark.parametrize("backend", ["filesystem", "memory", "redis"])
@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        (b"hello\nworld\n\x04", b"hello\nworld\n"),
        (b"\x04", b""),
        # Ctrl-D after bytes on a line hands them over and ends nothing; the second one ends, as for cat.
        (b"no newline\x04\x04", b"no newline"),
    ],
    ids=["lines", "nothing", "unfinished-line"],
)
def test_put_dash_on_a_terminal_ends_at_the_first_ctrl_d(
    backend: str, typed: bytes, stored: bytes, env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    # The store reads until a read returns nothing; a buffered read of the terminal kept the end of input
    # to itself, so the command waited for a second Ctrl-D (and, with the first one given, never ended).
    env["ARTIFACT_STORE_BACKEND"] = backend
    if backend == "redis":
        env["ARTIFACT_STORE_REDIS_URL"] = request.getfixturevalue("redis_url")
    namespace = f"typed-{request.node.callspec.id}"
    code, error = _on_terminal(["put", "typed", "-", "-n", namespace], env, _type(typed))
    assert code == 0, error
    # Memory forgets with the command, and says so.
    warned = b"" if backend != "memory" else f"{IN_PROCESS_WARNING}\n".encode()
    assert error == warned + b"saved 'typed'\n"
    if backend != "memory":
        options = {"root": env["ARTIFACT_STORE_FILESYSTEM_ROOT"]} if backend == "filesystem" else {}
        if backend == "redis":
            options = {"url": env["ARTIFACT_STORE_REDIS_URL"]}
        with create_store(backend, namespace=namespace, **options) as store:
            assert store.get("typed").content == stored


def test_ctrl_c_at_a_prompt_is_aborted_with_130(payload: bytes, env: dict[str, str]) -> None:
    code, error = _on_terminal(["clear"], env, _interrupt_at_prompt)
    assert code == INTERRUPTED_EXIT_CODE
    assert error.rstrip().endswith(b"aborted")
    assert b"Traceback" not in error
    # Answering no is not an interruption: 1, as before.
    code, error = _on_terminal(["clear"], env, _type(b"n\n"))
    assert code == 1
    assert error.rstrip().endswith(b"aborted")
    with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) as store:
        assert store.exists("big")


def test_ctrl_c_during_a_transfer_is_aborted_with_130(payload: bytes, env: dict[str, str]) -> None:
    process = _start(["get", "big"], env, stdout=subprocess.PIPE, preexec_fn=_default_sigint)
    stdout = cast_io(process.stdout)
    # Bytes arriving say the command is in its copy loop (blocked on the full pipe): interrupt it there.
    assert len(stdout.read(10)) == 10
    process.send_signal(signal.SIGINT)
    stdout.read()  # drain, so a write the signal did not interrupt can finish
    error = cast_io(process.stderr).read()
    assert process.wait(timeout=60) == INTERRUPTED_EXIT_CODE
    assert error.strip() == b"aborted"


_BLOCK_AN_IMPORT = """
import sys


class _BlockOnce:
    # Stops the import of one module until the test is done with the process: says so through `ready`,
    # then waits to open `gate`, which the test never opens for writing (Ctrl-C ends the wait).
    def find_spec(self, name, path=None, target=None):
        if name == {name!r}:
            sys.meta_path.remove(self)
            with open({ready!r}, "wb") as ready:
                ready.write(b"importing")
            open({gate!r}, "rb").close()
        return None


sys.meta_path.insert(0, _BlockOnce())
"""


@pytest.mark.parametrize(
    ("module", "args"),
    [
        # The first modules imported, by the package itself before the entry point ran (`import
        # artifactstore_core.cli_main` runs the package's __init__ first): a traceback there.
        ("typing", ["ls"]),
        ("__future__", ["--help"]),
        ("pydantic", ["ls"]),  # imported by the core's modules
        ("click", ["ls"]),  # imported by the command line
        ("slow_plugin_mod", ["backends"]),  # a plugin, loaded by its entry point
        ("slow_plugin_mod", ["ls", "-b", "slow"]),
    ],
)
def test_ctrl_c_while_the_command_is_still_importing_is_aborted_with_130(
    module: str, args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    # The console script imported the command line (about a second) before anything could catch Ctrl-C:
    # a Ctrl-C then printed a traceback and killed the process by the signal.
    site = tmp_path / "site"
    ready, gate = tmp_path / "ready", tmp_path / "gate"
    os.mkfifo(ready)
    os.mkfifo(gate)
    install_fake_distribution(site, "artifactstore-slow", "1.0", {"slow": "slow_plugin_mod"}, {"slow_plugin_mod": ""})
    (site / "sitecustomize.py").write_text(_BLOCK_AN_IMPORT.format(name=module, ready=str(ready), gate=str(gate)))
    env["PYTHONPATH"] = str(site)
    process = _start(args, env, stdout=subprocess.PIPE, preexec_fn=_default_sigint)
    with open(ready, "rb") as reading:  # returns once the process is in that import
        assert reading.read() == b"importing"
    process.send_signal(signal.SIGINT)
    out, error = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED_EXIT_CODE, error
    assert error.strip() == b"aborted"
    assert out == b""


def _default_stop_signals() -> None:
    # As a foreground command gets them, whatever the test runner set (SIGHUP may be ignored under nohup).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize(("signal_name", "code"), [("SIGTERM", -signal.SIGTERM), ("SIGHUP", -signal.SIGHUP)])
def test_sigterm_during_put_removes_what_the_store_was_writing(
    signal_name: str, code: int, env: dict[str, str], tmp_path: Path
) -> None:
    # Killed by SIGTERM (`timeout`, a CI job cancelled) or SIGHUP (its terminal closed), put left the
    # backend's temporary file behind (`.tmp-...` in the namespace's directory), a payload's worth each time.
    source = tmp_path / "source"
    os.mkfifo(source)
    process = _start(["put", "slow", str(source)], env, preexec_fn=_default_stop_signals)
    namespace = Path(env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) / "@default"
    with open(source, "wb") as writer:  # opens once the command opens its end
        # More than a pipe holds: written once the command has read most of it into the store's file.
        writer.write(b"x" * LARGE)
        writer.flush()
        deadline = time.monotonic() + 30
        while not (namespace.is_dir() and any(namespace.iterdir())):
            assert time.monotonic() < deadline, "the store never started writing"
        process.send_signal(getattr(signal, signal_name))  # the command waits to read more
        error = cast_io(process.stderr).read()
    assert process.wait(timeout=60) == code, error
    assert error.strip() == b"aborted"
    assert list(namespace.iterdir()) == []


_BLOCK_THE_RENAME = """
import os


def _replace(source, target, _real=os.replace):
    # get -o FILE has its payload in the temporary file beside FILE: say so, then wait on `gate`, which the
    # test never opens for writing (the signal ends the wait).
    with open({ready!r}, "wb") as ready:
        ready.write(b"written")
    open({gate!r}, "rb").close()
    _real(source, target)


os.replace = _replace
"""


@pytest.mark.parametrize(
    ("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", -signal.SIGTERM), ("SIGHUP", -signal.SIGHUP)]
)
def test_a_stop_signal_during_get_leaves_no_partial_file(
    signal_name: str, code: int, payload: bytes, env: dict[str, str], tmp_path: Path
) -> None:
    # Killed by SIGTERM or SIGHUP, get -o FILE left its `.FILE.*.partial` beside FILE: the documented
    # "no partial output file is left" held for Ctrl-C only. Those two still end the process by the signal
    # (a negative returncode), once cleaned up: a supervisor tells a stopped service from a failed one by it.
    site, out = tmp_path / "site", tmp_path / "out"
    site.mkdir()
    out.mkdir()
    ready, gate = tmp_path / "ready", tmp_path / "gate"
    os.mkfifo(ready)
    os.mkfifo(gate)
    (site / "sitecustomize.py").write_text(_BLOCK_THE_RENAME.format(ready=str(ready), gate=str(gate)))
    env["PYTHONPATH"] = str(site)
    (out / "big.bin").write_bytes(b"the previous one")
    process = _start(["get", "big", "-o", str(out / "big.bin")], env, preexec_fn=_default_stop_signals)
    with open(ready, "rb") as reading:  # returns once the payload is written, before it is put in place
        assert reading.read() == b"written"
    assert len(list(out.iterdir())) == 2  # FILE and the partial file beside it
    process.send_signal(getattr(signal, signal_name))
    error = cast_io(process.stderr).read()
    assert process.wait(timeout=60) == code, error
    assert error.strip() == b"aborted"
    assert [path.name for path in out.iterdir()] == ["big.bin"]
    assert (out / "big.bin").read_bytes() == b"the previous one"


def test_an_ignored_sighup_stays_ignored(payload: bytes, env: dict[str, str], tmp_path: Path) -> None:
    # Under nohup a command must survive its terminal closing: only a signal at its default action is caught.
    def ignore_sighup() -> None:
        _default_stop_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    source = tmp_path / "source"
    os.mkfifo(source)
    process = _start(["put", "slow", str(source)], env, preexec_fn=ignore_sighup)
    with open(source, "wb") as writer:
        writer.write(b"x" * LARGE)
        writer.flush()
        process.send_signal(signal.SIGHUP)
    error = cast_io(process.stderr).read()
    assert process.wait(timeout=60) == 0, error
    with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) as store:
        assert store.get("slow").content == b"x" * LARGE


@pytest.mark.parametrize("command", ["put", "get"])
def test_a_progress_bar_shows_the_id_as_text_not_as_markup(
    command: str, payload: bytes, env: dict[str, str], tmp_path: Path
) -> None:
    # The bar's label is rich markup: an id with a closing tag crashed put and get of 8 MiB or more on a
    # terminal with a MarkupError traceback (exit 1), "[red]" coloured the label, and a right-to-left override
    # went to the terminal as it was, past the escaping of every other line; an emoji code became an emoji.
    step_id = "a[/x]b[red]c\u202e:smile:"
    if command == "put":
        source = tmp_path / "big.bin"
        source.write_bytes(payload)
        args = ["put", step_id, str(source)]
    else:
        with create_store("filesystem", root=env["ARTIFACT_STORE_FILESYSTEM_ROOT"]) as store:
            store.save(step_id, Message(content=payload))
        args = ["get", step_id, "-o", str(tmp_path / "out.bin")]
    terminal, child = pty.openpty()  # stderr a terminal: the bar is shown
    try:
        process = subprocess.Popen(
            [str(SCRIPT), *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child
        )
        _STARTED.append(process)
    finally:
        os.close(child)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: the command ended and closed the terminal's other end
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(terminal)
    assert process.wait(timeout=60) == 0, shown
    assert b"Traceback" not in shown
    assert f"{command} a[/x]b[red]c\\u202e:smile:".encode() in shown
    assert "\u202e".encode() not in shown


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1"])
def test_get_output_onto_stdout_by_its_device_name_writes_into_the_pipe(
    name: str, env: dict[str, str], payload: bytes
) -> None:
    # `-o /dev/stdout | ...` failed with "cannot write '/dev/stdout': No such file or directory", exit 10:
    # the descriptor's /proc link names no path for a pipe ("pipe:[1234]"), so the file looked missing and
    # its "directory" one where no temporary file can be created.
    process = _start(["get", "big", "-o", name], env, stdout=subprocess.PIPE)
    out = cast_io(process.stdout).read()
    assert cast_io(process.stderr).read() == b""
    assert process.wait(timeout=60) == 0
    assert out == payload
