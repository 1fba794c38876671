"""Forgetting and transfer across curriculum stages, from ``metrics.json["stages"]`` and ``["validation"]``.

Both read the validation split, scored during training: each stage-end record holds the full
retrieval matrix, each validation record the R@1 of every ordered pair. An edge "a|b" scores the
mean of its two directions a->b and b->a. Works on one run (``[metrics]``, e.g. at the end of
training) or on the seeds of a group, averaged stage by stage (seeds of a group share a curriculum).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from bindspace.report.chance import chance_of, instance_chance
from bindspace.report.tables import mean_std

Metrics = Mapping[str, Any]


class ValidationPanel(NamedTuple):
    """One figure panel: per edge (step, value) points, stage starts, when each edge began training, chance."""

    curves: dict[str, list[tuple[float, float]]]
    boundaries: list[float]
    trained_from: dict[str, float]
    chance: float | None
    chance_note: str
    source: str  # "validation" (every validation) or "stages" (stage ends only, older runs)


def graph_edges(metrics_list: Sequence[Metrics]) -> list[str]:
    """Edge keys "a|b" of the runs' graphs, in first-seen order (``edges``, then each stage's edges)."""
    found: dict[frozenset, str] = {}
    for metrics in metrics_list:
        keys = ["|".join(map(str, e)) for e in metrics.get("edges") or [] if isinstance(e, list | tuple)]
        for stage in metrics.get("stages") or []:
            keys += [*(stage.get("edges") or []), *(stage.get("trained_edges") or [])]
            keys += [p.replace("->", "|") for p, e in (stage.get("retrieval") or {}).items() if e.get("trained")]
        for key in keys:
            found.setdefault(frozenset(key.split("|")), key)
    return list(found.values())


def edge_value(table: Mapping[str, Any], edge: str, metric: str = "R@1") -> float | None:
    """Mean of `metric` over the edge's two directions in a retrieval table (entries or plain numbers)."""
    a, b = edge.split("|")
    values = []
    for pair in (f"{a}->{b}", f"{b}->{a}"):
        entry = table.get(pair)
        value = entry.get(metric) if isinstance(entry, Mapping) else entry
        if value is not None:
            values.append(float(value))
    return statistics.fmean(values) if values else None


def _trained_by(stage: Metrics, edges: Sequence[str]) -> set[frozenset]:
    """Edges trained by the end of `stage`: ``trained_edges`` if recorded, else the table's trained flags."""
    if "trained_edges" in stage:
        return {frozenset(e.split("|")) for e in stage["trained_edges"]}
    flags = stage.get("retrieval") or {}
    return {frozenset(e.split("|")) for e in edges if any(flags.get(p, {}).get("trained") for p in _pairs(e))}


def _pairs(edge: str) -> tuple[str, str]:
    a, b = edge.split("|")
    return f"{a}->{b}", f"{b}->{a}"


def forgetting_table(metrics_list: Sequence[Metrics], metric: str = "R@1") -> list[dict[str, Any]]:
    """Stage x edge rows: each graph edge's `metric` after each curriculum stage, mean over the runs.

    Args:
        metrics_list: parsed ``metrics.json`` of one run or of the seeds of one group; stage i of every
            run is pooled. Runs without ``stages`` contribute nothing.
        metric: a retrieval metric of the stage tables ("R@1", "R@10", "mAP", ...).

    Returns:
        One row per (stage, edge), stages in order: ``stage`` (1-based), ``stage_name``, ``step`` (mean
        over runs), ``edge``, `metric` (mean over runs, None if no run has it), ``std`` (sample std,
        None for one run), ``n_runs``, ``trained`` (the edge took part in training by the end of this
        stage in every run; False = emergent so far), ``best_before`` (the highest mean at an earlier
        stage, None at the first stage) and ``drop`` (``best_before - value`` when positive, else 0.0;
        None without an earlier value). Empty when no run has stages.
    """
    histories = [list(m.get("stages") or []) for m in metrics_list]
    edges = graph_edges(metrics_list)
    rows, best = [], {}
    for i in range(max((len(h) for h in histories), default=0)):
        stages = [h[i] for h in histories if i < len(h)]
        step = statistics.fmean(float(s.get("step", i)) for s in stages)
        trained_sets = [_trained_by(s, edges) for s in stages]
        for edge in edges:
            values = [v for s in stages if (v := edge_value(s.get("retrieval") or {}, edge, metric)) is not None]
            mean, std = mean_std(values)
            before = best.get(edge)
            drop = None if before is None or mean is None else max(0.0, before - mean)
            rows.append({
                "stage": i + 1, "stage_name": str(stages[0].get("name", i + 1)), "step": step, "edge": edge,
                metric: mean, "std": std, "n_runs": len(values),
                "trained": all(frozenset(edge.split("|")) in t for t in trained_sets),
                "best_before": before, "drop": drop,
            })  # fmt: skip
            if mean is not None:
                best[edge] = mean if before is None else max(before, mean)
    return rows


def forgetting_cells(rows: Sequence[Mapping[str, Any]], metric: str = "R@1") -> tuple[list[str], list[list[str]]]:
    """(header, body) of the stage x edge table: "12.3 (-4.1)" marks a drop, "[3.1]" an edge not yet trained."""
    edges = list(dict.fromkeys(r["edge"] for r in rows))
    stages = list(dict.fromkeys((r["stage"], r["stage_name"], r["step"]) for r in rows))
    cells = {(r["stage"], r["edge"]): r for r in rows}
    body = []
    for stage, name, step in stages:
        line = [f"{stage} {name}", f"{step:g}"]
        for edge in edges:
            row = cells.get((stage, edge))
            if row is None or row[metric] is None:
                line.append("n/a")
                continue
            text = f"{row[metric]:.1f}" if row["trained"] else f"[{row[metric]:.1f}]"
            if row["drop"] is not None and round(row["drop"], 1) > 0:
                text += f" (-{row['drop']:.1f})"
            line.append(text)
        body.append(line)
    return ["stage", "step", *edges], body


def _stage_starts(metrics: Metrics) -> list[float]:
    stages = metrics.get("stages") or []
    return [float(s.get("start_step", stages[i - 1].get("step", 0) if i else 0)) for i, s in enumerate(stages)]


def validation_chance(
    metrics_list: Sequence[Metrics], metric: str = "R@1", configs: Sequence[Metrics | None] | None = None
) -> tuple[float | None, str]:
    """Chance of `metric` on the validation set, and where it came from (a note for captions).

    In order: stage records that carry ``chance`` or ``gallery_size``; the jobs' ``data.val_size``
    (configs, when given and all equal); else the test gallery's chance, and the note says so (the two
    galleries may differ in size).
    """
    for metrics in metrics_list:
        for stage in metrics.get("stages") or []:
            if "chance" in stage or "gallery_size" in stage:
                value = chance_of(stage, metric)
                if value is not None:
                    return value, "validation gallery"
    sizes = {((c or {}).get("data") or {}).get("val_size") for c in configs or [None]}
    size = sizes.pop() if len(sizes) == 1 else None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        value = instance_chance(metric, size)
        if value is not None:
            return value, f"validation gallery of data.val_size={size}"
    values = {chance_of(m, metric) for m in metrics_list} - {None}
    if len(values) != 1:
        return None, ""
    return values.pop(), "from the test gallery; validation gallery size not recorded"


def validation_panel(
    metrics_list: Sequence[Metrics], metric: str = "R@1", configs: Sequence[Metrics | None] | None = None
) -> ValidationPanel | None:
    """Each edge's validation `metric` over steps, mean over runs; None without any history.

    Uses every validation of ``metrics["validation"]`` that scored `metric`, and the stage-end records
    (the same validation set) at steps no validation fell on, averaged over the runs that have points
    at equal steps. When no run has them (older runs, or a metric validation
    does not record), the stage-end values of `forgetting_table` are used (runs pooled stage by stage).
    """
    edges = graph_edges(metrics_list)
    validations = [[r for r in m.get("validation") or [] if "step" in r and r.get(metric)] for m in metrics_list]
    if any(validations):
        source, points = "validation", {e: {} for e in edges}
        for record in (r for validation in validations for r in validation):
            for edge in edges:
                value = edge_value(record[metric], edge, metric)
                if value is not None:
                    points[edge].setdefault(float(record["step"]), []).append(value)
        # Stage ends score the same validation set: their points fill in between validations (a stage
        # boundary is where forgetting would show), unless a validation already fell on that step.
        for m in metrics_list:
            seen = {float(r["step"]) for r in m.get("validation") or [] if "step" in r}
            for stage in m.get("stages") or []:
                if "step" not in stage or float(stage["step"]) in seen:
                    continue
                for edge in edges:
                    value = edge_value(stage.get("retrieval") or {}, edge, metric)
                    if value is not None:
                        points[edge].setdefault(float(stage["step"]), []).append(value)
        curves = {e: sorted((s, statistics.fmean(v)) for s, v in p.items()) for e, p in points.items() if p}
    else:
        source, curves = "stages", {}
        for row in forgetting_table(metrics_list, metric):
            if row[metric] is not None:
                curves.setdefault(row["edge"], []).append((row["step"], row[metric]))
    if not curves:
        return None
    starts = [_stage_starts(m) for m in metrics_list if m.get("stages")]
    n_stages = max((len(s) for s in starts), default=0)
    boundaries = [statistics.fmean(s[i] for s in starts if i < len(s)) for i in range(1, n_stages)]
    trained_from = {}
    for edge in curves:
        firsts = []
        for metrics, start in zip((m for m in metrics_list if m.get("stages")), starts, strict=True):
            stages = metrics["stages"]
            first = next((i for i, s in enumerate(stages) if frozenset(edge.split("|")) in _trained_by(s, edges)), None)
            if first is not None:
                firsts.append(start[first])
        if firsts:
            trained_from[edge] = statistics.fmean(firsts)
    chance, note = validation_chance(metrics_list, metric, configs)
    return ValidationPanel(curves, boundaries, trained_from, chance, note, source)
