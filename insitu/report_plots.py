"""The plots of a report: one matplotlib figure per plot, every run a labelled series.

Figures are drawn with the Agg canvas (no display needed). Counts (tasks,
batches, tools, calls) get integer ticks, and a figure with a run of a scripted
test model says so on its face (:data:`SCRIPTED_FIGURE_MARK` above the plot and
a faint "SCRIPTED" across each panel), so a PNG copied out of the report keeps
the warning; :func:`figure_texts` lists every text of a figure for checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator, PercentFormatter

from insitu.report_data import NO_DATA, Run, accuracy_curve, tool_usage, top_tools

#: Plot key → (PNG file name, heading in the report).
PLOTS: dict[str, tuple[str, str]] = {
    "egl": ("report_egl.png", "EGL"),
    "library_size": ("report_library_size.png", "Library size"),
    "accuracy": ("report_accuracy.png", "Accuracy"),
    "tools_created": ("report_tools_created.png", "Tools created per batch"),
    "tool_usage": ("report_tool_usage.png", "Most used tools"),
    "success_rate": ("report_success_rate.png", "Tool success rate per batch"),
}

#: Written on every figure that shows a run of a scripted test model.
SCRIPTED_FIGURE_MARK = "SCRIPTED MODEL — not a measurement of an LLM"
#: Across each panel of such a figure, faint, so that a cropped plot keeps a mark.
SCRIPTED_WATERMARK = "SCRIPTED"

#: Font sizes in points; figures are shown about their own size (``SAVE_DPI``).
TITLE_SIZE = 14
LABEL_SIZE = 12.5
TICK_SIZE = 11.5
LEGEND_SIZE = 11
FIGURE_SIZE = (8.0, 4.5)
#: PNG resolution: 8 x 4.5 inches → 1040 x 585 pixels, sharp at the page's width.
SAVE_DPI = 130

Points = Callable[[Run], Sequence[tuple[float | None, float | None]]]


def figure_texts(figure: Figure) -> list[str]:
    """Every non-empty text drawn on a figure (titles, labels, ticks, legend, marks).

    Args:
        figure: A figure from :func:`build_figures`.

    Returns:
        The texts, in drawing-tree order.
    """
    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


def _color(index: int) -> str:
    return f"C{index % 10}"


def _style(ax: Axes, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)


def _no_data(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        NO_DATA,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=16,
        color="0.45",
    )


def _count_axis(ax: Axes, which: str, values: Sequence[float]) -> None:
    """Integer ticks from 0 for an axis of counts (a count has no 2.5)."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(MaxNLocator(integer=True))
    top = max((v for v in values if not math.isnan(v)), default=0)
    limits = (0, top * 1.08 if top > 0 else 1)  # a flat 0 line still gets a 0..1 axis
    if which == "y":
        ax.set_ylim(*limits)
    else:
        ax.set_xlim(*limits)


def _series_label(run: Run, runs: Sequence[Run], has_data: bool) -> str:
    label = run.label
    if run.scripted and not all(r.scripted for r in runs):
        label += " (scripted)"  # only some runs are: say which
    return label if has_data else f"{label} ({NO_DATA})"


def mark_scripted(figure: Figure, runs: Sequence[Run]) -> bool:
    """Write :data:`SCRIPTED_FIGURE_MARK` on a figure if a run of it is scripted.

    Args:
        figure: A figure whose panels are already drawn.
        runs: The runs it shows.

    Returns:
        Whether the figure was marked.
    """
    scripted = [r.label for r in runs if r.scripted]
    if not scripted:
        return False
    text = SCRIPTED_FIGURE_MARK
    if len(scripted) < len(runs):
        text += f" ({', '.join(scripted)})"
    figure.suptitle(
        text,
        fontsize=LABEL_SIZE,
        fontweight="bold",
        color="#7a4f00",
        bbox={"boxstyle": "round,pad=0.35", "facecolor": "#fff3cd", "edgecolor": "#d39e00"},
    )
    for ax in figure.axes:
        ax.text(
            0.5,
            0.5,
            SCRIPTED_WATERMARK,
            transform=ax.transAxes,
            ha="center",
            va="center",
            rotation=20,
            fontsize=44,
            fontweight="bold",
            color="#d39e00",
            alpha=0.12,
            zorder=0,
        )
    return True


def _line_figure(
    runs: Sequence[Run],
    points: Points,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    y_is: str = "value",
    x_from_zero: bool = True,
) -> Figure:
    """One line per run; ``y_is`` is ``value``, ``count`` (integer ticks) or ``share`` (%).

    The x axis is a count (integer ticks), from 0 unless ``x_from_zero`` is
    false (steps are numbered from 1).
    """
    fig = Figure(figsize=FIGURE_SIZE, layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    xs_all: list[float] = []
    ys_all: list[float] = []
    for index, run in enumerate(runs):
        # A missing value is NaN, so the line breaks there instead of bridging it.
        xy = [(x, math.nan if y is None else y) for x, y in points(run) if x is not None]
        has_data = any(not math.isnan(y) for _, y in xy)
        ax.plot(
            [x for x, _ in xy],
            [y for _, y in xy],
            marker="o",
            markersize=4,
            linewidth=2,
            color=_color(index),
            label=_series_label(run, runs, has_data),
        )
        xs_all += [x for x, _ in xy]
        ys_all += [y for _, y in xy]
        drawn = drawn or has_data
    _style(ax, title=title, xlabel=xlabel, ylabel=ylabel)
    if x_from_zero:
        _count_axis(ax, "x", xs_all)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y_is == "count":
        _count_axis(ax, "y", ys_all)
    elif y_is == "share":
        ax.set_ylim(-0.03, 1.05)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    if not drawn:
        _no_data(ax)
    ax.legend(loc="best", fontsize=LEGEND_SIZE)
    return fig


def _created_figure(runs: Sequence[Run]) -> Figure:
    fig = Figure(figsize=FIGURE_SIZE, layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    handles: list[Patch] = []
    drawn = False
    for index, run in enumerate(runs):
        offset = (index - (len(runs) - 1) / 2) * width
        ax.bar(
            [s.step + offset for s in run.steps],
            [s.tools_created for s in run.steps],
            width=width,
            color=_color(index),
        )
        # Explicit legend entries: an empty bar series would get no colour of its own.
        handles.append(Patch(color=_color(index), label=_series_label(run, runs, bool(run.steps))))
        drawn = drawn or bool(run.steps)
    _style(ax, title="Tools created per batch", xlabel="step (batch)", ylabel="tools created")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _count_axis(ax, "y", [s.tools_created for r in runs for s in r.steps])
    ax.grid(True, axis="y", alpha=0.3)
    if not drawn:
        _no_data(ax)
    ax.legend(handles=handles, loc="best", fontsize=LEGEND_SIZE)
    return fig


def usage_title(run: Run, top: int) -> str:
    """The title of a run's tool-usage panel: ``"insitu: top 2 of 2 tools by calls"``.

    Args:
        run: The run.
        top: How many tools the panel may show.

    Returns:
        The title, with how many tools are shown of how many the run called.
    """
    called = len(tool_usage(p.tools_used for p in run.predictions))
    if not called:
        return f"{run.label}: no tool called"
    return f"{run.label}: top {min(top, called)} of {called} tools by calls"


def _usage_figure(runs: Sequence[Run], top: int) -> Figure:
    shown = max(
        (len(top_tools((p.tools_used for p in r.predictions), top)) for r in runs), default=0
    )
    height = max(3.2, 0.36 * shown + 1.8)
    fig = Figure(figsize=(min(max(8.0, 5.5 * len(runs)), 18.0), height), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for index, (ax, run) in enumerate(zip(axes, runs, strict=True)):
        ranked = top_tools((p.tools_used for p in run.predictions), top)
        _style(ax, title=usage_title(run, top), xlabel="calls (all versions together)", ylabel="")
        if ranked:
            names = [name for name, _ in ranked][::-1]
            counts = [count for _, count in ranked][::-1]
            ax.barh(names, counts, color=_color(index), label=run.label)
            _count_axis(ax, "x", counts)
        else:
            _no_data(ax)
        ax.grid(True, axis="x", alpha=0.3)
    return fig


def build_figures(runs: Sequence[Run], top: int = 15) -> dict[str, Figure]:
    """Draw the report's plots (Agg, no display needed).

    Args:
        runs: The runs, each drawn as its own series (or panel) labelled by its label.
        top: How many tools the usage plot shows per run.

    Returns:
        Figures keyed as :data:`PLOTS`: ``egl`` (EGL vs tasks processed),
        ``library_size`` (vs tasks processed), ``accuracy`` (cumulative, vs
        tasks processed), ``tools_created`` (bars per batch), ``tool_usage``
        (top tools per run) and ``success_rate`` (per batch). Each carries
        :data:`SCRIPTED_FIGURE_MARK` when a run is scripted.

    Raises:
        ValueError: ``runs`` is empty.
    """
    if not runs:
        raise ValueError("no run to draw")
    figures = {
        "egl": _line_figure(
            runs,
            lambda r: [(s.tasks_processed, s.egl) for s in r.steps],
            title="EGL = cumulative tools created / cumulative tool calls (lower is better)",
            xlabel="tasks processed",
            ylabel="EGL",
        ),
        "library_size": _line_figure(
            runs,
            lambda r: [(s.tasks_processed, s.library_size) for s in r.steps],
            title="Library size (active tools)",
            xlabel="tasks processed",
            ylabel="active tools",
            y_is="count",
        ),
        "accuracy": _line_figure(
            runs,
            accuracy_curve,
            title="Accuracy so far (graded correct / graded)",
            xlabel="tasks processed",
            ylabel="correct",
            y_is="share",
        ),
        "tools_created": _created_figure(runs),
        "tool_usage": _usage_figure(runs, top),
        "success_rate": _line_figure(
            runs,
            lambda r: [(s.step, s.tool_success_rate) for s in r.steps],
            title="Tool success rate per batch",
            xlabel="step (batch)",
            ylabel="successful tool calls",
            y_is="share",
            x_from_zero=False,
        ),
    }
    for figure in figures.values():
        mark_scripted(figure, runs)
        FigureCanvasAgg(figure)
    return figures
