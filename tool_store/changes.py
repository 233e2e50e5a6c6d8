"""Change sets: many library changes applied as one atomic, idempotent commit.

The batch-evolution step absorbs several episodes' tools, merges duplicates
and archives the absorbed ones; :meth:`ToolStore.commit
<insitu.tool_store.store.ToolStore.commit>` applies a :class:`ChangeSet` in one
SQLite transaction, so after a crash the library is either the old one or the
new one. A ``commit_id`` makes the commit idempotent: applying an id that was
already applied changes nothing and returns the earlier result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from insitu.tool_store.contract import BuildCost, ToolOrigin, ToolRecord, ToolSpec
from insitu.tool_store.learning import Experience, HarvestedCase, UsageNote

IfExists = Literal["error", "skip", "update"]


class ToolAdd(BaseModel):
    """Add a new tool (version 1)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["add"] = "add"
    spec: ToolSpec
    origin: ToolOrigin = "generated"
    created_by_task: str | None = None
    note: str | None = None
    merged_from: list[str] = Field(
        default_factory=list, description="Refs (name@version) of the tools this one replaces."
    )
    creation_cost_tokens: int = Field(default=0, ge=0)
    build_cost: BuildCost | None = Field(
        default=None, description="Tokens and model that built it, kept per version."
    )
    if_exists: IfExists = Field(
        default="error",
        description=(
            "When the name exists: 'error' (DuplicateToolError, the whole commit fails), "
            "'skip' (keep the library's tool), 'update' (add this as its next version). "
            "Identical content is always a no-op."
        ),
    )


class ToolUpdate(BaseModel):
    """Add a new version of an existing tool (a repair, a merge, a manual edit)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["update"] = "update"
    name: str
    spec: ToolSpec
    origin: ToolOrigin = "repaired"
    created_by_task: str | None = None
    note: str | None = None
    merged_from: list[str] = Field(default_factory=list)
    expected_version: int | None = Field(
        default=None,
        description="Fail with VersionConflictError unless this is still the current version.",
    )
    creation_cost_tokens: int = Field(default=0, ge=0, description="Added to the tool's cost.")
    build_cost: BuildCost | None = Field(
        default=None, description="Tokens and model that built it, kept per version."
    )
    force: bool = Field(default=False, description="Update even if the tool is locked.")


class ToolArchive(BaseModel):
    """Archive a tool (kept with its history, removed from retrieval)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["archive"] = "archive"
    name: str
    reason: str
    force: bool = Field(default=False, description="Archive even if the tool is locked.")


Change = Annotated[ToolAdd | ToolUpdate | ToolArchive, Field(discriminator="kind")]


class ChangeSet(BaseModel):
    """An ordered list of changes applied together by ``ToolStore.commit``.

    Changes apply in order, so a merge is ``[ToolUpdate(keeper), ToolArchive(a),
    ToolArchive(b)]`` or ``[ToolAdd(merged), ToolArchive(a), ToolArchive(b)]``.
    What the team learned goes with them, in the same transaction, after the
    tool changes (see ``tool_store/learning.py``): ``experiences``,
    ``usage_notes`` and harvested ``cases``.
    """

    model_config = ConfigDict(extra="forbid")

    commit_id: str | None = Field(
        default=None, description="Idempotency key; commit(commit_id=...) overrides it."
    )
    note: str | None = None
    changes: list[Change] = Field(default_factory=list)
    experiences: list[Experience] = Field(
        default_factory=list, description="What the episodes of this commit taught."
    )
    usage_notes: list[UsageNote] = Field(
        default_factory=list, description="How to call tools, stored at their current version."
    )
    cases: list[HarvestedCase] = Field(
        default_factory=list, description="Calls kept as regression cases of their tools."
    )

    def add(self, spec: ToolSpec, **kwargs: object) -> ChangeSet:
        """Append a :class:`ToolAdd` and return ``self`` (for chaining)."""
        self.changes.append(ToolAdd(spec=spec, **kwargs))  # type: ignore[arg-type]
        return self

    def update(self, name: str, spec: ToolSpec, **kwargs: object) -> ChangeSet:
        """Append a :class:`ToolUpdate` and return ``self``."""
        self.changes.append(ToolUpdate(name=name, spec=spec, **kwargs))  # type: ignore[arg-type]
        return self

    def archive(self, name: str, reason: str, *, force: bool = False) -> ChangeSet:
        """Append a :class:`ToolArchive` and return ``self``."""
        self.changes.append(ToolArchive(name=name, reason=reason, force=force))
        return self

    def __len__(self) -> int:
        return len(self.changes) + self.learned()

    def learned(self) -> int:
        """How many learning records (experiences, notes, cases) the set carries."""
        return len(self.experiences) + len(self.usage_notes) + len(self.cases)

    def digest(self) -> str:
        """SHA-256 of what the set changes (its ``commit_id`` left out).

        Empty learning lists are left out too, so that a set of tool changes
        alone has the digest it always had (its commit id stays the same).
        """
        empty = {name for name in _LEARNING_FIELDS if not getattr(self, name)}
        payload = self.model_dump_json(exclude={"commit_id", *empty})
        return hashlib.sha256(payload.encode()).hexdigest()

    @classmethod
    def from_episode(
        cls,
        *,
        new: Sequence[ToolRecord] = (),
        repaired: Sequence[ToolRecord] = (),
        task_id: str | None = None,
        if_exists: IfExists = "error",
    ) -> ChangeSet:
        """Build the change set of one episode: its new tools and its repairs.

        Args:
            new: Episode-local records of tools built in the episode.
            repaired: Episode-local records of repaired library tools; their
                ``parent_version`` is the version the repair started from, so
                the commit fails with ``VersionConflictError`` if the library's
                tool changed meanwhile.
            task_id: The episode's task id (``created_by_task``).
            if_exists: Policy for a new tool whose name exists meanwhile.

        Returns:
            The change set (``commit_id`` unset; pass one to ``commit``).
        """
        changes: list[ToolAdd | ToolUpdate | ToolArchive] = [
            ToolAdd(
                spec=r.spec(),
                origin=r.origin,
                created_by_task=r.created_by_task or task_id,
                note=r.note,
                creation_cost_tokens=r.stats.creation_cost_tokens,
                build_cost=r.build_cost,
                if_exists=if_exists,
            )
            for r in new
        ]
        changes += [
            ToolUpdate(
                name=r.name,
                spec=r.spec(),
                origin=r.origin if r.origin != "generated" else "repaired",
                created_by_task=r.created_by_task or task_id,
                note=r.note,
                merged_from=list(r.merged_from),
                expected_version=r.parent_version,
                creation_cost_tokens=r.stats.creation_cost_tokens,
                build_cost=r.build_cost,
            )
            for r in repaired
        ]
        return cls(changes=changes)


_LEARNING_FIELDS = ("experiences", "usage_notes", "cases")


class CommitResult(BaseModel):
    """What a commit did, by tool reference (``name@version``)."""

    commit_id: str | None = None
    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    archived: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(
        default_factory=list, description="Changes that were no-ops (same content, skipped)."
    )
    applied_at: datetime | None = None
    replayed: bool = Field(
        default=False, description="True when this commit_id had been applied before."
    )
    experiences: list[str] = Field(default_factory=list, description="Experience ids written.")
    notes: list[str] = Field(
        default_factory=list, description="Usage notes written (name@version)."
    )
    cases: list[str] = Field(default_factory=list, description="Harvested cases kept (name:id).")

    def summary(self) -> str:
        """One line for logs: ``"2 added, 1 updated, 0 archived, 1 unchanged"``."""
        text = (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.archived)} archived, {len(self.unchanged)} unchanged"
        )
        learned = [
            f"{len(items)} {what}"
            for items, what in (
                (self.experiences, "experience(s)"),
                (self.notes, "usage note(s)"),
                (self.cases, "harvested case(s)"),
            )
            if items
        ]
        if learned:
            text += "; learned " + ", ".join(learned)
        return text + (" (already applied)" if self.replayed else "")


class CallRecord(BaseModel):
    """One tool invocation for :meth:`ToolStore.record_calls`."""

    name: str
    version: int | None = None
    ok: bool
    error: str | None = None
    when: datetime | None = None


def calls_digest(calls: Sequence[CallRecord]) -> str:
    """SHA-256 of a list of invocations (what an idempotent ``record_calls`` remembers)."""
    text = "\n".join(call.model_dump_json() for call in calls)
    return hashlib.sha256(text.encode()).hexdigest()
