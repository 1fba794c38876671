"""Means and spreads over seeds: summary rows, per-pair rows, stage curves, Markdown."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from bindspace.report.runs import DEFAULT_METRICS, KINDS, RunRecord, StagePoint, group_label, group_runs


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std is None for fewer than two values, mean None for none."""
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def pair_means(table: dict[str, dict], metric: str) -> dict[str, float]:
    """{"trained": mean, "emergent": mean} of `metric` over one retrieval table's pairs; empty kinds left out."""
    means = {}
    for kind in KINDS:
        values = [
            float(e[metric]) for e in table.values() if bool(e.get("trained")) == (kind == "trained") and metric in e
        ]
        if values:
            means[kind] = statistics.fmean(values)
    return means


def kind_means(metrics: dict[str, Any] | None, metric: str) -> dict[str, float]:
    """Trained and emergent means of `metric` of a run (or stage) record: from its retrieval table, else its summary."""
    table = (metrics or {}).get("retrieval")
    if isinstance(table, dict) and table:
        return pair_means(table, metric)
    summary = (metrics or {}).get("summary") or {}
    return {kind: float(summary[f"{kind}/{metric}"]) for kind in KINDS if f"{kind}/{metric}" in summary}


def is_scalar(value: Any) -> bool:
    """A number a metric column can average: not a flag, an interval (``*_ci``) or anything else."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def available_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """Scalar metric names found in any completed run (pair entries or summary keys); see :func:`is_scalar`."""
    names: dict[str, None] = {}
    for run in runs:
        for entry in ((run.metrics or {}).get("retrieval") or {}).values():
            names.update(dict.fromkeys(k for k, v in entry.items() if is_scalar(v)))
        summary = (run.metrics or {}).get("summary") or {}
        names.update(dict.fromkeys(k.split("/", 1)[1] for k, v in summary.items() if "/" in k and is_scalar(v)))
    return list(names)


def summary_table(runs: Sequence[RunRecord], metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict]:
    """One row per group: its columns, n_seeds, and per metric trained/emergent mean and std over seeds.

    Args:
        runs: from `collect_runs`.
        metrics: metric names; those no run has are dropped.

    Returns:
        Rows with the group columns, "group" (a label), "n_seeds" (completed runs), "n_failed",
        "seeds", and "<kind>/<metric>_mean" / "_std" (None: no value, or std of one seed).
    """
    present = set(available_metrics(runs))
    metrics = [m for m in metrics if m in present]
    rows = []
    for key, members in group_runs(runs).items():
        done = [r for r in members if not r.failed]
        row: dict[str, Any] = {**dict(key), "group": group_label(key), "n_seeds": len(done)}
        row["n_failed"] = len(members) - len(done)
        row["seeds"] = " ".join(str(r.seed) for r in done)
        for metric in metrics:
            per_run = [kind_means(r.metrics, metric) for r in done]
            for kind in KINDS:
                mean, std = mean_std([s[kind] for s in per_run if kind in s])
                row[f"{kind}/{metric}_mean"], row[f"{kind}/{metric}_std"] = mean, std
        rows.append(row)
    return rows


def pair_table(runs: Sequence[RunRecord], metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict]:
    """One row per (group, ordered pair): mean and std over seeds of each metric, and the trained flag.

    A pair counts as trained in a group if any of its seeds trained it (seeds normally agree).
    """
    present = set(available_metrics(runs))
    metrics = [m for m in metrics if m in present]
    rows = []
    for key, members in group_runs(runs).items():
        tables = [r.metrics.get("retrieval") or {} for r in members if not r.failed]
        for pair in dict.fromkeys(p for table in tables for p in table):
            entries = [table[pair] for table in tables if pair in table]
            query, _, gallery = pair.partition("->")
            row: dict[str, Any] = {**dict(key), "group": group_label(key), "pair": pair, "query": query}
            row.update(gallery=gallery, trained=any(bool(e.get("trained")) for e in entries), n_seeds=len(entries))
            for metric in metrics:
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(
                    [float(e[metric]) for e in entries if metric in e]
                )
            rows.append(row)
    return rows


def stage_curves(runs: Sequence[RunRecord], metric: str = "R@1") -> dict[str, list[StagePoint]]:
    """Per group label, the curriculum stages of ``metrics["stages"]``, averaged over seeds.

    Stage i of every seed is pooled (seeds of one group share a curriculum); each point holds the
    mean step and the seed-mean of the per-run trained and emergent pair means (NaN if none).
    Groups without stage history are left out.
    """
    curves = {}
    for key, members in group_runs(runs).items():
        histories = [r.metrics.get("stages") or [] for r in members if not r.failed]
        points = []
        for i in range(max((len(h) for h in histories), default=0)):
            stages = [h[i] for h in histories if i < len(h)]
            per_run = [kind_means(stage, metric) for stage in stages]
            means = [mean_std([m[kind] for m in per_run if kind in m])[0] for kind in KINDS]
            step = statistics.fmean(float(stage.get("step", i)) for stage in stages)
            points.append(StagePoint(step, *(float("nan") if m is None else m for m in means)))
        if points:
            curves[group_label(key)] = points
    return curves


def summary_rows_as_columns(rows: Sequence[dict]) -> tuple[list[str], list[list]]:
    """(columns, data) of table rows, e.g. for ``wandb.Table(columns=columns, data=data)``."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return columns, [[row.get(c) for c in columns] for row in rows]
