"""Server processes for tests and benchmarks: a free loopback port, a subprocess polled until it is ready
(with a deadline), and stopped for sure.

The plugins' launchers (``artifactstore_redis.testing.RedisServer``, ``artifactstore_http.testing``'s
``ServerProcess``, ``artifactstore_s3.testing.MotoServer``) are built on it, and a third-party backend can
build its own the same way::

    class MyServer(ServerSubprocess):
        name = "my-server"

        def start(self) -> MyServer:
            self.spawn([binary, "--bind", LOOPBACK, "--port", str(self.port)])
            return self

    with MyServer() as server:
        ...  # a store on server.port

Servers bind 127.0.0.1 only; whoever starts one stops it (``stop()`` or the ``with`` block). Waiting is
polling a condition against a deadline, never a fixed sleep; a process that exits while it is awaited
fails at once with its exit status and the tail of its log, not after the deadline. Failures raise
:class:`ServerStartError` (or the subclass a launcher names in :attr:`ServerSubprocess.error`), which fails
the calling test; nothing here skips.

Standard library only, so importing it adds no dependency to the core (unlike the conformance kit in
``artifactstore_core.testing``, which needs pytest and Hypothesis); :func:`self_signed_certificate` alone
needs the ``cryptography`` package, imported when it is called.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "LOOPBACK",
    "READY_TIMEOUT",
    "STOP_TIMEOUT",
    "ServerStartError",
    "ServerSubprocess",
    "accepts_connections",
    "can_bind",
    "fork_child",
    "free_port",
    "in_thread",
    "peak_rss_bytes",
    "reset_peak_rss",
    "rss_bytes",
    "self_signed_certificate",
    "stop_process",
    "wait_child",
    "wait_for",
]

#: The only address test servers bind.
LOOPBACK = "127.0.0.1"
#: Default seconds a server has to become ready.
READY_TIMEOUT = 30.0
#: Default seconds a server has to exit after SIGTERM (and again after SIGKILL).
STOP_TIMEOUT = 10.0


class ServerStartError(RuntimeError):
    """A test server could not be started, exited before it was ready, or a condition was not reached in
    time."""


def can_bind(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP socket can bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(*, avoid: Collection[int] = (), accept: Callable[[int], bool] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now, not in ``avoid``, and for which ``accept`` (if given) holds.

    The port is only free when asked: a server should bind it soon after (or bind a socket itself and pass
    it on, as the http launcher does). Raises :class:`ServerStartError` when 200 ports from the kernel were
    all refused.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port in avoid or (accept is not None and not accept(port)):
            continue
        return port
    raise ServerStartError("no free loopback port found")


def accepts_connections(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now (the connection is closed at once)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def fork_child(call: Callable[[], object], *, deadline: int) -> int:
    """Run ``call`` in a child made by ``os.fork()`` (POSIX only); return its pid, for :func:`wait_child`.

    For tests of fork safety, where the defect is a child that hangs (a lock or a thread pool inherited in
    the state of the fork): ``SIGALRM`` ends the child after ``deadline`` seconds, so the test reports the
    hang instead of hanging. The child exits 0 when ``call`` returns and 1 (its traceback on stderr) when
    it raises, never returning into the test's code. Raises ``OSError`` if the fork fails.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(deadline)
            call()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, what: str = "the forked child") -> None:
    """Wait for a child of :func:`fork_child`.

    Raises:
        AssertionError: the child hung (ended by its deadline's ``SIGALRM`` or another signal) or its call
            raised; the message starts with ``what``.
    """
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"{what} hung (killed by signal {os.WTERMSIG(status)})")
    if os.WEXITSTATUS(status) != 0:
        raise AssertionError(f"{what} failed (exit status {os.WEXITSTATUS(status)}; its traceback is on stderr)")


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException | None]]:
    """Start ``call`` in a new daemon thread, for a test that acts on what it does while it runs.

    Returns the thread and a list that receives, when ``call`` ends, what it raised or ``None``: the test
    joins the thread (with a timeout) and asserts on that. Raises nothing itself.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout: float = READY_TIMEOUT,
    *,
    error: type[Exception] = ServerStartError,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` every ``interval`` seconds until it holds.

    Raises ``error`` (:class:`ServerStartError` by default) naming ``what`` after ``timeout`` seconds, with
    ``detail()`` appended (a log, say). An exception raised by ``condition`` propagates at once: that is how
    a condition says it can never hold (a process it awaits has exited).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout} s waiting for {what}{detail() if detail else ''}")
        time.sleep(interval)  # polling a condition with a deadline


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    """Stop ``process`` and reap it: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL and wait again.

    Does nothing for ``None`` or a process that has already exited (beyond reaping it). Raises
    :class:`subprocess.TimeoutExpired` only if the process outlives SIGKILL by ``timeout`` seconds.
    """
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class ServerSubprocess:
    """One server subprocess on 127.0.0.1, started by :meth:`start` and stopped by :meth:`stop` (or a
    ``with`` block, which does both).

    A launcher subclasses it: it sets :attr:`name` (for messages), implements :meth:`start` with
    :meth:`spawn`, and may set :attr:`error` to its own subclass of :class:`ServerStartError`. The port is
    chosen when the object is made (``port=None``: a free one), so that a stopped server can be started
    again on the same port.
    """

    #: What the server is called in error messages.
    name = "server"
    #: What failures raise.
    error: type[ServerStartError] = ServerStartError
    #: Seconds :meth:`stop` waits after SIGTERM (and after SIGKILL).
    stop_timeout = STOP_TIMEOUT
    #: How many characters of the log an error message shows.
    log_tail = 4000

    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port if port is not None else free_port()
        #: Where the process's output goes (``None``: discarded); its tail is quoted when it fails.
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the server and return it once it is ready; a subclass implements it with :meth:`spawn`.

        Raises :attr:`error` when it cannot start, exits, or is not ready in time.
        """
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The process id; raises :class:`ServerStartError` before :meth:`start`."""
        if self.process is None:
            raise self.error(f"{self.name} has not been started")
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> str:
        """The tail of the process's log ("" when there is none)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-self.log_tail :]

    def spawn(
        self,
        args: Sequence[str],
        *,
        ready: Callable[[], bool] | None = None,
        what: str | None = None,
        timeout: float = READY_TIMEOUT,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """Start ``args`` (output to :attr:`log_path`) and wait until ``ready`` holds (default: the port
        accepts connections).

        Raises :attr:`error` when the program cannot be run, exits before it is ready (at once, with its
        status and log), or is not ready within ``timeout`` seconds (the process is stopped first, so a
        failed start leaves nothing running); and when this object's process is still running (stop it
        first: a second one would be left behind).
        """
        if self.running:
            raise self.error(f"{self.name} on port {self.port} is already running (pid {self.pid})")
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            log = self.log_path.open("ab")
        try:
            # The launcher's own program and arguments, never a shell.
            self.process = subprocess.Popen(  # noqa: S603
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                cwd=cwd,
                pass_fds=tuple(pass_fds),
            )
        except OSError as exc:
            raise self.error(f"could not run {self.name} ({args[0]}): {exc}") from exc
        finally:
            if not isinstance(log, int):
                log.close()  # the child holds its own descriptor
        try:
            self.wait_until(ready or (lambda: accepts_connections(self.port)), what or self._default_what(), timeout)
        except BaseException:
            self.stop()
            raise

    def _default_what(self) -> str:
        return f"{self.name} on port {self.port} to accept connections"

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``condition`` until it holds, while the process runs.

        Raises :attr:`error` at once if the process has exited (with its status and log), or after
        ``timeout`` seconds (with the log).
        """

        def check() -> bool:
            if self.process is None or self.process.poll() is not None:
                status = "was never started" if self.process is None else f"exited with {self.process.returncode}"
                raise self.error(f"{self.name} {status} while waiting for {what}{self._log_suffix()}")
            return condition()

        wait_for(check, what, timeout, error=self.error, detail=self._log_suffix)

    def _log_suffix(self) -> str:
        log = self.log
        return f":\n{log}" if log else ""

    def kill(self) -> None:
        """SIGKILL the process (no shutdown of any kind) and reap it."""
        if self.process is None:
            raise self.error(f"{self.name} has not been started")
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=self.stop_timeout)

    def stop(self) -> None:
        """Stop the process if it runs: SIGTERM, then SIGKILL after :attr:`stop_timeout` seconds; reaped."""
        stop_process(self.process, self.stop_timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself (a CA too, so it can also verify itself as a client's
    certificate), and its unencrypted key: ``(directory / "cert.pem", directory / "key.pem")``, PEM files.

    For TLS tests of a backend against a server on loopback (a server that must not verify, or one whose CA
    and client certificate this is). Valid from five minutes ago for one day.

    Raises:
        ImportError: the ``cryptography`` package is not installed.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


# -- memory of this process (the streaming tests and benchmarks measure what a transfer costs) ---------------


def rss_bytes(field: str = "VmRSS") -> int:
    """A size from this process's ``/proc/self/status`` in bytes: ``VmRSS`` (resident now) or ``VmHWM`` (the
    resident high-water mark).

    Raises:
        OSError: no ``/proc`` (not Linux).
        LookupError: the status has no such field.
    """
    with open("/proc/self/status", encoding="ascii") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark to what is resident now, so that :func:`peak_rss_bytes`
    measures what comes next (Linux: ``5`` written to ``/proc/self/clear_refs``); ``False`` where that is not
    possible, and the peak is then the process's lifetime one (an overestimate, never an underestimate)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(exact: bool) -> int:
    """The resident high-water mark in bytes: ``VmHWM`` when ``exact`` (:func:`reset_peak_rss` succeeded),
    else the lifetime peak (``ru_maxrss``)."""
    if exact:
        return rss_bytes("VmHWM")
    import resource  # not on Windows, where exact is never true either

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
