"""What the team learns from use, kept with the library: experiences, usage notes, harvested cases.

Three kinds of records, kept with the library's records beside the tools and written by the
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
inside the store's transaction (they take its :class:`~insitu.tool_store.records.base.RecordTxn`,
whatever database holds the records); the store calls them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from insitu.tool_store.contract import ToolTest

if TYPE_CHECKING:
    from insitu.tool_store.records.base import RecordTxn

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


def insert_learning(
    txn: RecordTxn,
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
        inserted = txn.insert_experience(
            {
                "id": experience.id,
                "task_id": experience.task_id,
                "summary": experience.summary,
                "status": experience.status,
                "guidance": experience.guidance,
                "lesson": experience.lesson,
                "outcome": experience.outcome,
                "tokens": experience.tokens,
                "created_at": experience.created_at.isoformat(),
                "generation": generation,
                "commit_id": commit_id,
            }
        )
        if not inserted:  # written before (a replay under another commit id)
            continue
        for position, ref in enumerate(experience.tools):
            stale = ref.stale
            if stale is None and ref.name not in follow.renames:
                status = txn.tool_head(ref.name)
                if status is None:
                    stale = "not in the library"
                elif status[0] == "archived":
                    stale = "archived"
            txn.insert_experience_tool(
                {
                    "experience_id": experience.id,
                    "position": position,
                    "name": ref.name,
                    "version": ref.version,
                    "called": int(ref.called),
                    "renamed_from": ref.renamed_from,
                    "stale": stale,
                }
            )
        result.experiences.append(experience.id)
    for note in notes:
        status = None if note.name in follow.renames else txn.tool_head(note.name)
        if status is None or status[0] != "active" or not note.notes.strip():
            result.dropped.append(f"note of {note.name}")
            continue
        txn.put_usage_note(
            {
                "name": note.name,
                "version": status[1],
                "notes": note.notes,
                "observed": note.observed,
                "task_id": note.task_id,
                "created_at": now.isoformat(),
                "commit_id": commit_id,
            }
        )
        result.notes.append(f"{note.name}@{status[1]}")
    keepers = {keeper for keeper, _ref in follow.renames.values()}
    for harvested in cases:
        name, renamed_from = harvested.name, harvested.renamed_from
        if name in follow.renames:
            name, renamed_from = follow.renames[name][0], renamed_from or harvested.source_ref
            keep = True
        else:
            status = txn.tool_head(name)
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
        inserted = txn.insert_case(
            {
                "name": name,
                "case_id": harvested.case_id,
                "case_json": harvested.case.model_dump_json(),
                "source_ref": harvested.source_ref,
                "source_version": split_ref(harvested.source_ref)[1],
                "task_id": harvested.task_id,
                "created_at": now.isoformat(),
                "renamed_from": renamed_from,
            }
        )
        if inserted:
            result.cases.append(f"{name}:{harvested.case_id}")
            result.touched_cases.add(name)
    return result


def follow_tools(txn: RecordTxn, follow: ToolFollow, *, now: datetime) -> set[str]:
    """Make every learning record follow a commit's merges, archives and rollbacks.

    Returns:
        The tools whose harvested cases changed (to prune them to the bound).
    """
    touched: set[str] = set()
    for old, (keeper, _old_ref) in follow.renames.items():
        status = txn.tool_head(keeper)
        txn.rename_references(old, keeper, status[1] if status else None)
        touched.add(keeper)
    for name, reason in follow.archived.items():
        if name in follow.renames:
            continue  # merged: its references were renamed, not made stale
        txn.mark_references_stale(name, f"archived: {reason}"[:200])
    for name, (target, _before, new_version) in follow.rollbacks.items():
        txn.mark_references_stale(
            name, f"rolled back to version {target}", versions_between=(target, new_version)
        )
        # The rolled-back-to content gets the note it had (or none), not the undone one's.
        carried = effective_note(txn, name, target)
        txn.put_usage_note(
            {
                "name": name,
                "version": new_version,
                "notes": carried.notes if carried else "",
                "observed": f"{name}@{target}",
                "task_id": None,
                "created_at": now.isoformat(),
                "commit_id": None,
            }
        )
    return touched


def prune_cases(txn: RecordTxn, names: Iterable[str], keep: int) -> int:
    """Keep each tool's newest ``keep`` current harvested cases; drop the rest and stale ones.

    Returns:
        How many cases were dropped.
    """
    return sum(txn.prune_cases(name, keep) for name in sorted(set(names)))


# ------------------------------------------------------------------ reading


def effective_note(txn: RecordTxn, name: str, version: int | None) -> UsageNote | None:
    """The usage note of ``name@version``: the newest written at a version <= it.

    ``version=None`` means the newest note of any version. An empty note (a
    rollback's reset) means none.
    """
    row = txn.usage_note(name, version)
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


def read_cases(txn: RecordTxn, name: str, *, include_stale: bool = False) -> list[HarvestedCase]:
    """A tool's harvested cases, oldest first."""
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
        for r in txn.cases(name, include_stale=include_stale)
    ]


def read_experiences(txn: RecordTxn, ids: Sequence[str]) -> dict[str, Experience]:
    """The experiences of ``ids`` (those that exist), with their current tool references."""
    rows, ref_rows = txn.experience_rows(ids)
    refs: dict[str, list[ToolRef]] = {}
    for r in ref_rows:
        refs.setdefault(r["experience_id"], []).append(
            ToolRef(
                name=r["name"],
                version=r["version"],
                called=bool(r["called"]),
                renamed_from=r["renamed_from"],
                stale=r["stale"],
            )
        )
    return {
        r["id"]: Experience(
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
        for r in rows
    }


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
