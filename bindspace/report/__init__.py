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
from typing import Any

from bindspace.report.runs import DEFAULT_METRICS, KINDS, ReportError, RunRecord, StagePoint, collect_runs, varying_keys
from bindspace.report.tables import available_metrics, pair_table, stage_curves, summary_rows_as_columns, summary_table
from bindspace.utils.io import atomic_write_text

__all__ = [
    "ReportError",
    "RunRecord",
    "collect_runs",
    "log_to_wandb",
    "main",
    "pair_table",
    "stage_curves",
    "summary_rows_as_columns",
    "summary_table",
    "varying_keys",
    "write_report",
]


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.1f} ± " + ("n/a" if std is None else f"{std:.1f}")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def summary_markdown(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    """The summary rows as a Markdown table: group columns, seeds, then trained and emergent "mean ± std"."""
    group_columns = list(rows[0])[: list(rows[0]).index("group")] or ["group"]
    metrics = [m for m in metrics if f"trained/{m}_mean" in rows[0]]
    header = [*group_columns, "seeds", *(f"{kind} {m}" for m in metrics for kind in KINDS)]
    body = []
    for row in rows:
        seeds = f"{row['n_seeds']}" + (f" (+{row['n_failed']} failed)" if row["n_failed"] else "")
        cells = [_fmt(row[f"{kind}/{m}_mean"], row[f"{kind}/{m}_std"]) for m in metrics for kind in KINDS]
        body.append([*(row[c] for c in group_columns), seeds, *cells])
    return _md_table(header, body)


def _pairs_markdown(pairs: Sequence[dict], metric: str) -> str:
    groups = list(dict.fromkeys(row["group"] for row in pairs))
    mark = {True: " *", False: ""}
    cells = {(r["pair"], r["group"]): _fmt(r[f"{metric}_mean"], r[f"{metric}_std"]) + mark[r["trained"]] for r in pairs}
    body = [[pair, *(cells.get((pair, g), "") for g in groups)] for pair in dict.fromkeys(r["pair"] for r in pairs)]
    legend = "`*` trained pair; unmarked: emergent pair (never trained together in that group)."
    return _md_table(["pair (query->gallery)", *groups], body) + "\n\n" + legend


def _stages_markdown(curves: dict[str, list[StagePoint]], metric: str) -> str:
    body = [
        [label, i + 1, f"{p.step:g}", f"{p.trained:.1f}", f"{p.emergent:.1f}"]
        for label, points in curves.items()
        for i, p in enumerate(points)
    ]
    return _md_table(["group", "stage", "step", f"trained {metric}", f"emergent {metric}"], body)


def _failed_markdown(multirun_dir: Path, runs: Sequence[RunRecord]) -> str:
    lines = []
    for run in (r for r in runs if r.failed):
        name = run.path.relative_to(multirun_dir) if run.path != multirun_dir else run.path.name
        overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "no overrides"
        lines.append(f"- `{name}` ({overrides}): failed, {run.reason}")
    return "\n".join(lines) or "None."


def render_markdown(multirun_dir: Path, runs: Sequence[RunRecord], metric: str) -> tuple[str, str]:
    """(the whole report.md, its summary table alone)."""
    metrics = list(dict.fromkeys([*DEFAULT_METRICS, metric]))
    summary = summary_markdown(summary_table(runs, metrics), metrics)
    failed = [r for r in runs if r.failed]
    keys = varying_keys(runs)
    tags = sorted({t for r in runs for t in r.tags})
    parts = [
        f"# bindspace report: {multirun_dir.resolve().name}",
        f"`{multirun_dir}`: {len(runs)} jobs, {len(runs) - len(failed)} completed, {len(failed)} failed. "
        f"Grouped by {', '.join(keys) or 'nothing (one setting)'}; values are mean ± sample std over seeds "
        "(n/a with one seed), pair metrics averaged over trained and over emergent pairs."
        + (f" Tags: {', '.join(tags)}." if tags else ""),
        "## Summary",
        summary,
        f"## Per-pair {metric}",
        _pairs_markdown(pair_table(runs, [metric]), metric),
    ]
    curves = stage_curves(runs, metric)
    if curves:
        parts += [f"## Curriculum stages ({metric}, mean over seeds)", _stages_markdown(curves, metric)]
    parts += ["## Failed runs", _failed_markdown(multirun_dir, runs)]
    return "\n\n".join(parts) + "\n", summary


def _csv_text(rows: Sequence[dict]) -> str:
    columns, data = summary_rows_as_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # None becomes an empty cell
    writer.writerow(columns)
    writer.writerows(data)
    return buffer.getvalue()


def _write_figure(rows: Sequence[dict], curves: dict[str, list[StagePoint]], metric: str, path: Path) -> Path:
    from bindspace.evaluation.plots import group_comparison_figure, save_figure  # matplotlib only when drawing

    stats = {
        row["group"]: {kind: (row[f"{kind}/{metric}_mean"], row[f"{kind}/{metric}_std"]) for kind in KINDS}
        for row in rows
    }
    return save_figure(group_comparison_figure(stats, metric, curves), path)


def _write_outputs(multirun_dir: Path, out_dir: str | Path | None, metric: str) -> tuple[dict[str, Path], str, list]:
    runs = collect_runs(multirun_dir)
    if not runs:
        raise ReportError(
            f"no runs found in {multirun_dir} (expected job folders 0/, 1/, ... with .hydra/ or metrics.json)"
        )
    done = [r for r in runs if not r.failed]
    if done and metric not in available_metrics(done):
        raise ReportError(
            f"no run in {multirun_dir} has metric {metric!r}; available: {', '.join(available_metrics(done))}"
        )
    metrics = list(dict.fromkeys([*DEFAULT_METRICS, metric]))
    out = Path(out_dir) if out_dir is not None else multirun_dir
    markdown, summary = render_markdown(multirun_dir, runs, metric)
    rows = summary_table(runs, metrics)
    paths = {
        "md": atomic_write_text(out / "report.md", markdown),
        "csv": atomic_write_text(out / "report.csv", _csv_text(rows)),
        "pairs_csv": atomic_write_text(out / "report_pairs.csv", _csv_text(pair_table(runs, metrics))),
    }
    if done:
        paths["png"] = _write_figure(rows, stage_curves(runs, metric), metric, out / "report.png")
    else:
        (out / "report.png").unlink(missing_ok=True)  # never leave a previous report's figure beside this one
    return paths, summary, runs


def write_report(multirun_dir: str | Path, out_dir: str | Path | None = None, metric: str = "R@1") -> dict[str, Path]:
    """Writes report.md, report.csv, report_pairs.csv and report.png, each atomically.

    Args:
        multirun_dir: the sweep folder (see `collect_runs`).
        out_dir: where to write; the sweep folder by default.
        metric: the metric of the per-pair table, the figure and the stage curves (the summary
            always has R@1, R@5, R@10 and mAP when present).

    Returns:
        {"md", "csv", "pairs_csv", "png"} -> path; "png" is missing when every job failed.

    Raises:
        ReportError: no such folder, no jobs in it, or no completed run has `metric`.
    """
    return _write_outputs(Path(multirun_dir), out_dir, metric)[0]


def log_to_wandb(runs: Sequence[RunRecord], paths: dict[str, Path], mode: str, out: Path, metric: str) -> None:
    """Log the summary table as a ``wandb.Table`` (and the figure) in a run named ``report``.

    The run joins the group of the sweep's jobs (from their ``metrics.json``), so it sits beside them.
    """
    import wandb

    done = [r for r in runs if not r.failed]
    group = next((r.metrics.get("run", {}).get("group") for r in done if r.metrics), None)
    columns, data = summary_rows_as_columns(summary_table(runs, list(dict.fromkeys([*DEFAULT_METRICS, metric]))))
    run = wandb.init(project="bindspace", group=group, name="report", job_type="report", dir=str(out), mode=mode)
    try:
        run.log({"report/summary": wandb.Table(columns=columns, data=data)})
        if "png" in paths:
            run.log({"report/figure": wandb.Image(str(paths["png"]))})
    finally:
        run.finish()


def main(argv: Sequence[str] | None = None) -> int:
    """``bindspace-report MULTIRUN_DIR [--out DIR] [--metric R@1]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="bindspace-report", description="Compare the jobs of a multirun.")
    parser.add_argument("multirun_dir", type=Path, help="a bindspace-train -m sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the sweep folder)")
    parser.add_argument("--metric", default="R@1", help="metric of the pair table, figure and stages (default R@1)")
    parser.add_argument(
        "--wandb",
        choices=("offline", "online"),
        default=None,
        help="also log the summary as a wandb Table (and the figure) in a run of the sweep's group",
    )
    args = parser.parse_args(argv)
    try:
        paths, summary, runs = _write_outputs(args.multirun_dir, args.out, args.metric)
    except ReportError as err:
        print(f"bindspace-report: error: {err}", file=sys.stderr)
        return 2
    if args.wandb:
        log_to_wandb(runs, paths, args.wandb, Path(args.out or args.multirun_dir), args.metric)
    print(summary + "\n")
    print("\n".join(f"wrote {path}" for path in paths.values()))
    if all(r.failed for r in runs):
        print(f"bindspace-report: all {len(runs)} jobs failed; see {paths['md']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
