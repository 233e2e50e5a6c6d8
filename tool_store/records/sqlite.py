"""Records in SQLite: ``tools.db`` in the store directory (the default backend).

Owns opening the file (read-only, damaged and missing states through
:mod:`insitu.tool_store.health`, refused before anything is created), its
schema, and how writers are serialised:

* *local mode* (the index in the store directory): one writer process per
  store, holding ``store.lock`` for as long as the store is open (two processes
  writing one Chroma path corrupt it silently). A second writer gets
  :class:`~insitu.tool_store.errors.StoreLockedError`.
* *server mode* (the index on a Chroma server): no lock while open; each write
  takes ``store.lock`` for its record transaction and index update
  (:meth:`SqliteRecords.writer_guard`), so writes from any number of processes
  are applied to records and index in order.

Every write transaction is ``BEGIN IMMEDIATE``; a read outside a snapshot runs
its statements in autocommit, as SQLite's WAL gives each a consistent view.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from insitu.tool_store import health
from insitu.tool_store.contract import now_utc
from insitu.tool_store.errors import StoreError, StoreFormatError, StoreLockedError
from insitu.tool_store.records.base import check_schema_version, new_library_meta
from insitu.tool_store.records.sql import SqlTxn

if TYPE_CHECKING:
    from filelock import BaseFileLock

DB_NAME = health.DB_NAME
LOCK_NAME = health.LOCK_NAME

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    hash TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_by_task TEXT,
    parent_version INTEGER,
    merged_from TEXT NOT NULL DEFAULT '[]',
    note TEXT,
    commit_id TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS tools (
    name TEXT PRIMARY KEY,
    current_version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    locked INTEGER NOT NULL DEFAULT 0,
    status_reason TEXT,
    calls INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_used TEXT,
    creation_cost_tokens INTEGER NOT NULL DEFAULT 0,
    index_pending INTEGER NOT NULL DEFAULT 0,
    changed_gen INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (name, current_version) REFERENCES versions (name, version)
);
CREATE INDEX IF NOT EXISTS tools_pending ON tools (index_pending) WHERE index_pending = 1;
CREATE INDEX IF NOT EXISTS tools_changed ON tools (changed_gen);
CREATE TABLE IF NOT EXISTS vectors (
    hash TEXT NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (hash, model)
);
CREATE TABLE IF NOT EXISTS commits (
    commit_id TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL,
    digest TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT
);
"""

LEARNING_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiences (
    id TEXT PRIMARY KEY,
    task_id TEXT,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    guidance TEXT NOT NULL DEFAULT '',
    lesson TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT '',
    tokens INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    generation INTEGER NOT NULL,
    commit_id TEXT,
    index_pending INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS experiences_pending ON experiences (index_pending)
    WHERE index_pending = 1;
CREATE TABLE IF NOT EXISTS experience_tools (
    experience_id TEXT NOT NULL REFERENCES experiences (id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    version INTEGER,
    called INTEGER NOT NULL DEFAULT 0,
    renamed_from TEXT,
    stale TEXT,
    PRIMARY KEY (experience_id, position)
);
CREATE INDEX IF NOT EXISTS experience_tools_name ON experience_tools (name);
CREATE TABLE IF NOT EXISTS usage_notes (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    notes TEXT NOT NULL,
    observed TEXT,
    task_id TEXT,
    created_at TEXT NOT NULL,
    commit_id TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS harvested_cases (
    name TEXT NOT NULL,
    case_id TEXT NOT NULL,
    case_json TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    source_version INTEGER,
    task_id TEXT,
    created_at TEXT NOT NULL,
    renamed_from TEXT,
    stale TEXT,
    PRIMARY KEY (name, case_id)
);
"""

#: Created by the first commit that records a build cost, so that libraries written
#: before the table existed open unchanged, read-only too (see ``costs.py``).
VERSION_COSTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS version_costs (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    model TEXT,
    role TEXT,
    PRIMARY KEY (name, version)
)
"""


class SqliteTxn(SqlTxn):
    """The library's SQL on an SQLite cursor."""

    def has_table(self, name: str) -> bool:
        row = self._one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return row is not None

    def _ensure_version_costs(self) -> None:
        self.execute(VERSION_COSTS_SCHEMA)


class SqliteRecords:
    """A library's records in ``tools.db``; open with :meth:`open`.

    Attributes:
        connection: The SQLite connection (``ToolStore.db``).
        location: The path of ``tools.db``.
    """

    def __init__(self, path: Path, *, read_only: bool, server_mode: bool) -> None:
        self.path = path
        self.read_only = read_only
        self.server_mode = server_mode
        self.location = str(path / DB_NAME)
        self.connection: sqlite3.Connection | None = None
        self._session_lock: BaseFileLock | None = None
        self._write_lock_timeout = 60.0
        self._guard_depth = 0

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        read_only: bool,
        server_mode: bool,
        lock_timeout: float,
        write_lock_timeout: float,
        journal_mode: str,
        recreate_records: bool,
    ) -> SqliteRecords:
        """Open (a writer: creating) ``tools.db`` in ``path``; see ``ToolStore.open``.

        Raises:
            StoreLockedError, StoreError, StoreFormatError: As ``ToolStore.open``.
        """
        if journal_mode not in ("wal", "delete"):
            raise ValueError(f"journal_mode must be 'wal' or 'delete', not {journal_mode!r}")
        self = cls(path, read_only=read_only, server_mode=server_mode)
        self._write_lock_timeout = write_lock_timeout
        try:
            self._open(lock_timeout, journal_mode, recreate_records)
        except BaseException:
            self.close()
            raise
        return self

    def _open(self, lock_timeout: float, journal_mode: str, recreate_records: bool) -> None:
        # Unusable directories are refused before the lock file or tools.db is created.
        if self.read_only:
            health.check_location(self.path)
        else:
            health.check_writable(self.path, "write to the library")
        if not recreate_records:
            health.check_records_present(self.path)
        if not self.read_only:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.server_mode:
                self._acquire_session_lock(lock_timeout)
        db_path = self.path / DB_NAME
        if self.read_only:
            if not db_path.exists():
                raise StoreError(
                    f"no tool library at {self.path} (no {DB_NAME}); nothing has been stored yet"
                )
            try:
                self.connection = health.connect_read_only(db_path)
            except sqlite3.DatabaseError as exc:
                damaged = health.records_failure(db_path, exc)
                if damaged is None:
                    raise
                raise damaged from exc
        else:
            damage = health.sqlite_damage(db_path)
            if damage is not None:
                raise health.records_damaged(db_path, damage)
            self.connection = sqlite3.connect(
                str(db_path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
        self.connection.row_factory = sqlite3.Row
        try:
            self.connection.execute("PRAGMA busy_timeout = 30000")
            self.connection.execute("PRAGMA foreign_keys = ON")
            if not self.read_only:
                # NORMAL in WAL mode survives a process crash (only a power loss can
                # drop the latest commits, never corrupt them); FULL costs an fsync per write.
                self.connection.execute("PRAGMA synchronous = NORMAL")
                with self.writer_guard():
                    self.connection.execute(f"PRAGMA journal_mode = {journal_mode}")
                    self.connection.executescript(SCHEMA)
                    self.connection.executescript(LEARNING_SCHEMA)
                    SqliteTxn(self.connection.cursor()).init_meta(new_library_meta())
            with self.read() as records:
                version = records.meta("schema_version")
        except sqlite3.DatabaseError as exc:
            damaged = health.records_failure(db_path, exc)
            if damaged is not None:
                raise damaged from exc
            raise StoreFormatError(f"{db_path} is not a tool library: {exc}") from exc
        check_schema_version(version, str(db_path))

    # ------------------------------------------------------------------ locks

    def _acquire_session_lock(self, timeout: float) -> None:
        from filelock import FileLock, Timeout

        lock_path = self.path / LOCK_NAME
        lock = FileLock(str(lock_path), timeout=timeout, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise StoreLockedError(str(lock_path), self._lock_owner()) from None
        self._session_lock = lock
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": now_utc().isoformat(timespec="seconds"),
        }
        with contextlib.suppress(OSError):
            (self.path / (LOCK_NAME + ".owner")).write_text(json.dumps(owner))

    def _lock_owner(self) -> str | None:
        try:
            owner = json.loads((self.path / (LOCK_NAME + ".owner")).read_text())
            return f"pid {owner['pid']} on {owner['host']} since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @contextlib.contextmanager
    def writer_guard(self) -> Iterator[None]:
        """Hold ``store.lock`` around a write in server mode (local mode holds it already)."""
        if not self.server_mode or self.read_only or self._guard_depth:
            # Local mode holds the lock for the session; nested writes hold it already.
            yield
            return
        from filelock import FileLock, Timeout

        lock_path = self.path / LOCK_NAME
        lock = FileLock(str(lock_path), timeout=self._write_lock_timeout, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise StoreLockedError(str(lock_path), "another writer (server mode)") from None
        self._guard_depth += 1
        try:
            yield
        finally:
            self._guard_depth -= 1
            lock.release()

    @contextlib.contextmanager
    def index_guard(self) -> Iterator[None]:
        """Nothing to take: index updates already run under the writer's file lock."""
        yield

    # ------------------------------------------------------------ transactions

    def _connection(self) -> sqlite3.Connection:
        if self.connection is None:
            raise StoreError(f"the records at {self.location} are closed")
        return self.connection

    @contextlib.contextmanager
    def write(self) -> Iterator[SqliteTxn]:
        """One write transaction (``BEGIN IMMEDIATE``): committed, or rolled back on error."""
        cursor = self._connection().cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield SqliteTxn(cursor)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        else:
            cursor.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[SqliteTxn]:
        """Reads in autocommit, or inside the open snapshot."""
        yield SqliteTxn(self._connection().cursor())

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[SqliteTxn]:
        """One read transaction for several reads (nested snapshots share it)."""
        connection = self._connection()
        if connection.in_transaction:
            yield SqliteTxn(connection.cursor())
            return
        connection.execute("BEGIN")
        try:
            yield SqliteTxn(connection.cursor())
        finally:
            connection.execute("ROLLBACK")

    def close(self) -> None:
        """Close the connection and release the session lock (idempotent)."""
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.close()
            self.connection = None
        if self._session_lock is not None:
            with contextlib.suppress(Exception):
                self._session_lock.release()
            self._session_lock = None
