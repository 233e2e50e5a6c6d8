"""Running one task of a batch: an episode that can fail or time out without harm.

Inside the batch graph each task is an episode with ``commit_mode="defer"``: it
reads the global library as it was when the batch started (nothing is
committed until absorbing), keeps its own tools local, and hands them back in
its result. An episode that raises or runs past ``episode_timeout_s`` becomes a
failed result for its task; the batch and the absorb go on.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import copy_context
from dataclasses import replace
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel
from langgraph.runtime import Runtime

from insitu.context import InsituContext
from insitu.events import emit
from insitu.nodes.common import settings


def failed_result(task: dict[str, Any], reason: str, wall_time_s: float) -> dict[str, Any]:
    """The result of a task whose episode did not finish."""
    return {
        "task_id": task["id"],
        "answer": "",
        "status": "failed",
        "error": reason,
        "tools_used": [],
        "tools_created": [],
        "tools_repaired": [],
        "new_tools": [],
        "library_calls": [],
        "metrics": {},
        "usage": {},
        "wall_time_s": round(wall_time_s, 3),
    }


class EpisodeSlots:
    """Bounds how many episodes of a batch graph run at once (``batch_concurrency``).

    LangGraph's own ``max_concurrency`` also counts its stream waiter, so the
    bound that users set through the context is enforced here, per graph.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._semaphores: dict[int, threading.BoundedSemaphore] = {}

    def limit(self, count: int) -> threading.BoundedSemaphore:
        """The semaphore for a bound of ``count`` episodes."""
        with self._lock:
            return self._semaphores.setdefault(count, threading.BoundedSemaphore(max(1, count)))


def solve_task(
    state: dict[str, Any],
    config: RunnableConfig,
    runtime: Runtime[InsituContext],
    *,
    episode: Pregel,
    slots: EpisodeSlots,
) -> dict[str, Any]:
    """Batch node (one per ``Send``): run the episode graph on one task.

    Args:
        state: ``{"task": {"id", "question", "files"?}}`` from the fan-out.
        config: The run's config (the episode runs as a subgraph of this node).
        runtime: Supplies the settings.
        episode: The compiled episode graph.
        slots: Bounds the episodes running at once.

    Returns:
        ``{"results": [result]}`` — the episode's output plus ``wall_time_s``,
        or a failed result.
    """
    context = replace(settings(runtime), commit_mode="defer")
    task = state["task"]
    payload = {"task": task["question"], "task_id": task["id"], "files": task.get("files") or []}
    with slots.limit(context.batch_concurrency):
        return _solve(task, payload, config, context, episode)


def _solve(
    task: dict[str, Any],
    payload: dict[str, Any],
    config: RunnableConfig,
    context: InsituContext,
    episode: Pregel,
) -> dict[str, Any]:
    started = time.monotonic()
    emit("task_started", f"task {task['id']} started", task_id=task["id"])
    # The episode runs in its own thread so that a hung episode can be given up on;
    # the copied context keeps it a subgraph of this node (config, stream writer).
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"episode-{task['id']}")
    future = pool.submit(copy_context().run, episode.invoke, payload, config, context=context)
    try:
        output = future.result(timeout=context.episode_timeout_s)
    except FutureTimeout:
        reason = f"the episode ran longer than episode_timeout_s={context.episode_timeout_s:g}"
        emit("task_failed", f"task {task['id']} failed: {reason}", task_id=task["id"])
        return {"results": [failed_result(task, reason, time.monotonic() - started)]}
    except Exception as exc:  # any failure of one task stays with that task
        reason = f"{type(exc).__name__}: {exc}"
        emit("task_failed", f"task {task['id']} failed: {reason[:200]}", task_id=task["id"])
        return {"results": [failed_result(task, reason, time.monotonic() - started)]}
    finally:
        pool.shutdown(wait=False)
    result = {**output, "error": None, "wall_time_s": round(time.monotonic() - started, 3)}
    emit("task_done", f"task {task['id']}: {result['status']}", task_id=task["id"])
    return {"results": [result]}
