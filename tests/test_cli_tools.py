"""`insitu tools ...`: every subcommand against a real store on disk.

The library is built through the store's own API (``ToolStore.add``/``update``
with the fast hashing embedding); the CLI is driven with click's ``CliRunner``,
plus one subprocess smoke test of ``python -m insitu``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from insitu.cli import main
from insitu.cli.common import EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_RUNTIME
from insitu.tool_store import ToolStore
from insitu.tool_store.testing import catalogue_specs, make_spec

NAMES = ("compute_mean", "compute_median", "compute_std_dev", "parse_csv_rows", "format_list")
BRACKETS = "Formats a list [a, b] as [bold]plain text[/bold] for display."


@pytest.fixture(autouse=True)
def _hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """New stores made by the CLI (import into an empty folder) embed fast."""
    monkeypatch.setenv("INSITU_EMBEDDING", "hashing")
    monkeypatch.delenv("INSITU_STORE", raising=False)
    monkeypatch.delenv("INSITU_CHROMA_URL", raising=False)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Five tools; compute_mean has two versions; one description holds brackets."""
    path = tmp_path / "lib"
    with ToolStore.open(path, embedding="hashing") as store:
        for spec in catalogue_specs()[:4]:
            store.add(spec, created_by_task="task-1")
        store.add(make_spec("format_list", BRACKETS, inputs=("items",)))
        store.update(
            "compute_mean",
            make_spec(
                "compute_mean",
                "Computes the arithmetic mean of a list of numbers, ignoring missing values.",
                body="return {'result': 1}",
            ),
            note="skip missing values",
        )
    return path


def cli(library: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(library), "tools", *args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def failed(result: Result, code: int, *fragments: str) -> str:
    """Assert a clean failure: the exit code, a message, no stack trace."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return result.output


def data_rows(output: str) -> list[list[str]]:
    """The cells of a rich table's body rows (continuation lines included)."""
    rows = []
    for line in output.splitlines():
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def store_embedding(path: Path) -> str:
    with ToolStore.open(path, read_only=True) as store:
        return store.embedding_name


# ------------------------------------------------------------------ list / show


def test_list_prints_a_table_of_active_tools(library: Path) -> None:
    out = ok(cli(library, "list"))
    assert "5 active tool(s)" in out
    for column in ("name", "ver", "status", "calls", "ok %", "description"):
        assert column in out
    names = {r[0] for r in data_rows(out) if r[0]}
    assert names == set(NAMES)
    mean = next(r for r in data_rows(out) if r[0] == "compute_mean")
    assert mean[1:5] == ["2", "active", "0", "-"]


def test_list_shows_descriptions_literally(library: Path) -> None:
    out = ok(cli(library, "list"))
    assert "[a, b]" in out  # never eaten as markup
    shown = ok(cli(library, "show", "format_list"))
    assert "[a, b]" in shown and "[bold]plain text[/bold]" in shown


def test_tables_fit_80_columns_with_whole_names_and_cut_descriptions(library: Path) -> None:
    """Names are never wrapped mid-word; a cut description ends in an ellipsis."""
    for args in (("list",), ("search", "numbers", "-k", "5")):
        out = ok(cli(library, *args))
        lines = out.splitlines()
        assert all(len(line.rstrip()) <= 80 for line in lines), args
        rows = [line for line in lines if line.startswith("│")]
        assert rows and any(line.rstrip(" │").endswith("…") for line in rows), args
        shown = {cell.strip() for line in rows for cell in line.split("│")}
        assert {n for n in NAMES if n in out} <= shown, "a name was wrapped or cut"


def test_search_match_scores_are_between_0_and_1(library: Path) -> None:
    for mode in ("hybrid", "dense", "lexical"):
        out = ok(cli(library, "search", "mean of numbers", "--mode", mode))
        scores = [float(r[0]) for r in data_rows(out) if r[0]]
        assert scores and all(0.0 <= s <= 1.0 for s in scores), (mode, scores)
    lexical = [
        float(r[0]) for r in data_rows(ok(cli(library, "search", "mean", "--mode", "lexical")))
    ]
    assert lexical[0] == 1.0  # relative to the best hit


def test_list_all_includes_archived_tools(library: Path) -> None:
    ok(cli(library, "archive", "parse_csv_rows"))
    out = ok(cli(library, "list"))
    assert "4 active tool(s)" in out and "parse_csv_rows" not in out
    out = ok(cli(library, "list", "--all"))
    assert "5 tool(s)" in out
    row = next(r for r in data_rows(out) if r[0] == "parse_csv_rows")
    assert row[2] == "archived"


def test_show_prints_metadata_schemas_tests_and_source(library: Path) -> None:
    out = ok(cli(library, "show", "compute_mean"))
    assert "compute_mean@2 (active, origin repaired" in out
    assert "ignoring missing values" in out
    assert "note: skip missing values" in out
    assert "input schema: " in out and '"values"' in out
    assert "tests: smoke" in out
    assert "def run(values: str) -> dict:" in out
    out = ok(cli(library, "show", "compute_mean", "--version", "1"))
    assert "compute_mean@1 (active, origin generated, task task-1" in out
    assert "return {'result': 0}" in out


def test_show_prints_brackets_literally(library: Path) -> None:
    assert BRACKETS in ok(cli(library, "show", "format_list"))


def test_show_unknown_tool_fails_cleanly_with_suggestions(library: Path) -> None:
    failed(
        cli(library, "show", "compute_maen"),
        EXIT_CONFIG,
        "error: no tool named 'compute_maen'",
        "Did you mean 'compute_mean'",
    )


def test_show_unknown_version_fails_cleanly(library: Path) -> None:
    failed(cli(library, "show", "compute_mean", "--version", "7"), EXIT_CONFIG, "no version 7")


def test_missing_library_is_a_configuration_error(tmp_path: Path) -> None:
    for args in (["list"], ["search", "mean"], ["show", "x"], ["export", str(tmp_path / "e")]):
        failed(cli(tmp_path / "nowhere", *args), EXIT_CONFIG, "no tool library at", "--store")
    assert not (tmp_path / "nowhere").exists()  # reading never creates a store


# ----------------------------------------------------------------------- search


def test_search_ranks_the_matching_tool_first(library: Path) -> None:
    out = ok(cli(library, "search", "median value of a list of numbers"))
    assert "top 5 for 'median value of a list of numbers'" in out
    for column in ("match", "name", "ver", "status", "description"):
        assert column in out
    first = data_rows(out)[0]
    assert first[1] == "compute_median"
    float(first[0])  # a score


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_search_modes_and_k(library: Path, mode: str) -> None:
    out = ok(cli(library, "search", "parse CSV text into rows", "-k", "2", "--mode", mode))
    assert "top 2 for" in out
    assert next(r[1] for r in data_rows(out) if r[1]) == "parse_csv_rows"


def test_search_skips_archived_tools_unless_asked(library: Path) -> None:
    ok(cli(library, "archive", "compute_median"))
    query = ["search", "median value", "-k", "5"]
    assert "compute_median" not in ok(cli(library, *query))
    out = ok(cli(library, *query, "--all"))
    assert any(r[1] == "compute_median" and r[3] == "archived" for r in data_rows(out))


def test_search_rejects_a_bad_k(library: Path) -> None:
    result = cli(library, "search", "mean", "-k", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output


# ---------------------------------------------------------- history / rollback


def test_history_lists_every_version_and_marks_the_current_one(library: Path) -> None:
    out = ok(cli(library, "history", "compute_mean"))
    assert "history of compute_mean" in out
    rows = [r for r in data_rows(out) if r[0]]
    assert [r[0] for r in rows] == ["1", "2 *"]
    assert rows[0][2] == "generated" and rows[0][3] == "task-1"
    assert rows[1][2] == "repaired" and "skip missing" in rows[1][5]


def test_history_unknown_tool(library: Path) -> None:
    failed(cli(library, "history", "nope"), EXIT_CONFIG, "no tool named 'nope'")


def test_rollback_adds_a_version_with_the_old_content(library: Path) -> None:
    out = ok(cli(library, "rollback", "compute_mean", "1"))
    assert "compute_mean is now version 3 (content of version 1)" in out
    with ToolStore.open(library, read_only=True) as store:
        assert store.get("compute_mean").hash == store.get("compute_mean", 1).hash
        assert store.get("compute_mean").note == "rollback to version 1"
    assert [r[0] for r in data_rows(ok(cli(library, "history", "compute_mean"))) if r[0]] == [
        "1",
        "2",
        "3 *",
    ]
    out = ok(cli(library, "rollback", "compute_mean", "3"))
    assert "unchanged" in out


def test_rollback_errors(library: Path) -> None:
    failed(cli(library, "rollback", "compute_mean", "9"), EXIT_CONFIG, "no version 9")
    failed(cli(library, "rollback", "nope", "1"), EXIT_CONFIG, "no tool named 'nope'")
    result = cli(library, "rollback", "compute_mean", "one")
    assert result.exit_code == 2 and "Traceback" not in result.output


# ------------------------------------------------------------ archive / lock


def test_archive_and_restore(library: Path) -> None:
    assert "compute_std_dev: archived" in ok(cli(library, "archive", "compute_std_dev"))
    assert "already archived" in ok(cli(library, "archive", "compute_std_dev"))
    with ToolStore.open(library, read_only=True) as store:
        assert store.state("compute_std_dev").status == "archived"
        assert store.state("compute_std_dev").status_reason == "archived by hand"
    out = ok(cli(library, "archive", "compute_std_dev", "--restore"))
    assert "compute_std_dev: restored" in out
    assert "compute_std_dev" in ok(cli(library, "list"))
    failed(cli(library, "archive", "nope"), EXIT_CONFIG, "no tool named 'nope'")


def test_lock_protects_a_tool_until_unlocked_or_forced(library: Path) -> None:
    assert "locked compute_mean" in ok(cli(library, "lock", "compute_mean"))
    row = next(r for r in data_rows(ok(cli(library, "list"))) if r[0] == "compute_mean")
    assert "locked" in row[2]
    failed(
        cli(library, "archive", "compute_mean"),
        EXIT_INCOMPLETE,
        "is locked",
        "insitu tools lock compute_mean --unlock",
        "--force",
    )
    failed(cli(library, "rollback", "compute_mean", "1"), EXIT_INCOMPLETE, "is locked")
    ok(cli(library, "rollback", "compute_mean", "1", "--force"))
    assert "unlocked compute_mean" in ok(cli(library, "lock", "compute_mean", "--unlock"))
    ok(cli(library, "archive", "compute_mean", "--reason", "replaced"))
    with ToolStore.open(library, read_only=True) as store:
        state = store.state("compute_mean")
    assert (state.locked, state.status, state.status_reason) == (False, "archived", "replaced")
    failed(cli(library, "lock", "nope"), EXIT_CONFIG, "no tool named 'nope'")


def test_a_store_held_by_another_writer_is_a_runtime_error(library: Path) -> None:
    with ToolStore.open(library, embedding="hashing"):
        assert "compute_mean" in ok(cli(library, "list"))  # readers are not blocked
        failed(cli(library, "lock", "compute_mean"), EXIT_RUNTIME, "in use")


# ------------------------------------------------------------- export / import


def test_export_then_import_into_an_empty_library(library: Path, tmp_path: Path) -> None:
    ok(cli(library, "archive", "format_list"))
    folder = tmp_path / "export"
    assert "exported 5 tool(s)" in ok(cli(library, "export", str(folder)))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(t["name"] for t in manifest["tools"]) == sorted(NAMES)
    assert (folder / "compute_mean.py").is_file()
    assert (folder / "versions" / "compute_mean" / "v1.py").is_file()

    copy = tmp_path / "copy"
    out = ok(cli(copy, "import", str(folder)))
    assert "5 imported, 0 replaced" in out
    with ToolStore.open(copy, read_only=True) as store:
        assert store.embedding_name == "hashing"
        assert [v.version for v in store.history("compute_mean")] == [1, 2]
        assert store.state("format_list").status == "archived"
    assert "5 already present" in ok(cli(copy, "import", str(folder)))
    assert "compute_mean" in ok(cli(copy, "search", "arithmetic mean"))


def test_import_conflicts(library: Path, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    ok(cli(library, "export", str(folder)))
    ok(cli(library, "rollback", "compute_mean", "1"))  # now differs from the export
    failed(
        cli(library, "import", str(folder), "--on-conflict", "error"),
        EXIT_INCOMPLETE,
        "already exist with different content",
    )
    assert "1 skipped" in ok(cli(library, "import", str(folder)))
    assert "1 replaced" in ok(cli(library, "import", str(folder), "--on-conflict", "replace"))


def test_export_and_import_errors(library: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    failed(cli(library, "export", str(busy)), EXIT_INCOMPLETE, "is not empty")
    assert (busy / "notes.txt").read_text() == "mine"
    result = cli(library, "import", str(tmp_path / "absent"))
    assert result.exit_code == 2 and "does not exist" in result.output
    # a folder that is not an export is a bad argument
    failed(cli(library, "import", str(busy)), EXIT_CONFIG, "holds no manifest.json")


# ---------------------------------------------------------------------- reindex


def test_reindex_keeps_the_library_embedding(library: Path) -> None:
    out = ok(cli(library, "reindex"))
    assert "reindexed 5 tool(s) with the hashing embedding" in out
    assert store_embedding(library) == "hashing"
    assert data_rows(ok(cli(library, "search", "median of numbers")))[0][1] == "compute_median"


def test_commands_never_switch_the_library_embedding(
    library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default setting (minilm) must not re-embed a hashing library behind one's back."""
    monkeypatch.delenv("INSITU_EMBEDDING")
    ok(cli(library, "lock", "compute_mean", "--unlock"))
    ok(cli(library, "rollback", "compute_mean", "1"))
    ok(cli(library, "reindex"))
    assert store_embedding(library) == "hashing"


def test_reindex_can_switch_the_embedding_explicitly(library: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    with ToolStore.open(copy, embedding="minilm"):
        pass  # an empty minilm library: switching it to hashing needs no model
    assert "with the hashing embedding" in ok(cli(copy, "reindex", "--embedding", "hashing"))
    assert store_embedding(copy) == "hashing"


# ----------------------------------------------------------------------- smoke


def test_python_dash_m_insitu_tools_list(library: Path) -> None:
    env = {**os.environ, "INSITU_STORE": str(library), "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "insitu", "tools", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in NAMES)
    done = subprocess.run(
        [sys.executable, "-m", "insitu", "tools", "show", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_CONFIG
    assert "error: no tool named 'nope'" in done.stderr and "Traceback" not in done.stderr


def test_importing_a_folder_that_is_not_an_export_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "new-store"
    (tmp_path / "empty").mkdir()
    done = CliRunner().invoke(
        main, ["--store", str(store), "tools", "import", str(tmp_path / "empty")]
    )
    assert done.exit_code == EXIT_CONFIG, done.output
    assert "holds no manifest.json" in done.output
    assert not store.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("rollback", "compute_mean", "1"),
        ("archive", "compute_mean"),
        ("lock", "compute_mean"),
        ("reindex",),
        ("prune", "--min-utility", "0.1"),
        ("history", "compute_mean"),
    ],
)
def test_commands_on_a_missing_library_create_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    store = tmp_path / "nowhere"
    done = CliRunner().invoke(main, ["--store", str(store), "tools", *args])
    assert done.exit_code == EXIT_CONFIG, done.output
    assert "nothing has been stored there yet" in done.output
    assert not store.exists()
