"""Every table of a report, computed once from the run records (no files written here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bindspace.report.bootstrap import DEFAULT_BOOT_SEED, DEFAULT_N_BOOT
from bindspace.report.compare import comparison_table, resolve_baseline
from bindspace.report.forgetting import ValidationPanel, forgetting_table, validation_chance, validation_panel
from bindspace.report.intervals import add_pair_intervals, add_summary_intervals, zero_shot_table
from bindspace.report.runs import DEFAULT_METRICS, RunRecord, StagePoint, group_label, group_runs
from bindspace.report.tables import pair_table, stage_curves, summary_table


@dataclass
class Report:
    """The tables of one report. Row layouts: see the functions that build them (named per field).

    Attributes:
        runs: every job, failed ones included.
        metric: the metric of the pair table, the figures, the forgetting table and the comparison.
        summary: `summary_table` rows plus `add_summary_intervals` columns (test split).
        pairs: `pair_table` rows plus `add_pair_intervals` columns (test split).
        baseline: label of the baseline group, None with a single group.
        comparison: `comparison_table` rows (test split).
        zero_shot: `zero_shot_table` rows (test split).
        forgetting: group label -> `forgetting_table` rows (validation split); groups without stages left out.
        panels: group label -> `validation_panel` (validation split).
        curves: `stage_curves` (validation split), for report.png.
        validation_chance: (chance of `metric` on the validation split, where it came from), see
            `validation_chance`.
        n_boot: bootstrap resamples.
        boot_seed: bootstrap seed.
    """

    runs: list[RunRecord]
    metric: str
    summary: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    baseline: str | None = None
    comparison: list[dict] = field(default_factory=list)
    zero_shot: list[dict] = field(default_factory=list)
    forgetting: dict[str, list[dict]] = field(default_factory=dict)
    panels: dict[str, ValidationPanel] = field(default_factory=dict)
    curves: dict[str, list[StagePoint]] = field(default_factory=dict)
    validation_chance: tuple[float | None, str] = (None, "")
    n_boot: int = DEFAULT_N_BOOT
    boot_seed: int = DEFAULT_BOOT_SEED

    @property
    def metrics(self) -> list[str]:
        """Metrics of the summary table: R@1, R@5, R@10 and mAP, plus the report's metric."""
        return list(dict.fromkeys([*DEFAULT_METRICS, self.metric]))


def build_report(
    runs: Sequence[RunRecord],
    metric: str = "R@1",
    baseline: str | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
) -> Report:
    """Computes every table of the report of `runs`.

    Raises:
        ReportError: `baseline` names no group.
    """
    report = Report(list(runs), metric, n_boot=n_boot, boot_seed=boot_seed)
    groups = group_runs(runs)
    if len(groups) > 1 or baseline is not None:
        report.baseline = group_label(resolve_baseline(list(groups), baseline))
    if not any(not r.failed for r in runs):
        report.summary = summary_table(runs, report.metrics)
        return report
    report.summary = add_summary_intervals(summary_table(runs, report.metrics), runs, n_boot, boot_seed)
    report.pairs = add_pair_intervals(pair_table(runs, report.metrics), runs, report.metrics, n_boot, boot_seed)
    if len(groups) > 1:
        report.comparison = comparison_table(runs, baseline, report.metrics, n_boot, boot_seed)
    report.zero_shot = zero_shot_table(runs, n_boot=n_boot, boot_seed=boot_seed)
    for key, members in groups.items():
        metrics_list = [r.metrics for r in members if not r.failed]
        configs = [r.config for r in members if not r.failed]
        rows = forgetting_table(metrics_list, metric)
        if rows:
            report.forgetting[group_label(key)] = [{**dict(key), "group": group_label(key), **row} for row in rows]
        panel = validation_panel(metrics_list, metric, configs)
        if panel is not None:
            report.panels[group_label(key)] = panel
    report.curves = stage_curves(runs, metric)
    done = [r for r in runs if not r.failed]
    report.validation_chance = validation_chance([r.metrics for r in done], metric, [r.config for r in done])
    return report
