"""kill -9 of a real `insitu evolve` at random moments, then resume: nothing lost or doubled.

The model endpoint is a loopback OpenAI-protocol server replying from the
scripted team (a test double); the CLI process, store, sandbox, checkpoints
and files are real.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from insitu.testing import ScriptedOpenAIServer
from insitu.testing.team import ScriptedTeam, scripted_stream
from insitu.tool_store import ToolStore

pytestmark = pytest.mark.slow

TASKS = 12
BATCH = 3


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


def learned(store: Path) -> tuple[list, list, list]:
    """What the run learned: experiences (task, outcome, tools), usage notes, harvested cases."""
    with ToolStore.open(store, read_only=True) as opened:
        experiences = sorted(
            (e.task_id, e.status, tuple(t.ref for t in e.tools))
            for e in opened.experiences(limit=100_000)
        )
        names = [r.name for r in opened.list("all")]
        notes = sorted(
            (n.name, n.version, n.notes) for name in names if (n := opened.usage_notes(name))
        )
        cases = sorted(
            (c.name, c.case_id, c.source_ref)
            for name in names
            for c in opened.harvested_cases(name, include_stale=True)
        )
    return experiences, notes, cases


@pytest.fixture(scope="module")
def endpoint():
    with ScriptedOpenAIServer(ScriptedTeam().openai_responder(), api_key="k", latency_s=0.03) as s:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
        env.update(OPENAI_BASE_URL=s.base_url, OPENAI_API_KEY="k", INSITU_EMBEDDING="hashing")
        yield env


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path: Path, endpoint) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in scripted_stream(TASKS, seed=7)))

    started = time.monotonic()
    reference = subprocess.run(
        command(tasks, tmp_path / "ref-store", tmp_path / "ref-run"),
        env=endpoint, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    duration = time.monotonic() - started
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected_predictions = {
        p["id"]: p["answer"] for p in lines(tmp_path / "ref-run" / "predictions.jsonl")
    }
    assert len(expected_predictions) == TASKS
    expected_library = library(tmp_path / "ref-store")
    expected_learned = learned(tmp_path / "ref-store")
    # One experience per task, committed with its batch, except for clean successes on a
    # reused plan (docs/learning.md), which add none.
    assert 0 < len(expected_learned[0]) <= TASKS

    rng = random.Random(2026)
    total_kills = 0
    for trial in range(3):
        store, run = tmp_path / f"store-{trial}", tmp_path / f"run-{trial}"
        kills = 0
        for attempt in range(6):
            proc = subprocess.Popen(
                command(tasks, store, run), env=endpoint,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            if attempt < 2:  # kill twice per trial, at random moments
                time.sleep(rng.uniform(0.3, max(0.6, duration * 0.8)))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                proc.wait(timeout=60)
                continue
            _, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr[-2000:]
            break
        predictions = lines(run / "predictions.jsonl")
        ids = Counter(p["id"] for p in predictions)
        assert ids == Counter(list(expected_predictions)), (
            f"trial {trial}: duplicated or lost predictions"
        )
        assert {p["id"]: p["answer"] for p in predictions} == expected_predictions
        # Every task ran before it was recorded (a lost batch once wrote "no result").
        assert all(p["status"] == "completed" and p["error"] is None for p in predictions)
        steps = lines(run / "steps.jsonl")
        assert [s["step"] for s in steps] == list(range(1, TASKS // BATCH + 1))
        assert [(s["batch"], s["retry"]) for s in steps] == [
            (n, 0) for n in range(1, TASKS // BATCH + 1)
        ]
        assert library(store) == expected_library, f"trial {trial} (killed {kills} times)"
        # Nothing learned is lost or doubled either (each batch commits it once, atomically).
        assert learned(store) == expected_learned, f"trial {trial} (killed {kills} times)"
        total_kills += kills
    assert total_kills >= 4  # the kills really interrupted running processes
