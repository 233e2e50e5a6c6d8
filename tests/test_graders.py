"""Graders: exact, numeric, code-passes-tests and LLM-as-judge, and the dispatch."""

from __future__ import annotations

import pytest

from insitu.evals.graders import (
    Grade,
    SandboxRunner,
    code_passes_tests,
    exact_match,
    extract_code,
    extract_last_number,
    grade,
    judge,
    judge_prompt,
    normalize_text,
    numeric_match,
    parse_number,
)
from insitu.evals.tasks import Task
from insitu.testing import Empty, ScriptedChatModel, Truncated

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1,234.0", "1234"),
        ("1234.50", "1,234.5"),
        ("  Hinge ", "hinge"),
        ("**Hinge**.", "Hinge"),
        ("New   York", "new york"),
        ("2024-03-05", "2024-3-5"),
        ("-0.0", "0"),
        ("Anvil, Flange, Cable", "anvil flange cable"),
        ("ｈｉｎｇｅ", "hinge"),  # full-width letters (NFKC)
    ],
)
def test_normalize_equal(a: str, b: str) -> None:
    assert normalize_text(a) == normalize_text(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1234", "1243"),
        ("12.5", "125"),
        ("-5", "5"),
        ("Hinge", "Hinges"),
        ("Anvil Flange", "Flange Anvil"),
        ("1,2,3", "123"),
    ],
)
def test_normalize_different(a: str, b: str) -> None:
    assert normalize_text(a) != normalize_text(b)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42.0),
        ("1,234.50", 1234.5),
        ("$12", 12.0),
        ("12.5%", 12.5),
        ("-0.75", -0.75),
        ("−3", -3.0),
        ("1.5e-3", 0.0015),
        (" 7 ", 7.0),
        ("Thursday", None),
        ("2024-01-27", None),
        ("12 apples", None),
        ("", None),
    ],
)
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The total is $1,234.50.", 1234.5),
        ("first 3, then 4, finally -2.5", -2.5),
        ("#### 18", 18.0),
        ("x = 0.5641 (approximately)", 0.5641),
        ("no numbers here", None),
        ("version x-1", 1.0),  # a hyphen after a letter is not a minus sign
    ],
)
def test_extract_last_number(text: str, value: float | None) -> None:
    assert extract_last_number(text) == value


# --------------------------------------------------------------------------- exact


@pytest.mark.parametrize(
    ("expected", "prediction"),
    [
        ("Hinge", "Hinge"),
        ("Hinge", "hinge."),
        ("Hinge", "The answer is Hinge"),
        ("Hinge", "I summed the units per product.\nFinal answer: **Hinge**"),
        ("2027-03-16 06:25", "2027-03-16 06:25"),
        ("1234", "1,234.0"),
        ("/api/items", "/api/items"),
    ],
)
def test_exact_right(expected: str, prediction: str) -> None:
    result = exact_match(expected, prediction)
    assert result == Grade(correct=True, score=1.0, reason=result.reason, grader="exact")


@pytest.mark.parametrize(
    ("expected", "prediction"),
    [
        ("Hinge", "Anvil"),
        ("Hinge", "Hinge or Anvil"),
        ("2027-03-16 06:25", "2027-03-16 07:25"),
        ("Monday", ""),
        ("1234", "1235"),
    ],
)
def test_exact_wrong(expected: str, prediction: str) -> None:
    result = exact_match(expected, prediction)
    assert not result.correct
    assert result.score == 0.0
    assert result.grader == "exact"


# --------------------------------------------------------------------------- numeric


def test_numeric_within_relative_tolerance() -> None:
    assert numeric_match("1000", "1000.0005", rel_tol=1e-6, abs_tol=0).correct
    assert not numeric_match("1000", "1000.01", rel_tol=1e-6, abs_tol=0).correct


def test_numeric_within_absolute_tolerance() -> None:
    assert numeric_match("0.564100", "x is about 0.564101", rel_tol=0, abs_tol=1e-6).correct
    wrong = numeric_match("0.564100", "0.564300", rel_tol=0, abs_tol=1e-6)
    assert not wrong.correct
    assert "differs from" in wrong.reason


def test_numeric_uses_last_number_of_free_text() -> None:
    result = numeric_match("13872.69", "Summing 240 rows gives EUR 13,872.69 in total.")
    assert result.correct, result.reason
    assert not numeric_match("240", "Summing 240 rows gives EUR 13,872.69 in total.").correct


def test_numeric_without_a_number_is_wrong() -> None:
    result = numeric_match("5", "I could not compute it.")
    assert not result.correct
    assert "no number" in result.reason


def test_numeric_needs_a_numeric_reference() -> None:
    with pytest.raises(ValueError, match="not a number"):
        numeric_match("Hinge", "5")


# --------------------------------------------------------------------------- dispatch


def test_grade_defaults_to_numeric_for_numbers_and_exact_otherwise() -> None:
    numeric = Task(id="n", question="q", answer="1,234")
    assert grade(numeric, "It is 1234.").grader == "numeric"
    assert grade(numeric, "It is 1234.").correct
    word = Task(id="w", question="q", answer="Hinge")
    assert grade(word, "hinge").grader == "exact"
    assert grade(word, "hinge").correct


def test_grade_integer_answers_are_exact_by_default() -> None:
    task = Task(id="big", question="q", answer="1000000")
    assert grade(task, "1000000").correct
    assert not grade(task, "1000001").correct


def test_grade_uses_task_tolerances() -> None:
    task = Task(
        id="t",
        question="q",
        answer="12.35",
        grader="numeric",
        tolerance=1e-6,
        meta={"abs_tol": 0.01},
    )
    assert grade(task, "12.3449").correct
    assert grade(task, "12.36").correct
    assert not grade(task, "12.37").correct


def test_grade_explicit_exact_grader_on_a_number() -> None:
    task = Task(id="t", question="q", answer="42", grader="exact")
    result = grade(task, "42.0")
    assert result.grader == "exact"
    assert result.correct


def test_grade_none_prediction_is_wrong() -> None:
    assert not grade(Task(id="t", question="q", answer="3"), None).correct


def test_grade_refuses_ungradable_tasks() -> None:
    with pytest.raises(ValueError, match="no reference answer"):
        grade(Task(id="t", question="q"), "3")
    with pytest.raises(ValueError, match="judge_model"):
        grade(Task(id="t", question="q", answer="x", grader="judge"), "x")
    with pytest.raises(ValueError, match="meta\\['test'\\]"):
        grade(Task(id="t", question="q", grader="code"), "def f(): pass")


# --------------------------------------------------------------------------- judge

QUESTION = "Which three products brought the most revenue?"
REFERENCE = "Anvil (23972.25), Flange (10896.70), Cable (8065.28)"


def test_judge_prompt_is_filled_from_the_data_file() -> None:
    text = judge_prompt(QUESTION, REFERENCE, "Anvil, Flange, Cable")
    assert QUESTION in text
    assert REFERENCE in text
    assert "Anvil, Flange, Cable" in text
    assert "$question" not in text and "$reference" not in text and "$prediction" not in text
    assert '"correct"' in text


def test_judge_correct_verdict() -> None:
    model = ScriptedChatModel(['{"correct": true, "reason": "Same three products in order."}'])
    result = judge(QUESTION, REFERENCE, "Anvil, Flange and Cable.", model)
    assert result == Grade(
        correct=True, score=1.0, reason="Same three products in order.", grader="judge"
    )
    prompt = model.calls[0][-1].content
    assert "Anvil, Flange and Cable." in prompt
    assert REFERENCE in prompt


def test_judge_incorrect_verdict_in_prose_and_fences() -> None:
    model = ScriptedChatModel(
        ['Here is my verdict:\n```json\n{"correct": false, "reason": "Cable is missing."}\n```']
    )
    result = judge(QUESTION, REFERENCE, "Anvil, Flange", model)
    assert not result.correct
    assert result.score == 0.0
    assert result.reason == "Cable is missing."


def test_judge_reasks_after_a_malformed_reply() -> None:
    model = ScriptedChatModel(
        ["I think it is right.", '{"correct": true, "reason": "Matches the reference."}']
    )
    result = judge(QUESTION, REFERENCE, "Anvil, Flange, Cable", model)
    assert result.correct
    assert len(model.calls) == 2
    reask = model.calls[1][-1].content
    assert "could not be used" in reask
    assert "no JSON object" in reask


def test_judge_wrong_fields_are_reasked() -> None:
    model = ScriptedChatModel(
        ['{"verdict": "yes"}', '{"correct": "maybe", "reason": 3}', Truncated('{"correct": tr')]
    )
    result = judge(QUESTION, REFERENCE, "Anvil", model)
    assert not result.correct
    assert result.reason.startswith("judge reply unparseable: ")
    assert "3 attempts" in result.reason
    assert len(model.calls) == 3


def test_judge_unparseable_after_bound_is_incorrect_not_an_error() -> None:
    model = ScriptedChatModel(["nope", Empty(), "still no JSON", "never reached"])
    result = judge(QUESTION, REFERENCE, "Anvil, Flange, Cable", model, max_attempts=3)
    assert result == Grade(correct=False, score=0.0, reason=result.reason, grader="judge")
    assert result.reason.startswith("judge reply unparseable: ")
    assert len(model.calls) == 3
    assert model.remaining == 1


def test_judge_empty_prediction_does_not_call_the_model() -> None:
    model = ScriptedChatModel([])
    result = judge(QUESTION, REFERENCE, "   ", model)
    assert not result.correct
    assert model.calls == []


def test_grade_dispatches_to_the_judge() -> None:
    task = Task(id="j", question=QUESTION, answer=REFERENCE, grader="judge")
    model = ScriptedChatModel(['{"correct": true, "reason": "ok"}'])
    result = grade(task, "Anvil, Flange, Cable", judge_model=model)
    assert result.grader == "judge"
    assert result.correct
    assert QUESTION in model.calls[0][-1].content


# --------------------------------------------------------------------------- code


class RecordingRunner:
    def __init__(self, result: tuple[bool, str] = (True, "ok")) -> None:
        self.result = result
        self.calls: list[tuple[str, str]] = []

    def __call__(self, source: str, test_code: str) -> tuple[bool, str]:
        self.calls.append((source, test_code))
        return self.result


HE_PROMPT = 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n'
HE_TEST = (
    "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
)


def test_extract_code_prefers_the_block_defining_the_entry_point() -> None:
    reply = (
        "Helper:\n```python\nimport math\n```\nSolution:\n```python\ndef add(a, b):\n"
        "    return a + b\n```\nDone."
    )
    assert extract_code(reply, "add").startswith("def add(a, b):")
    assert extract_code("def add(a, b):\n    return a + b") == "def add(a, b):\n    return a + b"


def test_code_grader_appends_check_and_keeps_full_functions() -> None:
    runner = RecordingRunner()
    reply = "```python\ndef add(a, b):\n    return a + b\n```"
    result = code_passes_tests(reply, HE_TEST, runner, prompt=HE_PROMPT, entry_point="add")
    assert result.correct and result.grader == "code"
    source, tests = runner.calls[0]
    assert source == "def add(a, b):\n    return a + b\n"
    assert tests.rstrip().endswith("check(add)")


def test_code_grader_prepends_the_prompt_to_a_completion() -> None:
    runner = RecordingRunner((False, "AssertionError"))
    result = code_passes_tests(
        "    return a - b\n", HE_TEST, runner, prompt=HE_PROMPT, entry_point="add"
    )
    assert not result.correct
    assert result.reason == "AssertionError"
    assert runner.calls[0][0] == HE_PROMPT + "    return a - b\n"


def test_code_grader_runner_failure_is_a_wrong_answer() -> None:
    def broken(source: str, test_code: str) -> tuple[bool, str]:
        raise RuntimeError("sandbox unavailable")

    result = code_passes_tests("def add(a, b): return a + b", HE_TEST, broken, entry_point="add")
    assert not result.correct
    assert "sandbox unavailable" in result.reason


def test_grade_code_task_with_an_injected_runner() -> None:
    task = Task(
        id="HumanEval/x",
        question="q",
        grader="code",
        meta={"prompt": HE_PROMPT, "test": HE_TEST, "entry_point": "add"},
    )
    runner = RecordingRunner()
    assert grade(task, "def add(a, b):\n    return a + b\n", sandbox_runner=runner).correct
    assert len(runner.calls) == 1


def test_sandbox_runner_passes_and_fails_for_real() -> None:
    task = Task(
        id="HumanEval/x",
        question="q",
        grader="code",
        meta={"prompt": HE_PROMPT, "test": HE_TEST, "entry_point": "add"},
    )
    with SandboxRunner(timeout_s=5) as runner:
        good = grade(
            task, "```python\ndef add(a, b):\n    return a + b\n```", sandbox_runner=runner
        )
        bad = grade(task, "    return a * b\n", sandbox_runner=runner)
        hang = grade(task, "def add(a, b):\n    while True:\n        pass\n", sandbox_runner=runner)
    assert good.correct, good.reason
    assert not bad.correct
    assert "AssertionError" in bad.reason
    assert not hang.correct
    assert "timeout" in hang.reason
