"""The ToolDeveloper: writes requested tools and repairs broken ones, verified by running.

For each request the model writes a module and its tests; the module is
admitted only when it passes static checks and its tests in the sandbox.
Precise errors go back to the model, up to ``max_build_attempts``. Requests of
one round are built in parallel. A tool that cannot be built goes back to the
Manager with the reason; a repaired tool must also pass its old tests, the
call that failed, and reproduce the calls harvested from the tool's real use.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.runtime import Runtime

from insitu.aio import blocking
from insitu.context import InsituContext
from insitu.events import emit
from insitu.graphs.state import BuildFailure, EpisodeState, ToolRequest
from insitu.llm import ModelEndpointError
from insitu.nodes.common import (
    compact_json,
    deadline_update,
    failure_update,
    model_caller,
    pause_point,
    prompt_messages,
    settings,
    usage_update,
)
from insitu.sandbox import Sandbox
from insitu.services import Services
from insitu.structured import (
    StructuredOutputError,
    TokenUsage,
    clean_reply_text,
    code_blocks,
    is_truncated,
    message_text,
    unreadable_reason,
)
from insitu.tool_store.admission import AdmissionError, admit_tool
from insitu.tool_store.contract import BuildCost, ToolRecord, ToolSpec, ToolTest

ROLE = "tool_developer"


class BuildError(RuntimeError):
    """A tool could not be made to pass within the allowed attempts."""

    def __init__(self, name: str, reason: str, attempts: int) -> None:
        self.name = name
        self.reason = reason
        self.attempts = attempts
        super().__init__(f"tool '{name}' could not be built in {attempts} attempt(s): {reason}")


def parse_tool_reply(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split a ToolDeveloper reply into the module source and the test cases.

    Args:
        text: The reply: a ```python block and a ```json block.

    Returns:
        (source, tests as dicts).

    Raises:
        StructuredOutputError: A block is missing, truncated or not a JSON list.
    """
    blocks = code_blocks(text)
    python = [body for lang, body in blocks if lang in ("python", "py")]
    tests = [body for lang, body in blocks if lang == "json"]
    if not python:
        raise StructuredOutputError(
            "the reply has no ```python block with the module; reply with the module in a "
            "```python block and the tests in a ```json block."
        )
    if not tests:
        raise StructuredOutputError(
            "the reply has no ```json block with the tests (possibly truncated); give the tests "
            "as a JSON list in a ```json block after the module."
        )
    try:
        cases = json.loads(tests[-1])
    except json.JSONDecodeError as exc:
        raise StructuredOutputError(f"the tests block is not valid JSON: {exc}") from None
    if isinstance(cases, dict) and isinstance(cases.get("tests"), list):
        cases = cases["tests"]
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise StructuredOutputError("the tests block must be a JSON list of test objects.")
    return python[-1], cases


async def develop_tool(
    prompt: list[BaseMessage],
    *,
    name: str,
    call: Callable[[Sequence[BaseMessage]], Awaitable[AIMessage]],
    sandbox: Sandbox,
    scratch_dir: Path,
    max_attempts: int,
    kept_tests: list[ToolTest] | None = None,
    extra_checks: list[dict[str, Any]] | None = None,
    extra_workdir: Path | None = None,
    harvested: Sequence[ToolTest] = (),
) -> ToolSpec:
    """Ask a model for a tool until it is admitted, feeding errors back.

    Shared by building, repairing and merging: ``kept_tests`` are tests the new
    module must pass in addition to its own (a repair's old tests, a merge's
    union of tests) and stay with it; ``extra_checks`` must pass but are not kept;
    ``harvested`` are calls from the replaced tools' real use whose outputs it
    must reproduce (not kept in its spec: the store keeps them).

    Args:
        prompt: The request (system and user message, from a prompt file).
        name: The name the tool must have.
        call: Asks the model that writes the code (``messages -> awaitable reply``,
            see :func:`insitu.nodes.common.model_caller`; it counts the tokens).
        sandbox: Runs the checks (on insitu's blocking threads).
        scratch_dir: Where temporary test directories are made.
        max_attempts: Model calls allowed.
        kept_tests: Tests that must pass and are kept.
        extra_checks: Calls that must succeed, not kept.
        extra_workdir: Directory for ``extra_checks``.
        harvested: Harvested regression cases (see above).

    Returns:
        The admitted spec.

    Raises:
        BuildError: With the last reason, after ``max_attempts``.
        ModelEndpointError: The model endpoint failed (the build cannot go on).
    """
    messages: list[BaseMessage] = list(prompt)
    reason = "no attempt was made"
    for attempt in range(1, max_attempts + 1):
        emit("building", f"building tool {name} (attempt {attempt})", tool=name, attempt=attempt)
        reply = await call(messages)
        text = clean_reply_text(message_text(reply))
        try:
            unreadable = unreadable_reason(reply)
            if unreadable:
                raise StructuredOutputError(unreadable)
            if is_truncated(reply):
                raise StructuredOutputError(
                    "the reply was cut off at the output-token limit; write a shorter module "
                    "(no comments or docstrings beyond the description) and fewer tests."
                )
            source, cases = parse_tool_reply(text)
            cases = _with_kept_tests(cases, kept_tests or [])
            spec = await blocking(
                admit_tool,
                source,
                cases,
                sandbox=sandbox,
                scratch_dir=scratch_dir,
                expected_name=name,
                extra_checks=extra_checks or (),
                extra_workdir=extra_workdir,
                harvested=harvested,
            )
        except (StructuredOutputError, AdmissionError, ValueError, RecursionError) as exc:
            reason = str(exc) or type(exc).__name__
            emit("rejected", f"tool {name} rejected: {' '.join(reason.split())[:200]}", tool=name)
            messages += [
                AIMessage(content=text or "(empty reply)"),
                HumanMessage(
                    content=f"The tool was not admitted.\n{reason}\n"
                    "Fix every problem and reply again with the complete module (```python) "
                    "and the tests (```json)."
                ),
            ]
            continue
        emit("admitted", f"tool {name} admitted after {attempt} attempt(s)", tool=name)
        return spec
    raise BuildError(name, reason, max_attempts)


def _with_kept_tests(cases: list[dict[str, Any]], kept: list[ToolTest]) -> list[dict[str, Any]]:
    """Return the model's cases plus every kept test (a kept test wins a name clash)."""
    kept_names = {t.name for t in kept}
    return [c for c in cases if c.get("name") not in kept_names] + [t.model_dump() for t in kept]


def new_tool_prompt(request: ToolRequest, task: str) -> list[BaseMessage]:
    """Render the ToolDeveloper prompt for a new tool."""
    return prompt_messages(
        "tool_developer",
        name=request["name"],
        description=request["description"],
        input_hint=request.get("input_hint") or "(choose sensible fields)",
        output_hint=request.get("output_hint") or "(choose sensible fields)",
        context=f"## Why it is needed\nIt is needed for this task (do not specialise the tool to "
        f"it): {task[:600]}\n",
    )


def repair_prompt(record: ToolRecord, failing_call: dict[str, Any]) -> list[BaseMessage]:
    """Render the ToolDeveloper prompt for repairing ``record`` after a failing call."""
    return prompt_messages(
        "tool_repair",
        name=record.name,
        description=record.description,
        source=record.source,
        tests=json.dumps([t.model_dump(exclude_defaults=True) for t in record.tests], indent=1),
        failing_args=compact_json(failing_call.get("args", {}), 1500),
        failing_error=str(failing_call.get("error", ""))[:1500],
    )


def failing_call_check(failing_call: dict[str, Any]) -> dict[str, Any]:
    """The check a repaired tool must pass: the failing call now succeeds."""
    return {
        "name": "previously_failing_call",
        "input": failing_call.get("args", {}),
        "check": "output is not None",
    }


async def repair_tool(
    record: ToolRecord,
    failing_call: dict[str, Any],
    *,
    call: Callable[[Sequence[BaseMessage]], Awaitable[AIMessage]],
    sandbox: Sandbox,
    scratch_dir: Path,
    workdir: Path,
    max_attempts: int,
    harvested: Sequence[ToolTest] = (),
) -> ToolSpec:
    """Write a new version of ``record`` that passes its old tests and the failing call.

    It must also reproduce ``harvested``, the calls kept from the tool's real
    use (``ToolStore.harvested_cases``): a repair that changes their outputs
    is refused, and the reason goes back to the model.

    Raises:
        BuildError: The repair did not pass within ``max_attempts``.
        ModelEndpointError: The model endpoint failed.
    """
    return await develop_tool(
        repair_prompt(record, failing_call),
        name=record.name,
        call=call,
        sandbox=sandbox,
        scratch_dir=scratch_dir,
        max_attempts=max_attempts,
        kept_tests=list(record.tests),
        extra_checks=[failing_call_check(failing_call)],
        extra_workdir=workdir,
        harvested=harvested,
    )


def build_cost(
    role: str, usage: TokenUsage, services: Services, context: InsituContext
) -> BuildCost:
    """What a role's model spent building one version (kept per version by the commit)."""
    from insitu.llm import endpoint_of

    model, _url = endpoint_of(services.chat_model(role, context), context, role)
    return BuildCost(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, model=model, role=role
    )


def local_record(
    spec: ToolSpec,
    *,
    task_id: str,
    origin: str = "generated",
    cost_tokens: int = 0,
    base: ToolRecord | None = None,
    cost: BuildCost | None = None,
) -> ToolRecord:
    """Make the episode-local record of a freshly built or repaired tool.

    A repair of a library tool gets the next version number and lineage; a new
    tool is version 1. The store assigns final versions when it commits.
    ``cost`` (what building it cost) sets ``cost_tokens`` to its total too.
    """
    version = base.version + 1 if base is not None and origin == "repaired" else 1
    record = ToolRecord(
        **spec.model_dump(),
        version=version,
        hash=spec.content_hash(),
        origin=origin,  # type: ignore[arg-type]
        created_by_task=task_id,
        parent_version=base.version if base is not None and origin == "repaired" else None,
    )
    record.stats.creation_cost_tokens = cost.total_tokens if cost is not None else cost_tokens
    record.build_cost = cost
    return record


def resolve_record(
    state: EpisodeState, name: str, services: Services, context: InsituContext
) -> tuple[ToolRecord, bool]:
    """Return the current record of a bound tool and whether it is episode-local.

    Episode-local tools (built or repaired this episode) shadow library tools.
    """
    for pool in ("repaired_tools", "local_tools"):
        data = (state.get(pool) or {}).get(name)
        if data is not None:
            return ToolRecord.model_validate(data), pool == "local_tools"
    return services.store(context).get(name), False


def harvested_for(name: str, services: Services, context: InsituContext) -> list[ToolTest]:
    """The cases harvested from a library tool's real use, that its repair must reproduce."""
    return [c.case for c in services.store(context).harvested_cases(name)]


def scratch_dir_for(workdir: Path) -> Path:
    """Where an episode's tool builds run their tests: beside its workdir, never in it."""
    return workdir.parent / f".{workdir.name}-scratch"


@dataclass
class BuildResult:
    """What building (or repairing) one requested tool came to."""

    request: ToolRequest
    usage: TokenUsage
    record: ToolRecord | None = None
    failure: BuildFailure | None = None
    endpoint_error: ModelEndpointError | None = None
    is_library_repair: bool = False


async def _build_one(
    request: ToolRequest,
    state: EpisodeState,
    services: Services,
    context: InsituContext,
) -> BuildResult:
    usage = TokenUsage()
    call = model_caller(ROLE, services, context, usage)
    sandbox = services.sandbox(context)
    workdir = Path(state["workdir"])
    scratch = scratch_dir_for(workdir)
    task_id = state["task_id"]
    try:
        if "repair_of" in request:
            base, is_local = await blocking(
                resolve_record, state, request["name"], services, context
            )
            harvested = (
                [] if is_local else await blocking(harvested_for, base.name, services, context)
            )
            spec = await repair_tool(
                base,
                request.get("failing_call", {}),
                call=call,
                sandbox=sandbox,
                scratch_dir=scratch,
                workdir=workdir,
                max_attempts=context.max_build_attempts,
                harvested=harvested,
            )
            record = local_record(
                spec,
                task_id=task_id,
                base=base,
                origin="generated" if is_local else "repaired",
                cost=build_cost(ROLE, usage, services, context),
            )
            return BuildResult(request, usage, record=record, is_library_repair=not is_local)
        spec = await develop_tool(
            new_tool_prompt(request, state["task"]),
            name=request["name"],
            call=call,
            sandbox=sandbox,
            scratch_dir=scratch,
            max_attempts=context.max_build_attempts,
        )
        record = local_record(
            spec, task_id=task_id, cost=build_cost(ROLE, usage, services, context)
        )
        return BuildResult(request, usage, record=record)
    except BuildError as exc:
        failure = BuildFailure(
            name=request["name"], reason=exc.reason[-1500:], attempts=exc.attempts
        )
        return BuildResult(request, usage, failure=failure)
    except ModelEndpointError as exc:
        return BuildResult(request, usage, endpoint_error=exc)


async def build_tools(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Build every pending request (in parallel) and bind what was admitted.

    Returns:
        Update: new ``local_tools`` / ``repaired_tools``, ``bound_tools``,
        ``build_failures``, ``build_outcome`` and token usage; ``requests`` cleared.
    """
    context = settings(runtime)
    pause_point("build_tools", state, context)
    requests = list(state.get("requests") or [])
    results = await asyncio.gather(*(_build_one(r, state, services, context) for r in requests))
    local: dict[str, dict[str, Any]] = {}
    repaired: dict[str, dict[str, Any]] = {}
    failures: list[BuildFailure] = []
    usage = TokenUsage()
    endpoint_error: ModelEndpointError | None = None
    for result in results:
        usage.add(result.usage)
        if result.endpoint_error is not None:
            endpoint_error = endpoint_error or result.endpoint_error
        elif result.record is None:
            assert result.failure is not None
            failures.append(result.failure)
            emit(
                "build_failed",
                f"could not build {result.failure['name']}: "
                f"{result.failure['reason'].splitlines()[0][:160]}",
                tool=result.failure["name"],
            )
        else:
            pool = repaired if result.is_library_repair else local
            pool[result.record.name] = result.record.model_dump(mode="json")
    bound = list(state.get("bound_tools") or [])
    bound += [name for name in [*local, *repaired] if name not in bound]
    repairs = state.get("repairs", 0) + sum(1 for r in requests if "repair_of" in r)
    # Tools admitted before an endpoint failure are kept: reflection commits them.
    return {
        "requests": [],
        "local_tools": local,
        "repaired_tools": repaired,
        "bound_tools": bound,
        "build_failures": failures,
        "build_outcome": "failed" if failures or endpoint_error else "ready",
        "repairs": repairs,
        "usage": usage_update(ROLE, usage),
        **(failure_update(endpoint_error) if endpoint_error else deadline_update(state)),
    }
