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
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from insitu import __version__
from insitu.context import InsituContext, describe_settings

EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG, EXIT_RUNTIME = 0, 1, 2, 3

out = Console()
err = Console(stderr=True)


def scripted_models(banner: str) -> Any:
    """``--scripted``: the scripted team (a test double) for every role, announced on stderr.

    Args:
        banner: What the run's output must say about its numbers.
    """
    from insitu.testing.team import ScriptedTeam

    err.print(f"[bold yellow]{banner}[/]")
    return ScriptedTeam().model()


def fail(message: str, code: int = EXIT_RUNTIME) -> None:
    """Print an error (no stack trace) and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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


def store_exit_code(exc: Exception) -> int:
    """The exit code for a store error: 2 bad name/version/path, 1 refused, 3 runtime."""
    from insitu.tool_store import errors

    if isinstance(exc, errors.ToolNotFoundError | errors.VersionNotFoundError):
        return EXIT_CONFIG
    if isinstance(
        exc,
        errors.LockedToolError
        | errors.ToolArchivedError
        | errors.DuplicateToolError
        | errors.InvalidSpecError
        | errors.ImportConflictError
        | errors.CorruptManifestError
        | errors.ExportError,
    ):
        return EXIT_INCOMPLETE
    return EXIT_RUNTIME


@contextmanager
def opened_store(
    settings: InsituContext, *, read_only: bool, embedding: str | None = None
) -> Iterator[Any]:
    """Open the settings' store, turning store errors into clear CLI errors.

    The store keeps the embedding it was built with (``embedding=None``): a
    command that only reads or edits a tool must never silently re-embed the
    library. ``$INSITU_EMBEDDING`` (the settings' default) only chooses the
    embedding of a new library; ``tools reindex --embedding`` switches it.
    """
    from insitu.tool_store import ToolStore
    from insitu.tool_store.errors import StoreError

    path = Path(settings.store_dir)
    if read_only and not (path / "tools.db").is_file():
        fail(
            f"no tool library at {path}: nothing has been stored there yet. Point to a library "
            "with --store DIR or $INSITU_STORE.",
            EXIT_CONFIG,
        )
    try:
        store = ToolStore.open(
            path, embedding=embedding, chroma_url=settings.chroma_url, read_only=read_only
        )
    except StoreError as exc:
        fail(str(exc), store_exit_code(exc))
    try:
        yield store
    except StoreError as exc:
        # The store's messages speak Python (force=True); the flags here are --force.
        fail(str(exc).replace("pass force=True", "pass --force"), store_exit_code(exc))
    finally:
        store.close()


def _cell(value: Any) -> Text:
    """A table cell shown literally (tool text may contain ``[...]``, never markup)."""
    return Text(str(value))


def _rate(record: Any) -> str:
    stats = record.stats
    return f"{100 * stats.successes / stats.calls:.0f}" if stats.calls else "-"


def say(message: str) -> None:
    """Print one line of plain text: no markup, no highlighting, no hard wrapping."""
    out.print(message, highlight=False, markup=False, soft_wrap=True)


def tools_table(records: list[Any], title: str) -> Table:
    """Render tool records as a table."""
    table = Table(title=escape(title), title_justify="left")
    for column in ("name", "ver", "status", "calls", "ok %", "description"):
        table.add_column(column, overflow="fold")
    for r in records:
        status = r.status + (" (locked)" if r.locked else "")
        table.add_row(
            *map(_cell, (r.name, r.version, status, r.stats.calls, _rate(r), r.description[:90]))
        )
    return table


@main.group()
def tools() -> None:
    """Inspect and manage the tool library (--store DIR, else $INSITU_STORE or ./.insitu)."""


@tools.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include archived tools.")
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
@click.pass_obj
def tools_show(settings: InsituContext, name: str, version: int | None) -> None:
    """Show one tool: metadata, schemas, tests and source."""
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
        if r.note:
            out.print(f"note: {r.note}", **plain)
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
                *map(_cell, (f"{h.score:.3f}", r.name, r.version, r.status, r.description[:100]))
            )
        out.print(table)
        if not hits:
            say("no matching tool")


@tools.command("history")
@click.argument("name")
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
                    _cell,
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
@click.pass_obj
def tools_lock(settings: InsituContext, name: str, unlock: bool) -> None:
    """Lock a tool so that automated repair and merging never change it."""
    with opened_store(settings, read_only=False) as store:
        (store.unlock if unlock else store.lock)(name)
        say(f"{'unlocked' if unlock else 'locked'} {name}")


@tools.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
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
@click.pass_obj
def tools_import(settings: InsituContext, directory: str, on_conflict: str, force: bool) -> None:
    """Import a library exported with `insitu tools export` (all or nothing)."""
    from insitu.tool_store import import_library

    with opened_store(settings, read_only=False) as store:
        result = import_library(store, Path(directory), on_conflict=on_conflict, force=force)
        say(f"imported from {directory}: {result}")


@tools.command("reindex")
@click.option(
    "--embedding",
    type=click.Choice(["minilm", "hashing"]),
    default=None,
    help="Switch the library to this embedding (default: keep the one it was built with).",
)
@click.pass_obj
def tools_reindex(settings: InsituContext, embedding: str | None) -> None:
    """Rebuild the retrieval index from the tool records."""
    with opened_store(settings, read_only=False, embedding=embedding) as store:
        count = store.reindex()
        say(f"reindexed {count} tool(s) with the {store.embedding_name} embedding")


@main.command("settings")
def show_settings() -> None:
    """Print every setting with its current value and meaning."""
    table = Table(title="settings (InsituContext)", title_justify="left")
    for column in ("name", "value", "description"):
        table.add_column(column, overflow="fold")
    for name, value, description in describe_settings():
        table.add_row(name, value, description)
    out.print(table)


def _register_commands() -> None:
    """Attach the commands that live in their own modules (they import this one)."""
    from insitu.cli_episode import demo, run
    from insitu.cli_eval import eval_group
    from insitu.cli_evolve import evolve_command
    from insitu.cli_report import report

    for command in (run, demo, evolve_command, report, eval_group):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
