"""What every role needs: its prompt, its settings, its model call and usage."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.runtime import Runtime

from insitu.context import InsituContext
from insitu.events import emit
from insitu.services import Services
from insitu.structured import Asked, TokenUsage, ask_structured


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


def settings(runtime: Runtime[InsituContext] | Any) -> InsituContext:
    """Return the run's settings (defaults when the caller passed no context)."""
    return InsituContext.coerce(getattr(runtime, "context", None))


def usage_update(role: str, usage: TokenUsage) -> dict[str, dict[str, int]]:
    """Return a state update adding ``usage`` to ``role``'s token counts."""
    return {role: usage.as_dict()} if usage.calls else {}


def ask_role(
    role: str,
    services: Services,
    context: InsituContext,
    messages: Sequence[BaseMessage],
    parse: Callable[[str], Any],
    usage: TokenUsage,
) -> Asked:
    """Ask a role's model for a structured reply, re-asking on unusable replies.

    Args:
        role: The role whose model is asked (also labels retries in the progress).
        services: Supplies the model.
        context: Supplies ``max_reasks``.
        messages: The prompt.
        parse: Reply text -> value, raising ``ValueError`` with a model-readable reason.
        usage: Accumulates token usage.

    Raises:
        StructuredOutputError: No usable reply within the bound.
    """
    return ask_structured(
        services.chat_model(role, context),
        messages,
        parse,
        max_attempts=1 + context.max_reasks,
        usage=usage,
        on_retry=lambda attempt, reason: emit(
            "reask",
            f"{role}: unusable reply (attempt {attempt}), asking again: {reason[:120]}",
            role=role,
        ),
    )


def prompt_message(prompt: str, /, **values: Any) -> list[BaseMessage]:
    """Render a prompt file as the single user message of a request."""
    return [HumanMessage(content=render_prompt(prompt, **values))]


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
