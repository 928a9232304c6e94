"""The shared launcher of test servers: ready before use, fails fast and clearly, and leaves nothing running."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from artifactstore_core.testing_servers import (
    LOOPBACK,
    ServerStartError,
    ServerSubprocess,
    accepts_connections,
    can_bind,
    fork_child,
    free_port,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    stop_process,
    wait_child,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


class HttpServer(ServerSubprocess):
    """The standard library's file server on a loopback port: the smallest real server there is."""

    name = "http.server"

    def __init__(self, directory: Path) -> None:
        super().__init__(log_path=directory / "http.log")
        self.directory = directory

    def start(self) -> HttpServer:
        args = ["--bind", LOOPBACK, "--directory", str(self.directory), str(self.port)]
        self.spawn([sys.executable, "-m", "http.server", *args])
        return self


class Program(ServerSubprocess):
    """Any Python snippet as a "server", awaited by a given condition."""

    name = "snippet"

    def __init__(self, code: str, tmp_path: Path, *, timeout: float = 30.0, ready: str | None = None) -> None:
        super().__init__(log_path=tmp_path / "snippet.log")
        self.code = code
        self.timeout = timeout
        self.ready_line = ready

    def start(self) -> Program:
        ready = None if self.ready_line is None else (lambda: self.ready_line in self.log)
        self.spawn([sys.executable, "-u", "-c", self.code], ready=ready, timeout=self.timeout)
        return self


def gone(pid: int) -> bool:
    """Whether no process (not even a zombie awaiting its parent) has this id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_server_is_ready_when_started_and_gone_when_stopped(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello")
    with HttpServer(tmp_path) as server:
        assert server.running
        pid = server.pid
        # Ready means ready: the first request is answered, no retry or sleep.
        with urllib.request.urlopen(f"http://{LOOPBACK}:{server.port}/hello.txt", timeout=10) as response:
            assert response.read() == b"hello"
    assert not server.running
    assert gone(pid)
    assert not accepts_connections(server.port)
    server.stop()  # stopping twice is harmless


def test_a_stopped_server_starts_again_on_its_port(tmp_path: Path) -> None:
    server = HttpServer(tmp_path)
    port = server.port
    try:
        first = server.start().pid
        with pytest.raises(ServerStartError, match="already running"):
            server.start()
        server.stop()
        assert server.start().port == port
        assert server.pid != first
        assert accepts_connections(port)
    finally:
        server.stop()
    assert gone(server.pid)


def test_a_process_that_exits_at_once_fails_fast_with_its_status_and_log(tmp_path: Path) -> None:
    program = Program("import sys; print('bad option --frobnicate'); sys.exit(3)", tmp_path, timeout=30)
    began = time.monotonic()
    with pytest.raises(ServerStartError, match=r"exited with 3") as caught:
        program.start()
    # Well under the 30 s deadline: the exit is noticed, not waited out.
    assert time.monotonic() - began < 10
    assert "bad option --frobnicate" in str(caught.value)
    assert gone(program.pid)


def test_a_server_that_never_gets_ready_is_stopped_after_the_deadline(tmp_path: Path) -> None:
    program = Program("import time; print('up, never listening'); time.sleep(600)", tmp_path, timeout=1.0)
    with pytest.raises(ServerStartError, match=r"timed out after 1.0 s waiting for snippet on port \d+") as caught:
        program.start()
    assert "up, never listening" in str(caught.value)
    assert gone(program.pid)  # a failed start leaves nothing running


def test_a_program_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    class Missing(ServerSubprocess):
        name = "missing"

        def start(self) -> Missing:
            self.spawn([str(tmp_path / "no-such-server")])
            return self

    with pytest.raises(ServerStartError, match=r"could not run missing .*no-such-server"):
        Missing().start()


def test_a_server_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready')\ntime.sleep(600)"
    program = Program(code, tmp_path, ready="ready")
    program.stop_timeout = 0.5
    program.start()
    began = time.monotonic()
    program.stop()
    assert time.monotonic() - began < 5
    assert gone(program.pid)
    assert program.process is not None
    assert program.process.returncode == -9


def test_a_launcher_names_its_own_error_class(tmp_path: Path) -> None:
    class CustomError(ServerStartError):
        """A launcher's own error."""

    class Custom(Program):
        error = CustomError

    with pytest.raises(CustomError):
        Custom("raise SystemExit(1)", tmp_path).start()
    with pytest.raises(CustomError, match="has not been started"):
        _ = Custom("", tmp_path).pid


def test_free_port_is_free_and_honours_avoid_and_accept() -> None:
    port = free_port()
    assert can_bind(port)
    assert not accepts_connections(port)
    odd = free_port(accept=lambda candidate: candidate % 2 == 1, avoid={port})
    assert odd % 2 == 1
    assert odd != port
    with pytest.raises(ServerStartError, match="no free loopback port"):
        free_port(accept=lambda candidate: False)


def test_can_bind_is_false_for_a_port_in_use() -> None:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(1)
        port = int(sock.getsockname()[1])
        assert not can_bind(port)
        assert accepts_connections(port)


def test_wait_for_raises_the_named_error_with_detail() -> None:
    with pytest.raises(TimeoutError, match=r"timed out after 0.05 s waiting for nothing: see the log"):
        wait_for(lambda: False, "nothing", 0.05, error=TimeoutError, detail=lambda: ": see the log")
    calls = iter([False, False, True])
    wait_for(lambda: next(calls), "the third poll", 5)


def test_stop_process_accepts_none_and_exited_processes(tmp_path: Path) -> None:
    stop_process(None)
    program = Program("pass", tmp_path)
    with pytest.raises(ServerStartError):
        program.start()
    stop_process(program.process)
    assert program.process is not None
    assert program.process.returncode == 0


@pytest.mark.timeout(60)
def test_fork_child_reports_a_child_that_hangs_or_fails() -> None:
    wait_child(fork_child(lambda: None, deadline=10))
    with pytest.raises(AssertionError, match=r"^the child's call failed \(exit status 1"):
        wait_child(fork_child(lambda: 1 / 0, deadline=10), "the child's call")
    never = threading.Event()  # never set: the child waits until its deadline ends it
    with pytest.raises(AssertionError, match=r"hung \(killed by signal 14\)"):
        wait_child(fork_child(never.wait, deadline=1))


def test_the_peak_rss_is_measured_from_a_reset() -> None:
    # What the streaming tests and the benchmark rely on: after a reset the peak is the current size, and it
    # rises with what is allocated next (and falls back to it once that is freed: not the lifetime peak).
    exact = reset_peak_rss()
    assert exact  # Linux, where the tests run
    before = rss_bytes()
    assert peak_rss_bytes(exact) < before + 16 * 1024 * 1024
    block = bytearray(64 * 1024 * 1024)  # zero-filled by the allocator, so touched: resident
    block[::4096] = b"\x01" * len(block[::4096])
    assert peak_rss_bytes(exact) >= before + 60 * 1024 * 1024
    del block
    assert reset_peak_rss()
    assert peak_rss_bytes(True) < before + 16 * 1024 * 1024
    with pytest.raises(LookupError):
        rss_bytes("VmNoSuchField")
