"""Tools of external MCP servers kept in the library, and how they are called.

``insitu tools add-mcp NAME -- COMMAND ...`` (or ``--url URL``) lists the tools
an MCP server offers and keeps each one as a library record, so that the
Manager retrieves it like any tool (it is indexed with its description) and
the Executor binds it like any tool. Such a tool runs in its own server, never
in the sandbox: the Executor calls it through the MCP client of
``langchain-mcp-adapters`` (:func:`as_mcp_tool`), and ``insitu mcp serve``
proxies it the same way.

**Versions.** The client is the official ``mcp`` SDK, version 1 (``>=1.24,<2``),
which is what ``langchain-mcp-adapters`` 0.3 supports; both are in the ``mcp``
extra.

**The record.** A registered tool is an ordinary :class:`ToolRecord` with
origin ``"mcp"``, locked (automated repair, merging and archiving leave it
alone), no tests, the server's input and output schemas, and as its source a
small *stub* module: ``__TOOL_META__`` plus a literal ``__MCP_TOOL__`` dict
naming the server (``NAME``), the remote tool name and the connection (the
command, its arguments and working directory, and the names of environment
variables passed to it; or the URL). The stub's ``run`` only raises. Keeping
the connection in the source means the content hash covers it: a changed
command, URL, schema or description becomes a new version, with history, and
no new field or table is needed. Only records of origin ``"mcp"`` are ever
called this way, so a generated tool cannot make the Executor start a
program outside the sandbox by writing an ``__MCP_TOOL__`` literal.

**Names.** A library name is ``<server>_<tool>`` in snake case
(``calc`` + ``addNumbers`` -> ``calc_add_numbers``), which satisfies the
verb_object naming rule and keeps two servers' tools apart.

**Refreshing.** Registering the same server name again updates its tools:
new tools are added, changed ones get a new version, unchanged ones stay,
tools the server no longer offers are archived (and restored if they come
back), in one commit.

**Calls.** Each call opens a session with the server (for a stdio server: it
starts the process), calls the tool and closes the session. That costs a
server start per call but holds no process or connection between calls, so
nothing has to be cleaned up when a graph run ends or is interrupted. The
session is the SDK's ``ClientSession`` over its stdio or streamable HTTP
transport, opened here so that a stdio server's stderr is kept for the error
message instead of spilling onto the terminal; the call itself goes through
the tool that ``langchain_mcp_adapters.tools.convert_mcp_tool_to_langchain_tool``
makes of the record (:func:`adapter_tool`). The result is an
:class:`~insitu.sandbox.Outcome`: the tool's structured content (or its text,
parsed as JSON when it is JSON) on success, ``exception`` with the tool's
message for an error result, ``timeout`` when the server does not answer in
time, ``crash`` when it cannot be started or reached (or the call fails in the
client in any other way).
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from insitu.tool_store.contract import (
    MAX_DESCRIPTION_CHARS,
    SECRET_NAME_PATTERN,
    TOOL_NAME_PATTERN,
    ToolRecord,
    ToolSpec,
)

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool, StructuredTool

    from insitu.sandbox import Outcome
    from insitu.tool_store.store import ToolStore

#: The origin of a record registered from an MCP server.
MCP_ORIGIN = "mcp"
#: The module-level literal of a stub that names the server and the remote tool.
BINDING_VARIABLE = "__MCP_TOOL__"
#: A server name: lower-case snake case words, the prefix of its tools' names.
SERVER_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
#: Seconds allowed for starting (or reaching) a server and the MCP handshake.
CONNECT_TIMEOUT_S = 30.0
#: Characters of a server's stderr quoted when it cannot be started.
STDERR_TAIL_CHARS = 600
#: Error codes of a request the client session stopped waiting for: the SDK 1.x's own
#: (HTTP's 408) and the JSON-RPC one other SDKs use.
REQUEST_TIMEOUT_CODES = frozenset({408, -32001})
MISSING_SDK = (
    "MCP support is not installed: pip install 'insitu[mcp]' (the `mcp` SDK, version 1, "
    "and langchain-mcp-adapters)"
)

T = TypeVar("T")


class McpToolError(Exception):
    """An MCP server could not be registered or reached; the message is one line."""


class McpNameClashError(McpToolError):
    """A server's tool would take the name of a library tool that is not this server's."""


class McpConnection(BaseModel):
    """How to reach an MCP server: a command to start (stdio) or a URL (streamable HTTP)."""

    model_config = ConfigDict(extra="forbid")

    transport: Literal["stdio", "http"]
    command: str | None = Field(default=None, description="stdio: the program to start.")
    args: list[str] = Field(default_factory=list, description="stdio: its arguments.")
    cwd: str | None = Field(default=None, description="stdio: its working directory.")
    env: list[str] = Field(
        default_factory=list,
        description="stdio: names of environment variables passed to it (values are read "
        "when it starts, never stored).",
    )
    url: str | None = Field(default=None, description="http: the server's MCP endpoint.")

    @classmethod
    def stdio(
        cls,
        command: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Sequence[str] = (),
    ) -> McpConnection:
        """A server started as ``command`` and spoken to over its stdin and stdout.

        Args:
            command: The program and its arguments.
            cwd: Its working directory (default: the current one, made absolute so
                that relative paths in ``command`` keep working from anywhere).
            env: Names of environment variables to pass to it.

        Raises:
            McpToolError: An empty command or an invalid variable name.
        """
        if not command or not str(command[0]).strip():
            raise McpToolError("the MCP server command is empty; give it after `--`")
        bad = [name for name in env if not SECRET_NAME_PATTERN.match(name)]
        if bad:
            raise McpToolError(
                f"--env takes environment variable names in upper case (e.g. WEATHER_API_KEY), "
                f"not {', '.join(map(repr, bad))}"
            )
        return cls(
            transport="stdio",
            command=str(command[0]),
            args=[str(a) for a in command[1:]],
            cwd=str(Path(cwd or os.getcwd()).resolve()),
            env=list(dict.fromkeys(env)),
        )

    @classmethod
    def http(cls, url: str) -> McpConnection:
        """A server reached over streamable HTTP at ``url``.

        Raises:
            McpToolError: Not an http(s) URL.
        """
        if not re.match(r"^https?://[^\s/]+", url or ""):
            raise McpToolError(f"--url must be an http:// or https:// URL, not {url!r}")
        return cls(transport="http", url=url)

    def describe(self) -> str:
        """One line saying where the server is, for messages and ``tools show``."""
        if self.transport == "http":
            return f"streamable HTTP at {self.url}"
        words = " ".join([self.command or "", *self.args]).strip()
        env = f"; passes {', '.join(self.env)}" if self.env else ""
        return f"stdio: `{words}` in {self.cwd}{env}"


class McpBinding(BaseModel):
    """What a stub records: the server's name, the remote tool's name and the connection."""

    model_config = ConfigDict(extra="forbid")

    server: str
    tool: str
    connection: McpConnection


# --------------------------------------------------------------------------- records


def mcp_binding(record: ToolSpec) -> McpBinding | None:
    """The MCP server behind a record, or ``None`` for a tool that runs in the sandbox.

    Only records of origin ``"mcp"`` (written by :func:`register_mcp_server`)
    count; the binding is read from the stub's literal, never by running it.

    Args:
        record: A library record (a plain spec has no origin and is never an MCP tool).
    """
    if getattr(record, "origin", None) != MCP_ORIGIN or BINDING_VARIABLE not in record.source:
        return None
    try:
        tree = ast.parse(record.source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == BINDING_VARIABLE for t in node.targets
        ):
            try:
                return McpBinding.model_validate(ast.literal_eval(node.value))
            except (ValueError, ValidationError):
                return None
    return None


def runs_where(record: ToolSpec) -> str | None:
    """For an MCP tool, one line saying that it runs in its server, not in the sandbox."""
    binding = mcp_binding(record)
    if binding is None:
        return None
    return (
        f"runs outside the sandbox, as tool {binding.tool!r} of the MCP server "
        f"{binding.server!r} ({binding.connection.describe()})"
    )


def library_name(server: str, tool: str) -> str:
    """The library name of a server's tool: ``<server>_<tool>`` in snake case."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", tool)
    words = re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")
    return f"{server}_{words}" if words else ""


def _one_paragraph(text: str | None, fallback: str) -> str:
    flat = " ".join((text or "").split()) or fallback
    if len(flat) > MAX_DESCRIPTION_CHARS:
        flat = flat[: MAX_DESCRIPTION_CHARS - 1].rstrip() + "…"
    return flat


def _literal(value: dict[str, Any]) -> str:
    """A dict as a Python literal, one key per line (read back with ``ast.literal_eval``)."""
    return "{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in value.items()) + "}"


def stub_source(name: str, description: str, binding: McpBinding) -> str:
    """The stub module kept as an MCP tool's source (see the module docstring).

    It is a valid tool module (it passes the static contract checks), so every
    part of the library that reads sources keeps working; its ``run`` raises.
    """
    meta = {"name": name, "description": description, "dependencies": []}
    literal = binding.model_dump(mode="json")
    return (
        f'"""Stub of {name}: the tool {binding.tool!r} of the external MCP server '
        f"{binding.server!r}.\n\n"
        "Registered by `insitu tools add-mcp`. insitu never runs this module: the tool runs in\n"
        f"the MCP server that {BINDING_VARIABLE} names, called through an MCP client session,\n"
        'outside the sandbox.\n"""\n\n'
        f"__TOOL_META__ = {_literal(meta)}\n\n"
        f"{BINDING_VARIABLE} = {_literal(literal)}\n\n\n"
        "def run(arguments: dict) -> dict:\n"
        "    raise RuntimeError(\n"
        f"        {f'{name} runs in the MCP server {binding.server!r}, not in the sandbox'!r}\n"
        "    )\n"
    )


def _object_schema(schema: Any) -> dict[str, Any]:
    schema = dict(schema) if isinstance(schema, dict) else {}
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


def tool_spec(server: str, remote: Any, connection: McpConnection) -> ToolSpec:
    """The library spec of one tool a server lists (an ``mcp.types.Tool``).

    Raises:
        McpToolError: Its name gives no valid library name.
    """
    name = library_name(server, remote.name)
    if not TOOL_NAME_PATTERN.match(name):
        raise McpToolError(
            f"the MCP tool {remote.name!r} gives no usable library name ({name!r}); "
            "rename it on the server"
        )
    description = _one_paragraph(
        remote.description, f"Calls the tool {remote.name} of the MCP server {server}."
    )
    binding = McpBinding(server=server, tool=remote.name, connection=connection)
    output = remote.outputSchema if isinstance(remote.outputSchema, dict) else {}
    return ToolSpec(
        name=name,
        description=description,
        source=stub_source(name, description, binding),
        input_schema=_object_schema(remote.inputSchema),
        output_schema=dict(output),
        network=connection.transport == "http",
    )


# --------------------------------------------------------------------------- client


def run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    """Run an async function to completion from synchronous code.

    In a thread with a running event loop (an async caller), it runs in a
    fresh thread of its own, since a loop cannot be nested.
    """
    import anyio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(factory)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="insitu-mcp") as pool:
        return pool.submit(anyio.run, factory).result()


@contextlib.asynccontextmanager
async def open_session(connection: McpConnection, errlog: IO[str]) -> AsyncIterator[Any]:
    """An initialised ``mcp.ClientSession`` with the server (started here, for stdio).

    Args:
        connection: Where the server is.
        errlog: Receives a stdio server's stderr (a real file).

    Yields:
        The session, closed (and a stdio server stopped) on exit.
    """
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.client.streamable_http import streamable_http_client

    async with contextlib.AsyncExitStack() as stack:
        if connection.transport == "stdio":
            params = StdioServerParameters(
                command=connection.command or "",
                args=connection.args,
                env={n: os.environ[n] for n in connection.env if n in os.environ},
                cwd=connection.cwd,
            )
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        else:
            read, write, _session_id = await stack.enter_async_context(
                streamable_http_client(connection.url or "")
            )
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The errors inside (possibly nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    return next(_leaves(exc), exc)


def _is_timeout(exc: BaseException) -> bool:
    """Whether a deadline passed: ours, or the session's wait for an answer."""
    from mcp.shared.exceptions import McpError

    for leaf in _leaves(exc):
        if isinstance(leaf, TimeoutError):
            return True
        if isinstance(leaf, McpError) and leaf.error.code in REQUEST_TIMEOUT_CODES:
            return True
    return False


def _error_text(exc: BaseException) -> str:
    leaf = _leaf(exc)
    text = " ".join(str(leaf).split())
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


def _stderr_tail(errlog: IO[str]) -> str:
    with contextlib.suppress(OSError, ValueError):
        errlog.flush()
        errlog.seek(0)
        text = " ".join(errlog.read().split())
        return text[-STDERR_TAIL_CHARS:]
    return ""


def _failure_message(
    connection: McpConnection, server: str, exc: BaseException, errlog: IO[str]
) -> str:
    if isinstance(_leaf(exc), ImportError):
        return f"cannot call the MCP server {server!r}: {MISSING_SDK}"
    message = f"the MCP server {server!r} ({connection.describe()}) failed: {_error_text(exc)}"
    tail = _stderr_tail(errlog)
    return message + (f"; its stderr ends with: {tail}" if tail else "")


async def list_remote_tools(
    connection: McpConnection, *, server: str, timeout_s: float = CONNECT_TIMEOUT_S
) -> list[Any]:
    """The tools a server offers (every page of ``tools/list``), as ``mcp.types.Tool``.

    They are listed with the SDK's client session rather than
    ``langchain_mcp_adapters.tools.load_mcp_tools``, whose LangChain tools do
    not keep the output schemas that the library records.

    Raises:
        McpToolError: The server could not be started, reached or listed in time.
    """
    import anyio

    tools: list[Any] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        try:
            with anyio.fail_after(timeout_s):
                async with open_session(connection, errlog) as session:
                    from mcp.types import PaginatedRequestParams

                    cursor: str | None = None
                    while True:
                        params = PaginatedRequestParams(cursor=cursor) if cursor else None
                        page = await session.list_tools(params=params)
                        tools.extend(page.tools)
                        cursor = page.nextCursor
                        if not cursor:
                            break
        except Exception as exc:
            if isinstance(_leaf(exc), TimeoutError):
                raise McpToolError(
                    f"the MCP server {server!r} ({connection.describe()}) did not list its "
                    f"tools within {timeout_s:g} s"
                ) from None
            raise McpToolError(_failure_message(connection, server, exc, errlog)) from None
    return tools


def adapter_tool(
    session: Any,
    binding: McpBinding,
    *,
    input_schema: dict[str, Any] | None = None,
    description: str | None = None,
) -> BaseTool:
    """The ``langchain-mcp-adapters`` tool that calls ``binding``'s tool in ``session``.

    Built from the library's record (the remote name, its input schema and
    description) instead of a fresh ``tools/list``, so a call costs no extra
    round trip. An error result raises :class:`langchain_core.tools.ToolException`
    (``handle_tool_errors=False``), so that it is told apart from a success.

    Args:
        session: An initialised ``mcp.ClientSession`` with the tool's server.
        binding: The server and the tool.
        input_schema: The tool's input schema (default: any object).
        description: The tool's description.
    """
    from langchain_mcp_adapters.tools import convert_mcp_tool_to_langchain_tool
    from mcp.types import Tool

    remote = Tool(
        name=binding.tool,
        description=description,
        inputSchema=_object_schema(input_schema),
    )
    return convert_mcp_tool_to_langchain_tool(
        session, remote, server_name=binding.server, handle_tool_errors=False
    )


def _output_of(message: Any) -> dict[str, Any]:
    """An adapter tool's successful ``ToolMessage`` as a JSON-able dict, as sandboxed tools return.

    The tool's structured content (the message's artifact) when it has some,
    else its text, parsed as JSON when it is JSON.
    """
    artifact = message.artifact if isinstance(message.artifact, dict) else {}
    if artifact.get("structured_content") is not None:
        value = artifact["structured_content"]
    else:
        blocks = message.content if isinstance(message.content, list) else [message.content]
        parts: list[Any] = []
        for block in blocks:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(block.get("text", ""))
            else:  # images, files: described, not inlined
                kind = block.get("type", "content") if isinstance(block, dict) else "content"
                parts.append({"type": kind, "omitted": True})
        if len(parts) == 1 and isinstance(parts[0], str):
            try:
                value = json.loads(parts[0])
            except ValueError:
                value = parts[0]
        else:
            value = parts
    return value if isinstance(value, dict) else {"result": value}


async def call_remote_tool(
    binding: McpBinding,
    arguments: dict[str, Any],
    *,
    timeout_s: float,
    input_schema: dict[str, Any] | None = None,
) -> Outcome:
    """Call a server's tool once, in a session of its own, through the adapters; never raises.

    Args:
        binding: The server and the tool.
        arguments: The tool's input.
        timeout_s: Seconds the call may take once the session is open.
        input_schema: The tool's input schema, as the library keeps it.

    Returns:
        The outcome, shaped as a sandboxed call's (see the module docstring).
    """
    import anyio
    from langchain_core.tools import ToolException

    from insitu.sandbox import ErrorKind, Outcome

    started = time.perf_counter()

    def elapsed() -> float:
        return (time.perf_counter() - started) * 1000

    connection = binding.connection
    message: Any = None
    error: str | None = None
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S + timeout_s):
                async with open_session(connection, errlog) as session:
                    tool = adapter_tool(session, binding, input_schema=input_schema)
                    call = {"type": "tool_call", "id": "mcp", "name": tool.name, "args": arguments}
                    try:
                        with anyio.fail_after(timeout_s):
                            message = await tool.ainvoke(call)
                    except ToolException as exc:  # the tool's error result
                        error = " ".join(str(exc).split()) or "the tool reported an error"
        except Exception as exc:
            if _is_timeout(exc):
                return Outcome.failure(
                    ErrorKind.TIMEOUT,
                    f"the MCP server {binding.server!r} did not answer in time ({timeout_s:g} s "
                    f"for the call, {CONNECT_TIMEOUT_S:g} s to start and connect)",
                    elapsed(),
                )
            message_text = _failure_message(connection, binding.server, exc, errlog)
            return Outcome.failure(ErrorKind.CRASH, message_text, elapsed())
    if error is not None:
        return Outcome.failure(ErrorKind.EXCEPTION, error, elapsed())
    return Outcome(ok=True, kind=ErrorKind.OK, output=_output_of(message), duration_ms=elapsed())


def as_mcp_tool(
    record: ToolRecord,
    *,
    timeout_s: float,
    max_output_chars: int = 4000,
    on_call: Callable[[dict[str, Any], Outcome, str], None] | None = None,
) -> StructuredTool:
    """Wrap an MCP tool's record as a LangChain tool that calls its server.

    The counterpart of :func:`insitu.tool_store.adapter.as_structured_tool`:
    same schema, same text for the model, same ``on_call`` callback, but the
    call goes to the MCP server, through ``langchain-mcp-adapters``
    (:func:`call_remote_tool`), instead of the sandbox.

    Args:
        record: A record of origin ``"mcp"``.
        timeout_s: Seconds a call may take once the session is open.
        max_output_chars: Truncation limit of the text returned to the model.
        on_call: Called with (args, outcome, rendered text) after every call.

    Raises:
        ValueError: The record is not an MCP tool.
    """
    from langchain_core.tools import StructuredTool

    from insitu.tool_store.adapter import render_outcome

    binding = mcp_binding(record)
    if binding is None:
        raise ValueError(f"{record.name} is not a tool of an MCP server")
    input_schema = dict(record.input_schema)

    def finish(arguments: dict[str, Any], outcome: Outcome) -> str:
        text = render_outcome(outcome, max_output_chars)
        if on_call is not None:
            on_call(arguments, outcome, text)
        return text

    async def remote(arguments: dict[str, Any]) -> Outcome:
        return await call_remote_tool(
            binding, arguments, timeout_s=timeout_s, input_schema=input_schema
        )

    def call(**kwargs: Any) -> str:
        return finish(kwargs, run_coroutine(lambda: remote(kwargs)))

    async def acall(**kwargs: Any) -> str:
        return finish(kwargs, await remote(kwargs))

    schema = _object_schema(record.input_schema)
    schema["title"] = record.name
    schema.setdefault("description", record.description)
    return StructuredTool.from_function(
        func=call,
        coroutine=acall,
        name=record.name,
        description=record.description,
        args_schema=schema,
    )


# --------------------------------------------------------------------------- registering


@dataclass
class McpRegistration:
    """What registering a server changed in the library, by library name."""

    server: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the counts of each kind of change."""
        parts = [
            f"{len(self.added)} added",
            f"{len(self.updated)} updated",
            f"{len(self.unchanged)} unchanged",
        ]
        if self.restored:
            parts.append(f"{len(self.restored)} restored")
        if self.archived:
            parts.append(f"{len(self.archived)} archived (no longer offered)")
        return f"MCP server {self.server!r}: " + ", ".join(parts)


def check_server_name(server: str) -> None:
    """Raise :class:`McpToolError` unless ``server`` is a usable server name."""
    if not SERVER_NAME_PATTERN.match(server or ""):
        raise McpToolError(
            f"server name {server!r} must be lower-case snake case starting with a letter "
            "(e.g. 'weather' or 'files_local'); it prefixes its tools' names"
        )


def server_records(store: ToolStore, server: str) -> dict[str, ToolRecord]:
    """The library's records (active or archived) of a server's tools, by library name."""
    found = {}
    for record in store.list(status="all"):
        binding = mcp_binding(record)
        if binding is not None and binding.server == server:
            found[record.name] = record
    return found


def register_mcp_server(
    store: ToolStore,
    server: str,
    connection: McpConnection,
    *,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> McpRegistration:
    """Keep the tools an MCP server offers as locked library records (or refresh them).

    Everything is checked before anything is written, and the tools are added,
    updated and archived in one commit; a failure leaves the library as it was.

    Args:
        store: The library, open for writing.
        server: The server's name (prefix of its tools' names).
        connection: How to reach it.
        timeout_s: Seconds allowed to start it and list its tools.

    Returns:
        What changed.

    Raises:
        McpToolError: A bad name, an unreachable server, a server without tools,
            or a name clash with a tool that is not this server's.
        StoreError: The library refused the change (nothing is written then).
    """
    from insitu.tool_store.changes import ChangeSet, ToolAdd, ToolArchive, ToolUpdate

    check_server_name(server)
    remote = run_coroutine(
        lambda: list_remote_tools(connection, server=server, timeout_s=timeout_s)
    )
    if not remote:
        raise McpToolError(
            f"the MCP server {server!r} ({connection.describe()}) offers no tools; "
            "nothing was registered"
        )
    specs: dict[str, ToolSpec] = {}
    remote_names: dict[str, str] = {}
    for tool in remote:
        spec = tool_spec(server, tool, connection)
        if spec.name in specs:
            raise McpNameClashError(
                f"the MCP tools {remote_names[spec.name]!r} and {tool.name!r} both become "
                f"{spec.name!r} in the library; rename one on the server"
            )
        specs[spec.name] = spec
        remote_names[spec.name] = tool.name
    ours = server_records(store, server)
    taken = [n for n in specs if n not in ours and store.has(n)]
    if taken:
        raise McpNameClashError(
            f"the library already has tool(s) named {', '.join(taken)} that are not tools of "
            f"the MCP server {server!r}; register the server under another name"
        )
    note = f"MCP server {server!r} ({connection.describe()})"
    registration = McpRegistration(server=server, tools=remote_names)
    changes = ChangeSet()
    for name, spec in specs.items():
        if name not in ours:
            changes.changes.append(ToolAdd(spec=spec, origin=MCP_ORIGIN, note=note))
            registration.added.append(name)
        elif ours[name].hash == spec.content_hash():
            registration.unchanged.append(name)
        else:
            changes.changes.append(
                ToolUpdate(name=name, spec=spec, origin=MCP_ORIGIN, note=note, force=True)
            )
            registration.updated.append(name)
        if name in ours and ours[name].status == "archived":
            registration.restored.append(name)
    for name, record in ours.items():
        if name not in specs and record.status == "active":
            reason = f"no longer offered by the MCP server {server!r}"
            changes.changes.append(ToolArchive(name=name, reason=reason, force=True))
            registration.archived.append(name)
    # An archived tool that the server offers again is restored first: an archived
    # tool takes no new version. Restoring changes its status only, never content.
    for name in registration.restored:
        store.restore(name)
    if changes.changes:
        store.commit(changes)
    for name in specs:
        if not store.get(name).locked:
            store.lock(name)
    return registration
