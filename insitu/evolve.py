"""Run a task stream in batches through the batch graph, resumably.

    from insitu.evolve import evolve
    from insitu.evals.tasks import load_tasks
    summary = evolve(load_tasks("tasks.jsonl"), run_dir="runs/a", batch_size=8)

A run directory holds:

* ``run.json`` — what the run is (tasks, batch size, store, model, whether the
  model was a scripted test double, and ``sandbox``: the ``backend`` and
  ``isolation`` its tools ran with, the weakest one if a resumed run changed it);
* ``predictions.jsonl`` — one line per task and *pass* (a batch's own run of
  its tasks, or a later retry pass): ``id``, ``answer``, ``status``, tools,
  ``retrieved`` (the library tools the Manager's retrieval offered, best first),
  ``tokens`` (spent before a failure too), ``error`` (one line, or null),
  ``error_kind`` (``endpoint``, ``timeout``, ``internal`` or null), ``failure``
  (the endpoint's details: role, model, url, status, message), ``batch`` and
  ``retry`` (0 for the batch's own pass, K for its K-th retry pass) and
  ``scripted`` (true when a scripted test model produced the line). A task
  that was run again has several lines: **the last line of a task id is its
  result** (:func:`read_predictions`; every reader goes through
  :func:`last_row_per_task`);
* ``steps.jsonl`` — one line per pass, in the order they ran: ``step`` (1, 2, …),
  ``batch`` and ``retry`` (a retry pass of batch N is ``batch: N, retry: K``),
  library size, tools created / merged / archived, invocations, successes,
  tool success rate, cumulative EGL, tokens, wall time, ``failed_tasks``,
  ``failures`` by ``error_kind`` and ``scripted``. ``tasks_processed`` counts
  distinct tasks: a retry pass adds none;
* ``checkpoints.sqlite`` — LangGraph checkpoints of every pass: thread
  ``<run_id>:batch-N``, and ``<run_id>:batch-N:retry-K`` for retry passes.

Killed at any moment, the same call resumes: finished passes are skipped
(their step line is written last), an interrupted pass resumes from its
checkpoint (finished episodes are not re-run), every commit is idempotent (a
retry pass commits under its own batch id, ``<run_id>-bN-rK``), and a pass
writes a prediction once per task id. A pass counts as finished only by the
``finished_at`` marker of its last node, never because its checkpoint has no
pending nodes (a process killed between the input checkpoint and the first
step leaves exactly that).

**Outages.** When ``max_consecutive_endpoint_failures`` tasks in a row (in the
order they ran, across batches) failed on the model endpoint, the run writes
that pass's predictions and step line and raises
:class:`EndpointOutageError`. Resuming runs a retry pass, before the batches
not yet run, for every finished batch holding tasks whose last prediction
failed on the endpoint (``retry_failed=True``: that failed in any way, and
always those that earlier versions recorded as "no result" without running
them); each batch gets at most one retry pass per call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from langgraph.types import Command
from pydantic import BaseModel

from insitu import aio
from insitu.context import ROLES, InsituContext
from insitu.evolution import egl, tool_success_rate
from insitu.graphs.state import merge_usage
from insitu.llm import ModelEndpointError, preflight
from insitu.services import Services, check_model_configuration, open_store

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from insitu.evals.tasks import Task
    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore

log = logging.getLogger("insitu.evolve")

RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
STEPS_FILE = "steps.jsonl"
CHECKPOINTS_FILE = "checkpoints.sqlite"
#: Testing only: SIGKILL the run right after its N-th checkpoint write (``insitu.testing.crash``).
KILL_AFTER_WRITES_ENV = "INSITU_TEST_KILL_AFTER_CHECKPOINT_WRITES"
#: ``error_kind`` of a task whose model endpoint failed (see ``insitu.nodes.batch``).
ENDPOINT_FAILURE = "endpoint"

Row = TypeVar("Row")


class ReviewPending(Exception):
    """A batch paused for a human review of its tools (``tool_approval``); nobody answered.

    Run ``evolve`` again with ``on_review`` (or decisions recorded with
    ``insitu tools approve|reject``) to go on: the batch resumes at its review.

    Attributes:
        thread_id: The paused batch's checkpoint thread.
        review: The review payload (see ``insitu.nodes.review``).
    """

    def __init__(self, thread_id: str, review: dict[str, Any]) -> None:
        self.thread_id = thread_id
        self.review = review
        names = ", ".join(item["name"] for item in review.get("tools", []))
        super().__init__(f"the batch {thread_id} awaits a review of its tools: {names}")


class RunMismatchError(ValueError):
    """The run directory holds another run (other tasks or batch size)."""


class EndpointOutageError(ModelEndpointError):
    """A run stopped because tasks in a row failed on the model endpoint.

    The pass in which it happened was recorded (its predictions say why each
    task failed); running the same command again resumes the run and runs
    those tasks again.

    Attributes:
        failure: The last endpoint failure (``kind``, ``role``, ``model``,
            ``url``, ``status``, ``message``).
        failed_in_a_row: How many tasks in a row failed on the endpoint.
        run_dir: The run's directory.
    """

    def __init__(
        self, failure: Mapping[str, Any], failed_in_a_row: int, run_dir: str | Path
    ) -> None:
        self.failure = dict(failure)
        self.failed_in_a_row = failed_in_a_row
        self.run_dir = str(run_dir)
        message = str(failure.get("message") or "the model endpoint failed")
        hint = (
            "Run the same command again to resume once the endpoint is back: the tasks that "
            "failed on the endpoint are run again."
        )
        super().__init__(
            role=str(failure.get("role") or "?"),
            model=str(failure.get("model") or "?"),
            url=str(failure.get("url") or "?"),
            status=failure.get("status"),
            transient=bool(failure.get("transient", False)),
            reason=message,
            hint=hint,
            line=(
                f"stopped the run in {self.run_dir}: {failed_in_a_row} tasks in a row failed on "
                f"the model endpoint; the last: {message} {hint}"
            ),
        )


class EvolveSummary(BaseModel):
    """What a run did, for the caller and the CLI's final table.

    Task counts are of each task's last prediction; ``batches`` counts the
    batches run (their retry passes are ``retry_passes``); ``tokens`` is all
    that every pass spent.
    """

    run_dir: str
    batches: int
    tasks: int
    completed: int
    incomplete: int
    failed: int
    endpoint_failed: int = 0
    retry_passes: int = 0
    library_size: int
    egl: float | None
    tool_success_rate: float | None
    tokens: dict[str, dict[str, int]]
    wall_time_s: float
    repairs: list[str] = []


# ------------------------------------------------------------------ JSONL files


def _parse_lines(data: bytes, required: str | None) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Split JSONL bytes into intact rows and damaged lines (torn, garbage, not a row)."""
    rows: list[dict[str, Any]] = []
    damaged: list[bytes] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            damaged.append(line)
            continue
        if not isinstance(row, dict) or (required is not None and required not in row):
            damaged.append(line)
            continue
        rows.append(row)
    return rows, damaged


def read_jsonl(path: Path, required: str | None = None) -> list[dict[str, Any]]:
    """Read the intact rows of a JSONL file written by this module; never writes.

    A damaged line (a last line torn by a kill, or garbage anywhere) is skipped
    and every other line is kept; :func:`repair_jsonl` sets damaged lines aside.

    Args:
        path: The file (missing: no rows).
        required: A key every row must have (``id``, ``step``); a row without it
            counts as damaged.
    """
    if not path.exists():
        return []
    return _parse_lines(path.read_bytes(), required)[0]


def repair_jsonl(path: Path, required: str | None = None) -> int:
    """Keep only the intact lines of a JSONL file, the damaged ones appended to ``<name>.damaged``.

    The file is rewritten in one atomic rename, so a kill leaves it either as it
    was or repaired; appends then continue on a clean last line.

    Args:
        path: The file.
        required: See :func:`read_jsonl`.

    Returns:
        How many damaged lines were set aside (0: the file was left as it was).
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    rows, damaged = _parse_lines(data, required)
    clean = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    if not damaged:
        if data and not data.endswith(b"\n"):  # an intact last line cut before its newline
            _replace_file(path, clean.encode())
        return 0
    with path.with_name(path.name + ".damaged").open("ab") as aside:
        aside.write(b"".join(line + b"\n" for line in damaged))
        aside.flush()
        os.fsync(aside.fileno())
    _replace_file(path, clean.encode())
    return len(damaged)


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably, in one rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def append_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows durably (flushed and fsynced before returning)."""
    if not rows:
        return
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def last_row_per_task(rows: Iterable[Row], key: Callable[[Row], Any] | None = None) -> list[Row]:
    """Each task's result: its last prediction line, in the order tasks first appear.

    A task run again (a retry pass) has a line per run; the later line supersedes
    the earlier ones. Every reader of ``predictions.jsonl`` counts tasks this way.

    Args:
        rows: Prediction rows in file order.
        key: Row -> task id (default: ``row["id"]``).

    Returns:
        One row per task id.
    """
    by_id: dict[Any, Row] = {}
    for row in rows:
        task_id = key(row) if key is not None else row["id"]  # type: ignore[index]
        by_id[task_id] = row  # a dict keeps a key's first position when its value is replaced
    return list(by_id.values())


def read_predictions(run_dir: str | Path) -> list[dict[str, Any]]:
    """Each task's last prediction in a run directory (see :func:`last_row_per_task`)."""
    return last_row_per_task(read_jsonl(Path(run_dir) / PREDICTIONS_FILE))


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


#: Isolation levels from the weakest: a run that ever ran weaker is recorded as weaker.
_ISOLATION_ORDER = ("none", "weak", "strong")


def _record_sandbox(run_dir: Path, meta: dict[str, Any], current: dict[str, str]) -> dict[str, Any]:
    """Keep in ``run.json`` the weakest sandbox any part of the run used.

    A resumed run may run under another backend than the one that started it;
    the report must not show it as better isolated than its weakest part.
    """
    earlier = meta.get("sandbox")
    rank = {level: i for i, level in enumerate(_ISOLATION_ORDER)}
    if isinstance(earlier, dict) and rank.get(str(earlier.get("isolation")), 0) <= rank.get(
        current["isolation"], 0
    ):
        return meta  # recorded already, or weaker than now
    meta = {**meta, "sandbox": current}
    path = run_dir / RUN_FILE
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


def without_rejected_tools(final: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A batch's results, each without the tools a reviewer rejected from its ``tools_created``.

    A rejected tool never entered the library: it is never counted as created (EGL).
    """
    rejected = {r["name"] for r in final.get("rejected_tools") or []}
    return [
        {**r, "tools_created": [t for t in r.get("tools_created") or [] if t not in rejected]}
        for r in final.get("results") or []
    ]


def prediction_row(
    task: Task,
    result: Mapping[str, Any],
    batch: int,
    retry: int = 0,
    *,
    scripted: bool = False,
) -> dict[str, Any]:
    """One line of ``predictions.jsonl``: a task's result in one pass.

    Args:
        task: The task.
        result: Its result from the batch graph.
        batch: The batch it belongs to.
        retry: 0 for the batch's own pass, K for its K-th retry pass.
        scripted: A scripted test model produced the result (every line says
            so, so a line copied out of its run folder still carries the mark).
    """
    return {
        "id": task.id,
        "question": task.question,
        "answer": result.get("answer", ""),
        "status": result.get("status", "failed"),
        "tools_used": list(result.get("tools_used") or []),
        "tools_created": list(result.get("tools_created") or []),
        "tools_repaired": list(result.get("tools_repaired") or []),
        # Library tools the Manager's retrieval offered, best first (for ``eval replay``).
        "retrieved": [c["name"] for c in result.get("candidates") or [] if not c.get("local")],
        "tokens": dict(result.get("usage") or {}),
        "metrics": dict(result.get("metrics") or {}),
        "error": result.get("error"),
        "error_kind": result.get("error_kind"),
        "failure": result.get("failure"),
        "batch": batch,
        "retry": retry,
        "expected": task.answer,
        "sandbox": result.get("sandbox"),
        "wall_time_s": result.get("wall_time_s"),
        "scripted": scripted,
    }


def step_row(
    step: int,
    batch: Sequence[Task],
    final: Mapping[str, Any],
    earlier_steps: Sequence[Mapping[str, Any]],
    library_size: int,
    wall_time_s: float,
    *,
    batch_number: int | None = None,
    retry: int = 0,
    scripted: bool = False,
) -> dict[str, Any]:
    """One line of ``steps.jsonl``: a pass's counters and the cumulative EGL.

    Args:
        step: The line's number (passes in the order they ran, from 1).
        batch: The pass's tasks.
        final: The batch graph's final state.
        earlier_steps: The lines written before.
        library_size: Active tools after the pass's commit.
        wall_time_s: The pass's wall time.
        batch_number: The batch (default: ``step``).
        retry: 0 for the batch's own pass, K for its K-th retry pass (whose tasks
            were processed before, so ``tasks_processed`` does not grow).
        scripted: A scripted test model ran the pass (every line says so).
    """
    results = without_rejected_tools(final)
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
    failed = [r for r in results if r.get("status") == "failed"]
    failures: dict[str, int] = {}
    for result in failed:
        kind = str(result.get("error_kind") or "internal")
        failures[kind] = failures.get(kind, 0) + 1
    processed_before = int(earlier_steps[-1]["tasks_processed"]) if earlier_steps else 0
    return {
        "step": step,
        "batch": step if batch_number is None else batch_number,
        "retry": retry,
        "tasks": [t.id for t in batch],
        "tasks_processed": processed_before + (0 if retry else len(batch)),
        "library_size": library_size,
        "tools_created": created,
        "tools_added": len(absorb.get("added") or []),
        "tools_merged": len(absorb.get("merged") or []),
        "tools_archived": len(absorb.get("archived") or []),
        "tools_pruned": len((final.get("commit") or {}).get("pruned") or []),
        "tools_repaired": len(absorb.get("repaired") or []),
        "invocations": invocations,
        "successes": successes,
        "tool_success_rate": tool_success_rate(successes, invocations),
        "egl": curve[-1],
        "tokens": usage,
        "wall_time_s": round(wall_time_s, 3),
        "failed_tasks": len(failed),
        "failures": failures,
        "absorb": absorb,
        "commit": final.get("commit") or {},
        "scripted": scripted,
    }


def _pass_of(step: Mapping[str, Any]) -> tuple[int, int]:
    """(batch, retry) of a step line (lines written before retries had only ``step``)."""
    return int(step.get("batch", step["step"])), int(step.get("retry", 0))


def needs_another_run(prediction: Mapping[str, Any] | None, *, retry_failed: bool) -> bool:
    """Whether a task of a finished batch is run again when the run resumes.

    Args:
        prediction: The task's last prediction (None: it has none).
        retry_failed: Run every failed task again, not only endpoint failures.
    """
    if prediction is None:
        return True
    if prediction.get("status") != "failed":
        return False
    if retry_failed or prediction.get("error_kind") == ENDPOINT_FAILURE:
        return True
    # Lines of earlier versions for tasks whose batch was lost before they ran (issue #13).
    return "error_kind" not in prediction and prediction.get("error") == "no result"


def batch_finished(values: Mapping[str, Any]) -> bool:
    """Whether a batch graph's state is that of a finished batch.

    Only the marker of the last node counts (``finished_at``; ``commit`` for
    checkpoints written before the marker existed, by the same last node).
    """
    return bool(values.get("finished_at")) or "commit" in values


@dataclass
class _OutageWatch:
    """Counts tasks that failed on the endpoint in a row, in the order they ran.

    Attributes:
        threshold: Failures in a row that stop the run (below 1: never stop).
        in_a_row: The current count (any other outcome resets it).
        failed_in_a_row: The count when the run was told to stop (it may grow
            until the pass ends).
        last_failure: The last endpoint failure seen.
        stop: The threshold was reached.
    """

    threshold: int
    in_a_row: int = 0
    failed_in_a_row: int = 0
    last_failure: dict[str, Any] = field(default_factory=dict)
    stop: bool = False

    def observe(self, result: Mapping[str, Any]) -> None:
        """Count one task's result."""
        if result.get("error_kind") != ENDPOINT_FAILURE:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.last_failure = dict(result.get("failure") or {}) or {
            "kind": ENDPOINT_FAILURE,
            "message": result.get("error") or "the model endpoint failed",
        }
        if 0 < self.threshold <= self.in_a_row:
            self.stop = True
            self.failed_in_a_row = self.in_a_row


def _run_batch_graph(
    graph: Any,
    config: dict[str, Any],
    fresh_input: Callable[[], dict[str, Any]],
    settings: InsituContext,
    on_event: Callable[[dict[str, Any]], None] | None,
    on_review: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or read) one pass's batch graph to its ``finished_at`` marker.

    Returns:
        The final state values.

    Raises:
        RuntimeError: The graph stopped without its marker, resumed and re-run.
        ReviewPending: It paused for a tool review that nobody answered.
    """
    snapshot = graph.get_state(config)
    values = dict(snapshot.values or {})
    if batch_finished(values):
        return values
    if "tasks" not in values:
        attempts: list[dict[str, Any] | None] = [fresh_input()]
    else:
        stored = {k: values[k] for k in ("tasks", "batch_id") if k in values}
        # Pending nodes or writes (killed between the input checkpoint and the first
        # step leaves ``next == ()`` with the fan-out's writes pending: LangGraph's
        # ``next`` leaves out tasks that already have writes, here ``__start__``):
        # resume them; should that not reach the marker, run the stored input again.
        attempts = [None, stored] if snapshot.next or snapshot.tasks else [stored]
    for payload in attempts:
        values = _stream_batch(graph, payload, config, settings, on_event, on_review)
        if batch_finished(values):
            return values
    thread = config["configurable"]["thread_id"]
    errors = sorted({r["error"] for r in values.get("results") or [] if r.get("error")})
    raise RuntimeError(
        f"the batch graph of {thread} stopped before its last node "
        f"({len(values.get('results') or [])} result(s)"
        + (f"; errors: {'; '.join(errors)[:500]}" if errors else "")
        + ")"
    )


def _stream_batch(
    graph: Any,
    payload: Any,
    config: dict[str, Any],
    settings: InsituContext,
    on_event: Callable[[dict[str, Any]], None] | None,
    on_review: Callable[[dict[str, Any]], Any] | None,
) -> dict[str, Any]:
    """Stream a batch graph until it ends or pauses; answer its tool reviews with ``on_review``.

    Raises:
        ReviewPending: The graph paused for a review that ``on_review`` did not answer.
    """

    def progress(item: tuple[Any, dict[str, Any]]) -> None:
        if on_event is not None:
            on_event(item[1])

    while True:
        # The episodes run as asyncio tasks on insitu's loop. Only progress events are
        # streamed (from the episodes too); their state values would be copied for nothing.
        stream = graph.astream(
            payload, config, context=settings, stream_mode="custom", subgraphs=True
        )
        aio.run(aio.drain(stream, progress))
        snapshot = graph.get_state(config)
        if not snapshot.interrupts:
            return dict(snapshot.values or {})
        review = snapshot.interrupts[0].value
        decisions = on_review(review) if on_review is not None else None
        if decisions is None:
            raise ReviewPending(config["configurable"]["thread_id"], review)
        payload = Command(resume=decisions)


def evolve(
    tasks: Sequence[Task],
    *,
    run_dir: str | Path,
    batch_size: int = 8,
    context: InsituContext | Mapping[str, Any] | None = None,
    store_dir: str | Path | None = None,
    models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
    tool_store: ToolStore | None = None,
    sandbox: Sandbox | None = None,
    system: str = "insitu",
    solver: Literal["episode", "interpreter"] = "episode",
    tasks_source: str = "",
    scripted: bool = False,
    retry_failed: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
    on_review: Callable[[dict[str, Any]], Any] | None = None,
) -> EvolveSummary:
    """Solve a stream of tasks in batches, evolving the tool library; resume if interrupted.

    Args:
        tasks: The stream, in order (ids unique).
        run_dir: Where predictions, steps and checkpoints are written.
        batch_size: Tasks per batch (run in parallel, then absorbed together).
        context: Settings (``freeze_library=True`` evaluates a snapshot;
            ``max_consecutive_endpoint_failures`` stops a run during an outage).
        store_dir: Shortcut for ``context.store_dir``.
        models: Chat model(s) instead of ``ChatOpenAI`` from the environment.
        tool_store: An open ``ToolStore`` to use.
        sandbox: A ``Sandbox`` to use.
        system: The name reports give this run.
        solver: ``episode`` (the agent), or ``interpreter`` (the python-interpreter
            baseline: one "run Python" tool, no library).
        tasks_source: Where the tasks came from (recorded in ``run.json``).
        scripted: The models are scripted test doubles (recorded; reports say so).
        retry_failed: On resume, run every task of a finished batch whose last
            prediction failed again, not only those that failed on the endpoint.
        on_event: Receives each progress event (episode and batch events).
        on_batch: Receives each step row as its pass completes.
        on_review: With ``tool_approval`` set, answers each batch's review: gets
            the review payload, returns the decisions (see ``insitu.nodes.review``),
            or ``None`` when it has none; a paused batch without decisions raises
            ``ReviewPending``.

    Returns:
        The run's summary.

    Raises:
        EndpointOutageError: ``max_consecutive_endpoint_failures`` tasks in a row
            failed on the model endpoint (the pass was recorded; call again to resume).
        ReviewPending: A batch paused for a tool review and ``on_review`` is ``None``
            (run again to resume at the review).
        ConfigurationError: No model endpoint and no injected models, or an
            executor model that cannot call tools.
        ModelEndpointError: The preflight found a dead endpoint (nothing was run).
        RunMismatchError: ``run_dir`` holds a different run.
        ValueError: Duplicate task ids or a bad batch size.
    """
    from insitu.checkpoints import open_async_checkpointer
    from insitu.graphs.evolve import create_evolve_graph

    settings = InsituContext.coerce(context)
    if store_dir is not None:
        settings = replace(settings, store_dir=str(store_dir))
    aio.set_blocking_threads(settings.blocking_threads)
    if models is None:
        check_model_configuration(settings)
        aio.run(preflight(settings))  # refuse to start a long run on a dead endpoint
    else:
        Services(models=models).check_models(settings)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"task ids must be unique; repeated: {repeated[:10]}")
    batches = plan_batches(tasks, batch_size)
    run_dir = Path(run_dir)
    check_run_can_start(
        run_dir,
        None if tool_store is not None else settings.store_dir,
        records_url=settings.records_url,
    )
    # The store first: one that cannot be used is refused before the run directory,
    # the sandbox's files or anything else is created.
    store = tool_store if tool_store is not None else open_store(settings)
    # Opened now: a machine where no tool may run refuses before the run starts.
    tool_sandbox = Services(sandbox=sandbox).sandbox(settings)
    isolation = {"backend": tool_sandbox.backend, "isolation": tool_sandbox.isolation_level}
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
            "sandbox": isolation,
            "started_at": datetime.now(UTC).isoformat(),
        },
    )
    meta = _record_sandbox(run_dir, meta, isolation)
    # Every intact line is kept; damaged ones go to <file>.damaged, and what they
    # recorded is rebuilt below (predictions) or by finishing the pass again (steps).
    repairs = [
        f"set aside {count} damaged line(s) of {name} in {name}.damaged"
        for name, key in ((PREDICTIONS_FILE, "id"), (STEPS_FILE, "step"))
        if (count := repair_jsonl(run_dir / name, key))
    ]
    steps = read_jsonl(run_dir / STEPS_FILE, "step")
    passes_done = {_pass_of(s) for s in steps}
    retries_done: dict[int, int] = {}
    for number, retry in passes_done:
        retries_done[number] = max(retries_done.get(number, 0), retry)
    predictions = read_jsonl(run_dir / PREDICTIONS_FILE, "id")
    latest = {p["id"]: p for p in predictions}
    # (batch, retry, task id) of every line: a pass resumed after its lines were
    # (partly) written writes only the missing ones.
    written = {(int(p.get("batch", 0)), int(p.get("retry", 0)), p["id"]) for p in predictions}
    outage = _OutageWatch(settings.max_consecutive_endpoint_failures)
    started = time.monotonic()
    with ExitStack() as stack:
        saver = stack.enter_context(
            aio.entered(
                open_async_checkpointer(
                    run_dir, url=settings.checkpoint_url, filename=CHECKPOINTS_FILE, holder="run"
                )
            )
        )
        saver = _crash_hook(saver)
        api_base = stack.enter_context(_local_api_if_needed(tasks))
        graph = create_evolve_graph(
            checkpointer=saver,
            max_concurrency=settings.batch_concurrency,
            models=models,
            tool_store=store,
            sandbox=sandbox,
            solver=solver,
            episode_checkpoints=settings.episode_checkpoints,
        )

        # Tasks of recorded passes whose prediction line was lost to damage (and not
        # superseded by a later pass of the batch): written again from the pass's final
        # checkpoint; without one, the task has no prediction and is run again below.
        by_task = {t.id: t for t in tasks}
        passes_with_line: dict[str, set[tuple[int, int]]] = {}
        for b, r, task_id in written:
            passes_with_line.setdefault(task_id, set()).add((b, r))
        rebuilt, rerun = 0, 0
        for step in steps:
            number, retry = _pass_of(step)
            lost = [
                by_task[i]
                for i in step.get("tasks") or []
                if i in by_task
                and not any(b == number and r >= retry for b, r in passes_with_line.get(i, ()))
            ]
            if not lost:
                continue
            config = {"configurable": {"thread_id": _thread_of(meta, number, retry)}}
            final = dict(graph.get_state(config).values or {})
            results = {r.get("task_id"): r for r in without_rejected_tools(final)}
            rows = [
                prediction_row(task, results[task.id], number, retry, scripted=scripted)
                for task in lost
                if batch_finished(final) and task.id in results
            ]
            append_jsonl(run_dir / PREDICTIONS_FILE, rows)
            for row in rows:
                written.add((number, retry, row["id"]))
                passes_with_line.setdefault(row["id"], set()).add((number, retry))
                latest[row["id"]] = row
            rebuilt += len(rows)
            rerun += sum(1 for task in lost if task.id not in latest)
        if rebuilt:
            repairs.append(f"rewrote {rebuilt} lost prediction(s) from their batch's checkpoints")
        if rerun:
            repairs.append(f"{rerun} task(s) without a prediction or a checkpoint are run again")
        if repairs:
            line = f"repaired the run in {run_dir}: " + "; ".join(repairs)
            if on_event is not None:
                on_event({"event": "run_repaired", "message": line})
            else:
                log.warning("%s", line)

        def run_pass(number: int, retry: int, chosen: Sequence[Task]) -> None:
            """Run one pass to its end and record it: predictions first, step line last."""
            thread = _thread_of(meta, number, retry)
            batch_id = f"{meta['run_id']}-b{number}" + (f"-r{retry}" if retry else "")
            pass_started = time.monotonic()
            final = _run_batch_graph(
                graph,
                {"configurable": {"thread_id": thread}},
                lambda: {
                    "batch_id": batch_id,
                    "tasks": [
                        {"id": t.id, "question": _question(t, api_base), "files": t.files}
                        for t in chosen
                    ],
                },
                settings,
                on_event,
                on_review,
            )
            by_id = {r.get("task_id"): r for r in without_rejected_tools(final)}
            missing = {
                "error": "the batch finished without a result for this task",
                "error_kind": "internal",
            }
            results = [by_id.get(t.id) or missing for t in chosen]
            rows = [
                prediction_row(task, result, number, retry, scripted=scripted)
                for task, result in zip(chosen, results, strict=True)
                if (number, retry, task.id) not in written
            ]
            append_jsonl(run_dir / PREDICTIONS_FILE, rows)
            for row in rows:
                written.add((number, retry, row["id"]))
                latest[row["id"]] = row
            step = step_row(
                # After a lost step line is written again, numbers still never repeat.
                max((int(s["step"]) for s in steps), default=0) + 1,
                chosen,
                final,
                steps,
                store.count(),
                time.monotonic() - pass_started,
                batch_number=number,
                retry=retry,
                scripted=scripted,
            )
            append_jsonl(run_dir / STEPS_FILE, [step])
            steps.append(step)
            if on_batch is not None:
                on_batch(step)
            for result in results:
                outage.observe(result)
            if outage.stop:
                raise EndpointOutageError(outage.last_failure, outage.failed_in_a_row, run_dir)

        for number, batch in enumerate(batches, 1):
            if (number, 0) not in passes_done:
                run_pass(number, 0, batch)
                continue
            retry = retries_done.get(number, 0) + 1
            thread = f"{meta['run_id']}:batch-{number}:retry-{retry}"
            stored = graph.get_state({"configurable": {"thread_id": thread}}).values or {}
            if stored.get("tasks"):
                # A retry pass that was interrupted runs the tasks it started with,
                # whatever the predictions (or retry_failed) say now.
                stored_ids = {t["id"] for t in stored["tasks"]}
                chosen = [t for t in batch if t.id in stored_ids]
            else:
                chosen = [
                    t
                    for t in batch
                    if needs_another_run(latest.get(t.id), retry_failed=retry_failed)
                ]
            if chosen:
                run_pass(number, retry, chosen)
    summary = summarize_run(run_dir, wall_time_s=time.monotonic() - started)
    return summary.model_copy(update={"repairs": repairs})


def _thread_of(meta: Mapping[str, Any], number: int, retry: int) -> str:
    """The checkpoint thread of a pass: ``<run_id>:batch-N``, ``...:retry-K`` for a retry."""
    return f"{meta['run_id']}:batch-{number}" + (f":retry-{retry}" if retry else "")


def check_run_can_start(
    run_dir: Path, store_dir: str | Path | None, *, records_url: str | None = None
) -> None:
    """Refuse, before anything is created, a store or run directory a run cannot use.

    Args:
        run_dir: The run directory (its checkpoints must be readable).
        store_dir: The store directory (must be writable and hold its records, or be
            new); ``None`` when the caller brings an open store.
        records_url: The records' PostgreSQL database, if they are not ``tools.db``
            in the store directory (which then holds no records to lose).

    Raises:
        StoreError: The one-line state of :mod:`insitu.tool_store.health`
            (read-only, a file, lost records, damaged checkpoints).
    """
    from insitu.tool_store.health import (
        check_checkpoints,
        check_location,
        check_records_present,
        check_writable,
    )

    if store_dir is not None:
        check_writable(Path(store_dir), "run tasks with the library")
        if not records_url:
            check_records_present(Path(store_dir))
    check_location(run_dir)
    check_checkpoints(run_dir / CHECKPOINTS_FILE, "run")


def _crash_hook(saver: Any) -> Any:
    """The run's checkpointer, killed by ``$INSITU_TEST_KILL_AFTER_CHECKPOINT_WRITES`` (tests)."""
    if not os.environ.get(KILL_AFTER_WRITES_ENV):
        return saver
    from insitu.testing.crash import kill_after_checkpoint_writes

    return kill_after_checkpoint_writes(saver, os.environ[KILL_AFTER_WRITES_ENV])


def summarize_run(run_dir: str | Path, *, wall_time_s: float | None = None) -> EvolveSummary:
    """Summarise a run directory from its files (each task by its last prediction)."""
    run_dir = Path(run_dir)
    predictions = read_predictions(run_dir)
    steps = read_jsonl(run_dir / STEPS_FILE)
    tokens: dict[str, Any] = {}
    for step in steps:
        tokens = merge_usage(tokens, step.get("tokens") or {})
    statuses = [p.get("status") for p in predictions]
    invocations = sum(int(s["invocations"]) for s in steps)
    successes = sum(int(s["successes"]) for s in steps)
    retry_passes = sum(1 for s in steps if _pass_of(s)[1])
    return EvolveSummary(
        run_dir=str(run_dir),
        batches=len(steps) - retry_passes,
        tasks=len(predictions),
        completed=statuses.count("completed"),
        incomplete=statuses.count("incomplete"),
        failed=statuses.count("failed"),
        endpoint_failed=sum(
            1
            for p in predictions
            if p.get("status") == "failed" and p.get("error_kind") == ENDPOINT_FAILURE
        ),
        retry_passes=retry_passes,
        library_size=int(steps[-1]["library_size"]) if steps else 0,
        egl=steps[-1]["egl"] if steps else None,
        tool_success_rate=tool_success_rate(successes, invocations),
        tokens=tokens,
        wall_time_s=round(
            wall_time_s if wall_time_s is not None else sum(s["wall_time_s"] for s in steps), 3
        ),
    )
