"""Setting up an episode: check the task, name it, and prepare its working directory."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from insitu.context import InsituContext
from insitu.graphs.state import EpisodeState
from insitu.nodes.common import settings
from insitu.services import Services

MAX_TASK_CHARS = 20_000


class InvalidTaskError(ValueError):
    """The task given to an episode cannot be worked on; the message says why."""


def task_id_for(task: str) -> str:
    """Return a stable id for a task text (used when the caller gives none)."""
    return "task-" + hashlib.sha256(task.encode()).hexdigest()[:12]


def check_task(state: EpisodeState) -> tuple[str, str]:
    """Validate the task text and id; return (task, task_id).

    Raises:
        InvalidTaskError: Empty or oversized task, or an unusable task id.
    """
    task = state.get("task")
    if not isinstance(task, str) or not task.strip():
        raise InvalidTaskError("the task is empty: give the question or instruction as 'task'.")
    if len(task) > MAX_TASK_CHARS:
        raise InvalidTaskError(
            f"the task is {len(task)} characters; the limit is {MAX_TASK_CHARS}. Put long "
            "material in a file and pass it with 'files'."
        )
    task_id = state.get("task_id") or task_id_for(task)
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", task_id):
        raise InvalidTaskError(
            f"task_id {task_id!r} must be 1-128 letters, digits or . _ : - characters."
        )
    return task.strip(), task_id


def prepare_workspace(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Check the task and copy its files into a fresh per-episode working directory.

    Raises:
        InvalidTaskError: Bad task, or a file that does not exist.
    """
    context = settings(runtime)
    task, task_id = check_task(state)
    workdir = Path(context.store_dir).resolve() / "workspaces" / task_id.replace(":", "_")
    workdir.mkdir(parents=True, exist_ok=True)
    names = []
    for item in state.get("files") or []:
        source = Path(item).expanduser()
        if not source.is_file():
            raise InvalidTaskError(f"the task's file {item!r} does not exist or is not a file.")
        target = workdir / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        names.append(source.name)
    # Start the sandbox worker for this directory now, while the Manager plans.
    services.sandbox(context).prewarm(workdir)
    return {
        "task": task,
        "task_id": task_id,
        "workdir": str(workdir),
        "files": names,
        "rounds": 0,
        "repairs": 0,
        "executor_steps": 0,
    }
