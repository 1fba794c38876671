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
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from bindspace.utils.io import atomic_write_text

DEFAULT_METRICS = ("R@1", "R@5", "R@10", "mAP")
KINDS = ("trained", "emergent")
_ANCHOR_KEYS = {"anchor", "graph.anchors"}  # override keys shown as the "anchor" column
_ORDER_KEYS = {"curriculum.order"}  # override keys shown as the "order" column
GroupKey = tuple[tuple[str, str], ...]  # ((column, value), ...)


class ReportError(ValueError):
    """A user error (no such directory, no runs, unknown metric); the CLI prints it as one line."""


@dataclass
class RunRecord:
    """One job of a multirun.

    Attributes:
        path: the job folder.
        overrides: command-line overrides of the job, key -> raw value ("anchor" -> "[image,text]").
        anchor: anchor modalities joined by "+", in graph.modalities order ("image+text").
        order: curriculum order joined by ">" ("imu>audio>depth"), else the curriculum name.
        seed: the job's seed, None if neither config nor overrides say.
        metrics: the parsed metrics.json, None when the job failed.
        failed: no usable metrics.json.
        reason: why the job counts as failed.
        tags: the config's tags.
    """

    path: Path
    overrides: dict[str, str]
    anchor: str
    order: str
    seed: int | None
    metrics: dict[str, Any] | None
    failed: bool
    reason: str = ""
    tags: list[str] = field(default_factory=list)


class StagePoint(NamedTuple):
    """One curriculum stage of a group: step and metric means over pairs, then over seeds."""

    step: float
    trained: float
    emergent: float


# ---------------------------------------------------------------- reading job folders


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _names(value: Any) -> list[str]:
    """Modality names from a flag mapping {image: true}, a list, or an override string "[a,b]" / "{a:true}"."""
    if isinstance(value, dict):
        return [str(k) for k, on in value.items() if on]
    if isinstance(value, list | tuple):  # a nested list is a group of modalities sharing one stage
        return ["+".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for v in value]
    if not isinstance(value, str):
        return []
    try:  # override values use YAML flow syntax: "[imu,[audio,depth]]"
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, list):
        return _names(parsed)
    names = []
    for item in value.strip().strip("[]{}").split(","):
        name, _, flag = item.partition(":")
        if name.strip() and flag.strip().lower() not in ("false", "0", "null"):
            names.append(name.strip().strip("'\""))
    return names


def _anchor(config: dict, metrics: dict | None, overrides: dict[str, str]) -> str:
    graph = config.get("graph") if isinstance(config.get("graph"), dict) else {}
    names = (
        _names(graph.get("anchors"))
        or _names((metrics or {}).get("anchor"))
        or _names(overrides.get("anchor") or overrides.get("graph.anchors"))
    )
    known = [str(m) for m in graph.get("modalities") or []]
    # A canonical order, so anchor=[text,image] and anchor=[image,text] land in one group.
    names = sorted(set(names), key=lambda m: (known.index(m) if m in known else len(known), m))
    return "+".join(names) or "?"


def _order(config: dict, overrides: dict[str, str]) -> str:
    curriculum = config.get("curriculum") if isinstance(config.get("curriculum"), dict) else {}
    order = _names(curriculum.get("order")) or _names(overrides.get("curriculum.order"))
    return ">".join(order) if order else str(curriculum.get("name") or overrides.get("curriculum") or "")


def _seed(config: dict, overrides: dict[str, str]) -> int | None:
    for raw in (config.get("seed"), overrides.get("seed")):
        try:
            return int(raw)
        except (TypeError, ValueError):
            continue
    return None


def _load_metrics(job: Path) -> tuple[dict | None, str]:
    path = job / "metrics.json"
    if not path.is_file():
        return None, "no metrics.json (the job did not finish)"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"unreadable metrics.json: {err}"
    if not isinstance(metrics, dict) or not any(isinstance(metrics.get(k), dict) for k in ("retrieval", "summary")):
        return None, "metrics.json has neither a retrieval table nor a summary"
    return metrics, ""


def _job_dirs(multirun_dir: Path) -> list[Path]:
    if (multirun_dir / "metrics.json").is_file() or (multirun_dir / ".hydra").is_dir():
        return [multirun_dir]  # a single run's folder: a report of one job
    jobs = [
        p
        for p in multirun_dir.iterdir()
        if p.is_dir() and (p.name.isdigit() or (p / ".hydra").is_dir() or (p / "metrics.json").is_file())
    ]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def collect_runs(multirun_dir: str | Path) -> list[RunRecord]:
    """Reads every job folder (``0/``, ``1/``, ... or any folder with ``.hydra/``) of a multirun.

    Args:
        multirun_dir: the sweep folder; a single run's folder also works (one record).

    Returns:
        One record per job, in job-number order; empty if the folder holds no jobs.

    Raises:
        ReportError: if `multirun_dir` is not a directory.
    """
    multirun_dir = Path(multirun_dir)
    if not multirun_dir.is_dir():
        raise ReportError(f"{'not a directory' if multirun_dir.exists() else 'no such directory'}: {multirun_dir}")
    runs = []
    for job in _job_dirs(multirun_dir):
        config = _read_yaml(job / ".hydra" / "config.yaml")
        config = config if isinstance(config, dict) else {}
        raw_overrides = _read_yaml(job / ".hydra" / "overrides.yaml")
        overrides = {}
        for line in raw_overrides if isinstance(raw_overrides, list) else []:
            key, sep, value = str(line).partition("=")
            if sep:  # "~key" deletions carry no value
                overrides[key.lstrip("+~")] = value.strip()
        metrics, reason = _load_metrics(job)
        tags = config.get("tags") if isinstance(config.get("tags"), list) else []
        runs.append(
            RunRecord(
                path=job, overrides=overrides, anchor=_anchor(config, metrics, overrides),
                order=_order(config, overrides), seed=_seed(config, overrides), metrics=metrics,
                failed=metrics is None, reason=reason, tags=[str(t) for t in tags],
            )
        )  # fmt: skip
    return runs


# ---------------------------------------------------------------- grouping


def varying_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Override keys whose value differs between jobs (a key missing from some jobs counts), minus seed."""
    keys = dict.fromkeys(k for run in runs for k in run.overrides)
    return [
        k
        for k in keys
        if k != "seed" and not k.startswith("hydra.") and len({run.overrides.get(k) for run in runs}) > 1
    ]


def group_key(run: RunRecord, keys: Sequence[str]) -> GroupKey:
    """The run's values of the varying `keys` as ((column, value), ...).

    Anchor keys become one "anchor" column holding `run.anchor` and ``curriculum.order`` an "order"
    column holding `run.order` (both canonical, read from the config); other keys keep their name
    and raw override value.
    """
    values: dict[str, str] = {}
    for key in keys:
        column = "anchor" if key in _ANCHOR_KEYS else "order" if key in _ORDER_KEYS else key
        values[column] = {"anchor": run.anchor, "order": run.order}.get(column, run.overrides.get(key, ""))
    return tuple(values.items())


def group_label(key: GroupKey) -> str:
    return ", ".join(f"{column}={value}" for column, value in key) or "all runs"


def group_runs(runs: Sequence[RunRecord]) -> dict[GroupKey, list[RunRecord]]:
    """Runs by group, groups in order of first appearance (the sweep's own order)."""
    keys = varying_keys(runs)
    groups: dict[GroupKey, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(group_key(run, keys), []).append(run)
    return groups


# ---------------------------------------------------------------- aggregation


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


def available_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """Metric names found in any completed run (pair entries or summary keys)."""
    names: dict[str, None] = {}
    for run in runs:
        for entry in ((run.metrics or {}).get("retrieval") or {}).values():
            names.update(dict.fromkeys(k for k in entry if k != "trained"))
        names.update(dict.fromkeys(k.split("/", 1)[1] for k in (run.metrics or {}).get("summary") or {} if "/" in k))
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


# ---------------------------------------------------------------- writing


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
        "--wandb", choices=("offline", "online"), default=None,
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
