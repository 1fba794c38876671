"""report.md: every table of a `Report` as Markdown, each with its split, chance and interval method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bindspace.report.aggregate import NO_CI, RUN_CI, T_SEEDS, TWO_LEVEL
from bindspace.report.build import Report
from bindspace.report.chance import format_chance
from bindspace.report.forgetting import forgetting_cells
from bindspace.report.runs import KINDS, RunRecord, StagePoint, varying_keys
from bindspace.utils.environment import environment_differences
from bindspace.utils.environment import summary as environment_summary

TEST, VALIDATION = "test split", "validation split"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _fmt(mean: float | None, std: float | None, lo: float | None = None, hi: float | None = None) -> str:
    """ "mean ± std [lo, hi]"; std and interval shown as n/a when unknown."""
    if mean is None:
        return "n/a"
    text = f"{mean:.1f} ± " + ("n/a" if std is None else f"{std:.1f}")
    return text + ("" if lo is None or hi is None else f" [{lo:.1f}, {hi:.1f}]")


def _interval(lo: float | None, hi: float | None) -> str:
    return "n/a" if lo is None or hi is None else f"[{lo:.1f}, {hi:.1f}]"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def _chance_note(rows: Sequence[Mapping], metrics: Sequence[str], column: str = "chance/{}") -> str:
    parts = []
    for m in metrics:
        values = {row.get(column.format(m)) for row in rows}
        parts.append(f"{m} {format_chance(values.pop())}" if len(values) == 1 else f"{m} differs by group (see csv)")
    return "Chance (random ranking): " + ", ".join(parts) + "."


def _methods_note(rows: Sequence[Mapping], column: str = "interval") -> str:
    methods = sorted({m.strip() for row in rows for m in str(row.get(column) or "").split(";") if m.strip()})
    return f"Intervals: {', '.join(methods) or 'none'} (see Methods)."


def summary_markdown(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    """The summary rows as Markdown: group columns, seeds, (budget), then trained and emergent cells."""
    group_columns = list(rows[0])[: list(rows[0]).index("group")] or ["group"]
    metrics = [m for m in metrics if f"trained/{m}_mean" in rows[0]]
    budget = any(row.get("budget") for row in rows)
    cost = any(row.get("step_ms") is not None for row in rows)
    params = any(row.get("trainable_params") is not None for row in rows)
    cost_header = ["step ms", "peak RSS MiB"] if cost else []
    header = [
        *group_columns, "seeds", *(["budget"] if budget else []), *(["trainable params"] if params else []),
        *cost_header,
        *(f"{k} {m}" for m in metrics for k in KINDS),
    ]  # fmt: skip
    body = []
    for row in rows:
        seeds = f"{row['n_seeds']}" + (f" (+{row['n_failed']} failed)" if row["n_failed"] else "")
        cells = [
            _fmt(row[f"{k}/{m}_mean"], row[f"{k}/{m}_std"], row.get(f"{k}/{m}_lo"), row.get(f"{k}/{m}_hi"))
            for m in metrics
            for k in KINDS
        ]
        costs = [_number(row.get("step_ms")), _number(row.get("peak_rss_mib"))] if cost else []
        spent = [row.get("budget") or ""] if budget else []
        count = row.get("trainable_params")
        trained = ["" if count is None else f"{count:,}"] if params else []
        body.append([*(row[c] for c in group_columns), seeds, *spent, *trained, *costs, *cells])
    return md_table(header, body)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _pairs_markdown(pairs: Sequence[dict], metric: str) -> str:
    groups = list(dict.fromkeys(row["group"] for row in pairs))
    cells = {
        (r["pair"], r["group"]): _fmt(
            r[f"{metric}_mean"], r[f"{metric}_std"], r.get(f"{metric}_lo"), r.get(f"{metric}_hi")
        )
        + (" *" if r["trained"] else "")
        for r in pairs
    }
    body = [[pair, *(cells.get((pair, g), "") for g in groups)] for pair in dict.fromkeys(r["pair"] for r in pairs)]
    legend = (
        f"`*` trained pair; unmarked: emergent pair (never trained together in that group). {TEST.capitalize()}. "
        + _chance_note(pairs, [metric], "{}_chance")
        + " "
        + _methods_note(pairs)
    )
    return md_table(["pair (query->gallery)", *groups], body) + "\n\n" + legend


def _stages_markdown(curves: Mapping[str, list[StagePoint]], metric: str) -> str:
    body = [
        [label, i + 1, f"{p.step:g}", f"{p.trained:.1f}", f"{p.emergent:.1f}"]
        for label, points in curves.items()
        for i, p in enumerate(points)
    ]
    return md_table(["group", "stage", "step", f"trained {metric}", f"emergent {metric}"], body)


def _forgetting_markdown(report: Report) -> str:
    parts = []
    for label, rows in report.forgetting.items():
        header, body = forgetting_cells(rows, report.metric)
        panel = report.panels.get(label)
        chance = "" if panel is None or panel.chance is None else f" Chance {report.metric} = {panel.chance:.2f}"
        chance += f" ({panel.chance_note})." if chance and panel.chance_note else ("." if chance else "")
        parts += [f"### {label}", md_table(header, body), f"{VALIDATION.capitalize()}, mean over seeds.{chance}"]
    legend = (
        f"{report.metric} of each graph edge (mean of its two directions) at the end of each stage. `[x]`: edge not"
        " trained yet by the end of that stage (emergent so far); `(-d)`: d points below the edge's best value at an"
        " earlier stage (forgetting when the edge was trained). Figure: report_forgetting.png."
    )
    return "\n\n".join([legend, *parts])


def _comparison_markdown(report: Report) -> str:
    rows = [
        r for r in report.comparison if r["quantity"].endswith(f"/{report.metric}") or r["quantity"].endswith("/top1")
    ]
    budget = any(r.get("budget") for r in rows)
    header = ["group", *(["budget"] if budget else []), "quantity", "baseline mean", "group mean"]
    header += ["difference [95% CI]", "seeds", "chance", "verdict"]
    body = []
    for r in rows:
        verdict = "resolved" if r["resolved"] else "**not resolved**"
        diff = "n/a" if r["diff"] is None else f"{r['diff']:+.2f} " + _interval(r["diff_lo"], r["diff_hi"])
        body.append([
            r["group"], *([r.get("budget") or ""] if budget else []), r["quantity"], _num(r["baseline_mean"]),
            _num(r["mean"]), diff, r["n_seeds"], format_chance(r["chance"]),
            verdict + (f" ({r['note']})" if r["note"] else ""),
        ])  # fmt: skip
    text = (
        f"Baseline: **{report.baseline}**" + (f" (budget {rows[0]['baseline_budget']})" if budget else "") + ". "
        f"Difference = group - baseline at matched seeds (same seed, same held-out samples, queries matched by"
        f" sample id); {TEST}. **not resolved**: the 95% interval contains 0. All metrics: report_compare.csv."
    )
    return text + "\n\n" + md_table(header, body) + "\n\n" + _methods_note(rows)


def _zero_shot_markdown(report: Report) -> str:
    rows = [r for r in report.zero_shot if r["metric"] == "top1"]
    modalities = list(dict.fromkeys(r["modality"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    cells = {(r["group"], r["modality"]): r for r in rows}
    body = []
    for g in groups:
        line = [g]
        for m in modalities:
            r = cells.get((g, m))
            line.append(
                ""
                if r is None
                else f"{r['mean']:.1f} {_interval(r['lo'], r['hi'])}" + (" *" if r["edge_trained"] else "")
            )
        body.append(line)
    chance = {r["chance"] for r in rows}
    chance_text = (
        f"chance = 100 / classes = {format_chance(chance.pop())}" if len(chance) == 1 else "chance differs by group"
    )
    text = (
        f"Top-1 against text prompts of the class names, {TEST}, mean over seeds [95% interval]; {chance_text}. "
        "`*`: the modality was trained against text (not emergent). Top-5: report_zero_shot.csv. "
    )
    return text + _methods_note(rows) + "\n\n" + md_table(["group", *modalities], body)


def _failed_markdown(multirun_dir: Path, runs: Sequence[RunRecord]) -> str:
    lines = []
    for run in (r for r in runs if r.failed):
        name = run.path.relative_to(multirun_dir) if run.path != multirun_dir else run.path.name
        overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "no overrides"
        lines.append(f"- `{name}` ({overrides}): failed, {run.reason}")
    return "\n".join(lines) or "None."


def _job_names(multirun_dir: Path, runs: Sequence[RunRecord], limit: int = 3) -> str:
    names = [str(r.path.relative_to(multirun_dir)) if r.path != multirun_dir else r.path.name for r in runs]
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return f"{len(names)} job{'s' if len(names) > 1 else ''}: {shown}" + (", ..." if len(names) > limit else "")


def environment_markdown(multirun_dir: Path, runs: Sequence[RunRecord]) -> str:
    """What the completed jobs recorded of their code, hardware and libraries (``metrics.json["environment"]``),
    and every field in which they differ."""
    done = [r for r in runs if not r.failed]
    envs = [(r.metrics or {}).get("environment") for r in done]
    missing = [r for r, env in zip(done, envs, strict=True) if not env]
    lines = []
    diffs = environment_differences(envs)
    recorded = [env for env in envs if env]
    if recorded and not diffs:
        same = environment_summary(recorded[0])
        lines.append(f"Every job that recorded its environment ran in the same one: {same}.")
    elif diffs:
        lines.append(
            "**The jobs differ in their environment.** The same config can give other numbers on other hardware or"
            " libraries, so a difference between groups may be the environment's rather than the setting's:"
        )
        for name, values in diffs.items():
            jobs = {value: _job_names(multirun_dir, [done[i] for i in idx]) for value, idx in values.items()}
            by_value = "; ".join(f"{value} ({names})" for value, names in jobs.items())
            lines.append(f"- `{name}`: {by_value}")
    if missing:
        lines.append(
            f"No environment recorded by {_job_names(multirun_dir, missing)} (metrics.json written before bindspace"
            " recorded it)."
        )
    relaunched = [r for r in done if _trained_in_several(r.metrics)]
    if relaunched:
        lines.append(
            f"**Trained in more than one environment** (relaunched elsewhere, or with other code): "
            f'{_job_names(multirun_dir, relaunched)}. Each one\'s `metrics.json["earlier_environments"]` lists the '
            "launches before the last and the step each trained up to."
        )
    return "\n".join(lines) or "No completed job."


def _trained_in_several(metrics: Mapping[str, Any] | None) -> bool:
    """A relaunched job whose launches' environments differ (``earlier_environments`` and ``environment``)."""
    earlier = (metrics or {}).get("earlier_environments") or []
    envs = [e.get("environment") for e in earlier if isinstance(e, Mapping)]
    return bool(envs) and bool(environment_differences([*envs, (metrics or {}).get("environment")]))


def environment_warning(runs: Sequence[RunRecord]) -> str | None:
    """One line for the terminal when the completed jobs' environments differ, else None."""
    done = [r for r in runs if not r.failed]
    diffs = environment_differences([(r.metrics or {}).get("environment") for r in done])
    relaunched = sum(_trained_in_several(r.metrics) for r in done)
    if diffs:
        return f"the jobs ran in different environments ({', '.join(diffs)}); see report.md's Environment section"
    if relaunched:
        return f"{relaunched} job(s) trained in more than one environment; see report.md's Environment section"
    return None


def _methods(report: Report) -> str:
    return "\n".join([
        f"- **{TWO_LEVEL}**: every run of the group (or both groups) has per_query.npz; {report.n_boot} resamples,"
        f" numpy seed {report.boot_seed}: seeds drawn with replacement, then each drawn seed's queries with"
        " replacement (its groups of queries when its per_query.npz holds groups: rows that are copies of one"
        " source, e.g. the captions of one sound, are drawn together); 95% percentile interval of the mean"
        " over seeds of the mean over queries. One seed: a"
        " bootstrap over its queries only (seed-to-seed variation not covered). With few seeds the seed draws"
        " understate seed-to-seed variation (two seeds give only three distinct seed sets): read the std beside"
        " the interval, and prefer five seeds or more for a claim.",
        f"- **{T_SEEDS}**: no per-query values; Student-t 95% interval over the seeds' values (or per-seed"
        " differences); ignores the held-out sample's noise.",
        f"- **{RUN_CI}**: one seed without per-query values; the run's own interval from metrics.json.",
        f"- **{NO_CI}**: one seed of an older run; no interval can be given, so no difference is resolved.",
    ])  # fmt: skip


def render_markdown(multirun_dir: Path, report: Report) -> tuple[str, str]:
    """(the whole report.md, its summary table alone)."""
    runs, metric = report.runs, report.metric
    summary = summary_markdown(report.summary, report.metrics)
    failed = [r for r in runs if r.failed]
    keys = varying_keys(runs)
    tags = sorted({t for r in runs for t in r.tags})
    parts = [
        f"# bindspace report: {multirun_dir.resolve().name}",
        f"`{multirun_dir}`: {len(runs)} jobs, {len(runs) - len(failed)} completed, {len(failed)} failed. "
        f"Grouped by {', '.join(keys) or 'nothing (one setting)'}; cells are mean ± sample std over seeds "
        "(n/a with one seed) [95% interval], pair metrics averaged over trained and over emergent pairs. "
        "Final tables score the test split; curriculum stages score the validation split."
        + (f" Tags: {', '.join(tags)}." if tags else ""),
        "## Summary",
        summary,
    ]
    if report.pairs:
        parts += [
            TEST.capitalize()
            + ". "
            + _chance_note(report.summary, [m for m in report.metrics if f"trained/{m}_mean" in report.summary[0]])
            + " "
            + _methods_note(report.summary)
        ]
        parts += [f"## Per-pair {metric}", _pairs_markdown(report.pairs, metric)]
    if report.comparison:
        parts += ["## Paired comparison with the baseline", _comparison_markdown(report)]
    if report.zero_shot:
        parts += ["## Zero-shot classification", _zero_shot_markdown(report)]
    if report.curves:
        chance, note = report.validation_chance
        caption = f"Means over trained and over emergent pairs at stage ends. Chance {metric} = {format_chance(chance)}"
        parts += [
            f"## Curriculum stages ({metric}, mean over seeds, {VALIDATION})",
            _stages_markdown(report.curves, metric),
            caption + (f" ({note})." if note else "."),
        ]
    if report.forgetting:
        parts += [f"## Forgetting and transfer ({metric}, {VALIDATION})", _forgetting_markdown(report)]
    parts += ["## Environment", environment_markdown(multirun_dir, runs)]
    parts += ["## Methods", _methods(report), "## Failed runs", _failed_markdown(multirun_dir, runs)]
    return "\n\n".join(parts) + "\n", summary
