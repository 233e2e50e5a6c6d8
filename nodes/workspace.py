"""Setting up an episode: check the task, name it, and prepare its working directory."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from insitu.aio import blocking
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


def copy_task_files(sources: list[Path], workdir: Path) -> None:
    """Copy the task's files into its workdir without ever following a link there.

    The workdir may hold what a tool of an earlier run of the same task left,
    links included; root writes through the directory's descriptor, replacing
    each entry of a file's name with a new file (``O_EXCL | O_NOFOLLOW``), so a
    planted link is removed, never written through.

    Args:
        sources: The task's files (existing regular files).
        workdir: The episode's working directory (created if missing).

    Raises:
        InvalidTaskError: The workdir or a file's place in it cannot be used safely.
    """
    from insitu.sandbox import backend as backends

    try:
        directory = backends.open_directory(workdir, create=True)
    except OSError as exc:
        raise InvalidTaskError(f"the task's working directory cannot be used: {exc}") from None
    try:
        for source in sources:
            if os.path.realpath(source.parent) == os.path.realpath(workdir):
                # Named inside the workdir: used as it is, unless a tool made it a link
                # (root would read wherever it points, for the tool to see).
                entry = os.stat(source.name, dir_fd=directory, follow_symlinks=False)
                if not stat.S_ISREG(entry.st_mode):
                    raise InvalidTaskError(
                        f"the task's file {str(source)!r} lies in its working directory but is "
                        "not a regular file (a link?); pass a file from elsewhere."
                    )
                continue
            try:
                with source.open("rb") as content:
                    backends.write_new_file(directory, source.name, content, replace=True)
            except OSError as exc:
                raise InvalidTaskError(
                    f"the task's file {source.name!r} could not be copied into its working "
                    f"directory: {exc}."
                ) from None
    finally:
        os.close(directory)


async def prepare_workspace(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Check the task and copy its files into a fresh per-episode working directory.

    The copying and the sandbox's start run on insitu's blocking threads.

    Raises:
        InvalidTaskError: Bad task, or a file that does not exist.
    """
    return await blocking(_prepare_workspace, state, settings(runtime), services)


def _prepare_workspace(
    state: EpisodeState, context: InsituContext, services: Services
) -> dict[str, Any]:
    task, task_id = check_task(state)
    # The library opens before anything is written into its directory: opening checks
    # that a store with workspaces still has its records (parallel episodes race here).
    services.store(context)
    workdir = Path(context.store_dir).resolve() / "workspaces" / task_id.replace(":", "_")
    sources = []
    for item in state.get("files") or []:
        source = Path(item).expanduser()
        if not source.is_file():
            raise InvalidTaskError(f"the task's file {item!r} does not exist or is not a file.")
        sources.append(source)
    copy_task_files(sources, workdir)
    names = [source.name for source in sources]
    # Start the sandbox worker for this directory now, while the Manager plans.
    sandbox = services.sandbox(context)
    sandbox.prewarm(workdir)
    started = time.time()
    return {
        "task": task,
        "task_id": task_id,
        "workdir": str(workdir),
        "files": names,
        "rounds": 0,
        "repairs": 0,
        "executor_steps": 0,
        "sandbox": {"backend": sandbox.backend, "isolation": sandbox.isolation_level},
        "started_at": started,
        # The roles stop at this time (episode_timeout_s): see insitu.nodes.common.past_deadline.
        "deadline_at": started + context.episode_timeout_s,
    }
