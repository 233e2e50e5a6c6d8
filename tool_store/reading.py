"""Reading the library: records of tools and versions, state, events, snapshots and search.

A mixin of :class:`~insitu.tool_store.store.ToolStore`. Every read runs in one
record transaction of the backend (``_reading``), so what it returns is one
consistent state of the library; :meth:`Reading.snapshot` holds one for
several reads. Rows become :class:`~insitu.tool_store.contract.ToolRecord`\\ s
here (:meth:`Reading._record`), the one place that knows both row types.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from insitu.tool_store.contract import ToolRecord, ToolStats
from insitu.tool_store.errors import ToolNotFoundError, VersionNotFoundError
from insitu.tool_store.store_models import ListStatus, StoreEvent, ToolHit, ToolState

if TYPE_CHECKING:
    from insitu.tool_store.index import SearchMode, ToolIndex
    from insitu.tool_store.records.base import RecordTxn, ToolRow, VersionRow


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _check_status(status: str) -> None:
    if status not in ("active", "archived", "all"):
        raise ValueError(f"status must be 'active', 'archived' or 'all', not {status!r}")


class Reading:
    """The reading side of :class:`~insitu.tool_store.store.ToolStore` (a mixin of it)."""

    read_only: bool
    chroma_url: str | None
    _index: ToolIndex | None

    # The core and the index side provide these.
    _reading: Any
    _catch_up: Any
    _retry_pending: Any
    _memory_index: Any
    _warm_vector_cache: Any
    _records: Any
    _lock: Any
    _check_open: Any

    # ------------------------------------------------------------ rows

    @staticmethod
    def _tool_row(records: RecordTxn, name: str) -> ToolRow:
        if not isinstance(name, str):
            raise ToolNotFoundError(repr(name))
        row = records.tool(name)
        if row is None:
            raise ToolNotFoundError(name, records.tool_names())
        return row

    @staticmethod
    def _version_row(records: RecordTxn, name: str, version: int) -> VersionRow:
        if isinstance(version, bool) or not isinstance(version, int):
            raise VersionNotFoundError(name, version, records.version_numbers(name))
        row = records.version(name, version)
        if row is None:
            raise VersionNotFoundError(name, version, records.version_numbers(name))
        return row

    @staticmethod
    def _stats(tool: ToolRow) -> ToolStats:
        return ToolStats(
            calls=tool.calls,
            successes=tool.successes,
            failures=tool.failures,
            last_error=tool.last_error,
            last_used=_parse_time(tool.last_used),
            creation_cost_tokens=tool.creation_cost_tokens,
        )

    def _record(self, version: VersionRow, tool: ToolRow) -> ToolRecord:
        spec = json.loads(version.spec)
        return ToolRecord(
            **spec,
            version=version.version,
            hash=version.hash,
            created_at=datetime.fromisoformat(version.created_at),
            origin=version.origin,
            created_by_task=version.created_by_task,
            parent_version=version.parent_version,
            merged_from=json.loads(version.merged_from),
            note=version.note,
            status=tool.status,
            locked=tool.locked,
            stats=self._stats(tool),
        )

    def _current(self, records: RecordTxn, name: str) -> ToolRecord:
        tool = self._tool_row(records, name)
        return self._record(self._version_row(records, name, tool.current_version), tool)

    def _records_by_name(self, names: Iterable[str], records: RecordTxn) -> dict[str, ToolRecord]:
        """The current records of the tools of ``names`` that exist (others are left out)."""
        wanted = sorted({n for n in names if isinstance(n, str)})
        return {t.name: self._record(v, t) for t, v in records.heads_named(wanted)}

    # ------------------------------------------------------------ public reads

    def get(self, name: str, version: int | None = None) -> ToolRecord:
        """Return a tool's current record, or one of its versions.

        Archived tools are returned too (``record.status`` says so). The tool's
        status, lock and statistics are reported on every version's record.

        Raises:
            ToolNotFoundError: No such tool (with close-name suggestions).
            VersionNotFoundError: No such version.
        """
        with self._reading() as records:
            tool = self._tool_row(records, name)
            number = tool.current_version if version is None else version
            return self._record(self._version_row(records, name, number), tool)

    def has(self, name: str, *, include_archived: bool = True) -> bool:
        """Whether a tool of this name exists (names are unique, archived ones included)."""
        with self._reading() as records:
            tool = records.tool(name)
            return tool is not None and (include_archived or tool.status == "active")

    def list(self, status: ListStatus = "active") -> list[ToolRecord]:
        """Return the current records of tools, sorted by name.

        Args:
            status: ``"active"``, ``"archived"`` or ``"all"``.

        Raises:
            ValueError: For another status.
        """
        _check_status(status)
        with self._reading() as records:
            return [self._record(v, t) for t, v in records.heads(status)]

    def count(self, status: ListStatus = "active") -> int:
        """Number of tools with this status (``"all"`` counts every tool)."""
        _check_status(status)
        with self._reading() as records:
            return records.count(status)

    def history(self, name: str) -> list[ToolRecord]:
        """Return every version of a tool, oldest first.

        Raises:
            ToolNotFoundError: No such tool.
        """
        with self._reading() as records:
            tool = self._tool_row(records, name)
            return [self._record(v, tool) for v in records.versions(name)]

    def state(self, name: str) -> ToolState:
        """Return a tool's mutable state (current version, status, lock, statistics)."""
        with self._reading() as records:
            tool = self._tool_row(records, name)
            return ToolState(
                name=name,
                current_version=tool.current_version,
                status=tool.status,  # type: ignore[arg-type]
                locked=tool.locked,
                status_reason=tool.status_reason,
                stats=self._stats(tool),
            )

    def events(self, name: str | None = None, limit: int = 100) -> list[StoreEvent]:
        """Return the latest state-change events (newest last), optionally for one tool."""
        with self._reading() as records:
            rows = records.events(name, limit)
        return [
            StoreEvent(
                seq=r.seq,
                at=datetime.fromisoformat(r.at),
                name=r.name,
                action=r.action,
                detail=r.detail,
            )
            for r in rows
        ]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Any]:
        """Hold one consistent view of the records for several reads.

        Inside the block, ``list``, ``get``, ``history`` and ``state`` see the
        library as of its start, even if another process writes meanwhile
        (export uses it). Writes are not allowed inside the block.
        """
        self._check_open()
        with self._lock, self._records.snapshot():
            yield self

    # ------------------------------------------------------------ search

    def search(
        self,
        query: str,
        k: int = 5,
        mode: SearchMode = "hybrid",
        include_archived: bool = False,
    ) -> list[ToolHit]:
        """Find the tools that best match a task or capability description.

        Args:
            query: Free text (a task, or the capability needed).
            k: Number of results.
            mode: ``"hybrid"`` (default), ``"dense"`` or ``"lexical"``.
            include_archived: Search archived tools too (through an in-memory
                index of every tool built from the records).

        Returns:
            Hits with the tools' current records, best first.
        """
        self._check_open()
        with self._lock:
            if self.read_only or include_archived:
                index = self._memory_index(include_archived)
            else:
                if self.chroma_url:
                    self._catch_up()  # other processes' writes, for the lexical side
                    self._warm_vector_cache()
                else:
                    self._retry_pending()  # the sole writer may repair without more locking
                assert self._index is not None
                index = self._index
            hits = index.search(query, k=k, mode=mode)
            with self._reading() as records:
                found = self._records_by_name((h.id for h in hits), records)
            return [
                ToolHit(
                    record=found[h.id],
                    score=h.score,
                    dense_score=h.dense_score,
                    lexical_score=h.lexical_score,
                    rank=rank,
                )
                for rank, h in enumerate((h for h in hits if h.id in found), 1)
            ]
