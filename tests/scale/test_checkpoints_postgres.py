"""Checkpoints in PostgreSQL (``checkpoint_url``): runs pause, stop, and resume from there.

Marker ``scale``: a real PostgreSQL server (a database per test), the scripted
team (a test double) as the model, and the real graphs, store and sandbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from insitu.api import run_task
from insitu.checkpoints import (
    CHECKPOINTS_FILE,
    CheckpointStoreError,
    open_checkpointer,
    redact,
    schema_for,
)
from insitu.evals.tasks import Task
from insitu.evolve import ReviewPending, evolve, read_jsonl
from insitu.llm import ConfigurationError
from insitu.testing.services import free_port
from insitu.testing.team import ScriptedTeam

pytestmark = pytest.mark.scale

MEAN_TASK = "What is the mean of 3, 5, 10 and 2?"
DAYS_TASK = "How many days from 2024-01-01 to 2024-03-01?"


def _threads(dsn: str, directory: Path, filename: str = CHECKPOINTS_FILE) -> dict[str, int]:
    """Checkpoints per thread id in the schema of ``directory``'s checkpoints."""
    import psycopg
    from psycopg import sql

    schema = schema_for(str(directory.resolve() / filename))
    query = sql.SQL("SELECT thread_id, count(*) FROM {}.checkpoints GROUP BY thread_id").format(
        sql.Identifier(schema)
    )
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(query).fetchall())


def _insitu(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insitu", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def test_insitu_run_pauses_and_resumes_in_another_process(tmp_path: Path, postgres_dsn) -> None:
    """`insitu run` keeps its checkpoints in PostgreSQL; a new process resumes from them."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
    env.update(INSITU_EMBEDDING="hashing", INSITU_CHECKPOINT_URL=postgres_dsn)
    common = ("--store", str(store), "--set", "tool_approval=new")
    paused = _insitu("run", "--scripted", MEAN_TASK, *common, env=env)
    assert paused.returncode == 1, paused.stderr
    thread = paused.stderr.split("insitu run --resume ")[1].split()[0].strip("`)")
    assert _threads(postgres_dsn, store)[thread] > 0
    assert not (store / CHECKPOINTS_FILE).exists()
    assert (
        _insitu("tools", "approve", "summarize_numbers", "--store", str(store), env=env).returncode
        == 0
    )
    done = _insitu("run", "--scripted", "--resume", thread, *common, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mean 5, median 4")
    assert not (store / CHECKPOINTS_FILE).exists()


def test_run_task_pause_before_and_resume(store, sandbox, postgres_dsn) -> None:
    common: dict[str, Any] = {
        "models": ScriptedTeam().model(),
        "tool_store": store,
        "sandbox": sandbox,
        "context": {
            "store_dir": str(store.path),
            "pause_before": ["write_answer"],
            "checkpoint_url": postgres_dsn,
        },
    }
    paused = run_task(MEAN_TASK, **common)
    assert paused.status == "paused" and paused.review["step"] == "write_answer"
    before = _threads(postgres_dsn, store.path)[paused.thread_id]
    done = run_task(None, thread_id=paused.thread_id, resume="go", **common)
    assert done.status == "completed" and done.answer == "mean 5, median 4"
    assert _threads(postgres_dsn, store.path)[paused.thread_id] > before
    assert not (store.path / CHECKPOINTS_FILE).exists()


def test_evolve_pauses_for_review_and_resumes_from_postgres(
    store, sandbox, tmp_path: Path, postgres_dsn
) -> None:
    tasks = [Task(id="a", question=MEAN_TASK), Task(id="b", question=DAYS_TASK)]
    run_dir = tmp_path / "run"
    common: dict[str, Any] = {
        "run_dir": run_dir,
        "batch_size": 2,
        "models": ScriptedTeam().model(),
        "tool_store": store,
        "sandbox": sandbox,
        "context": {
            "store_dir": str(store.path),
            "tool_approval": "new",
            "checkpoint_url": postgres_dsn,
        },
    }
    with pytest.raises(ReviewPending) as pending:
        evolve(tasks, **common)
    threads = _threads(postgres_dsn, run_dir)
    assert pending.value.thread_id in threads
    assert store.count() == 0 and not (run_dir / "predictions.jsonl").exists()
    summary = evolve(tasks, on_review=lambda review: "approve", **common)
    assert summary.completed == 2 and store.count() == 2
    assert [p["id"] for p in read_jsonl(run_dir / "predictions.jsonl")] == ["a", "b"]
    assert not (run_dir / CHECKPOINTS_FILE).exists()
    # Run again: the finished batch is skipped, nothing is solved or written twice.
    evolve(tasks, **common)
    assert len(read_jsonl(run_dir / "steps.jsonl")) == 1


def test_each_directory_has_its_own_schema(tmp_path: Path, postgres_dsn) -> None:
    """Two run directories may use the same thread ids (same tasks, two systems)."""
    config = {"configurable": {"thread_id": "run-x:batch-1", "checkpoint_ns": ""}}
    from langgraph.checkpoint.base import empty_checkpoint

    for name in ("one", "two"):
        with open_checkpointer(tmp_path / name, url=postgres_dsn) as saver:
            checkpoint = empty_checkpoint()
            saver.put(config, checkpoint, {"source": "input", "step": -1, "writes": {}}, {})
    with open_checkpointer(tmp_path / "one", url=postgres_dsn) as saver:
        assert len(list(saver.list(config))) == 1
    assert _threads(postgres_dsn, tmp_path / "one") == {"run-x:batch-1": 1}
    assert _threads(postgres_dsn, tmp_path / "two") == {"run-x:batch-1": 1}


def test_a_bad_or_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    with (
        pytest.raises(ConfigurationError, match="expected a postgresql:// URL"),
        open_checkpointer(tmp_path, url="mysql://u:secret@host/db"),
    ):
        pass
    url = f"postgresql://insitu:secret@127.0.0.1:{free_port()}/none"
    with (
        pytest.raises(CheckpointStoreError, match="insitu:\\*\\*\\*@127") as failed,
        open_checkpointer(tmp_path, url=url),
    ):
        pass
    assert "secret" not in str(failed.value)
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"
