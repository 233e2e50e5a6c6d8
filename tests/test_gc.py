"""`insitu gc`: old workspaces and checkpoint threads go; unfinished and paused ones stay.

Threads are made by the real graphs (the scripted team, the real sandbox) in
real SQLite checkpoint databases; "old" is simulated by measuring idle times
from a later ``now``.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from insitu.api import run_task
from insitu.cli import main
from insitu.evals.tasks import Task
from insitu.evolve import STEPS_FILE, evolve
from insitu.gc import collect_garbage
from insitu.testing.team import ScriptedTeam
from insitu.tool_store import ToolStore

MEAN = "What is the mean of 3, 5, 10 and 2?"
DATES = "How many days from 2024-01-01 to 2024-03-01?"
LATER = datetime.now(UTC) + timedelta(days=60)


def old_workspaces(store: ToolStore) -> set[str]:
    """The workspaces gc may remove: all but the paused task's (and its build scratch)."""
    return {
        p.name
        for p in (store.path / "workspaces").iterdir()
        if p.name not in ("paused", ".paused-scratch")
    }


def threads(database: Path) -> set[str]:
    with sqlite3.connect(database) as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}


@pytest.fixture
def store_with_threads(store: ToolStore, sandbox) -> ToolStore:
    """A finished run (thread 'done'), a paused one ('paused') and an orphan workspace."""
    context = {"store_dir": str(store.path)}
    done = run_task(
        MEAN,
        task_id="done",
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context=context,
    )
    assert done.status == "completed"
    paused = run_task(
        DATES,
        task_id="paused",
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context={**context, "pause_before": ["execute_task"]},
    )
    assert paused.status == "paused"
    orphan = store.path / "workspaces" / "orphan"
    orphan.mkdir(parents=True)
    (orphan / "left.txt").write_text("x" * 1000)
    return store


def test_dry_run_reports_and_removes_nothing(store_with_threads: ToolStore) -> None:
    store = store_with_threads
    report = collect_garbage(store.path, retention_days=30, dry_run=True, now=LATER)
    removed = {(i.kind, i.name) for i in report.items if i.remove}
    assert removed == {("thread", "done")} | {("workspace", n) for n in old_workspaces(store)}
    kept = {(i.kind, i.name): i.reason for i in report.items if not i.remove}
    assert kept[("thread", "paused")].startswith("paused")
    assert "paused thread" in kept[("workspace", "paused")]
    assert report.freed_bytes >= 1000
    assert threads(store.path / "checkpoints.sqlite") == {"done", "paused"}
    assert (store.path / "workspaces" / "orphan").is_dir()
    assert (store.path / "workspaces" / "done").is_dir()


def test_gc_frees_old_threads_and_workspaces_but_keeps_paused_ones(
    store_with_threads: ToolStore,
) -> None:
    store = store_with_threads
    # Within the retention, nothing goes.
    recent = collect_garbage(store.path, retention_days=30)
    assert not [i for i in recent.items if i.remove]
    report = collect_garbage(store.path, retention_days=30, now=LATER)
    assert not report.errors
    assert threads(store.path / "checkpoints.sqlite") == {"paused"}
    assert {
        p.name for p in (store.path / "workspaces").iterdir() if not p.name.startswith(".")
    } == {"paused"}
    assert len(report.removed("thread")) == 1 and len(report.removed("workspace")) >= 2
    assert str(store.path / "checkpoints.sqlite") in report.vacuumed
    # The paused run still resumes from its checkpoint.
    resumed = run_task(
        None,
        thread_id="paused",
        models=ScriptedTeam().model(),
        tool_store=store,
        context={"store_dir": str(store.path), "pause_before": ["execute_task"]},
        resume={},
    )
    assert resumed.status in ("completed", "paused")


def run(tmp_path: Path, name: str, store: ToolStore, sandbox) -> Path:
    folder = tmp_path / name
    tasks = [Task(id=f"{name}1", question=MEAN), Task(id=f"{name}2", question=DATES)]
    evolve(
        tasks,
        run_dir=folder,
        batch_size=1,
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context={"store_dir": str(store.path), "preflight": False},
    )
    return folder


def test_gc_never_touches_an_unfinished_run(store: ToolStore, sandbox, tmp_path: Path) -> None:
    finished = run(tmp_path, "a", store, sandbox)
    unfinished = run(tmp_path, "b", store, sandbox)
    steps = (unfinished / STEPS_FILE).read_text().splitlines(keepends=True)
    (unfinished / STEPS_FILE).write_text("".join(steps[:1]))  # killed before batch 2's line
    assert len(threads(finished / "checkpoints.sqlite")) == 2
    report = collect_garbage(store.path, [finished, unfinished], retention_days=30, now=LATER)
    assert threads(finished / "checkpoints.sqlite") == set()
    assert len(threads(unfinished / "checkpoints.sqlite")) == 2
    reasons = {i.reason for i in report.items if i.where == str(unfinished / "checkpoints.sqlite")}
    assert reasons == {"unfinished run: 1 batch(es) not finished"}
    left = {p.name for p in (store.path / "workspaces").iterdir() if not p.name.startswith(".")}
    assert left == {"b1", "b2"}


def test_a_folder_that_is_not_a_run_is_refused(store: ToolStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a run folder"):
        collect_garbage(store.path, [tmp_path], retention_days=1)
    result = CliRunner().invoke(main, ["--store", str(store.path), "gc", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_the_cli_reports_what_it_freed(store_with_threads: ToolStore) -> None:
    store = store_with_threads
    args = ["--store", str(store.path), "gc", "--retention-days", "0"]
    count = len(old_workspaces(store))
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"dry run: would remove {count} workspace(s) and 1 checkpoint thread(s)" in dry.output
    assert threads(store.path / "checkpoints.sqlite") == {"done", "paused"}
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert f"removed {count} workspace(s) and 1 checkpoint thread(s): freed" in done.output
    assert "bytes" in done.output and "paused" in done.output
    assert threads(store.path / "checkpoints.sqlite") == {"paused"}
