"""What every role needs: its prompt, its settings, its model call, usage and failures."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from insitu.context import InsituContext
from insitu.events import emit
from insitu.graphs.state import EpisodeState
from insitu.llm import ModelEndpointError, call_model, truncation_notice
from insitu.services import Services
from insitu.structured import (
    Asked,
    TokenUsage,
    ask_structured,
    clean_reply_text,
    is_truncated,
    message_text,
)

#: The line of a prompt file that ends the role's instructions and starts the request.
USER_MARKER = "<!-- user -->\n"


@cache
def _template(name: str) -> Template:
    text = resources.files("insitu.nodes").joinpath("prompts", f"{name}.md").read_text("utf-8")
    return Template(text)


def render_prompt(prompt: str, /, **values: Any) -> str:
    """Fill the prompt file ``nodes/prompts/<prompt>.md`` with ``$placeholders``.

    Raises:
        KeyError: A placeholder has no value (a bug, caught by the tests).
    """
    return _template(prompt).substitute(**{k: str(v) for k, v in values.items()})


def prompt_messages(prompt: str, /, **values: Any) -> list[BaseMessage]:
    """Render a prompt file as a system message (the role) and a user message (the request).

    Some chat templates show tools, or follow instructions, only from a system
    message, so each prompt file holds the role's instructions first and the
    request after a ``<!-- user -->`` line.
    """
    text = render_prompt(prompt, **values)
    system, marker, user = text.partition(USER_MARKER)
    if not marker:
        raise ValueError(f"prompt {prompt!r} has no {USER_MARKER.strip()} line")
    return [SystemMessage(content=system.strip()), HumanMessage(content=user.strip())]


def settings(runtime: Runtime[InsituContext] | Any) -> InsituContext:
    """Return the run's settings (defaults when the caller passed no context)."""
    return InsituContext.coerce(getattr(runtime, "context", None))


def usage_update(role: str, usage: TokenUsage) -> dict[str, dict[str, int]]:
    """Return a state update adding ``usage`` to ``role``'s token counts."""
    return {role: usage.as_dict()} if usage.calls else {}


def model_caller(
    role: str, services: Services, context: InsituContext, usage: TokenUsage
) -> Callable[[Sequence[BaseMessage]], Awaitable[AIMessage]]:
    """Return ``messages -> awaitable reply`` for a role: its model, within the endpoint bounds.

    Raises (when awaited):
        ModelEndpointError: The endpoint failed (see :func:`insitu.llm.call_model`).
    """
    model = services.chat_model(role, context)
    return lambda messages: call_model(model, messages, role=role, context=context, usage=usage)


async def ask_role(
    role: str,
    services: Services,
    context: InsituContext,
    messages: Sequence[BaseMessage],
    parse: Callable[[str], Any | Awaitable[Any]],
    usage: TokenUsage,
) -> Asked:
    """Ask a role's model for a structured reply, re-asking on unusable replies.

    Args:
        role: The role whose model is asked (also labels retries in the progress).
        services: Supplies the model.
        context: Supplies ``max_reasks`` and the endpoint bounds.
        messages: The prompt.
        parse: Reply text -> value, raising ``ValueError`` with a model-readable reason.
        usage: Accumulates token usage.

    Raises:
        StructuredOutputError: No usable reply within the bound.
        ModelEndpointError: The endpoint failed.
    """
    return await ask_structured(
        model_caller(role, services, context, usage),
        messages,
        parse,
        max_attempts=1 + context.max_reasks,
        on_retry=lambda attempt, reason: emit(
            "reask",
            f"{role}: unusable reply (attempt {attempt}), asking again: {reason[:120]}",
            role=role,
        ),
    )


async def ask_text(
    role: str,
    services: Services,
    context: InsituContext,
    messages: Sequence[BaseMessage],
    usage: TokenUsage,
) -> str:
    """Ask a role's model for plain text; a reply cut off at the token limit is re-asked.

    Returns:
        The reply's text, cleaned of chat-template tokens (empty when every
        attempt was cut off).

    Raises:
        ModelEndpointError: The endpoint failed.
    """
    call = model_caller(role, services, context, usage)
    conversation = list(messages)
    for _attempt in range(1 + context.max_reasks):
        reply = await call(conversation)
        text = clean_reply_text(message_text(reply))
        if not is_truncated(reply):
            return text
        emit("reask", f"{role}: reply cut off at the token limit, asking again", role=role)
        conversation += [
            AIMessage(content=text or "(empty reply)"),
            HumanMessage(content=truncation_notice(context, role)),
        ]
    return ""


def echoes_prompt(text: str, prompt: Sequence[BaseMessage]) -> bool:
    """Whether a reply repeats its prompt (a weak model's echo) instead of answering it.

    Every prompt file has ``## `` section headings; an answer never repeats one.
    """
    headings = {
        line.strip()
        for message in prompt
        for line in message_text(message).splitlines()
        if line.startswith("## ")
    }
    return any(line.strip() in headings for line in text.splitlines())


#: The ``kind`` of the payload of a pause set with ``pause_before``.
PAUSE_KIND = "insitu.pause"


def pause_point(step: str, state: EpisodeState, context: InsituContext) -> None:
    """Pause before ``step`` when the settings ask for it (``pause_before``).

    A LangGraph interrupt: Studio (or any client) shows the payload, the state
    can be inspected or edited, and resuming (with any value) runs the step.
    The step calls this first, so running it again on resume pauses no more.
    """
    if step in context.pause_before:
        interrupt({"kind": PAUSE_KIND, "step": step, "task_id": state.get("task_id")})


def deadline_update(state: EpisodeState) -> dict[str, Any]:
    """``failure`` (kind ``timeout``) once the episode is past its deadline, else nothing.

    The roles call it as they finish (and the Executor between its steps), so an
    episode over ``episode_timeout_s`` stops at the next step: every model call
    and tool call in between is bounded by its own timeout.
    """
    deadline = state.get("deadline_at")
    if deadline is None or state.get("failure") or time.time() <= deadline:
        return {}
    limit = deadline - state.get("started_at", deadline)
    message = f"the episode ran longer than episode_timeout_s={limit:g} and was stopped"
    emit("timed_out", message)
    return {"failure": {"kind": "timeout", "message": message}}


def failure_update(error: ModelEndpointError) -> dict[str, Any]:
    """The state update of a node whose model endpoint failed: the episode ends, failed."""
    emit("endpoint_failed", error.one_line(), role=error.role)
    return {"failure": error.as_failure()}


def compact_json(value: Any, limit: int = 600) -> str:
    """Render a value as JSON cut to ``limit`` characters (for prompts and records)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"…(+{len(text) - limit} chars)"


def files_section(files: Sequence[str] | None) -> str:
    """Describe the task's working files for a prompt (empty when there are none)."""
    if not files:
        return ""
    listed = "\n".join(f"- {name}" for name in files)
    return (
        "## Files\nThese files are in the tools' working directory (pass their names as "
        f"paths):\n{listed}\n"
    )
