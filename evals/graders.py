"""Graders: is a prediction right? Exact, numeric, code-passes-tests and LLM-as-judge.

Every grader returns a :class:`Grade`; :func:`grade` picks the grader a task asks
for (or a sensible default) and fills in its parameters::

    from insitu.evals.graders import grade

    result = grade(task, "The answer is 1,234.5", judge_model=llm)
    result.correct, result.reason

Code grading runs untrusted code, so it goes through a runner injected by the
caller, ``run_in_sandbox(source, test_code) -> (ok, message)``;
:class:`SandboxRunner` is one that uses insitu's own sandbox (a fresh, cold
sandbox per run).
"""

from __future__ import annotations

import math
import re
import tempfile
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, Field

from insitu import aio
from insitu.structured import StructuredOutputError, ask_structured, code_blocks, parse_reply

if TYPE_CHECKING:
    from insitu.evals.tasks import Task
    from insitu.sandbox import Sandbox

__all__ = [
    "DEFAULT_ABS_TOL",
    "DEFAULT_REL_TOL",
    "Grade",
    "SandboxRunner",
    "SandboxRunnerFn",
    "Verdict",
    "code_passes_tests",
    "exact_match",
    "extract_code",
    "extract_last_number",
    "grade",
    "judge",
    "normalize_text",
    "numeric_match",
    "parse_number",
]

DEFAULT_REL_TOL = 1e-6
DEFAULT_ABS_TOL = 1e-9
JUDGE_MAX_ATTEMPTS = 3

SandboxRunnerFn = Callable[[str, str], tuple[bool, str]]


class Grade(BaseModel):
    """The verdict on one prediction.

    Attributes:
        correct: Whether the prediction is right.
        score: 1.0 when right, else 0.0 (graders may give partial scores later).
        reason: Why, in a sentence.
        grader: The grader that decided: ``exact``, ``numeric``, ``code`` or ``judge``.
    """

    correct: bool
    score: float = Field(ge=0.0, le=1.0)
    reason: str
    grader: str


class Verdict(BaseModel):
    """The structured reply asked of an LLM judge."""

    correct: bool = Field(description="Whether the candidate answer is correct.")
    reason: str = Field(description="One or two sentences saying why.")


def _grade(correct: bool, reason: str, grader: str) -> Grade:
    return Grade(correct=correct, score=1.0 if correct else 0.0, reason=reason, grader=grader)


# --------------------------------------------------------------------------- numbers

# A number as written in text: optional sign, thousands separated by commas or
# plain digits, optional decimals, optional exponent. The sign must not follow a
# letter or digit (so the "-" of "2024-03" or "x-1" is not a minus sign).
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+−]?)(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?"
    r"(?P<exp>[eE][-+]?\d+)?(?![\w])"
)


def _number_from_match(match: re.Match[str]) -> Decimal | None:
    if not match.group("int") and not match.group("frac"):
        return None
    text = (
        ("-" if match.group("sign") in ("-", "−") else "")
        + (match.group("int") or "0").replace(",", "")
        + (match.group("frac") or "")
        + (match.group("exp") or "")
    )
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _numbers(text: str) -> list[tuple[re.Match[str], Decimal]]:
    found = []
    for match in _NUMBER.finditer(text):
        value = _number_from_match(match)
        if value is not None:
            found.append((match, value))
    return found


def parse_number(text: str) -> float | None:
    """Parse text that is one number, allowing ``1,234.50``, ``$12``, ``12.5%``, ``−3``.

    Returns:
        The value, or None if the text is not exactly one number (currency
        signs, a percent sign and surrounding spaces aside).
    """
    stripped = text.strip().strip("$€£¥%").strip()
    found = _numbers(stripped)
    if len(found) != 1:
        return None
    match, value = found[0]
    if match.start() != 0 or match.end() != len(stripped):
        return None
    return float(value)


def extract_last_number(text: str) -> float | None:
    """The last number in free text (``"so the total is $1,234.50."`` -> 1234.5), or None."""
    found = _numbers(text)
    return float(found[-1][1]) if found else None


def _canonical_number(value: Decimal) -> str:
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


# --------------------------------------------------------------------------- exact match

_ANSWER_PREFIX = re.compile(
    r"(?:final answer|the answer is|answer)\s*(?:is)?\s*[:=]?\s*", flags=re.IGNORECASE
)


def normalize_text(text: str) -> str:
    """Normalise an answer for comparison.

    Unicode-normalised (NFKC) and lowercased; numbers rewritten canonically
    (``"1,234.0"`` -> ``"1234"``, ``"05"`` -> ``"5"``); punctuation dropped;
    whitespace collapsed.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    position = 0
    for match, value in _numbers(text):
        tokens.extend(_words(text[position : match.start()]))
        tokens.append(_canonical_number(value))
        position = match.end()
    tokens.extend(_words(text[position:]))
    return " ".join(tokens)


def _words(text: str) -> list[str]:
    cleaned = "".join(
        " " if unicodedata.category(ch)[0] in "PSZC" and ch not in "%" else ch for ch in text
    )
    return cleaned.split()


def _candidates(prediction: str) -> list[str]:
    """The parts of a free-text prediction that may be its answer."""
    text = prediction.strip()
    candidates = [text]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        candidates.append(lines[-1])
    for source in (text, lines[-1] if lines else ""):
        matches = list(_ANSWER_PREFIX.finditer(source))
        if matches:
            candidates.append(source[matches[-1].end() :])
    return candidates


def exact_match(expected: str, prediction: str) -> Grade:
    """Normalised exact match (see :func:`normalize_text`).

    The whole prediction, its last line, or what follows its last "answer:" /
    "the answer is" may match.
    """
    target = normalize_text(expected)
    if not prediction.strip():
        return _grade(False, "empty prediction", "exact")
    for candidate in _candidates(prediction):
        if normalize_text(candidate) == target:
            return _grade(True, f"matches {expected!r}", "exact")
    return _grade(False, f"expected {expected!r}, got {_short(prediction)}", "exact")


def _short(text: str, limit: int = 120) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# --------------------------------------------------------------------------- numeric


def numeric_match(
    expected: str | float,
    prediction: str | float,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> Grade:
    """Numeric comparison within a relative or an absolute tolerance.

    The prediction's number is its last number (``"about 1,234.5 EUR"`` ->
    1234.5); right when ``|p - e| <= max(rel_tol * max(|p|, |e|), abs_tol)``.

    Raises:
        ValueError: ``expected`` is not a number (a task error, not a wrong answer).
    """
    target = expected if isinstance(expected, int | float) else parse_number(str(expected))
    if target is None:
        raise ValueError(f"the reference answer {expected!r} is not a number")
    if isinstance(prediction, int | float) and not isinstance(prediction, bool):
        value: float | None = float(prediction)
    else:
        value = extract_last_number(str(prediction))
    if value is None:
        return _grade(False, f"no number in the prediction {_short(str(prediction))}", "numeric")
    target = float(target)
    if math.isclose(value, target, rel_tol=rel_tol, abs_tol=abs_tol):
        return _grade(True, f"{value!r} matches {target!r}", "numeric")
    return _grade(
        False,
        f"{value!r} differs from {target!r} (rel_tol={rel_tol!r}, abs_tol={abs_tol!r})",
        "numeric",
    )


# --------------------------------------------------------------------------- code


def extract_code(prediction: str, entry_point: str | None = None) -> str:
    """The program in a reply: the fenced Python block defining ``entry_point``, else the
    last Python block, else the whole text."""
    blocks = [body for lang, body in code_blocks(prediction) if lang in ("python", "py", "")]
    if entry_point:
        for body in blocks:
            if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", body, re.M):
                return body
    return blocks[-1] if blocks else prediction


def code_passes_tests(
    prediction: str,
    test_code: str,
    run_in_sandbox: SandboxRunnerFn,
    *,
    prompt: str | None = None,
    entry_point: str | None = None,
) -> Grade:
    """Run the prediction's code with tests in a sandbox; right when the tests pass.

    Args:
        prediction: The reply (fenced code is extracted, see :func:`extract_code`).
        test_code: Code that raises (e.g. ``AssertionError``) when the program is wrong.
        run_in_sandbox: ``(source, test_code) -> (ok, message)``; must isolate the code.
        prompt: For completion-style replies: prepended when the code does not
            define ``entry_point`` itself.
        entry_point: The function under test; if given, ``check(entry_point)`` is
            called after the tests (the HumanEval convention).
    """
    if not prediction.strip():
        return _grade(False, "empty prediction", "code")
    source = extract_code(prediction, entry_point)
    if (
        prompt
        and entry_point
        and not re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", source, re.M)
    ):
        source = prompt + source
    tests = test_code
    if entry_point and re.search(r"^def\s+check\s*\(", test_code, re.M):
        tests = f"{test_code}\n\ncheck({entry_point})\n"
    try:
        ok, message = run_in_sandbox(source, tests)
    except Exception as exc:
        return _grade(False, f"the sandbox runner failed: {type(exc).__name__}: {exc}", "code")
    return _grade(bool(ok), message or ("tests passed" if ok else "tests failed"), "code")


_WRAPPER = '''"""Runs a candidate program and its tests (generated by insitu.evals.graders)."""

__TOOL_META__ = {{
    "name": "run_candidate_tests",
    "description": "Runs a candidate program, then test code against it; fails if a test fails.",
    "dependencies": [],
}}

_CANDIDATE = {candidate!r}
_TESTS = {tests!r}


def run() -> str:
    namespace = {{"__name__": "__candidate__"}}
    exec(compile(_CANDIDATE, "<candidate>", "exec"), namespace)
    exec(compile(_TESTS, "<tests>", "exec"), namespace)
    return "passed"
'''


class SandboxRunner:
    """A ``run_in_sandbox`` using :class:`insitu.sandbox.Sandbox` (one cold sandbox per run).

    The candidate and the tests are wrapped in a tool module whose ``run()``
    executes them; a raised exception, a timeout or a crash is a failure.

    Use as a context manager, or call :meth:`close`, to stop the sandbox.
    """

    def __init__(self, sandbox: Sandbox | None = None, *, timeout_s: float = 20.0) -> None:
        """Args:
        sandbox: The sandbox to use (default: a new ``Sandbox()``, closed with this runner).
        timeout_s: Wall-clock limit of one run.
        """
        self._sandbox = sandbox
        self._owned = sandbox is None
        self.timeout_s = timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="insitu-grader-")

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox (created on first use)."""
        if self._sandbox is None:
            from insitu.sandbox import Sandbox

            self._sandbox = Sandbox()
        return self._sandbox

    def __call__(self, source: str, test_code: str) -> tuple[bool, str]:
        """Run ``source`` then ``test_code`` in a fresh sandbox; ``(passed, message)``."""
        module = _WRAPPER.format(candidate=source, tests=test_code)
        workdir = Path(tempfile.mkdtemp(dir=self._tmp.name))
        outcome = self.sandbox.call(
            module, {}, workdir=workdir, timeout_s=self.timeout_s, warm=False
        )
        if outcome.ok:
            return True, "tests passed"
        detail = outcome.message or outcome.kind.value
        if outcome.traceback:
            detail += "\n" + outcome.traceback.strip()[-1500:]
        return False, f"tests failed ({outcome.kind.value}): {detail}"

    def close(self) -> None:
        """Close the sandbox if this runner created it, and remove scratch files."""
        if self._owned and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        self._tmp.cleanup()

    def __enter__(self) -> SandboxRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- judge


@cache
def _judge_template() -> Template:
    text = resources.files("insitu.evals").joinpath("prompts", "judge.md").read_text("utf-8")
    return Template(text)


def judge_prompt(question: str, reference: str, prediction: str) -> str:
    """The judge prompt (``evals/prompts/judge.md``) filled in."""
    return _judge_template().substitute(
        question=question, reference=reference, prediction=prediction
    )


def judge(
    question: str,
    reference: str,
    prediction: str,
    model: BaseChatModel,
    *,
    max_attempts: int = JUDGE_MAX_ATTEMPTS,
) -> Grade:
    """Ask an LLM whether ``prediction`` answers ``question`` as ``reference`` does.

    The reply must be a :class:`Verdict` as JSON; unusable replies are re-asked
    with the reason, up to ``max_attempts`` calls in all. If none is usable the
    grade is incorrect with reason ``"judge reply unparseable: ..."``. Errors of
    the model itself (network, HTTP) propagate: they are not a verdict.
    """
    if not prediction.strip():
        return _grade(False, "empty prediction", "judge")
    messages = [HumanMessage(content=judge_prompt(question, reference, prediction))]
    try:
        asked = aio.run(
            ask_structured(
                model.ainvoke,
                messages,
                lambda text: parse_reply(text, Verdict),
                max_attempts=max_attempts,
            )
        )
    except StructuredOutputError as exc:
        return _grade(False, f"judge reply unparseable: {exc}", "judge")
    verdict: Verdict = asked.value
    return _grade(verdict.correct, verdict.reason, "judge")


# --------------------------------------------------------------------------- dispatch


def default_grader(task: Task) -> str:
    """The grader a task asks for, else ``numeric`` for a numeric answer, else ``exact``."""
    if task.grader:
        return task.grader
    if task.answer is not None and parse_number(task.answer) is not None:
        return "numeric"
    return "exact"


def grade(
    task: Task,
    prediction: str | None,
    *,
    judge_model: BaseChatModel | None = None,
    sandbox_runner: SandboxRunnerFn | None = None,
) -> Grade:
    """Grade a prediction for a task with the task's grader (see :func:`default_grader`).

    - ``numeric``: relative tolerance ``task.tolerance`` (default 1e-6, or 0
      when the answer is an integer) and absolute ``task.meta["abs_tol"]``
      (default 1e-9).
    - ``exact``: :func:`exact_match`.
    - ``judge``: :func:`judge` with ``judge_model`` (required).
    - ``code``: :func:`code_passes_tests` with ``task.meta["test"]`` (and
      ``prompt``/``entry_point`` if present) and ``sandbox_runner`` (default:
      a :class:`SandboxRunner` for this call).

    Raises:
        ValueError: The task cannot be graded (no reference answer, no tests,
            no judge model, an unknown grader).
    """
    text = "" if prediction is None else str(prediction)
    name = default_grader(task)
    if name == "code":
        tests = task.meta.get("test")
        if not tests:
            raise ValueError(f"task {task.id!r} uses the code grader but has no meta['test']")
        if sandbox_runner is not None:
            return code_passes_tests(
                text,
                tests,
                sandbox_runner,
                prompt=task.meta.get("prompt"),
                entry_point=task.meta.get("entry_point"),
            )
        with SandboxRunner() as runner:
            return code_passes_tests(
                text,
                tests,
                runner,
                prompt=task.meta.get("prompt"),
                entry_point=task.meta.get("entry_point"),
            )
    if task.answer is None:
        raise ValueError(f"task {task.id!r} has no reference answer to grade against")
    if name == "numeric":
        expected = parse_number(task.answer)
        if expected is None:
            raise ValueError(f"task {task.id!r}: the answer {task.answer!r} is not a number")
        default_rel = 0.0 if float(expected).is_integer() else DEFAULT_REL_TOL
        rel_tol = task.tolerance if task.tolerance is not None else default_rel
        abs_tol = _float(task.meta.get("abs_tol"), DEFAULT_ABS_TOL)
        return numeric_match(expected, text, rel_tol=rel_tol, abs_tol=abs_tol)
    if name == "exact":
        return exact_match(task.answer, text)
    if name == "judge":
        if judge_model is None:
            raise ValueError(f"task {task.id!r} needs an LLM judge: pass judge_model")
        return judge(task.question, task.answer, text, judge_model)
    raise ValueError(f"task {task.id!r}: unknown grader {name!r}")


def _float(value: Any, default: float) -> float:
    return default if value is None else float(value)
