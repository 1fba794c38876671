"""Seeds pooled with an interval, and groups compared with a paired test, from run records.

Interval methods, strongest first (the one used is named in every row):

- ``2-level bootstrap``: every run of the group has ``per_query.npz`` with the quantity; seeds, then
  queries within each seed, are resampled (`bindspace.report.bootstrap`); the groups of queries instead of
  the queries when the file holds ``groups`` (held-out rows that are copies of one source).
- ``t over seeds``: at least two seeds but no per-query values; a Student-t interval of the seed values.
  It ignores the held-out sample's own noise, so it is only as good as the number of seeds.
- ``run bootstrap``: one seed without per-query values; the run's own interval from ``metrics.json``.
- ``none``: no interval can be given (one seed of an older run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bindspace.report.bootstrap import DEFAULT_BOOT_SEED, DEFAULT_N_BOOT, bootstrap_many, excludes_zero, t_interval
from bindspace.report.quantities import parse_key, query_values, run_interval, run_value
from bindspace.report.runs import RunRecord
from bindspace.report.tables import mean_std

TWO_LEVEL, T_SEEDS, RUN_CI, NO_CI = "2-level bootstrap", "t over seeds", "run bootstrap", "none"


@dataclass(frozen=True)
class SeedStats:
    """A group's value of one quantity: mean and sample std over seeds, and a 95% interval."""

    mean: float | None
    std: float | None
    lo: float | None
    hi: float | None
    n_seeds: int
    method: str


@dataclass(frozen=True)
class Difference:
    """``other - baseline`` of one quantity at matched seeds (and sample ids), with a 95% interval.

    ``resolved`` is True only when the interval excludes 0; ``n_queries`` is the smallest number of
    matched queries over seeds (None without per-query values).
    """

    diff: float | None
    lo: float | None
    hi: float | None
    n_seeds: int
    n_queries: int | None
    method: str
    resolved: bool
    note: str = ""


def _fallback_stats(done: Sequence[RunRecord], key: str) -> SeedStats:
    values = [run_value(r.metrics, key) for r in done]
    mean, std = mean_std(values)
    if len(done) >= 2:
        lo, hi = t_interval(values)
        if parse_key(key)[2] != "median_rank":  # a percent cannot leave [0, 100]; the t interval can
            lo, hi = max(lo, 0.0), min(hi, 100.0)
        return SeedStats(mean, std, lo, hi, len(done), T_SEEDS)
    own = run_interval(done[0].metrics, key) if done else None
    if own is not None:
        return SeedStats(mean, std, *own, 1, RUN_CI)
    return SeedStats(mean, std, None, None, len(done), NO_CI)


def group_stats(
    runs: Sequence[RunRecord], keys: Sequence[str], n_boot: int = DEFAULT_N_BOOT, boot_seed: int = DEFAULT_BOOT_SEED
) -> dict[str, SeedStats]:
    """Mean, sample std and 95% interval over the completed runs of one group, per quantity key.

    The mean and std are those of the runs' ``metrics.json`` values (as in the summary table); the
    interval's method is chosen per key (see the module docstring). Every bootstrapped key of a group
    shares the same resamples.

    Args:
        runs: the group's runs; failed runs and runs without a quantity are left out of it.
        keys: quantity keys (`bindspace.report.quantities`).
        n_boot: bootstrap resamples.
        boot_seed: seed of the bootstrap.
    """
    done = {k: [r for r in runs if not r.failed and run_value(r.metrics, k) is not None] for k in keys}
    by_runs: dict[tuple[int, ...], list[str]] = {}  # keys scored by the same runs share one bootstrap
    out: dict[str, SeedStats] = {}
    for key in keys:
        vectors = [query_values(r.per_query(), r.metrics, key) for r in done[key]]
        if done[key] and all(v is not None for v in vectors):
            by_runs.setdefault(tuple(id(r) for r in done[key]), []).append(key)
        else:
            out[key] = _fallback_stats(done[key], key)
    for group in by_runs.values():
        members = done[group[0]]
        matrices = [np.stack([query_values(r.per_query(), r.metrics, k) for k in group], axis=1) for r in members]
        labels = [r.per_query().get("groups") for r in members]
        lows, highs = bootstrap_many(matrices, n_boot, boot_seed, groups=labels)
        for key, lo, hi in zip(group, lows, highs, strict=True):
            mean, std = mean_std([run_value(r.metrics, key) for r in members])
            out[key] = SeedStats(mean, std, float(lo), float(hi), len(members), TWO_LEVEL)
    return {key: out[key] for key in keys}


def seed_stats(
    runs: Sequence[RunRecord], key: str, n_boot: int = DEFAULT_N_BOOT, boot_seed: int = DEFAULT_BOOT_SEED
) -> SeedStats:
    """`group_stats` of one quantity."""
    return group_stats(runs, [key], n_boot, boot_seed)[key]


def _by_seed(runs: Sequence[RunRecord]) -> dict[int | None, RunRecord]:
    out: dict[int | None, RunRecord] = {}
    for run in runs:
        if not run.failed:
            out.setdefault(run.seed, run)  # a repeated seed (a re-run) counts once
    return out


def _matched(
    base: RunRecord, other: RunRecord, keys: Sequence[str]
) -> tuple[np.ndarray, int, np.ndarray | None] | None:
    """(N_shared, Q) per-query differences other - base on the sample ids both scored, base's N, and the
    shared rows' group labels (base's, else other's; None when neither file has groups)."""
    vb = [query_values(base.per_query(), base.metrics, k) for k in keys]
    vo = [query_values(other.per_query(), other.metrics, k) for k in keys]
    if any(v is None for v in (*vb, *vo)):
        return None
    _, index_b, index_o = np.intersect1d(base.per_query()["ids"], other.per_query()["ids"], return_indices=True)
    groups_b, groups_o = base.per_query().get("groups"), other.per_query().get("groups")
    groups = groups_b[index_b] if groups_b is not None else None if groups_o is None else groups_o[index_o]
    return np.stack(vo, axis=1)[index_o] - np.stack(vb, axis=1)[index_b], len(vb[0]), groups


def _seed_level(runs_b: dict, runs_o: dict, seeds: list, key: str, note: str) -> Difference:
    per_seed = [run_value(runs_o[s].metrics, key) - run_value(runs_b[s].metrics, key) for s in seeds]
    interval = t_interval(per_seed)
    lo, hi = interval if interval is not None else (None, None)
    method = T_SEEDS if interval is not None else NO_CI
    return Difference(float(np.mean(per_seed)), lo, hi, len(seeds), None, method, excludes_zero(interval), note)


def paired_differences(
    baseline: Sequence[RunRecord],
    other: Sequence[RunRecord],
    keys: Sequence[str],
    n_boot: int = DEFAULT_N_BOOT,
    boot_seed: int = DEFAULT_BOOT_SEED,
) -> dict[str, Difference]:
    """``other - baseline`` per quantity, paired by seed (same seed, same held-out samples) and by sample id.

    For each key, the seeds both groups completed with that quantity are matched. With per-query
    values at every matched seed, the per-query differences on shared sample ids get a two-level
    bootstrap interval of their mean (seeds, then queries); otherwise the per-seed differences get a
    t interval (two seeds or more), else none. A difference without an interval is never resolved.
    """
    out: dict[str, Difference] = {}
    batches: dict[tuple, list[str]] = {}  # keys paired on the same seeds share one bootstrap
    for key in keys:
        runs_b = {s: r for s, r in _by_seed(baseline).items() if run_value(r.metrics, key) is not None}
        runs_o = {s: r for s, r in _by_seed(other).items() if run_value(r.metrics, key) is not None}
        seeds = [s for s in runs_b if s in runs_o]
        if not seeds:
            out[key] = Difference(None, None, None, 0, None, NO_CI, False, "no seed in common: cannot pair")
            continue
        matched = [_matched(runs_b[s], runs_o[s], [key]) for s in seeds]
        if any(m is None for m in matched):
            out[key] = _seed_level(runs_b, runs_o, seeds, key, "no per-query values at every seed")
        elif any(len(m[0]) == 0 for m in matched):
            out[key] = _seed_level(runs_b, runs_o, seeds, key, "no shared sample id at some seed: paired by seed only")
        else:
            batches.setdefault(tuple((s, id(runs_b[s]), id(runs_o[s])) for s in seeds), []).append(key)
    for pairing, batch in batches.items():
        by_id = {id(r): r for r in [*baseline, *other]}
        matched = [_matched(by_id[b], by_id[o], batch) for _, b, o in pairing]
        diffs = [m[0] for m in matched]  # (N_shared, Q) per matched seed
        lows, highs = bootstrap_many(diffs, n_boot, boot_seed, groups=[m[2] for m in matched])
        lost = "; ".join(
            f"seed {seed}: {len(m[0])} of {m[1]} ids shared"
            for (seed, _, _), m in zip(pairing, matched, strict=True)
            if len(m[0]) < m[1]
        )
        means = np.mean([d.mean(axis=0) for d in diffs], axis=0)
        n_queries = min(len(d) for d in diffs)
        for key, diff, lo, hi in zip(batch, means, lows, highs, strict=True):
            interval = (float(lo), float(hi))
            out[key] = Difference(
                float(diff), *interval, len(pairing), n_queries, TWO_LEVEL, excludes_zero(interval), lost
            )
    return {key: out[key] for key in keys}
