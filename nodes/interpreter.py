"""The python-interpreter baseline: one sandboxed "run Python" tool, no library.

The Yunjue report compares the evolving agent with the same model given only a
Python interpreter (its batch-size -> infinity limit: nothing accumulates).
These nodes bind that single tool for the Executor and summarise the run in
the episode's output format, so both systems are measured the same way.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from insitu.aio import blocking
from insitu.context import InsituContext
from insitu.graphs.state import EpisodeState
from insitu.nodes.common import settings
from insitu.nodes.reflection import episode_metrics
from insitu.services import Services
from insitu.tool_store.admission import admit_tool
from insitu.tool_store.contract import ToolRecord

TOOL_NAME = "run_python"
TOOL_TESTS = [
    {"name": "prints", "input": {"code": "print(6 * 7)"}, "expect": {"stdout": "42\n"}},
    {
        "name": "reports_errors",
        "input": {"code": "1 / 0"},
        "check": "'ZeroDivisionError' in output['error']",
    },
]
GUIDANCE = (
    "You have one tool, run_python: write a complete Python program that computes what the "
    "task needs and prints it. Files of the task are in the current directory."
)

_admitted: dict[int, ToolRecord] = {}
_lock = threading.Lock()


def interpreter_record(services: Services, context: InsituContext) -> ToolRecord:
    """The ``run_python`` tool, admitted through the sandbox once per sandbox."""
    sandbox = services.sandbox(context)
    with _lock:
        record = _admitted.get(id(sandbox))
        if record is None:
            source = resources.files("insitu.nodes").joinpath("tools", "run_python.py")
            spec = admit_tool(
                source.read_text("utf-8"),
                TOOL_TESTS,
                sandbox=sandbox,
                scratch_dir=Path(context.store_dir).resolve() / "workspaces" / ".interpreter",
                expected_name=TOOL_NAME,
            )
            record = ToolRecord(
                **spec.model_dump(), version=1, hash=spec.content_hash(), origin="manual"
            )
            _admitted[id(sandbox)] = record
        return record


async def bind_interpreter(
    state: EpisodeState, runtime: Runtime[InsituContext], *, services: Services
) -> dict[str, Any]:
    """Give the Executor the interpreter, and only it (admitted on first use, in the sandbox)."""
    record = await blocking(interpreter_record, services, settings(runtime))
    return {
        "local_tools": {TOOL_NAME: record.model_dump(mode="json")},
        "bound_tools": [TOOL_NAME],
        "guidance": GUIDANCE,
        "rounds": 1,
    }


async def summarize_interpreter_run(state: EpisodeState) -> dict[str, Any]:
    """The baseline's counters, in the episode's output format (it creates no tools)."""
    metrics, used = episode_metrics(state)
    metrics["tools_created"] = 0
    return {
        "metrics": metrics,
        "tools_used": used,
        "tools_created": [],
        "tools_repaired": [],
        "new_tools": [],
        "reflection": "",
    }
