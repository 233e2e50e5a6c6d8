"""What every command of the ``insitu`` command line shares.

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
from rich.text import Text

from insitu.context import InsituContext, SettingError
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

    The first Ctrl-C cancels the running episodes (their model requests are
    aborted; what they checkpointed is kept) and waits a few seconds for them
    to unwind, saying so at once. A second Ctrl-C exits at once, as a kill
    would (every run resumes after one).

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
                "stopping: cancelling the running episodes, whose checkpoints are kept "
                "(Ctrl-C again to stop at once)",
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
            # Not file_okay=False: a file there gets the store's own one-line message
            # (exit 3), as it does when $INSITU_STORE or a config file names it.
            type=click.Path(),
            expose_value=False,
            callback=_take_store,
            help="Tool library directory (the store_dir setting; default ./.insitu).",
        ),
    )
    for option in reversed(options):
        with_settings = option(with_settings)
    return with_settings


#: Where ``insitu -v`` is remembered for the running command (``ctx.meta``).
_VERBOSE = "insitu.verbose"


def set_verbose(ctx: click.Context, verbose: bool) -> None:
    """Remember ``-v`` for the commands of this invocation (:func:`verbose`)."""
    ctx.meta[_VERBOSE] = verbose


def verbose() -> bool:
    """Whether ``insitu -v`` asked for per-call detail (model requests, tool calls)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get(_VERBOSE))


def loaded_settings() -> LoadedSettings:
    """The settings of the running command with the source of each value."""
    return click.get_current_context().meta[_LOADED]


def setting_given(name: str) -> bool:
    """Whether the running command's setting ``name`` was set anywhere (not its default)."""
    return loaded_settings().sources[name] != DEFAULT_SOURCE


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
    settings: InsituContext,
    *,
    read_only: bool,
    creates: bool = False,
    embedding: str | None = None,
    **open_options: Any,
) -> Iterator[Any]:
    """Open the settings' store, turning store errors into clear CLI errors.

    The store keeps the embedding it was built with (``embedding=None``): a
    command that only reads or edits a tool must never silently re-embed the
    library. ``$INSITU_EMBEDDING`` (the settings' default) only chooses the
    embedding of a new library; ``tools reindex --embedding`` switches it.
    A store in a damaged or unusable state (read-only for a writer, a file, lost
    records, ...) exits 3 with its one-line message, before anything is created.

    Args:
        settings: The command's settings (``store_dir``, ``chroma_url``, ``records_url``).
        read_only: Open without the writer lock; never writes.
        creates: The command may start a new library (``tools import``, ``tools
            add``); any other command needs one already there and creates nothing.
        embedding: Switch the library to this embedding (``tools reindex``).
        **open_options: Passed to :meth:`ToolStore.open` (``recreate_records``,
            ``rebuild_damaged_index``, ``verify_index``).
    """
    from insitu.tool_store import ToolStore
    from insitu.tool_store.errors import StoreError
    from insitu.tool_store.health import StoreStateError, check_location, check_records_present

    path = Path(settings.store_dir)
    if not creates and not settings.records_url and not (path / "tools.db").is_file():
        try:  # a file, or a library whose records are gone, is not "nothing stored yet"
            check_location(path)
            check_records_present(path)
        except StoreStateError as exc:
            fail(str(exc), EXIT_RUNTIME)
        fail(
            f"no tool library at {path}: nothing has been stored there yet. Point to a library "
            "with --store DIR or $INSITU_STORE.",
            EXIT_CONFIG,
        )
    try:
        store = ToolStore.open(
            path,
            embedding=embedding,
            chroma_url=settings.chroma_url,
            records_url=settings.records_url,
            read_only=read_only,
            **open_options,
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


def cell(value: Any) -> Text:
    """A table cell shown literally (tool text may contain ``[...]``, never markup)."""
    return Text(str(value))


def say(message: str) -> None:
    """Print one line of plain text: no markup, no highlighting, no hard wrapping."""
    out.print(message, highlight=False, markup=False, soft_wrap=True)


def sandbox_line(settings: InsituContext) -> str:
    """One read-only line: the sandbox backend these settings give here, and its isolation."""
    from insitu.sandbox import probe_backend
    from insitu.sandbox.backend import choose_backend

    choice = choose_backend(
        settings.sandbox_backend, settings.allow_degraded_sandbox, probe_backend()
    )
    line = f"sandbox (probed here, read-only): {choice.backend}, isolation {choice.isolation}"
    return f"{line}; no tool will run: {choice.problem}" if choice.problem else line
