"""The in-sandbox runner: loads one tool module and calls it, inside the sandbox.

This file runs in the *tool environment's* interpreter, inside the sandbox, so it
may use only the standard library and pydantic (never ``insitu``). The host
passes its text with ``python -I -B -c <this file> serve <json config>``; the
host may also import it, to share the verdict and formatting helpers.

Process layout inside one sandbox::

    supervisor (root, only when a uid drop is requested)
      └── worker (dedicated unprivileged uid; pydantic imported once)
            └── one forked child per request (rlimits, env, secrets, tool code)

The worker reads length-prefixed JSON requests on its stdin and answers on its
stdout. For every request it forks a child that applies the limits and runs the
tool; the worker enforces the wall-clock limit, captures (and caps) the child's
stdout and stderr, and afterwards kills every process left under the sandbox uid
(or, as a normal user, in the sandbox's pid namespace), so nothing a tool starts
outlives its call. The supervisor exists so that a tool killing its parent (the
worker) still leaves someone behind to kill the tool's processes and reap them,
even when the machine's init does not reap orphans.

One warm worker serves many calls, under a shared workspace root calls of
different episodes, so nothing of one call may reach the next: the private
``/tmp`` and ``/dev/shm`` are emptied after every call, once every process of
the call is gone; a call under a shared root can read and write only its own
workdir there (Landlock); and packages on the deny list are refused at import
time and, with Landlock, cannot even be read.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import gc
import inspect
import json
import linecache
import math
import os
import re
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

# ---------------------------------------------------------------------------
# Wire format shared with the host: an 8-byte big-endian length, then UTF-8 JSON.
# ---------------------------------------------------------------------------

HEADER = struct.Struct(">Q")

#: Error kinds, as their string values (the host maps them onto ``ErrorKind``).
OK = "ok"
TIMEOUT = "timeout"
MEMORY = "memory"
CRASH = "crash"
EXCEPTION = "exception"
INVALID_INPUT = "invalid_input"
INVALID_OUTPUT = "invalid_output"
DEPENDENCY = "dependency"
SANDBOX = "sandbox"

#: Outcome kinds under which an ``expect_error`` test case passes.
EXPECTED_ERROR_KINDS = (EXCEPTION, INVALID_INPUT)

#: Fd on which a call's child writes its JSON result.
RESULT_FD = 3

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: Task flag (``/proc/PID/stat`` field 9): the task is exiting and runs no more system calls.
_PF_EXITING = 0x4

_MAX_TOOL_FRAMES = 8
#: What native code prints when an allocation fails just before it aborts.
_OUT_OF_MEMORY_MARKERS = (
    b"MemoryError",
    b"std::bad_alloc",
    b"Cannot allocate memory",
    b"out of memory",
    b"Out of memory",
    b"failed to allocate",
)
_REPR_LIMIT = 300


def encode_frame(obj: Any) -> bytes:
    """Encode one protocol message.

    Args:
        obj: A JSON-able object.

    Returns:
        The length header followed by the JSON bytes.
    """
    data = json.dumps(obj, ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass")
    return HEADER.pack(len(data)) + data


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any:
    """Read one protocol message from a blocking fd.

    Args:
        fd: The file descriptor to read.

    Returns:
        The decoded object, or ``None`` at end of file.
    """
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    body = _read_exact(fd, size)
    if body is None:
        return None
    return json.loads(body.decode("utf-8", "surrogatepass"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------------------
# Small helpers for messages a model can act on.
# ---------------------------------------------------------------------------


def short_repr(value: Any, limit: int = _REPR_LIMIT) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters with a visible marker.

    Args:
        value: Anything.
        limit: Longest text returned before the marker.

    Returns:
        The (possibly trimmed) representation.
    """
    try:
        text = repr(value)
    except Exception as exc:  # a hostile __repr__ must not break the report
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    if len(text) > limit:
        text = text[:limit] + f"…[{len(text) - limit} more characters]"
    return text


def _path_text(path: tuple[Any, ...], root: str = "output") -> str:
    return root + "".join(f"[{part!r}]" for part in path)


def outcome(
    kind: str, message: str = "", traceback_text: str = "", output: Any = None
) -> dict[str, Any]:
    """Build the outcome dictionary that crosses the process boundaries.

    Args:
        kind: One of the kind constants of this module.
        message: The LLM-readable message.
        traceback_text: Trimmed traceback, if any.
        output: The JSON-able output on success.

    Returns:
        A plain dict with the fields of ``insitu.sandbox.Outcome``.
    """
    return {
        "ok": kind == OK,
        "kind": kind,
        "message": message,
        "traceback": traceback_text,
        "output": output,
    }


# ---------------------------------------------------------------------------
# Test-case verdicts (shared by the child, the worker and the host).
# ---------------------------------------------------------------------------


def approx(a: Any, b: Any, rel: float = 1e-6, abs: float = 1e-9) -> bool:
    """Compare numbers (or lists/dicts of numbers) within a tolerance.

    Args:
        a: First value.
        b: Second value.
        rel: Relative tolerance.
        abs: Absolute tolerance (for values near zero).

    Returns:
        Whether the values are equal within the tolerance, recursively.
    """
    return _mismatch(b, a, (), rel=rel, abs_tol=abs) is None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mismatch(
    expected: Any, got: Any, path: tuple[Any, ...], rel: float = 1e-6, abs_tol: float = 1e-12
) -> tuple[tuple[Any, ...], str] | None:
    """Return (path, reason) of the first difference, or ``None`` when equal."""
    if _is_number(expected) and _is_number(got):
        if isinstance(expected, int) and isinstance(got, int):
            equal = expected == got
        elif math.isnan(float(expected)) or math.isnan(float(got)):
            equal = math.isnan(float(expected)) and math.isnan(float(got))
        else:
            equal = math.isclose(float(expected), float(got), rel_tol=rel, abs_tol=abs_tol)
        if equal:
            return None
        return path, f"== {short_repr(expected)} expected, got {short_repr(got)}"
    if isinstance(expected, dict) and isinstance(got, dict):
        missing = [key for key in expected if key not in got]
        if missing:
            return path, (
                f"missing key(s) {', '.join(map(repr, missing))}; got keys "
                f"{short_repr(sorted(map(str, got)))}"
            )
        extra = [key for key in got if key not in expected]
        if extra:
            return path, (
                f"unexpected key(s) {', '.join(map(repr, extra))} (expected exactly "
                f"{short_repr(sorted(map(str, expected)))})"
            )
        for key, value in expected.items():
            found = _mismatch(value, got[key], (*path, key), rel, abs_tol)
            if found:
                return found
        return None
    if isinstance(expected, list | tuple) and isinstance(got, list | tuple):
        if len(expected) != len(got):
            return path, (
                f"{len(expected)} item(s) expected, got {len(got)}: {short_repr(list(got))}"
            )
        for index, (exp_item, got_item) in enumerate(zip(expected, got, strict=True)):
            found = _mismatch(exp_item, got_item, (*path, index), rel, abs_tol)
            if found:
                return found
        return None
    # bool is compared strictly: JSON true is not the number 1.
    if type(expected) is not type(got) and (isinstance(expected, bool) or isinstance(got, bool)):
        return path, f"== {short_repr(expected)} expected, got {short_repr(got)}"
    if expected == got:
        return None
    return path, f"== {short_repr(expected)} expected, got {short_repr(got)}"


def verdict(case: dict[str, Any], result: dict[str, Any]) -> tuple[bool, str]:
    """Decide whether a test case passed, given the outcome of its call.

    ``check`` is only evaluated for a successful call; it runs user code, so it
    must only be called that way inside the sandbox.

    Args:
        case: The test case (``name``, ``input``, ``expect``, ``check``, ``expect_error``).
        result: The outcome dict of the call.

    Returns:
        ``(passed, message)``; the message is precise enough for a model to act on.
    """
    name = case.get("name")
    prefix = f"test {name!r}: "
    kind = result.get("kind")
    if case.get("expect_error"):
        if kind in EXPECTED_ERROR_KINDS:
            return True, prefix + f"failed as expected ({kind}: {result.get('message', '')})"
        if result.get("ok"):
            return False, prefix + (
                "expected the call to fail (exception or invalid input), but it succeeded "
                f"with output {short_repr(result.get('output'))}"
            )
        return False, prefix + (
            f"expected an exception or invalid input, but the call failed with {kind}: "
            f"{result.get('message', '')}"
        )
    if not result.get("ok"):
        text = prefix + f"the call failed ({kind}): {result.get('message', '')}"
        if result.get("traceback"):
            text += "\n" + result["traceback"]
        return False, text
    output = result.get("output")
    expect = case.get("expect")
    if expect:
        if not isinstance(output, dict):
            return False, prefix + f"output is not an object: {short_repr(output)}"
        for key, expected in expect.items():
            if key not in output:
                return False, prefix + (
                    f"output has no field {key!r} (fields: {', '.join(map(str, output)) or 'none'})"
                )
            found = _mismatch(expected, output[key], (key,))
            if found:
                path, reason = found
                separator = " " if reason.startswith("== ") else ": "
                return False, prefix + _path_text(path) + separator + reason
    check = case.get("check")
    if check:
        names = {
            "output": output,
            "input": case.get("input"),
            "math": math,
            "approx": approx,
        }
        try:
            value = eval(compile(check, "<check>", "eval"), names)  # sandboxed: inside the child
        except BaseException as exc:
            return False, prefix + (
                f"check raised {type(exc).__name__}: {exc}: {check} "
                f"(output was {short_repr(output)})"
            )
        if not value:
            return False, prefix + f"check failed: {check} (output was {short_repr(output)})"
    return True, prefix + "passed"


# ---------------------------------------------------------------------------
# Loading and calling a tool (runs in the per-call child).
# ---------------------------------------------------------------------------


class ToolError(Exception):
    """A failure with a known kind, raised inside the child and reported as is."""

    def __init__(self, kind: str, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.traceback_text = traceback_text


class DeniedImportError(ImportError):
    """A tool imported a package on the deny list (raised by :class:`DeniedImportFinder`).

    An ``ImportError`` but not a ``ModuleNotFoundError``: the module may well be
    installed, and libraries that fall back on ``except ImportError`` still do.
    """


def literal_meta(source: str) -> dict[str, Any]:
    """Read ``__TOOL_META__`` without running the module, if it is a literal.

    Args:
        source: The tool module's source.

    Returns:
        The dict, or ``{}`` when absent, not literal or the source does not parse.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and target.id == "__TOOL_META__":
                try:
                    value = ast.literal_eval(node.value)
                except (ValueError, SyntaxError, TypeError):
                    return {}
                return value if isinstance(value, dict) else {}
    return {}


def tool_filename(source: str) -> str:
    """Return the pseudo file name under which a tool is compiled (``<tool:NAME>``)."""
    name = literal_meta(source).get("name")
    if not isinstance(name, str) or not name.isidentifier():
        name = "tool"
    return f"<tool:{name}>"


def trimmed_traceback(exc: BaseException) -> str:
    """Format a traceback keeping only the tool's own frames.

    The frames of the runner and of libraries are dropped, except the innermost
    frame (where the exception was raised), which tells where a library failed.

    Args:
        exc: The exception.

    Returns:
        The trimmed traceback text, or ``""`` when no tool frame is involved.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    tool_indices = [i for i, frame in enumerate(frames) if frame.filename.startswith("<tool:")]
    if not tool_indices:
        return ""
    kept = [frames[i] for i in tool_indices[-_MAX_TOOL_FRAMES:]]
    lines = ["Traceback (most recent call last; tool frames only):"]
    if len(tool_indices) > _MAX_TOOL_FRAMES:
        lines.append(f"  … {len(tool_indices) - _MAX_TOOL_FRAMES} earlier tool frame(s) omitted")
    lines.extend(line.rstrip("\n") for line in traceback.format_list(kept))
    last = frames[-1]
    if not last.filename.startswith("<tool:"):
        lines.append(
            f"  … raised in {os.path.basename(last.filename)}, line {last.lineno}, in {last.name}"
        )
    lines.extend(line.rstrip("\n") for line in traceback.format_exception_only(type(exc), exc))
    return "\n".join(lines)


def exception_message(exc: BaseException, limits: dict[str, Any]) -> str:
    """Return ``ExcType: message`` with a hint when a sandbox limit caused it."""
    text = str(exc)
    if len(text) > 2000:
        text = text[:2000] + f"…[{len(text) - 2000} more characters]"
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        message += f" (the sandbox limits any file to {limits.get('file_size_mb')} MiB)"
    elif isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        message += f" (the sandbox limits open files to {limits.get('open_files')})"
    elif isinstance(exc, BlockingIOError | OSError) and exc.errno == errno.EAGAIN:
        message += f" (the sandbox limits processes and threads to {limits.get('processes')})"
    elif isinstance(exc, SystemExit):
        message = f"SystemExit: the tool called sys.exit({exc.code!r})"
    return message


def classify_exception(exc: BaseException, limits: dict[str, Any]) -> ToolError:
    """Map an exception raised by tool code onto an error kind."""
    tb = trimmed_traceback(exc)
    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, MemoryError):
        return ToolError(
            MEMORY,
            f"MemoryError: the tool exceeded the memory limit of {limits.get('memory_mb')} MiB "
            "(address space)",
            tb,
        )
    if isinstance(exc, DeniedImportError):
        return ToolError(DEPENDENCY, str(exc), tb)
    if isinstance(exc, ModuleNotFoundError):
        module = exc.name or str(exc)
        return ToolError(
            DEPENDENCY,
            f"module {module!r} is not installed in the tool environment ({exc}); declare its "
            "PyPI distribution in __TOOL_META__['dependencies'] or use the standard library",
            tb,
        )
    return ToolError(EXCEPTION, exception_message(exc, limits), tb)


def format_validation_error(exc: Any, what: str) -> str:
    """Render a pydantic ``ValidationError`` as one precise line per error.

    Args:
        exc: The ``ValidationError``.
        what: What was validated (``"the input (InputModel)"``).

    Returns:
        A header plus ``- location: message (got value)`` lines.
    """
    errors = exc.errors(include_url=False)
    lines = [f"{len(errors)} validation error(s) in {what}:"]
    for error in errors[:20]:
        location = ""
        for part in error.get("loc", ()):
            location += (
                f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
            )
        location = location or "(the whole object)"
        line = f"- {location}: {error.get('msg', 'invalid')}"
        if error.get("type") != "missing" and "input" in error:
            line += f" (got {short_repr(error['input'], 120)})"
        lines.append(line)
    if len(errors) > 20:
        lines.append(f"- … {len(errors) - 20} more error(s)")
    return "\n".join(lines)


#: Compiled tool modules by source, filled by the worker between calls so that the
#: children it forks afterwards skip parsing and compiling (inherited on fork).
_CODE_CACHE: dict[str, tuple[str, types.CodeType]] = {}
_CODE_CACHE_SIZE = 32


def precompile(source: Any) -> None:
    """Compile a tool's source into the cache (never runs it); errors are left to the call.

    Args:
        source: The module source of a request just served.
    """
    if not isinstance(source, str) or source in _CODE_CACHE:
        return
    try:
        filename = tool_filename(source)
        code = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    while len(_CODE_CACHE) >= _CODE_CACHE_SIZE:
        _CODE_CACHE.pop(next(iter(_CODE_CACHE)))
    _CODE_CACHE[source] = (filename, code)


class LoadedTool:
    """A tool module imported in the child, with its input and output models."""

    def __init__(self, source: str) -> None:
        from pydantic import BaseModel, create_model

        cached = _CODE_CACHE.get(source)
        if cached is not None:
            self.filename, code = cached
        else:
            self.filename = tool_filename(source)
            try:
                code = compile(source, self.filename, "exec", dont_inherit=True)
            except SyntaxError as exc:
                detail = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
                raise ToolError(
                    EXCEPTION, f"SyntaxError: {exc.msg} (line {exc.lineno})", detail
                ) from None
        # linecache lets tracebacks show the tool's source lines.
        linecache.cache[self.filename] = (
            len(source),
            None,
            source.splitlines(True),
            self.filename,
        )
        module = types.ModuleType("insitu_tool_" + self.filename[6:-1])
        module.__file__ = self.filename
        # pydantic resolves postponed annotations through sys.modules.
        sys.modules[module.__name__] = module
        exec(code, module.__dict__)
        self.module = module
        meta = module.__dict__.get("__TOOL_META__")
        self.meta: dict[str, Any] = meta if isinstance(meta, dict) else {}
        run = module.__dict__.get("run")
        if not callable(run):
            raise ToolError(EXCEPTION, "the module defines no function run()")
        self.run = run
        try:
            hints = typing.get_type_hints(run, globalns=module.__dict__, include_extras=True)
        except Exception as exc:
            raise ToolError(
                EXCEPTION, f"cannot resolve the annotations of run(): {type(exc).__name__}: {exc}"
            ) from None
        try:
            parameters = list(inspect.signature(run).parameters.values())
        except (TypeError, ValueError) as exc:
            raise ToolError(EXCEPTION, f"cannot read the signature of run(): {exc}") from None

        def is_model(value: Any) -> bool:
            return isinstance(value, type) and issubclass(value, BaseModel)

        declared_input = module.__dict__.get("InputModel")
        self.pass_model = True
        if is_model(declared_input):
            self.input_model = declared_input
        elif len(parameters) == 1 and is_model(hints.get(parameters[0].name)):
            self.input_model = hints[parameters[0].name]
        else:
            self.pass_model = False
            fields: dict[str, Any] = {}
            for parameter in parameters:
                if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    raise ToolError(
                        EXCEPTION,
                        f"run() has *{parameter.name} / **{parameter.name}; declare every "
                        "parameter with a type, or define InputModel",
                    )
                if parameter.kind is parameter.POSITIONAL_ONLY:
                    raise ToolError(EXCEPTION, "run() has positional-only parameters")
                annotation = hints.get(parameter.name, Any)
                default = ... if parameter.default is parameter.empty else parameter.default
                fields[parameter.name] = (annotation, default)
            try:
                self.input_model = create_model("InputModel", __module__=module.__name__, **fields)
            except Exception as exc:
                raise ToolError(
                    EXCEPTION, f"cannot build an input model from run()'s signature: {exc}"
                ) from None
        declared_output = module.__dict__.get("OutputModel")
        returned = hints.get("return", Any)
        self.wrap_output = False
        if is_model(declared_output):
            self.output_model = declared_output
        elif is_model(returned):
            self.output_model = returned
        else:
            self.wrap_output = True
            try:
                self.output_model = create_model(
                    "OutputModel", __module__=module.__name__, result=(returned, ...)
                )
            except Exception as exc:
                raise ToolError(
                    EXCEPTION, f"cannot build an output model from run()'s return type: {exc}"
                ) from None

    def describe(self) -> dict[str, Any]:
        """Return the tool's metadata and JSON Schemas."""
        meta = self.meta
        if not meta:
            raise ToolError(EXCEPTION, "the module has no __TOOL_META__ dict")
        for key in ("name", "description"):
            if not isinstance(meta.get(key), str) or not meta.get(key):
                raise ToolError(EXCEPTION, f"__TOOL_META__[{key!r}] must be a non-empty string")
        return {
            "name": meta["name"],
            "description": meta["description"],
            "dependencies": list(meta.get("dependencies") or []),
            "secrets": list(meta.get("secrets") or []),
            "network": bool(meta.get("network", False)),
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
        }

    def call(self, payload: Any) -> Any:
        """Validate the payload, run the tool and return its JSON-able output dict."""
        from pydantic import BaseModel, ValidationError

        if not isinstance(payload, dict):
            raise ToolError(
                INVALID_INPUT, f"the input must be a JSON object, got {type(payload).__name__}"
            )
        try:
            validated = self.input_model.model_validate(payload)
        except ValidationError as exc:
            raise ToolError(
                INVALID_INPUT, format_validation_error(exc, "the input (InputModel)")
            ) from None
        if self.pass_model:
            raw = self.run(validated)
        else:
            raw = self.run(
                **{name: getattr(validated, name) for name in self.input_model.model_fields}
            )
        if inspect.isawaitable(raw):
            raw = asyncio.run(_await(raw))
        model = self.output_model
        try:
            if self.wrap_output:
                result = model.model_validate({"result": raw})
            elif isinstance(raw, model):
                result = raw
            elif isinstance(raw, BaseModel):
                result = model.model_validate(raw.model_dump())
            elif isinstance(raw, dict):
                result = model.model_validate(raw)
            else:
                fields = ", ".join(model.model_fields) or "none"
                raise ToolError(
                    INVALID_OUTPUT,
                    f"run() returned {type(raw).__name__} ({short_repr(raw, 120)}); it must return "
                    f"an OutputModel instance or a dict with the fields: {fields}",
                )
        except ValidationError as exc:
            raise ToolError(
                INVALID_OUTPUT, format_validation_error(exc, "the output (OutputModel)")
            ) from None
        try:
            return result.model_dump(mode="json")
        except Exception as exc:
            raise ToolError(
                INVALID_OUTPUT,
                f"the output cannot be serialised to JSON: {type(exc).__name__}: {exc}",
            ) from None


async def _await(awaitable: Any) -> Any:
    return await awaitable


def execute(request: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request in the (already limited) child.

    Args:
        request: ``op`` (``describe``/``call``/``test``), ``source`` and the op's fields.

    Returns:
        ``{"outcome": {...}, "test": {"passed", "message"} | None}``.
    """
    op = request["op"]
    limits = request.get("limits", {})
    case = request.get("case") or {}
    try:
        tool = LoadedTool(request["source"])
        if op == "describe":
            result = outcome(OK, output=tool.describe())
        else:
            payload = case.get("input") if op == "test" else request.get("payload")
            result = outcome(OK, output=tool.call(payload))
    except BaseException as exc:
        error = classify_exception(exc, limits)
        result = outcome(error.kind, error.message, error.traceback_text)
    test = None
    if op == "test":
        passed, message = verdict(case, result)
        test = {"passed": passed, "message": message}
    return {"outcome": result, "test": test}


# ---------------------------------------------------------------------------
# Privileges and process plumbing.
# ---------------------------------------------------------------------------

_libc: Any = None


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl(option, arg2, arg3, arg4, arg5)


def _keep_read_search() -> None:
    """Keep only CAP_DAC_READ_SEARCH (also across exec) after a uid drop.

    Used by the degraded backend when the Python prefix lies in a directory
    other users cannot enter (a pyenv under /root, a pytest temp dir): without
    it the unprivileged uid could not even import the standard library.
    """

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    bit = 1 << _CAP_DAC_READ_SEARCH
    data = (Data * 2)(Data(bit, bit, bit), Data(0, 0, 0))
    if _libc.capset(ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    if _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH) != 0:
        raise OSError(ctypes.get_errno(), "PR_CAP_AMBIENT_RAISE failed")


def drop_privileges(uid: int, gid: int, keep_read_search: bool = False) -> None:
    """Become ``uid``/``gid`` for good (no supplementary groups, no new privileges).

    Args:
        uid: The unprivileged uid.
        gid: Its group.
        keep_read_search: Keep CAP_DAC_READ_SEARCH (degraded backend only).
    """
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if keep_read_search:
        _prctl(_PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if keep_read_search:
        _keep_read_search()
        _prctl(_PR_SET_KEEPCAPS, 0)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("uid drop did not take effect")


def kill_uid_processes(wait_s: float = 1.0) -> None:
    """Kill every process of this (dedicated) uid except ourselves, and reap ours.

    ``kill(-1, SIGKILL)`` from an unprivileged uid reaches exactly the processes
    of that uid, so a fork bomb's survivors or a daemon a tool left behind are
    all gone after this. The kernel delivers it to all of them at once (a process
    with a pending SIGKILL cannot fork), so one call suffices; we then reap the
    ones re-parented to us. Only ever called under a dedicated sandbox uid.

    Args:
        wait_s: How long to keep reaping dying children.
    """
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)
    end = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > end:
                return
            time.sleep(0.001)


def reap_children() -> None:
    """Reap every exited child (orphans are re-parented to us: we are a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _supervise(worker: int, config: dict[str, Any]) -> None:
    """Stay root next to the worker; when it ends, kill what it left and exit."""

    def on_term(signum: int, frame: Any) -> None:
        raise InterruptedError

    signal.signal(signal.SIGTERM, on_term)
    status = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            break
        except ChildProcessError:
            break
        if pid == worker:
            break
    # The worker is gone (or we were asked to stop): a helper under the sandbox
    # uid kills everything of that uid, since root here may lack CAP_KILL.
    helper = os.fork()
    if helper == 0:
        try:
            drop_privileges(config["uid"], config["gid"])
            kill_uid_processes(0.0)
            time.sleep(0.01)
            kill_uid_processes(0.0)
        finally:
            os._exit(0)
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.005)
    code = os.waitstatus_to_exitcode(status) if status else 0
    os._exit(code if code >= 0 else 128 - code)


# ---------------------------------------------------------------------------
# Landlock: what a call may read and write.
# ---------------------------------------------------------------------------

# Landlock (Linux >= 5.13) restricts a process's file accesses without
# privileges. Each restriction is a layer that the process and its descendants
# keep for good; an access must be allowed by every layer. A rule only ever
# allows, beneath one path. Syscall numbers are the same on every architecture.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
#: Every filesystem access that writes: files, directories, special files, links.
_LANDLOCK_WRITES_V1 = sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))
_LANDLOCK_REFER = 1 << 13  # ABI 2: moving or linking files between directories
_LANDLOCK_TRUNCATE = 1 << 14  # ABI 3
_LANDLOCK_WRITE_FILE = 1 << 1
_LANDLOCK_READ_FILE = 1 << 2
_LANDLOCK_READ_DIR = 1 << 3  # listing a directory


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64),)


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    version = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(0, int(version))


def _landlock_writes(abi: int) -> int:
    """Every write access the kernel's Landlock ABI can restrict."""
    handled = _LANDLOCK_WRITES_V1
    if abi >= 2:
        handled |= _LANDLOCK_REFER
    if abi >= 3:
        handled |= _LANDLOCK_TRUNCATE
    return handled


def landlock_ruleset(
    handled: int,
    rules: Iterable[tuple[str, int]],
    optional: Iterable[tuple[str, int]] = (),
) -> int:
    """Build a Landlock ruleset that allows, of the ``handled`` accesses, only ``rules``.

    Args:
        handled: The accesses the ruleset restricts.
        rules: ``(path, accesses)``: each allows its accesses beneath ``path``.
        optional: More rules, skipped when their path is gone or out of our
            reach (an entry removed since it was listed): what cannot be
            reached needs no allowing.

    Returns:
        The ruleset's fd (apply it with :func:`landlock_enforce`; close it after).

    Raises:
        OSError: Landlock is unavailable, or refused a rule.
    """
    if landlock_abi() < 1:
        raise OSError("Landlock is not available in this kernel")
    assert _libc is not None
    attr = _RulesetAttr(handled)
    ruleset = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0
    )
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path, access, required in [
            *((path, access, True) for path, access in rules),
            *((path, access, False) for path, access in optional),
        ]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except (FileNotFoundError, PermissionError):
                if required:
                    raise
                continue
            try:
                rule = _PathBeneathAttr(access & handled, fd)
                if _libc.syscall(
                    _SYS_LANDLOCK_ADD_RULE,
                    ruleset,
                    _LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.byref(rule),
                    0,
                ):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def landlock_enforce(ruleset: int) -> None:
    """Restrict this process (and all it starts) by ``ruleset``, for good.

    Raises:
        OSError: The kernel refused.
    """
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    assert _libc is not None
    if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")


def readable_except(
    hidden: Iterable[str], dir_access: int, file_access: int
) -> tuple[list[tuple[str, int]], list[str]]:
    """Rules allowing access to everything visible except what lies beneath ``hidden``.

    Landlock rules only allow, so "all but these" becomes: each entry of each
    ancestor of a hidden path, except the hidden paths and the ancestors
    themselves (whose listing stays refused). Symbolic links are skipped: what
    they point to is allowed or not under its own path.

    Args:
        hidden: Real (resolved) absolute paths.
        dir_access: Accesses allowed for a directory entry.
        file_access: Accesses allowed for any other entry.

    Returns:
        ``(rules, ancestors)``: the rules, and the directories they enumerate
        (an entry added to one of them later is not covered).
    """
    hidden = set(hidden)
    ancestors: set[str] = set()
    for path in hidden:
        parent = os.path.dirname(path)
        while parent not in ancestors:
            ancestors.add(parent)
            parent = os.path.dirname(parent)
    rules: list[tuple[str, int]] = []
    for directory in sorted(ancestors):
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.path in ancestors or entry.path in hidden or entry.is_symlink():
                        continue
                    is_dir = entry.is_dir(follow_symlinks=False)
                    rules.append((entry.path, dir_access if is_dir else file_access))
        except OSError:
            continue  # unreadable to us: nothing beneath it is allowed then
    return rules, sorted(ancestors)


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


# ---------------------------------------------------------------------------
# Denied packages: refused at import time and, with Landlock, unreadable.
# ---------------------------------------------------------------------------

# The static check (a tool's declared dependencies and its import statements)
# misses importlib.import_module("req" + "uests"), and the tool environment
# sees the host's site-packages, where a denied package may well be installed
# (requests comes with langchain). So each call also gets an import hook, and,
# where Landlock works, the files of denied packages in every package
# directory become unreadable. What remains possible, and is why the deny list
# is a policy, not a security boundary: a copy of a denied package somewhere
# else on disk under another name (vendored copies are refused by name only
# when they sit in a ``_vendor``-like package), re-implementing what it does,
# and, on kernels without Landlock (< 5.13), removing the hook from
# ``sys.meta_path``. Packages the runner itself has loaded (pydantic and its
# dependencies) and the standard library cannot be denied.

#: Package directories that vendor other packages (``pip._vendor.requests``).
_VENDOR_DIRS = frozenset({"_vendor", "vendor", "_vendored", "vendored", "extern", "_extern"})
#: Extensions of files Python imports a module from.
_MODULE_SUFFIXES = ("py", "pyc", "so", "pyd")
#: Where system Pythons keep packages a tool could add to ``sys.path`` itself.
_SYSTEM_PACKAGE_DIRS = (
    "/usr/lib/python3/dist-packages",
    "/usr/local/lib/python3/dist-packages",
    f"/usr/lib/python3.{sys.version_info.minor}/site-packages",
    f"/usr/lib/python3.{sys.version_info.minor}/dist-packages",
    f"/usr/local/lib/python3.{sys.version_info.minor}/site-packages",
    f"/usr/local/lib/python3.{sys.version_info.minor}/dist-packages",
)


def canonical_distribution(name: str) -> str:
    """Normalise a distribution name as PEP 503 does (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _module_roots(files: Iterable[Any]) -> set[str]:
    """The importable names a distribution's file list (its RECORD) provides.

    A name is the first package level with an ``__init__.py``, so the portion of
    a namespace package (``google.cloud.storage``) is named, not the namespace
    (``google``) that other distributions share.
    """
    paths = {tuple(getattr(item, "parts", ())) for item in files}
    roots: set[str] = set()
    for parts in paths:
        if (
            not parts
            or parts[0] in ("..", "__pycache__")
            or parts[0].endswith((".dist-info", ".egg-info", ".data"))
        ):
            continue
        for depth in range(1, len(parts)):
            if (*parts[:depth], "__init__.py") in paths:
                roots.add(".".join(parts[:depth]))
                break
        else:
            stem, _, suffix = parts[-1].partition(".")
            if stem.isidentifier() and suffix.rsplit(".", 1)[-1] in _MODULE_SUFFIXES:
                roots.add(".".join((*parts[:-1], stem)))
    return roots


class DeniedImportFinder:
    """A ``sys.meta_path`` finder that refuses the modules of denied distributions.

    Installed first on ``sys.meta_path`` in each call's child. Pure Python can
    take it out again, so it is a clear message and a first line, not the
    boundary: with Landlock the files of denied packages are unreadable too.
    """

    def __init__(self, modules: dict[str, str]) -> None:
        """Remember what to refuse.

        Args:
            modules: Module name (``requests``, ``google.cloud.storage``) -> the
                denied distribution that provides it.
        """
        self.modules = dict(modules)

    def denied(self, fullname: str) -> str | None:
        """Return why ``fullname`` may not be imported, or None when it may."""
        parts = fullname.split(".")
        for start in range(len(parts)):
            # The module itself, or a copy vendored inside another package.
            if start and parts[start - 1] not in _VENDOR_DIRS:
                continue
            for end in range(start + 1, len(parts) + 1):
                name = ".".join(parts[start:end])
                distribution = self.modules.get(name)
                if distribution is None:
                    continue
                copy = f" (a copy of {name!r} vendored inside another package)" if start else ""
                return (
                    f"importing {fullname!r}{copy} is refused: it comes from the distribution "
                    f"{distribution!r}, which is on the deny list of this tool store; use the "
                    "standard library or an allowed package instead"
                )
        return None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        """Refuse a denied module; leave every other one to the next finders.

        Raises:
            DeniedImportError: ``fullname`` belongs to a denied distribution.
        """
        reason = self.denied(fullname)
        if reason is not None:
            raise DeniedImportError(reason, name=fullname)
        return None


class DeniedPackages:
    """The deny list as seen inside the sandbox: module names, files, Landlock layer.

    Built once per worker, after warm-up. The Landlock layer (``ruleset``) lets
    a call read every file except those of denied packages in the package
    directories, so removing the import hook does not make them importable.
    Landlock can only allow, so the layer enumerates the entries of the
    directories holding denied packages; when one of those directories (or a
    package directory) changes, e.g. when a dependency is installed into the
    tool environment, :meth:`stale` says so and the worker rebuilds the layer
    before the next call.

    Attributes:
        modules: Module name -> the denied distribution that provides it.
        hidden: Real paths made unreadable.
        ruleset: Fd of the Landlock ruleset, or -1 (no Landlock, or nothing to hide).
        error: Why the layer could not be built ('' if it could, or was not needed).
    """

    def __init__(self, distributions: Sequence[str]) -> None:
        """Find the denied distributions' modules and build the Landlock layer.

        Args:
            distributions: Denied distribution names (PyPI names).
        """
        self.distributions = sorted({canonical_distribution(d) for d in distributions if d})
        self.modules: dict[str, str] = {}
        self.hidden: list[str] = []
        self.ruleset = -1
        self.error = ""
        self._watched: dict[str, int] = {}
        self.refresh()

    @staticmethod
    def package_dirs() -> list[str]:
        """Real paths of the directories packages are imported from here, or could be."""
        found: list[str] = []
        for path in [*sys.path, *_SYSTEM_PACKAGE_DIRS]:
            real = os.path.realpath(path) if path else ""
            if real and real not in found and os.path.isdir(real):
                found.append(real)
        return found

    def refresh(self) -> None:
        """(Re)compute the modules, the hidden files and the Landlock layer."""
        import importlib.metadata  # only when there is a deny list

        if self.ruleset >= 0:
            os.close(self.ruleset)
            self.ruleset = -1
        package_dirs = self.package_dirs()
        modules: dict[str, str] = {}
        for name in self.distributions:
            roots: set[str] = set()
            for dist in importlib.metadata.distributions(name=name, path=package_dirs):
                files = dist.files
                if files is not None:
                    roots |= _module_roots(files)
                else:
                    text = dist.read_text("top_level.txt") or ""
                    roots |= {line.strip() for line in text.splitlines() if line.strip()}
            if not roots:  # installed nowhere: its import name is most likely its own
                roots.add(name.replace("-", "_"))
            for root in roots:
                # The standard library and what the runner itself runs on
                # (pydantic and its dependencies, loaded by now) can never be denied.
                if root.split(".")[0] in sys.stdlib_module_names or root in sys.modules:
                    continue
                modules.setdefault(root, name)
        self.modules = modules
        self.hidden = self._files_of(modules, package_dirs)
        watched = list(package_dirs)
        self.error = ""
        if self.hidden and landlock_abi() >= 1:
            rules, ancestors = readable_except(
                self.hidden, _LANDLOCK_READ_FILE, _LANDLOCK_READ_FILE
            )
            watched += ancestors
            try:
                self.ruleset = landlock_ruleset(_LANDLOCK_READ_FILE, (), optional=rules)
            except OSError as exc:
                self.error = f"cannot make the denied packages unreadable: {exc}"
        self._watched = {}
        for directory in watched:
            with contextlib.suppress(OSError):
                self._watched[directory] = os.stat(directory).st_mtime_ns

    @staticmethod
    def _files_of(modules: dict[str, str], package_dirs: Sequence[str]) -> list[str]:
        """The files and directories of ``modules`` in ``package_dirs`` (real paths)."""
        hidden: set[str] = set()
        listings: dict[str, list[str]] = {}

        def listing(directory: str) -> list[str]:
            if directory not in listings:
                try:
                    listings[directory] = os.listdir(directory)
                except OSError:
                    listings[directory] = []
            return listings[directory]

        for module in modules:
            *package, base = module.split(".")
            for root in package_dirs:
                parent = os.path.join(root, *package)
                for directory in (parent, os.path.join(parent, "__pycache__")):
                    for name in listing(directory):
                        if name == base or (
                            name.startswith(base + ".")
                            and name.rsplit(".", 1)[-1] in _MODULE_SUFFIXES
                        ):
                            hidden.add(os.path.realpath(os.path.join(directory, name)))
        return sorted(hidden)

    def stale(self) -> bool:
        """Whether a watched directory changed since the layer was built."""
        for directory, mtime in self._watched.items():
            try:
                if os.stat(directory).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def finder(self) -> DeniedImportFinder:
        """A fresh import hook for these modules."""
        return DeniedImportFinder(self.modules)


# ---------------------------------------------------------------------------
# Per-call scratch and process counts.
# ---------------------------------------------------------------------------


def _remove(path: str, device: int) -> None:
    """Delete ``path`` and all beneath it, unlocking directories a tool locked.

    Never crosses into another filesystem: what is mounted there (a bound
    workdir) is not ours to delete.
    """
    st = os.lstat(path)
    if st.st_dev != device:
        raise OSError(errno.EXDEV, f"{path} is another filesystem, left alone")
    if stat.S_ISDIR(st.st_mode):
        if st.st_mode & 0o700 != 0o700:
            os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)
        with os.scandir(path) as entries:
            names = [entry.path for entry in entries]
        for name in names:
            _remove(name, device)
        os.rmdir(path)
    else:
        os.unlink(path)


def empty_directory(path: str | os.PathLike[str], keep: Iterable[str] = ()) -> None:
    """Remove everything inside ``path`` but the paths in ``keep``, keeping ``path`` itself.

    Kept directories on the same filesystem are emptied in turn (bubblewrap
    creates the parents of a workdir bound beneath /tmp; a tool may write in
    them); nothing on another filesystem is ever touched.

    Args:
        path: The directory.
        keep: Paths beneath it (as ``os.path.join`` spells them) to keep.

    Raises:
        OSError: Something could not be removed, or lies on another
            filesystem without being kept, or the tree is absurdly deep.
    """
    kept = set(keep)
    top = os.fspath(path)
    device = os.lstat(top).st_dev

    def empty(directory: str) -> None:
        with os.scandir(directory) as entries:
            names = [entry.path for entry in entries]
        for name in names:
            if name not in kept:
                _remove(name, device)
                continue
            st = os.lstat(name)
            if st.st_dev == device and stat.S_ISDIR(st.st_mode):
                empty(name)

    try:
        empty(top)
    except RecursionError:
        raise OSError(errno.ELOOP, f"{top} is nested too deeply to empty") from None


def skeleton(directory: str) -> dict[str, int | None]:
    """What lies in ``directory`` now (bubblewrap's doing): path -> directory mode.

    The mode is None for what is not a directory of the same filesystem
    (a mount point, a file), which is kept but neither entered nor chmodded.
    """
    found: dict[str, int | None] = {}
    device = os.lstat(directory).st_dev

    def visit(path: str) -> None:
        st = os.lstat(path)
        same = st.st_dev == device and stat.S_ISDIR(st.st_mode)
        found[path] = stat.S_IMODE(st.st_mode) if same else None
        if same:
            with os.scandir(path) as entries:
                for entry in entries:
                    visit(entry.path)

    visit(directory)
    return found


#: Inode of the initial IPC namespace (``/proc/self/ns/ipc`` on the host).
_INITIAL_IPC_NAMESPACE = "ipc:[4026531839]"
_IPC_RMID = 0
_SHM_INFO = 14
_MSG_INFO = 12
_SEM_INFO = 19


class _ShmInfo(ctypes.Structure):
    _fields_ = (("used_ids", ctypes.c_int), ("counters", ctypes.c_ulong * 5))


class _MsgInfo(ctypes.Structure):
    _fields_ = (
        ("msgpool", ctypes.c_int),
        ("limits", ctypes.c_int * 6),
        ("msgseg", ctypes.c_ushort),
    )


class _SemInfo(ctypes.Structure):
    _fields_ = (("limits", ctypes.c_int * 7), ("semusz", ctypes.c_int), ("more", ctypes.c_int * 2))


def ipc_objects_exist() -> bool:
    """Whether any System V IPC object exists in this IPC namespace (three cheap calls)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    shm, msg, sem = _ShmInfo(), _MsgInfo(), _SemInfo()
    # SHM_INFO, MSG_INFO and SEM_INFO report how many objects are in use.
    if _libc.shmctl(0, _SHM_INFO, ctypes.byref(shm)) < 0 or shm.used_ids:
        return True
    if _libc.msgctl(0, _MSG_INFO, ctypes.byref(msg)) < 0 or msg.msgpool:
        return True
    return _libc.semctl(0, 0, _SEM_INFO, ctypes.byref(sem)) < 0 or sem.semusz > 0


def remove_ipc_objects() -> None:
    """Remove every System V shared memory segment, semaphore set and message queue.

    They outlive the processes that made them, so one call could leave data for
    the next. Only ever called in the sandbox's own IPC namespace, where every
    object is a call's.

    Raises:
        OSError: An object could not be removed.
    """
    if not ipc_objects_exist():
        return
    removers = {
        "shm": lambda ident: _libc.shmctl(ident, _IPC_RMID, None),
        "sem": lambda ident: _libc.semctl(ident, 0, _IPC_RMID),
        "msg": lambda ident: _libc.msgctl(ident, _IPC_RMID, None),
    }
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}", encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue  # no System V IPC in this kernel
        for row in rows:
            ident = int(row.split()[1])
            if remove(ident) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.EIDRM):
                raise OSError(ctypes.get_errno(), f"cannot remove System V {kind} {ident}")


def tasks_of_uid(uid: int) -> int:
    """Count the tasks (threads included) of real uid ``uid`` in ``/proc``, as RLIMIT_NPROC does."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as handle:
                text = handle.read()
        except OSError:
            continue
        real_uid = threads = None
        for line in text.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
                break
        if real_uid == uid:
            count += threads or 1
    return count


def nproc_counts_this_user_namespace() -> bool:
    """Whether RLIMIT_NPROC counts only this user namespace's tasks.

    Since Linux 5.14 the count is kept per user namespace: inside bubblewrap's
    (as a normal user) it counts the sandbox's own tasks, not all of the user's.
    """
    try:
        with open("/proc/self/uid_map", encoding="ascii") as handle:
            mapping = handle.read().split()
    except OSError:
        return False
    if mapping[:3] == ["0", "0", "4294967295"]:
        return False  # the initial user namespace: every task of the user counts
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(release) and (int(release[1]), int(release[2])) >= (5, 14)


def in_bubblewrap_pid_namespace() -> bool:
    """Whether this process runs in a pid namespace of its own, as bubblewrap makes.

    Checked before anything that acts on every visible process (``kill(-1)``,
    waiting for them all): there, every visible process belongs to this
    sandbox. Pid 1 is then bubblewrap's init, and our parent (or, above the
    supervisor, our grandparent); on the host the worker lies much deeper.
    """
    try:
        with open("/proc/1/cmdline", "rb") as handle:
            init = handle.read().split(b"\0", 1)[0]
        parent = os.getppid()
        if parent != 1:
            with open(f"/proc/{parent}/stat", "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return False
    return parent == 1 and os.path.basename(init) == b"bwrap"


# ---------------------------------------------------------------------------
# The worker: one forked child per request.
# ---------------------------------------------------------------------------


class _Capture:
    """Keeps the first ``limit`` bytes read from a pipe and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        """Keep what fits under the limit, count the rest."""
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        """Return the kept bytes as text, with a marker saying how much was cut."""
        text = self.data.decode("utf-8", "replace")
        if self.dropped:
            text += f"\n…[truncated {self.dropped} bytes]"
        return text


class _Spare:
    """A forked, pre-warmed child waiting for its request (fds are the worker's ends)."""

    def __init__(self, pid: int, request_w: int, out_r: int, err_r: int, res_r: int) -> None:
        self.pid = pid
        self.request_w = request_w
        self.out_r = out_r
        self.err_r = err_r
        self.res_r = res_r
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def discard(self) -> None:
        """Close our ends (the child sees end of input and exits) and kill it."""
        for fd in (self.request_w, self.out_r, self.err_r, self.res_r, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)


REQUEST_FD = 4


class Worker:
    """The long-lived process inside the sandbox that runs each request in a child.

    The child for the next request is forked and pre-warmed as soon as the
    previous answer is sent, so neither the fork nor pydantic's first-use page
    faults sit on the path of a call.
    """

    def __init__(self, config: dict[str, Any], proto_in: int, proto_out: int) -> None:
        self.config = config
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.dedicated = bool(config.get("dedicated_uid"))
        self.base_env = dict(config.get("env") or {})
        self.spare: _Spare | None = None
        # In bubblewrap's pid namespace every process we can see is the sandbox's.
        self.own_pid_namespace = bool(config.get("pid_namespace")) and (
            in_bubblewrap_pid_namespace()
        )
        # kill(-1) reaches exactly the processes of our uid that we can see.
        self.kills_all = self.own_pid_namespace or (
            self.dedicated and os.getuid() != 0 and os.getuid() == config.get("uid")
        )
        # Directories only this sandbox sees (bubblewrap's tmpfs): emptied after
        # each call, down to what bubblewrap put there (parents of bound paths).
        self.scratch = [d for d in config.get("private_scratch") or () if os.path.isdir(d)]
        self.skeleton: dict[str, int | None] = {}
        # The sandbox starts in the directory it binds: under a shared workspace
        # root, that root, beneath which each call's workdir lies.
        self.root = os.path.realpath(os.getcwd())
        self._outside_root: list[tuple[str, int]] | None = None
        if self.scratch and not config.get("oneshot"):
            for directory in self.scratch:
                self.skeleton.update(skeleton(directory))
            self.outside_root()  # bubblewrap: the few directories to list are its own
        # System V IPC objects outlive their processes: removed after each call,
        # but only in an IPC namespace of the sandbox's own.
        try:
            own_ipc = os.readlink("/proc/self/ns/ipc") != _INITIAL_IPC_NAMESPACE
        except OSError:
            own_ipc = False
        self.owns_ipc = bool(self.scratch) and self.own_pid_namespace and own_ipc
        denied = config.get("denied_packages")
        self.denied = DeniedPackages(denied) if denied else None

    def serve(self) -> None:
        """Answer requests until end of input (or after one, in one-shot mode)."""
        ready = {"ready": True, "uid": os.getuid(), "pid": os.getpid()}
        _write_all(self.proto_out, encode_frame(ready))
        oneshot = bool(self.config.get("oneshot"))
        if not oneshot:
            self.spare = self.fork_child()
        while True:
            request = read_frame(self.proto_in)
            if request is None:
                break
            if request.get("op") == "ping":
                response: dict[str, Any] = {"pong": True}
            else:
                response = self.handle(request)
            _write_all(self.proto_out, encode_frame(response))
            if oneshot or response.get("retire"):
                break
            reap_children()
            precompile(request.get("source"))
            self.spare = self.fork_child()
        if self.spare is not None:
            self.spare.discard()

    def fork_child(self) -> _Spare:
        """Fork the child that will run the next request, with its pipes."""
        request_r, request_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                self._child(request_r, out_w, err_w, res_w)
            finally:
                os._exit(70)
        for fd in (request_r, out_w, err_w, res_w):
            os.close(fd)
        return _Spare(pid, request_w, out_r, err_r, res_r)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one request in the child and turn whatever happened into a result."""
        limits = request.get("limits", {})
        timeout_s = float(request.get("timeout_s", 10.0))
        cap = int(request.get("output_bytes", 65536))
        result_cap = int(request.get("result_bytes", 16 << 20))
        started = time.monotonic()
        if self.denied is not None and self.denied.stale():
            # The package directories changed (an install): the spare hides what
            # was there before; rebuild the layer and fork a child that applies it.
            self.denied.refresh()
            if self.spare is not None:
                self.spare.discard()
                self.spare = None
        child, self.spare = self.spare, None
        try:
            if child is None:
                raise BrokenPipeError
            _write_all(child.request_w, encode_frame(request))
        except OSError:
            # The spare died (or there is none): start a fresh child.
            if child is not None:
                child.discard()
            reap_children()
            child = self.fork_child()
            _write_all(child.request_w, encode_frame(request))
        os.close(child.request_w)
        pid, pidfd = child.pid, child.pidfd
        stdout, stderr = _Capture(cap), _Capture(cap)
        result = _Capture(result_cap)
        streams = {child.out_r: stdout, child.err_r: stderr, child.res_r: result}
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        deadline = started + timeout_s
        timed_out = False
        status = None
        rusage = None
        open_fds = set(streams)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            events = poller.poll(min(remaining, 0.05 if pidfd is None else remaining) * 1000)
            exited = False
            for fd, _ in events:
                if fd == pidfd:
                    exited = True
                    continue
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    streams[fd].feed(chunk)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if pidfd is None:
                waited, st, usage = os.wait4(pid, os.WNOHANG)
                if waited:
                    status, rusage, exited = st, usage, True
            # The child closes its pipes right after writing its result, so we can
            # answer without waiting for its (slow) address-space teardown.
            if exited or not open_fds:
                break
        if timed_out:
            for target in (-pid, pid):
                with contextlib.suppress(OSError):
                    os.kill(target, signal.SIGKILL)
        delivered = not timed_out and not open_fds and bool(result.data)
        if status is None and not delivered:
            _, status, rusage = os.wait4(pid, 0)
        # Everything the call started dies with it.
        self.cleanup(pid)
        self._drain(streams, open_fds)
        for fd in (*streams, *([pidfd] if pidfd is not None else [])):
            os.close(fd)
        elapsed = time.monotonic() - started
        response = self._result(
            request, status, rusage, timed_out, result, limits, timeout_s, bytes(stderr.data)
        )
        response["outcome"]["stdout"] = stdout.text()
        response["outcome"]["stderr"] = stderr.text()
        response["outcome"]["duration_ms"] = elapsed * 1000.0
        # Then nothing of it may reach the next call, which may be another
        # episode's (last, so that its processes had time to start exiting). A
        # one-shot sandbox is torn down with everything in it instead.
        if self.scratch and not self.config.get("oneshot"):
            retire = self.reset_scratch(pid)
            if retire:
                # The host closes this worker; a fresh sandbox serves the next call.
                response["retire"] = retire
        return response

    def cleanup(self, pid: int) -> None:
        """Kill the call's process group and every stray we can reach.

        Strays are reachable under a dedicated uid, or in bubblewrap's pid
        namespace (as a normal user, where ``kill(-1)`` would otherwise reach
        the user's own processes). Dying processes are reaped here when already
        dead, else later (see :meth:`reset_scratch`).
        """
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        if self.kills_all:
            kill_uid_processes(0.0)
        reap_children()

    def reset_scratch(self, pid: int) -> str:
        """Empty the private ``/tmp`` and ``/dev/shm`` (and System V IPC) for the next call.

        Args:
            pid: The call's child.

        Returns:
            '' when done, else why this worker must not serve another call.
        """
        # Every process of the call has been sent SIGKILL, but one still inside a
        # system call may yet create a file: empty only once none can any more.
        deadline = time.monotonic() + 2.0
        while not self.call_is_over(pid):
            if time.monotonic() > deadline:
                return "processes of the last call did not die, so its scratch stays dirty"
            time.sleep(0.0002)
        try:
            for directory in self.scratch:
                empty_directory(directory, self.skeleton)
            for path, mode in self.skeleton.items():
                if mode is not None and stat.S_IMODE(os.lstat(path).st_mode) != mode:
                    os.chmod(path, mode)  # a locked parent would lock the next call out
            if self.owns_ipc:
                remove_ipc_objects()
        except OSError as exc:
            return f"cannot reset the private scratch directories after a call: {exc}"
        return ""

    def call_is_over(self, pid: int) -> bool:
        """Whether no process of the call run by child ``pid`` can still act (all got SIGKILL).

        In our own pid namespace every process but bubblewrap's init, our parent
        and ourselves is the call's: each task must be dead or exiting (a task
        that started exiting has finished its last system call). Waiting for that
        instead of reaping spares the call the slow teardown of its address space.
        Elsewhere we reap: we are the subreaper of all of them, so "no child
        left" means none left.
        """
        if not self.own_pid_namespace:
            while True:
                try:
                    waited, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return True
                if waited == 0:
                    return False
        # Pids (of threads too) are handed out in order: if the last one handed out
        # in this namespace is still the child's, the call started no process or
        # thread, and only the child itself needs a look; else every process does.
        try:
            with open("/proc/sys/kernel/ns_last_pid", "rb") as handle:
                alone = int(handle.read()) == pid
        except (OSError, ValueError):
            alone = False
        ours = {1, os.getpid(), os.getppid()}
        for entry in [str(pid)] if alone else os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in ours:
                continue
            try:
                tasks = [entry] if alone else os.listdir(f"/proc/{entry}/task")
            except OSError:
                continue  # gone
            for task in tasks:
                try:
                    with open(f"/proc/{entry}/task/{task}/stat", "rb") as handle:
                        fields = handle.read().rsplit(b")", 1)[1].split()
                except (OSError, IndexError):
                    continue  # gone
                if fields[0] not in (b"Z", b"X") and not int(fields[6]) & _PF_EXITING:
                    return False
        return True

    def outside_root(self) -> list[tuple[str, int]]:
        """Landlock rules letting a call read everything except the workspace root."""
        if self._outside_root is None:
            rules, _ = readable_except(
                [self.root], _LANDLOCK_READ_FILE | _LANDLOCK_READ_DIR, _LANDLOCK_READ_FILE
            )
            self._outside_root = rules
        return self._outside_root

    def confine(self, workdir: str) -> None:
        """Let this call read and write, under the workspace root, only ``workdir``; for good.

        Outside the root everything visible stays readable (the system, Python,
        the tool environment, /proc); the private scratch directories and
        ``workdir`` are writable, and the files in /dev (``/dev/null``).

        Raises:
            OSError: ``workdir`` does not lie under the root, or Landlock failed.
        """
        real = os.path.realpath(workdir)
        if real == self.root or not _within(real, self.root):
            raise OSError(f"{workdir} does not lie under this sandbox's root {self.root}")
        abi = landlock_abi()
        reads = _LANDLOCK_READ_FILE | _LANDLOCK_READ_DIR
        handled = _landlock_writes(abi) | reads
        rules = [(real, handled), *((directory, handled) for directory in self.scratch)]
        if os.path.isdir("/dev"):
            device = reads | _LANDLOCK_WRITE_FILE | (_LANDLOCK_TRUNCATE if abi >= 3 else 0)
            rules.append(("/dev", device))
        ruleset = landlock_ruleset(handled, rules, optional=self.outside_root())
        try:
            landlock_enforce(ruleset)
        finally:
            os.close(ruleset)

    def process_limit(self, processes: Any) -> int | None:
        """The RLIMIT_NPROC of a call: room for ``processes`` more tasks of its uid.

        Under a dedicated uid the uid is the sandbox's alone: the limit is
        ``processes``. As a normal user every sandbox shares the user's uid and
        the kernel counts the user's tasks: in bubblewrap's user namespace
        (Linux >= 5.14) only those of this namespace, i.e. of this sandbox,
        which is exactly what we can see; with the degraded backend all of the
        user's tasks on the machine. Either way the call may start
        ``processes`` tasks on top of those counted now. The trade-off of the
        degraded case: the user's other processes starting during the call eat
        into the margin (the tool then sees EAGAIN early), and calls running at
        once each get their own margin.

        Returns:
            The limit, or None when it cannot mean anything: as root (not
            enforced), or in a pid namespace whose tasks are not what is counted.
        """
        if processes is None:
            return None
        if self.dedicated:
            return int(processes)
        if os.getuid() == 0:
            return None
        if self.config.get("pid_namespace") and not nproc_counts_this_user_namespace():
            return None
        limit = tasks_of_uid(os.getuid()) + int(processes)
        _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        return limit if hard == resource.RLIM_INFINITY else min(limit, hard)

    @staticmethod
    def _drain(streams: dict[int, _Capture], open_fds: set[int]) -> None:
        # Writers are dead now; read what is left, but never wait long for a
        # pipe some unkillable process still holds.
        end = time.monotonic() + 0.5
        for fd in list(open_fds):
            os.set_blocking(fd, False)
            while time.monotonic() < end:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
                    if not ready:
                        break
                    continue
                if not chunk:
                    break
                streams[fd].feed(chunk)

    def _result(
        self,
        request: dict[str, Any],
        status: int | None,
        rusage: Any,
        timed_out: bool,
        result: _Capture,
        limits: dict[str, Any],
        timeout_s: float,
        stderr: bytes = b"",
    ) -> dict[str, Any]:
        if result.dropped:
            failure = outcome(
                INVALID_OUTPUT,
                f"the output is larger than the sandbox's limit of {result.limit} bytes of JSON "
                f"({result.limit + result.dropped} bytes)",
            )
        elif timed_out:
            failure = outcome(
                TIMEOUT,
                f"the call exceeded the wall-clock limit of {timeout_s:g} s and was killed",
            )
        elif result.data:
            try:
                return json.loads(result.data.decode("utf-8", "surrogatepass"))
            except ValueError:
                failure = outcome(CRASH, "the tool process returned a corrupt result")
        else:
            failure = self._death(status or 0, rusage, limits, stderr)
        test = None
        if request.get("op") == "test":
            passed, message = verdict(request.get("case") or {}, failure)
            test = {"passed": passed, "message": message}
        return {"outcome": failure, "test": test}

    @staticmethod
    def _death(
        status: int, rusage: Any, limits: dict[str, Any], stderr: bytes = b""
    ) -> dict[str, Any]:
        """Explain how a child that returned no result ended."""
        cpu_used = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
        cpu_limit = float(limits.get("cpu_s") or 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            if sig == signal.SIGXCPU or (
                sig == signal.SIGKILL and cpu_limit and cpu_used >= cpu_limit - 0.05
            ):
                return outcome(
                    TIMEOUT,
                    f"the call exceeded the CPU time limit of {cpu_limit:g} s and was killed",
                )
            if sig in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGKILL) and any(
                marker in stderr for marker in _OUT_OF_MEMORY_MARKERS
            ):
                # Native code that cannot allocate aborts instead of raising MemoryError.
                return outcome(
                    MEMORY,
                    f"the tool process died from {name} after running out of memory (limit "
                    f"{limits.get('memory_mb')} MiB of address space)",
                )
            if sig == signal.SIGXFSZ:
                return outcome(
                    CRASH,
                    "the tool was killed for writing a file larger than the sandbox's limit of "
                    f"{limits.get('file_size_mb')} MiB",
                )
            description = {
                signal.SIGSEGV: "segmentation fault",
                signal.SIGBUS: "bus error",
                signal.SIGILL: "illegal instruction",
                signal.SIGFPE: "floating-point exception",
                signal.SIGABRT: "aborted",
                signal.SIGKILL: "killed",
            }.get(sig, "signal")
            return outcome(CRASH, f"the tool process died from signal {name} ({description})")
        code = os.waitstatus_to_exitcode(status)
        return outcome(
            CRASH,
            f"the tool process exited with status {code} without returning a result "
            "(os._exit() or a native crash)",
        )

    def _child(self, request_r: int, out_w: int, err_w: int, res_w: int) -> None:
        """Become a call's process: wait for the request, apply limits, run the tool."""
        os.setpgid(0, 0)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # Only the worker must stay undumpable; the call's own /proc entries
        # should behave normally for the tool (fd listing, /proc/self/...).
        _prctl(_PR_SET_DUMPABLE, 1)
        problem = ""
        if self.denied is not None and self.denied.error:
            problem = self.denied.error
        elif self.denied is not None and self.denied.ruleset >= 0:
            # Before the fds are closed below (the ruleset's among them), and in
            # idle time: the worker checks before each call that it is not stale.
            try:
                landlock_enforce(self.denied.ruleset)
            except OSError as exc:
                problem = f"cannot make the denied packages unreadable: {exc}"
        # Move the pipe ends out of the way first so the dup2s below cannot clobber them.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 32) for fd in (out_w, err_w, res_w, request_r)]
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, target in zip(high, (1, 2, RESULT_FD, REQUEST_FD), strict=True):
            os.dup2(fd, target, inheritable=target < RESULT_FD)
        # Nothing else of the worker (its protocol pipes above all) stays reachable.
        os.closerange(REQUEST_FD + 1, 1 << 20)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        # Pre-warming only pays off in idle time; with a request waiting, skip it.
        if not select.select([REQUEST_FD], [], [], 0)[0]:
            prewarm()
        request = read_frame(REQUEST_FD)
        os.close(REQUEST_FD)
        if request is None:  # the worker is shutting down
            os._exit(0)
        limits = request.get("limits", {})
        mib = 1 << 20
        settings = [
            (resource.RLIMIT_CORE, 0, 0),
            # POSIX message queues outlive the call, and no listing of them is
            # reachable here to remove them after it: a tool may create none.
            (resource.RLIMIT_MSGQUEUE, 0, 0),
            (resource.RLIMIT_CPU, limits.get("cpu_s"), None),
            (resource.RLIMIT_AS, limits.get("memory_mb"), mib),
            (resource.RLIMIT_FSIZE, limits.get("file_size_mb"), mib),
            (resource.RLIMIT_NOFILE, limits.get("open_files"), 1),
            (resource.RLIMIT_NPROC, self.process_limit(limits.get("processes")), 1),
        ]
        for limit, value, unit in settings:
            if value is None:
                continue
            if limit == resource.RLIMIT_CPU:
                soft = max(1, math.ceil(float(value)))
                resource.setrlimit(limit, (soft, soft + 1))
            elif unit == 0:
                resource.setrlimit(limit, (0, 0))
            else:
                amount = int(value) * unit
                resource.setrlimit(limit, (amount, amount))
        os.umask(0o002)
        os.environ.clear()
        os.environ.update(self.base_env)
        os.environ.update({str(k): str(v) for k, v in (request.get("secrets") or {}).items()})
        sys.argv = ["tool"]
        me = os.getpid()
        workdir = request.get("workdir")
        if workdir and not problem:
            # A worker shared by the workdirs under one root: this call may read
            # and write there in its own workdir only, or it does not run.
            try:
                os.chdir(workdir)
                os.environ["HOME"] = workdir
                self.confine(workdir)
            except OSError as exc:
                problem = f"could not confine the call to its workdir: {exc}"
        try:
            if problem:
                response = {"outcome": outcome(SANDBOX, problem), "test": None}
            else:
                if self.denied is not None and self.denied.modules:
                    sys.meta_path.insert(0, self.denied.finder())
                response = execute(request)
        except BaseException as exc:  # even the reporting failed (e.g. memory)
            error = classify_exception(exc, limits)
            response = {"outcome": outcome(error.kind, error.message), "test": None}
        if os.getpid() != me:
            # A process the tool forked returned through our code: only the call's
            # own process may report.
            os._exit(0)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            data = json.dumps(response, ensure_ascii=False, default=repr).encode(
                "utf-8", "surrogatepass"
            )
        except BaseException as exc:
            data = json.dumps(
                {"outcome": outcome(INVALID_OUTPUT, f"the result cannot be encoded: {exc!r}")}
            ).encode()
        with contextlib.suppress(OSError):
            _write_all(RESULT_FD, data)
        # Closing the pipes tells the worker we are done before the exit teardown.
        os.closerange(0, RESULT_FD + 1)
        os._exit(0)


_WARM_UP_TOOL = """
import asyncio, collections, csv, datetime, decimal, functools, io, itertools, json, math, re
import statistics, string, textwrap
from enum import Enum
from typing import Literal, Optional
from pydantic import BaseModel, Field
__TOOL_META__ = {"name": "warm_up", "description": "Warms the worker up.", "dependencies": []}
class Color(str, Enum):
    RED = "red"
class Item(BaseModel):
    label: str = Field(description="label")
    when: Optional[datetime.date] = None
class InputModel(BaseModel):
    values: list[float] = Field(default_factory=list, description="numbers")
    items: list[Item] = []
    mapping: dict[str, int] = {}
    mode: Literal["a", "b"] = "a"
    color: Color = Color.RED
class OutputModel(BaseModel):
    total: float
    names: list[str]
def run(input: InputModel) -> OutputModel:
    return OutputModel(total=sum(input.values), names=[i.label for i in input.items])
"""

_WARM_UP_SIGNATURE_TOOL = """
def run(text: str, sep: str = ",", count: int | None = None) -> list[str]:
    return text.split(sep)
"""


def warm_up() -> None:
    """Load pydantic and everything a typical tool needs once, before any fork.

    pydantic imports much of itself lazily on the first model; doing that here
    means each forked child starts with it already in memory (a few ms per call
    instead of ~150 ms).
    """
    from pydantic import ValidationError

    for source, payload in (
        (_WARM_UP_TOOL, {"values": [1, 2], "items": [{"label": "x", "when": "2024-01-02"}]}),
        (_WARM_UP_SIGNATURE_TOOL, {"text": "a,b"}),
    ):
        tool = LoadedTool(source)
        tool.describe() if tool.meta else None
        tool.input_model.model_json_schema()
        tool.output_model.model_json_schema()
        tool.call(payload)
        try:
            tool.input_model.model_validate({"values": "x"})
        except ValidationError as exc:
            format_validation_error(exc, "warm-up")
    for name in [n for n in sys.modules if n.startswith("insitu_tool_")]:
        del sys.modules[name]
    for key in [k for k in linecache.cache if str(k).startswith("<tool:")]:
        del linecache.cache[key]


_PREWARM_TOOL = """
from pydantic import BaseModel, Field
class InputModel(BaseModel):
    values: list[float] = Field(description="numbers")
    label: str = ""
class OutputModel(BaseModel):
    total: float
    label: str
def run(input: InputModel) -> OutputModel:
    return OutputModel(total=sum(input.values), label=input.label)
"""


def prewarm() -> None:
    """Touch, in a fresh child, the memory a typical tool call touches.

    The child shares the worker's pages copy-on-write; the first model a child
    builds faults in many of them. Doing it before the request arrives takes
    those faults off the call's path.
    """
    try:
        tool = LoadedTool(_PREWARM_TOOL)
        tool.call({"values": [1.0, 2.0], "label": "x"})
        sys.modules.pop(tool.module.__name__, None)
        linecache.cache.pop(tool.filename, None)
    except Exception:
        pass


def main(argv: list[str]) -> None:
    """Entry point inside the sandbox: ``serve <json config>``.

    Args:
        argv: ``sys.argv``.
    """
    if len(argv) < 3 or argv[1] != "serve":
        sys.stderr.write("usage: runner serve <json config>\n")
        sys.exit(2)
    config = json.loads(argv[2])
    sys.dont_write_bytecode = True
    # Keep the protocol on private fds; fd 1 then points at stderr so a stray
    # print can never corrupt a frame.
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    uid = config.get("uid")
    # Only a uid drop done here makes the uid ours to sweep with kill(-1).
    config["dedicated_uid"] = False
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if config.get("pdeathsig"):
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if uid is not None and os.getuid() == 0:
        worker = os.fork()
        if worker:
            os.close(proto_in)
            os.close(proto_out)
            _supervise(worker, config)
            return
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        drop_privileges(uid, config["gid"], bool(config.get("keep_read_search")))
        config["dedicated_uid"] = True
    # A ptrace-capable tool must not be able to tamper with the worker.
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if config.get("dedicated_uid") and os.getuid() != 0:
        kill_uid_processes(1.0)  # leftovers of an earlier worker with this uid
    if config.get("oneshot"):
        import pydantic  # noqa: F401 - one call only: warming up would not pay off

        Worker(config, proto_in, proto_out).serve()
        return
    warm_up()
    # Objects that exist now are never collected: keeping the collector off
    # them spares each forked child copy-on-write faults on the whole heap.
    gc.collect()
    gc.freeze()
    Worker(config, proto_in, proto_out).serve()


if __name__ == "__main__":
    main(sys.argv)
