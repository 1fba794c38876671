"""``bindspace-report``: compare the jobs of a Hydra multirun in tables and one figure.

    bindspace-train -m anchor=image,text seed=0,1,2
    bindspace-report logs/train/multirun/2024-05-01_12-00-00 --out reports/anchors --metric R@1

Jobs are grouped by every override that varies across the sweep except ``seed`` (found in each
job's ``.hydra/overrides.yaml``), so seeds of one setting pool into one row. Numbers are means over
seeds with the *sample* standard deviation (ddof=1); with a single seed there is no spread to
estimate, so std is None: "n/a" in Markdown, an empty cell in CSV. A job without a readable
``metrics.json`` is listed as failed and left out of every mean.

Plain YAML and JSON are read here (no Hydra, no torch), so a notebook can call `collect_runs` and
`summary_table` directly.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from bindspace.cli import OneLineArgumentParser
from bindspace.report.aggregate import Difference, SeedStats, group_stats, paired_differences, seed_stats
from bindspace.report.bootstrap import DEFAULT_BOOT_SEED, DEFAULT_N_BOOT, bootstrap_many, two_level_bootstrap
from bindspace.report.build import Report, build_report
from bindspace.report.chance import chance_of
from bindspace.report.compare import comparison_table
from bindspace.report.forgetting import forgetting_cells, forgetting_table, validation_chance, validation_panel
from bindspace.report.intervals import zero_shot_table
from bindspace.report.markdown import environment_warning, render_markdown, summary_markdown
from bindspace.report.runs import KINDS, ReportError, RunRecord, collect_runs, varying_keys
from bindspace.report.tables import available_metrics, pair_table, stage_curves, summary_rows_as_columns, summary_table
from bindspace.utils.io import atomic_write_text

__all__ = [
    "Difference",
    "Report",
    "ReportError",
    "RunRecord",
    "SeedStats",
    "bootstrap_many",
    "build_report",
    "chance_of",
    "collect_runs",
    "comparison_table",
    "forgetting_cells",
    "forgetting_table",
    "group_stats",
    "log_to_wandb",
    "main",
    "pair_table",
    "paired_differences",
    "render_markdown",
    "seed_stats",
    "stage_curves",
    "summary_markdown",
    "summary_rows_as_columns",
    "summary_table",
    "two_level_bootstrap",
    "validation_chance",
    "validation_panel",
    "varying_keys",
    "wandb_tables",
    "write_report",
    "zero_shot_table",
]

# Files written only when the sweep has what they show; a stale copy from an earlier report is removed.
OPTIONAL_OUTPUTS = {
    "png": "report.png",
    "compare_csv": "report_compare.csv",
    "zero_shot_csv": "report_zero_shot.csv",
    "forgetting_csv": "report_forgetting.csv",
    "forgetting_png": "report_forgetting.png",
}


def _csv_text(rows: Sequence[dict]) -> str:
    columns, data = summary_rows_as_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # None becomes an empty cell
    writer.writerow(columns)
    writer.writerows(data)
    return buffer.getvalue()


def _figures(report: Report, out: Path) -> dict[str, Path]:
    from bindspace.evaluation.plots import group_comparison_figure, save_figure  # matplotlib only when drawing
    from bindspace.report.figures import forgetting_figure

    metric, paths = report.metric, {}
    stats = {
        row["group"]: {
            kind: tuple(row.get(f"{kind}/{metric}_{part}") for part in ("mean", "std", "lo", "hi")) for kind in KINDS
        }
        for row in report.summary
    }
    chances = {row.get(f"chance/{metric}") for row in report.summary}
    test_chance = chances.pop() if len(chances) == 1 else None
    curve_chance = report.validation_chance[0]
    fig = group_comparison_figure(stats, metric, report.curves, chance=test_chance, curve_chance=curve_chance)
    paths["png"] = save_figure(fig, out / OPTIONAL_OUTPUTS["png"])
    if report.panels:
        paths["forgetting_png"] = save_figure(
            forgetting_figure(report.panels, metric), out / OPTIONAL_OUTPUTS["forgetting_png"]
        )
    return paths


def _write_outputs(
    multirun_dir: Path,
    out_dir: str | Path | None,
    metric: str,
    baseline: str | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
) -> tuple[dict[str, Path], str, Report]:
    runs = collect_runs(multirun_dir)
    if not runs:
        raise ReportError(
            f"no runs found in {multirun_dir} (expected job folders 0/, 1/, ... with .hydra/ or metrics.json)"
        )
    done = [r for r in runs if not r.failed]
    if done and metric not in available_metrics(done):
        raise ReportError(  # intervals (R@1_ci) and other non-numbers are not metrics a column can average
            f"no run in {multirun_dir} has a scalar metric {metric!r}; available: {', '.join(available_metrics(done))}"
        )
    if n_boot < 1:
        raise ReportError(f"--n-boot must be >= 1, got {n_boot}")
    out = Path(out_dir) if out_dir is not None else multirun_dir
    report = build_report(runs, metric, baseline, n_boot, boot_seed)
    markdown, summary = render_markdown(multirun_dir, report)
    paths = {
        "md": atomic_write_text(out / "report.md", markdown),
        "csv": atomic_write_text(out / "report.csv", _csv_text(report.summary)),
        "pairs_csv": atomic_write_text(out / "report_pairs.csv", _csv_text(report.pairs)),
    }
    tables = {
        "compare_csv": report.comparison,
        "zero_shot_csv": report.zero_shot,
        "forgetting_csv": [row for rows in report.forgetting.values() for row in rows],
    }
    paths.update(
        {k: atomic_write_text(out / OPTIONAL_OUTPUTS[k], _csv_text(rows)) for k, rows in tables.items() if rows}
    )
    if done:
        paths.update(_figures(report, out))
    for key, name in OPTIONAL_OUTPUTS.items():
        if key not in paths:
            (out / name).unlink(missing_ok=True)  # never leave a previous report's file beside this one
    return paths, summary, report


def write_report(
    multirun_dir: str | Path,
    out_dir: str | Path | None = None,
    metric: str = "R@1",
    baseline: str | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
) -> dict[str, Path]:
    """Writes the report files, each atomically.

    Always report.md, report.csv (summary per group) and report_pairs.csv (per group and pair); with
    completed runs report.png (bars on the test split, stage curves on the validation split); with two
    groups or more report_compare.csv (paired differences to the baseline); with zero-shot results
    report_zero_shot.csv; with curriculum stages report_forgetting.csv and report_forgetting.png.

    Args:
        multirun_dir: the sweep folder (see `collect_runs`).
        out_dir: where to write; the sweep folder by default.
        metric: the metric of the per-pair table, the figures, the stage curves and the forgetting
            table (the summary and the comparison always have R@1, R@5, R@10 and mAP when present).
        baseline: the group every other group is compared with (see `bindspace.report.compare`); the
            first group by default.
        n_boot: bootstrap resamples of every interval.
        boot_seed: seed of the bootstrap.

    Returns:
        {"md", "csv", "pairs_csv", and those of "png", "compare_csv", "zero_shot_csv", "forgetting_csv",
        "forgetting_png" that were written} -> path.

    Raises:
        ReportError: no such folder, no jobs in it, no completed run has `metric`, an unknown baseline,
            or a malformed per_query.npz.
    """
    return _write_outputs(Path(multirun_dir), out_dir, metric, baseline, n_boot, boot_seed)[0]


def wandb_tables(report: Report) -> dict[str, tuple[list[str], list[list]]]:
    """Key -> (columns, data) of every non-empty table of `report`, for ``wandb.Table(columns=..., data=...)``.

    Keys: report/summary, report/pairs, report/compare, report/zero_shot, report/forgetting.
    """
    tables = {
        "report/summary": report.summary,
        "report/pairs": report.pairs,
        "report/compare": report.comparison,
        "report/zero_shot": report.zero_shot,
        "report/forgetting": [row for rows in report.forgetting.values() for row in rows],
    }
    return {key: summary_rows_as_columns(rows) for key, rows in tables.items() if rows}


def log_to_wandb(report: Report, paths: dict[str, Path], mode: str, out: Path) -> None:
    """Log every table as a ``wandb.Table`` (and the figures) in a run named ``report``.

    The run joins the group of the sweep's jobs (from their ``metrics.json``), so it sits beside them.
    """
    import wandb

    done = [r for r in report.runs if not r.failed]
    group = next((r.metrics.get("run", {}).get("group") for r in done if r.metrics), None)
    run = wandb.init(project="bindspace", group=group, name="report", job_type="report", dir=str(out), mode=mode)
    try:
        run.log({key: wandb.Table(columns=columns, data=data) for key, (columns, data) in wandb_tables(report).items()})
        figures = {"png": "report/figure", "forgetting_png": "report/forgetting_figure"}
        run.log({key: wandb.Image(str(paths[name])) for name, key in figures.items() if name in paths})
    finally:
        run.finish()


def main(argv: Sequence[str] | None = None) -> int:
    """``bindspace-report MULTIRUN_DIR [--out DIR] [--metric R@1] [--baseline GROUP] [--n-boot N] [--boot-seed S]
    [--wandb MODE]``; returns the exit code."""
    parser = OneLineArgumentParser(
        prog="bindspace-report",
        description="Compare the jobs of a multirun: seeds pooled with intervals, paired differences, chance.",
        epilog="example:\n  bindspace-report runs/train/multirun/<time> --baseline anchor=image",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("multirun_dir", type=Path, help="a bindspace-train -m sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the sweep folder)")
    parser.add_argument("--metric", default="R@1", help="metric of the pair table, figures and stages (default R@1)")
    parser.add_argument(
        "--baseline",
        default=None,
        help='group every other group is compared with, by label ("anchor=image") or value ("image"); '
        "default: the first group of the sweep",
    )
    parser.add_argument(
        "--n-boot", type=int, default=DEFAULT_N_BOOT, help=f"bootstrap resamples (default {DEFAULT_N_BOOT})"
    )
    parser.add_argument("--boot-seed", type=int, default=DEFAULT_BOOT_SEED, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--wandb",
        choices=("offline", "online"),
        default=None,
        help="also log the tables as wandb Tables (and the figures) in a run of the sweep's group",
    )
    args = parser.parse_args(argv)
    try:
        paths, summary, report = _write_outputs(
            args.multirun_dir, args.out, args.metric, args.baseline, args.n_boot, args.boot_seed
        )
    except ReportError as err:
        print(f"bindspace-report: error: {err}", file=sys.stderr)
        return 2
    if args.wandb:
        log_to_wandb(report, paths, args.wandb, Path(args.out or args.multirun_dir))
    print(summary + "\n")
    print("\n".join(f"wrote {path}" for path in paths.values()))
    warning = environment_warning(report.runs)
    if warning:
        print(f"bindspace-report: warning: {warning}", file=sys.stderr)
    if all(r.failed for r in report.runs):
        print(f"bindspace-report: all {len(report.runs)} jobs failed; see {paths['md']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
