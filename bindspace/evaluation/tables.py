"""Retrieval tables for people: the query x gallery matrix as text, chance levels, trained/emergent means."""

from __future__ import annotations

from collections.abc import Sequence

from bindspace.evaluation.retrieval import MetricTable


def _chance_line(metric: str, m: int) -> str:
    """Expected `metric` under a random ranking of m items with one relevant item per query."""
    if m < 1:
        raise ValueError(f"gallery_size must be >= 1, got {m}")
    if metric.startswith("R@"):
        k = int(metric[2:])
        formula, value = f"100*{k}/{m}", 100.0 * min(k, m) / m
    elif metric == "median_rank":
        formula, value = f"({m}+1)/2", (m + 1) / 2
    elif metric == "mAP":  # mean of 1/rank over ranks 1..m
        formula, value = f"100*H({m})/{m}", 100.0 * sum(1.0 / r for r in range(1, m + 1)) / m
    else:
        return f"chance: unknown for {metric!r}"
    return f"chance (random ranking, one relevant item per query): {metric} = {formula} = {value:.2f}"


def format_retrieval_table(
    metrics: MetricTable,
    metric: str = "R@1",
    modalities: Sequence[str] | None = None,
    gallery_size: int | None = None,
) -> str:
    """A plain-text query x gallery matrix of one metric, trained pairs marked '*'.

    Args:
        metrics: one table from `retrieval_matrix`.
        metric: the value to show, e.g. "R@1", "mAP", "median_rank".
        modalities: row and column order; by default the order of first appearance in `metrics`.
        gallery_size: if given, adds the chance level for instance-level retrieval (one relevant
            item per query), e.g. 100*k/gallery_size for R@k. Not meaningful for class level.

    Returns:
        ASCII lines: a title, the matrix ('-' on the diagonal, 'n/a' for a missing pair), a legend
        and optionally the chance level.
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
                row.append(f"{entry[metric]:.1f}" + ("*" if entry["trained"] else " "))
        rows.append(row)
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    lines = [f"{metric} (rows: query modality, columns: gallery modality)"]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.append("legend: * trained pair, unmarked emergent pair (never trained together), - same modality")
    if gallery_size is not None:
        lines.append(_chance_line(metric, gallery_size))
    return "\n".join(lines)


def summarize(metrics: MetricTable) -> dict[str, float]:
    """Mean recall@k and mAP over trained pairs and, separately, over emergent pairs.

    Args:
        metrics: one table from `retrieval_matrix`.

    Returns:
        {"trained/R@1": ..., "trained/mAP": ..., "emergent/R@1": ..., ...}; a group with no pairs
        is left out.
    """
    groups: dict[str, list[dict[str, float | bool]]] = {"trained": [], "emergent": []}
    for entry in metrics.values():
        groups["trained" if entry["trained"] else "emergent"].append(entry)
    summary = {}
    for group, entries in groups.items():
        names = [n for n in (entries[0] if entries else []) if n.startswith("R@") or n == "mAP"]
        for name in names:
            summary[f"{group}/{name}"] = sum(float(e[name]) for e in entries) / len(entries)
    return summary
