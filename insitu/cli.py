"""The ``insitu`` command line.

Exit codes: 0 success; 1 the task could not be completed; 2 usage or
configuration error (what to set is printed); 3 a runtime error such as a
store held by another process.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from insitu import __version__
from insitu.context import InsituContext, describe_settings

EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG, EXIT_RUNTIME = 0, 1, 2, 3

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = EXIT_RUNTIME) -> None:
    """Print an error (no stack trace) and exit with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insitu")
@click.option(
    "--store",
    "store_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Tool library directory (default: $INSITU_STORE or ./.insitu).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.pass_context
def main(ctx: click.Context, store_dir: str | None, verbose: bool) -> None:
    """insitu: self-evolving, tool-first agents that write, verify and reuse their own tools."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    settings = InsituContext()
    if store_dir:
        settings = replace(settings, store_dir=store_dir)
    ctx.obj = settings


@contextmanager
def opened_store(settings: InsituContext, *, read_only: bool) -> Iterator[Any]:
    """Open the settings' store, turning store errors into clear CLI errors."""
    from insitu.tool_store import ToolStore
    from insitu.tool_store.errors import StoreError

    try:
        store = ToolStore.open(
            Path(settings.store_dir),
            embedding=settings.embedding,
            chroma_url=settings.chroma_url,
            read_only=read_only,
        )
    except StoreError as exc:
        fail(str(exc))
    try:
        yield store
    except StoreError as exc:
        fail(str(exc))
    finally:
        store.close()


def tools_table(records: list[Any], title: str) -> Table:
    """Render tool records as a table."""
    table = Table(title=title, title_justify="left")
    for column in ("name", "ver", "status", "calls", "ok %", "description"):
        table.add_column(column, overflow="fold")
    for r in records:
        rate = f"{100 * r.stats.successes / r.stats.calls:.0f}" if r.stats.calls else "-"
        status = r.status + (" 🔒" if r.locked else "")
        table.add_row(r.name, str(r.version), status, str(r.stats.calls), rate, r.description[:90])
    return table


@main.group()
def tools() -> None:
    """Inspect and manage the tool library."""


@tools.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include archived tools.")
@click.pass_obj
def tools_list(settings: InsituContext, show_all: bool) -> None:
    """List the library's tools."""
    with opened_store(settings, read_only=True) as store:
        records = store.list(status="all" if show_all else "active")
        out.print(tools_table(records, f"{len(records)} tool(s) in {settings.store_dir}"))


@tools.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="A specific version.")
@click.pass_obj
def tools_show(settings: InsituContext, name: str, version: int | None) -> None:
    """Show one tool: metadata, schemas, tests and source."""
    with opened_store(settings, read_only=True) as store:
        r = store.get(name, version)
        out.print(
            f"[bold]{r.ref}[/] ({r.status}{', locked' if r.locked else ''}, "
            f"origin {r.origin}, task {r.created_by_task or '-'})"
        )
        out.print(r.description)
        out.print(
            f"dependencies: {r.dependencies or '-'}  secrets: {r.secrets or '-'}  "
            f"network: {r.network}  merged_from: {r.merged_from or '-'}"
        )
        out.print(f"stats: {r.stats.model_dump(mode='json')}")
        out.print("input schema: " + json.dumps(r.input_schema))
        out.print("output schema: " + json.dumps(r.output_schema))
        out.print(f"tests: {[t.name for t in r.tests]}")
        out.rule("source")
        out.print(r.source, highlight=False, markup=False)


@tools.command("search")
@click.argument("query")
@click.option("-k", default=5, show_default=True, help="Number of results.")
@click.option(
    "--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default="hybrid", show_default=True
)
@click.pass_obj
def tools_search(settings: InsituContext, query: str, k: int, mode: str) -> None:
    """Search the library (hybrid lexical + dense retrieval)."""
    with opened_store(settings, read_only=True) as store:
        hits = store.search(query, k=k, mode=mode)
        table = Table(title=f"top {len(hits)} for {query!r}", title_justify="left")
        for column in ("score", "name", "ver", "description"):
            table.add_column(column, overflow="fold")
        for h in hits:
            table.add_row(
                f"{h.score:.3f}", h.record.name, str(h.record.version), h.record.description[:100]
            )
        out.print(table)


@tools.command("history")
@click.argument("name")
@click.pass_obj
def tools_history(settings: InsituContext, name: str) -> None:
    """List every version of a tool."""
    with opened_store(settings, read_only=True) as store:
        table = Table(title=f"history of {name}", title_justify="left")
        for column in ("ver", "created", "origin", "task", "hash", "note"):
            table.add_column(column, overflow="fold")
        for r in store.history(name):
            table.add_row(
                str(r.version),
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.origin,
                r.created_by_task or "-",
                r.hash[:10],
                r.note or "",
            )
        out.print(table)


@tools.command("rollback")
@click.argument("name")
@click.argument("version", type=int)
@click.pass_obj
def tools_rollback(settings: InsituContext, name: str, version: int) -> None:
    """Make an earlier version current again (as a new version)."""
    with opened_store(settings, read_only=False) as store:
        r = store.rollback(name, version)
        out.print(f"{name} is now version {r.version} (content of version {version})")


@tools.command("archive")
@click.argument("name")
@click.option("--reason", default="archived by hand", show_default=True)
@click.pass_obj
def tools_archive(settings: InsituContext, name: str, reason: str) -> None:
    """Archive a tool (kept, no longer retrieved)."""
    with opened_store(settings, read_only=False) as store:
        store.archive(name, reason)
        out.print(f"archived {name}")


@tools.command("lock")
@click.argument("name")
@click.option("--unlock", is_flag=True, help="Remove the lock instead.")
@click.pass_obj
def tools_lock(settings: InsituContext, name: str, unlock: bool) -> None:
    """Lock a tool so that automated repair and merging never change it."""
    with opened_store(settings, read_only=False) as store:
        (store.unlock if unlock else store.lock)(name)
        out.print(f"{'unlocked' if unlock else 'locked'} {name}")


@tools.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.pass_obj
def tools_export(settings: InsituContext, directory: str) -> None:
    """Export the library as .py files plus manifest.json."""
    from insitu.tool_store import export_library

    with opened_store(settings, read_only=True) as store:
        count = export_library(store, Path(directory))
        out.print(f"exported {count} tool(s) to {directory}")


@tools.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--on-conflict",
    type=click.Choice(["skip", "replace", "error"]),
    default="skip",
    show_default=True,
)
@click.pass_obj
def tools_import(settings: InsituContext, directory: str, on_conflict: str) -> None:
    """Import a library exported with `insitu tools export`."""
    from insitu.tool_store import import_library

    with opened_store(settings, read_only=False) as store:
        result = import_library(store, Path(directory), on_conflict=on_conflict)
        out.print(f"imported from {directory}: {result}")


@tools.command("reindex")
@click.pass_obj
def tools_reindex(settings: InsituContext) -> None:
    """Rebuild the retrieval index from the tool records."""
    with opened_store(settings, read_only=False) as store:
        count = store.reindex()
        out.print(f"reindexed {count} tool(s)")


@main.command("settings")
def show_settings() -> None:
    """Print every setting with its current value and meaning."""
    table = Table(title="settings (InsituContext)", title_justify="left")
    for column in ("name", "value", "description"):
        table.add_column(column, overflow="fold")
    for name, value, description in describe_settings():
        table.add_row(name, value, description)
    out.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
