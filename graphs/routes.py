"""Pure router functions of the episode graph: state and limits in, next node out.

The episode graph's routers come first, then the batch graph's fan-out.
Every loop (Manager <-> Executor, Executor -> ToolDeveloper) is bounded by a
counter in state; exhausting a bound routes to the Integrator, which says what
could not be done.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.types import Send

from insitu.context import InsituContext
from insitu.graphs.state import EpisodeState

PLAN = "plan_task"
BUILD = "build_tools"
EXECUTE = "execute_task"
ANSWER = "write_answer"


def _limits(runtime: Any) -> InsituContext:
    return InsituContext.coerce(getattr(runtime, "context", None))


def route_after_planning(
    state: EpisodeState, runtime: Any = None
) -> Literal["build_tools", "execute_task", "write_answer"]:
    """Manager -> ToolDeveloper (new tools requested) | Executor | Integrator (no plan)."""
    if state.get("plan_error"):
        return ANSWER
    if state.get("requests"):
        return BUILD
    return EXECUTE


def route_after_building(
    state: EpisodeState, runtime: Any = None
) -> Literal["execute_task", "plan_task", "write_answer"]:
    """ToolDeveloper -> Executor (ready) | Manager (a build failed: re-plan) | Integrator."""
    if state.get("build_outcome") != "failed":
        return EXECUTE
    if state.get("rounds", 0) < _limits(runtime).max_rounds:
        return PLAN
    return EXECUTE if state.get("bound_tools") else ANSWER


def route_after_execution(
    state: EpisodeState, runtime: Any = None
) -> Literal["write_answer", "plan_task", "build_tools"]:
    """Executor -> Integrator (done) | Manager (missing capability) | ToolDeveloper (repair)."""
    limits = _limits(runtime)
    report = state.get("report") or {"kind": "error"}
    kind = report["kind"]
    if kind == "missing_capability" and state.get("rounds", 0) < limits.max_rounds:
        return PLAN
    if (
        kind == "tool_failed"
        and not limits.freeze_library
        and state.get("repairs", 0) < limits.max_repairs
        and state.get("requests")
    ):
        return BUILD
    if kind == "tool_failed" and state.get("rounds", 0) < limits.max_rounds:
        return PLAN
    return ANSWER


def fan_out_tasks(state: dict[str, Any]) -> list[Send] | Literal["absorb_tools"]:
    """Batch graph: one ``solve_task`` per task (in parallel); an empty batch goes to absorbing."""
    tasks = state.get("tasks") or []
    if not tasks:
        return "absorb_tools"
    return [Send("solve_task", {"task": task}) for task in tasks]
