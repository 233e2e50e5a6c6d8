"""The tool library's core: :class:`ToolStore`, its rules, its commits and its statistics.

A library is versioned tool records (the source of truth) plus a search index
derived from them. The records live behind a
:class:`~insitu.tool_store.records.base.RecordBackend`:

* **SQLite** (the default): ``tools.db`` in the store directory
  (:mod:`insitu.tool_store.records.sqlite`, which also owns the writer lock);
* **PostgreSQL** (``records_url="postgresql://..."``): one database shared by
  every process and machine using the library
  (:mod:`insitu.tool_store.records.postgres`); commits are serialised by a
  transaction-scoped advisory lock, and the index must be a Chroma server.

Layout of a store directory (default ``./.insitu``, or ``$INSITU_STORE``)::

    tools.db          SQLite (WAL) records, unless records_url is set: every
                      version of every tool, per-tool state and statistics,
                      applied commit ids, an event log, a cache of embedding
                      vectors, build costs, and what the team learned
                      (experiences, usage notes, harvested cases: learning.py).
    index/            Chroma (local mode): the current version of each active
                      tool, and in a collection of their own the experiences,
                      derived from the records and rebuilt from them at will.
    store.lock        The SQLite writer lock (``store.lock.owner`` says who holds it).
    workspaces/, toolenv/   Per machine, whatever holds the records.

The class is assembled from one module per responsibility:

* here: opening and closing, the write API and the commit algorithm
  (``_apply``: idempotent by commit id, atomic in one record transaction,
  the learning records that follow a commit);
* :mod:`~insitu.tool_store.applying`: each kind of change, and imports;
* :mod:`~insitu.tool_store.statistics`: call statistics and rejections;
* :mod:`~insitu.tool_store.reading`: reads, snapshots, search;
* :mod:`~insitu.tool_store.indexing`: keeping the index in step with the records;
* :mod:`~insitu.tool_store.experience_index`: the experience index and learning reads;
* :mod:`~insitu.tool_store.store_models`: value types and spec validation.

Consistency. A write runs one record transaction that also marks the touched
tools *index-pending*; then the index is updated; then the marks are cleared
and the collection is stamped with the records' generation. A crash between
the two leaves marks behind, which the next write, search or open repairs.

Concurrency. *Local mode* (the default): one writer process per store, holding
``store.lock`` while open; ``read_only=True`` takes no lock and never writes:
it reads the records and searches an in-memory index built from them and the
vector cache, because (measured with chromadb 1.5.9) opening the Chroma path,
even only to query it, modifies its ``chroma.sqlite3``, and a reader process's
dense queries do not see vectors the writer added after the reader opened.
*Server mode* (``chroma_url``): the index lives on a Chroma server and any
number of processes write the library, each write serialised by the records'
backend (SQLite: ``store.lock`` around record transaction and index update,
the store on one host or a shared filesystem with working POSIX locks, then
``journal_mode="delete"``; PostgreSQL: ``pg_advisory_xact_lock``). Other
processes' writes are noticed through the records' generation counter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from insitu.tool_store.applying import Applying
from insitu.tool_store.changes import ChangeSet, CommitResult, ToolAdd, ToolArchive, ToolUpdate
from insitu.tool_store.contract import ToolOrigin, ToolRecord, ToolSpec, now_utc
from insitu.tool_store.errors import (
    DuplicateToolError,
    ReadOnlyStoreError,
    StoreClosedError,
    StoreError,
)
from insitu.tool_store.experience_index import Experiences
from insitu.tool_store.health import DB_NAME, INDEX_DIR, LOCK_NAME
from insitu.tool_store.indexing import IndexSync
from insitu.tool_store.learning import (
    DEFAULT_CASES_PER_TOOL,
    follow_tools,
    insert_learning,
    prune_cases,
)
from insitu.tool_store.reading import Reading
from insitu.tool_store.records import open_records
from insitu.tool_store.records.base import SCHEMA_VERSION
from insitu.tool_store.statistics import MAX_ERROR_CHARS, Statistics
from insitu.tool_store.store_models import (
    DEFAULT_STORE,
    ENV_STORE,
    IndexReport,
    ListStatus,
    PendingWork,
    StoreEvent,
    ToolHit,
    ToolState,
    resolve_store_path,
    validate_spec,
)

if TYPE_CHECKING:
    from insitu.tool_store.index import ToolIndex
    from insitu.tool_store.records.base import RecordBackend, RecordTxn

__all__ = [
    "DB_NAME",
    "DEFAULT_STORE",
    "ENV_STORE",
    "INDEX_DIR",
    "LOCK_NAME",
    "MAX_ERROR_CHARS",
    "SCHEMA_VERSION",
    "IndexReport",
    "ListStatus",
    "StoreEvent",
    "ToolHit",
    "ToolState",
    "ToolStore",
    "resolve_store_path",
    "validate_spec",
]

log = logging.getLogger("insitu.tool_store")


class ToolStore(Applying, Statistics, Reading, IndexSync, Experiences):
    """A persistent, versioned tool library with hybrid retrieval.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Versions are immutable and history is append-only: updates and rollbacks
    add versions, archiving hides a tool from retrieval but keeps it.
    All methods are thread-safe (one lock per store).
    """

    def __init__(self) -> None:
        raise TypeError("use ToolStore.open(path, ...) to open a store")

    # ------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        embedding: str | None = None,
        chroma_url: str | None = None,
        records_url: str | None = None,
        read_only: bool = False,
        lock_timeout: float = 0.5,
        write_lock_timeout: float = 60.0,
        journal_mode: Literal["wal", "delete"] = "wal",
        verify_index: bool = True,
        recreate_records: bool = False,
        rebuild_damaged_index: bool = False,
    ) -> ToolStore:
        """Open (creating if needed) the tool library in a directory.

        Args:
            path: Store directory (default ``$INSITU_STORE`` or ``./.insitu``).
                With ``records_url`` it holds only per-machine files (workspaces,
                the tool environment).
            embedding: ``"minilm"`` or ``"hashing"``; ``None`` keeps the one the
                store was built with (else ``$INSITU_EMBEDDING``, else minilm).
                A different one than the store's rebuilds the index.
            chroma_url: Server mode: the index on this Chroma server, shared by
                every process that opens the store with the same URL.
            records_url: ``postgresql://user:password@host:port/database``: the
                records in that PostgreSQL database instead of ``tools.db``
                (needs ``chroma_url``: the index must be shared too).
            read_only: Open without the writer lock; never writes (see module doc).
            lock_timeout: Seconds to wait for the writer lock in local mode.
            write_lock_timeout: Seconds a write waits for the lock in server mode.
            journal_mode: SQLite journal: ``"wal"`` (one host) or ``"delete"``
                (a store on a network filesystem, server mode).
            verify_index: Check the index against the records and repair it.
            recreate_records: Create ``tools.db`` even where the rest of a library
                (index, checkpoints, workspaces) says it was lost (importing an
                export there); otherwise that is refused.
            rebuild_damaged_index: Local mode: a Chroma directory that cannot be
                opened is moved aside (``index.damaged-TIME``, see
                :attr:`index_set_aside`) and an empty one created, for :meth:`reindex`.

        Returns:
            The open store.

        Raises:
            StoreLockedError: Another process holds the writer lock (local mode).
            StoreError: The directory holds no library (read-only) or an
                unreadable one; the states of :mod:`insitu.tool_store.health`
                (a read-only directory for a writer, a file, lost or damaged
                records), each raised before anything is created; PostgreSQL
                records unreachable, or without a Chroma server.
            IndexUnavailableError: The Chroma index cannot be opened or reached
                (locally: :class:`~insitu.tool_store.health.IndexDamagedError`).
        """
        self = object.__new__(cls)
        self._set_defaults(resolve_store_path(path), read_only, chroma_url)
        try:
            self._records = open_records(
                self.path,
                records_url=records_url,
                chroma_url=chroma_url,
                read_only=read_only,
                lock_timeout=lock_timeout,
                write_lock_timeout=write_lock_timeout,
                journal_mode=journal_mode,
                recreate_records=recreate_records,
            )
            self._init_library(embedding)
            if not read_only:
                self._open_index(set_aside_damaged=rebuild_damaged_index)
                if verify_index:
                    with self._writing("verify the index", catch_up=False):
                        report = self._verify_index(full=False)
                        self._verify_experiences()
                    if report.repaired:
                        log.warning(
                            "index of %s repaired (%s): re-indexed %d, removed %d",
                            self.path,
                            report.reason,
                            len(report.upserted),
                            len(report.deleted),
                        )
        except BaseException:
            self.close()
            raise
        return self

    def _set_defaults(self, path: Path, read_only: bool, chroma_url: str | None) -> None:
        self.path = path
        self.read_only = read_only
        self.chroma_url = chroma_url
        self.closed = False
        self.embedding_name = ""
        self.library_id = ""
        self._lock = threading.RLock()
        self._records: RecordBackend | None = None  # type: ignore[assignment]
        self._index: ToolIndex | None = None
        self._experience_index: ToolIndex | None = None
        self._memory_indexes: dict[bool, tuple[ToolIndex, int]] = {}
        self._memory_experiences: tuple[ToolIndex, tuple[int, int]] | None = None
        self._seen_generation = 0
        self._index_dirty = False
        self._vectors_warm = False
        self._has_learning: bool | None = None
        #: Where a damaged local index was moved by this store (``rebuild_damaged_index``).
        self.index_set_aside: Path | None = None

    def _init_library(self, embedding: str | None) -> None:
        """Read the library's identity and embedding; record a newly chosen embedding."""
        from insitu.tool_store.embeddings import resolve_embedding_name

        with self._records.read() as records:
            stored = records.meta("embedding")
            library_id = records.meta("library_id")
            generation = records.generation()
        self.embedding_name = resolve_embedding_name(embedding or stored)
        if not self.read_only and stored != self.embedding_name:
            with self._records.writer_guard(), self._records.write() as records:
                records.set_meta("embedding", self.embedding_name)
        self.library_id = library_id or "unknown"
        self._seen_generation = generation

    def close(self) -> None:
        """Close the store (idempotent): release the index, the records and the lock."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            # It shares the tool index's client, which closing the tool index closes.
            self._experience_index = None
            self._memory_experiences = None
            if self._index is not None:
                with contextlib.suppress(Exception):
                    self._index.close()
                self._index = None
            self._memory_indexes.clear()
            if self._records is not None:
                with contextlib.suppress(Exception):
                    self._records.close()

    def __enter__(self) -> ToolStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else ("server" if self.chroma_url else "local")
        return f"ToolStore({str(self.path)!r}, {mode}, embedding={self.embedding_name!r})"

    # ------------------------------------------------------------ internals

    @property
    def db(self) -> sqlite3.Connection:
        """The SQLite connection of ``tools.db`` (raises if closed, or for PostgreSQL records)."""
        if self.closed or self._records is None:
            raise StoreClosedError()
        connection = getattr(self._records, "connection", None)
        if not isinstance(connection, sqlite3.Connection):
            raise StoreError(f"the records of this library are not SQLite: {self.records_location}")
        return connection

    @property
    def records_location(self) -> str:
        """Where the records are: ``tools.db``'s path, or the database URL without password."""
        return self._records.location if self._records is not None else str(self.path / DB_NAME)

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosedError()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[RecordTxn]:
        """One consistent read of the records (nested reads share it)."""
        self._check_open()
        with self._lock, self._records.read() as records:
            yield records

    def _generation(self) -> int:
        with self._reading() as records:
            return records.generation()

    @contextlib.contextmanager
    def _writing(self, action: str, *, catch_up: bool = True) -> Iterator[None]:
        self._check_open()
        if self.read_only:
            raise ReadOnlyStoreError(action)
        with self._lock, self._records.writer_guard():
            if catch_up and self.chroma_url:
                self._catch_up()
                # A writer in another process may have died between its record
                # transaction and its index update; finish it (under the index guard).
                self._retry_pending(check=True)
            yield

    @staticmethod
    def _event(records: RecordTxn, name: str, action: str, detail: str | None) -> None:
        records.add_event(now_utc().isoformat(), name, action, detail)

    # -------------------------------------------------------------- writing

    def add(
        self,
        spec: ToolSpec,
        *,
        origin: ToolOrigin = "generated",
        created_by_task: str | None = None,
        note: str | None = None,
        creation_cost_tokens: int = 0,
    ) -> ToolRecord:
        """Add a new tool as version 1.

        Raises:
            DuplicateToolError: A tool of this name exists (active or archived).
            InvalidSpecError: The spec fails validation.
        """
        change = ToolAdd(
            spec=validate_spec(spec),
            origin=origin,
            created_by_task=created_by_task,
            note=note,
            creation_cost_tokens=creation_cost_tokens,
        )
        name = change.spec.name
        with self._writing(f"add {name!r}"):
            with self._reading() as records:
                existing = records.tool(name)
            if existing is not None:  # even with identical content: add() means a new tool
                raise DuplicateToolError(name, status=existing.status)
            self._apply([change], commit_id=None, action=f"add {name!r}")
            return self.get(name)

    def update(
        self,
        name: str,
        spec: ToolSpec,
        *,
        origin: ToolOrigin = "repaired",
        note: str | None = None,
        merged_from: Sequence[str] = (),
        created_by_task: str | None = None,
        expected_version: int | None = None,
        creation_cost_tokens: int = 0,
        force: bool = False,
    ) -> ToolRecord:
        """Add a new, immutable version of a tool and make it current.

        Content identical to the current version is a no-op returning the
        current record.

        Args:
            name: The tool; ``spec.name`` must equal it.
            spec: The new content.
            origin: Why the version exists (``repaired``, ``merged``, ``manual``...).
            note: Free text kept with the version.
            merged_from: ``name@version`` of tools this version absorbed.
            created_by_task: Task id that produced it.
            expected_version: Fail unless this is still the current version.
            creation_cost_tokens: Added to the tool's creation cost.
            force: Update even if the tool is locked.

        Raises:
            ToolNotFoundError, LockedToolError, ToolArchivedError,
            VersionConflictError, InvalidSpecError.
        """
        change = ToolUpdate(
            name=name,
            spec=validate_spec(spec),
            origin=origin,
            note=note,
            merged_from=list(merged_from),
            created_by_task=created_by_task,
            expected_version=expected_version,
            creation_cost_tokens=creation_cost_tokens,
            force=force,
        )
        self._apply([change], commit_id=None, action=f"update {name!r}")
        return self.get(name)

    def rollback(self, name: str, version: int, *, force: bool = False) -> ToolRecord:
        """Make an earlier version's content current again, as a NEW version.

        History stays append-only: version ``n+1`` gets the content of
        ``version`` (origin ``manual``, note ``rollback to version k``). If that
        content is already current, nothing changes.

        Raises:
            ToolNotFoundError, VersionNotFoundError, LockedToolError, ToolArchivedError.
        """
        target = self.get(name, version)
        change = ToolUpdate(
            name=name,
            spec=target.spec(),
            origin="manual",
            note=f"rollback to version {version}",
            force=force,
        )
        self._apply([change], commit_id=None, action=f"roll back {name!r}", rollback_to=version)
        return self.get(name)

    def archive(self, name: str, reason: str, *, force: bool = False) -> ToolRecord:
        """Archive a tool: kept with its history, removed from retrieval.

        Archiving an archived tool is a no-op.

        Raises:
            ToolNotFoundError: No such tool.
            LockedToolError: The tool is locked and ``force`` is False.
        """
        self._apply(
            [ToolArchive(name=name, reason=reason, force=force)],
            commit_id=None,
            action=f"archive {name!r}",
        )
        return self.get(name)

    def restore(self, name: str, reason: str | None = None) -> ToolRecord:
        """Make an archived tool active (and retrievable) again; no-op if active.

        Args:
            name: The tool.
            reason: Why, kept in the event log (e.g. a search revived it).

        Raises:
            ToolNotFoundError: No such tool.
        """
        with self._writing(f"restore {name!r}"):
            with self._records.write() as records:
                tool = self._tool_row(records, name)
                if tool.status == "active":
                    return self._current(records, name)
                generation = records.bump_generation()
                records.set_status(name, "active", None, generation=generation)
                self._event(records, name, "restore", reason)
                records.clear_archived_references(name)
            self._after_write([name])
            return self.get(name)

    def lock(self, name: str) -> ToolRecord:
        """Lock a tool: automated repair, merging and archiving must leave it alone."""
        return self._set_locked(name, True)

    def unlock(self, name: str) -> ToolRecord:
        """Unlock a tool."""
        return self._set_locked(name, False)

    def _set_locked(self, name: str, locked: bool) -> ToolRecord:
        with self._writing(f"{'lock' if locked else 'unlock'} {name!r}"):
            with self._records.write() as records:
                tool = self._tool_row(records, name)
                if tool.locked != locked:
                    records.set_locked(name, locked)
                    self._event(records, name, "lock" if locked else "unlock", None)
            return self.get(name)

    def commit(
        self,
        changes: ChangeSet,
        *,
        commit_id: str | None = None,
        cases_per_tool: int = DEFAULT_CASES_PER_TOOL,
    ) -> CommitResult:
        """Apply a change set atomically (one record transaction), idempotently.

        Either every change applies or none does: a failing change (unknown
        tool, locked tool, version conflict, duplicate name, invalid spec)
        raises its error and leaves the library exactly as it was, as does a
        crash at any point of the transaction. The set's learning records
        (experiences, usage notes, harvested cases) are written in the same
        transaction, after the tool changes, and follow them (see
        ``learning.py``).

        Args:
            changes: The changes, applied in order.
            commit_id: Idempotency key (overrides ``changes.commit_id``).
                Re-applying an applied id is a no-op returning the earlier
                result with ``replayed=True``.
            cases_per_tool: Harvested cases kept per tool that this commit
                gives cases to (the newest ones).

        Returns:
            What was added, updated, archived or left unchanged, and learned.
        """
        cid = commit_id or changes.commit_id
        for change in changes.changes:  # up front, so that nothing is written for a bad spec
            if not isinstance(change, ToolArchive):
                validate_spec(change.spec)
        return self._apply(
            list(changes.changes),
            commit_id=cid,
            action="commit",
            digest_of=changes,
            learning=changes,
            cases_per_tool=cases_per_tool,
        )

    # ------------------------------------------------------- apply (shared)

    def _apply(
        self,
        changes: Sequence[ToolAdd | ToolUpdate | ToolArchive],
        *,
        commit_id: str | None,
        action: str,
        digest_of: ChangeSet | None = None,
        learning: ChangeSet | None = None,
        cases_per_tool: int = DEFAULT_CASES_PER_TOOL,
        rollback_to: int | None = None,
    ) -> CommitResult:
        digest = (digest_of or ChangeSet(changes=list(changes))).digest()
        with self._writing(action):
            if commit_id is not None:
                with self._reading() as records:
                    earlier = self._earlier_commit(records, commit_id, digest)
                if earlier is not None:
                    return earlier
            # Embed before the transaction: it is the slow part and needs no lock on the records.
            vectors = self._vectors_for([c.spec for c in changes if not isinstance(c, ToolArchive)])
            experiences = list(learning.experiences) if learning is not None else []
            vectors |= self._experience_vectors(experiences)
            result = CommitResult(commit_id=commit_id)
            pending = PendingWork()
            with self._records.write() as records:
                if commit_id is not None:
                    earlier = self._earlier_commit(records, commit_id, digest)
                    if earlier is not None:  # applied by another process meanwhile
                        return earlier
                # The generation counts changes of tools; learning alone leaves it as it is.
                generation = records.bump_generation() if changes else records.generation()
                now = now_utc()
                for change in changes:
                    if isinstance(change, ToolAdd):
                        self._apply_add(
                            records, change, generation, now, commit_id, result, pending
                        )
                    elif isinstance(change, ToolUpdate):
                        self._apply_update(
                            records, change, generation, now, commit_id, result, pending
                        )
                    else:
                        self._apply_archive(records, change, generation, result, pending)
                if rollback_to is not None and result.updated:
                    name, _, number = result.updated[0].rpartition("@")
                    before = self._version_row(records, name, int(number)).parent_version
                    pending.follow.rollbacks[name] = (rollback_to, before, int(number))
                self._save_vectors(records, vectors)
                self._apply_learning(
                    records, learning, pending, generation, commit_id, now, result, cases_per_tool
                )
                for name, kind, detail in pending.events:
                    self._event(records, name, kind, detail)
                result.applied_at = now
                if commit_id is not None:
                    self._remember_commit(records, commit_id, digest, result)
            self._after_write(pending.names)
            if pending.experiences:
                self._sync_experiences()
            return result

    def _apply_learning(
        self,
        records: RecordTxn,
        learning: ChangeSet | None,
        pending: PendingWork,
        generation: int,
        commit_id: str | None,
        now: datetime,
        result: CommitResult,
        cases_per_tool: int,
    ) -> None:
        """Write a commit's learning records and make older ones follow its tool changes."""
        touched: set[str] = set()
        if learning is not None and learning.learned():
            learned = insert_learning(
                records,
                experiences=learning.experiences,
                notes=learning.usage_notes,
                cases=learning.cases,
                follow=pending.follow,
                generation=generation,
                commit_id=commit_id,
                now=now,
            )
            result.experiences, result.notes, result.cases = (
                learned.experiences,
                learned.notes,
                learned.cases,
            )
            pending.experiences = bool(learned.experiences)
            touched |= learned.touched_cases
        if pending.follow:
            touched |= follow_tools(records, pending.follow, now=now)
        if touched:
            prune_cases(records, touched, cases_per_tool)

    @staticmethod
    def _remember_commit(
        records: RecordTxn, commit_id: str, digest: str, result: CommitResult
    ) -> None:
        """Record an applied commit id (in the transaction that applies it)."""
        assert result.applied_at is not None
        records.remember_commit(
            commit_id, result.applied_at.isoformat(), digest, result.model_dump_json()
        )

    @staticmethod
    def _earlier_commit(records: RecordTxn, commit_id: str, digest: str) -> CommitResult | None:
        row = records.commit_record(commit_id)
        if row is None:
            return None
        if row[0] != digest:
            log.warning(
                "commit %r was already applied with different changes; keeping the earlier one",
                commit_id,
            )
        result = CommitResult.model_validate_json(row[1])
        result.replayed = True
        return result

    def _after_write(self, names: Iterable[str]) -> None:
        names = set(names)
        self._seen_generation = self._generation()
        if names:
            self._sync_index(names)
        self._retry_pending()
