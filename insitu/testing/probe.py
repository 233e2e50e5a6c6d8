"""Probe tools for sandbox tests: a tool module around a few lines of Python.

``probe_tool(body)`` returns the source of a tool whose ``run()`` executes
``body`` and returns ``{"value": value}``: the tests of the sandbox's walls
write what a hostile tool would do as ``body`` and read what it got.
"""

from __future__ import annotations

import textwrap


def probe_tool(
    body: str,
    *,
    name: str = "probe_tool",
    modules: str = "os, sys, time",
    imports: str = "",
    network: bool = False,
) -> str:
    """The source of a tool whose ``run()`` executes ``body`` and returns ``{"value": value}``.

    Args:
        body: Statements that set ``value`` (indented or not).
        name: The tool's name.
        modules: Standard modules imported at the top (``import <modules>``).
        imports: More import lines (e.g. one that fails, to test import errors).
        network: The tool declares network access.
    """
    indented = textwrap.indent(textwrap.dedent(body).strip(), "    ")
    return f"""
import {modules}
{imports}
from typing import Any
from pydantic import BaseModel
__TOOL_META__ = {{"name": "{name}", "description": "A probe of the sandbox (a test tool).",
                 "dependencies": [], "network": {network!r}}}
class InputModel(BaseModel):
    arg: Any = None
class OutputModel(BaseModel):
    value: Any = None
def run(input: InputModel) -> OutputModel:
{indented}
    return OutputModel(value=value)
"""


def fork_bomb(limit: int) -> str:
    """A probe body that forks up to ``limit`` sleeping children; ``value`` is how it ended.

    ``value`` is ``[children, error]`` when a process limit stopped it, else
    ``[limit, "no limit"]``; the cap keeps a failing test from taking the machine down.
    """
    return f"""
children = []
try:
    for _ in range({limit}):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    value = [len(children), str(exc)]
else:
    value = [len(children), "no limit"]
"""
