"""``insitu run`` and ``insitu demo``: solve tasks with the episode graph from the shell.

Progress goes to stderr as it happens; the answer and a compact table of tools
and tokens go to stdout, so ``insitu run ... > answer.txt`` keeps only results.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from insitu.cli.common import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_RUNTIME,
    err,
    fail,
    fail_configuration,
    fail_model_endpoint,
    interruptible,
    out,
    scripted_models,
    settings_options,
    verbose,
)
from insitu.context import InsituContext

if TYPE_CHECKING:
    from insitu.api import EpisodeResult

#: The offline demo's tasks: the first two create tools (the second after a
#: rejected first draft), the last two reuse them.
DEMO_TASKS = (
    "What is the mean of 3, 5, 10 and 2?",
    "How many days from 2024-01-01 to 2024-03-01?",
    "Compute the average of 12, 7 and 20",
    "How many days are there from 2023-12-25 to 2024-02-29?",
)


def progress_printer(prefix: str = "") -> Callable[[dict[str, Any]], None]:
    """Return an ``on_event`` callback that prints each progress event on stderr."""

    details = verbose()

    def show(event: dict[str, Any]) -> None:
        if event.get("detail") and not details:
            return
        mark = "  ↳" if event.get("detail") else "·"
        err.print(
            f"[dim]{prefix}{mark}[/] {escape(str(event.get('message', event)))}", highlight=False
        )

    return show


def result_table(result: EpisodeResult) -> Table:
    """The compact summary of one episode: tools used/created and tokens per role."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("status", result.status)
    table.add_row("tools used", ", ".join(result.tools_used) or "-")
    table.add_row("tools created", ", ".join(result.tools_created) or "-")
    if result.tools_repaired:
        table.add_row("tools repaired", ", ".join(result.tools_repaired))
    if result.sandbox:
        table.add_row("sandbox", f"{result.sandbox['backend']} ({result.sandbox['isolation']})")
    calls = result.metrics.get("tool_invocations", 0)
    ok = result.metrics.get("tool_successes", 0)
    table.add_row("tool calls", f"{calls} ({ok} ok)")
    for role, counts in sorted(result.usage.items()):
        table.add_row(
            f"tokens {role}",
            f"{counts.get('input_tokens', 0)} in / {counts.get('output_tokens', 0)} out "
            f"({counts.get('calls', 0)} calls)",
        )
    return table


def solve(
    settings: InsituContext,
    task: str | None,
    *,
    files: Sequence[str] = (),
    thread_id: str | None = None,
    models: Any = None,
    prefix: str = "",
    resume: Any = None,
) -> EpisodeResult:
    """Run one episode with clear CLI errors (exit 2 configuration, 3 runtime or endpoint)."""
    from insitu.api import run_task
    from insitu.llm import ModelEndpointError
    from insitu.nodes.workspace import InvalidTaskError
    from insitu.services import ConfigurationError
    from insitu.tool_store.errors import StoreError

    try:
        return run_task(
            task,
            files=files,
            context=settings,
            models=models,
            thread_id=thread_id,
            on_event=progress_printer(prefix),
            resume=resume,
        )
    except ConfigurationError as exc:
        fail_configuration(exc)
    except (InvalidTaskError, ValueError, FileNotFoundError) as exc:
        fail(str(exc), EXIT_CONFIG)
    except StoreError as exc:
        fail(str(exc), EXIT_RUNTIME)
    except ModelEndpointError as exc:
        fail_model_endpoint(exc)


def _recorded_decisions(store_dir: str, thread: str) -> dict[str, Any] | None:
    """Decisions recorded with ``insitu tools approve|reject`` for a paused run, if complete.

    Exits 2 when the run waits for a review with tools still undecided.
    """
    from insitu.reviews import ReviewError, decisions_for, undecided

    try:
        decisions = decisions_for(store_dir, thread)
        missing = undecided(store_dir, thread) if decisions is None else []
    except ReviewError as exc:
        fail(str(exc), EXIT_CONFIG)
    if missing:
        fail(
            f"the run {thread} waits for a review of {', '.join(missing)}: decide with "
            "`insitu tools approve NAME` or `insitu tools reject NAME --reason ...` "
            "(or add --approve to review here)",
            EXIT_CONFIG,
        )
    return decisions


def thread_id_for(task: str | None, thread_id: str | None) -> str:
    """The checkpoint thread of a run: ``thread_id`` when resuming, else the task's id.

    Exits 2 on an unusable task (what :func:`insitu.api.run_task` would refuse).
    """
    from insitu.nodes.workspace import InvalidTaskError, check_task

    if thread_id is not None:
        return thread_id
    try:
        return check_task({"task": task})[1]
    except InvalidTaskError as exc:
        fail(str(exc), EXIT_CONFIG)


@click.command("run")
@click.argument("task", required=False)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A file the task needs (copied into the tools' working directory). Repeatable.",
)
@click.option("--resume", "thread_id", default=None, help="Resume an interrupted run by thread id.")
@click.option("--model", default=None, help="Model name for every role (overrides settings).")
@click.option("--frozen", is_flag=True, help="Use the library as it is: build no new tools.")
@click.option(
    "--scripted",
    is_flag=True,
    help="Use the scripted test model instead of an LLM (offline check of a setup; the output "
    "says so).",
)
@click.option(
    "--approve",
    is_flag=True,
    help="Review new tools here before they enter the library (tool_approval, 'new' unless "
    "set to 'all').",
)
@settings_options
@click.pass_obj
def run(
    settings: InsituContext,
    task: str | None,
    files: tuple[str, ...],
    thread_id: str | None,
    model: str | None,
    frozen: bool,
    scripted: bool,
    approve: bool,
) -> None:
    """Solve TASK with the tool library, printing the answer and what was used.

    The thread id is printed (stderr) as the run starts: after a crash, `insitu run
    --resume THREAD_ID` finishes it from its last checkpoint.

    Exit codes: 0 completed, 1 could not complete, 2 configuration, 3 runtime or model
    endpoint, 130 interrupted.
    """
    from insitu.testing.team import SCRIPTED_LABEL

    if task is None and thread_id is None:
        fail("give a TASK, or --resume THREAD_ID to finish an interrupted run", EXIT_CONFIG)
    if model:
        settings = settings.with_model(model)
    if frozen:
        settings = replace(settings, freeze_library=True)
    models = scripted_models(SCRIPTED_LABEL) if scripted else None
    thread = thread_id_for(task, thread_id)
    shown = escape(thread)
    err.print(
        f"[dim]thread id: {shown} (after a crash: insitu run --resume {shown})[/]",
        highlight=False,
        soft_wrap=True,
    )
    if approve and settings.tool_approval == "none":
        settings = replace(settings, tool_approval="new")
    resume = None
    if task is None:  # a run paused for a review goes on with the decisions recorded for it
        resume = _recorded_decisions(settings.store_dir, thread)
    with interruptible(f"resume with: insitu run --resume {thread}"):
        result = solve(settings, task, files=files, thread_id=thread, models=models, resume=resume)
        while result.status == "awaiting_review":
            if not approve:
                from insitu.cli.review import pending_message

                command = f"insitu run --resume {thread}"
                err.print(pending_message(settings.store_dir, thread, result.review, command))
                raise SystemExit(EXIT_INCOMPLETE)
            from insitu.cli.review import review_interactively

            decisions = review_interactively(result.review)
            result = solve(settings, None, thread_id=thread, models=models, resume=decisions)
    if resume is not None:
        from insitu.reviews import resolved

        resolved(settings.store_dir, thread)
    out.print(result.answer, highlight=False, soft_wrap=True)
    out.print()
    out.print(result_table(result))
    if scripted:
        out.print(f"[bold yellow]{SCRIPTED_LABEL}[/]")
    raise SystemExit(EXIT_OK if result.completed else EXIT_INCOMPLETE)


@click.command("demo")
@click.option(
    "--keep",
    "keep_store",
    is_flag=True,
    help="Keep the demo library in --store (default: a temporary directory).",
)
@settings_options
@click.pass_obj
def demo(settings: InsituContext, keep_store: bool) -> None:
    """Run a few tasks offline with a scripted model: a tool is built, admitted, reused.

    The model is a scripted test double, labelled as such; the store, sandbox,
    graph and checkpointer are the real ones.
    """
    from insitu.testing.team import SCRIPTED_LABEL, ScriptedTeam

    out.rule(f"[bold yellow]{SCRIPTED_LABEL}[/]")
    team = ScriptedTeam(first_build_broken=True)
    with tempfile.TemporaryDirectory(prefix="insitu-demo-") as scratch:
        store_dir = settings.store_dir if keep_store else str(Path(scratch) / "store")
        settings = replace(settings, store_dir=store_dir)
        completed = 0
        for number, task in enumerate(DEMO_TASKS, 1):
            out.rule(f"task {number}/{len(DEMO_TASKS)}")
            out.print(f"[bold]{task}[/]", highlight=False)
            result = solve(settings, task, models=team.model(), prefix=f"[{number}] ")
            completed += result.completed
            out.print(f"[green]answer:[/] {result.answer}", highlight=False)
            out.print(result_table(result))
        out.rule("library after the demo")
        from insitu.tool_store import ToolStore

        with ToolStore.open(store_dir, read_only=True) as store:
            for record in store.list():
                out.print(
                    f"{record.name} v{record.version}: {record.stats.calls} library call(s), "
                    f"created by {record.created_by_task}",
                    highlight=False,
                )
        out.rule(f"[bold yellow]{SCRIPTED_LABEL}[/]")
    raise SystemExit(EXIT_OK if completed == len(DEMO_TASKS) else EXIT_INCOMPLETE)
