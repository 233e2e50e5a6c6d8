"""``insitu report``: an offline HTML report with plots comparing runs of ``insitu evolve``.

The page's path goes to stdout (so ``open "$(insitu report runs/a)"`` works);
notes, the scripted-model warning and a table of the runs go to stderr. The
work is done by :mod:`insitu.report`.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from insitu.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, err, fail, say, settings_options


@click.command("report")
@click.argument(
    "run_dirs", nargs=-1, required=True, type=click.Path(file_okay=True, path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.html and its PNG plots (default: the first RUN_DIR).",
)
@click.option(
    "--single-file/--linked-images",
    default=True,
    show_default=True,
    help="Embed the plots in report.html (one file to copy or mail), or link the PNG "
    "files written next to it (a smaller page).",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=15,
    show_default=True,
    help="How many of the most called tools to show per run.",
)
@settings_options
def report(run_dirs: tuple[Path, ...], out_dir: Path | None, top: int, single_file: bool) -> None:
    """Write report.html and PNG plots comparing the runs in RUN_DIR... (opens offline).

    Each RUN_DIR is a folder written by `insitu evolve` (run.json, steps.jsonl,
    predictions.jsonl), or one of `insitu eval` (its systems' runs). Every plot
    overlays the runs, labelled by system (and batch size or folder when runs
    share a system); a table lists every task, failures first. Exit codes: 0
    written, 2 a run folder or file is missing, empty or malformed, 3 the
    report could not be written.
    """
    from insitu.report import (
        SCRIPTED_BANNER,
        ReportError,
        format_accuracy,
        format_egl,
        load_runs,
        problem_counts,
        render_report,
        summarize,
    )

    try:
        runs = load_runs(run_dirs)
    except ReportError as exc:
        fail(str(exc), EXIT_CONFIG)
    target = out_dir if out_dir is not None else run_dirs[0]
    try:
        page = render_report(runs, target, top, single_file=single_file)
    except OSError as exc:
        fail(f"could not write the report to {target}: {exc}", EXIT_RUNTIME)

    scripted = [r.label for r in runs if r.scripted]
    if scripted:
        err.print(
            Text(f"{SCRIPTED_BANNER} ({', '.join(scripted)})", style="bold yellow"),
            highlight=False,
            soft_wrap=True,
        )
    for run in runs:
        for warning in run.warnings:
            err.print(Text.assemble(("note: ", "dim"), f"{run.label}: {warning}"), soft_wrap=True)
    table = Table(title="runs", title_justify="left")
    # Names and numbers stay whole; the accuracy's "(12/16 graded)" may wrap.
    for column in ("system", "tasks", "failed", "incomplete", "wrong", "library", "EGL"):
        table.add_column(column, no_wrap=True)
    table.add_column("accuracy", overflow="fold")
    for run, summary in zip(runs, map(summarize, runs), strict=True):
        cells = (
            summary.label,
            summary.tasks,
            summary.failed,
            summary.incomplete,
            problem_counts(run)["wrong"],
            "-" if summary.library_size is None else summary.library_size,
            format_egl(summary.egl),
            format_accuracy(summary),
        )
        table.add_row(*(Text(str(cell)) for cell in cells))
    err.print(table)
    say(str(page))
    raise SystemExit(EXIT_OK)
