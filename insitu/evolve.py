"""Run a task stream in batches through the batch graph, resumably.

    from insitu.evolve import evolve
    from insitu.evals.tasks import load_tasks
    summary = evolve(load_tasks("tasks.jsonl"), run_dir="runs/a", batch_size=8)

A run directory holds:

* ``run.json`` — what the run is (tasks, batch size, store, model, whether the
  model was a scripted test double);
* ``predictions.jsonl`` — one line per task: answer, status, tools, tokens;
* ``steps.jsonl`` — one line per batch: library size, tools created / merged /
  archived, invocations, successes, tool success rate, EGL, tokens, wall time;
* ``checkpoints.sqlite`` — LangGraph checkpoints of every batch.

Killed at any moment, the same call resumes: finished batches are skipped
(their step line is written last), an interrupted batch resumes from its
checkpoint (finished episodes are not re-run), the batch's commit is
idempotent, and predictions are written once per task id.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from insitu.context import ROLES, InsituContext
from insitu.evolution import egl, tool_success_rate
from insitu.graphs.state import merge_usage
from insitu.services import check_model_configuration, open_store

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from insitu.evals.tasks import Task
    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore

RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
STEPS_FILE = "steps.jsonl"
CHECKPOINTS_FILE = "checkpoints.sqlite"


class RunMismatchError(ValueError):
    """The run directory holds another run (other tasks or batch size)."""


class EvolveSummary(BaseModel):
    """What a run did, for the caller and the CLI's final table."""

    run_dir: str
    batches: int
    tasks: int
    completed: int
    incomplete: int
    failed: int
    library_size: int
    egl: float | None
    tool_success_rate: float | None
    tokens: dict[str, dict[str, int]]
    wall_time_s: float


# ------------------------------------------------------------------ JSONL files


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by this module, dropping a torn last line.

    A kill during an append can leave a partial last line; it is cut off the
    file (it will be written again), so appends continue cleanly.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good)
    return rows


def append_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows durably (flushed and fsynced before returning)."""
    if not rows:
        return
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ------------------------------------------------------------------ the run


def plan_batches(tasks: Sequence[Task], batch_size: int) -> list[list[Task]]:
    """Split the stream into batches, in order (the same split on every resume)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    return [list(tasks[i : i + batch_size]) for i in range(0, len(tasks), batch_size)]


def _tasks_digest(tasks: Sequence[Task]) -> str:
    text = json.dumps([[t.id, t.question] for t in tasks])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_run(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Create ``run.json``, or check that the directory holds this same run."""
    path = run_dir / RUN_FILE
    if path.exists():
        earlier = json.loads(path.read_text())
        for key in ("tasks_digest", "batch_size", "frozen"):
            if earlier.get(key) != meta[key]:
                raise RunMismatchError(
                    f"{run_dir} holds another run ({key} was {earlier.get(key)!r}, now "
                    f"{meta[key]!r}); use a new --run-dir, or the same tasks and settings to resume"
                )
        return earlier
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)
    return meta


def _question(task: Task, api_base: str | None) -> str:
    """The task text for the episode (files are passed separately, into the workdir)."""
    return task.model_copy(update={"files": []}).prompt(api_base)


@contextmanager
def _local_api_if_needed(tasks: Sequence[Task]) -> Iterator[str | None]:
    """Start the evaluation suite's loopback API when a task refers to it."""
    if not any(t.needs_api for t in tasks):
        yield None
        return
    from insitu.evals.local_api import LocalAPI

    api = LocalAPI()
    api.start()
    try:
        yield api.base_url
    finally:
        api.stop()


def prediction_row(task: Task, result: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """One line of ``predictions.jsonl``."""
    return {
        "id": task.id,
        "question": task.question,
        "answer": result.get("answer", ""),
        "status": result.get("status", "failed"),
        "tools_used": list(result.get("tools_used") or []),
        "tools_created": list(result.get("tools_created") or []),
        "tools_repaired": list(result.get("tools_repaired") or []),
        "tokens": dict(result.get("usage") or {}),
        "metrics": dict(result.get("metrics") or {}),
        "error": result.get("error"),
        "batch": batch,
        "expected": task.answer,
        "wall_time_s": result.get("wall_time_s"),
    }


def step_row(
    step: int,
    batch: Sequence[Task],
    final: Mapping[str, Any],
    earlier_steps: Sequence[Mapping[str, Any]],
    library_size: int,
    wall_time_s: float,
) -> dict[str, Any]:
    """One line of ``steps.jsonl``: the batch's counters and the cumulative EGL."""
    results = list(final.get("results") or [])
    absorb = final.get("absorb") or {}
    metrics = [r.get("metrics") or {} for r in results]
    created = sum(len(r.get("tools_created") or []) for r in results)
    invocations = sum(int(m.get("tool_invocations", 0)) for m in metrics)
    successes = sum(int(m.get("tool_successes", 0)) for m in metrics)
    usage: dict[str, Any] = dict(final.get("usage") or {})
    for result in results:
        usage = merge_usage(usage, result.get("usage") or {})
    curve = egl(
        [*(int(s["tools_created"]) for s in earlier_steps), created],
        [*(int(s["invocations"]) for s in earlier_steps), invocations],
    )
    return {
        "step": step,
        "tasks": [t.id for t in batch],
        "tasks_processed": sum(len(s["tasks"]) for s in earlier_steps) + len(batch),
        "library_size": library_size,
        "tools_created": created,
        "tools_added": len(absorb.get("added") or []),
        "tools_merged": len(absorb.get("merged") or []),
        "tools_archived": len(absorb.get("archived") or []),
        "tools_repaired": len(absorb.get("repaired") or []),
        "invocations": invocations,
        "successes": successes,
        "tool_success_rate": tool_success_rate(successes, invocations),
        "egl": curve[-1],
        "tokens": usage,
        "wall_time_s": round(wall_time_s, 3),
        "failed_tasks": sum(1 for r in results if r.get("status") == "failed"),
        "absorb": absorb,
        "commit": final.get("commit") or {},
    }


def evolve(
    tasks: Sequence[Task],
    *,
    run_dir: str | Path,
    batch_size: int = 8,
    context: InsituContext | Mapping[str, Any] | None = None,
    store_dir: str | Path | None = None,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    system: str = "insitu",
    solver: Literal["episode", "interpreter"] = "episode",
    tasks_source: str = "",
    scripted: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> EvolveSummary:
    """Solve a stream of tasks in batches, evolving the tool library; resume if interrupted.

    Args:
        tasks: The stream, in order (ids unique).
        run_dir: Where predictions, steps and checkpoints are written.
        batch_size: Tasks per batch (run in parallel, then absorbed together).
        context: Settings (``freeze_library=True`` evaluates a snapshot).
        store_dir: Shortcut for ``context.store_dir``.
        models: Chat model(s) instead of ``ChatOpenAI`` from the environment.
        store: An open ``ToolStore`` to use.
        sandbox: A ``Sandbox`` to use.
        system: The name reports give this run.
        solver: ``episode`` (the agent), or ``interpreter`` (the python-interpreter
            baseline: one "run Python" tool, no library).
        tasks_source: Where the tasks came from (recorded in ``run.json``).
        scripted: The models are scripted test doubles (recorded; reports say so).
        on_event: Receives each progress event (episode and batch events).
        on_batch: Receives each step row as its batch completes.

    Returns:
        The run's summary.

    Raises:
        ConfigurationError: No model endpoint and no injected models.
        RunMismatchError: ``run_dir`` holds a different run.
        ValueError: Duplicate task ids or a bad batch size.
    """
    from insitu.api import sqlite_checkpointer
    from insitu.graphs.evolve import compile_evolve_graph

    settings = InsituContext.coerce(context)
    if store_dir is not None:
        settings = replace(settings, store_dir=str(store_dir))
    if models is None:
        check_model_configuration(settings)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"task ids must be unique; repeated: {repeated[:10]}")
    batches = plan_batches(tasks, batch_size)
    run_dir = Path(run_dir)
    meta = _open_run(
        run_dir,
        {
            "run_id": f"run-{_tasks_digest(tasks)}-b{batch_size}",
            "system": system,
            "solver": solver,
            "tasks_file": tasks_source,
            "tasks": len(tasks),
            "tasks_digest": _tasks_digest(tasks),
            "batch_size": batch_size,
            "store_dir": str(Path(settings.store_dir).resolve()),
            "frozen": settings.freeze_library,
            "scripted": scripted,
            "model": "scripted test double" if scripted else settings.model_for("executor"),
            "models": {
                role: "scripted" if scripted else settings.model_for(role) for role in ROLES
            },
            "started_at": datetime.now(UTC).isoformat(),
        },
    )
    steps = read_jsonl(run_dir / STEPS_FILE)
    done_steps = {int(s["step"]) for s in steps}
    written = {p["id"] for p in read_jsonl(run_dir / PREDICTIONS_FILE)}
    store = store if store is not None else open_store(settings)
    started = time.monotonic()
    with ExitStack() as stack:
        saver = stack.enter_context(sqlite_checkpointer(run_dir, CHECKPOINTS_FILE))
        api_base = stack.enter_context(_local_api_if_needed(tasks))
        graph = compile_evolve_graph(
            checkpointer=saver,
            max_concurrency=settings.batch_concurrency,
            models=models,
            store=store,
            sandbox=sandbox,
            solver=solver,
        )
        for number, batch in enumerate(batches, 1):
            if number in done_steps:
                continue
            batch_started = time.monotonic()
            config = {"configurable": {"thread_id": f"{meta['run_id']}:batch-{number}"}}
            snapshot = graph.get_state(config)
            if not snapshot.values:
                payload: dict[str, Any] | None = {
                    "batch_id": f"{meta['run_id']}-b{number}",
                    "tasks": [
                        {"id": t.id, "question": _question(t, api_base), "files": t.files}
                        for t in batch
                    ],
                }
            else:
                payload = None  # resume the interrupted batch (or read the finished one)
            final = dict(snapshot.values) if snapshot.values and not snapshot.next else None
            if final is None:
                # Only progress events are streamed (from the episodes too); every
                # episode's state values would be copied to this loop for nothing.
                for _namespace, chunk in graph.stream(
                    payload, config, context=settings, stream_mode="custom", subgraphs=True
                ):
                    if on_event is not None:
                        on_event(chunk)
                final = dict(graph.get_state(config).values)
            by_id = {r.get("task_id"): r for r in final.get("results") or []}
            rows = [
                prediction_row(t, by_id.get(t.id) or {"error": "no result"}, number)
                for t in batch
                if t.id not in written
            ]
            append_jsonl(run_dir / PREDICTIONS_FILE, rows)
            written |= {row["id"] for row in rows}
            step = step_row(
                number,
                batch,
                final,
                steps,
                store.count(),
                time.monotonic() - batch_started,
            )
            append_jsonl(run_dir / STEPS_FILE, [step])
            steps.append(step)
            if on_batch is not None:
                on_batch(step)
    return summarize_run(run_dir, wall_time_s=time.monotonic() - started)


def summarize_run(run_dir: str | Path, *, wall_time_s: float | None = None) -> EvolveSummary:
    """Summarise a run directory from its files."""
    run_dir = Path(run_dir)
    predictions = read_jsonl(run_dir / PREDICTIONS_FILE)
    steps = read_jsonl(run_dir / STEPS_FILE)
    tokens: dict[str, Any] = {}
    for step in steps:
        tokens = merge_usage(tokens, step.get("tokens") or {})
    statuses = [p.get("status") for p in predictions]
    invocations = sum(int(s["invocations"]) for s in steps)
    successes = sum(int(s["successes"]) for s in steps)
    return EvolveSummary(
        run_dir=str(run_dir),
        batches=len(steps),
        tasks=len(predictions),
        completed=statuses.count("completed"),
        incomplete=statuses.count("incomplete"),
        failed=statuses.count("failed"),
        library_size=int(steps[-1]["library_size"]) if steps else 0,
        egl=steps[-1]["egl"] if steps else None,
        tool_success_rate=tool_success_rate(successes, invocations),
        tokens=tokens,
        wall_time_s=round(
            wall_time_s if wall_time_s is not None else sum(s["wall_time_s"] for s in steps), 3
        ),
    )
