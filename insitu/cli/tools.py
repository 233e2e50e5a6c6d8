"""``insitu tools ...``: read, search and edit the tool library."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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


def tools_table(
    records: list[Any], title: str, scores: dict[str, tuple[str, str]] | None = None
) -> Table:
    """Render tool records as a table that fits the terminal.

    Names are shown whole (never wrapped mid-word: they are identifiers a user
    types back); descriptions take the width that is left and end in "…" when
    cut.

    Args:
        records: The tools, in the order shown.
        title: The table's title.
        scores: Name -> (utility, ROI) cells, shown as two more columns.
    """
    columns = ["name", "ver", "status", "calls", "ok %"]
    if scores is not None:
        columns += ["utility", "roi"]
    rows = []
    for r in records:
        row = [r.name, str(r.version), r.status + (" (locked)" if r.locked else "")]
        row += [str(r.stats.calls), _rate(r)]
        if scores is not None:
            row += list(scores.get(r.name, ("-", "-")))
        rows.append([*row, r.description])
    table = library_table(title, columns, rows)
    table.caption = CALLS_CAPTION if records else None
    return table


#: What the calls column counts (it is easy to read it as "every run of the tool").
CALLS_CAPTION = (
    "calls: runs of the stored tool in episodes (admission tests and calls made before "
    "the tool was stored are not counted)"
)


def library_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A table of ``columns`` then a last "description" column, sized for people.

    Every column but the description is as wide as its widest cell, so that
    names and numbers are never wrapped or cut; the description takes what is
    left of the terminal's width and ends in "…" when cut.

    Args:
        title: The table's title (shown literally).
        columns: The headers before "description".
        rows: One sequence of cells per row: ``len(columns)`` cells, then the
            description.
    """
    widths = [
        max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(columns)
    ]
    # Each column costs its width, two spaces of padding and one rule; one more rule closes the row.
    left = out.width - sum(width + 3 for width in widths) - 4
    longest = max([len("description"), *(len(" ".join(row[-1].split())) for row in rows)])
    described = max(MIN_DESCRIPTION_WIDTH, min(longest, left))
    table = Table(title=escape(title), title_justify="left", caption_justify="left")
    for header, width in zip(columns, widths, strict=True):
        justify = "right" if header in NUMERIC_COLUMNS else "left"
        table.add_column(header, no_wrap=True, width=width, justify=justify)
    table.add_column("description", no_wrap=True, width=described)
    for row in rows:
        description = Text(" ".join(row[-1].split()))
        description.truncate(described, overflow="ellipsis")
        table.add_row(*map(cell, row[:-1]), description)
    return table


#: The description column is never narrower than this (a narrower terminal wraps the rows).
MIN_DESCRIPTION_WIDTH = 16
#: Columns right-aligned as numbers.
NUMERIC_COLUMNS = frozenset({"ver", "calls", "ok %", "match", "utility", "roi"})


#: ``tools list --sort`` (largest or newest first, except names; see cli/library.py).
_SORTS = ("name", "calls", "utility", "roi", "created")


@click.group()
@settings_options
def tools() -> None:
    """Inspect and manage the tool library (--store DIR, else $INSITU_STORE or ./.insitu)."""


@tools.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include archived tools.")
@click.option(
    "--sort",
    type=click.Choice(_SORTS),
    default="name",
    show_default=True,
    help="Order: by name, or largest first by calls, utility, ROI or creation time (the "
    "last two add utility and ROI columns).",
)
@settings_options
@click.pass_obj
def tools_list(settings: InsituContext, show_all: bool, sort: str) -> None:
    """List the library's tools (docs/library.md explains utility and ROI)."""
    from insitu.cli.library import sort_records

    with opened_store(settings, read_only=True) as store:
        records = store.list(status="all" if show_all else "active")
        scores = sort_records(store, settings, records, sort, include_archived=show_all)
    which = "" if show_all else " active"
    out.print(
        tools_table(records, f"{len(records)}{which} tool(s) in {settings.store_dir}", scores)
    )


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
        from insitu.cli.library import value_lines

        for line in value_lines(store, settings, r.name):
            out.print(line, **plain)
        out.print("input schema: " + json.dumps(r.input_schema), **plain)
        out.print("output schema: " + json.dumps(r.output_schema), **plain)
        out.print(f"tests: {', '.join(t.name for t in r.tests) or '-'}", **plain)
        for line in learned_section(store, r):
            out.print(line, **plain)
        out.rule("source")
        out.print(r.source, **plain)


def learned_section(store: Any, record: Any) -> list[str]:
    """The lines of ``tools show`` about what was learned: usage notes, harvested cases."""
    from insitu.tool_store.learning import learned_lines

    return learned_lines(
        store.usage_notes(record.name, record.version),
        store.harvested_cases(record.name, include_stale=True),
    )


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
    """Search the library (hybrid lexical + dense retrieval).

    Results are ranked by the fused hybrid score. The match column is in [0, 1]:
    the cosine similarity of the query and the tool's text (dense and hybrid
    modes; 1 is identical meaning), or in lexical mode the BM25 score relative
    to the best hit (the best hit is 1.00).
    """
    with opened_store(settings, read_only=True) as store:
        hits = store.search(query, k=k, mode=mode, include_archived=include_archived)
        rows = [
            (
                f"{match:.2f}",
                h.record.name,
                str(h.record.version),
                h.record.status,
                h.record.description,
            )
            for h, match in zip(hits, match_scores(hits, mode), strict=True)
        ]
        table = library_table(
            f"top {len(hits)} for {query!r}", ("match", "name", "ver", "status"), rows
        )
        out.print(table)
        if not hits:
            say("no matching tool")


def match_scores(hits: list[Any], mode: str) -> list[float]:
    """A score in [0, 1] per hit, for people (the ranking's fused scores are unbounded).

    Args:
        hits: Search hits, best first.
        mode: The search mode: ``lexical`` has no similarity, so its BM25 scores
            are shown relative to the best hit.
    """
    if mode == "lexical":
        top = max((h.lexical_score or 0.0 for h in hits), default=0.0)
        return [(h.lexical_score or 0.0) / top if top > 0 else 0.0 for h in hits]
    return [min(1.0, max(0.0, h.dense_score or 0.0)) for h in hits]


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
@click.option(
    "--as-new-version",
    is_flag=True,
    help="Import the tools whose source was edited since the export as new versions "
    "(their exported tests are run; --force for locked tools).",
)
@settings_options
@click.pass_obj
def tools_import(
    settings: InsituContext,
    directory: str,
    on_conflict: str,
    force: bool,
    trust: bool,
    as_new_version: bool,
) -> None:
    """Import a library exported with `insitu tools export` (all or nothing).

    Every version the import would write is admitted first, as a new tool would
    be: static checks, the allowed_secrets setting, and its stored tests in the
    sandbox. One failure refuses the whole import; --trust skips the tests.
    """
    from insitu.services import ConfigurationError, open_sandbox
    from insitu.tool_store.errors import CorruptManifestError
    from insitu.tool_store.exchange import ImportVerificationError, import_library, read_export

    if as_new_version:
        from insitu.cli.library import import_edited_tools

        if trust:
            fail("--as-new-version always runs the tests: drop --trust", EXIT_CONFIG)
        import_edited_tools(settings, Path(directory), force=force)
        return
    try:  # a folder that is not an export is a bad argument: nothing may be created for it
        read_export(directory)
    except CorruptManifestError as exc:
        fail(str(exc), EXIT_CONFIG)
    sandbox = None
    if not trust:
        try:
            sandbox = open_sandbox(settings)
        except ConfigurationError as exc:
            fail(str(exc), EXIT_CONFIG)
    scratch = Path(settings.store_dir).resolve() / "workspaces" / ".import"
    # Importing is also how a library whose tools.db was lost is rebuilt from an export.
    with opened_store(settings, read_only=False, creates=True, recreate_records=True) as store:
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
