"""Parsing Python source safely from many threads.

CPython 3.11 keeps the counter that guards the recursion of the AST constructor
(the step of ``ast.parse`` that builds Python objects) in the interpreter's
state, shared by every thread. When a thread switch happens in the middle of a
conversion - a garbage collection running a ``__del__`` is enough - two parses
at once can make one of them fail with ``SystemError: AST constructor
recursion depth mismatch`` (python/cpython#106905 and related reports). The
episodes of a batch check model-written tool code in parallel threads, so every
parse in this package goes through one process-wide lock here.
"""

from __future__ import annotations

import ast
import threading
from typing import Any, Literal

_PARSE_LOCK = threading.Lock()


def parse(
    source: str, filename: str = "<unknown>", mode: Literal["exec", "eval"] = "exec"
) -> ast.AST:
    """``ast.parse``, one thread at a time.

    Raises:
        SyntaxError: The source does not parse.
    """
    with _PARSE_LOCK:
        return ast.parse(source, filename=filename, mode=mode)


def literal_eval(text: str) -> Any:
    """``ast.literal_eval`` of a string, parsed one thread at a time.

    Raises:
        SyntaxError, ValueError: The text is not a Python literal.
    """
    return ast.literal_eval(parse(text.lstrip(" \t"), mode="eval"))
