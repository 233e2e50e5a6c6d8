"""Runs that survive model endpoint outages, and batches that are never lost (issue #13).

The model is the scripted team (a test double) behind a switch: while the
"endpoint" is down, its calls raise a connection error, which the episode
records as a failure of kind ``endpoint``. The graphs, store, sandbox,
checkpoints and run files are real.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

import insitu.evolve as evolve_module
from insitu.checkpoints import sqlite_checkpointer
from insitu.evals.tasks import Task
from insitu.evolve import (
    CHECKPOINTS_FILE,
    EndpointOutageError,
    evolve,
    read_jsonl,
    read_predictions,
    summarize_run,
)
from insitu.graphs.evolve import create_evolve_graph
from insitu.llm import ModelEndpointError
from insitu.testing import ScriptedChatModel
from insitu.testing.team import ScriptedTeam, prompt_text, scripted_stream
from insitu.tool_store import ToolStore


class Endpoint:
    """The scripted team behind a switch, recording which tasks the Manager was asked.

    Attributes:
        down: While true, every call fails as an unreachable server does.
        fails: Which prompts fail while up (e.g. only one role's, or one kind of task).
        planned: The task line of every Manager prompt answered, in order.
    """

    def __init__(self, fails: Callable[[str], bool] | None = None) -> None:
        self.team = ScriptedTeam()
        self.down = False
        self.fails = fails
        self.planned: list[str] = []
        self._lock = threading.Lock()

    def respond(self, messages: list[BaseMessage], tools: list[dict]) -> Any:
        prompt = prompt_text(messages)
        if self.down or (self.fails is not None and self.fails(prompt)):
            raise ConnectionError("connection refused")
        if prompt.startswith("You are the Manager"):
            task = prompt.split("## Task\n", 1)[1].split("\n", 1)[0]
            with self._lock:
                self.planned.append(task)
        return self.team.respond(messages, tools)

    def model(self) -> ScriptedChatModel:
        return ScriptedChatModel(responder=self.respond)


#: Stops a run of one batch of two tasks that both failed on the endpoint.
TWO_IN_A_ROW = {"max_consecutive_endpoint_failures": 2}


def stream(count: int) -> list[Task]:
    return [Task(**t) for t in scripted_stream(count)]


def settings(store, **more: Any) -> dict[str, Any]:
    # No retries: a refused connection fails the call at once.
    return {"store_dir": str(store.path), "max_retries": 0, **more}


def run(tasks, run_dir: Path, endpoint: Endpoint, store, sandbox, **kwargs: Any):
    context = settings(store, **kwargs.pop("context", {}))
    return evolve(
        tasks,
        run_dir=run_dir,
        models=endpoint.model(),
        tool_store=store,
        sandbox=sandbox,
        context=context,
        scripted=True,
        **kwargs,
    )


def passes(run_dir: Path) -> list[tuple[int, int]]:
    return [(s["batch"], s["retry"]) for s in read_jsonl(run_dir / "steps.jsonl")]


# ------------------------------------------------------------------ outages


#: The Manager plans every task (no plan reuse), so that the endpoint's plans count the
#: tasks that ran.
EVERY_TASK_PLANNED = {"reuse_plan_min_similarity": None}


def test_an_outage_stops_the_run_and_resuming_reruns_exactly_its_tasks(
    store, sandbox, tmp_path
) -> None:
    tasks = stream(10)
    run_dir = tmp_path / "run"
    endpoint = Endpoint()

    def go_down_after_the_first_batch(step: dict[str, Any]) -> None:
        endpoint.down = True

    with pytest.raises(EndpointOutageError) as raised:
        run(
            tasks,
            run_dir,
            endpoint,
            store,
            sandbox,
            batch_size=2,
            context={"max_consecutive_endpoint_failures": 3, **EVERY_TASK_PLANNED},
            on_batch=go_down_after_the_first_batch,
        )
    # Batch 2 failed 2 tasks in a row, batch 3 two more: the run stopped after batch 3.
    error = raised.value
    assert isinstance(error, ModelEndpointError)
    assert error.failed_in_a_row == 4
    assert error.failure["kind"] == "endpoint" and error.failure["role"] == "manager"
    assert "connection refused" in str(error) and "same command" in str(error)
    predictions = read_jsonl(run_dir / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [t.id for t in tasks[:6]]
    assert [p["status"] for p in predictions[:2]] == ["completed"] * 2
    for failed in predictions[2:]:  # the cause is in the predictions
        assert failed["status"] == "failed" and failed["error_kind"] == "endpoint"
        assert "connection refused" in failed["error"] and "\n" not in failed["error"]
        assert failed["failure"]["role"] == "manager"
    assert passes(run_dir) == [(1, 0), (2, 0), (3, 0)]
    assert summarize_run(run_dir).endpoint_failed == 4

    endpoint.down = False
    endpoint.planned.clear()
    summary = run(
        tasks, run_dir, endpoint, store, sandbox, batch_size=2, context=EVERY_TASK_PLANNED
    )
    # Exactly the failed tasks ran again (each once), then the batches not yet run.
    assert Counter(endpoint.planned) == Counter(t.question for t in tasks[2:])
    assert passes(run_dir) == [(1, 0), (2, 0), (3, 0), (2, 1), (3, 1), (4, 0), (5, 0)]
    steps = read_jsonl(run_dir / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 8))
    assert [s["tasks_processed"] for s in steps] == [2, 4, 6, 6, 6, 8, 10]
    # Each task counts once, by its last prediction.
    assert (summary.tasks, summary.completed, summary.failed) == (10, 10, 0)
    assert (summary.batches, summary.retry_passes, summary.endpoint_failed) == (5, 2, 0)
    latest = read_predictions(run_dir)
    assert [p["id"] for p in latest] == [t.id for t in tasks]
    retried = {p["id"]: p["retry"] for p in latest}
    assert retried == {t.id: 1 if 2 <= i < 6 else 0 for i, t in enumerate(tasks)}
    assert len(read_jsonl(run_dir / "predictions.jsonl")) == 14  # the failures stay on record


def test_failures_that_are_not_in_a_row_do_not_stop_the_run(store, sandbox, tmp_path) -> None:
    tasks = stream(6)  # alternating statistics and date tasks
    run_dir = tmp_path / "run"
    summary = run(
        tasks,
        run_dir,
        Endpoint(fails=lambda prompt: "How many days" in prompt),
        store,
        sandbox,
        batch_size=2,
        context={"max_consecutive_endpoint_failures": 2},
    )
    assert (summary.completed, summary.failed, summary.endpoint_failed) == (3, 3, 3)

    endpoint = Endpoint()  # the endpoint answers again: the same call reruns the failures
    summary = run(tasks, run_dir, endpoint, store, sandbox, batch_size=2)
    assert sorted(endpoint.planned) == sorted(t.question for t in tasks[1::2])
    assert passes(run_dir)[3:] == [(1, 1), (2, 1), (3, 1)]
    assert (summary.completed, summary.failed, summary.tasks) == (6, 0, 6)
    # Nothing left to retry: a further call runs nothing.
    again = Endpoint()
    run(tasks, run_dir, again, store, sandbox, batch_size=2)
    assert again.planned == [] and len(passes(run_dir)) == 6


def test_tokens_spent_before_an_endpoint_failure_are_counted(store, sandbox, tmp_path) -> None:
    run_dir = tmp_path / "run"
    endpoint = Endpoint(fails=lambda prompt: prompt.startswith("You are the Executor"))
    with pytest.raises(EndpointOutageError) as raised:
        run(
            stream(1),
            run_dir,
            endpoint,
            store,
            sandbox,
            batch_size=1,
            context={"max_consecutive_endpoint_failures": 1},
        )
    assert raised.value.failed_in_a_row == 1 and raised.value.failure["role"] == "executor"
    (prediction,) = read_jsonl(run_dir / "predictions.jsonl")
    assert prediction["status"] == "failed" and prediction["error_kind"] == "endpoint"
    # The Manager planned and the ToolDeveloper built before the Executor's call failed.
    assert prediction["tokens"]["manager"]["input_tokens"] > 0
    assert prediction["tokens"]["tool_developer"]["output_tokens"] > 0
    (step,) = read_jsonl(run_dir / "steps.jsonl")
    assert step["tokens"]["manager"] == prediction["tokens"]["manager"]
    assert step["failures"] == {"endpoint": 1}
    assert summarize_run(run_dir).tokens["manager"]["input_tokens"] > 0


def test_a_retried_tasks_tools_are_absorbed_and_committed(store, sandbox, tmp_path) -> None:
    tasks = stream(2)
    run_dir = tmp_path / "run"
    endpoint = Endpoint()
    endpoint.down = True
    with pytest.raises(EndpointOutageError):
        run(tasks, run_dir, endpoint, store, sandbox, batch_size=2, context=TWO_IN_A_ROW)
    assert store.count() == 0

    endpoint.down = False
    summary = run(tasks, run_dir, endpoint, store, sandbox, batch_size=2)
    assert summary.completed == 2 and summary.library_size == 2
    assert sorted(r.name for r in store.list()) == ["compute_date_difference", "summarize_numbers"]
    first, retry = read_jsonl(run_dir / "steps.jsonl")
    assert (retry["batch"], retry["retry"]) == (1, 1)
    assert retry["tools_created"] == 2 and sorted(retry["absorb"]["added"]) == [
        "compute_date_difference",
        "summarize_numbers",
    ]
    assert retry["commit"]["applied"] and "-b1-r1:" in retry["commit"]["commit_id"]
    assert not first["commit"]["applied"]  # the failed pass had nothing to commit
    assert retry["egl"] is not None and retry["tasks_processed"] == 2


def test_retry_failed_reruns_every_failure(store, sandbox, tmp_path, monkeypatch) -> None:
    tasks = stream(2)
    run_dir = tmp_path / "run"
    search = store.search

    def search_breaking_on_dates(query: str, *args: Any, **kwargs: Any) -> Any:
        if "How many days" in query:  # a bug, not the endpoint: the episode raises
            raise RuntimeError("the index is corrupt")
        return search(query, *args, **kwargs)

    monkeypatch.setattr(store, "search", search_breaking_on_dates)
    summary = run(tasks, run_dir, Endpoint(), store, sandbox, batch_size=2)
    monkeypatch.setattr(store, "search", search)
    (broken,) = [p for p in read_predictions(run_dir) if p["status"] == "failed"]
    assert broken["id"] == tasks[1].id and broken["error_kind"] == "internal"
    assert "RuntimeError: the index is corrupt" in broken["error"]
    assert summary.failed == 1 and summary.endpoint_failed == 0

    endpoint = Endpoint()
    run(tasks, run_dir, endpoint, store, sandbox, batch_size=2)
    assert endpoint.planned == []  # not an endpoint failure: kept as it is
    summary = run(tasks, run_dir, endpoint, store, sandbox, batch_size=2, retry_failed=True)
    assert endpoint.planned == [tasks[1].question]
    assert (summary.completed, summary.failed, summary.retry_passes) == (2, 0, 1)


@pytest.mark.parametrize("killed_while_writing", ["predictions.jsonl", "steps.jsonl"])
def test_a_crash_while_recording_a_retry_pass_resumes_cleanly(
    store, sandbox, tmp_path, monkeypatch, killed_while_writing
) -> None:
    tasks = stream(2)
    run_dir = tmp_path / "run"
    endpoint = Endpoint()
    endpoint.down = True
    with pytest.raises(EndpointOutageError):
        run(tasks, run_dir, endpoint, store, sandbox, batch_size=2, context=TWO_IN_A_ROW)

    class Killed(BaseException):
        """Stands in for a kill between the retry pass's graph and its records."""

    append = evolve_module.append_jsonl

    def append_then_die(path: Path, rows) -> None:
        if path.name == killed_while_writing:
            if killed_while_writing == "predictions.jsonl":
                raise Killed
            append(path, rows)
            raise Killed
        append(path, rows)

    endpoint.down = False
    monkeypatch.setattr(evolve_module, "append_jsonl", append_then_die)
    with pytest.raises(Killed):
        run(tasks, run_dir, endpoint, store, sandbox, batch_size=2)
    monkeypatch.setattr(evolve_module, "append_jsonl", append)
    planned = list(endpoint.planned)
    assert sorted(planned) == sorted(t.question for t in tasks)
    commits_before = store.count()

    summary = run(tasks, run_dir, endpoint, store, sandbox, batch_size=2)
    assert endpoint.planned == planned  # the finished pass was read back, not run again
    assert store.count() == commits_before == 2
    assert passes(run_dir) == [(1, 0), (1, 1)]
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert Counter((p["id"], p["retry"]) for p in rows) == Counter(
        [(t.id, r) for t in tasks for r in (0, 1)]
    )
    assert summary.completed == 2 and summary.retry_passes == 1


def test_a_comparison_stops_on_an_outage_and_grades_each_task_once(sandbox, tmp_path) -> None:
    from insitu.evals.harness import run_comparison

    tasks = []
    for task in stream(4):
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", task.question)]
        if "mean" in task.question:
            answer = f"mean {statistics.fmean(numbers):g}, median {statistics.median(numbers):g}"
        else:
            start, end = (
                date.fromisoformat(d) for d in re.findall(r"\d{4}-\d\d-\d\d", task.question)
            )
            answer = f"{(end - start).days} days"
        tasks.append(task.model_copy(update={"answer": answer, "grader": "exact"}))
    endpoint = Endpoint()
    endpoint.down = True
    settings = {"embedding": "hashing", "max_retries": 0, **TWO_IN_A_ROW}
    compare = {"systems": ["insitu"], "run_dir": tmp_path, "batch_size": 2, "context": settings}
    with pytest.raises(EndpointOutageError):
        run_comparison(tasks, models=endpoint.model(), scripted=True, **compare)

    endpoint.down = False
    comparison = run_comparison(
        tasks, models=endpoint.model(), scripted=True, retry_failed=True, **compare
    )
    (insitu,) = comparison.systems
    assert (insitu.tasks, insitu.graded, insitu.correct, insitu.failed) == (4, 4, 4, 0)
    rows = read_jsonl(tmp_path / "insitu" / "predictions.jsonl")
    assert len(rows) == 6 and [("grade" in row) for row in rows[:2]] == [False, False]


# ------------------------------------------------------------------ issue #13

#: Runs evolve in a child process that dies once the first batch's input checkpoint
#: and its fan-out's writes are saved, before its first step's checkpoint is. (LangGraph
#: saves checkpoints and writes in background threads: the step's save is held back so
#: that the process dies in the same state whichever of them comes first.)
KILLED_AFTER_INPUT_CHECKPOINT = """
import asyncio, json, os, sys, time
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from insitu.evals.tasks import Task
from insitu.evolve import evolve
from insitu.testing.team import ScriptedTeam

put, put_writes = AsyncSqliteSaver.aput, AsyncSqliteSaver.aput_writes

async def put_or_hold(self, config, checkpoint, metadata, new_versions):
    if metadata.get("step", -1) >= 0:
        await asyncio.sleep(60)
    return await put(self, config, checkpoint, metadata, new_versions)

async def put_writes_then_die(self, config, writes, task_id, task_path=""):
    await put_writes(self, config, writes, task_id, task_path)
    if any(channel == "tasks" for channel, _ in writes):
        deadline = time.monotonic() + 30
        while await self.aget_tuple(config) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        os._exit(17)

AsyncSqliteSaver.aput, AsyncSqliteSaver.aput_writes = put_or_hold, put_writes_then_die
tasks = [Task(**t) for t in json.loads(sys.argv[1])]
evolve(tasks, run_dir=sys.argv[2], batch_size=2, models=ScriptedTeam().model(),
       context={"store_dir": sys.argv[3], "embedding": "hashing"})
"""


def test_a_batch_killed_after_its_input_checkpoint_is_run_not_lost(sandbox, tmp_path) -> None:
    tasks = stream(4)
    run_dir, store_dir = tmp_path / "run", tmp_path / "store"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_AFTER_INPUT_CHECKPOINT,
            json.dumps([t.model_dump() for t in tasks]),
            str(run_dir),
            str(store_dir),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert child.returncode == 17, child.stderr[-2000:]
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    with sqlite_checkpointer(run_dir, CHECKPOINTS_FILE) as saver:
        graph = create_evolve_graph(checkpointer=saver, models=ScriptedTeam().model())
        snapshot = graph.get_state({"configurable": {"thread_id": f"{run_id}:batch-1"}})
    # The state that looked finished: the input is there, nothing is pending, no results.
    assert [t["id"] for t in snapshot.values["tasks"]] == [t.id for t in tasks[:2]]
    assert snapshot.next == () and not snapshot.values.get("results")
    assert "finished_at" not in snapshot.values
    assert not (run_dir / "predictions.jsonl").exists()

    endpoint = Endpoint()
    with ToolStore.open(store_dir, embedding="hashing") as store:
        summary = run(tasks, run_dir, endpoint, store, sandbox, batch_size=2)
    # Every task ran (once) before it was recorded, and none is recorded without a result.
    assert Counter(endpoint.planned) == Counter(t.question for t in tasks)
    predictions = read_jsonl(run_dir / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [t.id for t in tasks]
    assert all(p["status"] == "completed" and p["error"] is None for p in predictions)
    assert all(re.search(r"\d", p["answer"]) for p in predictions)
    assert summary.completed == 4 and passes(run_dir) == [(1, 0), (2, 0)]
