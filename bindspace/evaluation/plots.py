"""Figures for retrieval results: the query x gallery heatmap and the run-comparison chart.

Figures are built with matplotlib's object API (``Figure`` plus an Agg canvas), never through
pyplot, so nothing here selects a backend or needs a display: it works on a headless node and
leaves a notebook's own backend alone. A returned ``Figure`` still displays inline in Jupyter.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from bindspace.utils.io import atomic_write

# "<query>-><gallery>" -> {"R@1": ..., "trained": bool}, the layout of metrics.json["retrieval"].
MetricTable = Mapping[str, Mapping[str, float | bool]]
# (mean, std) over seeds; None where there is no value (no run) or no spread (one seed).
MeanStd = tuple[float | None, float | None]

TRAINED_COLOR = "#d62728"  # box around trained cells; red reads against every viridis shade
SAME_MODALITY_GREY = "0.85"
CHANCE_COLOR = "magenta"  # visible on the dark low end of the colour bar and on the white legend


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas, so the figure can render without pyplot
    return fig


def _first_appearance(metrics: MetricTable) -> list[str]:
    return list(dict.fromkeys(m for pair in metrics for m in pair.split("->")))


def _grid(metrics: MetricTable, metric: str, modalities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) float values (NaN on the diagonal and for missing pairs) and (n, n) bool trained flags."""
    n = len(modalities)
    values, trained = np.full((n, n), np.nan), np.zeros((n, n), dtype=bool)
    for i, q in enumerate(modalities):
        for j, g in enumerate(modalities):
            entry = metrics.get(f"{q}->{g}")
            if i != j and entry is not None:
                values[i, j], trained[i, j] = float(entry[metric]), bool(entry.get("trained", False))
    return values, trained


def _annotate(ax, image, values: np.ndarray, trained: np.ndarray) -> None:
    """Writes each cell's value; trained cells get bold text and a box, so they survive greyscale print."""
    for (i, j), value in np.ndenumerate(values):
        if i == j:
            continue  # the diagonal stays blank grey: a modality against itself is not a result
        if np.isnan(value):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize="small", color="0.4")
            continue
        red, green, blue, _ = image.cmap(image.norm(value))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived luminance of the cell
        ax.text(
            j, i, f"{value:.1f}", ha="center", va="center", fontsize="small",
            color="white" if dark else "black", fontweight="bold" if trained[i, j] else "normal",
        )  # fmt: skip
        if trained[i, j]:
            # Inset a little so the box is not half-clipped at the axes border.
            box = Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor=TRAINED_COLOR, linewidth=2.5)
            box.set_gid("trained-cell")
            ax.add_patch(box)


def retrieval_heatmap(
    metrics: MetricTable,
    metric: str = "R@1",
    modalities: Sequence[str] | None = None,
    title: str | None = None,
    chance: float | None = None,
) -> Figure:
    """A query x gallery heatmap of one retrieval metric, trained pairs marked.

    Args:
        metrics: a retrieval table {"<q>-><g>": {metric: value, ..., "trained": bool}}, e.g.
            ``metrics.json["retrieval"]`` or one stage's table.
        metric: the value to show, e.g. "R@1", "mAP", "median_rank" (lower is better, so its
            colour map is reversed).
        modalities: row and column order; by default the order of first appearance in `metrics`.
        title: axes title; a default names the metric and the axes.
        chance: optional chance level of `metric`, drawn as a line on the colour bar.

    Returns:
        The figure. Axes 0 holds the image ((n, n), NaN on the diagonal and for missing pairs),
        one annotation per off-diagonal cell, and a box patch with gid "trained-cell" per trained
        pair; the colour bar is the last axes.

    Raises:
        ValueError: if fewer than two modalities are given or an entry lacks `metric`.
    """
    modalities = list(modalities) if modalities is not None else _first_appearance(metrics)
    if len(modalities) < 2:
        raise ValueError(f"need at least two modalities for a retrieval heatmap, got {modalities}")
    for pair, entry in metrics.items():
        if metric not in entry:
            raise ValueError(f"{pair!r} has no {metric!r}; it has {sorted(entry)}")
    values, trained = _grid(metrics, metric, modalities)
    n = len(modalities)
    fig = _new_figure((1.0 * n + 2.8, 0.9 * n + 1.8))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis_r" if metric == "median_rank" else "viridis"].with_extremes(
        bad=SAME_MODALITY_GREY
    )
    # Percent metrics share a fixed 0-100 scale so heatmaps of different runs compare by eye.
    percent = metric.startswith("R@") or metric == "mAP"
    image = ax.imshow(values, cmap=cmap, vmin=0.0 if percent else None, vmax=100.0 if percent else None)
    colorbar = fig.colorbar(image, ax=ax, label=metric)
    _annotate(ax, image, values, trained)
    ax.set_xticks(range(n), modalities, rotation=45, ha="right")
    ax.set_yticks(range(n), modalities)
    ax.set_xlabel("gallery modality")
    ax.set_ylabel("query modality")
    ax.set_title(title or f"{metric}: query (rows) -> gallery (columns)")
    handles = [
        Patch(facecolor="none", edgecolor=TRAINED_COLOR, linewidth=2, label="trained pair (bold, boxed)"),
        Patch(facecolor="none", edgecolor="0.5", label="emergent pair (never trained together)"),
        Patch(facecolor=SAME_MODALITY_GREY, edgecolor="0.5", label="same modality"),
    ]
    if chance is not None:
        colorbar.ax.axhline(chance, color=CHANCE_COLOR, linestyle="--", linewidth=1.5)
        handles.append(Line2D([], [], color=CHANCE_COLOR, linestyle="--", label=f"chance = {chance:.2f}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    return fig


def _bar_panel(
    ax, stats: Mapping[str, Mapping[str, Sequence[float | None]]], metric: str, chance: float | None = None
) -> None:
    labels = list(stats)
    x = np.arange(len(labels))
    width = 0.38
    for offset, kind, color in ((-width / 2, "trained", "tab:blue"), (width / 2, "emergent", "tab:orange")):
        stat = [stats[g].get(kind, (None, None)) for g in labels]
        heights = [np.nan if s[0] is None else s[0] for s in stat]  # a NaN bar is simply not drawn
        errors = np.array([_error_bar(s) for s in stat]).T.reshape(2, len(labels))
        ax.bar(x + offset, heights, width, yerr=errors, capsize=4, color=color, label=f"{kind} pairs")
    if chance is not None:
        ax.axhline(chance, color=CHANCE_COLOR, linestyle="--", linewidth=1.5, label=f"chance = {chance:.2f}")
    with_intervals = any(len(s) >= 4 and s[2] is not None for kinds in stats.values() for s in kinds.values())
    spread = "95% interval" if with_intervals else "± std over seeds"
    ax.set_xticks(x, [label.replace(", ", "\n") for label in labels], fontsize="small")
    ax.set_ylabel(f"mean {metric} over pairs ({spread})")
    ax.set_title(f"{metric}, test split: trained vs emergent pairs")
    ax.legend(fontsize="small")


def _error_bar(stat: Sequence[float | None]) -> tuple[float, float]:
    """(below, above) of a (mean, std) or (mean, std, lo, hi) tuple: the interval when known, else ± std."""
    mean, std, lo, hi = (*stat, None, None)[:4]
    if mean is None:
        return 0.0, 0.0
    if lo is not None and hi is not None:
        return max(0.0, mean - lo), max(0.0, hi - mean)
    return (0.0, 0.0) if std is None else (std, std)  # one seed without an interval: no spread to show


def _curve_panel(ax, curves: Mapping[str, Sequence[Sequence[float]]], metric: str, chance: float | None = None) -> None:
    colors = matplotlib.colormaps["tab10"]
    for index, (label, points) in enumerate(curves.items()):
        steps = [p[0] for p in points]
        color = colors(index % 10)
        ax.plot(steps, [p[1] for p in points], marker="o", color=color, label=f"{label} (trained)")
        ax.plot(steps, [p[2] for p in points], marker="s", linestyle="--", color=color, label=f"{label} (emergent)")
    if chance is not None:
        ax.axhline(chance, color=CHANCE_COLOR, linestyle="--", linewidth=1.5, label=f"chance = {chance:.2f}")
    ax.set_xlabel("step (end of curriculum stage)")
    ax.set_ylabel(f"mean {metric} over pairs and seeds")
    ax.set_title("validation split, curriculum stages: solid trained, dashed emergent")
    ax.legend(fontsize="x-small")


def group_comparison_figure(
    stats: Mapping[str, Mapping[str, Sequence[float | None]]],
    metric: str = "R@1",
    curves: Mapping[str, Sequence[Sequence[float]]] | None = None,
    chance: float | None = None,
    curve_chance: float | None = None,
) -> Figure:
    """Bars of trained vs emergent retrieval per run group (test split), plus stage curves (validation split).

    Args:
        stats: group label -> {"trained": (mean, std) or (mean, std, lo, hi), "emergent": ...}; a None
            mean leaves its bar out; the error bar is the interval [lo, hi] when given, else ± std, and
            absent when neither is known.
        metric: the metric's name, for the axis labels.
        curves: group label -> [(step, trained, emergent), ...] over curriculum stages; when
            non-empty a second panel plots them.
        chance: chance level of `metric` on the test split, a dashed line on the bars labelled
            "chance = <value>".
        curve_chance: chance level on the validation split, the same line on the curves.

    Returns:
        The figure: axes 0 the bars, axes 1 (only with curves) the stage curves.
    """
    with_curves = bool(curves)
    fig = _new_figure((max(6.0, 1.6 * len(stats) + 2.5) + (6.5 if with_curves else 0.0), 4.8))
    axes = fig.subplots(1, 2 if with_curves else 1, squeeze=False)[0]
    _bar_panel(axes[0], stats, metric, chance)
    if with_curves:
        _curve_panel(axes[1], curves, metric, curve_chance)
    return fig


def _close(fig: Figure) -> None:
    if fig.canvas.manager is not None:  # only pyplot-made figures are registered anywhere
        import matplotlib.pyplot as plt

        plt.close(fig)


def save_figure(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Writes `fig` as a PNG atomically (temporary file, then rename) and closes it.

    Args:
        fig: any matplotlib figure, pyplot-made or not.
        path: destination; the content is PNG whatever the suffix.
        dpi: resolution; the figure's own by default.

    Returns:
        The path written.
    """
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi or "figure"))
    finally:
        _close(fig)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Renders `fig` to an (H, W, 3) uint8 RGB array, for loggers that take images."""
    if isinstance(fig.canvas, FigureCanvasAgg):
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    # Another backend's canvas (e.g. macosx): render through a PNG rather than swap its canvas.
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi="figure")
    buffer.seek(0)
    with Image.open(buffer) as png:
        return np.asarray(png.convert("RGB")).copy()
