"""Keeping the library lean: ``insitu tools prune|add|roi`` and ``insitu gc``.

The scores, the ROI estimate, admission of hand-written tools and the
cleanup live in :mod:`insitu.tool_store.utility`, :mod:`insitu.tool_store.pruning`,
:mod:`insitu.tool_store.authoring` and :mod:`insitu.gc`; this module only
turns them into commands (docs/library.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from insitu.cli.common import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    cell,
    fail,
    opened_store,
    out,
    say,
    settings_options,
)
from insitu.context import InsituContext


def _sandbox(settings: InsituContext) -> Any:
    """The sandbox that admits tools, or exit 2 with what to set."""
    from insitu.services import ConfigurationError, open_sandbox

    try:
        return open_sandbox(settings)
    except ConfigurationError as exc:
        fail(str(exc), EXIT_CONFIG)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def roi_summary(row: Any) -> str:
    """One line of a tool's ROI (for ``tools show``)."""
    ratio = "-" if row.roi is None else f"{row.roi:.2f}"
    estimate = " (library mean)" if row.estimated_reference else ""
    return (
        f"cost: {row.cost_tokens} tokens ({_money(row.cost_usd)}) over {row.versions} "
        f"version(s); reuses: {row.reuses} ok, saved ~{row.saved_tokens} tokens "
        f"({_money(row.saved_usd)}; {row.saved_per_reuse_tokens} per reuse{estimate}); "
        f"roi {ratio}"
    )


@click.command("prune")
@click.option(
    "--min-utility",
    type=click.FloatRange(min=0),
    default=None,
    help="Archive active tools scoring below this (default: the prune_min_utility setting).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be archived; change nothing.")
@settings_options
@click.pass_obj
def tools_prune(settings: InsituContext, min_utility: float | None, dry_run: bool) -> None:
    """Archive the tools of lowest utility (kept with their history; locked ones never)."""
    from insitu.tool_store.pruning import apply_prune, plan_prune

    threshold = min_utility if min_utility is not None else settings.prune_min_utility
    if threshold is None:
        fail("give --min-utility X, or set prune_min_utility (see docs/library.md)", EXIT_CONFIG)
    with opened_store(settings, read_only=dry_run) as store:
        plan = plan_prune(
            store,
            min_utility=threshold,
            half_life_days=settings.utility_half_life_days,
            grace_days=settings.prune_grace_days,
        )
        if not dry_run:
            apply_prune(store, plan)
    verb = "would archive" if dry_run else "archived"
    table = Table(
        title=escape(f"{plan.scored} active tool(s) scored; below {threshold:g}:"),
        title_justify="left",
    )
    for column in ("name", "utility", "action", "why"):
        # Names are identifiers a user types back: the reason folds, never the name.
        table.add_column(column, overflow="fold", no_wrap=column != "why")
    for d in plan.decisions:
        action = verb if d.action == "archive" else "keep"
        table.add_row(*map(cell, (d.name, f"{d.utility:.3f}", action, d.reason)))
    if plan.decisions:
        out.print(table)
    count = len(plan.to_archive) if dry_run else len(plan.archived)
    say(f"{verb} {count} tool(s)" + (" (dry run: nothing changed)" if dry_run else ""))


@click.command("add")
@click.argument("source_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--tests",
    "tests_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON list of test cases (default: NAME.tests.json beside the file).",
)
@click.option(
    "--new-version",
    is_flag=True,
    help="The tool exists: add the file as its next version (history is kept).",
)
@click.option("--force", is_flag=True, help="With --new-version: update a locked tool too.")
@settings_options
@click.pass_obj
def tools_add(
    settings: InsituContext,
    source_file: Path,
    tests_file: Path | None,
    new_version: bool,
    force: bool,
) -> None:
    """Add a hand-written tool, admitted as a generated one is (contract, sandboxed tests)."""
    from insitu.tool_store.authoring import AuthoringError, admit_file

    sandbox = _sandbox(settings)
    try:
        # Admitted before the store is opened: a refused tool leaves no library behind
        # (only the sandbox's tool environment, which its dependencies are installed in).
        spec = admit_file(source_file, tests_file, sandbox=sandbox)
    except AuthoringError as exc:
        fail(str(exc), EXIT_INCOMPLETE)
    note = f"written by hand: {source_file.name}"
    with opened_store(settings, read_only=False, creates=True) as store:
        exists = store.has(spec.name)
        if exists and not new_version:
            fail(
                f"{spec.name} is already in the library: pass --new-version to add this file as "
                "its next version",
                EXIT_INCOMPLETE,
            )
        if not exists and new_version:
            fail(f"{spec.name} is not in the library: add it without --new-version", EXIT_CONFIG)
        if exists:
            before = store.state(spec.name).current_version
            record = store.update(spec.name, spec, origin="manual", note=note, force=force)
            if record.version == before:
                say(f"{spec.name} unchanged: version {before} has this content already")
                return
        else:
            record = store.add(spec, origin="manual", note=note)
    say(f"added {record.ref}: {len(spec.tests)} test(s) passed in the sandbox")


@click.command("roi")
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Price table ($ per 1M tokens by model; default: evals/prices.json).",
)
@settings_options
@click.pass_obj
def tools_roi(settings: InsituContext, prices: str | None) -> None:
    """What each tool cost to build and repair, and what its reuses saved (an estimate)."""
    from insitu.tool_store.costs import load_prices
    from insitu.tool_store.utility import tool_roi

    try:
        table_prices = load_prices(prices)
    except (OSError, ValueError) as exc:
        fail(f"cannot read the price table: {exc}", EXIT_CONFIG)
    with opened_store(settings, read_only=True) as store:
        rows = tool_roi(store, table_prices)
    table = Table(title=escape(f"ROI of {len(rows)} tool(s)"), title_justify="left")
    for column in ("name", "status", "ver", "cost tok", "cost $", "reuses", "saved tok", "roi"):
        table.add_column(column, no_wrap=True)
    for r in sorted(rows, key=lambda r: (r.roi is None, -(r.roi or 0), r.name)):
        table.add_row(
            *map(
                cell,
                (
                    r.name,
                    r.status,
                    r.versions,
                    r.cost_tokens,
                    _money(r.cost_usd),
                    r.reuses,
                    f"{r.saved_tokens}{'*' if r.estimated_reference else ''}",
                    "-" if r.roi is None else f"{r.roi:.2f}",
                ),
            )
        )
    out.print(table)
    say("* saved with the library's mean build cost (no first build recorded); docs/library.md")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


@click.command("gc")
@click.argument("run_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option(
    "--retention-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Remove what is idle for longer (default: the retention_days setting).",
)
@settings_options
@click.pass_obj
def gc_command(
    settings: InsituContext, run_dirs: tuple[Path, ...], dry_run: bool, retention_days: float | None
) -> None:
    """Remove old workspaces and checkpoint threads of the store (and of RUN_DIRS).

    Never those of unfinished runs or of paused threads (awaiting a review or a
    resume). Deleted threads' databases are VACUUMed.
    """
    from insitu.gc import collect_garbage

    store = Path(settings.store_dir)
    if not store.is_dir():
        fail(f"no store at {store}: point to one with --store DIR or $INSITU_STORE", EXIT_CONFIG)
    retention = settings.retention_days if retention_days is None else retention_days
    try:
        report = collect_garbage(store, run_dirs, retention_days=retention, dry_run=dry_run)
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)
    shown = [
        i for i in report.items if i.remove or "unfinished" in i.reason or "paused" in i.reason
    ]
    if shown:
        verb = "would remove" if dry_run else "removed"
        table = Table(title="workspaces and checkpoint threads", title_justify="left")
        for column in ("kind", "name", "idle days", "size", "action", "why"):
            table.add_column(column, overflow="fold")
        for i in shown:
            action = verb if i.remove else "keep"
            idle = "-" if i.idle_days == float("inf") else f"{i.idle_days:.1f}"
            table.add_row(*map(cell, (i.kind, i.name, idle, _size(i.size_bytes), action, i.reason)))
        out.print(table)
    for line in report.errors:
        say(f"warning: {line}")
    workspaces, threads = report.removed("workspace"), report.removed("thread")
    kept = len(report.items) - len(workspaces) - len(threads)
    if dry_run:
        say(
            f"dry run: would remove {len(workspaces)} workspace(s) and {len(threads)} checkpoint "
            f"thread(s), freeing {_size(report.freed_bytes)}; {kept} kept"
        )
        return
    shrunk = sum(report.vacuumed.values())
    say(
        f"removed {len(workspaces)} workspace(s) and {len(threads)} checkpoint thread(s): "
        f"freed {_size(report.freed_bytes)} ({report.freed_bytes} bytes"
        + (
            f"; checkpoint databases shrank by {_size(shrunk)} after VACUUM"
            if report.vacuumed
            else ""
        )
        + f"); {kept} kept"
    )


def import_edited_tools(settings: InsituContext, directory: Path, *, force: bool) -> None:
    """``tools import DIR --as-new-version``: the export's edited tools as new versions."""
    from insitu.tool_store.authoring import AuthoringError, edited_exports, reimport_edited
    from insitu.tool_store.errors import VersionConflictError

    try:
        edited_exports(directory)  # a bad folder fails before the store is opened
    except AuthoringError as exc:
        fail(str(exc), EXIT_INCOMPLETE)
    sandbox = _sandbox(settings)
    with opened_store(settings, read_only=False) as store:
        try:
            edited, result = reimport_edited(store, directory, sandbox=sandbox, force=force)
        except (AuthoringError, VersionConflictError) as exc:
            fail(str(exc), EXIT_INCOMPLETE)
    for tool in edited:
        say(f"{tool.name}: edited {tool.source_file.name} passed {len(tool.tests)} test(s)")
    versions = ", ".join(result.updated)
    say(f"imported {len(result.updated)} edited tool(s) as new versions: {versions}")


def sort_records(
    store: Any, settings: InsituContext, records: list[Any], sort: str, *, include_archived: bool
) -> dict[str, tuple[str, str]] | None:
    """``tools list --sort``: order ``records`` in place.

    Sorting by utility or ROI scores the library and returns each tool's
    utility and ROI cells (the table then shows them); other orders return None.
    """
    from insitu.tool_store.utility import first_version_times, tool_roi, utility_scores

    if sort == "created":  # when the tool was first created, not its current version
        born = first_version_times(store, (r.name for r in records))
        records.sort(key=lambda r: (-born.get(r.name, r.created_at).timestamp(), r.name))
        return None
    if sort in ("name", "calls"):
        keys = {"name": lambda r: r.name, "calls": lambda r: (-r.stats.calls, r.name)}
        records.sort(key=keys[sort])
        return None
    utility = utility_scores(
        store, half_life_days=settings.utility_half_life_days, include_archived=include_archived
    )
    roi = {row.name: row.roi for row in tool_roi(store, include_archived=include_archived)}
    if sort == "utility":
        records.sort(key=lambda r: (-utility[r.name].utility, r.name))
    else:  # tools without a cost (no ratio) last
        records.sort(key=lambda r: (roi.get(r.name) is None, -(roi.get(r.name) or 0), r.name))
    return {
        name: (f"{u.utility:.3f}", "-" if roi.get(name) is None else f"{roi[name]:.2f}")
        for name, u in utility.items()
    }


def value_lines(store: Any, settings: InsituContext, name: str) -> list[str]:
    """``tools show``: the tool's utility and ROI lines (docs/library.md)."""
    from insitu.tool_store.utility import tool_roi, utility_scores

    lines = []
    scores = utility_scores(
        store, half_life_days=settings.utility_half_life_days, include_archived=True
    )
    score = scores.get(name)
    if score is not None:
        lines.append(f"utility: {score.utility:.3f} ({score.why()})")
    row = next((row for row in tool_roi(store) if row.name == name), None)
    if row is not None:
        lines.append(roi_summary(row))
    return lines
