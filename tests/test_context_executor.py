"""ContextThreadPoolExecutor: every task runs in a copy of the context of whoever submitted it."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from artifactstore_core import Codec, Message, PayloadTooLargeError
from artifactstore_core.envelope import limiting_json_content
from artifactstore_core.store import ContextThreadPoolExecutor

pytestmark = pytest.mark.timeout(60)

_VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("test_context_executor_value", default="unset")
# Long enough never to be reached by a passing test; it only bounds a failing one.
_WAIT = 30.0


def _read() -> str:
    return _VALUE.get()


def test_submit_and_map_run_in_the_submitters_context() -> None:
    token = _VALUE.set("caller")
    try:
        with ContextThreadPoolExecutor(max_workers=2) as pool:
            assert pool.submit(_read).result() == "caller"
            assert list(pool.map(lambda _: _VALUE.get(), range(5))) == ["caller"] * 5
        # The control: a plain pool's workers do not see it, which is what the class is for.
        with ThreadPoolExecutor(max_workers=2) as plain:
            assert plain.submit(_read).result() == "unset"
    finally:
        _VALUE.reset(token)


def test_arguments_results_and_exceptions_pass_through() -> None:
    def combine(a: int, b: int, *, c: int) -> int:
        return a * 100 + b * 10 + c

    def fail() -> None:
        raise KeyError("boom")

    with ContextThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(combine, 1, 2, c=3).result() == 123
        with pytest.raises(KeyError, match="boom"):
            pool.submit(fail).result()
    with pytest.raises(RuntimeError):
        pool.submit(_read)  # shut down: as ThreadPoolExecutor


def test_each_task_gets_its_own_copy_taken_at_submit() -> None:
    # Two tasks running at once, each setting the variable: neither sees the other's value and the caller
    # sees neither. One shared context would fail here: a context cannot be entered by two threads at once.
    both_running = threading.Barrier(2, timeout=_WAIT)

    def set_and_read(value: str) -> str:
        _VALUE.set(value)
        both_running.wait()
        return _VALUE.get()

    token = _VALUE.set("caller")
    try:
        with ContextThreadPoolExecutor(max_workers=2) as pool:
            assert list(pool.map(set_and_read, ["a", "b"])) == ["a", "b"]
        assert _VALUE.get() == "caller"
    finally:
        _VALUE.reset(token)


def test_the_copy_is_of_the_context_at_submit_time() -> None:
    release = threading.Event()
    with ContextThreadPoolExecutor(max_workers=1) as pool:
        token = _VALUE.set("at submit")
        try:
            blocker = pool.submit(release.wait, _WAIT)  # holds the only worker until the caller has changed it
            later = pool.submit(_read)
            _VALUE.set("after submit")
            release.set()
            assert blocker.result() is True
            assert later.result() == "at submit"
        finally:
            _VALUE.reset(token)


def test_run_in_executor_carries_the_asyncio_tasks_context() -> None:
    async def in_task(value: str, pool: ContextThreadPoolExecutor) -> str:
        _VALUE.set(value)
        return await asyncio.get_running_loop().run_in_executor(pool, _read)

    async def main() -> list[str]:
        with ContextThreadPoolExecutor(max_workers=2) as pool:
            return list(await asyncio.gather(in_task("one", pool), in_task("two", pool)))

    assert asyncio.run(main()) == ["one", "two"]


def test_a_decoding_limit_holds_in_the_workers() -> None:
    codec = Codec()
    blob = codec.encode(Message(content=[{"i": i} for i in range(100)])).to_bytes()
    with limiting_json_content(64, setting="TEST_LIMIT"), ContextThreadPoolExecutor(max_workers=2) as pool:
        refused = pool.submit(codec.decode_bytes, blob).exception()
    assert isinstance(refused, PayloadTooLargeError), refused
    assert "TEST_LIMIT" in str(refused)
    with ContextThreadPoolExecutor(max_workers=2) as pool:  # outside the limit, the same blob decodes
        assert pool.submit(codec.decode_bytes, blob).result().content == tuple({"i": i} for i in range(100))
