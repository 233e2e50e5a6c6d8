"""Human approval of tools (``tool_approval``): a LangGraph interrupt before they are committed.

With ``tool_approval`` set to ``new`` (new tools) or ``all`` (new tools, repairs
and merges), the graph pauses before its commit with a payload describing each
tool (name, description, source, tests and their verdict; for repairs and merges
the versions replaced and a diff), and resumes with a decision per tool:

* ``"approve"`` — the tool is committed as it is;
* ``{"action": "reject", "reason": "..."}`` — kept out of the library, never
  counted as created, and kept on record in the store's event log
  (``ToolStore.rejections``);
* ``{"action": "edit", "source": "...", "tests": [...]}`` — the edited module
  is admitted like any tool (its tests, or the tool's, must pass in the
  sandbox), then committed; an edit that fails admission is rejected with the
  reason.

A resume value may also be one word for every tool (``"approve"`` or
``"reject"``); a tool without a decision is rejected ("no decision"). In the
episode graph the review runs in the reflection subgraph before
``commit_tools``; in the batch graph between ``absorb_tools`` and
``commit_batch``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import BaseModel, Field, ValidationError

from insitu.aio import blocking
from insitu.context import CommitMode, InsituContext
from insitu.events import emit
from insitu.graphs.state import EpisodeState
from insitu.nodes.common import settings
from insitu.services import Services
from insitu.tool_store import ChangeSet, ToolRecord
from insitu.tool_store.admission import AdmissionError, admit_tool
from insitu.tool_store.changes import ToolAdd, ToolArchive, ToolUpdate

#: The ``kind`` of every review payload (what a client checks before answering).
REVIEW_KIND = "insitu.tool_review"


class ToolDecision(BaseModel):
    """A reviewer's decision about one tool."""

    action: Literal["approve", "reject", "edit"]
    reason: str = ""
    source: str | None = Field(default=None, description="The edited module (action edit).")
    tests: list[dict[str, Any]] | None = Field(
        default=None, description="Tests of the edited module (default: the tool's own)."
    )


def parse_decisions(value: Any, names: Iterable[str]) -> dict[str, ToolDecision]:
    """Turn a resume value into a decision per tool name.

    Args:
        value: ``"approve"`` / ``"reject"`` for every tool, or a mapping
            name -> ``"approve"`` | ``"reject"`` | a :class:`ToolDecision` dict.
        names: The tools under review.

    Returns:
        A decision for every name (a missing or unreadable one is a rejection
        that says why).
    """
    names = list(names)
    if isinstance(value, str):
        value = dict.fromkeys(names, value)
    if not isinstance(value, Mapping):
        return {n: ToolDecision(action="reject", reason="no usable decision") for n in names}
    decisions = {}
    for name in names:
        given = value.get(name)
        if isinstance(given, str):
            given = {"action": given}
        try:
            decisions[name] = ToolDecision.model_validate(given)
        except ValidationError:
            reason = "no decision given" if given is None else f"unreadable decision {given!r}"
            decisions[name] = ToolDecision(action="reject", reason=reason[:300])
    return decisions


def _test_dicts(record: ToolRecord) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_defaults=True) for t in record.tests]


def tool_item(
    record: ToolRecord,
    change: str,
    *,
    base: ToolRecord | None = None,
    members: Iterable[ToolRecord] = (),
) -> dict[str, Any]:
    """What a reviewer is shown of one tool.

    Args:
        record: The tool as it would be committed.
        change: ``new``, ``repair`` or ``merge``.
        base: The library version it replaces (repair, or a merge into a
            library tool): the diff is against it.
        members: For a merge, the tools it replaces.
    """
    item: dict[str, Any] = {
        "name": record.name,
        "change": change,
        "description": record.description,
        "source": record.source,
        "tests": _test_dicts(record),
        "verdict": f"all {len(record.tests)} test(s) passed in the sandbox at admission",
        "dependencies": list(record.dependencies),
        "network": record.network,
        "secrets": list(record.secrets),
    }
    if base is not None:
        item["replaces"] = base.ref
        item["diff"] = "".join(
            difflib.unified_diff(
                base.source.splitlines(keepends=True),
                record.source.splitlines(keepends=True),
                fromfile=base.ref,
                tofile=f"{record.name} (proposed)",
            )
        )
    members = list(members)
    if members:
        item["members"] = [
            {"ref": m.ref, "description": m.description, "source": m.source} for m in members
        ]
    return item


def needs_review(context: InsituContext, change: str) -> bool:
    """Whether a change of this kind waits for a reviewer under ``tool_approval``."""
    if context.tool_approval == "all":
        return True
    return context.tool_approval == "new" and change == "new"


def _edited(
    record: ToolRecord,
    decision: ToolDecision,
    services: Services,
    context: InsituContext,
    scratch_dir: Path,
) -> ToolRecord:
    """The record of an edited tool, admitted in the sandbox (raises AdmissionError)."""
    tests = decision.tests if decision.tests is not None else _test_dicts(record)
    spec = admit_tool(
        decision.source or "",
        tests,
        sandbox=services.sandbox(context),
        scratch_dir=scratch_dir,
        expected_name=record.name,
    )
    return ToolRecord.model_validate(
        {
            **record.model_dump(),
            **spec.model_dump(),
            "hash": spec.content_hash(),
            "note": "edited by a reviewer",
        }
    )


def apply_decision(
    record: ToolRecord,
    decision: ToolDecision,
    *,
    review_id: str,
    services: Services,
    context: InsituContext,
    scratch_dir: Path,
) -> tuple[ToolRecord | None, dict[str, Any] | None]:
    """Carry out one decision.

    Returns:
        ``(record to commit, None)`` when approved or edited, or ``(None,
        rejection)`` when rejected (the rejection is kept on record in the store).
    """
    if decision.action == "edit":
        try:
            return _edited(record, decision, services, context, scratch_dir), None
        except AdmissionError as exc:
            decision = ToolDecision(
                action="reject", reason=f"the edit was not admitted: {exc}"[:1000]
            )
    if decision.action == "approve":
        return record, None
    reason = decision.reason or "rejected by the reviewer"
    services.store(context).record_rejection(record, reason, review_id=review_id)
    emit("rejected_by_reviewer", f"{record.name} rejected: {reason[:160]}", tool=record.name)
    return None, {"name": record.name, "version": record.version, "reason": reason}


def apply_decisions(
    records: Mapping[str, ToolRecord],
    value: Any,
    *,
    review_scope: str,
    services: Services,
    context: InsituContext,
    scratch_dir: Path,
) -> dict[str, tuple[ToolRecord | None, dict[str, Any] | None]]:
    """Carry out a resume value's decisions for every tool under review.

    Args:
        records: The tools under review, by name.
        value: The resume value (see :func:`parse_decisions`).
        review_scope: Who reviewed (``episode:<task>`` or ``batch:<id>``): with
            each tool's name and hash, the idempotency key of its rejection.
        services: Supplies the store and the sandbox.
        context: The run's settings.
        scratch_dir: Where edited tools are tested.

    Returns:
        ``name -> (record to commit or None, rejection or None)``.
    """
    decisions = parse_decisions(value, records)
    return {
        name: apply_decision(
            record,
            decisions[name],
            review_id=f"{review_scope}:{name}:{record.hash[:12]}",
            services=services,
            context=context,
            scratch_dir=scratch_dir,
        )
        for name, record in records.items()
    }


# ------------------------------------------------------------------ the episode


async def review_episode_tools(
    state: EpisodeState,
    runtime: Runtime[InsituContext],
    *,
    services: Services,
    commit_mode: CommitMode | None = None,
) -> dict[str, Any]:
    """Reflection node: pause for a reviewer before the episode's tools are committed.

    Does nothing unless ``tool_approval`` asks for it and the episode commits
    its own tools (in a batch the batch graph reviews them after absorbing).
    The store reads and an edit's admission run on insitu's blocking threads.

    Returns:
        Update: rejected tools dropped from ``local_tools`` / ``repaired_tools``
        (mapped to ``None``), edited ones replaced, and ``rejected_tools``.
    """
    return await blocking(
        _review_episode_tools, state, settings(runtime), services=services, commit_mode=commit_mode
    )


def _review_episode_tools(
    state: EpisodeState,
    context: InsituContext,
    *,
    services: Services,
    commit_mode: CommitMode | None,
) -> dict[str, Any]:
    if (
        context.tool_approval == "none"
        or (commit_mode or context.commit_mode) != "store"
        or context.freeze_library
        or not context.keep_new_tools
    ):
        return {}
    pools = {"local_tools": "new", "repaired_tools": "repair"}
    under_review: dict[str, tuple[str, ToolRecord]] = {}
    items = []
    for pool, change in pools.items():
        if not needs_review(context, change):
            continue
        for name, data in (state.get(pool) or {}).items():
            record = ToolRecord.model_validate(data)
            base = _library_version(services, context, name) if change == "repair" else None
            under_review[name] = (pool, record)
            items.append(tool_item(record, change, base=base))
    if not items:
        return {}
    emit("awaiting_review", f"{len(items)} tool(s) await a reviewer's decision")
    value = interrupt(
        {"kind": REVIEW_KIND, "scope": "episode", "task_id": state["task_id"], "tools": items}
    )
    scratch = Path(state["workdir"]).parent / f".{Path(state['workdir']).name}-review"
    outcomes = apply_decisions(
        {name: record for name, (_pool, record) in under_review.items()},
        value,
        review_scope=f"episode:{state['task_id']}",
        services=services,
        context=context,
        scratch_dir=scratch,
    )
    update: dict[str, Any] = {"local_tools": {}, "repaired_tools": {}, "rejected_tools": []}
    for name, (kept, rejection) in outcomes.items():
        pool = under_review[name][0]
        update[pool][name] = None if kept is None else kept.model_dump(mode="json")
        if rejection:
            update["rejected_tools"].append(rejection)
    return update


def _library_version(services: Services, context: InsituContext, name: str) -> ToolRecord | None:
    from insitu.tool_store.errors import ToolNotFoundError

    try:
        return services.store(context).get(name)
    except ToolNotFoundError:
        return None


# ------------------------------------------------------------------ the batch


async def review_batch_tools(
    state: dict[str, Any], runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Batch node: pause for a reviewer between absorbing and the batch's commit.

    Each addition, repair and merge of the batch's change set is one item. A
    rejected merge keeps its members apart: the merge and its archives are
    dropped, and the batch's own tools it had absorbed are added as they were.
    The store reads and an edit's admission run on insitu's blocking threads.

    Returns:
        Update: the reviewed ``changes`` and ``rejected_tools``.
    """
    return await blocking(_review_batch_tools, state, settings(runtime), services=services)


def _review_batch_tools(
    state: dict[str, Any], context: InsituContext, *, services: Services
) -> dict[str, Any]:
    changes = ChangeSet.model_validate(state.get("changes") or {})
    if context.tool_approval == "none" or not len(changes):
        return {}
    store = services.store(context)
    batch_new = _batch_new_tools(state.get("results") or [])
    under_review: dict[str, tuple[int, str, ToolRecord]] = {}
    items = []
    for position, change in enumerate(changes.changes):
        if isinstance(change, ToolArchive):
            continue
        kind = _change_kind(change)
        if not needs_review(context, kind):
            continue
        record = _proposed_record(change)
        base = _library_version(services, context, record.name) if kind != "new" else None
        members = [
            batch_new.get(ref.split("@")[0])
            or _library_version(services, context, ref.split("@")[0])
            for ref in change.merged_from
        ]
        under_review[record.name] = (position, kind, record)
        items.append(tool_item(record, kind, base=base, members=[m for m in members if m]))
    if not items:
        return {}
    emit("awaiting_review", f"{len(items)} tool(s) of the batch await a reviewer's decision")
    batch_id = state.get("batch_id") or "batch"
    value = interrupt({"kind": REVIEW_KIND, "scope": "batch", "batch_id": batch_id, "tools": items})
    outcomes = apply_decisions(
        {name: record for name, (_position, _kind, record) in under_review.items()},
        value,
        review_scope=f"batch:{batch_id}",
        services=services,
        context=context,
        scratch_dir=Path(store.path) / "workspaces" / f".review-{batch_id}",
    )
    dropped: set[int] = set()
    rejected: list[dict[str, Any]] = []
    restored: list[ToolAdd] = []
    for name, (kept, rejection) in outcomes.items():
        position, kind, _record = under_review[name]
        change = changes.changes[position]
        if kept is not None:
            change.spec = kept.spec()
            continue
        rejected.append(rejection)
        dropped.add(position)
        if kind == "merge":
            dropped |= _archives_of(changes, name)
            restored += [
                ToolAdd(spec=batch_new[m].spec(), created_by_task=batch_new[m].created_by_task)
                for m in (ref.split("@")[0] for ref in change.merged_from)
                if m in batch_new and m != name
            ]
    kept_changes = [c for i, c in enumerate(changes.changes) if i not in dropped] + restored
    reviewed = changes.model_copy(update={"changes": kept_changes})
    return {"changes": reviewed.model_dump(mode="json"), "rejected_tools": rejected}


def _change_kind(change: ToolAdd | ToolUpdate) -> str:
    if change.origin == "merged" or change.merged_from:
        return "merge"
    return "repair" if isinstance(change, ToolUpdate) else "new"


def _proposed_record(change: ToolAdd | ToolUpdate) -> ToolRecord:
    """The record a change would commit (its version is the next one)."""
    return ToolRecord(
        **change.spec.model_dump(),
        version=1,
        hash=change.spec.content_hash(),
        origin=change.origin,
        created_by_task=change.created_by_task,
        merged_from=list(change.merged_from),
    )


def _archives_of(changes: ChangeSet, keeper: str) -> set[int]:
    """Positions of the archives that a merge into ``keeper`` brings with it."""
    return {
        i
        for i, c in enumerate(changes.changes)
        if isinstance(c, ToolArchive) and c.reason == f"merged into {keeper}"
    }


def _batch_new_tools(results: Iterable[dict[str, Any]]) -> dict[str, ToolRecord]:
    """The new tools the batch's episodes built, by name (the first of a name wins)."""
    found: dict[str, ToolRecord] = {}
    for result in results:
        for data in result.get("new_tools") or []:
            if data.get("change") == "new" and data.get("name") not in found:
                found[data["name"]] = ToolRecord.model_validate(
                    {k: v for k, v in data.items() if k != "change"}
                )
    return found
