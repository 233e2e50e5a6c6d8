"""LangChain ``StructuredTool`` views of stored tools, built at call time.

Graph state keeps tool references and specs only (live tool objects do not
checkpoint); the Executor builds these wrappers from the records whenever it
binds tools. Each call runs in the sandbox and comes back as text for the
model: the JSON output, or the error kind and message. Nothing raises.

A call receives the real values of the secrets its tool declares only when the
operator allowed them (the allow-list bound to the sandbox); a tool declaring
any other secret is not run, and its calls say why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.tools import StructuredTool

from insitu.tool_store.admission import secret_policy
from insitu.tool_store.contract import ToolSpec

if TYPE_CHECKING:
    from insitu.sandbox import Outcome, Sandbox

TRUNCATION_MARKER = "…[truncated {n} characters]"


def render_outcome(outcome: Outcome, max_chars: int) -> str:
    """Render a sandbox outcome as the text the model sees.

    Args:
        outcome: The call's outcome.
        max_chars: Longest text shown; longer outputs are cut with a marker.

    Returns:
        The output as JSON on success, else ``ERROR (<kind>): <message>``.
    """
    if outcome.ok:
        text = json.dumps(outcome.output, ensure_ascii=False, default=str)
    else:
        text = f"ERROR ({outcome.kind}): {outcome.message}"
        if outcome.traceback:
            text += f"\n{outcome.traceback}"
    if len(text) > max_chars:
        text = text[:max_chars] + TRUNCATION_MARKER.format(n=len(text) - max_chars)
    return text


def _refused(sandbox: Sandbox, reason: str) -> Outcome:
    """The outcome of a call that was not run: the tool declares a secret not allowed."""
    from insitu.sandbox import ErrorKind, Outcome

    outcome = Outcome.failure(ErrorKind.SANDBOX, reason)
    outcome.backend, outcome.isolation = sandbox.backend, sandbox.isolation_level
    return outcome


def as_structured_tool(
    spec: ToolSpec,
    *,
    sandbox: Sandbox,
    workdir: Path,
    max_output_chars: int = 4000,
    on_call: Callable[[dict[str, Any], Outcome, str], None] | None = None,
    timeout_s: float | None = None,
) -> StructuredTool:
    """Wrap a tool spec as a LangChain ``StructuredTool`` that runs in the sandbox.

    Args:
        spec: The tool (a ``ToolSpec`` or ``ToolRecord``).
        sandbox: Runs each call (warm worker).
        workdir: The call's writable directory.
        max_output_chars: Truncation limit of the text returned to the model.
        on_call: Called with (args, outcome, rendered text) after every call, to
            record invocations.
        timeout_s: Per-call wall-clock limit (default: the sandbox's).

    Returns:
        A tool whose argument schema is the spec's input schema.
    """
    policy = secret_policy(sandbox)
    # A tool stored before the allow-list, or under a wider one, is not run at all.
    refusal = policy.refusal(spec.name, spec.secrets)
    secrets = policy.values(spec.secrets)

    def call(**kwargs: Any) -> str:
        if refusal:
            outcome = _refused(sandbox, refusal)
        else:
            outcome = sandbox.call(
                spec.source,
                kwargs,
                workdir=workdir,
                network=spec.network,
                secrets=secrets,
                timeout_s=timeout_s,
            )
        text = render_outcome(outcome, max_output_chars)
        if on_call is not None:
            on_call(kwargs, outcome, text)
        return text

    schema = dict(spec.input_schema)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    schema["title"] = spec.name
    schema.setdefault("description", spec.description)
    return StructuredTool.from_function(
        func=call,
        name=spec.name,
        description=spec.description,
        args_schema=schema,
    )
