"""Absorbing: after a batch, cluster the new tools with the library and merge duplicates.

Three steps, none of which reads the whole library:

1. **Group** (no LLM): each new tool retrieves its nearest library tools, and
   ``tool_store.clustering.candidate_groups`` links the pairs whose descriptions,
   signatures and names are close. Cost grows with the number of new tools.
2. **Aggregator** (LLM, one call per candidate group): confirms which members
   are functional duplicates, or splits the group.
3. **Merger** (the ToolDeveloper's loop): writes one general tool per confirmed
   set, admitted only if it passes the union of the members' tests in the
   sandbox and reproduces the calls harvested from their real use (the
   library's and the batch's own); otherwise the members stay as they are and
   the rejection is reported.

The result is one ``ChangeSet`` (repairs, new tools, merges with their
archives, and what the episodes learned: experiences, usage notes, harvested
cases) that ``commit_batch`` applies atomically and idempotently, so the
library after a batch is either the old one or the new one. The learning
records follow the merges in that commit (``tool_store/learning.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from insitu.aio import blocking
from insitu.context import InsituContext
from insitu.events import emit
from insitu.llm import ModelEndpointError
from insitu.nodes.common import (
    ask_role,
    compact_json,
    model_caller,
    prompt_messages,
    settings,
    usage_update,
)
from insitu.nodes.learning import collect_learning
from insitu.nodes.reflection import calls_commit_id
from insitu.nodes.tool_developer import BuildError, build_cost, develop_tool
from insitu.services import Services
from insitu.structured import StructuredOutputError, TokenUsage, parse_reply
from insitu.tool_store import ChangeSet, ToolRecord, ToolSpec, ToolStore, ToolTest
from insitu.tool_store.contract import BuildCost
from insitu.tool_store.errors import StoreError

ROLE = "absorber"
#: Library neighbours retrieved per new tool before grouping.
NEIGHBOURS_PER_TOOL = 5


class DuplicateVerdict(BaseModel):
    """The Aggregator's structured reply for one candidate group."""

    duplicates: list[list[str]] = Field(default_factory=list)
    reason: str = ""


class AbsorbReport(BaseModel):
    """What absorbing did with a batch's tools (kept in the batch graph's state)."""

    new_tools: int = 0
    groups_proposed: int = 0
    groups_confirmed: int = 0
    merged: list[dict[str, Any]] = Field(default_factory=list)
    merge_rejected: list[dict[str, Any]] = Field(default_factory=list)
    added: list[str] = Field(default_factory=list)
    repaired: list[str] = Field(default_factory=list)
    archived: list[str] = Field(default_factory=list)
    dropped: list[dict[str, str]] = Field(default_factory=list)
    llm_calls: int = 0
    prompt_tokens: int = 0
    endpoint_error: str | None = Field(
        default=None,
        description="Why absorbing stopped early: the absorber's model endpoint failed. The "
        "batch's tools are then committed unmerged (a later batch can still merge them).",
    )


def collect_episode_tools(
    results: Sequence[dict[str, Any]],
) -> tuple[list[ToolRecord], list[ToolRecord], list[dict[str, str]]]:
    """Gather the batch's new and repaired tools from the episode results.

    Episodes run in parallel and cannot see each other's tools, so two may
    build a tool of the same name or repair the same library tool. The first
    (in task order) is kept; the others are reported as dropped.

    Returns:
        (new tools, repaired tools, dropped ``{"name", "task", "reason"}``).
    """
    new: dict[str, ToolRecord] = {}
    repaired: dict[str, ToolRecord] = {}
    dropped: list[dict[str, str]] = []
    for result in results:
        for data in result.get("new_tools") or []:
            record = ToolRecord.model_validate({k: v for k, v in data.items() if k != "change"})
            pool = repaired if data.get("change") == "repair" else new
            kept = pool.get(record.name)
            if kept is None:
                pool[record.name] = record
            elif kept.hash != record.hash:
                dropped.append(
                    {
                        "name": record.name,
                        "task": record.created_by_task or "",
                        "reason": f"another task of the batch ({kept.created_by_task}) also "
                        "made a tool of this name; the first is kept",
                    }
                )
    return list(new.values()), list(repaired.values()), dropped


def library_neighbours(
    new: Sequence[ToolRecord], store: ToolStore, exclude: set[str], k: int = NEIGHBOURS_PER_TOOL
) -> list[ToolRecord]:
    """The library tools retrieved for each new tool: the only ones compared with it.

    Locked tools and ``exclude`` (tools repaired in this batch) are left out:
    automated merging may not change them.
    """
    found: dict[str, ToolRecord] = {}
    for tool in new:
        for hit in store.search(tool.description, k=k):
            record = hit.record
            if record.locked or record.name in exclude or record.name in found:
                continue
            found[record.name] = record
    return list(found.values())


def _signature(tool: ToolRecord) -> str:
    inputs = ", ".join((tool.input_schema.get("properties") or {}).keys())
    outputs = ", ".join((tool.output_schema.get("properties") or {}).keys())
    return f"input: {inputs or '-'} | output: {outputs or '-'}"


def aggregator_tools_section(tools: Sequence[ToolRecord]) -> str:
    """List a candidate group for the Aggregator: name, signature, description."""
    return "\n".join(f"- {t.name} ({_signature(t)}): {t.description}" for t in tools)


def validate_verdict(verdict: DuplicateVerdict, members: Sequence[str]) -> list[list[str]]:
    """Check the Aggregator's sets against the group.

    Raises:
        ValueError: Unknown names, a name in two sets, or a set of one (for a re-ask).
    """
    known, seen, problems = set(members), set(), []
    for group in verdict.duplicates:
        unknown = [n for n in group if n not in known]
        if unknown:
            problems.append(f"unknown tool(s) {unknown}; use only: {', '.join(members)}.")
        if len(set(group)) < 2:
            problems.append(f"{group} names fewer than two tools.")
        again = seen & set(group)
        if again:
            problems.append(f"{sorted(again)} appear in more than one list.")
        seen |= set(group)
    if problems:
        raise ValueError("the verdict is invalid:\n" + "\n".join(f"- {p}" for p in problems))
    return [list(dict.fromkeys(g)) for g in verdict.duplicates]


def merged_tests(members: Sequence[ToolRecord]) -> list[ToolTest]:
    """The union of the members' tests, each renamed after its tool to stay unique."""
    return [
        test.model_copy(update={"name": f"{member.name}__{test.name}"})
        for member in members
        for test in member.tests
    ]


def merged_harvested(
    members: Sequence[ToolRecord], store: ToolStore, batch_cases: ChangeSet
) -> list[ToolTest]:
    """The calls harvested from the members' real use, which a merge must reproduce.

    The library's cases of library members, and the cases the batch's episodes
    harvested from its new members (not committed yet); one case per name.
    """
    found: dict[str, ToolTest] = {}
    for member in members:
        cases = [c.case for c in store.harvested_cases(member.name)]
        cases += [c.case for c in batch_cases.cases if c.name == member.name]
        for case in cases:
            found.setdefault(case.name, case)
    return list(found.values())


def merger_prompt(keeper: str, members: Sequence[ToolRecord]) -> list[BaseMessage]:
    """Render the Merger's request for one confirmed set of duplicates."""
    sections = []
    for member in members:
        tests = compact_json([t.model_dump(exclude_defaults=True) for t in member.tests], 1500)
        sections.append(
            f"### {member.name}\n{member.description}\n```python\n{member.source}\n```\n"
            f"Tests: {tests}\n"
        )
    return prompt_messages("merger", name=keeper, members="\n".join(sections))


def choose_keeper(members: Sequence[ToolRecord], library_names: set[str]) -> ToolRecord:
    """The member whose name the merged tool takes: the oldest library tool, else the first."""
    in_library = [m for m in members if m.name in library_names]
    return min(in_library, key=lambda m: m.created_at) if in_library else members[0]


def _merge_changes(
    changes: ChangeSet,
    keeper: ToolRecord,
    spec: ToolSpec,
    members: Sequence[ToolRecord],
    library_names: set[str],
    batch_id: str,
    cost: BuildCost | None = None,
) -> list[str]:
    """Append one merge to ``changes``; return the library tools it archives."""
    merged_from = [m.ref for m in members]
    paid = {"creation_cost_tokens": cost.total_tokens, "build_cost": cost} if cost else {}
    if keeper.name in library_names:
        changes.update(
            keeper.name,
            spec,
            origin="merged",
            merged_from=merged_from,
            created_by_task=batch_id,
            note="merged by absorbing",
            **paid,
        )
    else:
        changes.add(
            spec,
            origin="merged",
            created_by_task=batch_id,
            note="merged by absorbing",
            merged_from=merged_from,
            **paid,
        )
    archived = [m.name for m in members if m.name != keeper.name and m.name in library_names]
    for name in archived:
        changes.archive(name, f"merged into {keeper.name}")
    return archived


async def absorb_batch(
    results: Sequence[dict[str, Any]],
    *,
    batch_id: str,
    services: Services,
    context: InsituContext,
    scratch_dir: Path,
) -> tuple[ChangeSet, AbsorbReport, TokenUsage]:
    """Turn a batch's episode results into one change set for the library.

    Args:
        results: The episodes' outputs (``new_tools`` with ``change`` new/repair).
        batch_id: Recorded as the creating "task" of merged tools.
        services: Store, sandbox and the absorber's model.
        context: Limits and thresholds.
        scratch_dir: Where merge candidates are tested.

    Returns:
        (the change set, the report, the absorber's token usage).
    """
    from insitu.tool_store.clustering import candidate_groups

    store = services.store(context)
    usage = TokenUsage()
    new, repairs, dropped = collect_episode_tools(results)
    report = AbsorbReport(new_tools=len(new), dropped=dropped)
    # Repairs first, as a single episode would commit them (with their expected version).
    changes = ChangeSet.from_episode(repaired=repairs)
    changes.note = f"absorb {batch_id}"
    # What the episodes learned goes with the batch's commit and follows its merges there.
    learned = collect_learning(list(results))
    changes.experiences, changes.usage_notes, changes.cases = (
        learned.experiences,
        learned.usage_notes,
        learned.cases,
    )
    report.repaired = [r.name for r in repairs]
    if not new:
        return changes, report, usage

    library = await blocking(library_neighbours, new, store, exclude={r.name for r in repairs})
    library_names = {r.name for r in library}
    by_name = {r.name: r for r in [*new, *library]}
    threshold = {} if context.absorb_threshold is None else {"threshold": context.absorb_threshold}
    groups = await blocking(
        candidate_groups, new, library, embedding=store.embedding_name, **threshold
    )
    report.groups_proposed = len(groups)
    emit("grouped", f"absorbing {len(new)} new tool(s): {len(groups)} candidate group(s)")
    merged_away: set[str] = set()
    for group in groups:
        members = [by_name[n] for n in group.members if n not in merged_away]
        if len(members) < 2:
            continue
        if report.endpoint_error:
            break
        messages = prompt_messages("aggregator", tools=aggregator_tools_section(members))
        try:
            asked = await ask_role(
                ROLE,
                services,
                context,
                messages,
                lambda text, names=[m.name for m in members]: validate_verdict(
                    parse_reply(text, DuplicateVerdict), names
                ),
                usage,
            )
        except StructuredOutputError as exc:
            report.merge_rejected.append(
                {"members": [m.name for m in members], "reason": f"no usable verdict: {exc}"}
            )
            continue
        except ModelEndpointError as exc:
            report.endpoint_error = exc.one_line()
            emit("endpoint_failed", f"absorbing stopped: {exc.one_line()}", role=ROLE)
            break
        for names in asked.value:
            chosen = [by_name[n] for n in names]
            report.groups_confirmed += 1
            keeper = choose_keeper(chosen, library_names)
            emit("merging", f"merging {', '.join(names)} into {keeper.name}", tools=names)
            merge_usage = TokenUsage()  # this merge's own cost, kept with the merged version
            try:
                harvested = await blocking(merged_harvested, chosen, store, learned)
                spec = await develop_tool(
                    merger_prompt(keeper.name, chosen),
                    name=keeper.name,
                    call=model_caller(ROLE, services, context, merge_usage),
                    sandbox=services.sandbox(context),
                    scratch_dir=scratch_dir,
                    max_attempts=context.max_build_attempts,
                    kept_tests=merged_tests(chosen),
                    harvested=harvested,
                )
            except BuildError as exc:
                report.merge_rejected.append({"members": names, "reason": exc.reason[-800:]})
                emit("merge_rejected", f"kept {', '.join(names)} apart: merge failed tests")
                continue
            except ModelEndpointError as exc:
                report.endpoint_error = exc.one_line()
                emit("endpoint_failed", f"absorbing stopped: {exc.one_line()}", role=ROLE)
                break
            finally:
                usage.add(merge_usage)
            cost = build_cost(ROLE, merge_usage, services, context)
            archived = _merge_changes(changes, keeper, spec, chosen, library_names, batch_id, cost)
            report.archived += archived
            report.merged.append({"into": keeper.name, "from": names})
            merged_away |= set(names)
    kept = [record for record in new if record.name not in merged_away]
    changes.changes += ChangeSet.from_episode(new=kept, if_exists="update").changes
    report.added = [record.name for record in kept]
    report.llm_calls = usage.calls
    report.prompt_tokens = usage.input_tokens
    return changes, report, usage


def batch_commit_id(batch_id: str, changes: ChangeSet) -> str:
    """The idempotency key of a batch's commit: the batch and what it changes."""
    return f"batch:{batch_id}:{changes.digest()[:16]}"


# ------------------------------------------------------------------ graph nodes


async def absorb_tools(
    state: dict[str, Any], runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Batch node: cluster and merge the batch's tools into one pending change set."""
    context = settings(runtime)
    if context.freeze_library or not context.keep_new_tools:
        # A frozen library takes nothing; a no-reuse run drops what its episodes built.
        return {
            "changes": ChangeSet().model_dump(mode="json"),
            "absorb": AbsorbReport().model_dump(),
        }
    batch_id = state.get("batch_id") or "batch"
    store = services.store(context)
    changes, report, usage = await absorb_batch(
        state.get("results") or [],
        batch_id=batch_id,
        services=services,
        context=context,
        scratch_dir=Path(store.path) / "workspaces" / f".absorb-{batch_id}",
    )
    return {
        "changes": changes.model_dump(mode="json"),
        "absorb": report.model_dump(),
        "usage": usage_update(ROLE, usage),
    }


async def commit_batch(
    state: dict[str, Any], runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Batch node: apply the change set in one transaction, then record the batch's calls.

    Both are idempotent (keyed by the batch id and their content), so a batch
    resumed after a crash neither adds a tool nor counts a call twice. Writes
    ``finished_at``, the batch's done marker. The store's work runs on insitu's
    blocking threads.
    """
    return await blocking(_commit_batch, state, settings(runtime), services)


def _commit_batch(
    state: dict[str, Any], context: InsituContext, services: Services
) -> dict[str, Any]:
    changes = ChangeSet.model_validate(state.get("changes") or {})
    store = services.store(context)
    commit = _commit_changes(
        store, state.get("batch_id") or "batch", changes, context.harvested_cases_per_tool
    )
    calls = [c for r in state.get("results") or [] for c in r.get("library_calls") or []]
    if calls and not context.freeze_library:
        batch_id = state.get("batch_id")
        try:
            commit["calls_recorded"] = store.record_calls(
                calls, commit_id=calls_commit_id(f"batch:{batch_id}", calls) if batch_id else None
            )
        except StoreError as exc:
            emit("stats_failed", f"the library refused the batch's call statistics: {exc}")
            commit["calls_error"] = str(exc)
    if context.prune_min_utility is not None and not context.freeze_library:
        commit["pruned"] = _prune_after_batch(store, context, changes)
    # The marker that the batch is done (evolve trusts nothing else: see graphs/evolve.py).
    return {"commit": commit, "finished_at": datetime.now(UTC).isoformat()}


def _prune_after_batch(
    store: ToolStore, context: InsituContext, changes: ChangeSet
) -> list[dict[str, Any]]:
    """The automatic prune policy (``prune_min_utility``), after the batch's commit.

    The tools the batch added or changed are exempt (they have had no chance
    to be reused yet). Re-running it on a resumed batch is harmless: archiving
    an archived tool changes nothing.

    Returns:
        ``{"name", "utility", "reason"}`` of each tool archived.
    """
    from insitu.tool_store.pruning import apply_prune, plan_prune

    assert context.prune_min_utility is not None
    touched = {c.spec.name if c.kind == "add" else c.name for c in changes.changes}
    try:
        plan = apply_prune(
            store,
            plan_prune(
                store,
                min_utility=context.prune_min_utility,
                half_life_days=context.utility_half_life_days,
                grace_days=context.prune_grace_days,
                exempt=touched,
            ),
        )
    except StoreError as exc:
        emit("prune_failed", f"the library refused the prune: {exc}")
        return []
    archived = [d for d in plan.to_archive if d.name in plan.archived]
    if archived:
        emit("pruned", f"archived {len(archived)} low-utility tool(s)")
    return [{"name": d.name, "utility": round(d.utility, 4), "reason": d.reason} for d in archived]


def _commit_changes(
    store: ToolStore, batch_id: str, changes: ChangeSet, cases_per_tool: int
) -> dict[str, Any]:
    if not len(changes):
        return {"applied": False, "summary": "nothing to commit"}
    commit_id = batch_commit_id(batch_id, changes)
    try:
        result = store.commit(changes, commit_id=commit_id, cases_per_tool=cases_per_tool)
    except StoreError as exc:
        # Nothing was written (the commit is one transaction): the library is as it was.
        emit("commit_failed", f"the library refused the batch's changes: {exc}")
        refused = {"applied": False, "summary": f"refused: {exc}", "error": str(exc)}
        learned = ChangeSet(
            experiences=changes.experiences, usage_notes=changes.usage_notes, cases=changes.cases
        )
        if learned.learned():  # what the episodes learned is kept all the same
            try:
                result = store.commit(
                    learned,
                    commit_id=batch_commit_id(batch_id, learned),
                    cases_per_tool=cases_per_tool,
                )
                refused["learning"] = result.summary()
            except StoreError as again:
                emit("commit_failed", f"the library refused the batch's learning: {again}")
        return refused
    emit("committed", f"committed {result.summary()} to the library")
    return {
        "applied": True,
        "summary": result.summary(),
        "replayed": result.replayed,
        "commit_id": commit_id,
    }
