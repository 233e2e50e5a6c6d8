"""The tool contract's static checks: valid tools pass, invalid ones say precisely why."""

from __future__ import annotations

from pathlib import Path

import pytest

from insitu.tool_store.contract import (
    ContractError,
    ToolSpec,
    requirement_name,
    validate_source,
    validate_tests,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tools"

VALID = """
import statistics
from pydantic import BaseModel
__TOOL_META__ = {"name": "compute_mean", "description": "Computes the mean of numbers.",
                 "dependencies": [], "secrets": ["SOME_KEY"], "network": False}
class InputModel(BaseModel):
    values: list[float]
class OutputModel(BaseModel):
    mean: float
def run(input: InputModel) -> OutputModel:
    return OutputModel(mean=statistics.fmean(input.values))
"""


def problems_of(source: str, **kw) -> list[str]:
    with pytest.raises(ContractError) as info:
        validate_source(source, **kw)
    return info.value.problems


def test_valid_tool_passes() -> None:
    info = validate_source(VALID, expected_name="compute_mean")
    assert info.meta["name"] == "compute_mean"
    assert info.has_models


def test_yunjue_format_file_is_valid_unchanged() -> None:
    info = validate_source((FIXTURES / "yunjue_word_count.py").read_text())
    assert info.meta == {
        "name": "count_words",
        "description": info.meta["description"],
        "dependencies": [],
    }
    assert info.has_models


def test_typed_signature_form_is_valid() -> None:
    source = (
        '__TOOL_META__ = {"name": "add_numbers", "description": "Adds two numbers.", '
        '"dependencies": []}\n'
        "def run(a: float, b: float = 0.0) -> float:\n    return a + b\n"
    )
    assert not validate_source(source).has_models


def test_syntax_error_is_located() -> None:
    (problem,) = problems_of("def run(:\n  pass\n")
    assert problem.startswith("syntax error at line 1")


def test_missing_meta_and_entrypoint_reported_together() -> None:
    problems = problems_of("x = 1\n")
    assert any("__TOOL_META__ is missing" in p for p in problems)
    assert any("entrypoint is missing" in p for p in problems)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('"compute_mean"', '"Mean"', "not a verb_object"),
        ('"compute_mean"', '"mean"', "not a verb_object"),
        ('"dependencies": []', '"dependencies": ["not a req!"]', "is not a PyPI requirement"),
        ('["SOME_KEY"]', '["lower"]', "secrets"),
        ('"network": False', '"network": "yes"', "network"),
        ('"Computes the mean of numbers."', '""', "non-empty"),
        ('"Computes the mean of numbers."', '"a\\n\\nb"', "single paragraph"),
    ],
)
def test_bad_metadata_is_explained(old: str, new: str, expected: str) -> None:
    problems = problems_of(VALID.replace(old, new))
    assert any(expected in p for p in problems), problems


def test_name_must_match_request() -> None:
    (problem,) = problems_of(VALID, expected_name="compute_median")
    assert "'compute_mean'" in problem and "'compute_median'" in problem


def test_meta_must_be_literal() -> None:
    source = VALID.replace('"name": "compute_mean"', '"name": NAME')
    assert any("literal dict" in p for p in problems_of(source))


@pytest.mark.parametrize(
    "line",
    [
        'import subprocess\nsubprocess.run(["pip", "install", "numpy"])',
        'import os\nos.system("pip install numpy")',
        'import subprocess\nsubprocess.check_call(["/usr/bin/apt-get", "update"])',
        "import pip",
    ],
)
def test_package_managers_are_refused(line: str) -> None:
    problems = problems_of(VALID + "\n" + line + "\n")
    assert any("pip" in p or "package" in p for p in problems), problems


def test_undeclared_import_is_named_with_pypi_hint() -> None:
    source = VALID.replace("import statistics", "import statistics\nimport yaml")
    (problem,) = problems_of(source)
    assert "'yaml'" in problem and "pyyaml" in problem
    declared = source.replace('"dependencies": []', '"dependencies": ["PyYAML>=6"]')
    validate_source(declared)


def test_run_with_models_takes_one_argument() -> None:
    source = VALID.replace("def run(input: InputModel)", "def run(input: InputModel, x: int)")
    assert any("exactly one" in p for p in problems_of(source))


def test_untyped_signature_is_refused() -> None:
    source = (
        '__TOOL_META__ = {"name": "add_numbers", "description": "Adds.", "dependencies": []}\n'
        "def run(a, b):\n    return a + b\n"
    )
    problems = problems_of(source)
    assert any("missing on: a, b" in p for p in problems)
    assert any("return annotation" in p for p in problems)


def test_size_limit() -> None:
    problems = problems_of(VALID + "#" * 70_000 + "\n")
    assert any("bytes; the limit" in p for p in problems)


def test_error_message_is_numbered_and_names_the_tool() -> None:
    with pytest.raises(ContractError) as info:
        validate_source(VALID.replace('"dependencies": []', '"dependencies": 3'))
    assert str(info.value).startswith("1 problem(s) with tool 'compute_mean':\n1. ")


def test_tests_are_validated() -> None:
    cases = validate_tests([{"name": "a", "input": {"values": [1]}, "expect": {"mean": 1}}])
    assert cases[0].expect == {"mean": 1}
    with pytest.raises(ContractError, match="no tests"):
        validate_tests([])
    with pytest.raises(ContractError, match="checks nothing"):
        validate_tests([{"name": "a", "input": {}}])
    with pytest.raises(ContractError, match="unique"):
        validate_tests([{"name": "a", "input": {}, "check": "True"}] * 2)
    with pytest.raises(ContractError, match="not a valid Python expression"):
        validate_tests([{"name": "a", "input": {}, "check": "output[="}])
    with pytest.raises(ContractError, match="malformed"):
        validate_tests([{"name": "a", "inputs": {}}])


def test_content_hash_is_stable_and_sensitive() -> None:
    spec = ToolSpec(
        name="compute_mean", description="d", source=VALID, input_schema={}, output_schema={}
    )
    same = ToolSpec.model_validate(spec.model_dump())
    assert spec.content_hash() == same.content_hash()
    changed = spec.model_copy(update={"source": VALID + "\n"})
    assert changed.content_hash() != spec.content_hash()


def test_requirement_name() -> None:
    assert requirement_name("PyYAML>=6") == "pyyaml"
    assert requirement_name("scikit_learn[all] ==1.0") == "scikit-learn"


def test_tool_code_is_checked_safely_from_many_threads() -> None:
    """Parallel episodes validate code at once; CPython 3.11's AST constructor is not thread-safe.

    A garbage collection that runs a ``__del__`` mid-parse lets another thread parse
    meanwhile; without the package's parse lock some parses fail with
    ``SystemError: AST constructor recursion depth mismatch``.
    """
    import gc
    import sys
    import threading

    from insitu.testing.team import SUMMARIZE_NUMBERS

    class Finalised:
        def __del__(self) -> None:
            sum(range(3))

    errors: list[str] = []

    def validate_often() -> None:
        for _ in range(250):
            a, b = Finalised(), Finalised()
            a.other, b.other = b, a  # a cycle: only the collector frees it
            try:
                validate_source(SUMMARIZE_NUMBERS.source * 3)
            except SystemError as exc:
                errors.append(str(exc))

    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=validate_often) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)
    assert errors == []
