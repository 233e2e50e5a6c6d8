"""kill -9 of `insitu evolve` at chosen checkpoint writes (and at random moments), then resume.

Random-delay kills (``test_evolve_resume.py``) rarely land in the first
milliseconds of a batch: after its input checkpoint is written and before its
first step's, when ``get_state`` shows values and no pending node. There a run
once took the batch for finished and recorded every task as failed without
running it. Here the process SIGKILLs itself right after a chosen write
(``$INSITU_TEST_KILL_AFTER_CHECKPOINT_WRITES``, ``insitu.testing.crash``):
``batch-B:1`` is batch B's input checkpoint, ``batch-B:2`` the first task's
writes, and so on. One run goes through every kill point in turn, each process
resuming what the one before left; after every kill, no prediction may exist
for a task that did not run, and the end must equal an uninterrupted run.

The model endpoint is a loopback OpenAI-protocol server replying from the
scripted team (a test double); the CLI process, store, sandbox, checkpoints and
files are real.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from insitu.evolve import KILL_AFTER_WRITES_ENV
from insitu.testing import ScriptedOpenAIServer
from insitu.testing.team import ScriptedTeam, scripted_stream
from insitu.tool_store import ToolStore

pytestmark = pytest.mark.slow

TASKS = 6
BATCH = 2
#: Kill points in the order the processes meet them: the first writes of every
#: batch (again after a resume, which starts from the state the kill left), a
#: step in the middle, and the commit's last writes.
KILL_POINTS = (
    "batch-1:1",
    "batch-1:1",
    "batch-1:2",
    "batch-2:1",
    "batch-2:2",
    "batch-2:9",
    "batch-3:1",
    "batch-3:2",
    "batch-3:14",
)


def command(tasks: Path, store: Path, run: Path) -> list[str]:
    return [
        sys.executable, "-m", "insitu", "--store", str(store),
        "evolve", str(tasks), "--batch-size", str(BATCH), "--run-dir", str(run),
    ]  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def library(store: Path) -> list[tuple[str, int, str, str]]:
    with ToolStore.open(store, read_only=True) as opened:
        return sorted((r.name, r.version, r.hash, r.status) for r in opened.list("all"))


def assert_only_tasks_that_ran(run: Path, after: str) -> None:
    """Every prediction so far is of a task that ran (the scripted team completes them all)."""
    for row in lines(run / "predictions.jsonl"):
        assert row["status"] == "completed" and row["error"] is None, (
            f"after kill {after}: {row['id']} recorded as {row['status']}: {row['error']}"
        )


@pytest.fixture(scope="module")
def endpoint():
    with ScriptedOpenAIServer(ScriptedTeam().openai_responder(), api_key="k", latency_s=0.02) as s:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
        env.update(OPENAI_BASE_URL=s.base_url, OPENAI_API_KEY="k", INSITU_EMBEDDING="hashing")
        yield env


def test_kills_at_every_kind_of_checkpoint_write_resume_to_the_uninterrupted_result(
    tmp_path: Path, endpoint
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in scripted_stream(TASKS, seed=7)))
    started = time.monotonic()
    reference = subprocess.run(
        command(tasks, tmp_path / "ref-store", tmp_path / "ref-run"),
        env=endpoint, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    duration = time.monotonic() - started
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = {p["id"]: p["answer"] for p in lines(tmp_path / "ref-run" / "predictions.jsonl")}
    assert len(expected) == TASKS

    store, run = tmp_path / "store", tmp_path / "run"
    rng = random.Random(13)
    killed = []
    for point in (*KILL_POINTS, "random"):
        env = dict(endpoint)
        if point != "random":
            env[KILL_AFTER_WRITES_ENV] = point
        proc = subprocess.Popen(
            command(tasks, store, run), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if point == "random":
            time.sleep(rng.uniform(0.5, max(1.0, duration)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), stderr[-2000:]
        if proc.returncode == -signal.SIGKILL:
            killed.append(point)
        assert_only_tasks_that_ran(run, point)
    finish = subprocess.run(
        command(tasks, store, run), env=endpoint, capture_output=True, text=True, timeout=300
    )
    assert finish.returncode == 0, finish.stderr[-2000:]

    # Every batch was met at its first writes: the points are reached, not skipped.
    assert {p for p in KILL_POINTS if p.endswith((":1", ":2"))} <= set(killed), killed
    predictions = lines(run / "predictions.jsonl")
    assert sorted(p["id"] for p in predictions) == sorted(expected), "duplicated or lost"
    assert {p["id"]: p["answer"] for p in predictions} == expected
    assert_only_tasks_that_ran(run, "the end")
    steps = lines(run / "steps.jsonl")
    assert [(s["step"], s["batch"], s["retry"]) for s in steps] == [
        (n, n, 0) for n in range(1, TASKS // BATCH + 1)
    ]
    assert library(store) == library(tmp_path / "ref-store")
