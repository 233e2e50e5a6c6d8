"""`insitu tools add` and `tools import --as-new-version`: hand-written and edited tools.

Both run the real admission (contract check, sandboxed tests) through the CLI;
a refused tool leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from insitu.cli import main
from insitu.tool_store import ToolStore

GOOD = '''"""Adds two numbers."""

__TOOL_META__ = {
    "name": "add_numbers",
    "description": "Adds two numbers and returns their sum.",
    "dependencies": [],
}


def run(a: float, b: float) -> float:
    return a + b
'''
TESTS = [{"name": "small", "input": {"a": 1, "b": 2}, "expect": {"result": 3}}]


@pytest.fixture(autouse=True)
def _hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_EMBEDDING", "hashing")
    monkeypatch.delenv("INSITU_STORE", raising=False)


def write(folder: Path, source: str, tests: list | str | None = TESTS, name="add_numbers"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(source)
    if tests is not None:
        text = tests if isinstance(tests, str) else json.dumps(tests)
        (folder / f"{name}.tests.json").write_text(text)
    return path


def cli(store: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(store), "tools", *args])


def refused(result: Result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.output  # one line
    for fragment in fragments:
        assert fragment in error[0], (fragment, error[0])
    return error[0]


def test_a_good_file_is_admitted_and_stored(tmp_path: Path) -> None:
    store = tmp_path / "lib"
    result = cli(store, "add", str(write(tmp_path / "src", GOOD)))
    assert result.exit_code == 0, result.output
    assert "added add_numbers@1: 1 test(s) passed in the sandbox" in result.output
    with ToolStore.open(store, read_only=True) as opened:
        record = opened.get("add_numbers")
        assert record.origin == "manual" and [t.name for t in record.tests] == ["small"]
        assert record.input_schema["properties"]["a"]["type"] == "number"  # derived in the sandbox
    # Again: it exists, and --new-version with the same content changes nothing.
    refused(cli(store, "add", str(tmp_path / "src" / "add_numbers.py")), "--new-version")
    again = cli(store, "add", str(tmp_path / "src" / "add_numbers.py"), "--new-version")
    assert again.exit_code == 0 and "unchanged" in again.output


def test_an_explicit_tests_file_and_a_new_version(tmp_path: Path) -> None:
    store = tmp_path / "lib"
    assert cli(store, "add", str(write(tmp_path / "a", GOOD))).exit_code == 0
    tests = tmp_path / "more.json"
    tests.write_text(
        json.dumps([*TESTS, {"name": "neg", "input": {"a": -1, "b": 1}, "expect": {"result": 0}}])
    )
    edited = write(tmp_path / "b", GOOD.replace("a + b", "float(a) + float(b)"), tests=None)
    result = cli(store, "add", str(edited), "--tests", str(tests), "--new-version")
    assert result.exit_code == 0, result.output
    with ToolStore.open(store, read_only=True) as opened:
        assert [v.version for v in opened.history("add_numbers")] == [1, 2]
        assert len(opened.get("add_numbers").tests) == 2


@pytest.mark.parametrize(
    ("source", "tests", "fragments"),
    [
        ("x = 1\n", TESTS, ["contract check", "the entrypoint is missing"]),
        (GOOD.replace("def run(a: float", "def run(a: float,,"), TESTS, ["syntax error at line"]),
        (
            GOOD,
            [*TESTS, {"name": "off_by_one", "input": {"a": 1, "b": 1}, "expect": {"result": 3}}],
            ["at the tests", "FAILED test 'off_by_one'", "expected, got 2.0"],
        ),
        (GOOD, [], ["the tool has no tests"]),
        (GOOD, "[not json", ["is not valid JSON"]),
        (GOOD, None, ["no tests; give them with --tests FILE"]),
    ],
    ids=["no-tool-function", "syntax-error", "failing-test", "empty-tests", "bad-json", "none"],
)
def test_a_bad_file_is_refused_in_one_line_and_nothing_is_stored(
    tmp_path: Path, source: str, tests: object, fragments: list[str]
) -> None:
    store = tmp_path / "lib"
    refused(cli(store, "add", str(write(tmp_path / "src", source, tests))), *fragments)
    assert not (store / "tools.db").exists()  # no library is created
    # Into an existing library: nothing is added to it.
    assert cli(store, "add", str(write(tmp_path / "ok", GOOD, name="add_numbers"))).exit_code == 0
    bad = write(
        tmp_path / "src2", source.replace("add_numbers", "sum_numbers"), tests, name="sum_numbers"
    )
    refused(cli(store, "add", str(bad)))
    with ToolStore.open(store, read_only=True) as opened:
        assert [r.name for r in opened.list("all")] == ["add_numbers"]


def test_an_edited_export_is_reimported_as_a_new_version(tmp_path: Path) -> None:
    store = tmp_path / "lib"
    assert cli(store, "add", str(write(tmp_path / "src", GOOD))).exit_code == 0
    folder = tmp_path / "export"
    assert cli(store, "export", str(folder)).exit_code == 0
    # Nothing edited yet: nothing to do.
    refused(cli(store, "import", str(folder), "--as-new-version"), "no tool of")
    module = folder / "add_numbers.py"
    module.write_text(module.read_text().replace("return a + b", "return float(a) + float(b)"))
    result = cli(store, "import", str(folder), "--as-new-version")
    assert result.exit_code == 0, result.output
    assert "add_numbers@2" in result.output
    history = cli(store, "history", "add_numbers")
    assert "2 *" in history.output and "edited in" in history.output
    with ToolStore.open(store, read_only=True) as opened:
        assert "float(a) + float(b)" in opened.get("add_numbers").source
    # The library moved on since that export: refused.
    refused(cli(store, "import", str(folder), "--as-new-version"), "changed since the export")


def test_an_edited_export_must_pass_its_tests_and_respect_locks(tmp_path: Path) -> None:
    store = tmp_path / "lib"
    assert cli(store, "add", str(write(tmp_path / "src", GOOD))).exit_code == 0
    folder = tmp_path / "export"
    assert cli(store, "export", str(folder)).exit_code == 0
    module = folder / "add_numbers.py"
    module.write_text(GOOD.replace("return a + b", "return a - b"))
    refused(cli(store, "import", str(folder), "--as-new-version"), "FAILED test 'small'")
    module.write_text(GOOD.replace("return a + b", "return b + a"))
    assert cli(store, "lock", "add_numbers").exit_code == 0
    refused(cli(store, "import", str(folder), "--as-new-version"), "locked", "--force")
    with ToolStore.open(store, read_only=True) as opened:
        assert len(opened.history("add_numbers")) == 1
    forced = cli(store, "import", str(folder), "--as-new-version", "--force")
    assert forced.exit_code == 0, forced.output
    with ToolStore.open(store, read_only=True) as opened:
        assert len(opened.history("add_numbers")) == 2
