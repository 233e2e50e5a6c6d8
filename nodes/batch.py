"""Running one task of a batch: an episode that can fail or time out without harm.

Inside the batch graph each task is an episode with ``commit_mode="defer"``: it
reads the global library as it was when the batch started (nothing is
committed until absorbing), keeps its own tools local, and hands them back in
its result. An episode that fails stays with its task; the batch and the absorb go
on. Every result carries ``error`` (one line, or ``None``) and ``error_kind``:

* ``"endpoint"``: the model endpoint failed (the episode ended ``failed`` with a
  ``failure`` record, kept in the result, as are the tokens it spent first);
* ``"timeout"``: the episode ran past ``episode_timeout_s``;
* ``"internal"``: the episode raised (a bug, or an unexpected error);
* ``None``: the episode finished (``completed`` or ``incomplete``).

``evolve`` counts endpoint failures in a row to stop a run during an outage,
and runs those tasks again when the run is resumed.
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
from langgraph.errors import GraphBubbleUp
from langgraph.pregel import Pregel
from langgraph.runtime import Runtime

from insitu.context import InsituContext
from insitu.events import emit
from insitu.llm import ModelEndpointError
from insitu.nodes.common import settings

#: ``error_kind`` of a result whose model endpoint failed.
ENDPOINT = "endpoint"
#: ``error_kind`` of a result whose episode ran past ``episode_timeout_s``.
TIMEOUT = "timeout"
#: ``error_kind`` of a result whose episode raised anything else.
INTERNAL = "internal"


def one_line(text: str) -> str:
    """Collapse a message onto one line (results and predictions keep one line per error)."""
    return " ".join(str(text).split())


def failed_result(
    task: dict[str, Any],
    reason: str,
    wall_time_s: float,
    *,
    kind: str = INTERNAL,
    failure: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result of a task whose episode did not finish.

    Args:
        task: The batch task (``id`` is used).
        reason: Why; kept as ``error`` on one line.
        wall_time_s: How long the episode ran.
        kind: The ``error_kind``: ``endpoint``, ``timeout`` or ``internal``.
        failure: The endpoint failure record, for ``kind="endpoint"``.
    """
    return {
        "task_id": task["id"],
        "answer": "",
        "status": "failed",
        "error": one_line(reason),
        "error_kind": kind,
        "failure": failure,
        "tools_used": [],
        "tools_created": [],
        "tools_repaired": [],
        "new_tools": [],
        "library_calls": [],
        "metrics": {},
        "usage": {},
        "wall_time_s": round(wall_time_s, 3),
    }


def episode_result(output: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    """A finished episode's output as the task's result, with ``error`` and ``error_kind``.

    An episode that ended ``failed`` keeps everything it produced (its token
    usage above all: the tokens were spent); its ``failure`` record names the cause.
    """
    result = {**output, "error": None, "error_kind": None, "wall_time_s": round(wall_time_s, 3)}
    if output.get("status") == "failed":
        failure = output.get("failure") or {}
        result["error"] = one_line(
            failure.get("message") or output.get("error") or "the episode ended failed"
        )
        result["error_kind"] = failure.get("kind") or INTERNAL
    return result


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
        ``error`` and ``error_kind``, or a failed result.
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
        result = failed_result(task, reason, time.monotonic() - started, kind=TIMEOUT)
    except GraphBubbleUp:  # an interrupt (or other control flow) is LangGraph's, not a failure
        raise
    except ModelEndpointError as exc:  # episodes record endpoint failures; this is a fallback
        result = failed_result(
            task,
            exc.one_line(),
            time.monotonic() - started,
            kind=ENDPOINT,
            failure=exc.as_failure(),
        )
    except Exception as exc:  # any failure of one task stays with that task
        reason = f"{type(exc).__name__}: {exc}"
        result = failed_result(task, reason, time.monotonic() - started, kind=INTERNAL)
    else:
        result = episode_result(output, time.monotonic() - started)
    finally:
        pool.shutdown(wait=False)
    if result["status"] == "failed":
        emit(
            "task_failed",
            f"task {task['id']} failed ({result['error_kind']}): {result['error'][:200]}",
            task_id=task["id"],
            error_kind=result["error_kind"],
        )
    else:
        emit("task_done", f"task {task['id']}: {result['status']}", task_id=task["id"])
    return {"results": [result]}
