"""How each kind of change is applied inside a write transaction: add, update, archive, import.

A mixin of :class:`~insitu.tool_store.store.ToolStore`, whose ``_apply`` runs
the transaction and calls these in the change set's order. They enforce the
library's rules (a name is added once, versions are immutable and numbered
without gaps, locked and archived tools refuse automated changes, an expected
version must still be current) by raising before the transaction commits, so a
failing change leaves the library as it was. They also hold what the commit
must finish afterwards (:class:`~insitu.tool_store.store_models.PendingWork`):
the tools to index, the events to log, the records that follow merges.

:meth:`Applying.import_tools` restores whole tools (every version, state and
statistics) from an export in one such transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from insitu.tool_store.changes import CommitResult, ToolAdd, ToolArchive, ToolUpdate
from insitu.tool_store.contract import BuildCost, ToolRecord, ToolSpec, now_utc
from insitu.tool_store.errors import (
    DuplicateToolError,
    InvalidSpecError,
    LockedToolError,
    ToolArchivedError,
    VersionConflictError,
)
from insitu.tool_store.records.base import ToolRow, VersionRow
from insitu.tool_store.store_models import PendingWork, ToolState, validate_spec

if TYPE_CHECKING:
    from insitu.tool_store.records.base import RecordTxn


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Applying:
    """The change kinds of :class:`~insitu.tool_store.store.ToolStore` (a mixin of it)."""

    # The core, the reading and the index sides provide these.
    _writing: Any
    _records: Any
    _tool_row: Any
    _version_row: Any
    _record: Any
    _vectors_for: Any
    _save_vectors: Any
    _after_write: Any
    _event: Any

    @staticmethod
    def _insert_version(
        records: RecordTxn,
        spec: ToolSpec,
        version: int,
        *,
        origin: str,
        created_by_task: str | None,
        parent_version: int | None,
        merged_from: Sequence[str],
        note: str | None,
        commit_id: str | None,
        created_at: datetime,
        build_cost: BuildCost | None = None,
    ) -> None:
        records.insert_version(
            VersionRow(
                name=spec.name,
                version=version,
                hash=spec.content_hash(),
                spec=spec.model_dump_json(),
                created_at=created_at.isoformat(),
                origin=origin,
                created_by_task=created_by_task,
                parent_version=parent_version,
                merged_from=json.dumps(list(merged_from)),
                note=note,
                commit_id=commit_id,
            )
        )
        if build_cost is not None:  # what building this version cost, for its ROI
            records.save_build_cost(spec.name, version, build_cost)

    def _apply_add(
        self,
        records: RecordTxn,
        change: ToolAdd,
        generation: int,
        now: datetime,
        commit_id: str | None,
        result: CommitResult,
        pending: PendingWork,
    ) -> None:
        spec = change.spec
        existing = records.tool(spec.name)
        if existing is not None:
            current = self._record(
                self._version_row(records, spec.name, existing.current_version), existing
            )
            if current.hash == spec.content_hash() or change.if_exists == "skip":
                result.unchanged.append(current.ref)
                return
            if change.if_exists == "error":
                raise DuplicateToolError(spec.name, status=existing.status)
            update = ToolUpdate(
                name=spec.name,
                spec=spec,
                origin=change.origin,
                created_by_task=change.created_by_task,
                note=change.note,
                merged_from=change.merged_from,
                creation_cost_tokens=change.creation_cost_tokens,
                build_cost=change.build_cost,
            )
            self._apply_update(records, update, generation, now, commit_id, result, pending)
            return
        self._insert_version(
            records,
            spec,
            1,
            origin=change.origin,
            created_by_task=change.created_by_task,
            parent_version=None,
            merged_from=change.merged_from,
            note=change.note,
            commit_id=commit_id,
            created_at=now,
            build_cost=change.build_cost,
        )
        records.insert_tool(
            ToolRow(
                name=spec.name,
                current_version=1,
                status="active",
                creation_cost_tokens=change.creation_cost_tokens,
                changed_gen=generation,
            )
        )
        result.added.append(f"{spec.name}@1")
        pending.names.add(spec.name)
        pending.events.append((spec.name, "add", change.note))
        self._note_merge(spec.name, change.merged_from, pending)

    def _apply_update(
        self,
        records: RecordTxn,
        change: ToolUpdate,
        generation: int,
        now: datetime,
        commit_id: str | None,
        result: CommitResult,
        pending: PendingWork,
    ) -> None:
        spec = change.spec
        if spec.name != change.name:
            raise InvalidSpecError(
                [f"spec.name {spec.name!r} is not the tool being updated; names never change"],
                change.name,
            )
        tool = self._tool_row(records, change.name)
        current = tool.current_version
        if change.expected_version is not None and change.expected_version != current:
            raise VersionConflictError(change.name, change.expected_version, current)
        head = self._version_row(records, change.name, current)
        if head.hash == spec.content_hash():
            result.unchanged.append(f"{change.name}@{current}")
            return
        if tool.status != "active":
            raise ToolArchivedError(change.name, "update")
        if tool.locked and not change.force:
            raise LockedToolError(change.name, "update")
        version = records.max_version(change.name) + 1
        self._insert_version(
            records,
            spec,
            version,
            origin=change.origin,
            created_by_task=change.created_by_task,
            parent_version=current,
            merged_from=change.merged_from,
            note=change.note,
            commit_id=commit_id,
            created_at=now,
            build_cost=change.build_cost,
        )
        records.set_current_version(
            change.name,
            version,
            generation=generation,
            add_cost_tokens=change.creation_cost_tokens,
        )
        result.updated.append(f"{change.name}@{version}")
        pending.names.add(change.name)
        pending.events.append((change.name, "update", change.note or change.origin))
        self._note_merge(change.name, change.merged_from, pending)

    @staticmethod
    def _note_merge(keeper: str, merged_from: Sequence[str], pending: PendingWork) -> None:
        """Remember which names a merge folds into ``keeper`` (their records follow it)."""
        for ref in merged_from:
            name = ref.rpartition("@")[0] or ref
            if name != keeper:
                pending.follow.renames[name] = (keeper, ref)

    def _apply_archive(
        self,
        records: RecordTxn,
        change: ToolArchive,
        generation: int,
        result: CommitResult,
        pending: PendingWork,
    ) -> None:
        tool = self._tool_row(records, change.name)
        ref = f"{change.name}@{tool.current_version}"
        if tool.status == "archived":
            result.unchanged.append(ref)
            return
        if tool.locked and not change.force:
            raise LockedToolError(change.name, "archive")
        records.set_status(change.name, "archived", change.reason, generation=generation)
        result.archived.append(ref)
        pending.names.add(change.name)
        pending.events.append((change.name, "archive", change.reason))
        pending.follow.archived[change.name] = change.reason

    # --------------------------------------------------------------- import

    def import_tools(
        self,
        tools: Sequence[tuple[ToolState, Sequence[ToolRecord]]],
        *,
        on_conflict: Literal["skip", "replace", "error"] = "skip",
        source: str = "import",
        force: bool = False,
    ) -> dict[str, list[str]]:
        """Restore whole tools (every version, state and statistics) in one transaction.

        A tool whose name is new is restored exactly (versions, times,
        lineage, status, lock, statistics). For a name that exists:
        identical current content is left alone; otherwise ``skip`` keeps the
        library's tool, ``replace`` adds the imported current content as a new
        version (origin ``imported``; history stays append-only), ``error``
        raises before anything is written.

        Args:
            tools: ``(state, versions oldest first)`` per tool.
            on_conflict: See above.
            source: Where the tools came from, for notes and the event log.
            force: Replace locked tools too.

        Returns:
            ``{"imported": [...], "replaced": [...], "skipped": [...], "unchanged": [...]}``.

        Raises:
            ImportConflictError, LockedToolError, ToolArchivedError, InvalidSpecError.
        """
        from insitu.tool_store.errors import ImportConflictError

        if on_conflict not in ("skip", "replace", "error"):
            raise ValueError("on_conflict must be 'skip', 'replace' or 'error'")
        for _, versions in tools:
            for record in versions:
                validate_spec(record.spec())
        outcome: dict[str, list[str]] = {
            "imported": [],
            "replaced": [],
            "skipped": [],
            "unchanged": [],
        }
        with self._writing("import tools"):
            specs = [v[-1].spec() for _, v in tools if v]
            vectors = self._vectors_for(specs)
            pending = PendingWork()
            with self._records.write() as records:
                generation = records.bump_generation()
                conflicts = []
                for state, versions in tools:
                    row = records.tool(state.name)
                    if row is not None:
                        head = self._version_row(records, state.name, row.current_version)
                        if head.hash != versions[-1].hash:
                            conflicts.append(state.name)
                if conflicts and on_conflict == "error":
                    raise ImportConflictError(conflicts)
                now = now_utc()
                for state, versions in tools:
                    if records.tool(state.name) is None:
                        self._restore_tool(records, state, versions, generation)
                        outcome["imported"].append(state.name)
                        pending.names.add(state.name)
                        pending.events.append((state.name, "import", source))
                    elif state.name not in conflicts:
                        outcome["unchanged"].append(state.name)
                    elif on_conflict == "skip":
                        outcome["skipped"].append(state.name)
                    else:
                        head = versions[-1]
                        update = ToolUpdate(
                            name=state.name,
                            spec=head.spec(),
                            origin="imported",
                            note=f"imported from {source} ({head.ref})",
                            force=force,
                        )
                        self._apply_update(
                            records, update, generation, now, None, CommitResult(), pending
                        )
                        outcome["replaced"].append(state.name)
                self._save_vectors(records, vectors)
                for name, kind, detail in pending.events:
                    self._event(records, name, kind, detail)
            self._after_write(pending.names)
        return outcome

    def _restore_tool(
        self,
        records: RecordTxn,
        state: ToolState,
        versions: Sequence[ToolRecord],
        generation: int,
    ) -> None:
        for record in versions:
            self._insert_version(
                records,
                record.spec(),
                record.version,
                origin=record.origin,
                created_by_task=record.created_by_task,
                parent_version=record.parent_version,
                merged_from=record.merged_from,
                note=record.note,
                commit_id=None,
                created_at=record.created_at,
            )
        stats = state.stats
        records.insert_tool(
            ToolRow(
                name=state.name,
                current_version=state.current_version,
                status=state.status,
                locked=state.locked,
                status_reason=state.status_reason,
                calls=stats.calls,
                successes=stats.successes,
                failures=stats.failures,
                last_error=stats.last_error,
                last_used=_iso(stats.last_used),
                creation_cost_tokens=stats.creation_cost_tokens,
                index_pending=True,
                changed_gen=generation,
            )
        )
