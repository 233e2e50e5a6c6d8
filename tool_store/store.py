"""The tool library: versioned tool records in SQLite, retrieval through a ToolIndex.

Layout of a store directory (default ``./.insitu``, or ``$INSITU_STORE``)::

    tools.db          SQLite (WAL): the source of truth. Every version of every
                      tool, per-tool state and statistics, applied commit ids,
                      an event log, a cache of embedding vectors, and what the
                      team learned (experiences, usage notes, harvested cases:
                      see ``learning.py``).
    index/            Chroma (local mode): the current version of each active
                      tool, and in a collection of their own the experiences,
                      derived from tools.db and rebuilt from it at will.
    store.lock        The writer lock (``store.lock.owner`` says who holds it).

Consistency. A write runs one SQLite transaction that also marks the touched
tools *index-pending*; then the index is updated; then the marks are cleared
and the collection is stamped with the records' generation. A crash between
the two leaves marks behind, an index directory deleted or restored from an old
copy leaves a stamp or count that does not match: :meth:`ToolStore.open`
detects either and re-indexes just what differs (comparing content hashes),
logging what it did.

Concurrency. *Local mode* (the default): one writer process per store, held
by an exclusive file lock for as long as the store is open (two processes
writing one Chroma path corrupt it silently). A second writer gets
:class:`~insitu.tool_store.errors.StoreLockedError`. ``read_only=True`` takes no
lock and never writes: it reads ``tools.db`` read-only and searches an
in-memory index built from the records and the vector cache, because
(measured with chromadb 1.5.9) opening the Chroma path, even only to query
it, modifies its ``chroma.sqlite3``, and a reader process's dense queries do
not see vectors the writer added after the reader opened (0 of 30 found,
although ``get`` saw them).

*Server mode* (``chroma_url="http://host:port"``): the index lives on a Chroma
server (``chroma run --path DIR --port P``), which serialises concurrent
writers. The records stay in ``tools.db`` in the store directory, which every
process sharing the library opens (same host, or a shared filesystem with
working POSIX locks: then pass ``journal_mode="delete"``, since WAL needs
shared memory). No process holds the lock while open; each write takes
``store.lock`` for the duration of its record transaction and index update,
so writes from any number of processes are serialised and each is applied to
records and index in order. Readers in other processes notice new writes via
the records' generation counter and refresh their in-memory lexical side from
the changed records before searching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from insitu import pyast
from insitu.tool_store import health
from insitu.tool_store.changes import (
    CallRecord,
    ChangeSet,
    CommitResult,
    ToolAdd,
    ToolArchive,
    ToolUpdate,
    calls_digest,
)
from insitu.tool_store.contract import (
    TOOL_NAME_PATTERN,
    ToolOrigin,
    ToolRecord,
    ToolSpec,
    ToolStats,
    now_utc,
)
from insitu.tool_store.costs import record_build_cost
from insitu.tool_store.errors import (
    DuplicateToolError,
    IndexUnavailableError,
    InvalidSpecError,
    LockedToolError,
    ReadOnlyStoreError,
    StoreClosedError,
    StoreError,
    StoreFormatError,
    StoreLockedError,
    ToolArchivedError,
    ToolNotFoundError,
    VersionConflictError,
    VersionNotFoundError,
)
from insitu.tool_store.learning import (
    DEFAULT_CASES_PER_TOOL,
    LEARNING_SCHEMA,
    Experience,
    HarvestedCase,
    ToolFollow,
    UsageNote,
    effective_note,
    follow_tools,
    insert_learning,
    prune_cases,
    read_cases,
    read_experiences,
    restore_references,
)
from insitu.tool_store.text import TOOL_TEXT_VERSION

if TYPE_CHECKING:
    from filelock import BaseFileLock

    from insitu.tool_store.index import SearchMode, ToolIndex

log = logging.getLogger("insitu.tool_store")

SCHEMA_VERSION = 1
DB_NAME = "tools.db"
INDEX_DIR = "index"
LOCK_NAME = "store.lock"
ENV_STORE = "INSITU_STORE"
DEFAULT_STORE = ".insitu"
MAX_ERROR_CHARS = 2000
ListStatus = Literal["active", "archived", "all"]

_SCHEMA = """
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


class ToolHit(BaseModel):
    """A search result: the tool's current record and its scores."""

    record: ToolRecord
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None
    rank: int = 1


class ToolState(BaseModel):
    """Per-tool mutable state (what is not part of any version)."""

    name: str
    current_version: int
    status: Literal["active", "archived"]
    locked: bool
    status_reason: str | None = None
    stats: ToolStats


class IndexReport(BaseModel):
    """What an index consistency check found and repaired."""

    checked: Literal["quick", "full"]
    reason: str = ""
    upserted: list[str] = []
    deleted: list[str] = []

    @property
    def repaired(self) -> bool:
        """Whether anything had to be fixed."""
        return bool(self.upserted or self.deleted)


class StoreEvent(BaseModel):
    """One entry of the store's event log (state changes, never statistics)."""

    seq: int
    at: datetime
    name: str
    action: str
    detail: str | None = None


@dataclass
class _Pending:
    """Work collected inside one transaction, finished after it commits."""

    names: set[str] = field(default_factory=set)
    events: list[tuple[str, str, str | None]] = field(default_factory=list)
    follow: ToolFollow = field(default_factory=ToolFollow)
    experiences: bool = False


def resolve_store_path(path: str | os.PathLike[str] | None) -> Path:
    """Return the store directory: ``path``, else ``$INSITU_STORE``, else ``./.insitu``."""
    return Path(path if path is not None else os.environ.get(ENV_STORE) or DEFAULT_STORE)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def validate_spec(spec: ToolSpec | dict[str, Any]) -> ToolSpec:
    """Check the invariants the library relies on, beyond the spec's own types.

    Args:
        spec: A ``ToolSpec`` or its dict form.

    Returns:
        The spec (parsed if a dict was given).

    Raises:
        InvalidSpecError: Listing every problem found.
    """
    if not isinstance(spec, ToolSpec):
        try:
            spec = ToolSpec.model_validate(spec)
        except ValidationError as exc:
            name = spec.get("name") if isinstance(spec, dict) else None
            problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
            raise InvalidSpecError(problems, name if isinstance(name, str) else None) from None
    problems: list[str] = []
    if not TOOL_NAME_PATTERN.match(spec.name):
        problems.append(
            f"name {spec.name!r} is not a verb_object snake_case name (e.g. 'parse_csv_rows')"
        )
    if not spec.description.strip():
        problems.append("description is empty")
    if not spec.source.strip():
        problems.append("source is empty")
    else:
        try:
            pyast.parse(spec.source)
        except SyntaxError as exc:
            problems.append(f"source does not parse: line {exc.lineno}: {exc.msg}")
    test_names = [t.name for t in spec.tests]
    if len(set(test_names)) != len(test_names):
        problems.append("test names are not unique")
    if problems:
        raise InvalidSpecError(problems, spec.name)
    return spec


class ToolStore:
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
            embedding: ``"minilm"`` or ``"hashing"``; ``None`` keeps the one the
                store was built with (else ``$INSITU_EMBEDDING``, else minilm).
                A different one than the store's rebuilds the index.
            chroma_url: Server mode: the index on this Chroma server, shared by
                every process that opens the store with the same URL.
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
                records), each raised before anything is created.
            IndexUnavailableError: The Chroma index cannot be opened or reached
                (locally: :class:`~insitu.tool_store.health.IndexDamagedError`).
        """
        self = object.__new__(cls)
        self._set_defaults(resolve_store_path(path), read_only, chroma_url)
        try:
            self._init(
                embedding=embedding,
                lock_timeout=lock_timeout,
                write_lock_timeout=write_lock_timeout,
                journal_mode=journal_mode,
                recreate_records=recreate_records,
            )
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
        self._file_lock: BaseFileLock | None = None
        self._write_lock_timeout = 60.0
        self._index: ToolIndex | None = None
        self._experience_index: ToolIndex | None = None
        self._memory_indexes: dict[bool, tuple[ToolIndex, int]] = {}
        self._memory_experiences: tuple[ToolIndex, tuple[int, int]] | None = None
        self._db: sqlite3.Connection | None = None
        self._seen_generation = 0
        self._index_dirty = False
        self._guard_depth = 0
        self._has_learning: bool | None = None
        #: Where a damaged local index was moved by this store (``rebuild_damaged_index``).
        self.index_set_aside: Path | None = None

    def _init(
        self,
        *,
        embedding: str | None,
        lock_timeout: float,
        write_lock_timeout: float,
        journal_mode: str,
        recreate_records: bool = False,
    ) -> None:
        from insitu.tool_store.embeddings import resolve_embedding_name

        if journal_mode not in ("wal", "delete"):
            raise ValueError(f"journal_mode must be 'wal' or 'delete', not {journal_mode!r}")
        self._write_lock_timeout = write_lock_timeout
        # Unusable directories are refused before the lock file or tools.db is created.
        if self.read_only:
            health.check_location(self.path)
        else:
            health.check_writable(self.path, "write to the library")
        if not recreate_records:
            health.check_records_present(self.path)
        if not self.read_only:
            self.path.mkdir(parents=True, exist_ok=True)
            if self.chroma_url is None:
                self._acquire_session_lock(lock_timeout)
        db_path = self.path / DB_NAME
        if self.read_only:
            if not db_path.exists():
                raise StoreError(
                    f"no tool library at {self.path} (no {DB_NAME}); nothing has been stored yet"
                )
            try:
                self._db = health.connect_read_only(db_path)
            except sqlite3.DatabaseError as exc:
                damaged = health.records_failure(db_path, exc)
                if damaged is None:
                    raise
                raise damaged from exc
        else:
            damage = health.sqlite_damage(db_path)
            if damage is not None:
                raise health.records_damaged(db_path, damage)
            self._db = sqlite3.connect(
                str(db_path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.execute("PRAGMA foreign_keys = ON")
            if not self.read_only:
                # NORMAL in WAL mode survives a process crash (only a power loss can
                # drop the latest commits, never corrupt them); FULL costs an fsync per write.
                self._db.execute("PRAGMA synchronous = NORMAL")
                with self._file_guard():
                    self._db.execute(f"PRAGMA journal_mode = {journal_mode}")
                    self._db.executescript(_SCHEMA)
                    self._db.executescript(LEARNING_SCHEMA)
                    self._init_meta()
        except sqlite3.DatabaseError as exc:
            damaged = health.records_failure(db_path, exc)
            if damaged is None:
                raise
            raise damaged from exc
        self._check_schema()
        self.embedding_name = resolve_embedding_name(embedding or self._meta("embedding"))
        if not self.read_only and self._meta("embedding") != self.embedding_name:
            with self._file_guard():
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('embedding', ?)",
                    (self.embedding_name,),
                )
        self.library_id = self._meta("library_id") or "unknown"
        self._seen_generation = self._generation()

    def _init_meta(self) -> None:
        assert self._db is not None
        defaults = {
            "schema_version": str(SCHEMA_VERSION),
            "library_id": uuid.uuid4().hex,
            "generation": "0",
        }
        for key, value in defaults.items():
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _check_schema(self) -> None:
        try:
            version = int(self._meta("schema_version") or "0")
        except sqlite3.DatabaseError as exc:
            damaged = health.records_failure(self.path / DB_NAME, exc)
            if damaged is not None:
                raise damaged from exc
            raise StoreFormatError(f"{self.path / DB_NAME} is not a tool library: {exc}") from exc
        if version > SCHEMA_VERSION:
            raise StoreFormatError(
                f"{self.path / DB_NAME} has schema version {version}; this insitu reads up to "
                f"{SCHEMA_VERSION}. Upgrade insitu."
            )
        if version < 1:
            raise StoreFormatError(f"{self.path / DB_NAME} is not an insitu tool library")

    def _acquire_session_lock(self, timeout: float) -> None:
        from filelock import FileLock, Timeout

        lock_path = self.path / LOCK_NAME
        lock = FileLock(str(lock_path), timeout=timeout, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise StoreLockedError(str(lock_path), self._lock_owner()) from None
        self._file_lock = lock
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
    def _file_guard(self) -> Iterator[None]:
        """Hold the store lock around a write in server mode (local mode holds it already)."""
        if self.chroma_url is None or self.read_only or self._guard_depth:
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

    def _open_index(self, *, set_aside_damaged: bool = False) -> None:
        """Open the Chroma index; locally, optionally replace one that cannot be opened.

        Args:
            set_aside_damaged: Move a local index that fails to open aside and
                start an empty one (its contents are rebuilt from the records).
        """
        from insitu.tool_store.index import ToolIndex, http_client

        name = f"insitu-tools-{self.library_id[:12]}"
        try:
            if self.chroma_url:
                self._index = ToolIndex(
                    http_client(self.chroma_url),
                    collection=name,
                    embedding=self.embedding_name,
                    replace_on_embedding_change=True,
                )
            else:
                self._index = ToolIndex.persistent(
                    self.path / INDEX_DIR,
                    collection=name,
                    embedding=self.embedding_name,
                    replace_on_embedding_change=True,
                )
            self._open_experience_index()
        except Exception as exc:
            if self.chroma_url:
                raise IndexUnavailableError(
                    f"cannot open the tool index at {self.chroma_url}: {exc}"
                ) from exc
            if not set_aside_damaged:
                raise health.index_damaged(self.path / INDEX_DIR, self.path, str(exc)) from exc
            self._replace_local_index(f"{type(exc).__name__}: {exc}")

    def _open_experience_index(self) -> None:
        """Experiences have a collection of their own on the tool index's Chroma client."""
        from insitu.tool_store.index import ToolIndex

        assert self._index is not None
        self._experience_index = ToolIndex(
            self._index._dense.client,  # type: ignore[union-attr]
            collection=f"insitu-experiences-{self.library_id[:12]}",
            embedding=self.embedding_name,
            replace_on_embedding_change=True,
        )

    def _replace_local_index(self, why: str) -> None:
        """Move the local index directory aside and open an empty one (under the lock)."""
        from insitu.tool_store.index import ToolIndex

        if self._index is not None:
            with contextlib.suppress(Exception):
                self._index.close()
            self._index = None
        self._memory_indexes.clear()
        self._experience_index = None
        self.index_set_aside = health.set_aside(self.path / INDEX_DIR)
        log.warning(
            "the index of %s could not be used (%s); moved it to %s and started a new one",
            self.path,
            health.one_line(why, 200),
            self.index_set_aside,
        )
        self._index = ToolIndex.persistent(
            self.path / INDEX_DIR,
            collection=f"insitu-tools-{self.library_id[:12]}",
            embedding=self.embedding_name,
            replace_on_embedding_change=True,
        )
        self._open_experience_index()

    def close(self) -> None:
        """Close the store (idempotent): release the index, the database and the lock."""
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
            if self._db is not None:
                with contextlib.suppress(Exception):
                    self._db.close()
                self._db = None
            if self._file_lock is not None:
                with contextlib.suppress(Exception):
                    self._file_lock.release()
                self._file_lock = None

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
        """The SQLite connection (raises if the store is closed)."""
        if self.closed or self._db is None:
            raise StoreClosedError()
        return self._db

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _generation(self) -> int:
        return int(self._meta("generation") or 0)

    @contextlib.contextmanager
    def _writing(self, action: str, *, catch_up: bool = True) -> Iterator[None]:
        if self.closed:
            raise StoreClosedError()
        if self.read_only:
            raise ReadOnlyStoreError(action)
        with self._lock, self._file_guard():
            if catch_up and self.chroma_url:
                self._catch_up()
                # A writer in another process may have died between its record
                # transaction and its index update; we hold the lock, so finish it.
                self._retry_pending(check=True)
            yield

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")

    @staticmethod
    def _bump_generation(cur: sqlite3.Cursor) -> int:
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        return int(cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _names(self, cur: sqlite3.Cursor | None = None) -> list[str]:
        return [r[0] for r in (cur or self.db).execute("SELECT name FROM tools ORDER BY name")]

    def _tool_row(self, name: str, cur: sqlite3.Cursor | None = None) -> sqlite3.Row:
        if not isinstance(name, str):
            raise ToolNotFoundError(repr(name))
        row = (cur or self.db).execute("SELECT * FROM tools WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ToolNotFoundError(name, self._names(cur))
        return row

    def _version_row(
        self, name: str, version: int, cur: sqlite3.Cursor | None = None
    ) -> sqlite3.Row:
        if isinstance(version, bool) or not isinstance(version, int):
            raise VersionNotFoundError(name, version, self._versions(name, cur))
        row = (
            (cur or self.db)
            .execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version))
            .fetchone()
        )
        if row is None:
            raise VersionNotFoundError(name, version, self._versions(name, cur))
        return row

    def _versions(self, name: str, cur: sqlite3.Cursor | None = None) -> list[int]:
        return [
            r[0]
            for r in (cur or self.db).execute(
                "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,)
            )
        ]

    @staticmethod
    def _stats(tool: sqlite3.Row) -> ToolStats:
        return ToolStats(
            calls=tool["calls"],
            successes=tool["successes"],
            failures=tool["failures"],
            last_error=tool["last_error"],
            last_used=_parse_time(tool["last_used"]),
            creation_cost_tokens=tool["creation_cost_tokens"],
        )

    def _record(self, version: sqlite3.Row, tool: sqlite3.Row) -> ToolRecord:
        spec = json.loads(version["spec"])
        return ToolRecord(
            **spec,
            version=version["version"],
            hash=version["hash"],
            created_at=datetime.fromisoformat(version["created_at"]),
            origin=version["origin"],
            created_by_task=version["created_by_task"],
            parent_version=version["parent_version"],
            merged_from=json.loads(version["merged_from"]),
            note=version["note"],
            status=tool["status"],
            locked=bool(tool["locked"]),
            stats=self._stats(tool),
        )

    def _current(self, name: str, cur: sqlite3.Cursor | None = None) -> ToolRecord:
        tool = self._tool_row(name, cur)
        return self._record(self._version_row(name, tool["current_version"], cur), tool)

    def _event(self, cur: sqlite3.Cursor, name: str, action: str, detail: str | None) -> None:
        cur.execute(
            "INSERT INTO events (at, name, action, detail) VALUES (?, ?, ?, ?)",
            (now_utc().isoformat(), name, action, detail),
        )

    # ------------------------------------------------------------- vectors

    def _model_key(self) -> str:
        # Cached vectors are of a tool's text as rendered by this text version.
        return f"insitu-{self.embedding_name}-text{TOOL_TEXT_VERSION}"

    def _vectors_for(self, specs: Sequence[ToolSpec]) -> dict[str, np.ndarray]:
        """Return ``{hash: vector}`` for specs, from the cache or freshly embedded."""
        from insitu.tool_store.embeddings import get_embedding_function

        hashes = {s.content_hash(): s for s in specs}
        out = self._cached_vectors(list(hashes))
        missing = [h for h in hashes if h not in out]
        if missing:
            vectors = get_embedding_function(self.embedding_name).embed(
                [hashes[h].embedding_text() for h in missing]
            )
            for h, v in zip(missing, vectors, strict=True):
                out[h] = np.asarray(v, dtype=np.float32)
        return out

    def _cached_vectors(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        model = self._model_key()
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT hash, vector FROM vectors WHERE model = ? AND hash IN ({marks})",
                [model, *chunk],
            ):
                out[row[0]] = np.frombuffer(row[1], dtype=np.float32).copy()
        return out

    def _save_vectors(self, cur: sqlite3.Cursor, vectors: dict[str, np.ndarray]) -> None:
        model = self._model_key()
        cur.executemany(
            "INSERT OR IGNORE INTO vectors (hash, model, vector) VALUES (?, ?, ?)",
            [(h, model, np.asarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
        )

    def seed_vector_cache(self, pairs: Iterable[tuple[ToolSpec, np.ndarray]]) -> int:
        """Put vectors embedded elsewhere into the vector cache, so commits skip embedding.

        For bulk builds (``insitu eval replay --distractors``) that embed once and keep
        the vectors between libraries. Each vector must be this store's embedding
        (``embedding_name``) of ``spec.embedding_text()``: the cache trusts it.

        Args:
            pairs: ``(spec, vector)`` pairs.

        Returns:
            How many pairs were given (vectors already cached are kept as they are).

        Raises:
            ValueError: A vector whose length is not the embedding's.
        """
        from insitu.tool_store.embeddings import DIMENSIONS

        vectors = {spec.content_hash(): np.asarray(v, dtype=np.float32) for spec, v in pairs}
        wrong = [h for h, v in vectors.items() if v.shape != (DIMENSIONS,)]
        if wrong:
            raise ValueError(f"{len(wrong)} vector(s) are not of length {DIMENSIONS}")
        with self._writing("seed the vector cache"), self._transaction() as cur:
            self._save_vectors(cur, vectors)
        return len(vectors)

    # --------------------------------------------------------------- index

    def _index_doc(self, record: ToolRecord, vector: np.ndarray | None) -> Any:
        from insitu.tool_store.index import IndexDoc

        return IndexDoc(
            id=record.name,
            text=record.embedding_text(),
            metadata={
                "name": record.name,
                "version": record.version,
                "hash": record.hash,
                "status": record.status,
                "network": record.network,
                "origin": record.origin,
            },
            embedding=vector,
        )

    def _records_by_name(self, names: Iterable[str]) -> dict[str, ToolRecord]:
        out: dict[str, ToolRecord] = {}
        for name in names:
            with contextlib.suppress(ToolNotFoundError):
                out[name] = self._current(name)
        return out

    def _sync_index(self, names: Iterable[str]) -> bool:
        """Bring the index in line with the records for ``names``; clear their marks.

        Returns:
            True on success; False if the index failed (marks stay, retried later).
        """
        names = sorted(set(names))
        if not names or self._index is None:
            return True
        records = self._records_by_name(names)
        active = [r for r in records.values() if r.status == "active"]
        gone = [n for n in names if n not in records or records[n].status != "active"]
        try:
            vectors = self._vectors_for([r.spec() for r in active])
            self._index.upsert([self._index_doc(r, vectors[r.hash]) for r in active])
            self._index.delete(gone)
        except Exception as exc:
            self._index_dirty = True
            log.warning(
                "index update failed for %s (%s: %s); the records are saved and the index "
                "will be repaired on the next write, search or open",
                ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""),
                type(exc).__name__,
                exc,
            )
            return False
        with self._transaction() as cur:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                cur.execute(f"UPDATE tools SET index_pending = 0 WHERE name IN ({marks})", chunk)
            self._save_vectors(cur, {r.hash: vectors[r.hash] for r in active})
        self._stamp_index()
        return True

    def _stamp_index(self) -> None:
        if self._index is None:
            return
        pending = self.db.execute("SELECT COUNT(*) FROM tools WHERE index_pending = 1").fetchone()[
            0
        ]
        if pending:
            return
        with contextlib.suppress(Exception):
            self._index.set_stamp(
                {
                    "insitu_generation": self._generation(),
                    "insitu_embedding": self.embedding_name,
                    "insitu_text": TOOL_TEXT_VERSION,
                    "insitu_library": self.library_id,
                }
            )
        self._index_dirty = False

    def _retry_pending(self, *, check: bool = False) -> None:
        """Re-sync tools whose index update failed (ours, or with ``check`` anyone's)."""
        if (self._index_dirty or check) and not self.read_only:
            pending = [
                r[0] for r in self.db.execute("SELECT name FROM tools WHERE index_pending = 1")
            ]
            if self._sync_index(pending):
                log.info("index caught up with %d pending tool(s)", len(pending))

    def _verify_index(self, *, full: bool) -> IndexReport:
        """Compare the index with the records and repair differences (under the lock)."""
        assert self._index is not None
        pending = [r[0] for r in self.db.execute("SELECT name FROM tools WHERE index_pending = 1")]
        heads = {
            r[0]: r[1]
            for r in self.db.execute(
                "SELECT t.name, v.hash FROM tools t JOIN versions v "
                "ON v.name = t.name AND v.version = t.current_version WHERE t.status = 'active'"
            )
        }
        stamp = self._index.stamp
        reasons = []
        if pending:
            reasons.append(f"{len(pending)} tool(s) marked index-pending (interrupted write)")
        if stamp.get("insitu_embedding") not in (None, self.embedding_name):
            reasons.append(
                f"embedding changed from {stamp.get('insitu_embedding')} to {self.embedding_name}"
            )
            self._index.clear()
        elif stamp and stamp.get("insitu_text") != TOOL_TEXT_VERSION:
            reasons.append(
                f"tool text changed from version {stamp.get('insitu_text', 1)} "
                f"to {TOOL_TEXT_VERSION}"
            )
            self._index.clear()
        count = self._index.count()
        if count != len(heads):
            reasons.append(f"index holds {count} tool(s), records {len(heads)} active")
        if heads and stamp.get("insitu_generation") != self._generation():
            reasons.append("index stamp does not match the records' generation")
        if not reasons and not full:
            return IndexReport(checked="quick")
        indexed = self._index.metadata()
        upsert = sorted(
            {n for n, h in heads.items() if indexed.get(n, {}).get("hash") != h} | set(pending)
        )
        delete = sorted(set(indexed) - set(heads))
        if upsert or delete:
            names = upsert + delete
            for start in range(0, len(names), 1000):  # bounded memory for large libraries
                self._sync_index(names[start : start + 1000])
        else:
            with self._transaction() as cur:
                cur.execute("UPDATE tools SET index_pending = 0 WHERE index_pending = 1")
            self._stamp_index()
        return IndexReport(
            checked="full",
            reason="; ".join(reasons) or "full check requested",
            upserted=[n for n in upsert if n in heads],
            deleted=[n for n in upsert if n not in heads] + delete,
        )

    def verify_index(self, *, full: bool = True) -> IndexReport:
        """Check the index against the records and repair what differs.

        Args:
            full: Compare every tool's content hash (else only the cheap
                checks: pending marks, counts, generation stamp).

        Returns:
            What was checked and repaired.
        """
        with self._writing("verify the index"):
            return self._verify_index(full=full)

    def reindex(self) -> int:
        """Rebuild the index from the records (every active tool's current version).

        Locally, an index that fails while it is rebuilt (damaged files that
        opened) is moved aside (:attr:`index_set_aside`) and built anew.

        Returns:
            The number of tools indexed.
        """
        with self._writing("reindex"):
            try:
                return self._rebuild_index()
            except Exception as exc:
                if self.chroma_url:
                    raise
                self._replace_local_index(f"{type(exc).__name__}: {exc}")
                return self._rebuild_index()

    def _rebuild_index(self) -> int:
        """Empty the index and write every active tool into it again (under the lock)."""
        with self._lock:
            assert self._index is not None
            self._index.clear()
            names = [r[0] for r in self.db.execute("SELECT name FROM tools ORDER BY name")]
            for start in range(0, len(names), 1000):
                if not self._sync_index(names[start : start + 1000]):
                    raise IndexUnavailableError(
                        "reindex failed while writing the index; see the log. The records are "
                        "intact; run reindex again."
                    )
            self._stamp_index()
            self._memory_indexes.clear()
            if self._experience_index is not None:
                self._experience_index.clear()
                self._sync_experiences(
                    [r[0] for r in self.db.execute("SELECT id FROM experiences ORDER BY rowid")]
                )
            return self._index.count()

    # ------------------------------------------------------------- learning

    def _learning_tables(self) -> bool:
        """Whether the records hold the learning tables (a store last written by an older
        insitu and opened read-only does not)."""
        if self._has_learning is None:
            row = self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiences'"
            ).fetchone()
            self._has_learning = row is not None
        return self._has_learning

    def _experience_vectors(self, experiences: Sequence[Experience]) -> dict[str, np.ndarray]:
        """``{text hash: vector}`` of experiences, from the vector cache or freshly embedded."""
        if not experiences:
            return {}
        from insitu.tool_store.embeddings import get_embedding_function

        texts = {e.text_hash(): e.embedding_text() for e in experiences}
        out = self._cached_vectors(list(texts))
        missing = [h for h in texts if h not in out]
        if missing:
            fresh = get_embedding_function(self.embedding_name).embed([texts[h] for h in missing])
            for h, v in zip(missing, fresh, strict=True):
                out[h] = np.asarray(v, dtype=np.float32)
        return out

    @staticmethod
    def _experience_doc(experience: Experience, vector: np.ndarray | None) -> Any:
        from insitu.tool_store.index import IndexDoc

        return IndexDoc(
            id=experience.id,
            text=experience.embedding_text(),
            metadata={"status": experience.status, "generation": experience.generation or 0},
            embedding=vector,
        )

    def _sync_experiences(self, ids: Sequence[str] | None = None) -> bool:
        """Index the pending experiences (or ``ids``) and clear their marks.

        Returns:
            True on success; False if the index failed (the marks stay, retried later).
        """
        if self._experience_index is None:
            return True
        if ids is None:
            ids = [
                r[0] for r in self.db.execute("SELECT id FROM experiences WHERE index_pending = 1")
            ]
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            records = list(read_experiences(self.db, chunk).values())
            try:
                vectors = self._experience_vectors(records)
                self._experience_index.upsert(
                    self._experience_doc(e, vectors[e.text_hash()]) for e in records
                )
            except Exception as exc:
                log.warning(
                    "experience index update failed (%s: %s); the records are saved and the "
                    "index will be repaired on the next open or search",
                    type(exc).__name__,
                    exc,
                )
                return False
            marks = ",".join("?" * len(chunk))
            with self._transaction() as cur:
                cur.execute(
                    f"UPDATE experiences SET index_pending = 0 WHERE id IN ({marks})", chunk
                )
                self._save_vectors(cur, vectors)
        return True

    def _verify_experiences(self) -> None:
        """Repair the experience index: pending marks, and ids missing or left over."""
        if self._experience_index is None:
            return
        self._sync_experiences()
        total = int(self.db.execute("SELECT COUNT(*) FROM experiences").fetchone()[0])
        if self._experience_index.count() == total:
            return
        indexed = set(self._experience_index.metadata())
        ids = {r[0] for r in self.db.execute("SELECT id FROM experiences")}
        self._experience_index.delete(sorted(indexed - ids))
        missing = sorted(ids - indexed)
        if missing:
            log.warning(
                "experience index of %s: re-indexing %d experience(s)", self.path, len(missing)
            )
            self._sync_experiences(missing)

    def _memory_experience_index(self) -> ToolIndex:
        """An in-memory index of the experiences (read-only stores), rebuilt when they change."""
        from insitu.tool_store.index import ToolIndex

        key = tuple(
            self.db.execute("SELECT COUNT(*), COALESCE(MAX(rowid), 0) FROM experiences").fetchone()
        )
        if self._memory_experiences is not None and self._memory_experiences[1] == key:
            return self._memory_experiences[0]
        index = ToolIndex(None, embedding=self.embedding_name)
        ids = [r[0] for r in self.db.execute("SELECT id FROM experiences ORDER BY rowid")]
        for start in range(0, len(ids), 500):
            records = list(read_experiences(self.db, ids[start : start + 500]).values())
            vectors = self._experience_vectors(records)
            index.upsert(self._experience_doc(e, vectors[e.text_hash()]) for e in records)
        self._memory_experiences = (index, key)  # type: ignore[assignment]
        return index

    def search_experiences(self, query: str, k: int = 3) -> list[Experience]:
        """The experiences of the tasks most similar to ``query`` (dense search), best first.

        Each carries its ``similarity`` to the query (cosine).

        Their tool references are as they are now: renamed by merges, marked
        stale by archives and rollbacks.
        """
        if k <= 0 or not query.strip():
            return []
        with self._reading():
            if not self._learning_tables():
                return []
            if self.read_only or self._experience_index is None:
                index = self._memory_experience_index()
            else:
                index = self._experience_index
                pending = self.db.execute(
                    "SELECT 1 FROM experiences WHERE index_pending = 1 LIMIT 1"
                ).fetchone()
                if pending and self.chroma_url is None:  # the sole writer may repair here
                    self._sync_experiences()
            if index.count() == 0:
                return []
            hits = index.search(query, k=k, mode="dense")
            found = read_experiences(self.db, [h.id for h in hits])
            return [
                found[h.id].model_copy(update={"similarity": h.dense_score})
                for h in hits
                if h.id in found
            ]

    def experiences(self, *, limit: int = 100, task_id: str | None = None) -> list[Experience]:
        """The latest experiences (newest last), optionally of one task."""
        with self._reading():
            if not self._learning_tables():
                return []
            sql = "SELECT id FROM experiences" + (" WHERE task_id = ?" if task_id else "")
            rows = self.db.execute(
                sql + " ORDER BY rowid DESC LIMIT ?", ((task_id, limit) if task_id else (limit,))
            ).fetchall()
            ids = [r[0] for r in reversed(rows)]
            found = read_experiences(self.db, ids)
            return [found[i] for i in ids if i in found]

    def usage_notes(self, name: str, version: int | None = None) -> UsageNote | None:
        """How to call ``name@version``: the newest note written at a version <= it.

        Args:
            name: The tool.
            version: A version (default: the newest note of any version).
        """
        with self._reading():
            if not self._learning_tables():
                return None
            return effective_note(self.db, name, version)

    def harvested_cases(self, name: str, *, include_stale: bool = False) -> list[HarvestedCase]:
        """The regression cases harvested from real calls of a tool, oldest first.

        Args:
            name: The tool.
            include_stale: Also the cases of versions a rollback undid.
        """
        with self._reading():
            if not self._learning_tables():
                return []
            return read_cases(self.db, name, include_stale=include_stale)

    def _catch_up(self) -> None:
        """Server mode: apply other processes' changes to the in-memory lexical side."""
        generation = self._generation()
        if generation == self._seen_generation:
            return
        if self._index is not None:
            rows = self.db.execute(
                "SELECT name FROM tools WHERE changed_gen > ?", (self._seen_generation,)
            ).fetchall()
            records = self._records_by_name(r[0] for r in rows)
            self._index.refresh_lexical(
                [self._index_doc(r, None) for r in records.values() if r.status == "active"],
                [n for n, r in records.items() if r.status != "active"],
            )
        self._seen_generation = generation

    # -------------------------------------------------------------- reading

    def get(self, name: str, version: int | None = None) -> ToolRecord:
        """Return a tool's current record, or one of its versions.

        Archived tools are returned too (``record.status`` says so). The tool's
        status, lock and statistics are reported on every version's record.

        Raises:
            ToolNotFoundError: No such tool (with close-name suggestions).
            VersionNotFoundError: No such version.
        """
        with self._reading():
            tool = self._tool_row(name)
            number = tool["current_version"] if version is None else version
            return self._record(self._version_row(name, number), tool)

    def has(self, name: str, *, include_archived: bool = True) -> bool:
        """Whether a tool of this name exists (names are unique, archived ones included)."""
        with self._reading():
            row = self.db.execute("SELECT status FROM tools WHERE name = ?", (name,)).fetchone()
            return row is not None and (include_archived or row[0] == "active")

    def list(self, status: ListStatus = "active") -> list[ToolRecord]:
        """Return the current records of tools, sorted by name.

        Args:
            status: ``"active"``, ``"archived"`` or ``"all"``.

        Raises:
            ValueError: For another status.
        """
        if status not in ("active", "archived", "all"):
            raise ValueError(f"status must be 'active', 'archived' or 'all', not {status!r}")
        where = "" if status == "all" else "WHERE t.status = ?"
        params = () if status == "all" else (status,)
        with self._reading():
            rows = self.db.execute(
                "SELECT v.*, t.status AS t_status, t.locked, t.calls, t.successes, t.failures, "
                "t.last_error, t.last_used, t.creation_cost_tokens FROM tools t JOIN versions v "
                f"ON v.name = t.name AND v.version = t.current_version {where} ORDER BY t.name",
                params,
            ).fetchall()
            return [self._record(r, _ToolView(r)) for r in rows]  # type: ignore[arg-type]

    def count(self, status: ListStatus = "active") -> int:
        """Number of tools with this status (``"all"`` counts every tool)."""
        if status not in ("active", "archived", "all"):
            raise ValueError(f"status must be 'active', 'archived' or 'all', not {status!r}")
        with self._reading():
            if status == "all":
                return int(self.db.execute("SELECT COUNT(*) FROM tools").fetchone()[0])
            return int(
                self.db.execute(
                    "SELECT COUNT(*) FROM tools WHERE status = ?", (status,)
                ).fetchone()[0]
            )

    def history(self, name: str) -> list[ToolRecord]:
        """Return every version of a tool, oldest first.

        Raises:
            ToolNotFoundError: No such tool.
        """
        with self._reading():
            tool = self._tool_row(name)
            rows = self.db.execute(
                "SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
            return [self._record(r, tool) for r in rows]

    def state(self, name: str) -> ToolState:
        """Return a tool's mutable state (current version, status, lock, statistics)."""
        with self._reading():
            tool = self._tool_row(name)
            return ToolState(
                name=name,
                current_version=tool["current_version"],
                status=tool["status"],
                locked=bool(tool["locked"]),
                status_reason=tool["status_reason"],
                stats=self._stats(tool),
            )

    def events(self, name: str | None = None, limit: int = 100) -> list[StoreEvent]:
        """Return the latest state-change events (newest last), optionally for one tool."""
        with self._reading():
            sql = "SELECT * FROM events" + (" WHERE name = ?" if name else "")
            rows = self.db.execute(
                sql + " ORDER BY seq DESC LIMIT ?", ((name, limit) if name else (limit,))
            ).fetchall()
            return [
                StoreEvent(
                    seq=r["seq"],
                    at=datetime.fromisoformat(r["at"]),
                    name=r["name"],
                    action=r["action"],
                    detail=r["detail"],
                )
                for r in reversed(rows)
            ]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[ToolStore]:
        """Hold one consistent view of the records for several reads.

        Inside the block, ``list``, ``get``, ``history`` and ``state`` see the
        library as of its start, even if another process writes meanwhile
        (export uses it). Writes are not allowed inside the block.
        """
        with self._reading():
            if self.db.in_transaction:
                yield self
                return
            self.db.execute("BEGIN")
            try:
                yield self
            finally:
                self.db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        if self.closed:
            raise StoreClosedError()
        with self._lock:
            yield

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
            row = self.db.execute("SELECT status FROM tools WHERE name = ?", (name,)).fetchone()
            if row is not None:  # even with identical content: add() means a new tool
                raise DuplicateToolError(name, status=row[0])
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
        with self._reading():
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
            with self._transaction() as cur:
                tool = self._tool_row(name, cur)
                if tool["status"] == "active":
                    return self._current(name, cur)
                generation = self._bump_generation(cur)
                cur.execute(
                    "UPDATE tools SET status = 'active', status_reason = NULL, index_pending = 1, "
                    "changed_gen = ? WHERE name = ?",
                    (generation, name),
                )
                self._event(cur, name, "restore", reason)
                restore_references(cur, name)
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
            with self._transaction() as cur:
                tool = self._tool_row(name, cur)
                if bool(tool["locked"]) != locked:
                    cur.execute("UPDATE tools SET locked = ? WHERE name = ?", (int(locked), name))
                    self._event(cur, name, "lock" if locked else "unlock", None)
            return self.get(name)

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
        with self._writing("record calls"), self._transaction() as cur:
            if commit_id is not None:
                if self._earlier_commit(commit_id, digest, cur) is not None:
                    return 0
                result = CommitResult(commit_id=commit_id, applied_at=now_utc())
                self._remember_commit(cur, commit_id, digest, result)
            per_tool: dict[str, list[CallRecord]] = {}
            for call in parsed:
                self._tool_row(call.name, cur)
                if call.version is not None:
                    self._version_row(call.name, call.version, cur)
                per_tool.setdefault(call.name, []).append(call)
            now = now_utc()
            for name, items in per_tool.items():
                items = sorted(items, key=lambda c: c.when or now)
                ok = sum(1 for c in items if c.ok)
                failed = [c for c in items if not c.ok]
                last_error = None
                if failed:
                    last_error = (failed[-1].error or "failed (no message)")[:MAX_ERROR_CHARS]
                last_used = max((c.when or now) for c in items)
                cur.execute(
                    "UPDATE tools SET calls = calls + ?, successes = successes + ?, "
                    "failures = failures + ?, last_error = COALESCE(?, last_error), "
                    "last_used = CASE WHEN last_used IS NULL OR last_used < ? THEN ? "
                    "ELSE last_used END WHERE name = ?",
                    (
                        len(items),
                        ok,
                        len(failed),
                        last_error,
                        _iso(last_used),
                        _iso(last_used),
                        name,
                    ),
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
        with self._writing("record a rejection"), self._transaction() as cur:
            if self._earlier_commit(commit_id, digest, cur) is not None:
                return False
            self._remember_commit(
                cur, commit_id, digest, CommitResult(commit_id=commit_id, applied_at=now_utc())
            )
            self._event(cur, record.name, "rejected", detail)
        return True

    def rejections(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The tools reviewers rejected (newest last): ``{"at", "reason", "record"}`` each."""
        found = []
        for event in self.events(name, limit=10 * limit):
            if event.action == "rejected" and event.detail:
                data = json.loads(event.detail)
                found.append({"at": event.at, "reason": data["reason"], "record": data["record"]})
        return found[-limit:]

    def commit(
        self,
        changes: ChangeSet,
        *,
        commit_id: str | None = None,
        cases_per_tool: int = DEFAULT_CASES_PER_TOOL,
    ) -> CommitResult:
        """Apply a change set atomically (one SQLite transaction), idempotently.

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
                earlier = self._earlier_commit(commit_id, digest)
                if earlier is not None:
                    return earlier
            # Embed before the transaction: it is the slow part and needs no lock on the db.
            vectors = self._vectors_for([c.spec for c in changes if not isinstance(c, ToolArchive)])
            experiences = list(learning.experiences) if learning is not None else []
            vectors |= self._experience_vectors(experiences)
            result = CommitResult(commit_id=commit_id)
            pending = _Pending()
            with self._transaction() as cur:
                if commit_id is not None:
                    earlier = self._earlier_commit(commit_id, digest, cur)
                    if earlier is not None:  # applied by another process meanwhile
                        return earlier
                # The generation counts changes of tools; learning alone leaves it as it is.
                generation = (
                    self._bump_generation(cur)
                    if changes
                    else int(
                        cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
                    )
                )
                now = now_utc()
                for change in changes:
                    if isinstance(change, ToolAdd):
                        self._apply_add(cur, change, generation, now, commit_id, result, pending)
                    elif isinstance(change, ToolUpdate):
                        self._apply_update(cur, change, generation, now, commit_id, result, pending)
                    else:
                        self._apply_archive(cur, change, generation, result, pending)
                if rollback_to is not None and result.updated:
                    name, _, number = result.updated[0].rpartition("@")
                    before = self._version_row(name, int(number), cur)["parent_version"]
                    pending.follow.rollbacks[name] = (rollback_to, before, int(number))
                self._save_vectors(cur, vectors)
                self._apply_learning(
                    cur, learning, pending, generation, commit_id, now, result, cases_per_tool
                )
                for name, kind, detail in pending.events:
                    self._event(cur, name, kind, detail)
                result.applied_at = now
                if commit_id is not None:
                    self._remember_commit(cur, commit_id, digest, result)
            self._after_write(pending.names)
            if pending.experiences:
                self._sync_experiences()
            return result

    def _apply_learning(
        self,
        cur: sqlite3.Cursor,
        learning: ChangeSet | None,
        pending: _Pending,
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
                cur,
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
            touched |= follow_tools(cur, pending.follow, now=now)
        if touched:
            prune_cases(cur, touched, cases_per_tool)

    @staticmethod
    def _remember_commit(
        cur: sqlite3.Cursor, commit_id: str, digest: str, result: CommitResult
    ) -> None:
        """Record an applied commit id (in the transaction that applies it)."""
        assert result.applied_at is not None
        cur.execute(
            "INSERT INTO commits (commit_id, applied_at, digest, result) VALUES (?, ?, ?, ?)",
            (commit_id, result.applied_at.isoformat(), digest, result.model_dump_json()),
        )

    def _earlier_commit(
        self, commit_id: str, digest: str, cur: sqlite3.Cursor | None = None
    ) -> CommitResult | None:
        row = (
            (cur or self.db)
            .execute("SELECT digest, result FROM commits WHERE commit_id = ?", (commit_id,))
            .fetchone()
        )
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

    def _insert_version(
        self,
        cur: sqlite3.Cursor,
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
    ) -> None:
        cur.execute(
            "INSERT INTO versions (name, version, hash, spec, created_at, origin, "
            "created_by_task, parent_version, merged_from, note, commit_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                spec.name,
                version,
                spec.content_hash(),
                spec.model_dump_json(),
                created_at.isoformat(),
                origin,
                created_by_task,
                parent_version,
                json.dumps(list(merged_from)),
                note,
                commit_id,
            ),
        )

    def _apply_add(
        self,
        cur: sqlite3.Cursor,
        change: ToolAdd,
        generation: int,
        now: datetime,
        commit_id: str | None,
        result: CommitResult,
        pending: _Pending,
    ) -> None:
        spec = change.spec
        existing = cur.execute("SELECT * FROM tools WHERE name = ?", (spec.name,)).fetchone()
        if existing is not None:
            current = self._record(
                self._version_row(spec.name, existing["current_version"], cur), existing
            )
            if current.hash == spec.content_hash() or change.if_exists == "skip":
                result.unchanged.append(current.ref)
                return
            if change.if_exists == "error":
                raise DuplicateToolError(spec.name, status=existing["status"])
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
            self._apply_update(cur, update, generation, now, commit_id, result, pending)
            return
        self._insert_version(
            cur,
            spec,
            1,
            origin=change.origin,
            created_by_task=change.created_by_task,
            parent_version=None,
            merged_from=change.merged_from,
            note=change.note,
            commit_id=commit_id,
            created_at=now,
        )
        record_build_cost(cur, spec.name, 1, change.build_cost)
        cur.execute(
            "INSERT INTO tools (name, current_version, status, creation_cost_tokens, "
            "index_pending, changed_gen) VALUES (?, 1, 'active', ?, 1, ?)",
            (spec.name, change.creation_cost_tokens, generation),
        )
        result.added.append(f"{spec.name}@1")
        pending.names.add(spec.name)
        pending.events.append((spec.name, "add", change.note))
        self._note_merge(spec.name, change.merged_from, pending)

    def _apply_update(
        self,
        cur: sqlite3.Cursor,
        change: ToolUpdate,
        generation: int,
        now: datetime,
        commit_id: str | None,
        result: CommitResult,
        pending: _Pending,
    ) -> None:
        spec = change.spec
        if spec.name != change.name:
            raise InvalidSpecError(
                [f"spec.name {spec.name!r} is not the tool being updated; names never change"],
                change.name,
            )
        tool = self._tool_row(change.name, cur)
        current = tool["current_version"]
        if change.expected_version is not None and change.expected_version != current:
            raise VersionConflictError(change.name, change.expected_version, current)
        head = self._version_row(change.name, current, cur)
        if head["hash"] == spec.content_hash():
            result.unchanged.append(f"{change.name}@{current}")
            return
        if tool["status"] != "active":
            raise ToolArchivedError(change.name, "update")
        if tool["locked"] and not change.force:
            raise LockedToolError(change.name, "update")
        version = (
            int(
                cur.execute(
                    "SELECT MAX(version) FROM versions WHERE name = ?", (change.name,)
                ).fetchone()[0]
            )
            + 1
        )
        self._insert_version(
            cur,
            spec,
            version,
            origin=change.origin,
            created_by_task=change.created_by_task,
            parent_version=current,
            merged_from=change.merged_from,
            note=change.note,
            commit_id=commit_id,
            created_at=now,
        )
        record_build_cost(cur, change.name, version, change.build_cost)
        cur.execute(
            "UPDATE tools SET current_version = ?, index_pending = 1, changed_gen = ?, "
            "creation_cost_tokens = creation_cost_tokens + ? WHERE name = ?",
            (version, generation, change.creation_cost_tokens, change.name),
        )
        result.updated.append(f"{change.name}@{version}")
        pending.names.add(change.name)
        pending.events.append((change.name, "update", change.note or change.origin))
        self._note_merge(change.name, change.merged_from, pending)

    @staticmethod
    def _note_merge(keeper: str, merged_from: Sequence[str], pending: _Pending) -> None:
        """Remember which names a merge folds into ``keeper`` (their records follow it)."""
        for ref in merged_from:
            name = ref.rpartition("@")[0] or ref
            if name != keeper:
                pending.follow.renames[name] = (keeper, ref)

    def _apply_archive(
        self,
        cur: sqlite3.Cursor,
        change: ToolArchive,
        generation: int,
        result: CommitResult,
        pending: _Pending,
    ) -> None:
        tool = self._tool_row(change.name, cur)
        ref = f"{change.name}@{tool['current_version']}"
        if tool["status"] == "archived":
            result.unchanged.append(ref)
            return
        if tool["locked"] and not change.force:
            raise LockedToolError(change.name, "archive")
        cur.execute(
            "UPDATE tools SET status = 'archived', status_reason = ?, index_pending = 1, "
            "changed_gen = ? WHERE name = ?",
            (change.reason, generation, change.name),
        )
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
            pending = _Pending()
            with self._transaction() as cur:
                generation = self._bump_generation(cur)
                conflicts = []
                for state, versions in tools:
                    row = cur.execute(
                        "SELECT * FROM tools WHERE name = ?", (state.name,)
                    ).fetchone()
                    if row is not None:
                        head = self._version_row(state.name, row["current_version"], cur)
                        if head["hash"] != versions[-1].hash:
                            conflicts.append(state.name)
                if conflicts and on_conflict == "error":
                    raise ImportConflictError(conflicts)
                now = now_utc()
                for state, versions in tools:
                    row = cur.execute(
                        "SELECT * FROM tools WHERE name = ?", (state.name,)
                    ).fetchone()
                    if row is None:
                        self._restore_tool(cur, state, versions, generation)
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
                        result = CommitResult()
                        self._apply_update(cur, update, generation, now, None, result, pending)
                        outcome["replaced"].append(state.name)
                self._save_vectors(cur, vectors)
                for name, kind, detail in pending.events:
                    self._event(cur, name, kind, detail)
            self._after_write(pending.names)
        return outcome

    def _restore_tool(
        self,
        cur: sqlite3.Cursor,
        state: ToolState,
        versions: Sequence[ToolRecord],
        generation: int,
    ) -> None:
        for record in versions:
            self._insert_version(
                cur,
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
        cur.execute(
            "INSERT INTO tools (name, current_version, status, locked, status_reason, calls, "
            "successes, failures, last_error, last_used, creation_cost_tokens, index_pending, "
            "changed_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (
                state.name,
                state.current_version,
                state.status,
                int(state.locked),
                state.status_reason,
                stats.calls,
                stats.successes,
                stats.failures,
                stats.last_error,
                _iso(stats.last_used),
                stats.creation_cost_tokens,
                generation,
            ),
        )

    # --------------------------------------------------------------- search

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
        with self._reading():
            if self.read_only or include_archived:
                index = self._memory_index(include_archived)
            else:
                if self.chroma_url:
                    self._catch_up()  # other processes' writes, for the lexical side
                else:
                    self._retry_pending()  # the sole writer may repair without more locking
                assert self._index is not None
                index = self._index
            hits = index.search(query, k=k, mode=mode)
            records = self._records_by_name(h.id for h in hits)
            return [
                ToolHit(
                    record=records[h.id],
                    score=h.score,
                    dense_score=h.dense_score,
                    lexical_score=h.lexical_score,
                    rank=rank,
                )
                for rank, h in enumerate((h for h in hits if h.id in records), 1)
            ]

    def _memory_index(self, include_archived: bool) -> ToolIndex:
        """An in-memory index of the records (read-only stores, archived search).

        Built once, then kept up to date from the tools whose ``changed_gen``
        moved on, so a long-lived reader follows the writer cheaply.
        """
        from insitu.tool_store.index import IndexDoc, ToolIndex

        generation = self._generation()
        cached = self._memory_indexes.get(include_archived)
        if cached is not None and cached[1] == generation:
            return cached[0]
        started = time.perf_counter()
        since = cached[1] if cached is not None else -1
        rows = self.db.execute(
            "SELECT t.name, t.status, v.version, v.hash, v.spec, v.origin FROM tools t "
            "JOIN versions v ON v.name = t.name AND v.version = t.current_version "
            "WHERE t.changed_gen > ?",
            (since,),
        ).fetchall()
        wanted = [r for r in rows if include_archived or r["status"] == "active"]
        gone = [r["name"] for r in rows if not (include_archived or r["status"] == "active")]
        # Our own rows, written by this code: no need to validate them again.
        specs = {r["hash"]: ToolSpec.model_construct(**json.loads(r["spec"])) for r in wanted}
        vectors = self._cached_vectors(list(specs))
        missing = [h for h in specs if h not in vectors]
        if missing:
            from insitu.tool_store.embeddings import get_embedding_function

            log.info("embedding %d tool(s) missing from the vector cache", len(missing))
            fresh = get_embedding_function(self.embedding_name).embed(
                [specs[h].embedding_text() for h in missing]
            )
            vectors.update(zip(missing, fresh, strict=True))
        index = cached[0] if cached is not None else ToolIndex(None, embedding=self.embedding_name)
        index.delete(gone)
        index.upsert(
            IndexDoc(
                id=r["name"],
                text=specs[r["hash"]].embedding_text(),
                metadata={
                    "name": r["name"],
                    "version": r["version"],
                    "hash": r["hash"],
                    "status": r["status"],
                    "network": bool(specs[r["hash"]].network),
                    "origin": r["origin"],
                },
                embedding=vectors[r["hash"]],
            )
            for r in wanted
        )
        self._memory_indexes[include_archived] = (index, generation)
        log.debug(
            "in-memory index: %d tool(s) refreshed in %.0f ms",
            len(rows),
            (time.perf_counter() - started) * 1000,
        )
        return index


class _ToolView:
    """Adapts a joined versions+tools row to the tool-row interface of ``_record``."""

    def __init__(self, row: sqlite3.Row) -> None:
        self._row = row

    def __getitem__(self, key: str) -> Any:
        return self._row["t_status" if key == "status" else key]
