"""Pruning: archive the tools worth least (never delete), and revive them when needed again.

A prune scores the active library (:func:`insitu.tool_store.utility.utility_scores`)
and archives, in one atomic commit, every tool whose utility is below a
threshold, except locked tools, tools younger than a grace period and any
the caller exempts (a batch exempts the tools it just added or changed).
Each archived tool's status reason starts with :data:`PRUNED`, followed by the
figures that condemned it; that marker is what makes it revivable.

Revival: when a search for a task ranks a pruned tool first among the active
and archived tools, close enough to the task (cosine at least a threshold), it
is restored (``ToolStore.restore``, with the reason in the event log) rather
than rebuilt. Tools archived by a merge or by hand are never revived: a
merge's survivor or a person's decision stands.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from insitu.tool_store.changes import ChangeSet
from insitu.tool_store.contract import ToolRecord
from insitu.tool_store.utility import DEFAULT_HALF_LIFE_DAYS, ToolUtility, utility_scores

if TYPE_CHECKING:
    from insitu.tool_store.store import ToolStore

log = logging.getLogger("insitu.tool_store.pruning")

#: The start of the status reason of every tool archived by a prune.
PRUNED = "pruned"
#: The default grace period: tools younger than this many days are never pruned.
DEFAULT_GRACE_DAYS = 7.0


class PruneDecision(BaseModel):
    """What a prune does with one tool below the threshold, and why."""

    name: str
    utility: float
    action: str = Field(description="'archive', or 'keep' (locked, too young, exempt).")
    reason: str


class PrunePlan(BaseModel):
    """A prune's decisions (every tool below the threshold) and what it archived."""

    min_utility: float
    scored: int = Field(description="Active tools scored.")
    decisions: list[PruneDecision] = Field(default_factory=list)
    archived: list[str] = Field(default_factory=list, description="Filled by apply_prune.")

    @property
    def to_archive(self) -> list[PruneDecision]:
        """The decisions to archive."""
        return [d for d in self.decisions if d.action == "archive"]


def _archive_reason(score: ToolUtility, min_utility: float) -> str:
    return f"{PRUNED}: utility {score.utility:.3f} < {min_utility:g} ({score.why()})"


def plan_prune(
    store: ToolStore,
    *,
    min_utility: float,
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
    grace_days: float = DEFAULT_GRACE_DAYS,
    exempt: Collection[str] = (),
    now: datetime | None = None,
) -> PrunePlan:
    """Decide which active tools a prune archives (nothing is written).

    Args:
        store: An open store (read-only is enough).
        min_utility: Tools scoring below it are pruned.
        half_life_days: See :func:`~insitu.tool_store.utility.utility_scores`.
        grace_days: Tools whose first version is younger are kept.
        exempt: Names never pruned (e.g. what the current batch added).
        now: The time of the scores (default: now).

    Returns:
        A decision for every active tool below ``min_utility``, lowest first.
    """
    scores = utility_scores(store, half_life_days=half_life_days, now=now)
    plan = PrunePlan(min_utility=min_utility, scored=len(scores))
    for score in sorted(scores.values(), key=lambda s: (s.utility, s.name)):
        if score.utility >= min_utility:
            continue
        if score.locked:
            action, reason = "keep", "locked"
        elif score.age_days < grace_days:
            action, reason = "keep", f"younger than {grace_days:g} days"
        elif score.name in exempt:
            action, reason = "keep", "added or changed by this batch"
        else:
            action, reason = "archive", _archive_reason(score, min_utility)
        plan.decisions.append(
            PruneDecision(name=score.name, utility=score.utility, action=action, reason=reason)
        )
    return plan


def apply_prune(store: ToolStore, plan: PrunePlan) -> PrunePlan:
    """Archive the plan's tools in one atomic commit (locked tools are refused, never forced).

    Returns:
        The plan, with ``archived`` filled.

    Raises:
        LockedToolError: A tool was locked after the plan was made (nothing archived).
    """
    changes = ChangeSet(note=f"prune below utility {plan.min_utility:g}")
    for decision in plan.to_archive:
        changes.archive(decision.name, decision.reason)
    if len(changes):
        result = store.commit(changes)
        plan.archived = [ref.split("@", 1)[0] for ref in result.archived]
    return plan


def is_pruned(reason: str | None) -> bool:
    """Whether an archived tool's status reason says a prune archived it."""
    return bool(reason) and reason.startswith(PRUNED + ":")


def has_pruned_tools(store: ToolStore) -> bool:
    """Whether any tool is archived by a prune (else a revival search is not worth running)."""
    with store._reading() as records:
        return records.any_status_reason("archived", PRUNED + ":")


def revive_for_task(
    store: ToolStore,
    task: str,
    *,
    k: int,
    min_similarity: float,
    why: str,
) -> ToolRecord | None:
    """Restore a pruned tool that a search for ``task`` ranks first, if close enough.

    The search covers active and archived tools. Only a tool archived by a
    prune (:func:`is_pruned`) is restored, only when it is the first hit and
    its dense (cosine) similarity to the task reaches ``min_similarity``.

    Args:
        store: A writable store.
        task: The task text the Manager retrieves for.
        k: Hits searched.
        min_similarity: Least cosine between the task and the tool.
        why: Who asked (kept in the event's reason, e.g. the task id).

    Returns:
        The restored tool's record, or None.
    """
    if store.read_only or not has_pruned_tools(store):
        return None
    hits = store.search(task, k=k, include_archived=True)
    if not hits or hits[0].record.status != "archived":
        return None
    top = hits[0]
    similarity = top.dense_score if top.dense_score is not None else top.score
    if similarity < min_similarity or not is_pruned(store.state(top.record.name).status_reason):
        return None
    reason = f"revived: ranked first for {why} (similarity {similarity:.2f})"
    log.info("%s: %s", top.record.name, reason)
    return store.restore(top.record.name, reason=reason)
