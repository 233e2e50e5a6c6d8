"""The Manager: retrieves candidate tools, binds some, and requests missing ones.

It never sees the whole library: only the top-k tools retrieved for the task
(hybrid search) plus the tools built during this episode, so its prompt does
not grow with the library. Next to them it sees the experiences of the most
similar earlier tasks (what was used, what worked, what failed), within a
fixed share of the prompt (``experiences_max_chars``). Its JSON reply is validated against those
candidates and the naming discipline; an invalid reply is re-asked a bounded
number of times, then the episode goes to the Integrator with the reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from insitu.aio import blocking
from insitu.context import InsituContext
from insitu.events import emit
from insitu.graphs.state import Candidate, EpisodeState, ToolRequest
from insitu.llm import ModelEndpointError
from insitu.nodes.common import (
    ask_role,
    compact_json,
    deadline_update,
    failure_update,
    files_section,
    pause_point,
    prompt_messages,
    settings,
    usage_update,
)
from insitu.services import Services
from insitu.structured import StructuredOutputError, TokenUsage, parse_reply
from insitu.tool_store.contract import TOOL_NAME_PATTERN
from insitu.tool_store.errors import StoreError
from insitu.tool_store.learning import Experience, ToolRef

ROLE = "manager"
log = logging.getLogger("insitu.manager")
EXPERIENCES_HEADING = "## Experience from similar earlier tasks (what was used, what worked)\n"
#: An experience is not shown in fewer characters than this (fewer are shown instead).
MIN_EXPERIENCE_CHARS = 80

#: Words that mark a "run arbitrary code" tool, which the discipline forbids.
_ARBITRARY_CODE = re.compile(
    r"(?:^|_)(?:exec|execute|eval|evaluate|run)_(?:python|code|script|shell|command|"
    r"expression|snippet)s?(?:_|$)|(?:^|_)python_(?:repl|interpreter)(?:_|$)"
)


class RequestedTool(BaseModel):
    """A new tool the Manager asks for."""

    name: str = Field(description="verb_object name")
    description: str = Field(description="What it does and returns.")
    input: str = Field(default="", description="Input fields.")
    output: str = Field(default="", description="Output fields.")


class ManagerDecision(BaseModel):
    """The Manager's structured reply."""

    bind: list[str] = Field(default_factory=list)
    requests: list[RequestedTool] = Field(default_factory=list)
    guidance: str = ""


def retrieve_candidates(
    state: EpisodeState, services: Services, context: InsituContext
) -> list[Candidate]:
    """Return the library's top-k tools for the task plus this episode's own tools.

    A pruned tool that the task would have found first is revived beforehand
    (``revive_archived``), so that it is bound instead of being built again.
    """
    store = services.store(context)
    if context.revive_archived and not context.freeze_library:
        revive_pruned_tool(store, state, context)
    hits = store.search(state["task"], k=context.retrieval_k)
    candidates = [
        Candidate(
            name=h.record.name,
            version=h.record.version,
            description=h.record.description,
            score=round(float(h.score), 4),
            local=False,
        )
        for h in hits
    ]
    known = {c["name"] for c in candidates}
    for pool in ("local_tools", "repaired_tools"):
        for name, record in (state.get(pool) or {}).items():
            if name not in known:
                known.add(name)
                candidates.append(
                    Candidate(
                        name=name,
                        version=record["version"],
                        description=record["description"],
                        score=1.0,
                        local=True,
                    )
                )
    return candidates


#: The guidance of a reused plan: the Executor is told where it comes from.
REUSED_GUIDANCE = (
    "(This plan solved a very similar earlier task; apply it to this task's own values.) {guidance}"
)


def recalled_candidates(
    experiences: Sequence[Experience], candidates: Sequence[Candidate], store: Any
) -> list[Candidate]:
    """The tools that solved similar earlier tasks, when the search did not return them.

    Retrieval over a large library can miss a tool that a recalled experience
    names; the experiences are few and their search does not grow with the
    library, so a task solved once keeps finding its tools (tested with 100,000
    distractor tools, ``docs/performance.md``).
    """
    known = {c["name"] for c in candidates}
    found: list[Candidate] = []
    for experience in experiences:
        if experience.status != "completed":
            continue
        for ref in experience.tools:
            if not ref.called or ref.stale or ref.name in known:
                continue
            known.add(ref.name)
            try:
                record = store.get(ref.name)
            except StoreError:  # gone since: nothing to offer
                continue
            if record.status != "active":
                continue
            found.append(
                Candidate(
                    name=record.name,
                    version=record.version,
                    description=record.description,
                    score=round(float(experience.similarity or 0.0), 4),
                    local=False,
                )
            )
    return found


def reusable_plan(
    state: EpisodeState, experiences: Sequence[Experience], store: Any, context: InsituContext
) -> Experience | None:
    """The experience whose plan the first round reuses instead of asking the Manager, if any.

    Only the most similar experience is considered, and only when it is at
    least ``reuse_plan_min_similarity`` similar, completed, has guidance, and
    every tool it called is still active and not stale. A later round (after
    a failure) always asks the Manager.
    """
    threshold = context.reuse_plan_min_similarity
    if threshold is None or not experiences or state.get("rounds", 0) > 0:
        return None
    best = experiences[0]
    if (
        best.status != "completed"
        or not best.guidance.strip()
        or (best.similarity or 0.0) < threshold
    ):
        return None
    for ref in best.tools:
        if not ref.called:
            continue
        if ref.stale or not store.has(ref.name, include_archived=False):
            return None
    return best


def revive_pruned_tool(store: Any, state: EpisodeState, context: InsituContext) -> None:
    """Restore the pruned tool a search for the task ranks first (see tool_store/pruning.py).

    A store that refuses the restore leaves the plan as it was: reviving is an
    optimisation, never a reason for a task to fail.
    """
    from insitu.tool_store.pruning import revive_for_task

    try:
        revived = revive_for_task(
            store,
            state["task"],
            k=context.retrieval_k,
            min_similarity=context.revive_min_similarity,
            why=f"task {state.get('task_id') or '?'}",
        )
    except StoreError as exc:
        emit("revive_failed", f"could not revive an archived tool: {exc}")
        return
    if revived is not None:
        emit("revived", f"revived the archived tool {revived.name}", tool=revived.name)


def validate_decision(
    decision: ManagerDecision, candidates: list[Candidate], context: InsituContext, library_has: Any
) -> ManagerDecision:
    """Check the Manager's reply against the candidates and the discipline.

    Args:
        decision: The parsed reply.
        candidates: What it may bind.
        context: Limits and the freeze flag.
        library_has: ``name -> bool``, whether the library already has a tool.

    Returns:
        The decision with duplicates removed.

    Raises:
        ValueError: Listing every problem, for a re-ask.
    """
    names = {c["name"] for c in candidates}
    problems = []
    unknown = [n for n in decision.bind if n not in names]
    if unknown:
        valid = ", ".join(sorted(names)) or "(none: there are no candidates)"
        problems.append(f"bind lists unknown tool(s) {unknown}; bind only candidates: {valid}.")
    seen: set[str] = set()
    for request in decision.requests:
        name = request.name
        if not TOOL_NAME_PATTERN.match(name):
            problems.append(f"requested name {name!r} is not verb_object snake case.")
        elif name in names or library_has(name):
            problems.append(
                f"a tool named {name!r} already exists; bind it instead of "
                "requesting it, or request a different capability."
            )
        elif _ARBITRARY_CODE.search(name):
            problems.append(f"{name!r} would run arbitrary code; request a specific capability.")
        if name in seen:
            problems.append(f"{name!r} is requested twice.")
        seen.add(name)
        if not request.description.strip():
            problems.append(f"request {name!r} has no description.")
    if context.freeze_library and decision.requests:
        problems.append(
            "the library is frozen: no new tools may be requested; bind candidates only."
        )
    if len(decision.requests) > context.max_new_tools_per_round:
        problems.append(
            f"{len(decision.requests)} tools requested; at most {context.max_new_tools_per_round}."
        )
    if problems:
        raise ValueError("the plan is invalid:\n" + "\n".join(f"- {p}" for p in problems))
    decision.bind = list(dict.fromkeys(decision.bind))
    return decision


def _candidates_section(candidates: list[Candidate]) -> str:
    if not candidates:
        return "(no tool in the library matches this task)"
    return "\n".join(
        f"- {c['name']}: {c['description']}" + (" [built in this task]" if c["local"] else "")
        for c in candidates
    )


def _ref_text(ref: ToolRef) -> str:
    text = ref.ref + ("" if ref.called else " (bound, not called)")
    if ref.renamed_from:
        text += f" (was {ref.renamed_from})"
    if ref.stale:
        text += f" (no longer usable: {ref.stale})"
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def experience_line(experience: Experience) -> str:
    """One experience as one line: outcome, task, tools, guidance and lesson."""
    parts = [f"- [{experience.status}] {_one_line(experience.summary)}"]
    if experience.tools:
        parts.append("tools: " + "; ".join(_ref_text(t) for t in experience.tools))
    if experience.guidance:
        parts.append("guidance: " + _one_line(experience.guidance))
    if experience.outcome:
        parts.append("why not completed: " + _one_line(experience.outcome))
    if experience.lesson:
        parts.append("lesson: " + _one_line(experience.lesson))
    return " | ".join(parts)


def experiences_section(experiences: Sequence[Experience], max_chars: int) -> str:
    """The Manager's view of similar earlier tasks, never longer than ``max_chars``.

    The budget is shared evenly between the experiences shown, each line cut to
    its share; when a share would be too small to say anything, fewer (the
    most similar) are shown. Stale tool references say so.
    """
    room = max_chars - len(EXPERIENCES_HEADING) - 1
    if not experiences or room < MIN_EXPERIENCE_CHARS:
        return ""
    shown = list(experiences)[: max(1, room // MIN_EXPERIENCE_CHARS)]
    share = room // len(shown)
    lines = []
    for experience in shown:
        line = experience_line(experience)
        lines.append(line if len(line) < share else line[: share - 2] + "…")
    text = EXPERIENCES_HEADING + "\n".join(lines) + "\n"
    return text[:max_chars]  # already within it; the bound is the point, so make it certain


def recall_experiences(
    state: EpisodeState, services: Services, context: InsituContext
) -> list[Experience]:
    """The experiences of the tasks most similar to this one (none if recall fails)."""
    if context.experiences_top_k <= 0 or context.experiences_max_chars <= 0:
        return []
    try:
        return services.store(context).search_experiences(
            state["task"], k=context.experiences_top_k
        )
    except Exception as exc:  # memory is an aid: planning goes on without it
        log.warning("experiences could not be recalled: %s: %s", type(exc).__name__, exc)
        return []


def _history_section(state: EpisodeState) -> str:
    """What happened in earlier rounds, so a re-plan can change course."""
    lines = []
    report = state.get("report")
    if report and report["kind"] != "done":
        lines.append(f"- The Executor stopped: {report['kind']}: {report['message'][:600]}")
    for failure in state.get("build_failures") or []:
        lines.append(
            f"- Tool {failure['name']} could not be built after {failure['attempts']} "
            f"attempt(s): {failure['reason'][:400]}"
        )
    for inv in (state.get("invocations") or [])[-6:]:
        status = "ok" if inv["ok"] else f"error {inv['kind']}"
        lines.append(
            f"- Called {inv['tool']}({compact_json(inv['args'], 200)}) -> {status}: "
            f"{inv['output_preview'][:200]}"
        )
    if not lines:
        return ""
    return "## Earlier rounds of this task\n" + "\n".join(lines) + "\n"


def manager_messages(
    state: EpisodeState,
    candidates: list[Candidate],
    context: InsituContext,
    experiences: Sequence[Experience] = (),
) -> list[BaseMessage]:
    """Render the Manager's prompt: the task, its candidates, similar experiences, earlier rounds.

    Its size depends on ``retrieval_k``, ``experiences_max_chars`` and the task,
    never on the library's size.
    """
    freeze_rule = (
        "The library is frozen for this run: request nothing." if context.freeze_library else ""
    )
    return prompt_messages(
        "manager",
        task=state["task"],
        files=files_section(state.get("files")),
        candidates=_candidates_section(candidates),
        experiences=experiences_section(experiences, context.experiences_max_chars),
        history=_history_section(state),
        max_new_tools=context.max_new_tools_per_round,
        freeze_rule=freeze_rule,
    )


async def plan_task(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Retrieve candidates, then ask the Manager what to bind and what to build.

    Returns:
        Update: ``rounds``, ``candidates``, ``bound_tools``, ``guidance``,
        ``requests`` and usage; or ``plan_error`` when no usable plan came back;
        or ``failure`` when the model endpoint failed.
    """
    context = settings(runtime)
    pause_point("plan_task", state, context)
    rounds = state.get("rounds", 0) + 1
    store = services.store(context)
    experiences = await blocking(recall_experiences, state, services, context)
    candidates = await blocking(retrieve_candidates, state, services, context)
    candidates += await blocking(recalled_candidates, experiences, candidates, store)
    emit("retrieved", f"retrieved {len(candidates)} candidate tools", count=len(candidates))
    if experiences:
        emit(
            "recalled",
            f"recalled {len(experiences)} experience(s) of similar tasks",
            count=len(experiences),
        )
    messages = manager_messages(state, candidates, context, experiences)
    usage = TokenUsage()

    def planned(**update: Any) -> dict[str, Any]:
        """What every outcome of this round writes, and ``update``."""
        return {
            "rounds": rounds,
            "replans_left": context.max_rounds - rounds,
            "candidates": candidates,
            "requests": [],
            "usage": usage_update(ROLE, usage),
            **update,
        }

    reused = await blocking(reusable_plan, state, experiences, store, context)
    if reused is not None:
        bound = [ref.name for ref in reused.tools if ref.called]
        emit(
            "planned",
            f"plan reused from a similar task solved before (similarity "
            f"{reused.similarity:.2f}): bind {len(bound)} tool(s)",
            bind=bound,
            requests=[],
            experience=reused.id,
        )
        return planned(
            bound_tools=bound,
            guidance=REUSED_GUIDANCE.format(guidance=reused.guidance),
            plan_reused=reused.id,
            plan_error="",
            **deadline_update(state),
        )
    try:
        asked = await ask_role(
            ROLE,
            services,
            context,
            messages,
            # The check reads the store (names already taken): off the event loop.
            lambda text: blocking(
                validate_decision,
                parse_reply(text, ManagerDecision),
                candidates,
                context,
                store.has,
            ),
            usage,
        )
    except StructuredOutputError as exc:
        return planned(plan_error=f"the Manager gave no usable plan: {exc}")
    except ModelEndpointError as exc:
        return planned(**failure_update(exc))
    decision: ManagerDecision = asked.value
    requests = [
        ToolRequest(
            name=r.name, description=r.description, input_hint=r.input, output_hint=r.output
        )
        for r in decision.requests
    ]
    emit(
        "planned",
        f"plan: bind {len(decision.bind)} tool(s), request {len(requests)} new",
        bind=decision.bind,
        requests=[r["name"] for r in requests],
    )
    return planned(
        bound_tools=decision.bind,
        guidance=decision.guidance,
        plan_reused="",
        requests=requests,
        plan_error="",
        **deadline_update(state),
    )
