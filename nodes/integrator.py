"""The Integrator: writes the final answer from the execution record.

It reads the task, the Manager's guidance, a compact record of the tool calls
and how the Executor ended, not the raw transcript. When the work could not be
completed the answer starts with why; the status is decided by how the work
ended, never by what the model writes.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from insitu.context import InsituContext
from insitu.events import emit
from insitu.graphs.state import EpisodeState
from insitu.llm import ModelEndpointError
from insitu.nodes.common import (
    ask_text,
    compact_json,
    echoes_prompt,
    failure_update,
    pause_point,
    prompt_messages,
    settings,
    usage_update,
)
from insitu.services import Services
from insitu.structured import TokenUsage, unusable_answer_reason

ROLE = "integrator"
MAX_RECORD_CHARS = 6000

_ENDINGS = {
    "done": "The Executor finished and reported this result:\n{message}",
    "no_result": "The Executor ended without a usable result ({message}).",
    "missing_capability": "The Executor stopped: a needed capability was missing ({message}).",
    "tool_failed": "The Executor stopped: a tool kept failing ({message}).",
    "step_limit": "The Executor ran out of steps ({message}).",
    "error": "The Executor stopped on an error ({message}).",
}


def execution_record(state: EpisodeState, limit: int = MAX_RECORD_CHARS) -> str:
    """Summarise the tool calls of the episode, newest kept when it is long."""
    lines = [
        f"{i + 1}. {inv['tool']}({compact_json(inv['args'], 300)}) -> "
        + (inv["output_preview"] if inv["ok"] else f"ERROR {inv['kind']}: {inv['message']}")[:500]
        for i, inv in enumerate(state.get("invocations") or [])
    ]
    text = "\n".join(lines) or "(no tool was called)"
    if len(text) > limit:
        text = "…(earlier calls omitted)\n" + text[-limit:]
    return text


def describe_ending(state: EpisodeState) -> tuple[str, bool]:
    """Return how the work ended, and whether it completed."""
    if state.get("plan_error"):
        return f"Planning failed: {state['plan_error']}", False
    report = state.get("report")
    failures = state.get("build_failures") or []
    if report is None:
        ending = "The Executor never ran."
        if failures:
            ending += " Tools that could not be built: " + "; ".join(
                f"{f['name']} ({f['reason'][:200]})" for f in failures
            )
        return ending, False
    ending = _ENDINGS[report["kind"]].format(message=report["message"][:3000])
    return ending, report["kind"] == "done"


async def write_answer(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Ask the Integrator for the final answer.

    A completed task's answer is the Integrator's reply (or, when that reply is
    no answer, the Executor's result). An incomplete task's answer always
    starts with why it is incomplete; a failed one (the model endpoint failed)
    says what failed, without asking the model again.

    Returns:
        Update: ``answer``, ``status`` (completed / incomplete / failed), usage and
        ``tokens_spent`` (by every role so far).
    """
    context = settings(runtime)
    pause_point("write_answer", state, context)
    failure = state.get("failure")
    if failure:
        emit("answered", "no answer: the model endpoint failed", status="failed")
        return {
            "answer": f"Failed: {failure['message']}",
            "status": "failed",
            "tokens_spent": tokens_spent(state),
        }
    ending, completed = describe_ending(state)
    rule = (
        ""
        if completed
        else (
            "The work did not complete: say plainly what could not be done and why, and give "
            "any partial result clearly marked as partial."
        )
    )
    messages = prompt_messages(
        "integrator",
        task=state["task"],
        guidance=state.get("guidance") or "(none)",
        record=execution_record(state),
        ending=ending,
        incomplete_rule=rule,
    )
    usage = TokenUsage()
    try:
        written = await ask_text(ROLE, services, context, messages, usage)
    except ModelEndpointError as exc:
        emit("answered", "no answer: the model endpoint failed", status="failed")
        return {
            "answer": f"Failed: {exc.one_line()}",
            "status": "failed",
            "usage": usage_update(ROLE, usage),
            "tokens_spent": tokens_spent(state, usage),
            **failure_update(exc),
        }
    echo = echoes_prompt(written, messages)
    usable = written if unusable_answer_reason(written) is None and not echo else ""
    if completed:
        report = state.get("report")
        answer = usable or (report["message"] if report else "")
    else:
        answer = f"Could not complete the task: {ending}"
        if usable:
            answer += f"\n\n{usable}"
    status = "completed" if completed else "incomplete"
    emit("answered", "answer written", status=status)
    return {
        "answer": answer,
        "status": status,
        "usage": usage_update(ROLE, usage),
        "tokens_spent": tokens_spent(state, usage),
    }


def tokens_spent(state: EpisodeState, usage: TokenUsage | None = None) -> int:
    """Tokens every role spent on the task, this answer included (for the episode's experience)."""
    spent = sum(int(c.get("total_tokens", 0)) for c in (state.get("usage") or {}).values())
    return spent + (usage.total_tokens if usage is not None else 0)
