"""The report page: banners, the runs' summary, the plots, every task, the runs' files.

:func:`render_html` builds one HTML document with inline CSS and no script.
Every text from a run (task questions, answers, errors, tool and system names)
is escaped: task text is untrusted input. Long cell text is cut with an
ellipsis; the full text stays in the page (a ``title`` to hover, or a
``<details>`` to open). Tasks that need attention (failed, incomplete, graded
wrong) come first in each run's task table, marked in colour and counted at
the top of the page with links to them; a checkbox (CSS only) hides the rest.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from insitu.report_data import (
    NO_DATA,
    RUN_FILE,
    STEPS_FILE,
    Prediction,
    Run,
    RunSummary,
    format_accuracy,
    format_egl,
    format_seconds,
    summarize,
    top_tools,
)
from insitu.report_plots import PLOTS, usage_title

#: The header every report of a run made with a scripted test model carries.
SCRIPTED_BANNER = "Produced with a scripted test model — these numbers are not model results."
#: The header of a report on a run whose tools ran without the bubblewrap sandbox.
DEGRADED_BANNER = (
    "Generated tools ran in the DEGRADED sandbox (weak isolation): no filesystem or network "
    "isolation, only rlimits, a separate uid and a scrubbed environment."
)

#: Outcomes of a task that need a look, in the order the task table lists them.
PROBLEM_OUTCOMES = ("failed", "incomplete", "wrong")
#: How many problem tasks the box at the top of the page links to, per run.
TOP_LINKS = 12

#: Cell text longer than this (characters) is cut, by column.
CLIP = {"question": 90, "answer": 40, "expected": 30, "reason": 90, "tools": 40}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  margin: 2rem auto; max-width: 1280px; padding: 0 1rem; color: #222; line-height: 1.45;
  font-size: 16px; }
h1 { margin-bottom: 0.2rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #555; margin-top: 0; }
.scripted { background: #fff3cd; border: 3px solid #d39e00; color: #5c4400;
  padding: 1rem 1.2rem; font-size: 1.35rem; font-weight: bold; margin: 1rem 0; }
.scripted small { display: block; font-size: 0.95rem; font-weight: normal; margin-top: 0.3rem; }
.degraded { background: #f8d7da; border: 3px solid #b02a37; color: #58151c;
  padding: 1rem 1.2rem; font-size: 1.2rem; font-weight: bold; margin: 1rem 0; }
.degraded small { display: block; font-size: 0.95rem; font-weight: normal; margin-top: 0.3rem; }
.warnings { background: #f8f9fa; border-left: 4px solid #6c757d; padding: 0.5rem 1rem; }
.attention { border-left: 5px solid #b02a37; background: #fdf2f3; padding: 0.6rem 1rem;
  margin: 1rem 0; }
.attention.clean { border-left-color: #2e7d32; background: #f1f8f1; }
.attention p { margin: 0.3rem 0; }
.attention .ids a { margin-right: 0.5rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9rem; }
details { margin: 0.5rem 0 1rem; }
code { background: #f4f4f4; padding: 0 0.2rem; }
.badge { display: inline-block; padding: 0 0.45rem; border-radius: 0.6rem; font-size: 0.85rem;
  font-weight: 600; white-space: nowrap; }
.badge.failed { background: #b02a37; color: #fff; }
.badge.incomplete { background: #e8890c; color: #fff; }
.badge.wrong { background: #f3d2d5; color: #7a1020; }
.badge.correct { background: #d4edda; color: #155724; }
.badge.ungraded, .badge.completed, .badge.unknown, .badge.missing { background: #e9ecef;
  color: #333; }
table.tasks { width: 100%; font-size: 0.88rem; }
table.tasks td { overflow-wrap: break-word; }
table.tasks td.id { white-space: nowrap; }
table.tasks td.text { min-width: 12rem; overflow-wrap: anywhere; }
table.tasks td.tools { font-size: 0.82rem; min-width: 8rem; overflow-wrap: anywhere; }
table.tasks td.status .badge { display: block; width: fit-content; margin-bottom: 0.2rem; }
.scroll { overflow-x: auto; }
td.tokens { font-size: 0.85rem; }
td.tokens details { margin: 0; white-space: nowrap; }
table.tasks thead th { position: sticky; top: 0; z-index: 1; }
table.tasks tr.failed td { background: #fbe3e5; }
table.tasks tr.incomplete td { background: #fdf0dc; }
table.tasks tr.wrong td { background: #fdf6f6; }
table.tasks tr.failed td:first-child { box-shadow: inset 5px 0 #b02a37; }
table.tasks tr.incomplete td:first-child { box-shadow: inset 5px 0 #e8890c; }
table.tasks tr.wrong td:first-child { box-shadow: inset 5px 0 #e4a0a8; }
table.tasks tr:target td { outline: 2px solid #0d6efd; }
table.tasks details { margin: 0; }
table.tasks summary { cursor: pointer; }
.full { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; padding: 0.3rem;
  margin-top: 0.2rem; }
.clip { text-decoration: underline dotted #999; }
.filter { margin: 0.3rem 0; font-size: 0.95rem; }
.only-problems:checked ~ table.tasks tr.ok { display: none; }
.counts { margin: 0.2rem 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int, *, expandable: bool = False) -> str:
    """Escaped text, cut at ``limit`` characters with an ellipsis, the full text kept.

    Args:
        text: Untrusted text.
        limit: Characters shown before the cut.
        expandable: Keep the full text in a ``<details>`` to open (for text worth
            reading, e.g. a question or an error) instead of a hover ``title``.
    """
    flat = " ".join(text.split())  # newlines and runs of spaces: one line in a cell
    if len(flat) <= limit:
        return _e(flat)
    cut = _e(flat[: limit - 1].rstrip()) + "…"
    if expandable:
        return f'<details><summary>{cut}</summary><div class="full">{_e(text)}</div></details>'
    return f'<span class="clip" title="{_e(text)}">{cut}</span>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[tuple[str, bool | str]]]) -> str:
    """An HTML table; each cell is (already escaped HTML, numeric: ``True``, or a CSS class)."""

    def cell(content: str, kind: bool | str) -> str:
        if kind is True:
            return f'<td class="num">{content}</td>'
        return f'<td class="{kind}">{content}</td>' if kind else f"<td>{content}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(c, k) for c, k in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tokens_cell(tokens: dict[str, dict[str, int]], source: str) -> str:
    if not tokens:
        return "-"
    lines = [
        f"{_e(role)}: {c['total_tokens']:,} (in {c['input_tokens']:,} / "
        f"out {c['output_tokens']:,}, {c['calls']:,} calls)"
        for role, c in tokens.items()
    ]
    total = sum(c["total_tokens"] for c in tokens.values())
    # The total in sight; the roles, one a line, on demand (they would widen the table).
    cell = (
        f"<strong>total: {total:,}</strong>"
        f"<details><summary>by role</summary>{'<br>'.join(lines)}</details>"
    )
    if source != "steps":
        cell += "<em>(from predictions: no completed batch)</em>"
    return cell


def _summary_table(summaries: Sequence[RunSummary]) -> str:
    headers = (
        "system",
        "model",
        "batch size",
        "tasks",
        "batches",
        "completed",
        "incomplete",
        "failed",
        "accuracy",
        "final library size",
        "final EGL",
        "tool calls (ok)",
        "tokens / task",
        "tokens",
        "wall time",
    )
    rows = []
    for s in summaries:
        label = _e(s.label) + (" <strong>(scripted)</strong>" if s.scripted else "")
        calls = f"{s.invocations:,} ({s.successes:,})" if s.batches else "-"
        per_task = "-" if s.tokens_per_task is None else f"{s.tokens_per_task:,.0f}"
        rows.append(
            [
                (label, False),
                (_e(s.model or "-"), False),
                ("-" if s.batch_size is None else str(s.batch_size), True),
                (str(s.tasks), True),
                (str(s.batches), True),
                (str(s.completed), True),
                (str(s.incomplete), True),
                (str(s.failed), True),
                (_e(format_accuracy(s)), True),
                ("-" if s.library_size is None else str(s.library_size), True),
                (_e(format_egl(s.egl)), True),
                (calls, True),
                (per_task, True),
                (_tokens_cell(s.tokens, s.tokens_source), "tokens"),
                (_e(format_seconds(s.wall_time_s)), True),
            ]
        )
    return _table(headers, rows)


def _usage_tables(runs: Sequence[Run], top: int) -> str:
    parts = []
    for run in runs:
        ranked = top_tools((p.tools_used for p in run.predictions), top)
        parts.append(f"<h3>{_e(usage_title(run, top))}</h3>")
        if ranked:
            parts.append(
                _table(("tool", "calls"), ([(_e(n), False), (str(c), True)] for n, c in ranked))
            )
        else:
            parts.append(f"<p>{NO_DATA}: no prediction used a tool.</p>")
    return "".join(parts)


#: The columns of the tool ROI tables.
ROI_HEADERS = ("tool", "status", "cost tokens", "cost $", "reuses", "saved tokens", "ROI")


def _roi_tables(runs: Sequence[Run], top: int) -> str:
    """Per library, the tools that paid for themselves best and worst (docs/library.md)."""
    parts = [
        "<p>What each tool cost to build and repair (tokens of the ToolDeveloper, reflection "
        "and absorbing), against an estimate of what its reuses saved: each successful reuse "
        "is credited the tool's first build cost (* marks tools with no recorded build, "
        "credited the library's mean). ROI = saved / cost. Read from the run's library as it "
        "is now (see docs/library.md).</p>"
    ]
    shown: set[str] = set()
    for run in runs:
        library = str(run.meta.get("store_dir"))
        if not run.tool_roi or library in shown:
            continue
        shown.add(library)
        rows = sorted(run.tool_roi, key=lambda r: (r["roi"] is None, -(r["roi"] or 0.0), r["name"]))
        heading = f"{run.label}: top {min(top, len(rows))} of {len(rows)} tools by ROI"
        parts.append(f"<h3>{_e(heading)}</h3>")
        body = (
            [
                (_e(r["name"]), False),
                (_e(r["status"]), False),
                (f"{r['cost_tokens']:,}", True),
                (_e("-" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}"), True),
                (str(r["reuses"]), True),
                (f"{r['saved_tokens']:,}{'*' if r['estimated_reference'] else ''}", True),
                (_e("-" if r["roi"] is None else f"{r['roi']:.2f}"), True),
            ]
            for r in rows[:top]
        )
        parts.append(
            _table(
                ("tool", "status", "cost tokens", "cost $", "reuses", "saved tokens", "ROI"), body
            )
        )
    return "".join(parts)


# --------------------------------------------------------------------------- tasks


def _run_anchor(index: int) -> str:
    """The id of a run's task table (ids come from positions, never from run text)."""
    return f"tasks-run-{index + 1}"


def _task_anchor(run_index: int, position: int) -> str:
    return f"run-{run_index + 1}-task-{position}"


def _badge(outcome: str, text: str | None = None) -> str:
    return f'<span class="badge {_e(outcome)}">{_e(text or outcome)}</span>'


def _tool_list(refs: Sequence[str]) -> str:
    """``mean@2 ×2`` / ``days@1``: each tool once, one a line, with how often it was called."""
    if not refs:
        return "-"
    counts: dict[str, int] = {}
    for ref in refs:
        counts[ref] = counts.get(ref, 0) + 1
    return "<br>".join(
        _clip(ref if n == 1 else f"{ref} ×{n}", CLIP["tools"]) for ref, n in counts.items()
    )


def _verdict(prediction: Prediction) -> str:
    if prediction.correct is None:
        return "-"
    return _badge("correct", "✓ correct") if prediction.correct else _badge("wrong", "✗ wrong")


def _tokens_title(prediction: Prediction) -> str:
    return "; ".join(
        f"{role}: {c['total_tokens']:,} (in {c['input_tokens']:,} / out {c['output_tokens']:,})"
        for role, c in prediction.tokens.items()
    )


def problem_counts(run: Run) -> dict[str, int]:
    """How many of a run's tasks failed, are incomplete, or were graded wrong.

    Args:
        run: A run.

    Returns:
        Count per outcome of :data:`PROBLEM_OUTCOMES` (zeros included).
    """
    outcomes = [p.outcome for p in run.predictions]
    return {outcome: outcomes.count(outcome) for outcome in PROBLEM_OUTCOMES}


def _counts_text(counts: Mapping[str, int], tasks: int) -> str:
    found = [f"{n} {outcome}" for outcome, n in counts.items() if n]
    return f"{', '.join(found)} of {tasks} task{'s' if tasks != 1 else ''}"


def _task_table(run: Run, run_index: int) -> str:
    """One run's tasks: those needing attention first, then the rest, in stream order."""
    has_expected = any(p.expected is not None for p in run.predictions)
    has_grades = any(p.correct is not None for p in run.predictions)
    positioned = list(enumerate(run.predictions, 1))
    rank = {outcome: i for i, outcome in enumerate(PROBLEM_OUTCOMES)}
    positioned.sort(key=lambda item: (rank.get(item[1].outcome, len(rank)), item[0]))
    headers = ["#", "task", "status / verdict" if has_grades else "status", "reason / error"]
    headers += ["question", "answer", *(["expected"] if has_expected else [])]
    headers += ["tools used", "tools created", "tokens", "time"]
    rows = []
    for position, p in positioned:
        outcome = p.outcome
        row_class = outcome if outcome in PROBLEM_OUTCOMES else "ok"
        status = _badge(p.status if p.status in PROBLEM_OUTCOMES else "completed", p.status or "?")
        verdict = _verdict(p) if p.correct is not None else ""
        cells = [
            f'<td class="num">{position}</td>',
            f'<td class="id">{_clip(p.id, 40)}</td>',
            f'<td class="status">{status}{verdict}</td>',
        ]
        reason = _clip(p.reason, CLIP["reason"], expandable=True)
        cells.append(f'<td class="text">{reason}</td>' if reason else "<td></td>")
        cells.append(
            f'<td class="text">{_clip(p.question, CLIP["question"], expandable=True)}</td>'
        )
        cells.append(f"<td>{_clip(p.answer, CLIP['answer']) if p.answer else '-'}</td>")
        if has_expected:
            expected = "-" if p.expected is None else _clip(p.expected, CLIP["expected"])
            cells.append(f"<td>{expected}</td>")
        cells.append(f'<td class="tools">{_tool_list(p.tools_used)}</td>')
        cells.append(f'<td class="tools">{_tool_list(p.tools_created)}</td>')
        tokens = f"{p.total_tokens:,}" if p.tokens else "-"
        cells.append(f'<td class="num" title="{_e(_tokens_title(p))}">{tokens}</td>')
        cells.append(f'<td class="num">{_e(format_seconds(p.wall_time_s))}</td>')
        rows.append(
            f'<tr id="{_task_anchor(run_index, position)}" class="{row_class}" '
            f'data-outcome="{_e(outcome)}">{"".join(cells)}</tr>'
        )
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    counts = problem_counts(run)
    problems = sum(counts.values())
    filter_id = f"only-problems-{run_index + 1}"
    toggle = (
        f'<input type="checkbox" id="{filter_id}" class="only-problems">'
        f'<label class="filter" for="{filter_id}"> show only the {problems} task'
        f"{'s' if problems != 1 else ''} that need attention</label>"
        if problems
        else ""
    )
    summary = (
        f"{_counts_text(counts, len(run.predictions))}; listed first, marked in colour."
        if problems
        else f"All {len(run.predictions)} tasks completed"
        + (" and none was graded wrong." if has_grades else ".")
    )
    # One block per run: the checkbox hides rows of the table after it in its block only.
    return (
        f'<div class="task-block"><h3 id="{_run_anchor(run_index)}">{_e(run.label)}</h3>'
        f'<p class="counts">{_e(summary)}</p>{toggle}'
        f'<table class="tasks"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table></div>"
    )


def _attention_box(runs: Sequence[Run]) -> str:
    """The box at the top: per run, how many tasks need attention, with links to them."""
    lines = []
    total = 0
    for index, run in enumerate(runs):
        counts = problem_counts(run)
        problems = [(i, p) for i, p in enumerate(run.predictions, 1) if p.outcome in counts]
        total += len(problems)
        label = f"<strong>{_e(run.label)}</strong>: "
        if not problems:
            lines.append(f"<p>{label}no task failed, is incomplete or was graded wrong.</p>")
            continue
        links = "".join(
            f'<a href="#{_task_anchor(index, i)}" title="{_e(p.outcome)}: {_e(p.reason)}">'
            f"{_e(p.id if len(p.id) <= 30 else p.id[:29] + '…')}</a>"
            for i, p in problems[:TOP_LINKS]
        )
        more = f" and {len(problems) - TOP_LINKS} more" if len(problems) > TOP_LINKS else ""
        lines.append(
            f"<p>{label}{_e(_counts_text(counts, len(run.predictions)))} — "
            f'<a href="#{_run_anchor(index)}">see the tasks</a></p>'
            f'<p class="ids">{links}{_e(more)}</p>'
        )
    css = "attention" if total else "attention clean"
    title = (
        f"{total} task{'s' if total != 1 else ''} need attention"
        if total
        else "Every task completed"
    )
    return f'<div class="{css}" id="attention"><strong>{_e(title)}</strong>{"".join(lines)}</div>'


def _cross_run_table(runs: Sequence[Run]) -> str:
    """Each task's outcome in every run, linked to its row; tasks whose outcomes differ first."""
    order: dict[str, str] = {}
    outcomes: list[dict[str, tuple[int, Prediction]]] = []
    for run in runs:
        by_id = {p.id: (position, p) for position, p in enumerate(run.predictions, 1)}
        outcomes.append(by_id)
        for p in run.predictions:
            order.setdefault(p.id, p.question)
    keyed = []
    for position, (task_id, question) in enumerate(order.items()):
        cells = [by_id.get(task_id) for by_id in outcomes]
        seen = {c[1].outcome if c else "missing" for c in cells}
        keyed.append((len(seen) == 1, position, task_id, question, cells))
    keyed.sort(key=lambda item: (item[0], item[1]))
    head = "".join(f"<th>{_e(h)}</th>" for h in ["task", "question", *(r.label for r in runs)])
    rows = []
    for same, _, task_id, question, cells in keyed:
        tds = [f"<td>{_clip(task_id, 40)}</td>", f"<td>{_clip(question, 70)}</td>"]
        for run_index, cell in enumerate(cells):
            if cell is None:
                tds.append(f"<td>{_badge('missing')}</td>")
                continue
            position, prediction = cell
            link = f"#{_task_anchor(run_index, position)}"
            tds.append(f'<td><a href="{link}">{_badge(prediction.outcome)}</a></td>')
        rows.append(f'<tr class="{"ok" if same else "differs"}">{"".join(tds)}</tr>')
    differing = sum(1 for item in keyed if not item[0])
    return (
        f"<p>{differing} of {len(keyed)} tasks have different outcomes across the runs; "
        "they are listed first.</p>"
        f'<table class="tasks"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table>"
    )


# --------------------------------------------------------------------------- runs


def _run_details(run: Run) -> str:
    meta_rows = ([(_e(k), False), (_e(json.dumps(v)), False)] for k, v in run.meta.items())
    step_rows = (
        [
            (str(s.step), True),
            ("-" if s.tasks_processed is None else str(s.tasks_processed), True),
            ("-" if s.library_size is None else str(s.library_size), True),
            (str(s.tools_created), True),
            (f"{s.invocations} ({s.successes})", True),
            ("-" if s.tool_success_rate is None else f"{100 * s.tool_success_rate:.1f}%", True),
            (_e(format_egl(s.egl)), True),
            (str(s.failed_tasks), True),
            (_e(format_seconds(s.wall_time_s)), True),
        ]
        for s in run.steps
    )
    steps = (
        _table(
            (
                "step",
                "tasks processed",
                "library size",
                "tools created",
                "tool calls (ok)",
                "success rate",
                "EGL",
                "failed tasks",
                "wall time",
            ),
            step_rows,
        )
        if run.steps
        else f"<p>{NO_DATA}: {STEPS_FILE} has no completed batch.</p>"
    )
    return (
        f"<h3>{_e(run.label)}</h3><p>folder: <code>{_e(run.path)}</code></p>"
        f"<details><summary>{RUN_FILE}</summary>{_table(('key', 'value'), meta_rows)}</details>"
        f"<details><summary>{STEPS_FILE}: {len(run.steps)} step(s)</summary>{steps}</details>"
    )


def _captions(top: int) -> dict[str, str]:
    return {
        "egl": "Cumulative EGL after each completed batch, against tasks processed; a line "
        "starts at the first tool call.",
        "library_size": "Active tools in the library against tasks processed.",
        "accuracy": "Share of the graded tasks so far that were graded correct, after each "
        "batch (no data: nothing graded; `insitu eval` grades, `insitu evolve` does not).",
        "tools_created": "New tools created in each batch.",
        "tool_usage": f"Calls per tool over all predictions, the top {top} per run "
        "(versions merged).",
        "success_rate": "Share of each batch's tool calls that returned normally "
        "(a gap: a batch without tool calls).",
    }


def render_html(runs: Sequence[Run], images: Mapping[str, str], top: int = 15) -> str:
    """Render the report page.

    Args:
        runs: The runs, as from :func:`insitu.report_data.load_runs`.
        images: Plot key (as :data:`insitu.report_plots.PLOTS`) → image source:
            a file name relative to the page, or a ``data:`` URI.
        top: How many tools the usage tables show per run.

    Returns:
        A complete HTML document with inline CSS, no script, and no reference
        other than ``images`` and links within the page.
    """
    summaries = [summarize(r) for r in runs]
    labels = ", ".join(r.label for r in runs)
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>insitu report: {_e(labels)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
    ]
    scripted = [r.label for r in runs if r.scripted]
    if scripted:
        parts.append(
            f'<div class="scripted" role="alert">{_e(SCRIPTED_BANNER)}'
            f"<small>Scripted run(s): {_e(', '.join(scripted))}. Every plot, "
            "and every line of their JSONL files, carries the mark too.</small></div>\n"
        )
    degraded = [r.label for r in runs if r.degraded]
    if degraded:
        parts.append(
            f'<div class="degraded" role="alert">{_e(DEGRADED_BANNER)}'
            f"<small>Run(s) with weak isolation: {_e(', '.join(degraded))}</small></div>\n"
        )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = "insitu run report" if len(runs) == 1 else f"insitu report: {len(runs)} runs compared"
    parts.append(
        f"<h1>{_e(title)}</h1>\n<p class='meta'>{len(runs)} run(s): {_e(labels)}; "
        f"generated {_e(generated)}. EGL = cumulative tools created / cumulative tool "
        "invocations (lower is better; undefined before the first tool call).</p>\n"
    )
    parts.append(_attention_box(runs) + "\n")
    warnings = [f"{r.label}: {w}" for r in runs for w in r.warnings]
    if warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        parts.append(f'<div class="warnings"><strong>Notes</strong><ul>{items}</ul></div>\n')
    heading = "Summary" if len(runs) == 1 else "Runs compared"
    parts.append(f'<h2>{heading}</h2>\n<div class="scroll">{_summary_table(summaries)}</div>\n')
    captions = _captions(top)
    for key, (_, heading) in PLOTS.items():
        if key not in images:
            continue
        parts.append(
            f'<h2>{_e(heading)}</h2>\n<figure><img src="{_e(images[key])}" '
            f'alt="{_e(heading)}: {_e(labels)}"><figcaption>{_e(captions[key])}'
            "</figcaption></figure>\n"
        )
        if key == "tool_usage":
            parts.append(_usage_tables(runs, top))
    if any(run.tool_roi for run in runs):
        parts.append('<h2 id="tool-roi">Tool ROI</h2>\n' + _roi_tables(runs, top))
    parts.append('<h2 id="tasks">Tasks</h2>\n')
    parts.append(
        "<p>One row per task (its last run, if it was retried); the tasks that failed, are "
        "incomplete or were graded wrong come first. Cut text: hover or open it for the "
        "whole.</p>\n"
    )
    parts.extend(_task_table(run, index) + "\n" for index, run in enumerate(runs))
    if len(runs) > 1:
        parts.append('<h2 id="tasks-across-runs">Tasks across runs</h2>\n')
        parts.append(_cross_run_table(runs) + "\n")
    parts.append("<h2>Runs</h2>\n" + "".join(_run_details(r) for r in runs))
    parts.append("\n</body>\n</html>\n")
    return "".join(parts)
