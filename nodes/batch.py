"""The results of a batch's tasks: an episode can fail or time out without harm.

Inside the batch graph each task is the episode graph itself, a subgraph node
with ``commit_mode="defer"``: it reads the global library as it was when the
batch started (nothing is committed until absorbing), keeps its own tools local,
and hands them back in its result (one item of ``results``). An episode that
fails stays with its task; the batch and the absorb go on. Every result carries
``error`` (one line, or ``None``) and ``error_kind``:

* ``"endpoint"``: the model endpoint failed (the episode ended ``failed`` with a
  ``failure`` record, kept in the result, as are the tokens it spent first);
* ``"timeout"``: the episode ran past ``episode_timeout_s`` (its roles stopped it at
  their next step);
* ``"internal"``: the episode raised (a bug, or an unexpected error):
  :func:`episode_crashed`, the node's error handler, records it;
* ``None``: the episode finished (``completed`` or ``incomplete``).

``evolve`` counts endpoint failures in a row to stop a run during an outage,
and runs those tasks again when the run is resumed.
"""

from __future__ import annotations

from typing import Any

from langgraph.errors import NodeError
from langgraph.runtime import Runtime
from langgraph.types import Command

from insitu.context import InsituContext
from insitu.events import emit
from insitu.llm import ModelEndpointError
from insitu.nodes.common import settings

#: ``error_kind`` of a result whose model endpoint failed.
ENDPOINT = "endpoint"
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
        kind: The ``error_kind``: ``endpoint`` or ``internal`` (a timeout is the
            episode's own ``failure``, packaged with its output).
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


def schedule_tasks(state: dict[str, Any], runtime: Runtime[InsituContext]) -> dict[str, Any]:
    """Batch node before each wave of episodes: how many run at once (``batch_concurrency``).

    The router after it (``fan_out_tasks``) sends the next wave, or goes to absorbing.
    """
    return {"wave_size": settings(runtime).batch_concurrency}


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
