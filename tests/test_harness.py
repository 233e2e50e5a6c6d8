"""The comparison harness on a tiny suite, with the scripted team (a test double)."""

from __future__ import annotations

import json
import statistics
from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from insitu.evals.harness import SCRIPTED_NOTE, run_comparison, wilson_interval
from insitu.evals.tasks import Task
from insitu.evolve import read_jsonl
from insitu.report import PLOTS, SCRIPTED_FIGURE_MARK
from insitu.testing.team import ScriptedTeam, scripted_stream

ALL = ["insitu", "insitu-frozen", "no-reuse", "python-interpreter"]


def tiny_suite(count: int) -> list[Task]:
    """Scripted-stream tasks with reference answers computed here."""
    tasks = []
    for raw in scripted_stream(count, seed=3):
        question = raw["question"]
        if "mean" in question:
            values = [float(x) for x in question.split("of ", 1)[1].rstrip("?").split(", ")]
            answer = f"mean {statistics.fmean(values):g}, median {statistics.median(values):g}"
        else:
            start, end = (date.fromisoformat(d) for d in question.rstrip("?").split()[-3::2])
            answer = f"{(end - start).days} days"
        tasks.append(Task(id=raw["id"], question=question, answer=answer, grader="exact"))
    return tasks


def test_wilson_interval() -> None:
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(8, 10)
    assert 0.49 < low < 0.5 and 0.94 < high < 0.95  # textbook values 0.490, 0.943
    assert wilson_interval(10, 10)[1] == 1.0


def test_all_systems_compared_on_one_suite(tmp_path: Path) -> None:
    tasks = tiny_suite(6)
    comparison = run_comparison(
        tasks,
        systems=ALL,
        run_dir=tmp_path,
        batch_size=2,
        suite="tiny",
        context={"embedding": "hashing"},
        models=ScriptedTeam().model(),
        scripted=True,
    )
    by = {r.system: r for r in comparison.systems}
    assert list(by) == ALL
    assert all(r.accuracy == 1.0 and r.graded == 6 for r in by.values())
    assert by["insitu"].tools_created == 2 and by["insitu"].library_size == 2
    assert by["no-reuse"].tools_created == 6 and by["no-reuse"].library_size == 0
    assert by["insitu-frozen"].tools_created == 0 and by["insitu-frozen"].library_size == 2
    assert by["python-interpreter"].tools_created == 0
    assert by["python-interpreter"].tool_calls == 6
    assert by["insitu"].egl[-1] < by["no-reuse"].egl[-1]
    assert by["insitu"].cost_per_task is None  # the scripted model has no price
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert [s["system"] for s in saved["systems"]] == ALL and saved["scripted"]
    table = (tmp_path / "comparison.md").read_text()
    assert SCRIPTED_NOTE in table and "| no-reuse | 1.000 |" in table
    assert "scripted test model" in (tmp_path / "report.html").read_text()
    grades = [p["grade"]["correct"] for p in read_jsonl(tmp_path / "insitu" / "predictions.jsonl")]
    assert grades == [True] * 6
    # Every file of a scripted comparison says so: each JSONL line of each system
    # (predictions after grading too), and each plot of the report.
    for system in ALL:
        for name in ("predictions.jsonl", "steps.jsonl"):
            lines = read_jsonl(tmp_path / system / name)
            assert lines and all(line["scripted"] is True for line in lines), (system, name)
    pngs = sorted(tmp_path.glob("report_*.png"))
    assert len(pngs) == len(PLOTS)
    for png in pngs:
        with Image.open(png) as image:
            assert image.text["Description"] == SCRIPTED_FIGURE_MARK, png.name


def test_an_interrupted_comparison_resumes(tmp_path: Path) -> None:
    tasks = tiny_suite(6)
    team = ScriptedTeam()
    seen = {"done": 0}

    class Interrupted(Exception):
        pass

    def interrupt(event: dict) -> None:
        if event.get("event") == "task_done" and event.get("task_id", "").startswith("task"):
            seen["done"] += 1
            if seen["done"] == 9:  # in no-reuse's second batch
                raise Interrupted

    kwargs = {
        "systems": ["insitu", "no-reuse"],
        "run_dir": tmp_path,
        "batch_size": 2,
        "context": {"embedding": "hashing"},
        "models": team.model(),
        "scripted": True,
    }
    with pytest.raises(Interrupted):
        run_comparison(tasks, on_event=interrupt, **kwargs)
    assert not (tmp_path / "comparison.json").exists()
    calls_before = dict(team.role_calls)
    comparison = run_comparison(tasks, **kwargs)
    for system in ("insitu", "no-reuse"):
        ids = [p["id"] for p in read_jsonl(tmp_path / system / "predictions.jsonl")]
        assert ids == [t.id for t in tasks], system
    # Resuming re-ran only what was unfinished: insitu not at all.
    assert team.role_calls["manager"] - calls_before["manager"] <= 4
    assert [r.accuracy for r in comparison.systems] == [1.0, 1.0]


def test_unknown_system_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown system"):
        run_comparison(tiny_suite(1), systems=["magic"], run_dir=tmp_path)
    with pytest.raises(ValueError, match="needs --library"):
        run_comparison(tiny_suite(1), systems=["insitu-frozen"], run_dir=tmp_path)
