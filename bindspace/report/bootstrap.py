"""Intervals over seeds and queries: a two-level bootstrap, and a t interval when only seed values exist.

Two-level (hierarchical) bootstrap: draw the seeds with replacement, then, inside each drawn seed,
its queries with replacement; the statistic is the mean over drawn seeds of the mean over drawn
queries, and the interval is the percentile interval of that statistic. Seed draws capture how much
a result depends on the initialisation, query draws how much on the held-out sample. For a paired
comparison the same machinery runs on per-query differences of two groups at matched seeds and
sample ids (Koehn, EMNLP 2004, extended over seeds).

When a job's held-out rows share groups (``per_query.npz`` holds ``groups``: several captions of one
sound, each row a copy of it), the query level resamples that job's groups instead of its rows (a cluster
bootstrap; the statistic is the weighted mean ``sum(w v) / sum(w)`` with w each row's group count). Files
without ``groups``, or with one row per group, resample rows exactly as before.

Everything is seeded (`DEFAULT_BOOT_SEED`), so a report is reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bindspace.evaluation.stats import group_index, group_totals

LEVEL = 0.95
DEFAULT_N_BOOT = 2000
DEFAULT_BOOT_SEED = 0
_CHUNK = 4_000_000  # indices drawn at once: bounds memory for large held-out sets


def _resampled_means(
    values: np.ndarray, count: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> np.ndarray:
    """(count, Q) means of the rows of `values` (N, Q) resampled with replacement, drawn in chunks.

    A resample is a vector of counts per query, so all Q quantities share the same draws and cost
    one matrix product, and a quantity's interval does not depend on which others are computed with it.
    With `groups` ((N,) labels) shared by some rows, the distinct groups are resampled instead and each
    resample's mean is weighted by the group counts.
    """
    n = len(values)
    index = group_index(groups, n)
    if index is not None:  # the same draws over the G groups, each resample's mean weighted by group sizes
        sums, sizes = group_totals(values, index)
        g = len(sizes)
        out = np.empty((count, values.shape[1]))
        rows = max(1, _CHUNK // g)
        for start in range(0, count, rows):
            c = min(count, start + rows) - start
            draws = rng.integers(g, size=(c, g)) + g * np.arange(c)[:, None]
            counts = np.bincount(draws.ravel(), minlength=c * g).reshape(c, g)
            out[start : start + c] = (counts @ sums) / (counts @ sizes)[:, None]
        return out
    out = np.empty((count, values.shape[1]))
    rows = max(1, _CHUNK // max(n, 1))
    for start in range(0, count, rows):
        c = min(count, start + rows) - start
        draws = rng.integers(n, size=(c, n)) + n * np.arange(c)[:, None]
        counts = np.bincount(draws.ravel(), minlength=c * n).reshape(c, n)
        out[start : start + c] = counts @ values / n
    return out


def bootstrap_many(
    per_seed: Sequence[np.ndarray],
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
    level: float = LEVEL,
    groups: Sequence[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-level bootstrap intervals of Q quantities at once: per seed an (N_s, Q) array of per-query values.

    `groups`: per seed, None or the (N_s,) group labels of its rows (``per_query.npz["groups"]``); rows
    sharing a label are resampled together (module docstring).

    Returns:
        (lo, hi), each (Q,).

    Raises:
        ValueError: no seeds, a seed array that is not (N_s, Q) with N_s >= 1 and the same Q, or n_boot < 1.
    """
    if not per_seed:
        raise ValueError("a two-level bootstrap needs at least one seed")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    width = np.shape(per_seed[0])[1:] if np.ndim(per_seed[0]) == 2 else None
    for i, values in enumerate(per_seed):
        if np.ndim(values) != 2 or len(values) == 0 or np.shape(values)[1:] != width:
            raise ValueError(f"seed {i}: expected per-query values of shape (N>=1, {width}), got {np.shape(values)}")
    groups = list(groups) if groups is not None else [None] * len(per_seed)
    if len(groups) != len(per_seed):
        raise ValueError(f"groups: one entry per seed expected, got {len(groups)} for {len(per_seed)} seeds")
    for i, (values, labels) in enumerate(zip(per_seed, groups, strict=True)):
        if labels is not None and np.shape(labels) != (len(values),):
            raise ValueError(f"seed {i}: groups of shape {np.shape(labels)}, expected ({len(values)},)")
    rng = np.random.default_rng(seed)
    n_seeds = len(per_seed)
    picks = rng.integers(n_seeds, size=(n_boot, n_seeds))  # (B, S): which seed each position draws
    totals = np.zeros((n_boot, width[0]))
    for s, values in enumerate(per_seed):
        rows = np.nonzero(picks == s)[0]  # one entry per (resample, position) that drew seed s
        # Each draw of a seed gets its own query resample, so a seed drawn twice is not counted as one.
        resampled = _resampled_means(np.asarray(values, dtype=np.float64), len(rows), rng, groups[s])
        np.add.at(totals, rows, resampled)
    lo, hi = np.quantile(totals / n_seeds, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi


def two_level_bootstrap(
    per_seed: Sequence[np.ndarray], n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_BOOT_SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of the mean over queries.

    Args:
        per_seed: one (N_s,) array of per-query values per seed; N_s may differ.
        n_boot: bootstrap resamples.
        seed: seed of the random generator.
        level: coverage of the interval.

    Returns:
        (lo, hi). With one seed this is a plain bootstrap over its queries.

    Raises:
        ValueError: no seeds, an empty or non-1-D seed array, or n_boot < 1.
    """
    for i, values in enumerate(per_seed):
        if np.ndim(values) != 1:
            raise ValueError(f"seed {i}: expected a 1-D array of per-query values, got shape {np.shape(values)}")
    lo, hi = bootstrap_many([np.asarray(v)[:, None] for v in per_seed], n_boot, seed, level)
    return float(lo[0]), float(hi[0])


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student-t interval of the mean of `values` (seed-level values); None for fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    from scipy import stats  # scipy comes with scikit-learn; imported only when needed

    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def excludes_zero(interval: tuple[float, float] | None) -> bool:
    """True when the interval lies strictly on one side of 0 (a resolved difference)."""
    return interval is not None and (interval[0] > 0 or interval[1] < 0)
