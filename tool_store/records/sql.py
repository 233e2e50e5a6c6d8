"""The library's SQL, one text for SQLite and PostgreSQL: :class:`SqlTxn` implements ``RecordTxn``.

Every statement here runs unchanged on both databases (SQLite >= 3.24 for
``ON CONFLICT``): upserts are ``INSERT ... ON CONFLICT``, statistics are
increments in SQL (``calls = calls + ?``, never read-modify-write), flags are
integers, times are ISO-8601 text, and the generation counter is a text value
of ``meta`` incremented in SQL. Statements are written with ``?`` placeholders;
a backend whose driver uses another style translates them (:meth:`SqlTxn._sql`).
The learning tables are ordered by ``rowid``: SQLite's implicit row id, an
identity column of that name in PostgreSQL.

What differs between the databases lives in the backends' subclasses: the
schema, how a table's existence is checked, and the lazily created
``version_costs`` table of SQLite libraries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from insitu.tool_store.contract import BuildCost
from insitu.tool_store.records.base import EventRow, StatusFilter, ToolRow, VersionRow

#: Bound parameters per ``IN (...)`` list (SQLite's default limit is far above).
CHUNK = 500

_TOOL_COLUMNS = (
    "name, current_version, status, locked, status_reason, calls, successes, failures, "
    "last_error, last_used, creation_cost_tokens, index_pending, changed_gen"
)
_VERSION_COLUMNS = (
    "name, version, hash, spec, created_at, origin, created_by_task, parent_version, "
    "merged_from, note, commit_id"
)
_HEAD_SELECT = (
    "SELECT t.name, t.current_version, t.status, t.locked, t.status_reason, t.calls, "
    "t.successes, t.failures, t.last_error, t.last_used, t.creation_cost_tokens, "
    "t.index_pending, t.changed_gen, v.name, v.version, v.hash, v.spec, v.created_at, v.origin, "
    "v.created_by_task, v.parent_version, v.merged_from, v.note, v.commit_id "
    "FROM tools t JOIN versions v ON v.name = t.name AND v.version = t.current_version"
)


def _tool(row: Sequence[Any]) -> ToolRow:
    return ToolRow(
        name=row[0],
        current_version=row[1],
        status=row[2],
        locked=bool(row[3]),
        status_reason=row[4],
        calls=row[5],
        successes=row[6],
        failures=row[7],
        last_error=row[8],
        last_used=row[9],
        creation_cost_tokens=row[10],
        index_pending=bool(row[11]),
        changed_gen=row[12],
    )


def _version(row: Sequence[Any]) -> VersionRow:
    return VersionRow(*row[:11])


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


class SqlTxn:
    """The record operations of one transaction, on a DB-API cursor.

    Args:
        cursor: A cursor of the transaction (rows addressable by position and
            by column name).
    """

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    # ------------------------------------------------------------ dialect hooks

    def _sql(self, text: str) -> str:
        """The statement in the driver's placeholder style (``?`` here)."""
        return text

    def has_table(self, name: str) -> bool:
        """Whether the library's schema holds table ``name``."""
        raise NotImplementedError

    def _ensure_version_costs(self) -> None:
        """Create the ``version_costs`` table where it is created lazily (SQLite)."""

    # ------------------------------------------------------------ plumbing

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; return the cursor."""
        self.cursor.execute(self._sql(sql), tuple(params))
        return self.cursor

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(sql, params).fetchall())

    def _column(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return [r[0] for r in self._all(sql, params)]

    # ------------------------------------------------------------ metadata

    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def init_meta(self, defaults: Mapping[str, str]) -> None:
        """Write the metadata a new library starts with (keeps existing values)."""
        for key, value in defaults.items():
            self.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )

    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    def bump_generation(self) -> int:
        self.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
            "WHERE key = 'generation'"
        )
        return self.generation()

    # ------------------------------------------------------------ tools and versions

    def tool(self, name: str) -> ToolRow | None:
        row = self._one(f"SELECT {_TOOL_COLUMNS} FROM tools WHERE name = ?", (name,))
        return _tool(row) if row else None

    def tool_names(self) -> list[str]:
        return self._column("SELECT name FROM tools ORDER BY name")

    def count(self, status: StatusFilter) -> int:
        if status == "all":
            return int(self._one("SELECT COUNT(*) FROM tools")[0])
        return int(self._one("SELECT COUNT(*) FROM tools WHERE status = ?", (status,))[0])

    def version(self, name: str, version: int) -> VersionRow | None:
        row = self._one(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? AND version = ?",
            (name, version),
        )
        return _version(row) if row else None

    def versions(self, name: str) -> list[VersionRow]:
        rows = self._all(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? ORDER BY version", (name,)
        )
        return [_version(r) for r in rows]

    def version_numbers(self, name: str) -> list[int]:
        return self._column("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))

    def max_version(self, name: str) -> int:
        return int(self._one("SELECT MAX(version) FROM versions WHERE name = ?", (name,))[0])

    def heads(
        self, status: StatusFilter, *, changed_since: int | None = None
    ) -> list[tuple[ToolRow, VersionRow]]:
        where, params = [], []
        if status != "all":
            where.append("t.status = ?")
            params.append(status)
        if changed_since is not None:
            where.append("t.changed_gen > ?")
            params.append(changed_since)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._all(f"{_HEAD_SELECT}{clause} ORDER BY t.name", params)
        return [(_tool(r[:13]), _version(r[13:])) for r in rows]

    def heads_named(self, names: Sequence[str]) -> list[tuple[ToolRow, VersionRow]]:
        """The current state and version of the tools of ``names`` that exist (one query
        per :data:`CHUNK` names: a search reads its hits' records in one round trip)."""
        out = []
        for start in range(0, len(names), CHUNK):
            chunk = list(names[start : start + CHUNK])
            rows = self._all(f"{_HEAD_SELECT} WHERE t.name IN ({_marks(chunk)})", chunk)
            out.extend((_tool(r[:13]), _version(r[13:])) for r in rows)
        return out

    def changed_names(self, since: int) -> list[str]:
        return self._column("SELECT name FROM tools WHERE changed_gen > ?", (since,))

    def active_hashes(self) -> dict[str, str]:
        """``{name: content hash of its current version}`` of the active tools."""
        return dict(
            self._all(
                "SELECT t.name, v.hash FROM tools t JOIN versions v ON v.name = t.name "
                "AND v.version = t.current_version WHERE t.status = 'active'"
            )
        )

    def insert_version(self, row: VersionRow) -> None:
        self.execute(
            f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.name,
                row.version,
                row.hash,
                row.spec,
                row.created_at,
                row.origin,
                row.created_by_task,
                row.parent_version,
                row.merged_from,
                row.note,
                row.commit_id,
            ),
        )

    def insert_tool(self, row: ToolRow) -> None:
        self.execute(
            f"INSERT INTO tools ({_TOOL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.name,
                row.current_version,
                row.status,
                int(row.locked),
                row.status_reason,
                row.calls,
                row.successes,
                row.failures,
                row.last_error,
                row.last_used,
                row.creation_cost_tokens,
                int(row.index_pending),
                row.changed_gen,
            ),
        )

    def set_current_version(
        self, name: str, version: int, *, generation: int, add_cost_tokens: int
    ) -> None:
        self.execute(
            "UPDATE tools SET current_version = ?, index_pending = 1, changed_gen = ?, "
            "creation_cost_tokens = creation_cost_tokens + ? WHERE name = ?",
            (version, generation, add_cost_tokens, name),
        )

    def set_status(self, name: str, status: str, reason: str | None, *, generation: int) -> None:
        self.execute(
            "UPDATE tools SET status = ?, status_reason = ?, index_pending = 1, changed_gen = ? "
            "WHERE name = ?",
            (status, reason, generation, name),
        )

    def set_locked(self, name: str, locked: bool) -> None:
        self.execute("UPDATE tools SET locked = ? WHERE name = ?", (int(locked), name))

    def add_calls(
        self,
        name: str,
        *,
        calls: int,
        successes: int,
        failures: int,
        last_error: str | None,
        last_used: str,
    ) -> None:
        self.execute(
            "UPDATE tools SET calls = calls + ?, successes = successes + ?, "
            "failures = failures + ?, last_error = COALESCE(?, last_error), "
            "last_used = CASE WHEN last_used IS NULL OR last_used < ? THEN ? "
            "ELSE last_used END WHERE name = ?",
            (calls, successes, failures, last_error, last_used, last_used, name),
        )

    # ------------------------------------------------------------ index marks, vectors

    def pending_names(self) -> list[str]:
        return self._column("SELECT name FROM tools WHERE index_pending = 1 ORDER BY name")

    def clear_pending(self, names: Sequence[str] | None, *, up_to_gen: int) -> None:
        """Clear index marks (of ``names``, or all) of tools not changed after ``up_to_gen``.

        A tool changed by a later commit keeps its mark: its writer indexes it.
        """
        if names is None:
            self.execute(
                "UPDATE tools SET index_pending = 0 WHERE index_pending = 1 AND changed_gen <= ?",
                (up_to_gen,),
            )
            return
        for start in range(0, len(names), CHUNK):
            chunk = list(names[start : start + CHUNK])
            self.execute(
                f"UPDATE tools SET index_pending = 0 WHERE name IN ({_marks(chunk)}) "
                "AND changed_gen <= ?",
                (*chunk, up_to_gen),
            )

    def vectors(self, hashes: Sequence[str], model: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for start in range(0, len(hashes), CHUNK):
            chunk = list(hashes[start : start + CHUNK])
            for row in self._all(
                f"SELECT hash, vector FROM vectors WHERE model = ? AND hash IN ({_marks(chunk)})",
                (model, *chunk),
            ):
                out[row[0]] = bytes(row[1])
        return out

    def save_vectors(self, model: str, vectors: Mapping[str, bytes]) -> None:
        if vectors:
            self.cursor.executemany(
                self._sql(
                    "INSERT INTO vectors (hash, model, vector) VALUES (?, ?, ?) "
                    "ON CONFLICT (hash, model) DO NOTHING"
                ),
                [(h, model, v) for h, v in vectors.items()],
            )

    # ------------------------------------------------------------ commits, events, costs

    def commit_record(self, commit_id: str) -> tuple[str, str] | None:
        row = self._one("SELECT digest, result FROM commits WHERE commit_id = ?", (commit_id,))
        return (row[0], row[1]) if row else None

    def remember_commit(self, commit_id: str, applied_at: str, digest: str, result: str) -> None:
        self.execute(
            "INSERT INTO commits (commit_id, applied_at, digest, result) VALUES (?, ?, ?, ?)",
            (commit_id, applied_at, digest, result),
        )

    def add_event(self, at: str, name: str, action: str, detail: str | None) -> None:
        self.execute(
            "INSERT INTO events (at, name, action, detail) VALUES (?, ?, ?, ?)",
            (at, name, action, detail),
        )

    def events(self, name: str | None, limit: int) -> list[EventRow]:
        sql = "SELECT seq, at, name, action, detail FROM events" + (
            " WHERE name = ?" if name else ""
        )
        rows = self._all(sql + " ORDER BY seq DESC LIMIT ?", (name, limit) if name else (limit,))
        return [EventRow(*r) for r in reversed(rows)]

    def save_build_cost(self, name: str, version: int, cost: BuildCost) -> None:
        self._ensure_version_costs()
        self.execute(
            "INSERT INTO version_costs (name, version, input_tokens, output_tokens, model, role) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, version) DO UPDATE SET "
            "input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, "
            "model = excluded.model, role = excluded.role",
            (name, version, cost.input_tokens, cost.output_tokens, cost.model, cost.role),
        )

    def build_costs(self, name: str | None) -> dict[tuple[str, int], BuildCost]:
        if not self.has_table("version_costs"):
            return {}
        sql = "SELECT name, version, input_tokens, output_tokens, model, role FROM version_costs"
        rows = self._all(sql + (" WHERE name = ?" if name else ""), (name,) if name else ())
        return {
            (r[0], r[1]): BuildCost(input_tokens=r[2], output_tokens=r[3], model=r[4], role=r[5])
            for r in rows
        }

    def first_version_times(self) -> dict[str, str]:
        return dict(self._all("SELECT name, created_at FROM versions WHERE version = 1"))

    def version_counts(self) -> dict[str, int]:
        return dict(self._all("SELECT name, COUNT(*) FROM versions GROUP BY name"))

    def any_status_reason(self, status: str, prefix: str) -> bool:
        row = self._one(
            "SELECT 1 FROM tools WHERE status = ? AND status_reason LIKE ? LIMIT 1",
            (status, prefix + "%"),
        )
        return row is not None

    # ------------------------------------------------------------ learning records

    def has_learning(self) -> bool:
        return self.has_table("experiences")

    def tool_head(self, name: str) -> tuple[str, int, str] | None:
        row = self._one(
            "SELECT t.status, t.current_version, v.hash FROM tools t JOIN versions v "
            "ON v.name = t.name AND v.version = t.current_version WHERE t.name = ?",
            (name,),
        )
        return (row[0], row[1], row[2]) if row else None

    def insert_experience(self, row: Mapping[str, Any]) -> bool:
        inserted = self.execute(
            "INSERT INTO experiences (id, task_id, summary, status, guidance, lesson, outcome, "
            "tokens, created_at, generation, commit_id, index_pending) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (id) DO NOTHING",
            [row[k] for k in _EXPERIENCE_FIELDS],
        ).rowcount
        return bool(inserted)

    def insert_experience_tool(self, row: Mapping[str, Any]) -> None:
        self.execute(
            "INSERT INTO experience_tools (experience_id, position, name, version, called, "
            "renamed_from, stale) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [row[k] for k in _REF_FIELDS],
        )

    def put_usage_note(self, row: Mapping[str, Any]) -> None:
        self.execute(
            "INSERT INTO usage_notes (name, version, notes, observed, task_id, created_at, "
            "commit_id) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, version) DO UPDATE SET "
            "notes = excluded.notes, observed = excluded.observed, task_id = excluded.task_id, "
            "created_at = excluded.created_at, commit_id = excluded.commit_id",
            [row[k] for k in _NOTE_FIELDS],
        )

    def insert_case(self, row: Mapping[str, Any]) -> bool:
        inserted = self.execute(
            "INSERT INTO harvested_cases (name, case_id, case_json, source_ref, source_version, "
            "task_id, created_at, renamed_from, stale) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL) "
            "ON CONFLICT (name, case_id) DO NOTHING",
            [row[k] for k in _CASE_FIELDS],
        ).rowcount
        return bool(inserted)

    def rename_references(self, old: str, keeper: str, keeper_version: int | None) -> None:
        self.execute(
            "UPDATE experience_tools SET renamed_from = COALESCE(renamed_from, "
            "CASE WHEN version IS NULL THEN name ELSE name || '@' || version END), "
            "name = ?, version = ? WHERE name = ?",
            (keeper, keeper_version, old),
        )
        # The keeper's own case of the same input wins; the merged-away copy is dropped.
        self.execute(
            "UPDATE harvested_cases SET name = ?, renamed_from = COALESCE(renamed_from, "
            "source_ref) WHERE name = ? AND case_id NOT IN "
            "(SELECT case_id FROM harvested_cases WHERE name = ?)",
            (keeper, old, keeper),
        )
        self.execute("DELETE FROM harvested_cases WHERE name = ?", (old,))

    def mark_references_stale(
        self, name: str, why: str, *, versions_between: tuple[int, int] | None = None
    ) -> None:
        """Mark ``name``'s references stale (only those of versions strictly between a range,
        and then its harvested cases too)."""
        if versions_between is None:
            self.execute(
                "UPDATE experience_tools SET stale = ? WHERE name = ? AND stale IS NULL",
                (why, name),
            )
            return
        low, high = versions_between
        self.execute(
            "UPDATE experience_tools SET stale = ? WHERE name = ? AND version > ? "
            "AND version < ? AND stale IS NULL",
            (why, name, low, high),
        )
        self.execute(
            "UPDATE harvested_cases SET stale = ? WHERE name = ? AND source_version > ? "
            "AND source_version < ? AND stale IS NULL",
            (why, name, low, high),
        )

    def clear_archived_references(self, name: str) -> None:
        self.execute(
            "UPDATE experience_tools SET stale = NULL WHERE name = ? AND stale LIKE 'archived%'",
            (name,),
        )

    def prune_cases(self, name: str, keep: int) -> int:
        return int(
            self.execute(
                "DELETE FROM harvested_cases WHERE name = ? AND rowid NOT IN (SELECT rowid FROM "
                "harvested_cases WHERE name = ? AND stale IS NULL ORDER BY rowid DESC LIMIT ?)",
                (name, name, max(0, keep)),
            ).rowcount
        )

    def usage_note(self, name: str, version: int | None) -> Mapping[str, Any] | None:
        columns = ", ".join(_NOTE_FIELDS)
        if version is None:
            row = self._one(
                f"SELECT {columns} FROM usage_notes WHERE name = ? ORDER BY version DESC LIMIT 1",
                (name,),
            )
        else:
            row = self._one(
                f"SELECT {columns} FROM usage_notes WHERE name = ? AND version <= ? "
                "ORDER BY version DESC LIMIT 1",
                (name, version),
            )
        return dict(zip(_NOTE_FIELDS, row, strict=True)) if row else None

    def cases(self, name: str, *, include_stale: bool) -> list[Mapping[str, Any]]:
        columns = (*_CASE_FIELDS, "stale")
        rows = self._all(
            f"SELECT {', '.join(columns)} FROM harvested_cases WHERE name = ?"
            + ("" if include_stale else " AND stale IS NULL")
            + " ORDER BY rowid",
            (name,),
        )
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def experience_rows(
        self, ids: Sequence[str]
    ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """The experiences of ``ids`` that exist, and their tool references in order."""
        experiences: list[Mapping[str, Any]] = []
        refs: list[Mapping[str, Any]] = []
        for start in range(0, len(ids), CHUNK):
            chunk = list(ids[start : start + CHUNK])
            for r in self._all(
                f"SELECT {', '.join(_REF_FIELDS)} FROM experience_tools "
                f"WHERE experience_id IN ({_marks(chunk)}) ORDER BY experience_id, position",
                chunk,
            ):
                refs.append(dict(zip(_REF_FIELDS, r, strict=True)))
            for r in self._all(
                f"SELECT {', '.join(_EXPERIENCE_FIELDS)} FROM experiences "
                f"WHERE id IN ({_marks(chunk)})",
                chunk,
            ):
                experiences.append(dict(zip(_EXPERIENCE_FIELDS, r, strict=True)))
        return experiences, refs

    def experience_ids(
        self, *, pending: bool = False, limit: int | None = None, task_id: str | None = None
    ) -> list[str]:
        """Experience ids, oldest first: pending ones, one task's, or the newest ``limit``."""
        where, params = [], []
        if pending:
            where.append("index_pending = 1")
        if task_id:
            where.append("task_id = ?")
            params.append(task_id)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        if limit is None:
            return self._column(f"SELECT id FROM experiences{clause} ORDER BY rowid", params)
        newest = self._column(
            f"SELECT id FROM experiences{clause} ORDER BY rowid DESC LIMIT ?", (*params, limit)
        )
        return list(reversed(newest))

    def experience_state(self) -> tuple[int, int]:
        """``(count, newest rowid)`` of the experiences: changes when one is added."""
        row = self._one("SELECT COUNT(*), COALESCE(MAX(rowid), 0) FROM experiences")
        return int(row[0]), int(row[1])

    def clear_experience_pending(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            self.execute(
                f"UPDATE experiences SET index_pending = 0 WHERE id IN ({_marks(chunk)})", chunk
            )


_EXPERIENCE_FIELDS = (
    "id",
    "task_id",
    "summary",
    "status",
    "guidance",
    "lesson",
    "outcome",
    "tokens",
    "created_at",
    "generation",
    "commit_id",
)
_REF_FIELDS = (
    "experience_id",
    "position",
    "name",
    "version",
    "called",
    "renamed_from",
    "stale",
)
_NOTE_FIELDS = ("name", "version", "notes", "observed", "task_id", "created_at", "commit_id")
_CASE_FIELDS = (
    "name",
    "case_id",
    "case_json",
    "source_ref",
    "source_version",
    "task_id",
    "created_at",
    "renamed_from",
)
