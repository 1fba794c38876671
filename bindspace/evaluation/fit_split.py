"""Fit and score apart: what evaluation fits (centring means, bridges) never sees a scored sample.

Evaluation fits its mitigations on a reference split and scores on another. When the two share
samples (a manifest without ``data.test`` scores its validation set; spoken digits has no test
split), the shared samples are divided *by sample id*, never by split name:

- every shared id gets a rank from ``blake2b("bindspace-fit-score:" + id)`` (salted, so the halves
  are independent of the ``id_fraction`` hash that chose the validation set in the first place);
- the lower half of the ranks (``n // 2`` ids) may only be fitted on, the upper half
  (``n - n // 2`` ids) may only be scored;
- the fit rows are the reference rows whose id is not scored, the score rows the scored split's
  rows whose id is not fitted; when both splits are one set this is a plain half / half split.

The split depends on the ids alone (not the seed, the row order or the machine), so every run and
every checkpoint scores the same samples. :func:`check_disjoint` proves the result by id.

Which rows are one sample: rows with the same id (a manifest's ``id`` or ``group:<name>``, a synthetic
scene id) and, for manifests, rows sharing any of their :func:`~bindspace.data.manifest.sample_keys`: a
file (the same file under another id is the same sample), and the id itself, which for a manifest
without ids is a row number and so only matches rows of the same manifest. Rows linked through such
keys are one sample (ranked by the lowest-ranked id among them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SALT = "bindspace-fit-score:"
RULE = (
    "ids shared by the fit and scored splits are ranked by blake2b('bindspace-fit-score:' + id); "
    "the lower half is fitted on only, the upper half scored only"
)


def fit_rank(sample_id: str) -> tuple[int, str]:
    """A stable sort key from the id alone (the id itself breaks the, astronomically rare, hash ties)."""
    digest = hashlib.blake2b((SALT + sample_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big"), sample_id


def check_disjoint(fit_ids: Sequence[str], score_ids: Sequence[str]) -> None:
    """Raise ValueError when any id is both fitted on and scored.

    Args:
        fit_ids: ids of the samples the mitigations are fitted on.
        score_ids: ids of the samples scored.
    """
    shared = set(fit_ids) & set(score_ids)
    if shared:
        raise ValueError(
            f"{len(shared)} sample id(s) are both fitted on and scored, e.g. {sorted(shared)[:3]}; "
            "evaluation must fit and score on disjoint samples"
        )


@dataclass
class FitScoreSplit:
    """Rows of the reference split to fit on and rows of the scored split to score.

    Attributes:
        fit_rows: indices into the reference split.
        score_rows: indices into the scored split.
        info: what was done, for ``metrics.json["fit_split"]``.
        fit_ids, score_ids: the sample ids of those rows (what a later fit, e.g. a linear probe, checks again).
    """

    fit_rows: list[int]
    score_rows: list[int]
    info: dict[str, Any]
    fit_ids: list[str] = field(default_factory=list)
    score_ids: list[str] = field(default_factory=list)


def sample_units(keys: Sequence[Sequence[str]]) -> list[str]:
    """Per row, the name of its sample: rows sharing a key, directly or through other rows, are one
    sample, named by the smallest key among them (union-find over the keys).

    Args:
        keys: per row, one or more keys.
    """
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = k = parent[parent[k]]  # path halving
        return k

    for first, *rest in keys:
        for k in rest:
            a, b = root(first), root(k)
            parent[max(a, b)] = min(a, b)
    return [root(row[0]) for row in keys]


def split_fit_and_score(
    fit_ids: Sequence[str],
    score_ids: Sequence[str],
    fit_name: str = "val",
    score_name: str = "test",
    fit_keys: Sequence[Sequence[str]] | None = None,
    score_keys: Sequence[Sequence[str]] | None = None,
) -> FitScoreSplit:
    """Choose fit and score rows so that no sample is on both sides.

    Args:
        fit_ids: per row of the reference split, its sample id (repeats allowed: rows of one id stay together).
        score_ids: per row of the scored split, its sample id.
        fit_name, score_name: split names, recorded in ``info``.
        fit_keys, score_keys: per row, the keys that make rows one sample
            (:func:`~bindspace.data.manifest.sample_keys`); then ids only rank the samples. Default: the ids.

    Returns:
        All rows of both splits when they share no sample (``info["method"] == "separate_splits"``);
        otherwise the shared samples halved as described in the module docstring (``"id_hash"``). Its
        ``fit_ids`` and ``score_ids`` name each kept row's sample (its id when keys are not given).

    Raises:
        ValueError: a split is empty, or a side is left with no rows after the split.
    """
    if not fit_ids or not score_ids:
        raise ValueError(f"need samples on both sides, got {len(fit_ids)} to fit and {len(score_ids)} to score")
    if fit_keys is None or score_keys is None:
        fit_keys, score_keys = [[i] for i in fit_ids], [[i] for i in score_ids]
    units = sample_units([*fit_keys, *score_keys])
    rank: dict[str, tuple[int, str]] = {}
    for unit, sample_id in zip(units, [*fit_ids, *score_ids], strict=True):
        rank[unit] = min(rank.get(unit, fit_rank(sample_id)), fit_rank(sample_id))
    fit_units, score_units = units[: len(fit_ids)], units[len(fit_ids) :]
    shared = sorted(set(fit_units) & set(score_units), key=lambda u: (rank[u], u))
    fit_only, score_only = set(shared[: len(shared) // 2]), set(shared[len(shared) // 2 :])
    fit_rows = [i for i, u in enumerate(fit_units) if u not in score_only]
    score_rows = [i for i, u in enumerate(score_units) if u not in fit_only]
    if not fit_rows or not score_rows:
        raise ValueError(
            f"{fit_name} and {score_name} share {len(shared)} sample id(s); too few to fit on one part and score "
            f"the other ({len(fit_rows)} to fit, {len(score_rows)} to score)"
        )
    kept_fit, kept_score = [fit_units[i] for i in fit_rows], [score_units[i] for i in score_rows]
    check_disjoint(kept_fit, kept_score)
    info = {
        "method": "id_hash" if shared else "separate_splits",
        "fit_from": fit_name,
        "scored_from": score_name,
        "shared_ids": len(shared),  # before the split
        "fit_ids": len(set(kept_fit)),
        "score_ids": len(set(kept_score)),
        "overlap": len(set(kept_fit) & set(kept_score)),  # 0, proven above
    }
    if shared:
        info["rule"] = RULE
    return FitScoreSplit(fit_rows, score_rows, info, kept_fit, kept_score)
