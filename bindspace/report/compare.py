"""Every group of a sweep against a baseline group: paired differences with intervals (report_compare.csv).

The baseline is named on the command line (``--baseline``) by its group label ("anchor=image") or by
its value(s) alone ("image"; "image, progressive" for two grouping columns); by default it is the
first group of the sweep (the job with the lowest number). Differences are ``group - baseline``, so
a positive R@K / mAP / top-k difference favours the group (for ``median_rank`` lower is better).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bindspace.report.aggregate import paired_differences
from bindspace.report.bootstrap import DEFAULT_BOOT_SEED, DEFAULT_N_BOOT
from bindspace.report.chance import group_chance
from bindspace.report.intervals import budget_of
from bindspace.report.quantities import parse_key, run_value
from bindspace.report.runs import KINDS, GroupKey, ReportError, RunRecord, group_label, group_runs


def resolve_baseline(groups: Sequence[GroupKey], baseline: str | None) -> GroupKey:
    """The group `baseline` names (label or values, see the module docstring); the first group if None.

    Raises:
        ReportError: no group matches (the message lists the groups), or there are no groups.
    """
    if not groups:
        raise ReportError("no groups to compare")
    if baseline is None:
        return groups[0]
    wanted = baseline.strip()
    for key in groups:
        if wanted in (group_label(key), ", ".join(v for _, v in key)):
            return key
    # One value of one column, when it names exactly one group ("all_at_once" in a sweep that also varies
    # keys the baseline's jobs do not set).
    by_value = [key for key in groups if wanted in {v for _, v in key} or wanted in {f"{c}={v}" for c, v in key}]
    if len(by_value) == 1:
        return by_value[0]
    known = "; ".join(group_label(k) for k in groups)
    raise ReportError(f"--baseline {baseline!r} matches no group; groups: {known}")


def comparison_keys(runs: Sequence[RunRecord], metrics: Sequence[str]) -> list[str]:
    """Quantities compared: trained and emergent `metrics`, then zero-shot top-1 per modality, when present."""
    done = [r for r in runs if not r.failed]
    keys = [f"{kind}/{m}" for m in metrics for kind in KINDS]
    modalities = dict.fromkeys(m for r in done for m in (r.metrics.get("zero_shot") or {}))
    keys += [f"zero_shot/{m}/top1" for m in modalities]
    return [k for k in keys if any(run_value(r.metrics, k) is not None for r in done)]


def _chance(runs: Sequence[RunRecord], key: str) -> float | None:
    form, _, metric = parse_key(key)
    return group_chance(
        [r.metrics for r in runs if not r.failed], metric, "zero_shot" if form == "zero_shot" else "retrieval"
    )


def _mean(runs: Sequence[RunRecord], key: str) -> float | None:
    values = [v for r in runs if not r.failed and (v := run_value(r.metrics, key)) is not None]
    return sum(values) / len(values) if values else None


def comparison_table(
    runs: Sequence[RunRecord],
    baseline: str | None = None,
    metrics: Sequence[str] = ("R@1",),
    n_boot: int = DEFAULT_N_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
) -> list[dict[str, Any]]:
    """One row per (group other than the baseline, quantity): the paired difference and its 95% interval.

    Args:
        runs: from `collect_runs`.
        baseline: the baseline group (see `resolve_baseline`).
        metrics: retrieval metrics compared for trained and emergent pairs (zero-shot top-1 is added).
        n_boot: bootstrap resamples.
        boot_seed: seed of the bootstrap.

    Returns:
        Rows with the group columns, ``group``, ``baseline``, ``quantity``, ``baseline_mean`` and ``mean``
        (group means over all their seeds), ``diff`` (mean paired difference, group - baseline, over
        matched seeds), ``diff_lo`` / ``diff_hi``, ``resolved`` (interval excludes 0), ``n_seeds`` (matched),
        ``n_queries``, ``interval`` (method), ``chance`` and ``note``; ``budget`` and ``baseline_budget``
        when any run records a budget. Empty with a single group.

    Raises:
        ReportError: `baseline` names no group.
    """
    groups = group_runs(runs)
    base_key = resolve_baseline(list(groups), baseline)
    base = groups[base_key]
    with_budget = any((r.metrics or {}).get("budget") is not None for r in runs)
    rows = []
    for key, members in groups.items():
        if key == base_key:
            continue
        quantities = comparison_keys([*base, *members], metrics)
        for quantity, d in paired_differences(base, members, quantities, n_boot, boot_seed).items():
            row: dict[str, Any] = {**dict(key), "group": group_label(key), "baseline": group_label(base_key)}
            row.update(quantity=quantity, baseline_mean=_mean(base, quantity), mean=_mean(members, quantity))
            row.update(diff=d.diff, diff_lo=d.lo, diff_hi=d.hi, resolved=d.resolved, n_seeds=d.n_seeds)
            row.update(n_queries=d.n_queries, interval=d.method, chance=_chance([*base, *members], quantity))
            row["note"] = d.note
            if with_budget:
                row.update(budget=budget_of(members), baseline_budget=budget_of(base))
            rows.append(row)
    return rows
