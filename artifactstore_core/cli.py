"""The ``artifactstore`` command: inspect backends and settings, probe the store, move artifacts.

Conventions: data goes to stdout, messages and progress to stderr; ``--json`` prints machine-readable
output; no colour when ``NO_COLOR`` is set or output is not a terminal; every core error prints one line
(no traceback unless ``--debug``) and exits with the code of its family (see ``EXIT_CODES``); a local file
that cannot be read or written, stdin and stdout included, prints one line too and exits with
``LOCAL_FILE_EXIT_CODE``. A reader of stdout that goes away (``artifactstore get x | head -c 10``) stops the
command quietly with ``CLOSED_PIPE_EXIT_CODE``; Ctrl-C prints ``aborted`` and exits with ``INTERRUPTED_EXIT_CODE``,
SIGTERM and SIGHUP clean up likewise and then end the process by the same signal.
Plugins add commands through the ``artifactstore_register_commands`` hook.
"""

from __future__ import annotations

import codecs
import difflib
import errno
import json
import os
import re
import shlex
import signal
import stat as stat_mode
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar, cast, get_args

import click
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from . import errors
from ._wording import counted, visible
from .cli_main import INTERRUPTED_EXIT_CODE
from .ids import validate_namespace, validate_step_id
from .message import _MEDIA_TYPE_CONTROL, Message
from .models import ArtifactInfo
from .registry import PLUGINS_ENV, BackendSpec, plugin_host
from .settings import (
    CONFIG_ENV,
    CoreSettings,
    _config_file,
    _in_environment,
    _read_config_file,
    env_name_of,
    load_settings,
)
from .store import ArtifactStore
from .wiring import create_store

__all__ = [
    "CLOSED_PIPE_EXIT_CODE",
    "EXIT_CODES",
    "INTERRUPTED_EXIT_CODE",
    "LOCAL_FILE_EXIT_CODE",
    "LocalFileError",
    "cli",
    "main",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Exit code of each error family (the first matching class wins); 0 is success, 2 a usage error.
EXIT_CODES: list[tuple[type[errors.ArtifactStoreError], int]] = [
    (errors.ArtifactNotFoundError, 3),
    (errors.ArtifactExistsError, 4),
    (errors.ConfigurationError, 5),
    (errors.InvalidStepIdError, 5),
    (errors.UnsupportedOperationError, 5),
    (errors.BackendUnavailableError, 6),
    (errors.BackendTimeoutError, 6),
    (errors.AccessDeniedError, 7),
    (errors.SerializationError, 8),
    (errors.CapacityError, 9),
    (errors.ArtifactStoreError, 1),
]
#: Exit code when a local file named on the command line (put's FILE, get's --output) cannot be read or
#: written: a problem on this machine, not in the store, so none of the store's codes.
LOCAL_FILE_EXIT_CODE = 10
#: Exit code when the reader of stdout closed it before the output was all written (``get x | head -c 10``):
#: 128 + SIGPIPE, the status the shell reports for ``cat`` or ``grep`` in that place, so a script (with
#: ``set -o pipefail``) sees what it sees for them. Not 0: the output was cut short, which a caller writing
#: to a pipe of its own must be able to tell. A literal, as Windows has no ``signal.SIGPIPE``.
CLOSED_PIPE_EXIT_CODE = 141
#: Transfers at least this large show a progress bar on a terminal.
PROGRESS_FROM = 8 * 1024 * 1024
_CHUNK = 1024 * 1024


class _MessageConsole(Console):
    """The console of the messages on stderr. A message that cannot be written (the reader of stderr went
    away, a full disk) is dropped, with the ones after it, and the command ends with its own exit code.

    rich's own answer to a broken pipe exits 1 (after pointing stdout, not stderr, at devnull), and other
    errors raised out of the command: a ``put`` that saved, or a missing artifact's 3, ended with 1 when
    stderr went to a closed pipe or ``/dev/full``. The exit code is the only report left to give.
    """

    def print(self, *objects: Any, **kwargs: Any) -> None:
        # Messages quote text from storage and from plugins (ids, media types, a backend's error text): shown
        # escaped, so that it cannot drive the terminal. Renderables (a progress bar) are rich's own.
        if all(isinstance(item, str) for item in objects):
            # One message, one line, as it was written: rich otherwise breaks a long one at the console's width
            # (80 columns when stderr is a file or a pipe), so that a CI log showed `saved 'a-long-id'` split
            # over three lines, past any grep for it. A terminal still folds it for display.
            kwargs.setdefault("soft_wrap", True)
        objects = tuple(visible(item) if isinstance(item, str) else item for item in objects)
        try:
            super().print(*objects, **kwargs)
        except OSError:
            self._lose_messages()

    def on_broken_pipe(self) -> None:
        self._lose_messages()

    def _lose_messages(self) -> None:
        self.quiet = True
        _drop_stream(sys.stderr)


#: Without emoji codes: rich replaces ``:smile:`` in any text it prints, even without markup, so the id
#: ``run:smile:1`` was reported saved with a smiling face in place of ``:smile:``, as an id that does not exist,
#: and ``get x:warning:y`` said no artifact held a warning sign. Text is shown as it is.
stderr = _MessageConsole(stderr=True, highlight=False, emoji=False)


def exit_code(error: errors.ArtifactStoreError) -> int:
    """The documented exit code for ``error``."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return 1


class _StopSignal(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP (``kill``, ``timeout``, a closed terminal), which then
    stop a command as Ctrl-C does: every clean-up of an interrupted command runs (``get -o FILE`` removes its
    partial file) and ``aborted`` is printed; then :func:`main` ends the process by the same signal (see
    :func:`_end_by`).

    Killed by the default action instead, ``get -o FILE`` left its ``.FILE.*.partial`` file behind. A
    :class:`KeyboardInterrupt`, so that every path that handles Ctrl-C handles these too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: The signals that stop a command as Ctrl-C does (those a platform has).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _raise_stop(signum: int, _frame: object) -> None:
    raise _StopSignal(signum)


def _catch_stop_signals() -> None:
    """Let :data:`_STOP_SIGNALS` raise :class:`_StopSignal`. Raises nothing.

    Only where the default action is in force: an ignored signal (``nohup`` ignores SIGHUP) stays ignored,
    and a handler someone else set (a program calling :func:`main`) stays theirs. Outside the main thread no
    handler can be set, and none is.
    """
    for signum in _STOP_SIGNALS:
        with suppress(ValueError, OSError):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _raise_stop)


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """What stopped a command that ended with ``exc``: the Ctrl-C or stop signal (itself, or the cause of
    click's :class:`Abort`), or ``None`` when it was none of those (a declined confirmation)."""
    cause = exc if isinstance(exc, KeyboardInterrupt) else exc.__context__
    return cause if isinstance(cause, KeyboardInterrupt) else None


def _end_by(signum: int) -> int:
    """End the process by ``signum``'s default action, once its clean-ups have run; return 128 + ``signum``
    if the process outlives it (the signal is blocked).

    Not an exit with 128 + ``signum``, which a shell reports alike but a supervisor does not: systemd counts a
    service that ends by SIGTERM as stopped cleanly, and one that exits 143 as failed. (``artifactstore serve``
    takes SIGTERM over itself: a graceful stop, status 0.) :func:`_catch_stop_signals` took over only a signal
    whose default action was in force, so the process ends as it would have without the command's handler,
    less the files it left behind.
    """
    with suppress(OSError, ValueError, AttributeError):
        sys.stdout.flush()
    with suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
    with suppress(OSError, ValueError):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return 128 + signum


def _printing_to_stdout(option: click.Parameter | None) -> None:
    """Make ``option`` (``--help``, ``--version``: click prints them while the arguments are parsed, before any
    command runs) write stdout as a command's output does (:func:`_writing_stdout`). Raises nothing.

    Without it, click's own write into a full disk ended in an ``OSError`` traceback (exit 1), and a closed
    stdout (``>&-``, for which Python sets ``sys.stdout`` to ``None``) made click print nothing, exit 0.
    """
    callback = option.callback if option is not None else None
    if option is None or callback is None or getattr(callback, "_artifactstore_stdout", False):
        return

    def printing(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if not value or ctx.resilient_parsing:  # not asked for: it prints nothing
            return callback(ctx, param, value)
        with _writing_stdout():
            return callback(ctx, param, value)

    printing._artifactstore_stdout = True  # type: ignore[attr-defined]
    option.callback = printing


class _Group(click.Group):
    """Turns core errors into one line and an exit code, and a closed stdout into a quiet stop."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)
        _printing_to_stdout(option)
        return option

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            name, command, rest = super().resolve_command(ctx, args)
        except click.UsageError as exc:
            # "No such command" alone sent the user looking for a typo when the command was a plugin's that
            # failed to load (the reason was only in `artifactstore backends`).
            missing = _plugins_without_commands() if args and self.get_command(ctx, args[0]) is None else []
            if missing:
                # A new error, as click's message is final; its text keeps click's own "Did you mean".
                raise click.UsageError(
                    f"{exc.format_message()} Plugins not loaded or without their commands: {', '.join(missing)}; "
                    "`artifactstore backends` shows why.",
                    ctx=exc.ctx,
                ) from None
            raise
        if command is not None and not isinstance(command, _Group):
            # Every command's --help, a plugin's included (added with add_command, of any class): asked with the
            # context the command's own will be (its help option names may be its own). click keeps a command's
            # help option once built, so the one its parsing uses is the one changed here.
            own = command.context_class(command, info_name=name, parent=ctx, **command.context_settings)
            _printing_to_stdout(command.get_help_option(own))
        return name, command, rest

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        # The group's own --help and --version print while its arguments are parsed, here.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            _reader_gone()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Before click sees it: click's own handling exits 1, as if the command had failed. Any
            # command, a plugin's included: the core API raises no OSError, so this is a standard stream.
            _reader_gone()
        except errors.ArtifactStoreError as exc:
            if ctx.meta.get("artifactstore.debug"):
                # The traceback in place of the one line, and the same exit code: raised on, the error
                # ended the command with Python's 1, so a script run with --debug to find out why it
                # fails saw a missing artifact (3) or a backend down (6) as some other failure.
                _print_traceback(exc)
            else:
                stderr.print(f"error: {type(exc).__name__}: {exc}", markup=False, soft_wrap=True)
            ctx.exit(ctx.meta.get(_EXIT_CODE_META) or exit_code(exc))


#: ``ctx.meta`` key by which a command gives the error it raises an exit code other than its family's.
_EXIT_CODE_META = "artifactstore.exit_code"


def _print_traceback(exc: BaseException) -> None:
    """``--debug``'s report of ``exc`` on stderr: its traceback, as Python prints an uncaught error's. A stderr
    that cannot be written loses it (see :class:`_MessageConsole`). Raises nothing."""
    try:
        # Printed as it is: stores and create_store chain causes without their secrets (scrub_exception);
        # masking URL passwords in the whole text rewrote a step id or namespace that looks like such a URL.
        traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        _drop_stream(sys.stderr)


@contextmanager
def _overwrite_hint() -> Iterator[None]:
    """Say ``--overwrite``, the command line's way, where a refused save's message says ``overwrite=True``."""
    try:
        yield
    except errors.ArtifactExistsError as exc:
        exc.args = (exc.message.replace("pass overwrite=True", "pass --overwrite"),)
        raise


class LocalFileError(click.ClickException):
    """A local file named on the command line cannot be read or written: one line, exit code 10."""

    exit_code = LOCAL_FILE_EXIT_CODE

    def __init__(self, action: str, path: str, cause: OSError) -> None:
        # strerror, not str(cause): the path is named once, the way the user wrote it.
        reason = cause.strerror or type(cause).__name__
        # The standard streams by their names, which quotes would make look like files of those names.
        where = f"{'to' if action == 'write' else 'from'} {path}" if path in _STANDARD_STREAMS else repr(path)
        super().__init__(f"cannot {action} {where}: {reason}")

    def show(self, file: IO[Any] | None = None) -> None:
        # The same shape as a core error's line.
        stderr.print(f"error: {self.format_message()}", markup=False, soft_wrap=True)


_STANDARD_STREAMS = frozenset({"stdin", "stdout"})


def _closed_stream() -> OSError:
    # Python sets sys.stdin / sys.stdout to None when the descriptor was closed at start (`<&-`, `>&-`).
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


def _drop_stdout() -> None:
    """Point stdout at devnull after a write to it failed. Raises nothing."""
    _drop_stream(sys.stdout)


def _drop_stream(stream: IO[str] | None) -> None:
    """Point a standard stream's descriptor at devnull after a write to it failed. Raises nothing."""
    # What Python's documentation advises for a BrokenPipeError, and right for any failed write: otherwise
    # the flush of what is still buffered at interpreter exit fails a second time ("Exception ignored in:
    # <_io.TextIOWrapper name='<stdout>'>", status 120 instead of the command's).
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())  # type: ignore[union-attr]
        finally:
            os.close(devnull)


def _reader_gone() -> NoReturn:
    """Stop the command after a write to stdout found its reader gone: quietly, with CLOSED_PIPE_EXIT_CODE."""
    _drop_stdout()
    raise click.exceptions.Exit(CLOSED_PIPE_EXIT_CODE)


@contextmanager
def _writing_stdout() -> Iterator[None]:
    """Around the writes of a command's output to stdout: a write that fails for any reason but a reader
    that went away (a full disk, a closed descriptor) is a :class:`LocalFileError` naming stdout.

    A closed pipe (``BrokenPipeError``) goes on to the group, which stops quietly whatever command wrote.
    """
    try:
        if sys.stdout is None:
            raise _closed_stream()
        yield
    except (BrokenPipeError, errors.ArtifactStoreError):
        # A store error of the block (demo runs a pipeline in it) is the store's, though some are OSErrors
        # too (BackendUnavailableError is a ConnectionError): a backend down was "cannot write to stdout".
        raise
    except OSError as exc:
        _drop_stdout()
        raise LocalFileError("write", "stdout", exc) from exc


def _write_all(stream: IO[bytes], data: bytes) -> None:
    """Write all of ``data`` to ``stream``, which may be a raw file that takes only part of it.

    An unbuffered stdout (``PYTHONUNBUFFERED``, ``python -u``) is a raw file whose ``write()`` returns how
    much the system took: less than asked when the pipe's reader went away or the disk filled up mid-way,
    and a caller (a text layer, ``click.echo``) that ignores the count drops the rest and exits 0. Writing
    the rest surfaces the error behind the short write. A buffered stream takes everything in one call.

    Raises:
        OSError: the write failed (``BrokenPipeError`` for a reader that went away), or the stream is
            non-blocking and full (``BlockingIOError``).
    """
    while data:
        written: int | None = stream.write(data)
        if written is None:  # a raw non-blocking stream that would block: nothing taken
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        if written >= len(data):
            return
        data = data[written:]  # a copy, on this rare path only


# The one escaping of text output, shared with the pipeline's RunResult.table().


class _VisibleLines:
    """A text stream (stderr) for what click shows itself (a usage error, which quotes the arguments): each
    line shown by :func:`visible`, the line breaks kept."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write("\n".join(visible(line) for line in text.split("\n")))

    def flush(self) -> None:
        self._stream.flush()


def _echo(text: str) -> None:
    """One line of a command's text output on stdout, shown by :func:`visible`.

    Raises :class:`LocalFileError` (not a closed pipe).
    """
    _write_line(visible(text))


def _write_line(text: str) -> None:
    """``text`` and a newline on stdout, exactly. Raises :class:`LocalFileError` (not a closed pipe)."""
    with _writing_stdout():
        out = sys.stdout
        binary: IO[bytes] | None = getattr(out, "buffer", None)
        if binary is None:
            # A text-only stream put in place of stdout (a test's StringIO) takes a whole str at once.
            click.echo(text)
            return
        # Through the binary layer with _write_all: the text layer drops the tail of a short write.
        out.flush()
        line, encoding = f"{text}\n", out.encoding or "utf-8"
        try:
            data = line.encode(encoding, out.errors or "strict")
        except UnicodeEncodeError:
            # A character stdout's encoding lacks (an id "é" under PYTHONIOENCODING=ascii or a Latin-1
            # locale) failed the command with a traceback: escaped instead, as Python escapes it on stderr.
            # --json output is ASCII whatever the ids, for scripts that need them exact.
            data = line.encode(encoding, "backslashreplace")
        _write_all(binary, data)
        binary.flush()


def _store_options(func: F) -> F:
    func = click.option(
        "--namespace",
        "-n",
        default=None,
        callback=lambda _ctx, _param, value: _decoded(value),
        help="Namespace (default: ARTIFACT_STORE_NAMESPACE).",
    )(func)
    return _backend_option(func)


def _not_empty(hint: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A click callback refusing an empty value, which is a script's unset variable (``-o "$OUT"``), not a
    choice: taken as "not given", it chose silently for the user (``get -o ""`` wrote the payload to stdout,
    ``-b ""`` used the default backend, ``put ID ""`` read the current directory).

    The callback raises :class:`click.BadParameter` (exit 2) for ``""``, saying ``hint``.
    """

    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value == "":
            raise click.BadParameter(f"must not be empty ({hint})")
        return value

    return check


def _backend_option(func: F) -> F:
    return click.option(
        "--backend",
        "-b",
        default=None,
        callback=_not_empty("leave the option out for the default backend"),
        help=_BACKEND_HELP,
    )(func)


#: The commands' default is not the library's (memory, which forgets everything when the command exits).
_BACKEND_HELP = "Backend name (default: ARTIFACT_STORE_BACKEND, else filesystem when installed)."


#: The backend the command uses when none is configured: artifacts must outlive one command.
CLI_DEFAULT_BACKEND = "filesystem"


def cli_backend(backend: str | None) -> str | None:
    """The backend a command uses: ``--backend``, else the configured one, else the persistent embedded
    ``filesystem`` backend when it is installed (the library's own default, ``memory``, forgets everything
    when the command exits), else ``memory``."""
    if backend:
        return backend
    if _in_environment("ARTIFACT_STORE_BACKEND") or "backend" in _read_config_file():
        return None
    return CLI_DEFAULT_BACKEND if CLI_DEFAULT_BACKEND in plugin_host().names() else None


@contextmanager
def _open_store(backend: str | None, namespace: str | None) -> Iterator[ArtifactStore]:
    with create_store(cli_backend(backend), namespace=namespace) as store:
        if not store.capabilities.outlives_the_process:
            _warn([_IN_PROCESS_ONLY.format(name=store.backend_name)])
        yield store


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Aligned plain-text columns on stdout, never truncated (scripts and narrow terminals alike)."""
    # Escaped before the widths are measured: an escape is wider than the character it stands for.
    rows = [[visible(str(cell)) for cell in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        _echo("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip())


def _echo_json(value: Any) -> None:
    # Exact, not through visible: ASCII, with every control character a JSON escape already.
    _write_line(json.dumps(value, indent=2, sort_keys=True, default=_json_value))


def _json_value(value: Any) -> Any:
    """What ``--json`` prints for a value JSON has no form of: a time in ISO 8601 (as ``gc`` prints it, so
    every command's times parse alike), a frozen mapping as an object, anything else as its ``str``."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC, the zone the text output shows times in (and says so)."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _progress(total: int | None) -> Progress | None:
    if total is not None and total < PROGRESS_FROM:
        return None
    if not stderr.is_terminal:
        return None
    return Progress(
        # Plain text, not markup (the default): markup also turns emoji codes (`:smile:`) into emoji.
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=stderr, transient=True,
    )  # fmt: skip


def _progress_label(text: str) -> str:
    """A progress bar's label for ``text``, shown as it is (through :func:`visible`), never as rich markup
    (its column is plain text): an id with a closing tag (``a[/x]``) failed the transfer with rich's
    ``MarkupError``, and one with an emoji code (``:smile:``) showed an emoji."""
    return visible(text)


class _CountingReader:
    """A binary reader that advances a progress bar (and nothing else)."""

    def __init__(self, raw: IO[bytes], advance: Callable[[int], None]) -> None:
        self._raw, self._advance = raw, advance

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._advance(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self._advance(count or 0)
        return int(count or 0)


class _TerminalInput:
    """A binary reader of a terminal that ends at the first end of input (Ctrl-D), as ``cat`` does.

    A terminal reports the end of input once per Ctrl-D, not for good as a file or a pipe does. A buffered
    ``read(n)`` returns the bytes it had at that end as a short chunk and keeps the end to itself; the store
    reads on until a read returns nothing, and that read waited for a second Ctrl-D. So each read here asks
    the terminal at most once, and the first empty answer is the end for every later read.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw, self._ended = raw, False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        if self._ended or size == 0:
            return b""
        # read1: one read of the terminal at most (bytes already buffered first), never a second one.
        data = self._raw.read1(size)  # type: ignore[attr-defined]
        if not data:
            self._ended = True
        return bytes(data)


class _ReadErrors:
    """``put``'s FILE or stdin as the store reads it, remembering the ``OSError`` a read raised.

    The store reports a source that failed to read as its own error (a ``SerializationError``, exit 8, "the
    data is bad"); a FILE or stdin that cannot be read (an I/O error, a descriptor not open for reading) is
    a local file problem, exit 10, as a FILE that cannot be opened. Every other attribute (``fileno``,
    ``seekable``, ... which backends use to size an upload) is the wrapped stream's.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.error: OSError | None = None

    def read(self, size: int = -1) -> Any:
        try:
            return self._raw.read(size)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._raw, name)
        if name != "readinto":
            return value

        def readinto(buffer: Any) -> Any:
            try:
                return value(buffer)
            except OSError as exc:
                self.error = exc
                raise

        return readinto


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="artifactstore-core", prog_name="artifactstore")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Store and inspect the artifacts of pipeline steps."""
    ctx.meta["artifactstore.debug"] = debug


# --version is built by click's decorator, out of reach of _Group: it prints as --help does all the same.
for _param in cli.params:
    if _param.name == "version":
        _printing_to_stdout(_param)
del _param


# -- inspection ---------------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backends(as_json: bool) -> None:
    """List every discovered backend with its distribution, version, status and capabilities."""
    infos = plugin_host().backends()
    if as_json:
        _echo_json(
            [
                {
                    "name": info.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "status": info.status,
                    "capabilities": vars(info.spec.capabilities) if info.spec else None,
                }
                for info in infos
            ]
        )
        return
    lines: list[list[str]] = []
    for info in infos:
        offered = vars(info.spec.capabilities) if info.spec else {}
        flags = ",".join(key for key, value in offered.items() if value is True) or "-"
        lines.append([info.name, info.distribution, info.version, info.status, flags])
    _print_table(["backend", "distribution", "version", "status", "capabilities"], lines)


def _setting_rows(model: type[Any], instance: Any) -> list[dict[str, Any]]:
    file_table = _read_config_file()
    section = getattr(model, "config_table", None)
    if section:
        file_table = file_table.get(section, {}) if isinstance(file_table.get(section), dict) else {}
    rows = []
    for name, field in model.model_fields.items():
        env = env_name_of(model, name)
        value = getattr(instance, name)
        if _in_environment(env):
            source = "env"
        elif name in file_table:
            source = "config file"
        else:
            source = "default"
        # By the field's type, not its value: an unset secret (None) is still a secret setting, and --json's
        # "secret" must not flip with whether it is set (it said false for an unset signing key).
        secret = isinstance(value, SecretStr) or _holds_secret(field.annotation)
        shown = "**********" if secret and value is not None else value
        rows.append({"name": env, "value": shown, "source": source, "secret": secret, "help": field.description})
    return rows


def _holds_secret(annotation: Any) -> bool:
    """Whether a setting's type annotation is :class:`SecretStr` or holds it (``SecretStr | None``). Raises nothing."""
    return annotation is SecretStr or any(_holds_secret(arg) for arg in get_args(annotation))


def _env_names(model: type[Any]) -> set[str]:
    return {env_name_of(model, name) for name in model.model_fields}


def unread_variables(spec: BackendSpec) -> list[str]:
    """One line per ``ARTIFACT_STORE_*`` environment variable that looks meant for this configuration but
    that no setting reads, so its value is silently ignored: a misspelt variable of the selected backend
    (``..._REDIS_ULR`` for ``ARTIFACT_STORE_REDIS_URL``) or one close to a core variable (``..._BACKNED``).

    Variables of other installed backends, and others not close to any setting, are not ours to judge.
    Values are never quoted (they may be secrets). Raises nothing.
    """
    core = _env_names(CoreSettings) | {CONFIG_ENV, PLUGINS_ENV}
    own = _env_names(spec.settings_model) if spec.settings_model is not None else set()
    # The model's own prefix (ARTIFACT_STORE_<NAME>_ by convention, which a plugin may not have followed).
    prefix = spec.settings_model.model_config.get("env_prefix") if spec.settings_model is not None else None
    own_prefix = prefix.upper() if prefix and prefix.upper().startswith("ARTIFACT_STORE_") else None
    own_prefix = own_prefix or f"ARTIFACT_STORE_{spec.name.upper()}_"
    others = tuple(f"ARTIFACT_STORE_{name.upper()}_" for name in plugin_host().names() if name != spec.name)
    lines = []
    for variable in sorted(os.environ):
        name = variable.upper()  # pydantic-settings reads the names case-insensitively
        if not name.startswith("ARTIFACT_STORE_") or name in core | own:
            continue
        if name.startswith(own_prefix):
            close = difflib.get_close_matches(name, sorted(own), n=1, cutoff=0.6)
            what = f"is no setting of backend {spec.name!r}"
        elif name.startswith(others):
            continue
        else:
            close = difflib.get_close_matches(name, sorted(core), n=1, cutoff=0.85)
            if not close:
                meant = _misspelt_backend(name)
                if meant is None:
                    continue
                close = [meant] if meant else []
            what = "is no setting"
        guess = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"{variable} {what} and is ignored{guess}")
    return lines


def _misspelt_backend(name: str) -> str | None:
    """For a variable whose backend part is close to an installed backend's name and is none (``..._FILESYTEM_ROOT``),
    the variable it was meant to be (``ARTIFACT_STORE_FILESYSTEM_ROOT``), or ``""`` when that backend has no such
    setting either (nothing to suggest, but still ignored); ``None`` when the part is close to no backend's name.

    A misspelt backend part is the likeliest typo of all, and no other check sees it: the variable is under
    no backend's prefix. Raises nothing (a backend that fails to load has no setting to suggest).
    """
    rest = name.removeprefix("ARTIFACT_STORE_")
    part, _, setting = rest.partition("_")
    if not setting:
        return None
    backends = {backend.upper(): backend for backend in plugin_host().installed()}
    if part in backends:
        return None
    close = difflib.get_close_matches(part, sorted(backends), n=1, cutoff=0.75)
    if not close:
        return None
    try:
        model = plugin_host().load(backends[close[0]]).settings_model
    except (errors.BackendNotFoundError, errors.PluginLoadError):
        return ""
    meant = f"ARTIFACT_STORE_{close[0]}_{setting}"
    # A suggestion must name a setting (..._HTTPS_PROXY is no ..._HTTP_PROXY, which nothing reads).
    return meant if model is not None and meant in _env_names(model) else ""


def configuration_warnings(spec: BackendSpec) -> list[str]:
    """What ``config`` and ``doctor`` warn of for the configuration of backend ``spec``, one line each: the
    :func:`unread_variables`, allow-list names that no installed plugin has, config-file tables that no
    backend reads: each a typo that leaves defaults in force without a word. Values are never quoted. Raises nothing.
    """
    lines = unread_variables(spec)
    host = plugin_host()
    try:
        unmatched = host.unmatched_allowed()
    except errors.ConfigurationError:
        unmatched = []  # the command's own settings check reports it
    for name in unmatched:
        close = difflib.get_close_matches(name, host.installed(), n=1, cutoff=0.6)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        lines.append(f"{PLUGINS_ENV} names {name!r}, which no installed plugin provides{guess}")
    return lines + _unread_tables()


#: Said when a command uses a backend that keeps artifacts in its own process: each command is a process of
#: its own, so ``put`` said "saved" of an artifact gone when it returned, and the next ``get`` found nothing.
_IN_PROCESS_ONLY = (
    "backend {name!r} keeps artifacts in this command's process only: they are gone when it ends "
    "(choose a persistent backend with --backend or ARTIFACT_STORE_BACKEND, e.g. filesystem)"
)


def _unread_tables() -> list[str]:
    """One line per table at the config file's top level that no installed backend (nor the http server's
    ``[server]``) reads: ``[filesytem]`` left every filesystem setting at its default. Raises nothing (an
    unreadable config file is reported by the settings themselves)."""
    try:
        config = _config_file()
    except errors.ConfigurationError:
        return []
    known = {*plugin_host().installed(), *_SERVER_TABLES}
    loaded = False
    lines = []
    for key, value in config.table.items():
        if not isinstance(value, dict) or key in known:
            continue
        if not loaded:
            # A backend's settings may read a table not named after it (its config_table): read (which imports
            # every backend) only once a table matches no backend's name.
            known |= _config_tables()
            loaded = True
            if key in known:
                continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        guess = f"; did you mean [{close[0]}]?" if close else ""
        lines.append(f"table [{key}] in {config.where()} is read by no installed backend and is ignored{guess}")
    return lines


#: Config-file tables that are no backend's: the http server's settings (``artifactstore serve``).
_SERVER_TABLES = ("server",)


def _config_tables() -> set[str]:
    """The config-file table of every installed backend that loads (its settings model's ``config_table``).
    Raises nothing: a backend that fails to load reads no table."""
    models = [info.spec.settings_model for info in plugin_host().backends() if info.spec is not None]
    return {table for model in models if isinstance(table := getattr(model, "config_table", None), str)}


def _warn(lines: list[str]) -> None:
    for line in lines:
        stderr.print(f"warning: {line}", markup=False, soft_wrap=True)


def _warn_found_nothing(store: ArtifactStore) -> list[str]:
    """Warn, beside an answer of ``store`` that found nothing, of its :meth:`~ArtifactStore.nothing_found_note`
    (a filesystem root that does not exist); return the warning's line, or none. Raises nothing.

    An empty answer is legitimate (the command still succeeds), but under a mistyped setting it looked like an
    empty store: `ls` printed nothing and exited 0.
    """
    note = store.nothing_found_note()
    lines = [note] if note else []
    _warn(lines)
    return lines


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--describe", is_flag=True, help="Add each setting's description to the table (the JSON always has it, as help)."
)
@_store_options
def config(as_json: bool, describe: bool, backend: str | None, namespace: str | None) -> None:
    """Show the effective settings and where each value came from (secrets masked)."""
    chosen = cli_backend(backend)
    core = load_settings(CoreSettings, backend=chosen, namespace=namespace)
    rows = _setting_rows(CoreSettings, core)
    spec = plugin_host().load(core.backend)
    if spec.settings_model is not None:
        rows += _setting_rows(spec.settings_model, load_settings(spec.settings_model))
    _warn(configuration_warnings(spec))
    for row in rows:
        if row["name"] == "ARTIFACT_STORE_BACKEND" and chosen:
            row["source"] = "argument" if backend else "command default"
        # `is not None`: an empty -n "" is the argument too (shown as it is, which every other command refuses).
        if row["name"] == "ARTIFACT_STORE_NAMESPACE" and namespace is not None:
            row["source"] = "argument"
    if as_json:
        _echo_json(rows)
        return
    lines = [[row["name"], "-" if row["value"] is None else str(row["value"]), row["source"]] for row in rows]
    if describe:
        # One line each: a description written over several lines would break the table's rows.
        for line, row in zip(lines, rows, strict=True):
            line.append(" ".join(str(row.get("help") or "-").split()))
    _print_table(["setting", "value", "source", *(["description"] if describe else [])], lines)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def doctor(as_json: bool, backend: str | None, namespace: str | None) -> None:
    """Validate the settings and probe the backend with a save/get/delete round trip."""
    found: dict[str, Any] = {"backend": None, "warnings": []}
    try:
        _doctor(as_json, backend, namespace, found)
    except errors.ArtifactStoreError as exc:
        if as_json:
            # A monitoring script reads stdout for the verdict: a failure is a report too (status "error"),
            # beside the usual error line on stderr and the family's exit code, which the group gives it.
            _echo_json(
                {
                    **found,
                    "status": "error",
                    "error": {
                        "type": type(exc).__name__,
                        "message": str(exc),
                        "retryable": exc.retryable,
                        "exit_code": exit_code(exc),
                    },
                }
            )
        raise


def _doctor(as_json: bool, backend: str | None, namespace: str | None, found: dict[str, Any]) -> None:
    """:func:`doctor`'s work; ``found`` collects the backend's name and the warnings for a failure's report."""
    chosen = cli_backend(backend)
    found["backend"] = chosen
    # The probe runs in a throw-away namespace, so the configured one (ARTIFACT_STORE_NAMESPACE, the config
    # file or --namespace) is checked here: every other command would refuse an invalid one.
    core = load_settings(CoreSettings, backend=chosen, namespace=namespace)
    found["backend"] = core.backend
    validate_namespace(core.namespace)
    # A misspelt variable leaves a default in force, which the probe may well work with: say so.
    warnings = configuration_warnings(plugin_host().load(core.backend))
    found["warnings"] = warnings
    _warn(warnings)
    probe_namespace = f"artifactstore-doctor-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    with create_store(chosen, namespace=probe_namespace) as store:
        created = time.perf_counter()
        if not store.capabilities.outlives_the_process:
            # Said once the store is built: a settings error of the backend is the one line to print then.
            warnings.append(_IN_PROCESS_ONLY.format(name=store.backend_name))
            _warn(warnings[-1:])
        # Before the probe's save, which creates what is missing (a filesystem root): a mistyped setting then
        # passed for a working one, and the `ls` that came up empty no longer said why.
        warnings += _warn_found_nothing(store)
        message = Message(content={"probe": uuid.uuid4().hex}, metadata={"by": "artifactstore doctor"})
        timings = {}
        try:
            t0 = time.perf_counter()
            store.save("probe", message)
            timings["save_ms"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            ok = store.get("probe").same_artifact(message)
            timings["get_ms"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            store.delete("probe")
            timings["delete_ms"] = (time.perf_counter() - t0) * 1000
        except BaseException:
            # A step failed after the save: doctor still leaves nothing behind, and a failure of this
            # clean-up must not hide the failure being reported.
            with suppress(errors.ArtifactStoreError):
                store.clear()
            raise
        store.clear()
        if not ok:
            raise errors.ArtifactCorruptedError("doctor: the artifact read back differs from the one saved")
        report = {
            "backend": store.backend_name,
            "status": "ok",
            "connect_ms": round((created - started) * 1000, 2),
            **{key: round(value, 2) for key, value in timings.items()},
            "capabilities": vars(store.capabilities),
            "warnings": warnings,
        }
    if as_json:
        _echo_json(report)
    else:
        _echo(
            f"ok: backend {report['backend']!r}: save {report['save_ms']} ms, get {report['get_ms']} ms, "
            f"delete {report['delete_ms']} ms"
        )


# -- data ---------------------------------------------------------------------------------------------


def _check_media_type(value: str) -> str:
    """``put``'s ``--media-type``, checked as :class:`Message` checks it, and not empty.

    Raises:
        click.BadParameter: it is empty (which a message takes as "the default", while the option has a
            default of its own: a script's empty variable, not a choice), or holds a control character.
    """
    if not value:
        raise click.BadParameter("must not be empty (leave the option out for application/octet-stream)")
    _check_decoded(value)
    control = _MEDIA_TYPE_CONTROL.search(value)
    if control is not None:
        raise click.BadParameter(f"contains the control character {control.group()!r}")
    return value


#: What Python makes of an argument's bytes that the locale's encoding cannot decode (``surrogateescape``).
_UNDECODED = re.compile("[\udc80-\udcff]")


def _check_decoded(value: str, param_hint: str | None = None) -> None:
    """Refuse an argument holding bytes the locale's encoding could not decode (``$'\\xff'`` under UTF-8).

    Stored as they came, they are lone surrogates, which no stored text can hold: the save failed with the
    store's ``SerializationError`` (exit 8, "the data is bad") and a page of pydantic's validation report.

    Raises:
        click.BadParameter: ``value`` holds such a byte (exit 2, naming the option).
    """
    undecoded = _UNDECODED.search(value)
    if undecoded is not None:
        byte = ord(undecoded.group()) - 0xDC00
        raise click.BadParameter(
            f"holds the byte \\x{byte:02x}, which is not {sys.getfilesystemencoding()} text", param_hint=param_hint
        )


V = TypeVar("V", str, tuple[str, ...], None)


def _decoded(value: V) -> V:
    """A step id or namespace argument (or several), refused as :func:`_check_decoded` refuses one.

    A byte the locale cannot decode (a Latin-1 file name used as an id under UTF-8: ``caf\\xe9``) reached the
    store as a lone surrogate, refused with "contains a lone surrogate" (exit 5), which names no byte and
    nothing the user typed.

    Raises:
        click.BadParameter: a value holds such a byte (exit 2, naming the argument or option).
    """
    texts: tuple[str, ...] = (value,) if isinstance(value, str) else value or ()
    for text in texts:
        _check_decoded(text)
    return value


def _parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--meta")
        _check_decoded(pair, param_hint="--meta")
        if key in result:
            # Not the last one silently: a repeated key is a typo for another key more often than not.
            raise click.BadParameter(f"{key!r} is given twice", param_hint="--meta")
        result[key] = value
    return result


@cli.command()
@click.argument("step_id", callback=lambda _ctx, _param, value: _decoded(value))
@click.argument(
    "source",
    required=False,
    metavar="[FILE|-]",
    type=click.Path(allow_dash=True, dir_okay=False, path_type=str),
    callback=_not_empty("leave it out or pass - for stdin"),
)
@click.option(
    "--media-type",
    default="application/octet-stream",
    show_default=True,
    callback=lambda _ctx, _param, value: _check_media_type(value),
    help="Media type to record.",
)
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata to record (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing, different artifact.")
@_store_options
def put(
    step_id: str,
    source: str | None,
    media_type: str,
    meta: tuple[str, ...],
    overwrite: bool,
    backend: str | None,
    namespace: str | None,
) -> None:
    """Store FILE (or stdin, also when FILE is -) as the bytes artifact STEP_ID.

    Without FILE, a stdin that is a terminal is refused (exit 2) rather than read; pass - to type the bytes.
    """
    metadata = _parse_metadata(meta)
    if source is None or source == "-":
        if sys.stdin is None:
            raise LocalFileError("read", "stdin", _closed_stream())
        if source is None and sys.stdin.isatty():
            # Not a silent wait for typed bytes, which looks like a hang: an explicit - still reads the terminal.
            raise click.UsageError("no FILE given and stdin is a terminal: name a FILE, pipe the data in, or pass -")
    with _open_store(backend, namespace) as store, _overwrite_hint():

        def save(stream: IO[bytes] | _CountingReader | _TerminalInput, name: str) -> None:
            reads = _ReadErrors(stream)
            try:
                store.save_stream(
                    step_id,
                    reads,  # type: ignore[arg-type]
                    media_type=media_type,
                    metadata=metadata,
                    overwrite=overwrite,
                )
            except errors.ArtifactStoreError as exc:
                if reads.error is not None:
                    raise LocalFileError("read", name, reads.error) from exc
                raise

        if source is None or source == "-":
            stdin = sys.stdin.buffer
            save(_TerminalInput(stdin) if stdin.isatty() else stdin, "stdin")
        else:
            path = Path(source)
            try:
                size = path.stat().st_size
                handle = path.open("rb")
            except OSError as exc:
                raise LocalFileError("read", source, exc) from exc
            with handle:
                progress = _progress(size)
                if handle.isatty():  # a FILE that is a terminal (/dev/tty): typed bytes end as on stdin
                    save(_TerminalInput(handle), source)
                elif progress is None:
                    save(handle, source)
                else:
                    with progress:
                        task = progress.add_task(_progress_label(f"put {step_id}"), total=size)
                        save(_CountingReader(handle, lambda n: progress.advance(task, n)), source)
    stderr.print(f"saved {step_id!r}", markup=False)


@cli.command()
@click.argument("step_id", callback=lambda _ctx, _param, value: _decoded(value))
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(allow_dash=True, dir_okay=False),
    callback=_not_empty("leave the option out for stdout"),
    help="File, or - for stdout even when it is a terminal and the payload is binary.",
)
@_store_options
def get(step_id: str, output: str | None, backend: str | None, namespace: str | None) -> None:
    """Write the payload of STEP_ID to stdout (or --output FILE).

    A payload that does not look like text (a NUL byte or invalid UTF-8 in its first MiB) is not written to
    a terminal (exit 2) unless -o - asks for it.
    """
    # Only a default stdout is guarded: an explicit "-o -" is the user saying they want the bytes there.
    guard_terminal = output is None and sys.stdout is not None and sys.stdout.isatty()
    output = output or "-"
    with _open_store(backend, namespace) as store:
        # One read of the head for the size and the stream (info, then open, read it twice, and a damaged
        # artifact was reported as an error of "info", a call the user never made).
        header, opened = store.open_with_header(step_id)
        size = header.size
        with opened as reader:
            to_file = output != "-"
            target = _OutputFile(output) if to_file else None
            if target is None and sys.stdout is None:
                raise LocalFileError("write", "stdout", _closed_stream())
            stream: IO[bytes] = target.handle if target is not None else sys.stdout.buffer
            try:
                progress = _progress(size) if to_file else None
                task = progress.add_task(_progress_label(f"get {step_id}"), total=size) if progress else None
                if progress is not None:
                    progress.start()
                try:
                    while chunk := reader.read(_CHUNK):
                        if guard_terminal:
                            _refuse_binary_on_terminal(step_id, chunk)
                            guard_terminal = False
                        _write(stream, chunk, output)
                        if progress is not None and task is not None:
                            progress.advance(task, len(chunk))
                finally:
                    if progress is not None:
                        progress.stop()
                if target is not None:
                    target.commit()
                else:
                    # Buffered bytes may fail only here (a full disk).
                    with _writing_stdout():
                        stream.flush()
            except BaseException:
                if target is not None:
                    # The error being raised is the one to report.
                    target.discard()
                raise


def _refuse_binary_on_terminal(step_id: str, head: bytes) -> None:
    """Refuse to write a payload to a terminal when its first chunk ``head`` does not look like text.

    Raw bytes on a terminal are garbage at best, and at worst control sequences that reconfigure it (its
    character set, the title, the keyboard); ``curl`` refuses the same way. Text is UTF-8 without NUL bytes
    (escape sequences in text, such as colours in a log, are written as ``cat`` would write them).

    Raises:
        click.UsageError: ``head`` holds a NUL byte or is not valid UTF-8 (a character cut at its end is).
    """
    try:
        # Incremental and not final: a multi-byte character split at the chunk's end is still text.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        text = b"\0" not in head
    except UnicodeDecodeError:
        text = False
    if not text:
        raise click.UsageError(
            f"not writing the binary payload of {step_id!r} to a terminal: "
            "name a file with -o FILE, pipe the output, or pass -o - to write it to the terminal all the same"
        )


class _OutputFile:
    """``get``'s ``--output FILE``, in place only once the whole artifact has been read and verified.

    A regular file (or a new one) is written to a temporary file beside it, renamed over it by
    :meth:`commit`: a read that fails part-way (a corrupted artifact, a lost connection) leaves an existing
    file as it was, not truncated or removed, and no partial file behind. The file keeps its permissions; a
    symbolic link keeps pointing at the file it names, which is the one replaced. A target that is not a
    regular file (``/dev/null``, a pipe), or a writable file in a directory where no file can be created,
    is written in place.

    Raises:
        LocalFileError: the file or its directory cannot be written (missing directory, no permission).
    """

    def __init__(self, output: str) -> None:
        self.output = output
        self.final: Path | None = None
        self.temp: Path | None = None
        path = Path(output)
        real = Path(os.path.realpath(path))
        try:
            try:
                # The file the path opens, through every link: /dev/stdout and /dev/fd/N lead to a descriptor's
                # /proc link, whose text names no path for a pipe ("pipe:[1234]"), so realpath's target was
                # "missing" and `-o /dev/stdout | ...` failed with "No such file or directory".
                status: os.stat_result | None = os.stat(output)
            except FileNotFoundError:
                status = None
            if status is not None and not (stat_mode.S_ISREG(status.st_mode) and _same_file(real, status)):
                # Not a regular file, or one realpath cannot name (an open descriptor's file that was deleted):
                # written in place, as asked, with nothing to put beside it.
                self.handle: IO[bytes] = open(output, "wb")  # noqa: SIM115 (closed by commit or discard)
                return
            if status is not None and not os.access(real, os.W_OK):
                # Renaming over it would succeed; writing it, as the user asked, would not.
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), output)
            try:
                fd, temp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".partial")
            except PermissionError:
                if status is None:
                    raise
                # A writable file in a directory we may not create files in: written in place, as asked.
                self.handle = open(output, "wb")  # noqa: SIM115 (closed by commit or discard)
                return
        except OSError as exc:
            raise LocalFileError("write", output, exc) from exc
        self.temp, self.final = Path(temp), real
        self.handle = os.fdopen(fd, "wb")
        try:
            os.fchmod(fd, stat_mode.S_IMODE(status.st_mode) if status is not None else 0o666 & ~_umask())
        except OSError as exc:
            self.discard()
            raise LocalFileError("write", output, exc) from exc

    def commit(self) -> None:
        """Flush and close the file and put it in place. Raises :class:`LocalFileError`."""
        try:
            if self.temp is not None and self.final is not None:
                self.handle.flush()
                # On disk before the rename: a crash must not leave an empty file where a good one was.
                os.fsync(self.handle.fileno())
                self.handle.close()  # flushes: a full disk may only show here
                os.replace(self.temp, self.final)
                self.temp = None
            else:
                self.handle.close()
        except OSError as exc:
            raise LocalFileError("write", self.output, exc) from exc

    def discard(self) -> None:
        """Close the file and remove the temporary one; the target is left as it was. Raises nothing."""
        with suppress(OSError):
            self.handle.close()
        if self.temp is not None:
            with suppress(OSError):
                self.temp.unlink()
            self.temp = None


def _same_file(path: Path, status: os.stat_result) -> bool:
    """Whether ``path`` is the file ``status`` describes. Raises nothing."""
    try:
        return os.path.samestat(path.stat(), status)
    except OSError:
        return False


def _umask() -> int:
    # The process's umask can only be read by setting it; the CLI is one thread at this point.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write(target: IO[bytes], chunk: bytes, output: str) -> None:
    """Write to ``get``'s output; a file that cannot be written is a :class:`LocalFileError`, and so is
    stdout, unless its reader went away (``BrokenPipeError``, which stops the command quietly)."""
    if output == "-":
        with _writing_stdout():
            _write_all(target, chunk)
        return
    try:
        target.write(chunk)
    except OSError as exc:
        raise LocalFileError("write", output, exc) from exc


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def list_command(as_json: bool, backend: str | None, namespace: str | None) -> None:
    """List the artifacts of the namespace."""
    with _open_store(backend, namespace) as store:
        infos, failures = _verified_listing(store)
        if not infos and not failures:
            _warn_found_nothing(store)
    _report_unverified(failures, "list")
    if as_json:
        _echo_json([vars(info) for info in infos])
    else:
        for info in infos:
            created = f"{_utc(info.created_at):%Y-%m-%d %H:%M:%S} UTC"
            # Escaped before the padding, which must count the escapes' width.
            _echo(f"{info.size:>12}  {created}  {visible(info.media_type):<28}  {info.step_id}")
    if failures:
        raise click.exceptions.Exit(exit_code(failures[0]))


def _report_unverified(failures: list[errors.ArtifactStoreError], action: str) -> None:
    """One line on stderr per artifact of a listing that failed verification: ``error: cannot <action> 'x': ...``."""
    for failure in failures:
        stderr.print(
            f"error: cannot {action} {failure.step_id!r}: {type(failure).__name__}: {failure}",
            markup=False,
            soft_wrap=True,
        )


#: Errors of one artifact that a listing reports instead of stopping at (with the artifact's step id): one that
#: fails verification (damaged, unsigned or signed with another key) or is signed while no key is set.
_ARTIFACT_LISTING_ERRORS = (errors.SerializationError, errors.ConfigurationError)
_LS_PAGE = 1000


def _verified_listing(store: ArtifactStore) -> tuple[list[ArtifactInfo], list[errors.ArtifactStoreError]]:
    """The infos of the artifacts of ``store`` that verify, sorted by step id, and the errors of those that do
    not (each naming its artifact's ``step_id``), in step id order.

    ``list()`` stops at the first artifact that fails verification, and rightly: its header (size, digest,
    media type) is unverified data. A listing command must still show the others, so past such a failure the
    namespace is read again in pages, narrowed down to the artifact that fails, which is then passed over;
    the pages after it grow back to full size one doubling at a time, so that a run of failing artifacts costs
    one read each.

    Raises:
        ArtifactStoreError: any other failure (the backend is unavailable, ...), or a failing artifact whose
            step id the error does not name.
    """
    try:
        return sorted(store.list(), key=lambda info: info.step_id), []
    except _ARTIFACT_LISTING_ERRORS as exc:
        if exc.step_id is None:
            raise
    infos: list[ArtifactInfo] = []
    failures: list[errors.ArtifactStoreError] = []
    after: str | None = None
    limit = _LS_PAGE
    while True:
        try:
            page = store.list_page(after=after, limit=limit)
        except _ARTIFACT_LISTING_ERRORS as exc:
            if limit > 1:
                limit //= 2  # the failing artifact is in this page: narrow it down
                continue
            # A page of one: the artifact after `after` is the failing one. An error naming no artifact, or
            # one not past `after`, would make no progress: it is not an artifact's own.
            if exc.step_id is None or (after is not None and exc.step_id <= after):
                raise
            failures.append(exc)
            # The limit stays at one and grows again only page by page: failures come in runs (every artifact
            # saved before a signing key was set), and each page read scans the namespace's names. Back at
            # the full page size after each failure, a run of them cost ten reads each, and a namespace of
            # 500 unsigned artifacts took minutes to list.
            after = exc.step_id
            continue
        infos.extend(page)
        if len(page) < limit:
            return infos, failures
        after = page[-1].step_id
        limit = min(limit * 2, _LS_PAGE)


@cli.command()
@click.argument("step_id", callback=lambda _ctx, _param, value: _decoded(value))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--meta",
    "with_meta",
    is_flag=True,
    help="Also show the metadata (put --meta): reads the artifact's head, or the whole artifact on a backend "
    "that does not stream.",
)
@_store_options
def stat(step_id: str, as_json: bool, with_meta: bool, backend: str | None, namespace: str | None) -> None:
    """Show the size, digest, media type, schema and creation time of STEP_ID."""
    with _open_store(backend, namespace) as store:
        shown: dict[str, Any] = dict(vars(store.info(step_id)))
        if with_meta:
            # What `put --meta` recorded was shown by no command. Not read by default: on a backend that does
            # not stream (redis, memory), the header comes with the whole artifact.
            header, stream = store.open_with_header(step_id)
            stream.close()
            shown["metadata"] = header.metadata
    if as_json:
        _echo_json(shown)
        return
    for key, value in shown.items():
        if isinstance(value, datetime):
            value = _utc(value).isoformat()
        elif key == "metadata":
            # As JSON, on one line: a value may hold a newline, which a line of its own would split.
            value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=_json_value)
        # "-" for no value (no schema), as config shows one: "None" is Python's word, not the command's.
        _echo(f"{key}: {'-' if value is None else value}")


@cli.command()
@click.argument("step_ids", nargs=-1, required=True, callback=lambda _ctx, _param, value: _decoded(value))
@_store_options
def rm(step_ids: tuple[str, ...], backend: str | None, namespace: str | None) -> None:
    """Remove artifacts. Exits 3 if any was not there."""
    missing = []
    # Each id once: `rm a a` removed a, then reported it missing ("no artifact 'a'; removed the other 1").
    step_ids = tuple(dict.fromkeys(step_ids))
    # Every id before any is removed: an invalid one in the middle (`rm a $'b\x01' c`) removed a, failed
    # with exit 5 naming only b, and kept c, without a word of what had been removed.
    for step_id in step_ids:
        validate_step_id(step_id)
    with _open_store(backend, namespace) as store:
        for step_id in step_ids:
            if not store.delete(step_id):
                missing.append(step_id)
        where = f"in namespace {store.namespace!r} of backend {store.backend_name!r}"
        if missing:
            # As the store's own not-found errors add it.
            note = store.nothing_found_note()
            where += f"; {note}" if note else ""
    if missing:
        # Worded as the store's own not-found errors (`get`, `stat`), which say where they looked.
        what = "no artifact" if len(missing) == 1 else "no artifacts"
        removed = len(step_ids) - len(missing)
        raise errors.ArtifactNotFoundError(
            f"{what} {', '.join(repr(s) for s in missing)} {where}"
            + (f"; removed the other {removed}" if removed else "")
        )


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@_store_options
def clear(yes: bool, dry_run: bool, backend: str | None, namespace: str | None) -> None:
    """Remove every artifact of the namespace (and nothing else).

    With --dry-run, an artifact that cannot be verified is counted too (clear removes it) and named on
    stderr; the exit code is then the first such failure's, as for ls.
    """
    with _open_store(backend, namespace) as store:
        if dry_run:
            # As ls lists: one artifact that fails verification stopped the whole count, though clear
            # removes it with the others.
            infos, failures = _verified_listing(store)
            _report_unverified(failures, "verify")
            count = len(infos) + len(failures)
            if not count:
                _warn_found_nothing(store)
            unverified = f" ({len(failures)} of them could not be verified)" if failures else ""
            _echo(f"would remove {counted(count, 'artifact')} from namespace {store.namespace!r}{unverified}")
            if failures:
                raise click.exceptions.Exit(exit_code(failures[0]))
            return
        if not yes:
            if sys.stdin is None or not sys.stdin.isatty():
                raise click.UsageError("refusing to clear without --yes when not on a terminal")
            click.confirm(f"Remove every artifact of namespace {store.namespace!r}?", abort=True, err=True)
        count = store.clear()
        if not count:
            _warn_found_nothing(store)
    _echo(f"removed {counted(count, 'artifact')}")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Deletes gc keeps in flight at once.
_GC_THREADS = 8
#: The shortest ``gc --older-than`` that deletes without ``--force``. gc sees no running executions, only the
#: times writers stamped their artifacts with: a step that saves nothing for longer than the age, or a writer
#: whose clock is behind gc's by more than it, makes a running execution look dead. An hour leaves room for
#: clock skew and for the steps of most pipelines; a shorter age is for those who know their longest step.
GC_MIN_AGE = timedelta(hours=1)
# How far in gc's future a namespace's newest artifact may be dated before gc warns that clocks disagree
# (machines kept by NTP differ by milliseconds; a save made while gc runs is seconds after gc's start).
_GC_SKEW_TOLERANCE = timedelta(minutes=1)


def parse_duration(text: str) -> timedelta:
    """Parse ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``.

    Raises:
        click.BadParameter: for anything else.
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"expected a duration like 30s, 15m, 12h, 7d or 2w, got {text!r}")
    try:
        return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    except OverflowError:
        raise click.BadParameter(f"duration {text!r} is too long (at most about 2.7 million years)") from None


def _delete_listed(store: ArtifactStore, step_ids: list[str]) -> int:
    """Delete exactly ``step_ids`` (a few at a time); return how many were there to delete.

    Not ``clear()``: an artifact saved into the namespace after it was listed (a crashed run resumed while gc
    runs) must not be removed with the old ones. The namespace then holds just that artifact and is kept;
    one emptied by these deletes is no longer listed by ``namespaces()``.
    """
    # Each delete is a round trip on a remote backend: a few threads keep a large namespace from taking
    # one round trip per artifact end to end (stores are thread-safe).
    with _ctrl_c_deferred() as interrupted:

        def delete(step_id: str) -> bool:
            return not interrupted() and store.delete(step_id)

        with ThreadPoolExecutor(max_workers=_GC_THREADS) as pool:
            return sum(pool.map(delete, step_ids))


@contextmanager
def _ctrl_c_deferred() -> Iterator[Callable[[], bool]]:
    """Within the block, Ctrl-C (SIGINT), and a stop signal that :func:`_catch_stop_signals` set to raise
    (SIGTERM, SIGHUP), only sets a flag, which the callable yielded reads; the ``KeyboardInterrupt`` (or
    :class:`_StopSignal`) of the first one is raised when the block ends.

    A ``KeyboardInterrupt`` raised in the main thread while it works the locks of a thread pool (submitting,
    waiting for a result) can leave one of them held: gc interrupted while deleting hung for good, its
    workers waiting for that lock and the main thread waiting for them. With the flag, the deletes not yet
    started return at once and the pool ends cleanly. Outside the main thread (no signal handler can be
    set there) the block runs as it is.

    Raises:
        KeyboardInterrupt: when the block ends, if Ctrl-C or a stop signal came during it.
    """
    # A plain list: an Event's lock could itself be held by the interrupted thread.
    pressed: list[KeyboardInterrupt] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not pressed:
            pressed.append(KeyboardInterrupt() if signum == signal.SIGINT else _StopSignal(signum))

    deferred = [signal.SIGINT, *(signum for signum in _STOP_SIGNALS if signal.getsignal(signum) is _raise_stop)]
    try:
        previous = {signum: signal.signal(signum, on_signal) for signum in deferred}
        main_thread = True
    except ValueError:  # not the main thread (SIGINT, the first, failed: nothing was set)
        main_thread = False
    if not main_thread:
        # Yielded outside the except clause: an error of the block would otherwise carry this ValueError as
        # its context ("During handling of the above exception, another exception occurred").
        yield lambda: False
        return
    try:
        yield lambda: bool(pressed)
    finally:
        for signum, handler in previous.items():
            # None: a handler set outside Python, which cannot be put back; Python's own is the usual one.
            signal.signal(signum, handler if handler is not None else signal.default_int_handler)
    if pressed:
        raise pressed[0]


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    # Parsed by click, so that a bad age is reported as this option's ("Invalid value for '--older-than'").
    callback=lambda _ctx, _param, value: parse_duration(value),
    help="Age like 30s, 15m, 12h, 7d or 2w: longer than your longest step plus the clock skew between machines "
    "(at least 1h without --force).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Accept an --older-than under 1h (an execution still running may then be collected).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_backend_option
def gc(older_than: timedelta, force: bool, dry_run: bool, as_json: bool, backend: str | None) -> None:
    """Remove namespaces whose newest artifact is older than --older-than (runs that crashed).

    An artifact's age is read from the creation time its writer stamped it with, by the writer's clock; gc
    cannot see executions that are still running. One whose steps have saved nothing for longer than the age
    (a long step), or whose writer's clock is behind this machine's by more than it, looks dead and is
    collected; the run then fails on the inputs it lost, and a resume computes them again. So the age must
    exceed the longest step plus the clock skew between machines: an age under 1h is refused unless --force
    is given (--dry-run deletes nothing and takes any age). A namespace whose newest artifact is dated more
    than a minute in this machine's future is kept, and a warning says that clocks disagree.
    """
    age = older_than
    if age < GC_MIN_AGE and not force and not dry_run:
        raise click.UsageError(
            f"--older-than {_duration_text(age)} is shorter than 1h: an execution still running (a step that "
            "saves nothing for that long, or a writer whose clock is behind this machine's by as much) would "
            "look dead and be collected. Use an age longer than your longest step plus the clock skew between "
            "machines, or pass --force if you know no execution is running"
        )
    try:
        cutoff = datetime.now(UTC) - age
    except OverflowError:
        # Before the first representable date: no artifact is that old, so nothing is removed.
        cutoff = datetime.min.replace(tzinfo=UTC)
    removed: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    warnings: list[str] = []
    first_failure: errors.ArtifactStoreError | None = None
    chosen = cli_backend(backend)
    with create_store(chosen) as root:
        if not root.capabilities.outlives_the_process:
            # As every data command warns (see _open_store): gc of memory found nothing, ever, without a word.
            warnings.append(_IN_PROCESS_ONLY.format(name=root.backend_name))
            _warn(warnings[-1:])
        names = root.namespaces()
        if not names:
            warnings += _warn_found_nothing(root)
        for name in names:
            # One namespace that cannot be collected (a corrupted artifact, one the backend cannot read) must
            # not keep gc from the others: it is reported, and the exit code says that something was left.
            try:
                row, ahead = _collect_namespace(chosen, name, cutoff, dry_run)
            except errors.ArtifactStoreError as exc:
                first_failure = first_failure or exc
                reason = f"{type(exc).__name__}: {exc}"
                failed.append({"namespace": name, "error": reason})
                stderr.print(f"error: cannot collect namespace {name!r}: {reason}", markup=False, soft_wrap=True)
                continue
            if ahead is not None:
                # To the nearest minute: beyond the tolerance, the seconds say nothing.
                shown = timedelta(minutes=round(ahead.total_seconds() / 60))
                warning = (
                    f"namespace {name!r} is kept: its newest artifact is dated {_duration_text(shown)} in the "
                    "future by this machine's clock, so a writer's clock is ahead of it; a writer whose clock is "
                    "behind by as much would have a running execution collected unless --older-than exceeds that"
                )
                warnings.append(warning)
                _warn([warning])
            if row is not None:
                removed.append(row)
    if as_json:
        _echo_json({"dry_run": dry_run, "namespaces": removed, "failed": failed, "warnings": warnings})
    else:
        verb = "would remove" if dry_run else "removed"
        for row in removed:
            artifacts = counted(row["artifacts"], "artifact")
            _echo(f"{verb} namespace {row['namespace']!r}: {artifacts}, newest {row['newest']}")
        left = f"; {len(failed)} could not be collected" if failed else ""
        stderr.print(f"{verb} {counted(len(removed), 'namespace')}{left}", markup=False)
    if first_failure is not None:
        raise click.exceptions.Exit(exit_code(first_failure))


def _collect_namespace(
    backend: str | None, name: str, cutoff: datetime, dry_run: bool
) -> tuple[dict[str, Any] | None, timedelta | None]:
    """Remove (or with ``dry_run`` only count) the artifacts of namespace ``name`` if its newest artifact is
    older than ``cutoff``; return gc's row for it (``None`` when it is kept), and how far in the future by
    this machine's clock its newest artifact is dated, when that is beyond :data:`_GC_SKEW_TOLERANCE`
    (else ``None``).

    Raises:
        ArtifactStoreError: the namespace cannot be opened, listed (an artifact that fails verification) or
            deleted; artifacts deleted before the failure stay deleted.
    """
    with create_store(backend, namespace=name) as store:
        infos = list(store.list())
        # Read after the listing: an artifact saved while gc ran through other namespaces is not "ahead".
        now = datetime.now(UTC)
        if not infos:
            return None, None
        newest = max(info.created_at for info in infos)
        ahead = newest - now if newest - now > _GC_SKEW_TOLERANCE else None
        if newest >= cutoff:
            return None, ahead
        count = len(infos) if dry_run else _delete_listed(store, [info.step_id for info in infos])
    return {"namespace": name, "artifacts": count, "newest": newest.isoformat()}, ahead


def _duration_text(age: timedelta) -> str:
    """``age`` the way ``--older-than`` takes it, in its largest whole unit (``10m``, ``3h``, ``90s``)."""
    seconds = age.total_seconds()
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:g}s"


@cli.command()
# The commands' default backend (run_demo gets cli_backend's choice), which the help said was the library's.
@_backend_option
# Not ARTIFACT_STORE_NAMESPACE: every execution has a namespace of its own, a new one unless one is given.
@click.option(
    "--namespace",
    "-n",
    default=None,
    callback=lambda _ctx, _param, value: _decoded(value),
    help="Execution id, the namespace of its artifacts (default: a new one; a failed execution's id resumes it).",
)
@click.pass_context
def demo(ctx: click.Context, backend: str | None, namespace: str | None) -> None:
    """Run the example pipeline on the configured backend and print its steps and result.

    A failed step exits with its store error's code (6 for a backend that is down), else 1.
    """
    from .pipeline import StepFailedError
    from .pipeline.example import run_demo

    try:
        with _writing_stdout():
            run_demo(backend=cli_backend(backend), execution_id=namespace)
    except StepFailedError as exc:
        # The library's words say how to resume from Python (execution_id='...'); the command's way is -n.
        if exc.execution_id is not None:
            again = _demo_again(backend, exc.execution_id)
            python_way = f"run the pipeline again with execution_id={exc.execution_id!r}"
            exc.args = (exc.message.replace(python_way, f"run `{again}`"),)
        # A step that failed on the store (a backend down, retry later) keeps that error's code, which the
        # wrapping StepFailedError (1, "another error") hid from a script.
        if isinstance(exc.__cause__, errors.ArtifactStoreError):
            ctx.meta[_EXIT_CODE_META] = exit_code(exc.__cause__)
        raise
    except KeyboardInterrupt as exc:
        # The pipeline names the interrupted execution in a note of the exception, which the command's quiet
        # `aborted` does not show: a fresh execution's id (and its kept artifacts) was lost to the user.
        interrupted = getattr(exc, "_artifactstore_interrupted", None)
        if interrupted is not None:
            again = _demo_again(backend, interrupted[0])
            with suppress(OSError, ValueError):
                stderr.print(
                    f"execution {interrupted[0]!r} was interrupted; the artifacts of the steps that finished are "
                    f"kept: run `{again}` to resume",
                    markup=False,
                )
        raise


def _demo_again(backend: str | None, execution_id: str) -> str:
    """The command line that resumes the demo's execution ``execution_id``."""
    return shlex.join(["artifactstore", "demo", *(["-b", backend] if backend else []), "-n", execution_id])


def _plugins_without_commands() -> list[str]:
    """Each installed backend whose plugin may lack commands it has, with why in a few words: not loaded (left
    out by the allow-list, or broken), or its commands hook failed. Raises nothing for a broken plugin."""
    found: dict[str, str] = {}
    for info in plugin_host().backends():
        if info.error == f"not in {PLUGINS_ENV}":
            why = info.error
        elif info.error is not None:
            why = "failed to load"
        elif info.commands_error is not None:
            why = "its commands failed"
        else:
            continue
        found.setdefault(info.name, why)  # a name two distributions claim is listed twice by backends()
    return [f"{name} ({why})" for name, why in sorted(found.items())]


def _load_plugin_commands() -> None:
    # A broken plugin costs only its own commands; `artifactstore backends` shows why it is broken.
    plugin_host().call_commands_hook(cli)


#: The commands of the core. Running one of them needs no plugin's commands, so the command line does not
#: import every installed plugin (boto3, redis-py, ...) to run, say, ``ls -b memory``: about a second less.
_CORE_COMMANDS = frozenset(cli.commands)
#: Core commands that show what the plugins' commands hooks did (``backends`` reports a failed one).
_COMMANDS_OF_PLUGINS_SHOWN = frozenset({"backends"})


def _needs_plugin_commands(args: list[str]) -> bool:
    """Whether running ``args`` needs the plugins' commands: a plugin's command, an unknown one (for the
    "did you mean"), the group's own help, or a core command that shows them."""
    # The group's own options are all flags (--debug, --version, --help): its first other word is the command.
    command = next((arg for arg in args if not arg.startswith("-")), None)
    return command is None or command not in _CORE_COMMANDS or command in _COMMANDS_OF_PLUGINS_SHOWN


def main(argv: list[str] | None = None) -> int:
    """Run the ``artifactstore`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code.

    The console script calls it through :func:`artifactstore_core.cli_main.main`, which also turns a Ctrl-C
    during the import of this module into ``aborted``.

    Raises nothing for a command's failure (an error line on stderr and a code instead); Ctrl-C at any
    point after the imports prints ``aborted`` and returns :data:`INTERRUPTED_EXIT_CODE`. SIGTERM or SIGHUP
    (where their default action is in force) stop the command as Ctrl-C does, print ``aborted``, and then
    end the process by that signal.
    """
    _catch_stop_signals()
    try:
        return _run(argv)
    except (KeyboardInterrupt, click.exceptions.Abort) as exc:
        # click turns Ctrl-C in a command or prompt into Abort (from the KeyboardInterrupt); a declined
        # confirmation is an Abort of its own, which keeps code 1.
        interruption = _interruption(exc)
        with suppress(OSError, ValueError):
            stderr.print("aborted", markup=False)
        if isinstance(interruption, _StopSignal):
            return _end_by(interruption.signum)
        return 1 if interruption is None else INTERRUPTED_EXIT_CODE


def _run(argv: list[str] | None) -> int:
    if _needs_plugin_commands(sys.argv[1:] if argv is None else argv):
        try:
            _load_plugin_commands()
        except errors.ArtifactStoreError as exc:
            stderr.print(f"note: plugin commands unavailable: {exc}", markup=False)
    try:
        # Without standalone mode click returns the code given to ctx.exit() instead of exiting.
        result = cli.main(args=argv, prog_name="artifactstore", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        try:
            exc.show(file=cast(IO[Any], _VisibleLines(sys.stderr)) if sys.stderr is not None else None)
        except OSError:  # stderr cannot be written: the code is all the report left (see _MessageConsole)
            _drop_stream(sys.stderr)
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
