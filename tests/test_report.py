"""``insitu report`` and :mod:`insitu.report` on synthetic run folders of ``insitu evolve``.

Each test writes ``run.json``, ``steps.jsonl`` and ``predictions.jsonl`` itself
(the contract of ``insitu evolve``, with :mod:`insitu.testing.run_folders`), then
checks the page, the PNG files, the figures behind them and the command's exit
codes. ``test_report_browser.py`` opens reports in headless Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from insitu.cli import main
from insitu.cli.common import EXIT_CONFIG, EXIT_OK
from insitu.report import (
    PLOTS,
    REPORT_FILE,
    SCRIPTED_BANNER,
    SCRIPTED_FIGURE_MARK,
    ReportError,
    build_figures,
    figure_texts,
    load_run,
    load_runs,
    resolve_run_dirs,
    summarize,
    tool_name,
    tool_usage,
    top_tools,
    write_report,
)
from insitu.testing.run_folders import (
    HOSTILE_QUESTION,
    make_run,
    prediction,
    sample_runs,
    step,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fixtures


class References(HTMLParser):
    """Collects every attribute of the page that can point to another resource, and the ids."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster", "action") and value:
                self.refs.append((tag, name, value))
            if name == "id" and value:
                self.ids.add(value)


def references(page: Path) -> References:
    parser = References()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


DATA_PNG = "data:image/png;base64,"


def png_size(data: bytes | Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserting the data is a PNG)."""
    if isinstance(data, Path):
        data = data.read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (keyword → text)."""
    with Image.open(io.BytesIO(data)) as image:
        return dict(image.text)


def assert_offline(page: Path, *, single_file: bool | None = None) -> list[bytes]:
    """Assert the page needs nothing but itself and PNGs next to it; return its images.

    Args:
        page: The report.
        single_file: ``True``: every image must be embedded; ``False``: every
            image must be a file next to the page; ``None``: either.
    """
    found = references(page)
    assert not found.tags & {"script", "link", "iframe", "object", "embed"}, found.tags
    images = []
    for tag, attr, value in found.refs:
        if (tag, attr) == ("a", "href"):
            assert value.startswith("#") and value[1:] in found.ids, f"dangling link {value}"
            continue
        assert (tag, attr) == ("img", "src"), (tag, attr, value[:80])
        if value.startswith(DATA_PNG):
            assert single_file is not False, "embedded image in a linked page"
            images.append(base64.b64decode(value[len(DATA_PNG) :], validate=True))
            continue
        assert single_file is not True, f"relative image link {value} in a single-file page"
        assert not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//|^/", value), value
        assert ".." not in Path(value).parts, value
        target = page.parent / value
        assert target.is_file(), f"{value} referenced but missing"
        images.append(target.read_bytes())
    text = page.read_text(encoding="utf-8")
    assert "@import" not in text and "url(" not in text
    return images


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


def test_single_run_report_is_one_file_with_valid_plots(tmp_path: Path) -> None:
    run = make_run(tmp_path, "runs/insitu")
    page = write_report([run])
    assert page == run / REPORT_FILE and page.is_file()
    images = assert_offline(page, single_file=True)
    assert len(images) == len(PLOTS)
    for image in images:
        width, height = png_size(image)
        assert width >= 800 and height >= 400
        assert len(image) > 5_000, "a plot looks empty"
    # The PNGs are written next to the page too, the same images.
    on_disk = [(run / name).read_bytes() for name, _ in PLOTS.values()]
    assert sorted(on_disk) == sorted(images)
    text = page.read_text(encoding="utf-8")
    assert SCRIPTED_BANNER not in text
    assert text.lstrip().startswith("<!DOCTYPE html>") and "<style>" in text
    # The page stands alone: moved elsewhere, it has everything.
    moved = tmp_path / "elsewhere.html"
    page.rename(moved)
    assert len(assert_offline(moved, single_file=True)) == len(PLOTS)


def test_linked_images_report_refers_to_the_pngs_next_to_it(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run")
    page = write_report([run], single_file=False)
    images = assert_offline(page, single_file=False)
    assert len(images) == len(PLOTS)
    srcs = [v for tag, _, v in references(page).refs if tag == "img"]
    assert sorted(srcs) == sorted(name for name, _ in PLOTS.values())


def test_out_dir_holds_the_page_and_its_plots(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run")
    page = write_report([run], out_dir=tmp_path / "report" / "here")
    assert page == tmp_path / "report" / "here" / REPORT_FILE
    assert len(assert_offline(page)) == len(PLOTS)
    assert all((page.parent / name).is_file() for name, _ in PLOTS.values())
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
    for key in ("egl", "library_size", "tools_created", "success_rate", "accuracy"):
        legend = figures[key].axes[0].get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert [t.removesuffix(" (no data)") for t in texts] == labels, key
    titles = [ax.get_title() for ax in figures["tool_usage"].axes]
    assert [t.split(":")[0] for t in titles] == labels
    egl_lines = figures["egl"].axes[0].get_lines()
    assert list(egl_lines[1].get_ydata()) == [1.0, 1.0]
    assert list(egl_lines[0].get_ydata()) == [0.5, 0.5]

    page = write_report(dirs, out_dir=tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    summary = text[text.index("<h2>Runs compared</h2>") : text.index("</table>")]
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
    assert "insitu: top 2 of 4 tools by calls" in usage
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


# --------------------------------------------------------------------------- task table


class TaskRows(HTMLParser):
    """The rows of the page's per-task tables: (run block index, row class, cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, list[str]]] = []
        self.block = -1
        self.in_tasks = False
        self.cell: list[str] | None = None
        self.row: list[str] | None = None
        self.row_class = ""
        self.hidden_depth = 0  # inside <div class="full">: the full text, not the cut one

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "div" and found.get("class") == "task-block":
            self.block += 1
        if tag == "table":
            self.in_tasks = found.get("class") == "tasks" and self.block >= 0
        if self.in_tasks and tag == "tr" and "id" in found:
            self.row, self.row_class = [], found.get("class") or ""
        if self.row is not None and tag == "td":
            self.cell = []
        if tag == "div" and found.get("class") == "full":
            self.hidden_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.hidden_depth:
            self.hidden_depth -= 1
        if tag == "td" and self.row is not None and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        if tag == "tr" and self.row is not None:
            self.rows.append((self.block, self.row_class, self.row))
            self.row = None
        if tag == "table":
            self.in_tasks = False

    def handle_data(self, data: str) -> None:
        if self.cell is not None and not self.hidden_depth:
            self.cell.append(data)


def task_rows(page: Path) -> list[tuple[int, str, list[str]]]:
    parser = TaskRows()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.rows


def test_task_table_lists_every_task_problems_first_with_reasons(tmp_path: Path) -> None:
    (run,) = sample_runs(tmp_path)[:1]
    page = write_report([run])
    rows = task_rows(page)
    assert len(rows) == 16 and {block for block, _, _ in rows} == {0}
    classes = [row_class for _, row_class, _ in rows]
    assert classes == ["failed", "incomplete", "wrong", "wrong"] + ["ok"] * 12
    failed = rows[0][2]
    # #, task, status / verdict, reason, question, answer, expected, tools, created, tokens, time
    assert failed[:3] == ["6", "task-0005", "failed✗ wrong"]
    assert "[endpoint]" in failed[3] and "503 Service Unavailable" in failed[3]
    assert rows[1][2][2] == "incomplete✗ wrong" and "ran out of rounds" in rows[1][2][3]
    assert rows[2][2][2] == "completed✗ wrong" and rows[2][2][3] == "expected 5, got 5"
    assert [int(r[2][0]) for r in rows[4:]] == sorted(int(r[2][0]) for r in rows[4:])
    ok = rows[4][2]
    assert ok[1] == "task-0000" and ok[2] == "completed✓ correct" and ok[5:7] == ["2", "2"]
    assert ok[7] == "mean@1" and ok[8] == "mean@1" and ok[9] == "1,360" and ok[10] == "1.5 s"
    text = page.read_text(encoding="utf-8")
    # Counted at the top, each problem task linked (assert_offline checks the anchors).
    top = text[text.index('id="attention"') : text.index("</div>", text.index('id="attention"'))]
    assert "4 tasks need attention" in top and "1 failed, 1 incomplete, 2 wrong of 16" in top
    assert top.count('href="#run-1-task-') == 4 and 'href="#tasks-run-1"' in top
    assert_offline(page)
    assert text.index('id="attention"') < text.index("<h2>Summary</h2>")


def test_task_table_escapes_and_cuts_hostile_text(tmp_path: Path) -> None:
    (run,) = sample_runs(tmp_path)[:1]
    page = write_report([run])
    text = page.read_text(encoding="utf-8")
    assert "<script>document" not in text and "<img src=x" not in text
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in text
    assert "onerror=alert(1)&gt;" in text  # as text, inside a cell
    hostile = next(r for r in task_rows(page) if r[2][1] == "task-0003")[2]
    question = hostile[4]
    assert question.endswith("…") and len(question) <= 90
    # The full text is in the page, to open.
    assert _escape(HOSTILE_QUESTION) in text
    assert_offline(page)


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_a_run_without_problems_says_so(tmp_path: Path) -> None:
    page = write_report([make_run(tmp_path, "run")])
    text = page.read_text(encoding="utf-8")
    assert "Every task completed" in text and 'class="attention clean"' in text
    assert "All 3 tasks completed." in text
    assert {c for _, c, _ in task_rows(page)} == {"ok"}
    assert 'class="only-problems"' not in text


# --------------------------------------------------------------------------- plots


@pytest.mark.parametrize("scripted", [True, False])
def test_scripted_mark_on_every_plot_and_png(tmp_path: Path, scripted: bool) -> None:
    run = make_run(tmp_path, "run", scripted=scripted)
    figures = build_figures(load_runs([run]))
    for key, figure in figures.items():
        assert (SCRIPTED_FIGURE_MARK in figure_texts(figure)) is scripted, key
    page = write_report([run])
    for name, _ in PLOTS.values():
        text = png_text((run / name).read_bytes())
        assert (text.get("Description") == SCRIPTED_FIGURE_MARK) is scripted, name
    for image in assert_offline(page, single_file=True):
        assert (png_text(image).get("Description") == SCRIPTED_FIGURE_MARK) is scripted


def test_mixed_runs_name_the_scripted_one_on_the_plots(tmp_path: Path) -> None:
    runs = load_runs(
        [make_run(tmp_path, "a", system="insitu", scripted=True), make_run(tmp_path, "b")]
    )
    assert [r.label for r in runs] == ["insitu (a)", "insitu (b)"]
    figure = build_figures(runs)["egl"]
    assert f"{SCRIPTED_FIGURE_MARK} (insitu (a))" in figure_texts(figure)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["insitu (a) (scripted)", "insitu (b)"]


def test_a_scripted_mark_in_the_lines_alone_marks_the_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run", scripted=True)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "scripted": False}))
    assert load_run(run).scripted  # a scripted pass resumed into a real run's folder


def _visible_ticks(ax: Any, axis: str) -> list[float]:
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    ticks = ax.get_yticks() if axis == "y" else ax.get_xticks()
    return [t for t in ticks if low - 1e-9 <= t <= high + 1e-9]


def test_count_axes_have_integer_ticks(tmp_path: Path) -> None:
    # Small counts are what make a default axis tick at 0.5, 1.5, ...
    steps = [step(1, library_size=1, tasks_processed=1), step(2, library_size=2, tasks_processed=3)]
    predictions = [
        prediction("t1", ["mean@1"], grade={"correct": True}),
        prediction("t2", ["days@1"], grade={"correct": False}, batch=2),
        prediction("t3", ["mean@1"], grade={"correct": True}, batch=2),
    ]
    runs = load_runs([make_run(tmp_path, "run", steps=steps, predictions=predictions)])
    figures = build_figures(runs, top=2)
    counted = {
        "library_size": ("x", "y"),
        "egl": ("x",),
        "accuracy": ("x",),
        "tools_created": ("x", "y"),
        "success_rate": ("x",),
    }
    for key, axes in counted.items():
        ax = figures[key].axes[0]
        for axis in axes:
            ticks = _visible_ticks(ax, axis)
            assert len(ticks) >= 2, (key, axis, ticks)
            assert all(float(t).is_integer() for t in ticks), (key, axis, ticks)
    usage = figures["tool_usage"].axes[0]
    assert all(float(t).is_integer() for t in _visible_ticks(usage, "x"))


def test_tick_and_title_text_is_readable(tmp_path: Path) -> None:
    figures = build_figures(load_runs([make_run(tmp_path, "run")]))
    for key, figure in figures.items():
        for ax in figure.axes:
            labels = ax.get_xticklabels() + ax.get_yticklabels()
            assert all(label.get_fontsize() >= 11 for label in labels), key
            assert ax.title.get_fontsize() >= 13, key


@pytest.mark.parametrize(("top", "title"), [(15, "top 2 of 2 tools"), (1, "top 1 of 2 tools")])
def test_usage_title_says_top_n_of_m(tmp_path: Path, top: int, title: str) -> None:
    runs = load_runs([make_run(tmp_path, "run")])  # two tools: mean and days
    figure = build_figures(runs, top=top)["tool_usage"]
    assert figure.axes[0].get_title() == f"insitu: {title} by calls"
    assert len(figure.axes[0].patches) == min(top, 2)
    text = write_report([runs[0].path], top=top).read_text(encoding="utf-8")
    assert f"insitu: {title} by calls" in text
    assert "Top 15" not in text


# --------------------------------------------------------------------------- several runs


def test_a_batch_size_sweep_overlays_every_run(tmp_path: Path) -> None:
    dirs = sample_runs(tmp_path)
    runs = load_runs(dirs)
    labels = ["insitu B=2", "insitu B=4"]
    assert [r.label for r in runs] == labels
    figures = build_figures(runs)
    for key in ("egl", "library_size", "accuracy"):
        lines = figures[key].axes[0].get_lines()
        assert [line.get_label() for line in lines] == labels, key
        assert all(len(line.get_xdata()) > 1 for line in lines), key
    accuracy = figures["accuracy"].axes[0].get_lines()
    assert accuracy[0].get_ydata()[-1] == accuracy[1].get_ydata()[-1] == 0.75
    assert list(accuracy[0].get_xdata()) == list(range(2, 17, 2))
    assert list(accuracy[1].get_xdata()) == [4, 8, 12, 16]

    page = write_report(dirs, out_dir=tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    compared = text[text.index("<h2>Runs compared</h2>") :]
    compared = compared[: compared.index("</table>")]
    assert re.findall(r"<tr><td>(.*?) <strong>", compared) == labels
    assert "<th>batch size</th>" in compared
    rows = task_rows(page)
    assert [sum(1 for b, _, _ in rows if b == i) for i in (0, 1)] == [16, 16]
    across = text[text.index('id="tasks-across-runs"') :]
    assert "of 16 tasks have different outcomes" in across
    assert_offline(page, single_file=True)


def test_an_eval_folder_stands_for_its_systems(tmp_path: Path) -> None:
    root = tmp_path / "cmp"
    make_run(root, "no-reuse", system="no-reuse")
    make_run(root, "insitu", system="insitu")
    systems = [{"system": s, "run_dir": str(root / s)} for s in ("insitu", "no-reuse")]
    (root / "comparison.json").write_text(json.dumps({"systems": systems}))
    assert resolve_run_dirs([root]) == [root / "insitu", root / "no-reuse"]
    page = write_report([root])
    assert page == root / REPORT_FILE
    assert [r.label for r in load_runs([root])] == ["insitu", "no-reuse"]


def test_a_folder_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(ReportError, match="not a run folder"):
        load_run(tmp_path / "notes")
    result = invoke(str(tmp_path / "notes"))
    assert result.exit_code == EXIT_CONFIG
    assert "not a run folder" in result.stderr and "Traceback" not in result.output


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
    assert "the top 1 per run (versions merged)" in text
    assert len(assert_offline(out / REPORT_FILE, single_file=True)) == len(PLOTS)


def test_cli_linked_images(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    result = invoke(str(a), "--linked-images")
    assert result.exit_code == EXIT_OK, result.output
    assert len(assert_offline(a / REPORT_FILE, single_file=False)) == len(PLOTS)


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
    # The library's tools with what they cost and saved (docs/library.md).
    built = sorted({t.split("@")[0] for p in runs[0].predictions for t in p.tools_created})
    assert built and sorted(r["name"] for r in runs[0].tool_roi) == sorted(
        r.name for r in store.list(status="all")
    )
    roi = text.split('<h2 id="tool-roi">Tool ROI</h2>', 1)[1].split("<h2", 1)[0]
    assert f"top {min(15, len(runs[0].tool_roi))} of {len(runs[0].tool_roi)} tools by ROI" in roi
    assert all(f"<td>{name}</td>" in roi for name in built)
    figures = build_figures(runs)
    ungraded = {"accuracy"}  # evolve does not grade; insitu eval does
    for key in set(PLOTS) - ungraded:
        assert "no data" not in figure_texts(figures[key]), f"{key} says no data"
        assert SCRIPTED_FIGURE_MARK in figure_texts(figures[key]), key
    # Every JSONL line of a scripted run carries the mark.
    for name in ("predictions.jsonl", "steps.jsonl"):
        lines = (run_dir / name).read_text(encoding="utf-8").splitlines()
        assert lines and all(json.loads(line)["scripted"] is True for line in lines), name
