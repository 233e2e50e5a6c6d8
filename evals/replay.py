"""Solved once, solved again: re-ask a run's completed tasks against its frozen library.

``insitu eval replay RUN_DIR`` (or :func:`run_replay`) takes every task a run
completed, and optionally paraphrases of them, and solves them again with
:func:`insitu.evolve.evolve` and ``freeze_library=True`` (the freeze of the
harness's ``insitu-frozen`` system: the Manager may request no tool, nothing is
absorbed, committed or repaired, no call statistics are recorded). It reports:

* **re-solve rate** — replayed tasks completed, and correct where the task has
  a reference answer (graded with the task's grader);
* **tools created** — by the replay's episodes: must be 0. The library's
  tools, versions, generation and call counts are compared before and after
  (``library_unchanged``);
* **tokens ratio** — the replay's episode tokens over the first solve's, per
  task and in total (a paraphrase is compared with its task's first solve);
* **retrieval hit rate** — of the tools the first solve used that are still in
  the library (absorbed names followed to the tool they were merged into), the
  share found among the Manager's retrieved candidates (``retrieved`` in the
  replay's predictions: the top ``retrieval_k`` of the library's hybrid search
  for the task text).

``distractors=N`` replays against a copy of the library padded to N tools with
inert distractors (:mod:`insitu.evals.distractors`); the run's library is then
only opened read-only. Without it, the run's library (or ``library=``) is opened
as a normal run opens it, with the freeze.

The replay is itself a run folder (``run.json``, ``predictions.jsonl``,
``steps.jsonl``), by default ``RUN_DIR/replay/<library>-<key>``: the key digests
the library's tools, the replayed tasks and the batch size, so the same
command resumes an interrupted replay (or reads a finished one) and any other
input gets a folder of its own.

Paraphrase files are JSONL, one object a line::

    {"id": "task-0003", "paraphrases": ["Average of 4, 8 and 15?", "Mean: 4, 8, 15"]}

``id`` is a task id of the run; ``paraphrases`` is a non-empty list of
questions. Several lines may name the same id. The paraphrase of ``task-0003``
number k is replayed as ``task-0003.parak``, with the task's files, reference
answer and grader.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insitu.context import InsituContext
from insitu.evals.tasks import Task

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from insitu.tool_store import ToolStore

#: Separates a task id from its paraphrase number in replayed ids (task ids allow
#: letters, digits and ``. _ : -``).
PARAPHRASE_MARK = ".para"
PARAPHRASE_KEYS = {"id", "paraphrases"}


class ReplayError(ValueError):
    """The replay cannot start: not a run, nothing to replay, a malformed paraphrase file."""


# ------------------------------------------------------------------ the run


@dataclass
class RunToReplay:
    """What a replay needs from a run folder.

    Attributes:
        run_dir: The run folder.
        meta: Its ``run.json``.
        predictions: Each task's last prediction, by id, in run order.
        tasks: The completed tasks, by id, as they were asked (from the task
            source when it is found and matches, else from the predictions).
        tasks_source: Where ``tasks`` came from.
        merged_into: Tool name -> the tool absorbing merged it into.
    """

    run_dir: Path
    meta: dict[str, Any]
    predictions: dict[str, dict[str, Any]]
    tasks: dict[str, Task]
    tasks_source: str
    merged_into: dict[str, str] = field(default_factory=dict)


def _source_tasks(source: str, meta: Mapping[str, Any]) -> list[Task] | None:
    """The run's tasks from their source, or None when it cannot be read."""
    from insitu.evals.tasks import load_tasks

    if not source:
        return None
    try:
        return load_tasks(source, limit=int(meta.get("tasks") or 0) or None)
    except (ImportError, OSError, ValueError):  # TaskLoadError is a ValueError
        return None


def read_run(run_dir: str | Path, tasks_source: str | None = None) -> RunToReplay:
    """Read a run folder written by ``insitu evolve`` (or one system of ``insitu eval``).

    The tasks are taken from the run's task source (``run.json``'s
    ``tasks_file``, or ``tasks_source``) when it can be loaded and holds every
    completed task with the same question; otherwise from the predictions
    (question and reference answer only: no files, default grader).

    Raises:
        ReplayError: Not a run folder, or no task was completed.
    """
    from insitu.evolve import PREDICTIONS_FILE, RUN_FILE, STEPS_FILE, read_jsonl, read_predictions

    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file() or not (run_dir / PREDICTIONS_FILE).is_file():
        raise ReplayError(
            f"{run_dir} is not a run folder: it has no {RUN_FILE} and {PREDICTIONS_FILE} "
            "(give the --run-dir of `insitu evolve`, or a system's folder of `insitu eval`)"
        )
    try:
        meta = json.loads((run_dir / RUN_FILE).read_text())
        predictions = {p["id"]: p for p in read_predictions(run_dir)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReplayError(f"{run_dir} holds an unreadable run: {exc}") from None
    done = [p for p in predictions.values() if p.get("status") == "completed"]
    if not done:
        statuses = sorted({str(p.get("status")) for p in predictions.values()}) or ["none"]
        raise ReplayError(
            f"{run_dir} has no completed task to replay ({len(predictions)} task(s), "
            f"status: {', '.join(statuses)})"
        )
    source = tasks_source or str(meta.get("tasks_file") or "")
    loaded = {t.id: t for t in _source_tasks(source, meta) or []}
    matches = all(p["id"] in loaded and loaded[p["id"]].question == p.get("question") for p in done)
    if tasks_source and not matches:
        raise ReplayError(
            f"--tasks {tasks_source} does not hold the run's completed tasks with the same "
            "questions"
        )
    if matches:
        tasks = {p["id"]: loaded[p["id"]] for p in done}
    else:
        source = PREDICTIONS_FILE
        tasks = {
            p["id"]: Task(id=p["id"], question=p["question"], answer=p.get("expected"))
            for p in done
        }
    merged: dict[str, str] = {}
    for step in read_jsonl(run_dir / STEPS_FILE):
        for merge in (step.get("absorb") or {}).get("merged") or []:
            for name in merge.get("from") or []:
                if name != merge.get("into"):
                    merged[name] = merge["into"]
    return RunToReplay(run_dir, meta, predictions, tasks, source, merged)


def read_paraphrases(path: str | Path, run: RunToReplay) -> tuple[dict[str, list[str]], list[str]]:
    """Read a paraphrase file (see the module docstring for its format).

    Returns:
        Paraphrases by task id (completed tasks only), and the ids of tasks
        the run did not complete whose paraphrases are left out.

    Raises:
        ReplayError: The file is unreadable, malformed (line number and reason),
            names a task the run does not have, or holds no paraphrase.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"cannot read the paraphrase file {path}: {exc}") from None
    found: dict[str, list[str]] = {}
    skipped: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise ReplayError(f'{where}: expected an object {{"id": ..., "paraphrases": [...]}}')
        unknown = sorted(set(entry) - PARAPHRASE_KEYS)
        if unknown:
            raise ReplayError(f"{where}: unknown key(s) {unknown}; the keys are id, paraphrases")
        task_id, texts = entry.get("id"), entry.get("paraphrases")
        if not isinstance(task_id, str) or not task_id:
            raise ReplayError(f"{where}: 'id' must be a task id (a non-empty string)")
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t.strip() for t in texts)
        ):
            raise ReplayError(f"{where}: 'paraphrases' must be a non-empty list of questions")
        if task_id not in run.predictions:
            some = ", ".join(list(run.predictions)[:3])
            raise ReplayError(f"{where}: the run has no task {task_id!r} (its ids: {some}, ...)")
        if task_id not in run.tasks:
            skipped.append(task_id)
            continue
        found.setdefault(task_id, []).extend(t.strip() for t in texts)
    if not found and not skipped:
        raise ReplayError(f"{path} holds no paraphrase")
    return found, sorted(set(skipped))


@dataclass(frozen=True)
class ReplayTask:
    """One task of the replay.

    Attributes:
        task: As it is asked again (a paraphrase has its own id and question).
        origin: The id of the run's task it re-asks.
        kind: ``original`` or ``paraphrase``.
    """

    task: Task
    origin: str
    kind: str


def replay_tasks(run: RunToReplay, paraphrases: Mapping[str, Sequence[str]]) -> list[ReplayTask]:
    """Every completed task, each followed by its paraphrases."""
    chosen = []
    for task_id, task in run.tasks.items():
        chosen.append(ReplayTask(task, task_id, "original"))
        for number, text in enumerate(paraphrases.get(task_id) or [], 1):
            new_id = f"{task_id}{PARAPHRASE_MARK}{number}"
            if new_id in run.predictions:
                raise ReplayError(f"the run has a task {new_id!r}: its id is the paraphrase's")
            copy = task.model_copy(update={"id": new_id, "question": text})
            chosen.append(ReplayTask(copy, task_id, "paraphrase"))
    return chosen


# ------------------------------------------------------------------ the library


def open_library(path: Path, settings: InsituContext) -> ToolStore:
    """This process's writable store for a library, in the embedding it was built with.

    Through :func:`insitu.services.open_store`, as a run opens its store: a
    library this process already holds (a run just evolved in it) is reused
    rather than locked out, and the replay never re-embeds a library whose
    embedding differs from the settings' default.
    """
    from insitu.services import open_store
    from insitu.tool_store import ToolStore

    with ToolStore.open(path, read_only=True) as peek:
        embedding = peek.embedding_name
    return open_store(replace(settings, store_dir=str(path), embedding=embedding))


def library_state(store: ToolStore) -> dict[str, Any]:
    """What must not change during a replay: tools, versions, generation and call counts.

    Read with one SQL pass over the store's tables (building every record, as
    ``store.list`` does, takes seconds at 100,000 tools).
    """
    db = store.db
    generation = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    rows = db.execute(
        "SELECT name, current_version, status, calls FROM tools ORDER BY name"
    ).fetchall()
    versions = db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
    shape = hashlib.sha256()
    calls = 0
    for name, version, status, used in rows:
        shape.update(f"{name}@{version}:{status}\0".encode())
        calls += int(used or 0)
    return {
        "tools": sum(1 for r in rows if r[2] == "active"),
        "all_tools": len(rows),
        "versions": int(versions),
        "generation": int(generation[0]) if generation else 0,
        "calls": calls,
        "digest": shape.hexdigest(),
    }


def tool_name(ref: str) -> str:
    """``"name@3"`` -> ``"name"``."""
    return ref.rsplit("@", 1)[0]


def resolve_merged(name: str, merged_into: Mapping[str, str]) -> str:
    """Follow absorbed names to the tool that took them in."""
    seen = {name}
    while name in merged_into and merged_into[name] not in seen:
        name = merged_into[name]
        seen.add(name)
    return name


#: How deep a retrieval miss is looked for (its rank beyond the Manager's top k).
MISS_SEARCH_K = 100


def search_ranks(store: ToolStore, query: str, names: Sequence[str]) -> dict[str, int | None]:
    """Ranks of tools in the library's hybrid search for ``query`` (None: below MISS_SEARCH_K).

    The search the Manager makes (``store.search(task, k)``), only deeper. The
    fusion normalises scores over a candidate pool of at least k per side, so a
    top-k search is not exactly the prefix of this one: a rank here says how far
    down a miss was, not where it would be with another k.
    """
    found = [hit.record.name for hit in store.search(query, k=MISS_SEARCH_K)]
    return {name: found.index(name) + 1 if name in found else None for name in names}


# ------------------------------------------------------------------ figures


def total_tokens(usage: Mapping[str, Mapping[str, Any]] | None) -> int:
    """Input + output tokens over every role."""
    return sum(
        int(c.get("input_tokens", 0)) + int(c.get("output_tokens", 0))
        for c in (usage or {}).values()
    )


def tokens_by_role(usage: Mapping[str, Mapping[str, Any]] | None) -> dict[str, int]:
    """Input + output tokens of each role."""
    return {role: total_tokens({role: c}) for role, c in sorted((usage or {}).items())}


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _grade(task: Task, answer: str | None) -> bool | None:
    """Correct, wrong, or None when the task has no reference (or only a judge can tell)."""
    from insitu.evals.graders import default_grader, grade

    if task.answer is None and task.grader != "code":
        return None
    if default_grader(task) == "judge":
        return None
    try:
        return grade(task, answer or "").correct
    except ValueError:
        return None


def task_row(
    item: ReplayTask,
    replayed: Mapping[str, Any] | None,
    run: RunToReplay,
    in_library: Callable[[str], bool],
) -> dict[str, Any]:
    """One replayed task's figures, against its first solve."""
    first = run.predictions[item.origin]
    replayed = replayed or {"status": "failed", "error": "no prediction was written"}
    used = sorted(
        {resolve_merged(tool_name(r), run.merged_into) for r in first.get("tools_used") or []}
    )
    expected = [name for name in used if in_library(name)]
    retrieved = list(replayed.get("retrieved") or [])
    ranks = {name: retrieved.index(name) + 1 for name in expected if name in retrieved}
    first_tokens = total_tokens(first.get("tokens"))
    tokens = total_tokens(replayed.get("tokens"))
    completed = replayed.get("status") == "completed"
    correct = _grade(item.task, replayed.get("answer")) if completed else False
    return {
        "id": item.task.id,
        "origin": item.origin,
        "kind": item.kind,
        "question": item.task.question,
        "status": replayed.get("status"),
        "answer": replayed.get("answer"),
        "expected": item.task.answer,
        "correct": correct,
        "first_correct": _grade(item.task, first.get("answer")) if first.get("answer") else None,
        "resolved": completed and correct is not False,
        "error": replayed.get("error"),
        "tools_created": list(replayed.get("tools_created") or []),
        "first_built": bool(first.get("tools_created")),
        "first_tools": used,
        "first_tools_gone": [name for name in used if name not in expected],
        "tools_used": [tool_name(r) for r in replayed.get("tools_used") or []],
        "retrieved": retrieved,
        "hits": len(ranks),
        "expected_hits": len(expected),
        "hit_ranks": ranks,
        "first_tokens": first_tokens,
        "tokens": tokens,
        "tokens_ratio": _ratio(tokens, first_tokens),
        "first_tokens_by_role": tokens_by_role(first.get("tokens")),
        "tokens_by_role": tokens_by_role(replayed.get("tokens")),
    }


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The replay's headline figures from its task rows."""
    resolved = sum(1 for r in rows if r["resolved"])
    graded = [r for r in rows if r["correct"] is not None and r["status"] == "completed"]
    hits = sum(r["hits"] for r in rows)
    wanted = sum(r["expected_hits"] for r in rows)

    def ratio_of(subset: Sequence[Mapping[str, Any]]) -> float | None:
        return _ratio(sum(r["tokens"] for r in subset), sum(r["first_tokens"] for r in subset))

    return {
        "tasks": len(rows),
        "originals": sum(1 for r in rows if r["kind"] == "original"),
        "paraphrases": sum(1 for r in rows if r["kind"] == "paraphrase"),
        "resolved": resolved,
        "resolve_rate": _ratio(resolved, len(rows)),
        "completed": sum(1 for r in rows if r["status"] == "completed"),
        "graded": len(graded),
        "correct": sum(1 for r in graded if r["correct"]),
        "tools_created": sum(len(r["tools_created"]) for r in rows),
        "first_tokens": sum(r["first_tokens"] for r in rows),
        "replay_tokens": sum(r["tokens"] for r in rows),
        "tokens_ratio": ratio_of(rows),
        "tokens_ratio_first_built": ratio_of([r for r in rows if r["first_built"]]),
        "tokens_ratio_first_reused": ratio_of([r for r in rows if not r["first_built"]]),
        "tokens_ratio_originals": ratio_of([r for r in rows if r["kind"] == "original"]),
        "tokens_ratio_paraphrases": ratio_of([r for r in rows if r["kind"] == "paraphrase"]),
        "tokens_by_role": {
            role: {
                "first": sum(r["first_tokens_by_role"].get(role, 0) for r in rows),
                "replay": sum(r["tokens_by_role"].get(role, 0) for r in rows),
            }
            for role in sorted(
                {k for r in rows for k in (*r["first_tokens_by_role"], *r["tokens_by_role"])}
            )
        },
        "retrieval_hits": hits,
        "retrieval_expected": wanted,
        "retrieval_hit_rate": _ratio(hits, wanted),
        "first_tools_gone": sorted({n for r in rows for n in r["first_tools_gone"]}),
    }


# ------------------------------------------------------------------ the replay


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


def replay_key(state: Mapping[str, Any], tasks: Sequence[ReplayTask], batch_size: int) -> str:
    """What makes two replays the same: the library's tools, the tasks, the batch size."""
    text = json.dumps([state["digest"], [[t.task.id, t.task.question] for t in tasks], batch_size])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def run_replay(
    run_dir: str | Path,
    *,
    paraphrases: str | Path | None = None,
    distractors: int = 0,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    library: str | Path | None = None,
    replay_dir: str | Path | None = None,
    batch_size: int | None = None,
    tasks_source: str | None = None,
    context: InsituContext | Mapping[str, Any] | None = None,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    scripted: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay a run's completed tasks against its frozen library and measure what holds.

    Args:
        run_dir: The run folder.
        paraphrases: A paraphrase file (JSONL, see the module docstring).
        distractors: Pad a copy of the library to this many tools with inert
            distractors (0: replay against the library itself).
        data_dir: The ``tool_retrieval`` corpus of the distractors.
        cache_dir: Where distractor vectors and padded libraries are kept.
        library: The library to replay against (default: the run's).
        replay_dir: The replay's run folder (default: under ``RUN_DIR/replay/``).
        batch_size: Tasks run at once (default: the run's batch size).
        tasks_source: Where the run's tasks are, when ``run.json``'s is not found.
        context: Settings (models, ``retrieval_k``, limits).
        models: Chat model(s) instead of the settings' endpoint.
        scripted: ``models`` are the scripted test double (recorded and shown).
        log: Progress lines.

    Returns:
        The report: the headline figures (:func:`summarize`), ``rows`` (one per
        task), the library before and after, distractors, settings and machine.

    Raises:
        ReplayError: See :func:`read_run` and :func:`read_paraphrases`; or no library.
        DistractorError: Distractors that cannot be built as asked.
        RunMismatchError: ``replay_dir`` holds another replay.
        ConfigurationError, ModelEndpointError, StoreError: As :func:`insitu.evolve.evolve`.
    """
    from insitu.evals.distractors import padded_library
    from insitu.evolve import evolve as evolve_run
    from insitu.evolve import read_predictions

    say = log or (lambda _message: None)
    started = time.perf_counter()
    load_at_start = _load()
    run = read_run(run_dir, tasks_source)
    chosen_paraphrases, skipped = read_paraphrases(paraphrases, run) if paraphrases else ({}, [])
    items = replay_tasks(run, chosen_paraphrases)
    settings = InsituContext.coerce(context)
    source = Path(library or run.meta.get("store_dir") or "")
    if not (source / "tools.db").is_file():
        raise ReplayError(
            f"no tool library at {source}"
            + ("" if library else " (the run's store_dir)")
            + "; pass the library with --store DIR"
        )
    padded = None
    store_dir = source
    if distractors:
        if data_dir is None:
            raise ReplayError("--distractors needs the tool_retrieval corpus: pass --data DIR")
        padded = padded_library(
            source,
            distractors,
            data_dir=Path(data_dir),
            cache_dir=Path(cache_dir) if cache_dir else None,
            log=say,
        )
        store_dir = Path(padded.path)
    batch = batch_size or int(run.meta.get("batch_size") or 8)
    settings = replace(
        settings, store_dir=str(store_dir), freeze_library=True, batch_concurrency=batch
    )
    store = open_library(store_dir, settings)
    settings = replace(settings, embedding=store.embedding_name)
    before = library_state(store)
    if replay_dir is None:
        label = f"distractors-{distractors}" if distractors else "library"
        replay_dir = run.run_dir / "replay" / f"{label}-{replay_key(before, items, batch)}"
    replay_dir = Path(replay_dir)
    say(
        f"replaying {len(items)} task(s) ({len(run.tasks)} completed, "
        f"{len(items) - len(run.tasks)} paraphrase(s)) against {before['tools']:,} tools "
        f"into {replay_dir}"
    )
    replaying = time.perf_counter()
    evolve_run(
        [item.task for item in items],
        run_dir=replay_dir,
        batch_size=batch,
        context=settings,
        models=models,
        tool_store=store,
        system="replay",
        tasks_source=f"replay of {run.run_dir}",
        scripted=scripted,
        on_batch=lambda step: say(
            f"batch {step['batch']}: {step['tasks_processed']}/{len(items)} tasks replayed"
        ),
    )
    replay_s = time.perf_counter() - replaying
    after = library_state(store)
    by_id = {p["id"]: p for p in read_predictions(replay_dir)}

    def in_library(name: str) -> bool:
        return store.has(name, include_archived=False)

    rows = [task_row(item, by_id.get(item.task.id), run, in_library) for item in items]
    for row in rows:
        missed = [n for n in row["first_tools"] if n not in row["first_tools_gone"]]
        missed = [n for n in missed if n not in row["hit_ranks"]]
        if missed:  # how far down the search the Manager's top k left them
            row["miss_ranks"] = search_ranks(store, row["question"], missed)
    figures = summarize(rows)
    from insitu.evals.harness import SCRIPTED_NOTE

    run_scripted = bool(run.meta.get("scripted"))
    return {
        **figures,
        "scripted": scripted or run_scripted,
        "note": SCRIPTED_NOTE if scripted or run_scripted else None,
        "replay_scripted": scripted,
        "first_solve_scripted": run_scripted,
        "library_unchanged": before == after,
        "library_before": before,
        "library_after": after,
        "run_dir": str(run.run_dir),
        "replay_dir": str(replay_dir),
        "library": str(source),
        "replayed_library": str(store_dir),
        "tasks_source": run.tasks_source,
        "paraphrases_file": str(paraphrases) if paraphrases else None,
        "paraphrases_skipped": skipped,
        "distractors": None
        if padded is None
        else {"requested": distractors, "data_dir": str(data_dir), **padded.__dict__},
        "batch_size": batch,
        "retrieval_k": settings.retrieval_k,
        "replay_s": round(replay_s, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "machine": {
            "system": f"{platform.system()} {platform.machine()}",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_start": load_at_start,
            "load_at_end": _load(),
        },
        "created_at": datetime.now(UTC).isoformat(),
        "rows": rows,
    }


# ------------------------------------------------------------------ display


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """``[figure, value, what it counts]`` rows of the headline table."""
    padded = report.get("distractors")
    library = report["library_before"]
    return [
        [
            "re-solved",
            f"{report['resolved']}/{report['tasks']} ({_pct(report['resolve_rate'])})",
            f"completed and, where a reference answer exists, correct "
            f"({report['correct']}/{report['graded']} graded correct)",
        ],
        [
            "tools created",
            str(report["tools_created"]),
            "by the replay's episodes (must be 0); library "
            + ("unchanged" if report["library_unchanged"] else "CHANGED"),
        ],
        [
            "tokens ratio",
            "-" if report["tokens_ratio"] is None else f"{report['tokens_ratio']:.2f}",
            f"replay {report['replay_tokens']:,} / first solve {report['first_tokens']:,} tokens "
            f"(the run's tasks: {_fmt_ratio(report['tokens_ratio_originals'])}, "
            f"paraphrases: {_fmt_ratio(report['tokens_ratio_paraphrases'])}; "
            f"first solve built a tool: {_fmt_ratio(report['tokens_ratio_first_built'])}, "
            f"reused one: {_fmt_ratio(report['tokens_ratio_first_reused'])})",
        ],
        [
            "retrieval hit rate",
            _pct(report["retrieval_hit_rate"]),
            f"{report['retrieval_hits']}/{report['retrieval_expected']} first-solve tools among "
            f"the Manager's top {report['retrieval_k']} candidates",
        ],
        [
            "library",
            f"{library['tools']:,} tools",
            "the run's library, frozen"
            if padded is None
            else f"a copy padded with {padded['distractors']:,} inert distractors "
            + (
                "(from the cache"
                + (f"; built in {padded['build_s']:.1f} s" if padded["build_s"] else "")
                + ")"
                if padded["cached"]
                else f"(built in {padded['build_s']:.1f} s, {padded['embedded']:,} texts "
                f"embedded in {padded['embed_s']:.1f} s)"
            ),
        ],
    ]


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def task_table_rows(report: Mapping[str, Any], limit: int = 40) -> tuple[list[list[str]], int]:
    """Per-task rows (not re-solved and retrieval misses first), and how many were left out."""
    rows = sorted(
        report["rows"],
        key=lambda r: (r["resolved"], r["hits"] >= r["expected_hits"]),
    )
    shown = [
        [
            r["id"],
            r["kind"],
            str(r["status"]),
            "yes" if r["resolved"] else "NO",
            f"{r['hits']}/{r['expected_hits']}",
            f"{r['first_tokens']:,} -> {r['tokens']:,}",
            _fmt_ratio(r["tokens_ratio"]),
            ", ".join(r["tools_created"]) or "-",
        ]
        for r in rows[:limit]
    ]
    return shown, max(0, len(rows) - limit)
