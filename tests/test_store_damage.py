"""Every damaged or unusable store state through the real CLI: one line, exit 3, nothing lost.

For each state of ``docs/troubleshooting.md``: the exact kind of message, the
exit code, that nothing was created where nothing may be, and that nothing
stored was changed. Most commands run in-process with click's ``CliRunner``.

The read-only store is a real read-only mount, not a ``chmod``: these tests run
as root in CI, and root writes through permission bits. ``bwrap --ro-bind``
(the sandbox's own tool) mounts the store read-only for one ``python -m
insitu`` process, which then meets EROFS exactly as on a read-only volume; the
tests skip where bubblewrap cannot create a mount namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from insitu.cli import main
from insitu.cli.common import EXIT_CONFIG, EXIT_RUNTIME
from insitu.context import InsituContext
from insitu.doctor import FAIL, OK, WARN, check_store, check_store_parts
from insitu.testing.team import scripted_stream
from insitu.tool_store import ToolStore
from insitu.tool_store.testing import catalogue_specs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_EMBEDDING", "hashing")
    monkeypatch.delenv("INSITU_STORE", raising=False)
    monkeypatch.delenv("INSITU_CHROMA_URL", raising=False)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Four tools in a library on disk, closed (no lock held)."""
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing") as store:
        for spec in catalogue_specs()[:4]:
            store.add(spec)
    return path


def tools(store: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(store), "tools", *args])


def one_line_failure(result: Result, code: int, *fragments: str) -> str:
    """The command failed with ``code`` and one line holding every fragment, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every file under ``path`` with its content (directories as None)."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


def records(store: Path) -> list[tuple[str, int, str]]:
    with ToolStore.open(store, read_only=True) as opened:
        return [(r.name, r.version, r.hash) for r in opened.list("all")]


def tasks_file(tmp_path: Path, count: int = 4) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in scripted_stream(count, seed=3)))
    return path


def evolve(store: Path, tasks: Path, run: Path) -> Result:
    args = ["evolve", str(tasks), "-b", "2", "--run-dir", str(run), "--scripted"]
    return CliRunner().invoke(main, ["--store", str(store), *args])


def truncate_half(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)


def sqlite_file(path: Path) -> Path:
    """A real SQLite file of many pages (no -wal: closed), as a checkpoints file is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE checkpoints (thread_id TEXT, checkpoint BLOB)")
        rows = [(str(i), b"x" * 900) for i in range(200)]
        db.executemany("INSERT INTO checkpoints VALUES (?, ?)", rows)
    db.close()
    return path


# ------------------------------------------------------------------ read-only


def _bwrap_read_only_works(tmp_path: Path) -> bool:
    if shutil.which("bwrap") is None:
        return False
    target = tmp_path / "probe"
    target.mkdir()
    probe = subprocess.run(
        ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(target), str(target),
         "touch", str(target / "x")],
        capture_output=True, text=True,
    )  # fmt: skip
    return probe.returncode != 0 and "Read-only file system" in probe.stderr


def read_only_insitu(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m insitu --store STORE ARGS`` with STORE mounted read-only (even for root)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INSITU_"))}
    env.update(INSITU_EMBEDDING="hashing", PYTHONPATH=f"{REPO}:{env.get('PYTHONPATH', '')}")
    return subprocess.run(
        ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(store), str(store),
         sys.executable, "-m", "insitu", "--store", str(store), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_a_read_only_store_reads_and_refuses_writes_creating_nothing(
    library: Path, tmp_path: Path
) -> None:
    if not _bwrap_read_only_works(tmp_path):
        pytest.skip("bubblewrap cannot mount a directory read-only here")
    name = records(library)[0][0]  # (a reader here, where it may write, makes tools.db-shm)
    before = snapshot(library)

    listed = read_only_insitu(library, "tools", "list")
    assert listed.returncode == 0, listed.stderr
    assert "4 active tool(s)" in listed.stdout
    searched = read_only_insitu(library, "tools", "search", "mean of numbers", "-k", "2")
    assert searched.returncode == 0 and "top 2" in searched.stdout, searched.stderr
    exported = read_only_insitu(library, "tools", "export", str(tmp_path / "export"))
    assert exported.returncode == 0 and "exported 4 tool(s)" in exported.stdout

    for args in (
        ("tools", "lock", name),
        ("tools", "reindex"),
        ("evolve", str(tasks_file(tmp_path)), "--run-dir", str(tmp_path / "run"), "--scripted"),
        ("run", "What is the mean of 3, 5 and 10?", "--scripted"),
        ("demo", "--keep"),
    ):
        refused = read_only_insitu(library, *args)
        assert refused.returncode == EXIT_RUNTIME, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, refused.stderr
        assert f"the tool library at {library} is read-only" in errors[0]
        assert "read-only file system" in errors[0] and "nothing was changed" in errors[0]
    assert not (tmp_path / "run").exists()  # no half-created run folder
    assert snapshot(library) == before  # no lock file, no index change, nothing


# ---------------------------------------------------------------- checkpoints


def test_damaged_store_checkpoints_are_named_with_their_recovery(library: Path) -> None:
    checkpoints = sqlite_file(library / "checkpoints.sqlite")
    truncate_half(checkpoints)
    damaged = checkpoints.read_bytes()

    result = CliRunner().invoke(
        main, ["--store", str(library), "run", "What is the mean of 3, 5 and 10?", "--scripted"]
    )

    one_line_failure(
        result,
        EXIT_RUNTIME,
        f"the store's checkpoints (runs of `insitu run` that were interrupted or await a tool "
        f"review, resumable with --resume) at {checkpoints} are damaged: truncated:",
        f"mv {checkpoints} {checkpoints}.damaged",
        "the tool library (tools.db) is intact",
    )
    assert checkpoints.read_bytes() == damaged


def test_checkpoints_damaged_inside_are_named_when_read(library: Path) -> None:
    run = ["--store", str(library), "run", "What is the mean of 3, 5 and 10?", "--scripted"]
    first = CliRunner().invoke(main, run)
    assert first.exit_code == 0, first.output
    thread = first.output.split("thread id: ")[1].split(" ")[0]
    checkpoints = library / "checkpoints.sqlite"
    with sqlite3.connect(checkpoints) as db:  # fold the WAL in: one file to damage
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(checkpoints.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(2 * page, len(data), 2 * page):  # every other page but the first
        data[start : start + page] = os.urandom(page)
    checkpoints.write_bytes(bytes(data))

    result = CliRunner().invoke(main, [*run[:3], "run", "--resume", thread, "--scripted"])

    one_line_failure(
        result,
        EXIT_RUNTIME,
        f"the store's checkpoints (runs of `insitu run` that were interrupted or await a tool "
        f"review, resumable with --resume) at {checkpoints} are damaged:",
        "the tool library (tools.db) is intact",
    )


def test_damaged_run_checkpoints_are_named_and_moving_them_aside_recovers(
    library: Path, tmp_path: Path
) -> None:
    tasks, run = tasks_file(tmp_path), tmp_path / "run"
    assert evolve(library, tasks, run).exit_code == 0
    predictions = (run / "predictions.jsonl").read_text()
    checkpoints = run / "checkpoints.sqlite"
    truncate_half(checkpoints)

    result = evolve(library, tasks, run)

    one_line_failure(
        result,
        EXIT_RUNTIME,
        f"the run's checkpoints (its unfinished batch: paused or interrupted episodes) at "
        f"{checkpoints} are damaged: truncated:",
        "finished batches are kept (predictions.jsonl, steps.jsonl)",
    )
    assert (run / "predictions.jsonl").read_text() == predictions
    checkpoints.rename(checkpoints.with_name("checkpoints.sqlite.damaged"))  # the repair line
    assert evolve(library, tasks, run).exit_code == 0
    assert (run / "predictions.jsonl").read_text() == predictions  # finished: nothing re-run


# ---------------------------------------------------------------------- index


def _truncate_index(index: Path) -> None:
    truncate_half(index / "chroma.sqlite3")


def _garbage_index(index: Path) -> None:
    (index / "chroma.sqlite3").write_bytes(os.urandom(50_000))


def _garbage_segments(index: Path) -> None:
    for segment in index.glob("*/*.bin"):
        segment.write_bytes(os.urandom(1000))


def _index_is_a_file(index: Path) -> None:
    shutil.rmtree(index)
    index.write_text("not an index")


def _index_missing(index: Path) -> None:
    shutil.rmtree(index)


@pytest.mark.parametrize(
    ("damage", "set_aside"),
    [
        (_truncate_index, True),
        (_garbage_index, True),
        (_index_is_a_file, True),
        (_garbage_segments, False),
        (_index_missing, False),
    ],
)
def test_reindex_rebuilds_the_index_whatever_its_state(library: Path, damage, set_aside) -> None:
    kept = records(library)
    damage(library / "index")

    result = tools(library, "reindex")

    assert result.exit_code == 0, result.output
    assert "reindexed 4 tool(s) with the hashing embedding" in result.output
    aside = sorted(library.glob("index.damaged-*"))
    assert bool(aside) == set_aside, result.output
    if set_aside:
        assert f"the damaged index was moved to {aside[0]}" in result.output
    assert records(library) == kept
    with ToolStore.open(library) as store:  # a writer opens it and dense search works
        assert store.search("mean of numbers", k=1, mode="dense")


def test_a_writer_on_a_damaged_index_is_told_to_reindex(library: Path) -> None:
    _truncate_index(library / "index")
    before = snapshot(library)
    name = records(library)[0][0]

    one_line_failure(
        tools(library, "lock", name),
        EXIT_RUNTIME,
        f"the tool index at {library / 'index'} (search data derived from tools.db) cannot be "
        "opened:",
        f"`insitu tools reindex --store {library}`",
    )
    after = snapshot(library)
    assert {k: v for k, v in after.items() if k.startswith("index")} == {
        k: v for k, v in before.items() if k.startswith("index")
    }
    assert len(records(library)) == 4  # the records are untouched


# ------------------------------------------------------------ records and path


def test_a_store_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "lib"
    path.write_text("my notes")

    for args in (("list",), ("lock", "compute_mean")):
        one_line_failure(
            tools(path, *args),
            EXIT_RUNTIME,
            f"the store path {path} is a file, not a tool library directory",
        )
    assert path.read_text() == "my notes"


def test_a_store_without_tools_db_but_with_its_other_state_says_so(
    library: Path, tmp_path: Path
) -> None:
    assert tools(library, "export", str(tmp_path / "export")).exit_code == 0
    (library / "tools.db").unlink()
    (library / "workspaces").mkdir()
    before = snapshot(library)

    for args in (("list",), ("lock", "compute_mean"), ("reindex",)):
        one_line_failure(
            tools(library, *args),
            EXIT_RUNTIME,
            f"the tool library at {library} has lost its records (tools.db is missing",
            "but still holds index/:",
            f"`insitu tools import EXPORT_DIR --store {library}`",
        )
    assert snapshot(library) == before  # no new, empty tools.db
    nothing = tools(tmp_path / "never-used", "list")
    assert nothing.exit_code == EXIT_CONFIG
    assert "nothing has been stored there yet" in nothing.output

    restored = tools(library, "import", str(tmp_path / "export"), "--trust")  # the repair
    assert restored.exit_code == 0, restored.output
    assert len(records(library)) == 4


def test_damaged_records_are_named_and_left_as_they_are(library: Path) -> None:
    db = library / "tools.db"
    truncate_half(db)
    damaged = db.read_bytes()

    for args in (("list",), ("lock", "compute_mean")):
        one_line_failure(
            tools(library, *args),
            EXIT_RUNTIME,
            f"the tool records at {db} (every tool, its versions and statistics) are damaged",
            "restore tools.db from a backup",
        )
    assert db.read_bytes() == damaged


# ---------------------------------------------------------------- run files


def test_damaged_prediction_lines_are_set_aside_and_rebuilt_from_checkpoints(
    library: Path, tmp_path: Path
) -> None:
    tasks, run = tasks_file(tmp_path), tmp_path / "run"
    assert evolve(library, tasks, run).exit_code == 0
    rows = (run / "predictions.jsonl").read_text().splitlines()
    steps = (run / "steps.jsonl").read_text()
    # A garbage line in the middle, and a last line torn by a crash.
    damaged = [rows[0], "\x00\x00garbage{", rows[1], rows[2], rows[3][: len(rows[3]) // 2]]
    (run / "predictions.jsonl").write_text("\n".join(damaged))

    result = evolve(library, tasks, run)

    assert result.exit_code == 0, result.output
    assert (
        f"repaired the run in {run}: set aside 2 damaged line(s) of predictions.jsonl in "
        "predictions.jsonl.damaged; rewrote 1 lost prediction(s) from their batch's checkpoints"
    ) in result.output
    repaired = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in repaired) == sorted(json.loads(r)["id"] for r in rows)
    assert {json.dumps(r, sort_keys=True) for r in repaired} == {
        json.dumps(json.loads(r), sort_keys=True) for r in rows
    }
    assert (run / "steps.jsonl").read_text() == steps  # nothing ran again
    aside = (run / "predictions.jsonl.damaged").read_text()
    assert "garbage{" in aside and rows[3][: len(rows[3]) // 2] in aside


def test_lost_predictions_without_checkpoints_are_run_again(library: Path, tmp_path: Path) -> None:
    tasks, run = tasks_file(tmp_path), tmp_path / "run"
    assert evolve(library, tasks, run).exit_code == 0
    rows = (run / "predictions.jsonl").read_text().splitlines()
    (run / "predictions.jsonl").write_text("\n".join(rows[:3]) + "\n")  # the last task lost
    (run / "checkpoints.sqlite").rename(run / "checkpoints.sqlite.damaged")

    result = evolve(library, tasks, run)

    assert result.exit_code == 0, result.output
    assert "1 task(s) without a prediction or a checkpoint are run again" in result.output
    repaired = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in repaired] == [json.loads(r)["id"] for r in rows]
    assert repaired[-1]["status"] == "completed" and repaired[-1]["retry"] == 1


def test_a_damaged_step_line_is_set_aside_and_its_batch_finished_again(
    library: Path, tmp_path: Path
) -> None:
    tasks, run = tasks_file(tmp_path), tmp_path / "run"
    assert evolve(library, tasks, run).exit_code == 0
    first, second = (run / "steps.jsonl").read_text().splitlines()
    (run / "steps.jsonl").write_text(first + "\n" + second[:40] + "\n")
    predictions = (run / "predictions.jsonl").read_text()

    result = evolve(library, tasks, run)

    assert result.exit_code == 0, result.output
    assert "set aside 1 damaged line(s) of steps.jsonl in steps.jsonl.damaged" in result.output
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["batch"], s["retry"]) for s in steps] == [(1, 1, 0), (2, 2, 0)]
    assert steps[1]["tasks"] == json.loads(second)["tasks"]
    assert (run / "predictions.jsonl").read_text() == predictions


# -------------------------------------------------------------------- doctor


def test_the_doctor_reports_each_part_of_a_store_with_its_repair(library: Path) -> None:
    context = InsituContext(store_dir=str(library))
    rows = {row.name: row for row in check_store_parts(context)}
    assert check_store(context).status == OK
    assert rows["store index"].status == OK and "store lock" not in rows

    with ToolStore.open(library):  # a writer holds the lock
        held = {row.name: row for row in check_store_parts(context)}
    assert held["store lock"].status == WARN
    assert f"held by pid {os.getpid()}" in held["store lock"].detail

    truncate_half(sqlite_file(library / "checkpoints.sqlite"))
    _truncate_index(library / "index")
    rows = {row.name: row for row in check_store_parts(context)}
    assert rows["store index"].status == FAIL
    assert "`insitu tools reindex" in rows["store index"].detail
    assert rows["store checkpoints"].status == FAIL
    assert "the store's checkpoints" in rows["store checkpoints"].detail
    assert all("\n" not in row.detail for row in rows.values())

    (library / "tools.db").unlink()
    missing = check_store(context)
    assert missing.status == FAIL and "has lost its records" in missing.detail


def test_the_doctor_reports_a_read_only_store(library: Path, tmp_path: Path) -> None:
    if not _bwrap_read_only_works(tmp_path):
        pytest.skip("bubblewrap cannot mount a directory read-only here")
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    code = (
        "import json, sys; from insitu.doctor import check_store, check_store_parts; "
        "from insitu.context import InsituContext; c = InsituContext(store_dir=sys.argv[1]); "
        "print(json.dumps([r.as_dict() for r in [check_store(c), *check_store_parts(c)]]))"
    )
    probe = subprocess.run(
        ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(library), str(library),
         sys.executable, "-c", code, str(library)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    rows = {row["name"]: row for row in json.loads(probe.stdout)}
    assert rows["store"]["status"] == OK and "4 active tool(s)" in rows["store"]["detail"]
    assert rows["store access"]["status"] == WARN
    assert "read-only" in rows["store access"]["detail"]
