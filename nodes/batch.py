"""The results of a batch's tasks: an episode can fail or time out without harm.

Inside the batch graph each task's ``solve_task`` node (:func:`solve_task`, an
asyncio task) runs the episode graph as its subgraph, with ``commit_mode="defer"``:
it reads the global library as it was when the
batch started (nothing is committed until absorbing), keeps its own tools local,
and hands them back in its result (one item of ``results``). An episode that
fails stays with its task; the batch and the absorb go on. Every result carries
``error`` (one line, or ``None``) and ``error_kind``:

* ``"endpoint"``: the model endpoint failed (the episode ended ``failed`` with a
  ``failure`` record, kept in the result, as are the tokens it spent first);
* ``"timeout"``: the episode ran past ``episode_timeout_s`` and was cancelled
  (:func:`solve_task`): its model request in flight was aborted and its tools are
  discarded; the tokens its finished requests spent are kept;
* ``"internal"``: the episode raised (a bug, or an unexpected error):
  :func:`episode_crashed`, the node's error handler, records it;
* ``None``: the episode finished (``completed`` or ``incomplete``).

``evolve`` counts endpoint failures in a row to stop a run during an outage,
and runs those tasks again when the run is resumed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langgraph.errors import NodeError
from langgraph.runtime import Runtime
from langgraph.types import Command

from insitu.context import InsituContext
from insitu.events import emit
from insitu.llm import ModelEndpointError, usage_ledger
from insitu.nodes.common import settings
from insitu.structured import TokenUsage

#: ``error_kind`` of a result whose model endpoint failed.
ENDPOINT = "endpoint"
#: ``error_kind`` of a result whose episode raised anything else.
INTERNAL = "internal"
#: ``error_kind`` of a result whose episode was cancelled at its time limit.
TIMEOUT = "timeout"


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
        failure: The failure record, for ``kind="endpoint"`` or ``"timeout"``.
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


async def schedule_tasks(state: dict[str, Any], runtime: Runtime[InsituContext]) -> dict[str, Any]:
    """Batch node before each wave of episodes: how many run at once (``batch_concurrency``).

    The router after it (``fan_out_tasks``) sends the next wave, or goes to absorbing.
    """
    return {"wave_size": settings(runtime).batch_concurrency}


async def solve_task(
    task: dict[str, Any], runtime: Runtime[InsituContext], *, episode: Any
) -> dict[str, Any]:
    """Batch node: one task's episode, as an asyncio task cancelled at ``episode_timeout_s``.

    The episode graph runs as this node's subgraph (its checkpoints, when kept,
    are under this node's namespace). At the time limit the episode is
    cancelled: its model request in flight is aborted, its local tools are
    discarded, and its result is a failure of kind ``timeout`` that keeps the
    tokens its finished requests spent.

    Args:
        task: The episode's input (``task``, ``task_id``, ``files``).
        runtime: Supplies ``episode_timeout_s``.
        episode: The compiled episode (or baseline) graph, with ``output_key="results"``.
    """
    limit = settings(runtime).episode_timeout_s
    ledger: dict[str, TokenUsage] = {}
    counting = usage_ledger.set(ledger)
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit) as timer:
            return await episode.ainvoke(task)
    except TimeoutError:
        if not timer.expired():  # a TimeoutError of the episode's own: a crash
            raise
    finally:
        usage_ledger.reset(counting)
    message = f"the episode ran longer than episode_timeout_s={limit:g} and was cancelled"
    result = failed_result(
        {"id": task.get("task_id") or "?"},
        message,
        time.monotonic() - started,
        kind=TIMEOUT,
        failure={"kind": TIMEOUT, "message": message},
    )
    result["usage"] = {role: usage.as_dict() for role, usage in ledger.items() if usage.calls}
    emit(
        "task_failed",
        f"task {result['task_id']} failed ({TIMEOUT}): {message}",
        task_id=result["task_id"],
        error_kind=TIMEOUT,
    )
    return {"results": [result]}


def solve_task_in_thread(task: dict[str, Any], *, episode: Any) -> dict[str, Any]:
    """:func:`solve_task` under a synchronous ``invoke``/``stream``: the episode in a thread.

    A thread cannot be cancelled: the episode's roles stop it at their first
    step past ``episode_timeout_s`` (``failure`` of kind ``timeout``, packaged
    with its output).
    """
    return episode.invoke(task)


def episode_crashed(state: dict[str, Any], error: NodeError) -> Command:
    """Error handler of the batch's episode node: a task whose episode raised fails alone.

    Its result says why (``error_kind: "internal"``; an endpoint error that escaped
    the roles is ``endpoint``); the other tasks, absorbing and the commit go on: the
    handler goes on to ``schedule_tasks`` itself, as the episode's own edge would
    have (a handler does not follow it). LangGraph never sends it an interrupt.

    Args:
        state: The episode's input (``task``, ``task_id``, ``files``).
        error: What the episode raised.
    """
    task = {"id": state.get("task_id") or "?"}
    exc = error.error
    if isinstance(exc, ModelEndpointError):
        result = failed_result(task, exc.one_line(), 0.0, kind=ENDPOINT, failure=exc.as_failure())
    else:
        result = failed_result(task, f"{type(exc).__name__}: {exc}", 0.0, kind=INTERNAL)
    emit(
        "task_failed",
        f"task {task['id']} failed ({result['error_kind']}): {result['error'][:200]}",
        task_id=task["id"],
        error_kind=result["error_kind"],
    )
    return Command(update={"results": [result]}, goto="schedule_tasks")
