"""``insitu tools ...``: read, search and edit the tool library."""

from __future__ import annotations

import json
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


def _rate(record: Any) -> str:
    stats = record.stats
    return f"{100 * stats.successes / stats.calls:.0f}" if stats.calls else "-"


def tools_table(records: list[Any], title: str) -> Table:
    """Render tool records as a table."""
    table = Table(title=escape(title), title_justify="left")
    for column in ("name", "ver", "status", "calls", "ok %", "description"):
        table.add_column(column, overflow="fold")
    for r in records:
        status = r.status + (" (locked)" if r.locked else "")
        table.add_row(
            *map(cell, (r.name, r.version, status, r.stats.calls, _rate(r), r.description[:90]))
        )
    return table


@click.group()
@settings_options
def tools() -> None:
    """Inspect and manage the tool library (--store DIR, else $INSITU_STORE or ./.insitu)."""


@tools.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include archived tools.")
@settings_options
@click.pass_obj
def tools_list(settings: InsituContext, show_all: bool) -> None:
    """List the library's tools."""
    with opened_store(settings, read_only=True) as store:
        records = store.list(status="all" if show_all else "active")
        which = "" if show_all else " active"
        out.print(tools_table(records, f"{len(records)}{which} tool(s) in {settings.store_dir}"))


@tools.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="A specific version.")
@settings_options
@click.pass_obj
def tools_show(settings: InsituContext, name: str, version: int | None) -> None:
    """Show one tool: metadata, schemas, tests and source."""
    from insitu.tool_store.exchange import TRUSTED_NOTE

    with opened_store(settings, read_only=True) as store:
        r = store.get(name, version)
        plain = {"highlight": False, "markup": False, "soft_wrap": True}
        out.print(
            f"{r.ref} ({r.status}{', locked' if r.locked else ''}, origin {r.origin}, "
            f"task {r.created_by_task or '-'}, created {r.created_at:%Y-%m-%d %H:%M:%S})",
            style="bold",
            **plain,
        )
        out.print(r.description, **plain)
        out.print(
            f"dependencies: {', '.join(r.dependencies) or '-'}  "
            f"secrets: {', '.join(r.secrets) or '-'}  network: {r.network}  "
            f"merged_from: {', '.join(r.merged_from) or '-'}",
            **plain,
        )
        from insitu.tool_store.mcp_tools import runs_where

        where = runs_where(r)  # a tool of an external MCP server runs there, not sandboxed
        if where:
            out.print(where, **plain)
        refused = [secret for secret in r.secrets if secret not in settings.allowed_secrets]
        if refused:
            out.print(
                f"not in allowed_secrets (its calls are refused): {', '.join(refused)}",
                style="bold yellow",
                **plain,
            )
        if r.note:
            out.print(f"note: {r.note}", **plain)
        if r.note and TRUSTED_NOTE in r.note:
            out.print(
                "UNVERIFIED: imported with --trust, its tests were not run at import",
                style="bold yellow",
                **plain,
            )
        out.print(f"stats: {json.dumps(r.stats.model_dump(mode='json'))}", **plain)
        out.print("input schema: " + json.dumps(r.input_schema), **plain)
        out.print("output schema: " + json.dumps(r.output_schema), **plain)
        out.print(f"tests: {', '.join(t.name for t in r.tests) or '-'}", **plain)
        out.rule("source")
        out.print(r.source, **plain)


@tools.command("search")
@click.argument("query")
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="Results.")
@click.option(
    "--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default="hybrid", show_default=True
)
@click.option("--all", "include_archived", is_flag=True, help="Search archived tools too.")
@settings_options
@click.pass_obj
def tools_search(
    settings: InsituContext, query: str, k: int, mode: str, include_archived: bool
) -> None:
    """Search the library (hybrid lexical + dense retrieval)."""
    with opened_store(settings, read_only=True) as store:
        hits = store.search(query, k=k, mode=mode, include_archived=include_archived)
        table = Table(title=escape(f"top {len(hits)} for {query!r}"), title_justify="left")
        for column in ("score", "name", "ver", "status", "description"):
            table.add_column(column, overflow="fold")
        for h in hits:
            r = h.record
            table.add_row(
                *map(cell, (f"{h.score:.3f}", r.name, r.version, r.status, r.description[:100]))
            )
        out.print(table)
        if not hits:
            say("no matching tool")


@tools.command("history")
@click.argument("name")
@settings_options
@click.pass_obj
def tools_history(settings: InsituContext, name: str) -> None:
    """List every version of a tool (oldest first; * marks the current one)."""
    with opened_store(settings, read_only=True) as store:
        current = store.state(name).current_version
        table = Table(title=escape(f"history of {name}"), title_justify="left")
        for column in ("ver", "created", "origin", "task", "hash", "note"):
            table.add_column(column, overflow="fold")
        for r in store.history(name):
            table.add_row(
                *map(
                    cell,
                    (
                        f"{r.version}{' *' if r.version == current else ''}",
                        r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                        r.origin,
                        r.created_by_task or "-",
                        r.hash[:10],
                        r.note or "",
                    ),
                )
            )
        out.print(table)


@tools.command("rollback")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--force", is_flag=True, help="Roll back a locked tool too.")
@settings_options
@click.pass_obj
def tools_rollback(settings: InsituContext, name: str, version: int, force: bool) -> None:
    """Make an earlier version current again (as a new version; history is kept)."""
    with opened_store(settings, read_only=False) as store:
        before = store.state(name).current_version
        r = store.rollback(name, version, force=force)
        if r.version == before:
            say(f"{name} unchanged: version {before} already has the content of version {version}")
        else:
            say(f"{name} is now version {r.version} (content of version {version})")


@tools.command("archive")
@click.argument("name")
@click.option("--reason", default="archived by hand", show_default=True)
@click.option("--force", is_flag=True, help="Archive a locked tool too.")
@click.option("--restore", is_flag=True, help="Make an archived tool active again instead.")
@settings_options
@click.pass_obj
def tools_archive(
    settings: InsituContext, name: str, reason: str, force: bool, restore: bool
) -> None:
    """Archive a tool (kept with its history, no longer retrieved)."""
    with opened_store(settings, read_only=False) as store:
        before = store.state(name).status
        if restore:
            store.restore(name)
            done = "already active" if before == "active" else "restored"
        else:
            store.archive(name, reason, force=force)
            done = "already archived" if before == "archived" else "archived"
        say(f"{name}: {done}")


@tools.command("lock")
@click.argument("name")
@click.option("--unlock", is_flag=True, help="Remove the lock instead.")
@settings_options
@click.pass_obj
def tools_lock(settings: InsituContext, name: str, unlock: bool) -> None:
    """Lock a tool so that automated repair and merging never change it."""
    with opened_store(settings, read_only=False) as store:
        (store.unlock if unlock else store.lock)(name)
        say(f"{'unlocked' if unlock else 'locked'} {name}")


@tools.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@settings_options
@click.pass_obj
def tools_export(settings: InsituContext, directory: str) -> None:
    """Export the library (active and archived tools, every version) to a folder."""
    from insitu.tool_store import export_library

    with opened_store(settings, read_only=True) as store:
        count = export_library(store, Path(directory))
        say(f"exported {count} tool(s) to {directory}")


@tools.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--on-conflict",
    type=click.Choice(["skip", "replace", "error"]),
    default="skip",
    show_default=True,
    help="For a name the library has with other content.",
)
@click.option("--force", is_flag=True, help="With --on-conflict replace: replace locked tools.")
@click.option(
    "--trust",
    is_flag=True,
    help="Do not run the tools' tests in the sandbox first (recorded in each version's note).",
)
@settings_options
@click.pass_obj
def tools_import(
    settings: InsituContext, directory: str, on_conflict: str, force: bool, trust: bool
) -> None:
    """Import a library exported with `insitu tools export` (all or nothing).

    Every version the import would write is admitted first, as a new tool would
    be: static checks, the allowed_secrets setting, and its stored tests in the
    sandbox. One failure refuses the whole import; --trust skips the tests.
    """
    from insitu.services import ConfigurationError, open_sandbox
    from insitu.tool_store.exchange import ImportVerificationError, import_library

    sandbox = None
    if not trust:
        try:
            sandbox = open_sandbox(settings)
        except ConfigurationError as exc:
            fail(str(exc), EXIT_CONFIG)
    scratch = Path(settings.store_dir).resolve() / "workspaces" / ".import"
    # Importing is also how a library whose tools.db was lost is rebuilt from an export.
    with opened_store(settings, read_only=False, recreate_records=True) as store:
        try:
            result = import_library(
                store,
                Path(directory),
                on_conflict=on_conflict,
                force=force,
                sandbox=sandbox,
                trust=trust,
                scratch_dir=scratch,
            )
        except ImportVerificationError as exc:
            fail(str(exc), EXIT_INCOMPLETE)
        say(f"imported from {directory}: {result}")


@tools.command("reindex")
@click.option(
    "--embedding",
    type=click.Choice(["minilm", "hashing"]),
    default=None,
    help="Switch the library to this embedding (default: keep the one it was built with).",
)
@settings_options
@click.pass_obj
def tools_reindex(settings: InsituContext, embedding: str | None) -> None:
    """Rebuild the retrieval index from the tool records, whatever state the index is in.

    A damaged local index (one that cannot be opened or rebuilt in place) is
    moved aside to index.damaged-TIME first; the records are never changed.
    """
    with opened_store(
        settings,
        read_only=False,
        embedding=embedding,
        rebuild_damaged_index=True,
        verify_index=False,  # the rebuild replaces whatever the check would repair
    ) as store:
        count = store.reindex()
        moved = f"; the damaged index was moved to {store.index_set_aside}"
        say(
            f"reindexed {count} tool(s) with the {store.embedding_name} embedding"
            + (moved if store.index_set_aside else "")
        )
