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
        # Two significant digits below 1: near a chance of 0.1%, 0.05 and 0.14 must not both read "0.1".
        text = f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.2g}"
        ax.text(
            j, i, text, ha="center", va="center", fontsize="small",
            color="white" if dark else "black", fontweight="bold" if trained[i, j] else "normal",
        )  # fmt: skip
        if trained[i, j]:
            # Inset a little so the box is not half-clipped at the axes border.
            box = Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor=TRAINED_COLOR, linewidth=2.5)
            box.set_gid("trained-cell")
            ax.add_patch(box)


def _heatmap_norm(values: np.ndarray, metric: str, chance: float | None):
    """The colour scale: logarithmic, anchored at chance, so 3x chance is a visibly different colour.

    Percent metrics run from half of chance (or, without it, the smallest positive cell) to 100 on a log
    scale: equal ratios get equal colour steps, so cells at 1x, 3x and 10x chance stay apart even when
    chance is 0.1% (a linear 0-100 scale paints everything under ~2% alike). Cells further below take
    the lowest colour. Median rank (lower is better) runs from 1 to chance (or the worst cell), also log.
    """
    from matplotlib.colors import LogNorm, Normalize

    finite = values[np.isfinite(values)]
    if metric == "median_rank":
        top = max([chance or 1.0, *finite.tolist()])
        return LogNorm(vmin=1.0, vmax=max(top, 1.0 + 1e-6), clip=True)
    if not (metric.startswith("R@") or metric == "mAP"):
        return Normalize()
    positive = finite[finite > 0]
    # Half of chance at the bottom: the chance line stays visible, and so does a pair below chance.
    floor = chance / 2 if chance else (float(positive.min()) if positive.size else 0.01)
    return LogNorm(vmin=min(max(floor, 1e-4), 99.0), vmax=100.0, clip=True)


def _chance_ticks(colorbar, norm, chance: float, metric: str) -> None:
    """Colour-bar ticks at 1x, 3x, 10x, ... chance, labelled with the value and the multiple."""
    if metric == "median_rank":
        return  # ranks: the log axis' own ticks, plus the chance line
    ticks = [chance * f for f in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000) if chance * f <= norm.vmax * 1.0001]
    colorbar.set_ticks(ticks, labels=[f"{t:.3g} ({t / chance:.0f}x)" for t in ticks])
    colorbar.minorticks_off()


def retrieval_heatmap(
    metrics: MetricTable,
    metric: str = "R@1",
    modalities: Sequence[str] | None = None,
    title: str | None = None,
    chance: float | None = None,
    split: str | None = None,
) -> Figure:
    """A query x gallery heatmap of one retrieval metric on a log scale anchored at chance, trained pairs marked.

    Args:
        metrics: a retrieval table {"<q>-><g>": {metric: value, ..., "trained": bool}}, e.g.
            ``metrics.json["retrieval"]`` or one stage's table.
        metric: the value to show, e.g. "R@1", "mAP", "median_rank" (lower is better, so its
            colour map is reversed).
        modalities: row and column order; by default the order of first appearance in `metrics`.
        title: axes title; a default names the metric and the axes.
        chance: chance level of `metric` (``metrics.json["chance"]["retrieval"][metric]``): the bottom
            of the colour scale (the top for median rank), a line on the colour bar, colour-bar ticks
            at multiples of it, and a legend entry.
        split: the data split the table scores (e.g. "test", "val"), shown in the title.

    Returns:
        The figure. Axes 0 holds the image ((n, n), NaN on the diagonal and for missing pairs),
        one annotation per off-diagonal cell, and a box patch with gid "trained-cell" per trained
        pair; the colour bar is the last axes.

    Raises:
        ValueError: if fewer than two modalities are given, an entry lacks `metric` or chance <= 0.
    """
    modalities = list(modalities) if modalities is not None else _first_appearance(metrics)
    if len(modalities) < 2:
        raise ValueError(f"need at least two modalities for a retrieval heatmap, got {modalities}")
    for pair, entry in metrics.items():
        if metric not in entry:
            raise ValueError(f"{pair!r} has no {metric!r}; it has {sorted(entry)}")
    if chance is not None and not chance > 0:
        raise ValueError(f"chance must be positive, got {chance!r}")
    values, trained = _grid(metrics, metric, modalities)
    n = len(modalities)
    fig = _new_figure((1.0 * n + 3.4, 0.9 * n + 2.0))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis_r" if metric == "median_rank" else "viridis"].with_extremes(
        bad=SAME_MODALITY_GREY
    )
    norm = _heatmap_norm(values, metric, chance)
    image = ax.imshow(values, cmap=cmap, norm=norm)
    scale = "log scale" + (", ticks at multiples of chance" if chance is not None else "")
    colorbar = fig.colorbar(image, ax=ax, label=f"{metric} ({scale})")
    if chance is not None:
        _chance_ticks(colorbar, norm, chance, metric)
    _annotate(ax, image, values, trained)
    ax.set_xticks(range(n), modalities, rotation=45, ha="right")
    ax.set_yticks(range(n), modalities)
    ax.set_xlabel("gallery modality")
    ax.set_ylabel("query modality")
    heading = title or f"{metric}: query (rows) -> gallery (columns)"
    ax.set_title(heading + (f" [{split} split]" if split else ""))
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
