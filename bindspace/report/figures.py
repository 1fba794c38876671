"""The forgetting figure: each edge's validation metric over training steps, one panel per group.

Imported only when a report draws (matplotlib is loaded lazily by the report's entry points).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bindspace.evaluation.plots import CHANCE_COLOR, _new_figure
from bindspace.report.forgetting import ValidationPanel

BOUNDARY_COLOR = "0.45"


def _panel(ax, panel: ValidationPanel, title: str, metric: str) -> None:
    colors = matplotlib.colormaps["tab10"]
    for index, (edge, points) in enumerate(panel.curves.items()):
        color = colors(index % 10)
        start = panel.trained_from.get(edge, math.inf)
        before, after = [p for p in points if p[0] < start], [p for p in points if p[0] >= start]
        if before:  # dashed while emergent, up to the first point scored while trained: the line is unbroken
            ax.plot(
                *zip(*before, *after[:1], strict=True),
                color=color,
                linestyle="--",
                linewidth=1.2,
                marker=".",
                gid=f"{edge}:emergent",
            )
        if after:
            ax.plot(
                *zip(*after, strict=True),
                color=color,
                linestyle="-",
                linewidth=1.8,
                marker=".",
                label=edge,
                gid=f"{edge}:trained",
            )
        elif before:
            ax.plot([], [], color=color, linestyle="--", label=f"{edge} (never trained)")
    for step in panel.boundaries:
        ax.axvline(step, color=BOUNDARY_COLOR, linestyle=":", linewidth=1.2, gid="stage-boundary")
    if panel.chance is not None:
        ax.axhline(panel.chance, color=CHANCE_COLOR, linestyle="--", linewidth=1.2, gid="chance")
    ax.set_xlabel("training step")
    where = "every validation" if panel.source == "validation" else "stage ends only"
    ax.set_ylabel(f"validation {metric} (%, mean of both directions)")
    ax.set_title(f"{title}\n({where})", fontsize="small")
    ax.legend(fontsize="x-small", ncols=2)


def forgetting_figure(panels: Mapping[str, ValidationPanel], metric: str = "R@1") -> Figure:
    """Each edge's validation `metric` over steps, one panel per group (or run).

    Args:
        panels: panel title -> `ValidationPanel` (from `bindspace.report.forgetting.validation_panel`).
        metric: the metric's name, for labels.

    Returns:
        The figure. In each panel a solid line is an edge while trained (dashed before it joined the
        curriculum: emergent), dotted vertical lines (gid "stage-boundary") are stage starts and a
        dashed magenta line (gid "chance") is chance on the validation split.

    Raises:
        ValueError: no panels.
    """
    if not panels:
        raise ValueError("forgetting_figure needs at least one panel")
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = _new_figure((max(9.0, 5.2 * columns), 3.9 * rows + 1.2))  # wide enough for title and legend
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, panel) in zip(axes, panels.items(), strict=False):
        _panel(ax, panel, title, metric)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    notes = {p.chance_note for p in panels.values() if p.chance is not None and p.chance_note}
    chances = {f"{p.chance:.2f}" for p in panels.values() if p.chance is not None}
    handles = [
        Line2D([], [], color="0.3", linestyle="-", label="edge trained"),
        Line2D([], [], color="0.3", linestyle="--", label="edge not yet trained (emergent)"),
        Line2D([], [], color=BOUNDARY_COLOR, linestyle=":", label="stage start"),
    ]
    if chances:
        label = f"chance {metric} = {', '.join(sorted(chances))}" + (f" ({'; '.join(sorted(notes))})" if notes else "")
        handles.append(Line2D([], [], color=CHANCE_COLOR, linestyle="--", label=label))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    fig.suptitle(f"Forgetting and transfer: validation split, {metric} per edge over training steps")
    return fig
