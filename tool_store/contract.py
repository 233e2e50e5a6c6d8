"""The tool contract: what an insitu tool is.

A tool is one Python source module plus metadata. The module declares
``__TOOL_META__`` (name, description, dependencies, and optionally secrets and
network), the Pydantic models ``InputModel`` / ``OutputModel`` and the entrypoint
``def run(input: InputModel) -> OutputModel``. This is a superset of the tool
format published by Yunjue Agent, so a Yunjue tool file is an insitu tool as is.
A typed signature (``def run(text: str) -> int``) is accepted instead of the two
models; the schemas are then derived from the signature.

This module holds the data models of the contract and the *static* checks that
run before any code does (:func:`validate_source`). Deriving the JSON Schemas
needs the module to be imported, which only ever happens in the sandbox
(``Sandbox.describe``); :func:`build_spec` combines both.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from insitu import pyast
from insitu.tool_store.text import schema_inputs, tool_text

#: ``verb_object``: lower snake case, at least two words, starting with a letter.
TOOL_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")
#: PEP 508 distribution name, optionally followed by extras/version specifiers.
REQUIREMENT_PATTERN = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\[[A-Za-z0-9,._ -]+\])?\s*"
    r"(?:(?:===|==|!=|~=|>=|<=|>|<)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*$"
)
SECRET_NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: Variables that are configuration of the sandboxed process, never secrets: the sandbox
#: sets them itself, and the host's values would steer the interpreter or the loader.
RESERVED_SECRET_NAMES = frozenset(
    {"PATH", "HOME", "PWD", "SHELL", "USER", "LOGNAME", "TERM", "TMPDIR", "TZ", "LANG", "LANGUAGE"}
)
RESERVED_SECRET_PREFIXES = ("PYTHON", "LD_", "LC_")

MAX_SOURCE_BYTES = 64_000
MAX_SOURCE_LINES = 1_500
MAX_DESCRIPTION_CHARS = 1_200
MAX_TESTS = 20

#: Commands that install packages; a tool must declare dependencies instead.
PACKAGE_MANAGERS = frozenset(
    {
        "pip",
        "pip3",
        "conda",
        "mamba",
        "micromamba",
        "uv",
        "poetry",
        "pipx",
        "apt",
        "apt-get",
        "dpkg",
        "yum",
        "dnf",
        "apk",
        "brew",
        "npm",
        "easy_install",
    }
)
_INSTALL_TEXT = re.compile(
    r"\b(?:pip3?|uv\s+pip|conda|mamba|poetry|apt(?:-get)?|easy_install)\s+(?:install|add)\b"
)
#: Calls that start another program; their arguments are checked for package managers.
_PROCESS_CALLS = frozenset(
    {
        "subprocess.run",
        "subprocess.call",
        "subprocess.check_call",
        "subprocess.check_output",
        "subprocess.Popen",
        "os.system",
        "os.popen",
        "os.execv",
        "os.execvp",
        "os.execl",
        "os.execlp",
        "os.spawnl",
        "os.spawnv",
    }
)
#: Import names that differ from their distribution names, for the dependency check.
IMPORT_ALIASES: dict[str, str] = {
    "bs4": "beautifulsoup4",
    "cv2": "opencv-python",
    "dateutil": "python-dateutil",
    "docx": "python-docx",
    "fitz": "pymupdf",
    "google": "google-api-python-client",
    "magic": "python-magic",
    "PIL": "pillow",
    "pptx": "python-pptx",
    "serial": "pyserial",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "dotenv": "python-dotenv",
    "jwt": "pyjwt",
    "Crypto": "pycryptodome",
    "pypdf": "pypdf",
    "attr": "attrs",
}
#: Modules that every tool may import without declaring them (the contract's own).
ALWAYS_AVAILABLE = frozenset({"pydantic", "pydantic_core", "typing_extensions", "annotated_types"})


def normalize_distribution(name: str) -> str:
    """Normalise a distribution name as PEP 503 does (``Foo_Bar`` -> ``foo-bar``).

    Args:
        name: A distribution or requirement name.

    Returns:
        The lower-case name with runs of ``-_.`` replaced by ``-``.
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def is_reserved_secret_name(name: str) -> bool:
    """Whether ``name`` is sandbox configuration rather than a secret a tool may declare.

    Args:
        name: An environment variable name.

    Returns:
        True for the variables of :data:`RESERVED_SECRET_NAMES` and the prefixes
        of :data:`RESERVED_SECRET_PREFIXES`.
    """
    return name in RESERVED_SECRET_NAMES or name.startswith(RESERVED_SECRET_PREFIXES)


def requirement_name(requirement: str) -> str:
    """Return the normalised distribution name of a requirement string.

    Args:
        requirement: A PEP 508 requirement such as ``"pandas>=2"``.

    Returns:
        The normalised distribution name, e.g. ``"pandas"``.
    """
    return normalize_distribution(re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0])


class ToolTest(BaseModel):
    """One test case a tool carries with it, kept for later regression checks.

    The sandbox calls the tool with ``input``. With ``expect_error`` the test
    passes if the call fails with an exception or invalid input; otherwise the
    call must succeed, each key of ``expect`` must equal that key of the output
    (floats with relative tolerance 1e-6), and ``check``, a Python expression
    over ``output``, ``input``, ``math`` and ``approx``, must be true.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Short identifier of the case, unique within the tool.")
    input: dict[str, Any] = Field(description="Arguments passed to the tool (InputModel fields).")
    expect: dict[str, Any] | None = Field(
        default=None, description="Output fields that must equal these values."
    )
    check: str | None = Field(
        default=None,
        description="Python expression over output/input/math/approx that must be true.",
    )
    expect_error: bool = Field(
        default=False, description="The call must fail (exception or invalid input)."
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Text files (name -> content) written to the working directory first.",
    )

    @field_validator("files")
    @classmethod
    def _plain_file_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
                raise ValueError(
                    f"file name {name!r} must be a plain file name (letters, digits, . _ -)"
                )
        return value

    @field_validator("check")
    @classmethod
    def _check_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                pyast.parse(value, mode="eval")
            except SyntaxError as exc:
                raise ValueError(f"check is not a valid Python expression: {exc.msg}") from exc
        return value


class ToolSpec(BaseModel):
    """Everything that defines one version of a tool (the immutable part).

    The input and output schemas are derived from the module in the sandbox,
    never written by hand; ``source`` is the single place they come from.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="verb_object snake_case name, unique in a library.")
    description: str = Field(description="One paragraph: what the tool does and returns.")
    source: str = Field(description="The tool's Python module source.")
    input_schema: dict[str, Any] = Field(description="JSON Schema of the tool's input.")
    output_schema: dict[str, Any] = Field(description="JSON Schema of the tool's output.")
    dependencies: list[str] = Field(default_factory=list, description="PyPI requirements.")
    secrets: list[str] = Field(
        default_factory=list, description="Names of environment variables the tool may read."
    )
    network: bool = Field(default=False, description="Whether the tool needs network access.")
    tests: list[ToolTest] = Field(default_factory=list, description="The tool's own test cases.")

    def content_hash(self) -> str:
        """Return a stable SHA-256 over everything that defines this version.

        Returns:
            Hex digest; equal specs have equal hashes whatever their field order.
        """
        payload = self.model_dump_json(exclude_none=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def embedding_text(self) -> str:
        """Return the text retrieval indexes for this tool (``text.tool_text``).

        Names are split into words and the inputs' names and descriptions are
        appended, so that a query such as "average of numbers" meets
        ``compute_mean(values)``.

        Returns:
            A single line of text.
        """
        return tool_text(self.name, self.description, schema_inputs(self.input_schema))


class BuildCost(BaseModel):
    """What building one version of a tool cost: the model tokens its builder spent.

    Set on the episode-local record of a tool built, repaired or merged, and
    carried with its change into the commit, where the library keeps it per
    version (:mod:`insitu.tool_store.costs`) for the tool's return on investment.
    """

    input_tokens: int = Field(default=0, ge=0, description="Prompt tokens of every attempt.")
    output_tokens: int = Field(default=0, ge=0, description="Generated tokens of every attempt.")
    model: str | None = Field(default=None, description="The model that built it (prices).")
    role: str | None = Field(default=None, description="The role that built it.")

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ToolStats(BaseModel):
    """Usage statistics of a tool, across its versions (mutable)."""

    calls: int = 0
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    last_used: datetime | None = None
    creation_cost_tokens: int = 0


#: ``mcp``: a tool of an external MCP server (``insitu tools add-mcp``, tool_store/mcp_tools.py).
ToolOrigin = Literal["generated", "repaired", "merged", "imported", "manual", "mcp"]
ToolStatus = Literal["active", "archived"]


class ToolRecord(ToolSpec):
    """A stored version of a tool: the spec plus provenance and state.

    Versions are immutable; ``status``, ``locked`` and ``stats`` belong to the tool
    (its name) and are reported on the record of its current version.
    """

    version: int = Field(ge=1, description="1 for the first version, +1 per update.")
    hash: str = Field(description="content_hash() of the spec of this version.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    origin: ToolOrigin = "generated"
    created_by_task: str | None = Field(default=None, description="Task id that created it.")
    parent_version: int | None = Field(default=None, description="Version this one replaced.")
    merged_from: list[str] = Field(
        default_factory=list, description="name@version of the tools this one absorbed."
    )
    note: str | None = Field(default=None, description="Why this version exists.")
    status: ToolStatus = "active"
    locked: bool = False
    stats: ToolStats = Field(default_factory=ToolStats)
    build_cost: BuildCost | None = Field(
        default=None,
        description="Episode-local records: what building this version cost. The library "
        "keeps it per version (insitu.tool_store.costs), not on the records it returns.",
    )

    @property
    def ref(self) -> str:
        """``name@version``, the identifier used in lineage and state."""
        return f"{self.name}@{self.version}"

    def spec(self) -> ToolSpec:
        """Return the immutable spec part of this record."""
        return ToolSpec(**{k: getattr(self, k) for k in ToolSpec.model_fields})


# ---------------------------------------------------------------------------
# Static validation
# ---------------------------------------------------------------------------


class ContractError(ValueError):
    """A tool violates the contract; ``problems`` lists every violation found."""

    def __init__(self, problems: Sequence[str], name: str | None = None) -> None:
        self.problems = list(problems)
        self.name = name
        super().__init__(format_problems(self.problems, name))


def format_problems(problems: Sequence[str], name: str | None = None) -> str:
    """Render contract problems as one LLM-readable message.

    Args:
        problems: Individual violations, each a complete sentence.
        name: The tool's name, if known.

    Returns:
        A numbered list under a one-line heading.
    """
    who = f"tool '{name}'" if name else "the tool"
    lines = [f"{len(problems)} problem(s) with {who}:"]
    lines += [f"{i}. {p}" for i, p in enumerate(problems, 1)]
    return "\n".join(lines)


@dataclass
class StaticInfo:
    """What static validation learned from a module without running it."""

    meta: dict[str, Any]
    has_models: bool
    imports: set[str] = field(default_factory=set)


def _literal_meta(tree: ast.Module, problems: list[str]) -> dict[str, Any] | None:
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if any(isinstance(t, ast.Name) and t.id == "__TOOL_META__" for t in targets):
            try:
                meta = ast.literal_eval(value)
            except ValueError:
                problems.append(
                    f"line {node.lineno}: __TOOL_META__ must be a literal dict (plain strings, "
                    "lists and booleans only, no variables or calls)."
                )
                return None
            if not isinstance(meta, dict):
                problems.append(f"line {node.lineno}: __TOOL_META__ must be a dict.")
                return None
            return meta
    problems.append(
        "__TOOL_META__ is missing: define it at module level, e.g. "
        '__TOOL_META__ = {"name": "verb_object", "description": "...", "dependencies": []}.'
    )
    return None


def _check_meta(meta: dict[str, Any], expected_name: str | None, problems: list[str]) -> None:
    unknown = set(meta) - {"name", "description", "dependencies", "secrets", "network"}
    if unknown:
        problems.append(
            f"__TOOL_META__ has unknown key(s) {sorted(unknown)}; allowed: name, description, "
            "dependencies, secrets, network."
        )
    name = meta.get("name")
    if not isinstance(name, str) or not TOOL_NAME_PATTERN.match(name):
        problems.append(
            f"__TOOL_META__['name'] = {name!r} is not a verb_object snake_case name "
            "(lower case words joined by '_', at least two words, e.g. 'parse_csv_rows')."
        )
    elif expected_name is not None and name != expected_name:
        problems.append(
            f"__TOOL_META__['name'] is {name!r} but the requested tool is {expected_name!r}; "
            "they must match."
        )
    description = meta.get("description")
    if not isinstance(description, str) or not description.strip():
        problems.append("__TOOL_META__['description'] must be a non-empty string.")
    else:
        if "\n\n" in description.strip():
            problems.append("__TOOL_META__['description'] must be a single paragraph.")
        if len(description) > MAX_DESCRIPTION_CHARS:
            problems.append(
                f"__TOOL_META__['description'] is {len(description)} characters; "
                f"keep it under {MAX_DESCRIPTION_CHARS}."
            )
    deps = meta.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        problems.append("__TOOL_META__['dependencies'] must be a list of requirement strings.")
    else:
        for dep in deps:
            if not REQUIREMENT_PATTERN.match(dep.strip()):
                problems.append(
                    f"dependency {dep!r} is not a PyPI requirement (e.g. 'pandas' or "
                    "'requests>=2.31')."
                )
    secrets = meta.get("secrets", [])
    if not isinstance(secrets, list) or not all(
        isinstance(s, str) and SECRET_NAME_PATTERN.match(s) for s in secrets
    ):
        problems.append(
            "__TOOL_META__['secrets'] must be a list of environment variable names in upper "
            "case (e.g. ['WEATHER_API_KEY'])."
        )
    else:
        reserved = [s for s in secrets if is_reserved_secret_name(s)]
        if reserved:
            problems.append(
                f"__TOOL_META__['secrets'] names {', '.join(reserved)}: not a secret but "
                "configuration the sandbox sets itself (PATH, HOME, LANG, PYTHON*, LD_*, LC_* "
                "...); declare only credentials such as 'WEATHER_API_KEY'."
            )
        if len(set(secrets)) != len(secrets):
            problems.append("__TOOL_META__['secrets'] names a variable more than once.")
    if not isinstance(meta.get("network", False), bool):
        problems.append("__TOOL_META__['network'] must be true or false.")


def _dotted(node: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _strings_in(node: ast.AST) -> list[str]:
    return [
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _check_body(tree: ast.Module, problems: list[str]) -> tuple[bool, set[str]]:
    """Check the entrypoint, models and forbidden constructs; return (has_models, imports)."""
    top = {
        n.name: n
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    run = top.get("run")
    has_models = isinstance(top.get("InputModel"), ast.ClassDef) and isinstance(
        top.get("OutputModel"), ast.ClassDef
    )
    if not isinstance(run, ast.FunctionDef | ast.AsyncFunctionDef):
        problems.append(
            "the entrypoint is missing: define a module-level function "
            "`def run(input: InputModel) -> OutputModel`."
        )
    else:
        params = run.args.posonlyargs + run.args.args + run.args.kwonlyargs
        if run.args.vararg or run.args.kwarg:
            problems.append("run() must not take *args or **kwargs; declare every input.")
        if has_models:
            if len(params) != 1:
                problems.append(
                    f"run() takes {len(params)} parameters; with InputModel it must take exactly "
                    "one: `def run(input: InputModel) -> OutputModel`."
                )
        else:
            missing = [p.arg for p in params if p.annotation is None]
            if missing:
                problems.append(
                    "without InputModel/OutputModel classes, every run() parameter needs a type "
                    f"annotation; missing on: {', '.join(missing)}."
                )
            if run.returns is None:
                problems.append(
                    "without InputModel/OutputModel classes, run() needs a return annotation."
                )
            for cls in ("InputModel", "OutputModel"):
                if cls in top and not has_models:
                    problems.append(
                        f"{cls} is defined without its partner; define both InputModel and "
                        "OutputModel, or neither."
                    )
    imports: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            called = _dotted(node.func)
            if called in _PROCESS_CALLS or called.endswith(("pip.main", "ensurepip.bootstrap")):
                words = " ".join(_strings_in(node)).split()
                if called.endswith(("pip.main", "ensurepip.bootstrap")) or any(
                    w.strip("'\"").split("/")[-1] in PACKAGE_MANAGERS for w in words
                ):
                    problems.append(
                        f"line {node.lineno}: the tool runs a package manager ({called}); "
                        "declare packages in __TOOL_META__['dependencies'] instead."
                    )
    if {"pip", "ensurepip"} & imports:
        problems.append("the tool imports pip/ensurepip; declare dependencies instead.")
    return has_models, imports


def _undeclared_imports(imports: set[str], dependencies: Sequence[str]) -> list[str]:
    declared = {requirement_name(d) for d in dependencies}
    undeclared = []
    for module in sorted(imports):
        if (
            module in sys.stdlib_module_names
            or module in ALWAYS_AVAILABLE
            or module == "__future__"
        ):
            continue
        candidates = {
            normalize_distribution(module),
            normalize_distribution(IMPORT_ALIASES.get(module, module)),
        }
        if not candidates & declared:
            undeclared.append(module)
    return undeclared


def validate_source(source: str, *, expected_name: str | None = None) -> StaticInfo:
    """Check a tool module statically, without running any of it.

    Args:
        source: The module's source code.
        expected_name: The name the tool was requested under, if any.

    Returns:
        What was learned: the literal ``__TOOL_META__`` and whether the module
        defines ``InputModel``/``OutputModel``.

    Raises:
        ContractError: With every violation found, phrased so that a model can
            fix the code from the message alone.
    """
    problems: list[str] = []
    size = len(source.encode())
    if size > MAX_SOURCE_BYTES:
        problems.append(f"the module is {size} bytes; the limit is {MAX_SOURCE_BYTES}.")
    if source.count("\n") + 1 > MAX_SOURCE_LINES:
        problems.append(f"the module has more than {MAX_SOURCE_LINES} lines.")
    if _INSTALL_TEXT.search(source):
        problems.append(
            "the module contains a package install command; tools must not install packages, "
            "declare them in __TOOL_META__['dependencies']."
        )
    try:
        tree = pyast.parse(source, filename="<tool>")
    except SyntaxError as exc:
        line = (exc.text or "").rstrip()
        problems.append(
            f"syntax error at line {exc.lineno}, column {exc.offset}: {exc.msg}"
            + (f" in `{line.strip()}`" if line else "")
            + "."
        )
        raise ContractError(problems, expected_name) from None
    meta = _literal_meta(tree, problems)
    if meta is not None:
        _check_meta(meta, expected_name, problems)
    has_models, imports = _check_body(tree, problems)
    if meta is not None and isinstance(meta.get("dependencies", []), list):
        missing = _undeclared_imports(
            imports, [d for d in meta.get("dependencies", []) if isinstance(d, str)]
        )
        if missing:
            problems.append(
                f"the module imports {', '.join(repr(m) for m in missing)} but does not declare "
                "it in __TOOL_META__['dependencies'] (use the PyPI name, e.g. 'pyyaml' for yaml)."
            )
    name = meta.get("name") if isinstance(meta, dict) else None
    if problems:
        raise ContractError(problems, name if isinstance(name, str) else expected_name)
    assert meta is not None
    return StaticInfo(meta=meta, has_models=has_models, imports=imports)


def validate_tests(tests: Sequence[Mapping[str, Any] | ToolTest]) -> list[ToolTest]:
    """Parse and check a tool's test cases.

    Args:
        tests: Test cases as dicts (e.g. from a model's JSON) or ``ToolTest``.

    Returns:
        The parsed cases.

    Raises:
        ContractError: If there are none, too many, duplicates, or a case is
            malformed.
    """
    problems: list[str] = []
    parsed: list[ToolTest] = []
    if not tests:
        problems.append(
            "the tool has no tests; give at least one test case with an input and "
            "an expect or check."
        )
    if len(tests) > MAX_TESTS:
        problems.append(f"the tool has {len(tests)} tests; keep at most {MAX_TESTS}.")
    for i, raw in enumerate(tests, 1):
        try:
            case = raw if isinstance(raw, ToolTest) else ToolTest.model_validate(raw)
        except ValueError as exc:
            problems.append(f"test #{i} is malformed: {exc}".replace("\n", " "))
            continue
        if not case.expect_error and case.expect is None and case.check is None:
            problems.append(
                f"test '{case.name}' checks nothing; give it `expect` (output fields) or `check` "
                "(an expression over output)."
            )
        parsed.append(case)
    names = [t.name for t in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"test names must be unique; repeated: {', '.join(dupes)}.")
    if problems:
        raise ContractError(problems)
    return parsed


def now_utc() -> datetime:
    """Return the current time in UTC (one clock for records and statistics)."""
    return datetime.now(UTC)
