"""``insitu mcp serve``: the library's active tools as an MCP server.

Any MCP client (an IDE, a desktop assistant, another agent) can list and call
the tools the team wrote, over stdio or streamable HTTP, with the official
``mcp`` SDK's low-level server (``mcp.server.lowlevel.Server``, SDK version 1:
the version ``langchain-mcp-adapters`` supports). Over HTTP it is the SDK's
``StreamableHTTPSessionManager`` at ``/mcp`` in a Starlette app under uvicorn.

**Always current.** Every ``tools/list`` and ``tools/call`` reads the library,
so a tool that ``insitu evolve`` (or anyone) adds, repairs, merges or archives
while the server runs is listed, called at its new version, or gone at the
next request, without a restart.

**Read-only, beside a writer.** The store is single-writer: in local mode the
writer holds ``store.lock`` for as long as it runs (``insitu evolve`` for
hours). The server therefore opens the library read-only (no lock, never
writes) and never blocks or is blocked by a writer.

**Calls.** A call runs exactly as the Executor's: a sandboxed tool through
:func:`insitu.tool_store.adapter.as_structured_tool` (the tool's source, its
network flag and its declared secrets, in the same sandbox settings), in the
working directory ``<store>/workspaces/mcp-<session>`` that every call of this
server process shares; a tool of an external MCP server through its MCP client
(:mod:`insitu.tool_store.mcp_tools`). The result is the tool's JSON output, as
text and as structured content; a failure (invalid input, the tool raised,
timed out...) is an MCP tool error (``isError``) with the same message the
Executor's model sees. Nothing a tool does can stop the server.

**Statistics** (:class:`CallStatistics`). Recording a call needs the writer
lock, which a running ``insitu evolve`` holds. So each call is first appended
to a spool file, ``<store>/mcp-calls/<session>.jsonl`` (it survives a crash of
the server), and a background thread moves spooled calls into the library's
statistics (``ToolStore.record_calls``) by opening the store for writing for a
few milliseconds at a time, at most every :data:`FLUSH_INTERVAL_S`. When the
lock is taken it simply tries again later (every :data:`RETRY_INTERVAL_S`):
calls made during an evolve run are counted when it ends, or at the latest by
the next ``insitu mcp serve``, which also takes over spools left by servers
that died. Each call has its own idempotency key, so a spool replayed after a
crash counts nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insitu.tool_store.contract import now_utc

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

    from insitu.context import InsituContext
    from insitu.sandbox import Outcome, Sandbox
    from insitu.tool_store import ToolRecord, ToolStore

log = logging.getLogger("insitu.mcp")

#: Where calls wait to be counted in the statistics, inside the store directory.
SPOOL_DIR = "mcp-calls"
#: Seconds between two flushes of the spool (the writer lock is taken at most this often).
FLUSH_INTERVAL_S = 2.0
#: Seconds between two attempts while another process holds the writer lock.
RETRY_INTERVAL_S = 10.0
#: Seconds a flush waits for the writer lock before leaving the calls for later.
LOCK_WAIT_S = 0.2
#: Longest error text returned to the client.
MAX_ERROR_CHARS = 20_000
SERVER_NAME = "insitu"
#: The path of the streamable HTTP endpoint.
HTTP_PATH = "/mcp"
#: Addresses served with DNS rebinding protection (only loopback Host and Origin
#: headers accepted), as the SDK's own servers do.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------- statistics


class CallStatistics:
    """Counts a server's calls in the library's statistics without holding the writer lock.

    Args:
        store_dir: The library's directory.
        session: This server's id (names its spool file).
        chroma_url: The library's Chroma server, in server mode.
        records_url: The library's PostgreSQL records (``records_url`` setting), if any.
    """

    def __init__(
        self,
        store_dir: Path,
        session: str,
        *,
        chroma_url: str | None = None,
        records_url: str | None = None,
    ) -> None:
        from filelock import FileLock

        self.store_dir = Path(store_dir)
        self.chroma_url = chroma_url
        self.records_url = records_url
        self.directory = self.store_dir / SPOOL_DIR
        self.path = self.directory / f"{session}.jsonl"
        self._owner = FileLock(str(self.path) + ".lock", thread_local=False)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._session = session
        self._warned = False

    def start(self) -> None:
        """Claim this session's spool and start flushing (leftover spools first).

        A library the server cannot write to (a read-only copy) is served without
        statistics, which it says once.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._owner.acquire()
        except OSError as exc:
            self._warned = True  # add() stays silent: said here, once
            log.warning("calls will not be counted in the statistics: %s", exc)
            return
        self._thread = threading.Thread(target=self._run, name="insitu-mcp-stats", daemon=True)
        self._thread.start()
        self._wake.set()

    def add(self, name: str, version: int, ok: bool, error: str | None) -> None:
        """Spool one call; it is counted at the next flush. Never raises."""
        if self._thread is None and self._warned:
            return  # statistics are off (see start)
        with self._lock:
            self._sequence += 1
            entry = {
                "key": f"mcp:{self._session}:{self._sequence}",
                "name": name,
                "version": version,
                "ok": ok,
                "error": None if ok else (error or "failed")[:2000],
                "when": now_utc().isoformat(),
            }
            try:
                with self.path.open("a", encoding="utf-8") as spool:
                    spool.write(json.dumps(entry) + "\n")
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot spool call statistics to %s: %s", self.path, exc)
                return
        self._wake.set()

    def pending(self) -> bool:
        """Whether spooled calls wait to be counted: this server's, or left by a dead one.

        The spools of other running servers do not count: they flush their own.
        """
        from filelock import FileLock, Timeout

        with contextlib.suppress(OSError):
            for path in self.directory.glob("*.jsonl"):
                if path.stat().st_size == 0:
                    continue
                if path == self.path:
                    return True
                owner = FileLock(str(path) + ".lock", timeout=0, thread_local=False)
                try:
                    owner.acquire()
                except Timeout:
                    continue
                owner.release()
                return True
        return False

    def flush(self) -> int:
        """Count every spooled call it can; return how many were counted.

        Takes the writer lock for the duration of the writes only; if another
        process holds it, nothing happens and the calls stay spooled.
        """
        from insitu.tool_store import ToolStore
        from insitu.tool_store.errors import StoreError, StoreLockedError

        if not self.directory.is_dir() or not self.pending():
            return 0
        try:
            store = ToolStore.open(
                self.store_dir,
                chroma_url=self.chroma_url,
                records_url=self.records_url,
                lock_timeout=LOCK_WAIT_S,
                verify_index=False,
            )
        except StoreLockedError:
            log.debug("the library's writer lock is taken; call statistics stay spooled")
            return 0
        except StoreError as exc:
            log.warning("cannot record call statistics now (%s); they stay spooled", exc)
            return 0
        counted = 0
        try:
            counted += self._flush_own(store)
            for path in sorted(self.directory.glob("*.jsonl")):
                if path != self.path:
                    counted += self._flush_orphan(store, path)
        finally:
            store.close()
        return counted

    def _flush_own(self, store: ToolStore) -> int:
        with self._lock:
            lines = _read_lines(self.path)
        counted = _record(store, lines)
        with self._lock:
            # Calls spooled meanwhile were appended after the lines just counted.
            rest = _read_lines(self.path)[len(lines) :]
            if rest:
                self.path.write_text("".join(rest), encoding="utf-8")
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        return counted

    def _flush_orphan(self, store: ToolStore, path: Path) -> int:
        """Count a spool left by a server that is gone (its owner lock is free)."""
        from filelock import FileLock, Timeout

        owner = FileLock(str(path) + ".lock", timeout=0, thread_local=False)
        try:
            owner.acquire()
        except Timeout:
            return 0  # a running server: it flushes its own spool
        try:
            counted = _record(store, _read_lines(path))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            log.info("counted %d call(s) spooled by an earlier server (%s)", counted, path.name)
            return counted
        finally:
            owner.release()
            with contextlib.suppress(OSError):
                Path(str(path) + ".lock").unlink()

    def _run(self) -> None:
        # The first writable open of the store imports Chroma (about a second): do it
        # now, so that the flush at exit is quick (a stdio client may give a server
        # only 2 s to exit after closing its stdin).
        with contextlib.suppress(Exception):
            import chromadb  # noqa: F401
        while not self._stop.is_set():
            self._wake.wait(timeout=RETRY_INTERVAL_S)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a statistics failure must never stop the server
                log.exception("flushing call statistics failed; they stay spooled")
            self._stop.wait(FLUSH_INTERVAL_S)

    def close(self) -> None:
        """Stop the thread, count what can be counted, and release the spool."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception:
            log.exception("flushing call statistics failed; they stay spooled")
        if self.path.exists():
            log.warning(
                "call statistics of this server are still spooled in %s (the library was "
                "locked); the next `insitu mcp serve` counts them",
                self.path,
            )
        if self._owner.is_locked:
            self._owner.release()
            with contextlib.suppress(OSError):
                Path(str(self.path) + ".lock").unlink()


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    # A line cut off by a crash has no newline yet: leave it for the next read.
    return [line for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _record(store: ToolStore, lines: list[str]) -> int:
    """Record spooled calls, each under its own idempotency key."""
    from insitu.tool_store.changes import CallRecord
    from insitu.tool_store.errors import ToolNotFoundError, VersionNotFoundError

    counted = 0
    for line in lines:
        try:
            entry = json.loads(line)
            call = CallRecord(
                name=entry["name"],
                version=entry["version"],
                ok=entry["ok"],
                error=entry["error"],
                when=entry["when"],
            )
            key = str(entry["key"])
        except (ValueError, KeyError, TypeError):
            log.warning("skipping an unreadable spooled call: %r", line[:200])
            continue
        try:
            counted += store.record_calls([call], commit_id=key)
        except (ToolNotFoundError, VersionNotFoundError) as exc:
            log.warning("skipping a spooled call of %s: %s", call.name, exc)
    return counted


# --------------------------------------------------------------------------- calls


def call_in_sandbox(
    record: ToolRecord,
    arguments: dict[str, Any],
    *,
    sandbox: Sandbox,
    workdir: Path,
    timeout_s: float | None,
) -> Outcome:
    """Run one call of a sandboxed library tool exactly as the Executor does.

    The call goes through :func:`insitu.tool_store.adapter.as_structured_tool`
    (the same sandbox call, network flag and secrets), and its outcome is taken
    from the adapter's ``on_call`` report.
    """
    from insitu.sandbox import ErrorKind, Outcome
    from insitu.tool_store.adapter import as_structured_tool

    outcomes: list[Outcome] = []
    tool = as_structured_tool(
        record,
        sandbox=sandbox,
        workdir=workdir,
        on_call=lambda _args, outcome, _text: outcomes.append(outcome),
        timeout_s=timeout_s,
    )
    try:
        tool.invoke(arguments)
    except Exception as exc:  # arguments LangChain cannot pass on
        return Outcome.failure(ErrorKind.INVALID_INPUT, f"invalid arguments: {exc}")
    if not outcomes:
        return Outcome.failure(ErrorKind.SANDBOX, "the call produced no outcome")
    return outcomes[-1]


class LibraryServer:
    """The MCP server over one library: lists its active tools, runs their calls.

    Args:
        store: The library, open read-only.
        settings: The run's settings (sandbox limits, the tool timeout).
        sandbox: Runs the calls of sandboxed tools.
        statistics: Counts the calls (None: not counted).
        session: This server's id (names its working directory).
    """

    def __init__(
        self,
        store: ToolStore,
        settings: InsituContext,
        *,
        sandbox: Sandbox,
        statistics: CallStatistics | None,
        session: str,
    ) -> None:
        self.store = store
        self.settings = settings
        self.sandbox = sandbox
        self.statistics = statistics
        self.workdir = Path(settings.store_dir).resolve() / "workspaces" / f"mcp-{session}"

    def build(self) -> Server:
        """The MCP ``Server`` whose handlers read the library at every request.

        The SDK does not validate a call's arguments against the listed schema
        (``validate_input=False``): the call does, as the Executor's would, so
        the client gets the same ``invalid_input`` message and the call is counted.
        """
        from mcp.server.lowlevel import Server

        from insitu import __version__

        server: Server = Server(
            SERVER_NAME,
            version=__version__,
            instructions="Tools from an insitu tool library; each call runs in a sandbox.",
        )
        server.list_tools()(self._on_list_tools)
        server.call_tool(validate_input=False)(self._on_call_tool)
        logging.getLogger("mcp.server.lowlevel.server").addFilter(_quiet_unlisted_tools)
        return server

    def mcp_tools(self) -> list[Any]:
        """The library's active tools as ``mcp.types.Tool`` (schemas from the contract)."""
        from mcp.types import Tool

        tools = []
        for record in self.store.list("active"):
            output = record.output_schema
            tools.append(
                Tool(
                    name=record.name,
                    description=record.description,
                    inputSchema=_object_schema(record.input_schema),
                    # MCP accepts only object output schemas.
                    outputSchema=dict(output) if output.get("type") == "object" else None,
                )
            )
        return tools

    async def _on_list_tools(self) -> list[Any]:
        import anyio

        return await anyio.to_thread.run_sync(self.mcp_tools)

    async def _on_call_tool(self, name: str, arguments: dict[str, Any] | None) -> Any:
        import anyio

        from insitu.tool_store.errors import StoreError
        from insitu.tool_store.mcp_tools import call_remote_tool, mcp_binding

        arguments = dict(arguments or {})
        try:
            record = await anyio.to_thread.run_sync(self.store.get, name)
        except StoreError as exc:
            return _error_result(f"no tool {name!r} in the library: {exc}")
        if record.status != "active":
            return _error_result(f"the tool {name!r} is archived; list the tools again")
        binding = mcp_binding(record)
        try:
            if binding is not None:
                outcome = await call_remote_tool(
                    binding,
                    arguments,
                    timeout_s=self.settings.tool_timeout_s,
                    input_schema=record.input_schema,
                )
            else:
                outcome = await anyio.to_thread.run_sync(self._call_blocking, record, arguments)
        except Exception as exc:  # our own machinery failed: still an answer, never a crash
            log.exception("calling %s failed", name)
            return _error_result(f"the call of {name!r} failed in insitu: {exc}")
        if self.statistics is not None:
            self.statistics.add(record.name, record.version, outcome.ok, outcome.message)
        return _result_of(outcome)

    def _call_blocking(self, record: ToolRecord, arguments: dict[str, Any]) -> Outcome:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return call_in_sandbox(
            record,
            arguments,
            sandbox=self.sandbox,
            workdir=self.workdir,
            timeout_s=self.settings.tool_timeout_s,
        )

    def close(self) -> None:
        """Remove the working directory if no call left anything in it."""
        with contextlib.suppress(OSError):
            self.workdir.rmdir()


def _quiet_unlisted_tools(record: logging.LogRecord) -> bool:
    """Drop the SDK's warning that a called tool was not listed to this server process yet.

    The SDK keeps the tools of the last ``tools/list`` to validate results; this
    server validates nothing there (it answers with complete results), and an
    unknown tool is already answered as a tool error.
    """
    return not str(record.msg).startswith("Tool '%s' not listed")


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


def _error_result(message: str) -> Any:
    from mcp.types import CallToolResult, TextContent

    return CallToolResult(
        content=[TextContent(type="text", text=message[:MAX_ERROR_CHARS])], isError=True
    )


def _result_of(outcome: Outcome) -> Any:
    from mcp.types import CallToolResult, TextContent

    from insitu.tool_store.adapter import render_outcome

    if not outcome.ok:
        return _error_result(render_outcome(outcome, MAX_ERROR_CHARS))
    text = json.dumps(outcome.output, ensure_ascii=False, default=str)
    structured = outcome.output if isinstance(outcome.output, dict) else None
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structuredContent=structured
    )


# --------------------------------------------------------------------------- serving


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    Raises:
        OSError: The address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def library_server(store: ToolStore, settings: InsituContext) -> Iterator[LibraryServer]:
    """A :class:`LibraryServer` with its sandbox and statistics, closed at the end."""
    from insitu.services import open_sandbox

    session = uuid.uuid4().hex[:12]
    statistics = CallStatistics(
        Path(settings.store_dir),
        session,
        chroma_url=settings.chroma_url,
        records_url=settings.records_url,
    )
    statistics.start()
    server = LibraryServer(
        store,
        settings,
        sandbox=open_sandbox(settings),
        statistics=statistics,
        session=session,
    )
    try:
        yield server
    finally:
        statistics.close()
        server.close()


async def serve_stdio(server: Server) -> None:
    """Serve one client over this process's stdin and stdout until it disconnects."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


class _SessionEndpoint:
    """The ASGI endpoint at ``/mcp``: every request goes to the session manager.

    A class, not a function, so that Starlette passes it the raw ASGI call.
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.manager.handle_request(scope, receive, send)


def http_app(server: Server, host: str) -> Any:
    """The Starlette app serving ``server`` over streamable HTTP at :data:`HTTP_PATH`.

    Each client gets its own session (``Mcp-Session-Id``), run by the SDK's
    ``StreamableHTTPSessionManager`` for as long as the app's lifespan. On a
    loopback ``host`` only loopback ``Host`` and ``Origin`` headers are
    accepted (DNS rebinding protection), as the SDK's own servers do.

    Args:
        server: The MCP server (from :meth:`LibraryServer.build`).
        host: The address the app is served on.
    """
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route

    security = None
    if host in LOOPBACK_HOSTS:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)
    return Starlette(
        routes=[Route(HTTP_PATH, endpoint=_SessionEndpoint(manager))],
        lifespan=lambda _app: manager.run(),
    )


async def serve_http(server: Server, sock: socket.socket, host: str) -> None:
    """Serve streamable HTTP at ``/mcp`` on a bound socket until interrupted."""
    import uvicorn

    config = uvicorn.Config(http_app(server, host), log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


def endpoint_url(sock: socket.socket) -> str:
    """The URL a client connects to for a socket bound by :func:`bind_socket`."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{HTTP_PATH}"
