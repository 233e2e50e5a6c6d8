"""Compare systems on the same tasks with the same model, in one resumable run.

Systems (the Yunjue report's comparisons):

* ``insitu`` — the evolving library, batch size B (warm start with ``library=``);
* ``insitu-frozen`` — a snapshot of a library, no new tools (``library=``, else
  the library the ``insitu`` system of this comparison ended with);
* ``no-reuse`` — tools are built and used, then dropped: every task starts
  from an empty library;
* ``python-interpreter`` — the same Executor with one sandboxed "run Python"
  tool and no library (the report's batch-size -> infinity baseline).

Each system runs with :func:`insitu.evolve.evolve` into ``RUN_DIR/<system>/``
(resumable), its predictions are graded (kept in ``predictions.jsonl``; a task
run again counts by its last line), and ``comparison.json``, ``comparison.md``
and ``report.html`` compare them. A model endpoint outage stops the comparison
with :class:`insitu.evolve.EndpointOutageError`; running it again resumes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from insitu.context import InsituContext
from insitu.evals.graders import grade
from insitu.evals.tasks import Task
from insitu.evolve import (
    PREDICTIONS_FILE,
    RUN_FILE,
    STEPS_FILE,
    evolve,
    last_row_per_task,
    read_jsonl,
    read_predictions,
    summarize_run,
)
from insitu.services import open_sandbox
from insitu.tool_store.costs import load_prices

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

SYSTEMS = ("insitu", "insitu-frozen", "no-reuse", "python-interpreter")
SCRIPTED_NOTE = "Produced with a scripted test model — these numbers are not model results."


class SystemResult(BaseModel):
    """One system's figures in a comparison."""

    system: str
    run_dir: str
    tasks: int
    graded: int
    correct: int
    accuracy: float | None
    accuracy_ci95: tuple[float, float] | None
    completed: int
    failed: int
    tokens_per_task: dict[str, float] = Field(description="Input + output tokens, by role.")
    total_tokens_per_task: float
    cost_per_task: float | None = Field(description="From the price table; None if unpriced.")
    tool_calls: int
    tool_success_rate: float | None
    tools_created: int
    library_size: int
    egl: list[float | None]
    wall_time_s: float


class Comparison(BaseModel):
    """A comparison run: its settings and one result per system."""

    suite: str
    scripted: bool
    batch_size: int
    tasks: int
    systems: list[SystemResult]
    created_at: str


# ------------------------------------------------------------------ statistics


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion (None without observations)."""
    if total <= 0:
        return None
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def cost_of(
    tokens: Mapping[str, Mapping[str, int]],
    models: Mapping[str, str],
    prices: Mapping[str, Mapping[str, float]],
) -> float | None:
    """Dollar cost of token counts by role, or None if a used model has no price."""
    total = 0.0
    for role, counts in tokens.items():
        price = prices.get(models.get(role, ""))
        if price is None:
            return None
        total += counts.get("input_tokens", 0) * price["input"] / 1e6
        total += counts.get("output_tokens", 0) * price["output"] / 1e6
    return total


# ------------------------------------------------------------------ grading


def grade_predictions(
    run_dir: Path,
    tasks: Sequence[Task],
    *,
    judge_model: BaseChatModel | None = None,
) -> None:
    """Grade each task's last prediction if it has no ``grade`` (rewrites the file atomically).

    Lines a retry superseded are left ungraded: they count for nothing.
    """
    path = run_dir / PREDICTIONS_FILE
    rows = read_jsonl(path)
    by_id = {t.id: t for t in tasks}
    changed = False
    for row in last_row_per_task(rows):
        task = by_id.get(row["id"])
        if "grade" in row or task is None or (task.answer is None and task.grader != "code"):
            continue
        try:
            result = grade(task, row.get("answer") or "", judge_model=judge_model)
            row["grade"] = result.model_dump()
        except ValueError as exc:  # e.g. a judge task without a judge model
            row["grade"] = {"correct": False, "score": 0.0, "reason": str(exc), "grader": "none"}
        changed = True
    if changed:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        os.replace(tmp, path)


def summarize_system(
    system: str, run_dir: Path, prices: Mapping[str, Mapping[str, float]]
) -> SystemResult:
    """Compute one system's figures from its run directory."""
    meta = json.loads((run_dir / RUN_FILE).read_text())
    predictions = read_predictions(run_dir)
    steps = read_jsonl(run_dir / STEPS_FILE)
    run = summarize_run(run_dir)
    graded = [p for p in predictions if "grade" in p]
    correct = sum(1 for p in graded if p["grade"]["correct"])
    tasks = len(predictions)
    per_task = {
        role: round((c["input_tokens"] + c["output_tokens"]) / tasks, 1) if tasks else 0.0
        for role, c in sorted(run.tokens.items())
    }
    cost = cost_of(run.tokens, meta.get("models") or {}, prices)
    rate = run.tool_success_rate
    return SystemResult(
        system=system,
        run_dir=str(run_dir),
        tasks=tasks,
        graded=len(graded),
        correct=correct,
        accuracy=round(correct / len(graded), 4) if graded else None,
        accuracy_ci95=wilson_interval(correct, len(graded)),
        completed=run.completed,
        failed=run.failed,
        tokens_per_task=per_task,
        total_tokens_per_task=round(sum(per_task.values()), 1),
        cost_per_task=None if cost is None or not tasks else round(cost / tasks, 6),
        tool_calls=sum(int(s["invocations"]) for s in steps),
        tool_success_rate=None if rate is None else round(rate, 4),
        tools_created=sum(int(s["tools_created"]) for s in steps),
        library_size=run.library_size,
        egl=[s["egl"] for s in steps],
        wall_time_s=round(sum(float(s["wall_time_s"]) for s in steps), 2),
    )


# ------------------------------------------------------------------ the run


def _copy_library(source: Path, target: Path, embedding: str | None) -> None:
    """Copy a library (through export/import, never by files of an open store), once."""
    from insitu.tool_store import ToolStore, export_library, import_library

    done = target / ".copied"
    if done.exists():
        return
    export_dir = target.parent / f".{target.name}-export"
    with ToolStore.open(source, read_only=True) as store:
        export_library(store, export_dir)
    with ToolStore.open(target, embedding=embedding) as store:
        import_library(store, export_dir, on_conflict="replace")
    done.write_text(str(source))


def system_settings(system: str, base: InsituContext, run_dir: Path) -> tuple[InsituContext, str]:
    """The settings and solver a system runs with (its own store under ``run_dir``)."""
    store_dir = str(run_dir / system / "store")
    settings = replace(base, store_dir=store_dir)
    if system == "insitu-frozen":
        return replace(settings, freeze_library=True), "episode"
    if system == "no-reuse":
        return replace(settings, keep_new_tools=False), "episode"
    if system == "python-interpreter":
        return replace(settings, freeze_library=True), "interpreter"
    if system == "insitu":
        return settings, "episode"
    raise ValueError(f"unknown system {system!r}; systems are {', '.join(SYSTEMS)}")


def run_comparison(
    tasks: Sequence[Task],
    *,
    systems: Sequence[str],
    run_dir: str | Path,
    batch_size: int = 8,
    suite: str = "",
    context: InsituContext | Mapping[str, Any] | None = None,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    library: str | Path | None = None,
    judge_model: BaseChatModel | None = None,
    prices: str | Path | None = None,
    scripted: bool = False,
    retry_failed: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_system: Callable[[str], None] | None = None,
) -> Comparison:
    """Run every system on the same tasks, grade them, and write the comparison.

    Args:
        tasks: The tasks (each system sees them in the same order and batches).
        systems: Names from :data:`SYSTEMS`.
        run_dir: One folder per system goes here, plus the comparison files.
        batch_size: Batch size of every system.
        suite: Where the tasks came from (for the record).
        context: Base settings (models, limits).
        models: Chat model(s) instead of ``ChatOpenAI`` from the environment.
        library: A library to start ``insitu`` from (copied) and to freeze for
            ``insitu-frozen``.
        judge_model: Grades ``judge`` tasks.
        prices: A price table file (default: ``evals/prices.json``).
        scripted: The models are scripted test doubles; every output says so.
        retry_failed: On resume, run every failed task again, not only those
            whose model endpoint failed (see :func:`insitu.evolve.evolve`).
        on_event: Progress events of the runs.
        on_system: Called with each system's name as it starts.

    Returns:
        The comparison (also written to ``comparison.json`` / ``.md`` and
        ``report.html`` in ``run_dir``).

    Raises:
        EndpointOutageError: Tasks in a row failed on the model endpoint; the
            systems' runs so far are kept, and calling again resumes them.
    """
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise ValueError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    frozen_source = Path(library) if library else None
    if "insitu-frozen" in systems and frozen_source is None and "insitu" not in systems:
        raise ValueError("insitu-frozen needs --library, or the insitu system in the same run")
    base = InsituContext.coerce(context)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    price_table = load_prices(prices)
    # One sandbox for every system: one warm pool and one tool environment.
    sandbox = open_sandbox(replace(base, store_dir=str(run_dir)))
    ordered = sorted(systems, key=SYSTEMS.index)  # insitu before the frozen snapshot of it
    results = []
    for system in ordered:
        if on_system is not None:
            on_system(system)
        settings, solver = system_settings(system, base, run_dir)
        if system == "insitu" and frozen_source is not None:
            _copy_library(frozen_source, Path(settings.store_dir), base.embedding)
        if system == "insitu-frozen":
            source = frozen_source or run_dir / "insitu" / "store"
            _copy_library(source, Path(settings.store_dir), base.embedding)
        system_dir = run_dir / system
        evolve(
            tasks,
            run_dir=system_dir,
            batch_size=batch_size,
            context=settings,
            models=models,
            sandbox=sandbox,
            system=system,
            solver=solver,
            tasks_source=suite,
            scripted=scripted,
            retry_failed=retry_failed,
            on_event=on_event,
        )
        grade_predictions(system_dir, tasks, judge_model=judge_model)
        results.append(summarize_system(system, system_dir, price_table))
    comparison = Comparison(
        suite=suite,
        scripted=scripted,
        batch_size=batch_size,
        tasks=len(tasks),
        systems=results,
        created_at=datetime.now(UTC).isoformat(),
    )
    write_comparison(comparison, run_dir)
    return comparison


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown table (with the scripted warning when it applies)."""
    lines = []
    if comparison.scripted:
        lines += [f"> **{SCRIPTED_NOTE}**", ""]
    lines += [
        f"# Comparison on {comparison.suite or 'tasks'} ({comparison.tasks} tasks, "
        f"batch size {comparison.batch_size})",
        "",
        "| system | accuracy | 95% CI | completed | tokens/task | cost/task | tool calls "
        "| tool success | tools created | library | final EGL | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison.systems:
        ci = (
            "-" if r.accuracy_ci95 is None else f"{r.accuracy_ci95[0]:.2f}–{r.accuracy_ci95[1]:.2f}"
        )
        final_egl = next((e for e in reversed(r.egl) if e is not None), None)
        lines.append(
            f"| {r.system} | {_fmt(r.accuracy)} | {ci} | {r.completed}/{r.tasks} "
            f"| {r.total_tokens_per_task:.0f} | {_fmt(r.cost_per_task, '${:.4f}')} "
            f"| {r.tool_calls} | {_fmt(r.tool_success_rate, '{:.1%}')} | {r.tools_created} "
            f"| {r.library_size} | {_fmt(final_egl)} | {r.wall_time_s:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def write_comparison(comparison: Comparison, run_dir: Path) -> tuple[Path, Path, Path]:
    """Write ``comparison.json``, ``comparison.md`` and ``report.html`` into ``run_dir``."""
    from insitu.report import write_report

    json_path = run_dir / "comparison.json"
    json_path.write_text(comparison.model_dump_json(indent=1))
    md_path = run_dir / "comparison.md"
    md_path.write_text(comparison_markdown(comparison))
    html_path = write_report([Path(r.run_dir) for r in comparison.systems], out_dir=run_dir)
    return json_path, md_path, html_path
