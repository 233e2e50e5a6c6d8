"""Reading run folders of ``insitu evolve`` for reports: runs, tasks, summaries.

A run folder holds three files (JSON; the last two JSON Lines, one object per line):

* ``run.json``: what was run (``run_id``, ``system``, ``tasks_file``,
  ``batch_size``, ``store_dir``, ``frozen``, ``scripted``, ``model``,
  ``sandbox`` with its ``backend`` and ``isolation``, ``started_at``);
* ``steps.jsonl``: one line per completed batch (``step``, cumulative
  ``tasks_processed``, ``library_size``, this batch's ``tools_created``,
  ``invocations``, ``successes``, ``tool_success_rate``, cumulative ``egl``,
  ``tokens`` per role, ``wall_time_s``, ``failed_tasks``, ``scripted``, ...);
* ``predictions.jsonl``: one line per task and pass (``id``, ``question``,
  ``answer``, ``expected``, ``status``, ``tools_used`` and ``tools_created`` as
  ``name@version``, ``tokens`` per role, ``error``, ``error_kind``, ``batch``,
  ``wall_time_s``, ``scripted``, optional ``grade`` with ``correct`` and
  ``reason``, ...); the last line of a task id is its result.

A run folder must have a non-empty ``run.json`` and ``predictions.jsonl``.
``steps.jsonl`` may be missing or empty: ``insitu evolve`` writes it when the
first batch completes, so a run stopped before that has predictions but no
steps. A torn last line (no newline, not JSON: a run killed while appending,
or still running) is left out with a note, as ``insitu evolve`` itself does on
resume. Anything else missing, empty or malformed raises :class:`ReportError`
naming the file (and line).

The folder of ``insitu eval`` (``comparison.json`` and one run folder per
system) stands for its systems' run folders: :func:`resolve_run_dirs`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insitu.evolve import last_row_per_task

RUN_FILE = "run.json"
STEPS_FILE = "steps.jsonl"
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.html"
#: What ``insitu eval`` writes next to its systems' run folders.
COMPARISON_FILE = "comparison.json"

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
        scripted: The line says a scripted test model produced it.
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
    scripted: bool = False


@dataclass(slots=True)
class Prediction:
    """One task of a run (its last line in ``predictions.jsonl``).

    Attributes:
        id: The task id.
        status: ``completed``, ``incomplete`` or ``failed``.
        tools_used: Tools called, as ``name@version``.
        tokens: Tokens per role.
        correct: The grade's verdict, ``None`` when the task was not graded.
        wall_time_s: Wall time of the task in seconds.
        question: The task's text.
        answer: The answer given (``""`` if none).
        expected: The reference answer, ``None`` when the task has none.
        tools_created: Tools the task created, as ``name@version``.
        error: Why the task failed or is incomplete (one line), if known.
        error_kind: ``endpoint``, ``timeout``, ``internal`` or ``None``.
        grade_reason: The grader's reason, if graded.
        batch: The batch the task ran in (``None`` if not recorded).
        scripted: The line says a scripted test model produced it.
    """

    id: str
    status: str
    tools_used: list[str]
    tokens: dict[str, dict[str, int]]
    correct: bool | None
    wall_time_s: float | None
    question: str = ""
    answer: str = ""
    expected: str | None = None
    tools_created: list[str] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    grade_reason: str | None = None
    batch: int | None = None
    scripted: bool = False

    @property
    def outcome(self) -> str:
        """``failed``, ``incomplete``, ``wrong`` (graded incorrect), ``correct`` or ``ungraded``."""
        if self.status in ("failed", "incomplete"):
            return self.status
        if self.correct is None:
            return "ungraded" if self.status == "completed" else self.status or "unknown"
        return "correct" if self.correct else "wrong"

    @property
    def total_tokens(self) -> int:
        """Tokens of every role together."""
        return sum(counts.get("total_tokens", 0) for counts in self.tokens.values())

    @property
    def reason(self) -> str:
        """Why the task needs attention, in one line (``""`` when it does not)."""
        if self.status in ("failed", "incomplete"):
            kind = f"[{self.error_kind}] " if self.error_kind else ""
            default = "no answer" if self.status == "failed" else "no final answer"
            return kind + (self.error or default)
        if self.correct is False:
            return self.grade_reason or "graded wrong"
        return ""


@dataclass(slots=True)
class Run:
    """One run folder, read and checked.

    Attributes:
        path: The run folder.
        meta: The content of ``run.json``.
        steps: Completed batches, by step.
        predictions: Tasks, in file order.
        label: How plots and tables name the run: its ``system``, made unique
            among the runs of one report by :func:`load_runs` (with the batch
            size, then the folder's name).
        warnings: Oddities worth showing in the report.
        tool_roi: The run's library's tools with what each cost and saved
            (:func:`insitu.tool_store.utility.tool_roi_rows`), read from the
            library as it is when the report is written; empty when
            ``run.json`` names no library or it cannot be read.
    """

    path: Path
    meta: dict[str, Any]
    steps: list[Step]
    predictions: list[Prediction]
    label: str = ""
    warnings: list[str] = field(default_factory=list)
    tool_roi: list[dict[str, Any]] = field(default_factory=list)

    @property
    def system(self) -> str:
        """The run's ``system`` from ``run.json`` (default: the folder's name)."""
        system = self.meta.get("system")
        return str(system) if system not in (None, "") else self.path.name

    @property
    def scripted(self) -> bool:
        """Whether a scripted test model made the run (``run.json``, or any line of it, says so)."""
        return (
            self.meta.get("scripted") is True
            or any(p.scripted for p in self.predictions)
            or any(s.scripted for s in self.steps)
        )

    @property
    def batch_size(self) -> int | None:
        """The batch size from ``run.json`` (``None`` if not recorded)."""
        value = self.meta.get("batch_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

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
        batch_size: The batch size in ``run.json`` (``None`` if none).
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
    batch_size: int | None
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

    @property
    def tokens_per_task(self) -> float | None:
        """All roles' tokens divided by the tasks (``None`` without tasks or tokens)."""
        total = sum(c["total_tokens"] for c in self.tokens.values())
        return total / self.tasks if self.tasks and self.tokens else None


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
                scripted=record.get("scripted") is True,
            )
        )
    return sorted(steps, key=lambda s: s.step)


def _text_or_none(value: Any) -> str | None:
    """A field shown as text: strings as they are, other JSON values as JSON."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _read_predictions(path: Path, notes: list[str]) -> list[Prediction]:
    predictions: list[Prediction] = []
    for line, record in _read_jsonl(path, allow_empty=False, notes=notes):
        tools_used = record.get("tools_used") or []
        if not isinstance(tools_used, list) or not all(isinstance(t, str) for t in tools_used):
            raise ReportError(path, f"line {line}: 'tools_used' must be a list of tool names")
        tools_created = record.get("tools_created") or []
        if not isinstance(tools_created, list):
            raise ReportError(path, f"line {line}: 'tools_created' must be a list of tool names")
        grade = record.get("grade")
        correct = reason = None
        if isinstance(grade, dict):
            if isinstance(grade.get("correct"), bool):
                correct = grade["correct"]
            reason = _text_or_none(grade.get("reason"))
        batch = record.get("batch")
        predictions.append(
            Prediction(
                id=str(record.get("id", f"line {line}")),
                status=str(record.get("status", "")),
                tools_used=tools_used,
                tokens=_tokens(record.get("tokens"), path, line),
                correct=correct,
                wall_time_s=_number(record, "wall_time_s", path, line),
                question=_text_or_none(record.get("question")) or "",
                answer=_text_or_none(record.get("answer")) or "",
                expected=_text_or_none(record.get("expected")),
                tools_created=[str(t) for t in tools_created],
                error=_text_or_none(record.get("error")),
                error_kind=_text_or_none(record.get("error_kind")),
                grade_reason=reason,
                batch=batch if isinstance(batch, int) and not isinstance(batch, bool) else None,
                scripted=record.get("scripted") is True,
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
    if not (run_dir / RUN_FILE).exists():
        systems = _system_folders(run_dir)
        hint = (
            f"missing: the folder of `insitu eval`? report on its run folders: "
            f"{' '.join(str(s) for s in systems)}"
            if systems
            else "missing: not a run folder (give a folder written by `insitu evolve`)"
        )
        raise ReportError(run_dir / RUN_FILE, hint)
    notes: list[str] = []
    run = Run(
        path=run_dir,
        meta=_read_json_object(run_dir / RUN_FILE),
        steps=_read_steps(run_dir / STEPS_FILE, notes),
        predictions=_read_predictions(run_dir / PREDICTIONS_FILE, notes),
        warnings=notes,
    )
    run.label = run.system
    run.tool_roi = _library_roi(run, notes)
    # A task run again (a retry pass after an outage) has a line per run: the last counts.
    run.predictions = last_row_per_task(run.predictions, key=lambda p: p.id)
    numbers = [s.step for s in run.steps]
    if len(set(numbers)) != len(numbers):
        run.warnings.append(f"{STEPS_FILE} repeats step numbers")
    return run


def _library_roi(run: Run, notes: list[str]) -> list[dict[str, Any]]:
    """The ROI rows of the run's library (read-only), or none with a note saying why."""
    store_dir = run.meta.get("store_dir")
    if not isinstance(store_dir, str) or not (Path(store_dir) / "tools.db").is_file():
        return []
    from insitu.tool_store import ToolStore
    from insitu.tool_store.utility import tool_roi_rows

    try:
        with ToolStore.open(store_dir, read_only=True) as store:
            return tool_roi_rows(store)
    except Exception as exc:  # a report is still worth writing without this table
        notes.append(f"tool ROI left out: the library at {store_dir} could not be read ({exc})")
        return []


def _system_folders(folder: Path) -> list[Path]:
    """The run folders directly inside ``folder`` (the systems of an ``insitu eval`` run).

    In the order ``comparison.json`` lists them when it can be read, else by name.
    """
    try:
        found = sorted(p for p in folder.iterdir() if (p / RUN_FILE).is_file())
    except OSError:
        return []
    try:
        listed = json.loads((folder / COMPARISON_FILE).read_text(encoding="utf-8"))["systems"]
        order = [Path(str(s["run_dir"])).name for s in listed]
    except (OSError, ValueError, KeyError, TypeError):
        return found
    return sorted(found, key=lambda p: order.index(p.name) if p.name in order else len(order))


def resolve_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """The run folders that paths stand for: a run folder itself, an eval folder its systems.

    Args:
        paths: Run folders of ``insitu evolve``, or folders of ``insitu eval``
            (no ``run.json`` of their own, one run folder per system inside).

    Returns:
        Run folders, in the order given (an eval folder's systems in the order
        of its ``comparison.json``). A path that is neither is kept, so that
        :func:`load_run` reports what is wrong with it.
    """
    resolved: list[Path] = []
    for path in map(Path, paths):
        systems = [] if (path / RUN_FILE).exists() else _system_folders(path)
        resolved.extend(systems or [path])
    return resolved


def _unique_labels(runs: Sequence[Run]) -> None:
    """Label each run by its system, adding what tells runs of one system apart."""
    for run in runs:
        run.label = run.system
    by_system: dict[str, list[Run]] = {}
    for run in runs:
        by_system.setdefault(run.system, []).append(run)
    for group in by_system.values():
        if len(group) > 1 and len({r.batch_size for r in group}) > 1:
            for run in group:  # a sweep of batch sizes: say which is which
                run.label = f"{run.system} B={run.batch_size if run.batch_size else '?'}"
    labels = Counter(r.label for r in runs)
    for run in runs:
        if labels[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"
    taken: Counter[str] = Counter()
    for run in runs:
        taken[run.label] += 1
        if taken[run.label] > 1:
            run.label = f"{run.label} #{taken[run.label]}"


def load_runs(run_dirs: Sequence[Path]) -> list[Run]:
    """Read several run folders and give each a label unique within the report.

    A run is labelled by its ``system``; runs sharing one get their batch size
    added when it differs (``insitu B=8``), then their folder's name, and a
    number if that is not enough. A folder of ``insitu eval`` stands for its
    systems' run folders (:func:`resolve_run_dirs`).

    Args:
        run_dirs: Run folders, in the order the report shows them.

    Returns:
        The runs, in the same order.

    Raises:
        ReportError: No folder is given, or one is missing, empty or malformed.
    """
    if not run_dirs:
        raise ReportError(Path("."), "no run folder given")
    runs = [load_run(d) for d in resolve_run_dirs(run_dirs)]
    _unique_labels(runs)
    return runs


# --------------------------------------------------------------------------- tools


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
        batch_size=run.batch_size,
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


def accuracy_curve(run: Run) -> list[tuple[int, float | None]]:
    """Cumulative accuracy after each batch, against tasks processed.

    Tasks are taken in the order they ran (by ``batch``, then file order; one
    point per task when predictions record no batch), each by its last line.

    Args:
        run: A run.

    Returns:
        ``(tasks processed, correct / graded so far)`` after each batch, the
        accuracy ``None`` while no task is graded; empty if no task is graded.
    """
    if not any(p.correct is not None for p in run.predictions):
        return []
    if all(p.batch is not None for p in run.predictions):
        ordered = sorted(run.predictions, key=lambda p: p.batch or 0)  # stable: file order
        keys = [p.batch for p in ordered]
    else:
        ordered = list(run.predictions)
        keys = list(range(len(ordered)))
    points: list[tuple[int, float | None]] = []
    graded = correct = 0
    for index, prediction in enumerate(ordered):
        if prediction.correct is not None:
            graded += 1
            correct += prediction.correct
        if index + 1 == len(ordered) or keys[index + 1] != keys[index]:
            points.append((index + 1, correct / graded if graded else None))
    return points


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
