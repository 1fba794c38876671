"""Report rows with seed intervals and chance: the summary and pair tables' extra columns, and zero-shot.

Every interval is 95%, computed by `bindspace.report.aggregate.group_stats`, its method named in the
row. Chance comes from `bindspace.report.chance` (test split: these are final evaluations).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bindspace.report.aggregate import group_stats
from bindspace.report.bootstrap import DEFAULT_BOOT_SEED, DEFAULT_N_BOOT
from bindspace.report.chance import group_chance
from bindspace.report.runs import KINDS, RunRecord, group_label, group_runs


def budget_of(runs: Sequence[RunRecord], detail: bool = False) -> str | None:
    """The group's training budget from ``metrics.json["budget"]``, None if no run records one.

    A mapping reads "k=v, ..." over its scalar entries (steps, batch sizes, schedule); ``detail=True``
    gives the whole record as JSON (per-edge and per-stage steps too). Runs that differ are joined by " / ".
    """
    values: list[str] = []
    for run in runs:
        budget = recorded_budget(run)
        if budget is None:
            continue
        if detail:
            text = json.dumps(budget, sort_keys=True)
        elif isinstance(budget, Mapping):
            text = ", ".join(f"{k}={v}" for k, v in budget.items() if not isinstance(v, Mapping | list | tuple))
        else:
            text = str(budget)
        if text not in values:
            values.append(text)
    return " / ".join(values) or None


def recorded_budget(run: RunRecord) -> Any:
    """``metrics.json["budget"]`` of a run, in today's units.

    A record written before ``batches_per_step`` existed (bindspace before 2026-12-01) counted its
    ``edge_steps`` in batches, ``trainer.accumulate_grad_batches`` (k, from the job's config) per
    optimisation step. It is read as today's record (``edge_steps`` in steps, ``batches_per_step`` k;
    ``pair_batches`` was and is in batches), so an old arm and a new one with the same budget compare equal.
    """
    budget = (run.metrics or {}).get("budget")
    if not isinstance(budget, Mapping) or "pair_batches" not in budget or "batches_per_step" in budget:
        return budget
    k = int((run.config.get("trainer") or {}).get("accumulate_grad_batches") or 1)
    out: dict[str, Any] = {}
    for key, value in budget.items():
        if key == "edge_steps" and isinstance(value, Mapping):
            value = {edge: n // k for edge, n in value.items()}
        out[key] = value
        if key == "global_batch":
            out["batches_per_step"] = k  # where today's record holds it
    out.setdefault("batches_per_step", k)
    return out


def _methods(stats) -> str:
    return "; ".join(dict.fromkeys(s.method for s in stats))


def step_cost_of(runs: Sequence[RunRecord]) -> dict[str, float | None]:
    """The group's ``step_ms`` (median over its runs of each run's median step time) and ``peak_rss_mib``
    (the largest run's), from ``metrics.json["step_cost"]``; None where no run records one."""
    costs = [(r.metrics or {}).get("step_cost") or {} for r in runs if not r.failed]
    steps = sorted(c["step_ms_median"] for c in costs if c.get("step_ms_median") is not None)
    peaks = [c["peak_rss_mib"] for c in costs if c.get("peak_rss_mib") is not None]
    median = (steps[(len(steps) - 1) // 2] + steps[len(steps) // 2]) / 2 if steps else None
    return {"step_ms": median, "peak_rss_mib": max(peaks) if peaks else None}


def trainable_params_of(runs: Sequence[RunRecord], detail: bool = False) -> int | str | None:
    """The group's trainable parameter count from ``metrics.json["trainable_params"]``: its ``total`` (the
    largest, should seeds differ), or with ``detail=True`` the per-modality record as JSON (runs that
    differ joined by " / "); None where no run records one."""
    records = [(r.metrics or {}).get("trainable_params") for r in runs if not r.failed]
    records = [r for r in records if r]
    if not records:
        return None
    if detail:
        return " / ".join(dict.fromkeys(json.dumps(r.get("modalities"), sort_keys=True) for r in records))
    return max(int(r["total"]) for r in records)


def add_summary_intervals(
    rows: Sequence[dict], runs: Sequence[RunRecord], n_boot: int = DEFAULT_N_BOOT, boot_seed: int = DEFAULT_BOOT_SEED
) -> list[dict]:
    """Summary rows (`summary_table`) with ``<kind>/<metric>_lo`` / ``_hi``, ``interval``, ``chance/<metric>``
    and, when any run records one, ``budget`` and ``budget_detail`` (see `budget_of`), ``trainable_params``
    and ``trainable_params_detail`` (see `trainable_params_of`), ``step_ms`` and ``peak_rss_mib`` (see
    `step_cost_of`).

    Rows and existing columns are left as they were.
    """
    groups = {group_label(k): v for k, v in group_runs(runs).items()}
    with_budget = any((r.metrics or {}).get("budget") is not None for r in runs)
    with_cost = any((r.metrics or {}).get("step_cost") for r in runs)
    with_params = any((r.metrics or {}).get("trainable_params") for r in runs)
    out = []
    for row in rows:
        members = groups[row["group"]]
        metrics = [c.split("/", 1)[1][: -len("_mean")] for c in row if c.startswith("trained/") and c.endswith("_mean")]
        keys = [f"{kind}/{m}" for m in metrics for kind in KINDS]
        stats = group_stats(members, keys, n_boot, boot_seed)
        extra: dict[str, Any] = {}
        for key, s in stats.items():
            extra[f"{key}_lo"], extra[f"{key}_hi"] = s.lo, s.hi
        extra["interval"] = _methods(stats.values())
        done = [r.metrics for r in members if not r.failed]
        extra.update({f"chance/{m}": group_chance(done, m) for m in metrics})
        if with_budget:
            extra["budget"], extra["budget_detail"] = budget_of(members), budget_of(members, detail=True)
        if with_params:
            extra["trainable_params"] = trainable_params_of(members)
            extra["trainable_params_detail"] = trainable_params_of(members, detail=True)
        extra.update(step_cost_of(members) if with_cost else {})
        out.append({**row, **extra})
    return out


def add_pair_intervals(
    rows: Sequence[dict],
    runs: Sequence[RunRecord],
    metrics: Sequence[str],
    n_boot: int = DEFAULT_N_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
) -> list[dict]:
    """Pair rows (`pair_table`) with ``<metric>_lo`` / ``_hi``, ``<metric>_chance`` and ``interval``."""
    groups = {group_label(k): v for k, v in group_runs(runs).items()}
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    out = []
    for label, group_rows in by_group.items():
        present = [m for m in metrics if f"{m}_mean" in group_rows[0]]
        keys = [f"pair/{r['pair']}/{m}" for r in group_rows for m in present]
        stats = group_stats(groups[label], keys, n_boot, boot_seed)
        done = [r.metrics for r in groups[label] if not r.failed]
        chance = {m: group_chance(done, m) for m in present}
        for row in group_rows:
            extra: dict[str, Any] = {}
            for m in present:
                s = stats[f"pair/{row['pair']}/{m}"]
                extra[f"{m}_lo"], extra[f"{m}_hi"], extra[f"{m}_chance"] = s.lo, s.hi, chance[m]
            extra["interval"] = _methods(stats[f"pair/{row['pair']}/{m}"] for m in present)
            out.append({**row, **extra})
    return out


def zero_shot_table(
    runs: Sequence[RunRecord],
    metrics: Sequence[str] = ("top1", "top5"),
    n_boot: int = DEFAULT_N_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
) -> list[dict]:
    """One row per (group, modality, metric) of zero-shot accuracy against text prompts (test split).

    Returns:
        Rows with the group columns, ``group``, ``modality``, ``metric``, ``mean``, ``std``, ``lo``, ``hi``
        (95% interval), ``n_seeds``, ``interval`` (method), ``chance`` (100 k / number of classes, None if
        unknown) and ``edge_trained`` (the modality was trained against text in every run, so its
        zero-shot result is not emergent). Empty when no run has zero-shot results.
    """
    rows = []
    for key, members in group_runs(runs).items():
        done = [r for r in members if not r.failed]
        modalities = list(dict.fromkeys(m for r in done for m in (r.metrics.get("zero_shot") or {})))
        keys = [f"zero_shot/{mod}/{metric}" for mod in modalities for metric in metrics]
        stats = group_stats(members, keys, n_boot, boot_seed)
        for mod in modalities:
            trained = bool(done) and all(
                ((r.metrics.get("retrieval") or {}).get(f"{mod}->text") or {}).get("trained") for r in done
            )
            for metric in metrics:
                s = stats[f"zero_shot/{mod}/{metric}"]
                if s.mean is None:
                    continue
                rows.append({
                    **dict(key), "group": group_label(key), "modality": mod, "metric": metric, "mean": s.mean,
                    "std": s.std, "lo": s.lo, "hi": s.hi, "n_seeds": s.n_seeds, "interval": s.method,
                    "chance": group_chance([r.metrics for r in done], metric, "zero_shot", [r.config for r in done]),
                    "edge_trained": trained,
                })  # fmt: skip
    return rows
