"""The ``insitu`` command line.

Exit codes: 0 success; 1 the task could not be completed; 2 usage or
configuration error (what to set is printed); 3 a runtime error such as a
store held by another process or a failing model endpoint; 130 interrupted
(Ctrl-C).

Every command and group takes ``--config FILE``, ``--set NAME=VALUE`` and
``--store DIR`` (:func:`settings_options`); a command receives the resulting
:class:`InsituContext` as ``ctx.obj`` (``@click.pass_obj``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from insitu import __version__
from insitu.context import InsituContext, SettingError, default_value, describe_settings
from insitu.settings_sources import (
    DEFAULT_SOURCE,
    LoadedSettings,
    Override,
    load_settings,
    parse_assignment,
)

if TYPE_CHECKING:
    from insitu.llm import ModelEndpointError

EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG, EXIT_RUNTIME = 0, 1, 2, 3
#: The shell's code for a process stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

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


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    """Print an error (no stack trace) and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def fail_configuration(exc: Exception) -> NoReturn:
    """Exit 2 with a configuration error; "no endpoint" names this command's ``--scripted``."""
    from insitu.services import NO_ENDPOINT_MESSAGE, no_endpoint_message

    command = click.get_current_context().command_path
    offline = f"add --scripted to `{command}` for an offline run with the scripted test model"
    fail(str(exc).replace(NO_ENDPOINT_MESSAGE, no_endpoint_message(offline)), EXIT_CONFIG)


def fail_model_endpoint(exc: ModelEndpointError) -> NoReturn:
    """Exit 3 with a model endpoint failure in one line.

    The line of an :class:`~insitu.evolve.EndpointOutageError` (a run stopped
    after tasks in a row failed on the endpoint) says how to resume.
    """
    fail(exc.one_line(), EXIT_RUNTIME)


@contextmanager
def interruptible(resume: str = "run the same command to resume") -> Iterator[None]:
    """Turn Ctrl-C into one line and exit code 130 instead of a stack trace.

    The first Ctrl-C stops the work as Python does: the episodes already
    running finish (their results are kept), which can take minutes, so it says
    so at once. A second Ctrl-C exits at once, as a kill would (every run
    resumes after one).

    Args:
        resume: How to go on, after "interrupted; ".
    """
    message = f"interrupted; {resume}"
    interrupts = 0

    def on_interrupt(_signum: int, _frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            err.print(
                "stopping: the running work finishes first (Ctrl-C again to stop at once)",
                highlight=False,
                markup=False,
            )
            raise KeyboardInterrupt
        err.print(message, highlight=False, markup=False, soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    # Signal handlers can only be set from the main thread (not, say, a CLI run in a worker).
    handling = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if handling else None
    try:
        yield
    except KeyboardInterrupt:
        err.print(message, highlight=False, markup=False, soft_wrap=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if handling:
            signal.signal(signal.SIGINT, previous or signal.default_int_handler)


# ---------------------------------------------------------------- settings options

_INPUTS = "insitu.settings_inputs"
_LOADED = "insitu.settings"


@dataclass
class _SettingsInputs:
    """What the command line says about settings, the group's and the command's options together.

    Attributes:
        config: ``--config FILE`` (a subcommand's replaces the group's).
        given: ``(option, text)`` of each ``--set`` and ``--store``, in the order given.
    """

    config: str | None = None
    given: list[tuple[str, str]] = field(default_factory=list)

    def overrides(self) -> list[Override]:
        """The settings given on the command line.

        Raises:
            SettingError: A ``--set`` that is not NAME=VALUE for a known setting.
        """
        return [
            parse_assignment(text) if option == "--set" else Override("store_dir", text, option)
            for option, text in self.given
        ]


def _inputs(ctx: click.Context) -> _SettingsInputs:
    # ctx.meta is shared by a group's context and its subcommands' contexts.
    return ctx.meta.setdefault(_INPUTS, _SettingsInputs())


def _take_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _inputs(ctx).config = value


def _take_assignments(ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> None:
    _inputs(ctx).given.extend(("--set", text) for text in values)


def _take_store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _inputs(ctx).given.append(("--store", value))


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command or group ``--config``, ``--set`` and ``--store``.

    The options of a group and of its subcommand add up (``insitu --set a=1 run
    --set b=2``); when a command (not a group) runs, the settings are built from
    every source (:func:`insitu.settings_sources.load_settings`) and put in
    ``ctx.obj``. A bad value exits 2 with one line saying what is expected.
    """

    @functools.wraps(command)
    def with_settings(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if not isinstance(ctx.command, click.Group):
            inputs = _inputs(ctx)
            try:
                loaded = load_settings(config=inputs.config, overrides=inputs.overrides())
            except SettingError as exc:
                fail(str(exc), EXIT_CONFIG)
            ctx.meta[_LOADED] = loaded
            ctx.obj = loaded.context
        return command(*args, **kwargs)

    options = (
        click.option(
            "--config",
            type=click.Path(dir_okay=False),
            expose_value=False,
            callback=_take_config,
            help="TOML file of settings (default: ./insitu.toml if there is one).",
        ),
        click.option(
            "--set",
            "assignments",
            metavar="NAME=VALUE",
            multiple=True,
            expose_value=False,
            callback=_take_assignments,
            help="Set any setting, e.g. --set max_rounds=5 (repeatable; see `insitu settings`).",
        ),
        click.option(
            "--store",
            type=click.Path(file_okay=False),
            expose_value=False,
            callback=_take_store,
            help="Tool library directory (the store_dir setting; default ./.insitu).",
        ),
    )
    for option in reversed(options):
        with_settings = option(with_settings)
    return with_settings


def loaded_settings() -> LoadedSettings:
    """The settings of the running command with the source of each value."""
    return click.get_current_context().meta[_LOADED]


def setting_given(name: str) -> bool:
    """Whether the running command's setting ``name`` was set anywhere (not its default)."""
    return loaded_settings().sources[name] != DEFAULT_SOURCE


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insitu")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@settings_options
def main(verbose: bool) -> None:
    """insitu: self-evolving, tool-first agents that write, verify and reuse their own tools.

    Settings come from --set and flags, else the environment (INSITU_<NAME>), else
    a config file (--config FILE or ./insitu.toml), else defaults; `insitu settings`
    shows them and where each came from.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


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
    with opened_store(settings, read_only=False) as store:
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
    """Rebuild the retrieval index from the tool records."""
    with opened_store(settings, read_only=False, embedding=embedding) as store:
        count = store.reindex()
        say(f"reindexed {count} tool(s) with the {store.embedding_name} embedding")


@main.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@settings_options
def show_settings(as_json: bool) -> None:
    """Print every setting: its value, where it came from, and what it does.

    A value comes from `default`, the config file (its name), the environment
    (`env INSITU_X`), `--set` or a flag such as `--store`; `--set` and flags win
    over the environment, which wins over the config file.
    """
    loaded = loaded_settings()
    rows = [
        (name, getattr(loaded.context, name), loaded.sources[name], description)
        for name, _default, description in describe_settings()
    ]
    if as_json:
        report = {
            name: {"value": value, "source": source, "default": default_value(name)}
            for name, value, source, _description in rows
        }
        say(json.dumps(report, indent=2))
        return
    table = Table(title="settings (InsituContext)", title_justify="left")
    for column in ("name", "value", "source", "description"):
        table.add_column(column, overflow="fold")
    for name, value, source, description in rows:
        table.add_row(*map(_cell, (name, repr(value), source, description)))
    out.print(table)
    say(sandbox_line(loaded.context))


def sandbox_line(settings: InsituContext) -> str:
    """One read-only line: the sandbox backend these settings give here, and its isolation."""
    from insitu.sandbox import probe_backend
    from insitu.sandbox.backend import choose_backend

    choice = choose_backend(
        settings.sandbox_backend, settings.allow_degraded_sandbox, probe_backend()
    )
    line = f"sandbox (probed here, read-only): {choice.backend}, isolation {choice.isolation}"
    return f"{line}; no tool will run: {choice.problem}" if choice.problem else line


def _register_commands() -> None:
    """Attach the commands that live in their own modules (they import this one)."""
    from insitu.cli_doctor import doctor
    from insitu.cli_episode import demo, run
    from insitu.cli_eval import eval_group
    from insitu.cli_evolve import evolve_command
    from insitu.cli_mcp import mcp_group, tools_add_mcp
    from insitu.cli_report import report
    from insitu.cli_review import tools_approve, tools_pending, tools_reject
    from insitu.cli_studio import scripted_endpoint

    for command in (run, demo, evolve_command, report, eval_group, doctor, scripted_endpoint):
        main.add_command(command)
    main.add_command(mcp_group)
    for command in (tools_pending, tools_approve, tools_reject, tools_add_mcp):
        tools.add_command(command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
