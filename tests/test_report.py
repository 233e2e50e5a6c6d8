"""``insitu report`` and :mod:`insitu.report` on synthetic run folders of ``insitu evolve``.

Each test writes ``run.json``, ``steps.jsonl`` and ``predictions.jsonl`` itself
(the contract of ``insitu evolve``), then checks the page, the PNG files, the
figures behind them and the command's exit codes.
"""

from __future__ import annotations

import json
import math
import re
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from insitu.cli import main
from insitu.cli.common import EXIT_CONFIG, EXIT_OK
from insitu.report import (
    PLOTS,
    REPORT_FILE,
    SCRIPTED_BANNER,
    ReportError,
    build_figures,
    load_run,
    load_runs,
    summarize,
    tool_name,
    tool_usage,
    top_tools,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fixtures


def step(number: int, **fields: Any) -> dict[str, Any]:
    """A steps.jsonl line with plausible defaults."""
    line: dict[str, Any] = {
        "step": number,
        "tasks": [f"t{number}a", f"t{number}b"],
        "tasks_processed": 2 * number,
        "library_size": number,
        "tools_created": 1,
        "tools_added": 1,
        "tools_merged": 0,
        "tools_archived": 0,
        "tools_repaired": 0,
        "invocations": 2,
        "successes": 2,
        "tool_success_rate": 1.0,
        "egl": 1 / 2,
        "tokens": {
            "manager": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "calls": 1}
        },
        "wall_time_s": 2.0,
        "failed_tasks": 0,
    }
    line.update(fields)
    return line


def prediction(task_id: str, tools_used: list[str], **fields: Any) -> dict[str, Any]:
    """A predictions.jsonl line with plausible defaults."""
    line: dict[str, Any] = {
        "id": task_id,
        "question": f"question {task_id}",
        "answer": "42",
        "status": "completed",
        "tools_used": tools_used,
        "tools_created": [],
        "tools_repaired": [],
        "tokens": {
            "manager": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2, "calls": 1}
        },
        "metrics": {"tool_invocations": len(tools_used), "tool_successes": len(tools_used)},
        "error": None,
        "batch": 1,
        "wall_time_s": 1.0,
    }
    line.update(fields)
    return line


def make_run(
    root: Path,
    name: str,
    *,
    system: str | None = "insitu",
    scripted: bool = False,
    steps: list[dict[str, Any]] | None = None,
    predictions: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a run folder as ``insitu evolve`` does and return it."""
    folder = root / name
    folder.mkdir(parents=True)
    meta: dict[str, Any] = {
        "run_id": f"run-{name}",
        "tasks_file": "tasks.jsonl",
        "batch_size": 2,
        "store_dir": str(folder / "store"),
        "frozen": False,
        "scripted": scripted,
        "model": "test-model",
        "started_at": "2025-01-01T00:00:00+00:00",
    }
    if system is not None:
        meta["system"] = system
    (folder / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    if steps is None:
        steps = [step(1), step(2)]
    if predictions is None:
        predictions = [
            prediction("t1", ["mean@1"]),
            prediction("t2", ["mean@2", "days@1"]),
            prediction("t3", ["mean@2"]),
        ]
    for file, lines in (("steps.jsonl", steps), ("predictions.jsonl", predictions)):
        text = "".join(json.dumps(line) + "\n" for line in lines)
        (folder / file).write_text(text, encoding="utf-8")
    return folder


class References(HTMLParser):
    """Collects every attribute of the page that can point to another resource."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster", "action") and value:
                self.refs.append((tag, name, value))


def references(page: Path) -> References:
    parser = References()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserting the file is a PNG)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_offline(page: Path) -> list[Path]:
    """Assert the page refers only to existing files next to it; return them."""
    found = references(page)
    assert not found.tags & {"script", "link", "iframe", "object", "embed"}, found.tags
    files = []
    for tag, attr, value in found.refs:
        assert (tag, attr) == ("img", "src"), (tag, attr, value)
        assert not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//|^/", value), value
        assert ".." not in Path(value).parts, value
        target = page.parent / value
        assert target.is_file(), f"{value} referenced but missing"
        files.append(target)
    text = page.read_text(encoding="utf-8")
    assert "@import" not in text and "url(" not in text
    return files


# --------------------------------------------------------------------------- aggregation


def test_tool_name_strips_only_the_version_suffix() -> None:
    assert tool_name("mean@1") == "mean"
    assert tool_name("mean@12") == "mean"
    assert tool_name("plain") == "plain"
    assert tool_name("odd@name@3") == "odd@name"
    assert tool_name("@3") == "@3"


def test_tool_usage_merges_versions_and_counts_every_call() -> None:
    used = [["mean@1", "mean@2"], ["mean@2", "days@1", "mean@2"], [], ["days"]]
    assert tool_usage(used) == {"mean": 4, "days": 2}
    assert tool_usage([]) == {}


def test_top_tools_orders_by_calls_then_name_and_cuts() -> None:
    used = [["b@1", "a@1", "c@1"], ["b@2", "a@2", "d@1"], ["z@1", "z@1", "z@3"]]
    assert top_tools(used, 10) == [("z", 3), ("a", 2), ("b", 2), ("c", 1), ("d", 1)]
    assert top_tools(used, 2) == [("z", 3), ("a", 2)]


# --------------------------------------------------------------------------- report


def test_single_run_report_is_offline_with_valid_plots(tmp_path: Path) -> None:
    run = make_run(tmp_path, "runs/insitu")
    page = write_report([run])
    assert page == run / REPORT_FILE and page.is_file()
    files = assert_offline(page)
    assert sorted(f.name for f in files) == sorted(name for name, _ in PLOTS.values())
    for file in files:
        width, height = png_size(file)
        assert width >= 400 and height >= 250
        assert file.stat().st_size > 5_000, f"{file.name} looks empty"
    text = page.read_text(encoding="utf-8")
    assert SCRIPTED_BANNER not in text
    assert text.lstrip().startswith("<!DOCTYPE html>") and "<style>" in text


def test_out_dir_holds_the_page_and_its_plots(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run")
    page = write_report([run], out_dir=tmp_path / "report" / "here")
    assert page == tmp_path / "report" / "here" / REPORT_FILE
    assert len(assert_offline(page)) == len(PLOTS)
    assert not (run / REPORT_FILE).exists()


@pytest.mark.parametrize("scripted", [True, False])
def test_scripted_banner_iff_a_run_is_scripted(tmp_path: Path, scripted: bool) -> None:
    real = make_run(tmp_path, "real", system="no-reuse")
    maybe = make_run(tmp_path, "maybe", system="insitu", scripted=scripted)
    text = write_report([real, maybe], out_dir=tmp_path / "out").read_text(encoding="utf-8")
    assert (SCRIPTED_BANNER in text) is scripted
    if scripted:
        # At the top: before the first heading of the report.
        assert text.index(SCRIPTED_BANNER) < text.index("<h1>")
        assert 'class="scripted"' in text


def test_several_runs_are_separate_series_labelled_by_system(tmp_path: Path) -> None:
    dirs = [
        make_run(tmp_path, "a", system="insitu"),
        make_run(tmp_path, "b", system="no-reuse", steps=[step(1, egl=1.0), step(2, egl=1.0)]),
        make_run(tmp_path, "python-interpreter", system=None),
    ]
    runs = load_runs(dirs)
    labels = ["insitu", "no-reuse", "python-interpreter"]
    assert [r.label for r in runs] == labels
    figures = build_figures(runs, top=5)
    assert set(figures) == set(PLOTS)
    for key in ("egl", "library_size", "tools_created", "success_rate"):
        legend = figures[key].axes[0].get_legend()
        assert [t.get_text() for t in legend.get_texts()] == labels, key
    assert [ax.get_title() for ax in figures["tool_usage"].axes] == labels
    egl_lines = figures["egl"].axes[0].get_lines()
    assert list(egl_lines[1].get_ydata()) == [1.0, 1.0]
    assert list(egl_lines[0].get_ydata()) == [0.5, 0.5]

    page = write_report(dirs, out_dir=tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    summary = text[text.index("<h2>Summary</h2>") : text.index("</table>")]
    rows = re.findall(r"<tr><td>(.*?)</td>", summary)
    assert rows == labels


def test_runs_sharing_a_system_get_their_folder_name(tmp_path: Path) -> None:
    runs = load_runs([make_run(tmp_path, "seed1"), make_run(tmp_path, "seed2")])
    assert [r.label for r in runs] == ["insitu (seed1)", "insitu (seed2)"]


def test_summary_figures(tmp_path: Path) -> None:
    steps = [
        step(1, library_size=2, egl=None, invocations=0, successes=0, tool_success_rate=None),
        step(
            2,
            library_size=3,
            egl=0.75,
            wall_time_s=70.0,
            tokens={
                "manager": {
                    "input_tokens": 100,
                    "output_tokens": 20,
                    "total_tokens": 120,
                    "calls": 2,
                },
                "builder": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10, "calls": 1},
            },
        ),
    ]
    predictions = [
        prediction("t1", [], grade={"correct": True, "score": 1.0, "reason": ""}),
        prediction("t2", ["mean@1"], grade={"correct": False, "score": 0.0, "reason": ""}),
        prediction("t3", ["mean@1"], status="incomplete"),
        prediction("t4", [], status="failed", error="boom"),
    ]
    run = load_run(make_run(tmp_path, "run", steps=steps, predictions=predictions))
    summary = summarize(run)
    assert (summary.tasks, summary.batches) == (4, 2)
    assert (summary.completed, summary.incomplete, summary.failed) == (2, 1, 1)
    assert summary.library_size == 3 and summary.egl == 0.75
    assert summary.tokens_source == "steps"
    assert summary.tokens["manager"] == {
        "input_tokens": 110,
        "output_tokens": 25,
        "total_tokens": 135,
        "calls": 3,
    }
    assert summary.tokens["builder"]["total_tokens"] == 10
    assert summary.wall_time_s == 72.0
    assert (summary.graded, summary.correct, summary.accuracy) == (2, 1, 0.5)
    text = write_report([run.path]).read_text(encoding="utf-8")
    assert "50.0% (1/2 graded of 4 tasks)" in text
    assert "0.750" in text and "1 min 12 s" in text
    assert "total: 145" in text


def test_accuracy_is_a_dash_without_grades(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "run"))
    assert summarize(run).accuracy is None


def test_usage_table_in_page_counts_calls_top_n(tmp_path: Path) -> None:
    predictions = [
        prediction("t1", ["mean@1", "mean@2", "days@1"]),
        prediction("t2", ["mean@3", "sort@1", "days@2"]),
        prediction("t3", ["rare@1"]),
    ]
    run = make_run(tmp_path, "run", predictions=predictions)
    text = write_report([run], top=2).read_text(encoding="utf-8")
    usage = text[text.index("<h2>Most used tools</h2>") :]
    usage = usage[: usage.index("</table>")]
    pairs = re.findall(r'<tr><td>([^<]*)</td><td class="num">(\d+)</td></tr>', usage)
    assert pairs == [("mean", "3"), ("days", "2")]
    ranked = top_tools((p.tools_used for p in load_run(run).predictions), 2)
    figure = build_figures([load_run(run)], top=2)["tool_usage"]
    bars = figure.axes[0].patches
    assert sorted(b.get_width() for b in bars) == sorted(c for _, c in ranked) == [2, 3]


@pytest.mark.parametrize("missing", [False, True])
def test_zero_steps_still_reports_with_no_data_plots(tmp_path: Path, missing: bool) -> None:
    empty = make_run(tmp_path, "empty", system="no-reuse", steps=[])
    if missing:  # insitu evolve writes steps.jsonl when the first batch completes
        _remove(empty, "steps.jsonl")
    page = write_report([empty])
    assert len(assert_offline(page)) == len(PLOTS)
    runs = load_runs([empty])
    figures = build_figures(runs)
    for key in ("egl", "library_size", "tools_created", "success_rate"):
        texts = [t.get_text() for t in figures[key].axes[0].texts]
        assert texts == ["no data"], key
    assert len(figures["tool_usage"].axes[0].texts) == 0  # predictions used tools
    text = page.read_text(encoding="utf-8")
    assert ("no steps.jsonl" if missing else "steps.jsonl is empty") in text

    mixed = build_figures(load_runs([make_run(tmp_path, "full"), empty]))
    legend = [t.get_text() for t in mixed["egl"].axes[0].get_legend().get_texts()]
    assert legend == ["insitu", "no-reuse (no data)"]
    assert len(mixed["egl"].axes[0].texts) == 0


def test_missing_success_rate_breaks_the_line(tmp_path: Path) -> None:
    steps = [
        step(1, tool_success_rate=0.5),
        step(2, invocations=0, successes=0, tool_success_rate=None),
        step(3, tool_success_rate=1.0),
    ]
    runs = load_runs([make_run(tmp_path, "run", steps=steps)])
    (line,) = build_figures(runs)["success_rate"].axes[0].get_lines()
    ys = list(line.get_ydata())
    assert ys[0] == 0.5 and math.isnan(ys[1]) and ys[2] == 1.0


def test_egl_and_rate_computed_when_absent(tmp_path: Path) -> None:
    steps = [
        {"step": 1, "tools_created": 2, "invocations": 0, "successes": 0},
        {"step": 2, "tools_created": 1, "invocations": 4, "successes": 3},
        {"step": 3, "tools_created": 0, "invocations": 2, "successes": 2},
    ]
    run = load_run(make_run(tmp_path, "run", steps=steps))
    assert [s.egl for s in run.steps] == [None, 0.75, 0.5]
    assert [s.tool_success_rate for s in run.steps] == [None, 0.75, 1.0]


def test_all_text_is_escaped(tmp_path: Path) -> None:
    hostile = "<script>alert('x')</script>"
    run = make_run(
        tmp_path,
        "run",
        system=hostile,
        predictions=[prediction("<i>t1</i>", ["<b>bold</b>@1"])],
    )
    text = write_report([run]).read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>bold" not in text and "<i>t1" not in text
    assert "&lt;script&gt;" in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert_offline(run / REPORT_FILE)


# --------------------------------------------------------------------------- errors


def _remove(folder: Path, name: str) -> None:
    (folder / name).unlink()


def _empty(folder: Path, name: str) -> None:
    (folder / name).write_text("\n", encoding="utf-8")


def _garble(folder: Path, name: str) -> None:
    with (folder / name).open("a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "library_size": \n')


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        ("run.json", _remove, "missing"),
        ("run.json", _empty, "empty"),
        ("predictions.jsonl", _remove, "missing"),
        ("predictions.jsonl", _empty, "empty"),
        ("steps.jsonl", _garble, "line 3: not valid JSON"),
        ("predictions.jsonl", _garble, "line 4: not valid JSON"),
    ],
)
def test_broken_files_name_the_file(tmp_path: Path, file: str, damage: Any, expected: str) -> None:
    run = make_run(tmp_path, "run")
    damage(run, file)
    with pytest.raises(ReportError) as caught:
        write_report([run])
    assert str(run / file) in str(caught.value) and expected in str(caught.value)
    assert caught.value.path == run / file
    assert not (run / REPORT_FILE).exists()


def test_a_torn_last_line_is_left_out_with_a_note(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run")
    for name in ("steps.jsonl", "predictions.jsonl"):
        with (run / name).open("a", encoding="utf-8") as handle:
            handle.write('{"id": "t9", "status": "comp')  # killed while appending
    loaded = load_run(run)
    assert (len(loaded.steps), len(loaded.predictions)) == (2, 3)
    assert any("steps.jsonl: left out a torn last line 3" in w for w in loaded.warnings)
    assert any("predictions.jsonl: left out a torn last line 4" in w for w in loaded.warnings)
    text = write_report([run]).read_text(encoding="utf-8")
    assert "torn last line" in text


def test_wrong_field_types_are_reported_with_the_line(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run", steps=[step(1), step(2, library_size="many")])
    with pytest.raises(ReportError, match=r"steps\.jsonl: line 2: 'library_size'"):
        load_run(run)
    bad = make_run(tmp_path, "bad", predictions=[prediction("t1", "mean@1")])  # type: ignore[arg-type]
    with pytest.raises(ReportError, match="tools_used"):
        load_run(bad)


def test_missing_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such run folder"):
        write_report([tmp_path / "nope"])


# --------------------------------------------------------------------------- CLI


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["report", *args])


def test_cli_writes_the_report(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", system="insitu", scripted=True)
    b = make_run(tmp_path, "b", system="no-reuse")
    out = tmp_path / "out"
    result = invoke(str(a), str(b), "--out", str(out), "--top", "1")
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.strip() == str(out / REPORT_FILE)
    assert SCRIPTED_BANNER in result.stderr
    assert "no-reuse" in result.stderr
    text = (out / REPORT_FILE).read_text(encoding="utf-8")
    assert SCRIPTED_BANNER in text and "no-reuse" in text
    assert "(top 1; versions merged)" in text
    assert len(assert_offline(out / REPORT_FILE)) == len(PLOTS)


def test_cli_defaults_to_the_first_run_folder(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    result = invoke(str(a))
    assert result.exit_code == EXIT_OK, result.output
    assert (a / REPORT_FILE).is_file()


def test_cli_missing_folder_exits_2_without_traceback(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    missing = tmp_path / "missing"
    result = invoke(str(a), str(missing))
    assert result.exit_code == EXIT_CONFIG
    assert str(missing) in result.stderr and "no such run folder" in result.stderr
    assert "Traceback" not in result.output
    assert not (a / REPORT_FILE).exists()


def test_cli_empty_file_exits_2_naming_it(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    _empty(a, "predictions.jsonl")
    result = invoke(str(a))
    assert result.exit_code == EXIT_CONFIG
    assert "predictions.jsonl" in result.stderr and "empty" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [[], ["--top", "0"]])
def test_cli_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    if args:
        args = [str(make_run(tmp_path, "a")), *args]
    assert invoke(*args).exit_code == 2


# --------------------------------------------------------------------------- contract


def test_report_on_a_real_scripted_evolve_run(store: Any, sandbox: Any, tmp_path: Path) -> None:
    """The files ``insitu evolve`` writes (scripted team, real graph) make a full report."""
    from insitu.evals.tasks import Task
    from insitu.evolve import evolve
    from insitu.testing.team import ScriptedTeam, scripted_stream

    run_dir = tmp_path / "run"
    evolve(
        [Task(**t) for t in scripted_stream(8)],
        run_dir=run_dir,
        batch_size=4,
        models=ScriptedTeam().model(),
        tool_store=store,
        sandbox=sandbox,
        context={"store_dir": str(store.path)},
        scripted=True,
    )
    runs = load_runs([run_dir])
    assert len(runs[0].steps) == 2 and len(runs[0].predictions) == 8
    assert runs[0].warnings == []
    summary = summarize(runs[0])
    assert summary.scripted and summary.batches == 2 and summary.egl is not None
    assert summary.tokens and summary.invocations > 0
    assert top_tools(p.tools_used for p in runs[0].predictions)
    page = write_report([run_dir], out_dir=tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    assert SCRIPTED_BANNER in text
    assert len(assert_offline(page)) == len(PLOTS)
    figures = build_figures(runs)
    assert all(len(figures[k].axes[0].texts) == 0 for k in PLOTS), "a plot says no data"
