"""The Executor: a bounded ReAct loop over the bound tools, each call in the sandbox.

Tools are rebuilt from their records at the start of every round (state holds
no live tools). Every call is recorded as an :class:`Invocation`; tool errors
are shown to the model, never raised. The model can stop the round through two
report tools: a missing capability (back to the Manager) or a broken tool
(to the ToolDeveloper for repair). A tool that fails twice with an error of
its own is reported as broken automatically.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.runtime import Runtime

from insitu.context import InsituContext
from insitu.events import emit
from insitu.graphs.state import EpisodeState, ExecutorReport, Invocation, ToolRequest
from insitu.nodes.common import compact_json, files_section, render_prompt, settings, usage_update
from insitu.nodes.tool_developer import resolve_record
from insitu.services import Services
from insitu.structured import TokenUsage, message_text
from insitu.tool_store.adapter import as_structured_tool
from insitu.tool_store.contract import now_utc
from insitu.tool_store.errors import ToolNotFoundError

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
                    )
                )
                if not outcome.ok and kind in TOOL_FAULTS:
                    self.faults[name] = self.faults.get(name, 0) + 1
                    self.last_failure[name] = {
                        "args": args,
                        "error": f"{kind}: {outcome.message}"[:1500],
                    }

        return record


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
        tools[name] = as_structured_tool(
            record,
            sandbox=sandbox,
            workdir=workdir,
            max_output_chars=context.max_tool_output_chars,
            on_call=recorder.callback(name, record.version, episode_version),
        )
    return tools, missing


def _history_section(state: EpisodeState) -> str:
    done = state.get("invocations") or []
    if not done:
        return ""
    lines = [
        f"- {i['tool']}({compact_json(i['args'], 200)}) -> {i['output_preview'][:300]}"
        for i in done[-8:]
    ]
    return "## Results from earlier rounds\n" + "\n".join(lines) + "\n"


def _run_tool_calls(
    reply: AIMessage, tools: dict[str, BaseTool], recorder: _Recorder, messages: list[BaseMessage]
) -> ExecutorReport | None:
    """Run one reply's tool calls; return a report if the round must stop."""
    report: ExecutorReport | None = None
    for call in reply.tool_calls:
        name, args, call_id = call["name"], call.get("args") or {}, call.get("id") or call["name"]
        if name == report_missing_capability.name:
            report = ExecutorReport(
                kind="missing_capability",
                message=f"{args.get('capability', '')}: {args.get('why', '')}",
            )
            text = "Reported. The team will provide the capability."
        elif name == report_broken_tool.name:
            broken = str(args.get("tool_name", ""))
            report = ExecutorReport(
                kind="tool_failed",
                tool=broken,
                message=str(args.get("problem", "")),
                failing_call=recorder.last_failure.get(
                    broken, {"args": {}, "error": args.get("problem", "")}
                ),
            )
            text = "Reported. The tool will be repaired."
        elif name in tools:
            emit("calling", f"calling {name}", tool=name)
            text = tools[name].invoke(args)
        else:
            text = (
                f"ERROR: there is no tool named {name!r}; available tools: "
                f"{', '.join(sorted(tools)) or 'none'}."
            )
        messages.append(ToolMessage(content=str(text), tool_call_id=call_id, name=name))
    if report is None:
        for name, count in recorder.faults.items():
            if count >= FAULTS_BEFORE_REPAIR:
                return ExecutorReport(
                    kind="tool_failed",
                    tool=name,
                    message=f"{name} failed {count} times",
                    failing_call=recorder.last_failure[name],
                )
    return report


def repair_requests(
    state: EpisodeState, report: ExecutorReport, services: Services, context: InsituContext
) -> list[ToolRequest]:
    """The repair request for a tool reported broken, unless it may not be changed."""
    name = report.get("tool")
    if report["kind"] != "tool_failed" or not name or context.freeze_library:
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


def execute_task(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Run one bounded ReAct round over the bound tools.

    Returns:
        Update: the round's ``messages`` and ``invocations``, the ``report``
        that decides the next route, ``executor_steps`` and usage.
    """
    context = settings(runtime)
    recorder = _Recorder(state.get("rounds", 1))
    tools, missing = bind_tools(state, services, context, recorder)
    prompt = render_prompt(
        "executor",
        task=state["task"],
        files=files_section(state.get("files")),
        guidance=state.get("guidance") or "(none)",
        history=_history_section(state),
    )
    if missing:
        prompt += f"\nNote: these planned tools are unavailable: {', '.join(missing)}.\n"
    messages: list[BaseMessage] = [HumanMessage(content=prompt)]
    model = services.chat_model(ROLE, context).bind_tools([*tools.values(), *REPORT_TOOLS.values()])
    usage = TokenUsage()
    report: ExecutorReport | None = None
    steps = 0
    emit("executing", f"executing with {len(tools)} tool(s)", tools=sorted(tools))
    while steps < context.max_react_steps and report is None:
        steps += 1
        try:
            reply = model.invoke(messages)
        except Exception as exc:  # an endpoint failure ends the round with a clear report
            report = ExecutorReport(kind="error", message=f"the executor model failed: {exc}")
            break
        usage.add_response(reply)
        messages.append(reply)
        if reply.tool_calls:
            report = _run_tool_calls(reply, tools, recorder, messages)
            continue
        text = message_text(reply).strip()
        if text:
            report = ExecutorReport(kind="done", message=text)
        else:
            messages.append(
                HumanMessage(
                    content="Your reply was empty. Call a tool, or reply "
                    "with the result in plain text."
                )
            )
    if report is None:
        report = ExecutorReport(
            kind="step_limit", message=f"stopped after {steps} steps without a final result"
        )
    emit("executed", f"executor round ended: {report['kind']}", kind=report["kind"])
    return {
        "requests": repair_requests(state, report, services, context),
        "messages": messages,
        "invocations": recorder.invocations,
        "report": report,
        "executor_steps": state.get("executor_steps", 0) + steps,
        "usage": usage_update(ROLE, usage),
    }
