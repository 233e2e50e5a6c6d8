"""Call statistics and reviewers' rejections: the idempotent writes that are not tool changes.

A mixin of :class:`~insitu.tool_store.store.ToolStore`. Statistics are
increments applied in SQL in one transaction per batch of calls (never
read-modify-write, so concurrent writers lose nothing); a commit id makes a
batch count once. A rejection is kept whole in the event log under a commit id
of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from insitu.tool_store.changes import CallRecord, CommitResult, calls_digest
from insitu.tool_store.contract import ToolRecord, now_utc

#: Characters of a failure's message kept as a tool's ``last_error``.
MAX_ERROR_CHARS = 2000


class Statistics:
    """The statistics side of :class:`~insitu.tool_store.store.ToolStore` (a mixin of it)."""

    # The core and the reading side provide these.
    _writing: Any
    _records: Any
    _tool_row: Any
    _version_row: Any
    _earlier_commit: Any
    _remember_commit: Any
    _event: Any
    events: Any

    def record_call(
        self,
        name: str,
        version: int | None,
        ok: bool,
        error: str | None = None,
        when: datetime | None = None,
    ) -> None:
        """Count one invocation of a tool in its statistics.

        Raises:
            ToolNotFoundError, VersionNotFoundError.
        """
        self.record_calls([CallRecord(name=name, version=version, ok=ok, error=error, when=when)])

    def record_calls(
        self,
        calls: Iterable[CallRecord | tuple[Any, ...] | dict[str, Any]],
        *,
        commit_id: str | None = None,
    ) -> int:
        """Count many invocations at once (one transaction; all or nothing).

        Args:
            calls: ``CallRecord`` objects, dicts of its fields, or tuples
                ``(name, version, ok[, error[, when]])``.
            commit_id: Idempotency key, as for :meth:`commit`: calls recorded
                under an id already applied are not counted again (a resumed
                episode or batch reports its calls once).

        Returns:
            How many calls were recorded (0 when ``commit_id`` was applied before).

        Raises:
            ToolNotFoundError, VersionNotFoundError: Nothing is recorded then.
        """
        parsed: list[CallRecord] = []
        for call in calls:
            if isinstance(call, CallRecord):
                parsed.append(call)
            elif isinstance(call, dict):
                parsed.append(CallRecord.model_validate(call))
            else:
                fields = ("name", "version", "ok", "error", "when")
                parsed.append(CallRecord.model_validate(dict(zip(fields, call, strict=False))))
        if not parsed:
            return 0
        digest = calls_digest(parsed)
        with self._writing("record calls"), self._records.write() as records:
            if commit_id is not None:
                if self._earlier_commit(records, commit_id, digest) is not None:
                    return 0
                result = CommitResult(commit_id=commit_id, applied_at=now_utc())
                self._remember_commit(records, commit_id, digest, result)
            per_tool: dict[str, list[CallRecord]] = {}
            for call in parsed:
                self._tool_row(records, call.name)
                if call.version is not None:
                    self._version_row(records, call.name, call.version)
                per_tool.setdefault(call.name, []).append(call)
            now = now_utc()
            for name, items in per_tool.items():
                items = sorted(items, key=lambda c: c.when or now)
                failed = [c for c in items if not c.ok]
                last_error = None
                if failed:
                    last_error = (failed[-1].error or "failed (no message)")[:MAX_ERROR_CHARS]
                records.add_calls(
                    name,
                    calls=len(items),
                    successes=len(items) - len(failed),
                    failures=len(failed),
                    last_error=last_error,
                    last_used=max((c.when or now) for c in items).isoformat(),
                )
        return len(parsed)

    def record_rejection(self, record: ToolRecord, reason: str, *, review_id: str) -> bool:
        """Keep a tool a reviewer rejected on record (never in the library, never lost).

        The whole record goes into the event log (action ``rejected``), so
        :meth:`rejections` can show it again; recording the same review twice
        (a resumed run) keeps one entry.

        Args:
            record: The rejected tool (built, repaired or merged, not committed).
            reason: The reviewer's reason.
            review_id: Idempotency key of this decision (its run, thread and tool).

        Returns:
            Whether it was recorded now (``False``: it was recorded before).
        """
        detail = json.dumps(
            {"reason": reason, "review_id": review_id, "record": record.model_dump(mode="json")}
        )
        commit_id = f"rejection:{review_id}"
        digest = hashlib.sha256(detail.encode()).hexdigest()
        with self._writing("record a rejection"), self._records.write() as records:
            if self._earlier_commit(records, commit_id, digest) is not None:
                return False
            self._remember_commit(
                records, commit_id, digest, CommitResult(commit_id=commit_id, applied_at=now_utc())
            )
            self._event(records, record.name, "rejected", detail)
        return True

    def rejections(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The tools reviewers rejected (newest last): ``{"at", "reason", "record"}`` each."""
        found = []
        for event in self.events(name, limit=10 * limit):
            if event.action == "rejected" and event.detail:
                data = json.loads(event.detail)
                found.append({"at": event.at, "reason": data["reason"], "record": data["record"]})
        return found[-limit:]
