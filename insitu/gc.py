"""``insitu gc``: remove old workspaces and checkpoint threads, never ones still needed.

What it looks at:

* ``<store>/workspaces/*``: an episode's working directory (named after its
  task id) and scratch folders (``.<task>-scratch``, ``.absorb-<batch>``,
  ``.review-<batch>``, ``.import``...). A folder's idle time is the newest
  modification time of anything in it.
* ``<store>/checkpoints.sqlite``: the threads of ``insitu run`` (the episode
  graph), and ``<run>/checkpoints.sqlite`` of every run folder given: the
  threads of ``insitu evolve`` (the batch graph). A thread's idle time is the
  time of its latest checkpoint.

What it removes: what has been idle for more than ``retention_days``, except

* a **paused** thread: stopped at an interrupt (a tool review, ``pause_before``)
  or listed in ``<store>/reviews.json``; and the workspace of its task;
* an **unfinished** thread of the store: its latest checkpoint still has
  steps to run (a killed or failed run can be resumed from it); and its workspace;
* every thread and task workspace of an **unfinished run**: a run folder whose
  batches have not all written their step line, whose threads are not all at
  their ``finished_at`` marker, or with tasks a resume would run again
  (endpoint failures).

Threads are deleted with LangGraph's own ``SqliteSaver.delete_thread`` (every
checkpoint and pending write of the thread, subgraph namespaces included),
then the database is VACUUMed so that the file shrinks. Nothing is removed
with ``dry_run``; the report says what would be.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

CHECKPOINTS_FILE = "checkpoints.sqlite"
WORKSPACES_DIR = "workspaces"

Kind = Literal["workspace", "thread"]


@dataclass
class GcItem:
    """One workspace or thread, and what gc does with it.

    Attributes:
        kind: ``workspace`` or ``thread``.
        name: The folder's name, or the thread id.
        where: The workspaces folder, or the checkpoint database.
        idle_days: Days since it last changed.
        size_bytes: Its size (a folder's files; a thread's stored rows).
        remove: Whether it is (or, in a dry run, would be) removed.
        reason: Why it is kept or removed.
    """

    kind: Kind
    name: str
    where: str
    idle_days: float
    size_bytes: int
    remove: bool
    reason: str


@dataclass
class GcReport:
    """What a gc found, removed (or would remove) and freed.

    Attributes:
        dry_run: Nothing was removed.
        retention_days: The retention it applied.
        items: Every workspace and thread looked at.
        errors: What could not be removed, one line each.
        vacuumed: ``{database: bytes its files shrank by}``.
    """

    dry_run: bool
    retention_days: float
    items: list[GcItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    vacuumed: dict[str, int] = field(default_factory=dict)

    def removed(self, kind: Kind) -> list[GcItem]:
        """The items of a kind that are (or would be) removed."""
        return [i for i in self.items if i.kind == kind and i.remove]

    @property
    def freed_bytes(self) -> int:
        """Bytes of the removed workspaces plus the removed threads' rows."""
        return sum(i.size_bytes for i in self.items if i.remove)


# ------------------------------------------------------------------- threads


@dataclass
class _Thread:
    """A checkpoint thread's state as gc needs it."""

    thread_id: str
    idle_days: float
    size_bytes: int
    paused: bool
    unfinished: bool
    values: dict[str, Any]


def _days_since(when: datetime | None, now: datetime) -> float:
    if when is None:
        return math.inf
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (now - when).total_seconds() / 86_400)


@contextmanager
def _saver(database: Path) -> Iterator[Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(database, check_same_thread=False)
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


def _thread_ids(conn: sqlite3.Connection) -> list[str]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'"
    ).fetchone()
    if not exists:
        return []
    return [r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints ORDER BY 1")]


def _thread_bytes(conn: sqlite3.Connection, thread_id: str) -> int:
    """The bytes a thread's rows hold (what deleting it frees before the VACUUM)."""
    stored = conn.execute(
        "SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(COALESCE(metadata, ''))), 0) "
        "FROM checkpoints WHERE thread_id = ?",
        (thread_id,),
    ).fetchone()[0]
    written = conn.execute(
        "SELECT COALESCE(SUM(LENGTH(COALESCE(value, ''))), 0) FROM writes WHERE thread_id = ?",
        (thread_id,),
    ).fetchone()[0]
    return int(stored) + int(written)


def _read_threads(
    database: Path, graph_factory: Any, now: datetime, pending_reviews: set[str]
) -> list[_Thread]:
    """Every thread of a checkpoint database, read through the graph that wrote it."""
    threads = []
    with _saver(database) as saver:
        graph = graph_factory(saver)
        for thread_id in _thread_ids(saver.conn):
            size = _thread_bytes(saver.conn, thread_id)
            try:
                snapshot = graph.get_state({"configurable": {"thread_id": thread_id}})
            except Exception:
                threads.append(_Thread(thread_id, 0.0, size, False, True, {}))
                continue
            created = datetime.fromisoformat(snapshot.created_at) if snapshot.created_at else None
            threads.append(
                _Thread(
                    thread_id=thread_id,
                    idle_days=_days_since(created, now),
                    size_bytes=size,
                    paused=bool(snapshot.interrupts) or thread_id in pending_reviews,
                    unfinished=bool(snapshot.next),
                    values=dict(snapshot.values or {}),
                )
            )
    return threads


def _delete_threads(database: Path, thread_ids: Sequence[str], report: GcReport) -> None:
    """Delete threads with LangGraph's ``delete_thread``, then VACUUM the database."""
    if not thread_ids:
        return
    before = _database_bytes(database)
    with _saver(database) as saver:
        for thread_id in thread_ids:
            saver.delete_thread(thread_id)
        try:
            # The WAL is folded back first so that VACUUM shrinks the file itself.
            saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            saver.conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            report.errors.append(f"{database}: not vacuumed ({exc}); the threads are deleted")
    report.vacuumed[str(database)] = max(0, before - _database_bytes(database))


def _database_bytes(database: Path) -> int:
    return sum(
        p.stat().st_size
        for p in (database, database.with_name(database.name + "-wal"))
        if p.exists()
    )


# ---------------------------------------------------------------------- runs


@dataclass
class RunFolder:
    """A run folder's threads and whether the run is finished.

    Attributes:
        path: The folder.
        run_id: Its run id (threads are ``<run_id>:batch-N...``).
        finished: Every batch done, nothing paused, nothing a resume would re-run.
        why_unfinished: What keeps it unfinished (empty when finished).
        task_ids: Its tasks' ids (their workspaces are kept while it is unfinished).
        threads: Its checkpoint threads.
    """

    path: Path
    run_id: str
    finished: bool
    why_unfinished: str
    task_ids: set[str]
    threads: list[_Thread]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash: the run rewrites it on resume
    return rows


def read_run(path: Path, now: datetime, pending_reviews: set[str]) -> RunFolder:
    """Read a run folder written by ``insitu evolve``.

    Raises:
        ValueError: It holds no readable ``run.json``.
    """
    from insitu.evolve import (
        ENDPOINT_FAILURE,
        PREDICTIONS_FILE,
        RUN_FILE,
        STEPS_FILE,
        batch_finished,
    )
    from insitu.graphs.evolve import create_evolve_graph

    try:
        meta = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
        run_id = str(meta["run_id"])
        batches = math.ceil(int(meta["tasks"]) / int(meta["batch_size"]))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        raise ValueError(
            f"{path} is not a run folder of `insitu evolve` (no readable {RUN_FILE})"
        ) from None
    threads: list[_Thread] = []
    database = path / CHECKPOINTS_FILE
    if database.is_file():
        threads = _read_threads(
            database,
            lambda saver: create_evolve_graph(
                checkpointer=saver, solver=meta.get("solver") or "episode"
            ),
            now,
            pending_reviews,
        )
    done = {
        int(s.get("batch", s.get("step", 0)))
        for s in _read_jsonl(path / STEPS_FILE)
        if not int(s.get("retry", 0))
    }
    latest = {p["id"]: p for p in _read_jsonl(path / PREDICTIONS_FILE) if "id" in p}
    task_ids = set(latest)
    for thread in threads:
        task_ids |= {str(t.get("id")) for t in thread.values.get("tasks") or []}
    reasons = []
    missing = sorted(set(range(1, batches + 1)) - done)
    if missing:
        reasons.append(f"{len(missing)} batch(es) not finished")
    if any(t.paused for t in threads):
        reasons.append("a batch is paused for a review")
    if any(not batch_finished(t.values) or t.unfinished for t in threads if not t.paused):
        reasons.append("a pass was interrupted")
    retried = [i for i, p in latest.items() if p.get("error_kind") == ENDPOINT_FAILURE]
    if retried:
        reasons.append(f"{len(retried)} task(s) to run again (endpoint failures)")
    return RunFolder(
        path=path,
        run_id=run_id,
        finished=not reasons,
        why_unfinished="; ".join(reasons),
        task_ids=task_ids,
        threads=threads,
    )


# ---------------------------------------------------------------- workspaces


def _tree_stats(path: Path) -> tuple[float, int]:
    """(newest mtime, total bytes) of a folder's tree, links not followed."""
    newest = path.lstat().st_mtime
    size = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        for entry in [*dirs, *files]:
            try:
                info = os.lstat(os.path.join(root, entry))
            except OSError:
                continue
            newest = max(newest, info.st_mtime)
            if entry in files:
                size += info.st_size
    return newest, size


def workspace_name(task_id: str) -> str:
    """The workspace folder of a task id (as ``nodes/workspace.py`` names it)."""
    return task_id.replace(":", "_")


def _protects(name: str, protected: set[str], prefixes: Iterable[str]) -> bool:
    """Whether a workspace belongs to a protected task (its own folder or its scratch)."""
    bare = name[1:].removesuffix("-scratch") if name.startswith(".") else name
    return bare in protected or any(name.startswith(p) for p in prefixes)


# --------------------------------------------------------------------- gc


def _pending_reviews(store_dir: Path) -> set[str]:
    from insitu.reviews import ReviewError, load

    try:
        return set(load(store_dir))
    except ReviewError:
        return set()  # a damaged file is reported by the review commands, not here


def collect_garbage(
    store_dir: str | Path,
    run_dirs: Sequence[str | Path] = (),
    *,
    retention_days: float,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Remove workspaces and checkpoint threads idle for longer than ``retention_days``.

    Args:
        store_dir: The store whose ``workspaces/`` and ``checkpoints.sqlite`` are cleaned.
        run_dirs: Run folders of ``insitu evolve`` whose checkpoints are cleaned
            too (and whose unfinished runs' workspaces are kept).
        retention_days: What is idle for longer is removed (see the module doc
            for what never is).
        dry_run: Remove nothing; report what would be.
        now: The time idle times are measured at (default: now).

    Returns:
        What was (or would be) removed and kept, and the bytes freed.

    Raises:
        ValueError: A run folder without a readable ``run.json``.
    """
    from insitu.graphs.episode import create_episode_graph

    now = now or datetime.now(UTC)
    store = Path(store_dir)
    report = GcReport(dry_run=dry_run, retention_days=retention_days)
    reviews = _pending_reviews(store)
    runs = [read_run(Path(r), now, reviews) for r in run_dirs]
    protected: set[str] = set()
    prefixes: list[str] = []
    plans: dict[Path, list[str]] = {}

    for run in runs:
        database = run.path / CHECKPOINTS_FILE
        if not run.finished:
            protected |= {workspace_name(t) for t in run.task_ids}
            prefixes += [f".absorb-{run.run_id}", f".review-{run.run_id}"]
        for thread in run.threads:
            if not run.finished:
                remove, reason = False, f"unfinished run: {run.why_unfinished}"
            else:
                remove, reason = _by_age(thread.idle_days, retention_days)
            _plan_thread(report, plans, database, thread, remove, reason)

    database = store / CHECKPOINTS_FILE
    if database.is_file():
        threads = _read_threads(
            database, lambda saver: create_episode_graph(checkpointer=saver), now, reviews
        )
        for thread in threads:
            if thread.paused or thread.unfinished:
                remove = False
                reason = "paused (awaiting a review or resume)" if thread.paused else "unfinished"
                for key in ("task_id", "workdir"):
                    if thread.values.get(key):
                        protected.add(workspace_name(Path(str(thread.values[key])).name))
                protected.add(workspace_name(thread.thread_id))
            else:
                remove, reason = _by_age(thread.idle_days, retention_days)
            _plan_thread(report, plans, database, thread, remove, reason)
    protected |= {workspace_name(t) for t in reviews}

    workspaces = store / WORKSPACES_DIR
    doomed: list[Path] = []
    if workspaces.is_dir():
        for entry in sorted(workspaces.iterdir(), key=lambda p: p.name):
            if entry.is_symlink() or not entry.is_dir():
                continue
            newest, size = _tree_stats(entry)
            idle = _days_since(datetime.fromtimestamp(newest, UTC), now)
            if _protects(entry.name, protected, prefixes):
                remove, reason = False, "belongs to an unfinished run or a paused thread"
            else:
                remove, reason = _by_age(idle, retention_days)
            report.items.append(
                GcItem("workspace", entry.name, str(workspaces), idle, size, remove, reason)
            )
            if remove:
                doomed.append(entry)

    if dry_run:
        return report
    for path in doomed:
        try:
            shutil.rmtree(path)
        except OSError as exc:
            report.errors.append(f"{path}: not removed ({exc.strerror or exc})")
            for item in report.items:
                if item.kind == "workspace" and item.name == path.name:
                    item.remove, item.reason = False, f"could not be removed: {exc.strerror or exc}"
    for database, thread_ids in plans.items():
        _delete_threads(database, thread_ids, report)
    return report


def _plan_thread(
    report: GcReport,
    plans: dict[Path, list[str]],
    database: Path,
    thread: _Thread,
    remove: bool,
    reason: str,
) -> None:
    """Report one checkpoint thread, and plan its deletion from ``database`` if ``remove``."""
    report.items.append(
        GcItem(
            "thread",
            thread.thread_id,
            str(database),
            thread.idle_days,
            thread.size_bytes,
            remove,
            reason,
        )
    )
    if remove:
        plans.setdefault(database, []).append(thread.thread_id)


def _by_age(idle_days: float, retention_days: float) -> tuple[bool, str]:
    if idle_days > retention_days:
        return True, f"idle {idle_days:.1f} days > {retention_days:g}"
    return False, f"idle {idle_days:.1f} days, within {retention_days:g}"
