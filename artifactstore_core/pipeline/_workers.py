"""The executor's own worker processes (``mode="processes"``).

``concurrent.futures.ProcessPoolExecutor`` has no public way to reach its processes, so stopping them on
Ctrl-C and telling which one died meant reading its private attributes. This pool owns its processes:
each worker is a ``multiprocessing`` process with a pipe of its own, given one step at a time (nothing is
queued in a worker, so a stopped worker never goes on to a step queued for it), and the pool knows which
step each one runs, how it ended, and whether it ever started.

What crosses the pipe is a :class:`~artifactstore_core.pipeline._runner.WorkerTask` one way and a small
:class:`~artifactstore_core.pipeline._runner.StepOutcome` (or the step's exception) the other way, sent by
``multiprocessing`` itself between this process and children it spawned. A task is sent by a thread of its
own: its ``functools.partial`` arguments may fill the pipe, and then the send waits for the worker to read
it, which a worker still importing the main module does only once that import ends (if ever).
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process as cfp
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from ._runner import StepOutcome, WorkerTask, run_in_worker

__all__ = ["WorkerDied", "WorkerPool"]

# How long a worker asked to stop (SIGTERM) may take before it is killed: a step may catch SIGTERM.
_TERMINATE_GRACE = 5.0
# How many bytes of pickled steps may wait in memory for workers to read them (a worker reads its step only once
# it has imported the main module): past it, no step is handed to a worker until one of those is read. Without
# it, starting N workers for N steps holding one large argument each held N pickled copies at once.
_SEND_BUDGET = 32 * 1024 * 1024
# Each worker leads a process group of its own (POSIX), which the processes its steps start join, so that
# stopping the worker stops them too.
_OWN_GROUPS = hasattr(os, "setpgid") and hasattr(os, "killpg")

# A spawned worker imports the main module before any code of this module runs in it, and so before it
# can watch this process: a slow or hung import (a model loaded at module level, a network call) would
# outlive a runner killed meanwhile. Until the worker says it is ready (its own watch runs by then), a
# watchdog does it: a small process of the interpreter alone (no site, no import of the user's code) that
# waits on a pipe from this process and on the worker's sentinel; a byte on the pipe stands it down, an
# end of file (this process is gone) makes it kill the worker, unless the worker has ended already.
_WATCHDOG = """\
import os, select, signal, sys
watch, sentinel, pid = map(int, sys.argv[1:])
ready = select.select([watch, sentinel], [], [])[0]
if sentinel not in ready and not os.read(watch, 1) and not select.select([sentinel], [], [], 0)[0]:
    os.kill(pid, signal.SIGKILL)
"""
_WATCHDOGS = os.name == "posix"


class RemoteTraceback(Exception):  # noqa: N818 - it is the traceback text, shown under the worker's exception
    """The traceback of an exception raised in a worker process, chained under it as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class WorkerDied:
    """How a worker process that died on its own ended, and the step it was running (if any)."""

    pid: int
    exitcode: int
    step_index: int | None
    #: False when it ended before it could take any step (it failed while starting).
    started: bool


@dataclass
class _Worker:
    process: BaseProcess
    conn: connection.Connection
    started: bool = False
    task: tuple[cf.Future[StepOutcome], WorkerTask] | None = None
    stopping: bool = False
    #: Its pipe is closed at the other end: only its sentinel is waited on until it has ended.
    hung_up: bool = False
    #: The watchdog that kills it if this process dies before it is ready, and the pipe that stands it down.
    watchdog: subprocess.Popen[bytes] | None = None
    watch: int | None = None
    #: The threads sending it a task that have not ended, and whether the pool is done with its pipe: the pipe
    #: is closed by whichever comes last (see :meth:`release`). Both under ``guard``.
    sends: int = 0
    released: bool = False
    guard: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        """Close the pool's end of its pipe, or leave that to the thread still sending on it. Raises nothing.

        A descriptor closed while another thread writes to it is free for the next file this process opens,
        and the rest of that write (a message is written in parts) would go there.
        """
        with self.guard:
            self.released = True
            if self.sends:
                return
        self.conn.close()

    def send(self, data: memoryview, sent: Callable[[], None]) -> None:
        """Send ``data`` (a pickled task) on a thread of its own, which calls ``sent`` once ``data`` is written or
        cannot be; when its end of the pipe is gone (the worker ended), it is left to the worker's sentinel to
        tell the pool. Raises what starting a thread raises (and then never calls ``sent``)."""
        with self.guard:
            self.sends += 1
        try:
            threading.Thread(target=self._send, args=(data, sent), name="artifactstore-send", daemon=True).start()
        except BaseException:
            with self.guard:
                self.sends -= 1
            raise

    def _send(self, data: memoryview, sent: Callable[[], None]) -> None:
        try:
            self.conn.send_bytes(data)
        except OSError:
            # Its end of the pipe is closed: it ended (or is ending) before it read its step, or was stopped. Its
            # sentinel wakes the pool, which fails the step as it does for any worker that dies.
            pass
        finally:
            sent()
            with self.guard:
                self.sends -= 1
                close = self.released and not self.sends
            if close:
                self.conn.close()

    def stand_down(self, *, reap: bool) -> None:
        """Tell the watchdog the worker is ready or ended (once), and with ``reap`` wait for it. Raises nothing."""
        if self.watch is not None:
            with contextlib.suppress(OSError):  # the watchdog has ended already
                os.write(self.watch, b"x")
            os.close(self.watch)
            self.watch = None
        if reap and self.watchdog is not None:
            with contextlib.suppress(Exception):
                self.watchdog.wait()
            self.watchdog = None


@dataclass
class _State:
    workers: list[_Worker] = field(default_factory=list)
    pending: deque[tuple[cf.Future[StepOutcome], WorkerTask]] = field(default_factory=deque)
    died: list[WorkerDied] = field(default_factory=list)
    closing: bool = False
    #: :meth:`WorkerPool.terminate` was called: no step is waited for any more.
    terminated: bool = False


class WorkerPool(cf.Executor):
    """At most ``size`` worker processes, started on demand with ``context`` (spawn), one step each at a time.

    ``submit`` takes only :func:`~artifactstore_core.pipeline._runner.run_in_worker` and a task. A thread
    of this process waits on every worker's pipe and process sentinel: it hands pending tasks to idle
    workers and completes each future with the outcome, the step's exception (with the worker's traceback
    chained under it), or ``BrokenProcessPool`` when the worker running it died; the other workers go on.
    """

    def __init__(self, size: int, context: SpawnContext) -> None:
        self._size = size
        self._context = context
        self._lock = threading.Lock()
        self._state = _State()
        self._any_started = False
        #: Bytes of pickled steps handed to send threads and not yet read by their workers (see _SEND_BUDGET).
        self._unsent = 0
        self._wake_reader, self._wake_writer = context.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._serve, name="artifactstore-workers", daemon=True)
        self._thread.start()

    # -- the executor's side ---------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Queue ``run_in_worker(task)``; the future completes as described in the class docstring.

        Raises:
            RuntimeError: after :meth:`shutdown` or :meth:`terminate`.
            TypeError: anything but ``run_in_worker`` with one ``WorkerTask``.
        """
        if fn is not run_in_worker or kwargs or len(args) != 1 or not isinstance(args[0], WorkerTask):
            raise TypeError("WorkerPool runs only run_in_worker(task)")
        future: cf.Future[StepOutcome] = cf.Future()
        with self._lock:
            if self._state.closing:
                raise RuntimeError("cannot submit a step to a worker pool that was shut down")
            self._state.pending.append((future, args[0]))
        self._wake()
        return future

    def any_started(self) -> bool:
        """Whether any worker, living or dead, ever started (took its first step). Raises nothing."""
        with self._lock:
            return self._any_started

    def died(self) -> list[WorkerDied]:
        """The workers that died on their own (not stopped by this pool), in the order it saw them."""
        with self._lock:
            return list(self._state.died)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the running steps finish, stop every worker and wait for them (``wait`` is always true).

        With ``cancel_futures``, steps not handed to a worker yet are cancelled; otherwise they run first.
        After :meth:`terminate` it waits for no step: whatever worker is left is killed.

        Raises:
            KeyboardInterrupt: a Ctrl-C while it waited (after a terminate, only once the workers have ended).
        """
        with self._lock:
            self._state.closing = True
            if cancel_futures:
                self._cancel_pending()
            terminated = self._state.terminated
        if terminated:
            interrupted = self._kill(self._living())
            if interrupted is not None:
                raise interrupted
            return
        self._wake()
        self._thread.join()

    def terminate(self, *, interrupt: bool = False) -> None:
        """Stop now: cancel the steps not started, terminate every worker and the processes its step started
        (its step stops where it is: nothing it did not save is saved) and wait until each worker has ended.

        Each worker's process group (the worker and the processes its steps started) gets SIGINT first with
        ``interrupt`` (Ctrl-C: the terminal sends it to the executor's group only), then SIGTERM, and SIGKILL
        once the worker has ended or :data:`_TERMINATE_GRACE` seconds have passed: a process a step started
        and that outlived its worker, or ignores SIGTERM, is killed too.

        A ``KeyboardInterrupt`` (a second Ctrl-C) or other exception a signal handler raises meanwhile ends
        the grace at once: the workers are killed and waited for all the same, and only then is it raised.

        Raises:
            KeyboardInterrupt: a Ctrl-C arrived while it stopped the workers (once they have all ended).
        """
        workers: list[_Worker] | None = None
        interrupted: BaseException | None = None
        try:
            with self._lock:
                self._state.closing = True
                self._state.terminated = True
                self._cancel_pending()
                workers = list(self._state.workers)
                for worker in workers:
                    worker.stopping = True
            if interrupt:
                for worker in workers:
                    _signal_group(worker.process, signal.SIGINT)
            for worker in workers:
                _signal_group(worker.process, signal.SIGTERM)
                with contextlib.suppress(Exception):
                    worker.process.terminate()
            deadline = time.monotonic() + _TERMINATE_GRACE
            for worker in workers:
                # The sentinel, not join(): a join would reap the worker, and its pid, which is its group's id,
                # could then be reused by another process before the group is killed.
                connection.wait([worker.process.sentinel], max(0.0, deadline - time.monotonic()))
        except BaseException as exc:
            # Pressed again because the first seemed to do nothing: no more grace. Leaving here without the kill
            # below would leave the workers whose steps ignore SIGTERM running, and the caller's shutdown, then
            # multiprocessing's exit handler, waiting for them.
            interrupted = exc
        interrupted = self._kill(self._living() if workers is None else workers, interrupted)
        if interrupted is not None:
            raise interrupted

    def _living(self) -> list[_Worker]:
        with self._lock:
            return list(self._state.workers)

    def _kill(self, workers: list[_Worker], interrupted: BaseException | None = None) -> BaseException | None:
        """Kill ``workers`` with their groups, wait for them and for the pool's thread; return ``interrupted``,
        or else the first ``KeyboardInterrupt`` or ``SystemExit`` a signal handler raised meanwhile (each starts
        the kill over: it is idempotent). Raises nothing else (nothing here raises but a signal handler)."""
        while True:
            try:
                with self._lock:
                    for worker in workers:
                        # One the pool's thread has reaped meanwhile (and killed its group) is gone from the list.
                        if any(known is worker for known in self._state.workers):
                            _signal_group(worker.process, signal.SIGKILL)
                            with contextlib.suppress(Exception):
                                worker.process.kill()
                for worker in workers:
                    worker.process.join()
                self._wake()
                self._thread.join()
                return interrupted
            except (KeyboardInterrupt, SystemExit) as exc:
                interrupted = interrupted or exc

    def _cancel_pending(self) -> None:
        while self._state.pending:
            future, _ = self._state.pending.popleft()
            future.cancel()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send_bytes(b"")

    # -- the pool's thread -----------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                with self._lock:
                    handed = self._dispatch()
                if handed is not None:
                    # Outside the lock, which terminate() needs at any moment: pickling runs the code of the
                    # step's arguments. Then the next step, if a worker can take it (one at a time: the budget
                    # of unsent bytes is known only once a step is pickled).
                    self._hand_over(*handed)
                    continue
                with self._lock:
                    state = self._state
                    if state.closing and not state.pending and all(w.task is None for w in state.workers):
                        break
                    waits: list[Any] = [self._wake_reader]
                    for worker in state.workers:
                        waits += [worker.process.sentinel] if worker.hung_up else [worker.conn, worker.process.sentinel]
                for ready in connection.wait(waits):
                    if ready is self._wake_reader:
                        with contextlib.suppress(EOFError, OSError):
                            while self._wake_reader.poll():
                                self._wake_reader.recv_bytes()
                for worker in list(self._state.workers):
                    self._collect(worker)
        except BaseException as exc:
            # A fault of the pool itself must not leave the executor waiting for ever on its steps.
            with self._lock:
                self._state.closing = True
                for worker in self._state.workers:
                    if worker.task is not None:
                        worker.task[0].set_exception(exc)
                        worker.task = None
                    _signal_group(worker.process, signal.SIGTERM)
                    with contextlib.suppress(Exception):
                        worker.process.terminate()
                while self._state.pending:
                    future, _ = self._state.pending.popleft()
                    if future.set_running_or_notify_cancel():
                        future.set_exception(exc)
            raise
        finally:
            self._close()

    def _dispatch(self) -> tuple[_Worker, cf.Future[StepOutcome], WorkerTask] | None:
        """Give the next pending task to an idle worker, starting a worker up to the pool's size (under the
        lock); return it, for :meth:`_hand_over` to send. ``None``: no task, no worker free for one, or
        :data:`_SEND_BUDGET` spent (a send thread that ends wakes the pool)."""
        state = self._state
        while state.pending and self._unsent < _SEND_BUDGET:
            idle = next((w for w in state.workers if w.task is None and not w.stopping), None)
            if idle is None and len(state.workers) >= self._size:
                return None
            future, task = state.pending.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            if idle is None:
                try:
                    idle = self._start()
                except Exception as exc:
                    # No process could be started (in a worker that is itself starting, for one: a script's
                    # unguarded run() imported by a spawned worker): the step fails, and the caller sees why.
                    future.set_exception(exc)
                    continue
            idle.task = (future, task)
            return idle, future, task
        return None

    def _hand_over(self, worker: _Worker, future: cf.Future[StepOutcome], task: WorkerTask) -> None:
        """Send ``task`` to ``worker`` without waiting for it to be read; when it cannot be sent (pickled), its
        step fails with the reason and the worker is idle again. Raises nothing."""
        try:
            # The bytes Connection.send would write, made here so that a failure to pickle the step's partial
            # arguments (the step's failure, not the pool's) is told from a pipe closed by a worker that died
            # while starting, which its sentinel reports. Nothing is unpickled here.
            data = ForkingPickler.dumps(task)
            size = len(data)
            with self._lock:
                self._unsent += size
            try:
                worker.send(data, lambda: self._sent(size))
            except BaseException:
                self._sent(size)
                raise
        except Exception as exc:
            worker.task = None
            future.set_exception(exc)

    def _sent(self, size: int) -> None:
        """A send thread is done with ``size`` bytes: steps held back by :data:`_SEND_BUDGET` may go. Raises
        nothing."""
        with self._lock:
            self._unsent -= size
        self._wake()

    def _start(self) -> _Worker:
        mine, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_serve_steps, args=(theirs,), name="artifactstore-step")
        process.start()
        theirs.close()
        worker = _Worker(process, mine)
        if _WATCHDOGS:
            try:
                worker.watchdog, worker.watch = _watch(process)
            except BaseException:
                # No worker this process cannot stop if it dies: the step fails with the reason instead.
                with contextlib.suppress(Exception):
                    process.kill()
                process.join()
                mine.close()
                raise
        self._state.workers.append(worker)
        return worker

    def _collect(self, worker: _Worker) -> None:
        """Read what ``worker`` sent; notice its death (once its pipe is drained)."""
        self._drain(worker)
        with self._lock:
            if not connection.wait([worker.process.sentinel], 0):
                return
            # Ended, but not reaped yet, so its pid (its group's id) is still its own: the processes its step
            # started go with it (a worker that died on its own, OOM-killed or crashed, signalled nothing;
            # one being terminated has had its SIGTERM). Reaping it and leaving the pool's list happen under
            # the same lock, so that terminate() never signals a group whose id may have been reused.
            _signal_group(worker.process, signal.SIGKILL)
            if worker.process.exitcode is None:
                return  # its pipe closed just before it became a zombie: the sentinel wakes the pool again
            self._state.workers.remove(worker)
        # What it sent between the drain above and its end: its step's outcome, saved, sent, and then the worker
        # died (killed, or at exit). Nothing more can come now; read before its step is declared lost with it.
        self._drain(worker)
        worker.stand_down(reap=True)
        with self._lock:
            if not worker.stopping:
                index = worker.task[1].index if worker.task is not None else None
                exitcode = worker.process.exitcode
                self._state.died.append(WorkerDied(worker.process.pid or 0, exitcode, index, worker.started))
        if worker.task is not None:
            self._complete(
                worker,
                cfp.BrokenProcessPool(
                    f"the worker process running this step (pid {worker.process.pid}) terminated abruptly "
                    f"(exit code {worker.process.exitcode})"
                ),
            )
        worker.release()

    def _drain(self, worker: _Worker) -> None:
        """Read and act on every message waiting in ``worker``'s pipe."""
        if worker.hung_up:
            return
        while True:
            try:
                if not worker.conn.poll():
                    break
                message = worker.conn.recv()
            except (EOFError, OSError):
                worker.hung_up = True
                break
            except Exception as exc:
                # The bytes arrived but could not be rebuilt here: that step's failure, not the pool's.
                self._complete(worker, exc)
                continue
            kind = message[0]
            if kind == "ready":
                worker.started = True
                worker.stand_down(reap=False)
                with self._lock:
                    self._any_started = True
            elif kind == "done":
                self._complete(worker, None, message[1])
            else:
                error: BaseException = message[1]
                error.__cause__ = RemoteTraceback(message[2])
                self._complete(worker, error)

    def _complete(self, worker: _Worker, error: BaseException | None, outcome: Any = None) -> None:
        if worker.task is None:
            return
        future, _ = worker.task
        worker.task = None
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)

    def _close(self) -> None:
        """Stop the idle workers (EOF ends their loop) and wait for every worker to end."""
        with self._lock:
            workers = list(self._state.workers)
            self._state.workers.clear()
            self._cancel_pending()
        for worker in workers:
            worker.release()
        for worker in workers:
            worker.process.join()
            worker.stand_down(reap=True)
        self._wake_reader.close()
        self._wake_writer.close()


def _watch(process: BaseProcess) -> tuple[subprocess.Popen[bytes], int]:
    """Start the watchdog of ``process`` (see :data:`_WATCHDOG`); return it and the pipe that stands it down.

    Raises:
        OSError: the watchdog could not be started.
    """
    read, write = os.pipe()
    try:
        watchdog = subprocess.Popen(  # noqa: S603 - this interpreter, our own code and numbers
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(read), str(process.sentinel), str(process.pid)],
            pass_fds=(read, process.sentinel),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            # Out of the terminal's reach: Ctrl-C must not end it before the worker is stopped.
            start_new_session=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return watchdog, write


def _signal_group(process: BaseProcess, signum: int) -> None:
    """Send ``signum`` to the process group ``process`` leads, if it made one (raises nothing).

    A worker makes its group as its first step; one still starting is in the executor's group, and has
    started nothing yet. The group outlives its leader while a process a step started runs, and the kernel
    does not give its id to another process meanwhile.
    """
    if not _OWN_GROUPS or process.pid is None:
        return
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signum)


# -- the worker's side ------------------------------------------------------------------------------------


def _serve_steps(conn: connection.Connection) -> None:
    """A worker process: run the tasks received on ``conn`` one at a time until the pipe closes.

    The worker leads a process group of its own, which the processes its steps start join: the executor
    stops them with it (see :meth:`WorkerPool.terminate`). A thread watches the executor's process: when it
    dies (``kill -9``), the worker kills its group (itself and what its step started) at once rather than
    run on as an orphan (its step's output, not saved yet, is not saved). The terminal's Ctrl-C reaches the
    executor's group, not the workers': the executor passes it on to the workers that run a step (an idle
    worker ignores it; the executor stops the workers).
    """
    import multiprocessing

    if _OWN_GROUPS:
        # Without a group of its own (refused: a session leader), it is stopped alone, as before groups.
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="artifactstore-parent", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(("ready",))
    except OSError:
        return  # the pool shut down while this worker started (its only step could not be sent)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                reply: tuple[Any, ...] = ("done", run_in_worker(task))
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        except BaseException as exc:
            reply = ("error", exc, "".join(traceback.format_exception(exc)))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as exc:
            # The step's exception passed run_in_worker's check but still cannot be sent.
            problem = RuntimeError(
                f"step {task.step.id!r} raised {type(reply[1]).__qualname__}, which cannot be sent to the "
                f"executor's process: {type(exc).__name__}: {exc}"
            )
            conn.send(("error", problem, reply[2] if len(reply) > 2 else ""))


def _exit_with(sentinel: int) -> None:
    connection.wait([sentinel])
    if _OWN_GROUPS and os.getpgrp() == os.getpid():
        # The processes this worker's step started go with it: nothing is left to save into the execution.
        os.killpg(0, signal.SIGKILL)
    os._exit(1)
