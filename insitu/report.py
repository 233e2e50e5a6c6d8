"""Reports on runs of ``insitu evolve``: one offline HTML page with plots, a summary and every task.

:func:`write_report` reads one or more run folders (an ``insitu`` run next to
baselines such as ``no-reuse`` or ``python-interpreter``, or runs of one system
with different batch sizes; the folder of ``insitu eval`` stands for its
systems) and writes ``report.html`` and one PNG per plot into a folder. Every
plot overlays the runs, each labelled by its ``system`` (with its batch size or
folder name when that is not enough to tell them apart).

The page is one file by default: the plots are embedded as ``data:`` URIs, so
it can be mailed or copied on its own; ``single_file=False`` links the PNGs
next to it instead. Either way it has inline CSS and no script, and opens
offline. A run of a scripted test model is marked on the page, on every plot
(and in each PNG's ``Description`` text chunk).

The work is split by responsibility: :mod:`insitu.report_data` reads run
folders, :mod:`insitu.report_plots` draws, :mod:`insitu.report_html` writes the
page; this module ties them together and re-exports what callers use.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from insitu.report_data import (
    NO_DATA,
    PREDICTIONS_FILE,
    REPORT_FILE,
    RUN_FILE,
    STEPS_FILE,
    Prediction,
    ReportError,
    Run,
    RunSummary,
    Step,
    accuracy_curve,
    format_accuracy,
    format_egl,
    format_seconds,
    load_run,
    load_runs,
    resolve_run_dirs,
    summarize,
    tool_name,
    tool_usage,
    top_tools,
)
from insitu.report_html import DEGRADED_BANNER, SCRIPTED_BANNER, problem_counts, render_html
from insitu.report_plots import (
    PLOTS,
    SAVE_DPI,
    SCRIPTED_FIGURE_MARK,
    build_figures,
    figure_texts,
    usage_title,
)

__all__ = [
    "DEGRADED_BANNER",
    "NO_DATA",
    "PLOTS",
    "PREDICTIONS_FILE",
    "REPORT_FILE",
    "RUN_FILE",
    "SCRIPTED_BANNER",
    "SCRIPTED_FIGURE_MARK",
    "STEPS_FILE",
    "Prediction",
    "ReportError",
    "Run",
    "RunSummary",
    "Step",
    "accuracy_curve",
    "build_figures",
    "figure_texts",
    "format_accuracy",
    "format_egl",
    "format_seconds",
    "load_run",
    "load_runs",
    "problem_counts",
    "render_html",
    "render_report",
    "resolve_run_dirs",
    "summarize",
    "tool_name",
    "tool_usage",
    "top_tools",
    "usage_title",
    "write_report",
]


def _png_bytes(figure: Figure, scripted: bool) -> bytes:
    """The figure as PNG; a scripted one also says so in a text chunk (for tools, not eyes)."""
    metadata = {"Software": "insitu report"}
    if scripted:
        metadata["Description"] = SCRIPTED_FIGURE_MARK
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=SAVE_DPI, metadata=metadata)
    return buffer.getvalue()


def render_report(
    runs: Sequence[Run], out_dir: Path, top: int = 15, *, single_file: bool = True
) -> Path:
    """Write ``report.html`` and its PNG plots for runs already read.

    Args:
        runs: The runs, as from :func:`load_runs`.
        out_dir: Folder to write into (created if needed; earlier report files
            there are replaced).
        top: How many tools the usage plot and tables show per run.
        single_file: Embed the plots in the page as ``data:`` URIs (the page
            stands alone); ``False`` links the PNG files next to it. The PNGs
            are written either way.

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: ``runs`` is empty or ``top`` is below 1.
        OSError: The folder or a file cannot be written.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scripted = any(r.scripted for r in runs)
    images: dict[str, str] = {}
    for key, figure in build_figures(runs, top).items():
        name = PLOTS[key][0]
        png = _png_bytes(figure, scripted)
        (out_dir / name).write_bytes(png)
        images[key] = (
            "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            if single_file
            else name
        )
    page = out_dir / REPORT_FILE
    page.write_text(render_html(runs, images, top), encoding="utf-8")
    return page


def write_report(
    run_dirs: Sequence[Path],
    out_dir: Path | None = None,
    top: int = 15,
    *,
    single_file: bool = True,
) -> Path:
    """Read run folders of ``insitu evolve`` and write an offline HTML report with plots.

    Args:
        run_dirs: Run folders, shown side by side in this order, each labelled
            by the ``system`` of its ``run.json`` (default: the folder's name);
            a folder of ``insitu eval`` stands for its systems' run folders.
        out_dir: Folder for ``report.html`` and the PNGs (default: the first
            folder given).
        top: How many of the most called tools to show per run.
        single_file: Embed the plots in the page (default) or link the PNGs.

    Returns:
        The path of ``report.html``.

    Raises:
        ReportError: A run folder, its ``run.json`` or ``predictions.jsonl`` is
            missing or empty, or a file is malformed.
        ValueError: ``top`` is below 1.
        OSError: The report cannot be written.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    runs = load_runs(run_dirs)
    target = Path(out_dir) if out_dir is not None else Path(run_dirs[0])
    return render_report(runs, target, top, single_file=single_file)
