"""Chance levels for report tables and figures: read from ``metrics.json``, else computed from the gallery.

Chance is the expected value of a metric under a random ranking. Newer runs store it in
``metrics.json["chance"]``; older runs only have ``gallery_size``, from which instance-level chance
follows (one relevant item per query): R@K = 100 K / M, mAP = 100 H(M) / M, median rank (M + 1) / 2.
Zero-shot chance is 100 k / C for top-k over C classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any


def instance_chance(metric: str, gallery_size: int) -> float | None:
    """Expected instance-level `metric` (percent, or a rank) for a gallery of `gallery_size` items.

    Returns:
        The chance value, or None for a metric without a closed form here (e.g. class level).

    Raises:
        ValueError: gallery_size < 1.
    """
    if gallery_size < 1:
        raise ValueError(f"gallery_size must be >= 1, got {gallery_size}")
    if metric.startswith("R@") and metric[2:].isdigit():
        return 100.0 * min(int(metric[2:]), gallery_size) / gallery_size
    if metric == "mAP":  # mean of 1/rank over ranks 1..M
        return 100.0 * sum(1.0 / r for r in range(1, gallery_size + 1)) / gallery_size
    if metric == "median_rank":
        return (gallery_size + 1) / 2
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else None


def _from_table(table: Any, metric: str) -> float | None:
    """`metric` from {metric: v}, or the common value of {"<q>-><g>" or modality: {metric: v}}."""
    if not isinstance(table, Mapping):
        return None
    direct = _number(table.get(metric))
    if direct is not None:
        return direct
    values = {_number(entry.get(metric)) for entry in table.values() if isinstance(entry, Mapping)} - {None}
    return values.pop() if len(values) == 1 else None


def num_classes(metrics: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> int | None:
    """Number of classes of the run's zero-shot task, if recorded.

    From ``metrics.json`` (``num_classes``, or ``data.classes`` of manifest and shard data), else from the
    job's config (``data.scene.num_classes`` of the synthetic benchmark, or ``data.num_classes``).
    """
    data = (config or {}).get("data") or {}
    candidates = [metrics.get("num_classes"), (metrics.get("data") or {}).get("classes")]
    candidates += [(data.get("scene") or {}).get("num_classes"), data.get("num_classes")]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def chance_of(
    metrics: Mapping[str, Any] | None, metric: str, level: str = "retrieval", config: Mapping[str, Any] | None = None
) -> float | None:
    """Chance of `metric` for one run at `level` ("retrieval", "retrieval_class" or "zero_shot").

    Looks in ``metrics["chance"]`` first (``chance[level][metric]``, one value shared by every pair or
    modality of ``chance[level]``, or a flat ``chance[metric]`` for instance-level retrieval), then falls
    back to the closed forms of the module docstring.

    Args:
        metrics: the run's parsed ``metrics.json`` (or a stage record).
        metric: e.g. "R@1", "mAP", "median_rank", "top1".
        level: which table the metric belongs to.
        config: the job's config, consulted for the number of classes only.

    Returns:
        The chance value, or None when neither the file nor the closed forms give one.
    """
    metrics = metrics or {}
    stored = metrics.get("chance")
    if isinstance(stored, Mapping):
        found = _from_table(stored.get(level), metric)
        if found is None and level == "retrieval":
            found = _number(stored.get(metric))
        if found is not None:
            return found
    if level == "retrieval" and isinstance(metrics.get("gallery_size"), int) and metrics["gallery_size"] > 0:
        return instance_chance(metric, metrics["gallery_size"])
    classes = num_classes(metrics, config)
    if level == "zero_shot" and classes and metric.startswith("top") and metric[3:].isdigit():
        return 100.0 * min(int(metric[3:]), classes) / classes
    return None


def group_chance(
    metrics_list: Iterable[Mapping[str, Any] | None],
    metric: str,
    level: str = "retrieval",
    configs: Iterable[Mapping[str, Any] | None] | None = None,
) -> float | None:
    """The chance shared by every run of a group; None if unknown or if runs disagree (different galleries)."""
    metrics_list = list(metrics_list)
    configs = list(configs) if configs is not None else [None] * len(metrics_list)
    values = {chance_of(m, metric, level, c) for m, c in zip(metrics_list, configs, strict=True)}
    return values.pop() if len(values) == 1 else None


def format_chance(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
