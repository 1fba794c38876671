"""Uncertainty of one run's numbers: a seeded percentile bootstrap over queries (or groups), and the per-query file.

Every retrieval and zero-shot figure is a mean over held-out queries, so its 95% interval comes from
resampling the queries with replacement (Efron's percentile bootstrap, as ``scipy.stats.bootstrap(...,
method="percentile")``), vectorised: resample b is a count vector over the N queries, and the means of
all P metrics under all B resamples are one (B, N) @ (N, P) product. The resamples depend only on
(N, resamples, seed), so every pair of modalities and every metric of a run resamples *the same query
rows* (all modalities share the held-out samples), which is what a summary over pairs and a paired
comparison need.

When held-out rows share a group (a manifest's ``group`` column, or a list of captions: one row per
caption, each a copy of one sound), the rows of a group are not independent draws, and resampling rows
would make the interval too narrow. Given the rows' group labels, the bootstrap then resamples the G
groups instead (a cluster bootstrap): the same seeded counts over G, each row weighted by its group's
count, and the weighted mean ``sum(w v) / sum(w)`` per resample (a ratio estimator for groups of unequal
size). With one row per group this is the query bootstrap, and it runs unchanged.

``per_query.npz`` (beside metrics.json) holds each query's own value of every metric, for paired tests
across runs (:func:`write_per_query`, :func:`read_per_query`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bindspace.utils.io import atomic_write

# A metric whose chance level is above this (in percent) says little about a model: with one relevant
# item per query, R@k crosses it exactly when the gallery holds fewer than 10 * k items.
CHANCE_LIMIT = 10.0
# Resample counts of one block are drawn and multiplied at once: at most this many (B_block x N) entries.
_BLOCK_ENTRIES = 2**22
# Resample counts of up to this many entries (B x N) are kept between calls (int32: 64 MB).
_CACHE_ENTRIES = 2**24


@dataclass(frozen=True)
class Bootstrap:
    """A seeded percentile bootstrap over queries; over groups when the rows given share groups.

    Args:
        resamples: number of bootstrap resamples B.
        seed: seeds the resamples; the same seed and N give the same resampled rows everywhere.
        level: coverage of the two-sided interval.
    """

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    method = "percentile"
    unit = "query"

    def __post_init__(self) -> None:
        if not isinstance(self.resamples, int) or self.resamples < 10:
            raise ValueError(f"bootstrap resamples must be an int >= 10, got {self.resamples!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"bootstrap seed must be a non-negative int, got {self.seed!r}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"bootstrap level must be in (0, 1), got {self.level!r}")

    def as_dict(self, grouped: bool = False) -> dict[str, Any]:
        """The ``metrics.json["bootstrap"]`` record; ``grouped``: the held-out rows share groups, so the
        intervals resampled groups (``"unit": "group"``, see :func:`shares_groups`)."""
        return {
            "resamples": self.resamples,
            "seed": self.seed,
            "level": self.level,
            "method": self.method,
            "unit": "group" if grouped else self.unit,
        }

    def intervals(self, values: np.ndarray, groups: Any = None) -> np.ndarray:
        """Interval of the mean of each column of ``values`` (N queries x P metrics).

        Args:
            values: (N,) or (N, P) per-query values (any units; the interval is in the same units).
            groups: optional (N,) group labels of the rows (any comparable values: ints, strings). When
                rows share a label, the distinct groups are resampled instead of the rows (module
                docstring); None, or every label distinct, resamples rows.

        Returns:
            (P, 2) float64 [low, high]; (2,) for a 1-D input. The bounds are clipped to the column's
            range, so a constant column gets a zero-width interval.
        """
        v = np.asarray(values, dtype=np.float64)
        one = v.ndim == 1
        v = v[:, None] if one else v
        if v.ndim != 2 or len(v) == 0:
            raise ValueError(f"values must be (N,) or (N, P) with N >= 1, got shape {np.shape(values)}")
        if not np.isfinite(v).all():
            raise ValueError("values contain NaN or inf")
        n = len(v)
        index = group_index(groups, n)
        means = np.empty((self.resamples, v.shape[1]))
        if index is None:  # one row per group: the query bootstrap
            for start, counts in _resample_blocks(n, self.resamples, self.seed):
                means[start : start + len(counts)] = counts @ v
            means /= n
        else:
            # sum(w v) / sum(w) with w = counts[index]: the rows of a group summed once, then weighted.
            sums, sizes = group_totals(v, index)
            for start, counts in _resample_blocks(len(sizes), self.resamples, self.seed):
                means[start : start + len(counts)] = (counts @ sums) / (counts @ sizes)[:, None]
        alpha = 1.0 - self.level
        low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2], axis=0)
        out = np.stack([np.maximum(low, v.min(0)), np.minimum(high, v.max(0))], axis=1)
        return out[0] if one else out


DEFAULT_BOOTSTRAP = Bootstrap()  # 1000 resamples, seed 0, 95%: what metrics.json states under "bootstrap"


def group_index(groups: Any, n: int) -> np.ndarray | None:
    """(N,) int64 index of each row's group in 0..G-1 (sorted labels), or None when ``groups`` is None or
    every row is its own group (then the row bootstrap applies).

    Raises:
        ValueError: ``groups`` is not (N,).
    """
    if groups is None:
        return None
    labels = np.asarray(groups.detach().cpu() if hasattr(groups, "detach") else groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must be ({n},), one label per row, got shape {labels.shape}")
    distinct, index = np.unique(labels, return_inverse=True)
    return None if len(distinct) == n else index.astype(np.int64).reshape(n)


def group_totals(values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G, P) column sums of each group's rows of ``values`` (N, P), and (G,) float64 group sizes, for
    ``index`` from :func:`group_index`: a resample's weighted mean is ``counts @ sums / counts @ sizes``."""
    g = int(index.max()) + 1
    sums = np.zeros((g, values.shape[1]))
    np.add.at(sums, index, values)
    return sums, np.bincount(index, minlength=g).astype(np.float64)


def shares_groups(groups: Any) -> bool:
    """True when some rows share a group label: their intervals resample groups (``"unit": "group"``)."""
    return groups is not None and group_index(groups, len(groups)) is not None


def _block_rows(n: int) -> int:
    return max(1, _BLOCK_ENTRIES // n)


def _draw_block(n: int, seed: int, index: int, rows: int) -> np.ndarray:
    """(rows, n) int32 counts of how often each query is drawn in each of `rows` resamples."""
    # One generator per block: the draws do not depend on how many blocks are made at once.
    rng = np.random.default_rng([seed, index])
    drawn = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).astype(np.int32)


def _blocks(n: int, resamples: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    step = _block_rows(n)
    for index, start in enumerate(range(0, resamples, step)):
        yield start, _draw_block(n, seed, index, min(step, resamples - start))


@lru_cache(maxsize=4)
def _cached_blocks(n: int, resamples: int, seed: int) -> tuple[tuple[int, np.ndarray], ...]:
    return tuple(_blocks(n, resamples, seed))


def _resample_blocks(n: int, resamples: int, seed: int):
    if n * resamples <= _CACHE_ENTRIES:
        return _cached_blocks(n, resamples, seed)
    return _blocks(n, resamples, seed)  # too big to keep: drawn again (identically) on every call


def percent_intervals(
    bootstrap: Bootstrap, columns: Mapping[Any, np.ndarray], groups: Any = None
) -> dict[Any, list[float]]:
    """{name: [low, high]} in percent for per-query values in [0, 1], all from one bootstrap pass;
    ``groups``: the rows' group labels (see :meth:`Bootstrap.intervals`)."""
    if not columns:
        return {}
    stacked = np.stack([np.asarray(c, dtype=np.float64) for c in columns.values()], axis=1)
    bounds = bootstrap.intervals(stacked, groups)
    return {name: [100.0 * float(lo), 100.0 * float(hi)] for name, (lo, hi) in zip(columns, bounds, strict=True)}


def uninformative(chance: Mapping[str, float]) -> list[str]:
    """Metrics of a ``chance`` record ({"R@1": %, "mAP": %, "median_rank": rank, "top5": %, ...})
    whose chance level is above :data:`CHANCE_LIMIT` percent; median rank goes with R@1."""
    # The tolerance keeps a chance of exactly 10% (R@10 of 100 items, up to rounding) unmarked.
    names = [m for m, v in chance.items() if _is_percent(m) and float(v) > CHANCE_LIMIT + 1e-9]
    if "median_rank" in chance and "R@1" in names:
        names.append("median_rank")
    return names


def _is_percent(metric: str) -> bool:
    return bool(re.fullmatch(r"R@\d+|mAP|top\d+", metric))


# ---- per_query.npz ------------------------------------------------------------------------------
_INT_KEYS = ("ids", "labels", "groups")
_KEY = re.compile(r"(retrieval|retrieval_class)/[^/]+->[^/]+/(R@\d+|AP)|zero_shot/[^/]+/top\d+")


def _check_arrays(arrays: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    if "ids" not in arrays:
        raise ValueError(f"{where}: no 'ids' array (the held-out sample ids, in query order)")
    n = len(np.asarray(arrays["ids"]))
    out = {}
    for key, value in arrays.items():
        if key not in _INT_KEYS and not _KEY.fullmatch(key):
            raise ValueError(
                f"{where}: unknown key {key!r}; expected ids, labels, groups, retrieval[_class]/<q>-><g>/<R@k|AP> "
                "or zero_shot/<m>/top<k>"
            )
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        if array.shape != (n,):
            raise ValueError(f"{where}: {key!r} has shape {array.shape}, expected ({n},) like 'ids'")
        if key in _INT_KEYS:
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{where}: {key!r} must hold integers, got {array.dtype}")
            out[key] = array.astype(np.int64)
        else:
            array = array.astype(np.float32)
            if not (np.isfinite(array).all() and (array >= 0).all() and (array <= 1).all()):
                raise ValueError(f"{where}: {key!r} must hold expected values in [0, 1]")
            out[key] = array
    return out


def write_per_query(path: str | Path, arrays: Mapping[str, Any]) -> Path:
    """Writes per-query values as ``np.savez`` (no pickle), atomically (temporary file, then rename).

    Args:
        path: destination, e.g. ``<run>/per_query.npz``.
        arrays: "ids" int64 (N,) held-out sample ids in query order; optionally "labels" int64 (N,) and
            "groups" int64 (N,) (present when rows share a group: a cluster bootstrap resamples groups);
            "retrieval/<q>-><g>/R@1" (R@5, R@10, AP), the same under "retrieval_class/", and
            "zero_shot/<m>/top1" (top5): float32 (N,) tie-aware expected values in [0, 1]. Tensors
            are accepted and converted.

    Returns:
        The path written.

    Raises:
        ValueError: a missing "ids", an unknown key, a length or dtype that does not fit.
    """
    checked = _check_arrays(arrays, str(path))
    return atomic_write(path, lambda f: np.savez(f, **checked))


def read_per_query(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a file of :func:`write_per_query` (never unpickles); checks it as the writer does."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return _check_arrays(arrays, str(path))


def times_chance(value: float, chance: float) -> float:
    """``value / chance``, or inf for a zero chance (never NaN)."""
    return math.inf if chance <= 0 else value / chance
