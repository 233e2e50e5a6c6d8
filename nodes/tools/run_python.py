"""The python-interpreter baseline's only tool: run a program, return what it printed.

This is the Yunjue report's "B -> infinity" baseline (no tool accumulation):
it is deliberately the one "run arbitrary code" tool the Manager may never
request for the library. It runs in the same sandbox as every other tool.
"""

import contextlib
import io
import traceback

from pydantic import BaseModel, Field

__TOOL_META__ = {
    "name": "run_python",
    "description": "Runs a Python program and returns what it printed and, if it raised, "
    "the error with its traceback.",
    "dependencies": [],
}

MAX_OUTPUT = 8000


class InputModel(BaseModel):
    code: str = Field(description="A complete Python program; print the values you need.")


class OutputModel(BaseModel):
    stdout: str = Field(description="What the program printed (the end, if long).")
    error: str | None = Field(default=None, description="The exception and traceback, if any.")


def run(input: InputModel) -> OutputModel:
    printed = io.StringIO()
    error = None
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(input.code, "<program>", "exec"), {"__name__": "__main__"})
    except BaseException:  # the program's failure is the result, not the tool's
        error = traceback.format_exc(limit=-3)[-MAX_OUTPUT:]
    return OutputModel(stdout=printed.getvalue()[-MAX_OUTPUT:], error=error)
