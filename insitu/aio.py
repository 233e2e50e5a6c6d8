"""insitu's event loop, and the threads that blocking work runs on.

Episodes run on asyncio: model requests are awaited, and everything that
blocks (a sandboxed tool call, a store query or commit, a tool's admission
tests) runs through :func:`blocking` on a thread pool whose size is the
``blocking_threads`` setting, never on a pool sized by a library's default.

Synchronous entry points (``run_task``, ``evolve``, the CLI, a graph's
``invoke``) run their coroutines with :func:`run` on **one** event loop per
process, kept in a daemon thread. One loop, not ``asyncio.run`` per call:
LangChain's OpenAI client keeps one HTTP connection pool per endpoint for the
whole process, and a pool used by a closed loop fails on the next loop
("Event loop is closed"). Async callers (``arun_task``, Studio, a parent graph's
``ainvoke``) use their own loop instead.

Every node of the episode graph is ``async def``; :func:`node` also gives it a
synchronous variant that runs it on insitu's loop, so that the graphs keep
working under ``invoke``/``stream`` (a parent graph that is run synchronously,
the tests), where LangGraph calls sync functions only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: Threads for blocking work when no run has set ``blocking_threads`` yet.
DEFAULT_BLOCKING_THREADS = 32

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_blocking_threads = DEFAULT_BLOCKING_THREADS


def set_blocking_threads(count: int) -> None:
    """Size the pool that :func:`blocking` uses from now on (the ``blocking_threads`` setting)."""
    global _blocking_threads
    _blocking_threads = max(1, int(count))


def blocking_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The thread pool of the current ``blocking_threads`` (one per size, kept for the process)."""
    size = _blocking_threads
    with _lock:
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = concurrent.futures.ThreadPoolExecutor(
                max_workers=size, thread_name_prefix=f"insitu-blocking-{size}"
            )
        return pool


async def blocking(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking work on insitu's pool and await it.

    The call runs in a copy of the caller's context, so its progress events
    still reach the graph's stream. Cancelling the caller does not stop the
    thread (a sandboxed call ends at its own timeout); its result is dropped.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await loop.run_in_executor(blocking_pool(), call)


def event_loop() -> asyncio.AbstractEventLoop:
    """insitu's event loop for synchronous callers (started on first use, a daemon thread)."""
    global _loop, _loop_thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _loop_thread = threading.Thread(target=serve, name="insitu-loop", daemon=True)
            _loop_thread.start()
            ready.wait()
            _loop = loop
        return _loop


def on_event_loop_thread() -> bool:
    """Whether the caller runs on insitu's own loop (where :func:`run` would deadlock)."""
    return _loop_thread is not None and threading.current_thread() is _loop_thread


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on insitu's loop from synchronous code, and wait for its result.

    It runs in a copy of the caller's context (LangGraph's run config, stream
    writer and interrupts are context variables). Ctrl-C cancels it and waits
    for it to unwind (checkpointers closed, requests aborted) before re-raising.

    Raises:
        RuntimeError: Called from a coroutine on insitu's own loop (use ``await``).
    """
    if on_event_loop_thread():
        coroutine.close()
        raise RuntimeError("insitu.aio.run called on insitu's own event loop: await instead")
    loop = event_loop()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()
    started: list[asyncio.Task[T]] = []

    def start() -> None:
        task = loop.create_task(coroutine)
        started.append(task)

        def settle(done: asyncio.Task[T]) -> None:
            if done.cancelled():
                result.cancel()
            elif (error := done.exception()) is not None:
                result.set_exception(error)
            else:
                result.set_result(done.result())

        task.add_done_callback(settle)

    loop.call_soon_threadsafe(start, context=contextvars.copy_context())
    try:
        return result.result()
    except KeyboardInterrupt:
        if started:
            loop.call_soon_threadsafe(started[0].cancel)
            concurrent.futures.wait([result], timeout=10)
        raise


def sync_variant(afunc: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """``afunc`` as a synchronous function that runs it on insitu's loop (same signature)."""

    @functools.wraps(afunc)
    def call(*args: Any, **kwargs: Any) -> T:
        return run(afunc(*args, **kwargs))  # type: ignore[arg-type]

    return call


def node(afunc: Callable[..., Awaitable[Any]], /, **bound: Any) -> Any:
    """A graph node from an ``async def`` node function (``bound``: its keyword arguments).

    LangGraph runs the coroutine under ``ainvoke``/``astream`` and the synchronous
    variant (:func:`sync_variant`) under ``invoke``/``stream``; it injects
    ``runtime`` and ``config`` into either from the function's signature.
    """
    from langgraph._internal._runnable import RunnableCallable

    function = functools.partial(afunc, **bound) if bound else afunc
    return RunnableCallable(sync_variant(function), function, name=afunc.__name__, trace=False)


@contextmanager
def entered(manager: AbstractAsyncContextManager[T]) -> Iterator[T]:
    """Enter an async context manager on insitu's loop, from synchronous code."""
    value = run(manager.__aenter__())
    try:
        yield value
    except BaseException as exc:
        if not run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
            raise
    else:
        run(manager.__aexit__(None, None, None))


async def drain(stream: AsyncIterator[T], consume: Callable[[T], None]) -> None:
    """Pass every item of an async stream to ``consume`` (a synchronous callback)."""
    async for item in stream:
        consume(item)
