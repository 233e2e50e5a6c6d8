"""State of the episode graph: its input, output and internal schemas.

State holds plain JSON-able data only (tool references, specs and records as
dicts), never live tool or model objects, so that every checkpoint serialises
and Studio can show it. Lists that several nodes append to declare their
reducers explicitly.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

EpisodeStatus = Literal["completed", "incomplete", "failed"]
ReportKind = Literal[
    "done", "no_result", "missing_capability", "tool_failed", "step_limit", "error"
]


class TokenCounts(TypedDict):
    """Token usage of one role, summed over its model calls."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    calls: int


def merge_usage(
    left: dict[str, TokenCounts] | None, right: dict[str, TokenCounts] | None
) -> dict[str, TokenCounts]:
    """Reducer: add token counts role by role."""
    merged: dict[str, TokenCounts] = {k: dict(v) for k, v in (left or {}).items()}  # type: ignore[misc]
    for role, counts in (right or {}).items():
        mine = merged.setdefault(
            role, {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "calls": 0}
        )
        for key in mine:
            mine[key] += int(counts.get(key, 0))  # type: ignore[literal-required]
    return merged


def merge_records(
    left: dict[str, dict[str, Any]] | None, right: dict[str, dict[str, Any] | None] | None
) -> dict[str, dict[str, Any]]:
    """Reducer: tool records by name; a later version of a name replaces the earlier.

    A name mapped to ``None`` is dropped (a tool a reviewer rejected).
    """
    merged = {**(left or {})}
    for name, record in (right or {}).items():
        if record is None:
            merged.pop(name, None)
        else:
            merged[name] = record
    return merged


class Candidate(TypedDict):
    """A tool the Manager may bind: retrieved from the library or built this episode."""

    name: str
    version: int
    description: str
    score: float
    local: bool


class ToolRequest(TypedDict):
    """A tool the Manager asked for, or an existing tool the Executor needs repaired."""

    name: str
    description: str
    input_hint: str
    output_hint: str
    repair_of: NotRequired[str]  # name@version of the tool to repair
    failing_call: NotRequired[dict[str, Any]]  # {"args": ..., "error": ...}


class BuildFailure(TypedDict):
    """Why a requested tool could not be built (shown to the Manager when it re-plans)."""

    name: str
    reason: str
    attempts: int


class Invocation(TypedDict):
    """One tool call made by the Executor, as recorded for statistics and EGL."""

    tool: str
    version: int
    local: bool  # the called version was built or repaired in this episode
    args: dict[str, Any]
    ok: bool
    kind: str
    message: str
    duration_ms: float
    output_chars: int
    output_preview: str
    round: int
    at: NotRequired[str]  # when the call ended (ISO 8601, UTC)
    # The whole output of a successful call when it is small (reflection may keep it as a
    # regression case of the tool, see nodes/learning.py); absent otherwise.
    output: NotRequired[Any]


class EpisodeFailure(TypedDict):
    """Why an episode could not go on: a model endpoint that failed (after its retries),
    or the episode's time limit (``episode_timeout_s``).

    The episode then ends ``failed`` with this record; for an endpoint,
    ``insitu.llm.ModelEndpointError`` is rebuilt from it for Python callers.
    """

    kind: Literal["endpoint", "timeout"]
    message: str  # one line
    role: NotRequired[str]
    model: NotRequired[str]
    url: NotRequired[str]
    status: NotRequired[int | None]


class ExecutorReport(TypedDict):
    """How an Executor round ended, which decides the next route."""

    kind: ReportKind
    message: str
    tool: NotRequired[str]
    failing_call: NotRequired[dict[str, Any]]


class EpisodeInput(TypedDict):
    """What a caller gives the episode graph: one task."""

    task: str
    task_id: NotRequired[str]
    files: NotRequired[list[str]]


class EpisodeMetrics(TypedDict):
    """The episode's evolution counters (what EGL is built from) and effort."""

    tools_created: int
    tools_repaired: int
    tool_invocations: int
    tool_successes: int
    rounds: int
    executor_steps: int


class SandboxUsed(TypedDict):
    """Where an episode's tools ran: the sandbox backend and how strongly it isolates."""

    backend: str  # "bwrap" or "degraded"
    isolation: str  # "strong", "weak" or "none"


class EpisodeOutput(TypedDict):
    """What the episode graph returns to a caller or a parent graph."""

    task_id: str
    answer: str
    status: EpisodeStatus
    tools_used: list[str]
    tools_created: list[str]
    tools_repaired: list[str]
    new_tools: list[dict[str, Any]]
    library_calls: list[dict[str, Any]]
    # The Manager's last candidates: what retrieval offered it (``local`` ones were built
    # in the episode); ``insitu eval replay`` measures retrieval with them.
    candidates: NotRequired[list[Candidate]]
    commit_error: NotRequired[str]
    failure: NotRequired[EpisodeFailure]
    rejected_tools: NotRequired[list[dict[str, Any]]]
    sandbox: NotRequired[SandboxUsed]
    metrics: EpisodeMetrics
    usage: dict[str, TokenCounts]
    reflection: str
    # What the episode learned, when its commit is deferred (a batch commits it):
    # {"experiences": [...], "usage_notes": [...], "cases": [...]} (tool_store/learning.py)
    learning: NotRequired[dict[str, list[dict[str, Any]]]]


class EpisodeState(TypedDict, total=False):
    """Everything the roles read and write while solving one task."""

    # input
    task: str
    task_id: str
    files: list[str]
    workdir: str
    sandbox: SandboxUsed
    started_at: float  # time.time() when the episode started
    deadline_at: float  # started_at + episode_timeout_s: the roles stop after it
    # Manager
    rounds: int
    replans_left: int  # max_rounds - rounds: read by the routers
    candidates: list[Candidate]
    bound_tools: list[str]
    guidance: str
    plan_reused: str  # the id of the experience whose plan this episode reused, or ""
    requests: list[ToolRequest]
    plan_error: str
    # ToolDeveloper
    build_outcome: Literal["ready", "failed"]
    local_tools: Annotated[dict[str, dict[str, Any]], merge_records]
    repaired_tools: Annotated[dict[str, dict[str, Any]], merge_records]
    build_failures: Annotated[list[BuildFailure], operator.add]
    repairs: int
    # Executor
    messages: Annotated[list[AnyMessage], add_messages]
    invocations: Annotated[list[Invocation], operator.add]
    report: ExecutorReport
    executor_steps: int
    # Integrator and reflection
    answer: str
    status: EpisodeStatus
    tokens_spent: int  # by the roles until the answer was written (for the experience)
    usage: Annotated[dict[str, TokenCounts], merge_usage]
    tools_used: list[str]
    tools_created: list[str]
    tools_repaired: list[str]
    new_tools: list[dict[str, Any]]
    library_calls: list[dict[str, Any]]
    commit_error: str
    metrics: EpisodeMetrics
    reflection: str
    # what reflection learned (nodes/learning.py), committed with the tools or deferred
    experience: dict[str, Any]  # an Experience (tool_store/learning.py)
    usage_notes: dict[str, str]  # tool name -> how to call it
    harvested_cases: list[dict[str, Any]]  # HarvestedCase dicts
    learning: dict[str, list[dict[str, Any]]]
    # a human reviewer (tool_approval): tools kept out of the library, with the reason
    rejected_tools: Annotated[list[dict[str, Any]], operator.add]
    # any role
    failure: EpisodeFailure
