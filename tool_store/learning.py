"""What the team learns from use, kept with the library: experiences, usage notes, harvested cases.

Three kinds of records, all in ``tools.db`` beside the tools and written by the
same commits (:meth:`ToolStore.commit <insitu.tool_store.store.ToolStore.commit>`
applies a :class:`~insitu.tool_store.changes.ChangeSet`'s ``experiences``,
``usage_notes`` and ``cases`` in the transaction of its tool changes):

* :class:`Experience`: one per episode: a short summary of the task, how it
  ended, the tools bound and called (``name@version``), the guidance that was
  followed and what the reflection made of it, the tokens spent. Versioned with
  the library (the generation and commit it was written at), embedded and
  indexed in a Chroma collection of its own (the store's embedding function),
  retrieved by the Manager for similar tasks.
* :class:`UsageNote`: how to call one tool (argument formats, units, edge
  cases), distilled from its calls. Metadata of a tool version: the note of
  version *n* is the newest one written at a version <= *n* (carried forward),
  until a newer note replaces it.
* :class:`HarvestedCase`: a real call of a tool and its output, kept as a
  regression case: a repair or a merge of the tool must reproduce it.

Records follow the tools they name: when a commit merges ``a`` into ``b``
(``merged_from``), experiences that name ``a`` name ``b`` instead (the old
reference is kept in ``renamed_from``) and ``a``'s harvested cases become
``b``'s; an archived tool's references are marked stale (cleared again when it
is restored); a rollback marks stale the references to the versions it undid
and carries the target version's usage note forward. The functions here run
inside the store's transaction (they take its cursor); the store calls them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from insitu.tool_store.contract import ToolTest

#: Characters kept of each text field of an experience (a record stays a few hundred bytes).
MAX_SUMMARY_CHARS = 300
MAX_GUIDANCE_CHARS = 400
MAX_LESSON_CHARS = 800
MAX_OUTCOME_CHARS = 300
#: Tool references kept per experience.
MAX_TOOL_REFS = 20
#: The store's own cap on a usage note (the ``usage_notes_max_chars`` setting is lower).
MAX_NOTES_CHARS = 2000
#: The largest harvested case kept: its input, expected output and files, as JSON.
MAX_CASE_CHARS = 4000
#: Harvested cases kept per tool when the caller does not say (``harvested_cases_per_tool``).
DEFAULT_CASES_PER_TOOL = 5

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


def _cut(value: Any, limit: int) -> Any:
    """Cut a string to ``limit`` characters (records are bounded, never refused for length).

    Text that cannot be stored as UTF-8 (a lone surrogate from a model's reply) has
    those characters replaced, so that a record never fails its commit.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "replace").decode("utf-8")
        if len(value) > limit:
            return value[: limit - 1] + "…"
    return value


def split_ref(ref: str) -> tuple[str, int | None]:
    """``"name@3"`` -> ``("name", 3)``; a ref without a version -> ``(ref, None)``."""
    name, _, version = ref.rpartition("@")
    if not name:
        return ref, None
    try:
        return name, int(version)
    except ValueError:
        return ref, None


class ToolRef(BaseModel):
    """A tool an experience names, and what became of it since."""

    name: str
    version: int | None = None
    called: bool = Field(default=False, description="Called in the episode (else only bound).")
    renamed_from: str | None = Field(
        default=None, description="The reference as written, when a merge renamed it."
    )
    stale: str | None = Field(
        default=None, description="Why the reference no longer holds (archived, rolled back)."
    )

    @field_validator("name", "renamed_from", "stale", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _cut(value, 300)

    @property
    def ref(self) -> str:
        """``name@version`` (``name`` alone when the version is unknown)."""
        return self.name if self.version is None else f"{self.name}@{self.version}"


class Experience(BaseModel):
    """What one episode taught: the task, how it ended, its tools and its lesson."""

    id: str = Field(default="", description="Set from the content when empty.")
    task_id: str | None = None
    summary: str = Field(description="A short summary of the task (what is embedded).")
    status: str = Field(description="completed, incomplete or failed.")
    guidance: str = Field(default="", description="The Manager's guidance that was followed.")
    lesson: str = Field(default="", description="The reflection note: what worked, what failed.")
    outcome: str = Field(default="", description="Why the task did not complete, if it did not.")
    tools: list[ToolRef] = Field(default_factory=list)
    tokens: int = Field(default=0, ge=0, description="Tokens the episode spent.")
    created_at: datetime
    generation: int | None = Field(
        default=None, description="The library generation it was written at (set by the store)."
    )
    commit_id: str | None = Field(default=None, description="The commit that wrote it.")
    similarity: float | None = Field(
        default=None,
        exclude=True,
        description="Cosine similarity to the query that recalled it (set by search, not stored).",
    )

    @field_validator("task_id", mode="before")
    @classmethod
    def _task_id(cls, value: Any) -> Any:
        return _cut(value, 300)

    @field_validator("summary", mode="before")
    @classmethod
    def _summary(cls, value: Any) -> Any:
        return _cut(value, MAX_SUMMARY_CHARS)

    @field_validator("guidance", mode="before")
    @classmethod
    def _guidance(cls, value: Any) -> Any:
        return _cut(value, MAX_GUIDANCE_CHARS)

    @field_validator("lesson", mode="before")
    @classmethod
    def _lesson(cls, value: Any) -> Any:
        return _cut(value, MAX_LESSON_CHARS)

    @field_validator("outcome", mode="before")
    @classmethod
    def _outcome(cls, value: Any) -> Any:
        return _cut(value, MAX_OUTCOME_CHARS)

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        return value[:MAX_TOOL_REFS] if isinstance(value, list) else value

    def model_post_init(self, _context: Any) -> None:
        if not self.id:
            payload = json.dumps(
                [self.task_id, self.summary, self.status, self.created_at.isoformat()]
            )
            self.id = "exp-" + hashlib.sha256(payload.encode()).hexdigest()[:20]

    def embedding_text(self) -> str:
        """The text retrieval compares with a new task: the task's summary."""
        return self.summary

    def text_hash(self) -> str:
        """Key of this experience's vector in the store's vector cache."""
        return "experience:" + hashlib.sha256(self.embedding_text().encode()).hexdigest()


class UsageNote(BaseModel):
    """How to call a tool, distilled from its calls (metadata of one of its versions)."""

    name: str
    notes: str
    observed: str | None = Field(
        default=None, description="The name@version whose calls the note was distilled from."
    )
    task_id: str | None = None
    version: int | None = Field(
        default=None, description="The version it is stored at (set by the store)."
    )
    created_at: datetime | None = None

    @field_validator("notes", mode="before")
    @classmethod
    def _notes(cls, value: Any) -> Any:
        return _cut(value, MAX_NOTES_CHARS)

    @field_validator("name", "observed", "task_id", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _cut(value, 300)


def case_id(case: ToolTest) -> str:
    """A harvested case's identity: its input and files (one case per distinct call)."""
    payload = json.dumps([case.input, case.files], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class HarvestedCase(BaseModel):
    """A real call of a tool and its output, kept as a regression case of the tool."""

    name: str = Field(description="The tool it belongs to (after any merge).")
    case: ToolTest
    source_ref: str = Field(description="The name@version the call was made with.")
    source_hash: str = Field(
        default="", description="Content hash of that version (kept only if it is committed)."
    )
    task_id: str | None = None
    created_at: datetime | None = None
    renamed_from: str | None = None
    stale: str | None = None

    @property
    def case_id(self) -> str:
        """See :func:`case_id`."""
        return case_id(self.case)

    def size(self) -> int:
        """Characters of the case as JSON (bounded by :data:`MAX_CASE_CHARS`)."""
        return len(self.case.model_dump_json())


# ------------------------------------------------------------------ in the transaction


@dataclass
class ToolFollow:
    """What a commit did to tools that learning records must follow (collected by the store)."""

    #: merged-away name -> (surviving name, the merged-away ref)
    renames: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: name -> reason, for tools archived by this commit
    archived: dict[str, str] = field(default_factory=dict)
    #: name -> (target version, version before, new version), for rollbacks
    rollbacks: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.renames or self.archived or self.rollbacks)


@dataclass
class LearningResult:
    """What the learning part of a commit wrote."""

    experiences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    touched_cases: set[str] = field(default_factory=set)


def _tool_status(cur: sqlite3.Cursor, name: str) -> tuple[str, int, str] | None:
    """(status, current version, current hash) of a tool, or None."""
    row = cur.execute(
        "SELECT t.status, t.current_version, v.hash FROM tools t JOIN versions v "
        "ON v.name = t.name AND v.version = t.current_version WHERE t.name = ?",
        (name,),
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def insert_learning(
    cur: sqlite3.Cursor,
    *,
    experiences: Sequence[Experience],
    notes: Sequence[UsageNote],
    cases: Sequence[HarvestedCase],
    follow: ToolFollow,
    generation: int,
    commit_id: str | None,
    now: datetime,
) -> LearningResult:
    """Write a commit's learning records (after its tool changes, in its transaction).

    Experiences keep their references as written (:func:`follow_tools` renames
    them afterwards, with every older record). A usage note lands on its tool's
    current version; a note for a tool that is gone, archived or merged away by
    this commit is dropped. A harvested case is kept only if the version it was
    harvested from is the tool's current one after this commit (a case of a
    version that another change of the commit replaced may no longer hold), or
    if the commit merged its tool into another or others into it (the merge was
    admitted on it).
    """
    result = LearningResult()
    for experience in experiences:
        inserted = cur.execute(
            "INSERT OR IGNORE INTO experiences (id, task_id, summary, status, guidance, lesson, "
            "outcome, tokens, created_at, generation, commit_id, index_pending) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (
                experience.id,
                experience.task_id,
                experience.summary,
                experience.status,
                experience.guidance,
                experience.lesson,
                experience.outcome,
                experience.tokens,
                experience.created_at.isoformat(),
                generation,
                commit_id,
            ),
        ).rowcount
        if not inserted:  # written before (a replay under another commit id)
            continue
        for position, ref in enumerate(experience.tools):
            stale = ref.stale
            if stale is None and ref.name not in follow.renames:
                status = _tool_status(cur, ref.name)
                if status is None:
                    stale = "not in the library"
                elif status[0] == "archived":
                    stale = "archived"
            cur.execute(
                "INSERT INTO experience_tools (experience_id, position, name, version, called, "
                "renamed_from, stale) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    experience.id,
                    position,
                    ref.name,
                    ref.version,
                    int(ref.called),
                    ref.renamed_from,
                    stale,
                ),
            )
        result.experiences.append(experience.id)
    for note in notes:
        status = None if note.name in follow.renames else _tool_status(cur, note.name)
        if status is None or status[0] != "active" or not note.notes.strip():
            result.dropped.append(f"note of {note.name}")
            continue
        cur.execute(
            "INSERT OR REPLACE INTO usage_notes (name, version, notes, observed, task_id, "
            "created_at, commit_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                note.name,
                status[1],
                note.notes,
                note.observed,
                note.task_id,
                now.isoformat(),
                commit_id,
            ),
        )
        result.notes.append(f"{note.name}@{status[1]}")
    keepers = {keeper for keeper, _ref in follow.renames.values()}
    for harvested in cases:
        name, renamed_from = harvested.name, harvested.renamed_from
        if name in follow.renames:
            name, renamed_from = follow.renames[name][0], renamed_from or harvested.source_ref
            keep = True
        else:
            status = _tool_status(cur, name)
            keep = (
                status is not None
                and status[0] == "active"
                and (
                    name in keepers  # others merged into it here: admitted on its cases
                    or not harvested.source_hash
                    or status[2] == harvested.source_hash
                )
            )
        if not keep or harvested.size() > MAX_CASE_CHARS:
            result.dropped.append(f"case of {harvested.name}")
            continue
        inserted = cur.execute(
            "INSERT OR IGNORE INTO harvested_cases (name, case_id, case_json, source_ref, "
            "source_version, task_id, created_at, renamed_from, stale) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (
                name,
                harvested.case_id,
                harvested.case.model_dump_json(),
                harvested.source_ref,
                split_ref(harvested.source_ref)[1],
                harvested.task_id,
                now.isoformat(),
                renamed_from,
            ),
        ).rowcount
        if inserted:
            result.cases.append(f"{name}:{harvested.case_id}")
            result.touched_cases.add(name)
    return result


def follow_tools(cur: sqlite3.Cursor, follow: ToolFollow, *, now: datetime) -> set[str]:
    """Make every learning record follow a commit's merges, archives and rollbacks.

    Returns:
        The tools whose harvested cases changed (to prune them to the bound).
    """
    touched: set[str] = set()
    for old, (keeper, _old_ref) in follow.renames.items():
        status = _tool_status(cur, keeper)
        keeper_version = status[1] if status else None
        cur.execute(
            "UPDATE experience_tools SET renamed_from = COALESCE(renamed_from, "
            "CASE WHEN version IS NULL THEN name ELSE name || '@' || version END), "
            "name = ?, version = ? WHERE name = ?",
            (keeper, keeper_version, old),
        )
        cur.execute(
            "UPDATE OR IGNORE harvested_cases SET name = ?, "
            "renamed_from = COALESCE(renamed_from, source_ref) WHERE name = ?",
            (keeper, old),
        )
        # A case the keeper already had under the same input stays once.
        cur.execute("DELETE FROM harvested_cases WHERE name = ?", (old,))
        touched.add(keeper)
    for name, reason in follow.archived.items():
        if name in follow.renames:
            continue  # merged: its references were renamed, not made stale
        cur.execute(
            "UPDATE experience_tools SET stale = ? WHERE name = ? AND stale IS NULL",
            (f"archived: {reason}"[:200], name),
        )
    for name, (target, _before, new_version) in follow.rollbacks.items():
        why = f"rolled back to version {target}"
        cur.execute(
            "UPDATE experience_tools SET stale = ? WHERE name = ? AND version > ? "
            "AND version < ? AND stale IS NULL",
            (why, name, target, new_version),
        )
        cur.execute(
            "UPDATE harvested_cases SET stale = ? WHERE name = ? AND source_version > ? "
            "AND source_version < ? AND stale IS NULL",
            (why, name, target, new_version),
        )
        # The rolled-back-to content gets the note it had (or none), not the undone one's.
        carried = effective_note(cur, name, target)
        cur.execute(
            "INSERT OR REPLACE INTO usage_notes (name, version, notes, observed, task_id, "
            "created_at, commit_id) VALUES (?, ?, ?, ?, NULL, ?, NULL)",
            (
                name,
                new_version,
                carried.notes if carried else "",
                f"{name}@{target}",
                now.isoformat(),
            ),
        )
    return touched


def restore_references(cur: sqlite3.Cursor, name: str) -> None:
    """A restored tool's references are current again (what archiving marked stale)."""
    cur.execute(
        "UPDATE experience_tools SET stale = NULL WHERE name = ? AND stale LIKE 'archived%'",
        (name,),
    )


def prune_cases(cur: sqlite3.Cursor, names: Iterable[str], keep: int) -> int:
    """Keep each tool's newest ``keep`` current harvested cases; drop the rest and stale ones.

    Returns:
        How many cases were dropped.
    """
    dropped = 0
    for name in sorted(set(names)):
        dropped += cur.execute(
            "DELETE FROM harvested_cases WHERE name = ? AND rowid NOT IN (SELECT rowid FROM "
            "harvested_cases WHERE name = ? AND stale IS NULL ORDER BY rowid DESC LIMIT ?)",
            (name, name, max(0, keep)),
        ).rowcount
    return dropped


# ------------------------------------------------------------------ reading


def effective_note(
    db: sqlite3.Connection | sqlite3.Cursor, name: str, version: int | None
) -> UsageNote | None:
    """The usage note of ``name@version``: the newest written at a version <= it.

    ``version=None`` means the newest note of any version. An empty note (a
    rollback's reset) means none.
    """
    if version is None:
        row = db.execute(
            "SELECT * FROM usage_notes WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
    else:
        row = db.execute(
            "SELECT * FROM usage_notes WHERE name = ? AND version <= ? "
            "ORDER BY version DESC LIMIT 1",
            (name, version),
        ).fetchone()
    if row is None or not row["notes"].strip():
        return None
    return UsageNote(
        name=row["name"],
        notes=row["notes"],
        observed=row["observed"],
        task_id=row["task_id"],
        version=row["version"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def read_cases(
    db: sqlite3.Connection, name: str, *, include_stale: bool = False
) -> list[HarvestedCase]:
    """A tool's harvested cases, oldest first."""
    rows = db.execute(
        "SELECT * FROM harvested_cases WHERE name = ?"
        + ("" if include_stale else " AND stale IS NULL")
        + " ORDER BY rowid",
        (name,),
    ).fetchall()
    return [
        HarvestedCase(
            name=r["name"],
            case=ToolTest.model_validate_json(r["case_json"]),
            source_ref=r["source_ref"],
            task_id=r["task_id"],
            created_at=datetime.fromisoformat(r["created_at"]),
            renamed_from=r["renamed_from"],
            stale=r["stale"],
        )
        for r in rows
    ]


def read_experiences(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Experience]:
    """The experiences of ``ids`` (those that exist), with their current tool references."""
    out: dict[str, Experience] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        refs: dict[str, list[ToolRef]] = {}
        for r in db.execute(
            f"SELECT * FROM experience_tools WHERE experience_id IN ({marks}) "
            "ORDER BY experience_id, position",
            chunk,
        ):
            refs.setdefault(r["experience_id"], []).append(
                ToolRef(
                    name=r["name"],
                    version=r["version"],
                    called=bool(r["called"]),
                    renamed_from=r["renamed_from"],
                    stale=r["stale"],
                )
            )
        for r in db.execute(f"SELECT * FROM experiences WHERE id IN ({marks})", chunk):
            out[r["id"]] = Experience(
                id=r["id"],
                task_id=r["task_id"],
                summary=r["summary"],
                status=r["status"],
                guidance=r["guidance"],
                lesson=r["lesson"],
                outcome=r["outcome"],
                tools=refs.get(r["id"], []),
                tokens=r["tokens"],
                created_at=datetime.fromisoformat(r["created_at"]),
                generation=r["generation"],
                commit_id=r["commit_id"],
            )
    return out


# ------------------------------------------------------------------ showing


def learned_lines(note: UsageNote | None, cases: Sequence[HarvestedCase]) -> list[str]:
    """What ``insitu tools show`` prints of a tool's usage note and harvested cases.

    Args:
        note: The note of the version shown (``ToolStore.usage_notes``), if any.
        cases: The tool's harvested cases (stale ones included: they say so).

    Returns:
        Plain lines: the note, then one line per case (input -> expected output).
    """
    lines = []
    if note is not None:
        origin = f" (from {note.observed})" if note.observed else ""
        lines.append(f"usage notes @{note.version}{origin}: {note.notes}")
    else:
        lines.append("usage notes: -")
    lines.append(f"harvested cases: {len(cases) or '-'}")
    for harvested in cases:
        extra = [
            f"from {harvested.renamed_from}" if harvested.renamed_from else "",
            f"stale: {harvested.stale}" if harvested.stale else "",
        ]
        tail = "".join(f" [{e}]" for e in extra if e)
        files = f" files: {', '.join(harvested.case.files)}" if harvested.case.files else ""
        text = (
            f"  {harvested.case.name} ({harvested.source_ref}){tail}: "
            f"{json.dumps(harvested.case.input, default=str)[:160]} -> "
            f"{json.dumps(harvested.case.expect, default=str)[:160]}{files}"
        )
        lines.append(text)
    return lines
