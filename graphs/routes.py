"""Pure router functions of the episode graph: state in, next node out.

The episode graph's routers come first, then the batch graph's fan-out.
Routers read state only (never the run's settings), so that any node can be
the ``as_node`` of ``update_state`` and a fork resumes the same way: the nodes
write what the routers need (``replans_left``; a repair request only while
repairs are allowed). Every loop (Manager <-> Executor, Executor ->
ToolDeveloper) is bounded by a counter in state; exhausting a bound routes to
the Integrator, which says what could not be done. A model endpoint that
failed (``failure`` in state) ends the work at once: the Integrator records
why, without asking its model.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.types import Send

from insitu.graphs.state import EpisodeState

PLAN = "plan_task"
BUILD = "build_tools"
EXECUTE = "execute_task"
ANSWER = "write_answer"


def route_after_planning(
    state: EpisodeState,
) -> Literal["build_tools", "execute_task", "write_answer"]:
    """Manager -> ToolDeveloper (new tools requested) | Executor | Integrator (no plan)."""
    if state.get("failure") or state.get("plan_error"):
        return ANSWER
    if state.get("requests"):
        return BUILD
    return EXECUTE


def route_after_building(
    state: EpisodeState,
) -> Literal["execute_task", "plan_task", "write_answer"]:
    """ToolDeveloper -> Executor (ready) | Manager (a build failed: re-plan) | Integrator."""
    if state.get("failure"):
        return ANSWER
    if state.get("build_outcome") != "failed":
        return EXECUTE
    if state.get("replans_left", 0) > 0:
        return PLAN
    return EXECUTE if state.get("bound_tools") else ANSWER


def route_after_execution(
    state: EpisodeState,
) -> Literal["write_answer", "plan_task", "build_tools"]:
    """Executor -> Integrator (done) | Manager (missing capability) | ToolDeveloper (repair).

    The Executor writes a repair request only while repairs are allowed (not
    frozen, fewer than ``max_repairs``), so a pending request means "repair".
    """
    if state.get("failure"):
        return ANSWER
    kind = (state.get("report") or {"kind": "error"})["kind"]
    can_replan = state.get("replans_left", 0) > 0
    if kind == "missing_capability" and can_replan:
        return PLAN
    if kind == "tool_failed" and state.get("requests"):
        return BUILD
    if kind == "tool_failed" and can_replan:
        return PLAN
    return ANSWER


def fan_out_tasks(state: dict[str, Any]) -> list[Send] | Literal["absorb_tools"]:
    """Batch graph: the next wave of episodes (in parallel), or absorbing once all have run.

    A wave is the ``wave_size`` tasks after those that have a result (every task
    gets exactly one), so at most ``wave_size`` episodes run at once. Each
    ``Send`` carries the episode graph's input (``EpisodeInput``).
    """
    tasks = state.get("tasks") or []
    start = len(state.get("results") or [])
    if start >= len(tasks):
        return "absorb_tools"
    wave = tasks[start : start + max(1, state.get("wave_size") or len(tasks))]
    return [
        Send(
            "solve_task",
            {"task": task["question"], "task_id": task["id"], "files": task.get("files") or []},
        )
        for task in wave
    ]
