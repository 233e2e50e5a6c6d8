"""The Executor: a bounded ReAct loop over the bound tools, each call in the sandbox.

Tools are rebuilt from their records at the start of every round (state holds
no live tools). Every call is recorded as an :class:`Invocation`; tool errors
are shown to the model, never raised. The model can stop the round through two
report tools: a missing capability (back to the Manager) or a broken tool
(to the ToolDeveloper for repair). A tool that fails twice with an error of
its own is reported as broken automatically.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.runtime import Runtime
from pydantic import AliasChoices, BaseModel, Field

from insitu.aio import blocking
from insitu.context import InsituContext
from insitu.events import emit, emit_detail
from insitu.graphs.state import EpisodeState, ExecutorReport, Invocation, ToolRequest
from insitu.llm import (
    ModelEndpointError,
    call_model,
    probe_tool_calling,
    require_tool_calling,
    truncation_notice,
)
from insitu.nodes.common import (
    compact_json,
    deadline_update,
    echoes_prompt,
    failure_update,
    files_section,
    pause_point,
    prompt_messages,
    render_prompt,
    settings,
    usage_update,
)
from insitu.nodes.tool_developer import resolve_record
from insitu.services import Services
from insitu.structured import (
    StructuredOutputError,
    TokenUsage,
    clean_reply_text,
    is_truncated,
    message_text,
    parse_reply,
    unreadable_reason,
    unusable_answer_reason,
)
from insitu.tool_store.adapter import as_structured_tool
from insitu.tool_store.contract import now_utc
from insitu.tool_store.errors import StoreError, ToolNotFoundError
from insitu.tool_store.learning import MAX_CASE_CHARS
from insitu.tool_store.mcp_tools import as_mcp_tool, mcp_binding

ROLE = "executor"
#: Outcome kinds that point at the tool rather than at the arguments it was given.
TOOL_FAULTS = frozenset({"exception", "invalid_output", "crash", "memory", "timeout", "dependency"})
FAULTS_BEFORE_REPAIR = 2


@tool
def report_missing_capability(capability: str, why: str) -> str:
    """Stop and report that no available tool provides a capability the task needs.

    Args:
        capability: What is missing, as a general capability (e.g. "parse XLSX sheets").
        why: Why the task needs it.
    """
    return "reported"


@tool
def report_broken_tool(tool_name: str, problem: str) -> str:
    """Stop and report that a tool has a bug (not a mistake in the arguments you gave it).

    Args:
        tool_name: The tool that misbehaves.
        problem: What goes wrong.
    """
    return "reported"


REPORT_TOOLS = {t.name: t for t in (report_missing_capability, report_broken_tool)}


class _Recorder:
    """Collects invocations from tool callbacks (thread-safe) and counts faults per tool."""

    def __init__(self, round_number: int) -> None:
        self.round = round_number
        self.invocations: list[Invocation] = []
        self.faults: dict[str, int] = {}
        self.last_failure: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def callback(self, name: str, version: int, local: bool):
        def record(args: dict[str, Any], outcome: Any, text: str) -> None:
            kind = str(outcome.kind)
            backend = getattr(outcome, "backend", "")
            with self._lock:
                self.invocations.append(
                    Invocation(
                        tool=name,
                        version=version,
                        local=local,
                        args=args,
                        ok=bool(outcome.ok),
                        kind=kind,
                        message=outcome.message[:500],
                        duration_ms=float(outcome.duration_ms),
                        output_chars=len(text),
                        output_preview=text[:500],
                        round=self.round,
                        at=now_utc().isoformat(),
                        **_small_output(outcome),
                    )
                )
                emit_detail(
                    "tool_call",
                    f"{name}@v{version} · {'ok' if outcome.ok else kind} · "
                    f"{outcome.duration_ms:.0f} ms in the sandbox ({backend or '-'}) · "
                    f"{len(text)} chars out",
                    tool=name,
                    version=version,
                    ok=bool(outcome.ok),
                    kind=kind,
                    duration_ms=round(float(outcome.duration_ms), 2),
                    backend=backend,
                )
                if not outcome.ok and kind in TOOL_FAULTS:
                    self.faults[name] = self.faults.get(name, 0) + 1
                    self.last_failure[name] = {
                        "args": args,
                        "error": f"{kind}: {outcome.message}"[:1500],
                    }

        return record


def _small_output(outcome: Any) -> dict[str, Any]:
    """``{"output": ...}`` for a successful call whose output is small enough to keep.

    Reflection may keep such a call as a regression case of its tool; a larger
    output is never kept, so it is not carried in the state either.
    """
    if not outcome.ok or not isinstance(outcome.output, dict):
        return {}
    try:
        size = len(json.dumps(outcome.output, ensure_ascii=False))
    except (TypeError, ValueError):
        return {}
    return {"output": outcome.output} if size <= MAX_CASE_CHARS else {}


def bind_tools(
    state: EpisodeState, services: Services, context: InsituContext, recorder: _Recorder
) -> tuple[dict[str, BaseTool], list[str]]:
    """Build the round's tools from their records; return them and any that are missing."""
    sandbox = services.sandbox(context)
    workdir = Path(state["workdir"])
    tools: dict[str, BaseTool] = {}
    missing = []
    for name in state.get("bound_tools") or []:
        try:
            record, local = resolve_record(state, name, services, context)
        except ToolNotFoundError:
            missing.append(name)
            continue
        # A version built or repaired in this episode is not in the library yet,
        # so its calls count for the episode but not for library statistics.
        episode_version = local or name in (state.get("repaired_tools") or {})
        if mcp_binding(record) is not None:  # runs in its external MCP server, not sandboxed
            tools[name] = as_mcp_tool(
                record,
                timeout_s=context.tool_timeout_s,
                max_output_chars=context.max_tool_output_chars,
                on_call=recorder.callback(name, record.version, episode_version),
            )
            continue
        tools[name] = as_structured_tool(
            record,
            sandbox=sandbox,
            workdir=workdir,
            max_output_chars=context.max_tool_output_chars,
            on_call=recorder.callback(name, record.version, episode_version),
        )
    return tools, missing


def usage_notes_section(
    state: EpisodeState, names: list[str], services: Services, context: InsituContext
) -> str:
    """How to call the bound tools, as reflection learned it from their earlier calls.

    Each tool's note is the one of its bound version (carried forward from older
    versions, see ``ToolStore.usage_notes``), cut to ``usage_notes_max_chars``.
    """
    if context.usage_notes_max_chars <= 0:
        return ""
    store = services.store(context)
    lines = []
    for name in names:
        try:
            record, local = resolve_record(state, name, services, context)
            note = None if local else store.usage_notes(name, record.version)
        except (ToolNotFoundError, StoreError):
            continue
        if note is not None:
            text = " ".join(note.notes.split())[: context.usage_notes_max_chars]
            lines.append(f"- {name}: {text}")
    if not lines:
        return ""
    return (
        "## Notes on calling these tools (learned from earlier calls)\n" + "\n".join(lines) + "\n"
    )


def _history_section(state: EpisodeState) -> str:
    done = state.get("invocations") or []
    if not done:
        return ""
    lines = [
        f"- {i['tool']}({compact_json(i['args'], 200)}) -> {i['output_preview'][:300]}"
        for i in done[-8:]
    ]
    return "## Results from earlier rounds\n" + "\n".join(lines) + "\n"


class Action(BaseModel):
    """One step of the Executor's text protocol: a tool call, or the final answer."""

    tool: str | None = Field(default=None, validation_alias=AliasChoices("tool", "name"))
    arguments: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("arguments", "args", "parameters")
    )
    answer: str | None = None


#: A tool call written as text in the Hermes style, by servers that do not parse it.
_TAGGED_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)


def parse_action(text: str) -> Action:
    """Parse a text-protocol reply (a JSON action) of the Executor.

    Raises:
        StructuredOutputError: The reply holds no action (with the reason).
    """
    action = parse_reply(text, Action)
    if not action.tool and action.answer is None:
        raise StructuredOutputError(
            'the JSON names no "tool" and gives no "answer"; reply with one of them.'
        )
    return action


def _text_action_calls(text: str, known: set[str]) -> list[dict[str, Any]] | None:
    """The tool calls a plain-text reply holds, if it holds any.

    A server that ignores ``tools``, or does not parse its model's tool calls,
    returns them as text: ``<tool_call>{...}</tool_call>`` blocks, or a JSON
    action naming a known tool. Those are taken as calls rather than as an answer.
    """
    tagged = _TAGGED_CALL.findall(text)
    if tagged:
        calls = []
        for body in tagged:
            try:
                action = parse_action(body)
            except (StructuredOutputError, ValueError, RecursionError) as exc:
                calls.append({"name": "", "args": {}, "id": None, "error": str(exc)[:300]})
                continue
            calls.append({"name": action.tool or "", "args": action.arguments, "id": None})
        return calls
    if "{" not in text:
        return None
    try:
        action = parse_action(text)
    except (StructuredOutputError, ValueError, RecursionError):
        return None
    if action.tool and action.tool in known:
        return [{"name": action.tool, "args": action.arguments, "id": None}]
    return None


def _call_tool(tool: BaseTool, args: Any) -> str:
    """Run one tool call; arguments the tool cannot take are an error shown to the model."""
    if not isinstance(args, dict):
        return (
            f"ERROR: the arguments of {tool.name} must be a JSON object, not {type(args).__name__}."
        )
    try:
        return str(tool.invoke(args))
    except Exception as exc:  # a validation error of the arguments, shown to the model
        return f"ERROR: {tool.name} could not be called with these arguments: {exc}"[:2000]


async def _run_tool_calls(
    calls: list[dict[str, Any]], tools: dict[str, BaseTool], recorder: _Recorder
) -> tuple[ExecutorReport | None, list[tuple[dict[str, Any], str]]]:
    """Run one reply's tool calls; return a report if the round must stop, and each result."""
    report: ExecutorReport | None = None
    results: list[tuple[dict[str, Any], str]] = []
    for call in calls:
        name, args = str(call.get("name") or ""), call.get("args")
        if args is None:
            args = {}
        if call.get("error"):  # an invalid tool call: its arguments were not JSON
            text = f"ERROR: the arguments of this call are not valid JSON: {call['error']}"
        elif name == report_missing_capability.name and isinstance(args, dict):
            report = ExecutorReport(
                kind="missing_capability",
                message=f"{args.get('capability', '')}: {args.get('why', '')}",
            )
            text = "Reported. The team will provide the capability."
        elif name == report_broken_tool.name and isinstance(args, dict):
            broken = str(args.get("tool_name", ""))
            report = ExecutorReport(
                kind="tool_failed",
                tool=broken,
                message=str(args.get("problem", "")),
                failing_call=recorder.last_failure.get(
                    broken, {"args": {}, "error": str(args.get("problem", ""))}
                ),
            )
            text = "Reported. The tool will be repaired."
        elif name in tools:
            emit("calling", f"calling {name}", tool=name)
            text = await blocking(_call_tool, tools[name], args)
        else:
            shown = name if len(name) <= 80 else name[:80] + "…"
            text = (
                f"ERROR: there is no tool named {shown!r}; available tools: "
                f"{', '.join(sorted([*tools, *REPORT_TOOLS])) or 'none'}."
            )
        results.append((call, text))
    if report is None:
        for name, count in recorder.faults.items():
            if count >= FAULTS_BEFORE_REPAIR:
                return ExecutorReport(
                    kind="tool_failed",
                    tool=name,
                    message=f"{name} failed {count} times",
                    failing_call=recorder.last_failure[name],
                ), results
    return report, results


def repair_requests(
    state: EpisodeState, report: ExecutorReport, services: Services, context: InsituContext
) -> list[ToolRequest]:
    """The repair request for a tool reported broken, unless it may not be changed.

    None once the episode has used its ``max_repairs`` (the router reads a
    pending request as "repair").
    """
    name = report.get("tool")
    if report["kind"] != "tool_failed" or not name or context.freeze_library:
        return []
    if state.get("repairs", 0) >= context.max_repairs:
        return []
    try:
        record, _local = resolve_record(state, name, services, context)
    except ToolNotFoundError:
        return []
    if record.locked:
        return []
    return [
        ToolRequest(
            name=name,
            description=record.description,
            input_hint="",
            output_hint="",
            repair_of=record.ref,
            failing_call=report.get("failing_call") or {},
        )
    ]


async def tool_calling_mode(model: Any, services: Services, context: InsituContext) -> str:
    """How this run's Executor calls tools: ``native`` or ``text`` (see ``tool_calling``).

    ``auto`` probes an endpoint-built model once per endpoint and model; a model
    passed from Python is taken as native.

    Raises:
        ConfigurationError: Native tool calling with a model that has no ``bind_tools``.
        ModelEndpointError: The probe's endpoint failed.
    """
    if context.tool_calling == "text":
        return "text"
    require_tool_calling(model)
    if context.tool_calling == "native" or services.injected(ROLE):
        return "native"
    return "native" if await probe_tool_calling(model, ROLE, context) else "text"


def _tools_section(tools: dict[str, BaseTool]) -> str:
    """The tools as the text protocol shows them: name, description, argument schema."""
    lines = []
    for shown in [*tools.values(), *REPORT_TOOLS.values()]:
        schema = shown.args_schema if isinstance(shown.args_schema, dict) else shown.args
        properties = schema.get("properties", schema) if isinstance(schema, dict) else {}
        fields = {
            key: {k: v for k, v in (spec or {}).items() if k in ("type", "description", "items")}
            for key, spec in properties.items()
        }
        lines.append(f"- {shown.name}: {shown.description.strip()[:400]}")
        lines.append(f"  arguments: {compact_json(fields, 800)}")
    return "\n".join(lines)


class _Round:
    """One Executor round's conversation, in the native or the text protocol."""

    def __init__(
        self,
        mode: str,
        model: Any,
        state: EpisodeState,
        tools: dict[str, BaseTool],
        missing: list[str],
        context: InsituContext,
        tool_notes: str = "",
    ) -> None:
        self.mode = mode
        self.tools = tools
        protocol = (
            render_prompt("executor_text_protocol", tools=_tools_section(tools))
            if mode == "text"
            else ""
        )
        self.messages: list[BaseMessage] = prompt_messages(
            "executor",
            task=state["task"],
            files=files_section(state.get("files")),
            guidance=state.get("guidance") or "(none)",
            tool_notes=tool_notes,
            history=_history_section(state),
            protocol=protocol,
        )
        if missing:
            self.messages[
                -1
            ].content += f"\n\nNote: these planned tools are unavailable: {', '.join(missing)}."
        if mode == "native":
            model = model.bind_tools(
                [*tools.values(), *REPORT_TOOLS.values()], tool_choice=context.tool_choice
            )
        self.model = model

    def calls_in(self, reply: AIMessage) -> tuple[list[dict[str, Any]], str | None]:
        """The tool calls a reply makes, and its final text if it makes none."""
        text = clean_reply_text(message_text(reply))
        if self.mode == "native":
            calls = [dict(c) for c in reply.tool_calls] + [
                {
                    "name": c.get("name"),
                    "args": {},
                    "id": c.get("id"),
                    "error": c.get("error") or "unparseable arguments",
                }
                for c in reply.invalid_tool_calls
            ]
            if calls:
                return calls, None
            fallback = _text_action_calls(text, {*self.tools, *REPORT_TOOLS})
            return (fallback, None) if fallback else ([], text)
        try:
            action = parse_action(text)
        except (StructuredOutputError, ValueError, RecursionError):
            return [], text  # prose: judged as a final answer
        if action.tool:
            return [{"name": action.tool, "args": action.arguments, "id": None}], None
        return [], clean_reply_text(action.answer or "")

    def add_reply(self, reply: AIMessage, results: list[tuple[dict[str, Any], str]]) -> None:
        """Append the model's reply and the results of its calls to the conversation."""
        native_calls = self.mode == "native" and (reply.tool_calls or reply.invalid_tool_calls)
        if native_calls:
            self.messages.append(reply)
            for call, text in results:
                self.messages.append(
                    ToolMessage(
                        content=text,
                        tool_call_id=call.get("id") or str(call.get("name") or "call"),
                        name=str(call.get("name") or "")[:64],
                    )
                )
            return
        self.messages.append(AIMessage(content=message_text(reply) or "(empty reply)"))
        if results:
            self.messages.append(
                HumanMessage(
                    content="\n\n".join(
                        f"Result of {str(call.get('name'))[:80]}:\n{text}" for call, text in results
                    )
                )
            )

    def ask_again(self, reason: str) -> None:
        """Tell the model why its reply was not used (it gets another step)."""
        self.messages.append(HumanMessage(content=reason))


async def execute_task(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Run one bounded ReAct round over the bound tools.

    A final reply counts as a result only when it is one: not empty, not junk
    or chat-template tokens, not a give-up, and, when tools were bound, after
    at least one of them was called in this task. Otherwise the model is told
    why and asked again within the step bound; then the round ends
    ``no_result`` with the reason.

    Returns:
        Update: the round's ``messages`` and ``invocations``, the ``report``
        that decides the next route, ``executor_steps`` and usage; ``failure``
        when the model endpoint failed.
    """
    context = settings(runtime)
    pause_point("execute_task", state, context)
    recorder = _Recorder(state.get("rounds", 1))
    usage = TokenUsage()
    tools, missing = await blocking(bind_tools, state, services, context, recorder)
    model = services.chat_model(ROLE, context)
    try:
        mode = await tool_calling_mode(model, services, context)
    except ModelEndpointError as exc:
        return {"usage": usage_update(ROLE, usage), **failure_update(exc)}
    notes = await blocking(usage_notes_section, state, sorted(tools), services, context)
    conversation = _Round(mode, model, state, tools, missing, context, notes)
    used_before = bool(state.get("invocations"))
    report: ExecutorReport | None = None
    failure: dict[str, Any] = {}
    steps = reasks = 0
    emit("executing", f"executing with {len(tools)} tool(s) ({mode})", tools=sorted(tools))
    while steps < context.max_react_steps and report is None:
        failure = deadline_update(state)
        if failure:
            report = ExecutorReport(kind="error", message=failure["failure"]["message"])
            break
        steps += 1
        try:
            reply = await call_model(
                conversation.model, conversation.messages, role=ROLE, context=context, usage=usage
            )
        except ModelEndpointError as exc:
            report = ExecutorReport(kind="error", message=exc.one_line())
            failure = failure_update(exc)
            break
        calls, final_text = conversation.calls_in(reply)
        if calls:
            report, results = await _run_tool_calls(calls, tools, recorder)
            conversation.add_reply(reply, results)
            continue
        conversation.add_reply(reply, [])
        reason = _why_not_a_result(final_text or "", reply, tools, recorder, used_before, context)
        if reason is None and echoes_prompt(final_text or "", conversation.messages[:2]):
            reason = "the reply repeats the instructions instead of giving a result"
        if reason is None:
            report = ExecutorReport(kind="done", message=final_text or "")
        elif reasks < context.max_reasks:
            reasks += 1
            conversation.ask_again(f"That is not a usable result: {reason}. {_NEXT_STEP[mode]}")
        else:
            report = ExecutorReport(kind="no_result", message=reason)
    if report is None:
        report = ExecutorReport(
            kind="step_limit", message=f"stopped after {steps} steps without a final result"
        )
    emit("executed", f"executor round ended: {report['kind']}", kind=report["kind"])
    return {
        "requests": await blocking(repair_requests, state, report, services, context),
        "messages": conversation.messages,
        "invocations": recorder.invocations,
        "report": report,
        "executor_steps": state.get("executor_steps", 0) + steps,
        "usage": usage_update(ROLE, usage),
        **failure,
    }


_NEXT_STEP = {
    "native": "Call a tool, or reply with the final result in plain text.",
    "text": 'Reply with one JSON object: {"tool": ..., "arguments": ...} or {"answer": ...}.',
}


def _why_not_a_result(
    text: str,
    reply: AIMessage,
    tools: dict[str, BaseTool],
    recorder: _Recorder,
    used_before: bool,
    context: InsituContext,
) -> str | None:
    """Why a final reply is not a result, or ``None`` when it is one."""
    unreadable = unreadable_reason(reply)
    if unreadable:
        return unreadable
    if is_truncated(reply):
        return truncation_notice(context, ROLE)
    reason = unusable_answer_reason(text)
    if reason:
        return reason
    if tools and not recorder.invocations and not used_before:
        return (
            f"no tool was called, although {len(tools)} tool(s) were provided to compute the "
            "result exactly"
        )
    return None
