"""Deterministic crash points for kill -9 tests: SIGKILL right after the N-th checkpoint write.

A random-delay kill rarely lands in the few milliseconds that matter (between
a batch's input checkpoint and its first step's); counting the checkpointer's
writes does. ``insitu evolve`` wraps its run checkpointer with
:func:`kill_after_checkpoint_writes` when ``$INSITU_TEST_KILL_AFTER_CHECKPOINT_WRITES``
is set (testing only: nothing else reads it), to ``N`` (the process's N-th
write) or ``batch-B:N`` (the N-th write of batch B's thread: ``batch-2:1`` is
the moment batch 2's input checkpoint is written, before anything ran).
"""

from __future__ import annotations

import inspect
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

#: The checkpointer methods that write (LangGraph's sync loop calls the first two, its
#: async loop the others).
WRITE_METHODS = ("put", "put_writes", "aput", "aput_writes")


def parse_kill_point(value: str) -> tuple[str | None, int]:
    """``"N"`` -> ``(None, N)``; ``"batch-B:N"`` -> ``("batch-B", N)``."""
    thread, _, count = value.rpartition(":")
    return (thread or None), int(count)


def kill_after_checkpoint_writes(saver: Any, point: str) -> Any:
    """Make ``saver`` SIGKILL its own process right after the write ``point`` names returns.

    Each write (a checkpoint, or a task's pending writes) is committed before
    the kill, as it is when a real process dies between two writes.

    Args:
        saver: A LangGraph checkpointer (changed in place).
        point: ``"N"``: after the process's N-th write (from 1); ``"batch-B:N"``:
            after the N-th write to a thread whose id ends with ``:batch-B``.

    Returns:
        ``saver``.
    """
    thread_suffix, writes = parse_kill_point(point)
    count = 0
    lock = threading.Lock()

    def written(config: Any) -> None:
        nonlocal count
        thread = str(config.get("configurable", {}).get("thread_id", ""))
        if thread_suffix is None or thread.endswith(":" + thread_suffix):
            with lock:
                count += 1
                if count == writes:
                    os.kill(os.getpid(), signal.SIGKILL)

    def counted(write: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(write):

            async def awrite_then_maybe_die(config: Any, *args: Any, **kwargs: Any) -> Any:
                result = await write(config, *args, **kwargs)
                written(config)
                return result

            return awrite_then_maybe_die

        def write_then_maybe_die(config: Any, *args: Any, **kwargs: Any) -> Any:
            result = write(config, *args, **kwargs)
            written(config)
            return result

        return write_then_maybe_die

    for name in WRITE_METHODS:
        setattr(saver, name, counted(getattr(saver, name)))
    return saver
