"""Reflection after an episode: statistics, repairs, a note, what was learned, the commit.

Runs as its own subgraph after the Integrator. It records every call of a
library tool in the library's statistics (or, in a batch, hands the calls to
the batch's commit), tries once more to repair library tools that failed
and were not repaired during the episode, computes the counters EGL is built
from, asks the reflection model for a short note and records the episode's
experience with it; ``nodes/learning.py`` adds usage notes and harvested
cases. Then it commits the episode's new and repaired tools with what it
learned, in one transaction (single-episode mode), or hands them all to the
batch graph (``commit_mode="defer"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from insitu.aio import blocking
from insitu.context import CommitMode, InsituContext
from insitu.events import emit
from insitu.graphs.state import EpisodeMetrics, EpisodeState
from insitu.llm import ModelEndpointError
from insitu.nodes.common import ask_text, model_caller, prompt_messages, settings, usage_update
from insitu.nodes.executor import TOOL_FAULTS
from insitu.nodes.learning import (
    deferred_learning,
    episode_experience,
    learning_changes,
    learns,
)
from insitu.nodes.tool_developer import (
    BuildError,
    build_cost,
    harvested_for,
    local_record,
    repair_tool,
    scratch_dir_for,
)
from insitu.services import Services
from insitu.structured import TokenUsage
from insitu.tool_store import ChangeSet, ToolRecord
from insitu.tool_store.changes import CallRecord, calls_digest
from insitu.tool_store.errors import StoreError, ToolNotFoundError

ROLE = "reflection"
MAX_REFLECTION_REPAIRS = 2


def library_calls(state: EpisodeState) -> list[dict[str, Any]]:
    """The episode's calls of library tools, as ``CallRecord`` fields (local tools left out)."""
    return [
        {
            "name": inv["tool"],
            "version": inv["version"],
            "ok": inv["ok"],
            "error": None if inv["ok"] else inv["message"],
            "when": inv.get("at"),
        }
        for inv in state.get("invocations") or []
        if not inv["local"]
    ]


def calls_commit_id(prefix: str, calls: Sequence[dict[str, Any]]) -> str:
    """The idempotency key of recording ``calls``: who records them and what they are."""
    return f"{prefix}:calls:{calls_digest([CallRecord(**c) for c in calls])[:16]}"


async def update_tool_stats(
    state: EpisodeState,
    runtime: Runtime[InsituContext],
    *,
    services: Services,
    commit_mode: CommitMode | None = None,
) -> dict[str, Any]:
    """Record every call of a library tool in the library's statistics, exactly once.

    In a batch (``commit_mode="defer"``) the calls are handed to the batch,
    which records them with its commit; alone, the episode records them now
    under an idempotency key, so that a resumed episode does not count them twice.
    """
    context = settings(runtime)
    calls = [] if context.freeze_library else library_calls(state)
    if calls and (commit_mode or context.commit_mode) == "store":
        await blocking(
            services.store(context).record_calls,
            calls,
            commit_id=calls_commit_id(f"episode:{state['task_id']}", calls),
        )
    return {"library_calls": calls}


def failing_library_tools(state: EpisodeState) -> dict[str, dict[str, Any]]:
    """Library tools that failed with a fault of their own and were not repaired yet."""
    repaired = set(state.get("repaired_tools") or {})
    failing: dict[str, dict[str, Any]] = {}
    for inv in state.get("invocations") or []:
        if (
            not inv["ok"]
            and not inv["local"]
            and inv["kind"] in TOOL_FAULTS
            and inv["tool"] not in repaired
        ):
            failing[inv["tool"]] = {
                "args": inv["args"],
                "error": f"{inv['kind']}: {inv['message']}",
            }
    return failing


async def repair_failed_tools(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Try to repair library tools that failed in this episode (not locked ones).

    Skipped when the episode's model endpoint failed; an endpoint failure here
    stops the repairs (the episode's answer stands).
    """
    context = settings(runtime)
    if context.freeze_library or state.get("failure"):
        return {}
    store = services.store(context)
    repaired: dict[str, dict[str, Any]] = {}
    usage = TokenUsage()
    workdir = Path(state["workdir"])
    for name, failing_call in list(failing_library_tools(state).items())[:MAX_REFLECTION_REPAIRS]:
        try:
            base = await blocking(store.get, name)
        except ToolNotFoundError:
            continue
        if base.locked:
            emit("skipped", f"not repairing {name}: it is locked", tool=name)
            continue
        repair_usage = TokenUsage()  # this repair's own cost, kept with its version
        try:
            spec = await repair_tool(
                base,
                failing_call,
                call=model_caller(ROLE, services, context, repair_usage),
                sandbox=services.sandbox(context),
                scratch_dir=scratch_dir_for(workdir),
                workdir=workdir,
                max_attempts=context.max_build_attempts,
                harvested=await blocking(harvested_for, name, services, context),
            )
        except BuildError as exc:
            emit("repair_failed", f"could not repair {name}: {exc.reason[:160]}", tool=name)
            continue
        except ModelEndpointError as exc:
            emit("repair_failed", f"repairs stopped: {exc.one_line()}", tool=name)
            break
        finally:
            usage.add(repair_usage)
        record = local_record(
            spec,
            task_id=state["task_id"],
            origin="repaired",
            base=base,
            cost=build_cost(ROLE, repair_usage, services, context),
        )
        repaired[name] = record.model_dump(mode="json")
    return {"repaired_tools": repaired, "usage": usage_update(ROLE, usage)}


def episode_changes(state: EpisodeState) -> ChangeSet:
    """The library changes an episode proposes: its new tools and its repairs.

    A new tool whose name another writer took meanwhile is kept as a new
    version of that name rather than failing the commit (``if_exists="update"``).
    """
    return ChangeSet.from_episode(
        new=[ToolRecord.model_validate(r) for r in (state.get("local_tools") or {}).values()],
        repaired=[
            ToolRecord.model_validate(r) for r in (state.get("repaired_tools") or {}).values()
        ],
        task_id=state["task_id"],
        if_exists="update",
    )


def commit_id_for(task_id: str, changes: ChangeSet) -> str:
    """The idempotency key of an episode's commit: its task and what it changes.

    A resumed episode proposes the same changes and replays the earlier commit;
    a later episode of the same task with other tools commits anew.
    """
    return f"episode:{task_id}:{changes.digest()[:16]}"


async def commit_tools(
    state: EpisodeState,
    runtime: Runtime[InsituContext],
    *,
    services: Services,
    commit_mode: CommitMode | None = None,
) -> dict[str, Any]:
    """Commit the episode's tools and what it learned ("store"), or hand them over ("defer").

    The commit is one transaction, idempotent by content, so a resumed episode
    never adds a tool or an experience twice, and a crash leaves neither. A
    commit the store refuses (a repaired tool that changed or was locked
    meanwhile) is reported and loses nothing stored; what the episode learned
    is then committed on its own. The store's work runs on insitu's blocking threads.
    """
    return await blocking(
        _commit_tools, state, settings(runtime), services=services, commit_mode=commit_mode
    )


def _commit_tools(
    state: EpisodeState,
    context: InsituContext,
    *,
    services: Services,
    commit_mode: CommitMode | None,
) -> dict[str, Any]:
    local = state.get("local_tools") or {}
    repaired = state.get("repaired_tools") or {}
    new_tools = [{"change": "new", **r} for r in local.values()] + [
        {"change": "repair", **r} for r in repaired.values()
    ]
    if context.freeze_library:
        return {"new_tools": []}
    if not learns(context):
        if new_tools:
            emit("not_kept", f"{len(new_tools)} tool(s) of this task are not kept (no-reuse run)")
        return {"new_tools": new_tools}
    learned = learning_changes(state)
    if (commit_mode or context.commit_mode) != "store":
        return {"new_tools": new_tools, "learning": deferred_learning(learned)}
    if not new_tools and not learned.learned():
        return {"new_tools": new_tools}
    store = services.store(context)
    changes = episode_changes(state)
    changes.experiences, changes.usage_notes, changes.cases = (
        learned.experiences,
        learned.usage_notes,
        learned.cases,
    )
    try:
        result = store.commit(
            changes,
            commit_id=commit_id_for(state["task_id"], changes),
            cases_per_tool=context.harvested_cases_per_tool,
        )
    except StoreError as exc:
        emit("commit_failed", f"the library refused this episode's tools: {exc}")
        update = {"new_tools": new_tools, "commit_error": str(exc)}
        if learned.learned():
            try:  # the experience of a refused commit is worth keeping all the same
                store.commit(
                    learned,
                    commit_id=commit_id_for(state["task_id"], learned),
                    cases_per_tool=context.harvested_cases_per_tool,
                )
            except StoreError as again:
                emit("commit_failed", f"the library refused this episode's learning: {again}")
        return update
    emit("committed", f"committed {result.summary()} to the library")
    return {"new_tools": new_tools}


def episode_metrics(state: EpisodeState) -> tuple[EpisodeMetrics, list[str]]:
    """The episode's evolution counters, and the tools it used (``name@version``)."""
    invocations = state.get("invocations") or []
    metrics = EpisodeMetrics(
        tools_created=len(state.get("local_tools") or {}),
        tools_repaired=len(state.get("repaired_tools") or {}),
        tool_invocations=len(invocations),
        tool_successes=sum(1 for i in invocations if i["ok"]),
        rounds=state.get("rounds", 0),
        executor_steps=state.get("executor_steps", 0),
    )
    return metrics, sorted({f"{i['tool']}@{i['version']}" for i in invocations})


def reused_plan_succeeded(state: EpisodeState) -> bool:
    """Whether the episode completed on a reused plan with nothing built, repaired or failing.

    Such an episode teaches nothing the reused experience does not already say:
    it costs no reflection note and adds no experience (one per task would
    otherwise pile up for a recurring task).
    """
    return bool(
        state.get("plan_reused")
        and state.get("status") == "completed"
        and state.get("rounds", 0) <= 1
        and not state.get("local_tools")
        and not state.get("repaired_tools")
        and all(inv["ok"] for inv in state.get("invocations") or [])
    )


async def summarize_episode(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Compute the evolution counters, ask for a short reflection note, record the experience.

    The experience (``nodes/learning.py``) is kept in the state, so that a
    resumed episode commits exactly the one it recorded. An episode whose model
    endpoint failed records none: that says nothing about the task; nor does a
    clean success on a reused plan (:func:`reused_plan_succeeded`).
    """
    context = settings(runtime)
    local = state.get("local_tools") or {}
    repaired = state.get("repaired_tools") or {}
    metrics, used = episode_metrics(state)
    tools_text = (
        "\n".join(
            [f"- used {u}" for u in used]
            + [f"- built {n}" for n in local]
            + [f"- repaired {n}" for n in repaired]
            + [
                f"- could not build {f['name']}: {f['reason'][:200]}"
                for f in state.get("build_failures") or []
            ]
        )
        or "(no tools)"
    )
    usage = TokenUsage()
    failure = state.get("failure")
    reused_cleanly = reused_plan_succeeded(state)
    if failure:  # the endpoint is known to be failing: do not ask it for a note
        note = f"(no reflection: the episode failed: {failure['message']})"
    elif reused_cleanly:  # nothing new happened: the experience it reused stands
        note = f"(no reflection: the plan of experience {state['plan_reused']} worked again)"
    else:
        try:
            note = await ask_text(
                ROLE,
                services,
                context,
                prompt_messages(
                    "reflection",
                    task=state["task"][:2000],
                    status=state.get("status", "incomplete"),
                    answer=(state.get("answer") or "")[:1500],
                    tools=tools_text,
                ),
                usage,
            )
        except ModelEndpointError as exc:  # a note is not worth failing an answered task
            emit("endpoint_failed", f"no reflection note: {exc.one_line()}", role=ROLE)
            note = f"(no reflection: {exc.one_line()})"
    note = note or "(empty reflection)"
    # An endpoint that failed says nothing about the task: no experience (it is retried).
    endpoint_failed = (failure or {}).get("kind") == "endpoint"
    experience = (
        {"experience": episode_experience(state, note).model_dump(mode="json")}
        if learns(context) and not endpoint_failed and not reused_cleanly
        else {}
    )
    return {
        "metrics": metrics,
        "tools_used": used,
        "tools_created": sorted(local),
        "tools_repaired": sorted(repaired),
        "reflection": note,
        "usage": usage_update(ROLE, usage),
        **experience,
    }
