"""Reviewing tools before they enter the library (``tool_approval``), from the shell.

Interactively (``insitu run|evolve --approve``): each tool is shown as a panel
(description, tests and their verdict, the source, or the diff against the
version it replaces) and approved, rejected with a reason, or edited in
``$EDITOR``. Non-interactively: a paused run's review is kept in the store
(:mod:`insitu.reviews`), ``insitu tools pending`` lists it, ``insitu tools
approve|reject NAME`` decide, and running the paused command again resumes.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from insitu.cli.common import EXIT_CONFIG, err, fail, out, say, settings_options
from insitu.context import InsituContext


def show_item(item: dict[str, Any]) -> None:
    """Print one tool under review as a panel on stderr (stdout keeps the results)."""
    header = f"{item['name']} — {item['change']}"
    if item.get("replaces"):
        header += f" (replaces {item['replaces']})"
    err.print(Panel(item["description"], title=header, title_align="left"))
    for member in item.get("members") or []:
        err.print(f"  merges {member['ref']}: {member['description'][:120]}", highlight=False)
    tests = json.dumps(item["tests"], indent=1)
    err.print(Syntax(tests, "json", word_wrap=True))
    err.print(f"  {item['verdict']}", highlight=False)
    if item.get("network") or item.get("secrets"):
        err.print(f"  network: {item.get('network')}  secrets: {item.get('secrets')}")
    if item.get("diff"):
        err.print(Syntax(item["diff"], "diff", word_wrap=True))
    else:
        err.print(Syntax(item["source"], "python", line_numbers=True, word_wrap=True))


def review_interactively(review: dict[str, Any]) -> dict[str, Any]:
    """Ask at the terminal about every tool of a review; return the decisions."""
    decisions: dict[str, Any] = {}
    for item in review.get("tools", []):
        show_item(item)
        action = click.prompt(
            f"{item['name']}: [a]pprove, [r]eject or [e]dit?",
            type=click.Choice(["a", "r", "e"]),
            err=True,
        )
        if action == "a":
            decisions[item["name"]] = {"action": "approve"}
        elif action == "r":
            reason = click.prompt("reason", default="rejected by the reviewer", err=True)
            decisions[item["name"]] = {"action": "reject", "reason": reason}
        else:
            edited = click.edit(item["source"], extension=".py")
            if edited is None or edited == item["source"]:
                decisions[item["name"]] = {"action": "approve"}
            else:
                decisions[item["name"]] = {"action": "edit", "source": edited}
    return decisions


def pending_message(store_dir: str, thread_id: str, review: dict[str, Any], command: str) -> str:
    """Record a paused run's review and say how to answer it (one paragraph)."""
    from insitu.reviews import record_pending

    record_pending(store_dir, thread_id, review, command)
    names = ", ".join(item["name"] for item in review.get("tools", []))
    return (
        f"paused: {names} await(s) a review. See them with `insitu tools pending`, decide with "
        f"`insitu tools approve NAME` or `insitu tools reject NAME --reason ...`, then run "
        f"`{command}` to go on (or run it with --approve to review here)."
    )


# --------------------------------------------------------------------- tools pending|approve|reject


@click.command("pending")
@settings_options
@click.pass_obj
def tools_pending(settings: InsituContext) -> None:
    """List the tools that paused runs wait to have reviewed (tool_approval)."""
    from insitu.reviews import ReviewError, load

    try:
        pending = load(settings.store_dir)
    except ReviewError as exc:
        fail(str(exc), EXIT_CONFIG)
    if not pending:
        say("no tool awaits a review")
        return
    table = Table(title="tools awaiting a review", title_justify="left")
    for column in ("tool", "change", "decision", "run", "resume with"):
        table.add_column(column, overflow="fold")
    for thread, entry in pending.items():
        for item in entry["review"].get("tools", []):
            decision = entry["decisions"].get(item["name"], {}).get("action", "-")
            table.add_row(item["name"], item["change"], decision, thread, entry["command"])
    out.print(table)


@click.command("approve")
@click.argument("name")
@click.option("--thread", default=None, help="The paused run, when several have NAME.")
@click.option(
    "--edit",
    "edited",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Approve this edited module instead (it must pass the tool's tests).",
)
@settings_options
@click.pass_obj
def tools_approve(
    settings: InsituContext, name: str, thread: str | None, edited: str | None
) -> None:
    """Approve a pending tool (or an edited version of it) for the library."""
    from pathlib import Path

    from insitu.reviews import ReviewError, decide

    decision: dict[str, Any] = {"action": "approve"}
    if edited:
        decision = {"action": "edit", "source": Path(edited).read_text(encoding="utf-8")}
    try:
        thread_id = decide(settings.store_dir, name, decision, thread)
    except ReviewError as exc:
        fail(str(exc), EXIT_CONFIG)
    say(f"{name}: {'edited and approved' if edited else 'approved'} (run {thread_id})")


@click.command("reject")
@click.argument("name")
@click.option("--reason", required=True, help="Why (kept on record with the tool).")
@click.option("--thread", default=None, help="The paused run, when several have NAME.")
@settings_options
@click.pass_obj
def tools_reject(settings: InsituContext, name: str, reason: str, thread: str | None) -> None:
    """Reject a pending tool: kept on record, never in the library."""
    from insitu.reviews import ReviewError, decide

    try:
        thread_id = decide(settings.store_dir, name, {"action": "reject", "reason": reason}, thread)
    except ReviewError as exc:
        fail(str(exc), EXIT_CONFIG)
    say(f"{name}: rejected (run {thread_id})")
