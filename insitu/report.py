"""Reports on runs of ``insitu evolve``: one offline HTML page with plots and a summary.

A run folder written by ``insitu evolve`` holds three files (JSON; the last two
JSON Lines, one object per line):

* ``run.json``: what was run (``run_id``, ``system``, ``tasks_file``,
  ``batch_size``, ``store_dir``, ``frozen``, ``scripted``, ``model``,
  ``sandbox`` with its ``backend`` and ``isolation``, ``started_at``); a run whose
  tools ran in the degraded sandbox gets a banner, as a scripted one does;
* ``steps.jsonl``: one line per completed batch (``step``, cumulative
  ``tasks_processed``, ``library_size``, this batch's ``tools_created``,
  ``invocations``, ``successes``, ``tool_success_rate``, cumulative ``egl``,
  ``tokens`` per role, ``wall_time_s``, ``failed_tasks``, ...);
* ``predictions.jsonl``: one line per task (``id``, ``status``,
  ``tools_used`` as ``name@version``, ``tokens`` per role, optional ``grade``
  with ``correct``, ...).

:func:`write_report` reads one or more run folders (an ``insitu`` run next to
baselines such as ``no-reuse`` or ``python-interpreter``) and writes
``report.html`` and one PNG per plot into a folder. Every plot shows the runs
side by side, each labelled by its ``system``. The page has inline CSS and
refers only to the PNG files next to it, so it opens offline.

A run folder must have a non-empty ``run.json`` and ``predictions.jsonl``.
``steps.jsonl`` may be missing or empty: ``insitu evolve`` writes it when the
first batch completes, so a run stopped before that has predictions but no
steps (the plots drawn from steps then say "no data"). A torn last line (no
newline, not JSON: a run killed while appending, or still running) is left
out with a note, as ``insitu evolve`` itself does on resume. Anything else
missing, empty or malformed raises :class:`ReportError` naming the file (and
line).
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from insitu.evolve import last_row_per_task

RUN_FILE = "run.json"
STEPS_FILE = "steps.jsonl"
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.html"

#: The header every report of a run made with a scripted test model carries.
SCRIPTED_BANNER = "Produced with a scripted test model — these numbers are not model results."
#: The header of a report on a run whose tools ran without the bubblewrap sandbox.
DEGRADED_BANNER = (
    "Generated tools ran in the DEGRADED sandbox (weak isolation): no filesystem or network "
    "isolation, only rlimits, a separate uid and a scrubbed environment."
)

#: Plot key → (PNG file name, heading in the report).
PLOTS: dict[str, tuple[str, str]] = {
    "egl": ("report_egl.png", "EGL per step"),
    "library_size": ("report_library_size.png", "Library size"),
    "tools_created": ("report_tools_created.png", "Tools created per batch"),
    "tool_usage": ("report_tool_usage.png", "Most used tools"),
    "success_rate": ("report_success_rate.png", "Tool success rate per batch"),
}

NO_DATA = "no data"
TOKEN_KEYS = ("input_tokens", "output_tokens", "total_tokens", "calls")


class ReportError(Exception):
    """A run folder or one of its files is missing, empty or malformed.

    Attributes:
        path: The folder or file at fault.
    """

    def __init__(self, path: Path, problem: str) -> None:
        """Build the error.

        Args:
            path: The folder or file at fault.
            problem: What is wrong with it (the message is ``"{path}: {problem}"``).
        """
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass(slots=True)
class Step:
    """One completed batch of a run (a line of ``steps.jsonl``).

    Attributes:
        step: Index of the batch, from 1.
        tasks_processed: Tasks processed up to and including this batch.
        library_size: Active tools at the end of the batch.
        tools_created: Tools created in this batch.
        invocations: Tool calls made in this batch.
        successes: Tool calls of this batch that succeeded.
        tool_success_rate: ``successes / invocations`` (``None`` without calls).
        egl: Cumulative tools created / cumulative tool invocations (``None``
            while no tool has been invoked).
        tokens: Tokens of this batch per role.
        wall_time_s: Wall time of this batch in seconds.
        failed_tasks: Tasks of this batch that failed.
    """

    step: int
    tasks_processed: int | None
    library_size: int | None
    tools_created: int
    invocations: int
    successes: int
    tool_success_rate: float | None
    egl: float | None
    tokens: dict[str, dict[str, int]]
    wall_time_s: float | None
    failed_tasks: int


@dataclass(slots=True)
class Prediction:
    """One task of a run (a line of ``predictions.jsonl``).

    Attributes:
        id: The task id.
        status: ``completed``, ``incomplete`` or ``failed``.
        tools_used: Tools called, as ``name@version``.
        tokens: Tokens per role.
        correct: The grade's verdict, ``None`` when the task was not graded.
        wall_time_s: Wall time of the task in seconds.
    """

    id: str
    status: str
    tools_used: list[str]
    tokens: dict[str, dict[str, int]]
    correct: bool | None
    wall_time_s: float | None


@dataclass(slots=True)
class Run:
    """One run folder, read and checked.

    Attributes:
        path: The run folder.
        meta: The content of ``run.json``.
        steps: Completed batches, by step.
        predictions: Tasks, in file order.
        label: How plots and tables name the run: its ``system``, made unique
            among the runs of one report by :func:`load_runs`.
        warnings: Oddities worth showing in the report.
    """

    path: Path
    meta: dict[str, Any]
    steps: list[Step]
    predictions: list[Prediction]
    label: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def system(self) -> str:
        """The run's ``system`` from ``run.json`` (default: the folder's name)."""
        system = self.meta.get("system")
        return str(system) if system not in (None, "") else self.path.name

    @property
    def scripted(self) -> bool:
        """Whether the run was made with a scripted test model."""
        return self.meta.get("scripted") is True

    @property
    def degraded(self) -> bool:
        """Whether ``run.json`` records the run's tools as run with weaker than bwrap isolation."""
        sandbox = self.meta.get("sandbox")
        if not isinstance(sandbox, dict):
            return False  # runs recorded before the sandbox was
        return sandbox.get("backend") != "bwrap" or sandbox.get("isolation") != "strong"


@dataclass(slots=True)
class RunSummary:
    """The figures of one run that the report's summary table shows.

    Attributes:
        label: The run's label.
        path: The run folder.
        scripted: Whether a scripted test model produced the run.
        model: The model named in ``run.json`` (``""`` if none).
        tasks: Tasks in ``predictions.jsonl``.
        batches: Completed batches (lines of ``steps.jsonl``).
        completed: Tasks with status ``completed``.
        incomplete: Tasks with status ``incomplete``.
        failed: Tasks with status ``failed``.
        library_size: Active tools after the last batch (``None`` without one).
        egl: EGL after the last batch (``None`` without a batch or tool call).
        invocations: Tool calls over all batches.
        successes: Successful tool calls over all batches.
        tokens: Tokens per role summed over the batches (over the tasks when
            no batch completed; see ``tokens_source``).
        tokens_source: ``"steps"`` or ``"predictions"``.
        wall_time_s: Wall time summed over the batches (``None`` without one).
        graded: Tasks whose prediction carries a grade.
        correct: Graded tasks graded correct.
    """

    label: str
    path: Path
    scripted: bool
    model: str
    tasks: int
    batches: int
    completed: int
    incomplete: int
    failed: int
    library_size: int | None
    egl: float | None
    invocations: int
    successes: int
    tokens: dict[str, dict[str, int]]
    tokens_source: str
    wall_time_s: float | None
    graded: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        """Share of graded tasks graded correct (``None`` if none is graded)."""
        return self.correct / self.graded if self.graded else None


# --------------------------------------------------------------------------- reading


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ReportError(path, "missing (is this a run folder written by `insitu evolve`?)")
    if not path.is_file():
        raise ReportError(path, "not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ReportError(path, f"cannot be read ({exc.strerror or exc})") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if not text.strip():
        raise ReportError(path, "empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(path, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise ReportError(path, f"expected a JSON object, found {type(value).__name__}")
    return value


def _read_jsonl(
    path: Path, *, allow_empty: bool, notes: list[str]
) -> list[tuple[int, dict[str, Any]]]:
    records: list[tuple[int, dict[str, Any]]] = []
    text = _read_text(path)
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                notes.append(f"{path.name}: left out a torn last line {number} (no newline)")
                break
            raise ReportError(path, f"line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ReportError(
                path, f"line {number}: expected a JSON object, found {type(value).__name__}"
            )
        records.append((number, value))
    if not records and not allow_empty:
        raise ReportError(path, "empty" if not text.strip() else "no complete line")
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(
    record: Mapping[str, Any], key: str, path: Path, line: int, default: float | None = None
) -> float | None:
    value = record.get(key)
    if value is None:
        return default
    if not _is_number(value):
        raise ReportError(path, f"line {line}: {key!r} is {value!r}, expected a number")
    return value


def _int(
    record: Mapping[str, Any], key: str, path: Path, line: int, default: int | None = 0
) -> int | None:
    value = _number(record, key, path, line, None)
    return default if value is None else int(value)


def _tokens(value: Any, path: Path, line: int) -> dict[str, dict[str, int]]:
    if value is None:
        return {}
    problem = f"line {line}: 'tokens' must map each role to its token counts"
    if not isinstance(value, dict):
        raise ReportError(path, problem)
    tokens: dict[str, dict[str, int]] = {}
    for role, counts in value.items():
        if not isinstance(counts, dict):
            raise ReportError(path, problem)
        row = {key: _int(counts, key, path, line) or 0 for key in TOKEN_KEYS}
        if counts.get("total_tokens") is None:
            row["total_tokens"] = row["input_tokens"] + row["output_tokens"]
        tokens[str(role)] = row
    return tokens


def _read_steps(path: Path, notes: list[str]) -> list[Step]:
    if not path.exists():
        notes.append(f"no {path.name}: no batch completed, plots of steps are empty")
        return []
    steps: list[Step] = []
    created_so_far = invoked_so_far = 0
    records = _read_jsonl(path, allow_empty=True, notes=notes)
    if not records:
        notes.append(f"{path.name} is empty: no batch completed, plots of steps are empty")
    for index, (line, record) in enumerate(records):
        created = _int(record, "tools_created", path, line) or 0
        invocations = _int(record, "invocations", path, line) or 0
        successes = _int(record, "successes", path, line) or 0
        created_so_far += created
        invoked_so_far += invocations
        if "tool_success_rate" in record:
            rate = _number(record, "tool_success_rate", path, line)
        else:
            rate = successes / invocations if invocations else None
        if "egl" in record:
            egl = _number(record, "egl", path, line)
        else:
            egl = created_so_far / invoked_so_far if invoked_so_far else None
        steps.append(
            Step(
                step=_int(record, "step", path, line, index + 1) or 0,
                tasks_processed=_int(record, "tasks_processed", path, line, None),
                library_size=_int(record, "library_size", path, line, None),
                tools_created=created,
                invocations=invocations,
                successes=successes,
                tool_success_rate=rate,
                egl=egl,
                tokens=_tokens(record.get("tokens"), path, line),
                wall_time_s=_number(record, "wall_time_s", path, line),
                failed_tasks=_int(record, "failed_tasks", path, line) or 0,
            )
        )
    return sorted(steps, key=lambda s: s.step)


def _read_predictions(path: Path, notes: list[str]) -> list[Prediction]:
    predictions: list[Prediction] = []
    for line, record in _read_jsonl(path, allow_empty=False, notes=notes):
        tools_used = record.get("tools_used") or []
        if not isinstance(tools_used, list) or not all(isinstance(t, str) for t in tools_used):
            raise ReportError(path, f"line {line}: 'tools_used' must be a list of tool names")
        grade = record.get("grade")
        correct = None
        if isinstance(grade, dict) and isinstance(grade.get("correct"), bool):
            correct = grade["correct"]
        predictions.append(
            Prediction(
                id=str(record.get("id", f"line {line}")),
                status=str(record.get("status", "")),
                tools_used=tools_used,
                tokens=_tokens(record.get("tokens"), path, line),
                correct=correct,
                wall_time_s=_number(record, "wall_time_s", path, line),
            )
        )
    return predictions


def load_run(run_dir: Path) -> Run:
    """Read and check one run folder.

    Args:
        run_dir: A folder written by ``insitu evolve``.

    Returns:
        The run, labelled by its ``system`` (see :func:`load_runs` for unique labels).

    Raises:
        ReportError: The folder, ``run.json`` or ``predictions.jsonl`` is
            missing or empty, or a file is malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ReportError(run_dir, "no such run folder")
    if not run_dir.is_dir():
        raise ReportError(run_dir, "not a folder (give the run folder of `insitu evolve`)")
    notes: list[str] = []
    run = Run(
        path=run_dir,
        meta=_read_json_object(run_dir / RUN_FILE),
        steps=_read_steps(run_dir / STEPS_FILE, notes),
        predictions=_read_predictions(run_dir / PREDICTIONS_FILE, notes),
        warnings=notes,
    )
    run.label = run.system
    # A task run again (a retry pass after an outage) has a line per run: the last counts.
    run.predictions = last_row_per_task(run.predictions, key=lambda p: p.id)
    numbers = [s.step for s in run.steps]
    if len(set(numbers)) != len(numbers):
        run.warnings.append(f"{STEPS_FILE} repeats step numbers")
    return run


def load_runs(run_dirs: Sequence[Path]) -> list[Run]:
    """Read several run folders and give each a label unique within the report.

    A run is labelled by its ``system``; runs sharing one get their folder's
    name added, and a number if that is not enough.

    Args:
        run_dirs: Run folders, in the order the report shows them.

    Returns:
        The runs, in the same order.

    Raises:
        ReportError: No folder is given, or one is missing, empty or malformed.
    """
    if not run_dirs:
        raise ReportError(Path("."), "no run folder given")
    runs = [load_run(Path(d)) for d in run_dirs]
    systems = Counter(r.system for r in runs)
    for run in runs:
        if systems[run.system] > 1:
            run.label = f"{run.system} ({run.path.name})"
    taken: Counter[str] = Counter()
    for run in runs:
        taken[run.label] += 1
        if taken[run.label] > 1:
            run.label = f"{run.label} #{taken[run.label]}"
    return runs


# --------------------------------------------------------------------------- figures


def tool_name(ref: str) -> str:
    """The tool name of a reference, without its ``@version`` suffix.

    Args:
        ref: ``name@version`` or a bare name.

    Returns:
        ``name``.
    """
    name, at, _ = ref.rpartition("@")
    return name if at and name else ref


def tool_usage(tools_used: Iterable[Iterable[str]]) -> Counter[str]:
    """Count tool calls per tool, all versions of a tool together.

    Args:
        tools_used: Each prediction's ``tools_used`` (``name@version`` refs);
            every entry counts as one call.

    Returns:
        Calls per tool name.
    """
    return Counter(tool_name(ref) for refs in tools_used for ref in refs)


def top_tools(tools_used: Iterable[Iterable[str]], top: int = 15) -> list[tuple[str, int]]:
    """The ``top`` most called tools, most called first (ties by name).

    Args:
        tools_used: Each prediction's ``tools_used``.
        top: How many tools to keep.

    Returns:
        ``(name, calls)`` pairs.
    """
    counts = tool_usage(tools_used)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: max(top, 0)]


def _color(index: int) -> str:
    return f"C{index % 10}"


def _no_data(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        NO_DATA,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=14,
        color="0.45",
    )


def _line_figure(
    runs: Sequence[Run],
    points: Any,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    percent: bool = False,
) -> Figure:
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for index, run in enumerate(runs):
        # A missing value is NaN, so the line breaks there instead of bridging it.
        xy = [(x, math.nan if y is None else y) for x, y in points(run) if x is not None]
        has_data = any(not math.isnan(y) for _, y in xy)
        label = run.label if has_data else f"{run.label} ({NO_DATA})"
        ax.plot(
            [x for x, _ in xy],
            [y for _, y in xy],
            marker="o",
            markersize=4,
            color=_color(index),
            label=label,
        )
        drawn = drawn or has_data
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if percent:
        ax.set_ylim(-0.03, 1.05)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    if not drawn:
        _no_data(ax)
    ax.legend(loc="best")
    return fig


def _created_figure(runs: Sequence[Run]) -> Figure:
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    handles: list[Patch] = []
    drawn = False
    for index, run in enumerate(runs):
        offset = (index - (len(runs) - 1) / 2) * width
        ax.bar(
            [s.step + offset for s in run.steps],
            [s.tools_created for s in run.steps],
            width=width,
            color=_color(index),
        )
        # Explicit legend entries: an empty bar series would get no colour of its own.
        label = run.label if run.steps else f"{run.label} ({NO_DATA})"
        handles.append(Patch(color=_color(index), label=label))
        drawn = drawn or bool(run.steps)
    ax.set_title("Tools created per batch")
    ax.set_xlabel("step (batch)")
    ax.set_ylabel("tools created")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    if not drawn:
        _no_data(ax)
    ax.legend(handles=handles, loc="best")
    return fig


def _usage_figure(runs: Sequence[Run], top: int) -> Figure:
    height = max(3.0, 0.28 * top + 1.4)
    fig = Figure(figsize=(min(max(7.5, 5.0 * len(runs)), 16.0), height), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for index, (ax, run) in enumerate(zip(axes, runs, strict=True)):
        ranked = top_tools((p.tools_used for p in run.predictions), top)
        if ranked:
            names = [name for name, _ in ranked][::-1]
            counts = [count for _, count in ranked][::-1]
            ax.barh(names, counts, color=_color(index), label=run.label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(axis="y", labelsize=8)
        else:
            _no_data(ax)
        ax.set_title(run.label)
        ax.set_xlabel("calls")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Top {top} tools by calls (all versions together)")
    return fig


def build_figures(runs: Sequence[Run], top: int = 15) -> dict[str, Figure]:
    """Draw the report's plots (Agg, no display needed).

    Args:
        runs: The runs, each drawn as its own series (or panel) labelled by its label.
        top: How many tools the usage plot shows per run.

    Returns:
        Figures keyed as :data:`PLOTS`: ``egl`` (EGL vs step), ``library_size``
        (library size vs tasks processed), ``tools_created`` (bars per batch),
        ``tool_usage`` (top tools per run) and ``success_rate`` (per batch).
    """
    if not runs:
        raise ValueError("no run to draw")
    figures = {
        "egl": _line_figure(
            runs,
            lambda r: [(s.step, s.egl) for s in r.steps],
            title="EGL = cumulative tools created / cumulative tool invocations (lower is better)",
            xlabel="step (batch)",
            ylabel="EGL",
        ),
        "library_size": _line_figure(
            runs,
            lambda r: [(s.tasks_processed, s.library_size) for s in r.steps],
            title="Library size (active tools)",
            xlabel="tasks processed",
            ylabel="active tools",
        ),
        "tools_created": _created_figure(runs),
        "tool_usage": _usage_figure(runs, top),
        "success_rate": _line_figure(
            runs,
            lambda r: [(s.step, s.tool_success_rate) for s in r.steps],
            title="Tool success rate per batch",
            xlabel="step (batch)",
            ylabel="successful tool calls",
            percent=True,
        ),
    }
    for figure in figures.values():
        FigureCanvasAgg(figure)
    return figures


# --------------------------------------------------------------------------- summary


def _sum_tokens(groups: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for tokens in groups:
        for role, counts in tokens.items():
            row = total.setdefault(role, dict.fromkeys(TOKEN_KEYS, 0))
            for key in TOKEN_KEYS:
                row[key] += counts.get(key, 0)
    return dict(sorted(total.items()))


def summarize(run: Run) -> RunSummary:
    """Compute the summary-table figures of one run.

    Args:
        run: A run from :func:`load_run` or :func:`load_runs`.

    Returns:
        The run's summary.
    """
    statuses = Counter(p.status for p in run.predictions)
    graded = [p.correct for p in run.predictions if p.correct is not None]
    last = run.steps[-1] if run.steps else None
    if run.steps:
        tokens, source = _sum_tokens(s.tokens for s in run.steps), "steps"
        times = [s.wall_time_s for s in run.steps if s.wall_time_s is not None]
        wall = sum(times) if times else None
    else:
        tokens, source = _sum_tokens(p.tokens for p in run.predictions), "predictions"
        wall = None
    return RunSummary(
        label=run.label,
        path=run.path,
        scripted=run.scripted,
        model=str(run.meta.get("model") or ""),
        tasks=len(run.predictions),
        batches=len(run.steps),
        completed=statuses["completed"],
        incomplete=statuses["incomplete"],
        failed=statuses["failed"],
        library_size=last.library_size if last else None,
        egl=last.egl if last else None,
        invocations=sum(s.invocations for s in run.steps),
        successes=sum(s.successes for s in run.steps),
        tokens=tokens,
        tokens_source=source,
        wall_time_s=wall,
        graded=len(graded),
        correct=sum(graded),
    )


def format_seconds(seconds: float | None) -> str:
    """Render a duration such as ``"42.0 s"`` or ``"1 h 02 min 05 s"`` (``"-"`` for ``None``).

    Args:
        seconds: A duration in seconds, or ``None``.

    Returns:
        The duration as text.
    """
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def format_accuracy(summary: RunSummary) -> str:
    """Render a run's accuracy, e.g. ``"75.0% (3/4 graded)"`` (``"-"`` if nothing is graded).

    Args:
        summary: The run's summary.

    Returns:
        The accuracy as text.
    """
    if summary.accuracy is None:
        return "-"
    text = f"{100 * summary.accuracy:.1f}% ({summary.correct}/{summary.graded} graded"
    if summary.graded < summary.tasks:
        text += f" of {summary.tasks} tasks"
    return text + ")"


def format_egl(value: float | None) -> str:
    """Render an EGL value (``"-"`` when undefined).

    Args:
        value: EGL or ``None``.

    Returns:
        The value with three decimals, or ``"-"``.
    """
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; }
.meta { color: #555; margin-top: 0; }
.scripted { background: #fff3cd; border: 3px solid #d39e00; color: #5c4400;
  padding: 1rem 1.2rem; font-size: 1.35rem; font-weight: bold; margin: 1rem 0; }
.scripted small { display: block; font-size: 0.95rem; font-weight: normal; margin-top: 0.3rem; }
.degraded { background: #f8d7da; border: 3px solid #b02a37; color: #58151c;
  padding: 1rem 1.2rem; font-size: 1.2rem; font-weight: bold; margin: 1rem 0; }
.degraded small { display: block; font-size: 0.95rem; font-weight: normal; margin-top: 0.3rem; }
.warnings { background: #f8f9fa; border-left: 4px solid #6c757d; padding: 0.5rem 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9rem; }
details { margin: 0.5rem 0 1rem; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[tuple[str, bool]]]) -> str:
    """An HTML table; each cell is (already escaped HTML, is-numeric)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if num else f"<td>{c}</td>" for c, num in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tokens_cell(tokens: dict[str, dict[str, int]], source: str) -> str:
    if not tokens:
        return "-"
    lines = [
        f"{_e(role)}: {c['total_tokens']:,} (in {c['input_tokens']:,} / "
        f"out {c['output_tokens']:,}, {c['calls']:,} calls)"
        for role, c in tokens.items()
    ]
    total = sum(c["total_tokens"] for c in tokens.values())
    lines.append(f"<strong>total: {total:,}</strong>")
    if source != "steps":
        lines.append("<em>(from predictions: no completed batch)</em>")
    return "<br>".join(lines)


def _summary_table(summaries: Sequence[RunSummary]) -> str:
    headers = (
        "system",
        "model",
        "tasks",
        "batches",
        "completed",
        "incomplete",
        "failed",
        "final library size",
        "final EGL",
        "tool calls (ok)",
        "tokens by role",
        "wall time",
        "accuracy",
    )
    rows = []
    for s in summaries:
        label = _e(s.label) + (" <strong>(scripted)</strong>" if s.scripted else "")
        calls = f"{s.invocations:,} ({s.successes:,})" if s.batches else "-"
        rows.append(
            [
                (label, False),
                (_e(s.model or "-"), False),
                (str(s.tasks), True),
                (str(s.batches), True),
                (str(s.completed), True),
                (str(s.incomplete), True),
                (str(s.failed), True),
                ("-" if s.library_size is None else str(s.library_size), True),
                (_e(format_egl(s.egl)), True),
                (calls, True),
                (_tokens_cell(s.tokens, s.tokens_source), False),
                (_e(format_seconds(s.wall_time_s)), True),
                (_e(format_accuracy(s)), True),
            ]
        )
    return _table(headers, rows)


def _usage_tables(runs: Sequence[Run], top: int) -> str:
    parts = []
    for run in runs:
        ranked = top_tools((p.tools_used for p in run.predictions), top)
        parts.append(f"<h3>{_e(run.label)}</h3>")
        if ranked:
            parts.append(
                _table(("tool", "calls"), ([(_e(n), False), (str(c), True)] for n, c in ranked))
            )
        else:
            parts.append(f"<p>{NO_DATA}: no prediction used a tool.</p>")
    return "".join(parts)


def _run_details(run: Run) -> str:
    meta_rows = ([(_e(k), False), (_e(json.dumps(v)), False)] for k, v in run.meta.items())
    step_rows = (
        [
            (str(s.step), True),
            ("-" if s.tasks_processed is None else str(s.tasks_processed), True),
            ("-" if s.library_size is None else str(s.library_size), True),
            (str(s.tools_created), True),
            (f"{s.invocations} ({s.successes})", True),
            ("-" if s.tool_success_rate is None else f"{100 * s.tool_success_rate:.1f}%", True),
            (_e(format_egl(s.egl)), True),
            (str(s.failed_tasks), True),
            (_e(format_seconds(s.wall_time_s)), True),
        ]
        for s in run.steps
    )
    steps = (
        _table(
            (
                "step",
                "tasks processed",
                "library size",
                "tools created",
                "tool calls (ok)",
                "success rate",
                "EGL",
                "failed tasks",
                "wall time",
            ),
            step_rows,
        )
        if run.steps
        else f"<p>{NO_DATA}: {STEPS_FILE} has no completed batch.</p>"
    )
    return (
        f"<h3>{_e(run.label)}</h3><p>folder: <code>{_e(run.path)}</code></p>"
        f"<details><summary>{RUN_FILE}</summary>{_table(('key', 'value'), meta_rows)}</details>"
        f"<details><summary>{STEPS_FILE}: {len(run.steps)} step(s)</summary>{steps}</details>"
    )


def render_html(runs: Sequence[Run], images: Mapping[str, str], top: int = 15) -> str:
    """Render the report page.

    Args:
        runs: The runs, as from :func:`load_runs`.
        images: Plot key (as :data:`PLOTS`) → image file name relative to the page.
        top: How many tools the usage tables show per run.

    Returns:
        A complete HTML document with inline CSS and no reference other than ``images``.
    """
    summaries = [summarize(r) for r in runs]
    labels = ", ".join(r.label for r in runs)
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f"<title>insitu report: {_e(labels)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
    ]
    scripted = [r.label for r in runs if r.scripted]
    if scripted:
        parts.append(
            f'<div class="scripted" role="alert">{_e(SCRIPTED_BANNER)}'
            f"<small>Scripted run(s): {_e(', '.join(scripted))}</small></div>\n"
        )
    degraded = [r.label for r in runs if r.degraded]
    if degraded:
        parts.append(
            f'<div class="degraded" role="alert">{_e(DEGRADED_BANNER)}'
            f"<small>Run(s) with weak isolation: {_e(', '.join(degraded))}</small></div>\n"
        )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts.append(
        f"<h1>insitu run report</h1>\n<p class='meta'>{len(runs)} run(s): {_e(labels)}; "
        f"generated {_e(generated)}. EGL = cumulative tools created / cumulative tool "
        "invocations (lower is better; undefined before the first tool call).</p>\n"
    )
    warnings = [f"{r.label}: {w}" for r in runs for w in r.warnings]
    if warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        parts.append(f'<div class="warnings"><strong>Notes</strong><ul>{items}</ul></div>\n')
    parts.append(f"<h2>Summary</h2>\n{_summary_table(summaries)}\n")
    captions = {
        "egl": "Cumulative EGL after each completed batch; a line starts at the first tool call.",
        "library_size": "Active tools in the library against tasks processed.",
        "tools_created": "New tools created in each batch.",
        "tool_usage": f"Calls per tool over all predictions (top {top}; versions merged).",
        "success_rate": "Share of each batch's tool calls that returned normally "
        "(a gap: a batch without tool calls).",
    }
    for key, (_, heading) in PLOTS.items():
        if key not in images:
            continue
        parts.append(
            f'<h2>{_e(heading)}</h2>\n<figure><img src="{_e(images[key])}" '
            f'alt="{_e(heading)}: {_e(labels)}"><figcaption>{_e(captions[key])}'
            "</figcaption></figure>\n"
        )
        if key == "tool_usage":
            parts.append(_usage_tables(runs, top))
    parts.append("<h2>Runs</h2>\n" + "".join(_run_details(r) for r in runs))
    parts.append("\n</body>\n</html>\n")
    return "".join(parts)


def render_report(runs: Sequence[Run], out_dir: Path, top: int = 15) -> Path:
    """Write ``report.html`` and its PNG plots for runs already read.

    Args:
        runs: The runs, as from :func:`load_runs`.
        out_dir: Folder to write into (created if needed; earlier report files
            there are replaced).
        top: How many tools the usage plot and tables show per run.

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: ``runs`` is empty or ``top`` is below 1.
        OSError: The folder or a file cannot be written.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    for key, figure in build_figures(runs, top).items():
        name = PLOTS[key][0]
        figure.savefig(out_dir / name, format="png", dpi=100)
        images[key] = name
    page = out_dir / REPORT_FILE
    page.write_text(render_html(runs, images, top), encoding="utf-8")
    return page


def write_report(run_dirs: Sequence[Path], out_dir: Path | None = None, top: int = 15) -> Path:
    """Read run folders of ``insitu evolve`` and write an offline HTML report with plots.

    Args:
        run_dirs: Run folders, shown side by side in this order, each labelled
            by the ``system`` of its ``run.json`` (default: the folder's name).
        out_dir: Folder for ``report.html`` and the PNGs (default: the first run folder).
        top: How many of the most called tools to show per run.

    Returns:
        The path of ``report.html``.

    Raises:
        ReportError: A run folder, its ``run.json`` or ``predictions.jsonl`` is
            missing or empty, or a file is malformed.
        ValueError: ``top`` is below 1.
        OSError: The report cannot be written.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    runs = load_runs(run_dirs)
    return render_report(runs, Path(out_dir) if out_dir is not None else runs[0].path, top)
