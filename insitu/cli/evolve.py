"""``insitu evolve``: run a task stream in batches, evolving the library, resumably."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
    setting_given,
    settings_options,
    verbose,
)
from insitu.context import InsituContext


def summary_table(summary: Any) -> Table:
    """The final table of a run."""
    table = Table(title=f"run {summary.run_dir}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rate = summary.tool_success_rate
    rows = [
        ("batches", summary.batches),
        ("tasks", summary.tasks),
        ("completed", summary.completed),
        ("incomplete", summary.incomplete),
        ("failed", summary.failed),
        ("library size", summary.library_size),
        ("EGL", "-" if summary.egl is None else f"{summary.egl:.3f}"),
        ("tool success rate", "-" if rate is None else f"{rate:.1%}"),
        ("wall time", f"{summary.wall_time_s:.1f} s"),
    ]
    rows += [
        (f"tokens {role}", f"{c.get('input_tokens', 0)} in / {c.get('output_tokens', 0)} out")
        for role, c in sorted(summary.tokens.items())
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


class BatchReviews:
    """Answers the batches' tool reviews: at the terminal, or from recorded decisions.

    Args:
        store_dir: Where paused reviews are recorded (``insitu tools pending``).
        interactive: Ask at the terminal (``--approve``).
    """

    def __init__(self, store_dir: str, *, interactive: bool) -> None:
        self.store_dir = store_dir
        self.interactive = interactive
        self._answered: list[str] = []

    def answer(self, review: dict[str, Any]) -> dict[str, Any] | None:
        """The decisions for a batch's review, or ``None`` when none are at hand."""
        if self.interactive:
            from insitu.cli.review import review_interactively

            return review_interactively(review)
        from insitu.reviews import complete_decisions, load

        for thread, entry in load(self.store_dir).items():
            if entry["review"].get("batch_id") == review.get("batch_id"):
                decisions = complete_decisions(entry)
                if decisions is not None:
                    self._answered.append(thread)
                return decisions
        return None

    def forget_answered(self) -> None:
        """Drop the recorded reviews that the finished run used."""
        from insitu.reviews import resolved

        for thread in self._answered:
            resolved(self.store_dir, thread)


@click.command("evolve")
@click.argument("tasks_source")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    required=True,
    help="Where predictions.jsonl, steps.jsonl and checkpoints go; run again to resume.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N tasks.")
@click.option("--frozen", is_flag=True, help="Evaluate the library as it is: build no new tools.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Episodes run at once (default: the batch_concurrency setting if set, else the batch "
    "size).",
)
@click.option("--model", default=None, help="Model name for every role (overrides settings).")
@click.option("--system", default="insitu", show_default=True, help="Name of this run in reports.")
@click.option(
    "--scripted",
    is_flag=True,
    help="Use the scripted test model instead of an LLM (offline check of a setup; every "
    "output is labelled as such).",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="On resume, run every failed task of the finished batches again (by default only "
    "those that failed on the model endpoint).",
)
@click.option(
    "--approve",
    is_flag=True,
    help="Review each batch's new tools here before its commit (tool_approval, 'new' unless "
    "set to 'all').",
)
@settings_options
@click.pass_obj
def evolve_command(
    settings: InsituContext,
    tasks_source: str,
    batch_size: int,
    run_dir: str,
    limit: int | None,
    frozen: bool,
    concurrency: int | None,
    model: str | None,
    system: str,
    scripted: bool,
    retry_failed: bool,
    approve: bool,
) -> None:
    """Solve the tasks of TASKS_SOURCE in batches, growing and merging the tool library.

    TASKS_SOURCE is a JSONL file (id, question, optional files and answer), or
    `local`, `gsm8k[:PATH]`, `humaneval`. Killed or interrupted at any moment,
    the same command resumes after the last completed batch. Exit codes: 0 done,
    2 configuration, 3 runtime or model endpoint, 130 interrupted.
    """
    from insitu.evals.tasks import TaskLoadError, load_tasks
    from insitu.evolve import ReviewPending, RunMismatchError, check_run_can_start, evolve
    from insitu.llm import ModelEndpointError
    from insitu.services import ConfigurationError
    from insitu.tool_store.errors import StoreError

    try:
        tasks = load_tasks(tasks_source, limit=limit)
    except (TaskLoadError, ImportError, ValueError) as exc:
        fail(str(exc), EXIT_CONFIG)
    if not tasks:
        fail(f"{tasks_source} holds no tasks", EXIT_CONFIG)
    if concurrency is None:
        # The batch size, unless batch_concurrency was set (--set, environment, config file).
        given = setting_given("batch_concurrency")
        concurrency = settings.batch_concurrency if given else batch_size
    settings = replace(
        settings,
        freeze_library=frozen or settings.freeze_library,
        batch_concurrency=concurrency,
    )
    if model:
        settings = settings.with_model(model)
    if approve and settings.tool_approval == "none":
        settings = replace(settings, tool_approval="new")
    try:  # an unusable store or run directory: one line, before the progress bars
        check_run_can_start(Path(run_dir), settings.store_dir, records_url=settings.records_url)
    except StoreError as exc:
        fail(str(exc), EXIT_RUNTIME)
    reviews = BatchReviews(settings.store_dir, interactive=approve)
    models, banner = None, ""
    if scripted:
        from insitu.testing.team import SCRIPTED_LABEL

        models, banner = scripted_models(SCRIPTED_LABEL), f"[bold yellow]{SCRIPTED_LABEL}[/]"

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with interruptible(), Progress(*columns, console=err, transient=False) as progress:
        overall = progress.add_task("tasks", total=len(tasks))
        batches = progress.add_task("batches", total=-(-len(tasks) // batch_size))

        details = verbose()  # read here: on_event runs in the episodes' threads

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") in ("task_done", "task_failed"):
                progress.advance(overall)
            elif event.get("event") == "run_repaired":
                progress.console.print(
                    event["message"], highlight=False, markup=False, soft_wrap=True
                )
            elif details and event.get("detail"):
                task = event.get("task_id")
                prefix = f"[{task}] " if task else ""
                progress.console.print(
                    f"  ↳ {prefix}{event.get('message')}", highlight=False, markup=False
                )

        def on_batch(step: dict[str, Any]) -> None:
            egl = "-" if step["egl"] is None else f"{step['egl']:.3f}"
            progress.update(overall, completed=step["tasks_processed"])
            progress.update(
                batches,
                advance=1,
                description=f"batches (library {step['library_size']}, EGL {egl})",
            )

        try:
            summary = evolve(
                tasks,
                run_dir=Path(run_dir),
                batch_size=batch_size,
                context=settings,
                system=system,
                models=models,
                scripted=scripted,
                retry_failed=retry_failed,
                tasks_source=tasks_source,
                on_event=on_event,
                on_batch=on_batch,
                on_review=reviews.answer,
            )
        except ReviewPending as exc:
            from insitu.cli.review import pending_message

            progress.stop()
            command = "the same insitu evolve command"
            err.print(pending_message(settings.store_dir, exc.thread_id, exc.review, command))
            raise SystemExit(EXIT_INCOMPLETE) from None
        except ConfigurationError as exc:
            fail_configuration(exc)
        except RunMismatchError as exc:
            fail(str(exc), EXIT_CONFIG)
        except StoreError as exc:
            fail(str(exc), EXIT_RUNTIME)
        except ModelEndpointError as exc:
            fail_model_endpoint(exc)
    reviews.forget_answered()
    out.print(summary_table(summary))
    if banner:
        out.print(banner)
    raise SystemExit(EXIT_OK)
