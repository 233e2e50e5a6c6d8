"""Records in PostgreSQL (``records_url``): one library shared by processes on any machine.

The library lives in schema ``insitu_tools`` of the database the URL names (one
library per database), created on first use under an advisory lock so that
processes starting together do not race. The tables are those of ``tools.db``
with PostgreSQL's types (``bytea``, identity columns; times stay ISO-8601 text
and flags integers so that both backends run the one SQL of :mod:`.sql`), and
the rules the core enforces have a backstop in the database:

* versions never change: ``PRIMARY KEY (name, version)``, ``CHECK (version >= 1)``
  and a trigger that refuses ``UPDATE`` and ``DELETE`` on ``versions``;
* a tool's current version exists: a deferred foreign key to ``versions``;
* a commit id applies once: ``commits.commit_id`` is the primary key.

Serialising writers. Every write transaction starts with
``pg_advisory_xact_lock(<records key>)``: one writer at a time across all
machines, released by ``COMMIT`` or ``ROLLBACK``, and by the server when a
client dies (no stale lock to clear). Index updates run under a session-level
advisory lock of their own (:meth:`PostgresRecords.index_guard`), since the
record lock is released before the index is written; the core re-reads the
records inside it and clears only marks it has seen (see
:mod:`insitu.tool_store.indexing`).

Reading. Each read is one ``REPEATABLE READ READ ONLY`` transaction, so it sees
one state of the library; nested reads and snapshots share it.

Connections. The store's own lock serialises its operations, so one connection
for reads and one for writes (and the index lock) suffice; a connection found
broken between transactions is replaced.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from typing import Any

from insitu.checkpoints import redact
from insitu.tool_store.errors import StoreError
from insitu.tool_store.health import one_line
from insitu.tool_store.records.base import check_schema_version, new_library_meta
from insitu.tool_store.records.sql import SqlTxn

#: The schema that holds the library in its database.
SCHEMA = "insitu_tools"

#: The library's tables; executed in one transaction under the setup lock.
DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
SET LOCAL search_path TO {SCHEMA};
CREATE TABLE IF NOT EXISTS meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    hash text NOT NULL,
    spec text NOT NULL,
    created_at text NOT NULL,
    origin text NOT NULL,
    created_by_task text,
    parent_version integer,
    merged_from text NOT NULL DEFAULT '[]',
    note text,
    commit_id text,
    PRIMARY KEY (name, version)
);
CREATE OR REPLACE FUNCTION versions_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tool versions are immutable (% of %@%)', TG_OP, OLD.name, OLD.version;
END $$;
CREATE OR REPLACE TRIGGER versions_are_immutable BEFORE UPDATE OR DELETE ON versions
    FOR EACH ROW EXECUTE FUNCTION versions_are_immutable();
CREATE TABLE IF NOT EXISTS tools (
    name text PRIMARY KEY,
    current_version integer NOT NULL,
    status text NOT NULL CHECK (status IN ('active', 'archived')),
    locked integer NOT NULL DEFAULT 0,
    status_reason text,
    calls bigint NOT NULL DEFAULT 0,
    successes bigint NOT NULL DEFAULT 0,
    failures bigint NOT NULL DEFAULT 0,
    last_error text,
    last_used text,
    creation_cost_tokens bigint NOT NULL DEFAULT 0,
    index_pending integer NOT NULL DEFAULT 0,
    changed_gen bigint NOT NULL DEFAULT 0,
    FOREIGN KEY (name, current_version) REFERENCES versions (name, version)
        DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS tools_pending ON tools (index_pending) WHERE index_pending = 1;
CREATE INDEX IF NOT EXISTS tools_changed ON tools (changed_gen);
CREATE TABLE IF NOT EXISTS vectors (
    hash text NOT NULL,
    model text NOT NULL,
    vector bytea NOT NULL,
    PRIMARY KEY (hash, model)
);
CREATE TABLE IF NOT EXISTS commits (
    commit_id text PRIMARY KEY,
    applied_at text NOT NULL,
    digest text NOT NULL,
    result text NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at text NOT NULL,
    name text NOT NULL,
    action text NOT NULL,
    detail text
);
CREATE TABLE IF NOT EXISTS version_costs (
    name text NOT NULL,
    version integer NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    model text,
    role text,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS experiences (
    rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id text PRIMARY KEY,
    task_id text,
    summary text NOT NULL,
    status text NOT NULL,
    guidance text NOT NULL DEFAULT '',
    lesson text NOT NULL DEFAULT '',
    outcome text NOT NULL DEFAULT '',
    tokens bigint NOT NULL DEFAULT 0,
    created_at text NOT NULL,
    generation bigint NOT NULL,
    commit_id text,
    index_pending integer NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS experiences_pending ON experiences (index_pending)
    WHERE index_pending = 1;
CREATE TABLE IF NOT EXISTS experience_tools (
    experience_id text NOT NULL REFERENCES experiences (id),
    position integer NOT NULL,
    name text NOT NULL,
    version integer,
    called integer NOT NULL DEFAULT 0,
    renamed_from text,
    stale text,
    PRIMARY KEY (experience_id, position)
);
CREATE INDEX IF NOT EXISTS experience_tools_name ON experience_tools (name);
CREATE TABLE IF NOT EXISTS usage_notes (
    name text NOT NULL,
    version integer NOT NULL,
    notes text NOT NULL,
    observed text,
    task_id text,
    created_at text NOT NULL,
    commit_id text,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS harvested_cases (
    rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name text NOT NULL,
    case_id text NOT NULL,
    case_json text NOT NULL,
    source_ref text NOT NULL,
    source_version integer,
    task_id text,
    created_at text NOT NULL,
    renamed_from text,
    stale text,
    PRIMARY KEY (name, case_id)
);
"""


def _lock_key(purpose: str) -> int:
    """A signed 64-bit advisory lock key (advisory locks are per database already)."""
    digest = hashlib.sha256(f"insitu-tools:{SCHEMA}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: Serialises record write transactions (``pg_advisory_xact_lock``).
RECORDS_KEY = _lock_key("records")
#: Serialises index updates (``pg_advisory_lock``, held by a session).
INDEX_KEY = _lock_key("index")
#: Serialises creating the schema.
SETUP_KEY = _lock_key("setup")


@functools.cache
def _driver_style(text: str) -> str:
    """A statement of :mod:`.sql` with psycopg's placeholders.

    No statement there has a ``?`` in a literal; a ``%`` in one is doubled.
    """
    return text.replace("%", "%%").replace("?", "%s")


class PostgresTxn(SqlTxn):
    """The library's SQL on a psycopg cursor (``%s`` placeholders)."""

    def _sql(self, text: str) -> str:
        return _driver_style(text)

    def has_table(self, name: str) -> bool:
        row = self._one(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            (SCHEMA, name),
        )
        return row is not None


class PostgresRecords:
    """A library's records in a PostgreSQL database; open with :meth:`open`."""

    def __init__(self, url: str, *, read_only: bool, lock_timeout: float) -> None:
        self.url = url
        self.read_only = read_only
        self.location = redact(url)
        self._lock_timeout_ms = int(lock_timeout * 1000)
        self._reads: Any = None
        self._writes: Any = None
        self._read_txn: PostgresTxn | None = None
        self._index_depth = 0

    @classmethod
    def open(cls, url: str, *, read_only: bool, lock_timeout: float = 60.0) -> PostgresRecords:
        """Connect; a writer creates the library's schema if it is not there yet.

        Args:
            url: ``postgresql://user:password@host:port/database``.
            read_only: Never write (the connections refuse writes too).
            lock_timeout: Seconds a write waits for another writer's lock.

        Raises:
            StoreError: The database cannot be reached, holds no library (a
                reader), or needs the ``scale`` extra (psycopg).
            StoreFormatError: The library is of a newer format.
        """
        self = cls(url, read_only=read_only, lock_timeout=lock_timeout)
        try:
            self._reads = self._connect()
            if not read_only:
                self._writes = self._connect()
                self._create_schema()
            try:
                with self.read() as records:
                    version = records.meta("schema_version")
            except Exception as exc:
                if type(exc).__name__ != "UndefinedTable":
                    raise
                raise StoreError(
                    f"no tool library in {self.location}: nothing has been stored there yet"
                ) from None
            check_schema_version(version, f"the library in {self.location}")
        except BaseException:
            self.close()
            raise
        return self

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "records in PostgreSQL need psycopg: pip install 'insitu[scale]'"
            ) from None
        try:
            connection = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot reach the tool records at {self.location}: {one_line(str(exc), 200)}"
            ) from None
        connection.execute(f"SET search_path TO {SCHEMA}")
        connection.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
        if self.read_only:
            connection.execute("SET default_transaction_read_only = on")
        return connection

    def _live(self, connection: Any) -> Any:
        """``connection``, or a new one if it broke (between transactions only)."""
        if connection is None:
            raise StoreError(f"the records at {self.location} are closed")
        if connection.closed or connection.broken:
            replacement = self._connect()
            if connection is self._reads:
                self._reads = replacement
            else:
                self._writes = replacement
            return replacement
        return connection

    def _create_schema(self) -> None:
        with self._writes.cursor() as cursor:
            cursor.execute("BEGIN")
            try:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_KEY,))
                cursor.execute(DDL)
                PostgresTxn(cursor).init_meta(new_library_meta())
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    # ------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def write(self) -> Iterator[PostgresTxn]:
        """One write transaction, holding the library's record lock until it ends."""
        connection = self._live(self._writes)
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")
            try:
                try:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (RECORDS_KEY,))
                except Exception as exc:
                    if type(exc).__name__ != "LockNotAvailable":
                        raise
                    raise StoreError(
                        f"another writer has held the tool records at {self.location} for "
                        f"{self._lock_timeout_ms / 1000:.0f} s; try again"
                    ) from None
                yield PostgresTxn(cursor)
            except BaseException:
                if not connection.broken:
                    cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[PostgresTxn]:
        """One read-only snapshot transaction (nested reads share the open one)."""
        if self._read_txn is not None:
            yield self._read_txn
            return
        connection = self._live(self._reads)
        with connection.cursor() as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._read_txn = PostgresTxn(cursor)
            try:
                yield self._read_txn
            finally:
                self._read_txn = None
                if not connection.broken:
                    cursor.execute("COMMIT")

    def snapshot(self) -> contextlib.AbstractContextManager[PostgresTxn]:
        """A read already is one snapshot; this holds it for the block."""
        return self.read()

    @contextlib.contextmanager
    def writer_guard(self) -> Iterator[None]:
        """Nothing to hold: each write transaction takes the record lock itself."""
        yield

    @contextlib.contextmanager
    def index_guard(self) -> Iterator[None]:
        """Hold the library's index lock (re-entrant) around an index update."""
        if self.read_only or self._index_depth:
            self._index_depth += 1
            try:
                yield
            finally:
                self._index_depth -= 1
            return
        connection = self._live(self._writes)
        connection.execute("SELECT pg_advisory_lock(%s)", (INDEX_KEY,))
        self._index_depth = 1
        try:
            yield
        finally:
            self._index_depth = 0
            if not connection.broken:
                connection.execute("SELECT pg_advisory_unlock(%s)", (INDEX_KEY,))

    def close(self) -> None:
        """Close the connections (idempotent); the server releases any lock they held."""
        for connection in (self._reads, self._writes):
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
        self._reads = self._writes = None
