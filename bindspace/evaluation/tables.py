"""Retrieval and zero-shot tables for people: matrices with chance, intervals, trained/emergent means.

Every printed number comes with its chance level. A metric whose chance is above
:data:`~bindspace.evaluation.stats.CHANCE_LIMIT` (10%) is marked ``(!)`` with a line saying why: a
random ranking already scores that much, so the number says little about the model. With one relevant
item per query this is a gallery smaller than 10 k for R@k (fewer than 10 items for R@1 and median rank,
about 38 for mAP); for zero-shot top-k, fewer than 10 k classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bindspace.evaluation.retrieval import MetricTable
from bindspace.evaluation.stats import CHANCE_LIMIT, times_chance, uninformative

MARK = "(!)"


def _formula_chance(metric: str, m: int) -> tuple[str, float] | None:
    """(formula, value) of `metric` under a random ranking of m items with one relevant item per query."""
    if m < 1:
        raise ValueError(f"gallery_size must be >= 1, got {m}")
    if metric.startswith("R@"):
        k = int(metric[2:])
        return f"100*{k}/{m}", 100.0 * min(k, m) / m
    if metric == "median_rank":
        return f"({m}+1)/2", (m + 1) / 2
    if metric == "mAP":  # mean of 1/rank over ranks 1..m
        return f"100*H({m})/{m}", 100.0 * sum(1.0 / r for r in range(1, m + 1)) / m
    return None


def _chance_and_flag(
    metric: str, gallery_size: int | None, chance: float | Mapping[str, float] | None
) -> tuple[str | None, bool]:
    """The chance line of a matrix of `metric`, and whether the metric is too weak to read here."""
    record: dict[str, float] = {}
    if isinstance(chance, Mapping):
        record = {k: float(v) for k, v in chance.items() if isinstance(v, int | float)}
    elif chance is not None:
        record = {metric: float(chance)}
    if metric in record:
        line = f"chance (random ranking of this gallery): {metric} = {record[metric]:.2f}"
    elif gallery_size is not None:
        formula = _formula_chance(metric, gallery_size)
        if formula is None:
            return f"chance: unknown for {metric!r}", False
        line = f"chance (random ranking, one relevant item per query): {metric} = {formula[0]} = {formula[1]:.2f}"
        record = {metric: formula[1], "R@1": 100.0 / gallery_size, "median_rank": (gallery_size + 1) / 2}
    else:
        return None, False
    return line, metric in uninformative(record)


def _too_weak_line(metric: str, zero_shot: bool = False) -> str:
    if zero_shot:
        return f"{MARK} {metric} is marked: a random guess already scores above {CHANCE_LIMIT:.0f}% (too few classes)"
    return (
        f"{MARK} {metric} is marked: a random ranking already scores above {CHANCE_LIMIT:.0f}% "
        "(gallery too small, or too few classes, for this metric)"
    )


def _aligned(rows: list[list[str]]) -> list[str]:
    """First column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]).rstrip()
        for row in rows
    ]


def format_retrieval_table(
    metrics: MetricTable,
    metric: str = "R@1",
    modalities: Sequence[str] | None = None,
    gallery_size: int | None = None,
    chance: float | Mapping[str, float] | None = None,
) -> str:
    """A plain-text query x gallery matrix of one metric, each value with its interval when the table
    has one (``<metric>_ci``), trained pairs marked '*'.

    Args:
        metrics: one table from `retrieval_matrix`.
        metric: the value to show, e.g. "R@1", "mAP", "median_rank".
        modalities: row and column order; by default the order of first appearance in `metrics`.
        gallery_size: if given (and `chance` does not name `metric`), adds the chance level for
            instance-level retrieval with one relevant item per query, e.g. 100*k/gallery_size.
        chance: the chance level of `metric`, or a record of several (``metrics.json["chance"]
            ["retrieval_class"]``); use it for class level, where chance depends on the class sizes.

    Returns:
        ASCII lines: a title, the matrix ('-' on the diagonal, 'n/a' for a missing pair), a legend
        and, when known, the chance level; a metric whose chance is above 10% is marked "(!)".
    """
    if modalities is None:
        modalities = list(dict.fromkeys(m for pair in metrics for m in pair.split("->")))
    for pair, entry in metrics.items():
        if metric not in entry:
            raise ValueError(f"{pair!r} has no {metric!r}; it has {sorted(entry)}")
    rows = [["query \\ gallery", *modalities]]
    for q in modalities:
        row = [q]
        for g in modalities:
            entry = metrics.get(f"{q}->{g}")
            if q == g:
                row.append("- ")  # trailing space: align with the marker column
            elif entry is None:
                row.append("n/a ")
            else:
                row.append(f"{entry[metric]:.1f}{format_interval(entry, metric)}" + ("*" if entry["trained"] else " "))
        rows.append(row)
    chance_line, weak = _chance_and_flag(metric, gallery_size, chance)
    ci = any(f"{metric}_ci" in entry for entry in metrics.values())
    lines = [
        f"{metric}{' ' + MARK if weak else ''}{' [95% interval]' if ci else ''} "
        "(rows: query modality, columns: gallery modality)"
    ]
    lines += _aligned(rows)
    lines.append("legend: * trained pair, unmarked emergent pair (never trained together), - same modality")
    if chance_line is not None:
        lines.append(chance_line)
    if weak:
        lines.append(_too_weak_line(metric))
    return "\n".join(lines)


def format_interval(entry: Mapping[str, Any], name: str) -> str:
    """``" [low, high]"`` of ``entry["<name>_ci"]``, or ``""`` when the entry has no interval."""
    ci = entry.get(f"{name}_ci")
    return f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci is not None else ""


def format_zero_shot_table(
    zero_shot: Mapping[str, Mapping[str, Any]], chance: Mapping[str, Any] | None = None, title: str = "zero-shot"
) -> str:
    """Zero-shot accuracy per modality with intervals, and chance for the number of classes.

    Args:
        zero_shot: modality -> {"top1": %, "top1_ci": [lo, hi], ...} (``metrics.json["zero_shot"]``).
        chance: :func:`~bindspace.evaluation.zero_shot.zero_shot_chance` ({"num_classes": C, "top1": %, ...}).
        title: the first line.

    Returns:
        ASCII lines; a cut-off whose chance is above 10% is marked "(!)".
    """
    names = list(dict.fromkeys(k for entry in zero_shot.values() for k in entry if not k.endswith("_ci")))
    record = {k: v for k, v in (chance or {}).items() if k != "num_classes"}
    weak = set(uninformative(record))
    rows = [["modality", *(f"{n}{' ' + MARK if n in weak else ''}" for n in names)]]
    for m, entry in zero_shot.items():
        rows.append([m, *(f"{entry[n]:.1f}{format_interval(entry, n)}" if n in entry else "n/a" for n in names)])
    lines = [f"{title} accuracy, % [95% interval] (rows: sample modality)", *_aligned(rows)]
    if chance:
        values = ", ".join(f"{n} = {record[n]:.2f}" for n in names if n in record)
        lines.append(f"chance (random guess among {chance.get('num_classes', '?')} classes, 100*k/C): {values}")
    for n in names:
        if n in weak:
            lines.append(_too_weak_line(n, zero_shot=True))
    return "\n".join(lines)


def summarize(metrics: MetricTable) -> dict[str, float]:
    """Mean recall@k and mAP over trained pairs and, separately, over emergent pairs.

    Args:
        metrics: one table from `retrieval_matrix`.

    Returns:
        {"trained/R@1": ..., "trained/mAP": ..., "emergent/R@1": ..., ...} (floats); a group with no
        pairs is left out. Intervals of these means are ``evaluate_retrieval(...).summary_ci``.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {"trained": [], "emergent": []}
    for entry in metrics.values():
        groups["trained" if entry["trained"] else "emergent"].append(entry)
    summary = {}
    for group, entries in groups.items():
        names = [n for n in (entries[0] if entries else []) if (n.startswith("R@") or n == "mAP") and "_" not in n]
        for name in names:
            summary[f"{group}/{name}"] = sum(float(e[name]) for e in entries) / len(entries)
    return summary


def format_summary(
    summary: Mapping[str, float],
    summary_ci: Mapping[str, Sequence[float]] | None = None,
    chance: Mapping[str, float] | None = None,
) -> str:
    """One line: "trained/R@1=8.2 [7.1, 9.4] (82x chance), ...".

    Args:
        summary: from `summarize`.
        summary_ci: [low, high] per summary key, when known.
        chance: the instance-level chance record (``metrics.json["chance"]["retrieval"]``).
    """
    parts = []
    for key, value in summary.items():
        text = f"{key}={value:.1f}"
        if summary_ci and key in summary_ci:
            low, high = summary_ci[key]
            text += f" [{low:.1f}, {high:.1f}]"
        metric = key.split("/", 1)[-1]
        if chance and metric in chance:
            ratio = times_chance(value, float(chance[metric]))
            text += f" ({ratio:.0f}x chance)" if ratio >= 10 else f" ({ratio:.1f}x chance)"
        parts.append(text)
    return ", ".join(parts)


def format_metrics_report(
    metrics: Mapping[str, Any], modalities: Sequence[str] | None = None, shown: Sequence[str] = ("R@1", "R@10")
) -> str:
    """The text of ``retrieval.txt``: instance and class matrices, zero-shot, the summary, all with chance.

    Args:
        metrics: a ``metrics.json`` record (``retrieval``, optionally ``retrieval_class``, ``zero_shot``,
            ``chance``, ``summary``, ``summary_ci``, ``gallery_size``).
        modalities: row and column order.
        shown: the retrieval metrics to print a matrix of (instance level; class level shows the first).
    """
    chance = metrics.get("chance") or {}
    size = metrics.get("gallery_size")
    blocks = [format_retrieval_table(metrics["retrieval"], m, modalities, size, chance.get("retrieval")) for m in shown]
    if metrics.get("retrieval_class"):
        table = format_retrieval_table(
            metrics["retrieval_class"], shown[0], modalities, chance=chance.get("retrieval_class")
        )
        blocks.append("class level (a gallery item of the query's class is relevant)\n" + table)
    if metrics.get("zero_shot"):
        blocks.append(format_zero_shot_table(metrics["zero_shot"], chance.get("zero_shot")))
    if metrics.get("summary"):
        line = format_summary(metrics["summary"], metrics.get("summary_ci"), chance.get("retrieval"))
        blocks.append("summary (mean over pairs, [95% interval]): " + line)
    return "\n\n".join(blocks)
