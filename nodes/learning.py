"""Reflection's learning steps: what an episode leaves for later ones, beyond its tools.

Three records (``tool_store/learning.py``), committed with the episode's tools
in one transaction, or handed to the batch with them (``commit_mode="defer"``):

* the **experience** of the episode (:func:`episode_experience`, written by
  ``summarize_episode`` with the reflection note): the task, how it ended, the
  tools bound and called, the guidance, the lesson, the tokens spent;
* **usage notes** (:func:`distill_usage_notes`, one structured call of the
  reflection model): how to call a tool, from its failed calls or its first
  successful one; skipped when the episode failed on its endpoint;
* **harvested cases** (:func:`harvest_cases`, no model): successful calls kept
  as regression cases of their tools. A call is kept only if it can be
  reproduced: the tool declares no network and no secret, its input files are
  small text files named in the arguments (kept with the case as fixtures),
  and the case, run again on the committed version in an emptied directory
  holding only those files, gives the same output. That re-run is how insitu
  knows a call is deterministic (a tool whose output depends on time, chance
  or other files fails it and is not harvested).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from insitu.aio import blocking
from insitu.context import InsituContext
from insitu.events import emit
from insitu.graphs.state import EpisodeState, Invocation
from insitu.llm import ModelEndpointError
from insitu.nodes.common import ask_role, compact_json, prompt_messages, settings, usage_update
from insitu.nodes.tool_developer import scratch_dir_for
from insitu.services import Services
from insitu.structured import StructuredOutputError, TokenUsage, parse_reply
from insitu.tool_store import ChangeSet, ToolRecord, ToolTest
from insitu.tool_store.admission import run_cases
from insitu.tool_store.contract import now_utc
from insitu.tool_store.errors import StoreError, ToolNotFoundError
from insitu.tool_store.learning import (
    MAX_CASE_CHARS,
    Experience,
    HarvestedCase,
    ToolRef,
    UsageNote,
    case_id,
)
from insitu.tool_store.mcp_tools import mcp_binding

ROLE = "reflection"
#: Tools whose usage notes one episode distills at most (one model call for all of them).
MAX_NOTE_TOOLS = 4
#: Calls of a tool shown to the model: failed ones, then successful ones.
MAX_FAILED_SHOWN = 3
MAX_OK_SHOWN = 2
#: Calls of one tool one episode harvests at most (each is run once more to check it).
MAX_HARVEST_PER_EPISODE = 2
#: Largest input file kept as a harvested case's fixture.
MAX_FIXTURE_CHARS = 2000
_PLAIN_FILE = re.compile(r"[A-Za-z0-9._-]+")


def learns(context: InsituContext) -> bool:
    """Whether this run leaves learning records: not a frozen library, not the no-reuse run."""
    return not context.freeze_library and context.keep_new_tools


# ------------------------------------------------------------------ which version


def committed_version(state: EpisodeState, name: str) -> tuple[dict[str, Any] | None, bool]:
    """The episode's own record of ``name`` (built or repaired), and whether it has one.

    ``(None, False)``: the library's version is the one the episode leaves.
    """
    for pool in ("local_tools", "repaired_tools"):
        record = (state.get(pool) or {}).get(name)
        if record is not None:
            return record, True
    return None, False


def _called_committed_version(state: EpisodeState, inv: Invocation) -> bool:
    """Whether a call was made with the version the episode leaves behind.

    A call of a library version later repaired in the episode, or of a local
    tool a reviewer rejected, teaches nothing about what is committed.
    """
    record, own = committed_version(state, inv["tool"])
    if own:
        return bool(inv["local"]) and record is not None and record["version"] == inv["version"]
    return not inv["local"]


# ------------------------------------------------------------------ the experience


def episode_experience(state: EpisodeState, note: str) -> Experience:
    """The experience of a finished episode (what ``summarize_episode`` records).

    Args:
        state: The episode's state after review (rejected tools are gone).
        note: The reflection note (the lesson); a note saying there is none is left out.
    """
    refs: dict[str, ToolRef] = {}
    for inv in state.get("invocations") or []:
        ref = refs.setdefault(inv["tool"], ToolRef(name=inv["tool"], version=inv["version"]))
        ref.called = True
        ref.version = inv["version"]  # the latest version called
    versions = {c["name"]: c["version"] for c in state.get("candidates") or []}
    for name in state.get("bound_tools") or []:
        if name not in refs:
            record, _own = committed_version(state, name)
            version = record["version"] if record else versions.get(name)
            refs[name] = ToolRef(name=name, version=version, called=False)
    status = state.get("status", "incomplete")
    outcome = ""
    if status != "completed":
        failure, report = state.get("failure"), state.get("report")
        outcome = (
            (failure or {}).get("message")
            or state.get("plan_error")
            or (f"{report['kind']}: {report['message']}" if report else "")
        )
    lesson = "" if note.startswith("(no reflection") or note == "(empty reflection)" else note
    return Experience(
        task_id=state.get("task_id"),
        summary=" ".join(state["task"].split()),
        status=status,
        guidance=state.get("guidance") or "",
        lesson=lesson,
        outcome=outcome,
        tools=list(refs.values()),
        tokens=max(0, int(state.get("tokens_spent") or 0)),
        created_at=now_utc(),
    )


# ------------------------------------------------------------------ usage notes


class ToolUsageNote(BaseModel):
    """The reflection model's note about one tool."""

    tool: str
    notes: str = ""


class UsageNotesReply(BaseModel):
    """The reflection model's structured reply: a note per tool (or none)."""

    notes: list[ToolUsageNote] = Field(default_factory=list)


def tools_to_learn(
    state: EpisodeState, services: Services, context: InsituContext
) -> dict[str, dict[str, Any]]:
    """The tools whose calls hold something to learn: ``name -> {"record", "calls"}``.

    A tool qualifies when one of its calls failed, or when it was used
    successfully for the first time (it has no note yet). Only calls of the
    version the episode leaves behind count; at most :data:`MAX_NOTE_TOOLS`.
    """
    calls: dict[str, list[Invocation]] = {}
    for inv in state.get("invocations") or []:
        if _called_committed_version(state, inv):
            calls.setdefault(inv["tool"], []).append(inv)
    store = services.store(context)
    wanted: dict[str, dict[str, Any]] = {}
    for name, made in calls.items():
        own, is_own = committed_version(state, name)
        try:
            record = own if is_own else store.get(name).model_dump(mode="json")
            has_note = store.usage_notes(name) is not None
        except (ToolNotFoundError, StoreError):
            continue
        failed = any(not inv["ok"] for inv in made)
        if failed or not has_note:
            wanted[name] = {"record": record, "calls": made}
        if len(wanted) >= MAX_NOTE_TOOLS:
            break
    return wanted


def _calls_text(name: str, item: dict[str, Any], note: str | None) -> str:
    record, made = item["record"], item["calls"]
    inputs = compact_json(record.get("input_schema", {}).get("properties", {}), 400)
    lines = [
        f"### {name}",
        f"Description: {str(record.get('description', ''))[:300]}",
        f"Input fields: {inputs}",
        f"Current note: {note or '(none)'}",
    ]
    failed = [inv for inv in made if not inv["ok"]][:MAX_FAILED_SHOWN]
    succeeded = [inv for inv in made if inv["ok"]][:MAX_OK_SHOWN]
    for inv in failed:
        lines.append(
            f"- FAILED ({inv['kind']}) with {compact_json(inv['args'], 300)}: "
            f"{' '.join(inv['message'].split())[:300]}"
        )
    for inv in succeeded:
        lines.append(f"- OK with {compact_json(inv['args'], 300)} -> {inv['output_preview'][:200]}")
    return "\n".join(lines)


def _calls_sections(wanted: dict[str, dict[str, Any]], store: Any) -> list[str]:
    """The prompt's section of each tool: its calls and its current note."""
    sections = []
    for name, item in wanted.items():
        try:
            note = store.usage_notes(name)
        except StoreError:
            note = None
        sections.append(_calls_text(name, item, note.notes if note else None))
    return sections


def validate_notes(reply: UsageNotesReply, names: set[str]) -> dict[str, str]:
    """The notes of a reply, by tool.

    Raises:
        ValueError: A note names a tool that was not asked about (for a re-ask).
    """
    unknown = sorted({n.tool for n in reply.notes} - names)
    if unknown:
        raise ValueError(
            f"notes name unknown tool(s) {unknown[:5]}; write notes only for: "
            f"{', '.join(sorted(names))}."
        )
    return {n.tool: " ".join(n.notes.split()) for n in reply.notes if n.notes.strip()}


async def distill_usage_notes(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Reflection node: distill how to call the episode's tools from their calls.

    One structured call of the reflection model for every tool with something
    to learn (a failed call, or a first successful use). Skipped when there is
    nothing to learn or the episode failed (its endpoint is failing, or its
    time is up). An unusable reply or a failing endpoint leaves no notes and
    never fails the task.

    Returns:
        Update: ``usage_notes`` (tool name -> note, cut to
        ``usage_notes_max_chars``) and usage.
    """
    context = settings(runtime)
    if not learns(context) or context.usage_notes_max_chars <= 0 or state.get("failure"):
        return {}
    wanted = await blocking(tools_to_learn, state, services, context)
    if not wanted:
        return {}
    sections = await blocking(_calls_sections, wanted, services.store(context))
    messages = prompt_messages(
        "usage_notes",
        max_chars=context.usage_notes_max_chars,
        tools="\n\n".join(sections),
    )
    usage = TokenUsage()
    try:
        asked = await ask_role(
            ROLE,
            services,
            context,
            messages,
            lambda text: validate_notes(parse_reply(text, UsageNotesReply), set(wanted)),
            usage,
        )
    except StructuredOutputError as exc:
        emit("notes_skipped", f"no usage notes: {str(exc)[:160]}", role=ROLE)
        return {"usage": usage_update(ROLE, usage)}
    except ModelEndpointError as exc:  # notes are not worth failing an answered task
        emit("endpoint_failed", f"no usage notes: {exc.one_line()}", role=ROLE)
        return {"usage": usage_update(ROLE, usage)}
    notes = {name: text[: context.usage_notes_max_chars] for name, text in asked.value.items()}
    if notes:
        emit("noted", f"usage notes for {', '.join(sorted(notes))}", tools=sorted(notes))
    return {"usage_notes": notes, "usage": usage_update(ROLE, usage)}


# ------------------------------------------------------------------ harvested cases


def fixture_files(args: dict[str, Any], workdir: Path) -> dict[str, str] | None:
    """The task files a call names in its arguments, as a case's ``files``.

    Returns:
        ``{name: text}`` (empty when it names none), or ``None`` when a named
        file cannot be kept (too large, not text): the call is then not harvested.
    """
    files: dict[str, str] = {}
    values = [v for v in args.values() if isinstance(v, str)]
    values += [x for v in args.values() if isinstance(v, list) for x in v if isinstance(x, str)]
    for value in values:
        if not _PLAIN_FILE.fullmatch(value) or value.startswith("."):
            continue
        path = workdir / value
        if not path.is_file() or path.is_symlink():
            continue
        if path.stat().st_size > MAX_FIXTURE_CHARS:
            return None
        try:
            files[value] = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    return files


def _harvestable(record: ToolRecord) -> bool:
    """A tool whose calls can be replayed exactly: sandboxed, no network, no secrets."""
    return not record.network and not record.secrets and mcp_binding(record) is None


def _candidates(
    state: EpisodeState, services: Services, context: InsituContext
) -> dict[str, tuple[ToolRecord, list[ToolTest]]]:
    """Per tool, the committed record and the distinct successful calls worth keeping."""
    store = services.store(context)
    workdir = Path(state["workdir"])
    records: dict[str, ToolRecord | None] = {}  # None: the tool's calls are not harvested
    room: dict[str, int] = {}
    cases: dict[str, list[ToolTest]] = {}
    seen: set[tuple[str, str]] = set()
    for inv in state.get("invocations") or []:
        name = inv["tool"]
        if not inv["ok"] or "output" not in inv or not _called_committed_version(state, inv):
            continue
        if name not in records:
            records[name] = None
            own, is_own = committed_version(state, name)
            try:
                record = (
                    ToolRecord.model_validate(own) if is_own else store.get(name, inv["version"])
                )
                existing = [] if is_own else store.harvested_cases(name)
            except (ToolNotFoundError, StoreError, ValueError):
                continue
            room[name] = min(
                MAX_HARVEST_PER_EPISODE, context.harvested_cases_per_tool - len(existing)
            )
            if _harvestable(record) and room[name] > 0:
                records[name] = record
                cases[name] = []
                seen |= {(name, c.case_id) for c in existing}
        if records[name] is None or len(cases[name]) >= room[name]:
            continue
        files = fixture_files(inv["args"], workdir)
        if files is None or not isinstance(inv.get("output"), dict):
            continue
        try:
            case = ToolTest(name="case", input=inv["args"], expect=inv["output"], files=files)
            identity, size = case_id(case), len(case.model_dump_json())
        except (ValueError, UnicodeError):  # e.g. a lone surrogate: it could not be stored
            continue
        if (name, identity) in seen or size > MAX_CASE_CHARS:
            continue
        seen.add((name, identity))
        cases[name].append(case.model_copy(update={"name": f"harvested_{identity[:12]}"}))
    return {
        name: (record, cases[name])
        for name, record in records.items()
        if record is not None and cases[name]
    }


async def harvest_cases(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Reflection node: keep the episode's reproducible successful calls as regression cases.

    Each candidate (see the module docstring) is run once more on the version
    the episode commits, in an emptied directory with only its fixture files;
    the cases that pass are kept (at most ``harvested_cases_per_tool`` per
    tool in the library). No model is asked; the runs use insitu's blocking threads.

    Returns:
        Update: ``harvested_cases`` (``HarvestedCase`` dicts).
    """
    return await blocking(_harvest_cases, state, settings(runtime), services)


def _harvest_cases(
    state: EpisodeState, context: InsituContext, services: Services
) -> dict[str, Any]:
    failure = state.get("failure") or {}
    if (
        not learns(context)
        or context.harvested_cases_per_tool <= 0
        or failure.get("kind") == ("timeout")
    ):
        return {}
    candidates = _candidates(state, services, context)
    if not candidates:
        return {}
    sandbox = services.sandbox(context)
    scratch = scratch_dir_for(Path(state["workdir"]))
    kept: list[dict[str, Any]] = []
    for name, (record, cases) in candidates.items():
        try:
            report = run_cases(
                record.source, cases, sandbox=sandbox, workdir=scratch / f"harvest-{name}"
            )
        except OSError:
            continue
        passed = {r.name for r in report.results if r.passed}
        for case in cases:
            if case.name in passed:
                kept.append(
                    HarvestedCase(
                        name=name,
                        case=case,
                        source_ref=record.ref,
                        source_hash=record.hash,
                        task_id=state.get("task_id"),
                    ).model_dump(mode="json")
                )
    if kept:
        emit("harvested", f"kept {len(kept)} call(s) as regression cases", count=len(kept))
    return {"harvested_cases": kept}


# ------------------------------------------------------------------ the commit


def learning_changes(state: EpisodeState) -> ChangeSet:
    """What the episode learned, as the learning part of a change set."""
    experience = state.get("experience")
    task_id = state.get("task_id")
    tools = {**(state.get("local_tools") or {}), **(state.get("repaired_tools") or {})}
    notes = []
    for name, text in (state.get("usage_notes") or {}).items():
        record = tools.get(name)
        observed = f"{name}@{record['version']}" if record else None
        notes.append(UsageNote(name=name, notes=text, observed=observed, task_id=task_id))
    return ChangeSet(
        experiences=[Experience.model_validate(experience)] if experience else [],
        usage_notes=notes,
        cases=[HarvestedCase.model_validate(c) for c in state.get("harvested_cases") or []],
    )


def deferred_learning(changes: ChangeSet) -> dict[str, list[dict[str, Any]]]:
    """The learning part of a change set as it goes into a deferred episode's output."""
    return {
        "experiences": [e.model_dump(mode="json") for e in changes.experiences],
        "usage_notes": [n.model_dump(mode="json") for n in changes.usage_notes],
        "cases": [c.model_dump(mode="json") for c in changes.cases],
    }


def collect_learning(results: list[dict[str, Any]]) -> ChangeSet:
    """A batch's learning: every episode's deferred records, in task order.

    A record that does not parse (a result from an older run, or damaged) is
    left out; the others are kept.
    """
    collected = ChangeSet()
    for result in results:
        learned = result.get("learning") or {}
        for key, model in (
            ("experiences", Experience),
            ("usage_notes", UsageNote),
            ("cases", HarvestedCase),
        ):
            for data in learned.get(key) or []:
                try:
                    getattr(collected, key).append(model.model_validate(data))
                except ValueError:
                    continue
    return collected
