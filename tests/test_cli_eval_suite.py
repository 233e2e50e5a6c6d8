"""`insitu eval SUITE`: the comparison from the shell, offline with the scripted test model."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from insitu.cli import main
from insitu.evals.harness import SCRIPTED_NOTE


def test_eval_local_suite_scripted(tmp_path: Path) -> None:
    run_dir = tmp_path / "cmp"
    result = CliRunner().invoke(
        main,
        [
            "--store",
            str(tmp_path / "unused"),
            "eval",
            "local",
            "--limit",
            "4",
            "--batch-size",
            "2",
            "--systems",
            "insitu,no-reuse",
            "--run-dir",
            str(run_dir),
            "--scripted",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert SCRIPTED_NOTE in result.output
    saved = json.loads((run_dir / "comparison.json").read_text())
    assert saved["scripted"] and saved["tasks"] == 4
    assert [s["system"] for s in saved["systems"]] == ["insitu", "no-reuse"]
    assert all(s["graded"] == 4 for s in saved["systems"])
    assert (run_dir / "report.html").exists()
    for system in ("insitu", "no-reuse"):
        lines = (run_dir / system / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 4 and all("grade" in json.loads(x) for x in lines)


def test_eval_unknown_source_and_system_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_source = runner.invoke(main, ["eval", "nowhere.jsonl", "--run-dir", str(tmp_path)])
    assert bad_source.exit_code == 2
    bad_system = runner.invoke(
        main, ["eval", "local", "--systems", "magic", "--run-dir", str(tmp_path), "--scripted"]
    )
    assert bad_system.exit_code == 2 and "unknown system" in bad_system.output


def test_evolve_scripted_labels_its_run(tmp_path: Path) -> None:
    from insitu.testing.team import SCRIPTED_LABEL, scripted_stream

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in scripted_stream(4)))
    result = CliRunner().invoke(
        main,
        [
            "--store", str(tmp_path / "store"),
            "evolve", str(tasks),
            "--batch-size", "2",
            "--run-dir", str(tmp_path / "run"),
            "--scripted",
        ],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert SCRIPTED_LABEL in result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["scripted"] is True and run["model"] == "scripted test double"
    predictions = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4
