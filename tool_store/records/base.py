"""The record backend protocol: what the store core asks of the database that holds a library.

A library's records are every version of every tool, per-tool state and
statistics, applied commit ids, the event log, the vector cache, build costs
and what the team learned (experiences, usage notes, harvested cases). The core
(:mod:`insitu.tool_store.store`) keeps the library's rules; a
:class:`RecordBackend` keeps the records and says how writers are serialised:

* :meth:`RecordBackend.write` opens a write transaction that no other writer
  (thread, process or machine) runs at the same time; it commits when the block
  ends and rolls back when it raises.
* :meth:`RecordBackend.read` gives a consistent view for one read;
  :meth:`RecordBackend.snapshot` holds one view for several reads (export).
* :meth:`RecordBackend.writer_guard` spans a whole write operation (records
  and index) where a backend needs that (SQLite with a Chroma server);
  :meth:`RecordBackend.index_guard` spans an index update where writers'
  record transactions do not serialise their index updates (PostgreSQL).

Inside a transaction the core calls the operations of :class:`RecordTxn`; it
never sees SQL or a driver's row type. Rows are :class:`ToolRow`,
:class:`VersionRow` and :class:`EventRow`; times are ISO-8601 text, as stored.

Backends: :mod:`.sqlite` (``tools.db`` in the store directory, the default) and
:mod:`.postgres` (``records_url``). Both run the one SQL of :mod:`.sql`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from insitu.tool_store.contract import BuildCost
from insitu.tool_store.errors import StoreFormatError

#: The records' format version (both backends); a library of a newer one is refused.
SCHEMA_VERSION = 1
#: What ``list``, ``count`` and the head scans select by.
StatusFilter = Literal["active", "archived", "all"]


def new_library_meta() -> dict[str, str]:
    """The metadata a new library starts with (a backend writes it only where it is missing)."""
    return {
        "schema_version": str(SCHEMA_VERSION),
        "library_id": uuid.uuid4().hex,
        "generation": "0",
    }


def check_schema_version(value: str | None, location: str) -> None:
    """Refuse records that are not a library, or of a newer format than this insitu reads.

    Args:
        value: The ``schema_version`` of the records' metadata.
        location: Where the records are, for the message.

    Raises:
        StoreFormatError: Saying which, and what to do.
    """
    try:
        version = int(value or "0")
    except ValueError:
        version = 0
    if version > SCHEMA_VERSION:
        raise StoreFormatError(
            f"{location} has schema version {version}; this insitu reads up to "
            f"{SCHEMA_VERSION}. Upgrade insitu."
        )
    if version < 1:
        raise StoreFormatError(f"{location} is not an insitu tool library")


@dataclass(frozen=True)
class ToolRow:
    """A tool's mutable state: its current version, status, lock, statistics, index mark."""

    name: str
    current_version: int
    status: str
    locked: bool = False
    status_reason: str | None = None
    calls: int = 0
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    last_used: str | None = None
    creation_cost_tokens: int = 0
    index_pending: bool = True
    changed_gen: int = 0


@dataclass(frozen=True)
class VersionRow:
    """One immutable version of a tool; ``spec`` and ``merged_from`` are JSON text."""

    name: str
    version: int
    hash: str
    spec: str
    created_at: str
    origin: str
    created_by_task: str | None
    parent_version: int | None
    merged_from: str
    note: str | None
    commit_id: str | None


@dataclass(frozen=True)
class EventRow:
    """One entry of the event log."""

    seq: int
    at: str
    name: str
    action: str
    detail: str | None


class RecordTxn(Protocol):
    """The record operations of one transaction (read-only ones in a read transaction)."""

    # -- library metadata
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def generation(self) -> int: ...
    def bump_generation(self) -> int: ...

    # -- tools and versions
    def tool(self, name: str) -> ToolRow | None: ...
    def tool_names(self) -> list[str]: ...
    def count(self, status: StatusFilter) -> int: ...
    def version(self, name: str, version: int) -> VersionRow | None: ...
    def versions(self, name: str) -> list[VersionRow]: ...
    def version_numbers(self, name: str) -> list[int]: ...
    def max_version(self, name: str) -> int: ...
    def heads(
        self, status: StatusFilter, *, changed_since: int | None = None
    ) -> list[tuple[ToolRow, VersionRow]]: ...
    def heads_named(self, names: Sequence[str]) -> list[tuple[ToolRow, VersionRow]]: ...
    def changed_names(self, since: int) -> list[str]: ...
    def active_hashes(self) -> dict[str, str]: ...
    def insert_version(self, row: VersionRow) -> None: ...
    def insert_tool(self, row: ToolRow) -> None: ...
    def set_current_version(
        self, name: str, version: int, *, generation: int, add_cost_tokens: int
    ) -> None: ...
    def set_status(
        self, name: str, status: str, reason: str | None, *, generation: int
    ) -> None: ...
    def set_locked(self, name: str, locked: bool) -> None: ...
    def add_calls(
        self,
        name: str,
        *,
        calls: int,
        successes: int,
        failures: int,
        last_error: str | None,
        last_used: str,
    ) -> None: ...

    # -- index marks and the vector cache
    def pending_names(self) -> list[str]: ...
    def clear_pending(self, names: Sequence[str] | None, *, up_to_gen: int) -> None: ...
    def vectors(self, hashes: Sequence[str], model: str) -> dict[str, bytes]: ...
    def save_vectors(self, model: str, vectors: Mapping[str, bytes]) -> None: ...

    # -- commits, events, costs
    def commit_record(self, commit_id: str) -> tuple[str, str] | None: ...
    def remember_commit(
        self, commit_id: str, applied_at: str, digest: str, result: str
    ) -> None: ...
    def add_event(self, at: str, name: str, action: str, detail: str | None) -> None: ...
    def events(self, name: str | None, limit: int) -> list[EventRow]: ...
    def save_build_cost(self, name: str, version: int, cost: BuildCost) -> None: ...
    def build_costs(self, name: str | None) -> dict[tuple[str, int], BuildCost]: ...
    def first_version_times(self) -> dict[str, str]: ...
    def version_counts(self) -> dict[str, int]: ...
    def any_status_reason(self, status: str, prefix: str) -> bool: ...

    # -- learning records (see tool_store/learning.py for what they mean)
    def has_learning(self) -> bool: ...
    def tool_head(self, name: str) -> tuple[str, int, str] | None: ...
    def insert_experience(self, row: Mapping[str, Any]) -> bool: ...
    def insert_experience_tool(self, row: Mapping[str, Any]) -> None: ...
    def put_usage_note(self, row: Mapping[str, Any]) -> None: ...
    def insert_case(self, row: Mapping[str, Any]) -> bool: ...
    def rename_references(self, old: str, keeper: str, keeper_version: int | None) -> None: ...
    def mark_references_stale(
        self, name: str, why: str, *, versions_between: tuple[int, int] | None = None
    ) -> None: ...
    def clear_archived_references(self, name: str) -> None: ...
    def prune_cases(self, name: str, keep: int) -> int: ...
    def usage_note(self, name: str, version: int | None) -> Mapping[str, Any] | None: ...
    def cases(self, name: str, *, include_stale: bool) -> list[Mapping[str, Any]]: ...
    def experience_rows(
        self, ids: Sequence[str]
    ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]: ...
    def experience_ids(
        self, *, pending: bool = False, limit: int | None = None, task_id: str | None = None
    ) -> list[str]: ...
    def experience_state(self) -> tuple[int, int]: ...
    def clear_experience_pending(self, ids: Iterable[str]) -> None: ...


class RecordBackend(Protocol):
    """Where a library's records live, and how its writers are serialised."""

    #: Where the records are, for messages (a path, or a URL without its password).
    location: str
    read_only: bool

    def write(self) -> AbstractContextManager[RecordTxn]: ...
    def read(self) -> AbstractContextManager[RecordTxn]: ...
    def snapshot(self) -> AbstractContextManager[RecordTxn]: ...
    def writer_guard(self) -> AbstractContextManager[None]: ...
    def index_guard(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...
