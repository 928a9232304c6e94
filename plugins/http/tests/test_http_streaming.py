"""Streaming through the http client: save_stream spools to a temporary file, open streams and verifies.

Against real artifact servers under uvicorn on loopback, and against hostile stand-ins (raw sockets on
loopback) that send a damaged, short, long or interrupted body.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest
from pydantic import SecretStr

from artifactstore_core import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactExistsError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    Codec,
    ConfigurationError,
    Message,
    PayloadTooLargeError,
    SerializationError,
    StoreClosedError,
)
from artifactstore_core.settings import load_settings
from artifactstore_core.testing_servers import LOOPBACK
from artifactstore_http import HttpSettings, HttpStore
from artifactstore_http.protocol import MEDIA_TYPE_ENVELOPE, PROTOCOL_HEADER, PROTOCOL_VERSION
from artifactstore_http.testing import TOKEN, HoldingProxy, MakeClient, ServerThread, bound_socket, client_for

MIB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from one MiB to the next (a misplaced chunk cannot go unnoticed)."""
    return bytes(itertools.islice(itertools.cycle(range(251)), seed, seed + size))


def read_in_chunks(handle: IO[bytes], size: int) -> tuple[bytes, BaseException | None]:
    """Everything ``handle`` yields in reads of ``size`` bytes, and the error that ended them (if any)."""
    parts: list[bytes] = []
    try:
        while chunk := handle.read(size):
            parts.append(chunk)
    except Exception as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


def read_exactly(handle: IO[bytes], size: int) -> tuple[bytes, BaseException | None]:
    """Reads of ``handle`` until it gave ``size`` bytes (never the read of its end), and the error that ended them."""
    got = b""
    try:
        while len(got) < size:
            got += handle.read(min(65536, size - len(got)))
    except Exception as exc:
        return got, exc
    return got, None


def spool_files(spool: Path) -> list[str]:
    """The names in ``spool`` and the open descriptors of this process that point into it."""
    names = os.listdir(spool)
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(spool)):
            fds.append(target)
    return names + fds


# -- round trips ----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_large_round_trip_streams_both_ways(make_client: MakeClient, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = make_client("stream-large", spool_dir=str(spool))
    payload = pattern(20 * MIB + 3)
    store.save_stream("big", io.BytesIO(payload), metadata={"k": 1})
    assert spool_files(spool) == []
    info = store.info("big")
    assert info.size == len(payload)
    header, stream = store.open_with_header("big")
    assert (header.size, header.codec, header.compression, header.metadata) == (len(payload), "bytes", None, {"k": 1})
    with stream:
        assert not stream.seekable()
        data, error = read_in_chunks(stream, 100_003)
    assert error is None
    assert data == payload
    assert store.get("big").content == payload
    # Write-once holds for the streamed path: the same bytes again are a no-op, other bytes are refused.
    store.save_stream("big", io.BytesIO(payload), metadata={"k": 1})
    with pytest.raises(ArtifactExistsError):
        store.save_stream("big", io.BytesIO(pattern(2 * MIB, seed=7)))
    store.save_stream("big", io.BytesIO(pattern(2 * MIB, seed=7)), overwrite=True)
    assert store.get("big").content == pattern(2 * MIB, seed=7)
    assert spool_files(spool) == []


@pytest.mark.timeout(60)
def test_the_spool_is_used_and_has_no_name(make_client: MakeClient, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    seen: list[list[str]] = []

    class Watching(io.RawIOBase):
        """3 MiB that look at the spool directory while they are read."""

        def __init__(self) -> None:
            self._data = io.BytesIO(pattern(3 * MIB))

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            seen.append(spool_files(spool))
            return self._data.readinto(buffer)

    store = make_client("spool-used", spool_dir=str(spool))
    store.save_stream("watched", cast(IO[bytes], Watching()))
    assert store.get("watched").content == pattern(3 * MIB)
    # Past the first MiB a file is open in the spool directory, and it has no name there.
    assert any(files for files in seen)
    assert all(target.endswith("(deleted)") for files in seen for target in files)
    assert spool_files(spool) == []


@pytest.mark.timeout(60)
def test_spool_files_are_gone_after_every_failure(make_client: MakeClient, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = make_client("spool-failures", spool_dir=str(spool), retries=0)

    class FailingLate(io.RawIOBase):
        """3 MiB, then the source fails."""

        def __init__(self) -> None:
            self._left = 3 * MIB

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if not self._left:
                raise OSError(5, "Input/output error")
            count = min(len(buffer), self._left)
            buffer[:count] = b"\x01" * count
            self._left -= count
            return count

    with pytest.raises(SerializationError) as info:
        store.save_stream("failing", cast(IO[bytes], FailingLate()))
    assert isinstance(info.value.__cause__, OSError)
    assert spool_files(spool) == []
    # Over the server's limit (32 MiB): refused one byte past it, nothing sent.
    with pytest.raises(PayloadTooLargeError, match="Nothing was sent"):
        store.save_stream("too-large", io.BytesIO(bytes(32 * MIB + 1)))
    assert spool_files(spool) == []
    # Refused by the server after the whole spool was sent.
    store.save_stream("exists", io.BytesIO(pattern(2 * MIB)))
    with pytest.raises(ArtifactExistsError):
        store.save_stream("exists", io.BytesIO(pattern(2 * MIB, seed=3)))
    assert spool_files(spool) == []
    assert not store.exists("failing")
    assert not store.exists("too-large")


@pytest.mark.timeout(60)
def test_an_unusable_spool_directory_names_the_setting(make_client: MakeClient, tmp_path: Path) -> None:
    store = make_client("spool-missing", spool_dir=str(tmp_path / "missing"))
    store.save_stream("small", io.BytesIO(b"small streams need no spool"))
    with pytest.raises(BackendError, match="ARTIFACT_STORE_HTTP_SPOOL_DIR") as info:
        store.save_stream("large", io.BytesIO(pattern(2 * MIB)))
    assert not info.value.retryable
    assert not store.exists("large")


# -- connections ----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_open_stream_gives_its_connection_back(make_client: MakeClient) -> None:
    # One connection: a stream that kept it would make the next request wait out the pool timeout.
    store = make_client("open-release", pool_size=1, read_timeout=5.0)
    payload = pattern(8 * MIB)
    store.save("big", Message(content=payload))
    sockets = store._sockets
    # Closed early: the connection is closed (its body unread), and the client is lent again.
    with store.open("big") as handle:
        assert handle.read(10) == payload[:10]
    assert not sockets._open
    assert store.get("big").content == payload
    # Read to its end and never closed: handed back at the end.
    handle = store.open("big")
    assert handle.read() == payload
    assert store.exists("big")
    handle.close()
    # Abandoned: released when it is collected.
    handle = store.open("big")
    handle.read(1)
    del handle
    gc.collect()
    assert store.get("big").content == payload
    # Many streams in turn, each closed: none is left holding a connection.
    for _ in range(20):
        with store.open("big") as handle:
            handle.read(MIB)
    assert len(sockets._open) <= 1
    assert store.get("big").content == payload


@pytest.mark.timeout(60)
def test_closing_the_store_ends_an_open_stream(make_client: MakeClient) -> None:
    store = make_client("open-closed")
    store.save("big", Message(content=pattern(24 * MIB)))
    handle = store.open("big")
    handle.read(MIB)
    store.close()
    data, error = read_in_chunks(handle, MIB)
    assert isinstance(error, StoreClosedError), repr(error)
    assert len(data) < 23 * MIB
    handle.close()


# -- hostile servers ------------------------------------------------------------------------------------


class CannedServer:
    """A raw HTTP server on loopback that answers each request with ``answer`` as it is, then ends the
    connection: ``"close"`` (FIN), ``"reset"`` (RST) or ``"hold"`` (kept open, silent, until stopped)."""

    def __init__(self, answer: bytes, end: str = "close") -> None:
        self.answer = answer
        self.end = end
        self.listener = bound_socket()
        self.listener.listen(8)
        self.port = int(self.listener.getsockname()[1])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.stopping.is_set():
                conn.close()
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                try:
                    conn.sendall(self.answer)
                except OSError:
                    continue
                if self.end == "hold":
                    self.stopping.wait(60)
                elif self.end == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def stop(self) -> None:
        self.stopping.set()
        # Wake the accept() call (closing a socket does not interrupt it in another thread).
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass
        self.thread.join(timeout=30)
        self.listener.close()
        assert not self.thread.is_alive()


def envelope(payload: bytes, step_id: str = "a") -> tuple[bytes, bytes]:
    encoded = Codec().encode(Message(content=payload), place=("default", step_id))
    return encoded.head, encoded.payload


def answer(body: bytes, framing: str, length: int | None = None) -> bytes:
    """An artifact server's 200 envelope answer carrying ``body``: framed by ``Content-Length`` (``length``,
    or the body's own), by chunks, or by the closing of the connection alone."""
    lines = [
        "HTTP/1.1 200 OK",
        f"Content-Type: {MEDIA_TYPE_ENVELOPE}",
        f"{PROTOCOL_HEADER}: {PROTOCOL_VERSION}",
    ]
    if framing == "length":
        lines.append(f"Content-Length: {len(body) if length is None else length}")
        framed = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        step = 64 * 1024
        framed = b"".join(
            b"%x\r\n" % len(body[i : i + step]) + body[i : i + step] + b"\r\n" for i in range(0, len(body), step)
        )
        framed += b"0\r\n\r\n"
    else:
        lines.append("Connection: close")
        framed = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + framed


@contextlib.contextmanager
def hostile(body: bytes, framing: str, *, end: str = "close", **overrides: Any) -> Iterator[HttpStore]:
    """A client (no retries) of a :class:`CannedServer` answering every request with ``answer(body, framing)``."""
    server = CannedServer(answer(body, framing, overrides.pop("length", None)), end)
    try:
        with client_for(server.url, **{"retries": 0, **overrides}) as store:
            yield store
    finally:
        server.stop()


def open_and_read(store: HttpStore, size: int = 100_000) -> tuple[bytes, BaseException | None]:
    """What ``store.open("a")`` yields in reads of ``size`` bytes, and the error of the open or a read."""
    try:
        handle = store.open("a")
    except Exception as exc:
        return b"", exc
    with handle:
        return read_in_chunks(handle, size)


PAYLOAD = pattern(3 * MIB + 11)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_damaged_payload_is_never_read_as_a_success(framing: str) -> None:
    head, payload = envelope(PAYLOAD)
    damaged = bytearray(payload)
    damaged[-1] ^= 0x01  # in the last chunk: the read that would return it raises instead
    with hostile(head + bytes(damaged), framing) as store:
        # A caller that reads exactly the payload's size and never reads the end gets the error too.
        handle = store.open("a")
        got, error = read_exactly(handle, len(PAYLOAD))
        assert isinstance(error, ArtifactCorruptedError), repr(error)
        assert "fails verification" in str(error)
        assert len(got) < len(PAYLOAD)
        assert (error.step_id, error.backend) == ("a", "http")
        with pytest.raises(ArtifactCorruptedError):
            handle.read(1)  # every later read raises it again
        handle.close()
    damaged = bytearray(payload)
    damaged[MIB] ^= 0x01
    with hostile(head + bytes(damaged), framing) as store:
        data, error = open_and_read(store)
    assert isinstance(error, ArtifactCorruptedError), repr(error)
    assert len(data) < len(PAYLOAD)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_a_body_longer_than_its_header_says_is_corrupt(framing: str) -> None:
    head, payload = envelope(PAYLOAD)
    with hostile(head + payload + b"more", framing) as store:
        data, error = open_and_read(store)
    assert isinstance(error, ArtifactCorruptedError), repr(error)
    assert len(data) < len(PAYLOAD)


@pytest.mark.timeout(60)
def test_a_chunked_body_that_ends_short_is_corrupt() -> None:
    head, payload = envelope(PAYLOAD)
    with hostile(head + payload[:-100], "chunked") as store:
        data, error = open_and_read(store)
    assert isinstance(error, ArtifactCorruptedError), repr(error)
    assert len(data) < len(PAYLOAD)
    # The reader's finding, worded as its other findings are: the server, then what failed.
    assert "a payload that fails verification: payload is" in str(error)
    assert f"is {len(PAYLOAD) - 100} bytes; its header says {len(PAYLOAD)}" in str(error)
    assert (error.step_id, error.backend) == ("a", "http")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", ["close", "reset"])
@pytest.mark.parametrize("framing", ["length", "close"])
def test_a_body_cut_short_is_a_dropped_connection(framing: str, end: str) -> None:
    # Content-Length says the whole envelope (or nothing does); the connection ends halfway through the payload.
    head, payload = envelope(PAYLOAD)
    body = head + payload[: len(payload) // 2]
    length = len(head) + len(payload) if framing == "length" else None
    with hostile(body, framing, end=end, length=length) as store:
        data, error = open_and_read(store)
    assert isinstance(error, BackendUnavailableError), repr(error)
    assert error.retryable
    assert (error.step_id, error.namespace, error.backend) == ("a", "default", "http")
    assert len(data) <= len(payload) // 2


@pytest.mark.timeout(60)
def test_a_server_that_stalls_midway_is_a_timeout() -> None:
    head, payload = envelope(PAYLOAD)
    body = head + payload[: len(payload) // 2]
    with hostile(body, "length", end="hold", length=len(head) + len(payload), read_timeout=0.5) as store:
        data, error = open_and_read(store)
    assert isinstance(error, BackendTimeoutError), repr(error)
    assert len(data) <= len(payload) // 2


@pytest.mark.timeout(60)
def test_a_head_over_the_limits_is_refused_before_the_payload_is_read() -> None:
    head, payload = envelope(pattern(2 * MIB))
    with hostile(head + payload, "chunked", max_body_bytes=MIB) as store:
        data, error = open_and_read(store)
    assert isinstance(error, PayloadTooLargeError), repr(error)
    assert "ARTIFACT_STORE_HTTP_MAX_BODY_BYTES" in str(error)
    assert data == b""


# -- retries --------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_save_stream_retried_after_a_reset_sends_the_whole_spool_again(
    memory_server: ServerThread, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    payload = pattern(12 * MIB + 5)
    proxy = HoldingProxy(memory_server.port, hold_after=6 * MIB, reset_once=True).start()
    try:
        with client_for(proxy.url, "reset-retry", retries=2, spool_dir=str(spool)) as store:
            store.save_stream("retried", io.BytesIO(payload))
            assert proxy.resets == 1
            # The attempt after the reset sent the head and the whole payload from the start of the spool: the
            # server verified its digest, and the content is whole.
            assert max(proxy.sent) >= len(payload)
            assert store.get("retried").content == payload
            store.clear()
    finally:
        proxy.stop()
    assert spool_files(spool) == []


@pytest.mark.timeout(120)
def test_save_stream_without_retries_fails_typed_after_a_reset(memory_server: ServerThread, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    proxy = HoldingProxy(memory_server.port, hold_after=6 * MIB, reset_once=True).start()
    try:
        with client_for(proxy.url, "reset-fail", retries=0, spool_dir=str(spool)) as store:
            with pytest.raises(BackendUnavailableError) as info:
                store.save_stream("lost", io.BytesIO(pattern(12 * MIB)))
            assert info.value.step_id == "lost"
            assert not store.exists("lost")
    finally:
        proxy.stop()
    assert spool_files(spool) == []


@pytest.mark.timeout(60)
def test_a_request_while_every_connection_is_held_says_nothing_was_sent(filesystem_server: ServerThread) -> None:
    # An open stream holds a connection: with POOL_SIZE=1 the next request of the same store waits for it and
    # times out. It said "the operation may have happened", though nothing had been sent.
    with client_for(filesystem_server.url, "pool-held", pool_size=1, read_timeout=1.0, retries=0) as store:
        store.save("src", Message(content=bytes(3 * MIB)), overwrite=True)
        with store.open("src") as held:
            assert held.read(1) == b"\0"
            with pytest.raises(BackendTimeoutError, match="nothing was sent") as info:
                store.exists("src")
        assert "ARTIFACT_STORE_HTTP_POOL_SIZE" in str(info.value)
        assert "may have happened" not in str(info.value)
        assert store.exists("src")  # closing the stream gave its connection back


@pytest.mark.timeout(30)
def test_a_stream_collected_while_its_pool_is_locked_gives_its_connection_back(filesystem_server: ServerThread) -> None:
    # A stream nobody closed, held only by a reference cycle, is closed by the garbage collector, which may run
    # in a thread that holds the pool's lock (any allocation there can start a collection); handing the
    # connection back takes that lock again, and a plain lock deadlocked the thread.
    with client_for(filesystem_server.url, "gc-locked", pool_size=1) as store:
        store.save("a", Message(content=bytes(3 * MIB)), overwrite=True)
        stream = store.open("a")
        assert stream.read(1) == b"\0"
        cycle: list[Any] = [stream]
        cycle.append(cycle)
        del stream, cycle
        with store._clients._lock:
            gc.collect()
        assert store.exists("a")  # the only connection is free again


@pytest.mark.timeout(120)
def test_an_empty_spool_directory_setting_is_refused_not_the_working_directory(
    memory_server: ServerThread, tmp_path: Path
) -> None:
    # `ARTIFACT_STORE_HTTP_SPOOL_DIR=$UNSET` in a script: tempfile takes "" for the working directory, so the
    # CLI spooled a large put there (and a failure named the system's temporary directory instead).
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    source = tmp_path / "large.bin"
    source.write_bytes(pattern(2 * MIB))
    env = {name: value for name, value in os.environ.items() if not name.startswith("ARTIFACT_STORE_")}
    env.update(
        ARTIFACT_STORE_BACKEND="http",
        ARTIFACT_STORE_HTTP_ENDPOINT=memory_server.url,
        ARTIFACT_STORE_HTTP_TOKEN=TOKEN,
        ARTIFACT_STORE_NAMESPACE="spool-empty",
        ARTIFACT_STORE_HTTP_SPOOL_DIR="",
    )
    script = Path(sys.executable).parent / "artifactstore"
    result = subprocess.run(
        [str(script), "put", "large", str(source)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 5, result.stderr
    assert "ARTIFACT_STORE_HTTP_SPOOL_DIR" in result.stderr
    assert "set but empty" in result.stderr
    assert TOKEN not in result.stderr
    with client_for(memory_server.url, "spool-empty") as store:
        assert not store.exists("large")
    with pytest.raises(ConfigurationError, match="ARTIFACT_STORE_HTTP_SPOOL_DIR"):
        load_settings(HttpSettings, endpoint=memory_server.url, spool_dir="  ")


def test_the_spool_directory_setting_expands_a_leading_tilde() -> None:
    # "~/spool" in a config file was used as a directory named "~" (the shell expands it only in the environment).
    from artifactstore_core.settings import load_settings
    from artifactstore_http import HttpSettings

    settings = load_settings(HttpSettings, spool_dir="~/artifact-spool")
    assert settings.spool_dir == str(Path.home() / "artifact-spool")


@pytest.mark.timeout(60)
def test_a_wrong_token_fails_save_stream_before_the_stream_is_spooled(memory_server: ServerThread) -> None:
    # The health probe asks no token: a large stream was read to its end and written to the spool (gigabytes,
    # on a disk that must hold them) before the save's own request met the 401.
    class Counting(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self._data = io.BytesIO(pattern(size))
            self.read_bytes = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            count = self._data.readinto(buffer)
            self.read_bytes += count
            return count

    stream = Counting(16 * MIB)  # within the server's limit (32 MiB), which the probe learns with no token
    wrong = SecretStr("a-wrong-token-0123456789")
    with client_for(memory_server.url, "wrong-token", token=wrong) as store, pytest.raises(AccessDeniedError):
        store.save_stream("big", cast(IO[bytes], stream))
    assert stream.read_bytes <= 2 * MIB  # the first MiB (a small stream is sent whole), not the 16
