"""MCP both ways: the library served to MCP clients, and external MCP servers' tools in it.

Everything is real: the official ``mcp`` SDK's client and servers (version 1,
over stdio and streamable HTTP on loopback), ``langchain-mcp-adapters`` for the
Executor's calls, ``python -m insitu``, the store, the sandbox and the episode
graph. Only the chat model is a scripted test double.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from insitu.api import run_task
from insitu.cli import main
from insitu.cli.common import EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_RUNTIME
from insitu.mcp_server import CallStatistics
from insitu.sandbox import Sandbox
from insitu.testing.team import DATE_DIFFERENCE, SUMMARIZE_NUMBERS, Capability, ScriptedTeam
from insitu.tool_store import ToolStore
from insitu.tool_store.admission import admit_tool
from insitu.tool_store.mcp_tools import MCP_ORIGIN, as_mcp_tool, mcp_binding, runs_where

ROOT = Path(__file__).resolve().parents[1]

#: A tiny external MCP server written with the official SDK's FastMCP. With a
#: file ``variant.txt`` saying 2 beside it, it describes add_numbers
#: differently, no longer offers reject_input, and offers multiply_numbers.
#: ``--http PORT`` serves streamable HTTP at http://127.0.0.1:PORT/mcp.
TINY_SERVER = '''
import pathlib
import sys

from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError

variant = pathlib.Path(__file__).with_name("variant.txt")
second = variant.exists() and variant.read_text().strip() == "2"
http = sys.argv[1:2] == ["--http"]
port = int(sys.argv[2]) if http else 8000
server = FastMCP("tiny", host="127.0.0.1", port=port, log_level="WARNING")


def add_numbers(a: int, b: int) -> int:
    return a + b


server.add_tool(
    add_numbers,
    description="Adds two integers a and b and returns their sum as an integer."
    if second
    else "Adds two integers and returns their sum.",
)

if second:

    @server.tool()
    def multiplyNumbers(a: int, b: int) -> int:
        """Multiplies two integers and returns their product."""
        return a * b

else:

    @server.tool()
    def reject_input(reason: str) -> str:
        """Always fails with the given reason."""
        raise ToolError(f"rejected: {reason}")


if __name__ == "__main__":
    server.run("streamable-http" if http else "stdio")
'''


#: A server whose tool "numbers", registered as server "summarize", would be named
#: summarize_numbers: the name of a library tool that is not this server's.
CLASHING_SERVER = """
from mcp.server.fastmcp import FastMCP

server = FastMCP("clashing", log_level="WARNING")


@server.tool()
def numbers(count: int) -> list[int]:
    \"\"\"Lists the numbers from 1 to count.\"\"\"
    return list(range(1, count + 1))


server.run()
"""


#: A server for the outcomes of the Executor's calls: a result, an error result, a
#: call slower than the timeout, and (with a file ``broken.txt`` beside it) a
#: server that exits at start, saying why on stderr.
PROBE_SERVER = """
import pathlib
import sys
import time

from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError

if pathlib.Path(__file__).with_name("broken.txt").exists():
    sys.exit("probe: cannot start, its configuration is broken")
server = FastMCP("probe", log_level="WARNING")


@server.tool()
def wait_seconds(seconds: float) -> str:
    \"\"\"Waits for the given number of seconds, then says it is done.\"\"\"
    time.sleep(seconds)
    return "done"


@server.tool()
def refuse_request(reason: str) -> str:
    \"\"\"Always refuses, with the given reason.\"\"\"
    raise ToolError(f"refused: {reason}")


server.run()
"""


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_EMBEDDING", "hashing")
    monkeypatch.delenv("INSITU_STORE", raising=False)
    monkeypatch.delenv("INSITU_CHROMA_URL", raising=False)


@pytest.fixture
def tiny_server(tmp_path: Path) -> Path:
    path = tmp_path / "tiny" / "tiny_server.py"
    path.parent.mkdir()
    path.write_text(TINY_SERVER)
    return path


def admit(store: ToolStore, capability: Capability, sandbox: Sandbox, scratch: Path) -> None:
    """Admit a scripted team's tool through the real sandbox and add it to the library."""
    spec = admit_tool(capability.source, capability.tests, sandbox=sandbox, scratch_dir=scratch)
    store.add(spec, origin="manual")


@pytest.fixture
def library(tmp_path: Path, sandbox: Sandbox) -> Path:
    """A library on disk (closed, so that other processes can write it) with summarize_numbers."""
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing") as store:
        admit(store, SUMMARIZE_NUMBERS, sandbox, tmp_path / "admit")
    return path


def cli(library: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(library), *args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def register_tiny(library: Path, tiny_server: Path, name: str = "tiny") -> str:
    """``insitu tools add-mcp`` for the tiny server over stdio, run from its directory."""
    with contextlib.chdir(tiny_server.parent):
        return ok(cli(library, "tools", "add-mcp", name, "--", sys.executable, tiny_server.name))


def stats_of(library: Path, name: str) -> Any:
    with ToolStore.open(library, read_only=True) as store:
        return store.get(name).stats


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: Background, timeout_s: float = 60.0) -> None:
    def listening() -> bool:
        assert process.poll() is None, process.log.read_text()
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout_s)


class Background(subprocess.Popen[str]):
    """A process whose stderr goes to a file (a pipe nobody reads could fill up)."""

    log: Path


@contextlib.contextmanager
def background(command: list[str], log: Path, **kwargs: Any) -> Iterator[Background]:
    """A process for the test's duration, stopped with Ctrl-C (SIGINT) at the end."""
    with log.open("w") as stderr:
        process = Background(command, stderr=stderr, text=True, **kwargs)
    process.log = log
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


# --------------------------------------------------------------------------- MCP out


def test_serve_over_stdio_lists_calls_and_follows_the_library(
    library: Path, sandbox: Sandbox, tmp_path: Path
) -> None:
    with ToolStore.open(library, read_only=True) as store:
        summarize = store.get("summarize_numbers")
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "insitu", "mcp", "serve", "--store", str(library)],
        cwd=str(ROOT),
        env={**os.environ, "INSITU_EMBEDDING": "hashing"},
    )

    async def session() -> None:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert set(listed) == {"summarize_numbers"}
            tool = listed["summarize_numbers"]
            assert tool.description == summarize.description
            assert tool.inputSchema == summarize.input_schema
            assert tool.outputSchema == summarize.output_schema

            result = await client.call_tool("summarize_numbers", {"values": [1, 2, 3, 10]})
            assert not result.isError
            assert result.structuredContent["count"] == 4
            assert json.loads(text_of(result))["median"] == 2.5

            failed = await client.call_tool("summarize_numbers", {"values": []})
            assert failed.isError
            assert "values must contain at least one number" in text_of(failed)
            invalid = await client.call_tool("summarize_numbers", {"values": "many"})
            assert invalid.isError and "invalid_input" in text_of(invalid)
            unknown = await client.call_tool("no_such_tool", {})
            assert unknown.isError and "no_such_tool" in text_of(unknown)

            # Another process adds a tool while the server runs: it is listed at once.
            with ToolStore.open(library, lock_timeout=30) as store:
                admit(store, DATE_DIFFERENCE, sandbox, tmp_path / "admit-date")
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == {"summarize_numbers", "compute_date_difference"}
            days = await client.call_tool(
                "compute_date_difference", {"start": "2024-01-01", "end": "2024-03-01"}
            )
            assert not days.isError and days.structuredContent["days"] == 60

            # Counted in the statistics while the server runs (it flushes its spool).
            def counted() -> bool:
                return (
                    stats_of(library, "summarize_numbers").calls == 3
                    and stats_of(library, "compute_date_difference").calls == 1
                )

            await anyio.to_thread.run_sync(wait_for, counted)

    anyio.run(session)
    stats = stats_of(library, "summarize_numbers")
    assert (stats.calls, stats.successes, stats.failures) == (3, 1, 2)
    assert "validation error" in (stats.last_error or "")
    assert not list((library / "mcp-calls").glob("*.jsonl"))  # every spooled call counted


def test_serve_over_http_also_proxies_external_mcp_tools(
    library: Path, tiny_server: Path, tmp_path: Path
) -> None:
    register_tiny(library, tiny_server)
    port = free_port()
    command = [sys.executable, "-m", "insitu", "mcp", "serve", "--store", str(library)]
    command += ["--transport", "http", "--port", str(port)]

    async def session() -> None:
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write, _),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == {"summarize_numbers", "tiny_add_numbers", "tiny_reject_input"}
            result = await client.call_tool("summarize_numbers", {"values": [2, 4]})
            assert result.structuredContent["mean"] == 3.0
            added = await client.call_tool("tiny_add_numbers", {"a": 2, "b": 5})
            assert not added.isError and added.structuredContent == {"result": 7}
            rejected = await client.call_tool("tiny_reject_input", {"reason": "no"})
            assert rejected.isError and "rejected: no" in text_of(rejected)

    with background(command, tmp_path / "serve.log", cwd=str(ROOT)) as process:
        wait_for_port(port, process)
        anyio.run(session)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert f"http://127.0.0.1:{port}/mcp" in process.log.read_text()
    # Stopping flushes the spool: every call is counted.
    assert stats_of(library, "summarize_numbers").calls == 1
    assert stats_of(library, "tiny_add_numbers").successes == 1
    assert stats_of(library, "tiny_reject_input").failures == 1


def test_serve_reports_a_busy_port_and_a_missing_library(library: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        result = cli(library, "mcp", "serve", "--transport", "http", "--port", port)
    assert result.exit_code == EXIT_RUNTIME
    assert "cannot listen on 127.0.0.1" in result.output
    result = cli(tmp_path / "nothing", "mcp", "serve")
    assert result.exit_code == EXIT_CONFIG and "no tool library" in result.output


def test_statistics_wait_for_the_writer_and_count_once(library: Path) -> None:
    statistics = CallStatistics(library, "unit")
    statistics.directory.mkdir(parents=True, exist_ok=True)
    statistics.add("summarize_numbers", 1, True, None)
    statistics.add("summarize_numbers", 1, False, "boom")
    spooled = statistics.path.read_text()
    with ToolStore.open(library) as writer:  # e.g. a running `insitu evolve`
        assert statistics.flush() == 0  # the writer is not disturbed: calls stay spooled
        assert writer.get("summarize_numbers").stats.calls == 0
    assert statistics.flush() == 2
    assert not statistics.path.exists()
    statistics.path.write_text(spooled)  # a crash before the spool was cleared: replayed
    assert statistics.flush() == 0
    stats = stats_of(library, "summarize_numbers")
    assert (stats.calls, stats.failures, stats.last_error) == (2, 1, "boom")


# --------------------------------------------------------------------------- MCP in


def test_add_mcp_registers_locked_tools_that_search_finds(library: Path, tiny_server: Path) -> None:
    output = register_tiny(library, tiny_server)
    assert "2 added" in output and "tiny_add_numbers" in output
    with ToolStore.open(library, read_only=True) as store:
        record = store.get("tiny_add_numbers")
        assert record.origin == MCP_ORIGIN and record.locked and record.tests == []
        assert record.description == "Adds two integers and returns their sum."
        assert record.input_schema["required"] == ["a", "b"]
        binding = mcp_binding(record)
        assert binding is not None and binding.tool == "add_numbers"
        assert binding.connection.cwd == str(tiny_server.parent)
        assert store.get("tiny_reject_input").locked
        assert mcp_binding(store.get("summarize_numbers")) is None
    listed = ok(cli(library, "tools", "list"))
    assert "tiny_add_numbers" in listed and "tiny_reject_input" in listed
    found = ok(cli(library, "tools", "search", "add two integers", "-k", "1"))
    assert "tiny_add_numbers" in found
    shown = ok(cli(library, "tools", "show", "tiny_add_numbers"))
    assert "runs outside the sandbox" in shown and "MCP server 'tiny'" in shown

    # The same name again: unchanged. After the server changed: refreshed.
    assert "2 unchanged" in register_tiny(library, tiny_server)
    (tiny_server.parent / "variant.txt").write_text("2")
    output = register_tiny(library, tiny_server)
    assert "1 added, 1 updated, 0 unchanged, 1 archived" in output
    with ToolStore.open(library, read_only=True) as store:
        updated = store.get("tiny_add_numbers")
        assert updated.version == 2 and updated.locked and updated.origin == MCP_ORIGIN
        assert "as an integer" in updated.description
        assert store.get("tiny_multiply_numbers").locked
        assert store.get("tiny_reject_input").status == "archived"
    (tiny_server.parent / "variant.txt").write_text("1")
    assert "1 restored" in register_tiny(library, tiny_server)


def test_add_mcp_rejects_bad_input_and_stores_nothing(library: Path, tiny_server: Path) -> None:
    def add(*args: str) -> Result:
        return cli(library, "tools", "add-mcp", *args)

    cases = [
        (add("Tiny", "--", sys.executable, str(tiny_server)), EXIT_CONFIG, "snake case"),
        (add("tiny"), EXIT_CONFIG, "after `--`"),
        (add("tiny", "--url", "ftp://host"), EXIT_CONFIG, "http:// or https://"),
        (add("tiny", "--env", "lower", "--", "x"), EXIT_CONFIG, "--env takes"),
        (
            add("tiny", "--timeout", "5", "--", sys.executable, "-c", "raise SystemExit(3)"),
            EXIT_RUNTIME,
            "MCP server 'tiny'",
        ),
        (add("tiny", "--url", f"http://127.0.0.1:{free_port()}/mcp"), EXIT_RUNTIME, "failed"),
    ]
    for result, code, message in cases:
        assert result.exit_code == code, result.output
        assert message in result.output
        assert len(result.output.strip().splitlines()) <= 2, result.output  # one line (wrapped)
    # A server whose tool would take the name of a library tool that is not its own.
    clash = tiny_server.with_name("clashing_server.py")
    clash.write_text(CLASHING_SERVER)
    result = add("summarize", "--", sys.executable, str(clash))
    assert result.exit_code == EXIT_INCOMPLETE and "summarize_numbers" in result.output
    with ToolStore.open(library, read_only=True) as store:
        assert [r.name for r in store.list("all")] == ["summarize_numbers"]


def test_add_mcp_over_streamable_http(library: Path, tiny_server: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, str(tiny_server), "--http", str(port)]
    with background(command, tmp_path / "tiny.log") as process:
        wait_for_port(port, process)
        url = f"http://127.0.0.1:{port}/mcp"
        output = ok(cli(library, "tools", "add-mcp", "web", "--url", url))
        assert "2 added" in output
        with ToolStore.open(library, read_only=True) as store:
            record = store.get("web_add_numbers")
        assert record.locked and runs_where(record) and url in (runs_where(record) or "")
        calls: list[Any] = []
        tool = as_mcp_tool(record, timeout_s=10, on_call=lambda *call: calls.append(call))
        assert json.loads(tool.invoke({"a": 20, "b": 22})) == {"result": 42}
        assert calls[0][1].ok and calls[0][1].output == {"result": 42}
    # The server is gone: a call is a tool error, never an exception.
    failed = tool.invoke({"a": 1, "b": 2})
    assert failed.startswith("ERROR (crash)") and "MCP server 'web'" in failed


def test_executor_calls_go_through_the_adapters_with_sandbox_like_outcomes(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import langchain_mcp_adapters.tools as adapters

    probe = tmp_path / "probe" / "probe_server.py"
    probe.parent.mkdir()
    probe.write_text(PROBE_SERVER)
    with contextlib.chdir(probe.parent):
        ok(cli(library, "tools", "add-mcp", "probe", "--", sys.executable, probe.name))
    with ToolStore.open(library, read_only=True) as store:
        wait, refuse = store.get("probe_wait_seconds"), store.get("probe_refuse_request")
    converted: list[str] = []
    convert = adapters.convert_mcp_tool_to_langchain_tool

    def spy(session: Any, tool: Any, **kwargs: Any) -> Any:
        converted.append(tool.name)
        return convert(session, tool, **kwargs)

    monkeypatch.setattr(adapters, "convert_mcp_tool_to_langchain_tool", spy)
    calls: list[Any] = []

    def bind(record: Any, timeout_s: float = 20) -> Any:
        return as_mcp_tool(record, timeout_s=timeout_s, on_call=lambda *call: calls.append(call))

    assert json.loads(bind(wait).invoke({"seconds": 0})) == {"result": "done"}
    refused = bind(refuse).invoke({"reason": "busy"})
    assert refused.startswith("ERROR (exception)") and "refused: busy" in refused
    slow = bind(wait, timeout_s=1).invoke({"seconds": 30})
    assert slow.startswith("ERROR (timeout)") and "did not answer in time" in slow
    assert json.loads(anyio.run(bind(wait).ainvoke, {"seconds": 0})) == {"result": "done"}
    (probe.parent / "broken.txt").write_text("1")
    crashed = bind(wait).invoke({"seconds": 0})
    assert crashed.startswith("ERROR (crash)") and "configuration is broken" in crashed
    assert [call[1].kind for call in calls] == ["ok", "exception", "timeout", "ok", "crash"]
    assert [call[0] for call in calls][:2] == [{"seconds": 0}, {"reason": "busy"}]
    assert calls[1][2] == refused  # the callback gets the text the model sees
    # Every call that reached its server went through langchain-mcp-adapters.
    assert converted == ["wait_seconds", "refuse_request", "wait_seconds", "wait_seconds"]


def test_an_episode_calls_an_external_mcp_tool(
    library: Path, tiny_server: Path, sandbox: Sandbox
) -> None:
    register_tiny(library, tiny_server)
    add_numbers = Capability(
        name="tiny_add_numbers",
        description="Adds two integers.",
        source="",
        tests=[],
        pattern=r"sum of (\d+) and (\d+)",
        arguments=lambda m: {"a": int(m.group(1)), "b": int(m.group(2))},
        answer=lambda output: f"the sum is {output['result']}",
    )
    team = ScriptedTeam(capabilities=[add_numbers])
    events: list[dict[str, Any]] = []
    with ToolStore.open(library) as store:
        result = run_task(
            "What is the sum of 19 and 23?",
            models=team.model(),
            tool_store=store,
            sandbox=sandbox,
            context={"store_dir": str(library)},
            on_event=events.append,
            checkpoint=False,
        )
        stats = store.get("tiny_add_numbers").stats
    assert result.status == "completed", result.answer
    assert result.answer == "the sum is 42"
    assert result.tools_used == ["tiny_add_numbers@1"] and result.tools_created == []
    assert team.role_calls.get("tool_developer", 0) == 0
    assert [e["tool"] for e in events if e["event"] == "calling"] == ["tiny_add_numbers"]
    assert (stats.calls, stats.successes) == (1, 1)


def test_the_cli_runs_as_a_module_with_mcp_help() -> None:
    env = {**os.environ, "COLUMNS": "120"}
    shown = subprocess.run(
        [sys.executable, "-m", "insitu", "tools", "add-mcp", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "NAME -- COMMAND" in shown and "--url" in shown
    served = subprocess.run(
        [sys.executable, "-m", "insitu", "mcp", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "--transport" in served and "read-only" in served


def test_an_export_with_mcp_tools_is_never_imported(
    library: Path, tiny_server: Path, tmp_path: Path
) -> None:
    """An MCP record names a host command: it is registered here, never taken from a folder."""
    from insitu.tool_store import export_library, import_library
    from insitu.tool_store.exchange import RemoteToolImportError

    register_tiny(library, tiny_server)
    with ToolStore.open(library, read_only=True) as reader:
        export_library(reader, tmp_path / "export")
    with ToolStore.open(tmp_path / "target", embedding="hashing") as target:
        with pytest.raises(RemoteToolImportError, match="add-mcp"):
            import_library(target, tmp_path / "export", trust=True)
        assert target.count() == 0
