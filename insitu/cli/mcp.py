"""MCP on the command line: ``insitu mcp serve`` and ``insitu tools add-mcp``.

``insitu mcp serve`` offers the library's active tools to MCP clients
(:mod:`insitu.mcp_server`); ``insitu tools add-mcp`` keeps an external MCP
server's tools in the library (:mod:`insitu.tool_store.mcp_tools`). Both need
the ``mcp`` extra (``pip install 'insitu[mcp]'``).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from insitu.cli.common import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    EXIT_RUNTIME,
    cell,
    err,
    fail,
    opened_store,
    out,
    say,
    settings_options,
)
from insitu.context import InsituContext


def require_sdk() -> None:
    """Exit 2 with what to install when the ``mcp`` SDK or ``langchain-mcp-adapters`` is missing.

    Both come with the ``mcp`` extra: the SDK serves and lists, the adapters
    make the calls of an external server's tools.
    """
    from insitu.tool_store.mcp_tools import MISSING_SDK

    try:
        import langchain_mcp_adapters.tools  # noqa: F401
        import mcp.server.lowlevel  # noqa: F401
    except ImportError:
        fail(MISSING_SDK, EXIT_CONFIG)


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """Serve until Ctrl-C or SIGTERM, then let the shutdown finish.

    SIGTERM (how clients and service managers stop a server) stops serving as
    Ctrl-C does, instead of killing the process before it counts its calls;
    once serving has stopped, a second SIGTERM no longer interrupts that.
    """

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    handling = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if handling else None
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        if handling:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            atexit.register(signal.signal, signal.SIGTERM, previous or signal.SIG_DFL)


@click.group("mcp")
@settings_options
def mcp_group() -> None:
    """Serve the tool library to MCP clients (Model Context Protocol).

    Tools of external MCP servers are added to the library with
    `insitu tools add-mcp`.
    """


@mcp_group.command("serve")
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    help="stdio: one client that starts this command; http: streamable HTTP at /mcp.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="http: the address to listen on (no authentication: keep loopback unless the "
    "network is trusted).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="http: the port (0: any free port, printed at start).",
)
@settings_options
@click.pass_obj
def mcp_serve(settings: InsituContext, transport: str, host: str, port: int) -> None:
    """Serve the library's active tools over MCP until stopped (Ctrl-C).

    Each tool is listed with the input and output schemas of its contract and
    its description. Every call runs in the sandbox exactly as the Executor's
    calls do (a tool of an external MCP server is called in its server), and
    is counted in the tool's statistics. The library is read at every request,
    so tools that `insitu evolve` adds or repairs meanwhile are served at once.
    The server opens it read-only, so it runs beside a writer such as `insitu
    evolve`; calls made meanwhile are counted once the writer's lock is free
    (see docs/quickstart.md, "MCP"). Over http there is no authentication:
    keep --host on loopback unless the network is trusted.

    \b
    Client configuration for stdio:
      {"command": "insitu", "args": ["mcp", "serve", "--store", "/path/to/.insitu"]}
    """
    import anyio

    from insitu.mcp_server import (
        bind_socket,
        endpoint_url,
        library_server,
        serve_http,
        serve_stdio,
    )

    require_sdk()
    sock = None
    if transport == "http":
        try:
            sock = bind_socket(host, port)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_RUNTIME)
    try:
        with (
            opened_store(settings, read_only=True) as store,
            library_server(store, settings) as server,
        ):
            count = store.count("active")
            where = endpoint_url(sock) if sock is not None else "stdio"
            # stderr only: in stdio mode stdout carries the protocol.
            err.print(
                f"insitu MCP server: {count} active tool(s) from {settings.store_dir}, "
                f"serving on {where} (Ctrl-C stops)",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            app = server.build()
            with stopped_by_sigterm():
                if sock is not None:
                    anyio.run(serve_http, app, sock, host)
                else:
                    anyio.run(serve_stdio, app)
    finally:
        if sock is not None:
            sock.close()


@click.command("add-mcp")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND [ARGS]...]")
@click.option("--url", default=None, help="The server's streamable HTTP endpoint instead.")
@click.option(
    "--env",
    "env_names",
    multiple=True,
    metavar="NAME",
    help="Pass this environment variable to a stdio server (repeatable; its value is read "
    "whenever the server starts, never stored).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds allowed to start the server and list its tools.",
)
@settings_options
@click.pass_obj
def tools_add_mcp(
    settings: InsituContext,
    name: str,
    command: tuple[str, ...],
    url: str | None,
    env_names: tuple[str, ...],
    timeout: float,
) -> None:
    """Keep the tools of an external MCP server in the library.

    \b
      insitu tools add-mcp NAME -- COMMAND [ARGS]...   a server started over stdio
      insitu tools add-mcp NAME --url URL               a streamable HTTP server

    Each tool the server offers becomes the library tool NAME_<tool>, with the
    server's description (the Manager retrieves it like any tool) and input
    schema, locked so that repair and merging never change it. It runs in its
    server, not in the sandbox: the Executor calls it through an MCP client
    (langchain-mcp-adapters), starting a stdio server for each call in the
    directory this command ran in.
    Running the command again for the same NAME refreshes the tools: changed
    ones get a new version, tools the server no longer offers are archived.
    """
    from insitu.tool_store.mcp_tools import (
        McpConnection,
        McpNameClashError,
        McpToolError,
        check_server_name,
        register_mcp_server,
    )

    require_sdk()
    try:
        check_server_name(name)
        if bool(command) == bool(url):
            raise McpToolError(
                "give either the server's command after `--` (stdio) or --url URL, not both"
                if command
                else "give the server's command after `--` (e.g. `-- python server.py`) or "
                "--url URL"
            )
        if url is not None:
            if env_names:
                raise McpToolError("--env is for a server started over stdio, not --url")
            connection = McpConnection.http(url)
        else:
            connection = McpConnection.stdio(command, env=env_names)
    except McpToolError as exc:
        fail(str(exc), EXIT_CONFIG)
    with opened_store(settings, read_only=False, creates=True) as store:
        try:
            registration = register_mcp_server(store, name, connection, timeout_s=timeout)
        except McpNameClashError as exc:
            fail(str(exc), EXIT_INCOMPLETE)
        except McpToolError as exc:
            fail(str(exc), EXIT_RUNTIME)
        changes = {
            **dict.fromkeys(registration.unchanged, "unchanged"),
            **dict.fromkeys(registration.updated, "updated"),
            **dict.fromkeys(registration.added, "added"),
        }
        for restored in registration.restored:
            changes[restored] += ", restored"
        table = Table(
            title=escape(f"tools of the MCP server {name!r} ({connection.describe()})"),
            title_justify="left",
        )
        for column in ("library name", "server's tool", "change"):
            table.add_column(column, overflow="fold")
        for library, remote in sorted(registration.tools.items()):
            table.add_row(*map(cell, (library, remote, changes.get(library, ""))))
        for archived in registration.archived:
            table.add_row(*map(cell, (archived, "-", "archived (no longer offered)")))
        out.print(table)
        say(registration.summary() + "; locked, they run in the server, not in the sandbox")
